/* The registry's process: it owns the key table and decides what senders cannot: reaps,
 * restarts, the end of an incarnation, and the registry's own stop. It never runs an
 * entry's init (restarts start asynchronously, in the entry's own first turn) and never
 * blocks but in its terminate.
 *
 * What it hears, each an internal message from the runtime (registry.h):
 *   REAP_REQUEST  an entry found itself idle: mark it HOLDING, and after a grace period
 *                 send it REAP (or REARM it, if it is not LIVE any more);
 *   BUSY          the reaped entry was not idle: flush what was held, LIVE again;
 *   REAPING       it stops: kill it if its terminate takes longer than reap_timeout_ms;
 *   (DOWN)        an incarnation's exit note, an internal DOWN whose ref is the entry: forget the key, or start the next
 *                 incarnation for what is held (an old incarnation's note never touches
 *                 a newer one: pids are compared);
 *   STARTED       an asynchronous start's result.
 */
#include "registry.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#define DEFAULT_REAP_TIMEOUT_MS 5000

/* Under e's lock: an incarnation is over. What is held starts the next one; with nothing
 * held the key is forgotten. Returns whether e was removed (the caller frees it). */
static bool restart_or_remove(ar_registry_t *r, struct reg_entry *e)
{
    e->early_end = false;
    atomic_store_explicit(&e->pid_lo, 0, memory_order_relaxed);
    if (e->held) {
        reg_set_state(e, E_STARTING);
        int rc = reg_spawn_async(r, e);
        if (rc == 0) return false;
        reg_fail_held(e, rc);
    }
    reg_remove(e);
    return true;
}

static void after_grace(struct rcu_head *h)
{
    ar__rcu_reclaimed(h);
    struct reg_note *n = caa_container_of(h, struct reg_note, rcu);
    ar__env_t *env = (ar__env_t *)((char *)n - sizeof(ar__env_t));
    ar__route_or_dead_letter(n->node, n->pid, env);
    ar__rcu_callback_done();
}

static void on_reap_request(ar_registry_t *r, ar__env_t *env, struct reg_note *n)
{
    struct reg_entry *e = n->e;
    reg_lock(e);
    bool reap = atomic_load_explicit(&e->state, memory_order_relaxed) == E_LIVE &&
                atomic_load_explicit(&e->pid_lo, memory_order_relaxed) == n->pid.lo;
    if (reap) {
        reg_set_state(e, E_HOLDING);
        e->reaping = true;
    }
    reg_unlock(e);
    if (!reap) {
        env->msg.tag = REG_REARM;
        ar__route_or_dead_letter(r->node, n->pid, env);
        return;
    }
    /* every sender that saw it LIVE is done pushing once a grace period has passed */
    env->msg.tag = REG_REAP;
    n->node = r->node;
    ar__rcu_call(&n->rcu, after_grace);
}

static void on_busy(ar_registry_t *r, struct reg_note *n)
{
    struct reg_entry *e = n->e;
    reg_lock(e);
    if (atomic_load_explicit(&e->state, memory_order_relaxed) == E_HOLDING && e->reaping &&
        atomic_load_explicit(&e->pid_lo, memory_order_relaxed) == n->pid.lo) {
        e->reaping = false;
        /* if it ended meanwhile, what is left stays held for its exit note to decide */
        if (reg_flush(e, n->pid)) reg_set_state(e, E_LIVE);
    }
    reg_unlock(e);
}

/* REAP: pid was passivated; name is its key (as text, cut at a NUL). */
static void reap_event(ar_registry_t *r, struct reg_entry *e, ar_pid_t pid)
{
    if (!ar__events_wanted(r->node, AR_EV_REAP)) return;
    char key[AR_KEY_MAX + 1];
    memcpy(key, e->key, e->keylen);
    key[e->keylen] = '\0';
    ar_event_t ev = {.kind = AR_EV_REAP, .pid = pid, .supervisor = r->pid,
                     .behaviour = r->cfg.behaviour->name, .name = key,
                     .reason = AR_REASON(AR_SHUTDOWN)};
    ar__events_publish(r->node, &ev);
}

static void on_ended(ar_registry_t *r, struct reg_entry *e, ar_pid_t pid, ar_exit_code_t code)
{
    reg_lock(e);
    enum reg_state st = atomic_load_explicit(&e->state, memory_order_relaxed);
    uint64_t cur = atomic_load_explicit(&e->pid_lo, memory_order_relaxed);
    if (st == E_STARTING) { /* it ended before its start was settled: the starter decides */
        if (!cur || cur == pid.lo) e->early_end = true;
        reg_unlock(e);
        return;
    }
    if (st == E_REMOVED || cur != pid.lo) { /* an older incarnation: not ours to touch */
        reg_unlock(e);
        return;
    }
    bool reaped = e->reaping && code == AR_SHUTDOWN;
    e->reaping = false;
    if (reaped) { /* published before a successor can start, but not under the lock (only
                     senders may take it meanwhile, and they only hold more messages) */
        reg_unlock(e);
        reap_event(r, e, pid);
        reg_lock(e);
    }
    bool removed = restart_or_remove(r, e);
    reg_unlock(e);
    if (removed) reg_entry_free_later(e);
}

static void on_started(ar_registry_t *r, struct reg_note *n, ar_pid_t pid)
{
    struct reg_entry *e = n->e;
    reg_lock(e);
    bool removed = false;
    if (n->rc < 0) { /* its init failed: whoever waited learns why */
        reg_fail_held(e, n->rc);
        reg_remove(e);
        removed = true;
    } else if (e->early_end) {
        removed = restart_or_remove(r, e);
    } else {
        atomic_store_explicit(&e->pid_lo, pid.lo, memory_order_relaxed);
        reg_set_state(e, reg_flush(e, pid) ? E_LIVE : E_HOLDING);
    }
    reg_unlock(e);
    if (removed) reg_entry_free_later(e);
}

/* ---- the behaviour ---- */

static pthread_mutex_t *list_lock(ar_node_t *node) { return &node->registries_lock; }

static int registry_init(ar_proc_t *self, void *arg, void **state)
{
    const ar_registry_config_t *cfg = arg;
    ar_node_t *node = ar_node(self);
    ar_registry_t *r = ar__calloc(1, sizeof *r);
    if (!r) return AR_ENOMEM;
    r->node = node;
    r->cfg = *cfg;
    r->cfg.name = NULL;
    if (!r->cfg.reap_timeout_ms) r->cfg.reap_timeout_ms = DEFAULT_REAP_TIMEOUT_MS;
    r->pid = ar_self(self);
    pthread_mutex_init(&r->orphans_lock, NULL);
    reg_entry_behaviour(r);
    int rc = AR_ENOMEM;
    if ((cfg->name && !(r->cfg.name = ar__strdup(cfg->name))) || !(r->keys = ar__lfht_new(64)))
        goto fail;
    if (cfg->name && (rc = ar_register(node, cfg->name, r->pid)) != 0) goto fail;
    pthread_mutex_lock(list_lock(node));
    r->next = node->registries;
    node->registries = r;
    pthread_mutex_unlock(list_lock(node));
    *state = r;
    return 0;
fail:
    ar__lfht_destroy(r->keys);
    pthread_mutex_destroy(&r->orphans_lock);
    ar__free((char *)r->cfg.name);
    ar__free(r);
    return rc;
}

static void registry_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ar_registry_t *r = state;
    if (m->kind == AR_MSG_TIMER && m->tag == REG_KILL && ar_pid_eq(m->from, r->pid) &&
        m->len == sizeof(ar_pid_t)) { /* a reaped entry's terminate took too long */
        ar_pid_t pid;
        memcpy(&pid, m->data, sizeof pid);
        ar_exit(r->node, pid, AR_REASON(AR_KILL));
        return;
    }
    if (!(ar__container_of(m, ar__env_t, msg)->xflags & XF_REGISTRY)) return; /* not ours */
    if (m->kind == AR_MSG_DOWN) { /* an exit note: ref is the entry */
        on_ended(r, (struct reg_entry *)(uintptr_t)m->ref, m->from, m->reason.code);
        return;
    }
    struct reg_note *n = (struct reg_note *)m->data;
    switch (m->tag) {
    case REG_REAP_REQUEST: on_reap_request(r, ar__msg_keep(self, m), n); return;
    case REG_BUSY: on_busy(r, n); return;
    case REG_REAPING:
        ar_send_after(r->node, r->cfg.reap_timeout_ms, r->pid, REG_KILL, &n->pid, sizeof n->pid,
                      NULL);
        return;
    case REG_STARTED: on_started(r, n, m->from); return;
    default: return;
    }
}

static bool is_exit_note(const ar_msg_t *m, void *ud)
{
    (void)ud;
    return m->kind == AR_MSG_DOWN && (ar__container_of(m, ar__env_t, msg)->xflags & XF_REGISTRY);
}

/* Sends `why` to every entry process still alive; how many it found. */
static size_t signal_entries(ar_registry_t *r, ar_exit_code_t why)
{
    size_t n = 0;
    struct cds_lfht_iter it;
    struct reg_entry *e;
    ar__rcu_read_lock();
    cds_lfht_for_each_entry(r->keys, &it, e, ln)
    {
        ar_pid_t pid = reg_entry_pid(e);
        if (!pid.lo || !ar__proc_lookup(r->node, pid)) continue;
        ar_exit(r->node, pid, AR_REASON(why));
        e->stop_signalled = true;
        n++;
    }
    ar__rcu_read_unlock();
    return n;
}

/* Stops every entry: AR_SHUTDOWN, then AR_KILL to those still alive after
 * reap_timeout_ms, and waits until none is left. Each one's end arrives as its exit note;
 * a last sweep covers notes that were on their way before the stop began. */
static void stop_entries(ar_proc_t *self, ar_registry_t *r)
{
    size_t left = signal_entries(r, AR_SHUTDOWN);
    uint64_t deadline = ar__now_ns() + (uint64_t)r->cfg.reap_timeout_ms * 1000000u;
    while (left) {
        uint64_t now = ar__now_ns();
        int ms = now >= deadline ? 0 : (int)((deadline - now) / 1000000u) + 1;
        ar_msg_t *m;
        if (ms == 0 || ar__receive(self, is_exit_note, NULL, ms, &m, true) != 0) break;
        /* only the end of an incarnation it told to stop counts: notes of ends from
         * before the stop may still be queued (an entry is freed only by this process,
         * which handles no note any more, so m->ref is still the entry) */
        struct reg_entry *e = (struct reg_entry *)(uintptr_t)m->ref;
        if (e->stop_signalled && m->from.lo == atomic_load_explicit(&e->pid_lo, memory_order_relaxed)) {
            e->stop_signalled = false;
            left--;
        }
        ar_msg_release(self, m);
    }
    while (signal_entries(r, AR_KILL)) /* what a terminate still holds, and stragglers */
        if (ar_sleep(self, 1) != 0) sched_yield(); /* no stack to park on: wait anyway */
}

/* Takes every entry out of the table and frees it (what is held is refused). No entry
 * process runs any more, but a caller starting a key may still hold its entry: that one
 * is left to the caller. */
static void remove_all(ar_registry_t *r)
{
    struct cds_lfht_iter it;
    struct reg_entry *e;
    ar__rcu_read_lock();
    cds_lfht_for_each_entry(r->keys, &it, e, ln)
    {
        reg_lock(e);
        reg_fail_held(e, AR_ENOPROC);
        bool theirs = e->winner_starts;
        bool mine = reg_remove(e);
        reg_unlock(e);
        if (mine && !theirs) reg_entry_free_later(e);
    }
    ar__rcu_read_unlock();
}

/* The rest of a registry whose process is gone: its table (nothing reads it any more). */
static void release_table(ar_registry_t *r)
{
    if (!r->keys) return;
    while (atomic_load_explicit(&r->growing, memory_order_acquire)) /* a resize of it runs */
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    remove_all(r);
    pthread_mutex_lock(&r->orphans_lock);
    r->released = true;
    struct reg_entry *orphans = r->orphans;
    r->orphans = NULL;
    pthread_mutex_unlock(&r->orphans_lock);
    while (orphans) {
        struct reg_entry *next = (struct reg_entry *)orphans->held;
        reg_entry_free_later(orphans);
        orphans = next;
    }
    ar__rcu_barrier(); /* the frees, and any REAP still waiting for its grace period */
    ar__lfht_destroy(r->keys);
    r->keys = NULL;
}

/* Waits for callers that are starting a key (their init runs) to publish it, so the stop
 * finds and stops those entries too; at most reap_timeout_ms (a starter still running
 * then finds its entry removed and stops its process itself). */
static void wait_starters(ar_proc_t *self, ar_registry_t *r)
{
    uint64_t deadline = ar__now_ns() + (uint64_t)r->cfg.reap_timeout_ms * 1000000u;
    while (atomic_load_explicit(&r->starters, memory_order_seq_cst) && ar__now_ns() < deadline)
        if (ar_sleep(self, 1) != 0) sched_yield();
}

static void registry_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    ar_registry_t *r = state;
    atomic_store_explicit(&r->closed, 1, memory_order_seq_cst);
    ar__rcu_synchronize(); /* no sender is between its check and its push any more */
    wait_starters(self, r);
    stop_entries(self, r);
    release_table(r);
}

const ar_behaviour_t ar_registry = {
    .name = "ar_registry",
    .init = registry_init,
    .handle = registry_handle,
    .terminate = registry_terminate,
};

/* ---- the API ---- */

static ar_registry_t *by_pid(ar_node_t *node, ar_pid_t pid)
{
    pthread_mutex_lock(list_lock(node));
    ar_registry_t *r = node->registries;
    while (r && !ar_pid_eq(r->pid, pid)) r = r->next;
    pthread_mutex_unlock(list_lock(node));
    return r;
}

static int check_config(const ar_registry_config_t *cfg)
{
    if (!cfg || !cfg->behaviour || !cfg->behaviour->handle || cfg->idle_ms < 0 ||
        cfg->reap_timeout_ms < 0)
        return AR_EINVAL;
    return cfg->name && !ar__name_valid(cfg->name) ? AR_EINVAL : 0;
}

int ar_registry_start(ar_node_t *node, const ar_registry_config_t *cfg, ar_registry_t **out)
{
    if (!node || !out) return AR_EINVAL;
    *out = NULL;
    int rc = check_config(cfg);
    if (rc) return rc;
    ar_pid_t pid;
    if ((rc = ar_spawn(node, &ar_registry, (void *)cfg, NULL, &pid)) != 0) return rc;
    *out = by_pid(node, pid);
    return *out ? 0 : AR_ENOPROC; /* it was stopped at once */
}

ar_registry_t *ar_registry_find(ar_node_t *node, const char *name)
{
    if (!node || !name) return NULL;
    ar_pid_t pid = ar_whereis(node, name);
    if (ar_pid_is_none(pid)) return NULL;
    ar_registry_t *r = by_pid(node, pid);
    return r && !atomic_load_explicit(&r->closed, memory_order_acquire) ? r : NULL;
}

ar_pid_t ar_registry_pid(ar_registry_t *r) { return r ? r->pid : AR_PID_NONE; }

int ar_registry_stop(ar_registry_t *r)
{
    if (!r) return AR_EINVAL;
    ar_node_t *node = r->node;
    ar_proc_t *self = ar__current_proc();
    if (self && self->node == node && ar_pid_eq(ar__proc_pid(self), r->pid)) return AR_EDEADLK;
    /* its terminate stops the entries and frees the table */
    ar_exit(node, r->pid, AR_REASON(AR_SHUTDOWN));
    reg_await_end(node, r->pid, UINT64_MAX / 2000000u);
    return 0;
}

void ar__registries_release(ar_node_t *node)
{
    ar_registry_t *r = node->registries;
    node->registries = NULL;
    while (r) {
        ar_registry_t *next = r->next;
        release_table(r); /* only if its terminate was cut short */
        pthread_mutex_destroy(&r->orphans_lock);
        ar__free((char *)r->cfg.name);
        ar__free(r);
        r = next;
    }
}
