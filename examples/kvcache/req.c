/* Requests as hiredis's reader builds them. The reader does the parsing; what it builds
 * is up to its object functions, and hiredis's own make a redisReply per argument (a SET
 * costs eight mallocs and frees). Ours fill a kv_req_t: the arguments back to back in one
 * buffer, taken from a small pool each connection keeps, so that once a connection is
 * warm a request costs no allocation at all. The guard (guard.c) has already made sure
 * the reader sees only arrays of bulk strings: integers and nils are refused. */
#include "kvcache.h"

#include <hiredis/read.h>
#include <stdint.h>
#include <string.h>

#define KV_POOL_MAX (KV_BATCH + 4) /* requests kept for reuse: a batch's and a few more */
#define KV_KEEP_BYTES (64 * 1024)  /* a pooled request keeps a buffer up to this size */

void kv_req_free(kv_req_t *r)
{
    if (!r) return;
    kv_conn_t *c = r->owner;
    if (c->pooled < KV_POOL_MAX) {
        if (r->cap > KV_KEEP_BYTES) { /* one large SET must not pin its size for ever */
            ar_free(r->data);
            r->data = NULL;
            r->cap = 0;
        }
        r->next = c->pool;
        c->pool = r;
        c->pooled++;
        return;
    }
    ar_free(r->argv);
    ar_free(r->data);
    ar_free(r);
}

void kv_req_pool_free(kv_conn_t *c)
{
    while (c->pool) {
        kv_req_t *r = c->pool;
        c->pool = r->next;
        ar_free(r->argv);
        ar_free(r->data);
        ar_free(r);
    }
    c->pooled = 0;
}

/* The top-level array: a request of n arguments. Returning NULL makes the reader fail
 * with "out of memory", which the connection answers with -ERR and a close. */
static void *create_array(const redisReadTask *t, int n)
{
    kv_conn_t *c = t->privdata;
    if (t->parent || n < 1) return NULL;
    kv_req_t *r = c->pool;
    if (r) {
        c->pool = r->next;
        c->pooled--;
    } else if (!(r = ar_calloc(1, sizeof *r))) {
        return NULL;
    }
    r->owner = c;
    r->argc = r->used = 0;
    r->want = (size_t)n;
    if (r->argv_cap < r->want) {
        kv_arg_t *argv = ar_realloc(r->argv, r->want * sizeof *argv);
        if (!argv) {
            kv_req_free(r);
            return NULL;
        }
        r->argv = argv;
        r->argv_cap = r->want;
    }
    return r;
}

/* An argument: appended to the request's buffer, NUL-terminated. Pointers into the buffer
 * are set once the last argument is in (the buffer may move as it grows). */
static void *create_string(const redisReadTask *t, char *str, size_t len)
{
    if (!t->parent) return NULL;
    kv_req_t *r = t->parent->obj;
    if (r->cap - r->used < len + 1) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap - r->used < len + 1) cap *= 2;
        char *data = ar_realloc(r->data, cap);
        if (!data) return NULL;
        r->data = data;
        r->cap = cap;
    }
    memcpy(r->data + r->used, str, len);
    r->data[r->used + len] = '\0';
    r->argv[t->idx] = (kv_arg_t){.off = r->used, .len = len};
    r->used += len + 1;
    if (++r->argc == r->want)
        for (size_t i = 0; i < r->argc; i++) r->argv[i].str = r->data + r->argv[i].off;
    return r;
}

static void *refuse_integer(const redisReadTask *t, long long v) { return NULL; }
static void *refuse_nil(const redisReadTask *t) { return NULL; }
static void free_object(void *obj) { kv_req_free(obj); }

static redisReplyObjectFunctions request_functions = {
    .createString = create_string,
    .createArray = create_array,
    .createInteger = refuse_integer,
    .createNil = refuse_nil,
    .freeObject = free_object,
};

struct redisReader *kv_reader_new(kv_conn_t *c)
{
    redisReader *r = redisReaderCreateWithFunctions(&request_functions);
    if (r) r->privdata = c;
    return r;
}
