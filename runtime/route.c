/* Routing: the one way from a pid to a mailbox, and what happens to envelopes whose
 * target is gone.
 *
 * Every send and every signal goes through ar__route (its body is ar__route_on in
 * internal.h, inline on the send path): it alone decides what "no such process" means. A local pid is looked up in the process table; an envelope for a live
 * process is pushed on its mailbox, and the push's tag bits say what else to do (schedule
 * it, wake a waiting foreign thread, or drain a mailbox that is already dead). A pid of
 * another node goes to the distribution layer (dist/), which queues it for its peer; a pid
 * of an earlier incarnation of this node is dead. The caller gets AR_ENOPROC with its
 * envelope back, so it can answer synchronously (ar_link: nothing changes; ar_monitor: an
 * immediate DOWN) instead of a dead letter arriving later.
 *
 * Dead letters: what an ending process still has queued, and what reaches a mailbox
 * already marked dead, is answered in the envelope itself (a LINK becomes the linker's
 * EXIT, a MONITOR the watcher's DOWN, a CALL the caller's failed reply), so no answer is
 * ever lost to a failed allocation.
 */
#include "internal.h"

#include <string.h>

static const char lost_text[] = "out of memory (the reason's text was lost)";

int ar__route_dead(ar_node_t *node, ar_proc_t *p, ar__env_t *e)
{
    return ar__mb_drain_dead(node, p, e, AR_REASON(AR_NOPROC)) ? AR_ENOPROC : 0;
}

int ar__route(ar_node_t *node, ar_pid_t to, ar__env_t *e)
{
    return ar__route_on(ar__current_sched(), node, to, e);
}

bool ar__route_known_dead(ar_node_t *node, ar_pid_t to)
{
    if (to.hi != node->pid_hi) return ar__dist_known_dead(node, to);
    return !ar__proc_lookup(node, to);
}

void ar__route_or_dead_letter(ar_node_t *node, ar_pid_t to, ar__env_t *e)
{
    if (ar__route(node, to, e) != 0) ar__dead_letter(node, NULL, e, AR_REASON(AR_NOPROC));
}

static void set_reason(ar__env_t *e, ar_reason_t why, size_t text_len)
{
    e->msg.reason.code = why.code;
    e->msg.reason.text = why.text;
    if (text_len) { /* why.text may lie in e's own payload */
        memmove(ar__env_payload(e), why.text, text_len);
        e->msg.reason.text = ar__env_payload(e);
    }
}

ar__env_t *ar__env_recycle(ar__env_t *e, int kind, ar_pid_t from, ar_ref_t ref, ar_reason_t why)
{
    size_t tl = why.text ? strlen(why.text) + 1 : 0;
    if (tl > e->cap) {
        ar__env_t *big = ar__env_new(tl);
        if (big) {
            ar__env_free(e);
            e = big;
        } else { /* the signal goes anyway: its code is exact, its text is lost */
            why.text = lost_text;
            tl = 0;
        }
    }
    e->kind = (uint8_t)kind;
    e->flags = 0;
    e->half = HALF_NONE;
    e->msg.kind = AR_MSG_CAST;
    e->msg.tag = 0;
    e->msg.from = from;
    e->msg.ref = ref;
    e->msg.reply_to = (ar_reply_to_t){AR_PID_NONE, 0};
    e->msg.data = ar__env_payload(e);
    e->msg.len = 0; /* the payload holds the reason's text, not data */
    e->msg.event = NULL;
    set_reason(e, why, tl);
    return e;
}

ar__env_t *ar__env_recycle_reply(ar__env_t *e, ar_pid_t from, ar_reply_to_t to, ar_reason_t why)
{
    if (why.code == AR_NORMAL) why.code = AR_NOPROC; /* a failed call never says normal */
    e = ar__env_recycle(e, ENV_MSG, from, to.ref, why);
    e->msg.kind = AR_MSG_REPLY;
    /* nothing is owed by a process that is gone */
    e->flags = ENVF_RELEASED | ((to.ref & 1) ? ENVF_SYNC : 0);
    return e;
}

void ar__dead_letter(ar_node_t *node, ar_proc_t *p, ar__env_t *e, ar_reason_t why)
{
    if (p) ar__mb_unqueue(p, e);
    ar__dead_letter_from(node, (ar_pid_t){node->pid_hi, e->to_lo}, e, why);
}

void ar__dead_letter_from(ar_node_t *node, ar_pid_t dead, ar__env_t *e, ar_reason_t why)
{
    ar_pid_t to = e->msg.from;
    switch (e->kind) {
    case ENV_LINK: /* the linker holds its half: it learns how its partner ended */
        e = ar__env_recycle(e, ENV_EXIT, dead, 0, why);
        e->flags = ENVF_LINK;
        ar__route_or_dead_letter(node, to, e);
        return;
    case ENV_MONITOR:
        ar__route_or_dead_letter(node, to, ar__env_recycle(e, ENV_DOWN, dead, e->msg.ref, why));
        return;
    case ENV_MSG:
        if (e->msg.kind == AR_MSG_CALL) {
            ar__count(ar__current_sched(), node, AR__DROPPED); /* its target is gone */
            ar_reply_to_t rt = e->msg.reply_to;
            ar__route_or_dead_letter(node, rt.pid, ar__env_recycle_reply(e, dead, rt, why));
            return;
        }
        if (e->msg.kind != AR_MSG_REPLY) ar__count(ar__current_sched(), node, AR__DROPPED);
        break;
    default:
        break;
    }
    ar__env_free(e);
}
