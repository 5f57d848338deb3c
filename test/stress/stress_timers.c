/* stress_timers: many timers set and cancelled concurrently from processes and threads.
 *
 * Setter threads and setter processes arm timers (0..40 ms, many near zero so cancels
 * race the firing) at target processes. Each timer is then left alone, cancelled at once
 * by its setter, cancelled later by its setter (a process after parking in ar_sleep), or
 * handed over to be cancelled by a canceller thread or a canceller process. Some cancels
 * are repeated. A few "dying" setter processes arm long timers and end at once.
 * Invariants: a timer whose cancel returned 0 never fires; one whose cancel returned
 * AR_ENOENT, or that was never cancelled, fires exactly once, at its own target, with its
 * tag, payload and m->from (the setting process, AR_PID_NONE from a thread); a second
 * cancel is always AR_ENOENT; a timer of a process that ended never fires after it ended
 * (the dying setters' timers are due long after their end) and cancelling it is AR_ENOENT.
 *
 * Usage: stress_timers [seed]
 */
#include "stress_util.h"

#define N_TSETTERS 3
#define N_PSETTERS 12
#define N_DYING 4
#define N_SETTERS (N_TSETTERS + N_PSETTERS + N_DYING)
#define PER_SETTER (ST_TSAN ? 400 : 1500)
#define PER_DYING 32
#define N_TIMERS ((N_TSETTERS + N_PSETTERS) * PER_SETTER + N_DYING * PER_DYING)
#define N_TARGETS 4
#define MS_MAX 40
#define DYING_MS_MIN 300
#define DYING_MS_MAX 500
#define GRACE_MS (ST_TSAN ? 400 : 100)
#define TAG_TIMER 0x71e4u

enum { TAG_GO = 1, TAG_MORE, TAG_CANCEL };
/* What became of a timer; written once by whoever decided it. */
enum { R_UNSET, R_ARMED, R_KEPT, R_CANCEL_OK, R_CANCEL_NOENT, R_DYING };

typedef struct timer_rec {
    ar_ref_t ref;
    uint32_t setter, target;
    uint64_t due_ms;
    _Atomic uint32_t result;
    _Atomic uint32_t fires;
} timer_rec_t;

typedef struct timer_msg {
    uint32_t id, setter, target, check;
} timer_msg_t;

typedef struct setter {
    uint32_t id, first, count, next;
    st_rng_t rng;
    uint32_t later[64]; /* ids it will cancel itself later */
    uint32_t nlater;
    bool is_proc, dying;
    ar_pid_t pid;
} setter_t;

static ar_node_t *g_node;
static ar_pid_t g_target[N_TARGETS], g_canceller;
static timer_rec_t g_timers[N_TIMERS];
static setter_t g_setters[N_SETTERS];
static atomic_ulong g_fired_total, g_stray;
static atomic_uint g_setters_done, g_dying_ended;
static _Atomic uint64_t g_max_due_ms;

/* Refs handed to the canceller thread. */
static pthread_mutex_t g_q_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t g_q[N_TIMERS];
static size_t g_q_head, g_q_tail;
static atomic_bool g_canceller_stop;
static atomic_ulong g_handed_proc, g_cancelled_by_proc;

static uint32_t msg_check(uint32_t id)
{
    return (uint32_t)st_mix64(id * 0x9e3779b1u + 17);
}

static void note_due(uint64_t due)
{
    uint64_t cur = atomic_load_explicit(&g_max_due_ms, memory_order_relaxed);
    while (cur < due && !atomic_compare_exchange_weak_explicit(&g_max_due_ms, &cur, due,
                                                               memory_order_relaxed,
                                                               memory_order_relaxed)) {
    }
}

/* Cancels timer id and records the outcome; a second cancel must find nothing. */
static void cancel_and_record(st_rng_t *r, uint32_t id, const char *who)
{
    timer_rec_t *t = &g_timers[id];
    int rc = ar_cancel_timer(g_node, t->ref);
    uint32_t res;
    if (rc == 0) res = R_CANCEL_OK;
    else if (rc == AR_ENOENT) res = R_CANCEL_NOENT;
    else {
        st_violation("timer %u: ar_cancel_timer (%s) returned %s", id, who, ar_err_name(rc));
        res = R_CANCEL_NOENT;
    }
    /* release: the cancel happened before main (or a checker) reads the outcome */
    atomic_store_explicit(&t->result, res, memory_order_release);
    if (st_chance(r, 20)) {
        rc = ar_cancel_timer(g_node, t->ref);
        ST_CHECK(rc == AR_ENOENT, "timer %u: second cancel (%s) returned %s, expected AR_ENOENT",
                 id, who, ar_err_name(rc));
    }
}

/* ---- targets ------------------------------------------------------------------------ */
static int target_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void target_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    uint32_t me = (uint32_t)(uintptr_t)state;
    char a[AR_PID_STRLEN], b[AR_PID_STRLEN];
    timer_msg_t tm;
    if (m->kind != AR_MSG_TIMER || m->tag != TAG_TIMER || m->len != sizeof tm) {
        atomic_fetch_add_explicit(&g_stray, 1, memory_order_relaxed);
        st_violation("target %u: unexpected message kind %d tag %u len %zu", me, (int)m->kind,
                     m->tag, m->len);
        return;
    }
    memcpy(&tm, m->data, sizeof tm);
    if (tm.id >= N_TIMERS || tm.check != msg_check(tm.id)) {
        st_violation("target %u: corrupt timer payload (id %u)", me, tm.id);
        return;
    }
    timer_rec_t *t = &g_timers[tm.id];
    ST_CHECK(tm.target == me && t->target == me, "timer %u fired at target %u, set for %u",
             tm.id, me, t->target);
    setter_t *s = &g_setters[t->setter];
    ar_pid_t want = s->is_proc ? s->pid : AR_PID_NONE;
    ST_CHECK(ar_pid_eq(m->from, want), "timer %u: m->from %s, expected %s", tm.id,
             st_pid_str(m->from, a), st_pid_str(want, b));
    uint32_t n = atomic_fetch_add_explicit(&t->fires, 1, memory_order_relaxed);
    ST_CHECK(n == 0, "timer %u fired %u times", tm.id, n + 1);
    /* acquire: a cancel that returned 0 happened before this firing was seen */
    uint32_t res = atomic_load_explicit(&t->result, memory_order_acquire);
    ST_CHECK(res != R_CANCEL_OK, "timer %u fired after ar_cancel_timer returned 0", tm.id);
    ST_CHECK(res != R_DYING, "timer %u of an ended process fired", tm.id);
    atomic_fetch_add_explicit(&g_fired_total, 1, memory_order_relaxed);
}

static const ar_behaviour_t target_b = {"timers_target", target_init, target_handle, NULL};

/* ---- setting ------------------------------------------------------------------------ */
/* Arms the setter's next timer; returns its id. */
static uint32_t arm_next(setter_t *s)
{
    uint32_t id = s->first + s->next++;
    timer_rec_t *t = &g_timers[id];
    int ms;
    if (s->dying) ms = (int)st_range(&s->rng, DYING_MS_MIN, DYING_MS_MAX);
    else ms = st_chance(&s->rng, 30) ? (int)st_below(&s->rng, 3) : (int)st_below(&s->rng, MS_MAX + 1);
    t->setter = s->id;
    t->target = (uint32_t)st_below(&s->rng, N_TARGETS);
    timer_msg_t tm = {id, s->id, t->target, msg_check(id)};
    uint64_t now = st_now_ms();
    /* release: the record is complete before the timer can fire and be checked */
    atomic_store_explicit(&t->result, R_ARMED, memory_order_release);
    int rc = ar_send_after(g_node, ms, g_target[t->target], TAG_TIMER, &tm, sizeof tm, &t->ref);
    if (rc != 0) st_fail("setter %u: ar_send_after returned %s", s->id, ar_err_name(rc));
    ST_CHECK(t->ref != 0, "setter %u: ar_send_after gave timer ref 0", s->id);
    note_due(now + (uint64_t)ms);
    return id;
}

/* Arms one timer and decides its fate. self: the setting process, or NULL (a thread). */
static void set_one(ar_proc_t *self, setter_t *s)
{
    uint32_t id = arm_next(s);
    if (s->dying) {
        /* release: the outcome is recorded before the timer could fire and be checked */
        atomic_store_explicit(&g_timers[id].result, R_DYING, memory_order_release);
        return;
    }
    unsigned p = (unsigned)st_below(&s->rng, 100);
    if (p < 30) {
        /* release: the record is complete before the timer can fire and be checked */
        atomic_store_explicit(&g_timers[id].result, R_KEPT, memory_order_release);
    } else if (p < 60) {
        cancel_and_record(&s->rng, id, "at once");
    } else if (p < 80 && s->nlater < 64) {
        s->later[s->nlater++] = id;
    } else if (p < 90 || self == NULL) {
        pthread_mutex_lock(&g_q_lock);
        g_q[g_q_tail++] = id;
        pthread_mutex_unlock(&g_q_lock);
    } else {
        atomic_fetch_add_explicit(&g_handed_proc, 1, memory_order_relaxed);
        int rc = ar_send(g_node, g_canceller, TAG_CANCEL, &id, sizeof id);
        if (rc != 0) st_fail("setter %u: ar_send to the canceller returned %s", s->id,
                             ar_err_name(rc));
    }
}

/* Cancels a random share of the timers it kept for later. */
static void cancel_later(setter_t *s, bool all)
{
    while (s->nlater > 0 && (all || st_chance(&s->rng, 50))) {
        uint32_t k = (uint32_t)st_below(&s->rng, s->nlater);
        uint32_t id = s->later[k];
        s->later[k] = s->later[--s->nlater];
        cancel_and_record(&s->rng, id, "later");
    }
}

static void *thread_setter(void *arg)
{
    setter_t *s = arg;
    while (s->next < s->count) {
        uint64_t n = st_range(&s->rng, 1, 32);
        for (uint64_t i = 0; i < n && s->next < s->count; i++) set_one(NULL, s);
        cancel_later(s, s->next == s->count);
        if (st_chance(&s->rng, 20)) st_nap_us((unsigned)st_below(&s->rng, 1000));
    }
    cancel_later(s, true);
    /* release: every outcome this thread recorded is visible once it is counted done */
    atomic_fetch_add_explicit(&g_setters_done, 1, memory_order_release);
    return NULL;
}

static int psetter_init(ar_proc_t *self, void *arg, void **state)
{
    setter_t *s = arg;
    s->pid = ar_self(self);
    *state = s;
    return 0;
}

static void psetter_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    setter_t *s = state;
    if (m->kind != AR_MSG_CAST || (m->tag != TAG_GO && m->tag != TAG_MORE)) {
        st_violation("setter %u: unexpected message kind %d tag %u", s->id, (int)m->kind, m->tag);
        return;
    }
    if (s->dying) {
        while (s->next < s->count) set_one(self, s);
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    uint64_t n = st_range(&s->rng, 1, 32);
    for (uint64_t i = 0; i < n && s->next < s->count; i++) set_one(self, s);
    if (st_chance(&s->rng, 15)) {
        int rc = ar_sleep(self, (int)st_below(&s->rng, 3));
        if (rc != 0) st_violation("setter %u: ar_sleep returned %s", s->id, ar_err_name(rc));
    }
    cancel_later(s, s->next == s->count);
    if (s->next < s->count) {
        int rc = ar_send(g_node, ar_self(self), TAG_MORE, NULL, 0);
        if (rc != 0) st_fail("setter %u: send to self returned %s", s->id, ar_err_name(rc));
        return;
    }
    /* release: every outcome this process recorded is visible once it is counted done.
     * The process stays alive: its uncancelled timers must still fire. */
    atomic_fetch_add_explicit(&g_setters_done, 1, memory_order_release);
}

static void psetter_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    (void)why;
    setter_t *s = state;
    if (s->dying) {
        /* release: the end of a dying setter is seen after its records */
        atomic_fetch_add_explicit(&g_dying_ended, 1, memory_order_release);
    }
}

static const ar_behaviour_t psetter_b = {"timers_setter", psetter_init, psetter_handle,
                                         psetter_terminate};

/* ---- cancellers ----------------------------------------------------------------------- */
static void canceller_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    uint32_t id;
    if (m->kind != AR_MSG_CAST || m->tag != TAG_CANCEL || m->len != sizeof id) {
        st_violation("canceller: unexpected message kind %d tag %u", (int)m->kind, m->tag);
        return;
    }
    memcpy(&id, m->data, sizeof id);
    st_rng_t r = st_rng_for(900000 + id);
    cancel_and_record(&r, id, "by the canceller process");
    /* release: the outcome is recorded before main counts this cancel done */
    atomic_fetch_add_explicit(&g_cancelled_by_proc, 1, memory_order_release);
}

static const ar_behaviour_t canceller_b = {"timers_canceller", NULL, canceller_handle, NULL};

static void *canceller_thread(void *arg)
{
    (void)arg;
    st_rng_t r = st_rng_for(31337);
    for (;;) {
        uint32_t id = 0;
        bool have = false;
        pthread_mutex_lock(&g_q_lock);
        if (g_q_head < g_q_tail) {
            id = g_q[g_q_head++];
            have = true;
        }
        pthread_mutex_unlock(&g_q_lock);
        if (have) {
            cancel_and_record(&r, id, "by the canceller thread");
            continue;
        }
        if (atomic_load_explicit(&g_canceller_stop, memory_order_relaxed)) break;
        st_nap_us(50);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    st_begin("stress_timers", argc, argv);
    uint64_t t0 = st_now_ms();
    g_node = st_node_start(2);
    for (uint32_t i = 0; i < N_TARGETS; i++)
        ST_EXPECT_RC(ar_spawn(g_node, &target_b, (void *)(uintptr_t)i, NULL, &g_target[i]), 0,
                     "ar_spawn(target)");
    ST_EXPECT_RC(ar_spawn(g_node, &canceller_b, NULL, NULL, &g_canceller), 0,
                 "ar_spawn(canceller)");

    uint32_t first = 0;
    for (uint32_t i = 0; i < N_SETTERS; i++) {
        setter_t *s = &g_setters[i];
        s->id = i;
        s->rng = st_rng_for(40 + i);
        s->is_proc = i >= N_TSETTERS;
        s->dying = i >= N_TSETTERS + N_PSETTERS;
        s->count = s->dying ? PER_DYING : PER_SETTER;
        s->first = first;
        first += s->count;
    }
    pthread_t canc;
    st_start_thread(&canc, canceller_thread, NULL);
    pthread_t th[N_TSETTERS];
    for (uint32_t i = 0; i < N_TSETTERS; i++) st_start_thread(&th[i], thread_setter, &g_setters[i]);
    ar_pid_t dying[N_DYING];
    for (uint32_t i = N_TSETTERS; i < N_SETTERS; i++) {
        ar_pid_t p;
        ST_EXPECT_RC(ar_spawn(g_node, &psetter_b, &g_setters[i], NULL, &p), 0, "ar_spawn(setter)");
        if (g_setters[i].dying) dying[i - N_TSETTERS - N_PSETTERS] = p;
        ST_EXPECT_RC(ar_send(g_node, p, TAG_GO, NULL, 0), 0, "ar_send(go)");
    }

    /* acquire: pairs with each setter's release of its recorded outcomes */
    ST_WAIT(atomic_load_explicit(&g_setters_done, memory_order_acquire)
                == N_TSETTERS + N_PSETTERS, "all setters to finish");
    for (uint32_t i = 0; i < N_TSETTERS; i++) st_join(th[i]);
    atomic_store_explicit(&g_canceller_stop, true, memory_order_relaxed);
    st_join(canc);
    /* acquire: pairs with the canceller process's release after each cancel */
    ST_WAIT(atomic_load_explicit(&g_cancelled_by_proc, memory_order_acquire)
                == st_get(&g_handed_proc), "the canceller process to cancel its timers");
    /* acquire: pairs with the dying setters' terminate */
    ST_WAIT(atomic_load_explicit(&g_dying_ended, memory_order_acquire) == N_DYING,
            "the dying setters to end");
    for (uint32_t i = 0; i < N_DYING; i++) {
        ar_proc_info_t info;
        ST_WAIT(ar_proc_info(g_node, dying[i], &info) == AR_ENOPROC, "dying setter %u to be gone",
                i);
    }
    /* An ended process's timers are cancelled: nothing to cancel any more. */
    for (uint32_t i = N_TSETTERS + N_PSETTERS; i < N_SETTERS; i++) {
        for (uint32_t k = 0; k < g_setters[i].count; k++) {
            uint32_t id = g_setters[i].first + k;
            int rc = ar_cancel_timer(g_node, g_timers[id].ref);
            ST_CHECK(rc == AR_ENOENT, "timer %u of an ended process: cancel returned %s", id,
                     ar_err_name(rc));
        }
    }

    uint64_t expected = 0, ok = 0, noent = 0, kept = 0;
    for (uint32_t id = 0; id < N_TIMERS; id++) {
        uint32_t res = atomic_load_explicit(&g_timers[id].result, memory_order_relaxed);
        if (res == R_KEPT) kept++;
        else if (res == R_CANCEL_NOENT) noent++;
        else if (res == R_CANCEL_OK) ok++;
        else if (res != R_DYING) st_fail("timer %u has no recorded outcome (%u)", id, res);
    }
    expected = kept + noent;
    ST_WAIT(atomic_load_explicit(&g_fired_total, memory_order_relaxed) >= expected,
            "%" PRIu64 " timers to fire (fired %lu)", expected,
            (unsigned long)st_get(&g_fired_total));
    /* Give a wrongly surviving timer every chance to show up before judging. */
    uint64_t until = st_get(&g_max_due_ms) + GRACE_MS;
    while (st_now_ms() < until) st_nap_us(1000);
    uint64_t fired = st_get(&g_fired_total);
    printf("timers=%d kept=%" PRIu64 " cancelled=%" PRIu64 " cancel-too-late=%" PRIu64
           " of-ended-process=%d fired=%" PRIu64 "\n",
           N_TIMERS, kept, ok, noent, N_DYING * PER_DYING, fired);
    ST_CHECK(fired == expected, "%" PRIu64 " timers fired, expected %" PRIu64, fired, expected);
    for (uint32_t id = 0; id < N_TIMERS; id++) {
        timer_rec_t *t = &g_timers[id];
        uint32_t res = st_get(&t->result), n = st_get(&t->fires);
        uint32_t want = (res == R_KEPT || res == R_CANCEL_NOENT) ? 1 : 0;
        ST_CHECK(n == want, "timer %u (setter %u, %s) fired %u times, expected %u", id, t->setter,
                 res == R_KEPT ? "never cancelled" : res == R_CANCEL_NOENT ? "cancel said AR_ENOENT"
                 : res == R_CANCEL_OK ? "cancel said 0" : "owner ended", n, want);
    }

    ST_EXPECT_RC(ar_node_stop(g_node, ST_WAIT_MS), 0, "ar_node_stop");
    return st_finish(t0);
}
