/* supervisor_restart: a one_for_one supervisor (intensity 1,000,000 per 1000 ms, as the
 * Erlang program's 1,000,000 per 1 s) with one permanent worker, brutal_kill shutdown.
 * The worker announces itself from init (STARTED, with a clock reading) and, on each CRASH
 * message, sends CRASHING (with a clock reading) and crashes with AR_FAIL. A driver process
 * (not main: Erlang's driver is a process too) does, per cycle:
 *   t0; send CRASH to the current child; receive its CRASHING; receive the new child's
 *   STARTED; t1.
 * cycle = t1 - t0 (per_op_ns is its mean, seconds its sum); crash_to_alive = the new
 * child's init reading - the old child's reading just before it crashed.
 *
 * Mirrors erlang/supervisor_restart.erl main_short/0, the variant compare.sh runs: a
 * warm-up of 1,000 restarts on a fresh supervisor, then N restarts spread over N/100 fresh
 * supervisors, 100 each (-p P sets the restarts per supervisor; -p N is main/0: one
 * supervisor for all N). Starting and stopping the supervisors is not timed.
 * Checks: every cycle yields a new pid, and the node spawned exactly the processes the
 * restarts need (driver, supervisors, first children, one per restart). */
#include "bench_util.h"

#include <stdlib.h>

int bench_supervisor_restart(const bench_opts_t *o);

enum { TAG_GO = 1, TAG_CRASH, TAG_CRASHING, TAG_STARTED };

#define SR_WARMUP 1000
#define SR_PER_SUP 100
#define SR_WAIT_MS 10000 /* a restart that does not come within this fails the run */

typedef struct sr_run {
    long n, per_sup;
    ar_pid_t driver;      /* set by the driver's init, before any worker starts */
    uint64_t *cycle, *c2a; /* n samples each, in restart order */
    long sups;            /* supervisors started (warm-up included) */
    bench_signal_t done;
} sr_run_t;

/* ---- the worker ---- */
static int worker_init(ar_proc_t *self, void *arg, void **state)
{
    sr_run_t *run = arg;
    *state = run;
    int64_t now = (int64_t)bench_now_ns();
    int rc = ar_send(ar_node(self), run->driver, TAG_STARTED, &now, sizeof now);
    BENCH_CHECK(rc == 0, "supervisor_restart: worker: send started: %s", BENCH_ERR(rc));
    return 0;
}

static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sr_run_t *run = state;
    if (m->kind != AR_MSG_CAST || m->tag != TAG_CRASH) return; /* anything else: ignored */
    int64_t now = (int64_t)bench_now_ns();
    int rc = ar_send(ar_node(self), run->driver, TAG_CRASHING, &now, sizeof now);
    BENCH_CHECK(rc == 0, "supervisor_restart: worker: send crashing: %s", BENCH_ERR(rc));
    AR_FAIL(self, "deliberate_crash");
}

static const ar_behaviour_t worker_b = {
    .name = "sr_worker",
    .init = worker_init,
    .handle = worker_handle,
};

/* ---- the driver ---- */
static bool is_started(const ar_msg_t *m, void *ud)
{
    (void)ud;
    return m->kind == AR_MSG_CAST && m->tag == TAG_STARTED;
}

static bool is_crashing_of(const ar_msg_t *m, void *ud)
{
    return m->kind == AR_MSG_CAST && m->tag == TAG_CRASHING && ar_pid_eq(m->from, *(ar_pid_t *)ud);
}

/* Receives one message matching match within SR_WAIT_MS; returns its stamp and sender. */
static int64_t take(ar_proc_t *self, bool (*match)(const ar_msg_t *, void *), void *ud,
                    ar_pid_t *from, const char *what)
{
    ar_msg_t *m = NULL;
    int rc = ar_receive(self, match, ud, SR_WAIT_MS, &m);
    BENCH_CHECK(rc == 0, "supervisor_restart: waiting for %s: %s", what, BENCH_ERR(rc));
    int64_t v = bench_msg_i64(m);
    if (from) *from = m->from;
    ar_msg_release(self, m);
    return v;
}

/* k restarts on a fresh supervisor; samples go to cycle/c2a (NULL: not kept). */
static void run_on_fresh_sup(ar_proc_t *self, sr_run_t *run, long k, uint64_t *cycle,
                             uint64_t *c2a)
{
    ar_node_t *node = ar_node(self);
    const ar_child_spec_t child = {
        .id = "worker",
        .behaviour = &worker_b,
        .arg = run,
        .restart = AR_PERMANENT,
        .shutdown_ms = AR_SHUTDOWN_BRUTAL,
        .type = AR_WORKER,
    };
    const ar_sup_spec_t spec = {
        .strategy = AR_ONE_FOR_ONE,
        .intensity = 1000000,
        .period_ms = 1000,
        .children = &child,
        .nchildren = 1,
    };
    ar_pid_t sup, cur;
    int rc = ar_sup_start(node, &spec, NULL, &sup);
    BENCH_CHECK(rc == 0, "supervisor_restart: ar_sup_start: %s", BENCH_ERR(rc));
    run->sups++;
    take(self, is_started, NULL, &cur, "the first child");
    for (long i = 0; i < k; i++) {
        uint64_t t0 = bench_now_ns();
        rc = ar_send(node, cur, TAG_CRASH, NULL, 0);
        BENCH_CHECK(rc == 0, "supervisor_restart: send crash: %s", BENCH_ERR(rc));
        int64_t tc = take(self, is_crashing_of, &cur, NULL, "the child's crashing");
        ar_pid_t next;
        int64_t ti = take(self, is_started, NULL, &next, "the restarted child");
        uint64_t t1 = bench_now_ns();
        BENCH_CHECK(!ar_pid_eq(next, cur), "supervisor_restart: restart #%ld kept the old pid", i);
        BENCH_CHECK(ti >= tc, "supervisor_restart: restart #%ld started before the crash", i);
        cur = next;
        if (cycle) {
            cycle[i] = t1 - t0;
            c2a[i] = (uint64_t)(ti - tc);
        }
    }
    rc = ar_sup_stop(node, sup, AR_INFINITY);
    BENCH_CHECK(rc == 0, "supervisor_restart: ar_sup_stop: %s", BENCH_ERR(rc));
    ar_msg_t *m = NULL; /* nothing else may have come */
    rc = ar_receive(self, NULL, NULL, 0, &m);
    BENCH_CHECK(rc == AR_ETIMEDOUT, "supervisor_restart: stray message, tag %u",
                m ? m->tag : 0u);
}

static int driver_init(ar_proc_t *self, void *arg, void **state)
{
    sr_run_t *run = arg;
    run->driver = ar_self(self);
    *state = run;
    return 0;
}

static void driver_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sr_run_t *run = state;
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_GO, "supervisor_restart: driver got %d/%u",
                m->kind, m->tag);
    run_on_fresh_sup(self, run, SR_WARMUP, NULL, NULL);
    for (long done = 0; done < run->n;) {
        long k = run->n - done < run->per_sup ? run->n - done : run->per_sup;
        run_on_fresh_sup(self, run, k, run->cycle + done, run->c2a + done);
        done += k;
    }
    bench_signal_post(&run->done);
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t driver_b = {
    .name = "sr_driver",
    .init = driver_init,
    .handle = driver_handle,
};

/* ---- statistics, as the Erlang program computes them ---- */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double mean(const uint64_t *v, long n)
{
    double s = 0;
    for (long i = 0; i < n; i++) s += (double)v[i];
    return n > 0 ? s / (double)n : 0;
}

/* lists:nth(max(1, round(Q * N)), Sorted) */
static uint64_t pct(const uint64_t *sorted, long n, double q)
{
    long i = (long)(q * (double)n + 0.5);
    return sorted[(i < 1 ? 1 : i) - 1];
}

int bench_supervisor_restart(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 10000;
    long per_sup = o->procs > 0 ? o->procs : SR_PER_SUP;
    sr_run_t *run = calloc(1, sizeof *run);
    BENCH_CHECK(run != NULL, "out of memory");
    run->n = n;
    run->per_sup = per_sup;
    run->cycle = calloc((size_t)n, sizeof *run->cycle);
    run->c2a = calloc((size_t)n, sizeof *run->c2a);
    BENCH_CHECK(run->cycle != NULL && run->c2a != NULL, "out of memory");
    bench_signal_init(&run->done);

    ar_node_t *node = bench_node_start();
    ar_node_stats_t before, after;
    ar_node_stats(node, &before);
    ar_pid_t driver;
    int rc = ar_spawn(node, &driver_b, run, NULL, &driver);
    BENCH_CHECK(rc == 0, "supervisor_restart: spawn driver: %s", BENCH_ERR(rc));
    rc = ar_send(node, driver, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "supervisor_restart: send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->done, "supervisor_restart: restarting");
    ar_node_stats(node, &after);
    /* driver + per supervisor (itself and its first child) + one per restart */
    uint64_t want = 1 + 2 * (uint64_t)run->sups + (uint64_t)(n + SR_WARMUP);
    BENCH_CHECK(after.spawned - before.spawned == want,
                "supervisor_restart: node counted %llu spawns, want %llu",
                (unsigned long long)(after.spawned - before.spawned), (unsigned long long)want);

    long k = n < 1000 ? n : 1000;
    double first = mean(run->cycle, k), last = mean(run->cycle + (n - k), k);
    double cyc_mean = mean(run->cycle, n), c2a_mean = mean(run->c2a, n);
    double sum = cyc_mean * (double)n;
    qsort(run->cycle, (size_t)n, sizeof *run->cycle, cmp_u64);
    qsort(run->c2a, (size_t)n, sizeof *run->c2a, cmp_u64);
    bench_emit("supervisor_restart", n, sum / 1e9, cyc_mean,
               " cycle_median_ns=%llu cycle_p99_ns=%llu crash_to_alive_mean_ns=%.1f"
               " crash_to_alive_median_ns=%llu first1000_mean_ns=%.1f last1000_mean_ns=%.1f"
               " restarts_per_sup=%ld",
               (unsigned long long)pct(run->cycle, n, 0.5),
               (unsigned long long)pct(run->cycle, n, 0.99), c2a_mean,
               (unsigned long long)pct(run->c2a, n, 0.5), first, last, per_sup);
    bench_node_stop(node, "supervisor_restart");
    bench_signal_destroy(&run->done);
    free(run->cycle);
    free(run->c2a);
    free(run);
    return 0;
}
