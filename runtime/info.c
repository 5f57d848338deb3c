/* Introspection: a snapshot of one process, and the node's counters. Reads only atomics
 * of the target and re-checks its pid afterwards, so a process that ends (or a slot that
 * is reused) meanwhile reads as AR_ENOPROC rather than as a mix of two processes. */
#include "internal.h"

#include <string.h>

static int proc_info(ar_node_t *node, ar_pid_t pid, ar_proc_info_t *out)
{
    ar_proc_t *p = ar__proc_lookup(node, pid);
    if (!p) return AR_ENOPROC;
    ar_proc_info_t i;
    memset(&i, 0, sizeof i);
    uint32_t fl = atomic_load_explicit(&p->flags, memory_order_relaxed);
    const ar_behaviour_t *b = atomic_load_explicit(&p->b, memory_order_relaxed);
    uint64_t parent = atomic_load_explicit(&p->parent_lo, memory_order_relaxed);
    i.pid = pid;
    i.parent = parent ? (ar_pid_t){node->pid_hi, parent} : AR_PID_NONE;
    i.behaviour = b ? b->name : NULL;
    i.mailbox_len = (uint32_t)(atomic_load_explicit(&p->pushed, memory_order_relaxed) -
                               atomic_load_explicit(&p->consumed, memory_order_relaxed));
    i.handled = atomic_load_explicit(&p->handled, memory_order_relaxed);
    i.blocked = atomic_load_explicit(&p->blocked, memory_order_relaxed) != 0;
    i.trap_exit = atomic_load_explicit(&p->trap_exit, memory_order_relaxed) != 0;
    i.links = atomic_load_explicit(&p->nlinks, memory_order_relaxed);
    i.monitors = atomic_load_explicit(&p->nmonitors, memory_order_relaxed);
    i.monitored_by = atomic_load_explicit(&p->nmonitored_by, memory_order_relaxed);
    ar__names_of(p, i.name);
    /* still the same process: the snapshot is not a mix of two occupants of the slot */
    if (atomic_load_explicit(&p->pid_lo, memory_order_acquire) != pid.lo || (fl & P_FOREIGN))
        return AR_ENOPROC;
    *out = i;
    return 0;
}

int ar_proc_info(ar_node_t *node, ar_pid_t pid, ar_proc_info_t *out)
{
    if (!node || !out) return AR_EINVAL;
    bool outside = ar__outside_enter(node);
    int rc = proc_info(node, pid, out);
    if (outside) ar__outside_leave(node);
    return rc;
}

void ar_node_stats(ar_node_t *node, ar_node_stats_t *out)
{
    if (!node || !out) return;
    bool outside = ar__outside_enter(node);
    ar_node_stats_t st;
    uint64_t c[AR__NCOUNTS];
    for (int k = 0; k < AR__NCOUNTS; k++) {
        c[k] = atomic_load_explicit(&node->counts[k], memory_order_relaxed);
        for (unsigned i = 0; i < node->nsched; i++)
            c[k] += atomic_load_explicit(&node->sched[i]->counts[k], memory_order_relaxed);
    }
    st.sent = c[AR__SENT];
    st.delivered = c[AR__DELIVERED];
    st.dropped = c[AR__DROPPED];
    st.spawned = c[AR__SPAWNED];
    st.exited = c[AR__EXITED];
    st.processes = (size_t)atomic_load_explicit(&node->live, memory_order_relaxed);
    *out = st;
    if (outside) ar__outside_leave(node);
}
