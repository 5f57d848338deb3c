/* The ar_sup_* calls: each is an ar_call to the supervisor process (so they work from
 * any thread or process), answered by supervisor.c. A dead supervisor: AR_ENOPROC.
 * Each waits at most AR_SUP_CALL_MS for the answer (AR_ETIMEDOUT), but ar_sup_stop, whose
 * caller says how long the whole stop may take. */
#include "sup_internal.h"

#include <stdlib.h>
#include <string.h>

int ar__sup_call_ms = AR_SUP_CALL_MS;

static int ask(ar_node_t *node, ar_pid_t sup, uint32_t tag, const ar__sup_req_t *q,
               ar__sup_reply_t *r)
{
    ar_buf_t b;
    int rc = ar_call(node, sup, tag, q, sizeof *q, &b, ar__sup_call_ms);
    if (rc) return rc;
    if (b.len != sizeof *r) {
        ar_buf_free(&b);
        return AR_EBADMSG;
    }
    memcpy(r, b.data, sizeof *r);
    ar_buf_free(&b);
    return r->rc;
}

static int with_id(ar__sup_req_t *q, const char *id)
{
    if (!id || !id[0] || strlen(id) >= AR_NAME_MAX) return AR_EINVAL;
    memcpy(q->id, id, strlen(id) + 1);
    return 0;
}

int ar_sup_start(ar_node_t *node, const ar_sup_spec_t *spec, const ar_spawn_opts_t *o,
                 ar_pid_t *out)
{
    if (!node) return AR_EINVAL;
    int rc = ar__sup_check_spec(spec); /* before anything starts */
    if (rc) return rc;
    return ar_spawn(node, &ar_supervisor, (void *)spec, o, out);
}

/* Waits until sup has ended: once it answered a STOP (or was killed) it takes no more
 * calls, so one more call fails as soon as it is gone. */
static void await_end(ar_node_t *node, ar_pid_t sup)
{
    ar__sup_req_t q = {0};
    ar_buf_t b;
    if (ar_call(node, sup, AR__SUP_COUNT, &q, sizeof q, &b, ar__sup_call_ms) == 0)
        ar_buf_free(&b);
}

int ar_sup_stop(ar_node_t *node, ar_pid_t sup, int timeout_ms)
{
    if (!node || (timeout_ms < 0 && timeout_ms != AR_INFINITY)) return AR_EINVAL;
    ar__sup_req_t q = {.timeout_ms = timeout_ms};
    ar__sup_reply_t r;
    int wait = timeout_ms == AR_INFINITY ? AR_INFINITY : timeout_ms + AR__SUP_STOP_GRACE_MS;
    ar_buf_t b;
    int rc = ar_call(node, sup, AR__SUP_STOP, &q, sizeof q, &b, wait);
    if (rc == 0) {
        rc = b.len == sizeof r ? (memcpy(&r, b.data, sizeof r), r.rc) : AR_EBADMSG;
        ar_buf_free(&b);
    } else if (rc == AR_ETIMEDOUT) { /* no answer in time: the tree goes down with it */
        ar_exit(node, sup, AR_REASON(AR_KILL));
    }
    if (rc == 0 || rc == AR_ETIMEDOUT) await_end(node, sup);
    return rc;
}

int ar_sup_start_child(ar_node_t *node, ar_pid_t sup, const ar_child_spec_t *spec, void *arg,
                       ar_pid_t *child)
{
    if (!node) return AR_EINVAL;
    ar__sup_req_t q = {0};
    ar__sup_reply_t r = {0};
    if (spec) q.spec = *spec;
    q.arg = arg;
    int rc = ask(node, sup, AR__SUP_START, &q, &r);
    if (child && (rc == 0 || rc == AR_EEXIST)) *child = r.pid;
    return rc;
}

int ar_sup_terminate_child(ar_node_t *node, ar_pid_t sup, const char *id, ar_pid_t child)
{
    if (!node) return AR_EINVAL;
    ar__sup_req_t q = {0};
    ar__sup_reply_t r;
    if (id && with_id(&q, id)) return AR_EINVAL;
    q.pid = child;
    return ask(node, sup, AR__SUP_TERMINATE, &q, &r);
}

int ar_sup_restart_child(ar_node_t *node, ar_pid_t sup, const char *id, ar_pid_t *child)
{
    if (!node) return AR_EINVAL;
    ar__sup_req_t q = {0};
    ar__sup_reply_t r = {0};
    if (with_id(&q, id)) return AR_EINVAL;
    int rc = ask(node, sup, AR__SUP_RESTART, &q, &r);
    if (child && rc == 0) *child = r.pid;
    return rc;
}

int ar_sup_delete_child(ar_node_t *node, ar_pid_t sup, const char *id)
{
    if (!node) return AR_EINVAL;
    ar__sup_req_t q = {0};
    ar__sup_reply_t r;
    if (with_id(&q, id)) return AR_EINVAL;
    return ask(node, sup, AR__SUP_DELETE, &q, &r);
}

int ar_sup_which_children(ar_node_t *node, ar_pid_t sup, ar_child_info_t *out, size_t cap,
                          size_t *n)
{
    if (!node || !n || (cap && !out)) return AR_EINVAL;
    ar__sup_req_t q = {0};
    ar_buf_t b;
    int rc = ar_call(node, sup, AR__SUP_WHICH, &q, sizeof q, &b, ar__sup_call_ms);
    if (rc) return rc;
    ar__sup_reply_t r; /* the header: rc, and how many children follow */
    if (b.len < sizeof r) {
        ar_buf_free(&b);
        return AR_EBADMSG;
    }
    memcpy(&r, b.data, sizeof r);
    size_t have = r.counts.specs;
    if (r.rc != 0 || b.len != sizeof r + have * sizeof *out) {
        ar_buf_free(&b);
        return r.rc ? r.rc : AR_EBADMSG;
    }
    memcpy(out, (char *)b.data + sizeof r, (have < cap ? have : cap) * sizeof *out);
    *n = have;
    ar_buf_free(&b);
    return 0;
}

int ar_sup_count_children(ar_node_t *node, ar_pid_t sup, ar_child_counts_t *out)
{
    if (!node || !out) return AR_EINVAL;
    ar__sup_req_t q = {0};
    ar__sup_reply_t r = {0};
    int rc = ask(node, sup, AR__SUP_COUNT, &q, &r);
    if (rc == 0) *out = r.counts;
    return rc;
}
