/* ring: P processes in a ring pass one token H hops. A master process builds the ring
 * (spawns P nodes, then tells each its successor with a message), then for each run sends
 * the token with H hops to go to the first node; the node that receives it at 0 tells the
 * master, which stamps the end time. Per hop. Mirrors erlang/ring.erl (one ring, a pass
 * of H/10 as warm-up, then H). The token also counts its hops, and the node that ends
 * the pass must be node H mod P: a lost or doubled hop fails the run. */
#include "bench_util.h"

#include <stdlib.h>

enum { TAG_BUILD = 1, TAG_PASS, TAG_NEXT, TAG_TOKEN, TAG_DONE };

struct ring_run;
typedef struct ring_slot { /* one node's state */
    ar_pid_t next;
    struct ring_run *ring;
} ring_slot_t;

typedef struct token {
    int64_t left, hops;
} token_t;

typedef struct ring_run {
    long procs;
    ar_pid_t master;
    ar_pid_t *pids;
    ring_slot_t *slots;
    uint64_t build_ns;
    /* the current pass, the master's */
    long hops;
    long dones;
    int64_t done_hops;
    ar_pid_t done_from;
    uint64_t t0, t1;
    bench_signal_t done;
} ring_run_t;

static int keep_arg(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void node_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ring_slot_t *slot = state;
    ar_node_t *node = ar_node(self);
    int rc;
    if (m->tag == TAG_NEXT) {
        BENCH_CHECK(m->len == sizeof slot->next, "ring: bad next");
        memcpy(&slot->next, m->data, sizeof slot->next);
        return;
    }
    BENCH_CHECK(m->kind == AR_MSG_CAST && m->tag == TAG_TOKEN && m->len == sizeof(token_t),
                "ring: node got tag %u", m->tag);
    /* Field by field: one 16-byte copy to the stack and a 16-byte add read back would
     * stall on store forwarding, a cost of this program rather than of the runtime. */
    int64_t left, hops;
    memcpy(&left, m->data, sizeof left);
    memcpy(&hops, (const char *)m->data + sizeof left, sizeof hops);
    if (left == 0) {
        rc = ar_send(node, slot->ring->master, TAG_DONE, &hops, sizeof hops);
    } else {
        BENCH_CHECK(!ar_pid_is_none(slot->next), "ring: token arrived before the successor");
        token_t t = {.left = left - 1, .hops = hops + 1};
        rc = ar_send(node, slot->next, TAG_TOKEN, &t, sizeof t);
    }
    BENCH_CHECK(rc == 0, "ring: node send: %s", BENCH_ERR(rc));
}

static const ar_behaviour_t node_b = {
    .name = "ring_node",
    .init = keep_arg,
    .handle = node_handle,
};

static void master_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    ring_run_t *r = state;
    ar_node_t *node = ar_node(self);
    int rc;
    switch (m->tag) {
    case TAG_BUILD: {
        uint64_t t0 = bench_now_ns();
        for (long i = 0; i < r->procs; i++) {
            r->slots[i].ring = r;
            rc = ar_spawn(node, &node_b, &r->slots[i], NULL, &r->pids[i]);
            BENCH_CHECK(rc == 0, "ring: spawn node #%ld: %s", i, BENCH_ERR(rc));
        }
        for (long i = 0; i < r->procs; i++) {
            ar_pid_t next = r->pids[(i + 1) % r->procs];
            rc = ar_send(node, r->pids[i], TAG_NEXT, &next, sizeof next);
            BENCH_CHECK(rc == 0, "ring: send next: %s", BENCH_ERR(rc));
        }
        r->build_ns = bench_now_ns() - t0;
        bench_signal_post(&r->done);
        break;
    }
    case TAG_PASS: {
        token_t t = {.left = r->hops, .hops = 0};
        r->t0 = bench_now_ns();
        rc = ar_send(node, r->pids[0], TAG_TOKEN, &t, sizeof t);
        BENCH_CHECK(rc == 0, "ring: send token: %s", BENCH_ERR(rc));
        break;
    }
    case TAG_DONE:
        r->t1 = bench_now_ns();
        r->done_hops = bench_msg_i64(m);
        r->done_from = m->from;
        r->dones++;
        bench_signal_post(&r->done);
        break;
    default:
        bench_fail(__FILE__, __LINE__, "ring: master got tag %u", m->tag);
    }
}

static const ar_behaviour_t master_b = {
    .name = "ring_master",
    .init = keep_arg,
    .handle = master_handle,
};

static uint64_t pass(ar_node_t *node, ring_run_t *r, long hops)
{
    r->hops = hops;
    r->dones = 0;
    int rc = ar_send(node, r->master, TAG_PASS, NULL, 0);
    BENCH_CHECK(rc == 0, "ring: send pass: %s", BENCH_ERR(rc));
    bench_signal_wait(&r->done, "ring: passing the token");
    BENCH_CHECK(r->dones == 1, "ring: %ld done messages", r->dones);
    BENCH_CHECK(r->done_hops == hops, "ring: token made %lld hops, want %ld",
                (long long)r->done_hops, hops);
    BENCH_CHECK(ar_pid_eq(r->done_from, r->pids[hops % r->procs]),
                "ring: the pass ended at the wrong node");
    return r->t1 - r->t0;
}

int bench_ring(const bench_opts_t *o)
{
    long hops = o->n > 0 ? o->n : 1000000;
    long procs = o->procs > 0 ? o->procs : 10000;
    ar_node_t *node = bench_node_start();
    ring_run_t *r = calloc(1, sizeof *r);
    BENCH_CHECK(r != NULL, "out of memory");
    r->procs = procs;
    r->pids = calloc((size_t)procs, sizeof *r->pids);
    r->slots = calloc((size_t)procs, sizeof *r->slots);
    BENCH_CHECK(r->pids != NULL && r->slots != NULL, "out of memory");
    bench_signal_init(&r->done);
    int rc = ar_spawn(node, &master_b, r, NULL, &r->master);
    BENCH_CHECK(rc == 0, "ring: spawn master: %s", BENCH_ERR(rc));
    rc = ar_send(node, r->master, TAG_BUILD, NULL, 0);
    BENCH_CHECK(rc == 0, "ring: send build: %s", BENCH_ERR(rc));
    bench_signal_wait(&r->done, "ring: building");

    if (hops / 10 > 0) pass(node, r, hops / 10);
    uint64_t ns = pass(node, r, hops);
    double s = (double)ns / 1e9;
    bench_emit("ring", hops, s, (double)ns / (double)hops,
               " procs=%ld hops_per_s=%.0f build_ns_per_proc=%.1f", procs, (double)hops / s,
               (double)r->build_ns / (double)procs);
    bench_node_stop(node, "ring");
    bench_signal_destroy(&r->done);
    free(r->pids);
    free(r->slots);
    free(r);
    return 0;
}
