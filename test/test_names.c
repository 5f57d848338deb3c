/* Registered names: ar_register, ar_unregister, ar_whereis, spawn's .name and the name in
 * ar_proc_info. One test per rule: a name maps to one live process (AR_EEXIST), a process
 * has at most one name (AR_EALREADY), AR_ENOPROC, AR_ENOENT and AR_EINVAL, unknown and bad
 * names look up as AR_PID_NONE, a dead owner's name is free by the time its DOWN or EXIT
 * is seen, ar_proc_info shows the name, a process may register again after unregister,
 * spawn with .name (from a process and from a foreign thread, taken, with a failing init,
 * the name seen from its own init); then churn from several threads, out-of-memory sweeps
 * in the style of test_alloc.c, and races of a registration with ar_unregister and of a
 * named spawn with ar_register.
 *
 * Processes are "holders": the test thread drives them with calls (register, unregister,
 * what is my name) and casts that end them; what their init saw is recorded in the
 * holder_t the test owns and passes as the spawn arg (static storage: a process may
 * outlive the frame that spawned it). */
#include "test_helpers.h"

#include <limits.h>
#include <sched.h>

enum {
    CMD_REGISTER = 1, /* call: ar_register(node, payload, self) -> int */
    CMD_UNREGISTER,   /* call: ar_unregister(node, payload) -> int */
    CMD_INFO_NAME,    /* call: ar_proc_info(self).name -> char[AR_NAME_MAX] */
    CMD_MONITOR_ALL,  /* call: monitor every pid of the payload -> int (0 or an error) */
    CAST_STOP,        /* ar_stop(AR_NORMAL) */
    CAST_FAIL,        /* AR_FAIL: a crash */
    CAST_HOT,         /* a watcher polls for its DOWN or EXIT */
    CMD_SPAWN,        /* call to a spawner: a spawn_req_t -> spawn_res_t */
};

enum init_mode {
    INIT_OK,
    INIT_RETURN_ENOENT, /* init returns AR_ENOENT: spawn returns it as is */
    INIT_CRASH,         /* AR_FAIL in init: spawn returns AR_ENOPROC */
};

#define INIT_FAIL_TEXT "init gives up"

/* What one process saw. */
typedef struct holder {
    enum init_mode mode;
    char reg[AR_NAME_MAX];   /* init registers this name for itself ("" for none) */
    char look[AR_NAME_MAX];  /* init looks this name up ("" for none) */
    atomic_int inits, terminates;
    ar_pid_t self;
    int init_register_rc;
    ar_pid_t init_whereis;   /* ar_whereis(look) inside init */
    int init_info_rc;        /* ar_proc_info(self) inside init */
    char init_info_name[AR_NAME_MAX];
} holder_t;

static int holder_init(ar_proc_t *self, void *arg, void **state)
{
    holder_t *h = arg;
    ar_node_t *node = ar_node(self);
    *state = h;
    h->self = ar_self(self);
    h->init_register_rc = 1; /* not tried */
    if (h->reg[0]) h->init_register_rc = ar_register(node, h->reg, h->self);
    h->init_whereis = h->look[0] ? ar_whereis(node, h->look) : AR_PID_NONE;
    ar_proc_info_t info;
    h->init_info_rc = ar_proc_info(node, h->self, &info);
    if (h->init_info_rc == 0) memcpy(h->init_info_name, info.name, AR_NAME_MAX);
    /* seq_cst: what init saw is written before the count is seen */
    atomic_fetch_add(&h->inits, 1);
    switch (h->mode) {
    case INIT_RETURN_ENOENT: return AR_ENOENT;
    case INIT_CRASH: AR_FAIL(self, INIT_FAIL_TEXT);
    default: break;
    }
    return 0;
}

static void holder_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    holder_t *h = state;
    ar_node_t *node = ar_node(self);
    (void)h;
    if (m->kind == AR_MSG_CALL && m->tag == CMD_MONITOR_ALL) {
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < m->len / sizeof(ar_pid_t); i++) {
            ar_pid_t p;
            ar_ref_t ref;
            memcpy(&p, (const char *)m->data + i * sizeof p, sizeof p);
            rc = ar_monitor(self, p, &ref);
        }
        ar_reply(node, m->reply_to, &rc, sizeof rc);
    } else if (m->kind == AR_MSG_CALL) {
        char name[AR_NAME_MAX] = "";
        if (m->len && m->len <= sizeof name) memcpy(name, m->data, m->len);
        int rc = 0;
        switch (m->tag) {
        case CMD_REGISTER: rc = ar_register(node, name, ar_self(self)); break;
        case CMD_UNREGISTER: rc = ar_unregister(node, name); break;
        case CMD_INFO_NAME: {
            ar_proc_info_t info;
            memset(&info, 0, sizeof info);
            if (ar_proc_info(node, ar_self(self), &info) != 0) strcpy(info.name, "<no info>");
            ar_reply(node, m->reply_to, info.name, sizeof info.name);
            return;
        }
        default: rc = AR_EINVAL; break;
        }
        ar_reply(node, m->reply_to, &rc, sizeof rc);
    } else if (m->kind == AR_MSG_CAST && m->tag == CAST_STOP) {
        ar_stop(self, AR_REASON(AR_NORMAL));
    } else if (m->kind == AR_MSG_CAST && m->tag == CAST_FAIL) {
        AR_FAIL(self, "asked to crash");
    }
}

static void holder_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)why;
    holder_t *h = state;
    atomic_fetch_add(&h->terminates, 1);
}

static const ar_behaviour_t holder_b = {"holder", holder_init, holder_handle, holder_terminate};

/* ---- test-thread helpers ------------------------------------------------------------- */
static ar_pid_t hold(ar_node_t *node, holder_t *h)
{
    return th_spawn(node, &holder_b, h);
}

static int spawn_named(ar_node_t *node, holder_t *h, const char *name, ar_pid_t *out)
{
    ar_spawn_opts_t o = {.name = name};
    return ar_spawn(node, &holder_b, h, &o, out);
}

static ar_pid_t hold_named(ar_node_t *node, holder_t *h, const char *name)
{
    ar_pid_t pid = AR_PID_NONE;
    int rc = spawn_named(node, h, name, &pid);
    cr_assert_eq(rc, 0, "spawn with .name \"%s\": %s", name, ar_err_name(rc));
    cr_assert(!ar_pid_is_none(pid));
    return pid;
}

/* A call to a holder that answers an int. */
static int hold_call(ar_node_t *node, ar_pid_t pid, uint32_t cmd, const char *name)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, pid, cmd, name, strlen(name) + 1, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "call %u to a holder: %s", cmd, ar_err_name(rc));
    int got;
    cr_assert_eq(r.len, sizeof got);
    memcpy(&got, r.data, sizeof got);
    ar_buf_free(&r);
    return got;
}

/* The name a holder sees for itself through ar_proc_info. */
static void hold_own_name(ar_node_t *node, ar_pid_t pid, char out[AR_NAME_MAX])
{
    ar_buf_t r = {0};
    int rc = ar_call(node, pid, CMD_INFO_NAME, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "info call: %s", ar_err_name(rc));
    cr_assert_eq(r.len, AR_NAME_MAX);
    memcpy(out, r.data, AR_NAME_MAX);
    out[AR_NAME_MAX - 1] = '\0';
    ar_buf_free(&r);
}

/* ar_proc_info's name of pid, from the test thread. */
static void info_name(ar_node_t *node, ar_pid_t pid, char out[AR_NAME_MAX])
{
    ar_proc_info_t info;
    memset(&info, 0x55, sizeof info); /* a name left unset would show */
    int rc = ar_proc_info(node, pid, &info);
    cr_assert_eq(rc, 0, "ar_proc_info: %s", ar_err_name(rc));
    cr_assert(memchr(info.name, '\0', sizeof info.name) != NULL, "info.name not terminated");
    memcpy(out, info.name, AR_NAME_MAX);
}

static void end_and_wait(ar_node_t *node, ar_pid_t pid)
{
    th_send(node, pid, CAST_STOP, NULL, 0);
    th_await(!th_proc_alive(node, pid));
}

static const char *pid_str(ar_pid_t p, char buf[AR_PID_STRLEN])
{
    if (ar_pid_format(p, buf, AR_PID_STRLEN) != 0) snprintf(buf, AR_PID_STRLEN, "<bad pid>");
    return buf;
}

/* Fails unless pid a is b, printing both. */
#define cr_assert_pid_eq(a, b)                                                           \
    do {                                                                                 \
        char pa_[AR_PID_STRLEN], pb_[AR_PID_STRLEN];                                     \
        ar_pid_t a_ = (a), b_ = (b);                                                     \
        cr_assert(ar_pid_eq(a_, b_), "%s is %s, expected %s", #a, pid_str(a_, pa_),     \
                  pid_str(b_, pb_));                                                     \
    } while (0)

/* A process that spawns holders on request, from inside its handler. */
typedef struct spawn_req {
    holder_t *h;
    char name[AR_NAME_MAX]; /* "" for no .name */
    bool link;
    long arm; /* > 0: the arm-th allocation of the spawn fails (the OOM sweep) */
} spawn_req_t;

typedef struct spawn_res {
    int rc;
    ar_pid_t pid;
    size_t links; /* the spawner's links afterwards */
    bool injected;
} spawn_res_t;

static th_alloc_t alloc;

static int spawner_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self, (void)arg;
    *state = NULL;
    return 0;
}

static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    ar_node_t *node = ar_node(self);
    if (m->kind != AR_MSG_CALL || m->tag != CMD_SPAWN || m->len != sizeof(spawn_req_t)) return;
    spawn_req_t q;
    memcpy(&q, m->data, sizeof q);
    spawn_res_t res = {.pid = AR_PID_NONE};
    ar_spawn_opts_t o = {.link = q.link, .name = q.name[0] ? q.name : NULL};
    if (q.arm > 0) th_alloc_arm(&alloc, q.arm);
    res.rc = ar_spawn(node, &holder_b, q.h, &o, &res.pid);
    if (q.arm > 0) res.injected = th_alloc_disarm(&alloc);
    ar_proc_info_t info;
    if (ar_proc_info(node, ar_self(self), &info) == 0) res.links = info.links;
    int rc;
    do rc = ar_reply(node, m->reply_to, &res, sizeof res);
    while (rc == AR_ENOMEM);
}

static const ar_behaviour_t spawner_b = {"spawner", spawner_init, spawner_handle, NULL};

static spawn_res_t spawn_via(ar_node_t *node, ar_pid_t spawner, holder_t *h, const char *name,
                             bool link, long arm)
{
    spawn_req_t q = {.h = h, .link = link, .arm = arm};
    if (name) snprintf(q.name, sizeof q.name, "%s", name);
    ar_buf_t r = {0};
    int rc = ar_call(node, spawner, CMD_SPAWN, &q, sizeof q, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "call to the spawner: %s", ar_err_name(rc));
    spawn_res_t res;
    cr_assert_eq(r.len, sizeof res);
    memcpy(&res, r.data, sizeof res);
    ar_buf_free(&r);
    return res;
}

/* ---- the basic rules ------------------------------------------------------------------ */
Test(names, register_makes_whereis_return_the_pid_from_any_thread, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t a, b;
    ar_pid_t pa = hold(node, &a), pb = hold(node, &b);
    cr_assert_eq(ar_register(node, "alpha", pa), 0, "from a foreign thread");
    cr_assert_eq(hold_call(node, pb, CMD_REGISTER, "beta"), 0, "a process naming itself");
    cr_assert_pid_eq(ar_whereis(node, "alpha"), pa);
    cr_assert_pid_eq(ar_whereis(node, "beta"), pb);
    /* and a process looks it up too */
    static holder_t c = {.look = "alpha"};
    hold(node, &c);
    cr_assert_pid_eq(c.init_whereis, pa);
    th_node_stop(node);
}

Test(names, a_taken_name_is_eexist_and_keeps_mapping_to_its_one_owner, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t owner, other[4];
    ar_pid_t po = hold(node, &owner);
    cr_assert_eq(ar_register(node, "svc", po), 0);
    for (int i = 0; i < 4; i++) {
        ar_pid_t p = hold(node, &other[i]);
        int rc = i % 2 ? hold_call(node, p, CMD_REGISTER, "svc") : ar_register(node, "svc", p);
        cr_assert_eq(rc, AR_EEXIST, "taker %d: %s", i, ar_err_name(rc));
        cr_assert_pid_eq(ar_whereis(node, "svc"), po);
        char n[AR_NAME_MAX];
        info_name(node, p, n);
        cr_assert_str_eq(n, "", "the refused process got no name");
        /* the refusal left it free to take another name */
        char mine[32];
        snprintf(mine, sizeof mine, "other%d", i);
        cr_assert_eq(ar_register(node, mine, p), 0);
    }
    char n[AR_NAME_MAX];
    info_name(node, po, n);
    cr_assert_str_eq(n, "svc");
    th_node_stop(node);
}

Test(names, a_process_has_at_most_one_name_a_second_is_ealready, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t a, b;
    ar_pid_t pa = hold(node, &a);
    cr_assert_eq(ar_register(node, "first", pa), 0);
    cr_assert_eq(ar_register(node, "second", pa), AR_EALREADY);
    cr_assert_eq(hold_call(node, pa, CMD_REGISTER, "third"), AR_EALREADY, "from itself");
    cr_assert_eq(ar_register(node, "first", pa), AR_EALREADY, "its own name again");
    cr_assert(ar_pid_is_none(ar_whereis(node, "second")));
    cr_assert(ar_pid_is_none(ar_whereis(node, "third")));
    cr_assert_pid_eq(ar_whereis(node, "first"), pa);
    /* a process spawned with .name holds that one name */
    ar_pid_t pb = hold_named(node, &b, "spawned");
    cr_assert_eq(ar_register(node, "extra", pb), AR_EALREADY);
    cr_assert(ar_pid_is_none(ar_whereis(node, "extra")));
    char n[AR_NAME_MAX];
    info_name(node, pa, n);
    cr_assert_str_eq(n, "first");
    info_name(node, pb, n);
    cr_assert_str_eq(n, "spawned");
    th_node_stop(node);
}

Test(names, register_of_a_dead_unknown_or_none_pid_is_enoproc, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t a, live;
    ar_pid_t dead = hold(node, &a);
    end_and_wait(node, dead);
    ar_pid_t pl = hold(node, &live);
    ar_pid_t remote = {pl.hi + 1, pl.lo}; /* another node's */
    const struct {
        const char *what;
        ar_pid_t pid;
    } cases[] = {{"a dead pid", dead}, {"AR_PID_NONE", AR_PID_NONE}, {"a remote pid", remote}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = ar_register(node, "ghost", cases[i].pid);
        cr_assert_eq(rc, AR_ENOPROC, "%s: %s", cases[i].what, ar_err_name(rc));
        cr_assert(ar_pid_is_none(ar_whereis(node, "ghost")), "%s: the name stays free",
                  cases[i].what);
    }
    cr_assert_eq(ar_register(node, "ghost", pl), 0, "the name was left free");
    th_node_stop(node);
}

Test(names, unregister_of_an_unknown_name_is_enoent, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    cr_assert_eq(ar_unregister(node, "never"), AR_ENOENT);
    static holder_t a, b;
    ar_pid_t pa = hold(node, &a);
    cr_assert_eq(ar_register(node, "once", pa), 0);
    cr_assert_eq(ar_unregister(node, "onc"), AR_ENOENT, "a prefix is another name");
    cr_assert_eq(ar_unregister(node, "once!"), AR_ENOENT, "an extension is another name");
    cr_assert_eq(ar_unregister(node, "once"), 0);
    cr_assert_eq(ar_unregister(node, "once"), AR_ENOENT, "twice");
    cr_assert_eq(hold_call(node, pa, CMD_UNREGISTER, "once"), AR_ENOENT, "from a process");
    /* a dead owner's name is gone: unregistering it finds nothing */
    ar_pid_t pb = hold_named(node, &b, "gone");
    end_and_wait(node, pb);
    cr_assert_eq(ar_unregister(node, "gone"), AR_ENOENT);
    th_node_stop(node);
}

Test(names, null_node_null_empty_or_overlong_name_is_einval, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t a, b, c;
    ar_pid_t pa = hold(node, &a);
    char longest[AR_NAME_MAX], overlong[AR_NAME_MAX + 1], huge[4 * AR_NAME_MAX];
    memset(longest, 'l', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0'; /* AR_NAME_MAX - 1 bytes: allowed */
    memset(overlong, 'o', sizeof overlong - 1);
    overlong[sizeof overlong - 1] = '\0'; /* AR_NAME_MAX bytes: refused */
    memset(huge, 'h', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';

    cr_assert_eq(ar_register(NULL, "x", pa), AR_EINVAL);
    cr_assert_eq(ar_register(node, NULL, pa), AR_EINVAL);
    cr_assert_eq(ar_register(node, "", pa), AR_EINVAL);
    cr_assert_eq(ar_register(node, overlong, pa), AR_EINVAL);
    cr_assert_eq(ar_register(node, huge, pa), AR_EINVAL);
    char n[AR_NAME_MAX];
    info_name(node, pa, n);
    cr_assert_str_eq(n, "", "no refused call named it");
    cr_assert_eq(ar_unregister(NULL, "x"), AR_EINVAL);
    cr_assert_eq(ar_unregister(node, NULL), AR_EINVAL);
    cr_assert_eq(ar_unregister(node, ""), AR_EINVAL);
    cr_assert_eq(ar_unregister(node, overlong), AR_EINVAL);

    /* the longest allowed name works end to end */
    cr_assert_eq(ar_register(node, longest, pa), 0);
    cr_assert_pid_eq(ar_whereis(node, longest), pa);
    info_name(node, pa, n);
    cr_assert_str_eq(n, longest);
    /* an overlong name is not its first AR_NAME_MAX - 1 bytes */
    char longer[AR_NAME_MAX + 1];
    memcpy(longer, longest, AR_NAME_MAX - 1);
    longer[AR_NAME_MAX - 1] = 'l';
    longer[AR_NAME_MAX] = '\0';
    cr_assert(ar_pid_is_none(ar_whereis(node, longer)));
    cr_assert_eq(ar_unregister(node, longer), AR_EINVAL);
    cr_assert_pid_eq(ar_whereis(node, longest), pa); /* still registered */
    cr_assert_eq(ar_unregister(node, longest), 0);

    /* spawn with a bad .name: AR_EINVAL, no process, no init */
    size_t before = th_stats(node).processes;
    ar_pid_t pid = AR_PID_NONE;
    cr_assert_eq(spawn_named(node, &b, "", &pid), AR_EINVAL);
    cr_assert_eq(spawn_named(node, &b, overlong, &pid), AR_EINVAL);
    cr_assert_eq(th_stats(node).processes, before);
    cr_assert_eq(atomic_load(&b.inits), 0);
    ar_pid_t pc = hold_named(node, &c, longest);
    cr_assert_pid_eq(ar_whereis(node, longest), pc);
    th_node_stop(node);
}

Test(names, whereis_of_an_unknown_or_bad_name_is_none, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t a;
    ar_pid_t pa = hold(node, &a);
    cr_assert(ar_pid_is_none(ar_whereis(node, "svc")), "nothing registered yet");
    cr_assert_eq(ar_register(node, "svc", pa), 0);
    char overlong[AR_NAME_MAX + 1];
    memset(overlong, 's', sizeof overlong - 1);
    overlong[sizeof overlong - 1] = '\0';
    const char *unknown[] = {"sv", "svc2", "SVC", "svc ", " svc", "cvs", "s"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        cr_assert(ar_pid_is_none(ar_whereis(node, unknown[i])), "\"%s\"", unknown[i]);
    cr_assert(ar_pid_is_none(ar_whereis(NULL, "svc")));
    cr_assert(ar_pid_is_none(ar_whereis(node, NULL)));
    cr_assert(ar_pid_is_none(ar_whereis(node, "")));
    cr_assert(ar_pid_is_none(ar_whereis(node, overlong)));
    cr_assert_pid_eq(ar_whereis(node, "svc"), pa);
    th_node_stop(node);
}

Test(names, proc_info_shows_the_name_empty_when_none_and_after_unregister,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t a, b;
    ar_pid_t pa = hold(node, &a);
    char n[AR_NAME_MAX];
    info_name(node, pa, n);
    cr_assert_str_eq(n, "", "no name yet");
    cr_assert_eq(ar_register(node, "shown", pa), 0);
    info_name(node, pa, n);
    cr_assert_str_eq(n, "shown");
    hold_own_name(node, pa, n);
    cr_assert_str_eq(n, "shown", "as the process itself sees it");
    cr_assert_eq(ar_unregister(node, "shown"), 0);
    info_name(node, pa, n);
    cr_assert_str_eq(n, "", "after unregister");
    hold_own_name(node, pa, n);
    cr_assert_str_eq(n, "");
    /* spawned with .name; unregistered by the process itself */
    ar_pid_t pb = hold_named(node, &b, "named at birth");
    info_name(node, pb, n);
    cr_assert_str_eq(n, "named at birth");
    cr_assert_eq(hold_call(node, pb, CMD_UNREGISTER, "named at birth"), 0);
    info_name(node, pb, n);
    cr_assert_str_eq(n, "");
    th_node_stop(node);
}

Test(names, a_process_can_register_again_after_unregister, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t a, b;
    ar_pid_t pa = hold(node, &a), pb = hold(node, &b);
    for (int i = 0; i < 100; i++) {
        char name[32];
        snprintf(name, sizeof name, "round%d", i % 3);
        int rc = i % 2 ? hold_call(node, pa, CMD_REGISTER, name) : ar_register(node, name, pa);
        cr_assert_eq(rc, 0, "round %d: %s", i, ar_err_name(rc));
        cr_assert_pid_eq(ar_whereis(node, name), pa);
        rc = i % 3 ? ar_unregister(node, name) : hold_call(node, pb, CMD_UNREGISTER, name);
        cr_assert_eq(rc, 0, "round %d: unregister: %s", i, ar_err_name(rc));
        cr_assert(ar_pid_is_none(ar_whereis(node, name)));
    }
    /* the name it gave up is anyone's */
    cr_assert_eq(ar_register(node, "shared", pa), 0);
    cr_assert_eq(ar_register(node, "shared", pb), AR_EEXIST);
    cr_assert_eq(ar_unregister(node, "shared"), 0);
    cr_assert_eq(ar_register(node, "shared", pb), 0);
    cr_assert_pid_eq(ar_whereis(node, "shared"), pb);
    cr_assert_eq(ar_register(node, "mine", pa), 0, "and pa takes a name anew");
    th_node_stop(node);
}

/* ---- a dead owner's name is free by the time its death is seen --------------------- */
/* A watcher monitors (or links to, trapping exits) a named target; on its DOWN (EXIT) it
 * looks the name up and tries to take it. */
typedef struct watcher {
    ar_pid_t target;
    char name[AR_NAME_MAX];
    bool link;
    ar_ref_t ref;
    int arm_rc;
    ar_msg_kind_t kind;
    ar_pid_t from;
    ar_ref_t got_ref;
    ar_pid_t whereis_seen, whereis_after;
    int register_rc;
    atomic_int seen;     /* set once the fields above are written */
    atomic_int spinning; /* a hot watcher polls its mailbox from now on */
} watcher_t;

static int watcher_init(ar_proc_t *self, void *arg, void **state)
{
    watcher_t *w = arg;
    *state = w;
    if (w->link) {
        ar_trap_exit(self, true);
        w->arm_rc = ar_link(self, w->target);
    } else {
        w->arm_rc = ar_monitor(self, w->target, &w->ref);
    }
    return 0;
}

static void watcher_saw(ar_proc_t *self, watcher_t *w, const ar_msg_t *m)
{
    ar_node_t *node = ar_node(self);
    /* first thing: nothing else may have run in between */
    w->whereis_seen = ar_whereis(node, w->name);
    w->register_rc = ar_register(node, w->name, ar_self(self));
    w->whereis_after = ar_whereis(node, w->name);
    w->kind = m->kind;
    w->from = m->from;
    w->got_ref = m->ref;
    atomic_store(&w->seen, 1);
}

static bool is_death(const ar_msg_t *m, void *ud)
{
    (void)ud;
    return m->kind == AR_MSG_DOWN || m->kind == AR_MSG_EXIT;
}

static void watcher_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    watcher_t *w = state;
    if (m->kind == AR_MSG_CAST && m->tag == CAST_STOP) ar_stop(self, AR_REASON(AR_NORMAL));
    if (m->kind == AR_MSG_CAST && m->tag == CAST_HOT) {
        /* polls for the death on its own scheduler: it sees it the moment it is queued,
         * while the ending process is still sending the others */
        atomic_store(&w->spinning, 1);
        uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
        ar_msg_t *got = NULL;
        while (ar_receive(self, is_death, NULL, 0, &got) != 0 && th_now_ns() < deadline) {
        }
        if (got) {
            watcher_saw(self, w, got);
            ar_msg_release(self, got);
        }
        return;
    }
    if (is_death(m, NULL) && !atomic_load(&w->seen)) watcher_saw(self, w, m);
}

static const ar_behaviour_t watcher_b = {"watcher", watcher_init, watcher_handle, NULL};

enum end_way { END_STOP, END_CRASH, END_KILL, END_SHUTDOWN, END_WAYS };
static const char *const end_way_name[END_WAYS] = {"ar_stop", "AR_FAIL", "ar_exit(AR_KILL)",
                                                   "ar_exit(AR_SHUTDOWN)"};

static void end_by(ar_node_t *node, ar_pid_t pid, enum end_way way)
{
    switch (way) {
    case END_STOP: th_send(node, pid, CAST_STOP, NULL, 0); break;
    case END_CRASH: th_send(node, pid, CAST_FAIL, NULL, 0); break;
    case END_KILL: cr_assert_eq(ar_exit(node, pid, AR_REASON(AR_KILL)), 0); break;
    default: cr_assert_eq(ar_exit(node, pid, AR_REASON(AR_SHUTDOWN)), 0); break;
    }
}

/* Each round a named target is watched by WATCHERS processes, so its exit sequence sends
 * that many DOWNs (EXITs), then DEMONITORs to its crowd; the first watcher polls its
 * mailbox on the other scheduler and acts the moment its DOWN is queued. None of them may find the name still mapping to the
 * target, and the first to try takes it at once (the others find it taken by a sibling). */
#define WATCHERS 4

/* A target that monitors a crowd of processes sends each a DEMONITOR as it ends, after its
 * EXITs and DOWNs: that widens the time between its death being heard of and the end of
 * its exit sequence, so a name released too late would be seen. */
#define CROWD 128
static ar_pid_t crowd[CROWD];

static void crowd_start(ar_node_t *node)
{
    for (int i = 0; i < CROWD; i++) crowd[i] = th_spawn(node, &th_echo, NULL);
}

static void crowd_watched_by(ar_node_t *node, ar_pid_t target)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, target, CMD_MONITOR_ALL, crowd, sizeof crowd, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "monitor-all call: %s", ar_err_name(rc));
    int got;
    cr_assert_eq(r.len, sizeof got);
    memcpy(&got, r.data, sizeof got);
    ar_buf_free(&r);
    cr_assert_eq(got, 0, "ar_monitor: %s", ar_err_name(got));
}

static void check_free_when_death_seen(bool link)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.spin_us = 5000; /* an idle scheduler stays awake: watchers run while DOWNs go out */
    ar_node_t *node = th_node_cfg(&cfg);
    crowd_start(node);
    enum { ROUNDS = 6 };
    static holder_t targets[END_WAYS * ROUNDS];
    static watcher_t watchers[END_WAYS * ROUNDS][WATCHERS];
    for (int i = 0; i < END_WAYS * ROUNDS; i++) {
        enum end_way way = (enum end_way)(i % END_WAYS);
        char name[32];
        snprintf(name, sizeof name, "mortal%d", i % 3); /* names get reused */
        /* half the targets are named at spawn, half register afterwards */
        ar_pid_t t;
        if (i % 2) {
            t = hold_named(node, &targets[i], name);
        } else {
            t = hold(node, &targets[i]);
            cr_assert_eq(ar_register(node, name, t), 0, "round %d", i);
        }
        ar_pid_t wp[WATCHERS];
        for (int k = 0; k < WATCHERS; k++) {
            watcher_t *w = &watchers[i][k];
            w->target = t;
            w->link = link;
            snprintf(w->name, sizeof w->name, "%s", name);
            wp[k] = th_spawn(node, &watcher_b, w);
            cr_assert_eq(w->arm_rc, 0, "round %d: %s: %s", i, link ? "link" : "monitor",
                         ar_err_name(w->arm_rc));
        }
        crowd_watched_by(node, t);
        th_send(node, wp[0], CAST_HOT, NULL, 0);
        th_await(atomic_load(&watchers[i][0].spinning));
        end_by(node, t, way);
        for (int k = 0; k < WATCHERS; k++) th_await(atomic_load(&watchers[i][k].seen));
        int winner = -1;
        for (int k = 0; k < WATCHERS; k++) {
            watcher_t *w = &watchers[i][k];
            char ps[AR_PID_STRLEN];
            cr_assert_eq(w->kind, link ? AR_MSG_EXIT : AR_MSG_DOWN, "round %d (%s)", i,
                         end_way_name[way]);
            cr_assert(ar_pid_eq(w->from, t));
            if (!link) cr_assert_eq(w->got_ref, w->ref);
            cr_assert(!ar_pid_eq(w->whereis_seen, t),
                      "round %d (%s), watcher %d: when the %s was seen, \"%s\" still mapped "
                      "to the dead %s", i, end_way_name[way], k, link ? "EXIT" : "DOWN", name,
                      pid_str(t, ps));
            if (w->register_rc == 0) {
                cr_assert_eq(winner, -1, "round %d: two watchers took \"%s\"", i, name);
                winner = k;
                cr_assert_pid_eq(w->whereis_after, wp[k]);
            } else {
                cr_assert_eq(w->register_rc, AR_EEXIST, "round %d (%s), watcher %d: taking "
                             "the name: %s", i, end_way_name[way], k,
                             ar_err_name(w->register_rc));
                cr_assert(!ar_pid_is_none(w->whereis_seen) ||
                              !ar_pid_eq(w->whereis_after, t),
                          "round %d: taken, but by whom?", i);
            }
        }
        cr_assert_neq(winner, -1, "round %d (%s): no watcher could take \"%s\" on seeing its "
                      "owner's %s", i, end_way_name[way], name, link ? "EXIT" : "DOWN");
        cr_assert_pid_eq(ar_whereis(node, name), wp[winner]);
        /* the watchers go, leaving the name for the next round */
        for (int k = 0; k < WATCHERS; k++) end_and_wait(node, wp[k]);
        cr_assert(ar_pid_is_none(ar_whereis(node, name)));
    }
    th_node_stop(node);
}

Test(names, a_dead_owners_name_is_free_when_its_down_is_seen, .timeout = TH_TIMEOUT)
{
    check_free_when_death_seen(false);
}

Test(names, a_dead_owners_name_is_free_when_its_exit_is_seen, .timeout = TH_TIMEOUT)
{
    check_free_when_death_seen(true);
}

/* From a foreign thread: once ar_proc_info calls the owner dead, its name is free. */
Test(names, a_dead_owners_name_is_free_once_proc_info_reports_it_dead, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    crowd_start(node);
    enum { ROUNDS = 200 };
    static holder_t h[ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        ar_pid_t p = hold_named(node, &h[i], "brief");
        if (i % 2) crowd_watched_by(node, p);
        end_by(node, p, (enum end_way)(i % END_WAYS));
        uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
        for (;;) {
            bool alive = th_proc_alive(node, p);
            ar_pid_t w = ar_whereis(node, "brief"); /* after the liveness check */
            if (!alive) {
                char ps[AR_PID_STRLEN];
                cr_assert(ar_pid_is_none(w), "round %d: dead to ar_proc_info, yet \"brief\" "
                          "maps to %s", i, pid_str(w, ps));
                break;
            }
            cr_assert(ar_pid_is_none(w) || ar_pid_eq(w, p), "round %d: a stranger", i);
            cr_assert(th_now_ns() < deadline, "round %d: the process never ended", i);
        }
    }
    th_node_stop(node);
}

/* ---- spawn with .name ------------------------------------------------------------------ */
Test(names, spawn_with_a_name_from_a_foreign_thread_registers_it, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t a;
    ar_pid_t pa = hold_named(node, &a, "from outside");
    cr_assert_eq(atomic_load(&a.inits), 1);
    cr_assert_pid_eq(ar_whereis(node, "from outside"), pa);
    char n[AR_NAME_MAX];
    info_name(node, pa, n);
    cr_assert_str_eq(n, "from outside");
    /* it is an ordinary name: the owner's death frees it */
    end_and_wait(node, pa);
    cr_assert(ar_pid_is_none(ar_whereis(node, "from outside")));
    th_node_stop(node);
}

Test(names, spawn_with_a_name_from_a_process_registers_it, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t sp = th_spawn(node, &spawner_b, NULL);
    static holder_t a, b;
    spawn_res_t r = spawn_via(node, sp, &a, "from inside", false, 0);
    cr_assert_eq(r.rc, 0, "%s", ar_err_name(r.rc));
    cr_assert_eq(atomic_load(&a.inits), 1);
    cr_assert_pid_eq(ar_whereis(node, "from inside"), r.pid);
    char n[AR_NAME_MAX];
    info_name(node, r.pid, n);
    cr_assert_str_eq(n, "from inside");
    /* with .link too */
    spawn_res_t r2 = spawn_via(node, sp, &b, "linked child", true, 0);
    cr_assert_eq(r2.rc, 0, "%s", ar_err_name(r2.rc));
    cr_assert_eq(r2.links, 1);
    cr_assert_pid_eq(ar_whereis(node, "linked child"), r2.pid);
    end_and_wait(node, r.pid);
    cr_assert(ar_pid_is_none(ar_whereis(node, "from inside")));
    th_node_stop(node);
}

Test(names, spawn_with_a_taken_name_is_eexist_and_leaves_no_process_and_runs_no_init,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t owner, owner2, losers[8];
    ar_pid_t po = hold(node, &owner);
    cr_assert_eq(ar_register(node, "taken", po), 0);
    ar_pid_t po2 = hold_named(node, &owner2, "taken at spawn");
    ar_pid_t sp = th_spawn(node, &spawner_b, NULL);
    const char *names[] = {"taken", "taken at spawn"};
    for (int i = 0; i < 8; i++) {
        const char *name = names[i % 2];
        size_t before = th_stats(node).processes;
        holder_t *l = &losers[i];
        int rc;
        if (i < 4) {
            ar_pid_t pid = AR_PID_NONE;
            rc = spawn_named(node, l, name, &pid);
        } else {
            spawn_res_t r = spawn_via(node, sp, l, name, i % 2 == 0, 0);
            rc = r.rc;
            cr_assert_eq(r.links, 0, "case %d: a failed linked spawn leaves no link", i);
        }
        cr_assert_eq(rc, AR_EEXIST, "case %d (%s): %s", i, i < 4 ? "foreign" : "process",
                     ar_err_name(rc));
        cr_assert_eq(th_stats(node).processes, before, "case %d: a process was left", i);
        cr_assert_eq(atomic_load(&l->inits), 0, "case %d: init ran", i);
        cr_assert_eq(atomic_load(&l->terminates), 0);
    }
    cr_assert_pid_eq(ar_whereis(node, "taken"), po);
    cr_assert_pid_eq(ar_whereis(node, "taken at spawn"), po2);
    /* the spawner got no EXIT from its failed linked children: it is still alone */
    ar_proc_info_t info;
    cr_assert_eq(ar_proc_info(node, sp, &info), 0);
    cr_assert_eq(info.links, 0);
    cr_assert_eq(info.mailbox_len, 0);
    th_node_stop(node);
}

Test(names, a_failed_init_with_a_name_leaves_the_name_free, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t sp = th_spawn(node, &spawner_b, NULL);
    static const struct {
        enum init_mode mode;
        int rc;
    } modes[] = {{INIT_RETURN_ENOENT, AR_ENOENT}, {INIT_CRASH, AR_ENOPROC}};
    static holder_t h[8], taker[8];
    int k = 0;
    for (int from_process = 0; from_process < 2; from_process++)
        for (size_t m = 0; m < 2; m++)
            for (int link = 0; link < 1 + from_process; link++, k++) {
                char name[32];
                snprintf(name, sizeof name, "doomed%d", k);
                h[k].mode = modes[m].mode;
                snprintf(h[k].look, sizeof h[k].look, "%s", name);
                size_t before = th_stats(node).processes;
                int rc;
                if (from_process) {
                    rc = spawn_via(node, sp, &h[k], name, link, 0).rc;
                } else {
                    ar_pid_t pid;
                    rc = spawn_named(node, &h[k], name, &pid);
                }
                cr_assert_eq(rc, modes[m].rc, "case %d: %s", k, ar_err_name(rc));
                cr_assert_eq(atomic_load(&h[k].inits), 1);
                cr_assert_pid_eq(h[k].init_whereis, h[k].self); /* init held the name */
                cr_assert_eq(th_stats(node).processes, before, "case %d", k);
                cr_assert(ar_pid_is_none(ar_whereis(node, name)), "case %d: \"%s\" is held "
                          "by a process whose init failed", k, name);
                /* free for others: by spawn and by register */
                ar_pid_t t = hold_named(node, &taker[k], name);
                end_and_wait(node, t);
                ar_pid_t t2 = hold(node, &taker[k]);
                cr_assert_eq(ar_register(node, name, t2), 0, "case %d", k);
            }
    th_node_stop(node);
}

Test(names, a_process_sees_its_own_name_in_its_init, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t sp = th_spawn(node, &spawner_b, NULL);
    static holder_t a = {.look = "outer"}, b = {.look = "inner"};
    static holder_t c = {.reg = "self-made", .look = "self-made"};
    ar_pid_t pa = hold_named(node, &a, "outer");
    spawn_res_t rb = spawn_via(node, sp, &b, "inner", false, 0);
    cr_assert_eq(rb.rc, 0);
    ar_pid_t pc = hold(node, &c);
    struct {
        holder_t *h;
        ar_pid_t pid;
        const char *name;
    } cases[] = {{&a, pa, "outer"}, {&b, rb.pid, "inner"}, {&c, pc, "self-made"}};
    for (size_t i = 0; i < 3; i++) {
        holder_t *h = cases[i].h;
        cr_assert_pid_eq(h->self, cases[i].pid);
        cr_assert_pid_eq(h->init_whereis, h->self);
        cr_assert_eq(h->init_info_rc, 0);
        cr_assert_str_eq(h->init_info_name, cases[i].name);
    }
    cr_assert_eq(c.init_register_rc, 0);
    th_node_stop(node);
}

/* ---- churn ------------------------------------------------------------------------------- */
/* CHURN_THREADS foreign threads spawn short-lived processes that take one of NNAMES names
 * (by .name, by registering themselves in init, or registered by the spawning thread) and
 * end (ar_stop in init, a stop cast, or a kill), while READERS threads and the processes
 * themselves look the names up. Every pid a lookup returns must be one that registered
 * that very name; at the end every name is free. */
#define NNAMES 4
#define CHURN_THREADS 4
#define READERS 2
#define CHURN_SPAWNS 1500 /* per thread */
#define OBS_CAP (1 << 16) /* per reader */

static const char *const churn_names[NNAMES] = {"c0", "c1", "c2", "c3"};

typedef struct reg_rec {
    ar_pid_t pid;
    int name;
} reg_rec_t;

static int reg_cmp(const void *a, const void *b)
{
    const reg_rec_t *x = a, *y = b;
    if (x->name != y->name) return x->name < y->name ? -1 : 1;
    return th_pid_cmp(&x->pid, &y->pid);
}

typedef struct churn_proc {
    int name;          /* index into churn_names */
    bool reg_in_init;  /* register itself in init */
    bool stop_in_init; /* end right after init */
    int reg_rc;        /* its own registration's result */
    bool named;        /* spawned with .name */
    int own_lookup_bad; /* a registered process whose own lookup was not itself */
} churn_proc_t;

static atomic_int churn_bad_own;

static int churn_init(ar_proc_t *self, void *arg, void **state)
{
    churn_proc_t *c = arg;
    ar_node_t *node = ar_node(self);
    *state = NULL; /* c belongs to the spawning thread once init returns */
    c->reg_rc = 1;
    if (c->reg_in_init) c->reg_rc = ar_register(node, churn_names[c->name], ar_self(self));
    if (c->named || c->reg_rc == 0) {
        /* nobody unregisters: while it lives, the name is its */
        if (!ar_pid_eq(ar_whereis(node, churn_names[c->name]), ar_self(self)))
            atomic_fetch_add(&churn_bad_own, 1);
    }
    if (c->stop_in_init) ar_stop(self, AR_REASON(AR_NORMAL));
    return 0;
}

static void churn_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind == AR_MSG_CAST && m->tag == CAST_STOP) ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t churn_b = {"churner", churn_init, churn_handle, NULL};

typedef struct churner {
    ar_node_t *node;
    unsigned seed;
    reg_rec_t regs[CHURN_SPAWNS];
    int nregs;
    int bad_rc, bad_what; /* the first unexpected result */
    atomic_int done;
} churner_t;

static unsigned lcg(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

static void *churner_main(void *arg)
{
    churner_t *t = arg;
    for (int i = 0; i < CHURN_SPAWNS; i++) {
        churn_proc_t c = {.name = (int)(lcg(&t->seed) % NNAMES)};
        unsigned how = lcg(&t->seed) % 4, end = lcg(&t->seed) % 3;
        c.named = how == 0 || how == 3;
        c.reg_in_init = how == 1;
        c.stop_in_init = end == 0;
        ar_spawn_opts_t o = {.name = c.named ? churn_names[c.name] : NULL};
        ar_pid_t pid = AR_PID_NONE;
        int rc = ar_spawn(t->node, &churn_b, &c, &o, &pid);
        if (rc == AR_EEXIST && c.named) continue;
        if (rc != 0) {
            if (!t->bad_what) t->bad_rc = rc, t->bad_what = 1;
            continue;
        }
        bool holds = c.named || c.reg_rc == 0;
        if (c.reg_in_init && c.reg_rc != 0 && c.reg_rc != AR_EEXIST && !t->bad_what)
            t->bad_rc = c.reg_rc, t->bad_what = 2;
        if (how == 2) { /* registered by the spawning thread */
            rc = ar_register(t->node, churn_names[c.name], pid);
            holds = rc == 0;
            /* AR_ENOPROC: it ended in init already */
            if (rc != 0 && rc != AR_EEXIST && !(rc == AR_ENOPROC && c.stop_in_init) &&
                !t->bad_what)
                t->bad_rc = rc, t->bad_what = 3;
        }
        if (holds) t->regs[t->nregs++] = (reg_rec_t){pid, c.name};
        if (end == 1) ar_send(t->node, pid, CAST_STOP, NULL, 0);
        else if (end == 2) ar_exit(t->node, pid, AR_REASON(AR_KILL));
    }
    atomic_store(&t->done, 1);
    return NULL;
}

typedef struct reader {
    ar_node_t *node;
    atomic_int *stop;
    unsigned seed;
    reg_rec_t obs[OBS_CAP];
    int nobs;
    long lookups;
} reader_t;

static void *reader_main(void *arg)
{
    reader_t *r = arg;
    ar_pid_t last[NNAMES];
    for (int k = 0; k < NNAMES; k++) last[k] = AR_PID_NONE;
    while (!atomic_load(r->stop)) {
        int k = (int)(lcg(&r->seed) % NNAMES);
        ar_pid_t p = ar_whereis(r->node, churn_names[k]);
        r->lookups++;
        if (ar_pid_is_none(p) || ar_pid_eq(p, last[k])) continue;
        last[k] = p;
        if (r->nobs < OBS_CAP) r->obs[r->nobs++] = (reg_rec_t){p, k};
    }
    return NULL;
}

Test(names, names_under_spawn_exit_churn_from_several_threads_map_only_to_their_owners,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    size_t base = th_stats(node).processes;
    static churner_t ch[CHURN_THREADS];
    static reader_t rd[READERS];
    static atomic_int stop;
    pthread_t tc[CHURN_THREADS], tr[READERS];
    for (int i = 0; i < READERS; i++) {
        rd[i].node = node;
        rd[i].stop = &stop;
        rd[i].seed = 77u + (unsigned)i;
        cr_assert_eq(pthread_create(&tr[i], NULL, reader_main, &rd[i]), 0);
    }
    for (int i = 0; i < CHURN_THREADS; i++) {
        ch[i].node = node;
        ch[i].seed = 1234u + 7u * (unsigned)i;
        cr_assert_eq(pthread_create(&tc[i], NULL, churner_main, &ch[i]), 0);
    }
    for (int i = 0; i < CHURN_THREADS; i++) th_await(atomic_load(&ch[i].done));
    for (int i = 0; i < CHURN_THREADS; i++) pthread_join(tc[i], NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < READERS; i++) pthread_join(tr[i], NULL);

    for (int i = 0; i < CHURN_THREADS; i++)
        cr_assert_eq(ch[i].bad_what, 0, "thread %d: unexpected %s (step %d)", i,
                     ar_err_name(ch[i].bad_rc), ch[i].bad_what);
    cr_assert_eq(atomic_load(&churn_bad_own), 0,
                 "%d registered processes did not find themselves under their name",
                 atomic_load(&churn_bad_own));
    /* every pid a lookup returned registered that name */
    static reg_rec_t all[CHURN_THREADS * CHURN_SPAWNS];
    size_t n = 0;
    for (int i = 0; i < CHURN_THREADS; i++)
        for (int j = 0; j < ch[i].nregs; j++) all[n++] = ch[i].regs[j];
    cr_assert_gt(n, (size_t)100, "the churn registered only %zu names", n);
    qsort(all, n, sizeof all[0], reg_cmp);
    long observed = 0;
    for (int i = 0; i < READERS; i++) {
        for (int j = 0; j < rd[i].nobs; j++) {
            reg_rec_t *o = &rd[i].obs[j];
            char ps[AR_PID_STRLEN];
            cr_assert_not_null(bsearch(o, all, n, sizeof all[0], reg_cmp),
                               "\"%s\" was seen mapping to %s, which never registered it",
                               churn_names[o->name], pid_str(o->pid, ps));
        }
        observed += rd[i].nobs;
    }
    cr_log_info("churn: %zu registrations, %ld distinct lookups seen", n, observed);
    /* all the short lives end; then every name is free */
    th_await(th_stats(node).processes == base);
    for (int k = 0; k < NNAMES; k++) {
        char ps[AR_PID_STRLEN];
        ar_pid_t w = ar_whereis(node, churn_names[k]);
        cr_assert(ar_pid_is_none(w), "\"%s\" still maps to %s after every process ended",
                  churn_names[k], pid_str(w, ps));
        cr_assert_eq(ar_unregister(node, churn_names[k]), AR_ENOENT);
    }
    static holder_t last[NNAMES];
    for (int k = 0; k < NNAMES; k++) hold_named(node, &last[k], churn_names[k]);
    th_node_stop(node);
}

/* ---- out of memory ----------------------------------------------------------------------- */
enum { MAX_N = 2000 };

Test(names, register_out_of_memory_is_enomem_and_leaves_nothing, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static holder_t a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        ar_pid_t pa = hold(node, &a), pb = hold(node, &b);
        th_alloc_arm(&alloc, n);
        int rc = ar_register(node, "scarce", pa);
        bool injected = th_alloc_disarm(&alloc);
        char name[AR_NAME_MAX];
        if (rc == 0) {
            cr_assert_pid_eq(ar_whereis(node, "scarce"), pa);
            done = !injected;
        } else {
            cr_assert_eq(rc, AR_ENOMEM, "n=%ld: ar_register returned %s", n, ar_err_name(rc));
            cr_assert(injected, "n=%ld: ENOMEM without an injected failure", n);
            failures++;
            cr_assert(ar_pid_is_none(ar_whereis(node, "scarce")), "n=%ld: the name was taken", n);
            info_name(node, pa, name);
            cr_assert_str_eq(name, "", "n=%ld", n);
            /* no half-made claim is left: it may take a name, the name is anyone's */
            cr_assert_eq(ar_register(node, "scarce", pb), 0, "n=%ld", n);
            cr_assert_eq(ar_register(node, "plenty", pa), 0, "n=%ld", n);
        }
        th_node_stop(node);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_register never succeeded within %d allocations", MAX_N);
    cr_assert_gt(failures, 0, "ar_register allocated nothing");
}

/* One spawn-with-.name attempt's verdict. */
static void check_named_spawn(ar_node_t *node, long n, int rc, ar_pid_t pid, holder_t *h,
                              size_t before)
{
    if (rc == 0) {
        cr_assert_pid_eq(ar_whereis(node, "scarce"), pid);
        cr_assert_eq(atomic_load(&h->inits), 1);
        cr_assert_eq(th_stats(node).processes, before + 1);
        return;
    }
    cr_assert_eq(rc, AR_ENOMEM, "n=%ld: ar_spawn returned %s", n, ar_err_name(rc));
    cr_assert_eq(th_stats(node).processes, before, "n=%ld: a failed spawn left a process", n);
    cr_assert_eq(atomic_load(&h->inits), 0, "n=%ld: init ran", n);
    cr_assert(ar_pid_is_none(ar_whereis(node, "scarce")), "n=%ld: the name was left taken", n);
    static holder_t again;
    memset(&again, 0, sizeof again);
    hold_named(node, &again, "scarce");
}

Test(names, spawn_with_a_name_from_main_out_of_memory_is_enomem_and_leaves_nothing,
     .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static holder_t h;
        memset(&h, 0, sizeof h);
        size_t before = th_stats(node).processes;
        ar_pid_t pid = AR_PID_NONE;
        th_alloc_arm(&alloc, n);
        int rc = spawn_named(node, &h, "scarce", &pid);
        bool injected = th_alloc_disarm(&alloc);
        check_named_spawn(node, n, rc, pid, &h, before);
        if (rc) failures++;
        done = rc == 0 && !injected;
        th_node_stop(node);
        cr_assert_eq(atomic_load(&h.terminates), atomic_load(&h.inits), "n=%ld", n);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_spawn never succeeded within %d allocations", MAX_N);
    cr_assert_gt(failures, 0, "a named spawn allocated nothing");
}

static void sweep_named_spawn_from_a_process(bool link)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static holder_t h;
        memset(&h, 0, sizeof h);
        ar_pid_t sp = th_spawn(node, &spawner_b, NULL);
        size_t before = th_stats(node).processes;
        spawn_res_t r = spawn_via(node, sp, &h, "scarce", link, n);
        check_named_spawn(node, n, r.rc, r.pid, &h, before);
        cr_assert_eq(r.links, r.rc == 0 && link ? 1u : 0u, "n=%ld: the spawner's links", n);
        if (r.rc) failures++;
        done = r.rc == 0 && !r.injected;
        th_node_stop(node);
        cr_assert_eq(atomic_load(&h.terminates), atomic_load(&h.inits), "n=%ld", n);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(r.rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_spawn never succeeded within %d allocations", MAX_N);
    cr_assert_gt(failures, 0, "a named spawn allocated nothing");
}

Test(names, spawn_with_a_name_from_a_process_out_of_memory_is_enomem_and_leaves_nothing,
     .timeout = TH_TIMEOUT)
{
    sweep_named_spawn_from_a_process(false);
}

Test(names, linked_spawn_with_a_name_out_of_memory_is_enomem_and_leaves_nothing,
     .timeout = TH_TIMEOUT)
{
    sweep_named_spawn_from_a_process(true);
}

/* ---- races ------------------------------------------------------------------------------- */
/* Each race runs until RACE_MS have passed (or a bounded number of rounds); a broken
 * interleaving usually shows within a few milliseconds, and leaves state that the checks
 * after each round see. */
#define RACE_MS 1500u
/* ar_register against ar_unregister of the same name: whatever the interleaving, once both
 * stop the table and the owner agree (the name maps to it and it shows the name, or it
 * maps to nothing and the owner has no name and may register again). */
typedef struct racer {
    ar_node_t *node;
    ar_pid_t pid;
    const char *name;
    atomic_int *stop;
    long max; /* attempts */
    long n, ok;
    int bad_rc;
} racer_t;

static void *reg_racer(void *arg)
{
    racer_t *r = arg;
    while (!atomic_load(r->stop) && r->n < r->max) {
        int rc = ar_register(r->node, r->name, r->pid);
        r->n++;
        if (rc == 0) r->ok++;
        else if (rc != AR_EALREADY && rc != AR_EEXIST && !r->bad_rc) r->bad_rc = rc;
    }
    return NULL;
}

static void *unreg_racer(void *arg)
{
    racer_t *r = arg;
    while (!atomic_load(r->stop) && r->n < r->max) {
        int rc = ar_unregister(r->node, r->name);
        r->n++;
        if (rc == 0) r->ok++;
        else if (rc != AR_ENOENT && !r->bad_rc) r->bad_rc = rc;
    }
    return NULL;
}

/* The table and the owner agree on pid's name; it can still take a name. */
static void check_agree(ar_node_t *node, ar_pid_t pid, const char *name, int round)
{
    char n[AR_NAME_MAX];
    info_name(node, pid, n);
    ar_pid_t w = ar_whereis(node, name);
    if (ar_pid_is_none(w)) {
        cr_assert_str_eq(n, "", "round %d: \"%s\" is not registered, yet its last owner "
                         "shows it as its name", round, name);
        int rc = ar_register(node, name, pid);
        cr_assert_eq(rc, 0, "round %d: \"%s\" is free, yet its last owner cannot take it "
                     "again: %s", round, name, ar_err_name(rc));
    } else {
        cr_assert_pid_eq(w, pid);
        cr_assert_str_eq(n, name, "round %d", round);
    }
    cr_assert_eq(ar_unregister(node, name), 0, "round %d", round);
    info_name(node, pid, n);
    cr_assert_str_eq(n, "", "round %d", round);
}

Test(names, register_racing_unregister_leaves_table_and_owner_agreeing, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static holder_t h;
    ar_pid_t pid = hold(node, &h);
    uint64_t end = th_now_ns() + RACE_MS * 1000000u;
    for (int round = 0; round < 1000 && th_now_ns() < end; round++) {
        static atomic_int stop;
        atomic_store(&stop, 0);
        racer_t reg = {node, pid, "contested", &stop, 200000, 0, 0, 0};
        racer_t unreg = reg;
        pthread_t a, b;
        cr_assert_eq(pthread_create(&a, NULL, reg_racer, &reg), 0);
        cr_assert_eq(pthread_create(&b, NULL, unreg_racer, &unreg), 0);
        uint64_t until = th_now_ns() + 50u * 1000000u;
        while (th_now_ns() < until && (reg.n < reg.max || unreg.n < unreg.max)) th_nap();
        atomic_store(&stop, 1);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        cr_assert_eq(reg.bad_rc, 0, "ar_register: %s", ar_err_name(reg.bad_rc));
        cr_assert_eq(unreg.bad_rc, 0, "ar_unregister: %s", ar_err_name(unreg.bad_rc));
        check_agree(node, pid, "contested", round);
    }
    th_node_stop(node);
}

/* The same race with the registration made by spawn's .name: several spawning threads
 * (each with its own name) against two unregistering threads. A child found without its
 * name must, within a moment (an unregister may still be letting go of it), show no name
 * and be able to take another. */
#define NB_SPAWNERS 3
#define NB_UNREGISTERS 2

static const char *const newborn_names[NB_SPAWNERS] = {"newborn0", "newborn1", "newborn2"};
static const char *const other_names[NB_SPAWNERS] = {"other0", "other1", "other2"};

typedef struct nb_spawner {
    ar_node_t *node;
    int k;
    atomic_int *stop;
    int spawns, lost; /* children spawned; of them, found without their name */
    int failed;       /* 0, or what went wrong first (below) */
    int failed_rc, failed_at;
    char shown[AR_NAME_MAX];
    atomic_int done;
} nb_spawner_t;

enum { NB_SPAWN = 1, NB_STRANGER, NB_STUCK, NB_CANNOT_REGISTER, NB_NEVER_ENDED };

static void *nb_spawner_main(void *arg)
{
    nb_spawner_t *t = arg;
    static holder_t h[NB_SPAWNERS];
    while (!atomic_load(t->stop) && !t->failed) {
        ar_pid_t pid = AR_PID_NONE;
        int rc = spawn_named(t->node, &h[t->k], newborn_names[t->k], &pid);
        t->spawns++;
        t->failed_at = t->spawns;
        if (rc != 0) {
            t->failed = NB_SPAWN, t->failed_rc = rc;
            break;
        }
        ar_pid_t w = ar_whereis(t->node, newborn_names[t->k]);
        if (!ar_pid_is_none(w) && !ar_pid_eq(w, pid)) {
            t->failed = NB_STRANGER;
            break;
        }
        if (ar_pid_is_none(w)) {
            t->lost++;
            ar_proc_info_t info;
            uint64_t dl = th_now_ns() + 1000u * 1000000u;
            do {
                if (ar_proc_info(t->node, pid, &info) != 0) snprintf(info.name, 2, "?");
            } while (info.name[0] && th_now_ns() < dl);
            if (info.name[0]) {
                t->failed = NB_STUCK;
                memcpy(t->shown, info.name, AR_NAME_MAX);
                break;
            }
            rc = ar_register(t->node, other_names[t->k], pid);
            if (rc == 0) rc = ar_unregister(t->node, other_names[t->k]);
            if (rc != 0) {
                t->failed = NB_CANNOT_REGISTER, t->failed_rc = rc;
                break;
            }
        }
        ar_exit(t->node, pid, AR_REASON(AR_KILL));
        uint64_t dl = th_now_ns() + 2000u * 1000000u;
        while (th_proc_alive(t->node, pid) && th_now_ns() < dl) sched_yield();
        if (th_proc_alive(t->node, pid)) t->failed = NB_NEVER_ENDED;
    }
    atomic_store(&t->done, 1);
    return NULL;
}

typedef struct nb_unregister {
    ar_node_t *node;
    atomic_int *stop;
    unsigned seed;
    long ok;
    int bad_rc;
} nb_unregister_t;

static void *nb_unregister_main(void *arg)
{
    nb_unregister_t *u = arg;
    while (!atomic_load(u->stop)) {
        int rc = ar_unregister(u->node, newborn_names[lcg(&u->seed) % NB_SPAWNERS]);
        if (rc == 0) u->ok++;
        else if (rc != AR_ENOENT && !u->bad_rc) u->bad_rc = rc;
    }
    return NULL;
}

Test(names, unregister_racing_a_named_spawn_leaves_table_and_child_agreeing,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static atomic_int stop;
    static nb_spawner_t sp[NB_SPAWNERS];
    static nb_unregister_t un[NB_UNREGISTERS];
    pthread_t ts[NB_SPAWNERS], tu[NB_UNREGISTERS];
    for (int i = 0; i < NB_UNREGISTERS; i++) {
        un[i].node = node;
        un[i].stop = &stop;
        un[i].seed = 5u + (unsigned)i;
        cr_assert_eq(pthread_create(&tu[i], NULL, nb_unregister_main, &un[i]), 0);
    }
    for (int i = 0; i < NB_SPAWNERS; i++) {
        sp[i].node = node;
        sp[i].k = i;
        sp[i].stop = &stop;
        cr_assert_eq(pthread_create(&ts[i], NULL, nb_spawner_main, &sp[i]), 0);
    }
    uint64_t until = th_now_ns() + 2 * RACE_MS * 1000000u; /* its window is narrower */
    for (bool any = false; !any && th_now_ns() < until;) {
        for (int i = 0; i < NB_SPAWNERS; i++)
            if (atomic_load(&sp[i].done)) any = true; /* only a failure stops one early */
        th_nap();
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < NB_SPAWNERS; i++) th_await(atomic_load(&sp[i].done));
    for (int i = 0; i < NB_SPAWNERS; i++) pthread_join(ts[i], NULL);
    for (int i = 0; i < NB_UNREGISTERS; i++) pthread_join(tu[i], NULL);
    int spawns = 0, lost = 0;
    for (int i = 0; i < NB_SPAWNERS; i++) {
        nb_spawner_t *t = &sp[i];
        spawns += t->spawns;
        lost += t->lost;
        cr_assert_neq(t->failed, NB_SPAWN, "spawner %d, spawn %d: %s", i, t->failed_at,
                      ar_err_name(t->failed_rc));
        cr_assert_neq(t->failed, NB_STRANGER, "spawner %d, spawn %d: \"%s\" maps to a "
                      "stranger", i, t->failed_at, newborn_names[i]);
        cr_assert_neq(t->failed, NB_STUCK, "spawner %d, spawn %d: \"%s\" was unregistered, "
                      "yet the child still shows \"%s\" as its name", i, t->failed_at,
                      newborn_names[i], t->shown);
        cr_assert_neq(t->failed, NB_CANNOT_REGISTER, "spawner %d, spawn %d: the child lost "
                      "its name, yet cannot take another: %s", i, t->failed_at,
                      ar_err_name(t->failed_rc));
        cr_assert_eq(t->failed, 0, "spawner %d: a killed child never ended", i);
    }
    for (int i = 0; i < NB_UNREGISTERS; i++)
        cr_assert_eq(un[i].bad_rc, 0, "ar_unregister: %s", ar_err_name(un[i].bad_rc));
    cr_log_info("named spawns: %d, %d of them lost their name to a racing unregister",
                spawns, lost);
    th_node_stop(node);
}

/* Threads find processes by the name they are being spawned with and try to give them a
 * second name: such a process already holds one, so that must fail (AR_EALREADY, or
 * AR_ENOPROC once it ends), and after it ends neither name may be left behind. Several
 * spawning threads (each with its own name) and two aliasers on two cores, so that
 * preemption lands anywhere in a spawn. */
#define ALIAS_SPAWNERS 3
#define ALIASERS 2

static const char *const primary_names[ALIAS_SPAWNERS] = {"primary0", "primary1", "primary2"};
static const char *const alias_names[ALIAS_SPAWNERS] = {"alias0", "alias1", "alias2"};

typedef struct aliaser {
    ar_node_t *node;
    atomic_int *stop;
    unsigned seed;
    atomic_long tries, wrongly_ok;
    int bad_rc;
    ar_pid_t victim;
    int victim_name;
} aliaser_t;

static void *aliaser_main(void *arg)
{
    aliaser_t *a = arg;
    while (!atomic_load(a->stop)) {
        int k = (int)(lcg(&a->seed) % ALIAS_SPAWNERS);
        ar_pid_t p = ar_whereis(a->node, primary_names[k]);
        if (ar_pid_is_none(p)) continue;
        int rc = ar_register(a->node, alias_names[k], p);
        atomic_fetch_add(&a->tries, 1);
        if (rc == 0) {
            if (atomic_load(&a->wrongly_ok) == 0) a->victim = p, a->victim_name = k;
            atomic_fetch_add(&a->wrongly_ok, 1); /* seq_cst: after the victim */
        } else if (rc != AR_EALREADY && rc != AR_ENOPROC && !a->bad_rc) {
            a->bad_rc = rc;
        }
    }
    return NULL;
}

typedef struct alias_spawner {
    ar_node_t *node;
    int k;
    atomic_int *stop;
    int spawns;
    int failed;         /* 0, or what went wrong first (below) */
    int failed_rc, failed_at;
    ar_pid_t left;      /* what a name still mapped to */
    atomic_int done;
} alias_spawner_t;

enum { AS_SPAWN = 1, AS_NEVER_ENDED, AS_PRIMARY_LEFT, AS_ALIAS_LEFT };

static void *alias_spawner_main(void *arg)
{
    alias_spawner_t *t = arg;
    static holder_t h[ALIAS_SPAWNERS];
    while (!atomic_load(t->stop) && !t->failed) {
        ar_pid_t pid = AR_PID_NONE;
        int rc = spawn_named(t->node, &h[t->k], primary_names[t->k], &pid);
        t->spawns++;
        if (rc != 0) {
            t->failed = AS_SPAWN, t->failed_rc = rc, t->failed_at = t->spawns;
            break;
        }
        ar_exit(t->node, pid, AR_REASON(AR_KILL));
        /* bounded: a name left behind must fail the test, not hang it */
        uint64_t dl = th_now_ns() + 2000u * 1000000u;
        while (th_proc_alive(t->node, pid) && th_now_ns() < dl) sched_yield();
        ar_pid_t w;
        if (th_proc_alive(t->node, pid)) t->failed = AS_NEVER_ENDED;
        else if (!ar_pid_is_none(w = ar_whereis(t->node, primary_names[t->k])))
            t->failed = AS_PRIMARY_LEFT, t->left = w;
        else if (!ar_pid_is_none(w = ar_whereis(t->node, alias_names[t->k])))
            t->failed = AS_ALIAS_LEFT, t->left = w;
        if (t->failed) t->failed_at = t->spawns;
    }
    atomic_store(&t->done, 1);
    return NULL;
}

Test(names, a_named_spawn_racing_a_register_of_its_pid_never_gives_two_names,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static atomic_int stop;
    static aliaser_t al[ALIASERS];
    static alias_spawner_t sp[ALIAS_SPAWNERS];
    pthread_t ta[ALIASERS], ts[ALIAS_SPAWNERS];
    for (int i = 0; i < ALIASERS; i++) {
        al[i].node = node;
        al[i].stop = &stop;
        al[i].seed = 99u + (unsigned)i;
        cr_assert_eq(pthread_create(&ta[i], NULL, aliaser_main, &al[i]), 0);
    }
    for (int i = 0; i < ALIAS_SPAWNERS; i++) {
        sp[i].node = node;
        sp[i].k = i;
        sp[i].stop = &stop;
        cr_assert_eq(pthread_create(&ts[i], NULL, alias_spawner_main, &sp[i]), 0);
    }
    uint64_t until = th_now_ns() + RACE_MS * 1000000u;
    for (;;) {
        bool any_failed = false, all_done = true;
        for (int i = 0; i < ALIAS_SPAWNERS; i++) {
            if (!atomic_load(&sp[i].done)) all_done = false;
            else any_failed = true; /* a spawner only stops early when it failed */
        }
        for (int i = 0; i < ALIASERS; i++)
            if (atomic_load(&al[i].wrongly_ok)) any_failed = true;
        if (any_failed || all_done || th_now_ns() >= until) break;
        th_nap();
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < ALIAS_SPAWNERS; i++) th_await(atomic_load(&sp[i].done));
    for (int i = 0; i < ALIAS_SPAWNERS; i++) pthread_join(ts[i], NULL);
    for (int i = 0; i < ALIASERS; i++) pthread_join(ta[i], NULL);
    char ps[AR_PID_STRLEN];
    long tries = 0;
    int spawns = 0;
    for (int i = 0; i < ALIAS_SPAWNERS; i++) spawns += sp[i].spawns;
    for (int i = 0; i < ALIASERS; i++) {
        tries += atomic_load(&al[i].tries);
        cr_assert_eq(atomic_load(&al[i].wrongly_ok), 0,
                     "ar_register(\"%s\", %s) succeeded for a process found under \"%s\": it "
                     "got a second name (%ld times; %d spawns)", alias_names[al[i].victim_name],
                     pid_str(al[i].victim, ps), primary_names[al[i].victim_name],
                     atomic_load(&al[i].wrongly_ok), spawns);
        cr_assert_eq(al[i].bad_rc, 0, "ar_register: %s", ar_err_name(al[i].bad_rc));
    }
    for (int i = 0; i < ALIAS_SPAWNERS; i++) {
        alias_spawner_t *t = &sp[i];
        cr_assert_neq(t->failed, AS_SPAWN, "spawner %d, spawn %d: %s", i, t->failed_at,
                      ar_err_name(t->failed_rc));
        cr_assert_neq(t->failed, AS_NEVER_ENDED, "spawner %d: a killed child never ended", i);
        cr_assert_eq(t->failed, 0, "spawner %d, spawn %d: \"%s\" outlived its owner (maps to "
                     "%s)", i, t->failed_at, t->failed == AS_PRIMARY_LEFT ? primary_names[i]
                     : alias_names[i], pid_str(t->left, ps));
    }
    cr_log_info("aliasers: %ld tries over %d spawns", tries, spawns);
    th_node_stop(node);
}
