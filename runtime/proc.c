/* Processes: the process table, spawn, a turn, and signal fetching.
 *
 * Table: fixed-size chunks of process structs under a directory that never moves, so a
 * pid's index finds its struct without a lock and structs are never freed while the node
 * runs (a stale pointer always points at some process struct). A pid is index + serial;
 * a slot's serial grows with each occupant and a slot whose serial would wrap is retired,
 * so a pid is never reused while the node runs. Free slots wait on per-scheduler lists
 * (batched to a global list) and are recycled only once their mailbox rests marked dead.
 *
 * A turn (ar__proc_run): if a signal waits (signal senders count them), fetch the whole
 * outer queue first, so signals act before any message is handled; then handle up to
 * BATCH messages (BATCH_LONG with a long backlog), or as many as TURN_NS allows, taking
 * them straight off the outer queue when the inner one is empty; then give up the queue
 * or requeue. Crashes (ar_exit_self, AR_FAIL, stack overflow) unwind to the catch frame
 * at the bottom of the loop's stack (see sched.c); ar_spawn sets its own catch frame
 * around a child's init, which runs on the spawner's stack, and ar__proc_exit one around
 * terminate. Ending is the exit sequence's (exit.c).
 */
#include "internal.h"

#include <stdarg.h>
#include <string.h>

/* Messages handled per turn before others get the scheduler: large enough to amortise
 * the turn, small enough that a flooded process cannot hold a scheduler for long. */
#define BATCH 64
/* A process with a longer backlog than that handles up to BATCH_LONG per turn: draining
 * in long turns costs fewer requeues and keeps its loop hot, and TURN_NS still bounds
 * how long the others wait. */
#define BATCH_LONG 4096
/* A turn also ends once it has run this long (checked every 8 messages, so a turn of a
 * few quick messages never reads the clock): slow handlers cannot starve the rest. */
#define TURN_NS 1000000u
/* A slot whose serial reaches this is retired for the rest of the node's life. */
#define SERIAL_MAX 0xFFFFFFF0u
/* Free slots a scheduler keeps before it hands a batch to the global list. */
#define LOCAL_FREE_MAX 512

/* ---- table ---- */
int ar__proc_table_init(ar_node_t *node)
{
    struct ar__proc_table *t = &node->ptab;
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->lock, NULL);
    t->next_fresh = 1; /* index 0 is never used: a zero pid_lo means "free" */
    return 0;
}

void ar__proc_table_destroy(ar_node_t *node)
{
    struct ar__proc_table *t = &node->ptab;
    uint32_t n = atomic_load(&t->nchunks);
    for (uint32_t c = 0; c < n; c++) ar__free(atomic_load(&t->chunks[c]));
    pthread_mutex_destroy(&t->lock);
}

/* A never-used slot (table lock held). */
static ar_proc_t *fresh_slot(ar_node_t *node)
{
    struct ar__proc_table *t = &node->ptab;
    uint32_t index = t->next_fresh;
    uint32_t c = index / AR__CHUNK_PROCS;
    if (c >= AR__MAX_CHUNKS) return NULL;
    if (c >= atomic_load_explicit(&t->nchunks, memory_order_relaxed)) {
        ar_proc_t *chunk = ar__calloc(AR__CHUNK_PROCS, sizeof(ar_proc_t));
        if (!chunk) return NULL;
        for (uint32_t i = 0; i < AR__CHUNK_PROCS; i++) {
            chunk[i].index = c * AR__CHUNK_PROCS + i;
            ar__mb_init(&chunk[i], MB_EMPTY | MB_DEAD);
        }
        atomic_store_explicit(&t->chunks[c], chunk, memory_order_release);
        /* release: lookups that see the count see the chunk */
        atomic_store_explicit(&t->nchunks, c + 1, memory_order_release);
    }
    t->next_fresh++;
    return ar__proc_slot(node, index);
}

/* Takes over a free slot whose mailbox rests dead: it becomes a running, empty mailbox.
 * Fails while a late sender is draining it (the slot is tried again later). */
static bool reclaim(ar_proc_t *p)
{
    uintptr_t dead = (uintptr_t)&p->stub | MB_EMPTY | MB_DEAD;
    /* acquire: the drainer's work on the queue happened before its marking CAS */
    return atomic_compare_exchange_strong_explicit(&p->head, &dead, (uintptr_t)&p->stub,
                                                   memory_order_acquire, memory_order_relaxed);
}

ar_proc_t *ar__proc_alloc(ar_node_t *node)
{
    ar__sched_t *s = ar__current_sched();
    ar_proc_t *p = NULL;
    if (s && s->node == node && s->free_procs) {
        p = s->free_procs;
        s->free_procs = p->link;
        s->nfree_procs--;
        if (!reclaim(p)) { /* being drained right now: put it back at the global list */
            pthread_mutex_lock(&node->ptab.lock);
            p->link = node->ptab.free;
            node->ptab.free = p;
            node->ptab.nfree++;
            pthread_mutex_unlock(&node->ptab.lock);
            p = NULL;
        }
    }
    if (!p) {
        pthread_mutex_lock(&node->ptab.lock);
        ar_proc_t **pp = &node->ptab.free;
        while (*pp && !reclaim(*pp)) pp = &(*pp)->link;
        if (*pp) {
            p = *pp;
            *pp = p->link;
            node->ptab.nfree--;
        } else {
            p = fresh_slot(node);
            if (p && !reclaim(p)) p = NULL; /* cannot happen: never published */
        }
        pthread_mutex_unlock(&node->ptab.lock);
        if (!p) return NULL;
    }
    p->serial++;
    p->tail = &p->stub;
    p->inner_head = p->inner_tail = NULL;
    p->state = NULL;
    p->node = node;
    p->stack = NULL;
    p->link = NULL;
    p->ext = NULL;
    /* until spawn says otherwise: a registration that found the slot's last occupant
     * cannot claim it */
    atomic_store_explicit(&p->name, AR__NAME_ENDED, memory_order_relaxed);
    p->wait_ref = 0;
    p->wait_timer = NULL;
    p->handling = NULL;
    ar__halves_init(&p->halves);
    p->reason_code = AR_NORMAL;
    p->parked = 0;
    atomic_store_explicit(&p->trap_exit, 0, memory_order_relaxed);
    atomic_store_explicit(&p->nlinks, 0, memory_order_relaxed);
    atomic_store_explicit(&p->nmonitors, 0, memory_order_relaxed);
    atomic_store_explicit(&p->nmonitored_by, 0, memory_order_relaxed);
    atomic_store_explicit(&p->mailbox_limit, 0, memory_order_relaxed);
    atomic_store_explicit(&p->handled, 0, memory_order_relaxed);
    atomic_store_explicit(&p->blocked, 0, memory_order_relaxed);
    atomic_store_explicit(&p->flags, 0, memory_order_relaxed);
    return p;
}

void ar__proc_release(ar_proc_t *p)
{
    ar_node_t *node = p->node;
    if (p->serial >= SERIAL_MAX) return; /* retired: its pids must never come back */
    ar__sched_t *s = ar__current_sched();
    if (s && s->node == node) {
        p->link = s->free_procs;
        s->free_procs = p;
        if (++s->nfree_procs <= LOCAL_FREE_MAX) return;
        /* hand half to the global list so other schedulers can reuse them */
        ar_proc_t *first = s->free_procs, *last = first;
        for (unsigned i = 1; i < LOCAL_FREE_MAX / 2; i++) last = last->link;
        s->free_procs = last->link;
        s->nfree_procs -= LOCAL_FREE_MAX / 2;
        pthread_mutex_lock(&node->ptab.lock);
        last->link = node->ptab.free;
        node->ptab.free = first;
        node->ptab.nfree += LOCAL_FREE_MAX / 2;
        pthread_mutex_unlock(&node->ptab.lock);
        return;
    }
    pthread_mutex_lock(&node->ptab.lock);
    p->link = node->ptab.free;
    node->ptab.free = p;
    node->ptab.nfree++;
    pthread_mutex_unlock(&node->ptab.lock);
}

struct ar__proc_ext *ar__proc_ext(ar_proc_t *p)
{
    if (!p->ext) p->ext = ar__calloc(1, sizeof *p->ext);
    return p->ext;
}

/* ---- reasons ---- */
static const char oom_text[] = "out of memory";

void ar__proc_set_reason(ar_proc_t *p, ar_reason_t why)
{
    uint32_t fl = atomic_load_explicit(&p->flags, memory_order_relaxed);
    if (fl & P_TERMINATING) return; /* terminate holds the final reason (and its text) */
    p->reason_code = (uint8_t)why.code;
    atomic_fetch_and_explicit(&p->flags, ~(uint32_t)P_REASON_LOST, memory_order_relaxed);
    if (p->ext && p->ext->reason_text) {
        ar__free(p->ext->reason_text);
        p->ext->reason_text = NULL;
    }
    if (!why.text) return; /* the common case needs no allocation */
    struct ar__proc_ext *x = ar__proc_ext(p);
    if (!x || !(x->reason_text = ar__strdup(why.text)))
        atomic_fetch_or_explicit(&p->flags, P_REASON_LOST, memory_order_relaxed);
}

static ar_reason_t reason_of(ar_proc_t *p)
{
    uint32_t fl = atomic_load_explicit(&p->flags, memory_order_relaxed);
    if (fl & P_OVERFLOW) {
        ar__proc_set_reason(p, (ar_reason_t){AR_ERROR, "stack overflow"});
        fl = atomic_load_explicit(&p->flags, memory_order_relaxed);
    }
    if (fl & P_REASON_LOST) return (ar_reason_t){(ar_exit_code_t)p->reason_code, oom_text};
    return (ar_reason_t){(ar_exit_code_t)p->reason_code, p->ext ? p->ext->reason_text : NULL};
}

/* ---- unwinding ---- */
__attribute__((noinline)) static int catch_run(struct ar__catch *c, ar__stack_t *st,
                                               void (*fn)(void *), void *arg)
{
    struct ar__catch *volatile vc = c;
    c->st = st;
    c->prev = st->catch_top;
    st->catch_top = c;
    if (__builtin_setjmp(c->jb) == 0) {
        fn(arg);
        vc->st->catch_top = vc->prev;
        return 0;
    }
    vc->st->catch_top = vc->prev;
    ar__stack_unpoison_below(vc->st, __builtin_frame_address(0));
    return 1;
}

_Noreturn void ar__proc_unwind(ar_proc_t *p)
{
    struct ar__catch *c = p->stack ? p->stack->catch_top : NULL;
    if (!c) ar__panic(__FILE__, __LINE__, "a process unwound with no catch frame");
    __builtin_longjmp(c->jb, 1);
}

static ar_proc_t *self_check(ar_proc_t *self)
{
    ar_proc_t *cur = ar__current_proc();
    return (self && self == cur) ? self : NULL;
}

void ar_stop(ar_proc_t *self, ar_reason_t why)
{
    if (!self_check(self)) return;
    ar__proc_set_reason(self, why);
    atomic_fetch_or_explicit(&self->flags, P_STOP, memory_order_relaxed);
}

_Noreturn void ar_exit_self(ar_proc_t *self, ar_reason_t why)
{
    ar_proc_t *p = self_check(self);
    if (!p) p = ar__current_proc();
    if (!p) ar__panic(__FILE__, __LINE__, "ar_exit_self called outside any process");
    ar__proc_set_reason(p, why);
    atomic_fetch_or_explicit(&p->flags, P_EXITING, memory_order_relaxed);
    ar__proc_unwind(p);
}

/* The longest crash text AR_FAIL and AR_ASSERT make; the place always fits at its end. */
#define CRASH_TEXT_MAX 512

/* The place a crash text ends with, " at <file>:<line>", written into where (room for
 * WHERE_MAX); returns its length. By hand: a crash should cost a crash, not a printf. */
#define WHERE_MAX 160
static size_t where_of(char *where, const char *file, int line)
{
    size_t n = 0, flen = strlen(file);
    if (flen > WHERE_MAX - 16) file += flen - (WHERE_MAX - 16), flen = WHERE_MAX - 16;
    memcpy(where, " at ", 4), n = 4;
    memcpy(where + n, file, flen), n += flen;
    where[n++] = ':';
    char digits[12];
    size_t d = 0;
    unsigned u = line > 0 ? (unsigned)line : 0;
    do digits[d++] = (char)('0' + u % 10); while ((u /= 10) != 0);
    while (d) where[n++] = digits[--d];
    where[n] = '\0';
    return n;
}

/* "<what> at <file>:<line>" in text (CRASH_TEXT_MAX): both crash macros say where, the
 * same way; the place always fits, what comes before it is cut short first. */
static _Noreturn void crash_at(ar_proc_t *self, char *text, size_t what_len, const char *file,
                               int line)
{
    char where[WHERE_MAX];
    size_t wn = where_of(where, file, line);
    if (what_len > CRASH_TEXT_MAX - 1 - wn) what_len = CRASH_TEXT_MAX - 1 - wn;
    memcpy(text + what_len, where, wn + 1);
    ar_exit_self(self, (ar_reason_t){AR_ERROR, text});
}

_Noreturn void ar__fail(ar_proc_t *self, const char *file, int line, const char *fmt, ...)
{
    char text[CRASH_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt ? fmt : "failed", ap);
    va_end(ap);
    crash_at(self, text, n < 0 ? 0 : (size_t)n < sizeof text ? (size_t)n : sizeof text - 1, file,
             line);
}

_Noreturn void ar__assert_fail(ar_proc_t *self, const char *file, int line, const char *cond)
{
    char text[CRASH_TEXT_MAX];
    static const char prefix[] = "assertion failed: ";
    size_t n = sizeof prefix - 1, clen = strlen(cond);
    if (clen > sizeof text - 1 - n) clen = sizeof text - 1 - n;
    memcpy(text, prefix, n);
    memcpy(text + n, cond, clen);
    crash_at(self, text, n + clen, file, line);
}

ar_pid_t ar_self(ar_proc_t *self) { return self ? ar__proc_pid(self) : AR_PID_NONE; }
ar_node_t *ar_node(ar_proc_t *self) { return self ? self->node : NULL; }

/* ---- fetching ---- */
/* Acts on a fetched envelope: returns it if it is for the process to see (a message, or
 * the wake-up its wait expects), else disposes of it (or keeps it as a half) and returns
 * NULL. */
static ar__env_t *admit(ar_proc_t *p, ar__env_t *e)
{
    if (e->to_lo != atomic_load_explicit(&p->pid_lo, memory_order_relaxed)) {
        /* sent to an earlier occupant of the slot */
        ar__dead_letter(p->node, p, e, AR_REASON(AR_NOPROC));
        return NULL;
    }
    switch (e->kind) {
    case ENV_MSG:
        if (e->msg.kind == AR_MSG_REPLY) {
            if (e->flags & ENVF_SYNC) {
                if (e->msg.ref != p->wait_ref) break; /* its call gave up: drop */
            } else if (!ar__ask_answered(p, e)) {
                break; /* the ask was answered already (timeout): drop */
            }
        }
        return e;
    case ENV_WAKE:
        if (e->msg.ref == AR__REF_TICK) { /* a behaviour's own tick (the registry's idle check) */
            e->kind = ENV_MSG;
            e->msg.kind = AR_MSG_TIMER;
            e->msg.tag = AR__TICK_TAG;
            e->msg.from = ar__proc_pid(p);
            e->xflags = AR__XF_INTERNAL;
            return e;
        }
        if (e->msg.ref != p->wait_ref) break;
        return e;
    default: /* a signal: links, monitors, exits */
        return ar__signal_admit(p, e);
    }
    ar__env_free(e);
    return NULL;
}

void ar__proc_fetch(ar_proc_t *p)
{
    ar__env_t *e;
    while ((e = ar__mb_pop(p)) != NULL)
        if ((e = admit(p, e)) != NULL) ar__inner_append(p, e);
}

/* The next message for the handler: inner queue first, then straight off the outer
 * queue (a message popped there never goes through the inner queue). */
static ar__env_t *next_msg(ar_proc_t *p)
{
    for (;;) {
        ar__env_t *e = p->inner_head;
        if (e) {
            p->inner_head = (ar__env_t *)atomic_load_explicit(&e->q.next, memory_order_relaxed);
            if (!p->inner_head) p->inner_tail = NULL;
            if (e->kind == ENV_MSG) return e;
            ar__env_free(e); /* a wake-up its wait no longer needs */
            continue;
        }
        e = ar__mb_pop(p);
        if (!e) return NULL;
        if ((e = admit(p, e)) != NULL) {
            if (e->kind == ENV_MSG) return e;
            ar__env_free(e);
        }
        if (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_EXITING) return NULL;
    }
}

void ar__msg_taken(ar_proc_t *p, ar__env_t *e) { ar__msg_taken_on(ar__current_sched(), p, e); }

void ar__msg_taken_on(ar__sched_t *s, ar_proc_t *p, ar__env_t *e)
{
    if (e->flags & ENVF_COUNTED)
        ar__consumed(p);
    else if (e->flags & ENVF_EVENT) /* an event leaves its subscription's buffer */
        ar__events_taken(e);
    e->flags &= (uint8_t)~(ENVF_COUNTED | ENVF_EVENT);
    if (e->msg.kind == AR_MSG_CALL) { /* owed from now: the CALL is its own failed reply */
        e->flags |= ENVF_OWED | ENVF_HANDED;
        ar__half_put(p, e, HALF_CALL, e->msg.reply_to.pid, e->msg.reply_to.ref);
    }
    atomic_store_explicit(&p->handled, atomic_load_explicit(&p->handled, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    ar__count(s, p->node, AR__DELIVERED);
}


static void handle_batch(ar_proc_t *p, ar__sched_t *s)
{
    /* Signals act as fetched, before any message of the turn is handled: when one is
     * waiting (the count says so), fetch the whole queue first. Otherwise take messages
     * one at a time: a long backlog is walked once, not fetched and then walked again. */
    if (atomic_load_explicit(&p->signals, memory_order_acquire) != p->signals_seen)
        ar__proc_fetch(p); /* acquire: pairs with ar__deliver_signal's increment */
    const ar_behaviour_t *b = atomic_load_explicit(&p->b, memory_order_relaxed);
    uint32_t backlog = atomic_load_explicit(&p->pushed, memory_order_relaxed) -
                       atomic_load_explicit(&p->consumed, memory_order_relaxed);
    int batch = backlog > BATCH ? BATCH_LONG : BATCH;
    uint64_t t0 = 0;
    for (int i = 0; i < batch; i++) {
        if (atomic_load_explicit(&p->flags, memory_order_relaxed) & (P_STOP | P_EXITING)) return;
        if ((i & 7) == 7) {
            uint64_t now = ar__now_ns();
            if (!t0)
                t0 = now;
            else if (now - t0 > TURN_NS) {
                s->long_turn = true; /* look at timers next */
                return;
            }
        }
        ar__env_t *e = next_msg(p);
        if (!e) return;
        if (e->kind != ENV_MSG) { /* a wake-up whose wait is over */
            ar__env_free(e);
            continue;
        }
        ar__msg_taken_on(s, p, e);
        p->handling = e;
        b->handle(p, p->state, &e->msg);
        s = ar__current_sched(); /* afresh: the handler may have parked and moved threads */
        if (p->handling == e) ar__msg_done(s, e); /* else the handler kept it */
        p->handling = NULL;
    }
}

/* ---- ending ---- */
struct term_args {
    ar_proc_t *p;
    ar_reason_t why;
};
static void run_terminate(void *arg)
{
    struct term_args *t = arg;
    const ar_behaviour_t *b = atomic_load_explicit(&t->p->b, memory_order_relaxed);
    if (b->terminate) b->terminate(t->p, t->p->state, t->why);
}

void ar__proc_exit(ar_proc_t *p, ar_reason_t why)
{
    ar__set_current_proc(p);
    /* terminate runs as the process it is (it may block); only a new fatal signal, an
     * ar_exit_self or a crash cuts it short */
    uint32_t fl = atomic_load_explicit(&p->flags, memory_order_relaxed);
    atomic_store_explicit(&p->flags, (fl & ~(uint32_t)(P_EXITING | P_STOP)) | P_TERMINATING,
                          memory_order_relaxed);
    ar__wait_abandon(p); /* the wait it was unwound out of, if it was */
    struct term_args t = {p, why};
    struct ar__catch c;
    catch_run(&c, p->stack, run_terminate, &t); /* a crash in terminate ends only it */
    ar__exit_sequence(p, why, END_EXITED);
    ar__set_current_proc(NULL);
}

static void end_turn(ar_proc_t *p)
{
    if (p->inner_head || !ar__mb_try_mark(p, MB_EMPTY)) ar__requeue(p);
}

/* ---- spawn ---- */
struct init_args {
    ar_proc_t *p;
    void *arg;
    int rc;
};
static void run_init(void *arg)
{
    struct init_args *ia = arg;
    const ar_behaviour_t *b = atomic_load_explicit(&ia->p->b, memory_order_relaxed);
    ia->rc = b->init ? b->init(ia->p, ia->arg, &ia->p->state) : 0;
}

/* The reason a failed start reports (START_FAILED): the crash's, or init's result. */
static ar_reason_t start_failure(ar_proc_t *p, bool crashed, int rc, char *text, size_t n)
{
    if (crashed) return reason_of(p);
    const char *name = ar_err_name(rc);
    if (strcmp(name, "AR_UNKNOWN") == 0)
        snprintf(text, n, "init returned %d", rc);
    else
        snprintf(text, n, "init returned %s", name);
    return (ar_reason_t){AR_ERROR, text};
}

/* Runs init in the new process's context; on success the process lives on (or ends at
 * once after ar_stop in init); on failure nothing of it is left. Returns init's result,
 * or AR_ENOPROC if init crashed. */
static int start(ar_proc_t *p, void *arg)
{
    struct init_args ia = {p, arg, 0};
    struct ar__catch c;
    ar__set_current_proc(p);
    int crashed = catch_run(&c, p->stack, run_init, &ia);
    ar__set_current_proc(p); /* init may have parked and resumed on another thread */
    int rc = crashed ? AR_ENOPROC : (ia.rc < 0 ? ia.rc : 0);
    if (rc < 0) { /* no SPAWN, no EXIT: the exit sequence reports START_FAILED */
        char text[48];
        atomic_fetch_or_explicit(&p->flags, P_INIT_FAILED, memory_order_relaxed);
        ar__exit_sequence(p, start_failure(p, crashed, rc, text, sizeof text), END_START_FAILED);
        return rc;
    }
    ar__count(ar__current_sched(), p->node, AR__SPAWNED); /* before it can exit */
    if (ar__events_wanted(p->node, AR_EV_SPAWN))
        ar__events_spawned(p);
    if (atomic_load_explicit(&p->flags, memory_order_relaxed) & (P_STOP | P_EXITING))
        ar__proc_exit(p, reason_of(p));
    else
        end_turn(p);
    return 0;
}

/* The ordered stop ends top-level processes newest first: a spawn from outside any
 * process reserves its place in that list before anything starts, so running out of
 * memory fails the spawn rather than the order. */
static int top_reserve(ar_node_t *node)
{
    pthread_mutex_lock(&node->top_lock);
    /* under the lock: a stop copies the list under it once it set the flag */
    if (atomic_load_explicit(&node->stopping, memory_order_relaxed)) {
        pthread_mutex_unlock(&node->top_lock);
        return AR_ECLOSED;
    }
    if (node->ntop + node->top_reserved + 1 > node->top_cap) {
        /* drop the dead first, so churn of short-lived top-level processes stays bounded */
        size_t k = 0;
        for (size_t i = 0; i < node->ntop; i++)
            if (ar__proc_lookup(node, (ar_pid_t){node->pid_hi, node->top[i]}))
                node->top[k++] = node->top[i];
        node->ntop = k;
        size_t need = k + node->top_reserved + 1;
        if (need * 2 > node->top_cap) {
            size_t cap = node->top_cap ? node->top_cap * 2 : 64;
            while (cap < need * 2) cap *= 2;
            uint64_t *n = ar__realloc(node->top, cap * sizeof *n);
            if (n) node->top = n;
            uint64_t *snap = n ? ar__realloc(node->top_snap, cap * sizeof *snap) : NULL;
            if (snap) node->top_snap = snap;
            if (!snap) { /* the lists keep the old capacity (one may have grown: harmless) */
                pthread_mutex_unlock(&node->top_lock);
                return AR_ENOMEM;
            }
            node->top_cap = cap;
        }
    }
    node->top_reserved++;
    pthread_mutex_unlock(&node->top_lock);
    return 0;
}

static void top_commit(ar_node_t *node, uint64_t lo)
{
    pthread_mutex_lock(&node->top_lock);
    node->top_reserved--;
    if (lo) node->top[node->ntop++] = lo;
    pthread_mutex_unlock(&node->top_lock);
}

/* Publishes a new process; false if the node began to stop meanwhile (the spawn then
 * undoes itself). The pid's store and the check are sequentially consistent, as the
 * stopper's flag and its sweep of the table: either the stopper sees this pid, or this
 * spawn sees the stop. */
static bool publish(ar_node_t *node, ar_proc_t *p, uint64_t lo)
{
    atomic_store_explicit(&p->pid_lo, lo, memory_order_seq_cst);
    return !atomic_load_explicit(&node->stopping, memory_order_seq_cst);
}

static int spawn(ar_node_t *node, const ar_behaviour_t *b, void *arg, const ar_spawn_opts_t *opts,
                 ar_proc_t *parent, const struct ar__spawn_extra *xtra,
                 struct ar__spawn_wait *async, ar_pid_t *out)
{
    ar__env_t *note = xtra ? xtra->exit_note : NULL; /* ours from here, whatever happens */
    if (atomic_load_explicit(&node->stopping, memory_order_acquire)) {
        ar__env_free(note);
        return AR_ECLOSED;
    }
    bool link = opts && opts->link;
    ar__env_t *parent_half = NULL, *child_half = NULL; /* a link's halves, made first */
    ar_proc_t *p = link && ar__env_new_pair(&parent_half, &child_half) ? NULL : ar__proc_alloc(node);
    if (!p) {
        ar__env_free(parent_half);
        ar__env_free(child_half);
        ar__env_free(note);
        return AR_ENOMEM;
    }
    if (note) /* before it runs a line (its table is ours to write yet): from here its exit
                 sequence sends the note, or drops it if the start fails */
        ar__half_put(p, note, HALF_WATCHED, xtra->note_to, xtra->note_ref);
    atomic_store_explicit(&p->b, b, memory_order_relaxed);
    atomic_store_explicit(&p->parent_lo,
                          xtra     ? xtra->parent.lo
                          : parent ? atomic_load_explicit(&parent->pid_lo, memory_order_relaxed)
                                   : 0,
                          memory_order_relaxed);
    if (opts) {
        atomic_store_explicit(&p->mailbox_limit, (uint32_t)opts->mailbox_limit,
                              memory_order_relaxed);
        atomic_store_explicit(&p->trap_exit, opts->trap_exit, memory_order_relaxed);
    }
    if (!parent && !xtra) atomic_fetch_or_explicit(&p->flags, P_TOPLEVEL, memory_order_relaxed);
    uint64_t lo = AR__PID_LO(p->index, p->serial);
    ar_pid_t pid = {node->pid_hi, lo};
    atomic_fetch_add_explicit(&node->live, 1, memory_order_relaxed);
    struct ar__proc_ext *x = parent ? NULL : ar__proc_ext(p); /* the start handshake's */
    /* a name is claimed before init runs, as OTP registers before init; the claim mark
     * goes in before the pid is published, so no ar_register can race it */
    atomic_store_explicit(&p->name, opts && opts->name ? AR__NAME_CLAIMING : NULL,
                          memory_order_relaxed);
    int rc = !publish(node, p, lo)    ? AR_ECLOSED
             : !parent && !x          ? AR_ENOMEM
             : opts && opts->name     ? ar__names_claim(p, pid, opts->name)
                                      : 0;
    if (rc && atomic_load_explicit(&p->name, memory_order_relaxed) == AR__NAME_CLAIMING)
        atomic_store_explicit(&p->name, NULL, memory_order_release); /* never claimed */
    if (rc) {
        ar__exit_sequence(p, AR_REASON(AR_NOPROC), END_START_FAILED);
        ar__env_free(parent_half);
        ar__env_free(child_half);
        return rc;
    }
    if (async) {
        x->spawn_wait = async;
        atomic_fetch_or_explicit(&p->flags, P_STARTING, memory_order_relaxed);
        if (out) *out = pid;
        ar__schedule(node, p); /* its mailbox has no MB_EMPTY bit: we hold the duty */
        return 0;
    }
    if (parent) {
        ar_pid_t ppid = ar__proc_pid(parent);
        if (link) { /* both halves before the child runs a line: one that dies at once
                       still signals its parent (the child's table is ours to write yet) */
            ar__half_put(parent, parent_half, HALF_LINK, pid, 0);
            ar__half_put(p, child_half, HALF_LINK, ppid, 0);
        }
        /* init runs right here, on the spawner's stack, as the child */
        p->stack = parent->stack;
        rc = start(p, arg);
        ar__set_current_proc(parent);
        if (rc < 0 && link) /* a failed start leaves no link (and sends no exit) */
            ar__env_free(ar__half_take(parent, HALF_LINK, pid, 0));
    } else {
        struct ar__spawn_wait w;
        ar__sem_init(&w.sem);
        w.arg = arg;
        w.rc = 0;
        w.notify = NULL;
        x->spawn_wait = &w;
        atomic_fetch_or_explicit(&p->flags, P_STARTING, memory_order_relaxed);
        ar__schedule(node, p); /* its mailbox has no MB_EMPTY bit: we hold the duty */
        ar__sem_wait(&w.sem, NULL);
        ar__sem_destroy(&w.sem);
        rc = w.rc;
    }
    if (rc < 0) return rc;
    if (out) *out = pid;
    return 0;
}

int ar_spawn(ar_node_t *node, const ar_behaviour_t *b, void *arg, const ar_spawn_opts_t *opts,
             ar_pid_t *out)
{
    if (!node || !b || !b->handle) return AR_EINVAL;
    ar_proc_t *parent = ar__current_proc();
    if (parent && (parent->node != node ||
                   (atomic_load_explicit(&parent->flags, memory_order_relaxed) & P_FOREIGN)))
        parent = NULL;
    if (opts) {
        if (opts->link && !parent) return AR_ENOTPROC;
        if (opts->name && !ar__name_valid(opts->name)) return AR_EINVAL;
        if (opts->mailbox_limit > UINT32_MAX) return AR_EINVAL;
    }
    if (parent) return spawn(node, b, arg, opts, parent, NULL, NULL, out);
    bool counted = ar__outside_enter(node);
    int rc = top_reserve(node);
    if (rc == 0) {
        ar_pid_t pid = AR_PID_NONE;
        rc = spawn(node, b, arg, opts, NULL, NULL, NULL, &pid);
        top_commit(node, rc == 0 ? pid.lo : 0);
        if (rc == 0 && out) *out = pid;
    }
    if (counted) ar__outside_leave(node);
    return rc;
}

static ar_proc_t *spawner(ar_node_t *node)
{
    ar_proc_t *p = ar__current_proc();
    if (p && (p->node != node || (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_FOREIGN)))
        p = NULL;
    return p;
}

int ar__spawn_keyed(ar_node_t *node, const ar_behaviour_t *b, void *arg,
                    const struct ar__spawn_extra *x, ar_pid_t *out)
{
    ar_proc_t *parent = spawner(node);
    if (parent) return spawn(node, b, arg, NULL, parent, x, NULL, out);
    bool counted = ar__outside_enter(node);
    int rc = spawn(node, b, arg, NULL, NULL, x, NULL, out);
    if (counted) ar__outside_leave(node);
    return rc;
}

int ar__spawn_async(ar_node_t *node, const ar_behaviour_t *b, void *arg,
                    const struct ar__spawn_extra *x, ar__env_t *notify, ar_pid_t notify_to,
                    ar_pid_t *out)
{
    struct ar__spawn_wait *w = ar__calloc(1, sizeof *w);
    if (!w) {
        ar__env_free(x->exit_note); /* the spawn's, whatever happens */
        return AR_ENOMEM;
    }
    w->arg = arg;
    w->notify = notify;
    w->notify_to = notify_to;
    int rc = spawn(node, b, arg, NULL, NULL, x, w, out);
    if (rc) ar__free(w);
    return rc;
}

ar__env_t *ar__msg_keep(ar_proc_t *self, const ar_msg_t *m)
{
    ar__env_t *e = ar__container_of(m, ar__env_t, msg);
    AR__ASSERT(self->handling == e && !(e->flags & ENVF_OWED));
    self->handling = NULL; /* handle_batch leaves it alone */
    e->flags &= (uint8_t)~(ENVF_HANDED | ENVF_COUNTED);
    return e;
}

/* ---- a turn ---- */
static void start_foreign(ar_proc_t *p)
{
    struct ar__spawn_wait *w = p->ext->spawn_wait;
    p->ext->spawn_wait = NULL;
    atomic_fetch_and_explicit(&p->flags, ~(uint32_t)P_STARTING, memory_order_relaxed);
    ar_node_t *node = p->node;
    ar_pid_t pid = ar__proc_pid(p); /* p is someone else's if the start fails */
    int rc = start(p, w->arg);
    if (!w->notify) { /* a foreign thread waits for it */
        w->rc = rc;
        ar__sem_post(&w->sem);
        return;
    }
    memcpy(ar__env_payload(w->notify), &rc, sizeof rc);
    w->notify->msg.from = pid;
    ar__route_or_dead_letter(node, w->notify_to, w->notify);
    ar__free(w);
}

void ar__proc_run(ar_proc_t *p)
{
    if (p->parked) ar__resume(p);
    ar__sched_t *s = ar__current_sched();
    p->stack = s->cur_stack;
    ar__set_current_proc(p);
    if (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_STARTING) {
        start_foreign(p);
        ar__set_current_proc(NULL);
        return;
    }
    /* a crash in a handler unwinds to the catch frame of the loop on this stack, which
     * calls ar__proc_crashed */
    handle_batch(p, s);
    if (atomic_load_explicit(&p->flags, memory_order_relaxed) & (P_STOP | P_EXITING))
        ar__proc_exit(p, reason_of(p));
    else
        end_turn(p);
    ar__set_current_proc(NULL);
}

void ar__proc_crashed(void)
{
    ar_proc_t *p = ar__current_proc();
    if (!p) ar__panic(__FILE__, __LINE__, "a loop caught a crash of no process");
    ar__stack_unpoison_below(p->stack, __builtin_frame_address(0));
    ar__proc_exit(p, reason_of(p));
}
