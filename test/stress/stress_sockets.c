/* stress_sockets: process-owned sockets under concurrency and failure, on 2 schedulers,
 * seen from plain POSIX peers. Four phases, each on a node of its own:
 *
 *  1. hand-over vs death: an acceptor hands every connection to a fresh worker while the
 *     worker is killed (by the acceptor before or after the give, by a foreign thread at
 *     the same time, by its own ar_stop) or hands it on again to a third process a
 *     foreign thread is killing. Every give returns 0 or AR_ENOPROC (then the giver serves
 *     the socket); afterwards each peer's one byte is echoed by a live owner or the peer
 *     sees the connection close, exactly as many of each as the gives said (a socket
 *     nobody owns would do neither); once every owner is dead every peer sees EOF and no
 *     socket descriptor is left.
 *  2. hand-overs mid-stream, arming racing reads: peers stream; each connection goes
 *     along a chain of owners, each arming it with a seeded mix of AR_ACTIVE_ONCE, counts
 *     and 0 as reads arrive and handing it on while it is armed (half the time with one
 *     delivery allowed just before). Each owner's first event is its AR_SOCK_OWNED; none
 *     gets more DATA than it allowed; what the owners got, end to end, is the peer's
 *     stream exactly.
 *  3. sends vs resets, crashes and kills: owners send a patterned stream (direct writes
 *     and the queue, a 32 KiB send_limit) while the peer reads and then resets
 *     (SO_LINGER 0), or the owner crashes or is killed, or both. The peer sees the pattern
 *     without a hole; a peer that reads to the end gets exactly what the owner's sends
 *     accepted; an owner whose peer reset learns it (AR_SOCK_CLOSED with AR_ERROR, then
 *     AR_ENOTCONN from a send, or AR_ENOTCONN first).
 *  4. ar_node_stop while data flows both ways, with idle listeners, connects that cannot
 *     complete (a full backlog) and send queues full (peers that do not read): it returns
 *     0, every peer sees its connection close, every descriptor and every runtime block is
 *     freed.
 *
 * Usage: stress_sockets [seed]
 */
#include "stress_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>

enum { T_DIE = 1, T_REARM, T_GO };

/* libuv (1.44, built without TSan) closes descriptors with syscall(SYS_close), which
 * ThreadSanitizer does not intercept: it never learns that a socket's descriptor was
 * closed on the I/O thread, and when this program's own socket() or opendir() reuses the
 * number it reports a race between the two "uses" of one descriptor. libuv's call binds
 * to this definition instead, which closes through close() (intercepted), so TSan sees
 * the close where it happens. Every other system call goes through as it was. */
typedef long syscall_fn(long, ...);
static _Atomic(syscall_fn *) real_syscall; /* resolved on first use: before main too */
__attribute__((visibility("default"))) long syscall(long nr, ...)
{
    va_list ap;
    va_start(ap, nr);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long); /* as glibc's own syscall() */
    va_end(ap);
    if (nr == SYS_close) return close((int)a[0]);
    syscall_fn *real = atomic_load_explicit(&real_syscall, memory_order_relaxed);
    if (!real) {
        real = (syscall_fn *)dlsym(RTLD_NEXT, "syscall");
        atomic_store_explicit(&real_syscall, real, memory_order_relaxed);
    }
    return real(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* ---- POSIX peers and descriptors ------------------------------------------------------ */
/* Descriptors open in this process: all of them, or only sockets. (The node's loop keeps
 * descriptors of its own while it runs, one of them opened with its first socket: libuv's
 * reserve for EMFILE; so sockets are what is counted while a node runs.) */
static size_t count_fds(bool sockets_only)
{
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) st_fail("opendir /proc/self/fd");
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d)) continue;
        if (sockets_only) {
            char path[300], target[64] = "";
            snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
            if (readlink(path, target, sizeof target - 1) <= 0 || strncmp(target, "socket:", 7) != 0)
                continue;
        }
        n++;
    }
    closedir(d);
    return n;
}
static size_t open_fds(void) { return count_fds(false); }
static size_t socket_fds(void) { return count_fds(true); }

/* Prints what each descriptor is, for a failure's report. */
static void list_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue;
        char path[300], target[256] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n > 0) target[n] = 0;
        fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
    }
    if (d) closedir(d);
}

static struct sockaddr_in parse_addr(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    if (!colon) st_fail("bad address %s", addr);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) st_fail("bad address %s", addr);
    return sa;
}

/* rcvbuf: the peer's receive buffer (0: the system's), small to make senders wait */
static int peer_connect_buf(const char *addr, int rcvbuf)
{
    struct sockaddr_in sa = parse_addr(addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) st_fail("socket: %s", strerror(errno));
    if (rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) st_fail("connect %s: %s", addr, strerror(errno));
    return fd;
}
static int peer_connect(const char *addr) { return peer_connect_buf(addr, 0); }

static int peer_listen(char *addr, size_t n, int backlog)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, backlog) != 0)
        st_fail("peer listen: %s", strerror(errno));
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    snprintf(addr, n, "127.0.0.1:%d", ntohs(sa.sin_port));
    return fd;
}

static void set_nonblock(int fd, bool on)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* Closes with a reset (SO_LINGER 0). */
static void peer_reset(int fd)
{
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

/* The byte at offset off of stream id: a seeded pattern, so a hole or a repeat shows. */
static inline uint8_t pat(uint64_t id, uint64_t off)
{
    return (uint8_t)(st_mix64(st_seed_value ^ (id << 40) ^ (off >> 3)) >> ((off & 7) * 8));
}
static void pat_fill(uint64_t id, uint64_t off, uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) buf[i] = pat(id, off + i);
}
/* The offset of the first byte of buf that is not the pattern, or n. */
static size_t pat_check(uint64_t id, uint64_t off, const uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (buf[i] != pat(id, off + i)) return i;
    return n;
}

static ar_node_t *node_start(void)
{
    return st_node_start(2);
}

/* Descriptors before any node: libuv opens one pipe per OS process with its first loop
 * (its signal lock) and keeps it; a node started and stopped first opens it. */
static size_t fds0;

/* Stops the node: every runtime block and descriptor is back (the peers' closed first). */
static void node_stop(ar_node_t *node, const char *phase)
{
    int rc = ar_node_stop(node, ST_WAIT_MS);
    if (rc != 0) st_fail("%s: ar_node_stop: %s", phase, ar_err_name(rc));
    long live = atomic_load(st_live_blocks());
    if (live != 0) st_violation("%s: %ld runtime blocks left after the stop", phase, live);
    if (fds0 && open_fds() != fds0) {
        list_fds();
        st_violation("%s: %zu descriptors after the stop, %zu before", phase, open_fds(), fds0);
    }
}

static size_t processes(ar_node_t *node)
{
    ar_node_stats_t s;
    ar_node_stats(node, &s);
    return s.processes;
}

/* ---- a killer thread: kills what it is handed, at once (a foreign thread's ar_exit) -- */
#define KQ_CAP 4096
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ar_pid_t q[KQ_CAP];
    unsigned head, tail;
    bool quit;
    ar_node_t *node;
    pthread_t thread;
} kq = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void kill_later(ar_pid_t p)
{
    pthread_mutex_lock(&kq.lock);
    if (kq.tail - kq.head == KQ_CAP) st_fail("killer queue full");
    kq.q[kq.tail++ % KQ_CAP] = p;
    pthread_cond_signal(&kq.cond);
    pthread_mutex_unlock(&kq.lock);
}

static void *killer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&kq.lock);
    for (;;) {
        while (kq.head == kq.tail && !kq.quit) pthread_cond_wait(&kq.cond, &kq.lock);
        if (kq.head == kq.tail) break;
        ar_pid_t p = kq.q[kq.head++ % KQ_CAP];
        pthread_mutex_unlock(&kq.lock);
        int rc = ar_exit(kq.node, p, AR_REASON(AR_KILL));
        if (rc != 0) st_violation("killer: ar_exit: %s", ar_err_name(rc));
        pthread_mutex_lock(&kq.lock);
    }
    pthread_mutex_unlock(&kq.lock);
    return NULL;
}

static void killer_start(ar_node_t *node)
{
    kq.node = node;
    kq.quit = false;
    kq.head = kq.tail = 0;
    st_start_thread(&kq.thread, killer_main, NULL);
}

static void killer_stop(void)
{
    pthread_mutex_lock(&kq.lock);
    kq.quit = true;
    pthread_cond_signal(&kq.cond);
    pthread_mutex_unlock(&kq.lock);
    st_join(kq.thread);
}

/* =======================================================================================
 * Phase 1: hand-over vs death
 * ======================================================================================= */
#define H_CONNS (ST_TSAN ? 240 : 800)
enum { H_GIVE, H_KILL_GIVE, H_GIVE_KILL, H_THREAD_KILL, H_SELF_STOP, H_CHAIN, H_MODES };
enum { O_NONE, O_ECHO, O_EOF };

typedef struct hworker {
    int mode;
    bool owned_seen;
    ar_socket_t s;
} hworker_t;

static struct {
    ar_node_t *node;
    char addr[64];
    hworker_t w[H_CONNS];        /* by accept order; each worker's own (and its spawner's
                                    before the spawn) */
    _Atomic int accepted, handled, decided, expect_echo, expect_eof, survivors;
    pthread_mutex_t lock;        /* the pids main kills at the end */
    ar_pid_t alive[H_CONNS + 1];
    int nalive;
} h = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void h_decide(int outcome)
{
    atomic_fetch_add(outcome == O_ECHO ? &h.expect_echo : &h.expect_eof, 1);
    atomic_fetch_add(&h.decided, 1);
}

static void h_survives(ar_pid_t p)
{
    pthread_mutex_lock(&h.lock);
    h.alive[h.nalive++] = p;
    pthread_mutex_unlock(&h.lock);
    atomic_fetch_add(&h.survivors, 1);
}

/* Echoes one byte at a time: every DATA back, then armed once more. */
static void h_echo(ar_proc_t *self, const ar_msg_t *m)
{
    int rc = ar_socket_send(self, m->ref, m->data, m->len);
    if (rc != 0) st_violation("phase 1: echo send: %s", ar_err_name(rc));
    rc = ar_socket_active(self, m->ref, AR_ACTIVE_ONCE);
    if (rc != 0 && rc != AR_ENOTCONN) st_violation("phase 1: re-arm: %s", ar_err_name(rc));
}

static int hw_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    return 0;
}

static const ar_behaviour_t hworker_b;

static void hw_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    hworker_t *w = state;
    if (m->kind == AR_MSG_CAST && m->tag == T_DIE) {
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    if (m->kind != AR_MSG_SOCKET) return;
    if (!w->owned_seen && m->tag != AR_SOCK_OWNED)
        st_violation("phase 1: a worker got %s before OWNED", ar_sock_event_name((int)m->tag));
    switch (m->tag) {
    case AR_SOCK_OWNED: {
        w->owned_seen = true;
        w->s = m->ref;
        if (w->mode != H_CHAIN) {
            int rc = ar_socket_active(self, m->ref, AR_ACTIVE_ONCE);
            if (rc != 0) st_violation("phase 1: arm on OWNED: %s", ar_err_name(rc));
            return;
        }
        /* hands it on to a process a foreign thread is killing right now */
        static hworker_t chained[H_CONNS];
        hworker_t *w2 = &chained[w - h.w];
        *w2 = (hworker_t){.mode = H_GIVE};
        ar_pid_t p;
        int rc = ar_spawn(ar_node(self), &hworker_b, w2, NULL, &p);
        if (rc != 0) st_fail("phase 1: spawn: %s", ar_err_name(rc));
        kill_later(p);
        rc = ar_socket_give(self, m->ref, p);
        if (rc == 0) {
            h_decide(O_EOF);
        } else if (rc == AR_ENOPROC) {
            h_decide(O_ECHO);
            if ((rc = ar_socket_active(self, m->ref, AR_ACTIVE_ONCE)) != 0)
                st_violation("phase 1: arm after a refused give: %s", ar_err_name(rc));
        } else {
            st_violation("phase 1: chained give: %s", ar_err_name(rc));
        }
        return;
    }
    case AR_SOCK_DATA: h_echo(self, m); return;
    case AR_SOCK_CLOSED: ar_socket_close(self, m->ref); return;
    default: return;
    }
}
static const ar_behaviour_t hworker_b = {"hworker", hw_init, hw_handle, NULL};

static int hacc_init(ar_proc_t *self, void *arg, void **state)
{
    ar_socket_t ls;
    int rc = ar_socket_listen(self, "127.0.0.1:0", NULL, &ls);
    if (rc) return rc;
    if ((rc = ar_socket_address(self, ls, false, h.addr, sizeof h.addr)) != 0) return rc;
    st_rng_t *rng = malloc(sizeof *rng);
    *rng = st_rng_for(1);
    *state = rng;
    return ar_socket_active(self, ls, H_CONNS);
}

static void hacc_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    st_rng_t *rng = state;
    if (m->kind != AR_MSG_SOCKET) return;
    if (m->tag == AR_SOCK_DATA) { /* a socket whose give was refused: the acceptor serves */
        h_echo(self, m);
        return;
    }
    if (m->tag != AR_SOCK_ACCEPTED) return;
    int i = atomic_fetch_add(&h.accepted, 1);
    if (i >= H_CONNS) st_fail("phase 1: more connections than peers");
    ar_node_t *node = ar_node(self);
    hworker_t *w = &h.w[i];
    w->mode = (int)st_below(rng, H_MODES);
    ar_pid_t p;
    int rc = ar_spawn(node, &hworker_b, w, NULL, &p);
    if (rc != 0) st_fail("phase 1: spawn: %s", ar_err_name(rc));
    bool dies = w->mode != H_GIVE && w->mode != H_CHAIN;
    switch (w->mode) {
    case H_KILL_GIVE: ar_exit(node, p, AR_REASON(AR_KILL)); break;
    case H_THREAD_KILL: kill_later(p); break;
    case H_SELF_STOP: ar_send(node, p, T_DIE, NULL, 0); break;
    default: break;
    }
    rc = ar_socket_give(self, m->ref, p);
    if (w->mode == H_GIVE_KILL) ar_exit(node, p, AR_REASON(AR_KILL));
    if (rc == AR_ENOPROC && dies) {
        h_decide(O_ECHO);
        if ((rc = ar_socket_active(self, m->ref, AR_ACTIVE_ONCE)) != 0)
            st_violation("phase 1: arm after a refused give: %s", ar_err_name(rc));
    } else if (rc != 0) {
        st_violation("phase 1: give (mode %d): %s", w->mode, ar_err_name(rc));
    } else if (dies) {
        h_decide(O_EOF);
    } else {
        if (w->mode == H_GIVE) h_decide(O_ECHO);
        h_survives(p); /* a chain's worker decides itself */
    }
    atomic_fetch_add(&h.handled, 1);
}
static void hacc_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    free(state);
}
static const ar_behaviour_t hacc_b = {"hacceptor", hacc_init, hacc_handle, hacc_terminate};

/* Each fd: one byte out; its echo (true) or the connection's end (false). */
static void h_probe(int *fds, int n, int *echoes, int *eofs)
{
    *echoes = *eofs = 0;
    bool *done = calloc((size_t)n, sizeof *done);
    for (int i = 0; i < n; i++)
        if (send(fds[i], "p", 1, MSG_NOSIGNAL) != 1) { /* already reset */
            done[i] = true;
            ++*eofs;
        }
    struct pollfd *p = calloc((size_t)n, sizeof *p);
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    for (int left = n - *eofs; left > 0;) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if (!done[i]) p[k++] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        if (st_now_ms() > dl)
            st_fail("phase 1: %d connections neither echoed nor closed: a socket nobody owns", left);
        if (poll(p, (nfds_t)k, 100) <= 0) continue;
        for (int j = 0; j < k; j++) {
            if (!p[j].revents) continue;
            int i = 0;
            while (fds[i] != p[j].fd) i++;
            char c;
            ssize_t r = recv(fds[i], &c, 1, 0);
            if (r == 1 && c != 'p') st_violation("phase 1: echoed %d", c);
            if (r == 1) ++*echoes;
            else ++*eofs;
            done[i] = true;
            left--;
        }
    }
    free(p);
    free(done);
}

static void phase_handover(void)
{
    ar_node_t *node = h.node = node_start();
    killer_start(node);
    size_t socks0 = socket_fds();
    ar_pid_t acc;
    ST_EXPECT_RC(ar_spawn(node, &hacc_b, NULL, NULL, &acc), 0, "phase 1: spawn acceptor");
    int fds[H_CONNS];
    for (int i = 0; i < H_CONNS; i++) fds[i] = peer_connect(h.addr);
    ST_WAIT(atomic_load(&h.handled) == H_CONNS && atomic_load(&h.decided) == H_CONNS, "phase 1: every hand-over decided (%d of %d)",
            atomic_load(&h.decided), H_CONNS);
    /* every process that had to die is dead: the acceptor and the survivors are left */
    ST_WAIT(processes(node) == 1 + (size_t)atomic_load(&h.survivors),
            "phase 1: %zu processes, %d expected", processes(node), 1 + atomic_load(&h.survivors));
    int echoes, eofs;
    h_probe(fds, H_CONNS, &echoes, &eofs);
    int want_eof = atomic_load(&h.expect_eof), want_echo = atomic_load(&h.expect_echo);
    printf("phase 1: %d connections: %d served by a live owner, %d closed with their owner\n",
           H_CONNS, echoes, eofs);
    if (echoes != want_echo || eofs != want_eof)
        st_violation("phase 1: %d echoes and %d closes, the gives said %d and %d", echoes,
                     eofs, want_echo, want_eof);
    /* every owner ends: every connection closes, and the listener */
    ar_exit(node, acc, AR_REASON(AR_KILL));
    pthread_mutex_lock(&h.lock);
    for (int i = 0; i < h.nalive; i++) ar_exit(node, h.alive[i], AR_REASON(AR_KILL));
    pthread_mutex_unlock(&h.lock);
    ST_WAIT(processes(node) == 0, "phase 1: every process to end");
    for (int i = 0; i < H_CONNS; i++) {
        set_nonblock(fds[i], false);
        struct timeval tv = {ST_WAIT_MS / 1000, 0};
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char c;
        ssize_t r = recv(fds[i], &c, 1, 0);
        if (r > 0 || (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)))
            st_fail("phase 1: connection %d still open after every owner ended", i);
        close(fds[i]);
    }
    ST_WAIT(socket_fds() == socks0, "phase 1: sockets back to %zu (now %zu)", socks0, socket_fds());
    killer_stop();
    node_stop(node, "phase 1");
}

/* =======================================================================================
 * Phase 2: hand-overs mid-stream; arming racing reads
 * ======================================================================================= */
#define S_CONNS (ST_TSAN ? 16 : 32)
#define S_CHAIN 8                                   /* owners one connection goes through */
#define S_TOTAL (ST_TSAN ? 256 * 1024 : 1024 * 1024) /* each peer's stream, after its index */
#define S_LEN (4 + S_TOTAL)
enum { K_NONE, K_ONCE, K_COUNT, K_ZERO };
enum { T_REPORT = 10 };

/* One owner of one connection, the k-th of its chain. Its own, but for buf and len, which
 * main reads once every byte has arrived, after a call to the owner. */
typedef struct sowner {
    int j, k;
    bool owned_seen, gave;
    st_rng_t rng;
    ar_socket_t s;
    size_t threshold; /* hands the socket on once it got this many bytes (but the last) */
    _Atomic uint64_t pid_hi, pid_lo; /* set by init, for main's calls */
    int last;         /* the last arming: K_* */
    long grants, datas, late;
    uint8_t *buf;
    size_t len;
} sowner_t;

typedef struct sreport {
    long grants, datas, late;
} sreport_t;

static struct {
    char addr[64];
    sowner_t o[S_CONNS][S_CHAIN];
    _Atomic int accepted;
    _Atomic size_t got;
    int fds[S_CONNS];
} sm;

static const ar_behaviour_t sowner_b;

static void s_arm(ar_proc_t *self, sowner_t *o, int kind)
{
    int rc = 0;
    switch (kind) {
    case K_ONCE: rc = ar_socket_active(self, o->s, AR_ACTIVE_ONCE); o->grants += 1; break;
    case K_COUNT: {
        int n = (int)st_range(&o->rng, 1, 5);
        rc = ar_socket_active(self, o->s, n);
        o->grants += n;
        break;
    }
    case K_ZERO:
        rc = ar_socket_active(self, o->s, 0);
        ar_send(ar_node(self), ar_self(self), T_REARM, NULL, 0); /* armed again later */
        break;
    default: return;
    }
    if (rc != 0) st_violation("phase 2: arm %d: %s", kind, ar_err_name(rc));
    o->last = kind;
}

/* What to arm after a DATA, given the last arming: never nothing after a once (no
 * PASSIVE would come), never anything while a re-arm is on its way. */
static int s_next(sowner_t *o)
{
    unsigned r = (unsigned)st_below(&o->rng, 100);
    switch (o->last) {
    case K_ONCE: return r < 40 ? K_ONCE : r < 80 ? K_COUNT : K_ZERO;
    case K_COUNT: return r < 50 ? K_NONE : r < 70 ? K_ONCE : r < 90 ? K_COUNT : K_ZERO;
    default: return K_NONE;
    }
}

static int so_init(ar_proc_t *self, void *arg, void **state)
{
    sowner_t *o = arg;
    ar_pid_t me = ar_self(self);
    atomic_store(&o->pid_hi, me.hi);
    atomic_store(&o->pid_lo, me.lo);
    *state = o;
    return 0;
}

/* Hands the socket, armed, to the next owner of the chain while the peer streams. */
static void s_hand_on(ar_proc_t *self, sowner_t *o)
{
    sowner_t *next = &sm.o[o->j][o->k + 1];
    ar_pid_t p;
    int rc;
    /* half the time with one delivery just allowed: its DATA and PASSIVE race the give */
    if (st_chance(&o->rng, 50) && (rc = ar_socket_active(self, o->s, 1)) == 0) o->grants++;
    rc = ar_spawn(ar_node(self), &sowner_b, next, NULL, &p);
    if (rc != 0) st_fail("phase 2: spawn: %s", ar_err_name(rc));
    if ((rc = ar_socket_give(self, o->s, p)) != 0) st_violation("phase 2: give: %s", ar_err_name(rc));
    o->gave = true;
    if ((rc = ar_socket_active(self, o->s, 1)) != AR_EINVAL)
        st_violation("phase 2: the giver could still arm it: %s", ar_err_name(rc));
}

static void so_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sowner_t *o = state;
    if (m->kind == AR_MSG_CALL && m->tag == T_REPORT) {
        sreport_t r = {o->grants, o->datas, o->late};
        ar_reply(ar_node(self), m->reply_to, &r, sizeof r);
        return;
    }
    if (m->kind == AR_MSG_CAST && m->tag == T_REARM) {
        if (!o->gave) s_arm(self, o, st_chance(&o->rng, 50) ? K_ONCE : K_COUNT);
        return;
    }
    if (m->kind != AR_MSG_SOCKET) return;
    if (!o->owned_seen && m->tag != AR_SOCK_OWNED)
        st_violation("phase 2: owner %d of connection %d got %s before OWNED", o->k, o->j,
                     ar_sock_event_name((int)m->tag));
    bool last = o->k == S_CHAIN - 1;
    switch (m->tag) {
    case AR_SOCK_OWNED:
        o->owned_seen = true;
        o->s = m->ref;
        s_arm(self, o, st_chance(&o->rng, 50) ? K_ONCE : K_COUNT);
        break;
    case AR_SOCK_DATA:
        o->datas++;
        if (o->len + m->len > S_LEN) st_fail("phase 2: more bytes than the peer sent");
        memcpy(o->buf + o->len, m->data, m->len);
        o->len += m->len;
        if (o->gave) o->late++;
        atomic_fetch_add_explicit(&sm.got, m->len, memory_order_release);
        if (o->gave || (!last && o->len >= o->threshold)) break; /* handed on below */
        s_arm(self, o, s_next(o));
        break;
    case AR_SOCK_PASSIVE:
        if (!o->gave && o->last != K_ZERO) s_arm(self, o, K_COUNT);
        break;
    case AR_SOCK_CLOSED:
        if (!o->gave) ar_socket_close(self, o->s);
        break;
    default: break;
    }
    if (!last && !o->gave && o->owned_seen && o->len >= o->threshold) s_hand_on(self, o);
}
static const ar_behaviour_t sowner_b = {"sowner", so_init, so_handle, NULL};

static int sacc_init(ar_proc_t *self, void *arg, void **state)
{
    ar_socket_t ls;
    int rc = ar_socket_listen(self, "127.0.0.1:0", NULL, &ls);
    if (rc) return rc;
    if ((rc = ar_socket_address(self, ls, false, sm.addr, sizeof sm.addr)) != 0) return rc;
    return ar_socket_active(self, ls, S_CONNS);
}
static void sacc_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind != AR_MSG_SOCKET || m->tag != AR_SOCK_ACCEPTED) return;
    int j = atomic_fetch_add(&sm.accepted, 1);
    if (j >= S_CONNS) st_fail("phase 2: more connections than peers");
    ar_pid_t p;
    int rc = ar_spawn(ar_node(self), &sowner_b, &sm.o[j][0], NULL, &p);
    if (rc != 0) st_fail("phase 2: spawn: %s", ar_err_name(rc));
    if ((rc = ar_socket_give(self, m->ref, p)) != 0) st_violation("phase 2: give: %s", ar_err_name(rc));
}
static const ar_behaviour_t sacc_b = {"sacceptor", sacc_init, sacc_handle, NULL};

/* The peers: each writes its index, then its stream, in seeded small pieces, all at once
 * across the connections. */
static void *s_peer_main(void *arg)
{
    (void)arg;
    st_rng_t rng = st_rng_for(2000);
    size_t off[S_CONNS] = {0};
    uint8_t buf[4096];
    for (int left = S_CONNS; left > 0;) {
        struct pollfd p[S_CONNS];
        int k = 0;
        for (int i = 0; i < S_CONNS; i++)
            if (off[i] < S_LEN) p[k++] = (struct pollfd){.fd = sm.fds[i], .events = POLLOUT};
        if (poll(p, (nfds_t)k, 100) <= 0) continue;
        for (int q = 0; q < k; q++) {
            if (!(p[q].revents & POLLOUT)) continue;
            int i = 0;
            while (sm.fds[i] != p[q].fd) i++;
            size_t n = (size_t)st_range(&rng, 1, sizeof buf);
            if (n > S_LEN - off[i]) n = S_LEN - off[i];
            for (size_t x = 0; x < n; x++) {
                size_t at = off[i] + x;
                buf[x] = at < 4 ? (uint8_t)((uint32_t)i >> (at * 8)) : pat(100 + (uint64_t)i, at - 4);
            }
            ssize_t w = send(sm.fds[i], buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN) st_fail("phase 2: peer send: %s", strerror(errno));
            if (w > 0 && (off[i] += (size_t)w) == S_LEN) left--;
        }
    }
    return NULL;
}

static sreport_t s_report(ar_node_t *node, ar_pid_t p)
{
    ar_buf_t r = {0};
    sreport_t rep = {0};
    int rc = ar_call(node, p, T_REPORT, NULL, 0, &r, ST_WAIT_MS);
    if (rc != 0 || r.len != sizeof rep) st_fail("phase 2: report: %s", ar_err_name(rc));
    memcpy(&rep, r.data, sizeof rep);
    ar_buf_free(&r);
    return rep;
}

static ar_pid_t s_pid(sowner_t *o)
{
    return (ar_pid_t){atomic_load(&o->pid_hi), atomic_load(&o->pid_lo)};
}

static void phase_stream(void)
{
    size_t socks0 = socket_fds();
    ar_node_t *node = node_start();
    for (int j = 0; j < S_CONNS; j++)
        for (int k = 0; k < S_CHAIN; k++) {
            sowner_t *o = &sm.o[j][k];
            *o = (sowner_t){.j = j, .k = k, .rng = st_rng_for(3000 + (uint64_t)(j * S_CHAIN + k)),
                            .buf = malloc(S_LEN)};
            o->threshold = (size_t)st_below(&o->rng, 2 * S_TOTAL / S_CHAIN);
            if (st_chance(&o->rng, 10)) o->threshold = 0; /* on OWNED, before any data */
        }
    ar_pid_t acc;
    ST_EXPECT_RC(ar_spawn(node, &sacc_b, NULL, NULL, &acc), 0, "phase 2: spawn acceptor");
    for (int i = 0; i < S_CONNS; i++) sm.fds[i] = peer_connect(sm.addr);
    pthread_t peer;
    st_start_thread(&peer, s_peer_main, NULL);
    ST_WAIT(atomic_load_explicit(&sm.got, memory_order_acquire) == (size_t)S_CONNS * S_LEN,
            "phase 2: every byte delivered (%zu of %zu)", atomic_load(&sm.got), (size_t)S_CONNS * S_LEN);
    st_join(peer);
    /* the owners' own counts, through a call to each (which also orders their writes
     * before main's reads of their buffers); their bytes, end to end, are the stream */
    long late = 0, datas = 0, gives = 0;
    bool seen[S_CONNS] = {false};
    uint8_t *all = malloc(S_LEN);
    for (int j = 0; j < S_CONNS; j++) {
        size_t n = 0;
        for (int k = 0; k < S_CHAIN && !ar_pid_is_none(s_pid(&sm.o[j][k])); k++) {
            sowner_t *o = &sm.o[j][k];
            sreport_t r = s_report(node, s_pid(o));
            if (r.datas > r.grants)
                st_violation("phase 2: owner %d of connection %d got %ld DATA, allowed %ld", k, j,
                             r.datas, r.grants);
            late += r.late;
            datas += r.datas;
            gives += k > 0;
            if (n + o->len > S_LEN) st_fail("phase 2: connection %d: too many bytes", j);
            memcpy(all + n, o->buf, o->len);
            n += o->len;
        }
        uint32_t i = (uint32_t)all[0] | (uint32_t)all[1] << 8 | (uint32_t)all[2] << 16 | (uint32_t)all[3] << 24;
        if (n != S_LEN || i >= S_CONNS || seen[i]) {
            st_violation("phase 2: connection %d: %zu bytes, index %u", j, n, i);
            continue;
        }
        seen[i] = true;
        size_t bad = pat_check(100 + (uint64_t)i, 0, all + 4, S_TOTAL);
        if (bad != S_TOTAL) st_violation("phase 2: stream %u differs at byte %zu", i, bad);
    }
    free(all);
    printf("phase 2: %d streams, %ld hand-overs mid-way: %ld DATA, %ld of them to a giver after its give\n",
           S_CONNS, gives, datas, late);
    ar_exit(node, acc, AR_REASON(AR_KILL));
    for (int j = 0; j < S_CONNS; j++)
        for (int k = 0; k < S_CHAIN; k++)
            if (!ar_pid_is_none(s_pid(&sm.o[j][k]))) ar_exit(node, s_pid(&sm.o[j][k]), AR_REASON(AR_KILL));
    ST_WAIT(processes(node) == 0, "phase 2: every process to end");
    for (int i = 0; i < S_CONNS; i++) close(sm.fds[i]);
    ST_WAIT(socket_fds() == socks0, "phase 2: sockets back to %zu (now %zu)", socks0, socket_fds());
    node_stop(node, "phase 2");
    for (int j = 0; j < S_CONNS; j++)
        for (int k = 0; k < S_CHAIN; k++) free(sm.o[j][k].buf);
}

/* =======================================================================================
 * Phase 3: sends vs resets, crashes and kills
 * ======================================================================================= */
#define B_CONNS (ST_TSAN ? 24 : 64)
#define B_LIMIT (ST_TSAN ? 1024 * 1024 : 4 * 1024 * 1024) /* what a sender sends in all */
#define B_SEND_LIMIT (32 * 1024)
#define B_CHUNK (256 * 1024)
/* CLEAN: sends it all and closes; the peer reads it all. RESET: the peer resets part way.
 * CRASH: the sender crashes part way; the peer reads to the end. KILL: a foreign thread
 * kills it part way; the same. CRASH_RESET: both at once. ARMED_RESET: the sender reads
 * too (the peer writes as well) when the peer resets. */
enum { M_CLEAN, M_RESET, M_CRASH, M_KILL, M_CRASH_RESET, M_ARMED_RESET, M_MODES };
static const char *const m_name[M_MODES] = {"clean", "reset", "crash", "kill", "crash+reset", "armed+reset"};

typedef struct bconn {
    int mode;
    size_t peer_stop; /* RESET modes: the peer resets after this many bytes; KILL: kills */
    size_t crash_at;  /* CRASH modes: the sender crashes once its sends took this many */
    _Atomic size_t accepted;  /* bytes the sender's sends accepted (final once it is dead) */
    _Atomic int closed_code;  /* the CLOSED the sender got (-1: none) */
    _Atomic bool ended;       /* the sender is done with it: closed it, or crashes now */
    _Atomic bool all_sent, enotconn; /* how it ended: it sent everything, or a send said so */
    _Atomic int eagains;
    _Atomic uint64_t pid_hi, pid_lo;
    /* the peer thread's */
    int fd;
    size_t got;
    bool done, killed;
} bconn_t;

typedef struct bsender {
    ar_socket_t s;
    bconn_t *c;
    uint8_t hdr[4];
    size_t hlen, off;
    bool waiting, finished, reading;
    st_rng_t rng;
    uint8_t *chunk;
} bsender_t;

static struct {
    ar_node_t *node;
    char addr[64];
    bconn_t c[B_CONNS];
    _Atomic int accepted;
    _Atomic int senders_done; /* peers' loop is over */
} bm;

static void b_finish(ar_proc_t *self, bsender_t *b)
{
    int rc = ar_socket_close(self, b->s);
    if (rc != 0) st_violation("phase 3: close: %s", ar_err_name(rc));
    b->finished = true;
    atomic_store(&b->c->ended, true);
}

static void b_go(ar_proc_t *self, bsender_t *b)
{
    bconn_t *c = b->c;
    for (int k = (int)st_range(&b->rng, 1, 6); k > 0 && !b->finished; k--) {
        unsigned r = (unsigned)st_below(&b->rng, 100);
        size_t n = r < 70 ? st_range(&b->rng, 1, 16384) : r < 90 ? st_range(&b->rng, 16384, 131072)
                                                                   : st_range(&b->rng, 131072, B_CHUNK);
        if (n > B_LIMIT - b->off) n = B_LIMIT - b->off;
        if (n == 0) {
            atomic_store(&c->all_sent, true);
            b_finish(self, b);
            return;
        }
        pat_fill(200 + (uint64_t)(c - bm.c), b->off, b->chunk, n);
        int rc = ar_socket_send(self, b->s, b->chunk, n);
        if (rc == AR_EAGAIN) {
            atomic_fetch_add(&c->eagains, 1);
            b->waiting = true;
            return;
        }
        if (rc == AR_ENOTCONN) {
            atomic_store(&c->enotconn, true);
            b_finish(self, b);
            return;
        }
        if (rc != 0) {
            st_violation("phase 3: send: %s", ar_err_name(rc));
            b_finish(self, b);
            return;
        }
        b->off += n;
        atomic_store(&c->accepted, b->off);
        if ((c->mode == M_CRASH || c->mode == M_CRASH_RESET) && b->off >= c->crash_at) {
            atomic_store(&c->ended, true);
            AR_FAIL(self, "a sender crashes with its socket busy");
        }
    }
    if (!b->finished) ar_send(ar_node(self), ar_self(self), T_GO, NULL, 0);
}

static int bs_init(ar_proc_t *self, void *arg, void **state)
{
    bsender_t *b = calloc(1, sizeof *b);
    b->chunk = malloc(B_CHUNK);
    b->rng = st_rng_for(5000 + (uint64_t)(uintptr_t)arg);
    *state = b;
    return 0;
}
static void bs_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    bsender_t *b = state;
    free(b->chunk);
    free(b);
}

static void bs_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    bsender_t *b = state;
    if (m->kind == AR_MSG_CAST && m->tag == T_GO) {
        b_go(self, b);
        return;
    }
    if (m->kind != AR_MSG_SOCKET) return;
    switch (m->tag) {
    case AR_SOCK_OWNED:
        b->s = m->ref;
        if (ar_socket_active(self, b->s, AR_ACTIVE_ONCE) != 0) st_violation("phase 3: arm");
        return;
    case AR_SOCK_DATA:
        if (b->hlen < 4) { /* the peer's index first */
            size_t n = m->len < 4 - b->hlen ? m->len : 4 - b->hlen;
            memcpy(b->hdr + b->hlen, m->data, n);
            b->hlen += n;
            if (b->hlen < 4) {
                ar_socket_active(self, b->s, AR_ACTIVE_ONCE);
                return;
            }
            uint32_t i = (uint32_t)b->hdr[0] | (uint32_t)b->hdr[1] << 8 | (uint32_t)b->hdr[2] << 16 |
                         (uint32_t)b->hdr[3] << 24;
            if (i >= B_CONNS) st_fail("phase 3: bad index %u", i);
            b->c = &bm.c[i];
            ar_pid_t me = ar_self(self);
            atomic_store(&b->c->pid_hi, me.hi);
            atomic_store(&b->c->pid_lo, me.lo); /* seq_cst: the peer thread kills by it */
            if (b->c->mode == M_ARMED_RESET) {
                b->reading = true;
                ar_socket_active(self, b->s, 8);
            }
            b_go(self, b);
        }
        return;
    case AR_SOCK_PASSIVE:
        if (b->reading && !b->finished) ar_socket_active(self, b->s, 8);
        return;
    case AR_SOCK_WRITABLE:
        if (b->waiting && !b->finished) {
            b->waiting = false;
            b_go(self, b);
        }
        return;
    case AR_SOCK_CLOSED: {
        if (b->finished) return; /* sent before its close: as a DATA could be */
        if (b->c) atomic_store(&b->c->closed_code, (int)m->reason.code);
        int rc = ar_socket_send(self, b->s, "x", 1);
        if (rc != AR_ENOTCONN) st_violation("phase 3: a send after CLOSED returned %s", ar_err_name(rc));
        if (b->c) b_finish(self, b);
        else ar_socket_close(self, b->s);
        return;
    }
    default: return;
    }
}
static const ar_behaviour_t bsender_b = {"bsender", bs_init, bs_handle, bs_terminate};

static int bacc_init(ar_proc_t *self, void *arg, void **state)
{
    ar_socket_t ls;
    ar_socket_opts_t o = {.send_limit = B_SEND_LIMIT};
    int rc = ar_socket_listen(self, "127.0.0.1:0", &o, &ls);
    if (rc) return rc;
    if ((rc = ar_socket_address(self, ls, false, bm.addr, sizeof bm.addr)) != 0) return rc;
    return ar_socket_active(self, ls, B_CONNS);
}
static void bacc_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind != AR_MSG_SOCKET || m->tag != AR_SOCK_ACCEPTED) return;
    int j = atomic_fetch_add(&bm.accepted, 1);
    ar_pid_t p;
    int rc = ar_spawn(ar_node(self), &bsender_b, (void *)(uintptr_t)j, NULL, &p);
    if (rc != 0) st_fail("phase 3: spawn: %s", ar_err_name(rc));
    if ((rc = ar_socket_give(self, m->ref, p)) != 0) st_violation("phase 3: give: %s", ar_err_name(rc));
}
static const ar_behaviour_t bacc_b = {"bacceptor", bacc_init, bacc_handle, NULL};

/* The peers: read everything, checking the pattern; reset, or have the sender killed,
 * where their mode says; the ARMED_RESET ones write too. */
static void *b_peer_main(void *arg)
{
    (void)arg;
    static uint8_t buf[65536];
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    for (int left = B_CONNS; left > 0;) {
        if (st_now_ms() > dl) st_fail("phase 3: %d peers still waiting for their end", left);
        struct pollfd p[B_CONNS];
        int k = 0;
        for (int i = 0; i < B_CONNS; i++)
            if (!bm.c[i].done) p[k++] = (struct pollfd){.fd = bm.c[i].fd, .events = POLLIN};
        if (poll(p, (nfds_t)k, 100) <= 0) continue;
        for (int q = 0; q < k; q++) {
            if (!p[q].revents) continue;
            int i = 0;
            while (bm.c[i].fd != p[q].fd) i++;
            bconn_t *c = &bm.c[i];
            if (c->mode == M_ARMED_RESET) send(c->fd, buf, 1024, MSG_DONTWAIT | MSG_NOSIGNAL);
            ssize_t r = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r < 0 && errno == EAGAIN) continue;
            if (r > 0) {
                size_t bad = pat_check(200 + (uint64_t)i, c->got, buf, (size_t)r);
                if (bad != (size_t)r) {
                    st_violation("phase 3: %s stream %d: wrong byte at %zu", m_name[c->mode], i, c->got + bad);
                    c->done = true;
                    left--;
                    continue;
                }
                c->got += (size_t)r;
                bool resets = c->mode == M_RESET || c->mode == M_CRASH_RESET || c->mode == M_ARMED_RESET;
                if (resets && c->got >= c->peer_stop) {
                    peer_reset(c->fd);
                    c->fd = -1;
                    c->done = true;
                    left--;
                } else if (c->mode == M_KILL && !c->killed && c->got >= c->peer_stop) {
                    c->killed = true;
                    kill_later((ar_pid_t){atomic_load(&c->pid_hi), atomic_load(&c->pid_lo)});
                }
                continue;
            }
            /* the end: EOF (or a reset) */
            int e = r < 0 ? errno : 0;
            c->done = true;
            left--;
            size_t acc = atomic_load(&c->accepted);
            switch (c->mode) {
            case M_CLEAN:
                if (e || c->got != B_LIMIT)
                    st_violation("phase 3: clean stream %d ended (%s) after %zu of %d bytes", i,
                                 e ? strerror(e) : "EOF", c->got, B_LIMIT);
                break;
            case M_CRASH:
            case M_KILL:
                if (e || c->got != acc)
                    st_violation("phase 3: %s stream %d ended (%s) after %zu bytes; the sends took %zu",
                                 m_name[c->mode], i, e ? strerror(e) : "EOF", c->got, acc);
                break;
            case M_RESET: /* (ARMED_RESET: a close with the peer's bytes unread resets, and
                             the kernel drops what it had not sent yet) */
                if (c->got != acc)
                    st_violation("phase 3: %s stream %d ended (%s) before the reset, after %zu "
                                 "bytes; the sends took %zu", m_name[c->mode], i,
                                 e ? strerror(e) : "EOF", c->got, acc);
                break;
            default: break;
            }
        }
    }
    return NULL;
}

static void phase_senders(void)
{
    size_t socks0 = socket_fds();
    ar_node_t *node = bm.node = node_start();
    st_rng_t rng = st_rng_for(6000);
    for (int i = 0; i < B_CONNS; i++) {
        bconn_t *c = &bm.c[i];
        *c = (bconn_t){.mode = i % M_MODES, .fd = -1};
        atomic_store(&c->closed_code, -1);
        c->peer_stop = (size_t)st_range(&rng, 1, st_chance(&rng, 50) ? 65536 : B_LIMIT / 2);
        c->crash_at = (size_t)st_range(&rng, 1, B_LIMIT - 1);
    }
    killer_start(node);
    ar_pid_t acc;
    ST_EXPECT_RC(ar_spawn(node, &bacc_b, NULL, NULL, &acc), 0, "phase 3: spawn acceptor");
    for (int i = 0; i < B_CONNS; i++) {
        bconn_t *c = &bm.c[i];
        c->fd = peer_connect_buf(bm.addr, 8192);
        uint8_t hdr[4] = {(uint8_t)i, (uint8_t)(i >> 8), 0, 0};
        if (send(c->fd, hdr, 4, MSG_NOSIGNAL) != 4) st_fail("phase 3: header");
    }
    pthread_t peer;
    st_start_thread(&peer, b_peer_main, NULL);
    st_join(peer);
    /* every sender whose peer reset learns it: CLOSED, or AR_ENOTCONN from a send */
    int closed = 0, errors = 0, enotconn = 0, first = 0, eagains = 0;
    for (int i = 0; i < B_CONNS; i++) {
        bconn_t *c = &bm.c[i];
        eagains += atomic_load(&c->eagains);
        if (c->mode == M_RESET || c->mode == M_ARMED_RESET)
            ST_WAIT(atomic_load(&c->ended), "phase 3: the %s sender %d to learn of the reset", m_name[c->mode], i);
        int code = atomic_load(&c->closed_code);
        closed += code >= 0;
        errors += code == AR_ERROR;
        bool resets = c->mode == M_RESET || c->mode == M_ARMED_RESET || c->mode == M_CRASH_RESET;
        if (resets && code >= 0 && code != AR_ERROR)
            st_violation("phase 3: %s sender %d: its peer reset, CLOSED said %s", m_name[c->mode], i,
                         ar_exit_code_name((ar_exit_code_t)code));
        enotconn += resets && code < 0 && atomic_load(&c->enotconn);
        first += resets && atomic_load(&c->all_sent);
    }
    printf("phase 3: %d senders (%d AR_EAGAIN): %d got CLOSED (%d with an error), %d more AR_ENOTCONN; "
           "%d sent everything before their peer reset\n", B_CONNS, eagains, closed, errors, enotconn, first);
    killer_stop();
    ar_exit(node, acc, AR_REASON(AR_KILL));
    for (int i = 0; i < B_CONNS; i++)
        ar_exit(node, (ar_pid_t){atomic_load(&bm.c[i].pid_hi), atomic_load(&bm.c[i].pid_lo)}, AR_REASON(AR_KILL));
    ST_WAIT(processes(node) == 0, "phase 3: every process to end");
    for (int i = 0; i < B_CONNS; i++)
        if (bm.c[i].fd >= 0) close(bm.c[i].fd);
    ST_WAIT(socket_fds() == socks0, "phase 3: sockets back to %zu (now %zu)", socks0, socket_fds());
    node_stop(node, "phase 3");
}

/* =======================================================================================
 * Phase 4: ar_node_stop while data flows both ways
 * ======================================================================================= */
#define D_CONNS (ST_TSAN ? 16 : 48) /* peers to an acceptor, each served by a process */
#define D_OUT 8                      /* processes that connect out to a peer listener */
#define D_STUCK 6                    /* ... to one whose backlog is full: they hang */
#define D_IDLE 3                     /* listeners nobody connects to */
#define D_MOVED (ST_TSAN ? (4u << 20) : (32u << 20)) /* bytes the peers get before the stop */
#define D_MAXFDS (D_CONNS + D_OUT + 8)

typedef struct duplex {
    ar_socket_t s;
    st_rng_t rng;
    bool waiting, live;
    uint8_t chunk[32768];
} duplex_t;

static struct {
    char addr[64], out_addr[64], stuck_addr[64];
    _Atomic size_t moved;
    _Atomic int connected, idle_up;
    _Atomic bool stopped, stopping;
    _Atomic uint64_t seq;
} dm;

static void d_go(ar_proc_t *self, duplex_t *d)
{
    for (int k = (int)st_range(&d->rng, 1, 4); k > 0; k--) {
        size_t n = (size_t)st_range(&d->rng, 1, sizeof d->chunk);
        int rc = ar_socket_send(self, d->s, d->chunk, n);
        if (rc == AR_EAGAIN) {
            d->waiting = true;
            return;
        }
        if (rc == AR_ENOTCONN) return;
        if (rc != 0) st_violation("phase 4: send: %s", ar_err_name(rc));
    }
    ar_send(ar_node(self), ar_self(self), T_GO, NULL, 0);
}

/* arg: an address to connect to, or NULL (a socket comes with OWNED) */
static int dx_init(ar_proc_t *self, void *arg, void **state)
{
    duplex_t *d = calloc(1, sizeof *d);
    d->rng = st_rng_for(7000 + atomic_fetch_add(&dm.seq, 1));
    memset(d->chunk, 'd', sizeof d->chunk);
    *state = d;
    if (!arg) return 0;
    int rc = ar_socket_connect(self, arg, NULL, &d->s);
    if (rc) return rc;
    return ar_socket_send(self, d->s, d->chunk, 1000); /* queued until it connects */
}
static void dx_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    if (!atomic_load(&dm.stopping)) st_violation("phase 4: a duplex ended: %s %s", ar_exit_code_name(why.code), why.text ? why.text : "");
    free(state);
}
static void dx_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    duplex_t *d = state;
    if (m->kind == AR_MSG_CAST && m->tag == T_GO) {
        d_go(self, d);
        return;
    }
    if (m->kind != AR_MSG_SOCKET) return;
    switch (m->tag) {
    case AR_SOCK_CONNECTED: atomic_fetch_add(&dm.connected, 1); /* fall through */
    case AR_SOCK_OWNED:
        d->s = m->ref;
        ar_socket_active(self, d->s, 16);
        d_go(self, d);
        return;
    case AR_SOCK_DATA: {
        int rc = ar_socket_send(self, d->s, m->data, m->len); /* echo, when there is room */
        if (rc != 0 && rc != AR_EAGAIN && rc != AR_ENOTCONN) st_violation("phase 4: echo: %s", ar_err_name(rc));
        return;
    }
    case AR_SOCK_PASSIVE: ar_socket_active(self, d->s, 16); return;
    case AR_SOCK_WRITABLE:
        if (d->waiting) {
            d->waiting = false;
            d_go(self, d);
        }
        return;
    case AR_SOCK_CLOSED:
        if (!atomic_load(&dm.stopping)) st_violation("phase 4: CLOSED %s %s", ar_exit_code_name(m->reason.code), m->reason.text ? m->reason.text : "");
        ar_socket_close(self, d->s);
        return;
    default: return;
    }
}
static const ar_behaviour_t duplex_b = {"duplex", dx_init, dx_handle, dx_terminate};

/* An acceptor (arg NULL) or an idle listener (arg non-NULL). */
static int dacc_init(ar_proc_t *self, void *arg, void **state)
{
    ar_socket_t ls;
    int rc = ar_socket_listen(self, "127.0.0.1:0", NULL, &ls);
    if (rc) return rc;
    if (arg) return ar_socket_active(self, ls, AR_ACTIVE_ONCE); /* nobody comes */
    if ((rc = ar_socket_address(self, ls, false, dm.addr, sizeof dm.addr)) != 0) return rc;
    return ar_socket_active(self, ls, D_CONNS);
}
static void dacc_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind != AR_MSG_SOCKET || m->tag != AR_SOCK_ACCEPTED) return;
    ar_pid_t p;
    int rc = ar_spawn(ar_node(self), &duplex_b, NULL, NULL, &p);
    if (rc == 0) rc = ar_socket_give(self, m->ref, p);
    if (rc == AR_ECLOSED && atomic_load(&dm.stopping)) return; /* it closes with the acceptor */
    if (rc != 0) st_violation("phase 4: spawn and give: %s", ar_err_name(rc));
}
static const ar_behaviour_t dacc_b = {"dacceptor", dacc_init, dacc_handle, NULL};

/* The peers: write and read on every connection (some never read: their arbor side's
 * queue fills), accept the outgoing ones; once the node stopped, read each to its end. */
static int d_lfd_out;
static void *d_peer_main(void *arg)
{
    int *fds = arg; /* D_CONNS given, the accepted ones added */
    int n = D_CONNS;
    bool ended[D_MAXFDS] = {false};
    static uint8_t buf[65536];
    memset(buf, 'p', sizeof buf);
    st_rng_t rng = st_rng_for(8000);
    uint64_t dl = 0;
    for (int left = -1; left != 0;) {
        bool stopped = atomic_load(&dm.stopped);
        if (stopped && !dl) dl = st_now_ms() + ST_WAIT_MS;
        if (dl && st_now_ms() > dl) st_fail("phase 4: %d connections still open after the stop", left);
        int a = accept4(d_lfd_out, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (a >= 0) {
            if (n == D_MAXFDS) st_fail("phase 4: too many connections");
            fds[n++] = a;
        }
        struct pollfd p[D_MAXFDS];
        for (int i = 0; i < n; i++) p[i] = (struct pollfd){.fd = ended[i] ? -1 : fds[i], .events = POLLIN};
        poll(p, (nfds_t)n, 20);
        left = 0;
        for (int i = 0; i < n; i++) {
            if (ended[i]) continue;
            bool lazy = i % 4 == 3 && !stopped; /* never reads until the stop */
            if (!stopped) send(fds[i], buf, (size_t)st_range(&rng, 1, 16384), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (!lazy) {
                ssize_t r = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
                if (r > 0) atomic_fetch_add(&dm.moved, (size_t)r);
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    if (!atomic_load(&dm.stopping)) st_violation("phase 4: connection %d ended before the stop (%s)", i,
                                               r ? strerror(errno) : "EOF");
                    ended[i] = true;
                    continue;
                }
            }
            left++;
        }
    }
    return (void *)(intptr_t)n;
}

static void phase_stop(void)
{
    ar_node_t *node = node_start();
    d_lfd_out = peer_listen(dm.out_addr, sizeof dm.out_addr, 64);
    set_nonblock(d_lfd_out, true);
    int lfd_stuck = peer_listen(dm.stuck_addr, sizeof dm.stuck_addr, 0);
    ar_pid_t p;
    ST_EXPECT_RC(ar_spawn(node, &dacc_b, NULL, NULL, &p), 0, "phase 4: spawn acceptor");
    for (int i = 0; i < D_IDLE; i++) ST_EXPECT_RC(ar_spawn(node, &dacc_b, "idle", NULL, &p), 0, "phase 4: spawn listener");
    static int fds[D_MAXFDS];
    for (int i = 0; i < D_CONNS; i++) fds[i] = peer_connect(dm.addr);
    for (int i = 0; i < D_OUT; i++) ST_EXPECT_RC(ar_spawn(node, &duplex_b, dm.out_addr, NULL, &p), 0, "phase 4: spawn connector");
    for (int i = 0; i < D_STUCK; i++) ST_EXPECT_RC(ar_spawn(node, &duplex_b, dm.stuck_addr, NULL, &p), 0, "phase 4: spawn connector");
    pthread_t peer;
    st_start_thread(&peer, d_peer_main, fds);
    ST_WAIT(atomic_load(&dm.moved) >= D_MOVED && atomic_load(&dm.connected) >= D_OUT,
            "phase 4: data to flow (%zu bytes, %d connected)", atomic_load(&dm.moved), atomic_load(&dm.connected));
    uint64_t t = st_now_ms();
    atomic_store(&dm.stopping, true);
    int rc = ar_node_stop(node, ST_WAIT_MS);
    if (rc != 0) st_fail("phase 4: ar_node_stop: %s", ar_err_name(rc));
    uint64_t stop_ms = st_now_ms() - t;
    atomic_store(&dm.stopped, true);
    void *ret;
    pthread_join(peer, &ret);
    int n = (int)(intptr_t)ret;
    printf("phase 4: stopped in %" PRIu64 " ms with %d connections moving data, %d connecting, %d listening\n",
           stop_ms, n, D_STUCK, D_IDLE + 1);
    for (int i = 0; i < n; i++) close(fds[i]);
    close(d_lfd_out);
    close(lfd_stuck);
    long live = atomic_load(st_live_blocks());
    if (live != 0) st_violation("phase 4: %ld runtime blocks left after the stop", live);
    if (open_fds() != fds0) {
        list_fds();
        st_violation("phase 4: %zu descriptors after the stop, %zu before", open_fds(), fds0);
    }
}

/* =======================================================================================
 * main
 * ======================================================================================= */
int main(int argc, char **argv)
{
    st_begin("stress_sockets", argc, argv);
    uint64_t t0 = st_now_ms();
    signal(SIGPIPE, SIG_IGN);
    st_hang_report = list_fds;
    int rc = ar_set_allocator(st_counting_allocator());
    if (rc) st_fail("ar_set_allocator: %s", ar_err_name(rc));
    node_stop(node_start(), "warm-up");
    fds0 = open_fds();
    phase_handover();
    phase_stream();
    phase_senders();
    phase_stop();
    return st_finish(t0);
}
