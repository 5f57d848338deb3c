/* Distribution with a peer in another OS process: the example program two_nodes in its
 * --serve mode (built beside the suite, in $(BUILD)/examples/), started with fork and
 * exec. kill -9 of the peer (links, monitors, a pending call and a pending ask fire with
 * AR_NOCONNECTION / AR_ENOCONN within 4 ticks and a margin; a send returns at once; a fresh
 * peer is reached again), a SIGSTOPped peer (back-pressure: AR_EAGAIN with the bytes
 * accepted bounded, then everything delivered in order after SIGCONT; or node loss after
 * SIGKILL; a node stop that does not hang on it; and node loss after 4 silent ticks).
 *
 * The peer's ping service (see examples/two_nodes.c): PING answers "pong", ECHO its
 * request, DELAY "MS" answers MS ms later, NOTE casts are counted (and their order
 * checked), STATS answers the counts. */
#include "dist_helpers.h"

#include <libgen.h>
#include <sys/prctl.h>
#include <sys/wait.h>

enum { PING = 1, ECHO, DELAY, NOTE, STATS };
typedef struct stats {
    uint64_t notes, bytes, out_of_order, delays_waiting;
} stats_t;

#define PEER_NAME "pingsrv"

typedef struct peer {
    pid_t pid;
    int out;
    char addr[DN_ADDR_MAX];
} peer_t;

static void peer_path(char *buf, size_t n)
{
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(len, 0, "readlink /proc/self/exe");
    self[len] = '\0';
    snprintf(buf, n, "%s/../examples/two_nodes", dirname(self));
    cr_assert_eq(access(buf, X_OK), 0, "no peer program at %s", buf);
}

/* Starts `two_nodes --serve` as node PEER_NAME with tick_ms and the test cookie, and reads
 * the address it listens on. It dies with this test (PR_SET_PDEATHSIG). */
static void peer_start(peer_t *p, int tick_ms)
{
    char path[4200], tick[16];
    peer_path(path, sizeof path);
    snprintf(tick, sizeof tick, "%d", tick_ms);
    char *argv[] = {"two_nodes", "--serve", "--name", PEER_NAME, "--tick", tick, NULL};
    char *envp[] = {"ARBOR_COOKIE=" DN_COOKIE, NULL};
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) { /* only async-signal-safe calls until exec */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(126);
        dup2(fds[1], STDOUT_FILENO);
        execve(path, argv, envp);
        _exit(127);
    }
    close(fds[1]);
    memset(p, 0, sizeof *p);
    p->pid = pid;
    p->out = fds[0];
    char line[128];
    size_t len = 0;
    uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    for (;;) {
        cr_assert(th_now_ns() < deadline, "the peer did not say where it listens");
        struct pollfd pf = {.fd = p->out, .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0) continue;
        ssize_t r = read(p->out, line + len, sizeof line - 1 - len);
        cr_assert_gt(r, 0, "the peer exited before listening");
        len += (size_t)r;
        line[len] = '\0';
        char *nl = strchr(line, '\n');
        if (!nl) continue;
        *nl = '\0';
        cr_assert_eq(strncmp(line, "listening on ", 13), 0, "peer said \"%s\"", line);
        cr_assert_lt(strlen(line + 13), sizeof p->addr);
        memcpy(p->addr, line + 13, strlen(line + 13) + 1);
        break;
    }
}

static void peer_signal(peer_t *p, int sig) { cr_assert_eq(kill(p->pid, sig), 0); }

/* Kills (if need be) and reaps the peer. */
static void peer_end(peer_t *p)
{
    if (p->pid <= 0) return;
    kill(p->pid, SIGKILL);
    kill(p->pid, SIGCONT);
    waitpid(p->pid, NULL, 0);
    close(p->out);
    p->pid = 0;
}

static dn_evlog_t ev;

/* The client node of every test (it listens too, as any named node may). */
static ar_node_t *client(unsigned tick_ms, size_t queue_limit)
{
    ar_node_t *a = dn_node_opts("osclient", &(dn_opts_t){.schedulers = 2, .tick_ms = tick_ms,
                                                        .dist_queue_limit = queue_limit});
    dn_evlog_attach(a, &ev);
    return a;
}

static stats_t peer_stats(ar_node_t *a, ar_pid_t ping)
{
    ar_buf_t r = {0};
    int rc = ar_call(a, ping, STATS, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "STATS: %s", ar_err_name(rc));
    cr_assert_eq(r.len, sizeof(stats_t));
    stats_t s;
    memcpy(&s, r.data, sizeof s);
    ar_buf_free(&r);
    return s;
}

/* STATS, retried while the queue to the peer is still full (AR_EAGAIN). */
static stats_t peer_stats_retry(ar_node_t *a, ar_pid_t ping)
{
    uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    for (;;) {
        ar_buf_t r = {0};
        int rc = ar_call(a, ping, STATS, NULL, 0, &r, TH_WAIT_MS);
        if (rc == 0) {
            cr_assert_eq(r.len, sizeof(stats_t));
            stats_t s;
            memcpy(&s, r.data, sizeof s);
            ar_buf_free(&r);
            return s;
        }
        cr_assert_eq(rc, AR_EAGAIN, "STATS: %s", ar_err_name(rc));
        cr_assert(th_now_ns() < deadline, "the queue never drained");
        th_nap();
    }
}

static void ping_check(ar_node_t *a, ar_pid_t ping)
{
    ar_buf_t r = {0};
    int rc = ar_call(a, ping, PING, "ping", 4, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "PING: %s", ar_err_name(rc));
    cr_assert_eq(r.len, 4);
    cr_assert_arr_eq(r.data, "pong", 4);
    ar_buf_free(&r);
}

/* A DELAY call in a thread of its own: pending until the peer answers or is lost. */
typedef struct bg {
    ar_node_t *node;
    ar_pid_t to;
    pthread_t t;
    atomic_int done;
    int rc;
    uint64_t t_end;
} bg_t;

static void *bg_run(void *arg)
{
    bg_t *b = arg;
    ar_buf_t r = {0};
    b->rc = ar_call(b->node, b->to, DELAY, "60000", 5, &r, 2 * TH_WAIT_MS);
    b->t_end = th_now_ns();
    ar_buf_free(&r);
    atomic_store(&b->done, 1);
    return NULL;
}

static void bg_start(bg_t *b, ar_node_t *node, ar_pid_t to)
{
    memset(b, 0, sizeof *b);
    b->node = node;
    b->to = to;
    cr_assert_eq(pthread_create(&b->t, NULL, bg_run, b), 0);
}

/* Fills the queue to the stopped peer with 1 MiB notes (numbered from *next). */
static size_t flood(ar_node_t *a, ar_pid_t to, uint64_t *next, size_t msg)
{
    return dn_flood(a, to, NOTE, msg, next, 1u << 30);
}

static long proc_long(const char *path, int field)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long v[3] = {0, 0, 0};
    int got = fscanf(f, "%ld %ld %ld", &v[0], &v[1], &v[2]);
    fclose(f);
    return got > field ? v[field] : 0;
}

/* What the kernel may hold beyond the queue: our send buffer at its largest, the stopped
 * peer's receive window (it read nothing since it stopped), and a margin. */
static size_t kernel_slack(void)
{
    return (size_t)proc_long("/proc/sys/net/ipv4/tcp_wmem", 2) +
           4 * (size_t)proc_long("/proc/sys/net/ipv4/tcp_rmem", 1) + (4u << 20);
}

/* ---- kill -9 -------------------------------------------------------------------------------------- */
Test(dist_os, kill_9_of_the_peer_fires_links_monitors_and_calls_then_a_new_peer_is_reached,
     .timeout = TH_TIMEOUT)
{
    peer_t p;
    peer_start(&p, DN_TICK_MS);
    ar_node_t *a = client(DN_TICK_MS, 0);
    ar_pid_t ping = dn_lookup(a, p.addr, "ping");
    th_await(dn_ev_count(&ev, AR_EV_NODE_UP, PEER_NAME) == 1);
    ping_check(a, ping);
    char s[AR_PID_STRLEN];
    cr_assert_eq(ar_pid_format(ping, s, sizeof s), 0);
    cr_assert_eq(strncmp(s, "<" PEER_NAME ".", strlen(PEER_NAME) + 2), 0,
                 "a peer's pid formats as \"%s\"", s);
    cr_assert(!ar_pid_is_local(a, ping));

    static dn_agent_t gl, gm, gk;
    ar_pid_t pl = dn_spawn_agent(a, &gl, true);
    ar_pid_t pm = dn_spawn_agent(a, &gm, false);
    ar_pid_t pk = dn_spawn_agent(a, &gk, false);
    dn_link(a, pl, ping);
    ar_ref_t ref = dn_monitor(a, pm, ping);
    dn_res_t ask = dn_ctl(a, pk, DC_ASK, (dn_cmd_t){.pid = ping, .tag = DELAY, .n = 2 * TH_WAIT_MS,
                                                    .text = "60000"});
    cr_assert_eq(ask.rc, 0);
    bg_t call;
    bg_start(&call, a, ping);
    th_await(peer_stats(a, ping).delays_waiting == 2); /* both are held at the peer */
    cr_assert_eq(th_log_len(&gl.log), 0);

    peer_signal(&p, SIGKILL);
    uint64_t t0 = th_now_ns();
    /* a send right after the kill returns at once */
    int rc = ar_send(a, ping, NOTE, "x", 1);
    double send_ms = th_ms_since(t0);
    cr_assert_eq(rc, 0, "%s", ar_err_name(rc));
    cr_assert_lt(send_ms, 100.0, "a send to a killed node took %.1f ms", send_ms);

    size_t i = dn_await_kind(&gl, AR_MSG_EXIT, ping);
    cr_assert_eq(gl.log.e[i].code, AR_NOCONNECTION, "link: %s",
                 ar_exit_code_name(gl.log.e[i].code));
    i = dn_await_kind(&gm, AR_MSG_DOWN, ping);
    cr_assert_eq(gm.log.e[i].ref, ref);
    cr_assert_eq(gm.log.e[i].code, AR_NOCONNECTION, "monitor: %s",
                 ar_exit_code_name(gm.log.e[i].code));
    i = dn_await_kind(&gk, AR_MSG_REPLY, AR_PID_NONE);
    cr_assert_eq(gk.log.e[i].ref, ask.ref);
    cr_assert_eq(gk.log.e[i].code, AR_NOCONNECTION, "pending ask: %s",
                 ar_exit_code_name(gk.log.e[i].code));
    th_await(atomic_load(&call.done));
    pthread_join(call.t, NULL);
    cr_assert_eq(call.rc, AR_ENOCONN, "pending call: %s", ar_err_name(call.rc));
    th_await(dn_ev_count(&ev, AR_EV_NODE_DOWN, PEER_NAME) == 1);
    double all_ms = 0;
    uint64_t t_down = dn_ev_time(&ev, AR_EV_NODE_DOWN, PEER_NAME, 0);
    all_ms = (double)((t_down > call.t_end ? t_down : call.t_end) - t0) / 1e6;
    cr_log_info("kill -9: send %.3f ms; call and NODE_DOWN within %.1f ms", send_ms, all_ms);
    cr_assert_lt(all_ms, 4 * DN_TICK_MS + DN_LOSS_MARGIN_MS, "node loss seen after %.0f ms",
                 all_ms);
    waitpid(p.pid, NULL, 0);
    close(p.out);

    /* a call to it now: AR_ENOCONN at once (nothing listens there any more) */
    ar_buf_t r = {0};
    uint64_t tc = th_now_ns();
    rc = ar_call(a, ping, PING, "ping", 4, &r, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOCONN, "call to the killed node: %s", ar_err_name(rc));
    cr_assert_lt(th_ms_since(tc), 2000.0);

    /* a fresh peer, same name: the next use connects, NODE_UP again; its pids are new */
    peer_t p2;
    peer_start(&p2, DN_TICK_MS);
    ar_pid_t ping2 = dn_lookup(a, p2.addr, "ping");
    th_await(dn_ev_count(&ev, AR_EV_NODE_UP, PEER_NAME) == 2);
    cr_assert(!ar_pid_eq(ping2, ping), "a new run of the peer has new pids");
    ping_check(a, ping2);
    r = (ar_buf_t){0};
    rc = ar_call(a, ping, PING, "ping", 4, &r, TH_WAIT_MS);
    cr_assert(rc == AR_ENOPROC || rc == AR_ENOCONN, "call to the old run's pid: %s",
              ar_err_name(rc));
    ar_ref_t ref2 = dn_monitor(a, pm, ping2);
    peer_end(&p2);
    i = dn_await_kind(&gm, AR_MSG_DOWN, ping2);
    cr_assert_eq(gm.log.e[i].ref, ref2);
    cr_assert_eq(gm.log.e[i].code, AR_NOCONNECTION);
    th_node_stop(a);
}

/* ---- SIGSTOP ------------------------------------------------------------------------------------ */
/* Back-pressure: a peer that stops reading. The ticks are 1 s here, so the 4 s of silence
 * that mean "down" are far longer than the test keeps the peer stopped. */
Test(dist_os, a_stopped_peer_gets_eagain_within_the_bound_then_everything_in_order,
     .timeout = TH_TIMEOUT)
{
    size_t limit = 8u << 20, msg = 1u << 20;
    peer_t p;
    peer_start(&p, 1000);
    ar_node_t *a = client(1000, limit);
    ar_pid_t ping = dn_lookup(a, p.addr, "ping");
    ping_check(a, ping);

    peer_signal(&p, SIGSTOP);
    uint64_t t_stop = th_now_ns();
    uint64_t next = 0;
    size_t taken = flood(a, ping, &next, msg);
    size_t slack = kernel_slack();
    cr_log_info("stopped peer: %zu MiB taken before EAGAIN (limit %zu MiB, kernel slack %zu "
                "MiB)", taken * msg >> 20, limit >> 20, slack >> 20);
    cr_assert_geq(taken * msg, limit, "EAGAIN before the limit was reached (%zu MiB)",
                  taken * msg >> 20);
    cr_assert_leq(taken * msg, limit + msg + slack, "%zu MiB taken", taken * msg >> 20);
    /* sends and calls stay refused while it is stopped; a signal still goes */
    cr_assert_eq(ar_send(a, ping, NOTE, "x", 1), AR_EAGAIN);
    ar_buf_t r = {0};
    cr_assert_eq(ar_call(a, ping, PING, "ping", 4, &r, 100), AR_EAGAIN);
    static dn_agent_t gm;
    ar_pid_t pm = dn_spawn_agent(a, &gm, false);
    dn_monitor(a, pm, ping);

    peer_signal(&p, SIGCONT);
    double stopped_ms = th_ms_since(t_stop);
    cr_log_info("the peer was stopped for %.0f ms", stopped_ms);
    cr_assert_lt(stopped_ms, 3000.0, "stopped too long for a 1 s tick: the test is too slow");

    /* everything taken arrives, in order, and nothing else */
    uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    stats_t st;
    for (;;) {
        st = peer_stats_retry(a, ping); /* a call: it waits behind the notes */
        if (st.notes >= taken || th_now_ns() > deadline) break;
    }
    cr_assert_eq(st.notes, taken, "%llu of %zu notes arrived", (unsigned long long)st.notes,
                 taken);
    cr_assert_eq(st.out_of_order, 0, "notes out of order");
    cr_assert_eq(st.bytes, taken * msg);
    /* and the queue takes sends again */
    cr_assert_eq(ar_send(a, ping, NOTE, &next, sizeof next), 0);
    cr_assert_eq(peer_stats(a, ping).notes, taken + 1);
    cr_assert_eq(dn_count_kind(&gm, AR_MSG_DOWN), 0, "a slow peer was taken for dead");
    cr_assert_eq(dn_ev_count(&ev, AR_EV_NODE_DOWN, NULL), 0);
    th_node_stop(a);
    peer_end(&p);
}

Test(dist_os, a_stopped_peer_killed_with_a_full_queue_is_node_loss, .timeout = TH_TIMEOUT)
{
    peer_t p;
    peer_start(&p, 1000);
    ar_node_t *a = client(1000, 4u << 20);
    ar_pid_t ping = dn_lookup(a, p.addr, "ping");
    static dn_agent_t gm;
    ar_pid_t pm = dn_spawn_agent(a, &gm, false);
    ar_ref_t ref = dn_monitor(a, pm, ping);
    ping_check(a, ping); /* the monitor is at the peer */
    peer_signal(&p, SIGSTOP);
    uint64_t next = 0;
    flood(a, ping, &next, 1u << 20);
    peer_signal(&p, SIGKILL);
    uint64_t t0 = th_now_ns();
    size_t i = dn_await_kind(&gm, AR_MSG_DOWN, ping);
    double ms = th_ms_since(t0);
    cr_assert_eq(gm.log.e[i].ref, ref);
    cr_assert_eq(gm.log.e[i].code, AR_NOCONNECTION, "%s", ar_exit_code_name(gm.log.e[i].code));
    th_await(dn_ev_count(&ev, AR_EV_NODE_DOWN, PEER_NAME) == 1);
    cr_log_info("SIGKILL of a stopped peer with a full queue: DOWN after %.1f ms", ms);
    cr_assert_lt(ms, 4 * 1000 + DN_LOSS_MARGIN_MS);
    /* the queue is gone with the connection: sends are taken (and dropped) at once */
    uint64_t ts = th_now_ns();
    cr_assert_eq(ar_send(a, ping, NOTE, "x", 1), 0);
    cr_assert_lt(th_ms_since(ts), 100.0);
    th_node_stop(a);
    peer_end(&p);
}

Test(dist_os, a_node_stop_with_a_blocked_peer_finishes_within_its_timeout, .timeout = TH_TIMEOUT)
{
    peer_t p;
    peer_start(&p, 1000);
    ar_node_t *a = client(1000, 4u << 20);
    ar_pid_t ping = dn_lookup(a, p.addr, "ping");
    ping_check(a, ping);
    /* a call pending on it too */
    bg_t call;
    bg_start(&call, a, ping);
    th_await(peer_stats(a, ping).delays_waiting == 1);
    peer_signal(&p, SIGSTOP);
    uint64_t next = 0;
    flood(a, ping, &next, 1u << 20);
    uint64_t t0 = th_now_ns();
    int rc = ar_node_stop(a, 2000);
    double ms = th_ms_since(t0);
    cr_log_info("stop with a stopped peer and a full queue: %s after %.0f ms", ar_err_name(rc), ms);
    cr_assert(rc == 0 || rc == AR_ETIMEDOUT, "%s", ar_err_name(rc));
    cr_assert_lt(ms, 2000.0 + 1000.0, "ar_node_stop(2000) took %.0f ms", ms);
    th_await(atomic_load(&call.done));
    pthread_join(call.t, NULL);
    cr_assert_neq(call.rc, 0, "the pending call cannot have succeeded");
    peer_end(&p);
}

/* A peer that stops answering (SIGSTOP) with the short tick: down after 4 ticks with
 * AR_NOCONNECTION everywhere; once it runs again, the next use reconnects to the same run
 * of it, whose pids are still good. (No link to ping here: its half at the peer would
 * fire too once the peer sees the loss, and end ping.) */
Test(dist_os, a_frozen_peer_is_down_after_four_ticks_and_comes_back, .timeout = TH_TIMEOUT)
{
    peer_t p;
    peer_start(&p, DN_TICK_MS);
    ar_node_t *a = client(DN_TICK_MS, 0);
    ar_pid_t ping = dn_lookup(a, p.addr, "ping");
    static dn_agent_t gm;
    ar_pid_t pm = dn_spawn_agent(a, &gm, false);
    ar_ref_t ref = dn_monitor(a, pm, ping);
    bg_t call;
    bg_start(&call, a, ping);
    th_await(peer_stats(a, ping).delays_waiting == 1);

    peer_signal(&p, SIGSTOP);
    uint64_t t0 = th_now_ns();
    size_t i = dn_await_kind(&gm, AR_MSG_DOWN, ping);
    cr_assert_eq(gm.log.e[i].ref, ref);
    cr_assert_eq(gm.log.e[i].code, AR_NOCONNECTION);
    th_await(atomic_load(&call.done));
    pthread_join(call.t, NULL);
    cr_assert_eq(call.rc, AR_ENOCONN, "%s", ar_err_name(call.rc));
    th_await(dn_ev_count(&ev, AR_EV_NODE_DOWN, PEER_NAME) == 1);
    double ms = (double)(dn_ev_time(&ev, AR_EV_NODE_DOWN, PEER_NAME, 0) - t0) / 1e6;
    cr_log_info("frozen peer: NODE_DOWN after %.0f ms", ms);
    cr_assert(ms >= 2 * DN_TICK_MS, "down after %.0f ms: sooner than 4 ticks allow", ms);
    cr_assert_lt(ms, 4 * DN_TICK_MS + DN_LOSS_MARGIN_MS, "down after %.0f ms", ms);

    peer_signal(&p, SIGCONT);
    /* the same run of the peer: its pid still works once reconnected */
    uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    ar_buf_t r = {0};
    int rc;
    while ((rc = ar_call(a, ping, PING, "ping", 4, &r, TH_WAIT_MS)) != 0) {
        cr_assert(th_now_ns() < deadline, "no reconnect: %s", ar_err_name(rc));
        th_nap();
    }
    ar_buf_free(&r);
    th_await(dn_ev_count(&ev, AR_EV_NODE_UP, PEER_NAME) == 2);
    /* the DELAY call the loss cut off is still held there: the peer's run went on */
    cr_assert_eq(peer_stats(a, ping).delays_waiting, 1);
    th_node_stop(a);
    peer_end(&p);
}
