/* Scheduler threads: run queues, work stealing, spinning and parking, and the loop.
 *
 * Each scheduler owns a FIFO run queue (an AR__RUNQ_SLOTS ring: the owner pushes at the tail;
 * the owner and thieves take from the head with a CAS; a thief takes half) and a `next`
 * slot that is never stolen: a process woken by a send made on this scheduler goes there
 * and runs as soon as the current turn ends, where the message is hot in cache. A streak
 * bound on `next` keeps a ping-ponging pair from starving the queue. Foreign threads
 * hand runnable processes over through the node's inject queue (a mutex: rare path).
 *
 * Loop and stacks: the loop itself runs on a pooled handler stack and calls handlers
 * directly, so a turn costs no context switch. When a handler blocks, its process keeps
 * the stack and the loop continues on a fresh one (ar__park). When a parked process is
 * resumed, the loop switches to its stack and the stack it leaves goes back to the pool;
 * the resumed handler later returns into the loop frame at the bottom of its own stack,
 * which carries on as this thread's loop. Hence code that may run across a park re-reads
 * the scheduler through ar__current_sched() (noinline) instead of caching it.
 * Work done "after the switch" (returning the old stack, finishing a park) is recorded
 * in the scheduler and done by whoever runs next on this thread (after_switch).
 *
 * Idle: a scheduler with no work steals, then spins for spin_us, then parks on its
 * semaphore (with a deadline when it has timers). Work pushed where others could take it
 * wakes one parked scheduler, and only if none is spinning.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <time.h>

_Thread_local ar__sched_t *ar__tls_sched;
_Thread_local ar_proc_t *ar__tls_proc;

__attribute__((noinline)) ar__sched_t *ar__current_sched(void)
{
    __asm__ volatile("" ::: "memory");
    return ar__tls_sched;
}
__attribute__((noinline)) ar_proc_t *ar__current_proc(void)
{
    __asm__ volatile("" ::: "memory");
    return ar__tls_proc;
}
__attribute__((noinline)) void ar__set_current_proc(ar_proc_t *p)
{
    __asm__ volatile("" ::: "memory");
    ar__tls_proc = p;
}

#define RUNQ_MASK (AR__RUNQ_SLOTS - 1)
#define STEAL_MAX (AR__RUNQ_SLOTS / 2)

/* Consecutive runs from `next` before the queue gets a turn: long enough for a
 * request/response pair to stay hot, short enough to bound others' wait. */
#define NEXT_STREAK_MAX 64
/* Every this many loop iterations the timers and the inject queue are looked at. */
#define PERIODIC_MASK 31

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* ---- run queue ---- */
static bool rq_push(ar__sched_t *s, ar_proc_t *p)
{
    uint32_t t = atomic_load_explicit(&s->rq.tail, memory_order_relaxed);
    uint32_t h = atomic_load_explicit(&s->rq.head, memory_order_acquire);
    if (t - h >= AR__RUNQ_SLOTS) return false;
    atomic_store_explicit(&s->rq.buf[t & RUNQ_MASK], p, memory_order_relaxed);
    /* release: a thief that acquires the tail sees the slot's process */
    atomic_store_explicit(&s->rq.tail, t + 1, memory_order_release);
    return true;
}

static ar_proc_t *rq_pop(ar__sched_t *s)
{
    uint32_t h = atomic_load_explicit(&s->rq.head, memory_order_acquire);
    for (;;) {
        uint32_t t = atomic_load_explicit(&s->rq.tail, memory_order_relaxed);
        if (h == t) return NULL;
        ar_proc_t *p = atomic_load_explicit(&s->rq.buf[h & RUNQ_MASK], memory_order_relaxed);
        /* acq_rel: orders against thieves taking the same slot */
        if (atomic_compare_exchange_weak_explicit(&s->rq.head, &h, h + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return p;
    }
}

static inline bool rq_empty(ar__sched_t *s)
{
    return atomic_load_explicit(&s->rq.head, memory_order_acquire) ==
           atomic_load_explicit(&s->rq.tail, memory_order_acquire);
}

static void inject_push(ar_node_t *node, ar_proc_t *p)
{
    p->link = NULL;
    pthread_mutex_lock(&node->inject_lock);
    if (node->inject_tail)
        node->inject_tail->link = p;
    else
        node->inject_head = p;
    node->inject_tail = p;
    atomic_fetch_add_explicit(&node->inject_len, 1, memory_order_relaxed);
    pthread_mutex_unlock(&node->inject_lock);
}

static ar_proc_t *inject_pop(ar_node_t *node)
{
    if (atomic_load_explicit(&node->inject_len, memory_order_relaxed) == 0) return NULL;
    pthread_mutex_lock(&node->inject_lock);
    ar_proc_t *p = node->inject_head;
    if (p) {
        node->inject_head = p->link;
        if (!node->inject_head) node->inject_tail = NULL;
        atomic_fetch_sub_explicit(&node->inject_len, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&node->inject_lock);
    return p;
}

/* Steals half of a victim's queue: returns one to run, the rest go to the thief's queue. */
static ar_proc_t *rq_steal(ar__sched_t *thief, ar__sched_t *victim)
{
    ar_proc_t *got[STEAL_MAX];
    uint32_t h = atomic_load_explicit(&victim->rq.head, memory_order_acquire);
    for (;;) {
        uint32_t t = atomic_load_explicit(&victim->rq.tail, memory_order_acquire);
        uint32_t n = t - h;
        if (n == 0) return NULL;
        if (n > AR__RUNQ_SLOTS) { /* h went stale */
            h = atomic_load_explicit(&victim->rq.head, memory_order_acquire);
            continue;
        }
        n -= n / 2;
        if (n > STEAL_MAX) n = STEAL_MAX;
        for (uint32_t i = 0; i < n; i++)
            got[i] = atomic_load_explicit(&victim->rq.buf[(h + i) & RUNQ_MASK], memory_order_relaxed);
        /* acq_rel: a successful CAS means no one else took these slots, and the values
         * read above were written before the tail we acquired. */
        if (atomic_compare_exchange_weak_explicit(&victim->rq.head, &h, h + n,
                                                  memory_order_acq_rel, memory_order_acquire)) {
            for (uint32_t i = 1; i < n; i++)
                if (!rq_push(thief, got[i])) inject_push(thief->node, got[i]);
            return got[0];
        }
    }
}

static ar_proc_t *steal_any(ar__sched_t *s)
{
    ar_node_t *node = s->node;
    for (unsigned i = 1; i < node->nsched; i++) {
        ar__sched_t *v = node->sched[(s->id + i) % node->nsched];
        ar_proc_t *p = rq_steal(s, v);
        if (p) return p;
    }
    return NULL;
}

/* ---- parking ---- */
/* Takes s off the idle list if it is there (idle_lock held); true if it was. */
static bool take_idle(ar__sched_t *s)
{
    ar_node_t *node = s->node;
    if (!s->parked) return false;
    for (unsigned i = 0; i < node->nidle; i++)
        if (node->idle[i] == s) {
            node->idle[i] = node->idle[--node->nidle];
            break;
        }
    s->parked = false;
    atomic_fetch_sub_explicit(&node->nparked, 1, memory_order_seq_cst);
    return true;
}

static bool unpark_self(ar__sched_t *s)
{
    pthread_mutex_lock(&s->node->idle_lock);
    bool was = take_idle(s);
    pthread_mutex_unlock(&s->node->idle_lock);
    return was;
}

static void wake_one(ar_node_t *node)
{
    ar__sched_t *s = NULL;
    pthread_mutex_lock(&node->idle_lock);
    if (node->nidle > 0) {
        s = node->idle[--node->nidle];
        s->parked = false;
        atomic_fetch_sub_explicit(&node->nparked, 1, memory_order_seq_cst);
    }
    pthread_mutex_unlock(&node->idle_lock);
    if (s) ar__sem_post(&s->sem);
}

void ar__sched_wake(ar__sched_t *s)
{
    pthread_mutex_lock(&s->node->idle_lock);
    bool post = take_idle(s);
    pthread_mutex_unlock(&s->node->idle_lock);
    if (post) ar__sem_post(&s->sem);
}

/* Work was made stealable: wake a parked scheduler unless one is already looking.
 * seq_cst read-modify-write of nparked, as park()'s increment: the two are totally
 * ordered, so either we see the parker counted, or its increment acquires ours and its
 * re-check sees our work. (A fence would do, but ThreadSanitizer cannot model fences.) */
static void notify(ar_node_t *node)
{
    unsigned parked = atomic_fetch_add_explicit(&node->nparked, 0, memory_order_seq_cst);
    if (parked > 0 && atomic_load_explicit(&node->nspinning, memory_order_relaxed) == 0)
        wake_one(node);
}

static bool work_visible(ar__sched_t *s)
{
    ar_node_t *node = s->node;
    if (s->next || !rq_empty(s) || atomic_load_explicit(&node->inject_len, memory_order_relaxed))
        return true;
    for (unsigned i = 0; i < node->nsched; i++)
        if (!rq_empty(node->sched[i])) return true;
    return ar__wheel_pending(s);
}

static void park(ar__sched_t *s, int next_ms)
{
    ar_node_t *node = s->node;
    pthread_mutex_lock(&node->idle_lock);
    node->idle[node->nidle++] = s;
    s->parked = true;
    atomic_fetch_add_explicit(&node->nparked, 1, memory_order_seq_cst); /* see notify() */
    pthread_mutex_unlock(&node->idle_lock);
    if (work_visible(s) || atomic_load_explicit(&node->shutdown, memory_order_acquire)) {
        if (!unpark_self(s)) ar__sem_wait(&s->sem, NULL); /* a waker chose us: take its post */
        return;
    }
    if (next_ms < 0) {
        ar__sem_wait(&s->sem, NULL);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += next_ms / 1000;
    ts.tv_nsec += (long)(next_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (!ar__sem_wait(&s->sem, &ts) && !unpark_self(s))
        ar__sem_wait(&s->sem, NULL); /* chosen by a waker as the time ran out */
}

/* ---- making processes runnable ---- */
static void push_local(ar__sched_t *s, ar_proc_t *p)
{
    if (!rq_push(s, p)) inject_push(s->node, p);
    notify(s->node);
}

void ar__schedule(ar_node_t *node, ar_proc_t *p) { ar__schedule_on(ar__current_sched(), node, p); }

void ar__schedule_on(ar__sched_t *s, ar_node_t *node, ar_proc_t *p)
{
    if (s && s->node == node) {
        ar_proc_t *old = s->next;
        s->next = p;
        if (old) push_local(s, old);
        return;
    }
    inject_push(node, p);
    notify(node);
}

void ar__requeue(ar_proc_t *p)
{
    ar__sched_t *s = ar__current_sched();
    if (s && s->node == p->node)
        push_local(s, p);
    else
        ar__schedule(p->node, p);
}

void ar__after_push_on(ar__sched_t *s, ar_node_t *node, ar_proc_t *p, uintptr_t bits)
{
    if (!bits) return;
    AR__ASSERT(!(bits & MB_DEAD)); /* ar__route drains a dead mailbox itself */
    if (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_FOREIGN) {
        ar__sem_post((ar__sem_t *)p->state);
        return;
    }
    ar__schedule_on(s, node, p);
}

/* ---- the loop ---- */
#define SPIN_ALONE_NS 5000u
static ar_proc_t *find_work_slow(ar__sched_t *s)
{
    ar_node_t *node = s->node;
    uint64_t spin_start = 0;
    for (;;) {
        ar_proc_t *p = NULL;
        if (atomic_load_explicit(&node->shutdown, memory_order_acquire)) {
            if (spin_start) atomic_fetch_sub_explicit(&node->nspinning, 1, memory_order_relaxed);
            return NULL;
        }
        int next_ms = ar__wheel_run(s);
        if (s->next) {
            p = s->next;
            s->next = NULL;
        }
        if (!p) p = rq_pop(s);
        if (!p) p = inject_pop(node);
        if (!p) p = steal_any(s);
        if (p) {
            if (spin_start) {
                atomic_fetch_sub_explicit(&node->nspinning, 1, memory_order_relaxed);
                /* more may be waiting: let another idle scheduler look */
                if (!rq_empty(s) || atomic_load_explicit(&node->inject_len, memory_order_relaxed))
                    notify(node);
            }
            return p;
        }
        uint64_t now = ar__now_ns();
        if (!spin_start) {
            spin_start = now;
            atomic_fetch_add_explicit(&node->nspinning, 1, memory_order_relaxed);
        } else if (now - spin_start > node->spin_ns) {
            atomic_fetch_sub_explicit(&node->nspinning, 1, memory_order_relaxed);
            spin_start = 0;
            park(s, next_ms);
            continue;
        }
        /* a hand-off between schedulers comes within a microsecond or two; past that,
         * spin politely: a thread with real work (the I/O thread, another node's) may be
         * waiting for this CPU */
        if (now - spin_start > SPIN_ALONE_NS)
            sched_yield();
        else
            for (int i = 0; i < 16; i++) cpu_relax();
    }
}

static ar_proc_t *find_work(ar__sched_t *s)
{
    ar_proc_t *p;
    if ((++s->ticks & PERIODIC_MASK) == 0 || s->long_turn) {
        s->long_turn = false;
        ar__wheel_run(s);
        if ((p = inject_pop(s->node)) != NULL) { /* foreign work is never starved */
            if (s->next) {
                push_local(s, s->next);
                s->next = NULL;
            }
            return p;
        }
    }
    if ((p = s->next) != NULL) {
        s->next = NULL;
        if (++s->next_streak <= NEXT_STREAK_MAX || rq_empty(s)) return p;
        push_local(s, p);
    }
    s->next_streak = 0;
    if ((p = rq_pop(s)) != NULL) return p;
    return find_work_slow(s);
}

/* Completes what the previous context on this thread left to do after switching away. */
static void after_switch(void)
{
    ar__sched_t *s = ar__current_sched();
    ar__switch_done(s);
    if (s->release_stack) {
        ar__stack_put(s, s->release_stack);
        s->release_stack = NULL;
    }
    ar_proc_t *p = s->park_proc;
    if (p) {
        s->park_proc = NULL;
        /* Only now is p's context saved: it may be resumed elsewhere from here on. */
        if (!ar__mb_try_mark(p, MB_EMPTY)) push_local(s, p);
    }
}

static _Noreturn void leave_to_native(ar__sched_t *s)
{
    s->release_stack = s->cur_stack;
    s->cur_stack = NULL;
    ar__switch(NULL, &s->native);
    ar__panic(__FILE__, __LINE__, "a scheduler came back from leaving");
}

static void loop_entry(void *arg)
{
    (void)arg;
    after_switch();
    /* one catch frame for every handler this loop will run on this stack */
    struct ar__catch c;
    ar__stack_t *st = ar__current_sched()->cur_stack;
    c.st = st;
    c.prev = NULL;
    st->catch_top = &c;
    if (__builtin_setjmp(c.jb) != 0) {
        ar__proc_crashed();
        ar__set_current_proc(NULL);
    }
    for (;;) {
        ar__sched_t *s = ar__current_sched();
        ar_proc_t *p = find_work(s);
        if (!p) leave_to_native(s);
        ar__proc_run(p);
    }
}

/* Switches the running process p's stack (p parked) to a fresh loop, or back again.
 * false: no stack could be had for the loop, so p cannot park. */
bool ar__park(ar_proc_t *p)
{
    ar__sched_t *s = ar__current_sched();
    ar__stack_t *mine = s->cur_stack;
    ar__stack_t *fresh = ar__stack_get(s);
    if (!fresh) return false;
    ar__stack_prepare(fresh, loop_entry, NULL);
    p->stack = mine;
    p->parked = 1;
    atomic_store_explicit(&p->blocked, 1, memory_order_relaxed);
    s->park_proc = p;
    s->cur_stack = fresh;
    ar__switch(mine, fresh);
    /* resumed, perhaps on another scheduler */
    after_switch();
    p->parked = 0;
    atomic_store_explicit(&p->blocked, 0, memory_order_relaxed);
    ar__set_current_proc(p);
    return true;
}

/* Resumes a parked process: this loop's stack is given up. */
_Noreturn void ar__resume(ar_proc_t *p)
{
    ar__sched_t *s = ar__current_sched();
    s->release_stack = s->cur_stack;
    s->cur_stack = p->stack;
    ar__switch(NULL, p->stack);
    ar__panic(__FILE__, __LINE__, "an abandoned loop was resumed");
}

static void *sched_main(void *arg)
{
    ar__sched_t *s = arg;
    ar__tls_sched = s;
    ar__sched_altstack_init(s);
    ar__switch_native_init(s);
    ar__stack_t *st = ar__stack_get(s);
    if (!st) ar__panic(__FILE__, __LINE__, "no memory for a scheduler's first stack");
    ar__stack_prepare(st, loop_entry, NULL);
    s->cur_stack = st;
    ar__switch(&s->native, st);
    after_switch(); /* returns the last loop stack to the pool */
    ar__sched_altstack_destroy(s);
    ar__tls_sched = NULL;
    return NULL;
}

int ar__sched_start(ar_node_t *node)
{
    unsigned n = node->nsched;
    node->sched = ar__calloc(n, sizeof *node->sched);
    node->idle = ar__calloc(n, sizeof *node->idle);
    if (!node->sched || !node->idle) return AR_ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        void *mem = ar__malloc(sizeof(ar__sched_t) + AR__CACHE_LINE);
        if (!mem) return AR_ENOMEM;
        ar__sched_t *s = (ar__sched_t *)(((uintptr_t)mem + AR__CACHE_LINE - 1) &
                                         ~(uintptr_t)(AR__CACHE_LINE - 1));
        memset(s, 0, sizeof *s);
        s->alloc_base = mem;
        s->cache.max = ar__pool_bypass ? 0 : AR__POOL_CACHE_MAX;
        s->node = node;
        s->id = i;
        ar__sem_init(&s->sem);
        node->sched[i] = s;
        if (ar__wheel_init(s)) return AR_ENOMEM;
    }
    for (unsigned i = 0; i < n; i++) {
        if (pthread_create(&node->sched[i]->thread, NULL, sched_main, node->sched[i])) {
            atomic_store(&node->shutdown, 1);
            for (unsigned j = 0; j < i; j++) ar__sched_wake(node->sched[j]);
            for (unsigned j = 0; j < i; j++) pthread_join(node->sched[j]->thread, NULL);
            return AR_ENOMEM;
        }
        node->sched[i]->started = true;
    }
    return 0;
}

void ar__sched_stop(ar_node_t *node)
{
    atomic_store_explicit(&node->shutdown, 1, memory_order_release);
    for (unsigned i = 0; i < node->nsched; i++) {
        ar__sched_t *s = node->sched[i];
        if (!s || !s->started) continue;
        ar__sched_wake(s);
    }
    for (unsigned i = 0; i < node->nsched; i++) {
        ar__sched_t *s = node->sched[i];
        if (!s || !s->started) continue;
        /* no lost wake-up: one that parks after ar__sched_wake sees shutdown on its
         * re-check (the idle lock orders the two) */
        pthread_join(s->thread, NULL);
        s->started = false;
    }
}

void ar__sched_free(ar_node_t *node)
{
    for (unsigned i = 0; node->sched && i < node->nsched; i++) {
        ar__sched_t *s = node->sched[i];
        if (!s) continue;
        ar__wheel_destroy(s);
        while (s->stacks) {
            ar__stack_t *st = s->stacks;
            s->stacks = st->next_free;
            ar__stack_destroy(st);
        }
        ar__pool_cache_flush(&node->depot, &s->cache);
        ar__sem_destroy(&s->sem);
        ar__free(s->alloc_base);
    }
    ar__free(node->sched);
    ar__free(node->idle);
    node->sched = NULL;
    node->idle = NULL;
}
