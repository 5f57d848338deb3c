/* stress_churn: spawn/exit churn under concurrent sends to live, stale and forged pids.
 *
 * SLOTS worker slots each hold one live incarnation. A worker ends after a random number
 * of messages (by ar_stop or ar_exit_self) and is replaced: even slots by a manager
 * process (spawn from a process), odd slots by a respawner thread (spawn from a foreign
 * thread). Meanwhile sender threads and sender processes send without pause to the
 * current pid of a random slot, to a retired pid of an earlier incarnation, or to a
 * forged pid (a live pid's slot index with a serial not yet issued). Every message
 * carries the pid it was addressed to.
 * Invariants: a worker only ever handles messages addressed to its own pid (a stale or
 * forged pid never reaches the slot's new occupant); every send returns 0; terminate runs
 * exactly once per incarnation; and the node's counters add up at the end: delivered ==
 * messages our handlers saw, every accepted send was delivered or dropped, every send to
 * a forged pid was dropped, spawned/exited match our own counts.
 *
 * Usage: stress_churn [seed]
 */
#include "stress_util.h"

#define SLOTS 48
#define RETIRED 256
#define N_THREADS 3
#define N_SPROCS 8
#define LIFE_MAX 48
#define RESPAWNS (ST_TSAN ? 5000 : 30000) /* incarnations to churn through... */
#define CHURN_MS (ST_TSAN ? 6000 : 4000)   /* ...unless this time runs out first */
#define BURST_MAX 32

enum { TAG_WORK = 1, TAG_ENDED, TAG_GO, TAG_MORE };
enum { SEND_LIVE, SEND_STALE, SEND_FORGED, SEND_KINDS };
static const char *const kind_name[SEND_KINDS] = {"current", "retired", "forged"};

typedef struct work_msg {
    uint64_t hi, lo; /* the pid it was addressed to */
    uint32_t kind, sender;
} work_msg_t;

typedef struct incarnation {
    uint32_t slot, gen, life, handled;
    ar_pid_t pid;
    _Atomic uint32_t terminated;
} incarnation_t;

static ar_node_t *g_node;
static ar_pid_t g_manager;

/* The slot table: current pid of each slot, and a ring of retired pids. */
static pthread_mutex_t g_tab_lock = PTHREAD_MUTEX_INITIALIZER;
static ar_pid_t g_slot_pid[SLOTS];
static uint32_t g_slot_gen[SLOTS];
static ar_pid_t g_retired[RETIRED];
static uint32_t g_nretired;

static _Atomic uint32_t g_slot_ended[SLOTS]; /* odd slots: the respawner's to-do flags */
static atomic_bool g_stop;                    /* senders and respawns stop */
static atomic_ulong g_spawn_ok, g_terminated, g_ended, g_respawned;
static atomic_ulong g_accepted, g_handled;
static atomic_ulong g_sent_kind[SEND_KINDS], g_work_handled;
static atomic_uint g_senders_done;

/* Every incarnation ever started, so the end can check each terminated exactly once. */
static pthread_mutex_t g_all_lock = PTHREAD_MUTEX_INITIALIZER;
static incarnation_t **g_all;
static size_t g_nall, g_capall;

static void remember(incarnation_t *inc)
{
    pthread_mutex_lock(&g_all_lock);
    if (g_nall == g_capall) {
        g_capall = g_capall ? g_capall * 2 : 1024;
        g_all = realloc(g_all, g_capall * sizeof *g_all);
        if (g_all == NULL) st_fail("out of memory");
    }
    g_all[g_nall++] = inc;
    pthread_mutex_unlock(&g_all_lock);
}

/* ---- workers ------------------------------------------------------------------------ */
static int worker_init(ar_proc_t *self, void *arg, void **state)
{
    incarnation_t *inc = arg;
    inc->pid = ar_self(self);
    *state = inc;
    return 0;
}

static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    incarnation_t *inc = state;
    atomic_fetch_add_explicit(&g_handled, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_work_handled, 1, memory_order_relaxed);
    char a[AR_PID_STRLEN], b[AR_PID_STRLEN];
    if (m->kind != AR_MSG_CAST || m->tag != TAG_WORK || m->len != sizeof(work_msg_t)) {
        st_violation("worker %s: unexpected message kind %d tag %u len %zu",
                     st_pid_str(ar_self(self), a), (int)m->kind, m->tag, m->len);
        return;
    }
    work_msg_t w;
    memcpy(&w, m->data, sizeof w);
    ar_pid_t to = {w.hi, w.lo};
    if (!ar_pid_eq(to, ar_self(self))) {
        st_violation("message addressed to %s (%s pid, sender %u) was delivered to %s "
                     "(slot %u generation %u)",
                     st_pid_str(to, a), w.kind < SEND_KINDS ? kind_name[w.kind] : "?",
                     w.sender, st_pid_str(ar_self(self), b), inc->slot, inc->gen);
    }
    if (++inc->handled < inc->life) return;

    /* End of life: have the slot respawned, then end one of two ways. */
    atomic_fetch_add_explicit(&g_ended, 1, memory_order_relaxed);
    if (inc->slot % 2 == 0) {
        uint32_t slot = inc->slot;
        int rc = ar_send(g_node, g_manager, TAG_ENDED, &slot, sizeof slot);
        if (rc != 0) st_fail("worker: ar_send to the manager returned %s", ar_err_name(rc));
        atomic_fetch_add_explicit(&g_accepted, 1, memory_order_relaxed);
    } else {
        /* release: the respawner sees the flag only after this incarnation is done */
        atomic_store_explicit(&g_slot_ended[inc->slot], 1, memory_order_release);
    }
    if (inc->gen % 2 == 0) ar_stop(self, AR_REASON(AR_NORMAL));
    else ar_exit_self(self, AR_REASON(AR_NORMAL));
}

static void worker_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    (void)why;
    incarnation_t *inc = state;
    uint32_t n = atomic_fetch_add_explicit(&inc->terminated, 1, memory_order_relaxed);
    ST_CHECK(n == 0, "terminate ran %u times for slot %u generation %u", n + 1, inc->slot,
             inc->gen);
    atomic_fetch_add_explicit(&g_terminated, 1, memory_order_relaxed);
}

static const ar_behaviour_t worker_b = {"churn_worker", worker_init, worker_handle,
                                        worker_terminate};

/* Starts the next incarnation of a slot and publishes its pid (retiring the old one). */
static void respawn(uint32_t slot, uint32_t gen)
{
    incarnation_t *inc = calloc(1, sizeof *inc);
    if (inc == NULL) st_fail("out of memory");
    st_rng_t r = st_rng_for(((uint64_t)slot << 32) | gen);
    inc->slot = slot;
    inc->gen = gen;
    inc->life = (uint32_t)st_range(&r, 1, LIFE_MAX);
    remember(inc);
    ar_pid_t pid;
    int rc = ar_spawn(g_node, &worker_b, inc, NULL, &pid);
    if (rc != 0) st_fail("ar_spawn of slot %u generation %u: %s", slot, gen, ar_err_name(rc));
    atomic_fetch_add_explicit(&g_spawn_ok, 1, memory_order_relaxed);
    pthread_mutex_lock(&g_tab_lock);
    if (gen > 0) g_retired[g_nretired++ % RETIRED] = g_slot_pid[slot];
    g_slot_pid[slot] = pid;
    g_slot_gen[slot] = gen;
    pthread_mutex_unlock(&g_tab_lock);
}

static uint32_t next_gen(uint32_t slot)
{
    pthread_mutex_lock(&g_tab_lock);
    uint32_t g = g_slot_gen[slot] + 1;
    pthread_mutex_unlock(&g_tab_lock);
    return g;
}

/* Respawns even slots; it is a process, so its spawns run init on its own stack. */
static void manager_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    atomic_fetch_add_explicit(&g_handled, 1, memory_order_relaxed);
    uint32_t slot;
    if (m->kind != AR_MSG_CAST || m->tag != TAG_ENDED || m->len != sizeof slot) {
        st_violation("manager: unexpected message kind %d tag %u", (int)m->kind, m->tag);
        return;
    }
    memcpy(&slot, m->data, sizeof slot);
    if (!atomic_load_explicit(&g_stop, memory_order_relaxed)) respawn(slot, next_gen(slot));
    atomic_fetch_add_explicit(&g_respawned, 1, memory_order_relaxed);
}

static const ar_behaviour_t manager_b = {"churn_manager", NULL, manager_handle, NULL};

/* Respawns odd slots from a foreign thread. */
static void *respawner_main(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        bool any = false;
        for (uint32_t s = 1; s < SLOTS; s += 2) {
            /* acquire: pairs with the worker's release of its ended flag */
            if (atomic_exchange_explicit(&g_slot_ended[s], 0, memory_order_acquire)) {
                respawn(s, next_gen(s));
                atomic_fetch_add_explicit(&g_respawned, 1, memory_order_relaxed);
                any = true;
            }
        }
        if (!any) st_nap_us(20);
    }
    return NULL;
}

/* ---- senders ------------------------------------------------------------------------ */
static void send_random(st_rng_t *r, uint32_t sender)
{
    uint32_t slot = (uint32_t)st_below(r, SLOTS);
    unsigned pick = (unsigned)st_below(r, 100);
    uint32_t kind = pick < 60 ? SEND_LIVE : pick < 85 ? SEND_STALE : SEND_FORGED;
    ar_pid_t to;
    pthread_mutex_lock(&g_tab_lock);
    if (kind == SEND_STALE && g_nretired > 0) {
        uint32_t n = g_nretired < RETIRED ? g_nretired : RETIRED;
        to = g_retired[st_below(r, n)];
    } else {
        to = g_slot_pid[slot];
        if (kind == SEND_STALE) kind = SEND_LIVE;
    }
    pthread_mutex_unlock(&g_tab_lock);
    if (kind == SEND_FORGED) {
        /* Same slot index, a serial far ahead of any issued during this run. */
        to.lo += (uint64_t)1 << 60;
    }
    work_msg_t w = {to.hi, to.lo, kind, sender};
    int rc = ar_send(g_node, to, TAG_WORK, &w, sizeof w);
    if (rc != 0) st_fail("sender %u: ar_send to a %s pid returned %s", sender, kind_name[kind],
                         ar_err_name(rc));
    atomic_fetch_add_explicit(&g_accepted, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_sent_kind[kind], 1, memory_order_relaxed);
}

typedef struct sender {
    uint32_t id;
    st_rng_t rng;
} sender_t;

static sender_t g_senders[N_THREADS + N_SPROCS];

static void *thread_sender(void *arg)
{
    sender_t *s = arg;
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        uint64_t n = st_range(&s->rng, 1, BURST_MAX);
        for (uint64_t i = 0; i < n; i++) send_random(&s->rng, s->id);
        /* Leave the workers and the respawns some CPU: the churn is the point. */
        st_nap_us(20);
    }
    /* release: this thread's sends happened before main sees it done */
    atomic_fetch_add_explicit(&g_senders_done, 1, memory_order_release);
    return NULL;
}

static int sproc_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void sproc_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sender_t *s = state;
    atomic_fetch_add_explicit(&g_handled, 1, memory_order_relaxed);
    if (m->kind != AR_MSG_CAST || (m->tag != TAG_GO && m->tag != TAG_MORE)) {
        st_violation("sender %u: unexpected message kind %d tag %u", s->id, (int)m->kind, m->tag);
        return;
    }
    if (atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        /* release: this process's sends happened before main sees it done */
        atomic_fetch_add_explicit(&g_senders_done, 1, memory_order_release);
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    uint64_t n = st_range(&s->rng, 1, BURST_MAX);
    for (uint64_t i = 0; i < n; i++) send_random(&s->rng, s->id);
    if (st_chance(&s->rng, 25)) {
        int rc = ar_sleep(self, 1);
        if (rc != 0) st_violation("sender %u: ar_sleep returned %s", s->id, ar_err_name(rc));
    }
    int rc = ar_send(g_node, ar_self(self), TAG_MORE, NULL, 0);
    if (rc != 0) st_fail("sender %u: send to self returned %s", s->id, ar_err_name(rc));
    atomic_fetch_add_explicit(&g_accepted, 1, memory_order_relaxed);
}

static const ar_behaviour_t sproc_b = {"churn_sender", sproc_init, sproc_handle, NULL};

int main(int argc, char **argv)
{
    st_begin("stress_churn", argc, argv);
    uint64_t t0 = st_now_ms();
    g_node = st_node_start(2);
    ST_EXPECT_RC(ar_spawn(g_node, &manager_b, NULL, NULL, &g_manager), 0, "ar_spawn(manager)");
    for (uint32_t s = 0; s < SLOTS; s++) respawn(s, 0);

    pthread_t resp;
    st_start_thread(&resp, respawner_main, NULL);
    pthread_t th[N_THREADS];
    for (uint32_t i = 0; i < N_THREADS + N_SPROCS; i++) {
        g_senders[i].id = i;
        g_senders[i].rng = st_rng_for(7000 + i);
    }
    for (uint32_t i = 0; i < N_THREADS; i++) st_start_thread(&th[i], thread_sender, &g_senders[i]);
    for (uint32_t i = N_THREADS; i < N_THREADS + N_SPROCS; i++) {
        ar_pid_t p;
        ST_EXPECT_RC(ar_spawn(g_node, &sproc_b, &g_senders[i], NULL, &p), 0, "ar_spawn(sender)");
        ST_EXPECT_RC(ar_send(g_node, p, TAG_GO, NULL, 0), 0, "ar_send(go)");
        atomic_fetch_add_explicit(&g_accepted, 1, memory_order_relaxed);
    }

    uint64_t churn_end = st_now_ms() + CHURN_MS;
    while (atomic_load_explicit(&g_spawn_ok, memory_order_relaxed) < SLOTS + RESPAWNS
           && st_now_ms() < churn_end)
        st_nap_us(1000);
    /* A slower machine may churn less, but churn it must. */
    ST_CHECK(st_get(&g_spawn_ok) >= SLOTS + RESPAWNS / 10,
             "only %lu respawns in %d ms (workers handled %lu messages)",
             (unsigned long)st_get(&g_spawn_ok) - SLOTS, CHURN_MS,
             (unsigned long)st_get(&g_work_handled));
    atomic_store_explicit(&g_stop, true, memory_order_relaxed);
    for (uint32_t i = 0; i < N_THREADS; i++) st_join(th[i]);
    st_join(resp);
    /* acquire: pairs with each sender's release; no send is in flight afterwards */
    ST_WAIT(atomic_load_explicit(&g_senders_done, memory_order_acquire) == N_THREADS + N_SPROCS,
            "all senders to stop");
    /* The counters settle once every queued message has been handled or dropped. */
    ar_node_stats_t st;
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    uint64_t acc = 0, hd = 0;
    for (;;) {
        ar_node_stats(g_node, &st);
        acc = atomic_load_explicit(&g_accepted, memory_order_relaxed);
        hd = atomic_load_explicit(&g_handled, memory_order_relaxed);
        if (st.delivered == hd && st.delivered + st.dropped == acc && st.exited == st_get(&g_terminated) + N_SPROCS)
            break;
        if (st_now_ms() > dl) break;
        st_nap_us(1000);
    }
    uint64_t forged = st_get(&g_sent_kind[SEND_FORGED]);
    printf("incarnations=%lu accepted sends=%" PRIu64 " (current %lu, retired %lu, forged %lu)"
           " handled=%" PRIu64 "\nstats: spawned %" PRIu64 " exited %" PRIu64 " sent %" PRIu64
           " delivered %" PRIu64 " dropped %" PRIu64 " processes %zu\n",
           (unsigned long)st_get(&g_spawn_ok), acc,
           (unsigned long)st_get(&g_sent_kind[SEND_LIVE]),
           (unsigned long)st_get(&g_sent_kind[SEND_STALE]), (unsigned long)forged, hd,
           st.spawned, st.exited, st.sent, st.delivered, st.dropped, st.processes);
    ST_CHECK(st.delivered == hd, "stats.delivered %" PRIu64 " != messages handled %" PRIu64,
             st.delivered, hd);
    /* Whether a send to a dead pid also counts as sent is the runtime's choice; either
     * way sent lies between what was delivered and what was accepted. */
    ST_CHECK(st.delivered <= st.sent && st.sent <= acc,
             "stats.sent %" PRIu64 " outside [delivered %" PRIu64 ", accepted %" PRIu64 "]",
             st.sent, st.delivered, acc);
    ST_CHECK(st.delivered + st.dropped == acc,
             "delivered %" PRIu64 " + dropped %" PRIu64 " != accepted sends %" PRIu64
             " (messages unaccounted for)", st.delivered, st.dropped, acc);
    ST_CHECK(st.dropped >= forged, "stats.dropped %" PRIu64 " < sends to forged pids %" PRIu64,
             st.dropped, forged);
    uint64_t spawned = st_get(&g_spawn_ok) + 1 + N_SPROCS;
    ST_CHECK(st.spawned == spawned, "stats.spawned %" PRIu64 ", expected %" PRIu64, st.spawned,
             spawned);
    uint64_t exited = st_get(&g_terminated) + N_SPROCS;
    ST_CHECK(st.exited == exited, "stats.exited %" PRIu64 ", expected %" PRIu64
             " (terminated workers + senders)", st.exited, exited);
    ST_CHECK(st.processes == st.spawned - st.exited, "stats.processes %zu != spawned - exited",
             st.processes);

    ST_EXPECT_RC(ar_node_stop(g_node, ST_WAIT_MS), 0, "ar_node_stop");

    /* After the stop every incarnation has terminated exactly once. */
    for (size_t i = 0; i < g_nall; i++) {
        uint32_t n = st_get(&g_all[i]->terminated);
        ST_CHECK(n == 1, "slot %u generation %u: terminate ran %u times", g_all[i]->slot,
                 g_all[i]->gen, n);
        free(g_all[i]);
    }
    free(g_all);
    ST_CHECK(st_get(&g_terminated) == st_get(&g_spawn_ok),
             "terminated %lu of %lu incarnations", (unsigned long)st_get(&g_terminated),
             (unsigned long)st_get(&g_spawn_ok));
    return st_finish(t0);
}
