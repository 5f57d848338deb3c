/* arbor benchmarks: shared helpers.
 *
 * Every workload starts its own node (two schedulers), does a warm-up run and a timed
 * run of the same work as the Erlang/OTP and CAF programs it is compared with, checks
 * that the work really happened, and prints exactly one line on stdout:
 *   name=WORKLOAD n=COUNT seconds=S per_op_ns=NS [key=value ...] rss_kb=KB
 * Diagnostics go to stderr. A failed check ends the program with status 1: a number
 * from work that did not happen is worse than no number.
 */
#ifndef ARBOR_BENCH_UTIL_H
#define ARBOR_BENCH_UTIL_H

#include <arbor.h>

#include <semaphore.h>
#include <stdint.h>
#include <string.h>

/* Command-line overrides; 0 (and call_timeout_set false) means "the default". */
typedef struct bench_opts {
    long n;              /* main count of the workload (fan_in: messages per sender) */
    long procs;          /* ring size, fan_in senders */
    int call_timeout_ms; /* gen_server_call's ar_call timeout */
    bool call_timeout_set;
} bench_opts_t;

/* One function per workload; 0 on success (a failed check does not return). */
int bench_spawn_exit(const bench_opts_t *o);
/* spawn_exit's workload, for the benchmarks that add something to it (spawn_exit_events):
 * one spawner process spawns n children that end in init; the nanoseconds from the first
 * spawn until every child has ended. A run is freed only after its node stopped (the last
 * child still touches it as it wakes the caller). */
typedef struct bench_se_run bench_se_run_t;
bench_se_run_t *bench_spawn_exit_alloc(void);
uint64_t bench_spawn_exit_run(ar_node_t *node, bench_se_run_t *run, long n);
void bench_spawn_exit_free(bench_se_run_t *run);
int bench_spawn_idle_memory(const bench_opts_t *o);
int bench_ping_pong(const bench_opts_t *o);
int bench_ring(const bench_opts_t *o);
int bench_fan_in(const bench_opts_t *o);
int bench_gen_server_call(const bench_opts_t *o);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);
/* VmRSS / VmHWM of this process from /proc/self/status, in KiB (-1 if unreadable). */
long bench_rss_kb(void);
long bench_hwm_kb(void);

/* A node with two scheduler threads, as every peer runs with; fails hard on error. */
ar_node_t *bench_node_start(void);
/* Stops the node; a failure is reported on stderr (the measurement is already done). */
void bench_node_stop(ar_node_t *node, const char *workload);

/* Prints "arbor_bench: file:line: message" on stderr and ends the program (status 1).
 * Safe from any thread, processes included: stdout is flushed first. */
_Noreturn void bench_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define BENCH_CHECK(cond, ...)                                  \
    do {                                                        \
        if (!(cond)) bench_fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

/* Completion signal from a process to the main thread. The process posts once when the
 * timed work is over (its own clock reading is the end time), so the wake-up of main
 * is never inside the measurement. */
typedef struct bench_signal {
    sem_t sem;
} bench_signal_t;
void bench_signal_init(bench_signal_t *s);
void bench_signal_destroy(bench_signal_t *s);
void bench_signal_post(bench_signal_t *s);
/* Waits up to BENCH_WAIT_S seconds; a timeout fails the program naming `what`. */
void bench_signal_wait(bench_signal_t *s, const char *what);
#define BENCH_WAIT_S 300

/* The result line: the fixed fields, then extra_fmt (" key=value ..." pairs, may be
 * NULL), then rss_kb and peak_rss_kb. Flushed at once. */
void bench_emit(const char *name, long n, double seconds, double per_op_ns,
                const char *extra_fmt, ...) __attribute__((format(printf, 5, 6)));

/* Small integer payloads, as the peers send one small term. */
static inline int64_t bench_msg_i64(const ar_msg_t *m)
{
    int64_t v;
    BENCH_CHECK(m->len == sizeof v && m->data != NULL, "payload of %zu bytes, want %zu",
                m->len, sizeof v);
    memcpy(&v, m->data, sizeof v);
    return v;
}

#define BENCH_ERR(rc) ar_err_name(rc)

#endif
