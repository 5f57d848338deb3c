/* Waiters: a foreign thread's stand-in process.
 *
 * A thread that is not one of the node's schedulers (main, the user's own) has no process
 * to receive an answer in. To wait for one (a foreign ar_call's reply, the DOWN of a
 * process ar_node_stop is stopping) it borrows a process slot flagged P_FOREIGN: its pid
 * is a real one (replies, links and monitors reach it through ar__route like any other),
 * but a push that finds its mailbox marked empty posts the thread's semaphore instead of
 * scheduling anything.
 *
 * The thread consumes the mailbox only while it holds the MB_EMPTY duty, so a wait that
 * times out first takes the mark back (or waits for the post already on its way) before
 * it touches the queue again. Closing a waiter runs the exit sequence: whoever linked to
 * or monitored its pid learns it is gone.
 */
#include "internal.h"

int ar__waiter_open(ar_node_t *node, ar__waiter_t *w)
{
    ar_proc_t *p = ar__proc_alloc(node);
    if (!p) return AR_ENOMEM;
    ar__sem_init(&w->sem);
    w->p = p;
    p->state = &w->sem;
    atomic_store_explicit(&p->b, NULL, memory_order_relaxed);
    atomic_store_explicit(&p->flags, P_FOREIGN, memory_order_relaxed);
    /* release: senders that find the pid see the flags and the semaphore */
    atomic_store_explicit(&p->pid_lo, AR__PID_LO(p->index, p->serial), memory_order_release);
    return 0;
}

ar__env_t *ar__waiter_wait(ar__waiter_t *w, bool (*pred)(ar__env_t *, void *), void *ud,
                           const struct timespec *deadline)
{
    ar_proc_t *p = w->p;
    for (;;) {
        ar__proc_fetch(p);
        ar__env_t *e = ar__inner_take(p, pred, ud);
        if (e) return e;
        if (!ar__mb_try_mark(p, MB_EMPTY)) continue; /* more arrived meanwhile */
        if (ar__sem_wait(&w->sem, deadline)) continue; /* a push took the mark and posted */
        uintptr_t marked = (uintptr_t)&p->stub | MB_EMPTY;
        /* acquire: a push that took the mark first did its work before its post */
        if (!atomic_compare_exchange_strong_explicit(&p->head, &marked, (uintptr_t)&p->stub,
                                                     memory_order_acquire, memory_order_relaxed))
            ar__sem_wait(&w->sem, NULL); /* a push took the mark: its post is on its way */
        ar__proc_fetch(p);
        return ar__inner_take(p, pred, ud);
    }
}

void ar__waiter_close(ar__waiter_t *w)
{
    ar__exit_sequence(w->p, AR_REASON(AR_NOPROC), END_WAITER);
    ar__sem_destroy(&w->sem);
}
