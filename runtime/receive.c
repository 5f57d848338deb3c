/* Blocking inside a process: the wait primitive, ar_receive, ar_sleep.
 *
 * Every wake-up of a parked process is an envelope in its mailbox: a message, a reply, or
 * an ENV_WAKE from a timer carrying the wait's ref. So waiting is one loop: look in the
 * inner queue, fetch the outer queue (signals act; a fatal one unwinds the process), look
 * again, park until the next push. Envelopes the wait does not want stay queued in order.
 */
#include "internal.h"

bool ar__timeout_ok(int timeout_ms) { return timeout_ms >= 0 || timeout_ms == AR_INFINITY; }

ar__env_t *ar__wait(ar_proc_t *p, bool (*pred)(ar__env_t *, void *), void *ud)
{
    for (;;) {
        ar__env_t *e = ar__inner_take(p, pred, ud);
        if (e) return e;
        ar__proc_fetch(p);
        if (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_EXITING)
            ar__proc_unwind(p);
        e = ar__inner_take(p, pred, ud);
        if (e) return e;
        if (!ar__park(p)) return NULL;
    }
}

ar__timer_t *ar__wake_after(ar_proc_t *p, int ms)
{
    ar__timer_t *t = ar__timer_start_wake(p->node, ms, ar__proc_pid(p), p->wait_ref);
    p->wait_timer = t;
    return t;
}

void ar__wait_abandon(ar_proc_t *p)
{
    ar__wait_done(p, p->wait_timer);
}

void ar__wait_done(ar_proc_t *p, ar__timer_t *t)
{
    p->wait_ref = 0;
    p->wait_timer = NULL;
    if (t) ar__timer_cancel(p->node, t);
}

struct recv_match {
    bool (*match)(const ar_msg_t *m, void *ud);
    void *ud;
    ar_ref_t wake;
    bool internal; /* the runtime's own receive: it alone sees internal messages */
};
static bool recv_pred(ar__env_t *e, void *arg)
{
    struct recv_match *r = arg;
    if (e->kind == ENV_WAKE) return e->msg.ref == r->wake;
    return e->kind == ENV_MSG && ((e->xflags & AR__XF_INTERNAL) != 0) == r->internal &&
           (!r->match || r->match(&e->msg, r->ud));
}


int ar_receive(ar_proc_t *self, bool (*match)(const ar_msg_t *m, void *ud), void *ud,
               int timeout_ms, ar_msg_t **out)
{
    return ar__receive(self, match, ud, timeout_ms, out, false);
}

int ar__receive(ar_proc_t *self, bool (*match)(const ar_msg_t *m, void *ud), void *ud,
                int timeout_ms, ar_msg_t **out, bool internal)
{
    ar_proc_t *p = ar__self_ok(self);
    if (!p || !out || !ar__timeout_ok(timeout_ms)) return AR_EINVAL;
    *out = NULL;
    struct recv_match r = {match, ud, 0, internal};
    ar__env_t *e;
    if (timeout_ms == 0) {
        e = ar__inner_take(p, recv_pred, &r);
        if (!e) {
            ar__proc_fetch(p);
            if (atomic_load_explicit(&p->flags, memory_order_relaxed) & P_EXITING)
                ar__proc_unwind(p);
            e = ar__inner_take(p, recv_pred, &r);
        }
        if (!e) return AR_ETIMEDOUT;
    } else {
        ar__timer_t *t = NULL;
        if (timeout_ms != AR_INFINITY) {
            p->wait_ref = r.wake = ar__make_ref(p->node);
            t = ar__wake_after(p, timeout_ms);
            if (!t) {
                p->wait_ref = 0;
                return AR_ENOMEM;
            }
        }
        e = ar__wait(p, recv_pred, &r);
        ar__wait_done(p, t);
        if (!e) return AR_ENOMEM;
        if (e->kind == ENV_WAKE) {
            ar__env_free(e);
            return AR_ETIMEDOUT;
        }
    }
    ar__msg_taken(p, e);
    *out = &e->msg;
    return 0;
}

void ar_msg_release(ar_proc_t *self, ar_msg_t *m)
{
    (void)self;
    if (m) ar__msg_done(ar__current_sched(), ar__container_of(m, ar__env_t, msg));
}

static bool wake_pred(ar__env_t *e, void *arg)
{
    return e->kind == ENV_WAKE && e->msg.ref == *(ar_ref_t *)arg;
}

int ar_sleep(ar_proc_t *self, int ms)
{
    ar_proc_t *p = ar__self_ok(self);
    if (!p || !ar__timeout_ok(ms)) return AR_EINVAL;
    if (ms == 0) return 0;
    ar_ref_t ref = ar__make_ref(p->node);
    ar__timer_t *t = NULL;
    p->wait_ref = ref;
    if (ms != AR_INFINITY && !(t = ar__wake_after(p, ms))) {
        p->wait_ref = 0;
        return AR_ENOMEM;
    }
    ar__env_t *e = ar__wait(p, wake_pred, &ref);
    ar__wait_done(p, t);
    if (!e) return AR_ENOMEM;
    ar__env_free(e);
    return 0;
}
