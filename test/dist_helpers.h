/* Shared helpers of the distribution tests (test_dist.c: nodes inside one test process;
 * test_dist_os.c: a peer in another OS process).
 *
 * - dn_node: a named node listening on 127.0.0.1:0 with the test cookie and a short tick
 *   (node loss is seen in about 4 x 100 ms), crash reports off.
 * - dn_evlog: a function subscriber recording NODE_UP / NODE_DOWN (kind, peer name, time).
 * - dn_agent: a process driven by commands (calls answered with a dn_res_t) that does what
 *   a test needs from inside a process (link, monitor, ask, call, exit, trap) and logs
 *   every other message it handles, with the reason text, and its own end.
 * - dn_holder: keeps the reply_to of every CALL and answers them all on a RELEASE cast
 *   (a deferred reply, or a call left pending).
 */
#ifndef ARBOR_DIST_HELPERS_H
#define ARBOR_DIST_HELPERS_H

#include "test_helpers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#define DN_COOKIE "test-cookie"
#define DN_TICK_MS 100
/* Node loss must be seen within 4 ticks; this is the margin a loaded 2-core machine gets
 * on top of that. */
#define DN_LOSS_MARGIN_MS 1500
#define DN_ADDR_MAX 64

/* ---- Nodes ----------------------------------------------------------------------------- */
typedef struct dn_opts {
    unsigned schedulers;     /* 0: 1 */
    unsigned tick_ms;        /* 0: DN_TICK_MS */
    const char *cookie;      /* NULL: DN_COOKIE */
    const char *listen;      /* NULL: "127.0.0.1:0"; "" : none */
    size_t dist_queue_limit; /* 0: the default */
    size_t max_message_bytes;
    void (*crash_log)(const char *line, void *ud); /* NULL: crash reports off */
    void *crash_log_ud;
} dn_opts_t;

static inline void dn_config(ar_node_config_t *cfg, const char *name, const dn_opts_t *o)
{
    static const dn_opts_t none;
    if (!o) o = &none;
    ar_node_config_init(cfg);
    cfg->schedulers = o->schedulers ? o->schedulers : 1;
    cfg->name = name;
    cfg->cookie = o->cookie ? o->cookie : DN_COOKIE;
    cfg->listen = !o->listen ? "127.0.0.1:0" : (o->listen[0] ? o->listen : NULL);
    cfg->tick_ms = o->tick_ms ? o->tick_ms : DN_TICK_MS;
    cfg->dist_queue_limit = o->dist_queue_limit;
    cfg->max_message_bytes = o->max_message_bytes;
    cfg->crash_log = o->crash_log;
    cfg->crash_log_ud = o->crash_log_ud;
}

static inline ar_node_t *dn_node_opts(const char *name, const dn_opts_t *o)
{
    ar_node_config_t cfg;
    dn_config(&cfg, name, o);
    return th_node_cfg(&cfg);
}

static inline ar_node_t *dn_node(const char *name) { return dn_node_opts(name, NULL); }

/* The node's listen address "127.0.0.1:PORT" in buf (DN_ADDR_MAX bytes). */
static inline const char *dn_addr(ar_node_t *node, char *buf)
{
    int rc = ar_node_address(node, buf, DN_ADDR_MAX);
    cr_assert_eq(rc, 0, "ar_node_address(%s): %s", ar_node_name(node), ar_err_name(rc));
    return buf;
}

static inline int dn_port(ar_node_t *node)
{
    char a[DN_ADDR_MAX];
    dn_addr(node, a);
    const char *colon = strrchr(a, ':');
    cr_assert_not_null(colon, "address \"%s\" has no port", a);
    return atoi(colon + 1);
}

/* from connects to to (which listens); both sides are connected when this returns. */
static inline void dn_connect(ar_node_t *from, ar_node_t *to)
{
    char a[DN_ADDR_MAX];
    int rc = ar_node_connect(from, dn_addr(to, a), TH_WAIT_MS);
    cr_assert_eq(rc, 0, "ar_node_connect(%s -> %s at %s): %s", ar_node_name(from),
                 ar_node_name(to), a, ar_err_name(rc));
}

/* The pid registered as name on node peer, looked up from node through the network. */
static inline ar_pid_t dn_lookup(ar_node_t *node, const char *peer, const char *name)
{
    ar_pid_t p = AR_PID_NONE;
    int rc = ar_whereis_remote(node, peer, name, &p, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "ar_whereis_remote(%s, %s): %s", peer, name, ar_err_name(rc));
    cr_assert(!ar_pid_is_none(p));
    return p;
}

static inline void dn_register(ar_node_t *node, const char *name, ar_pid_t pid)
{
    int rc = ar_register(node, name, pid);
    cr_assert_eq(rc, 0, "ar_register(%s): %s", name, ar_err_name(rc));
}

static inline const char *dn_fmt(ar_pid_t p, char buf[AR_PID_STRLEN])
{
    if (ar_pid_format(p, buf, AR_PID_STRLEN) != 0) snprintf(buf, AR_PID_STRLEN, "<?>");
    return buf;
}

/* ---- Node events ------------------------------------------------------------------------ */
#define DN_EV_CAP 64
typedef struct dn_ev {
    uint32_t kind;
    char name[AR_NODE_NAME_MAX + 8];
    uint64_t t_ns; /* CLOCK_MONOTONIC when recorded */
} dn_ev_t;
typedef struct dn_evlog {
    atomic_int n;
    dn_ev_t e[DN_EV_CAP];
} dn_evlog_t;

static inline void dn_ev_record(const ar_event_t *e, void *ud)
{
    dn_evlog_t *l = ud;
    int i = atomic_load_explicit(&l->n, memory_order_relaxed);
    if (i >= DN_EV_CAP) return;
    l->e[i].kind = e->kind;
    snprintf(l->e[i].name, sizeof l->e[i].name, "%s", e->name ? e->name : "");
    l->e[i].t_ns = th_now_ns();
    atomic_store_explicit(&l->n, i + 1, memory_order_release);
}

/* Records node's NODE_UP and NODE_DOWN events into l (zeroed here). */
static inline void dn_evlog_attach(ar_node_t *node, dn_evlog_t *l)
{
    memset(l, 0, sizeof *l);
    int rc = ar_events_subscribe_fn(node, AR_EV_NODE_UP | AR_EV_NODE_DOWN, dn_ev_record, l,
                                    NULL);
    cr_assert_eq(rc, 0, "subscribe NODE_UP|NODE_DOWN: %s", ar_err_name(rc));
}

/* How many events of kind about peer (NULL: any) l holds. */
static inline int dn_ev_count(dn_evlog_t *l, uint32_t kind, const char *peer)
{
    int n = atomic_load_explicit(&l->n, memory_order_acquire), c = 0;
    for (int i = 0; i < n; i++)
        if (l->e[i].kind == kind && (!peer || strcmp(l->e[i].name, peer) == 0)) c++;
    return c;
}

/* The time of the k-th (0-based) event of kind about peer; 0 if there is none. */
static inline uint64_t dn_ev_time(dn_evlog_t *l, uint32_t kind, const char *peer, int k)
{
    int n = atomic_load_explicit(&l->n, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (l->e[i].kind == kind && (!peer || strcmp(l->e[i].name, peer) == 0) && k-- == 0)
            return l->e[i].t_ns;
    return 0;
}

/* ---- The agent --------------------------------------------------------------------------- */
enum {
    DT_DATA = 1,  /* a plain cast */
    DT_MARKER,
    DT_ECHO,      /* a call answered with its payload */
    DT_RELEASE,   /* dn_holder: answer every kept call */
    /* agent commands: calls answered with a dn_res_t */
    DC_LINK = 100,
    DC_UNLINK,
    DC_MONITOR,
    DC_DEMONITOR, /* ref, flag: flush */
    DC_TRAP,      /* flag */
    DC_EXIT,      /* ar_exit(pid, code, text) */
    DC_SEND,      /* ar_send(pid, tag, text) */
    DC_ASK,       /* ar_ask(pid, tag, text, timeout n) */
    DC_CALL,      /* ar_call(pid, tag, text, timeout n): rc and the reply */
    DC_WHEREIS,   /* ar_whereis_remote(peer text, name text2): rc and pid */
    DC_CONNECT,   /* ar_node_connect(text) */
    /* agent casts: actions that end it */
    DC_FAIL = 200,      /* AR_FAIL(text) */
    DC_STOP,            /* ar_stop(code, text) */
    DC_SEND_N_THEN_FAIL /* n DT_DATA casts numbered 0.. to pid, then AR_FAIL(text) */
};

typedef struct dn_cmd {
    ar_pid_t pid;
    ar_ref_t ref;
    int code;
    int n;
    uint32_t tag;
    bool flag;
    char text[64];
    char text2[32];
} dn_cmd_t;

typedef struct dn_res {
    int rc;
    bool old;
    ar_ref_t ref;
    ar_pid_t pid;
    size_t len;
    char data[64];
} dn_res_t;

#define DN_TEXT_N 256
typedef struct dn_agent {
    th_log_t log;                 /* messages handled (not commands) and the end */
    char text[DN_TEXT_N][128];    /* reason text of log entry i (AR_FAIL's place cut) */
} dn_agent_t;

/* A reason text without the " at <file>:<line>" AR_FAIL ends it with (.c or .h). */
static inline void dn_reason_text(char *buf, size_t n, const char *text)
{
    snprintf(buf, n, "%s", text ? text : "");
    char *at = NULL;
    for (char *p = strstr(buf, " at "); p; p = strstr(p + 1, " at ")) at = p;
    if (!at) return;
    const char *colon = strrchr(at, ':');
    if (colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1) &&
        colon - at > 4 && (strncmp(colon - 2, ".c", 2) == 0 || strncmp(colon - 2, ".h", 2) == 0))
        *at = '\0';
}

static inline ar_reason_t dn_cmd_reason(const dn_cmd_t *c)
{
    return (ar_reason_t){(ar_exit_code_t)c->code, c->text[0] ? c->text : NULL};
}

static inline int dn_agent_init(ar_proc_t *self, void *arg, void **state)
{
    dn_agent_t *a = arg;
    th_rec_init(self, &a->log, state);
    *state = a;
    return 0;
}

static inline dn_res_t dn_agent_command(ar_proc_t *self, const ar_msg_t *m, const dn_cmd_t *c)
{
    ar_node_t *node = ar_node(self);
    dn_res_t r;
    memset(&r, 0, sizeof r);
    switch (m->tag) {
    case DC_LINK: r.rc = ar_link(self, c->pid); break;
    case DC_UNLINK: r.rc = ar_unlink(self, c->pid); break;
    case DC_MONITOR: r.rc = ar_monitor(self, c->pid, &r.ref); break;
    case DC_DEMONITOR: r.rc = ar_demonitor(self, c->ref, c->flag); break;
    case DC_TRAP: r.old = ar_trap_exit(self, c->flag); break;
    case DC_EXIT: r.rc = ar_exit(node, c->pid, dn_cmd_reason(c)); break;
    case DC_SEND: r.rc = ar_send(node, c->pid, c->tag, c->text, strlen(c->text)); break;
    case DC_ASK:
        r.rc = ar_ask(self, c->pid, c->tag, c->text, strlen(c->text), c->n, &r.ref);
        break;
    case DC_CALL: {
        ar_buf_t b = {0};
        r.rc = ar_call(node, c->pid, c->tag, c->text, strlen(c->text), &b, c->n);
        if (r.rc == 0) {
            r.len = b.len;
            memcpy(r.data, b.data, b.len < sizeof r.data ? b.len : sizeof r.data);
        }
        ar_buf_free(&b);
        break;
    }
    case DC_WHEREIS: r.rc = ar_whereis_remote(node, c->text, c->text2, &r.pid, TH_WAIT_MS); break;
    case DC_CONNECT: r.rc = ar_node_connect(node, c->text, TH_WAIT_MS); break;
    default: r.rc = AR_EINVAL; break;
    }
    return r;
}

static inline void dn_agent_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    dn_agent_t *a = state;
    ar_node_t *node = ar_node(self);
    if (th_sync_answer(self, &a->log, m)) return;
    dn_cmd_t c;
    bool is_cmd = (m->kind == AR_MSG_CALL || m->kind == AR_MSG_CAST) && m->tag >= DC_LINK &&
                  m->len == sizeof c;
    if (!is_cmd) {
        size_t i = th_log_len(&a->log);
        if (i < DN_TEXT_N) dn_reason_text(a->text[i], sizeof a->text[i], m->reason.text);
        th_log_msg(&a->log, m);
        return;
    }
    memcpy(&c, m->data, sizeof c);
    if (m->kind == AR_MSG_CALL) {
        dn_res_t r = dn_agent_command(self, m, &c);
        ar_reply(node, m->reply_to, &r, sizeof r);
        return;
    }
    switch (m->tag) {
    case DC_FAIL: AR_FAIL(self, "%s", c.text);
    case DC_STOP: ar_stop(self, dn_cmd_reason(&c)); break;
    case DC_SEND_N_THEN_FAIL:
        for (int i = 0; i < c.n; i++) ar_send(node, c.pid, DT_DATA, &i, sizeof i);
        AR_FAIL(self, "%s", c.text);
    default: break;
    }
}

static inline void dn_agent_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    dn_agent_t *a = state;
    a->log.why = why.code;
    dn_reason_text(a->log.why_text, sizeof a->log.why_text, why.text);
    atomic_fetch_add(&a->log.terminates, 1); /* after the reason is written */
}

static const ar_behaviour_t dn_agent_b = {"dn_agent", dn_agent_init, dn_agent_handle,
                                          dn_agent_terminate};

static inline ar_pid_t dn_spawn_agent(ar_node_t *node, dn_agent_t *a, bool trap)
{
    memset(a, 0, sizeof *a);
    ar_spawn_opts_t o = {.trap_exit = trap};
    ar_pid_t pid = AR_PID_NONE;
    int rc = ar_spawn(node, &dn_agent_b, a, &o, &pid);
    cr_assert_eq(rc, 0, "spawn agent: %s", ar_err_name(rc));
    return pid;
}

/* A command answered by the agent `to` (node: the node the command is sent from). */
static inline dn_res_t dn_ctl(ar_node_t *node, ar_pid_t to, uint32_t tag, dn_cmd_t c)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, to, tag, &c, sizeof c, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "agent command %u: %s", tag, ar_err_name(rc));
    cr_assert_eq(r.len, sizeof(dn_res_t));
    dn_res_t out;
    memcpy(&out, r.data, sizeof out);
    ar_buf_free(&r);
    return out;
}

static inline void dn_act(ar_node_t *node, ar_pid_t to, uint32_t tag, dn_cmd_t c)
{
    th_send(node, to, tag, &c, sizeof c);
}

static inline void dn_crash(ar_node_t *node, ar_pid_t to, const char *text)
{
    dn_cmd_t c;
    memset(&c, 0, sizeof c);
    snprintf(c.text, sizeof c.text, "%s", text);
    dn_act(node, to, DC_FAIL, c);
}

static inline void dn_link(ar_node_t *node, ar_pid_t agent, ar_pid_t other)
{
    dn_res_t r = dn_ctl(node, agent, DC_LINK, (dn_cmd_t){.pid = other});
    cr_assert_eq(r.rc, 0, "ar_link: %s", ar_err_name(r.rc));
}

static inline ar_ref_t dn_monitor(ar_node_t *node, ar_pid_t agent, ar_pid_t target)
{
    dn_res_t r = dn_ctl(node, agent, DC_MONITOR, (dn_cmd_t){.pid = target});
    cr_assert_eq(r.rc, 0, "ar_monitor: %s", ar_err_name(r.rc));
    cr_assert_neq(r.ref, 0, "a monitor ref is never 0");
    return r.ref;
}

/* The index of the first log entry of kind (from `from` unless none) at or after *i,
 * waiting for it; fails after TH_WAIT_MS. */
static inline size_t dn_await_kind(dn_agent_t *a, ar_msg_kind_t kind, ar_pid_t from)
{
    uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    for (;;) {
        size_t n = th_log_len(&a->log);
        for (size_t i = 0; i < n; i++) {
            const th_entry_t *e = &a->log.e[i];
            if (e->kind == kind && (ar_pid_is_none(from) || ar_pid_eq(e->from, from)))
                return i;
        }
        cr_assert(th_now_ns() < deadline, "timed out waiting for a message of kind %d", kind);
        th_nap();
    }
}

static inline size_t dn_count_kind(dn_agent_t *a, ar_msg_kind_t kind)
{
    size_t n = th_log_len(&a->log), c = 0;
    for (size_t i = 0; i < n; i++)
        if (a->log.e[i].kind == kind) c++;
    return c;
}

static inline void dn_await_end(dn_agent_t *a)
{
    th_await(atomic_load(&a->log.terminates) == 1);
}

/* ---- The holder -------------------------------------------------------------------------- */
#define DN_HOLD_MAX 64
typedef struct dn_holder {
    atomic_int held; /* calls kept (release after each) */
    atomic_int answered;
    atomic_int reply_rc; /* the last ar_reply result */
    ar_reply_to_t rt[DN_HOLD_MAX];
} dn_holder_t;

static inline int dn_holder_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static inline void dn_holder_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    dn_holder_t *h = state;
    if (m->kind == AR_MSG_CALL && m->tag == DT_ECHO) {
        ar_reply(ar_node(self), m->reply_to, m->data, m->len);
    } else if (m->kind == AR_MSG_CALL) {
        int i = atomic_load_explicit(&h->held, memory_order_relaxed);
        if (i < DN_HOLD_MAX) {
            h->rt[i] = m->reply_to;
            atomic_store_explicit(&h->held, i + 1, memory_order_release);
        }
    } else if (m->kind == AR_MSG_CAST && m->tag == DT_RELEASE) {
        int n = atomic_load(&h->held);
        for (int i = atomic_load(&h->answered); i < n; i++) {
            atomic_store(&h->reply_rc, ar_reply(ar_node(self), h->rt[i], m->data, m->len));
            atomic_fetch_add(&h->answered, 1);
        }
    }
}

static const ar_behaviour_t dn_holder_b = {"dn_holder", dn_holder_init, dn_holder_handle, NULL};

static inline ar_pid_t dn_spawn_holder(ar_node_t *node, dn_holder_t *h)
{
    memset(h, 0, sizeof *h);
    return th_spawn(node, &dn_holder_b, h);
}

/* An ECHO call (which a dn_holder answers at once too), checked. */
static inline void dn_echo_check(ar_node_t *node, ar_pid_t to)
{
    static const char q[] = "still there?";
    ar_buf_t r = {0};
    int rc = ar_call(node, to, DT_ECHO, q, sizeof q, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "echo call: %s", ar_err_name(rc));
    cr_assert_eq(r.len, sizeof q);
    cr_assert_arr_eq(r.data, q, sizeof q);
    ar_buf_free(&r);
}

/* ---- A call in a thread of its own --------------------------------------------------------- */
typedef struct dn_bg_call {
    ar_node_t *node;
    ar_pid_t to;
    uint32_t tag;
    int timeout_ms;
    pthread_t thread;
    atomic_int done;
    int rc;
    uint64_t t_end_ns;
    ar_buf_t reply;
} dn_bg_call_t;

static inline void *dn_bg_call_run(void *arg)
{
    dn_bg_call_t *c = arg;
    c->rc = ar_call(c->node, c->to, c->tag, "q", 1, &c->reply, c->timeout_ms);
    c->t_end_ns = th_now_ns();
    atomic_store(&c->done, 1);
    return NULL;
}

static inline void dn_bg_call_start(dn_bg_call_t *c, ar_node_t *node, ar_pid_t to, uint32_t tag,
                                    int timeout_ms)
{
    memset(c, 0, sizeof *c);
    c->node = node;
    c->to = to;
    c->tag = tag;
    c->timeout_ms = timeout_ms;
    cr_assert_eq(pthread_create(&c->thread, NULL, dn_bg_call_run, c), 0);
}

static inline void dn_bg_call_join(dn_bg_call_t *c)
{
    th_await(atomic_load(&c->done));
    pthread_join(c->thread, NULL);
    ar_buf_free(&c->reply);
}

/* ---- Plain sockets ------------------------------------------------------------------------ */
static inline int dn_sock_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    cr_assert_eq(rc, 0, "connect to port %d: %s", port, strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Writes all of buf; false when the peer closed (EPIPE, ECONNRESET). */
static inline bool dn_sock_write(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        len -= (size_t)w;
    }
    return true;
}

/* Reads exactly len bytes within ms; false on EOF, error or timeout. */
static inline bool dn_sock_read(int fd, void *buf, size_t len, int ms)
{
    char *p = buf;
    uint64_t deadline = th_now_ns() + (uint64_t)ms * 1000000u;
    while (len > 0) {
        int left = (int)((int64_t)(deadline - th_now_ns()) / 1000000);
        if ((int64_t)(deadline - th_now_ns()) <= 0) return false;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int pr = poll(&pf, 1, left > 0 ? left : 1);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) continue;
        ssize_t r = recv(fd, p, len, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        p += r;
        len -= (size_t)r;
    }
    return true;
}

/* Waits up to ms for the node to close fd: reads (and throws away) whatever it sends
 * until EOF or a reset. True when closed. */
static inline bool dn_sock_closed_within(int fd, int ms)
{
    uint64_t deadline = th_now_ns() + (uint64_t)ms * 1000000u;
    char buf[4096];
    while ((int64_t)(deadline - th_now_ns()) > 0) {
        int left = (int)((int64_t)(deadline - th_now_ns()) / 1000000);
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int pr = poll(&pf, 1, left > 0 ? left : 1);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) continue;
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0) return true;
        if (r < 0 && errno != EINTR && errno != EAGAIN) return true;
    }
    return false;
}

/* A port on which nothing accepts: bound (so nobody else takes it) but not listening.
 * *fd is the socket to close at the end. */
static inline int dn_dead_port(int *fd)
{
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(*fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(*fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    cr_assert_eq(getsockname(*fd, (struct sockaddr *)&sa, &sl), 0);
    return ntohs(sa.sin_port);
}

/* A listening socket that accepts (the kernel completes the TCP handshake) and never
 * says anything. */
static inline int dn_mute_listener(int *fd)
{
    int port = dn_dead_port(fd);
    cr_assert_eq(listen(*fd, 16), 0);
    return port;
}

/* Fills the queue to a peer that does not read: sends msg-byte casts numbered from *next
 * (the number in their first 8 bytes) until ar_send has refused with AR_EAGAIN 200 times
 * in a row over at least 200 ms (while the kernel's buffers still take bytes, the queue
 * drains a little and a send gets through again). Returns how many were taken; fails on
 * any other error, or if that takes more than 10 s or more than cap_bytes. */
static inline size_t dn_flood(ar_node_t *node, ar_pid_t to, uint32_t tag, size_t msg,
                              uint64_t *next, size_t cap_bytes)
{
    unsigned char *p = malloc(msg);
    cr_assert_not_null(p);
    for (size_t i = 0; i < msg; i++) p[i] = (unsigned char)(i * 7);
    size_t taken = 0;
    int refused = 0;
    uint64_t t0 = th_now_ns(), first_refusal = 0;
    while (refused < 200 || th_ms_since(first_refusal) < 200.0) {
        memcpy(p, next, sizeof *next);
        int rc = ar_send(node, to, tag, p, msg);
        if (rc == 0) {
            (*next)++;
            taken++;
            refused = 0;
            cr_assert_leq(taken * msg, cap_bytes, "%zu MiB taken for a peer that does not read",
                          taken * msg >> 20);
        } else {
            cr_assert_eq(rc, AR_EAGAIN, "a send to a full queue: %s", ar_err_name(rc));
            if (refused++ == 0) first_refusal = th_now_ns();
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        cr_assert_lt(th_ms_since(t0), 10000.0, "the queue never settled");
    }
    free(p);
    return taken;
}

/* FNV-1a over bytes. */
static inline uint64_t dn_fnv(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

#endif /* ARBOR_DIST_HELPERS_H */
