/* The wire codec (wire.h): envelopes and handshake frames to and from msgpack bytes.
 *
 * Encoding is written by hand with big-endian stores into the caller's buffer: no
 * allocation, one pass, deterministic (the same message always gives the same bytes), and
 * every unsigned integer in its smallest msgpack form. A pid is fixext 16 of type
 * AR__PID_EXT (hi then lo, big-endian); AR_PID_NONE is nil. The envelope's payload is
 * its last field, so a W_FRAG frame is its head (ar__wire_frag_head) followed by the
 * slice, and the slice never has to be copied.
 *
 * Decoding: ar__mp_check walks the raw bytes first (every length within what is left, a
 * container's element count at most the bytes left, nesting at most AR__MP_DEPTH, exactly
 * one object, no trailing bytes), so msgpack-c, which trusts lengths, only ever sees a
 * complete object whose allocation is bounded by the input's size. msgpack_unpack_next
 * then builds the object tree in its zone (one malloc'ed chunk, freed before we return:
 * the only allocation on the decode path, and not through ar__malloc since msgpack-c
 * takes no allocator); its str, bin and ext objects point into the input (msgpack-c 4.0
 * sets ptr to the input position in template_callback_str/bin/ext and marks the zone as
 * referencing it), so the text and payload pointers handed back point into body, never
 * into the zone; decode checks that they do. An empty str or bin has no position of its
 * own in msgpack-c (a fixstr of 0 comes back as NULL): it points at the end of body.
 * Every field is then type-checked; anything unexpected is AR_EBADMSG.
 *
 * Pure functions over the caller's buffers; any thread. Lengths passed to the encoders
 * fit in 32 bits (the callers cap messages far below that).
 */
#include "wire.h"

#include <msgpack.h>
#include <pthread.h>
#include <string.h>

#define ENVELOPE_FIELDS 10
#define HS_FIELDS 7
#define PID_SIZE 18u          /* fixext 16: d8, type, 16 bytes */
#define MP_DEPTH_LIMIT 32u    /* msgpack-c's own stack refuses deeper */

_Static_assert(W_KIND_END <= 127, "kinds are positive fixints");
_Static_assert(ENVELOPE_FIELDS <= 15 && HS_FIELDS <= 15, "frames are fixarrays");

/* ---- big-endian stores and msgpack heads ----------------------------------------- */
static uint8_t *put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

static uint8_t *put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    return put32(p + 4, (uint32_t)v);
}

static uint64_t get_be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

static size_t uint_size(uint64_t v)
{
    return v < 0x80 ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffffu ? 5 : 9;
}

static uint8_t *put_uint(uint8_t *p, uint64_t v)
{
    if (v < 0x80) {
        *p = (uint8_t)v;
        return p + 1;
    }
    if (v <= 0xff) {
        p[0] = 0xcc;
        p[1] = (uint8_t)v;
        return p + 2;
    }
    if (v <= 0xffff) {
        *p = 0xcd;
        return put16(p + 1, (uint16_t)v);
    }
    if (v <= 0xffffffffu) {
        *p = 0xce;
        return put32(p + 1, (uint32_t)v);
    }
    *p = 0xcf;
    return put64(p + 1, v);
}

static bool pid_none(ar_pid_t pid) { return pid.hi == 0 && pid.lo == 0; }

static size_t pid_size(ar_pid_t pid) { return pid_none(pid) ? 1 : PID_SIZE; }

static uint8_t *put_pid(uint8_t *p, ar_pid_t pid)
{
    if (pid_none(pid)) {
        *p = 0xc0;
        return p + 1;
    }
    p[0] = 0xd8;
    p[1] = AR__PID_EXT;
    return put64(put64(p + 2, pid.hi), pid.lo);
}

static size_t str_head(size_t n) { return n < 32 ? 1 : n <= 0xff ? 2 : n <= 0xffff ? 3 : 5; }

static uint8_t *put_str(uint8_t *p, const char *s, size_t n)
{
    if (!s) {
        *p = 0xc0;
        return p + 1;
    }
    if (n < 32) {
        *p++ = (uint8_t)(0xa0 | n);
    } else if (n <= 0xff) {
        *p++ = 0xd9;
        *p++ = (uint8_t)n;
    } else if (n <= 0xffff) {
        *p++ = 0xda;
        p = put16(p, (uint16_t)n);
    } else {
        *p++ = 0xdb;
        p = put32(p, (uint32_t)n);
    }
    if (n) memcpy(p, s, n);
    return p + n;
}

static size_t str_size(const char *s, size_t n) { return s ? str_head(n) + n : 1; }

static size_t bin_head(size_t n) { return n <= 0xff ? 2 : n <= 0xffff ? 3 : 5; }

static uint8_t *put_bin_head(uint8_t *p, size_t n)
{
    if (n <= 0xff) {
        p[0] = 0xc4;
        p[1] = (uint8_t)n;
        return p + 2;
    }
    if (n <= 0xffff) {
        *p = 0xc5;
        return put16(p + 1, (uint16_t)n);
    }
    *p = 0xc6;
    return put32(p + 1, (uint32_t)n);
}

/* ---- envelopes --------------------------------------------------------------------- */
size_t ar__wire_size(const ar__wire_msg_t *m)
{
    return AR__FRAME_PREFIX + 1 + uint_size(m->kind) + uint_size(m->flags) +
           uint_size(m->tag) + pid_size(m->from) + pid_size(m->to) + uint_size(m->ref) +
           uint_size(m->code) + str_size(m->text, m->text_len) + pid_size(m->reply_pid) +
           bin_head(m->len) + m->len;
}

void ar__wire_encode(const ar__wire_msg_t *m, void *buf)
{
    uint8_t *p = put32(buf, (uint32_t)(ar__wire_size(m) - AR__FRAME_PREFIX));
    *p++ = 0x90 | ENVELOPE_FIELDS;
    p = put_uint(p, m->kind);
    p = put_uint(p, m->flags);
    p = put_uint(p, m->tag);
    p = put_pid(p, m->from);
    p = put_pid(p, m->to);
    p = put_uint(p, m->ref);
    p = put_uint(p, m->code);
    p = put_str(p, m->text, m->text_len);
    p = put_pid(p, m->reply_pid);
    p = put_bin_head(p, m->len);
    if (m->len) memcpy(p, m->payload, m->len);
}

size_t ar__wire_frag_head(void *buf, uint64_t stream, bool last, size_t slice)
{
    /* ar__wire_encode of {W_FRAG, last, ref = stream, payload = slice}, less the slice */
    size_t head = AR__FRAME_PREFIX + 1 + 1 + 1 + 1 + 1 + 1 + uint_size(stream) + 1 + 1 + 1 +
                  bin_head(slice);
    uint8_t *p = put32(buf, (uint32_t)(head - AR__FRAME_PREFIX + slice));
    *p++ = 0x90 | ENVELOPE_FIELDS;
    *p++ = W_FRAG;
    *p++ = last ? 1 : 0;
    *p++ = 0;    /* tag */
    *p++ = 0xc0; /* from */
    *p++ = 0xc0; /* to */
    p = put_uint(p, stream);
    *p++ = 0;    /* code */
    *p++ = 0xc0; /* text */
    *p++ = 0xc0; /* reply_pid */
    put_bin_head(p, slice);
    return head;
}

/* ---- the structure check ----------------------------------------------------------- */
bool ar__mp_check(const void *data, size_t len, unsigned max_depth)
{
    if (!data || len == 0) return false;
    if (max_depth > MP_DEPTH_LIMIT) max_depth = MP_DEPTH_LIMIT;
    const uint8_t *p = data, *end = p + len;
    uint64_t left[MP_DEPTH_LIMIT + 1]; /* objects still to read at each open level */
    unsigned depth = 0;                /* containers open */
    left[0] = 1;
    for (;;) {
        while (left[depth] == 0) {
            if (depth == 0) return p == end;
            depth--;
        }
        left[depth]--;
        if (p == end) return false;
        uint8_t b = *p++;
        enum { SCALAR, BYTES, EXT, ARRAY, MAP } what = SCALAR;
        unsigned head = 0;  /* bytes of the length or count that follows b */
        uint64_t skip = 0;  /* bytes of data after that */
        uint64_t n = 0;
        if (b <= 0x7f || b >= 0xe0) {
            /* fixint */
        } else if (b <= 0x8f) {
            what = MAP;
            n = b & 0x0f;
        } else if (b <= 0x9f) {
            what = ARRAY;
            n = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc0: case 0xc2: case 0xc3: break;
            case 0xc4: case 0xd9: what = BYTES; head = 1; break;
            case 0xc5: case 0xda: what = BYTES; head = 2; break;
            case 0xc6: case 0xdb: what = BYTES; head = 4; break;
            case 0xc7: what = EXT; head = 1; break;
            case 0xc8: what = EXT; head = 2; break;
            case 0xc9: what = EXT; head = 4; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 1 + 1; break;
            case 0xd5: skip = 1 + 2; break;
            case 0xd6: skip = 1 + 4; break;
            case 0xd7: skip = 1 + 8; break;
            case 0xd8: skip = 1 + 16; break;
            case 0xdc: what = ARRAY; head = 2; break;
            case 0xdd: what = ARRAY; head = 4; break;
            case 0xde: what = MAP; head = 2; break;
            case 0xdf: what = MAP; head = 4; break;
            default: return false; /* 0xc1: never used */
            }
        }
        if ((size_t)(end - p) < head) return false;
        if (head) {
            n = get_be(p, head);
            p += head;
        }
        if (what == BYTES) skip = n;
        if (what == EXT) skip = 1 + n; /* the type byte, then n bytes */
        if (skip > (uint64_t)(end - p)) return false;
        p += skip;
        if (what == ARRAY || what == MAP) {
            uint64_t items = what == MAP ? 2 * n : n;
            /* each item takes a byte at least: no count can outrun the input */
            if (items > (uint64_t)(end - p) || depth + 1 > max_depth) return false;
            left[++depth] = items;
        }
    }
}

/* ---- decoding ---------------------------------------------------------------------- */
/* The input a decode works on: str, bin and ext bytes must lie inside it. */
typedef struct span {
    const char *lo, *hi;
} span_t;

/* A str or bin's bytes as a pointer into the input (see the notes above). */
static bool inside(const span_t *in, const char *p, uint32_t n, const char **out)
{
    if (n == 0) {
        *out = in->hi;
        return true;
    }
    if (!p || p < in->lo || p > in->hi || (size_t)(in->hi - p) < n) return false;
    *out = p;
    return true;
}

/* Each thread keeps one zone for msgpack-c's objects, cleared after each frame: making and
 * freeing one per frame cost more than the rest of the decode. */
#define ZONE_CHUNK 2048
static pthread_key_t zone_key;
static pthread_once_t zone_once = PTHREAD_ONCE_INIT;
static void zone_free(void *z) { msgpack_zone_free(z); }
static void zone_key_make(void) { pthread_key_create(&zone_key, zone_free); }

static msgpack_zone *thread_zone(void)
{
    pthread_once(&zone_once, zone_key_make);
    msgpack_zone *z = pthread_getspecific(zone_key);
    if (!z && (z = msgpack_zone_new(ZONE_CHUNK)) != NULL && pthread_setspecific(zone_key, z)) {
        msgpack_zone_free(z);
        z = NULL;
    }
    return z;
}

/* Checks and parses body into top (its objects in *zp, to clear after): an array of n
 * fields, or NULL. */
static const msgpack_object *parse(msgpack_zone **zp, msgpack_object *top, const void *body,
                                   size_t len, uint32_t n)
{
    *zp = NULL;
    if (!ar__mp_check(body, len, AR__MP_DEPTH)) return NULL; /* before anything allocates */
    msgpack_zone *z = *zp = thread_zone();
    if (!z) return NULL;
    size_t off = 0;
    if (msgpack_unpack(body, len, &off, z, top) != MSGPACK_UNPACK_SUCCESS || off != len)
        return NULL;
    if (top->type != MSGPACK_OBJECT_ARRAY || top->via.array.size != n) return NULL;
    return top->via.array.ptr;
}

static bool get_uint(const msgpack_object *o, uint64_t max, uint64_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max) return false;
    *out = o->via.u64;
    return true;
}

static bool get_pid(const span_t *in, const msgpack_object *o, ar_pid_t *out)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        *out = AR_PID_NONE;
        return true;
    }
    if (o->type != MSGPACK_OBJECT_EXT || o->via.ext.type != AR__PID_EXT ||
        o->via.ext.size != 16)
        return false;
    const char *p;
    if (!inside(in, o->via.ext.ptr, 16, &p)) return false;
    const uint8_t *b = (const uint8_t *)p;
    out->hi = get_be(b, 8);
    out->lo = get_be(b + 8, 8);
    return true;
}

/* str or nil */
static bool get_text(const span_t *in, const msgpack_object *o, size_t max, const char **s,
                     size_t *n)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        *s = NULL;
        *n = 0;
        return true;
    }
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size > max ||
        !inside(in, o->via.str.ptr, o->via.str.size, s))
        return false;
    *n = o->via.str.size;
    return true;
}

/* bin of exactly n bytes, or nil */
static bool get_fixed_bin(const span_t *in, const msgpack_object *o, uint8_t *out, uint32_t n,
                          bool *has)
{
    *has = false;
    if (o->type == MSGPACK_OBJECT_NIL) return true;
    const char *p;
    if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != n ||
        !inside(in, o->via.bin.ptr, n, &p))
        return false;
    memcpy(out, p, n);
    *has = true;
    return true;
}

static bool envelope(const span_t *in, const msgpack_object *f, ar__wire_msg_t *m)
{
    uint64_t kind, flags, tag, code;
    const char *payload;
    if (!get_uint(&f[0], W_PEER, &kind) || kind < W_CAST || !get_uint(&f[1], 0xff, &flags) ||
        !get_uint(&f[2], UINT32_MAX, &tag) || !get_pid(in, &f[3], &m->from) ||
        !get_pid(in, &f[4], &m->to) || !get_uint(&f[5], UINT64_MAX, &m->ref) ||
        !get_uint(&f[6], AR_ERROR, &code) ||
        !get_text(in, &f[7], SIZE_MAX, &m->text, &m->text_len) ||
        !get_pid(in, &f[8], &m->reply_pid) || f[9].type != MSGPACK_OBJECT_BIN ||
        !inside(in, f[9].via.bin.ptr, f[9].via.bin.size, &payload))
        return false;
    m->kind = (uint8_t)kind;
    m->flags = (uint8_t)flags;
    m->tag = (uint32_t)tag;
    m->code = (uint32_t)code;
    m->payload = payload;
    m->len = f[9].via.bin.size;
    return true;
}

int ar__wire_decode(const void *body, size_t len, ar__wire_msg_t *m)
{
    msgpack_zone *z;
    msgpack_object top;
    ar__wire_msg_t out;
    memset(&out, 0, sizeof out);
    const msgpack_object *f = parse(&z, &top, body, len, ENVELOPE_FIELDS);
    bool ok = false;
    if (f) { /* so body is not NULL */
        span_t in = {body, (const char *)body + len};
        ok = envelope(&in, f, &out);
    }
    if (z) msgpack_zone_clear(z);
    if (!ok) return AR_EBADMSG;
    *m = out;
    return 0;
}

/* ---- handshake frames -------------------------------------------------------------- */
bool ar__node_name_valid(const char *name, size_t len)
{
    if (!name || len == 0 || len >= AR_NODE_NAME_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '@' || c == '-'))
            return false;
    }
    return true;
}

/* A listen address: printable ASCII without spaces ("host:port", "[::1]:9100"). */
static bool listen_valid(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] <= ' ' || s[i] > '~') return false;
    return true;
}

size_t ar__hs_size(const ar__hs_msg_t *m)
{
    return AR__FRAME_PREFIX + 1 + uint_size(m->kind) + uint_size(m->version) +
           str_size(m->name, m->name_len) + uint_size(m->node_hi) +
           str_size(m->listen, m->listen_len) +
           (m->has_challenge ? 2 + AR__CHALLENGE_LEN : 1) + (m->has_mac ? 2 + AR__MAC_LEN : 1);
}

void ar__hs_encode(const ar__hs_msg_t *m, void *buf)
{
    uint8_t *p = put32(buf, (uint32_t)(ar__hs_size(m) - AR__FRAME_PREFIX));
    *p++ = 0x90 | HS_FIELDS;
    p = put_uint(p, m->kind);
    p = put_uint(p, m->version);
    p = put_str(p, m->name, m->name_len);
    p = put_uint(p, m->node_hi);
    p = put_str(p, m->listen, m->listen_len);
    if (m->has_challenge) {
        p = put_bin_head(p, AR__CHALLENGE_LEN);
        memcpy(p, m->challenge, AR__CHALLENGE_LEN);
        p += AR__CHALLENGE_LEN;
    } else {
        *p++ = 0xc0;
    }
    if (m->has_mac) {
        p = put_bin_head(p, AR__MAC_LEN);
        memcpy(p, m->mac, AR__MAC_LEN);
    } else {
        *p = 0xc0;
    }
}

static bool hs_fields(const span_t *in, const msgpack_object *f, ar__hs_msg_t *m)
{
    uint64_t kind, version;
    if (!get_uint(&f[0], W_WELCOME, &kind) || kind < W_HELLO ||
        !get_uint(&f[1], UINT32_MAX, &version) ||
        !get_text(in, &f[2], AR_NODE_NAME_MAX - 1, &m->name, &m->name_len) ||
        (m->name && !ar__node_name_valid(m->name, m->name_len)) ||
        !get_uint(&f[3], UINT64_MAX, &m->node_hi) ||
        !get_text(in, &f[4], AR_NAME_MAX - 1, &m->listen, &m->listen_len) ||
        (m->listen && !listen_valid(m->listen, m->listen_len)) ||
        !get_fixed_bin(in, &f[5], m->challenge, AR__CHALLENGE_LEN, &m->has_challenge) ||
        !get_fixed_bin(in, &f[6], m->mac, AR__MAC_LEN, &m->has_mac))
        return false;
    m->kind = (uint8_t)kind;
    m->version = (uint32_t)version;
    return true;
}

int ar__hs_decode(const void *body, size_t len, ar__hs_msg_t *m)
{
    if (len > AR__HS_MAX - AR__FRAME_PREFIX) return AR_EBADMSG;
    msgpack_zone *z;
    msgpack_object top;
    ar__hs_msg_t out;
    memset(&out, 0, sizeof out);
    const msgpack_object *f = parse(&z, &top, body, len, HS_FIELDS);
    bool ok = false;
    if (f) {
        span_t in = {body, (const char *)body + len};
        ok = hs_fields(&in, f, &out);
    }
    if (z) msgpack_zone_clear(z);
    if (!ok) return AR_EBADMSG;
    *m = out;
    return 0;
}
