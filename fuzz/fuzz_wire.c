/* libFuzzer target: the envelope decoder, and what a receiver does with a byte stream.
 *
 * Each input is used twice:
 *   - as one frame body: ar__wire_decode must not crash; whatever it accepts must point
 *     into the input, encode back to ar__wire_size bytes, and decode again to the same
 *     message; ar__mp_check accepting it must mean msgpack-c parses it whole;
 *   - as a stream of frames, the way the receiving end of a connection takes them: a
 *     4-byte length checked against AR__WIRE_MAX, the body decoded, W_FRAG slices
 *     gathered per stream id up to a message size limit and a stream limit, and each
 *     completed body decoded in turn (it must not be a W_FRAG itself). Anything wrong
 *     ends the stream, as it would close the connection.
 * Any violated property aborts, which libFuzzer reports as a crash.
 */
#include "../runtime/dist/wire.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MESSAGE (1u << 20) /* the fuzzed receiver's max_message_bytes */
#define MAX_STREAMS 4          /* fragment streams open at once */

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_wire: %s:%d: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static bool in_input(const void *p, size_t n, const uint8_t *data, size_t size)
{
    const uint8_t *q = p;
    return q >= data && q <= data + size && (size_t)(data + size - q) >= n;
}

/* (the target links only wire.c and handshake.c, not the runtime's ar_pid_eq) */
static bool pid_eq(ar_pid_t a, ar_pid_t b) { return a.hi == b.hi && a.lo == b.lo; }

static bool same(const ar__wire_msg_t *a, const ar__wire_msg_t *b)
{
    return a->kind == b->kind && a->flags == b->flags && a->tag == b->tag &&
           pid_eq(a->from, b->from) && pid_eq(a->to, b->to) &&
           pid_eq(a->reply_pid, b->reply_pid) && a->ref == b->ref && a->code == b->code &&
           (a->text == NULL) == (b->text == NULL) && a->text_len == b->text_len &&
           (a->text_len == 0 || memcmp(a->text, b->text, a->text_len) == 0) &&
           a->len == b->len && (a->len == 0 || memcmp(a->payload, b->payload, a->len) == 0);
}

/* Decodes one body; on success checks the round trip. */
static int decode_checked(const uint8_t *body, size_t len, ar__wire_msg_t *m)
{
    int rc = ar__wire_decode(body, len, m);
    CHECK(rc == 0 || rc == AR_EBADMSG);
    if (rc) return rc;
    CHECK(m->kind >= W_CAST && m->kind <= W_PEER && m->code <= AR_ERROR);
    CHECK(!m->text || in_input(m->text, m->text_len, body, len));
    CHECK(m->payload && in_input(m->payload, m->len, body, len));
    size_t n = ar__wire_size(m);
    CHECK(n <= AR__FRAME_PREFIX + len); /* the smallest forms: never longer than the input */
    uint8_t *buf = malloc(n);
    CHECK(buf);
    ar__wire_encode(m, buf);
    ar__wire_msg_t again;
    CHECK(ar__wire_decode(buf + AR__FRAME_PREFIX, n - AR__FRAME_PREFIX, &again) == 0);
    CHECK(same(m, &again));
    CHECK(ar__wire_size(&again) == n);
    free(buf);
    return 0;
}

/* The structure check must never pass something msgpack-c cannot parse whole. */
static void check_agrees(const uint8_t *data, size_t size)
{
    if (!ar__mp_check(data, size, AR__MP_DEPTH)) return;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&u, (const char *)data, size, &off) == MSGPACK_UNPACK_SUCCESS);
    CHECK(off == size);
    msgpack_unpacked_destroy(&u);
}

typedef struct stream {
    bool open;
    uint64_t id;
    uint8_t *body;
    size_t len;
} stream_t;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One W_FRAG: false when the stream must be closed. */
static bool on_frag(stream_t *s, const ar__wire_msg_t *m)
{
    stream_t *st = NULL;
    for (int i = 0; i < MAX_STREAMS && !st; i++)
        if (s[i].open && s[i].id == m->ref) st = &s[i];
    for (int i = 0; i < MAX_STREAMS && !st; i++)
        if (!s[i].open) {
            st = &s[i];
            st->open = true;
            st->id = m->ref;
            st->len = 0;
        }
    if (!st) return false; /* too many messages in flight */
    if (m->len > MAX_MESSAGE - st->len) return false;
    if (m->len) {
        uint8_t *b = realloc(st->body, st->len + m->len);
        CHECK(b);
        st->body = b;
        memcpy(st->body + st->len, m->payload, m->len);
        st->len += m->len;
    }
    if (!(m->flags & 1)) return true;
    ar__wire_msg_t whole;
    bool ok = decode_checked(st->body, st->len, &whole) == 0 && whole.kind != W_FRAG;
    st->open = false;
    st->len = 0;
    return ok;
}

static void receive(const uint8_t *data, size_t size)
{
    stream_t s[MAX_STREAMS];
    memset(s, 0, sizeof s);
    size_t pos = 0;
    while (size - pos >= AR__FRAME_PREFIX) {
        uint32_t len = be32(data + pos);
        if (len == 0 || len > AR__WIRE_MAX) break; /* refused before reading the body */
        if (len > size - pos - AR__FRAME_PREFIX) break; /* waits for the rest */
        const uint8_t *body = data + pos + AR__FRAME_PREFIX;
        ar__wire_msg_t m;
        if (decode_checked(body, len, &m) != 0) break;
        if (m.kind == W_FRAG && !on_frag(s, &m)) break;
        pos += AR__FRAME_PREFIX + len;
    }
    for (int i = 0; i < MAX_STREAMS; i++) free(s[i].body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ar__wire_msg_t m;
    decode_checked(data, size, &m);
    check_agrees(data, size);
    receive(data, size);
    return 0;
}
