/* lifecycle_watch: watching a supervision tree through its event stream.
 *
 *   root (one_for_one)
 *   +-- pool (one_for_one, at most 2 restarts in 5 s): db, cache
 *
 * A function subscriber prints every event the tree makes (SPAWN, EXIT, RESTART,
 * START_FAILED, GIVE_UP, and one of our own, USER), and the node's crash reports go to a
 * function of ours that prints them too. Then crashes are injected: db crashes (restarted),
 * a child that cannot start is added (START_FAILED), cache crashes twice (the pool gives
 * up, and the root restarts the pool). Both run on the node's events thread, so the
 * output comes in one stream, in order. Exits 0 when every expected event was seen. */
#include <arbor.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum { CRASH = 1 };

static int worker_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    return 0;
}

static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->tag == CRASH) AR_FAIL(self, "%s was told to crash", (const char *)state);
}

static const ar_behaviour_t worker = {"worker", worker_init, worker_handle, NULL};

static int broken_init(ar_proc_t *self, void *arg, void **state)
{
    return AR_ENOENT; /* say, its configuration file is missing */
}

static const ar_behaviour_t broken = {"broken", broken_init, worker_handle, NULL};

/* ---- the watcher: prints each event and counts them by kind ---- */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int seen[16]; /* by bit number of the kind */

static int bit(uint32_t kind)
{
    int b = 0;
    while (b < 15 && !(kind & (1u << b))) b++;
    return b;
}

static void watch(const ar_event_t *e, void *ud)
{
    char pid[AR_PID_STRLEN] = "-";
    if (!ar_pid_is_none(e->pid)) ar_pid_format(e->pid, pid, sizeof pid);
    printf("  event #%-3llu %-12s %-14s %-10s", (unsigned long long)e->seq,
           ar_event_kind_name(e->kind), pid, e->behaviour ? e->behaviour : "-");
    if (e->name) printf(" %s", e->name);
    if (e->kind == AR_EV_RESTART) {
        char old[AR_PID_STRLEN];
        ar_pid_format(e->old_pid, old, sizeof old);
        printf(" (was %s)", old);
    }
    if (e->kind != AR_EV_SPAWN && e->kind != AR_EV_USER)
        printf(" [%s%s%s]", ar_exit_code_name(e->reason.code), e->reason.text ? ": " : "",
               e->reason.text ? e->reason.text : "");
    printf("\n");
    fflush(stdout);
    pthread_mutex_lock(&lock);
    seen[bit(e->kind)]++;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

static void crash_report(const char *line, void *ud)
{
    printf("  [crash report] %s\n", line);
    fflush(stdout);
}

/* Waits (two seconds at most) until n events of kind were seen. */
static int await(uint32_t kind, int n)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 2;
    pthread_mutex_lock(&lock);
    int rc = 0;
    while (seen[bit(kind)] < n && rc == 0) rc = pthread_cond_timedwait(&changed, &lock, &until);
    int ok = seen[bit(kind)] >= n;
    pthread_mutex_unlock(&lock);
    return ok;
}

static int failures;
static void check(int ok, const char *what)
{
    printf("%s: %s\n", what, ok ? "ok" : "FAILED");
    if (!ok) failures++;
}

static ar_pid_t child_pid(ar_node_t *node, ar_pid_t sup, const char *id)
{
    ar_child_info_t kids[8];
    size_t n = 0;
    if (ar_sup_which_children(node, sup, kids, 8, &n) != 0) return AR_PID_NONE;
    for (size_t i = 0; i < n && i < 8; i++)
        if (strcmp(kids[i].id, id) == 0) return kids[i].pid;
    return AR_PID_NONE;
}

int main(void)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.crash_log = crash_report; /* crash reports are on by default, to stderr: ours here */
    ar_node_t *node;
    if (ar_node_start(&cfg, &node) != 0) return 1;
    ar_ref_t sub;
    if (ar_events_subscribe_fn(node, AR_EV_ALL, watch, NULL, &sub) != 0) return 1;

    static const ar_child_spec_t pool_kids[] = {
        {.id = "db", .behaviour = &worker, .arg = "db"},
        {.id = "cache", .behaviour = &worker, .arg = "cache"},
    };
    static const ar_sup_spec_t pool = {.strategy = AR_ONE_FOR_ONE, .intensity = 2,
                                       .period_ms = 5000, .children = pool_kids, .nchildren = 2};
    static const ar_child_spec_t root_kids[] = {
        {.id = "pool", .behaviour = &ar_supervisor, .arg = (void *)&pool}};
    static const ar_sup_spec_t root = {.strategy = AR_ONE_FOR_ONE, .children = root_kids,
                                       .nchildren = 1};

    printf("arbor %s: watching a supervision tree\n\nstart the tree\n", ar_version());
    fflush(stdout);
    ar_pid_t top;
    check(ar_sup_start(node, &root, NULL, &top) == 0 && await(AR_EV_SPAWN, 4),
          "root, pool, db and cache spawned");

    printf("\ndb crashes\n");
    fflush(stdout);
    ar_pid_t pool_sup = child_pid(node, top, "pool");
    ar_send(node, child_pid(node, pool_sup, "db"), CRASH, NULL, 0);
    check(await(AR_EV_EXIT, 1) && await(AR_EV_RESTART, 1), "db exited and was restarted");

    printf("\na child that cannot start is added\n");
    fflush(stdout);
    ar_child_spec_t bad = {.id = "mailer", .behaviour = &broken};
    check(ar_sup_start_child(node, pool_sup, &bad, NULL, NULL) == AR_ENOENT &&
              await(AR_EV_START_FAILED, 2),
          "START_FAILED, from the runtime and from the pool");

    printf("\ncache crashes twice: the pool reaches its intensity\n");
    fflush(stdout);
    ar_send(node, child_pid(node, pool_sup, "cache"), CRASH, NULL, 0);
    check(await(AR_EV_RESTART, 2), "cache restarted once");
    ar_send(node, child_pid(node, pool_sup, "cache"), CRASH, NULL, 0);
    check(await(AR_EV_GIVE_UP, 1) && await(AR_EV_RESTART, 3),
          "the pool gave up, and the root restarted it");

    printf("\nan event of our own\n");
    fflush(stdout);
    ar_event_t mine = {.kind = AR_EV_USER, .name = "all crashes injected"};
    check(ar_events_emit(node, &mine) == 0 && await(AR_EV_USER, 1), "USER event delivered");

    printf("\nstop the node (the tree goes down in order; shutdowns are no crashes)\n");
    fflush(stdout);
    check(ar_node_stop(node, 5000) == 0, "node stopped");
    printf("\nlifecycle_watch: %s\n", failures ? "FAILED" : "all as expected");
    return failures ? 1 : 0;
}
