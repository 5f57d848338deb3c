/* two_nodes: two arbor nodes in two OS processes, talking over TCP.
 *
 *   two_nodes           the whole story, alone: it forks itself as the service node, then
 *                       as a client node finds the ping service by name, calls it, gets a
 *                       deferred answer, sends it notes, monitors it, kills the service's
 *                       process (kill -9) and sees the DOWN with AR_NOCONNECTION.
 *   two_nodes --serve [--name NAME] [--listen HOST:PORT] [--tick MS]
 *                       only the service node: prints "listening on HOST:PORT" and serves
 *                       until SIGINT or SIGTERM. The cookie comes from ARBOR_COOKIE (never
 *                       from the command line, where `ps` would show it).
 *
 * The ping service, registered as "ping" on its node:
 *   CALL  PING          answers "pong"
 *   CALL  ECHO          answers with the request's bytes
 *   CALL  DELAY "MS"    answers "pong after MS ms", MS milliseconds later (a deferred
 *                       reply: it keeps m->reply_to and answers from a timer message)
 *   CAST  NOTE          a note whose first 8 bytes are its number (0, 1, 2...): counted
 *   CALL  STATS         answers a stats_t: notes, their bytes, how many came out of order,
 *                       and how many DELAY calls are waiting
 * Payloads are raw bytes both ends of which are this program (a real protocol would use
 * msgpack, as arbor's wire does).
 *
 * The distribution rules in brief: a named node with a cookie listens and connects; a pid
 * works the same wherever it lives (send, call, link, monitor, exit); the connection is
 * made on first use; when a node is lost its links fire and its monitors get a DOWN with
 * AR_NOCONNECTION, and pending calls to it return AR_ENOCONN. */
#include <arbor.h>

#include <errno.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { PING = 1, ECHO, DELAY, NOTE, STATS, DELAY_DUE };

typedef struct stats {
    uint64_t notes, bytes, out_of_order, delays_waiting;
} stats_t;

/* ---- the ping service ----------------------------------------------------------------- */
typedef struct ping_state {
    stats_t st;
    uint64_t next_note;
} ping_state_t;

typedef struct delayed {
    ar_reply_to_t to;
    int ms;
} delayed_t;

static int ping_init(ar_proc_t *self, void *arg, void **state)
{
    ping_state_t *s = calloc(1, sizeof *s);
    if (!s) return AR_ENOMEM;
    *state = s;
    return 0;
}

static void ping_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ping_state_t *s = state;
    ar_node_t *node = ar_node(self);
    switch (m->tag) {
    case PING:
        ar_reply(node, m->reply_to, "pong", 4);
        break;
    case ECHO:
        ar_reply(node, m->reply_to, m->data, m->len);
        break;
    case DELAY: { /* keep reply_to; a timer message brings it back */
        char digits[16] = "";
        memcpy(digits, m->data, m->len < sizeof digits - 1 ? m->len : sizeof digits - 1);
        delayed_t d = {m->reply_to, atoi(digits)};
        if (ar_send_after(node, d.ms, ar_self(self), DELAY_DUE, &d, sizeof d, NULL) == 0)
            s->st.delays_waiting++;
        break;
    }
    case DELAY_DUE: {
        delayed_t d;
        memcpy(&d, m->data, sizeof d);
        char text[48];
        int n = snprintf(text, sizeof text, "pong after %d ms", d.ms);
        ar_reply(node, d.to, text, (size_t)n);
        s->st.delays_waiting--;
        break;
    }
    case NOTE: {
        uint64_t k = UINT64_MAX;
        if (m->len >= sizeof k) memcpy(&k, m->data, sizeof k);
        if (k != s->next_note) s->st.out_of_order++;
        s->next_note = k + 1;
        s->st.notes++;
        s->st.bytes += m->len;
        break;
    }
    case STATS:
        ar_reply(node, m->reply_to, &s->st, sizeof s->st);
        break;
    default:
        break;
    }
}

static void ping_terminate(ar_proc_t *self, void *state, ar_reason_t why) { free(state); }

static const ar_behaviour_t ping_service = {"ping", ping_init, ping_handle, ping_terminate};

/* Runs the service node until a stop is asked for; its address goes to out_fd as the line
 * "listening on HOST:PORT". Returns the exit status. */
static int serve(const char *name, const char *listen, unsigned tick_ms, const char *cookie,
                 int out_fd)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.name = name;
    cfg.listen = listen;
    cfg.cookie = cookie;
    cfg.tick_ms = tick_ms;
    cfg.handle_signals = true;
    ar_node_t *node;
    int rc = ar_node_start(&cfg, &node);
    if (rc != 0) {
        fprintf(stderr, "two_nodes: service node: %s\n", ar_strerror(rc));
        return 1;
    }
    ar_spawn_opts_t o = {.name = "ping"};
    char addr[64], line[96];
    if ((rc = ar_spawn(node, &ping_service, NULL, &o, NULL)) != 0 ||
        (rc = ar_node_address(node, addr, sizeof addr)) != 0) {
        fprintf(stderr, "two_nodes: service: %s\n", ar_strerror(rc));
        ar_node_stop(node, 1000);
        return 1;
    }
    int n = snprintf(line, sizeof line, "listening on %s\n", addr);
    if (write(out_fd, line, (size_t)n) != n) {
        ar_node_stop(node, 1000);
        return 1;
    }
    ar_node_wait(node);
    return ar_node_stop(node, 5000) == 0 ? 0 : 1;
}

/* ---- the client's watcher: monitors the service and reports its DOWN ------------------- */
typedef struct watch {
    ar_pid_t target;
    ar_ref_t ref;
    sem_t down;
    ar_exit_code_t why;
    int monitor_rc;
} watch_t;

static int watcher_init(ar_proc_t *self, void *arg, void **state)
{
    watch_t *w = arg;
    w->monitor_rc = ar_monitor(self, w->target, &w->ref);
    *state = w;
    return w->monitor_rc;
}

static void watcher_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    watch_t *w = state;
    if (m->kind == AR_MSG_DOWN && m->ref == w->ref) {
        w->why = m->reason.code;
        sem_post(&w->down);
    }
}

static const ar_behaviour_t watcher = {"watcher", watcher_init, watcher_handle, NULL};

static void on_node_event(const ar_event_t *e, void *ud)
{
    printf("[client] event: %s %s\n", ar_event_kind_name(e->kind), e->name ? e->name : "?");
    fflush(stdout);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Reads the service's "listening on HOST:PORT" line from fd into addr (10 s at most). */
static int read_address(int fd, char *addr, size_t n)
{
    char line[128];
    size_t len = 0;
    uint64_t deadline = now_ms() + 10000;
    while (len < sizeof line - 1 && now_ms() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t r = read(fd, line + len, sizeof line - 1 - len);
        if (r <= 0) return -1;
        len += (size_t)r;
        line[len] = '\0';
        char *nl = strchr(line, '\n');
        if (nl) {
            *nl = '\0';
            size_t alen = strlen(line + 13);
            if (strncmp(line, "listening on ", 13) != 0 || alen >= n) return -1;
            memcpy(addr, line + 13, alen + 1);
            return 0;
        }
    }
    return -1;
}

static int fail(const char *what, int rc)
{
    printf("[client] %s: %s (%s)\n", what, ar_strerror(rc), ar_err_name(rc));
    return 1;
}

/* The client's half of the story; child is the service's process. */
static int client(pid_t child, const char *service_addr, const char *cookie)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.name = "client";
    cfg.cookie = cookie; /* it does not listen: it only connects */
    cfg.tick_ms = 100;   /* a silent peer is down after 4 ticks */
    ar_node_t *node;
    int rc = ar_node_start(&cfg, &node);
    if (rc != 0) return fail("node start", rc);
    ar_events_subscribe_fn(node, AR_EV_NODE_UP | AR_EV_NODE_DOWN, on_node_event, NULL, NULL);

    int status = 1;
    char text[AR_PID_STRLEN];
    ar_buf_t reply = {0};
    watch_t w = {0};
    sem_init(&w.down, 0, 0);

    /* 1. find the service by name on the other node (this connects) */
    ar_pid_t ping;
    if ((rc = ar_whereis_remote(node, service_addr, "ping", &ping, 5000)) != 0) {
        fail("whereis_remote", rc);
        goto out;
    }
    ar_pid_format(ping, text, sizeof text);
    printf("[client] found \"ping\" at %s on %s\n", text, service_addr);

    /* 2. call it */
    uint64_t t0 = now_ms();
    if ((rc = ar_call(node, ping, PING, "ping", 4, &reply, 5000)) != 0) {
        fail("call", rc);
        goto out;
    }
    printf("[client] ping -> %.*s (%llu ms)\n", (int)reply.len, (const char *)reply.data,
           (unsigned long long)(now_ms() - t0));
    ar_buf_free(&reply);

    /* 3. a deferred answer */
    if ((rc = ar_call(node, ping, DELAY, "50", 2, &reply, 5000)) != 0) {
        fail("delayed call", rc);
        goto out;
    }
    printf("[client] delay 50 -> %.*s\n", (int)reply.len, (const char *)reply.data);
    ar_buf_free(&reply);

    /* 4. one-way notes, then the service's count of them (per-pair order holds) */
    for (uint64_t k = 0; k < 3; k++) ar_send(node, ping, NOTE, &k, sizeof k);
    if ((rc = ar_call(node, ping, STATS, NULL, 0, &reply, 5000)) != 0 ||
        reply.len != sizeof(stats_t)) {
        fail("stats", rc);
        goto out;
    }
    stats_t st;
    memcpy(&st, reply.data, sizeof st);
    ar_buf_free(&reply);
    printf("[client] the service counted %llu notes, %llu out of order\n",
           (unsigned long long)st.notes, (unsigned long long)st.out_of_order);
    if (st.notes != 3 || st.out_of_order != 0) goto out;

    /* 5. monitor it from a process of ours */
    w.target = ping;
    if ((rc = ar_spawn(node, &watcher, &w, NULL, NULL)) != 0) {
        fail("watcher", rc);
        goto out;
    }
    printf("[client] watching %s\n", text);

    /* 6. the service's node dies: kill -9, no goodbye */
    fflush(stdout);
    kill(child, SIGKILL);
    t0 = now_ms();
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    while (sem_timedwait(&w.down, &dl) != 0) {
        if (errno != EINTR) {
            printf("[client] no DOWN within 10 s\n");
            goto out;
        }
    }
    printf("[client] DOWN from %s: %s, %llu ms after the kill\n", text,
           ar_exit_code_name(w.why), (unsigned long long)(now_ms() - t0));
    if (w.why != AR_NOCONNECTION) goto out;

    /* 7. and a call to it now fails at once */
    t0 = now_ms();
    rc = ar_call(node, ping, PING, "ping", 4, &reply, 5000);
    printf("[client] a call to it now: %s (%llu ms)\n", ar_err_name(rc),
           (unsigned long long)(now_ms() - t0));
    if (rc == 0) ar_buf_free(&reply);
    if (rc != AR_ENOCONN && rc != AR_ENOPROC) goto out;
    status = 0;
out:
    ar_node_stop(node, 5000);
    sem_destroy(&w.down);
    return status;
}

static void random_cookie(char *out, size_t n)
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) { /* no entropy: a weak cookie */
        uint64_t x = now_ms() ^ ((uint64_t)getpid() << 32);
        for (size_t i = 0; i < sizeof b; i++) b[i] = (unsigned char)((x *= 6364136223846793005u) >> 56);
    }
    for (size_t i = 0; i < sizeof b && 2 * i + 2 < n; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

int main(int argc, char **argv)
{
    const char *name = "pingsrv", *listen_at = "127.0.0.1:0";
    unsigned tick_ms = 0;
    bool serve_only = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--serve") == 0) serve_only = true;
        else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) name = argv[++i];
        else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) listen_at = argv[++i];
        else if (strcmp(argv[i], "--tick") == 0 && i + 1 < argc) tick_ms = (unsigned)atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: two_nodes [--serve [--name NAME] [--listen HOST:PORT] "
                            "[--tick MS]]  (cookie: ARBOR_COOKIE)\n");
            return 2;
        }
    }
    if (serve_only) {
        const char *cookie = getenv("ARBOR_COOKIE");
        if (!cookie || !*cookie) {
            fprintf(stderr, "two_nodes: --serve needs the cookie in ARBOR_COOKIE\n");
            return 2;
        }
        setvbuf(stdout, NULL, _IONBF, 0);
        return serve(name, listen_at, tick_ms, cookie, STDOUT_FILENO);
    }

    /* The story. Both nodes share a fresh random cookie. Nothing of arbor runs before the
     * fork: after it, the child starts the service node and the parent the client node. */
    char cookie[40] = "";
    const char *env = getenv("ARBOR_COOKIE");
    if (env && *env) snprintf(cookie, sizeof cookie, "%s", env);
    else random_cookie(cookie, sizeof cookie);
    int fds[2];
    if (pipe(fds) != 0) return 1;
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        close(fds[0]);
        printf("[service] node %s starting (pid %d)\n", name, (int)getpid());
        fflush(stdout);
        _exit(serve(name, listen_at, tick_ms ? tick_ms : 100, cookie, fds[1]));
    }
    close(fds[1]);
    char addr[64];
    if (read_address(fds[0], addr, sizeof addr) != 0) {
        printf("[client] the service did not start\n");
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return 1;
    }
    close(fds[0]);
    printf("[client] the service listens on %s\n", addr);
    int status = client(child, addr, cookie);
    kill(child, SIGKILL); /* already dead unless the story failed early */
    int ws;
    waitpid(child, &ws, 0);
    if (WIFSIGNALED(ws)) printf("[client] the service's process died of signal %d\n", WTERMSIG(ws));
    printf(status == 0 ? "two_nodes: all as expected\n" : "two_nodes: FAILED\n");
    return status;
}
