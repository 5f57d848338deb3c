/* Calls whose target dies: ar_call returns AR_ENOPROC at once (not after its timeout) when
 * the target crashes while handling the call, dies with a deferred reply pending, is
 * killed before handling it, or is already dead; from processes and from a foreign thread
 * (one table of how the target dies x who calls). Afterwards the caller holds no monitor
 * and finds no stray message. ar_ask to a target that dies answers with one AR_MSG_REPLY
 * carrying the target's exit reason. */
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
#define FAR_MS 60000 /* a timeout that must never be waited out: far beyond TH_WAIT_MS */
#define ASK_MS 3000  /* an ask's timeout: its target dies well before it */

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
    th_reason_text(s->why_text, sizeof s->why_text, why.text);
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
            th_reason_text(c->text[i], sizeof c->text[i], m->reason.text);
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
    cr_assert_eq(e->kind, kind, TH_AT "entry %zu: kind %d (tag %u), expected %d", TH_ROW, i,
                 e->kind, e->tag, kind);
    if (kind == AR_MSG_CAST || kind == AR_MSG_TIMER)
        cr_assert_eq(e->tag, tag, TH_AT "entry %zu: tag %u, expected %u", TH_ROW, i, e->tag, tag);
}

/* The call's outcome and what the caller has left afterwards: no monitor, and only the
 * marker it sent itself after the call. */
static void assert_clean_enoproc(ar_node_t *node, ar_pid_t cl, caller_t *c)
{
    cr_assert_eq(c->rc, AR_ENOPROC, TH_AT "ar_call: %s", TH_ROW, ar_err_name(c->rc));
    cr_assert_lt(c->elapsed_ms, FAR_MS / 2.0, TH_AT "ar_call waited %.0f ms, near its timeout",
                 TH_ROW, c->elapsed_ms);
    cr_assert_eq(c->monitors_after, 0, TH_AT "the call left %zu monitors", TH_ROW,
                 c->monitors_after);
    th_await(th_log_len(&c->log) >= 1);
    (void)th_sync(node, cl);
    cr_assert_eq(th_log_len(&c->log), 1, TH_AT "a stray message after the call (kind %d)",
                 TH_ROW, c->log.e[1].kind);
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

/* ---- a call whose target dies: how it dies x who calls ------------------------------------ */
/* The target crashes while handling the call, crashes 50 ms after keeping reply_to, is
 * killed with reply_to kept, is ended while the call waits in its mailbox (it is parked in
 * a receive that never matches), or was dead before the call. The caller is a process
 * (ar_call), a foreign thread (ar_call), or a process asking (ar_ask). A call fails with
 * AR_ENOPROC as soon as the target is gone, long before its own FAR_MS timeout, and leaves
 * the caller no monitor and no stray message (only the marker it sends itself after the
 * call); a foreign thread can call again at once. An ask gets exactly one AR_MSG_REPLY with
 * its ref and the target's exit reason (AR_NOPROC for a dead target), before a marker timer
 * due after the ask's own timeout, where a second, late reply would come. */
typedef enum { DIES_IN_CALL, DIES_LATER, KILLED_DEFERRED, ENDED_QUEUED, ALREADY_DEAD } death_t;
typedef enum { PROC_CALL, THREAD_CALL, PROC_ASK } caller_kind_t;
typedef struct down_row {
    char name[48];
    death_t death;
    caller_kind_t caller;
} down_row_t;

ParameterizedTestParameters(call_down, call_to_a_target_that_dies)
{
    static down_row_t rows[] = {
        {"dies_in_call_process_call", DIES_IN_CALL, PROC_CALL},
        {"dies_in_call_thread_call", DIES_IN_CALL, THREAD_CALL},
        {"dies_in_call_ask", DIES_IN_CALL, PROC_ASK},
        {"dies_later_process_call", DIES_LATER, PROC_CALL},
        {"dies_later_thread_call", DIES_LATER, THREAD_CALL},
        {"dies_later_ask", DIES_LATER, PROC_ASK},
        {"killed_deferred_process_call", KILLED_DEFERRED, PROC_CALL},
        {"killed_deferred_thread_call", KILLED_DEFERRED, THREAD_CALL},
        {"killed_deferred_ask", KILLED_DEFERRED, PROC_ASK},
        {"ended_queued_process_call", ENDED_QUEUED, PROC_CALL},
        {"ended_queued_thread_call", ENDED_QUEUED, THREAD_CALL},
        {"ended_queued_ask", ENDED_QUEUED, PROC_ASK},
        {"already_dead_process_call", ALREADY_DEAD, PROC_CALL},
        {"already_dead_thread_call", ALREADY_DEAD, THREAD_CALL},
        {"already_dead_ask", ALREADY_DEAD, PROC_ASK},
    };
    return TH_ROWS(down_row_t, rows);
}

/* A foreign thread's call, then a call to an echo server from the same thread. */
typedef struct thread_call {
    ar_node_t *node;
    ar_pid_t to, echo;
    uint32_t tag;
    int rc, echo_rc; /* echo_rc AR_EBADMSG: a wrong answer */
    bool reply_empty;
    atomic_int done;
} thread_call_t;

static void *thread_call(void *arg)
{
    thread_call_t *t = arg;
    ar_buf_t r = {0};
    t->rc = ar_call(t->node, t->to, t->tag, "req", 3, &r, FAR_MS);
    t->reply_empty = r.data == NULL;
    ar_buf_free(&r);
    t->echo_rc = ar_call(t->node, t->echo, TAG_ECHO, "q", 1, &r, TH_WAIT_MS);
    if (t->echo_rc == 0 && (r.len != 1 || memcmp(r.data, "q", 1) != 0)) t->echo_rc = AR_EBADMSG;
    ar_buf_free(&r);
    atomic_store(&t->done, 1);
    return NULL;
}

ParameterizedTest(down_row_t *r, call_down, call_to_a_target_that_dies, .timeout = TH_TIMEOUT)
{
    static const uint32_t tags[] = {TAG_CRASH, TAG_DEFER_CRASH, TAG_DEFER, TAG_ECHO, TAG_ECHO};
    static const ar_exit_code_t ends[] = {AR_ERROR, AR_ERROR, AR_KILLED, AR_SHUTDOWN, AR_ERROR};
    static const char *texts[] = {CRASH_TEXT, LATER_TEXT, "", "", LATER_TEXT};
    th_row_begin(r->name);
    ar_node_t *node = th_node(2);
    server_t *s;
    ar_pid_t srv = spawn_server(node, &s);
    bool deferred = r->death == DIES_LATER || r->death == KILLED_DEFERRED;
    if (r->death == ALREADY_DEAD) {
        th_send(node, srv, TAG_CRASH, NULL, 0);
        th_await(atomic_load(&s->ended) == 1);
        th_await(!th_proc_alive(node, srv));
    } else if (r->death == ENDED_QUEUED) {
        th_send(node, srv, TAG_BLOCK, NULL, 0);
        th_await(th_proc_blocked(node, srv));
    }

    /* the call */
    ar_pid_t cl = AR_PID_NONE;
    caller_t *c = NULL;
    static thread_call_t tc;
    pthread_t th;
    cmd_t k = {.pid = srv, .tag = tags[r->death], .timeout_ms = FAR_MS};
    if (r->caller == THREAD_CALL) {
        tc = (thread_call_t){.node = node, .to = srv, .tag = k.tag,
                             .echo = th_spawn(node, &th_echo, NULL)};
        cr_assert_eq(pthread_create(&th, NULL, thread_call, &tc), 0);
    } else {
        c = new_caller(node, &cl);
        if (r->caller == PROC_ASK) {
            k.timeout_ms = ASK_MS;
            k.marker_ms = ASK_MS + 500;
            run(node, cl, c, ACT_ASK, k);
            cr_assert_eq(c->rc, 0, TH_AT "ar_ask: %s", TH_ROW, ar_err_name(c->rc));
            cr_assert_neq(c->ref, 0);
        } else {
            th_send(node, cl, ACT_CALL, &k, sizeof k);
        }
    }

    /* the death */
    if (r->death == KILLED_DEFERRED) {
        th_await(atomic_load(&s->kept_n) == 1);
        cr_assert_eq(ar_exit(node, srv, AR_REASON(AR_KILL)), 0);
    } else if (r->death == ENDED_QUEUED) {
        ar_proc_info_t info;
        th_await(ar_proc_info(node, srv, &info) == 0 && info.mailbox_len == 1);
        cr_assert_eq(ar_exit(node, srv, AR_REASON(AR_SHUTDOWN)), 0);
    }
    th_await(atomic_load(&s->ended) == 1);
    cr_assert_eq(s->why, ends[r->death], TH_AT "the target ended with %s", TH_ROW,
                 ar_exit_code_name(s->why));
    cr_assert_str_eq(s->why_text, texts[r->death], TH_AT "the target's text \"%s\"", TH_ROW,
                     s->why_text);
    if (deferred) cr_assert_eq(atomic_load(&s->kept_n), 1);
    if (r->death == ENDED_QUEUED)
        cr_assert_eq(atomic_load(&s->calls), 0, TH_AT "the queued call was handled", TH_ROW);

    /* the outcome */
    if (r->caller == THREAD_CALL) {
        th_await(atomic_load(&tc.done) == 1); /* long before the call's own FAR_MS */
        pthread_join(th, NULL);
        cr_assert_eq(tc.rc, AR_ENOPROC, TH_AT "ar_call: %s", TH_ROW, ar_err_name(tc.rc));
        cr_assert(tc.reply_empty, TH_AT "a failed call handed out a reply", TH_ROW);
        cr_assert_eq(tc.echo_rc, 0, TH_AT "the thread's next call: %s", TH_ROW,
                     ar_err_name(tc.echo_rc));
    } else if (r->caller == PROC_CALL) {
        th_await(atomic_load(&c->done) == 1);
        assert_clean_enoproc(node, cl, c);
        if (r->death == DIES_LATER)
            cr_assert_geq(c->elapsed_ms, 40.0, TH_AT "returned before the crash (%.0f ms)",
                          TH_ROW, c->elapsed_ms);
    } else {
        ar_exit_code_t want = r->death == ALREADY_DEAD ? AR_NOPROC : ends[r->death];
        th_await(th_log_len(&c->log) == 2);
        assert_kind(c, 0, AR_MSG_REPLY, 0);
        cr_assert_eq(c->log.e[0].ref, c->ref, TH_AT "the reply's ref", TH_ROW);
        cr_assert_eq(c->log.e[0].code, want, TH_AT "reply reason %s, want %s", TH_ROW,
                     ar_exit_code_name(c->log.e[0].code), ar_exit_code_name(want));
        if (want == AR_ERROR)
            cr_assert_str_eq(c->text[0], texts[r->death], TH_AT "reply text \"%s\"", TH_ROW,
                             c->text[0]);
        assert_kind(c, 1, AR_MSG_TIMER, TAG_MARKER);
        (void)th_sync(node, cl);
        cr_assert_eq(th_log_len(&c->log), 2, TH_AT "a second reply", TH_ROW);
        cr_assert_eq(info_of_monitors(node, cl), 0);
    }
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
