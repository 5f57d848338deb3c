/* A map from nonzero 64-bit keys to 64-bit values: open addressing with Robin Hood
 * linear probing (a run is ordered by home slot), deletion by backward shift that stops
 * at the first entry already at home (no tombstones), doubling at 3/4 load. It holds a process's
 * links, monitors and outstanding calls, so it must stay O(1) with 100k entries (a
 * supervisor's children, a much-monitored process). Owner-only, like the rest of a
 * process's state. */
#include "internal.h"

#include <string.h>

/* Keys are refs (handed out in sequence) and pids (index in the low half, serial in the
 * high half): folding the halves keeps keys made one after another in neighbouring slots,
 * so a million monitors set and fired in order stream through memory instead of missing
 * the cache at every step. */
static inline uint32_t slot_of(uint64_t key, uint32_t cap)
{
    return (uint32_t)(key ^ (key >> 32) ^ (key >> 45)) & (cap - 1);
}

static int grow(ar__set_t *s)
{
    uint32_t cap = s->cap ? s->cap * 2 : 8;
    uint64_t *k = ar__calloc(cap, sizeof *k), *v = ar__malloc(cap * sizeof *v);
    if (!k || !v) {
        ar__free(k);
        ar__free(v);
        return AR_ENOMEM;
    }
    uint64_t *ok = s->k, *ov = s->v;
    uint32_t ocap = s->cap;
    s->k = k, s->v = v, s->cap = cap, s->n = 0;
    for (uint32_t i = 0; i < ocap; i++)
        if (ok[i]) ar__set_put(s, ok[i], ov[i]); /* cannot grow again: load is halved */
    ar__free(ok);
    ar__free(ov);
    return 0;
}

static inline uint32_t dist(const ar__set_t *s, uint32_t at)
{
    return (at - slot_of(s->k[at], s->cap)) & (s->cap - 1);
}

int ar__set_put(ar__set_t *s, uint64_t key, uint64_t val)
{
    if ((s->n + 1) * 4 > s->cap * 3 && grow(s) != 0) return AR_ENOMEM;
    uint32_t m = s->cap - 1, j = slot_of(key, s->cap), d = 0;
    for (;; j = (j + 1) & m, d++) {
        if (!s->k[j]) {
            s->k[j] = key, s->v[j] = val, s->n++;
            return 0;
        }
        if (s->k[j] == key) {
            s->v[j] = val;
            return 0;
        }
        uint32_t dj = dist(s, j);
        if (dj < d) { /* Robin Hood: the poorer entry takes the slot, the richer moves on */
            uint64_t tk = s->k[j], tv = s->v[j];
            s->k[j] = key, s->v[j] = val;
            key = tk, val = tv, d = dj;
        }
    }
}

bool ar__set_get(const ar__set_t *s, uint64_t key, uint64_t *val)
{
    if (!s->n) return false;
    for (uint32_t j = slot_of(key, s->cap); s->k[j]; j = (j + 1) & (s->cap - 1))
        if (s->k[j] == key) {
            if (val) *val = s->v[j];
            return true;
        }
    return false;
}

bool ar__set_del(ar__set_t *s, uint64_t key, uint64_t *val)
{
    if (!s->n) return false;
    uint32_t m = s->cap - 1, j = slot_of(key, s->cap);
    while (s->k[j] != key) {
        if (!s->k[j]) return false;
        j = (j + 1) & m;
    }
    if (val) *val = s->v[j];
    /* shift the rest of the run back by one, up to an empty slot or an entry at home */
    for (uint32_t i = (j + 1) & m; s->k[i] && dist(s, i) > 0; j = i, i = (i + 1) & m) {
        s->k[j] = s->k[i];
        s->v[j] = s->v[i];
    }
    s->k[j] = 0;
    s->n--;
    return true;
}

void ar__set_free(ar__set_t *s)
{
    ar__free(s->k);
    ar__free(s->v);
    memset(s, 0, sizeof *s);
}
