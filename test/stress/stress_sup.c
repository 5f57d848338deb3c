/* stress_sup: restart storms in a three-level supervision tree, ar_sup_* calls from
 * foreign threads and from inside the tree, and ar_node_stop in the middle of it all.
 *
 * Each round starts a node with a root supervisor (one_for_one) over N_MIDS mid
 * supervisors, one per strategy (one_for_one, one_for_all, rest_for_one,
 * simple_one_for_one, in a random start order), each over workers. A worker ticks on a
 * timer; on a tick it may crash (AR_FAIL, ar_exit_self), end normal or shutdown, or call
 * ar_sup_* on its own supervisor. Some fail in init now and then (AR_FAIL or an error
 * code), so restarts fail and are retried; some block in terminate (ar_sleep); some trap
 * exits and honour or ignore their supervisor's shutdown. Restart types are mixed. A
 * mid's intensity is generous but finite, so a mid gives up now and then and the root
 * restarts it (one mid may be transient: then a caller thread brings it back with
 * ar_sup_restart_child on the root). Caller threads find the mids with
 * ar_sup_which_children on the root and make every ar_sup_* call but ar_sup_stop on them.
 * At a moment drawn from the seed, main stops the node while all this goes on.
 *
 * Invariants: every ar_sup_* result is one SEMANTICS.md section 3 allows for that call on
 * that kind of supervisor (AR_ENOPROC and AR_ETIMEDOUT are allowed everywhere, AR_ECLOSED
 * once the stop has begun); which_children and count_children describe a possible tree;
 * a temporary child is never started twice by one supervisor, nor listed without a pid
 * (nothing of it is kept once it stopped); a worker that ended itself at once terminates
 * with the reason it gave; terminate runs exactly once per successful init; the root
 * lives until the stop; ar_node_stop returns 0 within its generous timeout; every block
 * the runtime allocated is freed after it; nothing hangs (watchdog) and ThreadSanitizer
 * reports nothing.
 *
 * The stop contract for calls from other threads: a call in flight when ar_node_stop
 * begins finishes (with its normal result, AR_ENOPROC, AR_ECLOSED or AR_ETIMEDOUT) before
 * the node is freed, and no thread starts a call once ar_node_stop has returned. So a
 * caller thread reads g_stopping (main sets it just before ar_node_stop) before each
 * call and quits when it is set or a call returns AR_ECLOSED; main joins the callers after
 * ar_node_stop. One window is left: a caller that read g_stopping as false and is then
 * preempted, before its call, for the whole of the stop would call on a freed node.
 * The stop takes milliseconds and the gap is a few instructions; no API can close it,
 * since the node pointer itself is what goes away.
 *
 * Usage: stress_sup [seed]
 */
#define ST_WATCHDOG_S (ST_TSAN ? 120 : 60) /* several rounds, each with a full node stop */
#include "stress_util.h"

#define ROUNDS (ST_TSAN ? 8 : 10)
/* The stop comes at a random moment this long after the storm began. */
#define STORM_MIN_MS (ST_TSAN ? 1500 : 300)
#define STORM_MAX_MS (ST_TSAN ? 3500 : 1500)
#define STOP_TIMEOUT_MS ST_WAIT_MS /* generous: every shutdown in the tree is bounded */

#define N_MIDS 4
#define N_CALLERS 3
#define MIN_WORKERS 4 /* static workers w0.. of a mid that is not simple_one_for_one */
#define MAX_WORKERS 6
#define EXTRA_IDS 4     /* ids x0.. that callers may add to such a mid besides its own */
#define SIMPLE_START 6  /* children main starts under the simple_one_for_one mid */
#define SIMPLE_CAP 16   /* callers add more only while it has fewer active than this */
#define MAX_SLOTS 16384 /* worker args per round; a start_child is skipped past this */
#define WHICH_CAP 48    /* which_children entries looked at (a worker's stack holds them) */
#define ID_LEN 16       /* worker ids: w0.., x0.., s */

/* The root must outlast every storm: it gives up only if the runtime loses control. */
#define ROOT_INTENSITY 1000
#define ROOT_PERIOD_MS 1000
/* A mid gives up now and then: it sees tens of crashes a second (one_for_all: more). */
#define MID_INTENSITY_MIN 3
#define MID_INTENSITY_MAX 15
#define MID_PERIOD_MIN_MS 200
#define MID_PERIOD_MAX_MS 1000
#define TRANSIENT_MID_PCT 50 /* rounds with one transient mid, which the root leaves down */

#define TICK_MIN_MS 1
#define TICK_MAX_MS 10
#define CRASH_PCT_MAX 12     /* per tick */
#define INIT_FAIL_PCT_MAX 15 /* per init, for the flaky workers */
#define CALL_PCT_MAX 10      /* per tick, for the workers that call their supervisor */
#define SLOW_TERM_MAX_MS 15
#define SHUTDOWN_MAX_MS 100 /* never infinity: a trapping worker may ignore the shutdown */
#define CALLER_NAP_US 200
#define ROOT_REFRESH_PCT 10
#define ROOT_COUNT_PCT 5

/* What a worker's init returns when it fails without crashing. No supervisor call makes
 * AR_EAGAIN itself (supervisors have no mailbox limit), so seeing it means init failed. */
#define INIT_FAIL_RC AR_EAGAIN
/* A caller thread must make no more calls (not an AR_E* code). */
#define QUIT 1

#define SLOT_MAGIC 0x510751075107ull
#define INC_MAGIC 0x1dc1dc1dc1dcull

enum { TAG_TICK = 1 };
enum { OP_WHICH, OP_COUNT, OP_START, OP_TERMINATE, OP_RESTART, OP_DELETE, OP_KINDS };
static const char *const op_name[OP_KINDS] = {"which_children", "count_children",
                                              "start_child", "terminate_child",
                                              "restart_child", "delete_child"};
#define ROOT N_MIDS /* the root as a call's target */

/* What a call was made on: SEMANTICS section 3 allows different results for each. */
typedef enum { T_ROOT, T_MID, T_SIMPLE, T_SIMPLE_BY_ID } target_t;

static const char *const strategy_name[] = {"one_for_one", "one_for_all", "rest_for_one",
                                            "simple_one_for_one"};
static const char *const restart_name[] = {"permanent", "transient", "temporary"};

/* A worker's arg: what it is and does. Each child spec gets its own slot, so a slot's
 * inits are one spec's (re)starts. */
typedef struct slot {
    uint64_t magic;
    uint32_t idx, mid;
    char id[ID_LEN];
    ar_restart_t restart;
    unsigned crash_pct, init_fail_pct, call_pct, slow_term_ms;
    bool trap, ignore_shutdown;
    atomic_uint attempts;          /* init attempts: seed each incarnation's randomness */
    _Atomic uint64_t last_parent;  /* pid (lo) of the supervisor that last ran its init */
} slot_t;

/* One successful init of a worker, kept until after the stop. */
typedef struct inc {
    uint64_t magic;
    slot_t *slot;
    ar_pid_t sup; /* its supervisor */
    st_rng_t rng;
    int expect_why; /* the exit code it gave itself at once, or -1 */
    _Atomic uint32_t terminated;
    struct inc *next;
} inc_t;

typedef struct mid {
    char name[24]; /* its id under the root: its strategy's name */
    ar_strategy_t strategy;
    ar_restart_t restart; /* under the root */
    unsigned nstatic;     /* workers w0.. in its spec (simple_one_for_one: none) */
    ar_sup_spec_t spec;
    ar_child_spec_t children[MAX_WORKERS];
} mid_t;

/* A caller thread, with what it is doing now for the hang report. */
typedef struct caller {
    uint32_t id;
    st_rng_t rng;
    pthread_t thread;
    atomic_int op; /* OP_KINDS: between calls */
    atomic_uint target;
    _Atomic uint64_t since_ms;
    atomic_ulong calls;
    ar_child_info_t buf[WHICH_CAP];
} caller_t;

/* Who makes a call, for its checks and messages. */
typedef struct actor {
    char name[48];
    st_rng_t *rng;
    caller_t *thread; /* NULL: a process inside the tree */
} actor_t;

static ar_node_t *g_node;
static uint64_t g_round;
static ar_pid_t g_root;
static mid_t g_mid[N_MIDS];
static ar_child_spec_t g_root_children[N_MIDS];
static ar_sup_spec_t g_root_spec;
static slot_t *g_slots;
static atomic_uint g_nslots;
static caller_t g_callers[N_CALLERS];

static atomic_bool g_storm;    /* the tree has started: inits may fail */
static atomic_bool g_stopping; /* main is about to call ar_node_stop */

static pthread_mutex_t g_incs_lock = PTHREAD_MUTEX_INITIALIZER;
static inc_t *g_incs;

/* Per round. */
static atomic_ulong g_inits, g_init_fails, g_terms, g_self_ends, g_slots_short;
static atomic_ulong g_proc_calls_begun, g_proc_calls_done, g_root_restarts;
static _Atomic uint64_t g_mid_parent[N_MIDS];
static atomic_uint g_mid_seen[N_MIDS];
/* Over all rounds: results by caller kind (thread, process), call, and -rc. */
#define RC_SLOTS 19 /* 0 .. -17, then anything else */
static atomic_ulong g_tally[2][OP_KINDS][RC_SLOTS];

enum { PH_START, PH_STORM, PH_STOP, PH_JOIN, PH_CHECK };
static const char *const phase_name[] = {"starting the tree", "storm", "inside ar_node_stop",
                                         "joining the caller threads", "checking"};
static atomic_int g_phase;
static _Atomic uint64_t g_phase_since;

static void phase(int p)
{
    st_set(&g_phase_since, st_now_ms());
    st_set(&g_phase, p);
}

static const char *target_name(unsigned target)
{
    return target == ROOT ? "the root" : g_mid[target].name;
}

static bool is_simple(unsigned mi)
{
    return g_mid[mi].strategy == AR_SIMPLE_ONE_FOR_ONE;
}

/* ---- results ------------------------------------------------------------------------ */
/* SEMANTICS section 3 "API results", for the calls this program makes (valid arguments,
 * valid specs). AR_ECLOSED is checked apart: only once the stop has begun. */
static bool rc_allowed(int op, target_t t, int rc)
{
    if (rc == AR_ENOPROC || rc == AR_ETIMEDOUT) return true; /* dead supervisor; bounded wait */
    if (t == T_SIMPLE_BY_ID) return rc == AR_ENOTSUP;
    switch (op) {
    case OP_WHICH:
    case OP_COUNT:
        return rc == 0;
    case OP_START: /* a failed init comes back as is (AR_ENOPROC if it crashed) */
        return rc == 0 || rc == INIT_FAIL_RC ||
               (t == T_MID && (rc == AR_EEXIST || rc == AR_EALREADY));
    case OP_TERMINATE: /* by id, or by pid on simple_one_for_one */
        return rc == 0 || rc == AR_ENOENT;
    case OP_RESTART: /* the root never drops a mid: AR_ENOENT would be wrong there */
        return rc == 0 || rc == AR_EBUSY || rc == INIT_FAIL_RC || (t == T_MID && rc == AR_ENOENT);
    case OP_DELETE:
        return t == T_MID && (rc == 0 || rc == AR_EBUSY || rc == AR_ENOENT);
    default:
        return false;
    }
}

static bool stop_begun(void)
{
    /* acquire: pairs with main's release just before ar_node_stop */
    return atomic_load_explicit(&g_stopping, memory_order_acquire);
}

/* Before each call. A caller thread makes none once the stop has begun (the contract;
 * the gap between this check and the call is the window the top of the file describes);
 * what it is in is recorded for the hang report. */
static bool begin(actor_t *a, int op, unsigned target)
{
    if (a->thread == NULL) {
        atomic_fetch_add_explicit(&g_proc_calls_begun, 1, memory_order_relaxed);
        return true;
    }
    if (stop_begun()) return false;
    st_set(&a->thread->target, target);
    st_set(&a->thread->since_ms, st_now_ms());
    st_set(&a->thread->op, op);
    return true;
}

/* After each call: counts and checks its result; returns it. */
static int end(actor_t *a, int op, unsigned target, target_t t, int rc)
{
    if (a->thread) {
        st_set(&a->thread->op, OP_KINDS);
        atomic_fetch_add_explicit(&a->thread->calls, 1, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&g_proc_calls_done, 1, memory_order_relaxed);
    }
    unsigned slot = rc <= 0 && -rc < RC_SLOTS - 1 ? (unsigned)-rc : RC_SLOTS - 1;
    atomic_fetch_add_explicit(&g_tally[a->thread == NULL][op][slot], 1, memory_order_relaxed);
    if (rc == AR_ECLOSED)
        ST_CHECK(stop_begun(), "round %" PRIu64 ": %s: ar_sup_%s on %s returned AR_ECLOSED "
                 "before the stop began", g_round, a->name, op_name[op], target_name(target));
    else
        ST_CHECK(rc_allowed(op, t, rc), "round %" PRIu64 ": %s: ar_sup_%s on %s (%s%s) returned "
                 "%s (%d), not a result SEMANTICS section 3 allows", g_round, a->name,
                 op_name[op], target_name(target),
                 target == ROOT ? "one_for_one" : strategy_name[g_mid[target].strategy],
                 t == T_SIMPLE_BY_ID ? ", by id" : "", ar_err_name(rc), rc);
    return rc;
}

/* ---- what which_children and count_children may say --------------------------------- */
static bool known_id(unsigned mi, const char *id)
{
    char *endp = NULL;
    if (is_simple(mi)) return strcmp(id, g_mid[mi].children[0].id) == 0;
    if (id[0] != 'w' && id[0] != 'x') return false;
    unsigned long k = strtoul(id + 1, &endp, 10);
    if (endp == id + 1 || *endp != '\0') return false;
    return k < (id[0] == 'w' ? g_mid[mi].nstatic : EXTRA_IDS);
}

static void check_mid_children(actor_t *a, unsigned mi, const ar_child_info_t *c, size_t n)
{
    char pb[AR_PID_STRLEN];
    size_t seen = n < WHICH_CAP ? n : WHICH_CAP;
    for (size_t i = 0; i < seen; i++) {
        ST_CHECK(known_id(mi, c[i].id), "round %" PRIu64 ": %s: which_children of %s lists "
                 "an id it was never given: \"%.*s\"", g_round, a->name, g_mid[mi].name, 16,
                 c[i].id);
        ST_CHECK(c[i].type == AR_WORKER, "round %" PRIu64 ": %s: which_children of %s: %s "
                 "is not a worker", g_round, a->name, g_mid[mi].name, c[i].id);
        ST_CHECK(!c[i].restarting || ar_pid_is_none(c[i].pid), "round %" PRIu64 ": %s: "
                 "which_children of %s: %s is restarting yet has pid %s", g_round, a->name,
                 g_mid[mi].name, c[i].id, st_pid_str(c[i].pid, pb));
        /* A temporary child's spec goes when it stops, so one listed is running (or dead
         * with its EXIT not yet handled): never restarting, never without a pid. */
        ST_CHECK(c[i].restart != AR_TEMPORARY || !ar_pid_is_none(c[i].pid), "round %" PRIu64
                 ": %s: which_children of %s lists temporary child %s with no pid%s (nothing "
                 "of a temporary child is kept once it stopped)%s", g_round, a->name,
                 g_mid[mi].name, c[i].id, c[i].restarting ? ", restarting" : "",
                 stop_begun() ? "; the node stop had begun" : "");
        if (is_simple(mi))
            ST_CHECK(c[i].restart == g_mid[mi].children[0].restart, "round %" PRIu64 ": %s: "
                     "which_children of %s: a child is %s, its template %s", g_round, a->name,
                     g_mid[mi].name, restart_name[c[i].restart],
                     restart_name[g_mid[mi].children[0].restart]);
        for (size_t j = 0; j < i; j++) {
            if (is_simple(mi))
                ST_CHECK(ar_pid_is_none(c[i].pid) || !ar_pid_eq(c[i].pid, c[j].pid),
                         "round %" PRIu64 ": %s: which_children of %s lists pid %s twice",
                         g_round, a->name, g_mid[mi].name, st_pid_str(c[i].pid, pb));
            else
                ST_CHECK(strcmp(c[i].id, c[j].id) != 0, "round %" PRIu64 ": %s: "
                         "which_children of %s lists id %s twice", g_round, a->name,
                         g_mid[mi].name, c[i].id);
        }
    }
}

static void check_root_children(actor_t *a, const ar_child_info_t *c, size_t n)
{
    char pb[AR_PID_STRLEN];
    ST_CHECK(n == N_MIDS, "round %" PRIu64 ": %s: the root has %zu children, not %d",
             g_round, a->name, n, N_MIDS);
    for (size_t i = 0; i < n && i < N_MIDS; i++) {
        ST_CHECK(strcmp(c[i].id, g_mid[i].name) == 0, "round %" PRIu64 ": %s: the root's "
                 "child %zu is \"%.*s\", not %s (start order)", g_round, a->name, i, 24,
                 c[i].id, g_mid[i].name);
        ST_CHECK(c[i].type == AR_SUPERVISOR && c[i].restart == g_mid[i].restart,
                 "round %" PRIu64 ": %s: the root's child %s has type %d, restart %s",
                 g_round, a->name, g_mid[i].name, (int)c[i].type, restart_name[c[i].restart]);
        ST_CHECK(!c[i].restarting || ar_pid_is_none(c[i].pid), "round %" PRIu64 ": %s: the "
                 "root's child %s is restarting yet has pid %s", g_round, a->name,
                 g_mid[i].name, st_pid_str(c[i].pid, pb));
    }
}

static void check_counts(actor_t *a, unsigned target, const ar_child_counts_t *k)
{
    bool ok = k->active <= k->supervisors + k->workers;
    if (target == ROOT)
        ok = ok && k->workers == 0 && k->supervisors == N_MIDS && k->specs == N_MIDS;
    else if (is_simple(target))
        ok = ok && k->supervisors == 0;
    else
        ok = ok && k->supervisors == 0 && k->workers == k->specs;
    ST_CHECK(ok, "round %" PRIu64 ": %s: count_children of %s: specs %zu active %zu "
             "supervisors %zu workers %zu", g_round, a->name, target_name(target), k->specs,
             k->active, k->supervisors, k->workers);
}

/* ---- worker specs --------------------------------------------------------------------- */
static const ar_behaviour_t worker_b;

static ar_restart_t random_restart(st_rng_t *r)
{
    unsigned p = (unsigned)st_below(r, 100);
    return p < 50 ? AR_PERMANENT : p < 80 ? AR_TRANSIENT : AR_TEMPORARY;
}

/* A fresh slot; NULL once this round's are used up. */
static slot_t *new_slot(st_rng_t *r, uint32_t mi, const char *id, ar_restart_t restart)
{
    uint32_t i = atomic_fetch_add_explicit(&g_nslots, 1, memory_order_relaxed);
    if (i >= MAX_SLOTS) {
        atomic_fetch_add_explicit(&g_slots_short, 1, memory_order_relaxed);
        return NULL;
    }
    slot_t *s = &g_slots[i];
    s->magic = SLOT_MAGIC;
    s->idx = i;
    s->mid = mi;
    snprintf(s->id, sizeof s->id, "%s", id);
    s->restart = restart;
    s->crash_pct = (unsigned)st_range(r, 1, CRASH_PCT_MAX);
    s->init_fail_pct = st_chance(r, 30) ? (unsigned)st_range(r, 5, INIT_FAIL_PCT_MAX) : 0;
    s->call_pct = st_chance(r, 40) ? (unsigned)st_range(r, 2, CALL_PCT_MAX) : 0;
    s->slow_term_ms = st_chance(r, 30) ? (unsigned)st_range(r, 1, SLOW_TERM_MAX_MS) : 0;
    s->trap = st_chance(r, 30);
    s->ignore_shutdown = s->trap && st_chance(r, 30);
    return s;
}

static int random_shutdown(st_rng_t *r)
{
    return st_chance(r, 20) ? AR_SHUTDOWN_BRUTAL : (int)st_range(r, 5, SHUTDOWN_MAX_MS);
}

static ar_child_spec_t worker_spec(st_rng_t *r, slot_t *s)
{
    return (ar_child_spec_t){.id = s->id, .behaviour = &worker_b, .arg = s,
                             .restart = s->restart, .shutdown_ms = random_shutdown(r),
                             .type = AR_WORKER};
}

/* ---- one random ar_sup_* call on a mid ----------------------------------------------- */
static int mid_which(actor_t *a, unsigned mi, ar_pid_t sup, ar_child_info_t *buf, size_t *n)
{
    if (!begin(a, OP_WHICH, mi)) return QUIT;
    int rc = end(a, OP_WHICH, mi, is_simple(mi) ? T_SIMPLE : T_MID,
                 ar_sup_which_children(g_node, sup, buf, WHICH_CAP, n));
    if (rc == 0) check_mid_children(a, mi, buf, *n);
    return rc;
}

static int mid_count(actor_t *a, unsigned mi, ar_pid_t sup, ar_child_counts_t *k)
{
    if (!begin(a, OP_COUNT, mi)) return QUIT;
    int rc = end(a, OP_COUNT, mi, is_simple(mi) ? T_SIMPLE : T_MID,
                 ar_sup_count_children(g_node, sup, k));
    if (rc == 0) check_counts(a, mi, k);
    return rc;
}

static void random_id(st_rng_t *r, unsigned mi, char id[ID_LEN])
{
    unsigned k = (unsigned)st_below(r, g_mid[mi].nstatic + EXTRA_IDS);
    if (k < g_mid[mi].nstatic) snprintf(id, ID_LEN, "w%u", k);
    else snprintf(id, ID_LEN, "x%u", k - g_mid[mi].nstatic);
}

static int mid_start(actor_t *a, unsigned mi, ar_pid_t sup)
{
    char pb[AR_PID_STRLEN];
    ar_pid_t pid = AR_PID_NONE;
    slot_t *s;
    int rc;
    if (is_simple(mi)) {
        ar_child_counts_t k;
        if ((rc = mid_count(a, mi, sup, &k)) != 0 || k.active >= SIMPLE_CAP) return rc;
        if (!(s = new_slot(a->rng, mi, g_mid[mi].children[0].id, g_mid[mi].children[0].restart)))
            return 0;
        if (!begin(a, OP_START, mi)) return QUIT;
        rc = end(a, OP_START, mi, T_SIMPLE, ar_sup_start_child(g_node, sup, NULL, s, &pid));
    } else {
        char id[ID_LEN];
        random_id(a->rng, mi, id);
        if (!(s = new_slot(a->rng, mi, id, random_restart(a->rng)))) return 0;
        ar_child_spec_t spec = worker_spec(a->rng, s);
        if (!begin(a, OP_START, mi)) return QUIT;
        rc = end(a, OP_START, mi, T_MID, ar_sup_start_child(g_node, sup, &spec, NULL, &pid));
    }
    if (rc == 0 || rc == AR_EEXIST)
        ST_CHECK(!ar_pid_is_none(pid), "round %" PRIu64 ": %s: start_child on %s returned %s "
                 "with no pid (%s)", g_round, a->name, g_mid[mi].name, ar_err_name(rc),
                 st_pid_str(pid, pb));
    return rc;
}

static int mid_by_id(actor_t *a, int op, unsigned mi, ar_pid_t sup)
{
    char id[ID_LEN];
    char pb[AR_PID_STRLEN];
    ar_pid_t pid = AR_PID_NONE;
    target_t t = is_simple(mi) ? T_SIMPLE_BY_ID : T_MID;
    if (is_simple(mi)) snprintf(id, sizeof id, "%s", g_mid[mi].children[0].id);
    else random_id(a->rng, mi, id);
    if (!begin(a, op, mi)) return QUIT;
    int rc;
    switch (op) {
    case OP_TERMINATE:
        rc = ar_sup_terminate_child(g_node, sup, id, AR_PID_NONE);
        break;
    case OP_RESTART:
        rc = ar_sup_restart_child(g_node, sup, id, &pid);
        break;
    default:
        rc = ar_sup_delete_child(g_node, sup, id);
        break;
    }
    end(a, op, mi, t, rc);
    if (op == OP_RESTART && rc == 0)
        ST_CHECK(!ar_pid_is_none(pid), "round %" PRIu64 ": %s: restart_child %s on %s "
                 "returned 0 with no pid (%s)", g_round, a->name, id, g_mid[mi].name,
                 st_pid_str(pid, pb));
    return rc;
}

/* simple_one_for_one children are stopped by pid: one from a fresh which_children. */
static int simple_terminate(actor_t *a, unsigned mi, ar_pid_t sup, ar_child_info_t *buf)
{
    size_t n = 0;
    int rc = mid_which(a, mi, sup, buf, &n);
    if (rc != 0 || n == 0) return rc;
    ar_pid_t pid = buf[st_below(a->rng, n < WHICH_CAP ? n : WHICH_CAP)].pid;
    if (ar_pid_is_none(pid)) return 0;
    if (!begin(a, OP_TERMINATE, mi)) return QUIT;
    return end(a, OP_TERMINATE, mi, T_SIMPLE, ar_sup_terminate_child(g_node, sup, NULL, pid));
}

/* One random call (two for some) on mid mi at pid sup, every result checked. Returns the
 * last result, or QUIT when a caller thread must make no more calls. */
static int call_mid(actor_t *a, unsigned mi, ar_pid_t sup, ar_child_info_t *buf)
{
    unsigned p = (unsigned)st_below(a->rng, 100);
    size_t n;
    ar_child_counts_t k;
    if (p < 25) return mid_which(a, mi, sup, buf, &n);
    if (p < 40) return mid_count(a, mi, sup, &k);
    if (p < 60) return mid_start(a, mi, sup);
    if (p < 75)
        return is_simple(mi) && st_chance(a->rng, 85) ? simple_terminate(a, mi, sup, buf)
                                                      : mid_by_id(a, OP_TERMINATE, mi, sup);
    if (p < 90) return mid_by_id(a, OP_RESTART, mi, sup);
    return mid_by_id(a, OP_DELETE, mi, sup);
}

/* ---- workers ------------------------------------------------------------------------ */
static void remember(inc_t *w)
{
    pthread_mutex_lock(&g_incs_lock);
    w->next = g_incs;
    g_incs = w;
    pthread_mutex_unlock(&g_incs_lock);
}

/* Counts the mid's incarnations, as its children first see a new supervisor pid. */
static void note_mid(uint32_t mi, uint64_t sup_lo)
{
    if (atomic_exchange_explicit(&g_mid_parent[mi], sup_lo, memory_order_relaxed) != sup_lo)
        atomic_fetch_add_explicit(&g_mid_seen[mi], 1, memory_order_relaxed);
}

static void arm_tick(ar_proc_t *self, inc_t *w)
{
    int ms = (int)st_range(&w->rng, TICK_MIN_MS, TICK_MAX_MS);
    int rc = ar_send_after(g_node, ms, ar_self(self), TAG_TICK, NULL, 0, NULL);
    if (rc == AR_ECLOSED)
        ST_CHECK(stop_begun(), "round %" PRIu64 ": worker %s: ar_send_after returned "
                 "AR_ECLOSED before the stop began", g_round, w->slot->id);
    else
        ST_CHECK(rc == 0, "round %" PRIu64 ": worker %s: ar_send_after returned %s", g_round,
                 w->slot->id, ar_err_name(rc));
}

static int worker_init(ar_proc_t *self, void *arg, void **state)
{
    slot_t *s = arg;
    char pb[AR_PID_STRLEN];
    if (s == NULL || s->magic != SLOT_MAGIC)
        st_fail("round %" PRIu64 ": a worker's init got an arg that is no slot of ours", g_round);
    uint32_t attempt = atomic_fetch_add_explicit(&s->attempts, 1, memory_order_relaxed);
    st_rng_t rng = st_rng_for((g_round << 48) ^ ((uint64_t)s->idx << 20) ^ attempt);
    ar_proc_info_t pi;
    int rc = ar_proc_info(g_node, ar_self(self), &pi);
    ST_CHECK(rc == 0, "round %" PRIu64 ": worker %s: ar_proc_info on itself in init returned "
             "%s", g_round, s->id, ar_err_name(rc));
    ar_pid_t sup = rc == 0 ? pi.parent : AR_PID_NONE;
    uint64_t prev = atomic_exchange_explicit(&s->last_parent, sup.lo, memory_order_relaxed);
    ST_CHECK(s->restart != AR_TEMPORARY || prev != sup.lo, "round %" PRIu64 ": temporary "
             "child %s of %s started again by the same supervisor %s (temporary children "
             "are never restarted)%s", g_round, s->id, g_mid[s->mid].name, st_pid_str(sup, pb),
             stop_begun() ? "; the node stop had begun" : "");
    note_mid(s->mid, sup.lo);
    if (st_get(&g_storm) && st_chance(&rng, s->init_fail_pct)) {
        atomic_fetch_add_explicit(&g_init_fails, 1, memory_order_relaxed);
        if (st_chance(&rng, 50)) return INIT_FAIL_RC;
        AR_FAIL(self, "init of %s fails on purpose", s->id);
    }
    inc_t *w = calloc(1, sizeof *w);
    if (w == NULL) st_fail("out of memory");
    w->magic = INC_MAGIC;
    w->slot = s;
    w->sup = sup;
    w->rng = rng;
    w->expect_why = -1;
    remember(w);
    if (s->trap) ar_trap_exit(self, true);
    arm_tick(self, w);
    atomic_fetch_add_explicit(&g_inits, 1, memory_order_relaxed);
    *state = w;
    return 0;
}

/* Ends the worker one of the ways a crash or a finished job ends a process. */
static void end_self(ar_proc_t *self, inc_t *w)
{
    atomic_fetch_add_explicit(&g_self_ends, 1, memory_order_relaxed);
    unsigned p = (unsigned)st_below(&w->rng, 100);
    if (p < 40) {
        w->expect_why = AR_ERROR;
        AR_FAIL(self, "%s crashes on purpose", w->slot->id);
    } else if (p < 65) {
        w->expect_why = AR_ERROR;
        ar_exit_self(self, (ar_reason_t){AR_ERROR, "storm"});
    } else if (p < 75) {
        w->expect_why = AR_NORMAL;
        ar_exit_self(self, AR_REASON(AR_NORMAL));
    }
    ar_stop(self, AR_REASON(p < 92 ? AR_NORMAL : AR_SHUTDOWN));
}

static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    inc_t *w = state;
    slot_t *s = w->slot;
    char pa[AR_PID_STRLEN], pb[AR_PID_STRLEN];
    if (m->kind == AR_MSG_TIMER && m->tag == TAG_TICK) {
        if (st_chance(&w->rng, s->crash_pct)) {
            end_self(self, w);
            return;
        }
        if (st_chance(&w->rng, s->call_pct)) {
            actor_t a = {.rng = &w->rng};
            ar_child_info_t buf[WHICH_CAP];
            snprintf(a.name, sizeof a.name, "worker %s of %s", s->id, g_mid[s->mid].name);
            call_mid(&a, s->mid, w->sup, buf);
        }
        arm_tick(self, w);
        return;
    }
    if (m->kind == AR_MSG_EXIT && s->trap) {
        /* Linked to its supervisor alone: no one else can send it an EXIT. */
        ST_CHECK(ar_pid_eq(m->from, w->sup), "round %" PRIu64 ": worker %s of %s got an EXIT "
                 "(%s) from %s, not from its supervisor %s", g_round, s->id, g_mid[s->mid].name,
                 ar_exit_code_name(m->reason.code), st_pid_str(m->from, pa),
                 st_pid_str(w->sup, pb));
        if (!s->ignore_shutdown) ar_stop(self, AR_REASON(m->reason.code));
        return;
    }
    st_violation("round %" PRIu64 ": worker %s of %s got an unexpected message (kind %d, tag %u)",
                 g_round, s->id, g_mid[s->mid].name, (int)m->kind, m->tag);
}

static void worker_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    inc_t *w = state;
    if (w == NULL || w->magic != INC_MAGIC)
        st_fail("round %" PRIu64 ": a worker's terminate got a state its init did not store",
                g_round);
    slot_t *s = w->slot;
    uint32_t n = atomic_fetch_add_explicit(&w->terminated, 1, memory_order_relaxed);
    ST_CHECK(n == 0, "round %" PRIu64 ": terminate ran %u times for one incarnation of %s of %s",
             g_round, n + 1, s->id, g_mid[s->mid].name);
    atomic_fetch_add_explicit(&g_terms, 1, memory_order_relaxed);
    ST_CHECK(w->expect_why < 0 || (int)why.code == w->expect_why, "round %" PRIu64 ": worker "
             "%s of %s ended itself with %s at once, yet terminate got %s", g_round, s->id,
             g_mid[s->mid].name, ar_exit_code_name((ar_exit_code_t)w->expect_why),
             ar_exit_code_name(why.code));
    /* A slow cleanup, skipped when killed (as terminate should). */
    if (s->slow_term_ms && why.code != AR_KILLED) {
        int rc = ar_sleep(self, (int)s->slow_term_ms);
        ST_CHECK(rc == 0, "round %" PRIu64 ": worker %s: ar_sleep in terminate returned %s",
                 g_round, s->id, ar_err_name(rc));
    }
}

static const ar_behaviour_t worker_b = {"sup_stress_worker", worker_init, worker_handle,
                                        worker_terminate};

/* ---- caller threads ------------------------------------------------------------------- */
static int root_which(actor_t *a, ar_child_info_t *buf, size_t *n)
{
    if (!begin(a, OP_WHICH, ROOT)) return QUIT;
    int rc = end(a, OP_WHICH, ROOT, T_ROOT, ar_sup_which_children(g_node, g_root, buf,
                                                                    WHICH_CAP, n));
    if (rc == 0) check_root_children(a, buf, *n);
    return rc;
}

static int root_count(actor_t *a)
{
    ar_child_counts_t k;
    if (!begin(a, OP_COUNT, ROOT)) return QUIT;
    int rc = end(a, OP_COUNT, ROOT, T_ROOT, ar_sup_count_children(g_node, g_root, &k));
    if (rc == 0) check_counts(a, ROOT, &k);
    return rc;
}

/* A mid the root left down (a transient one that gave up) comes back through the API. */
static int root_restart(actor_t *a, unsigned mi)
{
    ar_pid_t pid = AR_PID_NONE;
    if (!begin(a, OP_RESTART, ROOT)) return QUIT;
    int rc = end(a, OP_RESTART, ROOT, T_ROOT,
                 ar_sup_restart_child(g_node, g_root, g_mid[mi].name, &pid));
    if (rc == 0) {
        atomic_fetch_add_explicit(&g_root_restarts, 1, memory_order_relaxed);
        ST_CHECK(!ar_pid_is_none(pid), "round %" PRIu64 ": %s: restart_child %s on the root "
                 "returned 0 with no pid", g_round, a->name, g_mid[mi].name);
    }
    return rc;
}

static void *caller_main(void *arg)
{
    caller_t *c = arg;
    actor_t a = {.rng = &c->rng, .thread = c};
    snprintf(a.name, sizeof a.name, "caller thread %u", c->id);
    ar_child_info_t mids[N_MIDS];
    bool known = false;
    for (;;) {
        int rc;
        if (!known || st_chance(&c->rng, ROOT_REFRESH_PCT)) {
            size_t n = 0;
            rc = root_which(&a, c->buf, &n);
            known = rc == 0 && n == N_MIDS;
            if (known) memcpy(mids, c->buf, sizeof mids);
        } else {
            unsigned mi = (unsigned)st_below(&c->rng, N_MIDS);
            if (ar_pid_is_none(mids[mi].pid)) {
                rc = mids[mi].restarting ? 0 : root_restart(&a, mi);
                known = false;
            } else if (st_chance(&c->rng, ROOT_COUNT_PCT)) {
                rc = root_count(&a);
            } else {
                rc = call_mid(&a, mi, mids[mi].pid, c->buf);
                if (rc == AR_ENOPROC) known = false; /* that mid was restarted: look again */
            }
        }
        if (rc == QUIT || rc == AR_ECLOSED) break;
        st_nap_us((unsigned)st_below(&c->rng, CALLER_NAP_US));
    }
    return NULL;
}

/* ---- hang report ---------------------------------------------------------------------- */
static void hang_report(void)
{
    uint64_t now = st_now_ms();
    fprintf(stderr, "hang report: round %" PRIu64 ", %s for %" PRIu64 " ms; worker inits %lu, "
            "terminates %lu; calls from workers begun %lu, returned %lu\n", g_round,
            phase_name[st_get(&g_phase)], now - st_get(&g_phase_since),
            (unsigned long)st_get(&g_inits), (unsigned long)st_get(&g_terms),
            (unsigned long)st_get(&g_proc_calls_begun), (unsigned long)st_get(&g_proc_calls_done));
    for (int i = 0; i < N_CALLERS; i++) {
        caller_t *c = &g_callers[i];
        int op = st_get(&c->op);
        if (op >= OP_KINDS)
            fprintf(stderr, "  caller thread %d: between calls (%lu made)\n", i,
                    (unsigned long)st_get(&c->calls));
        else
            fprintf(stderr, "  caller thread %d: in ar_sup_%s on %s for %" PRIu64 " ms (%lu made)\n",
                    i, op_name[op], target_name(st_get(&c->target)), now - st_get(&c->since_ms),
                    (unsigned long)st_get(&c->calls));
    }
}

/* ---- rounds --------------------------------------------------------------------------- */
/* The tree's specs: the mids in a random start order, their workers, the root. */
static void build_tree(st_rng_t *r)
{
    ar_strategy_t order[N_MIDS] = {AR_ONE_FOR_ONE, AR_ONE_FOR_ALL, AR_REST_FOR_ONE,
                                   AR_SIMPLE_ONE_FOR_ONE};
    for (unsigned i = N_MIDS - 1; i > 0; i--) {
        unsigned j = (unsigned)st_below(r, i + 1);
        ar_strategy_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    unsigned transient = st_chance(r, TRANSIENT_MID_PCT) ? (unsigned)st_below(r, N_MIDS) : N_MIDS;
    for (unsigned mi = 0; mi < N_MIDS; mi++) {
        mid_t *d = &g_mid[mi];
        memset(d, 0, sizeof *d);
        d->strategy = order[mi];
        snprintf(d->name, sizeof d->name, "%s", strategy_name[d->strategy]);
        d->restart = mi == transient ? AR_TRANSIENT : AR_PERMANENT;
        d->spec = (ar_sup_spec_t){
            .strategy = d->strategy,
            .intensity = (int)st_range(r, MID_INTENSITY_MIN, MID_INTENSITY_MAX),
            .period_ms = (int)st_range(r, MID_PERIOD_MIN_MS, MID_PERIOD_MAX_MS),
            .children = d->children};
        if (d->strategy == AR_SIMPLE_ONE_FOR_ONE) {
            /* each start_child brings the child's own slot as its arg */
            d->children[0] = (ar_child_spec_t){.id = "s", .behaviour = &worker_b,
                                               .restart = random_restart(r),
                                               .shutdown_ms = random_shutdown(r),
                                               .type = AR_WORKER};
            d->spec.nchildren = 1;
        } else {
            d->nstatic = (unsigned)st_range(r, MIN_WORKERS, MAX_WORKERS);
            for (unsigned j = 0; j < d->nstatic; j++) {
                char id[ID_LEN];
                snprintf(id, sizeof id, "w%u", j);
                slot_t *s = new_slot(r, mi, id, random_restart(r));
                if (s == NULL) st_fail("no slots for the static workers");
                d->children[j] = worker_spec(r, s);
            }
            d->spec.nchildren = d->nstatic;
        }
        g_root_children[mi] = (ar_child_spec_t){.id = d->name, .behaviour = &ar_supervisor,
                                                .arg = &d->spec, .restart = d->restart,
                                                .type = AR_SUPERVISOR};
    }
    g_root_spec = (ar_sup_spec_t){.strategy = AR_ONE_FOR_ONE, .intensity = ROOT_INTENSITY,
                                  .period_ms = ROOT_PERIOD_MS, .children = g_root_children,
                                  .nchildren = N_MIDS};
}

static void reset_round(uint64_t round)
{
    g_round = round;
    memset(g_slots, 0, MAX_SLOTS * sizeof *g_slots);
    st_set(&g_nslots, 0);
    st_set(&g_storm, false);
    st_set(&g_stopping, false);
    g_incs = NULL;
    atomic_ulong *counters[] = {&g_inits, &g_init_fails, &g_terms, &g_self_ends, &g_slots_short,
                                &g_proc_calls_begun, &g_proc_calls_done, &g_root_restarts};
    for (size_t i = 0; i < sizeof counters / sizeof *counters; i++) st_set(counters[i], 0);
    for (int i = 0; i < N_MIDS; i++) {
        st_set(&g_mid_parent[i], 0);
        st_set(&g_mid_seen[i], 0);
    }
}

static unsigned long tally_sum(int kind, int slot)
{
    unsigned long n = 0;
    for (int op = 0; op < OP_KINDS; op++) n += st_get(&g_tally[kind][op][slot]);
    return n;
}

/* After the stop: each incarnation terminated exactly once; frees them. */
static void check_incarnations(uint64_t round)
{
    unsigned long n = 0;
    for (inc_t *w = g_incs, *next; w; w = next) {
        next = w->next;
        uint32_t t = st_get(&w->terminated);
        ST_CHECK(t == 1, "round %" PRIu64 ": a %s worker %s of %s (%s%s%s) started but terminate "
                 "ran %u times", round, restart_name[w->slot->restart], w->slot->id,
                 g_mid[w->slot->mid].name, w->slot->trap ? "traps exits" : "does not trap",
                 w->slot->ignore_shutdown ? ", ignores shutdown" : "",
                 w->slot->slow_term_ms ? ", slow terminate" : "", t);
        free(w);
        n++;
    }
    g_incs = NULL;
    ST_CHECK(n == st_get(&g_inits) && st_get(&g_inits) == st_get(&g_terms), "round %" PRIu64
             ": %lu incarnations recorded, %lu inits, %lu terminates", round, n,
             (unsigned long)st_get(&g_inits), (unsigned long)st_get(&g_terms));
}

static void run_round(uint64_t round)
{
    reset_round(round);
    st_rng_t rng = st_rng_for(round);
    build_tree(&rng);
    uint64_t storm_ms = st_range(&rng, STORM_MIN_MS, STORM_MAX_MS);
    long base = st_get(st_live_blocks());
    unsigned long calls_before = tally_sum(0, 0) + tally_sum(1, 0);
    actor_t main_actor = {.name = "main", .rng = &rng};

    phase(PH_START);
    g_node = st_node_start(2);
    ST_EXPECT_RC(ar_sup_start(g_node, &g_root_spec, NULL, &g_root), 0, "ar_sup_start(root)");
    ar_child_info_t tops[WHICH_CAP];
    size_t n = 0;
    ST_EXPECT_RC(ar_sup_which_children(g_node, g_root, tops, WHICH_CAP, &n), 0,
                 "which_children of the root");
    check_root_children(&main_actor, tops, n);
    for (unsigned mi = 0; mi < N_MIDS; mi++) {
        if (!is_simple(mi)) continue;
        for (int i = 0; i < SIMPLE_START; i++) {
            slot_t *s = new_slot(&rng, mi, g_mid[mi].children[0].id, g_mid[mi].children[0].restart);
            ST_EXPECT_RC(ar_sup_start_child(g_node, tops[mi].pid, NULL, s, NULL), 0,
                         "start_child on the simple_one_for_one mid");
        }
    }
    st_set(&g_storm, true);
    for (uint32_t i = 0; i < N_CALLERS; i++) {
        caller_t *c = &g_callers[i];
        c->id = i;
        c->rng = st_rng_for(round * 1000u + 100u + i);
        st_set(&c->op, OP_KINDS);
        st_set(&c->calls, 0);
        st_start_thread(&c->thread, caller_main, c);
    }

    phase(PH_STORM);
    st_nap_us((unsigned)storm_ms * 1000u);
    ar_proc_info_t pi;
    ST_CHECK(ar_proc_info(g_node, g_root, &pi) == 0, "round %" PRIu64 ": the root supervisor "
             "died before the stop (more than %d restarts in %d ms?)", round, ROOT_INTENSITY,
             ROOT_PERIOD_MS);

    phase(PH_STOP);
    /* release: a result of AR_ECLOSED is expected from here on */
    atomic_store_explicit(&g_stopping, true, memory_order_release);
    uint64_t ts = st_now_ms();
    int rc = ar_node_stop(g_node, STOP_TIMEOUT_MS);
    uint64_t stop_ms = st_now_ms() - ts;
    phase(PH_JOIN);
    for (int i = 0; i < N_CALLERS; i++) st_join(g_callers[i].thread);
    phase(PH_CHECK);
    ST_CHECK(rc == 0, "round %" PRIu64 ": ar_node_stop returned %s after %" PRIu64 " ms "
             "(processes still alive after %d ms were killed)", round, ar_err_name(rc), stop_ms,
             STOP_TIMEOUT_MS);
    unsigned long inits = st_get(&g_inits), terms = st_get(&g_terms);
    check_incarnations(round);
    long live = st_get(st_live_blocks()) - base;
    ST_CHECK(live == 0, "round %" PRIu64 ": %ld runtime blocks still allocated after "
             "ar_node_stop", round, live);
    unsigned long ok = tally_sum(0, 0) + tally_sum(1, 0) - calls_before;
    ST_CHECK(st_get(&g_self_ends) > 0 && ok > 0, "round %" PRIu64 ": no storm (%lu workers "
             "ended themselves, %lu calls succeeded)", round, (unsigned long)st_get(&g_self_ends),
             ok);

    printf("round %" PRIu64 ": stop after %" PRIu64 " ms; mid incarnations", round, storm_ms);
    for (int mi = 0; mi < N_MIDS; mi++)
        printf(" %s%s %u", g_mid[mi].name, g_mid[mi].restart == AR_TRANSIENT ? "(transient)" : "",
               st_get(&g_mid_seen[mi]));
    printf(" (%lu back through the root API)\n  worker inits %lu (%lu failed), terminates %lu, "
           "ended themselves %lu; ar_sup_* calls ok %lu (from workers %lu begun); slots short "
           "%lu; stop took %" PRIu64 " ms; live blocks after stop %ld\n",
           (unsigned long)st_get(&g_root_restarts), inits, (unsigned long)st_get(&g_init_fails),
           terms, (unsigned long)st_get(&g_self_ends), ok,
           (unsigned long)st_get(&g_proc_calls_begun), (unsigned long)st_get(&g_slots_short),
           stop_ms, live);
    fflush(stdout);
}

/* Every call's results over all rounds, by caller kind. */
static void print_tally(void)
{
    static const char *const kind[2] = {"threads", "workers"};
    for (int k = 0; k < 2; k++)
        for (int op = 0; op < OP_KINDS; op++) {
            printf("%-7s %-15s", kind[k], op_name[op]);
            for (int s = 0; s < RC_SLOTS; s++) {
                unsigned long v = st_get(&g_tally[k][op][s]);
                if (v) printf(" %s %lu", s == RC_SLOTS - 1 ? "other" : ar_err_name(-s), v);
            }
            printf("\n");
        }
}

int main(int argc, char **argv)
{
    st_begin("stress_sup", argc, argv);
    st_hang_report = hang_report;
    uint64_t t0 = st_now_ms();
    g_slots = calloc(MAX_SLOTS, sizeof *g_slots);
    if (g_slots == NULL) st_fail("out of memory");
    ST_EXPECT_RC(ar_set_allocator(st_counting_allocator()), 0, "ar_set_allocator");
    for (uint64_t round = 1; round <= ROUNDS; round++) {
        run_round(round);
        if (st_get(&st_violations) != 0) break;
    }
    ST_EXPECT_RC(ar_set_allocator(NULL), 0, "ar_set_allocator(NULL)");
    print_tally();
    free(g_slots);
    return st_finish(t0);
}
