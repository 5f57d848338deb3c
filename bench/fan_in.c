/* fan_in: S sender processes each send M small messages to one receiver process. A
 * coordinator process spawns the receiver and the senders, stamps the start and sends
 * each sender "go"; a sender sends its M messages from its handler and ends; the
 * receiver counts them and stamps the end when it has all S*M. Per message, and
 * msgs_per_s. Mirrors erlang/fan_in.erl (fresh processes per run, warm-up S x M/10).
 * The receiver also sums the payloads: a lost or doubled message fails the run. */
#include "bench_util.h"

#include <stdlib.h>

enum { TAG_START = 1, TAG_GO, TAG_MSG };

typedef struct fi_run {
    long senders, per_sender, total;
    ar_pid_t recv;
    uint64_t t0;
    bench_signal_t done;
    /* The receiver's, on a line of their own so that the senders' reads above never
     * share a cache line with its per-message writes. */
    _Alignas(64) long count;
    int64_t sum;
    uint64_t t1;
} fi_run_t;

static fi_run_t *run_new(void)
{
    size_t size = (sizeof(fi_run_t) + 63) / 64 * 64;
    fi_run_t *r = aligned_alloc(64, size);
    BENCH_CHECK(r != NULL, "out of memory");
    memset(r, 0, size);
    return r;
}

static int keep_arg(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void recv_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    fi_run_t *r = state;
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_MSG, "fan_in: receiver got tag %u", m->tag);
    r->sum += bench_msg_i64(m);
    if (++r->count == r->total) {
        r->t1 = bench_now_ns();
        bench_signal_post(&r->done);
        ar_stop(self, AR_REASON(AR_NORMAL));
    }
}

static const ar_behaviour_t recv_b = {
    .name = "fan_in_receiver",
    .init = keep_arg,
    .handle = recv_handle,
};

static void sender_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    fi_run_t *r = state;
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_GO, "fan_in: sender got tag %u", m->tag);
    ar_node_t *node = ar_node(self);
    ar_pid_t to = r->recv;
    for (int64_t k = r->per_sender; k > 0; k--) {
        int rc = ar_send(node, to, TAG_MSG, &k, sizeof k);
        BENCH_CHECK(rc == 0, "fan_in: sender send: %s", BENCH_ERR(rc));
    }
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t sender_b = {
    .name = "fan_in_sender",
    .init = keep_arg,
    .handle = sender_handle,
};

static void coord_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    fi_run_t *r = state;
    BENCH_CHECK(m->tag == TAG_START, "fan_in: coordinator got tag %u", m->tag);
    ar_node_t *node = ar_node(self);
    int rc = ar_spawn(node, &recv_b, r, NULL, &r->recv);
    BENCH_CHECK(rc == 0, "fan_in: spawn receiver: %s", BENCH_ERR(rc));
    ar_pid_t *senders = malloc((size_t)r->senders * sizeof *senders);
    BENCH_CHECK(senders != NULL, "out of memory");
    for (long i = 0; i < r->senders; i++) {
        rc = ar_spawn(node, &sender_b, r, NULL, &senders[i]);
        BENCH_CHECK(rc == 0, "fan_in: spawn sender #%ld: %s", i, BENCH_ERR(rc));
    }
    r->t0 = bench_now_ns();
    for (long i = 0; i < r->senders; i++) {
        rc = ar_send(node, senders[i], TAG_GO, NULL, 0);
        BENCH_CHECK(rc == 0, "fan_in: send go: %s", BENCH_ERR(rc));
    }
    free(senders);
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t coord_b = {
    .name = "fan_in_coordinator",
    .init = keep_arg,
    .handle = coord_handle,
};

static uint64_t run_once(ar_node_t *node, fi_run_t *r, long senders, long per_sender)
{
    r->senders = senders;
    r->per_sender = per_sender;
    r->total = senders * per_sender;
    bench_signal_init(&r->done);
    ar_pid_t coord;
    int rc = ar_spawn(node, &coord_b, r, NULL, &coord);
    BENCH_CHECK(rc == 0, "fan_in: spawn coordinator: %s", BENCH_ERR(rc));
    rc = ar_send(node, coord, TAG_START, NULL, 0);
    BENCH_CHECK(rc == 0, "fan_in: send start: %s", BENCH_ERR(rc));
    bench_signal_wait(&r->done, "fan_in: receiving");
    int64_t want = (int64_t)senders * ((int64_t)per_sender * (per_sender + 1) / 2);
    BENCH_CHECK(r->count == r->total && r->sum == want,
                "fan_in: received %ld messages summing %lld, want %ld summing %lld", r->count,
                (long long)r->sum, r->total, (long long)want);
    return r->t1 - r->t0;
}

int bench_fan_in(const bench_opts_t *o)
{
    long per_sender = o->n > 0 ? o->n : 1000;
    long senders = o->procs > 0 ? o->procs : 1000;
    long total = senders * per_sender;
    ar_node_t *node = bench_node_start();
    fi_run_t *warm = run_new(), *run = run_new();
    if (per_sender / 10 > 0) run_once(node, warm, senders, per_sender / 10);
    uint64_t ns = run_once(node, run, senders, per_sender);
    double s = (double)ns / 1e9;
    bench_emit("fan_in", total, s, (double)ns / (double)total,
               " senders=%ld per_sender=%ld msgs_per_s=%.0f", senders, per_sender,
               (double)total / s);
    bench_node_stop(node, "fan_in");
    if (per_sender / 10 > 0) bench_signal_destroy(&warm->done);
    bench_signal_destroy(&run->done);
    free(warm);
    free(run);
    return 0;
}
