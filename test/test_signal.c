/* Links, monitors, exit signals and trap_exit: kill vs killed, normal exits, exits to
 * oneself, unlink, dead pids, bidirectional and idempotent links, monitors and their refs,
 * demonitor with and without flush, message order before EXIT/DOWN, link chains, the trap
 * flag at arrival, spawn with .link, killing parked processes, a kill that skips a full
 * mailbox, monitors of a process that dies first, and the introspection counts.
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
    CMD_EXIT, /* ar_exit(pid, code); with flag, a marker to pid right after */
    /* casts: actions that may end the agent or keep it busy */
    CAST_FAIL = 200,       /* AR_FAIL with text */
    CAST_STOP,             /* ar_stop(code) */
    CAST_EXIT_SELF,        /* ar_exit(self, code), then a marker to self */
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
};

typedef struct cmd {
    ar_pid_t pid, pid2;
    ar_ref_t ref;
    int code; /* a reason code */
    int n;    /* a count or a timeout */
    bool flag;
    void *ptr;
    char text[48];
} cmd_t;

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
        snprintf(a->text[i], sizeof a->text[i], "%s", m->reason.text ? m->reason.text : "");
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
        r.rc = ar_exit(node, c->pid, AR_REASON((ar_exit_code_t)c->code));
        if (c->flag) marker_to(node, c->pid);
        break;
    default:
        r.rc = AR_EINVAL;
        break;
    }
    return r;
}

static void agent_action(ar_proc_t *self, agent_t *a, const ar_msg_t *m, const cmd_t *c)
{
    ar_node_t *node = ar_node(self);
    switch (m->tag) {
    case CAST_FAIL:
        AR_FAIL(self, "%s", c->text);
    case CAST_STOP:
        ar_stop(self, AR_REASON((ar_exit_code_t)c->code));
        break;
    case CAST_EXIT_SELF:
        a->rc = ar_exit(node, ar_self(self), AR_REASON((ar_exit_code_t)c->code));
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
#define AGENTS 12
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
              "entry %zu: kind %d tag %u, expected the marker", i, e->kind, e->tag);
}

static void assert_exit(agent_t *a, size_t i, ar_pid_t from, ar_exit_code_t code)
{
    const th_entry_t *e = entry(a, i);
    cr_assert_eq(e->kind, AR_MSG_EXIT, "entry %zu: kind %d tag %u, expected an EXIT", i,
                 e->kind, e->tag);
    cr_assert(ar_pid_eq(e->from, from), "entry %zu: EXIT from the wrong pid", i);
    cr_assert_eq(e->code, code, "entry %zu: EXIT reason %s, expected %s", i,
                 ar_exit_code_name(e->code), ar_exit_code_name(code));
}

static void assert_down(agent_t *a, size_t i, ar_pid_t from, ar_ref_t ref,
                        ar_exit_code_t code)
{
    const th_entry_t *e = entry(a, i);
    cr_assert_eq(e->kind, AR_MSG_DOWN, "entry %zu: kind %d tag %u, expected a DOWN", i,
                 e->kind, e->tag);
    cr_assert(ar_pid_eq(e->from, from), "entry %zu: DOWN from the wrong pid", i);
    cr_assert_eq(e->ref, ref, "entry %zu: DOWN ref %llu, expected %llu", i,
                 (unsigned long long)e->ref, (unsigned long long)ref);
    cr_assert_eq(e->code, code, "entry %zu: DOWN reason %s, expected %s", i,
                 ar_exit_code_name(e->code), ar_exit_code_name(code));
}

static void assert_ended(agent_t *a, ar_exit_code_t code, const char *text)
{
    await_end(a);
    cr_assert_eq(a->log.why, code, "terminate saw %s, expected %s", ar_exit_code_name(a->log.why),
                 ar_exit_code_name(code));
    if (text) cr_assert_str_eq(a->log.why_text, text);
}

/* Still alive and answering: a sync round trip works and terminate never ran. */
static void assert_alive(ar_node_t *node, ar_pid_t pid, agent_t *a)
{
    (void)th_sync(node, pid);
    cr_assert_eq(atomic_load(&a->log.terminates), 0, "the process ended (%s)",
                 ar_exit_code_name(a->log.why));
}

/* ---- kill vs killed -------------------------------------------------------------------- */
Test(signal, kill_sent_with_ar_exit_ends_with_killed_even_when_trapping, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *plain = new_agent(), *trapping = new_agent(), *watcher = new_agent();
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);
    ar_pid_t w = spawn_agent(node, watcher, true);
    do_link(node, w, t);
    ar_ref_t ref = do_monitor(node, w, p);

    cr_assert_eq(ar_exit(node, p, AR_REASON(AR_KILL)), 0);
    cr_assert_eq(ar_exit(node, t, AR_REASON(AR_KILL)), 0);
    assert_ended(plain, AR_KILLED, NULL);
    assert_ended(trapping, AR_KILLED, NULL);
    cr_assert_eq(th_log_len(&trapping->log), 0, "a trapping process got the kill as a message");

    /* Links and monitors see AR_KILLED. */
    th_await(th_log_len(&watcher->log) == 2);
    for (size_t i = 0; i < 2; i++) {
        const th_entry_t *e = entry(watcher, i);
        if (e->kind == AR_MSG_EXIT)
            assert_exit(watcher, i, t, AR_KILLED);
        else
            assert_down(watcher, i, p, ref, AR_KILLED);
    }
    cr_assert_neq(entry(watcher, 0)->kind, entry(watcher, 1)->kind);
    assert_alive(node, w, watcher);
    th_node_stop(node);
}

Test(signal, kill_reason_through_a_link_stays_kill, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *dying = new_agent(), *plain = new_agent(), *trapping = new_agent();
    ar_pid_t d = spawn_agent(node, dying, false);
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);
    do_link(node, p, d);
    do_link(node, t, d);
    act(node, d, CAST_STOP, (cmd_t){.code = AR_KILL});
    assert_ended(dying, AR_KILL, NULL);
    assert_ended(plain, AR_KILL, NULL);
    th_await(th_log_len(&trapping->log) == 1);
    assert_exit(trapping, 0, d, AR_KILL);
    assert_alive(node, t, trapping);
    th_node_stop(node);
}

/* ---- normal exits ----------------------------------------------------------------------- */
Test(signal, normal_exit_signal_is_ignored_unless_trapping, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *x = new_agent(), *plain = new_agent(), *trapping = new_agent();
    ar_pid_t xp = spawn_agent(node, x, false);
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);

    /* From a process, with a marker after it. */
    cr_assert_eq(ctl(node, xp, CMD_EXIT, (cmd_t){.pid = p, .code = AR_NORMAL, .flag = true}).rc, 0);
    cr_assert_eq(ctl(node, xp, CMD_EXIT, (cmd_t){.pid = t, .code = AR_NORMAL, .flag = true}).rc, 0);
    th_await(th_log_len(&plain->log) == 1);
    assert_marker(plain, 0);
    th_await(th_log_len(&trapping->log) == 2);
    assert_exit(trapping, 0, xp, AR_NORMAL);
    assert_marker(trapping, 1);

    /* From the test thread: the sender is no process. */
    cr_assert_eq(ar_exit(node, p, AR_REASON(AR_NORMAL)), 0);
    cr_assert_eq(ar_exit(node, t, AR_REASON(AR_NORMAL)), 0);
    cr_assert_eq(th_sync(node, p), 1, "the normal exit became a message");
    th_await(th_log_len(&trapping->log) == 3);
    assert_exit(trapping, 2, AR_PID_NONE, AR_NORMAL);
    assert_alive(node, p, plain);
    assert_alive(node, t, trapping);
    th_node_stop(node);
}

Test(signal, normal_end_of_a_linked_process_is_ignored_unless_trapping, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *d = new_agent(), *plain = new_agent(), *trapping = new_agent();
    ar_pid_t dp = spawn_agent(node, d, false);
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);
    do_link(node, p, dp);
    do_link(node, t, dp);
    ar_ref_t rp = do_monitor(node, p, dp);
    ar_ref_t rt = do_monitor(node, t, dp);
    act(node, dp, CAST_STOP, (cmd_t){.code = AR_NORMAL});
    assert_ended(d, AR_NORMAL, NULL);
    /* The DOWN follows the (dropped) exit signal from the same process. */
    th_await(th_log_len(&plain->log) == 1);
    assert_down(plain, 0, dp, rp, AR_NORMAL);
    th_await(th_log_len(&trapping->log) == 2);
    assert_exit(trapping, 0, dp, AR_NORMAL);
    assert_down(trapping, 1, dp, rt, AR_NORMAL);
    assert_alive(node, p, plain);
    assert_alive(node, t, trapping);
    cr_assert_eq(th_log_len(&plain->log), 1);
    th_node_stop(node);
}

Test(signal, exit_to_self_with_normal_ends_the_process_unless_trapping, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *plain = new_agent(), *trapping = new_agent();
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);
    act(node, p, CAST_EXIT_SELF, (cmd_t){.code = AR_NORMAL});
    act(node, t, CAST_EXIT_SELF, (cmd_t){.code = AR_NORMAL});
    assert_ended(plain, AR_NORMAL, NULL);
    th_await(!th_proc_alive(node, p));
    th_await(th_log_len(&trapping->log) == 2);
    cr_assert_eq(trapping->rc, 0);
    assert_exit(trapping, 0, t, AR_NORMAL);
    assert_marker(trapping, 1);
    assert_alive(node, t, trapping);
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
    agent_t *a = new_agent(), *dead = new_agent();
    ar_pid_t ap = spawn_agent(node, a, true);
    ar_pid_t dp = spawn_agent(node, dead, false);
    act(node, dp, CAST_STOP, (cmd_t){.code = AR_SHUTDOWN});
    await_end(dead);
    th_await(!th_proc_alive(node, dp));
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
static void spawn_linked(ar_node_t *node, ar_pid_t parent, agent_t *pa, agent_t *child)
{
    act(node, parent, CAST_SPAWN, (cmd_t){.ptr = child, .flag = true});
    th_await(atomic_load(&pa->done) == 1);
}

Test(signal, spawn_link_child_dying_in_first_handler_signals_trapping_parent,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *p = new_agent(), *c = new_agent();
    c->init_mode = INIT_CRASH_FIRST;
    ar_pid_t pp = spawn_agent(node, p, true);
    spawn_linked(node, pp, p, c);
    cr_assert_eq(p->rc, 0, "spawn: %s", ar_err_name(p->rc));
    assert_ended(c, AR_ERROR, "first handler");
    /* marker (sent by the parent after spawn) and the EXIT, in either order */
    th_await(th_log_len(&p->log) == 2);
    size_t ex = entry(p, 0)->kind == AR_MSG_EXIT ? 0 : 1;
    assert_exit(p, ex, p->pid, AR_ERROR);
    cr_assert_str_eq(p->text[ex], "first handler");
    assert_marker(p, 1 - ex);
    assert_alive(node, pp, p);
    cr_assert_eq(info_of(node, pp).links, 0);
    th_node_stop(node);
}

Test(signal, spawn_link_child_dying_in_first_handler_kills_non_trapping_parent,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *p = new_agent(), *c = new_agent();
    c->init_mode = INIT_CRASH_FIRST;
    ar_pid_t pp = spawn_agent(node, p, false);
    spawn_linked(node, pp, p, c);
    cr_assert_eq(p->rc, 0, "spawn: %s", ar_err_name(p->rc));
    assert_ended(c, AR_ERROR, "first handler");
    assert_ended(p, AR_ERROR, "first handler");
    th_await(!th_proc_alive(node, pp));
    th_node_stop(node);
}

Test(signal, spawn_link_child_stopping_in_init_still_signals_the_parent,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *p = new_agent(), *c = new_agent();
    c->init_mode = INIT_STOP;
    ar_pid_t pp = spawn_agent(node, p, true);
    spawn_linked(node, pp, p, c);
    cr_assert_eq(p->rc, 0, "spawn: %s", ar_err_name(p->rc));
    assert_ended(c, AR_SHUTDOWN, NULL);
    th_await(th_log_len(&p->log) == 2);
    size_t ex = entry(p, 0)->kind == AR_MSG_EXIT ? 0 : 1;
    assert_exit(p, ex, p->pid, AR_SHUTDOWN);
    assert_marker(p, 1 - ex);
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

Test(signal, spawn_link_child_whose_init_fails_sends_no_exit, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *p = new_agent(), *c = new_agent();
    c->init_mode = INIT_FAIL;
    ar_pid_t pp = spawn_agent(node, p, true);
    spawn_linked(node, pp, p, c);
    cr_assert_eq(p->rc, INIT_FAIL_RC, "spawn: %s", ar_err_name(p->rc));
    cr_assert_eq(atomic_load(&c->log.inits), 1);
    th_await(th_log_len(&p->log) >= 1);
    (void)th_sync(node, pp);
    cr_assert_eq(th_log_len(&p->log), 1, "a signal came from a child whose init failed");
    assert_marker(p, 0);
    cr_assert_eq(info_of(node, pp).links, 0);
    cr_assert_eq(atomic_load(&c->log.terminates), 0);
    th_node_stop(node);
}

/* ---- killing a parked process ------------------------------------------------------------ */
static void check_parked_dies_promptly(ar_exit_code_t code)
{
    ar_node_t *node = th_node(2);
    static th_log_t silent; /* a call target that never answers */
    memset(&silent, 0, sizeof silent);
    ar_pid_t srv = th_spawn(node, &th_recorder, &silent);
    const uint32_t tags[3] = {CAST_CALL, CAST_RECEIVE, CAST_SLEEP};
    agent_t *ag[3];
    ar_pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        ag[i] = new_agent();
        pids[i] = spawn_agent(node, ag[i], false);
        act(node, pids[i], tags[i], (cmd_t){.pid = srv, .n = 10000});
    }
    for (int i = 0; i < 3; i++) th_await(th_proc_blocked(node, pids[i]));
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = th_now_ns();
        cr_assert_eq(ar_exit(node, pids[i], AR_REASON(code)), 0);
        await_end(ag[i]);
        double ms = th_ms_since(t0);
        cr_assert_eq(ag[i]->log.why, code == AR_KILL ? AR_KILLED : code,
                     "parked process %d ended with %s", i, ar_exit_code_name(ag[i]->log.why));
        cr_assert_lt(ms, 3000.0, "parked process %d took %.0f ms to die", i, ms);
        cr_assert_eq(atomic_load(&ag[i]->done), 0, "the parked call returned first");
        th_await(!th_proc_alive(node, pids[i]));
    }
    th_node_stop(node);
}

Test(signal, process_parked_in_call_receive_or_sleep_killed_dies_promptly,
     .timeout = TH_TIMEOUT)
{
    check_parked_dies_promptly(AR_KILL);
}

Test(signal, process_parked_in_call_receive_or_sleep_ended_by_exit_signal_dies_promptly,
     .timeout = TH_TIMEOUT)
{
    check_parked_dies_promptly(AR_SHUTDOWN);
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
    agent_t *a = new_agent(), *dead = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t dp = spawn_agent(node, dead, false);
    act(node, dp, CAST_STOP, (cmd_t){.code = AR_NORMAL});
    await_end(dead);
    th_await(!th_proc_alive(node, dp));
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
 * match it) when demonitor runs. */
static void check_demonitor_queued(bool flush)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *b = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t bp = spawn_agent(node, b, false);
    act(node, ap, CAST_HOLD_DEMONITOR, (cmd_t){.pid = bp, .flag = flush});
    th_await(atomic_load(&a->done) == 1);
    cr_assert_eq(a->rc, 0, "ar_monitor: %s", ar_err_name(a->rc));
    th_await(th_proc_blocked(node, ap));
    crash(node, bp, "queued down");
    await_end(b);
    th_await(atomic_load(&a->seen_down) == 1);
    th_send(node, ap, TAG_GO, NULL, 0);
    th_await(th_log_len(&a->log) >= (flush ? 1u : 2u));
    (void)th_sync(node, ap);
    cr_assert_eq(a->rc2, 0, "ar_demonitor: %s", ar_err_name(a->rc2));
    if (flush) {
        cr_assert_eq(th_log_len(&a->log), 1, "flush left the DOWN queued");
        assert_marker(a, 0);
    } else {
        cr_assert_eq(th_log_len(&a->log), 2);
        assert_down(a, 0, bp, a->ref, AR_ERROR);
        assert_marker(a, 1);
    }
    cr_assert_eq(info_of(node, ap).monitors, 0);
    th_node_stop(node);
}

Test(signal, demonitor_without_flush_keeps_a_queued_down, .timeout = TH_TIMEOUT)
{
    check_demonitor_queued(false);
}

Test(signal, demonitor_with_flush_removes_a_queued_down, .timeout = TH_TIMEOUT)
{
    check_demonitor_queued(true);
}

Test(signal, demonitor_with_flush_of_a_dead_pid_monitor_leaves_no_down,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *a = new_agent(), *dead = new_agent();
    ar_pid_t ap = spawn_agent(node, a, false);
    ar_pid_t dp = spawn_agent(node, dead, false);
    act(node, dp, CAST_STOP, (cmd_t){.code = AR_NORMAL});
    await_end(dead);
    th_await(!th_proc_alive(node, dp));
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
    agent_t *dead = new_agent();
    ar_pid_t dp = spawn_agent(node, dead, false);
    act(node, dp, CAST_STOP, (cmd_t){.code = AR_NORMAL});
    await_end(dead);
    th_await(!th_proc_alive(node, dp));
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
 * so its real reason comes back, as for any link or monitor. */
static void check_busy_target_end(ar_exit_code_t code)
{
    ar_node_t *node = th_node(2);
    agent_t *plain = new_agent(), *trapping = new_agent(), *b = new_agent();
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);
    ar_pid_t bp = spawn_agent(node, b, false);
    act(node, bp, CAST_SPIN_THEN_STOP, (cmd_t){.code = (int)code});
    th_await(atomic_load(&b->spinning) == 1);
    do_link(node, p, bp);
    do_link(node, t, bp);
    ar_ref_t rp = do_monitor(node, p, bp);
    ar_ref_t rt = do_monitor(node, t, bp);
    atomic_store(&b->go, 1);
    assert_ended(b, code, NULL);

    if (code == AR_NORMAL) {
        /* The non-trapping one ignores a normal end: only the DOWN. */
        th_await(th_log_len(&plain->log) >= 1 || atomic_load(&plain->log.terminates) == 1);
        cr_assert_eq(atomic_load(&plain->log.terminates), 0,
                     "a normal end killed a linked process (%s)",
                     ar_exit_code_name(plain->log.why));
        assert_down(plain, 0, bp, rp, code);
        assert_alive(node, p, plain);
        cr_assert_eq(th_log_len(&plain->log), 1);
    } else {
        assert_ended(plain, code, NULL);
    }
    /* The trapping one: the EXIT and the DOWN carry the real reason. */
    th_await(th_log_len(&trapping->log) >= 2);
    size_t ex = entry(trapping, 0)->kind == AR_MSG_EXIT ? 0 : 1;
    assert_exit(trapping, ex, bp, code);
    assert_down(trapping, 1 - ex, bp, rt, code);
    (void)th_sync(node, t);
    cr_assert_eq(th_log_len(&trapping->log), 2);
    th_node_stop(node);
}

Test(signal, busy_target_ending_normally_with_link_and_monitor_queued_sends_normal,
     .timeout = TH_TIMEOUT)
{
    check_busy_target_end(AR_NORMAL);
}

Test(signal, busy_target_ending_with_shutdown_with_link_and_monitor_queued_sends_shutdown,
     .timeout = TH_TIMEOUT)
{
    check_busy_target_end(AR_SHUTDOWN);
}

Test(signal, exit_signal_text_is_copied_and_kept, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *plain = new_agent(), *trapping = new_agent();
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);
    char text[32] = "custom reason";
    cr_assert_eq(ar_exit(node, t, (ar_reason_t){AR_ERROR, text}), 0);
    cr_assert_eq(ar_exit(node, p, (ar_reason_t){AR_ERROR, text}), 0);
    memset(text, 'Z', sizeof text - 1); /* the runtime keeps its own copy */
    assert_ended(plain, AR_ERROR, "custom reason");
    th_await(th_log_len(&trapping->log) == 1);
    assert_exit(trapping, 0, AR_PID_NONE, AR_ERROR);
    cr_assert_str_eq(trapping->text[0], "custom reason");
    assert_alive(node, t, trapping);
    th_node_stop(node);
}

Test(signal, exit_to_self_with_an_error_ends_the_process_unless_trapping,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    agent_t *plain = new_agent(), *trapping = new_agent();
    ar_pid_t p = spawn_agent(node, plain, false);
    ar_pid_t t = spawn_agent(node, trapping, true);
    act(node, p, CAST_EXIT_SELF, (cmd_t){.code = AR_SHUTDOWN});
    act(node, t, CAST_EXIT_SELF, (cmd_t){.code = AR_SHUTDOWN});
    assert_ended(plain, AR_SHUTDOWN, NULL);
    th_await(th_log_len(&trapping->log) == 2);
    assert_exit(trapping, 0, t, AR_SHUTDOWN);
    assert_marker(trapping, 1);
    assert_alive(node, t, trapping);
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
 * trapping exits, lives on and no EXIT ever comes); 0 means the link was made before the
 * death, and its exit signal arrives (killing the caller with the target's reason). The
 * caller used to keep its half on AR_ENOPROC, so the dead letter's EXIT killed it. */
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
     .timeout = 60)
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
