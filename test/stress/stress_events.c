/* stress_events: many producers of lifecycle events against a fast and a slow function
 * subscriber and a process subscriber, with subscriptions coming and going meanwhile.
 *
 * Producers: N_PRODUCERS threads that spawn short-lived processes (ending in init with a
 * random reason), spawn processes whose init fails (START_FAILED), and emit USER events
 * numbered per producer; a spawner process that does the same from inside its handler
 * (events produced on scheduler threads); and a churn thread that subscribes and
 * unsubscribes function subscribers (unsubscribing while the events thread may be serving
 * them) and spawns process subscribers that it kills with events still queued.
 *
 * The three measured subscribers are subscribed before any producer starts, with a small
 * event_buffer so the slow one (and at times the others) drops. Each checks, as events
 * arrive: seq strictly increasing; for each process at most one SPAWN and one EXIT,
 * SPAWN first (an EXIT without its SPAWN only after a LAGGED said something was lost), no
 * SPAWN or EXIT for a pid that failed to start; each producer's USER events in the order
 * it emitted them. At the end: for each subscriber, events delivered + the counts its
 * LAGGED events carried == events emitted of its kinds, exactly. Every block the runtime
 * allocated is freed by ar_node_stop, and ThreadSanitizer reports nothing.
 *
 * Usage: stress_events [seed]
 */
#define ST_WATCHDOG_S (ST_TSAN ? 150 : 60)
#include "stress_util.h"

#define N_PRODUCERS 3
#define ACTIONS 3000 /* per producer thread */
#define SPAWNER_ROUNDS 150
#define SPAWNER_BATCH 10
#define CHURN_ROUNDS 600
#define BUFFER 128
#define KINDS (AR_EV_SPAWN | AR_EV_EXIT | AR_EV_START_FAILED | AR_EV_USER)
#define PIDS (1u << 16) /* pid table slots per subscriber: a power of two, > 2x processes */
#define USER_MAX (N_PRODUCERS + 1)

enum { TAG_GO = 1, TAG_STOP };

static ar_node_t *g_node;
/* what was emitted, of the measured subscribers' kinds, while they were subscribed */
static atomic_ulong g_spawned, g_failed, g_users;

/* ---- a measured subscriber's checks ---------------------------------------------------- */
enum { SEEN_SPAWN = 1, SEEN_EXIT = 2, SEEN_FAILED = 4 };
typedef struct sub {
    const char *name;
    uint64_t last_seq;
    bool lagged; /* a LAGGED arrived: an EXIT may lack its SPAWN */
    uint64_t user_next[USER_MAX];
    uint64_t *keys; /* pid table: open addressing on pid.lo */
    uint8_t *state;
    atomic_ulong delivered, dropped; /* read by main */
    unsigned slow_us;                /* sleep after each event (the slow one) */
    unsigned count;
} sub_t;

static sub_t g_fast = {.name = "fast"}, g_slow = {.name = "slow", .slow_us = 40},
             g_proc = {.name = "process"};

static uint8_t *pid_state(sub_t *s, ar_pid_t pid)
{
    uint64_t key = pid.lo;
    for (uint64_t j = (key * 0x9E3779B97F4A7C15ull) >> 48;; j = (j + 1) & (PIDS - 1)) {
        if (s->keys[j] == key) return &s->state[j];
        if (!s->keys[j]) {
            s->keys[j] = key;
            return &s->state[j];
        }
    }
}

static void check_event(sub_t *s, const ar_event_t *e)
{
    ST_CHECK(e->seq > s->last_seq, "%s: seq %llu after %llu", s->name,
             (unsigned long long)e->seq, (unsigned long long)s->last_seq);
    s->last_seq = e->seq;
    if (e->kind == AR_EV_LAGGED) {
        ST_CHECK(e->dropped > 0, "%s: LAGGED of nothing", s->name);
        s->lagged = true;
        atomic_fetch_add_explicit(&s->dropped, e->dropped, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&s->delivered, 1, memory_order_relaxed);
    char pb[AR_PID_STRLEN];
    uint8_t *st;
    switch (e->kind) {
    case AR_EV_SPAWN:
        st = pid_state(s, e->pid);
        ST_CHECK(!*st, "%s: SPAWN of %s after state %u", s->name, st_pid_str(e->pid, pb), *st);
        *st |= SEEN_SPAWN;
        break;
    case AR_EV_EXIT:
        st = pid_state(s, e->pid);
        ST_CHECK(!(*st & (SEEN_EXIT | SEEN_FAILED)), "%s: EXIT of %s after state %u", s->name,
                 st_pid_str(e->pid, pb), *st);
        ST_CHECK((*st & SEEN_SPAWN) || s->lagged, "%s: EXIT of %s before its SPAWN", s->name,
                 st_pid_str(e->pid, pb));
        *st |= SEEN_EXIT;
        break;
    case AR_EV_START_FAILED:
        st = pid_state(s, e->pid);
        ST_CHECK(!*st, "%s: START_FAILED of %s after state %u", s->name,
                 st_pid_str(e->pid, pb), *st);
        *st |= SEEN_FAILED;
        break;
    case AR_EV_USER: {
        unsigned who = 0;
        unsigned long long k = 0;
        if (!e->name || sscanf(e->name, "u:%u:%llu", &who, &k) != 2 || who >= USER_MAX) {
            st_violation("%s: a USER event named %s", s->name, e->name ? e->name : "(null)");
            break;
        }
        /* per producer in order; a gap is allowed only for what a LAGGED counted */
        ST_CHECK(k >= s->user_next[who] && (k == s->user_next[who] || s->lagged),
                 "%s: producer %u's event %llu after %llu", s->name, who, k,
                 (unsigned long long)s->user_next[who]);
        s->user_next[who] = k + 1;
        break;
    }
    default:
        st_violation("%s: an event of kind %s it did not ask for", s->name,
                     ar_event_kind_name(e->kind));
    }
    if (s->slow_us && (++s->count & 3) == 0) st_nap_us(s->slow_us);
}

static void fn_sub(const ar_event_t *e, void *ud) { check_event(ud, e); }

/* The process subscriber. */
static int proc_sub_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    return ar_events_subscribe(ar_node(self), KINDS, NULL);
}
static void proc_sub_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind == AR_MSG_EVENT) check_event(state, m->event);
    else if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, NULL, 0);
}
static const ar_behaviour_t proc_sub_b = {.name = "se_subscriber", .init = proc_sub_init,
                                          .handle = proc_sub_handle};

/* ---- producers --------------------------------------------------------------------------- */
static int brief_init(ar_proc_t *self, void *arg, void **state)
{
    (void)state;
    static const ar_reason_t ends[] = {{AR_NORMAL, NULL}, {AR_ERROR, "brief crash"},
                                       {AR_SHUTDOWN, NULL}};
    ar_stop(self, ends[(uintptr_t)arg % 3]);
    return 0;
}
static void nop_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m;
}
static const ar_behaviour_t brief_b = {.name = "se_brief", .init = brief_init,
                                       .handle = nop_handle};

static int failing_init(ar_proc_t *self, void *arg, void **state)
{
    (void)state;
    if ((uintptr_t)arg & 1) AR_FAIL(self, "init crashed");
    return AR_EAGAIN;
}
static const ar_behaviour_t failing_b = {.name = "se_failing", .init = failing_init,
                                         .handle = nop_handle};

static void emit_user(unsigned who, uint64_t *k)
{
    char name[48];
    snprintf(name, sizeof name, "u:%u:%llu", who, (unsigned long long)(*k)++);
    ar_event_t e = {.kind = AR_EV_USER, .name = name, .reason = {AR_ERROR, "a user text"}};
    ST_EXPECT_RC(ar_events_emit(g_node, &e), 0, "ar_events_emit");
    atomic_fetch_add_explicit(&g_users, 1, memory_order_relaxed);
}

static void act(st_rng_t *r, unsigned who, uint64_t *k)
{
    unsigned pick = (unsigned)st_below(r, 100);
    uintptr_t arg = (uintptr_t)st_next(r);
    if (pick < 55) {
        ST_EXPECT_RC(ar_spawn(g_node, &brief_b, (void *)arg, NULL, NULL), 0, "ar_spawn(brief)");
        atomic_fetch_add_explicit(&g_spawned, 1, memory_order_relaxed);
    } else if (pick < 70) {
        int rc = ar_spawn(g_node, &failing_b, (void *)arg, NULL, NULL);
        if (rc != AR_EAGAIN && rc != AR_ENOPROC) st_fail("ar_spawn(failing): %s", ar_err_name(rc));
        atomic_fetch_add_explicit(&g_failed, 1, memory_order_relaxed);
    } else {
        emit_user(who, k);
    }
}

static void *producer_main(void *arg)
{
    unsigned who = (unsigned)(uintptr_t)arg;
    st_rng_t r = st_rng_for(100 + who);
    uint64_t k = 0;
    for (int i = 0; i < ACTIONS; i++) act(&r, who, &k);
    return NULL;
}

/* The spawner process: each TAG_GO, a batch of actions from inside its handler. */
typedef struct spawner {
    st_rng_t r;
    uint64_t k;
    atomic_int rounds;
} spawner_t;
static spawner_t g_spawner;
static int spawner_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    spawner_t *sp = state;
    if (m->tag == TAG_STOP) {
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    for (int i = 0; i < SPAWNER_BATCH; i++) act(&sp->r, N_PRODUCERS, &sp->k);
    atomic_fetch_add_explicit(&sp->rounds, 1, memory_order_release);
}
static const ar_behaviour_t spawner_b = {.name = "se_spawner", .init = spawner_init,
                                         .handle = spawner_handle};

/* ---- subscription churn ---------------------------------------------------------------- */
static atomic_ulong g_churn_events;
static void churn_fn(const ar_event_t *e, void *ud)
{
    (void)e, (void)ud;
    atomic_fetch_add_explicit(&g_churn_events, 1, memory_order_relaxed);
}

/* A short-lived process subscriber: it never reads; killed with events queued. */
static int lurker_init(ar_proc_t *self, void *arg, void **state)
{
    (void)arg, (void)state;
    return ar_events_subscribe(ar_node(self), AR_EV_ALL, NULL);
}
static void lurker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind == AR_MSG_EVENT) ar_sleep(self, 1); /* slow: its buffer fills */
}
static const ar_behaviour_t lurker_b = {.name = "se_lurker", .init = lurker_init,
                                        .handle = lurker_handle};

static void *churn_main(void *arg)
{
    (void)arg;
    st_rng_t r = st_rng_for(900);
    for (int i = 0; i < CHURN_ROUNDS; i++) {
        ar_ref_t ref;
        ST_EXPECT_RC(ar_events_subscribe_fn(g_node, AR_EV_ALL, churn_fn, NULL, &ref), 0,
                     "ar_events_subscribe_fn(churn)");
        if (st_chance(&r, 50)) st_nap_us((unsigned)st_below(&r, 200));
        ST_EXPECT_RC(ar_events_unsubscribe(g_node, ref), 0, "ar_events_unsubscribe(churn)");
        if (i % 5 == 0) {
            ar_pid_t p;
            ST_EXPECT_RC(ar_spawn(g_node, &lurker_b, NULL, NULL, &p), 0, "ar_spawn(lurker)");
            atomic_fetch_add_explicit(&g_spawned, 1, memory_order_relaxed);
            st_nap_us((unsigned)st_below(&r, 500));
            ST_EXPECT_RC(ar_exit(g_node, p, AR_REASON(AR_KILL)), 0, "ar_exit(lurker)");
        }
    }
    return NULL;
}

/* ---- main --------------------------------------------------------------------------------- */
static unsigned long total(sub_t *s)
{
    return atomic_load_explicit(&s->delivered, memory_order_relaxed) +
           atomic_load_explicit(&s->dropped, memory_order_relaxed);
}

static unsigned long g_expect[3];
static void hang_report(void)
{
    sub_t *subs[] = {&g_fast, &g_slow, &g_proc};
    for (int i = 0; i < 3; i++)
        fprintf(stderr, "  %s: delivered %lu + dropped %lu, expected %lu\n", subs[i]->name,
                atomic_load(&subs[i]->delivered), atomic_load(&subs[i]->dropped), g_expect[i]);
}

int main(int argc, char **argv)
{
    st_begin("stress_events", argc, argv);
    st_hang_report = hang_report;
    uint64_t t0 = st_now_ms();
    ST_EXPECT_RC(ar_set_allocator(st_counting_allocator()), 0, "ar_set_allocator");
    sub_t *subs[] = {&g_fast, &g_slow, &g_proc};
    for (int i = 0; i < 3; i++) {
        subs[i]->keys = calloc(PIDS, sizeof *subs[i]->keys);
        subs[i]->state = calloc(PIDS, 1);
        if (!subs[i]->keys || !subs[i]->state) st_fail("out of memory");
    }
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.event_buffer = BUFFER;
    cfg.crash_reports_off = true;
    ST_EXPECT_RC(ar_node_start(&cfg, &g_node), 0, "ar_node_start");

    ST_EXPECT_RC(ar_events_subscribe_fn(g_node, KINDS, fn_sub, &g_fast, NULL), 0, "subscribe fast");
    ST_EXPECT_RC(ar_events_subscribe_fn(g_node, KINDS, fn_sub, &g_slow, NULL), 0, "subscribe slow");
    ar_pid_t psub, spawner;
    ST_EXPECT_RC(ar_spawn(g_node, &proc_sub_b, &g_proc, NULL, &psub), 0, "ar_spawn(subscriber)");
    g_spawner.r = st_rng_for(500);
    ST_EXPECT_RC(ar_spawn(g_node, &spawner_b, &g_spawner, NULL, &spawner), 0, "ar_spawn(spawner)");
    atomic_fetch_add(&g_spawned, 2); /* both are seen spawning by all three */

    pthread_t prod[N_PRODUCERS], churn;
    for (unsigned i = 0; i < N_PRODUCERS; i++)
        st_start_thread(&prod[i], producer_main, (void *)(uintptr_t)i);
    st_start_thread(&churn, churn_main, NULL);
    for (int i = 0; i < SPAWNER_ROUNDS; i++) {
        ST_EXPECT_RC(ar_send(g_node, spawner, TAG_GO, NULL, 0), 0, "ar_send(go)");
        if (i % 8 == 0) st_nap_us(500);
    }
    for (unsigned i = 0; i < N_PRODUCERS; i++) st_join(prod[i]);
    st_join(churn);
    ST_WAIT(atomic_load_explicit(&g_spawner.rounds, memory_order_acquire) == SPAWNER_ROUNDS,
            "the spawner's rounds");
    ST_EXPECT_RC(ar_send(g_node, spawner, TAG_STOP, NULL, 0), 0, "ar_send(stop)");
    ar_node_stats_t st;
    ST_WAIT((ar_node_stats(g_node, &st), st.processes == 1), "every process but the subscriber "
                                                             "to end");

    /* Every process but the subscriber ended: SPAWN and EXIT each, but the subscriber's
     * EXIT (it lives on), and its own SPAWN is seen by itself too (it subscribed in init). */
    unsigned long spawned = atomic_load(&g_spawned), failed = atomic_load(&g_failed),
                  users = atomic_load(&g_users);
    unsigned long expect = spawned + (spawned - 1) + failed + users;
    g_expect[0] = g_expect[1] = g_expect[2] = expect;
    for (int i = 0; i < 3; i++)
        ST_WAIT(total(subs[i]) >= expect, "%s subscriber: delivered + dropped to reach %lu",
                subs[i]->name, expect);
    ar_buf_t b;
    ST_EXPECT_RC(ar_call(g_node, psub, 1, NULL, 0, &b, ST_WAIT_MS), 0, "ar_call(subscriber)");
    ar_buf_free(&b);
    for (int i = 0; i < 3; i++)
        ST_CHECK(total(subs[i]) == expect, "%s: delivered %lu + dropped %lu != emitted %lu",
                 subs[i]->name, atomic_load(&subs[i]->delivered),
                 atomic_load(&subs[i]->dropped), expect);

    /* The stop delivers what is left: the function subscribers also hear the subscriber's
     * EXIT, and nothing else. */
    ST_EXPECT_RC(ar_node_stop(g_node, ST_WAIT_MS), 0, "ar_node_stop");
    for (int i = 0; i < 2; i++)
        ST_CHECK(total(subs[i]) == expect + 1, "%s after the stop: %lu, expected %lu",
                 subs[i]->name, total(subs[i]), expect + 1);
    long live = st_get(st_live_blocks());
    ST_CHECK(live == 0, "%ld blocks left after ar_node_stop", live);
    ST_EXPECT_RC(ar_set_allocator(NULL), 0, "ar_set_allocator(NULL)");
    printf("stress_events: %lu processes, %lu failed starts, %lu user events; dropped: fast %lu, "
           "slow %lu, process %lu; churn subscribers heard %lu\n",
           spawned, failed, users, atomic_load(&g_fast.dropped), atomic_load(&g_slow.dropped),
           atomic_load(&g_proc.dropped), atomic_load(&g_churn_events));
    for (int i = 0; i < 3; i++) free(subs[i]->keys), free(subs[i]->state);
    return st_finish(t0);
}
