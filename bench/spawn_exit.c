/* spawn_exit: one spawner process spawns N processes that end at once (ar_stop in init);
 * a shared atomic counter, decremented in terminate, finds the last one, which stamps the
 * end time and wakes main. Timed: first spawn until every child has ended. Per spawn.
 * Mirrors erlang/spawn_exit.erl main/0 (warm-up of N/10, then N). */
#include "bench_util.h"

#include <stdatomic.h>
#include <stdlib.h>

enum { TAG_GO = 1 };

struct bench_se_run {
    long n;
    atomic_long left;       /* children not yet ended */
    atomic_long bad_reason; /* children that ended with another reason than normal */
    uint64_t t0, t1;
    bench_signal_t done;
};
typedef bench_se_run_t se_run_t;

static int child_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    ar_stop(self, AR_REASON(AR_NORMAL));
    return 0;
}

static void child_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    BENCH_CHECK(0, "spawn_exit: a child that ended in init got message kind %d", m->kind);
    (void)self;
}

static void child_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    se_run_t *run = state;
    if (why.code != AR_NORMAL) atomic_fetch_add_explicit(&run->bad_reason, 1, memory_order_relaxed);
    /* acq_rel: the last decrement sees every other child's terminate before it posts. */
    if (atomic_fetch_sub_explicit(&run->left, 1, memory_order_acq_rel) == 1) {
        run->t1 = bench_now_ns();
        bench_signal_post(&run->done);
    }
}

static const ar_behaviour_t child_b = {
    .name = "spawn_exit_child",
    .init = child_init,
    .handle = child_handle,
    .terminate = child_terminate,
};

static int spawner_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    se_run_t *run = state;
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_GO, "spawn_exit: unexpected message");
    ar_node_t *node = ar_node(self);
    /* Copied: once the last child ends, main may go on and free run. */
    long n = run->n;
    run->t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        int rc = ar_spawn(node, &child_b, run, NULL, NULL);
        BENCH_CHECK(rc == 0, "spawn_exit: ar_spawn #%ld: %s", i, BENCH_ERR(rc));
    }
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t spawner_b = {
    .name = "spawn_exit_spawner",
    .init = spawner_init,
    .handle = spawner_handle,
};

bench_se_run_t *bench_spawn_exit_alloc(void)
{
    se_run_t *run = calloc(1, sizeof *run);
    BENCH_CHECK(run != NULL, "out of memory");
    return run;
}

void bench_spawn_exit_free(bench_se_run_t *run)
{
    if (run->n) bench_signal_destroy(&run->done);
    free(run);
}

uint64_t bench_spawn_exit_run(ar_node_t *node, se_run_t *run, long n)
{
    run->n = n;
    atomic_init(&run->left, n);
    atomic_init(&run->bad_reason, 0);
    bench_signal_init(&run->done);
    ar_node_stats_t before, after;
    ar_node_stats(node, &before);
    ar_pid_t sp;
    int rc = ar_spawn(node, &spawner_b, run, NULL, &sp);
    BENCH_CHECK(rc == 0, "spawn_exit: spawning the spawner: %s", BENCH_ERR(rc));
    rc = ar_send(node, sp, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "spawn_exit: ar_send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->done, "spawn_exit: waiting for every child to end");
    ar_node_stats(node, &after);
    BENCH_CHECK(atomic_load(&run->left) == 0, "spawn_exit: counter at %ld",
                atomic_load(&run->left));
    BENCH_CHECK(atomic_load(&run->bad_reason) == 0, "spawn_exit: %ld children ended abnormally",
                atomic_load(&run->bad_reason));
    BENCH_CHECK(after.spawned - before.spawned >= (uint64_t)n + 1,
                "spawn_exit: node counted %llu spawns, want %ld",
                (unsigned long long)(after.spawned - before.spawned), n + 1);
    return run->t1 - run->t0;
}

int bench_spawn_exit(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    ar_node_t *node = bench_node_start();
    /* freed after the node stops: no process can touch a dead run */
    se_run_t *warm = bench_spawn_exit_alloc(), *run = bench_spawn_exit_alloc();
    if (n / 10 > 0) bench_spawn_exit_run(node, warm, n / 10);
    uint64_t ns = bench_spawn_exit_run(node, run, n);
    double s = (double)ns / 1e9;
    bench_emit("spawn_exit", n, s, (double)ns / (double)n, " ops_per_s=%.0f", (double)n / s);
    bench_node_stop(node, "spawn_exit");
    bench_spawn_exit_free(warm);
    bench_spawn_exit_free(run);
    return 0;
}
