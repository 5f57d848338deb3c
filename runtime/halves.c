/* Halves: what one process holds of its links, of the monitors it holds and the monitors
 * on it, of the calls it owes an answer to, and of the asks it awaits one for.
 *
 * Each half is an envelope: the signal the process will owe when it ends (the EXIT of a
 * link, the DOWN of a monitor on it, the DEMONITOR of a monitor it holds, the failed reply
 * of a call). It is reserved when the link, monitor or call is made (the LINK and MONITOR
 * envelopes themselves become the receiver's halves, as ERTS keeps a monitor's DOWN in
 * the monitor's own structure), so making one is what may fail with AR_ENOMEM, and an
 * ending process never needs memory to tell anyone. An ask (call.c) is the one half an
 * ending process owes nothing for: it is dropped then; its envelope is the CALL_DONE the
 * asker may owe its target once an answer came from elsewhere.
 *
 * The table is an intrusive chained hash: an envelope chains through its queue link,
 * which is free while it is held. Up to SMALL halves (most processes) share one chain and
 * need no array; beyond, the bucket array doubles at a load of one. Putting never
 * allocates anything that can fail it: an array that cannot grow only lengthens chains.
 * Taking never allocates: once a burst is over (thousands of asks answered) and a few
 * halves are left, a large array is freed and they share one chain again. Keys are
 * msg.reply_to: the other pid (whole: it may live on another node) and the ref (0 for
 * links). Monitors one holds and asks are found by ref alone (ar_demonitor knows nothing
 * else; an answer may come from any process the target handed the call on to); the
 * others by both.
 *
 * Owner-only, like the rest of a process's state.
 */
#include "internal.h"

#include <string.h>

/* The bucket array's size limit: beyond it chains grow instead (2^26 buckets is a
 * 512 MiB array: no process holds that many halves). */
#define MAX_BUCKETS_LOG2 26
/* Halves kept on one chain, with no bucket array: scanning a few costs less than an
 * array's allocation. */
#define SMALL 4
/* A bucket array of up to this many buckets (512 bytes) is kept however few halves are
 * left; a larger one is freed once SMALL or fewer are. An array of B buckets held at least
 * B/2 halves, so its freeing follows nearly B/2 takes and regrowing it takes as many puts:
 * both cost O(1) per put and take, and a count that hovers near SMALL allocates nothing. */
#define KEEP_BUCKETS 64

static inline ar__env_t *next_of(ar__env_t *e)
{
    return (ar__env_t *)atomic_load_explicit(&e->q.next, memory_order_relaxed);
}
static inline void set_next(ar__env_t *e, ar__env_t *n)
{
    atomic_store_explicit(&e->q.next, n ? &n->q : NULL, memory_order_relaxed);
}

/* Fibonacci hashing: the key times 2^64/phi, whose top bits choose the bucket. Refs are
 * even and come in one sequence for the whole node, so the refs one process holds are
 * spaced by however many the others took in between: a process that asks and calls in
 * turn holds every other one of ref >> 1, and the low bits alone would leave half the
 * buckets empty. Multiplying spreads any such progression (and a run of pid indexes)
 * evenly over the buckets. */
static inline uint32_t bucket_of(const ar__halves_t *t, ar_pid_t peer, ar_ref_t ref,
                                 enum ar__half_kind kind)
{
    if (!t->mask) return 0;
    uint64_t k = (ref && kind != HALF_LINK) ? ref >> 1 : peer.lo ^ peer.hi;
    uint64_t h = (k * 0x9E3779B97F4A7C15u) >> 32;          /* the product's top 32 bits */
    return (uint32_t)((h * ((uint64_t)t->mask + 1)) >> 32); /* their top log2(buckets) */
}

static inline bool matches(const ar__env_t *e, enum ar__half_kind kind, ar_pid_t peer,
                           ar_ref_t ref)
{
    return e->half == kind && e->msg.reply_to.ref == ref &&
           (kind == HALF_MONITOR || kind == HALF_ASK || ar_pid_eq(e->msg.reply_to.pid, peer));
}

void ar__halves_init(ar__halves_t *t)
{
    t->one = NULL;
    t->mask = 0;
    t->n = 0;
}

static inline ar__env_t **chain(ar__halves_t *t, uint32_t j) { return t->mask ? &t->b[j] : &t->one; }

/* The counts ar_proc_info reads, one per kind but calls, side by side in the process. */
_Static_assert(offsetof(struct ar_proc, nmonitors) == offsetof(struct ar_proc, nlinks) + 4 &&
                   offsetof(struct ar_proc, nmonitored_by) == offsetof(struct ar_proc, nlinks) + 8 &&
                   HALF_MONITOR == HALF_LINK + 1 && HALF_WATCHED == HALF_LINK + 2,
               "a kind's count is found by its number");

static inline void count(ar_proc_t *p, enum ar__half_kind kind, int by)
{
    if (kind > HALF_WATCHED) return; /* owed calls are not counted */
    _Atomic uint32_t *c = &p->nlinks + (kind - HALF_LINK);
    /* owner-only writes: a load and a store */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + (uint32_t)by,
                          memory_order_relaxed);
}

static void grow(ar__halves_t *t)
{
    uint32_t old = t->mask + 1, cap = t->mask ? old * 2 : 2 * SMALL;
    if (cap > (1u << MAX_BUCKETS_LOG2)) return;
    ar__env_t **nb = ar__calloc(cap, sizeof *nb);
    if (!nb) return; /* no memory: longer chains, still correct */
    ar__env_t *one = t->one;
    ar__env_t **ob = t->mask ? t->b : &one;
    bool had_array = t->mask != 0;
    t->b = nb;
    t->mask = cap - 1;
    for (uint32_t i = 0; i < old; i++) {
        ar__env_t *e = ob[i];
        while (e) {
            ar__env_t *n = next_of(e);
            uint32_t j = bucket_of(t, e->msg.reply_to.pid, e->msg.reply_to.ref, e->half);
            set_next(e, nb[j]);
            nb[j] = e;
            e = n;
        }
    }
    if (had_array) ar__free(ob);
}

/* Back to the one chain: frees the array and allocates nothing. */
static void collapse(ar__halves_t *t)
{
    ar__env_t **ob = t->b, *one = NULL;
    for (uint32_t i = 0; i <= t->mask; i++)
        for (ar__env_t *e = ob[i], *n; e; e = n) {
            n = next_of(e);
            set_next(e, one);
            one = e;
        }
    ar__free(ob);
    t->one = one;
    t->mask = 0;
}

void ar__half_put(ar_proc_t *p, ar__env_t *e, enum ar__half_kind kind, ar_pid_t peer,
                  ar_ref_t ref)
{
    ar__halves_t *t = &p->halves;
    AR__ASSERT(e->half == HALF_NONE && kind != HALF_NONE); /* held once, as one kind */
    if (t->mask ? t->n >= t->mask + 1 : t->n >= SMALL) grow(t);
    e->half = (uint8_t)kind;
    e->msg.reply_to = (ar_reply_to_t){peer, ref};
    ar__env_t **c = chain(t, bucket_of(t, peer, ref, kind));
    set_next(e, *c);
    *c = e;
    t->n++;
    count(p, kind, 1);
}

ar__env_t *ar__half_take(ar_proc_t *p, enum ar__half_kind kind, ar_pid_t peer, ar_ref_t ref)
{
    ar__halves_t *t = &p->halves;
    if (!t->n) return NULL;
    ar__env_t **c = chain(t, bucket_of(t, peer, ref, kind));
    for (ar__env_t *prev = NULL, *e = *c; e; prev = e, e = next_of(e))
        if (matches(e, kind, peer, ref)) {
            if (prev)
                set_next(prev, next_of(e));
            else
                *c = next_of(e);
            set_next(e, NULL);
            e->half = HALF_NONE;
            t->n--;
            count(p, kind, -1);
            if (t->mask >= KEEP_BUCKETS && t->n <= SMALL) collapse(t);
            return e;
        }
    return NULL;
}

bool ar__half_has(ar_proc_t *p, enum ar__half_kind kind, ar_pid_t peer, ar_ref_t ref)
{
    ar__halves_t *t = &p->halves;
    if (!t->n) return false;
    for (ar__env_t *e = *chain(t, bucket_of(t, peer, ref, kind)); e; e = next_of(e))
        if (matches(e, kind, peer, ref)) return true;
    return false;
}

ar__env_t *ar__halves_take_all(ar_proc_t *p)
{
    ar__halves_t *t = &p->halves;
    ar__env_t *all = NULL;
    for (uint32_t i = 0; t->n && i <= t->mask; i++) {
        ar__env_t *e = *chain(t, i);
        while (e) {
            ar__env_t *n = next_of(e);
            count(p, (enum ar__half_kind)e->half, -1);
            set_next(e, all);
            all = e;
            e = n;
        }
    }
    if (t->mask) ar__free(t->b);
    ar__halves_init(t);
    return all;
}
