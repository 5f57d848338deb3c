/* Sockets owned by processes (docs/sockets.md): each rule seen from a plain POSIX peer. */
#include <criterion/criterion.h>

#include "socket_helpers.h"

static ar_node_t *node;
static puppet_log_t plog;
static ar_pid_t pup;

static void setup(void)
{
    node = th_node(2);
    puppet_log_init(&plog);
    pup = th_spawn(node, &puppet, &plog);
}
static void teardown(void) { th_node_stop(node); }

static puppet_answer_t do_listen(ar_pid_t p)
{
    puppet_answer_t a = puppet_do(node, p, P_LISTEN, (puppet_cmd_t){.addr = "127.0.0.1:0"});
    cr_assert_eq(a.rc, 0, "listen: %s", ar_err_name(a.rc));
    return a;
}

/* Listens, arms once, has a peer connect: the accepted socket. */
static ar_socket_t accept_one(puppet_answer_t *ls, int *peer)
{
    *ls = do_listen(pup);
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = ls->s, .n = AR_ACTIVE_ONCE}).rc, 0);
    *peer = peer_connect(ls->addr);
    size_t from = 0;
    puppet_ev_t e = puppet_wait(&plog, &from, AR_SOCK_ACCEPTED, 0);
    cr_assert_eq(e.listener, ls->s, "ACCEPTED names its listener");
    cr_assert_neq(e.s, 0);
    return e.s;
}

TestSuite(socket, .init = setup, .fini = teardown, .timeout = TH_TIMEOUT);

Test(socket, SOCK_1_an_accepted_socket_echoes_what_a_peer_sends)
{
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    puppet_do(node, pup, P_ECHO, (puppet_cmd_t){.n = 1});
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = s, .n = AR_ACTIVE_ONCE}).rc, 0);
    char out[1000], in[1000];
    for (int round = 0; round < 50; round++) {
        memset(out, 'a' + round % 26, sizeof out);
        cr_assert_eq(write(peer, out, sizeof out), (ssize_t)sizeof out);
        cr_assert(peer_read(peer, in, sizeof in), "round %d: the echo came back", round);
        cr_assert_eq(memcmp(in, out, sizeof in), 0);
    }
    close(peer);
}

Test(socket, SOCK_2_addresses_name_both_ends)
{
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    cr_assert_str_neq(ls.addr, "127.0.0.1:0", "a listener bound to port 0 says its real port");
    puppet_answer_t local = puppet_do(node, pup, P_ADDRESS, (puppet_cmd_t){.s = s, .n = 0});
    puppet_answer_t remote = puppet_do(node, pup, P_ADDRESS, (puppet_cmd_t){.s = s, .n = 1});
    cr_assert_eq(local.rc, 0);
    cr_assert_eq(remote.rc, 0);
    cr_assert_str_eq(local.addr, ls.addr);
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    getsockname(peer, (struct sockaddr *)&sa, &len);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", ntohs(sa.sin_port));
    cr_assert_str_eq(remote.addr, want);
    close(peer);
}

Test(socket, SOCK_3_a_passive_socket_delivers_nothing_and_pauses_its_peer)
{
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    /* the peer writes until the kernel's buffers are full: nothing reaches the mailbox */
    int fl = 1;
    setsockopt(peer, IPPROTO_TCP, TCP_NODELAY, &fl, sizeof fl);
    char buf[65536];
    memset(buf, 'x', sizeof buf);
    size_t sent = 0;
    for (;;) {
        ssize_t n = send(peer, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            struct pollfd p = {.fd = peer, .events = POLLOUT};
            if (poll(&p, 1, 300) == 0) break; /* it stays full: the peer is paused */
            continue;
        }
        sent += (size_t)n;
        cr_assert(sent < (1u << 30), "the peer is never paused");
    }
    /* a round trip through the puppet: it has handled what was queued before */
    puppet_do(node, pup, P_ECHO, (puppet_cmd_t){.n = 0});
    cr_assert_eq(puppet_count(&plog, AR_SOCK_DATA), 0, "a passive socket delivers nothing");
    /* once: exactly one DATA, then passive again, and no PASSIVE message */
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = s, .n = AR_ACTIVE_ONCE}).rc, 0);
    size_t from = 0;
    puppet_wait(&plog, &from, AR_SOCK_DATA, s);
    /* another round trip: a second DATA would have come with the first */
    puppet_do(node, pup, P_ECHO, (puppet_cmd_t){.n = 0});
    cr_assert_eq(puppet_count(&plog, AR_SOCK_DATA), 1);
    cr_assert_eq(puppet_count(&plog, AR_SOCK_PASSIVE), 0);
    /* a count: that many, then PASSIVE */
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = s, .n = 3}).rc, 0);
    puppet_wait(&plog, &from, AR_SOCK_PASSIVE, s);
    cr_assert_eq(puppet_count(&plog, AR_SOCK_DATA), 4);
    /* and everything arrives, in order, once it keeps asking */
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = s, .n = 1 << 30}).rc, 0);
    th_await(({ pthread_mutex_lock(&plog.lock); size_t b = plog.bytes; pthread_mutex_unlock(&plog.lock); b == sent; }));
    close(peer);
}

Test(socket, SOCK_4_a_peer_that_closes_gives_closed_normal)
{
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = s, .n = AR_ACTIVE_ONCE}).rc, 0);
    close(peer);
    size_t from = 0;
    puppet_ev_t e = puppet_wait(&plog, &from, AR_SOCK_CLOSED, s);
    cr_assert_eq(e.code, AR_NORMAL);
    int rc = puppet_do(node, pup, P_SEND, (puppet_cmd_t){.s = s, .len = 10, .fill = 'x'}).rc;
    cr_assert_eq(rc, AR_ENOTCONN, "got %s", ar_err_name(rc));
    cr_assert_eq(puppet_do(node, pup, P_CLOSE, (puppet_cmd_t){.s = s}).rc, 0);
    cr_assert_eq(puppet_do(node, pup, P_CLOSE, (puppet_cmd_t){.s = s}).rc, AR_EINVAL, "the id is gone");
}

Test(socket, SOCK_5_the_owners_end_closes_its_sockets)
{
    puppet_answer_t ls;
    int peer;
    accept_one(&ls, &peer);
    ar_buf_t r = {0};
    puppet_cmd_t c = {0};
    ar_call(node, pup, P_CRASH, &c, sizeof c, &r, TH_WAIT_MS);
    ar_buf_free(&r);
    cr_assert(peer_sees_close(peer), "the peer saw its connection close");
    /* and the listener is closed too: a new connection is refused */
    th_await(({
        const char *colon = strrchr(ls.addr, ':');
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1)),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
        close(fd);
        rc != 0;
    }));
    close(peer);
}

Test(socket, SOCK_6_a_hand_over_moves_the_events_to_the_new_owner)
{
    puppet_log_t log2;
    puppet_log_init(&log2);
    ar_pid_t other = th_spawn(node, &puppet, &log2);
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    puppet_do(node, other, P_ECHO, (puppet_cmd_t){.n = 1});
    cr_assert_eq(puppet_do(node, pup, P_GIVE, (puppet_cmd_t){.s = s, .to = other}).rc, 0);
    size_t from = 0;
    puppet_wait(&log2, &from, AR_SOCK_OWNED, s);
    /* the giver owns it no more */
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = s, .n = 1}).rc, AR_EINVAL);
    char out[100], in[100];
    memset(out, 'q', sizeof out);
    cr_assert_eq(write(peer, out, sizeof out), (ssize_t)sizeof out);
    cr_assert(peer_read(peer, in, sizeof in), "the new owner echoes");
    cr_assert_eq(puppet_count(&plog, AR_SOCK_DATA), 0);
    /* its end closes it */
    ar_exit(node, other, AR_REASON(AR_KILL));
    cr_assert(peer_sees_close(peer));
    close(peer);
}

Test(socket, SOCK_7_a_hand_over_to_a_dead_process_leaves_it_with_the_giver)
{
    puppet_log_t log2;
    puppet_log_init(&log2);
    ar_pid_t other = th_spawn(node, &puppet, &log2);
    ar_exit(node, other, AR_REASON(AR_KILL));
    th_await(!th_proc_alive(node, other));
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    cr_assert_eq(puppet_do(node, pup, P_GIVE, (puppet_cmd_t){.s = s, .to = other}).rc, AR_ENOPROC);
    puppet_do(node, pup, P_ECHO, (puppet_cmd_t){.n = 1});
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = s, .n = AR_ACTIVE_ONCE}).rc, 0);
    char out[10] = "123456789", in[10];
    cr_assert_eq(write(peer, out, sizeof out), (ssize_t)sizeof out);
    cr_assert(peer_read(peer, in, sizeof in), "the giver still serves it");
    close(peer);
}

Test(socket, SOCK_8_connect_sends_and_receives)
{
    char addr[64];
    int lfd = peer_listen(addr, sizeof addr);
    puppet_answer_t c = puppet_do(node, pup, P_CONNECT, (puppet_cmd_t){.addr = {0}});
    cr_assert_eq(c.rc, AR_EINVAL, "an empty address");
    puppet_cmd_t cmd = {0};
    snprintf(cmd.addr, sizeof cmd.addr, "%s", addr);
    c = puppet_do(node, pup, P_CONNECT, cmd);
    cr_assert_eq(c.rc, 0);
    /* a send before it connects is queued */
    cr_assert_eq(puppet_do(node, pup, P_SEND, (puppet_cmd_t){.s = c.s, .len = 5, .fill = 'z'}).rc, 0);
    int fd = accept(lfd, NULL, NULL);
    cr_assert(fd >= 0);
    size_t from = 0;
    puppet_wait(&plog, &from, AR_SOCK_CONNECTED, c.s);
    char in[5];
    cr_assert(peer_read(fd, in, 5));
    cr_assert_eq(memcmp(in, "zzzzz", 5), 0);
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = c.s, .n = AR_ACTIVE_ONCE}).rc, 0);
    cr_assert_eq(write(fd, "hello", 5), 5);
    puppet_ev_t e = puppet_wait(&plog, &from, AR_SOCK_DATA, c.s);
    cr_assert_eq(e.len, 5);
    close(fd);
    close(lfd);
}

Test(socket, SOCK_9_a_refused_connect_gives_closed_with_an_error)
{
    char addr[64];
    int lfd = peer_listen(addr, sizeof addr);
    close(lfd); /* nobody listens there now */
    puppet_cmd_t cmd = {0};
    snprintf(cmd.addr, sizeof cmd.addr, "%s", addr);
    puppet_answer_t c = puppet_do(node, pup, P_CONNECT, cmd);
    cr_assert_eq(c.rc, 0);
    size_t from = 0;
    puppet_ev_t e = puppet_wait(&plog, &from, AR_SOCK_CLOSED, c.s);
    cr_assert_eq(e.code, AR_ERROR);
    cr_assert_eq(puppet_do(node, pup, P_CLOSE, (puppet_cmd_t){.s = c.s}).rc, 0);
}

Test(socket, SOCK_10_sends_are_bounded_and_writable_follows_the_drain)
{
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    /* the peer reads nothing: the kernel's buffers fill, then the queue, then EAGAIN */
    int rc = 0;
    size_t queued = 0;
    for (int i = 0; i < 100000 && rc == 0; i++) {
        rc = puppet_do(node, pup, P_SEND, (puppet_cmd_t){.s = s, .len = 64 * 1024, .fill = 'w'}).rc;
        if (rc == 0) queued += 64 * 1024;
    }
    cr_assert_eq(rc, AR_EAGAIN, "got %s after %zu bytes", ar_err_name(rc), queued);
    cr_assert_lt(queued, 64u << 20, "memory did not grow without bound");
    cr_assert_eq(puppet_count(&plog, AR_SOCK_WRITABLE), 0);
    /* the peer reads everything: WRITABLE comes, and every byte was there in order */
    char *buf = malloc(queued);
    cr_assert(peer_read(peer, buf, queued));
    for (size_t i = 0; i < queued; i++) cr_assert_eq(buf[i], 'w');
    free(buf);
    size_t from = 0;
    puppet_wait(&plog, &from, AR_SOCK_WRITABLE, s);
    cr_assert_eq(puppet_do(node, pup, P_SEND, (puppet_cmd_t){.s = s, .len = 1, .fill = 'w'}).rc, 0);
    close(peer);
}

/* SOCK-10: eight blocks of 100,000 bytes ('a', 'b', ...) queued, then the close. */
enum { BLOCKS = 8, BLOCK = 100000 };
static void queue_blocks_then_close(ar_socket_t s)
{
    for (int i = 0; i < BLOCKS; i++)
        cr_assert_eq(puppet_do(node, pup, P_SEND, (puppet_cmd_t){.s = s, .len = BLOCK, .fill = (char)('a' + i)}).rc, 0);
    cr_assert_eq(puppet_do(node, pup, P_CLOSE, (puppet_cmd_t){.s = s}).rc, 0);
}

/* The peer reads all the blocks, each whole and in order. */
static bool peer_reads_blocks(int peer)
{
    char *buf = malloc((size_t)BLOCKS * BLOCK);
    bool ok = peer_read(peer, buf, (size_t)BLOCKS * BLOCK);
    for (int i = 0; ok && i < BLOCKS; i++) ok = buf[i * BLOCK + BLOCK - 1] == 'a' + i;
    free(buf);
    return ok;
}

Test(socket, SOCK_11_close_sends_what_was_queued_first)
{
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    queue_blocks_then_close(s);
    cr_assert(peer_reads_blocks(peer), "every queued byte arrived");
    cr_assert(peer_sees_close(peer), "then the close");
    close(peer);
}

Test(socket, SOCK_12_bad_arguments_are_refused)
{
    ar_socket_t s = 0;
    cr_assert_eq(ar_socket_listen(NULL, "127.0.0.1:0", NULL, &s), AR_EINVAL);
    cr_assert_eq(ar_socket_send(NULL, 1, "x", 1), AR_EINVAL);
    cr_assert_eq(ar_socket_active(NULL, 1, 1), AR_EINVAL);
    cr_assert_eq(ar_socket_close(NULL, 1), AR_EINVAL);
    cr_assert_eq(ar_socket_give(NULL, 1, pup), AR_EINVAL);
    const char *bad[] = {"", "127.0.0.1", "127.0.0.1:99999", "nohost:80", ":80", "1.2.3.4:x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        puppet_cmd_t c = {0};
        snprintf(c.addr, sizeof c.addr, "%s", bad[i]);
        cr_assert_eq(puppet_do(node, pup, P_LISTEN, c).rc, AR_EINVAL, "listen %s", bad[i]);
        cr_assert_eq(puppet_do(node, pup, P_CONNECT, c).rc, AR_EINVAL, "connect %s", bad[i]);
    }
    puppet_answer_t ls = do_listen(pup);
    puppet_cmd_t c = {0};
    snprintf(c.addr, sizeof c.addr, "%s", ls.addr);
    cr_assert_eq(puppet_do(node, pup, P_LISTEN, c).rc, AR_EADDRINUSE);
    /* not the owner */
    puppet_log_t log2;
    puppet_log_init(&log2);
    ar_pid_t other = th_spawn(node, &puppet, &log2);
    cr_assert_eq(puppet_do(node, other, P_ACTIVE, (puppet_cmd_t){.s = ls.s, .n = 1}).rc, AR_EINVAL);
    cr_assert_eq(puppet_do(node, other, P_CLOSE, (puppet_cmd_t){.s = ls.s}).rc, AR_EINVAL);
    cr_assert_eq(puppet_do(node, other, P_SEND, (puppet_cmd_t){.s = ls.s, .len = 1}).rc, AR_EINVAL);
    /* a listener takes no data; bad counts; unknown ids */
    cr_assert_eq(puppet_do(node, pup, P_SEND, (puppet_cmd_t){.s = ls.s, .len = 1}).rc, AR_EINVAL);
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = ls.s, .n = -2}).rc, AR_EINVAL);
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = ls.s + (1ull << 32), .n = 1}).rc, AR_EINVAL);
    cr_assert_eq(puppet_do(node, pup, P_ACTIVE, (puppet_cmd_t){.s = 0, .n = 1}).rc, AR_EINVAL);
    cr_assert_eq(puppet_do(node, pup, P_GIVE, (puppet_cmd_t){.s = ls.s, .to = AR_PID_NONE}).rc, AR_ENOPROC);
    cr_assert_str_eq(ar_sock_event_name(AR_SOCK_OWNED), "OWNED");
    cr_assert_str_eq(ar_sock_event_name(99), "UNKNOWN");
    cr_assert_str_eq(ar_err_name(AR_ENOTCONN), "AR_ENOTCONN");
}

/* ---- a crash never leaks a descriptor ---- */
enum { CRASHERS = 10000 };
static ar_node_t *cnode;

static void crasher_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind != AR_MSG_SOCKET) return;
    if (m->tag == AR_SOCK_OWNED) ar_socket_active(self, m->ref, AR_ACTIVE_ONCE);
    if (m->tag == AR_SOCK_DATA) AR_FAIL(self, "a connection process crashes on its first bytes");
}
static const ar_behaviour_t crasher = {"crasher", NULL, crasher_handle, NULL};

/* Accepts for ever, one crasher per connection. Its listener's address goes to *arg. */
static int acceptor_init(ar_proc_t *self, void *arg, void **state)
{
    ar_socket_t ls;
    int rc = ar_socket_listen(self, "127.0.0.1:0", NULL, &ls);
    if (rc) return rc;
    ar_socket_address(self, ls, false, arg, 64);
    return ar_socket_active(self, ls, 1000000);
}
static void acceptor_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind != AR_MSG_SOCKET || m->tag != AR_SOCK_ACCEPTED) return;
    ar_pid_t c;
    if (ar_spawn(ar_node(self), &crasher, NULL, NULL, &c) != 0 || ar_socket_give(self, m->ref, c) != 0)
        ar_socket_close(self, m->ref);
}
static const ar_behaviour_t acceptor = {"acceptor", acceptor_init, acceptor_handle, NULL};

Test(socket_leak, SOCK_13_ten_thousand_crashing_connections_leak_no_descriptor, .timeout = TH_TIMEOUT)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.crash_reports_off = true;
    cnode = th_node_cfg(&cfg);
    char addr[64] = "";
    ar_pid_t acc;
    cr_assert_eq(ar_spawn(cnode, &acceptor, addr, NULL, &acc), 0);
    /* sockets: libuv opens a descriptor of its own (its reserve for EMFILE) with the loop's
     * first socket, on the I/O thread, whenever it gets to the listener */
    size_t before = socket_fds();
    ar_node_stats_t st0 = th_stats(cnode);
    for (int i = 0; i < CRASHERS; i++) {
        int fd = peer_connect(addr);
        cr_assert_eq(write(fd, "x", 1), 1);
        cr_assert(peer_sees_close(fd), "connection %d closed by its owner's crash", i);
        close(fd);
    }
    /* every owner crashed, and every socket descriptor is back */
    th_await(th_stats(cnode).exited - st0.exited >= CRASHERS);
    th_await(socket_fds() == before);
    cr_assert_eq(socket_fds(), before);
    th_node_stop(cnode);
}

/* ---- SOCK-4: closed before the end is announced ---- */
typedef struct relisten {
    ar_pid_t watched;
    char addr[64];
    int rc;
    sem_t done;
} relisten_t;

static int relisten_init(ar_proc_t *self, void *arg, void **state)
{
    relisten_t *r = arg;
    *state = r;
    ar_ref_t ref;
    return ar_monitor(self, r->watched, &ref);
}
static void relisten_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    relisten_t *r = state;
    if (m->kind != AR_MSG_DOWN) return;
    ar_socket_t s;
    r->rc = ar_socket_listen(self, r->addr, NULL, &s); /* at once, on the DOWN */
    sem_post(&r->done);
}
static const ar_behaviour_t relistener = {"relistener", relisten_init, relisten_handle, NULL};

Test(socket, SOCK_4_a_crashed_owners_port_is_free_when_its_down_arrives)
{
    for (int round = 0; round < 50; round++) {
        puppet_log_t l;
        puppet_log_init(&l);
        ar_pid_t owner = th_spawn(node, &puppet, &l);
        puppet_answer_t ls = do_listen(owner);
        relisten_t r = {.watched = owner, .rc = 1};
        snprintf(r.addr, sizeof r.addr, "%s", ls.addr);
        sem_init(&r.done, 0, 0);
        ar_pid_t w = th_spawn(node, &relistener, &r);
        ar_buf_t b = {0};
        ar_call(node, owner, P_CRASH, &(puppet_cmd_t){0}, sizeof(puppet_cmd_t), &b, TH_WAIT_MS);
        ar_buf_free(&b);
        th_sem_take(&r.done);
        cr_assert_eq(r.rc, 0, "round %d: the port was taken when the DOWN came: %s", round, ar_err_name(r.rc));
        ar_exit(node, w, AR_REASON(AR_KILL));
        th_await(!th_proc_alive(node, w));
    }
}

Test(socket, SOCK_10_a_close_while_the_peer_still_sends_loses_nothing_queued)
{
    puppet_answer_t ls;
    int peer;
    ar_socket_t s = accept_one(&ls, &peer);
    /* the peer sends bytes its passive partner never reads */
    char junk[32768];
    memset(junk, 'j', sizeof junk);
    cr_assert_eq(write(peer, junk, sizeof junk), (ssize_t)sizeof junk);
    queue_blocks_then_close(s);
    /* the peer reads late: without a lingering close the kernel would have reset the
     * connection over the unread bytes, and dropped what was not read yet */
    cr_assert(peer_reads_blocks(peer), "every queued byte arrived, no reset");
    char b;
    cr_assert_eq(read(peer, &b, 1), 0, "then a clean end (EOF), not a reset: %s", strerror(errno));
    close(peer);
}
