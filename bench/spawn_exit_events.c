/* spawn_exit_events: the spawn_exit workload (bench/spawn_exit.c) with one function
 * subscriber to SPAWN and EXIT, which counts what it gets. Timed as spawn_exit: first
 * spawn until every child has ended; the subscriber's own work runs on the events thread
 * beside it (a slow subscriber never slows the spawns: past event_buffer, events are
 * dropped and counted). After the timed run it waits until delivered + dropped adds up to
 * every event, and reports both. Per spawn. */
#include "bench_util.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

enum { TAG_GO = 1 };

typedef struct see_run {
    long n;
    atomic_long left;
    uint64_t t0, t1;
    bench_signal_t done;
} see_run_t;

typedef struct counter {
    atomic_ulong delivered, dropped;
} counter_t;

static void count_event(const ar_event_t *e, void *ud)
{
    counter_t *c = ud;
    if (e->kind == AR_EV_LAGGED)
        atomic_fetch_add_explicit(&c->dropped, e->dropped, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&c->delivered, 1, memory_order_relaxed);
}

static int child_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    ar_stop(self, AR_REASON(AR_NORMAL));
    return 0;
}

static void child_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state;
    BENCH_CHECK(0, "spawn_exit_events: a child that ended in init got message kind %d", m->kind);
}

static void child_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)why;
    see_run_t *run = state;
    /* acq_rel: the last decrement sees every other child's terminate before it posts */
    if (atomic_fetch_sub_explicit(&run->left, 1, memory_order_acq_rel) == 1) {
        run->t1 = bench_now_ns();
        bench_signal_post(&run->done);
    }
}

static const ar_behaviour_t child_b = {
    .name = "spawn_exit_events_child",
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
    see_run_t *run = state;
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_GO, "spawn_exit_events: unexpected message");
    ar_node_t *node = ar_node(self);
    long n = run->n; /* copied: once the last child ends, main may free run */
    run->t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        int rc = ar_spawn(node, &child_b, run, NULL, NULL);
        BENCH_CHECK(rc == 0, "spawn_exit_events: ar_spawn #%ld: %s", i, BENCH_ERR(rc));
    }
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t spawner_b = {
    .name = "spawn_exit_events_spawner",
    .init = spawner_init,
    .handle = spawner_handle,
};

static unsigned long seen(counter_t *c)
{
    return atomic_load(&c->delivered) + atomic_load(&c->dropped);
}

/* One run of n spawns: its nanoseconds. The events of the run (n + 1 SPAWN and EXIT) all
 * reach the subscriber, delivered or counted, before it returns. */
static uint64_t run_once(ar_node_t *node, see_run_t *run, counter_t *c, long n)
{
    run->n = n;
    atomic_init(&run->left, n);
    bench_signal_init(&run->done);
    unsigned long before = seen(c);
    ar_pid_t sp;
    int rc = ar_spawn(node, &spawner_b, run, NULL, &sp);
    BENCH_CHECK(rc == 0, "spawn_exit_events: spawning the spawner: %s", BENCH_ERR(rc));
    rc = ar_send(node, sp, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "spawn_exit_events: ar_send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->done, "spawn_exit_events: waiting for every child to end");
    unsigned long want = before + 2 * ((unsigned long)n + 1);
    uint64_t dl = bench_now_ns() + (uint64_t)BENCH_WAIT_S * 1000000000u;
    while (seen(c) < want && bench_now_ns() < dl) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    BENCH_CHECK(seen(c) == want, "spawn_exit_events: the subscriber saw %lu events, want %lu",
                seen(c) - before, want - before);
    return run->t1 - run->t0;
}

int bench_spawn_exit_events(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    ar_node_t *node = bench_node_start();
    counter_t *c = calloc(1, sizeof *c);
    see_run_t *warm = calloc(1, sizeof *warm), *run = calloc(1, sizeof *run);
    BENCH_CHECK(c && warm && run, "out of memory");
    int rc = ar_events_subscribe_fn(node, AR_EV_SPAWN | AR_EV_EXIT, count_event, c, NULL);
    BENCH_CHECK(rc == 0, "spawn_exit_events: subscribe: %s", BENCH_ERR(rc));
    if (n / 10 > 0) run_once(node, warm, c, n / 10);
    unsigned long d0 = atomic_load(&c->delivered), x0 = atomic_load(&c->dropped);
    uint64_t ns = run_once(node, run, c, n);
    double s = (double)ns / 1e9;
    bench_emit("spawn_exit_events", n, s, (double)ns / (double)n,
               " ops_per_s=%.0f delivered=%lu dropped=%lu", (double)n / s,
               atomic_load(&c->delivered) - d0, atomic_load(&c->dropped) - x0);
    bench_node_stop(node, "spawn_exit_events");
    if (n / 10 > 0) bench_signal_destroy(&warm->done);
    bench_signal_destroy(&run->done);
    free(warm);
    free(run);
    free(c);
    return 0;
}
