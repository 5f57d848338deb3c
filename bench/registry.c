/* Keyed registry workloads, as ../bench's registry.erl (an ETS table read by callers and a
 * registry process for misses, the way Elixir's Registry and gproc work):
 *   registry_get_or_spawn: one client process gets-or-spawns N distinct keys, each a new
 *     idle entry. Per key. bytes_per_entry is the VmRSS growth over the timed run divided
 *     by N: the entry's process and its registry record together.
 *   registry_send: K live keys (-p, default 10,000); one client process sends N messages
 *     round-robin through the registry; timed until every entry has counted its share.
 *     Per message.
 * registry_get_or_spawn's registry has a reaper (idle_ms of a minute, so nothing is due
 * during the run): each entry carries its idle tick, as a user's would, and its memory
 * counts in bytes_per_entry. The Erlang registry has no reaper at all.
 */
#include "bench_util.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

enum { TAG_GO = 1, TAG_MSG };
#define REAP_AFTER_MS 60000

typedef struct reg_run {
    long n, keys, per;
    char (*key)[16];      /* registry_send: the keys, made before the clock starts */
    unsigned char *keylen;
    ar_registry_t *reg;
    _Atomic long counted; /* entries that have their share */
    uint64_t t0, t1;
    _Atomic uint64_t t_last;
    bench_signal_t done;
} reg_run_t;

static int key_of(long i, char *buf) { return snprintf(buf, 32, "key-%ld", i); }

/* ---- entries ---- */
static int idle_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    (void)arg;
    *state = NULL;
    return 0;
}
static void idle_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    (void)m;
}
static const ar_behaviour_t idle_entry_b = {"idle_entry", idle_init, idle_handle, NULL};

typedef struct counter {
    long count;
    reg_run_t *run;
} counter_t;
static int counter_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    counter_t *c = calloc(1, sizeof *c);
    if (!c) return AR_ENOMEM;
    c->run = ((const ar_registry_arg_t *)arg)->arg;
    *state = c;
    return 0;
}
static void counter_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    counter_t *c = state;
    if (m->tag != TAG_MSG) return;
    if (++c->count == c->run->per &&
        atomic_fetch_add(&c->run->counted, 1) + 1 == c->run->keys) {
        c->run->t1 = bench_now_ns();
        bench_signal_post(&c->run->done);
    }
}
static void counter_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    (void)why;
    free(state);
}
static const ar_behaviour_t counter_b = {"counter_entry", counter_init, counter_handle,
                                         counter_terminate};

/* ---- clients ---- */
static int keep_arg(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void gos_client(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    reg_run_t *r = state;
    (void)m;
    char key[32];
    r->t0 = bench_now_ns();
    for (long i = r->n; i > 0; i--) {
        int len = key_of(i, key);
        ar_pid_t pid;
        int rc = ar_registry_get_or_spawn(r->reg, (ar_key_t){key, (size_t)len}, &pid);
        BENCH_CHECK(rc == 0, "registry_get_or_spawn: %s: %s", key, BENCH_ERR(rc));
    }
    r->t1 = bench_now_ns();
    bench_signal_post(&r->done);
    ar_stop(self, AR_REASON(AR_NORMAL));
}
static const ar_behaviour_t gos_client_b = {"gos_client", keep_arg, gos_client, NULL};

static void send_client(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    reg_run_t *r = state;
    (void)m;
    long total = r->per * r->keys;
    r->t0 = bench_now_ns();
    for (long i = total; i > 0; i--) {
        long k = i % r->keys;
        int64_t v = i;
        int rc = ar_registry_send(r->reg, (ar_key_t){r->key[k], r->keylen[k]}, TAG_MSG, &v, sizeof v);
        BENCH_CHECK(rc == 0, "registry_send: %s: %s", r->key[k], BENCH_ERR(rc));
    }
    ar_stop(self, AR_REASON(AR_NORMAL));
}
static const ar_behaviour_t send_client_b = {"send_client", keep_arg, send_client, NULL};

static void run_client(ar_node_t *node, const ar_behaviour_t *b, reg_run_t *r)
{
    ar_pid_t client;
    int rc = ar_spawn(node, b, r, NULL, &client);
    BENCH_CHECK(rc == 0, "registry: spawn client: %s", BENCH_ERR(rc));
    rc = ar_send(node, client, TAG_GO, NULL, 0);
    BENCH_CHECK(rc == 0, "registry: send go: %s", BENCH_ERR(rc));
    bench_signal_wait(&r->done, "registry: client");
}

static ar_registry_t *registry(ar_node_t *node, const ar_behaviour_t *b, void *arg, int idle_ms)
{
    ar_registry_config_t cfg = {.behaviour = b, .arg = arg, .idle_ms = idle_ms};
    ar_registry_t *reg;
    int rc = ar_registry_start(node, &cfg, &reg);
    BENCH_CHECK(rc == 0, "registry: start: %s", BENCH_ERR(rc));
    return reg;
}

static uint64_t gos_run(ar_node_t *node, long n, long *rss_delta_kb)
{
    reg_run_t r = {.n = n};
    bench_signal_init(&r.done);
    r.reg = registry(node, &idle_entry_b, NULL, REAP_AFTER_MS);
    long rss0 = bench_rss_kb();
    run_client(node, &gos_client_b, &r);
    long rss1 = bench_rss_kb();
    if (rss_delta_kb) *rss_delta_kb = rss1 - rss0;
    BENCH_CHECK(ar_registry_count(r.reg) == (size_t)n, "registry_get_or_spawn: %zu keys, want %ld",
                ar_registry_count(r.reg), n);
    ar_registry_stop(r.reg);
    bench_signal_destroy(&r.done);
    return r.t1 - r.t0;
}

int bench_registry_get_or_spawn(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    ar_node_t *node = bench_node_start();
    if (n / 10 > 0) gos_run(node, n / 10, NULL);
    long delta_kb = 0;
    uint64_t ns = gos_run(node, n, &delta_kb);
    bench_emit("registry_get_or_spawn", n, (double)ns / 1e9, (double)ns / (double)n,
               " bytes_per_entry=%.1f", (double)delta_kb * 1024.0 / (double)n);
    bench_node_stop(node, "registry_get_or_spawn");
    return 0;
}

static uint64_t send_run(ar_node_t *node, long keys, long n)
{
    reg_run_t *r = calloc(1, sizeof *r);
    BENCH_CHECK(r != NULL, "out of memory");
    r->keys = keys;
    r->per = n / keys;
    bench_signal_init(&r->done);
    r->reg = registry(node, &counter_b, r, 0);
    r->key = calloc((size_t)keys, sizeof *r->key);
    r->keylen = calloc((size_t)keys, 1);
    BENCH_CHECK(r->key && r->keylen, "out of memory");
    for (long i = 0; i < keys; i++) { /* the keys are live before the clock starts */
        r->keylen[i] = (unsigned char)snprintf(r->key[i], sizeof r->key[i], "key-%ld", i + 1);
        int rc = ar_registry_get_or_spawn(r->reg, (ar_key_t){r->key[i], r->keylen[i]}, NULL);
        BENCH_CHECK(rc == 0, "registry_send: start %s: %s", r->key[i], BENCH_ERR(rc));
    }
    run_client(node, &send_client_b, r);
    BENCH_CHECK(atomic_load(&r->counted) == keys, "registry_send: %ld entries counted their share",
                atomic_load(&r->counted));
    uint64_t ns = r->t1 - r->t0;
    ar_registry_stop(r->reg);
    bench_signal_destroy(&r->done);
    free(r->key);
    free(r->keylen);
    free(r);
    return ns;
}

int bench_registry_send(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 1000000;
    long keys = o->procs > 0 ? o->procs : 10000;
    BENCH_CHECK(n >= keys, "registry_send: fewer messages than keys");
    ar_node_t *node = bench_node_start();
    if (n / 10 >= keys) send_run(node, keys, n / 10);
    uint64_t ns = send_run(node, keys, n);
    long sent = n / keys * keys;
    double s = (double)ns / 1e9;
    bench_emit("registry_send", sent, s, (double)ns / (double)sent, " keys=%ld msgs_per_s=%.0f",
               keys, (double)sent / s);
    bench_node_stop(node, "registry_send");
    return 0;
}
