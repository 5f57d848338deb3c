/* The node: configuration, start, wait, and the ordered stop.
 *
 * Start builds the process table, pools, timers, the scheduler threads and the I/O
 * thread, in that order; a failure undoes what was built. Stop refuses new spawns, ends
 * the top-level processes one at a time in reverse spawn order with AR_SHUTDOWN, then
 * everything else, kills what is left when the timeout runs out, and only then joins the
 * threads and frees the node. Any thread but the node's own may start, wait and stop it.
 */
#include "internal.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_MESSAGE (64u * 1024 * 1024)
#define DEFAULT_STACK (64u * 1024)
#define DEFAULT_SPIN_US 50
#define MAX_SCHEDULERS 1024

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
    ar__sched_free(node);
    while (node->stacks) {
        ar__stack_t *st = node->stacks;
        node->stacks = st->next_free;
        ar__stack_destroy(st);
    }
    ar__timers_destroy(node);
    ar__depot_destroy(&node->depot);
    ar__proc_table_destroy(node);
    pthread_mutex_destroy(&node->inject_lock);
    pthread_mutex_destroy(&node->idle_lock);
    pthread_mutex_destroy(&node->top_lock);
    pthread_mutex_destroy(&node->exit_lock);
    pthread_mutex_destroy(&node->stack_lock);
    pthread_cond_destroy(&node->exit_cond);
    ar__sem_destroy(&node->stop_sem);
    ar__free(node->top);
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
    if (cfg.name && (strlen(cfg.name) == 0 || strlen(cfg.name) >= AR_NAME_MAX)) return AR_EINVAL;
    if (cfg.stack_size && cfg.stack_size < 16 * 1024) return AR_EINVAL;
    if (cfg.max_message_bytes > UINT32_MAX - 1024) return AR_EINVAL; /* envelope sizes */

    ar_node_t *node = ar__calloc(1, sizeof *node);
    if (!node) return AR_ENOMEM;
    atomic_fetch_add(&ar__nodes_running, 1);
    pthread_mutex_init(&node->inject_lock, NULL);
    pthread_mutex_init(&node->idle_lock, NULL);
    pthread_mutex_init(&node->top_lock, NULL);
    pthread_mutex_init(&node->exit_lock, NULL);
    pthread_mutex_init(&node->stack_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&node->exit_cond, &ca);
    pthread_condattr_destroy(&ca);
    ar__sem_init(&node->stop_sem);
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
    node->pid_hi = ((uint64_t)(incarnation | 1) << 32) |
                   (atomic_fetch_add(&nodes_started, 1) + 1);
    atomic_init(&node->next_ref, 2);
    node->start_ns = ar__now_ns();

    if ((rc = ar__timers_init(node)) != 0) goto fail;
    ar__stack_signals_init();
    if ((rc = ar__sched_start(node)) != 0) goto fail;
    if ((rc = ar__loop_start(node)) != 0) {
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

void ar__note_exit(ar_node_t *node)
{
    /* seq_cst read-modify-write, as the waiter's increment (wait_exits): either we see
     * the waiter, or its increment acquires this and it sees the exit. */
    if (atomic_fetch_add_explicit(&node->exit_waiters, 0, memory_order_seq_cst) > 0) {
        pthread_mutex_lock(&node->exit_lock);
        pthread_cond_broadcast(&node->exit_cond);
        pthread_mutex_unlock(&node->exit_lock);
    }
}

static struct timespec deadline_in(uint64_t ns_from_now)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t t = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + ns_from_now;
    ts.tv_sec = (time_t)(t / 1000000000ull);
    ts.tv_nsec = (long)(t % 1000000000ull);
    return ts;
}

/* Waits until done(node, arg) or until `until_ns` (monotonic; 0: no limit). */
static bool wait_exits(ar_node_t *node, bool (*done)(ar_node_t *, void *), void *arg,
                       uint64_t until_ns)
{
    /* An exit usually follows its signal within microseconds, while a schedulers' spin
     * lasts: poll that long before sleeping, so a stop of thousands of top-level
     * processes, one at a time, does not pay two thread wake-ups for each. */
    uint64_t spin_until = ar__now_ns() + node->spin_ns;
    while (ar__now_ns() < spin_until)
        if (done(node, arg)) return true;
    bool ok;
    atomic_fetch_add_explicit(&node->exit_waiters, 1, memory_order_seq_cst);
    pthread_mutex_lock(&node->exit_lock);
    while (!(ok = done(node, arg))) {
        uint64_t now = ar__now_ns();
        if (until_ns && now >= until_ns) break;
        /* bounded slices: a spawn that raced the stop may still need signalling */
        uint64_t slice = 100000000u;
        if (until_ns && until_ns - now < slice) slice = until_ns - now;
        struct timespec ts = deadline_in(slice);
        if (pthread_cond_timedwait(&node->exit_cond, &node->exit_lock, &ts) != 0 && !until_ns)
            break; /* let the caller re-signal stragglers */
    }
    pthread_mutex_unlock(&node->exit_lock);
    atomic_fetch_sub_explicit(&node->exit_waiters, 1, memory_order_relaxed);
    return ok;
}

static bool pid_dead(ar_node_t *node, void *arg)
{
    return ar__proc_lookup(node, *(ar_pid_t *)arg) == NULL;
}

static bool none_alive(ar_node_t *node, void *arg)
{
    (void)arg;
    return atomic_load_explicit(&node->live, memory_order_acquire) == 0;
}

/* The node's stop request: ends the process with code even if it traps exits, running
 * its terminate (retried on the next pass if there is no memory for it). */
static void send_exit(ar_node_t *node, ar_pid_t pid, ar_exit_code_t code)
{
    ar__signal_send(node, ENV_EXIT, AR_PID_NONE, pid, 0, AR_REASON(code), ENVF_STOP);
}

/* Signals every live process; returns how many. */
static size_t signal_all(ar_node_t *node, ar_exit_code_t code)
{
    size_t n = 0;
    uint32_t nchunks = atomic_load_explicit(&node->ptab.nchunks, memory_order_acquire);
    for (uint32_t c = 0; c < nchunks; c++) {
        ar_proc_t *chunk = atomic_load_explicit(&node->ptab.chunks[c], memory_order_acquire);
        for (uint32_t i = 0; i < AR__CHUNK_PROCS; i++) {
            ar_proc_t *p = &chunk[i];
            uint64_t lo = atomic_load_explicit(&p->pid_lo, memory_order_acquire);
            if (!lo || (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_FOREIGN))
                continue;
            send_exit(node, (ar_pid_t){node->pid_hi, lo}, code);
            n++;
        }
    }
    return n;
}

int ar_node_stop(ar_node_t *node, int timeout_ms)
{
    if (!node || !ar__timeout_ok(timeout_ms)) return AR_EINVAL;
    if (on_own_thread(node)) return AR_EDEADLK;
    atomic_store_explicit(&node->stopping, 1, memory_order_release);
    uint64_t until = timeout_ms == AR_INFINITY ? 0 : ar__now_ns() + (uint64_t)timeout_ms * 1000000u;
    if (until == 0 && timeout_ms != AR_INFINITY) until = 1;
    int rc = 0;

    /* 1. top-level processes, newest first, one at a time */
    pthread_mutex_lock(&node->top_lock);
    size_t ntop = node->ntop;
    uint64_t *top = ntop ? ar__malloc(ntop * sizeof *top) : NULL;
    if (top) memcpy(top, node->top, ntop * sizeof *top);
    pthread_mutex_unlock(&node->top_lock);
    for (size_t i = ntop; top && i-- > 0;) {
        ar_pid_t pid = {node->pid_hi, top[i]};
        if (!ar__proc_lookup(node, pid)) continue;
        send_exit(node, pid, AR_SHUTDOWN);
        if (!wait_exits(node, pid_dead, &pid, until ? until : 0) && until) break;
    }
    ar__free(top);

    /* 2. whatever is left, all at once */
    while (!none_alive(node, NULL)) {
        if (until && ar__now_ns() >= until) break;
        signal_all(node, AR_SHUTDOWN);
        wait_exits(node, none_alive, NULL, until ? until : ar__now_ns() + 100000000u);
    }
    /* 3. the timeout ran out: kill */
    while (!none_alive(node, NULL)) {
        rc = AR_ETIMEDOUT;
        signal_all(node, AR_KILL);
        wait_exits(node, none_alive, NULL, ar__now_ns() + 100000000u);
    }

    ar__loop_stop(node);
    ar__sched_stop(node);
    node_free(node);
    atomic_fetch_sub(&ar__nodes_running, 1);
    return rc;
}
