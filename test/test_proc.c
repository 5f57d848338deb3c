/* Processes: init inside ar_spawn, failed starts, terminate exactly once with the right
 * reason, ar_stop, pids never reused, ar_self/ar_node, spawning from handlers and blocking
 * inits. */
#include "test_helpers.h"

static void nop_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m;
}

enum {
    TAG_COUNT = 1,
    TAG_STOP,      /* payload: the reason text; ar_stop(AR_ERROR, text) */
    TAG_STOP_NORMAL,
    TAG_FAIL,
    TAG_ASSERT,
    TAG_EXIT_SELF,
    TAG_GATE,      /* block in a receive until a TAG_GO arrives */
    TAG_GO,
};

enum init_mode {
    INIT_OK,
    INIT_RETURN_NEG42,
    INIT_RETURN_ENOENT,
    INIT_FAIL,
    INIT_EXIT_SELF,
    INIT_ASSERT,
    INIT_STOP,
};

/* What one process saw; the test owns it and passes it as the spawn arg. */
typedef struct seen {
    enum init_mode mode;
    atomic_int init_ran, handled, terminates;
    ar_pid_t init_self;
    ar_node_t *init_node;
    void *init_state, *term_state;
    ar_exit_code_t why;
    char why_text[256];
    int assert_line, fail_line;
    uint32_t tags[64];
} seen_t;

typedef struct seen_state {
    seen_t *s;
} seen_state_t;

static int seen_init(ar_proc_t *self, void *arg, void **state)
{
    seen_t *s = arg;
    s->init_self = ar_self(self);
    s->init_node = ar_node(self);
    atomic_store(&s->init_ran, 1);
    switch (s->mode) {
    case INIT_RETURN_NEG42:
        return -42;
    case INIT_RETURN_ENOENT:
        return AR_ENOENT;
    case INIT_FAIL:
        AR_FAIL(self, "init failed on purpose");
    case INIT_EXIT_SELF:
        ar_exit_self(self, (ar_reason_t){AR_ERROR, "leaving init"});
    case INIT_ASSERT:
        AR_ASSERT(self, s->mode != INIT_ASSERT);
        break;
    case INIT_STOP:
        ar_stop(self, (ar_reason_t){AR_SHUTDOWN, "stopped in init"});
        break;
    case INIT_OK:
        break;
    }
    seen_state_t *st = malloc(sizeof *st);
    if (!st) return AR_ENOMEM;
    st->s = s;
    s->init_state = st;
    *state = st;
    return 0;
}

static bool is_go(const ar_msg_t *m, void *ud)
{
    (void)ud;
    return m->tag == TAG_GO;
}

static void seen_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    seen_t *s = ((seen_state_t *)state)->s;
    int n = atomic_load(&s->handled);
    if (n < 64) s->tags[n] = m->tag;
    atomic_store(&s->handled, n + 1);
    switch (m->tag) {
    case TAG_STOP: {
        /* The text lives in this frame and is overwritten before the handler returns:
         * the runtime must have copied it. */
        char text[128];
        snprintf(text, sizeof text, "%.*s", (int)m->len, (const char *)m->data);
        ar_stop(self, (ar_reason_t){AR_ERROR, text});
        memset(text, 'X', sizeof text - 1);
        text[sizeof text - 1] = '\0';
        break;
    }
    case TAG_STOP_NORMAL:
        ar_stop(self, AR_REASON(AR_NORMAL));
        break;
    case TAG_FAIL:
        s->fail_line = __LINE__ + 1;
        AR_FAIL(self, "bad value %d in %s", 7, "handler");
    case TAG_ASSERT:
        s->assert_line = __LINE__ + 1;
        AR_ASSERT(self, m->len == 12345);
        break;
    case TAG_EXIT_SELF: {
        char text[64];
        snprintf(text, sizeof text, "exit self %d", 3);
        ar_exit_self(self, (ar_reason_t){AR_ERROR, text});
    }
    case TAG_GATE: {
        ar_msg_t *go = NULL;
        if (ar_receive(self, is_go, NULL, TH_WAIT_MS, &go) == 0) ar_msg_release(self, go);
        break;
    }
    default:
        break;
    }
}

static void seen_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    seen_state_t *st = state;
    seen_t *s = st->s;
    s->term_state = st;
    free(st);
    s->why = why.code;
    snprintf(s->why_text, sizeof s->why_text, "%s", why.text ? why.text : "");
    atomic_fetch_add(&s->terminates, 1);
}
static const ar_behaviour_t seen_b = {"seen", seen_init, seen_handle, seen_terminate};

/* ---- init runs inside ar_spawn -------------------------------------------------------- */
Test(proc, init_side_effect_is_visible_when_spawn_returns, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    enum { N = 200 };
    static seen_t s[N];
    for (int i = 0; i < N; i++) {
        ar_pid_t pid = AR_PID_NONE;
        cr_assert_eq(ar_spawn(node, &seen_b, &s[i], NULL, &pid), 0);
        cr_assert_eq(atomic_load(&s[i].init_ran), 1, "init had not run when ar_spawn returned");
        cr_assert(ar_pid_eq(s[i].init_self, pid), "init sees its own pid via ar_self");
        cr_assert_eq(s[i].init_node, node);
    }
    th_node_stop(node);
}

static void check_failed_start(enum init_mode mode, int expect)
{
    ar_node_t *node = th_node(2);
    th_spawn(node, &th_echo, NULL);
    ar_node_stats_t s0 = th_stats(node);
    static seen_t s;
    memset(&s, 0, sizeof s);
    s.mode = mode;
    ar_pid_t pid = AR_PID_NONE;
    int rc = ar_spawn(node, &seen_b, &s, NULL, &pid);
    cr_assert_eq(rc, expect, "ar_spawn returned %d (%s), expected %d (%s)", rc,
                 ar_err_name(rc), expect, ar_err_name(expect));
    cr_assert_eq(atomic_load(&s.init_ran), 1);
    ar_node_stats_t s1 = th_stats(node);
    cr_assert_eq(s1.processes, s0.processes, "a failed start leaves no process behind");
    cr_assert(ar_pid_is_none(s.init_self) || !th_proc_alive(node, s.init_self));
    th_node_stop(node);
    cr_assert_eq(atomic_load(&s.terminates), 0, "terminate must not run when init failed");
    cr_assert_eq(atomic_load(&s.handled), 0);
}

Test(proc, init_negative_result_is_returned_as_is_without_terminate, .timeout = TH_TIMEOUT)
{
    check_failed_start(INIT_RETURN_NEG42, -42);
}

Test(proc, init_returning_an_ar_code_is_returned_as_is, .timeout = TH_TIMEOUT)
{
    check_failed_start(INIT_RETURN_ENOENT, AR_ENOENT);
}

Test(proc, init_crash_by_ar_fail_makes_spawn_enoproc, .timeout = TH_TIMEOUT)
{
    check_failed_start(INIT_FAIL, AR_ENOPROC);
}

Test(proc, init_crash_by_exit_self_makes_spawn_enoproc, .timeout = TH_TIMEOUT)
{
    check_failed_start(INIT_EXIT_SELF, AR_ENOPROC);
}

Test(proc, init_crash_by_ar_assert_makes_spawn_enoproc, .timeout = TH_TIMEOUT)
{
    check_failed_start(INIT_ASSERT, AR_ENOPROC);
}

/* A failed start from inside a process behaves the same. */
typedef struct spawner {
    seen_t *child;
    int rc;
    ar_pid_t child_pid;
    ar_pid_t self_before, self_after;
} spawner_t;

static int spawner_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    spawner_t *sp = state;
    sp->self_before = ar_self(self);
    sp->child_pid = AR_PID_NONE;
    sp->rc = ar_spawn(ar_node(self), &seen_b, sp->child, NULL, &sp->child_pid);
    sp->self_after = ar_self(self);
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, NULL, 0);
}
static const ar_behaviour_t spawner_b = {"spawner", spawner_init, spawner_handle, NULL};

static spawner_t *spawn_via_process(ar_node_t *node, seen_t *child)
{
    static spawner_t sp;
    memset(&sp, 0, sizeof sp);
    sp.child = child;
    ar_pid_t parent = th_spawn(node, &spawner_b, &sp);
    ar_buf_t r = {0};
    int rc = ar_call(node, parent, 1, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "call: %s", ar_err_name(rc));
    ar_buf_free(&r);
    cr_assert(ar_pid_eq(sp.self_before, parent));
    return &sp;
}

Test(proc, failed_start_from_a_process_returns_the_code_and_leaves_nothing,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static const struct {
        enum init_mode mode;
        int rc;
    } cases[] = {{INIT_RETURN_NEG42, -42}, {INIT_FAIL, AR_ENOPROC}, {INIT_EXIT_SELF, AR_ENOPROC}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        static seen_t s;
        memset(&s, 0, sizeof s);
        s.mode = cases[i].mode;
        size_t before = th_stats(node).processes;
        spawner_t *sp = spawn_via_process(node, &s);
        cr_assert_eq(sp->rc, cases[i].rc, "case %zu: got %d (%s)", i, sp->rc,
                     ar_err_name(sp->rc));
        cr_assert(ar_pid_eq(sp->self_after, sp->self_before),
                  "the parent is itself again after a failed spawn");
        cr_assert_eq(th_stats(node).processes, before + 1, "only the spawner was added");
        cr_assert_eq(atomic_load(&s.terminates), 0);
    }
    th_node_stop(node);
}

/* ---- terminate exactly once, with the right reason -------------------------------------- */
/* Static storage: a process may outlive the frame that spawned it. */
static seen_t *start_seen(ar_node_t *node, ar_pid_t *pid)
{
    static seen_t pool[16];
    static int used;
    cr_assert_lt(used, 16);
    seen_t *s = &pool[used++];
    *pid = th_spawn(node, &seen_b, s);
    return s;
}

/* After the end: later messages are dropped, and terminate stays at one call. */
static void check_once_after(ar_node_t *node, ar_pid_t pid, seen_t *s)
{
    th_await(atomic_load(&s->terminates) >= 1);
    th_await(!th_proc_alive(node, pid));
    int handled = atomic_load(&s->handled);
    for (int i = 0; i < 10; i++) cr_assert_eq(ar_send(node, pid, TAG_STOP_NORMAL, NULL, 0), 0);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&s->terminates), 1, "terminate ran %d times",
                 atomic_load(&s->terminates));
    cr_assert_eq(atomic_load(&s->handled), handled, "no handler runs after the end");
    cr_assert_eq(s->term_state, s->init_state, "terminate gets the state init stored");
}

Test(proc, terminate_runs_once_with_the_reason_and_copied_text_of_ar_stop,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t pid;
    seen_t *s = start_seen(node, &pid);
    th_send(node, pid, TAG_STOP, "my own reason", 13);
    th_await(atomic_load(&s->terminates) >= 1);
    cr_assert_eq(s->why, AR_ERROR);
    cr_assert_str_eq(s->why_text, "my own reason");
    check_once_after(node, pid, s);
}

Test(proc, terminate_runs_once_with_normal_after_ar_stop_normal, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t pid;
    seen_t *s = start_seen(node, &pid);
    th_send(node, pid, TAG_STOP_NORMAL, NULL, 0);
    th_await(atomic_load(&s->terminates) >= 1);
    cr_assert_eq(s->why, AR_NORMAL, "reason %s", ar_exit_code_name(s->why));
    check_once_after(node, pid, s);
}

Test(proc, terminate_runs_once_with_error_and_formatted_text_after_ar_fail,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t pid;
    seen_t *s = start_seen(node, &pid);
    th_send(node, pid, TAG_FAIL, NULL, 0);
    th_await(atomic_load(&s->terminates) >= 1);
    cr_assert_eq(s->why, AR_ERROR, "reason %s", ar_exit_code_name(s->why));
    char expected[256];
    snprintf(expected, sizeof expected, "bad value 7 in handler at %s:%d", __FILE__, s->fail_line);
    cr_assert_str_eq(s->why_text, expected);
    check_once_after(node, pid, s);
}

Test(proc, terminate_runs_once_with_error_condition_file_and_line_after_ar_assert,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t pid;
    seen_t *s = start_seen(node, &pid);
    th_send(node, pid, TAG_ASSERT, "x", 1);
    th_await(atomic_load(&s->terminates) >= 1);
    cr_assert_eq(s->why, AR_ERROR, "reason %s", ar_exit_code_name(s->why));
    cr_assert(strncmp(s->why_text, "assertion failed: m->len == 12345",
                      strlen("assertion failed: m->len == 12345")) == 0,
              "text: \"%s\"", s->why_text);
    cr_assert_not_null(strstr(s->why_text, "test_proc.c"), "text: \"%s\"", s->why_text);
    char line[32];
    snprintf(line, sizeof line, ":%d", s->assert_line);
    cr_assert_not_null(strstr(s->why_text, line), "text \"%s\" lacks line %s", s->why_text,
                       line);
    check_once_after(node, pid, s);
}

Test(proc, terminate_runs_once_with_the_reason_of_exit_self, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t pid;
    seen_t *s = start_seen(node, &pid);
    th_send(node, pid, TAG_EXIT_SELF, NULL, 0);
    th_await(atomic_load(&s->terminates) >= 1);
    cr_assert_eq(s->why, AR_ERROR, "reason %s", ar_exit_code_name(s->why));
    cr_assert_str_eq(s->why_text, "exit self 3");
    check_once_after(node, pid, s);
}

Test(proc, terminate_runs_once_with_shutdown_at_node_stop, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t pid;
    seen_t *s = start_seen(node, &pid);
    th_send(node, pid, TAG_COUNT, NULL, 0);
    th_await(atomic_load(&s->handled) == 1);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&s->terminates), 1);
    cr_assert_eq(s->why, AR_SHUTDOWN, "reason %s", ar_exit_code_name(s->why));
    cr_assert_eq(s->term_state, s->init_state);
}

Test(proc, crashed_processes_do_not_stop_the_node, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    uint32_t tags[] = {TAG_FAIL, TAG_ASSERT, TAG_EXIT_SELF, TAG_FAIL};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
        ar_pid_t pid;
        seen_t *s = start_seen(node, &pid);
        th_send(node, pid, tags[i], NULL, 0);
        th_await(atomic_load(&s->terminates) == 1);
        th_echo_check(node, echo);
    }
    th_node_stop(node);
}

Test(proc, stop_in_init_spawn_succeeds_then_process_ends_with_that_reason,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static seen_t s;
    s.mode = INIT_STOP;
    ar_pid_t pid = AR_PID_NONE;
    int rc = ar_spawn(node, &seen_b, &s, NULL, &pid);
    cr_assert_eq(rc, 0, "got %s", ar_err_name(rc));
    cr_assert(!ar_pid_is_none(pid));
    cr_assert(ar_pid_eq(pid, s.init_self));
    ar_send(node, pid, TAG_COUNT, NULL, 0);
    th_await(atomic_load(&s.terminates) == 1);
    cr_assert_eq(s.why, AR_SHUTDOWN, "reason %s", ar_exit_code_name(s.why));
    cr_assert_str_eq(s.why_text, "stopped in init");
    th_await(!th_proc_alive(node, pid));
    th_node_stop(node);
    cr_assert_eq(atomic_load(&s.terminates), 1);
    cr_assert_eq(atomic_load(&s.handled), 0, "no message is handled after ar_stop in init");
}

/* The stop message is surely followed by queued messages: the process is held in a
 * receive (TAG_GATE) while STOP and two more messages are queued behind it. */
Test(proc, handler_is_not_called_for_messages_queued_after_ar_stop, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t pid;
    seen_t *s = start_seen(node, &pid);
    th_send(node, pid, TAG_GATE, NULL, 0);
    th_await(atomic_load(&s->handled) == 1 && th_proc_blocked(node, pid));
    th_send(node, pid, TAG_STOP_NORMAL, NULL, 0);
    th_send(node, pid, TAG_COUNT, NULL, 0);
    th_send(node, pid, TAG_COUNT, NULL, 0);
    th_send(node, pid, TAG_GO, NULL, 0);
    th_await(atomic_load(&s->terminates) == 1);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&s->handled), 2, "handled %d messages", atomic_load(&s->handled));
    cr_assert_eq(s->tags[0], TAG_GATE);
    cr_assert_eq(s->tags[1], TAG_STOP_NORMAL);
    cr_assert_eq(s->why, AR_NORMAL);
}

/* ---- pids ------------------------------------------------------------------------------ */
/* Ends right away: ar_stop inside init. */
static atomic_int churn_terms;
static int churn_init(ar_proc_t *self, void *arg, void **state)
{
    (void)arg, (void)state;
    ar_stop(self, AR_REASON(AR_NORMAL));
    return 0;
}
static void churn_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)state, (void)why;
    atomic_fetch_add(&churn_terms, 1);
}
static const ar_behaviour_t churn_b = {"churn", churn_init, nop_handle, churn_terminate};

Test(proc, pids_are_unique_and_never_reused_across_10k_spawn_exit_churn,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    enum { N = 10000 };
    static ar_pid_t pids[N];
    for (int i = 0; i < N; i++) {
        int rc = ar_spawn(node, &churn_b, NULL, NULL, &pids[i]);
        cr_assert_eq(rc, 0, "spawn %d: %s", i, ar_err_name(rc));
        cr_assert(!ar_pid_is_none(pids[i]));
        /* Let the ended ones free their slots now and then, so slots get reused. */
        if (i % 256 == 255) th_await(th_stats(node).processes == 0);
    }
    th_await(th_stats(node).processes == 0);
    qsort(pids, N, sizeof pids[0], th_pid_cmp);
    for (int i = 1; i < N; i++) {
        char a[AR_PID_STRLEN];
        ar_pid_format(pids[i], a, sizeof a);
        cr_assert(!ar_pid_eq(pids[i - 1], pids[i]), "pid %s handed out twice", a);
    }
    th_node_stop(node);
    cr_assert_eq(atomic_load(&churn_terms), N);
}

Test(proc, send_to_an_old_pid_is_dropped_not_delivered_to_the_slots_new_occupant,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t old;
    seen_t *olds = start_seen(node, &old);
    th_send(node, old, TAG_STOP_NORMAL, NULL, 0);
    th_await(atomic_load(&olds->terminates) == 1);
    th_await(!th_proc_alive(node, old));
    th_await(th_stats(node).processes == 0);

    /* New processes until one takes the old slot (the index part of the pid). */
    enum { MAX = 2000 };
    static th_echo_state_t st[MAX];
    static ar_pid_t news[MAX];
    int n = 0, same = -1;
    while (n < MAX && same < 0) {
        news[n] = th_spawn(node, &th_echo, &st[n]);
        cr_assert(!ar_pid_eq(news[n], old), "a dead pid was handed out again");
        if ((news[n].lo & 0xffffffffu) == (old.lo & 0xffffffffu) && news[n].hi == old.hi)
            same = n;
        n++;
    }
    ar_node_stats_t s0 = th_stats(node);
    cr_assert_eq(ar_send(node, old, 42, "stale", 5), 0);
    th_await(th_stats(node).dropped - s0.dropped == 1);
    for (int i = 0; i < n; i++) {
        th_echo_check(node, news[i]); /* FIFO from this thread: after the send */
        cr_assert_eq(atomic_load(&st[i].casts), 0,
                     "process %d (took the old slot: %s) got the stale message", i,
                     i == same ? "yes" : "no");
    }
    ar_buf_t r = {0};
    cr_assert_eq(ar_call(node, old, 1, NULL, 0, &r, TH_WAIT_MS), AR_ENOPROC);
    th_node_stop(node);
}

/* ---- ar_self / ar_node -------------------------------------------------------------------- */
typedef struct who {
    ar_pid_t self;
    ar_node_t *node;
    atomic_int done;
} who_t;
static int who_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void who_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    who_t *w = state;
    w->self = ar_self(self);
    w->node = ar_node(self);
    atomic_store(&w->done, 1);
}
static const ar_behaviour_t who_b = {"who", who_init, who_handle, NULL};

Test(proc, self_and_node_in_a_handler_name_the_running_process, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static who_t w[8];
    ar_pid_t p[8];
    for (int i = 0; i < 8; i++) p[i] = th_spawn(node, &who_b, &w[i]);
    for (int i = 0; i < 8; i++) th_send(node, p[i], 1, NULL, 0);
    for (int i = 0; i < 8; i++) {
        th_await(atomic_load(&w[i].done) == 1);
        cr_assert(ar_pid_eq(w[i].self, p[i]));
        cr_assert_eq(w[i].node, node);
        cr_assert(ar_pid_is_local(node, p[i]));
    }
    th_node_stop(node);
}

/* ---- spawning from a handler --------------------------------------------------------------- */
Test(proc, spawn_from_a_handler_runs_child_init_as_the_child, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static seen_t child;
    spawner_t *sp = spawn_via_process(node, &child);
    cr_assert_eq(sp->rc, 0, "got %s", ar_err_name(sp->rc));
    cr_assert_eq(atomic_load(&child.init_ran), 1);
    cr_assert(ar_pid_eq(child.init_self, sp->child_pid), "child init sees the child's pid");
    cr_assert(!ar_pid_eq(child.init_self, sp->self_before), "not the parent's");
    cr_assert(ar_pid_eq(sp->self_after, sp->self_before), "the parent is itself again");
    ar_proc_info_t info;
    cr_assert_eq(ar_proc_info(node, sp->child_pid, &info), 0);
    cr_assert(ar_pid_eq(info.pid, sp->child_pid));
    cr_assert(ar_pid_eq(info.parent, sp->self_before), "the spawner is the parent");
    cr_assert_str_eq(info.behaviour, "seen");
    /* The child is a working process. */
    th_send(node, sp->child_pid, TAG_COUNT, NULL, 0);
    th_await(atomic_load(&child.handled) == 1);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&child.terminates), 1);
}

/* ---- init that blocks ------------------------------------------------------------------------- */
typedef struct blocker {
    ar_pid_t server;
    int rc;
    char answer[32];
} blocker_t;

static int blocker_init(ar_proc_t *self, void *arg, void **state)
{
    blocker_t *b = arg;
    ar_buf_t r = {0};
    b->rc = ar_call(ar_node(self), b->server, 1, "from init", 10, &r, TH_WAIT_MS);
    if (b->rc == 0) {
        snprintf(b->answer, sizeof b->answer, "%.*s", (int)r.len, (const char *)r.data);
        ar_buf_free(&r);
    }
    *state = b;
    return 0;
}
static const ar_behaviour_t blocker_b = {"blocker", blocker_init, nop_handle, NULL};

typedef struct blocking_parent {
    blocker_t child;
    int rc;
    ar_pid_t pid;
} blocking_parent_t;
static int bparent_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void bparent_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    blocking_parent_t *bp = state;
    bp->rc = ar_spawn(ar_node(self), &blocker_b, &bp->child, NULL, &bp->pid);
    ar_reply(ar_node(self), m->reply_to, bp->child.answer, strlen(bp->child.answer));
}
static const ar_behaviour_t bparent_b = {"bparent", bparent_init, bparent_handle, NULL};

static void check_blocking_init_from_main(unsigned schedulers)
{
    ar_node_t *node = th_node(schedulers);
    static blocker_t b;
    memset(&b, 0, sizeof b);
    b.server = th_spawn(node, &th_echo, NULL);
    th_spawn(node, &blocker_b, &b);
    cr_assert_eq(b.rc, 0, "init's call: %s", ar_err_name(b.rc));
    cr_assert_str_eq(b.answer, "from init");
    th_node_stop(node);
}

static void check_blocking_init_from_process(unsigned schedulers)
{
    ar_node_t *node = th_node(schedulers);
    static blocking_parent_t bp;
    memset(&bp, 0, sizeof bp);
    bp.child.server = th_spawn(node, &th_echo, NULL);
    ar_pid_t parent = th_spawn(node, &bparent_b, &bp);
    ar_buf_t r = {0};
    int rc = ar_call(node, parent, 1, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "call: %s", ar_err_name(rc));
    ar_buf_free(&r);
    cr_assert_eq(bp.rc, 0, "spawn: %s", ar_err_name(bp.rc));
    cr_assert_eq(bp.child.rc, 0, "init's call: %s", ar_err_name(bp.child.rc));
    cr_assert_str_eq(bp.child.answer, "from init");
    cr_assert(th_proc_alive(node, bp.pid));
    th_node_stop(node);
}

Test(proc, init_blocking_in_a_call_completes_inside_spawn_from_main, .timeout = TH_TIMEOUT)
{
    check_blocking_init_from_main(2);
}

Test(proc, init_blocking_in_a_call_completes_inside_spawn_from_main_one_scheduler,
     .timeout = TH_TIMEOUT)
{
    check_blocking_init_from_main(1);
}

Test(proc, init_blocking_in_a_call_completes_inside_spawn_from_a_process,
     .timeout = TH_TIMEOUT)
{
    check_blocking_init_from_process(2);
}

Test(proc, init_blocking_in_a_call_completes_inside_spawn_from_a_process_one_scheduler,
     .timeout = TH_TIMEOUT)
{
    check_blocking_init_from_process(1);
}

/* ---- terminate runs as a normal process: it may block ------------------------------------- */
typedef struct blocking_term {
    ar_pid_t echo;
    int call_rc;
    ar_reason_t why;
    char text[64];
    atomic_int done;
} blocking_term_t;

static int bt_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void bt_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    (void)m;
    ar_stop(self, (ar_reason_t){AR_ERROR, "stopping with a call in terminate"});
}

static void bt_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    blocking_term_t *bt = state;
    int64_t v = 7;
    ar_buf_t r = {0};
    /* an ar_call parks the ending process; it must not cut terminate short */
    bt->call_rc = ar_call(ar_node(self), bt->echo, 1, &v, sizeof v, &r, TH_WAIT_MS);
    ar_buf_free(&r);
    bt->why = why;
    th_reason_text(bt->text, sizeof bt->text, why.text);
    atomic_store(&bt->done, 1);
}
static const ar_behaviour_t blocking_term_b = {"blocking_term", bt_init, bt_handle, bt_terminate};

Test(proc, terminate_may_block_in_a_call_and_keeps_its_reason, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    static blocking_term_t bt;
    static th_echo_state_t es;
    bt.echo = th_spawn(node, &th_echo, &es);
    ar_pid_t p = th_spawn(node, &blocking_term_b, &bt);
    th_send(node, p, 1, NULL, 0);
    th_await(atomic_load(&bt.done) == 1);
    cr_assert_eq(bt.call_rc, 0, "call from terminate: %s", ar_err_name(bt.call_rc));
    cr_assert_eq(bt.why.code, AR_ERROR);
    cr_assert_str_eq(bt.text, "stopping with a call in terminate");
    th_await(!th_proc_alive(node, p));
    th_node_stop(node);
}
