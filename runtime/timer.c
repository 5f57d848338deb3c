/* Timers: a hierarchical timing wheel per scheduler, ar_send_after and ar_cancel_timer.
 *
 * Departure from ARCHITECTURE.md (one structure driven by the I/O thread): each scheduler
 * owns a wheel and runs it in its loop. Nearly every timer (a call's or receive's timeout)
 * is set and cancelled by a process on the same scheduler, so insert and cancel are plain
 * O(1) list operations with no cross-thread traffic and no wake-up of another thread; a
 * million pending timeouts cost a million list nodes. Foreign threads' timers go to
 * scheduler 0 through its insert inbox; a cancel made on another thread goes to the
 * owner's cancel inbox. Both inboxes are lock-free stacks the owner empties each run.
 *
 * Wheel: level 0 has 256 one-millisecond slots, level 1 has 256 slots of 256 ms (65 s),
 * beyond that a list re-examined every 65 s. Each timer cascades at most twice.
 *
 * Lifetime: a timer has up to three references: its holder (the process waiting, the
 * ask record, or the user-timer map), the wheel, and a pending remote cancel. The state
 * word decides the race between firing and cancelling: whoever moves it from PENDING
 * owns the outcome. The owner thread alone touches `where` and the wheel lists.
 */
#include "internal.h"

#include <string.h>
#include <time.h>

enum { T_PENDING, T_FIRED, T_CANCELLED };
enum { W_NEW, W_LINKED, W_RETIRED };

struct ar__timer {
    ar__list_t link;
    struct ar__timer *inbox_next, *cancel_next, *map_next;
    uint64_t due;
    _Atomic int state;
    _Atomic int refs;
    int where; /* owner only */
    ar__sched_t *owner;
    ar_pid_t to;
    ar__env_t *env;
    ar_ref_t ref;      /* user timers: the map key; 0 otherwise */
    ar_ref_t wake_ref; /* a wait's timeout: an ENV_WAKE with this ref, made when it fires */
};

#define L0 256
#define L1 256
struct ar__wheel {
    uint64_t cur; /* the next tick to process; every timer is due at or after it */
    size_t count;
    ar__list_t l0[L0], l1[L1], far;
    _Atomic(ar__timer_t *) inbox, cancels;
};

struct ar__timers { /* the user-timer map: ref -> timer */
    pthread_mutex_t lock;
    ar__timer_t **buckets;
    size_t nbuckets, count;
};

uint64_t ar__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t ar__now_ms(const ar_node_t *node) { return (ar__now_ns() - node->start_ns) / 1000000u; }

/* Timers are dated with the precise clock: the coarse one (a few ns cheaper) was seen to
 * lag it by 7 ms here, more than the 4 ms resolution it reports, which made timeouts fire
 * early. Rounded up to the millisecond: never early. */
static uint64_t due_ms(const ar_node_t *node, int ms)
{
    uint64_t due_ns = ar__now_ns() - node->start_ns + (uint64_t)ms * 1000000u;
    return (due_ns + 999999u) / 1000000u;
}

static void put(ar__timer_t *t)
{
    /* acq_rel: the last holder sees every other holder's writes before freeing */
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1) {
        ar__env_free(t->env);
        ar__pool_free(t, sizeof *t);
    }
}

/* ---- wheel (owner thread) ---- */
static void link_timer(struct ar__wheel *w, ar__timer_t *t)
{
    if (t->due < w->cur) t->due = w->cur;
    uint64_t d = t->due - w->cur;
    if (d < L0)
        ar__list_insert_tail(&w->l0[t->due & (L0 - 1)], &t->link);
    else if ((t->due >> 8) - (w->cur >> 8) < L1)
        ar__list_insert_tail(&w->l1[(t->due >> 8) & (L1 - 1)], &t->link);
    else
        ar__list_insert_tail(&w->far, &t->link);
    t->where = W_LINKED;
}

static void retire(struct ar__wheel *w, ar__timer_t *t)
{
    if (t->where == W_LINKED) {
        ar__list_remove(&t->link);
        w->count--;
    }
    t->where = W_RETIRED;
    put(t);
}

static void insert(struct ar__wheel *w, ar__timer_t *t)
{
    if (atomic_load_explicit(&t->state, memory_order_acquire) != T_PENDING) {
        t->where = W_NEW;
        put(t); /* cancelled before it reached the wheel */
        return;
    }
    w->count++;
    link_timer(w, t);
}

static void relink_all(struct ar__wheel *w, ar__list_t *h)
{
    ar__list_t tmp;
    ar__list_init(&tmp);
    while (!ar__list_empty(h)) {
        ar__list_t *n = h->next;
        ar__list_remove(n);
        ar__list_insert_tail(&tmp, n);
    }
    while (!ar__list_empty(&tmp)) {
        ar__list_t *n = tmp.next;
        ar__list_remove(n);
        link_timer(w, ar__container_of(n, ar__timer_t, link));
    }
}

static void timer_map_remove(ar_node_t *node, ar__timer_t *t);

static void fire(ar_node_t *node, struct ar__wheel *w, ar__timer_t *t)
{
    int pending = T_PENDING;
    if (!t->env && t->wake_ref && atomic_load_explicit(&t->state, memory_order_relaxed) == T_PENDING) {
        /* a wait's timeout: its envelope is made only now, as most waits end sooner */
        ar__env_t *e = ar__env_new(0);
        if (!e) { /* out of memory: try again in a millisecond rather than lose it */
            ar__list_remove(&t->link);
            t->due = w->cur + 1;
            link_timer(w, t);
            return;
        }
        e->kind = ENV_WAKE;
        e->msg.ref = t->wake_ref;
        t->env = e;
    }
    ar__list_remove(&t->link);
    w->count--;
    t->where = W_RETIRED;
    if (atomic_compare_exchange_strong_explicit(&t->state, &pending, T_FIRED,
                                                memory_order_acq_rel, memory_order_acquire)) {
        ar__env_t *e = t->env;
        t->env = NULL;
        ar__route_or_dead_letter(node, t->to, e);
        if (t->ref) timer_map_remove(node, t);
    }
    put(t);
}

static void tick(ar_node_t *node, struct ar__wheel *w)
{
    uint64_t c = w->cur;
    if ((c & (L0 - 1)) == 0) {
        if (((c >> 8) & (L1 - 1)) == 0) relink_all(w, &w->far);
        relink_all(w, &w->l1[(c >> 8) & (L1 - 1)]);
    }
    ar__list_t *slot = &w->l0[c & (L0 - 1)];
    while (!ar__list_empty(slot)) fire(node, w, ar__container_of(slot->next, ar__timer_t, link));
    w->cur = c + 1;
}

static void take_inboxes(struct ar__wheel *w)
{
    if (atomic_load_explicit(&w->inbox, memory_order_relaxed)) {
        /* acquire: the pushers' writes to the timers are visible */
        ar__timer_t *t = atomic_exchange_explicit(&w->inbox, NULL, memory_order_acquire);
        while (t) {
            ar__timer_t *n = t->inbox_next;
            insert(w, t);
            t = n;
        }
    }
    if (atomic_load_explicit(&w->cancels, memory_order_relaxed)) {
        ar__timer_t *t = atomic_exchange_explicit(&w->cancels, NULL, memory_order_acquire);
        while (t) {
            ar__timer_t *n = t->cancel_next;
            if (t->where == W_LINKED) retire(w, t);
            put(t); /* the cancel's own reference */
            t = n;
        }
    }
}

bool ar__wheel_pending(ar__sched_t *s)
{
    struct ar__wheel *w = s->wheel;
    return atomic_load_explicit(&w->inbox, memory_order_relaxed) ||
           atomic_load_explicit(&w->cancels, memory_order_relaxed);
}

int ar__wheel_run(ar__sched_t *s)
{
    struct ar__wheel *w = s->wheel;
    take_inboxes(w);
    if (w->count == 0) return -1;
    ar_node_t *node = s->node;
    uint64_t now = ar__now_ms(node);
    while (w->cur <= now && w->count) tick(node, w);
    if (w->count == 0) {
        w->cur = now + 1;
        return -1;
    }
    /* ms until the first non-empty level-0 slot, or until the next cascade */
    uint64_t d;
    for (d = 0; d < L0 - (w->cur & (L0 - 1)); d++)
        if (!ar__list_empty(&w->l0[(w->cur + d) & (L0 - 1)])) break;
    uint64_t at = w->cur + d;
    return at <= now ? 0 : (int)(at - now);
}

int ar__wheel_init(ar__sched_t *s)
{
    struct ar__wheel *w = ar__calloc(1, sizeof *w);
    if (!w) return AR_ENOMEM;
    for (int i = 0; i < L0; i++) ar__list_init(&w->l0[i]);
    for (int i = 0; i < L1; i++) ar__list_init(&w->l1[i]);
    ar__list_init(&w->far);
    w->cur = ar__now_ms(s->node);
    s->wheel = w;
    return 0;
}

static void drop_list(struct ar__wheel *w, ar__list_t *h)
{
    while (!ar__list_empty(h)) retire(w, ar__container_of(h->next, ar__timer_t, link));
}

void ar__wheel_destroy(ar__sched_t *s)
{
    struct ar__wheel *w = s->wheel;
    if (!w) return;
    take_inboxes(w);
    for (int i = 0; i < L0; i++) drop_list(w, &w->l0[i]);
    for (int i = 0; i < L1; i++) drop_list(w, &w->l1[i]);
    drop_list(w, &w->far);
    ar__free(w);
    s->wheel = NULL;
}

/* ---- user-timer map ---- */
int ar__timers_init(ar_node_t *node)
{
    struct ar__timers *m = ar__calloc(1, sizeof *m);
    if (!m) return AR_ENOMEM;
    m->nbuckets = 64;
    m->buckets = ar__calloc(m->nbuckets, sizeof *m->buckets);
    if (!m->buckets) {
        ar__free(m);
        return AR_ENOMEM;
    }
    pthread_mutex_init(&m->lock, NULL);
    node->timers = m;
    return 0;
}

void ar__timers_destroy(ar_node_t *node)
{
    struct ar__timers *m = node->timers;
    if (!m) return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        ar__timer_t *t = m->buckets[i];
        while (t) {
            ar__timer_t *n = t->map_next;
            put(t);
            t = n;
        }
    }
    pthread_mutex_destroy(&m->lock);
    ar__free(m->buckets);
    ar__free(m);
    node->timers = NULL;
}

/* Fibonacci hashing: refs come in sequence, the multiply spreads them over the buckets. */
static inline size_t bucket_in(ar_ref_t ref, size_t nbuckets)
{
    return (size_t)((ref * 0x9E3779B97F4A7C15ull) >> 20) & (nbuckets - 1);
}
static inline size_t bucket(struct ar__timers *m, ar_ref_t ref) { return bucket_in(ref, m->nbuckets); }

static int map_insert(struct ar__timers *m, ar__timer_t *t)
{
    pthread_mutex_lock(&m->lock);
    if (m->count >= m->nbuckets) {
        size_t nb = m->nbuckets * 2;
        ar__timer_t **b = ar__calloc(nb, sizeof *b);
        if (b) {
            for (size_t i = 0; i < m->nbuckets; i++) {
                ar__timer_t *x = m->buckets[i];
                while (x) {
                    ar__timer_t *n = x->map_next;
                    size_t k = bucket_in(x->ref, nb);
                    x->map_next = b[k];
                    b[k] = x;
                    x = n;
                }
            }
            ar__free(m->buckets);
            m->buckets = b;
            m->nbuckets = nb;
        } /* else: keep the old table, chains just grow longer */
    }
    size_t k = bucket(m, t->ref);
    t->map_next = m->buckets[k];
    m->buckets[k] = t;
    m->count++;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* Removes ref from the map; returns the timer (its holder reference now the caller's). */
static ar__timer_t *map_take(struct ar__timers *m, ar_ref_t ref)
{
    pthread_mutex_lock(&m->lock);
    ar__timer_t **pp = &m->buckets[bucket(m, ref)];
    while (*pp && (*pp)->ref != ref) pp = &(*pp)->map_next;
    ar__timer_t *t = *pp;
    if (t) {
        *pp = t->map_next;
        m->count--;
    }
    pthread_mutex_unlock(&m->lock);
    return t;
}

static bool map_has(struct ar__timers *m, ar_ref_t ref)
{
    pthread_mutex_lock(&m->lock);
    ar__timer_t *t = m->buckets[bucket(m, ref)];
    while (t && t->ref != ref) t = t->map_next;
    pthread_mutex_unlock(&m->lock);
    return t != NULL;
}

static void timer_map_remove(ar_node_t *node, ar__timer_t *t)
{
    ar__timer_t *got = map_take(node->timers, t->ref);
    if (got) put(got); /* the map's holder reference */
}

/* ---- starting and cancelling ---- */
static ar__timer_t *start(ar_node_t *node, int ms, ar_pid_t to, ar__env_t *e, ar_ref_t ref,
                          ar_ref_t wake_ref);

ar__timer_t *ar__timer_start(ar_node_t *node, int ms, ar_pid_t to, ar__env_t *e, ar_ref_t ref)
{
    return start(node, ms, to, e, ref, 0);
}

ar__timer_t *ar__timer_start_wake(ar_node_t *node, int ms, ar_pid_t to, ar_ref_t wake_ref)
{
    return start(node, ms, to, NULL, 0, wake_ref);
}

static ar__timer_t *start(ar_node_t *node, int ms, ar_pid_t to, ar__env_t *e, ar_ref_t ref,
                          ar_ref_t wake_ref)
{
    ar__timer_t *t = ar__pool_alloc(sizeof *t);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    atomic_init(&t->refs, 2); /* holder + wheel */
    atomic_init(&t->state, T_PENDING);
    t->to = to;
    t->env = e;
    t->ref = ref;
    t->wake_ref = wake_ref;
    t->due = due_ms(node, ms);
    if (ref) map_insert(node->timers, t);
    ar__sched_t *s = ar__current_sched();
    if (s && s->node == node) {
        t->owner = s;
        insert(s->wheel, t);
        return t;
    }
    s = node->sched[0];
    t->owner = s;
    ar__timer_t *head = atomic_load_explicit(&s->wheel->inbox, memory_order_relaxed);
    do {
        t->inbox_next = head;
        /* release: the owner's acquiring exchange sees the whole timer */
    } while (!atomic_compare_exchange_weak_explicit(&s->wheel->inbox, &head, t,
                                                    memory_order_release, memory_order_relaxed));
    ar__sched_wake(s); /* it may be parked with no deadline */
    return t;
}

bool ar__timer_cancel(ar_node_t *node, ar__timer_t *t)
{
    int pending = T_PENDING;
    bool won = atomic_compare_exchange_strong_explicit(&t->state, &pending, T_CANCELLED,
                                                      memory_order_acq_rel, memory_order_acquire);
    if (won) {
        ar__sched_t *s = ar__current_sched();
        if (s == t->owner) {
            if (t->where == W_LINKED) retire(s->wheel, t);
            /* W_NEW: still in the insert inbox, which retires it */
        } else {
            atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
            struct ar__wheel *w = t->owner->wheel;
            ar__timer_t *head = atomic_load_explicit(&w->cancels, memory_order_relaxed);
            do {
                t->cancel_next = head;
            } while (!atomic_compare_exchange_weak_explicit(&w->cancels, &head, t,
                                                            memory_order_release,
                                                            memory_order_relaxed));
        }
    }
    (void)node;
    put(t); /* the holder's reference */
    return won;
}

static int cancel_ref(ar_node_t *node, ar_ref_t ref)
{
    ar__timer_t *t = map_take(node->timers, ref);
    if (!t) return AR_ENOENT;
    return ar__timer_cancel(node, t) ? 0 : AR_ENOENT;
}

/* Makes room to remember one more timer of p's, so that p's end cancels it: done before
 * the timer is armed, so a timer is never armed that its owner's end could not cancel. */
static int reserve_owned(ar_proc_t *p)
{
    struct ar__proc_ext *x = ar__proc_ext(p);
    if (!x) return AR_ENOMEM;
    if (x->ntimers < x->timers_cap) return 0;
    /* forget the ones that fired or were cancelled before growing */
    size_t k = 0;
    for (size_t i = 0; i < x->ntimers; i++)
        if (map_has(p->node->timers, x->timers[i])) x->timers[k++] = x->timers[i];
    x->ntimers = k;
    if (k * 2 <= x->timers_cap && k < x->timers_cap) return 0;
    size_t cap = x->timers_cap ? x->timers_cap * 2 : 4;
    ar_ref_t *n = ar__realloc(x->timers, cap * sizeof *n);
    if (!n) return AR_ENOMEM;
    x->timers = n;
    x->timers_cap = cap;
    return 0;
}

void ar__proc_cancel_timers(ar_proc_t *p)
{
    if (!p->ext) return;
    for (size_t i = 0; i < p->ext->ntimers; i++) cancel_ref(p->node, p->ext->timers[i]);
    p->ext->ntimers = 0;
}

static int send_after(ar_node_t *node, int ms, ar_pid_t to, uint32_t tag, const void *data,
                      size_t len, ar_ref_t *timer)
{
    if (atomic_load_explicit(&node->stopping, memory_order_acquire)) return AR_ECLOSED;
    ar_proc_t *self = ar__current_proc();
    if (self && (self->node != node ||
                 (atomic_load_explicit(&self->flags, memory_order_relaxed) & P_FOREIGN)))
        self = NULL;
    if (self && reserve_owned(self) != 0) return AR_ENOMEM;
    ar__env_t *e = ar__env_new(len);
    if (!e) return AR_ENOMEM;
    if (len) memcpy(ar__env_payload(e), data, len);
    e->msg.kind = AR_MSG_TIMER;
    e->msg.tag = tag;
    e->msg.from = self ? ar__proc_pid(self) : AR_PID_NONE;
    ar_ref_t ref = ar__make_ref(node);
    e->msg.ref = ref;
    ar__timer_t *t = ar__timer_start(node, ms, to, e, ref);
    if (!t) {
        ar__env_free(e);
        return AR_ENOMEM;
    }
    if (self) self->ext->timers[self->ext->ntimers++] = ref; /* room reserved above */
    if (timer) *timer = ref;
    return 0;
}

int ar_send_after(ar_node_t *node, int ms, ar_pid_t to, uint32_t tag, const void *data,
                  size_t len, ar_ref_t *timer)
{
    if (!node || ms < 0) return AR_EINVAL;
    int rc = ar__check_payload(node, data, len);
    if (rc) return rc;
    bool outside = ar__outside_enter(node);
    rc = send_after(node, ms, to, tag, data, len, timer);
    if (outside) ar__outside_leave(node);
    return rc;
}

int ar_cancel_timer(ar_node_t *node, ar_ref_t timer)
{
    if (!node) return AR_EINVAL;
    if (timer == 0) return AR_ENOENT;
    bool outside = ar__outside_enter(node);
    int rc = cancel_ref(node, timer);
    if (outside) ar__outside_leave(node);
    return rc;
}
