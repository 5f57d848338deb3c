/* tcp_floor: what loopback TCP itself costs, the floor under remote_ping_pong and
 * remote_oneway. Two OS processes (fork) joined by a TCP connection on 127.0.0.1 with
 * TCP_NODELAY and blocking sockets; messages are 16-byte frames (a 4-byte length and a
 * 12-byte payload, about one small message on arbor's wire).
 *   tcp_round_trip  N round trips (default 100,000): write a frame, read the echo.
 *   tcp_oneway      M frames (default 1,000,000), one write() each; the other side reads
 *                   them all and answers one byte; timed until that byte. Per frame.
 * Output in arbor_bench's format. Usage: tcp_floor [N [M]]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { FRAME = 16 };

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void fail(const char *what)
{
    perror(what);
    exit(1);
}

/* read() or write() all of len bytes. */
static void full(int fd, void *buf, size_t len, int writing)
{
    for (char *p = buf; len > 0;) {
        ssize_t k = writing ? write(fd, p, len) : read(fd, p, len);
        if (k <= 0) fail(writing ? "write" : "read");
        p += k;
        len -= (size_t)k;
    }
}

static void no_delay(int fd)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) fail("TCP_NODELAY");
}

/* The other process: echoes n frames, then swallows m frames and answers one byte. */
static void echo_side(int listener, long n, long m)
{
    int fd = accept(listener, NULL, NULL);
    if (fd < 0) fail("accept");
    no_delay(fd);
    static char buf[FRAME * 1024];
    for (long i = 0; i < n; i++) {
        full(fd, buf, FRAME, 0);
        full(fd, buf, FRAME, 1);
    }
    for (long left = m * FRAME; left > 0;) {
        ssize_t k = read(fd, buf, left < (long)sizeof buf ? (size_t)left : sizeof buf);
        if (k <= 0) fail("read");
        left -= k;
    }
    full(fd, buf, 1, 1);
    _exit(0);
}

static void emit(const char *name, long n, int64_t ns)
{
    printf("name=%s n=%ld seconds=%.6f per_op_ns=%.1f\n", name, n, ns / 1e9, (double)ns / n);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000, m = argc > 2 ? atol(argv[2]) : 1000000;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) != 0 || listen(listener, 1) != 0)
        fail("listen");
    pid_t child = fork();
    if (child < 0) fail("fork");
    if (child == 0) echo_side(listener, n, m);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) fail("connect");
    no_delay(fd);
    char frame[FRAME] = {0, 0, 0, FRAME - 4};

    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        full(fd, frame, FRAME, 1);
        full(fd, frame, FRAME, 0);
    }
    emit("tcp_round_trip", n, now_ns() - t0);

    t0 = now_ns();
    for (long i = 0; i < m; i++) full(fd, frame, FRAME, 1);
    full(fd, frame, 1, 0);
    emit("tcp_oneway", m, now_ns() - t0);

    close(fd);
    waitpid(child, NULL, 0);
    return 0;
}
