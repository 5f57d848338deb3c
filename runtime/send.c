/* Envelopes and sending: ar_send, ar_reply and the CAST/CALL send path.
 *
 * A message is one envelope (header + payload copy, from the pools) handed to ar__route
 * (route.c). Sends to dead pids are dropped and counted; a CALL that reaches a dead
 * process is answered with a failed reply (route.c), so no caller waits on a process
 * that is gone.
 *
 * Reply refs: odd refs belong to ar_call (one waiting caller, which drops a reply that
 * comes after it stopped waiting), even refs to ar_ask (the asker's table decides).
 */
#include "internal.h"

#include <string.h>

static inline __attribute__((always_inline)) ar__env_t *env_new(ar__sched_t *s, size_t len)
{
    ar__env_t *e = ar__pool_alloc_on(s, sizeof *e + len);
    if (!e) return NULL;
    /* field by field: a memset of the header costs more than the message itself */
    e->to_lo = 0;
    e->kind = ENV_MSG;
    e->flags = 0;
    e->half = HALF_NONE;
    e->xflags = 0;
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

ar__env_t *ar__env_new(size_t len) { return env_new(ar__current_sched(), len); }

int ar__env_new_pair(ar__env_t **a, ar__env_t **b)
{
    *a = ar__env_new(0);
    *b = *a ? ar__env_new(0) : NULL;
    if (*b) return 0;
    ar__env_free(*a);
    *a = NULL;
    return AR_ENOMEM;
}

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

/* Sends a CAST or CALL: copies the payload, routes it (the mailbox limit is checked
 * there). AR_ENOPROC: the target is dead (counted as dropped). */
/* The send path's body, inlined into ar_send (the hottest path of all) and ar__send_msg. */
static inline __attribute__((always_inline)) int
send_msg(ar__sched_t *s, ar_node_t *node, ar_pid_t to, ar_msg_kind_t kind, uint32_t tag,
         const void *data, size_t len, ar_reply_to_t reply_to)
{
    ar__env_t *e = env_new(s, len);
    if (!e) return AR_ENOMEM;
    if (len == sizeof(uint64_t))
        memcpy(ar__env_payload(e), data, sizeof(uint64_t)); /* the common small term: inline */
    else if (len)
        memcpy(ar__env_payload(e), data, len);
    e->flags = ENVF_COUNTED;
    e->msg.kind = kind;
    e->msg.tag = tag;
    e->msg.reply_to = reply_to;
    ar_proc_t *self = calling_proc(node);
    e->msg.from = self ? ar__proc_pid(self) : AR_PID_NONE;
    int rc = ar__route_on(s, node, to, e);
    if (rc == 0) {
        ar__count(s, node, AR__SENT);
        return 0;
    }
    if (rc == AR_ENOPROC) ar__count(s, node, AR__DROPPED);
    ar__env_free_on(s, e);
    return rc;
}

int ar__send_msg(ar_node_t *node, ar_pid_t to, ar_msg_kind_t kind, uint32_t tag,
                 const void *data, size_t len, ar_reply_to_t reply_to)
{
    return send_msg(ar__current_sched(), node, to, kind, tag, data, len, reply_to);
}

/* A send from a thread that is not one of the node's: counted while it runs. */
static __attribute__((noinline)) int send_from_outside(ar__sched_t *s, ar_node_t *node,
                                                       ar_pid_t to, uint32_t tag,
                                                       const void *data, size_t len)
{
    bool counted = ar__outside_enter(node);
    int rc = send_msg(s, node, to, AR_MSG_CAST, tag, data, len, (ar_reply_to_t){AR_PID_NONE, 0});
    if (counted) ar__outside_leave(node);
    return rc;
}

int ar_send(ar_node_t *node, ar_pid_t to, uint32_t tag, const void *data, size_t len)
{
    if (!node) return AR_EINVAL;
    int rc = ar__check_payload(node, data, len);
    if (rc) return rc;
    ar__sched_t *s = ar__current_sched(); /* no park in here: safe to keep */
    if (s && s->node == node)
        rc = send_msg(s, node, to, AR_MSG_CAST, tag, data, len, (ar_reply_to_t){AR_PID_NONE, 0});
    else
        rc = send_from_outside(s, node, to, tag, data, len);
    return rc == AR_ENOPROC ? 0 : rc; /* a send to a dead pid is dropped (and counted) */
}

static int reply(ar_node_t *node, ar_reply_to_t to, const void *data, size_t len)
{
    ar_proc_t *self = calling_proc(node);
    /* the process that took the call answers it: it owes nothing more */
    ar__env_t *owed = self ? ar__half_take(self, HALF_CALL, to.pid, to.ref) : NULL;
    bool settled = owed != NULL;
    ar_pid_t from = self ? ar__proc_pid(self) : AR_PID_NONE;
    ar__env_t *e;
    if (owed && !(owed->flags & ENVF_HANDED) && owed->cap >= len) {
        /* a deferred answer travels in the CALL it kept */
        e = ar__env_recycle(owed, ENV_MSG, from, to.ref, AR_REASON(AR_NORMAL));
        owed = NULL;
    } else if ((e = ar__env_new(len)) != NULL) {
        e->msg.from = from;
        e->msg.ref = to.ref;
    } else {
        if (owed) ar__half_put(self, owed, HALF_CALL, to.pid, to.ref); /* still owed */
        return AR_ENOMEM;
    }
    if (owed) {
        owed->flags &= (uint8_t)~ENVF_OWED;
        if (!(owed->flags & ENVF_HANDED)) ar__env_free(owed); /* else its handler frees it */
    }
    if (len) memcpy(ar__env_payload(e), data, len);
    e->msg.len = len;
    e->msg.kind = AR_MSG_REPLY;
    e->flags = (uint8_t)(((to.ref & 1) ? ENVF_SYNC : 0) | (settled ? ENVF_RELEASED : 0));
    ar__route_or_dead_letter(node, to.pid, e); /* a caller that is gone is no error of the replier's */
    return 0;
}

int ar_reply(ar_node_t *node, ar_reply_to_t to, const void *data, size_t len)
{
    if (!node || to.ref == 0 || ar_pid_is_none(to.pid)) return AR_EINVAL;
    int rc = ar__check_payload(node, data, len);
    if (rc) return rc;
    bool outside = ar__outside_enter(node);
    rc = reply(node, to, data, len);
    if (outside) ar__outside_leave(node);
    return rc;
}
