/* Shared helpers for the arbor test suite.
 *
 * Every test runs in its own child process (Criterion), so file-level statics and the
 * global allocator hook start fresh in each test. Assertions are made only on the test's
 * own thread: handlers record what they saw and the test thread checks it, waiting on the
 * event itself (an atomic counter, a semaphore, a reply) with a bounded deadline.
 */
#ifndef ARBOR_TEST_HELPERS_H
#define ARBOR_TEST_HELPERS_H

#include <arbor.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* .timeout of every test, seconds. One value for all: Criterion 2.4.1's runner, with
 * --jobs above 1, leaks a record for each test whose timeout had not run out when the run
 * ended, which LeakSanitizer (make asan) rightly reports. */
#define TH_TIMEOUT 30.0
#define TH_WAIT_MS 15000 /* bound on waiting for any single event */
#define TH_STOP_MS 15000 /* ar_node_stop timeout used by the helpers */

/* ---- Time and waiting -------------------------------------------------------------- */
static inline uint64_t th_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline double th_ms_since(uint64_t t0_ns)
{
    return (double)(th_now_ns() - t0_ns) / 1e6;
}

/* One short pause between polls of an atomic: keeps a 2-core machine free for the
 * schedulers while the test thread waits for an event. */
static inline void th_nap(void)
{
    struct timespec ts = {0, 100 * 1000};
    nanosleep(&ts, NULL);
}

/* ---- Table rows ----------------------------------------------------------------------
 * A table-driven test runs one row per process (ParameterizedTest) or loops over rows.
 * Criterion copies a row into a freshly executed child, so rows hold plain data only
 * (char arrays, numbers, enums): never pointers. th_row_begin names the row for every
 * failure message of the helpers (and for --verbose, which shows it before a timeout);
 * drivers start their own messages with it too (TH_AT below). */
static const char *th_row __attribute__((unused)) = "";

/* A failure message's prefix, "row: " (nothing outside a row): cr_assert(c, TH_AT "...",
 * TH_ROW, ...). */
#define TH_AT "%s%s"
#define TH_ROW th_row, (*th_row ? ": " : "")

/* A ParameterizedTestParameters body's result: every row of a static array. */
#define TH_ROWS(type, rows) cr_make_param_array(type, rows, sizeof(rows) / sizeof((rows)[0]))

static inline void th_row_begin(const char *name)
{
    th_row = name;
    cr_log_info("row %s", name);
}

/* Waits until cond holds; fails the test after TH_WAIT_MS. */
#define th_await(cond)                                                                  \
    do {                                                                                \
        uint64_t th_deadline_ = th_now_ns() + (uint64_t)TH_WAIT_MS * 1000000u;          \
        while (!(cond)) {                                                               \
            cr_assert(th_now_ns() < th_deadline_, TH_AT "timed out waiting for: %s",    \
                      TH_ROW, #cond);                                                   \
            th_nap();                                                                   \
        }                                                                               \
    } while (0)

/* sem_wait with a deadline in milliseconds; true when the semaphore was taken. */
static inline bool th_sem_wait(sem_t *s, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    int rc;
    while ((rc = sem_timedwait(s, &ts)) == -1 && errno == EINTR) {
    }
    return rc == 0;
}

#define th_sem_take(s)                                                                  \
    cr_assert(th_sem_wait((s), TH_WAIT_MS), TH_AT "timed out waiting on " #s, TH_ROW)

/* ---- Nodes ------------------------------------------------------------------------- */
/* Starts a node from cfg (NULL: defaults). Crash reports are off unless cfg sends them to
 * a crash_log: a test that crashes processes on purpose prints nothing. */
static inline ar_node_t *th_node_cfg(const ar_node_config_t *cfg)
{
    ar_node_config_t c;
    if (cfg)
        c = *cfg;
    else
        ar_node_config_init(&c);
    if (!c.crash_log) c.crash_reports_off = true;
    ar_node_t *node = NULL;
    int rc = ar_node_start(&c, &node);
    cr_assert_eq(rc, 0, "ar_node_start: %s", ar_err_name(rc));
    cr_assert_not_null(node);
    return node;
}

/* Starts a node with n scheduler threads. */
static inline ar_node_t *th_node(unsigned schedulers)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = schedulers;
    return th_node_cfg(&cfg);
}

static inline void th_node_stop(ar_node_t *node)
{
    int rc = ar_node_stop(node, TH_STOP_MS);
    cr_assert_eq(rc, 0, "ar_node_stop: %s", ar_err_name(rc));
}

static inline ar_pid_t th_spawn(ar_node_t *node, const ar_behaviour_t *b, void *arg)
{
    ar_pid_t pid = AR_PID_NONE;
    int rc = ar_spawn(node, b, arg, NULL, &pid);
    cr_assert_eq(rc, 0, "ar_spawn(%s): %s", b->name, ar_err_name(rc));
    cr_assert(!ar_pid_is_none(pid));
    return pid;
}

static inline void th_send(ar_node_t *node, ar_pid_t to, uint32_t tag, const void *d,
                           size_t n)
{
    int rc = ar_send(node, to, tag, d, n);
    cr_assert_eq(rc, 0, "ar_send: %s", ar_err_name(rc));
}

static inline ar_node_stats_t th_stats(ar_node_t *node)
{
    ar_node_stats_t s;
    memset(&s, 0, sizeof s);
    ar_node_stats(node, &s);
    return s;
}

static inline bool th_proc_alive(ar_node_t *node, ar_pid_t pid)
{
    ar_proc_info_t info;
    return ar_proc_info(node, pid, &info) == 0;
}

static inline bool th_proc_blocked(ar_node_t *node, ar_pid_t pid)
{
    ar_proc_info_t info;
    return ar_proc_info(node, pid, &info) == 0 && info.blocked;
}

/* Total order on pids, for sorting and finding duplicates. */
static inline int th_pid_cmp(const void *a, const void *b)
{
    const ar_pid_t *x = a, *y = b;
    if (x->hi != y->hi) return x->hi < y->hi ? -1 : 1;
    if (x->lo != y->lo) return x->lo < y->lo ? -1 : 1;
    return 0;
}

/* ---- Reason texts ------------------------------------------------------------------ */
/* Copies a reason's text (NULL: "") without the " at <file>:<line>" that AR_FAIL and
 * AR_ASSERT end it with, so a test compares what the process said; test_proc checks the
 * place itself. */
static inline void th_reason_text(char *buf, size_t n, const char *text)
{
    snprintf(buf, n, "%s", text ? text : "");
    char *at = strstr(buf, " at ");
    while (at) {
        char *next = strstr(at + 1, " at ");
        if (!next) break;
        at = next;
    }
    if (!at) return;
    const char *colon = strrchr(at, ':');
    if (colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1) &&
        colon - at > 4 && strncmp(colon - 2, ".c", 2) == 0)
        *at = '\0';
}

/* ---- A counting allocator with one-shot failure injection -------------------------- */
typedef struct th_alloc {
    ar_allocator_t hook; /* handed to ar_set_allocator */
    atomic_long live;    /* blocks handed out and not yet freed */
    atomic_long total;   /* successful malloc/realloc(NULL) since install */
    atomic_long calls;   /* malloc + realloc calls since arming */
    atomic_long fail_at; /* 0: never fail; n: the n-th call after arming fails, once */
    atomic_long failed;  /* failures injected since arming */
} th_alloc_t;

static inline bool th_alloc_fail_now(th_alloc_t *a)
{
    long f = atomic_load(&a->fail_at);
    if (f <= 0) return false;
    long n = atomic_fetch_add(&a->calls, 1) + 1;
    if (n != f) return false;
    atomic_fetch_add(&a->failed, 1);
    return true;
}

static inline void *th_alloc_malloc(size_t size, void *ud)
{
    th_alloc_t *a = ud;
    if (th_alloc_fail_now(a)) return NULL;
    void *p = malloc(size ? size : 1);
    if (p) {
        atomic_fetch_add(&a->live, 1);
        atomic_fetch_add(&a->total, 1);
    }
    return p;
}

static inline void *th_alloc_realloc(void *p, size_t size, void *ud)
{
    th_alloc_t *a = ud;
    if (th_alloc_fail_now(a)) return NULL;
    void *q = realloc(p, size ? size : 1);
    if (q && !p) {
        atomic_fetch_add(&a->live, 1);
        atomic_fetch_add(&a->total, 1);
    }
    return q;
}

static inline void th_alloc_free(void *p, void *ud)
{
    th_alloc_t *a = ud;
    if (!p) return;
    atomic_fetch_sub(&a->live, 1);
    free(p);
}

/* Installs a as the runtime's allocator (no node may be running). */
static inline void th_alloc_install(th_alloc_t *a)
{
    memset(a, 0, sizeof *a);
    a->hook.malloc = th_alloc_malloc;
    a->hook.realloc = th_alloc_realloc;
    a->hook.free = th_alloc_free;
    a->hook.ud = a;
    int rc = ar_set_allocator(&a->hook);
    cr_assert_eq(rc, 0, "ar_set_allocator: %s", ar_err_name(rc));
}

/* Makes the n-th allocation from now fail (once). */
static inline void th_alloc_arm(th_alloc_t *a, long n)
{
    atomic_store(&a->fail_at, 0);
    atomic_store(&a->calls, 0);
    atomic_store(&a->failed, 0);
    atomic_store(&a->fail_at, n);
}

/* Stops injecting; true when the armed failure was injected. */
static inline bool th_alloc_disarm(th_alloc_t *a)
{
    atomic_store(&a->fail_at, 0);
    return atomic_load(&a->failed) > 0;
}

/* ---- A recording process ------------------------------------------------------------
 * th_recorder logs every message it handles into the th_log_t given as spawn arg, and
 * its terminate reason. A CALL tagged TH_TAG_SYNC is not logged: it is answered with the
 * number of entries logged so far (a size_t), which makes a FIFO barrier for a sender. */
#define TH_TAG_SYNC 0xFFFF0001u
#define TH_LOG_CAP 1024
#define TH_DATA_MAX 64

typedef struct th_entry {
    ar_msg_kind_t kind;
    uint32_t tag;
    ar_pid_t from;
    ar_ref_t ref;
    ar_exit_code_t code;
    size_t len;
    char data[TH_DATA_MAX]; /* first bytes of the payload, NUL-terminated */
} th_entry_t;

typedef struct th_log {
    atomic_size_t n;           /* entries written (release after each) */
    atomic_int inits;          /* init calls */
    atomic_int terminates;     /* terminate calls */
    ar_exit_code_t why;        /* last terminate reason */
    char why_text[256];        /* its text, "" for NULL */
    ar_pid_t self;             /* ar_self() seen in init */
    th_entry_t e[TH_LOG_CAP];
} th_log_t;

static inline void th_log_msg(th_log_t *log, const ar_msg_t *m)
{
    size_t i = atomic_load_explicit(&log->n, memory_order_relaxed);
    if (i >= TH_LOG_CAP) return;
    th_entry_t *e = &log->e[i];
    e->kind = m->kind;
    e->tag = m->tag;
    e->from = m->from;
    e->ref = m->ref;
    e->code = m->reason.code;
    e->len = m->len;
    size_t c = m->len < TH_DATA_MAX - 1 ? m->len : TH_DATA_MAX - 1;
    if (c && m->data) memcpy(e->data, m->data, c);
    e->data[c] = '\0';
    /* release: the entry is complete before the test thread sees the new count */
    atomic_store_explicit(&log->n, i + 1, memory_order_release);
}

static inline void th_log_reason(th_log_t *log, ar_reason_t why)
{
    log->why = why.code;
    th_reason_text(log->why_text, sizeof log->why_text, why.text);
    /* seq_cst: the reason is written before the count is seen */
    atomic_fetch_add(&log->terminates, 1);
}

static inline size_t th_log_len(th_log_t *log)
{
    return atomic_load_explicit(&log->n, memory_order_acquire);
}

static inline int th_rec_init(ar_proc_t *self, void *arg, void **state)
{
    th_log_t *log = arg;
    log->self = ar_self(self);
    atomic_fetch_add(&log->inits, 1);
    *state = log;
    return 0;
}

/* Answers a TH_TAG_SYNC call with the log's length; true when m was one. */
static inline bool th_sync_answer(ar_proc_t *self, th_log_t *log, const ar_msg_t *m)
{
    if (m->kind != AR_MSG_CALL || m->tag != TH_TAG_SYNC) return false;
    size_t n = th_log_len(log);
    ar_reply(ar_node(self), m->reply_to, &n, sizeof n);
    return true;
}

static inline void th_rec_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    th_log_t *log = state;
    if (!th_sync_answer(self, log, m)) th_log_msg(log, m);
}

static inline void th_rec_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    th_log_reason(state, why);
}

static const ar_behaviour_t th_recorder = {
    .name = "th_recorder",
    .init = th_rec_init,
    .handle = th_rec_handle,
    .terminate = th_rec_terminate,
};

/* Waits until everything sent so far from this thread to a recorder was handled, and
 * returns the number of logged entries. */
static inline size_t th_sync(ar_node_t *node, ar_pid_t rec)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, rec, TH_TAG_SYNC, NULL, 0, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "sync call: %s", ar_err_name(rc));
    cr_assert_eq(r.len, sizeof(size_t));
    size_t n;
    memcpy(&n, r.data, sizeof n);
    ar_buf_free(&r);
    return n;
}

/* ---- An echo server -----------------------------------------------------------------
 * Answers every CALL with a copy of its payload; counts the CASTs it handled. */
typedef struct th_echo_state {
    atomic_long casts, calls;
} th_echo_state_t;

static inline int th_echo_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static inline void th_echo_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    th_echo_state_t *st = state;
    if (m->kind == AR_MSG_CALL) {
        if (st) atomic_fetch_add(&st->calls, 1);
        ar_reply(ar_node(self), m->reply_to, m->data, m->len);
    } else if (m->kind == AR_MSG_CAST) {
        if (st) atomic_fetch_add(&st->casts, 1);
    }
}

static const ar_behaviour_t th_echo = {
    .name = "th_echo",
    .init = th_echo_init,
    .handle = th_echo_handle,
};

/* Calls an echo server and checks the answer. */
static inline void th_echo_check(ar_node_t *node, ar_pid_t echo)
{
    static const char q[] = "are you there";
    ar_buf_t r = {0};
    int rc = ar_call(node, echo, 1, q, sizeof q, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, "echo call: %s", ar_err_name(rc));
    cr_assert_eq(r.len, sizeof q);
    cr_assert_arr_eq(r.data, q, sizeof q);
    ar_buf_free(&r);
}

#endif /* ARBOR_TEST_HELPERS_H */
