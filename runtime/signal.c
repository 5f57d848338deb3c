/* Links, monitors, exit signals, trap_exit.
 *
 * A process changes only its own half of a link or monitor; the other half travels as a
 * signal in the other process's mailbox, in order with its messages (ERTS's way), and is
 * held there as that process's half (halves.c). Making a link or a monitor allocates both
 * halves at once, so it is the only step that can fail (AR_ENOMEM, nothing changed); the
 * exit signals and DOWNs they promise are then delivered whatever memory is left.
 *
 * An exit signal that came through a link acts only if the receiver still holds the link,
 * and a DOWN only if the receiver still holds the monitor: so after ar_unlink or
 * ar_demonitor nothing more arrives from them. ar_unlink and ar_demonitor send the half
 * itself as the UNLINK or DEMONITOR: they allocate nothing and cannot fail.
 *
 * Everything here runs on the process's own thread, but ar_exit, which any thread sends.
 */
#include "internal.h"

#include <string.h>


int ar__send_exit(ar_node_t *node, ar_pid_t from, ar_pid_t to, ar_reason_t why, uint8_t flags)
{
    ar__env_t *e = ar__env_new(why.text ? strlen(why.text) + 1 : 0);
    if (!e) return AR_ENOMEM;
    e = ar__env_recycle(e, ENV_EXIT, from, 0, why); /* fits: no allocation */
    e->flags = flags;
    int rc = ar__route(node, to, e);
    if (rc) ar__env_free(e);
    return rc;
}

void ar__call_done(ar_node_t *node, ar_pid_t self, ar_pid_t to, ar_ref_t ref)
{
    ar__env_t *e = ar__env_new(0);
    if (e) ar__route_or_dead_letter(node, to, ar__env_recycle(e, ENV_CALL_DONE, self, ref,
                                                        AR_REASON(AR_NORMAL)));
}

/* Ends p with why when it is next safe to (p is the running process). */
static void doom(ar_proc_t *p, ar_reason_t why)
{
    ar__proc_set_reason(p, why); /* no-op while terminating: the reason is final */
    atomic_fetch_or_explicit(&p->flags, P_EXITING, memory_order_relaxed);
}

static ar__env_t *as_message(ar__env_t *e, ar_msg_kind_t kind)
{
    e->kind = ENV_MSG;
    e->msg.kind = kind;
    return e;
}

static ar__env_t *dropped(ar__env_t *e)
{
    ar__env_free(e);
    return NULL;
}

static ar__env_t *exit_arrives(ar_proc_t *p, ar__env_t *e)
{
    ar_pid_t self = ar__proc_pid(p);
    ar_reason_t why = e->msg.reason;
    bool via_link = e->flags & ENVF_LINK;
    if (via_link) {
        ar__env_t *h = ar__half_take(p, HALF_LINK, e->msg.from, 0);
        if (!h) return dropped(e); /* the link is gone (unlinked, or never was) */
        ar__env_free(h);
    }
    uint32_t fl = atomic_load_explicit(&p->flags, memory_order_relaxed);
    if (why.code == AR_KILL && !via_link) {
        doom(p, AR_REASON(AR_KILLED)); /* untrappable */
        return dropped(e);
    }
    if (e->flags & ENVF_STOP) { /* the node is stopping: trapping or not */
        /* its own end already runs: the node's shutdown never cuts a terminate short */
        if (!(fl & P_TERMINATING)) doom(p, why);
        return dropped(e);
    }
    if (!atomic_load_explicit(&p->trap_exit, memory_order_relaxed)) {
        if (why.code == AR_NORMAL && !ar_pid_eq(e->msg.from, self)) return dropped(e);
        doom(p, why);
        return dropped(e);
    }
    return as_message(e, AR_MSG_EXIT);
}

/* A CALL's caller no longer needs an answer: the callee's half goes (the handler frees
 * the envelope if it still holds it). */
static void release_owed(ar__env_t *h)
{
    h->flags &= (uint8_t)~ENVF_OWED;
    if (!(h->flags & ENVF_HANDED)) ar__env_free(h);
}

ar__env_t *ar__signal_admit(ar_proc_t *p, ar__env_t *e)
{
    ar_pid_t from = e->msg.from;
    ar_ref_t ref = e->msg.ref;
    ar__env_t *h;
    switch (e->kind) {
    case ENV_EXIT:
        p->signals_seen++;
        return exit_arrives(p, e);
    case ENV_LINK: /* one link per pair: a half it holds already stays */
        if (ar_pid_eq(from, ar__proc_pid(p)) || ar__half_has(p, HALF_LINK, from, 0)) break;
        ar__half_put(p, e, HALF_LINK, from, 0); /* the LINK is its half now */
        return NULL;
    case ENV_UNLINK:
        if ((h = ar__half_take(p, HALF_LINK, from, 0)) != NULL) ar__env_free(h);
        break;
    case ENV_MONITOR: /* the MONITOR is the DOWN it will send */
        ar__half_put(p, e, HALF_WATCHED, from, ref);
        return NULL;
    case ENV_DEMONITOR:
        if ((h = ar__half_take(p, HALF_WATCHED, from, ref)) != NULL) ar__env_free(h);
        break;
    case ENV_DOWN: /* at most once: the monitor is gone with it */
        if (e->xflags & AR__XF_INTERNAL) return as_message(e, AR_MSG_DOWN); /* an exit note */
        if ((h = ar__half_take(p, HALF_MONITOR, from, ref)) == NULL) break;
        ar__env_free(h);
        return as_message(e, AR_MSG_DOWN);
    case ENV_CALL_DONE:
        if ((h = ar__half_take(p, HALF_CALL, from, ref)) != NULL) release_owed(h);
        break;
    default:
        AR__ASSERT(!"a message admitted as a signal");
    }
    return dropped(e);
}

/* ---- the public calls ---- */
int ar_exit(ar_node_t *node, ar_pid_t target, ar_reason_t why)
{
    if (!node || why.code > AR_ERROR) return AR_EINVAL;
    ar_proc_t *self = ar__current_proc();
    ar_pid_t from = (self && self->node == node &&
                     !(atomic_load_explicit(&self->flags, memory_order_relaxed) & P_FOREIGN))
                        ? ar__proc_pid(self)
                        : AR_PID_NONE;
    bool outside = ar__outside_enter(node);
    int rc = ar__send_exit(node, from, target, why, 0);
    if (outside) ar__outside_leave(node);
    return rc == AR_ENOPROC ? 0 : rc; /* an exit to a dead pid does nothing */
}

int ar_link(ar_proc_t *self, ar_pid_t other)
{
    ar_proc_t *p = ar__self_ok(self);
    if (!p) return AR_EINVAL;
    ar_pid_t me = ar__proc_pid(p);
    if (ar_pid_eq(other, me) || ar__half_has(p, HALF_LINK, other, 0)) return 0;
    if (ar__route_known_dead(p->node, other)) return AR_ENOPROC;
    ar__env_t *half, *link;
    if (ar__env_new_pair(&half, &link)) return AR_ENOMEM;
    ar__half_put(p, half, HALF_LINK, other, 0);
    link = ar__env_recycle(link, ENV_LINK, me, 0, AR_REASON(AR_NORMAL));
    if (ar__route(p->node, other, link) == 0) return 0;
    /* dead: nothing changes, and no exit signal follows */
    ar__env_free(ar__half_take(p, HALF_LINK, other, 0));
    ar__env_free(link);
    return AR_ENOPROC;
}

int ar_unlink(ar_proc_t *self, ar_pid_t other)
{
    ar_proc_t *p = ar__self_ok(self);
    if (!p) return AR_EINVAL;
    ar__env_t *h = ar__half_take(p, HALF_LINK, other, 0);
    if (h) ar__route_or_dead_letter(p->node, other, ar__env_recycle(h, ENV_UNLINK, ar__proc_pid(p), 0,
                                                             AR_REASON(AR_NORMAL)));
    return 0;
}

/* Monitoring a dead pid: the DOWN is in the mailbox at once, as in Erlang (a later
 * demonitor without flush leaves it there). Whatever the dead process sent before is
 * fetched first, so it still comes before its DOWN. */
static void down_at_once(ar_proc_t *p, ar__env_t *e, ar_pid_t target, ar_ref_t r)
{
    ar__proc_fetch(p);
    e = as_message(ar__env_recycle(e, ENV_MSG, target, r, AR_REASON(AR_NOPROC)), AR_MSG_DOWN);
    ar__inner_append(p, e);
}

int ar__monitor(ar_proc_t *p, ar_pid_t target, ar_ref_t *ref)
{
    ar_node_t *node = p->node;
    ar__env_t *half, *mon;
    if (ar__route_known_dead(node, target)) { /* no monitor to reserve: just its DOWN */
        if (!(mon = ar__env_new(0))) return AR_ENOMEM;
        down_at_once(p, mon, target, *ref = ar__make_ref(node));
        return 0;
    }
    if (ar__env_new_pair(&half, &mon)) return AR_ENOMEM;
    ar_ref_t r = ar__make_ref(node);
    ar__half_put(p, half, HALF_MONITOR, target, r);
    mon = ar__env_recycle(mon, ENV_MONITOR, ar__proc_pid(p), r, AR_REASON(AR_NORMAL));
    if (ar__route(node, target, mon) != 0) { /* it died just now */
        ar__env_free(ar__half_take(p, HALF_MONITOR, target, r));
        down_at_once(p, mon, target, r);
    }
    *ref = r;
    return 0;
}

int ar_monitor(ar_proc_t *self, ar_pid_t target, ar_ref_t *ref)
{
    ar_proc_t *p = ar__self_ok(self);
    if (!p || !ref) return AR_EINVAL;
    return ar__monitor(p, target, ref);
}

static bool down_for(ar__env_t *e, void *arg)
{
    return e->kind == ENV_MSG && e->msg.kind == AR_MSG_DOWN && e->msg.ref == *(ar_ref_t *)arg;
}

int ar_demonitor(ar_proc_t *self, ar_ref_t ref, bool flush)
{
    ar_proc_t *p = ar__self_ok(self);
    if (!p) return AR_EINVAL;
    ar__env_t *h = ar__half_take(p, HALF_MONITOR, AR_PID_NONE, ref);
    if (h) {
        ar_pid_t target = h->msg.reply_to.pid;
        ar__route_or_dead_letter(p->node, target, ar__env_recycle(h, ENV_DEMONITOR, ar__proc_pid(p),
                                                           ref, AR_REASON(AR_NORMAL)));
    }
    if (flush) { /* a DOWN already turned into a message */
        ar__env_t *e;
        while ((e = ar__inner_take(p, down_for, &ref)) != NULL) ar__env_free(e);
    }
    return 0;
}

bool ar_trap_exit(ar_proc_t *self, bool on)
{
    ar_proc_t *p = ar__self_ok(self);
    if (!p) return false;
    return atomic_exchange_explicit(&p->trap_exit, on, memory_order_relaxed) != 0;
}
