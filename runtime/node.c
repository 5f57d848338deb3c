/* The node: configuration, start, wait, and the ordered stop.
 *
 * Start builds the process table, pools, timers, the scheduler threads and the I/O
 * thread, in that order; a failure undoes what was built.
 *
 * Stop is a handshake, never a poll: it refuses new spawns, then ends the top-level
 * processes one at a time, newest first, each with AR_SHUTDOWN, waiting for its DOWN (the
 * stopping thread monitors it from a waiter) for as long as it takes or until the
 * deadline; then sends AR_SHUTDOWN once to whatever is left and waits for the last exit
 * to wake it; when the deadline passes, it sends AR_KILL once to what is still alive and
 * waits again. A process already in its terminate is never cut short by the shutdown,
 * only by the deadline's kill. Then it waits for calls from other threads still inside
 * the node, and only then joins the threads and frees the node.
 */
#include "internal.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_MESSAGE (64u * 1024 * 1024)
#define DEFAULT_STACK (64u * 1024)
#define MIN_STACK (16u * 1024) /* below this a handler can hardly call libc */
/* An envelope's capacity is 32 bits and its header must fit beside the payload. */
#define MAX_MESSAGE_LIMIT (UINT32_MAX - 1024u)
#define DEFAULT_SPIN_US 50
#define MAX_SCHEDULERS 1024
/* How long a stop short of memory waits before it tries again. */
#define OOM_RETRY_NS 1000000L

static _Atomic uint32_t nodes_started;

void ar_node_config_init(ar_node_config_t *cfg)
{
    if (cfg) memset(cfg, 0, sizeof *cfg);
}

ar_ref_t ar__make_ref(ar_node_t *node)
{
    /* even numbers: odd ones mark ar_call's refs (send.c) */
    return atomic_fetch_add_explicit(&node->next_ref, 2, memory_order_relaxed);
}

static bool on_own_thread(ar_node_t *node)
{
    ar__sched_t *s = ar__current_sched();
    return s && s->node == node;
}

static void node_free(ar_node_t *node)
{
    ar__events_destroy(node); /* its thread first: callbacks may still use the node */
    ar__registries_release(node);
    ar__dist_free(node);
    ar__sockets_free(node);
    ar__names_destroy(node); /* waits for the frees still pending: before anything else goes */
    ar__sched_free(node);
    ar__stacks_destroy(node);
    ar__timers_destroy(node);
    ar__depot_destroy(&node->depot);
    ar__proc_table_destroy(node);
    pthread_mutex_destroy(&node->registries_lock);
    pthread_mutex_destroy(&node->inject_lock);
    pthread_mutex_destroy(&node->idle_lock);
    pthread_mutex_destroy(&node->top_lock);
    pthread_mutex_destroy(&node->exit_lock);
    pthread_mutex_destroy(&node->stack_lock);
    pthread_cond_destroy(&node->exit_cond);
    ar__sem_destroy(&node->stop_sem);
    ar__sem_destroy(&node->outside_sem);
    ar__free(node->top);
    ar__free(node->top_snap);
    ar__free((char *)node->cfg.name);
    ar__free((char *)node->cfg.listen);
    ar__free((char *)node->cfg.cookie);
    ar__free(node);
}

int ar_node_start(const ar_node_config_t *cfg_in, ar_node_t **out)
{
    ar_node_config_t cfg;
    if (!out) return AR_EINVAL;
    *out = NULL;
    if (cfg_in)
        cfg = *cfg_in;
    else
        ar_node_config_init(&cfg);
    if (cfg.schedulers > MAX_SCHEDULERS) return AR_EINVAL;
    if (cfg.name && !ar__node_name_valid(cfg.name, strlen(cfg.name))) return AR_EINVAL;
    /* secure by default: a node that listens authenticates its peers */
    if (cfg.listen && (!cfg.name || !cfg.cookie || !cfg.cookie[0])) return AR_EINVAL;
    if (cfg.stack_size && cfg.stack_size < MIN_STACK) return AR_EINVAL;
    if (cfg.max_message_bytes > MAX_MESSAGE_LIMIT) return AR_EINVAL;

    ar_node_t *node = ar__calloc(1, sizeof *node);
    if (!node) return AR_ENOMEM;
    atomic_fetch_add(&ar__nodes_running, 1);
    pthread_mutex_init(&node->inject_lock, NULL);
    pthread_mutex_init(&node->idle_lock, NULL);
    pthread_mutex_init(&node->top_lock, NULL);
    pthread_mutex_init(&node->exit_lock, NULL);
    pthread_mutex_init(&node->stack_lock, NULL);
    pthread_mutex_init(&node->registries_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&node->exit_cond, &ca);
    pthread_condattr_destroy(&ca);
    ar__sem_init(&node->stop_sem);
    ar__sem_init(&node->outside_sem);
    ar__depot_init(&node->depot);
    ar__proc_table_init(node);

    node->cfg = cfg;
    node->cfg.name = node->cfg.listen = node->cfg.cookie = NULL;
    int rc = AR_ENOMEM;
    if ((cfg.name && !(node->cfg.name = ar__strdup(cfg.name))) ||
        (cfg.listen && !(node->cfg.listen = ar__strdup(cfg.listen))) ||
        (cfg.cookie && !(node->cfg.cookie = ar__strdup(cfg.cookie))))
        goto fail;
    if (!node->cfg.max_message_bytes) node->cfg.max_message_bytes = DEFAULT_MAX_MESSAGE;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    node->nsched = cfg.schedulers ? cfg.schedulers : (unsigned)(ncpu > 0 ? ncpu : 1);
    node->stack_size = cfg.stack_size ? cfg.stack_size : DEFAULT_STACK;
    node->spin_ns = (uint64_t)(cfg.spin_us ? cfg.spin_us : DEFAULT_SPIN_US) * 1000u;
    uint32_t incarnation = 0;
    if (getrandom(&incarnation, sizeof incarnation, 0) != sizeof incarnation)
        incarnation = (uint32_t)ar__now_ns();
    /* a named node's id comes from its name, so that every node agrees on it; a node of
     * its own counts (ids below 2^31) */
    uint32_t id = cfg.name ? ar__node_id_of(cfg.name) : atomic_fetch_add(&nodes_started, 1) + 1;
    node->pid_hi = ((uint64_t)(incarnation | 1) << 32) | id;
    if (cfg.name) ar__node_names_note(id, cfg.name);
    atomic_init(&node->next_ref, 2);
    node->start_ns = ar__now_ns();

    if (getrandom(&node->hash_seed, sizeof node->hash_seed, 0) != sizeof node->hash_seed)
        node->hash_seed = ar__now_ns() ^ node->pid_hi;
    if ((rc = ar__timers_init(node)) != 0 || (rc = ar__names_init(node)) != 0) goto fail;
    if ((rc = ar__events_init(node)) != 0 || (rc = ar__crash_report_start(node)) != 0) goto fail;
    if ((rc = ar__sockets_init(node)) != 0) goto fail;
    ar__stack_signals_init();
    if ((rc = ar__sched_start(node)) != 0) goto fail;
    if ((rc = ar__loop_start(node)) != 0) {
        ar__sched_stop(node);
        goto fail;
    }
    if ((rc = ar__dist_start(node)) != 0) {
        ar__loop_stop(node);
        ar__sched_stop(node);
        goto fail;
    }
    *out = node;
    return 0;
fail:
    node_free(node);
    atomic_fetch_sub(&ar__nodes_running, 1);
    return rc;
}

int ar_node_wait(ar_node_t *node)
{
    if (!node) return AR_EINVAL;
    if (on_own_thread(node)) return AR_EDEADLK;
    while (!atomic_load_explicit(&node->stop_requested, memory_order_acquire))
        ar__sem_wait(&node->stop_sem, NULL);
    ar__sem_post(&node->stop_sem); /* let any other waiter through too */
    return 0;
}

void ar_node_request_stop(ar_node_t *node)
{
    if (!node) return;
    atomic_store_explicit(&node->stop_requested, 1, memory_order_release);
    ar__sem_post(&node->stop_sem); /* async-signal-safe */
}

/* ---- stopping ---- */
void ar__note_exit(ar_node_t *node)
{
    /* seq_cst, as ar_node_stop's count of waiters and its read of live: either it sees
     * none alive, or this sees it waiting and wakes it */
    if (atomic_fetch_sub_explicit(&node->live, 1, memory_order_seq_cst) != 1) return;
    if (atomic_load_explicit(&node->exit_waiters, memory_order_seq_cst) > 0) {
        pthread_mutex_lock(&node->exit_lock);
        pthread_cond_broadcast(&node->exit_cond);
        pthread_mutex_unlock(&node->exit_lock);
    }
}

bool ar__outside_enter(ar_node_t *node)
{
    if (on_own_thread(node)) return false; /* the node's own threads outlive any call */
    /* seq_cst: see ar__outside_leave */
    atomic_fetch_add_explicit(&node->outside, 1, memory_order_seq_cst);
    return true;
}

void ar__outside_leave(ar_node_t *node)
{
    /* seq_cst, as the stopper's flag and its read of the count: the last call to leave a
     * stopping node wakes the stopper */
    if (atomic_fetch_sub_explicit(&node->outside, 1, memory_order_seq_cst) == 1 &&
        atomic_load_explicit(&node->stopping, memory_order_seq_cst))
        ar__sem_post(&node->outside_sem);
}

static struct timespec monotonic_ts(uint64_t ns)
{
    return (struct timespec){(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
}

/* Out of memory, the stop waits a moment and tries again: memory comes back as processes
 * end. false once the deadline (0: none) has passed. */
static bool retry_later(uint64_t until)
{
    if (until && ar__now_ns() >= until) return false;
    struct timespec ts = {0, OOM_RETRY_NS};
    nanosleep(&ts, NULL);
    return true;
}

static bool down_of(ar__env_t *e, void *arg)
{
    return e->kind == ENV_MSG && e->msg.kind == AR_MSG_DOWN && e->msg.ref == *(ar_ref_t *)arg;
}

/* Stops one top-level process and waits for its DOWN; false when the deadline passed. */
static bool stop_one(ar_node_t *node, ar__waiter_t *w, ar_pid_t pid, uint64_t until)
{
    ar_ref_t ref;
    while (ar__monitor(w->p, pid, &ref) != 0)
        if (!retry_later(until)) return false;
    while (ar__send_exit(node, AR_PID_NONE, pid, AR_REASON(AR_SHUTDOWN), ENVF_STOP) == AR_ENOMEM)
        if (!retry_later(until)) return false;
    struct timespec ts = monotonic_ts(until);
    ar__env_t *down = ar__waiter_wait(w, down_of, &ref, until ? &ts : NULL);
    ar__env_free(down);
    return down != NULL;
}

/* The top-level processes, newest first. false when the deadline passed. */
static bool stop_toplevel(ar_node_t *node, ar__waiter_t *w, uint64_t until)
{
    /* the snapshot's room was reserved with each spawn; no spawn grows it any more */
    pthread_mutex_lock(&node->top_lock);
    size_t n = node->ntop;
    if (n) memcpy(node->top_snap, node->top, n * sizeof *node->top);
    pthread_mutex_unlock(&node->top_lock);
    for (size_t i = n; i-- > 0;)
        if (!stop_one(node, w, (ar_pid_t){node->pid_hi, node->top_snap[i]}, until)) return false;
    return true;
}

/* Sends code to every live process once (the stop's own waiter aside). */
static void signal_all(ar_node_t *node, ar_exit_code_t code, uint64_t until)
{
    for (;;) {
        bool short_of_memory = false;
        uint32_t nchunks = atomic_load_explicit(&node->ptab.nchunks, memory_order_acquire);
        for (uint32_t c = 0; c < nchunks; c++) {
            ar_proc_t *chunk = atomic_load_explicit(&node->ptab.chunks[c], memory_order_acquire);
            for (uint32_t i = 0; i < AR__CHUNK_PROCS; i++) {
                ar_proc_t *p = &chunk[i];
                /* seq_cst: pairs with a spawn's publication (proc.c, publish) */
                uint64_t lo = atomic_load_explicit(&p->pid_lo, memory_order_seq_cst);
                if (!lo || (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_FOREIGN))
                    continue;
                if (ar__send_exit(node, AR_PID_NONE, (ar_pid_t){node->pid_hi, lo},
                                  AR_REASON(code), ENVF_STOP) == AR_ENOMEM)
                    short_of_memory = true;
            }
        }
        /* again for those it could not reach: a second stop signal changes nothing */
        if (!short_of_memory || !retry_later(code == AR_KILL ? 0 : until)) return;
    }
}

/* Waits for the last process to end; false when the deadline (0: none) passed first. */
static bool wait_none_alive(ar_node_t *node, uint64_t until)
{
    bool none;
    atomic_fetch_add_explicit(&node->exit_waiters, 1, memory_order_seq_cst);
    pthread_mutex_lock(&node->exit_lock);
    while (!(none = atomic_load_explicit(&node->live, memory_order_seq_cst) == 0)) {
        if (!until) {
            pthread_cond_wait(&node->exit_cond, &node->exit_lock);
            continue;
        }
        if (ar__now_ns() >= until) break;
        struct timespec ts = monotonic_ts(until);
        pthread_cond_timedwait(&node->exit_cond, &node->exit_lock, &ts);
    }
    pthread_mutex_unlock(&node->exit_lock);
    atomic_fetch_sub_explicit(&node->exit_waiters, 1, memory_order_relaxed);
    return none;
}

/* Calls from other threads still inside the node finish before it is freed. */
static void wait_outside_calls(ar_node_t *node)
{
    while (atomic_load_explicit(&node->outside, memory_order_seq_cst) > 0)
        ar__sem_wait(&node->outside_sem, NULL);
}

int ar_node_stop(ar_node_t *node, int timeout_ms)
{
    if (!node || !ar__timeout_ok(timeout_ms)) return AR_EINVAL;
    if (on_own_thread(node) || ar__events_on_thread(node)) return AR_EDEADLK;
    /* seq_cst: pairs with a spawn's publication, and with ar__outside_leave */
    atomic_store_explicit(&node->stopping, 1, memory_order_seq_cst);
    uint64_t until = timeout_ms == AR_INFINITY ? 0 : ar__now_ns() + (uint64_t)timeout_ms * 1000000u;
    bool in_time = true;
    ar__waiter_t w;
    while (ar__waiter_open(node, &w) != 0)
        if (!(in_time = retry_later(until))) break;
    if (in_time) {
        in_time = stop_toplevel(node, &w, until);
        ar__waiter_close(&w);
    }
    if (in_time) {
        signal_all(node, AR_SHUTDOWN, until);
        in_time = wait_none_alive(node, until);
    }
    if (!in_time) { /* the deadline passed: kill what is left */
        signal_all(node, AR_KILL, 0);
        wait_none_alive(node, 0);
    }
    ar__events_stop(node); /* what is buffered reaches the function subscribers first */
    /* connections close, and what waits on them is answered (a foreign thread's call to
     * a remote pid among them): nothing waits on the network */
    ar__dist_stop(node);
    ar__sockets_stop(node); /* every owner is gone: what still drains closes */
    wait_outside_calls(node);
    ar__loop_stop(node);
    ar__sched_stop(node);
    node_free(node);
    atomic_fetch_sub(&ar__nodes_running, 1);
    return in_time ? 0 : AR_ETIMEDOUT;
}
