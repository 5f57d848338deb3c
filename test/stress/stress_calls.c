/* stress_calls: concurrent ar_call from foreign threads and processes, two schedulers.
 *
 * Clients (foreign threads and processes; each process also calls once from its init)
 * call a few servers with requests of random modes:
 *   NOW    the server replies at once;
 *   THREAD the server hands reply_to to a replier thread, which replies soon;
 *   PROC   the server hands reply_to to a deferrer process, which replies (maybe after
 *          sleeping);
 *   CHAIN  the server itself calls a leaf server and replies with its answer;
 *   RACE   a short caller timeout and a reply after a random delay around it: either
 *          outcome is fine, but a reply that lost the race must never be seen;
 *   LATE   a short caller timeout; the replier replies only once the caller has seen
 *          AR_ETIMEDOUT, so the reply is late for sure.
 * Hog processes keep the schedulers busy, so a woken caller often waits in a run queue
 * while its reply and its timeout both land: the case a late reply must survive.
 * Invariants: every answer is the right one for that very request (a late reply showing
 * up in a later call would carry another seq); NOW/THREAD/PROC/CHAIN calls never time out;
 * LATE calls always return AR_ETIMEDOUT; ar_reply always returns 0 (also when late); a
 * late reply never appears in a calling process's mailbox (not in handle, not in
 * ar_receive, even polled right after the reply was sent).
 *
 * Usage: stress_calls [seed]
 */
#include "stress_util.h"

#define N_SERVERS 4
#define N_TCLIENTS 3
#define N_PCLIENTS 24
#define N_CLIENTS (N_TCLIENTS + N_PCLIENTS)
#define CALLS_PER (ST_TSAN ? 120 : 400)
#define BURST_MAX 8
#define N_HOGS 2
#define HOG_SPIN_US 300

enum { TAG_CALL = 1, TAG_DEFER, TAG_GO, TAG_MORE, TAG_HOG };
enum { M_NOW, M_THREAD, M_PROC, M_CHAIN, M_RACE, M_LATE, M_MODES };
static const char *const mode_name[M_MODES] = {"now", "thread", "proc", "chain", "race", "late"};

typedef struct call_req {
    uint32_t client, seq, mode, delay_us;
    uint64_t x;
} call_req_t;

typedef struct call_rep {
    uint32_t client, seq;
    uint64_t y;
} call_rep_t;

typedef struct defer_msg {
    ar_reply_to_t to;
    call_rep_t rep;
} defer_msg_t;

typedef struct client {
    uint32_t id;
    st_rng_t rng;
    uint32_t seq, done_calls;
    uint64_t ok[M_MODES], timedout[M_MODES];
    uint8_t mode_of[CALLS_PER], timed_out[CALLS_PER]; /* per seq, for diagnostics */
    _Atomic uint32_t progress; /* calls done, and the mode of the one under way */
    _Atomic uint32_t in_mode;
} client_t;

static ar_node_t *g_node;
static ar_pid_t g_server[N_SERVERS], g_leaf, g_deferrer;
static client_t g_clients[N_CLIENTS];
/* LATE handshake per client: seq+1 of the call that timed out, then of the late reply. */
static _Atomic uint32_t g_timedout_seq[N_CLIENTS], g_late_replied_seq[N_CLIENTS];
/* RACE replies still to be sent, per client. */
static atomic_uint g_race_pending[N_CLIENTS];
static atomic_uint g_clients_done;
static atomic_ulong g_replies_sent;

static uint64_t answer(uint64_t x)
{
    return st_mix64(x ^ 0x5bd1e995ull);
}

/* ---- replier thread: deferred, racing and late replies --------------------------------- */
typedef struct job {
    ar_reply_to_t to;
    call_rep_t rep;
    uint64_t due_ns;
    uint32_t mode;
} job_t;

#define JOBS_MAX 4096
static pthread_mutex_t g_jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static job_t g_jobs[JOBS_MAX];
static size_t g_njobs;
static atomic_bool g_replier_stop;

static void job_push(const job_t *j)
{
    pthread_mutex_lock(&g_jobs_lock);
    if (g_njobs == JOBS_MAX) st_fail("replier queue overflow");
    g_jobs[g_njobs++] = *j;
    pthread_mutex_unlock(&g_jobs_lock);
}

/* Takes a job that is ready now (due, or for LATE: its caller has timed out). */
static bool job_take(job_t *out, uint64_t now)
{
    bool found = false;
    pthread_mutex_lock(&g_jobs_lock);
    for (size_t i = 0; i < g_njobs; i++) {
        job_t *j = &g_jobs[i];
        bool ready;
        if (j->mode == M_LATE) {
            /* acquire: the caller's timeout happened before we answer */
            ready = atomic_load_explicit(&g_timedout_seq[j->rep.client], memory_order_acquire)
                    == j->rep.seq + 1;
            if (!ready && now > j->due_ns)
                st_fail("client %u call %u (late): the caller never timed out", j->rep.client,
                        j->rep.seq);
        } else {
            ready = now >= j->due_ns;
        }
        if (ready) {
            *out = *j;
            g_jobs[i] = g_jobs[--g_njobs];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&g_jobs_lock);
    return found;
}

static void *replier_main(void *arg)
{
    (void)arg;
    for (;;) {
        job_t j;
        if (!job_take(&j, st_now_ns())) {
            pthread_mutex_lock(&g_jobs_lock);
            size_t n = g_njobs;
            pthread_mutex_unlock(&g_jobs_lock);
            if (n == 0 && atomic_load_explicit(&g_replier_stop, memory_order_relaxed)) break;
            st_nap_us(50);
            continue;
        }
        int rc = ar_reply(g_node, j.to, &j.rep, sizeof j.rep);
        if (rc != 0)
            st_violation("client %u call %u (%s): deferred ar_reply returned %s", j.rep.client,
                         j.rep.seq, mode_name[j.mode], ar_err_name(rc));
        atomic_fetch_add_explicit(&g_replies_sent, 1, memory_order_relaxed);
        if (j.mode == M_LATE) {
            /* release: the late reply was pushed before the caller checks its mailbox */
            atomic_store_explicit(&g_late_replied_seq[j.rep.client], j.rep.seq + 1,
                                  memory_order_release);
        } else if (j.mode == M_RACE) {
            /* release: as above, for a reply that may have lost its race */
            atomic_fetch_sub_explicit(&g_race_pending[j.rep.client], 1, memory_order_release);
        }
    }
    return NULL;
}

/* ---- servers ------------------------------------------------------------------------ */
static void leaf_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    call_req_t q;
    if (m->kind != AR_MSG_CALL || m->len != sizeof q) {
        st_violation("leaf: unexpected message kind %d len %zu", (int)m->kind, m->len);
        return;
    }
    memcpy(&q, m->data, sizeof q);
    call_rep_t rep = {q.client, q.seq, answer(q.x)};
    int rc = ar_reply(g_node, m->reply_to, &rep, sizeof rep);
    ST_CHECK(rc == 0, "leaf: ar_reply returned %s", ar_err_name(rc));
}

static const ar_behaviour_t leaf_b = {"calls_leaf", NULL, leaf_handle, NULL};

static void deferrer_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    defer_msg_t d;
    if (m->kind != AR_MSG_CAST || m->tag != TAG_DEFER || m->len != sizeof d) {
        st_violation("deferrer: unexpected message kind %d tag %u", (int)m->kind, m->tag);
        return;
    }
    memcpy(&d, m->data, sizeof d);
    if (d.rep.seq % 4 == 0) {
        int rc = ar_sleep(self, (int)(d.rep.seq % 3));
        ST_CHECK(rc == 0, "deferrer: ar_sleep returned %s", ar_err_name(rc));
    }
    int rc = ar_reply(g_node, d.to, &d.rep, sizeof d.rep);
    ST_CHECK(rc == 0, "deferrer: ar_reply returned %s", ar_err_name(rc));
}

static const ar_behaviour_t deferrer_b = {"calls_deferrer", NULL, deferrer_handle, NULL};

static void server_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    (void)state;
    call_req_t q;
    if (m->kind != AR_MSG_CALL || m->tag != TAG_CALL || m->len != sizeof q) {
        st_violation("server: unexpected message kind %d tag %u len %zu", (int)m->kind, m->tag,
                     m->len);
        return;
    }
    memcpy(&q, m->data, sizeof q);
    call_rep_t rep = {q.client, q.seq, answer(q.x)};
    int rc = 0;
    switch (q.mode) {
    case M_NOW:
        rc = ar_reply(g_node, m->reply_to, &rep, sizeof rep);
        break;
    case M_THREAD:
    case M_RACE:
    case M_LATE: {
        job_t j = {m->reply_to, rep, st_now_ns() + (uint64_t)q.delay_us * 1000u, q.mode};
        if (q.mode == M_LATE) j.due_ns = st_now_ns() + (uint64_t)ST_WAIT_MS * 1000000u;
        job_push(&j);
        break;
    }
    case M_PROC: {
        defer_msg_t d = {m->reply_to, rep};
        rc = ar_send(g_node, g_deferrer, TAG_DEFER, &d, sizeof d);
        break;
    }
    case M_CHAIN: {
        ar_buf_t r = {0};
        rc = ar_call(g_node, g_leaf, TAG_CALL, &q, sizeof q, &r, ST_WAIT_MS);
        if (rc != 0) {
            st_violation("server: chained ar_call to the leaf returned %s", ar_err_name(rc));
            break;
        }
        call_rep_t lr = {0};
        if (r.len == sizeof lr) memcpy(&lr, r.data, sizeof lr);
        ST_CHECK(r.len == sizeof lr && lr.client == q.client && lr.seq == q.seq && lr.y == rep.y,
                 "server: leaf answered client %u seq %u with client %u seq %u", q.client,
                 q.seq, lr.client, lr.seq);
        ar_buf_free(&r);
        rc = ar_reply(g_node, m->reply_to, &rep, sizeof rep);
        break;
    }
    default:
        st_violation("server: bad mode %u", q.mode);
    }
    ST_CHECK(rc == 0, "server: mode %s failed with %s", mode_name[q.mode % M_MODES],
             ar_err_name(rc));
}

static const ar_behaviour_t server_b = {"calls_server", NULL, server_handle, NULL};

/* ---- clients ------------------------------------------------------------------------ */
static uint32_t pick_mode(st_rng_t *r)
{
    unsigned p = (unsigned)st_below(r, 100);
    return p < 30 ? M_NOW : p < 48 ? M_THREAD : p < 63 ? M_PROC : p < 78 ? M_CHAIN
         : p < 92 ? M_RACE : M_LATE;
}

/* Names a stray message: for a reply, the call it answered. */
static void describe(const client_t *c, const ar_msg_t *m, char *buf, size_t n)
{
    call_rep_t rep;
    if (m->kind == AR_MSG_REPLY && m->len == sizeof rep) {
        memcpy(&rep, m->data, sizeof rep);
        if (rep.client == c->id && rep.seq < CALLS_PER) {
            snprintf(buf, n, "the reply to its call %u (%s, which %s)", rep.seq,
                     mode_name[c->mode_of[rep.seq]],
                     c->timed_out[rep.seq] ? "returned AR_ETIMEDOUT" : "got its answer");
            return;
        }
    }
    snprintf(buf, n, "a message of kind %d, tag %u, len %zu", (int)m->kind, m->tag, m->len);
}

/* After a reply may have been discarded: nothing of it may be in a process's mailbox. */
static void check_mailbox_empty(ar_proc_t *self, client_t *c, const char *when)
{
    ar_msg_t *got = NULL;
    int rc = ar_receive(self, NULL, NULL, 0, &got);
    if (rc == AR_ETIMEDOUT) return;
    if (rc == 0 && got != NULL) {
        char what[160];
        describe(c, got, what, sizeof what);
        st_violation("client %u: %s, ar_receive found %s", c->id, when, what);
        ar_msg_release(self, got);
    } else {
        st_violation("client %u: polling ar_receive returned %s", c->id, ar_err_name(rc));
    }
}

/* Waits (parking a process, napping a thread) until a late reply has been sent. */
static void wait_late_sent(ar_proc_t *self, client_t *c, uint32_t seq)
{
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    /* acquire: the replier pushed the late reply before publishing this */
    while (atomic_load_explicit(&g_late_replied_seq[c->id], memory_order_acquire) != seq + 1) {
        if (st_now_ms() > dl) st_fail("client %u: the late reply to call %u was never sent",
                                      c->id, seq);
        if (self != NULL) {
            int rc = ar_sleep(self, 1);
            if (rc != 0) st_fail("client %u: ar_sleep returned %s", c->id, ar_err_name(rc));
        } else {
            st_nap_us(100);
        }
    }
}

static void one_call(ar_proc_t *self, client_t *c, uint32_t mode)
{
    uint32_t seq = c->seq++;
    call_req_t q = {c->id, seq, mode, 0, st_next(&c->rng)};
    c->mode_of[seq % CALLS_PER] = (uint8_t)mode;
    int timeout = ST_WAIT_MS;
    if (mode == M_RACE) {
        timeout = (int)st_range(&c->rng, 1, 3);
        q.delay_us = (uint32_t)st_below(&c->rng, (uint64_t)timeout * 2000u);
        atomic_fetch_add_explicit(&g_race_pending[c->id], 1, memory_order_relaxed);
    } else if (mode == M_LATE) {
        timeout = (int)st_range(&c->rng, 1, 5);
    } else if (mode == M_THREAD) {
        q.delay_us = (uint32_t)st_below(&c->rng, 500);
    }
    ar_pid_t srv = g_server[st_below(&c->rng, N_SERVERS)];
    st_set(&c->in_mode, mode);
    ar_buf_t r = {0};
    int rc = ar_call(g_node, srv, TAG_CALL, &q, sizeof q, &r, timeout);
    if (rc == 0) {
        call_rep_t rep = {0};
        if (r.len == sizeof rep) memcpy(&rep, r.data, sizeof rep);
        if (r.len != sizeof rep || rep.client != c->id || rep.seq != seq || rep.y != answer(q.x))
            st_violation("client %u call %u (%s): wrong answer (len %zu, client %u, seq %u)%s",
                         c->id, seq, mode_name[mode], r.len, rep.client, rep.seq,
                         rep.client == c->id && rep.seq < seq ? ": an earlier reply leaked" : "");
        ar_buf_free(&r);
        c->ok[mode]++;
        if (mode == M_LATE)
            st_violation("client %u call %u: a late reply was returned by ar_call", c->id, seq);
    } else if (rc == AR_ETIMEDOUT && (mode == M_RACE || mode == M_LATE)) {
        c->timedout[mode]++;
        c->timed_out[seq % CALLS_PER] = 1;
        ST_CHECK(r.data == NULL, "client %u call %u: timed out call left reply data", c->id, seq);
        if (mode == M_LATE) {
            /* release: lets the replier answer, now certainly too late */
            atomic_store_explicit(&g_timedout_seq[c->id], seq + 1, memory_order_release);
            wait_late_sent(self, c, seq);
            if (self != NULL) check_mailbox_empty(self, c, "right after a late reply");
        }
    } else {
        st_violation("client %u call %u (%s, timeout %d ms): ar_call returned %s", c->id, seq,
                     mode_name[mode], timeout, ar_err_name(rc));
    }
    c->done_calls++;
    st_set(&c->progress, c->done_calls);
}

static void hang_report(void)
{
    for (uint32_t i = 0; i < N_CLIENTS; i++) {
        uint32_t n = st_get(&g_clients[i].progress);
        if (n < CALLS_PER)
            fprintf(stderr, "  client %u (%s): %u calls done, now in a %s call\n", i,
                    i < N_TCLIENTS ? "thread" : "process", n,
                    mode_name[st_get(&g_clients[i].in_mode) % M_MODES]);
    }
    pthread_mutex_lock(&g_jobs_lock);
    fprintf(stderr, "  replier: %zu jobs queued\n", g_njobs);
    pthread_mutex_unlock(&g_jobs_lock);
}

static void client_finish(ar_proc_t *self, client_t *c)
{
    /* Every racing reply has been sent by now or soon: none may show up. */
    uint64_t dl = st_now_ms() + ST_WAIT_MS;
    /* acquire: pairs with the replier's release after each racing reply */
    while (atomic_load_explicit(&g_race_pending[c->id], memory_order_acquire) != 0) {
        if (st_now_ms() > dl) st_fail("client %u: racing replies never all sent", c->id);
        if (self != NULL) ar_sleep(self, 1);
        else st_nap_us(100);
    }
    if (self != NULL) check_mailbox_empty(self, c, "after all its calls");
    /* release: this client's counters are final before main reads them */
    atomic_fetch_add_explicit(&g_clients_done, 1, memory_order_release);
}

static void *thread_client(void *arg)
{
    client_t *c = arg;
    while (c->done_calls < CALLS_PER) one_call(NULL, c, pick_mode(&c->rng));
    client_finish(NULL, c);
    return NULL;
}

static int pclient_init(ar_proc_t *self, void *arg, void **state)
{
    client_t *c = arg;
    *state = c;
    one_call(self, c, M_NOW); /* init may block in a call */
    return 0;
}

static void pclient_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    client_t *c = state;
    if (m->kind != AR_MSG_CAST || (m->tag != TAG_GO && m->tag != TAG_MORE)) {
        char what[160];
        describe(c, m, what, sizeof what);
        st_violation("client %u: handle got %s", c->id, what);
        return;
    }
    uint64_t n = st_range(&c->rng, 1, BURST_MAX);
    for (uint64_t i = 0; i < n && c->done_calls < CALLS_PER; i++)
        one_call(self, c, pick_mode(&c->rng));
    if (c->done_calls < CALLS_PER) {
        int rc = ar_send(g_node, ar_self(self), TAG_MORE, NULL, 0);
        if (rc != 0) st_fail("client %u: send to self returned %s", c->id, ar_err_name(rc));
        return;
    }
    client_finish(self, c);
}

static const ar_behaviour_t pclient_b = {"calls_client", pclient_init, pclient_handle, NULL};

/* Burns its scheduler for a while, parks for a millisecond, and again, until the clients
 * are done. */
static void hog_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    (void)m;
    while (atomic_load_explicit(&g_clients_done, memory_order_relaxed) != N_CLIENTS) {
        uint64_t until = st_now_ns() + HOG_SPIN_US * 1000u;
        while (st_now_ns() < until) {
        }
        int rc = ar_sleep(self, 1);
        if (rc != 0) st_fail("hog: ar_sleep returned %s", ar_err_name(rc));
    }
}

static const ar_behaviour_t hog_b = {"calls_hog", NULL, hog_handle, NULL};

/* Spawns process clients from a process (so their init's call runs on its stack). */
static void spawner_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    uint32_t range[2];
    if (m->len != sizeof range) {
        st_violation("spawner: unexpected message");
        return;
    }
    memcpy(range, m->data, sizeof range);
    for (uint32_t i = range[0]; i < range[1]; i++) {
        ar_pid_t p;
        int rc = ar_spawn(g_node, &pclient_b, &g_clients[i], NULL, &p);
        if (rc != 0) st_fail("ar_spawn of client %u from a process: %s", i, ar_err_name(rc));
        rc = ar_send(g_node, p, TAG_GO, NULL, 0);
        if (rc != 0) st_fail("ar_send(go) to client %u: %s", i, ar_err_name(rc));
    }
    (void)self;
}

static const ar_behaviour_t spawner_b = {"calls_spawner", NULL, spawner_handle, NULL};

int main(int argc, char **argv)
{
    st_begin("stress_calls", argc, argv);
    st_hang_report = hang_report;
    uint64_t t0 = st_now_ms();
    g_node = st_node_start(2);
    pthread_t replier;
    st_start_thread(&replier, replier_main, NULL);

    ST_EXPECT_RC(ar_spawn(g_node, &leaf_b, NULL, NULL, &g_leaf), 0, "ar_spawn(leaf)");
    ST_EXPECT_RC(ar_spawn(g_node, &deferrer_b, NULL, NULL, &g_deferrer), 0, "ar_spawn(deferrer)");
    for (int i = 0; i < N_SERVERS; i++)
        ST_EXPECT_RC(ar_spawn(g_node, &server_b, NULL, NULL, &g_server[i]), 0, "ar_spawn(server)");
    for (uint32_t i = 0; i < N_CLIENTS; i++) {
        g_clients[i].id = i;
        g_clients[i].rng = st_rng_for(300 + i);
    }

    for (int i = 0; i < N_HOGS; i++) {
        ar_pid_t hog;
        ST_EXPECT_RC(ar_spawn(g_node, &hog_b, NULL, NULL, &hog), 0, "ar_spawn(hog)");
        ST_EXPECT_RC(ar_send(g_node, hog, TAG_HOG, NULL, 0), 0, "ar_send(hog)");
    }

    pthread_t th[N_TCLIENTS];
    for (int i = 0; i < N_TCLIENTS; i++) st_start_thread(&th[i], thread_client, &g_clients[i]);
    uint32_t half = N_TCLIENTS + N_PCLIENTS / 2;
    for (uint32_t i = N_TCLIENTS; i < half; i++) {
        ar_pid_t p;
        ST_EXPECT_RC(ar_spawn(g_node, &pclient_b, &g_clients[i], NULL, &p), 0, "ar_spawn(client)");
        ST_EXPECT_RC(ar_send(g_node, p, TAG_GO, NULL, 0), 0, "ar_send(go)");
    }
    ar_pid_t spawner;
    ST_EXPECT_RC(ar_spawn(g_node, &spawner_b, NULL, NULL, &spawner), 0, "ar_spawn(spawner)");
    uint32_t range[2] = {half, N_CLIENTS};
    ST_EXPECT_RC(ar_send(g_node, spawner, TAG_GO, range, sizeof range), 0, "ar_send(spawn)");

    /* acquire: pairs with each client's release of its final counters */
    ST_WAIT(atomic_load_explicit(&g_clients_done, memory_order_acquire) == N_CLIENTS,
            "all %d clients to finish %d calls (done: %u)", N_CLIENTS, CALLS_PER,
            st_get(&g_clients_done));
    for (int i = 0; i < N_TCLIENTS; i++) st_join(th[i]);
    atomic_store_explicit(&g_replier_stop, true, memory_order_relaxed);
    st_join(replier);

    uint64_t ok[M_MODES] = {0}, to[M_MODES] = {0};
    for (uint32_t i = 0; i < N_CLIENTS; i++) {
        client_t *c = &g_clients[i];
        ST_CHECK(c->done_calls == CALLS_PER, "client %u made %u calls, expected %d", i,
                 c->done_calls, CALLS_PER);
        for (int m = 0; m < M_MODES; m++) {
            ok[m] += c->ok[m];
            to[m] += c->timedout[m];
        }
    }
    for (int m = 0; m < M_MODES; m++) {
        printf("%-6s ok %6" PRIu64 "  timed out %5" PRIu64 "\n", mode_name[m], ok[m], to[m]);
        if (m != M_RACE && m != M_LATE)
            ST_CHECK(to[m] == 0, "%s calls timed out", mode_name[m]);
    }
    ST_CHECK(ok[M_LATE] == 0, "late replies were returned");

    ST_EXPECT_RC(ar_node_stop(g_node, ST_WAIT_MS), 0, "ar_node_stop");
    return st_finish(t0);
}
