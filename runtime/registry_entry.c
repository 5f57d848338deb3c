/* What every registry entry runs: the user's behaviour, wrapped to count what it handles
 * and to take part in its own reaping.
 *
 * Idleness is checked by the entry itself, with one internal tick every idle_ms: if it
 * handled nothing since the last tick (timers and direct sends count as much as what came
 * through the registry) and nothing waits in its mailbox, it asks the registry to reap it.
 * The registry marks the key HOLDING, waits a grace period, and sends REAP, which arrives
 * behind everything any sender routed to it. Only then does the entry decide: still idle,
 * it stops (AR_SHUTDOWN, terminate runs); not, it says BUSY and the key is LIVE again.
 * A tick costs one timer per entry and no work for entries that are not due.
 */
#include "registry.h"

static void arm_idle(ar_proc_t *self, struct reg_entry *e)
{
    int ms = e->r->cfg.idle_ms;
    if (ms <= 0 || e->idle_timer || e->check_out) return;
    e->handled_at_check = e->handled;
    /* out of memory: no tick now; the next message handled tries again */
    e->idle_timer = ar__timer_start_wake(e->r->node, ms, ar__proc_pid(self), AR__REF_TICK);
}

static bool has_queued(ar_proc_t *self) { return self->inner_head || ar__mb_has_more(self); }

static int entry_init(ar_proc_t *self, void *arg, void **state)
{
    struct reg_entry *e = arg;
    ar_registry_t *r = e->r;
    e->user_state = NULL;
    e->handled = e->handled_at_check = 0;
    e->idle_timer = NULL;
    e->check_out = false;
    /* known as the key's incarnation from its first line: a call of its own key, even
     * from this init, is AR_EDEADLK (registry.c) rather than a wait on itself */
    atomic_store_explicit(&e->pid_lo, ar_self(self).lo, memory_order_release);
    const ar_behaviour_t *b = r->cfg.behaviour;
    ar_registry_arg_t ra = {{e->key, e->keylen}, r->cfg.arg};
    int rc = b->init ? b->init(self, &ra, &e->user_state) : 0;
    if (rc < 0) return rc;
    *state = e;
    arm_idle(self, e);
    return 0;
}

/* Sends env (kept from the handler) to the registry as tag. */
static void tell_registry(struct reg_entry *e, ar__env_t *env, int tag, ar_pid_t self)
{
    env->msg.tag = (uint32_t)tag;
    env->xflags = XF_REGISTRY;
    struct reg_note *n = ar__env_payload(env);
    n->e = e;
    n->pid = self;
    ar__route_or_dead_letter(e->r->node, e->r->pid, env);
}

static void on_internal(ar_proc_t *self, struct reg_entry *e, const ar_msg_t *m)
{
    ar_node_t *node = e->r->node;
    ar_pid_t me = ar__proc_pid(self);
    switch (m->tag) {
    case REG_IDLE: {
        if (e->idle_timer) ar__timer_cancel(node, e->idle_timer); /* fired: drops our hold */
        e->idle_timer = NULL;
        ar__env_t *req;
        if (e->handled != e->handled_at_check || has_queued(self) ||
            !(req = reg_note_new(REG_REAP_REQUEST, e, me))) {
            arm_idle(self, e);
            return;
        }
        e->check_out = true;
        e->handled_at_check = e->handled;
        ar__route_or_dead_letter(node, e->r->pid, req);
        return;
    }
    case REG_REAP: {
        e->check_out = false;
        ar__env_t *env = ar__msg_keep(self, m);
        if (e->handled != e->handled_at_check || has_queued(self)) {
            tell_registry(e, env, REG_BUSY, me);
            arm_idle(self, e);
            return;
        }
        tell_registry(e, env, REG_REAPING, me);
        ar_stop(self, AR_REASON(AR_SHUTDOWN));
        return;
    }
    case REG_REARM:
        e->check_out = false;
        arm_idle(self, e);
        return;
    default:
        return;
    }
}

static void entry_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    struct reg_entry *e = state;
    if (ar__container_of(m, ar__env_t, msg)->xflags & XF_REGISTRY) {
        on_internal(self, e, m);
        return;
    }
    e->r->cfg.behaviour->handle(self, e->user_state, m);
    e->handled++;
    if (!e->idle_timer) arm_idle(self, e); /* a tick that could not be armed before */
}

static void entry_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    struct reg_entry *e = state;
    if (e->idle_timer) {
        ar__timer_cancel(e->r->node, e->idle_timer);
        e->idle_timer = NULL;
    }
    const ar_behaviour_t *b = e->r->cfg.behaviour;
    if (b->terminate) b->terminate(self, e->user_state, why);
}

void reg_entry_behaviour(ar_registry_t *r)
{
    r->entry_b.name = r->cfg.behaviour->name;
    r->entry_b.init = entry_init;
    r->entry_b.handle = entry_handle;
    r->entry_b.terminate = entry_terminate;
}
