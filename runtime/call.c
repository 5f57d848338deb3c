/* Calls: ar_call (from a process, or from a foreign thread) and ar_ask.
 *
 * A call is a CALL envelope with reply_to = {caller, ref}; odd refs mark ar_call, whose
 * caller drops any reply that arrives after it stopped waiting (p->wait_ref). A call to a
 * process that dies with the CALL queued is answered AR_NOPROC by the dead-letter path.
 *
 * A foreign thread has no process to receive the reply in, so it borrows a process slot
 * flagged P_FOREIGN for the duration of the call: a push that finds its mailbox marked
 * empty posts the thread's semaphore instead of scheduling anything. The thread consumes
 * the mailbox only while it holds the MB_EMPTY duty, so a timed-out wait first takes the
 * mark back (or waits for the post already on its way) before it touches the queue.
 */
#include "internal.h"

#include <errno.h>
#include <time.h>

ar__env_t *ar__wait(ar_proc_t *p, bool (*pred)(ar__env_t *, void *), void *ud);
ar__timer_t *ar__wake_after(ar_proc_t *p, int ms);
void ar__wait_done(ar_proc_t *p, ar__timer_t *t);

static bool any_env(ar__env_t *e, void *arg)
{
    (void)e;
    (void)arg;
    return true;
}

static bool call_pred(ar__env_t *e, void *arg)
{
    ar_ref_t ref = *(ar_ref_t *)arg;
    if (e->kind == ENV_WAKE) return e->msg.ref == ref;
    return e->kind == ENV_MSG && e->msg.kind == AR_MSG_REPLY && e->sync_reply &&
           e->msg.ref == ref;
}

/* The target may have taken the CALL and owe an answer: unless its answer says it is
 * settled (it answered itself, or it is gone), tell it the call is over. */
static void release_target(ar_node_t *node, ar_pid_t self, ar_pid_t to, ar_ref_t ref,
                           const ar__env_t *answer)
{
    if (answer && answer->kind == ENV_MSG && (answer->flags & ENVF_RELEASED)) return;
    ar__signal_send(node, ENV_CALL_DONE, self, to, ref, AR_REASON(AR_NORMAL), 0);
}

/* Turns a reply envelope into the call's result. */
static int finish(ar__env_t *e, ar_buf_t *reply)
{
    if (e->kind == ENV_WAKE) {
        ar__env_free(e);
        return AR_ETIMEDOUT;
    }
    if (e->msg.reason.code != AR_NORMAL) {
        int rc = e->msg.reason.code == AR_NOCONNECTION ? AR_ENOCONN : AR_ENOPROC;
        ar__env_free(e);
        return rc;
    }
    reply->data = ar__env_payload(e); /* ar_buf_free frees the envelope */
    reply->len = e->msg.len;
    return 0;
}

static int call_in_proc(ar_proc_t *p, ar_pid_t to, uint32_t tag, const void *req, size_t len,
                        ar_buf_t *reply, int timeout_ms)
{
    ar_node_t *node = p->node;
    ar_ref_t ref = ar__make_ref(node) | 1;
    ar__timer_t *t = NULL;
    p->wait_ref = ref;
    if (timeout_ms != AR_INFINITY && !(t = ar__wake_after(p, timeout_ms))) {
        p->wait_ref = 0;
        return AR_ENOMEM;
    }
    int rc = ar__send_msg(node, to, AR_MSG_CALL, tag, req, len,
                          (ar_reply_to_t){ar__proc_pid(p), ref});
    if (rc) {
        ar__wait_done(p, t);
        return rc;
    }
    ar__env_t *e = ar__wait(p, call_pred, &ref);
    ar__wait_done(p, t);
    release_target(node, ar__proc_pid(p), to, ref, e);
    /* A reply fetched together with the timeout's wake-up (or a second reply) must not
     * outlive the call: nothing for this ref reaches the handler. */
    ar__env_t *extra;
    while ((extra = ar__inner_take(p, call_pred, &ref)) != NULL) ar__env_free(extra);
    ar__msg_taken(p, e);
    return finish(e, reply);
}

static int call_foreign(ar_node_t *node, ar_pid_t to, uint32_t tag, const void *req, size_t len,
                        ar_buf_t *reply, int timeout_ms)
{
    ar__sem_t sem;
    ar_proc_t *w = ar__proc_alloc(node);
    if (!w) return AR_ENOMEM;
    ar__sem_init(&sem);
    w->state = &sem;
    atomic_store_explicit(&w->b, NULL, memory_order_relaxed);
    atomic_store_explicit(&w->flags, P_FOREIGN, memory_order_relaxed);
    uint64_t lo = AR__PID_LO(w->index, w->serial);
    ar_ref_t ref = ar__make_ref(node) | 1;
    w->wait_ref = ref;
    /* release: senders that find the pid see the flags and the semaphore */
    atomic_store_explicit(&w->pid_lo, lo, memory_order_release);

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
    int rc = ar__send_msg(node, to, AR_MSG_CALL, tag, req, len,
                          (ar_reply_to_t){(ar_pid_t){node->pid_hi, lo}, ref});
    ar__env_t *got = NULL;
    while (rc == 0 && !got) {
        ar__proc_fetch(w);
        got = ar__inner_take(w, call_pred, &ref);
        if (got) break;
        if (!ar__mb_try_mark(w, MB_EMPTY)) continue; /* more arrived meanwhile */
        if (ar__sem_wait(&sem, dl)) continue;      /* a push took the mark and posted */
        uintptr_t marked = (uintptr_t)&w->stub | MB_EMPTY;
        if (!atomic_compare_exchange_strong_explicit(&w->head, &marked, (uintptr_t)&w->stub,
                                                     memory_order_acquire, memory_order_relaxed))
            ar__sem_wait(&sem, NULL); /* a push took the mark: its post is on its way */
        ar__proc_fetch(w);
        got = ar__inner_take(w, call_pred, &ref);
        if (!got) rc = AR_ETIMEDOUT;
    }
    w->wait_ref = 0;
    if (got || rc == AR_ETIMEDOUT) /* a timed-out call is over too */
        release_target(node, (ar_pid_t){node->pid_hi, lo}, to, ref, got);
    if (got) rc = finish(got, reply);
    /* retire the waiter: later replies find it dead and are dropped; anyone who linked to
     * or monitored its pid (it is visible in reply_to) learns it is gone */
    atomic_store_explicit(&w->pid_lo, 0, memory_order_release);
    if (w->ext) {
        ar__signal_exit(w, (ar_pid_t){node->pid_hi, lo}, AR_REASON(AR_NOPROC), true);
        ar__free(w->ext);
        w->ext = NULL;
    }
    ar__env_t *e;
    while ((e = ar__inner_take(w, any_env, NULL)) != NULL)
        ar__dead_letter(node, w, e);
    ar__mb_drain_dead(node, w);
    ar__sem_destroy(&sem);
    ar__proc_release(w);
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
    if (p && p->node == node) {
        if (ar_pid_eq(to, ar__proc_pid(p))) return AR_EDEADLK;
        return call_in_proc(p, to, tag, req, len, reply, timeout_ms);
    }
    if (ar__current_sched() && ar__current_sched()->node == node) return AR_ENOTPROC;
    return call_foreign(node, to, tag, req, len, reply, timeout_ms);
}

int ar_ask(ar_proc_t *self, ar_pid_t to, uint32_t tag, const void *req, size_t len,
           int timeout_ms, ar_ref_t *ref_out)
{
    if (!self || self != ar__current_proc() || !ref_out || !ar__timeout_ok(timeout_ms))
        return AR_EINVAL;
    ar_node_t *node = self->node;
    int rc = ar__check_payload(node, req, len);
    if (rc) return rc;
    struct ar__proc_ext *x = ar__proc_ext(self);
    struct ar__ask *a = ar__calloc(1, sizeof *a);
    if (!x || !a) {
        ar__free(a);
        return AR_ENOMEM;
    }
    ar_ref_t ref = ar__make_ref(node); /* even: an ask */
    ar_pid_t me = ar__proc_pid(self);
    a->ref = ref;
    a->to = to;
    if (timeout_ms != AR_INFINITY) {
        ar__env_t *te = ar__env_new(0);
        if (!te) {
            ar__free(a);
            return AR_ENOMEM;
        }
        te->msg.kind = AR_MSG_REPLY;
        te->msg.ref = ref;
        te->msg.from = to;
        te->msg.reason = AR_REASON(AR_TIMEOUT);
        a->timer = ar__timer_start(node, timeout_ms, me, te, 0);
        if (!a->timer) {
            ar__env_free(te);
            ar__free(a);
            return AR_ENOMEM;
        }
    }
    a->next = x->asks;
    x->asks = a;
    rc = ar__send_msg(node, to, AR_MSG_CALL, tag, req, len, (ar_reply_to_t){me, ref});
    if (rc == AR_ENOPROC) {
        ar__reply_failure(node, to, (ar_reply_to_t){me, ref}, AR_NOPROC);
        rc = 0;
    } else if (rc) {
        x->asks = a->next;
        if (a->timer) ar__timer_cancel(node, a->timer);
        ar__free(a);
        return rc;
    }
    *ref_out = ref;
    return 0;
}
