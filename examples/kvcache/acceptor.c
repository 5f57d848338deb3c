/* The acceptor: owns the listening socket and takes one connection at a time
 * (AR_ACTIVE_ONCE, re-armed after each AR_SOCK_ACCEPTED, so a flood of clients waits in
 * the kernel's backlog, not in this mailbox). For each it starts a connection process
 * under the "conns" supervisor and gives it the socket. If its listening socket fails it
 * crashes (CRASH ACCEPTOR does that on purpose), and the root supervisor starts it again
 * on the same address: clients already connected are not its concern and carry on. */
#include "kvcache.h"

#include <stdio.h>
#include <string.h>

typedef struct acceptor {
    kv_app_t *app;
    ar_socket_t ls;
    ar_pid_t conns; /* the connections' supervisor, as last found */
} acceptor_t;

/* The "conns" child of the root supervisor (found by the root's name: pids change when
 * the supervisor restarts them). */
static ar_pid_t find_conns(ar_node_t *node)
{
    ar_child_info_t kids[8];
    size_t n = 0;
    ar_pid_t root = ar_whereis(node, KV_ROOT_NAME);
    if (ar_pid_is_none(root) || ar_sup_which_children(node, root, kids, 8, &n) != 0)
        return AR_PID_NONE;
    for (size_t i = 0; i < n && i < 8; i++)
        if (strcmp(kids[i].id, KV_CONNS_ID) == 0) return kids[i].pid;
    return AR_PID_NONE;
}

/* Starts a connection process and gives it s; on any failure closes s. */
static void hand_over(ar_proc_t *self, acceptor_t *a, ar_socket_t s)
{
    ar_node_t *node = ar_node(self);
    ar_pid_t child = AR_PID_NONE;
    int rc = AR_ENOPROC;
    for (int i = 0; i < 2 && rc == AR_ENOPROC; i++) { /* once more if conns restarted */
        if (i > 0 || ar_pid_is_none(a->conns)) a->conns = find_conns(node);
        if (!ar_pid_is_none(a->conns))
            rc = ar_sup_start_child(node, a->conns, NULL, a->app, &child);
    }
    if (rc == 0) {
        rc = ar_socket_give(self, s, child);
        if (rc == 0) {
            atomic_fetch_add_explicit(&a->app->connections, 1, memory_order_relaxed);
            return;
        }
        /* the child died before it got its socket (0 also when it is gone already) */
        int trc = ar_sup_terminate_child(node, a->conns, NULL, child);
        if (trc != 0 && trc != AR_ENOPROC)
            fprintf(stderr, "kvcache: terminate_child: %s\n", ar_strerror(trc));
    }
    fprintf(stderr, "kvcache: connection refused: %s\n", ar_strerror(rc));
    rc = ar_socket_close(self, s);
    if (rc != 0) AR_FAIL(self, "ar_socket_close: %s", ar_strerror(rc));
}

static int acceptor_init(ar_proc_t *self, void *arg, void **state)
{
    kv_app_t *app = arg;
    acceptor_t *a = ar_calloc(1, sizeof *a);
    if (!a) return AR_ENOMEM;
    a->app = app;
    char addr[64];
    /* restarted, the port is free again: the runtime shut the old listener down as the
     * old acceptor ended, before its supervisor heard of it */
    int rc = ar_socket_listen(self, app->listen, NULL, &a->ls);
    if (rc == 0) /* its name, for CRASH ACCEPTOR */
        rc = ar_register(ar_node(self), KV_ACCEPTOR_NAME, ar_self(self));
    if (rc == 0) rc = ar_socket_address(self, a->ls, false, addr, sizeof addr);
    if (rc == 0) rc = ar_socket_active(self, a->ls, AR_ACTIVE_ONCE);
    if (rc != 0) { /* the socket, if any, closes as this process ends */
        fprintf(stderr, "kvcache: cannot listen on %s: %s\n", app->listen, ar_strerror(rc));
        ar_free(a);
        return rc;
    }
    if (!app->listening) { /* a restart listens on the port chosen the first time */
        snprintf(app->listen, sizeof app->listen, "%s", addr);
        app->listening = true;
    }
    printf("kvcache: listening on %s\n", addr);
    fflush(stdout);
    *state = a;
    return 0;
}

static void acceptor_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    acceptor_t *a = state;
    if (m->kind != AR_MSG_SOCKET) return;
    if (m->tag == AR_SOCK_ACCEPTED) {
        hand_over(self, a, m->ref);
        int rc = ar_socket_active(self, a->ls, AR_ACTIVE_ONCE);
        if (rc != 0) AR_FAIL(self, "re-arming the listening socket: %s", ar_strerror(rc));
    } else if (m->tag == AR_SOCK_CLOSED && m->ref == a->ls) {
        AR_FAIL(self, "listening socket closed: %s", m->reason.text ? m->reason.text : "?");
    }
}

static void acceptor_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    ar_free(state); /* the listening socket closes with its owner */
}

const ar_behaviour_t kv_acceptor = {
    .name = "kv.acceptor",
    .init = acceptor_init,
    .handle = acceptor_handle,
    .terminate = acceptor_terminate,
};
