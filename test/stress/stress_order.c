/* stress_order: per-pair message order under many concurrent senders.
 *
 * Senders are foreign threads and processes (half spawned from main, half from a
 * spawner process). Each sends its own numbered sequence to each of several receivers,
 * interleaving receivers at random, in bursts, sometimes sleeping mid-sequence. Receiver
 * 0 takes half the traffic (one hot mailbox); some receivers also pull messages of one
 * sender out of order with a selective ar_receive. Invariants: every receiver sees every
 * sender's sequence exactly 0, 1, 2, ... (none lost, none duplicated, none reordered),
 * m->from names the sending process (AR_PID_NONE for threads), payloads arrive intact,
 * and the node's counters add up (sent == accepted sends, delivered == handled, no drop).
 *
 * Usage: stress_order [seed]
 */
#include "stress_util.h"

#define N_RECV 4
#define N_THREADS 4
#define N_PROCS 64
#define N_SENDERS (N_THREADS + N_PROCS)
#define QUOTA_MIN (ST_TSAN ? 200 : 800)
#define QUOTA_MAX (ST_TSAN ? 700 : 2800)
#define BURST_MAX 64

enum { TAG_DATA = 1, TAG_GO, TAG_MORE, TAG_SPAWN };

typedef struct order_msg {
    uint32_t sender, recv, seq, check;
} order_msg_t;

typedef struct receiver {
    uint32_t idx;
    bool selective;
    st_rng_t rng;
    uint64_t total, expected;
    uint32_t next[N_SENDERS];
} receiver_t;

typedef struct sender {
    uint32_t id;
    st_rng_t rng;
    uint32_t next[N_RECV];
    uint64_t left;
} sender_t;

static ar_node_t *g_node;
/* Written by main before any sender starts; read-only afterwards. */
static ar_pid_t g_recv[N_RECV];
static uint32_t g_quota[N_SENDERS][N_RECV];
/* Each sender process writes its own slot in init, before it sends anything. */
static ar_pid_t g_sender_pid[N_SENDERS];
static receiver_t g_receivers[N_RECV];
static sender_t g_senders[N_SENDERS];

static atomic_ulong g_accepted; /* ar_send calls that returned 0 */
static atomic_ulong g_handled;  /* messages handed to our handlers or ar_receive */
static atomic_uint g_recv_done;
static atomic_uint g_senders_done;
static atomic_uint g_spawned;
static atomic_bool g_go;

static uint32_t msg_check(uint32_t sender, uint32_t recv, uint32_t seq)
{
    return (uint32_t)st_mix64(((uint64_t)sender << 40) ^ ((uint64_t)recv << 32) ^ seq);
}

static void send_or_fail(ar_pid_t to, uint32_t tag, const void *data, size_t len)
{
    int rc = ar_send(g_node, to, tag, data, len);
    if (rc != 0) st_fail("ar_send (tag %u) returned %s", tag, ar_err_name(rc));
    atomic_fetch_add_explicit(&g_accepted, 1, memory_order_relaxed);
}

/* Sends the next message of sender s; false when all its sequences are complete. */
static bool send_one(sender_t *s)
{
    if (s->left == 0) return false;
    uint32_t r;
    if (s->next[0] < g_quota[s->id][0] && st_chance(&s->rng, 50)) {
        r = 0;
    } else {
        do {
            r = (uint32_t)st_below(&s->rng, N_RECV);
        } while (s->next[r] >= g_quota[s->id][r]);
    }
    order_msg_t msg = {s->id, r, s->next[r], msg_check(s->id, r, s->next[r])};
    send_or_fail(g_recv[r], TAG_DATA, &msg, sizeof msg);
    s->next[r]++;
    s->left--;
    return true;
}

/* ---- receivers ---------------------------------------------------------------------- */
static void recv_check(receiver_t *rv, const ar_msg_t *m)
{
    atomic_fetch_add_explicit(&g_handled, 1, memory_order_relaxed);
    char a[AR_PID_STRLEN], b[AR_PID_STRLEN];
    if (m->kind != AR_MSG_CAST || m->tag != TAG_DATA || m->len != sizeof(order_msg_t)) {
        st_violation("receiver %u: unexpected message kind %d tag %u len %zu", rv->idx,
                     (int)m->kind, m->tag, m->len);
        return;
    }
    order_msg_t msg;
    memcpy(&msg, m->data, sizeof msg);
    if (msg.sender >= N_SENDERS || msg.recv != rv->idx
        || msg.check != msg_check(msg.sender, msg.recv, msg.seq)) {
        st_violation("receiver %u: corrupt or misdelivered payload (sender %u recv %u seq %u)",
                     rv->idx, msg.sender, msg.recv, msg.seq);
        return;
    }
    ar_pid_t want = msg.sender < N_THREADS ? AR_PID_NONE : g_sender_pid[msg.sender];
    ST_CHECK(ar_pid_eq(m->from, want), "receiver %u: message of sender %u has from %s, want %s",
             rv->idx, msg.sender, st_pid_str(m->from, a), st_pid_str(want, b));
    if (msg.seq != rv->next[msg.sender]) {
        st_violation("receiver %u: from sender %u got seq %u, expected %u (%s)", rv->idx,
                     msg.sender, msg.seq, rv->next[msg.sender],
                     msg.seq < rv->next[msg.sender] ? "duplicate or reordered" : "lost or reordered");
    }
    rv->next[msg.sender] = msg.seq + 1;
    if (++rv->total == rv->expected) {
        /* release: the receiver's counters are complete before main reads them */
        atomic_fetch_add_explicit(&g_recv_done, 1, memory_order_release);
    }
}

static bool match_sender(const ar_msg_t *m, void *ud)
{
    order_msg_t msg;
    if (m->kind != AR_MSG_CAST || m->tag != TAG_DATA || m->len != sizeof msg) return false;
    memcpy(&msg, m->data, sizeof msg);
    return msg.sender == *(const uint32_t *)ud;
}

static int recv_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static void recv_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    receiver_t *rv = state;
    recv_check(rv, m);
    /* Pull a few messages of one sender ahead of the others: they must still come in
     * that sender's order, and the skipped ones must keep theirs. */
    if (rv->selective && st_chance(&rv->rng, 2)) {
        /* A sender with messages still to come, so the scan usually stops early. */
        uint32_t want = (uint32_t)st_below(&rv->rng, N_SENDERS);
        for (int k = 0; k < N_SENDERS && rv->next[want] >= g_quota[want][rv->idx]; k++)
            want = (want + 1) % N_SENDERS;
        int pulls = (int)st_range(&rv->rng, 1, 4);
        for (int i = 0; i < pulls; i++) {
            ar_msg_t *got = NULL;
            /* Mostly a poll; now and then a short wait that parks the receiver. */
            int rc = ar_receive(self, match_sender, &want, st_chance(&rv->rng, 10) ? 1 : 0, &got);
            if (rc == AR_ETIMEDOUT) break;
            if (rc != 0 || got == NULL) {
                st_violation("receiver %u: ar_receive returned %s", rv->idx, ar_err_name(rc));
                break;
            }
            if (!match_sender(got, &want))
                st_violation("receiver %u: ar_receive returned a message that does not match",
                             rv->idx);
            recv_check(rv, got);
            ar_msg_release(self, got);
        }
    }
}

static const ar_behaviour_t receiver_b = {"order_receiver", recv_init, recv_handle, NULL};

/* ---- sender processes --------------------------------------------------------------- */
static int sender_init(ar_proc_t *self, void *arg, void **state)
{
    sender_t *s = arg;
    g_sender_pid[s->id] = ar_self(self);
    *state = s;
    return 0;
}

static void sender_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    sender_t *s = state;
    atomic_fetch_add_explicit(&g_handled, 1, memory_order_relaxed);
    if (m->kind != AR_MSG_CAST || (m->tag != TAG_GO && m->tag != TAG_MORE)) {
        st_violation("sender %u: unexpected message kind %d tag %u", s->id, (int)m->kind, m->tag);
        return;
    }
    uint64_t burst = st_range(&s->rng, 1, BURST_MAX);
    for (uint64_t i = 0; i < burst; i++) {
        if (!send_one(s)) break;
        /* Park mid-sequence now and then: the order must survive a resume elsewhere. */
        if (st_chance(&s->rng, 1)) {
            int rc = ar_sleep(self, (int)st_below(&s->rng, 2));
            if (rc != 0) st_violation("sender %u: ar_sleep returned %s", s->id, ar_err_name(rc));
        }
    }
    if (s->left == 0) {
        /* release: this sender's sends all happened before main sees it done */
        atomic_fetch_add_explicit(&g_senders_done, 1, memory_order_release);
        ar_stop(self, AR_REASON(AR_NORMAL));
        return;
    }
    send_or_fail(ar_self(self), TAG_MORE, NULL, 0);
}

static const ar_behaviour_t sender_b = {"order_sender", sender_init, sender_handle, NULL};

/* Spawns the senders named in its message: they become children of a process. */
static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    atomic_fetch_add_explicit(&g_handled, 1, memory_order_relaxed);
    uint32_t range[2];
    if (m->tag != TAG_SPAWN || m->len != sizeof range) {
        st_violation("spawner: unexpected message tag %u", m->tag);
        return;
    }
    memcpy(range, m->data, sizeof range);
    for (uint32_t i = range[0]; i < range[1]; i++) {
        int rc = ar_spawn(g_node, &sender_b, &g_senders[i], NULL, NULL);
        if (rc != 0) st_fail("ar_spawn of sender %u from a process: %s", i, ar_err_name(rc));
        /* release: the sender's pid slot is written before main counts it spawned */
        atomic_fetch_add_explicit(&g_spawned, 1, memory_order_release);
    }
}

static const ar_behaviour_t spawner_b = {"order_spawner", NULL, spawner_handle, NULL};

/* ---- foreign sender threads --------------------------------------------------------- */
static void *thread_sender(void *arg)
{
    sender_t *s = arg;
    /* acquire: the receivers' pids and quotas are published before the start flag */
    while (!atomic_load_explicit(&g_go, memory_order_acquire)) st_nap_us(50);
    while (send_one(s)) {
        if (st_chance(&s->rng, 2)) sched_yield();
    }
    /* release: all of this thread's sends happened before main sees it done */
    atomic_fetch_add_explicit(&g_senders_done, 1, memory_order_release);
    return NULL;
}

int main(int argc, char **argv)
{
    st_begin("stress_order", argc, argv);
    uint64_t t0 = st_now_ms();
    st_rng_t rng = st_rng_for(0);
    unsigned scheds = (unsigned)st_range(&rng, 1, 3);
    g_node = st_node_start(scheds);

    uint64_t per_recv[N_RECV] = {0}, total = 0;
    for (uint32_t s = 0; s < N_SENDERS; s++) {
        g_senders[s].id = s;
        g_senders[s].rng = st_rng_for(1000 + s);
        for (uint32_t r = 0; r < N_RECV; r++) {
            /* Receiver 0 is the hot one: every sender has a long sequence for it. */
            uint32_t q = (uint32_t)st_range(&rng, QUOTA_MIN, QUOTA_MAX) * (r == 0 ? 2u : 1u);
            g_quota[s][r] = q;
            g_senders[s].left += q;
            per_recv[r] += q;
            total += q;
        }
    }
    for (uint32_t r = 0; r < N_RECV; r++) {
        g_receivers[r].idx = r;
        g_receivers[r].selective = (r % 2) == 1;
        g_receivers[r].rng = st_rng_for(500 + r);
        g_receivers[r].expected = per_recv[r];
        ST_EXPECT_RC(ar_spawn(g_node, &receiver_b, &g_receivers[r], NULL, &g_recv[r]), 0,
                     "ar_spawn(receiver)");
    }
    printf("schedulers=%u senders=%d (threads %d, processes %d) receivers=%d messages=%" PRIu64
           "\n", scheds, N_SENDERS, N_THREADS, N_PROCS, N_RECV, total);

    /* Half the sender processes from main, half from a spawner process. */
    uint32_t half = N_THREADS + N_PROCS / 2;
    for (uint32_t s = N_THREADS; s < half; s++) {
        ST_EXPECT_RC(ar_spawn(g_node, &sender_b, &g_senders[s], NULL, NULL), 0, "ar_spawn(sender)");
        atomic_fetch_add_explicit(&g_spawned, 1, memory_order_relaxed);
    }
    ar_pid_t spawner;
    ST_EXPECT_RC(ar_spawn(g_node, &spawner_b, NULL, NULL, &spawner), 0, "ar_spawn(spawner)");
    uint32_t range[2] = {half, N_SENDERS};
    send_or_fail(spawner, TAG_SPAWN, range, sizeof range);
    /* acquire: pairs with the spawner's release, so every pid slot is visible */
    ST_WAIT(atomic_load_explicit(&g_spawned, memory_order_acquire) == N_PROCS,
            "all %d sender processes spawned", N_PROCS);

    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) st_start_thread(&th[i], thread_sender, &g_senders[i]);
    /* release: publishes pids and quotas to the sender threads */
    atomic_store_explicit(&g_go, true, memory_order_release);
    for (uint32_t s = N_THREADS; s < N_SENDERS; s++) send_or_fail(g_sender_pid[s], TAG_GO, NULL, 0);

    /* acquire: pairs with each receiver's release of its final counters */
    ST_WAIT(atomic_load_explicit(&g_recv_done, memory_order_acquire) == N_RECV,
            "all receivers to get their %" PRIu64 " messages (done: %u of %d)", total,
            st_get(&g_recv_done), N_RECV);
    /* acquire: pairs with each sender's release once its sequences are all sent */
    ST_WAIT(atomic_load_explicit(&g_senders_done, memory_order_acquire) == N_SENDERS,
            "all senders to finish");
    for (int i = 0; i < N_THREADS; i++) st_join(th[i]);

    for (uint32_t r = 0; r < N_RECV; r++) {
        for (uint32_t s = 0; s < N_SENDERS; s++) {
            ST_CHECK(g_receivers[r].next[s] == g_quota[s][r],
                     "receiver %u saw %u messages from sender %u, sent %u", r,
                     g_receivers[r].next[s], s, g_quota[s][r]);
        }
        ST_CHECK(g_receivers[r].total == g_receivers[r].expected,
                 "receiver %u handled %" PRIu64 " messages, expected %" PRIu64, r,
                 g_receivers[r].total, g_receivers[r].expected);
    }

    /* Counters settle once the last sender has handled its last message. */
    ar_node_stats_t st;
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    for (;;) {
        ar_node_stats(g_node, &st);
        uint64_t acc = atomic_load_explicit(&g_accepted, memory_order_relaxed);
        uint64_t hd = atomic_load_explicit(&g_handled, memory_order_relaxed);
        if (st.sent == acc && st.delivered == hd && st.dropped == 0) break;
        if (st_now_ms() > dl) {
            st_violation("node stats do not add up: sent %" PRIu64 " (accepted %" PRIu64
                         "), delivered %" PRIu64 " (handled %" PRIu64 "), dropped %" PRIu64
                         " (expected 0)", st.sent, acc, st.delivered, hd, st.dropped);
            break;
        }
        st_nap_us(1000);
    }
    ST_CHECK(st.spawned == N_RECV + N_PROCS + 1, "stats.spawned %" PRIu64 ", expected %d",
             st.spawned, N_RECV + N_PROCS + 1);

    ST_EXPECT_RC(ar_node_stop(g_node, ST_WAIT_MS), 0, "ar_node_stop");
    return st_finish(t0);
}
