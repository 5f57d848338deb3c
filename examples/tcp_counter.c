/* tcp_counter: a small supervised TCP service, the one README.md's tour builds.
 *
 *   root (one_for_one)
 *   +-- counters      a keyed registry: one counter process per name, reaped when idle
 *   +-- connections   simple_one_for_one: one temporary process per connection
 *   +-- acceptor      owns the listening socket; gives each new connection to a new child
 *
 * One line per request: "INCR name" answers the counter's new value; "CRASH name" crashes
 * that counter (answer "crashed"), and the next INCR of the name starts a fresh one from 0.
 * A function subscriber prints SPAWN, EXIT, RESTART and REAP events. Then main() is the
 * client, with plain POSIX sockets: it checks each answer, stops the node, exits 0 if all
 * were right. */
#include <arbor.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { INCR = 1, CRASH };

/* ---- a counter: one per name, an entry of the registry ---- */
static int counter_init(ar_proc_t *self, void *arg, void **state)
{
    long *n = ar_calloc(1, sizeof *n); /* arg: the key (const ar_registry_arg_t *) */
    if (!n) return AR_ENOMEM;
    *state = n;
    return 0;
}

static void counter_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    long *n = state;
    if (m->tag == CRASH) AR_FAIL(self, "told to crash");
    if (m->kind == AR_MSG_CALL && m->tag == INCR) {
        ++*n;
        ar_reply(ar_node(self), m->reply_to, n, sizeof *n);
    }
}

/* Every behaviour here ends the same way: its state goes (whatever the reason). */
static void free_state(ar_proc_t *self, void *state, ar_reason_t why) { ar_free(state); }

static const ar_behaviour_t counter = {"counter", counter_init, counter_handle, free_state};
static const ar_registry_config_t registry_config = {
    .behaviour = &counter, .idle_ms = 300, .name = "counters"};

/* ---- a connection: owns its socket, answers one line at a time ---- */
typedef struct conn {
    ar_socket_t sock;
    size_t len;
    char line[128];
} conn_t;

static int conn_init(ar_proc_t *self, void *arg, void **state)
{
    *state = ar_calloc(1, sizeof(conn_t));
    return *state ? 0 : AR_ENOMEM;
}

/* Answers one request (a line without its newline) into out. */
static void answer(ar_proc_t *self, char *req, char *out, size_t n)
{
    ar_registry_t *reg = ar_registry_find(ar_node(self), "counters"); /* restarted too */
    char *name = strchr(req, ' ');
    ar_buf_t reply;
    long value;
    if (name) *name++ = '\0';
    uint32_t tag = strcmp(req, "INCR") == 0 ? INCR : strcmp(req, "CRASH") == 0 ? CRASH : 0;
    if (!tag || !name || !*name) {
        snprintf(out, n, "ERR unknown command\n");
        return;
    }
    /* the call goes straight to the name's counter, started first if there is none */
    int rc = ar_registry_call(reg, (ar_key_t){name, strlen(name)}, tag, NULL, 0, &reply, 1000);
    if (rc == 0) {
        memcpy(&value, reply.data, sizeof value);
        ar_buf_free(&reply);
        snprintf(out, n, "%ld\n", value);
    } else if (tag == CRASH && rc == AR_ENOPROC) { /* it died before answering: at once */
        snprintf(out, n, "crashed\n");
    } else {
        snprintf(out, n, "ERR %s\n", ar_strerror(rc));
    }
}

static void conn_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    conn_t *c = state;
    char out[64];
    if (m->kind != AR_MSG_SOCKET) return;
    if (m->tag == AR_SOCK_CLOSED) {           /* the client hung up (or the link broke) */
        ar_stop(self, AR_REASON(AR_NORMAL));  /* the socket closes with its owner */
        return;
    }
    if (m->tag == AR_SOCK_OWNED)              /* the acceptor gave us the socket */
        c->sock = m->ref;
    for (size_t i = 0; m->tag == AR_SOCK_DATA && i < m->len; i++) { /* bytes: lines, or part */
        char ch = ((const char *)m->data)[i];
        if (ch != '\n') {
            if (ch != '\r' && c->len < sizeof c->line - 1) c->line[c->len++] = ch;
            continue;
        }
        c->line[c->len] = '\0';
        c->len = 0;
        answer(self, c->line, out, sizeof out);
        /* copied and queued, never blocking; AR_EAGAIN: a client that reads none of its
         * answers has 1 MiB of them queued, and is cut off */
        if (ar_socket_send(self, c->sock, out, strlen(out)) != 0) {
            ar_stop(self, AR_REASON(AR_NORMAL));
            return;
        }
    }
    ar_socket_active(self, c->sock, AR_ACTIVE_ONCE); /* ready: one more read */
}

static const ar_behaviour_t conn = {"connection", conn_init, conn_handle, free_state};

/* ---- the acceptor: owns the listening socket ---- */
static int acceptor_init(ar_proc_t *self, void *arg, void **state)
{
    ar_socket_t *ls = ar_calloc(1, sizeof *ls);
    if (!ls) return AR_ENOMEM;
    int rc = ar_socket_listen(self, "127.0.0.1:0", NULL, ls); /* port 0: any free one */
    if (rc == 0) rc = ar_socket_address(self, *ls, false, arg, 64); /* tell main where */
    if (rc == 0) rc = ar_socket_active(self, *ls, AR_ACTIVE_ONCE);  /* accept one */
    if (rc != 0) {
        ar_free(ls); /* a failed init: the socket closes with the process */
        return rc;
    }
    *state = ls;
    return 0;
}

/* The connection supervisor: a sibling, found through our parent, the root. */
static ar_pid_t connections(ar_proc_t *self)
{
    ar_proc_info_t me;
    ar_child_info_t kids[3];
    size_t n = 0;
    if (ar_proc_info(ar_node(self), ar_self(self), &me) != 0 ||
        ar_sup_which_children(ar_node(self), me.parent, kids, 3, &n) != 0)
        return AR_PID_NONE;
    for (size_t i = 0; i < n && i < 3; i++)
        if (strcmp(kids[i].id, "connections") == 0) return kids[i].pid;
    return AR_PID_NONE;
}

static void acceptor_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ar_socket_t *ls = state;
    ar_pid_t child;
    if (m->kind != AR_MSG_SOCKET || m->tag != AR_SOCK_ACCEPTED) return;
    /* m->ref: the new socket, ours for now; a new child of "connections" takes it over */
    if (ar_sup_start_child(ar_node(self), connections(self), NULL, NULL, &child) != 0 ||
        ar_socket_give(self, m->ref, child) != 0)
        ar_socket_close(self, m->ref);
    ar_socket_active(self, *ls, AR_ACTIVE_ONCE); /* re-arm: the next connection */
}

static const ar_behaviour_t acceptor = {"acceptor", acceptor_init, acceptor_handle, free_state};

/* ---- the supervision tree ---- */
static char listen_addr[64]; /* the acceptor writes "127.0.0.1:port" here */
static const ar_child_spec_t conn_template[] = {
    {.id = "connection", .behaviour = &conn, .restart = AR_TEMPORARY}};
static const ar_sup_spec_t conn_sup = {
    .strategy = AR_SIMPLE_ONE_FOR_ONE, .children = conn_template, .nchildren = 1};
static const ar_child_spec_t root_kids[] = {
    {.id = "counters", .behaviour = &ar_registry, .arg = (void *)&registry_config,
     .shutdown_ms = AR_SHUTDOWN_INFINITY},
    {.id = "connections", .behaviour = &ar_supervisor, .arg = (void *)&conn_sup},
    {.id = "acceptor", .behaviour = &acceptor, .arg = listen_addr},
};
static const ar_sup_spec_t root = {
    .strategy = AR_ONE_FOR_ONE, .children = root_kids, .nchildren = 3};

/* ---- events: printed on the node's events thread ---- */
static void on_event(const ar_event_t *e, void *ud)
{
    char pid[AR_PID_STRLEN];
    const char *why = e->kind == AR_EV_SPAWN ? "" : ar_exit_code_name(e->reason.code);
    ar_pid_format(e->pid, pid, sizeof pid);
    printf("  [event] %-7s %-8s %s%s%s%s%s\n", ar_event_kind_name(e->kind), pid,
           e->behaviour ? e->behaviour : "-", e->name ? " " : "", e->name ? e->name : "",
           why[0] ? " " : "", why);
}

/* ---- main: start the tree, then be its client ---- */
static int failures;

/* Sends a request line on fd and checks the answer line against want. */
static void expect(int fd, const char *req, const char *want)
{
    char got[64];
    size_t len = 0;
    send(fd, req, strlen(req), MSG_NOSIGNAL);
    while (len < sizeof got - 1 && (len == 0 || got[len - 1] != '\n') &&
           recv(fd, got + len, 1, 0) == 1)
        len++;
    got[len] = '\0';
    int ok = strcmp(got, want) == 0;
    printf("  client: %-13.*s -> %.*s (%s)\n", (int)strcspn(req, "\n"), req,
           (int)strcspn(got, "\n"), got, ok ? "right" : "WRONG");
    failures += !ok;
}

static int dial(const char *addr)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(strchr(addr, ':') + 1))};
    struct timeval two_s = {2, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &two_s, sizeof two_s); /* never hang */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) failures++;
    return fd;
}

int main(void)
{
    ar_node_config_t cfg;
    ar_node_t *node;
    ar_pid_t top;
    ar_node_config_init(&cfg); /* crash reports on, to stderr */
    cfg.schedulers = 2;
    if (ar_node_start(&cfg, &node) != 0) return 1;
    ar_events_subscribe_fn(node, AR_EV_SPAWN | AR_EV_EXIT | AR_EV_RESTART | AR_EV_REAP,
                           on_event, NULL, NULL);
    if (ar_sup_start(node, &root, NULL, &top) != 0) return 1; /* children in order */
    printf("tcp_counter: listening on %s\n", listen_addr);

    int a = dial(listen_addr), b = dial(listen_addr); /* two clients, two connections */
    expect(a, "INCR apples\n", "1\n");
    expect(a, "INCR apples\n", "2\n");
    expect(b, "INCR pears\n", "1\n");
    expect(b, "CRASH apples\n", "crashed\n");
    expect(a, "INCR apples\n", "1\n"); /* a fresh counter: the crash took the old one */
    expect(a, "INCR pears\n", "2\n");  /* untouched by the crash */
    expect(a, "DECR pears\n", "ERR unknown command\n");

    ar_registry_t *reg = ar_registry_find(node, "counters"); /* idle: both get reaped */
    for (int i = 0; i < 5000 && ar_registry_count(reg) > 0; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    expect(b, "INCR pears\n", "1\n"); /* reaped: its next use starts it again from 0 */

    close(a);
    close(b);
    int rc = ar_node_stop(node, 5000); /* the tree stops in order: acceptor first */
    printf("tcp_counter: %s\n", failures == 0 && rc == 0 ? "all answers right" : "FAILED");
    return failures == 0 && rc == 0 ? 0 : 1;
}
