/* A bucket: the process holding one key's value, an entry of the registry "kv.buckets".
 * It starts on the first SET or INCR of its key, and ends when the key goes: DEL, its TTL
 * running out (its own ar_send_after timer), or the registry reaping it after idle_ms
 * without use. So a bucket exists exactly while its key does, and memory follows the
 * working set. A crash (CRASH k) takes only this key's value with it. */
#include "kvcache.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

typedef struct bucket {
    char *val;            /* KV_R_VALUE then the value: a GET's reply as is; NULL: none */
    size_t len, cap;      /* of val, status byte included; its allocated size */
    uint64_t deadline_ns; /* CLOCK_MONOTONIC; 0: no TTL */
    uint64_t gen;         /* generation of the TTL timer armed; another one's is stale */
} bucket_t;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

bool kv_parse_i64(const char *s, size_t len, int64_t *out)
{
    size_t i = (len > 0 && s[0] == '-') ? 1 : 0;
    if (len == i || len - i > 19 || (s[i] == '0' && len - i > 1) || (i && s[i] == '0'))
        return false; /* empty, too long, a leading zero, "-0" */
    uint64_t v = 0, limit = i ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (limit - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = s[0] == '-' ? (int64_t)(0 - v) : (int64_t)v; /* 0 - v wraps to INT64_MIN's bits */
    return true;
}

/* Answers the CALL; a reply that cannot be sent crashes the bucket, so that the caller
 * hears at once (AR_ENOPROC) instead of at its timeout. */
static void answer(ar_proc_t *self, const ar_msg_t *m, const void *data, size_t len)
{
    int rc = ar_reply(ar_node(self), m->reply_to, data, len);
    if (rc != 0) AR_FAIL(self, "reply failed: %s", ar_strerror(rc));
}

static void answer_status(ar_proc_t *self, const ar_msg_t *m, uint8_t status)
{
    answer(self, m, &status, 1);
}

static void answer_int(ar_proc_t *self, const ar_msg_t *m, int64_t v)
{
    char r[1 + sizeof v] = {KV_R_INT};
    memcpy(r + 1, &v, sizeof v);
    answer(self, m, r, sizeof r);
}

static void drop_value(bucket_t *b)
{
    ar_free(b->val);
    b->val = NULL;
    b->len = b->cap = 0;
    b->deadline_ns = 0;
    b->gen++; /* a TTL timer still pending is stale now */
}

/* Room for a value of n bytes: the buffer there is when it fits (and is not much too
 * large: a SET of the same size costs no allocation), else a new one; NULL: no memory. */
static char *room(bucket_t *b, size_t n)
{
    if (b->val && b->cap >= 1 + n && b->cap <= 2 * (1 + n) + 64) return b->val;
    return ar_malloc(1 + n);
}

/* Makes buf (from room) hold the value, a copy of v. Cannot fail. */
static void put(bucket_t *b, char *buf, const char *v, size_t n)
{
    if (buf != b->val) {
        ar_free(b->val);
        b->val = buf;
        b->cap = 1 + n;
    }
    buf[0] = KV_R_VALUE;
    memcpy(buf + 1, v, n);
    b->len = 1 + n;
}

/* Arms the TTL timer of generation gen for the time left to deadline (a timer's ms is an
 * int, so a longer TTL takes several rounds). */
static int arm_ttl(ar_proc_t *self, uint64_t gen, uint64_t deadline)
{
    uint64_t now = now_ns(), left_ms = deadline > now ? (deadline - now + 999999) / 1000000 : 0;
    int ms = left_ms > INT_MAX ? INT_MAX : (int)left_ms;
    return ar_send_after(ar_node(self), ms, ar_self(self), KV_EXPIRE, &gen, sizeof gen, NULL);
}

/* SET replaces the value and the TTL; on no memory nothing changes. */
static void do_set(ar_proc_t *self, bucket_t *b, const ar_msg_t *m)
{
    int64_t ttl_ms;
    if (m->len < sizeof ttl_ms) AR_FAIL(self, "short SET request");
    memcpy(&ttl_ms, m->data, sizeof ttl_ms);
    size_t n = m->len - sizeof ttl_ms;
    uint64_t gen = b->gen + 1, deadline = ttl_ms > 0 ? now_ns() + (uint64_t)ttl_ms * 1000000u : 0;
    char *buf = room(b, n);
    if (!buf || (deadline && arm_ttl(self, gen, deadline) != 0)) {
        if (buf != b->val) ar_free(buf);
        answer_status(self, m, KV_R_NOMEM);
        return;
    }
    put(b, buf, (const char *)m->data + sizeof ttl_ms, n);
    b->gen = gen; /* the old timer's message, if one is still due, is stale now */
    b->deadline_ns = deadline;
    answer_status(self, m, KV_R_OK);
}

static void do_incr(ar_proc_t *self, bucket_t *b, const ar_msg_t *m)
{
    int64_t v = 0;
    if (b->val && !kv_parse_i64(b->val + 1, b->len - 1, &v)) {
        answer_status(self, m, KV_R_NOTINT);
        return;
    }
    if (v == INT64_MAX) {
        answer_status(self, m, KV_R_OVERFLOW);
        return;
    }
    char text[24], *buf;
    int n = snprintf(text, sizeof text, "%" PRId64, v + 1);
    if (!(buf = room(b, (size_t)n))) {
        answer_status(self, m, KV_R_NOMEM);
        return;
    }
    put(b, buf, text, (size_t)n); /* INCR keeps the TTL, as Redis's does */
    answer_int(self, m, v + 1);
}

/* Crashes, naming the key (printable, and no quotes: crash reports quote the text). */
static void crash(ar_proc_t *self, const ar_msg_t *m)
{
    char key[65];
    size_t n = m->len < sizeof key - 1 ? m->len : sizeof key - 1;
    for (size_t i = 0; i < n; i++) {
        char c = ((const char *)m->data)[i];
        key[i] = c > 0x20 && c < 0x7f && c != '"' && c != '\'' ? c : '?';
    }
    key[n] = '\0';
    AR_FAIL(self, "bucket told to crash by CRASH %s", key);
}

static int bucket_init(ar_proc_t *self, void *arg, void **state)
{
    bucket_t *b = ar_calloc(1, sizeof *b);
    if (!b) return AR_ENOMEM;
    *state = b;
    return 0;
}

static void bucket_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    bucket_t *b = state;
    if (b->deadline_ns && now_ns() >= b->deadline_ns) drop_value(b); /* timer not in yet */
    if (m->kind == AR_MSG_TIMER && m->tag == KV_EXPIRE) {
        uint64_t gen = 0;
        if (m->len == sizeof gen) memcpy(&gen, m->data, sizeof gen);
        if (b->val && gen == b->gen && arm_ttl(self, b->gen, b->deadline_ns) != 0)
            drop_value(b); /* a long TTL's next round could not be armed: expire now */
    } else if (m->kind == AR_MSG_CALL) {
        switch (m->tag) {
        case KV_GET:
            if (b->val)
                answer(self, m, b->val, b->len);
            else
                answer_status(self, m, KV_R_NIL);
            break;
        case KV_SET: do_set(self, b, m); break;
        case KV_DEL:
            answer_int(self, m, b->val != NULL);
            drop_value(b);
            break;
        case KV_EXISTS: answer_int(self, m, b->val != NULL); break;
        case KV_INCR: do_incr(self, b, m); break;
        case KV_CRASH: crash(self, m); break;
        default: AR_FAIL(self, "unknown bucket operation %u", (unsigned)m->tag);
        }
    }
    if (!b->val) ar_stop(self, AR_REASON(AR_NORMAL)); /* no value, no key */
}

static void bucket_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    bucket_t *b = state;
    ar_free(b->val);
    ar_free(b);
}

const ar_behaviour_t kv_bucket = {
    .name = KV_BUCKET_BEHAVIOUR,
    .init = bucket_init,
    .handle = bucket_handle,
    .terminate = bucket_terminate,
};
