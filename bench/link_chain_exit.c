/* link_chain_exit: P processes in a chain, each spawned with .link by the one before it,
 * none trapping exits; an observer process monitors the last one. Timed inside the
 * observer: from its ar_exit(first, AR_ERROR "boom") until the DOWN of the last one, i.e.
 * the exit signal crossing every link of the chain. Per process. A warm-up chain of P/10
 * is killed first.
 *
 * Checked: every link is in place before the kill (link counts of the ends and of a
 * middle process, the monitor on the last), every chain process ends exactly once with
 * the propagated AR_ERROR "boom" (terminate), the DOWN comes once, for the monitor made,
 * from the last process, with that same reason, and no process is left afterwards. */
#include "bench_util.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

int bench_link_chain_exit(const bench_opts_t *o);

enum { TAG_BUILD = 1, TAG_GROW, TAG_BUILT, TAG_GO, TAG_STOP };

#define BOOM "boom"

typedef struct lc_run {
    long n;
    ar_pid_t observer;
    ar_pid_t *pids; /* pids[i]: chain process i, written by itself */
    /* the observer's: written by its handlers, read by main after a signal */
    ar_pid_t first, last;
    ar_ref_t ref;
    long downs;
    ar_pid_t down_from;
    ar_ref_t down_ref;
    ar_exit_code_t down_code;
    bool down_text_ok;
    uint64_t t0, t1;
    /* the chain's */
    atomic_long ended, bad_reason;
    bench_signal_t built, done;
} lc_run_t;

static int keep_arg(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static bool is_boom(ar_reason_t r)
{
    return r.code == AR_ERROR && r.text != NULL && strcmp(r.text, BOOM) == 0;
}

static const ar_behaviour_t link_b;

/* GROW(k): this process is number n-1-k; with k > 0 it spawns the next one linked and
 * hands it k-1, and the one at 0 (the last) reports to the observer. */
static void link_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    lc_run_t *run = state;
    ar_node_t *node = ar_node(self);
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_GROW,
                "link_chain_exit: chain process got kind %d tag %u", m->kind, m->tag);
    int64_t k = bench_msg_i64(m);
    BENCH_CHECK(k >= 0 && k < run->n, "link_chain_exit: bad GROW %lld", (long long)k);
    run->pids[run->n - 1 - k] = ar_self(self);
    int rc;
    if (k == 0) {
        rc = ar_send(node, run->observer, TAG_BUILT, NULL, 0);
        BENCH_CHECK(rc == 0, "link_chain_exit: send built: %s", BENCH_ERR(rc));
        return;
    }
    ar_spawn_opts_t opts = {.link = true};
    ar_pid_t next;
    rc = ar_spawn(node, &link_b, run, &opts, &next);
    BENCH_CHECK(rc == 0, "link_chain_exit: spawn chain process: %s", BENCH_ERR(rc));
    int64_t left = k - 1;
    rc = ar_send(node, next, TAG_GROW, &left, sizeof left);
    BENCH_CHECK(rc == 0, "link_chain_exit: send grow: %s", BENCH_ERR(rc));
}

static void link_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    lc_run_t *run = state;
    if (!is_boom(why)) atomic_fetch_add_explicit(&run->bad_reason, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&run->ended, 1, memory_order_relaxed);
}

static const ar_behaviour_t link_b = {
    .name = "link_chain_process",
    .init = keep_arg,
    .handle = link_handle,
    .terminate = link_terminate,
};

static void observer_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    lc_run_t *run = state;
    ar_node_t *node = ar_node(self);
    int rc;
    if (m->kind == AR_MSG_DOWN) {
        run->t1 = bench_now_ns();
        run->downs++;
        run->down_from = m->from;
        run->down_ref = m->ref;
        run->down_code = m->reason.code;
        run->down_text_ok = is_boom(m->reason);
        bench_signal_post(&run->done);
        return;
    }
    BENCH_CHECK(m->kind == AR_MSG_CAST, "link_chain_exit: observer got kind %d", m->kind);
    switch (m->tag) {
    case TAG_BUILD: {
        /* The first one is not linked to the observer: the chain's end must not kill it. */
        rc = ar_spawn(node, &link_b, run, NULL, &run->first);
        BENCH_CHECK(rc == 0, "link_chain_exit: spawn first: %s", BENCH_ERR(rc));
        int64_t left = run->n - 1;
        rc = ar_send(node, run->first, TAG_GROW, &left, sizeof left);
        BENCH_CHECK(rc == 0, "link_chain_exit: send grow: %s", BENCH_ERR(rc));
        break;
    }
    case TAG_BUILT:
        run->last = m->from;
        rc = ar_monitor(self, run->last, &run->ref);
        BENCH_CHECK(rc == 0, "link_chain_exit: ar_monitor(last): %s", BENCH_ERR(rc));
        bench_signal_post(&run->built);
        break;
    case TAG_GO:
        run->t0 = bench_now_ns();
        rc = ar_exit(node, run->first, (ar_reason_t){AR_ERROR, BOOM});
        BENCH_CHECK(rc == 0, "link_chain_exit: ar_exit(first): %s", BENCH_ERR(rc));
        break;
    case TAG_STOP:
        ar_stop(self, AR_REASON(AR_NORMAL));
        break;
    default:
        bench_fail(__FILE__, __LINE__, "link_chain_exit: observer got tag %u", m->tag);
    }
}

static const ar_behaviour_t observer_b = {
    .name = "link_chain_observer",
    .init = keep_arg,
    .handle = observer_handle,
};

static size_t links_of(ar_node_t *node, ar_pid_t pid, const char *which)
{
    ar_proc_info_t info;
    int rc = ar_proc_info(node, pid, &info);
    BENCH_CHECK(rc == 0, "link_chain_exit: ar_proc_info(%s): %s", which, BENCH_ERR(rc));
    return info.links;
}

/* Waits (bounded) until the node counts `want` live processes. */
static void await_processes(ar_node_t *node, size_t want)
{
    uint64_t deadline = bench_now_ns() + 30ull * 1000000000u;
    ar_node_stats_t st;
    for (;;) {
        ar_node_stats(node, &st);
        if (st.processes == want) return;
        BENCH_CHECK(bench_now_ns() < deadline,
                    "link_chain_exit: %zu processes alive after the chain ended, want %zu",
                    st.processes, want);
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
}

/* Builds a chain of n, kills it; returns the nanoseconds from the kill to the DOWN. */
static uint64_t run_once(ar_node_t *node, lc_run_t *run, long n)
{
    run->n = n;
    run->pids = calloc((size_t)n, sizeof *run->pids);
    BENCH_CHECK(run->pids != NULL, "out of memory");
    atomic_init(&run->ended, 0);
    atomic_init(&run->bad_reason, 0);
    bench_signal_init(&run->built);
    bench_signal_init(&run->done);
    ar_node_stats_t before;
    ar_node_stats(node, &before);

    ar_pid_t obs;
    int rc = ar_spawn(node, &observer_b, run, NULL, &obs);
    BENCH_CHECK(rc == 0, "link_chain_exit: spawn observer: %s", BENCH_ERR(rc));
    run->observer = obs; /* read by the chain only after the send below */
    rc = ar_send(node, obs, TAG_BUILD, NULL, 0);
    BENCH_CHECK(rc == 0, "link_chain_exit: send build: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->built, "link_chain_exit: building the chain");

    BENCH_CHECK(ar_pid_eq(run->pids[0], run->first) && ar_pid_eq(run->pids[n - 1], run->last),
                "link_chain_exit: the chain's ends are not the processes spawned");
    size_t end_links = n > 1 ? 1 : 0;
    BENCH_CHECK(links_of(node, run->first, "first") == end_links &&
                    links_of(node, run->last, "last") == end_links,
                "link_chain_exit: an end of the chain does not have %zu link", end_links);
    if (n > 2)
        BENCH_CHECK(links_of(node, run->pids[n / 2], "middle") == 2,
                    "link_chain_exit: a middle process does not have 2 links");
    /* The monitor reaches the last one as a signal: wait (bounded) until it is in place,
     * so that its DOWN carries the chain's reason rather than AR_NOPROC. */
    ar_proc_info_t info;
    uint64_t deadline = bench_now_ns() + 30ull * 1000000000u;
    for (;;) {
        rc = ar_proc_info(node, run->last, &info);
        BENCH_CHECK(rc == 0, "link_chain_exit: ar_proc_info(last): %s", BENCH_ERR(rc));
        if (info.monitored_by == 1) break;
        BENCH_CHECK(info.monitored_by == 0 && bench_now_ns() < deadline,
                    "link_chain_exit: last monitored by %zu, want 1", info.monitored_by);
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    BENCH_CHECK(atomic_load(&run->ended) == 0, "link_chain_exit: a chain process ended early");

    rc = ar_send(node, obs, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "link_chain_exit: send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->done, "link_chain_exit: waiting for the last one's DOWN");

    BENCH_CHECK(run->downs == 1, "link_chain_exit: %ld DOWNs", run->downs);
    BENCH_CHECK(ar_pid_eq(run->down_from, run->last) && run->down_ref == run->ref,
                "link_chain_exit: the DOWN is not the monitor's on the last process");
    BENCH_CHECK(run->down_code == AR_ERROR && run->down_text_ok,
                "link_chain_exit: DOWN reason %s, want error \"" BOOM "\"",
                ar_exit_code_name(run->down_code));
    /* terminate runs before the DOWN is sent, and each process only dies of its
     * predecessor's signal: every one has ended by now. */
    BENCH_CHECK(atomic_load(&run->ended) == n, "link_chain_exit: %ld of %ld ended",
                atomic_load(&run->ended), n);
    BENCH_CHECK(atomic_load(&run->bad_reason) == 0,
                "link_chain_exit: %ld chain processes ended with another reason than the "
                "propagated error",
                atomic_load(&run->bad_reason));
    await_processes(node, before.processes + 1); /* the observer */
    rc = ar_proc_info(node, obs, &info);
    BENCH_CHECK(rc == 0 && info.mailbox_len == 0 && info.monitors == 0,
                "link_chain_exit: observer left with messages or monitors");
    rc = ar_send(node, obs, TAG_STOP, NULL, 0);
    BENCH_CHECK(rc == 0, "link_chain_exit: send stop: %s", BENCH_ERR(rc));
    await_processes(node, before.processes);
    free(run->pids);
    run->pids = NULL;
    bench_signal_destroy(&run->built);
    bench_signal_destroy(&run->done);
    return run->t1 - run->t0;
}

int bench_link_chain_exit(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 100000;
    ar_node_t *node = bench_node_start();
    lc_run_t *warm = calloc(1, sizeof *warm), *run = calloc(1, sizeof *run);
    BENCH_CHECK(warm != NULL && run != NULL, "out of memory");
    if (n / 10 > 0) run_once(node, warm, n / 10);
    uint64_t ns = run_once(node, run, n);
    double s = (double)ns / 1e9;
    bench_emit("link_chain_exit", n, s, (double)ns / (double)n, " procs_per_s=%.0f",
               (double)n / s);
    bench_node_stop(node, "link_chain_exit");
    free(warm);
    free(run);
    return 0;
}
