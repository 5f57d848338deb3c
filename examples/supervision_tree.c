/* supervision_tree: a small service built as a supervision tree.
 *
 *   root (one_for_one)
 *   +-- pool (one_for_all): worker-1, worker-2, worker-3   permanent workers
 *   +-- sessions (simple_one_for_one): session, session    temporary, started on demand
 *
 * A crash is injected into worker-2: the pool restarts all three workers (one_for_all),
 * the sessions are untouched. Then a session crashes: temporary, it is not restarted.
 * Finally the whole tree stops in order with the node. Exits 0 when all went as told. */
#include <arbor.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum { PING = 1, CRASH = 2 };

static int worker_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    return 0;
}

static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->tag == CRASH) AR_FAIL(self, "%s was told to crash", (const char *)state);
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, "pong", 4);
}

static const ar_behaviour_t worker = {"worker", worker_init, worker_handle, NULL};

static int failures;
static void check(int ok, const char *what)
{
    printf("  %-52s %s\n", what, ok ? "ok" : "FAILED");
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

/* Waits (two seconds at most) until the child called id runs under a pid other than old. */
static ar_pid_t await_new_pid(ar_node_t *node, ar_pid_t sup, const char *id, ar_pid_t old)
{
    for (int i = 0; i < 2000; i++) {
        ar_pid_t p = child_pid(node, sup, id);
        if (!ar_pid_is_none(p) && !ar_pid_eq(p, old)) return p;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return AR_PID_NONE;
}

int main(void)
{
    ar_node_t *node;
    if (ar_node_start(NULL, &node) != 0) return 1;

    static const ar_child_spec_t pool_kids[] = {
        {.id = "worker-1", .behaviour = &worker, .arg = "worker-1"},
        {.id = "worker-2", .behaviour = &worker, .arg = "worker-2"},
        {.id = "worker-3", .behaviour = &worker, .arg = "worker-3"},
    };
    static const ar_sup_spec_t pool = {
        .strategy = AR_ONE_FOR_ALL, .intensity = 3, .period_ms = 5000,
        .children = pool_kids, .nchildren = 3};
    static const ar_child_spec_t session_template[] = {
        {.id = "session", .behaviour = &worker, .restart = AR_TEMPORARY}};
    static const ar_sup_spec_t sessions = {
        .strategy = AR_SIMPLE_ONE_FOR_ONE, .children = session_template, .nchildren = 1};
    static const ar_child_spec_t root_kids[] = {
        {.id = "pool", .behaviour = &ar_supervisor, .arg = (void *)&pool},
        {.id = "sessions", .behaviour = &ar_supervisor, .arg = (void *)&sessions},
    };
    static const ar_sup_spec_t root = {
        .strategy = AR_ONE_FOR_ONE, .children = root_kids, .nchildren = 2};

    ar_pid_t top;
    int rc = ar_sup_start(node, &root, NULL, &top);
    printf("arbor %s: a supervision tree\n\nstart the tree\n", ar_version());
    check(rc == 0, "root, pool (3 workers) and sessions started");
    ar_pid_t pool_sup = child_pid(node, top, "pool");
    ar_pid_t sess_sup = child_pid(node, top, "sessions");
    ar_pid_t s1, s2;
    check(ar_sup_start_child(node, sess_sup, NULL, "session-a", &s1) == 0 &&
              ar_sup_start_child(node, sess_sup, NULL, "session-b", &s2) == 0,
          "two sessions started on demand");
    ar_child_counts_t c;
    check(ar_sup_count_children(node, top, &c) == 0 && c.supervisors == 2 && c.active == 2,
          "root counts 2 active supervisors");

    printf("\nworker-2 crashes (the pool is one_for_all)\n");
    ar_pid_t w1 = child_pid(node, pool_sup, "worker-1"), w2 = child_pid(node, pool_sup, "worker-2"),
             w3 = child_pid(node, pool_sup, "worker-3");
    ar_send(node, w2, CRASH, NULL, 0);
    ar_pid_t n2 = await_new_pid(node, pool_sup, "worker-2", w2);
    check(!ar_pid_is_none(n2), "worker-2 restarted");
    check(!ar_pid_eq(child_pid(node, pool_sup, "worker-1"), w1) &&
              !ar_pid_eq(child_pid(node, pool_sup, "worker-3"), w3),
          "worker-1 and worker-3 restarted with it");
    ar_buf_t reply;
    rc = ar_call(node, n2, PING, NULL, 0, &reply, 1000);
    check(rc == 0 && reply.len == 4, "the new worker-2 answers");
    if (rc == 0) ar_buf_free(&reply);
    check(ar_call(node, w2, PING, NULL, 0, &reply, 1000) == AR_ENOPROC, "the old one is gone");
    size_t n = 0;
    ar_child_info_t kids[4];
    check(ar_sup_which_children(node, sess_sup, kids, 4, &n) == 0 && n == 2,
          "the sessions were not touched");

    printf("\nsession-a crashes (temporary: not restarted)\n");
    ar_send(node, s1, CRASH, NULL, 0);
    for (int i = 0; i < 2000 && ar_sup_which_children(node, sess_sup, kids, 4, &n) == 0 && n != 1; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    check(n == 1 && ar_pid_eq(kids[0].pid, s2), "one session left: session-b");

    printf("\nstop the node: the tree goes down in order\n");
    rc = ar_node_stop(node, 5000);
    check(rc == 0, "node stopped");
    printf("\nsupervision_tree: %s\n", failures ? "FAILED" : "all as expected");
    return failures ? 1 : 0;
}
