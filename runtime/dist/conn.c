/* Connections: every socket of the distribution layer, on the I/O thread alone.
 *
 * A connection is dialed (on first use of a peer's pid, or by ar_node_connect) or
 * accepted. Until its handshake succeeds nothing but handshake frames (AR__HS_MAX bytes
 * at most) is read; the acceptor decides at the HELLO whether it wants this connection
 * (one per peer: of two crossing attempts, the one dialed by the node with the smaller
 * name wins, as both ends judge alike).
 *
 * Reading: a fixed buffer of one frame at most. Each length prefix is checked before the
 * frame is awaited (AR__WIRE_MAX once up: large messages come as fragments), each frame is
 * decoded by wire.c (bounded check, then msgpack), fragments are put together up to
 * max_message_bytes, and the envelope goes to its local process (ar__dist_deliver). Any
 * byte read is liveness. A malformed frame closes this connection and nothing else.
 *
 * Writing: at most one write in flight per connection; everything queued meanwhile goes
 * in the next one (coalesced, an iovec each). A frame whose body exceeds AR__FRAG_SLICE is
 * written a slice per write, beside everything else queued, so a 16 MiB message delays
 * other traffic by one slice at most; later frames of its sender wait behind it (their
 * order), no one else's do.
 *
 * Ticks: each tick_ms, a peer we wrote nothing to gets a W_TICK; a peer we heard nothing
 * from for AR__SILENT_TICKS ticks is lost. A lost peer fires its remote halves (links.c),
 * its queued frames owe their answers, NODE_DOWN is emitted; its next use dials again.
 */
#include "dist.h"

#include <arpa/inet.h>
#include <sched.h>
#include <string.h>

struct stream { /* a fragmented message being put together */
    uint64_t id;
    uint8_t *buf;
    size_t len, cap;
    bool used, discard; /* discard: over max_message_bytes, its slices are skipped */
};

struct waiter { /* an ar_node_connect waiting for this connection's handshake */
    struct waiter *next;
    ar__env_t *reply;
    ar_pid_t to;
};

typedef struct ar__conn {
    uv_tcp_t tcp;
    struct ar__dist *d;
    struct ar__conn *next, *prev; /* every open connection */
    ar__peer_t *peer;           /* dialed for, or known from its HELLO */
    ar__hs_t hs;
    bool outbound, up, closing, writing, wrote;
    bool has_token;             /* this thread holds its peer's socket token */
    bool hello_seen;            /* (acceptor) the HELLO passed accept_hello */
    char addr[AR_NAME_MAX];     /* dialed */
    uv_connect_t creq;
    uint64_t opened_ms, last_read_ms;
    uint8_t *rbuf;
    size_t rlen, rcap;
    uv_write_t wreq;
    uv_buf_t iov[AR__WRITE_IOVS];
    ar__frame_t *inflight;      /* frames of the write in flight, freed when it is done */
    uint8_t heads[AR__WRITE_IOVS / 2][AR__FRAG_HEAD_MAX];
    struct stream streams[AR__MAX_STREAMS];
    struct waiter *waiters;
} ar__conn_t;

struct hs_write {
    uv_write_t req;
    uint8_t buf[AR__HS_MAX];
};

static uint64_t now_ms(struct ar__dist *d) { return uv_now(d->loop); }
static uint64_t hs_timeout_ms(struct ar__dist *d)
{
    uint64_t t = (uint64_t)d->tick_ms * AR__SILENT_TICKS;
    return t < 2000 ? 2000 : t;
}

static void lost(ar__conn_t *c, int why);

/* ---- connections ---- */
static ar__conn_t *conn_new(struct ar__dist *d, bool outbound)
{
    ar__conn_t *c = ar__calloc(1, sizeof *c);
    if (!c) return NULL;
    c->rcap = AR__FRAME_PREFIX + AR__HS_MAX; /* a frame's room only once authenticated */
    if (!(c->rbuf = ar__malloc(c->rcap))) {
        ar__free(c);
        return NULL;
    }
    c->d = d;
    c->outbound = outbound;
    c->opened_ms = c->last_read_ms = now_ms(d);
    uv_tcp_init(d->loop, &c->tcp);
    c->tcp.data = c;
    c->next = d->conns;
    if (d->conns) d->conns->prev = c;
    d->conns = c;
    d->handshakes++;
    return c;
}

static void conn_freed(uv_handle_t *h)
{
    ar__conn_t *c = h->data;
    for (unsigned i = 0; i < AR__MAX_STREAMS; i++) ar__free(c->streams[i].buf);
    ar__free(c->rbuf);
    ar__free(c);
}

static void answer_waiters(ar__conn_t *c, int rc)
{
    uint64_t hi = c->peer ? atomic_load_explicit(&c->peer->hi, memory_order_relaxed) : 0;
    for (struct waiter *w = c->waiters, *n; w; w = n) {
        n = w->next;
        ar__dist_answer(c->d->node, w->reply, w->to, rc, (ar_pid_t){hi, 0});
        ar__free(w);
    }
    c->waiters = NULL;
}

/* Closes c; its memory goes once libuv is done with it. Frames of a write in flight are
 * freed by that write's callback (libuv cancels it). */
static void conn_close(ar__conn_t *c)
{
    if (c->closing) return;
    c->closing = true;
    if (!c->up) c->d->handshakes--;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->d->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, conn_freed);
}

static int socket_of(ar__conn_t *c)
{
    uv_os_fd_t fd = -1;
    return uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 ? fd : -1;
}

/* The peer goes down: the socket becomes nobody's (a sender in the middle of its one
 * non-blocking send is waited out) before it is closed. */
static void seize_socket(ar__conn_t *c)
{
    ar__peer_t *p = c->peer;
    if (!c->has_token)
        while (!ar__peer_token_take(p)) sched_yield();
    c->has_token = false; /* kept taken until the next connection is up */
    atomic_store_explicit(&p->fd, -1, memory_order_relaxed);
}

/* ---- the write side ---- */
static void write_done(uv_write_t *req, int status);

static bool sender_waits(ar__peer_t *p, ar_pid_t from)
{
    for (ar__frame_t *b = p->bigs; b; b = b->next)
        if (ar_pid_eq(b->from, from)) return true;
    for (ar__frame_t *h = p->held; h; h = h->next)
        if (ar_pid_eq(h->from, from)) return true;
    return false;
}

static void append(ar__frame_t **head, ar__frame_t **tail, ar__frame_t *f)
{
    f->next = NULL;
    if (*tail)
        (*tail)->next = f;
    else
        *head = f;
    *tail = f;
}

/* Takes what senders queued into the I/O thread's own list, booking remote halves. */
static void take_queue(ar__peer_t *p)
{
    struct ar__qnode *n;
    while ((n = ar__mpsc_pop(&p->head, &p->tail, &p->stub, 0)) != NULL) {
        ar__frame_t *f = (ar__frame_t *)n;
        ar__rh_book(p, f);
        append(&p->fifo, &p->fifo_tail, f);
    }
}

/* A frame that cannot go: what it owed is answered, the rest dropped (counted). */
static void frame_lost(ar__peer_t *p, ar__frame_t *f, ar_exit_code_t why, bool deliver)
{
    ar_node_t *node = p->dist->node;
    if (f->answer) {
        if (deliver)
            ar__rh_deliver(node, f->answer, why);
        else
            ar__env_free(f->answer);
        f->answer = NULL;
    }
    if (f->counted && deliver) ar__count(ar__current_sched(), node, AR__DROPPED);
    ar__frame_done(p, f);
}

static void drain(ar__peer_t *p, ar_exit_code_t why, bool deliver)
{
    ar__frame_t *pf = atomic_exchange_explicit(&p->partial, NULL, memory_order_acquire);
    if (pf) frame_lost(p, pf, why, deliver);
    struct ar__qnode *n;
    while ((n = ar__mpsc_pop(&p->head, &p->tail, &p->stub, 0)) != NULL) {
        ar__frame_t *f = (ar__frame_t *)n;
        if (f->book == BOOK_DEL) f->book = BOOK_NONE;
        frame_lost(p, f, why, deliver);
    }
    ar__frame_t *lists[] = {p->fifo, p->bigs, p->held};
    p->fifo = p->fifo_tail = p->bigs = p->held = p->held_tail = NULL;
    for (size_t i = 0; i < 3; i++)
        for (ar__frame_t *f = lists[i], *nx; f; f = nx) {
            nx = f->next;
            frame_lost(p, f, why, deliver);
        }
}

void ar__peer_drain_lost(ar__peer_t *p, ar_exit_code_t why) { drain(p, why, false); }

/* Frames of a run that is over: their targets are dead (AR_NOPROC), as local ones. */
static void drop_stale(ar__peer_t *p, uint64_t hi)
{
    ar__frame_t *keep = NULL, *keep_tail = NULL;
    for (ar__frame_t *f = p->fifo, *nx; f; f = nx) {
        nx = f->next;
        if (f->to_hi == hi || (f->to_hi >> 32) == 0)
            append(&keep, &keep_tail, f);
        else
            frame_lost(p, f, AR_NOPROC, true);
    }
    p->fifo = keep;
    p->fifo_tail = keep_tail;
}

/* Puts the frames held behind a finished fragmented one of `from` back in front. */
static void release_held(ar__peer_t *p, ar_pid_t from)
{
    ar__frame_t *back = NULL, *back_tail = NULL, *keep = NULL, *keep_tail = NULL;
    for (ar__frame_t *f = p->held, *nx; f; f = nx) {
        nx = f->next;
        if (ar_pid_eq(f->from, from))
            append(&back, &back_tail, f);
        else
            append(&keep, &keep_tail, f);
    }
    p->held = keep;
    p->held_tail = keep_tail;
    if (back) {
        back_tail->next = p->fifo;
        if (!p->fifo) p->fifo_tail = back_tail;
        p->fifo = back;
    }
}

static void start_write(ar__conn_t *c)
{
    ar__peer_t *p = c->peer;
    if (!c->up || c->writing || c->closing) return;
    take_queue(p);
    if (!c->has_token && !(c->has_token = ar__peer_token_take(p))) return; /* a sender
        writes: it wakes this thread again when it is done */
    unsigned niov = 0;
    size_t bytes = 0;
    ar__frame_t *done = NULL, *done_tail = NULL;
    ar__frame_t *pf = atomic_exchange_explicit(&p->partial, NULL, memory_order_acquire);
    if (pf) { /* the rest of a sender's own write goes first */
        c->iov[niov++] = uv_buf_init((char *)pf->bytes + pf->sent, pf->len - pf->sent);
        bytes += pf->len - pf->sent;
        append(&done, &done_tail, pf);
    }
    /* small frames, in order, as many as fit */
    while (p->fifo && niov < AR__WRITE_IOVS / 2 && bytes < AR__WRITE_BATCH) {
        ar__frame_t *f = p->fifo;
        if (!(p->fifo = f->next)) p->fifo_tail = NULL;
        if (sender_waits(p, f->from)) {
            append(&p->held, &p->held_tail, f);
        } else if (f->len - AR__FRAME_PREFIX > AR__FRAG_SLICE) {
            f->stream = ++p->next_stream;
            ar__frame_t **at = &p->bigs;
            while (*at) at = &(*at)->next;
            f->next = NULL;
            *at = f;
        } else {
            c->iov[niov++] = uv_buf_init((char *)f->bytes, f->len);
            bytes += f->len;
            append(&done, &done_tail, f);
        }
    }
    /* then one slice of each fragmented one */
    unsigned nheads = 0;
    for (ar__frame_t **at = &p->bigs; *at && niov + 2 <= AR__WRITE_IOVS;) {
        ar__frame_t *b = *at;
        size_t body = b->len - AR__FRAME_PREFIX;
        size_t slice = body - b->sent < AR__FRAG_SLICE ? body - b->sent : AR__FRAG_SLICE;
        bool last = b->sent + slice == body;
        size_t hl = ar__wire_frag_head(c->heads[nheads], b->stream, last, slice);
        c->iov[niov++] = uv_buf_init((char *)c->heads[nheads++], (unsigned)hl);
        c->iov[niov++] = uv_buf_init((char *)b->bytes + AR__FRAME_PREFIX + b->sent, (unsigned)slice);
        b->sent += (uint32_t)slice;
        if (last) {
            *at = b->next;
            append(&done, &done_tail, b);
            release_held(p, b->from);
        } else {
            at = &b->next;
        }
    }
    if (!niov) {
        c->has_token = false;
        ar__peer_token_give(p);
        return;
    }
    c->inflight = done;
    c->writing = c->wrote = true;
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, c->iov, niov, write_done);
    if (rc) { /* the socket is gone: the frames were taken, so they are lost with it */
        c->writing = false;
        for (ar__frame_t *f = done, *nx; f; f = nx) {
            nx = f->next;
            ar__frame_done(p, f);
        }
        c->inflight = NULL;
        lost(c, AR_ENOCONN);
    }
}

static void write_done(uv_write_t *req, int status)
{
    ar__conn_t *c = req->data;
    ar__peer_t *p = c->peer;
    c->writing = false;
    for (ar__frame_t *f = c->inflight, *nx; f; f = nx) {
        nx = f->next;
        ar__frame_done(p, f);
    }
    c->inflight = NULL;
    if (c->closing) return;
    if (status < 0) {
        lost(c, AR_ENOCONN);
        return;
    }
    c->has_token = false;
    ar__peer_token_give(p);
    start_write(c);
}

void ar__conn_kick(ar__peer_t *p)
{
    if (atomic_load_explicit(&p->must_drop, memory_order_acquire) && p->conn) {
        atomic_store_explicit(&p->must_drop, 0, memory_order_relaxed);
        lost(p->conn, AR_ENOMEM);
        return;
    }
    if (p->conn) start_write(p->conn);
}

/* ---- handshake ---- */
static void hs_written(uv_write_t *req, int status)
{
    (void)status;
    ar__free(req->data);
}

static void hs_send(ar__conn_t *c)
{
    struct hs_write *w = ar__malloc(sizeof *w);
    if (!w) {
        lost(c, AR_ENOMEM);
        return;
    }
    size_t n = ar__hs_output(&c->hs, w->buf, sizeof w->buf);
    if (!n) {
        ar__free(w);
        return;
    }
    w->req.data = w;
    uv_buf_t b = uv_buf_init((char *)w->buf, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, hs_written) != 0) {
        ar__free(w);
        lost(c, AR_ENOCONN);
    }
}

static void emit(ar_node_t *node, ar_event_kind_t kind, const char *name, ar_exit_code_t why)
{
    if (atomic_load_explicit(&node->stopping, memory_order_acquire) || !ar__events_wanted(node, kind))
        return;
    ar_event_t e = {.kind = kind, .name = name, .reason = AR_REASON(why)};
    ar__events_publish(node, &e);
}

static void send_peer_note(ar__peer_t *to, const ar__peer_t *about)
{
    uint64_t hi = atomic_load_explicit(&about->hi, memory_order_relaxed);
    ar__wire_msg_t m = {.kind = W_PEER, .ref = hi, .text = about->name,
                        .text_len = strlen(about->name), .payload = about->addr,
                        .len = strlen(about->addr)};
    ar__frame_t *f = ar__frame_new(ar__wire_size(&m));
    if (!f) return; /* gossip only: the peer learns of it another way or not at all */
    ar__wire_encode(&m, f->bytes);
    atomic_fetch_add_explicit(&to->backlog, 1, memory_order_relaxed);
    append(&to->fifo, &to->fifo_tail, f);
}

/* Tells the new peer of the others it may meet in pids, and them of it. */
static void gossip(struct ar__dist *d, ar__peer_t *np)
{
    uint32_t n = atomic_load_explicit(&d->npeers, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++) {
        ar__peer_t *o = d->all[i];
        if (o == np || !o->conn || !o->conn->up || !o->addr[0]) continue;
        send_peer_note(np, o);
        if (np->addr[0]) {
            send_peer_note(o, np);
            start_write(o->conn);
        }
    }
}

/* The peer's advertised address, with the address it came from where it listens on all. */
static void learn_addr(ar__conn_t *c, ar__peer_t *p)
{
    const char *adv = c->hs.peer_listen;
    if (!adv[0]) {
        if (c->outbound && c->addr[0]) snprintf(p->addr, sizeof p->addr, "%s", c->addr);
        return;
    }
    const char *colon = strrchr(adv, ':');
    bool any = strncmp(adv, "0.0.0.0:", 8) == 0 || strncmp(adv, "[::]:", 5) == 0;
    if (!any || !colon) {
        snprintf(p->addr, sizeof p->addr, "%s", adv);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char host[AR_NAME_MAX];
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) return;
    ar__addr_format(&ss, host, sizeof host);
    char *hc = strrchr(host, ':');
    if (hc) *hc = '\0';
    snprintf(p->addr, sizeof p->addr, "%s%s", host, colon);
}

/* Node ids are 32-bit hashes of names: two names that collide (ours among them) cannot
 * share a cluster, and the second is refused rather than mistaken for the first. */
static bool id_free_for(struct ar__dist *d, uint32_t id, const char *name)
{
    if (id == ar__node_id(d->node->pid_hi)) return false;
    ar__peer_t *p = ar__peer_find(d, id);
    return !p || !p->name[0] || strcmp(p->name, name) == 0;
}

/* The handshake succeeded: c is the peer's connection now. */
static void attach(ar__conn_t *c)
{
    struct ar__dist *d = c->d;
    uint64_t hi = c->hs.peer_hi;
    if (ar__node_id(hi) != ar__node_id_of(c->hs.peer_name)) { /* a node id not its name's */
        lost(c, AR_EBADMSG);
        return;
    }
    if (!id_free_for(d, ar__node_id(hi), c->hs.peer_name)) {
        lost(c, AR_EBADMSG);
        return;
    }
    ar__peer_t *p = ar__peer_get(d, ar__node_id(hi), c->hs.peer_name);
    uint8_t *rb = p ? ar__realloc(c->rbuf, AR__FRAME_PREFIX + AR__WIRE_MAX) : NULL;
    if (!rb) {
        lost(c, AR_ENOMEM);
        return;
    }
    c->rbuf = rb;
    c->rcap = AR__FRAME_PREFIX + AR__WIRE_MAX;
    if (p->conn && p->conn != c) {
        if (atomic_load_explicit(&p->hi, memory_order_relaxed) == hi) { /* one is enough */
            answer_waiters(c, 0);
            conn_close(c);
            return;
        }
        lost(p->conn, AR_ENOCONN); /* it restarted: the old connection is dead */
    }
    if (p->dialing && p->dialing != c) { /* ours lost to this one: its waiters come along */
        ar__conn_t *o = p->dialing;
        for (struct waiter *w = o->waiters, *n; w; w = n) {
            n = w->next;
            w->next = c->waiters;
            c->waiters = w;
        }
        o->waiters = NULL;
        o->peer = NULL;
        conn_close(o);
    }
    p->dialing = NULL;
    snprintf(p->name, sizeof p->name, "%.*s", (int)sizeof p->name - 1, c->hs.peer_name);
    ar__node_names_note(p->id, p->name);
    learn_addr(c, p);
    c->peer = p;
    c->up = true;
    d->handshakes--;
    p->conn = c;
    p->retries = 0;
    atomic_store_explicit(&p->hi, hi, memory_order_release);
    atomic_store_explicit(&p->fd, socket_of(c), memory_order_relaxed);
    atomic_store_explicit(&p->state, PEER_UP, memory_order_seq_cst);
    c->has_token = true; /* held since the peer went down: start_write gives it back */
    take_queue(p);
    drop_stale(p, hi); /* frames for an earlier run of it: dead targets */
    answer_waiters(c, 0);
    emit(d->node, AR_EV_NODE_UP, p->name, AR_NORMAL);
    gossip(d, p);
    start_write(c);
}

/* The acceptor's check at the HELLO: do we want this connection? */
static bool accept_hello(ar__conn_t *c)
{
    struct ar__dist *d = c->d;
    uint32_t id = ar__node_id(c->hs.peer_hi);
    c->hello_seen = true;
    if (id != ar__node_id_of(c->hs.peer_name) || !id_free_for(d, id, c->hs.peer_name)) return false;
    /* looked up, never added: a stranger fills no directory before it is authenticated */
    ar__peer_t *p = ar__peer_find(d, id);
    if (!p) return true;
    if (p->conn) { /* connected: a new run of it replaces the old, a duplicate is refused */
        if (atomic_load_explicit(&p->hi, memory_order_relaxed) == c->hs.peer_hi) return false;
    } else if (p->dialing && strcmp(d->node->cfg.name, c->hs.peer_name) < 0) {
        return false; /* both dialed at once: the smaller name's dial wins */
    }
    c->peer = p;
    return true;
}

static void hs_frame(ar__conn_t *c, const uint8_t *body, size_t len)
{
    int rc = ar__hs_feed(&c->hs, body, len);
    if (rc < 0) {
        lost(c, rc);
        return;
    }
    if (!c->outbound && c->hs.step == HS_WAIT_AUTH && !c->hello_seen && !accept_hello(c)) {
        lost(c, AR_EALREADY);
        return;
    }
    hs_send(c);
    if (rc == 1 && !c->closing) attach(c);
}

/* ---- the read side ---- */
/* A message over this node's max_message_bytes costs that message, not the connection
 * (the peer may allow more): dropped and counted. */
static void too_big(ar__conn_t *c)
{
    ar__count(ar__current_sched(), c->d->node, AR__DROPPED);
}

static void stream_end(struct stream *s)
{
    ar__free(s->buf);
    s->buf = NULL;
    s->used = s->discard = false;
}

static int frag(ar__conn_t *c, const ar__wire_msg_t *m)
{
    struct stream *s = NULL, *free_s = NULL;
    for (unsigned i = 0; i < AR__MAX_STREAMS; i++) {
        if (c->streams[i].used && c->streams[i].id == m->ref) s = &c->streams[i];
        if (!c->streams[i].used && !free_s) free_s = &c->streams[i];
    }
    size_t max = c->d->node->cfg.max_message_bytes + AR__WIRE_OVERHEAD;
    bool last = m->flags & 1;
    if (!s) {
        if (!free_s) return AR_EBADMSG; /* more streams at once than any sender makes */
        s = free_s;
        s->used = true;
        s->id = m->ref;
        s->len = s->cap = 0;
    }
    if (!s->discard && m->len > max - s->len) { /* over the bound: the rest is skipped */
        ar__free(s->buf);
        s->buf = NULL;
        s->discard = true;
        too_big(c);
    }
    if (s->discard) {
        if (last) stream_end(s);
        return 0;
    }
    if (s->len + m->len > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : m->len * 4;
        if (cap > max) cap = max;
        if (cap < s->len + m->len) cap = s->len + m->len;
        uint8_t *nb = ar__realloc(s->buf, cap ? cap : 1);
        if (!nb) return AR_ENOMEM;
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, m->payload, m->len);
    s->len += m->len;
    if (!last) return 0;
    ar__wire_msg_t whole;
    int rc = ar__wire_decode(s->buf, s->len, &whole);
    if (rc == 0 && (whole.kind == W_FRAG || whole.kind == W_PEER || whole.kind == W_TICK)) rc = AR_EBADMSG;
    if (rc == 0 && whole.len > c->d->node->cfg.max_message_bytes)
        too_big(c);
    else if (rc == 0)
        rc = ar__dist_deliver(c->d, c->peer, &whole);
    stream_end(s);
    return rc;
}

static int peer_note(ar__conn_t *c, const ar__wire_msg_t *m)
{
    struct ar__dist *d = c->d;
    char name[AR_NODE_NAME_MAX], addr[AR_NAME_MAX];
    if (!ar__node_name_valid(m->text, m->text_len) || m->len >= sizeof addr) return AR_EBADMSG;
    memcpy(name, m->text, m->text_len);
    name[m->text_len] = '\0';
    memcpy(addr, m->payload, m->len);
    addr[m->len] = '\0';
    uint32_t id = ar__node_id(m->ref);
    if (id != ar__node_id_of(name)) return AR_EBADMSG;
    if (!id_free_for(d, id, name)) return 0; /* ourselves, or a name whose id is taken */
    ar__peer_t *p = ar__peer_get(d, id, name);
    if (p && !p->addr[0] && !p->conn) snprintf(p->addr, sizeof p->addr, "%s", addr);
    if (p) ar__node_names_note(id, name);
    return 0;
}

static int up_frame(ar__conn_t *c, const uint8_t *body, size_t len)
{
    ar__wire_msg_t m;
    int rc = ar__wire_decode(body, len, &m);
    if (rc) return rc;
    switch (m.kind) {
    case W_TICK: return 0;
    case W_FRAG: return frag(c, &m);
    case W_PEER: return peer_note(c, &m);
    default:
        if (m.kind >= W_HELLO) return AR_EBADMSG;
        if (m.len > c->d->node->cfg.max_message_bytes) {
            too_big(c);
            return 0;
        }
        return ar__dist_deliver(c->d, c->peer, &m);
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    ar__conn_t *c = h->data;
    *buf = uv_buf_init((char *)c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    ar__conn_t *c = st->data;
    if (nread < 0) {
        lost(c, AR_ENOCONN);
        return;
    }
    if (nread == 0) return;
    c->rlen += (size_t)nread;
    c->last_read_ms = now_ms(c->d); /* any byte is a sign of life */
    size_t off = 0;
    while (!c->closing && c->rlen - off >= AR__FRAME_PREFIX) {
        const uint8_t *b = c->rbuf + off;
        size_t len = ((size_t)b[0] << 24) | ((size_t)b[1] << 16) | ((size_t)b[2] << 8) | b[3];
        size_t limit = c->up ? AR__WIRE_MAX : AR__HS_MAX;
        if (len == 0 || len > limit) { /* checked before a byte more is awaited */
            lost(c, AR_EBADMSG);
            return;
        }
        if (c->rlen - off < AR__FRAME_PREFIX + len) break;
        off += AR__FRAME_PREFIX + len;
        if (!c->up) {
            hs_frame(c, b + AR__FRAME_PREFIX, len);
        } else {
            int rc = up_frame(c, b + AR__FRAME_PREFIX, len);
            if (rc) {
                lost(c, rc);
                return;
            }
        }
    }
    if (c->closing) return;
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
}

static void start_reading(ar__conn_t *c)
{
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0) lost(c, AR_ENOCONN);
}

/* ---- loss ---- */
static void lost(ar__conn_t *c, int why)
{
    if (c->closing) return;
    struct ar__dist *d = c->d;
    ar__peer_t *p = c->peer;
    if (c->up) {
        seize_socket(c);
        p->conn = NULL;
        /* seq_cst, then the drain: see ar__peer_push */
        atomic_store_explicit(&p->state, PEER_DOWN, memory_order_seq_cst);
        drain(p, AR_NOCONNECTION, true);
        ar__rh_fire_all(p, d->node, AR_NOCONNECTION);
        conn_close(c);
        for (unsigned i = 0; i < AR__MAX_STREAMS; i++) stream_end(&c->streams[i]);
        emit(d->node, AR_EV_NODE_DOWN, p->name, AR_NOCONNECTION);
        return;
    }
    /* the handshake did not finish; a peer that closes on our proof (AUTH) refused it:
     * the acceptor tells nothing more to a connector that may be guessing the cookie */
    if (c->outbound && why == AR_ENOCONN && c->hs.step == HS_WAIT_WELCOME) why = AR_EAUTH;
    int rc = why == AR_EAUTH ? AR_EAUTH : why == AR_EINVAL ? AR_EINVAL : AR_ENOCONN;
    answer_waiters(c, rc);
    conn_close(c);
    if (!p || p->conn) return;
    if (c->outbound && p->dialing == c) {
        p->dialing = NULL;
        /* closed by the peer in the middle: it may have preferred our peer's own dial,
         * which then comes; give it a few ticks before giving up on what is queued */
        if (why == AR_ENOCONN && c->hs.step != HS_SEND_HELLO && p->retries < 3) {
            p->retries++;
            return;
        }
        p->retries = 0;
        atomic_store_explicit(&p->state, PEER_DOWN, memory_order_seq_cst);
        drain(p, AR_NOCONNECTION, true);
    }
}

/* ---- dialing and accepting ---- */
static void connected(uv_connect_t *req, int status)
{
    ar__conn_t *c = req->data;
    if (c->closing) return;
    if (status < 0) {
        lost(c, AR_ENOCONN);
        return;
    }
    start_reading(c);
    if (!c->closing) hs_send(c); /* HELLO */
}

void ar__conn_dial(struct ar__dist *d, ar__peer_t *peer, const char *addr, ar__env_t *reply,
                   ar_pid_t reply_to)
{
    ar_node_t *node = d->node;
    struct waiter *w = NULL;
    if (reply && !(w = ar__calloc(1, sizeof *w))) { /* the reply itself answers */
        ar__dist_answer(node, reply, reply_to, AR_ENOMEM, AR_PID_NONE);
        return;
    }
    if (w) {
        w->reply = reply;
        w->to = reply_to;
    }
    if (!peer && addr) { /* connected already, or on the way? */
        uint32_t n = atomic_load_explicit(&d->npeers, memory_order_acquire);
        for (uint32_t i = 0; i < n && !peer; i++)
            if (strcmp(d->all[i]->addr, addr) == 0) peer = d->all[i];
    }
    if (peer && peer->conn && peer->conn->up) {
        if (w) {
            w->next = peer->conn->waiters;
            peer->conn->waiters = w;
            answer_waiters(peer->conn, 0);
        }
        return;
    }
    if (peer && peer->dialing) {
        if (w) {
            w->next = peer->dialing->waiters;
            peer->dialing->waiters = w;
        }
        return;
    }
    struct sockaddr_storage ss;
    ar__conn_t *c = NULL;
    int rc = d->stopping ? AR_ECLOSED : !addr || !node->cfg.cookie ? AR_ENOCONN
                                                                   : ar__addr_parse(addr, &ss);
    if (rc == AR_EINVAL && peer) rc = AR_ENOCONN;
    if (rc == 0 && !(c = conn_new(d, true))) rc = AR_ENOMEM;
    if (rc == 0 && (rc = ar__hs_init(&c->hs, HS_CONNECTOR, node->cfg.cookie, node->cfg.name,
                                     node->pid_hi, d->address)) != 0)
        conn_close(c);
    if (rc) {
        if (w) ar__dist_answer(node, w->reply, w->to, rc, AR_PID_NONE);
        ar__free(w);
        if (peer && !peer->conn) {
            atomic_store_explicit(&peer->state, PEER_DOWN, memory_order_seq_cst);
            drain(peer, AR_NOCONNECTION, true);
        }
        return;
    }
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    c->waiters = w;
    c->peer = peer;
    if (peer) peer->dialing = c;
    c->creq.data = c;
    if (uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&ss, connected) != 0)
        lost(c, AR_ENOCONN);
}

static void free_handle(uv_handle_t *h) { ar__free(h); }

static void accepted(uv_stream_t *server, int status)
{
    struct ar__dist *d = server->data;
    if (status < 0) return;
    /* handshakes in progress are bounded: a flood of strangers costs a bounded memory */
    ar__conn_t *c = d->handshakes < AR__MAX_HANDSHAKES ? conn_new(d, false) : NULL;
    if (!c) { /* take it off the backlog anyway, and close it */
        uv_tcp_t *t = ar__malloc(sizeof *t);
        if (!t) return;
        uv_tcp_init(d->loop, t);
        t->data = t;
        uv_accept(server, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, free_handle);
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        ar__hs_init(&c->hs, HS_ACCEPTOR, d->node->cfg.cookie, d->node->cfg.name,
                    d->node->pid_hi, d->address) != 0) {
        conn_close(c);
        return;
    }
    start_reading(c);
}

int ar__conn_listen(struct ar__dist *d, const char *addr)
{
    struct sockaddr_storage ss;
    int rc = ar__addr_parse(addr, &ss);
    if (rc) return rc;
    uv_tcp_init(d->loop, &d->listener);
    d->listener.data = d;
    d->listening = true;
    rc = uv_tcp_bind(&d->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&d->listener, 128, accepted);
    if (rc) return rc == UV_EADDRINUSE ? AR_EEXIST : AR_EINVAL;
    int len = sizeof ss;
    uv_tcp_getsockname(&d->listener, (struct sockaddr *)&ss, &len);
    ar__addr_format(&ss, d->address, sizeof d->address);
    return 0;
}

/* ---- ticks ---- */
static void send_tick(ar__conn_t *c)
{
    ar__wire_msg_t m = {.kind = W_TICK};
    ar__frame_t *f = ar__frame_new(ar__wire_size(&m));
    if (!f) return;
    ar__wire_encode(&m, f->bytes);
    atomic_fetch_add_explicit(&c->peer->backlog, 1, memory_order_relaxed);
    append(&c->peer->fifo, &c->peer->fifo_tail, f);
    start_write(c);
}

void ar__conn_tick(struct ar__dist *d)
{
    uint64_t now = now_ms(d), silent = (uint64_t)d->tick_ms * AR__SILENT_TICKS;
    for (ar__conn_t *c = d->conns, *n; c; c = n) {
        n = c->next;
        if (!c->up) {
            if (now - c->opened_ms > hs_timeout_ms(d)) lost(c, AR_ENOCONN);
            continue;
        }
        if (now - c->last_read_ms > silent) {
            lost(c, AR_ENOCONN);
            continue;
        }
        bool wrote = atomic_exchange_explicit(&c->peer->wrote, 0, memory_order_relaxed) || c->wrote;
        if (!wrote && !c->writing) send_tick(c);
        c->wrote = false;
    }
    /* peers waiting for a retry, or with frames queued while nobody connects */
    uint32_t np = atomic_load_explicit(&d->npeers, memory_order_acquire);
    for (uint32_t i = 0; i < np; i++) {
        ar__peer_t *p = d->all[i];
        if (p->conn || p->dialing) continue;
        int st = atomic_load_explicit(&p->state, memory_order_seq_cst);
        bool queued = (struct ar__qnode *)atomic_load_explicit(&p->head, memory_order_acquire) != p->tail ||
                      p->fifo;
        if (st == PEER_CONNECTING || (st == PEER_DOWN && queued &&
                                      atomic_compare_exchange_strong(&p->state, &st, PEER_CONNECTING)))
            ar__conn_dial(d, p, p->addr[0] ? p->addr : NULL, NULL, AR_PID_NONE);
    }
}

void ar__conn_drop(ar__peer_t *p)
{
    if (p->conn && p->conn->up) lost(p->conn, AR_ENOCONN);
}

void ar__conn_close_all(struct ar__dist *d)
{
    while (d->conns) {
        ar__conn_t *c = d->conns;
        answer_waiters(c, AR_ECLOSED);
        if (c->up) {
            /* what the stop's own ends queued (EXITs, DOWNs with their real reasons) goes
             * as far as the socket takes it at once: libuv writes before it returns */
            start_write(c);
            seize_socket(c);
            c->peer->conn = NULL;
        }
        conn_close(c);
    }
    uint32_t np = atomic_load_explicit(&d->npeers, memory_order_acquire);
    for (uint32_t i = 0; i < np; i++) { /* only foreign threads' calls are left to answer */
        d->all[i]->dialing = NULL;
        drain(d->all[i], AR_NOCONNECTION, true);
        ar__rh_fire_all(d->all[i], d->node, AR_NOCONNECTION);
    }
    if (d->listening) uv_close((uv_handle_t *)&d->listener, NULL);
}
