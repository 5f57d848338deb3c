/* spawn_idle_memory: N idle processes alive at once (init does nothing; they wait for a
 * message that never comes). bytes_per_proc is the VmRSS growth divided by N, read once
 * every one has started (init completes before ar_spawn returns). The benchmark itself
 * allocates nothing per process. Mirrors erlang/spawn_idle_memory.erl: spawned from one
 * process, no warm-up run (one process is spawned and stopped first, as the CAF program
 * does, so that lazily built runtime structures are in the baseline). */
#include "bench_util.h"

#include <stdlib.h>

enum { TAG_GO = 1, TAG_STOP = 2 };

typedef struct sim_run {
    long n;
    ar_pid_t first, last;
    uint64_t t0, t1;
    bench_signal_t done;
} sim_run_t;

static int idle_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    (void)arg;
    *state = NULL;
    return 0;
}

static void idle_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_STOP,
                "spawn_idle_memory: an idle process got message kind %d tag %u", m->kind,
                m->tag);
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t idle_b = {
    .name = "idle",
    .init = idle_init,
    .handle = idle_handle,
};

static int spawner_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sim_run_t *run = state;
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_GO, "spawn_idle_memory: unexpected message");
    ar_node_t *node = ar_node(self);
    long n = run->n;
    ar_pid_t pid = AR_PID_NONE;
    run->t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        int rc = ar_spawn(node, &idle_b, NULL, NULL, &pid);
        BENCH_CHECK(rc == 0, "spawn_idle_memory: ar_spawn #%ld: %s", i, BENCH_ERR(rc));
        if (i == 0) run->first = pid;
    }
    run->t1 = bench_now_ns();
    run->last = pid;
    bench_signal_post(&run->done);
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t spawner_b = {
    .name = "idle_spawner",
    .init = spawner_init,
    .handle = spawner_handle,
};

static void spawn_all(ar_node_t *node, sim_run_t *run, long n)
{
    run->n = n;
    bench_signal_init(&run->done);
    ar_pid_t sp;
    int rc = ar_spawn(node, &spawner_b, run, NULL, &sp);
    BENCH_CHECK(rc == 0, "spawn_idle_memory: spawning the spawner: %s", BENCH_ERR(rc));
    rc = ar_send(node, sp, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "spawn_idle_memory: ar_send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->done, "spawn_idle_memory: spawning");
}

int bench_spawn_idle_memory(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    ar_node_t *node = bench_node_start();
    sim_run_t *warm = calloc(1, sizeof *warm), *run = calloc(1, sizeof *run);
    BENCH_CHECK(warm != NULL && run != NULL, "out of memory");

    spawn_all(node, warm, 1);
    int rc = ar_send(node, warm->first, TAG_STOP, NULL, 0);
    BENCH_CHECK(rc == 0, "spawn_idle_memory: stopping the warm-up process: %s", BENCH_ERR(rc));

    long rss0 = bench_rss_kb();
    spawn_all(node, run, n);
    long rss1 = bench_rss_kb();
    double total_s = (double)(bench_now_ns() - run->t0) / 1e9;

    ar_node_stats_t st;
    ar_node_stats(node, &st);
    BENCH_CHECK(st.processes >= (size_t)n, "spawn_idle_memory: node has %zu processes, want >= %ld",
                st.processes, n);
    ar_proc_info_t info;
    rc = ar_proc_info(node, run->first, &info);
    BENCH_CHECK(rc == 0, "spawn_idle_memory: first process not alive: %s", BENCH_ERR(rc));
    rc = ar_proc_info(node, run->last, &info);
    BENCH_CHECK(rc == 0, "spawn_idle_memory: last process not alive: %s", BENCH_ERR(rc));
    BENCH_CHECK(rss0 > 0 && rss1 > 0, "spawn_idle_memory: cannot read VmRSS");

    uint64_t spawn_ns = run->t1 - run->t0;
    bench_emit("spawn_idle_memory", n, total_s, (double)spawn_ns / (double)n,
               " bytes_per_proc=%.1f rss_before_kb=%ld rss_after_kb=%ld processes=%zu",
               (double)(rss1 - rss0) * 1024.0 / (double)n, rss0, rss1, st.processes);
    bench_node_stop(node, "spawn_idle_memory");
    bench_signal_destroy(&warm->done);
    bench_signal_destroy(&run->done);
    free(warm);
    free(run);
    return 0;
}
