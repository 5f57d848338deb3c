/* A connection process: one per client, a temporary child of the "conns" supervisor (a
 * client's connection is never restarted). The acceptor hands it its socket
 * (AR_SOCK_OWNED). Each AR_SOCK_DATA goes through the guard, then hiredis's reader; the
 * requests in it go to their buckets together (batch.c), and all their replies go out in
 * one ar_socket_send, so a pipeline costs one send per read. Reads are armed KV_READS at
 * a time (re-armed on AR_SOCK_PASSIVE), not once per read. When a send is refused
 * (AR_EAGAIN: the client does not read its replies), reads stop and so does running
 * requests, until AR_SOCK_WRITABLE: the requests not yet run wait in the reader, and a
 * client that does not read makes us hold about KV_OUT_HIGH of replies and one batch's
 * answers, not what it asked for. */
#include "kvcache.h"

#include <hiredis/read.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define KV_READS 32             /* reads armed at a time */
#define KV_SEND_MAX (256 * 1024) /* one send's bytes: a quarter of the socket's default
                                    send_limit, so a large output goes in slices and is
                                    never refused for its size alone */
#define KV_OUT_HIGH (1024 * 1024) /* replies held before they are sent mid-read */

static bool reserve(kv_conn_t *c, size_t n)
{
    if (c->oom) return false;
    if (c->cap - c->len >= n) return true;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap - c->len < n) cap *= 2;
    char *p = ar_realloc(c->out, cap);
    if (!p) {
        c->oom = true;
        return false;
    }
    c->out = p;
    c->cap = cap;
    return true;
}

void kv_out(kv_conn_t *c, const void *p, size_t n)
{
    if (!reserve(c, n)) return;
    memcpy(c->out + c->len, p, n);
    c->len += n;
}

void kv_out_fmt(kv_conn_t *c, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    kv_out(c, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

void kv_out_bulk(kv_conn_t *c, const void *p, size_t n)
{
    kv_out_fmt(c, "$%zu\r\n", n);
    kv_out(c, p, n);
    kv_out(c, "\r\n", 2);
}

/* Reads on: KV_READS more deliveries. */
static void arm(ar_proc_t *self, kv_conn_t *c)
{
    c->paused = false;
    int rc = ar_socket_active(self, c->sock, KV_READS);
    if (rc == AR_ENOTCONN) return; /* closed: AR_SOCK_CLOSED is on its way */
    if (rc != 0) AR_FAIL(self, "ar_socket_active: %s", ar_strerror(rc));
}

/* Sends what is pending, in slices, then closes if asked to. A refused send (the client
 * does not read) leaves the rest here and turns reads off until AR_SOCK_WRITABLE. */
static void flush(ar_proc_t *self, kv_conn_t *c)
{
    if (c->oom) {
        ar_stop(self, (ar_reason_t){AR_ERROR, "out of memory for replies"});
        return;
    }
    while (c->sent < c->len) {
        size_t n = c->len - c->sent < KV_SEND_MAX ? c->len - c->sent : KV_SEND_MAX;
        int rc = ar_socket_send(self, c->sock, c->out + c->sent, n);
        if (rc == AR_EAGAIN) {
            c->blocked = true;
            atomic_fetch_add_explicit(&c->app->send_eagain, 1, memory_order_relaxed);
            if (!c->paused) {
                c->paused = true;
                rc = ar_socket_active(self, c->sock, 0);
                if (rc != 0 && rc != AR_ENOTCONN)
                    AR_FAIL(self, "ar_socket_active: %s", ar_strerror(rc));
            }
            return;
        }
        if (rc == AR_ENOTCONN) { /* the client is gone; its AR_SOCK_CLOSED ends us */
            c->sent = c->len;
            break;
        }
        if (rc != 0) AR_FAIL(self, "ar_socket_send: %s", ar_strerror(rc));
        c->sent += n;
    }
    c->sent = c->len = 0;
    if (c->closing) {
        int rc = ar_socket_close(self, c->sock); /* what was queued still goes out */
        if (rc != 0) AR_FAIL(self, "ar_socket_close: %s", ar_strerror(rc));
        c->sock = 0;
        ar_stop(self, AR_REASON(AR_NORMAL));
    }
}

/* Runs the whole requests the reader holds, in order, and sends their replies; stops
 * early when a send is refused (the rest wait in the reader for AR_SOCK_WRITABLE). Once
 * every request before a bad one is answered, the bad one gets its -ERR and a close. */
static void drain(ar_proc_t *self, kv_conn_t *c)
{
    c->reg = ar_registry_find(ar_node(self), KV_BUCKETS_NAME); /* new after a restart */
    uint64_t n = 0;
    bool drained = false;
    void *got;
    while (!c->blocked && !c->closing && !c->oom) {
        if (redisReaderGetReply(c->reader, &got) != REDIS_OK) {
            if (!c->why) c->why = c->reader->errstr;
            drained = true;
            break;
        }
        if (!got) {
            drained = true;
            break;
        }
        kv_req_t *req = got;
        n++;
        if (!kv_batch_add(self, c, req)) { /* not a bucket's request: runs in its turn */
            kv_batch_flush(self, c);
            c->cur = req;
            kv_command(self, c, c->cur);
            c->cur = NULL;
            kv_req_free(req);
        }
        if (c->len - c->sent >= KV_OUT_HIGH) { /* bounds what one read can make us hold */
            kv_batch_flush(self, c);
            flush(self, c);
        }
    }
    kv_batch_flush(self, c);
    atomic_fetch_add_explicit(&c->app->requests, n, memory_order_relaxed);
    if (drained && c->why && !c->closing) {
        kv_out_fmt(c, "-ERR %s\r\n", c->why);
        c->closing = true;
    }
    if (!c->blocked) flush(self, c);
}

static void on_data(ar_proc_t *self, kv_conn_t *c, const char *p, size_t len)
{
    if (c->closing || c->why) return; /* reads in flight when we stopped taking more */
    const char *why = NULL;
    size_t ok = kv_guard_scan(&c->guard, p, len, &why);
    if (ok > 0 && redisReaderFeed(c->reader, p, ok) != REDIS_OK) why = "out of memory";
    c->why = why;
    drain(self, c);
}

/* The client reads again: send the rest, run what waits in the reader, read on. */
static void on_writable(ar_proc_t *self, kv_conn_t *c)
{
    c->blocked = false;
    flush(self, c);
    if (!c->blocked && !c->closing) drain(self, c);
    if (!c->blocked && !c->closing && c->paused && !c->why) arm(self, c);
}

static int conn_init(ar_proc_t *self, void *arg, void **state)
{
    kv_conn_t *c = ar_calloc(1, sizeof *c);
    if (!c) return AR_ENOMEM;
    c->app = arg;
    c->reader = kv_reader_new(c);
    if (!c->reader) {
        ar_free(c);
        return AR_ENOMEM;
    }
    *state = c;
    return 0;
}

static void conn_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    kv_conn_t *c = state;
    if (m->kind != AR_MSG_SOCKET) return;
    if (m->tag == AR_SOCK_OWNED) {
        c->sock = m->ref;
        c->owned = true;
        atomic_fetch_add_explicit(&c->app->clients, 1, memory_order_relaxed);
        arm(self, c);
        return;
    }
    if (m->ref != c->sock || c->sock == 0) return;
    switch (m->tag) {
    case AR_SOCK_DATA: on_data(self, c, m->data, m->len); break;
    case AR_SOCK_PASSIVE:
        if (!c->paused && !c->closing && !c->why) arm(self, c);
        break;
    case AR_SOCK_WRITABLE:
        if (c->blocked) on_writable(self, c);
        break;
    case AR_SOCK_CLOSED: ar_stop(self, AR_REASON(AR_NORMAL)); break; /* the client left */
    default: break;
    }
}

static void conn_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    kv_conn_t *c = state;
    if (c->owned) atomic_fetch_sub_explicit(&c->app->clients, 1, memory_order_relaxed);
    kv_req_free(c->cur); /* CRASH CONNECTION unwound its command */
    kv_batch_free(c);
    redisReaderFree(c->reader); /* a request half read goes back to the pool */
    kv_req_pool_free(c);
    ar_free(c->slots);
    ar_free(c->scratch);
    ar_free(c->out);
    ar_free(c);
}

const ar_behaviour_t kv_conn = {
    .name = "kv.conn",
    .init = conn_init,
    .handle = conn_handle,
    .terminate = conn_terminate,
};
