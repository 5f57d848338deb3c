/* Allocation: the replaceable hook every runtime allocation goes through, and the
 * size-class pools envelopes come from.
 *
 * Pools: each scheduler keeps a free list per size class (its cache, owner-only). A cache
 * that grows past its maximum (AR__POOL_CACHE_MAX) hands a batch of BATCH blocks to the node's depot (a mutex,
 * one lock per BATCH frees); an empty cache takes a batch back. Blocks freed on a thread
 * without a cache (foreign threads) go straight back to the hook. Every pooled block is
 * exactly its class size, so blocks move freely between caches, depots and the hook.
 * A block on a free list links through its first word; a batch in the depot links
 * through the second word of its first block.
 */
#include "internal.h"

#include <stdarg.h>
#include <string.h>

static void *libc_malloc(size_t n, void *ud) { (void)ud; return malloc(n); }
static void *libc_realloc(void *p, size_t n, void *ud) { (void)ud; return realloc(p, n); }
static void libc_free(void *p, void *ud) { (void)ud; free(p); }

static ar_allocator_t hook = {libc_malloc, libc_realloc, libc_free, NULL};
_Atomic int ar__nodes_running;

int ar_set_allocator(const ar_allocator_t *a)
{
    if (a && (!a->malloc || !a->realloc || !a->free)) return AR_EINVAL;
    if (atomic_load_explicit(&ar__nodes_running, memory_order_acquire) > 0) return AR_EBUSY;
    if (a)
        hook = *a;
    else
        hook = (ar_allocator_t){libc_malloc, libc_realloc, libc_free, NULL};
    return 0;
}

void *ar__malloc(size_t n) { return hook.malloc(n ? n : 1, hook.ud); }
void *ar__realloc(void *p, size_t n) { return hook.realloc(p, n ? n : 1, hook.ud); }
void ar__free(void *p)
{
    if (p) hook.free(p, hook.ud);
}
void *ar__calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = ar__malloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}
void *ar_malloc(size_t size) { return ar__malloc(size); }
void *ar_calloc(size_t n, size_t size) { return ar__calloc(n, size); }
void *ar_realloc(void *p, size_t size) { return ar__realloc(p, size); }
void ar_free(void *p) { ar__free(p); }

char *ar__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = ar__malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

_Noreturn void ar__panic(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "arbor: internal error at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/* ---- pools ---- */
static const size_t class_size[AR__POOL_CLASSES] = {AR__POOL_SMALL, 192, 256, 384, 512, 1024, 2048, 4096};
bool ar__pool_bypass;
#define BATCH 256
/* The depot keeps at most this many batches per class; beyond, blocks go back to libc. */
#define DEPOT_MAX 64

static inline int class_of(size_t size)
{
    for (int c = 0; c < AR__POOL_CLASSES; c++)
        if (size <= class_size[c]) return c;
    return -1;
}

static inline void *next_of(void *b) { return *(void **)b; }
static inline void set_next(void *b, void *n) { *(void **)b = n; }

void ar__depot_init(struct ar__depot *d)
{
    memset(d, 0, sizeof *d);
    pthread_mutex_init(&d->lock, NULL);
}

static void free_list(void *b)
{
    while (b) {
        void *n = next_of(b);
        ar__free(b);
        b = n;
    }
}

void ar__depot_destroy(struct ar__depot *d)
{
    for (int c = 0; c < AR__POOL_CLASSES; c++) {
        void *batch = d->batches[c];
        while (batch) {
            void *nb = ((void **)batch)[1];
            free_list(batch);
            batch = nb;
        }
        d->batches[c] = NULL;
    }
    pthread_mutex_destroy(&d->lock);
}

void ar__pool_cache_flush(struct ar__depot *d, struct ar__pool_cache *c)
{
    (void)d;
    for (int k = 0; k < AR__POOL_CLASSES; k++) {
        free_list(c->free[k]);
        c->free[k] = NULL;
        c->count[k] = 0;
    }
}

/* Moves BATCH blocks from the cache to the depot (or back to libc if the depot is full). */
static void spill(struct ar__depot *d, struct ar__pool_cache *c, int k)
{
    void *first = c->free[k], *last = first;
    for (int i = 1; i < BATCH; i++) last = next_of(last);
    c->free[k] = next_of(last);
    c->count[k] -= BATCH;
    set_next(last, NULL);
    pthread_mutex_lock(&d->lock);
    if (atomic_load_explicit(&d->nbatches[k], memory_order_relaxed) < DEPOT_MAX) {
        ((void **)first)[1] = d->batches[k];
        d->batches[k] = first;
        atomic_store_explicit(&d->nbatches[k],
                              atomic_load_explicit(&d->nbatches[k], memory_order_relaxed) + 1,
                              memory_order_relaxed);
        first = NULL;
    }
    pthread_mutex_unlock(&d->lock);
    free_list(first);
}

static void *refill(struct ar__depot *d, struct ar__pool_cache *c, int k)
{
    void *batch = NULL;
    /* an empty depot (memory that lives long: a registry's entries, timers) needs no lock
     * to say so; a batch given back meanwhile waits for the next refill */
    if (!atomic_load_explicit(&d->nbatches[k], memory_order_relaxed))
        return ar__malloc(class_size[k]);
    pthread_mutex_lock(&d->lock); /* once per BATCH allocations */
    batch = d->batches[k];
    if (batch) {
        d->batches[k] = ((void **)batch)[1];
        atomic_store_explicit(&d->nbatches[k],
                              atomic_load_explicit(&d->nbatches[k], memory_order_relaxed) - 1,
                              memory_order_relaxed);
    }
    pthread_mutex_unlock(&d->lock);
    if (!batch) return ar__malloc(class_size[k]);
    c->free[k] = next_of(batch);
    c->count[k] = BATCH - 1;
    return batch;
}

void *ar__pool_alloc(size_t size) { return ar__pool_alloc_on(ar__current_sched(), size); }
void ar__pool_free(void *p, size_t size) { ar__pool_free_on(ar__current_sched(), p, size); }

/* A node thread that is not a scheduler (the I/O thread) keeps a cache of its own. */
static _Thread_local struct ar__depot *tl_depot;
static _Thread_local struct ar__pool_cache *tl_cache;

void ar__pool_thread_cache(struct ar__depot *d, struct ar__pool_cache *c)
{
    if (c) c->max = ar__pool_bypass ? 0 : AR__POOL_CACHE_MAX; /* (the tests' OOM sweeps) */
    tl_depot = d;
    tl_cache = c;
}

void *ar__pool_alloc_slow(ar__sched_t *s, size_t size)
{
    int k = class_of(size);
    if (k < 0) return ar__malloc(size);
    struct ar__pool_cache *c = s ? &s->cache : tl_cache;
    if (!c) return ar__malloc(class_size[k]);
    void *b = c->free[k];
    if (b) {
        c->free[k] = next_of(b);
        c->count[k]--;
        return b;
    }
    return refill(s ? &s->node->depot : tl_depot, c, k);
}

void ar__pool_free_cached(struct ar__depot *d, struct ar__pool_cache *c, void *p, size_t size)
{
    int k = class_of(size);
    if (!p) return;
    if (k < 0 || !c->max) {
        ar__free(p);
        return;
    }
    set_next(p, c->free[k]);
    c->free[k] = p;
    if (++c->count[k] > c->max) spill(d, c, k);
}

void ar__pool_free_slow(ar__sched_t *s, void *p, size_t size)
{
    int k = class_of(size);
    if (!p) return;
    if (!s && tl_cache && k >= 0) {
        ar__pool_free_cached(tl_depot, tl_cache, p, size);
        return;
    }
    if (k < 0 || !s || !s->cache.max) {
        ar__free(p);
        return;
    }
    struct ar__pool_cache *c = &s->cache;
    set_next(p, c->free[k]);
    c->free[k] = p;
    if (++c->count[k] > c->max) spill(&s->node->depot, c, k);
}
