/* Calls: ar_call (from a process, or from a foreign thread) and ar_ask.
 *
 * A call is a CALL envelope with reply_to = {caller, ref}; odd refs mark ar_call, whose
 * caller drops any reply that arrives after it stopped waiting (p->wait_ref). The callee
 * that takes the CALL keeps it as a half until it answers (halves.c): if it ends first,
 * that envelope goes back as the failed reply, so a caller learns of the death at once,
 * which is what monitoring the target in each call gives Erlang, without two more
 * signals per call. A CALL still queued when its target ends is answered the same way.
 *
 * A foreign thread has no process to receive the reply in: it waits in a waiter
 * (waiter.c), a stand-in process whose pid is the reply_to.
 *
 * An ask (even ref) does not wait: the asker holds it as a half (HALF_ASK, halves.c) until
 * the first REPLY with its ref is fetched, so a reply finds its ask in O(1) however many
 * are pending, and the admit drops any later one. The half is one envelope whose payload
 * holds the ask's timer (NULL: none); when an answer came from elsewhere than the target
 * (the timer's AR_TIMEOUT) it goes to the target as the CALL_DONE, so settling an ask
 * allocates nothing. An asker that ends drops its asks without a word, as its halves go.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <time.h>


static bool call_pred(ar__env_t *e, void *arg)
{
    ar_ref_t ref = *(ar_ref_t *)arg;
    if (e->kind == ENV_WAKE) return e->msg.ref == ref;
    return e->kind == ENV_MSG && e->msg.kind == AR_MSG_REPLY && (e->flags & ENVF_SYNC) &&
           e->msg.ref == ref;
}

/* The target may have taken the CALL and owe an answer: unless its answer says it is
 * settled (it answered itself, or it is gone), tell it the call is over. */
static void release_target(ar_node_t *node, ar_pid_t self, ar_pid_t to, ar_ref_t ref,
                           const ar__env_t *answer)
{
    if (answer && answer->kind == ENV_MSG && (answer->flags & ENVF_RELEASED)) return;
    ar__call_done(node, self, to, ref);
}

/* Turns a reply envelope into the call's result. */
static int finish(ar__env_t *e, ar_buf_t *reply)
{
    if (e->kind == ENV_WAKE) {
        ar__env_free(e);
        return AR_ETIMEDOUT;
    }
    if (e->msg.reason.code != AR_NORMAL) {
        int rc = (e->xflags & AR__XF_REFUSED)               ? AR_EAGAIN
                 : e->msg.reason.code == AR_NOCONNECTION ? AR_ENOCONN
                                                         : AR_ENOPROC;
        ar__env_free(e);
        return rc;
    }
    reply->data = ar__env_payload(e); /* ar_buf_free frees the envelope */
    reply->len = e->msg.len;
    return 0;
}

/* The plain call's CALL: to one pid. */
struct plain_call {
    ar_node_t *node;
    ar_pid_t to;
    uint32_t tag;
    const void *req;
    size_t len;
};
static int push_plain(void *ctx, ar_reply_to_t rt, ar_pid_t *to)
{
    struct plain_call *c = ctx;
    *to = c->to;
    return ar__send_msg(c->node, c->to, AR_MSG_CALL, c->tag, c->req, c->len, rt);
}

static int call_in_proc(ar_proc_t *p, ar__call_push_fn push, void *ctx, ar_buf_t *reply,
                        int timeout_ms)
{
    ar_node_t *node = p->node;
    ar_ref_t ref = ar__make_ref(node) | 1;
    ar__timer_t *t = NULL;
    p->wait_ref = ref;
    if (timeout_ms != AR_INFINITY && !(t = ar__wake_after(p, timeout_ms))) {
        p->wait_ref = 0;
        return AR_ENOMEM;
    }
    ar_pid_t to = AR_PID_NONE;
    int rc = push(ctx, (ar_reply_to_t){ar__proc_pid(p), ref}, &to);
    if (rc) {
        p->wait_ref = 0;
        ar__wait_done(p, t);
        return rc < 0 ? rc : 0;
    }
    ar__env_t *e = ar__wait(p, call_pred, &ref);
    ar__wait_done(p, t);
    release_target(node, ar__proc_pid(p), to, ref, e);
    if (!e) return AR_ENOMEM; /* it could not park: the call is given up */
    /* A reply fetched together with the timeout's wake-up (or a second reply) must not
     * outlive the call: nothing for this ref reaches the handler. */
    ar__env_t *extra;
    while ((extra = ar__inner_take(p, call_pred, &ref)) != NULL) ar__env_free(extra);
    ar__msg_taken(p, e);
    return finish(e, reply);
}

static int call_foreign(ar_node_t *node, ar__call_push_fn push, void *ctx, ar_buf_t *reply,
                        int timeout_ms)
{
    ar__waiter_t w;
    int rc = ar__waiter_open(node, &w);
    if (rc) return rc;
    ar_pid_t me = ar__proc_pid(w.p);
    ar_ref_t ref = ar__make_ref(node) | 1;
    w.p->wait_ref = ref;
    struct timespec deadline, *dl = NULL;
    if (timeout_ms != AR_INFINITY) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        dl = &deadline;
    }
    ar_pid_t to = AR_PID_NONE;
    rc = push(ctx, (ar_reply_to_t){me, ref}, &to);
    ar__env_t *got = NULL;
    if (rc == 0 && !(got = ar__waiter_wait(&w, call_pred, &ref, dl))) rc = AR_ETIMEDOUT;
    w.p->wait_ref = 0;
    if (got || rc == AR_ETIMEDOUT) /* a timed-out call is over too */
        release_target(node, me, to, ref, got);
    if (got) rc = finish(got, reply);
    ar__waiter_close(&w); /* later replies find it dead and are dropped */
    return rc < 0 ? rc : 0;
}

int ar__call_with(ar_node_t *node, ar__call_push_fn push, void *ctx, ar_buf_t *reply,
                  int timeout_ms)
{
    ar_proc_t *p = ar__current_proc();
    if (p && p->node == node) return call_in_proc(p, push, ctx, reply, timeout_ms);
    if (ar__current_sched() && ar__current_sched()->node == node) return AR_ENOTPROC;
    ar__outside_enter(node);
    /* a stopping node takes no new calls from outside: the stop does not wait on them */
    int rc = atomic_load_explicit(&node->stopping, memory_order_seq_cst)
                 ? AR_ECLOSED
                 : call_foreign(node, push, ctx, reply, timeout_ms);
    ar__outside_leave(node);
    return rc;
}

int ar_call(ar_node_t *node, ar_pid_t to, uint32_t tag, const void *req, size_t len,
            ar_buf_t *reply, int timeout_ms)
{
    if (!node || !reply || !ar__timeout_ok(timeout_ms)) return AR_EINVAL;
    reply->data = NULL;
    reply->len = 0;
    int rc = ar__check_payload(node, req, len);
    if (rc) return rc;
    ar_proc_t *p = ar__current_proc();
    if (p && p->node == node && ar_pid_eq(to, ar__proc_pid(p))) return AR_EDEADLK;
    struct plain_call c = {node, to, tag, req, len};
    return ar__call_with(node, push_plain, &c, reply, timeout_ms);
}

static ar__timer_t *ask_timer(ar__env_t *h)
{
    ar__timer_t *t;
    memcpy(&t, ar__env_payload(h), sizeof t);
    return t;
}

int ar_ask(ar_proc_t *self, ar_pid_t to, uint32_t tag, const void *req, size_t len,
           int timeout_ms, ar_ref_t *ref_out)
{
    if (!self || self != ar__current_proc() || !ref_out || !ar__timeout_ok(timeout_ms))
        return AR_EINVAL;
    ar_node_t *node = self->node;
    int rc = ar__check_payload(node, req, len);
    if (rc) return rc;
    ar__timer_t *timer = NULL;
    ar__env_t *a = ar__env_new(sizeof timer);        /* the ask itself, held as a half */
    ar__env_t *failed = a ? ar__env_new(0) : NULL; /* its answer, should `to` be dead */
    if (!failed) {
        ar__env_free(a);
        return AR_ENOMEM;
    }
    ar_ref_t ref = ar__make_ref(node); /* even: an ask */
    ar_pid_t me = ar__proc_pid(self);
    if (timeout_ms != AR_INFINITY) {
        ar__env_t *te = ar__env_new(0);
        if (te) {
            te->msg.kind = AR_MSG_REPLY;
            te->msg.ref = ref;
            te->msg.from = to;
            te->msg.reason = AR_REASON(AR_TIMEOUT);
            if (!(timer = ar__timer_start(node, timeout_ms, me, te, 0))) ar__env_free(te);
        }
        if (!timer) {
            ar__env_free(failed);
            ar__env_free(a);
            return AR_ENOMEM;
        }
    }
    rc = ar__send_msg(node, to, AR_MSG_CALL, tag, req, len, (ar_reply_to_t){me, ref});
    if (rc == AR_ENOPROC) { /* the outcome is a failed reply, like any other */
        ar__route_or_dead_letter(node, me, ar__env_recycle_reply(failed, to, (ar_reply_to_t){me, ref},
                                                          AR_REASON(AR_NOPROC)));
        failed = NULL;
        rc = 0;
    }
    ar__env_free(failed);
    if (rc) {
        if (timer) ar__timer_cancel(node, timer);
        ar__env_free(a);
        return rc;
    }
    memcpy(ar__env_payload(a), &timer, sizeof timer);
    ar__half_put(self, a, HALF_ASK, to, ref); /* may grow the table; never fails */
    *ref_out = ref;
    return 0;
}

bool ar__ask_answered(ar_proc_t *p, const ar__env_t *reply)
{
    ar__env_t *a = ar__half_take(p, HALF_ASK, AR_PID_NONE, reply->msg.ref);
    if (!a) return false;
    ar_node_t *node = p->node;
    ar__timer_t *t = ask_timer(a);
    if (t) ar__timer_cancel(node, t);
    if (reply->flags & ENVF_RELEASED) { /* the target answered, or is gone: it owes nothing */
        ar__env_free(a);
        return true;
    }
    /* it may still hold the call: the ask's envelope tells it to let go (no text: recycling
     * allocates nothing) */
    ar_reply_to_t k = a->msg.reply_to;
    ar__route_or_dead_letter(node, k.pid, ar__env_recycle(a, ENV_CALL_DONE, ar__proc_pid(p),
                                                          k.ref, AR_REASON(AR_NORMAL)));
    return true;
}

void ar__ask_drop(ar_node_t *node, ar__env_t *h)
{
    ar__timer_t *t = ask_timer(h);
    if (t) ar__timer_cancel(node, t);
    ar__env_free(h);
}
