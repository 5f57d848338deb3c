/* spawn_exit_monitor: one spawner process spawns N processes that end at once (ar_stop in
 * init) and monitors each right after ar_spawn returns; it counts the DOWNs in its handler
 * and the N-th one stamps the end time and wakes main. Timed: first spawn until the last
 * DOWN. Per spawn. Mirrors erlang/spawn_exit.erl main_monitor/0 (spawn_monitor of a fun
 * that returns at once; warm-up of N/10, then N).
 *
 * A child may already be gone when ar_monitor runs: its DOWN then comes at once with
 * AR_NOPROC, as Erlang's monitor of a dead pid does; it counts like any other DOWN (both
 * kinds are reported). Every DOWN must arrive exactly once: the count must be N, the refs
 * seen must be the refs made (sum and mixed sum), and afterwards the spawner must hold no
 * monitor and have an empty mailbox. */
#include "bench_util.h"

#include <stdatomic.h>
#include <stdlib.h>

int bench_spawn_exit_monitor(const bench_opts_t *o);

enum { TAG_GO = 1, TAG_STOP };

typedef struct sm_run {
    long n;
    /* the spawner's own: written only by its handlers, read by main after done */
    long downs, down_normal, down_noproc, bad;
    uint64_t ref_sum, ref_mix;   /* over refs made by ar_monitor */
    uint64_t down_sum, down_mix; /* over refs of the DOWNs */
    uint64_t t0, t1;
    atomic_long child_inits;
    bench_signal_t done;
} sm_run_t;

/* A ref mixed so that a lost DOWN and a doubled one cannot cancel out in the sum. */
static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static int child_init(ar_proc_t *self, void *arg, void **state)
{
    sm_run_t *run = arg;
    *state = NULL;
    atomic_fetch_add_explicit(&run->child_inits, 1, memory_order_relaxed);
    ar_stop(self, AR_REASON(AR_NORMAL));
    return 0;
}

static void child_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    BENCH_CHECK(0, "spawn_exit_monitor: a child that ended in init got message kind %d",
                m->kind);
}

static const ar_behaviour_t child_b = {
    .name = "spawn_exit_monitor_child",
    .init = child_init,
    .handle = child_handle,
};

static int spawner_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void on_down(sm_run_t *run, const ar_msg_t *m)
{
    if (m->reason.code == AR_NORMAL)
        run->down_normal++;
    else if (m->reason.code == AR_NOPROC)
        run->down_noproc++;
    else
        run->bad++;
    if (m->ref == 0 || ar_pid_is_none(m->from)) run->bad++;
    run->down_sum += m->ref;
    run->down_mix += mix(m->ref);
    if (++run->downs == run->n) {
        run->t1 = bench_now_ns();
        bench_signal_post(&run->done);
    }
}

static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sm_run_t *run = state;
    if (m->kind == AR_MSG_DOWN) {
        on_down(run, m);
        return;
    }
    BENCH_CHECK(m->kind == AR_MSG_CAST, "spawn_exit_monitor: spawner got kind %d", m->kind);
    if (m->tag == TAG_STOP) {
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    BENCH_CHECK(m->tag == TAG_GO, "spawn_exit_monitor: spawner got tag %u", m->tag);
    ar_node_t *node = ar_node(self);
    long n = run->n;
    uint64_t sum = 0, mixed = 0;
    run->t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        ar_pid_t pid;
        ar_ref_t ref;
        int rc = ar_spawn(node, &child_b, run, NULL, &pid);
        BENCH_CHECK(rc == 0, "spawn_exit_monitor: ar_spawn #%ld: %s", i, BENCH_ERR(rc));
        rc = ar_monitor(self, pid, &ref);
        BENCH_CHECK(rc == 0, "spawn_exit_monitor: ar_monitor #%ld: %s", i, BENCH_ERR(rc));
        sum += ref;
        mixed += mix(ref);
    }
    run->ref_sum = sum;
    run->ref_mix = mixed;
    /* The DOWNs are handled after this handler returns, in the spawner's order. */
}

static const ar_behaviour_t spawner_b = {
    .name = "spawn_exit_monitor_spawner",
    .init = spawner_init,
    .handle = spawner_handle,
};

/* Returns the nanoseconds of one run of n spawns. */
static uint64_t run_once(ar_node_t *node, sm_run_t *run, long n)
{
    run->n = n;
    atomic_init(&run->child_inits, 0);
    bench_signal_init(&run->done);
    ar_pid_t sp;
    int rc = ar_spawn(node, &spawner_b, run, NULL, &sp);
    BENCH_CHECK(rc == 0, "spawn_exit_monitor: spawning the spawner: %s", BENCH_ERR(rc));
    rc = ar_send(node, sp, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "spawn_exit_monitor: ar_send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->done, "spawn_exit_monitor: waiting for every DOWN");

    /* The spawner is idle now: nothing more may be queued and no monitor may be left. */
    ar_proc_info_t info;
    rc = ar_proc_info(node, sp, &info);
    BENCH_CHECK(rc == 0, "spawn_exit_monitor: ar_proc_info(spawner): %s", BENCH_ERR(rc));
    BENCH_CHECK(info.monitors == 0, "spawn_exit_monitor: spawner still holds %zu monitors",
                info.monitors);
    BENCH_CHECK(info.mailbox_len == 0,
                "spawn_exit_monitor: %zu messages (extra DOWNs?) after the N-th DOWN",
                info.mailbox_len);
    BENCH_CHECK(run->downs == n, "spawn_exit_monitor: %ld DOWNs, want %ld", run->downs, n);
    BENCH_CHECK(run->bad == 0, "spawn_exit_monitor: %ld DOWNs with a bad reason, ref or pid",
                run->bad);
    BENCH_CHECK(run->down_sum == run->ref_sum && run->down_mix == run->ref_mix,
                "spawn_exit_monitor: the DOWNs' refs are not the monitors' refs");
    BENCH_CHECK(atomic_load(&run->child_inits) == n, "spawn_exit_monitor: %ld children ran init",
                atomic_load(&run->child_inits));
    rc = ar_send(node, sp, TAG_STOP, NULL, 0);
    BENCH_CHECK(rc == 0, "spawn_exit_monitor: ar_send stop: %s", BENCH_ERR(rc));
    return run->t1 - run->t0;
}

int bench_spawn_exit_monitor(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    ar_node_t *node = bench_node_start();
    /* Heap, freed after the node stops: no process can touch a dead run. */
    sm_run_t *warm = calloc(1, sizeof *warm), *run = calloc(1, sizeof *run);
    BENCH_CHECK(warm != NULL && run != NULL, "out of memory");
    if (n / 10 > 0) run_once(node, warm, n / 10);
    uint64_t ns = run_once(node, run, n);
    double s = (double)ns / 1e9;
    bench_emit("spawn_exit_monitor", n, s, (double)ns / (double)n,
               " ops_per_s=%.0f down_normal=%ld down_noproc=%ld", (double)n / s,
               run->down_normal, run->down_noproc);
    bench_node_stop(node, "spawn_exit_monitor");
    if (n / 10 > 0) bench_signal_destroy(&warm->done);
    bench_signal_destroy(&run->done);
    free(warm);
    free(run);
    return 0;
}
