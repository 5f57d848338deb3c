/* spawn_exit_events: the spawn_exit workload (bench/spawn_exit.c) with one function
 * subscriber to SPAWN and EXIT, which counts what it gets. Timed as spawn_exit: first
 * spawn until every child has ended; the subscriber's own work runs on the events thread
 * beside it (a slow subscriber never slows the spawns: past event_buffer, events are
 * dropped and counted). After each run it waits until delivered + dropped adds up to
 * every event, and reports both. Per spawn. */
#include "bench_util.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

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

static unsigned long seen(counter_t *c)
{
    return atomic_load(&c->delivered) + atomic_load(&c->dropped);
}

/* One spawn_exit run of n spawns: its nanoseconds. The events of the run (n + 1 SPAWN and
 * EXIT, the spawner's among them) all reach the subscriber, delivered or counted, before
 * it returns. */
static uint64_t run_once(ar_node_t *node, bench_se_run_t *run, counter_t *c, long n)
{
    unsigned long before = seen(c);
    uint64_t ns = bench_spawn_exit_run(node, run, n);
    unsigned long want = before + 2 * ((unsigned long)n + 1);
    uint64_t dl = bench_now_ns() + (uint64_t)BENCH_WAIT_S * 1000000000u;
    while (seen(c) < want && bench_now_ns() < dl) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    BENCH_CHECK(seen(c) == want, "spawn_exit_events: the subscriber saw %lu events, want %lu",
                seen(c) - before, want - before);
    return ns;
}

int bench_spawn_exit_events(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    ar_node_t *node = bench_node_start();
    counter_t *c = calloc(1, sizeof *c);
    BENCH_CHECK(c != NULL, "out of memory");
    bench_se_run_t *warm = bench_spawn_exit_alloc(), *run = bench_spawn_exit_alloc();
    int rc = ar_events_subscribe_fn(node, AR_EV_SPAWN | AR_EV_EXIT, count_event, c, NULL);
    BENCH_CHECK(rc == 0, "spawn_exit_events: subscribe: %s", BENCH_ERR(rc));
    if (n / 10 > 0) run_once(node, warm, c, n / 10);
    unsigned long d0 = atomic_load(&c->delivered), x0 = atomic_load(&c->dropped);
    uint64_t ns = run_once(node, run, c, n);
    double s = (double)ns / 1e9;
    bench_emit("spawn_exit_events", n, s, (double)ns / (double)n,
               " ops_per_s=%.0f delivered=%lu dropped=%lu", (double)n / s,
               atomic_load(&c->delivered) - d0, atomic_load(&c->dropped) - x0);
    bench_node_stop(node, "spawn_exit_events"); /* before the runs go: see bench_util.h */
    bench_spawn_exit_free(warm);
    bench_spawn_exit_free(run);
    free(c);
    return 0;
}
