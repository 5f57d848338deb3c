/* Sockets when things fail (docs/sockets.md: SOCK-12, SOCK-13, and SOCK-1/3/4 under
 * failure): memory that runs out at each allocation of each call and on the I/O thread, a
 * send cut short, a node stopped with everything open, owners killed with their sockets'
 * messages still queued, hand-overs that cannot happen, callers that are not processes.
 *
 * The sweeps fail the n-th allocation (once) while the call runs, for n = 1, 2, ... until
 * the call needs fewer than n, as test_alloc.c does; envelopes bypass the pools so that
 * each one is an allocation. White-box (runtime/socket.h): the pool switch, the size of a
 * block of slots, and a command that holds the I/O thread still. */
#include <criterion/criterion.h>

#include "socket_helpers.h"

#include "../runtime/socket.h"

#include <fcntl.h>

enum { MAX_N = 200 };

static th_alloc_t alloc;
static atomic_bool starve; /* every allocation fails while set */
static atomic_long starved; /* allocations failed so */

static bool starving(void)
{
    if (!atomic_load(&starve)) return false;
    atomic_fetch_add(&starved, 1);
    return true;
}
static void *sf_malloc(size_t n, void *ud)
{
    return starving() ? NULL : th_alloc_malloc(n, ud);
}
static void *sf_realloc(void *p, size_t n, void *ud)
{
    return starving() ? NULL : th_alloc_realloc(p, n, ud);
}

/* The counting allocator with one-shot failures (th_alloc) and starvation; envelopes
 * from it one by one. Before any node starts. */
static void install_alloc(void)
{
    th_alloc_install(&alloc);
    static ar_allocator_t hook;
    hook = (ar_allocator_t){sf_malloc, sf_realloc, th_alloc_free, &alloc};
    cr_assert_eq(ar_set_allocator(&hook), 0);
    ar__pool_bypass = true;
}

/* ---- a process that runs one socket call with the n-th allocation failing ---------- */
enum { OP_LISTEN = 200, OP_CONNECT, OP_SEND, OP_GIVE, OP_ACTIVE, OP_CLOSE, OP_ADDRESS, OP_PARK };

typedef struct op_cmd {
    long n;          /* the allocation that fails; 0: none */
    ar_socket_t s;
    int active;      /* OP_ACTIVE */
    ar_pid_t to;     /* OP_GIVE */
    char addr[64];   /* OP_LISTEN, OP_CONNECT */
    size_t send_limit; /* OP_LISTEN (0: the default) */
    size_t len;      /* OP_SEND: bytes of fill */
    char fill;
    atomic_int *saw; /* OP_PARK: socket messages it saw and left queued */
} op_cmd_t;

typedef struct op_answer {
    int rc;
    bool injected;
    ar_socket_t s;
    char addr[64];
} op_answer_t;

static void op_reply(ar_proc_t *self, ar_reply_to_t to, const op_answer_t *a)
{
    int rc;
    do rc = ar_reply(ar_node(self), to, a, sizeof *a);
    while (rc == AR_ENOMEM);
}

/* Matches nothing; counts the socket messages it is shown (they stay queued). */
static bool note_socket_msgs(const ar_msg_t *m, void *ud)
{
    if (m->kind == AR_MSG_SOCKET) atomic_fetch_add((atomic_int *)ud, 1);
    return false;
}

/* A puppet (socket_helpers.h: it logs its socket events, answers P_* calls) that also runs
 * the OP_* calls under an armed allocator. */
static void op_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind != AR_MSG_CALL || m->tag < OP_LISTEN) {
        puppet_handle(self, state, m);
        return;
    }
    const op_cmd_t *c = m->data;
    op_answer_t a = {0};
    char *buf = NULL;
    if (m->tag == OP_SEND) {
        buf = malloc(c->len ? c->len : 1);
        memset(buf, c->fill, c->len);
    }
    if (m->tag == OP_PARK) { /* answers first, then parks in a receive that takes nothing */
        atomic_int *saw = c->saw;
        op_reply(self, m->reply_to, &a);
        ar_msg_t *got = NULL;
        if (ar_receive(self, note_socket_msgs, saw, TH_WAIT_MS, &got) == 0) ar_msg_release(self, got);
        return;
    }
    if (c->n) th_alloc_arm(&alloc, c->n);
    switch (m->tag) {
    case OP_LISTEN: {
        ar_socket_opts_t o = {.send_limit = c->send_limit};
        a.rc = ar_socket_listen(self, c->addr, &o, &a.s);
        break;
    }
    case OP_CONNECT: a.rc = ar_socket_connect(self, c->addr, NULL, &a.s); break;
    case OP_SEND: a.rc = ar_socket_send(self, c->s, buf, c->len); break;
    case OP_GIVE: a.rc = ar_socket_give(self, c->s, c->to); break;
    case OP_ACTIVE: a.rc = ar_socket_active(self, c->s, c->active); break;
    case OP_CLOSE: a.rc = ar_socket_close(self, c->s); break;
    case OP_ADDRESS: a.rc = ar_socket_address(self, c->s, false, a.addr, sizeof a.addr); break;
    }
    if (c->n) a.injected = th_alloc_disarm(&alloc);
    if (m->tag == OP_LISTEN && a.rc == 0) ar_socket_address(self, a.s, false, a.addr, sizeof a.addr);
    free(buf);
    op_reply(self, m->reply_to, &a);
}
static const ar_behaviour_t op_b = {"op", puppet_init, op_handle, NULL};

static op_answer_t op_do(ar_node_t *node, ar_pid_t p, int op, op_cmd_t c)
{
    ar_buf_t r = {0};
    op_answer_t a = {.rc = -999};
    int rc = ar_call(node, p, (uint32_t)op, &c, sizeof c, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "op %d: %s", op, ar_err_name(rc));
    cr_assert_eq(r.len, sizeof a);
    memcpy(&a, r.data, sizeof a);
    ar_buf_free(&r);
    return a;
}

/* A connection accepted by a listener p owns: the accepted socket; the peer's end in
 * *peer, the listener's address in addr. rcvbuf: the peer's receive buffer (0: the
 * system's). */
static ar_socket_t accepted_lim(ar_node_t *node, ar_pid_t p, puppet_log_t *log, size_t *from,
                                int *peer, int rcvbuf, char addr[64], size_t send_limit)
{
    op_answer_t ls = op_do(node, p, OP_LISTEN, (op_cmd_t){.addr = "127.0.0.1:0", .send_limit = send_limit});
    cr_assert_eq(ls.rc, 0, "listen: %s", ar_err_name(ls.rc));
    if (addr) memcpy(addr, ls.addr, 64);
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = ls.s, .active = AR_ACTIVE_ONCE}).rc, 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    const char *colon = strrchr(ls.addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    *peer = fd;
    return puppet_wait(log, from, AR_SOCK_ACCEPTED, 0).s;
}
static ar_socket_t accepted(ar_node_t *node, ar_pid_t p, puppet_log_t *log, size_t *from,
                            int *peer, int rcvbuf, char addr[64])
{
    return accepted_lim(node, p, log, from, peer, rcvbuf, addr, 0);
}

/* Kills p and waits until it is gone. */
static void kill_and_wait(ar_node_t *node, ar_pid_t p)
{
    ar_exit(node, p, AR_REASON(AR_KILL));
    th_await(!th_proc_alive(node, p));
}

/* True when nothing can connect to addr (its listener is closed). */
static bool refused(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    close(fd);
    return rc != 0;
}

/* Stops the node: every block the runtime took is back, and every socket descriptor. */
static void stop_and_check(ar_node_t *node, long n, size_t socks)
{
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0, "n=%ld: %ld blocks leaked", n, atomic_load(&alloc.live));
    cr_assert_eq(socket_fds(), socks, "n=%ld: %zu sockets open, %zu before", n, socket_fds(), socks);
}

TestSuite(socket_fail, .timeout = TH_TIMEOUT);

/* ---- each call under out-of-memory ---------------------------------------------------- */
Test(socket_fail, SOCK_20_listen_out_of_memory_is_enomem_and_leaves_nothing_behind)
{
    install_alloc();
    size_t socks = socket_fds();
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        puppet_log_t log;
        puppet_log_init(&log);
        ar_pid_t p = th_spawn(node, &op_b, &log);
        op_answer_t a = op_do(node, p, OP_LISTEN, (op_cmd_t){.n = n, .addr = "127.0.0.1:0"});
        if (a.rc != 0) {
            cr_assert_eq(a.rc, AR_ENOMEM, "n=%ld: %s", n, ar_err_name(a.rc));
            cr_assert(a.injected);
            cr_assert_eq(socket_fds(), socks, "n=%ld: a refused listen left its descriptor", n);
            failures++;
        } else { /* it serves, and it is closed with its owner */
            int peer;
            size_t from = 0;
            cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = a.s, .active = AR_ACTIVE_ONCE}).rc, 0);
            peer = peer_connect(a.addr);
            puppet_wait(&log, &from, AR_SOCK_ACCEPTED, 0);
            kill_and_wait(node, p);
            cr_assert(peer_sees_close(peer), "n=%ld: the accepted socket outlived its owner", n);
            close(peer);
            th_await(refused(a.addr));
            done = !a.injected;
        }
        stop_and_check(node, n, socks);
    }
    cr_assert(done, "ar_socket_listen never succeeded within %d allocations", MAX_N);
    cr_assert_gt(failures, 0, "no allocation on the listen path failed");
}

Test(socket_fail, SOCK_21_connect_out_of_memory_is_enomem_and_leaves_nothing_behind)
{
    install_alloc();
    char addr[64];
    int lfd = peer_listen(addr, sizeof addr);
    fcntl(lfd, F_SETFL, O_NONBLOCK);
    size_t socks = socket_fds();
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        puppet_log_t log;
        puppet_log_init(&log);
        ar_pid_t p = th_spawn(node, &op_b, &log);
        op_cmd_t c = {.n = n};
        memcpy(c.addr, addr, sizeof addr);
        op_answer_t a = op_do(node, p, OP_CONNECT, c);
        if (a.rc != 0) {
            cr_assert_eq(a.rc, AR_ENOMEM, "n=%ld: %s", n, ar_err_name(a.rc));
            cr_assert(a.injected);
            failures++;
            /* it failed before anything went to the I/O thread: no connection, ever */
            cr_assert_eq(accept(lfd, NULL, NULL), -1, "n=%ld: a refused connect connected", n);
        } else {
            size_t from = 0;
            puppet_wait(&log, &from, AR_SOCK_CONNECTED, a.s);
            int fd = accept(lfd, NULL, NULL);
            cr_assert(fd >= 0);
            kill_and_wait(node, p);
            cr_assert(peer_sees_close(fd), "n=%ld: the socket outlived its owner", n);
            close(fd);
            done = !a.injected;
        }
        stop_and_check(node, n, socks);
    }
    close(lfd);
    cr_assert(done, "ar_socket_connect never succeeded within %d allocations", MAX_N);
    cr_assert_gt(failures, 0, "no allocation on the connect path failed");
}

/* A send that has to queue (the socket's buffers are full) and cannot: nothing of it is
 * sent, the stream goes on whole, the owner still owns the socket. */
Test(socket_fail, SOCK_22_a_send_that_cannot_queue_is_enomem_and_sends_nothing)
{
    install_alloc();
    size_t socks = socket_fds();
    bool done = false;
    int failures = 0;
    enum { FIRST = 8 << 20, SECOND = 1000 }; /* more than the kernel's buffers take */
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        puppet_log_t log;
        puppet_log_init(&log);
        ar_pid_t p = th_spawn(node, &op_b, &log);
        size_t from = 0;
        int peer;
        ar_socket_t s = accepted_lim(node, p, &log, &from, &peer, 8192, NULL, 64 << 20);
        /* the peer reads nothing yet: the first send fills the kernel's buffers and queues
         * the rest (a send_limit above it all), so the second has to queue */
        cr_assert_eq(op_do(node, p, OP_SEND, (op_cmd_t){.s = s, .len = FIRST, .fill = 'a'}).rc, 0);
        op_answer_t a = op_do(node, p, OP_SEND, (op_cmd_t){.n = n, .s = s, .len = SECOND, .fill = 'b'});
        if (a.rc != 0) {
            cr_assert_eq(a.rc, AR_ENOMEM, "n=%ld: %s", n, ar_err_name(a.rc));
            cr_assert(a.injected);
            failures++;
        } else {
            done = !a.injected;
        }
        /* and then a third: the stream is the first, the second if it was taken, the third */
        cr_assert_eq(op_do(node, p, OP_SEND, (op_cmd_t){.s = s, .len = 10, .fill = 'c'}).rc, 0);
        size_t total = FIRST + (a.rc == 0 ? SECOND : 0) + 10;
        char *buf = malloc(total + 1);
        cr_assert(peer_read(peer, buf, total), "n=%ld: the stream arrived", n);
        for (size_t i = 0; i < total; i++) {
            char want = i < FIRST ? 'a' : i < total - 10 ? 'b' : 'c';
            cr_assert_eq(buf[i], want, "n=%ld: byte %zu is %c, not %c", n, i, buf[i], want);
        }
        free(buf);
        kill_and_wait(node, p);
        cr_assert(peer_sees_close(peer), "n=%ld: the socket outlived its owner", n);
        close(peer);
        stop_and_check(node, n, socks);
    }
    cr_assert(done, "ar_socket_send never succeeded within %d allocations", MAX_N);
    cr_assert_gt(failures, 0, "no allocation on the send path failed");
}

Test(socket_fail, SOCK_23_give_out_of_memory_is_enomem_and_the_giver_keeps_the_socket)
{
    install_alloc();
    size_t socks = socket_fds();
    bool done = false;
    int failures = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        puppet_log_t log, log2;
        puppet_log_init(&log);
        puppet_log_init(&log2);
        ar_pid_t p = th_spawn(node, &op_b, &log), q = th_spawn(node, &op_b, &log2);
        size_t from = 0, from2 = 0;
        int peer;
        ar_socket_t s = accepted(node, p, &log, &from, &peer, 0, NULL);
        op_answer_t a = op_do(node, p, OP_GIVE, (op_cmd_t){.n = n, .s = s, .to = q});
        ar_pid_t owner = p;
        if (a.rc != 0) {
            cr_assert_eq(a.rc, AR_ENOMEM, "n=%ld: %s", n, ar_err_name(a.rc));
            cr_assert(a.injected);
            failures++;
            /* the giver still owns it; the other one got nothing */
            cr_assert_eq(op_do(node, q, OP_ACTIVE, (op_cmd_t){.s = s, .active = 1}).rc, AR_EINVAL);
            cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = AR_ACTIVE_ONCE}).rc, 0);
            cr_assert_eq(puppet_count(&log2, AR_SOCK_OWNED), 0);
        } else {
            puppet_wait(&log2, &from2, AR_SOCK_OWNED, s);
            cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = 1}).rc, AR_EINVAL);
            cr_assert_eq(op_do(node, q, OP_ACTIVE, (op_cmd_t){.s = s, .active = AR_ACTIVE_ONCE}).rc, 0);
            owner = q;
            done = !a.injected;
        }
        /* the owner serves it (its DATA comes), and its end closes it */
        cr_assert_eq(write(peer, "x", 1), 1);
        puppet_wait(owner.lo == p.lo ? &log : &log2, owner.lo == p.lo ? &from : &from2, AR_SOCK_DATA, s);
        kill_and_wait(node, owner);
        cr_assert(peer_sees_close(peer), "n=%ld: the socket outlived its owner", n);
        close(peer);
        stop_and_check(node, n, socks);
    }
    cr_assert(done, "ar_socket_give never succeeded within %d allocations", MAX_N);
    cr_assert_gt(failures, 0, "no allocation on the give path failed");
}

Test(socket_fail, SOCK_24_active_close_and_address_allocate_nothing)
{
    install_alloc();
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    size_t from = 0;
    int peer;
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 0, NULL);
    op_answer_t a = op_do(node, p, OP_ACTIVE, (op_cmd_t){.n = 1, .s = s, .active = 3});
    cr_assert(a.rc == 0 && !a.injected, "active: %s, injected %d", ar_err_name(a.rc), a.injected);
    a = op_do(node, p, OP_ACTIVE, (op_cmd_t){.n = 1, .s = s, .active = 0});
    cr_assert(a.rc == 0 && !a.injected);
    a = op_do(node, p, OP_ADDRESS, (op_cmd_t){.n = 1, .s = s});
    cr_assert(a.rc == 0 && !a.injected);
    a = op_do(node, p, OP_CLOSE, (op_cmd_t){.n = 1, .s = s});
    cr_assert(a.rc == 0 && !a.injected, "close: %s, injected %d", ar_err_name(a.rc), a.injected);
    cr_assert(peer_sees_close(peer));
    close(peer);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

/* ---- accepting out of memory ------------------------------------------------------------ */
/* A listener armed once; the n-th allocation after the peer connects fails. The connection
 * is accepted (ACCEPTED comes) or refused (the peer sees it close); either way the listener
 * goes on: after a refusal, the next connection is accepted under the same arming, for a
 * refused connection was never delivered. extra: listeners made first, so that the
 * accepted socket needs a new block of slots (64 to a block) or not. */
static void accept_sweep(int extra)
{
    install_alloc();
    size_t socks = socket_fds();
    bool done = false;
    int refusals = 0;
    for (long n = 1; n <= MAX_N && !done; n++) {
        ar_node_t *node = th_node(2);
        puppet_log_t log;
        puppet_log_init(&log);
        ar_pid_t p = th_spawn(node, &op_b, &log);
        for (int i = 0; i < extra; i++)
            cr_assert_eq(op_do(node, p, OP_LISTEN, (op_cmd_t){.addr = "127.0.0.1:0"}).rc, 0);
        op_answer_t ls = op_do(node, p, OP_LISTEN, (op_cmd_t){.addr = "127.0.0.1:0"});
        cr_assert_eq(ls.rc, 0);
        cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = ls.s, .active = AR_ACTIVE_ONCE}).rc, 0);
        th_alloc_arm(&alloc, n); /* from here only the I/O thread allocates: the accept */
        int peer = peer_connect(ls.addr);
        /* accepted, or refused: whichever comes */
        bool was_refused = false;
        for (;;) {
            if (puppet_count(&log, AR_SOCK_ACCEPTED) > 0) break;
            struct pollfd pf = {.fd = peer, .events = POLLIN};
            if (poll(&pf, 1, 10) == 1) {
                char b;
                cr_assert_leq(read(peer, &b, 1), 0, "n=%ld: data from nowhere", n);
                was_refused = true;
                break;
            }
        }
        bool injected = th_alloc_disarm(&alloc);
        close(peer);
        if (was_refused) {
            cr_assert(injected, "n=%ld: refused with memory to spare", n);
            refusals++;
        } else {
            done = !injected;
            cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = ls.s, .active = AR_ACTIVE_ONCE}).rc, 0);
        }
        /* the listener goes on */
        peer = peer_connect(ls.addr);
        size_t want = was_refused ? 1 : 2;
        th_await(puppet_count(&log, AR_SOCK_ACCEPTED) == want);
        kill_and_wait(node, p);
        cr_assert(peer_sees_close(peer), "n=%ld: the accepted socket outlived its owner", n);
        close(peer);
        stop_and_check(node, n, socks);
    }
    cr_assert(done, "accepting never succeeded within %d allocations", MAX_N);
    cr_assert_gt(refusals, 0, "no allocation on the accept path failed");
}

Test(socket_fail, SOCK_25_a_connection_accepted_out_of_memory_is_refused_and_the_listener_goes_on)
{
    accept_sweep(0);
}

Test(socket_fail, SOCK_26_a_connection_accepted_without_memory_for_its_slot_is_refused_and_the_listener_goes_on)
{
    accept_sweep(AR__SOCK_CHUNK - 1);
}

/* A listener with no memory at all for a while (not for the connection's slot or message,
 * not for refusing it) serves again once memory is back. */
static void accept_starved(int extra)
{
    install_alloc();
    size_t socks = socket_fds();
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    for (int i = 0; i < extra; i++)
        cr_assert_eq(op_do(node, p, OP_LISTEN, (op_cmd_t){.addr = "127.0.0.1:0"}).rc, 0);
    op_answer_t ls = op_do(node, p, OP_LISTEN, (op_cmd_t){.addr = "127.0.0.1:0"});
    cr_assert_eq(ls.rc, 0);
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = ls.s, .active = AR_ACTIVE_ONCE}).rc, 0);
    long failed0 = atomic_load(&starved);
    atomic_store(&starve, true);
    int first = peer_connect(ls.addr);
    th_await(atomic_load(&starved) > failed0); /* the I/O thread tried, and could not */
    atomic_store(&starve, false);
    /* the first connection is accepted or was refused; then a second one is accepted */
    bool first_refused = false;
    th_await(({
        struct pollfd pf = {.fd = first, .events = POLLIN};
        first_refused = poll(&pf, 1, 0) == 1;
        first_refused || puppet_count(&log, AR_SOCK_ACCEPTED) == 1;
    }));
    if (!first_refused)
        cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = ls.s, .active = AR_ACTIVE_ONCE}).rc, 0);
    int second = peer_connect(ls.addr);
    th_await(puppet_count(&log, AR_SOCK_ACCEPTED) == (first_refused ? 1u : 2u));
    kill_and_wait(node, p);
    cr_assert(peer_sees_close(second));
    cr_assert(peer_sees_close(first));
    close(first);
    close(second);
    stop_and_check(node, 0, socks);
}

Test(socket_fail, SOCK_27_a_listener_starved_of_memory_serves_again_when_it_is_back)
{
    accept_starved(0);
}

Test(socket_fail, SOCK_27_a_listener_starved_of_memory_for_a_new_slot_serves_again_when_it_is_back)
{
    accept_starved(AR__SOCK_CHUNK - 1);
}

/* ---- the I/O thread out of memory ------------------------------------------------------- */
/* Holds the I/O thread still until released. */
typedef struct io_hold {
    ar__io_cmd_t cmd;
    sem_t entered, release;
} io_hold_t;
static void io_hold_run(ar__io_cmd_t *c, struct uv_loop_s *loop)
{
    io_hold_t *h = (io_hold_t *)c;
    sem_post(&h->entered);
    th_sem_wait(&h->release, TH_WAIT_MS);
}
static void io_hold(ar_node_t *node, io_hold_t *h)
{
    sem_init(&h->entered, 0, 0);
    sem_init(&h->release, 0, 0);
    h->cmd.run = io_hold_run;
    ar__io_submit(node, &h->cmd);
    th_sem_take(&h->entered);
}

/* SOCK-12: a read that cannot be kept closes the connection, and the owner is told. */
Test(socket_fail, SOCK_28_a_read_that_cannot_be_kept_closes_the_connection_with_closed)
{
    install_alloc();
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    size_t from = 0;
    int peer;
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 0, NULL);
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = AR_ACTIVE_ONCE}).rc, 0);
    th_alloc_arm(&alloc, 1); /* the next allocation is the I/O thread's, for the read */
    cr_assert_eq(write(peer, "x", 1), 1);
    puppet_ev_t e = puppet_wait(&log, &from, AR_SOCK_CLOSED, s);
    cr_assert(th_alloc_disarm(&alloc));
    cr_assert_eq(e.code, AR_ERROR);
    cr_assert_eq(puppet_count(&log, AR_SOCK_DATA), 0, "the byte was not kept: no DATA");
    cr_assert(peer_sees_close(peer));
    cr_assert_eq(op_do(node, p, OP_SEND, (op_cmd_t){.s = s, .len = 1, .fill = 'x'}).rc, AR_ENOTCONN);
    close(peer);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

/* With no memory at all, not even for the message that tells it: CLOSED still comes (it
 * is always delivered), once memory is back or at once. */
Test(socket_fail, SOCK_28_closed_comes_even_when_no_memory_is_left_to_tell_it)
{
    install_alloc();
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    size_t from = 0;
    int peer;
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 0, NULL);
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = AR_ACTIVE_ONCE}).rc, 0);
    atomic_store(&starve, true);
    cr_assert_eq(write(peer, "x", 1), 1);
    bool closed = peer_sees_close(peer); /* the connection ends: its byte cannot be kept */
    atomic_store(&starve, false);
    cr_assert(closed);
    puppet_ev_t e = puppet_wait(&log, &from, AR_SOCK_CLOSED, s);
    cr_assert_eq(e.code, AR_ERROR);
    close(peer);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

/* An event the I/O thread cannot allocate (the owner would wait for it for ever) ends the
 * socket instead, and CLOSED says so. A PASSIVE: */
Test(socket_fail, SOCK_28_a_passive_that_cannot_be_told_ends_the_socket_with_closed)
{
    install_alloc();
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    size_t from = 0;
    int peer;
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 0, NULL);
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = 1}).rc, 0);
    th_alloc_arm(&alloc, 2); /* the I/O thread's: the DATA, then the PASSIVE */
    cr_assert_eq(write(peer, "x", 1), 1);
    puppet_wait(&log, &from, AR_SOCK_DATA, s);
    puppet_ev_t e = puppet_wait(&log, &from, AR_SOCK_CLOSED, s);
    cr_assert(th_alloc_disarm(&alloc));
    cr_assert_eq(e.code, AR_ERROR);
    cr_assert_eq(puppet_count(&log, AR_SOCK_PASSIVE), 0);
    cr_assert(peer_sees_close(peer));
    close(peer);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

/* A WRITABLE: */
Test(socket_fail, SOCK_28_a_writable_that_cannot_be_told_ends_the_socket_with_closed)
{
    install_alloc();
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    size_t from = 0;
    int peer;
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 8192, NULL);
    int rc = 0;
    for (int i = 0; i < 100000 && rc == 0; i++)
        rc = op_do(node, p, OP_SEND, (op_cmd_t){.s = s, .len = 64 * 1024, .fill = 'w'}).rc;
    cr_assert_eq(rc, AR_EAGAIN);
    th_alloc_arm(&alloc, 1); /* the I/O thread's: the WRITABLE, once the peer reads */
    cr_assert(peer_sees_close(peer), "the peer read, and then the connection ended");
    puppet_ev_t e = puppet_wait(&log, &from, AR_SOCK_CLOSED, s);
    cr_assert(th_alloc_disarm(&alloc));
    cr_assert_eq(e.code, AR_ERROR);
    cr_assert_eq(puppet_count(&log, AR_SOCK_WRITABLE), 0);
    close(peer);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

/* A CONNECTED (the I/O thread is held while the connect is made, so that the next
 * allocation is its): */
Test(socket_fail, SOCK_28_a_connected_that_cannot_be_told_ends_the_socket_with_closed)
{
    install_alloc();
    char addr[64];
    int lfd = peer_listen(addr, sizeof addr);
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    io_hold_t h;
    io_hold(node, &h);
    op_cmd_t c = {0};
    memcpy(c.addr, addr, sizeof addr);
    op_answer_t a = op_do(node, p, OP_CONNECT, c);
    cr_assert_eq(a.rc, 0);
    th_alloc_arm(&alloc, 1);
    sem_post(&h.release);
    size_t from = 0;
    puppet_ev_t e = puppet_wait(&log, &from, AR_SOCK_CLOSED, a.s);
    cr_assert(th_alloc_disarm(&alloc));
    cr_assert_eq(e.code, AR_ERROR);
    cr_assert_eq(puppet_count(&log, AR_SOCK_CONNECTED), 0);
    int fd = accept(lfd, NULL, NULL);
    cr_assert(fd >= 0);
    cr_assert(peer_sees_close(fd));
    close(fd);
    close(lfd);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

/* ---- a send cut short ---------------------------------------------------------------------- */
/* SOCK-12: a send whose first part went directly and whose rest cannot be queued closes the
 * connection: the peer sees the part, then the close, and never anything sent after (a
 * hole). The I/O thread is held still meanwhile, so the close has not happened yet when the
 * owner sends again. */
Test(socket_fail, SOCK_29_a_send_cut_short_closes_the_connection_and_nothing_follows_the_hole)
{
    install_alloc();
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    size_t from = 0;
    int peer;
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 8192, NULL);
    io_hold_t h;
    io_hold(node, &h);
    enum { BIG = 4 << 20 };
    op_answer_t a = op_do(node, p, OP_SEND, (op_cmd_t){.n = 1, .s = s, .len = BIG, .fill = 'a'});
    cr_assert_eq(a.rc, AR_ENOMEM, "%s", ar_err_name(a.rc));
    cr_assert(a.injected);
    /* the peer takes what the kernel has, making room for more */
    static char buf[BIG];
    size_t got = 0;
    for (int quiet = 0; quiet < 3;) {
        struct pollfd pf = {.fd = peer, .events = POLLIN};
        if (poll(&pf, 1, 50) != 1) {
            quiet++;
            continue;
        }
        ssize_t r = read(peer, buf + got, BIG - got);
        cr_assert_gt(r, 0);
        got += (size_t)r;
    }
    cr_assert_gt(got, 0, "part of the send went directly");
    cr_assert_lt(got, BIG);
    /* the connection is as good as closed: a send now would follow the hole */
    a = op_do(node, p, OP_SEND, (op_cmd_t){.s = s, .len = 100, .fill = 'b'});
    sem_post(&h.release);
    cr_assert_eq(a.rc, AR_ENOTCONN, "a send after the cut: %s", ar_err_name(a.rc));
    /* the peer: the part, then the close */
    for (;;) {
        struct pollfd pf = {.fd = peer, .events = POLLIN};
        cr_assert_eq(poll(&pf, 1, TH_WAIT_MS), 1, "the peer saw the connection close");
        ssize_t r = read(peer, buf + got, BIG - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    for (size_t i = 0; i < got; i++) cr_assert_eq(buf[i], 'a', "byte %zu of %zu follows the hole", i, got);
    puppet_ev_t e = puppet_wait(&log, &from, AR_SOCK_CLOSED, s);
    cr_assert_eq(e.code, AR_ERROR);
    close(peer);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&alloc.live), 0);
}

/* ---- the node stops with everything open ------------------------------------------------- */
/* SOCK-13: listeners, open connections with unsent data queued and reads held back, a
 * connect that cannot complete (its listener's backlog is full) with data waiting for it,
 * a completed one, a socket closed by its owner still draining: ar_node_stop returns
 * without waiting for the drains, every peer sees its connection close, and nothing is
 * left: no block, no descriptor. */
Test(socket_fail, SOCK_30_a_node_stop_with_sockets_in_every_state_leaks_nothing)
{
    install_alloc();
    size_t socks = socket_fds();
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    size_t from = 0;
    int peers[8], np = 0;
    /* a connection with 600 KiB queued: its peer does not read */
    ar_socket_t s = accepted(node, p, &log, &from, &peers[np++], 8192, NULL);
    cr_assert_eq(op_do(node, p, OP_SEND, (op_cmd_t){.s = s, .len = 600 * 1024, .fill = 'q'}).rc, 0);
    /* one closed by its owner with 600 KiB still to drain */
    s = accepted(node, p, &log, &from, &peers[np++], 8192, NULL);
    cr_assert_eq(op_do(node, p, OP_SEND, (op_cmd_t){.s = s, .len = 600 * 1024, .fill = 'l'}).rc, 0);
    cr_assert_eq(op_do(node, p, OP_CLOSE, (op_cmd_t){.s = s}).rc, 0);
    /* one with a read held back (armed once: one DATA, then the next read waits) */
    s = accepted(node, p, &log, &from, &peers[np++], 0, NULL);
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = AR_ACTIVE_ONCE}).rc, 0);
    cr_assert_eq(write(peers[np - 1], "one", 3), 3);
    puppet_wait(&log, &from, AR_SOCK_DATA, s);
    cr_assert_eq(write(peers[np - 1], "two", 3), 3);
    /* a listener armed, one not */
    op_answer_t ls = op_do(node, p, OP_LISTEN, (op_cmd_t){.addr = "127.0.0.1:0"});
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = ls.s, .active = 5}).rc, 0);
    cr_assert_eq(op_do(node, p, OP_LISTEN, (op_cmd_t){.addr = "127.0.0.1:0"}).rc, 0);
    /* a connect completed, with its peer */
    char addr[64];
    int lfd = peer_listen(addr, sizeof addr);
    op_cmd_t c = {0};
    memcpy(c.addr, addr, sizeof addr);
    op_answer_t cn = op_do(node, p, OP_CONNECT, c);
    cr_assert_eq(cn.rc, 0);
    puppet_wait(&log, &from, AR_SOCK_CONNECTED, cn.s);
    peers[np++] = accept(lfd, NULL, NULL);
    /* a connect that cannot complete: its listener's backlog is full */
    char full[64];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ffd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(bind(ffd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(ffd, 0), 0);
    socklen_t len = sizeof sa;
    getsockname(ffd, (struct sockaddr *)&sa, &len);
    snprintf(full, sizeof full, "127.0.0.1:%d", ntohs(sa.sin_port));
    int filler = peer_connect(full); /* takes the backlog's one place */
    memcpy(c.addr, full, sizeof full);
    cn = op_do(node, p, OP_CONNECT, c);
    cr_assert_eq(cn.rc, 0);
    cr_assert_eq(op_do(node, p, OP_SEND, (op_cmd_t){.s = cn.s, .len = 1000, .fill = 'w'}).rc, 0);
    /* and stop: at once, not after the drains' 5 seconds */
    uint64_t t0 = th_now_ns();
    th_node_stop(node);
    cr_assert_lt(th_ms_since(t0), AR__SOCK_LINGER_MS, "the stop waited for the drains");
    cr_assert_eq(atomic_load(&alloc.live), 0, "%ld blocks leaked", atomic_load(&alloc.live));
    for (int i = 0; i < np; i++) {
        cr_assert(peer_sees_close(peers[i]), "peer %d saw its connection close", i);
        close(peers[i]);
    }
    close(filler);
    close(ffd);
    close(lfd);
    cr_assert_eq(socket_fds(), socks, "%zu sockets open, %zu before", socket_fds(), socks);
}

/* ---- owners that end with a socket's message still queued ------------------------------ */
/* SOCK-4: a process killed with an ACCEPTED not yet handled (parked in a receive that
 * leaves it queued) owned that socket: it closes. */
Test(socket_fail, SOCK_31_an_owner_killed_with_its_accepted_still_queued_closes_the_socket)
{
    ar_node_t *node = th_node(2);
    size_t socks = socket_fds();
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &op_b, &log);
    op_answer_t ls = op_do(node, p, OP_LISTEN, (op_cmd_t){.addr = "127.0.0.1:0"});
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = ls.s, .active = AR_ACTIVE_ONCE}).rc, 0);
    atomic_int saw = 0;
    op_do(node, p, OP_PARK, (op_cmd_t){.saw = &saw}); /* parked in a receive from here */
    int peer = peer_connect(ls.addr);
    th_await(atomic_load(&saw) > 0); /* the ACCEPTED is in its mailbox */
    kill_and_wait(node, p);
    cr_assert_eq(puppet_count(&log, AR_SOCK_ACCEPTED), 0, "the ACCEPTED was never handled");
    cr_assert(peer_sees_close(peer), "the accepted socket closed with its owner");
    close(peer);
    th_await(refused(ls.addr));
    th_await(socket_fds() == socks);
    th_node_stop(node);
}

/* SOCK-3/4: a process killed with an OWNED not yet handled owned that socket: it closes. */
Test(socket_fail, SOCK_31_an_owner_killed_with_its_owned_still_queued_closes_the_socket)
{
    ar_node_t *node = th_node(2);
    puppet_log_t log, log2;
    puppet_log_init(&log);
    puppet_log_init(&log2);
    ar_pid_t p = th_spawn(node, &op_b, &log), q = th_spawn(node, &op_b, &log2);
    size_t from = 0;
    int peer;
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 0, NULL);
    atomic_int saw = 0;
    op_do(node, q, OP_PARK, (op_cmd_t){.saw = &saw});
    cr_assert_eq(op_do(node, p, OP_GIVE, (op_cmd_t){.s = s, .to = q}).rc, 0);
    th_await(atomic_load(&saw) > 0); /* the OWNED is in its mailbox */
    kill_and_wait(node, q);
    cr_assert_eq(puppet_count(&log2, AR_SOCK_OWNED), 0, "the OWNED was never handled");
    cr_assert(peer_sees_close(peer), "the socket closed with its new owner");
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = 1}).rc, AR_EINVAL, "the giver gave it");
    close(peer);
    th_node_stop(node);
}

/* ---- hand-overs that cannot happen, callers that are not processes ----------------------- */
/* SOCK-3: a pid of another node is not a local process: AR_ENOPROC, and the giver still
 * owns the socket (and serves it, and closes it when it ends). */
Test(socket_fail, SOCK_32_give_to_a_remote_pid_is_enoproc_and_the_giver_keeps_the_socket)
{
    ar_node_t *node = th_node(2);
    puppet_log_t log, log2;
    puppet_log_init(&log);
    puppet_log_init(&log2);
    ar_pid_t p = th_spawn(node, &op_b, &log), q = th_spawn(node, &op_b, &log2);
    size_t from = 0;
    int peer;
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 0, NULL);
    ar_pid_t remote = q;
    remote.hi ^= 1; /* the same slot, on another node */
    cr_assert(!ar_pid_is_local(node, remote));
    cr_assert_eq(op_do(node, p, OP_GIVE, (op_cmd_t){.s = s, .to = remote}).rc, AR_ENOPROC);
    cr_assert_eq(puppet_count(&log2, AR_SOCK_OWNED), 0);
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = AR_ACTIVE_ONCE}).rc, 0);
    cr_assert_eq(write(peer, "x", 1), 1);
    puppet_wait(&log, &from, AR_SOCK_DATA, s);
    kill_and_wait(node, p);
    cr_assert(peer_sees_close(peer));
    close(peer);
    th_node_stop(node);
}

/* SOCK-1: a thread that is not a process gets AR_EINVAL from every call, whatever self it
 * passes (none, or a real process's), and the socket it named is untouched. */
static ar_proc_t *leaked_self;
static int leak_init(ar_proc_t *self, void *arg, void **state)
{
    leaked_self = self;
    return puppet_init(self, arg, state);
}
static const ar_behaviour_t leak_b = {"leak", leak_init, op_handle, NULL};

Test(socket_fail, SOCK_33_a_thread_that_is_not_a_process_gets_einval_from_every_call)
{
    ar_node_t *node = th_node(2);
    puppet_log_t log;
    puppet_log_init(&log);
    ar_pid_t p = th_spawn(node, &leak_b, &log);
    size_t from = 0;
    int peer;
    char addr[64];
    ar_socket_t s = accepted(node, p, &log, &from, &peer, 0, addr);
    ar_proc_t *selves[] = {NULL, leaked_self};
    for (size_t i = 0; i < 2; i++) {
        ar_proc_t *self = selves[i];
        ar_socket_t out = 0;
        char buf[64];
        cr_assert_eq(ar_socket_listen(self, "127.0.0.1:0", NULL, &out), AR_EINVAL);
        cr_assert_eq(ar_socket_connect(self, addr, NULL, &out), AR_EINVAL);
        cr_assert_eq(out, 0);
        cr_assert_eq(ar_socket_active(self, s, AR_ACTIVE_ONCE), AR_EINVAL);
        cr_assert_eq(ar_socket_send(self, s, "x", 1), AR_EINVAL);
        cr_assert_eq(ar_socket_give(self, s, p), AR_EINVAL);
        cr_assert_eq(ar_socket_address(self, s, true, buf, sizeof buf), AR_EINVAL);
        cr_assert_eq(ar_socket_close(self, s), AR_EINVAL);
    }
    /* untouched: still open, still its owner's */
    cr_assert_eq(op_do(node, p, OP_ACTIVE, (op_cmd_t){.s = s, .active = AR_ACTIVE_ONCE}).rc, 0);
    cr_assert_eq(write(peer, "x", 1), 1);
    puppet_wait(&log, &from, AR_SOCK_DATA, s);
    cr_assert_eq(op_do(node, p, OP_SEND, (op_cmd_t){.s = s, .len = 3, .fill = 'y'}).rc, 0);
    char in[3];
    cr_assert(peer_read(peer, in, 3));
    close(peer);
    th_node_stop(node);
}
