/* The examples run as programs: each must exit 0 and say what it showed. They are built
 * beside the suite ($(BUILD)/examples/, next to $(BUILD)/test/), with the same flags and
 * sanitizers. */
#include "test_helpers.h"

#include <libgen.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUT_MAX (64 * 1024)

/* Runs $(BUILD)/examples/<name> with stderr joined to stdout; returns its exit status
 * (-1: it did not exit) and its output in out. */
static int run_example(const char *name, char *out, size_t cap)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(n, 0, "readlink /proc/self/exe");
    self[n] = '\0';
    char cmd[4096 + 128];
    snprintf(cmd, sizeof cmd, "%s/../examples/%s 2>&1", dirname(self), name);
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f, "popen %s", cmd);
    size_t len = 0, got;
    while (len < cap - 1 && (got = fread(out + len, 1, cap - 1 - len, f)) > 0) len += got;
    out[len] = '\0';
    int status = pclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char out[OUT_MAX];

/* The kvcache demo (make demo) against the kvcache built beside the suite: the script is
 * in the source tree, which the Makefile names (AR_SOURCE_DIR). */
static int run_kvcache_demo(char *buf, size_t cap)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(n, 0, "readlink /proc/self/exe");
    self[n] = '\0';
    char cmd[8192 + 128];
    snprintf(cmd, sizeof cmd, "%s/examples/kvcache/demo.sh %s/../examples/kvcache 2>&1",
             AR_SOURCE_DIR, dirname(self));
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f, "popen %s", cmd);
    size_t len = 0, got;
    while (len < cap - 1 && (got = fread(buf + len, 1, cap - 1 - len, f)) > 0) len += got;
    buf[len] = '\0';
    int status = pclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(examples, lifecycle_watch_prints_its_events_and_crash_reports, .timeout = TH_TIMEOUT)
{
    int status = run_example("lifecycle_watch", out, sizeof out);
    cr_assert_eq(status, 0, "exit status %d; output:\n%s", status, out);
    static const char *const want[] = {
        "lifecycle_watch: all as expected",
        " RESTART ",
        " START_FAILED ",
        " GIVE_UP ",
        " USER ",
        "[crash report] arbor: EXIT pid=<",
        "[crash report] arbor: RESTART supervisor=<",
        "[crash report] arbor: GIVE_UP pid=<",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(out, want[i]) != NULL, "no \"%s\" in:\n%s", want[i], out);
    cr_assert_null(strstr(out, "Sanitizer"), "%s", out);
}

Test(examples, counter_registry_reaps_idle_counters_and_brings_them_back, .timeout = TH_TIMEOUT)
{
    int status = run_example("counter_registry", out, sizeof out);
    cr_assert_eq(status, 0, "exit status %d; output:\n%s", status, out);
    static const char *const want[] = {
        "alice = 3, bob = 2, keys alive: 2",
        "event: REAP of key \"alice\"",
        "event: REAP of key \"bob\"",
        "keys alive: 0",
        "[alice] started with value 3",
        "alice = 4, keys alive: 1",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(out, want[i]) != NULL, "no \"%s\" in:\n%s", want[i], out);
    cr_assert_null(strstr(out, "Sanitizer"), "%s", out);
}

Test(examples, every_other_example_runs_and_exits_0, .timeout = TH_TIMEOUT)
{
    static const char *const names[] = {"hello", "bank", "supervision_tree", "tcp_counter"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int status = run_example(names[i], out, sizeof out);
        cr_assert_eq(status, 0, "%s: exit status %d; output:\n%s", names[i], status, out);
        cr_assert_null(strstr(out, "Sanitizer"), "%s: %s", names[i], out);
    }
}

Test(examples, two_nodes_calls_a_service_on_another_node_and_sees_it_die, .timeout = TH_TIMEOUT)
{
    int status = run_example("two_nodes", out, sizeof out);
    cr_assert_eq(status, 0, "exit status %d; output:\n%s", status, out);
    static const char *const want[] = {
        "[client] found \"ping\" at <pingsrv.",
        "[client] ping -> pong",
        "[client] delay 50 -> pong after 50 ms",
        "[client] the service counted 3 notes, 0 out of order",
        "[client] event: NODE_UP pingsrv",
        "[client] DOWN from <pingsrv.",
        ": noconnection, ",
        "[client] event: NODE_DOWN pingsrv",
        "two_nodes: all as expected",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(out, want[i]) != NULL, "no \"%s\" in:\n%s", want[i], out);
    cr_assert_null(strstr(out, "Sanitizer"), "%s", out);
}

Test(examples, kvcache_demo_passes_its_checks, .timeout = TH_TIMEOUT)
{
    int status = run_kvcache_demo(out, sizeof out);
    cr_assert_eq(status, 0, "exit status %d; output:\n%s", status, out);
    static const char *const want[] = {
        "kvcache: listening on 127.0.0.1:",
        "[event] EXIT ", "told to crash",
        "arbor: EXIT pid=<", "CRASH CONNECTION requested",
        "[event] REAP ",
        "kvcache: served ",
        "demo: all checks passed",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(out, want[i]) != NULL, "no \"%s\" in:\n%s", want[i], out);
    cr_assert_null(strstr(out, "FAILED"), "%s", out);
    cr_assert_null(strstr(out, "Sanitizer"), "%s", out);
}
