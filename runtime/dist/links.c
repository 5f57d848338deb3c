/* Remote halves: what links, monitors and calls across a connection owe if it is lost.
 *
 * Locally every half is held by the process it belongs to (halves.c), and its partner's
 * end sends it. Across nodes the partner's end may never come: the connection can go. So
 * the peer's entry keeps, for each link, monitor and call that crosses it, the signal a
 * local process is owed should the peer be lost (ERTS keeps these on its dist entry):
 *
 *   RH_LINK     a local process is linked with a remote one: EXIT noconnection to it
 *   RH_MONITOR  a local process monitors a remote one: DOWN noconnection to it
 *   RH_WATCHED  a remote process monitors a local one: DEMONITOR to the local one, so
 *               it stops holding a monitor nobody will hear of
 *   RH_CALL     a local caller waits for a remote answer: its failed reply (AR_ENOCONN)
 *
 * Each is an envelope, made when the LINK, MONITOR or CALL crossed (the sender's own
 * envelope, or one allocated with the incoming frame), so firing them needs no memory.
 * Frames crossing later end them (UNLINK, an EXIT through the link, DEMONITOR, DOWN, the
 * REPLY, CALL_DONE). One that outlives its purpose (both ends of a link unlinking at once)
 * is harmless: the process it goes to holds no such link or monitor any more and drops it.
 *
 * An intrusive chained hash keyed by {kind, local pid, key} (key: the remote pid of a
 * link, the ref of the rest); the I/O thread alone touches it.
 */
#include "dist.h"

#define FIRST_BUCKETS 16u
#define MAX_BUCKETS (1u << 24)

static inline ar__env_t *next_of(ar__env_t *e)
{
    return (ar__env_t *)atomic_load_explicit(&e->q.next, memory_order_relaxed);
}
static inline void set_next(ar__env_t *e, ar__env_t *n)
{
    atomic_store_explicit(&e->q.next, n ? &n->q : NULL, memory_order_relaxed);
}

static inline uint64_t key_of(const ar__env_t *a)
{
    return a->half == RH_LINK ? a->msg.from.lo : a->msg.ref;
}

static inline uint32_t bucket(const ar__rhalves_t *t, int kind, uint64_t local, uint64_t key)
{
    uint64_t h = (local * 0x9E3779B97F4A7C15ULL) ^ (key * 0xC2B2AE3D27D4EB4FULL) ^ (uint64_t)kind;
    return (uint32_t)(h ^ (h >> 29)) & t->mask;
}

static void grow(ar__rhalves_t *t)
{
    uint32_t old = t->b ? t->mask + 1 : 0, cap = old ? old * 2 : FIRST_BUCKETS;
    if (cap > MAX_BUCKETS) return;
    ar__env_t **nb = ar__calloc(cap, sizeof *nb);
    if (!nb) return; /* longer chains: still correct */
    ar__env_t **ob = t->b;
    t->b = nb;
    t->mask = cap - 1;
    for (uint32_t i = 0; i < old; i++)
        for (ar__env_t *e = ob[i], *n; e; e = n) {
            n = next_of(e);
            uint32_t j = bucket(t, e->half, e->to_lo, key_of(e));
            set_next(e, nb[j]);
            nb[j] = e;
        }
    ar__free(ob);
}

static ar__env_t **find(ar__rhalves_t *t, int kind, uint64_t local, uint64_t key)
{
    if (!t->b) return NULL;
    for (ar__env_t **at = &t->b[bucket(t, kind, local, key)]; *at; at = (ar__env_t **)&(*at)->q.next)
        if ((*at)->half == kind && (*at)->to_lo == local && key_of(*at) == key) return at;
    return NULL;
}

void ar__rh_add(ar__peer_t *p, int kind, uint64_t local, uint64_t key, ar__env_t *answer)
{
    ar__rhalves_t *t = &p->rh;
    answer->half = (uint8_t)kind; /* held here: its kind, until it leaves */
    answer->to_lo = local;
    if (find(t, kind, local, key)) { /* one link per pair: the one held stays */
        answer->half = HALF_NONE;
        ar__env_free(answer);
        return;
    }
    if (!t->b || t->n > t->mask) grow(t);
    if (!t->b) { /* no array at all: the peer is lost rather than a half */
        answer->half = HALF_NONE;
        ar__rh_deliver(p->dist->node, answer, AR_NOCONNECTION);
        atomic_store_explicit(&p->must_drop, 1, memory_order_release);
        return;
    }
    ar__env_t **c = &t->b[bucket(t, kind, local, key)];
    set_next(answer, *c);
    *c = answer;
    t->n++;
}

void ar__rh_del(ar__peer_t *p, int kind, uint64_t local, uint64_t key)
{
    ar__env_t **at = find(&p->rh, kind, local, key);
    if (!at) return;
    ar__env_t *e = *at;
    *at = next_of(e);
    p->rh.n--;
    e->half = HALF_NONE;
    ar__env_free(e);
}

void ar__rh_book(ar__peer_t *p, ar__frame_t *f)
{
    if (f->book == BOOK_ADD) {
        ar__rh_add(p, f->book_kind, f->book_local, f->book_key, f->answer);
        f->answer = NULL;
    } else if (f->book == BOOK_DEL) {
        ar__rh_del(p, f->book_kind, f->book_local, f->book_key);
    }
    f->book = BOOK_NONE;
}

void ar__rh_deliver(ar_node_t *node, ar__env_t *a, ar_exit_code_t why)
{
    a->half = HALF_NONE;
    if (a->kind != ENV_DEMONITOR) a->msg.reason.code = why;
    ar__route_or_dead_letter(node, (ar_pid_t){node->pid_hi, a->to_lo}, a);
}

/* Takes every half out, as a list. */
static ar__env_t *take_all(ar__rhalves_t *t)
{
    ar__env_t *all = NULL;
    for (uint32_t i = 0; t->b && i <= t->mask; i++)
        for (ar__env_t *e = t->b[i], *n; e; e = n) {
            n = next_of(e);
            set_next(e, all);
            all = e;
        }
    ar__free(t->b);
    t->b = NULL;
    t->mask = t->n = 0;
    return all;
}

void ar__rh_fire_all(ar__peer_t *p, ar_node_t *node, ar_exit_code_t why)
{
    for (ar__env_t *e = take_all(&p->rh), *n; e; e = n) {
        n = next_of(e);
        set_next(e, NULL);
        ar__rh_deliver(node, e, why);
    }
}

void ar__rh_free_all(ar__peer_t *p)
{
    for (ar__env_t *e = take_all(&p->rh), *n; e; e = n) {
        n = next_of(e);
        ar__env_free(e);
    }
}
