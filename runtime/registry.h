/* The keyed registry's own structures, shared by registry.c (the table and the senders'
 * paths), registry_entry.c (the behaviour every entry runs) and registry_proc.c (the
 * registry's process: reaping, restarts, stop). Never included outside runtime/.
 *
 * An entry is one key's record in a lock-free table (cds_lfht). Its state says where a
 * message for the key goes:
 *
 *   LIVE      straight to its process: senders look the key up and route to the pid
 *             without any lock and without the registry's process;
 *   STARTING  held in the entry's buffer until its process has run init;
 *   HOLDING   held too: its process is being reaped, or it is known to have ended, and
 *             the registry decides (back to LIVE, or a fresh incarnation);
 *   REMOVED   gone from the table: look again.
 *
 * Every change away from LIVE and every change of the buffer happens under the entry's
 * lock; the way back to LIVE flushes the buffer first, under that lock, so one sender's
 * messages keep their order whichever way each went. A reap marks the entry HOLDING and
 * waits a grace period before it asks the process to stop: by then every sender that saw
 * it LIVE has finished pushing, so the request is the last thing routed to it and
 * whatever is queued before it is handled.
 */
#ifndef AR_REGISTRY_H
#define AR_REGISTRY_H

#include "internal.h"

enum reg_state { E_STARTING, E_LIVE, E_HOLDING, E_REMOVED };

/* Internal messages (envelopes marked XF_REGISTRY, so no user message is mistaken for
 * one), by tag. */
enum reg_tag {
    REG_IDLE = AR__TICK_TAG, /* entry: its idle timer fired */
    REG_REAP_REQUEST,  /* entry -> registry: idle since its last check */
    REG_REAP,          /* registry -> entry (after a grace period): stop if still idle */
    REG_REARM,         /* registry -> entry: not reaped now; check again later */
    REG_BUSY,          /* entry -> registry: it was not idle after all */
    REG_REAPING,       /* entry -> registry: stopping now */
    REG_STARTED,       /* an asynchronous start's result */
    REG_KILL,          /* registry's timer: the reaped entry's terminate took too long */
};
#define XF_REGISTRY AR__XF_INTERNAL
#define XF_GET 2u /* a held GET: get_or_spawn waits for the pid */

struct reg_entry {
    struct cds_lfht_node ln;
    struct rcu_head rcu;
    ar_registry_t *r;
    _Atomic uint64_t pid_lo;  /* the incarnation senders may use (LIVE) or that is ending */
    _Atomic uint8_t state;    /* enum reg_state; changes under lock */
    atomic_flag lock;
    bool reaping;             /* HOLDING because of a reap (REAP event when it ends) */
    bool early_end;           /* STARTING, and its process ended already */
    bool check_out;           /* (owner) its reap request is out: no idle timer now */
    bool stop_signalled;      /* the registry's stop told its incarnation to stop */
    bool winner_starts;       /* STARTING by a caller's own spawn: that caller frees it if
                                 it finds it REMOVED */
    ar__env_t *held, *held_tail; /* buffered CAST/CALL/GET envelopes, in arrival order */
    /* the running incarnation's own (owner-only) fields */
    void *user_state;
    uint32_t handled, handled_at_check; /* wraps: only compared for change */
    struct ar__timer *idle_timer;
    uint32_t keylen;
    char key[];
};

struct ar_registry {
    ar_node_t *node;
    ar_registry_config_t cfg;   /* name copied */
    ar_behaviour_t entry_b;     /* what entries run: the user's behaviour, wrapped */
    ar_pid_t pid;               /* its process */
    struct cds_lfht *keys;
    _Atomic int closed;         /* its process ends: every call fails (AR_ENOPROC) */
    _Atomic size_t count;       /* entries in the table */
    _Atomic int starters;       /* callers starting a key now: a stop waits for them */
    _Atomic size_t grow_at;     /* count at which the table is next asked to grow */
    _Atomic int growing;        /* resizes under way (registry.c): the table outlives them */
    pthread_mutex_t orphans_lock;
    struct reg_entry *orphans;  /* entries a stopped start gave back (linked by held) */
    bool released;              /* the table is gone: orphans are freed by their starter */
    struct ar_registry *next;   /* the node's list (node.c frees what is left at stop) */
};

/* The payload of the registry's internal messages. */
struct reg_note {
    int rc;  /* first: an asynchronous start writes its result here */
    struct reg_entry *e;
    ar_pid_t pid;
    struct rcu_head rcu; /* REAP: waits a grace period in the envelope itself */
    ar_node_t *node;
};

/* A GET's answer: what get_or_spawn waits for when the key is not LIVE. */
struct reg_got {
    int rc;
    ar_pid_t pid;
};

static inline ar_pid_t reg_entry_pid(const struct reg_entry *e)
{
    return (ar_pid_t){e->r->node->pid_hi, atomic_load_explicit(&e->pid_lo, memory_order_acquire)};
}
static inline void reg_set_state(struct reg_entry *e, enum reg_state st)
{
    atomic_store_explicit(&e->state, (uint8_t)st, memory_order_release);
}
/* Waits until pid has ended or ms have passed; true if it ended (registry.c). */
bool reg_await_end(ar_node_t *node, ar_pid_t pid, uint64_t ms);

void reg_lock(struct reg_entry *e);
void reg_unlock(struct reg_entry *e);
/* Under e's lock: routes everything held to pid, in order; stops at one that finds pid
 * dead (it and the rest stay held). true if all went. */
bool reg_flush(struct reg_entry *e, ar_pid_t pid);
/* Under e's lock: answers everything held with rc (calls fail, GETs get rc, casts are
 * dropped and counted). */
void reg_fail_held(struct reg_entry *e, int rc);
/* Under e's lock: takes e out of the table (state REMOVED); false if it was already. The
 * one that removes it frees it (reg_entry_free_later, after unlocking), unless a caller
 * starting it (winner_starts) owns it: that caller frees it. */
bool reg_remove(struct reg_entry *e);
void reg_entry_free_later(struct reg_entry *e);
ar__env_t *reg_note_new(int tag, struct reg_entry *e, ar_pid_t pid);
/* The incarnation's spawn: with its exit note to the registry. */
int reg_spawn_sync(ar_registry_t *r, struct reg_entry *e, ar_pid_t *out);
int reg_spawn_async(ar_registry_t *r, struct reg_entry *e);

/* registry_entry.c */
void reg_entry_behaviour(ar_registry_t *r);

#endif
