/* Distribution: start and stop, the delivery of remote envelopes, ar_node_connect,
 * ar_whereis_remote.
 *
 * A node with a name and a cookie distributes; one that listens must have both
 * (ar_node_start refuses otherwise). Its I/O thread owns every socket (conn.c); the
 * layer's own handles (the senders' wake-up, the tick timer, the listener) are made there
 * by a command ar__dist_start waits for, so the node's address is known when it returns.
 *
 * Remote whereis: each node answers requests sent to its pseudo-process (pid lo 0, any
 * run) on the I/O thread. The request is a plain ar_call to that pid, so it has a call's
 * rules: its timeout, and AR_ENOCONN if the peer is lost meanwhile (a remote half).
 */
#include "dist.h"

#include <netinet/in.h>
#include <string.h>

/* ---- answers: an int result and a pid, big-endian ---- */
#define ANSWER_LEN 20u

static void put64(uint8_t *b, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) b[i] = (uint8_t)v;
}
static uint64_t get64(const uint8_t *b)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | b[i];
    return v;
}

void ar__dist_answer(ar_node_t *node, ar__env_t *e, ar_pid_t to, int rc, ar_pid_t pid)
{
    uint8_t *b = ar__env_payload(e);
    uint32_t u = (uint32_t)rc;
    b[0] = (uint8_t)(u >> 24), b[1] = (uint8_t)(u >> 16), b[2] = (uint8_t)(u >> 8), b[3] = (uint8_t)u;
    put64(b + 4, pid.hi);
    put64(b + 12, pid.lo);
    e->kind = ENV_MSG;
    e->msg.kind = AR_MSG_REPLY;
    e->msg.from = AR_PID_NONE;
    e->msg.reason = AR_REASON(AR_NORMAL);
    e->msg.data = b;
    e->msg.len = ANSWER_LEN;
    e->flags = ENVF_RELEASED | ((e->msg.ref & 1) ? ENVF_SYNC : 0);
    ar__route_or_dead_letter(node, to, e);
}

static int read_answer(ar_buf_t *reply, ar_pid_t *pid)
{
    int rc = AR_EBADMSG;
    if (reply->len == ANSWER_LEN) {
        const uint8_t *b = reply->data;
        rc = (int32_t)(((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3]);
        if (pid) *pid = (ar_pid_t){get64(b + 4), get64(b + 12)};
    }
    ar_buf_free(reply);
    return rc;
}

/* ---- incoming envelopes ---- */
static ar__env_t *signal_env(const ar__wire_msg_t *m, int kind)
{
    size_t tl = m->text_len ? m->text_len + 1 : 0;
    ar__env_t *e = ar__env_new(tl);
    if (!e) return NULL;
    const char *text = NULL;
    if (tl) { /* recycle keeps a text that lies in the envelope's own payload */
        memcpy(ar__env_payload(e), m->text, m->text_len);
        ((char *)ar__env_payload(e))[m->text_len] = '\0';
        text = ar__env_payload(e);
    }
    return ar__env_recycle(e, kind, m->from, m->ref, (ar_reason_t){(ar_exit_code_t)m->code, text});
}

static ar__env_t *message_env(const ar__wire_msg_t *m)
{
    bool failed_text = m->kind == W_REPLY && !m->len && m->text_len;
    ar__env_t *e = failed_text ? signal_env(m, ENV_MSG) : ar__env_new(m->len);
    if (!e) return NULL;
    if (!failed_text && m->len) memcpy(ar__env_payload(e), m->payload, m->len);
    e->msg.from = m->from;
    e->msg.tag = m->tag;
    e->msg.reason.code = (ar_exit_code_t)m->code;
    switch (m->kind) {
    case W_CAST: e->flags = ENVF_COUNTED; break;
    case W_CALL:
        e->msg.kind = AR_MSG_CALL;
        e->msg.reply_to = (ar_reply_to_t){m->reply_pid, m->ref};
        e->flags = ENVF_COUNTED;
        break;
    default: /* W_REPLY */
        e->msg.kind = AR_MSG_REPLY;
        e->msg.ref = m->ref;
        e->flags = (uint8_t)((m->flags & ENVF_RELEASED) | ((m->ref & 1) ? ENVF_SYNC : 0));
        if ((m->flags & W_FLAG_REFUSED) && m->code != AR_NORMAL) e->xflags = AR__XF_REFUSED;
        break;
    }
    return e;
}

int ar__dist_deliver(struct ar__dist *d, ar__peer_t *p, const ar__wire_msg_t *m)
{
    ar_node_t *node = d->node;
    uint64_t phi = atomic_load_explicit(&p->hi, memory_order_relaxed);
    /* a peer speaks for its own processes only */
    if ((!ar_pid_is_none(m->from) && m->from.hi != phi) || m->kind > W_CALL_DONE)
        return AR_EBADMSG;
    if (m->kind == W_CALL && m->reply_pid.hi != phi) return AR_EBADMSG;
    ar_pid_t to = m->to;
    if (ar__node_id(to.hi) != ar__node_id(node->pid_hi)) return AR_EBADMSG;
    if (ar__is_net_pid(to)) {
        if (m->kind == W_CALL && m->tag == AR__TAG_WHEREIS) ar__dist_whereis(d, p, m);
        return 0;
    }
    ar__env_t *e = NULL, *answer = NULL;
    switch (m->kind) {
    case W_CAST:
    case W_CALL:
    case W_REPLY: e = message_env(m); break;
    case W_EXIT:
        if ((e = signal_env(m, ENV_EXIT)) != NULL) e->flags = m->flags & ENVF_LINK;
        break;
    case W_LINK: e = signal_env(m, ENV_LINK); break;
    case W_UNLINK: e = signal_env(m, ENV_UNLINK); break;
    case W_MONITOR: e = signal_env(m, ENV_MONITOR); break;
    case W_DEMONITOR: e = signal_env(m, ENV_DEMONITOR); break;
    case W_DOWN: e = signal_env(m, ENV_DOWN); break;
    case W_CALL_DONE: e = signal_env(m, ENV_CALL_DONE); break;
    default: return AR_EBADMSG;
    }
    if (!e) return AR_ENOMEM; /* the connection goes, and with it everything owed fires */
    bool ours = to.hi == node->pid_hi;
    if (ours && (m->kind == W_LINK || m->kind == W_MONITOR)) {
        /* the half this side owes if the peer is lost, made before the signal goes */
        if (!(answer = ar__env_new(0))) {
            ar__env_free(e);
            return AR_ENOMEM;
        }
        if (m->kind == W_LINK) {
            answer = ar__env_recycle(answer, ENV_EXIT, m->from, 0, AR_REASON(AR_NOCONNECTION));
            answer->flags = ENVF_LINK;
        } else {
            answer = ar__env_recycle(answer, ENV_DEMONITOR, m->from, m->ref, AR_REASON(AR_NORMAL));
        }
    }
    int rc = ours ? ar__route(node, to, e) : AR_ENOPROC;
    if (rc == AR_EAGAIN && m->kind == W_CALL) { /* a full bounded mailbox: the caller's
        ar_call fails at once with AR_EAGAIN, as a local one does */
        ar_reply_to_t rt = e->msg.reply_to;
        e = ar__env_recycle_reply(e, to, rt, AR_REASON(AR_NOPROC));
        e->xflags = AR__XF_REFUSED;
        ar__count(ar__current_sched(), node, AR__DROPPED);
        ar__route_or_dead_letter(node, rt.pid, e);
        return 0;
    }
    if (rc) { /* dead (or an earlier run of this node): answered as a local one is; a cast
               * to a full bounded mailbox is dropped and counted here (its sender's
               * ar_send returned long ago) */
        ar__dead_letter_from(node, to, e, AR_REASON(AR_NOPROC));
        ar__env_free(answer);
        return 0;
    }
    switch (m->kind) {
    case W_LINK: ar__rh_add(p, RH_LINK, to.lo, m->from.lo, answer); break;
    case W_MONITOR: ar__rh_add(p, RH_WATCHED, to.lo, m->ref, answer); break;
    case W_UNLINK: ar__rh_del(p, RH_LINK, to.lo, m->from.lo); break;
    case W_EXIT:
        if (m->flags & ENVF_LINK) ar__rh_del(p, RH_LINK, to.lo, m->from.lo);
        break;
    case W_DEMONITOR: ar__rh_del(p, RH_WATCHED, to.lo, m->ref); break;
    case W_DOWN: ar__rh_del(p, RH_MONITOR, to.lo, m->ref); break;
    case W_REPLY: ar__rh_del(p, RH_CALL, to.lo, m->ref); break;
    default: break;
    }
    return 0;
}

void ar__dist_whereis(struct ar__dist *d, ar__peer_t *p, const ar__wire_msg_t *m)
{
    (void)p;
    char name[AR_NAME_MAX];
    int rc = AR_ENOENT;
    ar_pid_t pid = AR_PID_NONE;
    if (m->len > 0 && m->len < sizeof name) {
        memcpy(name, m->payload, m->len);
        name[m->len] = '\0';
        pid = ar_whereis(d->node, name);
        rc = ar_pid_is_none(pid) ? AR_ENOENT : 0;
    }
    ar__env_t *e = ar__env_new(ANSWER_LEN);
    if (!e) return; /* the caller's timeout answers */
    e->msg.ref = m->ref;
    ar__dist_answer(d->node, e, m->reply_pid, rc, pid);
}

/* ---- start and stop ---- */
struct dist_cmd {
    ar__io_cmd_t cmd;
    struct ar__dist *d;
    ar__sem_t done;
    int rc;
};

static void on_flush(uv_async_t *h)
{
    struct ar__dist *d = h->data;
    uint32_t n = atomic_load_explicit(&d->npeers, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++) ar__conn_kick(d->all[i]);
}

static void on_tick(uv_timer_t *t) { ar__conn_tick(t->data); }

static void start_run(ar__io_cmd_t *cmd, uv_loop_t *loop)
{
    struct dist_cmd *c = (struct dist_cmd *)cmd;
    struct ar__dist *d = c->d;
    d->loop = loop;
    uv_async_init(loop, &d->flush, on_flush);
    d->flush.data = d;
    uv_timer_init(loop, &d->tick);
    d->tick.data = d;
    uv_timer_start(&d->tick, on_tick, d->tick_ms, d->tick_ms);
    c->rc = d->node->cfg.listen ? ar__conn_listen(d, d->node->cfg.listen) : 0;
    ar__sem_post(&c->done);
}

static void stop_run(ar__io_cmd_t *cmd, uv_loop_t *loop)
{
    (void)loop;
    struct dist_cmd *c = (struct dist_cmd *)cmd;
    struct ar__dist *d = c->d;
    d->stopping = true;
    uv_timer_stop(&d->tick);
    uv_close((uv_handle_t *)&d->tick, NULL);
    uv_close((uv_handle_t *)&d->flush, NULL);
    ar__conn_close_all(d);
    ar__sem_post(&c->done);
}

static int run_cmd(struct ar__dist *d, void (*run)(ar__io_cmd_t *, uv_loop_t *))
{
    struct dist_cmd c = {.cmd.run = run, .d = d};
    ar__sem_init(&c.done);
    ar__io_submit(d->node, &c.cmd);
    ar__sem_wait(&c.done, NULL);
    ar__sem_destroy(&c.done);
    return c.rc;
}

int ar__dist_start(ar_node_t *node)
{
    if (!node->cfg.name || !node->cfg.cookie) return 0; /* a node of its own */
    struct ar__dist *d = ar__calloc(1, sizeof *d);
    if (!d) return AR_ENOMEM;
    d->node = node;
    d->tick_ms = node->cfg.tick_ms ? node->cfg.tick_ms : AR__DEFAULT_TICK_MS;
    d->queue_limit = node->cfg.dist_queue_limit ? node->cfg.dist_queue_limit : AR__DEFAULT_QUEUE_LIMIT;
    pthread_mutex_init(&d->peers_lock, NULL);
    node->dist = d;
    int rc = run_cmd(d, start_run);
    if (rc) ar__dist_stop(node);
    return rc;
}

void ar__dist_stop(ar_node_t *node)
{
    struct ar__dist *d = node->dist;
    if (!d || atomic_exchange(&d->closed, 1)) return;
    run_cmd(d, stop_run);
}

void ar__dist_free(ar_node_t *node)
{
    struct ar__dist *d = node->dist;
    if (!d) return;
    ar__peer_free_all(d);
    pthread_mutex_destroy(&d->peers_lock);
    ar__free(d);
    node->dist = NULL;
}

/* ---- the public calls ---- */
struct connect_cmd {
    ar__io_cmd_t cmd;
    struct ar__dist *d;
    char addr[AR_NAME_MAX];
    ar__env_t *reply;
    ar_pid_t to;
};

static void connect_run(ar__io_cmd_t *cmd, uv_loop_t *loop)
{
    (void)loop;
    struct connect_cmd *c = (struct connect_cmd *)cmd;
    ar__conn_dial(c->d, NULL, c->addr, c->reply, c->to);
    ar__free(c);
}

static int push_connect(void *ctx, ar_reply_to_t rt, ar_pid_t *to)
{
    struct connect_cmd *proto = ctx;
    struct connect_cmd *c = ar__malloc(sizeof *c);
    ar__env_t *reply = ar__env_new(ANSWER_LEN);
    if (!c || !reply) {
        ar__free(c);
        ar__env_free(reply);
        return AR_ENOMEM;
    }
    *c = *proto;
    c->cmd.run = connect_run;
    reply->msg.ref = rt.ref;
    c->reply = reply;
    c->to = rt.pid;
    *to = AR_PID_NONE; /* nothing to release: the I/O thread answers once */
    ar__io_submit(c->d->node, &c->cmd);
    return 0;
}

static int deadline_left(uint64_t until)
{
    if (!until) return AR_INFINITY;
    uint64_t now = ar__now_ns();
    return now >= until ? 0 : (int)((until - now + 999999u) / 1000000u);
}

/* Connects, and gives the peer's node part. */
static int connect_to(ar_node_t *node, const char *addr, int timeout_ms, uint64_t *peer_hi)
{
    struct ar__dist *d = node->dist;
    struct sockaddr_storage ss;
    if (!d || strlen(addr) >= AR_NAME_MAX || ar__addr_parse(addr, &ss) != 0 ||
        ((struct sockaddr_in *)&ss)->sin_port == 0) /* (sin6_port lies at the same place) */
        return AR_EINVAL;
    if (atomic_load_explicit(&d->closed, memory_order_acquire)) return AR_ECLOSED;
    struct connect_cmd proto = {.d = d};
    snprintf(proto.addr, sizeof proto.addr, "%s", addr);
    ar_buf_t reply;
    int rc = ar__call_with(node, push_connect, &proto, &reply, timeout_ms);
    if (rc) return rc;
    ar_pid_t peer;
    rc = read_answer(&reply, &peer);
    if (peer_hi) *peer_hi = peer.hi;
    return rc;
}

int ar_node_connect(ar_node_t *node, const char *addr, int timeout_ms)
{
    if (!node || !addr || !ar__timeout_ok(timeout_ms)) return AR_EINVAL;
    return connect_to(node, addr, timeout_ms, NULL);
}

int ar_whereis_remote(ar_node_t *node, const char *peer, const char *name, ar_pid_t *out,
                      int timeout_ms)
{
    if (out) *out = AR_PID_NONE;
    if (!node || !peer || !out || !ar__name_valid(name) || !ar__timeout_ok(timeout_ms))
        return AR_EINVAL;
    struct ar__dist *d = node->dist;
    if (!d) return AR_EINVAL;
    uint64_t until = timeout_ms == AR_INFINITY ? 0 : ar__now_ns() + (uint64_t)timeout_ms * 1000000u;
    uint32_t id;
    if (strchr(peer, ':')) {
        uint64_t hi = 0;
        int rc = connect_to(node, peer, timeout_ms, &hi);
        if (rc) return rc;
        id = ar__node_id(hi);
    } else {
        if (!ar__node_name_valid(peer, strlen(peer))) return AR_EINVAL;
        id = ar__node_id_of(peer);
        if (id == ar__node_id(node->pid_hi)) {
            *out = ar_whereis(node, name);
            return ar_pid_is_none(*out) ? AR_ENOENT : 0;
        }
        if (!ar__peer_find(d, id)) return AR_ENOCONN; /* no address known for it */
    }
    ar_buf_t reply;
    int rc = ar_call(node, ar__net_pid(id), AR__TAG_WHEREIS, name, strlen(name), &reply,
                     deadline_left(until));
    if (rc) return rc == AR_ENOPROC ? AR_ENOCONN : rc;
    return read_answer(&reply, out);
}

struct drop_cmd {
    ar__io_cmd_t cmd;
    ar__peer_t *peer;
};

static void drop_run(ar__io_cmd_t *cmd, uv_loop_t *loop)
{
    (void)loop;
    struct drop_cmd *c = (struct drop_cmd *)cmd;
    ar__conn_drop(c->peer);
    ar__free(c);
}

int ar_node_disconnect(ar_node_t *node, const char *peer)
{
    if (!node || !peer || !ar__node_name_valid(peer, strlen(peer))) return AR_EINVAL;
    struct ar__dist *d = node->dist;
    if (!d) return AR_EINVAL;
    if (atomic_load_explicit(&d->closed, memory_order_acquire)) return AR_ECLOSED;
    ar__peer_t *p = ar__peer_find(d, ar__node_id_of(peer));
    if (!p || atomic_load_explicit(&p->state, memory_order_acquire) != PEER_UP) return AR_ENOENT;
    struct drop_cmd *c = ar__malloc(sizeof *c);
    if (!c) return AR_ENOMEM;
    c->cmd.run = drop_run;
    c->peer = p;
    ar__io_submit(node, &c->cmd);
    return 0;
}

int ar_node_address(ar_node_t *node, char *buf, size_t n)
{
    if (!node || !buf || !n) return AR_EINVAL;
    struct ar__dist *d = node->dist;
    if (!d || !d->listening) return AR_ENOENT;
    int w = snprintf(buf, n, "%s", d->address);
    return (w < 0 || (size_t)w >= n) ? AR_E2BIG : 0;
}

const char *ar_node_name(ar_node_t *node)
{
    return node && node->cfg.name ? node->cfg.name : "local";
}
