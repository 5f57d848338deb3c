/* Supervisors, case by case after OTP's supervisor suite: start (normal, a failing or
 * crashing child, invalid specs), stop (brutal, timeout, infinity, simple_one_for_one in
 * parallel), the child administration calls and their results, restart types by how the
 * child ends, the four strategies with their exact stop/start orders, escalation when
 * restarts keep failing, restart intensity, defaults, a supervision tree, counting and
 * listing children, exit signals to a supervisor and significant children.
 *
 * Workers ("wk") are driven by casts and log every successful init ("+name"), failed
 * init ("!name") and terminate ("-name") into one shared trace, so orders are checked as
 * strings. A watcher process monitors supervisors (and may start one linked to itself)
 * and records the DOWN/EXIT messages it receives with their reasons. */
#include "test_helpers.h"

/* ---- the shared trace ----------------------------------------------------------------- */
#define EV_CAP 8192
typedef struct ev {
    char op; /* '+' init, '!' failed init, '-' terminate */
    const char *name;
} ev_t;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static ev_t g_ev[EV_CAP];
static int g_nev;
static char g_trace[EV_CAP * 8];

static void ev_add(char op, const char *name)
{
    pthread_mutex_lock(&g_mu);
    if (g_nev < EV_CAP) g_ev[g_nev++] = (ev_t){op, name};
    pthread_mutex_unlock(&g_mu);
}

static int ev_mark(void)
{
    pthread_mutex_lock(&g_mu);
    int n = g_nev;
    pthread_mutex_unlock(&g_mu);
    return n;
}

/* The trace since mark, "+a +b -b". */
static const char *trace_from(int mark)
{
    pthread_mutex_lock(&g_mu);
    size_t off = 0;
    g_trace[0] = '\0';
    for (int i = mark; i < g_nev; i++)
        off += (size_t)snprintf(g_trace + off, sizeof g_trace - off, "%s%c%s",
                                off ? " " : "", g_ev[i].op, g_ev[i].name);
    pthread_mutex_unlock(&g_mu);
    return g_trace;
}

static int ev_count(int mark, char op, const char *name)
{
    int n = 0;
    pthread_mutex_lock(&g_mu);
    for (int i = mark; i < g_nev; i++)
        if (g_ev[i].op == op && strcmp(g_ev[i].name, name) == 0) n++;
    pthread_mutex_unlock(&g_mu);
    return n;
}

/* ---- workers -------------------------------------------------------------------------- */
enum {
    W_STOP = 1, /* cast, int code: ar_stop(code) */
    W_FAIL,     /* cast: AR_FAIL */
    W_UNLINK,   /* cast, pid: ar_unlink(pid) */
};

typedef struct wk {
    const char *name;
    int init_rc;             /* what a failing init returns (0: AR_EBADMSG) */
    atomic_int fail_next;    /* that many next inits fail */
    atomic_int fail_from;    /* init attempt number from which every init fails (0: never) */
    atomic_int crash_next;   /* that many next inits crash (AR_FAIL) */
    int fail_sleep_ms;       /* a failing init parks this long first */
    bool trap;               /* traps exits; an EXIT ends it with the same reason */
    bool ignore_exit;        /* trapping: ignores EXIT messages */
    int exit_delay_ms;       /* trapping: parks this long before obeying an EXIT */
    int obey_when_exits;     /* trapping: obeys an EXIT once this many EXITs reached workers */
    ar_exit_code_t own_code; /* trapping, with own_text: an EXIT ends it with this reason */
    const char *own_text;    /*   (AR_ERROR: a crash with that text) */
    atomic_int attempts, inits, terms, exits_seen, unlinked;
    atomic_int why;          /* last terminate reason */
    int whys[256];           /* the reason of each terminate, in order */
    atomic_int exit_code;    /* last EXIT message's reason */
    ar_pid_t pid;            /* last successful init (under g_mu) */
} wk_t;

static atomic_int g_exits_seen; /* EXIT messages handled by all workers */

static ar_pid_t wk_pid(wk_t *w)
{
    pthread_mutex_lock(&g_mu);
    ar_pid_t p = w->pid;
    pthread_mutex_unlock(&g_mu);
    return p;
}

static bool take(atomic_int *n)
{
    int v = atomic_load(n);
    while (v > 0)
        if (atomic_compare_exchange_weak(n, &v, v - 1)) return true;
    return false;
}

static int wk_init(ar_proc_t *self, void *arg, void **state)
{
    wk_t *w = arg;
    int n = atomic_fetch_add(&w->attempts, 1) + 1;
    int from = atomic_load(&w->fail_from);
    if ((from > 0 && n >= from) || take(&w->fail_next)) {
        if (w->fail_sleep_ms) ar_sleep(self, w->fail_sleep_ms);
        ev_add('!', w->name);
        return w->init_rc ? w->init_rc : AR_EBADMSG;
    }
    if (take(&w->crash_next)) {
        ev_add('!', w->name);
        AR_FAIL(self, "%s: init crashed", w->name);
    }
    if (w->trap) ar_trap_exit(self, true);
    pthread_mutex_lock(&g_mu);
    w->pid = ar_self(self);
    pthread_mutex_unlock(&g_mu);
    ev_add('+', w->name);
    atomic_fetch_add(&w->inits, 1);
    *state = w;
    return 0;
}

static void wk_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    wk_t *w = state;
    if (m->kind == AR_MSG_CAST && m->tag == W_STOP) {
        int code;
        memcpy(&code, m->data, sizeof code);
        ar_stop(self, AR_REASON((ar_exit_code_t)code));
    } else if (m->kind == AR_MSG_CAST && m->tag == W_FAIL) {
        AR_FAIL(self, "%s died", w->name);
    } else if (m->kind == AR_MSG_CAST && m->tag == W_UNLINK) {
        ar_pid_t p;
        memcpy(&p, m->data, sizeof p);
        ar_unlink(self, p);
        atomic_store(&w->unlinked, 1);
    } else if (m->kind == AR_MSG_EXIT) {
        atomic_store(&w->exit_code, (int)m->reason.code);
        atomic_fetch_add(&w->exits_seen, 1);
        atomic_fetch_add(&g_exits_seen, 1);
        if (w->own_text) {
            if (w->own_code == AR_ERROR) AR_FAIL(self, "%s", w->own_text);
            ar_stop(self, (ar_reason_t){w->own_code, w->own_text});
            return;
        }
        if (w->ignore_exit) return;
        ar_exit_code_t code = m->reason.code;
        if (w->exit_delay_ms) ar_sleep(self, w->exit_delay_ms);
        /* parked a millisecond at a time: the other EXITs are signals to other processes */
        while (atomic_load(&g_exits_seen) < w->obey_when_exits) ar_sleep(self, 1);
        ar_stop(self, AR_REASON(code));
    }
}

static void wk_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    wk_t *w = state;
    atomic_store(&w->why, (int)why.code);
    int k = atomic_load(&w->terms);
    if (k < 256) w->whys[k] = (int)why.code;
    ev_add('-', w->name);
    atomic_fetch_add(&w->terms, 1); /* last: a waiter on terms sees why and the trace */
}

static const ar_behaviour_t wk_beh = {
    .name = "sup_test_worker",
    .init = wk_init,
    .handle = wk_handle,
    .terminate = wk_terminate,
};

static ar_child_spec_t cs(const char *id, wk_t *w, ar_restart_t r, int shutdown_ms)
{
    return (ar_child_spec_t){
        .id = id, .behaviour = &wk_beh, .arg = w, .restart = r, .shutdown_ms = shutdown_ms};
}

static ar_sup_spec_t ss(ar_strategy_t st, int intensity, int period_ms,
                        const ar_child_spec_t *c, size_t n)
{
    return (ar_sup_spec_t){.strategy = st,
                           .intensity = intensity,
                           .period_ms = period_ms,
                           .children = c,
                           .nchildren = n};
}

static ar_pid_t sup_start(ar_node_t *node, const ar_sup_spec_t *spec)
{
    ar_pid_t sup = AR_PID_NONE;
    int rc = ar_sup_start(node, spec, NULL, &sup);
    cr_assert_eq(rc, 0, "ar_sup_start: %s", ar_err_name(rc));
    cr_assert(!ar_pid_is_none(sup));
    return sup;
}

static ar_pid_t add_child(ar_node_t *node, ar_pid_t sup, const ar_child_spec_t *c, void *arg)
{
    ar_pid_t pid = AR_PID_NONE;
    int rc = ar_sup_start_child(node, sup, c, arg, &pid);
    cr_assert_eq(rc, 0, "ar_sup_start_child: %s", ar_err_name(rc));
    cr_assert(!ar_pid_is_none(pid));
    return pid;
}

static void wk_cast(ar_node_t *node, wk_t *w, uint32_t tag, const void *d, size_t n)
{
    th_send(node, wk_pid(w), tag, d, n);
}

/* Ends the worker's current incarnation (by ar_stop with code, or a crash for
 * AR_ERROR, or an AR_KILL for AR_KILLED) and waits for its terminate. */
static void end_child(ar_node_t *node, wk_t *w, ar_exit_code_t how)
{
    int t = atomic_load(&w->terms);
    if (how == AR_ERROR) {
        wk_cast(node, w, W_FAIL, NULL, 0);
    } else if (how == AR_KILLED) {
        cr_assert_eq(ar_exit(node, wk_pid(w), AR_REASON(AR_KILL)), 0);
    } else {
        int code = (int)how;
        wk_cast(node, w, W_STOP, &code, sizeof code);
    }
    th_await(atomic_load(&w->terms) > t);
    cr_assert_eq(w->whys[t], (int)how, TH_AT "%s ended with %s", TH_ROW, w->name,
                 ar_exit_code_name((ar_exit_code_t)w->whys[t]));
}

/* Crashes the worker and waits until it was restarted. */
static void crash_restarted(ar_node_t *node, wk_t *w)
{
    int i = atomic_load(&w->inits);
    end_child(node, w, AR_ERROR);
    th_await(atomic_load(&w->inits) == i + 1);
}

/* ---- children listings ------------------------------------------------------------------ */
#define MAXK 512
static ar_child_info_t g_kids[MAXK];

static size_t kids(ar_node_t *node, ar_pid_t sup)
{
    size_t n = 0;
    int rc = ar_sup_which_children(node, sup, g_kids, MAXK, &n);
    cr_assert_eq(rc, 0, "ar_sup_which_children: %s", ar_err_name(rc));
    return n;
}

/* "a b c": the ids in which_children's order; "-" after a stopped one, "~" restarting. */
static const char *kid_ids(ar_node_t *node, ar_pid_t sup)
{
    static char buf[MAXK * 8];
    size_t n = kids(node, sup), off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && i < MAXK; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s%s", off ? " " : "",
                                g_kids[i].id,
                                g_kids[i].restarting ? "~"
                                : ar_pid_is_none(g_kids[i].pid) ? "-" : "");
    return buf;
}

static ar_child_info_t kid(ar_node_t *node, ar_pid_t sup, const char *id)
{
    size_t n = kids(node, sup);
    for (size_t i = 0; i < n; i++)
        if (strcmp(g_kids[i].id, id) == 0) return g_kids[i];
    cr_assert_fail(TH_AT "no child %s in which_children", TH_ROW, id);
    return g_kids[0];
}

static bool has_pid(ar_node_t *node, ar_pid_t sup, ar_pid_t pid)
{
    size_t n = kids(node, sup);
    for (size_t i = 0; i < n; i++)
        if (ar_pid_eq(g_kids[i].pid, pid)) return true;
    return false;
}

static bool kid_state_is(ar_node_t *node, ar_pid_t sup, const char *want)
{
    return strcmp(kid_ids(node, sup), want) == 0;
}

#define assert_kids(node, sup, want)                                                       \
    do {                                                                                   \
        const char *got_ = kid_ids((node), (sup));                                         \
        cr_assert_str_eq(got_, (want), TH_AT "which_children: \"%s\", want \"%s\"", TH_ROW,  \
                         got_, (want));                                                    \
    } while (0)

#define assert_counts(node, sup, s, a, su, w)                                              \
    do {                                                                                   \
        ar_child_counts_t c_;                                                              \
        memset(&c_, 0xff, sizeof c_);                                                      \
        int rc_ = ar_sup_count_children((node), (sup), &c_);                               \
        cr_assert_eq(rc_, 0, TH_AT "count_children: %s", TH_ROW, ar_err_name(rc_));       \
        cr_assert(c_.specs == (size_t)(s) && c_.active == (size_t)(a) &&                   \
                      c_.supervisors == (size_t)(su) && c_.workers == (size_t)(w),         \
                  TH_AT "counts {%zu,%zu,%zu,%zu}, want {%d,%d,%d,%d}", TH_ROW, c_.specs,  \
                  c_.active, c_.supervisors, c_.workers, (int)(s), (int)(a), (int)(su),    \
                  (int)(w));                                                               \
    } while (0)

#define assert_trace(mark, want)                                                           \
    do {                                                                                   \
        const char *got_ = trace_from(mark);                                               \
        cr_assert_str_eq(got_, (want), TH_AT "trace \"%s\", want \"%s\"", TH_ROW, got_,     \
                         (want));                                                          \
    } while (0)

#define assert_rc(expr, want)                                                              \
    do {                                                                                   \
        int rc_ = (expr);                                                                  \
        cr_assert_eq(rc_, (want), TH_AT "%s: %s, want %s", TH_ROW, #expr, ar_err_name(rc_), \
                     ar_err_name(want));                                                   \
    } while (0)

/* ---- the watcher ------------------------------------------------------------------------ */
enum { WT_MONITOR = 1, WT_START_SUP, WT_DIE };
#define WREC_CAP 64
typedef struct wrec {
    ar_msg_kind_t kind;
    ar_pid_t from;
    ar_exit_code_t code;
    char text[128];
} wrec_t;

typedef struct watcher {
    bool trap;
    atomic_int n;
    wrec_t r[WREC_CAP];
    ar_pid_t self;
} watcher_t;

typedef struct start_req {
    const ar_sup_spec_t *spec;
    int rc;
    ar_pid_t pid;
} start_req_t;

static int wt_init(ar_proc_t *self, void *arg, void **state)
{
    watcher_t *w = arg;
    if (w->trap) ar_trap_exit(self, true);
    w->self = ar_self(self);
    *state = w;
    return 0;
}

static void wt_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    watcher_t *w = state;
    if (m->kind == AR_MSG_CALL && m->tag == WT_MONITOR) {
        ar_pid_t p;
        memcpy(&p, m->data, sizeof p);
        ar_ref_t ref = 0;
        int rc = ar_monitor(self, p, &ref);
        ar_reply(ar_node(self), m->reply_to, &rc, sizeof rc);
    } else if (m->kind == AR_MSG_CALL && m->tag == WT_START_SUP) {
        start_req_t *req;
        memcpy(&req, m->data, sizeof req);
        ar_spawn_opts_t o = {.link = true};
        req->rc = ar_sup_start(ar_node(self), req->spec, &o, &req->pid);
        ar_reply(ar_node(self), m->reply_to, &req->rc, sizeof req->rc);
    } else if (m->kind == AR_MSG_CAST && m->tag == WT_DIE) {
        int code;
        memcpy(&code, m->data, sizeof code);
        ar_stop(self, (ar_reason_t){(ar_exit_code_t)code, "parent died"});
    } else if (m->kind == AR_MSG_DOWN || m->kind == AR_MSG_EXIT) {
        int i = atomic_load(&w->n);
        if (i >= WREC_CAP) return;
        w->r[i].kind = m->kind;
        w->r[i].from = m->from;
        w->r[i].code = m->reason.code;
        th_reason_text(w->r[i].text, sizeof w->r[i].text, m->reason.text);
        atomic_store(&w->n, i + 1);
    }
}

static const ar_behaviour_t wt_beh = {
    .name = "sup_test_watcher", .init = wt_init, .handle = wt_handle};

static watcher_t g_w, g_parent;

static void watcher_start(ar_node_t *node, watcher_t *w, bool trap)
{
    memset(w, 0, sizeof *w);
    w->trap = trap;
    th_spawn(node, &wt_beh, w);
}

static void watch(ar_node_t *node, watcher_t *w, ar_pid_t pid)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, w->self, WT_MONITOR, &pid, sizeof pid, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "watch call: %s", ar_err_name(rc));
    int mrc;
    memcpy(&mrc, r.data, sizeof mrc);
    ar_buf_free(&r);
    cr_assert_eq(mrc, 0, "ar_monitor: %s", ar_err_name(mrc));
}

static const wrec_t *find_rec(watcher_t *w, ar_msg_kind_t kind, ar_pid_t from)
{
    int n = atomic_load(&w->n);
    for (int i = 0; i < n; i++)
        if (w->r[i].kind == kind && ar_pid_eq(w->r[i].from, from)) return &w->r[i];
    return NULL;
}

static const wrec_t *await_down(watcher_t *w, ar_pid_t pid)
{
    th_await(find_rec(w, AR_MSG_DOWN, pid) != NULL);
    return find_rec(w, AR_MSG_DOWN, pid);
}

/* A started supervisor watched by g_w (which the test started). */
static ar_pid_t sup_watched(ar_node_t *node, const ar_sup_spec_t *spec)
{
    ar_pid_t sup = sup_start(node, spec);
    watch(node, &g_w, sup);
    return sup;
}

static void assert_sup_ended(watcher_t *w, ar_pid_t sup, ar_exit_code_t code)
{
    const wrec_t *d = await_down(w, sup);
    cr_assert_eq(d->code, code, TH_AT "supervisor ended with %s (%s), want %s", TH_ROW,
                 ar_exit_code_name(d->code), d->text, ar_exit_code_name(code));
}

static ar_node_t *node_up(void)
{
    ar_node_t *node = th_node(2);
    watcher_start(node, &g_w, false);
    return node;
}

/* =========================================================================================
 * Start
 * ====================================================================================== */
Test(supervisor, sup_start_normal, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 2, 3600000, NULL, 0);
    ar_pid_t sup = sup_watched(node, &spec);
    ar_proc_info_t info;
    cr_assert_eq(ar_proc_info(node, sup, &info), 0);
    cr_assert(info.trap_exit, "a supervisor traps exits");
    assert_kids(node, sup, "");
    assert_counts(node, sup, 0, 0, 0, 0);
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    th_node_stop(node);
}

Test(supervisor, sup_start_children_in_order_stop_in_reverse, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"}, c = {.name = "c"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_PERMANENT, 1000),
                            cs("c", &c, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 3);
    int m = ev_mark();
    ar_pid_t sup = sup_watched(node, &spec);
    assert_trace(m, "+a +b +c");
    assert_kids(node, sup, "a b c");
    cr_assert(ar_pid_eq(kid(node, sup, "b").pid, wk_pid(&b)));
    /* children are linked to the supervisor */
    ar_proc_info_t info;
    cr_assert_eq(ar_proc_info(node, sup, &info), 0);
    cr_assert_eq(info.links, 3, "supervisor links: %zu", info.links);
    cr_assert_eq(ar_proc_info(node, wk_pid(&a), &info), 0);
    cr_assert_eq(info.links, 1, "child links: %zu", info.links);
    cr_assert(ar_pid_eq(info.parent, sup));
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    assert_trace(m, "+a +b +c -c -b -a");
    cr_assert_eq(atomic_load(&a.why), AR_SHUTDOWN);
    cr_assert_eq(atomic_load(&c.why), AR_SHUTDOWN);
    th_node_stop(node);
}

Test(supervisor, sup_start_error_return, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    wk_t a = {.name = "a"}, b = {.name = "b"}, c = {.name = "c", .init_rc = AR_EBADMSG};
    atomic_store(&c.fail_next, 1);
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_PERMANENT, 1000),
                            cs("c", &c, AR_PERMANENT, 1000), cs("d", &a, AR_PERMANENT, 0)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 4);
    ar_pid_t sup = AR_PID_NONE;
    int m = ev_mark();
    assert_rc(ar_sup_start(node, &spec, NULL, &sup), AR_EBADMSG);
    /* the started ones stop in reverse order; the failed one never terminates */
    assert_trace(m, "+a +b !c -b -a");
    cr_assert_eq(atomic_load(&c.terms), 0);
    cr_assert_eq(atomic_load(&b.why), AR_SHUTDOWN);
    cr_assert_eq(atomic_load(&a.why), AR_SHUTDOWN);
    th_await(th_stats(node).processes == 0);
    th_node_stop(node);
}

Test(supervisor, sup_start_fail, .timeout = TH_TIMEOUT)
{
    /* a child whose init crashes: ar_spawn's AR_ENOPROC comes back as is */
    ar_node_t *node = th_node(2);
    wk_t a = {.name = "a"}, b = {.name = "b"};
    atomic_store(&b.crash_next, 1);
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 2);
    int m = ev_mark();
    assert_rc(ar_sup_start(node, &spec, NULL, NULL), AR_ENOPROC);
    assert_trace(m, "+a !b -a");
    th_await(th_stats(node).processes == 0);
    th_node_stop(node);
}

Test(supervisor, sup_start_error_from_a_process_leaves_no_link_and_no_exit,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    watcher_start(node, &g_parent, true);
    wk_t a = {.name = "a"};
    atomic_store(&a.fail_next, 1);
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 1);
    start_req_t req = {.spec = &spec};
    start_req_t *p = &req;
    ar_buf_t r = {0};
    assert_rc(ar_call(node, g_parent.self, WT_START_SUP, &p, sizeof p, &r, TH_WAIT_MS), 0);
    ar_buf_free(&r);
    assert_rc(req.rc, AR_EBADMSG);
    th_await(th_stats(node).processes == 1);
    ar_proc_info_t info;
    cr_assert_eq(ar_proc_info(node, g_parent.self, &info), 0);
    cr_assert_eq(info.links, 0);
    cr_assert_eq(info.mailbox_len, 0);
    cr_assert_eq(atomic_load(&g_parent.n), 0, "the starter got an EXIT");
    th_node_stop(node);
}

/* =========================================================================================
 * Invalid specs
 * ====================================================================================== */
Test(supervisor, child_specs, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    wk_t a = {.name = "a"}, b = {.name = "b"};
    int m = ev_mark();
    /* faulty specs at start: nothing starts */
    ar_child_spec_t no_id[] = {cs("a", &a, AR_PERMANENT, 0), cs(NULL, &b, AR_PERMANENT, 0)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, no_id, 2);
    assert_rc(ar_sup_start(node, &spec, NULL, NULL), AR_EINVAL);
    ar_child_spec_t no_beh[] = {cs("a", &a, AR_PERMANENT, 0), cs("b", &b, AR_PERMANENT, 0)};
    no_beh[1].behaviour = NULL;
    spec = ss(AR_ONE_FOR_ONE, 0, 0, no_beh, 2);
    assert_rc(ar_sup_start(node, &spec, NULL, NULL), AR_EINVAL);
    ar_child_spec_t dup[] = {cs("a", &a, AR_PERMANENT, 0), cs("b", &b, AR_PERMANENT, 0),
                             cs("a", &b, AR_TRANSIENT, 0)};
    spec = ss(AR_ONE_FOR_ONE, 0, 0, dup, 3);
    assert_rc(ar_sup_start(node, &spec, NULL, NULL), AR_EINVAL);
    ar_child_spec_t sig_perm[] = {cs("a", &a, AR_PERMANENT, 0)};
    sig_perm[0].significant = true;
    spec = ss(AR_ONE_FOR_ONE, 0, 0, sig_perm, 1);
    spec.auto_shutdown = AR_AUTO_SHUTDOWN_ANY;
    assert_rc(ar_sup_start(node, &spec, NULL, NULL), AR_EINVAL);
    ar_child_spec_t sig_no_auto[] = {cs("a", &a, AR_TRANSIENT, 0)};
    sig_no_auto[0].significant = true;
    spec = ss(AR_ONE_FOR_ONE, 0, 0, sig_no_auto, 1);
    assert_rc(ar_sup_start(node, &spec, NULL, NULL), AR_EINVAL);
    assert_trace(m, "");
    cr_assert_eq(atomic_load(&a.attempts) + atomic_load(&b.attempts), 0);
    cr_assert_eq(th_stats(node).processes, 0);

    /* faulty specs to start_child on a running supervisor */
    spec = ss(AR_ONE_FOR_ONE, 0, 0, NULL, 0);
    ar_pid_t sup = sup_start(node, &spec);
    ar_child_spec_t bad = cs(NULL, &a, AR_PERMANENT, 0);
    assert_rc(ar_sup_start_child(node, sup, &bad, NULL, NULL), AR_EINVAL);
    bad = cs("a", &a, AR_PERMANENT, 0);
    bad.behaviour = NULL;
    assert_rc(ar_sup_start_child(node, sup, &bad, NULL, NULL), AR_EINVAL);
    assert_rc(ar_sup_start_child(node, sup, NULL, NULL, NULL), AR_EINVAL);
    assert_kids(node, sup, "");
    cr_assert_eq(atomic_load(&a.attempts), 0);
    /* good specs, including explicit policies */
    ar_child_spec_t good = cs("a", &a, AR_TEMPORARY, AR_SHUTDOWN_INFINITY);
    add_child(node, sup, &good, NULL);
    good = cs("b", &b, AR_TRANSIENT, AR_SHUTDOWN_BRUTAL);
    add_child(node, sup, &good, NULL);
    assert_kids(node, sup, "a b");
    th_node_stop(node);
}

Test(supervisor, child_specs_simple_one_for_one_needs_exactly_one_template,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    wk_t a = {.name = "a"};
    ar_child_spec_t two[] = {cs("a", &a, AR_PERMANENT, 0), cs("b", &a, AR_PERMANENT, 0)};
    ar_sup_spec_t spec = ss(AR_SIMPLE_ONE_FOR_ONE, 0, 0, NULL, 0);
    assert_rc(ar_sup_start(node, &spec, NULL, NULL), AR_EINVAL);
    spec = ss(AR_SIMPLE_ONE_FOR_ONE, 0, 0, two, 2);
    assert_rc(ar_sup_start(node, &spec, NULL, NULL), AR_EINVAL);
    cr_assert_eq(atomic_load(&a.attempts), 0);
    th_node_stop(node);
}

/* =========================================================================================
 * Stop policies
 * ====================================================================================== */
/* Two trapping children a and b, each with its shutdown policy and its way of taking the
 * supervisor's shutdown: obey at once, obey after 300 ms, or ignore it. ar_sup_stop stops
 * b then a, one at a time: infinity waits as long as it takes, a timeout kills a child
 * that has not ended by then, brutal kills at once (no shutdown EXIT first). */
enum obey { OBEY, OBEY_LATE, IGNORE };
typedef struct stop_kid {
    int shutdown_ms;
    ar_child_type_t type;
    enum obey obey;
    ar_exit_code_t why; /* how it ends */
} stop_kid_t;
typedef struct stop_row {
    char name[24];
    stop_kid_t kid[2]; /* a, b */
    int min_ms;        /* the stop takes at least this long */
} stop_row_t;

ParameterizedTestParameters(supervisor, sup_stop_by_shutdown_policy)
{
    static stop_row_t rows[] = {
        /* both delays are waited for, one after the other */
        {"infinity",
         {{AR_SHUTDOWN_INFINITY, AR_SUPERVISOR, OBEY_LATE, AR_SHUTDOWN},
          {AR_SHUTDOWN_INFINITY, AR_WORKER, OBEY_LATE, AR_SHUTDOWN}},
         550},
        /* b is killed only after its shutdown time */
        {"timeout",
         {{200, AR_WORKER, OBEY, AR_SHUTDOWN}, {200, AR_WORKER, IGNORE, AR_KILLED}},
         190},
        {"brutal_kill",
         {{1000, AR_WORKER, OBEY, AR_SHUTDOWN}, {AR_SHUTDOWN_BRUTAL, AR_WORKER, OBEY, AR_KILLED}},
         0},
    };
    return TH_ROWS(stop_row_t, rows);
}

ParameterizedTest(stop_row_t *r, supervisor, sup_stop_by_shutdown_policy, .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = node_up();
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 2, 3600000, NULL, 0);
    ar_pid_t sup = sup_watched(node, &spec);
    wk_t w[2] = {{.name = "a"}, {.name = "b"}};
    for (int k = 0; k < 2; k++) {
        const stop_kid_t *sk = &r->kid[k];
        w[k].trap = true;
        w[k].exit_delay_ms = sk->obey == OBEY_LATE ? 300 : 0;
        w[k].ignore_exit = sk->obey == IGNORE;
        ar_child_spec_t c = cs(w[k].name, &w[k], AR_PERMANENT, sk->shutdown_ms);
        c.type = sk->type;
        add_child(node, sup, &c, NULL);
    }
    int m = ev_mark();
    uint64_t t0 = th_now_ns();
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    double ms = th_ms_since(t0);
    cr_assert_geq(ms, (double)r->min_ms, TH_AT "the stop took %.0f ms, want at least %d", TH_ROW,
                  ms, r->min_ms);
    assert_trace(m, "-b -a");
    for (int k = 0; k < 2; k++) {
        const stop_kid_t *sk = &r->kid[k];
        bool brutal = sk->shutdown_ms == AR_SHUTDOWN_BRUTAL;
        cr_assert_eq(atomic_load(&w[k].why), sk->why, TH_AT "%s ended with %s", TH_ROW, w[k].name,
                     ar_exit_code_name((ar_exit_code_t)atomic_load(&w[k].why)));
        cr_assert_eq(atomic_load(&w[k].exits_seen), brutal ? 0 : 1,
                     TH_AT "%s saw %d shutdown EXITs", TH_ROW, w[k].name,
                     atomic_load(&w[k].exits_seen));
        if (!brutal)
            cr_assert_eq(atomic_load(&w[k].exit_code), AR_SHUTDOWN,
                         TH_AT "%s's EXIT carried %s", TH_ROW, w[k].name,
                         ar_exit_code_name((ar_exit_code_t)atomic_load(&w[k].exit_code)));
    }
    th_node_stop(node);
}

Test(supervisor, simple_one_for_one_shutdown, .timeout = TH_TIMEOUT)
{
    /* children of a simple_one_for_one stop in parallel under one timer: s1 and s2 obey
     * only once all three have their shutdown EXIT (stopped one after the other, s1 would
     * wait for ever and be killed), s3 ignores it and is killed when the time is up */
    ar_node_t *node = node_up();
    wk_t tmpl = {.name = "t"};
    ar_child_spec_t t = cs("child", &tmpl, AR_PERMANENT, 2000);
    ar_sup_spec_t spec = ss(AR_SIMPLE_ONE_FOR_ONE, 2, 3600000, &t, 1);
    ar_pid_t sup = sup_watched(node, &spec);
    wk_t s1 = {.name = "s1", .trap = true, .obey_when_exits = 3};
    wk_t s2 = {.name = "s2", .trap = true, .obey_when_exits = 3};
    wk_t s3 = {.name = "s3", .trap = true, .ignore_exit = true};
    add_child(node, sup, NULL, &s1);
    add_child(node, sup, NULL, &s2);
    add_child(node, sup, NULL, &s3);
    uint64_t t0 = th_now_ns();
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    double ms = th_ms_since(t0);
    cr_assert_geq(ms, 1900.0, "stop took %.0f ms: s3 must be given its 2000 ms", ms);
    cr_assert_eq(atomic_load(&s1.why), AR_SHUTDOWN, "s1 ended with %s: not stopped in parallel",
                 ar_exit_code_name((ar_exit_code_t)atomic_load(&s1.why)));
    cr_assert_eq(atomic_load(&s2.why), AR_SHUTDOWN, "s2 ended with %s: not stopped in parallel",
                 ar_exit_code_name((ar_exit_code_t)atomic_load(&s2.why)));
    cr_assert_eq(atomic_load(&s3.why), AR_KILLED);
    cr_assert_eq(atomic_load(&tmpl.attempts), 0, "the template's own arg is never used");
    th_node_stop(node);
}

/* A child that ends by itself while the supervisor stops it keeps its own reason: a
 * monitor on it sees that reason (not AR_SHUTDOWN or AR_KILLED), and the supervisor goes on
 * as it would have: terminate_child leaves it stopped (a permanent child, not restarted),
 * ar_sup_stop ends the supervisor, a one_for_all restart starts it again once (intensity 1
 * is not exceeded). The child traps exits and, on the supervisor's shutdown EXIT, ends
 * with its own reason: a crash, or a normal end with its own text. */
typedef enum { BY_TERMINATE_CHILD, BY_SUP_STOP, BY_GROUP_RESTART } stop_by_t;
typedef struct own_row {
    char name[40];
    stop_by_t by;
    int shutdown_ms;
    ar_exit_code_t own; /* AR_ERROR: AR_FAIL("own reason"); AR_NORMAL: "own normal" */
} own_row_t;

ParameterizedTestParameters(supervisor, child_ending_by_itself_during_shutdown_keeps_its_reason)
{
    static own_row_t rows[] = {
        {"terminate_child_own_error", BY_TERMINATE_CHILD, 5000, AR_ERROR},
        {"terminate_child_own_normal", BY_TERMINATE_CHILD, AR_SHUTDOWN_INFINITY, AR_NORMAL},
        {"sup_stop_own_error", BY_SUP_STOP, AR_SHUTDOWN_INFINITY, AR_ERROR},
        {"sup_stop_own_normal", BY_SUP_STOP, 5000, AR_NORMAL},
        {"group_restart_own_error", BY_GROUP_RESTART, 5000, AR_ERROR},
        {"group_restart_own_normal", BY_GROUP_RESTART, AR_SHUTDOWN_INFINITY, AR_NORMAL},
    };
    return TH_ROWS(own_row_t, rows);
}

ParameterizedTest(own_row_t *r, supervisor, child_ending_by_itself_during_shutdown_keeps_its_reason,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = node_up();
    const char *text = r->own == AR_ERROR ? "own reason" : "own normal";
    wk_t f = {.name = "f"};
    wk_t o = {.name = "o", .trap = true, .own_code = r->own, .own_text = text};
    ar_child_spec_t ch[] = {cs("first", &f, AR_PERMANENT, 1000),
                            cs("own", &o, AR_PERMANENT, r->shutdown_ms)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ALL, 1, 3600000, ch, 2);
    ar_pid_t sup = sup_watched(node, &spec);
    ar_pid_t own = wk_pid(&o);
    watch(node, &g_w, own);
    int m = ev_mark();
    if (r->by == BY_TERMINATE_CHILD) {
        assert_rc(ar_sup_terminate_child(node, sup, "own", AR_PID_NONE), 0);
    } else if (r->by == BY_SUP_STOP) {
        assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
        assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    } else {
        end_child(node, &f, AR_ERROR);
        th_await(atomic_load(&f.inits) == 2 && atomic_load(&o.inits) == 2);
    }
    const wrec_t *d = await_down(&g_w, own);
    cr_assert_eq(d->code, r->own, TH_AT "the child's DOWN says %s (%s), want its own %s", TH_ROW,
                 ar_exit_code_name(d->code), d->text, ar_exit_code_name(r->own));
    cr_assert_str_eq(d->text, text, TH_AT "the child's DOWN text \"%s\"", TH_ROW, d->text);
    cr_assert_eq(o.whys[0], (int)r->own, TH_AT "the child's terminate saw %s", TH_ROW,
                 ar_exit_code_name((ar_exit_code_t)o.whys[0]));
    cr_assert_eq(atomic_load(&o.exits_seen), 1, TH_AT "the child saw %d shutdown EXITs", TH_ROW,
                 atomic_load(&o.exits_seen));
    cr_assert_eq(atomic_load(&o.exit_code), AR_SHUTDOWN, TH_AT "the shutdown EXIT carried %s",
                 TH_ROW, ar_exit_code_name((ar_exit_code_t)atomic_load(&o.exit_code)));
    if (r->by == BY_TERMINATE_CHILD) {
        assert_kids(node, sup, "first own-");
        assert_trace(m, "-o");
    } else if (r->by == BY_SUP_STOP) {
        assert_trace(m, "-o -f");
        cr_assert_eq(atomic_load(&f.why), AR_SHUTDOWN);
    } else {
        assert_trace(m, "-f -o +f +o");
        assert_kids(node, sup, "first own");
        cr_assert(ar_pid_eq(kid(node, sup, "own").pid, wk_pid(&o)), TH_AT "own's pid", TH_ROW);
    }
    if (r->by != BY_SUP_STOP) {
        cr_assert(th_proc_alive(node, sup), TH_AT "the supervisor ended", TH_ROW);
        cr_assert(find_rec(&g_w, AR_MSG_DOWN, sup) == NULL, TH_AT "the supervisor ended",
                  TH_ROW);
    }
    th_node_stop(node);
}

/* =========================================================================================
 * Child administration
 * ====================================================================================== */
Test(supervisor, child_adm, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    wk_t a = {.name = "a"};
    ar_child_spec_t child = cs("child1", &a, AR_PERMANENT, 1000);
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 2, 3600000, &child, 1);
    ar_pid_t sup = sup_start(node, &spec);
    ar_pid_t cpid = wk_pid(&a);
    assert_kids(node, sup, "child1");
    cr_assert(ar_pid_eq(kid(node, sup, "child1").pid, cpid));
    assert_counts(node, sup, 1, 1, 0, 1);

    /* start of an already running child: AR_EEXIST and its pid */
    ar_pid_t got = AR_PID_NONE;
    assert_rc(ar_sup_start_child(node, sup, &child, NULL, &got), AR_EEXIST);
    cr_assert(ar_pid_eq(got, cpid), "AR_EEXIST hands back the running pid");

    /* termination */
    assert_rc(ar_sup_terminate_child(node, sup, "hej", AR_PID_NONE), AR_ENOENT);
    assert_rc(ar_sup_terminate_child(node, sup, "child1", AR_PID_NONE), 0);
    cr_assert_eq(atomic_load(&a.terms), 1, "terminate_child returns after the child ended");
    cr_assert_eq(atomic_load(&a.why), AR_SHUTDOWN);
    cr_assert(!th_proc_alive(node, cpid));
    assert_kids(node, sup, "child1-");
    assert_counts(node, sup, 1, 0, 0, 1);
    assert_rc(ar_sup_terminate_child(node, sup, "child1", AR_PID_NONE), 0);

    /* start of a kept but stopped child */
    assert_rc(ar_sup_start_child(node, sup, &child, NULL, NULL), AR_EALREADY);

    /* restart */
    ar_pid_t cpid2 = AR_PID_NONE;
    assert_rc(ar_sup_restart_child(node, sup, "child1", &cpid2), 0);
    cr_assert(!ar_pid_is_none(cpid2) && !ar_pid_eq(cpid2, cpid));
    cr_assert(ar_pid_eq(cpid2, wk_pid(&a)));
    assert_kids(node, sup, "child1");
    cr_assert(ar_pid_eq(kid(node, sup, "child1").pid, cpid2));
    assert_counts(node, sup, 1, 1, 0, 1);
    assert_rc(ar_sup_restart_child(node, sup, "child1", NULL), AR_EBUSY);
    assert_rc(ar_sup_restart_child(node, sup, "child2", NULL), AR_ENOENT);

    /* deletion */
    assert_rc(ar_sup_delete_child(node, sup, "child1"), AR_EBUSY);
    assert_rc(ar_sup_delete_child(node, sup, "hej"), AR_ENOENT);
    assert_rc(ar_sup_terminate_child(node, sup, "child1", AR_PID_NONE), 0);
    assert_rc(ar_sup_delete_child(node, sup, "child1"), 0);
    assert_rc(ar_sup_restart_child(node, sup, "child1", NULL), AR_ENOENT);
    assert_rc(ar_sup_delete_child(node, sup, "child1"), AR_ENOENT);
    assert_kids(node, sup, "");
    assert_counts(node, sup, 0, 0, 0, 0);

    /* start */
    ar_pid_t cpid3 = add_child(node, sup, &child, NULL);
    assert_kids(node, sup, "child1");
    cr_assert(ar_pid_eq(kid(node, sup, "child1").pid, cpid3));
    assert_counts(node, sup, 1, 1, 0, 1);
    cr_assert_eq(atomic_load(&a.inits), 3);
    th_node_stop(node);
}

Test(supervisor, child_adm_on_a_dead_supervisor_is_enoproc, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"};
    ar_child_spec_t child = cs("child1", &a, AR_PERMANENT, 1000);
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 2, 3600000, &child, 1);
    ar_pid_t sup = sup_watched(node, &spec);
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
    await_down(&g_w, sup);
    ar_child_info_t info[2];
    size_t n = 0;
    ar_child_counts_t cnt;
    assert_rc(ar_sup_start_child(node, sup, &child, NULL, NULL), AR_ENOPROC);
    assert_rc(ar_sup_terminate_child(node, sup, "child1", AR_PID_NONE), AR_ENOPROC);
    assert_rc(ar_sup_restart_child(node, sup, "child1", NULL), AR_ENOPROC);
    assert_rc(ar_sup_delete_child(node, sup, "child1"), AR_ENOPROC);
    assert_rc(ar_sup_which_children(node, sup, info, 2, &n), AR_ENOPROC);
    assert_rc(ar_sup_count_children(node, sup, &cnt), AR_ENOPROC);
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), AR_ENOPROC);
    th_node_stop(node);
}

Test(supervisor, child_adm_simple, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    wk_t tmpl = {.name = "t"};
    ar_child_spec_t t = cs("child", &tmpl, AR_PERMANENT, 1000);
    ar_sup_spec_t spec = ss(AR_SIMPLE_ONE_FOR_ONE, 2, 3600000, &t, 1);
    ar_pid_t sup = sup_start(node, &spec);
    /* all children are added dynamically */
    assert_kids(node, sup, "");
    assert_counts(node, sup, 1, 0, 0, 0);

    wk_t s1 = {.name = "s1"}, s2 = {.name = "s2"};
    ar_pid_t p1 = add_child(node, sup, NULL, &s1);
    cr_assert(ar_pid_eq(p1, wk_pid(&s1)), "the child's init got the start_child arg");
    assert_kids(node, sup, "child");
    cr_assert(ar_pid_eq(g_kids[0].pid, p1));
    assert_counts(node, sup, 1, 1, 0, 1);
    ar_pid_t p2 = add_child(node, sup, NULL, &s2);
    assert_kids(node, sup, "child child");
    cr_assert(has_pid(node, sup, p1) && has_pid(node, sup, p2));
    assert_counts(node, sup, 1, 2, 0, 2);

    /* termination: by pid only */
    assert_rc(ar_sup_terminate_child(node, sup, "child1", AR_PID_NONE), AR_ENOTSUP);
    assert_counts(node, sup, 1, 2, 0, 2);
    assert_rc(ar_sup_terminate_child(node, sup, NULL, p1), 0);
    cr_assert_eq(atomic_load(&s1.terms), 1);
    cr_assert_eq(atomic_load(&s1.why), AR_SHUTDOWN);
    cr_assert(!th_proc_alive(node, p1));
    assert_kids(node, sup, "child");
    cr_assert(ar_pid_eq(g_kids[0].pid, p2));
    assert_counts(node, sup, 1, 1, 0, 1);
    /* terminating a child that is already gone is fine */
    assert_rc(ar_sup_terminate_child(node, sup, NULL, p1), 0);
    assert_counts(node, sup, 1, 1, 0, 1);
    /* a live process that is not its child is not found, and left alone */
    ar_pid_t other = th_spawn(node, &th_echo, NULL);
    assert_rc(ar_sup_terminate_child(node, sup, NULL, other), AR_ENOENT);
    cr_assert(th_proc_alive(node, other));

    /* id-based calls */
    assert_rc(ar_sup_restart_child(node, sup, "child1", NULL), AR_ENOTSUP);
    assert_rc(ar_sup_delete_child(node, sup, "child1"), AR_ENOTSUP);
    assert_rc(ar_sup_restart_child(node, sup, "child", NULL), AR_ENOTSUP);
    assert_rc(ar_sup_delete_child(node, sup, "child"), AR_ENOTSUP);
    assert_counts(node, sup, 1, 1, 0, 1);
    th_node_stop(node);
}

Test(supervisor, child_unlink, .timeout = TH_TIMEOUT)
{
    /* a child that unlinked itself is still stopped (the supervisor monitors it) */
    ar_node_t *node = th_node(2);
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 2, 3600000, NULL, 0);
    ar_pid_t sup = sup_start(node, &spec);
    wk_t a = {.name = "a"};
    ar_child_spec_t c = cs("naughty_child", &a, AR_PERMANENT, 1000);
    add_child(node, sup, &c, NULL);
    wk_cast(node, &a, W_UNLINK, &sup, sizeof sup);
    th_await(atomic_load(&a.unlinked) == 1);
    assert_rc(ar_sup_terminate_child(node, sup, "naughty_child", AR_PID_NONE), 0);
    cr_assert_eq(atomic_load(&a.terms), 1);
    cr_assert_eq(atomic_load(&a.why), AR_SHUTDOWN);
    assert_kids(node, sup, "naughty_child-");
    th_node_stop(node);
}

/* =========================================================================================
 * Restart types by how the child ends
 * ====================================================================================== */
/* One one_for_one supervisor with one child of the row's restart type; the child ends as
 * the row says and is restarted (new pid), kept stopped, or dropped. */
enum outcome { RESTARTED, KEPT, DROPPED };
typedef struct restart_row {
    char name[32];
    ar_restart_t restart;
    ar_exit_code_t how; /* as end_child: AR_ERROR a crash, AR_KILLED a kill, else ar_stop */
    enum outcome want;
} restart_row_t;

ParameterizedTestParameters(supervisor, restart_type_by_how_the_child_ends)
{
    static restart_row_t rows[] = {
        {"permanent_normal", AR_PERMANENT, AR_NORMAL, RESTARTED},
        {"permanent_shutdown", AR_PERMANENT, AR_SHUTDOWN, RESTARTED},
        {"permanent_abnormal", AR_PERMANENT, AR_ERROR, RESTARTED},
        {"permanent_killed", AR_PERMANENT, AR_KILLED, RESTARTED},
        {"transient_normal", AR_TRANSIENT, AR_NORMAL, KEPT},
        {"transient_shutdown", AR_TRANSIENT, AR_SHUTDOWN, KEPT},
        {"transient_abnormal", AR_TRANSIENT, AR_ERROR, RESTARTED},
        {"transient_killed", AR_TRANSIENT, AR_KILLED, RESTARTED},
        {"temporary_normal", AR_TEMPORARY, AR_NORMAL, DROPPED},
        {"temporary_shutdown", AR_TEMPORARY, AR_SHUTDOWN, DROPPED},
        {"temporary_abnormal", AR_TEMPORARY, AR_ERROR, DROPPED},
        {"temporary_killed", AR_TEMPORARY, AR_KILLED, DROPPED},
    };
    return TH_ROWS(restart_row_t, rows);
}

ParameterizedTest(restart_row_t *r, supervisor, restart_type_by_how_the_child_ends,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = th_node(2);
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 2, 3600000, NULL, 0);
    ar_pid_t sup = sup_start(node, &spec);
    wk_t a = {.name = "a"};
    ar_child_spec_t c = cs("child1", &a, r->restart, 1000);
    ar_pid_t p1 = add_child(node, sup, &c, NULL);
    end_child(node, &a, r->how);
    if (r->want == RESTARTED) {
        th_await(atomic_load(&a.inits) == 2);
        assert_kids(node, sup, "child1");
        ar_pid_t p2 = kid(node, sup, "child1").pid;
        cr_assert(!ar_pid_eq(p2, p1) && ar_pid_eq(p2, wk_pid(&a)), TH_AT "child1 not restarted",
                  TH_ROW);
        assert_counts(node, sup, 1, 1, 0, 1);
    } else if (r->want == KEPT) {
        th_await(kid_state_is(node, sup, "child1-"));
        assert_counts(node, sup, 1, 0, 0, 1);
        assert_rc(ar_sup_start_child(node, sup, &c, NULL, NULL), AR_EALREADY);
        /* it stays kept through another end of the same kind */
        assert_rc(ar_sup_restart_child(node, sup, "child1", NULL), 0);
        end_child(node, &a, r->how);
        th_await(kid_state_is(node, sup, "child1-"));
        assert_counts(node, sup, 1, 0, 0, 1);
    } else {
        th_await(kid_state_is(node, sup, ""));
        assert_counts(node, sup, 0, 0, 0, 0);
        /* nothing kept: the same spec starts anew */
        add_child(node, sup, &c, NULL);
        end_child(node, &a, r->how);
        th_await(kid_state_is(node, sup, ""));
        assert_counts(node, sup, 0, 0, 0, 0);
    }
    cr_assert(th_proc_alive(node, sup), TH_AT "the supervisor ended", TH_ROW);
    cr_assert_eq(atomic_load(&a.inits), 2, TH_AT "%d inits", TH_ROW, atomic_load(&a.inits));
    th_node_stop(node);
}

/* =========================================================================================
 * Bystanders of a group restart
 * ====================================================================================== */
/* Children first (permanent), by (the row's restart type, maybe significant) and last
 * (permanent). first ends as the row says: one_for_all and rest_for_one both stop last
 * and by (reverse start order) and start the kept specs again in start order. A transient
 * bystander is restarted, a temporary one dropped; and a significant bystander never
 * triggers auto_shutdown: the supervisor stays up. Afterwards a restarted significant
 * bystander that ends normally does shut it down (auto_shutdown is in force). */
typedef struct bystander_row {
    char name[48];
    ar_strategy_t strategy;
    ar_restart_t restart; /* by's: AR_TRANSIENT or AR_TEMPORARY */
    bool significant;
    ar_auto_shutdown_t auto_shutdown;
    ar_exit_code_t how; /* how first ends (it is restarted either way) */
} bystander_row_t;

ParameterizedTestParameters(supervisor, bystanders_of_a_group_restart)
{
    static bystander_row_t rows[] = {
        {"temporary_one_for_all", AR_ONE_FOR_ALL, AR_TEMPORARY, false, AR_AUTO_SHUTDOWN_NEVER,
         AR_NORMAL},
        {"temporary_rest_for_one", AR_REST_FOR_ONE, AR_TEMPORARY, false,
         AR_AUTO_SHUTDOWN_NEVER, AR_NORMAL},
        {"transient_one_for_all", AR_ONE_FOR_ALL, AR_TRANSIENT, false, AR_AUTO_SHUTDOWN_NEVER,
         AR_ERROR},
        {"transient_rest_for_one", AR_REST_FOR_ONE, AR_TRANSIENT, false,
         AR_AUTO_SHUTDOWN_NEVER, AR_ERROR},
        {"significant_transient_any_one_for_all", AR_ONE_FOR_ALL, AR_TRANSIENT, true,
         AR_AUTO_SHUTDOWN_ANY, AR_ERROR},
        {"significant_transient_all_one_for_all", AR_ONE_FOR_ALL, AR_TRANSIENT, true,
         AR_AUTO_SHUTDOWN_ALL, AR_ERROR},
        {"significant_transient_any_rest_for_one", AR_REST_FOR_ONE, AR_TRANSIENT, true,
         AR_AUTO_SHUTDOWN_ANY, AR_ERROR},
        {"significant_transient_all_rest_for_one", AR_REST_FOR_ONE, AR_TRANSIENT, true,
         AR_AUTO_SHUTDOWN_ALL, AR_ERROR},
        {"significant_temporary_any_one_for_all", AR_ONE_FOR_ALL, AR_TEMPORARY, true,
         AR_AUTO_SHUTDOWN_ANY, AR_ERROR},
        {"significant_temporary_all_one_for_all", AR_ONE_FOR_ALL, AR_TEMPORARY, true,
         AR_AUTO_SHUTDOWN_ALL, AR_ERROR},
        {"significant_temporary_any_rest_for_one", AR_REST_FOR_ONE, AR_TEMPORARY, true,
         AR_AUTO_SHUTDOWN_ANY, AR_ERROR},
        {"significant_temporary_all_rest_for_one", AR_REST_FOR_ONE, AR_TEMPORARY, true,
         AR_AUTO_SHUTDOWN_ALL, AR_ERROR},
    };
    return TH_ROWS(bystander_row_t, rows);
}

ParameterizedTest(bystander_row_t *r, supervisor, bystanders_of_a_group_restart,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = node_up();
    wk_t f = {.name = "f"}, b = {.name = "b"}, l = {.name = "l"};
    ar_child_spec_t ch[] = {cs("first", &f, AR_PERMANENT, 1000), cs("by", &b, r->restart, 1000),
                            cs("last", &l, AR_PERMANENT, 1000)};
    ch[1].significant = r->significant;
    ar_sup_spec_t spec = ss(r->strategy, 2, 3600000, ch, 3);
    spec.auto_shutdown = r->auto_shutdown;
    ar_pid_t sup = sup_watched(node, &spec);
    bool restarted = r->restart == AR_TRANSIENT;
    int m = ev_mark();
    end_child(node, &f, r->how);
    th_await(atomic_load(&f.inits) == 2 && atomic_load(&l.inits) == 2);
    assert_trace(m, restarted ? "-f -l -b +f +b +l" : "-f -l -b +f +l");
    cr_assert_eq(atomic_load(&b.why), AR_SHUTDOWN, TH_AT "the bystander ended with %s", TH_ROW,
                 ar_exit_code_name((ar_exit_code_t)atomic_load(&b.why)));
    cr_assert_eq(atomic_load(&b.attempts), restarted ? 2 : 1,
                 TH_AT "the bystander was started %d times", TH_ROW, atomic_load(&b.attempts));
    assert_kids(node, sup, restarted ? "first by last" : "first last");
    cr_assert(th_proc_alive(node, sup), TH_AT "the supervisor ended", TH_ROW);
    cr_assert_eq(atomic_load(&g_w.n), 0, TH_AT "the supervisor ended (%s)", TH_ROW,
                 ar_exit_code_name(g_w.r[0].code));
    if (restarted) {
        end_child(node, &b, AR_NORMAL);
        if (r->significant) {
            assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
        } else {
            th_await(kid_state_is(node, sup, "first by- last"));
            cr_assert(th_proc_alive(node, sup), TH_AT "the supervisor ended", TH_ROW);
        }
    }
    th_node_stop(node);
}

/* OTP's do_not_save_child_specs_for_temporary_children, for each strategy and each way a
 * child can end (killed, normal, crash, terminate_child). */
static void end_by(ar_node_t *node, ar_pid_t sup, const char *id, wk_t *w, int how)
{
    if (how < 0) {
        assert_rc(ar_sup_terminate_child(node, sup, id, AR_PID_NONE), 0);
    } else {
        end_child(node, w, (ar_exit_code_t)how);
    }
}

Test(supervisor, do_not_save_child_specs_for_temporary_children, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    const ar_strategy_t sts[] = {AR_ONE_FOR_ALL, AR_ONE_FOR_ONE, AR_REST_FOR_ONE};
    const int hows[] = {AR_KILLED, AR_NORMAL, AR_ERROR, -1 /* terminate_child */};
    for (size_t i = 0; i < 3; i++) {
        for (size_t j = 0; j < 4; j++) {
            int how = hows[j];
            ar_sup_spec_t spec = ss(sts[i], 2, 3600000, NULL, 0);
            ar_pid_t sup = sup_start(node, &spec);
            wk_t p = {.name = "p"}, t = {.name = "t"}, tmp = {.name = "tmp"};
            ar_child_spec_t perm = cs("child1", &p, AR_PERMANENT, 1000);
            ar_child_spec_t tran = cs("child2", &t, AR_TRANSIENT, 1000);
            ar_child_spec_t temp = cs("child3", &tmp, AR_TEMPORARY, 1000);

            /* permanent: restarted unless terminated through the API */
            add_child(node, sup, &perm, NULL);
            end_by(node, sup, "child1", &p, how);
            if (how < 0) {
                assert_rc(ar_sup_start_child(node, sup, &perm, NULL, NULL), AR_EALREADY);
                assert_rc(ar_sup_restart_child(node, sup, "child1", NULL), 0);
            } else {
                th_await(atomic_load(&p.inits) == 2);
                assert_rc(ar_sup_start_child(node, sup, &perm, NULL, NULL), AR_EEXIST);
            }

            /* transient: kept after normal or API; restarted after kill or crash */
            add_child(node, sup, &tran, NULL);
            end_by(node, sup, "child2", &t, how);
            if (how < 0 || how == AR_NORMAL) {
                th_await(strstr(kid_ids(node, sup), "child2-") != NULL);
                assert_rc(ar_sup_start_child(node, sup, &tran, NULL, NULL), AR_EALREADY);
                assert_rc(ar_sup_restart_child(node, sup, "child2", NULL), 0);
            } else {
                th_await(atomic_load(&t.inits) == 2);
                assert_rc(ar_sup_start_child(node, sup, &tran, NULL, NULL), AR_EEXIST);
            }

            /* temporary: nothing kept */
            add_child(node, sup, &temp, NULL);
            end_by(node, sup, "child3", &tmp, how);
            th_await(strstr(kid_ids(node, sup), "child3") == NULL);
            add_child(node, sup, &temp, NULL);

            cr_assert_str_eq(kid_ids(node, sup), "child1 child2 child3", "strategy %zu how %d",
                             i, how);
            assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
            th_await(!th_proc_alive(node, sup));
        }
    }
    th_node_stop(node);
}

/* =========================================================================================
 * Strategies
 * ====================================================================================== */
/* Children a, b (and c) of one strategy, intensity 2: three crashes, one per step. Each
 * of the first two steps restarts what the strategy says in its exact stop/start order;
 * the third is one restart too many, so the supervisor stops the rest in reverse start
 * order and ends with AR_SHUTDOWN. A child absent from a step's trace keeps its pid, one
 * present gets a new one and the old process is gone. simple_one_for_one children (of
 * one template, its id "child") stop in parallel, so that row has only two. */
typedef struct strategy_row {
    char name[24];
    ar_strategy_t strategy;
    int nkids;
    char crash[4];     /* which child crashes at each step */
    char trace[3][48]; /* the trace of each step */
} strategy_row_t;

ParameterizedTestParameters(supervisor, strategy_restart_order_and_intensity)
{
    static strategy_row_t rows[] = {
        {"one_for_one", AR_ONE_FOR_ONE, 3, "aba", {"-a +a", "-b +b", "-a -c -b"}},
        {"one_for_all", AR_ONE_FOR_ALL, 3, "aba",
         {"-a -c -b +a +b +c", "-b -c -a +a +b +c", "-a -c -b"}},
        {"rest_for_one", AR_REST_FOR_ONE, 3, "bcb", {"-b -c +b +c", "-c +c", "-b -c -a"}},
        {"simple_one_for_one", AR_SIMPLE_ONE_FOR_ONE, 2, "aba", {"-a +a", "-b +b", "-a -b"}},
    };
    return TH_ROWS(strategy_row_t, rows);
}

static int ntokens(const char *trace)
{
    int n = *trace ? 1 : 0;
    for (; *trace; trace++) n += *trace == ' ';
    return n;
}

/* Waits until the trace since mark has as many events as want, and checks it. */
static void await_trace(int mark, const char *want)
{
    th_await(ev_mark() - mark >= ntokens(want));
    assert_trace(mark, want);
}

static bool in_trace(const char *trace, char op, const char *name)
{
    char tok[8];
    snprintf(tok, sizeof tok, "%c%s", op, name);
    size_t n = strlen(tok);
    for (const char *p = strstr(trace, tok); p; p = strstr(p + 1, tok))
        if ((p == trace || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return true;
    return false;
}

ParameterizedTest(strategy_row_t *r, supervisor, strategy_restart_order_and_intensity,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = node_up();
    bool simple = r->strategy == AR_SIMPLE_ONE_FOR_ONE;
    static const char *names[] = {"a", "b", "c"};
    wk_t w[3] = {{.name = "a"}, {.name = "b"}, {.name = "c"}};
    wk_t tmpl = {.name = "t"};
    ar_child_spec_t t = cs("child", &tmpl, AR_PERMANENT, 1000);
    ar_sup_spec_t spec = simple ? ss(r->strategy, 2, 3600000, &t, 1)
                                : ss(r->strategy, 2, 3600000, NULL, 0);
    ar_pid_t sup = sup_watched(node, &spec);
    ar_pid_t pids[3];
    for (int k = 0; k < r->nkids; k++) {
        ar_child_spec_t c = cs(names[k], &w[k], AR_PERMANENT, 1000);
        pids[k] = simple ? add_child(node, sup, NULL, &w[k]) : add_child(node, sup, &c, NULL);
    }
    const char *ids = simple ? "child child" : r->nkids == 3 ? "a b c" : "a b";
    for (int step = 0; step < 3; step++) {
        wk_t *crashed = &w[r->crash[step] - 'a'];
        int m = ev_mark();
        end_child(node, crashed, AR_ERROR);
        if (step == 2) {
            assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
            assert_trace(m, r->trace[step]);
            break;
        }
        await_trace(m, r->trace[step]);
        assert_kids(node, sup, ids);
        assert_counts(node, sup, simple ? 1 : r->nkids, r->nkids, 0, r->nkids);
        for (int k = 0; k < r->nkids; k++) {
            bool restarted = in_trace(r->trace[step], '+', names[k]);
            ar_pid_t now = wk_pid(&w[k]);
            cr_assert(has_pid(node, sup, now), TH_AT "step %d: %s's pid is not listed", TH_ROW,
                      step, names[k]);
            cr_assert_eq(!ar_pid_eq(now, pids[k]), restarted,
                         TH_AT "step %d: %s %s its pid", TH_ROW, step, names[k],
                         restarted ? "kept" : "changed");
            if (restarted) {
                cr_assert(!has_pid(node, sup, pids[k]) && !th_proc_alive(node, pids[k]),
                          TH_AT "step %d: the old %s is left", TH_ROW, step, names[k]);
                if (&w[k] != crashed)
                    cr_assert_eq(w[k].whys[atomic_load(&w[k].terms) - 1], AR_SHUTDOWN,
                                 TH_AT "step %d: bystander %s ended with %s", TH_ROW, step,
                                 names[k], ar_exit_code_name(w[k].whys[w[k].terms - 1]));
            }
            pids[k] = now;
        }
    }
    for (int k = 0; k < r->nkids; k++)
        if (&w[k] != &w[r->crash[2] - 'a'])
            cr_assert_eq(atomic_load(&w[k].why), AR_SHUTDOWN, TH_AT "%s ended with %s", TH_ROW,
                         names[k], ar_exit_code_name((ar_exit_code_t)atomic_load(&w[k].why)));
    th_node_stop(node);
}

/* Children a and b, intensity 4; one crashes and every restart of the failing one fails
 * from then on: each failed retry counts, so exactly 4 restart attempts fail ('!') before
 * the supervisor gives up, stops everything and ends with AR_SHUTDOWN. */
typedef struct escalation_row {
    char name[24];
    ar_strategy_t strategy;
    char crash, failing; /* the child that crashes; the one whose restarts fail */
    char trace[48];      /* the whole trace (exact) or how it begins */
    bool exact;
} escalation_row_t;

ParameterizedTestParameters(supervisor, escalation_when_restarts_keep_failing)
{
    static escalation_row_t rows[] = {
        {"one_for_one", AR_ONE_FOR_ONE, 'a', 'a', "-a !a !a !a !a -b", true},
        {"one_for_all", AR_ONE_FOR_ALL, 'a', 'b', "-a -b +a !b", false},
        {"rest_for_one", AR_REST_FOR_ONE, 'a', 'b', "-a -b +a !b", false},
        {"simple_one_for_one", AR_SIMPLE_ONE_FOR_ONE, 'a', 'a', "-a !a !a !a !a -b", true},
    };
    return TH_ROWS(escalation_row_t, rows);
}

ParameterizedTest(escalation_row_t *r, supervisor, escalation_when_restarts_keep_failing,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = node_up();
    bool simple = r->strategy == AR_SIMPLE_ONE_FOR_ONE;
    wk_t w[2] = {{.name = "a"}, {.name = "b"}};
    wk_t tmpl = {.name = "t"};
    ar_child_spec_t t = cs("child", &tmpl, AR_PERMANENT, 1000);
    ar_sup_spec_t spec = simple ? ss(r->strategy, 4, 3600000, &t, 1)
                                : ss(r->strategy, 4, 3600000, NULL, 0);
    ar_pid_t sup = sup_watched(node, &spec);
    for (int k = 0; k < 2; k++) {
        ar_child_spec_t c = cs(k ? "child2" : "child1", &w[k], AR_PERMANENT, 1000);
        if (simple) add_child(node, sup, NULL, &w[k]);
        else add_child(node, sup, &c, NULL);
    }
    wk_t *crashed = &w[r->crash - 'a'], *failing = &w[r->failing - 'a'];
    atomic_store(&failing->fail_from, 2); /* started once, every restart fails */
    int m = ev_mark();
    end_child(node, crashed, AR_ERROR);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    const char *tr = trace_from(m);
    if (r->exact)
        assert_trace(m, r->trace);
    else
        cr_assert(strncmp(tr, r->trace, strlen(r->trace)) == 0, TH_AT "trace \"%s\", want \"%s...\"",
                  TH_ROW, tr, r->trace);
    cr_assert_eq(ev_count(m, '!', failing->name), 4, TH_AT "trace \"%s\"", TH_ROW, trace_from(m));
    for (int k = 0; k < 2; k++) {
        ar_exit_code_t want = &w[k] == crashed && &w[k] == failing ? AR_ERROR : AR_SHUTDOWN;
        cr_assert_eq(atomic_load(&w[k].terms), atomic_load(&w[k].inits),
                     TH_AT "%s: %d incarnations, %d stopped", TH_ROW, w[k].name,
                     atomic_load(&w[k].inits), atomic_load(&w[k].terms));
        cr_assert_eq(atomic_load(&w[k].why), want, TH_AT "%s ended with %s", TH_ROW, w[k].name,
                     ar_exit_code_name((ar_exit_code_t)atomic_load(&w[k].why)));
    }
    th_await(th_stats(node).processes == 1);
    th_node_stop(node);
}

/* child1 crashes and restarts, but child2 fails to start once: one_for_all stops the
 * restarted child1 again and restarts the whole group, rest_for_one retries child2 only. */
typedef struct retry_row {
    char name[24];
    ar_strategy_t strategy;
    char trace[48];
    int a_inits;
} retry_row_t;

ParameterizedTestParameters(supervisor, other_child_fails_its_restart)
{
    static retry_row_t rows[] = {
        {"one_for_all", AR_ONE_FOR_ALL, "-a -b +a !b -a +a +b", 3},
        {"rest_for_one", AR_REST_FOR_ONE, "-a -b +a !b +b", 2},
    };
    return TH_ROWS(retry_row_t, rows);
}

ParameterizedTest(retry_row_t *r, supervisor, other_child_fails_its_restart,
                  .timeout = TH_TIMEOUT)
{
    th_row_begin(r->name);
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"};
    ar_child_spec_t ch[] = {cs("child1", &a, AR_PERMANENT, 1000),
                            cs("child2", &b, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(r->strategy, 3, 3600000, ch, 2);
    ar_pid_t sup = sup_watched(node, &spec);
    atomic_store(&b.fail_next, 1);
    int m = ev_mark();
    end_child(node, &a, AR_ERROR);
    await_trace(m, r->trace);
    cr_assert_eq(atomic_load(&a.inits), r->a_inits, TH_AT "child1 started %d times", TH_ROW,
                 atomic_load(&a.inits));
    assert_kids(node, sup, "child1 child2");
    cr_assert(ar_pid_eq(kid(node, sup, "child1").pid, wk_pid(&a)), TH_AT "child1's pid", TH_ROW);
    cr_assert(ar_pid_eq(kid(node, sup, "child2").pid, wk_pid(&b)), TH_AT "child2's pid", TH_ROW);
    cr_assert(th_proc_alive(node, sup), TH_AT "the supervisor ended", TH_ROW);
    th_node_stop(node);
}

/* =========================================================================================
 * Intensity and defaults
 * ====================================================================================== */
Test(supervisor, intensity_allows_exactly_n_restarts, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 3, 60000, ch, 2);
    ar_pid_t sup = sup_watched(node, &spec);
    for (int i = 0; i < 3; i++) crash_restarted(node, &a);
    cr_assert(th_proc_alive(node, sup));
    int m = ev_mark();
    end_child(node, &a, AR_ERROR);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    assert_trace(m, "-a -b");
    cr_assert_eq(atomic_load(&a.attempts), 4);
    th_node_stop(node);
}

Test(supervisor, no_restarts_gives_up_at_the_first, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, AR_NO_RESTARTS, 60000, ch, 2);
    ar_pid_t sup = sup_watched(node, &spec);
    int m = ev_mark();
    end_child(node, &b, AR_ERROR);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    assert_trace(m, "-b -a");
    cr_assert_eq(atomic_load(&b.attempts), 1);
    th_node_stop(node);
}

Test(supervisor, sup_flags_default_intensity_is_one, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 1);
    ar_pid_t sup = sup_watched(node, &spec);
    crash_restarted(node, &a);
    cr_assert(th_proc_alive(node, sup));
    end_child(node, &a, AR_ERROR);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    cr_assert_eq(atomic_load(&a.attempts), 2);
    th_node_stop(node);
}

Test(supervisor, multiple_restarts, .timeout = TH_TIMEOUT)
{
    /* intensity 1 in 200 ms: a restart every 250 ms never exceeds it */
    ar_node_t *node = node_up();
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 1, 200, NULL, 0);
    ar_pid_t sup = sup_watched(node, &spec);
    wk_t a = {.name = "a"};
    ar_child_spec_t c = cs("child1", &a, AR_PERMANENT, AR_SHUTDOWN_BRUTAL);
    add_child(node, sup, &c, NULL);
    crash_restarted(node, &a);
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = th_now_ns();
        th_await(th_ms_since(t0) > 250.0); /* the period itself must pass */
        crash_restarted(node, &a);
    }
    cr_assert(th_proc_alive(node, sup));
    assert_rc(ar_sup_terminate_child(node, sup, "child1", AR_PID_NONE), 0);
    assert_rc(ar_sup_delete_child(node, sup, "child1"), 0);
    cr_assert_eq(atomic_load(&g_w.n), 0);
    th_node_stop(node);
}

Test(supervisor, restart_child_through_the_api_does_not_count, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 1, 60000, ch, 1);
    ar_pid_t sup = sup_watched(node, &spec);
    for (int i = 0; i < 3; i++) {
        assert_rc(ar_sup_terminate_child(node, sup, "a", AR_PID_NONE), 0);
        assert_rc(ar_sup_restart_child(node, sup, "a", NULL), 0);
    }
    crash_restarted(node, &a);
    cr_assert(th_proc_alive(node, sup));
    end_child(node, &a, AR_ERROR);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    th_node_stop(node);
}

static ar_sup_spec_t g_empty_sub;

Test(supervisor, child_spec_defaults, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    /* a worker with every optional field zero: permanent, 5000 ms shutdown (so a child
     * that takes 300 ms to obey ends with its own shutdown, not killed) */
    wk_t a = {.name = "a", .trap = true, .exit_delay_ms = 300};
    g_empty_sub = ss(AR_ONE_FOR_ONE, 0, 0, NULL, 0);
    ar_child_spec_t ch[] = {{.id = "a", .behaviour = &wk_beh, .arg = &a},
                            {.id = "sub", .behaviour = &ar_supervisor, .arg = &g_empty_sub}};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 2);
    ar_pid_t sup = sup_watched(node, &spec);
    assert_kids(node, sup, "a sub");
    cr_assert_eq(g_kids[0].restart, AR_PERMANENT);
    cr_assert_eq(g_kids[0].type, AR_WORKER);
    cr_assert_eq(g_kids[1].type, AR_SUPERVISOR, "children of ar_supervisor are supervisors");
    assert_counts(node, sup, 2, 2, 1, 1);
    crash_restarted(node, &a);
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    cr_assert_eq(atomic_load(&a.why), AR_SHUTDOWN);
    th_node_stop(node);
}

/* =========================================================================================
 * Trees, listing and counting
 * ====================================================================================== */
Test(supervisor, tree, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t c1 = {.name = "c1"}, c2 = {.name = "c2"}, c3 = {.name = "c3"}, c4 = {.name = "c4"};
    atomic_store(&c3.fail_from, 2);
    ar_child_spec_t sub1_kids[] = {cs("child1", &c1, AR_PERMANENT, 1000),
                                   cs("child2", &c2, AR_PERMANENT, 1000)};
    ar_sup_spec_t sub1 = ss(AR_ONE_FOR_ONE, 4, 3600000, sub1_kids, 2);
    ar_sup_spec_t sub2 = ss(AR_ONE_FOR_ONE, 4, 3600000, NULL, 0);
    ar_child_spec_t sup1 = {.id = "supchild1", .behaviour = &ar_supervisor, .arg = &sub1,
                            .shutdown_ms = AR_SHUTDOWN_INFINITY, .type = AR_SUPERVISOR};
    ar_child_spec_t sup2 = {.id = "supchild2", .behaviour = &ar_supervisor, .arg = &sub2,
                            .shutdown_ms = AR_SHUTDOWN_INFINITY, .type = AR_SUPERVISOR};
    ar_sup_spec_t top_spec = ss(AR_ONE_FOR_ALL, 4, 3600000, NULL, 0);
    ar_pid_t top = sup_watched(node, &top_spec);
    ar_pid_t s1 = add_child(node, top, &sup1, NULL);
    ar_pid_t s2 = add_child(node, top, &sup2, NULL);
    assert_counts(node, top, 2, 2, 2, 0);
    watch(node, &g_w, s2);

    assert_kids(node, s1, "child1 child2");
    ar_pid_t p1 = wk_pid(&c1), p2 = wk_pid(&c2);
    assert_counts(node, s1, 2, 2, 0, 2);
    assert_counts(node, s2, 0, 0, 0, 0);

    /* dynamic children */
    ar_child_spec_t k3 = cs("child3", &c3, AR_PERMANENT, 1000);
    ar_child_spec_t k4 = cs("child4", &c4, AR_PERMANENT, 1000);
    add_child(node, s2, &k3, NULL);
    ar_pid_t p4 = add_child(node, s2, &k4, NULL);
    assert_counts(node, s1, 2, 2, 0, 2);
    assert_counts(node, s2, 2, 2, 0, 2);

    /* only the process that dies is restarted */
    crash_restarted(node, &c4);
    assert_kids(node, s1, "child1 child2");
    cr_assert(has_pid(node, s1, p1) && has_pid(node, s1, p2));
    assert_counts(node, s1, 2, 2, 0, 2);
    assert_kids(node, s2, "child3 child4");
    cr_assert(!has_pid(node, s2, p4));
    assert_counts(node, s2, 2, 2, 0, 2);

    /* child3 cannot restart: supchild2 gives up, the top restarts the whole tree, and
     * the dynamic children are gone */
    int m = ev_mark();
    end_child(node, &c3, AR_ERROR);
    assert_sup_ended(&g_w, s2, AR_SHUTDOWN);
    th_await(atomic_load(&c1.inits) == 2 && atomic_load(&c2.inits) == 2);
    th_await(!ar_pid_is_none(kid(node, top, "supchild2").pid) &&
             !ar_pid_eq(kid(node, top, "supchild2").pid, s2));
    /* supchild2's intensity 4: child4's restart plus 3 failed ones */
    assert_trace(m, "-c3 !c3 !c3 !c3 -c4 -c2 -c1 +c1 +c2");
    assert_kids(node, top, "supchild1 supchild2");
    ar_pid_t ns1 = kid(node, top, "supchild1").pid;
    ar_pid_t ns2 = kid(node, top, "supchild2").pid;
    cr_assert(!ar_pid_eq(ns1, s1));
    assert_counts(node, top, 2, 2, 2, 0);
    assert_kids(node, ns1, "child1 child2");
    assert_counts(node, ns1, 2, 2, 0, 2);
    assert_kids(node, ns2, "");
    assert_counts(node, ns2, 0, 0, 0, 0);
    cr_assert(th_proc_alive(node, top));
    th_node_stop(node);
}

Test(supervisor, which_children, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    wk_t a = {.name = "a"}, b = {.name = "b"}, c = {.name = "c"}, d = {.name = "d"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_TRANSIENT, 1000),
                            cs("c", &c, AR_TEMPORARY, 1000)};
    ch[2].type = AR_SUPERVISOR; /* a worker that says it is a supervisor */
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 5, 60000, ch, 3);
    ar_pid_t sup = sup_start(node, &spec);
    ar_child_spec_t cd = cs("d", &d, AR_PERMANENT, 1000);
    add_child(node, sup, &cd, NULL);
    assert_kids(node, sup, "a b c d");
    cr_assert_eq(g_kids[1].restart, AR_TRANSIENT);
    cr_assert_eq(g_kids[2].restart, AR_TEMPORARY);
    cr_assert_eq(g_kids[2].type, AR_SUPERVISOR);
    cr_assert_eq(g_kids[3].type, AR_WORKER);
    cr_assert(ar_pid_eq(g_kids[3].pid, wk_pid(&d)));
    assert_counts(node, sup, 4, 4, 1, 3);
    /* a restart keeps the place */
    crash_restarted(node, &b);
    assert_kids(node, sup, "a b c d");
    cr_assert(ar_pid_eq(g_kids[1].pid, wk_pid(&b)));
    assert_rc(ar_sup_terminate_child(node, sup, "a", AR_PID_NONE), 0);
    assert_kids(node, sup, "a- b c d");
    assert_counts(node, sup, 4, 3, 1, 3);
    /* a small buffer: filled up to cap, n is the total */
    ar_child_info_t two[2];
    size_t n = 0;
    assert_rc(ar_sup_which_children(node, sup, two, 2, &n), 0);
    cr_assert_eq(n, 4);
    cr_assert_str_eq(two[0].id, "a");
    cr_assert_str_eq(two[1].id, "b");
    cr_assert(ar_pid_is_none(two[0].pid));
    th_node_stop(node);
}

static ar_child_counts_t counts_of(ar_node_t *node, ar_pid_t sup)
{
    ar_child_counts_t c;
    int rc = ar_sup_count_children(node, sup, &c);
    cr_assert_eq(rc, 0, "count_children: %s", ar_err_name(rc));
    return c;
}

Test(supervisor, count_children, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    wk_t t = {.name = "t"};
    ar_child_spec_t tmpl = cs("child", &t, AR_TEMPORARY, 1000);
    ar_sup_spec_t spec = ss(AR_SIMPLE_ONE_FOR_ONE, 2, 3600000, &tmpl, 1);
    ar_pid_t sup = sup_start(node, &spec);
    for (int i = 0; i < 200; i++) add_child(node, sup, NULL, &t);
    cr_assert_eq(kids(node, sup), 200);
    assert_counts(node, sup, 1, 200, 0, 200);
    for (int i = 0; i < 200; i++) add_child(node, sup, NULL, &t);
    assert_counts(node, sup, 1, 400, 0, 400);
    static ar_child_info_t first[MAXK];
    size_t n = kids(node, sup);
    cr_assert_eq(n, 400);
    memcpy(first, g_kids, sizeof first);
    cr_assert_eq(kids(node, sup), 400);
    for (size_t i = 0; i < n; i++) {
        cr_assert(ar_pid_eq(first[i].pid, g_kids[i].pid), "which_children is stable");
        cr_assert_str_eq(g_kids[i].id, "child");
    }
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(ar_exit(node, first[i].pid, AR_REASON(AR_KILL)), 0);
    th_await(atomic_load(&t.terms) == 400);
    th_await(counts_of(node, sup).active == 0);
    assert_counts(node, sup, 1, 0, 0, 0);
    cr_assert_eq(kids(node, sup), 0);
    cr_assert_eq(atomic_load(&t.attempts), 400, "temporary children are not restarted");
    th_node_stop(node);
}

/* =========================================================================================
 * Hanging restart loops: API calls and shutdown are served between retries
 * ====================================================================================== */
Test(supervisor, hanging_restart_loop, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 100000, 60000, NULL, 0);
    ar_pid_t sup = sup_watched(node, &spec);
    wk_t a = {.name = "a", .fail_sleep_ms = 5};
    ar_child_spec_t c = cs("child1", &a, AR_PERMANENT, AR_SHUTDOWN_BRUTAL);
    add_child(node, sup, &c, NULL);
    atomic_store(&a.fail_from, 2);
    end_child(node, &a, AR_ERROR);
    th_await(atomic_load(&a.attempts) >= 3);
    th_await(kid_state_is(node, sup, "child1~"));
    cr_assert(ar_pid_is_none(g_kids[0].pid));
    assert_rc(ar_sup_start_child(node, sup, &c, NULL, NULL), AR_EALREADY);
    assert_rc(ar_sup_restart_child(node, sup, "child1", NULL), AR_EBUSY);
    assert_rc(ar_sup_delete_child(node, sup, "child1"), AR_EBUSY);
    assert_counts(node, sup, 1, 0, 0, 1);
    /* terminating a restarting child ends the loop */
    assert_rc(ar_sup_terminate_child(node, sup, "child1", AR_PID_NONE), 0);
    assert_kids(node, sup, "child1-");
    atomic_store(&a.fail_from, 0);
    ar_pid_t p2 = AR_PID_NONE;
    assert_rc(ar_sup_restart_child(node, sup, "child1", &p2), 0);
    cr_assert(ar_pid_eq(p2, wk_pid(&a)));
    /* again, and this time stop the supervisor while it loops */
    atomic_store(&a.fail_from, atomic_load(&a.attempts) + 1);
    end_child(node, &a, AR_ERROR);
    th_await(kid_state_is(node, sup, "child1~"));
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    th_await(th_stats(node).processes == 1);
    th_node_stop(node);
}

Test(supervisor, hanging_restart_loop_simple, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t tmpl = {.name = "t"};
    ar_child_spec_t t = cs("child", &tmpl, AR_PERMANENT, AR_SHUTDOWN_BRUTAL);
    ar_sup_spec_t spec = ss(AR_SIMPLE_ONE_FOR_ONE, 100000, 60000, &t, 1);
    ar_pid_t sup = sup_watched(node, &spec);
    wk_t s1 = {.name = "s1", .fail_sleep_ms = 5};
    add_child(node, sup, NULL, &s1);
    atomic_store(&s1.fail_from, 2);
    end_child(node, &s1, AR_ERROR);
    th_await(atomic_load(&s1.attempts) >= 3);
    th_await(kid_state_is(node, sup, "child~"));
    assert_rc(ar_sup_restart_child(node, sup, "child", NULL), AR_ENOTSUP);
    assert_rc(ar_sup_delete_child(node, sup, "child"), AR_ENOTSUP);
    assert_counts(node, sup, 1, 0, 0, 1);
    assert_rc(ar_sup_stop(node, sup, TH_WAIT_MS), 0);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    th_await(th_stats(node).processes == 1);
    th_node_stop(node);
}

/* =========================================================================================
 * Exit signals to a supervisor
 * ====================================================================================== */
Test(supervisor, killed_supervisor_children_see_killed, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 2);
    ar_pid_t sup = sup_watched(node, &spec);
    cr_assert_eq(ar_exit(node, sup, AR_REASON(AR_KILL)), 0);
    assert_sup_ended(&g_w, sup, AR_KILLED);
    th_await(atomic_load(&a.terms) == 1 && atomic_load(&b.terms) == 1);
    cr_assert_eq(atomic_load(&a.why), AR_KILLED);
    cr_assert_eq(atomic_load(&b.why), AR_KILLED);
    th_node_stop(node);
}

Test(supervisor, exit_signal_to_a_top_level_supervisor_stops_it_with_that_reason,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 2);
    ar_pid_t sup = sup_watched(node, &spec);
    int m = ev_mark();
    cr_assert_eq(ar_exit(node, sup, (ar_reason_t){AR_ERROR, "boom"}), 0);
    const wrec_t *d = await_down(&g_w, sup);
    cr_assert_eq(d->code, AR_ERROR, "ended with %s", ar_exit_code_name(d->code));
    cr_assert_str_eq(d->text, "boom");
    assert_trace(m, "-b -a");
    cr_assert_eq(atomic_load(&a.why), AR_SHUTDOWN);
    cr_assert_eq(atomic_load(&b.why), AR_SHUTDOWN);
    th_node_stop(node);
}

Test(supervisor, exit_signals_from_non_parents_are_ignored_parent_exit_stops_it,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    watcher_start(node, &g_parent, true);
    wk_t a = {.name = "a"}, b = {.name = "b"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_PERMANENT, 1000), cs("b", &b, AR_PERMANENT, 1000)};
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 2);
    start_req_t req = {.spec = &spec};
    start_req_t *p = &req;
    ar_buf_t r = {0};
    assert_rc(ar_call(node, g_parent.self, WT_START_SUP, &p, sizeof p, &r, TH_WAIT_MS), 0);
    ar_buf_free(&r);
    assert_rc(req.rc, 0);
    ar_pid_t sup = req.pid;
    watch(node, &g_w, sup);
    /* not from its parent: ignored (the listing below is queued after it) */
    cr_assert_eq(ar_exit(node, sup, (ar_reason_t){AR_ERROR, "stray"}), 0);
    assert_kids(node, sup, "a b");
    cr_assert_eq(atomic_load(&a.terms) + atomic_load(&b.terms), 0);
    cr_assert(th_proc_alive(node, sup));
    /* its parent ends: the supervisor stops its children and exits with that reason */
    int m = ev_mark();
    int code = AR_ERROR;
    th_send(node, g_parent.self, WT_DIE, &code, sizeof code);
    const wrec_t *d = await_down(&g_w, sup);
    cr_assert_eq(d->code, AR_ERROR, "ended with %s", ar_exit_code_name(d->code));
    cr_assert_str_eq(d->text, "parent died");
    assert_trace(m, "-b -a");
    cr_assert_eq(atomic_load(&a.why), AR_SHUTDOWN);
    th_node_stop(node);
}

/* =========================================================================================
 * Significant children
 * ====================================================================================== */
Test(supervisor, auto_shutdown_any_significant, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_TRANSIENT, 1000), cs("b", &b, AR_PERMANENT, 1000)};
    ch[0].significant = true;
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 2);
    spec.auto_shutdown = AR_AUTO_SHUTDOWN_ANY;
    ar_pid_t sup = sup_watched(node, &spec);
    /* a crash is restarted; a normal end shuts the supervisor down */
    crash_restarted(node, &a);
    int m = ev_mark();
    end_child(node, &a, AR_NORMAL);
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    assert_trace(m, "-a -b");
    cr_assert_eq(atomic_load(&b.why), AR_SHUTDOWN);
    th_node_stop(node);
}

Test(supervisor, auto_shutdown_all_significant, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"}, c = {.name = "c"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_TRANSIENT, 1000), cs("b", &b, AR_TEMPORARY, 1000),
                            cs("c", &c, AR_PERMANENT, 1000)};
    ch[0].significant = true;
    ch[1].significant = true;
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 3);
    spec.auto_shutdown = AR_AUTO_SHUTDOWN_ALL;
    ar_pid_t sup = sup_watched(node, &spec);
    end_child(node, &a, AR_NORMAL);
    th_await(kid_state_is(node, sup, "a- b c"));
    cr_assert(th_proc_alive(node, sup));
    int m = ev_mark();
    end_child(node, &b, AR_ERROR); /* temporary: never restarted, so it counts */
    assert_sup_ended(&g_w, sup, AR_SHUTDOWN);
    assert_trace(m, "-b -c");
    th_node_stop(node);
}

Test(supervisor, significant_child_terminated_through_the_api_does_not_shut_down,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = node_up();
    wk_t a = {.name = "a"}, b = {.name = "b"};
    ar_child_spec_t ch[] = {cs("a", &a, AR_TRANSIENT, 1000), cs("b", &b, AR_PERMANENT, 1000)};
    ch[0].significant = true;
    ar_sup_spec_t spec = ss(AR_ONE_FOR_ONE, 0, 0, ch, 2);
    spec.auto_shutdown = AR_AUTO_SHUTDOWN_ANY;
    ar_pid_t sup = sup_watched(node, &spec);
    assert_rc(ar_sup_terminate_child(node, sup, "a", AR_PID_NONE), 0);
    assert_kids(node, sup, "a- b");
    cr_assert(th_proc_alive(node, sup));
    cr_assert_eq(atomic_load(&g_w.n), 0);
    th_node_stop(node);
}
