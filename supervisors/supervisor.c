/* The supervisor behaviour, written on arbor's public API alone (as OTP's supervisor.erl
 * is written in Erlang).
 *
 * A supervisor traps exits and links its children (spawn with .link). Children are kept
 * in start order. When a child ends, the restart type decides whether it comes back, the
 * restart intensity decides whether the supervisor may restart at all, and the strategy
 * decides who restarts with it (SEMANTICS.md section 3). Stopping a child: monitor it,
 * unlink it (and drop an EXIT of it already queued), send the exit its shutdown policy
 * says, wait for the DOWN.
 *
 * The ar_sup_* calls (sup_api.c) reach the supervisor as CALLs with the tags below.
 *
 * Lifecycle events go out through ar_events_emit, as a user behaviour's would: RESTART
 * for each child that comes back, START_FAILED for a child that does not start, GIVE_UP
 * before the supervisor exits on reaching its intensity. A child remembers how it last
 * ended (its pid and reason), since a restart may come later (backoff, a retry).
 */
#include "sup_internal.h"

#include <stdio.h>
#include <stdlib.h> /* qsort, bsearch: all memory comes from ar_malloc */
#include <string.h>
#include <time.h>

/* The longest pause between tries when memory runs out: 2^7 = 128 ms. */
#define OOM_PAUSE_MAX_LOG2 7

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

typedef struct child {
    char *id;
    const ar_behaviour_t *b;
    void *arg;
    ar_restart_t restart;
    int shutdown_ms;
    ar_child_type_t type;
    bool significant;
    ar_pid_t pid; /* AR_PID_NONE: not running */
    bool restarting;
    unsigned backoffs;   /* consecutive restarts, for the backoff delay */
    uint64_t started_at; /* ms: when it last started (quiet time counts from there) */
    uint64_t retry_gen;  /* the retry it waits for; older retry messages are stale */
    size_t at;           /* its slot in kids */
    ar_pid_t old_pid;    /* how it last ended, for RESTART and GIVE_UP */
    ar_exit_code_t why_code;
    char *why_text;      /* copied only while someone subscribes to those */
} child_t;

/* Children by pid (lo word: local pids), so an exit is found in O(1) among 100k
 * simple_one_for_one children: open addressing with Robin Hood probing, so deletion
 * (backward shift) stops at the first entry at home even in a long run of pids. (The runtime has
 * the same kind of map inside; supervisors use the public API alone.) */
typedef struct pidmap {
    uint64_t *keys;
    child_t **vals;
    size_t cap, n;
} pidmap_t;

static size_t pm_slot(uint64_t key, size_t cap) { return (size_t)(key ^ (key >> 32)) & (cap - 1); }

static size_t pm_dist(const pidmap_t *m, size_t at)
{
    return (at - pm_slot(m->keys[at], m->cap)) & (m->cap - 1);
}

static bool pm_insert(pidmap_t *m, uint64_t key, child_t *v)
{
    size_t mask = m->cap - 1, j = pm_slot(key, m->cap), d = 0;
    for (;; j = (j + 1) & mask, d++) {
        if (!m->keys[j]) {
            m->keys[j] = key, m->vals[j] = v, m->n++;
            return true;
        }
        if (m->keys[j] == key) {
            m->vals[j] = v;
            return true;
        }
        size_t dj = pm_dist(m, j);
        if (dj < d) { /* Robin Hood: keeps a run ordered by home slot */
            uint64_t tk = m->keys[j];
            child_t *tv = m->vals[j];
            m->keys[j] = key, m->vals[j] = v;
            key = tk, v = tv, d = dj;
        }
    }
}

/* Makes room for one more entry, so the insert that follows cannot fail. */
static bool pm_reserve(pidmap_t *m)
{
    if ((m->n + 1) * 4 <= m->cap * 3) return true;
    size_t cap = m->cap ? m->cap * 2 : 16;
    pidmap_t g = {ar_calloc(cap, sizeof(uint64_t)), ar_calloc(cap, sizeof(child_t *)), cap, 0};
    if (!g.keys || !g.vals) {
        ar_free(g.keys);
        ar_free(g.vals);
        return false;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) pm_insert(&g, m->keys[i], m->vals[i]);
    ar_free(m->keys);
    ar_free(m->vals);
    *m = g;
    return true;
}

static child_t *pm_get(const pidmap_t *m, uint64_t key)
{
    if (!m->n) return NULL;
    for (size_t j = pm_slot(key, m->cap); m->keys[j]; j = (j + 1) & (m->cap - 1))
        if (m->keys[j] == key) return m->vals[j];
    return NULL;
}

static void pm_del(pidmap_t *m, uint64_t key)
{
    if (!m->n) return;
    size_t mask = m->cap - 1, j = pm_slot(key, m->cap);
    while (m->keys[j] != key) {
        if (!m->keys[j]) return;
        j = (j + 1) & mask;
    }
    /* shift the rest of the run back, up to an empty slot or an entry at home */
    for (size_t i = (j + 1) & mask; m->keys[i] && pm_dist(m, i) > 0; j = i, i = (i + 1) & mask) {
        m->keys[j] = m->keys[i];
        m->vals[j] = m->vals[i];
    }
    m->keys[j] = 0;
    m->n--;
}

typedef struct sup {
    pidmap_t by_pid;
    ar_strategy_t strategy;
    int intensity, period_ms;
    ar_auto_shutdown_t auto_shutdown;
    int backoff_min_ms, backoff_max_ms;
    uint64_t rng; /* jitter */
    uint64_t gen; /* numbers retries */
    ar_pid_t parent;
    child_t template_; /* simple_one_for_one */
    child_t **kids;    /* start order; NULL: a removed child's hole, until compact() */
    size_t n, cap, holes;
    uint64_t *hist; /* restart times, oldest first: hist[hist_head .. nhist) */
    size_t hist_head, nhist, hist_cap;
} sup_t;

/* ---- specs ---- */
int ar__sup_check_child(const ar_child_spec_t *c)
{
    if (!c || !c->id || !c->id[0] || strlen(c->id) >= AR_NAME_MAX || !c->behaviour ||
        !c->behaviour->handle)
        return AR_EINVAL;
    if (c->restart > AR_TEMPORARY || c->type > AR_SUPERVISOR) return AR_EINVAL;
    if (c->shutdown_ms < AR_SHUTDOWN_INFINITY) return AR_EINVAL;
    if (c->significant && c->restart == AR_PERMANENT) return AR_EINVAL;
    return 0;
}

int ar__sup_check_spec(const ar_sup_spec_t *s)
{
    if (!s || s->strategy > AR_SIMPLE_ONE_FOR_ONE || s->intensity < AR_NO_RESTARTS ||
        s->period_ms < 0 || s->auto_shutdown > AR_AUTO_SHUTDOWN_ALL || s->backoff_min_ms < 0 ||
        s->backoff_max_ms < 0 || (s->backoff_max_ms && s->backoff_max_ms < s->backoff_min_ms))
        return AR_EINVAL;
    if (s->nchildren && !s->children) return AR_EINVAL;
    if (s->strategy == AR_SIMPLE_ONE_FOR_ONE && s->nchildren != 1) return AR_EINVAL;
    for (size_t i = 0; i < s->nchildren; i++) {
        int rc = ar__sup_check_child(&s->children[i]);
        if (rc) return rc;
        if (s->children[i].significant && s->auto_shutdown == AR_AUTO_SHUTDOWN_NEVER)
            return AR_EINVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->children[i].id, s->children[j].id) == 0) return AR_EINVAL;
    }
    return 0;
}

static char *dup_str(const char *src)
{
    size_t n = strlen(src) + 1;
    char *d = ar_malloc(n);
    if (d) memcpy(d, src, n);
    return d;
}

/* A child record from a spec, with OTP's defaults for zero fields. */
static child_t *child_new(const ar_child_spec_t *c)
{
    child_t *k = ar_calloc(1, sizeof *k);
    if (!k || !(k->id = dup_str(c->id))) {
        ar_free(k);
        return NULL;
    }
    k->b = c->behaviour;
    k->arg = c->arg;
    k->restart = c->restart;
    k->type = c->behaviour == &ar_supervisor ? AR_SUPERVISOR : c->type;
    k->shutdown_ms = c->shutdown_ms ? c->shutdown_ms
                                    : (k->type == AR_SUPERVISOR ? AR_SHUTDOWN_INFINITY : 5000);
    k->significant = c->significant;
    return k;
}

static void child_free(child_t *k)
{
    if (k) ar_free(k->id), ar_free(k->why_text);
    ar_free(k);
}

/* A child's position, or -1 if it is no longer a child (its record may be freed: only
 * its address is compared, through the slot it had). */
static ssize_t index_of(sup_t *s, const child_t *k)
{
    for (size_t i = 0; i < s->n; i++) /* k may be stale: never read it before it is found */
        if (s->kids[i] == k) return (ssize_t)s->kids[i]->at;
    return -1;
}

/* Position of a live child record. */
static size_t pos(const child_t *k) { return k->at; }

static child_t *by_id(sup_t *s, const char *id)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->kids[i] && strcmp(s->kids[i]->id, id) == 0) return s->kids[i];
    return NULL;
}

static child_t *by_pid(sup_t *s, ar_pid_t pid)
{
    child_t *k = ar_pid_is_none(pid) ? NULL : pm_get(&s->by_pid, pid.lo);
    return k && ar_pid_eq(k->pid, pid) ? k : NULL;
}

/* A child stops running: it is no longer found by its pid. */
static void not_running(sup_t *s, child_t *k)
{
    if (!ar_pid_is_none(k->pid)) pm_del(&s->by_pid, k->pid.lo), k->old_pid = k->pid;
    k->pid = AR_PID_NONE;
}

/* ---- lifecycle events ---- */
static void emit(ar_proc_t *self, ar_event_kind_t kind, ar_pid_t pid, const child_t *k,
                 const char *behaviour, ar_pid_t supervisor)
{
    ar_event_t e = {.kind = kind, .pid = pid, .supervisor = supervisor, .behaviour = behaviour};
    if (k) {
        e.old_pid = k->old_pid;
        e.name = k->id;
        e.reason = (ar_reason_t){k->why_code, k->why_text};
    }
    ar_events_emit(ar_node(self), &e);
}

/* How k ended: the reason a RESTART or GIVE_UP will tell. */
static void remember_end(ar_proc_t *self, child_t *k, ar_reason_t why)
{
    k->why_code = why.code;
    ar_free(k->why_text);
    k->why_text = NULL; /* without memory for the text, the code alone */
    if (why.text && ar_events_wanted(ar_node(self), AR_EV_RESTART | AR_EV_GIVE_UP)) {
        size_t n = strlen(why.text) + 1;
        if ((k->why_text = ar_malloc(n)) != NULL) memcpy(k->why_text, why.text, n);
    }
}

/* A child that did not start: its start error as the reason. */
static void emit_start_failed(ar_proc_t *self, const child_t *k, int rc)
{
    if (rc == AR_ECLOSED || !ar_events_wanted(ar_node(self), AR_EV_START_FAILED))
        return; /* the node stops: no failure of the child's */
    char text[64];
    snprintf(text, sizeof text, "start failed: %s", ar_err_name(rc));
    ar_event_t e = {.kind = AR_EV_START_FAILED, .supervisor = ar_self(self),
                    .behaviour = k->b->name, .name = k->id,
                    .reason = (ar_reason_t){AR_ERROR, text}};
    ar_events_emit(ar_node(self), &e);
}

static int append(sup_t *s, child_t *k)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        child_t **n = ar_realloc(s->kids, cap * sizeof *n);
        if (!n) return AR_ENOMEM;
        s->kids = n;
        s->cap = cap;
    }
    k->at = s->n;
    s->kids[s->n++] = k;
    return 0;
}

/* Squeezes out the holes removals left (at a safe point, never inside an iteration). */
static void compact(sup_t *s)
{
    size_t j = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->kids[i]) {
            s->kids[j] = s->kids[i];
            s->kids[j]->at = j;
            j++;
        }
    s->n = j;
    s->holes = 0;
}

/* Removes a child in O(1): its slot becomes a hole that compact() reclaims later. */
static void drop(sup_t *s, child_t *k)
{
    if (!ar_pid_is_none(k->pid)) pm_del(&s->by_pid, k->pid.lo);
    s->kids[pos(k)] = NULL;
    s->holes++;
    child_free(k);
}

/* ---- memory pressure ---- */
/* Out of memory, a supervisor waits a moment and tries again: what it was doing cannot be
 * left half done (a child left running, a retry or an answer lost), and memory comes back
 * as processes end. */
static void pause_for_memory(ar_proc_t *self, unsigned *attempt)
{
    int ms = 1 << (*attempt < OOM_PAUSE_MAX_LOG2 ? *attempt : OOM_PAUSE_MAX_LOG2);
    (*attempt)++;
    ar_sleep(self, ms); /* without memory for its timer, the next try comes at once */
}

static void signal_child(ar_proc_t *self, ar_pid_t pid, ar_exit_code_t code)
{
    unsigned attempt = 0;
    while (ar_exit(ar_node(self), pid, AR_REASON(code)) == AR_ENOMEM)
        pause_for_memory(self, &attempt);
}

static void send_self(ar_proc_t *self, uint32_t tag, const void *data, size_t len)
{
    unsigned attempt = 0;
    while (ar_send(ar_node(self), ar_self(self), tag, data, len) == AR_ENOMEM)
        pause_for_memory(self, &attempt);
}

static void answer(ar_proc_t *self, ar_reply_to_t to, const void *data, size_t len)
{
    unsigned attempt = 0;
    while (ar_reply(ar_node(self), to, data, len) == AR_ENOMEM) pause_for_memory(self, &attempt);
}

/* ---- starting and stopping one child ---- */
static int start_one(ar_proc_t *self, sup_t *s, child_t *k)
{
    /* room to find it by pid first: a child the supervisor cannot find is not started */
    if (!pm_reserve(&s->by_pid)) return AR_ENOMEM;
    ar_spawn_opts_t o = {.link = true};
    ar_pid_t pid;
    int rc = ar_spawn(ar_node(self), k->b, k->arg, &o, &pid);
    if (rc == 0) {
        pm_insert(&s->by_pid, pid.lo, k);
        k->pid = pid;
        k->restarting = false;
        k->started_at = now_ms();
    } else {
        emit_start_failed(self, k, rc);
    }
    return rc;
}

/* Starts k again after it ended: a RESTART when it runs. */
static int restart_child(ar_proc_t *self, sup_t *s, child_t *k)
{
    int rc = start_one(self, s, k);
    if (rc == 0) emit(self, AR_EV_RESTART, k->pid, k, k->b->name, ar_self(self));
    return rc;
}

/* How a stopping child's end is seen: its DOWN, or (with no memory for a monitor) the
 * EXIT of its link, which the supervisor keeps and, trapping exits, receives. */
typedef struct watch {
    ar_pid_t pid;
    ar_ref_t ref; /* 0: watched through the link */
} watch_t;

static bool end_of(const ar_msg_t *m, void *ud)
{
    const watch_t *w = ud;
    if (w->ref) return m->kind == AR_MSG_DOWN && m->ref == w->ref;
    return m->kind == AR_MSG_EXIT && ar_pid_eq(m->from, w->pid);
}

static bool exit_from(const ar_msg_t *m, void *ud)
{
    return m->kind == AR_MSG_EXIT && ar_pid_eq(m->from, *(ar_pid_t *)ud);
}

/* Monitors and unlinks a child about to be stopped (or keeps the link, without memory
 * for a monitor). An EXIT of it already queued is no crash to act on: with drop_exit it
 * goes now (one scan of the mailbox: for one child at a time), else its caller filters
 * it out as it waits (a parallel stop, where a scan per child would be quadratic). */
static watch_t watch(ar_proc_t *self, ar_pid_t pid, bool drop_exit)
{
    watch_t w = {pid, 0};
    if (ar_monitor(self, pid, &w.ref) != 0) return (watch_t){pid, 0};
    ar_unlink(self, pid);
    ar_msg_t *m = NULL;
    while (drop_exit && ar_receive(self, exit_from, &pid, 0, &m) == 0) ar_msg_release(self, m);
    return w;
}

/* Waits up to ms (AR_INFINITY: no limit) for the watched child's end: 0, AR_ETIMEDOUT, or
 * AR_ENOMEM when the supervisor cannot even block (its caller then kills the child and
 * gives up waiting: the late DOWN or EXIT finds no child and is ignored). */
static int wait_end(ar_proc_t *self, watch_t *w, int ms)
{
    ar_msg_t *m = NULL;
    int rc = ar_receive(self, end_of, w, ms, &m);
    if (rc == 0) ar_msg_release(self, m);
    return rc;
}

/* Milliseconds left until `until` (0: no deadline) for a wait of up to ms. */
static int bounded(int ms, uint64_t until)
{
    if (!until) return ms;
    uint64_t now = now_ms();
    int left = now >= until ? 0 : (int)(until - now);
    return (ms == AR_INFINITY || ms > left) ? left : ms;
}

static int shutdown_wait(const child_t *k)
{
    return k->shutdown_ms == AR_SHUTDOWN_INFINITY ? AR_INFINITY : k->shutdown_ms;
}

/* A child supervisor of ours stopped under a deadline is asked to stop within the time
 * left, so the deadline reaches the whole tree; an exit signal carries no deadline. */
static bool stop_subtree(ar_proc_t *self, const child_t *k, uint64_t until)
{
    if (!until || k->b != &ar_supervisor) return false;
    ar__sup_req_t q = {.timeout_ms = bounded(AR_INFINITY, until)};
    ar_buf_t b;
    if (ar_call(ar_node(self), k->pid, AR__SUP_STOP, &q, sizeof q, &b,
                q.timeout_ms + AR__SUP_STOP_GRACE_MS) == 0)
        ar_buf_free(&b);
    return true;
}

/* Stops a running child by its shutdown policy, within `until` (0: no deadline); its end
 * is neither restarted nor reported. false if it had to be killed for the deadline. */
static bool stop_one(ar_proc_t *self, sup_t *s, child_t *k, uint64_t until)
{
    if (ar_pid_is_none(k->pid)) return true;
    bool in_time = true;
    watch_t w = watch(self, k->pid, true);
    int rc = AR_ETIMEDOUT;
    if (k->shutdown_ms != AR_SHUTDOWN_BRUTAL) {
        if (!stop_subtree(self, k, until)) signal_child(self, k->pid, AR_SHUTDOWN);
        int own = shutdown_wait(k), ms = bounded(own, until);
        rc = wait_end(self, &w, ms);
        if (rc == AR_ETIMEDOUT && ms != own) in_time = false; /* cut short by the deadline */
    }
    if (rc != 0) { /* brutal, or it did not stop in time: kill it */
        signal_child(self, k->pid, AR_KILL);
        wait_end(self, &w, AR_INFINITY);
    }
    not_running(s, k);
    remember_end(self, k, AR_REASON(rc == 0 ? AR_SHUTDOWN : AR_KILLED)); /* by us */
    return in_time;
}

typedef struct by_ref {
    ar_ref_t ref;
    size_t at; /* its watch */
} by_ref_t;

static int cmp_ref(const void *a, const void *b)
{
    ar_ref_t x = ((const by_ref_t *)a)->ref, y = ((const by_ref_t *)b)->ref;
    return x < y ? -1 : x > y;
}

static int cmp_watch_pid(const void *a, const void *b)
{
    uint64_t x = ((const watch_t *)a)->pid.lo, y = ((const watch_t *)b)->pid.lo;
    return x < y ? -1 : x > y;
}

struct stopping {
    watch_t *ws;   /* sorted by pid */
    by_ref_t *refs; /* the monitored ones, sorted by ref */
    size_t n, nrefs;
};

/* Which stopping child a message tells the end of (SIZE_MAX: none). An EXIT of a
 * monitored one came before its unlink and tells nothing; its DOWN follows. */
static size_t ended(const struct stopping *st, const ar_msg_t *m)
{
    if (m->kind == AR_MSG_DOWN) {
        by_ref_t key = {m->ref, 0}, *hit = bsearch(&key, st->refs, st->nrefs, sizeof key, cmp_ref);
        return hit ? hit->at : SIZE_MAX;
    }
    watch_t key = {m->from, 0}, *hit = bsearch(&key, st->ws, st->n, sizeof key, cmp_watch_pid);
    return hit && !hit->ref ? (size_t)(hit - st->ws) : SIZE_MAX;
}

/* A DOWN, or an EXIT of one of the stopping children (dropped, or an end). */
static bool down_or_their_exit(const ar_msg_t *m, void *ud)
{
    const struct stopping *st = ud;
    if (m->kind == AR_MSG_DOWN) return true;
    watch_t key = {m->from, 0};
    return m->kind == AR_MSG_EXIT && bsearch(&key, st->ws, st->n, sizeof key, cmp_watch_pid);
}

/* simple_one_for_one: all children are alike, so they stop together, under one timer:
 * every one gets its exit at once, then their ends are awaited until the template's
 * shutdown time (or the deadline); whoever is left is killed. false if the deadline
 * killed any. */
static bool stop_all_parallel(ar_proc_t *self, sup_t *s, uint64_t until)
{
    size_t cap = s->n ? s->n : 1, n = 0;
    watch_t *ws = ar_malloc(cap * sizeof *ws);
    by_ref_t *refs = ar_malloc(cap * sizeof *refs);
    bool *seen = ar_calloc(cap, sizeof *seen);
    if (!ws || !refs || !seen) { /* no memory for the batch: one at a time */
        ar_free(ws);
        ar_free(refs);
        ar_free(seen);
        bool in_time = true;
        for (size_t i = s->n; i-- > 0;)
            if (s->kids[i]) in_time &= stop_one(self, s, s->kids[i], until);
        return in_time;
    }
    int ms = s->template_.shutdown_ms;
    for (size_t i = 0; i < s->n; i++) {
        child_t *k = s->kids[i];
        if (!k || ar_pid_is_none(k->pid)) continue;
        ws[n] = watch(self, k->pid, false);
        signal_child(self, k->pid, ms == AR_SHUTDOWN_BRUTAL ? AR_KILL : AR_SHUTDOWN);
        n++;
        not_running(s, k);
    }
    qsort(ws, n, sizeof *ws, cmp_watch_pid);
    struct stopping st = {ws, refs, n, 0};
    for (size_t i = 0; i < n; i++)
        if (ws[i].ref) refs[st.nrefs++] = (by_ref_t){ws[i].ref, i};
    qsort(refs, st.nrefs, sizeof *refs, cmp_ref);
    size_t left = n;
    int own = ms == AR_SHUTDOWN_INFINITY ? AR_INFINITY : ms, limit = bounded(own, until);
    uint64_t end = limit == AR_INFINITY ? 0 : now_ms() + (uint64_t)limit;
    bool killed = ms == AR_SHUTDOWN_BRUTAL, in_time = true;
    while (left > 0) {
        ar_msg_t *m = NULL;
        int rc = ar_receive(self, down_or_their_exit, &st,
                            killed || !end ? AR_INFINITY : bounded(AR_INFINITY, end), &m);
        if (rc == 0) {
            size_t at = ended(&st, m);
            if (at != SIZE_MAX && !seen[at]) {
                seen[at] = true;
                left--;
            }
            ar_msg_release(self, m);
        } else if (!killed) { /* time is up (or it cannot block): the rest are killed */
            for (size_t i = 0; i < n; i++)
                if (!seen[i]) signal_child(self, ws[i].pid, AR_KILL);
            killed = true;
            if (limit != own) in_time = false; /* cut short by the deadline */
        } else {
            break; /* it cannot block at all: the killed ones end on their own */
        }
    }
    ar_free(ws);
    ar_free(refs);
    ar_free(seen);
    return in_time;
}

/* Stops the children at [from, n) in reverse start order, within `until` (0: none).
 * false if the deadline made it kill any. */
static bool stop_from(ar_proc_t *self, sup_t *s, size_t from, uint64_t until)
{
    if (s->strategy == AR_SIMPLE_ONE_FOR_ONE && from == 0) return stop_all_parallel(self, s, until);
    bool in_time = true;
    for (size_t i = s->n; i-- > from;)
        if (s->kids[i]) in_time &= stop_one(self, s, s->kids[i], until);
    return in_time;
}

/* ---- restarts ---- */
/* Records a restart; false if it would be more than `intensity` within the period. */
static bool may_restart(ar_proc_t *self, sup_t *s)
{
    uint64_t now = now_ms();
    /* the oldest are first: those out of the period leave from the head (amortised O(1)) */
    while (s->hist_head < s->nhist && now - s->hist[s->hist_head] > (uint64_t)s->period_ms)
        s->hist_head++;
    if ((int)(s->nhist - s->hist_head) >= s->intensity) return false;
    if (s->hist_head > 0 && s->hist_head * 2 >= s->nhist) { /* reclaim the dead head */
        memmove(s->hist, s->hist + s->hist_head, (s->nhist - s->hist_head) * sizeof *s->hist);
        s->nhist -= s->hist_head;
        s->hist_head = 0;
    }
    if (s->nhist == s->hist_cap) { /* short of memory, it waits: it never gives up for it */
        size_t cap = s->hist_cap ? s->hist_cap * 2 : 8;
        uint64_t *h;
        unsigned attempt = 0;
        while (!(h = ar_realloc(s->hist, cap * sizeof *h))) pause_for_memory(self, &attempt);
        s->hist = h;
        s->hist_cap = cap;
    }
    s->hist[s->nhist++] = now;
    return true;
}

static void give_up(ar_proc_t *self, sup_t *s)
{
    stop_from(self, s, 0, 0);
    ar_stop(self, AR_REASON(AR_SHUTDOWN));
}

/* Backoff (beyond OTP): the n-th consecutive restart of a child waits min * 2^(n-1) ms,
 * capped at max, +-20% jitter; n starts again after a quiet period. */
static int backoff_ms(sup_t *s, child_t *k)
{
    /* a child that ran for a quiet period since its last start begins again at min */
    if (k->started_at && now_ms() - k->started_at > (uint64_t)s->period_ms) k->backoffs = 0;
    unsigned n = k->backoffs++;
    uint64_t d = (uint64_t)s->backoff_min_ms << (n < 24 ? n : 24);
    uint64_t cap = s->backoff_max_ms ? (uint64_t)s->backoff_max_ms : 3600000u;
    if (d > cap) d = cap;
    s->rng ^= s->rng << 13, s->rng ^= s->rng >> 7, s->rng ^= s->rng << 17;
    int64_t jitter = (int64_t)(s->rng % (d * 2 / 5 + 1)) - (int64_t)(d / 5);
    return (int)((int64_t)d + jitter);
}

struct retry_msg {
    child_t *k;  /* maybe freed since: compared, never read, until found among the kids */
    uint64_t gen;
    size_t at;   /* where it was (a compaction may have moved it since) */
};

/* Tries k again later, through the mailbox, so calls and shutdown are served meanwhile;
 * it shows as restarting until then. */
static void retry_later(ar_proc_t *self, sup_t *s, child_t *k)
{
    k->restarting = true;
    struct retry_msg r = {k, k->retry_gen = ++s->gen, pos(k)};
    if (s->backoff_min_ms > 0 &&
        ar_send_after(ar_node(self), backoff_ms(s, k), ar_self(self), AR__SUP_RETRY, &r,
                      sizeof r, NULL) == 0)
        return;
    send_self(self, AR__SUP_RETRY, &r, sizeof r); /* no timer: retried at once */
}

/* Starts k again now; a failed start is retried through the mailbox. */
static void restart_one(ar_proc_t *self, sup_t *s, child_t *k)
{
    if (restart_child(self, s, k) != 0) retry_later(self, s, k);
}

/* A group was stopped for a restart: its temporary children are gone for good, before
 * any start (one that fails would otherwise leave those after it kept). */
static void drop_temporaries(sup_t *s, size_t from)
{
    for (size_t i = from; i < s->n; i++)
        if (s->kids[i] && s->kids[i]->restart == AR_TEMPORARY) drop(s, s->kids[i]);
}

/* Restarts the children at [from, n) in start order. */
static void restart_from(ar_proc_t *self, sup_t *s, size_t from)
{
    for (size_t i = from; i < s->n; i++) {
        child_t *k = s->kids[i];
        if (!k) continue;
        if (restart_child(self, s, k) != 0) { /* the group start stops here; retried as a group */
            retry_later(self, s, k);
            return;
        }
    }
}

/* A restart attempt from child k: counted against the intensity (past it, the supervisor
 * gives up), then the strategy's restart. A retry of a failed restart is the same attempt
 * again, from the child that failed (OTP's try_again_restart). */
static void restart_by_strategy(ar_proc_t *self, sup_t *s, child_t *k)
{
    if (!may_restart(self, s)) { /* GIVE_UP before the children go and it exits */
        emit(self, AR_EV_GIVE_UP, ar_self(self), k, ar_supervisor.name, s->parent);
        give_up(self, s);
        return;
    }
    size_t at = pos(k);
    switch (s->strategy) {
    case AR_ONE_FOR_ONE:
    case AR_SIMPLE_ONE_FOR_ONE:
        restart_one(self, s, k);
        break;
    case AR_ONE_FOR_ALL:
        stop_from(self, s, 0, 0);
        drop_temporaries(s, 0);
        restart_from(self, s, 0);
        break;
    case AR_REST_FOR_ONE:
        stop_from(self, s, at + 1, 0);
        drop_temporaries(s, at + 1);
        restart_from(self, s, at);
        break;
    }
}

/* A significant child ended for good: with auto_shutdown ANY the supervisor stops; with
 * ALL, when it was the last significant child running. */
static bool significant_end(ar_proc_t *self, sup_t *s, child_t *k)
{
    if (!k->significant || s->auto_shutdown == AR_AUTO_SHUTDOWN_NEVER) return false;
    if (s->auto_shutdown == AR_AUTO_SHUTDOWN_ALL)
        for (size_t i = 0; i < s->n; i++)
            if (s->kids[i] && s->kids[i] != k && s->kids[i]->significant &&
                !ar_pid_is_none(s->kids[i]->pid))
                return false;
    give_up(self, s);
    return true;
}

static void child_ended(ar_proc_t *self, sup_t *s, child_t *k, ar_reason_t why)
{
    not_running(s, k);
    remember_end(self, k, why);
    if (k->restart == AR_TEMPORARY ||
        (k->restart == AR_TRANSIENT && (why.code == AR_NORMAL || why.code == AR_SHUTDOWN))) {
        if (significant_end(self, s, k)) return;
        if (k->restart == AR_TEMPORARY || s->strategy == AR_SIMPLE_ONE_FOR_ONE) drop(s, k);
        return;
    }
    if (s->backoff_min_ms > 0) /* the attempt comes after the backoff, counted then */
        retry_later(self, s, k);
    else
        restart_by_strategy(self, s, k);
}

/* ---- the behaviour ---- */
static int sup_init(ar_proc_t *self, void *arg, void **state)
{
    const ar_sup_spec_t *spec = arg;
    int rc = ar__sup_check_spec(spec);
    if (rc) return rc;
    sup_t *s = ar_calloc(1, sizeof *s);
    if (!s) return AR_ENOMEM;
    s->strategy = spec->strategy;
    s->intensity = spec->intensity == AR_NO_RESTARTS ? 0 : (spec->intensity ? spec->intensity : 1);
    s->period_ms = spec->period_ms ? spec->period_ms : 5000;
    s->auto_shutdown = spec->auto_shutdown;
    s->backoff_min_ms = spec->backoff_min_ms;
    s->backoff_max_ms = spec->backoff_max_ms;
    s->rng = ar_self(self).lo * 0x9E3779B97F4A7C15ull | 1;
    ar_proc_info_t info;
    if (ar_proc_info(ar_node(self), ar_self(self), &info) == 0) s->parent = info.parent;
    ar_trap_exit(self, true);
    *state = s;
    if (s->strategy == AR_SIMPLE_ONE_FOR_ONE) {
        child_t *t = child_new(&spec->children[0]);
        if (!t) goto fail;
        s->template_ = *t;
        ar_free(t);
        return 0;
    }
    for (size_t i = 0; i < spec->nchildren; i++) {
        child_t *k = child_new(&spec->children[i]);
        if (!k || append(s, k) != 0) {
            child_free(k);
            rc = AR_ENOMEM;
            goto fail;
        }
        if ((rc = start_one(self, s, k)) != 0) goto fail;
    }
    return 0;
fail: /* the started ones stop in reverse order; nothing is left behind */
    stop_from(self, s, 0, 0);
    for (size_t i = 0; i < s->n; i++) child_free(s->kids[i]); /* NULL holes: no-op */
    ar_free(s->kids);
    ar_free(s->by_pid.keys);
    ar_free(s->by_pid.vals);
    ar_free(s->template_.id);
    ar_free(s);
    *state = NULL;
    return rc ? rc : AR_ENOMEM;
}

static void reply(ar_proc_t *self, const ar_msg_t *m, const ar__sup_reply_t *r)
{
    answer(self, m->reply_to, r, sizeof *r);
}

static void handle_call(ar_proc_t *self, sup_t *s, const ar_msg_t *m)
{
    ar__sup_reply_t r = {0};
    const ar__sup_req_t *q = m->data;
    bool simple = s->strategy == AR_SIMPLE_ONE_FOR_ONE;
    if (m->len < sizeof *q && m->tag != AR__SUP_WHICH) {
        r.rc = AR_EINVAL;
        reply(self, m, &r);
        return;
    }
    child_t *k = NULL;
    switch (m->tag) {
    case AR__SUP_START: {
        child_t *nk;
        if (simple) {
            nk = ar_calloc(1, sizeof *nk);
            if (nk) *nk = s->template_, nk->id = dup_str(s->template_.id), nk->arg = q->arg;
        } else {
            if ((r.rc = ar__sup_check_child(&q->spec)) != 0) break;
            if ((k = by_id(s, q->spec.id)) != NULL) {
                r.rc = ar_pid_is_none(k->pid) ? AR_EALREADY : AR_EEXIST;
                r.pid = k->pid;
                break;
            }
            nk = child_new(&q->spec);
        }
        if (!nk || !nk->id || append(s, nk) != 0) {
            if (nk) child_free(nk);
            r.rc = AR_ENOMEM;
            break;
        }
        if ((r.rc = start_one(self, s, nk)) != 0) {
            s->kids[--s->n] = NULL; /* it was appended last */
            child_free(nk);
            break;
        }
        r.pid = nk->pid;
        break;
    }
    case AR__SUP_TERMINATE:
        if (simple) {
            if (q->id[0]) {
                r.rc = AR_ENOTSUP; /* its children are known by pid only */
                break;
            }
            if (!(k = by_pid(s, q->pid))) { /* gone already: fine; alive and not ours: no */
                ar_proc_info_t pi;
                r.rc = ar_proc_info(ar_node(self), q->pid, &pi) == AR_ENOPROC ? 0 : AR_ENOENT;
                break;
            }
            stop_one(self, s, k, 0);
            drop(s, k);
            break;
        }
        if (!(k = by_id(s, q->id))) {
            r.rc = AR_ENOENT;
            break;
        }
        stop_one(self, s, k, 0);
        k->restarting = false;
        if (k->restart == AR_TEMPORARY) drop(s, k);
        break;
    case AR__SUP_RESTART:
        if (simple) {
            r.rc = AR_ENOTSUP;
        } else if (!(k = by_id(s, q->id))) {
            r.rc = AR_ENOENT;
        } else if (!ar_pid_is_none(k->pid) || k->restarting) {
            r.rc = AR_EBUSY;
        } else if ((r.rc = start_one(self, s, k)) == 0) {
            r.pid = k->pid;
        }
        break;
    case AR__SUP_DELETE:
        if (simple) {
            r.rc = AR_ENOTSUP;
        } else if (!(k = by_id(s, q->id))) {
            r.rc = AR_ENOENT;
        } else if (!ar_pid_is_none(k->pid) || k->restarting) {
            r.rc = AR_EBUSY;
        } else {
            drop(s, k);
        }
        break;
    case AR__SUP_COUNT:
        r.counts.specs = simple ? 1 : s->n - s->holes;
        for (size_t i = 0; i < s->n; i++) {
            if (!s->kids[i]) continue;
            if (!ar_pid_is_none(s->kids[i]->pid)) r.counts.active++;
            if (s->kids[i]->type == AR_SUPERVISOR)
                r.counts.supervisors++;
            else
                r.counts.workers++;
        }
        break;
    case AR__SUP_WHICH: { /* the answer's header, then the children */
        compact(s);
        size_t bytes = sizeof r + s->n * sizeof(ar_child_info_t);
        char *buf = ar_calloc(1, bytes);
        if (!buf) {
            r.rc = AR_ENOMEM;
            break;
        }
        r.counts.specs = s->n;
        memcpy(buf, &r, sizeof r);
        ar_child_info_t *out = (ar_child_info_t *)(buf + sizeof r);
        for (size_t i = 0; i < s->n; i++) {
            snprintf(out[i].id, sizeof out[i].id, "%s", s->kids[i]->id);
            out[i].pid = s->kids[i]->pid;
            out[i].restarting = s->kids[i]->restarting;
            out[i].restart = s->kids[i]->restart;
            out[i].type = s->kids[i]->type;
        }
        answer(self, m->reply_to, buf, bytes);
        ar_free(buf);
        return;
    }
    case AR__SUP_STOP: { /* within the caller's time, then it ends */
        uint64_t until = q->timeout_ms == AR_INFINITY ? 0 : now_ms() + (uint64_t)q->timeout_ms;
        if (!stop_from(self, s, 0, until)) r.rc = AR_ETIMEDOUT;
        reply(self, m, &r);
        ar_stop(self, AR_REASON(AR_SHUTDOWN));
        return;
    }
    default:
        r.rc = AR_EINVAL;
    }
    reply(self, m, &r);
}

static void sup_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sup_t *s = state;
    if (s->holes > 64 && s->holes * 2 > s->n) compact(s); /* amortised O(1) per removal */
    if (m->kind == AR_MSG_CALL) {
        handle_call(self, s, m);
    } else if (m->kind == AR_MSG_EXIT) {
        child_t *k = by_pid(s, m->from);
        if (k) {
            child_ended(self, s, k, m->reason);
        } else if ((ar_pid_eq(m->from, s->parent) || ar_pid_is_none(s->parent)) &&
                   m->reason.code != AR_NORMAL) {
            /* the parent (or, with none, anyone) asks us to stop: children first */
            stop_from(self, s, 0, 0);
            ar_stop(self, m->reason);
        } /* other processes' exits are no concern of a supervisor */
    } else if ((m->kind == AR_MSG_CAST || m->kind == AR_MSG_TIMER) && m->tag == AR__SUP_RETRY &&
               m->len == sizeof(struct retry_msg) && ar_pid_eq(m->from, ar_self(self))) {
        struct retry_msg r;
        memcpy(&r, m->data, sizeof r);
        /* deleted, handled since, or superseded by a later retry: stale */
        bool found = (r.at < s->n && s->kids[r.at] == r.k) || index_of(s, r.k) >= 0;
        if (!found || !r.k->restarting || r.k->retry_gen != r.gen) return;
        restart_by_strategy(self, s, r.k);
    }
}

static void sup_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    sup_t *s = state;
    if (!s) return;
    /* killed: its children follow through their links; otherwise take them down in order */
    if (why.code != AR_KILLED) stop_from(self, s, 0, 0);
    for (size_t i = 0; i < s->n; i++) child_free(s->kids[i]); /* NULL holes: no-op */
    ar_free(s->kids);
    ar_free(s->hist);
    ar_free(s->by_pid.keys);
    ar_free(s->by_pid.vals);
    ar_free(s->template_.id);
    ar_free(s);
}

const ar_behaviour_t ar_supervisor = {
    .name = "supervisor",
    .init = sup_init,
    .handle = sup_handle,
    .terminate = sup_terminate,
};
