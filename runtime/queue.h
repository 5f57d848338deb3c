/* Intrusive doubly linked lists (libuv queue.h style): no allocation just to link things.
 * A list head is a ring whose empty state points at itself. Not thread-safe. */
#ifndef AR_QUEUE_H
#define AR_QUEUE_H

#include <stddef.h>

#define ar__container_of(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

typedef struct ar__list {
    struct ar__list *prev, *next;
} ar__list_t;

static inline void ar__list_init(ar__list_t *h) { h->prev = h->next = h; }
static inline int ar__list_empty(const ar__list_t *h) { return h->next == h; }
static inline void ar__list_insert_tail(ar__list_t *h, ar__list_t *n)
{
    n->next = h;
    n->prev = h->prev;
    h->prev->next = n;
    h->prev = n;
}
static inline void ar__list_remove(ar__list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#endif
