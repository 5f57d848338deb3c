/* kvcache: what the files share. The tree and the flags are described in main.c. */
#ifndef KVCACHE_H
#define KVCACHE_H

#include <arbor.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Names the processes find each other by: pids change on restart, names do not. */
#define KV_ROOT_NAME "kvcache"     /* the root supervisor */
#define KV_BUCKETS_NAME "kv.buckets" /* the registry (ar_registry_find) */
#define KV_STATS_NAME "kv.stats"   /* the stats process */
#define KV_ACCEPTOR_NAME "kv.acceptor" /* the acceptor, for CRASH ACCEPTOR */
#define KV_CONNS_ID "conns"        /* the connections' supervisor, a child of the root */
#define KV_BUCKET_BEHAVIOUR "kv.bucket"

#define KV_CALL_MS 5000 /* a connection's call to a bucket or to stats gives up after this */

/* Bounds on one request, checked on the raw bytes before hiredis's reader sees them
 * (guard.c): the reader itself would wait for, and buffer, any length it is told. */
#define KV_MAX_ARGS 1024
#define KV_MAX_BULK (512 * 1024)        /* one argument */
#define KV_MAX_REQUEST (1024 * 1024)    /* all the arguments of one request */

#define KV_NKINDS 12 /* event kinds, by bit number (AR_EV_SPAWN = bit 0 ... AR_EV_USER) */

/* The application's settings and counters, shared by every process of the tree (the
 * `arg` of each child spec). Counters are relaxed atomics: they feed reports only. */
typedef struct kv_app {
    char listen[64]; /* where to listen; the acceptor overwrites it with the bound address,
                        so that a restarted acceptor takes the same port again */
    bool listening;  /* the first listen succeeded (acceptor only) */
    int idle_ms;     /* buckets idle this long are reaped */
    bool quiet;      /* do not print bucket SPAWN/EXIT/REAP events */
    atomic_uint_fast64_t requests;    /* commands answered */
    atomic_uint_fast64_t connections; /* connections accepted, ever */
    atomic_int_fast64_t clients;      /* connections open now */
    atomic_uint_fast64_t send_eagain; /* sends refused (a client not reading its replies) */
    /* Written by the stats process as it ends; read by main after ar_node_stop. */
    uint64_t final_events[KV_NKINDS];
} kv_app_t;

/* The bucket protocol: m->tag is the operation; payloads are raw bytes. */
enum kv_op {
    KV_GET = 1, /* -> KV_R_VALUE + value, or KV_R_NIL */
    KV_SET,     /* int64 ttl_ms (0: none) then the value -> KV_R_OK */
    KV_DEL,     /* -> KV_R_INT 1; the bucket ends, so the key is gone */
    KV_EXISTS,  /* -> KV_R_INT 1 or 0 */
    KV_INCR,    /* -> KV_R_INT + int64, or KV_R_NOTINT / KV_R_OVERFLOW */
    KV_CRASH,   /* the key as payload: the bucket crashes on purpose (no reply) */
    KV_EXPIRE,  /* a bucket's own TTL timer: uint64 generation */
};
/* First byte of a bucket's reply. */
enum kv_status {
    KV_R_OK = 1, KV_R_NIL, KV_R_VALUE, KV_R_INT, KV_R_NOTINT, KV_R_OVERFLOW, KV_R_NOMEM
};

/* The stats process's one call: the event tallies so far, uint64_t[KV_NKINDS]. */
#define KV_STATS_GET 1

extern const ar_behaviour_t kv_acceptor; /* arg: kv_app_t * */
extern const ar_behaviour_t kv_conn;     /* arg: kv_app_t * */
extern const ar_behaviour_t kv_bucket;   /* registry entries; config arg: kv_app_t * */
extern const ar_behaviour_t kv_stats;    /* arg: kv_app_t * */

/* guard.c: a running check of the RESP stream's declared lengths. */
typedef struct kv_guard {
    bool in_body;        /* skipping a bulk string's bytes, else reading a header line */
    char line[24];       /* the header line so far (type byte, digits, CR) */
    size_t line_len;
    int64_t args_left;   /* bulk strings still due in the current request */
    int64_t body_left;   /* bytes of the current bulk still due, with its CRLF */
    int64_t req_bytes;   /* bytes the current request has declared so far */
} kv_guard_t;
/* Scans the next len bytes of a connection's stream. Returns len when they stay within
 * the bounds; else the offset in p of the line that broke them (everything before it is
 * safe to feed) and *why, the error text for the client. */
size_t kv_guard_scan(kv_guard_t *g, const char *p, size_t len, const char **why);

/* A request: its arguments, argv[0] the command's name (req.c). */
typedef struct kv_arg {
    const char *str; /* NUL-terminated (binary-safe: len counts) */
    size_t len, off; /* off: where str is in data, while the request is being built */
} kv_arg_t;
typedef struct kv_req {
    struct kv_conn *owner;
    struct kv_req *next; /* in its connection's pool */
    size_t argc, want;   /* arguments in, and declared */
    kv_arg_t *argv;
    size_t argv_cap;
    char *data; /* the arguments' bytes, back to back */
    size_t used, cap;
} kv_req_t;

#define KV_BATCH 16 /* pipelined requests sent together (batch.c). Their answers wait in the
                       mailbox until taken, so a connection holds at most this many values */

/* A connection process's state (conn.c), which the commands (commands.c) answer into. */
struct redisReader;
typedef struct kv_conn {
    kv_app_t *app;
    ar_socket_t sock;           /* 0 until AR_SOCK_OWNED, and once closed */
    bool owned;                 /* it had a socket: counted in app->clients */
    struct redisReader *reader; /* hiredis's, fed only what the guard let through */
    kv_req_t *cur;              /* the request running: terminate frees it on a crash */
    kv_req_t *pool;             /* requests to reuse (req.c) */
    size_t pooled;
    kv_guard_t guard;
    ar_registry_t *reg;         /* the buckets, found again for every read (a restarted
                                   registry is a new handle); NULL while restarting */
    struct kv_slot *slots;      /* pipelined requests asked of buckets (batch.c) */
    size_t nslots, slots_cap;
    char *scratch;              /* a SET's payload is built here */
    size_t scratch_cap;
    char *out;                  /* replies not yet sent: out[sent..len) */
    size_t len, sent, cap;
    bool blocked;               /* a send got AR_EAGAIN: nothing runs until AR_SOCK_WRITABLE */
    bool paused;                /* reads are off (since a refused send) */
    const char *why;            /* the stream broke the guard here: -ERR once the requests
                                   before it are answered */
    bool closing;               /* the last reply is written: close once it is sent */
    bool oom;                   /* the replies could not grow: the connection ends */
} kv_conn_t;

/* conn.c: appending to the replies (on no memory they set c->oom and do nothing). */
void kv_out(kv_conn_t *c, const void *p, size_t n);
void kv_out_fmt(kv_conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kv_out_bulk(kv_conn_t *c, const void *p, size_t n);
/* commands.c: runs one request (an array of bulk strings) and writes its reply. */
void kv_command(ar_proc_t *self, kv_conn_t *c, const kv_req_t *req);
/* A request to one key's bucket, as kv_prepare reads it. */
typedef struct kv_ask {
    int op;                       /* enum kv_op */
    const kv_arg_t *key;
    bool start;                   /* SET, INCR: a new key starts a bucket */
    const char *missing;          /* the reply when the key has no bucket */
    const char *error;            /* refused before any call: the reply */
    const void *payload;          /* the request's bytes (SET's are in c->scratch) */
    size_t len;
} kv_ask_t;
/* Reads req as a single-key bucket request (GET, SET, INCR; DEL, EXISTS and CRASH of one
 * key): false for anything else. */
bool kv_prepare(kv_conn_t *c, const kv_req_t *req, kv_ask_t *a);
/* Writes the RESP reply for a bucket's answer (enum kv_status byte first). */
void kv_out_reply(kv_conn_t *c, const void *data, size_t len);
extern const char kv_crashed[]; /* the reply to CRASH k */

/* batch.c: pipelining. kv_batch_add takes a request to send with the others of its read
 * (it owns req then), or returns false: flush, then run it with kv_command. */
bool kv_batch_add(ar_proc_t *self, kv_conn_t *c, kv_req_t *req);
/* Writes the replies of every request taken, in order, waiting for the buckets. */
void kv_batch_flush(ar_proc_t *self, kv_conn_t *c);
/* Frees what is held (a connection ending mid-batch). */
void kv_batch_free(kv_conn_t *c);

/* req.c: a hiredis reader that builds kv_req_t requests for c; giving a request back. */
struct redisReader *kv_reader_new(kv_conn_t *c);
void kv_req_free(kv_req_t *r);
void kv_req_pool_free(kv_conn_t *c);

/* stats.c: writes the INFO reply: the node's counters, the registry's count, the event
 * tallies (asked of the stats process) and the app's own counters. */
void kv_info(ar_proc_t *self, kv_conn_t *c);

/* INCR's number rules (bucket.c): Redis's, a decimal int64 with no sign but '-', no
 * leading zero and no spaces. */
bool kv_parse_i64(const char *s, size_t len, int64_t *out);

#endif /* KVCACHE_H */
