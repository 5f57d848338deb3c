/* Crash reports: the default logger, built on the event stream.
 *
 * OTP prints a crash report when a process dies abnormally and a supervisor report when a
 * child fails to start, is restarted, or its supervisor gives up; a crash nobody hears of
 * is the worst kind. So every node, unless its config turns it off, subscribes one
 * function to START_FAILED, RESTART, GIVE_UP and the abnormal EXITs (a code other than
 * AR_NORMAL and AR_SHUTDOWN: an internal mask bit, so normal ends cost no event), and
 * writes one line for each to stderr, or hands it to the config's crash_log. It runs on
 * the events thread like any function subscriber, so a slow stderr never slows the
 * runtime: past the buffer, lines are dropped and one line says how many.
 *
 * A line: "arbor: KIND key=value ...", values with spaces quoted:
 *   arbor: EXIT pid=<1.5.1> behaviour=worker name=db reason=error text="boom at w.c:3"
 *   arbor: START_FAILED pid=<1.7.1> behaviour=worker reason=error text="init returned AR_ENOENT"
 *   arbor: START_FAILED supervisor=<1.2.1> child=w1 behaviour=worker reason=error text="..."
 *   arbor: RESTART supervisor=<1.2.1> child=w1 pid=<1.9.1> old_pid=<1.5.1> behaviour=worker reason=...
 *   arbor: GIVE_UP pid=<1.2.1> behaviour=supervisor parent=<1.1.1> child=w1 reason=...
 *   arbor: LAGGED dropped=12 (crash reports lost: the log could not keep up)
 */
#include "internal.h"

#include <stdarg.h>
#include <string.h>

#define LINE_MAX_BYTES 2048

typedef struct line {
    char buf[LINE_MAX_BYTES];
    size_t n;
} line_t;

static void add(line_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(line_t *l, const char *fmt, ...)
{
    if (l->n >= sizeof l->buf - 1) return; /* full: the rest is cut */
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(l->buf + l->n, sizeof l->buf - l->n, fmt, ap);
    va_end(ap);
    size_t room = sizeof l->buf - l->n;
    if (w > 0) l->n += (size_t)w < room ? (size_t)w : room - 1;
}

static void add_pid(line_t *l, const char *key, ar_pid_t pid)
{
    char s[AR_PID_STRLEN];
    ar_pid_format(pid, s, sizeof s);
    add(l, " %s=%s", key, s);
}

/* A quoted value: its quotes, backslashes and control bytes escaped, so that a line stays
 * one line and a reader can find where the value ends. */
static void add_quoted(line_t *l, const char *key, const char *v)
{
    add(l, " %s=\"", key);
    for (; *v && l->n < sizeof l->buf - 8; v++) {
        unsigned char c = (unsigned char)*v;
        if (c == '"' || c == '\\') add(l, "\\%c", c);
        else if (c == '\n') add(l, "\\n");
        else if (c < 0x20 || c == 0x7f) add(l, "\\x%02x", c);
        else l->buf[l->n++] = (char)c;
    }
    l->buf[l->n] = '\0';
    add(l, "\"");
}

static void add_reason(line_t *l, ar_reason_t why)
{
    add(l, " reason=%s", ar_exit_code_name(why.code));
    if (why.text) add_quoted(l, "text", why.text);
}

static void format(line_t *l, const ar_event_t *e)
{
    add(l, "arbor: %s", ar_event_kind_name(e->kind));
    switch (e->kind) {
    case AR_EV_LAGGED:
        add(l, " dropped=%llu (crash reports lost: the log could not keep up)",
            (unsigned long long)e->dropped);
        return;
    case AR_EV_RESTART:
        add_pid(l, "supervisor", e->supervisor);
        if (e->name) add(l, " child=%s", e->name);
        add_pid(l, "pid", e->pid);
        add_pid(l, "old_pid", e->old_pid);
        break;
    case AR_EV_GIVE_UP:
        add_pid(l, "pid", e->pid);
        if (e->behaviour) add(l, " behaviour=%s", e->behaviour);
        if (!ar_pid_is_none(e->supervisor)) add_pid(l, "parent", e->supervisor);
        if (e->name) add(l, " child=%s", e->name);
        add_reason(l, e->reason);
        return;
    default:
        if (!ar_pid_is_none(e->supervisor)) { /* a supervisor's report on its child */
            add_pid(l, "supervisor", e->supervisor);
            if (e->name) add(l, " child=%s", e->name);
            if (!ar_pid_is_none(e->pid)) add_pid(l, "pid", e->pid);
        } else {
            add_pid(l, "pid", e->pid);
        }
        break;
    }
    if (e->behaviour) add(l, " behaviour=%s", e->behaviour);
    if (e->name && e->kind != AR_EV_RESTART && ar_pid_is_none(e->supervisor))
        add(l, " name=%s", e->name);
    add_reason(l, e->reason);
}

static void report(const ar_event_t *e, void *ud)
{
    ar_node_t *node = ud;
    line_t l;
    l.n = 0;
    l.buf[0] = '\0';
    format(&l, e);
    if (node->cfg.crash_log) {
        node->cfg.crash_log(l.buf, node->cfg.crash_log_ud);
        return;
    }
    fprintf(stderr, "%s\n", l.buf); /* one call: stdio keeps the line whole */
}

int ar__crash_report_start(ar_node_t *node)
{
    if (node->cfg.crash_reports_off) return 0;
    return ar__events_subscribe_fn(node,
                                   AR__EV_EXIT_ABNORMAL | AR_EV_START_FAILED | AR_EV_RESTART |
                                       AR_EV_GIVE_UP,
                                   report, node, NULL);
}
