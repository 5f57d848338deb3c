/* stress_links: exit signals racing through linked chains and trees, watched by monitors.
 *
 * MEMBERS processes form groups: chains (each member spawned with .link by the previous
 * one) and small trees (each child spawned with .link by its parent), plus extra ar_links
 * inside a group (to a sibling, to a grandparent, a duplicate of the parent link, a link
 * to oneself). OBSERVERS top-level processes each monitor a distinct sample of members;
 * the odd ones trap exits (half through the spawn option, half through ar_trap_exit) and
 * also link to a sample. Before the kills every observer demonitors a random subset
 * (flush or not); during the kills each one demonitors another subset with flush.
 * Two foreign threads then send exit signals in a seeded order: each group gets one kill
 * (its head/root or a random member) with its reason (AR_KILL, AR_SHUTDOWN or AR_ERROR
 * with a text), some groups a second kill from the other thread to another member with
 * the same reason, and both threads scatter AR_NORMAL exits to members and observers.
 * Invariants:
 *  - every member's terminate runs exactly once, with its group's reason (AR_KILLED for
 *    AR_KILL): no member survives, an AR_NORMAL exit never kills anyone;
 *  - every monitor not demonitored gets exactly one DOWN (from = the member, ref, reason);
 *    an early-demonitored ref never gets one; a late one at most one, and never after
 *    ar_demonitor returned; refs are unique and nonzero;
 *  - every trapping observer gets exactly one AR_MSG_EXIT per linked member (its reason),
 *    and one per AR_NORMAL exit sent to it (from AR_PID_NONE); non-trapping ones none;
 *  - ar_proc_info agrees with the links (one per pair) and monitors before the kills, and
 *    shows none left on the observers after them; dead members are AR_ENOPROC;
 *  - the node's counters: spawned, exited, processes == the observers at the end;
 *  - after ar_node_stop the observers terminated once with AR_SHUTDOWN, and a counting
 *    allocator has no runtime block left.
 * Rounds repeat this on fresh nodes (2 or 3 schedulers) with fresh plans while the time
 * budget lasts; the first round prints its sizes and timings.
 *
 * Usage: stress_links [seed]
 */
#include "stress_util.h"

#define MEMBERS 10000u
#define OBSERVERS 16u
#define MON_PER_OBS (MEMBERS / 64u)  /* monitors each observer sets */
#define LINK_PER_OBS (MEMBERS / 128u) /* links each trapping observer sets */
#define CHAIN_MAX 24u
#define TREE_MAX 40u
#define TREE_FANOUT 3u
#define NONE_IDX UINT32_MAX
#define STOP_MS (ST_TSAN ? 15000 : 5000) /* ending 16 idle observers takes far less */
#define ROUNDS (ST_TSAN ? 12u : 50u)        /* fresh nodes and plans... */
#define BUDGET_MS (ST_TSAN ? 25000u : 8000u) /* ...while this time lasts */

enum { TAG_BUILD = 1, TAG_LINKTO, TAG_SETUP, TAG_DEMON_LATE, TAG_REPORT };
enum { MON_KEEP, MON_EARLY, MON_LATE };

typedef struct member {
    uint32_t idx, group, parent, child_off, child_n;
    uint32_t degree; /* distinct link peers expected after the setup */
    uint32_t monitored_by;
    ar_pid_t pid; /* written by its init */
    _Atomic uint32_t terminated;
} member_t;

typedef struct group {
    uint32_t first, n;
    bool tree;
    ar_exit_code_t send_code, die_code;
    char text[64];
} group_t;

typedef struct mon {
    uint32_t obs, target, plan;
    bool flush;       /* for an early demonitor */
    ar_ref_t ref;     /* written by the observer at setup */
    bool demonitored; /* the observer's own: ar_demonitor has returned */
    _Atomic uint32_t downs;
} mon_t;

typedef struct olink {
    uint32_t obs, target;
    _Atomic uint32_t exits;
} olink_t;

typedef struct observer {
    uint32_t id;
    bool trap, trap_by_opt;
    uint32_t mon_off, mon_n, link_off, link_n, keep_n, late_n;
    uint32_t late_thread, late_pos; /* which killer tells it, and when */
    ar_pid_t pid;
    _Atomic uint32_t normal_sent, normal_seen; /* AR_NORMAL exits sent to it / seen */
    _Atomic uint32_t terminated;
    _Atomic int term_code;
} observer_t;

typedef struct kill {
    uint32_t member, group;
} kill_t;

typedef struct killer {
    uint32_t id, n;
    kill_t *list;
    st_rng_t rng;
} killer_t;

typedef struct edge {
    uint32_t a, b;
} edge_t;

static ar_node_t *g_node;
static member_t *g_members;
static uint32_t *g_children;
static group_t *g_groups;
static uint32_t g_ngroups;
static mon_t *g_mons;
static uint32_t g_nmons;
static olink_t *g_links;
static uint32_t g_nlinks;
static observer_t g_obs[OBSERVERS];
static edge_t *g_extra; /* member a ar_links b */
static uint32_t g_nextra;
static killer_t g_killers[2];

static atomic_uint g_up, g_linked, g_obs_ready, g_late_done, g_member_term;
static atomic_uint g_downs_keep, g_downs_late, g_exits;
static uint32_t g_expect_downs_keep, g_expect_exits;
static atomic_bool g_stopping, g_go;
static uint32_t g_round;

/* ---- reasons ------------------------------------------------------------------------- */
static ar_reason_t send_reason(const group_t *g)
{
    return (ar_reason_t){g->send_code, g->send_code == AR_ERROR ? g->text : NULL};
}

static bool reason_ok(const group_t *g, ar_reason_t r)
{
    if (r.code != g->die_code) return false;
    if (g->die_code != AR_ERROR) return true;
    return r.text != NULL && strcmp(r.text, g->text) == 0;
}

static const char *code_name(ar_exit_code_t c)
{
    const char *s = ar_exit_code_name(c);
    return s ? s : "?";
}

/* ---- members --------------------------------------------------------------------------- */
static const ar_behaviour_t member_b;

static int member_init(ar_proc_t *self, void *arg, void **state)
{
    member_t *m = arg;
    m->pid = ar_self(self);
    *state = m;
    /* release: the pid is written before main (then everyone else) reads it */
    atomic_fetch_add_explicit(&g_up, 1, memory_order_release);
    return 0;
}

static void member_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    member_t *me = state;
    char a[AR_PID_STRLEN];
    if (m->kind == AR_MSG_CAST && m->tag == TAG_BUILD) {
        /* Each child is linked to this process before its init runs. */
        for (uint32_t i = 0; i < me->child_n; i++) {
            uint32_t c = g_children[me->child_off + i];
            ar_spawn_opts_t o = {.link = true};
            ar_pid_t pid;
            int rc = ar_spawn(ar_node(self), &member_b, &g_members[c], &o, &pid);
            if (rc != 0) st_fail("member %u: ar_spawn(.link) of %u: %s", me->idx, c, ar_err_name(rc));
            rc = ar_send(ar_node(self), pid, TAG_BUILD, NULL, 0);
            if (rc != 0) st_fail("member %u: ar_send(build): %s", me->idx, ar_err_name(rc));
        }
        return;
    }
    if (m->kind == AR_MSG_CAST && m->tag == TAG_LINKTO && m->len == sizeof(uint32_t)) {
        uint32_t peer;
        memcpy(&peer, m->data, sizeof peer);
        int rc = ar_link(self, g_members[peer].pid);
        ST_CHECK(rc == 0, "member %u: ar_link to live member %u returned %s", me->idx, peer,
                 ar_err_name(rc));
        /* release: the link exists before main checks the counts */
        atomic_fetch_add_explicit(&g_linked, 1, memory_order_release);
        return;
    }
    st_violation("member %u %s (group %u, not trapping): unexpected message kind %d tag %u "
                 "from %s reason %s", me->idx, st_pid_str(ar_self(self), a), me->group,
                 (int)m->kind, m->tag, st_pid_str(m->from, a), code_name(m->reason.code));
}

static void member_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    member_t *me = state;
    const group_t *g = &g_groups[me->group];
    uint32_t n = atomic_fetch_add_explicit(&me->terminated, 1, memory_order_relaxed);
    ST_CHECK(n == 0, "member %u: terminate ran %u times", me->idx, n + 1);
    ST_CHECK(reason_ok(g, why),
             "member %u (group %u: %s of %u, %s): ended with %s \"%s\", expected %s \"%s\"",
             me->idx, me->group, g->tree ? "tree" : "chain", g->n,
             me->parent == NONE_IDX ? "its root" : "linked below", code_name(why.code),
             why.text ? why.text : "", code_name(g->die_code),
             g->die_code == AR_ERROR ? g->text : "");
    atomic_fetch_add_explicit(&g_member_term, 1, memory_order_release);
}

static const ar_behaviour_t member_b = {"links_member", member_init, member_handle,
                                        member_terminate};

/* ---- observers ------------------------------------------------------------------------- */
static int obs_init(ar_proc_t *self, void *arg, void **state)
{
    observer_t *o = arg;
    o->pid = ar_self(self);
    *state = o;
    return 0;
}

static mon_t *find_mon(observer_t *o, ar_ref_t ref)
{
    for (uint32_t i = 0; i < o->mon_n; i++)
        if (g_mons[o->mon_off + i].ref == ref) return &g_mons[o->mon_off + i];
    return NULL;
}

static olink_t *find_link(observer_t *o, ar_pid_t from)
{
    for (uint32_t i = 0; i < o->link_n; i++) {
        olink_t *l = &g_links[o->link_off + i];
        if (ar_pid_eq(g_members[l->target].pid, from)) return l;
    }
    return NULL;
}

static void obs_setup(ar_proc_t *self, observer_t *o)
{
    if (o->trap && !o->trap_by_opt) {
        bool old = ar_trap_exit(self, true);
        ST_CHECK(!old, "observer %u: ar_trap_exit returned true before it was set", o->id);
    }
    for (uint32_t i = 0; i < o->mon_n; i++) {
        mon_t *mn = &g_mons[o->mon_off + i];
        int rc = ar_monitor(self, g_members[mn->target].pid, &mn->ref);
        if (rc != 0) st_fail("observer %u: ar_monitor of live member %u: %s", o->id, mn->target,
                             ar_err_name(rc));
    }
    for (uint32_t i = 0; i < o->link_n; i++) {
        olink_t *l = &g_links[o->link_off + i];
        int rc = ar_link(self, g_members[l->target].pid);
        ST_CHECK(rc == 0, "observer %u: ar_link to live member %u returned %s", o->id, l->target,
                 ar_err_name(rc));
    }
    for (uint32_t i = 0; i < o->mon_n; i++) {
        mon_t *mn = &g_mons[o->mon_off + i];
        if (mn->plan != MON_EARLY) continue;
        int rc = ar_demonitor(self, mn->ref, mn->flush);
        ST_CHECK(rc == 0, "observer %u: early ar_demonitor returned %s", o->id, ar_err_name(rc));
        mn->demonitored = true;
    }
    /* release: refs are written before main reads them */
    atomic_fetch_add_explicit(&g_obs_ready, 1, memory_order_release);
}

static void obs_demon_late(ar_proc_t *self, observer_t *o)
{
    for (uint32_t i = 0; i < o->mon_n; i++) {
        mon_t *mn = &g_mons[o->mon_off + i];
        if (mn->plan == MON_LATE) {
            int rc = ar_demonitor(self, mn->ref, true);
            ST_CHECK(rc == 0, "observer %u: late ar_demonitor returned %s", o->id, ar_err_name(rc));
            mn->demonitored = true;
        } else if (mn->plan == MON_EARLY && (i % 4) == 0) {
            /* a ref already removed: still 0 */
            int rc = ar_demonitor(self, mn->ref, (i % 8) == 0);
            ST_CHECK(rc == 0, "observer %u: second ar_demonitor returned %s", o->id,
                     ar_err_name(rc));
        }
    }
    atomic_fetch_add_explicit(&g_late_done, 1, memory_order_release);
}

static void obs_down(observer_t *o, const ar_msg_t *m)
{
    char a[AR_PID_STRLEN], b[AR_PID_STRLEN];
    mon_t *mn = find_mon(o, m->ref);
    if (mn == NULL) {
        st_violation("observer %u: DOWN with unknown ref %" PRIu64 " from %s reason %s", o->id,
                     m->ref, st_pid_str(m->from, a), code_name(m->reason.code));
        return;
    }
    const member_t *t = &g_members[mn->target];
    const group_t *g = &g_groups[t->group];
    ST_CHECK(ar_pid_eq(m->from, t->pid), "observer %u: DOWN ref %" PRIu64 " from %s, expected %s",
             o->id, m->ref, st_pid_str(m->from, a), st_pid_str(t->pid, b));
    ST_CHECK(reason_ok(g, m->reason),
             "observer %u: DOWN of member %u (group %u) with %s \"%s\", expected %s \"%s\"", o->id,
             mn->target, t->group, code_name(m->reason.code),
             m->reason.text ? m->reason.text : "", code_name(g->die_code),
             g->die_code == AR_ERROR ? g->text : "");
    if (mn->plan == MON_EARLY)
        st_violation("observer %u: DOWN for ref %" PRIu64 " (member %u) demonitored before the "
                     "kills (flush=%d)", o->id, m->ref, mn->target, (int)mn->flush);
    else if (mn->demonitored)
        st_violation("observer %u: DOWN for ref %" PRIu64 " (member %u) after ar_demonitor "
                     "(flush) returned", o->id, m->ref, mn->target);
    uint32_t n = atomic_fetch_add_explicit(&mn->downs, 1, memory_order_relaxed);
    ST_CHECK(n == 0, "observer %u: DOWN number %u for ref %" PRIu64 " (member %u)", o->id, n + 1,
             m->ref, mn->target);
    if (mn->plan == MON_KEEP) atomic_fetch_add_explicit(&g_downs_keep, 1, memory_order_release);
    else atomic_fetch_add_explicit(&g_downs_late, 1, memory_order_relaxed);
}

static void obs_exit(observer_t *o, const ar_msg_t *m)
{
    char a[AR_PID_STRLEN];
    if (!o->trap) {
        st_violation("observer %u (not trapping): got an EXIT from %s reason %s", o->id,
                     st_pid_str(m->from, a), code_name(m->reason.code));
        return;
    }
    if (ar_pid_is_none(m->from)) {
        /* acquire: pairs with main's release just before ar_node_stop */
        if (m->reason.code == AR_SHUTDOWN && atomic_load_explicit(&g_stopping, memory_order_acquire))
            st_violation("observer %u (trapping): ar_node_stop's shutdown arrived as an EXIT "
                         "message instead of ending the process", o->id);
        else
            ST_CHECK(m->reason.code == AR_NORMAL, "observer %u: EXIT from no process with %s, "
                     "expected normal", o->id, code_name(m->reason.code));
        atomic_fetch_add_explicit(&o->normal_seen, 1, memory_order_release);
        return;
    }
    olink_t *l = find_link(o, m->from);
    if (l == NULL) {
        st_violation("observer %u: EXIT from unlinked %s reason %s", o->id,
                     st_pid_str(m->from, a), code_name(m->reason.code));
        return;
    }
    const group_t *g = &g_groups[g_members[l->target].group];
    ST_CHECK(reason_ok(g, m->reason),
             "observer %u: EXIT of member %u with %s \"%s\", expected %s \"%s\"", o->id, l->target,
             code_name(m->reason.code), m->reason.text ? m->reason.text : "",
             code_name(g->die_code), g->die_code == AR_ERROR ? g->text : "");
    uint32_t n = atomic_fetch_add_explicit(&l->exits, 1, memory_order_relaxed);
    ST_CHECK(n == 0, "observer %u: EXIT number %u from member %u", o->id, n + 1, l->target);
    atomic_fetch_add_explicit(&g_exits, 1, memory_order_release);
}

static void obs_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    observer_t *o = state;
    switch (m->kind) {
    case AR_MSG_DOWN: obs_down(o, m); return;
    case AR_MSG_EXIT: obs_exit(o, m); return;
    case AR_MSG_CAST:
        if (m->tag == TAG_SETUP) { obs_setup(self, o); return; }
        if (m->tag == TAG_DEMON_LATE) { obs_demon_late(self, o); return; }
        break;
    case AR_MSG_CALL:
        if (m->tag == TAG_REPORT) {
            int rc = ar_reply(ar_node(self), m->reply_to, NULL, 0);
            ST_CHECK(rc == 0, "observer %u: ar_reply returned %s", o->id, ar_err_name(rc));
            return;
        }
        break;
    default: break;
    }
    st_violation("observer %u: unexpected message kind %d tag %u", o->id, (int)m->kind, m->tag);
}

static void obs_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    observer_t *o = state;
    atomic_store_explicit(&o->term_code, (int)why.code, memory_order_relaxed);
    uint32_t n = atomic_fetch_add_explicit(&o->terminated, 1, memory_order_relaxed);
    ST_CHECK(n == 0, "observer %u: terminate ran %u times", o->id, n + 1);
}

static const ar_behaviour_t obs_b = {"links_observer", obs_init, obs_handle, obs_terminate};

/* ---- killers ----------------------------------------------------------------------------- */
static void *killer_main(void *arg)
{
    killer_t *k = arg;
    /* Both start together, so their kills overlap. */
    while (!atomic_load_explicit(&g_go, memory_order_acquire)) sched_yield();
    for (uint32_t i = 0; i <= k->n; i++) {
        for (uint32_t o = 0; o < OBSERVERS; o++) {
            if (g_obs[o].late_thread != k->id || g_obs[o].late_pos != i) continue;
            int rc = ar_send(g_node, g_obs[o].pid, TAG_DEMON_LATE, NULL, 0);
            if (rc != 0) st_fail("killer %u: ar_send(demon) returned %s", k->id, ar_err_name(rc));
        }
        if (i == k->n) break;
        /* Noise: a normal exit signal kills nobody; a trapping observer sees it. */
        if (st_chance(&k->rng, 10)) {
            uint32_t t = (uint32_t)st_below(&k->rng, MEMBERS);
            int rc = ar_exit(g_node, g_members[t].pid, AR_REASON(AR_NORMAL));
            ST_CHECK(rc == 0, "killer %u: ar_exit(normal) to member %u returned %s", k->id, t,
                     ar_err_name(rc));
        }
        if (st_chance(&k->rng, 2)) {
            observer_t *o = &g_obs[st_below(&k->rng, OBSERVERS)];
            atomic_fetch_add_explicit(&o->normal_sent, 1, memory_order_relaxed);
            int rc = ar_exit(g_node, o->pid, AR_REASON(AR_NORMAL));
            ST_CHECK(rc == 0, "killer %u: ar_exit(normal) to observer %u returned %s", k->id,
                     o->id, ar_err_name(rc));
        }
        const kill_t *kl = &k->list[i];
        int rc = ar_exit(g_node, g_members[kl->member].pid, send_reason(&g_groups[kl->group]));
        ST_CHECK(rc == 0, "killer %u: ar_exit to member %u returned %s", k->id, kl->member,
                 ar_err_name(rc));
    }
    return NULL;
}

/* ---- the plan ---------------------------------------------------------------------------- */
static int edge_cmp(const void *x, const void *y)
{
    const edge_t *a = x, *b = y;
    if (a->a != b->a) return a->a < b->a ? -1 : 1;
    if (a->b != b->b) return a->b < b->b ? -1 : 1;
    return 0;
}

static int ref_cmp(const void *x, const void *y)
{
    ar_ref_t a = *(const ar_ref_t *)x, b = *(const ar_ref_t *)y;
    return a < b ? -1 : a > b;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (p == NULL) st_fail("out of memory");
    return p;
}

static void plan(void)
{
    st_rng_t r = st_rng_for(1 + (uint64_t)g_round * 1000u);
    g_members = xcalloc(MEMBERS, sizeof *g_members);
    g_groups = xcalloc(MEMBERS, sizeof *g_groups);
    g_children = xcalloc(MEMBERS, sizeof *g_children);
    uint32_t *nkids = xcalloc(MEMBERS, sizeof *nkids);

    /* Groups: chains and random trees of fan-out <= 3, parents before children. */
    for (uint32_t i = 0; i < MEMBERS;) {
        group_t *g = &g_groups[g_ngroups];
        g->first = i;
        g->tree = st_chance(&r, 50);
        uint32_t want = g->tree ? (uint32_t)st_range(&r, 2, TREE_MAX)
                                : (uint32_t)st_range(&r, 1, CHAIN_MAX);
        if (want > MEMBERS - i) want = MEMBERS - i;
        g->n = want;
        for (uint32_t k = 0; k < want; k++) {
            member_t *m = &g_members[i + k];
            m->idx = i + k;
            m->group = g_ngroups;
            m->parent = NONE_IDX;
            if (k == 0) continue;
            uint32_t p = i + k - 1;
            if (g->tree) {
                for (int tries = 0; tries < 8; tries++) {
                    uint32_t c = i + (uint32_t)st_below(&r, k);
                    if (nkids[c] < TREE_FANOUT) { p = c; break; }
                }
            }
            m->parent = p;
            nkids[p]++;
        }
        unsigned pick = (unsigned)st_below(&r, 3);
        g->send_code = pick == 0 ? AR_KILL : pick == 1 ? AR_SHUTDOWN : AR_ERROR;
        g->die_code = g->send_code == AR_KILL ? AR_KILLED : g->send_code;
        snprintf(g->text, sizeof g->text, "group %u crashed (%016" PRIx64 ")", g_ngroups,
                 st_next(&r));
        g_ngroups++;
        i += want;
    }
    /* Child lists, in member order. */
    uint32_t off = 0;
    for (uint32_t i = 0; i < MEMBERS; i++) {
        g_members[i].child_off = off;
        off += nkids[i];
    }
    for (uint32_t i = 0; i < MEMBERS; i++) {
        uint32_t p = g_members[i].parent;
        if (p != NONE_IDX) g_children[g_members[p].child_off + g_members[p].child_n++] = i;
    }
    free(nkids);

    /* Extra links inside a group, and every member-member edge for the degrees. */
    edge_t *edges = xcalloc(2 * MEMBERS, sizeof *edges);
    uint32_t nedges = 0;
    g_extra = xcalloc(MEMBERS, sizeof *g_extra);
    for (uint32_t c = 0; c < MEMBERS; c++) {
        uint32_t p = g_members[c].parent;
        if (p == NONE_IDX) continue;
        edges[nedges++] = (edge_t){p, c};
        unsigned pick = (unsigned)st_below(&r, 100);
        uint32_t peer = NONE_IDX;
        if (pick < 12 && g_members[p].child_n > 1) {
            const member_t *pm = &g_members[p];
            peer = g_children[pm->child_off + st_below(&r, pm->child_n)];
            if (peer == c) peer = g_children[pm->child_off + (peer == g_children[pm->child_off])];
        } else if (pick < 20 && g_members[p].parent != NONE_IDX) {
            peer = g_members[p].parent; /* grandparent: a cycle */
        } else if (pick < 24) {
            peer = p; /* already linked: stays one link */
        } else if (pick < 26) {
            peer = c; /* oneself: nothing */
        }
        if (peer == NONE_IDX) continue;
        g_extra[g_nextra++] = (edge_t){c, peer};
        if (peer != c) edges[nedges++] = (edge_t){c < peer ? c : peer, c < peer ? peer : c};
    }
    qsort(edges, nedges, sizeof *edges, edge_cmp);
    for (uint32_t i = 0; i < nedges; i++) {
        if (i > 0 && edge_cmp(&edges[i], &edges[i - 1]) == 0) continue;
        g_members[edges[i].a].degree++;
        g_members[edges[i].b].degree++;
    }
    free(edges);

    /* Observers: distinct monitor and link targets each (partial Fisher-Yates). */
    uint32_t *perm = xcalloc(MEMBERS, sizeof *perm);
    g_mons = xcalloc((size_t)OBSERVERS * MON_PER_OBS, sizeof *g_mons);
    g_links = xcalloc((size_t)OBSERVERS * LINK_PER_OBS, sizeof *g_links);
    for (uint32_t o = 0; o < OBSERVERS; o++) {
        observer_t *ob = &g_obs[o];
        ob->id = o;
        ob->trap = (o % 2) == 1;
        ob->trap_by_opt = ob->trap && (o % 4) == 1;
        ob->mon_off = g_nmons;
        for (uint32_t i = 0; i < MEMBERS; i++) perm[i] = i;
        for (uint32_t i = 0; i < MON_PER_OBS; i++) {
            uint32_t j = i + (uint32_t)st_below(&r, MEMBERS - i);
            uint32_t t = perm[j];
            perm[j] = perm[i];
            perm[i] = t;
            mon_t *mn = &g_mons[g_nmons++];
            mn->obs = o;
            mn->target = t;
            unsigned pick = (unsigned)st_below(&r, 100);
            mn->plan = pick < 20 ? MON_EARLY : pick < 35 ? MON_LATE : MON_KEEP;
            mn->flush = st_chance(&r, 50);
            if (mn->plan == MON_KEEP) ob->keep_n++;
            if (mn->plan == MON_LATE) ob->late_n++;
            if (mn->plan != MON_EARLY) g_members[t].monitored_by++;
        }
        ob->mon_n = g_nmons - ob->mon_off;
        g_expect_downs_keep += ob->keep_n;
        ob->link_off = g_nlinks;
        if (ob->trap) {
            for (uint32_t i = 0; i < MEMBERS; i++) perm[i] = i;
            for (uint32_t i = 0; i < LINK_PER_OBS; i++) {
                uint32_t j = i + (uint32_t)st_below(&r, MEMBERS - i);
                uint32_t t = perm[j];
                perm[j] = perm[i];
                perm[i] = t;
                g_links[g_nlinks++] = (olink_t){.obs = o, .target = t};
                g_members[t].degree++;
            }
        }
        ob->link_n = g_nlinks - ob->link_off;
        g_expect_exits += ob->link_n;
    }
    free(perm);

    /* Kills: one per group in a seeded order, split over the two threads, some groups
     * killed twice (the other thread, another member, the same reason). */
    uint32_t *order = xcalloc(g_ngroups, sizeof *order);
    for (uint32_t i = 0; i < g_ngroups; i++) order[i] = i;
    for (uint32_t i = g_ngroups; i > 1; i--) {
        uint32_t j = (uint32_t)st_below(&r, i), t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    for (int t = 0; t < 2; t++) {
        g_killers[t].id = (uint32_t)t;
        g_killers[t].list = xcalloc(2 * g_ngroups, sizeof(kill_t));
        g_killers[t].rng = st_rng_for(100 + (uint64_t)t + (uint64_t)g_round * 1000u);
    }
    for (uint32_t i = 0; i < g_ngroups; i++) {
        const group_t *g = &g_groups[order[i]];
        killer_t *k = &g_killers[st_below(&r, 2)];
        uint32_t target = st_chance(&r, 50) ? g->first : g->first + (uint32_t)st_below(&r, g->n);
        k->list[k->n++] = (kill_t){target, order[i]};
        if (g->n > 1 && st_chance(&r, 25)) {
            killer_t *k2 = &g_killers[1 - k->id];
            k2->list[k2->n++] = (kill_t){g->first + (uint32_t)st_below(&r, g->n), order[i]};
        }
    }
    free(order);
    /* The second kills land anywhere in the other thread's sequence. */
    for (int t = 0; t < 2; t++) {
        killer_t *k = &g_killers[t];
        for (uint32_t i = k->n; i > 1; i--) {
            uint32_t j = (uint32_t)st_below(&r, i);
            kill_t x = k->list[i - 1];
            k->list[i - 1] = k->list[j];
            k->list[j] = x;
        }
    }
    for (uint32_t o = 0; o < OBSERVERS; o++) {
        g_obs[o].late_thread = o % 2;
        g_obs[o].late_pos = (uint32_t)st_below(&r, g_killers[o % 2].n + 1);
    }
}

/* ---- checks ------------------------------------------------------------------------------ */
static void hang_report(void)
{
    fprintf(stderr,
            "progress: up %u/%u, extra links %u/%u, observers ready %u/%u, late demonitors "
            "%u/%u, members terminated %u/%u, downs %u/%u (late %u), exits %u/%u\n",
            st_get(&g_up), MEMBERS, st_get(&g_linked), g_nextra, st_get(&g_obs_ready),
            OBSERVERS, st_get(&g_late_done), OBSERVERS, st_get(&g_member_term), MEMBERS,
            st_get(&g_downs_keep), g_expect_downs_keep, st_get(&g_downs_late),
            st_get(&g_exits), g_expect_exits);
    for (uint32_t o = 0; o < OBSERVERS; o++) {
        if (st_get(&g_obs[o].normal_seen) == st_get(&g_obs[o].normal_sent) || !g_obs[o].trap)
            continue;
        fprintf(stderr, "observer %u: normal exits seen %u of %u\n", o,
                st_get(&g_obs[o].normal_seen), st_get(&g_obs[o].normal_sent));
    }
}

/* The link and monitor counts of the setup, as ar_proc_info reports them. Link and
 * monitor signals may reach the other side a little later: retried until a deadline. */
static void check_setup_info(void)
{
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    for (;;) {
        uint32_t bad = 0;
        char buf[256] = "";
        for (uint32_t i = 0; i < MEMBERS; i++) {
            const member_t *m = &g_members[i];
            ar_proc_info_t pi;
            int rc = ar_proc_info(g_node, m->pid, &pi);
            if (rc != 0 || pi.links != m->degree || pi.monitored_by != m->monitored_by
                || pi.monitors != 0 || pi.trap_exit) {
                if (bad++ == 0)
                    snprintf(buf, sizeof buf, "member %u: rc %s links %zu (expected %u) "
                             "monitored_by %zu (expected %u) monitors %zu trap_exit %d",
                             i, ar_err_name(rc), pi.links, m->degree, pi.monitored_by,
                             m->monitored_by, pi.monitors, (int)pi.trap_exit);
            }
        }
        for (uint32_t o = 0; o < OBSERVERS; o++) {
            const observer_t *ob = &g_obs[o];
            ar_proc_info_t pi;
            int rc = ar_proc_info(g_node, ob->pid, &pi);
            size_t mons = ob->keep_n + ob->late_n;
            if (rc != 0 || pi.links != ob->link_n || pi.monitors != mons
                || pi.trap_exit != ob->trap || pi.monitored_by != 0) {
                if (bad++ == 0)
                    snprintf(buf, sizeof buf, "observer %u: rc %s links %zu (expected %u) "
                             "monitors %zu (expected %zu) trap_exit %d (expected %d)",
                             o, ar_err_name(rc), pi.links, ob->link_n, pi.monitors, mons,
                             (int)pi.trap_exit, (int)ob->trap);
            }
        }
        if (bad == 0) return;
        if (st_now_ms() > dl) {
            st_violation("ar_proc_info after the setup: %u processes disagree; first: %s", bad, buf);
            return;
        }
        st_nap_us(2000);
    }
}

static void check_refs(void)
{
    ar_ref_t *refs = xcalloc(g_nmons, sizeof *refs);
    for (uint32_t i = 0; i < g_nmons; i++) refs[i] = g_mons[i].ref;
    qsort(refs, g_nmons, sizeof *refs, ref_cmp);
    for (uint32_t i = 0; i < g_nmons; i++) {
        ST_CHECK(refs[i] != 0, "ar_monitor gave ref 0");
        ST_CHECK(i == 0 || refs[i] != refs[i - 1], "ar_monitor gave ref %" PRIu64 " twice",
                 refs[i]);
    }
    free(refs);
}

static bool normal_exits_settled(void)
{
    for (uint32_t o = 0; o < OBSERVERS; o++) {
        if (!g_obs[o].trap) continue;
        /* acquire: pairs with the observer's release when it counted one */
        if (atomic_load_explicit(&g_obs[o].normal_seen, memory_order_acquire)
            != st_get(&g_obs[o].normal_sent))
            return false;
    }
    return true;
}

/* Forgets the previous round: every thread of its node has been joined. */
static void reset_round(void)
{
    free(g_members);
    free(g_groups);
    free(g_children);
    free(g_mons);
    free(g_links);
    free(g_extra);
    for (int t = 0; t < 2; t++) free(g_killers[t].list);
    memset(g_killers, 0, sizeof g_killers);
    memset(g_obs, 0, sizeof g_obs);
    g_members = NULL;
    g_groups = NULL;
    g_children = NULL;
    g_mons = NULL;
    g_links = NULL;
    g_extra = NULL;
    g_ngroups = g_nmons = g_nlinks = g_nextra = 0;
    g_expect_downs_keep = g_expect_exits = 0;
    st_set(&g_up, 0);
    st_set(&g_linked, 0);
    st_set(&g_obs_ready, 0);
    st_set(&g_late_done, 0);
    st_set(&g_member_term, 0);
    st_set(&g_downs_keep, 0);
    st_set(&g_downs_late, 0);
    st_set(&g_exits, 0);
    st_set(&g_stopping, false);
    st_set(&g_go, false);
}

static void run_round(bool verbose)
{
    uint64_t t0 = st_now_ms();
    reset_round();
    plan();
    uint32_t nroots = g_ngroups;
    if (verbose) {
        printf("round %u: members=%u groups=%u observers=%u monitors=%u (keep %u) observer "
               "links=%u extra links=%u kills=%u+%u\n", g_round, MEMBERS, g_ngroups, OBSERVERS,
               g_nmons, g_expect_downs_keep, g_nlinks, g_nextra, g_killers[0].n, g_killers[1].n);
        fflush(stdout);
    }

    ST_EXPECT_RC(ar_set_allocator(st_counting_allocator()), 0, "ar_set_allocator");
    g_node = st_node_start(2 + g_round % 2);

    /* .link needs a calling process: refused from a foreign thread, nothing left behind. */
    {
        ar_spawn_opts_t o = {.link = true};
        ST_EXPECT_RC(ar_spawn(g_node, &member_b, &g_members[0], &o, NULL), AR_ENOTPROC,
                     "ar_spawn(.link) from a foreign thread");
        ar_node_stats_t st;
        ar_node_stats(g_node, &st);
        ST_CHECK(st.spawned == 0 && st.processes == 0 && st_get(&g_up) == 0,
                 "a refused ar_spawn(.link) left something: spawned %" PRIu64 " processes %zu "
                 "init ran %u", st.spawned, st.processes, st_get(&g_up));
    }

    for (uint32_t o = 0; o < OBSERVERS; o++) {
        ar_spawn_opts_t so = {.trap_exit = g_obs[o].trap_by_opt};
        ST_EXPECT_RC(ar_spawn(g_node, &obs_b, &g_obs[o], &so, NULL), 0, "ar_spawn(observer)");
    }
    /* Roots from here; everything below them from their parent, linked. */
    for (uint32_t g = 0; g < nroots; g++) {
        member_t *m = &g_members[g_groups[g].first];
        ar_pid_t pid;
        ST_EXPECT_RC(ar_spawn(g_node, &member_b, m, NULL, &pid), 0, "ar_spawn(root)");
        ST_EXPECT_RC(ar_send(g_node, pid, TAG_BUILD, NULL, 0), 0, "ar_send(build)");
    }
    /* acquire: pairs with each init's release of its pid */
    ST_WAIT(atomic_load_explicit(&g_up, memory_order_acquire) == MEMBERS, "every member to start");
    for (uint32_t i = 0; i < g_nextra; i++) {
        uint32_t peer = g_extra[i].b;
        ST_EXPECT_RC(ar_send(g_node, g_members[g_extra[i].a].pid, TAG_LINKTO, &peer, sizeof peer),
                     0, "ar_send(linkto)");
    }
    ST_WAIT(atomic_load_explicit(&g_linked, memory_order_acquire) == g_nextra,
            "the extra links");
    for (uint32_t o = 0; o < OBSERVERS; o++)
        ST_EXPECT_RC(ar_send(g_node, g_obs[o].pid, TAG_SETUP, NULL, 0), 0, "ar_send(setup)");
    ST_WAIT(atomic_load_explicit(&g_obs_ready, memory_order_acquire) == OBSERVERS,
            "the observers' monitors and links");
    uint64_t t_setup = st_now_ms();
    check_refs();
    check_setup_info();
    {
        ar_node_stats_t st;
        ar_node_stats(g_node, &st);
        ST_CHECK(st.processes == MEMBERS + OBSERVERS && st.spawned == MEMBERS + OBSERVERS
                 && st.exited == 0,
                 "before the kills: processes %zu spawned %" PRIu64 " exited %" PRIu64
                 ", expected %u, %u, 0", st.processes, st.spawned, st.exited,
                 MEMBERS + OBSERVERS, MEMBERS + OBSERVERS);
    }

    uint64_t t_kill = st_now_ms();
    pthread_t th[2];
    for (int t = 0; t < 2; t++) st_start_thread(&th[t], killer_main, &g_killers[t]);
    /* release: the plan and the pids are in place before the killers go */
    atomic_store_explicit(&g_go, true, memory_order_release);
    for (int t = 0; t < 2; t++) st_join(th[t]);

    ST_WAIT(atomic_load_explicit(&g_member_term, memory_order_acquire) == MEMBERS,
            "every member to terminate");
    ST_WAIT(atomic_load_explicit(&g_late_done, memory_order_acquire) == OBSERVERS,
            "the late demonitors");
    ST_WAIT(atomic_load_explicit(&g_downs_keep, memory_order_acquire) >= g_expect_downs_keep,
            "every DOWN");
    ST_WAIT(atomic_load_explicit(&g_exits, memory_order_acquire) >= g_expect_exits,
            "every EXIT");
    ST_WAIT(normal_exits_settled(), "the normal exits to trapping observers");
    uint64_t t_dead = st_now_ms();
    /* Whatever is queued at the observers now gets handled (a duplicate shows up). */
    for (uint32_t o = 0; o < OBSERVERS; o++) {
        ar_buf_t rep = {0};
        ST_EXPECT_RC(ar_call(g_node, g_obs[o].pid, TAG_REPORT, NULL, 0, &rep, ST_WAIT_MS), 0,
                     "ar_call(report)");
        ar_buf_free(&rep);
    }

    /* The node agrees: only the observers are left. */
    ar_node_stats_t st;
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    do {
        ar_node_stats(g_node, &st);
        if (st.processes == OBSERVERS && st.exited == MEMBERS) break;
        st_nap_us(1000);
    } while (st_now_ms() < dl);
    if (verbose)
        printf("stats: spawned %" PRIu64 " exited %" PRIu64 " processes %zu sent %" PRIu64
               " delivered %" PRIu64 " dropped %" PRIu64 "\n", st.spawned, st.exited,
               st.processes, st.sent, st.delivered, st.dropped);
    ST_CHECK(st.processes == OBSERVERS, "stats.processes %zu after the kills, expected %u "
             "(the observers)", st.processes, OBSERVERS);
    ST_CHECK(st.spawned == MEMBERS + OBSERVERS, "stats.spawned %" PRIu64 ", expected %u",
             st.spawned, MEMBERS + OBSERVERS);
    ST_CHECK(st.exited == MEMBERS, "stats.exited %" PRIu64 ", expected %u", st.exited, MEMBERS);

    /* Fired and removed monitors, and links to the dead, are gone from the observers. */
    dl = st_now_ms() + ST_WAIT_MS;
    for (uint32_t o = 0; o < OBSERVERS; o++) {
        ar_proc_info_t pi;
        int rc;
        for (;;) {
            rc = ar_proc_info(g_node, g_obs[o].pid, &pi);
            if (rc != 0 || (pi.links == 0 && pi.monitors == 0) || st_now_ms() > dl) break;
            st_nap_us(1000);
        }
        ST_CHECK(rc == 0 && pi.links == 0 && pi.monitors == 0 && pi.monitored_by == 0,
                 "observer %u after the kills: rc %s links %zu monitors %zu monitored_by %zu "
                 "(expected all 0)", o, ar_err_name(rc), pi.links, pi.monitors, pi.monitored_by);
    }
    for (uint32_t i = 0; i < MEMBERS; i += 7) {
        ar_proc_info_t pi;
        int rc = ar_proc_info(g_node, g_members[i].pid, &pi);
        ST_CHECK(rc == AR_ENOPROC, "ar_proc_info of dead member %u returned %s", i, ar_err_name(rc));
    }

    /* Every record: exactly once where expected. */
    uint32_t late_fired = 0;
    for (uint32_t i = 0; i < MEMBERS; i++)
        ST_CHECK(st_get(&g_members[i].terminated) == 1, "member %u: terminate ran %u times", i,
                 st_get(&g_members[i].terminated));
    for (uint32_t i = 0; i < g_nmons; i++) {
        const mon_t *mn = &g_mons[i];
        uint32_t d = st_get(&mn->downs);
        if (mn->plan == MON_KEEP)
            ST_CHECK(d == 1, "observer %u, monitor of member %u (ref %" PRIu64 "): %u DOWNs, "
                     "expected 1", mn->obs, mn->target, mn->ref, d);
        else if (mn->plan == MON_EARLY)
            ST_CHECK(d == 0, "observer %u, monitor of member %u demonitored early (flush=%d): "
                     "%u DOWNs", mn->obs, mn->target, (int)mn->flush, d);
        else {
            ST_CHECK(d <= 1, "observer %u, monitor of member %u demonitored late: %u DOWNs",
                     mn->obs, mn->target, d);
            late_fired += d;
        }
    }
    for (uint32_t i = 0; i < g_nlinks; i++)
        ST_CHECK(st_get(&g_links[i].exits) == 1, "observer %u, link to member %u: %u EXITs, "
                 "expected 1", g_links[i].obs, g_links[i].target, st_get(&g_links[i].exits));
    uint32_t normal_sent = 0;
    for (uint32_t o = 0; o < OBSERVERS; o++) {
        uint32_t seen = st_get(&g_obs[o].normal_seen), sent = st_get(&g_obs[o].normal_sent);
        normal_sent += sent;
        ST_CHECK(seen == (g_obs[o].trap ? sent : 0), "observer %u (trap %d): %u normal EXITs "
                 "seen, %u sent", o, (int)g_obs[o].trap, seen, sent);
    }
    if (verbose)
        printf("downs %u (+%u of late-demonitored refs), exits %u, normal exits to observers "
               "%u\n", st_get(&g_downs_keep), late_fired, st_get(&g_exits), normal_sent);

    uint64_t t_stop = st_now_ms();
    /* release: observers tell the stop's signal from the killers' */
    atomic_store_explicit(&g_stopping, true, memory_order_release);
    int rc = ar_node_stop(g_node, STOP_MS);
    ST_CHECK(rc == 0, "ar_node_stop(%d ms) returned %s", STOP_MS, ar_err_name(rc));
    uint64_t t_end = st_now_ms();
    for (uint32_t o = 0; o < OBSERVERS; o++) {
        uint32_t n = st_get(&g_obs[o].terminated);
        int code = st_get(&g_obs[o].term_code);
        ST_CHECK(n == 1 && code == AR_SHUTDOWN, "observer %u: terminate ran %u times, reason %s "
                 "(expected once, shutdown)", o, n, code_name((ar_exit_code_t)code));
    }
    long live = st_get(st_live_blocks());
    ST_CHECK(live == 0, "%ld runtime blocks still allocated after ar_node_stop", live);
    ST_EXPECT_RC(ar_set_allocator(NULL), 0, "ar_set_allocator(NULL)");
    if (verbose)
        printf("setup %" PRIu64 " ms, kills to all dead %" PRIu64 " ms, node stop %" PRIu64
               " ms\n", t_setup - t0, t_dead - t_kill, t_end - t_stop);
}

int main(int argc, char **argv)
{
    st_begin("stress_links", argc, argv);
    st_hang_report = hang_report;
    uint64_t t0 = st_now_ms();
    uint32_t done = 0;
    for (g_round = 0; g_round < ROUNDS && st_now_ms() - t0 < BUDGET_MS; g_round++) {
        unsigned long before = st_get(&st_violations);
        run_round(g_round == 0);
        done++;
        if (st_get(&st_violations) != before) {
            fprintf(stderr, "round %u failed\n", g_round);
            break;
        }
    }
    printf("%u rounds of %u members\n", done, MEMBERS);
    reset_round();
    return st_finish(t0);
}
