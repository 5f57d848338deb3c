/* arbor_bench: runs the workloads named on the command line (all of them, in order,
 * when none is named). Each prints one result line on stdout.
 *
 *   arbor_bench [-n N] [-p P] [-t MS] [WORKLOAD...]
 *     -n N   main count (processes, round trips, hops, calls; fan_in: messages per sender)
 *     -p P   ring size / fan_in senders
 *     -t MS  gen_server_call's call timeout (-1: infinity; default 5000, gen_server's)
 */
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const struct {
    const char *name;
    int (*run)(const bench_opts_t *o);
} workloads[] = {
    {"spawn_exit", bench_spawn_exit},
    {"spawn_idle_memory", bench_spawn_idle_memory},
    {"ping_pong", bench_ping_pong},
    {"ring", bench_ring},
    {"fan_in", bench_fan_in},
    {"gen_server_call", bench_gen_server_call},
};
#define NWORKLOADS (sizeof workloads / sizeof workloads[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: arbor_bench [-n N] [-p P] [-t MS] [WORKLOAD...]\nworkloads:");
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

static int find(const char *name)
{
    for (size_t i = 0; i < NWORKLOADS; i++)
        if (strcmp(workloads[i].name, name) == 0) return (int)i;
    return -1;
}

int main(int argc, char **argv)
{
    bench_opts_t o = {0};
    int c;
    while ((c = getopt(argc, argv, "n:p:t:h")) != -1) {
        switch (c) {
        case 'n': o.n = parse_long(optarg, "-n"); break;
        case 'p': o.procs = parse_long(optarg, "-p"); break;
        case 't':
            o.call_timeout_ms = (int)parse_long(optarg, "-t");
            o.call_timeout_set = true;
            break;
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
    if (optind == argc) {
        for (size_t i = 0; i < NWORKLOADS; i++)
            if (workloads[i].run(&o) != 0) return 1;
    } else {
        for (int i = optind; i < argc; i++)
            if (workloads[find(argv[i])].run(&o) != 0) return 1;
    }
    return 0;
}
