/* Structures shared inside runtime/. Never included by users.
 *
 * Threads: N scheduler threads run processes; one I/O thread (loop.c) runs libuv for
 * signals (and later sockets); foreign threads (main, the user's) call ar_node_t functions.
 *
 * A process is a struct ar_proc in the node's process table. Fields are split in two
 * cache lines' worth: the first is written by senders (the outer queue's producer end and
 * the queued counter), the rest only by the thread currently running the process (its
 * "owner"), with a few relaxed atomics read by introspection.
 *
 * Scheduling needs no state word: the outer queue's producer pointer carries two tag bits
 * (Pony's messageq). MB_EMPTY says "not scheduled": the sender whose push finds it set must
 * schedule the process. MB_DEAD says the process has ended: the sender whose push finds it
 * set drains the queue itself, answering each envelope as "no such process". So exactly one
 * thread at a time consumes a queue, and nothing pushed is ever lost or leaked.
 */
#ifndef AR_INTERNAL_H
#define AR_INTERNAL_H

#include <arbor.h>

#include <pthread.h>
#include <semaphore.h>
#if !defined(__x86_64__) || defined(AR_CTX_UCONTEXT)
#define AR__CTX_UCONTEXT 1 /* no hand-written switch for this CPU: ucontext (ctx_*.S) */
#include <ucontext.h>
#endif
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "queue.h"

#include <urcu/urcu-bp.h> /* the flavour's names first, then the table (rcu.c) */
#include <urcu/rculfhash.h>

#define AR__CACHE_LINE 64
#define AR__PID_INDEX(lo) ((uint32_t)(lo))
#define AR__PID_SERIAL(lo) ((uint32_t)((lo) >> 32))
#define AR__PID_LO(index, serial) (((uint64_t)(serial) << 32) | (uint64_t)(index))

/* Internal invariant check: prints and aborts (the public AR_ASSERT only crashes a process). */
#define AR__ASSERT(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) ar__panic(__FILE__, __LINE__, "assertion failed: %s", #cond);         \
    } while (0)
_Noreturn void ar__panic(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- Allocation (alloc.c) ---------------------------------------------------------- */
void *ar__malloc(size_t n);
void *ar__calloc(size_t n, size_t size);
void *ar__realloc(void *p, size_t n);
void ar__free(void *p);
char *ar__strdup(const char *s);
extern _Atomic int ar__nodes_running; /* ar_set_allocator refuses while > 0 */

/* Size-class pools for envelopes: a per-scheduler cache over a per-node depot of batches.
 * Blocks of one class are interchangeable with plain ar__malloc blocks of the class size,
 * so a block may be freed on any thread, with or without a cache. */
struct ar__sched;
#define AR__POOL_CLASSES 8
struct ar__pool_cache {
    void *free[AR__POOL_CLASSES];
    uint32_t count[AR__POOL_CLASSES];
    uint32_t max; /* blocks kept per class (0: none, every block goes to the hook) */
};
/* A cache holds at most this many blocks per class: enough for a burst of sends between
 * two turns, small enough that an idle scheduler does not hoard memory. */
#define AR__POOL_CACHE_MAX 512
/* Set before a node starts, its schedulers keep no blocks: every envelope then comes from
 * the allocator hook, so the tests' out-of-memory sweeps reach each one. */
extern bool ar__pool_bypass;
struct ar__depot {
    pthread_mutex_t lock;
    void *batches[AR__POOL_CLASSES]; /* each batch: a free list, linked through word 1 */
    _Atomic uint32_t nbatches[AR__POOL_CLASSES]; /* written under lock; read without it */
};
void *ar__pool_alloc(size_t size);
void ar__pool_free(void *p, size_t size);
/* The same with the calling thread's scheduler already at hand (NULL: none). */
void *ar__pool_alloc_slow(struct ar__sched *s, size_t size);
void ar__pool_free_slow(struct ar__sched *s, void *p, size_t size);
#define AR__POOL_SMALL 128 /* size of the smallest class: most envelopes */
/* Frees into a cache of a thread that is not a scheduler but frees many pooled blocks
 * allocated by schedulers (the events thread): spilled to d in batches, as a scheduler's
 * cache is, instead of one by one to the allocator from another CPU. */
void ar__pool_free_cached(struct ar__depot *d, struct ar__pool_cache *c, void *p, size_t size);
void ar__pool_cache_flush(struct ar__depot *d, struct ar__pool_cache *c);
/* Gives the calling thread (one of the node's own, not a scheduler) cache c over depot d
 * for ar__pool_* calls with no scheduler; NULL: none again (flush it first). */
void ar__pool_thread_cache(struct ar__depot *d, struct ar__pool_cache *c);
void ar__depot_init(struct ar__depot *d);
void ar__depot_destroy(struct ar__depot *d);

/* ---- Envelopes (send.c) ------------------------------------------------------------- */
struct ar__qnode {
    _Atomic(struct ar__qnode *) next;
};

/* Vyukov's intrusive MPSC queue, the mailbox's and the I/O thread's inbox's: a push is one
 * atomic exchange of the producer end (`head`, whose low bits below `tags` may carry the
 * owner's flags, as the mailbox's MB_* do) and a link; the one consumer pops from `tail`,
 * resting `stub` behind the last node so it can be detached. */
static inline uintptr_t ar__mpsc_push(_Atomic uintptr_t *head, struct ar__qnode *n, uintptr_t tags)
{
    atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
    /* acq_rel: acquire pairs with a consumer's marking CAS (whoever takes a tag's duty sees
     * what the consumer left), release orders n's contents and earlier pushes before it */
    uintptr_t prev = atomic_exchange_explicit(head, (uintptr_t)n, memory_order_acq_rel);
    /* release: the consumer's acquire load of `next` sees the whole node */
    atomic_store_explicit(&((struct ar__qnode *)(prev & ~tags))->next, n, memory_order_release);
    return prev & tags;
}

/* The next node, or NULL if none is visible yet (a push may be between its exchange and
 * its link: its producer then brings the consumer back, by the tag's duty or a wake-up).
 * Consumer only; the head carries no tags while a consumer is active. */
static inline struct ar__qnode *ar__mpsc_pop(_Atomic uintptr_t *head, struct ar__qnode **tailp,
                                             struct ar__qnode *stub, uintptr_t tags)
{
    struct ar__qnode *tail = *tailp;
    struct ar__qnode *next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (tail == stub) {
        if (!next) return NULL;
        *tailp = tail = next;
        next = atomic_load_explicit(&next->next, memory_order_acquire);
    }
    if (next) {
        *tailp = next;
        return tail;
    }
    if ((struct ar__qnode *)(atomic_load_explicit(head, memory_order_acquire) & ~tags) != tail)
        return NULL;
    ar__mpsc_push(head, stub, tags); /* tail is the last: rest the stub behind it */
    next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (next) {
        *tailp = next;
        return tail;
    }
    return NULL;
}

enum ar__env_kind {
    ENV_MSG,       /* a message for the handler: CAST, CALL, REPLY, TIMER (and EXIT, DOWN
                      once a signal turned into one) */
    ENV_EXIT,      /* an exit signal (ENVF_LINK: through a link): acts when fetched */
    ENV_WAKE,      /* internal: ends an ar_sleep / a call timeout (msg.ref says which) */
    ENV_LINK,      /* from links with the target */
    ENV_UNLINK,    /* from removes its link */
    ENV_MONITOR,   /* from monitors the target under msg.ref */
    ENV_DEMONITOR, /* from's monitor msg.ref is gone */
    ENV_DOWN,      /* from ended; for the monitor msg.ref (becomes AR_MSG_DOWN) */
    ENV_CALL_DONE, /* the call msg.ref needs no answer from the target any more */
};
enum {
    ENVF_LINK = 1u << 0,     /* ENV_EXIT: sent through a link */
    ENVF_RELEASED = 1u << 1, /* REPLY: the target itself answered; nothing to release */
    ENVF_STOP = 1u << 2,     /* ENV_EXIT from ar_node_stop: ends the process even if it
                                traps exits (terminate runs: a supervisor stops its tree) */
    ENVF_SYNC = 1u << 3,     /* REPLY: for an ar_call (dropped unless that call still waits) */
    ENVF_COUNTED = 1u << 4,  /* CAST/CALL: counted against the target's mailbox_limit */
    ENVF_OWED = 1u << 5,     /* a CALL its taker has not answered: held in its halves */
    ENVF_HANDED = 1u << 6,   /* a message a handler or ar_receive's caller holds now */
    ENVF_EVENT = 1u << 7,    /* an AR_MSG_EVENT counted in its subscription's buffer */
};

/* What a process holds of a link, a monitor, a call it owes or an ask it awaits: one
 * envelope each, kept in its halves table (halves.c) and keyed by msg.reply_to = {the
 * other pid, the ref}. The envelope is the signal the process owes when it ends (or
 * unlinks, demonitors): so an ending process sends every EXIT, DOWN and failed reply
 * without allocating anything. */
enum ar__half_kind {
    HALF_NONE,
    HALF_LINK,    /* linked with reply_to.pid; sent as the EXIT (or the UNLINK) */
    HALF_MONITOR, /* monitors reply_to.pid under reply_to.ref; sent as the DEMONITOR */
    HALF_WATCHED, /* reply_to.pid monitors it under reply_to.ref; sent as the DOWN */
    HALF_CALL,    /* took the CALL and owes reply_to an answer; sent as the failed reply */
    HALF_ASK,     /* asked reply_to.pid under reply_to.ref (ar_ask), awaits the REPLY; sent
                     as the CALL_DONE if the answer came from elsewhere (a timeout); freed,
                     not sent, when it ends */
};

typedef struct ar__env {
    struct ar__qnode q; /* must be first: the queue links envelopes through it (a halves
                           table chains them through it while they are held there) */
    uint64_t to_lo;     /* the pid this was sent to: a reused slot drops stale envelopes */
    uint8_t kind;       /* enum ar__env_kind */
    uint8_t flags;      /* ENVF_* */
    uint8_t half;       /* enum ar__half_kind while held in a halves table */
    uint8_t xflags;     /* marks of one subsystem's own messages (the registry's) */
    uint32_t cap;       /* payload bytes allocated (msg.len may say less) */
    ar_msg_t msg;
    /* payload bytes follow */
} ar__env_t;

/* An envelope a runtime-written behaviour sends itself or its peers (xflags): never
 * mistaken for a user's message of the same tag. */
#define AR__XF_INTERNAL 1u
/* A failed REPLY from a target whose bounded mailbox was full (a remote call's AR_EAGAIN). */
#define AR__XF_REFUSED 4u
/* A wake-up ref no wait ever has (refs start at 2): its ENV_WAKE is a tick for the
 * running behaviour, an internal AR_MSG_TIMER (tag AR__TICK_TAG) rather than a wait's end. */
#define AR__REF_TICK ((ar_ref_t)1)
#define AR__TICK_TAG 1u

/* A message's header and the common small payload (one 64-bit term) fill exactly one
 * block of the smallest pool class: most messages cost one pooled block. */
_Static_assert(sizeof(ar__env_t) + sizeof(uint64_t) <= AR__POOL_SMALL,
               "an envelope header and a small payload fit the smallest pool class");
static inline void *ar__env_payload(ar__env_t *e) { return (void *)(e + 1); }
ar__env_t *ar__env_new(size_t len);
/* Two envelopes at once, or neither (AR_ENOMEM): the two halves a link or monitor needs. */
int ar__env_new_pair(ar__env_t **a, ar__env_t **b);
void ar__env_free(ar__env_t *e);
static inline void ar__env_free_on(struct ar__sched *s, ar__env_t *e);
/* Turns e into a signal of `kind` from `from` with ref and reason, keeping its memory; a
 * reason text that does not fit moves it to a larger envelope (if there is no memory for
 * one, the code stays exact and the text says it was lost). Returns the envelope to send. */
ar__env_t *ar__env_recycle(ar__env_t *e, int kind, ar_pid_t from, ar_ref_t ref, ar_reason_t why);
/* The same as a failed REPLY to the call reply_to.ref (a normal end reads AR_NOPROC). */
ar__env_t *ar__env_recycle_reply(ar__env_t *e, ar_pid_t from, ar_reply_to_t to, ar_reason_t why);
int ar__check_payload(struct ar_node *node, const void *data, size_t len);
int ar__send_msg(struct ar_node *node, ar_pid_t to, ar_msg_kind_t kind, uint32_t tag,
                 const void *data, size_t len, ar_reply_to_t reply_to);

/* ---- Routing (route.c): the one way to a pid ---------------------------------------- */
/* Hands e to the process at `to`: 0 once it is queued there (the target acts on it, or
 * answers it as it ends); AR_ENOPROC when `to` is dead, unknown or unreachable, and then e
 * was not queued and is still the caller's; AR_EAGAIN for a counted CAST/CALL over the
 * target's mailbox_limit (e is still the caller's). A pid of another node goes to the
 * distribution layer (ar__dist_route). */
int ar__route(struct ar_node *node, ar_pid_t to, ar__env_t *e);
static inline int ar__route_on(struct ar__sched *s, struct ar_node *node, ar_pid_t to,
                               ar__env_t *e);
/* The rare end of a route: the push found the mailbox dead. */
int ar__route_dead(struct ar_node *node, struct ar_proc *p, ar__env_t *e);
/* True when `to` is a local pid known to be dead now: a hint that spares work (a
 * monitor's reservation); false says nothing, and only ar__route decides. */
bool ar__route_known_dead(struct ar_node *node, ar_pid_t to);
/* ar__route for an envelope nobody waits on: an unroutable one is a dead letter. */
void ar__route_or_dead_letter(struct ar_node *node, ar_pid_t to, ar__env_t *e);
/* ar__dead_letter for a target given whole (a remote pid, which no struct stands for). */
void ar__dead_letter_from(struct ar_node *node, ar_pid_t dead, ar__env_t *e, ar_reason_t why);

/* ---- Distribution (dist/): the pids of other nodes ------------------------------------ */
/* The route of a pid whose node part is not this node's: 0 once it is queued for its
 * peer, or answered as a dead letter with AR_NOCONNECTION (a node this one cannot reach);
 * AR_ENOPROC for a pid of an earlier run (e is still the caller's); AR_EAGAIN for a
 * CAST or CALL beyond dist_queue_limit. Any thread. */
int ar__dist_route(struct ar_node *node, ar_pid_t to, ar__env_t *e);
/* A pid of an earlier run of a node this one knows: dead for sure. */
bool ar__dist_known_dead(struct ar_node *node, ar_pid_t to);
int ar__dist_start(struct ar_node *node);  /* after the I/O thread: listen, ticks */
void ar__dist_stop(struct ar_node *node);  /* once processes are gone: connections close */
void ar__dist_free(struct ar_node *node);  /* after the I/O thread stopped */
/* Node names: 1 to AR_NODE_NAME_MAX - 1 bytes of [A-Za-z0-9_@-] (dist/wire.c). */
bool ar__node_name_valid(const char *name, size_t len);
/* A named node's id, from its name: every node computes the same (dist/peers.c). */
uint32_t ar__node_id_of(const char *name);
/* The node names this OS process knows (its nodes', their peers'), for ar_pid_format. */
void ar__node_names_note(uint32_t id, const char *name);
bool ar__node_name_of(uint32_t id, char *out, size_t n);

/* Answers an envelope whose target ended: a LINK becomes the linker's EXIT, a MONITOR
 * the watcher's DOWN, a CALL the caller's failed reply, each with why; the rest is
 * dropped (messages counted). p: the struct it was queued in (its counts are given back). */
void ar__dead_letter(struct ar_node *node, struct ar_proc *p, ar__env_t *e, ar_reason_t why);

/* ---- Halves (halves.c): links, monitors, owed calls and asks of one process --------- */
/* An intrusive chained hash table of held envelopes: putting never allocates (a bucket
 * array that cannot grow only makes chains longer), so admitting a LINK or a MONITOR
 * never fails. Owner-only, like the rest of a process's state. */
typedef struct ar__halves {
    union {
        ar__env_t **b;  /* the buckets, once there are more than one */
        ar__env_t *one; /* mask 0: the one chain (a few halves need no array at all) */
    };
    uint32_t mask; /* buckets - 1 */
    uint32_t n;
} ar__halves_t;
void ar__halves_init(ar__halves_t *t);
/* Holds e as a half of `kind` keyed by {peer, ref}. */
void ar__half_put(struct ar_proc *p, ar__env_t *e, enum ar__half_kind kind, ar_pid_t peer,
                  ar_ref_t ref);
/* Takes out the half of `kind` with {peer, ref} (HALF_MONITOR, HALF_ASK: by ref alone);
 * NULL: none. */
ar__env_t *ar__half_take(struct ar_proc *p, enum ar__half_kind kind, ar_pid_t peer,
                         ar_ref_t ref);
bool ar__half_has(struct ar_proc *p, enum ar__half_kind kind, ar_pid_t peer, ar_ref_t ref);
/* Takes out every half, as a list linked through q.next; the table is empty after. */
ar__env_t *ar__halves_take_all(struct ar_proc *p);

/* ---- Stacks and contexts (stack.c, ctx_*.S) ---------------------------------------- */
/* An unwind point on a handler stack: crashes longjmp to the innermost one. Each loop
 * stack has one at its bottom (for handlers); init and terminate push their own. */
struct ar__catch {
    struct ar__catch *prev;
    struct ar__stack *st;
    void *jb[5];
};
typedef struct ar__stack {
    struct ar__stack *next_free;
    char *guard;  /* its guard page, just below base */
    char *base;   /* lowest usable byte */
    size_t size;  /* usable bytes */
    size_t map_len; /* a mapping of its own from guard on; 0: part of a chunk */
    void *sp;     /* saved stack pointer while switched out */
#ifdef AR__CTX_UCONTEXT
    ucontext_t uc; /* the saved context, in the portable fallback */
    void (*entry_fn)(void *);
    void *entry_arg;
#endif
    struct ar__catch *catch_top;
    void *san_fiber;   /* TSan fiber of this stack */
    unsigned san_uses; /* reuses since the fiber was made */
} ar__stack_t;

/* ctx_*.S: saves the callee-saved registers on the current stack, stores the stack
 * pointer in *save_sp, and continues on new_sp. */
void ar__ctx_switch(void **save_sp, void *new_sp);
void ar__stack_prepare(ar__stack_t *st, void (*fn)(void *), void *arg);
ar__stack_t *ar__stack_get(struct ar__sched *s);
void ar__stack_put(struct ar__sched *s, ar__stack_t *st);
void ar__stack_destroy(ar__stack_t *st);
void ar__stacks_destroy(struct ar_node *node); /* the node's free stacks and chunks */
void ar__stack_unpoison_below(ar__stack_t *st, const void *addr);
/* Switches from the running stack `from` (its context saved there; NULL: abandoned for
 * good) to `to`, with the sanitizer fiber annotations; ar__switch_done runs first thing
 * on the other side. */
void ar__switch(ar__stack_t *from, ar__stack_t *to);
void ar__switch_done(struct ar__sched *s);
void ar__switch_native_init(struct ar__sched *s);
int ar__stack_signals_init(void);
int ar__sched_altstack_init(struct ar__sched *s);
void ar__sched_altstack_destroy(struct ar__sched *s);

/* ---- Processes (proc.c) ------------------------------------------------------------- */
enum {
    P_STOP = 1u << 0,     /* ar_stop called: end after this handler */
    P_EXITING = 1u << 1,  /* a fatal signal arrived: unwind at the next safe point */
    P_STARTING = 1u << 2, /* spawned from a foreign thread: init not run yet */
    P_FOREIGN = 1u << 3,  /* a foreign thread's waiter (waiter.c), not a process */
    P_TOPLEVEL = 1u << 4, /* spawned from outside any process */
    P_OVERFLOW = 1u << 5, /* its stack overflowed: ends with "stack overflow" */
    P_TERMINATING = 1u << 6, /* in its exit path: terminate may block; the reason is final */
    P_REASON_LOST = 1u << 7, /* its reason's text could not be copied (out of memory) */
    P_EVENTS = 1u << 16,      /* it subscribed to events: the exit sequence unsubscribes it */
    P_INIT_FAILED = 1u << 17, /* its init failed: the exit sequence reports START_FAILED */
};

#define MB_EMPTY ((uintptr_t)1)
#define MB_DEAD ((uintptr_t)2)
#define MB_BITS ((uintptr_t)3)

struct ar__timer;
/* sem.c: a semaphore whose wake-up carries a C11 happens-before edge. */
typedef struct ar__sem {
    sem_t sem;
    _Atomic unsigned posts;
} ar__sem_t;
void ar__sem_init(ar__sem_t *s);
void ar__sem_destroy(ar__sem_t *s);
void ar__sem_post(ar__sem_t *s);
struct timespec;
bool ar__sem_wait(ar__sem_t *s, const struct timespec *deadline); /* false: timed out */

struct ar__spawn_wait {
    ar__sem_t sem;
    void *arg;
    int rc;
    ar__env_t *notify; /* an asynchronous start: sent to notify_to with the result instead */
    ar_pid_t notify_to;
};

/* What a spawn on another's behalf sets before init runs (the registry's entries). */
struct ar__spawn_extra {
    ar_pid_t parent;      /* shown as its parent; never a top-level process */
    ar__env_t *exit_note; /* an internal (AR__XF_INTERNAL) envelope, held as a watched half:
                             when it ends after a successful start, note_to gets it as an
                             AR_MSG_DOWN (ref: note_ref, reason: the code alone), with no
                             monitor of its own; dropped if the start fails */
    ar_pid_t note_to;
    ar_ref_t note_ref;
};
/* Spawns b as the calling process or thread would, but as x says; init runs here, in the
 * caller's turn (or its thread waits). x->exit_note is the spawn's, whatever the result. */
int ar__spawn_keyed(struct ar_node *node, const ar_behaviour_t *b, void *arg,
                    const struct ar__spawn_extra *x, ar_pid_t *out);
/* The same, but returns at once (pid in *out): init runs in the child's own first turn,
 * and notify goes to notify_to when it is done (from: the child; the result, an int,
 * written at the start of its payload). */
int ar__spawn_async(struct ar_node *node, const ar_behaviour_t *b, void *arg,
                    const struct ar__spawn_extra *x, ar__env_t *notify, ar_pid_t notify_to,
                    ar_pid_t *out);
/* A handler keeps the message it is handling: the envelope is the caller's from here
 * (held halves and the mailbox's counts are settled). Not for a CALL. */
ar__env_t *ar__msg_keep(ar_proc_t *self, const ar_msg_t *m);

/* The first cache line is written by senders (the outer queue's producer end and the
 * counts beside it); the rest only by the thread running the process (its "owner"), but
 * for the relaxed atomics introspection reads. The union sizes the senders' line, so the
 * compiler, not a hand count, pads it. (Slots are not rounded up to whole lines: an idle
 * process costs its bytes, and an owner's last line may share one with the next slot's
 * senders.) */
struct ar_proc {
    union {
        struct { /* --- written by senders --- */
            _Atomic uintptr_t head;         /* outer queue producer end | MB_EMPTY | MB_DEAD */
            _Atomic uint32_t pushed;        /* CAST/CALL ever queued (wraps); minus consumed */
            _Atomic uint32_t mailbox_limit; /* 0: unbounded; read by senders, maybe stale */
            _Atomic uint64_t pid_lo;        /* current occupant's pid (serial|index); 0: free */
            struct ar__qnode stub;          /* the outer queue's resting node */
            _Atomic uint32_t signals;       /* signals (not messages) ever pushed (wraps) */
        };
        char senders_line_[AR__CACHE_LINE];
    };
    /* --- owner only (the thread running the process), unless atomic --- */
    struct ar__qnode *tail;       /* outer queue consumer end */
    ar__env_t *inner_head, *inner_tail; /* fetched, not yet handled, in arrival order */
    _Atomic(const ar_behaviour_t *) b;
    void *state;                  /* P_FOREIGN: the waiting thread's ar__sem_t */
    struct ar_node *node;
    _Atomic uint64_t parent_lo;   /* a parent is always local */
    ar__stack_t *stack;           /* the stack it holds while running or parked */
    struct ar_proc *link;         /* run queue / free list link */
    _Atomic uint64_t handled;
    _Atomic uint32_t consumed;    /* CAST/CALL taken off the mailbox; written by its consumer */
    uint32_t signals_seen;        /* signals its consumer has fetched: != signals: some wait */
    struct ar__proc_ext *ext;     /* rarely used parts, allocated on demand */
    ar_ref_t wait_ref;            /* the blocking call waits for this ref; 0: none */
    struct ar__timer *wait_timer; /* its timeout, cancelled if the process ends waiting */
    ar__env_t *handling;          /* the envelope its handler has (freed if it crashes) */
    ar__halves_t halves;          /* its links, monitors both ways, calls it owes, asks */
    uint32_t index;               /* its slot in the table (fixed) */
    uint32_t serial;              /* serial of the slot's latest occupant */
    _Atomic uint32_t flags;       /* P_*; atomic for introspection */
    _Atomic uint8_t blocked;      /* parked in call, receive or sleep */
    uint8_t parked;               /* its context is saved on its stack */
    uint8_t reason_code;          /* why it ends (ar_exit_code_t); text, if any, in ext */
    _Atomic uint8_t trap_exit;
    /* how many halves of each kind it holds, mirrored for ar_proc_info (other threads) */
    _Atomic uint32_t nlinks, nmonitors, nmonitored_by;
    _Atomic(struct ar__name *) name; /* its registered name (names.c), or a marker */
};
/* An idle process with no state costs one slot, under four cache lines. */
#define AR__PROC_MAX_BYTES 240
_Static_assert(sizeof(struct ar_proc) <= AR__PROC_MAX_BYTES, "an idle process fits 240 bytes");
_Static_assert(offsetof(struct ar_proc, tail) == AR__CACHE_LINE,
               "the senders' fields fill exactly the first cache line");

/* Rare per-process data: exit reason, owned timers, spawn handshake. (Pending asks are
 * halves.) */
struct ar__proc_ext {
    char *reason_text;           /* why it ends, when there is a text */
    ar_ref_t *timers;            /* refs of timers it set (cancelled at exit) */
    size_t ntimers, timers_cap;
    struct ar__spawn_wait *spawn_wait; /* foreign spawn: whom to tell init's result */
};

struct ar__proc_ext *ar__proc_ext(ar_proc_t *p); /* NULL on OOM */
/* The live local process at pid, or NULL: for introspection only; every send and signal
 * goes through ar__route, which owns the meaning of "no such process". (Defined below.) */
static inline ar_proc_t *ar__proc_lookup(struct ar_node *node, ar_pid_t pid);
static inline ar_pid_t ar__proc_pid(const struct ar_proc *p);
ar_proc_t *ar__proc_alloc(struct ar_node *node);   /* a free slot with a fresh serial */
void ar__proc_release(ar_proc_t *p);               /* slot back to the free lists */
/* Ends p: runs its terminate (once, caught), then the exit sequence. */
void ar__proc_exit(ar_proc_t *p, ar_reason_t why);
void ar__proc_set_reason(ar_proc_t *p, ar_reason_t why);
/* A message is handed to a handler or to ar_receive's caller: counted; a CALL is now
 * owed (held in the halves until it is answered, released or the process ends). */
void ar__msg_taken(ar_proc_t *p, ar__env_t *e);
void ar__msg_taken_on(struct ar__sched *s, ar_proc_t *p, ar__env_t *e);
/* The handler (or ar_msg_release) is done with e: freed, unless it is an owed CALL. */
static inline void ar__msg_done(struct ar__sched *s, ar__env_t *e);
/* Runs a turn of p on the current scheduler. */
void ar__proc_run(ar_proc_t *p);
/* Fetches the outer queue into the inner queue, acting on signals as they come. */
void ar__proc_fetch(ar_proc_t *p);
/* Unlinks and returns the first inner envelope for which pred holds; NULL if none. */
ar__env_t *ar__inner_take(ar_proc_t *p, bool (*pred)(ar__env_t *, void *), void *ud);
_Noreturn void ar__proc_unwind(ar_proc_t *p);
void ar__proc_crashed(void); /* the loop's catch frame caught the running process */
void ar__proc_table_destroy(struct ar_node *node);
int ar__proc_table_init(struct ar_node *node);

extern _Thread_local ar_proc_t *ar__tls_proc;  /* process whose code runs on this thread */
ar_proc_t *ar__current_proc(void);            /* noinline: safe across migrations */
/* self, when it is the process whose handler runs on this thread (the functions taking
 * `ar_proc_t *self`); else NULL. Defined below. */
static inline ar_proc_t *ar__self_ok(ar_proc_t *self);

/* ---- The exit sequence (exit.c) ------------------------------------------------------ */
enum ar__end {
    END_EXITED,       /* a started process, after its terminate: everyone learns why */
    END_START_FAILED, /* init failed: as if it never was (links undone, monitors AR_NOPROC) */
    END_WAITER,       /* a foreign thread's waiter retires: it ends as AR_NOPROC */
};
/* Every ending runs these steps, in this order: release what the process owns, release
 * its name, unpublish its pid, notify its links, monitors and callers and answer what is
 * queued, emit its exit event, free the slot. Later features add their step here. */
void ar__exit_sequence(ar_proc_t *p, ar_reason_t why, enum ar__end how);

/* ---- Waiters (waiter.c): a foreign thread's stand-in process ------------------------ */
/* A process slot (P_FOREIGN) whose mailbox wakes a thread that is not a scheduler: what
 * a foreign ar_call and ar_node_stop wait in. Its pid can be linked to and monitored like
 * any other; closing it runs the exit sequence. */
typedef struct ar__waiter {
    ar_proc_t *p;
    ar__sem_t sem;
} ar__waiter_t;
int ar__waiter_open(struct ar_node *node, ar__waiter_t *w); /* AR_ENOMEM */
/* Waits until pred accepts an envelope of the waiter's; NULL when the deadline passed
 * (NULL deadline: none). */
ar__env_t *ar__waiter_wait(ar__waiter_t *w, bool (*pred)(ar__env_t *, void *), void *ud,
                           const struct timespec *deadline);
void ar__waiter_close(ar__waiter_t *w);

/* ---- Blocking in a process (receive.c) ------------------------------------------------ */
/* Waits until pred accepts an envelope of p's and returns it, unlinked; a fatal signal
 * unwinds p. NULL when p cannot park (no stack can be had): the wait fails AR_ENOMEM. */
ar__env_t *ar__wait(ar_proc_t *p, bool (*pred)(ar__env_t *, void *), void *ud);
/* ar_receive; internal: of the runtime's own messages (AR__XF_INTERNAL), which a user's
 * ar_receive never sees (a registry entry's user code must not take its reap request). */
int ar__receive(ar_proc_t *self, bool (*match)(const ar_msg_t *m, void *ud), void *ud,
                int timeout_ms, ar_msg_t **out, bool internal);
/* Arms a wake-up for p's current wait (p->wait_ref) after ms; NULL on out of memory. */
struct ar__timer *ar__wake_after(ar_proc_t *p, int ms);
/* Ends a wait: its wake-up can no longer arrive unseen (a fired one is dropped). */
void ar__wait_done(ar_proc_t *p, struct ar__timer *t);
/* Ends the wait a fatal signal unwound p out of, if any: before terminate, whose own
 * waits would take its place, and again as p ends. */
void ar__wait_abandon(ar_proc_t *p);

/* ---- Mailbox (mailbox.c) ------------------------------------------------------------ */
void ar__mb_init(ar_proc_t *p, uintptr_t bits);
/* Pushes; returns the tag bits the push found (MB_EMPTY: schedule; MB_DEAD: drain). */
uintptr_t ar__mb_push(ar_proc_t *p, ar__env_t *e);
ar__env_t *ar__mb_pop(ar_proc_t *p); /* consumer only; NULL if nothing (now) */
/* Consumer gives up the queue: marks it with bits if it is empty. false: not empty. */
bool ar__mb_try_mark(ar_proc_t *p, uintptr_t bits);
bool ar__mb_has_more(ar_proc_t *p);
/* The consumer of a dead queue answers everything in it as dead letters (with why) until
 * it rests marked dead; `keep` (if it is found) is handed back instead: true if it was. */
bool ar__mb_drain_dead(struct ar_node *node, ar_proc_t *p, ar__env_t *keep, ar_reason_t why);
void ar__inner_append(ar_proc_t *p, ar__env_t *e);
void ar__consumed(ar_proc_t *p); /* a counted CAST/CALL left the mailbox */
/* The consumer takes e out of the mailbox unhandled: gives back the counts it took. */
void ar__mb_unqueue(ar_proc_t *p, ar__env_t *e);

/* ---- Signals (signal.c) -------------------------------------------------------------- */
/* Acts on a fetched signal envelope (ENV_EXIT .. ENV_CALL_DONE), taking it: returns it
 * turned into a message (AR_MSG_EXIT, AR_MSG_DOWN) for the process to see, or NULL (it
 * was freed, or is now held as a half). */
ar__env_t *ar__signal_admit(ar_proc_t *p, ar__env_t *e);
/* Monitors target for p (the running process, or a waiter on its own thread): the
 * monitor's DOWN is reserved now, so only this can fail (AR_ENOMEM), never the DOWN. */
int ar__monitor(ar_proc_t *p, ar_pid_t target, ar_ref_t *ref);
/* Sends an exit signal (text copied): 0, AR_ENOPROC (dead target), AR_ENOMEM. */
int ar__send_exit(struct ar_node *node, ar_pid_t from, ar_pid_t to, ar_reason_t why,
                  uint8_t flags);
/* Tells `to` that the call ref needs no answer any more (best effort: without memory for
 * it, the callee holds the call until it answers or ends, and the answer is dropped). */
void ar__call_done(struct ar_node *node, ar_pid_t self, ar_pid_t to, ar_ref_t ref);

/* ---- Schedulers (sched.c) ----------------------------------------------------------- */
/* Slots of a scheduler's run queue (a power of two); more runnable processes than that
 * overflow to the node's inject queue. A thief takes at most half. */
#define AR__RUNQ_SLOTS 256
struct ar__runq {
    _Atomic uint32_t head; /* taken by the owner and by thieves */
    _Alignas(AR__CACHE_LINE) _Atomic uint32_t tail; /* written by the owner only */
    _Atomic(ar_proc_t *) buf[AR__RUNQ_SLOTS];
};
_Static_assert((AR__RUNQ_SLOTS & (AR__RUNQ_SLOTS - 1)) == 0, "run queue slots: a power of two");

struct ar__wheel;
/* Node counters (ar_node_stats): each scheduler counts its own share with plain relaxed
 * stores; foreign threads add to the node's share atomically. */
enum { AR__SENT, AR__DELIVERED, AR__DROPPED, AR__SPAWNED, AR__EXITED, AR__NCOUNTS };
typedef struct ar__sched {
    struct ar__runq rq;
    struct ar_node *node;
    unsigned id;
    ar_proc_t *next;            /* the process woken last by this scheduler: runs next */
    unsigned next_streak;       /* consecutive runs from `next` (fairness bound) */
    unsigned ticks;             /* loop iterations, for periodic checks */
    bool long_turn;             /* a turn ran out of time: do the periodic checks now */
    struct ar__pool_cache cache;
    ar__stack_t *stacks;        /* local free stacks */
    unsigned nstacks;
    ar_proc_t *free_procs;      /* local free process slots */
    unsigned nfree_procs;
    ar__stack_t *release_stack; /* to pool after the next switch completes */
    ar_proc_t *park_proc;       /* to finish parking after the next switch completes */
    ar__stack_t *cur_stack;     /* the stack this thread runs on now */
    ar__stack_t native;         /* the thread's own stack, returned to at shutdown */
    void *alloc_base;
    bool started;
    struct ar__wheel *wheel;
    ar__sem_t sem;              /* parked here */
    bool parked;                /* in the node's idle list (under idle_lock) */
    pthread_t thread;
    void *altstack;
    void *san_native_fiber;
    _Atomic uint64_t counts[AR__NCOUNTS]; /* the owner's share of the node's counters */
} ar__sched_t;

/* A process may park on one thread and resume on another, so a frame that spans a park
 * must not reuse a thread-local address computed before it (compilers may, especially
 * in -fPIC code). Read the thread's scheduler and process only through these noinline
 * accessors; the variables themselves are touched by sched.c alone. */
extern _Thread_local ar__sched_t *ar__tls_sched;
ar__sched_t *ar__current_sched(void);
/* Makes p runnable: on the calling scheduler's `next` slot when the caller is one of the
 * node's schedulers, else on the node's inject queue (waking a parked scheduler). */
void ar__schedule(struct ar_node *node, ar_proc_t *p);
void ar__schedule_on(ar__sched_t *s, struct ar_node *node, ar_proc_t *p); /* s: the caller's */
/* After a push reported MB_EMPTY (ar__route drains a dead one itself): schedule the
 * process, or wake the foreign thread its waiter stands for. */
void ar__after_push_on(ar__sched_t *s, struct ar_node *node, ar_proc_t *p, uintptr_t bits);
/* Parks the calling process until its mailbox gets something (or it must exit); false
 * when no stack could be had for the scheduler to go on with (nothing changed). */
bool ar__park(ar_proc_t *p);
_Noreturn void ar__resume(ar_proc_t *p);
void ar__requeue(ar_proc_t *p);        /* back on a run queue, after others */
void ar__set_current_proc(ar_proc_t *p);
void ar__sched_free(struct ar_node *node);
int ar__sched_start(struct ar_node *node);
void ar__sched_stop(struct ar_node *node);
void ar__sched_wake(ar__sched_t *s);

/* The pools' fast paths: the smallest class from the scheduler's own cache. */
static inline void *ar__pool_alloc_on(ar__sched_t *s, size_t size)
{
    if (s && size <= AR__POOL_SMALL && s->cache.free[0]) {
        void *b = s->cache.free[0];
        s->cache.free[0] = *(void **)b;
        s->cache.count[0]--;
        return b;
    }
    return ar__pool_alloc_slow(s, size);
}
static inline void ar__pool_free_on(ar__sched_t *s, void *p, size_t size)
{
    if (p && s && size <= AR__POOL_SMALL && s->cache.count[0] < s->cache.max) {
        *(void **)p = s->cache.free[0];
        s->cache.free[0] = p;
        s->cache.count[0]++;
        return;
    }
    ar__pool_free_slow(s, p, size);
}

/* ---- Timers (timer.c) --------------------------------------------------------------- */
typedef struct ar__timer ar__timer_t;
/* Arms a timer delivering e to `to` after ms (owner: the process it belongs to, or 0). */
ar__timer_t *ar__timer_start(struct ar_node *node, int ms, ar_pid_t to, ar__env_t *e,
                             ar_ref_t ref);
/* Arms a wait's timeout: an ENV_WAKE carrying wake_ref, made only if it fires. */
ar__timer_t *ar__timer_start_wake(struct ar_node *node, int ms, ar_pid_t to, ar_ref_t wake_ref);
/* true if it was pending and will never fire; false if it fired or was cancelled. */
bool ar__timer_cancel(struct ar_node *node, ar__timer_t *t);
int ar__wheel_init(ar__sched_t *s);
void ar__wheel_destroy(ar__sched_t *s);
/* Fires what is due; returns ms until the next timer (-1: none). */
int ar__wheel_run(ar__sched_t *s);
bool ar__wheel_pending(ar__sched_t *s);
int ar__timers_init(struct ar_node *node);
void ar__timers_destroy(struct ar_node *node);
void ar__proc_cancel_timers(ar_proc_t *p);
uint64_t ar__now_ms(const struct ar_node *node);

/* ---- Node (node.c) ------------------------------------------------------------------ */
#define AR__MAX_CHUNKS 16384
#define AR__CHUNK_PROCS 4096

struct ar__proc_table {
    ar_proc_t *_Atomic chunks[AR__MAX_CHUNKS];
    _Atomic uint32_t nchunks;
    uint32_t next_fresh;        /* next never-used index (under lock) */
    pthread_mutex_t lock;       /* growth and the global free list */
    ar_proc_t *free;            /* global free list (batches from schedulers) */
    size_t nfree;
};

/* Lock order. The runtime's mutexes never nest, but for these pairs, taken only in this
 * order: top_lock, then a process table lookup (lock-free); ptab.lock, then nothing;
 * inject_lock, idle_lock, exit_lock, stack_lock, depot.lock and the timer map's lock are
 * leaves, held for a few instructions with no call that could take another. Nothing is
 * ever held across a context switch, a park, or a call into user code. */
struct ar_node {
    ar_node_config_t cfg;
    uint64_t pid_hi;
    unsigned nsched;
    ar__sched_t **sched;
    _Atomic uint32_t events_mask; /* kinds some subscriber wants (events.c); read-mostly */
    struct ar__events *events;
    struct ar__proc_table ptab;
    struct ar__depot depot;
    _Atomic uint64_t next_ref;
    _Atomic int stopping;       /* ar_node_stop began: nothing new starts */
    _Atomic int shutdown;       /* scheduler threads leave */
    _Atomic int stop_requested;
    ar__sem_t stop_sem;         /* ar_node_wait */
    /* inject queue: runnable processes from foreign threads (and overflow) */
    pthread_mutex_t inject_lock;
    ar_proc_t *inject_head, *inject_tail;
    _Atomic size_t inject_len;
    /* parking */
    pthread_mutex_t idle_lock;
    ar__sched_t **idle;
    unsigned nidle;
    _Atomic unsigned nparked, nspinning;
    /* top-level processes in spawn order (for the ordered stop) */
    pthread_mutex_t top_lock;
    uint64_t *top, *top_snap;  /* top_snap: room for the stop's copy, reserved with each */
    size_t ntop, top_cap, top_reserved; /* reserved: places held by spawns in progress */
    /* the last exit, for ar_node_stop to wait on */
    pthread_mutex_t exit_lock;
    pthread_cond_t exit_cond;
    _Atomic int exit_waiters;
    /* calls from threads that are not the node's: ar_node_stop frees nothing under them */
    _Atomic uint64_t outside;
    ar__sem_t outside_sem;
    _Atomic uint64_t counts[AR__NCOUNTS]; /* foreign threads' share of the counters */
    _Atomic uint64_t live;      /* processes alive */
    struct ar__timers *timers;
    struct ar__loop *loop;
    struct ar__dist *dist;      /* distribution (dist/); NULL for a node without a name */
    struct ar__sockets *sockets; /* process-owned sockets (socket.c) */
    uint64_t start_ns;
    size_t stack_size;
    struct cds_lfht *names;     /* registered names: name -> pid (names.c) */
    pthread_mutex_t registries_lock;
    struct ar_registry *registries; /* every registry started, until the node stops */
    uint64_t hash_seed;         /* of every table keyed by outside data */
    uint64_t spin_ns;
    pthread_mutex_t stack_lock; /* node-wide free stacks and the chunks they come from */
    ar__stack_t *stacks;
    struct ar__stack_chunk *stack_chunks;
    char *chunk_next;           /* the newest chunk's next stack */
    size_t chunk_left;
};

ar_ref_t ar__make_ref(struct ar_node *node);
/* A process ended (or its start failed): one fewer alive; the last wakes ar_node_stop. */
void ar__note_exit(struct ar_node *node);
/* Around a public call that may come from a thread that is not one of the node's: the
 * node is not freed while such a call runs. Returns whether it counted (call leave then). */
bool ar__outside_enter(struct ar_node *node);
void ar__outside_leave(struct ar_node *node);
uint64_t ar__now_ns(void);
bool ar__timeout_ok(int timeout_ms);

/* ---- Calls (call.c) ------------------------------------------------------------------ */
/* A call whose CALL push makes and routes, with reply_to rt (the registry's calls): push
 * returns 0 once it is on its way (*to: the pid it went to, or AR_PID_NONE if it is held
 * for a process yet to come), 1 if it answered into its ctx at once (no wait), or an
 * error. Then the caller waits for the reply as ar_call does. */
typedef int (*ar__call_push_fn)(void *ctx, ar_reply_to_t rt, ar_pid_t *to);
int ar__call_with(struct ar_node *node, ar__call_push_fn push, void *ctx, ar_buf_t *reply,
                  int timeout_ms);
/* p fetched a REPLY to an ask (an even ref): true if it is the ask's one answer, which
 * settles the ask (its timer cancelled; its target told it owes nothing, unless the target
 * answered itself); false if the ask was settled already (a timeout came first): drop it.
 * Allocates nothing. */
bool ar__ask_answered(ar_proc_t *p, const ar__env_t *reply);
/* An ask still pending when its process ends (h: its HALF_ASK half, taken out): its timer
 * is cancelled and h freed; nothing is sent, a late answer finds the asker gone. Allocates
 * nothing. */
void ar__ask_drop(struct ar_node *node, ar__env_t *h);

/* ---- RCU and lock-free tables (rcu.c) ------------------------------------------------ */
/* Read-side sections around every lookup of a cds_lfht (never spanning a park). */
void ar__rcu_read_lock(void);
void ar__rcu_read_unlock(void);
/* Under ThreadSanitizer, the edges liburcu gives but TSan cannot see: call published on a
 * node before adding it, seen on a node a lookup found, reclaimed first in every call_rcu
 * callback. Nothing otherwise. */
#if defined(__SANITIZE_THREAD__)
void ar__rcu_published(void *obj);
void ar__rcu_seen(void *obj);
void ar__rcu_callback_done(void);
#else
static inline void ar__rcu_published(void *obj) { (void)obj; }
static inline void ar__rcu_seen(void *obj) { (void)obj; }
static inline void ar__rcu_callback_done(void) {}
#endif
void ar__rcu_reclaimed(struct rcu_head *h);
/* fn(h) after a grace period, on liburcu's call_rcu thread: it must not touch a node.
 * fn calls ar__rcu_reclaimed(h) first and ar__rcu_callback_done() last (which an
 * ar__rcu_barrier then waits for, as far as TSan can tell). */
void ar__rcu_call(struct rcu_head *h, void (*fn)(struct rcu_head *));
void ar__rcu_synchronize(void); /* not inside a read-side section */
void ar__rcu_barrier(void);     /* every ar__rcu_call so far has run */
struct cds_lfht *ar__lfht_new(unsigned long initial);
void ar__lfht_destroy(struct cds_lfht *t); /* empty, no reader left */
unsigned long ar__hash(const void *data, size_t len, uint64_t seed);

/* ---- Names (names.c) ---------------------------------------------------------------- */
/* A process's name pointer is NULL (none), a name, or one of these markers. */
#define AR__NAME_CLAIMING ((struct ar__name *)1) /* a registration is in progress */
#define AR__NAME_ENDED ((struct ar__name *)2)    /* ending: it takes no name any more */
bool ar__name_valid(const char *name); /* 1 to AR_NAME_MAX - 1 bytes */
int ar__names_init(struct ar_node *node);
void ar__names_destroy(struct ar_node *node);
/* Gives a process being spawned (not yet running, its name pointer set to CLAIMING
 * before it was published) its name: AR_EEXIST, AR_ENOMEM. */
int ar__names_claim(ar_proc_t *p, ar_pid_t pid, const char *name);
/* The exit sequence's step 2: frees p's name for others; copies it into out (AR_NAME_MAX
 * bytes; "" if it had none). Most processes have none: one compare-and-swap, inline. */
void ar__names_release_held(ar_proc_t *p, char *out);
static inline void ar__names_release(ar_proc_t *p, char *out)
{
    struct ar__name *none = NULL;
    out[0] = '\0';
    if (!atomic_compare_exchange_strong_explicit(&p->name, &none, AR__NAME_ENDED,
                                                 memory_order_acq_rel, memory_order_acquire))
        ar__names_release_held(p, out);
}
/* Copies p's name into out ("" if none); false if it has none. Any thread. */
bool ar__names_of(ar_proc_t *p, char *out);

/* ---- Keyed registries (registry*.c) --------------------------------------------------- */
/* Frees what is left of every registry (their processes have ended). */
void ar__registries_release(struct ar_node *node);

/* ---- I/O thread (loop.c) ------------------------------------------------------------ */
struct uv_loop_s;
/* Work for the I/O thread: run is called there, once, with its libuv loop; commands one
 * thread submits run in the order it submitted them. The submitter owns the memory until
 * run is called (run frees it if it must). */
typedef struct ar__io_cmd {
    struct ar__qnode q; /* must be first: the inbox links commands through it */
    void (*run)(struct ar__io_cmd *cmd, struct uv_loop_s *loop);
} ar__io_cmd_t;
/* From any thread, lock-free; never fails. Not once ar_node_stop has stopped the loop. */
void ar__io_submit(struct ar_node *node, ar__io_cmd_t *cmd);
int ar__loop_start(struct ar_node *node);
void ar__loop_stop(struct ar_node *node);

/* ---- Addresses (addr.c) -------------------------------------------------------------- */
struct sockaddr_storage;
/* "host:port" (numeric, or localhost; [v6]:port) into ss: AR_EINVAL. Any thread. */
int ar__addr_parse(const char *addr, struct sockaddr_storage *ss);
/* ss as "host:port" ("[v6]:port"), cut to n bytes. */
void ar__addr_format(const struct sockaddr_storage *ss, char *out, size_t n);

/* ---- Sockets (socket.c, socket_io.c) -------------------------------------------------- */
struct ar__sockets;
int ar__sockets_init(struct ar_node *node);
/* Exit sequence, after the pid is unpublished: closes what p owns. */
void ar__sockets_release_owner(struct ar_node *node, ar_pid_t owner);
/* Node stop, once processes are gone and before the I/O thread stops: every socket closes. */
void ar__sockets_stop(struct ar_node *node);
void ar__sockets_free(struct ar_node *node); /* after the I/O thread stopped */

/* ---- Events (events.c) -------------------------------------------------------------- */
/* Internal kind bits beside the public AR_EV_* ones in the node's mask: */
#define AR__EV_EXIT_ABNORMAL (1u << 30) /* EXIT, but only with a code other than NORMAL and
                                           SHUTDOWN (the crash reports) */
#define AR__EV_PROC_SUBS (1u << 31)     /* some process subscribes: exits must look */
/* The exit sequence's hook runs when one of these is set. */
#define AR__EV_EXIT_HOOK (AR_EV_EXIT | AR_EV_START_FAILED | AR__EV_EXIT_ABNORMAL | AR__EV_PROC_SUBS)
/* Whether some subscriber wants one of kinds: the hooks on hot paths (spawn, exit, names)
 * do this one relaxed load and nothing else when nobody listens. A subscription that
 * happens-before the hook is seen by it (coherence); one made concurrently may miss it. */
static inline bool ar__events_wanted(struct ar_node *node, uint32_t kind)
{
    return (atomic_load_explicit(&node->events_mask, memory_order_relaxed) & kind) != 0;
}
/* Publishes e to the subscribers of e->kind: fills e->seq and e->time_ns, copies its
 * strings into each delivery. Never blocks on a subscriber; a full buffer or out of memory
 * drops and counts (LAGGED). Any thread; takes the events lock (a leaf but for the
 * mailbox's scheduling locks), so never call it holding another runtime lock. */
void ar__events_publish(struct ar_node *node, ar_event_t *e);
int ar__events_init(struct ar_node *node);     /* AR_ENOMEM */
void ar__events_stop(struct ar_node *node);    /* delivers what is buffered, joins the thread */
void ar__events_destroy(struct ar_node *node);
/* The hooks. spawn: init succeeded (name: the registered name, or NULL); exit: the exit
 * sequence's step 5, when the mask has AR__EV_EXIT_HOOK. */
void ar__events_spawned(ar_proc_t *p); /* with its registered name, if any */
void ar__events_exit(ar_proc_t *p, ar_pid_t self, ar_reason_t why, enum ar__end how,
                     const char *name);
/* An event message left its subscriber's mailbox: taken by the handler or ar_receive
 * (may deliver the LAGGED the buffer owes), or dropped unhandled. */
void ar__events_taken(ar__env_t *e);
void ar__events_unqueued(ar__env_t *e);
/* An internal subscription with a function, as ar_events_subscribe_fn (kinds may hold the
 * internal bits). */
int ar__events_subscribe_fn(struct ar_node *node, uint32_t kinds,
                            void (*fn)(const ar_event_t *e, void *ud), void *ud, ar_ref_t *sub);
/* Whether the calling thread is node's events thread (ar_node_stop refuses to run there). */
bool ar__events_on_thread(struct ar_node *node);
/* The default logger (crash_report.c): subscribes unless the config turned it off. */
int ar__crash_report_start(struct ar_node *node);

static inline void ar__count(ar__sched_t *s, struct ar_node *node, int which)
{
    if (s && s->node == node) /* owner-only: a load and a store, no read-modify-write */
        atomic_store_explicit(&s->counts[which],
                              atomic_load_explicit(&s->counts[which], memory_order_relaxed) + 1,
                              memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&node->counts[which], 1, memory_order_relaxed);
}

static inline void ar__env_free_on(ar__sched_t *s, ar__env_t *e)
{
    ar__pool_free_on(s, e, sizeof *e + e->cap);
}

static inline ar_pid_t ar__proc_pid(const ar_proc_t *p)
{
    return (ar_pid_t){p->node->pid_hi, atomic_load_explicit(&p->pid_lo, memory_order_relaxed)};
}

static inline ar_proc_t *ar__proc_slot(struct ar_node *node, uint32_t index)
{
    /* acquire: the chunk pointer was published after the chunk was initialised */
    ar_proc_t *chunk =
        atomic_load_explicit(&node->ptab.chunks[index / AR__CHUNK_PROCS], memory_order_acquire);
    return &chunk[index % AR__CHUNK_PROCS];
}

static inline ar_proc_t *ar__self_ok(ar_proc_t *self)
{
    return self && self == ar__current_proc() &&
                   !(atomic_load_explicit(&self->flags, memory_order_relaxed) & P_FOREIGN)
               ? self
               : NULL;
}

static inline ar_proc_t *ar__proc_lookup(struct ar_node *node, ar_pid_t pid)
{
    if (pid.hi != node->pid_hi) return NULL;
    uint32_t index = AR__PID_INDEX(pid.lo);
    /* acquire: lookups that see the count see the chunk */
    if (index / AR__CHUNK_PROCS >= atomic_load_explicit(&node->ptab.nchunks, memory_order_acquire))
        return NULL;
    ar_proc_t *p = ar__proc_slot(node, index);
    /* acquire: pairs with the release in spawn; the process's fields are set */
    if (pid.lo == 0 || atomic_load_explicit(&p->pid_lo, memory_order_acquire) != pid.lo)
        return NULL;
    return p;
}

/* The one routing point (see route.c). */
static inline int ar__route_on(ar__sched_t *s, struct ar_node *node, ar_pid_t to, ar__env_t *e)
{
    AR__ASSERT(e->half == HALF_NONE); /* a held half travels only once it is recycled */
    ar_proc_t *p = ar__proc_lookup(node, to);
    if (!p) return to.hi != node->pid_hi ? ar__dist_route(node, to, e) : AR_ENOPROC;
    if (e->flags & ENVF_COUNTED) {
        /* pushed shares the cache line the push itself takes; only a bounded mailbox
         * makes senders read the consumer's counter too */
        uint32_t limit = atomic_load_explicit(&p->mailbox_limit, memory_order_relaxed);
        uint32_t before = atomic_fetch_add_explicit(&p->pushed, 1, memory_order_relaxed);
        if (limit && before - atomic_load_explicit(&p->consumed, memory_order_relaxed) >= limit) {
            atomic_fetch_sub_explicit(&p->pushed, 1, memory_order_relaxed);
            return AR_EAGAIN;
        }
    }
    e->to_lo = to.lo;
    /* release, before the push: a consumer that sees the count fetches everything, and
     * finds this signal or a push still in progress */
    if (e->kind == ENV_EXIT) atomic_fetch_add_explicit(&p->signals, 1, memory_order_release);
    uintptr_t bits = ar__mb_push(p, e);
    if (!bits) return 0;
    if (bits & MB_DEAD) return ar__route_dead(node, p, e); /* it ended after the lookup */
    ar__after_push_on(s, node, p, bits);
    return 0;
}

static inline void ar__msg_done(ar__sched_t *s, ar__env_t *e)
{
    e->flags &= (uint8_t)~ENVF_HANDED;
    if (!(e->flags & ENVF_OWED)) ar__env_free_on(s, e); /* an owed CALL stays a half */
}

#endif
