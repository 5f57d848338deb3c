/* Peers and the send side of distribution.
 *
 * The directory maps a node id (the low half of its pids' hi) to its peer entry: an
 * open-addressed table of atomic slots, filled under a lock and read without one. Entries
 * live until the node stops, across connections and runs of the peer, so a sender may
 * keep a pointer.
 *
 * ar__dist_route (called by the one routing point for a pid of another node) turns an
 * envelope into a frame on the peer's out queue: the bytes are encoded on the sender's
 * own thread, and a LINK, MONITOR or CALL leaves its envelope behind as the remote half
 * the peer's loss will owe (links.c), so that loss never needs memory. The I/O thread is
 * woken (coalescing), or told to connect first. A sender never waits: a CAST or CALL
 * beyond dist_queue_limit is refused with AR_EAGAIN (Erlang suspends the sender on a busy
 * distribution port; arbor's ar_send never blocks, so it says so, as a full bounded
 * mailbox does); signals and replies always go.
 */
#include "dist.h"

#include <string.h>
#include <sys/socket.h>
#include <xxhash.h>

uint32_t ar__node_id_of(const char *name)
{
    uint64_t h = XXH3_64bits_withSeed(name, strlen(name), 0x6172626f72ULL);
    return (uint32_t)(h ^ (h >> 32)) | 0x80000000u; /* unnamed nodes count from 1 */
}

/* ---- the directory ---- */
static inline uint32_t slot_of(uint32_t id) { return (id * 2654435761u) & (AR__PEER_SLOTS - 1); }

ar__peer_t *ar__peer_find(struct ar__dist *d, uint32_t id)
{
    for (uint32_t i = slot_of(id), n = 0; n < AR__PEER_SLOTS; i = (i + 1) & (AR__PEER_SLOTS - 1), n++) {
        ar__peer_t *p = atomic_load_explicit(&d->slots[i], memory_order_acquire);
        if (!p) return NULL;
        if (p->id == id) return p;
    }
    return NULL;
}

ar__peer_t *ar__peer_get(struct ar__dist *d, uint32_t id, const char *name)
{
    ar__peer_t *p = ar__peer_find(d, id);
    if (p) return p;
    pthread_mutex_lock(&d->peers_lock);
    if ((p = ar__peer_find(d, id)) != NULL) goto out;
    uint32_t n = atomic_load_explicit(&d->npeers, memory_order_relaxed);
    if (n >= AR__MAX_PEERS || !(p = ar__calloc(1, sizeof *p))) goto out;
    p->id = id;
    p->dist = d;
    if (name) snprintf(p->name, sizeof p->name, "%s", name);
    atomic_store_explicit(&p->stub.next, NULL, memory_order_relaxed);
    atomic_store_explicit(&p->head, (uintptr_t)&p->stub, memory_order_relaxed);
    p->tail = &p->stub;
    atomic_store_explicit(&p->wtoken, 1, memory_order_relaxed); /* down: the socket is nobody's */
    atomic_store_explicit(&p->fd, -1, memory_order_relaxed);
    d->all[n] = p;
    atomic_store_explicit(&d->npeers, n + 1, memory_order_release);
    uint32_t i = slot_of(id);
    while (atomic_load_explicit(&d->slots[i], memory_order_relaxed)) i = (i + 1) & (AR__PEER_SLOTS - 1);
    atomic_store_explicit(&d->slots[i], p, memory_order_release); /* its fields first */
out:
    pthread_mutex_unlock(&d->peers_lock);
    return p;
}

void ar__peer_free_all(struct ar__dist *d)
{
    uint32_t n = atomic_load_explicit(&d->npeers, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++) {
        ar__peer_t *p = d->all[i];
        ar__peer_drain_lost(p, AR_NOCONNECTION);
        ar__rh_free_all(p);
        ar__free(p);
    }
}

/* ---- the names this OS process knows, for ar_pid_format ---- */
#define NAMES_MAX 4096
static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static struct { uint32_t id; char name[AR_NODE_NAME_MAX]; } names[NAMES_MAX];
static size_t nnames;

void ar__node_names_note(uint32_t id, const char *name)
{
    pthread_mutex_lock(&names_lock);
    size_t i = 0;
    while (i < nnames && names[i].id != id) i++;
    if (i < NAMES_MAX) {
        snprintf(names[i].name, sizeof names[i].name, "%s", name);
        names[i].id = id;
        if (i == nnames) nnames++;
    }
    pthread_mutex_unlock(&names_lock);
}

bool ar__node_name_of(uint32_t id, char *out, size_t n)
{
    bool found = false;
    pthread_mutex_lock(&names_lock);
    for (size_t i = 0; i < nnames && !found; i++)
        if (names[i].id == id) {
            snprintf(out, n, "%s", names[i].name);
            found = true;
        }
    pthread_mutex_unlock(&names_lock);
    return found;
}

/* ---- frames ---- */
ar__frame_t *ar__frame_new(size_t len)
{
    ar__frame_t *f = ar__pool_alloc(sizeof *f + len);
    if (!f) return NULL;
    f->next = NULL;
    f->len = (uint32_t)len;
    f->sent = 0;
    f->to_hi = 0;
    f->from = AR_PID_NONE;
    f->stream = 0;
    f->answer = NULL;
    f->book = BOOK_NONE;
    f->book_kind = 0;
    f->book_local = f->book_key = 0;
    f->counted = false;
    return f;
}

void ar__frame_free(ar__frame_t *f)
{
    if (f) ar__pool_free(f, sizeof *f + f->len);
}

static void connect_run(ar__io_cmd_t *cmd, uv_loop_t *loop)
{
    (void)loop;
    ar__peer_t *p = (ar__peer_t *)((char *)cmd - offsetof(ar__peer_t, connect_cmd));
    ar__conn_dial(p->dist, p, p->addr[0] ? p->addr : NULL, NULL, AR_PID_NONE);
}

/* Gives the socket back; frames that came meanwhile are the I/O thread's to write. */
void ar__peer_token_give(ar__peer_t *p)
{
    /* seq_cst, as a sender's push and its failed take: either the sender takes the token
     * and sees its frame in the backlog, or this sees the backlog and wakes the I/O thread */
    atomic_store_explicit(&p->wtoken, 0, memory_order_seq_cst);
    if (atomic_load_explicit(&p->backlog, memory_order_seq_cst) > 0) uv_async_send(&p->dist->flush);
}

/* A frame that needs no booking, to a peer that is up and idle: one non-blocking send on
 * the sender's own thread spares the hand-off to the I/O thread (a thread wake-up each
 * way, more than the round trip itself on loopback). What the socket does not take at
 * once is left for the I/O thread, before anything else. */
static bool write_direct(ar__peer_t *p, ar__frame_t *f)
{
    if (f->book != BOOK_NONE || f->answer || f->len > AR__DIRECT_MAX ||
        atomic_load_explicit(&p->backlog, memory_order_relaxed) != 0)
        return false;
    /* a stream of frames is better coalesced by the I/O thread: one write for many */
    uint64_t now = ar__now_ns();
    if (now - atomic_exchange_explicit(&p->last_send_ns, now, memory_order_relaxed) < AR__DIRECT_GAP_NS ||
        !ar__peer_token_take(p))
        return false;
    int fd = atomic_load_explicit(&p->fd, memory_order_relaxed);
    if (fd < 0 || atomic_load_explicit(&p->backlog, memory_order_seq_cst) != 0) {
        ar__peer_token_give(p);
        return false;
    }
    ssize_t n = send(fd, f->bytes, f->len, MSG_DONTWAIT | MSG_NOSIGNAL);
    atomic_store_explicit(&p->wrote, 1, memory_order_relaxed);
    if (n == (ssize_t)f->len) {
        ar__peer_token_give(p);
        if (f->counted) atomic_fetch_sub_explicit(&p->queued, f->len, memory_order_relaxed);
        ar__frame_free(f);
        return true;
    }
    f->sent = n > 0 ? (uint32_t)n : 0; /* an error is the I/O thread's to find */
    atomic_fetch_add_explicit(&p->backlog, 1, memory_order_seq_cst);
    atomic_store_explicit(&p->partial, f, memory_order_release);
    ar__peer_token_give(p);
    return true;
}

void ar__peer_push(ar__peer_t *p, ar__frame_t *f)
{
    if (write_direct(p, f)) return;
    atomic_fetch_add_explicit(&p->backlog, 1, memory_order_seq_cst);
    ar__mpsc_push(&p->head, &f->q, 0);
    /* seq_cst, as the I/O thread's store of DOWN and its drain after it: either this sees
     * DOWN and connects, or the drain sees the frame */
    int st = atomic_load_explicit(&p->state, memory_order_seq_cst);
    if (st == PEER_DOWN &&
        atomic_compare_exchange_strong_explicit(&p->state, &st, PEER_CONNECTING,
                                                memory_order_seq_cst, memory_order_seq_cst)) {
        p->connect_cmd.run = connect_run;
        ar__io_submit(p->dist->node, &p->connect_cmd);
        return;
    }
    uv_async_send(&p->dist->flush); /* coalesces: one wake-up for many frames */
}

/* ---- the route ---- */
static uint8_t wire_kind(const ar__env_t *e)
{
    switch (e->kind) {
    case ENV_MSG:
        switch (e->msg.kind) {
        case AR_MSG_CALL: return W_CALL;
        case AR_MSG_REPLY: return W_REPLY;
        case AR_MSG_CAST:
        case AR_MSG_TIMER: return W_CAST; /* a timer's message to a remote pid is a message */
        default: return W_NONE;
        }
    case ENV_EXIT: return W_EXIT;
    case ENV_LINK: return W_LINK;
    case ENV_UNLINK: return W_UNLINK;
    case ENV_MONITOR: return W_MONITOR;
    case ENV_DEMONITOR: return W_DEMONITOR;
    case ENV_DOWN: return W_DOWN;
    case ENV_CALL_DONE: return W_CALL_DONE;
    default: return W_NONE;
    }
}

/* The remote half a frame adds, or the one it ends (see links.c). */
static void book(ar__frame_t *f, ar_node_t *node, uint8_t kind, const ar__env_t *e, ar_pid_t to)
{
    ar_pid_t from = e->msg.from;
    bool local = from.hi == node->pid_hi;
    switch (kind) {
    case W_LINK: f->book = BOOK_ADD; f->book_kind = RH_LINK; f->book_key = to.lo; break;
    case W_UNLINK: f->book = BOOK_DEL; f->book_kind = RH_LINK; f->book_key = to.lo; break;
    case W_EXIT:
        if (!(e->flags & ENVF_LINK)) return;
        f->book = BOOK_DEL; f->book_kind = RH_LINK; f->book_key = to.lo;
        break;
    case W_MONITOR: f->book = BOOK_ADD; f->book_kind = RH_MONITOR; f->book_key = e->msg.ref; break;
    case W_DEMONITOR: f->book = BOOK_DEL; f->book_kind = RH_MONITOR; f->book_key = e->msg.ref; break;
    case W_DOWN: f->book = BOOK_DEL; f->book_kind = RH_WATCHED; f->book_key = e->msg.ref; break;
    case W_CALL_DONE: f->book = BOOK_DEL; f->book_kind = RH_CALL; f->book_key = e->msg.ref; break;
    case W_CALL:
        from = e->msg.reply_to.pid; /* the caller is whoever waits for the answer */
        local = from.hi == node->pid_hi;
        f->book = BOOK_ADD; f->book_kind = RH_CALL; f->book_key = e->msg.reply_to.ref;
        break;
    default: return;
    }
    if (!local) f->book = BOOK_NONE;
    f->book_local = from.lo;
}

/* The envelope becomes the remote half it stands for: the signal owed on the peer's loss
 * (its reason filled in then). A large envelope gives way to a small one if it can. */
static ar__env_t *as_answer(ar__env_t *e, uint8_t kind, ar_pid_t to)
{
    if (e->cap > sizeof(uint64_t) * 8) {
        ar__env_t *small = ar__env_new(0);
        if (small) {
            small->msg = e->msg;
            small->flags = e->flags;
            ar__env_free(e);
            e = small;
        }
    }
    ar_pid_t owner = e->msg.from;
    ar__env_t *a;
    switch (kind) {
    case W_LINK:
        a = ar__env_recycle(e, ENV_EXIT, to, 0, AR_REASON(AR_NOCONNECTION));
        a->flags = ENVF_LINK;
        break;
    case W_MONITOR: a = ar__env_recycle(e, ENV_DOWN, to, e->msg.ref, AR_REASON(AR_NOCONNECTION)); break;
    default: /* W_CALL */
        owner = e->msg.reply_to.pid;
        a = ar__env_recycle_reply(e, to, e->msg.reply_to, AR_REASON(AR_NOCONNECTION));
        break;
    }
    a->to_lo = owner.lo;
    return a;
}

static size_t text_len(const ar__env_t *e)
{
    return e->msg.reason.text ? strlen(e->msg.reason.text) : 0;
}

bool ar__dist_known_dead(ar_node_t *node, ar_pid_t to)
{
    struct ar__dist *d = node->dist;
    if (!to.hi) return true;
    if (ar__node_id(to.hi) == ar__node_id(node->pid_hi)) return true; /* an earlier run */
    if (!d || ar__is_net_pid(to)) return false;
    ar__peer_t *p = ar__peer_find(d, ar__node_id(to.hi));
    uint64_t hi = p ? atomic_load_explicit(&p->hi, memory_order_acquire) : 0;
    return hi && hi != to.hi;
}

int ar__dist_route(ar_node_t *node, ar_pid_t to, ar__env_t *e)
{
    struct ar__dist *d = node->dist;
    if (!d || !to.hi || ar__node_id(to.hi) == ar__node_id(node->pid_hi) ||
        atomic_load_explicit(&d->closed, memory_order_acquire))
        return AR_ENOPROC;
    uint8_t kind = wire_kind(e);
    if (kind == W_NONE) return AR_ENOPROC;
    ar__peer_t *p = ar__peer_find(d, ar__node_id(to.hi));
    if (!p) { /* a node nobody here has heard of: nothing can reach it */
        ar__dead_letter_from(node, to, e, AR_REASON(AR_NOCONNECTION));
        return 0;
    }
    uint64_t hi = atomic_load_explicit(&p->hi, memory_order_acquire);
    if (hi && hi != to.hi && !ar__is_net_pid(to)) return AR_ENOPROC; /* an earlier run */
    bool counted = kind == W_CAST || kind == W_CALL;
    if (counted && atomic_load_explicit(&p->queued, memory_order_relaxed) >= d->queue_limit)
        return AR_EAGAIN;
    bool message = kind == W_CAST || kind == W_CALL || kind == W_REPLY;
    bool has_text = kind == W_REPLY || kind == W_EXIT || kind == W_DOWN;
    ar__wire_msg_t m = {
        .kind = kind,
        .flags = (uint8_t)((e->flags & (ENVF_LINK | ENVF_RELEASED)) |
                           ((e->xflags & AR__XF_REFUSED) ? W_FLAG_REFUSED : 0)),
        .tag = e->msg.tag,
        .from = e->msg.from,
        .to = to,
        .reply_pid = kind == W_CALL ? e->msg.reply_to.pid : AR_PID_NONE,
        .ref = kind == W_CALL ? e->msg.reply_to.ref : e->msg.ref,
        .code = (uint32_t)e->msg.reason.code,
        .text = has_text ? e->msg.reason.text : NULL,
        .text_len = has_text ? text_len(e) : 0,
        .payload = message ? e->msg.data : NULL,
        .len = message ? e->msg.len : 0,
    };
    size_t len = ar__wire_size(&m);
    ar__frame_t *f = len <= UINT32_MAX ? ar__frame_new(len) : NULL;
    if (!f) {
        if (counted) return AR_ENOMEM; /* the sender hears of it */
        /* A signal no frame could be made for is not dropped on the quiet: the connection
         * is dropped instead, so both sides fire what they owe with AR_NOCONNECTION. */
        atomic_store_explicit(&p->must_drop, 1, memory_order_release);
        uv_async_send(&d->flush);
        ar__env_free(e);
        return 0;
    }
    ar__wire_encode(&m, f->bytes);
    f->to_hi = to.hi;
    f->from = e->msg.from;
    f->counted = counted;
    book(f, node, kind, e, to);
    if (f->book == BOOK_ADD)
        f->answer = as_answer(e, kind, to);
    else
        ar__env_free(e);
    if (counted) atomic_fetch_add_explicit(&p->queued, len, memory_order_relaxed);
    ar__peer_push(p, f);
    return 0;
}

void ar__frame_done(ar__peer_t *p, ar__frame_t *f)
{
    if (f->counted) atomic_fetch_sub_explicit(&p->queued, f->len, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->backlog, 1, memory_order_relaxed);
    ar__frame_free(f);
}
