/* sup_start_100k: a simple_one_for_one supervisor (template: an idle worker, OTP's
 * defaults: permanent, shutdown 5000 ms). A driver process starts N children one by one
 * with ar_sup_start_child, lists them with ar_sup_which_children, then stops the
 * supervisor with ar_sup_stop. Timed inside the driver: first start until ar_sup_stop
 * returns. per_op_ns is the whole per child; start_ns, list_ns and stop_ns are each phase
 * per child (so the growth of one phase shows). Warm-up: the same with N/10 on another
 * supervisor.
 * Checks: which_children lists exactly the started pids in start order, every child ran
 * init once and terminate once with AR_SHUTDOWN, and the supervisor is gone afterwards. */
#include "bench_util.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

int bench_sup_start_100k(const bench_opts_t *o);

enum { TAG_GO = 1 };

typedef struct ss_run {
    long n;
    atomic_long inits, ends, bad_reason;
    ar_pid_t *pids;       /* n, as ar_sup_start_child returned them */
    ar_child_info_t *info; /* n, filled by which_children */
    uint64_t start_ns, list_ns, stop_ns;
    ar_pid_t sup;
    bench_signal_t done;
} ss_run_t;

static int child_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    ss_run_t *run = arg;
    atomic_fetch_add_explicit(&run->inits, 1, memory_order_relaxed);
    *state = run;
    return 0;
}

static void child_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    BENCH_CHECK(0, "sup_start_100k: an idle child got message kind %d", m->kind);
}

static void child_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    ss_run_t *run = state;
    if (why.code != AR_SHUTDOWN)
        atomic_fetch_add_explicit(&run->bad_reason, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&run->ends, 1, memory_order_release);
}

static const ar_behaviour_t child_b = {
    .name = "sup_start_child",
    .init = child_init,
    .handle = child_handle,
    .terminate = child_terminate,
};

static const ar_child_spec_t template_spec = {
    .id = "child",
    .behaviour = &child_b,
};

static const ar_sup_spec_t sup_spec = {
    .strategy = AR_SIMPLE_ONE_FOR_ONE,
    .children = &template_spec,
    .nchildren = 1,
};

static int driver_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void driver_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ss_run_t *run = state;
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_GO, "sup_start_100k: driver got %d/%u",
                m->kind, m->tag);
    ar_node_t *node = ar_node(self);
    long n = run->n;
    ar_pid_t sup;
    int rc = ar_sup_start(node, &sup_spec, NULL, &sup);
    BENCH_CHECK(rc == 0, "sup_start_100k: ar_sup_start: %s", BENCH_ERR(rc));
    run->sup = sup;

    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        rc = ar_sup_start_child(node, sup, NULL, run, &run->pids[i]);
        BENCH_CHECK(rc == 0, "sup_start_100k: ar_sup_start_child #%ld: %s", i, BENCH_ERR(rc));
    }
    uint64_t t1 = bench_now_ns();
    size_t listed = 0;
    rc = ar_sup_which_children(node, sup, run->info, (size_t)n, &listed);
    uint64_t t2 = bench_now_ns();
    BENCH_CHECK(rc == 0, "sup_start_100k: ar_sup_which_children: %s", BENCH_ERR(rc));
    BENCH_CHECK(listed == (size_t)n, "sup_start_100k: which_children lists %zu, want %ld", listed,
                n);
    rc = ar_sup_stop(node, sup, AR_INFINITY);
    uint64_t t3 = bench_now_ns();
    BENCH_CHECK(rc == 0, "sup_start_100k: ar_sup_stop: %s", BENCH_ERR(rc));
    run->start_ns = t1 - t0;
    run->list_ns = t2 - t1;
    run->stop_ns = t3 - t2;
    bench_signal_post(&run->done);
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t driver_b = {
    .name = "sup_start_driver",
    .init = driver_init,
    .handle = driver_handle,
};

static void run_once(ar_node_t *node, ss_run_t *run, long n)
{
    run->n = n;
    atomic_init(&run->inits, 0);
    atomic_init(&run->ends, 0);
    atomic_init(&run->bad_reason, 0);
    run->pids = calloc((size_t)n, sizeof *run->pids);
    run->info = calloc((size_t)n, sizeof *run->info);
    BENCH_CHECK(run->pids != NULL && run->info != NULL, "out of memory");
    bench_signal_init(&run->done);
    ar_pid_t driver;
    int rc = ar_spawn(node, &driver_b, run, NULL, &driver);
    BENCH_CHECK(rc == 0, "sup_start_100k: spawn driver: %s", BENCH_ERR(rc));
    rc = ar_send(node, driver, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "sup_start_100k: send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->done, "sup_start_100k: start, list, stop");

    for (long i = 0; i < n; i++) {
        const ar_child_info_t *c = &run->info[i];
        BENCH_CHECK(ar_pid_eq(c->pid, run->pids[i]) && !ar_pid_is_none(c->pid),
                    "sup_start_100k: which_children entry %ld is not the %ld-th child started",
                    i, i);
        BENCH_CHECK(strcmp(c->id, "child") == 0 && c->type == AR_WORKER &&
                        c->restart == AR_PERMANENT && !c->restarting,
                    "sup_start_100k: which_children entry %ld: id '%s'", i, c->id);
    }
    /* ar_sup_stop returns once every child's DOWN came, so all have ended. */
    BENCH_CHECK(atomic_load(&run->inits) == n && atomic_load(&run->ends) == n,
                "sup_start_100k: %ld inits, %ld terminates, want %ld", atomic_load(&run->inits),
                atomic_load(&run->ends), n);
    BENCH_CHECK(atomic_load(&run->bad_reason) == 0,
                "sup_start_100k: %ld children ended with another reason than shutdown",
                atomic_load(&run->bad_reason));
    /* The supervisor ends right after its reply: allow it a moment. */
    ar_proc_info_t pi;
    uint64_t until = bench_now_ns() + 10000000000ull;
    while (ar_proc_info(node, run->sup, &pi) == 0) {
        BENCH_CHECK(bench_now_ns() < until, "sup_start_100k: supervisor still alive after stop");
        sched_yield();
    }
    bench_signal_destroy(&run->done);
    free(run->pids);
    free(run->info);
    run->pids = NULL;
    run->info = NULL;
}

int bench_sup_start_100k(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 100000;
    ar_node_t *node = bench_node_start();
    ss_run_t *warm = calloc(1, sizeof *warm), *run = calloc(1, sizeof *run);
    BENCH_CHECK(warm != NULL && run != NULL, "out of memory");
    if (n / 10 > 0) run_once(node, warm, n / 10);
    run_once(node, run, n);
    uint64_t ns = run->start_ns + run->list_ns + run->stop_ns;
    double dn = (double)n;
    bench_emit("sup_start_100k", n, (double)ns / 1e9, (double)ns / dn,
               " start_ns=%.1f list_ns=%.1f stop_ns=%.1f", (double)run->start_ns / dn,
               (double)run->list_ns / dn, (double)run->stop_ns / dn);
    bench_node_stop(node, "sup_start_100k");
    free(warm);
    free(run);
    return 0;
}
