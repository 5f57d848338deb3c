/* The allocator hook and out-of-memory: every allocation on the node start, spawn, send
 * and call paths can fail; the operation then returns AR_ENOMEM (or succeeds), nothing it
 * promised happens, and after ar_node_stop every block is freed.
 *
 * Each iteration fails the n-th allocation (once) while the operation runs, for
 * n = 1, 2, ... until an iteration in which the operation needed fewer than n. */
#include "test_helpers.h"

enum { MAX_N = 2000 };

static th_alloc_t alloc;

static int arg_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

Test(alloc, set_allocator_while_a_node_runs_is_ebusy, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    ar_node_t *node = th_node(2);
    static th_alloc_t other;
    memset(&other, 0, sizeof other);
    other.hook = (ar_allocator_t){th_alloc_malloc, th_alloc_realloc, th_alloc_free, &other};
    cr_assert_eq(ar_set_allocator(&other.hook), AR_EBUSY);
    cr_assert_eq(ar_set_allocator(NULL), AR_EBUSY);
    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    th_echo_check(node, echo);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&other.total), 0, "the refused allocator was never used");
    cr_assert_eq(atomic_load(&alloc.live), 0);
    cr_assert_eq(ar_set_allocator(NULL), 0, "allowed again once no node runs");
    /* libc again: a node runs without the hook */
    long total = atomic_load(&alloc.total);
    ar_node_t *n2 = th_node(1);
    th_echo_check(n2, th_spawn(n2, &th_echo, NULL));
    th_node_stop(n2);
    cr_assert_eq(atomic_load(&alloc.total), total, "NULL restored libc");
}

Test(alloc, runtime_memory_goes_through_the_hook_and_is_all_freed_at_stop,
     .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    ar_node_t *node = th_node(2);
    long after_start = atomic_load(&alloc.live);
    cr_assert_gt(after_start, 0, "the node's own memory comes from the hook");
    static th_echo_state_t st;
    ar_pid_t pids[100];
    for (int i = 0; i < 100; i++) pids[i] = th_spawn(node, &th_echo, &st);
    cr_assert_gt(atomic_load(&alloc.total), after_start);
    for (int i = 0; i < 100; i++) th_send(node, pids[i], 1, "payload", 7);
    for (int i = 0; i < 100; i++) th_echo_check(node, pids[i]);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0, "live blocks after stop: %ld",
                 atomic_load(&alloc.live));
}

Test(alloc, node_start_out_of_memory_is_enomem_and_leaves_nothing, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_config_t cfg;
        ar_node_config_init(&cfg);
        cfg.schedulers = 2;
        ar_node_t *node = NULL;
        th_alloc_arm(&alloc, n);
        int rc = ar_node_start(&cfg, &node);
        bool injected = th_alloc_disarm(&alloc);
        if (rc == 0) {
            cr_assert_not_null(node);
            th_echo_check(node, th_spawn(node, &th_echo, NULL));
            th_node_stop(node);
            done = !injected;
        } else {
            cr_assert_eq(rc, AR_ENOMEM, "n=%ld: ar_node_start returned %d (%s)", n, rc,
                         ar_err_name(rc));
            cr_assert(injected, "n=%ld: ENOMEM without an injected failure", n);
            failures++;
        }
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_node_start never succeeded within %d allocations", MAX_N);
    cr_assert_gt(failures, 0, "no allocation on the start path failed");
}

/* ---- spawn --------------------------------------------------------------------------------------- */
typedef struct oom_proc {
    atomic_int inits, terminates;
} oom_proc_t;
static int oom_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    oom_proc_t *o = arg;
    atomic_fetch_add(&o->inits, 1);
    *state = o;
    return 0;
}
static void oom_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, "ok", 2);
}
static void oom_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)why;
    oom_proc_t *o = state;
    atomic_fetch_add(&o->terminates, 1);
}
static const ar_behaviour_t oom_b = {"oom", oom_init, oom_handle, oom_terminate};

/* One iteration's verdict, shared by the loops below. */
static void check_spawn_result(ar_node_t *node, long n, int rc, ar_pid_t pid, size_t before,
                               size_t extra)
{
    if (rc == 0) {
        cr_assert(!ar_pid_is_none(pid));
        ar_buf_t r = {0};
        int crc = ar_call(node, pid, 1, NULL, 0, &r, TH_WAIT_MS);
        cr_assert_eq(crc, 0, "n=%ld: the spawned process does not answer: %s", n,
                     ar_err_name(crc));
        ar_buf_free(&r);
        cr_assert_eq(th_stats(node).processes, before + extra + 1);
    } else {
        cr_assert_eq(rc, AR_ENOMEM, "n=%ld: ar_spawn returned %d (%s)", n, rc, ar_err_name(rc));
        cr_assert_eq(th_stats(node).processes, before + extra,
                     "n=%ld: a failed spawn left a process behind", n);
    }
}

Test(alloc, spawn_from_main_out_of_memory_is_enomem_and_leaks_nothing, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static oom_proc_t o;
        memset(&o, 0, sizeof o);
        size_t before = th_stats(node).processes;
        ar_pid_t pid = AR_PID_NONE;
        th_alloc_arm(&alloc, n);
        int rc = ar_spawn(node, &oom_b, &o, NULL, &pid);
        bool injected = th_alloc_disarm(&alloc);
        check_spawn_result(node, n, rc, pid, before, 0);
        if (rc != 0) failures++;
        done = rc == 0 && !injected;
        th_node_stop(node);
        if (rc == 0) cr_assert_eq(atomic_load(&o.inits), 1);
        cr_assert_eq(atomic_load(&o.terminates), atomic_load(&o.inits),
                     "n=%ld: terminate runs once for every successful init", n);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_spawn never succeeded within %d allocations", MAX_N);
    (void)failures; /* a path may need no allocation at all (pooled) */
}

/* A process that, on a CALL, arms the allocator, spawns `count` children, disarms and
 * answers. Enough children to outgrow any preallocated table make the path allocate. */
typedef struct parent {
    long n;
    int count;
    oom_proc_t child;
    int ok, enomem, other, other_rc;
    bool injected;
    ar_pid_t last;
} parent_t;
static void parent_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    parent_t *p = state;
    p->ok = p->enomem = p->other = 0;
    th_alloc_arm(&alloc, p->n);
    for (int i = 0; i < p->count; i++) {
        ar_pid_t pid = AR_PID_NONE;
        int rc = ar_spawn(ar_node(self), &oom_b, &p->child, NULL, &pid);
        if (rc == 0) {
            p->ok++;
            p->last = pid;
        } else if (rc == AR_ENOMEM) {
            p->enomem++;
        } else {
            p->other++;
            p->other_rc = rc;
        }
    }
    p->injected = th_alloc_disarm(&alloc);
    int rc;
    do rc = ar_reply(ar_node(self), m->reply_to, NULL, 0);
    while (rc == AR_ENOMEM);
}
static const ar_behaviour_t parent_b = {"parent", arg_init, parent_handle, NULL};

static void check_spawn_from_process(int count)
{
    th_alloc_install(&alloc);
    bool done = false;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static parent_t p;
        memset(&p, 0, sizeof p);
        p.n = n;
        p.count = count;
        ar_pid_t parent = th_spawn(node, &parent_b, &p);
        size_t before = th_stats(node).processes;
        ar_buf_t r = {0};
        int crc = ar_call(node, parent, 1, NULL, 0, &r, TH_WAIT_MS);
        cr_assert_eq(crc, 0, "n=%ld: call to the parent: %s", n, ar_err_name(crc));
        ar_buf_free(&r);
        cr_assert_eq(p.other, 0, "n=%ld: ar_spawn returned %d (%s)", n, p.other_rc,
                     ar_err_name(p.other_rc));
        cr_assert_eq(p.ok + p.enomem, count);
        cr_assert_eq(th_stats(node).processes, before + (size_t)p.ok,
                     "n=%ld: %d spawns failed with AR_ENOMEM and left processes behind", n,
                     p.enomem);
        if (p.ok) {
            ar_buf_t r2 = {0};
            cr_assert_eq(ar_call(node, p.last, 1, NULL, 0, &r2, TH_WAIT_MS), 0);
            ar_buf_free(&r2);
        }
        done = !p.injected;
        th_node_stop(node);
        cr_assert_eq(atomic_load(&p.child.terminates), atomic_load(&p.child.inits),
                     "n=%ld: terminate runs once for every successful init", n);
        cr_assert_eq(atomic_load(&p.child.terminates), p.ok);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (%d ENOMEM): %ld blocks leaked", n,
                     p.enomem, atomic_load(&alloc.live));
    }
    cr_assert(done, "spawning never succeeded within %d allocations", MAX_N);
}

Test(alloc, spawn_from_a_process_out_of_memory_is_enomem_and_leaks_nothing,
     .timeout = TH_TIMEOUT)
{
    check_spawn_from_process(1);
}

Test(alloc, many_spawns_from_a_process_out_of_memory_are_enomem_and_leak_nothing,
     .timeout = TH_TIMEOUT)
{
    check_spawn_from_process(5000);
}

/* ---- send ------------------------------------------------------------------------------------------ */
/* A sink counts CASTs; a CALL is answered with the count (retrying an ENOMEM reply). */
typedef struct sink {
    atomic_long casts, calls;
} sink_t;
static void sink_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sink_t *s = state;
    if (m->kind == AR_MSG_CAST) {
        atomic_fetch_add(&s->casts, 1);
    } else if (m->kind == AR_MSG_CALL) {
        atomic_fetch_add(&s->calls, 1);
        long n = atomic_load(&s->casts);
        int rc;
        do rc = ar_reply(ar_node(self), m->reply_to, &n, sizeof n);
        while (rc == AR_ENOMEM);
    }
}
static const ar_behaviour_t sink_b = {"sink", arg_init, sink_handle, NULL};

static long sink_count(ar_node_t *node, ar_pid_t sink)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, sink, 1, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "sink call: %s", ar_err_name(rc));
    long n;
    cr_assert_eq(r.len, sizeof n);
    memcpy(&n, r.data, sizeof n);
    ar_buf_free(&r);
    return n;
}

Test(alloc, send_from_main_out_of_memory_is_enomem_and_not_delivered, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    char payload[200];
    memset(payload, 'p', sizeof payload);
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static sink_t s;
        memset(&s, 0, sizeof s);
        ar_pid_t sink = th_spawn(node, &sink_b, &s);
        th_alloc_arm(&alloc, n);
        int rc = ar_send(node, sink, 1, payload, sizeof payload);
        bool injected = th_alloc_disarm(&alloc);
        if (rc != 0) {
            cr_assert_eq(rc, AR_ENOMEM, "n=%ld: ar_send returned %d (%s)", n, rc, ar_err_name(rc));
            failures++;
        }
        long got = sink_count(node, sink);
        cr_assert_eq(got, rc == 0 ? 1 : 0, "n=%ld: rc %s but %ld delivered", n, ar_err_name(rc),
                     got);
        done = rc == 0 && !injected;
        th_node_stop(node);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_send never succeeded within %d allocations", MAX_N);
    (void)failures; /* a path may need no allocation at all (pooled) */
}

/* A sender process: on a CALL, arms, sends to the sink, disarms and answers. */
typedef struct sender {
    long n;
    ar_pid_t sink;
    int rc;
    bool injected;
} sender_t;
static void sender_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sender_t *s = state;
    char payload[200];
    memset(payload, 'q', sizeof payload);
    th_alloc_arm(&alloc, s->n);
    s->rc = ar_send(ar_node(self), s->sink, 1, payload, sizeof payload);
    s->injected = th_alloc_disarm(&alloc);
    int rc;
    do rc = ar_reply(ar_node(self), m->reply_to, NULL, 0);
    while (rc == AR_ENOMEM);
}
static const ar_behaviour_t sender_b = {"sender", arg_init, sender_handle, NULL};

Test(alloc, send_from_a_process_out_of_memory_is_enomem_and_not_delivered,
     .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static sink_t sk;
        static sender_t sd;
        memset(&sk, 0, sizeof sk);
        memset(&sd, 0, sizeof sd);
        sd.n = n;
        sd.sink = th_spawn(node, &sink_b, &sk);
        ar_pid_t sender = th_spawn(node, &sender_b, &sd);
        ar_buf_t r = {0};
        cr_assert_eq(ar_call(node, sender, 1, NULL, 0, &r, TH_WAIT_MS), 0);
        ar_buf_free(&r);
        if (sd.rc != 0) {
            cr_assert_eq(sd.rc, AR_ENOMEM, "n=%ld: ar_send returned %d (%s)", n, sd.rc,
                         ar_err_name(sd.rc));
            failures++;
        }
        /* The sender's send happened before its reply to us, so the sink has it queued
         * before our count request. */
        long got = sink_count(node, sd.sink);
        cr_assert_eq(got, sd.rc == 0 ? 1 : 0, "n=%ld: rc %s but %ld delivered", n,
                     ar_err_name(sd.rc), got);
        done = sd.rc == 0 && !sd.injected;
        th_node_stop(node);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(sd.rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_send never succeeded within %d allocations", MAX_N);
    (void)failures; /* a path may need no allocation at all (pooled) */
}

/* ---- call ------------------------------------------------------------------------------------------ */
Test(alloc, call_from_main_out_of_memory_is_enomem_and_not_handled, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static sink_t s;
        memset(&s, 0, sizeof s);
        ar_pid_t sink = th_spawn(node, &sink_b, &s);
        ar_buf_t r = {0};
        th_alloc_arm(&alloc, n);
        int rc = ar_call(node, sink, 1, "request", 7, &r, TH_WAIT_MS);
        bool injected = th_alloc_disarm(&alloc);
        if (rc == 0) {
            cr_assert_eq(r.len, sizeof(long), "n=%ld: reply of %zu bytes", n, r.len);
            ar_buf_free(&r);
        } else {
            cr_assert_eq(rc, AR_ENOMEM, "n=%ld: ar_call returned %d (%s)", n, rc, ar_err_name(rc));
            failures++;
        }
        (void)sink_count(node, sink);
        cr_assert_eq(atomic_load(&s.calls), rc == 0 ? 2 : 1,
                     "n=%ld: rc %s but the server handled %ld calls", n, ar_err_name(rc),
                     atomic_load(&s.calls) - 1);
        done = rc == 0 && !injected;
        th_node_stop(node);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_call never succeeded within %d allocations", MAX_N);
    (void)failures; /* a path may need no allocation at all (pooled) */
}

/* A caller process: on a CAST, arms, calls the sink, disarms, records. */
typedef struct caller {
    long n;
    ar_pid_t sink;
    int rc;
    bool injected;
    atomic_int done;
} caller_t;
static void caller_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    caller_t *c = state;
    ar_buf_t r = {0};
    th_alloc_arm(&alloc, c->n);
    c->rc = ar_call(ar_node(self), c->sink, 1, "request", 7, &r, TH_WAIT_MS);
    c->injected = th_alloc_disarm(&alloc);
    ar_buf_free(&r);
    atomic_store(&c->done, 1);
}
static const ar_behaviour_t caller_b = {"caller", arg_init, caller_handle, NULL};

Test(alloc, call_from_a_process_out_of_memory_is_enomem_and_not_handled,
     .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        static sink_t sk;
        static caller_t c;
        memset(&sk, 0, sizeof sk);
        memset(&c, 0, sizeof c);
        c.n = n;
        c.sink = th_spawn(node, &sink_b, &sk);
        ar_pid_t caller = th_spawn(node, &caller_b, &c);
        th_send(node, caller, 1, NULL, 0);
        th_await(atomic_load(&c.done) == 1);
        if (c.rc != 0) {
            cr_assert_eq(c.rc, AR_ENOMEM, "n=%ld: ar_call returned %d (%s)", n, c.rc,
                         ar_err_name(c.rc));
            failures++;
        }
        (void)sink_count(node, c.sink);
        cr_assert_eq(atomic_load(&sk.calls), c.rc == 0 ? 2 : 1, "n=%ld: rc %s", n,
                     ar_err_name(c.rc));
        done = c.rc == 0 && !c.injected;
        th_node_stop(node);
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld (rc %s): %ld blocks leaked", n,
                     ar_err_name(c.rc), atomic_load(&alloc.live));
    }
    cr_assert(done, "ar_call never succeeded within %d allocations", MAX_N);
    (void)failures; /* a path may need no allocation at all (pooled) */
}

/* ---- links, monitors, timers, the exit path and supervisors --------------------------------- *
 * Each sweep fails the n-th allocation of one operation, for every n, on a node whose
 * schedulers keep no envelope caches (so every envelope comes from the hook): the
 * operation either fails with AR_ENOMEM and changes nothing, or succeeds and its signal
 * is delivered; nothing hangs and nothing leaks. */
extern bool ar__pool_bypass; /* white-box: see runtime/internal.h */

enum { OP_LINK = 1, OP_MONITOR, OP_SEND_AFTER, OP_TIMER_TAG = 77 };
typedef struct op {
    long n;       /* fail the n-th allocation of the operation; 0: none */
    ar_pid_t pid; /* its target */
} op_t;
typedef struct op_result {
    int rc;
    bool injected;
    ar_ref_t ref;
} op_result_t;

/* The actor: runs one armed operation per CALL and answers how it went; it traps exits
 * and logs every other message. */
static void actor_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    th_log_t *log = state;
    if (th_sync_answer(self, log, m)) return;
    if (m->kind != AR_MSG_CALL) {
        th_log_msg(log, m);
        return;
    }
    op_t op;
    memcpy(&op, m->data, sizeof op);
    op_result_t r = {0};
    if (op.n) th_alloc_arm(&alloc, op.n);
    switch (m->tag) {
    case OP_LINK: r.rc = ar_link(self, op.pid); break;
    case OP_MONITOR: r.rc = ar_monitor(self, op.pid, &r.ref); break;
    case OP_SEND_AFTER:
        r.rc = ar_send_after(ar_node(self), 0, op.pid, OP_TIMER_TAG, &op.n, sizeof op.n, &r.ref);
        break;
    }
    r.injected = op.n && th_alloc_disarm(&alloc);
    int rc;
    do rc = ar_reply(ar_node(self), m->reply_to, &r, sizeof r);
    while (rc == AR_ENOMEM);
}
static int actor_init(ar_proc_t *self, void *arg, void **state)
{
    ar_trap_exit(self, true);
    return th_rec_init(self, arg, state);
}
static const ar_behaviour_t actor_b = {"actor", actor_init, actor_handle, NULL};

static op_result_t run_op(ar_node_t *node, ar_pid_t actor, uint32_t tag, long n, ar_pid_t pid)
{
    op_t op = {n, pid};
    ar_buf_t b = {0};
    int rc = ar_call(node, actor, tag, &op, sizeof op, &b, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "n=%ld: the actor did not answer: %s", n, ar_err_name(rc));
    op_result_t r;
    memcpy(&r, b.data, sizeof r);
    ar_buf_free(&b);
    cr_assert(r.rc == 0 || (r.rc == AR_ENOMEM && r.injected), "n=%ld: %s", n, ar_err_name(r.rc));
    return r;
}

/* How many of the actor's logged messages are of kind from `from` (ref 0: any). */
static int logged(th_log_t *log, ar_msg_kind_t kind, ar_pid_t from, ar_ref_t ref)
{
    int k = 0;
    for (size_t i = 0; i < th_log_len(log); i++)
        if (log->e[i].kind == kind && ar_pid_eq(log->e[i].from, from) && (!ref || log->e[i].ref == ref))
            k++;
    return k;
}

/* Kills target and waits until its end has been told to everyone: the node is back to
 * `processes` and the actor has handled what was queued before a sync. */
static void kill_and_settle(ar_node_t *node, ar_pid_t target, size_t processes, ar_pid_t actor)
{
    cr_assert_eq(ar_exit(node, target, AR_REASON(AR_KILL)), 0);
    th_await(th_stats(node).processes == processes);
    th_sync(node, actor);
}

/* Runs sweep(n) for n = 1, 2, ... until an iteration injected no failure. */
static void sweep(bool (*one)(long n))
{
    ar__pool_bypass = true;
    th_alloc_install(&alloc);
    bool done = false;
    int failed = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        done = !one(n);
        if (!done) failed++;
        cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld: %ld blocks leaked", n,
                     atomic_load(&alloc.live));
    }
    cr_assert(done, "the operation still failed after %d allocations", MAX_N);
    cr_assert_gt(failed, 0, "no allocation of the operation failed");
}

static bool link_once(long n)
{
    static th_log_t log, tlog;
    memset(&log, 0, sizeof log);
    memset(&tlog, 0, sizeof tlog);
    ar_node_t *node = th_node(2);
    ar_pid_t actor = th_spawn(node, &actor_b, &log);
    ar_pid_t target = th_spawn(node, &th_recorder, &tlog);
    ar_ref_t barrier = run_op(node, actor, OP_MONITOR, 0, target).ref; /* DOWN after EXIT */
    size_t before = th_stats(node).processes;
    op_result_t r = run_op(node, actor, OP_LINK, n, target);
    ar_proc_info_t ai, ti;
    cr_assert_eq(ar_proc_info(node, actor, &ai), 0);
    cr_assert_eq(ar_proc_info(node, target, &ti), 0);
    th_sync(node, target); /* the LINK has been fetched */
    cr_assert_eq(ar_proc_info(node, target, &ti), 0);
    cr_assert_eq(ai.links, r.rc == 0 ? 1u : 0u, "n=%ld: the actor's links", n);
    cr_assert_eq(ti.links, r.rc == 0 ? 1u : 0u, "n=%ld: the target's links", n);
    kill_and_settle(node, target, before - 1, actor);
    cr_assert_eq(logged(&log, AR_MSG_DOWN, target, barrier), 1);
    cr_assert_eq(logged(&log, AR_MSG_EXIT, target, 0), r.rc == 0 ? 1 : 0,
                 "n=%ld (%s): a link's EXIT is delivered exactly when the link was made", n,
                 ar_err_name(r.rc));
    th_node_stop(node);
    return r.injected;
}

Test(alloc, link_out_of_memory_is_enomem_and_changes_nothing_else_its_exit_arrives,
     .timeout = TH_TIMEOUT)
{
    sweep(link_once);
}

static bool monitor_once(long n)
{
    static th_log_t log;
    memset(&log, 0, sizeof log);
    ar_node_t *node = th_node(2);
    ar_pid_t actor = th_spawn(node, &actor_b, &log);
    ar_pid_t target = th_spawn(node, &th_echo, NULL);
    size_t before = th_stats(node).processes;
    op_result_t r = run_op(node, actor, OP_MONITOR, n, target);
    ar_proc_info_t ai;
    cr_assert_eq(ar_proc_info(node, actor, &ai), 0);
    cr_assert_eq(ai.monitors, r.rc == 0 ? 1u : 0u, "n=%ld: the actor's monitors", n);
    kill_and_settle(node, target, before - 1, actor);
    cr_assert_eq(logged(&log, AR_MSG_DOWN, target, 0), r.rc == 0 ? 1 : 0,
                 "n=%ld (%s): one DOWN exactly when the monitor was made", n, ar_err_name(r.rc));
    if (r.rc == 0) cr_assert_eq(logged(&log, AR_MSG_DOWN, target, r.ref), 1);
    th_node_stop(node);
    return r.injected;
}

Test(alloc, monitor_out_of_memory_is_enomem_else_its_down_arrives, .timeout = TH_TIMEOUT)
{
    sweep(monitor_once);
}

static bool send_after_once(long n)
{
    static th_log_t log, tlog;
    memset(&log, 0, sizeof log);
    memset(&tlog, 0, sizeof tlog);
    ar_node_t *node = th_node(2);
    ar_pid_t actor = th_spawn(node, &actor_b, &log);
    ar_pid_t target = th_spawn(node, &th_recorder, &tlog);
    op_result_t r = run_op(node, actor, OP_SEND_AFTER, n, target);
    /* a second 0 ms timer of the same owner fires after the first on the same wheel */
    op_result_t last = run_op(node, actor, OP_SEND_AFTER, 0, target);
    cr_assert_eq(last.rc, 0);
    th_await(th_log_len(&tlog) >= (r.rc == 0 ? 2u : 1u));
    th_sync(node, target);
    cr_assert_eq(th_log_len(&tlog), r.rc == 0 ? 2u : 1u,
                 "n=%ld (%s): the timer fires exactly when it was set", n, ar_err_name(r.rc));
    cr_assert_eq(tlog.e[th_log_len(&tlog) - 1].kind, AR_MSG_TIMER);
    th_node_stop(node);
    return r.injected;
}

Test(alloc, send_after_out_of_memory_is_enomem_else_the_timer_fires, .timeout = TH_TIMEOUT)
{
    sweep(send_after_once);
}

/* ---- the exit path ---- *
 * A victim linked to three processes, monitored by three, owing answers to two callers,
 * is killed with a reason text while the n-th allocation fails: every EXIT, DOWN and
 * failed reply still arrives (only the text may be lost). */
enum { LINKED = 3, WATCHERS = 3, CALLERS = 2, TAG_CALL_VICTIM = 5 };
static ar_pid_t victim_pid;
static void victim_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m; /* takes calls and never answers: it owes them */
}
static const ar_behaviour_t victim_b = {"victim", NULL, victim_handle, NULL};

typedef struct owed_caller {
    atomic_int rc, done;
} owed_caller_t;
static void owed_caller_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    owed_caller_t *c = state;
    if (m->kind != AR_MSG_CAST) return;
    ar_buf_t b = {0};
    atomic_store(&c->rc, ar_call(ar_node(self), victim_pid, TAG_CALL_VICTIM, NULL, 0, &b,
                                 AR_INFINITY));
    ar_buf_free(&b);
    atomic_store(&c->done, 1);
}
static const ar_behaviour_t owed_caller_b = {"owed_caller", arg_init, owed_caller_handle, NULL};

static bool exit_path_once(long n)
{
    static th_log_t logs[LINKED + WATCHERS];
    static owed_caller_t callers[CALLERS];
    memset(logs, 0, sizeof logs);
    memset(callers, 0, sizeof callers);
    ar_node_t *node = th_node(2);
    ar_pid_t victim = victim_pid = th_spawn(node, &victim_b, NULL);
    ar_pid_t actors[LINKED + WATCHERS];
    for (int i = 0; i < LINKED + WATCHERS; i++) {
        actors[i] = th_spawn(node, &actor_b, &logs[i]);
        run_op(node, actors[i], i < LINKED ? OP_LINK : OP_MONITOR, 0, victim);
    }
    for (int i = 0; i < CALLERS; i++) th_send(node, th_spawn(node, &owed_caller_b, &callers[i]), 1, NULL, 0);
    ar_proc_info_t vi; /* the calls are taken: the victim owes them */
    th_await(ar_proc_info(node, victim, &vi) == 0 && vi.handled == CALLERS);
    size_t before = th_stats(node).processes;
    th_alloc_arm(&alloc, n);
    int rc;
    while ((rc = ar_exit(node, victim, (ar_reason_t){AR_ERROR, "the victim's own reason"})) ==
           AR_ENOMEM) {
    }
    cr_assert_eq(rc, 0);
    th_await(th_stats(node).processes == before - 1);
    bool injected = th_alloc_disarm(&alloc);
    for (int i = 0; i < CALLERS; i++) {
        th_await(atomic_load(&callers[i].done));
        cr_assert_eq(atomic_load(&callers[i].rc), AR_ENOPROC, "n=%ld: caller %d", n, i);
    }
    for (int i = 0; i < LINKED + WATCHERS; i++) {
        th_sync(node, actors[i]);
        ar_msg_kind_t kind = i < LINKED ? AR_MSG_EXIT : AR_MSG_DOWN;
        cr_assert_eq(logged(&logs[i], kind, victim, 0), 1, "n=%ld: process %d missed its %s",
                     n, i, i < LINKED ? "EXIT" : "DOWN");
        cr_assert_eq(logs[i].e[0].code, AR_ERROR, "n=%ld: the code is exact", n);
    }
    th_node_stop(node);
    return injected;
}

Test(alloc, a_process_ending_out_of_memory_still_delivers_every_exit_down_and_reply,
     .timeout = TH_TIMEOUT)
{
    sweep(exit_path_once);
}

/* ---- the supervisor API ---- */
static atomic_int sup_inits, sup_terms;
static int sw_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self, (void)arg, (void)state;
    atomic_fetch_add(&sup_inits, 1);
    return 0;
}
static void sw_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m;
}
static void sw_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)state, (void)why;
    atomic_fetch_add(&sup_terms, 1);
}
static const ar_behaviour_t sw_b = {"sup_worker", sw_init, sw_handle, sw_terminate};

static bool sup_api_once(long n)
{
    atomic_store(&sup_inits, 0);
    atomic_store(&sup_terms, 0);
    ar_node_t *node = th_node(2);
    ar_child_spec_t kids[] = {{.id = "a", .behaviour = &sw_b}, {.id = "b", .behaviour = &sw_b}};
    ar_sup_spec_t spec = {.strategy = AR_ONE_FOR_ONE, .intensity = 100, .children = kids,
                          .nchildren = 2};
    ar_pid_t sup;
    cr_assert_eq(ar_sup_start(node, &spec, NULL, &sup), 0);
    ar_child_spec_t c = {.id = "c", .behaviour = &sw_b};
    th_alloc_arm(&alloc, n);
    int rc[6];
    ar_child_info_t info[4];
    size_t count = 0;
    rc[0] = ar_sup_start_child(node, sup, &c, NULL, NULL);
    rc[1] = ar_sup_terminate_child(node, sup, "a", AR_PID_NONE);
    rc[2] = ar_sup_restart_child(node, sup, "a", NULL);
    rc[3] = ar_sup_which_children(node, sup, info, 4, &count);
    rc[4] = ar_sup_delete_child(node, sup, "b");
    rc[5] = ar_sup_stop(node, sup, 5000);
    bool injected = th_alloc_disarm(&alloc);
    static const int allowed[6][3] = {{0, AR_ENOMEM, 0},      {0, AR_ENOMEM, 0},
                                      {0, AR_ENOMEM, AR_EBUSY}, {0, AR_ENOMEM, 0},
                                      {AR_EBUSY, AR_ENOMEM, 0}, {0, AR_ENOMEM, 0}};
    for (int i = 0; i < 6; i++)
        cr_assert(rc[i] == allowed[i][0] || rc[i] == allowed[i][1] || rc[i] == allowed[i][2],
                  "n=%ld: call %d returned %s", n, i, ar_err_name(rc[i]));
    if (rc[5] != 0) cr_assert_eq(ar_sup_stop(node, sup, 5000), 0, "n=%ld", n);
    cr_assert_eq(atomic_load(&sup_terms), atomic_load(&sup_inits),
                 "n=%ld: a child outlived its stopped supervisor", n);
    th_node_stop(node);
    return injected;
}

Test(alloc, supervisor_calls_out_of_memory_return_an_error_or_succeed_and_leave_no_child,
     .timeout = TH_TIMEOUT)
{
    sweep(sup_api_once);
}

/* A supervisor short of memory while it restarts a child (its restart history, the new
 * child, its monitor) waits and tries again: it never gives up for want of memory, only
 * past its intensity. Its first restart allocates the history, so the sweep covers it. */
static void crashing_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state, (void)m;
    ar_sleep(self, 20); /* the test arms the failures meanwhile */
    AR_FAIL(self, "crash on purpose");
}
static const ar_behaviour_t crashing_b = {"crashing", sw_init, crashing_handle, sw_terminate};

static bool sup_restart_once(long n)
{
    atomic_store(&sup_inits, 0);
    atomic_store(&sup_terms, 0);
    ar_node_t *node = th_node(2);
    ar_child_spec_t kids[] = {{.id = "a", .behaviour = &crashing_b}};
    ar_sup_spec_t spec = {.strategy = AR_ONE_FOR_ONE, .intensity = 100, .children = kids,
                          .nchildren = 1};
    ar_pid_t sup;
    cr_assert_eq(ar_sup_start(node, &spec, NULL, &sup), 0);
    ar_child_info_t info;
    size_t count = 0;
    cr_assert_eq(ar_sup_which_children(node, sup, &info, 1, &count), 0);
    cr_assert_eq(ar_send(node, info.pid, 1, NULL, 0), 0);
    th_alloc_arm(&alloc, n);
    th_await(atomic_load(&sup_inits) == 2 || !th_proc_alive(node, sup));
    bool injected = th_alloc_disarm(&alloc);
    cr_assert(th_proc_alive(node, sup), "n=%ld: the supervisor gave up for want of memory", n);
    cr_assert_eq(ar_sup_stop(node, sup, 5000), 0, "n=%ld", n);
    cr_assert_eq(atomic_load(&sup_terms), atomic_load(&sup_inits), "n=%ld", n);
    th_node_stop(node);
    return injected;
}

Test(alloc, a_supervisor_restarting_out_of_memory_waits_and_never_gives_up,
     .timeout = TH_TIMEOUT)
{
    sweep(sup_restart_once);
}

/* A process killed while parked in a timed call, whose terminate then waits itself: the
 * interrupted call's timer is released before terminate's own wait takes its place (it
 * used to be overwritten and leaked). */
static atomic_int timed_parked;
static void timed_caller_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ar_pid_t server;
    memcpy(&server, m->data, sizeof server);
    atomic_store(&timed_parked, 1);
    ar_buf_t b = {0};
    ar_call(ar_node(self), server, 1, NULL, 0, &b, 3600 * 1000);
    ar_buf_free(&b);
}
static void sleepy_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)state, (void)why;
    ar_sleep(self, 5);
}
static const ar_behaviour_t timed_caller_b = {"timed_caller", NULL, timed_caller_handle,
                                              sleepy_terminate};
static void silent_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m; /* never answers */
}
static const ar_behaviour_t silent_b = {"silent", NULL, silent_handle, NULL};

Test(alloc, a_process_killed_in_a_timed_call_whose_terminate_waits_leaks_nothing,
     .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    ar_node_t *node = th_node(2);
    ar_pid_t server = th_spawn(node, &silent_b, NULL);
    ar_pid_t caller = th_spawn(node, &timed_caller_b, NULL);
    th_send(node, caller, 1, &server, sizeof server);
    th_await(atomic_load(&timed_parked) && th_proc_blocked(node, caller));
    cr_assert_eq(ar_exit(node, caller, AR_REASON(AR_KILL)), 0);
    th_await(!th_proc_alive(node, caller));
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0, "%ld blocks leaked", atomic_load(&alloc.live));
}
