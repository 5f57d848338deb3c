/* arbor_bench: runs the workloads named on the command line (all of them, in order,
 * when none is named). Each prints one result line on stdout.
 *
 *   arbor_bench [-n N] [-p P] [-t MS] [-s] [WORKLOAD...]
 *     -n N   main count (processes, round trips, hops, calls; fan_in: messages per sender;
 *            link_chain_exit: chain length)
 *     -p P   ring size / fan_in senders / registry_send keys
 *     -t MS  gen_server_call's call timeout (-1: infinity; default 5000, gen_server's)
 *     -s     run every workload in this process (default: each in a child process)
 *   arbor_bench --remote-peer
 *            the peer node of remote_ping_pong and remote_oneway (they start it)
 *
 * Each workload runs in its own child process by default, as the Erlang and CAF programs
 * each run in a fresh OS process: memory that malloc kept from one workload would
 * otherwise make the next one's RSS readings (spawn_idle_memory's bytes_per_proc) and
 * page-fault costs depend on the order of the run.
 */
#include "bench_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* Workloads of links and monitors. */
int bench_spawn_exit_monitor(const bench_opts_t *o);
int bench_link_chain_exit(const bench_opts_t *o);
/* Lifecycle events. */
int bench_spawn_exit_events(const bench_opts_t *o);
/* Workloads of supervisors. */
int bench_supervisor_restart(const bench_opts_t *o);
int bench_sup_start_100k(const bench_opts_t *o);
/* Workloads of the keyed registry. */
int bench_registry_get_or_spawn(const bench_opts_t *o);
int bench_registry_send(const bench_opts_t *o);
/* Distribution: two OS processes on loopback (bench/remote.c). */
int bench_remote_ping_pong(const bench_opts_t *o);
int bench_remote_oneway(const bench_opts_t *o);
int bench_remote_peer(void);

static const struct {
    const char *name;
    int (*run)(const bench_opts_t *o);
} workloads[] = {
    {"spawn_exit", bench_spawn_exit},
    {"spawn_exit_events", bench_spawn_exit_events},
    {"spawn_idle_memory", bench_spawn_idle_memory},
    {"ping_pong", bench_ping_pong},
    {"ring", bench_ring},
    {"fan_in", bench_fan_in},
    {"gen_server_call", bench_gen_server_call},
    {"spawn_exit_monitor", bench_spawn_exit_monitor},
    {"link_chain_exit", bench_link_chain_exit},
    {"supervisor_restart", bench_supervisor_restart},
    {"sup_start_100k", bench_sup_start_100k},
    {"registry_get_or_spawn", bench_registry_get_or_spawn},
    {"registry_send", bench_registry_send},
    {"remote_ping_pong", bench_remote_ping_pong},
    {"remote_oneway", bench_remote_oneway},
};
#define NWORKLOADS (sizeof workloads / sizeof workloads[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: arbor_bench [-n N] [-p P] [-t MS] [-s] [WORKLOAD...]\nworkloads:");
    for (size_t i = 0; i < NWORKLOADS; i++) fprintf(f, " %s", workloads[i].name);
    fputc('\n', f);
}

static long parse_long(const char *s, const char *flag)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0') {
        fprintf(stderr, "arbor_bench: %s wants a number, got '%s'\n", flag, s);
        exit(2);
    }
    return v;
}

/* Runs workload i, in a child process unless inline; 0 on success. */
static int run(int i, const bench_opts_t *o, bool in_process)
{
    if (in_process) return workloads[i].run(o);
    fflush(stdout); /* nothing buffered may be written twice */
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("arbor_bench: fork");
        return 1;
    }
    if (pid == 0) {
        int rc = workloads[i].run(o);
        fflush(stdout);
        _exit(rc == 0 ? 0 : 1);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("arbor_bench: waitpid");
            return 1;
        }
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFSIGNALED(status))
        fprintf(stderr, "arbor_bench: %s died of signal %d\n", workloads[i].name, WTERMSIG(status));
    else
        fprintf(stderr, "arbor_bench: %s failed (status %d)\n", workloads[i].name,
                WEXITSTATUS(status));
    return 1;
}

static int find(const char *name)
{
    for (size_t i = 0; i < NWORKLOADS; i++)
        if (strcmp(workloads[i].name, name) == 0) return (int)i;
    return -1;
}

int main(int argc, char **argv)
{
    /* The remote workloads run this program again as their peer node. */
    if (argc == 2 && strcmp(argv[1], "--remote-peer") == 0) return bench_remote_peer();
    bench_opts_t o = {0};
    bool in_process = false;
    int c;
    while ((c = getopt(argc, argv, "n:p:t:sh")) != -1) {
        switch (c) {
        case 'n': o.n = parse_long(optarg, "-n"); break;
        case 'p': o.procs = parse_long(optarg, "-p"); break;
        case 't':
            o.call_timeout_ms = (int)parse_long(optarg, "-t");
            o.call_timeout_set = true;
            break;
        case 's': in_process = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.n < 0 || o.procs < 0 || (o.call_timeout_set && o.call_timeout_ms < AR_INFINITY)) {
        fprintf(stderr, "arbor_bench: counts must be positive\n");
        return 2;
    }
    /* Check every name before running anything. */
    for (int i = optind; i < argc; i++) {
        if (find(argv[i]) < 0) {
            fprintf(stderr, "arbor_bench: unknown workload '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    /* A failed workload is reported and the others still run. */
    int failed = 0;
    if (optind == argc) {
        for (size_t i = 0; i < NWORKLOADS; i++) failed |= run((int)i, &o, in_process);
    } else {
        for (int i = optind; i < argc; i++) failed |= run(find(argv[i]), &o, in_process);
    }
    return failed ? 1 : 0;
}
