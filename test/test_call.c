/* Calls and asks: replies from main and from processes, deferred replies, EDEADLK,
 * ENOPROC, timeouts, late replies that never show up, ar_ask outcomes, one scheduler,
 * the order of calls and sends from one client, and thousands of asks pending at once
 * (answered out of order, timing out among the others, dropped when the asker ends, out
 * of memory). */
#include "test_helpers.h"

enum {
    TAG_ECHO = 1,
    TAG_DEFER,       /* CALL: keep reply_to, answer later */
    TAG_RELEASE,     /* CAST: answer the kept reply_to with "late", then send a marker */
    TAG_RELEASE_OLD, /* CALL: answer the kept reply_to with "old", then this one with "new" */
    TAG_MARKER,
    TAG_GO,
    TAG_SEQ,
    TAG_HOLD,   /* CALL: kept, unanswered, until TAG_ANSWER */
    TAG_ANSWER, /* CAST: answer every kept call */
    TAG_PING,   /* CAST: send a TAG_MARKER back */
};

static int arg_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

/* ---- a server that can defer ------------------------------------------------------------------ */
typedef struct server {
    ar_reply_to_t kept;
    atomic_int kept_n;       /* DEFER calls kept */
    sem_t kept_sem;          /* posted when a reply_to is kept */
    ar_pid_t marker_to;      /* where RELEASE sends its marker */
    atomic_int late_rc;      /* ar_reply result of the late answer */
    atomic_int handled;
} server_t;

static void server_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    server_t *s = state;
    ar_node_t *node = ar_node(self);
    atomic_fetch_add(&s->handled, 1);
    switch (m->tag) {
    case TAG_ECHO:
        ar_reply(node, m->reply_to, m->data, m->len);
        break;
    case TAG_DEFER:
        s->kept = m->reply_to;
        atomic_fetch_add(&s->kept_n, 1);
        sem_post(&s->kept_sem);
        break;
    case TAG_RELEASE:
        atomic_store(&s->late_rc, ar_reply(node, s->kept, "late", 4));
        ar_send(node, m->from, TAG_MARKER, "marker", 6);
        break;
    case TAG_RELEASE_OLD:
        atomic_store(&s->late_rc, ar_reply(node, s->kept, "old", 3));
        ar_reply(node, m->reply_to, "new", 3);
        break;
    default:
        break;
    }
}
static const ar_behaviour_t server_b = {"server", arg_init, server_handle, NULL};

static server_t *new_server(void)
{
    static server_t s;
    memset(&s, 0, sizeof s);
    sem_init(&s.kept_sem, 0, 0);
    atomic_store(&s.late_rc, 1);
    return &s;
}

static void check_reply(int rc, ar_buf_t *r, const char *want)
{
    cr_assert_eq(rc, 0, "call: %d (%s)", rc, ar_err_name(rc));
    cr_assert_eq(r->len, strlen(want), "reply len %zu", r->len);
    cr_assert_arr_eq(r->data, want, strlen(want));
    ar_buf_free(r);
    cr_assert_null(r->data, "ar_buf_free zeroes the buffer");
    cr_assert_eq(r->len, 0);
}

Test(call, call_from_main_thread_gets_the_reply, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    ar_pid_t srv = th_spawn(node, &server_b, s);
    for (int i = 0; i < 100; i++) {
        char q[32];
        int n = snprintf(q, sizeof q, "ping %d", i);
        ar_buf_t r = {0};
        int rc = ar_call(node, srv, TAG_ECHO, q, (size_t)n, &r, TH_WAIT_MS);
        check_reply(rc, &r, q);
    }
    ar_buf_t r = {0};
    check_reply(ar_call(node, srv, TAG_ECHO, "x", 1, &r, AR_INFINITY), &r, "x");
    th_node_stop(node);
}

/* ---- a client process: on GO it makes a call and reports ---------------------------------------- */
typedef struct client {
    ar_pid_t server;
    uint32_t tag;
    int timeout_ms;
    int rc;
    char answer[64];
    double elapsed_ms;
    atomic_int done;
    bool release_after; /* after the call, ask the server to answer it late */
    th_log_t log;       /* what arrived afterwards */
} client_t;

static void client_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    client_t *c = state;
    if (m->tag != TAG_GO) {
        th_log_msg(&c->log, m);
        return;
    }
    ar_buf_t r = {0};
    uint64_t t0 = th_now_ns();
    c->rc = ar_call(ar_node(self), c->server, c->tag, "req", 3, &r, c->timeout_ms);
    c->elapsed_ms = th_ms_since(t0);
    if (c->rc == 0) {
        snprintf(c->answer, sizeof c->answer, "%.*s", (int)r.len, (const char *)r.data);
        ar_buf_free(&r);
    }
    if (c->release_after) ar_send(ar_node(self), c->server, TAG_RELEASE, NULL, 0);
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, NULL, 0);
    atomic_store(&c->done, 1);
}
static const ar_behaviour_t client_b = {"client", arg_init, client_handle, NULL};

static void run_client(ar_node_t *node, ar_pid_t cl, client_t *c)
{
    th_send(node, cl, TAG_GO, NULL, 0);
    th_await(atomic_load(&c->done) == 1);
}

Test(call, call_from_a_process_gets_the_reply, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    static client_t c;
    c.server = th_spawn(node, &server_b, s);
    c.tag = TAG_ECHO;
    c.timeout_ms = TH_WAIT_MS;
    ar_pid_t cl = th_spawn(node, &client_b, &c);
    run_client(node, cl, &c);
    cr_assert_eq(c.rc, 0, "%s", ar_err_name(c.rc));
    cr_assert_str_eq(c.answer, "req");
    th_node_stop(node);
}

Test(call, process_calling_another_on_one_scheduler_gets_the_answer, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    server_t *s = new_server();
    static client_t c;
    c.server = th_spawn(node, &server_b, s);
    c.tag = TAG_ECHO;
    c.timeout_ms = TH_WAIT_MS;
    ar_pid_t cl = th_spawn(node, &client_b, &c);
    /* main -> client (call) -> server (call): both processes share the only scheduler */
    ar_buf_t r = {0};
    int rc = ar_call(node, cl, TAG_GO, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "%s", ar_err_name(rc));
    ar_buf_free(&r);
    cr_assert_eq(c.rc, 0, "%s", ar_err_name(c.rc));
    cr_assert_str_eq(c.answer, "req");
    th_node_stop(node);
}

/* A chain of processes each calling the next, on one scheduler: every link is parked at
 * once while the last answers. */
typedef struct chain {
    ar_pid_t next;
} chain_t;
static void chain_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    chain_t *c = state;
    if (ar_pid_is_none(c->next)) {
        ar_reply(ar_node(self), m->reply_to, "end", 3);
        return;
    }
    ar_buf_t r = {0};
    int rc = ar_call(ar_node(self), c->next, 1, NULL, 0, &r, TH_WAIT_MS);
    if (rc == 0) {
        ar_reply(ar_node(self), m->reply_to, r.data, r.len);
        ar_buf_free(&r);
    }
}
static const ar_behaviour_t chain_b = {"chain", arg_init, chain_handle, NULL};

Test(call, chain_of_100_nested_calls_on_one_scheduler, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    enum { N = 100 };
    static chain_t links[N];
    ar_pid_t next = AR_PID_NONE;
    for (int i = N - 1; i >= 0; i--) {
        links[i].next = next;
        next = th_spawn(node, &chain_b, &links[i]);
    }
    ar_buf_t r = {0};
    check_reply(ar_call(node, next, 1, NULL, 0, &r, TH_WAIT_MS), &r, "end");
    th_node_stop(node);
}

/* ---- deferred replies ----------------------------------------------------------------------------- */
typedef struct thread_call {
    ar_node_t *node;
    ar_pid_t to;
    uint32_t tag;
    int timeout_ms;
    int rc;
    ar_buf_t reply;
} thread_call_t;
static void *call_thread(void *arg)
{
    thread_call_t *t = arg;
    t->rc = ar_call(t->node, t->to, t->tag, "q", 1, &t->reply, t->timeout_ms);
    return NULL;
}

Test(call, deferred_reply_from_another_thread_completes_the_call, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    ar_pid_t srv = th_spawn(node, &server_b, s);
    static thread_call_t tc;
    tc = (thread_call_t){node, srv, TAG_DEFER, TH_WAIT_MS, 1, {0}};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, call_thread, &tc), 0);
    th_sem_take(&s->kept_sem);
    /* the server goes on serving others while the call waits */
    ar_buf_t r = {0};
    check_reply(ar_call(node, srv, TAG_ECHO, "meanwhile", 9, &r, TH_WAIT_MS), &r, "meanwhile");
    cr_assert_eq(ar_reply(node, s->kept, "deferred", 8), 0);
    pthread_join(t, NULL);
    check_reply(tc.rc, &tc.reply, "deferred");
    th_node_stop(node);
}

/* Answers a reply_to handed over in a message, from another process. */
static void replier_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    ar_reply_to_t rt;
    memcpy(&rt, m->data, sizeof rt);
    ar_reply(ar_node(self), rt, "from replier", 12);
}
static const ar_behaviour_t replier_b = {"replier", NULL, replier_handle, NULL};

Test(call, deferred_reply_from_another_process_completes_the_call, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    ar_pid_t srv = th_spawn(node, &server_b, s);
    ar_pid_t rep = th_spawn(node, &replier_b, NULL);
    static thread_call_t tc;
    tc = (thread_call_t){node, srv, TAG_DEFER, TH_WAIT_MS, 1, {0}};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, call_thread, &tc), 0);
    th_sem_take(&s->kept_sem);
    th_send(node, rep, 1, &s->kept, sizeof s->kept);
    pthread_join(t, NULL);
    check_reply(tc.rc, &tc.reply, "from replier");

    /* And a process caller, answered by the replier process. */
    static client_t c;
    c.server = srv;
    c.tag = TAG_DEFER;
    c.timeout_ms = TH_WAIT_MS;
    ar_pid_t cl = th_spawn(node, &client_b, &c);
    th_send(node, cl, TAG_GO, NULL, 0);
    th_sem_take(&s->kept_sem);
    th_send(node, rep, 1, &s->kept, sizeof s->kept);
    th_await(atomic_load(&c.done) == 1);
    cr_assert_eq(c.rc, 0, "%s", ar_err_name(c.rc));
    cr_assert_str_eq(c.answer, "from replier");
    th_node_stop(node);
}

/* ---- failures ------------------------------------------------------------------------------------- */
static void self_call_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    int *rc = state;
    ar_buf_t r = {0};
    *rc = ar_call(ar_node(self), ar_self(self), 1, NULL, 0, &r, 1000);
    ar_reply(ar_node(self), m->reply_to, NULL, 0);
}
static const ar_behaviour_t self_call_b = {"self_call", arg_init, self_call_handle, NULL};

Test(call, call_to_self_is_edeadlk, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static int rc = 1;
    ar_pid_t p = th_spawn(node, &self_call_b, &rc);
    ar_buf_t r = {0};
    cr_assert_eq(ar_call(node, p, 1, NULL, 0, &r, TH_WAIT_MS), 0);
    ar_buf_free(&r);
    cr_assert_eq(rc, AR_EDEADLK, "got %d (%s)", rc, ar_err_name(rc));
    th_node_stop(node);
}

static void stopper_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state, (void)m;
    ar_stop(self, AR_REASON(AR_NORMAL));
}
static const ar_behaviour_t stopper_b = {"stopper", NULL, stopper_handle, NULL};

static ar_pid_t dead_pid(ar_node_t *node)
{
    ar_pid_t p = th_spawn(node, &stopper_b, NULL);
    th_send(node, p, 1, NULL, 0);
    th_await(!th_proc_alive(node, p));
    return p;
}

Test(call, call_to_a_dead_pid_is_enoproc_at_once, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t dead = dead_pid(node);
    ar_buf_t r = {0};
    uint64_t t0 = th_now_ns();
    int rc = ar_call(node, dead, 1, "x", 1, &r, 20000);
    cr_assert_eq(rc, AR_ENOPROC, "got %d (%s)", rc, ar_err_name(rc));
    cr_assert_lt(th_ms_since(t0), 10000);

    static client_t c;
    c.server = dead;
    c.tag = TAG_ECHO;
    c.timeout_ms = 20000;
    ar_pid_t cl = th_spawn(node, &client_b, &c);
    run_client(node, cl, &c);
    cr_assert_eq(c.rc, AR_ENOPROC, "from a process: %d (%s)", c.rc, ar_err_name(c.rc));
    cr_assert_lt(c.elapsed_ms, 10000);
    th_node_stop(node);
}

Test(call, call_without_reply_times_out_with_etimedout, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    ar_pid_t srv = th_spawn(node, &server_b, s);
    ar_buf_t r = {0};
    uint64_t t0 = th_now_ns();
    int rc = ar_call(node, srv, TAG_DEFER, "x", 1, &r, 100);
    double ms = th_ms_since(t0);
    cr_assert_eq(rc, AR_ETIMEDOUT, "got %d (%s)", rc, ar_err_name(rc));
    cr_assert_geq(ms, 95.0, "returned after %.1f ms, before its 100 ms timeout", ms);
    cr_assert_eq(r.data, NULL);

    static client_t c;
    c.server = srv;
    c.tag = TAG_DEFER;
    c.timeout_ms = 100;
    ar_pid_t cl = th_spawn(node, &client_b, &c);
    run_client(node, cl, &c);
    cr_assert_eq(c.rc, AR_ETIMEDOUT, "from a process: %d (%s)", c.rc, ar_err_name(c.rc));
    cr_assert_geq(c.elapsed_ms, 95.0, "returned after %.1f ms", c.elapsed_ms);
    th_node_stop(node);
}

Test(call, call_timeout_with_one_scheduler_parks_only_the_caller, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    server_t *s = new_server();
    static client_t c;
    c.server = th_spawn(node, &server_b, s);
    c.tag = TAG_DEFER;
    c.timeout_ms = 3000; /* the checks below run before it, with seconds to spare */
    ar_pid_t cl = th_spawn(node, &client_b, &c);
    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    th_send(node, cl, TAG_GO, NULL, 0);
    th_sem_take(&s->kept_sem);
    th_await(th_proc_blocked(node, cl));
    /* while the client waits on the only scheduler, others still run */
    th_echo_check(node, echo);
    cr_assert_eq(atomic_load(&c.done), 0, "the client's call returned before its timeout");
    th_await(atomic_load(&c.done) == 1);
    cr_assert_eq(c.rc, AR_ETIMEDOUT);
    th_node_stop(node);
}

/* ---- late replies ------------------------------------------------------------------------------------ */
/* The client times out and asks the server to answer late; the server answers and then
 * sends a marker: by per-pair order the marker comes after the late reply, so if the
 * reply ever reached the client it would be logged before the marker. */
Test(call, late_reply_after_timeout_never_reaches_the_callers_handle, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    static client_t c;
    c.server = th_spawn(node, &server_b, s);
    c.tag = TAG_DEFER;
    c.timeout_ms = 50;
    c.release_after = true;
    ar_pid_t cl = th_spawn(node, &client_b, &c);
    run_client(node, cl, &c);
    cr_assert_eq(c.rc, AR_ETIMEDOUT);
    th_await(th_log_len(&c.log) >= 1);
    cr_assert_eq(atomic_load(&s->late_rc), 0, "ar_reply to a caller that gave up returns 0");
    /* A second late answer, from the main thread, then a marker from main. */
    cr_assert_eq(ar_reply(node, s->kept, "late from main", 14), 0);
    th_send(node, cl, TAG_MARKER, "main marker", 11);
    th_await(th_log_len(&c.log) >= 2);
    cr_assert_eq(c.log.e[0].kind, AR_MSG_CAST, "first message after the timeout: kind %d tag %u",
                 c.log.e[0].kind, c.log.e[0].tag);
    cr_assert_eq(c.log.e[0].tag, TAG_MARKER);
    cr_assert(ar_pid_eq(c.log.e[0].from, c.server));
    cr_assert_eq(c.log.e[1].kind, AR_MSG_CAST, "second message: kind %d tag %u",
                 c.log.e[1].kind, c.log.e[1].tag);
    cr_assert_str_eq(c.log.e[1].data, "main marker");
    cr_assert_eq(th_log_len(&c.log), 2);
    th_node_stop(node);
}

/* Same, checked with ar_receive inside the handler that timed out. */
typedef struct late_rx {
    ar_pid_t server;
    int call_rc, recv_rc;
    ar_msg_kind_t kind;
    uint32_t tag;
    ar_pid_t from;
    atomic_int done;
} late_rx_t;
static void late_rx_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    late_rx_t *l = state;
    ar_node_t *node = ar_node(self);
    ar_buf_t r = {0};
    l->call_rc = ar_call(node, l->server, TAG_DEFER, NULL, 0, &r, 50);
    ar_send(node, l->server, TAG_RELEASE, NULL, 0);
    ar_msg_t *got = NULL;
    l->recv_rc = ar_receive(self, NULL, NULL, TH_WAIT_MS, &got);
    if (l->recv_rc == 0) {
        l->kind = got->kind;
        l->tag = got->tag;
        l->from = got->from;
        ar_msg_release(self, got);
    }
    atomic_store(&l->done, 1);
}
static const ar_behaviour_t late_rx_b = {"late_rx", arg_init, late_rx_handle, NULL};

Test(call, late_reply_after_timeout_never_reaches_the_callers_receive, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    static late_rx_t l;
    l.server = th_spawn(node, &server_b, s);
    ar_pid_t p = th_spawn(node, &late_rx_b, &l);
    th_send(node, p, TAG_GO, NULL, 0);
    th_await(atomic_load(&l.done) == 1);
    cr_assert_eq(l.call_rc, AR_ETIMEDOUT);
    cr_assert_eq(atomic_load(&s->late_rc), 0);
    cr_assert_eq(l.recv_rc, 0, "%s", ar_err_name(l.recv_rc));
    cr_assert_eq(l.kind, AR_MSG_CAST, "got kind %d tag %u instead of the marker", l.kind, l.tag);
    cr_assert_eq(l.tag, TAG_MARKER);
    cr_assert(ar_pid_eq(l.from, l.server));
    th_node_stop(node);
}

Test(call, late_reply_to_a_thread_caller_is_not_taken_as_its_next_calls_reply,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    ar_pid_t srv = th_spawn(node, &server_b, s);
    ar_buf_t r = {0};
    cr_assert_eq(ar_call(node, srv, TAG_DEFER, NULL, 0, &r, 50), AR_ETIMEDOUT);
    /* The server answers the old call ("old") and then this one ("new"). */
    check_reply(ar_call(node, srv, TAG_RELEASE_OLD, NULL, 0, &r, TH_WAIT_MS), &r, "new");
    cr_assert_eq(atomic_load(&s->late_rc), 0);
    check_reply(ar_call(node, srv, TAG_ECHO, "again", 5, &r, TH_WAIT_MS), &r, "again");
    th_node_stop(node);
}

/* ---- ar_ask --------------------------------------------------------------------------------------------- */
/* An ask whose answer (or AR_NOPROC) must come before its timeout: seconds, whatever the
 * load. The marker that proves no second REPLY follows is due 200 ms after the timeout. */
#define ASK_MS 2000
enum ask_mode { ASK_HANDLE, ASK_RECEIVE };
typedef struct asker {
    ar_pid_t to;
    uint32_t tag;
    int timeout_ms;
    enum ask_mode mode;
    int ask_rc, recv_rc;
    ar_ref_t ref;
    atomic_int replies; /* REPLY messages seen */
    ar_exit_code_t code;
    ar_ref_t got_ref;
    char data[32];
    atomic_int marker; /* a later timer arrived */
    int replies_at_marker;
    bool release_after_reply; /* tell the server to answer late */
} asker_t;

static bool is_reply_ref(const ar_msg_t *m, void *ud)
{
    return m->kind == AR_MSG_REPLY && m->ref == *(ar_ref_t *)ud;
}

static void asker_record(asker_t *a, const ar_msg_t *m)
{
    a->code = m->reason.code;
    a->got_ref = m->ref;
    snprintf(a->data, sizeof a->data, "%.*s", (int)m->len, (const char *)m->data);
    atomic_fetch_add(&a->replies, 1);
}

static void asker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    asker_t *a = state;
    ar_node_t *node = ar_node(self);
    if (m->kind == AR_MSG_CAST && m->tag == TAG_GO) {
        a->ask_rc = ar_ask(self, a->to, a->tag, "asked", 5, a->timeout_ms, &a->ref);
        if (a->ask_rc == 0 && a->mode == ASK_RECEIVE) {
            ar_msg_t *got = NULL;
            a->recv_rc = ar_receive(self, is_reply_ref, &a->ref, TH_WAIT_MS, &got);
            if (a->recv_rc == 0) {
                asker_record(a, got);
                ar_msg_release(self, got);
                /* a timer set now fires after the ask's own timeout would have */
                ar_send_after(node, a->timeout_ms + 200, ar_self(self), TAG_MARKER, NULL, 0,
                              NULL);
            }
        }
    } else if (m->kind == AR_MSG_REPLY) {
        asker_record(a, m);
        if (a->release_after_reply) {
            ar_send(node, a->to, TAG_RELEASE, NULL, 0);
        } else {
            ar_send_after(node, a->timeout_ms + 200, ar_self(self), TAG_MARKER, NULL, 0, NULL);
        }
    } else if (m->tag == TAG_MARKER) {
        a->replies_at_marker = atomic_load(&a->replies);
        atomic_store(&a->marker, 1);
    }
}
static const ar_behaviour_t asker_b = {"asker", arg_init, asker_handle, NULL};

static void check_ask_answer(enum ask_mode mode)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    static asker_t a;
    a.to = th_spawn(node, &server_b, s);
    a.tag = TAG_ECHO;
    a.timeout_ms = ASK_MS;
    a.mode = mode;
    ar_pid_t p = th_spawn(node, &asker_b, &a);
    th_send(node, p, TAG_GO, NULL, 0);
    th_await(atomic_load(&a.marker) == 1);
    cr_assert_eq(a.ask_rc, 0, "%s", ar_err_name(a.ask_rc));
    cr_assert_neq(a.ref, 0);
    if (mode == ASK_RECEIVE) cr_assert_eq(a.recv_rc, 0);
    cr_assert_eq(a.got_ref, a.ref);
    cr_assert_eq(a.code, AR_NORMAL, "reason %s", ar_exit_code_name(a.code));
    cr_assert_str_eq(a.data, "asked");
    cr_assert_eq(a.replies_at_marker, 1, "exactly one REPLY, none after the ask's timeout");
    th_node_stop(node);
}

Test(call, ask_answer_arrives_as_one_reply_with_the_ref_in_handle, .timeout = TH_TIMEOUT)
{
    check_ask_answer(ASK_HANDLE);
}

Test(call, ask_answer_arrives_as_one_reply_with_the_ref_in_receive, .timeout = TH_TIMEOUT)
{
    check_ask_answer(ASK_RECEIVE);
}

Test(call, ask_to_a_dead_pid_replies_noproc, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static asker_t a;
    a.to = dead_pid(node);
    a.tag = TAG_ECHO;
    a.timeout_ms = ASK_MS;
    ar_pid_t p = th_spawn(node, &asker_b, &a);
    th_send(node, p, TAG_GO, NULL, 0);
    th_await(atomic_load(&a.marker) == 1);
    cr_assert_eq(a.ask_rc, 0, "ar_ask returns 0 once sent, even to a dead pid: %s",
                 ar_err_name(a.ask_rc));
    cr_assert_eq(a.got_ref, a.ref);
    cr_assert_eq(a.code, AR_NOPROC, "reason %s", ar_exit_code_name(a.code));
    cr_assert_eq(a.replies_at_marker, 1);
    th_node_stop(node);
}

Test(call, ask_without_answer_replies_timeout_and_the_late_answer_is_dropped,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    server_t *s = new_server();
    static asker_t a;
    a.to = th_spawn(node, &server_b, s);
    a.tag = TAG_DEFER;
    a.timeout_ms = 50;
    a.release_after_reply = true; /* the server then answers late and sends a marker */
    ar_pid_t p = th_spawn(node, &asker_b, &a);
    th_send(node, p, TAG_GO, NULL, 0);
    th_await(atomic_load(&a.marker) == 1);
    cr_assert_eq(a.ask_rc, 0);
    cr_assert_eq(a.got_ref, a.ref);
    cr_assert_eq(a.code, AR_TIMEOUT, "reason %s", ar_exit_code_name(a.code));
    cr_assert_eq(atomic_load(&s->late_rc), 0);
    cr_assert_eq(a.replies_at_marker, 1, "the late answer came as a second REPLY");
    th_node_stop(node);
}

/* ---- order of calls and sends from one client ------------------------------------------------------- */
typedef struct order_srv {
    uint32_t seen[4096];
    atomic_int n;
} order_srv_t;
static void order_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    order_srv_t *o = state;
    if (m->tag != TAG_SEQ) return;
    uint32_t v;
    memcpy(&v, m->data, sizeof v);
    int n = atomic_load(&o->n);
    if (n < 4096) o->seen[n] = v;
    atomic_store(&o->n, n + 1);
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, NULL, 0);
}
static const ar_behaviour_t order_b = {"order_srv", arg_init, order_handle, NULL};

/* A client process: casts and asks interleaved, without waiting in between. */
static void mixed_client_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind != AR_MSG_CAST || m->tag != TAG_GO) return;
    ar_pid_t to;
    memcpy(&to, m->data, sizeof to);
    for (uint32_t i = 0; i < 1000; i++) {
        ar_ref_t ref;
        if (i % 3 == 1)
            ar_ask(self, to, TAG_SEQ, &i, sizeof i, TH_WAIT_MS, &ref);
        else
            ar_send(ar_node(self), to, TAG_SEQ, &i, sizeof i);
    }
}
static const ar_behaviour_t mixed_client_b = {"mixed_client", NULL, mixed_client_handle, NULL};

static void check_order(order_srv_t *o, int n)
{
    th_await(atomic_load(&o->n) == n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(o->seen[i], (uint32_t)i, "position %d holds %u", i, o->seen[i]);
}

Test(call, calls_and_sends_from_one_thread_client_are_handled_in_order,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static order_srv_t o;
    ar_pid_t srv = th_spawn(node, &order_b, &o);
    for (uint32_t i = 0; i < 1000; i++) {
        if (i % 5 == 4) {
            ar_buf_t r = {0};
            cr_assert_eq(ar_call(node, srv, TAG_SEQ, &i, sizeof i, &r, TH_WAIT_MS), 0);
            ar_buf_free(&r);
        } else {
            th_send(node, srv, TAG_SEQ, &i, sizeof i);
        }
    }
    check_order(&o, 1000);
    th_node_stop(node);
}

Test(call, asks_and_sends_from_one_process_client_are_handled_in_order,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static order_srv_t o;
    ar_pid_t srv = th_spawn(node, &order_b, &o);
    ar_pid_t cl = th_spawn(node, &mixed_client_b, NULL);
    th_send(node, cl, TAG_GO, &srv, sizeof srv);
    check_order(&o, 1000);
    th_node_stop(node);
}

/* ---- many outstanding asks -------------------------------------------------------------------------- *
 * One process keeps thousands of asks pending at once (what a remote connection carries)
 * to a holder that keeps every CALL and answers only when told, in an order that is not
 * the asking order: every REPLY must find its own ask among all the others, exactly once. */
enum { MANY = 20000, SHORT_MS = 50 };

typedef struct holder {
    ar_reply_to_t kept[MANY];
    uint32_t val[MANY];
    int order[MANY];
    atomic_int held;          /* CALLs kept (release: kept and val are written first) */
    bool reverse;             /* answer the last kept first; else in a shuffled order */
    uint64_t seed;            /* of the shuffle */
    atomic_int answered, reply_errors;
} holder_t;

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Answers every kept call with its own payload, from whichever thread calls this. */
static void answer_all(ar_node_t *node, holder_t *h)
{
    int n = atomic_load_explicit(&h->held, memory_order_acquire);
    uint64_t s = h->seed;
    for (int i = 0; i < n; i++) h->order[i] = h->reverse ? n - 1 - i : i;
    for (int i = n - 1; !h->reverse && i > 0; i--) { /* Fisher-Yates */
        int j = (int)(xorshift(&s) % (uint64_t)(i + 1)), t = h->order[i];
        h->order[i] = h->order[j];
        h->order[j] = t;
    }
    for (int i = 0; i < n; i++) {
        int k = h->order[i];
        if (ar_reply(node, h->kept[k], &h->val[k], sizeof h->val[k]) != 0)
            atomic_fetch_add(&h->reply_errors, 1);
        atomic_fetch_add(&h->answered, 1);
    }
}

static void holder_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    holder_t *h = state;
    if (m->kind == AR_MSG_CALL && m->tag == TAG_HOLD) {
        int n = atomic_load_explicit(&h->held, memory_order_relaxed);
        if (n == MANY || m->len != sizeof h->val[n]) return;
        h->kept[n] = m->reply_to;
        memcpy(&h->val[n], m->data, sizeof h->val[n]);
        /* release: the test thread that sees the count sees the kept call */
        atomic_store_explicit(&h->held, n + 1, memory_order_release);
    } else if (m->tag == TAG_ANSWER) {
        answer_all(ar_node(self), h);
    } else if (m->tag == TAG_PING) { /* after every answer it sent */
        ar_send(ar_node(self), m->from, TAG_MARKER, NULL, 0);
    }
}
static const ar_behaviour_t holder_b = {"holder", arg_init, holder_handle, NULL};

/* On GO, asks n times (payload: the ask's index); the odd asks time out after timeout_ms,
 * the even ones never, but every short_every-th (if set) after SHORT_MS. Once it has as
 * many replies as asks that succeeded, it pings the holder: the marker that comes back
 * follows everything the holder answered. */
typedef struct many_asker {
    ar_pid_t to;
    int n, timeout_ms, short_every;
    long fail_at;    /* > 0: the fail_at-th allocation while it asks fails (alloc sweep) */
    th_alloc_t *alloc;
    bool injected;
    int ask_rc[MANY];
    ar_ref_t ref[MANY];
    uint8_t got[MANY];
    ar_exit_code_t code[MANY];
    int expect;      /* asks that returned 0 */
    int replies, stray;
    atomic_int asked, timeouts, done;
} many_asker_t;

static bool is_short(const many_asker_t *a, int i)
{
    return a->short_every && i % a->short_every == a->short_every / 2;
}

/* The ask a REPLY answers (its payload names it; a failure only its ref), or -1. */
static int answered_ask(const many_asker_t *a, const ar_msg_t *m)
{
    if (m->reason.code == AR_NORMAL) {
        uint32_t i;
        if (m->len != sizeof i) return -1;
        memcpy(&i, m->data, sizeof i);
        return i < (uint32_t)a->n && a->ask_rc[i] == 0 && a->ref[i] == m->ref ? (int)i : -1;
    }
    for (int i = 0; i < a->n; i++)
        if (a->ask_rc[i] == 0 && a->ref[i] == m->ref) return i;
    return -1;
}

static void many_asker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    many_asker_t *a = state;
    ar_node_t *node = ar_node(self);
    if (m->kind == AR_MSG_CAST && m->tag == TAG_GO) {
        if (a->fail_at) th_alloc_arm(a->alloc, a->fail_at);
        for (uint32_t i = 0; i < (uint32_t)a->n; i++) {
            int ms = is_short(a, (int)i) ? SHORT_MS : (i & 1) ? a->timeout_ms : AR_INFINITY;
            a->ask_rc[i] = ar_ask(self, a->to, TAG_HOLD, &i, sizeof i, ms, &a->ref[i]);
            if (a->ask_rc[i] == 0) a->expect++;
        }
        if (a->fail_at) a->injected = th_alloc_disarm(a->alloc);
        atomic_store(&a->asked, 1);
        if (a->expect == 0) ar_send(node, a->to, TAG_PING, NULL, 0);
    } else if (m->kind == AR_MSG_REPLY) {
        int i = answered_ask(a, m);
        if (i < 0) {
            a->stray++;
        } else {
            a->got[i]++;
            a->code[i] = m->reason.code;
        }
        if (m->reason.code == AR_TIMEOUT) atomic_fetch_add(&a->timeouts, 1);
        if (++a->replies == a->expect) ar_send(node, a->to, TAG_PING, NULL, 0);
    } else if (m->tag == TAG_MARKER) {
        atomic_store(&a->done, 1);
    }
}
static const ar_behaviour_t many_asker_b = {"many_asker", arg_init, many_asker_handle, NULL};

/* Spawns the holder and the asker, which asks n times; returns once every ask is made and
 * every one that succeeded is held. */
static ar_pid_t start_many(ar_node_t *node, many_asker_t *a, holder_t *h, int n, int short_every)
{
    memset(h, 0, sizeof *h);
    th_alloc_t *alloc = a->alloc;
    long fail_at = a->fail_at;
    memset(a, 0, sizeof *a);
    a->alloc = alloc;
    a->fail_at = fail_at;
    a->to = th_spawn(node, &holder_b, h);
    a->n = n;
    a->timeout_ms = TH_WAIT_MS;
    a->short_every = short_every;
    ar_pid_t p = th_spawn(node, &many_asker_b, a);
    th_send(node, p, TAG_GO, NULL, 0);
    th_await(atomic_load(&a->asked) == 1);
    th_await(atomic_load_explicit(&h->held, memory_order_acquire) == a->expect);
    return p;
}

/* After the marker: each ask that succeeded had exactly one REPLY, with its own ref and
 * payload (AR_TIMEOUT for the short ones); no other REPLY came. */
static void check_many(ar_node_t *node, many_asker_t *a, long n_alloc)
{
    th_await(atomic_load(&a->done) == 1);
    cr_assert_eq(a->stray, 0, "n=%ld: %d replies answered no ask (wrong ref or payload)",
                 n_alloc, a->stray);
    for (int i = 0; i < a->n; i++) {
        if (a->ask_rc[i] != 0) {
            cr_assert_eq(a->got[i], 0, "n=%ld: ask %d failed yet has a reply", n_alloc, i);
            continue;
        }
        cr_assert_eq(a->got[i], 1, "n=%ld: ask %d has %d replies", n_alloc, i, a->got[i]);
        ar_exit_code_t want = is_short(a, i) ? AR_TIMEOUT : AR_NORMAL;
        cr_assert_eq(a->code[i], want, "n=%ld: ask %d answered %s", n_alloc, i,
                     ar_exit_code_name(a->code[i]));
    }
    cr_assert_eq(a->replies, a->expect, "n=%ld", n_alloc);
    (void)node;
}

static many_asker_t many_a;
static holder_t many_h;

Test(call, twenty_thousand_asks_answered_in_reverse_each_get_their_own_reply_once,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    start_many(node, &many_a, &many_h, MANY, 0);
    cr_assert_eq(many_a.expect, MANY);
    many_h.reverse = true;
    th_send(node, many_a.to, TAG_ANSWER, NULL, 0); /* the holder answers: nothing owed after */
    check_many(node, &many_a, 0);
    cr_assert_eq(atomic_load(&many_h.reply_errors), 0);
    th_node_stop(node);
}

Test(call, twenty_thousand_asks_answered_shuffled_from_another_thread_each_get_their_own_reply_once,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    start_many(node, &many_a, &many_h, MANY, 0);
    cr_assert_eq(many_a.expect, MANY);
    many_h.seed = 0x9e3779b97f4a7c15u;
    cr_log_info("shuffle seed %#llx", (unsigned long long)many_h.seed);
    /* answers from outside the holder: each settled ask tells the holder it owes nothing */
    answer_all(node, &many_h);
    check_many(node, &many_a, 0);
    cr_assert_eq(atomic_load(&many_h.reply_errors), 0);
    th_node_stop(node);
}

Test(call, asks_timing_out_among_thousands_pending_get_only_their_timeout_and_the_rest_arrive,
     .timeout = TH_TIMEOUT)
{
    enum { N = 5000, EVERY = 1000 };
    ar_node_t *node = th_node(2);
    start_many(node, &many_a, &many_h, N, EVERY);
    th_await(atomic_load(&many_a.timeouts) == N / EVERY);
    /* the held calls of the asks that timed out are answered too: those answers are late */
    many_h.reverse = true;
    th_send(node, many_a.to, TAG_ANSWER, NULL, 0);
    check_many(node, &many_a, 0);
    cr_assert_eq(atomic_load(&many_h.reply_errors), 0);
    th_node_stop(node);
}

Test(call, asks_pending_when_the_asker_is_killed_are_freed_and_their_answers_dropped,
     .timeout = TH_TIMEOUT)
{
    static th_alloc_t counting;
    th_alloc_install(&counting);
    ar_node_t *node = th_node(2);
    ar_pid_t asker = start_many(node, &many_a, &many_h, 5000, 0);
    cr_assert_eq(ar_exit(node, asker, AR_REASON(AR_KILL)), 0);
    th_await(!th_proc_alive(node, asker));
    many_h.reverse = true;
    th_send(node, many_a.to, TAG_ANSWER, NULL, 0);
    th_await(atomic_load(&many_h.answered) == 5000);
    cr_assert_eq(atomic_load(&many_h.reply_errors), 0, "a reply to a gone asker is no error");
    th_node_stop(node);
    cr_assert_eq(atomic_load(&counting.live), 0, "%ld blocks leaked", atomic_load(&counting.live));
}

extern bool ar__pool_bypass; /* white-box: see runtime/internal.h */

/* Once a burst of asks is over, the asker and the holder hold no memory for it: the
 * tables that grew for thousands of asks and owed calls shrink back, whether the holder
 * answered (it owes nothing after) or another thread did (each settled ask tells the
 * holder to let its call go). One scheduler: a timer is cancelled (and freed) on the
 * thread that armed it. */
Test(call, a_burst_of_asks_once_answered_leaves_no_memory_behind, .timeout = TH_TIMEOUT)
{
    static th_alloc_t counting;
    ar__pool_bypass = true; /* every envelope from the hook and back to it at once */
    th_alloc_install(&counting);
    ar_node_t *node = th_node(1);
    for (int round = 0; round < 2; round++) {
        memset(&many_a, 0, sizeof many_a);
        memset(&many_h, 0, sizeof many_h);
        many_a.to = th_spawn(node, &holder_b, &many_h);
        many_a.n = MANY;
        many_a.timeout_ms = TH_WAIT_MS;
        ar_pid_t p = th_spawn(node, &many_asker_b, &many_a);
        long before = atomic_load(&counting.live);
        th_send(node, p, TAG_GO, NULL, 0);
        th_await(atomic_load_explicit(&many_h.held, memory_order_acquire) == MANY);
        if (round == 0) {
            many_h.reverse = true;
            th_send(node, many_a.to, TAG_ANSWER, NULL, 0);
        } else {
            answer_all(node, &many_h);
        }
        check_many(node, &many_a, 0);
        th_await(atomic_load(&counting.live) == before);
        cr_assert_eq(ar_exit(node, p, AR_REASON(AR_KILL)), 0);
        cr_assert_eq(ar_exit(node, many_a.to, AR_REASON(AR_KILL)), 0);
        th_await(th_stats(node).processes == 0);
    }
    th_node_stop(node);
    cr_assert_eq(atomic_load(&counting.live), 0);
}

/* The alloc sweep (test_alloc.c) over a burst of asks: the n-th allocation while one
 * process makes SWEEP_ASKS asks fails. The ask it hit returns AR_ENOMEM and sends nothing
 * (the holder never sees it); a failure that hits the table's growth fails nothing; every
 * other ask gets exactly its own reply; nothing leaks. */
enum { SWEEP_ASKS = 40, SWEEP_MAX = 2000 };

static bool many_asks_once(th_alloc_t *alloc, long n)
{
    ar_node_t *node = th_node(2);
    many_a.alloc = alloc;
    many_a.fail_at = n;
    start_many(node, &many_a, &many_h, SWEEP_ASKS, 0);
    int failed = 0;
    for (int i = 0; i < SWEEP_ASKS; i++)
        if (many_a.ask_rc[i] != 0) {
            cr_assert_eq(many_a.ask_rc[i], AR_ENOMEM, "n=%ld: ask %d: %s", n, i,
                         ar_err_name(many_a.ask_rc[i]));
            failed++;
        }
    cr_assert(failed == 0 || (failed == 1 && many_a.injected), "n=%ld: %d asks failed", n, failed);
    many_h.reverse = true;
    th_send(node, many_a.to, TAG_ANSWER, NULL, 0);
    check_many(node, &many_a, n);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc->live), 0, "n=%ld: %ld blocks leaked", n,
                 atomic_load(&alloc->live));
    return many_a.injected;
}

Test(call, many_asks_out_of_memory_fail_one_by_one_and_every_other_reply_arrives_once,
     .timeout = TH_TIMEOUT)
{
    static th_alloc_t alloc;
    ar__pool_bypass = true;
    th_alloc_install(&alloc);
    long n = 1;
    while (n <= SWEEP_MAX && many_asks_once(&alloc, n)) n++;
    cr_assert(n <= SWEEP_MAX, "the asks still failed after %d allocations", SWEEP_MAX);
    cr_assert_gt(n, 1, "no allocation of the asks failed");
    cr_log_info("swept %ld allocations", n - 1);
}
