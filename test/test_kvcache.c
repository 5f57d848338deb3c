/* The flagship example, kvcache, as a black box: each test starts
 * $(BUILD)/examples/kvcache on a free loopback port (--listen 127.0.0.1:0, the port read
 * from its "listening on" line), talks RESP to it over plain TCP sockets (requests
 * written by hand here; it is the server that must parse with hiredis), and ends by
 * stopping it with SIGINT, which must give exit status 0 and no sanitizer report.
 * Every wait has a deadline; expiries and reaps are polled for, never slept on. */
#include "test_helpers.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- The server: a child process whose output a thread collects ---------------------- */
#define KV_OUT_MAX (1 << 20)
typedef struct kv_server {
    pid_t pid;
    int port;
    int out_fd;
    pthread_t drain;
    pthread_mutex_t lock;
    char out[KV_OUT_MAX]; /* stdout and stderr, as they came (NUL-terminated) */
    size_t len;
} kv_server_t;

static kv_server_t kv; /* one per test (each test is a process of its own) */

/* Reads the server's output until it closes it, so that it never blocks on a full pipe. */
static void *drain(void *arg)
{
    char buf[4096];
    ssize_t n;
    while ((n = read(kv.out_fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
        pthread_mutex_lock(&kv.lock);
        size_t room = KV_OUT_MAX - 1 - kv.len, take = n > 0 ? (size_t)n : 0;
        if (take > room) take = room;
        memcpy(kv.out + kv.len, buf, take);
        kv.len += take;
        kv.out[kv.len] = '\0';
        pthread_mutex_unlock(&kv.lock);
    }
    return NULL;
}

static bool out_has(const char *s)
{
    pthread_mutex_lock(&kv.lock);
    bool has = strstr(kv.out, s) != NULL;
    pthread_mutex_unlock(&kv.lock);
    return has;
}

/* How many times s appears in the output so far. */
static int out_count(const char *s)
{
    int n = 0;
    pthread_mutex_lock(&kv.lock);
    for (const char *p = kv.out; (p = strstr(p, s)) != NULL; p += strlen(s)) n++;
    pthread_mutex_unlock(&kv.lock);
    return n;
}

/* Starts kvcache with --listen 127.0.0.1:0 and extra (NULL-terminated) arguments. */
static void kv_start_args(const char *const *extra)
{
    char self[4096], path[4200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(n, 0);
    self[n] = '\0';
    snprintf(path, sizeof path, "%s/../examples/kvcache", dirname(self));
    const char *argv[16] = {path, "--listen", "127.0.0.1:0"};
    size_t argc = 3;
    for (; extra && *extra && argc < 15; extra++) argv[argc++] = *extra;
    argv[argc] = NULL;

    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pthread_mutex_init(&kv.lock, NULL);
    kv.pid = fork();
    cr_assert_neq(kv.pid, -1);
    if (kv.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test leaves no server behind */
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    kv.out_fd = fds[0];
    cr_assert_eq(pthread_create(&kv.drain, NULL, drain, NULL), 0);
    uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    for (;;) {
        pthread_mutex_lock(&kv.lock);
        const char *at = strstr(kv.out, "listening on 127.0.0.1:");
        if (at) kv.port = atoi(at + strlen("listening on 127.0.0.1:"));
        pthread_mutex_unlock(&kv.lock);
        if (kv.port > 0) break;
        cr_assert(th_now_ns() < deadline, "kvcache did not start; output:\n%s", kv.out);
        th_nap();
    }
}

static void kv_start(void) { kv_start_args((const char *const[]){"--quiet", NULL}); }

/* Stops the server with SIGINT; it must exit 0, with its summary and no sanitizer report. */
static void kv_stop(void)
{
    cr_assert_eq(kill(kv.pid, SIGINT), 0);
    int status = 0;
    uint64_t deadline = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    while (waitpid(kv.pid, &status, WNOHANG) == 0) {
        cr_assert(th_now_ns() < deadline, "kvcache did not stop on SIGINT; output:\n%s", kv.out);
        th_nap();
    }
    pthread_join(kv.drain, NULL);
    close(kv.out_fd);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d; output:\n%s", status,
              kv.out);
    cr_assert(strstr(kv.out, "kvcache: served ") != NULL, "no summary in:\n%s", kv.out);
    cr_assert_null(strstr(kv.out, "Sanitizer"), "%s", kv.out);
}

/* ---- A client: a TCP socket and what it has read so far ----------------------------- */
typedef struct client {
    int fd;
    char buf[1 << 16];
    size_t len;
} client_t;

/* Connects; refused connections are tried again until TH_WAIT_MS when `retry`. */
static client_t *client_connect(bool retry)
{
    client_t *c = calloc(1, sizeof *c);
    cr_assert_not_null(c);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)kv.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    uint64_t until = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    for (;;) {
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_geq(c->fd, 0);
        if (connect(c->fd, (struct sockaddr *)&a, sizeof a) == 0) return c;
        cr_assert(retry && errno == ECONNREFUSED && th_now_ns() < until, "connect: %s",
                  strerror(errno));
        close(c->fd);
        th_nap();
    }
}

static client_t *client_open(void) { return client_connect(false); }

static void client_close(client_t *c)
{
    close(c->fd);
    free(c);
}

static void client_write(client_t *c, const void *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(c->fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        cr_assert_gt(w, 0, "write: %s", strerror(errno));
        p = (const char *)p + w;
        n -= (size_t)w;
    }
}

/* Reads more into c->buf before the deadline: false on end of stream. */
static bool client_fill(client_t *c)
{
    cr_assert_lt(c->len, sizeof c->buf, "reply too long");
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int rc = poll(&p, 1, TH_WAIT_MS);
    cr_assert_eq(rc, 1, "no reply within %d ms (have %zu bytes: %.*s)", TH_WAIT_MS, c->len,
                 (int)c->len, c->buf);
    ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
    if (n <= 0) return false;
    c->len += (size_t)n;
    return true;
}

/* The length of the complete RESP value at p[0..len), or 0 if it is incomplete. */
static size_t resp_len(const char *p, size_t len)
{
    const char *nl = memchr(p, '\n', len);
    if (!nl) return 0;
    size_t head = (size_t)(nl - p) + 1;
    long n = atol(p + 1);
    if (p[0] == '$') return n < 0 ? head : (len >= head + (size_t)n + 2 ? head + (size_t)n + 2 : 0);
    if (p[0] != '*') return head;
    size_t at = head;
    for (long i = 0; i < n; i++) {
        size_t e = resp_len(p + at, len - at);
        if (!e) return 0;
        at += e;
    }
    return at;
}

/* The next reply, raw, into a static buffer (valid until the next call). */
static const char *reply(client_t *c)
{
    static char out[sizeof c->buf + 1];
    size_t n;
    while ((n = c->len ? resp_len(c->buf, c->len) : 0) == 0)
        cr_assert(client_fill(c), "connection closed before a whole reply (have: %.*s)",
                  (int)c->len, c->buf);
    memcpy(out, c->buf, n);
    out[n] = '\0';
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    return out;
}

/* Writes a request given as its words (a RESP array of bulk strings). */
static void request(client_t *c, int argc, const char *const *argv)
{
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
    cr_assert_lt((size_t)n, sizeof buf);
    client_write(c, buf, (size_t)n);
}

#define REQ(c, ...) request((c), (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(char *)), \
                            (const char *const[]){__VA_ARGS__})
/* Sends a request and checks its reply. */
#define EXPECT(c, want, ...)                                                                 \
    do {                                                                                     \
        REQ(c, __VA_ARGS__);                                                                 \
        const char *got_ = reply(c);                                                         \
        cr_assert_str_eq(got_, want, "%s: got %s", #__VA_ARGS__, got_);                      \
    } while (0)

/* Sends a request until its reply is want (polls, within TH_WAIT_MS). */
#define EVENTUALLY(c, want, ...)                                                             \
    do {                                                                                     \
        uint64_t until_ = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;                     \
        for (;;) {                                                                           \
            REQ(c, __VA_ARGS__);                                                             \
            const char *got_ = reply(c);                                                     \
            if (strcmp(got_, want) == 0) break;                                              \
            cr_assert(th_now_ns() < until_, "%s: still %s", #__VA_ARGS__, got_);             \
            th_nap();                                                                        \
        }                                                                                    \
    } while (0)

/* The connection ends (EOF or reset) before TH_WAIT_MS, after any bytes still due. */
static void expect_closed(client_t *c)
{
    for (;;) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, TH_WAIT_MS), 1, "the connection stayed open");
        char b[4096];
        ssize_t n = read(c->fd, b, sizeof b);
        if (n <= 0) return;
    }
}

/* ---- The tests ----------------------------------------------------------------------- */
Test(kvcache, ping_set_get_and_binary_safe_keys_and_values, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *c = client_open();
    EXPECT(c, "+PONG\r\n", "PING");
    EXPECT(c, "$5\r\nhello\r\n", "PING", "hello");
    EXPECT(c, "+OK\r\n", "SET", "k", "v");
    EXPECT(c, "$1\r\nv\r\n", "GET", "k");
    EXPECT(c, "$-1\r\n", "GET", "missing");
    EXPECT(c, "+OK\r\n", "set", "k", "again"); /* names are case-insensitive */
    EXPECT(c, "$5\r\nagain\r\n", "get", "k");
    static const char bin[] = "*3\r\n$3\r\nSET\r\n$4\r\nk\0\r\n\r\n$5\r\n\r\n\0\xff\n\r\n";
    client_write(c, bin, sizeof bin - 1);
    cr_assert_str_eq(reply(c), "+OK\r\n");
    static const char get[] = "*2\r\n$3\r\nGET\r\n$4\r\nk\0\r\n\r\n";
    client_write(c, get, sizeof get - 1);
    const char *r = reply(c);
    cr_assert_eq(memcmp(r, "$5\r\n\r\n\0\xff\n\r\n", 11), 0);
    EXPECT(c, "-ERR unknown command 'NOPE'\r\n", "NOPE", "x");
    EXPECT(c, "-ERR wrong number of arguments for 'GET' command\r\n", "GET");
    EXPECT(c, "*0\r\n", "COMMAND", "DOCS");
    EXPECT(c, "*2\r\n$4\r\nsave\r\n$0\r\n\r\n", "CONFIG", "GET", "save");
    EXPECT(c, "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n", "CONFIG", "GET", "appendonly");
    client_close(c);
    kv_stop();
}

Test(kvcache, ex_and_px_expire_their_keys, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *c = client_open();
    EXPECT(c, "+OK\r\n", "SET", "short", "1", "PX", "150");
    EXPECT(c, "+OK\r\n", "SET", "long", "2", "EX", "1");
    EXPECT(c, "+OK\r\n", "SET", "forever", "3");
    EXPECT(c, "$1\r\n1\r\n", "GET", "short");
    uint64_t t0 = th_now_ns();
    EVENTUALLY(c, "$-1\r\n", "GET", "short");
    EVENTUALLY(c, "$-1\r\n", "GET", "long");
    cr_assert_geq(th_ms_since(t0), 700.0, "EX 1 expired after %.0f ms", th_ms_since(t0));
    EXPECT(c, "$1\r\n3\r\n", "GET", "forever");
    EVENTUALLY(c, ":1\r\n", "DBSIZE"); /* the expired buckets have ended */
    /* SET without a TTL clears an earlier one */
    EXPECT(c, "+OK\r\n", "SET", "k", "1", "PX", "100");
    EXPECT(c, "+OK\r\n", "SET", "k", "2");
    EXPECT(c, "+OK\r\n", "SET", "probe", "x", "PX", "300");
    EVENTUALLY(c, "$-1\r\n", "GET", "probe"); /* well past k's first TTL */
    EXPECT(c, "$1\r\n2\r\n", "GET", "k");
    EXPECT(c, "-ERR invalid expire time in 'set' command\r\n", "SET", "k", "v", "PX", "0");
    EXPECT(c, "-ERR invalid expire time in 'set' command\r\n", "SET", "k", "v", "EX", "x");
    EXPECT(c, "-ERR syntax error\r\n", "SET", "k", "v", "NX");
    client_close(c);
    kv_stop();
}

Test(kvcache, del_exists_incr_and_dbsize, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *c = client_open();
    EXPECT(c, ":0\r\n", "DBSIZE");
    EXPECT(c, "+OK\r\n", "SET", "x", "1");
    EXPECT(c, "+OK\r\n", "SET", "y", "41");
    EXPECT(c, ":2\r\n", "EXISTS", "x", "y", "z");
    EXPECT(c, ":2\r\n", "EXISTS", "x", "x");
    EXPECT(c, ":1\r\n", "DEL", "x", "z");
    EXPECT(c, ":0\r\n", "EXISTS", "x");
    EXPECT(c, ":0\r\n", "DEL", "x");
    EXPECT(c, ":1\r\n", "INCR", "n");
    EXPECT(c, ":2\r\n", "INCR", "n");
    EXPECT(c, ":42\r\n", "INCR", "y");
    EXPECT(c, "$2\r\n42\r\n", "GET", "y");
    EXPECT(c, "+OK\r\n", "SET", "neg", "-5");
    EXPECT(c, ":-4\r\n", "INCR", "neg");
    EXPECT(c, "+OK\r\n", "SET", "s", "abc");
    EXPECT(c, "-ERR value is not an integer or out of range\r\n", "INCR", "s");
    EXPECT(c, "+OK\r\n", "SET", "s", "007");
    EXPECT(c, "-ERR value is not an integer or out of range\r\n", "INCR", "s");
    EXPECT(c, "+OK\r\n", "SET", "big", "9223372036854775807");
    EXPECT(c, "-ERR increment or decrement would overflow\r\n", "INCR", "big");
    EXPECT(c, "+OK\r\n", "SET", "big", "9223372036854775808");
    EXPECT(c, "-ERR value is not an integer or out of range\r\n", "INCR", "big");
    EVENTUALLY(c, ":5\r\n", "DBSIZE"); /* y n neg s big; x's bucket ends after its DEL */
    client_close(c);
    kv_stop();
}

Test(kvcache, pipelined_requests_in_one_write_get_their_replies_in_order, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *c = client_open();
    enum { N = 200 };
    static char buf[N * 64];
    size_t n = 0;
    for (int i = 0; i < N; i++) { /* SET p:k i, then GET p:k, for 50 keys over and over */
        char key[16], val[16];
        snprintf(key, sizeof key, "p:%d", (i / 2) % 50);
        snprintf(val, sizeof val, "%d", i);
        if (i % 2 == 0)
            n += (size_t)snprintf(buf + n, sizeof buf - n,
                                  "*3\r\n$3\r\nSET\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n", strlen(key),
                                  key, strlen(val), val);
        else
            n += (size_t)snprintf(buf + n, sizeof buf - n, "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n",
                                  strlen(key), key);
    }
    client_write(c, buf, n);
    for (int i = 0; i < N; i++) {
        char val[16], want[32] = "+OK\r\n";
        snprintf(val, sizeof val, "%d", i - 1);
        if (i % 2) snprintf(want, sizeof want, "$%zu\r\n%s\r\n", strlen(val), val);
        cr_assert_str_eq(reply(c), want, "reply %d", i);
    }
    client_close(c);
    kv_stop();
}

/* A pipeline's requests for one key run in order even when its bucket ends in the middle
 * (DEL, CRASH): the ones behind it are run again, in turn, on a fresh bucket. */
Test(kvcache, a_pipeline_through_a_del_and_a_crash_of_its_key_keeps_its_order,
     .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *c = client_open();
    static const char *const reqs[][3] = {
        {"SET", "k", "1"}, {"DEL", "k"}, {"GET", "k"}, {"SET", "k", "2"}, {"GET", "k"},
        {"INCR", "k"}, {"SET", "other", "x"}, {"CRASH", "k"}, {"GET", "k"}, {"INCR", "k"},
        {"EXISTS", "k"}, {"DBSIZE"}, {"GET", "other"},
    };
    static const char *const want[] = {
        "+OK\r\n", ":1\r\n", "$-1\r\n", "+OK\r\n", "$1\r\n2\r\n", ":3\r\n", "+OK\r\n",
        "-ERR bucket crashed\r\n", "$-1\r\n", ":1\r\n", ":1\r\n", NULL, "$1\r\nx\r\n",
    };
    static char buf[2048];
    size_t n = 0;
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        int argc = reqs[i][2] ? 3 : reqs[i][1] ? 2 : 1;
        n += (size_t)snprintf(buf + n, sizeof buf - n, "*%d\r\n", argc);
        for (int j = 0; j < argc; j++)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "$%zu\r\n%s\r\n", strlen(reqs[i][j]),
                                  reqs[i][j]);
    }
    client_write(c, buf, n);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *got = reply(c);
        if (want[i]) cr_assert_str_eq(got, want[i], "reply %zu", i);
    }
    client_close(c);
    kv_stop();
}

Test(kvcache, a_crashed_bucket_loses_only_its_key_and_the_key_works_again, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *c = client_open();
    EXPECT(c, "+OK\r\n", "SET", "a", "1");
    EXPECT(c, "+OK\r\n", "SET", "b", "2");
    EXPECT(c, "-ERR bucket crashed\r\n", "CRASH", "a");
    EXPECT(c, "$1\r\n2\r\n", "GET", "b");
    EXPECT(c, "$-1\r\n", "GET", "a");
    EXPECT(c, "-ERR no such key\r\n", "CRASH", "nokey");
    EXPECT(c, "+OK\r\n", "SET", "a", "3");
    EXPECT(c, "$1\r\n3\r\n", "GET", "a");
    EXPECT(c, "+PONG\r\n", "PING"); /* the connection lived through it */
    th_await(out_has("arbor: EXIT pid=<") && out_has("behaviour=kv.bucket reason=error"));
    client_close(c);
    kv_stop();
}

Test(kvcache, a_crashed_connection_closes_only_itself, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *a = client_open(), *b = client_open();
    EXPECT(a, "+OK\r\n", "SET", "k", "v");
    EXPECT(b, "+PONG\r\n", "PING");
    REQ(b, "CRASH", "CONNECTION");
    expect_closed(b);
    EXPECT(a, "$1\r\nv\r\n", "GET", "k");
    client_t *c = client_open();
    REQ(c, "CRASH");
    expect_closed(c);
    client_t *d = client_open();
    EXPECT(d, "+PONG\r\n", "PING");
    EXPECT(a, "+PONG\r\n", "PING");
    th_await(out_has("behaviour=kv.conn reason=error"));
    client_close(a);
    client_close(b);
    client_close(c);
    client_close(d);
    kv_stop();
}

/* The acceptor is a permanent child of the root: killed, it is restarted on the same port
 * (the runtime closes its old listening socket, it listens again), and the connections it
 * made before are not its to lose. */
Test(kvcache, a_crashed_acceptor_is_restarted_on_the_same_port, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *a = client_open();
    EXPECT(a, "+OK\r\n", "SET", "k", "v");
    EXPECT(a, "+OK\r\n", "CRASH", "ACCEPTOR");
    th_await(out_has("RESTART supervisor=<") && out_has("child=acceptor"));
    client_t *b = client_connect(true); /* refused until it listens again */
    EXPECT(b, "$1\r\nv\r\n", "GET", "k");
    EXPECT(a, "+PONG\r\n", "PING");
    th_await(out_has("[event] RESTART "));
    client_close(a);
    client_close(b);
    kv_stop();
}

/* Past the root's intensity (5 restarts in 10 s) the tree gives up, as OTP's does, and
 * kvcache, left with nothing to serve, stops and exits 1. */
Test(kvcache, an_acceptor_crashing_past_the_roots_intensity_ends_the_server_with_1,
     .timeout = TH_TIMEOUT)
{
    kv_start();
    for (int i = 0; i < 6; i++) {
        client_t *c = client_connect(true);
        EXPECT(c, "+OK\r\n", "CRASH", "ACCEPTOR");
        client_close(c);
        if (i < 5) th_await(out_count("kvcache: listening on") == i + 2); /* restarted */
    }
    int status = 0;
    uint64_t until = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    while (waitpid(kv.pid, &status, WNOHANG) == 0) {
        cr_assert(th_now_ns() < until, "kvcache still runs; output:\n%s", kv.out);
        th_nap();
    }
    pthread_join(kv.drain, NULL);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d:\n%s", status, kv.out);
    cr_assert(strstr(kv.out, "arbor: GIVE_UP ") && strstr(kv.out, "the supervision tree ended"),
              "%s", kv.out);
}

/* Sends raw bytes on a fresh connection; the reply must start with -ERR, then close. */
static void refused(const char *raw, size_t len)
{
    client_t *c = client_open();
    client_write(c, raw, len);
    const char *r = reply(c);
    cr_assert(strncmp(r, "-ERR ", 5) == 0, "for %.*s: got %s", (int)len, raw, r);
    expect_closed(c);
    client_close(c);
}

Test(kvcache, oversized_and_malformed_requests_get_an_error_and_a_close, .timeout = TH_TIMEOUT)
{
    kv_start();
    static const char *const bad[] = {
        "*2\r\n$3\r\nGET\r\n$999999999999\r\n",    /* a bulk length far over the cap */
        "*2\r\n$3\r\nGET\r\n$99999999999999999999999\r\n", /* over int64 */
        "*2\r\n$3\r\nSET\r\n$524289\r\n",          /* just over KV_MAX_BULK */
        "*99999999\r\n",                           /* too many arguments */
        "*0\r\n",                                  /* no command */
        "PING\r\n",                                /* inline: not an array */
        "*1\r\n:5\r\n",                            /* an integer, not a bulk string */
        "*1\r\n$-1\r\n",                           /* a nil */
        "*1\r\n$4\r\nPINGxx\r\n",                  /* no CRLF after the bulk */
        "*1\r\n$x\r\n",                            /* not a number */
        "*2\r\n*1\r\n$1\r\na\r\n",                 /* nested */
        "*100000000000000000000000000000000\r\n",  /* a header line too long */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) refused(bad[i], strlen(bad[i]));
    /* requests before a bad one in the same write are answered first */
    client_t *c = client_open();
    static const char mixed[] = "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$999999999999\r\n";
    client_write(c, mixed, sizeof mixed - 1);
    cr_assert_str_eq(reply(c), "+PONG\r\n");
    cr_assert(strncmp(reply(c), "-ERR ", 5) == 0);
    expect_closed(c);
    client_close(c);
    /* and the server keeps serving */
    c = client_open();
    EXPECT(c, "+PONG\r\n", "PING");
    client_close(c);
    kv_stop();
}

Test(kvcache, a_request_split_across_writes_is_put_back_together, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *c = client_open();
    static const char req[] = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    for (size_t i = 0; i < sizeof req - 1; i++) {
        client_write(c, req + i, 1);
        th_nap(); /* give each byte a read of its own */
    }
    cr_assert_str_eq(reply(c), "+OK\r\n");
    EXPECT(c, "$5\r\nvalue\r\n", "GET", "key");
    client_close(c);
    kv_stop();
}

/* Consumes a bulk reply of n bytes, each `fill`, however it is split across reads. */
static void expect_big_bulk(client_t *c, size_t n, char fill)
{
    char head[32];
    snprintf(head, sizeof head, "$%zu\r\n", n);
    while (c->len < strlen(head)) cr_assert(client_fill(c), "closed");
    cr_assert_eq(memcmp(c->buf, head, strlen(head)), 0, "%.*s", (int)strlen(head), c->buf);
    size_t want = n + 2, at = strlen(head);
    while (want > 0) {
        if (at == c->len) {
            c->len = at = 0;
            cr_assert(client_fill(c), "closed with %zu bytes to come", want);
        }
        size_t take = c->len - at < want ? c->len - at : want;
        for (size_t i = 0; i < take; i++) {
            char ch = c->buf[at + i], ok = want - i > 2 ? fill : want - i == 2 ? '\r' : '\n';
            cr_assert_eq(ch, ok, "byte %zu of %zu", n + 2 - want + i, n + 2);
        }
        at += take;
        want -= take;
    }
    memmove(c->buf, c->buf + at, c->len - at);
    c->len -= at;
}

/* A client that pipelines more GETs than it reads: kvcache's sends get AR_EAGAIN, it
 * stops reading and running requests (holding about 1 MiB, not 32), and once the client
 * reads, every reply comes, whole and in order, and the connection reads on. */
Test(kvcache, a_client_that_does_not_read_is_paused_then_served_in_full, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *c = client_open(), *watch = client_open();
    enum { BIG = 500 * 1000, GETS = 64 };
    static char set[BIG + 64];
    int n = snprintf(set, sizeof set, "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n", BIG);
    memset(set + n, 'v', BIG);
    memcpy(set + n + BIG, "\r\n", 2);
    client_write(c, set, (size_t)n + BIG + 2);
    cr_assert_str_eq(reply(c), "+OK\r\n");
    static char gets[GETS * 32];
    size_t len = 0;
    for (int i = 0; i < GETS; i++)
        len += (size_t)snprintf(gets + len, sizeof gets - len, "*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
    client_write(c, gets, len);
    uint64_t until = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;
    for (;;) { /* wait until kvcache has been refused a send */
        REQ(watch, "INFO");
        const char *info = reply(watch), *at = strstr(info, "sends_refused:");
        cr_assert_not_null(at, "%s", info);
        if (atoi(at + strlen("sends_refused:")) > 0) break;
        cr_assert(th_now_ns() < until, "no send was refused");
        th_nap();
    }
    for (int i = 0; i < GETS; i++) expect_big_bulk(c, BIG, 'v');
    EXPECT(c, "+PONG\r\n", "PING");
    client_close(c);
    client_close(watch);
    kv_stop();
}

Test(kvcache, idle_buckets_are_reaped_and_info_counts_it, .timeout = TH_TIMEOUT)
{
    kv_start_args((const char *const[]){"--idle-ms", "100", NULL});
    client_t *c = client_open();
    EXPECT(c, "+OK\r\n", "SET", "a", "1");
    EXPECT(c, "+OK\r\n", "SET", "b", "2");
    EVENTUALLY(c, ":0\r\n", "DBSIZE");
    th_await(out_has("REAP") && out_has("key \"a\"") && out_has("key \"b\""));
    REQ(c, "INFO");
    const char *info = reply(c);
    cr_assert(strstr(info, "# Events\r\n") && strstr(info, "reap:2\r\n") &&
                  strstr(info, "connected_clients:1\r\n") && strstr(info, "db0:keys=0\r\n"),
              "%s", info);
    client_close(c);
    kv_stop();
}

Test(kvcache, sigint_with_clients_connected_stops_in_order_and_exits_0, .timeout = TH_TIMEOUT)
{
    kv_start();
    client_t *a = client_open(), *b = client_open();
    EXPECT(a, "+OK\r\n", "SET", "k", "v");
    EXPECT(b, "+PONG\r\n", "PING");
    kv_stop(); /* checks status 0 and the summary */
    expect_closed(a);
    expect_closed(b);
    cr_assert(strstr(kv.out, "kvcache: served 2 requests on 2 connections"), "%s", kv.out);
    client_close(a);
    client_close(b);
}
