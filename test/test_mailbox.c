/* Mailboxes: payloads are copied, per-pair FIFO (threads and processes), nothing lost
 * under load, mailbox_limit (and that it counts only CASTs and CALLs), zero-length
 * payloads, m->from. */
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

/* ---- mailbox_limit counts only CASTs and CALLs ------------------------------------------------- */
/* A process with mailbox_limit 2 that traps exits: on START it monitors a process, asks a
 * server that answers only when told, and then stays parked in a receive that takes
 * anything but CASTs and CALLs, until an END timer; then it crashes. Its mailbox is filled
 * with two CASTs it never takes. While it is full, sends and calls to it are refused with
 * AR_EAGAIN, but no signal and no other message is: an exit signal, the answer to its ask,
 * a timer message, the DOWN of its own monitor each arrive and are received; a peer's link
 * and monitor are taken in too, so its end reaches the peer as an EXIT and a DOWN. */
enum { TAG_START = 100, TAG_FILL, TAG_TICK, TAG_END, TAG_ASK, TAG_ANSWER, TAG_LINK, TAG_MONITOR };

typedef struct full {
    th_log_t log; /* what it received while full, and its terminate reason */
    ar_pid_t server, watched;
    ar_ref_t ask_ref, mon_ref;
    int ask_rc, mon_rc;
} full_t;

static bool not_cast_or_call(const ar_msg_t *m, void *ud)
{
    (void)ud;
    return m->kind != AR_MSG_CAST && m->kind != AR_MSG_CALL;
}

static void full_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    full_t *f = state;
    if (m->kind != AR_MSG_CAST || m->tag != TAG_START) return;
    f->mon_rc = ar_monitor(self, f->watched, &f->mon_ref);
    f->ask_rc = ar_ask(self, f->server, TAG_ASK, NULL, 0, AR_INFINITY, &f->ask_ref);
    for (;;) {
        ar_msg_t *got = NULL;
        if (ar_receive(self, not_cast_or_call, NULL, TH_WAIT_MS, &got) != 0) break;
        th_log_msg(&f->log, got);
        bool end = got->kind == AR_MSG_TIMER && got->tag == TAG_END;
        ar_msg_release(self, got);
        if (end) break;
    }
    AR_FAIL(self, "full to the end");
}
static void full_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    (void)self;
    full_t *f = state;
    th_log_reason(&f->log, why);
}
static const ar_behaviour_t full_b = {"full", arg_init, full_handle, full_terminate};

/* Keeps the reply_to of a CALL and answers it on an ANSWER cast. */
typedef struct keeper {
    ar_reply_to_t kept;
    atomic_int kept_n;
} keeper_t;
static void keeper_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    keeper_t *k = state;
    if (m->kind == AR_MSG_CALL) {
        k->kept = m->reply_to;
        atomic_fetch_add(&k->kept_n, 1);
    } else if (m->kind == AR_MSG_CAST && m->tag == TAG_ANSWER) {
        ar_reply(ar_node(self), k->kept, "answer", 6);
    }
}
static const ar_behaviour_t keeper_b = {"keeper", arg_init, keeper_handle, NULL};

/* Links to or monitors the pid a LINK or MONITOR call carries (answered with the result);
 * logs everything else. */
typedef struct peer {
    th_log_t log;
    ar_ref_t ref;
} peer_t;
static void peer_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    peer_t *p = state;
    if (m->kind == AR_MSG_CALL && m->len == sizeof(ar_pid_t)) {
        ar_pid_t to;
        memcpy(&to, m->data, sizeof to);
        int rc = m->tag == TAG_LINK ? ar_link(self, to) : ar_monitor(self, to, &p->ref);
        ar_reply(ar_node(self), m->reply_to, &rc, sizeof rc);
        return;
    }
    th_log_msg(&p->log, m);
}
static const ar_behaviour_t peer_b = {"peer", arg_init, peer_handle, NULL};

static int peer_call(ar_node_t *node, ar_pid_t peer, uint32_t tag, ar_pid_t to)
{
    ar_buf_t r = {0};
    int rc = ar_call(node, peer, tag, &to, sizeof to, &r, TH_WAIT_MS);
    cr_assert_eq(rc, 0, TH_AT "call to the peer: %s", TH_ROW, ar_err_name(rc));
    int got;
    cr_assert_eq(r.len, sizeof got);
    memcpy(&got, r.data, sizeof got);
    ar_buf_free(&r);
    return got;
}

/* The limit still holds: a send and a call are refused, two messages wait. */
static void assert_full(ar_node_t *node, ar_pid_t pid)
{
    cr_assert_eq(ar_send(node, pid, TAG_FILL, "x", 1), AR_EAGAIN, TH_AT "a send was taken in",
                 TH_ROW);
    ar_buf_t r = {0};
    int rc = ar_call(node, pid, TAG_FILL, "c", 1, &r, TH_WAIT_MS);
    cr_assert_eq(rc, AR_EAGAIN, TH_AT "ar_call: %s, want AR_EAGAIN", TH_ROW, ar_err_name(rc));
    ar_proc_info_t info;
    cr_assert_eq(ar_proc_info(node, pid, &info), 0);
    cr_assert_eq(info.mailbox_len, 2, TH_AT "mailbox_len %zu", TH_ROW, info.mailbox_len);
}

Test(mailbox, mailbox_limit_counts_only_casts_and_calls, .timeout = TH_TIMEOUT)
{
    enum { EXIT_SIGNAL, ASK_REPLY, TIMER, OWN_DOWN, PEER_LINK, PEER_MONITOR };
    static const struct {
        const char *name;
        int kind;
    } rows[] = {
        {"exit signal", EXIT_SIGNAL}, {"reply to its ask", ASK_REPLY},
        {"timer message", TIMER},     {"DOWN of its own monitor", OWN_DOWN},
        {"link from a peer", PEER_LINK}, {"monitor from a peer", PEER_MONITOR},
    };
    ar_node_t *node = th_node(2);
    static full_t f;
    static keeper_t k;
    static peer_t p;
    f.server = th_spawn(node, &keeper_b, &k);
    f.watched = th_spawn(node, &th_echo, NULL);
    ar_spawn_opts_t o = {.mailbox_limit = 2, .trap_exit = true};
    ar_pid_t full = AR_PID_NONE;
    cr_assert_eq(ar_spawn(node, &full_b, &f, &o, &full), 0);
    ar_spawn_opts_t po = {.trap_exit = true};
    ar_pid_t peer = AR_PID_NONE;
    cr_assert_eq(ar_spawn(node, &peer_b, &p, &po, &peer), 0);

    th_send(node, full, TAG_START, NULL, 0);
    th_await(atomic_load(&k.kept_n) == 1 && th_proc_blocked(node, full));
    cr_assert_eq(f.mon_rc, 0, "ar_monitor: %s", ar_err_name(f.mon_rc));
    cr_assert_eq(f.ask_rc, 0, "ar_ask: %s", ar_err_name(f.ask_rc));
    th_send(node, full, TAG_FILL, "1", 1);
    th_send(node, full, TAG_FILL, "2", 1);
    assert_full(node, full);

    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        th_row_begin(rows[i].name);
        size_t n = th_log_len(&f.log);
        switch (rows[i].kind) {
        case EXIT_SIGNAL:
            cr_assert_eq(ar_exit(node, full, (ar_reason_t){AR_ERROR, "exit while full"}), 0);
            break;
        case ASK_REPLY:
            th_send(node, f.server, TAG_ANSWER, NULL, 0);
            break;
        case TIMER:
            cr_assert_eq(ar_send_after(node, 0, full, TAG_TICK, "tick", 4, NULL), 0);
            break;
        case OWN_DOWN:
            cr_assert_eq(ar_exit(node, f.watched, AR_REASON(AR_SHUTDOWN)), 0);
            break;
        case PEER_LINK:
            cr_assert_eq(peer_call(node, peer, TAG_LINK, full), 0, TH_AT "ar_link", TH_ROW);
            break;
        case PEER_MONITOR:
            cr_assert_eq(peer_call(node, peer, TAG_MONITOR, full), 0, TH_AT "ar_monitor", TH_ROW);
            break;
        }
        if (rows[i].kind != PEER_LINK && rows[i].kind != PEER_MONITOR) {
            th_await(th_log_len(&f.log) == n + 1);
            const th_entry_t *e = &f.log.e[n];
            static const ar_msg_kind_t kinds[] = {AR_MSG_EXIT, AR_MSG_REPLY, AR_MSG_TIMER,
                                                  AR_MSG_DOWN};
            cr_assert_eq(e->kind, kinds[rows[i].kind], TH_AT "received kind %d", TH_ROW, e->kind);
            if (rows[i].kind == EXIT_SIGNAL)
                cr_assert(e->code == AR_ERROR && ar_pid_is_none(e->from), TH_AT "EXIT %s",
                          TH_ROW, ar_exit_code_name(e->code));
            if (rows[i].kind == ASK_REPLY)
                cr_assert(e->ref == f.ask_ref && e->code == AR_NORMAL &&
                              strcmp(e->data, "answer") == 0,
                          TH_AT "REPLY ref %llu (want %llu), %s, \"%s\"", TH_ROW,
                          (unsigned long long)e->ref, (unsigned long long)f.ask_ref,
                          ar_exit_code_name(e->code), e->data);
            if (rows[i].kind == TIMER)
                cr_assert(e->tag == TAG_TICK && strcmp(e->data, "tick") == 0,
                          TH_AT "TIMER tag %u", TH_ROW, e->tag);
            if (rows[i].kind == OWN_DOWN)
                cr_assert(e->ref == f.mon_ref && ar_pid_eq(e->from, f.watched) &&
                              e->code == AR_SHUTDOWN,
                          TH_AT "DOWN ref %llu (want %llu), %s", TH_ROW, (unsigned long long)e->ref,
                          (unsigned long long)f.mon_ref, ar_exit_code_name(e->code));
        }
        assert_full(node, full);
    }

    /* Its end: the peer's link and monitor were taken in, so both fire. */
    th_row_begin("its end");
    cr_assert_eq(ar_send_after(node, 0, full, TAG_END, NULL, 0, NULL), 0);
    th_await(atomic_load(&f.log.terminates) == 1);
    cr_assert_eq(f.log.why, AR_ERROR, "ended with %s", ar_exit_code_name(f.log.why));
    cr_assert_str_eq(f.log.why_text, "full to the end");
    th_await(th_log_len(&p.log) >= 2);
    size_t ex = p.log.e[0].kind == AR_MSG_EXIT ? 0 : 1;
    cr_assert(p.log.e[ex].kind == AR_MSG_EXIT && ar_pid_eq(p.log.e[ex].from, full) &&
                  p.log.e[ex].code == AR_ERROR,
              "the peer's link: kind %d, %s", p.log.e[ex].kind,
              ar_exit_code_name(p.log.e[ex].code));
    cr_assert(p.log.e[1 - ex].kind == AR_MSG_DOWN && p.log.e[1 - ex].ref == p.ref &&
                  p.log.e[1 - ex].code == AR_ERROR,
              "the peer's monitor: kind %d, %s", p.log.e[1 - ex].kind,
              ar_exit_code_name(p.log.e[1 - ex].code));
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
