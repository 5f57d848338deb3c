/* Timers: AR_MSG_TIMER with tag, data and from; cancelling; a process's timers end with
 * it; deadline order; many timers. Absence is proven by event order: a later timer that
 * arrives after the one that must not fire would have. */
#include "test_helpers.h"

enum { TAG_DOOMED = 10, TAG_MARKER = 11, TAG_TICK = 12 };

/* A timer that must never fire is due this long after it is set: what must happen before
 * it (a cancel, its owner's end) has several seconds, whatever the load. */
#define DOOMED_MS 3000

static int arg_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

/* ---- a process that sets a timer ----------------------------------------------------------- */
enum then { THEN_STAY, THEN_STOP, THEN_FAIL };
typedef struct setter {
    ar_pid_t to;
    int ms;
    uint32_t tag;
    enum then then;
    int rc;
    ar_ref_t ref;
    atomic_int done, terminated;
} setter_t;

static void setter_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    setter_t *s = state;
    char data[16] = "from setter";
    s->rc = ar_send_after(ar_node(self), s->ms, s->to, s->tag, data, strlen(data), &s->ref);
    memset(data, 'Z', sizeof data); /* the timer keeps its own copy */
    atomic_store(&s->done, 1);
    if (s->then == THEN_STOP) ar_stop(self, AR_REASON(AR_NORMAL));
    if (s->then == THEN_FAIL) AR_FAIL(self, "owner crashes");
}
static void setter_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)why;
    setter_t *s = state;
    atomic_store(&s->terminated, 1);
}
static const ar_behaviour_t setter_b = {"setter", arg_init, setter_handle, setter_terminate};

Test(timer, send_after_delivers_a_timer_message_with_tag_data_and_from, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    static setter_t s;
    s.to = rec;
    s.ms = 20;
    s.tag = TAG_TICK;
    ar_pid_t setter = th_spawn(node, &setter_b, &s);
    uint64_t t0 = th_now_ns();
    th_send(node, setter, 1, NULL, 0);
    th_await(th_log_len(&log) == 1);
    double ms = th_ms_since(t0);
    cr_assert_eq(s.rc, 0, "%s", ar_err_name(s.rc));
    cr_assert_neq(s.ref, 0, "a timer ref is never 0");
    cr_assert_eq(log.e[0].kind, AR_MSG_TIMER);
    cr_assert_eq(log.e[0].tag, TAG_TICK);
    cr_assert_str_eq(log.e[0].data, "from setter");
    cr_assert_eq(log.e[0].len, strlen("from setter"));
    cr_assert(ar_pid_eq(log.e[0].from, setter), "from is the process that set the timer");
    cr_assert_geq(ms, 19.0, "fired after %.1f ms of 20", ms);

    /* From the main thread: from is AR_PID_NONE. */
    char data[8] = "main";
    ar_ref_t ref = 0;
    cr_assert_eq(ar_send_after(node, 1, rec, TAG_TICK + 1, data, 4, &ref), 0);
    memset(data, 0, sizeof data);
    th_await(th_log_len(&log) == 2);
    cr_assert_neq(ref, 0);
    cr_assert_neq(ref, s.ref);
    cr_assert_eq(log.e[1].kind, AR_MSG_TIMER);
    cr_assert_eq(log.e[1].tag, TAG_TICK + 1);
    cr_assert_str_eq(log.e[1].data, "main");
    cr_assert(ar_pid_is_none(log.e[1].from));

    /* The timer ref is optional; 0 ms fires too. */
    cr_assert_eq(ar_send_after(node, 0, rec, TAG_TICK + 2, NULL, 0, NULL), 0);
    th_await(th_log_len(&log) == 3);
    cr_assert_eq(log.e[2].tag, TAG_TICK + 2);
    cr_assert_eq(log.e[2].len, 0);
    th_node_stop(node);
}

Test(timer, cancel_of_a_pending_timer_is_zero_then_enoent_and_it_never_fires,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    ar_ref_t doomed = 0, marker = 0;
    /* due in 3 s: the cancel right after must find it pending, however loaded the machine */
    cr_assert_eq(ar_send_after(node, DOOMED_MS, rec, TAG_DOOMED, NULL, 0, &doomed), 0);
    cr_assert_eq(ar_cancel_timer(node, doomed), 0);
    cr_assert_eq(ar_cancel_timer(node, doomed), AR_ENOENT, "a second cancel");
    cr_assert_eq(ar_send_after(node, DOOMED_MS + 300, rec, TAG_MARKER, NULL, 0, &marker), 0);
    th_await(th_log_len(&log) >= 1);
    cr_assert_eq(log.e[0].tag, TAG_MARKER, "the cancelled timer fired (tag %u)", log.e[0].tag);
    cr_assert_eq(th_log_len(&log), 1);
    th_node_stop(node);
}

Test(timer, cancel_of_a_fired_or_unknown_timer_is_enoent, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    ar_ref_t ref = 0;
    cr_assert_eq(ar_send_after(node, 1, rec, TAG_TICK, NULL, 0, &ref), 0);
    th_await(th_log_len(&log) == 1);
    cr_assert_eq(ar_cancel_timer(node, ref), AR_ENOENT);
    cr_assert_eq(ar_cancel_timer(node, 0), AR_ENOENT);
    cr_assert_eq(ar_cancel_timer(node, ref + 1000000), AR_ENOENT);
    th_node_stop(node);
}

/* A timer to a dead pid fires into nothing and is counted as dropped. */
static void stopper_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state, (void)m;
    ar_stop(self, AR_REASON(AR_NORMAL));
}
static const ar_behaviour_t stopper_b = {"stopper", NULL, stopper_handle, NULL};

Test(timer, timer_to_a_dead_pid_is_dropped_and_counted, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t dead = th_spawn(node, &stopper_b, NULL);
    th_send(node, dead, 1, NULL, 0);
    th_await(!th_proc_alive(node, dead));
    ar_node_stats_t s0 = th_stats(node);
    cr_assert_eq(ar_send_after(node, 1, dead, TAG_TICK, "x", 1, NULL), 0);
    th_await(th_stats(node).dropped == s0.dropped + 1);
    th_node_stop(node);
}

/* ---- a process's timers end with it ------------------------------------------------------------ */
static void check_owner_end(enum then then)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    static setter_t s;
    s.to = rec;
    s.ms = DOOMED_MS;
    s.tag = TAG_DOOMED;
    s.then = then;
    ar_pid_t owner = th_spawn(node, &setter_b, &s);
    uint64_t t0 = th_now_ns();
    th_send(node, owner, 1, NULL, 0);
    th_await(atomic_load(&s.terminated) == 1);
    th_await(!th_proc_alive(node, owner));
    double ended_ms = th_ms_since(t0);
    cr_assert_eq(s.rc, 0);
    /* the owner ends at once; only if it took nearly until the timer was due could the
     * timer fire rightly, so such a run says so instead of blaming the runtime */
    cr_assert_lt(ended_ms, DOOMED_MS - 500.0,
                 "the owner took %.0f ms to end; the check needs it before its timer is due",
                 ended_ms);
    cr_assert_eq(ar_cancel_timer(node, s.ref), AR_ENOENT,
                 "the owner's timer was cancelled when it ended");
    /* Due well after the doomed timer would have been. */
    cr_assert_eq(ar_send_after(node, DOOMED_MS + 300, rec, TAG_MARKER, NULL, 0, NULL), 0);
    th_await(th_log_len(&log) >= 1);
    cr_assert_eq(log.e[0].tag, TAG_MARKER, "the dead owner's timer fired");
    cr_assert_eq(th_log_len(&log), 1);
    th_node_stop(node);
}

Test(timer, timers_of_a_process_that_stops_never_fire, .timeout = TH_TIMEOUT)
{
    check_owner_end(THEN_STOP);
}

Test(timer, timers_of_a_process_that_crashes_never_fire, .timeout = TH_TIMEOUT)
{
    check_owner_end(THEN_FAIL);
}

Test(timer, timers_of_a_live_owner_fire, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    static setter_t s;
    s.to = rec;
    s.ms = 30;
    s.tag = TAG_TICK;
    s.then = THEN_STAY;
    ar_pid_t owner = th_spawn(node, &setter_b, &s);
    th_send(node, owner, 1, NULL, 0);
    th_await(th_log_len(&log) == 1);
    cr_assert_eq(log.e[0].tag, TAG_TICK);
    th_node_stop(node);
}

/* ---- order and volume ------------------------------------------------------------------------------- */
Test(timer, timers_fire_in_deadline_order, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    /* A timer's deadline lies between (the time before its call + its delay) and (the
     * time after it + its delay + a few ms of timer granularity). Where two such windows
     * do not overlap, the earlier timer must fire first: with the test thread running
     * freely that is every pair, 30 ms apart; a stall between the calls only leaves
     * fewer pairs to check, never a false failure. */
    enum { N = 5 };
    const int delays[N] = {120, 30, 90, 60, 150};
    uint64_t lo[N], hi[N];
    for (int i = 0; i < N; i++) {
        lo[i] = th_now_ns() + (uint64_t)delays[i] * 1000000u;
        cr_assert_eq(ar_send_after(node, delays[i], rec, (uint32_t)i, NULL, 0, NULL), 0);
        hi[i] = th_now_ns() + (uint64_t)(delays[i] + 5) * 1000000u;
    }
    th_await(th_log_len(&log) == N);
    int pos[N];
    for (int k = 0; k < N; k++) pos[log.e[k].tag] = k;
    int ordered = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            if (hi[i] < lo[j]) {
                ordered++;
                cr_assert_lt(pos[i], pos[j], "the %d ms timer fired after the %d ms one",
                             delays[i], delays[j]);
            }
    cr_log_info("%d of 10 pairs had disjoint deadlines", ordered);
    th_node_stop(node);
}

typedef struct counter {
    atomic_long n;
} counter_t;
static void count_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    counter_t *c = state;
    if (m->kind == AR_MSG_TIMER) atomic_fetch_add(&c->n, 1);
}
static const ar_behaviour_t counter_b = {"counter", arg_init, count_handle, NULL};

static int ref_cmp(const void *a, const void *b)
{
    ar_ref_t x = *(const ar_ref_t *)a, y = *(const ar_ref_t *)b;
    return x < y ? -1 : x > y;
}

Test(timer, a_100k_timers_inserted_and_cancelled_quickly, .timeout = TH_TIMEOUT)
{
    static th_alloc_t alloc;
    th_alloc_install(&alloc);
    ar_node_t *node = th_node(2);
    static counter_t c;
    ar_pid_t rec = th_spawn(node, &counter_b, &c);
    enum { N = 100000, SHORT = 1000 };
    static ar_ref_t refs[N];
    uint64_t t0 = th_now_ns();
    for (int i = 0; i < N; i++) {
        int rc = ar_send_after(node, 60000 + i % 1000, rec, TAG_DOOMED, NULL, 0, &refs[i]);
        cr_assert_eq(rc, 0, "timer %d: %s", i, ar_err_name(rc));
    }
    /* Short ones among them still fire. */
    for (int i = 0; i < SHORT; i++)
        cr_assert_eq(ar_send_after(node, 1 + i % 20, rec, TAG_TICK, NULL, 0, NULL), 0);
    for (int i = 0; i < N; i++) {
        int rc = ar_cancel_timer(node, refs[i]);
        cr_assert_eq(rc, 0, "cancel %d: %s", i, ar_err_name(rc));
    }
    double ms = th_ms_since(t0);
    th_await(atomic_load(&c.n) == SHORT);
    for (int i = 0; i < N; i += 997) cr_assert_eq(ar_cancel_timer(node, refs[i]), AR_ENOENT);
    qsort(refs, N, sizeof refs[0], ref_cmp);
    for (int i = 1; i < N; i++) cr_assert_neq(refs[i - 1], refs[i], "timer ref handed out twice");
    th_node_stop(node);
    cr_assert_eq(atomic_load(&c.n), SHORT, "a cancelled timer fired");
    cr_assert_eq(atomic_load(&alloc.live), 0, "live blocks after stop: %ld",
                 atomic_load(&alloc.live));
    cr_assert_lt(ms, 20000.0, "100k inserts and cancels took %.0f ms", ms);
}

Test(timer, pending_timers_do_not_delay_node_stop, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static counter_t c;
    ar_pid_t rec = th_spawn(node, &counter_b, &c);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(ar_send_after(node, 3600 * 1000, rec, TAG_DOOMED, NULL, 0, NULL), 0);
    uint64_t t0 = th_now_ns();
    th_node_stop(node);
    cr_assert_lt(th_ms_since(t0), 5000.0);
    cr_assert_eq(atomic_load(&c.n), 0);
}
