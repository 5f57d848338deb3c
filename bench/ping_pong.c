/* ping_pong: two processes, N round trips of a small message. The ping process sends K
 * (N down to 1) and waits in its handler for the pong carrying the same K back; both
 * sides are plain handle() callbacks. Timed inside ping: its first send until the last
 * pong. Per round trip. Mirrors erlang/ping_pong.erl (fresh pair per run, warm-up N/10). */
#include "bench_util.h"

#include <stdlib.h>

enum { TAG_GO = 1, TAG_PING, TAG_PONG, TAG_STOP };

typedef struct pp_run {
    long n;
    ar_pid_t pong;
    int64_t expect; /* the K ping waits for; ping's own */
    long round_trips;
    uint64_t t0, t1;
    bench_signal_t done;
} pp_run_t;

static int keep_arg(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void pong_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->tag == TAG_STOP) {
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_PING, "ping_pong: pong got tag %u", m->tag);
    int64_t k = bench_msg_i64(m);
    int rc = ar_send(ar_node(self), m->from, TAG_PONG, &k, sizeof k);
    BENCH_CHECK(rc == 0, "ping_pong: pong send: %s", BENCH_ERR(rc));
}

static const ar_behaviour_t pong_b = {
    .name = "pong",
    .init = keep_arg,
    .handle = pong_handle,
};

static void ping_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    pp_run_t *run = state;
    int64_t k;
    switch (m->tag) {
    case TAG_GO:
        run->t0 = bench_now_ns();
        k = run->n;
        break;
    case TAG_PONG:
        k = bench_msg_i64(m);
        BENCH_CHECK(k == run->expect, "ping_pong: pong %lld, want %lld", (long long)k,
                    (long long)run->expect);
        run->round_trips++;
        if (k == 1) {
            run->t1 = bench_now_ns();
            bench_signal_post(&run->done);
            ar_stop(self, AR_REASON(AR_NORMAL));
            return;
        }
        k--;
        break;
    default:
        bench_fail(__FILE__, __LINE__, "ping_pong: ping got tag %u", m->tag);
    }
    run->expect = k;
    int rc = ar_send(ar_node(self), run->pong, TAG_PING, &k, sizeof k);
    BENCH_CHECK(rc == 0, "ping_pong: ping send: %s", BENCH_ERR(rc));
}

static const ar_behaviour_t ping_b = {
    .name = "ping",
    .init = keep_arg,
    .handle = ping_handle,
};

static uint64_t run_once(ar_node_t *node, pp_run_t *run, long n)
{
    run->n = n;
    bench_signal_init(&run->done);
    int rc = ar_spawn(node, &pong_b, run, NULL, &run->pong);
    BENCH_CHECK(rc == 0, "ping_pong: spawn pong: %s", BENCH_ERR(rc));
    ar_pid_t ping;
    rc = ar_spawn(node, &ping_b, run, NULL, &ping);
    BENCH_CHECK(rc == 0, "ping_pong: spawn ping: %s", BENCH_ERR(rc));
    rc = ar_send(node, ping, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "ping_pong: send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run->done, "ping_pong");
    BENCH_CHECK(run->round_trips == n, "ping_pong: %ld round trips, want %ld", run->round_trips, n);
    rc = ar_send(node, run->pong, TAG_STOP, NULL, 0);
    BENCH_CHECK(rc == 0, "ping_pong: send stop: %s", BENCH_ERR(rc));
    return run->t1 - run->t0;
}

int bench_ping_pong(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    ar_node_t *node = bench_node_start();
    pp_run_t *warm = calloc(1, sizeof *warm), *run = calloc(1, sizeof *run);
    BENCH_CHECK(warm != NULL && run != NULL, "out of memory");
    if (n / 10 > 0) run_once(node, warm, n / 10);
    uint64_t ns = run_once(node, run, n);
    double s = (double)ns / 1e9;
    bench_emit("ping_pong", n, s, (double)ns / (double)n, " roundtrips_per_s=%.0f",
               (double)n / s);
    bench_node_stop(node, "ping_pong");
    if (n / 10 > 0) bench_signal_destroy(&warm->done);
    bench_signal_destroy(&run->done);
    free(warm);
    free(run);
    return 0;
}
