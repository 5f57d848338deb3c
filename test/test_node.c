/* Node lifecycle: config defaults, start/stop, wait/request_stop, the ordered shutdown
 * (reverse spawn order, parked processes woken, nothing new starts) and node stats. */
#include "test_helpers.h"

Test(node, config_init_sets_every_field_to_its_default, .timeout = TH_TIMEOUT)
{
    ar_node_config_t cfg;
    memset(&cfg, 0xA5, sizeof cfg);
    ar_node_config_init(&cfg);
    cr_assert_eq(cfg.schedulers, 0);
    cr_assert_null(cfg.name);
    cr_assert_null(cfg.listen);
    cr_assert_null(cfg.cookie);
    cr_assert_eq(cfg.max_message_bytes, 0);
    cr_assert_eq(cfg.event_buffer, 0);
    cr_assert_eq(cfg.handle_signals, false);
    cr_assert_eq(cfg.stack_size, 0);
    cr_assert_eq(cfg.spin_us, 0);
}

Test(node, start_with_null_config_runs_processes_and_stops, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = NULL;
    cr_assert_eq(ar_node_start(NULL, &node), 0);
    cr_assert_not_null(node);
    th_echo_state_t st = {0};
    ar_pid_t echo = th_spawn(node, &th_echo, &st);
    th_echo_check(node, echo);
    cr_assert_eq(ar_node_stop(node, TH_STOP_MS), 0);
}

Test(node, start_and_stop_with_one_scheduler_and_with_many, .timeout = TH_TIMEOUT)
{
    unsigned counts[] = {1, 2, 4};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        ar_node_t *node = th_node(counts[i]);
        ar_pid_t echo = th_spawn(node, &th_echo, NULL);
        th_echo_check(node, echo);
        th_node_stop(node);
    }
}

Test(node, two_nodes_run_side_by_side_with_distinct_pids, .timeout = TH_TIMEOUT)
{
    ar_node_t *a = th_node(1), *b = th_node(1);
    ar_pid_t pa = th_spawn(a, &th_echo, NULL), pb = th_spawn(b, &th_echo, NULL);
    cr_assert(!ar_pid_eq(pa, pb));
    cr_assert(ar_pid_is_local(a, pa));
    cr_assert(!ar_pid_is_local(a, pb));
    cr_assert(ar_pid_is_local(b, pb));
    th_echo_check(a, pa);
    th_echo_check(b, pb);
    th_node_stop(a);
    th_echo_check(b, pb);
    th_node_stop(b);
}

/* ---- stop frees everything --------------------------------------------------------- */
static atomic_int idle_terminates;

static int idle_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void idle_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m;
}
static void idle_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)state;
    if (why.code == AR_SHUTDOWN) atomic_fetch_add(&idle_terminates, 1);
}
static const ar_behaviour_t idle_b = {"idle", idle_init, idle_handle, idle_terminate};

Test(node, stop_with_5000_idle_processes_frees_every_block, .timeout = TH_TIMEOUT)
{
    static th_alloc_t alloc;
    th_alloc_install(&alloc);
    long baseline = atomic_load(&alloc.live);
    ar_node_t *node = th_node(2);
    cr_assert_gt(atomic_load(&alloc.live), baseline, "the node allocates through the hook");
    enum { N = 5000 };
    for (int i = 0; i < N; i++) {
        int rc = ar_spawn(node, &idle_b, NULL, NULL, NULL);
        cr_assert_eq(rc, 0, "spawn %d: %s", i, ar_err_name(rc));
    }
    ar_node_stats_t s = th_stats(node);
    cr_assert_eq(s.processes, N);
    cr_assert_eq(s.spawned, N);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&idle_terminates), N, "every process got terminate(AR_SHUTDOWN)");
    cr_assert_eq(atomic_load(&alloc.live), baseline, "live blocks after stop: %ld (baseline %ld)",
                 atomic_load(&alloc.live), baseline);
    cr_assert_eq(ar_set_allocator(NULL), 0);
}

/* ---- wait / request_stop ----------------------------------------------------------- */
typedef struct waiter {
    ar_node_t *node;
    atomic_int returned;
    int rc;
} waiter_t;

static void *wait_thread(void *arg)
{
    waiter_t *w = arg;
    w->rc = ar_node_wait(w->node);
    atomic_store(&w->returned, 1);
    return NULL;
}

static void *request_thread(void *arg)
{
    ar_node_request_stop(arg);
    return NULL;
}

Test(node, wait_returns_after_request_stop_from_another_thread, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    static waiter_t w;
    w.node = node;
    pthread_t wt, rt;
    cr_assert_eq(pthread_create(&wt, NULL, wait_thread, &w), 0);
    /* Some real work while the waiter waits: it must still be waiting afterwards. */
    for (int i = 0; i < 50; i++) th_echo_check(node, echo);
    cr_assert_eq(atomic_load(&w.returned), 0, "ar_node_wait returned before any stop request");
    cr_assert_eq(pthread_create(&rt, NULL, request_thread, node), 0);
    th_await(atomic_load(&w.returned) == 1);
    cr_assert_eq(w.rc, 0);
    pthread_join(rt, NULL);
    pthread_join(wt, NULL);
    th_echo_check(node, echo); /* a request does not stop the node by itself */
    th_node_stop(node);
}

static void requester_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state, (void)m;
    ar_node_request_stop(ar_node(self));
}
static const ar_behaviour_t requester_b = {"requester", NULL, requester_handle, NULL};

Test(node, wait_returns_after_request_stop_from_a_process, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_pid_t p = th_spawn(node, &requester_b, NULL);
    th_send(node, p, 1, NULL, 0);
    cr_assert_eq(ar_node_wait(node), 0);
    th_node_stop(node);
}

/* ---- ordered shutdown ---------------------------------------------------------------- */
enum { ORDER_N = 12 };
static atomic_int order_pos;
static int order_seen[ORDER_N];
static ar_exit_code_t order_code[ORDER_N];

static int order_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void order_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    int i = atomic_fetch_add(&order_pos, 1);
    if (i < ORDER_N) {
        order_seen[i] = (int)(intptr_t)state;
        order_code[i] = why.code;
    }
}
static const ar_behaviour_t order_b = {"order", order_init, idle_handle, order_terminate};

Test(node, stop_terminates_top_level_processes_in_reverse_spawn_order, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    for (int i = 0; i < ORDER_N; i++)
        th_spawn(node, &order_b, (void *)(intptr_t)i);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&order_pos), ORDER_N);
    for (int i = 0; i < ORDER_N; i++) {
        cr_expect_eq(order_seen[i], ORDER_N - 1 - i, "terminate #%d was process %d", i,
                     order_seen[i]);
        cr_expect_eq(order_code[i], AR_SHUTDOWN, "terminate #%d reason %s", i,
                     ar_exit_code_name(order_code[i]));
    }
}

/* A top-level process with children: children spawned from inside a process are not
 * top-level but still end (terminate once each) when the node stops. */
static atomic_int child_terms;
static void child_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)state, (void)why;
    atomic_fetch_add(&child_terms, 1);
}
static const ar_behaviour_t child_b = {"child", NULL, idle_handle, child_terminate};

static int parent_init(ar_proc_t *self, void *arg, void **state)
{
    (void)arg, (void)state;
    for (int i = 0; i < 10; i++) {
        int rc = ar_spawn(ar_node(self), &child_b, NULL, NULL, NULL);
        if (rc) return rc;
    }
    return 0;
}
static const ar_behaviour_t parent_b = {"parent", parent_init, idle_handle, NULL};

Test(node, stop_ends_children_of_top_level_processes_too, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    th_spawn(node, &parent_b, NULL);
    th_spawn(node, &parent_b, NULL);
    cr_assert_eq(th_stats(node).processes, 22);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&child_terms), 20);
}

/* Processes parked in receive, call and sleep are woken and ended by the stop. */
typedef struct parked {
    atomic_int entered;
    th_log_t log; /* terminate reason */
    ar_pid_t server;
} parked_t;

static bool never(const ar_msg_t *m, void *ud)
{
    (void)m, (void)ud;
    return false;
}

static int parked_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void parked_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    parked_t *p = state;
    th_log_reason(&p->log, why);
}
static void receiver_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    parked_t *p = state;
    ar_msg_t *out = NULL;
    atomic_store(&p->entered, 1);
    ar_receive(self, never, NULL, AR_INFINITY, &out);
    atomic_store(&p->entered, 2); /* not reached while the node runs */
}
static void sleeper_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    parked_t *p = state;
    atomic_store(&p->entered, 1);
    ar_sleep(self, 3600 * 1000);
    atomic_store(&p->entered, 2);
}
static void caller_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    parked_t *p = state;
    ar_buf_t r = {0};
    atomic_store(&p->entered, 1);
    ar_call(ar_node(self), p->server, 1, NULL, 0, &r, AR_INFINITY);
    atomic_store(&p->entered, 2);
    ar_buf_free(&r);
}
/* Keeps every call's reply_to and never answers. */
static void mute_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m;
}
static const ar_behaviour_t receiver_b = {"receiver", parked_init, receiver_handle,
                                          parked_terminate};
static const ar_behaviour_t sleeper_b = {"sleeper", parked_init, sleeper_handle,
                                         parked_terminate};
static const ar_behaviour_t caller_b = {"caller", parked_init, caller_handle,
                                        parked_terminate};
static const ar_behaviour_t mute_b = {"mute", NULL, mute_handle, NULL};

static void check_parked_stop(const ar_behaviour_t *b, unsigned schedulers)
{
    ar_node_t *node = th_node(schedulers);
    static parked_t p;
    memset(&p, 0, sizeof p);
    p.server = th_spawn(node, &mute_b, NULL); /* spawned first, so stopped last */
    ar_pid_t pid = th_spawn(node, b, &p);
    th_send(node, pid, 1, NULL, 0);
    th_await(atomic_load(&p.entered) == 1 && th_proc_blocked(node, pid));
    uint64_t t0 = th_now_ns();
    cr_assert_eq(ar_node_stop(node, TH_STOP_MS), 0, "the parked process ended before the timeout");
    cr_assert_lt(th_ms_since(t0), TH_STOP_MS);
    cr_assert_eq(atomic_load(&p.log.terminates), 1);
    cr_assert_eq(p.log.why, AR_SHUTDOWN, "reason %s", ar_exit_code_name(p.log.why));
}

Test(node, stop_ends_process_parked_in_infinite_receive_and_runs_terminate,
     .timeout = TH_TIMEOUT)
{
    check_parked_stop(&receiver_b, 2);
}

Test(node, stop_ends_process_parked_in_receive_with_one_scheduler, .timeout = TH_TIMEOUT)
{
    check_parked_stop(&receiver_b, 1);
}

Test(node, stop_ends_process_parked_in_sleep_and_runs_terminate, .timeout = TH_TIMEOUT)
{
    check_parked_stop(&sleeper_b, 2);
}

Test(node, stop_ends_process_parked_in_infinite_call_and_runs_terminate,
     .timeout = TH_TIMEOUT)
{
    check_parked_stop(&caller_b, 2);
}

Test(node, stop_frees_queued_messages_timers_and_parked_processes, .timeout = TH_TIMEOUT)
{
    static th_alloc_t alloc;
    th_alloc_install(&alloc);
    ar_node_t *node = th_node(2);
    static parked_t p;
    ar_pid_t pid = th_spawn(node, &receiver_b, &p);
    th_send(node, pid, 1, NULL, 0);
    th_await(atomic_load(&p.entered) == 1 && th_proc_blocked(node, pid));
    /* Queued behind a receive that matches nothing: never handled. */
    char payload[300] = "queued";
    for (int i = 0; i < 100; i++) th_send(node, pid, 2, payload, sizeof payload);
    ar_ref_t t;
    cr_assert_eq(ar_send_after(node, 600000, pid, 3, "late", 4, &t), 0);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&p.log.terminates), 1);
    cr_assert_eq(atomic_load(&alloc.live), 0, "live blocks after stop: %ld",
                 atomic_load(&alloc.live));
}

/* ar_spawn while the node stops is refused. */
static atomic_int spawn_in_stop_rc = 1;
static void spawner_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)state, (void)why;
    ar_pid_t pid = AR_PID_NONE;
    atomic_store(&spawn_in_stop_rc, ar_spawn(ar_node(self), &idle_b, NULL, NULL, &pid));
}
static const ar_behaviour_t spawner_b = {"spawner", NULL, idle_handle, spawner_terminate};

Test(node, spawn_from_terminate_during_stop_returns_eclosed, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    th_spawn(node, &spawner_b, NULL);
    th_node_stop(node);
    int rc = atomic_load(&spawn_in_stop_rc);
    cr_assert_eq(rc, AR_ECLOSED, "got %d (%s)", rc, ar_err_name(rc));
}

static atomic_int spawn_from_thread_rc = 1;
static sem_t stopping_sem, spawned_sem;
static void signaller_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)state, (void)why;
    /* Hold the stop here until another thread has tried to spawn. */
    sem_post(&stopping_sem);
    th_sem_wait(&spawned_sem, TH_WAIT_MS);
}
static const ar_behaviour_t signaller_b = {"signaller", NULL, idle_handle,
                                           signaller_terminate};
static void *stop_thread(void *arg)
{
    ar_node_stop(arg, TH_STOP_MS);
    return NULL;
}

Test(node, spawn_from_another_thread_during_stop_returns_eclosed, .timeout = TH_TIMEOUT)
{
    sem_init(&stopping_sem, 0, 0);
    sem_init(&spawned_sem, 0, 0);
    ar_node_t *node = th_node(2);
    th_spawn(node, &signaller_b, NULL);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, stop_thread, node), 0);
    th_sem_take(&stopping_sem);
    atomic_store(&spawn_from_thread_rc, ar_spawn(node, &idle_b, NULL, NULL, NULL));
    sem_post(&spawned_sem);
    pthread_join(t, NULL);
    int rc = atomic_load(&spawn_from_thread_rc);
    cr_assert_eq(rc, AR_ECLOSED, "got %d (%s)", rc, ar_err_name(rc));
}

/* ---- stats --------------------------------------------------------------------------- */
static void stop_on_msg_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state, (void)m;
    ar_stop(self, AR_REASON(AR_NORMAL));
}
static const ar_behaviour_t stop_on_msg_b = {"stop_on_msg", NULL, stop_on_msg_handle, NULL};

Test(node, stats_count_spawned_exited_and_live_processes, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    ar_node_stats_t s0 = th_stats(node);
    cr_assert_eq(s0.processes, 0);
    cr_assert_eq(s0.spawned, 0);
    cr_assert_eq(s0.exited, 0);
    ar_pid_t p[5];
    for (int i = 0; i < 5; i++) p[i] = th_spawn(node, &stop_on_msg_b, NULL);
    ar_node_stats_t s1 = th_stats(node);
    cr_assert_eq(s1.processes, 5);
    cr_assert_eq(s1.spawned, 5);
    cr_assert_eq(s1.exited, 0);
    th_send(node, p[1], 1, NULL, 0);
    th_send(node, p[3], 1, NULL, 0);
    th_await(th_stats(node).exited == 2);
    ar_node_stats_t s2 = th_stats(node);
    cr_assert_eq(s2.processes, 3);
    cr_assert_eq(s2.spawned, 5);
    cr_assert_eq(s2.exited, 2);
    cr_assert(!th_proc_alive(node, p[1]));
    cr_assert(th_proc_alive(node, p[0]));
    th_node_stop(node);
}

Test(node, stats_count_sent_delivered_and_dropped_messages, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    ar_pid_t dead = th_spawn(node, &stop_on_msg_b, NULL);
    th_send(node, dead, 1, NULL, 0);
    th_await(!th_proc_alive(node, dead));
    th_await(th_stats(node).exited == 1);

    ar_node_stats_t s0 = th_stats(node);
    for (int i = 0; i < 7; i++) th_send(node, rec, 2, "x", 1);
    th_await(th_log_len(&log) == 7);
    th_await(th_stats(node).delivered - s0.delivered == 7);
    ar_node_stats_t s1 = th_stats(node);
    cr_assert_eq(s1.sent - s0.sent, 7, "sent grew by %llu",
                 (unsigned long long)(s1.sent - s0.sent));
    cr_assert_eq(s1.delivered - s0.delivered, 7);
    cr_assert_eq(s1.dropped, s0.dropped);

    cr_assert_eq(ar_send(node, dead, 3, "y", 1), 0, "a send to a dead pid succeeds");
    cr_assert_eq(ar_send(node, dead, 3, "y", 1), 0);
    th_await(th_stats(node).dropped - s0.dropped == 2);
    ar_node_stats_t s2 = th_stats(node);
    cr_assert_eq(s2.delivered, s1.delivered, "a dropped message is not delivered");
    th_node_stop(node);
}

/* ---- the ordered stop is a handshake ------------------------------------------------------ *
 * Two top-level processes, the later one's terminate blocking in ar_sleep: a stop without
 * a deadline waits for it, however long, and only then stops the earlier one; with a
 * deadline that is long enough the same holds. The stop used to move on after 100 ms and
 * to send its shutdown again, which cut the terminate short. */
typedef struct slow {
    int sleep_ms;          /* in terminate; AR_INFINITY: until killed */
    atomic_int terminates; /* started */
    atomic_int finished;   /* terminate returned on its own (not cut short) */
    ar_exit_code_t why;
    uint64_t began_ns, ended_ns;
} slow_t;

static int slow_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static void slow_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    slow_t *s = state;
    s->why = why.code;
    s->began_ns = th_now_ns();
    atomic_fetch_add(&s->terminates, 1);
    int rc = s->sleep_ms ? ar_sleep(self, s->sleep_ms) : 0;
    s->ended_ns = th_now_ns();
    if (rc == 0) atomic_store(&s->finished, 1); /* an unwinding sleep never returns */
}
static const ar_behaviour_t slow_b = {"slow", slow_init, idle_handle, slow_terminate};

static void check_patient_stop(int timeout_ms)
{
    static slow_t first, later;
    memset(&first, 0, sizeof first);
    memset(&later, 0, sizeof later);
    later.sleep_ms = 300;
    ar_node_t *node = th_node(2);
    th_spawn(node, &slow_b, &first);
    th_spawn(node, &slow_b, &later);
    cr_assert_eq(ar_node_stop(node, timeout_ms), 0);
    cr_assert_eq(atomic_load(&later.finished), 1, "the later one's terminate was cut short");
    cr_assert_geq((later.ended_ns - later.began_ns) / 1000000u, 300);
    cr_assert_eq(atomic_load(&first.terminates), 1);
    cr_assert_geq(first.began_ns, later.ended_ns,
                  "the earlier one was stopped while the later one was still terminating");
    cr_assert_eq(first.why, AR_SHUTDOWN);
    cr_assert_eq(later.why, AR_SHUTDOWN);
}

Test(node, stop_without_a_deadline_waits_for_each_terminate_in_order, .timeout = TH_TIMEOUT)
{
    check_patient_stop(AR_INFINITY);
}

Test(node, stop_with_a_long_enough_deadline_waits_for_each_terminate_in_order,
     .timeout = TH_TIMEOUT)
{
    check_patient_stop(5000);
}

/* A process left over from a dead parent (not top-level) gets the stop's shutdown once:
 * its slow terminate runs to its end. */
static void orphaner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)m;
    slow_t *orphan = state;
    if (ar_spawn(ar_node(self), &slow_b, orphan, NULL, NULL) != 0) orphan->why = AR_ERROR;
    ar_stop(self, AR_REASON(AR_NORMAL)); /* the orphan outlives it, unlinked */
}
static const ar_behaviour_t orphaner_b = {"orphaner", slow_init, orphaner_handle, NULL};

Test(node, stop_sends_a_leftover_process_its_shutdown_once, .timeout = TH_TIMEOUT)
{
    static slow_t orphan;
    orphan.sleep_ms = 300;
    ar_node_t *node = th_node(2);
    ar_pid_t parent = th_spawn(node, &orphaner_b, &orphan);
    th_send(node, parent, 1, NULL, 0);
    th_await(!th_proc_alive(node, parent) && th_stats(node).processes == 1);
    cr_assert_neq(orphan.why, AR_ERROR, "the orphan was not spawned");
    cr_assert_eq(ar_node_stop(node, AR_INFINITY), 0);
    cr_assert_eq(atomic_load(&orphan.terminates), 1);
    cr_assert_eq(atomic_load(&orphan.finished), 1, "a second shutdown cut its terminate short");
    cr_assert_eq(orphan.why, AR_SHUTDOWN);
}

/* With a deadline, nothing is killed before it passes: a terminate that never returns is
 * cut short at the deadline, then everything left is killed (terminate still runs, with
 * AR_KILLED), and the stop says AR_ETIMEDOUT. */
Test(node, stop_with_a_deadline_kills_only_when_it_passes, .timeout = TH_TIMEOUT)
{
    static slow_t first, stuck;
    stuck.sleep_ms = AR_INFINITY;
    ar_node_t *node = th_node(2);
    th_spawn(node, &slow_b, &first);
    th_spawn(node, &slow_b, &stuck);
    uint64_t t0 = th_now_ns();
    cr_assert_eq(ar_node_stop(node, 300), AR_ETIMEDOUT);
    cr_assert_eq(atomic_load(&stuck.terminates), 1);
    cr_assert_eq(atomic_load(&stuck.finished), 0);
    cr_assert_geq((stuck.ended_ns - t0) / 1000000u, 300, "cut short before the deadline");
    cr_assert_eq(atomic_load(&first.terminates), 1, "terminate runs for the killed too");
    cr_assert_eq(first.why, AR_KILLED, "the earlier one was killed at the deadline");
    cr_assert_geq(first.began_ns, stuck.ended_ns);
}

/* Calls from other threads may overlap the stop: those in flight finish, new foreign
 * calls get AR_ECLOSED, and nothing is freed under them (ASan would see it). The last
 * top-level process's terminate holds the stop until every thread is out. */
enum { CALLER_THREADS = 3 };
static atomic_int threads_out, saw_closed;
typedef struct hammer {
    ar_node_t *node;
    ar_pid_t echo;
} hammer_t;
static void *hammer_main(void *arg)
{
    hammer_t *h = arg;
    for (;;) {
        ar_buf_t r = {0};
        int rc = ar_call(h->node, h->echo, 1, "x", 1, &r, TH_WAIT_MS);
        ar_buf_free(&r);
        if (rc == AR_ECLOSED) break;
        if (rc != 0 && rc != AR_ENOPROC) break; /* reported below by the counts */
        ar_send(h->node, h->echo, 2, "y", 1);
        ar_proc_info_t pi;
        ar_proc_info(h->node, h->echo, &pi);
        ar_node_stats_t st;
        ar_node_stats(h->node, &st);
    }
    atomic_fetch_add(&saw_closed, 1);
    atomic_fetch_add(&threads_out, 1);
    return NULL;
}
static void holder_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)state, (void)why;
    while (atomic_load(&threads_out) < CALLER_THREADS) ar_sleep(self, 1);
}
static const ar_behaviour_t holder_b = {"holder", NULL, idle_handle, holder_terminate};

Test(node, calls_from_other_threads_overlapping_the_stop_finish_before_it_frees,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    th_spawn(node, &holder_b, NULL);
    static hammer_t h;
    h = (hammer_t){node, th_spawn(node, &th_echo, NULL)};
    pthread_t t[CALLER_THREADS];
    for (int i = 0; i < CALLER_THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, hammer_main, &h), 0);
    th_await(th_stats(node).delivered > 3000); /* they are well under way */
    cr_assert_eq(ar_node_stop(node, AR_INFINITY), 0);
    for (int i = 0; i < CALLER_THREADS; i++) pthread_join(t[i], NULL);
    cr_assert_eq(atomic_load(&saw_closed), CALLER_THREADS);
}

/* Spawns from other threads racing the stop are either refused (AR_ECLOSED) or stopped
 * with the rest: terminate runs once for every process that started, and the stop ends. */
static atomic_int race_inits, race_terms, spawner_refused;
static int race_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self, (void)arg, (void)state;
    atomic_fetch_add(&race_inits, 1);
    return 0;
}
static void race_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self, (void)state, (void)why;
    atomic_fetch_add(&race_terms, 1);
}
static const ar_behaviour_t race_b = {"race", race_init, idle_handle, race_terminate};
static void *spawner_main(void *arg)
{
    ar_node_t *node = arg;
    int rc;
    while ((rc = ar_spawn(node, &race_b, NULL, NULL, NULL)) == 0) {
    }
    if (rc == AR_ECLOSED) atomic_fetch_add(&spawner_refused, 1);
    atomic_fetch_add(&threads_out, 1);
    return NULL;
}

Test(node, spawns_racing_the_stop_are_refused_or_stopped, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    th_spawn(node, &holder_b, NULL); /* stopped last: holds the stop until they are out */
    pthread_t t[CALLER_THREADS];
    for (int i = 0; i < CALLER_THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, spawner_main, node), 0);
    th_await(atomic_load(&race_inits) > 500);
    cr_assert_eq(ar_node_stop(node, AR_INFINITY), 0);
    for (int i = 0; i < CALLER_THREADS; i++) pthread_join(t[i], NULL);
    cr_assert_eq(atomic_load(&spawner_refused), CALLER_THREADS);
    cr_assert_eq(atomic_load(&race_terms), atomic_load(&race_inits));
}
