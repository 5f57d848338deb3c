/* The stats process: subscribed to the node's lifecycle event stream, it tallies every
 * event by kind and prints the ones worth seeing as they happen (with --quiet, not the
 * buckets' routine SPAWN, EXIT and REAP: a benchmark makes thousands). INFO asks it for
 * the tallies; as it ends it leaves them in the app for main's summary. Crash reports are
 * the runtime's own (stderr); these lines go to stdout. */
#include "kvcache.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct stats {
    kv_app_t *app;
    uint64_t tally[KV_NKINDS];
} stats_t;

static int bit_of(uint32_t kind)
{
    int b = 0;
    while (b < KV_NKINDS - 1 && !(kind & (1u << b))) b++;
    return b;
}

static bool routine(const stats_t *s, const ar_event_t *e)
{
    if (!s->app->quiet || !e->behaviour || strcmp(e->behaviour, KV_BUCKET_BEHAVIOUR) != 0)
        return false;
    if (e->kind == AR_EV_EXIT) return e->reason.code == AR_NORMAL || e->reason.code == AR_SHUTDOWN;
    return e->kind == AR_EV_SPAWN || e->kind == AR_EV_REAP;
}

/* One line, written at once so that it never interleaves with another thread's. */
static void print_event(const ar_event_t *e)
{
    char pid[AR_PID_STRLEN] = "-", old[AR_PID_STRLEN] = "", line[AR_EVENT_TEXT_MAX + 512];
    /* AR_PID_STRLEN fits any pid: a failure here would be a runtime bug, shown as "?" */
    if (!ar_pid_is_none(e->pid) && ar_pid_format(e->pid, pid, sizeof pid) != 0)
        strcpy(pid, "?");
    if (e->kind == AR_EV_RESTART && ar_pid_format(e->old_pid, old, sizeof old) != 0)
        strcpy(old, "?");
    bool reap = e->kind == AR_EV_REAP, why = e->kind & (AR_EV_EXIT | AR_EV_RESTART |
                                                         AR_EV_START_FAILED | AR_EV_GIVE_UP);
    snprintf(line, sizeof line, "[event] %-8s %-14s %-10s%s%s%s%s%s%s%s%s%s%s%s\n",
             ar_event_kind_name(e->kind), pid, e->behaviour ? e->behaviour : "-",
             e->name ? (reap ? " key \"" : " ") : "", e->name ? e->name : "",
             e->name && reap ? "\"" : "", *old ? " (was " : "", old, *old ? ")" : "",
             why ? " [" : "", why ? ar_exit_code_name(e->reason.code) : "",
             why && e->reason.text ? ": " : "", why && e->reason.text ? e->reason.text : "",
             why ? "]" : "");
    if (e->kind == AR_EV_LAGGED)
        snprintf(line, sizeof line, "[event] LAGGED: %llu events missed\n",
                 (unsigned long long)e->dropped);
    fputs(line, stdout);
}

static int stats_init(ar_proc_t *self, void *arg, void **state)
{
    stats_t *s = ar_calloc(1, sizeof *s);
    if (!s) return AR_ENOMEM;
    s->app = arg;
    int rc = ar_register(ar_node(self), KV_STATS_NAME, ar_self(self));
    if (rc == 0) rc = ar_events_subscribe(ar_node(self), AR_EV_ALL, NULL);
    if (rc != 0) {
        ar_free(s);
        return rc;
    }
    *state = s;
    return 0;
}

static void stats_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    stats_t *s = state;
    if (m->kind == AR_MSG_EVENT) {
        const ar_event_t *e = m->event;
        /* LAGGED stands for e->dropped events we never saw: count those as lost */
        s->tally[bit_of(e->kind)] += e->kind == AR_EV_LAGGED ? e->dropped : 1;
        if (!routine(s, e)) print_event(e);
    } else if (m->kind == AR_MSG_CALL && m->tag == KV_STATS_GET) {
        int rc = ar_reply(ar_node(self), m->reply_to, s->tally, sizeof s->tally);
        if (rc != 0) AR_FAIL(self, "ar_reply: %s", ar_strerror(rc));
    }
}

static void stats_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    stats_t *s = state;
    memcpy(s->app->final_events, s->tally, sizeof s->tally);
    ar_free(s);
}

const ar_behaviour_t kv_stats = {
    .name = "kv.stats",
    .init = stats_init,
    .handle = stats_handle,
    .terminate = stats_terminate,
};

/* ---- INFO ------------------------------------------------------------------------- */
typedef struct text {
    char buf[2048];
    size_t len;
} text_t;

static void add(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text_t *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, ap);
    va_end(ap);
    size_t room = sizeof t->buf - t->len; /* vsnprintf cut it to room - 1 */
    if (n > 0) t->len += (size_t)n < room ? (size_t)n : room - 1;
}

void kv_info(ar_proc_t *self, kv_conn_t *c)
{
    ar_node_t *node = ar_node(self);
    kv_app_t *app = c->app;
    ar_node_stats_t ns;
    ar_node_stats(node, &ns);
    uint64_t tally[KV_NKINDS] = {0};
    ar_pid_t st = ar_whereis(node, KV_STATS_NAME);
    ar_buf_t r = {0};
    int rc = ar_pid_is_none(st) ? AR_ENOPROC
                                : ar_call(node, st, KV_STATS_GET, NULL, 0, &r, KV_CALL_MS);
    if (rc == 0 && r.len == sizeof tally) memcpy(tally, r.data, sizeof tally);
    ar_buf_free(&r);

    text_t t = {.len = 0};
    add(&t, "# Server\r\narbor_version:%s\r\nprocess_id:%ld\r\nlisten:%s\r\n", ar_version(),
        (long)getpid(), app->listen);
    add(&t, "\r\n# Clients\r\nconnected_clients:%lld\r\n",
        (long long)atomic_load_explicit(&app->clients, memory_order_relaxed));
    add(&t, "\r\n# Stats\r\ntotal_connections_received:%llu\r\ntotal_commands_processed:%llu\r\n"
        "sends_refused:%llu\r\n",
        (unsigned long long)atomic_load_explicit(&app->connections, memory_order_relaxed),
        (unsigned long long)atomic_load_explicit(&app->requests, memory_order_relaxed),
        (unsigned long long)atomic_load_explicit(&app->send_eagain, memory_order_relaxed));
    add(&t, "\r\n# Arbor\r\nprocesses:%zu\r\nspawned:%llu\r\nexited:%llu\r\nsent:%llu\r\n"
        "delivered:%llu\r\ndropped:%llu\r\n", ns.processes, (unsigned long long)ns.spawned,
        (unsigned long long)ns.exited, (unsigned long long)ns.sent,
        (unsigned long long)ns.delivered, (unsigned long long)ns.dropped);
    add(&t, "\r\n# Keyspace\r\ndb0:keys=%zu\r\n", c->reg ? ar_registry_count(c->reg) : (size_t)0);
    add(&t, "\r\n# Events\r\n");
    if (rc != 0) add(&t, "events_error:%s\r\n", ar_strerror(rc));
    for (int b = 0; b < KV_NKINDS; b++) {
        char name[24];
        snprintf(name, sizeof name, "%s", ar_event_kind_name(1u << b));
        for (char *p = name; *p; p++) *p = (char)tolower((unsigned char)*p);
        add(&t, "%s:%llu\r\n", name, (unsigned long long)tally[b]);
    }
    kv_out_bulk(c, t.buf, t.len);
}
