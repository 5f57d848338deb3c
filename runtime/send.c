/* Envelopes and the send path: ar_send, ar_reply, delivery to a pid, dead letters.
 *
 * A message is one envelope (header + payload copy) from the pools, pushed on the
 * target's outer queue. The push's tag bits say what else the sender must do (schedule
 * the target, or drain it as dead). Sends to dead pids are dropped and counted; a CALL
 * that reaches a dead process is answered with a failed reply, so no caller waits on a
 * process that is gone.
 *
 * Reply refs: odd refs belong to ar_call (one waiting caller, which drops a reply that
 * comes after it stopped waiting), even refs to ar_ask (the asker's table decides).
 */
#include "internal.h"

#include <string.h>

ar__env_t *ar__env_new_on(ar__sched_t *s, size_t len)
{
    ar__env_t *e = ar__pool_alloc_on(s, sizeof *e + len);
    if (!e) return NULL;
    /* field by field: a memset of the header costs more than the message itself */
    e->to_lo = 0;
    e->kind = ENV_MSG;
    e->sync_reply = 0;
    e->counted = 0;
    e->flags = 0;
    e->cap = (uint32_t)len;
    e->msg.kind = AR_MSG_CAST;
    e->msg.tag = 0;
    e->msg.from = AR_PID_NONE;
    e->msg.ref = 0;
    e->msg.reason = (ar_reason_t){AR_NORMAL, NULL};
    e->msg.reply_to = (ar_reply_to_t){AR_PID_NONE, 0};
    e->msg.data = ar__env_payload(e);
    e->msg.len = len;
    e->msg.event = NULL;
    return e;
}

ar__env_t *ar__env_new(size_t len) { return ar__env_new_on(ar__current_sched(), len); }

void ar__env_free(ar__env_t *e)
{
    if (e) ar__pool_free(e, sizeof *e + e->cap);
}

/* The process whose code runs on this thread, if it belongs to node. */
static ar_proc_t *calling_proc(ar_node_t *node)
{
    ar_proc_t *p = ar__current_proc();
    return (p && p->node == node && !(atomic_load_explicit(&p->flags, memory_order_relaxed) &
                                      P_FOREIGN))
               ? p
               : NULL;
}


int ar__check_payload(ar_node_t *node, const void *data, size_t len)
{
    if (!data && len > 0) return AR_EINVAL;
    if (len > node->cfg.max_message_bytes) return AR_E2BIG;
    return 0;
}

static void reply_failure(ar_node_t *node, ar_pid_t from, ar_reply_to_t to, ar_exit_code_t why)
{
    ar__env_t *r = ar__env_new(0);
    if (!r) return; /* out of memory: the caller's timeout still ends its wait */
    r->msg.kind = AR_MSG_REPLY;
    r->msg.ref = to.ref;
    r->msg.from = from;
    r->msg.reason = AR_REASON(why);
    r->sync_reply = (uint8_t)(to.ref & 1);
    r->flags = ENVF_RELEASED; /* nothing is owed by a process that is gone */
    ar__deliver(node, to.pid, r);
}

void ar__dead_letter(ar_node_t *node, ar_proc_t *p, ar__env_t *e)
{
    ar__dead_letter_why(node, p, e, AR_REASON(AR_NOPROC));
}

void ar__dead_letter_why(ar_node_t *node, ar_proc_t *p, ar__env_t *e, ar_reason_t why)
{
    if (e->kind == ENV_LINK || e->kind == ENV_MONITOR) ar__signal_dead_letter(node, e, why);
    if (p && e->counted) ar__consumed(p);
    if (p && e->kind == ENV_EXIT) p->signals_seen++; /* its consumer's count, like consumed */
    if (e->kind == ENV_MSG && e->msg.kind == AR_MSG_CALL) /* a failed call never says normal */
        reply_failure(node, (ar_pid_t){node->pid_hi, e->to_lo}, e->msg.reply_to,
                      why.code == AR_NORMAL ? AR_NOPROC : why.code);
    if (e->kind == ENV_MSG && e->msg.kind != AR_MSG_REPLY)
        ar__count(ar__current_sched(), node, AR__DROPPED); /* its target is gone */
    ar__env_free(e);
}

static int deliver(ar_node_t *node, ar_pid_t to, ar__env_t *e, bool signal)
{
    ar_proc_t *p = ar__proc_lookup(node, to);
    if (!p) {
        ar__dead_letter(node, NULL, e);
        return AR_ENOPROC;
    }
    e->to_lo = to.lo;
    /* release, before the push: a consumer that sees the count fetches everything, and
     * finds this signal or a push still in progress */
    if (signal) atomic_fetch_add_explicit(&p->signals, 1, memory_order_release);
    ar__after_push(node, p, ar__mb_push(p, e));
    return 0;
}

int ar__deliver(ar_node_t *node, ar_pid_t to, ar__env_t *e) { return deliver(node, to, e, false); }

int ar__deliver_signal(ar_node_t *node, ar_pid_t to, ar__env_t *e)
{
    return deliver(node, to, e, true);
}

/* Sends a CAST or CALL: checks the mailbox limit, copies the payload, pushes. */
int ar__send_msg(ar_node_t *node, ar_pid_t to, ar_msg_kind_t kind, uint32_t tag,
                 const void *data, size_t len, ar_reply_to_t reply_to)
{
    ar_proc_t *p = ar__proc_lookup(node, to);
    if (!p) {
        ar__count(ar__current_sched(), node, AR__DROPPED);
        return AR_ENOPROC;
    }
    /* pushed shares the cache line the push itself takes; only a bounded mailbox makes
     * senders read the consumer's counter too */
    uint32_t limit = atomic_load_explicit(&p->mailbox_limit, memory_order_relaxed);
    uint32_t before = atomic_fetch_add_explicit(&p->pushed, 1, memory_order_relaxed);
    if (limit && before - atomic_load_explicit(&p->consumed, memory_order_relaxed) >= limit) {
        atomic_fetch_sub_explicit(&p->pushed, 1, memory_order_relaxed);
        return AR_EAGAIN;
    }
    ar__sched_t *s = ar__current_sched(); /* no park in here: safe to keep */
    ar__env_t *e = ar__env_new_on(s, len);
    if (!e) {
        atomic_fetch_sub_explicit(&p->pushed, 1, memory_order_relaxed);
        return AR_ENOMEM;
    }
    if (len == sizeof(uint64_t))
        memcpy(ar__env_payload(e), data, sizeof(uint64_t)); /* the common small term: inline */
    else if (len)
        memcpy(ar__env_payload(e), data, len);
    e->counted = 1;
    e->msg.kind = kind;
    e->msg.tag = tag;
    e->msg.reply_to = reply_to;
    ar_proc_t *self = calling_proc(node);
    e->msg.from = self ? ar__proc_pid(self) : AR_PID_NONE;
    e->to_lo = to.lo;
    ar__count(s, node, AR__SENT);
    ar__after_push_on(s, node, p, ar__mb_push(p, e));
    return 0;
}

int ar_send(ar_node_t *node, ar_pid_t to, uint32_t tag, const void *data, size_t len)
{
    if (!node) return AR_EINVAL;
    int rc = ar__check_payload(node, data, len);
    if (rc) return rc;
    rc = ar__send_msg(node, to, AR_MSG_CAST, tag, data, len, (ar_reply_to_t){AR_PID_NONE, 0});
    return rc == AR_ENOPROC ? 0 : rc; /* a send to a dead pid is dropped (and counted) */
}

int ar_reply(ar_node_t *node, ar_reply_to_t to, const void *data, size_t len)
{
    if (!node || to.ref == 0 || ar_pid_is_none(to.pid)) return AR_EINVAL;
    int rc = ar__check_payload(node, data, len);
    if (rc) return rc;
    ar__env_t *e = ar__env_new(len);
    if (!e) return AR_ENOMEM;
    if (len) memcpy(ar__env_payload(e), data, len);
    e->msg.kind = AR_MSG_REPLY;
    e->msg.ref = to.ref;
    e->sync_reply = (uint8_t)(to.ref & 1);
    ar_proc_t *self = calling_proc(node);
    e->msg.from = self ? ar__proc_pid(self) : AR_PID_NONE;
    /* the process that took the call answers it: it owes nothing more */
    if (self && self->ext && ar__set_del(&self->ext->calls, to.ref, NULL))
        e->flags = ENVF_RELEASED;
    ar__deliver(node, to.pid, e); /* a caller that is gone is no error of the replier's */
    return 0;
}

void ar__reply_failure(ar_node_t *node, ar_pid_t from, ar_reply_to_t to, ar_exit_code_t why)
{
    reply_failure(node, from, to, why);
}
