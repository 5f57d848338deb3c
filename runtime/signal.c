/* Links, monitors, exit signals, trap_exit, and the exit path's signals.
 *
 * A process changes only its own half of a link or monitor; the other half travels as a
 * signal in the other process's mailbox, in order with its messages (ERTS's way). Each
 * side keeps its half in sets in the process extension: links (pid lo), monitors it holds
 * (ref -> target), monitors on it (ref -> watcher). An exit signal that came through a
 * link acts only if the receiver still has the link, and a DOWN only if the receiver still
 * holds the monitor: so after ar_unlink / ar_demonitor nothing more arrives from them.
 *
 * Calls: a process that takes a CALL owes its caller an answer (ext->calls). Answering it
 * itself settles that; an answer from elsewhere makes the caller send ENV_CALL_DONE. A
 * process that ends with answers owed fails each call with its exit reason, so callers
 * learn of the death at once, which is what monitoring the target in each call gives
 * Erlang, without two more signals per call.
 *
 * Everything here runs on the process's own thread, but the senders (ar_exit from any
 * thread) and the exit path, which runs after the pid is unpublished.
 */
#include "internal.h"

#include <string.h>

static ar_proc_t *self_ok(ar_proc_t *self)
{
    return (self && self == ar__current_proc()) ? self : NULL;
}

int ar__signal_send(ar_node_t *node, int kind, ar_pid_t from, ar_pid_t to, ar_ref_t ref,
                    ar_reason_t why, uint8_t flags)
{
    size_t tl = why.text ? strlen(why.text) + 1 : 0;
    ar__env_t *e = ar__env_new(tl);
    if (!e) return AR_ENOMEM;
    e->kind = (uint8_t)kind;
    e->flags = flags;
    e->msg.from = from;
    e->msg.ref = ref;
    e->msg.reason.code = why.code;
    if (tl) {
        memcpy(ar__env_payload(e), why.text, tl);
        e->msg.reason.text = ar__env_payload(e);
    }
    e->msg.len = 0; /* the payload holds the reason's text, not data */
    return kind == ENV_EXIT ? ar__deliver_signal(node, to, e) : ar__deliver(node, to, e);
}

static ar_pid_t local(ar_node_t *node, uint64_t lo) { return (ar_pid_t){node->pid_hi, lo}; }

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

static ar__env_t *exit_arrives(ar_proc_t *p, ar__env_t *e)
{
    ar_pid_t self = ar__proc_pid(p);
    ar_reason_t why = e->msg.reason;
    bool via_link = e->flags & ENVF_LINK;
    if (via_link && !(p->ext && ar__set_del(&p->ext->links, e->msg.from.lo, NULL)))
        return NULL; /* the link is gone (unlinked, or never was) */
    if (why.code == AR_KILL && !via_link) {
        doom(p, AR_REASON(AR_KILLED)); /* untrappable */
        return NULL;
    }
    if (e->flags & ENVF_STOP) { /* the node is stopping: trapping or not */
        doom(p, why);
        return NULL;
    }
    if (!atomic_load_explicit(&p->trap_exit, memory_order_relaxed)) {
        if (why.code == AR_NORMAL && !ar_pid_eq(e->msg.from, self)) return NULL;
        doom(p, why);
        return NULL;
    }
    return as_message(e, AR_MSG_EXIT);
}

ar__env_t *ar__signal_admit(ar_proc_t *p, ar__env_t *e)
{
    struct ar__proc_ext *x;
    switch (e->kind) {
    case ENV_EXIT:
        p->signals_seen++;
        if ((e = exit_arrives(p, e)) != NULL) return e;
        return NULL;
    case ENV_LINK:
        if (e->msg.from.lo != atomic_load_explicit(&p->pid_lo, memory_order_relaxed) &&
            (x = ar__proc_ext(p)) != NULL)
            ar__set_put(&x->links, e->msg.from.lo, 0);
        break;
    case ENV_UNLINK:
        if (p->ext) ar__set_del(&p->ext->links, e->msg.from.lo, NULL);
        break;
    case ENV_MONITOR:
        if ((x = ar__proc_ext(p)) != NULL) ar__set_put(&x->monitored_by, e->msg.ref, e->msg.from.lo);
        break;
    case ENV_DEMONITOR:
        if (p->ext) ar__set_del(&p->ext->monitored_by, e->msg.ref, NULL);
        break;
    case ENV_DOWN:
        if (p->ext && ar__set_del(&p->ext->monitors, e->msg.ref, NULL))
            return as_message(e, AR_MSG_DOWN); /* at most once: the monitor is gone now */
        break;
    case ENV_CALL_DONE:
        if (p->ext) ar__set_del(&p->ext->calls, e->msg.ref, NULL);
        break;
    }
    return NULL; /* consumed: the caller frees it */
}

void ar__signal_dead_letter(ar_node_t *node, ar__env_t *e, ar_reason_t why)
{
    ar_pid_t dead = local(node, e->to_lo);
    if (e->kind == ENV_LINK) /* the linker learns how its partner ended */
        ar__signal_send(node, ENV_EXIT, dead, e->msg.from, 0, why, ENVF_LINK);
    else if (e->kind == ENV_MONITOR)
        ar__signal_send(node, ENV_DOWN, dead, e->msg.from, e->msg.ref, why, 0);
}

void ar__signal_call_taken(ar_proc_t *p, ar__env_t *e)
{
    struct ar__proc_ext *x = ar__proc_ext(p);
    /* out of memory: the caller is not told of a death, but its timeout still ends it */
    if (x) ar__set_put(&x->calls, e->msg.reply_to.ref, e->msg.reply_to.pid.lo);
}

void ar__signal_exit(ar_proc_t *p, ar_pid_t self, ar_reason_t why, bool started)
{
    struct ar__proc_ext *x = p->ext;
    ar_node_t *node = p->node;
    if (!x) return;
    ar__set_t *s;
    s = &x->links;
    for (uint32_t i = 0; i < s->cap; i++)
        if (s->k[i]) {
            if (started)
                ar__signal_send(node, ENV_EXIT, self, local(node, s->k[i]), 0, why, ENVF_LINK);
            else /* a failed start: as if it never linked */
                ar__signal_send(node, ENV_UNLINK, self, local(node, s->k[i]), 0, why, 0);
        }
    s = &x->monitored_by;
    for (uint32_t i = 0; i < s->cap; i++)
        if (s->k[i])
            ar__signal_send(node, ENV_DOWN, self, local(node, s->v[i]), s->k[i],
                            started ? why : AR_REASON(AR_NOPROC), 0);
    s = &x->monitors;
    for (uint32_t i = 0; i < s->cap; i++)
        if (s->k[i]) ar__signal_send(node, ENV_DEMONITOR, self, local(node, s->v[i]), s->k[i], why, 0);
    s = &x->calls;
    for (uint32_t i = 0; i < s->cap; i++)
        if (s->k[i]) {
            ar__env_t *r = ar__env_new(why.text ? strlen(why.text) + 1 : 0);
            if (!r) continue;
            r->msg.kind = AR_MSG_REPLY;
            r->msg.ref = s->k[i];
            r->msg.from = self;
            r->msg.reason.code = why.code == AR_NORMAL ? AR_NOPROC : why.code;
            if (why.text) {
                memcpy(ar__env_payload(r), why.text, r->cap);
                r->msg.reason.text = ar__env_payload(r);
            }
            r->msg.len = 0;
            r->sync_reply = (uint8_t)(s->k[i] & 1);
            r->flags = ENVF_RELEASED;
            ar__deliver(node, local(node, s->v[i]), r);
        }
    ar__set_free(&x->links);
    ar__set_free(&x->monitored_by);
    ar__set_free(&x->monitors);
    ar__set_free(&x->calls);
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
    int rc = ar__signal_send(node, ENV_EXIT, from, target, 0, why, 0);
    return rc == AR_ENOPROC ? 0 : rc; /* an exit to a dead pid does nothing */
}

int ar_link(ar_proc_t *self, ar_pid_t other)
{
    ar_proc_t *p = self_ok(self);
    if (!p) return AR_EINVAL;
    ar_pid_t me = ar__proc_pid(p);
    if (ar_pid_eq(other, me)) return 0;
    if (!ar__proc_lookup(p->node, other)) return AR_ENOPROC;
    struct ar__proc_ext *x = ar__proc_ext(p);
    if (!x) return AR_ENOMEM;
    if (ar__set_get(&x->links, other.lo, NULL)) return 0; /* one link per pair */
    if (ar__set_put(&x->links, other.lo, 0) != 0) return AR_ENOMEM;
    int rc = ar__signal_send(p->node, ENV_LINK, me, other, 0, AR_REASON(AR_NORMAL), 0);
    if (rc == AR_ENOMEM) ar__set_del(&x->links, other.lo, NULL);
    ar__proc_count_sets(p);
    if (rc == AR_ENOMEM) return rc;
    /* AR_ENOPROC here: it died just now; the dead letter answers with an exit signal */
    return rc == AR_ENOPROC ? AR_ENOPROC : 0;
}

int ar_unlink(ar_proc_t *self, ar_pid_t other)
{
    ar_proc_t *p = self_ok(self);
    if (!p) return AR_EINVAL;
    if (!p->ext || !ar__set_del(&p->ext->links, other.lo, NULL)) return 0;
    ar__proc_count_sets(p);
    ar__signal_send(p->node, ENV_UNLINK, ar__proc_pid(p), other, 0, AR_REASON(AR_NORMAL), 0);
    return 0;
}

int ar_monitor(ar_proc_t *self, ar_pid_t target, ar_ref_t *ref)
{
    ar_proc_t *p = self_ok(self);
    if (!p || !ref) return AR_EINVAL;
    ar_ref_t r = ar__make_ref(p->node);
    if (!ar__proc_lookup(p->node, target)) {
        /* dead already: the DOWN is in the mailbox at once, as in Erlang (a later
         * demonitor without flush leaves it there). Whatever the dead process sent before
         * is fetched first, so it still comes before its DOWN. */
        ar__env_t *d = ar__env_new(0);
        if (!d) return AR_ENOMEM;
        ar__proc_fetch(p);
        d->msg.kind = AR_MSG_DOWN;
        d->msg.from = target;
        d->msg.ref = r;
        d->msg.reason = AR_REASON(AR_NOPROC);
        ar__inner_append(p, d);
        *ref = r;
        return 0;
    }
    struct ar__proc_ext *x = ar__proc_ext(p);
    if (!x) return AR_ENOMEM;
    if (ar__set_put(&x->monitors, r, target.lo) != 0) return AR_ENOMEM;
    ar_pid_t me = ar__proc_pid(p);
    int rc = ar__signal_send(p->node, ENV_MONITOR, me, target, r, AR_REASON(AR_NORMAL), 0);
    /* AR_ENOPROC: it died just now; the MONITOR's dead letter brings the DOWN */
    if (rc == AR_ENOPROC) rc = 0;
    if (rc != 0) ar__set_del(&x->monitors, r, NULL);
    ar__proc_count_sets(p);
    if (rc != 0) return rc;
    *ref = r;
    return 0;
}

static bool down_for(ar__env_t *e, void *arg)
{
    return e->kind == ENV_MSG && e->msg.kind == AR_MSG_DOWN && e->msg.ref == *(ar_ref_t *)arg;
}

int ar_demonitor(ar_proc_t *self, ar_ref_t ref, bool flush)
{
    ar_proc_t *p = self_ok(self);
    if (!p) return AR_EINVAL;
    uint64_t target;
    if (p->ext && ar__set_del(&p->ext->monitors, ref, &target)) {
        ar__proc_count_sets(p);
        ar__signal_send(p->node, ENV_DEMONITOR, ar__proc_pid(p), local(p->node, target), ref,
                        AR_REASON(AR_NORMAL), 0);
    }
    if (flush) { /* a DOWN already turned into a message */
        ar__env_t *e;
        while ((e = ar__inner_take(p, down_for, &ref)) != NULL) ar__env_free(e);
    }
    return 0;
}

bool ar_trap_exit(ar_proc_t *self, bool on)
{
    ar_proc_t *p = self_ok(self);
    if (!p) return false;
    return atomic_exchange_explicit(&p->trap_exit, on, memory_order_relaxed) != 0;
}
