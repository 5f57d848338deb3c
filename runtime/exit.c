/* The exit sequence: how anything with a pid ends.
 *
 * A process after its terminate, a process whose init failed, and a foreign thread's
 * waiter all end through ar__exit_sequence, whose steps run in this order:
 *
 *   1. release what it owns: the message it was handling, its timers, its wait's timer;
 *   2. release its name (names and registry keys hook in here, so a name is free before
 *      anyone hears of the death);
 *   3. unpublish its pid: from here every route to it fails, so whoever learns of the
 *      death sees it dead; then close its sockets (socket.c): after the unpublish, so
 *      that a socket handed to it either arrived before and is closed here, or finds it
 *      dead and stays with its giver;
 *   4. notify: every half it holds becomes the signal it stands for (EXIT to links, DOWN
 *      to watchers, DEMONITOR to the processes it monitored, failed replies to the calls
 *      it owed) but its pending asks, which are dropped with their timers (their answers
 *      find it gone), then whatever is still queued is answered and the mailbox marked
 *      dead;
 *   5. end its event subscriptions and emit its EXIT (or START_FAILED) event (events.c),
 *      after the name: whoever hears of the end finds the name free;
 *   6. free its memory and give its slot back.
 *
 * Step 4 allocates nothing but the room for a reason's text: every signal was reserved
 * as a half when its link, monitor or call was made (halves.c).
 * Runs on the thread that owns p: its scheduler, or the waiter's foreign thread.
 */
#include "internal.h"

/* Step 1. */
static void release_owned(ar_proc_t *p)
{
    ar__env_t *h = p->handling;
    if (h) { /* its handler crashed: an owed CALL stays a half, answered in step 4 */
        p->handling = NULL;
        h->flags &= (uint8_t)~ENVF_HANDED;
        if (!(h->flags & ENVF_OWED)) ar__env_free(h);
    }
    ar__proc_cancel_timers(p);
    ar__wait_abandon(p); /* it ended while parked in a timed wait */
}

/* Step 3. */
static void unpublish(ar_proc_t *p)
{
    /* release: pairs with the lookups' acquire; senders that got in before are answered
     * in step 4 */
    atomic_store_explicit(&p->pid_lo, 0, memory_order_release);
}

/* The signal a half stands for, as the ending process sends it. */
static ar__env_t *as_signal(ar__env_t *h, ar_pid_t self, ar_reason_t told, enum ar__end how)
{
    ar_reply_to_t key = h->msg.reply_to;
    switch (h->half) {
    case HALF_LINK:
        if (how == END_START_FAILED) /* as if it never linked */
            return ar__env_recycle(h, ENV_UNLINK, self, 0, AR_REASON(AR_NORMAL));
        h = ar__env_recycle(h, ENV_EXIT, self, 0, told);
        h->flags = ENVF_LINK;
        return h;
    case HALF_WATCHED:
        if (h->xflags & AR__XF_INTERNAL) { /* an exit note (struct ar__spawn_extra) */
            if (how == END_START_FAILED) {
                ar__env_free(h);
                return NULL;
            }
            told = AR_REASON(told.code); /* no text: it keeps its envelope, and its mark */
        }
        return ar__env_recycle(h, ENV_DOWN, self, key.ref, told);
    case HALF_MONITOR:
        return ar__env_recycle(h, ENV_DEMONITOR, self, key.ref, AR_REASON(AR_NORMAL));
    case HALF_CALL: return ar__env_recycle_reply(h, self, key, told);
    default: AR__ASSERT(!"a half of no kind"); return h;
    }
}

/* Step 4: each half becomes its signal, then the queue is answered. Signals go out kind
 * by kind, links first and DOWNs next, so a process linked to and monitoring the one that
 * ends sees its EXIT before its DOWN, as one sender's order requires. */
static void send_halves(ar_proc_t *p, ar_pid_t self, ar_reason_t told, enum ar__end how)
{
    static const enum ar__half_kind order[] = {HALF_LINK, HALF_WATCHED, HALF_MONITOR, HALF_CALL};
    ar_node_t *node = p->node;
    ar__env_t *by_kind[HALF_CALL + 1] = {NULL};
    for (ar__env_t *h = ar__halves_take_all(p), *next; h; h = next) {
        next = (ar__env_t *)atomic_load_explicit(&h->q.next, memory_order_relaxed);
        AR__ASSERT(h->half > HALF_NONE && h->half <= HALF_ASK);
        if (h->half == HALF_ASK) { /* owes nobody anything */
            ar__ask_drop(node, h);
            continue;
        }
        atomic_store_explicit(&h->q.next, (struct ar__qnode *)by_kind[h->half], memory_order_relaxed);
        by_kind[h->half] = h;
    }
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++)
        for (ar__env_t *h = by_kind[order[k]], *next; h; h = next) {
            next = (ar__env_t *)atomic_load_explicit(&h->q.next, memory_order_relaxed);
            ar_pid_t peer = h->msg.reply_to.pid;
            ar__env_t *sig = as_signal(h, self, told, how);
            if (sig) ar__route_or_dead_letter(node, peer, sig);
        }
}

static void notify(ar_proc_t *p, ar_pid_t self, ar_reason_t why, enum ar__end how)
{
    ar_node_t *node = p->node;
    ar_reason_t told = how == END_EXITED ? why : AR_REASON(AR_NOPROC);
    /* most short lives hold none (and no bucket array, which taking them all frees) */
    if (p->halves.n || p->halves.mask) send_halves(p, self, told, how);
    /* What reaches it before its mailbox is marked dead learns how it ended: a LINK or
     * MONITOR, a CALL it never took. What arrives after the mark gets AR_NOPROC. */
    ar__env_t *e = p->inner_head;
    p->inner_head = p->inner_tail = NULL;
    while (e) {
        ar__env_t *n = (ar__env_t *)atomic_load_explicit(&e->q.next, memory_order_relaxed);
        ar__dead_letter(node, p, e, told);
        e = n;
    }
    ar__mb_drain_dead(node, p, NULL, told);
}

/* Step 6. */
static void free_slot(ar_proc_t *p, enum ar__end how)
{
    ar_node_t *node = p->node;
    if (p->ext) {
        ar__free(p->ext->reason_text);
        ar__free(p->ext->timers);
        ar__free(p->ext);
        p->ext = NULL;
    }
    AR__ASSERT(p->halves.n == 0 && !p->inner_head && !p->handling); /* all answered */
    ar__proc_release(p); /* p may be someone else from here */
    if (how == END_EXITED) ar__count(ar__current_sched(), node, AR__EXITED);
    if (how != END_WAITER) ar__note_exit(node);
}

void ar__exit_sequence(ar_proc_t *p, ar_reason_t why, enum ar__end how)
{
    ar_pid_t self = ar__proc_pid(p);
    char name[AR_NAME_MAX]; /* the released name, for the exit event */
    release_owned(p);
    ar__names_release(p, name); /* step 2 */
    unpublish(p);
    ar__sockets_release_owner(p->node, self);
    notify(p, self, why, how);
    /* step 5: its subscriptions end, then EXIT (or START_FAILED); one relaxed load when
     * nobody listens */
    if (ar__events_wanted(p->node, AR__EV_EXIT_HOOK)) ar__events_exit(p, self, why, how, name[0] ? name : NULL);
    free_slot(p, how);
}
