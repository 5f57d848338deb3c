/* Registered names: a lock-free hash table (liburcu's cds_lfht) from name to pid, read
 * by ar_whereis from any thread without a lock, and a pointer in each process to its one
 * name.
 *
 * A process's name pointer settles the races between registering, unregistering and
 * ending. A free slot holds ENDED, a new process NULL (or CLAIMING, when it is spawned with
 * a name). A registration first claims it (NULL -> CLAIMING: one name per process), then
 * adds the name to the table, then stores it; the exit sequence swaps in ENDED (waiting
 * out a claim in progress, which never parks) and removes the name it finds. So a name is
 * gone from the table before the process unpublishes its pid and before any DOWN or EXIT
 * of it is sent. Whoever removes a name from the table frees it, after a grace period,
 * and only once the owner's pointer has let go of it.
 */
#include "internal.h"

#include <sched.h>
#include <string.h>

struct ar__name {
    struct cds_lfht_node ln;
    struct rcu_head rcu;
    ar_pid_t pid;
    size_t len;
    char text[]; /* len bytes and a NUL */
};

struct name_key {
    const char *text;
    size_t len;
};

static bool is_name(const struct ar__name *n) { return n > AR__NAME_ENDED; }

/* REGISTER or UNREGISTER, when anyone listens (one relaxed load when nobody does). */
static void name_event(ar_node_t *node, ar_event_kind_t kind, ar_pid_t pid, const char *text)
{
    if (!ar__events_wanted(node, kind)) return;
    ar_event_t e = {.kind = kind, .pid = pid, .name = text};
    ar__events_publish(node, &e);
}

static int match(struct cds_lfht_node *ln, const void *key)
{
    const struct ar__name *n = caa_container_of(ln, struct ar__name, ln);
    const struct name_key *k = key;
    ar__rcu_seen((void *)n);
    return n->len == k->len && memcmp(n->text, k->text, k->len) == 0;
}

static int check_name(const char *name, size_t *len)
{
    if (!name) return AR_EINVAL;
    *len = strnlen(name, AR_NAME_MAX);
    return *len == 0 || *len >= AR_NAME_MAX ? AR_EINVAL : 0;
}

bool ar__name_valid(const char *name)
{
    size_t len;
    return check_name(name, &len) == 0;
}

static struct ar__name *name_new(ar_pid_t pid, const char *text, size_t len)
{
    struct ar__name *n = ar__malloc(sizeof *n + len + 1);
    if (!n) return NULL;
    cds_lfht_node_init(&n->ln);
    n->pid = pid;
    n->len = len;
    memcpy(n->text, text, len);
    n->text[len] = '\0';
    return n;
}

static void name_reclaim(struct rcu_head *h)
{
    ar__rcu_reclaimed(h);
    ar__free(caa_container_of(h, struct ar__name, rcu));
    ar__rcu_callback_done();
}

/* Under a read-side section: the name's entry, or NULL. */
static struct ar__name *find(ar_node_t *node, const char *text, size_t len)
{
    struct name_key k = {text, len};
    struct cds_lfht_iter it;
    cds_lfht_lookup(node->names, ar__hash(text, len, node->hash_seed), match, &k, &it);
    struct cds_lfht_node *ln = cds_lfht_iter_get_node(&it);
    return ln ? caa_container_of(ln, struct ar__name, ln) : NULL;
}

/* Under a read-side section: adds n unless its name is taken. */
static bool add(ar_node_t *node, struct ar__name *n)
{
    struct name_key k = {n->text, n->len};
    ar__rcu_published(n);
    struct cds_lfht_node *got =
        cds_lfht_add_unique(node->names, ar__hash(n->text, n->len, node->hash_seed), match, &k, &n->ln);
    return got == &n->ln;
}

/* Under a read-side section: removes n from the table; whoever succeeds frees it. */
static bool remove_name(ar_node_t *node, struct ar__name *n)
{
    if (cds_lfht_del(node->names, &n->ln) != 0) return false;
    ar__rcu_call(&n->rcu, name_reclaim);
    return true;
}

int ar__names_init(ar_node_t *node)
{
    node->names = ar__lfht_new(64);
    return node->names ? 0 : AR_ENOMEM;
}

void ar__names_destroy(ar_node_t *node)
{
    if (!node->names) return;
    /* every process ended and took its name along: nothing is left but to wait for the
     * frees still pending, which run with the allocator hook the node started with */
    ar__rcu_barrier();
    ar__lfht_destroy(node->names);
    node->names = NULL;
}

int ar__names_claim(ar_proc_t *p, ar_pid_t pid, const char *text)
{
    /* p->name holds CLAIMING since before p was published: only this thread moves it */
    ar_node_t *node = p->node;
    size_t len = strlen(text);
    struct ar__name *n = name_new(pid, text, len);
    bool added = false;
    if (n) {
        ar__rcu_read_lock();
        added = add(node, n);
        ar__rcu_read_unlock();
    }
    atomic_store_explicit(&p->name, added ? n : NULL, memory_order_release);
    if (added) {
        name_event(node, AR_EV_REGISTER, pid, text);
        return 0;
    }
    ar__free(n);
    return n ? AR_EEXIST : AR_ENOMEM;
}

void ar__names_release_held(ar_proc_t *p, char *out)
{
    /* a name is read under a read-side section from the moment it is loaded: an
     * ar_unregister may free it after a grace period */
    ar__rcu_read_lock();
    struct ar__name *n = atomic_load_explicit(&p->name, memory_order_acquire);
    for (;;) {
        if (n == AR__NAME_CLAIMING) { /* a registration is under way: it never parks */
            sched_yield();
            n = atomic_load_explicit(&p->name, memory_order_acquire);
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&p->name, &n, AR__NAME_ENDED,
                                                  memory_order_acq_rel, memory_order_acquire))
            break;
    }
    if (!is_name(n)) {
        ar__rcu_read_unlock();
        return;
    }
    memcpy(out, n->text, n->len + 1);
    bool removed = remove_name(p->node, n); /* else ar_unregister took it out first */
    ar__rcu_read_unlock();
    if (removed) name_event(p->node, AR_EV_UNREGISTER, ar__proc_pid(p), out);
}

bool ar__names_of(ar_proc_t *p, char *out)
{
    out[0] = '\0';
    ar__rcu_read_lock();
    struct ar__name *n = atomic_load_explicit(&p->name, memory_order_acquire);
    if (is_name(n)) memcpy(out, n->text, n->len + 1);
    ar__rcu_read_unlock();
    return out[0] != '\0';
}

/* Claims p's one name for a registration: 0, AR_EALREADY, or AR_ENOPROC (it ends). */
static int claim(ar_proc_t *p, ar_pid_t pid)
{
    struct ar__name *none = NULL;
    while (!atomic_compare_exchange_strong_explicit(&p->name, &none, AR__NAME_CLAIMING,
                                                    memory_order_acq_rel, memory_order_acquire)) {
        if (none == AR__NAME_ENDED || atomic_load_explicit(&p->pid_lo, memory_order_acquire) != pid.lo)
            return AR_ENOPROC; /* it ends, or the slot is someone else's now */
        if (none != AR__NAME_CLAIMING) return AR_EALREADY;
        sched_yield(); /* another claim is under way: it never parks */
        none = NULL;
    }
    /* the slot may have a new occupant since the lookup: then that one is not ours */
    if (atomic_load_explicit(&p->pid_lo, memory_order_acquire) != pid.lo) {
        atomic_store_explicit(&p->name, NULL, memory_order_release);
        return AR_ENOPROC;
    }
    return 0;
}

static int do_register(ar_node_t *node, const char *text, size_t len, ar_pid_t pid)
{
    struct ar__name *n = name_new(pid, text, len);
    if (!n) return AR_ENOMEM;
    int rc;
    ar__rcu_read_lock();
    ar_proc_t *p = ar__proc_lookup(node, pid);
    if (!p || (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_FOREIGN))
        rc = AR_ENOPROC;
    else if ((rc = claim(p, pid)) == 0) {
        bool added = add(node, n);
        /* only this thread moves the pointer on from CLAIMING: the exit sequence waits */
        atomic_store_explicit(&p->name, added ? n : NULL, memory_order_release);
        if (added) n = NULL;
        else rc = AR_EEXIST;
    }
    ar__rcu_read_unlock();
    if (rc == 0) name_event(node, AR_EV_REGISTER, pid, text);
    ar__free(n);
    return rc;
}

int ar_register(ar_node_t *node, const char *name, ar_pid_t pid)
{
    size_t len;
    if (!node || check_name(name, &len)) return AR_EINVAL;
    if (ar_pid_is_none(pid)) return AR_ENOPROC;
    bool outside = ar__outside_enter(node);
    int rc = do_register(node, name, len, pid);
    if (outside) ar__outside_leave(node);
    return rc;
}

static int do_unregister(ar_node_t *node, const char *text, size_t len)
{
    int rc = AR_ENOENT;
    ar_pid_t owner = AR_PID_NONE;
    ar__rcu_read_lock();
    struct ar__name *n = find(node, text, len);
    if (n && cds_lfht_del(node->names, &n->ln) == 0) {
        rc = 0;
        owner = n->pid;
        /* The owner may take a name again (unless it ends meanwhile: then it holds
         * ENDED). Its registration may still be storing n: that is waited out (it never
         * parks), so the owner lets go of n before n's grace period begins. */
        ar_proc_t *p = ar__proc_lookup(node, n->pid);
        for (struct ar__name *expect = n; p; expect = n) {
            if (atomic_compare_exchange_strong_explicit(&p->name, &expect, NULL,
                                                        memory_order_acq_rel, memory_order_acquire) ||
                expect != AR__NAME_CLAIMING)
                break;
            sched_yield();
        }
        ar__rcu_call(&n->rcu, name_reclaim);
    }
    ar__rcu_read_unlock();
    if (rc == 0) name_event(node, AR_EV_UNREGISTER, owner, text);
    return rc;
}

int ar_unregister(ar_node_t *node, const char *name)
{
    size_t len;
    if (!node || check_name(name, &len)) return AR_EINVAL;
    bool outside = ar__outside_enter(node);
    int rc = do_unregister(node, name, len);
    if (outside) ar__outside_leave(node);
    return rc;
}

ar_pid_t ar_whereis(ar_node_t *node, const char *name)
{
    size_t len;
    if (!node || check_name(name, &len)) return AR_PID_NONE;
    ar_pid_t pid = AR_PID_NONE;
    bool outside = ar__outside_enter(node);
    ar__rcu_read_lock();
    struct ar__name *n = find(node, name, len);
    if (n) pid = n->pid;
    ar__rcu_read_unlock();
    if (outside) ar__outside_leave(node);
    return pid;
}
