/* stress_dist: three nodes in one OS process, talking over loopback under churn.
 *
 *  - node A's CLIENTS processes each, in a loop, ask B's factory (a registered name found
 *    with ar_whereis_remote) for a fresh worker, then link to it or monitor it (or both),
 *    tell it to end with a reason of their choosing (normal, an error text, or a kill),
 *    and wait for the EXIT (they trap exits) and the DOWN it owes: each exactly once,
 *    with that reason;
 *  - between them, calls to B's echo with a payload that must come back intact;
 *  - a foreign thread on node C sends numbered casts to A's counter: they arrive in
 *    order, none twice (C connects to A on first use: it learned A's address from B);
 *  - midway, node C stops: A's monitor of C's own process gets DOWN noconnection;
 *  - then, RECONNECTS times, A drops its connection to B (ar_node_disconnect) and a thread
 *    on each node calls the other's echo at the same moment: both nodes dial at once, one
 *    dial wins on both sides, and both calls succeed (the loser's queue waits for it);
 *  - at the end every node stops cleanly, and nothing is left (ASan/LSan, TSan).
 *
 * Usage: stress_dist [seed]
 */
#include "stress_util.h"

#define CLIENTS 4
#define RUN_MS (ST_TSAN ? 4000 : 2500)
#define CASTS 20000
#define RECONNECTS (ST_TSAN ? 10 : 30)

enum { T_SPAWN = 1, T_END, T_ECHO, T_SEQ, T_PING };

static ar_node_t *g_a, *g_b, *g_c;
static atomic_bool g_stop;
static atomic_ulong g_rounds, g_calls, g_seq_seen, g_c_down;

static void node_cfg(ar_node_config_t *c, const char *name, bool listen)
{
    ar_node_config_init(c);
    c->name = name;
    c->cookie = "stress-cookie";
    c->listen = listen ? "127.0.0.1:0" : NULL;
    c->crash_reports_off = true;
    c->schedulers = 2;
    c->tick_ms = ST_TSAN ? 1000 : 200;
}

/* ---- node B: the factory and its workers, and the echo ---- */
static int nop_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind != AR_MSG_CAST || m->tag != T_END) return;
    uint32_t how;
    memcpy(&how, m->data, sizeof how);
    if (how == 0) ar_exit_self(self, AR_REASON(AR_NORMAL));
    if (how == 1) ar_exit_self(self, (ar_reason_t){AR_ERROR, "worker says goodbye"});
    ar_exit(ar_node(self), ar_self(self), AR_REASON(AR_KILL));
}
static const ar_behaviour_t worker = {"worker", nop_init, worker_handle, NULL};

static void factory_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind != AR_MSG_CALL) return;
    if (m->tag == T_ECHO) {
        ar_reply(ar_node(self), m->reply_to, m->data, m->len);
        return;
    }
    ar_pid_t w = AR_PID_NONE;
    ar_spawn(ar_node(self), &worker, NULL, NULL, &w);
    ar_reply(ar_node(self), m->reply_to, &w, sizeof w);
}
static const ar_behaviour_t factory = {"factory", nop_init, factory_handle, NULL};

/* ---- node A: clients ---- */
static int client_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    ar_trap_exit(self, true);
    ar_send(ar_node(self), ar_self(self), T_PING, NULL, 0);
    return 0;
}

static bool expect_end(ar_proc_t *self, ar_pid_t w, bool link, bool mon, ar_ref_t ref, uint32_t how)
{
    ar_exit_code_t want = how == 0 ? AR_NORMAL : how == 1 ? AR_ERROR : AR_KILLED;
    for (int got = 0, want_n = (int)link + (int)mon; got < want_n;) {
        ar_msg_t *mp;
        int rc = ar_receive(self, NULL, NULL, ST_WAIT_MS, &mp);
        if (rc) st_fail("client: waiting for the end of a worker: %s", ar_err_name(rc));
        ar_msg_t m = *mp;
        if (m.kind == AR_MSG_EXIT) {
            ST_CHECK(link && ar_pid_eq(m.from, w), "an EXIT from a process not linked");
            ST_CHECK(m.reason.code == want, "EXIT code %d, want %d", m.reason.code, want);
            if (want == AR_ERROR)
                ST_CHECK(m.reason.text && strcmp(m.reason.text, "worker says goodbye") == 0,
                         "EXIT text lost");
            link = false;
            got++;
        } else if (m.kind == AR_MSG_DOWN) {
            ST_CHECK(mon && m.ref == ref && ar_pid_eq(m.from, w), "a DOWN for no monitor");
            ST_CHECK(m.reason.code == want, "DOWN code %d, want %d", m.reason.code, want);
            mon = false;
            got++;
        }
        ar_msg_release(self, mp);
    }
    return true;
}

static void client_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind != AR_MSG_CAST || m->tag != T_PING) return;
    ar_node_t *node = ar_node(self);
    st_rng_t r = st_rng_for((uint64_t)ar_self(self).lo);
    ar_pid_t fac;
    int rc = ar_whereis_remote(node, "sb", "factory", &fac, ST_WAIT_MS);
    if (rc) st_fail("whereis_remote: %s", ar_err_name(rc));
    while (!atomic_load(&g_stop)) {
        ar_buf_t reply;
        if (st_chance(&r, 30)) {
            uint64_t v[4] = {st_next(&r), st_next(&r), st_next(&r), st_next(&r)};
            rc = ar_call(node, fac, T_ECHO, v, sizeof v, &reply, ST_WAIT_MS);
            ST_EXPECT_RC(rc, 0, "echo call");
            ST_CHECK(reply.len == sizeof v && memcmp(reply.data, v, sizeof v) == 0, "echo garbled");
            ar_buf_free(&reply);
            atomic_fetch_add(&g_calls, 1);
            continue;
        }
        rc = ar_call(node, fac, T_SPAWN, NULL, 0, &reply, ST_WAIT_MS);
        ST_EXPECT_RC(rc, 0, "spawn call");
        ar_pid_t w;
        memcpy(&w, reply.data, sizeof w);
        ar_buf_free(&reply);
        bool link = st_chance(&r, 50), mon = !link || st_chance(&r, 50);
        ar_ref_t ref = 0;
        if (link) ST_EXPECT_RC(ar_link(self, w), 0, "link");
        if (mon) ST_EXPECT_RC(ar_monitor(self, w, &ref), 0, "monitor");
        uint32_t how = (uint32_t)st_below(&r, 3);
        ST_EXPECT_RC(ar_send(node, w, T_END, &how, sizeof how), 0, "end cast");
        expect_end(self, w, link, mon, ref, how);
        atomic_fetch_add(&g_rounds, 1);
    }
}
static const ar_behaviour_t client = {"client", client_init, client_handle, NULL};

/* ---- A's counter, fed from C ---- */
static void counter_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    if (m->kind == AR_MSG_DOWN) {
        ST_CHECK(m->reason.code == AR_NOCONNECTION || m->reason.code == AR_SHUTDOWN,
                 "C's process went with %d", m->reason.code);
        atomic_fetch_add(&g_c_down, 1);
        return;
    }
    if (m->kind == AR_MSG_CAST && m->tag == T_PING) { /* monitor this pid of C */
        ar_pid_t p;
        ar_ref_t ref;
        memcpy(&p, m->data, sizeof p);
        ST_EXPECT_RC(ar_monitor(self, p, &ref), 0, "monitor C");
        return;
    }
    if (m->kind != AR_MSG_CAST || m->tag != T_SEQ) return;
    uint64_t n;
    memcpy(&n, m->data, sizeof n);
    unsigned long seen = atomic_load(&g_seq_seen);
    ST_CHECK(n == seen + 1, "C's cast %" PRIu64 " after %lu", n, seen);
    atomic_store(&g_seq_seen, n);
}
static const ar_behaviour_t counter = {"counter", nop_init, counter_handle, NULL};
static void idle_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m;
}
static const ar_behaviour_t idle = {"idle", nop_init, idle_handle, NULL};

/* ---- the reconnect race ---- */
static void echo_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, m->data, m->len);
}
static const ar_behaviour_t echo = {"echo", nop_init, echo_handle, NULL};

typedef struct crosser {
    ar_node_t *node;
    ar_pid_t to;
    atomic_int *go;
    int round, rc;
} crosser_t;

static void *cross_call(void *arg)
{
    crosser_t *c = arg;
    while (atomic_load(c->go) != c->round) sched_yield();
    ar_buf_t reply;
    c->rc = ar_call(c->node, c->to, T_ECHO, &c->round, sizeof c->round, &reply, ST_WAIT_MS);
    if (c->rc == 0) {
        ST_CHECK(reply.len == sizeof c->round && memcmp(reply.data, &c->round, sizeof c->round) == 0,
                 "a crossed call's answer is garbled");
        ar_buf_free(&reply);
    }
    return NULL;
}

static void reconnect_race(void)
{
    ar_pid_t ea, eb;
    ST_EXPECT_RC(ar_spawn(g_a, &echo, NULL, NULL, &ea), 0, "A's echo");
    ST_EXPECT_RC(ar_spawn(g_b, &echo, NULL, NULL, &eb), 0, "B's echo");
    atomic_int go = 0;
    for (int r = 1; r <= RECONNECTS; r++) {
        int rc = ar_node_disconnect(g_a, "sb");
        ST_CHECK(rc == 0 || rc == AR_ENOENT, "disconnect: %s", ar_err_name(rc));
        /* both sides see it down (a dial may already be under way: then it is not UP) */
        ST_WAIT(ar_node_disconnect(g_a, "sb") == AR_ENOENT, "A to see B down");
        ST_WAIT(ar_node_disconnect(g_b, "sa") == AR_ENOENT, "B to see A down");
        crosser_t ca = {g_a, eb, &go, r, -1}, cb = {g_b, ea, &go, r, -1};
        pthread_t ta, tb;
        pthread_create(&ta, NULL, cross_call, &ca);
        pthread_create(&tb, NULL, cross_call, &cb);
        atomic_store(&go, r);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        ST_EXPECT_RC(ca.rc, 0, "A's crossed call");
        ST_EXPECT_RC(cb.rc, 0, "B's crossed call");
    }
}

int main(int argc, char **argv)
{
    st_begin("stress_dist", argc, argv);
    ar_node_config_t ca, cb, cc;
    node_cfg(&ca, "sa", true);
    node_cfg(&cb, "sb", true);
    node_cfg(&cc, "sc", false);
    ST_EXPECT_RC(ar_node_start(&ca, &g_a), 0, "start A");
    ST_EXPECT_RC(ar_node_start(&cb, &g_b), 0, "start B");
    ST_EXPECT_RC(ar_node_start(&cc, &g_c), 0, "start C");
    char addr_b[AR_NAME_MAX];
    ST_EXPECT_RC(ar_node_address(g_b, addr_b, sizeof addr_b), 0, "B's address");
    ar_spawn_opts_t fo = {.name = "factory"};
    ST_EXPECT_RC(ar_spawn(g_b, &factory, NULL, &fo, NULL), 0, "factory");
    ar_spawn_opts_t co = {.name = "counter"};
    ar_pid_t counter_pid;
    ST_EXPECT_RC(ar_spawn(g_a, &counter, NULL, &co, &counter_pid), 0, "counter");
    ST_EXPECT_RC(ar_node_connect(g_a, addr_b, ST_WAIT_MS), 0, "A to B");
    ST_EXPECT_RC(ar_node_connect(g_c, addr_b, ST_WAIT_MS), 0, "C to B");
    for (int i = 0; i < CLIENTS; i++) ST_EXPECT_RC(ar_spawn(g_a, &client, NULL, NULL, NULL), 0, "client");

    /* C learns of A from B: the counter's pid works there though C never dialed A */
    ar_pid_t on_c;
    ST_EXPECT_RC(ar_spawn(g_c, &idle, NULL, NULL, &on_c), 0, "C's process");
    ST_WAIT(ar_send(g_c, counter_pid, T_PING, &on_c, sizeof on_c) == 0, "C's first send");
    uint64_t t0 = st_now_ms();
    for (uint64_t n = 1; n <= CASTS; n++) {
        int rc;
        while ((rc = ar_send(g_c, counter_pid, T_SEQ, &n, sizeof n)) == AR_EAGAIN) st_nap_us(100);
        ST_EXPECT_RC(rc, 0, "C's cast");
    }
    ST_WAIT(atomic_load(&g_seq_seen) == CASTS, "C's casts to arrive (%lu)", atomic_load(&g_seq_seen));
    ST_EXPECT_RC(ar_node_stop(g_c, 5000), 0, "stop C");
    ST_WAIT(atomic_load(&g_c_down) == 1, "the DOWN of C's process");
    while (st_now_ms() - t0 < RUN_MS) st_nap_us(10000);
    atomic_store(&g_stop, true);
    ST_WAIT(atomic_load(&g_rounds) > 0, "the clients to finish a round");
    st_nap_us(200000); /* clients see g_stop and idle: no link or monitor crosses now */
    reconnect_race();
    ST_CHECK(atomic_load(&g_rounds) > 0 && atomic_load(&g_calls) > 0, "no work done");
    ST_EXPECT_RC(ar_node_stop(g_a, 10000), 0, "stop A");
    ST_EXPECT_RC(ar_node_stop(g_b, 10000), 0, "stop B");
    printf("stress_dist: %lu link/monitor rounds, %lu calls, %d ordered casts\n",
           atomic_load(&g_rounds), atomic_load(&g_calls), CASTS);
    return st_finish(t0);
}
