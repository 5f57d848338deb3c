/* Sockets owned by processes: the I/O thread's side. Every libuv call on them is here.
 *
 * A kick (socket.h) brings the slot's state here: a new socket is put on the loop (a
 * listener's descriptor opened, a connect started), reading follows `active`, queued sends
 * are written (at most one write in flight, up to AR__SOCK_IOVS sends coalesced into it),
 * and a close the owner asked for waits for the queue to drain, AR__SOCK_LINGER_MS at most.
 *
 * What happens to a socket reaches its owner as an AR_MSG_SOCKET message, through the one
 * routing point; an owner that is gone drops it (its end closes the socket anyway).
 */
#include "socket.h"

#include <netinet/tcp.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

static void update(ar__sock_t *sk, uv_loop_t *loop);
static void io_close(ar__sock_t *sk);

void ar__sock_out_free(ar__sock_out_t *o) { ar__free(o); }

static struct ar__sockets *table(ar__sock_t *sk) { return sk->node->sockets; }

/* ---- messages to the owner ---- */
static ar__env_t *sock_msg(ar__sock_t *sk, ar_sock_event_t ev, size_t len)
{
    ar__env_t *e = ar__env_new(len);
    if (!e) return NULL;
    e->msg.kind = AR_MSG_SOCKET;
    e->msg.tag = ev;
    e->msg.ref = ar__sock_id(sk);
    return e;
}

static void io_fail(ar__sock_t *sk, int err);

/* An event for the owner. One that cannot be allocated would leave the owner waiting for
 * it for ever (a CONNECTED, a PASSIVE, a WRITABLE): the socket ends instead, and CLOSED,
 * whose envelope it has had from the start, says why. */
static void tell(ar__sock_t *sk, ar_sock_event_t ev)
{
    if (atomic_load_explicit(&sk->close_req, memory_order_relaxed)) return; /* let go */
    ar__env_t *e = sock_msg(sk, ev, 0);
    if (e)
        ar__sock_to_owner(sk, e);
    else
        io_fail(sk, UV_ENOMEM);
}

/* CLOSED, once, unless the owner closed it itself. The text is static: no copy needed. */
static void tell_closed(ar__sock_t *sk, int uv_err)
{
    if (sk->closed_told || atomic_load_explicit(&sk->close_req, memory_order_relaxed)) return;
    sk->closed_told = true;
    ar__env_t *e = sk->closed;
    sk->closed = NULL;
    AR__ASSERT(e);
    e->msg.kind = AR_MSG_SOCKET;
    e->msg.tag = AR_SOCK_CLOSED;
    e->msg.ref = ar__sock_id(sk);
    e->msg.reason = uv_err == UV_EOF || uv_err == 0 ? AR_REASON(AR_NORMAL)
                                                    : (ar_reason_t){AR_ERROR, uv_strerror(uv_err)};
    ar__sock_to_owner(sk, e);
}

/* Takes one of the deliveries the owner allows. *out: it was the last; *note: the last of a
 * count, whose end the owner is told (AR_SOCK_PASSIVE). Both are decided by the take, from
 * the arming that allowed it, never from one the owner makes after. */
static bool take_delivery(ar__sock_t *sk, bool *out, bool *note)
{
    int a = atomic_load_explicit(&sk->active, memory_order_acquire), left;
    do {
        left = (a & AR__SOCK_COUNT) - 1;
        if (left < 0) return false;
    } while (!atomic_compare_exchange_weak_explicit(&sk->active, &a, left ? a - 1 : 0,
                                                    memory_order_acq_rel, memory_order_acquire));
    *out = left == 0;
    *note = left == 0 && (a & AR__SOCK_NOTE);
    return true;
}

/* ---- closing ---- */
static void handle_closed(uv_handle_t *h)
{
    ar__sock_t *sk = h->data;
    if (--sk->handles == 0) ar__sock_unref(sk); /* the I/O thread's reference */
}

/* The owner's side sees the socket closed from here: the write token is taken for good, so
 * the owner never writes to a descriptor number that is closed (and maybe reused), and its
 * sends say AR_ENOTCONN. Before AR_SOCK_CLOSED is told, so that an owner handling it finds
 * the socket closed. */
static void shut_owner_out(ar__sock_t *sk)
{
    if (!sk->has_token)
        while (atomic_exchange_explicit(&sk->wtoken, 1, memory_order_acquire) != 0)
            sched_yield(); /* the owner holds it for one send() */
    sk->has_token = true;
    atomic_store_explicit(&sk->state, SK_CLOSED, memory_order_release);
}

/* A handle the loop's own stop already closed (it closes what is left open) is not closed
 * twice: libuv would abort. Its memory goes with the node. */
static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h)) uv_close(h, handle_closed);
}

/* Closes the I/O side now. */
static void io_close(ar__sock_t *sk)
{
    if (sk->done) return;
    sk->done = true;
    shut_owner_out(sk);
    int fd = atomic_load_explicit(&sk->fd, memory_order_relaxed);
    atomic_store_explicit(&sk->fd, -1, memory_order_relaxed);
    ar__env_free(sk->held);
    sk->held = NULL;
    if (!sk->opened) { /* never on the loop: a listener's descriptor is ours to close */
        if (sk->listener && fd >= 0) close(fd);
        ar__sock_unref(sk);
        return;
    }
    close_handle((uv_handle_t *)&sk->tcp);
    if (sk->closing || sk->listener) close_handle((uv_handle_t *)&sk->linger);
}

/* The connection ended (err: a libuv error, UV_EOF when the peer closed): the owner hears
 * of it once its socket is closed to it. */
static void io_fail(ar__sock_t *sk, int err)
{
    if (sk->done) return;
    shut_owner_out(sk);
    tell_closed(sk, err);
    io_close(sk);
}

static void linger_over(uv_timer_t *t) { io_close(t->data); }

static void fin_done(uv_shutdown_t *req, int status)
{
    ar__sock_t *sk = req->data;
    if (!sk->done && status < 0) io_close(sk);
}

/* A closing connection whose queue is empty stops writing: its FIN follows the last byte.
 * It closes for good when the peer closes too (read_cb) or the linger runs out. */
static void send_fin(ar__sock_t *sk)
{
    if (atomic_exchange_explicit(&sk->fin_sent, true, memory_order_acq_rel)) return;
    sk->sreq.data = sk;
    if (uv_shutdown(&sk->sreq, (uv_stream_t *)&sk->tcp, fin_done) != 0) io_close(sk);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* The owner let go. A connection lingers: what is queued still goes, then its FIN, while
 * what the peer still sends is read and dropped, for AR__SOCK_LINGER_MS at most. Closing
 * with the peer's bytes unread would make the kernel reset the connection and drop what
 * the peer had not read yet. */
static void start_close(ar__sock_t *sk, uv_loop_t *loop)
{
    atomic_store_explicit(&sk->active, 0, memory_order_relaxed);
    if (!sk->opened || sk->listener || atomic_load_explicit(&sk->state, memory_order_relaxed) != SK_OPEN) {
        io_close(sk);
        return;
    }
    sk->closing = true;
    ar__env_free(sk->held); /* nobody will read it */
    sk->held = NULL;
    uv_timer_init(loop, &sk->linger);
    sk->linger.data = sk;
    sk->handles++;
    uv_timer_start(&sk->linger, linger_over, AR__SOCK_LINGER_MS, 0);
    if (!sk->reading) {
        if (uv_read_start((uv_stream_t *)&sk->tcp, alloc_cb, read_cb) != 0) {
            io_close(sk);
            return;
        }
        sk->reading = true;
    }
    if (!sk->writing && atomic_load_explicit(&sk->queued, memory_order_acquire) == 0) send_fin(sk);
}

/* ---- writing ---- */
static void write_done(uv_write_t *req, int status);

static void write_some(ar__sock_t *sk)
{
    if (sk->writing || sk->done || atomic_load_explicit(&sk->state, memory_order_relaxed) != SK_OPEN)
        return;
    struct ar__qnode *q = ar__mpsc_pop(&sk->out_head, &sk->out_tail, &sk->out_stub, 0);
    if (!q) return;
    /* the owner may be in its direct send: it finished that before queueing this */
    while (atomic_exchange_explicit(&sk->wtoken, 1, memory_order_acquire) != 0) sched_yield();
    sk->has_token = true;
    unsigned n = 0;
    do {
        ar__sock_out_t *o = (ar__sock_out_t *)q;
        sk->inflight[n] = o;
        sk->iov[n] = uv_buf_init((char *)(o + 1), (unsigned)o->len);
        n++;
    } while (n < AR__SOCK_IOVS &&
             (q = ar__mpsc_pop(&sk->out_head, &sk->out_tail, &sk->out_stub, 0)) != NULL);
    sk->ninflight = n;
    sk->writing = true;
    sk->wreq.data = sk;
    int rc = uv_write(&sk->wreq, (uv_stream_t *)&sk->tcp, sk->iov, n, write_done);
    if (rc) write_done(&sk->wreq, rc);
}

static void write_done(uv_write_t *req, int status)
{
    ar__sock_t *sk = req->data;
    size_t bytes = 0;
    for (unsigned i = 0; i < sk->ninflight; i++) {
        bytes += sk->inflight[i]->len;
        ar__sock_out_free(sk->inflight[i]);
    }
    sk->ninflight = 0;
    sk->writing = false;
    /* seq_cst, then the flag: see ar_socket_send */
    size_t left = atomic_fetch_sub_explicit(&sk->queued, bytes, memory_order_seq_cst) - bytes;
    if (sk->done) return; /* closing: the token stays taken */
    if (status < 0) { /* and keeps it: the owner writes no more */
        io_fail(sk, status);
        return;
    }
    sk->has_token = false;
    atomic_store_explicit(&sk->wtoken, 0, memory_order_release);
    if (left <= sk->send_limit / 2 && atomic_load_explicit(&sk->want_writable, memory_order_seq_cst) &&
        atomic_exchange_explicit(&sk->want_writable, false, memory_order_relaxed))
        tell(sk, AR_SOCK_WRITABLE);
    write_some(sk);
    if (sk->closing && !sk->writing) send_fin(sk);
}

/* ---- reading ---- */
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    ar__sock_t *sk = h->data;
    *buf = uv_buf_init(table(sk)->rbuf, AR__SOCK_READ);
}

static void stop_reading(ar__sock_t *sk)
{
    if (sk->reading) uv_read_stop((uv_stream_t *)&sk->tcp);
    sk->reading = false;
}

/* Hands a read to the owner if it asked for one, else keeps it until it does. */
static void deliver(ar__sock_t *sk, ar__env_t *e)
{
    bool out = false, note = false;
    if (!take_delivery(sk, &out, &note)) {
        sk->held = e;
        stop_reading(sk);
        return;
    }
    ar__sock_to_owner(sk, e);
    if (out) stop_reading(sk);
    if (note) tell(sk, AR_SOCK_PASSIVE);
}

/* An EOF on a connection the kernel has closed (TCP_CLOSE) rather than half-closed
 * (CLOSE_WAIT, the peer's FIN) is a reset whose error another call took: the kernel tells
 * it once, and the owner's direct send, or libuv's write (whose callback comes a turn
 * later), may have had it first. */
static int eof_or_reset(ar__sock_t *sk)
{
#if defined(__linux__)
    struct tcp_info ti;
    socklen_t n = sizeof ti;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&sk->tcp, &fd) == 0 &&
        getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &n) == 0 && ti.tcpi_state == TCP_CLOSE)
        return UV_ECONNRESET;
#endif
    (void)sk;
    return UV_EOF;
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    ar__sock_t *sk = st->data;
    if (nread == 0) return;
    if (sk->closing) { /* lingering: the peer's bytes are dropped until it closes too */
        if (nread < 0) io_close(sk);
        return;
    }
    if (nread < 0) {
        io_fail(sk, nread == UV_EOF ? eof_or_reset(sk) : (int)nread);
        return;
    }
    ar__env_t *e = sock_msg(sk, AR_SOCK_DATA, (size_t)nread);
    if (!e) { /* the bytes cannot be kept: the stream would have a hole, so it ends */
        io_fail(sk, UV_ENOMEM);
        return;
    }
    memcpy(ar__env_payload(e), buf->base, (size_t)nread);
    deliver(sk, e);
}

static void follow_active(ar__sock_t *sk)
{
    if (sk->held) {
        ar__env_t *e = sk->held;
        sk->held = NULL;
        deliver(sk, e);
        if (sk->held || sk->done) return; /* (done: its PASSIVE could not be told) */
    }
    if (!sk->reading && !sk->closing && atomic_load_explicit(&sk->active, memory_order_acquire) > 0) {
        if (uv_read_start((uv_stream_t *)&sk->tcp, alloc_cb, read_cb) != 0) {
            io_fail(sk, UV_EIO);
            return;
        }
        sk->reading = true;
    }
}

/* ---- accepting ---- */
static void free_handle(uv_handle_t *h) { ar__free(h); }
static void accept_while_asked(ar__sock_t *ls);
static void accept_retry(uv_timer_t *t) { accept_while_asked(t->data); }

/* A slot taken for a connection and not used: it was never on the loop, so both of its
 * references go here. */
static void drop_slot(ar__sock_t *c)
{
    c->done = true;
    ar__sock_unref(c);
    ar__sock_unref(c);
}

/* A connection nobody can take (no slot, no memory): off the backlog, and closed. c, if
 * the slot could be had, takes it in and closes (nothing to allocate); else a handle is.
 * False when not even that can be: libuv keeps the connection (and stops watching the
 * listener until it is taken), so the listener tries again after a while. */
static bool refuse(ar__sock_t *ls, ar__sock_t *c)
{
    uv_stream_t *server = (uv_stream_t *)&ls->tcp;
    if (c) {
        uv_tcp_init(server->loop, &c->tcp);
        c->tcp.data = c;
        c->opened = true;
        c->handles = 1;
        uv_accept(server, (uv_stream_t *)&c->tcp);
        ar__sock_unref(c); /* the owner's, never given */
        io_close(c);
        return true;
    }
    uv_tcp_t *t = ar__malloc(sizeof *t);
    if (!t) {
        uv_timer_start(&ls->linger, accept_retry, AR__SOCK_ACCEPT_RETRY_MS, 0);
        return false;
    }
    uv_tcp_init(server->loop, t);
    uv_accept(server, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, free_handle);
    return true;
}

static void addresses(ar__sock_t *sk)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getsockname(&sk->tcp, (struct sockaddr *)&ss, &len) == 0)
        ar__addr_format(&ss, sk->local, sizeof sk->local);
    len = sizeof ss;
    if (uv_tcp_getpeername(&sk->tcp, (struct sockaddr *)&ss, &len) == 0)
        ar__addr_format(&ss, sk->peer, sizeof sk->peer);
}

static void opened(ar__sock_t *sk)
{
    uv_os_fd_t fd;
    uv_tcp_nodelay(&sk->tcp, 1);
    addresses(sk);
    if (uv_fileno((uv_handle_t *)&sk->tcp, &fd) == 0) atomic_store_explicit(&sk->fd, fd, memory_order_relaxed);
    atomic_store_explicit(&sk->state, SK_OPEN, memory_order_release);
}

/* Takes the pending connection into c and tells owner: AR_SOCK_ACCEPTED (e). */
static void accept_one(ar__sock_t *ls, ar__sock_t *c, ar__env_t *e, uint64_t owner)
{
    uv_stream_t *server = (uv_stream_t *)&ls->tcp;
    uv_tcp_init(server->loop, &c->tcp);
    c->tcp.data = c;
    c->opened = true;
    c->handles = 1;
    c->send_limit = ls->send_limit;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        ar__env_free(e);
        ar__sock_unref(c); /* the owner's, never given */
        io_close(c);
        return;
    }
    opened(c);
    if (ar__sock_own(c, owner) != 0) { /* the listener's owner ended meanwhile */
        ar__env_free(e);
        ar__sock_unref(c);
        io_close(c);
        return;
    }
    e->msg.kind = AR_MSG_SOCKET;
    e->msg.tag = AR_SOCK_ACCEPTED;
    e->msg.ref = ar__sock_id(c);
    e->msg.reply_to.ref = ar__sock_id(ls);
    ar__sock_to_owner(c, e);
}

/* Accepts while a connection is pending and the owner allows it. What a connection needs
 * is had before one of the owner's deliveries is taken: a connection refused for want of
 * it is no delivery (an owner armed once still gets the next one). */
static void accept_while_asked(ar__sock_t *ls)
{
    while (ls->accept_pending && !ls->done && atomic_load_explicit(&ls->active, memory_order_acquire) > 0) {
        uint64_t owner = atomic_load_explicit(&ls->owner_lo, memory_order_acquire);
        ar__sock_t *c = owner ? ar__sock_new(ls->node, 0) : NULL;
        ar__env_t *e = c ? ar__env_new(0) : NULL;
        bool out = false, note = false;
        if (!e) {
            if (!refuse(ls, c)) return; /* still pending: accept_retry comes back */
        } else if (!take_delivery(ls, &out, &note)) { /* made passive meanwhile */
            ar__env_free(e);
            drop_slot(c);
            return;
        } else {
            accept_one(ls, c, e, owner);
        }
        ls->accept_pending = false; /* libuv holds one connection back until uv_accept */
        if (note) tell(ls, AR_SOCK_PASSIVE);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    ar__sock_t *ls = server->data;
    if (status == UV_EMFILE || status == UV_ENFILE || status == UV_ENOBUFS || status == UV_ENOMEM)
        return; /* short of resources: libuv tries again */
    if (status < 0) { /* it listens no more (shut down as its owner let go): libuv would
                         call again at once, for ever, until the handle closes */
        io_fail(ls, status);
        return;
    }
    ls->accept_pending = true;
    accept_while_asked(ls);
}

/* ---- connecting ---- */
static void on_connect(uv_connect_t *req, int status)
{
    ar__sock_t *sk = req->data;
    if (sk->done) return; /* closed while connecting */
    if (status < 0) {
        io_fail(sk, status);
        return;
    }
    opened(sk);
    tell(sk, AR_SOCK_CONNECTED);
    update(sk, req->handle->loop);
}

/* ---- the kick ---- */
static int put_on_loop(ar__sock_t *sk, uv_loop_t *loop)
{
    uv_tcp_init(loop, &sk->tcp);
    sk->tcp.data = sk;
    sk->opened = true;
    sk->handles = 1;
    if (sk->listener) {
        uv_timer_init(loop, &sk->linger); /* a listener's: accept_retry */
        sk->linger.data = sk;
        sk->handles++;
        int fd = atomic_load_explicit(&sk->fd, memory_order_relaxed);
        int rc = uv_tcp_open(&sk->tcp, fd);
        if (rc) {
            close(fd); /* the handle did not take it */
            return rc;
        }
        return uv_listen((uv_stream_t *)&sk->tcp, sk->backlog, on_connection);
    }
    sk->creq.data = sk;
    return uv_tcp_connect(&sk->creq, &sk->tcp, (const struct sockaddr *)&sk->dest, on_connect);
}

static void update(ar__sock_t *sk, uv_loop_t *loop)
{
    if (sk->done) return;
    if (atomic_load_explicit(&sk->broken, memory_order_acquire)) {
        io_fail(sk, UV_ENOMEM);
        return;
    }
    if (atomic_load_explicit(&sk->close_req, memory_order_seq_cst)) {
        if (!sk->closing) start_close(sk, loop);
        if (sk->closing) write_some(sk);
        return;
    }
    if (!sk->opened) {
        int rc = put_on_loop(sk, loop);
        if (rc) {
            io_fail(sk, rc);
            return;
        }
    }
    if (sk->listener) {
        accept_while_asked(sk);
        return;
    }
    if (atomic_load_explicit(&sk->state, memory_order_relaxed) != SK_OPEN) return;
    follow_active(sk);
    write_some(sk);
}

void ar__sock_io_kicked(ar__io_cmd_t *cmd, uv_loop_t *loop)
{
    ar__sock_t *sk = (ar__sock_t *)((char *)cmd - offsetof(ar__sock_t, kick));
    /* seq_cst: a change made before a kick that found this still set is seen below */
    atomic_store_explicit(&sk->kicked, false, memory_order_seq_cst);
    if (!atomic_load_explicit(&table(sk)->stopping, memory_order_relaxed)) update(sk, loop);
    ar__sock_unref(sk); /* the command's reference */
}

/* The node stops: every process is gone, so every socket was let go. Those still draining
 * close now. */
void ar__sock_io_stop(ar__io_cmd_t *cmd, uv_loop_t *loop)
{
    (void)loop;
    struct ar__sockets *t = (struct ar__sockets *)((char *)cmd - offsetof(struct ar__sockets, stop_cmd));
    atomic_store_explicit(&t->stopping, true, memory_order_relaxed);
    uint32_t n = atomic_load_explicit(&t->nslots, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++) {
        ar__sock_t *sk = &t->chunks[i / AR__SOCK_CHUNK][i % AR__SOCK_CHUNK];
        if (atomic_load_explicit(&sk->refs, memory_order_acquire) > 0 && sk->opened && !sk->done)
            io_close(sk);
    }
}
