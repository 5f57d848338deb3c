/* arbor benchmarks: clock, /proc readings, node start/stop, completion signal, output. */
#include "bench_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return -1;
    char line[256];
    size_t klen = strlen(key);
    long v = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

long bench_rss_kb(void) { return status_kb("VmRSS"); }
long bench_hwm_kb(void) { return status_kb("VmHWM"); }

_Noreturn void bench_fail(const char *file, int line, const char *fmt, ...)
{
    /* Lines already printed must survive: _exit skips stdio's flush. */
    fflush(stdout);
    fprintf(stderr, "arbor_bench: %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    /* Scheduler threads are still running: exit()'s cleanup could race them. */
    _exit(1);
}

ar_node_t *bench_node_start(void)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.crash_reports_off = true; /* as the peers run: no logger in the measurement */
    ar_node_t *node = NULL;
    int rc = ar_node_start(&cfg, &node);
    BENCH_CHECK(rc == 0 && node != NULL, "ar_node_start: %s", BENCH_ERR(rc));
    return node;
}

void bench_node_stop(ar_node_t *node, const char *workload)
{
    uint64_t t0 = bench_now_ns();
    int rc = ar_node_stop(node, 120000);
    double s = (double)(bench_now_ns() - t0) / 1e9;
    if (rc != 0)
        fprintf(stderr, "%s: ar_node_stop: %s after %.3f s\n", workload, BENCH_ERR(rc), s);
    else if (s > 1.0)
        fprintf(stderr, "%s: ar_node_stop took %.3f s\n", workload, s);
}

void bench_signal_init(bench_signal_t *s)
{
    BENCH_CHECK(sem_init(&s->sem, 0, 0) == 0, "sem_init: errno %d", errno);
}

void bench_signal_destroy(bench_signal_t *s) { sem_destroy(&s->sem); }

void bench_signal_post(bench_signal_t *s)
{
    BENCH_CHECK(sem_post(&s->sem) == 0, "sem_post: errno %d", errno);
}

void bench_signal_wait(bench_signal_t *s, const char *what)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += BENCH_WAIT_S;
    for (;;) {
        if (sem_clockwait(&s->sem, CLOCK_MONOTONIC, &dl) == 0) return;
        if (errno == EINTR) continue;
        BENCH_CHECK(errno != ETIMEDOUT, "%s: not done after %d s", what, BENCH_WAIT_S);
        bench_fail(__FILE__, __LINE__, "%s: sem_clockwait: errno %d", what, errno);
    }
}

void bench_emit(const char *name, long n, double seconds, double per_op_ns,
                const char *extra_fmt, ...)
{
    printf("name=%s n=%ld seconds=%.6f per_op_ns=%.1f", name, n, seconds, per_op_ns);
    if (extra_fmt != NULL) {
        va_list ap;
        va_start(ap, extra_fmt);
        vprintf(extra_fmt, ap);
        va_end(ap);
    }
    printf(" rss_kb=%ld peak_rss_kb=%ld\n", bench_rss_kb(), bench_hwm_kb());
    fflush(stdout);
}
