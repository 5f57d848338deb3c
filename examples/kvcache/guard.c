/* The request bounds hiredis's reader does not have (Debian 12 ships hiredis 0.14, which
 * has no maxbulklen or maxelements): told `$999999999999` it waits for, and buffers, that
 * many bytes; told `*100000000` it allocates the array. So each connection runs this
 * check over its raw bytes first. It reads only the headers (`*<n>` and `$<n>` lines)
 * and skips bulk bodies by their declared length, carrying its state across reads. A
 * request must be an array of 1..KV_MAX_ARGS bulk strings (what every client sends),
 * each at most KV_MAX_BULK bytes, all together at most KV_MAX_REQUEST. */
#include "kvcache.h"

#include <string.h>

/* The number in a header line: only digits, at most 18 of them (so no overflow). */
static bool header_number(const char *s, size_t len, int64_t *out)
{
    if (len == 0 || len > 18) return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Checks one complete header line (without its '\n'); NULL when it is within bounds. */
static const char *header(kv_guard_t *g)
{
    if (g->line_len < 2 || g->line[g->line_len - 1] != '\r')
        return "Protocol error: bad header line";
    int64_t n = 0;
    bool ok = header_number(g->line + 1, g->line_len - 2, &n);
    if (g->args_left == 0) { /* a new request */
        if (g->line[0] != '*') return "Protocol error: expected '*' (an array of bulk strings)";
        if (!ok || n < 1 || n > KV_MAX_ARGS) return "Protocol error: invalid multibulk length";
        g->args_left = n;
        g->req_bytes = 0;
        return NULL;
    }
    if (g->line[0] != '$') return "Protocol error: expected '$' (a bulk string)";
    if (!ok || n > KV_MAX_BULK) return "Protocol error: invalid bulk length";
    g->req_bytes += n;
    if (g->req_bytes > KV_MAX_REQUEST) return "Protocol error: request too large";
    g->in_body = true;
    g->body_left = n + 2;
    return NULL;
}

size_t kv_guard_scan(kv_guard_t *g, const char *p, size_t len, const char **why)
{
    size_t i = 0, line_start = 0; /* 0 too for a line begun in an earlier read */
    while (i < len) {
        if (g->in_body) {
            if (g->body_left > 2) { /* the body proper: skipped */
                size_t skip = len - i;
                if ((int64_t)skip > g->body_left - 2) skip = (size_t)(g->body_left - 2);
                i += skip;
                g->body_left -= (int64_t)skip;
                continue;
            }
            char want = g->body_left == 2 ? '\r' : '\n';
            if (p[i] != want) {
                *why = "Protocol error: bulk string not followed by CRLF";
                return i;
            }
            i++;
            if (--g->body_left == 0) {
                g->in_body = false;
                g->args_left--;
            }
            continue;
        }
        if (g->line_len == 0) line_start = i;
        const char *nl = memchr(p + i, '\n', len - i); /* the header line's end */
        size_t take = nl ? (size_t)(nl - (p + i)) : len - i;
        if (g->line_len + take > sizeof g->line) {
            *why = "Protocol error: header line too long";
            return line_start;
        }
        memcpy(g->line + g->line_len, p + i, take);
        g->line_len += take;
        i += take;
        if (!nl) break; /* the line goes on in the next read */
        i++;
        const char *err = header(g);
        g->line_len = 0;
        if (err) {
            *why = err;
            return line_start;
        }
    }
    return len;
}
