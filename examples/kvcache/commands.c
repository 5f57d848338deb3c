/* The commands: each runs inside its connection's process and writes one RESP reply.
 * A key's value lives in its bucket process, so most commands are a request to one
 * bucket (kv_prepare reads them). Writes (SET, INCR) may start the bucket of a new key;
 * reads and removals (GET, EXISTS, DEL, CRASH) only look a running bucket up
 * (ar_registry_lookup), so a miss starts nothing. Pipelined, these requests go out
 * together (batch.c); alone, or when a pipelined one must be run again, they run here,
 * one call at a time. */
#include "kvcache.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define STR_(x) #x
#define STR(x) STR_(x)
static const char E_KEY[] = "-ERR keys are 1 to " STR(AR_KEY_MAX) " bytes\r\n";
static const char E_CLOSED[] = "-ERR the buckets are restarting or the server is stopping\r\n";
static const char E_NOMEM[] = "-ERR out of memory\r\n";
static const char E_SYNTAX[] = "-ERR syntax error\r\n";
static const char E_EXPIRE[] = "-ERR invalid expire time in 'set' command\r\n";
const char kv_crashed[] = "-ERR bucket crashed\r\n";

typedef const kv_arg_t *args_t; /* argv[0] is the command name */

static bool arg_is(const kv_arg_t *a, const char *word)
{
    return a->len == strlen(word) && strncasecmp(a->str, word, a->len) == 0;
}

static ar_key_t key_of(const kv_arg_t *a) { return (ar_key_t){a->str, a->len}; }

static void out_text(kv_conn_t *c, const char *s) { kv_out(c, s, strlen(s)); }

/* The error reply for a failed bucket call. */
static void out_call_error(kv_conn_t *c, int rc)
{
    if (rc == AR_ENOPROC)
        out_text(c, kv_crashed);
    else if (rc == AR_ECLOSED)
        out_text(c, E_CLOSED);
    else
        kv_out_fmt(c, "-ERR %s\r\n", ar_strerror(rc));
}

void kv_out_reply(kv_conn_t *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    int64_t v = 0;
    switch (len ? p[0] : 0) {
    case KV_R_OK: kv_out(c, "+OK\r\n", 5); break;
    case KV_R_NIL: kv_out(c, "$-1\r\n", 5); break;
    case KV_R_VALUE: kv_out_bulk(c, p + 1, len - 1); break;
    case KV_R_INT:
        if (len == 1 + sizeof v) memcpy(&v, p + 1, sizeof v);
        kv_out_fmt(c, ":%" PRId64 "\r\n", v);
        break;
    case KV_R_NOTINT: out_text(c, "-ERR value is not an integer or out of range\r\n"); break;
    case KV_R_OVERFLOW: out_text(c, "-ERR increment or decrement would overflow\r\n"); break;
    case KV_R_NOMEM: out_text(c, E_NOMEM); break;
    default: out_text(c, "-ERR bad reply from bucket\r\n"); break;
    }
}

/* SET's payload in c->scratch: the TTL (int64 ms, 0: none) then the value; NULL when it
 * is refused, with a->error set. */
static void set_payload(kv_conn_t *c, args_t argv, size_t argc, kv_ask_t *a)
{
    int64_t ttl = 0, n;
    for (size_t i = 3; i < argc; i += 2) {
        bool ex = arg_is(&argv[i], "EX"), px = arg_is(&argv[i], "PX");
        if ((!ex && !px) || i + 1 == argc || ttl) {
            a->error = E_SYNTAX;
            return;
        }
        if (!kv_parse_i64(argv[i + 1].str, argv[i + 1].len, &n) || n <= 0 ||
            (ex && n > INT64_MAX / 1000)) {
            a->error = E_EXPIRE;
            return;
        }
        ttl = ex ? n * 1000 : n;
    }
    size_t len = sizeof ttl + argv[2].len;
    if (len > c->scratch_cap) {
        char *p = ar_realloc(c->scratch, len);
        if (!p) {
            a->error = E_NOMEM;
            return;
        }
        c->scratch = p;
        c->scratch_cap = len;
    }
    memcpy(c->scratch, &ttl, sizeof ttl);
    memcpy(c->scratch + sizeof ttl, argv[2].str, argv[2].len);
    a->payload = c->scratch;
    a->len = len;
}

/* ---- Commands that are not one bucket's request ------------------------------------- */
typedef void (*cmd_fn)(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc);

static void cmd_ping(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    if (argc == 2)
        kv_out_bulk(c, argv[1].str, argv[1].len);
    else
        kv_out(c, "+PONG\r\n", 7);
}

/* DEL and EXISTS of several keys: the sum of the buckets' answers, a missing key 0. */
static void sum_keys(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc, int op)
{
    int64_t total = 0;
    for (size_t i = 1; i < argc; i++) {
        if (!c->reg || argv[i].len == 0 || argv[i].len > AR_KEY_MAX) {
            out_text(c, c->reg ? E_KEY : E_CLOSED);
            return;
        }
        ar_pid_t pid;
        ar_buf_t r = {0};
        int64_t v = 0;
        int rc = ar_registry_lookup(c->reg, key_of(&argv[i]), &pid);
        if (rc == 0) rc = ar_call(ar_node(self), pid, (uint32_t)op, NULL, 0, &r, KV_CALL_MS);
        if (rc != 0 && rc != AR_ENOPROC) { /* AR_ENOPROC: none, or it just ended */
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

/* CRASH or CRASH CONNECTION (CRASH k is a bucket's request): this connection's process
 * fails; the runtime closes its socket, and nothing restarts it. CRASH ACCEPTOR: an
 * exit signal kills the acceptor, which the root supervisor restarts. */
static void cmd_crash(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    if (argc == 1 || !arg_is(&argv[1], "ACCEPTOR")) AR_FAIL(self, "CRASH CONNECTION requested");
    ar_node_t *node = ar_node(self);
    ar_pid_t acceptor = ar_whereis(node, KV_ACCEPTOR_NAME);
    int rc = ar_pid_is_none(acceptor)
                 ? AR_ENOPROC
                 : ar_exit(node, acceptor, (ar_reason_t){AR_ERROR, "CRASH ACCEPTOR requested"});
    if (rc == 0)
        kv_out(c, "+OK\r\n", 5);
    else
        kv_out_fmt(c, "-ERR no acceptor: %s\r\n", ar_strerror(rc));
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
    if (!arg_is(&argv[1], "GET") || argc != 3) {
        out_text(c, "-ERR only CONFIG GET <parameter> is supported\r\n");
        return;
    }
    const char *value = arg_is(&argv[2], "save")         ? ""
                        : arg_is(&argv[2], "appendonly") ? "no"
                                                         : NULL;
    if (!value) {
        kv_out(c, "*0\r\n", 4);
        return;
    }
    kv_out(c, "*2\r\n", 4);
    kv_out_bulk(c, argv[2].str, argv[2].len);
    kv_out_bulk(c, value, strlen(value));
}

static void cmd_quit(ar_proc_t *self, kv_conn_t *c, args_t argv, size_t argc)
{
    kv_out(c, "+OK\r\n", 5);
    c->closing = true;
}

static const struct command {
    const char *name;
    size_t min, max; /* arguments, the name included; max 0: any number */
    int op;          /* a bucket's request (with one key), else 0 */
    cmd_fn fn;       /* otherwise, or with more keys */
} commands[] = {
    {"GET", 2, 2, KV_GET, NULL},          {"SET", 3, 0, KV_SET, NULL},
    {"INCR", 2, 2, KV_INCR, NULL},        {"DEL", 2, 0, KV_DEL, cmd_del},
    {"EXISTS", 2, 0, KV_EXISTS, cmd_exists}, {"CRASH", 1, 2, KV_CRASH, cmd_crash},
    {"PING", 1, 2, 0, cmd_ping},          {"DBSIZE", 1, 1, 0, cmd_dbsize},
    {"INFO", 1, 2, 0, cmd_info},          {"COMMAND", 1, 0, 0, cmd_command},
    {"CONFIG", 2, 0, 0, cmd_config},      {"QUIT", 1, 1, 0, cmd_quit},
};

static const struct command *find(const kv_req_t *req)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (arg_is(&req->argv[0], commands[i].name)) return &commands[i];
    return NULL;
}

static bool arity_ok(const struct command *cmd, size_t argc)
{
    return argc >= cmd->min && (!cmd->max || argc <= cmd->max);
}

bool kv_prepare(kv_conn_t *c, const kv_req_t *req, kv_ask_t *a)
{
    const struct command *cmd = find(req);
    size_t argc = req->argc;
    if (!cmd || !cmd->op || !arity_ok(cmd, argc)) return false;
    args_t argv = req->argv;
    if ((cmd->op == KV_DEL || cmd->op == KV_EXISTS) && argc != 2) return false;
    if (cmd->op == KV_CRASH &&
        (argc == 1 || arg_is(&argv[1], "CONNECTION") || arg_is(&argv[1], "ACCEPTOR")))
        return false;
    *a = (kv_ask_t){.op = cmd->op, .key = &argv[1]};
    a->start = cmd->op == KV_SET || cmd->op == KV_INCR;
    a->missing = cmd->op == KV_GET     ? "$-1\r\n"
                 : cmd->op == KV_CRASH ? "-ERR no such key\r\n"
                                       : ":0\r\n";
    if (!c->reg)
        a->error = E_CLOSED; /* the registry is restarting */
    else if (argv[1].len == 0 || argv[1].len > AR_KEY_MAX)
        a->error = E_KEY;
    else if (cmd->op == KV_SET)
        set_payload(c, argv, argc, a);
    else if (cmd->op == KV_CRASH) { /* the key rides along for the crash text */
        a->payload = argv[1].str;
        a->len = argv[1].len;
    }
    return true;
}

/* Runs a bucket's request with a call. A write whose bucket ended under it (a DEL, an
 * expiry or a crash racing it) is sent again: the registry then starts a fresh bucket. */
static void run_ask(ar_proc_t *self, kv_conn_t *c, const kv_ask_t *a)
{
    if (a->error) {
        out_text(c, a->error);
        return;
    }
    ar_buf_t r = {0};
    int rc = AR_ENOPROC;
    if (a->start) {
        for (int i = 0; i < 3 && rc == AR_ENOPROC; i++)
            rc = ar_registry_call(c->reg, key_of(a->key), (uint32_t)a->op, a->payload, a->len,
                                  &r, KV_CALL_MS);
    } else {
        ar_pid_t pid = AR_PID_NONE;
        rc = ar_registry_lookup(c->reg, key_of(a->key), &pid);
        if (rc == 0)
            rc = ar_call(ar_node(self), pid, (uint32_t)a->op, a->payload, a->len, &r, KV_CALL_MS);
        if (rc == AR_ENOPROC && (a->op != KV_CRASH || ar_pid_is_none(pid))) {
            out_text(c, a->missing); /* no bucket, or it ended before it answered */
            return;
        }
    }
    if (rc == 0)
        kv_out_reply(c, r.data, r.len);
    else
        out_call_error(c, rc); /* CRASH k: AR_ENOPROC, "bucket crashed" */
    ar_buf_free(&r);
}

void kv_command(ar_proc_t *self, kv_conn_t *c, const kv_req_t *req)
{
    kv_ask_t a;
    if (kv_prepare(c, req, &a)) {
        run_ask(self, c, &a);
        return;
    }
    const struct command *cmd = find(req);
    args_t argv = req->argv;
    size_t argc = req->argc;
    if (cmd && !arity_ok(cmd, argc)) {
        kv_out_fmt(c, "-ERR wrong number of arguments for '%s' command\r\n", cmd->name);
    } else if (cmd && cmd->fn) {
        cmd->fn(self, c, argv, argc);
    } else {
        char name[33];
        size_t n = argv[0].len < sizeof name - 1 ? argv[0].len : sizeof name - 1;
        for (size_t i = 0; i < n; i++) { /* echoed back: printable only */
            char ch = argv[0].str[i];
            name[i] = ch > 0x20 && ch < 0x7f && ch != '\'' ? ch : '?';
        }
        name[n] = '\0';
        kv_out_fmt(c, "-ERR unknown command '%s'\r\n", name);
    }
}
