/* Error codes, exit-code names, versions and pid values: pure functions, any thread. */
#include "internal.h"

#include <inttypes.h>
#include <string.h>

const char *ar_version(void) { return "0.1.0"; }

const char *ar_strerror(int err)
{
    switch (err) {
    case 0: return "success";
#define AR__ERR_TEXT(name, val, text) case AR_##name: return text;
        AR_ERRNO_MAP(AR__ERR_TEXT)
#undef AR__ERR_TEXT
    default: return "unknown error";
    }
}

const char *ar_err_name(int err)
{
    switch (err) {
    case 0: return "AR_OK";
#define AR__ERR_NAME(name, val, text) case AR_##name: return "AR_" #name;
        AR_ERRNO_MAP(AR__ERR_NAME)
#undef AR__ERR_NAME
    default: return "AR_UNKNOWN";
    }
}

const char *ar_exit_code_name(ar_exit_code_t code)
{
    switch (code) {
    case AR_NORMAL: return "normal";
    case AR_SHUTDOWN: return "shutdown";
    case AR_KILL: return "kill";
    case AR_KILLED: return "killed";
    case AR_NOPROC: return "noproc";
    case AR_NOCONNECTION: return "noconnection";
    case AR_TIMEOUT: return "timeout";
    case AR_ERROR: return "error";
    }
    return "unknown";
}

bool ar_pid_eq(ar_pid_t a, ar_pid_t b) { return a.hi == b.hi && a.lo == b.lo; }
bool ar_pid_is_none(ar_pid_t p) { return p.hi == 0 && p.lo == 0; }
bool ar_pid_is_local(ar_node_t *node, ar_pid_t p) { return node && p.hi == node->pid_hi; }

int ar_pid_format(ar_pid_t p, char *buf, size_t n)
{
    if (!buf || n == 0) return AR_EINVAL;
    /* The node part: its name if this OS process knows it, else its number (the low 32
     * bits of hi; 0 for AR_PID_NONE). */
    char node[AR_NODE_NAME_MAX];
    int w;
    if (p.hi && ar__node_name_of((uint32_t)p.hi, node, sizeof node))
        w = snprintf(buf, n, "<%s.%" PRIu32 ".%" PRIu32 ">", node, AR__PID_INDEX(p.lo),
                     AR__PID_SERIAL(p.lo));
    else
        w = snprintf(buf, n, "<%" PRIu32 ".%" PRIu32 ".%" PRIu32 ">", (uint32_t)p.hi,
                     AR__PID_INDEX(p.lo), AR__PID_SERIAL(p.lo));
    return (w < 0 || (size_t)w >= n) ? AR_E2BIG : 0;
}

void ar_buf_free(ar_buf_t *b)
{
    if (!b) return;
    if (b->data) {
        /* A reply buffer is the payload of its envelope: free the envelope. */
        ar__env_t *e = (ar__env_t *)b->data - 1;
        ar__env_free(e);
    }
    b->data = NULL;
    b->len = 0;
}
