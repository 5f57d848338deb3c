/* The two-stage mailbox.
 *
 * Outer queue: Vyukov's intrusive MPSC queue with a resting stub node; a push is one
 * atomic exchange. Its producer pointer (`head`) carries the MB_EMPTY and MB_DEAD tag bits
 * (see internal.h): the consumer sets them with a CAS only when the queue is empty, and
 * the first push after that finds them in the exchange's result and takes over the duty
 * they name. So a process is scheduled by exactly one thread, and a dead process's queue
 * is drained by exactly one thread at a time.
 *
 * Inner queue: envelopes already fetched, in arrival order, private to the consumer.
 * Selective receive scans it; unmatched envelopes stay in place.
 *
 * Thread rules: push from any thread; everything else only by the queue's consumer (the
 * thread running the process, or the one draining it dead).
 */
#include "internal.h"

static inline struct ar__qnode *untag(uintptr_t v) { return (struct ar__qnode *)(v & ~MB_BITS); }

void ar__mb_init(ar_proc_t *p, uintptr_t bits)
{
    atomic_store_explicit(&p->stub.next, NULL, memory_order_relaxed);
    p->tail = &p->stub;
    p->inner_head = p->inner_tail = NULL;
    /* release: the process's fields, written before, are visible to the first pusher that
     * takes the MB_EMPTY token (its exchange acquires). */
    atomic_store_explicit(&p->head, (uintptr_t)&p->stub | bits, memory_order_release);
}

uintptr_t ar__mb_push(ar_proc_t *p, ar__env_t *e)
{
    return ar__mpsc_push(&p->head, &e->q, MB_BITS);
}

ar__env_t *ar__mb_pop(ar_proc_t *p)
{
    return (ar__env_t *)ar__mpsc_pop(&p->head, &p->tail, &p->stub, MB_BITS);
}

bool ar__mb_has_more(ar_proc_t *p)
{
    return p->tail != &p->stub ||
           untag(atomic_load_explicit(&p->head, memory_order_acquire)) != &p->stub;
}

bool ar__mb_try_mark(ar_proc_t *p, uintptr_t bits)
{
    if (p->tail != &p->stub) return false;
    uintptr_t expect = (uintptr_t)&p->stub;
    /* release: everything this consumer did happens-before the next consumer, who takes
     * the token with an acquiring exchange. */
    return atomic_compare_exchange_strong_explicit(&p->head, &expect, expect | bits,
                                                   memory_order_release, memory_order_relaxed);
}

bool ar__mb_drain_dead(struct ar_node *node, ar_proc_t *p, ar__env_t *keep, ar_reason_t why)
{
    bool kept = false;
    for (;;) {
        ar__env_t *e;
        while ((e = ar__mb_pop(p)) != NULL || ar__mb_has_more(p)) {
            if (!e) continue; /* a push between its exchange and its link */
            if (e == keep) {
                ar__mb_unqueue(p, e);
                kept = true;
            } else {
                ar__dead_letter(node, p, e, why);
            }
        }
        if (ar__mb_try_mark(p, MB_EMPTY | MB_DEAD)) return kept;
    }
}

void ar__inner_append(ar_proc_t *p, ar__env_t *e)
{
    atomic_store_explicit(&e->q.next, NULL, memory_order_relaxed);
    if (p->inner_tail)
        atomic_store_explicit(&p->inner_tail->q.next, &e->q, memory_order_relaxed);
    else
        p->inner_head = e;
    p->inner_tail = e;
}

ar__env_t *ar__inner_take(ar_proc_t *p, bool (*pred)(ar__env_t *, void *), void *ud)
{
    ar__env_t *prev = NULL;
    for (ar__env_t *e = p->inner_head; e;
         prev = e, e = (ar__env_t *)atomic_load_explicit(&e->q.next, memory_order_relaxed)) {
        if (!pred(e, ud)) continue;
        struct ar__qnode *next = atomic_load_explicit(&e->q.next, memory_order_relaxed);
        if (prev)
            atomic_store_explicit(&prev->q.next, next, memory_order_relaxed);
        else
            p->inner_head = (ar__env_t *)next;
        if (p->inner_tail == e) p->inner_tail = prev;
        return e;
    }
    return NULL;
}

/* A counted envelope left the mailbox. Only the queue's consumer calls this (one thread
 * at a time, handed over with the mailbox's tag bits), so a load and a store suffice. */
void ar__consumed(ar_proc_t *p)
{
    atomic_store_explicit(&p->consumed,
                          atomic_load_explicit(&p->consumed, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

void ar__mb_unqueue(ar_proc_t *p, ar__env_t *e)
{
    if (e->flags & ENVF_COUNTED)
        ar__consumed(p);
    else if (e->flags & ENVF_EVENT)
        ar__events_unqueued(e);
    e->flags &= (uint8_t)~(ENVF_COUNTED | ENVF_EVENT);
    if (e->kind == ENV_EXIT) p->signals_seen++; /* its consumer's count, like consumed */
}
