/* Semaphores with an explicit C11 happens-before edge.
 *
 * A post increments `posts` (release) before sem_post; a waiter that wakes reads it
 * (acquire). POSIX semaphores synchronize memory already, but ThreadSanitizer does not
 * see through sem_clockwait (not intercepted), and the atomic pair states the edge in
 * C11 terms. Posting stays async-signal-safe (a lock-free atomic and sem_post). */
#include "internal.h"

#include <errno.h>

void ar__sem_init(ar__sem_t *s)
{
    sem_init(&s->sem, 0, 0);
    atomic_init(&s->posts, 0);
}

void ar__sem_destroy(ar__sem_t *s) { sem_destroy(&s->sem); }

void ar__sem_post(ar__sem_t *s)
{
    /* release: what the poster did before is visible to the woken waiter */
    atomic_fetch_add_explicit(&s->posts, 1, memory_order_release);
    sem_post(&s->sem);
}

bool ar__sem_wait(ar__sem_t *s, const struct timespec *deadline)
{
    for (;;) {
        int r = deadline ? sem_clockwait(&s->sem, CLOCK_MONOTONIC, deadline) : sem_wait(&s->sem);
        if (r == 0) {
            (void)atomic_load_explicit(&s->posts, memory_order_acquire); /* pairs with post */
            return true;
        }
        if (errno == ETIMEDOUT) return false;
    }
}
