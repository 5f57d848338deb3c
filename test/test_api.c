/* The public surface given bad input: every function returns its documented code and
 * never crashes. Also error names and texts, pid formatting, exit code names, version. */
#include "test_helpers.h"

static int arg_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void nop_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m;
}
static const ar_behaviour_t nop_b = {"nop", NULL, nop_handle, NULL};

/* ---- errors, names, version ------------------------------------------------------------------ */
Test(api, strerror_and_err_name_cover_every_code, .timeout = TH_TIMEOUT)
{
    static const struct {
        int code;
        const char *name, *text;
    } table[] = {
#define ROW(name, val, text) {val, "AR_" #name, text},
        AR_ERRNO_MAP(ROW)
#undef ROW
    };
    size_t n = sizeof table / sizeof table[0];
    cr_assert_eq(n, 20);
    for (size_t i = 0; i < n; i++) {
        cr_assert_str_eq(ar_strerror(table[i].code), table[i].text, "code %d", table[i].code);
        cr_assert_str_eq(ar_err_name(table[i].code), table[i].name, "code %d", table[i].code);
        cr_assert_lt(table[i].code, 0);
    }
    cr_assert_eq(AR_EINVAL, -1);
    cr_assert_eq(AR_EDEADLK, -17);
    cr_assert_eq(AR_EIO, -20);
    cr_assert_str_eq(ar_err_name(0), "AR_OK");
    int unknown[] = {1, 42, -21, -100, -1000000};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        cr_assert_str_eq(ar_strerror(unknown[i]), "unknown error", "code %d", unknown[i]);
        cr_assert_str_eq(ar_err_name(unknown[i]), "AR_UNKNOWN", "code %d", unknown[i]);
    }
}

Test(api, exit_code_names_are_distinct_and_total, .timeout = TH_TIMEOUT)
{
    cr_assert_str_eq(ar_exit_code_name(AR_NORMAL), "normal");
    cr_assert_str_eq(ar_exit_code_name(AR_SHUTDOWN), "shutdown");
    const char *names[AR_ERROR + 1];
    for (int c = AR_NORMAL; c <= AR_ERROR; c++) {
        names[c] = ar_exit_code_name((ar_exit_code_t)c);
        cr_assert_not_null(names[c]);
        cr_assert_gt(strlen(names[c]), 0);
        for (int d = 0; d < c; d++) cr_assert_str_neq(names[c], names[d]);
    }
    cr_assert_not_null(ar_exit_code_name((ar_exit_code_t)99));
}

Test(api, version_string_matches_the_macros, .timeout = TH_TIMEOUT)
{
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", AR_VERSION_MAJOR, AR_VERSION_MINOR,
             AR_VERSION_PATCH);
    cr_assert_str_eq(ar_version(), want);
    cr_assert_str_eq(ar_version(), "0.1.0");
}

/* ---- pids ------------------------------------------------------------------------------------- */
Test(api, pid_format_writes_node_index_serial, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    ar_pid_t p = th_spawn(node, &nop_b, NULL);
    char buf[AR_PID_STRLEN];
    cr_assert_eq(ar_pid_format(p, buf, sizeof buf), 0);
    unsigned long long a, b, c;
    char end;
    cr_assert_eq(sscanf(buf, "<%llu.%llu.%llu%c", &a, &b, &c, &end), 4, "\"%s\"", buf);
    cr_assert_eq(end, '>');
    cr_assert_eq(buf[strlen(buf) - 1], '>');
    cr_assert_eq(a, p.hi & 0xffffffffu, "\"%s\": node part", buf);
    cr_assert_neq(a, 0, "a node id is nonzero");
    cr_assert_eq(b, p.lo & 0xffffffffu, "\"%s\": index part", buf);
    cr_assert_eq(c, p.lo >> 32, "\"%s\": serial part", buf);

    cr_assert_eq(ar_pid_format(AR_PID_NONE, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "<0.0.0>");

    /* The largest pid fits in AR_PID_STRLEN. */
    ar_pid_t big = {UINT64_MAX, UINT64_MAX};
    cr_assert_eq(ar_pid_format(big, buf, sizeof buf), 0);
    cr_assert_lt(strlen(buf), AR_PID_STRLEN);
    th_node_stop(node);
}

Test(api, pid_format_too_small_is_e2big_and_nul_terminated, .timeout = TH_TIMEOUT)
{
    ar_pid_t p = {12, (7ull << 32) | 345};
    char full[AR_PID_STRLEN];
    cr_assert_eq(ar_pid_format(p, full, sizeof full), 0);
    cr_assert_str_eq(full, "<12.345.7>");
    size_t len = strlen(full);
    /* exactly enough */
    char buf[AR_PID_STRLEN];
    memset(buf, 'Z', sizeof buf);
    cr_assert_eq(ar_pid_format(p, buf, len + 1), 0);
    cr_assert_str_eq(buf, full);
    for (size_t n = 1; n <= len; n++) {
        memset(buf, 'Z', sizeof buf);
        cr_assert_eq(ar_pid_format(p, buf, n), AR_E2BIG, "n=%zu", n);
        cr_assert_eq(buf[n - 1], '\0', "n=%zu: not NUL-terminated", n);
        cr_assert_eq(strncmp(buf, full, n - 1), 0, "n=%zu: \"%s\" is not a prefix", n, buf);
        cr_assert_eq(buf[n], 'Z', "n=%zu: wrote past the buffer", n);
    }
    cr_assert_eq(ar_pid_format(p, NULL, 10), AR_EINVAL);
    cr_assert_eq(ar_pid_format(p, buf, 0), AR_EINVAL);
}

Test(api, pid_predicates, .timeout = TH_TIMEOUT)
{
    cr_assert(ar_pid_is_none(AR_PID_NONE));
    cr_assert(ar_pid_eq(AR_PID_NONE, AR_PID_NONE));
    ar_node_t *node = th_node(1);
    ar_pid_t a = th_spawn(node, &nop_b, NULL), b = th_spawn(node, &nop_b, NULL);
    cr_assert(!ar_pid_is_none(a));
    cr_assert(ar_pid_eq(a, a));
    cr_assert(!ar_pid_eq(a, b));
    cr_assert(ar_pid_is_local(node, a));
    cr_assert(!ar_pid_is_local(node, AR_PID_NONE));
    cr_assert(!ar_pid_is_local(NULL, a));
    ar_pid_t other = a;
    other.hi += 1;
    cr_assert(!ar_pid_is_local(node, other));
    th_node_stop(node);
}

/* ---- node ----------------------------------------------------------------------------------------- */
Test(api, node_functions_reject_null_and_bad_timeouts, .timeout = TH_TIMEOUT)
{
    cr_assert_eq(ar_node_start(NULL, NULL), AR_EINVAL);
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cr_assert_eq(ar_node_start(&cfg, NULL), AR_EINVAL);
    cr_assert_eq(ar_node_wait(NULL), AR_EINVAL);
    cr_assert_eq(ar_node_stop(NULL, 1000), AR_EINVAL);
    ar_node_request_stop(NULL);
    ar_node_config_init(NULL);
    ar_node_stats(NULL, NULL);
    ar_node_stats_t s;
    memset(&s, 0x5A, sizeof s);
    ar_node_stats(NULL, &s);

    ar_node_t *node = th_node(1);
    ar_node_stats(node, NULL);
    cr_assert_eq(ar_node_stop(node, -2), AR_EINVAL);
    cr_assert_eq(ar_node_stop(node, -1000), AR_EINVAL);
    /* still running after the refused stops */
    th_echo_check(node, th_spawn(node, &th_echo, NULL));
    cr_assert_eq(ar_node_stop(node, AR_INFINITY), 0);
}

/* Node functions a process may not call on its own node. */
typedef struct inside {
    int wait_rc, stop_rc;
    atomic_int done;
} inside_t;
static void inside_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    inside_t *in = state;
    in->wait_rc = ar_node_wait(ar_node(self));
    in->stop_rc = ar_node_stop(ar_node(self), 1000);
    atomic_store(&in->done, 1);
}
static const ar_behaviour_t inside_b = {"inside", arg_init, inside_handle, NULL};

Test(api, node_wait_and_stop_from_a_process_of_the_node_are_edeadlk, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static inside_t in;
    ar_pid_t p = th_spawn(node, &inside_b, &in);
    th_send(node, p, 1, NULL, 0);
    th_await(atomic_load(&in.done) == 1);
    cr_assert_eq(in.wait_rc, AR_EDEADLK, "ar_node_wait: %d (%s)", in.wait_rc,
                 ar_err_name(in.wait_rc));
    cr_assert_eq(in.stop_rc, AR_EDEADLK, "ar_node_stop: %d (%s)", in.stop_rc,
                 ar_err_name(in.stop_rc));
    th_echo_check(node, th_spawn(node, &th_echo, NULL));
    th_node_stop(node);
}

/* ---- spawn, info, stats ------------------------------------------------------------------------------ */
Test(api, spawn_rejects_null_node_behaviour_and_handle, .timeout = TH_TIMEOUT)
{
    ar_pid_t p = AR_PID_NONE;
    cr_assert_eq(ar_spawn(NULL, &nop_b, NULL, NULL, &p), AR_EINVAL);
    ar_node_t *node = th_node(1);
    cr_assert_eq(ar_spawn(node, NULL, NULL, NULL, &p), AR_EINVAL);
    static const ar_behaviour_t no_handle = {"no_handle", NULL, NULL, NULL};
    cr_assert_eq(ar_spawn(node, &no_handle, NULL, NULL, &p), AR_EINVAL);
    cr_assert_eq(th_stats(node).processes, 0);
    cr_assert_eq(th_stats(node).spawned, 0);
    /* out is optional; opts NULL means defaults */
    cr_assert_eq(ar_spawn(node, &nop_b, NULL, NULL, NULL), 0);
    ar_spawn_opts_t opts = {0};
    cr_assert_eq(ar_spawn(node, &nop_b, NULL, &opts, &p), 0);
    cr_assert_eq(th_stats(node).processes, 2);
    th_node_stop(node);
}

Test(api, proc_info_rejects_null_and_reports_a_live_process, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    static th_log_t log;
    ar_pid_t p = th_spawn(node, &th_recorder, &log);
    ar_proc_info_t info;
    cr_assert_eq(ar_proc_info(NULL, p, &info), AR_EINVAL);
    cr_assert_eq(ar_proc_info(node, p, NULL), AR_EINVAL);
    cr_assert_eq(ar_proc_info(node, AR_PID_NONE, &info), AR_ENOPROC);
    for (int i = 0; i < 3; i++) th_send(node, p, 1, NULL, 0);
    cr_assert_eq(th_sync(node, p), 3);
    memset(&info, 0x5A, sizeof info);
    cr_assert_eq(ar_proc_info(node, p, &info), 0);
    cr_assert(ar_pid_eq(info.pid, p));
    cr_assert(ar_pid_is_none(info.parent), "spawned from main: no parent");
    cr_assert_eq(info.behaviour, th_recorder.name, "the behaviour's own static name");
    cr_assert_str_eq(info.name, "");
    cr_assert_eq(info.mailbox_len, 0);
    cr_assert_geq(info.handled, 3);
    cr_assert_eq(info.trap_exit, false);
    cr_assert_eq(info.blocked, false);
    th_node_stop(node);
}

/* ---- send, call, reply, timers from outside any process --------------------------------------------- */
static ar_node_t *small_node(void)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 1;
    cfg.max_message_bytes = 64;
    return th_node_cfg(&cfg);
}

Test(api, send_rejects_null_node_null_data_and_oversize, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = small_node();
    static th_log_t log;
    ar_pid_t p = th_spawn(node, &th_recorder, &log);
    char big[65];
    memset(big, 'b', sizeof big);
    cr_assert_eq(ar_send(NULL, p, 1, "x", 1), AR_EINVAL);
    cr_assert_eq(ar_send(node, p, 1, NULL, 5), AR_EINVAL);
    cr_assert_eq(ar_send(node, p, 1, big, 65), AR_E2BIG);
    cr_assert_eq(ar_send(node, p, 1, big, 64), 0, "exactly max_message_bytes fits");
    cr_assert_eq(th_sync(node, p), 1, "only the accepted send was delivered");
    cr_assert_eq(log.e[0].len, 64);
    th_node_stop(node);
}

Test(api, call_rejects_null_node_reply_data_bad_timeout_and_oversize, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = small_node();
    static th_echo_state_t st;
    ar_pid_t p = th_spawn(node, &th_echo, &st);
    ar_buf_t r = {0};
    char big[65];
    memset(big, 'b', sizeof big);
    cr_assert_eq(ar_call(NULL, p, 1, "x", 1, &r, 1000), AR_EINVAL);
    cr_assert_eq(ar_call(node, p, 1, "x", 1, NULL, 1000), AR_EINVAL);
    cr_assert_eq(ar_call(node, p, 1, NULL, 3, &r, 1000), AR_EINVAL);
    cr_assert_eq(ar_call(node, p, 1, "x", 1, &r, -2), AR_EINVAL);
    cr_assert_eq(ar_call(node, p, 1, "x", 1, &r, -100), AR_EINVAL);
    cr_assert_eq(ar_call(node, p, 1, big, 65, &r, 1000), AR_E2BIG);
    cr_assert_eq(atomic_load(&st.calls), 0, "no refused call reached the server");
    cr_assert_eq(ar_call(node, p, 1, big, 64, &r, AR_INFINITY), 0);
    cr_assert_eq(r.len, 64);
    ar_buf_free(&r);
    ar_buf_free(NULL);
    ar_buf_free(&r); /* twice: a zeroed buffer */
    th_node_stop(node);
}

/* A server that answers with a payload bigger than the node allows. */
typedef struct big_reply {
    int rc_big, rc_null, rc_ok;
} big_reply_t;
static void big_reply_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    big_reply_t *b = state;
    char big[65];
    memset(big, 'r', sizeof big);
    b->rc_big = ar_reply(ar_node(self), m->reply_to, big, sizeof big);
    b->rc_null = ar_reply(ar_node(self), m->reply_to, NULL, 4);
    b->rc_ok = ar_reply(ar_node(self), m->reply_to, "fine", 4);
}
static const ar_behaviour_t big_reply_b = {"big_reply", arg_init, big_reply_handle, NULL};

Test(api, reply_rejects_null_node_bad_reply_to_null_data_and_oversize, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = small_node();
    ar_reply_to_t zero = {AR_PID_NONE, 0};
    cr_assert_eq(ar_reply(NULL, zero, "x", 1), AR_EINVAL);
    cr_assert_eq(ar_reply(node, zero, "x", 1), AR_EINVAL);
    static big_reply_t b;
    ar_pid_t p = th_spawn(node, &big_reply_b, &b);
    ar_buf_t r = {0};
    int rc = ar_call(node, p, 1, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "%s", ar_err_name(rc));
    cr_assert_eq(b.rc_big, AR_E2BIG);
    cr_assert_eq(b.rc_null, AR_EINVAL);
    cr_assert_eq(b.rc_ok, 0);
    cr_assert_eq(r.len, 4);
    cr_assert_arr_eq(r.data, "fine", 4);
    ar_buf_free(&r);
    th_node_stop(node);
}

Test(api, send_after_and_cancel_reject_bad_input, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = small_node();
    static th_log_t log;
    ar_pid_t p = th_spawn(node, &th_recorder, &log);
    ar_ref_t t = 0;
    char big[65] = {0};
    cr_assert_eq(ar_send_after(NULL, 1, p, 1, NULL, 0, &t), AR_EINVAL);
    cr_assert_eq(ar_send_after(node, -2, p, 1, NULL, 0, &t), AR_EINVAL);
    cr_assert_eq(ar_send_after(node, -1000, p, 1, NULL, 0, &t), AR_EINVAL);
    cr_assert_eq(ar_send_after(node, 1, p, 1, NULL, 3, &t), AR_EINVAL);
    cr_assert_eq(ar_send_after(node, 1, p, 1, big, 65, &t), AR_E2BIG);
    cr_assert_eq(ar_cancel_timer(NULL, 1), AR_EINVAL);
    cr_assert_eq(ar_cancel_timer(node, 0), AR_ENOENT);
    /* None of the refused timers fires: a good one arrives alone. */
    cr_assert_eq(ar_send_after(node, 1, p, 2, NULL, 0, NULL), 0);
    th_await(th_log_len(&log) == 1);
    cr_assert_eq(log.e[0].tag, 2);
    cr_assert_eq(th_sync(node, p), 1);
    th_node_stop(node);
}

/* ---- self functions ---------------------------------------------------------------------------------- */
Test(api, self_functions_given_null_return_einval_or_nothing, .timeout = TH_TIMEOUT)
{
    cr_assert(ar_pid_is_none(ar_self(NULL)));
    cr_assert_null(ar_node(NULL));
    ar_ref_t ref = 0;
    ar_msg_t *m = NULL;
    cr_assert_eq(ar_ask(NULL, AR_PID_NONE, 1, NULL, 0, 1000, &ref), AR_EINVAL);
    cr_assert_eq(ar_receive(NULL, NULL, NULL, 0, &m), AR_EINVAL);
    cr_assert_eq(ar_sleep(NULL, 1), AR_EINVAL);
    ar_msg_release(NULL, NULL);
    ar_stop(NULL, AR_REASON(AR_NORMAL));
}

/* A process's self handle used from outside its handlers: AR_EINVAL. */
typedef struct leak_self {
    ar_proc_t *self;
    atomic_int ready;
} leak_self_t;
static void leak_self_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    leak_self_t *l = state;
    l->self = self;
    atomic_store(&l->ready, 1);
}
static const ar_behaviour_t leak_self_b = {"leak_self", arg_init, leak_self_handle, NULL};

Test(api, self_functions_from_outside_the_process_are_einval, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static leak_self_t l;
    ar_pid_t p = th_spawn(node, &leak_self_b, &l);
    th_send(node, p, 1, NULL, 0);
    th_await(atomic_load(&l.ready) == 1);
    ar_ref_t ref = 0;
    ar_msg_t *m = NULL;
    cr_assert_eq(ar_ask(l.self, p, 1, NULL, 0, 1000, &ref), AR_EINVAL);
    cr_assert_eq(ar_receive(l.self, NULL, NULL, 0, &m), AR_EINVAL);
    cr_assert_eq(ar_sleep(l.self, 1), AR_EINVAL);
    cr_assert(th_proc_alive(node, p));
    th_node_stop(node);
}

/* Bad arguments to the self functions from inside a handler. */
typedef struct bad_self {
    int ask_bad_timeout, ask_null_data, ask_big;
    int recv_null_out, recv_bad_timeout;
    int sleep_bad;
    int send_after_big;
    atomic_int done;
} bad_self_t;
static void bad_self_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    bad_self_t *b = state;
    ar_ref_t ref = 0;
    ar_msg_t *out = NULL;
    char big[65] = {0};
    ar_pid_t me = ar_self(self);
    b->ask_bad_timeout = ar_ask(self, me, 1, NULL, 0, -2, &ref);
    b->ask_null_data = ar_ask(self, me, 1, NULL, 5, 1000, &ref);
    b->ask_big = ar_ask(self, me, 1, big, 65, 1000, &ref);
    b->recv_null_out = ar_receive(self, NULL, NULL, 0, NULL);
    b->recv_bad_timeout = ar_receive(self, NULL, NULL, -2, &out);
    b->sleep_bad = ar_sleep(self, -2);
    b->send_after_big = ar_send_after(ar_node(self), 1, me, 1, big, 65, NULL);
    atomic_store(&b->done, 1);
}
static const ar_behaviour_t bad_self_b = {"bad_self", arg_init, bad_self_handle, NULL};

Test(api, self_functions_reject_bad_arguments_inside_a_handler, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = small_node();
    static bad_self_t b;
    ar_pid_t p = th_spawn(node, &bad_self_b, &b);
    th_send(node, p, 1, NULL, 0);
    th_await(atomic_load(&b.done) == 1);
    cr_assert_eq(b.ask_bad_timeout, AR_EINVAL, "%s", ar_err_name(b.ask_bad_timeout));
    cr_assert_eq(b.ask_null_data, AR_EINVAL, "%s", ar_err_name(b.ask_null_data));
    cr_assert_eq(b.ask_big, AR_E2BIG, "%s", ar_err_name(b.ask_big));
    cr_assert_eq(b.recv_null_out, AR_EINVAL, "%s", ar_err_name(b.recv_null_out));
    cr_assert_eq(b.recv_bad_timeout, AR_EINVAL, "%s", ar_err_name(b.recv_bad_timeout));
    cr_assert_eq(b.sleep_bad, AR_EINVAL, "%s", ar_err_name(b.sleep_bad));
    cr_assert_eq(b.send_after_big, AR_E2BIG, "%s", ar_err_name(b.send_after_big));
    cr_assert(th_proc_alive(node, p), "bad arguments do not crash the process");
    th_node_stop(node);
}

/* ar_ask's ref is its only link to the REPLY that follows: unlike ar_spawn's out and
 * ar_send_after's timer, it is not optional. */
typedef struct ask_null {
    int rc;
    atomic_int done;
} ask_null_t;
static void ask_null_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ask_null_t *a = state;
    if (m->kind != AR_MSG_CAST) return;
    a->rc = ar_ask(self, ar_self(self), 1, NULL, 0, 1000, NULL);
    atomic_store(&a->done, 1);
}
static const ar_behaviour_t ask_null_b = {"ask_null", arg_init, ask_null_handle, NULL};

Test(api, ask_with_null_ref_is_einval, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    static ask_null_t a;
    ar_pid_t p = th_spawn(node, &ask_null_b, &a);
    th_send(node, p, 1, NULL, 0);
    th_await(atomic_load(&a.done) == 1);
    cr_assert_eq(a.rc, AR_EINVAL, "ar_ask with NULL ref: %d (%s)", a.rc, ar_err_name(a.rc));
    th_node_stop(node);
}

/* ---- allocator ------------------------------------------------------------------------------------------ */
Test(api, set_allocator_null_restores_libc_when_no_node_runs, .timeout = TH_TIMEOUT)
{
    cr_assert_eq(ar_set_allocator(NULL), 0);
    ar_node_t *node = th_node(1);
    cr_assert_eq(ar_set_allocator(NULL), AR_EBUSY);
    th_node_stop(node);
    cr_assert_eq(ar_set_allocator(NULL), 0);
}
