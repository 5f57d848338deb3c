/* arbor stress programs: shared helpers (header only; each program is one .c with main).
 *
 * Every program takes an optional seed (argv[1]), prints "seed=N" first, derives all its
 * randomness from it, and on any broken invariant prints "FAIL: ..." with the seed and
 * exits non-zero. Every wait has a deadline, and a watchdog thread ends a program that
 * stops making progress, so a stress run fails instead of hanging CI.
 */
#ifndef ARBOR_STRESS_UTIL_H
#define ARBOR_STRESS_UTIL_H

#include <arbor.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ThreadSanitizer makes everything about ten times slower: deadlines stretch with it. */
#if defined(__SANITIZE_THREAD__)
#define ST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ST_TSAN 1
#endif
#endif
#ifndef ST_TSAN
#define ST_TSAN 0
#endif

/* Bound of any single wait for an event, and of a whole program run (a program that
 * runs longer by design defines its own ST_WATCHDOG_S before including this header). */
#define ST_WAIT_MS (ST_TSAN ? 40000 : 15000)
#ifndef ST_WATCHDOG_S
#define ST_WATCHDOG_S (ST_TSAN ? 55 : 30)
#endif
/* How many violations are printed in full before only counting them. */
#define ST_MAX_PRINTED 20

/* Relaxed accesses: for counters and flags whose ordering comes from an explicit
 * acquire/release pair elsewhere, or from a thread join. */
#define st_get(p) atomic_load_explicit((p), memory_order_relaxed)
#define st_set(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)

static uint64_t st_seed_value;
/* Optional: prints what the program was waiting for, before a hang is reported. */
static void (*st_hang_report)(void);
static const char *st_prog = "stress";
static atomic_ulong st_violations;

static inline uint64_t st_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t st_now_ms(void)
{
    return st_now_ns() / 1000000u;
}

static inline void st_nap_us(unsigned us)
{
    struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Prints the failure with the seed that replays it and ends the program at once (no
 * atexit handlers: other threads may still be inside the runtime). */
static inline void __attribute__((noreturn, format(printf, 1, 2))) st_fail(const char *fmt, ...)
{
    va_list ap;
    flockfile(stderr);
    fprintf(stderr, "FAIL: %s: ", st_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (replay: %s %" PRIu64 ")\n", st_prog, st_seed_value);
    funlockfile(stderr);
    fflush(stdout);
    _exit(1);
}

/* Records a broken invariant seen inside the runtime's threads; main checks the count
 * at the end (st_finish). The first few are printed in full. */
static inline void __attribute__((format(printf, 1, 2))) st_violation(const char *fmt, ...)
{
    unsigned long n = atomic_fetch_add_explicit(&st_violations, 1, memory_order_relaxed);
    if (n >= ST_MAX_PRINTED) return;
    va_list ap;
    flockfile(stderr);
    fprintf(stderr, "VIOLATION: %s: ", st_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    funlockfile(stderr);
}

#define ST_CHECK(cond, ...)                                                             \
    do {                                                                                \
        if (!(cond)) st_violation(__VA_ARGS__);                                         \
    } while (0)

/* Fails unless an arbor call returned what was expected. */
#define ST_EXPECT_RC(rc, want, what)                                                    \
    do {                                                                                \
        int st_rc_ = (rc);                                                              \
        if (st_rc_ != (want))                                                           \
            st_fail("%s returned %s (%d), expected %s", (what), ar_err_name(st_rc_),    \
                    st_rc_, ar_err_name(want));                                         \
    } while (0)

/* Polls cond (which must read atomics) until it holds; fails after ST_WAIT_MS. The first
 * argument after cond is a string literal format. */
#define ST_WAIT(cond, ...)                                                              \
    do {                                                                                \
        uint64_t st_dl_ = st_now_ms() + ST_WAIT_MS;                                     \
        while (!(cond)) {                                                               \
            if (st_now_ms() > st_dl_) {                                                 \
                if (st_hang_report) st_hang_report();                                   \
                st_fail("timed out waiting for: " __VA_ARGS__);                         \
            }                                                                           \
            st_nap_us(200);                                                             \
        }                                                                               \
    } while (0)

/* ---- deterministic randomness: splitmix64, one state per actor ---------------------- */
typedef struct st_rng {
    uint64_t s;
} st_rng_t;

static inline uint64_t st_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* An independent stream for actor `who` of this run. */
static inline st_rng_t st_rng_for(uint64_t who)
{
    st_rng_t r = {st_mix64(st_seed_value ^ st_mix64(who + 0x9e3779b97f4a7c15ull))};
    return r;
}

static inline uint64_t st_next(st_rng_t *r)
{
    r->s += 0x9e3779b97f4a7c15ull;
    return st_mix64(r->s);
}

/* Uniform in [0, n); n > 0. */
static inline uint64_t st_below(st_rng_t *r, uint64_t n)
{
    return st_next(r) % n;
}

/* Uniform in [lo, hi]. */
static inline uint64_t st_range(st_rng_t *r, uint64_t lo, uint64_t hi)
{
    return lo + st_below(r, hi - lo + 1);
}

/* True with probability pct/100. */
static inline bool st_chance(st_rng_t *r, unsigned pct)
{
    return st_below(r, 100) < pct;
}

/* ---- watchdog --------------------------------------------------------------------- */
static inline void *st_watchdog_main(void *arg)
{
    uint64_t deadline = st_now_ms() + (uint64_t)(uintptr_t)arg * 1000u;
    while (st_now_ms() < deadline) st_nap_us(100000);
    if (st_hang_report) st_hang_report();
    st_fail("watchdog: still running after %u s (a hang or a lost event)",
            (unsigned)(uintptr_t)arg);
}

/* Parses the seed, prints it first, and starts the watchdog. */
static inline uint64_t st_begin(const char *prog, int argc, char **argv)
{
    st_prog = prog;
    if (argc > 1) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(argv[1], &end, 0);
        if (errno != 0 || end == argv[1] || *end != '\0') {
            fprintf(stderr, "usage: %s [seed]\n", prog);
            exit(2);
        }
        st_seed_value = (uint64_t)v;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        st_seed_value = st_mix64((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec
                                 + (uint64_t)getpid()) % 1000000000000ull;
    }
    printf("seed=%" PRIu64 "\n", st_seed_value);
    fflush(stdout);
    pthread_t t;
    if (pthread_create(&t, NULL, st_watchdog_main, (void *)(uintptr_t)ST_WATCHDOG_S) != 0)
        st_fail("cannot start the watchdog thread");
    pthread_detach(t);
    return st_seed_value;
}

/* Ends the program: 1 if any violation was recorded, else 0. */
static inline int st_finish(uint64_t start_ms)
{
    unsigned long v = atomic_load_explicit(&st_violations, memory_order_relaxed);
    if (v != 0) {
        fprintf(stderr, "FAIL: %s: %lu invariant violation(s) (replay: %s %" PRIu64 ")\n",
                st_prog, v, st_prog, st_seed_value);
        fflush(stdout);
        return 1;
    }
    printf("%s: ok in %" PRIu64 " ms\n", st_prog, st_now_ms() - start_ms);
    fflush(stdout);
    return 0;
}

/* ---- a counting allocator: every runtime block must be freed by ar_node_stop ---------- */
/* (accessors, so programs that do not use it carry no unused static) */
static inline atomic_long *st_live_blocks(void)
{
    static atomic_long live;
    return &live;
}

static inline void *st_count_malloc(size_t n, void *ud)
{
    (void)ud;
    void *p = malloc(n);
    if (p) atomic_fetch_add_explicit(st_live_blocks(), 1, memory_order_relaxed);
    return p;
}

static inline void *st_count_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    void *q = realloc(p, n);
    if (p == NULL && q != NULL) atomic_fetch_add_explicit(st_live_blocks(), 1, memory_order_relaxed);
    if (p != NULL && n == 0 && q == NULL)
        atomic_fetch_sub_explicit(st_live_blocks(), 1, memory_order_relaxed);
    return q;
}

static inline void st_count_free(void *p, void *ud)
{
    (void)ud;
    if (p) atomic_fetch_sub_explicit(st_live_blocks(), 1, memory_order_relaxed);
    free(p);
}

static inline const ar_allocator_t *st_counting_allocator(void)
{
    static const ar_allocator_t a = {st_count_malloc, st_count_realloc, st_count_free, NULL};
    return &a;
}

/* ---- arbor helpers ------------------------------------------------------------------ */
static inline ar_node_t *st_node_start(unsigned schedulers)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = schedulers;
    cfg.crash_reports_off = true; /* crashes are the point here: no report for each */
    ar_node_t *node = NULL;
    int rc = ar_node_start(&cfg, &node);
    if (rc != 0 || node == NULL) st_fail("ar_node_start: %s", ar_err_name(rc));
    return node;
}

/* A printable pid, in a caller-provided buffer. */
static inline const char *st_pid_str(ar_pid_t p, char buf[AR_PID_STRLEN])
{
    if (ar_pid_format(p, buf, AR_PID_STRLEN) != 0) snprintf(buf, AR_PID_STRLEN, "<bad pid>");
    return buf;
}

static inline void st_start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    if (pthread_create(t, NULL, fn, arg) != 0) st_fail("pthread_create failed");
}

static inline void st_join(pthread_t t)
{
    if (pthread_join(t, NULL) != 0) st_fail("pthread_join failed");
}

#endif /* ARBOR_STRESS_UTIL_H */
