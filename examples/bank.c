/* bank: a bank account as an arbor process.
 *
 * - The account owns a balance and answers calls: deposit, withdraw, balance, and a
 *   statement whose reply is deferred to the month end (a timer), when interest is paid.
 *   It refuses an overdraft with an error reply and keeps going.
 * - A stateless teller passes customers' requests on to the account, calling it from
 *   inside its own handler. It crashes (AR_FAIL) on a bad deposit slip: it holds nothing
 *   worth keeping, so it lets it crash, and the account is untouched.
 * - An observer process monitors the teller; the DOWN tells it how the teller ended,
 *   and it answers main's "await exit" call with that (another deferred reply).
 *
 * Requests and replies are msgpack, packed and unpacked with msgpack-c. main checks every
 * answer and exits non-zero if anything is unexpected: `make demo` is a smoke test too.
 */
#include <arbor.h>

#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {                   /* message tags */
    TAG_DEPOSIT = 1,     /* CALL, amount -> reply */
    TAG_WITHDRAW,        /* CALL, amount -> reply, refused if it would overdraw */
    TAG_BALANCE,         /* CALL -> reply */
    TAG_STATEMENT,       /* CALL -> reply at the month end, with the interest paid */
    TAG_MONTH_END,       /* TIMER the account sets for itself */
    TAG_AWAIT_EXIT,      /* CALL to the observer -> the next exit report */
    TAG_WATCH,           /* CALL to the observer: monitor this pid, then answer */
};

#define MONTH_MS 50       /* a month, for the demo */
#define INTEREST_BP 100   /* monthly interest in basis points: 1% */
#define CALL_MS 5000      /* every call gives up after this long */
#define MAX_STATEMENTS 8  /* statement calls waiting for one month end */

/* ---- The protocol: msgpack ------------------------------------------------------------
 * A request is one integer: the amount in cents (deposit, withdraw) or nothing at all.
 * A reply is a map {"ok": bool, "balance": int} with "error": str when refused, and
 * "month": int, "interest": int for a statement. An exit report is a map
 * {"pid": str, "reason": str, "text": str}. Payloads here come from this program; input
 * from outside deserves a bounded structure check before msgpack_unpack_next. */

struct reply {
    bool ok;
    int64_t balance;
    int64_t month, interest; /* -1: absent */
    char error[64];
};

struct exit_report {
    char pid[AR_PID_STRLEN];
    char reason[32];
    char text[160];
};

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_amount(msgpack_sbuffer *sb, int64_t amount)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_int64(&pk, amount);
}

static void pack_reply(msgpack_sbuffer *sb, const struct reply *r)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2 + (r->ok ? 0 : 1) + (r->month >= 0 ? 2 : 0));
    pack_str(&pk, "ok");
    if (r->ok)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
    pack_str(&pk, "balance");
    msgpack_pack_int64(&pk, r->balance);
    if (!r->ok) {
        pack_str(&pk, "error");
        pack_str(&pk, r->error);
    }
    if (r->month >= 0) {
        pack_str(&pk, "month");
        msgpack_pack_int64(&pk, r->month);
        pack_str(&pk, "interest");
        msgpack_pack_int64(&pk, r->interest);
    }
}

static void pack_report(msgpack_sbuffer *sb, const struct exit_report *e)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "pid");
    pack_str(&pk, e->pid);
    pack_str(&pk, "reason");
    pack_str(&pk, e->reason);
    pack_str(&pk, "text");
    pack_str(&pk, e->text);
}

static bool key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

static bool get_int(const msgpack_object *o, int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return true;
    }
    return false;
}

static bool get_str(const msgpack_object *o, char *buf, size_t n)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= n)
        return false;
    memcpy(buf, o->via.str.ptr, o->via.str.size);
    buf[o->via.str.size] = '\0';
    return true;
}

/* Unpacks exactly one object filling all of data[0..len). */
static bool unpack_one(msgpack_unpacked *up, const void *data, size_t len)
{
    size_t off = 0;
    return len > 0 &&
           msgpack_unpack_next(up, data, len, &off) == MSGPACK_UNPACK_SUCCESS &&
           off == len;
}

static bool decode_amount(const void *data, size_t len, int64_t *amount)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    bool ok = unpack_one(&up, data, len) && get_int(&up.data, amount);
    msgpack_unpacked_destroy(&up);
    return ok;
}

static bool decode_reply(const void *data, size_t len, struct reply *r)
{
    msgpack_unpacked up;
    bool have_ok = false, have_balance = false;

    *r = (struct reply){.month = -1, .interest = -1};
    msgpack_unpacked_init(&up);
    bool ok = unpack_one(&up, data, len) && up.data.type == MSGPACK_OBJECT_MAP;
    for (uint32_t i = 0; ok && i < up.data.via.map.size; i++) {
        const msgpack_object *k = &up.data.via.map.ptr[i].key;
        const msgpack_object *v = &up.data.via.map.ptr[i].val;
        if (key_is(k, "ok")) {
            ok = have_ok = v->type == MSGPACK_OBJECT_BOOLEAN;
            r->ok = ok && v->via.boolean;
        } else if (key_is(k, "balance")) {
            ok = have_balance = get_int(v, &r->balance);
        } else if (key_is(k, "month")) {
            ok = get_int(v, &r->month);
        } else if (key_is(k, "interest")) {
            ok = get_int(v, &r->interest);
        } else if (key_is(k, "error")) {
            ok = get_str(v, r->error, sizeof r->error);
        } /* unknown keys are skipped: a newer account may add some */
    }
    msgpack_unpacked_destroy(&up);
    return ok && have_ok && have_balance;
}

static bool decode_report(const void *data, size_t len, struct exit_report *e)
{
    msgpack_unpacked up;
    int have = 0;

    memset(e, 0, sizeof *e);
    msgpack_unpacked_init(&up);
    bool ok = unpack_one(&up, data, len) && up.data.type == MSGPACK_OBJECT_MAP;
    for (uint32_t i = 0; ok && i < up.data.via.map.size; i++) {
        const msgpack_object *k = &up.data.via.map.ptr[i].key;
        const msgpack_object *v = &up.data.via.map.ptr[i].val;
        if (key_is(k, "pid")) {
            ok = get_str(v, e->pid, sizeof e->pid);
            have |= 1;
        } else if (key_is(k, "reason")) {
            ok = get_str(v, e->reason, sizeof e->reason);
            have |= 2;
        } else if (key_is(k, "text")) {
            ok = get_str(v, e->text, sizeof e->text);
            have |= 4;
        }
    }
    msgpack_unpacked_destroy(&up);
    return ok && have == 7;
}

/* Answers a CALL (now or deferred) with a packed reply. */
static void answer(ar_proc_t *self, ar_reply_to_t to, const struct reply *r)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_reply(&sb, r);
    ar_reply(ar_node(self), to, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void refuse(struct reply *r, const char *why)
{
    r->ok = false;
    snprintf(r->error, sizeof r->error, "%s", why);
}

/* ---- The account ------------------------------------------------------------------- */

struct account_closed { /* written by terminate; main reads it after ar_node_stop */
    bool closed;
    ar_exit_code_t why;
    int64_t balance;
};

struct account_args { /* init's arg: read during ar_spawn only */
    int64_t opening;
    struct account_closed *closed;
};

struct account {
    int64_t balance, month;
    bool month_end_set;                         /* the month-end timer is pending */
    size_t nwaiting;
    ar_reply_to_t waiting[MAX_STATEMENTS];      /* deferred statement calls */
    struct account_closed *closed;
};

static int account_init(ar_proc_t *self, void *arg, void **state)
{
    const struct account_args *a = arg;
    if (a->opening < 0)
        return AR_EINVAL; /* ar_spawn returns it; no process is left behind */
    struct account *acc = calloc(1, sizeof *acc);
    if (!acc)
        return AR_ENOMEM;
    acc->balance = a->opening;
    acc->closed = a->closed;
    *state = acc;
    return 0;
}

static void account_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    struct account *acc = state;
    struct reply r = {.ok = true, .month = -1, .interest = -1};
    int64_t amount;

    if (m->kind == AR_MSG_TIMER && m->tag == TAG_MONTH_END) {
        /* Month end: pay the interest, then answer every statement waiting for it. */
        r.interest = acc->balance * INTEREST_BP / 10000;
        r.balance = acc->balance += r.interest;
        r.month = ++acc->month;
        for (size_t i = 0; i < acc->nwaiting; i++)
            answer(self, acc->waiting[i], &r);
        acc->nwaiting = 0;
        acc->month_end_set = false;
        return;
    }
    if (m->kind != AR_MSG_CALL)
        return; /* the account only answers calls */

    switch (m->tag) {
    case TAG_DEPOSIT:
    case TAG_WITHDRAW:
        if (!decode_amount(m->data, m->len, &amount) || amount <= 0)
            refuse(&r, "bad amount");
        else if (m->tag == TAG_WITHDRAW && amount > acc->balance)
            refuse(&r, "insufficient funds");
        else if (m->tag == TAG_DEPOSIT && amount > INT64_MAX / 2 - acc->balance)
            refuse(&r, "amount too large");
        else
            acc->balance += m->tag == TAG_DEPOSIT ? amount : -amount;
        break;
    case TAG_BALANCE:
        break;
    case TAG_STATEMENT:
        /* A deferred reply: keep reply_to and answer at the month end. Months pass
         * only while a statement waits, which keeps the transcript reproducible. */
        if (acc->nwaiting == MAX_STATEMENTS) {
            refuse(&r, "too many statements waiting");
            break;
        }
        if (!acc->month_end_set) {
            int rc = ar_send_after(ar_node(self), MONTH_MS, ar_self(self), TAG_MONTH_END,
                                   NULL, 0, NULL);
            if (rc != 0) {
                refuse(&r, ar_strerror(rc));
                break;
            }
            acc->month_end_set = true;
        }
        acc->waiting[acc->nwaiting++] = m->reply_to;
        return;
    default:
        refuse(&r, "unknown request");
    }
    r.balance = acc->balance;
    answer(self, m->reply_to, &r);
}

static void account_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    struct account *acc = state;
    struct reply r = {.balance = acc->balance, .month = -1, .interest = -1};

    refuse(&r, "account closed");
    for (size_t i = 0; i < acc->nwaiting; i++)
        answer(self, acc->waiting[i], &r);
    acc->closed->closed = true;
    acc->closed->why = why.code;
    acc->closed->balance = acc->balance;
    free(acc);
}

static const ar_behaviour_t account_behaviour = {
    .name = "account",
    .init = account_init,
    .handle = account_handle,
    .terminate = account_terminate,
};

/* ---- The teller -------------------------------------------------------------------- */

struct teller_args { /* outlives the teller: its state is this pointer */
    ar_pid_t account;
};

static int teller_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    return 0;
}

/* Checks a request and passes it on to the account. ar_call parks the teller, not its
 * scheduler thread. A CALL gets the account's answer; a CAST is a deposit slip that
 * nobody waits for. Bad input crashes the teller. */
static void teller_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    const struct teller_args *t = state;
    ar_buf_t reply;
    int64_t amount;

    AR_ASSERT(self, m->kind == AR_MSG_CALL || m->kind == AR_MSG_CAST);
    if (m->tag == TAG_DEPOSIT || m->tag == TAG_WITHDRAW) {
        if (!decode_amount(m->data, m->len, &amount))
            AR_FAIL(self, "undecodable amount (%zu bytes)", m->len);
        if (amount <= 0)
            AR_FAIL(self, "bad %s slip: amount %" PRId64,
                    m->tag == TAG_DEPOSIT ? "deposit" : "withdrawal", amount);
    }
    int rc = ar_call(ar_node(self), t->account, m->tag, m->data, m->len, &reply, CALL_MS);
    if (rc != 0 && m->kind == AR_MSG_CAST)
        AR_FAIL(self, "account did not answer: %s", ar_err_name(rc));
    if (rc != 0) {
        struct reply r = {.month = -1, .interest = -1};
        refuse(&r, ar_strerror(rc));
        answer(self, m->reply_to, &r);
        return;
    }
    if (m->kind == AR_MSG_CALL)
        ar_reply(ar_node(self), m->reply_to, reply.data, reply.len);
    ar_buf_free(&reply);
}

static const ar_behaviour_t teller_behaviour = {
    .name = "teller",
    .init = teller_init,
    .handle = teller_handle,
};

/* ---- The observer: hands exit reports to whoever awaits one ------------------------ */

struct observer {
    bool have_report, waiting;
    ar_reply_to_t waiter;  /* a deferred AWAIT_EXIT call */
    size_t len;
    char report[512];
};

static int observer_init(ar_proc_t *self, void *arg, void **state)
{
    *state = arg;
    return 0;
}

/* Keeps an exit report for the next AWAIT_EXIT call, or answers the one waiting. */
static void observer_report(ar_proc_t *self, struct observer *o, const void *data, size_t len)
{
    if (len > sizeof o->report) return;
    if (o->waiting) {
        ar_reply(ar_node(self), o->waiter, data, len);
        o->waiting = false;
    } else {
        memcpy(o->report, data, len);
        o->len = len;
        o->have_report = true;
    }
}

static void observer_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    struct observer *o = state;

    if (m->kind == AR_MSG_CALL && m->tag == TAG_WATCH && m->len == sizeof(ar_pid_t)) {
        ar_pid_t pid;
        ar_ref_t ref;
        memcpy(&pid, m->data, sizeof pid);
        int rc = ar_monitor(self, pid, &ref); /* one DOWN when it ends, however it ends */
        ar_reply(ar_node(self), m->reply_to, &rc, sizeof rc);
    } else if (m->kind == AR_MSG_DOWN) {
        struct exit_report e;
        msgpack_sbuffer sb;
        ar_pid_format(m->from, e.pid, sizeof e.pid);
        snprintf(e.reason, sizeof e.reason, "%s", ar_exit_code_name(m->reason.code));
        snprintf(e.text, sizeof e.text, "%s", m->reason.text ? m->reason.text : "");
        msgpack_sbuffer_init(&sb);
        pack_report(&sb, &e);
        observer_report(self, o, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    } else if (m->kind == AR_MSG_CALL && m->tag == TAG_AWAIT_EXIT) {
        if (o->have_report) {
            ar_reply(ar_node(self), m->reply_to, o->report, o->len);
            o->have_report = false;
        } else if (!o->waiting) {
            o->waiter = m->reply_to; /* answered when a report arrives */
            o->waiting = true;
        } else {
            ar_reply(ar_node(self), m->reply_to, NULL, 0); /* one waiter at a time */
        }
    }
}

static const ar_behaviour_t observer_behaviour = {
    .name = "observer",
    .init = observer_init,
    .handle = observer_handle,
};

/* ---- main: a customer, and the checks ---------------------------------------------- */

static int failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "bank: UNEXPECTED: %s\n", what);
        failures++;
    }
}

struct money {
    char s[32];
};

static struct money money(int64_t cents)
{
    struct money m;
    int64_t a = cents < 0 ? -cents : cents;
    snprintf(m.s, sizeof m.s, "%s%" PRId64 ".%02" PRId64, cents < 0 ? "-" : "", a / 100,
             a % 100);
    return m;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Calls an account or a teller; 0 with *r filled, or an AR_E* code. */
static int bank_call(ar_node_t *node, ar_pid_t to, uint32_t tag, int64_t amount,
                     struct reply *r)
{
    msgpack_sbuffer sb;
    ar_buf_t reply;

    msgpack_sbuffer_init(&sb);
    if (tag == TAG_DEPOSIT || tag == TAG_WITHDRAW)
        pack_amount(&sb, amount);
    int rc = ar_call(node, to, tag, sb.data, sb.size, &reply, CALL_MS);
    msgpack_sbuffer_destroy(&sb);
    if (rc != 0)
        return rc;
    if (!decode_reply(reply.data, reply.len, r))
        rc = AR_EBADMSG;
    ar_buf_free(&reply);
    return rc;
}

/* Prints one line of the transcript and checks the answer against what a bank owes. */
static void expect(const char *what, int rc, const struct reply *r, bool ok,
                   int64_t balance)
{
    if (rc != 0)
        printf("  %-28s failed: %s\n", what, ar_err_name(rc));
    else if (!r->ok)
        printf("  %-28s refused: %s (balance %s)\n", what, r->error, money(r->balance).s);
    else if (r->month < 0)
        printf("  %-28s ok, balance %s\n", what, money(r->balance).s);
    else
        printf("  %-28s ok, balance %s (month %" PRId64 ", interest %s)\n", what,
               money(r->balance).s, r->month, money(r->interest).s);
    check(rc == 0 && r->ok == ok && r->balance == balance, what);
}

int main(void)
{
    ar_node_config_t cfg;
    ar_node_t *node;
    ar_pid_t account, teller, observer;
    struct reply r;
    char pid[AR_PID_STRLEN];
    ar_node_stats_t before, after;
    static struct account_closed closed;
    static struct observer observer_state;
    static struct teller_args teller_args;

    setvbuf(stdout, NULL, _IOLBF, 0); /* a readable transcript even through a pipe */
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    int rc = ar_node_start(&cfg, &node);
    if (rc != 0) {
        fprintf(stderr, "bank: ar_node_start: %s\n", ar_strerror(rc));
        return 1;
    }
    printf("arbor %s: bank demo\n\n", ar_version());

    /* An account: a process that owns its balance and answers calls. */
    struct account_args args = {.opening = 10000, .closed = &closed};
    rc = ar_spawn(node, &account_behaviour, &args, NULL, &account);
    check(rc == 0, "spawn account");
    ar_pid_format(account, pid, sizeof pid);
    printf("account %s opened with %s\n", pid, money(args.opening).s);
    rc = bank_call(node, account, TAG_DEPOSIT, 5000, &r);
    expect("deposit 50.00", rc, &r, true, 15000);
    rc = bank_call(node, account, TAG_WITHDRAW, 3000, &r);
    expect("withdraw 30.00", rc, &r, true, 12000);
    rc = bank_call(node, account, TAG_WITHDRAW, 50000, &r);
    expect("withdraw 500.00", rc, &r, false, 12000);
    check(rc == 0 && strcmp(r.error, "insufficient funds") == 0, "overdraft error text");
    rc = bank_call(node, account, TAG_BALANCE, 0, &r);
    expect("balance", rc, &r, true, 12000);

    /* A bad opening balance: init refuses, ar_spawn returns its code, nothing remains. */
    struct account_args bad = {.opening = -1, .closed = &closed};
    ar_pid_t none = AR_PID_NONE;
    rc = ar_spawn(node, &account_behaviour, &bad, NULL, &none);
    printf("  %-28s init refused: %s\n", "open with -0.01", ar_err_name(rc));
    check(rc == AR_EINVAL, "init refusing a negative opening balance");

    /* A teller in front of the account, and an observer to hear of the teller's end. */
    rc = ar_spawn(node, &observer_behaviour, &observer_state, NULL, &observer);
    check(rc == 0, "spawn observer");
    teller_args = (struct teller_args){.account = account};
    rc = ar_spawn(node, &teller_behaviour, &teller_args, NULL, &teller);
    check(rc == 0, "spawn teller");
    ar_pid_format(teller, pid, sizeof pid);
    printf("\nteller %s passes requests on to the account\n", pid);
    {
        ar_buf_t watch;
        int mrc = -1;
        rc = ar_call(node, observer, TAG_WATCH, &teller, sizeof teller, &watch, CALL_MS);
        if (rc == 0 && watch.len == sizeof mrc) memcpy(&mrc, watch.data, sizeof mrc);
        if (rc == 0) ar_buf_free(&watch);
        printf("  %-28s %s\n", "observer monitors it", ar_err_name(mrc));
        check(rc == 0 && mrc == 0, "the observer monitors the teller");
    }
    rc = bank_call(node, teller, TAG_DEPOSIT, 2500, &r);
    expect("deposit 25.00 via teller", rc, &r, true, 14500);
    rc = bank_call(node, teller, TAG_WITHDRAW, 20000, &r);
    expect("withdraw 200.00 via teller", rc, &r, false, 14500);

    /* A statement: the account keeps the call and answers it when its timer fires. */
    printf("\nstatement: answered at the month end, %d ms from now\n", MONTH_MS);
    double t0 = now_ms();
    rc = bank_call(node, account, TAG_STATEMENT, 0, &r);
    double waited = now_ms() - t0;
    expect("statement", rc, &r, true, 14645);
    check(rc == 0 && r.month == 1 && r.interest == 145, "statement month and interest");
    check(waited >= MONTH_MS - 1, "the statement waited for the month end");

    /* A bad deposit slip crashes the teller; the account keeps its state. */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_amount(&sb, -500);
    printf("\na deposit slip for -5.00 goes to the teller\n");
    rc = ar_send(node, teller, TAG_DEPOSIT, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    check(rc == 0, "send the bad slip");

    ar_buf_t reply;
    struct exit_report e;
    rc = ar_call(node, observer, TAG_AWAIT_EXIT, NULL, 0, &reply, CALL_MS);
    check(rc == 0, "await the teller's exit report");
    if (rc == 0) {
        bool ok = decode_report(reply.data, reply.len, &e);
        check(ok, "decode the exit report");
        if (ok)
            printf("  teller %s ended: %s: %s\n", e.pid, e.reason, e.text);
        check(ok && strcmp(e.pid, pid) == 0 && strcmp(e.reason, "error") == 0 &&
                  strstr(e.text, "bad deposit slip: amount -500") != NULL,
              "the teller crashed with AR_ERROR and the AR_FAIL text");
        ar_buf_free(&reply);
    }
    /* a process is dead by the time its DOWN is seen */
    rc = ar_proc_info(node, teller, &(ar_proc_info_t){0});
    printf("  %-28s %s\n", "ar_proc_info(teller)", ar_err_name(rc));
    check(rc == AR_ENOPROC, "ar_proc_info of the dead teller");
    rc = bank_call(node, teller, TAG_BALANCE, 0, &r);
    printf("  %-28s %s (%s)\n", "call the teller", ar_err_name(rc), ar_strerror(rc));
    check(rc == AR_ENOPROC, "a call to the dead teller");
    ar_node_stats(node, &before);
    rc = ar_send(node, teller, TAG_BALANCE, NULL, 0);
    ar_node_stats(node, &after);
    printf("  %-28s returns %d, the message is dropped (+%" PRIu64 " dropped)\n",
           "send to the teller", rc, after.dropped - before.dropped);
    check(rc == 0 && after.dropped == before.dropped + 1,
          "a send to a dead pid is dropped");
    rc = bank_call(node, account, TAG_BALANCE, 0, &r);
    expect("balance", rc, &r, true, 14645);

    printf("\nnode: %zu processes, %" PRIu64 " spawned, %" PRIu64 " exited, %" PRIu64
           " sent, %" PRIu64 " delivered, %" PRIu64 " dropped\n",
           after.processes, after.spawned, after.exited, after.sent, after.delivered,
           after.dropped);

    /* Stopping the node stops the top-level processes in reverse spawn order. */
    rc = ar_node_stop(node, 5000);
    check(rc == 0, "ar_node_stop");
    printf("node stopped: %s; account closed (%s), final balance %s\n", ar_err_name(rc),
           closed.closed ? ar_exit_code_name(closed.why) : "never",
           money(closed.balance).s);
    check(closed.closed && closed.why == AR_SHUTDOWN && closed.balance == 14645,
          "the account's terminate ran with AR_SHUTDOWN");

    if (failures) {
        printf("bank: %d unexpected result(s)\n", failures);
        return 1;
    }
    printf("bank: all as expected\n");
    return 0;
}
