/* kvcache: a key-value cache server speaking the Redis protocol, built as an arbor
 * application: every piece is a process, and a supervision tree says who restarts what.
 *
 *   kvcache      root supervisor, one_for_one: a piece that fails restarts alone
 *   +-- stats    subscribed to the lifecycle event stream: tallies and prints it (stats.c)
 *   +-- buckets  the registry "kv.buckets": one bucket process per key, started on first
 *   |            write, ended by DEL, by its TTL or by the idle reaper, so memory follows
 *   |            the working set (bucket.c)
 *   +-- conns    simple_one_for_one supervisor: one temporary process per client, which
 *   |            reads RESP with hiredis and calls the buckets (conn.c, commands.c)
 *   +-- acceptor owns the listening socket, starts a conn per client and gives it its
 *                socket (acceptor.c)
 *
 * Children start in that order (each finds what it needs already running) and stop in
 * reverse: on Ctrl-C the acceptor stops taking clients first, then the connections end,
 * then the buckets, and stats last, so it sees the others go. A bucket that crashes
 * (CRASH k) loses only its key; a connection that crashes (CRASH) closes only its socket;
 * an acceptor that crashes (CRASH ACCEPTOR) is restarted on the same port while the
 * connections it made carry on.
 *
 *   kvcache [--listen HOST:PORT] [--idle-ms N] [--quiet] [--schedulers N]
 *
 * --listen defaults to 127.0.0.1:7000; port 0 takes a free port, printed at start
 * ("kvcache: listening on 127.0.0.1:PORT"). --idle-ms (default 60000) reaps buckets idle
 * that long. --quiet leaves out the buckets' routine events. */
#include "kvcache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void)
{
    fprintf(stderr, "usage: kvcache [--listen HOST:PORT] [--idle-ms N] [--quiet] "
                    "[--schedulers N]\n");
    return 2;
}

/* A whole non-negative decimal number within max, or -1. */
static long number(const char *s, long max)
{
    char *end;
    long v = strtol(s, &end, 10);
    return *s && !*end && v >= 0 && v <= max ? v : -1;
}

/* The root's end, as the events thread sees it: the tree gave up (a child restarting too
 * often) or was stopped. Either way there is nothing left to serve: main stops waiting. */
static _Atomic ar_exit_code_t root_end = AR_NORMAL;
static void watch_root(const ar_event_t *e, void *node)
{
    if (!e->name || strcmp(e->name, KV_ROOT_NAME) != 0) return;
    atomic_store(&root_end, e->reason.code);
    ar_node_request_stop(node);
}

static void summary(const kv_app_t *app)
{
    printf("kvcache: served %llu requests on %llu connections\nkvcache: events:",
           (unsigned long long)atomic_load(&app->requests),
           (unsigned long long)atomic_load(&app->connections));
    for (int b = 0; b < KV_NKINDS; b++)
        if (app->final_events[b])
            printf(" %s %llu", ar_event_kind_name(1u << b),
                   (unsigned long long)app->final_events[b]);
    printf("\n");
}

int main(int argc, char **argv)
{
    static kv_app_t app = {.listen = "127.0.0.1:7000", .idle_ms = 60000};
    long schedulers = 0;
    for (int i = 1; i < argc; i++) {
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--quiet") == 0) {
            app.quiet = true;
        } else if (strcmp(argv[i], "--listen") == 0 && val && strlen(val) < sizeof app.listen) {
            snprintf(app.listen, sizeof app.listen, "%s", val);
            i++;
        } else if (strcmp(argv[i], "--idle-ms") == 0 && val && number(val, 1 << 30) >= 0) {
            app.idle_ms = (int)number(val, 1 << 30);
            i++;
        } else if (strcmp(argv[i], "--schedulers") == 0 && val && number(val, 256) >= 0) {
            schedulers = number(val, 256);
            i++;
        } else {
            return usage();
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* event lines appear as they happen, even in a pipe */

    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.handle_signals = true; /* Ctrl-C or SIGTERM: ar_node_wait returns */
    cfg.schedulers = (unsigned)schedulers;
    ar_node_t *node;
    int rc = ar_node_start(&cfg, &node);
    if (rc != 0) {
        fprintf(stderr, "kvcache: ar_node_start: %s\n", ar_strerror(rc));
        return 1;
    }

    /* The specs outlive the tree (static): supervisors read them again on restarts. */
    static ar_registry_config_t buckets = {.behaviour = &kv_bucket, .arg = &app,
                                           .name = KV_BUCKETS_NAME};
    buckets.idle_ms = app.idle_ms;
    static const ar_child_spec_t conn = {.id = "conn", .behaviour = &kv_conn, .arg = &app,
                                         .restart = AR_TEMPORARY, .shutdown_ms = 2000};
    static const ar_sup_spec_t conns = {.strategy = AR_SIMPLE_ONE_FOR_ONE, .children = &conn,
                                        .nchildren = 1};
    static const ar_child_spec_t kids[] = {
        {.id = "stats", .behaviour = &kv_stats, .arg = &app},
        /* a registry stops all its buckets as it stops: let it take the time it needs */
        {.id = "buckets", .behaviour = &ar_registry, .arg = &buckets,
         .shutdown_ms = AR_SHUTDOWN_INFINITY},
        {.id = KV_CONNS_ID, .behaviour = &ar_supervisor, .arg = (void *)&conns,
         .type = AR_SUPERVISOR},
        {.id = "acceptor", .behaviour = &kv_acceptor, .arg = &app},
    };
    static const ar_sup_spec_t root = {.strategy = AR_ONE_FOR_ONE, .intensity = 5,
                                       .period_ms = 10000, .children = kids,
                                       .nchildren = sizeof kids / sizeof kids[0]};
    ar_spawn_opts_t opts = {.name = KV_ROOT_NAME};
    ar_pid_t top;
    rc = ar_events_subscribe_fn(node, AR_EV_EXIT, watch_root, node, NULL);
    if (rc == 0) rc = ar_sup_start(node, &root, &opts, &top);
    if (rc != 0) {
        fprintf(stderr, "kvcache: starting the tree: %s\n", ar_strerror(rc));
        rc = ar_node_stop(node, 5000);
        if (rc != 0) fprintf(stderr, "kvcache: ar_node_stop: %s\n", ar_strerror(rc));
        return 1;
    }

    rc = ar_node_wait(node);
    if (rc != 0) fprintf(stderr, "kvcache: ar_node_wait: %s\n", ar_strerror(rc));
    ar_exit_code_t end = atomic_load(&root_end);
    if (end != AR_NORMAL) { /* the tree ended by itself */
        fprintf(stderr, "kvcache: the supervision tree ended (%s)\n", ar_exit_code_name(end));
        rc = 1;
    }
    printf("kvcache: stopping\n");
    int stopped = ar_node_stop(node, 15000); /* the tree, in reverse start order */
    if (stopped != 0) fprintf(stderr, "kvcache: ar_node_stop: %s\n", ar_strerror(stopped));
    summary(&app);
    return rc == 0 && stopped == 0 ? 0 : 1;
}
