/* A map from nonzero 64-bit keys to 64-bit values: open addressing, linear probing,
 * deletion by backward shift (no tombstones), doubling at 3/4 load. It holds a process's
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
    for (uint32_t i = 0; i < s->cap; i++) {
        if (!s->k[i]) continue;
        uint32_t j = slot_of(s->k[i], cap);
        while (k[j]) j = (j + 1) & (cap - 1);
        k[j] = s->k[i];
        v[j] = s->v[i];
    }
    ar__free(s->k);
    ar__free(s->v);
    s->k = k;
    s->v = v;
    s->cap = cap;
    return 0;
}

int ar__set_put(ar__set_t *s, uint64_t key, uint64_t val)
{
    if ((s->n + 1) * 4 > s->cap * 3 && grow(s) != 0) return AR_ENOMEM;
    uint32_t j = slot_of(key, s->cap);
    while (s->k[j] && s->k[j] != key) j = (j + 1) & (s->cap - 1);
    if (!s->k[j]) s->n++;
    s->k[j] = key;
    s->v[j] = val;
    return 0;
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
    /* shift later members of the probe run back over the hole */
    for (uint32_t i = (j + 1) & m; s->k[i]; i = (i + 1) & m) {
        uint32_t home = slot_of(s->k[i], s->cap);
        if (((i - home) & m) >= ((i - j) & m)) {
            s->k[j] = s->k[i];
            s->v[j] = s->v[i];
            j = i;
        }
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
