/* The lifecycle event bus: subscriptions, the node-wide sequence number, delivery, and
 * the events thread that runs function subscribers.
 *
 * Publishing. A producer (a spawn, the exit sequence, ar_events_emit; any thread) takes
 * the events lock, numbers the event, and hands every subscription whose mask matches a
 * copy of its own: one envelope holding the event and its strings. Numbering and handing
 * over under one lock is what makes each subscriber see its events in seq order, and one
 * process's events in the order they happened. Nothing under the lock waits for a
 * subscriber, calls user code or takes another lock but leaves (the allocator's, and
 * inside ar__route the ones that schedule a process); so a producer never blocks for
 * longer than other producers' hand-overs.
 * With nobody subscribed, the hooks on the hot paths do one relaxed load of the node's
 * mask (internal.h, ar__events_wanted) and nothing else.
 *
 * Buffers and LAGGED. Each subscription counts the events handed to it (`pushed`, by
 * producers) and those taken (`popped`, by its consumer, on another cache line): pending
 * is the difference (a process: event messages in its mailbox not yet given to a handler
 * or to ar_receive; a function: events in its queue the events thread has not taken out).
 * A producer that finds pending at the cap (event_buffer), or no memory for the copy,
 * drops the event for that subscriber and counts it in `dropped`. The LAGGED reporting
 * them comes before the next event the subscriber gets: a producer that finds room while
 * dropped > 0 queues a LAGGED first; and a consumer that empties its buffer while
 * dropped > 0 queues one itself, so a subscriber learns of its loss even when nothing
 * more is published. Both happen under the lock, which makes the count exact. A LAGGED
 * takes no room in the buffer: at most one sits before each queued event, so a
 * subscriber's memory stays bounded by about twice the cap however slow it is.
 *
 * Process subscriptions. Each event is an AR_MSG_EVENT envelope (ENVF_EVENT) routed to
 * the process like any message. The subscription lives while it is listed or while an
 * envelope of it is queued (`refs`): the mailbox's consumer credits each envelope back as
 * it leaves, taken (ar__events_taken) or dropped unhandled (ar__events_unqueued), without
 * the lock unless a LAGGED is owed. The exit sequence unsubscribes a process that ends.
 *
 * Function subscriptions. Each has an MPSC queue (internal.h's) that producers push under
 * the lock and the events thread pops without it. The events thread (one per node,
 * started by the first function subscription, joined by ar_node_stop after delivering
 * what is left) serves the subscriptions that have work, the least recently served first,
 * up to SERVE_BATCH events each, calling fn outside any lock. A subscription the events
 * thread is serving is freed by it alone: an unsubscribe from another thread waits for
 * the batch to end, so no callback runs once ar_events_unsubscribe has returned.
 *
 * Lock order: the events lock, then leaves only (the pool depot's and the allocator's,
 * and inside ar__route the scheduling locks). Never held across user code or a park; the
 * events thread holds it to pick work, never while it calls fn. Callers of
 * ar__events_publish (names) may hold locks of their own that these never take.
 */
#include "internal.h"

#include <string.h>
#include <time.h>

#define DEFAULT_BUFFER 4096
/* Events one function subscription gets per turn of the events thread, so one busy
 * subscriber does not keep the others waiting. */
#define SERVE_BATCH 64
/* Run dry, the events thread naps LINGER_NS up to LINGER_NAPS times before it sleeps until a
 * producer wakes it: under a steady stream, producers then never pay for a wake-up (a
 * system call each), and the thread takes events in larger batches. An idle node's events
 * thread is asleep half a millisecond after the last event. */
#define LINGER_NS 100000
#define LINGER_NAPS 5

/* Fields by writer, so that producers and the consumer do not take turns at one cache
 * line for each event: read-mostly, then producers' (under the lock), then the
 * consumer's. */
struct ar__sub {
    struct ar__sub *next; /* in the node's list (lock) */
    ar_node_t *node;
    ar_ref_t ref;
    uint32_t kinds;
    bool is_fn;
    bool listed; /* in the node's list (lock) */
    ar_pid_t pid; /* a process subscriber's */
    void (*fn)(const ar_event_t *e, void *ud); /* a function subscriber's */
    void *ud;
    /* --- producers, under the lock --- */
    _Alignas(AR__CACHE_LINE) _Atomic uintptr_t head; /* a function's queue: pushed here */
    _Atomic uint64_t pushed;   /* events handed over, ever (LAGGED aside) */
    _Atomic uint64_t dropped;  /* since the last LAGGED; read outside the lock as a hint */
    uint64_t last_dropped_seq; /* the LAGGED's seq */
    /* --- the consumer: the process, or the events thread --- */
    _Alignas(AR__CACHE_LINE) _Atomic uint64_t popped; /* events taken, ever */
    struct ar__qnode *tail;
    struct ar__qnode stub;
    _Atomic uint64_t refs; /* a process's: 1 while listed, + 1 per envelope in its mailbox */
    _Atomic bool dead;     /* a function's, unsubscribed: its batch stops */
    uint64_t served;       /* the round it was last picked in (lock) */
};

/* Events handed to s and not yet taken; an overestimate outside the lock, never less. */
static uint64_t pending(struct ar__sub *s)
{
    return atomic_load_explicit(&s->pushed, memory_order_relaxed) -
           atomic_load_explicit(&s->popped, memory_order_relaxed);
}

struct ar__events {
    pthread_mutex_t lock;
    struct ar__sub *subs; /* newest first */
    uint64_t seq;
    uint64_t cap; /* event_buffer */
    /* the events thread */
    bool started, stopped, joined; /* lock */
    pthread_t thread;
    ar__sem_t wake;
    _Atomic int sleeping; /* it is about to wait, or waits, on wake */
    _Atomic int quit;
    struct ar__sub *serving; /* the subscription whose batch runs (lock) */
    uint64_t serving_round, round;
    unsigned waiters; /* unsubscribers waiting for a batch to end */
    pthread_cond_t served;
    struct ar__pool_cache cache; /* the events thread's: delivered envelopes go back to
                                    the node's pools in batches */
};

/* An event envelope's payload: the event, then its strings. */
struct ev_payload {
    struct ar__sub *sub;
    ar_event_t ev;
    char text[];
};

/* The bus whose events thread this is (NULL: not an events thread). */
static _Thread_local struct ar__events *thread_events;

bool ar__events_on_thread(ar_node_t *node) { return thread_events && thread_events == node->events; }

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- setup ---- */
int ar__events_init(ar_node_t *node)
{
    struct ar__events *ev = ar__calloc(1, sizeof *ev);
    if (!ev) return AR_ENOMEM;
    /* adaptive: a hand-over takes a few hundred nanoseconds, so a producer that finds the
     * lock taken spins a little before it sleeps (a futex round trip costs more) */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&ev->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&ev->served, NULL);
    ar__sem_init(&ev->wake);
    ev->cap = node->cfg.event_buffer ? node->cfg.event_buffer : DEFAULT_BUFFER;
    node->events = ev;
    return 0;
}

static ar__env_t *pop(struct ar__sub *s)
{
    return (ar__env_t *)ar__mpsc_pop(&s->head, &s->tail, &s->stub, 0);
}

/* A function subscription nobody can reach any more, with what it still holds. */
static void free_fn_sub(struct ar__sub *s)
{
    ar__env_t *e;
    while ((e = pop(s)) != NULL) ar__env_free(e);
    ar__free(s);
}

void ar__events_stop(ar_node_t *node)
{
    struct ar__events *ev = node->events;
    if (!ev) return;
    pthread_mutex_lock(&ev->lock);
    ev->stopped = true; /* no new function subscription: nobody would run it */
    bool join = ev->started && !ev->joined;
    ev->joined = true;
    pthread_mutex_unlock(&ev->lock);
    if (!join) return;
    /* release: the thread that sees quit sees every event queued before */
    atomic_store_explicit(&ev->quit, 1, memory_order_release);
    ar__sem_post(&ev->wake);
    pthread_join(ev->thread, NULL);
}

void ar__events_destroy(ar_node_t *node)
{
    struct ar__events *ev = node->events;
    if (!ev) return;
    ar__events_stop(node);
    /* no process is left, so no process subscription either (but after a failed start) */
    for (struct ar__sub *s = ev->subs, *n; s; s = n) {
        n = s->next;
        if (s->is_fn)
            free_fn_sub(s);
        else
            ar__free(s);
    }
    pthread_cond_destroy(&ev->served);
    pthread_mutex_destroy(&ev->lock);
    ar__sem_destroy(&ev->wake);
    ar__free(ev);
    node->events = NULL;
}

/* ---- envelopes ---- */
/* Bytes of a string's copy, with its NUL (cut to AR_EVENT_TEXT_MAX); 0 for NULL. */
static size_t text_len(const char *s) { return s ? strnlen(s, AR_EVENT_TEXT_MAX - 1) + 1 : 0; }

struct texts {
    size_t behaviour, name, reason;
};

static const char *put_text(char **at, const char *s, size_t n)
{
    if (!n) return NULL;
    char *d = *at;
    memcpy(d, s, n - 1);
    d[n - 1] = '\0';
    *at += n;
    return d;
}

static ar__env_t *event_env(struct ar__sub *s, const ar_event_t *e, const struct texts *t)
{
    ar__env_t *env = ar__env_new(sizeof(struct ev_payload) + t->behaviour + t->name + t->reason);
    if (!env) return NULL;
    struct ev_payload *pl = ar__env_payload(env);
    pl->sub = s;
    pl->ev = *e;
    char *at = pl->text;
    pl->ev.behaviour = put_text(&at, e->behaviour, t->behaviour);
    pl->ev.name = put_text(&at, e->name, t->name);
    pl->ev.reason.text = put_text(&at, e->reason.text, t->reason);
    env->flags = ENVF_EVENT;
    env->msg.kind = AR_MSG_EVENT;
    env->msg.ref = s->ref;
    env->msg.data = NULL;
    env->msg.len = 0;
    env->msg.event = &pl->ev;
    return env;
}

/* The LAGGED that reports s's drops (lock held); NULL without memory. */
static ar__env_t *lagged_env(struct ar__sub *s, uint64_t dropped)
{
    static const struct texts none;
    ar_event_t e = {.kind = AR_EV_LAGGED, .seq = s->last_dropped_seq, .time_ns = wall_ns(),
                    .dropped = dropped};
    return event_env(s, &e, &none);
}

static void put_ref(struct ar__sub *s)
{
    /* acq_rel: whoever lets go last sees every other use of s before it frees it */
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) ar__free(s);
}

/* An envelope of a process subscription leaves the buffer: its counts are given back.
 * Returns its subscription; *emptied when that was the last event in the buffer (as far
 * as the consumer sees: the lock decides). */
static struct ar__sub *credit(ar__env_t *e, bool *emptied)
{
    struct ev_payload *pl = ar__env_payload(e);
    struct ar__sub *s = pl->sub;
    e->flags &= (uint8_t)~ENVF_EVENT;
    *emptied = pl->ev.kind != AR_EV_LAGGED &&
               atomic_fetch_add_explicit(&s->popped, 1, memory_order_relaxed) + 1 ==
                   atomic_load_explicit(&s->pushed, memory_order_relaxed);
    return s;
}

/* Hands env to s (lock held). counted: an event, which takes room in the buffer (a
 * LAGGED takes none). 0, or AR_ENOPROC when s's process is gone (env freed). */
static int enqueue(struct ar__sub *s, ar__env_t *env, bool counted)
{
    if (counted) /* the lock holder alone writes it: no read-modify-write */
        atomic_store_explicit(&s->pushed, atomic_load_explicit(&s->pushed, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    if (s->is_fn) {
        ar__mpsc_push(&s->head, &env->q, 0);
        return 0;
    }
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed); /* before it is visible */
    int rc = ar__route(s->node, s->pid, env);
    if (rc == 0) return 0;
    if (env->flags & ENVF_EVENT) { /* not queued (a dead mailbox's drain credits it) */
        bool emptied;
        put_ref(credit(env, &emptied)); /* never the last: s is listed */
    } /* either way it counts as pushed and popped: pending is as before */
    ar__env_free(env);
    return rc;
}

/* s emptied its buffer while it owes a LAGGED (lock held): queue it now. */
static void owe_lagged_locked(struct ar__sub *s)
{
    uint64_t dropped = atomic_load_explicit(&s->dropped, memory_order_relaxed);
    if (!s->listed || !dropped || pending(s))
        return; /* a producer queued it meanwhile, or events wait: it goes before those */
    ar__env_t *lag = lagged_env(s, dropped);
    if (!lag) return; /* no memory: the next event or the next emptying brings it */
    atomic_store_explicit(&s->dropped, 0, memory_order_relaxed);
    enqueue(s, lag, false);
}

static void drop(struct ar__sub *s, uint64_t dropped, uint64_t seq)
{
    atomic_store_explicit(&s->dropped, dropped + 1, memory_order_relaxed);
    s->last_dropped_seq = seq;
}

/* Hands e to s, or drops it (lock held). true when a function subscription got it. */
static bool deliver(struct ar__events *ev, struct ar__sub *s, const ar_event_t *e,
                    const struct texts *t)
{
    uint64_t dropped = atomic_load_explicit(&s->dropped, memory_order_relaxed);
    ar__env_t *env = NULL, *lag = NULL;
    if (pending(s) >= ev->cap ||
        !(env = event_env(s, e, t)) || (dropped && !(lag = lagged_env(s, dropped)))) {
        ar__env_free(env); /* full, or out of memory: counted, reported as LAGGED */
        drop(s, dropped, e->seq);
        return false;
    }
    if (lag) {
        atomic_store_explicit(&s->dropped, 0, memory_order_relaxed);
        if (enqueue(s, lag, false) != 0) { /* its process is gone: so is the subscription */
            ar__env_free(env);
            return false;
        }
    }
    return enqueue(s, env, true) == 0 && s->is_fn;
}

static void wake_thread(struct ar__events *ev)
{
    /* relaxed: the events thread set `sleeping` before it last released the lock, which
     * the producer took since, so the producer cannot miss it */
    if (atomic_load_explicit(&ev->sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(&ev->sleeping, 0, memory_order_relaxed))
        ar__sem_post(&ev->wake);
}

static bool abnormal(ar_reason_t why) { return why.code != AR_NORMAL && why.code != AR_SHUTDOWN; }

void ar__events_publish(ar_node_t *node, ar_event_t *e)
{
    struct ar__events *ev = node->events;
    struct texts t = {text_len(e->behaviour), text_len(e->name), text_len(e->reason.text)};
    uint32_t also = e->kind == AR_EV_EXIT && abnormal(e->reason) ? AR__EV_EXIT_ABNORMAL : 0;
    bool wake = false;
    e->time_ns = wall_ns(); /* outside the lock, which stays short */
    pthread_mutex_lock(&ev->lock);
    e->seq = ++ev->seq;
    for (struct ar__sub *s = ev->subs; s; s = s->next)
        if (s->kinds & (e->kind | also)) wake |= deliver(ev, s, e, &t);
    pthread_mutex_unlock(&ev->lock);
    if (wake) wake_thread(ev);
}

/* ---- the mailbox's side of process subscriptions ---- */
void ar__events_taken(ar__env_t *e)
{
    bool emptied;
    struct ar__sub *s = credit(e, &emptied);
    if (emptied && atomic_load_explicit(&s->dropped, memory_order_relaxed)) {
        struct ar__events *ev = s->node->events;
        pthread_mutex_lock(&ev->lock);
        owe_lagged_locked(s); /* into its own mailbox: it runs, so no scheduling */
        pthread_mutex_unlock(&ev->lock);
    }
    put_ref(s);
}

void ar__events_unqueued(ar__env_t *e)
{
    bool emptied;
    put_ref(credit(e, &emptied)); /* no LAGGED: nobody will read this mailbox */
}

/* ---- the events thread ---- */
/* Whether a function subscription's queue holds something (the events thread, its
 * consumer, may look at its tail; pushes are under the lock, which the caller holds). */
static bool has_work(struct ar__sub *s)
{
    return s->is_fn &&
           (s->tail != &s->stub ||
            atomic_load_explicit(&s->head, memory_order_relaxed) != (uintptr_t)&s->stub);
}

static struct ar__sub *pick(struct ar__events *ev)
{
    struct ar__sub *best = NULL;
    for (struct ar__sub *s = ev->subs; s; s = s->next)
        if (has_work(s) && (!best || s->served < best->served)) best = s;
    return best;
}

/* Takes up to SERVE_BATCH entries out of s's queue at once (they leave the buffer: one
 * store of popped for all), then calls fn for each, unless s is unsubscribed meanwhile. */
static void serve(ar_node_t *node, struct ar__events *ev, struct ar__sub *s)
{
    ar__env_t *batch[SERVE_BATCH];
    int n = 0;
    uint64_t events = 0;
    /* pop's NULL: empty, or a push still linking in (the next pick comes back for it) */
    while (n < SERVE_BATCH && (batch[n] = pop(s)) != NULL)
        events += ((struct ev_payload *)ar__env_payload(batch[n++]))->ev.kind != AR_EV_LAGGED;
    atomic_store_explicit(&s->popped,
                          atomic_load_explicit(&s->popped, memory_order_relaxed) + events,
                          memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        ar__env_t *e = batch[i];
        /* acquire: pairs with the unsubscriber's store; nothing of it runs after */
        if (!atomic_load_explicit(&s->dead, memory_order_acquire))
            s->fn(&((struct ev_payload *)ar__env_payload(e))->ev, s->ud);
        ar__pool_free_cached(&node->depot, &ev->cache, e, sizeof *e + e->cap);
    }
}

static bool work_or_quit(struct ar__events *ev)
{
    pthread_mutex_lock(&ev->lock);
    bool work = pick(ev) != NULL || atomic_load_explicit(&ev->quit, memory_order_acquire);
    pthread_mutex_unlock(&ev->lock);
    return work;
}

/* Waits for work: naps first (see LINGER_NS), then sleeps. `sleeping` is set before the
 * last look under the lock: a producer that queues after that look sees it and posts. */
static void idle(struct ar__events *ev)
{
    for (int i = 0; i < LINGER_NAPS; i++) {
        struct timespec ts = {0, LINGER_NS};
        nanosleep(&ts, NULL);
        if (work_or_quit(ev)) return;
    }
    atomic_store_explicit(&ev->sleeping, 1, memory_order_relaxed);
    if (!work_or_quit(ev)) ar__sem_wait(&ev->wake, NULL);
    atomic_store_explicit(&ev->sleeping, 0, memory_order_relaxed);
}

static void *events_main(void *arg)
{
    ar_node_t *node = arg;
    struct ar__events *ev = node->events;
    thread_events = ev;
    ev->cache.max = ar__pool_bypass ? 0 : AR__POOL_CACHE_MAX; /* (the tests' OOM sweeps) */
    for (;;) {
        pthread_mutex_lock(&ev->lock);
        struct ar__sub *s = pick(ev);
        if (s) {
            ev->serving = s;
            ev->serving_round = s->served = ++ev->round;
        }
        pthread_mutex_unlock(&ev->lock);
        if (!s) {
            /* acquire: pairs with the stop's release; what was queued before is seen */
            if (atomic_load_explicit(&ev->quit, memory_order_acquire)) {
                pthread_mutex_lock(&ev->lock);
                bool more = pick(ev) != NULL;
                pthread_mutex_unlock(&ev->lock);
                if (!more) {
                    ar__pool_cache_flush(&node->depot, &ev->cache);
                    return NULL;
                }
                continue;
            }
            idle(ev);
            continue;
        }
        serve(node, ev, s);
        pthread_mutex_lock(&ev->lock);
        ev->serving = NULL;
        if (!s->listed)
            free_fn_sub(s); /* unsubscribed during its batch: ours to free */
        else if (atomic_load_explicit(&s->dropped, memory_order_relaxed))
            owe_lagged_locked(s); /* once its queue is empty */
        if (ev->waiters) pthread_cond_broadcast(&ev->served);
        pthread_mutex_unlock(&ev->lock);
    }
}

/* ---- subscribing ---- */
static bool kinds_ok(uint32_t kinds) { return kinds && !(kinds & ~(uint32_t)AR_EV_ALL); }

static void update_mask(ar_node_t *node, struct ar__events *ev)
{
    uint32_t mask = 0;
    for (struct ar__sub *s = ev->subs; s; s = s->next)
        mask |= s->kinds | (s->is_fn ? 0 : AR__EV_PROC_SUBS);
    /* relaxed: a hook that comes after the subscription (happens-before) sees it by
     * coherence; one racing with it may or may not */
    atomic_store_explicit(&node->events_mask, mask, memory_order_relaxed);
}

static struct ar__sub *new_sub(ar_node_t *node, uint32_t kinds)
{
    struct ar__sub *s = ar__calloc(1, sizeof *s);
    if (!s) return NULL;
    s->node = node;
    s->kinds = kinds;
    s->ref = ar__make_ref(node);
    return s;
}

/* Lists s (lock held). */
static void add(ar_node_t *node, struct ar__events *ev, struct ar__sub *s)
{
    s->next = ev->subs;
    ev->subs = s;
    s->listed = true;
    update_mask(node, ev);
}

static ar_proc_t *calling_proc(ar_node_t *node)
{
    ar_proc_t *p = ar__current_proc();
    return p && p->node == node &&
                   !(atomic_load_explicit(&p->flags, memory_order_relaxed) & P_FOREIGN)
               ? p
               : NULL;
}

int ar_events_subscribe(ar_node_t *node, uint32_t kinds, ar_ref_t *sub)
{
    if (!node || !kinds_ok(kinds)) return AR_EINVAL;
    ar_proc_t *p = calling_proc(node);
    if (!p) return AR_ENOTPROC;
    struct ar__sub *s = new_sub(node, kinds);
    if (!s) return AR_ENOMEM;
    s->pid = ar__proc_pid(p);
    atomic_init(&s->refs, 1);
    atomic_fetch_or_explicit(&p->flags, P_EVENTS, memory_order_relaxed);
    struct ar__events *ev = node->events;
    pthread_mutex_lock(&ev->lock);
    add(node, ev, s);
    pthread_mutex_unlock(&ev->lock);
    if (sub) *sub = s->ref;
    return 0;
}

int ar__events_subscribe_fn(ar_node_t *node, uint32_t kinds,
                            void (*fn)(const ar_event_t *e, void *ud), void *ud, ar_ref_t *sub)
{
    struct ar__sub *s = new_sub(node, kinds);
    if (!s) return AR_ENOMEM;
    s->is_fn = true;
    s->fn = fn;
    s->ud = ud;
    atomic_store_explicit(&s->stub.next, NULL, memory_order_relaxed);
    atomic_store_explicit(&s->head, (uintptr_t)&s->stub, memory_order_relaxed);
    s->tail = &s->stub;
    struct ar__events *ev = node->events;
    int rc = 0;
    pthread_mutex_lock(&ev->lock);
    if (ev->stopped)
        rc = AR_ECLOSED;
    else if (!ev->started) { /* the first one: the thread that will run it */
        if (pthread_create(&ev->thread, NULL, events_main, node) != 0)
            rc = AR_ENOMEM;
        else
            ev->started = true;
    }
    if (rc == 0) add(node, ev, s);
    pthread_mutex_unlock(&ev->lock);
    if (rc) {
        ar__free(s);
        return rc;
    }
    if (sub) *sub = s->ref;
    return 0;
}

int ar_events_subscribe_fn(ar_node_t *node, uint32_t kinds,
                           void (*fn)(const ar_event_t *e, void *ud), void *ud, ar_ref_t *sub)
{
    if (!node || !fn || !kinds_ok(kinds)) return AR_EINVAL;
    bool outside = ar__outside_enter(node);
    int rc = ar__events_subscribe_fn(node, kinds, fn, ud, sub);
    if (outside) ar__outside_leave(node);
    return rc;
}

/* Unlists s (lock held). A process's: freed when its last envelope is. A function's:
 * freed here, or by the events thread when it is serving it (waited for, unless this is
 * that thread). */
static void remove_locked(ar_node_t *node, struct ar__events *ev, struct ar__sub **at)
{
    struct ar__sub *s = *at;
    *at = s->next;
    s->listed = false;
    update_mask(node, ev);
    if (!s->is_fn) {
        put_ref(s);
        return;
    }
    /* release: the events thread that sees it stops s's batch */
    atomic_store_explicit(&s->dead, true, memory_order_release);
    if (ev->serving != s) {
        free_fn_sub(s);
        return;
    }
    if (thread_events == ev) return; /* called from its own batch: freed when it ends */
    uint64_t round = ev->serving_round;
    ev->waiters++;
    while (ev->serving == s && ev->serving_round == round)
        pthread_cond_wait(&ev->served, &ev->lock);
    ev->waiters--;
}

int ar_events_unsubscribe(ar_node_t *node, ar_ref_t sub)
{
    if (!node) return AR_EINVAL;
    if (!sub) return AR_ENOENT;
    bool outside = ar__outside_enter(node);
    struct ar__events *ev = node->events;
    int rc = AR_ENOENT;
    pthread_mutex_lock(&ev->lock);
    for (struct ar__sub **at = &ev->subs; *at; at = &(*at)->next)
        if ((*at)->ref == sub) {
            remove_locked(node, ev, at);
            rc = 0;
            break;
        }
    pthread_mutex_unlock(&ev->lock);
    if (outside) ar__outside_leave(node);
    return rc;
}

/* ---- the hooks ---- */
void ar__events_spawned(ar_proc_t *p)
{
    const ar_behaviour_t *b = atomic_load_explicit(&p->b, memory_order_relaxed);
    char name[AR_NAME_MAX];
    ar_event_t e = {.kind = AR_EV_SPAWN, .pid = ar__proc_pid(p),
                    .behaviour = b ? b->name : NULL,
                    .name = ar__names_of(p, name) ? name : NULL};
    ar__events_publish(p->node, &e);
}

/* The subscriptions of a process that ends. */
static void drop_owned(ar_node_t *node, ar_pid_t self)
{
    struct ar__events *ev = node->events;
    pthread_mutex_lock(&ev->lock);
    for (struct ar__sub **at = &ev->subs; *at;)
        if (!(*at)->is_fn && ar_pid_eq((*at)->pid, self))
            remove_locked(node, ev, at);
        else
            at = &(*at)->next;
    pthread_mutex_unlock(&ev->lock);
}

void ar__events_exit(ar_proc_t *p, ar_pid_t self, ar_reason_t why, enum ar__end how,
                     const char *name)
{
    ar_node_t *node = p->node;
    uint32_t fl = atomic_load_explicit(&p->flags, memory_order_relaxed);
    if (fl & P_EVENTS) drop_owned(node, self); /* first: it does not hear of its own end */
    ar_event_kind_t kind;
    if (how == END_EXITED) {
        if (!ar__events_wanted(node, AR_EV_EXIT | (abnormal(why) ? AR__EV_EXIT_ABNORMAL : 0)))
            return;
        kind = AR_EV_EXIT;
    } else if (how == END_START_FAILED && (fl & P_INIT_FAILED)) {
        if (!ar__events_wanted(node, AR_EV_START_FAILED)) return;
        kind = AR_EV_START_FAILED;
    } else {
        return; /* a spawn undone before init, or a foreign thread's waiter */
    }
    const ar_behaviour_t *b = atomic_load_explicit(&p->b, memory_order_relaxed);
    ar_event_t e = {.kind = kind, .pid = self, .behaviour = b ? b->name : NULL, .name = name,
                    .reason = why};
    ar__events_publish(node, &e);
}

/* ---- the rest of the public API ---- */
int ar_events_emit(ar_node_t *node, const ar_event_t *e)
{
    if (!node || !e) return AR_EINVAL;
    uint32_t k = (uint32_t)e->kind;
    if (!kinds_ok(k) || (k & (k - 1)) || k == AR_EV_LAGGED) return AR_EINVAL;
    bool outside = ar__outside_enter(node);
    if (ar_events_wanted(node, k)) {
        ar_event_t copy = *e;
        copy.dropped = 0;
        ar__events_publish(node, &copy);
    }
    if (outside) ar__outside_leave(node);
    return 0;
}

bool ar_events_wanted(ar_node_t *node, uint32_t kinds)
{
    if (!node) return false;
    kinds &= AR_EV_ALL;
    if (kinds & AR_EV_EXIT) kinds |= AR__EV_EXIT_ABNORMAL; /* some EXITs are wanted */
    return ar__events_wanted(node, kinds);
}

const char *ar_event_kind_name(uint32_t kind)
{
    switch (kind) {
    case AR_EV_SPAWN: return "SPAWN";
    case AR_EV_EXIT: return "EXIT";
    case AR_EV_RESTART: return "RESTART";
    case AR_EV_START_FAILED: return "START_FAILED";
    case AR_EV_GIVE_UP: return "GIVE_UP";
    case AR_EV_REGISTER: return "REGISTER";
    case AR_EV_UNREGISTER: return "UNREGISTER";
    case AR_EV_REAP: return "REAP";
    case AR_EV_NODE_UP: return "NODE_UP";
    case AR_EV_NODE_DOWN: return "NODE_DOWN";
    case AR_EV_LAGGED: return "LAGGED";
    case AR_EV_USER: return "USER";
    default: return "UNKNOWN";
    }
}
