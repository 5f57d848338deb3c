/* stress_stop: ar_node_stop of a node full of busy and blocked processes, a few rounds.
 *
 * Each round starts a node and fills it with thousands of processes, top-level (spawned
 * from main and from foreign threads) and children (spawned by processes while they run):
 * chatters pass tokens around, answer calls and spawn children; others block in
 * ar_receive (for ever or with a long timeout), in ar_call (to a server that never
 * answers, or to a random peer), or in ar_sleep; some end by themselves. Foreign threads
 * keep spawning and sending. Once the traffic is going and most blockers are parked, main
 * calls ar_node_stop. The first top-level process (stopped last of the top-level ones)
 * checks from its terminate that ar_spawn is now refused and lets the foreign threads
 * finish, so they never touch the node after it is freed.
 * Invariants: ar_node_stop returns 0; terminate ran exactly once for every process whose
 * init succeeded (never for one that did not start), with the state its init stored and
 * the reason AR_SHUTDOWN (AR_NORMAL for those that ended themselves); ar_spawn returns 0,
 * or AR_ECLOSED only once the stop has begun; every block the runtime allocated through
 * the allocator hook is freed after the stop.
 *
 * Usage: stress_stop [seed]
 */
#include "stress_util.h"

#define ROUNDS (ST_TSAN ? 2 : 4)
#define N_TOP (ST_TSAN ? 700 : 1500)
#define CHILD_BUDGET (ST_TSAN ? 900 : 2000)
#define MAX_RECS (N_TOP + CHILD_BUDGET + 20000)
#define N_THREADS 2
#define TOKEN_CAP 6000
#define WARM_MESSAGES (ST_TSAN ? 15000 : 60000)

enum { TAG_KICK = 1, TAG_TOKEN, TAG_PING };
enum { K_GUARD, K_SINK, K_CHATTER, K_RECV, K_RECV_TIMEOUT, K_CALL_SINK, K_CALL_PEER, K_SLEEP,
       K_SELF_STOP, K_KINDS };
static const char *const kind_name[K_KINDS] = {"guard", "sink", "chatter", "receive",
                                               "receive-timeout", "call-sink", "call-peer",
                                               "sleep", "self-stop"};

typedef struct rec {
    uint32_t idx, kind;
    _Atomic uint32_t inited, terminated, ready;
    _Atomic int spawn_rc, why;
    _Atomic uint64_t hi, lo; /* its pid, once ready */
    uint32_t handled;
    bool from_proc;
} rec_t;

static ar_node_t *g_node;
static rec_t *g_recs;
static atomic_uint g_nrecs;
static ar_pid_t g_sink;
static atomic_int g_child_budget;
static atomic_int g_tokens;
static atomic_ulong g_handled_msgs;
static atomic_uint g_blockers, g_blocked;
static atomic_bool g_stop_called;   /* main is about to call ar_node_stop */
static atomic_bool g_threads_quit;  /* the guard tells the foreign threads to finish */
static atomic_uint g_threads_done;
static atomic_uint g_guard_terminated;
static uint64_t g_round;

/* ---- records and spawning ------------------------------------------------------------ */
static rec_t *new_rec(uint32_t kind, bool from_proc)
{
    uint32_t i = atomic_fetch_add_explicit(&g_nrecs, 1, memory_order_relaxed);
    if (i >= MAX_RECS) {
        atomic_fetch_sub_explicit(&g_nrecs, 1, memory_order_relaxed);
        return NULL;
    }
    rec_t *r = &g_recs[i];
    r->idx = i;
    r->kind = kind;
    r->from_proc = from_proc;
    atomic_store_explicit(&r->spawn_rc, 1, memory_order_relaxed); /* 1: not returned yet */
    return r;
}

static const ar_behaviour_t proc_b;

/* Spawns a process of the given kind; checks the result against the stop state. */
static int spawn_kind(uint32_t kind, bool from_proc, ar_pid_t *out)
{
    rec_t *r = new_rec(kind, from_proc);
    if (r == NULL) return AR_ENOMEM;
    ar_pid_t pid = AR_PID_NONE;
    int rc = ar_spawn(g_node, &proc_b, r, NULL, &pid);
    atomic_store_explicit(&r->spawn_rc, rc, memory_order_relaxed);
    if (rc == AR_ECLOSED) {
        /* acquire: pairs with main's release just before ar_node_stop */
        ST_CHECK(atomic_load_explicit(&g_stop_called, memory_order_acquire),
                 "round %" PRIu64 ": ar_spawn returned AR_ECLOSED before the stop began",
                 g_round);
    } else if (rc != 0) {
        st_violation("round %" PRIu64 ": ar_spawn (%s, %s) returned %s", g_round,
                     kind_name[kind], from_proc ? "from a process" : "from a thread",
                     ar_err_name(rc));
    } else if (out) {
        *out = pid;
    }
    return rc;
}

/* A random peer that has started (a chatter if asked and one is found soon); false if
 * none picked. */
static bool random_peer(st_rng_t *rng, bool want_chatter, ar_pid_t *out)
{
    uint32_t n = atomic_load_explicit(&g_nrecs, memory_order_relaxed);
    if (n == 0) return false;
    for (int tries = 0; tries < 8; tries++) {
        rec_t *r = &g_recs[st_below(rng, n)];
        /* acquire: pairs with init's release of the pid fields */
        if (!atomic_load_explicit(&r->ready, memory_order_acquire)) continue;
        if (want_chatter && r->kind != K_CHATTER && tries < 7) continue;
        out->hi = atomic_load_explicit(&r->hi, memory_order_relaxed);
        out->lo = atomic_load_explicit(&r->lo, memory_order_relaxed);
        return true;
    }
    return false;
}

static uint32_t random_kind(st_rng_t *rng)
{
    unsigned p = (unsigned)st_below(rng, 100);
    return p < 50 ? K_CHATTER : p < 62 ? K_RECV : p < 68 ? K_RECV_TIMEOUT : p < 78 ? K_CALL_SINK
         : p < 86 ? K_CALL_PEER : p < 94 ? K_SLEEP : K_SELF_STOP;
}

/* ---- the processes --------------------------------------------------------------------- */
typedef struct pstate {
    uint64_t magic; /* proves terminate got the state init stored */
    rec_t *rec;
    st_rng_t rng;
} pstate_t;

static uint64_t magic_of(const rec_t *r)
{
    return st_mix64(0x5707u + r->idx + g_round * 1000003u);
}

static bool match_none(const ar_msg_t *m, void *ud)
{
    (void)m;
    (void)ud;
    return false;
}

static int proc_init(ar_proc_t *self, void *arg, void **state)
{
    rec_t *r = arg;
    pstate_t *ps = malloc(sizeof *ps);
    if (ps == NULL) return AR_ENOMEM;
    ps->rec = r;
    ps->magic = magic_of(r);
    ps->rng = st_rng_for(g_round * 1000003u + r->idx);
    *state = ps;
    ar_pid_t me = ar_self(self);
    atomic_store_explicit(&r->hi, me.hi, memory_order_relaxed);
    atomic_store_explicit(&r->lo, me.lo, memory_order_relaxed);
    /* release: the pid fields are written before peers may pick this record */
    atomic_store_explicit(&r->ready, 1, memory_order_release);
    atomic_store_explicit(&r->inited, 1, memory_order_relaxed);
    if (r->kind != K_GUARD && r->kind != K_SINK) {
        if (r->kind != K_CHATTER && r->kind != K_SELF_STOP)
            atomic_fetch_add_explicit(&g_blockers, 1, memory_order_relaxed);
        int rc = ar_send(g_node, me, TAG_KICK, NULL, 0);
        ST_CHECK(rc == 0, "init: send to self returned %s", ar_err_name(rc));
    }
    return 0;
}

static void forward_token(pstate_t *ps, uint32_t hops)
{
    ar_pid_t to;
    /* Mostly to chatters, so the traffic lasts; now and then into a blocked mailbox. */
    if (random_peer(&ps->rng, st_chance(&ps->rng, 90), &to)) {
        int rc = ar_send(g_node, to, TAG_TOKEN, &hops, sizeof hops);
        ST_CHECK(rc == 0, "token send returned %s", ar_err_name(rc));
        return;
    }
    atomic_fetch_sub_explicit(&g_tokens, 1, memory_order_relaxed);
}

static void chatter(ar_proc_t *self, pstate_t *ps, const ar_msg_t *m)
{
    if (m->kind == AR_MSG_CALL) {
        int rc = ar_reply(g_node, m->reply_to, NULL, 0);
        ST_CHECK(rc == 0, "chatter: ar_reply returned %s", ar_err_name(rc));
        return;
    }
    uint32_t hops = 0;
    if (m->tag == TAG_KICK) {
        atomic_fetch_add_explicit(&g_tokens, 2, memory_order_relaxed);
        forward_token(ps, 0);
        forward_token(ps, 0);
        return;
    }
    if (m->tag != TAG_TOKEN || m->len != sizeof hops) return;
    memcpy(&hops, m->data, sizeof hops);
    forward_token(ps, hops + 1);
    /* Tokens stuck in blocked mailboxes are replaced, up to a cap. */
    if (atomic_load_explicit(&g_tokens, memory_order_relaxed) < TOKEN_CAP && st_chance(&ps->rng, 10)) {
        atomic_fetch_add_explicit(&g_tokens, 1, memory_order_relaxed);
        forward_token(ps, 0);
    }
    if (st_chance(&ps->rng, 1)
        && atomic_fetch_sub_explicit(&g_child_budget, 1, memory_order_relaxed) > 0) {
        spawn_kind(random_kind(&ps->rng), true, NULL);
    }
    (void)self;
}

/* A blocking call that must not end before the stop came back: during the stop an error
 * result is fine (the process is ended right after), anything else is not. */
static void unblocked(rec_t *r, const char *what, int rc)
{
    /* acquire: pairs with main's release just before ar_node_stop */
    bool stopping = atomic_load_explicit(&g_stop_called, memory_order_acquire);
    ST_CHECK(stopping && rc != 0, "round %" PRIu64 ": %s process (record %u): %s returned %s "
             "%s the stop began", g_round, kind_name[r->kind], r->idx, what, ar_err_name(rc),
             stopping ? "after" : "before");
}

static void proc_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    pstate_t *ps = state;
    rec_t *r = ps->rec;
    r->handled++;
    atomic_fetch_add_explicit(&g_handled_msgs, 1, memory_order_relaxed);
    ar_msg_t *got = NULL;
    int rc = 0;
    switch (r->kind) {
    case K_GUARD:
        break;
    case K_SINK:
        /* Keeps every caller waiting: never replies. */
        break;
    case K_CHATTER:
        chatter(self, ps, m);
        break;
    case K_RECV:
    case K_RECV_TIMEOUT:
        if (m->tag != TAG_KICK) break;
        atomic_fetch_add_explicit(&g_blocked, 1, memory_order_relaxed);
        rc = ar_receive(self, match_none, NULL, r->kind == K_RECV ? AR_INFINITY : 600000, &got);
        unblocked(r, "ar_receive", rc);
        if (rc == 0) ar_msg_release(self, got);
        break;
    case K_CALL_SINK:
        if (m->tag != TAG_KICK) break;
        atomic_fetch_add_explicit(&g_blocked, 1, memory_order_relaxed);
        {
            ar_buf_t reply = {0};
            rc = ar_call(g_node, g_sink, TAG_PING, NULL, 0, &reply, AR_INFINITY);
            unblocked(r, "ar_call to the silent sink", rc);
            ar_buf_free(&reply);
        }
        break;
    case K_CALL_PEER:
        if (m->kind == AR_MSG_CALL) break; /* never answers: its callers stay blocked too */
        if (m->tag != TAG_KICK) break;
        {
            bool counted = false;
            for (int i = 0; i < 64; i++) {
                ar_pid_t to;
                if (!random_peer(&ps->rng, false, &to)) continue;
                if (!counted) {
                    atomic_fetch_add_explicit(&g_blocked, 1, memory_order_relaxed);
                    counted = true;
                }
                ar_buf_t reply = {0};
                rc = ar_call(g_node, to, TAG_PING, NULL, 0, &reply, AR_INFINITY);
                ar_buf_free(&reply);
                if (rc != 0 && rc != AR_ENOPROC && rc != AR_EDEADLK) {
                    unblocked(r, "ar_call to a peer", rc);
                    break;
                }
            }
            rc = ar_send(g_node, ar_self(self), TAG_KICK, NULL, 0);
            ST_CHECK(rc == 0, "send to self returned %s", ar_err_name(rc));
        }
        break;
    case K_SLEEP:
        if (m->tag != TAG_KICK) break;
        atomic_fetch_add_explicit(&g_blocked, 1, memory_order_relaxed);
        rc = ar_sleep(self, 600000);
        unblocked(r, "ar_sleep(600 s)", rc);
        break;
    case K_SELF_STOP:
        if (m->kind == AR_MSG_CALL) {
            rc = ar_reply(g_node, m->reply_to, NULL, 0);
            ST_CHECK(rc == 0, "self-stop: ar_reply returned %s", ar_err_name(rc));
        }
        if (r->handled >= 1 + st_below(&ps->rng, 20)) ar_stop(self, AR_REASON(AR_NORMAL));
        break;
    default:
        break;
    }
}

static void proc_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    pstate_t *ps = state;
    if (ps == NULL || ps->rec == NULL || ps->rec >= g_recs + MAX_RECS || ps->rec < g_recs
        || ps->magic != magic_of(ps->rec))
        st_fail("round %" PRIu64 ": terminate got a state that init did not store", g_round);
    rec_t *r = ps->rec;
    uint32_t n = atomic_fetch_add_explicit(&r->terminated, 1, memory_order_relaxed);
    ST_CHECK(n == 0, "round %" PRIu64 ": terminate ran %u times for record %u (%s)", g_round,
             n + 1, r->idx, kind_name[r->kind]);
    atomic_store_explicit(&r->why, (int)why.code, memory_order_relaxed);
    if (r->kind == K_GUARD) {
        /* Stopped last of the top-level processes: the stop is under way. */
        int rc = spawn_kind(K_SELF_STOP, true, NULL);
        ST_CHECK(rc == AR_ECLOSED, "round %" PRIu64 ": ar_spawn during the stop returned %s",
                 g_round, ar_err_name(rc));
        /* release: lets the foreign threads finish; they touch the node no more after */
        atomic_store_explicit(&g_threads_quit, true, memory_order_release);
        uint64_t dl = st_now_ms() + ST_WAIT_MS;
        /* acquire: pairs with each thread's release as it leaves */
        while (atomic_load_explicit(&g_threads_done, memory_order_acquire) != N_THREADS) {
            if (st_now_ms() > dl) st_fail("round %" PRIu64 ": foreign threads never finished",
                                          g_round);
            st_nap_us(100);
        }
        atomic_store_explicit(&g_guard_terminated, 1, memory_order_relaxed);
    }
    free(ps);
}

static const ar_behaviour_t proc_b = {"stop_proc", proc_init, proc_handle, proc_terminate};

/* ---- foreign threads: spawn top-level processes and send, until told to finish ------- */
static void *foreign_thread(void *arg)
{
    st_rng_t rng = st_rng_for(g_round * 7919u + (uintptr_t)arg);
    bool refused = false;
    /* acquire: pairs with the guard's release; after it, the node is off limits */
    while (!atomic_load_explicit(&g_threads_quit, memory_order_acquire)) {
        /* Spawns are refused (AR_ECLOSED) once the stop begins; sends go on until the
         * guard says so. After the first refusal a thread spawns no more: each attempt
         * takes a record, and a slow stop (TSan) would otherwise use them all up. */
        if (!refused && st_chance(&rng, 20) &&
            spawn_kind(random_kind(&rng), false, NULL) == AR_ECLOSED)
            refused = true;
        ar_pid_t to;
        if (random_peer(&rng, false, &to)) {
            int rc = ar_send(g_node, to, TAG_PING, NULL, 0);
            ST_CHECK(rc == 0, "foreign send returned %s", ar_err_name(rc));
        }
        st_nap_us(50);
    }
    /* release: this thread is done with the node */
    atomic_fetch_add_explicit(&g_threads_done, 1, memory_order_release);
    return NULL;
}

static void run_round(uint64_t round)
{
    g_round = round;
    memset(g_recs, 0, sizeof(rec_t) * MAX_RECS);
    st_set(&g_nrecs, 0);
    st_set(&g_child_budget, CHILD_BUDGET);
    st_set(&g_tokens, 0);
    st_set(&g_handled_msgs, 0);
    st_set(&g_blockers, 0);
    st_set(&g_blocked, 0);
    st_set(&g_stop_called, false);
    st_set(&g_threads_quit, false);
    st_set(&g_threads_done, 0);
    st_set(&g_guard_terminated, 0);
    long base = st_get(st_live_blocks());
    st_rng_t rng = st_rng_for(round);

    g_node = st_node_start(2);
    ST_EXPECT_RC(spawn_kind(K_GUARD, false, NULL), 0, "ar_spawn(guard)");
    ST_EXPECT_RC(spawn_kind(K_SINK, false, &g_sink), 0, "ar_spawn(sink)");
    for (int i = 0; i < N_TOP; i++) spawn_kind(random_kind(&rng), false, NULL);
    pthread_t th[N_THREADS];
    for (uintptr_t i = 0; i < N_THREADS; i++) st_start_thread(&th[i], foreign_thread, (void *)i);

    /* Stop once traffic flows and most blockers are parked, at a random moment after. */
    ST_WAIT(st_get(&g_handled_msgs) >= WARM_MESSAGES
                && st_get(&g_blocked) * 10 >= st_get(&g_blockers) * 8,
            "round %" PRIu64 " to warm up (handled %lu, blocked %u of %u)", round,
            (unsigned long)st_get(&g_handled_msgs), st_get(&g_blocked),
            st_get(&g_blockers));
    uint64_t extra = st_get(&g_handled_msgs) + st_below(&rng, WARM_MESSAGES);
    ST_WAIT(st_get(&g_handled_msgs) >= extra || st_get(&g_tokens) <= 0,
            "round %" PRIu64 " traffic", round);
    uint32_t nrecs_at_stop = st_get(&g_nrecs);
    /* release: a spawn refused from now on is expected */
    atomic_store_explicit(&g_stop_called, true, memory_order_release);
    uint64_t ts = st_now_ms();
    int rc = ar_node_stop(g_node, ST_WAIT_MS);
    uint64_t stop_ms = st_now_ms() - ts;
    if (!st_get(&g_guard_terminated))
        st_fail("round %" PRIu64 ": ar_node_stop returned %s without the first top-level "
                "process's terminate having finished", round, ar_err_name(rc));
    for (int i = 0; i < N_THREADS; i++) st_join(th[i]);
    ST_CHECK(rc == 0, "round %" PRIu64 ": ar_node_stop returned %s", round, ar_err_name(rc));

    uint32_t n = st_get(&g_nrecs), started = 0, refused = 0, blocked = st_get(&g_blocked);
    uint32_t per_kind[K_KINDS] = {0};
    for (uint32_t i = 0; i < n; i++) {
        rec_t *r = &g_recs[i];
        uint32_t in = st_get(&r->inited), te = st_get(&r->terminated);
        int src = st_get(&r->spawn_rc), why = st_get(&r->why);
        if (src == 0) {
            started++;
            per_kind[r->kind]++;
            ST_CHECK(in == 1, "round %" PRIu64 ": record %u: ar_spawn returned 0 but init did "
                     "not run", round, i);
        } else if (src == AR_ECLOSED) {
            refused++;
        }
        if (src != 0)
            ST_CHECK(in == 0 && te == 0, "round %" PRIu64 ": record %u (%s): ar_spawn returned "
                     "%s yet init ran %u / terminate ran %u", round, i, kind_name[r->kind],
                     ar_err_name(src), in, te);
        if (in) {
            ST_CHECK(te == 1, "round %" PRIu64 ": %s process (record %u, spawned from %s) "
                     "started but terminate ran %u times", round, kind_name[r->kind], i,
                     r->from_proc ? "a process" : "a thread", te);
            int want = r->kind == K_SELF_STOP ? -1 : AR_SHUTDOWN;
            if (te == 1 && want >= 0)
                ST_CHECK(why == want, "round %" PRIu64 ": %s process (record %u) ended with %s, "
                         "expected shutdown", round, kind_name[r->kind], i,
                         ar_exit_code_name((ar_exit_code_t)why));
            if (te == 1 && want < 0)
                ST_CHECK(why == AR_NORMAL || why == AR_SHUTDOWN, "round %" PRIu64 ": self-stop "
                         "process (record %u) ended with %s", round, i,
                         ar_exit_code_name((ar_exit_code_t)why));
        }
    }
    long live = st_get(st_live_blocks()) - base;
    printf("round %" PRIu64 ": processes started %u (at stop %u records; chatter %u, blocked "
           "%u), refused %u, stop took %" PRIu64 " ms, live blocks after stop %ld\n", round,
           started, nrecs_at_stop, per_kind[K_CHATTER], blocked, refused, stop_ms, live);
    ST_CHECK(live == 0, "round %" PRIu64 ": %ld runtime blocks still allocated after "
             "ar_node_stop", round, live);
}

int main(int argc, char **argv)
{
    st_begin("stress_stop", argc, argv);
    uint64_t t0 = st_now_ms();
    g_recs = calloc(MAX_RECS, sizeof *g_recs);
    if (g_recs == NULL) st_fail("out of memory");
    ST_EXPECT_RC(ar_set_allocator(st_counting_allocator()), 0, "ar_set_allocator");
    for (uint64_t round = 1; round <= ROUNDS; round++) {
        run_round(round);
        if (st_get(&st_violations) != 0) break;
    }
    ST_EXPECT_RC(ar_set_allocator(NULL), 0, "ar_set_allocator(NULL)");
    free(g_recs);
    return st_finish(t0);
}
