/* Read-copy-update for the lock-free tables (names, registry keys): liburcu's "bulletproof"
 * flavour, whose readers need no registration, so a foreign thread may look a name up as
 * freely as a scheduler; cds_lfht is its resizable lock-free hash table.
 *
 * Readers enter through these functions, never inline: a process can park and resume on
 * another thread, and an inlined reader could keep the first thread's TLS address across
 * that. No read-side section ever spans a park.
 *
 * ThreadSanitizer cannot see liburcu's own synchronisation (it is not instrumented and its
 * grace periods end in system calls), so under TSan these helpers state the two edges it
 * gives: a node's fields written before it was added are seen by a reader that found it,
 * and every read-side section ends before the memory it read is reclaimed.
 */
#define _LGPL_SOURCE 1 /* the read-side fast path inline in this file */
#include "internal.h"

#include <xxhash.h>

#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_ACQUIRE(a) __tsan_acquire(a)
#define TSAN_RELEASE(a) __tsan_release(a)
#else
#define TSAN_ACQUIRE(a) ((void)(a))
#define TSAN_RELEASE(a) ((void)(a))
#endif
static char grace_sync; /* under TSan: "every reader before this grace period is done" */

/* (liburcu declares its per-thread reader record 128-byte aligned but allocates it with
 * less; the record only wants a line of its own. The Makefile builds this file without
 * UBSan's alignment check.) */
__attribute__((noinline)) void ar__rcu_read_lock(void) { urcu_bp_read_lock(); }

__attribute__((noinline)) void ar__rcu_read_unlock(void)
{
    TSAN_RELEASE(&grace_sync);
    urcu_bp_read_unlock();
}

static char callbacks_sync; /* under TSan: "the callbacks queued so far have run" */

#if defined(__SANITIZE_THREAD__)
void ar__rcu_published(void *obj) { TSAN_RELEASE(obj); }
void ar__rcu_seen(void *obj) { TSAN_ACQUIRE(obj); }
void ar__rcu_callback_done(void) { TSAN_RELEASE(&callbacks_sync); }
#endif

void ar__rcu_call(struct rcu_head *h, void (*fn)(struct rcu_head *))
{
    TSAN_RELEASE(h);
    urcu_bp_call_rcu(h, fn);
}

void ar__rcu_reclaimed(struct rcu_head *h)
{
    TSAN_ACQUIRE(h);
    TSAN_ACQUIRE(&grace_sync);
}

void ar__rcu_synchronize(void)
{
    urcu_bp_synchronize_rcu();
    TSAN_ACQUIRE(&grace_sync);
}

void ar__rcu_barrier(void)
{
    urcu_bp_barrier();
    TSAN_ACQUIRE(&grace_sync);
    TSAN_ACQUIRE(&callbacks_sync);
}

struct cds_lfht *ar__lfht_new(unsigned long initial)
{
    unsigned long size = 1;
    while (size < initial) size <<= 1;
    return cds_lfht_new_flavor(size, 1, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
                               &urcu_bp_flavor, NULL);
}

void ar__lfht_destroy(struct cds_lfht *t)
{
    if (t) AR__ASSERT(cds_lfht_destroy(t, NULL) == 0);
}

unsigned long ar__hash(const void *data, size_t len, uint64_t seed)
{
    return (unsigned long)XXH3_64bits_withSeed(data, len, seed);
}
