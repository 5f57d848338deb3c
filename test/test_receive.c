/* Selective receive and sleep: first match taken, the rest stay queued in order for
 * handle(); timeouts; polling; parking never blocks the scheduler thread. */
#include "test_helpers.h"

enum {
    TAG_START = 100,
    TAG_WANTED = 7,
};

typedef struct rx {
    th_log_t log;       /* every message handle() saw, and the received one */
    uint32_t want_tag;  /* what the match function looks for (its ud) */
    int timeout_ms;
    int rc;
    double elapsed_ms;
    ar_msg_kind_t got_kind;
    uint32_t got_tag;
    char got_data[32];
    int ud_ok;          /* the match function got the ud it was given */
    atomic_int done;
} rx_t;

static int arg_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static bool match_tag(const ar_msg_t *m, void *ud)
{
    rx_t *r = ud;
    r->ud_ok = 1;
    return m->tag == r->want_tag;
}

/* On START: one selective receive, recorded; every other message is logged. */
static void rx_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    rx_t *r = state;
    if (th_sync_answer(self, &r->log, m)) return;
    th_log_msg(&r->log, m);
    if (m->tag != TAG_START) return;
    ar_msg_t *got = NULL;
    uint64_t t0 = th_now_ns();
    r->rc = ar_receive(self, match_tag, r, r->timeout_ms, &got);
    r->elapsed_ms = th_ms_since(t0);
    if (r->rc == 0) {
        r->got_kind = got->kind;
        r->got_tag = got->tag;
        snprintf(r->got_data, sizeof r->got_data, "%.*s", (int)got->len,
                 (const char *)got->data);
        ar_msg_release(self, got);
    }
    atomic_store(&r->done, 1);
}
static const ar_behaviour_t rx_b = {"rx", arg_init, rx_handle, NULL};

static void check_selective(unsigned schedulers, bool queue_first)
{
    ar_node_t *node = th_node(schedulers);
    static rx_t r;
    memset(&r, 0, sizeof r);
    r.want_tag = TAG_WANTED;
    r.timeout_ms = TH_WAIT_MS;
    ar_pid_t p = th_spawn(node, &rx_b, &r);
    if (!queue_first) {
        /* the receive is already waiting when the messages come */
        th_send(node, p, TAG_START, NULL, 0);
        th_await(th_proc_blocked(node, p));
    }
    const struct {
        uint32_t tag;
        const char *data;
    } msgs[] = {{1, "one"}, {2, "two"}, {TAG_WANTED, "first"}, {3, "three"},
                {TAG_WANTED, "second"}, {4, "four"}};
    enum { M = sizeof msgs / sizeof msgs[0] };
    if (queue_first) th_send(node, p, TAG_START, NULL, 0);
    for (int i = 0; i < M; i++) th_send(node, p, msgs[i].tag, msgs[i].data, strlen(msgs[i].data));
    th_await(atomic_load(&r.done) == 1);
    th_await(th_log_len(&r.log) == M); /* START + the five not received */
    cr_assert_eq(r.rc, 0, "%s", ar_err_name(r.rc));
    cr_assert_eq(r.ud_ok, 1);
    cr_assert_eq(r.got_tag, TAG_WANTED);
    cr_assert_str_eq(r.got_data, "first", "the first matching message is taken");
    cr_assert_eq(r.got_kind, AR_MSG_CAST);
    const char *want[] = {"", "one", "two", "three", "second", "four"};
    cr_assert_eq(r.log.e[0].tag, TAG_START);
    for (int i = 1; i < M; i++)
        cr_assert_str_eq(r.log.e[i].data, want[i], "handle() #%d got \"%s\"", i,
                         r.log.e[i].data);
    cr_assert_eq(th_sync(node, p), M, "nothing else was handled");
    th_node_stop(node);
}

Test(receive, selective_receive_takes_first_match_and_rest_are_handled_in_order,
     .timeout = TH_TIMEOUT)
{
    check_selective(2, true);
}

Test(receive, selective_receive_waiting_before_messages_arrive_takes_first_match,
     .timeout = TH_TIMEOUT)
{
    check_selective(2, false);
}

Test(receive, selective_receive_with_one_scheduler_keeps_order, .timeout = TH_TIMEOUT)
{
    check_selective(1, false);
}

/* A process that busy-waits in its handler: with one scheduler, nothing else runs until
 * it is released, so what is sent meanwhile is surely queued. */
typedef struct hog {
    atomic_int running, release;
} hog_t;
static void hog_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)m;
    hog_t *h = state;
    atomic_store(&h->running, 1);
    while (!atomic_load(&h->release)) th_nap();
}
static const ar_behaviour_t hog_b = {"hog", arg_init, hog_handle, NULL};

Test(receive, poll_finds_a_match_queued_behind_the_current_message, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    static rx_t r;
    static hog_t hog;
    r.want_tag = TAG_WANTED;
    r.timeout_ms = 0; /* a poll: the match is already queued */
    ar_pid_t p = th_spawn(node, &rx_b, &r);
    ar_pid_t h = th_spawn(node, &hog_b, &hog);
    th_send(node, h, 1, NULL, 0);
    th_await(atomic_load(&hog.running) == 1);
    th_send(node, p, TAG_START, NULL, 0);
    th_send(node, p, 1, "one", 3);
    th_send(node, p, TAG_WANTED, "x", 1);
    th_send(node, p, 2, "two", 3);
    atomic_store(&hog.release, 1);
    th_await(atomic_load(&r.done) == 1);
    cr_assert_eq(r.rc, 0, "%s", ar_err_name(r.rc));
    cr_assert_str_eq(r.got_data, "x");
    th_await(th_log_len(&r.log) == 3);
    cr_assert_str_eq(r.log.e[1].data, "one");
    cr_assert_str_eq(r.log.e[2].data, "two");
    th_node_stop(node);
}

Test(receive, receive_timeout_returns_etimedout_and_keeps_the_queue,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static rx_t r;
    r.want_tag = 999;
    r.timeout_ms = 100;
    ar_pid_t p = th_spawn(node, &rx_b, &r);
    th_send(node, p, TAG_START, NULL, 0);
    th_send(node, p, 1, "kept", 4);
    th_await(atomic_load(&r.done) == 1);
    cr_assert_eq(r.rc, AR_ETIMEDOUT, "got %d (%s)", r.rc, ar_err_name(r.rc));
    cr_assert_geq(r.elapsed_ms, 95.0, "returned after %.1f ms of a 100 ms timeout",
                  r.elapsed_ms);
    th_await(th_log_len(&r.log) == 2);
    cr_assert_str_eq(r.log.e[1].data, "kept", "the unmatched message is handled afterwards");
    th_node_stop(node);
}

/* ---- polling with 0 ------------------------------------------------------------------------ */
typedef struct poller {
    int empty_rc, queued_rc;
    uint32_t queued_tag;
    double empty_ms;
    atomic_int done;
    th_log_t log;
} poller_t;

static void poller_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    poller_t *p = state;
    if (th_sync_answer(self, &p->log, m)) return;
    if (m->tag != TAG_START) {
        th_log_msg(&p->log, m);
        return;
    }
    ar_msg_t *got = NULL;
    uint64_t t0 = th_now_ns();
    p->empty_rc = ar_receive(self, NULL, NULL, 0, &got);
    p->empty_ms = th_ms_since(t0);
    if (p->empty_rc == 0) ar_msg_release(self, got);
    /* a message to itself is in its mailbox as soon as ar_send returns */
    ar_send(ar_node(self), ar_self(self), 55, "mine", 4);
    got = NULL;
    p->queued_rc = ar_receive(self, NULL, NULL, 0, &got);
    if (p->queued_rc == 0) {
        p->queued_tag = got->tag;
        ar_msg_release(self, got);
    }
    atomic_store(&p->done, 1);
}
static const ar_behaviour_t poller_b = {"poller", arg_init, poller_handle, NULL};

Test(receive, poll_with_zero_timeout_returns_at_once, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static poller_t p;
    ar_pid_t pid = th_spawn(node, &poller_b, &p);
    th_send(node, pid, TAG_START, NULL, 0);
    th_await(atomic_load(&p.done) == 1);
    cr_assert_eq(p.empty_rc, AR_ETIMEDOUT, "empty mailbox: %d (%s)", p.empty_rc,
                 ar_err_name(p.empty_rc));
    cr_assert_lt(p.empty_ms, 5000.0, "a poll of an empty mailbox waited %.0f ms", p.empty_ms);
    cr_assert_eq(p.queued_rc, 0, "queued message: %s", ar_err_name(p.queued_rc));
    cr_assert_eq(p.queued_tag, 55);
    cr_assert_eq(th_sync(node, pid), 0, "the polled message is not handled again");
    th_node_stop(node);
}

/* ---- receiving a CALL and answering it ------------------------------------------------------- */
static bool is_call(const ar_msg_t *m, void *ud)
{
    (void)ud;
    return m->kind == AR_MSG_CALL;
}
static void call_rx_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind != AR_MSG_CAST) return;
    ar_msg_t *got = NULL;
    if (ar_receive(self, is_call, NULL, TH_WAIT_MS, &got) == 0) {
        ar_reply(ar_node(self), got->reply_to, "received", 8);
        ar_msg_release(self, got);
    }
}
static const ar_behaviour_t call_rx_b = {"call_rx", NULL, call_rx_handle, NULL};

Test(receive, a_call_taken_by_receive_can_be_answered, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t p = th_spawn(node, &call_rx_b, NULL);
    th_send(node, p, 1, NULL, 0);
    ar_buf_t r = {0};
    int rc = ar_call(node, p, 2, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "%s", ar_err_name(rc));
    cr_assert_eq(r.len, 8);
    cr_assert_arr_eq(r.data, "received", 8);
    ar_buf_free(&r);
    th_node_stop(node);
}

/* ---- parking never blocks the scheduler thread ------------------------------------------------ */
typedef struct sleeper {
    int ms;
    int rc;
    double elapsed_ms;
    atomic_int state; /* 1 sleeping, 2 woke */
    th_log_t log;
} sleeper_t;

static void sleeper_handle(ar_proc_t *self, void *st, const ar_msg_t *m)
{
    sleeper_t *s = st;
    th_log_msg(&s->log, m);
    if (m->tag != TAG_START) return;
    atomic_store(&s->state, 1);
    uint64_t t0 = th_now_ns();
    s->rc = ar_sleep(self, s->ms);
    s->elapsed_ms = th_ms_since(t0);
    atomic_store(&s->state, 2);
}
static const ar_behaviour_t sleeper_b = {"sleeper", arg_init, sleeper_handle, NULL};

Test(receive, sleep_with_one_scheduler_lets_other_processes_run, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    static sleeper_t s;
    s.ms = 3600 * 1000;
    ar_pid_t sl = th_spawn(node, &sleeper_b, &s);
    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    th_send(node, sl, TAG_START, NULL, 0);
    th_await(atomic_load(&s.state) == 1 && th_proc_blocked(node, sl));
    for (int i = 0; i < 20; i++) th_echo_check(node, echo);
    cr_assert_eq(atomic_load(&s.state), 1, "still asleep while the other process ran");
    th_node_stop(node);
}

Test(receive, receive_with_one_scheduler_lets_other_processes_run, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    static rx_t r;
    r.want_tag = TAG_WANTED;
    r.timeout_ms = AR_INFINITY;
    ar_pid_t p = th_spawn(node, &rx_b, &r);
    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    th_send(node, p, TAG_START, NULL, 0);
    th_await(th_proc_blocked(node, p));
    for (int i = 0; i < 20; i++) th_echo_check(node, echo);
    cr_assert_eq(atomic_load(&r.done), 0);
    th_send(node, p, TAG_WANTED, "go", 2);
    th_await(atomic_load(&r.done) == 1);
    cr_assert_eq(r.rc, 0);
    cr_assert_str_eq(r.got_data, "go");
    th_node_stop(node);
}

Test(receive, messages_sent_during_sleep_are_handled_after_it, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static sleeper_t s;
    s.ms = 200;
    ar_pid_t sl = th_spawn(node, &sleeper_b, &s);
    th_send(node, sl, TAG_START, NULL, 0);
    th_await(atomic_load(&s.state) >= 1);
    th_send(node, sl, 1, "during", 6);
    th_await(atomic_load(&s.state) == 2);
    th_await(th_log_len(&s.log) == 2);
    cr_assert_eq(s.rc, 0, "%s", ar_err_name(s.rc));
    cr_assert_geq(s.elapsed_ms, 190.0, "slept %.1f ms of 200", s.elapsed_ms);
    cr_assert_str_eq(s.log.e[1].data, "during");
    th_node_stop(node);
}

/* Many processes sleeping at once on one scheduler all wake. */
Test(receive, many_sleepers_on_one_scheduler_all_wake, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    enum { N = 200 };
    static sleeper_t s[N];
    for (int i = 0; i < N; i++) {
        s[i].ms = 20 + i % 10;
        ar_pid_t p = th_spawn(node, &sleeper_b, &s[i]);
        th_send(node, p, TAG_START, NULL, 0);
    }
    for (int i = 0; i < N; i++) {
        th_await(atomic_load(&s[i].state) == 2);
        cr_assert_eq(s[i].rc, 0);
        cr_assert_geq(s[i].elapsed_ms, (double)s[i].ms - 5.0);
    }
    th_node_stop(node);
}
