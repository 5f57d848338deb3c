/* gen_server_call: one client process makes N synchronous ar_call()s to a server process
 * that answers each with the integer it was sent and counts them. Timed inside the client:
 * first call until the last reply. Per call. Mirrors erlang/gen_server_call.erl: one
 * server, a fresh client per run (warm-up N/10, then N), and gen_server:call's default
 * timeout of 5000 ms (-t changes it; -1 is infinity). The server's count is checked. */
#include "bench_util.h"

#include <stdlib.h>

enum { TAG_GO = 1, TAG_ECHO, TAG_COUNT };

typedef struct gs_server {
    int64_t calls;
} gs_server_t;

typedef struct gs_run {
    long n;
    int timeout_ms;
    ar_pid_t server;
    long ok;
    uint64_t t0, t1;
    bench_signal_t done;
} gs_run_t;

static int keep_arg(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void server_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    gs_server_t *s = state;
    BENCH_CHECK(m->kind == AR_MSG_CALL, "gen_server_call: server got kind %d", m->kind);
    int rc;
    if (m->tag == TAG_ECHO) {
        int64_t k = bench_msg_i64(m);
        s->calls++;
        rc = ar_reply(ar_node(self), m->reply_to, &k, sizeof k);
    } else {
        BENCH_CHECK(m->tag == TAG_COUNT, "gen_server_call: server got tag %u", m->tag);
        rc = ar_reply(ar_node(self), m->reply_to, &s->calls, sizeof s->calls);
    }
    BENCH_CHECK(rc == 0, "gen_server_call: ar_reply: %s", BENCH_ERR(rc));
}

static const ar_behaviour_t server_b = {
    .name = "echo_server",
    .init = keep_arg,
    .handle = server_handle,
};

static void client_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    gs_run_t *r = state;
    BENCH_CHECK(m->tag == TAG_GO, "gen_server_call: client got tag %u", m->tag);
    ar_node_t *node = ar_node(self);
    ar_pid_t server = r->server;
    int timeout = r->timeout_ms;
    long ok = 0;
    r->t0 = bench_now_ns();
    for (int64_t k = r->n; k > 0; k--) {
        ar_buf_t reply = {0};
        int rc = ar_call(node, server, TAG_ECHO, &k, sizeof k, &reply, timeout);
        BENCH_CHECK(rc == 0, "gen_server_call: ar_call %lld: %s", (long long)k, BENCH_ERR(rc));
        int64_t got;
        BENCH_CHECK(reply.len == sizeof got, "gen_server_call: reply of %zu bytes", reply.len);
        memcpy(&got, reply.data, sizeof got);
        BENCH_CHECK(got == k, "gen_server_call: reply %lld to %lld", (long long)got, (long long)k);
        ar_buf_free(&reply);
        ok++;
    }
    r->t1 = bench_now_ns();
    r->ok = ok;
    bench_signal_post(&r->done);
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t client_b = {
    .name = "call_client",
    .init = keep_arg,
    .handle = client_handle,
};

static uint64_t run_once(ar_node_t *node, gs_run_t *r, ar_pid_t server, long n, int timeout)
{
    r->n = n;
    r->server = server;
    r->timeout_ms = timeout;
    bench_signal_init(&r->done);
    ar_pid_t client;
    int rc = ar_spawn(node, &client_b, r, NULL, &client);
    BENCH_CHECK(rc == 0, "gen_server_call: spawn client: %s", BENCH_ERR(rc));
    rc = ar_send(node, client, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "gen_server_call: send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&r->done, "gen_server_call: calling");
    BENCH_CHECK(r->ok == n, "gen_server_call: %ld good replies, want %ld", r->ok, n);
    return r->t1 - r->t0;
}

int bench_gen_server_call(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    int timeout = o->call_timeout_set ? o->call_timeout_ms : 5000;
    ar_node_t *node = bench_node_start();
    gs_server_t *srv = calloc(1, sizeof *srv);
    gs_run_t *warm = calloc(1, sizeof *warm), *run = calloc(1, sizeof *run);
    BENCH_CHECK(srv != NULL && warm != NULL && run != NULL, "out of memory");
    ar_pid_t server;
    int rc = ar_spawn(node, &server_b, srv, NULL, &server);
    BENCH_CHECK(rc == 0, "gen_server_call: spawn server: %s", BENCH_ERR(rc));
    if (n / 10 > 0) run_once(node, warm, server, n / 10, timeout);
    uint64_t ns = run_once(node, run, server, n, timeout);
    double s = (double)ns / 1e9;

    /* The server must have answered exactly the calls made (asked from main). */
    ar_buf_t reply = {0};
    rc = ar_call(node, server, TAG_COUNT, NULL, 0, &reply, 10000);
    BENCH_CHECK(rc == 0 && reply.len == sizeof(int64_t), "gen_server_call: count call: %s",
                BENCH_ERR(rc));
    int64_t calls;
    memcpy(&calls, reply.data, sizeof calls);
    ar_buf_free(&reply);
    BENCH_CHECK(calls == n + n / 10, "gen_server_call: server counted %lld calls, want %ld",
                (long long)calls, n + n / 10);

    bench_emit("gen_server_call", n, s, (double)ns / (double)n,
               " calls_per_s=%.0f call_timeout_ms=%d", (double)n / s, timeout);
    bench_node_stop(node, "gen_server_call");
    if (n / 10 > 0) bench_signal_destroy(&warm->done);
    bench_signal_destroy(&run->done);
    free(warm);
    free(run);
    free(srv);
    return 0;
}
