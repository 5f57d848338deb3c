/* Links, monitors, exit signals and trap_exit: how an exit signal arrives (a table of
 * sender x reason x trap flag), unlink, dead pids, bidirectional and idempotent links,
 * monitors and their refs, demonitor with and without flush, one sender's order across
 * messages and signals, message order before EXIT/DOWN, link chains, the trap flag at
 * arrival, spawn with .link, killing parked processes, a kill that skips a full mailbox,
 * monitors of a process that dies first, and the introspection counts.
 *
 * Processes are driven by an "agent": the test thread sends it commands (calls answered
 * with a result, or casts for actions that may end it) and it logs every other message
 * it handles, with the reason text, plus its terminate reason. Absence is proven by
 * order: a later marker that would arrive after the missing message. */
#include "test_helpers.h"

enum {
    TAG_MARKER = 1,
    TAG_DATA,
    TAG_GO,
    /* calls answered with a res_t */
    CMD_LINK = 100,
    CMD_UNLINK,
    CMD_MONITOR,
    CMD_DEMONITOR,
    CMD_TRAP,
    CMD_EXIT, /* ar_exit(pid, code, text); with flag, a marker to pid right after */
    /* casts: actions that may end the agent or keep it busy */
    CAST_FAIL = 200,       /* AR_FAIL with text */
    CAST_STOP,             /* ar_stop(code, text) */
    CAST_EXIT_SELF,        /* ar_exit(self, code, text), then a marker to self */
    CAST_SEND_THEN_FAIL,   /* n DATA casts to pid and pid2 (if any), then AR_FAIL(text) */
    CAST_SEND_THEN_KILL,   /* n casts to pid, then ar_exit(pid, AR_KILL) */
    CAST_SPIN_THEN_TRAP,   /* busy until go, then ar_trap_exit(flag) */
    CAST_HOLD_DEMONITOR,   /* monitor pid, park until GO, demonitor(flag), marker to self */
    CAST_DEAD_DEMONITOR,   /* monitor dead pid, demonitor(flag) at once, marker to self */
    CAST_SPAWN,            /* spawn agent ptr with .link = flag, then a marker to self */
    CAST_CALL,             /* ar_call(pid) with timeout n */
    CAST_RECEIVE,          /* ar_receive nothing, timeout n */
    CAST_SLEEP,            /* ar_sleep(n) */
    CAST_MONITOR_SELF,     /* monitor self, then a marker to self */
    CAST_SPIN_THEN_STOP,   /* busy until go, then ar_stop(code) */
    CAST_SCRIPT,           /* runs the script in text against pid (see run_script) */
};

typedef struct cmd {
    ar_pid_t pid, pid2;
    ar_ref_t ref;
    int code; /* a reason code */
    int n;    /* a count or a timeout */
    bool flag;
    void *ptr;
    char text[48]; /* a reason text ("" for none) or a script */
} cmd_t;

/* The reason a command carries: its code, and its text unless that is empty. */
static ar_reason_t cmd_reason(const cmd_t *c)
{
    return (ar_reason_t){(ar_exit_code_t)c->code, c->text[0] ? c->text : NULL};
}

typedef struct res {
    int rc;
    bool old;
    ar_ref_t ref;
} res_t;

enum init_mode { INIT_OK, INIT_FAIL, INIT_STOP, INIT_CRASH_FIRST };
#define INIT_FAIL_RC AR_EEXIST
#define TEXT_N 64

typedef struct agent {
    th_log_t log;             /* messages handled (not commands) and terminate reason */
    char text[TEXT_N][128];   /* reason text of log entry i */
    enum init_mode init_mode;
    atomic_int spinning, go;  /* CAST_SPIN_THEN_TRAP */
    atomic_int seen_down;     /* CAST_HOLD_DEMONITOR: a DOWN queued while parked */
    atomic_int done;          /* a cast action finished (its results below are set) */
    int rc, rc2;
    ar_ref_t ref;
    ar_pid_t pid;
    atomic_long handled_casts; /* DATA casts handled */
} agent_t;

static void agent_log(agent_t *a, const ar_msg_t *m)
{
    size_t i = th_log_len(&a->log);
    if (i < TEXT_N)
        th_reason_text(a->text[i], sizeof a->text[i], m->reason.text);
    if (m->kind == AR_MSG_CAST && m->tag == TAG_DATA) atomic_fetch_add(&a->handled_casts, 1);
    th_log_msg(&a->log, m);
}

static void marker_to(ar_node_t *node, ar_pid_t to)
{
    ar_send(node, to, TAG_MARKER, "marker", 6);
}

static bool match_go(const ar_msg_t *m, void *ud)
{
    agent_t *a = ud;
    if (m->kind == AR_MSG_DOWN) atomic_store(&a->seen_down, 1);
    return m->kind == AR_MSG_CAST && m->tag == TAG_GO;
}

static bool match_none(const ar_msg_t *m, void *ud)
{
    (void)m, (void)ud;
    return false;
}

static int agent_init(ar_proc_t *self, void *arg, void **state)
{
    agent_t *a = arg;
    th_rec_init(self, &a->log, state);
    *state = a;
    switch (a->init_mode) {
    case INIT_FAIL:
        return INIT_FAIL_RC;
    case INIT_STOP:
        ar_stop(self, AR_REASON(AR_SHUTDOWN));
        break;
    case INIT_CRASH_FIRST: {
        cmd_t c = {.text = "first handler"};
        ar_send(ar_node(self), ar_self(self), CAST_FAIL, &c, sizeof c);
        break;
    }
    default:
        break;
    }
    return 0;
}

static res_t agent_command(ar_proc_t *self, agent_t *a, const ar_msg_t *m, const cmd_t *c)
{
    ar_node_t *node = ar_node(self);
    res_t r = {0};
    (void)a;
    switch (m->tag) {
    case CMD_LINK:
        r.rc = ar_link(self, c->pid);
        break;
    case CMD_UNLINK:
        r.rc = ar_unlink(self, c->pid);
        break;
    case CMD_MONITOR:
        r.rc = ar_monitor(self, c->pid, &r.ref);
        break;
    case CMD_DEMONITOR:
        r.rc = ar_demonitor(self, c->ref, c->flag);
        break;
    case CMD_TRAP:
        r.old = ar_trap_exit(self, c->flag);
        break;
    case CMD_EXIT:
        r.rc = ar_exit(node, c->pid, cmd_reason(c));
        if (c->flag) marker_to(node, c->pid);
        break;
    default:
        r.rc = AR_EINVAL;
        break;
    }
    return r;
}

#define ORDER_TEXT "order"
#define FATAL_TEXT "target ends"

/* CAST_SCRIPT: runs the script c->text against c->pid, all in this one handler run:
 * 'm' a DATA cast carrying its number (0, 1, ...), 'L' ar_link, 'U' ar_unlink, 'M'
 * ar_monitor (its ref kept in a->ref), 'D' ar_demonitor of the last monitor, 'X' ar_exit
 * with AR_ERROR ORDER_TEXT, 'k' a CAST_FAIL command that crashes the target with
 * FATAL_TEXT. Returns how many of the calls failed. */
static int run_script(ar_proc_t *self, agent_t *a, const cmd_t *c)
{
    ar_node_t *node = ar_node(self);
    int seq = 0, failed = 0;
    for (const char *p = c->text; *p; p++) {
        int rc;
        cmd_t fatal = {.text = FATAL_TEXT};
        switch (*p) {
        case 'm':
            rc = ar_send(node, c->pid, TAG_DATA, &seq, sizeof seq);
            seq++;
            break;
        case 'L': rc = ar_link(self, c->pid); break;
        case 'U': rc = ar_unlink(self, c->pid); break;
        case 'M': rc = ar_monitor(self, c->pid, &a->ref); break;
        case 'D': rc = ar_demonitor(self, a->ref, false); break;
        case 'X': rc = ar_exit(node, c->pid, (ar_reason_t){AR_ERROR, ORDER_TEXT}); break;
        case 'k': rc = ar_send(node, c->pid, CAST_FAIL, &fatal, sizeof fatal); break;
        default: rc = AR_EINVAL; break;
        }
        if (rc) failed++;
    }
    return failed;
}

static void agent_action(ar_proc_t *self, agent_t *a, const ar_msg_t *m, const cmd_t *c)
{
    ar_node_t *node = ar_node(self);
    switch (m->tag) {
    case CAST_FAIL:
        AR_FAIL(self, "%s", c->text);
    case CAST_STOP:
        ar_stop(self, cmd_reason(c));
        break;
    case CAST_EXIT_SELF:
        a->rc = ar_exit(node, ar_self(self), cmd_reason(c));
        marker_to(node, ar_self(self));
        break;
    case CAST_SEND_THEN_FAIL:
        for (int i = 0; i < c->n; i++) {
            ar_send(node, c->pid, TAG_DATA, &i, sizeof i);
            if (!ar_pid_is_none(c->pid2)) ar_send(node, c->pid2, TAG_DATA, &i, sizeof i);
        }
        AR_FAIL(self, "%s", c->text);
    case CAST_SEND_THEN_KILL: {
        int bad = 0;
        for (int i = 0; i < c->n; i++)
            if (ar_send(node, c->pid, TAG_DATA, NULL, 0) != 0) bad++;
        a->rc2 = bad;
        a->rc = ar_exit(node, c->pid, AR_REASON(AR_KILL));
        break;
    }
    case CAST_SPIN_THEN_TRAP:
        atomic_store(&a->spinning, 1);
        while (!atomic_load(&a->go)) {
        }
        ar_trap_exit(self, c->flag);
        break;
    case CAST_SPIN_THEN_STOP:
        atomic_store(&a->spinning, 1);
        while (!atomic_load(&a->go)) {
        }
        ar_stop(self, AR_REASON((ar_exit_code_t)c->code));
        break;
    case CAST_HOLD_DEMONITOR: {
        a->rc = ar_monitor(self, c->pid, &a->ref);
        atomic_store(&a->done, 1);
        ar_msg_t *go = NULL;
        if (ar_receive(self, match_go, a, TH_WAIT_MS, &go) == 0) ar_msg_release(self, go);
        a->rc2 = ar_demonitor(self, a->ref, c->flag);
        marker_to(node, ar_self(self));
        break;
    }
    case CAST_DEAD_DEMONITOR:
        a->rc = ar_monitor(self, c->pid, &a->ref);
        a->rc2 = ar_demonitor(self, a->ref, c->flag);
        marker_to(node, ar_self(self));
        break;
    case CAST_CALL: {
        ar_buf_t r = {0};
        a->rc = ar_call(node, c->pid, TAG_DATA, NULL, 0, &r, c->n);
        ar_buf_free(&r);
        break;
    }
    case CAST_RECEIVE: {
        ar_msg_t *got = NULL;
        a->rc = ar_receive(self, match_none, NULL, c->n, &got);
        break;
    }
    case CAST_SLEEP:
        a->rc = ar_sleep(self, c->n);
        break;
    case CAST_SCRIPT:
        a->rc2 = run_script(self, a, c);
        break;
    case CAST_MONITOR_SELF:
        a->rc = ar_monitor(self, ar_self(self), &a->ref);
        marker_to(node, ar_self(self));
        break;
    default:
        break;
    }
    atomic_store(&a->done, 1);
}

static void agent_handle(ar_proc_t *self, void *state, const ar_msg_t *m);
static void agent_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    agent_t *a = state;
    th_log_reason(&a->log, why);
}
static const ar_behaviour_t agent_b = {"agent", agent_init, agent_handle, agent_terminate};

static void agent_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    agent_t *a = state;
    if (th_sync_answer(self, &a->log, m)) return;
    cmd_t c;
    bool is_cmd = (m->kind == AR_MSG_CALL || m->kind == AR_MSG_CAST) && m->tag >= CMD_LINK &&
                  m->len == sizeof c;
    if (!is_cmd) {
        agent_log(a, m);
        return;
    }
    memcpy(&c, m->data, sizeof c);
    if (m->kind == AR_MSG_CALL) {
        res_t r = agent_command(self, a, m, &c);
        ar_reply(ar_node(self), m->reply_to, &r, sizeof r);
        return;
    }
    if (m->tag == CAST_SPAWN) {
        ar_spawn_opts_t o = {.link = c.flag};
        a->rc = ar_spawn(ar_node(self), &agent_b, c.ptr, &o, &a->pid);
        marker_to(ar_node(self), ar_self(self));
        atomic_store(&a->done, 1);
        return;
    }
    agent_action(self, a, m, &c);
}

/* ---- test-thread helpers --------------------------------------------------------------- */
#define AGENTS 16
static agent_t agents[AGENTS];
static int agents_used;

static agent_t *new_agent(void)
{
    cr_assert_lt(agents_used, AGENTS);
    agent_t *a = &agents[agents_used++];
    memset(a, 0, sizeof *a);
    return a;
}

static ar_pid_t spawn_agent(ar_node_t *node, agent_t *a, bool trap)
{
    ar_spawn_opts_t o = {.trap_exit = trap};
    ar_pid_t pid = AR_PID_NONE;
    int rc = ar_spawn(node, &agent_b, a, &o, &pid);
    cr_assert_eq(rc, 0, "spawn agent: %s", ar_err_name(rc));
    return pid;
}

/* A command answered by the agent. */
static res_t ctl(ar_node_t *node, ar_pid_t to, uint32_t tag, cmd_t c)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, to, tag, &c, sizeof c, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "command %u: %s", tag, ar_err_name(rc));
    cr_assert_eq(r.len, sizeof(res_t));
    res_t out;
    memcpy(&out, r.data, sizeof out);
    ar_buf_free(&r);
    return out;
}

static void act(ar_node_t *node, ar_pid_t to, uint32_t tag, cmd_t c)
{
    th_send(node, to, tag, &c, sizeof c);
}

static void crash(ar_node_t *node, ar_pid_t to, const char *text)
{
    cmd_t c = {0};
    snprintf(c.text, sizeof c.text, "%s", text);
    act(node, to, CAST_FAIL, c);
}

static void do_link(ar_node_t *node, ar_pid_t a, ar_pid_t b)
{
    res_t r = ctl(node, a, CMD_LINK, (cmd_t){.pid = b});
    cr_assert_eq(r.rc, 0, "ar_link: %s", ar_err_name(r.rc));
}

static ar_ref_t do_monitor(ar_node_t *node, ar_pid_t a, ar_pid_t b)
{
    res_t r = ctl(node, a, CMD_MONITOR, (cmd_t){.pid = b});
    cr_assert_eq(r.rc, 0, "ar_monitor: %s", ar_err_name(r.rc));
    cr_assert_neq(r.ref, 0, "a monitor ref is never 0");
    return r.ref;
}

static void await_end(agent_t *a)
{
    th_await(atomic_load(&a->log.terminates) == 1);
}

/* The pid of an agent that ended (normally) and is gone; *out (optional) is its agent. */
static ar_pid_t dead_agent(ar_node_t *node, agent_t **out)
{
    agent_t *dead = new_agent();
    ar_pid_t dp = spawn_agent(node, dead, false);
    act(node, dp, CAST_STOP, (cmd_t){.code = AR_NORMAL});
    await_end(dead);
    th_await(!th_proc_alive(node, dp));
    if (out) *out = dead;
    return dp;
}

static ar_proc_info_t info_of(ar_node_t *node, ar_pid_t pid)
{
    ar_proc_info_t i;
    memset(&i, 0, sizeof i);
    int rc = ar_proc_info(node, pid, &i);
    cr_assert_eq(rc, 0, "ar_proc_info: %s", ar_err_name(rc));
    return i;
}

static const th_entry_t *entry(agent_t *a, size_t i)
{
    cr_assert_lt(i, th_log_len(&a->log));
    return &a->log.e[i];
}

static void assert_marker(agent_t *a, size_t i)
{
    const th_entry_t *e = entry(a, i);
    cr_assert(e->kind == AR_MSG_CAST && e->tag == TAG_MARKER,
              TH_AT "entry %zu: kind %d tag %u, expected the marker", TH_ROW, i, e->kind, e->tag);
}

static void assert_exit(agent_t *a, size_t i, ar_pid_t from, ar_exit_code_t code)
{
    const th_entry_t *e = entry(a, i);
    cr_assert_eq(e->kind, AR_MSG_EXIT, TH_AT "entry %zu: kind %d tag %u, expected an EXIT",
                 TH_ROW, i, e->kind, e->tag);
    cr_assert(ar_pid_eq(e->from, from), TH_AT "entry %zu: EXIT from the wrong pid", TH_ROW, i);
    cr_assert_eq(e->code, code, TH_AT "entry %zu: EXIT reason %s, expected %s", TH_ROW, i,
                 ar_exit_code_name(e->code), ar_exit_code_name(code));
}

static void assert_down(agent_t *a, size_t i, ar_pid_t from, ar_ref_t ref,
                        ar_exit_code_t code)
{
    const th_entry_t *e = entry(a, i);
    cr_assert_eq(e->kind, AR_MSG_DOWN, TH_AT "entry %zu: kind %d tag %u, expected a DOWN",
                 TH_ROW, i, e->kind, e->tag);
    cr_assert(ar_pid_eq(e->from, from), TH_AT "entry %zu: DOWN from the wrong pid", TH_ROW, i);
    cr_assert_eq(e->ref, ref, TH_AT "entry %zu: DOWN ref %llu, expected %llu", TH_ROW, i,
                 (unsigned long long)e->ref, (unsigned long long)ref);
    cr_assert_eq(e->code, code, TH_AT "entry %zu: DOWN reason %s, expected %s", TH_ROW, i,
                 ar_exit_code_name(e->code), ar_exit_code_name(code));
}

static void assert_ended(agent_t *a, ar_exit_code_t code, const char *text)
{
    await_end(a);
    cr_assert_eq(a->log.why, code, TH_AT "terminate saw %s, expected %s", TH_ROW,
                 ar_exit_code_name(a->log.why), ar_exit_code_name(code));
    if (text)
        cr_assert_str_eq(a->log.why_text, text, TH_AT "terminate's text \"%s\"", TH_ROW,
                         a->log.why_text);
}

/* Still alive and answering: a sync round trip works and terminate never ran. */
static void assert_alive(ar_node_t *node, ar_pid_t pid, agent_t *a)
{
    (void)th_sync(node, pid);
    cr_assert_eq(atomic_load(&a->log.terminates), 0, TH_AT "the process ended (%s)", TH_ROW,
                 ar_exit_code_name(a->log.why));
}

/* ---- an exit signal arriving: sender x reason x trap flag --------------------------------
 * One row per case of SEMANTICS section 1 "An exit signal arriving at B". The target may
 * trap exits; an observer (trapping) is linked to it and monitors it. The signal comes
 * from the test thread (ar_exit, no sender process), from another process (ar_exit, then
 * a marker from the same sender), through a link (the sender ends with the reason; the
 * target also monitors it, so the DOWN follows where the EXIT would be), or from the
 * target itself (ar_exit to itself, then a marker to itself). The target ignores the
 * signal, gets it as an AR_MSG_EXIT in its place, or ends: then its link and its monitor
 * see the same reason, and nothing after the signal was handled. AR_ERROR reasons carry a
 * text the runtime must copy. */
typedef enum { FROM_NONE, FROM_PROC, FROM_LINK, FROM_SELF } via_t;
typedef enum { IGNORED, TRAPPED, ENDS } arrival_t;
typedef struct exit_row {
    char name[40];
    via_t via;
    ar_exit_code_t code;
    bool trap;
    arrival_t want;
    ar_exit_code_t end; /* ENDS: the target's reason */
} exit_row_t;
#define CUSTOM_TEXT "custom reason"

ParameterizedTestParameters(signal, exit_signal_arrival)
{
    static exit_row_t rows[] = {
        /* AR_KILL with ar_exit kills, trapping or not, with AR_KILLED */
        {"none_kill_plain", FROM_NONE, AR_KILL, false, ENDS, AR_KILLED},
        {"none_kill_trapping", FROM_NONE, AR_KILL, true, ENDS, AR_KILLED},
        {"proc_kill_trapping", FROM_PROC, AR_KILL, true, ENDS, AR_KILLED},
        {"self_kill_trapping", FROM_SELF, AR_KILL, true, ENDS, AR_KILLED},
        /* through a link AR_KILL is an ordinary reason */
        {"link_kill_plain", FROM_LINK, AR_KILL, false, ENDS, AR_KILL},
        {"link_kill_trapping", FROM_LINK, AR_KILL, true, TRAPPED, 0},
        /* normal: ignored unless trapping, or sent to oneself */
        {"none_normal_plain", FROM_NONE, AR_NORMAL, false, IGNORED, 0},
        {"none_normal_trapping", FROM_NONE, AR_NORMAL, true, TRAPPED, 0},
        {"proc_normal_plain", FROM_PROC, AR_NORMAL, false, IGNORED, 0},
        {"proc_normal_trapping", FROM_PROC, AR_NORMAL, true, TRAPPED, 0},
        {"link_normal_plain", FROM_LINK, AR_NORMAL, false, IGNORED, 0},
        {"link_normal_trapping", FROM_LINK, AR_NORMAL, true, TRAPPED, 0},
        {"self_normal_plain", FROM_SELF, AR_NORMAL, false, ENDS, AR_NORMAL},
        {"self_normal_trapping", FROM_SELF, AR_NORMAL, true, TRAPPED, 0},
        /* any other reason: the target ends with it unless it traps */
        {"none_error_plain", FROM_NONE, AR_ERROR, false, ENDS, AR_ERROR},
        {"none_error_trapping", FROM_NONE, AR_ERROR, true, TRAPPED, 0},
        {"proc_shutdown_plain", FROM_PROC, AR_SHUTDOWN, false, ENDS, AR_SHUTDOWN},
        {"proc_error_trapping", FROM_PROC, AR_ERROR, true, TRAPPED, 0},
        {"link_error_plain", FROM_LINK, AR_ERROR, false, ENDS, AR_ERROR},
        {"link_shutdown_trapping", FROM_LINK, AR_SHUTDOWN, true, TRAPPED, 0},
        {"self_shutdown_plain", FROM_SELF, AR_SHUTDOWN, false, ENDS, AR_SHUTDOWN},
        {"self_shutdown_trapping", FROM_SELF, AR_SHUTDOWN, true, TRAPPED, 0},
        {"self_error_trapping", FROM_SELF, AR_ERROR, true, TRAPPED, 0},
    };
    return TH_ROWS(exit_row_t, rows);
}

ParameterizedTest(exit_row_t *r, signal, exit_signal_arrival, .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = th_node(2);
    agent_t *tg = new_agent(), *obs = new_agent();
    ar_pid_t t = spawn_agent(node, tg, r->trap);
    ar_pid_t o = spawn_agent(node, obs, true);
    do_link(node, o, t);
    ar_ref_t ro = do_monitor(node, o, t);
    const char *text = r->code == AR_ERROR ? CUSTOM_TEXT : NULL;
    cmd_t c = {.code = r->code};
    if (text) snprintf(c.text, sizeof c.text, "%s", text);
    ar_pid_t from = AR_PID_NONE;
    ar_ref_t rs = 0; /* FROM_LINK: the target's monitor of the sender */
    if (r->via == FROM_NONE) {
        char buf[sizeof c.text];
        memcpy(buf, c.text, sizeof buf);
        cr_assert_eq(ar_exit(node, t, (ar_reason_t){r->code, text ? buf : NULL}), 0);
        memset(buf, 'Z', sizeof buf - 1); /* the runtime keeps its own copy */
    } else if (r->via == FROM_PROC) {
        from = spawn_agent(node, new_agent(), false);
        c.pid = t;
        c.flag = true;
        cr_assert_eq(ctl(node, from, CMD_EXIT, c).rc, 0);
    } else if (r->via == FROM_LINK) {
        from = spawn_agent(node, new_agent(), false);
        do_link(node, t, from);
        rs = do_monitor(node, t, from);
        if (text) crash(node, from, text);
        else act(node, from, CAST_STOP, c);
    } else {
        from = t;
        act(node, t, CAST_EXIT_SELF, c);
    }

    if (r->want == ENDS) {
        assert_ended(tg, r->end, text);
        th_await(!th_proc_alive(node, t));
        cr_assert_eq(th_log_len(&tg->log), 0,
                     TH_AT "the target handled a message after the signal (kind %d)", TH_ROW,
                     tg->log.e[0].kind);
        th_await(th_log_len(&obs->log) == 2);
        size_t ex = entry(obs, 0)->kind == AR_MSG_EXIT ? 0 : 1;
        assert_exit(obs, ex, t, r->end);
        assert_down(obs, 1 - ex, t, ro, r->end);
        assert_alive(node, o, obs);
        th_node_stop(node);
        return;
    }
    /* lives on: the EXIT if trapped, then the marker (or the DOWN) */
    size_t n = (r->want == TRAPPED) + (r->via != FROM_NONE), i = 0;
    th_await(th_log_len(&tg->log) >= n);
    if (r->want == TRAPPED) {
        assert_exit(tg, i, from, r->code);
        if (text)
            cr_assert_str_eq(tg->text[i], text, TH_AT "the EXIT's text \"%s\"", TH_ROW,
                             tg->text[i]);
        i++;
    }
    if (r->via == FROM_LINK) assert_down(tg, i, from, rs, r->code);
    else if (r->via != FROM_NONE) assert_marker(tg, i);
    assert_alive(node, t, tg);
    cr_assert_eq(th_log_len(&tg->log), n, TH_AT "%zu entries, want %zu", TH_ROW,
                 th_log_len(&tg->log), n);
    if (r->via == FROM_SELF) cr_assert_eq(tg->rc, 0, TH_AT "ar_exit(self): %s", TH_ROW,
                                          ar_err_name(tg->rc));
    (void)th_sync(node, o);
    cr_assert_eq(th_log_len(&obs->log), 0, TH_AT "the observer got a signal from a live target",
                 TH_ROW);
    th_node_stop(node);
}

/* ---- links ------------------------------------------------------------------------------- */
Test(signal, unlink_then_death_gives_no_exit, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, true);
    ar_pid_t bp = spawn_agent(node, b, false);
    do_link(node, ap, bp);
    cr_assert_eq(info_of(node, ap).links, 1);
    th_await(info_of(node, bp).links == 1); /* the other half is a signal it acts on */
    cr_assert_eq(ctl(node, ap, CMD_UNLINK, (cmd_t){.pid = bp}).rc, 0);
    cr_assert_eq(info_of(node, ap).links, 0);
    th_await(info_of(node, bp).links == 0); /* unlink removes both ends */
    cr_assert_eq(ctl(node, ap, CMD_UNLINK, (cmd_t){.pid = bp}).rc, 0, "unlink without a link");
    ar_ref_t ref = do_monitor(node, ap, bp);
    crash(node, bp, "unlinked crash");
    assert_ended(b, AR_ERROR, "unlinked crash");
    /* The DOWN comes after where the exit signal would have been. */
    th_await(th_log_len(&a->log) >= 1);
    (void)th_sync(node, ap);
    cr_assert_eq(th_log_len(&a->log), 1, "an EXIT arrived after unlink");
    assert_down(a, 0, bp, ref, AR_ERROR);
    cr_assert_str_eq(a->text[0], "unlinked crash");
    assert_alive(node, ap, a);
    th_node_stop(node);
}

Test(signal, link_to_a_dead_pid_is_enoproc_and_changes_nothing, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent();
    ar_pid_t ap = spawn_agent(node, a, true);
    ar_pid_t dp = dead_agent(node, NULL);
    cr_assert_eq(ctl(node, ap, CMD_LINK, (cmd_t){.pid = dp}).rc, AR_ENOPROC);
    cr_assert_eq(info_of(node, ap).links, 0);
    /* No exit signal: a marker from the test thread is all that arrives. */
    marker_to(node, ap);
    th_await(th_log_len(&a->log) >= 1);
    (void)th_sync(node, ap);
    cr_assert_eq(th_log_len(&a->log), 1, "a signal came from linking to a dead pid");
    assert_marker(a, 0);
    th_node_stop(node);
}

Test(signal, link_to_self_is_a_no_op, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    cr_assert_eq(ctl(node, ap, CMD_LINK, (cmd_t){.pid = ap}).rc, 0);
    cr_assert_eq(info_of(node, ap).links, 0);
    cr_assert_eq(ctl(node, ap, CMD_UNLINK, (cmd_t){.pid = ap}).rc, 0);
    act(node, ap, CAST_STOP, (cmd_t){.code = AR_SHUTDOWN});
    assert_ended(a, AR_SHUTDOWN, NULL);
    cr_assert_eq(th_log_len(&a->log), 0);
    th_node_stop(node);
}

Test(signal, links_are_bidirectional, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    /* a links b; b dies: a gets it. */
    agent_t *a = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, true);
    ar_pid_t bp = spawn_agent(node, b, false);
    do_link(node, ap, bp);
    crash(node, bp, "b crashed");
    assert_ended(b, AR_ERROR, "b crashed");
    th_await(th_log_len(&a->log) == 1);
    assert_exit(a, 0, bp, AR_ERROR);
    cr_assert_str_eq(a->text[0], "b crashed");

    /* c links d; c dies: d gets it. */
    agent_t *c = new_agent(), *d = new_agent();
    ar_pid_t cp = spawn_agent(node, c, false);
    ar_pid_t dp = spawn_agent(node, d, true);
    do_link(node, cp, dp);
    crash(node, cp, "c crashed");
    assert_ended(c, AR_ERROR, "c crashed");
    th_await(th_log_len(&d->log) == 1);
    assert_exit(d, 0, cp, AR_ERROR);
    cr_assert_str_eq(d->text[0], "c crashed");
    assert_alive(node, ap, a);
    assert_alive(node, dp, d);
    th_node_stop(node);
}

Test(signal, link_is_idempotent_one_exit_for_two_links, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, true);
    ar_pid_t bp = spawn_agent(node, b, false);
    do_link(node, ap, bp);
    do_link(node, ap, bp);
    do_link(node, bp, ap);
    cr_assert_eq(info_of(node, ap).links, 1);
    cr_assert_eq(info_of(node, bp).links, 1);
    ar_ref_t ref = do_monitor(node, ap, bp);
    crash(node, bp, "once");
    /* EXIT, then the DOWN as a marker; a second EXIT would come before it. */
    th_await(th_log_len(&a->log) >= 2);
    (void)th_sync(node, ap);
    cr_assert_eq(th_log_len(&a->log), 2);
    assert_exit(a, 0, bp, AR_ERROR);
    assert_down(a, 1, bp, ref, AR_ERROR);
    cr_assert_eq(info_of(node, ap).links, 0, "the link went with the dead process");
    th_node_stop(node);
}

Test(signal, chain_of_links_dies_with_the_crash_reason, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent(), *c = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t bp = spawn_agent(node, b, false);
    ar_pid_t cp = spawn_agent(node, c, false);
    do_link(node, ap, bp);
    do_link(node, bp, cp);
    crash(node, cp, "chain boom");
    assert_ended(c, AR_ERROR, "chain boom");
    assert_ended(b, AR_ERROR, "chain boom");
    assert_ended(a, AR_ERROR, "chain boom");
    th_await(!th_proc_alive(node, ap) && !th_proc_alive(node, bp) && !th_proc_alive(node, cp));
    th_node_stop(node);
}

/* ---- the trap flag at arrival ----------------------------------------------------------- */
Test(signal, trap_flag_changed_between_send_and_arrival_arrival_decides,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    /* Not trapping when the signal is sent, trapping when it is taken: a message. */
    agent_t *a = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    act(node, ap, CAST_SPIN_THEN_TRAP, (cmd_t){.flag = true});
    th_await(atomic_load(&a->spinning) == 1);
    cr_assert_eq(ar_exit(node, ap, AR_REASON(AR_SHUTDOWN)), 0);
    atomic_store(&a->go, 1);
    th_await(th_log_len(&a->log) == 1);
    assert_exit(a, 0, AR_PID_NONE, AR_SHUTDOWN);
    assert_alive(node, ap, a);

    /* Trapping when sent, not when taken: it ends with the reason. */
    agent_t *b = new_agent();
    ar_pid_t bp = spawn_agent(node, b, true);
    act(node, bp, CAST_SPIN_THEN_TRAP, (cmd_t){.flag = false});
    th_await(atomic_load(&b->spinning) == 1);
    cr_assert_eq(ar_exit(node, bp, AR_REASON(AR_SHUTDOWN)), 0);
    atomic_store(&b->go, 1);
    assert_ended(b, AR_SHUTDOWN, NULL);
    cr_assert_eq(th_log_len(&b->log), 0, "the exit signal became a message");
    th_node_stop(node);
}

/* ---- spawn with .link ------------------------------------------------------------------- */
/* A parent (trapping or not) spawns a child with .link. A child that crashes in its first
 * handler or stops in init still sends its exit signal through the link (the link was made
 * atomically with the spawn): a trapping parent gets the EXIT (the marker the parent sends
 * itself after the spawn may come first), a plain one ends with the reason. A child whose
 * init fails was never started: ar_spawn returns init's result and nothing is signalled. */
typedef struct spawn_link_row {
    char name[48];
    enum init_mode child;
    bool trap; /* the parent's */
} spawn_link_row_t;

ParameterizedTestParameters(signal, spawn_link_child_ending_at_once)
{
    static spawn_link_row_t rows[] = {
        {"crash_in_first_handler_trapping_parent", INIT_CRASH_FIRST, true},
        {"crash_in_first_handler_plain_parent", INIT_CRASH_FIRST, false},
        {"stop_in_init_trapping_parent", INIT_STOP, true},
        {"stop_in_init_plain_parent", INIT_STOP, false},
        {"init_fails_trapping_parent", INIT_FAIL, true},
        {"init_fails_plain_parent", INIT_FAIL, false},
    };
    return TH_ROWS(spawn_link_row_t, rows);
}

ParameterizedTest(spawn_link_row_t *r, signal, spawn_link_child_ending_at_once,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = th_node(2);
    agent_t *p = new_agent(), *c = new_agent();
    c->init_mode = r->child;
    ar_pid_t pp = spawn_agent(node, p, r->trap);
    act(node, pp, CAST_SPAWN, (cmd_t){.ptr = c, .flag = true});
    th_await(atomic_load(&p->done) == 1);
    if (r->child == INIT_FAIL) {
        cr_assert_eq(p->rc, INIT_FAIL_RC, TH_AT "spawn: %s", TH_ROW, ar_err_name(p->rc));
        cr_assert_eq(atomic_load(&c->log.inits), 1);
        th_await(th_log_len(&p->log) >= 1);
        assert_alive(node, pp, p);
        cr_assert_eq(th_log_len(&p->log), 1,
                     TH_AT "a signal came from a child whose init failed", TH_ROW);
        assert_marker(p, 0);
        cr_assert_eq(info_of(node, pp).links, 0);
        cr_assert_eq(atomic_load(&c->log.terminates), 0);
        th_node_stop(node);
        return;
    }
    cr_assert_eq(p->rc, 0, TH_AT "spawn: %s", TH_ROW, ar_err_name(p->rc));
    ar_exit_code_t code = r->child == INIT_STOP ? AR_SHUTDOWN : AR_ERROR;
    const char *text = r->child == INIT_STOP ? NULL : "first handler";
    assert_ended(c, code, text);
    if (r->trap) {
        th_await(th_log_len(&p->log) == 2);
        size_t ex = entry(p, 0)->kind == AR_MSG_EXIT ? 0 : 1;
        assert_exit(p, ex, p->pid, code);
        if (text) cr_assert_str_eq(p->text[ex], text);
        assert_marker(p, 1 - ex);
        assert_alive(node, pp, p);
        cr_assert_eq(info_of(node, pp).links, 0);
    } else {
        assert_ended(p, code, text);
        th_await(!th_proc_alive(node, pp));
    }
    th_node_stop(node);
}

Test(signal, spawn_link_outside_a_process_is_enotproc, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *c = new_agent();
    ar_node_stats_t s0 = th_stats(node);
    ar_spawn_opts_t o = {.link = true};
    ar_pid_t pid = AR_PID_NONE;
    int rc = ar_spawn(node, &agent_b, c, &o, &pid);
    cr_assert_eq(rc, AR_ENOTPROC, "ar_spawn: %s", ar_err_name(rc));
    ar_node_stats_t s1 = th_stats(node);
    cr_assert_eq(s1.processes, s0.processes);
    cr_assert_eq(s1.spawned, s0.spawned);
    cr_assert_eq(atomic_load(&c->log.inits), 0, "init ran for a refused spawn");
    th_node_stop(node);
}

/* ---- killing a parked process ------------------------------------------------------------ */
/* A process parked for a minute in a call (to a server that never answers), a receive or a
 * sleep ends at once on an exit signal: well within the helpers' wait, long before its
 * park would end, and its parked call never returns. */
#define PARK_MS 60000
typedef struct parked_row {
    char name[24];
    uint32_t park; /* CAST_CALL, CAST_RECEIVE or CAST_SLEEP */
    ar_exit_code_t code;
} parked_row_t;

ParameterizedTestParameters(signal, process_parked_ends_at_once_on_an_exit_signal)
{
    static parked_row_t rows[] = {
        {"call_killed", CAST_CALL, AR_KILL},       {"receive_killed", CAST_RECEIVE, AR_KILL},
        {"sleep_killed", CAST_SLEEP, AR_KILL},     {"call_shutdown", CAST_CALL, AR_SHUTDOWN},
        {"receive_shutdown", CAST_RECEIVE, AR_SHUTDOWN},
        {"sleep_shutdown", CAST_SLEEP, AR_SHUTDOWN},
    };
    return TH_ROWS(parked_row_t, rows);
}

ParameterizedTest(parked_row_t *r, signal, process_parked_ends_at_once_on_an_exit_signal,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = th_node(2);
    static th_log_t silent; /* a call target that never answers */
    ar_pid_t srv = th_spawn(node, &th_recorder, &silent);
    agent_t *a = new_agent();
    ar_pid_t pid = spawn_agent(node, a, false);
    act(node, pid, r->park, (cmd_t){.pid = srv, .n = PARK_MS});
    th_await(th_proc_blocked(node, pid));
    cr_assert_eq(ar_exit(node, pid, AR_REASON(r->code)), 0);
    assert_ended(a, r->code == AR_KILL ? AR_KILLED : r->code, NULL);
    cr_assert_eq(atomic_load(&a->done), 0, TH_AT "the parked call returned first", TH_ROW);
    th_await(!th_proc_alive(node, pid));
    th_node_stop(node);
}

/* ---- a kill overtakes a full mailbox ----------------------------------------------------- */
typedef struct counter {
    atomic_long handled;
    atomic_int ended;
    ar_exit_code_t why;
} counter_t;
static int counter_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void counter_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)m;
    counter_t *c = state;
    atomic_fetch_add(&c->handled, 1);
}
static void counter_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    counter_t *c = state;
    c->why = why.code;
    atomic_store(&c->ended, 1);
}
static const ar_behaviour_t counter_b = {"counter", counter_init, counter_handle,
                                         counter_terminate};

Test(signal, kill_to_a_process_with_100k_queued_messages_skips_them, .timeout = TH_TIMEOUT)
{
    /* One scheduler: the sender's handler holds it while it queues 100k messages and then
     * kills the victim, which never runs in between. */
    ar_node_t *node = th_node(1);
    static counter_t v;
    ar_pid_t vp = th_spawn(node, &counter_b, &v);
    agent_t *s = new_agent();
    ar_pid_t sp = spawn_agent(node, s, false);
    act(node, sp, CAST_SEND_THEN_KILL, (cmd_t){.pid = vp, .n = 100000});
    th_await(atomic_load(&s->done) == 1);
    cr_assert_eq(s->rc2, 0, "%d sends failed", s->rc2);
    cr_assert_eq(s->rc, 0, "ar_exit: %s", ar_err_name(s->rc));
    th_await(atomic_load(&v.ended) == 1);
    cr_assert_eq(v.why, AR_KILLED, "ended with %s", ar_exit_code_name(v.why));
    cr_assert_eq(atomic_load(&v.handled), 0, "handled %ld queued messages before dying",
                 atomic_load(&v.handled));
    th_await(!th_proc_alive(node, vp));
    th_node_stop(node);
}

/* ---- one sender's order across kinds of signal ------------------------------------------ */
/* A sender (trapping) runs a script against a trapping target in one handler run: messages,
 * link, unlink, monitor, demonitor and ar_exit (see run_script). The target must log the
 * messages and the EXITs exactly in script order, and once it has handled the last message
 * every earlier link/unlink and monitor/demonitor has acted, in order: the target's links
 * and monitored_by are what the script leaves (an unlink acted on before its link would
 * leave a link, a demonitor before its monitor a monitor). Then the sender ends: an EXIT
 * through the link if the script left one, never after link-then-unlink, and the DOWN of
 * the target's monitor after it. A script ending with 'k' crashes the target with a message
 * instead: the link and monitor sent before it are in place when it dies, so the sender
 * gets the target's own reason (not AR_NOPROC, not nothing). */
Test(signal, one_senders_messages_and_signals_arrive_in_the_order_sent, .timeout = TH_TIMEOUT)
{
    static const struct {
        const char *name, *script;
    } rows[] = {
        {"unlinked_at_death", "mLmUmMmDmXm"},
        {"linked_again_at_death", "mLmUmLmXmMm"},
        {"exits_around_link_and_unlink", "XLmXmUmXMmDm"},
        {"link_and_monitor_before_the_fatal_message", "mLmMmXk"},
        {"link_and_monitor_right_before_the_fatal_message", "LMk"},
    };
    ar_node_t *node = th_node(2);
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
        th_row_begin(rows[k].name);
        const char *script = rows[k].script;
        /* the model: the target's entries ('m' or 'X'), and what the script leaves */
        char want[32];
        size_t n = 0;
        bool linked = false, fatal = false;
        int monitors = 0;
        for (const char *p = script; *p; p++) {
            if (*p == 'm' || *p == 'X') want[n++] = *p;
            linked = *p == 'L' ? true : *p == 'U' ? false : linked;
            monitors += *p == 'M' ? 1 : *p == 'D' ? -1 : 0;
            fatal = fatal || *p == 'k';
        }
        agent_t *sa = new_agent(), *ta = new_agent();
        ar_pid_t s = spawn_agent(node, sa, true);
        ar_pid_t t = spawn_agent(node, ta, true);
        ar_ref_t rd = fatal ? 0 : do_monitor(node, t, s); /* the sender's end closes the log */
        cmd_t c = {.pid = t};
        snprintf(c.text, sizeof c.text, "%s", script);
        act(node, s, CAST_SCRIPT, c);
        th_await(atomic_load(&sa->done) == 1);
        cr_assert_eq(sa->rc2, 0, TH_AT "%d calls of the script failed", TH_ROW, sa->rc2);
        th_await(th_log_len(&ta->log) >= n);
        for (size_t i = 0, seq = 0; i < n; i++) {
            const th_entry_t *e = entry(ta, i);
            if (want[i] == 'X') {
                assert_exit(ta, i, s, AR_ERROR);
                cr_assert_str_eq(ta->text[i], ORDER_TEXT);
                continue;
            }
            int got = -1;
            if (e->len == sizeof got) memcpy(&got, e->data, sizeof got);
            cr_assert(e->kind == AR_MSG_CAST && e->tag == TAG_DATA && got == (int)seq,
                      TH_AT "entry %zu: kind %d tag %u number %d, want message %zu", TH_ROW, i,
                      e->kind, e->tag, got, seq);
            seq++;
        }
        if (fatal) {
            assert_ended(ta, AR_ERROR, FATAL_TEXT);
            cr_assert_eq(th_log_len(&ta->log), n);
            size_t got = (size_t)linked + (size_t)monitors;
            th_await(th_log_len(&sa->log) >= got);
            for (size_t i = 0; i < got; i++) {
                if (entry(sa, i)->kind == AR_MSG_EXIT) assert_exit(sa, i, t, AR_ERROR);
                else assert_down(sa, i, t, sa->ref, AR_ERROR);
                cr_assert_str_eq(sa->text[i], FATAL_TEXT, TH_AT "entry %zu: text \"%s\"", TH_ROW,
                                 i, sa->text[i]);
            }
            if (got == 2)
                cr_assert_neq(entry(sa, 0)->kind, entry(sa, 1)->kind,
                              TH_AT "two of one kind, want an EXIT and a DOWN", TH_ROW);
            assert_alive(node, s, sa);
            cr_assert_eq(th_log_len(&sa->log), got);
            continue;
        }
        /* the last entry is a message: every signal sent before it has acted */
        ar_proc_info_t ti = info_of(node, t);
        cr_assert_eq(ti.links, linked ? 1u : 0u, TH_AT "the target has %zu links, want %d",
                     TH_ROW, ti.links, (int)linked);
        cr_assert_eq(ti.monitored_by, (size_t)monitors,
                     TH_AT "the target is monitored %zu times, want %d", TH_ROW, ti.monitored_by,
                     monitors);
        crash(node, s, "sender ends");
        await_end(sa);
        th_await(th_log_len(&ta->log) >= n + 1 + linked);
        if (linked) {
            assert_exit(ta, n, s, AR_ERROR);
            cr_assert_str_eq(ta->text[n], "sender ends");
        }
        assert_down(ta, n + linked, s, rd, AR_ERROR);
        assert_alive(node, t, ta);
        cr_assert_eq(th_log_len(&ta->log), n + 1 + linked, TH_AT "%zu entries, want %zu", TH_ROW,
                     th_log_len(&ta->log), n + 1 + linked);
        th_await(info_of(node, t).links == 0 && info_of(node, t).monitored_by == 0);
    }
    th_node_stop(node);
}

/* ---- message order before EXIT and DOWN ------------------------------------------------- */
Test(signal, last_messages_before_the_end_arrive_before_exit_and_down, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    enum { N = 200 };
    agent_t *a = new_agent(), *c = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, true);
    ar_pid_t cp = spawn_agent(node, c, false);
    ar_pid_t bp = spawn_agent(node, b, false);
    do_link(node, ap, bp);
    ar_ref_t ra = do_monitor(node, ap, bp);
    ar_ref_t rc = do_monitor(node, cp, bp);
    act(node, bp, CAST_SEND_THEN_FAIL, (cmd_t){.pid = ap, .pid2 = cp, .n = N, .text = "sent all"});
    assert_ended(b, AR_ERROR, "sent all");
    th_await(th_log_len(&a->log) == N + 2);
    th_await(th_log_len(&c->log) == N + 1);
    for (int i = 0; i < N; i++) {
        int ia, ic;
        cr_assert_eq(a->log.e[i].tag, TAG_DATA, "a: entry %d is kind %d", i, a->log.e[i].kind);
        cr_assert_eq(c->log.e[i].tag, TAG_DATA, "c: entry %d is kind %d", i, c->log.e[i].kind);
        memcpy(&ia, a->log.e[i].data, sizeof ia);
        memcpy(&ic, c->log.e[i].data, sizeof ic);
        cr_assert_eq(ia, i);
        cr_assert_eq(ic, i);
    }
    size_t ex = a->log.e[N].kind == AR_MSG_EXIT ? N : N + 1;
    assert_exit(a, ex, bp, AR_ERROR);
    assert_down(a, ex == N ? N + 1 : N, bp, ra, AR_ERROR);
    assert_down(c, N, bp, rc, AR_ERROR);
    assert_alive(node, cp, c);
    th_node_stop(node);
}

/* ---- monitors ------------------------------------------------------------------------------ */
Test(signal, monitor_of_a_dead_pid_gives_an_immediate_noproc_down, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t dp = dead_agent(node, NULL);
    ar_ref_t ref = do_monitor(node, ap, dp);
    th_await(th_log_len(&a->log) == 1);
    assert_down(a, 0, dp, ref, AR_NOPROC);
    cr_assert_eq(info_of(node, ap).monitors, 0);
    assert_alive(node, ap, a);
    th_node_stop(node);
}

Test(signal, each_monitor_is_a_new_ref_and_two_monitors_give_two_downs,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t bp = spawn_agent(node, b, false);
    ar_ref_t r1 = do_monitor(node, ap, bp);
    ar_ref_t r2 = do_monitor(node, ap, bp);
    cr_assert_neq(r1, r2);
    cr_assert_eq(info_of(node, ap).monitors, 2);
    th_await(info_of(node, bp).monitored_by == 2); /* the target's half is a signal */
    act(node, bp, CAST_STOP, (cmd_t){.code = AR_SHUTDOWN});
    th_await(th_log_len(&a->log) == 2);
    (void)th_sync(node, ap);
    cr_assert_eq(th_log_len(&a->log), 2);
    size_t i1 = entry(a, 0)->ref == r1 ? 0 : 1;
    assert_down(a, i1, bp, r1, AR_SHUTDOWN);
    assert_down(a, 1 - i1, bp, r2, AR_SHUTDOWN);
    cr_assert_eq(info_of(node, ap).monitors, 0);
    /* A fired ref: demonitor is 0. */
    cr_assert_eq(ctl(node, ap, CMD_DEMONITOR, (cmd_t){.ref = r1}).rc, 0);
    assert_alive(node, ap, a);
    th_node_stop(node);
}

Test(signal, monitored_crash_sends_down_with_text_and_never_kills_the_watcher,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t bp = spawn_agent(node, b, false);
    ar_ref_t ref = do_monitor(node, ap, bp);
    cr_assert_eq(info_of(node, bp).links, 0, "a monitor is not a link");
    crash(node, bp, "watched crash");
    th_await(th_log_len(&a->log) == 1);
    assert_down(a, 0, bp, ref, AR_ERROR);
    cr_assert_str_eq(a->text[0], "watched crash");
    assert_alive(node, ap, a);
    th_node_stop(node);
}

Test(signal, demonitor_without_flush_adds_no_new_down, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t bp = spawn_agent(node, b, false);
    ar_ref_t r1 = do_monitor(node, ap, bp);
    ar_ref_t r2 = do_monitor(node, ap, bp);
    cr_assert_eq(ctl(node, ap, CMD_DEMONITOR, (cmd_t){.ref = r1, .flag = false}).rc, 0);
    cr_assert_eq(info_of(node, ap).monitors, 1);
    th_await(info_of(node, bp).monitored_by == 1); /* the target's half is a signal */
    cr_assert_eq(ctl(node, ap, CMD_DEMONITOR, (cmd_t){.ref = r1 + 1000000}).rc, 0,
                 "an unknown ref");
    crash(node, bp, "demonitored");
    th_await(th_log_len(&a->log) >= 1);
    (void)th_sync(node, ap);
    cr_assert_eq(th_log_len(&a->log), 1, "a DOWN came for a removed monitor");
    assert_down(a, 0, bp, r2, AR_ERROR);
    th_node_stop(node);
}

/* The DOWN is already queued (the monitoring process is parked in a receive that does not
 * match it) when demonitor runs: without flush it stays, with flush it is removed. */
typedef struct demonitor_row {
    char name[40];
    bool flush;
} demonitor_row_t;

ParameterizedTestParameters(signal, demonitor_of_a_queued_down)
{
    static demonitor_row_t rows[] = {
        {"without_flush_keeps_it", false},
        {"with_flush_removes_it", true},
    };
    return TH_ROWS(demonitor_row_t, rows);
}

ParameterizedTest(demonitor_row_t *r, signal, demonitor_of_a_queued_down, .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t bp = spawn_agent(node, b, false);
    act(node, ap, CAST_HOLD_DEMONITOR, (cmd_t){.pid = bp, .flag = r->flush});
    th_await(atomic_load(&a->done) == 1);
    cr_assert_eq(a->rc, 0, TH_AT "ar_monitor: %s", TH_ROW, ar_err_name(a->rc));
    th_await(th_proc_blocked(node, ap));
    crash(node, bp, "queued down");
    await_end(b);
    th_await(atomic_load(&a->seen_down) == 1);
    th_send(node, ap, TAG_GO, NULL, 0);
    th_await(th_log_len(&a->log) >= (r->flush ? 1u : 2u));
    (void)th_sync(node, ap);
    cr_assert_eq(a->rc2, 0, TH_AT "ar_demonitor: %s", TH_ROW, ar_err_name(a->rc2));
    if (r->flush) {
        cr_assert_eq(th_log_len(&a->log), 1, TH_AT "flush left the DOWN queued", TH_ROW);
        assert_marker(a, 0);
    } else {
        cr_assert_eq(th_log_len(&a->log), 2, TH_AT "%zu entries", TH_ROW, th_log_len(&a->log));
        assert_down(a, 0, bp, a->ref, AR_ERROR);
        assert_marker(a, 1);
    }
    cr_assert_eq(info_of(node, ap).monitors, 0);
    th_node_stop(node);
}

Test(signal, demonitor_with_flush_of_a_dead_pid_monitor_leaves_no_down,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t dp = dead_agent(node, NULL);
    act(node, ap, CAST_DEAD_DEMONITOR, (cmd_t){.pid = dp, .flag = true});
    th_await(th_log_len(&a->log) >= 1);
    (void)th_sync(node, ap);
    cr_assert_eq(a->rc, 0);
    cr_assert_eq(a->rc2, 0);
    cr_assert_eq(th_log_len(&a->log), 1, "the immediate DOWN survived demonitor with flush");
    assert_marker(a, 0);
    th_node_stop(node);
}

Test(signal, monitoring_oneself_gives_no_down_while_alive, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    act(node, ap, CAST_MONITOR_SELF, (cmd_t){0});
    th_await(th_log_len(&a->log) >= 1);
    (void)th_sync(node, ap);
    cr_assert_eq(a->rc, 0, "ar_monitor(self): %s", ar_err_name(a->rc));
    cr_assert_neq(a->ref, 0);
    cr_assert_eq(th_log_len(&a->log), 1);
    assert_marker(a, 0);
    th_node_stop(node);
}

Test(signal, monitoring_process_dying_first_leaves_no_down, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *m = new_agent(), *t = new_agent(), *w = new_agent();
    ar_pid_t mp = spawn_agent(node, m, false);
    ar_pid_t tp = spawn_agent(node, t, false);
    ar_pid_t wp = spawn_agent(node, w, false);
    (void)do_monitor(node, mp, tp);
    ar_ref_t rw = do_monitor(node, wp, tp);
    th_await(info_of(node, tp).monitored_by == 2); /* the target's half is a signal */
    act(node, mp, CAST_STOP, (cmd_t){.code = AR_SHUTDOWN});
    await_end(m);
    th_await(!th_proc_alive(node, mp));
    th_await(info_of(node, tp).monitored_by == 1);
    crash(node, tp, "watched after");
    await_end(t);
    th_await(th_log_len(&w->log) == 1);
    assert_down(w, 0, tp, rw, AR_ERROR);
    cr_assert_eq(th_log_len(&m->log), 0, "the dead monitoring process logged a DOWN");
    th_node_stop(node);
}

Test(signal, monitoring_process_dying_first_drops_monitored_by_to_zero,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *m = new_agent(), *t = new_agent();
    ar_pid_t mp = spawn_agent(node, m, false);
    ar_pid_t tp = spawn_agent(node, t, false);
    (void)do_monitor(node, mp, tp);
    (void)do_monitor(node, mp, tp);
    th_await(info_of(node, tp).monitored_by == 2); /* the target's half is a signal */
    crash(node, mp, "watcher gone");
    await_end(m);
    th_await(!th_proc_alive(node, mp));
    th_await(info_of(node, tp).monitored_by == 0);
    act(node, tp, CAST_STOP, (cmd_t){.code = AR_NORMAL});
    assert_ended(t, AR_NORMAL, NULL);
    th_node_stop(node);
}

/* ---- introspection and the trap flag -------------------------------------------------- */
Test(signal, proc_info_counts_links_monitors_monitored_by_and_trap_exit,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent(), *c = new_agent(), *d = new_agent();
    ar_pid_t ap = spawn_agent(node, a, true);
    ar_pid_t bp = spawn_agent(node, b, false);
    ar_pid_t cp = spawn_agent(node, c, false);
    ar_pid_t dp = spawn_agent(node, d, false);
    ar_proc_info_t i = info_of(node, ap);
    cr_assert_eq(i.links, 0);
    cr_assert_eq(i.monitors, 0);
    cr_assert_eq(i.monitored_by, 0);
    cr_assert(i.trap_exit, "spawned with .trap_exit");
    cr_assert_not(info_of(node, bp).trap_exit);

    do_link(node, ap, bp);
    do_link(node, ap, cp);
    ar_ref_t rb1 = do_monitor(node, ap, bp);
    (void)do_monitor(node, ap, bp);
    (void)do_monitor(node, ap, dp);
    (void)do_monitor(node, dp, ap);
    /* A process's own half changes when its call returns; the other half is a signal
     * the other process acts on when it next runs: wait for those. */
    i = info_of(node, ap);
    cr_assert_eq(i.links, 2);
    cr_assert_eq(i.monitors, 3);
    th_await(info_of(node, ap).monitored_by == 1);
    th_await(info_of(node, bp).links == 1);
    cr_assert_eq(info_of(node, bp).monitors, 0);
    th_await(info_of(node, bp).monitored_by == 2);
    i = info_of(node, dp);
    cr_assert_eq(i.links, 0);
    cr_assert_eq(i.monitors, 1);
    th_await(info_of(node, dp).monitored_by == 1);

    cr_assert_eq(ctl(node, ap, CMD_UNLINK, (cmd_t){.pid = cp}).rc, 0);
    cr_assert_eq(ctl(node, ap, CMD_DEMONITOR, (cmd_t){.ref = rb1}).rc, 0);
    i = info_of(node, ap);
    cr_assert_eq(i.links, 1);
    cr_assert_eq(i.monitors, 2);
    th_await(info_of(node, cp).links == 0);
    th_await(info_of(node, bp).monitored_by == 1);

    cr_assert(ctl(node, ap, CMD_TRAP, (cmd_t){.flag = false}).old);
    cr_assert_not(info_of(node, ap).trap_exit);
    th_node_stop(node);
}

Test(signal, trap_exit_returns_the_old_value, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    cr_assert_not(ctl(node, ap, CMD_TRAP, (cmd_t){.flag = true}).old);
    cr_assert(info_of(node, ap).trap_exit);
    cr_assert(ctl(node, ap, CMD_TRAP, (cmd_t){.flag = true}).old);
    cr_assert(ctl(node, ap, CMD_TRAP, (cmd_t){.flag = false}).old);
    cr_assert_not(ctl(node, ap, CMD_TRAP, (cmd_t){.flag = false}).old);
    cr_assert_not(info_of(node, ap).trap_exit);
    cr_assert_not(ar_trap_exit(NULL, true), "NULL self");
    th_node_stop(node);
}

Test(signal, exit_to_a_dead_pid_is_a_no_op_and_null_node_is_einval, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *dead;
    ar_pid_t dp = dead_agent(node, &dead);
    ar_node_stats_t s0 = th_stats(node);
    cr_assert_eq(ar_exit(node, dp, AR_REASON(AR_KILL)), 0);
    cr_assert_eq(ar_exit(node, dp, AR_REASON(AR_ERROR)), 0);
    cr_assert_eq(atomic_load(&dead->log.terminates), 1);
    cr_assert_eq(th_stats(node).exited, s0.exited);
    cr_assert_eq(ar_exit(NULL, dp, AR_REASON(AR_KILL)), AR_EINVAL);
    th_node_stop(node);
}

/* The link and the monitor are made while the target is busy in a handler, so their
 * signals are still queued when it ends: it was alive when ar_link / ar_monitor returned,
 * so its real reason comes back, as for any link or monitor. A plain linked process ignores
 * a normal end and ends with any other reason (AR_KILL through a link included); a
 * trapping one gets the EXIT and the DOWN. */
typedef struct busy_row {
    char name[16];
    ar_exit_code_t code;
} busy_row_t;

ParameterizedTestParameters(signal, busy_target_ending_with_link_and_monitor_queued)
{
    static busy_row_t rows[] = {
        {"normal", AR_NORMAL}, {"shutdown", AR_SHUTDOWN}, {"error", AR_ERROR}, {"kill", AR_KILL},
    };
    return TH_ROWS(busy_row_t, rows);
}

ParameterizedTest(busy_row_t *r, signal, busy_target_ending_with_link_and_monitor_queued,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = th_node(2);
    agent_t *plain = new_agent(), *trapping = new_agent(), *b = new_agent();
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);
    ar_pid_t bp = spawn_agent(node, b, false);
    act(node, bp, CAST_SPIN_THEN_STOP, (cmd_t){.code = (int)r->code});
    th_await(atomic_load(&b->spinning) == 1);
    do_link(node, p, bp);
    do_link(node, t, bp);
    ar_ref_t rp = do_monitor(node, p, bp);
    ar_ref_t rt = do_monitor(node, t, bp);
    atomic_store(&b->go, 1);
    assert_ended(b, r->code, NULL);

    if (r->code == AR_NORMAL) {
        /* The non-trapping one ignores a normal end: only the DOWN. */
        th_await(th_log_len(&plain->log) >= 1 || atomic_load(&plain->log.terminates) == 1);
        cr_assert_eq(atomic_load(&plain->log.terminates), 0,
                     TH_AT "a normal end killed a linked process (%s)", TH_ROW,
                     ar_exit_code_name(plain->log.why));
        assert_down(plain, 0, bp, rp, r->code);
        assert_alive(node, p, plain);
        cr_assert_eq(th_log_len(&plain->log), 1);
    } else {
        assert_ended(plain, r->code, NULL);
    }
    /* The trapping one: the EXIT and the DOWN carry the real reason. */
    th_await(th_log_len(&trapping->log) >= 2);
    size_t ex = entry(trapping, 0)->kind == AR_MSG_EXIT ? 0 : 1;
    assert_exit(trapping, ex, bp, r->code);
    assert_down(trapping, 1 - ex, bp, rt, r->code);
    (void)th_sync(node, t);
    cr_assert_eq(th_log_len(&trapping->log), 2);
    th_node_stop(node);
}

/* ---- many links and monitors on one process --------------------------------------------- */
enum { MANY = 100000 };
static atomic_long many_ended, many_downs, many_started;
static ar_pid_t many_hub;

static int many_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    atomic_fetch_add(&many_started, 1);
    return 0;
}
static void many_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    (void)state;
    if (why.code == AR_SHUTDOWN) atomic_fetch_add(&many_ended, 1);
}
static void watcher_of_hub(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    ar_ref_t ref;
    if (m->kind == AR_MSG_CAST) ar_monitor(self, many_hub, &ref);
    else if (m->kind == AR_MSG_DOWN && m->reason.code == AR_SHUTDOWN) atomic_fetch_add(&many_downs, 1);
}
static const ar_behaviour_t many_watcher_b = {"many_watcher", many_init, watcher_of_hub, NULL};
static const ar_behaviour_t many_child_b = {"many_child", many_init, th_echo_handle, many_terminate};

/* A supervisor-like parent of 100k linked children: its end takes every child down. */
static void parent_of_many(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind != AR_MSG_CAST) return;
    ar_spawn_opts_t o = {.link = true};
    for (int i = 0; i < MANY; i++)
        if (ar_spawn(ar_node(self), &many_child_b, NULL, &o, NULL) != 0) return;
    ar_stop(self, AR_REASON(AR_SHUTDOWN));
}
static const ar_behaviour_t parent_of_many_b = {"parent_of_many", NULL, parent_of_many, NULL};

Test(signal, a_process_with_100k_links_takes_them_all_down_when_it_ends, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t parent = th_spawn(node, &parent_of_many_b, NULL);
    th_send(node, parent, 1, NULL, 0);
    th_await(atomic_load(&many_started) == MANY);
    th_await(atomic_load(&many_ended) == MANY); /* every child got the parent's shutdown */
    th_await(th_stats(node).processes == 0);
    th_node_stop(node);
}

Test(signal, a_process_monitored_by_100k_others_sends_each_one_down, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    many_hub = th_spawn(node, &th_echo, NULL);
    for (int i = 0; i < MANY; i++) th_send(node, th_spawn(node, &many_watcher_b, NULL), 1, NULL, 0);
    th_await(info_of(node, many_hub).monitored_by == MANY);
    cr_assert_eq(ar_exit(node, many_hub, AR_REASON(AR_SHUTDOWN)), 0);
    th_await(atomic_load(&many_downs) == MANY);
    th_node_stop(node);
}

/* A foreign thread's call has a pid (reply_to.pid) that a process may link to or monitor:
 * when the call ends, the link and the monitor fire like any other (and nothing leaks). */
static atomic_int waiter_exit, waiter_down;
static void links_callers(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    ar_ref_t ref;
    if (m->kind == AR_MSG_CALL) {
        ar_trap_exit(self, true);
        ar_link(self, m->reply_to.pid);
        ar_monitor(self, m->reply_to.pid, &ref);
        ar_reply(ar_node(self), m->reply_to, NULL, 0);
    } else if (m->kind == AR_MSG_EXIT && m->reason.code == AR_NOPROC) {
        atomic_fetch_add(&waiter_exit, 1);
    } else if (m->kind == AR_MSG_DOWN && m->reason.code == AR_NOPROC) {
        atomic_fetch_add(&waiter_down, 1);
    }
}
static const ar_behaviour_t links_callers_b = {"links_callers", NULL, links_callers, NULL};

Test(signal, link_and_monitor_on_a_foreign_call_fire_when_the_call_ends, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t p = th_spawn(node, &links_callers_b, NULL);
    for (int i = 0; i < 3; i++) {
        ar_buf_t r = {0};
        cr_assert_eq(ar_call(node, p, 1, NULL, 0, &r, TH_WAIT_MS), 0);
        ar_buf_free(&r);
    }
    th_await(atomic_load(&waiter_exit) == 3 && atomic_load(&waiter_down) == 3);
    th_await(info_of(node, p).links == 0 && info_of(node, p).monitors == 0);
    th_node_stop(node);
}

/* ar_link racing the target's death: AR_ENOPROC means nothing changed (the caller, not
 * trapping exits, lives on and no EXIT ever comes); 0 means the LINK reached the target
 * before its mailbox was marked dead, and its exit signal arrives with the target's own
 * reason, even when the LINK came while the target was ending (it once said AR_NOPROC).
 * The caller used to keep its half on AR_ENOPROC, so the dead letter's EXIT killed it. */
typedef struct racer {
    ar_pid_t target;
    atomic_int rc, linked;
    th_log_t log; /* terminate reason */
} racer_t;
static int racer_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void racer_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    racer_t *r = state;
    if (m->kind == AR_MSG_CALL) { /* a barrier: what was queued before is handled */
        ar_reply(ar_node(self), m->reply_to, NULL, 0);
        return;
    }
    atomic_store(&r->rc, ar_link(self, r->target));
    atomic_store(&r->linked, 1);
}
static void racer_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    th_log_reason(&((racer_t *)state)->log, why);
}
static const ar_behaviour_t racer_b = {"racer", racer_init, racer_handle, racer_terminate};

Test(signal, link_racing_the_targets_death_is_enoproc_with_nothing_changed_or_linked,
     .timeout = TH_TIMEOUT)
{
    enum { ROUNDS = 2000 };
    ar_node_t *node = th_node(2);
    static racer_t r[ROUNDS];
    int made = 0, refused = 0;
    for (int i = 0; i < ROUNDS; i++) {
        size_t before = th_stats(node).processes;
        r[i].target = th_spawn(node, &th_echo, NULL);
        ar_pid_t racer = th_spawn(node, &racer_b, &r[i]);
        th_send(node, racer, 1, NULL, 0);
        cr_assert_eq(ar_exit(node, r[i].target, AR_REASON(AR_KILL)), 0);
        th_await(atomic_load(&r[i].linked));
        int rc = atomic_load(&r[i].rc);
        cr_assert(rc == 0 || rc == AR_ENOPROC, "round %d: %s", i, ar_err_name(rc));
        if (rc == 0) { /* linked before the death: the EXIT ends it with the reason */
            made++;
            th_await(atomic_load(&r[i].log.terminates) == 1);
            cr_assert_eq(r[i].log.why, AR_KILLED, "round %d: the racer ended with %s", i,
                         ar_exit_code_name(r[i].log.why));
            th_await(th_stats(node).processes == before);
        } else { /* nothing changed: the target ends, the racer lives, unlinked */
            refused++;
            th_await(th_stats(node).processes == before + 1);
            ar_buf_t b = {0};
            int crc = ar_call(node, racer, 1, NULL, 0, &b, TH_WAIT_MS);
            cr_assert_eq(crc, 0, "round %d: refused, yet the racer is gone (%s, ended %s)", i,
                         ar_err_name(crc), ar_exit_code_name(r[i].log.why));
            ar_buf_free(&b);
            ar_proc_info_t pi;
            cr_assert_eq(ar_proc_info(node, racer, &pi), 0, "round %d: the racer died", i);
            cr_assert_eq(pi.links, 0);
            cr_assert_eq(atomic_load(&r[i].log.terminates), 0);
            cr_assert_eq(ar_exit(node, racer, AR_REASON(AR_KILL)), 0);
            th_await(th_stats(node).processes == before);
        }
    }
    cr_log_info("linked %d, refused %d of %d", made, refused, ROUNDS);
    cr_assert_gt(made + refused, 0);
    th_node_stop(node);
}
