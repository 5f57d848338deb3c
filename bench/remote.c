/* remote_ping_pong and remote_oneway: two OS processes on loopback, as
 * ../shared/bench/erlang/remote_ping_pong.erl runs them.
 *
 * The driver (this workload's process) re-executes the bench program (/proc/self/exe) as
 * `arbor_bench --remote-peer`: a node "bench_b" with two schedulers, listening on
 * 127.0.0.1:0, that prints "listening on HOST:PORT" and offers the service "bench_peer",
 * which spawns partners on request (Erlang's driver spawns them on the peer node):
 *   CALL NEW_PONG            a pong process; answers its pid
 *   CALL NEW_SINK {m, pid}   a sink that counts m messages, then sends DONE to pid
 *   CAST HALT                the peer node stops and its program exits
 * Both nodes share a random cookie (handed over in the environment) and run two
 * schedulers, as every peer does.
 *
 * remote_ping_pong: a ping process on the driver's node sends K (N down to 1) to a fresh
 * pong on the peer and waits for K back; timed from its first send to the last pong; per
 * round trip. Warm-up of N/10 first, with a pong of its own.
 * remote_oneway: a blaster sends M small messages to a fresh sink on the peer (waiting 1 ms
 * and retrying on AR_EAGAIN, the back-pressure); timed from its first send until the
 * sink's DONE is back; per message. Warm-up of M/10 first.
 */
#include "bench_util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define COOKIE_ENV "ARBOR_BENCH_COOKIE"

enum { NEW_PONG = 1, NEW_SINK, HALT, PING, PONG, MSG, DONE, GO };

typedef struct sink_req {
    int64_t m;
    ar_pid_t notify;
} sink_req_t;

static int keep_arg(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

/* ---- the peer --------------------------------------------------------------------------- */
static void pong_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->tag != PING) {
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    int rc = ar_send(ar_node(self), m->from, PONG, m->data, m->len);
    BENCH_CHECK(rc == 0, "remote pong: send: %s", BENCH_ERR(rc));
    if (bench_msg_i64(m) == 1) ar_stop(self, AR_REASON(AR_NORMAL)); /* its run is over */
}

static const ar_behaviour_t pong_b = {.name = "remote_pong", .init = keep_arg,
                                      .handle = pong_handle};

typedef struct sink {
    int64_t left, count;
    ar_pid_t notify;
} sink_t;

static int sink_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    const sink_req_t *req = arg;
    sink_t *s = malloc(sizeof *s);
    if (!s) return AR_ENOMEM;
    s->left = req->m;
    s->count = 0;
    s->notify = req->notify;
    *state = s;
    return 0;
}

static void sink_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sink_t *s = state;
    BENCH_CHECK(m->tag == MSG, "remote sink: tag %u", m->tag);
    s->count++;
    if (--s->left == 0) {
        int rc = ar_send(ar_node(self), s->notify, DONE, &s->count, sizeof s->count);
        BENCH_CHECK(rc == 0, "remote sink: send DONE: %s", BENCH_ERR(rc));
        ar_stop(self, AR_REASON(AR_NORMAL));
    }
}

static void sink_terminate(ar_proc_t *self, void *state, ar_reason_t why) { free(state); }

static const ar_behaviour_t sink_b = {.name = "remote_sink", .init = sink_init,
                                      .handle = sink_handle, .terminate = sink_terminate};

static void peer_service_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    ar_node_t *node = ar_node(self);
    ar_pid_t pid = AR_PID_NONE;
    int rc;
    switch (m->tag) {
    case NEW_PONG:
        rc = ar_spawn(node, &pong_b, NULL, NULL, &pid);
        BENCH_CHECK(rc == 0, "peer: spawn pong: %s", BENCH_ERR(rc));
        ar_reply(node, m->reply_to, &pid, sizeof pid);
        break;
    case NEW_SINK: {
        sink_req_t req;
        BENCH_CHECK(m->len == sizeof req, "peer: NEW_SINK of %zu bytes", m->len);
        memcpy(&req, m->data, sizeof req);
        rc = ar_spawn(node, &sink_b, &req, NULL, &pid);
        BENCH_CHECK(rc == 0, "peer: spawn sink: %s", BENCH_ERR(rc));
        ar_reply(node, m->reply_to, &pid, sizeof pid);
        break;
    }
    case HALT:
        ar_node_request_stop(node);
        break;
    default:
        break;
    }
}

static const ar_behaviour_t peer_service_b = {.name = "bench_peer", .handle = peer_service_handle};

/* The driver went away: nothing left to serve. */
static void peer_on_down(const ar_event_t *e, void *ud)
{
    (void)e;
    ar_node_request_stop(ud);
}

int bench_remote_peer(void)
{
    const char *cookie = getenv(COOKIE_ENV);
    BENCH_CHECK(cookie && *cookie, "--remote-peer needs %s", COOKIE_ENV);
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.crash_reports_off = true;
    cfg.name = "bench_b";
    cfg.listen = "127.0.0.1:0";
    cfg.cookie = cookie;
    ar_node_t *node = NULL;
    int rc = ar_node_start(&cfg, &node);
    BENCH_CHECK(rc == 0, "peer: ar_node_start: %s", BENCH_ERR(rc));
    ar_spawn_opts_t o = {.name = "bench_peer"};
    rc = ar_spawn(node, &peer_service_b, NULL, &o, NULL);
    BENCH_CHECK(rc == 0, "peer: spawn service: %s", BENCH_ERR(rc));
    rc = ar_events_subscribe_fn(node, AR_EV_NODE_DOWN, peer_on_down, node, NULL);
    BENCH_CHECK(rc == 0, "peer: subscribe: %s", BENCH_ERR(rc));
    char addr[64];
    rc = ar_node_address(node, addr, sizeof addr);
    BENCH_CHECK(rc == 0, "peer: ar_node_address: %s", BENCH_ERR(rc));
    printf("listening on %s\n", addr);
    fflush(stdout);
    ar_node_wait(node);
    bench_node_stop(node, "remote peer");
    return 0;
}

/* ---- the driver -------------------------------------------------------------------------- */
typedef struct peer {
    pid_t pid;
    ar_node_t *node;
    ar_pid_t service;
} peer_t;

static void random_cookie(char *out, size_t n)
{
    unsigned char b[16];
    BENCH_CHECK(getrandom(b, sizeof b, 0) == (ssize_t)sizeof b, "getrandom: errno %d", errno);
    for (size_t i = 0; i < sizeof b && 2 * i + 2 < n; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* Starts the peer program, reads its address, starts the driver's node and finds the
 * peer's service. */
static void peer_start(peer_t *p)
{
    char cookie[40], env[64];
    random_cookie(cookie, sizeof cookie);
    snprintf(env, sizeof env, COOKIE_ENV "=%s", cookie);
    char *argv[] = {"arbor_bench", "--remote-peer", NULL};
    char *envp[] = {env, NULL};
    int fds[2];
    BENCH_CHECK(pipe2(fds, O_CLOEXEC) == 0, "pipe: errno %d", errno);
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    p->pid = fork();
    BENCH_CHECK(p->pid >= 0, "fork: errno %d", errno);
    if (p->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(126);
        dup2(fds[1], STDOUT_FILENO);
        execve("/proc/self/exe", argv, envp);
        _exit(127);
    }
    close(fds[1]);
    char line[128];
    size_t len = 0;
    uint64_t deadline = bench_now_ns() + 30ull * 1000000000u;
    char *nl = NULL;
    while (!nl) {
        BENCH_CHECK(bench_now_ns() < deadline, "the remote peer did not start");
        struct pollfd pf = {.fd = fds[0], .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0) continue;
        ssize_t r = read(fds[0], line + len, sizeof line - 1 - len);
        BENCH_CHECK(r > 0, "the remote peer exited before listening");
        len += (size_t)r;
        line[len] = '\0';
        nl = strchr(line, '\n');
    }
    close(fds[0]);
    *nl = '\0';
    BENCH_CHECK(strncmp(line, "listening on ", 13) == 0, "remote peer said '%s'", line);

    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.crash_reports_off = true;
    cfg.name = "bench_a";
    cfg.cookie = cookie;
    int rc = ar_node_start(&cfg, &p->node);
    BENCH_CHECK(rc == 0, "ar_node_start: %s", BENCH_ERR(rc));
    rc = ar_whereis_remote(p->node, line + 13, "bench_peer", &p->service, 10000);
    BENCH_CHECK(rc == 0, "ar_whereis_remote(%s): %s", line + 13, BENCH_ERR(rc));
}

static void peer_stop(peer_t *p, const char *workload)
{
    ar_send(p->node, p->service, HALT, NULL, 0);
    int status = 0;
    pid_t got = 0;
    for (int i = 0; i < 500 && (got = waitpid(p->pid, &status, WNOHANG)) == 0; i++) {
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (got == 0) {
        fprintf(stderr, "%s: the remote peer did not halt; killed\n", workload);
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &status, 0);
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s: the remote peer ended with status %d\n", workload, status);
    }
    bench_node_stop(p->node, workload);
}

static ar_pid_t spawn_on_peer(peer_t *p, uint32_t what, const void *req, size_t len)
{
    ar_buf_t r = {0};
    int rc = ar_call(p->node, p->service, what, req, len, &r, 10000);
    BENCH_CHECK(rc == 0 && r.len == sizeof(ar_pid_t), "spawn on the peer: %s", BENCH_ERR(rc));
    ar_pid_t pid;
    memcpy(&pid, r.data, sizeof pid);
    ar_buf_free(&r);
    return pid;
}

/* ---- remote_ping_pong ---- */
typedef struct rpp_run {
    long n;
    ar_pid_t pong;
    int64_t expect;
    long round_trips;
    uint64_t t0, t1;
    bench_signal_t done;
} rpp_run_t;

static void ping_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    rpp_run_t *run = state;
    int64_t k;
    if (m->tag == GO) {
        run->t0 = bench_now_ns();
        k = run->n;
    } else {
        BENCH_CHECK(m->tag == PONG, "remote_ping_pong: ping got tag %u", m->tag);
        k = bench_msg_i64(m);
        BENCH_CHECK(k == run->expect, "remote_ping_pong: pong %lld, want %lld", (long long)k,
                    (long long)run->expect);
        run->round_trips++;
        if (k == 1) {
            run->t1 = bench_now_ns();
            bench_signal_post(&run->done);
            ar_stop(self, AR_REASON(AR_NORMAL));
            return;
        }
        k--;
    }
    run->expect = k;
    int rc = ar_send(ar_node(self), run->pong, PING, &k, sizeof k);
    BENCH_CHECK(rc == 0, "remote_ping_pong: send: %s", BENCH_ERR(rc));
}

static const ar_behaviour_t ping_b = {.name = "remote_ping", .init = keep_arg,
                                      .handle = ping_handle};

static uint64_t rpp_once(peer_t *p, long n)
{
    rpp_run_t run = {.n = n};
    bench_signal_init(&run.done);
    run.pong = spawn_on_peer(p, NEW_PONG, NULL, 0);
    ar_pid_t ping;
    int rc = ar_spawn(p->node, &ping_b, &run, NULL, &ping);
    BENCH_CHECK(rc == 0, "remote_ping_pong: spawn ping: %s", BENCH_ERR(rc));
    rc = ar_send(p->node, ping, GO, NULL, 0);
    BENCH_CHECK(rc == 0, "remote_ping_pong: go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run.done, "remote_ping_pong");
    BENCH_CHECK(run.round_trips == n, "remote_ping_pong: %ld round trips, want %ld",
                run.round_trips, n);
    bench_signal_destroy(&run.done);
    return run.t1 - run.t0;
}

int bench_remote_ping_pong(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 100000;
    peer_t p;
    peer_start(&p);
    if (n / 10 > 0) rpp_once(&p, n / 10);
    uint64_t ns = rpp_once(&p, n);
    double s = (double)ns / 1e9;
    bench_emit("remote_ping_pong", n, s, (double)ns / (double)n, " roundtrips_per_s=%.0f",
               (double)n / s);
    peer_stop(&p, "remote_ping_pong");
    return 0;
}

/* ---- remote_oneway ---- */
typedef struct ow_run {
    long m;
    ar_pid_t sink;
    long eagain_waits;
    int64_t counted;
    uint64_t t0, t1;
    bench_signal_t done;
} ow_run_t;

static void blaster_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ow_run_t *run = state;
    ar_node_t *node = ar_node(self);
    if (m->tag == DONE) {
        run->t1 = bench_now_ns();
        run->counted = bench_msg_i64(m);
        bench_signal_post(&run->done);
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    BENCH_CHECK(m->tag == GO, "remote_oneway: blaster got tag %u", m->tag);
    run->t0 = bench_now_ns();
    for (int64_t k = run->m; k > 0; k--) {
        int rc;
        while ((rc = ar_send(node, run->sink, MSG, &k, sizeof k)) == AR_EAGAIN) {
            run->eagain_waits++;
            ar_sleep(self, 1);
        }
        BENCH_CHECK(rc == 0, "remote_oneway: send: %s", BENCH_ERR(rc));
    }
}

static const ar_behaviour_t blaster_b = {.name = "remote_blaster", .init = keep_arg,
                                         .handle = blaster_handle};

static uint64_t ow_once(peer_t *p, long m, long *eagain_waits)
{
    ow_run_t run = {.m = m};
    bench_signal_init(&run.done);
    ar_pid_t blaster;
    int rc = ar_spawn(p->node, &blaster_b, &run, NULL, &blaster);
    BENCH_CHECK(rc == 0, "remote_oneway: spawn blaster: %s", BENCH_ERR(rc));
    sink_req_t req = {.m = m, .notify = blaster};
    run.sink = spawn_on_peer(p, NEW_SINK, &req, sizeof req);
    rc = ar_send(p->node, blaster, GO, NULL, 0);
    BENCH_CHECK(rc == 0, "remote_oneway: go: %s", BENCH_ERR(rc));
    bench_signal_wait(&run.done, "remote_oneway");
    BENCH_CHECK(run.counted == m, "remote_oneway: the sink counted %lld, want %ld",
                (long long)run.counted, m);
    bench_signal_destroy(&run.done);
    if (eagain_waits) *eagain_waits = run.eagain_waits;
    return run.t1 - run.t0;
}

int bench_remote_oneway(const bench_opts_t *o)
{
    long m = o->n > 0 ? o->n : 1000000;
    peer_t p;
    peer_start(&p);
    if (m / 10 > 0) ow_once(&p, m / 10, NULL);
    long waits = 0;
    uint64_t ns = ow_once(&p, m, &waits);
    double s = (double)ns / 1e9;
    bench_emit("remote_oneway", m, s, (double)ns / (double)m, " msgs_per_s=%.0f eagain_waits=%ld",
               (double)m / s, waits);
    peer_stop(&p, "remote_oneway");
    return 0;
}
