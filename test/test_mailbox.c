/* Mailboxes: payloads are copied, per-pair FIFO (threads and processes), nothing lost
 * under load, mailbox_limit, zero-length payloads, m->from. */
#include "test_helpers.h"

static int arg_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

/* ---- payloads are copied ------------------------------------------------------------------- */
static uint8_t pattern(size_t i, uint32_t tag)
{
    return (uint8_t)(i * 31u + tag);
}

typedef struct pat_rx {
    atomic_int good, bad;
    size_t expect_len;
} pat_rx_t;

static void pat_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    pat_rx_t *rx = state;
    bool ok = m->len == rx->expect_len;
    const uint8_t *d = m->data;
    for (size_t i = 0; ok && i < m->len; i++) ok = d[i] == pattern(i, m->tag);
    atomic_fetch_add(ok ? &rx->good : &rx->bad, 1);
}
static const ar_behaviour_t pat_b = {"pattern_rx", arg_init, pat_handle, NULL};

Test(mailbox, payload_is_copied_so_the_sender_may_overwrite_its_buffer_at_once,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static pat_rx_t rx;
    size_t sizes[] = {1, 100, 4096, 1 << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        memset(&rx, 0, sizeof rx);
        rx.expect_len = sizes[k];
        ar_pid_t pid = th_spawn(node, &pat_b, &rx);
        uint8_t *buf = malloc(sizes[k]);
        cr_assert_not_null(buf);
        for (int round = 0; round < 20; round++) {
            uint32_t tag = (uint32_t)round;
            for (size_t i = 0; i < sizes[k]; i++) buf[i] = pattern(i, tag);
            th_send(node, pid, tag, buf, sizes[k]);
            memset(buf, 0xEE, sizes[k]); /* overwrite right after the send */
        }
        th_await(atomic_load(&rx.good) + atomic_load(&rx.bad) == 20);
        cr_assert_eq(atomic_load(&rx.bad), 0, "size %zu: %d payloads were not the original",
                     sizes[k], atomic_load(&rx.bad));
        free(buf);
    }
    th_node_stop(node);
}

/* The same from a process: it overwrites its stack buffer right after each send. */
static void pat_tx_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    ar_pid_t to;
    memcpy(&to, m->data, sizeof to);
    uint8_t buf[2000];
    for (uint32_t tag = 0; tag < 50; tag++) {
        for (size_t i = 0; i < sizeof buf; i++) buf[i] = pattern(i, tag);
        ar_send(ar_node(self), to, tag, buf, sizeof buf);
        memset(buf, 0, sizeof buf);
    }
}
static const ar_behaviour_t pat_tx_b = {"pattern_tx", NULL, pat_tx_handle, NULL};

Test(mailbox, payload_sent_from_a_process_is_copied, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static pat_rx_t rx;
    rx.expect_len = 2000;
    ar_pid_t pid = th_spawn(node, &pat_b, &rx);
    ar_pid_t tx = th_spawn(node, &pat_tx_b, NULL);
    th_send(node, tx, 0, &pid, sizeof pid);
    th_await(atomic_load(&rx.good) + atomic_load(&rx.bad) == 50);
    cr_assert_eq(atomic_load(&rx.bad), 0);
    th_node_stop(node);
}

/* ---- ordering -------------------------------------------------------------------------------- */
#define MAX_SENDERS 16
typedef struct seq_msg {
    uint32_t sender, seq;
} seq_msg_t;

typedef struct seq_rx {
    uint32_t next[MAX_SENDERS]; /* owned by the receiving process */
    atomic_long total, out_of_order, malformed;
} seq_rx_t;

static void seq_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self;
    seq_rx_t *rx = state;
    seq_msg_t s;
    if (m->kind != AR_MSG_CAST || m->len != sizeof s) {
        atomic_fetch_add(&rx->malformed, 1);
        return;
    }
    memcpy(&s, m->data, sizeof s);
    if (s.sender >= MAX_SENDERS) {
        atomic_fetch_add(&rx->malformed, 1);
        return;
    }
    if (s.seq != rx->next[s.sender]) atomic_fetch_add(&rx->out_of_order, 1);
    rx->next[s.sender] = s.seq + 1;
    /* release: next[] is written before the test thread sees the total */
    atomic_fetch_add_explicit(&rx->total, 1, memory_order_release);
}
static const ar_behaviour_t seq_b = {"seq_rx", arg_init, seq_handle, NULL};

/* A sending process: on a job, sends count sequenced messages to a target. */
typedef struct seq_job {
    ar_pid_t to;
    uint32_t sender, count;
} seq_job_t;
typedef struct seq_tx {
    atomic_long failed;
    atomic_int done;
} seq_tx_t;
static void seq_tx_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    seq_tx_t *tx = state;
    seq_job_t job;
    memcpy(&job, m->data, sizeof job);
    for (uint32_t i = 0; i < job.count; i++) {
        seq_msg_t s = {job.sender, i};
        if (ar_send(ar_node(self), job.to, 1, &s, sizeof s) != 0) atomic_fetch_add(&tx->failed, 1);
    }
    atomic_fetch_add(&tx->done, 1);
}
static const ar_behaviour_t seq_tx_b = {"seq_tx", arg_init, seq_tx_handle, NULL};

typedef struct thread_job {
    ar_node_t *node;
    seq_job_t job;
    long failed;
} thread_job_t;
static void *seq_thread(void *arg)
{
    thread_job_t *t = arg;
    for (uint32_t i = 0; i < t->job.count; i++) {
        seq_msg_t s = {t->job.sender, i};
        if (ar_send(t->node, t->job.to, 1, &s, sizeof s) != 0) t->failed++;
    }
    return NULL;
}

static void check_seq(seq_rx_t *rx, long total, unsigned senders, uint32_t per_sender)
{
    th_await(atomic_load_explicit(&rx->total, memory_order_acquire) >= total);
    cr_assert_eq(atomic_load(&rx->total), total);
    cr_assert_eq(atomic_load(&rx->malformed), 0);
    cr_assert_eq(atomic_load(&rx->out_of_order), 0, "%ld messages out of order",
                 atomic_load(&rx->out_of_order));
    for (unsigned s = 0; s < senders; s++)
        cr_assert_eq(rx->next[s], per_sender, "sender %u: last seq %u", s, rx->next[s]);
}

Test(mailbox, one_sender_one_receiver_fifo_over_100k_messages, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static seq_rx_t rx;
    ar_pid_t pid = th_spawn(node, &seq_b, &rx);
    enum { N = 100000 };
    for (uint32_t i = 0; i < N; i++) {
        seq_msg_t s = {0, i};
        th_send(node, pid, 1, &s, sizeof s);
    }
    check_seq(&rx, N, 1, N);
    th_node_stop(node);
}

Test(mailbox, many_sender_threads_and_processes_each_keep_their_own_order,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static seq_rx_t rx;
    ar_pid_t pid = th_spawn(node, &seq_b, &rx);
    enum { THREADS = 4, PROCS = 4, PER = 20000 };
    static thread_job_t tj[THREADS];
    static seq_tx_t tx;
    pthread_t th[THREADS];
    for (uint32_t p = 0; p < PROCS; p++) {
        ar_pid_t s = th_spawn(node, &seq_tx_b, &tx);
        seq_job_t job = {pid, THREADS + p, PER};
        th_send(node, s, 1, &job, sizeof job);
    }
    for (uint32_t t = 0; t < THREADS; t++) {
        tj[t] = (thread_job_t){node, {pid, t, PER}, 0};
        cr_assert_eq(pthread_create(&th[t], NULL, seq_thread, &tj[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        cr_assert_eq(tj[t].failed, 0);
    }
    check_seq(&rx, (long)(THREADS + PROCS) * PER, THREADS + PROCS, PER);
    cr_assert_eq(atomic_load(&tx.failed), 0);
    th_node_stop(node);
}

Test(mailbox, a_million_messages_over_two_schedulers_none_lost, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static seq_rx_t rx;
    static seq_tx_t tx;
    ar_pid_t pid = th_spawn(node, &seq_b, &rx);
    enum { SENDERS = 4, PER = 250000 };
    for (uint32_t p = 0; p < SENDERS; p++) {
        ar_pid_t s = th_spawn(node, &seq_tx_b, &tx);
        seq_job_t job = {pid, p, PER};
        th_send(node, s, 1, &job, sizeof job);
    }
    check_seq(&rx, (long)SENDERS * PER, SENDERS, PER);
    th_await(atomic_load(&tx.done) == SENDERS);
    cr_assert_eq(atomic_load(&tx.failed), 0);
    ar_node_stats_t s = th_stats(node);
    cr_assert_geq(s.delivered, (uint64_t)SENDERS * PER);
    th_node_stop(node);
}

/* ---- mailbox_limit --------------------------------------------------------------------------- */
/* With one scheduler, a process that busy-waits in its handler keeps the target from
 * running, so what is sent to the target stays queued, unhandled. */
typedef struct hog {
    atomic_int running, release;
} hog_t;
static void hog_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)self, (void)m;
    hog_t *h = state;
    atomic_store(&h->running, 1);
    while (!atomic_load(&h->release)) th_nap();
}
static const ar_behaviour_t hog_b = {"hog", arg_init, hog_handle, NULL};

Test(mailbox, mailbox_limit_refuses_with_eagain_then_accepts_after_handling,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    static th_echo_state_t st;
    static hog_t hog;
    ar_spawn_opts_t opts = {.mailbox_limit = 4};
    ar_pid_t limited = AR_PID_NONE;
    cr_assert_eq(ar_spawn(node, &th_echo, &st, &opts, &limited), 0);
    ar_pid_t h = th_spawn(node, &hog_b, &hog);
    th_send(node, h, 1, NULL, 0);
    th_await(atomic_load(&hog.running) == 1);

    for (int i = 0; i < 4; i++) cr_assert_eq(ar_send(node, limited, 1, "m", 1), 0, "send %d", i);
    cr_assert_eq(ar_send(node, limited, 1, "m", 1), AR_EAGAIN);
    cr_assert_eq(ar_send(node, limited, 1, NULL, 0), AR_EAGAIN);
    ar_proc_info_t info;
    cr_assert_eq(ar_proc_info(node, limited, &info), 0);
    cr_assert_eq(info.mailbox_len, 4, "mailbox_len %zu", info.mailbox_len);
    ar_buf_t r = {0};
    cr_assert_eq(ar_call(node, limited, 1, "c", 1, &r, TH_WAIT_MS), AR_EAGAIN,
                 "a CALL counts against the limit too");
    /* Timer messages are never refused. */
    ar_ref_t t;
    cr_assert_eq(ar_send_after(node, 0, limited, 9, NULL, 0, &t), 0);
    cr_assert_eq(ar_send(node, h, 1, NULL, 0), 0, "other processes are unaffected");

    atomic_store(&hog.release, 1);
    th_await(atomic_load(&st.casts) == 4);
    th_echo_check(node, limited); /* the call fits again */
    for (int i = 0; i < 4; i++) cr_assert_eq(ar_send(node, limited, 1, "m", 1), 0);
    th_await(atomic_load(&st.casts) == 8);
    cr_assert_eq(atomic_load(&st.calls), 1, "the refused call was never handled");
    th_node_stop(node);
}

/* ---- zero-length payloads and m->from ----------------------------------------------------------- */
Test(mailbox, zero_length_payloads_are_delivered_with_len_zero, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    cr_assert_eq(ar_send(node, rec, 5, NULL, 0), 0);
    cr_assert_eq(ar_send(node, rec, 6, "abc", 0), 0);
    cr_assert_eq(th_sync(node, rec), 2);
    cr_assert_eq(log.e[0].tag, 5);
    cr_assert_eq(log.e[0].len, 0);
    cr_assert_eq(log.e[0].kind, AR_MSG_CAST);
    cr_assert_eq(log.e[1].tag, 6);
    cr_assert_eq(log.e[1].len, 0);

    ar_pid_t echo = th_spawn(node, &th_echo, NULL);
    ar_buf_t r = {(void *)1, 99};
    cr_assert_eq(ar_call(node, echo, 1, NULL, 0, &r, TH_WAIT_MS), 0);
    cr_assert_eq(r.len, 0);
    ar_buf_free(&r);
    cr_assert_null(r.data);
    cr_assert_eq(r.len, 0);
    th_node_stop(node);
}

static void relay_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    ar_pid_t to;
    memcpy(&to, m->data, sizeof to);
    ar_send(ar_node(self), to, 77, "relayed", 7);
}
static const ar_behaviour_t relay_b = {"relay", NULL, relay_handle, NULL};

typedef struct thread_send {
    ar_node_t *node;
    ar_pid_t to;
    int rc;
} thread_send_t;
static void *send_thread(void *arg)
{
    thread_send_t *t = arg;
    t->rc = ar_send(t->node, t->to, 88, "thread", 6);
    return NULL;
}

Test(mailbox, from_is_the_sending_process_and_none_outside_processes, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t rec = th_spawn(node, &th_recorder, &log);
    th_send(node, rec, 66, "main", 4);
    ar_pid_t relay = th_spawn(node, &relay_b, NULL);
    th_send(node, relay, 1, &rec, sizeof rec);
    th_await(th_log_len(&log) == 2);
    static thread_send_t ts;
    ts = (thread_send_t){node, rec, 1};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, send_thread, &ts), 0);
    pthread_join(t, NULL);
    cr_assert_eq(ts.rc, 0);
    th_await(th_log_len(&log) == 3);

    cr_assert_eq(log.e[0].tag, 66);
    cr_assert(ar_pid_is_none(log.e[0].from), "from main: AR_PID_NONE");
    cr_assert_str_eq(log.e[0].data, "main");
    cr_assert_eq(log.e[1].tag, 77);
    cr_assert(ar_pid_eq(log.e[1].from, relay), "from a process: its pid");
    cr_assert_str_eq(log.e[1].data, "relayed");
    cr_assert_eq(log.e[1].kind, AR_MSG_CAST);
    cr_assert_eq(log.e[2].tag, 88);
    cr_assert(ar_pid_is_none(log.e[2].from), "from a foreign thread: AR_PID_NONE");
    th_node_stop(node);
}

/* A process sending to itself: the message arrives in its own mailbox. */
static void self_send_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    th_log_t *log = state;
    th_log_msg(log, m);
    if (m->tag < 5) ar_send(ar_node(self), ar_self(self), m->tag + 1, NULL, 0);
}
static const ar_behaviour_t self_send_b = {"self_send", arg_init, self_send_handle, NULL};

Test(mailbox, send_to_self_is_delivered_in_order, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    static th_log_t log;
    ar_pid_t p = th_spawn(node, &self_send_b, &log);
    th_send(node, p, 0, NULL, 0);
    th_await(th_log_len(&log) == 6);
    for (uint32_t i = 0; i < 6; i++) {
        cr_assert_eq(log.e[i].tag, i);
        if (i > 0) cr_assert(ar_pid_eq(log.e[i].from, p));
    }
    th_node_stop(node);
}
