/* Sockets in tests: a puppet process that owns sockets and does what the test thread asks
 * (by ar_call), recording every socket event it gets; and plain POSIX peers, so that what
 * arbor does is seen from outside by the kernel's own sockets. */
#ifndef ARBOR_SOCKET_HELPERS_H
#define ARBOR_SOCKET_HELPERS_H

#include "test_helpers.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { P_LISTEN = 100, P_CONNECT, P_ACTIVE, P_SEND, P_CLOSE, P_GIVE, P_CRASH, P_ADDRESS, P_ECHO };

typedef struct puppet_cmd {
    ar_socket_t s;
    int n;           /* P_ACTIVE: n; P_ADDRESS: peer; P_ECHO: on */
    ar_pid_t to;     /* P_GIVE */
    char addr[64];   /* P_LISTEN, P_CONNECT */
    size_t len;      /* P_SEND: bytes of `fill` */
    char fill;
} puppet_cmd_t;

typedef struct puppet_answer {
    int rc;
    ar_socket_t s;
    char addr[64];
} puppet_answer_t;

#define PUPPET_LOG 4096
typedef struct puppet_ev {
    int ev;
    ar_socket_t s, listener;
    size_t len;
    ar_exit_code_t code;
} puppet_ev_t;

/* What a puppet saw; shared with the test thread. */
typedef struct puppet_log {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    puppet_ev_t ev[PUPPET_LOG];
    size_t n;
    size_t bytes;   /* DATA bytes received in all */
    bool echo;      /* echo DATA back and re-arm once */
} puppet_log_t;

static inline void puppet_log_init(puppet_log_t *l)
{
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->cond, NULL);
}

static int puppet_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    return 0;
}

static void puppet_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    puppet_log_t *l = state;
    if (m->kind == AR_MSG_SOCKET) {
        if (l->echo && m->tag == AR_SOCK_DATA) {
            ar_socket_send(self, m->ref, m->data, m->len);
            ar_socket_active(self, m->ref, AR_ACTIVE_ONCE);
        }
        if (l->echo && m->tag == AR_SOCK_OWNED) ar_socket_active(self, m->ref, AR_ACTIVE_ONCE);
        pthread_mutex_lock(&l->lock);
        if (l->n < PUPPET_LOG)
            l->ev[l->n++] = (puppet_ev_t){(int)m->tag, m->ref, m->reply_to.ref, m->len, m->reason.code};
        if (m->tag == AR_SOCK_DATA) l->bytes += m->len;
        pthread_cond_broadcast(&l->cond);
        pthread_mutex_unlock(&l->lock);
        return;
    }
    if (m->kind != AR_MSG_CALL) return;
    const puppet_cmd_t *c = m->data;
    puppet_answer_t a = {0};
    switch (m->tag) {
    case P_LISTEN: a.rc = ar_socket_listen(self, c->addr, NULL, &a.s);
        if (a.rc == 0) ar_socket_address(self, a.s, false, a.addr, sizeof a.addr);
        break;
    case P_CONNECT: a.rc = ar_socket_connect(self, c->addr, NULL, &a.s); break;
    case P_ACTIVE: a.rc = ar_socket_active(self, c->s, c->n); break;
    case P_SEND: {
        char *b = malloc(c->len ? c->len : 1);
        memset(b, c->fill, c->len);
        a.rc = ar_socket_send(self, c->s, b, c->len);
        free(b);
        break;
    }
    case P_CLOSE: a.rc = ar_socket_close(self, c->s); break;
    case P_GIVE: a.rc = ar_socket_give(self, c->s, c->to); break;
    case P_ADDRESS: a.rc = ar_socket_address(self, c->s, c->n, a.addr, sizeof a.addr); break;
    case P_ECHO: l->echo = c->n; break;
    case P_CRASH: ar_reply(ar_node(self), m->reply_to, &a, sizeof a);
        AR_FAIL(self, "told to crash");
    }
    ar_reply(ar_node(self), m->reply_to, &a, sizeof a);
}

static const ar_behaviour_t puppet = {"puppet", puppet_init, puppet_handle, NULL};

static inline puppet_answer_t puppet_do(ar_node_t *node, ar_pid_t p, int what, puppet_cmd_t c)
{
    ar_buf_t r = {0};
    puppet_answer_t a = {.rc = -999};
    int rc = ar_call(node, p, (uint32_t)what, &c, sizeof c, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "puppet call %d: %s", what, ar_err_name(rc));
    memcpy(&a, r.data, sizeof a);
    ar_buf_free(&r);
    return a;
}

/* Waits until the puppet has seen an event ev (of socket s, or any when 0) at or after
 * *from; returns it and moves *from past it. */
static inline puppet_ev_t puppet_wait(puppet_log_t *l, size_t *from, int ev, ar_socket_t s)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += TH_WAIT_MS / 1000;
    pthread_mutex_lock(&l->lock);
    for (;;) {
        for (size_t i = *from; i < l->n; i++)
            if (l->ev[i].ev == ev && (!s || l->ev[i].s == s)) {
                puppet_ev_t e = l->ev[i];
                *from = i + 1;
                pthread_mutex_unlock(&l->lock);
                return e;
            }
        if (pthread_cond_timedwait(&l->cond, &l->lock, &until) != 0) break;
    }
    pthread_mutex_unlock(&l->lock);
    cr_assert_fail("no %s event came", ar_sock_event_name(ev));
    return (puppet_ev_t){0};
}

static inline size_t puppet_count(puppet_log_t *l, int ev)
{
    size_t k = 0;
    pthread_mutex_lock(&l->lock);
    for (size_t i = 0; i < l->n; i++) k += l->ev[i].ev == ev;
    pthread_mutex_unlock(&l->lock);
    return k;
}

/* ---- plain POSIX peers ---- */
static inline int peer_connect(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect %s: %s", addr, strerror(errno));
    return fd;
}

/* A listening POSIX socket on 127.0.0.1, any port: its "host:port" in addr. */
static inline int peer_listen(char *addr, size_t n)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fd, 64), 0);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    snprintf(addr, n, "127.0.0.1:%d", ntohs(sa.sin_port));
    return fd;
}

/* Reads exactly n bytes within the bound; false on EOF, error or time out. */
static inline bool peer_read(int fd, void *buf, size_t n)
{
    uint64_t t0 = th_now_ns();
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) < 0) return false;
        if (th_ms_since(t0) > TH_WAIT_MS) return false;
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0) return false;
        got += (size_t)r;
    }
    return true;
}

/* True once the peer sees the connection closed (EOF or reset), within the bound. */
static inline bool peer_sees_close(int fd)
{
    uint64_t t0 = th_now_ns();
    char b[4096];
    while (th_ms_since(t0) < TH_WAIT_MS) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t r = read(fd, b, sizeof b);
        if (r <= 0) return true;
    }
    return false;
}

/* Socket descriptors open in this process (the node's loop keeps others of its own: libuv
 * opens a /dev/null, its reserve for EMFILE, with the loop's first socket). */
static inline size_t socket_fds(void)
{
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        char path[300], target[64] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        if (readlink(path, target, sizeof target - 1) > 0 && strncmp(target, "socket:", 7) == 0) n++;
    }
    if (d) closedir(d);
    return n;
}

static inline size_t open_fds(void)
{
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

#endif
