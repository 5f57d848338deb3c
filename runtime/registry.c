/* The keyed registry: the key table and the senders' side (see registry.h for the entry
 * states). Sends and calls to a LIVE entry look the key up and route to its pid without a
 * lock and without the registry's process; a missing key is started by the caller itself
 * (init runs in the caller's turn, never in the registry's), and a key that is starting,
 * being reaped or known to have ended has its messages held in the entry until the next
 * incarnation can take them.
 */
#include "registry.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>

struct key_ref {
    const void *data;
    size_t len;
};

static int match(struct cds_lfht_node *ln, const void *key)
{
    const struct reg_entry *e = caa_container_of(ln, struct reg_entry, ln);
    const struct key_ref *k = key;
    ar__rcu_seen((void *)e);
    return e->keylen == k->len && memcmp(e->key, k->data, k->len) == 0;
}

void reg_lock(struct reg_entry *e)
{
    /* held for a few pushes at most, never across a park */
    while (atomic_flag_test_and_set_explicit(&e->lock, memory_order_acquire)) sched_yield();
}

void reg_unlock(struct reg_entry *e) { atomic_flag_clear_explicit(&e->lock, memory_order_release); }

static void hold(struct reg_entry *e, ar__env_t *env)
{
    atomic_store_explicit(&env->q.next, NULL, memory_order_relaxed);
    if (e->held_tail)
        atomic_store_explicit(&e->held_tail->q.next, &env->q, memory_order_relaxed);
    else
        e->held = env;
    e->held_tail = env;
}

/* Holds a GET for rt: the caller of get_or_spawn waits for the pid it will be told. */
static int hold_get(struct reg_entry *e, ar_reply_to_t rt)
{
    ar__env_t *get = ar__env_new(sizeof(struct reg_got));
    if (!get) return AR_ENOMEM;
    get->msg.kind = AR_MSG_CALL;
    get->msg.reply_to = rt;
    get->xflags = XF_GET;
    hold(e, get);
    return 0;
}

static ar__env_t *unhold(struct reg_entry *e)
{
    ar__env_t *env = e->held;
    if (!env) return NULL;
    e->held = (ar__env_t *)atomic_load_explicit(&env->q.next, memory_order_relaxed);
    if (!e->held) e->held_tail = NULL;
    return env;
}

/* A held GET becomes its answer: rc and the pid, as the reply its caller waits for. */
static void answer_get(ar_node_t *node, ar__env_t *env, int rc, ar_pid_t pid)
{
    ar_reply_to_t rt = env->msg.reply_to;
    struct reg_got got = {rc, pid};
    memcpy(ar__env_payload(env), &got, sizeof got);
    env->kind = ENV_MSG;
    env->flags = ENVF_SYNC | ENVF_RELEASED;
    env->xflags = 0;
    env->msg.kind = AR_MSG_REPLY;
    env->msg.ref = rt.ref;
    env->msg.from = pid;
    env->msg.len = sizeof got;
    env->msg.reason = AR_REASON(AR_NORMAL);
    ar__route_or_dead_letter(node, rt.pid, env);
}

/* Puts env back at the head of what is held (a route that handed it back). */
static void hold_first(struct reg_entry *e, ar__env_t *env)
{
    atomic_store_explicit(&env->q.next, e->held ? &e->held->q : NULL, memory_order_relaxed);
    if (!e->held) e->held_tail = env;
    e->held = env;
}

bool reg_flush(struct reg_entry *e, ar_pid_t pid)
{
    ar_node_t *node = e->r->node;
    ar__env_t *env;
    /* off the list before it is routed: a push rewrites its link */
    while ((env = unhold(e)) != NULL) {
        if (env->xflags & XF_GET) {
            answer_get(node, env, 0, pid);
            continue;
        }
        if (ar__route(node, pid, env) != 0) { /* it ended: env stays first */
            hold_first(e, env);
            return false;
        }
    }
    return true;
}

void reg_fail_held(struct reg_entry *e, int rc)
{
    ar_node_t *node = e->r->node;
    ar__env_t *env;
    while ((env = unhold(e)) != NULL) {
        if (env->xflags & XF_GET)
            answer_get(node, env, rc, AR_PID_NONE);
        else /* a call's caller gets AR_ENOPROC; a cast is dropped and counted */
            ar__dead_letter(node, NULL, env, AR_REASON(AR_NOPROC));
    }
}

static void entry_reclaim(struct rcu_head *h)
{
    ar__rcu_reclaimed(h);
    ar__free(caa_container_of(h, struct reg_entry, rcu));
    ar__rcu_callback_done();
}

void reg_entry_free_later(struct reg_entry *e) { ar__rcu_call(&e->rcu, entry_reclaim); }

bool reg_remove(struct reg_entry *e)
{
    if (atomic_load_explicit(&e->state, memory_order_relaxed) == E_REMOVED) return false;
    reg_set_state(e, E_REMOVED);
    ar__rcu_read_lock();
    if (cds_lfht_del(e->r->keys, &e->ln) == 0)
        atomic_fetch_sub_explicit(&e->r->count, 1, memory_order_relaxed);
    ar__rcu_read_unlock();
    return true;
}

ar__env_t *reg_note_new(int tag, struct reg_entry *e, ar_pid_t pid)
{
    ar__env_t *env = ar__env_new(sizeof(struct reg_note));
    if (!env) return NULL;
    env->xflags = XF_REGISTRY;
    env->msg.tag = (uint32_t)tag;
    struct reg_note *n = ar__env_payload(env);
    memset(n, 0, sizeof *n);
    n->e = e;
    n->pid = pid;
    return env;
}

/* The incarnation's exit note: the registry hears of its end as an internal DOWN whose
 * ref is the entry (struct ar__spawn_extra). */
static ar__env_t *exit_note(void)
{
    ar__env_t *note = ar__env_new(0);
    if (note) note->xflags = XF_REGISTRY;
    return note;
}

int reg_spawn_sync(ar_registry_t *r, struct reg_entry *e, ar_pid_t *out)
{
    ar__env_t *note = exit_note();
    if (!note) return AR_ENOMEM;
    struct ar__spawn_extra x = {r->pid, note, r->pid, (ar_ref_t)(uintptr_t)e};
    return ar__spawn_keyed(r->node, &r->entry_b, e, &x, out); /* the note is the spawn's */
}

int reg_spawn_async(ar_registry_t *r, struct reg_entry *e)
{
    ar__env_t *note = exit_note();
    ar__env_t *started = note ? reg_note_new(REG_STARTED, e, AR_PID_NONE) : NULL;
    if (!started) {
        ar__env_free(note);
        return AR_ENOMEM;
    }
    struct ar__spawn_extra x = {r->pid, note, r->pid, (ar_ref_t)(uintptr_t)e};
    ar_pid_t pid;
    int rc = ar__spawn_async(r->node, &r->entry_b, e, &x, started, r->pid, &pid);
    if (rc) { /* the note was the spawn's; the notice is still ours */
        ar__env_free(started);
        return rc;
    }
    atomic_store_explicit(&e->pid_lo, pid.lo, memory_order_release);
    return 0;
}

/* ---- the senders' side ---- */

static int check_key(ar_key_t key)
{
    return !key.data || key.len == 0 || key.len > AR_KEY_MAX ? AR_EINVAL : 0;
}

/* Under a read-side section. */
static struct reg_entry *find(ar_registry_t *r, struct key_ref k, unsigned long hash)
{
    struct cds_lfht_iter it;
    cds_lfht_lookup(r->keys, hash, match, &k, &it);
    struct cds_lfht_node *ln = cds_lfht_iter_get_node(&it);
    return ln ? caa_container_of(ln, struct reg_entry, ln) : NULL;
}

enum mode { M_SEND, M_CALL, M_GET };
struct keyed {
    ar_registry_t *r;
    struct key_ref k;
    unsigned long hash;
    enum mode mode;
    bool missing;   /* a lookup just found no entry: try to add it first */
    ar__env_t *env; /* M_SEND, M_CALL: the message, the caller's until it is routed or held */
    ar_pid_t got;   /* M_GET: the pid, when answered at once */
};

#define LOST_RACE 1 /* another caller added the key first: look again */

/* Under e's lock: a key its starter gives up (its init failed, or the table is full):
 * out of the table, and what was held for it meanwhile is refused with rc. The starter
 * frees it (a stop that took it out first left it to the starter). */
static int undo_start(struct reg_entry *e, int rc)
{
    e->winner_starts = false;
    reg_fail_held(e, rc);
    reg_remove(e);
    reg_unlock(e);
    reg_entry_free_later(e);
    return rc;
}

static int start_key_counted(struct keyed *c, ar_reply_to_t rt, ar_pid_t *to);

/* liburcu grows a table lazily, from a count it commits only now and then, and under a
 * burst of new keys a growth can be missed until the count doubles again: chains grow to
 * thousands and every lookup crawls. So the registry asks for the size it needs itself
 * each time its count doubles, on a short-lived thread of its own (a resize waits for
 * grace periods: never on a scheduler). */
#define GROW_FIRST 4096
struct grow {
    ar_registry_t *r;
    unsigned long size;
};
static void *grow_main(void *arg)
{
    struct grow *g = arg;
    cds_lfht_resize(g->r->keys, g->size);
    atomic_fetch_sub_explicit(&g->r->growing, 1, memory_order_release);
    ar__free(g);
    return NULL;
}

/* Waits until pid has ended or ms have passed (a rare path: a poll every millisecond,
 * parked when the caller is a process); true if it ended. */
bool reg_await_end(ar_node_t *node, ar_pid_t pid, uint64_t ms)
{
    ar_proc_t *self = ar__current_proc();
    bool in_proc = self && self->node == node &&
                   !(atomic_load_explicit(&self->flags, memory_order_relaxed) & P_FOREIGN);
    uint64_t until = ar__now_ns() + ms * 1000000u;
    ar_proc_info_t info;
    while (ar_proc_info(node, pid, &info) == 0) {
        if (ar__now_ns() >= until) return false;
        if (!in_proc || ar_sleep(self, 1) != 0) nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return true;
}

/* Stops pid (AR_SHUTDOWN: its terminate runs; AR_KILL after reap_timeout_ms) and returns
 * once it has ended. */
static void stop_and_wait(ar_registry_t *r, ar_pid_t pid)
{
    ar_exit(r->node, pid, AR_REASON(AR_SHUTDOWN));
    if (reg_await_end(r->node, pid, (uint64_t)r->cfg.reap_timeout_ms)) return;
    ar_exit(r->node, pid, AR_REASON(AR_KILL));
    reg_await_end(r->node, pid, UINT64_MAX / 2000000u);
}

static void maybe_grow(ar_registry_t *r, size_t count)
{
    if (atomic_load_explicit(&r->closed, memory_order_seq_cst)) return; /* its table goes */
    size_t at = atomic_load_explicit(&r->grow_at, memory_order_relaxed);
    if (count < (at ? at : GROW_FIRST) ||
        !atomic_compare_exchange_strong_explicit(&r->grow_at, &at, (at ? at : GROW_FIRST) * 2,
                                                 memory_order_relaxed, memory_order_relaxed))
        return;
    struct grow *g = ar__malloc(sizeof *g);
    if (!g) return; /* liburcu's own growth still comes, later */
    g->r = r;
    g->size = 1;
    while (g->size < count * 2) g->size <<= 1;
    pthread_attr_t a;
    pthread_t t;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    atomic_fetch_add_explicit(&r->growing, 1, memory_order_acq_rel);
    if (pthread_create(&t, &a, grow_main, g) != 0) {
        atomic_fetch_sub_explicit(&r->growing, 1, memory_order_release);
        ar__free(g);
    }
    pthread_attr_destroy(&a);
}

/* The caller starts the key's first incarnation itself. Returns 0 (routed or held), 1
 * (M_GET answered), LOST_RACE, or an error. A stop of the registry waits for it. */
static int start_key(struct keyed *c, ar_reply_to_t rt, ar_pid_t *to)
{
    ar_registry_t *r = c->r;
    /* seq_cst, as the stop's closed flag and its wait: either the stop waits for this
     * start, or this start sees the registry closed */
    atomic_fetch_add_explicit(&r->starters, 1, memory_order_seq_cst);
    int rc = atomic_load_explicit(&r->closed, memory_order_seq_cst)
                 ? AR_ENOPROC
                 : start_key_counted(c, rt, to);
    atomic_fetch_sub_explicit(&r->starters, 1, memory_order_release);
    return rc;
}

static int start_key_counted(struct keyed *c, ar_reply_to_t rt, ar_pid_t *to)
{
    ar_registry_t *r = c->r;
    struct reg_entry *e = ar__calloc(1, sizeof *e + c->k.len);
    if (!e) return AR_ENOMEM;
    cds_lfht_node_init(&e->ln);
    e->r = r;
    atomic_flag_clear(&e->lock);
    atomic_init(&e->state, E_STARTING);
    e->winner_starts = true;
    e->keylen = (uint32_t)c->k.len;
    memcpy(e->key, c->k.data, c->k.len);
    ar__rcu_read_lock();
    ar__rcu_published(e);
    struct cds_lfht_node *got = cds_lfht_add_unique(r->keys, c->hash, match, &c->k, &e->ln);
    ar__rcu_read_unlock();
    if (got != &e->ln) {
        ar__free(e);
        return LOST_RACE;
    }
    /* counted once it is in: a caller that lost the race for this key never counts it */
    size_t max = r->cfg.max_entries;
    size_t before = atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
    if (before >= max && max) {
        reg_lock(e);
        return undo_start(e, AR_EAGAIN);
    }
    maybe_grow(r, before + 1);
    ar_pid_t pid = AR_PID_NONE;
    int rc = reg_spawn_sync(r, e, &pid);
    reg_lock(e);
    e->winner_starts = false;
    if (atomic_load_explicit(&e->state, memory_order_relaxed) == E_REMOVED ||
        atomic_load_explicit(&r->closed, memory_order_seq_cst)) {
        /* the registry stops: this start stops its own process (terminate runs), and
         * frees the entry only once that process, which uses it, has ended */
        reg_fail_held(e, AR_ENOPROC);
        reg_remove(e);
        reg_unlock(e);
        if (rc == 0) stop_and_wait(r, pid);
        /* its exit note may be on its way to the stopping registry, which reads the
         * entry: the registry frees it with its table, unless that is gone already */
        pthread_mutex_lock(&r->orphans_lock);
        bool later = !r->released;
        if (later) {
            e->held = (ar__env_t *)r->orphans; /* nothing is held any more: the link */
            r->orphans = e;
        }
        pthread_mutex_unlock(&r->orphans_lock);
        if (!later) reg_entry_free_later(e);
        return AR_ENOPROC;
    }
    if (rc) return undo_start(e, rc); /* its init failed: whoever waited learns why */
    atomic_store_explicit(&e->pid_lo, pid.lo, memory_order_release);
    int result = 0;
    if (c->mode == M_GET && !e->early_end) {
        c->got = pid;
        result = 1;
    } else if (c->mode != M_GET) {
        /* ours went first: whoever found the key starting came after */
        if (!e->early_end && ar__route(r->node, pid, c->env) == 0)
            *to = pid;
        else { /* it ended already: held for the next incarnation */
            hold_first(e, c->env);
            e->early_end = true;
        }
        c->env = NULL;
    }
    if (e->early_end) {
        /* its process ended before we could publish it (ar_stop in init); the registry
         * saw that end while the entry was starting and left the rest to us */
        if (c->mode == M_GET) result = hold_get(e, rt);
        e->early_end = false;
        atomic_store_explicit(&e->pid_lo, 0, memory_order_relaxed);
        if (!e->held || reg_spawn_async(r, e) != 0) {
            reg_fail_held(e, AR_ENOPROC);
            reg_remove(e);
            reg_unlock(e);
            reg_entry_free_later(e);
            return result < 0 ? result : AR_ENOPROC;
        }
        reg_unlock(e);
        return result;
    }
    reg_set_state(e, reg_flush(e, pid) ? E_LIVE : E_HOLDING);
    reg_unlock(e);
    return result;
}

/* Routes c's message (or answers c's GET) by key; the push of every registry send and
 * call. Returns 0 (routed or held; *to the pid it went to, or none if held), 1 (a GET
 * answered at once), or an error (c->env is still the caller's). */
static int keyed_route(void *ctx, ar_reply_to_t rt, ar_pid_t *to)
{
    struct keyed *c = ctx;
    ar_registry_t *r = c->r;
    ar_node_t *node = r->node;
    *to = AR_PID_NONE;
    for (;;) {
        if (c->missing) { /* adding finds a racing entry as well as a lookup would */
            c->missing = false;
            int rc = start_key(c, rt, to);
            if (rc != LOST_RACE) return rc;
        }
        ar__rcu_read_lock();
        if (atomic_load_explicit(&r->closed, memory_order_acquire)) {
            ar__rcu_read_unlock();
            return AR_ENOPROC;
        }
        struct reg_entry *e = find(r, c->k, c->hash);
        if (!e) {
            ar__rcu_read_unlock();
            int rc = start_key(c, rt, to);
            if (rc == LOST_RACE) continue;
            return rc;
        }
        uint64_t dead_lo = 0;
        if (atomic_load_explicit(&e->state, memory_order_acquire) == E_LIVE) {
            ar_pid_t pid = reg_entry_pid(e);
            if (c->mode == M_GET) {
                ar__rcu_read_unlock();
                c->got = pid;
                return 1;
            }
            if (c->mode == M_CALL && ar_pid_eq(pid, c->env->msg.reply_to.pid)) {
                ar__rcu_read_unlock();
                return AR_EDEADLK; /* the key's entry calling its own key */
            }
            int rc = ar__route(node, pid, c->env);
            if (rc != AR_ENOPROC) {
                ar__rcu_read_unlock();
                if (rc == 0) {
                    c->env = NULL;
                    *to = pid;
                }
                return rc;
            }
            dead_lo = pid.lo; /* it ended: the registry hears so by its exit note */
        }
        reg_lock(e);
        enum reg_state st = atomic_load_explicit(&e->state, memory_order_relaxed);
        if (st == E_LIVE && dead_lo && atomic_load_explicit(&e->pid_lo, memory_order_relaxed) == dead_lo) {
            reg_set_state(e, E_HOLDING);
            st = E_HOLDING;
        }
        if ((st == E_STARTING || st == E_HOLDING) && c->mode != M_SEND &&
            rt.pid.lo && atomic_load_explicit(&e->pid_lo, memory_order_relaxed) == rt.pid.lo &&
            ar_pid_eq(rt.pid, reg_entry_pid(e))) { /* the key's own process: held, it would wait on itself */
            reg_unlock(e);
            ar__rcu_read_unlock();
            if (c->mode == M_CALL) return AR_EDEADLK;
            c->got = rt.pid;
            return 1;
        }
        if (st == E_STARTING || st == E_HOLDING) {
            int rc = 0;
            if (c->mode == M_GET)
                rc = hold_get(e, rt);
            else {
                hold(e, c->env);
                c->env = NULL;
            }
            reg_unlock(e);
            ar__rcu_read_unlock();
            return rc;
        }
        reg_unlock(e); /* LIVE again, or removed: look again */
        ar__rcu_read_unlock();
    }
}

static ar__env_t *message(ar_registry_t *r, ar_msg_kind_t kind, uint32_t tag, const void *data,
                          size_t len)
{
    ar__env_t *env = ar__env_new(len);
    if (!env) return NULL;
    if (len) memcpy(ar__env_payload(env), data, len);
    env->flags = ENVF_COUNTED;
    env->msg.kind = kind;
    env->msg.tag = tag;
    ar_proc_t *self = ar__current_proc();
    if (self && self->node == r->node &&
        !(atomic_load_explicit(&self->flags, memory_order_relaxed) & P_FOREIGN))
        env->msg.from = ar__proc_pid(self);
    return env;
}

static void keyed_init(struct keyed *c, ar_registry_t *r, ar_key_t key, enum mode mode)
{
    c->r = r;
    c->k = (struct key_ref){key.data, key.len};
    c->hash = ar__hash(key.data, key.len, r->node->hash_seed);
    c->mode = mode;
    c->missing = false;
    c->env = NULL;
    c->got = AR_PID_NONE;
}

int ar_registry_send(ar_registry_t *r, ar_key_t key, uint32_t tag, const void *data, size_t len)
{
    if (!r || check_key(key)) return AR_EINVAL;
    ar_node_t *node = r->node;
    int rc = ar__check_payload(node, data, len);
    if (rc) return rc;
    struct keyed c;
    keyed_init(&c, r, key, M_SEND);
    if (!(c.env = message(r, AR_MSG_CAST, tag, data, len))) return AR_ENOMEM;
    bool outside = ar__outside_enter(node);
    ar_pid_t to;
    rc = keyed_route(&c, (ar_reply_to_t){AR_PID_NONE, 0}, &to);
    if (outside) ar__outside_leave(node);
    ar__env_free(c.env); /* not routed: still ours */
    if (rc == 0) ar__count(ar__current_sched(), node, AR__SENT);
    return rc;
}

/* A registry call's push: the CALL made with rt, routed by key. */
static int push_call(void *ctx, ar_reply_to_t rt, ar_pid_t *to)
{
    struct keyed *c = ctx;
    c->env->msg.reply_to = rt;
    return keyed_route(c, rt, to);
}

int ar_registry_call(ar_registry_t *r, ar_key_t key, uint32_t tag, const void *req, size_t len,
                     ar_buf_t *reply, int timeout_ms)
{
    if (!r || check_key(key) || !reply || !ar__timeout_ok(timeout_ms)) return AR_EINVAL;
    reply->data = NULL;
    reply->len = 0;
    ar_node_t *node = r->node;
    int rc = ar__check_payload(node, req, len);
    if (rc) return rc;
    struct keyed c;
    keyed_init(&c, r, key, M_CALL);
    if (!(c.env = message(r, AR_MSG_CALL, tag, req, len))) return AR_ENOMEM;
    rc = ar__call_with(node, push_call, &c, reply, timeout_ms);
    ar__env_free(c.env);
    return rc;
}

int ar_registry_get_or_spawn(ar_registry_t *r, ar_key_t key, ar_pid_t *out)
{
    if (!r || check_key(key)) return AR_EINVAL;
    struct keyed c;
    keyed_init(&c, r, key, M_GET);
    /* the hot case first: a LIVE key needs no wait, nor a waiter */
    ar__rcu_read_lock();
    struct reg_entry *e = atomic_load_explicit(&r->closed, memory_order_acquire)
                              ? NULL
                              : find(r, c.k, c.hash);
    bool live = e && atomic_load_explicit(&e->state, memory_order_acquire) == E_LIVE;
    if (live) c.got = reg_entry_pid(e);
    c.missing = !e;
    ar__rcu_read_unlock();
    if (!live) {
        ar_buf_t reply = {NULL, 0};
        int rc = ar__call_with(r->node, keyed_route, &c, &reply, AR_INFINITY);
        if (rc) return rc;
        if (reply.data) { /* answered by whoever started the key */
            struct reg_got got;
            memcpy(&got, reply.data, sizeof got);
            ar_buf_free(&reply);
            if (got.rc) return got.rc;
            c.got = got.pid;
        }
    }
    if (out) *out = c.got;
    return 0;
}

int ar_registry_lookup(ar_registry_t *r, ar_key_t key, ar_pid_t *out)
{
    if (!r || check_key(key) || !out) return AR_EINVAL;
    *out = AR_PID_NONE;
    struct key_ref k = {key.data, key.len};
    unsigned long hash = ar__hash(key.data, key.len, r->node->hash_seed);
    int rc = AR_ENOPROC;
    ar__rcu_read_lock();
    struct reg_entry *e = atomic_load_explicit(&r->closed, memory_order_acquire) ? NULL : find(r, k, hash);
    if (e && atomic_load_explicit(&e->state, memory_order_acquire) == E_LIVE) {
        *out = reg_entry_pid(e);
        rc = 0;
    }
    ar__rcu_read_unlock();
    return rc;
}

size_t ar_registry_count(ar_registry_t *r)
{
    return r ? atomic_load_explicit(&r->count, memory_order_relaxed) : 0;
}
