/* The commands: each runs inside its connection's process and writes one RESP reply.
 * A key's value lives in its bucket process; a command that needs it calls the bucket.
 * Writes (SET, INCR) go through ar_registry_call, which starts the bucket of a new key;
 * reads and removals (GET, EXISTS, DEL, CRASH) look the running bucket up first
 * (ar_registry_lookup) and call it only if it is there, so a miss starts nothing. */
#include "kvcache.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef const redisReply *const *args_t; /* argv[0] is the command name */

static bool arg_is(const redisReply *a, const char *word)
{
    return a->len == strlen(word) && strncasecmp(a->str, word, a->len) == 0;
}

static ar_key_t key_of(const redisReply *a) { return (ar_key_t){a->str, a->len}; }

/* The error reply for a failed bucket call. */
static void out_call_error(kv_conn_t *c, int rc)
{
    if (rc == AR_ENOPROC)
        kv_out_fmt(c, "-ERR bucket crashed\r\n");
    else if (rc == AR_ECLOSED)
        kv_out_fmt(c, "-ERR the buckets are restarting or the server is stopping\r\n");
    else if (rc == AR_EINVAL)
        kv_out_fmt(c, "-ERR keys are 1 to %d bytes\r\n", AR_KEY_MAX);
    else
        kv_out_fmt(c, "-ERR %s\r\n", ar_strerror(rc));
}

/* 0 when key can be a registry key and the registry is there. */
static int check_key(kv_conn_t *c, const redisReply *key)
{
    if (!c->reg) return AR_ECLOSED; /* the registry is restarting */
    return key->len == 0 || key->len > AR_KEY_MAX ? AR_EINVAL : 0;
}

/* The key's running bucket: AR_ENOPROC when there is none. */
static int lookup(kv_conn_t *c, const redisReply *key, ar_pid_t *pid)
{
    int rc = check_key(c, key);
    return rc ? rc : ar_registry_lookup(c->reg, key_of(key), pid);
}

/* Calls a key's bucket: through the registry when start is true (SET, INCR: the key may
 * be new), else only a running one (rc AR_ENOPROC: there is none, or it ended). A write
 * whose bucket ended under it (a DEL or an expiry racing it) is sent again: the registry
 * then starts a fresh bucket for the key. */
static int bucket_call(ar_proc_t *self, kv_conn_t *c, const redisReply *key, int op,
                       const void *req, size_t len, bool start, ar_buf_t *rep)
{
    ar_pid_t pid;
    int rc = start ? check_key(c, key) : lookup(c, key, &pid);
    if (rc != 0) return rc;
    if (!start) return ar_call(ar_node(self), pid, (uint32_t)op, req, len, rep, KV_CALL_MS);
    rc = AR_ENOPROC;
    for (int i = 0; i < 3 && rc == AR_ENOPROC; i++)
        rc = ar_registry_call(c->reg, key_of(key), (uint32_t)op, req, len, rep, KV_CALL_MS);
    return rc;
}

/* Writes a bucket's reply (kv_status byte first) as RESP. */
static void out_bucket_reply(kv_conn_t *c, const ar_buf_t *r)
{
    const uint8_t *p = r->data;
    int64_t v = 0;
    switch (r->len ? p[0] : 0) {
    case KV_R_OK: kv_out(c, "+OK\r\n", 5); break;
    case KV_R_NIL: kv_out(c, "$-1\r\n", 5); break;
    case KV_R_VALUE: kv_out_bulk(c, p + 1, r->len - 1); break;
    case KV_R_INT:
        if (r->len == 1 + sizeof v) memcpy(&v, p + 1, sizeof v);
        kv_out_fmt(c, ":%" PRId64 "\r\n", v);
        break;
    case KV_R_NOTINT: kv_out_fmt(c, "-ERR value is not an integer or out of range\r\n"); break;
    case KV_R_OVERFLOW: kv_out_fmt(c, "-ERR increment or decrement would overflow\r\n"); break;
    case KV_R_NOMEM: kv_out_fmt(c, "-ERR out of memory\r\n"); break;
    default: kv_out_fmt(c, "-ERR bad reply from bucket\r\n"); break;
    }
}

/* One call, its reply written (a missing key reads as `missing`). */
static void simple(ar_proc_t *self, kv_conn_t *c, const redisReply *key, int op,
                   const void *req, size_t len, bool start, const char *missing)
{
    ar_buf_t r = {0};
    int rc = bucket_call(self, c, key, op, req, len, start, &r);
    if (rc == 0)
        out_bucket_reply(c, &r);
    else if (rc == AR_ENOPROC && !start)
        kv_out(c, missing, strlen(missing));
    else
        out_call_error(c, rc);
    ar_buf_free(&r);
}

static void cmd_ping(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    if (argc == 2)
        kv_out_bulk(c, argv[1]->str, argv[1]->len);
    else
        kv_out(c, "+PONG\r\n", 7);
}

static void cmd_get(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    simple(self, c, argv[1], KV_GET, NULL, 0, false, "$-1\r\n");
}

static void cmd_incr(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    simple(self, c, argv[1], KV_INCR, NULL, 0, true, NULL);
}

/* SET k v [EX s | PX ms]: the request is the TTL (int64 ms, 0: none) then the value. */
static void cmd_set(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    int64_t ttl = 0, n;
    for (size_t i = 3; i < argc; i += 2) {
        bool ex = arg_is(argv[i], "EX"), px = arg_is(argv[i], "PX");
        if ((!ex && !px) || i + 1 == argc || ttl) {
            kv_out_fmt(c, "-ERR syntax error\r\n");
            return;
        }
        if (!kv_parse_i64(argv[i + 1]->str, argv[i + 1]->len, &n) || n <= 0 ||
            (ex && n > INT64_MAX / 1000)) {
            kv_out_fmt(c, "-ERR invalid expire time in 'set' command\r\n");
            return;
        }
        ttl = ex ? n * 1000 : n;
    }
    size_t len = sizeof ttl + argv[2]->len;
    char small[4096];
    char *req = len <= sizeof small ? small : ar_malloc(len);
    if (!req) {
        kv_out_fmt(c, "-ERR out of memory\r\n");
        return;
    }
    memcpy(req, &ttl, sizeof ttl);
    memcpy(req + sizeof ttl, argv[2]->str, argv[2]->len);
    simple(self, c, argv[1], KV_SET, req, len, true, NULL);
    if (req != small) ar_free(req);
}

/* DEL and EXISTS: the sum of the buckets' answers, a missing key counting 0. */
static void sum_keys(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc, int op)
{
    int64_t total = 0;
    for (size_t i = 1; i < argc; i++) {
        ar_buf_t r = {0};
        int64_t v = 0;
        int rc = bucket_call(self, c, argv[i], op, NULL, 0, false, &r);
        if (rc != 0 && rc != AR_ENOPROC) {
            out_call_error(c, rc);
            return;
        }
        if (rc == 0 && r.len == 1 + sizeof v) memcpy(&v, (char *)r.data + 1, sizeof v);
        ar_buf_free(&r);
        total += v;
    }
    kv_out_fmt(c, ":%" PRId64 "\r\n", total);
}

static void cmd_del(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    sum_keys(self, c, argv, argc, KV_DEL);
}

static void cmd_exists(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    sum_keys(self, c, argv, argc, KV_EXISTS);
}

static void cmd_dbsize(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    kv_out_fmt(c, ":%zu\r\n", c->reg ? ar_registry_count(c->reg) : (size_t)0);
}

/* CRASH k: that key's bucket fails on purpose. CRASH or CRASH CONNECTION: this
 * connection's process does; the runtime closes its socket, and nothing restarts it. */
static void cmd_crash(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    if (argc == 1 || arg_is(argv[1], "CONNECTION")) AR_FAIL(self, "CRASH CONNECTION requested");
    ar_pid_t pid;
    int rc = lookup(c, argv[1], &pid);
    if (rc == AR_ENOPROC) {
        kv_out_fmt(c, "-ERR no such key\r\n");
        return;
    }
    ar_buf_t r = {0};
    if (rc == 0) /* the key rides along for the crash text */
        rc = ar_call(ar_node(self), pid, KV_CRASH, argv[1]->str, argv[1]->len, &r, KV_CALL_MS);
    ar_buf_free(&r);
    if (rc == 0)
        kv_out_fmt(c, "-ERR bucket did not crash\r\n");
    else
        out_call_error(c, rc); /* AR_ENOPROC: "bucket crashed" */
}

static void cmd_info(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    kv_info(self, c);
}

/* What redis-benchmark and redis-cli ask at their start. */
static void cmd_command(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    kv_out(c, "*0\r\n", 4);
}

static void cmd_config(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    if (!arg_is(argv[1], "GET") || argc != 3) {
        kv_out_fmt(c, "-ERR only CONFIG GET <parameter> is supported\r\n");
        return;
    }
    const char *value = arg_is(argv[2], "save") ? "" : arg_is(argv[2], "appendonly") ? "no" : NULL;
    if (!value) {
        kv_out(c, "*0\r\n", 4);
        return;
    }
    kv_out(c, "*2\r\n", 4);
    kv_out_bulk(c, argv[2]->str, argv[2]->len);
    kv_out_bulk(c, value, strlen(value));
}

static void cmd_quit(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    kv_out(c, "+OK\r\n", 5);
    c->closing = true;
}

typedef void (*cmd_fn)(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc);
static const struct {
    const char *name;
    size_t min, max; /* arguments, the name included; max 0: any number */
    cmd_fn fn;
} commands[] = {
    {"GET", 2, 2, cmd_get},       {"SET", 3, 0, cmd_set},         {"PING", 1, 2, cmd_ping},
    {"DEL", 2, 0, cmd_del},       {"EXISTS", 2, 0, cmd_exists},   {"INCR", 2, 2, cmd_incr},
    {"DBSIZE", 1, 1, cmd_dbsize}, {"INFO", 1, 2, cmd_info},       {"CRASH", 1, 2, cmd_crash},
    {"COMMAND", 1, 0, cmd_command}, {"CONFIG", 2, 0, cmd_config}, {"QUIT", 1, 1, cmd_quit},
};

void kv_command(ar_proc_t *self, kv_conn_t *c, const redisReply *req)
{
    if (req->type != REDIS_REPLY_ARRAY || req->elements == 0) { /* the guard lets none by */
        kv_out_fmt(c, "-ERR Protocol error\r\n");
        c->closing = true;
        return;
    }
    args_t argv = (args_t)req->element;
    size_t argc = req->elements;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (!arg_is(argv[0], commands[i].name)) continue;
        if (argc < commands[i].min || (commands[i].max && argc > commands[i].max)) {
            kv_out_fmt(c, "-ERR wrong number of arguments for '%s' command\r\n", commands[i].name);
            return;
        }
        commands[i].fn(self, c, argv, argc);
        return;
    }
    char name[33];
    size_t n = argv[0]->len < sizeof name - 1 ? argv[0]->len : sizeof name - 1;
    for (size_t i = 0; i < n; i++) { /* echoed back: printable only */
        char ch = argv[0]->str[i];
        name[i] = ch > 0x20 && ch < 0x7f && ch != '\'' ? ch : '?';
    }
    name[n] = '\0';
    kv_out_fmt(c, "-ERR unknown command '%s'\r\n", name);
}
