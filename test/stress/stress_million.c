/* stress_million: a million messages over two schedulers, none lost.
 *
 * Producer processes (some spawned from main, some from another process) and a foreign
 * thread send exactly one million numbered messages in all to one receiver. Every
 * producer throttles itself with an ar_call to the receiver after a random window of
 * casts; since casts and calls from one client are handled in the order sent, the
 * receiver's answer must be exactly the number of casts it has from that producer.
 * Invariants: exact total count, exact sum and xor checksums of the payloads, every
 * producer's sequence in order and complete, every sync answer exact, nothing dropped.
 *
 * Usage: stress_million [seed]
 */
#include "stress_util.h"

#define TOTAL 1000000u
#define N_PROCS 6
#define N_PRODUCERS (N_PROCS + 1) /* producer 0 is the foreign thread */
#define BURST 256
#define WINDOW_MIN 512
#define WINDOW_MAX 4096

enum { TAG_DATA = 1, TAG_SYNC, TAG_GO, TAG_MORE, TAG_SPAWN };

typedef struct data_msg {
    uint32_t producer, seq;
    uint64_t value;
} data_msg_t;

typedef struct producer {
    uint32_t id;
    st_rng_t rng;
    uint32_t quota, next, window_left;
} producer_t;

typedef struct receiver {
    uint64_t count, sum, xor;
    uint32_t next[N_PRODUCERS];
} receiver_t;

static ar_node_t *g_node;
static ar_pid_t g_recv;
static producer_t g_prod[N_PRODUCERS];
static ar_pid_t g_prod_pid[N_PRODUCERS];
static receiver_t g_rs;
static atomic_uint g_done;
static atomic_uint g_producers_done;
static atomic_uint g_spawned;
static atomic_uint g_sched_threads; /* distinct threads that ran a producer */
static atomic_ulong g_syncs;
static _Thread_local bool tl_counted;

static uint64_t value_of(uint32_t producer, uint32_t seq)
{
    return st_mix64(((uint64_t)producer << 32) | seq);
}

/* Throttle: the receiver answers how many casts it has from us; it must be all of them. */
static void sync_with_receiver(producer_t *p)
{
    ar_buf_t reply = {0};
    int rc = ar_call(g_node, g_recv, TAG_SYNC, &p->id, sizeof p->id, &reply, ST_WAIT_MS);
    if (rc != 0) st_fail("producer %u: sync ar_call returned %s", p->id, ar_err_name(rc));
    uint32_t seen = UINT32_MAX;
    if (reply.len == sizeof seen) memcpy(&seen, reply.data, sizeof seen);
    ST_CHECK(seen == p->next, "producer %u: receiver had %u of its messages at sync, sent %u",
             p->id, seen, p->next);
    ar_buf_free(&reply);
    atomic_fetch_add_explicit(&g_syncs, 1, memory_order_relaxed);
    p->window_left = (uint32_t)st_range(&p->rng, WINDOW_MIN, WINDOW_MAX);
}

/* Sends up to n messages; false when the producer's quota is complete. */
static bool produce(producer_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n && p->next < p->quota; i++) {
        data_msg_t msg = {p->id, p->next, value_of(p->id, p->next)};
        int rc = ar_send(g_node, g_recv, TAG_DATA, &msg, sizeof msg);
        if (rc != 0) st_fail("producer %u: ar_send returned %s", p->id, ar_err_name(rc));
        p->next++;
        if (--p->window_left == 0) sync_with_receiver(p);
    }
    return p->next < p->quota;
}

/* ---- receiver ----------------------------------------------------------------------- */
static void recv_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    receiver_t *rs = state;
    if (m->kind == AR_MSG_CALL && m->tag == TAG_SYNC && m->len == sizeof(uint32_t)) {
        uint32_t id;
        memcpy(&id, m->data, sizeof id);
        uint32_t seen = id < N_PRODUCERS ? rs->next[id] : UINT32_MAX;
        int rc = ar_reply(g_node, m->reply_to, &seen, sizeof seen);
        ST_CHECK(rc == 0, "receiver: ar_reply returned %s", ar_err_name(rc));
        return;
    }
    if (m->kind != AR_MSG_CAST || m->tag != TAG_DATA || m->len != sizeof(data_msg_t)) {
        st_violation("receiver: unexpected message kind %d tag %u len %zu", (int)m->kind,
                     m->tag, m->len);
        return;
    }
    data_msg_t msg;
    memcpy(&msg, m->data, sizeof msg);
    if (msg.producer >= N_PRODUCERS || msg.value != value_of(msg.producer, msg.seq)) {
        st_violation("receiver: corrupt payload (producer %u seq %u)", msg.producer, msg.seq);
        return;
    }
    if (msg.seq != rs->next[msg.producer])
        st_violation("receiver: producer %u seq %u, expected %u", msg.producer, msg.seq,
                     rs->next[msg.producer]);
    rs->next[msg.producer] = msg.seq + 1;
    rs->count++;
    rs->sum += msg.value;
    rs->xor ^= msg.value;
    if (rs->count == TOTAL) {
        /* release: the receiver's totals are complete before main reads them */
        atomic_store_explicit(&g_done, 1, memory_order_release);
    }
}

static int recv_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static const ar_behaviour_t receiver_b = {"million_receiver", recv_init, recv_handle, NULL};

/* ---- producer processes ------------------------------------------------------------- */
static int prod_init(ar_proc_t *self, void *arg, void **state)
{
    producer_t *p = arg;
    g_prod_pid[p->id] = ar_self(self);
    *state = p;
    return 0;
}

static void prod_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    producer_t *p = state;
    if (m->kind != AR_MSG_CAST || (m->tag != TAG_GO && m->tag != TAG_MORE)) {
        st_violation("producer %u: unexpected message kind %d tag %u", p->id, (int)m->kind,
                     m->tag);
        return;
    }
    if (!tl_counted) {
        tl_counted = true;
        atomic_fetch_add_explicit(&g_sched_threads, 1, memory_order_relaxed);
    }
    if (produce(p, (uint32_t)st_range(&p->rng, 1, BURST))) {
        int rc = ar_send(g_node, ar_self(self), TAG_MORE, NULL, 0);
        if (rc != 0) st_fail("producer %u: send to self returned %s", p->id, ar_err_name(rc));
        return;
    }
    sync_with_receiver(p);
    /* release: all of this producer's work happened before main sees it done */
    atomic_fetch_add_explicit(&g_producers_done, 1, memory_order_release);
    ar_stop(self, AR_REASON(AR_NORMAL));
}

static const ar_behaviour_t producer_b = {"million_producer", prod_init, prod_handle, NULL};

static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    uint32_t range[2];
    if (m->tag != TAG_SPAWN || m->len != sizeof range) {
        st_violation("spawner: unexpected message tag %u", m->tag);
        return;
    }
    memcpy(range, m->data, sizeof range);
    for (uint32_t i = range[0]; i < range[1]; i++) {
        int rc = ar_spawn(g_node, &producer_b, &g_prod[i], NULL, NULL);
        if (rc != 0) st_fail("ar_spawn of producer %u from a process: %s", i, ar_err_name(rc));
        /* release: the producer's pid slot is written before main counts it */
        atomic_fetch_add_explicit(&g_spawned, 1, memory_order_release);
    }
}

static const ar_behaviour_t spawner_b = {"million_spawner", NULL, spawner_handle, NULL};

static void *thread_producer(void *arg)
{
    producer_t *p = arg;
    while (produce(p, BURST)) {
    }
    sync_with_receiver(p);
    /* release: all of this thread's sends happened before main sees it done */
    atomic_fetch_add_explicit(&g_producers_done, 1, memory_order_release);
    return NULL;
}

int main(int argc, char **argv)
{
    st_begin("stress_million", argc, argv);
    uint64_t t0 = st_now_ms();
    st_rng_t rng = st_rng_for(0);
    g_node = st_node_start(2);

    /* Split exactly TOTAL messages among the producers at random. */
    uint64_t weight[N_PRODUCERS], wsum = 0;
    for (uint32_t i = 0; i < N_PRODUCERS; i++) wsum += weight[i] = st_range(&rng, 1, 3);
    uint32_t left = TOTAL;
    uint64_t want_sum = 0, want_xor = 0;
    for (uint32_t i = 0; i < N_PRODUCERS; i++) {
        g_prod[i].id = i;
        g_prod[i].rng = st_rng_for(100 + i);
        uint32_t q = i + 1 == N_PRODUCERS ? left : (uint32_t)(TOTAL * weight[i] / wsum);
        g_prod[i].quota = q;
        g_prod[i].window_left = (uint32_t)st_range(&g_prod[i].rng, WINDOW_MIN, WINDOW_MAX);
        left -= q;
        for (uint32_t s = 0; s < q; s++) {
            want_sum += value_of(i, s);
            want_xor ^= value_of(i, s);
        }
    }
    ST_EXPECT_RC(ar_spawn(g_node, &receiver_b, &g_rs, NULL, &g_recv), 0, "ar_spawn(receiver)");

    uint32_t half = 1 + N_PROCS / 2;
    for (uint32_t i = 1; i < half; i++) {
        ST_EXPECT_RC(ar_spawn(g_node, &producer_b, &g_prod[i], NULL, NULL), 0,
                     "ar_spawn(producer)");
        atomic_fetch_add_explicit(&g_spawned, 1, memory_order_relaxed);
    }
    ar_pid_t spawner;
    ST_EXPECT_RC(ar_spawn(g_node, &spawner_b, NULL, NULL, &spawner), 0, "ar_spawn(spawner)");
    uint32_t range[2] = {half, N_PRODUCERS};
    ST_EXPECT_RC(ar_send(g_node, spawner, TAG_SPAWN, range, sizeof range), 0, "ar_send(spawn)");
    /* acquire: pairs with the spawner's release, so every pid slot is visible */
    ST_WAIT(atomic_load_explicit(&g_spawned, memory_order_acquire) == N_PROCS,
            "all %d producer processes spawned", N_PROCS);

    pthread_t th;
    st_start_thread(&th, thread_producer, &g_prod[0]);
    for (uint32_t i = 1; i < N_PRODUCERS; i++)
        ST_EXPECT_RC(ar_send(g_node, g_prod_pid[i], TAG_GO, NULL, 0), 0, "ar_send(go)");

    /* acquire: pairs with the receiver's release of its totals */
    ST_WAIT(atomic_load_explicit(&g_done, memory_order_acquire) == 1,
            "the receiver to count %u messages", TOTAL);
    ST_WAIT(atomic_load_explicit(&g_producers_done, memory_order_acquire) == N_PRODUCERS,
            "all producers to finish");
    st_join(th);

    ST_CHECK(g_rs.count == TOTAL, "receiver counted %" PRIu64 " messages, expected %u",
             g_rs.count, TOTAL);
    ST_CHECK(g_rs.sum == want_sum && g_rs.xor == want_xor,
             "checksums differ: sum %016" PRIx64 " xor %016" PRIx64 ", expected %016" PRIx64
             " %016" PRIx64, g_rs.sum, g_rs.xor, want_sum, want_xor);
    for (uint32_t i = 0; i < N_PRODUCERS; i++)
        ST_CHECK(g_rs.next[i] == g_prod[i].quota, "producer %u: receiver has %u of %u", i,
                 g_rs.next[i], g_prod[i].quota);

    ar_node_stats_t st;
    ar_node_stats(g_node, &st);
    ST_CHECK(st.dropped == 0, "stats.dropped %" PRIu64 ", expected 0", st.dropped);
    ST_CHECK(st.sent >= TOTAL && st.delivered >= TOTAL,
             "stats sent %" PRIu64 " delivered %" PRIu64 ", expected at least %u each", st.sent,
             st.delivered, TOTAL);
    printf("messages=%u syncs=%lu producer threads seen=%u\n", TOTAL,
           (unsigned long)st_get(&g_syncs), st_get(&g_sched_threads));

    ST_EXPECT_RC(ar_node_stop(g_node, ST_WAIT_MS), 0, "ar_node_stop");
    return st_finish(t0);
}
