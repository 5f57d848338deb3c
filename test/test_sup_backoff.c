/* Supervisor restart backoff (beyond OTP) and escalation through a supervision tree.
 *
 * Backoff is timing itself, so delays are measured (from the moment a worker crashes to
 * the init of its next incarnation) and checked one-sided: at least 0.8 * expected - 2 ms
 * (the jitter is +-20%, timers count whole milliseconds); a loaded machine only makes them
 * longer. Only where a short delay must be told from a long one (the cap, the reset after
 * a quiet period) is there an upper bound, SHORT_MS, and there the wrong behaviour would
 * wait at least twice that. Windows the test thread must act in (crash a child before a
 * period runs out, see it restarting before its backoff ends) are a second or more.
 * Everything else waits on the event itself: a worker's init count, a DOWN seen by a
 * watcher process.
 *
 * Workers ("bw") crash on a cast and record, per incarnation, when their init ran, their
 * pid and their parent (the supervisor that started them), and when each crash happened. */
#include "test_helpers.h"

/* ---- workers -------------------------------------------------------------------------- */
enum { B_FAIL = 1 }; /* cast: AR_FAIL */

#define BW_CAP 128
typedef struct bw {
    const char *name;
    atomic_int inits;          /* successful inits; entry i of the arrays is complete once
                                  inits > i */
    atomic_int crashes;        /* crash casts handled; likewise for crash_ns */
    uint64_t init_ns[BW_CAP];  /* when each init ran */
    ar_pid_t pids[BW_CAP];     /* each incarnation's pid */
    ar_pid_t parents[BW_CAP];  /* and its parent */
    uint64_t crash_ns[BW_CAP]; /* when each crash happened */
} bw_t;

static int bw_init(ar_proc_t *self, void *arg, void **state)
{
    bw_t *w = arg;
    int i = atomic_load(&w->inits);
    if (i < BW_CAP) {
        w->init_ns[i] = th_now_ns();
        w->pids[i] = ar_self(self);
        ar_proc_info_t info;
        w->parents[i] = ar_proc_info(ar_node(self), ar_self(self), &info) == 0 ? info.parent
                                                                               : AR_PID_NONE;
    }
    atomic_fetch_add(&w->inits, 1); /* last: the entry is complete before it is seen */
    *state = w;
    return 0;
}

static void bw_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    bw_t *w = state;
    if (m->kind == AR_MSG_CAST && m->tag == B_FAIL) {
        int c = atomic_load(&w->crashes);
        if (c < BW_CAP) w->crash_ns[c] = th_now_ns();
        atomic_fetch_add(&w->crashes, 1);
        AR_FAIL(self, "%s crashed on purpose", w->name);
    }
}

static const ar_behaviour_t bw_beh = {
    .name = "sup_backoff_worker", .init = bw_init, .handle = bw_handle};

/* The pid of the worker's latest incarnation. */
static ar_pid_t bw_pid(bw_t *w)
{
    int n = atomic_load(&w->inits);
    cr_assert(n > 0 && n <= BW_CAP, "%s: %d inits", w->name, n);
    return w->pids[n - 1];
}

static ar_pid_t bw_parent(bw_t *w)
{
    int n = atomic_load(&w->inits);
    cr_assert(n > 0 && n <= BW_CAP, "%s: %d inits", w->name, n);
    return w->parents[n - 1];
}

/* Makes the worker's current incarnation crash (without waiting for anything). */
static void bw_crash(ar_node_t *node, bw_t *w)
{
    th_send(node, bw_pid(w), B_FAIL, NULL, 0);
}

/* Crashes the worker, waits until it is back, and returns the delay in ms between the
 * crash and the new incarnation's init. */
static double crash_restarted(ar_node_t *node, bw_t *w)
{
    int i = atomic_load(&w->inits), c = atomic_load(&w->crashes);
    cr_assert(i < BW_CAP && c < BW_CAP);
    bw_crash(node, w);
    th_await(atomic_load(&w->inits) == i + 1);
    cr_assert_eq(atomic_load(&w->crashes), c + 1);
    return (double)(w->init_ns[i] - w->crash_ns[c]) / 1e6;
}

/* A backoff delay of `want` ms (-20% jitter) or longer. */
#define assert_delay(got, want, what)                                                      \
    do {                                                                                   \
        double g_ = (got), w_ = (want);                                                    \
        cr_assert(g_ >= 0.8 * w_ - 2.0, "%s: restarted after %.1f ms, want %.0f ms or more",  \
                  (what), g_, w_);                                                         \
    } while (0)

/* A delay that must be short: the behaviour under test keeps it to tens of milliseconds;
 * without it, it would be at least twice SHORT_MS. */
#define SHORT_MS 2500.0
#define assert_short(got, what, without)                                                   \
    do {                                                                                   \
        double g_ = (got);                                                                 \
        cr_assert(g_ < SHORT_MS, "%s: restarted after %.1f ms (without the rule: %d ms)",  \
                  (what), g_, (without));                                                  \
    } while (0)

/* ---- the watcher: monitors pids on request, records each DOWN with its time ---------- */
enum { WT_MONITOR = 1 };
#define WREC_CAP 64
typedef struct wrec {
    ar_pid_t from;
    ar_exit_code_t code;
    uint64_t at_ns;
} wrec_t;

typedef struct watcher {
    ar_pid_t self;
    atomic_int n;
    wrec_t r[WREC_CAP];
} watcher_t;

static int wt_init(ar_proc_t *self, void *arg, void **state)
{
    watcher_t *w = arg;
    w->self = ar_self(self);
    *state = w;
    return 0;
}

static void wt_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    watcher_t *w = state;
    if (m->kind == AR_MSG_CALL && m->tag == WT_MONITOR) {
        ar_pid_t p;
        memcpy(&p, m->data, sizeof p);
        ar_ref_t ref = 0;
        int rc = ar_monitor(self, p, &ref);
        ar_reply(ar_node(self), m->reply_to, &rc, sizeof rc);
    } else if (m->kind == AR_MSG_DOWN) {
        int i = atomic_load(&w->n);
        if (i >= WREC_CAP) return;
        w->r[i] = (wrec_t){m->from, m->reason.code, th_now_ns()};
        atomic_store(&w->n, i + 1); /* last: the record is complete before it is seen */
    }
}

static const ar_behaviour_t wt_beh = {
    .name = "sup_backoff_watcher", .init = wt_init, .handle = wt_handle};

static watcher_t g_w;

static void watcher_start(ar_node_t *node, watcher_t *w)
{
    memset(w, 0, sizeof *w);
    th_spawn(node, &wt_beh, w);
}

static void watch(ar_node_t *node, watcher_t *w, ar_pid_t pid)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, w->self, WT_MONITOR, &pid, sizeof pid, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "watch call: %s", ar_err_name(rc));
    int mrc;
    cr_assert_eq(r.len, sizeof mrc);
    memcpy(&mrc, r.data, sizeof mrc);
    ar_buf_free(&r);
    cr_assert_eq(mrc, 0, "ar_monitor: %s", ar_err_name(mrc));
}

static const wrec_t *find_down(watcher_t *w, ar_pid_t pid)
{
    int n = atomic_load(&w->n);
    for (int i = 0; i < n; i++)
        if (ar_pid_eq(w->r[i].from, pid)) return &w->r[i];
    return NULL;
}

/* Waits for pid's DOWN and checks its reason. */
static const wrec_t *await_down(watcher_t *w, ar_pid_t pid, ar_exit_code_t code)
{
    th_await(find_down(w, pid) != NULL);
    const wrec_t *d = find_down(w, pid);
    cr_assert_eq(d->code, code, "ended with %s, want %s", ar_exit_code_name(d->code),
                 ar_exit_code_name(code));
    return d;
}

/* ---- supervisors ---------------------------------------------------------------------- */
static ar_pid_t sup_start(ar_node_t *node, const ar_sup_spec_t *spec)
{
    ar_pid_t sup = AR_PID_NONE;
    int rc = ar_sup_start(node, spec, NULL, &sup);
    cr_assert_eq(rc, 0, "ar_sup_start: %s", ar_err_name(rc));
    cr_assert(!ar_pid_is_none(sup));
    return sup;
}

static ar_child_spec_t worker_spec(const char *id, bw_t *w)
{
    return (ar_child_spec_t){
        .id = id, .behaviour = &bw_beh, .arg = w, .restart = AR_PERMANENT, .shutdown_ms = 1000};
}

/* A one_for_one spec with backoff, over one child. */
static ar_sup_spec_t backoff_spec(int intensity, int period_ms, int min_ms, int max_ms,
                                  const ar_child_spec_t *c)
{
    return (ar_sup_spec_t){.strategy = AR_ONE_FOR_ONE,
                           .intensity = intensity,
                           .period_ms = period_ms,
                           .backoff_min_ms = min_ms,
                           .backoff_max_ms = max_ms,
                           .children = c,
                           .nchildren = 1};
}

/* The which_children entry of id. */
static ar_child_info_t kid(ar_node_t *node, ar_pid_t sup, const char *id)
{
    ar_child_info_t out[8];
    size_t n = 0;
    int rc = ar_sup_which_children(node, sup, out, 8, &n);
    cr_assert_eq(rc, 0, "ar_sup_which_children: %s", ar_err_name(rc));
    for (size_t i = 0; i < n && i < 8; i++)
        if (strcmp(out[i].id, id) == 0) return out[i];
    cr_assert_fail("no child %s in which_children", id);
    return out[0];
}

static ar_node_t *node_up(void)
{
    ar_node_t *node = th_node(2);
    watcher_start(node, &g_w);
    return node;
}

/* =========================================================================================
 * Backoff
 * ====================================================================================== */
Test(sup_backoff, backoff_delays_grow_exponentially_and_are_capped, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    bw_t w = {.name = "w"};
    ar_child_spec_t c = worker_spec("w", &w);
    ar_sup_spec_t spec = backoff_spec(100, 60000, 20, 80, &c);
    ar_pid_t sup = sup_start(node, &spec);
    cr_assert_eq(atomic_load(&w.inits), 1, "the first start does not wait");

    /* 20, 40, 80, then capped at 80: uncapped, restart n would wait 20 * 2^(n-1) ms, so
     * the 9th 5120 and the 10th 10240 */
    for (int i = 0; i < 10; i++) {
        char what[32];
        snprintf(what, sizeof what, "restart %d", i + 1);
        double d = crash_restarted(node, &w);
        assert_delay(d, i < 2 ? 20 << i : 80, what);
        if (i >= 3) assert_short(d, what, 20 << i);
    }
    cr_assert(th_proc_alive(node, sup));
    cr_assert(!ar_pid_is_none(kid(node, sup, "w").pid));
    th_node_stop(node);
}

Test(sup_backoff, backoff_shows_child_as_restarting_while_waiting, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    bw_t w = {.name = "w"};
    ar_child_spec_t c = worker_spec("w", &w);
    ar_sup_spec_t spec = backoff_spec(10, 60000, 2000, 0, &c);
    ar_pid_t sup = sup_start(node, &spec);
    ar_pid_t old = bw_pid(&w);
    ar_child_info_t k = kid(node, sup, "w");
    cr_assert(ar_pid_eq(k.pid, old) && !k.restarting);

    /* the supervisor learns of the crash, then waits 1600..2400 ms before the restart:
     * time enough to see the child restarting */
    bw_crash(node, &w);
    th_await(kid(node, sup, "w").restarting);
    k = kid(node, sup, "w");
    cr_assert_eq(atomic_load(&w.inits), 1, "restarted before its backoff was seen");
    cr_assert(ar_pid_is_none(k.pid), "a restarting child shows no pid");
    cr_assert(k.restarting);
    cr_assert(!th_proc_alive(node, old));

    th_await(atomic_load(&w.inits) == 2);
    th_await(!kid(node, sup, "w").restarting);
    k = kid(node, sup, "w");
    cr_assert(ar_pid_eq(k.pid, bw_pid(&w)), "which_children shows the new pid");
    cr_assert(!ar_pid_eq(k.pid, old));
    cr_assert(th_proc_alive(node, k.pid));
    double d = (double)(w.init_ns[1] - w.crash_ns[0]) / 1e6;
    assert_delay(d, 2000, "restart");
    th_node_stop(node);
}

Test(sup_backoff, backoff_resets_after_a_quiet_period, .timeout = TH_TIMEOUT)
{
    /* period 1000 ms: each crash below comes right after its restart, well within it */
    ar_node_t *node = node_up();
    bw_t w = {.name = "w"};
    ar_child_spec_t c = worker_spec("w", &w);
    ar_sup_spec_t spec = backoff_spec(100, 1000, 20, 0, &c);
    ar_pid_t sup = sup_start(node, &spec);

    /* 20, 40, ... 2560 ms: the growth a reset must undo */
    for (int i = 0; i < 8; i++) {
        char what[32];
        snprintf(what, sizeof what, "restart %d", i + 1);
        assert_delay(crash_restarted(node, &w), 20 << i, what);
    }

    /* quiet for more than the period since the last restart (not resetting, the next
     * two would wait 5120 and 10240 ms) */
    uint64_t t0 = w.init_ns[atomic_load(&w.inits) - 1];
    th_await(th_ms_since(t0) > 1500.0);
    cr_assert_eq(atomic_load(&w.inits), 9);
    double d = crash_restarted(node, &w);
    assert_delay(d, 20, "first restart after a quiet period");
    assert_short(d, "first restart after a quiet period", 5120);
    d = crash_restarted(node, &w);
    assert_delay(d, 40, "second restart after a quiet period");
    assert_short(d, "second restart after a quiet period", 10240);
    cr_assert(th_proc_alive(node, sup));
    th_node_stop(node);
}

Test(sup_backoff, backoff_keeps_growing_while_the_child_crashes_right_after_each_restart,
     .timeout = TH_TIMEOUT)
{
    /* the delays exceed the 1000 ms period, but the child never runs quietly for a period:
     * every crash comes right after its restart, so the restarts stay consecutive (after a
     * reset the second would wait 1100 ms again, at most 1320) */
    ar_node_t *node = node_up();
    bw_t w = {.name = "w"};
    ar_child_spec_t c = worker_spec("w", &w);
    ar_sup_spec_t spec = backoff_spec(100, 1000, 1100, 10000, &c);
    ar_pid_t sup = sup_start(node, &spec);

    assert_delay(crash_restarted(node, &w), 1100, "restart 1");
    assert_delay(crash_restarted(node, &w), 2200, "restart 2");
    cr_assert(th_proc_alive(node, sup));
    th_node_stop(node);
}

Test(sup_backoff, backoff_is_still_bounded_by_intensity, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    bw_t w = {.name = "w"};
    ar_child_spec_t c = worker_spec("w", &w);
    ar_sup_spec_t spec = backoff_spec(2, 60000, 10, 0, &c);
    ar_pid_t sup = sup_start(node, &spec);
    watch(node, &g_w, sup);

    assert_delay(crash_restarted(node, &w), 10, "restart 1");
    assert_delay(crash_restarted(node, &w), 20, "restart 2");
    cr_assert(th_proc_alive(node, sup));
    cr_assert_eq(atomic_load(&g_w.n), 0);

    /* the third restart would be one too many: when it is due (after its ~40 ms backoff,
     * since intensity is counted when a restart is attempted) the supervisor gives up */
    bw_crash(node, &w);
    const wrec_t *d = await_down(&g_w, sup, AR_SHUTDOWN);
    double waited = (double)(d->at_ns - w.crash_ns[2]) / 1e6;
    cr_assert(waited >= 0.8 * 40 - 2.0, "gave up %.1f ms after the crash, before the backoff",
              waited);
    cr_assert_eq(atomic_load(&w.inits), 3, "no third restart");
    cr_assert(!th_proc_alive(node, sup));
    ar_child_info_t out[1];
    size_t n = 0;
    int rc = ar_sup_which_children(node, sup, out, 1, &n);
    cr_assert_eq(rc, AR_ENOPROC, "which_children on the dead supervisor: %s", ar_err_name(rc));
    th_node_stop(node);
}

/* =========================================================================================
 * Escalation through a tree
 * ====================================================================================== */
Test(sup_backoff, three_level_tree_crash_storm_escalates_two_levels, .timeout = TH_TIMEOUT)
{
    /* root (one_for_one, 5 restarts) -> mid (1 restart) -> leaf (1 restart) -> worker,
     * all permanent, long periods. Per round of four worker crashes:
     *   1: leaf restarts the worker            (leaf: 1 restart)
     *   2: leaf gives up; mid restarts it       (mid: 1 restart), a new leaf and worker
     *   3: the new leaf restarts the worker
     *   4: the new leaf gives up, so does mid;  root restarts mid (root: 1 restart) */
    ar_node_t *node = node_up();
    bw_t w = {.name = "w"};
    ar_child_spec_t wc = worker_spec("worker", &w);
    ar_sup_spec_t leaf_spec = {.strategy = AR_ONE_FOR_ONE, .intensity = 1, .period_ms = 60000,
                               .children = &wc, .nchildren = 1};
    ar_child_spec_t leafc = {.id = "leaf", .behaviour = &ar_supervisor, .arg = &leaf_spec,
                             .restart = AR_PERMANENT};
    ar_sup_spec_t mid_spec = {.strategy = AR_ONE_FOR_ONE, .intensity = 1, .period_ms = 60000,
                              .children = &leafc, .nchildren = 1};
    ar_child_spec_t midc = {.id = "mid", .behaviour = &ar_supervisor, .arg = &mid_spec,
                            .restart = AR_PERMANENT};
    ar_sup_spec_t root_spec = {.strategy = AR_ONE_FOR_ONE, .intensity = 5, .period_ms = 60000,
                               .children = &midc, .nchildren = 1};
    ar_pid_t root = sup_start(node, &root_spec);
    watch(node, &g_w, root);

    for (int round = 0; round < 3; round++) {
        ar_pid_t mid = kid(node, root, "mid").pid;
        cr_assert(!ar_pid_is_none(mid));
        ar_pid_t leaf = kid(node, mid, "leaf").pid;
        cr_assert(!ar_pid_is_none(leaf));
        cr_assert(ar_pid_eq(bw_parent(&w), leaf), "round %d: the worker is the leaf's", round);
        watch(node, &g_w, mid);
        watch(node, &g_w, leaf);

        /* 1: the leaf restarts the worker itself */
        crash_restarted(node, &w);
        cr_assert(ar_pid_eq(bw_parent(&w), leaf));
        cr_assert(ar_pid_eq(kid(node, mid, "leaf").pid, leaf));
        cr_assert(ar_pid_eq(kid(node, root, "mid").pid, mid));
        cr_assert(find_down(&g_w, leaf) == NULL);

        /* 2: the leaf gives up; mid restarts it, with a new worker */
        crash_restarted(node, &w);
        await_down(&g_w, leaf, AR_SHUTDOWN);
        ar_pid_t leaf2 = bw_parent(&w);
        cr_assert(!ar_pid_eq(leaf2, leaf), "round %d: the worker came back under a new leaf",
                  round);
        cr_assert(ar_pid_eq(kid(node, mid, "leaf").pid, leaf2));
        cr_assert(ar_pid_eq(kid(node, root, "mid").pid, mid), "mid kept its pid");
        cr_assert(th_proc_alive(node, mid));
        cr_assert(find_down(&g_w, mid) == NULL);
        watch(node, &g_w, leaf2);

        /* 3: the new leaf restarts the worker itself */
        crash_restarted(node, &w);
        cr_assert(ar_pid_eq(bw_parent(&w), leaf2));
        cr_assert(ar_pid_eq(kid(node, root, "mid").pid, mid));

        /* 4: the new leaf gives up, mid has no restart left and gives up too; root
         * restarts mid, which starts a new leaf and worker */
        crash_restarted(node, &w);
        await_down(&g_w, leaf2, AR_SHUTDOWN);
        await_down(&g_w, mid, AR_SHUTDOWN);
        th_await(!ar_pid_eq(kid(node, root, "mid").pid, mid));
        ar_pid_t mid2 = kid(node, root, "mid").pid;
        cr_assert(!ar_pid_is_none(mid2));
        ar_pid_t leaf3 = kid(node, mid2, "leaf").pid;
        cr_assert(!ar_pid_eq(leaf3, leaf) && !ar_pid_eq(leaf3, leaf2));
        cr_assert(ar_pid_eq(bw_parent(&w), leaf3), "round %d: the worker is under the new tree",
                  round);
        cr_assert(th_proc_alive(node, bw_pid(&w)));
        cr_assert(th_proc_alive(node, root));
        cr_assert(find_down(&g_w, root) == NULL, "round %d: root ended", round);
    }
    /* 3 rounds: 12 crashes, 12 restarts of the worker, root restarted mid 3 times (< 5) */
    cr_assert_eq(atomic_load(&w.inits), 13);
    cr_assert(th_proc_alive(node, root));
    th_node_stop(node);
}
