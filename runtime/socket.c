/* Sockets owned by processes: the table of slots, the owners' index, the public calls.
 *
 * Ownership. Every socket with an owner is in the owners' index, a hash of chains by the
 * owner's pid under striped locks. A process's end looks its own chain up after its pid is
 * unpublished (exit.c) and closes what it finds. A hand-over (ar_socket_give, and an
 * accepted connection, which the listener's owner gets) checks that the new owner is alive
 * under the same lock: so either it lands before that process's sweep, which closes it, or
 * it finds the process dead and the giver keeps the socket. No descriptor outlives its
 * owner, whichever way the race goes.
 *
 * Flow control. `active` counts the deliveries the owner allows; the I/O thread reads only
 * while it is positive and stops when it runs out, holding at most one read back. Sends
 * are bounded by send_limit: the owner is the only producer of its socket's queue, so the
 * bound is exact. A send that finds nothing queued writes at once, non-blocking, on the
 * owner's own thread, as a frame to an idle peer does in distribution; what the socket does
 * not take goes to the queue.
 */
#include "socket.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the table ---- */
int ar__sockets_init(ar_node_t *node)
{
    struct ar__sockets *t = ar__calloc(1, sizeof *t);
    if (!t) return AR_ENOMEM;
    pthread_mutex_init(&t->lock, NULL);
    for (unsigned i = 0; i < AR__SOCK_STRIPES; i++) pthread_mutex_init(&t->stripes[i], NULL);
    t->node = node;
    t->stop_cmd.run = ar__sock_io_stop;
    node->sockets = t;
    return 0;
}

static ar__sock_t *slot_at(struct ar__sockets *t, uint32_t index)
{
    return &t->chunks[index / AR__SOCK_CHUNK][index % AR__SOCK_CHUNK];
}

/* The slot an id names, or NULL; its serial still has to match. */
static ar__sock_t *slot_of(ar_node_t *node, ar_socket_t id)
{
    struct ar__sockets *t = node->sockets;
    uint32_t low = (uint32_t)id;
    /* acquire: a slot counted is a slot made */
    if (low == 0 || low > atomic_load_explicit(&t->nslots, memory_order_acquire)) return NULL;
    ar__sock_t *sk = slot_at(t, low - 1);
    return atomic_load_explicit(&sk->serial, memory_order_acquire) == (uint32_t)(id >> 32) ? sk : NULL;
}

static void kick_run(ar__io_cmd_t *cmd, uv_loop_t *loop) { ar__sock_io_kicked(cmd, loop); }

ar__sock_t *ar__sock_new(ar_node_t *node, uint64_t owner_lo)
{
    struct ar__sockets *t = node->sockets;
    ar__sock_t *sk = NULL;
    ar__env_t *closed = ar__env_new(0);
    if (!closed) return NULL;
    pthread_mutex_lock(&t->lock);
    if (t->free_head) {
        sk = slot_at(t, t->free_head - 1);
        t->free_head = sk->next;
    } else {
        uint32_t n = atomic_load_explicit(&t->nslots, memory_order_relaxed);
        if (n % AR__SOCK_CHUNK == 0 && n / AR__SOCK_CHUNK < AR__SOCK_MAX_CHUNKS &&
            !t->chunks[n / AR__SOCK_CHUNK]) {
            ar__sock_t *c = ar__calloc(AR__SOCK_CHUNK, sizeof *c);
            if (c)
                for (uint32_t i = 0; i < AR__SOCK_CHUNK; i++) {
                    c[i].index = n + i;
                    atomic_init(&c[i].serial, 1);
                }
            t->chunks[n / AR__SOCK_CHUNK] = c;
        }
        if (n / AR__SOCK_CHUNK < AR__SOCK_MAX_CHUNKS && t->chunks[n / AR__SOCK_CHUNK]) {
            sk = slot_at(t, n);
            atomic_store_explicit(&t->nslots, n + 1, memory_order_release);
        }
    }
    if (sk) {
        uint32_t index = sk->index;
        memset((char *)sk + offsetof(ar__sock_t, refs), 0, sizeof *sk - offsetof(ar__sock_t, refs));
        sk->index = index;
        sk->node = node;
        atomic_store_explicit(&sk->refs, 2, memory_order_relaxed);
        atomic_store_explicit(&sk->fd, -1, memory_order_relaxed);
        atomic_store_explicit(&sk->out_head, (uintptr_t)&sk->out_stub, memory_order_relaxed);
        sk->out_tail = &sk->out_stub;
        sk->kick.run = kick_run;
        sk->send_limit = AR__SOCK_SEND_LIMIT;
        sk->closed = closed;
        atomic_store_explicit(&sk->owner_lo, owner_lo, memory_order_release);
        /* seq_cst: an exit that finds none live skips the index (ar__sockets_release_owner) */
        atomic_fetch_add_explicit(&t->live, 1, memory_order_seq_cst);
    }
    pthread_mutex_unlock(&t->lock);
    if (!sk) ar__env_free(closed);
    return sk;
}

static void slot_free(ar__sock_t *sk)
{
    struct ar__sockets *t = sk->node->sockets;
    struct ar__qnode *q;
    while ((q = ar__mpsc_pop(&sk->out_head, &sk->out_tail, &sk->out_stub, 0)) != NULL)
        ar__sock_out_free((ar__sock_out_t *)q);
    ar__env_free(sk->held);
    sk->held = NULL;
    ar__env_free(sk->closed); /* never told */
    sk->closed = NULL;
    pthread_mutex_lock(&t->lock);
    uint32_t s = atomic_load_explicit(&sk->serial, memory_order_relaxed) + 1;
    atomic_store_explicit(&sk->serial, s ? s : 1, memory_order_release); /* stale ids miss */
    atomic_store_explicit(&sk->owner_lo, 0, memory_order_relaxed);
    sk->next = t->free_head;
    t->free_head = sk->index + 1;
    atomic_fetch_sub_explicit(&t->live, 1, memory_order_relaxed);
    pthread_mutex_unlock(&t->lock);
}

void ar__sock_unref(ar__sock_t *sk)
{
    if (atomic_fetch_sub_explicit(&sk->refs, 1, memory_order_acq_rel) == 1) slot_free(sk);
}

void ar__sock_kick(ar__sock_t *sk)
{
    if (atomic_exchange_explicit(&sk->kicked, true, memory_order_seq_cst)) return;
    atomic_fetch_add_explicit(&sk->refs, 1, memory_order_relaxed); /* the command's */
    ar__io_submit(sk->node, &sk->kick);
}

static void route_lock(ar__sock_t *sk)
{
    while (atomic_exchange_explicit(&sk->route_lock, true, memory_order_acquire))
        sched_yield(); /* held for one route at most */
}

static void route_unlock(ar__sock_t *sk)
{
    atomic_store_explicit(&sk->route_lock, false, memory_order_release);
}

void ar__sock_to_owner(ar__sock_t *sk, ar__env_t *e)
{
    ar_node_t *node = sk->node;
    route_lock(sk);
    uint64_t lo = atomic_load_explicit(&sk->owner_lo, memory_order_acquire);
    int rc = lo ? ar__route(node, (ar_pid_t){node->pid_hi, lo}, e) : AR_ENOPROC;
    route_unlock(sk);
    if (rc) ar__env_free(e);
}

/* ---- the owners' index ---- */
static uint32_t bucket_of(uint64_t owner_lo)
{
    return (uint32_t)((owner_lo * 0x9E3779B97F4A7C15ull) >> 54); /* 10 bits: 1024 buckets */
}
_Static_assert(AR__SOCK_BUCKETS == 1024, "bucket_of makes 10 bits");

static pthread_mutex_t *stripe_of(struct ar__sockets *t, uint32_t b)
{
    return &t->stripes[b % AR__SOCK_STRIPES];
}

int ar__sock_own(ar__sock_t *sk, uint64_t owner_lo)
{
    ar_node_t *node = sk->node;
    struct ar__sockets *t = node->sockets;
    uint32_t b = bucket_of(owner_lo);
    pthread_mutex_lock(stripe_of(t, b));
    /* seq_cst: against an exit's unpublish and its look at `live` (see the top) */
    atomic_thread_fence(memory_order_seq_cst);
    ar_proc_t *p = ar__proc_lookup(node, (ar_pid_t){node->pid_hi, owner_lo});
    if (!p || (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_FOREIGN)) {
        pthread_mutex_unlock(stripe_of(t, b));
        return AR_ENOPROC;
    }
    atomic_store_explicit(&sk->owner_lo, owner_lo, memory_order_release);
    sk->next = t->buckets[b];
    t->buckets[b] = sk->index + 1;
    pthread_mutex_unlock(stripe_of(t, b));
    return 0;
}

/* Takes sk out of its owner's chain. */
static void disown(ar__sock_t *sk)
{
    struct ar__sockets *t = sk->node->sockets;
    uint32_t b = bucket_of(atomic_load_explicit(&sk->owner_lo, memory_order_relaxed));
    pthread_mutex_lock(stripe_of(t, b));
    for (uint32_t *at = &t->buckets[b]; *at; at = &slot_at(t, *at - 1)->next)
        if (*at == sk->index + 1) {
            *at = sk->next;
            break;
        }
    pthread_mutex_unlock(stripe_of(t, b));
}

/* A socket with nothing queued is shut down on the spot, so its peer sees the close and a
 * listener's port is free before the owner's end is announced (SOCK-4); the I/O thread
 * closes the descriptor later (a connection once its peer has closed too, or after the
 * linger). The write token keeps the descriptor from closing under it. */
static void shut_now(ar__sock_t *sk)
{
    if (atomic_load_explicit(&sk->queued, memory_order_acquire) != 0 ||
        atomic_exchange_explicit(&sk->wtoken, 1, memory_order_acquire) != 0)
        return;
    int fd = atomic_load_explicit(&sk->fd, memory_order_relaxed);
    uint8_t st = atomic_load_explicit(&sk->state, memory_order_acquire);
    if (fd >= 0 && st == SK_LISTEN) shutdown(fd, SHUT_RDWR);
    /* a connection only stops writing: its FIN follows what it sent, and its peer's last
     * bytes are still read (and dropped) by the lingering close, so that no reset cuts off
     * what the peer has not read yet */
    if (fd >= 0 && st == SK_OPEN && shutdown(fd, SHUT_WR) == 0)
        atomic_store_explicit(&sk->fin_sent, true, memory_order_release);
    atomic_store_explicit(&sk->wtoken, 0, memory_order_release);
}

void ar__sock_let_go(ar__sock_t *sk)
{
    atomic_store_explicit(&sk->active, 0, memory_order_relaxed);
    atomic_store_explicit(&sk->owner_lo, 0, memory_order_relaxed);
    atomic_store_explicit(&sk->close_req, true, memory_order_seq_cst);
    shut_now(sk); /* after close_req: the EOF it makes is nobody's news */
    ar__sock_kick(sk);
    ar__sock_unref(sk);
}

void ar__sockets_release_owner(ar_node_t *node, ar_pid_t owner)
{
    struct ar__sockets *t = node->sockets;
    /* seq_cst: the unpublish before this, against ar__sock_own's check */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&t->live, memory_order_relaxed) == 0) return;
    uint32_t b = bucket_of(owner.lo), mine = 0;
    pthread_mutex_lock(stripe_of(t, b));
    for (uint32_t *at = &t->buckets[b]; *at;) {
        ar__sock_t *sk = slot_at(t, *at - 1);
        if (atomic_load_explicit(&sk->owner_lo, memory_order_relaxed) != owner.lo) {
            at = &sk->next;
            continue;
        }
        *at = sk->next;
        sk->next = mine;
        mine = sk->index + 1;
    }
    pthread_mutex_unlock(stripe_of(t, b));
    while (mine) {
        ar__sock_t *sk = slot_at(t, mine - 1);
        mine = sk->next;
        ar__sock_let_go(sk);
    }
}

void ar__sockets_stop(ar_node_t *node)
{
    if (node->sockets && node->loop) ar__io_submit(node, &node->sockets->stop_cmd);
}

void ar__sockets_free(ar_node_t *node)
{
    struct ar__sockets *t = node->sockets;
    if (!t) return;
    for (uint32_t c = 0; c < AR__SOCK_MAX_CHUNKS && t->chunks[c]; c++) {
        for (uint32_t i = 0; i < AR__SOCK_CHUNK; i++) { /* what the stop left queued */
            ar__sock_t *sk = &t->chunks[c][i];
            struct ar__qnode *q;
            if (atomic_load_explicit(&sk->out_head, memory_order_relaxed))
                while ((q = ar__mpsc_pop(&sk->out_head, &sk->out_tail, &sk->out_stub, 0)) != NULL)
                    ar__sock_out_free((ar__sock_out_t *)q);
            ar__env_free(sk->held);
            ar__env_free(sk->closed);
        }
        ar__free(t->chunks[c]);
    }
    pthread_mutex_destroy(&t->lock);
    for (unsigned i = 0; i < AR__SOCK_STRIPES; i++) pthread_mutex_destroy(&t->stripes[i]);
    ar__free(t);
    node->sockets = NULL;
}

/* ---- the public calls ---- */
/* The socket id names, if self owns it (then nobody else can free it). */
static ar__sock_t *owned(ar_proc_t *self, ar_socket_t id)
{
    if (!ar__self_ok(self)) return NULL;
    ar__sock_t *sk = slot_of(self->node, id);
    if (!sk || atomic_load_explicit(&sk->owner_lo, memory_order_acquire) != ar__proc_pid(self).lo)
        return NULL;
    /* the owner read may have raced a reuse: the serial, read again, settles it */
    return atomic_load_explicit(&sk->serial, memory_order_acquire) == (uint32_t)(id >> 32) ? sk : NULL;
}

/* The arguments of listen and connect: the caller a process, the address and options good. */
static bool open_args_ok(ar_proc_t *self, const char *addr, const ar_socket_opts_t *o,
                         ar_socket_t *out, struct sockaddr_storage *ss, size_t *limit,
                         int *backlog)
{
    if (!ar__self_ok(self) || !out || (o && o->backlog < 0) || ar__addr_parse(addr, ss))
        return false;
    *limit = o && o->send_limit ? o->send_limit : AR__SOCK_SEND_LIMIT;
    *backlog = o && o->backlog ? o->backlog : AR__SOCK_BACKLOG;
    return true;
}

static int errno_code(int e)
{
    switch (e) {
    case EADDRINUSE: return AR_EADDRINUSE;
    case ENOMEM:
    case ENOBUFS: return AR_ENOMEM;
    case EADDRNOTAVAIL:
    case EAFNOSUPPORT:
    case EINVAL: return AR_EINVAL;
    default: return AR_EIO;
    }
}

/* Binds and listens on the caller's thread: neither waits, and a refusal (the address in
 * use) is the caller's to hear at once. The I/O thread takes the descriptor over. */
static int bind_listen(const struct sockaddr_storage *ss, int backlog, char *local, size_t n)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    struct sockaddr_storage got;
    socklen_t glen = sizeof got;
    if (bind(fd, (const struct sockaddr *)ss, len) != 0 || listen(fd, backlog) != 0 ||
        getsockname(fd, (struct sockaddr *)&got, &glen) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    ar__addr_format(&got, local, n);
    return fd;
}

/* A new socket, set up: its owner is the caller (alive: it is running), and the I/O thread
 * puts it on the loop. */
static int hand_to_loop(ar_proc_t *self, ar__sock_t *sk, enum ar__sock_state state, ar_socket_t *out)
{
    atomic_store_explicit(&sk->state, state, memory_order_release);
    ar__sock_own(sk, ar__proc_pid(self).lo);
    *out = ar__sock_id(sk);
    ar__sock_kick(sk);
    return 0;
}

int ar_socket_listen(ar_proc_t *self, const char *addr, const ar_socket_opts_t *opts,
                     ar_socket_t *out)
{
    struct sockaddr_storage ss;
    size_t limit;
    int backlog;
    if (!open_args_ok(self, addr, opts, out, &ss, &limit, &backlog)) return AR_EINVAL;
    char local[AR__SOCK_ADDR];
    int fd = bind_listen(&ss, backlog, local, sizeof local);
    if (fd < 0) return errno_code(-fd);
    ar__sock_t *sk = ar__sock_new(self->node, 0);
    if (!sk) {
        close(fd);
        return AR_ENOMEM;
    }
    sk->listener = true;
    sk->send_limit = limit;
    sk->backlog = backlog;
    memcpy(sk->local, local, sizeof local);
    atomic_store_explicit(&sk->fd, fd, memory_order_relaxed);
    return hand_to_loop(self, sk, SK_LISTEN, out);
}

int ar_socket_connect(ar_proc_t *self, const char *addr, const ar_socket_opts_t *opts,
                      ar_socket_t *out)
{
    struct sockaddr_storage ss;
    size_t limit;
    int backlog;
    if (!open_args_ok(self, addr, opts, out, &ss, &limit, &backlog)) return AR_EINVAL;
    ar__sock_t *sk = ar__sock_new(self->node, 0);
    if (!sk) return AR_ENOMEM;
    sk->send_limit = limit;
    sk->dest = ss;
    return hand_to_loop(self, sk, SK_CONNECTING, out);
}

int ar_socket_active(ar_proc_t *self, ar_socket_t s, int n)
{
    ar__sock_t *sk = owned(self, s);
    if (!sk || n < AR_ACTIVE_ONCE) return AR_EINVAL;
    if (atomic_load_explicit(&sk->state, memory_order_acquire) == SK_CLOSED) return AR_ENOTCONN;
    int old;
    if (n == 0) {
        atomic_store_explicit(&sk->active, 0, memory_order_relaxed);
        return 0;
    }
    if (n == AR_ACTIVE_ONCE) {
        old = atomic_exchange_explicit(&sk->active, 1, memory_order_seq_cst); /* no NOTE */
    } else {
        old = atomic_load_explicit(&sk->active, memory_order_relaxed);
        int count;
        do count = old & AR__SOCK_COUNT;
        while (!atomic_compare_exchange_weak_explicit(
            &sk->active, &old, (count > AR__SOCK_COUNT - n ? AR__SOCK_COUNT : count + n) | AR__SOCK_NOTE,
            memory_order_seq_cst, memory_order_relaxed));
    }
    if (old == 0) ar__sock_kick(sk); /* the I/O thread had stopped reading */
    return 0;
}

/* The owner writes itself when nothing is queued: one non-blocking send. How much went. */
static size_t send_direct(ar__sock_t *sk, const void *data, size_t len)
{
    if (atomic_load_explicit(&sk->state, memory_order_acquire) != SK_OPEN ||
        atomic_exchange_explicit(&sk->wtoken, 1, memory_order_acquire) != 0)
        return 0;
    ssize_t n = 0;
    int fd = atomic_load_explicit(&sk->fd, memory_order_relaxed);
    if (fd >= 0) n = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    atomic_store_explicit(&sk->wtoken, 0, memory_order_release);
    return n > 0 ? (size_t)n : 0; /* a failure is the I/O thread's to find and report */
}

int ar_socket_send(ar_proc_t *self, ar_socket_t s, const void *data, size_t len)
{
    ar__sock_t *sk = owned(self, s);
    if (!sk || sk->listener || (!data && len)) return AR_EINVAL;
    /* broken: a send of its own went in part and lost the rest; the I/O thread closes it,
     * and nothing may follow the hole meanwhile (the owner alone sets it) */
    if (atomic_load_explicit(&sk->state, memory_order_acquire) == SK_CLOSED ||
        atomic_load_explicit(&sk->broken, memory_order_relaxed))
        return AR_ENOTCONN;
    if (len > self->node->cfg.max_message_bytes) return AR_E2BIG;
    if (len == 0) return 0;
    size_t orig = len;
    size_t q = atomic_load_explicit(&sk->queued, memory_order_acquire);
    if (q > 0 && q + len > sk->send_limit) {
        /* seq_cst, then the queue again: a drain that misses the flag is seen here */
        atomic_store_explicit(&sk->want_writable, true, memory_order_seq_cst);
        q = atomic_load_explicit(&sk->queued, memory_order_seq_cst);
        if (q > 0 && q + len > sk->send_limit) return AR_EAGAIN;
    }
    if (q == 0) {
        size_t n = send_direct(sk, data, len);
        if (n == len) return 0;
        data = (const char *)data + n;
        len -= n;
    }
    ar__sock_out_t *o = ar__malloc(sizeof *o + len);
    if (!o) {
        if (len < orig) { /* part went: the rest would leave a hole in the stream */
            atomic_store_explicit(&sk->broken, true, memory_order_seq_cst);
            ar__sock_kick(sk);
        }
        return AR_ENOMEM;
    }
    o->len = len;
    memcpy(o + 1, data, len);
    atomic_fetch_add_explicit(&sk->queued, len, memory_order_seq_cst);
    ar__mpsc_push(&sk->out_head, &o->q, 0);
    ar__sock_kick(sk);
    return 0;
}

int ar_socket_give(ar_proc_t *self, ar_socket_t s, ar_pid_t to)
{
    ar__sock_t *sk = owned(self, s);
    if (!sk) return AR_EINVAL;
    ar_node_t *node = self->node;
    uint64_t me = ar__proc_pid(self).lo;
    if (to.hi != node->pid_hi || to.lo == me) return to.lo == me && to.hi == node->pid_hi ? 0 : AR_ENOPROC;
    ar__env_t *e = ar__env_new(0); /* first: a hand-over either happens whole or not */
    if (!e) return AR_ENOMEM;
    e->msg.kind = AR_MSG_SOCKET;
    e->msg.tag = AR_SOCK_OWNED;
    e->msg.ref = s;
    e->msg.from = ar__proc_pid(self);
    atomic_store_explicit(&sk->active, 0, memory_order_relaxed); /* the new owner arms it */
    route_lock(sk); /* nothing of the socket's is routed between the change and the OWNED */
    disown(sk);
    int rc = ar__sock_own(sk, to.lo);
    if (rc != 0) {
        ar__sock_own(sk, me);
        ar__env_free(e);
    } else if (ar__route(node, to, e) != 0) {
        ar__env_free(e); /* it died meanwhile, with the socket in its index: its end closes it */
    }
    route_unlock(sk);
    return rc;
}

int ar_socket_close(ar_proc_t *self, ar_socket_t s)
{
    ar__sock_t *sk = owned(self, s);
    if (!sk) return AR_EINVAL;
    disown(sk);
    ar__sock_let_go(sk);
    return 0;
}

int ar_socket_address(ar_proc_t *self, ar_socket_t s, bool peer, char *buf, size_t n)
{
    ar__sock_t *sk = owned(self, s);
    if (!sk || !buf || n == 0) return AR_EINVAL;
    (void)atomic_load_explicit(&sk->state, memory_order_acquire); /* the addresses are set */
    const char *a = peer ? sk->peer : sk->local;
    if (!a[0]) return AR_ENOTCONN;
    return (size_t)snprintf(buf, n, "%s", a) >= n ? AR_E2BIG : 0;
}

const char *ar_sock_event_name(int ev)
{
    switch (ev) {
    case AR_SOCK_DATA: return "DATA";
    case AR_SOCK_ACCEPTED: return "ACCEPTED";
    case AR_SOCK_CONNECTED: return "CONNECTED";
    case AR_SOCK_CLOSED: return "CLOSED";
    case AR_SOCK_PASSIVE: return "PASSIVE";
    case AR_SOCK_WRITABLE: return "WRITABLE";
    case AR_SOCK_OWNED: return "OWNED";
    default: return "UNKNOWN";
    }
}
