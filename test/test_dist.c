/* Distribution between nodes inside one test process (include/arbor.h "Distribution",
 * SEMANTICS.md §6): configuration rules, connecting, remote send, call, ask and deferred
 * replies (from a thread, a process, a third node), links, monitors, demonitor, exit
 * signals and trap_exit across nodes, ar_whereis_remote, pids as values (ar_pid_eq, raw
 * bytes passed on to a third node, ar_pid_format), per-pair order under load, a 16 MiB
 * message beside small ones, a message over the receiver's bound, node loss (a stopped
 * peer, a silent peer), a restarted peer (a new incarnation), a stop with calls pending on
 * a live peer, wrong cookies, the cookie kept out of every log, and bad input from plain
 * sockets (garbage, truncated, oversized, handshake skipped, deep nesting, a reader that
 * never reads).
 *
 * Every node listens on 127.0.0.1:0 with the cookie DN_COOKIE and a 100 ms tick; what
 * happens on the far side is awaited on the event itself (a log entry, a counter, a
 * node event) with a generous bound.
 *
 * The bad-input tests speak the wire by hand, so they use two internals: wire.h (frames
 * and the handshake state machine, to be an authenticated peer that then misbehaves) and
 * ar__node_id_of (a node's pids carry a hash of its name, which a peer must match). */
#include "dist_helpers.h"

#include "../runtime/dist/wire.h"

#include <sys/stat.h>

/* ---- shared pieces --------------------------------------------------------------------- */
static dn_evlog_t ev_a, ev_b, ev_c;

/* Two connected nodes, dist_a and dist_b, each recording its node events. */
static void pair(ar_node_t **a, ar_node_t **b)
{
    *a = dn_node("dist_a");
    *b = dn_node("dist_b");
    dn_evlog_attach(*a, &ev_a);
    dn_evlog_attach(*b, &ev_b);
    dn_connect(*a, *b);
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_b") == 1);
    th_await(dn_ev_count(&ev_b, AR_EV_NODE_UP, "dist_a") == 1);
}

static void stop_all(ar_node_t *a, ar_node_t *b)
{
    if (b) th_node_stop(b);
    if (a) th_node_stop(a);
}

static ar_pid_t spawn_echo(ar_node_t *node, th_echo_state_t *st)
{
    memset(st, 0, sizeof *st);
    return th_spawn(node, &th_echo, st);
}

static void expect_entry(dn_agent_t *ag, size_t i, ar_msg_kind_t kind, ar_pid_t from,
                         ar_exit_code_t code, const char *text)
{
    cr_assert_lt(i, th_log_len(&ag->log));
    const th_entry_t *e = &ag->log.e[i];
    char f1[AR_PID_STRLEN], f2[AR_PID_STRLEN];
    cr_assert_eq(e->kind, kind, "entry %zu: kind %d, expected %d", i, e->kind, kind);
    cr_assert(ar_pid_eq(e->from, from), "entry %zu: from %s, expected %s", i,
              dn_fmt(e->from, f1), dn_fmt(from, f2));
    cr_assert_eq(e->code, code, "entry %zu: reason %s, expected %s", i,
                 ar_exit_code_name(e->code), ar_exit_code_name(code));
    if (text)
        cr_assert(strcmp(ag->text[i], text) == 0, "entry %zu: reason text \"%s\", expected \"%s\"",
                  i, ag->text[i], text);
}

/* A node's own config errors: ar_node_start(cfg) must fail with want and leave *out. */
static void expect_start_fails(ar_node_config_t *cfg, int want, const char *what)
{
    cfg->crash_reports_off = true;
    ar_node_t *n = NULL;
    int rc = ar_node_start(cfg, &n);
    if (rc == 0 && n) ar_node_stop(n, TH_STOP_MS);
    cr_assert_eq(rc, want, "%s: ar_node_start gave %s, expected %s", what, ar_err_name(rc),
                 ar_err_name(want));
    cr_assert_null(n, "%s: no node on failure", what);
}

/* ---- configuration ----------------------------------------------------------------------- */
Test(dist, a_listening_node_needs_a_valid_name_and_a_cookie, .timeout = TH_TIMEOUT)
{
    ar_node_config_t cfg;

    dn_config(&cfg, "nocookie", NULL);
    cfg.cookie = NULL;
    expect_start_fails(&cfg, AR_EINVAL, "listen without a cookie");

    dn_config(&cfg, "emptycookie", NULL);
    cfg.cookie = "";
    expect_start_fails(&cfg, AR_EINVAL, "listen with an empty cookie");

    dn_config(&cfg, NULL, NULL);
    expect_start_fails(&cfg, AR_EINVAL, "listen without a name");

    static const char *const bad_names[] = {
        "", "has space", "slash/name", "dot.name", "colon:name", "quote\"",
        "n123456789012345678901234567890123456789", /* 40 bytes: one too many */
    };
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "name \"%s\"", bad_names[i]);
        dn_config(&cfg, bad_names[i], NULL);
        expect_start_fails(&cfg, AR_EINVAL, what);
    }

    static const char *const bad_listen[] = {"nonsense", "127.0.0.1", "127.0.0.1:",
                                             "127.0.0.1:99999", "127.0.0.1:-1",
                                             "300.1.2.3:0", ":0"};
    for (size_t i = 0; i < sizeof bad_listen / sizeof bad_listen[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "listen \"%s\"", bad_listen[i]);
        dn_config(&cfg, "badlisten", &(dn_opts_t){.listen = bad_listen[i]});
        expect_start_fails(&cfg, AR_EINVAL, what);
    }

    /* the longest valid name, and every allowed character */
    ar_node_t *n = dn_node("n12345678901234567890123456789012345678");
    cr_assert_str_eq(ar_node_name(n), "n12345678901234567890123456789012345678");
    th_node_stop(n);
    n = dn_node("Az09_@-");
    cr_assert_str_eq(ar_node_name(n), "Az09_@-");
    th_node_stop(n);
}

Test(dist, a_taken_listen_address_fails_the_start, .timeout = TH_TIMEOUT)
{
    int fd;
    int port = dn_mute_listener(&fd);
    char listen_at[DN_ADDR_MAX];
    snprintf(listen_at, sizeof listen_at, "127.0.0.1:%d", port);
    ar_node_config_t cfg;
    dn_config(&cfg, "taken", &(dn_opts_t){.listen = listen_at});
    cfg.crash_reports_off = true;
    ar_node_t *n = NULL;
    int rc = ar_node_start(&cfg, &n);
    if (rc == 0) ar_node_stop(n, TH_STOP_MS);
    cr_assert_lt(rc, 0, "a node cannot listen where another socket does (got %s)",
                 ar_err_name(rc));
    close(fd);
}

Test(dist, address_and_name_of_a_node, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a");
    char buf[DN_ADDR_MAX];
    dn_addr(a, buf);
    cr_assert_eq(strncmp(buf, "127.0.0.1:", 10), 0, "address \"%s\"", buf);
    int port = dn_port(a);
    cr_assert(port > 0 && port < 65536, "port %d chosen for port 0", port);
    cr_assert_str_eq(ar_node_name(a), "dist_a");

    char tiny[8];
    cr_assert_eq(ar_node_address(a, tiny, sizeof tiny), AR_E2BIG);
    cr_assert_lt(ar_node_address(a, NULL, 0), 0);

    /* the port really is the one it listens on */
    int fd = dn_sock_connect(port);
    close(fd);

    /* a named node that does not listen, and a node without a name */
    ar_node_t *c = dn_node_opts("client_only", &(dn_opts_t){.listen = ""});
    cr_assert_eq(ar_node_address(c, buf, sizeof buf), AR_ENOENT);
    cr_assert_str_eq(ar_node_name(c), "client_only");
    ar_node_t *l = th_node(1);
    cr_assert_str_eq(ar_node_name(l), "local");
    cr_assert_eq(ar_node_address(l, buf, sizeof buf), AR_ENOENT);
    th_node_stop(l);
    th_node_stop(c);
    th_node_stop(a);
}

Test(dist, connect_errors, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a");
    char addr[DN_ADDR_MAX];
    dn_addr(a, addr);

    /* a node without a name cannot connect */
    ar_node_t *l = th_node(1);
    cr_assert_eq(ar_node_connect(l, addr, TH_WAIT_MS), AR_EINVAL);
    th_node_stop(l);

    ar_node_t *c = dn_node("dist_c");
    static const char *const bad[] = {"", "nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0",
                                      "127.0.0.1:70000", "127.0.0.1:x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = ar_node_connect(c, bad[i], TH_WAIT_MS);
        if (strcmp(bad[i], "127.0.0.1:0") == 0) /* a well-formed address nobody can listen on */
            cr_assert(rc == AR_EINVAL || rc == AR_ENOCONN, "connect \"%s\": %s", bad[i],
                      ar_err_name(rc));
        else
            cr_assert_eq(rc, AR_EINVAL, "connect \"%s\": %s", bad[i], ar_err_name(rc));
    }
    cr_assert_eq(ar_node_connect(c, NULL, TH_WAIT_MS), AR_EINVAL);
    cr_assert_eq(ar_node_connect(NULL, addr, TH_WAIT_MS), AR_EINVAL);
    cr_assert_eq(ar_node_connect(c, addr, -5), AR_EINVAL);

    /* nothing listening: refused, at once */
    int dead_fd;
    char dead[DN_ADDR_MAX];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", dn_dead_port(&dead_fd));
    uint64_t t0 = th_now_ns();
    int rc = ar_node_connect(c, dead, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOCONN, "connect to a closed port: %s", ar_err_name(rc));
    cr_assert_lt(th_ms_since(t0), 2000.0, "a refused connection is reported at once");

    /* a listener that never answers the handshake: the timeout */
    int mute_fd;
    char mute[DN_ADDR_MAX];
    snprintf(mute, sizeof mute, "127.0.0.1:%d", dn_mute_listener(&mute_fd));
    t0 = th_now_ns();
    rc = ar_node_connect(c, mute, 300);
    double ms = th_ms_since(t0);
    cr_assert_eq(rc, AR_ETIMEDOUT, "connect to a mute listener: %s", ar_err_name(rc));
    cr_assert(ms >= 250.0 && ms < 3000.0, "the timeout of 300 ms took %.0f ms", ms);

    /* and then a real one works, twice (the second is already connected) */
    cr_assert_eq(ar_node_connect(c, addr, TH_WAIT_MS), 0);
    cr_assert_eq(ar_node_connect(c, addr, TH_WAIT_MS), 0);
    close(dead_fd);
    close(mute_fd);
    stop_all(a, c);
}

/* ---- messages ------------------------------------------------------------------------------- */
static th_log_t rec_b, rec_c, rec_a;

Test(dist, remote_send_arrives_with_its_sender_tag_and_payload, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    ar_pid_t rb = th_spawn(b, &th_recorder, &rec_b);
    cr_assert(!ar_pid_is_local(a, rb) && ar_pid_is_local(b, rb));

    th_send(a, rb, 7, "hello", 5); /* from the test thread: from no process */
    static dn_agent_t ag;
    ar_pid_t pa = dn_spawn_agent(a, &ag, false);
    dn_res_t r = dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = rb, .tag = 8, .text = "from agent"});
    cr_assert_eq(r.rc, 0, "ar_send from a process: %s", ar_err_name(r.rc));
    th_send(a, rb, 9, NULL, 0); /* an empty payload */

    cr_assert_eq(th_sync(a, rb), 3);
    const th_entry_t *e = rec_b.e;
    cr_assert(e[0].kind == AR_MSG_CAST && e[0].tag == 7 && e[0].len == 5);
    cr_assert_str_eq(e[0].data, "hello");
    cr_assert(ar_pid_is_none(e[0].from), "a send from outside any process has no sender");
    cr_assert(e[1].kind == AR_MSG_CAST && e[1].tag == 8 && e[1].len == 10);
    cr_assert_str_eq(e[1].data, "from agent");
    cr_assert(ar_pid_eq(e[1].from, pa), "m->from is the sending process's pid");
    cr_assert(e[2].kind == AR_MSG_CAST && e[2].tag == 9 && e[2].len == 0);

    stop_all(a, b);
}

Test(dist, replies_go_back_to_a_received_pid, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    /* a -> b, then b answers to the from it saw */
    dn_res_t r = dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_DATA, .text = "ping"});
    cr_assert_eq(r.rc, 0);
    size_t i = dn_await_kind(&gb, AR_MSG_CAST, pa);
    ar_pid_t seen = gb.log.e[i].from;
    r = dn_ctl(b, pb, DC_SEND, (dn_cmd_t){.pid = seen, .tag = DT_DATA, .text = "pong"});
    cr_assert_eq(r.rc, 0);
    i = dn_await_kind(&ga, AR_MSG_CAST, pb);
    cr_assert_str_eq(ga.log.e[i].data, "pong");
    stop_all(a, b);
}

Test(dist, a_node_that_does_not_listen_is_reached_over_the_connection_it_opened,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *b = dn_node("dist_b");
    ar_node_t *c = dn_node_opts("dist_c", &(dn_opts_t){.listen = ""});
    dn_connect(c, b);
    ar_pid_t rc_pid = th_spawn(c, &th_recorder, &rec_c);
    static dn_agent_t gb;
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    dn_res_t r = dn_ctl(b, pb, DC_SEND, (dn_cmd_t){.pid = rc_pid, .tag = 5, .text = "to c"});
    cr_assert_eq(r.rc, 0);
    th_await(th_log_len(&rec_c) == 1);
    cr_assert_str_eq(rec_c.e[0].data, "to c");
    cr_assert(ar_pid_eq(rec_c.e[0].from, pb));
    /* and a call from b to c's echo */
    th_echo_state_t st;
    ar_pid_t ec = spawn_echo(c, &st);
    th_echo_check(b, ec);
    stop_all(b, c);
}

Test(dist, three_nodes_all_talk_to_each_other, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a"), *b = dn_node("dist_b"), *c = dn_node("dist_c");
    dn_evlog_attach(a, &ev_a);
    dn_evlog_attach(b, &ev_b);
    dn_evlog_attach(c, &ev_c);
    dn_connect(a, b);
    dn_connect(b, c);
    dn_connect(c, a);
    ar_pid_t r[3] = {th_spawn(a, &th_recorder, &rec_a), th_spawn(b, &th_recorder, &rec_b),
                     th_spawn(c, &th_recorder, &rec_c)};
    ar_node_t *n[3] = {a, b, c};
    for (int from = 0; from < 3; from++)
        for (int to = 0; to < 3; to++)
            if (from != to) th_send(n[from], r[to], (uint32_t)(from * 10 + to), "x", 1);
    th_await(th_log_len(&rec_a) == 2 && th_log_len(&rec_b) == 2 && th_log_len(&rec_c) == 2);
    th_log_t *logs[3] = {&rec_a, &rec_b, &rec_c};
    for (int to = 0; to < 3; to++) {
        uint32_t seen = 0;
        for (int k = 0; k < 2; k++) {
            uint32_t tag = logs[to]->e[k].tag;
            cr_assert_eq(tag % 10, (uint32_t)to, "node %d got a message for %u", to, tag % 10);
            seen |= 1u << (tag / 10);
        }
        cr_assert_eq(seen, 7u & ~(1u << to), "node %d heard from both others", to);
    }
    /* each sees the two others come up, once */
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_b") == 1 &&
             dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_c") == 1);
    th_await(dn_ev_count(&ev_b, AR_EV_NODE_UP, "dist_a") == 1 &&
             dn_ev_count(&ev_b, AR_EV_NODE_UP, "dist_c") == 1);
    th_await(dn_ev_count(&ev_c, AR_EV_NODE_UP, "dist_a") == 1 &&
             dn_ev_count(&ev_c, AR_EV_NODE_UP, "dist_b") == 1);
    th_node_stop(c);
    stop_all(a, b);
}

/* ---- calls, asks, deferred replies ------------------------------------------------------------ */
Test(dist, remote_call_from_a_thread_and_from_a_process, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    th_echo_state_t st;
    ar_pid_t eb = spawn_echo(b, &st);
    th_echo_check(a, eb);

    static dn_agent_t ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    dn_res_t r = dn_ctl(a, pa, DC_CALL,
                        (dn_cmd_t){.pid = eb, .tag = DT_ECHO, .n = TH_WAIT_MS, .text = "abc"});
    cr_assert_eq(r.rc, 0, "ar_call from a process: %s", ar_err_name(r.rc));
    cr_assert_eq(r.len, 3);
    cr_assert_arr_eq(r.data, "abc", 3);

    /* a request and a reply larger than one wire fragment, both ways */
    size_t big = 3 * AR__FRAG_SLICE + 12345;
    unsigned char *q = malloc(big);
    for (size_t i = 0; i < big; i++) q[i] = (unsigned char)(i * 31 + 7);
    ar_buf_t rep = {0};
    int rc = ar_call(a, eb, DT_ECHO, q, big, &rep, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "a large call: %s", ar_err_name(rc));
    cr_assert_eq(rep.len, big);
    cr_assert(memcmp(rep.data, q, big) == 0, "the large reply is the request, byte for byte");
    ar_buf_free(&rep);
    free(q);
    cr_assert_eq(atomic_load(&st.calls), 3);
    stop_all(a, b);
}

Test(dist, remote_call_to_a_dead_pid_is_enoproc_at_once, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t gb;
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    dn_act(b, pb, DC_STOP, (dn_cmd_t){.code = AR_NORMAL});
    dn_await_end(&gb);
    th_await(!th_proc_alive(b, pb));
    ar_buf_t r = {0};
    uint64_t t0 = th_now_ns();
    int rc = ar_call(a, pb, DT_ECHO, "x", 1, &r, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOPROC, "call to a dead remote pid: %s", ar_err_name(rc));
    cr_assert_lt(th_ms_since(t0), 2000.0, "ENOPROC comes at once, not after the timeout");

    /* a callee that dies before answering: ENOPROC too, at once */
    static dn_agent_t gb2;
    ar_pid_t pb2 = dn_spawn_agent(b, &gb2, false);
    dn_bg_call_t call;
    dn_bg_call_start(&call, a, pb2, DT_ECHO /* not a command: logged, never answered */,
                     TH_WAIT_MS);
    dn_await_kind(&gb2, AR_MSG_CALL, AR_PID_NONE);
    t0 = th_now_ns();
    dn_crash(b, pb2, "dies holding a call");
    dn_bg_call_join(&call);
    cr_assert_eq(call.rc, AR_ENOPROC, "callee died: %s", ar_err_name(call.rc));
    cr_assert_lt((double)(call.t_end_ns - t0) / 1e6, 2000.0);
    stop_all(a, b);
}

Test(dist, remote_call_times_out_and_its_late_reply_never_shows_up, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_holder_t h;
    ar_pid_t hb = dn_spawn_holder(b, &h);
    static dn_agent_t ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);

    uint64_t t0 = th_now_ns();
    ar_buf_t r = {0};
    int rc = ar_call(a, hb, 2, "q", 1, &r, 200);
    double ms = th_ms_since(t0);
    cr_assert_eq(rc, AR_ETIMEDOUT, "%s", ar_err_name(rc));
    cr_assert(ms >= 190.0 && ms < 3000.0, "a 200 ms timeout took %.0f ms", ms);

    dn_res_t res = dn_ctl(a, pa, DC_CALL, (dn_cmd_t){.pid = hb, .tag = 2, .n = 200, .text = "q"});
    cr_assert_eq(res.rc, AR_ETIMEDOUT, "from a process: %s", ar_err_name(res.rc));
    th_await(atomic_load(&h.held) == 2);

    /* now both late replies go out; an echo call behind them on the same connection */
    th_send(b, hb, DT_RELEASE, "late", 4);
    dn_echo_check(a, hb);
    cr_assert_eq(atomic_load(&h.answered), 2);
    cr_assert_eq(atomic_load(&h.reply_rc), 0, "ar_reply to a caller that gave up is 0");
    th_sync(a, pa);
    cr_assert_eq(dn_count_kind(&ga, AR_MSG_REPLY), 0, "a late reply reached the caller");
    cr_assert_eq(th_log_len(&ga.log), 0);
    stop_all(a, b);
}

Test(dist, remote_ask_gets_exactly_one_reply_with_its_ref, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    th_echo_state_t st;
    ar_pid_t eb = spawn_echo(b, &st);
    static dn_holder_t h;
    ar_pid_t hb = dn_spawn_holder(b, &h);
    static dn_agent_t ga, gdead;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t dead = dn_spawn_agent(b, &gdead, false);
    dn_act(b, dead, DC_STOP, (dn_cmd_t){.code = AR_NORMAL});
    dn_await_end(&gdead);
    th_await(!th_proc_alive(b, dead));

    dn_res_t ok = dn_ctl(a, pa, DC_ASK, (dn_cmd_t){.pid = eb, .tag = DT_ECHO, .n = TH_WAIT_MS,
                                                   .text = "ask me"});
    cr_assert_eq(ok.rc, 0);
    cr_assert_neq(ok.ref, 0);
    dn_res_t gone = dn_ctl(a, pa, DC_ASK, (dn_cmd_t){.pid = dead, .tag = DT_ECHO,
                                                     .n = TH_WAIT_MS, .text = "anyone?"});
    cr_assert_eq(gone.rc, 0);
    dn_res_t slow = dn_ctl(a, pa, DC_ASK, (dn_cmd_t){.pid = hb, .tag = DT_MARKER, .n = 200,
                                                     .text = "slow"});
    cr_assert_eq(slow.rc, 0);
    cr_assert(ok.ref != gone.ref && gone.ref != slow.ref && ok.ref != slow.ref);

    th_await(dn_count_kind(&ga, AR_MSG_REPLY) == 3);
    for (size_t i = 0; i < 3; i++) {
        const th_entry_t *e = &ga.log.e[i];
        if (e->ref == ok.ref) {
            cr_assert_eq(e->code, AR_NORMAL);
            cr_assert_str_eq(e->data, "ask me");
        } else if (e->ref == gone.ref) {
            cr_assert_eq(e->code, AR_NOPROC, "ask of a dead remote pid: %s",
                         ar_exit_code_name(e->code));
        } else {
            cr_assert_eq(e->ref, slow.ref, "a REPLY with an unknown ref");
            cr_assert_eq(e->code, AR_TIMEOUT, "ask that timed out: %s",
                         ar_exit_code_name(e->code));
        }
    }
    /* the slow one's late answer is not a second REPLY */
    th_await(atomic_load(&h.held) == 1);
    th_send(b, hb, DT_RELEASE, "late", 4);
    dn_echo_check(a, hb);
    th_sync(a, pa);
    cr_assert_eq(dn_count_kind(&ga, AR_MSG_REPLY), 3, "one REPLY per ask");
    stop_all(a, b);
}

/* Many asks outstanding at once across one connection, all answered at the end. */
#define MANY_ASKS 10000
typedef struct bulk {
    ar_pid_t target;
    ar_ref_t refs[MANY_ASKS];
    unsigned char seen[MANY_ASKS];
    atomic_int asked, replies, unknown, dup, failed;
    atomic_int held;
    ar_reply_to_t rt[MANY_ASKS];
} bulk_t;

static int cmp_ref(const void *x, const void *y)
{
    ar_ref_t a = *(const ar_ref_t *)x, b = *(const ar_ref_t *)y;
    return a < b ? -1 : a > b;
}

static void asker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    bulk_t *k = state;
    if (m->kind == AR_MSG_CAST) {
        for (int i = 0; i < MANY_ASKS; i++) {
            int rc = ar_ask(self, k->target, 1, &i, sizeof i, TH_WAIT_MS, &k->refs[i]);
            if (rc != 0) atomic_fetch_add(&k->failed, 1);
        }
        qsort(k->refs, MANY_ASKS, sizeof k->refs[0], cmp_ref);
        atomic_store(&k->asked, MANY_ASKS);
    } else if (m->kind == AR_MSG_REPLY) {
        ar_ref_t *hit = bsearch(&m->ref, k->refs, MANY_ASKS, sizeof k->refs[0], cmp_ref);
        if (!hit || m->reason.code != AR_NORMAL) atomic_fetch_add(&k->unknown, 1);
        else if (k->seen[hit - k->refs]++) atomic_fetch_add(&k->dup, 1);
        atomic_fetch_add(&k->replies, 1);
    }
}

static void bulk_holder_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    bulk_t *k = state;
    if (m->kind != AR_MSG_CALL) return;
    int i = atomic_load(&k->held);
    k->rt[i] = m->reply_to;
    atomic_store(&k->held, ++i);
    if (i == MANY_ASKS) /* everyone is waiting: answer all, last first */
        for (int j = MANY_ASKS - 1; j >= 0; j--) ar_reply(ar_node(self), k->rt[j], "ok", 2);
}

static const ar_behaviour_t asker_b = {"asker", dn_holder_init, asker_handle, NULL};
static const ar_behaviour_t bulk_holder_b = {"bulk_holder", dn_holder_init, bulk_holder_handle,
                                             NULL};

Test(dist, ten_thousand_asks_outstanding_across_a_connection, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static bulk_t k;
    k.target = th_spawn(b, &bulk_holder_b, &k);
    ar_pid_t asker = th_spawn(a, &asker_b, &k);
    th_send(a, asker, DT_DATA, NULL, 0);
    th_await(atomic_load(&k.replies) == MANY_ASKS);
    cr_assert_eq(atomic_load(&k.failed), 0);
    cr_assert_eq(atomic_load(&k.unknown), 0, "replies with an unknown ref or a failure");
    cr_assert_eq(atomic_load(&k.dup), 0, "two replies for one ask");
    stop_all(a, b);
}

Test(dist, a_deferred_reply_from_another_thread_or_process_reaches_the_remote_caller,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_holder_t h;
    ar_pid_t hb = dn_spawn_holder(b, &h);

    /* 1: the holder keeps reply_to; the test thread (no process) answers on node b */
    dn_bg_call_t c1;
    dn_bg_call_start(&c1, a, hb, 2, TH_WAIT_MS);
    th_await(atomic_load_explicit(&h.held, memory_order_acquire) == 1);
    cr_assert(!atomic_load(&c1.done), "the call waits for its deferred reply");
    int rc = ar_reply(b, h.rt[0], "from a thread", 13);
    cr_assert_eq(rc, 0);
    th_await(atomic_load(&c1.done));
    cr_assert_eq(c1.rc, 0, "%s", ar_err_name(c1.rc));
    cr_assert_eq(c1.reply.len, 13);
    cr_assert_arr_eq(c1.reply.data, "from a thread", 13);
    dn_bg_call_join(&c1);

    /* 2: the holder process answers later, on a cast */
    atomic_store(&h.answered, 1);
    dn_bg_call_t c2;
    dn_bg_call_start(&c2, a, hb, 2, TH_WAIT_MS);
    th_await(atomic_load(&h.held) == 2);
    th_send(b, hb, DT_RELEASE, "released", 8);
    th_await(atomic_load(&c2.done));
    cr_assert_eq(c2.rc, 0, "%s", ar_err_name(c2.rc));
    cr_assert_eq(c2.reply.len, 8);
    cr_assert_arr_eq(c2.reply.data, "released", 8);
    dn_bg_call_join(&c2);

    /* 3: the reply_to handed to a third node, which answers from there */
    ar_node_t *c = dn_node("dist_c");
    dn_connect(c, a);
    dn_bg_call_t c3;
    dn_bg_call_start(&c3, a, hb, 2, TH_WAIT_MS);
    th_await(atomic_load(&h.held) == 3);
    rc = ar_reply(c, h.rt[2], "from c", 6);
    cr_assert_eq(rc, 0, "ar_reply from a third node: %s", ar_err_name(rc));
    th_await(atomic_load(&c3.done));
    cr_assert_eq(c3.rc, 0, "%s", ar_err_name(c3.rc));
    cr_assert_eq(c3.reply.len, 6);
    cr_assert_arr_eq(c3.reply.data, "from c", 6);
    dn_bg_call_join(&c3);

    /* a second answer to an answered call is 0 and goes nowhere */
    cr_assert_eq(ar_reply(b, h.rt[0], "again", 5), 0);
    th_node_stop(c);
    stop_all(a, b);
}

/* ---- links ----------------------------------------------------------------------------------------- */
Test(dist, a_remote_crash_reaches_a_linked_trapping_process_with_its_reason,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, true);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    dn_link(a, pa, pb);
    /* the link is in place at b once a message sent after it has arrived */
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_await_kind(&gb, AR_MSG_CAST, pa);
    dn_crash(b, pb, "boom");
    size_t i = dn_await_kind(&ga, AR_MSG_EXIT, pb);
    expect_entry(&ga, i, AR_MSG_EXIT, pb, AR_ERROR, "boom");
    cr_assert_eq(atomic_load(&ga.log.terminates), 0, "a trapping process lives on");
    stop_all(a, b);
}

Test(dist, a_local_crash_reaches_a_linked_remote_trapping_process, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, true);
    dn_link(b, pb, pa); /* linked from b's side */
    dn_ctl(b, pb, DC_SEND, (dn_cmd_t){.pid = pa, .tag = DT_MARKER});
    dn_await_kind(&ga, AR_MSG_CAST, pb);
    dn_crash(a, pa, "bang");
    size_t i = dn_await_kind(&gb, AR_MSG_EXIT, pa);
    expect_entry(&gb, i, AR_MSG_EXIT, pa, AR_ERROR, "bang");
    stop_all(a, b);
}

Test(dist, a_link_is_both_ways_across_nodes, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, true);
    dn_link(a, pa, pb); /* linked from a's side; a's end dies */
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_await_kind(&gb, AR_MSG_CAST, pa);
    dn_crash(a, pa, "linker dies");
    size_t i = dn_await_kind(&gb, AR_MSG_EXIT, pa);
    expect_entry(&gb, i, AR_MSG_EXIT, pa, AR_ERROR, "linker dies");
    stop_all(a, b);
}

Test(dist, a_remote_crash_kills_a_linked_process_that_does_not_trap, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    dn_link(a, pa, pb);
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_await_kind(&gb, AR_MSG_CAST, pa);
    dn_crash(b, pb, "contagious");
    dn_await_end(&ga);
    cr_assert_eq(ga.log.why, AR_ERROR, "dies with the same reason, not %s",
                 ar_exit_code_name(ga.log.why));
    cr_assert_str_eq(ga.log.why_text, "contagious");
    th_await(!th_proc_alive(a, pa));
    stop_all(a, b);
}

Test(dist, a_normal_remote_end_does_not_kill_a_linked_process, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gt, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false); /* linked, not trapping */
    ar_pid_t pt = dn_spawn_agent(a, &gt, true);  /* linked, trapping */
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    dn_link(a, pa, pb);
    dn_link(a, pt, pb);
    ar_ref_t ref = dn_monitor(a, pa, pb);
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_ctl(a, pt, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    th_await(th_log_len(&gb.log) == 2);
    dn_act(b, pb, DC_STOP, (dn_cmd_t){.code = AR_NORMAL});
    size_t i = dn_await_kind(&gt, AR_MSG_EXIT, pb);
    expect_entry(&gt, i, AR_MSG_EXIT, pb, AR_NORMAL, NULL);
    i = dn_await_kind(&ga, AR_MSG_DOWN, pb); /* after any EXIT of pb (links go first) */
    cr_assert_eq(ga.log.e[i].ref, ref);
    cr_assert_eq(ga.log.e[i].code, AR_NORMAL);
    th_sync(a, pa);
    cr_assert_eq(atomic_load(&ga.log.terminates), 0, "a normal exit through a link is dropped");
    stop_all(a, b);
}

Test(dist, after_unlink_a_remote_crash_cannot_touch_the_caller, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    dn_link(a, pa, pb);
    ar_ref_t ref = dn_monitor(a, pa, pb);
    dn_res_t r = dn_ctl(a, pa, DC_UNLINK, (dn_cmd_t){.pid = pb});
    cr_assert_eq(r.rc, 0);
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_await_kind(&gb, AR_MSG_CAST, pa);
    dn_crash(b, pb, "after unlink");
    size_t i = dn_await_kind(&ga, AR_MSG_DOWN, pb);
    cr_assert_eq(ga.log.e[i].ref, ref);
    cr_assert_eq(ga.log.e[i].code, AR_ERROR);
    th_sync(a, pa);
    cr_assert_eq(atomic_load(&ga.log.terminates), 0, "the unlinked process was killed");
    cr_assert_eq(dn_count_kind(&ga, AR_MSG_EXIT), 0);
    stop_all(a, b);
}

Test(dist, a_remote_process_last_messages_arrive_before_its_exit, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, true);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    dn_link(a, pa, pb);
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_await_kind(&gb, AR_MSG_CAST, pa);
    enum { N = 200 };
    dn_act(b, pb, DC_SEND_N_THEN_FAIL, (dn_cmd_t){.pid = pa, .n = N, .text = "last words"});
    size_t i = dn_await_kind(&ga, AR_MSG_EXIT, pb);
    cr_assert_eq(i, (size_t)N, "the EXIT is entry %zu, after the %d messages", i, N);
    for (int k = 0; k < N; k++) {
        const th_entry_t *e = &ga.log.e[k];
        int v;
        memcpy(&v, e->data, sizeof v);
        cr_assert(e->kind == AR_MSG_CAST && e->tag == DT_DATA && v == k,
                  "entry %d: kind %d tag %u value %d", k, e->kind, e->tag, v);
    }
    expect_entry(&ga, i, AR_MSG_EXIT, pb, AR_ERROR, "last words");
    stop_all(a, b);
}

/* A pid of b that was alive once and is not any more. */
static ar_pid_t dead_remote_pid(ar_node_t *b, dn_agent_t *g)
{
    ar_pid_t p = dn_spawn_agent(b, g, false);
    dn_act(b, p, DC_STOP, (dn_cmd_t){.code = AR_NORMAL});
    dn_await_end(g);
    th_await(!th_proc_alive(b, p));
    return p;
}

Test(dist, linking_to_a_dead_remote_pid_gives_noproc, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gd;
    ar_pid_t pa = dn_spawn_agent(a, &ga, true);
    ar_pid_t dead = dead_remote_pid(b, &gd);
    dn_res_t r = dn_ctl(a, pa, DC_LINK, (dn_cmd_t){.pid = dead});
    if (r.rc == 0) { /* SEMANTICS §1: the link goes out; the answer is an exit signal */
        size_t i = dn_await_kind(&ga, AR_MSG_EXIT, dead);
        expect_entry(&ga, i, AR_MSG_EXIT, dead, AR_NOPROC, NULL);
    } else {
        cr_assert_eq(r.rc, AR_ENOPROC, "ar_link to a dead remote pid: %s", ar_err_name(r.rc));
    }
    /* a non-trapping linker is killed by that NOPROC, as Erlang's would be */
    static dn_agent_t gn;
    ar_pid_t pn = dn_spawn_agent(a, &gn, false);
    r = dn_ctl(a, pn, DC_LINK, (dn_cmd_t){.pid = dead});
    if (r.rc == 0) {
        dn_await_end(&gn);
        cr_assert_eq(gn.log.why, AR_NOPROC, "%s", ar_exit_code_name(gn.log.why));
    }
    stop_all(a, b);
}

/* ---- monitors ---------------------------------------------------------------------------------------- */
Test(dist, a_remote_monitor_gets_one_down_with_the_real_reason, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    ar_ref_t r1 = dn_monitor(a, pa, pb);
    ar_ref_t r2 = dn_monitor(a, pa, pb);
    cr_assert_neq(r1, r2, "each ar_monitor makes a new ref");
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_await_kind(&gb, AR_MSG_CAST, pa);
    dn_act(b, pb, DC_STOP, (dn_cmd_t){.code = AR_SHUTDOWN, .text = "closing time"});
    th_await(dn_count_kind(&ga, AR_MSG_DOWN) == 2);
    bool seen1 = false, seen2 = false;
    for (size_t i = 0; i < 2; i++) {
        expect_entry(&ga, i, AR_MSG_DOWN, pb, AR_SHUTDOWN, "closing time");
        seen1 |= ga.log.e[i].ref == r1;
        seen2 |= ga.log.e[i].ref == r2;
    }
    cr_assert(seen1 && seen2, "one DOWN per monitor, each with its ref");
    cr_assert_eq(atomic_load(&ga.log.terminates), 0, "a DOWN never kills the watcher");
    /* and the other way round: b watches a process of a that crashes */
    static dn_agent_t gw, gv;
    ar_pid_t pw = dn_spawn_agent(b, &gw, false);
    ar_pid_t pv = dn_spawn_agent(a, &gv, false);
    ar_ref_t r3 = dn_monitor(b, pw, pv);
    dn_ctl(b, pw, DC_SEND, (dn_cmd_t){.pid = pv, .tag = DT_MARKER});
    dn_await_kind(&gv, AR_MSG_CAST, pw);
    dn_crash(a, pv, "watched");
    size_t i = dn_await_kind(&gw, AR_MSG_DOWN, pv);
    expect_entry(&gw, i, AR_MSG_DOWN, pv, AR_ERROR, "watched");
    cr_assert_eq(gw.log.e[i].ref, r3);
    stop_all(a, b);
}

Test(dist, monitoring_a_dead_remote_pid_gives_down_noproc, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gd;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t dead = dead_remote_pid(b, &gd);
    ar_ref_t ref = dn_monitor(a, pa, dead);
    size_t i = dn_await_kind(&ga, AR_MSG_DOWN, dead);
    expect_entry(&ga, i, AR_MSG_DOWN, dead, AR_NOPROC, NULL);
    cr_assert_eq(ga.log.e[i].ref, ref);
    stop_all(a, b);
}

Test(dist, after_demonitor_no_down_comes_for_that_ref, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    ar_ref_t r1 = dn_monitor(a, pa, pb);
    dn_res_t r = dn_ctl(a, pa, DC_DEMONITOR, (dn_cmd_t){.ref = r1});
    cr_assert_eq(r.rc, 0);
    ar_ref_t r2 = dn_monitor(a, pa, pb);
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_await_kind(&gb, AR_MSG_CAST, pa);
    dn_crash(b, pb, "watched once");
    size_t i = dn_await_kind(&ga, AR_MSG_DOWN, pb);
    cr_assert_eq(ga.log.e[i].ref, r2);
    /* a round trip over the same connection, then the watcher's own mailbox */
    th_echo_state_t st;
    th_echo_check(a, spawn_echo(b, &st));
    th_sync(a, pa);
    cr_assert_eq(dn_count_kind(&ga, AR_MSG_DOWN), 1, "a DOWN came for the demonitored ref");

    /* demonitor racing the DOWN: the DOWN may be on the wire already; with flush it is
     * never seen */
    static dn_agent_t gc;
    ar_pid_t pc = dn_spawn_agent(b, &gc, false);
    static dn_agent_t gw;
    ar_pid_t pw = dn_spawn_agent(a, &gw, false);
    for (int k = 0; k < 20; k++) {
        ar_ref_t rr = dn_monitor(a, pw, pc);
        dn_ctl(a, pw, DC_DEMONITOR, (dn_cmd_t){.ref = rr, .flag = true});
    }
    ar_ref_t last = dn_monitor(a, pw, pc);
    dn_crash(b, pc, "raced");
    i = dn_await_kind(&gw, AR_MSG_DOWN, pc);
    cr_assert_eq(gw.log.e[i].ref, last);
    th_echo_check(a, spawn_echo(b, &st));
    th_sync(a, pw);
    cr_assert_eq(dn_count_kind(&gw, AR_MSG_DOWN), 1);
    stop_all(a, b);
}

/* ---- exit signals and trap_exit ------------------------------------------------------------------- */
Test(dist, ar_exit_to_a_remote_pid_follows_the_local_rules, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t g1, g2, g3, g4, g5, ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);

    /* not trapping: dies with the reason */
    ar_pid_t p1 = dn_spawn_agent(b, &g1, false);
    cr_assert_eq(ar_exit(a, p1, (ar_reason_t){AR_ERROR, "go away"}), 0);
    dn_await_end(&g1);
    cr_assert_eq(g1.log.why, AR_ERROR);
    cr_assert_str_eq(g1.log.why_text, "go away");

    /* trapping: an EXIT message, from no process (sent from a thread) */
    ar_pid_t p2 = dn_spawn_agent(b, &g2, true);
    cr_assert_eq(ar_exit(a, p2, (ar_reason_t){AR_ERROR, "trapped"}), 0);
    size_t i = dn_await_kind(&g2, AR_MSG_EXIT, AR_PID_NONE);
    expect_entry(&g2, i, AR_MSG_EXIT, AR_PID_NONE, AR_ERROR, "trapped");

    /* trapping, from a process: the EXIT names it */
    dn_res_t r = dn_ctl(a, pa, DC_EXIT, (dn_cmd_t){.pid = p2, .code = AR_SHUTDOWN,
                                                   .text = "from agent"});
    cr_assert_eq(r.rc, 0);
    i = dn_await_kind(&g2, AR_MSG_EXIT, pa);
    expect_entry(&g2, i, AR_MSG_EXIT, pa, AR_SHUTDOWN, "from agent");
    cr_assert_eq(atomic_load(&g2.log.terminates), 0);

    /* AR_KILL kills a trapping process: AR_KILLED */
    ar_pid_t p3 = dn_spawn_agent(b, &g3, true);
    cr_assert_eq(ar_exit(a, p3, AR_REASON(AR_KILL)), 0);
    dn_await_end(&g3);
    cr_assert_eq(g3.log.why, AR_KILLED, "%s", ar_exit_code_name(g3.log.why));
    cr_assert_eq(dn_count_kind(&g3, AR_MSG_EXIT), 0);

    /* AR_NORMAL to a process that does not trap: nothing happens */
    ar_pid_t p4 = dn_spawn_agent(b, &g4, false);
    cr_assert_eq(ar_exit(a, p4, AR_REASON(AR_NORMAL)), 0);
    th_sync(a, p4);
    cr_assert_eq(atomic_load(&g4.log.terminates), 0, "AR_NORMAL from elsewhere is dropped");
    cr_assert_eq(th_log_len(&g4.log), 0);

    /* ... and to one that traps: an EXIT message with AR_NORMAL */
    ar_pid_t p5 = dn_spawn_agent(b, &g5, true);
    r = dn_ctl(a, pa, DC_EXIT, (dn_cmd_t){.pid = p5, .code = AR_NORMAL});
    cr_assert_eq(r.rc, 0);
    i = dn_await_kind(&g5, AR_MSG_EXIT, pa);
    expect_entry(&g5, i, AR_MSG_EXIT, pa, AR_NORMAL, NULL);

    /* trap_exit switched off at b: the next exit signal kills */
    r = dn_ctl(b, p5, DC_TRAP, (dn_cmd_t){.flag = false});
    cr_assert(r.old);
    cr_assert_eq(ar_exit(a, p5, (ar_reason_t){AR_ERROR, "now it kills"}), 0);
    dn_await_end(&g5);
    cr_assert_eq(g5.log.why, AR_ERROR);
    cr_assert_str_eq(g5.log.why_text, "now it kills");

    /* a dead remote pid: 0, nothing happens */
    cr_assert_eq(ar_exit(a, p1, (ar_reason_t){AR_ERROR, "too late"}), 0);
    th_echo_state_t st;
    th_echo_check(a, spawn_echo(b, &st));
    stop_all(a, b);
}

Test(dist, trap_exit_turned_on_later_catches_a_remote_link_exit, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    dn_link(a, pa, pb);
    dn_res_t r = dn_ctl(a, pa, DC_TRAP, (dn_cmd_t){.flag = true});
    cr_assert(!r.old);
    dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_await_kind(&gb, AR_MSG_CAST, pa);
    ar_exit(b, pb, AR_REASON(AR_KILL)); /* killed: links see AR_KILLED */
    size_t i = dn_await_kind(&ga, AR_MSG_EXIT, pb);
    expect_entry(&ga, i, AR_MSG_EXIT, pb, AR_KILLED, NULL);
    stop_all(a, b);
}

Test(dist, messages_then_an_exit_signal_from_one_process_arrive_in_order, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga, gb;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, true);
    enum { N = 50 };
    for (int k = 0; k < N; k++) {
        dn_cmd_t c = {.pid = pb, .tag = DT_DATA};
        snprintf(c.text, sizeof c.text, "m%d", k);
        cr_assert_eq(dn_ctl(a, pa, DC_SEND, c).rc, 0);
    }
    dn_res_t r = dn_ctl(a, pa, DC_EXIT, (dn_cmd_t){.pid = pb, .code = AR_ERROR, .text = "after"});
    cr_assert_eq(r.rc, 0);
    size_t i = dn_await_kind(&gb, AR_MSG_EXIT, pa);
    cr_assert_eq(i, (size_t)N, "the EXIT came as entry %zu, not after the %d messages", i, N);
    for (int k = 0; k < N; k++) {
        char want[16];
        snprintf(want, sizeof want, "m%d", k);
        cr_assert_str_eq(gb.log.e[k].data, want);
    }
    expect_entry(&gb, i, AR_MSG_EXIT, pa, AR_ERROR, "after");
    stop_all(a, b);
}

Test(dist, a_send_to_a_pid_of_a_node_nobody_knows_is_dropped_at_once, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a");
    ar_pid_t nowhere = {((uint64_t)0x12345679u << 32) | 0x0badf00du, (1ull << 32) | 1u};
    ar_node_stats_t before = th_stats(a);
    uint64_t t0 = th_now_ns();
    cr_assert_eq(ar_send(a, nowhere, DT_DATA, "x", 1), 0);
    cr_assert_lt(th_ms_since(t0), 100.0);
    th_await(th_stats(a).dropped == before.dropped + 1);
    ar_buf_t r = {0};
    int rc = ar_call(a, nowhere, DT_DATA, "x", 1, &r, TH_WAIT_MS);
    cr_assert(rc == AR_ENOCONN || rc == AR_ENOPROC, "call to an unknown node: %s", ar_err_name(rc));
    static dn_agent_t ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    dn_monitor(a, pa, nowhere);
    size_t i = dn_await_kind(&ga, AR_MSG_DOWN, nowhere);
    cr_assert(ga.log.e[i].code == AR_NOCONNECTION || ga.log.e[i].code == AR_NOPROC, "%s",
              ar_exit_code_name(ga.log.e[i].code));
    th_node_stop(a);
}

/* ---- names across nodes ------------------------------------------------------------------------------ */
Test(dist, whereis_remote_by_address_and_by_node_name, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a"), *b = dn_node("dist_b");
    dn_evlog_attach(a, &ev_a);
    th_echo_state_t st;
    ar_pid_t eb = spawn_echo(b, &st);
    dn_register(b, "svc", eb);
    char addr[DN_ADDR_MAX];
    dn_addr(b, addr);

    /* by node name before any connection: nobody knows where dist_b is */
    ar_pid_t p = AR_PID_NONE;
    int rc = ar_whereis_remote(a, "dist_b", "svc", &p, 2000);
    cr_assert_eq(rc, AR_ENOCONN, "a node name never met: %s", ar_err_name(rc));

    /* by address: connects first */
    p = dn_lookup(a, addr, "svc");
    cr_assert(ar_pid_eq(p, eb), "the pid found is the pid b spawned");
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_b") == 1);
    th_echo_check(a, p);

    /* by node name, now connected */
    ar_pid_t q = dn_lookup(a, "dist_b", "svc");
    cr_assert(ar_pid_eq(q, eb));

    /* unknown names */
    rc = ar_whereis_remote(a, "dist_b", "nosuch", &p, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOENT, "%s", ar_err_name(rc));
    rc = ar_whereis_remote(a, addr, "nosuch", &p, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOENT, "%s", ar_err_name(rc));
    cr_assert_eq(ar_unregister(b, "svc"), 0);
    rc = ar_whereis_remote(a, "dist_b", "svc", &p, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOENT, "after unregister: %s", ar_err_name(rc));

    /* bad arguments */
    cr_assert_eq(ar_whereis_remote(a, "dist_b", NULL, &p, TH_WAIT_MS), AR_EINVAL);
    cr_assert_eq(ar_whereis_remote(a, NULL, "svc", &p, TH_WAIT_MS), AR_EINVAL);
    cr_assert_eq(ar_whereis_remote(a, "dist_b", "svc", NULL, TH_WAIT_MS), AR_EINVAL);
    cr_assert_eq(ar_whereis_remote(NULL, "dist_b", "svc", &p, TH_WAIT_MS), AR_EINVAL);
    cr_assert_eq(ar_whereis_remote(a, "dist_b", "", &p, TH_WAIT_MS), AR_EINVAL);

    /* an address where nothing listens */
    int dead_fd;
    char dead[DN_ADDR_MAX];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", dn_dead_port(&dead_fd));
    rc = ar_whereis_remote(a, dead, "svc", &p, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOCONN, "%s", ar_err_name(rc));
    close(dead_fd);
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_b"), 1, "one connection all along");
    stop_all(a, b);
}

Test(dist, whereis_remote_from_a_process, .timeout = TH_TIMEOUT)
{
    /* the calling process parks while the lookup crosses the network */
    ar_node_t *a, *b;
    pair(&a, &b);
    th_echo_state_t st;
    dn_register(b, "svc", spawn_echo(b, &st));
    static dn_agent_t ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    dn_res_t r = dn_ctl(a, pa, DC_WHEREIS, (dn_cmd_t){.text = "dist_b", .text2 = "svc"});
    cr_assert_eq(r.rc, 0, "ar_whereis_remote from a process: %s", ar_err_name(r.rc));
    cr_assert(ar_pid_eq(r.pid, ar_whereis(b, "svc")));
    r = dn_ctl(a, pa, DC_WHEREIS, (dn_cmd_t){.text = "dist_b", .text2 = "nosuch"});
    cr_assert_eq(r.rc, AR_ENOENT, "%s", ar_err_name(r.rc));
    /* a connect from a process too: a third node */
    ar_node_t *c = dn_node("dist_c");
    dn_register(c, "svc_c", spawn_echo(c, &st));
    char addr[DN_ADDR_MAX];
    dn_cmd_t cc = {0};
    snprintf(cc.text, sizeof cc.text, "%s", dn_addr(c, addr));
    r = dn_ctl(a, pa, DC_CONNECT, cc);
    cr_assert_eq(r.rc, 0, "ar_node_connect from a process: %s", ar_err_name(r.rc));
    r = dn_ctl(a, pa, DC_WHEREIS, (dn_cmd_t){.text = "dist_c", .text2 = "svc_c"});
    cr_assert_eq(r.rc, 0, "%s", ar_err_name(r.rc));
    cr_assert(ar_pid_eq(r.pid, ar_whereis(c, "svc_c")));
    th_node_stop(c);
    stop_all(a, b);
}

/* ---- pids as values ------------------------------------------------------------------------------------ */
Test(dist, pid_format_of_a_remote_pid_names_its_node, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    th_echo_state_t st;
    ar_pid_t eb = spawn_echo(b, &st);
    dn_register(b, "svc", eb);
    ar_pid_t p = dn_lookup(a, "dist_b", "svc");
    char s[AR_PID_STRLEN], t[AR_PID_STRLEN];
    cr_assert_eq(ar_pid_format(p, s, sizeof s), 0);
    cr_assert_eq(strncmp(s, "<dist_b.", 8), 0, "a remote pid formats as \"%s\"", s);
    cr_assert_eq(s[strlen(s) - 1], '>');
    cr_assert_eq(ar_pid_format(pa, t, sizeof t), 0);
    cr_assert_eq(strncmp(t, "<dist_a.", 8), 0, "a local pid of a named node: \"%s\"", t);
    cr_assert_str_neq(s, t);
    char small[6];
    cr_assert_eq(ar_pid_format(p, small, sizeof small), AR_E2BIG);
    stop_all(a, b);
}

/* The far end of a relay: forwards a cast's payload to next, or, at the end (next none),
 * reads a pid out of the payload's raw bytes and sends to it. Logs what it got. */
typedef struct relay {
    ar_pid_t next;
    atomic_int send_rc;
    atomic_int got;
    th_log_t log;
} relay_t;

static void relay_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    relay_t *r = state;
    ar_node_t *node = ar_node(self);
    th_log_msg(&r->log, m);
    if (m->kind != AR_MSG_CAST || m->tag != DT_DATA) return;
    if (!ar_pid_is_none(r->next)) {
        atomic_store(&r->send_rc, ar_send(node, r->next, DT_DATA, m->data, m->len));
    } else if (m->len == sizeof(ar_pid_t)) {
        ar_pid_t to;
        memcpy(&to, m->data, sizeof to);
        atomic_store(&r->send_rc, ar_send(node, to, DT_MARKER, "hello from c", 12));
    }
    atomic_fetch_add(&r->got, 1);
}

static const ar_behaviour_t relay_b = {"relay", dn_holder_init, relay_handle, NULL};

Test(dist, a_pid_copied_as_bytes_works_on_a_third_node, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a"), *b = dn_node("dist_b"), *c = dn_node("dist_c");
    dn_evlog_attach(a, &ev_a);
    dn_evlog_attach(c, &ev_c);
    dn_connect(a, b);
    dn_connect(c, b); /* a and c never connect explicitly */
    static relay_t rb, rc_;
    memset(&rc_, 0, sizeof rc_);
    memset(&rb, 0, sizeof rb);
    atomic_store(&rc_.send_rc, 1);
    atomic_store(&rb.send_rc, 1);
    ar_pid_t pc = th_spawn(c, &relay_b, &rc_);
    rb.next = pc;
    ar_pid_t pb = th_spawn(b, &relay_b, &rb);

    static dn_agent_t ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    th_send(a, pb, DT_DATA, &pa, sizeof pa); /* the pid as raw bytes, a -> b -> c */

    size_t i = dn_await_kind(&ga, AR_MSG_CAST, pc);
    cr_assert_eq(atomic_load(&rb.send_rc), 0);
    cr_assert_eq(atomic_load(&rc_.send_rc), 0, "c's send to a: %s",
                 ar_err_name(atomic_load(&rc_.send_rc)));
    cr_assert_str_eq(ga.log.e[i].data, "hello from c");
    cr_assert(ar_pid_eq(ga.log.e[i].from, pc), "from is c's relay");
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_c") == 1);
    th_await(dn_ev_count(&ev_c, AR_EV_NODE_UP, "dist_a") == 1);

    /* and a answers c directly at the from it saw */
    dn_res_t r = dn_ctl(a, pa, DC_SEND, (dn_cmd_t){.pid = ga.log.e[i].from, .tag = DT_MARKER,
                                                  .text = "back to c"});
    cr_assert_eq(r.rc, 0);
    th_await(th_log_len(&rc_.log) == 2);
    cr_assert_str_eq(rc_.log.e[1].data, "back to c");
    cr_assert(ar_pid_eq(rc_.log.e[1].from, pa));
    th_node_stop(c);
    stop_all(a, b);
}

/* ---- order under load ------------------------------------------------------------------------------------ */
#define ORDER_SENDERS 8
#define ORDER_EACH 10000
typedef struct order_sink {
    uint32_t next[ORDER_SENDERS];
    ar_pid_t from[ORDER_SENDERS];
    atomic_long total, bad_order, bad_from, bad_len;
} order_sink_t;

typedef struct order_go {
    ar_pid_t to;
    uint32_t idx, n;
} order_go_t;

typedef struct order_sender {
    atomic_int errors, eagain, done;
} order_sender_t;

static void order_sink_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    order_sink_t *s = state;
    uint32_t v[2];
    if (m->kind != AR_MSG_CAST || m->len != sizeof v) {
        atomic_fetch_add(&s->bad_len, 1);
        return;
    }
    memcpy(v, m->data, sizeof v);
    if (v[0] >= ORDER_SENDERS) {
        atomic_fetch_add(&s->bad_len, 1);
        return;
    }
    if (s->next[v[0]] == 0) s->from[v[0]] = m->from;
    else if (!ar_pid_eq(s->from[v[0]], m->from)) atomic_fetch_add(&s->bad_from, 1);
    if (v[1] != s->next[v[0]]) atomic_fetch_add(&s->bad_order, 1);
    s->next[v[0]] = v[1] + 1;
    atomic_fetch_add(&s->total, 1);
}

static void order_sender_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    order_sender_t *s = state;
    order_go_t go;
    if (m->len != sizeof go) return;
    memcpy(&go, m->data, sizeof go);
    for (uint32_t k = 0; k < go.n; k++) {
        uint32_t v[2] = {go.idx, k};
        int rc;
        while ((rc = ar_send(ar_node(self), go.to, DT_DATA, v, sizeof v)) == AR_EAGAIN) {
            atomic_fetch_add(&s->eagain, 1);
            ar_sleep(self, 1);
        }
        if (rc != 0) atomic_fetch_add(&s->errors, 1);
    }
    atomic_store(&s->done, 1);
}

static const ar_behaviour_t order_sink_b = {"order_sink", dn_holder_init, order_sink_handle, NULL};
static const ar_behaviour_t order_sender_b = {"order_sender", dn_holder_init,
                                              order_sender_handle, NULL};

Test(dist, per_pair_order_holds_across_nodes_under_load, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node_opts("dist_a", &(dn_opts_t){.schedulers = 2});
    ar_node_t *b = dn_node_opts("dist_b", &(dn_opts_t){.schedulers = 2});
    dn_connect(a, b);
    static order_sink_t sink;
    static order_sender_t snd[ORDER_SENDERS];
    ar_pid_t ps = th_spawn(b, &order_sink_b, &sink);
    ar_pid_t pids[ORDER_SENDERS];
    for (int i = 0; i < ORDER_SENDERS; i++) pids[i] = th_spawn(a, &order_sender_b, &snd[i]);
    for (int i = 0; i < ORDER_SENDERS; i++) {
        order_go_t go = {.to = ps, .idx = (uint32_t)i, .n = ORDER_EACH};
        th_send(a, pids[i], DT_DATA, &go, sizeof go);
    }
    th_await(atomic_load(&sink.total) == (long)ORDER_SENDERS * ORDER_EACH);
    long eagain = 0;
    for (int i = 0; i < ORDER_SENDERS; i++) {
        th_await(atomic_load(&snd[i].done));
        cr_assert_eq(atomic_load(&snd[i].errors), 0, "sender %d: failed sends", i);
        eagain += atomic_load(&snd[i].eagain);
    }
    cr_log_info("order under load: %ld EAGAIN retries", eagain);
    cr_assert_eq(atomic_load(&sink.bad_order), 0, "messages out of order or lost");
    cr_assert_eq(atomic_load(&sink.bad_len), 0);
    cr_assert_eq(atomic_load(&sink.bad_from), 0);
    for (int i = 0; i < ORDER_SENDERS; i++) {
        cr_assert_eq(sink.next[i], ORDER_EACH, "sender %d: last was %u", i, sink.next[i]);
        cr_assert(ar_pid_eq(sink.from[i], pids[i]), "sender %d: m->from", i);
    }
    /* nothing more arrives later */
    th_echo_state_t st;
    th_echo_check(a, spawn_echo(b, &st));
    cr_assert_eq(atomic_load(&sink.total), (long)ORDER_SENDERS * ORDER_EACH);
    stop_all(a, b);
}

/* ---- a large message beside small ones --------------------------------------------------------------- */
#define BIG_LEN (16u << 20)
typedef struct big_sink {
    atomic_int got;
    size_t len;
    uint64_t sum;
    uint64_t t_ns;
} big_sink_t;

static void big_sink_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    big_sink_t *s = state;
    s->len = m->len;
    s->sum = dn_fnv(m->data, m->len);
    s->t_ns = th_now_ns();
    atomic_store(&s->got, 1);
}

#define STAMPS 16384
typedef struct stamp_sink {
    atomic_int n;
    uint64_t lat_ns[STAMPS];  /* one-way latency of each small message */
    uint64_t sent_ns[STAMPS];
} stamp_sink_t;

static void stamp_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    stamp_sink_t *s = state;
    uint64_t t0;
    if (m->kind != AR_MSG_CAST || m->len != sizeof t0) return;
    memcpy(&t0, m->data, sizeof t0);
    int i = atomic_load_explicit(&s->n, memory_order_relaxed);
    if (i >= STAMPS) return;
    s->lat_ns[i] = th_now_ns() - t0;
    s->sent_ns[i] = t0;
    atomic_store_explicit(&s->n, i + 1, memory_order_release);
}

static const ar_behaviour_t big_sink_b = {"big_sink", dn_holder_init, big_sink_handle, NULL};
static const ar_behaviour_t stamp_b = {"stamp_sink", dn_holder_init, stamp_handle, NULL};

Test(dist, a_16mib_message_does_not_hold_up_small_ones_to_another_process,
     .timeout = TH_TIMEOUT)
{
    /* the queue limit well above the big message: this is not about back-pressure */
    ar_node_t *a = dn_node_opts("dist_a", &(dn_opts_t){.schedulers = 2,
                                                      .dist_queue_limit = 64u << 20});
    ar_node_t *b = dn_node_opts("dist_b", &(dn_opts_t){.schedulers = 2});
    dn_evlog_attach(a, &ev_a);
    dn_connect(a, b);
    static big_sink_t big;
    static stamp_sink_t stamps;
    ar_pid_t pbig = th_spawn(b, &big_sink_b, &big);
    ar_pid_t pst = th_spawn(b, &stamp_b, &stamps);

    unsigned char *payload = malloc(BIG_LEN);
    cr_assert_not_null(payload);
    for (size_t i = 0; i < BIG_LEN; i++) payload[i] = (unsigned char)((i * 2654435761u) >> 13);
    uint64_t want = dn_fnv(payload, BIG_LEN);

    uint64_t t_big = th_now_ns();
    th_send(a, pbig, DT_DATA, payload, BIG_LEN);
    double send_ms = th_ms_since(t_big);
    free(payload);
    /* a small message every 500 us until the big one is in and 20 more after */
    int sent = 0, after = 0;
    while (after < 20 && sent < STAMPS) {
        uint64_t now = th_now_ns();
        th_send(a, pst, DT_DATA, &now, sizeof now);
        sent++;
        if (atomic_load(&big.got)) after++;
        struct timespec ts = {0, 500 * 1000};
        nanosleep(&ts, NULL);
        cr_assert_lt(th_ms_since(t_big), (double)TH_WAIT_MS, "the 16 MiB message never arrived");
    }
    th_await(atomic_load(&big.got));
    th_await(atomic_load_explicit(&stamps.n, memory_order_acquire) == sent);
    cr_assert_eq(big.len, BIG_LEN, "the big message arrived whole");
    cr_assert_eq(big.sum, want, "the big message arrived intact");
    uint64_t worst = 0;
    int during = 0;
    for (int i = 0; i < sent; i++) {
        if (stamps.lat_ns[i] > worst) worst = stamps.lat_ns[i];
        if (stamps.sent_ns[i] < big.t_ns) during++;
    }
    cr_log_info("16 MiB: ar_send %.1f ms, delivered after %.1f ms; %d small messages sent "
                "meanwhile, worst one-way latency %.2f ms",
                send_ms, (double)(big.t_ns - t_big) / 1e6, during, (double)worst / 1e6);
    cr_assert_lt(worst, 200u * 1000000u, "a small message waited %.1f ms behind the big one",
                 (double)worst / 1e6);
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, NULL), 0, "a busy link looked dead");
    stop_all(a, b);
}

Test(dist, a_message_over_max_message_bytes_is_e2big_at_the_sender, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node_opts("dist_a", &(dn_opts_t){.max_message_bytes = 1 << 20});
    ar_node_t *b = dn_node("dist_b");
    dn_connect(a, b);
    ar_pid_t rb = th_spawn(b, &th_recorder, &rec_b);
    char *p = calloc(1, (1 << 20) + 1);
    cr_assert_eq(ar_send(a, rb, DT_DATA, p, (1 << 20) + 1), AR_E2BIG);
    ar_buf_t r = {0};
    cr_assert_eq(ar_call(a, rb, DT_DATA, p, (1 << 20) + 1, &r, TH_WAIT_MS), AR_E2BIG);
    th_send(a, rb, DT_DATA, p, 1 << 20);
    free(p);
    cr_assert_eq(th_sync(a, rb), 1);
    cr_assert_eq(rec_b.e[0].len, (size_t)1 << 20);
    stop_all(a, b);
}

/* Nodes may be configured with different max_message_bytes. A message within the
 * sender's bound but over the receiver's must cost that message only (refused with
 * AR_E2BIG at the sender, or dropped at the receiver), never the connection with every
 * link, monitor and call on it. */
/* A process with a bounded mailbox that takes one HOLD, says so, and sleeps: meanwhile its
 * mailbox fills. */
static atomic_int holding;
static void sleeper_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind == AR_MSG_CAST && m->tag == DT_MARKER) {
        atomic_store(&holding, 1);
        ar_sleep(self, 3000);
    } else if (m->kind == AR_MSG_CALL) {
        ar_reply(ar_node(self), m->reply_to, "ok", 2);
    }
}
static const ar_behaviour_t sleeper_b = {"sleeper", dn_holder_init, sleeper_handle, NULL};

/* A full bounded mailbox across nodes: a call fails at once with AR_EAGAIN, as a local one
 * does; a cast is dropped and counted on the receiving node (its ar_send has returned). */
Test(dist, a_remote_call_to_a_full_bounded_mailbox_fails_with_eagain, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    atomic_store(&holding, 0);
    ar_pid_t s;
    ar_spawn_opts_t o = {.mailbox_limit = 1};
    cr_assert_eq(ar_spawn(b, &sleeper_b, NULL, &o, &s), 0);
    th_send(a, s, DT_MARKER, "hold", 4);
    th_await(atomic_load(&holding) == 1);
    ar_node_stats_t before;
    ar_node_stats(b, &before);
    th_send(a, s, DT_DATA, "fill", 4);  /* the one place the mailbox has */
    th_send(a, s, DT_DATA, "over", 4);  /* dropped on b */
    ar_buf_t r = {0};
    uint64_t t0 = th_now_ns();
    int rc = ar_call(a, s, DT_ECHO, "x", 1, &r, TH_WAIT_MS);
    double ms = th_ms_since(t0);
    cr_assert_eq(rc, AR_EAGAIN, "a call to a full mailbox: %s", ar_err_name(rc));
    cr_assert_lt(ms, 2000.0, "it failed at once, not after the sleep (%.0f ms)", ms);
    ar_node_stats_t after;
    ar_node_stats(b, &after);
    cr_assert_geq(after.dropped - before.dropped, 2, "the cast over the bound and the call");
    stop_all(a, b);
}

Test(dist, a_message_over_the_receivers_bound_costs_that_message_not_the_connection,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a");
    ar_node_t *b = dn_node_opts("dist_b", &(dn_opts_t){.max_message_bytes = 1 << 20});
    dn_evlog_attach(a, &ev_a);
    dn_connect(a, b);
    th_echo_state_t st;
    ar_pid_t eb = spawn_echo(b, &st);
    ar_pid_t rb = th_spawn(b, &th_recorder, &rec_b);
    static dn_agent_t gm;
    ar_pid_t pm = dn_spawn_agent(a, &gm, false);
    dn_monitor(a, pm, eb);
    size_t big = 3u << 20;
    char *p = calloc(1, big);
    int rc = ar_send(a, rb, DT_DATA, p, big);
    cr_assert(rc == 0 || rc == AR_E2BIG, "%s", ar_err_name(rc));
    th_send(a, rb, DT_MARKER, "after", 5);
    th_echo_check(a, eb);
    th_send(a, rb, DT_DATA, p, 512u << 10);
    free(p);
    size_t n = th_sync(a, rb);
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, NULL), 0,
                 "one oversized message took the connection down");
    cr_assert_eq(dn_count_kind(&gm, AR_MSG_DOWN), 0, "a monitor fired: %s",
                 gm.log.e[0].code == AR_NOCONNECTION ? "noconnection" : "?");
    cr_assert_eq(n, 2, "the marker and the 512 KiB message, not the 3 MiB one");
    cr_assert_eq(rec_b.e[0].tag, DT_MARKER);
    cr_assert_eq(rec_b.e[1].len, 512u << 10);
    stop_all(a, b);
}

/* ---- node loss ------------------------------------------------------------------------------------------- */
static bool is_loss_or(ar_exit_code_t got, ar_exit_code_t own)
{
    return got == AR_NOCONNECTION || got == own;
}

/* A stopped peer: everything that waits on it ends at once, and NODE_DOWN is emitted.
 * ar_node_stop ends b's processes first (with AR_SHUTDOWN), so what a's side sees is
 * their real reason when it crossed before the connection closed, else AR_NOCONNECTION. */
Test(dist, a_stopped_peer_ends_links_monitors_and_calls_and_emits_node_down,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t gl, gm, gb;
    static dn_holder_t h;
    ar_pid_t pl = dn_spawn_agent(a, &gl, true);
    ar_pid_t pm = dn_spawn_agent(a, &gm, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    ar_pid_t hb = dn_spawn_holder(b, &h);
    dn_link(a, pl, pb);
    ar_ref_t ref = dn_monitor(a, pm, pb);
    dn_bg_call_t call;
    dn_bg_call_start(&call, a, hb, 2, TH_WAIT_MS);
    th_await(atomic_load(&h.held) == 1);
    dn_ctl(a, pl, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    dn_ctl(a, pm, DC_SEND, (dn_cmd_t){.pid = pb, .tag = DT_MARKER});
    th_await(th_log_len(&gb.log) == 2);

    uint64_t t0 = th_now_ns();
    th_node_stop(b);
    double stop_ms = th_ms_since(t0);
    size_t i = dn_await_kind(&gl, AR_MSG_EXIT, pb);
    cr_assert(is_loss_or(gl.log.e[i].code, AR_SHUTDOWN), "link: %s",
              ar_exit_code_name(gl.log.e[i].code));
    i = dn_await_kind(&gm, AR_MSG_DOWN, pb);
    cr_assert_eq(gm.log.e[i].ref, ref);
    cr_assert(is_loss_or(gm.log.e[i].code, AR_SHUTDOWN), "monitor: %s",
              ar_exit_code_name(gm.log.e[i].code));
    th_await(atomic_load(&call.done));
    cr_assert(call.rc == AR_ENOCONN || call.rc == AR_ENOPROC, "pending call: %s",
              ar_err_name(call.rc));
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "dist_b") == 1);
    double all_ms = (double)(dn_ev_time(&ev_a, AR_EV_NODE_DOWN, "dist_b", 0) - t0) / 1e6;
    double call_ms = (double)(call.t_end_ns - t0) / 1e6;
    cr_log_info("peer stop took %.1f ms; call ended after %.1f ms, NODE_DOWN after %.1f ms "
                "(link %s, monitor %s, call %s)", stop_ms, call_ms, all_ms,
                ar_exit_code_name(gl.log.e[0].code), ar_exit_code_name(gm.log.e[0].code),
                ar_err_name(call.rc));
    cr_assert_lt(call_ms, stop_ms + DN_LOSS_MARGIN_MS, "the pending call ended late");
    cr_assert_lt(all_ms, stop_ms + 4 * DN_TICK_MS + DN_LOSS_MARGIN_MS, "NODE_DOWN came late");
    dn_bg_call_join(&call);
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "dist_b"), 1, "one NODE_DOWN");
    th_node_stop(a);
}

/* A peer that stays alive but says nothing for four of our ticks is down: its own tick is
 * far longer than ours, so it writes nothing while we wait. Its processes are alive, so
 * everything here must be AR_NOCONNECTION. */
Test(dist, a_silent_peer_is_down_after_four_ticks_with_noconnection, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a");
    ar_node_t *b = dn_node_opts("dist_b", &(dn_opts_t){.tick_ms = 20000});
    dn_evlog_attach(a, &ev_a);
    dn_evlog_attach(b, &ev_b);
    static dn_agent_t gl, gm, gb;
    static dn_holder_t h;
    ar_pid_t pl = dn_spawn_agent(a, &gl, true);
    ar_pid_t pm = dn_spawn_agent(a, &gm, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    ar_pid_t hb = dn_spawn_holder(b, &h);

    dn_connect(a, b);
    uint64_t t_up = th_now_ns();
    /* everything below only writes from a to b */
    dn_link(a, pl, pb);
    ar_ref_t ref = dn_monitor(a, pm, pb);
    dn_bg_call_t call;
    dn_bg_call_start(&call, a, hb, 2, TH_WAIT_MS);

    th_await(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "dist_b") == 1);
    double down_ms = (double)(dn_ev_time(&ev_a, AR_EV_NODE_DOWN, "dist_b", 0) - t_up) / 1e6;
    size_t i = dn_await_kind(&gl, AR_MSG_EXIT, pb);
    expect_entry(&gl, i, AR_MSG_EXIT, pb, AR_NOCONNECTION, NULL);
    i = dn_await_kind(&gm, AR_MSG_DOWN, pb);
    expect_entry(&gm, i, AR_MSG_DOWN, pb, AR_NOCONNECTION, NULL);
    cr_assert_eq(gm.log.e[i].ref, ref);
    th_await(atomic_load(&call.done));
    cr_assert_eq(call.rc, AR_ENOCONN, "pending call: %s", ar_err_name(call.rc));
    cr_log_info("silent peer: NODE_DOWN %.0f ms after the connection", down_ms);
    cr_assert(down_ms >= 3 * DN_TICK_MS, "declared down after %.0f ms: before 4 ticks", down_ms);
    cr_assert(down_ms < 4 * DN_TICK_MS + DN_LOSS_MARGIN_MS, "declared down after %.0f ms", down_ms);
    dn_bg_call_join(&call);
    /* b hears of it too: its half of the link fires there (pb does not trap) */
    th_await(dn_ev_count(&ev_b, AR_EV_NODE_DOWN, "dist_a") == 1);
    dn_await_end(&gb);
    cr_assert_eq(gb.log.why, AR_NOCONNECTION, "b's linked process: %s",
                 ar_exit_code_name(gb.log.why));
    cr_assert(th_proc_alive(b, hb), "an unlinked process of b lives on");
    /* the next use reconnects */
    th_echo_state_t st;
    ar_pid_t eb = spawn_echo(b, &st);
    th_echo_check(a, eb);
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_b") == 2);
    stop_all(a, b);
}

/* ar_node_disconnect: the connection goes as if lost, on both sides at once, while every
 * process lives on; the next use connects again. */
Test(dist, a_disconnect_fires_noconnection_on_both_sides_and_the_next_use_reconnects,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_agent_t gl, gm, gb, gw;
    static dn_holder_t h;
    ar_pid_t pl = dn_spawn_agent(a, &gl, true);  /* traps: it lives on */
    ar_pid_t pm = dn_spawn_agent(a, &gm, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, true);  /* traps: it sees the EXIT as a message */
    ar_pid_t pw = dn_spawn_agent(b, &gw, false); /* monitors a's process */
    ar_pid_t hb = dn_spawn_holder(b, &h);
    dn_link(a, pl, pb);
    ar_ref_t ref = dn_monitor(a, pm, pb);
    ar_ref_t ref_b = dn_monitor(b, pw, pm);
    dn_bg_call_t call;
    dn_bg_call_start(&call, a, hb, 2, TH_WAIT_MS);
    th_await(atomic_load(&h.held) == 1);

    cr_assert_eq(ar_node_disconnect(a, "nobody"), AR_ENOENT);
    cr_assert_eq(ar_node_disconnect(a, "bad name!"), AR_EINVAL);
    cr_assert_eq(ar_node_disconnect(a, "dist_b"), 0);
    /* a's side */
    size_t i = dn_await_kind(&gl, AR_MSG_EXIT, pb);
    expect_entry(&gl, i, AR_MSG_EXIT, pb, AR_NOCONNECTION, NULL);
    i = dn_await_kind(&gm, AR_MSG_DOWN, pb);
    expect_entry(&gm, i, AR_MSG_DOWN, pb, AR_NOCONNECTION, NULL);
    cr_assert_eq(gm.log.e[i].ref, ref);
    th_await(atomic_load(&call.done));
    cr_assert_eq(call.rc, AR_ENOCONN, "pending call: %s", ar_err_name(call.rc));
    dn_bg_call_join(&call);
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "dist_b") == 1);
    /* b's side: its half of the link and its monitor fire too */
    i = dn_await_kind(&gb, AR_MSG_EXIT, pl);
    expect_entry(&gb, i, AR_MSG_EXIT, pl, AR_NOCONNECTION, NULL);
    i = dn_await_kind(&gw, AR_MSG_DOWN, pm);
    expect_entry(&gw, i, AR_MSG_DOWN, pm, AR_NOCONNECTION, NULL);
    cr_assert_eq(gw.log.e[i].ref, ref_b);
    th_await(dn_ev_count(&ev_b, AR_EV_NODE_DOWN, "dist_a") == 1);
    cr_assert(th_proc_alive(a, pl) && th_proc_alive(b, pb) && th_proc_alive(b, hb));
    /* the same processes are reachable again: the next use connects */
    th_echo_state_t st;
    ar_pid_t eb = spawn_echo(b, &st);
    th_echo_check(a, eb);
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_b") == 2);
    stop_all(a, b);
}

Test(dist, a_send_to_a_just_stopped_node_returns_at_once, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    ar_pid_t rb = th_spawn(b, &th_recorder, &rec_b);
    th_send(a, rb, DT_DATA, "x", 1);
    cr_assert_eq(th_sync(a, rb), 1);
    th_node_stop(b);

    uint64_t t0 = th_now_ns();
    int rc = ar_send(a, rb, DT_DATA, "y", 1);
    double first = th_ms_since(t0);
    cr_assert_eq(rc, 0, "a send to a lost node is dropped, not an error: %s", ar_err_name(rc));
    for (int k = 0; k < 100; k++) cr_assert_eq(ar_send(a, rb, DT_DATA, "z", 1), 0);
    double all = th_ms_since(t0);
    cr_log_info("send to a stopped node: first %.3f ms, 101 sends %.3f ms", first, all);
    cr_assert_lt(first, 100.0, "the first send took %.1f ms", first);
    cr_assert_lt(all, 100.0, "101 sends took %.1f ms", all);

    /* a call: AR_ENOCONN, promptly */
    ar_buf_t r = {0};
    t0 = th_now_ns();
    rc = ar_call(a, rb, DT_DATA, "q", 1, &r, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOCONN, "call to a stopped node: %s", ar_err_name(rc));
    cr_assert_lt(th_ms_since(t0), 2000.0);

    /* a monitor and a link: AR_NOCONNECTION */
    static dn_agent_t ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, true);
    ar_ref_t ref = dn_monitor(a, pa, rb);
    size_t i = dn_await_kind(&ga, AR_MSG_DOWN, rb);
    cr_assert_eq(ga.log.e[i].ref, ref);
    cr_assert_eq(ga.log.e[i].code, AR_NOCONNECTION, "%s", ar_exit_code_name(ga.log.e[i].code));
    dn_res_t lr = dn_ctl(a, pa, DC_LINK, (dn_cmd_t){.pid = rb});
    if (lr.rc == 0) {
        i = dn_await_kind(&ga, AR_MSG_EXIT, rb);
        cr_assert_eq(ga.log.e[i].code, AR_NOCONNECTION, "%s",
                     ar_exit_code_name(ga.log.e[i].code));
    } else {
        cr_assert_eq(lr.rc, AR_ENOPROC, "%s", ar_err_name(lr.rc));
    }
    th_await(th_stats(a).dropped >= 101); /* the sends to the lost node, counted */
    th_node_stop(a);
}

/* A node stop does not wait on a call a thread has pending on a peer that is alive but
 * does not answer: its connections close, the call fails. */
Test(dist, a_stop_does_not_wait_for_calls_pending_on_a_live_peer, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    static dn_holder_t h;
    ar_pid_t hb = dn_spawn_holder(b, &h);
    dn_bg_call_t call;
    dn_bg_call_start(&call, a, hb, DT_MARKER, 25000); /* held, never answered */
    th_await(atomic_load(&h.held) == 1);
    uint64_t t0 = th_now_ns();
    int rc = ar_node_stop(a, 2000);
    double ms = th_ms_since(t0);
    cr_log_info("stop with a thread's call pending on a live peer: %s after %.0f ms; the call "
                "returned %s", ar_err_name(rc), ms, ar_err_name(call.rc));
    cr_assert_lt(ms, 2000.0 + 1000.0, "ar_node_stop(2000) took %.0f ms", ms);
    th_await(atomic_load(&call.done));
    cr_assert_neq(call.rc, 0);
    cr_assert_neq(call.rc, AR_ETIMEDOUT, "the pending call ran into its own timeout");
    pthread_join(call.thread, NULL);
    th_node_stop(b);
}

/* The peer restarts under the same name at the same address: a new incarnation. */
Test(dist, a_restarted_peer_is_a_new_incarnation, .timeout = TH_TIMEOUT)
{
    ar_node_t *a, *b;
    pair(&a, &b);
    char addr[DN_ADDR_MAX];
    dn_addr(b, addr);
    th_echo_state_t st1, st2;
    ar_pid_t old_echo = spawn_echo(b, &st1);
    dn_register(b, "svc", old_echo);
    ar_pid_t p_old = dn_lookup(a, addr, "svc");
    cr_assert(ar_pid_eq(p_old, old_echo));
    th_echo_check(a, p_old);

    th_node_stop(b);
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "dist_b") == 1);

    /* the same name at the same address; its processes spawned in the same order, so the
     * new echo may well sit in the old one's slot */
    ar_node_t *b2 = dn_node_opts("dist_b", &(dn_opts_t){.listen = addr});
    dn_evlog_attach(b2, &ev_b);
    ar_pid_t new_echo = spawn_echo(b2, &st2);
    dn_register(b2, "svc", new_echo);
    cr_log_info("old %llx:%llx, new %llx:%llx", (unsigned long long)old_echo.hi,
                (unsigned long long)old_echo.lo, (unsigned long long)new_echo.hi,
                (unsigned long long)new_echo.lo);

    ar_pid_t p_new = dn_lookup(a, addr, "svc");
    cr_assert(ar_pid_eq(p_new, new_echo));
    cr_assert(!ar_pid_eq(p_new, p_old), "a new run of a node makes new pids");
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "dist_b") == 2);
    th_await(dn_ev_count(&ev_b, AR_EV_NODE_UP, "dist_a") == 1);

    /* the old pid is dead: sends dropped (the new echo never sees them) */
    for (int k = 0; k < 5; k++) cr_assert_eq(ar_send(a, p_old, DT_DATA, "old", 3), 0);
    th_echo_check(a, p_new);
    cr_assert_eq(atomic_load(&st2.casts), 0, "a send to the old pid reached the new run");
    cr_assert_eq(atomic_load(&st2.calls), 1);
    ar_buf_t r = {0};
    int rc = ar_call(a, p_old, DT_ECHO, "q", 1, &r, TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOPROC, "call to a pid of the old run: %s", ar_err_name(rc));

    /* links and monitors of the old pid: AR_NOPROC */
    static dn_agent_t ga;
    ar_pid_t pa = dn_spawn_agent(a, &ga, true);
    ar_ref_t ref = dn_monitor(a, pa, p_old);
    size_t i = dn_await_kind(&ga, AR_MSG_DOWN, p_old);
    expect_entry(&ga, i, AR_MSG_DOWN, p_old, AR_NOPROC, NULL);
    cr_assert_eq(ga.log.e[i].ref, ref);
    dn_res_t lr = dn_ctl(a, pa, DC_LINK, (dn_cmd_t){.pid = p_old});
    if (lr.rc == 0) {
        i = dn_await_kind(&ga, AR_MSG_EXIT, p_old);
        expect_entry(&ga, i, AR_MSG_EXIT, p_old, AR_NOPROC, NULL);
    } else {
        cr_assert_eq(lr.rc, AR_ENOPROC, "%s", ar_err_name(lr.rc));
    }
    /* new pids work */
    th_echo_check(a, p_new);
    cr_assert_eq(atomic_load(&st2.casts), 0);
    th_node_stop(b2);
    th_node_stop(a);
}

/* ---- authentication ------------------------------------------------------------------------------------ */
Test(dist, a_wrong_cookie_is_eauth_and_nothing_reaches_the_listener, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = dn_node("dist_a");
    ar_node_t *w = dn_node_opts("dist_w", &(dn_opts_t){.cookie = "wrong-cookie"});
    dn_evlog_attach(a, &ev_a);
    dn_evlog_attach(w, &ev_c);
    ar_pid_t ra = th_spawn(a, &th_recorder, &rec_a);
    dn_register(a, "rec", ra);
    char addr_a[DN_ADDR_MAX], addr_w[DN_ADDR_MAX];
    dn_addr(a, addr_a);
    dn_addr(w, addr_w);

    int rc = ar_node_connect(w, addr_a, TH_WAIT_MS);
    cr_assert_eq(rc, AR_EAUTH, "connect with a wrong cookie: %s", ar_err_name(rc));
    rc = ar_node_connect(w, addr_a, TH_WAIT_MS);
    cr_assert_eq(rc, AR_EAUTH, "and again: %s", ar_err_name(rc));
    rc = ar_node_connect(a, addr_w, TH_WAIT_MS);
    cr_assert_eq(rc, AR_EAUTH, "the other way round: %s", ar_err_name(rc));
    ar_pid_t p = AR_PID_NONE;
    rc = ar_whereis_remote(w, addr_a, "rec", &p, TH_WAIT_MS);
    cr_assert_eq(rc, AR_EAUTH, "whereis_remote: %s", ar_err_name(rc));
    cr_assert(ar_pid_is_none(p));

    /* a send to the recorder from w is dropped, never delivered */
    ar_node_stats_t before = th_stats(w);
    rc = ar_send(w, ra, DT_DATA, "intruder", 8);
    cr_assert_eq(rc, 0, "%s", ar_err_name(rc));
    th_await(th_stats(w).dropped > before.dropped);
    cr_assert_eq(th_sync(a, ra), 0, "the listener's process got something");
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_UP, NULL), 0, "NODE_UP without a handshake");
    cr_assert_eq(dn_ev_count(&ev_c, AR_EV_NODE_UP, NULL), 0);
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, NULL), 0, "NODE_DOWN for a node never up");

    /* the listener goes on: a right cookie connects */
    ar_node_t *b = dn_node("dist_b");
    dn_connect(b, a);
    ar_pid_t q = dn_lookup(b, "dist_a", "rec");
    cr_assert(ar_pid_eq(q, ra));
    th_send(b, ra, DT_DATA, "friend", 6);
    cr_assert_eq(th_sync(b, ra), 1);
    cr_assert_str_eq(rec_a.e[0].data, "friend");
    th_node_stop(b);
    th_node_stop(w);
    th_node_stop(a);
}

#define SECRET "sEcReT-c00kie-4711"
#define WRONG "wr0ng-c00kie-0815"
#define CAP_LINES 256
static atomic_int ncap;
static char cap[CAP_LINES][512];

static void capture_line(const char *line, void *ud)
{
    (void)ud;
    int i = atomic_fetch_add(&ncap, 1);
    if (i < CAP_LINES) snprintf(cap[i], sizeof cap[i], "%s", line);
}

Test(dist, the_cookie_appears_in_no_log_line_and_no_error_text, .timeout = TH_TIMEOUT)
{
    /* stderr goes to a file for the whole story */
    char path[] = "/tmp/arbor_dist_stderr_XXXXXX";
    int tmp = mkstemp(path);
    cr_assert_geq(tmp, 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(tmp, 2);

    dn_opts_t oa = {.cookie = SECRET, .crash_log = capture_line};
    dn_opts_t ow = {.cookie = WRONG, .crash_log = capture_line};
    ar_node_t *a = dn_node_opts("dist_a", &oa);
    ar_node_t *b = dn_node_opts("dist_b", &oa);
    ar_node_t *w = dn_node_opts("dist_w", &ow);
    /* a node that logs to stderr (crash reports on, no crash_log) */
    ar_node_config_t cfg;
    dn_config(&cfg, "dist_e", &(dn_opts_t){.cookie = SECRET});
    ar_node_t *e = NULL;
    cr_assert_eq(ar_node_start(&cfg, &e), 0);

    char addr[DN_ADDR_MAX], waddr[DN_ADDR_MAX];
    dn_addr(a, addr);
    dn_addr(w, waddr);
    cr_assert_eq(ar_node_connect(w, addr, TH_WAIT_MS), AR_EAUTH);
    cr_assert_eq(ar_node_connect(a, waddr, TH_WAIT_MS), AR_EAUTH);
    cr_assert_eq(ar_node_connect(e, waddr, TH_WAIT_MS), AR_EAUTH);
    dn_connect(b, a);
    dn_connect(e, a);
    /* crashes across the link make crash reports on every node */
    static dn_agent_t ga, gb, ge;
    ar_pid_t pa = dn_spawn_agent(a, &ga, false);
    ar_pid_t pb = dn_spawn_agent(b, &gb, false);
    ar_pid_t pe = dn_spawn_agent(e, &ge, false);
    dn_link(b, pb, pa);
    dn_link(e, pe, pa);
    dn_ctl(b, pb, DC_SEND, (dn_cmd_t){.pid = pa, .tag = DT_MARKER});
    dn_ctl(e, pe, DC_SEND, (dn_cmd_t){.pid = pa, .tag = DT_MARKER});
    th_await(th_log_len(&ga.log) == 2);
    dn_crash(a, pa, "crash for the log");
    dn_await_end(&gb);
    dn_await_end(&ge);
    /* a bad handshake by hand, too */
    int fd = dn_sock_connect(dn_port(a));
    dn_sock_write(fd, "\0\0\0\x10garbage-garbage!", 20);
    dn_sock_closed_within(fd, TH_WAIT_MS);
    close(fd);
    ar_node_stop(e, TH_STOP_MS);
    th_node_stop(w);
    th_node_stop(b);
    th_node_stop(a);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char buf[65536];
    ssize_t n = pread(tmp, buf, sizeof buf - 1, 0);
    close(tmp);
    buf[n > 0 ? n : 0] = '\0';
    cr_assert_null(strstr(buf, SECRET), "the cookie is on stderr:\n%s", buf);
    cr_assert_null(strstr(buf, WRONG), "the wrong cookie is on stderr:\n%s", buf);
    cr_assert(strstr(buf, "crash for the log") != NULL || strstr(buf, "EXIT") != NULL,
              "dist_e's crash report reached stderr:\n%s", buf);

    int lines = atomic_load(&ncap);
    cr_assert_gt(lines, 0, "crash reports were captured");
    for (int i = 0; i < lines && i < CAP_LINES; i++) {
        cr_assert_null(strstr(cap[i], SECRET), "the cookie in a crash log line: %s", cap[i]);
        cr_assert_null(strstr(cap[i], WRONG), "the wrong cookie in a log line: %s", cap[i]);
    }
    for (int code = -64; code <= 0; code++) {
        cr_assert_null(strstr(ar_strerror(code), SECRET));
        cr_assert_null(strstr(ar_err_name(code), SECRET));
    }
}

/* ---- bad input from plain sockets ------------------------------------------------------------------------ */
/* A listening node a with a registered recorder and an echo, and a peer b already
 * connected to it, with an echo of its own. After each bad connection: nothing reached
 * the recorder, a and b still talk both ways, and a new node still connects to a. */
typedef struct victim {
    ar_node_t *a, *b;
    ar_pid_t rec, echo_a, echo_b;
    th_echo_state_t sa, sb;
    int port;
} victim_t;

static victim_t V;

static void victim_start(void)
{
    memset(&V, 0, sizeof V);
    V.a = dn_node("victim");
    V.b = dn_node("friend");
    dn_evlog_attach(V.a, &ev_a);
    V.rec = th_spawn(V.a, &th_recorder, &rec_a);
    dn_register(V.a, "rec", V.rec);
    V.echo_a = spawn_echo(V.a, &V.sa);
    V.echo_b = spawn_echo(V.b, &V.sb);
    dn_connect(V.b, V.a);
    V.port = dn_port(V.a);
}

static void victim_still_fine(const char *after)
{
    cr_log_info("checking the node after: %s", after);
    th_echo_check(V.b, V.echo_a);
    th_echo_check(V.a, V.echo_b);
    cr_assert_eq(th_sync(V.a, V.rec), 0, "after %s: the recorder got a message", after);
    cr_assert_eq(th_sync(V.b, V.rec), 0, "after %s: the recorder got a message", after);
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "friend"), 0,
                 "after %s: the good peer was dropped", after);
}

static void victim_new_peer_connects(void)
{
    ar_node_t *c = dn_node("latecomer");
    dn_connect(c, V.a);
    th_echo_check(c, V.echo_a);
    th_node_stop(c);
}

static void victim_stop(void)
{
    victim_new_peer_connects();
    cr_assert_eq(th_sync(V.a, V.rec), 0);
    th_node_stop(V.b);
    th_node_stop(V.a);
}

static void expect_closed(int fd, int ms, const char *what)
{
    uint64_t t0 = th_now_ns();
    bool closed = dn_sock_closed_within(fd, ms);
    cr_assert(closed, "%s: the node kept the connection open for %d ms", what, ms);
    cr_log_info("%s: closed after %.1f ms", what, th_ms_since(t0));
    close(fd);
}

/* A valid CAST frame to the recorder (from a made-up pid of node_hi). */
static size_t cast_frame(void *buf, size_t cap_, uint64_t node_hi, const char *text)
{
    ar__wire_msg_t m;
    memset(&m, 0, sizeof m);
    m.kind = W_CAST;
    m.tag = DT_DATA;
    m.from = (ar_pid_t){node_hi, (1ull << 32) | 1u};
    m.to = V.rec;
    m.payload = text;
    m.len = strlen(text);
    size_t n = ar__wire_size(&m);
    cr_assert_leq(n, cap_);
    ar__wire_encode(&m, buf);
    return n;
}

/* A node's pids carry its id (a hash of its name: runtime/internal.h) in the low half of
 * hi and its incarnation in the high half; the raw peer must claim its name's id. */
uint32_t ar__node_id_of(const char *name);
static uint64_t raw_node_hi(void)
{
    return ((uint64_t)(0x5eed0001u | 1u) << 32) | ar__node_id_of("rawpeer");
}

/* A handshake done by hand on fd, as node "rawpeer" with the given cookie. 0 when the
 * victim welcomed it; otherwise the error (AR_EAUTH, AR_EBADMSG, AR_ENOCONN). */
static int raw_handshake(int fd, const char *cookie, uint64_t node_hi)
{
    static ar__hs_t h;
    int rc = ar__hs_init(&h, HS_CONNECTOR, cookie, "rawpeer", node_hi, "");
    cr_assert_eq(rc, 0);
    unsigned char out[AR__HS_MAX], body[AR__HS_MAX];
    for (int rounds = 0; rounds < 8; rounds++) {
        size_t n = ar__hs_output(&h, out, sizeof out);
        if (n && !dn_sock_write(fd, out, n)) return AR_ENOCONN;
        if (h.step == HS_DONE) return 0;
        unsigned char pre[4];
        if (!dn_sock_read(fd, pre, 4, TH_WAIT_MS)) return AR_ENOCONN;
        uint32_t len = ((uint32_t)pre[0] << 24) | ((uint32_t)pre[1] << 16) |
                       ((uint32_t)pre[2] << 8) | pre[3];
        if (len > AR__HS_MAX) return AR_EBADMSG;
        if (!dn_sock_read(fd, body, len, TH_WAIT_MS)) return AR_ENOCONN;
        rc = ar__hs_feed(&h, body, len);
        if (rc < 0) return rc;
    }
    return h.step == HS_DONE ? 0 : AR_EBADMSG;
}

static int raw_authenticated(void)
{
    int fd = dn_sock_connect(V.port);
    int rc = raw_handshake(fd, DN_COOKIE, raw_node_hi());
    cr_assert_eq(rc, 0, "the hand-made handshake failed: %s", ar_err_name(rc));
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "rawpeer") >= 1);
    return fd;
}

/* DIST-9: strangers cost bounded memory. At most 64 connections are in their handshake at
 * once (one more is closed on accept), each is dropped when it does not finish in time
 * (at least 2 s), and afterwards a real peer connects as ever. */
Test(dist_bad_input, handshakes_in_progress_are_bounded_and_time_out, .timeout = TH_TIMEOUT)
{
    enum { SLOTS = 64 };
    ar_node_t *a = dn_node("dist_a");
    char addr[DN_ADDR_MAX];
    int port = atoi(strrchr(dn_addr(a, addr), ':') + 1);
    int fds[SLOTS];
    uint64_t t0 = th_now_ns();
    for (int i = 0; i < SLOTS; i++) fds[i] = dn_sock_connect(port);
    int extra = dn_sock_connect(port);
    cr_assert(dn_sock_closed_within(extra, 1000), "one stranger more is closed on accept");
    double extra_ms = th_ms_since(t0);
    for (int i = 0; i < SLOTS; i++)
        cr_assert(dn_sock_closed_within(fds[i], TH_WAIT_MS), "stranger %d is dropped in time", i);
    double all_ms = th_ms_since(t0);
    cr_log_info("65th closed after %.0f ms, the 64 silent ones by %.0f ms", extra_ms, all_ms);
    cr_assert_gt(all_ms, 1500.0, "the silent ones were kept for their handshake's time");
    for (int i = 0; i < SLOTS; i++) close(fds[i]);
    close(extra);
    ar_node_t *b = dn_node("dist_b");
    dn_connect(b, a);
    th_echo_state_t st;
    th_echo_check(b, spawn_echo(a, &st));
    stop_all(a, b);
}

Test(dist_bad_input, garbage_bytes_close_the_connection_only, .timeout = TH_TIMEOUT)
{
    victim_start();
    /* an HTTP request: its first four bytes are a huge length */
    int fd = dn_sock_connect(V.port);
    dn_sock_write(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
    expect_closed(fd, 2000, "an HTTP request");
    victim_still_fine("an HTTP request");

    /* a small valid-looking length, then random bytes */
    unsigned char junk[4 + 60];
    srand(4711);
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)rand();
    junk[0] = 0, junk[1] = 0, junk[2] = 0, junk[3] = 60;
    fd = dn_sock_connect(V.port);
    dn_sock_write(fd, junk, sizeof junk);
    expect_closed(fd, 2000, "random bytes");
    victim_still_fine("random bytes");

    /* a zero length */
    fd = dn_sock_connect(V.port);
    dn_sock_write(fd, "\0\0\0\0\0\0\0\0", 8);
    expect_closed(fd, 2000, "zero-length frames");
    victim_still_fine("zero-length frames");

    /* after a good handshake: random bytes */
    fd = raw_authenticated();
    junk[0] = 0, junk[1] = 0, junk[2] = 0, junk[3] = 60;
    dn_sock_write(fd, junk, sizeof junk);
    char frame[256];
    size_t n = cast_frame(frame, sizeof frame, raw_node_hi(), "after garbage");
    dn_sock_write(fd, frame, n);
    expect_closed(fd, 2000, "random bytes after the handshake");
    victim_still_fine("random bytes after the handshake");
    victim_stop();
}

Test(dist_bad_input, a_truncated_frame_closes_the_connection_only, .timeout = TH_TIMEOUT)
{
    victim_start();
    /* before the handshake: a length of 100, 10 bytes, then silence. The node must not
     * wait on it, and must drop it in the end (no handshake comes). */
    int fd = dn_sock_connect(V.port);
    dn_sock_write(fd, "\0\0\0\x64" "0123456789", 14);
    victim_still_fine("a truncated handshake frame (connection still open)");
    expect_closed(fd, TH_WAIT_MS, "a truncated handshake frame left hanging");
    victim_still_fine("a truncated handshake frame");

    /* the same, then the peer closes */
    fd = dn_sock_connect(V.port);
    dn_sock_write(fd, "\0\0\0\x64" "0123456789", 14);
    shutdown(fd, SHUT_WR);
    expect_closed(fd, 2000, "a truncated frame, then EOF");
    victim_still_fine("a truncated frame, then EOF");

    /* after the handshake: a frame cut short, then silence: down after 4 ticks */
    fd = raw_authenticated();
    dn_sock_write(fd, "\0\0\x01\0" "0123456789", 14);
    expect_closed(fd, 4 * DN_TICK_MS + DN_LOSS_MARGIN_MS, "a truncated frame after the handshake");
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "rawpeer") == 1);
    victim_still_fine("a truncated frame after the handshake");
    victim_stop();
}

Test(dist_bad_input, an_oversized_length_closes_the_connection_only, .timeout = TH_TIMEOUT)
{
    victim_start();
    int fd = dn_sock_connect(V.port);
    dn_sock_write(fd, "\xff\xff\xff\xff" "abcd", 8);
    expect_closed(fd, 2000, "length 0xffffffff");
    victim_still_fine("length 0xffffffff");

    /* within max_message_bytes but far over what a handshake frame may be */
    fd = dn_sock_connect(V.port);
    dn_sock_write(fd, "\0\x01\0\0" "abcd", 8);
    expect_closed(fd, 2000, "a 64 KiB handshake frame");
    victim_still_fine("a 64 KiB handshake frame");

    /* after the handshake */
    fd = raw_authenticated();
    dn_sock_write(fd, "\xff\xff\xff\xff" "abcd", 8);
    expect_closed(fd, 2000, "length 0xffffffff after the handshake");
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "rawpeer") == 1);
    victim_still_fine("length 0xffffffff after the handshake");
    victim_stop();
}

Test(dist_bad_input, a_frame_that_skips_the_handshake_is_never_delivered, .timeout = TH_TIMEOUT)
{
    victim_start();
    char frame[256];
    size_t n = cast_frame(frame, sizeof frame, raw_node_hi(), "skipped the handshake");
    int fd = dn_sock_connect(V.port);
    dn_sock_write(fd, frame, n);
    expect_closed(fd, 2000, "a CAST instead of HELLO");
    victim_still_fine("a CAST instead of HELLO");

    /* a HELLO, then a CAST instead of AUTH */
    static ar__hs_t h;
    cr_assert_eq(ar__hs_init(&h, HS_CONNECTOR, DN_COOKIE, "rawpeer", raw_node_hi(), ""), 0);
    unsigned char hello[AR__HS_MAX];
    size_t hn = ar__hs_output(&h, hello, sizeof hello);
    cr_assert_gt(hn, 0);
    fd = dn_sock_connect(V.port);
    dn_sock_write(fd, hello, hn);
    dn_sock_write(fd, frame, n);
    expect_closed(fd, 2000, "a CAST instead of AUTH");
    victim_still_fine("a CAST instead of AUTH");

    /* a handshake with the wrong cookie, then a CAST */
    fd = dn_sock_connect(V.port);
    int rc = raw_handshake(fd, "not-the-cookie", raw_node_hi());
    cr_assert_neq(rc, 0, "a wrong cookie was welcomed");
    dn_sock_write(fd, frame, n);
    expect_closed(fd, 2000, "a wrong cookie");
    victim_still_fine("a wrong cookie");
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_UP, "rawpeer"), 0);

    /* control: the same CAST after a real handshake is delivered */
    fd = raw_authenticated();
    dn_sock_write(fd, frame, n);
    th_await(th_log_len(&rec_a) == 1);
    cr_assert_str_eq(rec_a.e[0].data, "skipped the handshake");
    close(fd);
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "rawpeer") == 1);
    th_node_stop(V.b);
    th_node_stop(V.a);
}

Test(dist_bad_input, deeply_nested_msgpack_closes_the_connection_only, .timeout = TH_TIMEOUT)
{
    victim_start();
    /* before the handshake, small enough for a handshake frame */
    enum { PRE = 400 };
    unsigned char pre[4 + PRE + 1];
    pre[0] = 0, pre[1] = 0, pre[2] = (PRE + 1) >> 8, pre[3] = (PRE + 1) & 0xff;
    memset(pre + 4, 0x91, PRE); /* fixarray of one, nested */
    pre[4 + PRE] = 0xc0;
    int fd = dn_sock_connect(V.port);
    dn_sock_write(fd, pre, sizeof pre);
    expect_closed(fd, 2000, "nested arrays as a handshake");
    victim_still_fine("nested arrays as a handshake");

    /* after the handshake: 100,000 levels (within one wire frame's size), then a valid
     * CAST that must never be read */
    enum { DEEP = 100000 };
    unsigned char *deep = malloc(4 + DEEP + 1);
    deep[0] = 0, deep[1] = (DEEP + 1) >> 16, deep[2] = ((DEEP + 1) >> 8) & 0xff;
    deep[3] = (DEEP + 1) & 0xff;
    memset(deep + 4, 0x91, DEEP);
    deep[4 + DEEP] = 0xc0;
    char frame[256];
    size_t n = cast_frame(frame, sizeof frame, raw_node_hi(), "behind the bomb");
    fd = raw_authenticated();
    dn_sock_write(fd, deep, 4 + DEEP + 1);
    dn_sock_write(fd, frame, n);
    expect_closed(fd, 2000, "100,000 nested arrays");
    victim_still_fine("100,000 nested arrays");

    /* nested maps inside a payload position, 9 levels (one more than frames use) */
    unsigned char nest[64];
    size_t k = 4;
    nest[k++] = 0x9a; /* an envelope-sized array of 10 */
    for (int d = 0; d < 9; d++) nest[k++] = 0x81, nest[k++] = 0x00; /* {0: {0: ...}} */
    nest[k++] = 0xc0;
    for (int f = 1; f < 10; f++) nest[k++] = 0xc0;
    uint32_t blen = (uint32_t)(k - 4);
    nest[0] = 0, nest[1] = 0, nest[2] = (unsigned char)(blen >> 8), nest[3] = blen & 0xff;
    fd = raw_authenticated();
    dn_sock_write(fd, nest, k);
    dn_sock_write(fd, frame, n);
    expect_closed(fd, 2000, "nested maps in an envelope");
    victim_still_fine("nested maps in an envelope");
    free(deep);
    victim_stop();
}

/* The raw peer writes ticks (so it is alive) and never reads. */
typedef struct ticker {
    int fd;
    atomic_int stop;
    pthread_t t;
} ticker_t;

static void *ticker_run(void *arg)
{
    ticker_t *k = arg;
    ar__wire_msg_t m;
    memset(&m, 0, sizeof m);
    m.kind = W_TICK;
    unsigned char buf[64];
    size_t n = ar__wire_size(&m);
    ar__wire_encode(&m, buf);
    while (!atomic_load(&k->stop)) {
        if (!dn_sock_write(k->fd, buf, n)) break;
        struct timespec ts = {0, 30 * 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static long sysctl_long(const char *path, int field)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long v[3] = {0, 0, 0};
    if (fscanf(f, "%ld %ld %ld", &v[0], &v[1], &v[2]) < field + 1) v[field] = 0;
    fclose(f);
    return v[field];
}

Test(dist_bad_input, a_peer_that_never_reads_cannot_grow_memory_and_cannot_hang_the_stop,
     .timeout = TH_TIMEOUT)
{
    memset(&V, 0, sizeof V);
    size_t limit = 4u << 20, msg = 1u << 20;
    V.a = dn_node_opts("victim", &(dn_opts_t){.dist_queue_limit = limit});
    V.b = dn_node("friend");
    dn_evlog_attach(V.a, &ev_a);
    V.rec = th_spawn(V.a, &th_recorder, &rec_a);
    V.echo_a = spawn_echo(V.a, &V.sa);
    V.echo_b = spawn_echo(V.b, &V.sb);
    dn_connect(V.b, V.a);
    V.port = dn_port(V.a);

    int fd = dn_sock_connect(V.port);
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small); /* no autotuning */
    cr_assert_eq(raw_handshake(fd, DN_COOKIE, raw_node_hi()), 0);
    th_await(dn_ev_count(&ev_a, AR_EV_NODE_UP, "rawpeer") == 1);
    static ticker_t tk;
    tk.fd = fd;
    pthread_create(&tk.t, NULL, ticker_run, &tk);

    ar_pid_t far = {raw_node_hi(), (1ull << 32) | 1u}; /* a pid of the raw peer */
    long wmem = sysctl_long("/proc/sys/net/ipv4/tcp_wmem", 2);
    size_t slack = (size_t)wmem + 4u * (size_t)small + (2u << 20);
    uint64_t seq = 0;
    size_t accepted = dn_flood(V.a, far, DT_DATA, msg, &seq, 512u << 20);
    cr_log_info("never-reading peer: %zu MiB accepted in all (limit %zu MiB, kernel slack up "
                "to %zu MiB)", accepted * msg >> 20, limit >> 20, slack >> 20);
    cr_assert_leq(accepted * msg, limit + msg + slack,
                  "%zu bytes accepted: more than the limit, one message and the socket buffers",
                  accepted * msg);
    char *payload = calloc(1, msg);
    /* still EAGAIN a little later; a call is refused the same way */
    cr_assert_eq(ar_send(V.a, far, DT_DATA, payload, msg), AR_EAGAIN);
    ar_buf_t r = {0};
    cr_assert_eq(ar_call(V.a, far, DT_DATA, "q", 1, &r, 200), AR_EAGAIN);
    free(payload);
    /* the node and its other peer are fine meanwhile */
    victim_still_fine("a queue full to a never-reading peer");
    cr_assert_eq(dn_ev_count(&ev_a, AR_EV_NODE_DOWN, "rawpeer"), 0, "the ticking peer is alive");

    /* the stop does not hang on it */
    th_node_stop(V.b);
    uint64_t ts = th_now_ns();
    int rc = ar_node_stop(V.a, 2000);
    double ms = th_ms_since(ts);
    cr_log_info("stop with a never-reading peer: %s after %.0f ms", ar_err_name(rc), ms);
    cr_assert(rc == 0 || rc == AR_ETIMEDOUT, "%s", ar_err_name(rc));
    cr_assert_lt(ms, 2000.0 + 1000.0, "ar_node_stop(2000) took %.0f ms", ms);
    atomic_store(&tk.stop, 1);
    shutdown(fd, SHUT_RDWR);
    pthread_join(tk.t, NULL);
    close(fd);
}

/* ---- node ids -------------------------------------------------------------------------------------------- */
typedef struct id_name {
    uint32_t id, i;
} id_name_t;

static int by_id(const void *x, const void *y)
{
    const id_name_t *a = x, *b = y;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Node ids are 32-bit hashes of names: of two names that collide, the second is refused by
 * a node that knows the first (never mistaken for it), and the first goes on working. */
Test(dist, a_name_whose_node_id_is_taken_is_refused, .timeout = TH_TIMEOUT)
{
    enum { N = 1 << 18 }; /* by the birthday bound, a few dozen collisions among 2^31 ids */
    id_name_t *v = malloc(N * sizeof *v);
    cr_assert_not_null(v);
    char name[AR_NODE_NAME_MAX];
    for (uint32_t i = 0; i < N; i++) {
        snprintf(name, sizeof name, "c%x", i);
        v[i] = (id_name_t){ar__node_id_of(name), i};
    }
    qsort(v, N, sizeof *v, by_id);
    uint32_t i1 = 0, i2 = 0;
    for (uint32_t k = 1; k < N && i1 == i2; k++)
        if (v[k].id == v[k - 1].id) i1 = v[k - 1].i, i2 = v[k].i;
    free(v);
    cr_assert_neq(i1, i2, "no two names collided");
    char n1[AR_NODE_NAME_MAX], n2[AR_NODE_NAME_MAX];
    snprintf(n1, sizeof n1, "c%x", i1);
    snprintf(n2, sizeof n2, "c%x", i2);
    cr_assert_eq(ar__node_id_of(n1), ar__node_id_of(n2));

    ar_node_t *a = dn_node("dist_a"), *x = dn_node(n1), *y = dn_node(n2);
    dn_connect(x, a);
    char addr[DN_ADDR_MAX];
    int rc = ar_node_connect(y, dn_addr(a, addr), TH_WAIT_MS);
    cr_assert_eq(rc, AR_ENOCONN, "%s and %s share an id: %s", n1, n2, ar_err_name(rc));
    th_echo_state_t st;
    ar_pid_t ex = spawn_echo(x, &st);
    th_echo_check(a, ex); /* the first still works */
    th_node_stop(y);
    stop_all(a, x);
}
