/* Crash reports: the default logger writes one line per abnormal exit, failed start,
 * restart and give-up (to stderr, or to the config's crash_log), nothing for normal ends,
 * and nothing at all when switched off. A zero config means on, to stderr.
 *
 * ar_node_stop delivers what is buffered before it returns, so the lines are read after
 * it. */
#include "test_helpers.h"

#include <fcntl.h>
#include <unistd.h>

#define LINES 64
#define LINE 2048

static atomic_int nlines;
static char lines[LINES][LINE];
static atomic_int block_first; /* the log stalls on its first line until gate is posted */
static sem_t gate;

static void capture(const char *line, void *ud)
{
    (void)ud;
    int i = atomic_load(&nlines);
    if (i < LINES) snprintf(lines[i], LINE, "%s", line);
    atomic_store(&nlines, i + 1);
    if (i == 0 && atomic_load(&block_first)) th_sem_wait(&gate, TH_WAIT_MS);
}

static ar_node_t *logging_node(size_t buffer)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.event_buffer = buffer;
    cfg.crash_log = capture;
    cfg.crash_log_ud = &nlines;
    return th_node_cfg(&cfg);
}

/* The one line that contains all of the given pieces; fails unless there is exactly one. */
static const char *line_with(const char *a, const char *b)
{
    const char *found = NULL;
    int n = atomic_load(&nlines), hits = 0;
    for (int i = 0; i < n && i < LINES; i++)
        if (strstr(lines[i], a) && (!b || strstr(lines[i], b))) found = lines[i], hits++;
    cr_assert_eq(hits, 1, "%d lines with \"%s\" and \"%s\"", hits, a, b ? b : "");
    return found;
}

static void expect(const char *line, const char *piece)
{
    cr_assert(strstr(line, piece) != NULL, "\"%s\" lacks \"%s\"", line, piece);
}

static const char *pid_str(ar_pid_t p, char buf[AR_PID_STRLEN])
{
    ar_pid_format(p, buf, AR_PID_STRLEN);
    return buf;
}

enum { TAG_CRASH = 1, TAG_STOP, TAG_SHUT, TAG_QUOTE };

static void worker_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->tag == TAG_CRASH) AR_FAIL(self, "kaboom");
    if (m->tag == TAG_STOP) ar_stop(self, AR_REASON(AR_NORMAL));
    if (m->tag == TAG_SHUT) ar_stop(self, (ar_reason_t){AR_SHUTDOWN, "asked to"});
    if (m->tag == TAG_QUOTE) AR_FAIL(self, "bad \"key\"\nsecond line\\");
}
static const ar_behaviour_t worker_b = {.name = "cr_worker", .handle = worker_handle};

static int enoent_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self, (void)arg, (void)state;
    return AR_ENOENT;
}
static const ar_behaviour_t enoent_b = {.name = "cr_enoent", .init = enoent_init,
                                        .handle = worker_handle};

static void end_all(ar_node_t *node, ar_pid_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) th_await(!th_proc_alive(node, p[i]));
}

static void ignore(const ar_event_t *e, void *ud) { (void)e, (void)ud; }

Test(crash_report, abnormal_exit_is_one_line_normal_ends_none, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = logging_node(0);
    /* someone else wants every EXIT: normal ones are published, the logger skips them */
    cr_assert_eq(ar_events_subscribe_fn(node, AR_EV_EXIT, ignore, NULL, NULL), 0);
    ar_pid_t p[4];
    for (int i = 0; i < 4; i++) p[i] = th_spawn(node, &worker_b, NULL);
    th_send(node, p[0], TAG_CRASH, NULL, 0);
    th_send(node, p[1], TAG_STOP, NULL, 0);
    th_send(node, p[2], TAG_SHUT, NULL, 0);
    cr_assert_eq(ar_exit(node, p[3], AR_REASON(AR_KILL)), 0);
    end_all(node, p, 4);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&nlines), 2, "the crash and the kill: %d lines", atomic_load(&nlines));
    char buf[AR_PID_STRLEN];
    const char *l = line_with(pid_str(p[0], buf), NULL);
    cr_assert(strncmp(l, "arbor: EXIT ", 12) == 0, "%s", l);
    expect(l, "behaviour=cr_worker");
    expect(l, "reason=error");
    expect(l, "text=\"kaboom at ");
    cr_assert_null(strchr(l, '\n'), "a line to the function has no newline");
    l = line_with(pid_str(p[3], buf), NULL);
    expect(l, "reason=killed");
}

Test(crash_report, failed_start_is_one_line, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = logging_node(0);
    cr_assert_eq(ar_spawn(node, &enoent_b, NULL, NULL, NULL), AR_ENOENT);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&nlines), 1);
    const char *l = line_with("arbor: START_FAILED pid=<", NULL);
    expect(l, "behaviour=cr_enoent");
    expect(l, "reason=error text=\"init returned AR_ENOENT\"");
}

static ar_pid_t child_of(ar_node_t *node, ar_pid_t sup, const char *id)
{
    ar_child_info_t kids[4];
    size_t n = 0;
    cr_assert_eq(ar_sup_which_children(node, sup, kids, 4, &n), 0);
    for (size_t i = 0; i < n && i < 4; i++)
        if (strcmp(kids[i].id, id) == 0) return kids[i].pid;
    return AR_PID_NONE;
}

static const ar_child_spec_t kid[] = {{.id = "w1", .behaviour = &worker_b}};

Test(crash_report, restart_names_the_supervisor_and_the_child, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = logging_node(0);
    static const ar_sup_spec_t spec = {.strategy = AR_ONE_FOR_ONE, .intensity = 3,
                                       .children = kid, .nchildren = 1};
    ar_pid_t sup;
    cr_assert_eq(ar_sup_start(node, &spec, NULL, &sup), 0);
    ar_pid_t old = child_of(node, sup, "w1");
    th_send(node, old, TAG_CRASH, NULL, 0);
    ar_pid_t now;
    th_await(!ar_pid_is_none(now = child_of(node, sup, "w1")) && !ar_pid_eq(now, old));
    th_node_stop(node);
    cr_assert_eq(atomic_load(&nlines), 2, "the crash and the restart");
    char b1[AR_PID_STRLEN], b2[AR_PID_STRLEN], b3[AR_PID_STRLEN], want[256];
    const char *l = line_with("arbor: RESTART ", NULL);
    snprintf(want, sizeof want, "supervisor=%s child=w1 pid=%s old_pid=%s behaviour=cr_worker",
             pid_str(sup, b1), pid_str(now, b2), pid_str(old, b3));
    expect(l, want);
    expect(l, "reason=error text=\"kaboom at ");
    expect(line_with("arbor: EXIT ", NULL), pid_str(old, b1));
}

Test(crash_report, give_up_is_one_line, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = logging_node(0);
    static const ar_sup_spec_t spec = {.strategy = AR_ONE_FOR_ONE, .intensity = AR_NO_RESTARTS,
                                       .children = kid, .nchildren = 1};
    ar_pid_t sup;
    cr_assert_eq(ar_sup_start(node, &spec, NULL, &sup), 0);
    th_send(node, child_of(node, sup, "w1"), TAG_CRASH, NULL, 0);
    th_await(!th_proc_alive(node, sup));
    th_node_stop(node);
    char b[AR_PID_STRLEN], want[128];
    const char *l = line_with("arbor: GIVE_UP ", NULL);
    snprintf(want, sizeof want, "pid=%s behaviour=supervisor child=w1", pid_str(sup, b));
    expect(l, want);
    expect(l, "reason=error text=\"kaboom at ");
    cr_assert_null(strstr(l, "parent="), "a top-level supervisor has no parent");
    cr_assert_eq(atomic_load(&nlines), 2, "the crash and the give-up (the supervisor's own "
                                          "end is a shutdown)");
}

Test(crash_report, a_slow_log_loses_lines_and_says_how_many, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = logging_node(2);
    sem_init(&gate, 0, 0);
    atomic_store(&block_first, 1);
    ar_pid_t p[6];
    for (int i = 0; i < 6; i++) p[i] = th_spawn(node, &worker_b, NULL);
    th_send(node, p[0], TAG_CRASH, NULL, 0);
    th_await(atomic_load(&nlines) == 1);
    for (int i = 1; i < 6; i++) th_send(node, p[i], TAG_CRASH, NULL, 0); /* 2 fit, 3 lost */
    end_all(node, p, 6);
    sem_post(&gate);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&nlines), 4, "1 + 2 buffered + the loss: %d", atomic_load(&nlines));
    expect(lines[3], "arbor: LAGGED dropped=3");
}

Test(crash_report, switched_off_writes_nothing, .timeout = TH_TIMEOUT)
{
    ar_node_config_t cfg;
    ar_node_config_init(&cfg);
    cfg.schedulers = 2;
    cfg.crash_reports_off = true;
    cfg.crash_log = capture;
    cfg.crash_log_ud = &nlines;
    ar_node_t *node = th_node_cfg(&cfg);
    cr_assert(!ar_events_wanted(node, AR_EV_ALL), "no logger subscribes");
    ar_pid_t p = th_spawn(node, &worker_b, NULL);
    th_send(node, p, TAG_CRASH, NULL, 0);
    cr_assert_eq(ar_spawn(node, &enoent_b, NULL, NULL, NULL), AR_ENOENT);
    th_await(!th_proc_alive(node, p));
    th_node_stop(node);
    cr_assert_eq(atomic_load(&nlines), 0);
}

Test(crash_report, a_zero_config_means_on_to_stderr, .timeout = TH_TIMEOUT)
{
    ar_node_config_t cfg;
    memset(&cfg, 0xAB, sizeof cfg);
    ar_node_config_init(&cfg);
    cr_assert(!cfg.crash_reports_off && !cfg.crash_log && !cfg.crash_log_ud);
    char path[] = "/tmp/arbor_crash_report_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    cr_assert_geq(saved, 0);
    cr_assert_eq(dup2(fd, 2), 2);
    ar_node_t *node = NULL;
    int rc = ar_node_start(NULL, &node); /* no config at all: the defaults */
    cr_assert_eq(rc, 0);
    cr_assert(ar_events_wanted(node, AR_EV_RESTART), "the logger subscribes");
    ar_pid_t p = th_spawn(node, &worker_b, NULL);
    th_send(node, p, TAG_CRASH, NULL, 0);
    th_await(!th_proc_alive(node, p));
    rc = ar_node_stop(node, TH_STOP_MS);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    cr_assert_eq(rc, 0);
    char out[4096] = {0};
    ssize_t n = pread(fd, out, sizeof out - 1, 0);
    close(fd);
    cr_assert_gt(n, 0, "nothing written to stderr");
    char b[AR_PID_STRLEN], want[128];
    snprintf(want, sizeof want, "arbor: EXIT pid=%s behaviour=cr_worker reason=error", pid_str(p, b));
    cr_assert(strstr(out, want) != NULL, "stderr: %s", out);
    cr_assert_eq(out[n - 1], '\n', "one line, ended");
}

Test(crash_report, a_reason_text_is_escaped_and_stays_one_line, .timeout = TH_TIMEOUT)
{
    ar_node_t *node = logging_node(0);
    ar_pid_t p = th_spawn(node, &worker_b, NULL);
    th_send(node, p, TAG_QUOTE, NULL, 0);
    end_all(node, &p, 1);
    th_node_stop(node);
    char buf[AR_PID_STRLEN];
    const char *l = line_with(pid_str(p, buf), NULL);
    expect(l, "text=\"bad \\\"key\\\"\\nsecond line\\\\ at ");
    cr_assert_null(strchr(l, '\n'), "one line: %s", l);
}
