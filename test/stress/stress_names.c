/* stress_names: registered names under spawn/exit churn, from threads and a process.
 *
 * A small set of names is fought over by:
 *  - SPAWNERS foreign threads, each spawning short-lived workers that take a random name
 *    by spawn's .name, by registering themselves in init, or registered by the thread
 *    right after the spawn; a worker ends at once (ar_stop in init, a stop cast, a kill)
 *    or lives on in a small ring until a later spawn replaces it;
 *  - a spawner process doing the same with .name from inside a process (some linked);
 *  - an unregistering thread, removing random names;
 *  - a re-registering thread, looking a name up and registering another random name for
 *    the pid it found (refused while that process still holds a name);
 *  - READERS threads calling ar_whereis, and ar_proc_info on what they find;
 *  - two "flip" threads registering and unregistering one more name for one long-lived
 *    process as fast as they can, paused every FLIP_MS by main, which checks them.
 * Invariants: every call returns one of the results its rules allow; a lookup that is not
 * AR_PID_NONE gives a pid that registered that very name (checked at the end against the
 * logs every actor keeps of its successful registrations: logs are per actor, so the
 * program adds no synchronisation of its own for TSan to lean on); once ar_proc_info has
 * called a pid dead, no later lookup returns it (its name went before its pid); at every
 * flip pause the table and the flip process agree (the name maps to it and it shows the
 * name, or it maps to nothing, the process shows no name and can take it again); once
 * every worker has ended, every name is free (ar_whereis NONE, ar_unregister AR_ENOENT)
 * and can be taken again; after ar_node_stop no runtime block is left.
 *
 * Usage: stress_names [seed]
 */
#include "stress_util.h"

#define NNAMES 6
#define SPAWNERS 2
#define READERS 2
#define RING 8                            /* workers a spawner keeps alive for a while */
#define CHURN_MS (ST_TSAN ? 5000 : 3000)
#define LOG_CAP (1u << 18)                /* per actor */
#define OBS_CAP (1u << 16)                /* per reader */
#define FLIP_MS 20

enum { TAG_STOP = 1, TAG_GO };

static const char *const g_names[NNAMES] = {"n0", "n1", "n2", "n3", "n4", "n5"};
static ar_node_t *g_node;
static atomic_bool g_stop;

/* ---- per-actor logs of (name, pid) ------------------------------------------------------ */
typedef struct rec {
    uint64_t hi, lo;
    uint32_t name;
} rec_t;

typedef struct log {
    rec_t *e;
    size_t n, cap;
    unsigned long lost; /* entries that did not fit */
} log_t;

static void log_init(log_t *l, size_t cap)
{
    l->e = calloc(cap, sizeof *l->e);
    if (!l->e) st_fail("out of memory");
    l->n = 0;
    l->cap = cap;
    l->lost = 0;
}

static void log_add(log_t *l, ar_pid_t p, uint32_t name)
{
    if (l->n == l->cap) {
        l->lost++;
        return;
    }
    l->e[l->n++] = (rec_t){p.hi, p.lo, name};
}

static int rec_cmp(const void *a, const void *b)
{
    const rec_t *x = a, *y = b;
    if (x->name != y->name) return x->name < y->name ? -1 : 1;
    if (x->hi != y->hi) return x->hi < y->hi ? -1 : 1;
    if (x->lo != y->lo) return x->lo < y->lo ? -1 : 1;
    return 0;
}

/* ---- workers ------------------------------------------------------------------------------- */
typedef struct wstart { /* on the spawner's stack; only init touches it */
    int reg;            /* register this name in init, or -1 */
    bool stop_in_init;
    int rc;
} wstart_t;

static int worker_init(ar_proc_t *self, void *arg, void **state)
{
    wstart_t *w = arg;
    *state = NULL;
    w->rc = 1;
    if (w->reg >= 0) w->rc = ar_register(ar_node(self), g_names[w->reg], ar_self(self));
    if (w->stop_in_init) ar_stop(self, AR_REASON(AR_NORMAL));
    return 0;
}

static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind == AR_MSG_CAST && m->tag == TAG_STOP) ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t worker_b = {"names_worker", worker_init, worker_handle, NULL};

static void end_worker(st_rng_t *r, ar_pid_t pid)
{
    int rc = st_chance(r, 50) ? ar_send(g_node, pid, TAG_STOP, NULL, 0)
                              : ar_exit(g_node, pid, AR_REASON(AR_KILL));
    ST_CHECK(rc == 0, "ending a worker: %s", ar_err_name(rc));
}

/* ---- spawner threads -------------------------------------------------------------------------- */
typedef struct spawner {
    int id;
    st_rng_t rng;
    log_t regs;
    ar_pid_t ring[RING];
    unsigned long spawns, named, eexist;
} spawner_t;

static spawner_t g_spawners[SPAWNERS];

static void *spawner_main(void *arg)
{
    spawner_t *s = arg;
    st_rng_t *r = &s->rng;
    char ps[AR_PID_STRLEN];
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        uint32_t k = (uint32_t)st_below(r, NNAMES);
        unsigned how = (unsigned)st_below(r, 3);
        wstart_t w = {.reg = how == 1 ? (int)k : -1, .stop_in_init = st_chance(r, 20)};
        ar_spawn_opts_t o = {.name = how == 0 ? g_names[k] : NULL};
        ar_pid_t pid = AR_PID_NONE;
        int rc = ar_spawn(g_node, &worker_b, &w, &o, &pid);
        s->spawns++;
        if (rc == AR_EEXIST && how == 0) {
            s->eexist++;
            continue;
        }
        if (rc != 0) {
            st_violation("spawner %d: ar_spawn (.name %s): %s", s->id, how == 0 ? g_names[k] : "-",
                         ar_err_name(rc));
            continue;
        }
        bool holds = how == 0;
        if (how == 1) {
            holds = w.rc == 0;
            ST_CHECK(w.rc == 0 || w.rc == AR_EEXIST, "spawner %d: a worker registering \"%s\" "
                     "in its init: %s", s->id, g_names[k], ar_err_name(w.rc));
        } else if (how == 2) {
            rc = ar_register(g_node, g_names[k], pid);
            holds = rc == 0;
            /* AR_ENOPROC: it ended in init already */
            ST_CHECK(rc == 0 || rc == AR_EEXIST || (rc == AR_ENOPROC && w.stop_in_init),
                     "spawner %d: ar_register(\"%s\", %s) of a fresh worker: %s", s->id,
                     g_names[k], st_pid_str(pid, ps), ar_err_name(rc));
        }
        if (holds) {
            s->named++;
            log_add(&s->regs, pid, k);
        }
        if (!w.stop_in_init) {
            if (st_chance(r, 30)) {
                size_t i = (size_t)st_below(r, RING);
                if (!ar_pid_is_none(s->ring[i])) end_worker(r, s->ring[i]);
                s->ring[i] = pid;
            } else {
                end_worker(r, pid);
            }
        }
        if (st_chance(r, 10)) st_nap_us((unsigned)st_range(r, 1, 50));
    }
    for (size_t i = 0; i < RING; i++)
        if (!ar_pid_is_none(s->ring[i])) end_worker(r, s->ring[i]);
    return NULL;
}

/* ---- a spawner process ---------------------------------------------------------------------- */
typedef struct pspawner {
    st_rng_t rng;
    log_t regs;
    unsigned long spawns, named;
    atomic_bool done;
} pspawner_t;

static pspawner_t g_pspawner;

static int pspawner_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void pspawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    pspawner_t *s = state;
    st_rng_t *r = &s->rng;
    if (m->kind == AR_MSG_EXIT) return; /* its linked workers' ends */
    if (m->kind != AR_MSG_CAST || m->tag != TAG_GO) {
        st_violation("spawner process: unexpected message kind %d tag %u", (int)m->kind, m->tag);
        return;
    }
    if (atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        /* release: its log is complete before main sees it done */
        atomic_store_explicit(&s->done, true, memory_order_release);
        return;
    }
    for (int i = 0; i < 4; i++) {
        uint32_t k = (uint32_t)st_below(r, NNAMES);
        wstart_t w = {.reg = -1, .stop_in_init = st_chance(r, 20)};
        ar_spawn_opts_t o = {.name = g_names[k], .link = st_chance(r, 50)};
        ar_pid_t pid = AR_PID_NONE;
        int rc = ar_spawn(ar_node(self), &worker_b, &w, &o, &pid);
        s->spawns++;
        if (rc == AR_EEXIST) continue;
        if (rc != 0) {
            st_violation("spawner process: ar_spawn (.name %s): %s", g_names[k], ar_err_name(rc));
            continue;
        }
        s->named++;
        log_add(&s->regs, pid, k);
        if (!w.stop_in_init) end_worker(r, pid);
    }
    if (st_chance(r, 20)) {
        int rc = ar_sleep(self, 1);
        ST_CHECK(rc == 0, "spawner process: ar_sleep: %s", ar_err_name(rc));
    }
    int rc = ar_send(ar_node(self), ar_self(self), TAG_GO, NULL, 0);
    if (rc != 0) st_fail("spawner process: send to self: %s", ar_err_name(rc));
}

static const ar_behaviour_t pspawner_b = {"names_pspawner", pspawner_init, pspawner_handle, NULL};

/* ---- the unregistering and the re-registering threads ---------------------------------------- */
typedef struct actor {
    st_rng_t rng;
    log_t regs; /* the re-registrar's successes */
    unsigned long calls, ok;
} actor_t;

static actor_t g_unreg, g_rereg;

static void *unregister_main(void *arg)
{
    actor_t *a = arg;
    st_rng_t *r = &a->rng;
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        uint32_t k = (uint32_t)st_below(r, NNAMES);
        int rc = ar_unregister(g_node, g_names[k]);
        a->calls++;
        if (rc == 0) a->ok++;
        else ST_CHECK(rc == AR_ENOENT, "ar_unregister(\"%s\"): %s", g_names[k], ar_err_name(rc));
        /* leave the names some life */
        if (st_chance(r, 50)) st_nap_us((unsigned)st_range(r, 1, 100));
    }
    return NULL;
}

static void *reregister_main(void *arg)
{
    actor_t *a = arg;
    st_rng_t *r = &a->rng;
    char ps[AR_PID_STRLEN];
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        uint32_t k = (uint32_t)st_below(r, NNAMES);
        ar_pid_t p = ar_whereis(g_node, g_names[k]);
        if (ar_pid_is_none(p)) continue;
        uint32_t j = (uint32_t)st_below(r, NNAMES);
        int rc = ar_register(g_node, g_names[j], p);
        a->calls++;
        if (rc == 0) {
            /* only when p lost "k" to the unregistering thread in between */
            a->ok++;
            log_add(&a->regs, p, j);
        } else {
            ST_CHECK(rc == AR_EALREADY || rc == AR_EEXIST || rc == AR_ENOPROC,
                     "ar_register(\"%s\", %s) of a pid found under \"%s\": %s", g_names[j],
                     st_pid_str(p, ps), g_names[k], ar_err_name(rc));
        }
    }
    return NULL;
}

/* ---- readers ----------------------------------------------------------------------------------- */
typedef struct reader {
    st_rng_t rng;
    log_t obs;
    unsigned long lookups, found;
} reader_t;

static reader_t g_readers[READERS];

static void *reader_main(void *arg)
{
    reader_t *rd = arg;
    st_rng_t *r = &rd->rng;
    ar_pid_t last[NNAMES];
    for (int k = 0; k < NNAMES; k++) last[k] = AR_PID_NONE;
    char ps[AR_PID_STRLEN];
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        uint32_t k = (uint32_t)st_below(r, NNAMES);
        ar_pid_t p = ar_whereis(g_node, g_names[k]);
        rd->lookups++;
        if (ar_pid_is_none(p)) continue;
        rd->found++;
        ST_CHECK(ar_pid_is_local(g_node, p), "\"%s\" maps to %s, not a local pid", g_names[k],
                 st_pid_str(p, ps));
        if (st_chance(r, 25)) {
            ar_proc_info_t info;
            int rc = ar_proc_info(g_node, p, &info);
            ST_CHECK(rc == 0 || rc == AR_ENOPROC, "ar_proc_info: %s", ar_err_name(rc));
            ST_CHECK(rc != 0 || memchr(info.name, '\0', sizeof info.name) != NULL,
                     "ar_proc_info: an unterminated name");
            if (rc == AR_ENOPROC) {
                /* dead: its name went before its pid, so no lookup from now on finds it */
                ar_pid_t again = ar_whereis(g_node, g_names[k]);
                ST_CHECK(!ar_pid_eq(again, p), "\"%s\" still maps to %s after ar_proc_info "
                         "called it dead", g_names[k], st_pid_str(p, ps));
            }
        }
        if (ar_pid_eq(p, last[k])) continue;
        last[k] = p;
        log_add(&rd->obs, p, k);
    }
    return NULL;
}

/* ---- flip: ar_register against ar_unregister of one name for one process ------------------- */
static ar_pid_t g_flip_pid;
static atomic_bool g_flip_pause;
static atomic_int g_flip_parked;
static unsigned long g_flip_regs, g_flip_unregs, g_flip_checks;

/* Parks the calling flip thread while main checks. */
static void flip_pause_point(void)
{
    if (!atomic_load(&g_flip_pause)) return;
    atomic_fetch_add(&g_flip_parked, 1);
    while (atomic_load(&g_flip_pause)) st_nap_us(50);
    atomic_fetch_sub(&g_flip_parked, 1);
}

static void *flip_register_main(void *arg)
{
    (void)arg;
    char ps[AR_PID_STRLEN];
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        flip_pause_point();
        int rc = ar_register(g_node, "flip", g_flip_pid);
        if (rc == 0) g_flip_regs++;
        else ST_CHECK(rc == AR_EALREADY, "ar_register(\"flip\", %s): %s",
                      st_pid_str(g_flip_pid, ps), ar_err_name(rc));
    }
    return NULL;
}

static void *flip_unregister_main(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        flip_pause_point();
        int rc = ar_unregister(g_node, "flip");
        if (rc == 0) g_flip_unregs++;
        else ST_CHECK(rc == AR_ENOENT, "ar_unregister(\"flip\"): %s", ar_err_name(rc));
    }
    return NULL;
}

/* With both flip threads parked: the table and the process agree. */
static void flip_check(void)
{
    atomic_store(&g_flip_pause, true);
    ST_WAIT(atomic_load(&g_flip_parked) == 2 || atomic_load(&g_stop), "the flip threads to park");
    if (atomic_load(&g_flip_parked) == 2) {
        g_flip_checks++;
        char ps[AR_PID_STRLEN];
        ar_proc_info_t info;
        int rc = ar_proc_info(g_node, g_flip_pid, &info);
        if (rc != 0) st_fail("the flip process: ar_proc_info: %s", ar_err_name(rc));
        ar_pid_t w = ar_whereis(g_node, "flip");
        if (ar_pid_is_none(w)) {
            ST_CHECK(info.name[0] == '\0', "\"flip\" is not registered, yet its last owner "
                     "shows \"%.*s\" as its name", AR_NAME_MAX - 1, info.name);
            rc = ar_register(g_node, "flip", g_flip_pid);
            ST_CHECK(rc == 0, "\"flip\" is free, yet its last owner cannot take it again: %s",
                     ar_err_name(rc));
        } else {
            ST_CHECK(ar_pid_eq(w, g_flip_pid), "\"flip\" maps to a stranger %s",
                     st_pid_str(w, ps));
            ST_CHECK(strcmp(info.name, "flip") == 0, "\"flip\" maps to its process, which "
                     "shows \"%.*s\"", AR_NAME_MAX - 1, info.name);
        }
    }
    atomic_store(&g_flip_pause, false);
}

/* ---- main -------------------------------------------------------------------------------------- */
static void hang_report(void)
{
    ar_node_stats_t st;
    ar_node_stats(g_node, &st);
    fprintf(stderr, "hang: processes %zu spawned %" PRIu64 " exited %" PRIu64 "\n", st.processes,
            st.spawned, st.exited);
}

int main(int argc, char **argv)
{
    st_begin("stress_names", argc, argv);
    uint64_t t0 = st_now_ms();
    st_hang_report = hang_report;
    ST_EXPECT_RC(ar_set_allocator(st_counting_allocator()), 0, "ar_set_allocator");
    g_node = st_node_start(2);

    for (int i = 0; i < SPAWNERS; i++) {
        g_spawners[i].id = i;
        g_spawners[i].rng = st_rng_for(100 + (uint64_t)i);
        log_init(&g_spawners[i].regs, LOG_CAP);
        for (int j = 0; j < RING; j++) g_spawners[i].ring[j] = AR_PID_NONE;
    }
    for (int i = 0; i < READERS; i++) {
        g_readers[i].rng = st_rng_for(200 + (uint64_t)i);
        log_init(&g_readers[i].obs, OBS_CAP);
    }
    g_unreg.rng = st_rng_for(300);
    log_init(&g_unreg.regs, 1);
    g_rereg.rng = st_rng_for(301);
    log_init(&g_rereg.regs, LOG_CAP);
    g_pspawner.rng = st_rng_for(400);
    log_init(&g_pspawner.regs, LOG_CAP);

    ar_pid_t psp;
    ar_spawn_opts_t po = {.trap_exit = true};
    ST_EXPECT_RC(ar_spawn(g_node, &pspawner_b, &g_pspawner, &po, &psp), 0, "ar_spawn(pspawner)");
    ST_EXPECT_RC(ar_send(g_node, psp, TAG_GO, NULL, 0), 0, "ar_send(go)");

    wstart_t fw = {.reg = -1};
    ST_EXPECT_RC(ar_spawn(g_node, &worker_b, &fw, NULL, &g_flip_pid), 0, "ar_spawn(flip)");

    pthread_t ts[SPAWNERS], tr[READERS], tu, tg, tf[2];
    for (int i = 0; i < READERS; i++) st_start_thread(&tr[i], reader_main, &g_readers[i]);
    for (int i = 0; i < SPAWNERS; i++) st_start_thread(&ts[i], spawner_main, &g_spawners[i]);
    st_start_thread(&tu, unregister_main, &g_unreg);
    st_start_thread(&tg, reregister_main, &g_rereg);
    st_start_thread(&tf[0], flip_register_main, NULL);
    st_start_thread(&tf[1], flip_unregister_main, NULL);

    uint64_t churn_end = st_now_ms() + CHURN_MS;
    while (st_now_ms() < churn_end) {
        st_nap_us(FLIP_MS * 1000u);
        flip_check();
    }
    atomic_store_explicit(&g_stop, true, memory_order_relaxed);
    st_join(tf[0]);
    st_join(tf[1]);
    for (int i = 0; i < SPAWNERS; i++) st_join(ts[i]);
    for (int i = 0; i < READERS; i++) st_join(tr[i]);
    st_join(tu);
    st_join(tg);
    /* acquire: pairs with the spawner process's release; its log is complete */
    ST_WAIT(atomic_load_explicit(&g_pspawner.done, memory_order_acquire), "the spawner process");

    /* every worker ends (the spawner process stays), and the flip process */
    ST_EXPECT_RC(ar_exit(g_node, g_flip_pid, AR_REASON(AR_KILL)), 0, "ar_exit(flip)");
    ar_node_stats_t st;
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    for (;;) {
        ar_node_stats(g_node, &st);
        if (st.processes == 1) break;
        if (st_now_ms() > dl) st_fail("%zu workers never ended", st.processes - 1);
        st_nap_us(1000);
    }
    ar_pid_t fl = ar_whereis(g_node, "flip");
    ST_CHECK(ar_pid_is_none(fl), "\"flip\" outlived its process");

    /* then every name is free */
    char ps[AR_PID_STRLEN];
    for (int k = 0; k < NNAMES; k++) {
        ar_pid_t w = ar_whereis(g_node, g_names[k]);
        ST_CHECK(ar_pid_is_none(w), "\"%s\" still maps to %s (%s) after every worker ended",
                 g_names[k], st_pid_str(w, ps),
                 ar_pid_is_none(w) ? "-" : (ar_proc_info(g_node, w, &(ar_proc_info_t){0}) == 0
                                                ? "alive" : "dead"));
        int rc = ar_unregister(g_node, g_names[k]);
        ST_CHECK(rc == AR_ENOENT, "ar_unregister(\"%s\") after every worker ended: %s",
                 g_names[k], ar_err_name(rc));
    }

    /* every lookup gave a pid that registered that name */
    size_t total = g_rereg.regs.n + g_pspawner.regs.n;
    for (int i = 0; i < SPAWNERS; i++) total += g_spawners[i].regs.n;
    rec_t *all = malloc((total ? total : 1) * sizeof *all);
    if (!all) st_fail("out of memory");
    size_t n = 0;
    log_t *logs[SPAWNERS + 2];
    for (int i = 0; i < SPAWNERS; i++) logs[i] = &g_spawners[i].regs;
    logs[SPAWNERS] = &g_rereg.regs;
    logs[SPAWNERS + 1] = &g_pspawner.regs;
    unsigned long lost = 0;
    for (int i = 0; i < SPAWNERS + 2; i++) {
        memcpy(all + n, logs[i]->e, logs[i]->n * sizeof *all);
        n += logs[i]->n;
        lost += logs[i]->lost;
    }
    qsort(all, n, sizeof *all, rec_cmp);
    unsigned long observed = 0, unexplained = 0;
    for (int i = 0; i < READERS; i++) {
        for (size_t j = 0; j < g_readers[i].obs.n; j++) {
            rec_t *o = &g_readers[i].obs.e[j];
            observed++;
            if (bsearch(o, all, n, sizeof *all, rec_cmp)) continue;
            /* a registration log that overflowed cannot vouch for anything */
            if (lost) continue;
            unexplained++;
            st_violation("\"%s\" was seen mapping to %s, which never registered it",
                         g_names[o->name], st_pid_str((ar_pid_t){o->hi, o->lo}, ps));
        }
    }

    unsigned long spawns = g_pspawner.spawns, named = g_pspawner.named, lookups = 0;
    for (int i = 0; i < SPAWNERS; i++) spawns += g_spawners[i].spawns, named += g_spawners[i].named;
    for (int i = 0; i < READERS; i++) lookups += g_readers[i].lookups;
    printf("spawns %lu (%lu named, %lu from the process), unregistered %lu/%lu, re-registered "
           "%lu/%lu, lookups %lu, distinct pids seen %lu (%lu unexplained)%s\n"
           "flip: %lu registrations, %lu unregistrations, %lu checks\n",
           spawns, named, g_pspawner.spawns, g_unreg.ok, g_unreg.calls, g_rereg.ok,
           g_rereg.calls, lookups, observed, unexplained,
           lost ? " (a log overflowed: lookups unchecked)" : "", g_flip_regs, g_flip_unregs,
           g_flip_checks);
    ST_CHECK(named > 100, "only %lu registrations in %d ms", named, CHURN_MS);

    /* the names are anyone's again */
    for (int k = 0; k < NNAMES; k++) {
        wstart_t w = {.reg = -1};
        ar_spawn_opts_t o = {.name = g_names[k]};
        ar_pid_t p;
        int rc = ar_spawn(g_node, &worker_b, &w, &o, &p);
        ST_CHECK(rc == 0, "spawn with .name \"%s\" at the end: %s", g_names[k], ar_err_name(rc));
    }

    ST_EXPECT_RC(ar_node_stop(g_node, ST_WAIT_MS), 0, "ar_node_stop");
    long live = atomic_load(st_live_blocks());
    ST_CHECK(live == 0, "%ld runtime blocks left after ar_node_stop", live);
    free(all);
    for (int i = 0; i < SPAWNERS; i++) free(g_spawners[i].regs.e);
    for (int i = 0; i < READERS; i++) free(g_readers[i].obs.e);
    free(g_unreg.regs.e);
    free(g_rereg.regs.e);
    free(g_pspawner.regs.e);
    return st_finish(t0);
}
