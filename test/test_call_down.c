/* Calls whose target dies: ar_call returns AR_ENOPROC at once (not after its timeout) when
 * the target crashes while handling the call, dies with a deferred reply pending, is
 * killed before handling it, or is already dead; from processes and from the test thread.
 * Afterwards the caller holds no monitor and finds no stray message. ar_ask to a target
 * that dies answers with one AR_MSG_REPLY carrying the target's exit reason. */
#include "test_helpers.h"

enum {
    TAG_MARKER = 1,
    TAG_ECHO,          /* CALL: answered with its payload */
    TAG_CRASH,         /* CALL or CAST: AR_FAIL("crash in call") */
    TAG_DEFER,         /* CALL: reply_to kept, never answered */
    TAG_DEFER_CRASH,   /* CALL: reply_to kept, crash 50 ms later */
    TAG_BLOCK,         /* CAST: park in a receive that never matches */
    /* caller actions (casts with a cmd_t) */
    ACT_CALL = 100,    /* ar_call(pid, tag, timeout) then a marker to self */
    ACT_ASK,           /* ar_ask(pid, tag, timeout) then a marker timer to self */
    ACT_MONITOR,       /* ar_monitor(pid) */
};

#define CRASH_TEXT "crash in call"
#define LATER_TEXT "crash later"
#define FAR_MS 10000 /* a timeout that must never be waited out */
#define PROMPT_MS 3000.0

static int arg_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static bool match_none(const ar_msg_t *m, void *ud)
{
    (void)m, (void)ud;
    return false;
}

/* ---- a server that crashes or defers --------------------------------------------------- */
typedef struct server {
    ar_reply_to_t kept;
    atomic_int kept_n; /* reply_tos kept */
    atomic_int calls;  /* CALLs handled */
    atomic_int ended;
    ar_exit_code_t why;
    char why_text[128];
} server_t;

static void server_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    server_t *s = state;
    ar_node_t *node = ar_node(self);
    if (m->kind == AR_MSG_CALL) atomic_fetch_add(&s->calls, 1);
    switch (m->tag) {
    case TAG_ECHO:
        ar_reply(node, m->reply_to, m->data, m->len);
        break;
    case TAG_CRASH:
        AR_FAIL(self, "%s", m->kind == AR_MSG_CALL ? CRASH_TEXT : LATER_TEXT);
    case TAG_DEFER:
        s->kept = m->reply_to;
        atomic_fetch_add(&s->kept_n, 1);
        break;
    case TAG_DEFER_CRASH:
        s->kept = m->reply_to;
        atomic_fetch_add(&s->kept_n, 1);
        ar_send_after(node, 50, ar_self(self), TAG_CRASH, NULL, 0, NULL);
        break;
    case TAG_BLOCK: {
        ar_msg_t *got = NULL;
        ar_receive(self, match_none, NULL, FAR_MS, &got);
        break;
    }
    default:
        break;
    }
}

static void server_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    server_t *s = state;
    s->why = why.code;
    snprintf(s->why_text, sizeof s->why_text, "%s", why.text ? why.text : "");
    atomic_store(&s->ended, 1);
}
static const ar_behaviour_t server_b = {"server", arg_init, server_handle, server_terminate};

#define SERVERS 6
static server_t servers[SERVERS];
static int servers_used;

static ar_pid_t spawn_server(ar_node_t *node, server_t **out)
{
    cr_assert_lt(servers_used, SERVERS);
    server_t *s = &servers[servers_used++];
    memset(s, 0, sizeof *s);
    *out = s;
    return th_spawn(node, &server_b, s);
}

/* ---- a caller process ---------------------------------------------------------------------- */
typedef struct cmd {
    ar_pid_t pid;
    uint32_t tag;
    int timeout_ms;
    int marker_ms; /* ACT_ASK: when the marker timer fires */
} cmd_t;

#define TEXT_N 64
typedef struct caller {
    th_log_t log; /* messages other than actions, and the terminate reason */
    char text[TEXT_N][128];
    atomic_int done; /* actions finished */
    int rc;
    double elapsed_ms;
    size_t monitors_after; /* proc_info(self).monitors right after the call */
    ar_ref_t ref;
} caller_t;

static void caller_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    caller_t *c = state;
    ar_node_t *node = ar_node(self);
    if (th_sync_answer(self, &c->log, m)) return;
    cmd_t k;
    if (m->kind != AR_MSG_CAST || m->tag < ACT_CALL || m->len != sizeof k) {
        size_t i = th_log_len(&c->log);
        if (i < TEXT_N)
            snprintf(c->text[i], sizeof c->text[i], "%s", m->reason.text ? m->reason.text : "");
        th_log_msg(&c->log, m);
        return;
    }
    memcpy(&k, m->data, sizeof k);
    ar_proc_info_t info;
    switch (m->tag) {
    case ACT_CALL: {
        ar_buf_t r = {0};
        uint64_t t0 = th_now_ns();
        c->rc = ar_call(node, k.pid, k.tag, "req", 3, &r, k.timeout_ms);
        c->elapsed_ms = th_ms_since(t0);
        ar_buf_free(&r);
        memset(&info, 0, sizeof info);
        c->monitors_after = ar_proc_info(node, ar_self(self), &info) == 0 ? info.monitors : 999;
        ar_send(node, ar_self(self), TAG_MARKER, NULL, 0);
        break;
    }
    case ACT_ASK:
        c->rc = ar_ask(self, k.pid, k.tag, "req", 3, k.timeout_ms, &c->ref);
        ar_send_after(node, k.marker_ms, ar_self(self), TAG_MARKER, NULL, 0, NULL);
        break;
    case ACT_MONITOR:
        c->rc = ar_monitor(self, k.pid, &c->ref);
        break;
    default:
        break;
    }
    atomic_fetch_add(&c->done, 1);
}
static const ar_behaviour_t caller_b = {"caller", arg_init, caller_handle, NULL};

static caller_t *new_caller(ar_node_t *node, ar_pid_t *pid)
{
    static caller_t c;
    memset(&c, 0, sizeof c);
    *pid = th_spawn(node, &caller_b, &c);
    return &c;
}

/* Runs one action and waits for it to finish. */
static void run(ar_node_t *node, ar_pid_t cl, caller_t *c, uint32_t act, cmd_t k)
{
    int before = atomic_load(&c->done);
    th_send(node, cl, act, &k, sizeof k);
    th_await(atomic_load(&c->done) == before + 1);
}

static void assert_kind(caller_t *c, size_t i, ar_msg_kind_t kind, uint32_t tag)
{
    cr_assert_lt(i, th_log_len(&c->log));
    const th_entry_t *e = &c->log.e[i];
    cr_assert_eq(e->kind, kind, "entry %zu: kind %d (tag %u), expected %d", i, e->kind,
                 e->tag, kind);
    if (kind == AR_MSG_CAST || kind == AR_MSG_TIMER)
        cr_assert_eq(e->tag, tag, "entry %zu: tag %u, expected %u", i, e->tag, tag);
}

/* The call's outcome and what the caller has left afterwards: no monitor, and only the
 * marker it sent itself after the call. */
static void assert_clean_enoproc(ar_node_t *node, ar_pid_t cl, caller_t *c)
{
    cr_assert_eq(c->rc, AR_ENOPROC, "ar_call: %s", ar_err_name(c->rc));
    cr_assert_lt(c->elapsed_ms, PROMPT_MS, "ar_call waited %.0f ms", c->elapsed_ms);
    cr_assert_eq(c->monitors_after, 0, "the call left %zu monitors", c->monitors_after);
    th_await(th_log_len(&c->log) >= 1);
    (void)th_sync(node, cl);
    cr_assert_eq(th_log_len(&c->log), 1, "a stray message after the call (kind %d)",
                 c->log.e[0].kind);
    assert_kind(c, 0, AR_MSG_CAST, TAG_MARKER);
}

static size_t info_of_monitors(ar_node_t *node, ar_pid_t pid)
{
    ar_proc_info_t i;
    memset(&i, 0, sizeof i);
    int rc = ar_proc_info(node, pid, &i);
    cr_assert_eq(rc, 0, "ar_proc_info: %s", ar_err_name(rc));
    return i.monitors;
}

/* ---- the target crashes while handling the call ---------------------------------------- */
Test(call_down, target_crashing_while_handling_the_call_gives_enoproc_at_once,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);
    run(node, cl, c, ACT_CALL, (cmd_t){.pid = srv, .tag = TAG_CRASH, .timeout_ms = FAR_MS});
    assert_clean_enoproc(node, cl, c);
    th_await(atomic_load(&s->ended) == 1);
    cr_assert_eq(s->why, AR_ERROR);
    cr_assert_str_eq(s->why_text, CRASH_TEXT);
    th_node_stop(node);
}

Test(call_down, target_crashing_while_handling_a_call_from_a_foreign_thread_gives_enoproc,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    ar_buf_t r = {0};
    uint64_t t0 = th_now_ns();
    int rc = ar_call(node, srv, TAG_CRASH, "req", 3, &r, FAR_MS);
    double ms = th_ms_since(t0);
    cr_assert_eq(rc, AR_ENOPROC, "ar_call: %s", ar_err_name(rc));
    cr_assert_lt(ms, PROMPT_MS, "ar_call waited %.0f ms", ms);
    cr_assert_null(r.data);
    th_await(atomic_load(&s->ended) == 1);
    cr_assert_eq(s->why, AR_ERROR);
    /* The thread can still call others. */
    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    th_echo_check(node, echo);
    th_node_stop(node);
}

/* ---- the target keeps reply_to, then dies ------------------------------------------------- */
Test(call_down, target_crashing_with_a_deferred_reply_pending_gives_enoproc_at_once,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);
    /* The server keeps reply_to and crashes 50 ms later. */
    run(node, cl, c, ACT_CALL,
        (cmd_t){.pid = srv, .tag = TAG_DEFER_CRASH, .timeout_ms = FAR_MS});
    cr_assert_eq(atomic_load(&s->kept_n), 1);
    cr_assert_geq(c->elapsed_ms, 40.0, "returned before the crash (%.0f ms)", c->elapsed_ms);
    assert_clean_enoproc(node, cl, c);
    th_await(atomic_load(&s->ended) == 1);
    cr_assert_str_eq(s->why_text, LATER_TEXT);
    th_node_stop(node);
}

Test(call_down, deferred_reply_target_crashing_during_a_foreign_thread_call_gives_enoproc,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    ar_buf_t r = {0};
    uint64_t t0 = th_now_ns();
    int rc = ar_call(node, srv, TAG_DEFER_CRASH, "req", 3, &r, FAR_MS);
    double ms = th_ms_since(t0);
    cr_assert_eq(rc, AR_ENOPROC, "ar_call: %s", ar_err_name(rc));
    cr_assert_lt(ms, PROMPT_MS, "ar_call waited %.0f ms", ms);
    cr_assert_eq(atomic_load(&s->kept_n), 1);
    th_await(atomic_load(&s->ended) == 1);
    th_node_stop(node);
}

Test(call_down, target_killed_with_a_deferred_reply_pending_gives_enoproc_at_once,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);
    th_send(node, cl, ACT_CALL,
            &(cmd_t){.pid = srv, .tag = TAG_DEFER, .timeout_ms = FAR_MS}, sizeof(cmd_t));
    th_await(atomic_load(&s->kept_n) == 1);
    th_await(th_proc_blocked(node, cl));
    uint64_t t0 = th_now_ns();
    cr_assert_eq(ar_exit(node, srv, AR_REASON(AR_KILL)), 0);
    th_await(atomic_load(&c->done) == 1);
    double ms = th_ms_since(t0);
    cr_assert_lt(ms, PROMPT_MS, "the caller waited %.0f ms after the kill", ms);
    assert_clean_enoproc(node, cl, c);
    th_await(atomic_load(&s->ended) == 1);
    cr_assert_eq(s->why, AR_KILLED);
    th_node_stop(node);
}

/* ---- the target dies before handling the call ----------------------------------------- */
Test(call_down, target_killed_before_handling_the_queued_call_gives_enoproc_at_once,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    th_send(node, srv, TAG_BLOCK, NULL, 0);
    th_await(th_proc_blocked(node, srv));
    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);
    th_send(node, cl, ACT_CALL, &(cmd_t){.pid = srv, .tag = TAG_ECHO, .timeout_ms = FAR_MS},
            sizeof(cmd_t));
    th_await(th_proc_blocked(node, cl));
    cr_assert_eq(ar_exit(node, srv, AR_REASON(AR_SHUTDOWN)), 0);
    th_await(atomic_load(&c->done) == 1);
    assert_clean_enoproc(node, cl, c);
    th_await(atomic_load(&s->ended) == 1);
    cr_assert_eq(s->why, AR_SHUTDOWN);
    cr_assert_eq(atomic_load(&s->calls), 0, "the queued call was handled");
    th_node_stop(node);
}

/* ---- nothing left behind ------------------------------------------------------------------- */
Test(call_down, calls_leave_no_monitor_and_no_stray_message, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);

    run(node, cl, c, ACT_CALL, (cmd_t){.pid = echo, .tag = TAG_ECHO, .timeout_ms = FAR_MS});
    cr_assert_eq(c->rc, 0, "echo call: %s", ar_err_name(c->rc));
    cr_assert_eq(c->monitors_after, 0, "a successful call left a monitor");
    run(node, cl, c, ACT_CALL, (cmd_t){.pid = srv, .tag = TAG_DEFER, .timeout_ms = 50});
    cr_assert_eq(c->rc, AR_ETIMEDOUT, "deferred call: %s", ar_err_name(c->rc));
    cr_assert_eq(c->monitors_after, 0, "a timed-out call left a monitor");
    cr_assert_eq(info_of_monitors(node, cl), 0);

    /* Both targets die; the caller's own monitors are the markers: a DOWN left by a call
     * would come with them. */
    run(node, cl, c, ACT_MONITOR, (cmd_t){.pid = echo});
    ar_ref_t r_echo = c->ref;
    run(node, cl, c, ACT_MONITOR, (cmd_t){.pid = srv});
    ar_ref_t r_srv = c->ref;
    cr_assert_eq(info_of_monitors(node, cl), 2);
    cr_assert_eq(ar_exit(node, echo, AR_REASON(AR_SHUTDOWN)), 0);
    th_send(node, srv, TAG_CRASH, NULL, 0);
    th_await(th_log_len(&c->log) >= 4);
    (void)th_sync(node, cl);
    cr_assert_eq(th_log_len(&c->log), 4, "stray messages: %zu entries", th_log_len(&c->log));
    assert_kind(c, 0, AR_MSG_CAST, TAG_MARKER);
    assert_kind(c, 1, AR_MSG_CAST, TAG_MARKER);
    for (size_t i = 2; i < 4; i++) {
        const th_entry_t *e = &c->log.e[i];
        cr_assert_eq(e->kind, AR_MSG_DOWN, "entry %zu: kind %d", i, e->kind);
        if (e->ref == r_echo) {
            cr_assert(ar_pid_eq(e->from, echo));
            cr_assert_eq(e->code, AR_SHUTDOWN);
        } else {
            cr_assert_eq(e->ref, r_srv, "a DOWN with a ref the caller never made");
            cr_assert(ar_pid_eq(e->from, srv));
            cr_assert_eq(e->code, AR_ERROR);
        }
    }
    cr_assert_neq(c->log.e[2].ref, c->log.e[3].ref);
    cr_assert_eq(info_of_monitors(node, cl), 0);
    th_node_stop(node);
}

/* ---- ar_ask to a target that dies ----------------------------------------------------------- */
Test(call_down, ask_to_a_crashing_target_replies_with_the_crash_reason, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);
    /* A timeout reply would come at 300 ms, before the marker at 600 ms. */
    run(node, cl, c, ACT_ASK,
        (cmd_t){.pid = srv, .tag = TAG_CRASH, .timeout_ms = 300, .marker_ms = 600});
    cr_assert_eq(c->rc, 0, "ar_ask: %s", ar_err_name(c->rc));
    cr_assert_neq(c->ref, 0);
    th_await(th_log_len(&c->log) == 2);
    assert_kind(c, 0, AR_MSG_REPLY, 0);
    cr_assert_eq(c->log.e[0].ref, c->ref);
    cr_assert_eq(c->log.e[0].code, AR_ERROR, "reply reason %s",
                 ar_exit_code_name(c->log.e[0].code));
    cr_assert_str_eq(c->text[0], CRASH_TEXT);
    assert_kind(c, 1, AR_MSG_TIMER, TAG_MARKER);
    cr_assert_eq(info_of_monitors(node, cl), 0);
    th_node_stop(node);
}

Test(call_down, ask_to_a_target_killed_with_the_reply_deferred_replies_killed,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);
    run(node, cl, c, ACT_ASK,
        (cmd_t){.pid = srv, .tag = TAG_DEFER, .timeout_ms = 400, .marker_ms = 800});
    cr_assert_eq(c->rc, 0, "ar_ask: %s", ar_err_name(c->rc));
    th_await(atomic_load(&s->kept_n) == 1);
    cr_assert_eq(ar_exit(node, srv, AR_REASON(AR_KILL)), 0);
    th_await(th_log_len(&c->log) >= 1);
    assert_kind(c, 0, AR_MSG_REPLY, 0);
    cr_assert_eq(c->log.e[0].ref, c->ref);
    cr_assert_eq(c->log.e[0].code, AR_KILLED, "reply reason %s",
                 ar_exit_code_name(c->log.e[0].code));
    th_await(th_log_len(&c->log) == 2);
    assert_kind(c, 1, AR_MSG_TIMER, TAG_MARKER);
    th_node_stop(node);
}

/* ---- a dead target ---------------------------------------------------------------------------- */
Test(call_down, call_and_ask_to_a_dead_pid_fail_at_once, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    th_send(node, srv, TAG_CRASH, NULL, 0);
    th_await(atomic_load(&s->ended) == 1);
    th_await(!th_proc_alive(node, srv));

    ar_buf_t r = {0};
    uint64_t t0 = th_now_ns();
    int rc = ar_call(node, srv, TAG_ECHO, "req", 3, &r, FAR_MS);
    cr_assert_eq(rc, AR_ENOPROC, "ar_call from the test thread: %s", ar_err_name(rc));
    cr_assert_lt(th_ms_since(t0), PROMPT_MS);

    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);
    run(node, cl, c, ACT_CALL, (cmd_t){.pid = srv, .tag = TAG_ECHO, .timeout_ms = FAR_MS});
    assert_clean_enoproc(node, cl, c);

    run(node, cl, c, ACT_ASK,
        (cmd_t){.pid = srv, .tag = TAG_ECHO, .timeout_ms = 300, .marker_ms = 600});
    cr_assert_eq(c->rc, 0, "ar_ask: %s", ar_err_name(c->rc));
    th_await(th_log_len(&c->log) == 3);
    assert_kind(c, 1, AR_MSG_REPLY, 0);
    cr_assert_eq(c->log.e[1].ref, c->ref);
    cr_assert_eq(c->log.e[1].code, AR_NOPROC);
    assert_kind(c, 2, AR_MSG_TIMER, TAG_MARKER);
    th_node_stop(node);
}

Test(call_down, ask_to_a_target_that_dies_before_handling_it_replies_with_its_reason,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    th_send(node, srv, TAG_BLOCK, NULL, 0);
    th_await(th_proc_blocked(node, srv));
    ar_pid_t cl;
    caller_t *c = new_caller(node, &cl);
    /* The CALL waits in the parked server's mailbox when the server is ended. */
    run(node, cl, c, ACT_ASK,
        (cmd_t){.pid = srv, .tag = TAG_ECHO, .timeout_ms = 400, .marker_ms = 800});
    cr_assert_eq(c->rc, 0, "ar_ask: %s", ar_err_name(c->rc));
    cr_assert_eq(ar_exit(node, srv, AR_REASON(AR_SHUTDOWN)), 0);
    th_await(atomic_load(&s->ended) == 1);
    cr_assert_eq(atomic_load(&s->calls), 0, "the asked CALL was handled");
    th_await(th_log_len(&c->log) >= 1);
    assert_kind(c, 0, AR_MSG_REPLY, 0);
    cr_assert_eq(c->log.e[0].ref, c->ref);
    cr_assert_eq(c->log.e[0].code, AR_SHUTDOWN, "reply reason %s",
                 ar_exit_code_name(c->log.e[0].code));
    th_await(th_log_len(&c->log) == 2);
    assert_kind(c, 1, AR_MSG_TIMER, TAG_MARKER);
    th_node_stop(node);
}
