/* Lifecycle events: SPAWN then EXIT per process, seq and per-process order under churn,
 * START_FAILED for a failed init, process and function subscribers, the events thread,
 * unsubscribing, LAGGED with the exact count for a subscriber that stops reading, kinds
 * masks, ar_events_emit, supervisor RESTART / START_FAILED / GIVE_UP, a dead subscriber's
 * subscription, argument validation and out-of-memory.
 *
 * Function subscribers record into a rec_t; ar_node_stop delivers everything buffered
 * before it returns, so a test that stops its node may then read the whole record. */
#include "test_helpers.h"

#define REC_CAP 8192
#define TEXT_MAX 256

typedef struct rec_ev {
    uint32_t kind;
    uint64_t seq, time_ns, dropped;
    ar_pid_t pid, old_pid, supervisor;
    ar_exit_code_t code;
    bool has_text, has_name;
    size_t name_len, text_len; /* of the delivered strings */
    char behaviour[64], name[AR_NAME_MAX], text[TEXT_MAX];
    ar_ref_t ref;      /* a process subscriber: m->ref */
    pthread_t thread;  /* the thread it was delivered on */
    int spawn_link_rc; /* ar_spawn(.link) from the callback: AR_ENOTPROC outside a process */
} rec_ev_t;

typedef struct rec {
    atomic_size_t n; /* entries written (release after each) */
    atomic_long block_at; /* the entry at which the subscriber blocks on gate (-1: never) */
    atomic_int blocked;
    sem_t gate;
    bool probe_spawn; /* try ar_spawn(.link) in each callback */
    ar_node_t *node;
    rec_ev_t e[REC_CAP];
} rec_t;

static void rec_init(rec_t *r, ar_node_t *node)
{
    atomic_store(&r->n, 0);
    atomic_store(&r->block_at, -1);
    atomic_store(&r->blocked, 0);
    sem_init(&r->gate, 0, 0);
    r->probe_spawn = false;
    r->node = node;
}

static size_t rec_len(rec_t *r) { return atomic_load_explicit(&r->n, memory_order_acquire); }

static const ar_behaviour_t nop_b;

static void rec_event(rec_t *r, const ar_event_t *e, ar_ref_t ref)
{
    size_t i = atomic_load_explicit(&r->n, memory_order_relaxed);
    if (i >= REC_CAP) return;
    rec_ev_t *x = &r->e[i];
    memset(x, 0, sizeof *x);
    x->kind = e->kind;
    x->seq = e->seq;
    x->time_ns = e->time_ns;
    x->dropped = e->dropped;
    x->pid = e->pid;
    x->old_pid = e->old_pid;
    x->supervisor = e->supervisor;
    x->code = e->reason.code;
    x->has_text = e->reason.text != NULL;
    x->has_name = e->name != NULL;
    x->name_len = e->name ? strlen(e->name) : 0;
    x->text_len = e->reason.text ? strlen(e->reason.text) : 0;
    snprintf(x->behaviour, sizeof x->behaviour, "%s", e->behaviour ? e->behaviour : "");
    snprintf(x->name, sizeof x->name, "%s", e->name ? e->name : "");
    th_reason_text(x->text, sizeof x->text, e->reason.text);
    x->ref = ref;
    x->thread = pthread_self();
    if (r->probe_spawn) {
        ar_spawn_opts_t o = {.link = true};
        x->spawn_link_rc = ar_spawn(r->node, &nop_b, NULL, &o, NULL);
    }
    /* release: the entry is complete before the test thread sees the count */
    atomic_store_explicit(&r->n, i + 1, memory_order_release);
}

static void rec_fn(const ar_event_t *e, void *ud)
{
    rec_t *r = ud;
    long at = (long)atomic_load_explicit(&r->n, memory_order_relaxed);
    rec_event(r, e, 0);
    if (at == atomic_load(&r->block_at)) { /* stop reading for a while */
        atomic_store(&r->blocked, 1);
        th_sem_wait(&r->gate, TH_WAIT_MS); /* the test thread checks what follows */
    }
}

/* The first entry of kind about pid (NULL: none); *count (optional): how many there are. */
static rec_ev_t *find(rec_t *r, uint32_t kind, ar_pid_t pid, size_t *count)
{
    size_t n = rec_len(r), c = 0;
    rec_ev_t *first = NULL;
    for (size_t i = 0; i < n; i++)
        if (r->e[i].kind == kind && ar_pid_eq(r->e[i].pid, pid)) {
            if (!first) first = &r->e[i];
            c++;
        }
    if (count) *count = c;
    return first;
}

static size_t count_kind(rec_t *r, uint32_t kind)
{
    size_t n = rec_len(r), c = 0;
    for (size_t i = 0; i < n; i++) c += r->e[i].kind == kind;
    return c;
}

static ar_node_t *events_node(unsigned schedulers, size_t buffer)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = schedulers;
    cfg.event_buffer = buffer;
    return th_node_cfg(&cfg);
}

static ar_ref_t subscribe_fn(ar_node_t *node, uint32_t kinds, rec_t *r)
{
    ar_ref_t ref = 0;
    int rc = ar_events_subscribe_fn(node, kinds, rec_fn, r, &ref);
    cr_assert_eq(rc, 0, "ar_events_subscribe_fn: %s", ar_err_name(rc));
    cr_assert_neq(ref, 0);
    return ref;
}

static void emit_user(ar_node_t *node, uint64_t n)
{
    ar_event_t e = {.kind = AR_EV_USER, .dropped = n}; /* dropped: carried nowhere (zeroed) */
    char name[32];
    snprintf(name, sizeof name, "user-%llu", (unsigned long long)n);
    e.name = name;
    int rc = ar_events_emit(node, &e);
    cr_assert_eq(rc, 0, "ar_events_emit: %s", ar_err_name(rc));
}

/* The number a USER event of emit_user carries in its name. */
static long user_no(const rec_ev_t *x)
{
    return x->kind == AR_EV_USER && strncmp(x->name, "user-", 5) == 0 ? atol(x->name + 5) : -1;
}

/* ---- behaviours ---------------------------------------------------------------------- */
enum { TAG_CRASH = 1, TAG_STOP, TAG_UNSUB, TAG_GO, TAG_SYNC };

static void nop_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)state, (void)m;
}
static const ar_behaviour_t nop_b = {.name = "nop", .handle = nop_handle};

/* Crashes with "boom" on TAG_CRASH, stops normally on TAG_STOP. */
static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->tag == TAG_CRASH) AR_FAIL(self, "boom");
    if (m->tag == TAG_STOP) ar_stop(self, AR_REASON(AR_NORMAL));
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, NULL, 0);
}
static const ar_behaviour_t worker_b = {.name = "ev_worker", .handle = worker_handle};

static int enoent_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self, (void)arg, (void)state;
    return AR_ENOENT;
}
static const ar_behaviour_t enoent_b = {.name = "ev_enoent", .init = enoent_init,
                                        .handle = nop_handle};

static int crash_init(ar_proc_t *self, void *arg, void **state)
{
    (void)arg, (void)state;
    AR_FAIL(self, "init blew up");
}
static const ar_behaviour_t crash_init_b = {.name = "ev_crash_init", .init = crash_init,
                                            .handle = nop_handle};

static int stop_init(ar_proc_t *self, void *arg, void **state)
{
    (void)state;
    if (arg) ar_stop(self, (ar_reason_t){AR_ERROR, "short life"});
    else ar_stop(self, AR_REASON(AR_NORMAL));
    return 0;
}
static const ar_behaviour_t stop_init_b = {.name = "ev_brief", .init = stop_init,
                                           .handle = nop_handle};

/* A process subscriber: subscribes in init to w->kinds, records AR_MSG_EVENT messages.
 * On the event numbered block_at it waits in ar_receive for a TAG_GO cast; TAG_UNSUB (a
 * call) unsubscribes; TAG_SYNC (a call) answers once everything before it was handled. */
typedef struct watcher {
    uint32_t kinds;
    ar_ref_t ref;
    int sub_rc;
    rec_t *rec;
} watcher_t;

static int watcher_init(ar_proc_t *self, void *arg, void **state)
{
    watcher_t *w = arg;
    *state = w;
    w->sub_rc = ar_events_subscribe(ar_node(self), w->kinds, &w->ref);
    return w->sub_rc;
}

static bool is_go(const ar_msg_t *m, void *ud)
{
    (void)ud;
    return m->kind == AR_MSG_CAST && m->tag == TAG_GO;
}

static void watcher_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    watcher_t *w = state;
    if (m->kind == AR_MSG_EVENT) {
        long at = (long)atomic_load_explicit(&w->rec->n, memory_order_relaxed);
        rec_event(w->rec, m->event, m->ref);
        if (at == atomic_load(&w->rec->block_at)) { /* a handler that blocks */
            atomic_store(&w->rec->blocked, 1);
            ar_msg_t *go = NULL;
            if (ar_receive(self, is_go, NULL, TH_WAIT_MS, &go) == 0) ar_msg_release(self, go);
        }
    } else if (m->kind == AR_MSG_CALL && m->tag == TAG_UNSUB) {
        int rc = ar_events_unsubscribe(ar_node(self), w->ref);
        ar_reply(ar_node(self), m->reply_to, &rc, sizeof rc);
    } else if (m->kind == AR_MSG_CALL) {
        ar_reply(ar_node(self), m->reply_to, NULL, 0);
    } else if (m->tag == TAG_STOP) {
        ar_stop(self, AR_REASON(AR_NORMAL));
    }
}
static const ar_behaviour_t watcher_b = {.name = "ev_watcher", .init = watcher_init,
                                         .handle = watcher_handle};

static ar_pid_t spawn_watcher(ar_node_t *node, watcher_t *w, uint32_t kinds, rec_t *r)
{
    memset(w, 0, sizeof *w);
    w->kinds = kinds;
    w->rec = r;
    ar_pid_t pid = th_spawn(node, &watcher_b, w);
    cr_assert_eq(w->sub_rc, 0);
    cr_assert_neq(w->ref, 0);
    return pid;
}

static void sync_call(ar_node_t *node, ar_pid_t pid)
{
    ar_buf_t b = {0};
    int rc = ar_call(node, pid, TAG_SYNC, NULL, 0, &b, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "sync: %s", ar_err_name(rc));
    ar_buf_free(&b);
}

static rec_t rec_a, rec_b, rec_c;

/* ---- SPAWN, EXIT, START_FAILED ----------------------------------------------------------- */
Test(events, spawn_then_exit_per_process_with_its_reason, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_SPAWN | AR_EV_EXIT, &rec_a);
    ar_pid_t crasher = th_spawn(node, &worker_b, NULL);
    ar_pid_t quitter = th_spawn(node, &worker_b, NULL);
    ar_pid_t brief = th_spawn(node, &stop_init_b, "error");
    th_send(node, crasher, TAG_CRASH, NULL, 0);
    th_send(node, quitter, TAG_STOP, NULL, 0);
    th_await(!th_proc_alive(node, crasher) && !th_proc_alive(node, quitter));
    th_node_stop(node); /* delivers what is buffered */

    ar_pid_t pids[] = {crasher, quitter, brief};
    ar_exit_code_t codes[] = {AR_ERROR, AR_NORMAL, AR_ERROR};
    const char *texts[] = {"boom", "", "short life"};
    const char *behaviours[] = {"ev_worker", "ev_worker", "ev_brief"};
    for (int i = 0; i < 3; i++) {
        size_t ns, ne;
        rec_ev_t *s = find(&rec_a, AR_EV_SPAWN, pids[i], &ns);
        rec_ev_t *e = find(&rec_a, AR_EV_EXIT, pids[i], &ne);
        cr_assert_eq(ns, 1, "process %d: %zu SPAWN events", i, ns);
        cr_assert_eq(ne, 1, "process %d: %zu EXIT events", i, ne);
        cr_assert_lt(s->seq, e->seq, "process %d: SPAWN comes first", i);
        cr_assert(s < e, "process %d: SPAWN delivered first", i);
        cr_assert_eq(e->code, codes[i], "process %d: reason %d", i, e->code);
        cr_assert_str_eq(e->text, texts[i]);
        cr_assert_str_eq(s->behaviour, behaviours[i]);
        cr_assert_str_eq(e->behaviour, behaviours[i]);
        cr_assert(!s->has_name && !e->has_name);
    }
}

typedef struct churn {
    ar_node_t *node;
    int n;
    atomic_int spawned;
} churn_t;

static void *churn_thread(void *arg)
{
    churn_t *c = arg;
    for (int i = 0; i < c->n; i++) {
        int rc = ar_spawn(c->node, &stop_init_b, (i % 3 == 0) ? "error" : NULL, NULL, NULL);
        if (rc == 0) atomic_fetch_add(&c->spawned, 1);
    }
    return NULL;
}

/* A process that spawns n brief children from its handler: events from scheduler threads. */
static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    churn_t *c = state;
    for (int i = 0; i < c->n; i++)
        if (ar_spawn(ar_node(self), &stop_init_b, (i & 1) ? "error" : NULL, NULL, NULL) == 0)
            atomic_fetch_add(&c->spawned, 1);
    (void)m;
}
static int spawner_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}
static const ar_behaviour_t spawner_b = {.name = "ev_spawner", .init = spawner_init,
                                         .handle = spawner_handle};

/* Every delivered sequence: seq strictly increasing; each churned pid one SPAWN, then one
 * EXIT. */
static void check_order(rec_t *r, const char *who, int expect_pairs)
{
    size_t n = rec_len(r);
    for (size_t i = 1; i < n; i++)
        cr_assert_gt(r->e[i].seq, r->e[i - 1].seq, "%s: seq %llu after %llu at %zu", who,
                     (unsigned long long)r->e[i].seq, (unsigned long long)r->e[i - 1].seq, i);
    /* per pid, by sorting a copy of (pid, position) */
    typedef struct {
        ar_pid_t pid;
        size_t at;
    } pos_t;
    pos_t *p = calloc(n, sizeof *p);
    cr_assert_not_null(p);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(r->e[i].behaviour, "ev_brief") == 0) p[k++] = (pos_t){r->e[i].pid, i};
    qsort(p, k, sizeof *p, th_pid_cmp); /* pid first: stable enough, ties checked below */
    int pairs = 0;
    for (size_t i = 0; i < k;) {
        size_t j = i;
        while (j < k && ar_pid_eq(p[j].pid, p[i].pid)) j++;
        cr_assert_eq(j - i, 2, "%s: %zu events for one process", who, j - i);
        size_t a = p[i].at < p[i + 1].at ? p[i].at : p[i + 1].at;
        size_t b = p[i].at < p[i + 1].at ? p[i + 1].at : p[i].at;
        cr_assert_eq(r->e[a].kind, AR_EV_SPAWN, "%s: first event of a process", who);
        cr_assert_eq(r->e[b].kind, AR_EV_EXIT, "%s: second event of a process", who);
        pairs++;
        i = j;
    }
    cr_assert_eq(pairs, expect_pairs, "%s: %d processes seen, %d spawned", who, pairs,
                 expect_pairs);
    free(p);
}

Test(events, seq_increases_and_each_process_is_in_order_under_churn, .timeout = TH_TIMEOUT)
{
    enum { THREADS = 3, PER_THREAD = 300, FROM_PROC = 300 };
    ar_node_t *node = events_node(2, 1u << 16); /* room for all: nothing is dropped */
    rec_init(&rec_a, node);
    rec_init(&rec_b, node);
    subscribe_fn(node, AR_EV_SPAWN | AR_EV_EXIT, &rec_a);
    static watcher_t w;
    ar_pid_t wpid = spawn_watcher(node, &w, AR_EV_SPAWN | AR_EV_EXIT, &rec_b);
    static churn_t c[THREADS + 1];
    pthread_t t[THREADS];
    for (int i = 0; i <= THREADS; i++) {
        c[i].node = node;
        c[i].n = i < THREADS ? PER_THREAD : FROM_PROC;
        atomic_store(&c[i].spawned, 0);
    }
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, churn_thread, &c[i]), 0);
    ar_pid_t sp = th_spawn(node, &spawner_b, &c[THREADS]);
    th_send(node, sp, 0, NULL, 0);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    th_await(atomic_load(&c[THREADS].spawned) == FROM_PROC);
    int total = 0;
    for (int i = 0; i <= THREADS; i++) total += atomic_load(&c[i].spawned);
    cr_assert_eq(total, THREADS * PER_THREAD + FROM_PROC);
    th_await(th_stats(node).processes == 2); /* the watcher and the spawner */
    /* the watcher has every event in its mailbox: a call after them is a barrier */
    sync_call(node, wpid);
    th_node_stop(node);
    check_order(&rec_a, "function subscriber", total);
    check_order(&rec_b, "process subscriber", total);
    cr_assert_eq(count_kind(&rec_a, AR_EV_LAGGED), 0);
    cr_assert_eq(count_kind(&rec_b, AR_EV_LAGGED), 0);
}

Test(events, failed_init_gives_start_failed_and_no_spawn_or_exit, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_ALL, &rec_a);
    cr_assert_eq(ar_spawn(node, &enoent_b, NULL, NULL, NULL), AR_ENOENT);
    cr_assert_eq(ar_spawn(node, &crash_init_b, NULL, NULL, NULL), AR_ENOPROC);
    th_node_stop(node);
    cr_assert_eq(count_kind(&rec_a, AR_EV_START_FAILED), 2);
    cr_assert_eq(count_kind(&rec_a, AR_EV_SPAWN), 0, "no SPAWN for a failed start");
    cr_assert_eq(count_kind(&rec_a, AR_EV_EXIT), 0, "no EXIT for a failed start");
    rec_ev_t *a = &rec_a.e[0], *b = &rec_a.e[1];
    cr_assert_str_eq(a->behaviour, "ev_enoent");
    cr_assert_eq(a->code, AR_ERROR);
    cr_assert_str_eq(a->text, "init returned AR_ENOENT");
    cr_assert(!ar_pid_is_none(a->pid) && ar_pid_is_none(a->supervisor));
    cr_assert_str_eq(b->behaviour, "ev_crash_init");
    cr_assert_eq(b->code, AR_ERROR);
    cr_assert_str_eq(b->text, "init blew up");
    cr_assert(!ar_pid_eq(a->pid, b->pid));
}

/* ---- subscribers ------------------------------------------------------------------------ */
Test(events, process_subscriber_gets_event_messages, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    static watcher_t w;
    ar_pid_t wpid = spawn_watcher(node, &w, AR_EV_SPAWN | AR_EV_EXIT | AR_EV_USER, &rec_a);
    ar_pid_t worker = th_spawn(node, &worker_b, NULL);
    th_send(node, worker, TAG_CRASH, NULL, 0);
    th_await(!th_proc_alive(node, worker));
    emit_user(node, 7);
    th_await(rec_len(&rec_a) >= 4); /* its own SPAWN, the worker's two, the USER */
    sync_call(node, wpid);
    cr_assert_eq(rec_len(&rec_a), 4);
    cr_assert_eq(rec_a.e[0].kind, AR_EV_SPAWN);
    cr_assert(ar_pid_eq(rec_a.e[0].pid, wpid), "it hears of its own SPAWN: subscribed in init");
    cr_assert_eq(rec_a.e[1].kind, AR_EV_SPAWN);
    cr_assert(ar_pid_eq(rec_a.e[1].pid, worker));
    cr_assert_eq(rec_a.e[2].kind, AR_EV_EXIT);
    cr_assert_eq(rec_a.e[2].code, AR_ERROR);
    cr_assert_str_eq(rec_a.e[2].text, "boom");
    cr_assert_eq(user_no(&rec_a.e[3]), 7);
    for (int i = 0; i < 4; i++) cr_assert_eq(rec_a.e[i].ref, w.ref, "m->ref is the subscription");
    th_node_stop(node);
}

static pthread_t proc_threads[256];
static atomic_int nproc_threads;
static int thread_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self, (void)arg, (void)state;
    int i = atomic_fetch_add(&nproc_threads, 1);
    if (i < 256) proc_threads[i] = pthread_self();
    return 0;
}
static const ar_behaviour_t thread_b = {.name = "ev_thread", .init = thread_init,
                                        .handle = nop_handle};

Test(events, function_subscriber_runs_on_its_own_thread_outside_any_process,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    rec_a.probe_spawn = true;
    subscribe_fn(node, AR_EV_SPAWN, &rec_a);
    for (int i = 0; i < 64; i++) th_spawn(node, &thread_b, NULL);
    th_await(rec_len(&rec_a) >= 64);
    for (size_t i = 0; i < 64; i++) {
        cr_assert_eq(rec_a.e[i].spawn_link_rc, AR_ENOTPROC, "no calling process in a callback");
        cr_assert(!pthread_equal(rec_a.e[i].thread, pthread_self()), "not the caller's thread");
        for (int j = 0; j < atomic_load(&nproc_threads) && j < 256; j++)
            cr_assert(!pthread_equal(rec_a.e[i].thread, proc_threads[j]),
                      "a callback ran on a thread that runs processes");
        cr_assert(pthread_equal(rec_a.e[i].thread, rec_a.e[0].thread), "one events thread");
    }
    th_node_stop(node);
}

Test(events, unsubscribe_stops_delivery, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    rec_init(&rec_b, node);
    ar_ref_t ref = subscribe_fn(node, AR_EV_USER, &rec_a);
    static watcher_t w;
    ar_pid_t wpid = spawn_watcher(node, &w, AR_EV_USER, &rec_b);
    emit_user(node, 1);
    th_await(rec_len(&rec_a) == 1);
    sync_call(node, wpid);
    cr_assert_eq(rec_len(&rec_b), 1);

    cr_assert_eq(ar_events_unsubscribe(node, ref), 0);
    cr_assert_eq(ar_events_unsubscribe(node, ref), AR_ENOENT, "once only");
    ar_buf_t b = {0};
    cr_assert_eq(ar_call(node, wpid, TAG_UNSUB, NULL, 0, &b, TH_WAIT_MS), 0);
    cr_assert_eq(*(int *)b.data, 0, "the process unsubscribed itself");
    ar_buf_free(&b);
    cr_assert_eq(ar_events_unsubscribe(node, w.ref), AR_ENOENT);
    cr_assert(!ar_events_wanted(node, AR_EV_USER), "nobody wants USER any more");

    emit_user(node, 2);
    emit_user(node, 3);
    sync_call(node, wpid); /* anything queued for it would have been handled before */
    cr_assert_eq(rec_len(&rec_b), 1, "the process heard nothing after unsubscribing");
    th_node_stop(node); /* delivers everything buffered */
    cr_assert_eq(rec_len(&rec_a), 1, "the function heard nothing after unsubscribing");
}

/* A function unsubscribing itself from inside its callback. */
static ar_ref_t self_ref;
static atomic_int self_calls, self_rc = 1;
static void unsub_self_fn(const ar_event_t *e, void *ud)
{
    (void)e;
    atomic_fetch_add(&self_calls, 1);
    atomic_store(&self_rc, ar_events_unsubscribe(ud, self_ref));
}

Test(events, a_function_may_unsubscribe_itself_from_its_callback, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    cr_assert_eq(ar_events_subscribe_fn(node, AR_EV_USER, unsub_self_fn, node, &self_ref), 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_USER, &rec_a);
    for (int i = 0; i < 10; i++) emit_user(node, (uint64_t)i); /* buffered before it runs */
    th_await(rec_len(&rec_a) == 10);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&self_rc), 0, "unsubscribe from its own callback");
    cr_assert_eq(atomic_load(&self_calls), 1, "no callback after it unsubscribed");
}

/* A callback may call into its node, but not stop it: that would join its own thread. */
static atomic_int stop_rc = 1, emit_rc = 1;
static void stopper_fn(const ar_event_t *e, void *ud)
{
    if (e->kind != AR_EV_USER || strcmp(e->name ? e->name : "", "stop?") != 0) return;
    atomic_store(&stop_rc, ar_node_stop(ud, 0));
    ar_event_t again = {.kind = AR_EV_USER, .name = "from a callback"};
    atomic_store(&emit_rc, ar_events_emit(ud, &again));
}

Test(events, a_callback_cannot_stop_its_node_but_may_emit, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    cr_assert_eq(ar_events_subscribe_fn(node, AR_EV_USER, stopper_fn, node, NULL), 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_USER, &rec_a);
    ar_event_t e = {.kind = AR_EV_USER, .name = "stop?"};
    cr_assert_eq(ar_events_emit(node, &e), 0);
    th_await(rec_len(&rec_a) == 2);
    cr_assert_eq(atomic_load(&stop_rc), AR_EDEADLK);
    cr_assert_eq(atomic_load(&emit_rc), 0);
    cr_assert_str_eq(rec_a.e[1].name, "from a callback");
    th_node_stop(node);
}

/* ---- LAGGED ----------------------------------------------------------------------------- */
enum { BUF = 8, OVER = 5 };

/* What a stalled subscriber must get once it reads again: event 0 (which it stalled on),
 * events 1..BUF (its buffer), LAGGED with OVER, then what comes after. */
static void check_lagged(rec_t *r, const char *who)
{
    cr_assert_eq(rec_len(r), 1 + BUF + 1 + 1, "%s: %zu events", who, rec_len(r));
    for (int i = 0; i <= BUF; i++) cr_assert_eq(user_no(&r->e[i]), i, "%s: event %d", who, i);
    rec_ev_t *lag = &r->e[BUF + 1];
    cr_assert_eq(lag->kind, AR_EV_LAGGED, "%s: LAGGED after the buffer", who);
    cr_assert_eq(lag->dropped, OVER, "%s: LAGGED counts %llu, %d were dropped", who,
                 (unsigned long long)lag->dropped, OVER);
    cr_assert_gt(lag->seq, r->e[BUF].seq, "%s", who);
    cr_assert_eq(user_no(&r->e[BUF + 2]), 100, "%s: later events come after LAGGED", who);
    cr_assert_gt(r->e[BUF + 2].seq, lag->seq, "%s", who);
}

/* While the subscriber stalls, the runtime goes on: spawns and calls complete. */
static void runtime_goes_on(ar_node_t *node)
{
    for (int i = 0; i < 20; i++) th_echo_check(node, th_spawn(node, &th_echo, NULL));
}

Test(events, stalled_function_subscriber_gets_lagged_with_the_exact_count,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, BUF);
    rec_init(&rec_a, node);
    atomic_store(&rec_a.block_at, 0);
    subscribe_fn(node, AR_EV_USER, &rec_a);
    emit_user(node, 0);
    th_await(atomic_load(&rec_a.blocked));
    for (int i = 1; i <= BUF + OVER; i++) emit_user(node, (uint64_t)i); /* OVER too many */
    runtime_goes_on(node);
    cr_assert_eq(rec_len(&rec_a), 1, "it was stalled all along");
    sem_post(&rec_a.gate);
    th_await(rec_len(&rec_a) == 1 + BUF + 1); /* the LAGGED comes without a new event */
    emit_user(node, 100);
    th_await(rec_len(&rec_a) == 1 + BUF + 2);
    check_lagged(&rec_a, "function");
    th_node_stop(node);
}

Test(events, process_subscriber_that_stops_reading_gets_lagged_with_the_exact_count,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, BUF);
    rec_init(&rec_a, node);
    atomic_store(&rec_a.block_at, 0);
    static watcher_t w;
    ar_pid_t wpid = spawn_watcher(node, &w, AR_EV_USER, &rec_a);
    emit_user(node, 0);
    th_await(atomic_load(&rec_a.blocked));
    for (int i = 1; i <= BUF + OVER; i++) emit_user(node, (uint64_t)i);
    runtime_goes_on(node);
    cr_assert_eq(rec_len(&rec_a), 1, "its handler was blocked all along");
    th_send(node, wpid, TAG_GO, NULL, 0);
    th_await(rec_len(&rec_a) == 1 + BUF + 1);
    emit_user(node, 100);
    th_await(rec_len(&rec_a) == 1 + BUF + 2);
    check_lagged(&rec_a, "process");
    th_node_stop(node);
}

Test(events, kinds_mask_filters, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    rec_init(&rec_b, node);
    rec_init(&rec_c, node);
    subscribe_fn(node, AR_EV_EXIT, &rec_a);
    subscribe_fn(node, AR_EV_USER, &rec_b);
    subscribe_fn(node, AR_EV_SPAWN | AR_EV_USER, &rec_c);
    cr_assert(!ar_events_wanted(node, AR_EV_RESTART | AR_EV_GIVE_UP));
    cr_assert(ar_events_wanted(node, AR_EV_RESTART | AR_EV_USER));
    ar_pid_t p = th_spawn(node, &worker_b, NULL);
    th_send(node, p, TAG_STOP, NULL, 0);
    th_await(!th_proc_alive(node, p));
    emit_user(node, 1);
    th_node_stop(node);
    cr_assert_eq(rec_len(&rec_a), 1);
    cr_assert_eq(rec_a.e[0].kind, AR_EV_EXIT);
    cr_assert_eq(rec_len(&rec_b), 1);
    cr_assert_eq(rec_b.e[0].kind, AR_EV_USER);
    cr_assert_eq(rec_len(&rec_c), 2);
    cr_assert_eq(rec_c.e[0].kind, AR_EV_SPAWN);
    cr_assert_eq(rec_c.e[1].kind, AR_EV_USER);
}

Test(events, emit_user_event_fills_seq_and_time_and_copies_strings, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    atomic_store(&rec_a.block_at, 0);
    subscribe_fn(node, AR_EV_USER, &rec_a);
    emit_user(node, 0); /* stalls it: what follows is copied before it is read */
    th_await(atomic_load(&rec_a.blocked));
    char behaviour[16] = "my_behaviour", name[16] = "my-name", text[32] = "something happened";
    ar_pid_t me = th_spawn(node, &nop_b, NULL);
    ar_event_t e = {.kind = AR_EV_USER, .seq = 12345678, .time_ns = 1, .pid = me,
                    .old_pid = me, .supervisor = me, .behaviour = behaviour, .name = name,
                    .reason = {AR_ERROR, text}, .dropped = 99};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t before = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    cr_assert_eq(ar_events_emit(node, &e), 0);
    memset(behaviour, 'x', sizeof behaviour - 1);
    memset(name, 'x', sizeof name - 1);
    memset(text, 'x', sizeof text - 1);
    sem_post(&rec_a.gate);
    th_await(rec_len(&rec_a) == 2);
    th_node_stop(node);
    rec_ev_t *x = &rec_a.e[1];
    cr_assert_eq(x->kind, AR_EV_USER);
    cr_assert_gt(x->seq, rec_a.e[0].seq);
    cr_assert_neq(x->seq, 12345678, "seq is the node's");
    cr_assert_geq(x->time_ns, before, "time_ns is the wall clock at emit");
    cr_assert_lt(x->time_ns, before + 10ull * 1000000000u);
    cr_assert(ar_pid_eq(x->pid, me) && ar_pid_eq(x->old_pid, me) && ar_pid_eq(x->supervisor, me));
    cr_assert_str_eq(x->behaviour, "my_behaviour");
    cr_assert_str_eq(x->name, "my-name");
    cr_assert_eq(x->code, AR_ERROR);
    cr_assert_str_eq(x->text, "something happened");
    cr_assert_eq(x->dropped, 0);
}

Test(events, long_texts_are_cut_to_the_limit, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(1, 0);
    static char big[AR_EVENT_TEXT_MAX * 2];
    memset(big, 'a', sizeof big - 1);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_USER, &rec_a);
    ar_event_t e = {.kind = AR_EV_USER, .behaviour = big, .name = big, .reason = {AR_ERROR, big}};
    cr_assert_eq(ar_events_emit(node, &e), 0);
    th_node_stop(node);
    cr_assert_eq(rec_len(&rec_a), 1);
    cr_assert_eq(rec_a.e[0].name_len, AR_EVENT_TEXT_MAX - 1);
    cr_assert_eq(rec_a.e[0].text_len, AR_EVENT_TEXT_MAX - 1);
}

/* ---- supervisors ------------------------------------------------------------------------ */
static ar_pid_t child_of(ar_node_t *node, ar_pid_t sup, const char *id)
{
    ar_child_info_t kids[8];
    size_t n = 0;
    cr_assert_eq(ar_sup_which_children(node, sup, kids, 8, &n), 0);
    for (size_t i = 0; i < n && i < 8; i++)
        if (strcmp(kids[i].id, id) == 0) return kids[i].pid;
    return AR_PID_NONE;
}

static const ar_child_spec_t one_worker[] = {{.id = "w", .behaviour = &worker_b}};

Test(events, supervisor_restart_tells_old_and_new_pid_reason_and_child_id,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_RESTART | AR_EV_EXIT, &rec_a);
    static const ar_sup_spec_t spec = {.strategy = AR_ONE_FOR_ONE, .intensity = 5,
                                       .children = one_worker, .nchildren = 1};
    ar_pid_t sup;
    cr_assert_eq(ar_sup_start(node, &spec, NULL, &sup), 0);
    ar_pid_t old = child_of(node, sup, "w");
    th_send(node, old, TAG_CRASH, NULL, 0);
    th_await(count_kind(&rec_a, AR_EV_RESTART) == 1);
    ar_pid_t now = child_of(node, sup, "w");
    cr_assert(!ar_pid_is_none(now) && !ar_pid_eq(now, old));
    size_t n;
    rec_ev_t *r = find(&rec_a, AR_EV_RESTART, now, &n);
    cr_assert_not_null(r);
    cr_assert(ar_pid_eq(r->old_pid, old));
    cr_assert(ar_pid_eq(r->supervisor, sup));
    cr_assert_str_eq(r->name, "w");
    cr_assert_str_eq(r->behaviour, "ev_worker");
    cr_assert_eq(r->code, AR_ERROR);
    cr_assert_str_eq(r->text, "boom");
    rec_ev_t *x = find(&rec_a, AR_EV_EXIT, old, &n);
    cr_assert_not_null(x);
    cr_assert_lt(x->seq, r->seq, "the old child's EXIT comes before its RESTART");
    th_node_stop(node);
}

Test(events, supervisor_reports_a_child_that_fails_to_start, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_START_FAILED, &rec_a);
    static const ar_sup_spec_t spec = {.strategy = AR_ONE_FOR_ONE, .children = one_worker,
                                       .nchildren = 1};
    ar_pid_t sup;
    cr_assert_eq(ar_sup_start(node, &spec, NULL, &sup), 0);
    ar_child_spec_t bad = {.id = "bad", .behaviour = &enoent_b};
    cr_assert_eq(ar_sup_start_child(node, sup, &bad, NULL, NULL), AR_ENOENT);
    th_node_stop(node);
    cr_assert_eq(rec_len(&rec_a), 2, "the runtime's and the supervisor's");
    rec_ev_t *rt = &rec_a.e[0], *sv = &rec_a.e[1];
    cr_assert(ar_pid_is_none(rt->supervisor), "the runtime knows no supervisor");
    cr_assert_str_eq(rt->behaviour, "ev_enoent");
    cr_assert(ar_pid_eq(sv->supervisor, sup));
    cr_assert_str_eq(sv->name, "bad");
    cr_assert_str_eq(sv->behaviour, "ev_enoent");
    cr_assert_eq(sv->code, AR_ERROR);
    cr_assert(strstr(sv->text, "AR_ENOENT") != NULL, "text: %s", sv->text);
}

Test(events, supervisor_gives_up_before_it_exits, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_GIVE_UP | AR_EV_EXIT | AR_EV_RESTART, &rec_a);
    static const ar_sup_spec_t mid = {.strategy = AR_ONE_FOR_ONE, .intensity = 1,
                                      .period_ms = 60000, .children = one_worker,
                                      .nchildren = 1};
    static const ar_child_spec_t root_kids[] = {
        {.id = "mid", .behaviour = &ar_supervisor, .arg = (void *)&mid}};
    static const ar_sup_spec_t root = {.strategy = AR_ONE_FOR_ONE, .intensity = 10,
                                       .children = root_kids, .nchildren = 1};
    ar_pid_t top;
    cr_assert_eq(ar_sup_start(node, &root, NULL, &top), 0);
    ar_pid_t m = child_of(node, top, "mid");
    ar_pid_t w1 = child_of(node, m, "w");
    th_send(node, w1, TAG_CRASH, NULL, 0); /* restarted: one restart allowed */
    th_await(count_kind(&rec_a, AR_EV_RESTART) == 1);
    ar_pid_t w2 = child_of(node, m, "w");
    th_send(node, w2, TAG_CRASH, NULL, 0); /* the second: mid gives up */
    th_await(count_kind(&rec_a, AR_EV_GIVE_UP) == 1 && count_kind(&rec_a, AR_EV_RESTART) == 2);
    size_t n;
    rec_ev_t *g = find(&rec_a, AR_EV_GIVE_UP, m, &n);
    cr_assert_not_null(g);
    cr_assert(ar_pid_eq(g->supervisor, top), "GIVE_UP's supervisor is the parent");
    cr_assert_str_eq(g->behaviour, "supervisor");
    cr_assert_str_eq(g->name, "w");
    cr_assert_eq(g->code, AR_ERROR);
    cr_assert_str_eq(g->text, "boom");
    th_await(find(&rec_a, AR_EV_EXIT, m, NULL) != NULL);
    rec_ev_t *x = find(&rec_a, AR_EV_EXIT, m, &n);
    cr_assert_lt(g->seq, x->seq, "GIVE_UP before the supervisor's EXIT");
    cr_assert_eq(x->code, AR_SHUTDOWN);
    rec_ev_t *wx = find(&rec_a, AR_EV_EXIT, w2, &n);
    cr_assert_lt(wx->seq, g->seq);
    /* the root brings mid back: a RESTART of "mid" with the old pid */
    rec_ev_t *r = NULL;
    for (size_t i = 0; i < rec_len(&rec_a); i++)
        if (rec_a.e[i].kind == AR_EV_RESTART && strcmp(rec_a.e[i].name, "mid") == 0)
            r = &rec_a.e[i];
    cr_assert_not_null(r);
    cr_assert(ar_pid_eq(r->old_pid, m));
    cr_assert(ar_pid_eq(r->supervisor, top));
    cr_assert_eq(r->code, AR_SHUTDOWN);
    th_node_stop(node);
}

/* ---- a dead subscriber ------------------------------------------------------------------ */
Test(events, a_subscriber_process_that_ends_is_unsubscribed, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    static watcher_t w;
    ar_pid_t wpid = spawn_watcher(node, &w, AR_EV_USER | AR_EV_EXIT, &rec_a);
    cr_assert(ar_events_wanted(node, AR_EV_USER));
    th_send(node, wpid, TAG_STOP, NULL, 0);
    th_await(!ar_events_wanted(node, AR_EV_USER | AR_EV_EXIT));
    cr_assert_eq(ar_events_unsubscribe(node, w.ref), AR_ENOENT, "gone with its process");
    emit_user(node, 1);
    th_node_stop(node);
    for (size_t i = 0; i < rec_len(&rec_a); i++)
        cr_assert(!ar_pid_eq(rec_a.e[i].pid, wpid), "it heard of its own end");
}

static th_alloc_t alloc;

Test(events, a_subscriber_killed_with_events_queued_leaves_nothing, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    ar_node_t *node = events_node(2, 4);
    rec_init(&rec_a, node);
    atomic_store(&rec_a.block_at, 0);
    static watcher_t w;
    ar_pid_t wpid = spawn_watcher(node, &w, AR_EV_USER, &rec_a);
    emit_user(node, 0);
    th_await(atomic_load(&rec_a.blocked));
    for (int i = 1; i <= 10; i++) emit_user(node, (uint64_t)i); /* 4 queued, 6 dropped */
    cr_assert_eq(ar_exit(node, wpid, AR_REASON(AR_KILL)), 0);
    th_await(!ar_events_wanted(node, AR_EV_USER));
    emit_user(node, 11);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0, "%ld blocks left", atomic_load(&alloc.live));
}

/* ---- arguments ------------------------------------------------------------------------- */
static void dummy_fn(const ar_event_t *e, void *ud) { (void)e, (void)ud; }

typedef struct subscribe_probe {
    ar_node_t *other;
    int rc_other, rc_zero, rc_unknown;
} subscribe_probe_t;
static int probe_init(ar_proc_t *self, void *arg, void **state)
{
    subscribe_probe_t *p = arg;
    (void)state;
    p->rc_other = ar_events_subscribe(p->other, AR_EV_USER, NULL);
    p->rc_zero = ar_events_subscribe(ar_node(self), 0, NULL);
    p->rc_unknown = ar_events_subscribe(ar_node(self), 1u << 12, NULL);
    return 0;
}
static const ar_behaviour_t probe_b = {.name = "ev_probe", .init = probe_init,
                                       .handle = nop_handle};

Test(events, arguments_are_checked, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(1, 0);
    ar_ref_t ref = 0;
    cr_assert_eq(ar_events_subscribe(NULL, AR_EV_USER, &ref), AR_EINVAL);
    cr_assert_eq(ar_events_subscribe(node, 0, &ref), AR_EINVAL);
    cr_assert_eq(ar_events_subscribe(node, AR_EV_ALL + 1, &ref), AR_EINVAL);
    cr_assert_eq(ar_events_subscribe(node, AR_EV_USER, &ref), AR_ENOTPROC, "not from main");
    cr_assert_eq(ar_events_subscribe_fn(NULL, AR_EV_USER, dummy_fn, NULL, &ref), AR_EINVAL);
    cr_assert_eq(ar_events_subscribe_fn(node, AR_EV_USER, NULL, NULL, &ref), AR_EINVAL);
    cr_assert_eq(ar_events_subscribe_fn(node, 0, dummy_fn, NULL, &ref), AR_EINVAL);
    cr_assert_eq(ar_events_subscribe_fn(node, 1u << 30, dummy_fn, NULL, &ref), AR_EINVAL,
                 "internal bits are not the user's");
    cr_assert_eq(ar_events_unsubscribe(NULL, 1), AR_EINVAL);
    cr_assert_eq(ar_events_unsubscribe(node, 0), AR_ENOENT);
    cr_assert_eq(ar_events_unsubscribe(node, 123456), AR_ENOENT);
    ar_event_t e = {.kind = AR_EV_USER};
    cr_assert_eq(ar_events_emit(NULL, &e), AR_EINVAL);
    cr_assert_eq(ar_events_emit(node, NULL), AR_EINVAL);
    uint32_t bad[] = {0, AR_EV_USER | AR_EV_SPAWN, 1u << 12, 1u << 30, AR_EV_LAGGED};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e.kind = (ar_event_kind_t)bad[i];
        cr_assert_eq(ar_events_emit(node, &e), AR_EINVAL, "kind %#x", bad[i]);
    }
    e.kind = AR_EV_USER;
    cr_assert_eq(ar_events_emit(node, &e), 0, "no subscriber: fine");
    cr_assert(!ar_events_wanted(NULL, AR_EV_ALL));
    cr_assert(!ar_events_wanted(node, AR_EV_ALL), "nobody subscribes (crash reports off)");
    cr_assert_str_eq(ar_event_kind_name(AR_EV_GIVE_UP), "GIVE_UP");
    cr_assert_str_eq(ar_event_kind_name(AR_EV_LAGGED), "LAGGED");
    cr_assert_str_eq(ar_event_kind_name(3), "UNKNOWN");
    /* subscribe from a process of another node, or with bad kinds from its own */
    ar_node_t *other = events_node(1, 0);
    static subscribe_probe_t p;
    p.other = other;
    th_spawn(node, &probe_b, &p);
    cr_assert_eq(p.rc_other, AR_ENOTPROC);
    cr_assert_eq(p.rc_zero, AR_EINVAL);
    cr_assert_eq(p.rc_unknown, AR_EINVAL);
    th_node_stop(other);
    cr_assert_eq(ar_events_subscribe_fn(node, AR_EV_USER, dummy_fn, NULL, NULL), 0,
                 "the ref is optional");
    th_node_stop(node);
}

/* ---- out of memory -------------------------------------------------------------------------- */
enum { MAX_N = 200 };

Test(events, subscribe_fn_out_of_memory_is_enomem_and_leaks_nothing, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    ar_node_t *node = events_node(2, 0);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_ref_t ref = 0;
        th_alloc_arm(&alloc, n);
        int rc = ar_events_subscribe_fn(node, AR_EV_USER, dummy_fn, NULL, &ref);
        bool injected = th_alloc_disarm(&alloc);
        if (rc == 0) {
            cr_assert_eq(ar_events_unsubscribe(node, ref), 0);
            done = !injected;
        } else {
            cr_assert_eq(rc, AR_ENOMEM, "n=%ld: %s", n, ar_err_name(rc));
            cr_assert(!ar_events_wanted(node, AR_EV_USER), "n=%ld: a failed subscribe", n);
            failures++;
        }
    }
    cr_assert(done);
    cr_assert_gt(failures, 0);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

Test(events, emit_out_of_memory_drops_and_reports_lagged, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_USER, &rec_a);
    emit_user(node, 0);
    th_await(rec_len(&rec_a) == 1); /* its queue is empty: nothing else allocates */
    th_alloc_arm(&alloc, 1); /* the copy for the subscriber */
    emit_user(node, 1);
    cr_assert(th_alloc_disarm(&alloc));
    th_alloc_arm(&alloc, 2); /* the copy succeeds, the LAGGED does not: both count */
    emit_user(node, 2);
    cr_assert(th_alloc_disarm(&alloc));
    emit_user(node, 3);
    th_node_stop(node);
    cr_assert_eq(rec_len(&rec_a), 3);
    cr_assert_eq(user_no(&rec_a.e[0]), 0);
    cr_assert_eq(rec_a.e[1].kind, AR_EV_LAGGED);
    cr_assert_eq(rec_a.e[1].dropped, 2);
    cr_assert_eq(user_no(&rec_a.e[2]), 3);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

typedef struct sub_oom {
    int rc;
    ar_ref_t ref;
} sub_oom_t;
static sub_oom_t sub_oom;
static th_alloc_t *sub_oom_alloc;
static void sub_oom_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind != AR_MSG_CALL) return;
    long n = *(const long *)m->data;
    th_alloc_arm(sub_oom_alloc, n);
    sub_oom.rc = ar_events_subscribe(ar_node(self), AR_EV_USER, &sub_oom.ref);
    bool injected = th_alloc_disarm(sub_oom_alloc);
    if (sub_oom.rc == 0) ar_events_unsubscribe(ar_node(self), sub_oom.ref);
    ar_reply(ar_node(self), m->reply_to, &injected, sizeof injected);
}
static const ar_behaviour_t sub_oom_b = {.name = "ev_sub_oom", .handle = sub_oom_handle};

Test(events, process_subscribe_out_of_memory_is_enomem, .timeout = TH_TIMEOUT)
{
    th_alloc_install(&alloc);
    sub_oom_alloc = &alloc;
    ar_node_t *node = events_node(2, 0);
    ar_pid_t p = th_spawn(node, &sub_oom_b, NULL);
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_buf_t b = {0};
        cr_assert_eq(ar_call(node, p, 1, &n, sizeof n, &b, TH_WAIT_MS), 0);
        bool injected = *(bool *)b.data;
        ar_buf_free(&b);
        if (sub_oom.rc == 0) {
            done = !injected;
        } else {
            cr_assert_eq(sub_oom.rc, AR_ENOMEM, "n=%ld: %s", n, ar_err_name(sub_oom.rc));
            failures++;
        }
        cr_assert(!ar_events_wanted(node, AR_EV_USER));
    }
    cr_assert(done);
    cr_assert_gt(failures, 0);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

/* ---- names and the registry ------------------------------------------------------------ */
static void stop_on_cast(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind == AR_MSG_CAST) ar_stop(self, AR_REASON(AR_NORMAL));
}
static const ar_behaviour_t stop_on_cast_b = {.name = "ev_named", .handle = stop_on_cast};

Test(events, names_emit_register_and_unregister_and_exit_follows_the_release,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_SPAWN | AR_EV_EXIT | AR_EV_REGISTER | AR_EV_UNREGISTER, &rec_a);
    ar_spawn_opts_t o = {.name = "ev-svc"};
    ar_pid_t a, b;
    cr_assert_eq(ar_spawn(node, &stop_on_cast_b, NULL, &o, &a), 0);
    cr_assert_eq(ar_spawn(node, &stop_on_cast_b, NULL, NULL, &b), 0);
    cr_assert_eq(ar_unregister(node, "ev-svc"), 0);
    cr_assert_eq(ar_register(node, "ev-other", b), 0);
    cr_assert_eq(ar_send(node, b, 0, NULL, 0), 0); /* b ends holding its name */
    th_await(find(&rec_a, AR_EV_EXIT, b, NULL) != NULL);
    rec_ev_t *reg_a = find(&rec_a, AR_EV_REGISTER, a, NULL);
    rec_ev_t *spawn_a = find(&rec_a, AR_EV_SPAWN, a, NULL);
    rec_ev_t *unreg_a = find(&rec_a, AR_EV_UNREGISTER, a, NULL);
    cr_assert(reg_a && spawn_a && unreg_a, "REGISTER, SPAWN and UNREGISTER of the named spawn");
    cr_assert_str_eq(reg_a->name, "ev-svc");
    cr_assert_str_eq(spawn_a->name, "ev-svc", "SPAWN carries the name taken before init");
    cr_assert(reg_a->seq < spawn_a->seq && spawn_a->seq < unreg_a->seq);
    cr_assert_str_eq(unreg_a->name, "ev-svc");
    rec_ev_t *reg_b = find(&rec_a, AR_EV_REGISTER, b, NULL);
    rec_ev_t *unreg_b = find(&rec_a, AR_EV_UNREGISTER, b, NULL);
    rec_ev_t *exit_b = find(&rec_a, AR_EV_EXIT, b, NULL);
    cr_assert(reg_b && unreg_b && exit_b);
    cr_assert_str_eq(unreg_b->name, "ev-other", "the name goes as the process ends");
    cr_assert_str_eq(exit_b->name, "ev-other", "EXIT tells the name it had");
    cr_assert(unreg_b->seq < exit_b->seq, "EXIT comes after the name is released");
    cr_assert(ar_pid_is_none(ar_whereis(node, "ev-other")));
    th_node_stop(node);
}

static int reap_me_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    (void)arg;
    *state = NULL;
    return 0;
}
static const ar_behaviour_t reap_me_b = {.name = "ev_keyed", .init = reap_me_init,
                                         .handle = nop_handle};

Test(events, the_registry_emits_reap_with_the_key, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = events_node(2, 0);
    rec_init(&rec_a, node);
    subscribe_fn(node, AR_EV_REAP | AR_EV_EXIT, &rec_a);
    ar_registry_config_t cfg = {.behaviour = &reap_me_b, .idle_ms = 20};
    ar_registry_t *r;
    cr_assert_eq(ar_registry_start(node, &cfg, &r), 0);
    ar_pid_t pid;
    cr_assert_eq(ar_registry_get_or_spawn(r, (ar_key_t){"cart-7", 6}, &pid), 0);
    th_await(find(&rec_a, AR_EV_EXIT, pid, NULL) != NULL && find(&rec_a, AR_EV_REAP, pid, NULL));
    size_t n;
    rec_ev_t *reap = find(&rec_a, AR_EV_REAP, pid, &n);
    rec_ev_t *exit_ev = find(&rec_a, AR_EV_EXIT, pid, NULL);
    cr_assert(reap != NULL && n == 1, "one REAP for the reaped entry");
    cr_assert_str_eq(reap->name, "cart-7");
    cr_assert_str_eq(reap->behaviour, "ev_keyed");
    cr_assert(ar_pid_eq(reap->supervisor, ar_registry_pid(r)));
    cr_assert_eq(exit_ev->code, AR_SHUTDOWN);
    cr_assert_eq(ar_registry_stop(r), 0);
    th_node_stop(node);
}
