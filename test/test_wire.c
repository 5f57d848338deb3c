/* The distribution wire format (runtime/dist/wire.c) and handshake (handshake.c): pure
 * functions over byte buffers, tested without sockets or nodes.
 *
 * Frames are compared with hand-written bytes where the layout is the point (pids, the
 * smallest integer forms, a W_FRAG head); malformed input is built by hand with the small
 * msgpack writer below.
 */
#include "test_helpers.h"

#include "../runtime/dist/wire.h"

/* ---- Counting this thread's allocations (plain builds) ------------------------------
 * malloc is interposed for the whole test binary and forwards to glibc's own; it counts
 * only while a test on this thread has armed it. Under ASan the sanitizer owns malloc (and
 * an oversized request would abort the test by itself), so the count is not taken. */
#if defined(__SANITIZE_ADDRESS__)
#define TW_COUNT_ALLOCS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TW_COUNT_ALLOCS 0
#endif
#endif
#ifndef TW_COUNT_ALLOCS
#define TW_COUNT_ALLOCS 1
#endif

static _Thread_local bool tw_armed;
static _Thread_local long tw_allocs;
static _Thread_local size_t tw_largest;

#if TW_COUNT_ALLOCS
extern void *__libc_malloc(size_t n);
__attribute__((visibility("default"))) void *malloc(size_t n)
{
    if (tw_armed) {
        tw_allocs++;
        if (n > tw_largest) tw_largest = n;
    }
    return __libc_malloc(n);
}
#endif

static void tw_arm(void)
{
    tw_allocs = 0;
    tw_largest = 0;
    tw_armed = true;
}

static long tw_disarm(void)
{
    tw_armed = false;
    return tw_allocs;
}

/* ---- A little msgpack writer for hand-made input ----------------------------------- */
typedef struct mp {
    uint8_t b[1 << 18];
    size_t n;
} mp_t;

static void mp_raw(mp_t *w, const void *p, size_t n)
{
    cr_assert_leq(w->n + n, sizeof w->b);
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void mp_byte(mp_t *w, uint8_t v) { mp_raw(w, &v, 1); }

static void mp_be(mp_t *w, uint64_t v, unsigned bytes)
{
    for (unsigned i = bytes; i-- > 0;) mp_byte(w, (uint8_t)(v >> (8 * i)));
}

static void mp_bytes(mp_t *w, uint8_t type8, size_t n, uint8_t fill)
{
    if (n <= 0xff) {
        mp_byte(w, type8);
        mp_be(w, n, 1);
    } else if (n <= 0xffff) {
        mp_byte(w, type8 + 1);
        mp_be(w, n, 2);
    } else {
        mp_byte(w, type8 + 2);
        mp_be(w, n, 4);
    }
    for (size_t i = 0; i < n; i++) mp_byte(w, fill);
}

/* Bytes given as a string literal: MP(w, "\x93\x01\x02\x03"). */
#define MP(w, lit) mp_raw((w), (lit), sizeof(lit) - 1)

/* ---- Frames ------------------------------------------------------------------------ */
static uint8_t frame_buf[1 << 20];

/* Encodes m into frame_buf, checks size and prefix; returns the frame's length. */
static size_t enc(const ar__wire_msg_t *m)
{
    size_t n = ar__wire_size(m);
    cr_assert_leq(n, sizeof frame_buf);
    memset(frame_buf, 0xEE, n + 16);
    ar__wire_encode(m, frame_buf);
    cr_assert_eq(frame_buf[n], 0xEE, "the encoder wrote past ar__wire_size");
    uint32_t l = (uint32_t)frame_buf[0] << 24 | (uint32_t)frame_buf[1] << 16 |
                 (uint32_t)frame_buf[2] << 8 | frame_buf[3];
    cr_assert_eq(l, n - AR__FRAME_PREFIX, "prefix %u for a frame of %zu", l, n);
    return n;
}

static void msg_eq(const ar__wire_msg_t *a, const ar__wire_msg_t *b)
{
    cr_assert_eq(a->kind, b->kind);
    cr_assert_eq(a->flags, b->flags);
    cr_assert_eq(a->tag, b->tag);
    cr_assert(ar_pid_eq(a->from, b->from));
    cr_assert(ar_pid_eq(a->to, b->to));
    cr_assert(ar_pid_eq(a->reply_pid, b->reply_pid));
    cr_assert_eq(a->ref, b->ref);
    cr_assert_eq(a->code, b->code);
    cr_assert_eq(a->text == NULL, b->text == NULL);
    cr_assert_eq(a->text_len, b->text_len);
    if (a->text_len) cr_assert_arr_eq(a->text, b->text, a->text_len);
    cr_assert_eq(a->len, b->len);
    if (a->len) cr_assert_arr_eq(a->payload, b->payload, a->len);
}

_Static_assert(W_CALL == 2 && W_TICK == 11 && W_PEER == 13 && W_HELLO == 14 &&
                   W_KIND_END == 18,
               "the hand-written frames below spell kinds as numbers");

static const ar_pid_t PID_A = {0x0102030405060708u, 0x1112131415161718u};
static const ar_pid_t PID_B = {0x8000000100000001u, 0x0000000700000003u};

Test(wire, round_trip_every_kind, .timeout = TH_TIMEOUT)
{
    static const char payload[] = "the payload, with a \0 inside";
    for (uint8_t k = W_CAST; k <= W_PEER; k++) {
        ar__wire_msg_t m = {
            .kind = k,
            .flags = (uint8_t)(k * 17),
            .tag = 0xC0FFEE00u + k,
            .from = PID_A,
            .to = k & 1 ? PID_B : AR_PID_NONE,
            .reply_pid = k & 2 ? PID_B : AR_PID_NONE,
            .ref = (uint64_t)k << 40 | 99,
            .code = k % (AR_ERROR + 1),
            .text = k & 4 ? "why it ended" : NULL,
            .text_len = k & 4 ? 12 : 0,
            .payload = payload,
            .len = k & 8 ? 0 : sizeof payload,
        };
        size_t n = enc(&m);
        ar__wire_msg_t d;
        cr_assert_eq(ar__wire_decode(frame_buf + 4, n - 4, &d), 0, "kind %u", k);
        msg_eq(&m, &d);
    }
}

/* Boundaries of every msgpack integer and length form: the encoder picks the smallest,
 * ar__wire_size agrees, and the value comes back. */
Test(wire, smallest_encodings_round_trip, .timeout = TH_TIMEOUT)
{
    static const uint64_t v[] = {0, 1, 127, 128, 255, 256, 65535, 65536, 0xffffffffu,
                                 0x100000000u, UINT64_MAX};
    static const size_t vsize[] = {1, 1, 1, 2, 2, 3, 3, 5, 5, 9, 9};
    static const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536, 200000};
    static char big[200000];
    memset(big, 'x', sizeof big);
    /* the smallest envelope: every int 0 or 1, no pids, no text, empty payload */
    ar__wire_msg_t base = {.kind = W_CAST};
    size_t base_n = enc(&base);
    cr_assert_eq(base_n, 4 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 2);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        ar__wire_msg_t m = base;
        m.ref = v[i];
        size_t n = enc(&m);
        cr_assert_eq(n, base_n - 1 + vsize[i], "ref %llu", (unsigned long long)v[i]);
        ar__wire_msg_t d;
        cr_assert_eq(ar__wire_decode(frame_buf + 4, n - 4, &d), 0);
        cr_assert_eq(d.ref, v[i]);
        if (v[i] <= UINT32_MAX) {
            m = base;
            m.tag = (uint32_t)v[i];
            cr_assert_eq(enc(&m), base_n - 1 + vsize[i]);
            cr_assert_eq(ar__wire_decode(frame_buf + 4, ar__wire_size(&m) - 4, &d), 0);
            cr_assert_eq(d.tag, v[i]);
        }
    }
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t l = lens[i];
        ar__wire_msg_t m = base;
        m.text = big;
        m.text_len = l;
        size_t head = l < 32 ? 1 : l <= 0xff ? 2 : l <= 0xffff ? 3 : 5;
        size_t n = enc(&m);
        cr_assert_eq(n, base_n - 1 + head + l, "text of %zu", l);
        ar__wire_msg_t d;
        cr_assert_eq(ar__wire_decode(frame_buf + 4, n - 4, &d), 0);
        cr_assert_eq(d.text_len, l);
        cr_assert_not_null(d.text);
        m = base;
        m.payload = big;
        m.len = l;
        head = l <= 0xff ? 2 : l <= 0xffff ? 3 : 5;
        n = enc(&m);
        cr_assert_eq(n, base_n - 2 + head + l, "payload of %zu", l);
        cr_assert_eq(ar__wire_decode(frame_buf + 4, n - 4, &d), 0);
        cr_assert_eq(d.len, l);
    }
}

/* A whole frame against bytes written out by hand: the pid ext's layout (fixext 16 of
 * type 0x41, hi then lo big-endian), field order, nil for no pid and no text. */
Test(wire, hand_written_frame, .timeout = TH_TIMEOUT)
{
    ar__wire_msg_t m = {
        .kind = W_CALL,
        .flags = 0,
        .tag = 300,
        .from = PID_A,
        .to = AR_PID_NONE,
        .ref = 0x1234,
        .code = AR_NORMAL,
        .text = "hi",
        .text_len = 2,
        .reply_pid = PID_B,
        .payload = "xyz",
        .len = 3,
    };
    static const uint8_t want[] = {
        0x00, 0x00, 0x00, 0x37,             /* the prefix: 55 bytes follow */
        0x9a,                               /* fixarray of 10 */
        0x02,                               /* kind W_CALL */
        0x00,                               /* flags */
        0xcd, 0x01, 0x2c,                   /* tag 300: uint16 */
        0xd8, 0x41,                         /* from: fixext 16, type 0x41 */
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* hi */
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, /* lo */
        0xc0,                               /* to: none */
        0xcd, 0x12, 0x34,                   /* ref */
        0x00,                               /* code */
        0xa2, 'h', 'i',                     /* text */
        0xd8, 0x41,                         /* reply_pid */
        0x80, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x03,
        0xc4, 0x03, 'x', 'y', 'z',          /* payload, last */
    };
    cr_assert_eq(W_CALL, 2);
    size_t n = enc(&m);
    cr_assert_eq(n, sizeof want);
    cr_assert_arr_eq(frame_buf, want, sizeof want);
    ar__wire_msg_t d;
    cr_assert_eq(ar__wire_decode(want + 4, sizeof want - 4, &d), 0);
    msg_eq(&m, &d);
}

Test(wire, deterministic, .timeout = TH_TIMEOUT)
{
    char t1[] = "reason", t2[] = "reason";
    ar__wire_msg_t a = {.kind = W_EXIT, .from = PID_A, .to = PID_B, .code = AR_ERROR,
                        .text = t1, .text_len = 6, .payload = "p", .len = 1};
    ar__wire_msg_t b = a;
    b.text = t2;
    static uint8_t first[256];
    size_t n = enc(&a);
    memcpy(first, frame_buf, n);
    cr_assert_eq(enc(&b), n);
    cr_assert_arr_eq(first, frame_buf, n);
}

/* A pid ext of all zeroes is none as well; a NULL payload of 0 bytes is an empty bin. */
Test(wire, none_pids_and_empty_payload, .timeout = TH_TIMEOUT)
{
    ar__wire_msg_t m = {.kind = W_TICK};
    size_t n = enc(&m);
    static const uint8_t tick[] = {0, 0, 0, 12, 0x9a, W_TICK, 0, 0, 0xc0, 0xc0, 0, 0,
                                   0xc0, 0xc0, 0xc4, 0};
    cr_assert_eq(n, sizeof tick);
    cr_assert_arr_eq(frame_buf, tick, n);
    mp_t w = {.n = 0};
    MP(&w, "\x9a\x01\x00\x00");
    MP(&w, "\xd8\x41\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    MP(&w, "\xc0\x00\x00\xc0\xc0\xc4\x00");
    ar__wire_msg_t d;
    cr_assert_eq(ar__wire_decode(w.b, w.n, &d), 0);
    cr_assert(ar_pid_is_none(d.from));
}

/* Text and payload point into the body handed to decode, not into msgpack-c's zone
 * (which is gone when decode returns). */
Test(wire, pointers_into_body, .timeout = TH_TIMEOUT)
{
    ar__wire_msg_t m = {.kind = W_CAST, .text = "some text", .text_len = 9,
                        .payload = "some payload", .len = 12};
    size_t n = enc(&m);
    ar__wire_msg_t d;
    cr_assert_eq(ar__wire_decode(frame_buf + 4, n - 4, &d), 0);
    const char *lo = (const char *)frame_buf + 4, *hi = (const char *)frame_buf + n;
    cr_assert(d.text >= lo && d.text + d.text_len <= hi);
    cr_assert(d.payload >= (const void *)lo &&
              (const char *)d.payload + d.len == hi, "the payload ends the frame");
    cr_assert_arr_eq(d.text, "some text", 9);
    cr_assert_arr_eq(d.payload, "some payload", 12);
}

/* ---- Malformed input --------------------------------------------------------------- */
Test(wire, every_truncation_rejected, .timeout = TH_TIMEOUT)
{
    static char payload[300];
    memset(payload, 'p', sizeof payload);
    ar__wire_msg_t msgs[] = {
        {.kind = W_CALL, .tag = 70000, .from = PID_A, .to = PID_B, .reply_pid = PID_A,
         .ref = UINT64_MAX, .code = AR_ERROR, .text = "a reason text longer than 32 bytes",
         .text_len = 34, .payload = payload, .len = sizeof payload},
        {.kind = W_TICK},
        {.kind = W_FRAG, .flags = 1, .ref = 5, .payload = payload, .len = 3},
    };
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
        size_t n = enc(&msgs[i]);
        ar__wire_msg_t d;
        cr_assert_eq(ar__wire_decode(frame_buf + 4, n - 4, &d), 0);
        for (size_t cut = 0; cut < n - 4; cut++) {
            cr_assert_eq(ar__wire_decode(frame_buf + 4, cut, &d), AR_EBADMSG,
                         "frame %zu cut to %zu of %zu bytes", i, cut, n - 4);
            cr_assert(!ar__mp_check(frame_buf + 4, cut, AR__MP_DEPTH));
        }
    }
    ar__hs_msg_t h = {.kind = W_CHALLENGE, .version = AR__WIRE_VERSION, .name = "node-b",
                      .name_len = 6, .node_hi = 0x8000000300000001u, .listen = "127.0.0.1:1",
                      .listen_len = 11, .has_challenge = true, .has_mac = true};
    uint8_t hb[AR__HS_MAX];
    size_t hn = ar__hs_size(&h);
    ar__hs_encode(&h, hb);
    ar__hs_msg_t hd;
    cr_assert_eq(ar__hs_decode(hb + 4, hn - 4, &hd), 0);
    for (size_t cut = 0; cut < hn - 4; cut++)
        cr_assert_eq(ar__hs_decode(hb + 4, cut, &hd), AR_EBADMSG, "hs cut to %zu", cut);
}

Test(wire, trailing_bytes_rejected, .timeout = TH_TIMEOUT)
{
    ar__wire_msg_t m = {.kind = W_CAST, .payload = "abc", .len = 3};
    size_t n = enc(&m);
    ar__wire_msg_t d;
    static const uint8_t tails[] = {0x00, 0xc0, 0x90, 0xff};
    for (size_t i = 0; i < sizeof tails; i++) {
        frame_buf[n] = tails[i];
        cr_assert_eq(ar__wire_decode(frame_buf + 4, n - 4 + 1, &d), AR_EBADMSG);
        cr_assert(!ar__mp_check(frame_buf + 4, n - 4 + 1, AR__MP_DEPTH));
    }
    /* two whole frames back to back are not one body */
    memcpy(frame_buf + n, frame_buf + 4, n - 4);
    cr_assert_eq(ar__wire_decode(frame_buf + 4, 2 * (n - 4), &d), AR_EBADMSG);
}

/* Headers that make msgpack-c allocate or wait for gigabytes (DEPENDENCIES.md): refused
 * by the structure check, so nothing is allocated at all. */
Test(wire, huge_headers_rejected_without_allocation, .timeout = TH_TIMEOUT)
{
    static const struct {
        const char *what;
        uint8_t b[8];
        size_t n;
    } rows[] = {
        {"array32 of 2^32-1", {0xdd, 0xff, 0xff, 0xff, 0xff}, 5},
        {"map32 of 2^32-1", {0xdf, 0xff, 0xff, 0xff, 0xff}, 5},
        {"array16 of 65535", {0xdc, 0xff, 0xff}, 3},
        {"map16 of 65535", {0xde, 0xff, 0xff, 0xc0}, 4},
        {"fixarray of 15 in 3 bytes", {0x9f, 0xc0, 0xc0}, 3},
        {"fixmap of 2 in 3 bytes", {0x82, 0xc0, 0xc0, 0xc0}, 4},
        {"str32 of 4 GiB", {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}, 6},
        {"bin32 of 4 GiB", {0xc6, 0xff, 0xff, 0xff, 0xff, 0}, 6},
        {"ext32 of 4 GiB", {0xc9, 0xff, 0xff, 0xff, 0xff, 0x41, 0}, 7},
        {"str16 past the end", {0xda, 0x01, 0x00, 'a'}, 4},
        {"bin8 past the end", {0xc4, 0x05, 1, 2, 3, 4}, 6},
        {"ext8 missing its type", {0xc7, 0x00}, 2},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        cr_assert(!ar__mp_check(rows[i].b, rows[i].n, AR__MP_DEPTH), "%s", rows[i].what);
        /* and as an envelope's payload */
        mp_t w = {.n = 0};
        MP(&w, "\x9a\x01\x00\x00\xc0\xc0\x00\x00\xc0\xc0");
        mp_raw(&w, rows[i].b, rows[i].n);
        ar__wire_msg_t d;
        ar__hs_msg_t hd;
        tw_arm();
        int rc1 = ar__wire_decode(rows[i].b, rows[i].n, &d);
        int rc2 = ar__wire_decode(w.b, w.n, &d);
        int rc3 = ar__hs_decode(rows[i].b, rows[i].n, &hd);
        long allocs = tw_disarm();
        cr_assert_eq(rc1, AR_EBADMSG, "%s", rows[i].what);
        cr_assert_eq(rc2, AR_EBADMSG, "%s in an envelope", rows[i].what);
        cr_assert_eq(rc3, AR_EBADMSG, "%s", rows[i].what);
        cr_assert_eq(allocs, 0, "%s: %ld allocations, the largest %zu bytes", rows[i].what,
                     allocs, tw_largest);
    }
#if TW_COUNT_ALLOCS
    /* the counter does see msgpack-c's zone when a frame is parsed */
    ar__wire_msg_t m = {.kind = W_CAST};
    size_t n = enc(&m);
    ar__wire_msg_t d;
    tw_arm();
    int rc = ar__wire_decode(frame_buf + 4, n - 4, &d);
    long allocs = tw_disarm();
    cr_assert_eq(rc, 0);
    cr_assert_gt(allocs, 0);
    cr_assert_leq(tw_largest, 64 * 1024, "a small frame, a small zone");
#endif
}

static size_t nested(uint8_t *b, unsigned depth)
{
    for (unsigned i = 0; i < depth; i++) b[i] = 0x91; /* fixarray of 1 */
    b[depth] = 0xc0;
    return depth + 1;
}

Test(wire, depth_cap, .timeout = TH_TIMEOUT)
{
    uint8_t b[64];
    size_t n = nested(b, AR__MP_DEPTH);
    cr_assert(ar__mp_check(b, n, AR__MP_DEPTH), "exactly AR__MP_DEPTH levels pass");
    n = nested(b, AR__MP_DEPTH + 1);
    cr_assert(!ar__mp_check(b, n, AR__MP_DEPTH), "one more level is refused");
    cr_assert(ar__mp_check(b, n, AR__MP_DEPTH + 1));
    cr_assert(!ar__mp_check(b, 1, 0), "max_depth 0: no container at all");
    cr_assert(ar__mp_check((const uint8_t *)"\x05", 1, 0));
    /* 40 levels: beyond msgpack-c's own stack; refused whatever max_depth says */
    n = nested(b, 40);
    cr_assert(!ar__mp_check(b, n, 1000));
    /* an envelope whose payload field is nested 8 deeper than the envelope */
    mp_t w = {.n = 0};
    MP(&w, "\x9a\x01\x00\x00\xc0\xc0\x00\x00\xc0\xc0");
    w.n += nested(w.b + w.n, AR__MP_DEPTH);
    ar__wire_msg_t d;
    cr_assert_eq(ar__wire_decode(w.b, w.n, &d), AR_EBADMSG);
    cr_assert(!ar__mp_check(w.b, w.n, AR__MP_DEPTH));
}

/* Every msgpack type passes the check when whole, and fails cut anywhere. */
Test(wire, mp_check_every_type, .timeout = TH_TIMEOUT)
{
    mp_t w = {.n = 0};
    mp_byte(&w, 0xdc); /* array16 of the items below */
    mp_be(&w, 39, 2);
    MP(&w, "\xc0\xc2\xc3\x00\x7f\xe0\xff");                           /* 7 */
    MP(&w, "\xcc\x01\xcd\x01\x02\xce\x01\x02\x03\x04");                 /* 3 */
    MP(&w, "\xcf\x01\x02\x03\x04\x05\x06\x07\x08");                     /* 1 */
    MP(&w, "\xd0\xff\xd1\xff\xfe\xd2\xff\xfe\xfd\xfc");                 /* 3 */
    MP(&w, "\xd3\x01\x02\x03\x04\x05\x06\x07\x08");                     /* 1 */
    MP(&w, "\xca\x3f\x80\x00\x00\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00"); /* 2 */
    MP(&w, "\xa3" "abc" "\xa0");                                        /* 2 */
    mp_bytes(&w, 0xd9, 40, 's');                                        /* str8 */
    mp_bytes(&w, 0xd9, 300, 's');                                       /* str16 */
    mp_bytes(&w, 0xd9, 70000, 's');                                     /* str32 */
    mp_bytes(&w, 0xc4, 0, 'b');                                         /* bin8 */
    mp_bytes(&w, 0xc4, 300, 'b');                                       /* bin16 */
    mp_bytes(&w, 0xc4, 70000, 'b');                                     /* bin32 */
    MP(&w, "\xd4\x01\x01\xd5\x01\x01\x02\xd6\x01\x01\x02\x03\x04");     /* 3 fixext */
    MP(&w, "\xd7\x01\x01\x02\x03\x04\x05\x06\x07\x08");                 /* 1 */
    MP(&w, "\xd8\x41\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\2");                 /* 1 */
    MP(&w, "\xc7\x00\x05");                                             /* ext8, empty */
    mp_byte(&w, 0xc8);                                                  /* ext16 */
    mp_be(&w, 300, 2);
    mp_byte(&w, 7);
    for (int i = 0; i < 300; i++) mp_byte(&w, 'e');
    mp_byte(&w, 0xc9);                                                  /* ext32 */
    mp_be(&w, 2, 4);
    MP(&w, "\x07xy");
    MP(&w, "\x90\x80\x92\x01\x81\xa1k\x02");                            /* 3 */
    mp_byte(&w, 0xdd); /* array32 */
    mp_be(&w, 2, 4);
    MP(&w, "\x01\x02");
    mp_byte(&w, 0xde); /* map16 */
    mp_be(&w, 1, 2);
    MP(&w, "\x01\x02");
    mp_byte(&w, 0xdf); /* map32 */
    mp_be(&w, 1, 4);
    MP(&w, "\x01\x02");
    cr_assert(ar__mp_check(w.b, w.n, AR__MP_DEPTH), "the whole list");
    for (size_t cut = 0; cut < w.n; cut++)
        cr_assert(!ar__mp_check(w.b, cut, AR__MP_DEPTH), "cut to %zu of %zu", cut, w.n);
    cr_assert(!ar__mp_check((const uint8_t *)"\xc1", 1, AR__MP_DEPTH), "0xc1 is never used");
    cr_assert(!ar__mp_check(w.b, 0, AR__MP_DEPTH), "nothing is not an object");
    cr_assert(!ar__mp_check((const uint8_t *)"\x01\x02", 2, AR__MP_DEPTH), "two objects");
}

/* One field replaced at a time by something of the wrong type or out of range. */
Test(wire, wrong_types_rejected, .timeout = TH_TIMEOUT)
{
    static const char *const good[10] = {
        "\x01", "\x00", "\x07", "\xd8\x41\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\2", "\xc0",
        "\x05", "\x00", "\xc0", "\xc0", "\xc4\x00",
    };
    static const size_t good_len[10] = {1, 1, 1, 18, 1, 1, 1, 1, 1, 2};
    static const struct {
        int field;
        const char *what;
        const char *b;
        size_t n;
    } bad[] = {
        {0, "kind W_NONE", "\x00", 1},
        {0, "kind W_HELLO", "\x0e", 1},
        {0, "kind W_KIND_END", "\x12", 1},
        {0, "kind 127", "\x7f", 1},
        {0, "kind -1", "\xff", 1},
        {0, "kind nil", "\xc0", 1},
        {0, "kind str", "\xa1" "1", 2},
        {0, "kind true", "\xc3", 1},
        {0, "kind float", "\xca\x3f\x80\x00\x00", 5},
        {1, "flags 256", "\xcd\x01\x00", 3},
        {1, "flags -1", "\xd0\xff", 2},
        {1, "flags nil", "\xc0", 1},
        {2, "tag 2^32", "\xcf\x00\x00\x00\x01\x00\x00\x00\x00", 9},
        {2, "tag str", "\xa0", 1},
        {2, "tag -5", "\xfb", 1},
        {3, "from ext 0x42", "\xd8\x42\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\2", 18},
        {3, "from fixext 8", "\xd7\x41\0\0\0\0\0\0\0\1", 10},
        {3, "from ext8 of 15", "\xc7\x0f\x41\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 18},
        {3, "from ext8 of 17", "\xc7\x11\x41\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 20},
        {3, "from bin 16", "\xc4\x10\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\2", 18},
        {3, "from int", "\x00", 1},
        {4, "to str", "\xa2" "to", 3},
        {4, "to array", "\x92\x01\x02", 3},
        {5, "ref nil", "\xc0", 1},
        {5, "ref -1", "\xd3\xff\xff\xff\xff\xff\xff\xff\xff", 9},
        {5, "ref float", "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", 9},
        {6, "code AR_ERROR + 1", "\x08", 1},
        {6, "code 2^32", "\xcf\x00\x00\x00\x01\x00\x00\x00\x00", 9},
        {6, "code nil", "\xc0", 1},
        {7, "text int", "\x00", 1},
        {7, "text bin", "\xc4\x01" "a", 3},
        {7, "text false", "\xc2", 1},
        {8, "reply_pid str", "\xa0", 1},
        {8, "reply_pid map", "\x80", 1},
        {9, "payload nil", "\xc0", 1},
        {9, "payload str", "\xa1" "a", 2},
        {9, "payload int", "\x00", 1},
        {9, "payload ext", "\xd4\x01\x01", 3},
    };
    mp_t w;
    w.n = 0;
    mp_byte(&w, 0x9a);
    for (int f = 0; f < 10; f++) mp_raw(&w, good[f], good_len[f]);
    ar__wire_msg_t d;
    cr_assert_eq(ar__wire_decode(w.b, w.n, &d), 0, "the good row");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        w.n = 0;
        mp_byte(&w, 0x9a);
        for (int f = 0; f < 10; f++) {
            if (f == bad[i].field)
                mp_raw(&w, bad[i].b, bad[i].n);
            else
                mp_raw(&w, good[f], good_len[f]);
        }
        cr_assert(ar__mp_check(w.b, w.n, AR__MP_DEPTH), "%s: well-formed msgpack", bad[i].what);
        memset(&d, 0x5a, sizeof d);
        cr_assert_eq(ar__wire_decode(w.b, w.n, &d), AR_EBADMSG, "%s", bad[i].what);
        cr_assert_eq(d.kind, 0x5a, "%s: *m untouched on failure", bad[i].what);
    }
    /* other encodings of the right type are accepted: the decoder checks types and
     * ranges, not the encoder's choice of form */
    w.n = 0;
    MP(&w, "\x9a\xcc\x01\xd0\x00\xcd\x00\x07\xc0\xc0\xcf\0\0\0\0\0\0\0\5\x00\xd9\x01x\xc0");
    MP(&w, "\xc6\0\0\0\x01z");
    cr_assert_eq(ar__wire_decode(w.b, w.n, &d), 0);
    cr_assert_eq(d.kind, W_CAST);
    cr_assert_eq(d.tag, 7);
    cr_assert_eq(d.ref, 5);
    cr_assert_eq(d.text_len, 1);
    cr_assert_eq(d.len, 1);
}

Test(wire, wrong_shape_rejected, .timeout = TH_TIMEOUT)
{
    static const struct {
        const char *what;
        const char *b;
        size_t n;
    } rows[] = {
        {"9 fields", "\x99\x01\x00\x00\xc0\xc0\x00\x00\xc0\xc0", 10},
        {"11 fields", "\x9b\x01\x00\x00\xc0\xc0\x00\x00\xc0\xc0\xc4\x00\xc0", 13},
        {"array16 of 11", "\xdc\x00\x0b\x01\x00\x00\xc0\xc0\x00\x00\xc0\xc0\xc4\x00\xc0", 15},
        {"a map", "\x81\x01\x02", 3},
        {"a bin", "\xc4\x01\x00", 3},
        {"a handshake frame", "\x97\x0e\x01\xa1n\x01\xc0\xc0\xc0", 9},
        {"nil", "\xc0", 1},
        {"empty array", "\x90", 1},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        ar__wire_msg_t d;
        cr_assert_eq(ar__wire_decode(rows[i].b, rows[i].n, &d), AR_EBADMSG, "%s", rows[i].what);
    }
    ar__wire_msg_t d;
    cr_assert_eq(ar__wire_decode(NULL, 0, &d), AR_EBADMSG);
    ar__hs_msg_t hd;
    cr_assert_eq(ar__hs_decode(NULL, 0, &hd), AR_EBADMSG);
}

/* ---- Fragments --------------------------------------------------------------------- */
Test(wire, frag_head_and_slice, .timeout = TH_TIMEOUT)
{
    static uint8_t slice[AR__FRAG_SLICE];
    for (size_t i = 0; i < sizeof slice; i++) slice[i] = (uint8_t)(i * 7 + 3);
    static const size_t sizes[] = {0, 1, 255, 256, 65535, 65536, AR__FRAG_SLICE};
    static const uint64_t streams[] = {0, 1, 200, 70000, UINT64_MAX};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        for (size_t t = 0; t < sizeof streams / sizeof streams[0]; t++) {
            bool last = (s + t) & 1;
            uint8_t head[AR__FRAG_HEAD_MAX + 8];
            memset(head, 0xEE, sizeof head);
            size_t h = ar__wire_frag_head(head, streams[t], last, sizes[s]);
            cr_assert_leq(h, AR__FRAG_HEAD_MAX);
            cr_assert_eq(head[h], 0xEE);
            /* the same bytes as ar__wire_encode of the frame */
            ar__wire_msg_t m = {.kind = W_FRAG, .flags = last, .ref = streams[t],
                                .payload = slice, .len = sizes[s]};
            size_t n = enc(&m);
            cr_assert_eq(n, h + sizes[s]);
            cr_assert_arr_eq(frame_buf, head, h);
            cr_assert_leq(n, AR__WIRE_MAX);
            /* head + slice, as they would sit in a receive buffer */
            static uint8_t rx[AR__FRAG_HEAD_MAX + AR__FRAG_SLICE];
            memcpy(rx, head, h);
            memcpy(rx + h, slice, sizes[s]);
            ar__wire_msg_t d;
            cr_assert_eq(ar__wire_decode(rx + 4, h - 4 + sizes[s], &d), 0);
            cr_assert_eq(d.kind, W_FRAG);
            cr_assert_eq(d.flags, last ? 1 : 0);
            cr_assert_eq(d.ref, streams[t]);
            cr_assert_eq(d.len, sizes[s]);
            cr_assert_eq(d.payload, rx + h, "the payload is the slice, in place");
            if (sizes[s]) cr_assert_arr_eq(d.payload, slice, sizes[s]);
        }
    }
}

/* A message too big for one frame: its body (the frame after the prefix) sliced into
 * W_FRAG frames, each decoded alone, reassembled and decoded again. */
Test(wire, frag_reassembly, .timeout = TH_TIMEOUT)
{
    size_t big = 3 * AR__FRAG_SLICE + 1234;
    uint8_t *payload = malloc(big);
    cr_assert_not_null(payload);
    for (size_t i = 0; i < big; i++) payload[i] = (uint8_t)(i ^ (i >> 9));
    ar__wire_msg_t m = {.kind = W_CALL, .tag = 9, .from = PID_A, .to = PID_B,
                        .reply_pid = PID_A, .ref = 77, .payload = payload, .len = big};
    size_t n = ar__wire_size(&m);
    uint8_t *whole = malloc(n), *again = malloc(n), *rx = malloc(AR__WIRE_MAX);
    cr_assert(whole && again && rx);
    ar__wire_encode(&m, whole);
    size_t got = 0, frames = 0;
    for (size_t off = 4; off < n; off += AR__FRAG_SLICE, frames++) {
        size_t s = n - off < AR__FRAG_SLICE ? n - off : AR__FRAG_SLICE;
        size_t h = ar__wire_frag_head(rx, 42, off + s == n, s);
        memcpy(rx + h, whole + off, s);
        ar__wire_msg_t d;
        cr_assert_eq(ar__wire_decode(rx + 4, h - 4 + s, &d), 0);
        cr_assert_eq(d.kind, W_FRAG);
        cr_assert_eq(d.ref, 42);
        cr_assert_eq(d.flags & 1, off + s == n);
        memcpy(again + got, d.payload, d.len);
        got += d.len;
    }
    cr_assert_eq(frames, 4);
    cr_assert_eq(got, n - 4);
    ar__wire_msg_t d;
    cr_assert_eq(ar__wire_decode(again, got, &d), 0);
    msg_eq(&m, &d);
    free(payload);
    free(whole);
    free(again);
    free(rx);
}

/* ---- Handshake frames -------------------------------------------------------------- */
static ar__hs_msg_t hs_sample(uint8_t kind)
{
    ar__hs_msg_t m = {.kind = kind, .version = AR__WIRE_VERSION};
    if (kind == W_HELLO || kind == W_CHALLENGE) {
        m.name = "node_A@host-1";
        m.name_len = strlen(m.name);
        m.node_hi = 0x8000000500000001u;
        m.listen = kind == W_HELLO ? NULL : "[::1]:9100";
        m.listen_len = m.listen ? strlen(m.listen) : 0;
    }
    if (kind == W_CHALLENGE || kind == W_AUTH) {
        m.has_challenge = true;
        for (unsigned i = 0; i < AR__CHALLENGE_LEN; i++) m.challenge[i] = (uint8_t)(i + 1);
    }
    if (kind == W_AUTH || kind == W_WELCOME) {
        m.has_mac = true;
        for (unsigned i = 0; i < AR__MAC_LEN; i++) m.mac[i] = (uint8_t)(0xA0 + i);
    }
    return m;
}

Test(wire, hs_codec_round_trip, .timeout = TH_TIMEOUT)
{
    for (uint8_t k = W_HELLO; k <= W_WELCOME; k++) {
        ar__hs_msg_t m = hs_sample(k);
        uint8_t b[AR__HS_MAX + 8];
        size_t n = ar__hs_size(&m);
        cr_assert_leq(n, AR__HS_MAX);
        memset(b, 0xEE, sizeof b);
        ar__hs_encode(&m, b);
        cr_assert_eq(b[n], 0xEE);
        cr_assert_eq(((size_t)b[2] << 8 | b[3]), n - 4);
        ar__hs_msg_t d;
        cr_assert_eq(ar__hs_decode(b + 4, n - 4, &d), 0, "kind %u", k);
        cr_assert_eq(d.kind, k);
        cr_assert_eq(d.version, AR__WIRE_VERSION);
        cr_assert_eq(d.name_len, m.name_len);
        cr_assert_eq(d.name == NULL, m.name == NULL);
        if (m.name) cr_assert_arr_eq(d.name, m.name, m.name_len);
        cr_assert_eq(d.listen == NULL, m.listen == NULL);
        if (m.listen) cr_assert_arr_eq(d.listen, m.listen, m.listen_len);
        cr_assert_eq(d.node_hi, m.node_hi);
        cr_assert_eq(d.has_challenge, m.has_challenge);
        cr_assert_eq(d.has_mac, m.has_mac);
        if (m.has_challenge) cr_assert_arr_eq(d.challenge, m.challenge, AR__CHALLENGE_LEN);
        if (m.has_mac) cr_assert_arr_eq(d.mac, m.mac, AR__MAC_LEN);
    }
    /* the largest frame there is fits in AR__HS_MAX: every field at its longest, a mac
     * too (more than any one frame of the handshake carries) */
    static char longest[AR_NAME_MAX];
    memset(longest, 'n', sizeof longest);
    ar__hs_msg_t m = hs_sample(W_CHALLENGE);
    m.has_mac = true;
    m.name = longest;
    m.name_len = AR_NODE_NAME_MAX - 1;
    m.listen = longest;
    m.listen_len = AR_NAME_MAX - 1;
    m.version = UINT32_MAX;
    m.node_hi = UINT64_MAX;
    cr_assert_leq(ar__hs_size(&m), AR__HS_MAX);
    uint8_t b[AR__HS_MAX];
    ar__hs_encode(&m, b);
    ar__hs_msg_t d;
    cr_assert_eq(ar__hs_decode(b + 4, ar__hs_size(&m) - 4, &d), 0);
}

/* A HELLO with one field replaced. */
static size_t hs_build(uint8_t *out, int field, const char *b, size_t n)
{
    static const char *const good[7] = {"\x0e", "\x01", "\xa1n", "\x01", "\xc0",
                                        "\xc4\x10\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", "\xc0"};
    static const size_t good_len[7] = {1, 1, 2, 1, 1, 18, 1};
    size_t len = 0;
    out[len++] = 0x97;
    for (int f = 0; f < 7; f++) {
        const char *src = f == field ? b : good[f];
        size_t l = f == field ? n : good_len[f];
        memcpy(out + len, src, l);
        len += l;
    }
    return len;
}

Test(wire, hs_codec_rejects, .timeout = TH_TIMEOUT)
{
    static char s[300];
    memset(s, 'a', sizeof s);
    s[0] = (char)0xd9; /* str8 header: length set below */
    static const struct {
        int field;
        const char *what;
        const char *b;
        size_t n;
    } bad[] = {
        {0, "kind W_CAST", "\x01", 1},
        {0, "kind W_KIND_END", "\x12", 1},
        {0, "kind str", "\xa1" "h", 2},
        {1, "version nil", "\xc0", 1},
        {1, "version 2^32", "\xcf\0\0\0\1\0\0\0\0", 9},
        {1, "version -1", "\xff", 1},
        {2, "name empty", "\xa0", 1},
        {2, "name with a space", "\xa3" "a b", 4},
        {2, "name with a dot", "\xa3" "a.b", 4},
        {2, "name with a NUL", "\xa3" "a\0b", 4},
        {2, "name of 40 bytes",
         "\xd9\x28" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 42},
        {2, "name bin", "\xc4\x01n", 3},
        {3, "node_hi str", "\xa1" "1", 2},
        {3, "node_hi nil", "\xc0", 1},
        {4, "listen int", "\x01", 1},
        {4, "listen with a newline", "\xa3" "a\nb", 4},
        {4, "listen with a space", "\xa3" "a b", 4},
        {5, "challenge of 15", "\xc4\x0f\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 17},
        {5, "challenge of 17", "\xc4\x11\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 19},
        {5, "challenge str", "\xa2" "ab", 3},
        {6, "mac of 31", "\xc4\x1f" "0123456789012345678901234567890", 33},
        {6, "mac of 33", "\xc4\x21" "012345678901234567890123456789012", 35},
        {6, "mac int", "\x00", 1},
    };
    uint8_t b[1024];
    ar__hs_msg_t d;
    size_t n = hs_build(b, -1, NULL, 0);
    cr_assert_eq(ar__hs_decode(b, n, &d), 0, "the good row");
    cr_assert_eq(d.kind, W_HELLO);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = hs_build(b, bad[i].field, bad[i].b, bad[i].n);
        cr_assert(ar__mp_check(b, n, AR__MP_DEPTH), "%s: well-formed", bad[i].what);
        cr_assert_eq(ar__hs_decode(b, n, &d), AR_EBADMSG, "%s", bad[i].what);
    }
    /* a listen address of AR_NAME_MAX bytes */
    s[1] = (char)AR_NAME_MAX;
    n = hs_build(b, 4, s, 2 + AR_NAME_MAX);
    cr_assert_eq(ar__hs_decode(b, n, &d), AR_EBADMSG);
    s[1] = (char)(AR_NAME_MAX - 1);
    n = hs_build(b, 4, s, 2 + AR_NAME_MAX - 1);
    cr_assert_eq(ar__hs_decode(b, n, &d), 0);
    cr_assert_eq(d.listen_len, AR_NAME_MAX - 1);
    /* wrong lengths, an envelope, and a body longer than a handshake frame may be */
    cr_assert_eq(ar__hs_decode("\x96\x0e\x01\xa1n\x01\xc0\xc0", 8, &d), AR_EBADMSG);
    cr_assert_eq(ar__hs_decode("\x98\x0e\x01\xa1n\x01\xc0\xc0\xc0\xc0", 10, &d), AR_EBADMSG);
    cr_assert_eq(ar__hs_decode("\x9a\x01\x00\x00\xc0\xc0\x00\x00\xc0\xc0\xc4\x00", 12, &d),
                 AR_EBADMSG);
    mp_t w = {.n = 0};
    MP(&w, "\x97\x0e\x01\xa1n\x01\xc0\xc0");
    mp_bytes(&w, 0xc4, AR__HS_MAX, 0); /* a mac of 512 bytes */
    cr_assert_eq(ar__hs_decode(w.b, w.n, &d), AR_EBADMSG);
}

Test(wire, node_names, .timeout = TH_TIMEOUT)
{
    static const char *const ok[] = {"a", "node1", "app@host", "my-node_2", "Z", "0",
                                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" /* 39 */};
    static const char *const no[] = {"", "a b", "a.b", "a:b", "ä", "a/b", "a\tb",
                                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" /* 40 */};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        cr_assert(ar__node_name_valid(ok[i], strlen(ok[i])), "%s", ok[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        cr_assert(!ar__node_name_valid(no[i], strlen(no[i])), "%s", no[i]);
    cr_assert(!ar__node_name_valid("a\0b", 3));
    cr_assert(!ar__node_name_valid(NULL, 0));
    cr_assert(ar__node_name_valid("abc", 2), "only len bytes count");
}

/* ---- The handshake ----------------------------------------------------------------- */
#define COOKIE "cookie-that-must-never-be-sent"
#define OTHER_COOKIE "a-guessed-cookie-also-never-sent"
#define HI_A 0x8000000100000001u
#define HI_B 0x8000000300000001u

typedef struct frame {
    uint8_t b[AR__HS_MAX];
    size_t n;
} frame_t;

static bool out(ar__hs_t *h, frame_t *f)
{
    memset(f->b, 0, sizeof f->b);
    f->n = ar__hs_output(h, f->b, sizeof f->b);
    if (f->n) {
        cr_assert_geq(f->n, 5);
        cr_assert_eq(((size_t)f->b[2] << 8 | f->b[3]), f->n - 4);
        cr_assert_null(memmem(f->b, f->n, COOKIE, strlen(COOKIE)), "the cookie was sent");
        cr_assert_null(memmem(f->b, f->n, OTHER_COOKIE, strlen(OTHER_COOKIE)),
                       "the cookie was sent");
    }
    return f->n > 0;
}

static int in(ar__hs_t *h, const frame_t *f) { return ar__hs_feed(h, f->b + 4, f->n - 4); }

static ar__hs_msg_t decoded(const frame_t *f)
{
    ar__hs_msg_t m;
    cr_assert_eq(ar__hs_decode(f->b + 4, f->n - 4, &m), 0);
    return m;
}

static void pair(ar__hs_t *c, ar__hs_t *a, const char *cookie_c, const char *cookie_a)
{
    cr_assert_eq(ar__hs_init(c, HS_CONNECTOR, cookie_c, "alpha", HI_A, NULL), 0);
    cr_assert_eq(ar__hs_init(a, HS_ACCEPTOR, cookie_a, "beta@host", HI_B, "127.0.0.1:9100"),
                 0);
}

/* The four frames of a handshake between c and a, checking each step. */
typedef struct hs_run {
    frame_t hello, challenge, auth, welcome;
} hs_run_t;

static void run_ok(ar__hs_t *c, ar__hs_t *a, hs_run_t *r)
{
    cr_assert_eq(c->step, HS_SEND_HELLO);
    cr_assert_eq(a->step, HS_WAIT_HELLO);
    cr_assert(!out(a, &r->welcome), "the acceptor speaks second");
    cr_assert(out(c, &r->hello));
    cr_assert(!out(c, &r->challenge), "one HELLO only");
    cr_assert_eq(c->step, HS_WAIT_CHALLENGE);
    cr_assert_eq(in(a, &r->hello), 0);
    cr_assert_eq(a->step, HS_WAIT_AUTH);
    cr_assert(out(a, &r->challenge));
    cr_assert(!out(a, &r->auth));
    cr_assert_eq(in(c, &r->challenge), 0, "nothing to check yet: the connector proves first");
    cr_assert_eq(c->step, HS_WAIT_WELCOME);
    cr_assert(out(c, &r->auth));
    cr_assert(!out(c, &r->welcome));
    cr_assert_eq(in(a, &r->auth), 1, "the acceptor has authenticated the connector");
    cr_assert_eq(a->step, HS_DONE);
    cr_assert(out(a, &r->welcome));
    frame_t none;
    cr_assert(!out(a, &none));
    cr_assert_eq(c->step, HS_WAIT_WELCOME, "the connector is not done before WELCOME");
    cr_assert_eq(in(c, &r->welcome), 1, "the connector has authenticated the acceptor");
    cr_assert_eq(c->step, HS_DONE);
    cr_assert(!out(c, &none));
}

Test(wire, handshake_full, .timeout = TH_TIMEOUT)
{
    ar__hs_t c, a;
    hs_run_t r;
    pair(&c, &a, COOKIE, COOKIE);
    run_ok(&c, &a, &r);
    cr_assert_str_eq(c.peer_name, "beta@host");
    cr_assert_eq(c.peer_hi, HI_B);
    cr_assert_str_eq(c.peer_listen, "127.0.0.1:9100");
    cr_assert_str_eq(a.peer_name, "alpha");
    cr_assert_eq(a.peer_hi, HI_A);
    cr_assert_str_eq(a.peer_listen, "");
    cr_assert_arr_eq(c.theirs, a.mine, AR__CHALLENGE_LEN);
    cr_assert_arr_eq(a.theirs, c.mine, AR__CHALLENGE_LEN);
    cr_assert_arr_neq(c.mine, a.mine, AR__CHALLENGE_LEN);
    /* the frames carry what wire.h says, and nothing else */
    ar__hs_msg_t m = decoded(&r.hello);
    cr_assert(m.kind == W_HELLO && m.name && m.node_hi == HI_A && !m.listen);
    cr_assert(!m.has_challenge && !m.has_mac, "HELLO: no challenge, no mac");
    m = decoded(&r.challenge);
    cr_assert(m.kind == W_CHALLENGE && m.name && m.node_hi == HI_B && m.listen);
    cr_assert(m.has_challenge && !m.has_mac, "CHALLENGE: cB, no mac");
    cr_assert_arr_eq(m.challenge, a.mine, AR__CHALLENGE_LEN);
    m = decoded(&r.auth);
    cr_assert(m.kind == W_AUTH && !m.name && m.node_hi == 0 && !m.listen);
    cr_assert(m.has_challenge && m.has_mac, "AUTH: cA and mac_A");
    cr_assert_arr_eq(m.challenge, c.mine, AR__CHALLENGE_LEN);
    m = decoded(&r.welcome);
    cr_assert(m.kind == W_WELCOME && !m.name && m.node_hi == 0 && !m.listen);
    cr_assert(!m.has_challenge && m.has_mac, "WELCOME: only mac_B");
    /* a second handshake has fresh challenges, so fresh MACs */
    ar__hs_t c2, a2;
    hs_run_t r2;
    pair(&c2, &a2, COOKIE, COOKIE);
    run_ok(&c2, &a2, &r2);
    cr_assert_arr_neq(c2.mine, c.mine, AR__CHALLENGE_LEN);
    cr_assert_arr_neq(a2.mine, a.mine, AR__CHALLENGE_LEN);
    cr_assert_arr_neq(r2.auth.b, r.auth.b, r.auth.n);
    cr_assert_arr_neq(r2.welcome.b, r.welcome.b, r.welcome.n);
}

/* The MAC inputs of wire.h, computed independently with OpenSSL's HMAC. */
#include <openssl/evp.h>
#include <openssl/hmac.h>

static void ref_mac(char side, const char *sender, const char *receiver, const uint8_t *c_recv,
                    const uint8_t *c_send, uint8_t out_mac[32])
{
    uint8_t in_b[256];
    size_t n = 0;
    memcpy(in_b, "arbor-dist", 10);
    n = 10;
    uint32_t v = AR__WIRE_VERSION;
    in_b[n++] = (uint8_t)(v >> 24);
    in_b[n++] = (uint8_t)(v >> 16);
    in_b[n++] = (uint8_t)(v >> 8);
    in_b[n++] = (uint8_t)v;
    in_b[n++] = (uint8_t)side;
    in_b[n++] = (uint8_t)strlen(sender);
    memcpy(in_b + n, sender, strlen(sender));
    n += strlen(sender);
    in_b[n++] = (uint8_t)strlen(receiver);
    memcpy(in_b + n, receiver, strlen(receiver));
    n += strlen(receiver);
    memcpy(in_b + n, c_recv, 16);
    n += 16;
    memcpy(in_b + n, c_send, 16);
    n += 16;
    unsigned int l = 0;
    cr_assert_not_null(HMAC(EVP_sha256(), COOKIE, (int)strlen(COOKIE), in_b, n, out_mac, &l));
}

Test(wire, handshake_mac_inputs, .timeout = TH_TIMEOUT)
{
    ar__hs_t c, a;
    hs_run_t r;
    pair(&c, &a, COOKIE, COOKIE);
    run_ok(&c, &a, &r);
    uint8_t want[32];
    /* mac_A = HMAC(cookie, "arbor-dist" version 'A' name_A name_B cB cA), in AUTH */
    ref_mac('A', "alpha", "beta@host", a.mine, c.mine, want);
    ar__hs_msg_t m = decoded(&r.auth);
    cr_assert_arr_eq(m.mac, want, 32);
    /* mac_B = HMAC(cookie, "arbor-dist" version 'B' name_B name_A cA cB), in WELCOME */
    ref_mac('B', "beta@host", "alpha", c.mine, a.mine, want);
    m = decoded(&r.welcome);
    cr_assert_arr_eq(m.mac, want, 32);
}

/* Whoever can open a connection but does not know the cookie gets nothing to guess it
 * from offline: before a verified AUTH the acceptor's only output is a CHALLENGE without
 * a mac, and after a bad AUTH (or anything else) it sends nothing at all. */
Test(wire, handshake_acceptor_proves_nothing_to_a_stranger, .timeout = TH_TIMEOUT)
{
    ar__hs_t c, a;
    frame_t f, hello, challenge, auth;
    pair(&c, &a, OTHER_COOKIE, COOKIE);
    cr_assert(!out(&a, &f), "nothing before a HELLO");
    cr_assert(out(&c, &hello));
    cr_assert_eq(in(&a, &hello), 0, "the acceptor cannot tell yet");
    cr_assert(out(&a, &challenge));
    ar__hs_msg_t m = decoded(&challenge);
    cr_assert_eq(m.kind, W_CHALLENGE);
    cr_assert(!m.has_mac, "the CHALLENGE carries no mac");
    cr_assert(m.has_challenge);
    cr_assert_arr_eq(m.challenge, a.mine, AR__CHALLENGE_LEN, "cB as drawn, nothing derived");
    cr_assert(!out(&a, &f), "and it is all the acceptor says");
    cr_assert_eq(in(&c, &challenge), 0, "the connector cannot tell either: it proves first");
    cr_assert(out(&c, &auth));
    /* neither MAC the acceptor could compute with its cookie appears in what it sent */
    uint8_t mac_b[32], mac_a[32];
    ref_mac('B', "beta@host", "alpha", c.mine, a.mine, mac_b);
    ref_mac('A', "alpha", "beta@host", a.mine, c.mine, mac_a);
    cr_assert_null(memmem(challenge.b, challenge.n, mac_b, 32));
    cr_assert_null(memmem(challenge.b, challenge.n, mac_a, 32));
    cr_assert_eq(in(&a, &auth), AR_EAUTH, "the stranger's mac_A is refused");
    cr_assert_eq(a.step, HS_FAILED);
    cr_assert(!out(&a, &f), "no WELCOME, no mac_B");
    cr_assert_eq(in(&a, &auth), AR_EBADMSG, "failed for good");
    cr_assert(!out(&a, &f));

    /* nor does anything else a stranger sends after its HELLO draw a mac out of it */
    ar__hs_msg_t forged_auth = {.kind = W_AUTH, .version = AR__WIRE_VERSION,
                                .has_challenge = true, .has_mac = true};
    memset(forged_auth.mac, 0x5a, sizeof forged_auth.mac);
    ar__hs_msg_t welcome = {.kind = W_WELCOME, .version = AR__WIRE_VERSION, .has_mac = true};
    ar__hs_msg_t bare_auth = {.kind = W_AUTH, .version = AR__WIRE_VERSION,
                              .has_challenge = true};
    ar__hs_msg_t hello2 = decoded(&hello);
    const struct {
        const char *what;
        const ar__hs_msg_t *m;
        int rc;
    } rows[] = {
        {"a guessed mac_A", &forged_auth, AR_EAUTH},
        {"an AUTH without a mac", &bare_auth, AR_EBADMSG},
        {"a WELCOME", &welcome, AR_EBADMSG},
        {"a second HELLO", &hello2, AR_EBADMSG},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        th_row_begin(rows[i].what);
        ar__hs_t aa;
        cr_assert_eq(ar__hs_init(&aa, HS_ACCEPTOR, COOKIE, "beta@host", HI_B, NULL), 0);
        cr_assert_eq(in(&aa, &hello), 0);
        cr_assert(out(&aa, &f));
        cr_assert(!decoded(&f).has_mac, TH_AT "a mac in the CHALLENGE", TH_ROW);
        frame_t attack;
        attack.n = ar__hs_size(rows[i].m);
        ar__hs_encode(rows[i].m, attack.b);
        cr_assert_eq(in(&aa, &attack), rows[i].rc, TH_AT "fed the attack", TH_ROW);
        cr_assert(!out(&aa, &f), TH_AT "said something after", TH_ROW);
    }
}

Test(wire, handshake_wrong_cookie, .timeout = TH_TIMEOUT)
{
    /* a connector with another cookie: the acceptor refuses its AUTH (above in detail) */
    ar__hs_t c, a;
    frame_t f1, f2, f3;
    pair(&c, &a, COOKIE, OTHER_COOKIE);
    cr_assert(out(&c, &f1));
    cr_assert_eq(in(&a, &f1), 0);
    cr_assert(out(&a, &f2));
    cr_assert_eq(in(&c, &f2), 0);
    cr_assert(out(&c, &f3));
    cr_assert_eq(in(&a, &f3), AR_EAUTH);
    cr_assert_eq(a.step, HS_FAILED);
    cr_assert(!out(&a, &f1), "and sends no WELCOME");

    /* an acceptor without the cookie cannot finish either: the connector refuses a
     * WELCOME made with another cookie over the very same challenges */
    ar__hs_t c2, a2, forger;
    pair(&c2, &a2, COOKIE, COOKIE);
    cr_assert_eq(ar__hs_init(&forger, HS_ACCEPTOR, OTHER_COOKIE, "beta@host", HI_B,
                             "127.0.0.1:9100"), 0);
    cr_assert(out(&c2, &f1));
    cr_assert_eq(in(&a2, &f1), 0);
    cr_assert(out(&a2, &f2));
    cr_assert_eq(in(&c2, &f2), 0);
    cr_assert(out(&c2, &f3));
    cr_assert_eq(in(&a2, &f3), 1);
    frame_t genuine;
    cr_assert(out(&a2, &genuine)); /* the genuine WELCOME, kept back */
    /* the forger skips the check of mac_A and computes its WELCOME with its own cookie */
    memcpy(forger.mine, a2.mine, AR__CHALLENGE_LEN);
    memcpy(forger.theirs, c2.mine, AR__CHALLENGE_LEN);
    strcpy(forger.peer_name, "alpha");
    forger.step = HS_DONE;
    forger.owe = W_WELCOME;
    frame_t forged;
    cr_assert(out(&forger, &forged));
    cr_assert_eq(in(&c2, &forged), AR_EAUTH);
    cr_assert_eq(c2.step, HS_FAILED);
    cr_assert_eq(in(&c2, &genuine), AR_EBADMSG, "failed for good, even for the genuine one");
    cr_assert(!out(&c2, &f1));
}

/* Decodes f, lets edit change the message, re-encodes it into f. */
static void tamper(frame_t *f, void (*edit)(ar__hs_msg_t *))
{
    frame_t orig = *f;
    ar__hs_msg_t m = decoded(&orig);
    edit(&m);
    f->n = ar__hs_size(&m);
    cr_assert_leq(f->n, sizeof f->b);
    ar__hs_encode(&m, f->b);
}

static void ed_name(ar__hs_msg_t *m) { m->name = "gamma"; m->name_len = 5; }
static void ed_no_name(ar__hs_msg_t *m) { m->name = NULL; m->name_len = 0; }
static void ed_version(ar__hs_msg_t *m) { m->version = AR__WIRE_VERSION + 1; }
static void ed_challenge(ar__hs_msg_t *m) { m->challenge[3] ^= 1; }
static void ed_mac(ar__hs_msg_t *m) { m->mac[31] ^= 0x80; }
static void ed_mac_zero(ar__hs_msg_t *m) { memset(m->mac, 0, sizeof m->mac); }
static void ed_no_mac(ar__hs_msg_t *m) { m->has_mac = false; }
static void ed_add_mac(ar__hs_msg_t *m) { m->has_mac = true; }
static void ed_no_challenge(ar__hs_msg_t *m) { m->has_challenge = false; }
static void ed_add_challenge(ar__hs_msg_t *m) { m->has_challenge = true; }
static void ed_add_name(ar__hs_msg_t *m) { m->name = "alpha"; m->name_len = 5; }
static void ed_hi_zero(ar__hs_msg_t *m) { m->node_hi = 0; }
static void ed_hi_a(ar__hs_msg_t *m) { m->node_hi = HI_A; }
static void ed_kind_auth(ar__hs_msg_t *m) { m->kind = W_AUTH; }
static void ed_kind_welcome(ar__hs_msg_t *m) { m->kind = W_WELCOME; }

/* Which frame of a run is tampered with, how, and which feed of the run then fails (the
 * tampered frame's own, or for a change only a MAC reveals, a later one) with what. */
typedef struct tamper_row {
    const char *what;
    int frame;          /* 0 HELLO, 1 CHALLENGE, 2 AUTH, 3 WELCOME */
    void (*edit)(ar__hs_msg_t *);
    int fails_at;       /* the frame whose feed fails; the frames before it go through */
    int rc;             /* what that feed returns */
} tamper_row_t;

Test(wire, handshake_tampered, .timeout = TH_TIMEOUT)
{
    static const tamper_row_t rows[] = {
        {"HELLO name", 0, ed_name, 2, AR_EAUTH}, /* mac_A names the real connector */
        {"HELLO without a name", 0, ed_no_name, 0, AR_EBADMSG},
        {"HELLO version", 0, ed_version, 0, AR_EBADMSG},
        {"HELLO with a challenge", 0, ed_add_challenge, 0, AR_EBADMSG},
        {"HELLO with a mac", 0, ed_add_mac, 0, AR_EBADMSG},
        {"HELLO node_hi 0", 0, ed_hi_zero, 0, AR_EBADMSG},
        {"HELLO as AUTH", 0, ed_kind_auth, 0, AR_EBADMSG},
        {"CHALLENGE name", 1, ed_name, 2, AR_EAUTH}, /* the connector's mac_A names gamma */
        {"CHALLENGE challenge", 1, ed_challenge, 2, AR_EAUTH}, /* mac_A over another cB */
        {"CHALLENGE version", 1, ed_version, 1, AR_EBADMSG},
        {"CHALLENGE with a mac", 1, ed_add_mac, 1, AR_EBADMSG},
        {"CHALLENGE without a challenge", 1, ed_no_challenge, 1, AR_EBADMSG},
        {"CHALLENGE node_hi 0", 1, ed_hi_zero, 1, AR_EBADMSG},
        {"CHALLENGE with the connector's node", 1, ed_hi_a, 1, AR_EBADMSG},
        {"AUTH mac", 2, ed_mac, 2, AR_EAUTH},
        {"AUTH mac zero", 2, ed_mac_zero, 2, AR_EAUTH},
        {"AUTH challenge", 2, ed_challenge, 2, AR_EAUTH}, /* mac_A binds cA */
        {"AUTH version", 2, ed_version, 2, AR_EBADMSG},
        {"AUTH with a name", 2, ed_add_name, 2, AR_EBADMSG},
        {"AUTH with a node_hi", 2, ed_hi_a, 2, AR_EBADMSG},
        {"AUTH without a mac", 2, ed_no_mac, 2, AR_EBADMSG},
        {"AUTH without a challenge", 2, ed_no_challenge, 2, AR_EBADMSG},
        {"AUTH as WELCOME", 2, ed_kind_welcome, 2, AR_EBADMSG},
        {"WELCOME mac", 3, ed_mac, 3, AR_EAUTH},
        {"WELCOME mac zero", 3, ed_mac_zero, 3, AR_EAUTH},
        {"WELCOME version", 3, ed_version, 3, AR_EBADMSG},
        {"WELCOME without a mac", 3, ed_no_mac, 3, AR_EBADMSG},
        {"WELCOME with a challenge", 3, ed_add_challenge, 3, AR_EBADMSG},
        {"WELCOME with a name", 3, ed_add_name, 3, AR_EBADMSG},
        {"WELCOME as AUTH", 3, ed_kind_auth, 3, AR_EBADMSG},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const tamper_row_t *row = &rows[i];
        th_row_begin(row->what);
        ar__hs_t c, a;
        pair(&c, &a, COOKIE, COOKIE);
        for (int k = 0; k <= row->fails_at; k++) {
            ar__hs_t *from = k % 2 ? &a : &c, *to = k % 2 ? &c : &a;
            frame_t f;
            cr_assert(out(from, &f), TH_AT "frame %d not sent", TH_ROW, k);
            if (k == row->frame) tamper(&f, row->edit);
            int rc = in(to, &f);
            int want = k < row->fails_at ? (k >= 2 ? 1 : 0) : row->rc;
            cr_assert_eq(rc, want, TH_AT "frame %d: %s, not %s", TH_ROW, k, ar_err_name(rc),
                         ar_err_name(want));
            if (k == row->fails_at) {
                cr_assert_eq(to->step, HS_FAILED, TH_AT "not failed", TH_ROW);
                cr_assert(!out(to, &f), TH_AT "a failed side spoke", TH_ROW);
            }
        }
    }
}

/* Frames from an earlier handshake, repeated frames, reflected ones, and frames out of
 * turn. */
Test(wire, handshake_replay_and_out_of_order, .timeout = TH_TIMEOUT)
{
    ar__hs_t c, a;
    hs_run_t old;
    pair(&c, &a, COOKIE, COOKIE);
    run_ok(&c, &a, &old);

    /* replayed AUTH: a new acceptor, a new challenge, the old cA and MAC */
    ar__hs_t c2, a2;
    frame_t f;
    pair(&c2, &a2, COOKIE, COOKIE);
    cr_assert(out(&c2, &f));
    cr_assert_eq(in(&a2, &f), 0);
    cr_assert(out(&a2, &f));
    cr_assert_eq(in(&a2, &old.auth), AR_EAUTH);

    /* replayed CHALLENGE and WELCOME, an impostor of the acceptor: the CHALLENGE goes
     * through (it proves nothing), the WELCOME does not (the connector's cA is new) */
    pair(&c2, &a2, COOKIE, COOKIE);
    cr_assert(out(&c2, &f));
    cr_assert_eq(in(&c2, &old.challenge), 0);
    cr_assert(out(&c2, &f));
    cr_assert_eq(in(&c2, &old.welcome), AR_EAUTH);

    /* the connector's own AUTH reflected as a WELCOME: the side letter tells them apart */
    pair(&c2, &a2, COOKIE, COOKIE);
    cr_assert(out(&c2, &f));
    cr_assert_eq(in(&a2, &f), 0);
    cr_assert(out(&a2, &f));
    cr_assert_eq(in(&c2, &f), 0);
    cr_assert(out(&c2, &f));
    ar__hs_msg_t m = decoded(&f);
    m.kind = W_WELCOME;
    m.has_challenge = false;
    f.n = ar__hs_size(&m);
    ar__hs_encode(&m, f.b);
    cr_assert_eq(in(&c2, &f), AR_EAUTH);

    /* out of turn, each a fresh pair */
    static const struct {
        const char *what;
        bool to_acceptor;
        int frame; /* of `old`: 0 HELLO 1 CHALLENGE 2 AUTH 3 WELCOME */
        int after; /* honest frames exchanged first: 0 none, 1 HELLO, 2 + CHALLENGE,
                      3 + AUTH, 4 + WELCOME */
    } rows[] = {
        {"acceptor gets AUTH first", true, 2, 0},
        {"acceptor gets WELCOME first", true, 3, 0},
        {"acceptor gets CHALLENGE first", true, 1, 0},
        {"acceptor gets a second HELLO", true, 0, 1},
        {"acceptor gets HELLO for AUTH", true, 0, 2},
        {"acceptor gets WELCOME for AUTH", true, 3, 2},
        {"acceptor gets a frame after done", true, 2, 4},
        {"connector gets anything before its HELLO", false, 1, -1},
        {"connector gets HELLO for CHALLENGE", false, 0, 1},
        {"connector gets WELCOME for CHALLENGE", false, 3, 1},
        {"connector gets AUTH for CHALLENGE", false, 2, 1},
        {"connector gets AUTH for WELCOME", false, 2, 3},
        {"connector gets CHALLENGE again", false, 1, 3},
        {"connector gets a second WELCOME", false, 3, 4},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        th_row_begin(rows[i].what);
        ar__hs_t cc, aa;
        hs_run_t r;
        pair(&cc, &aa, COOKIE, COOKIE);
        if (rows[i].after >= 0) cr_assert(out(&cc, &r.hello));
        if (rows[i].after >= 1) {
            cr_assert_eq(in(&aa, &r.hello), 0);
            cr_assert(out(&aa, &r.challenge));
        }
        if (rows[i].after >= 2) {
            cr_assert_eq(in(&cc, &r.challenge), 0);
            cr_assert(out(&cc, &r.auth));
        }
        if (rows[i].after >= 3) {
            cr_assert_eq(in(&aa, &r.auth), 1);
            cr_assert(out(&aa, &r.welcome));
        }
        if (rows[i].after >= 4) cr_assert_eq(in(&cc, &r.welcome), 1);
        const frame_t *fr[] = {&old.hello, &old.challenge, &old.auth, &old.welcome};
        ar__hs_t *h = rows[i].to_acceptor ? &aa : &cc;
        cr_assert_eq(in(h, fr[rows[i].frame]), AR_EBADMSG, TH_AT "out of turn", TH_ROW);
        cr_assert_eq(h->step, HS_FAILED);
    }
}

/* A side owes a frame that was not taken: anything fed now is out of sequence (the peer
 * cannot have seen what it would answer). */
Test(wire, handshake_feed_while_owing, .timeout = TH_TIMEOUT)
{
    ar__hs_t c, a;
    frame_t f, g;
    pair(&c, &a, COOKIE, COOKIE);
    cr_assert(out(&c, &f));
    cr_assert_eq(in(&a, &f), 0); /* owes CHALLENGE */
    cr_assert_eq(in(&a, &f), AR_EBADMSG);
    cr_assert_eq(a.step, HS_FAILED);
    cr_assert(!out(&a, &f), "a failed handshake owes nothing");
    /* the connector owing AUTH */
    pair(&c, &a, COOKIE, COOKIE);
    cr_assert(out(&c, &f));
    cr_assert_eq(in(&a, &f), 0);
    cr_assert(out(&a, &g));
    cr_assert_eq(in(&c, &g), 0); /* owes AUTH */
    cr_assert_eq(in(&c, &g), AR_EBADMSG);
    cr_assert_eq(c.step, HS_FAILED);
    cr_assert(!out(&c, &f), "a failed handshake owes nothing");
}

Test(wire, handshake_own_name_and_node_rejected, .timeout = TH_TIMEOUT)
{
    /* a connector claiming the acceptor's name */
    ar__hs_t c, a;
    frame_t f;
    cr_assert_eq(ar__hs_init(&c, HS_CONNECTOR, COOKIE, "beta", HI_A, NULL), 0);
    cr_assert_eq(ar__hs_init(&a, HS_ACCEPTOR, COOKIE, "beta", HI_B, NULL), 0);
    cr_assert(out(&c, &f));
    cr_assert_eq(in(&a, &f), AR_EBADMSG);
    cr_assert(!out(&a, &f), "no CHALLENGE");
    /* ... or its node */
    cr_assert_eq(ar__hs_init(&c, HS_CONNECTOR, COOKIE, "alpha", HI_B, NULL), 0);
    cr_assert_eq(ar__hs_init(&a, HS_ACCEPTOR, COOKIE, "beta", HI_B, NULL), 0);
    cr_assert(out(&c, &f));
    cr_assert_eq(in(&a, &f), AR_EBADMSG);
    /* an acceptor answering with the connector's own name: a node that connected to
     * itself, or a reflection */
    cr_assert_eq(ar__hs_init(&c, HS_CONNECTOR, COOKIE, "alpha", HI_A, NULL), 0);
    cr_assert_eq(ar__hs_init(&a, HS_ACCEPTOR, COOKIE, "alpha", HI_B, NULL), 0);
    cr_assert(out(&c, &f));
    cr_assert_eq(in(&a, &f), AR_EBADMSG, "the acceptor sees its own name first");
    cr_assert_eq(ar__hs_init(&c, HS_CONNECTOR, COOKIE, "alpha", HI_A, NULL), 0);
    cr_assert_eq(ar__hs_init(&a, HS_ACCEPTOR, COOKIE, "beta", HI_B, NULL), 0);
    cr_assert(out(&c, &f));
    cr_assert_eq(in(&a, &f), 0);
    cr_assert(out(&a, &f));
    tamper(&f, ed_add_name); /* the CHALLENGE now says "alpha" */
    cr_assert_eq(in(&c, &f), AR_EBADMSG);
    cr_assert(!out(&c, &f), "no AUTH");
    /* the names differ only in length: not the same name */
    cr_assert_eq(ar__hs_init(&c, HS_CONNECTOR, COOKIE, "alph", HI_A, NULL), 0);
    cr_assert_eq(ar__hs_init(&a, HS_ACCEPTOR, COOKIE, "alpha", HI_B, NULL), 0);
    cr_assert(out(&c, &f));
    cr_assert_eq(in(&a, &f), 0);
}

Test(wire, handshake_garbage_fails_for_good, .timeout = TH_TIMEOUT)
{
    ar__hs_t c, a;
    hs_run_t r;
    frame_t f;
    pair(&c, &a, COOKIE, COOKIE);
    cr_assert_eq(ar__hs_feed(&a, "\xdd\xff\xff\xff\xff", 5), AR_EBADMSG);
    cr_assert_eq(a.step, HS_FAILED);
    cr_assert(out(&c, &r.hello));
    cr_assert_eq(in(&a, &r.hello), AR_EBADMSG, "a valid HELLO after garbage");
    cr_assert(!out(&a, &f));
    cr_assert_eq(ar__hs_feed(&c, NULL, 0), AR_EBADMSG);
    cr_assert_eq(c.step, HS_FAILED);
    cr_assert(!out(&c, &f));
}

Test(wire, handshake_init_invalid, .timeout = TH_TIMEOUT)
{
    ar__hs_t h;
    static char long_listen[AR_NAME_MAX + 1];
    memset(long_listen, '1', AR_NAME_MAX);
    cr_assert_eq(ar__hs_init(&h, HS_CONNECTOR, NULL, "a", 1, NULL), AR_EINVAL);
    cr_assert_eq(ar__hs_init(&h, HS_CONNECTOR, "", "a", 1, NULL), AR_EINVAL);
    cr_assert_eq(ar__hs_init(&h, HS_CONNECTOR, "c", NULL, 1, NULL), AR_EINVAL);
    cr_assert_eq(ar__hs_init(&h, HS_CONNECTOR, "c", "a b", 1, NULL), AR_EINVAL);
    cr_assert_eq(ar__hs_init(&h, HS_CONNECTOR, "c", "a", 0, NULL), AR_EINVAL);
    cr_assert_eq(ar__hs_init(&h, HS_ACCEPTOR, "c", "a", 1, long_listen), AR_EINVAL);
    cr_assert_eq(h.step, HS_FAILED);
    frame_t f;
    cr_assert_eq(ar__hs_output(&h, f.b, sizeof f.b), 0);
    long_listen[AR_NAME_MAX - 1] = '\0';
    cr_assert_eq(ar__hs_init(&h, HS_ACCEPTOR, "c", "a", 1, long_listen), 0);
    cr_assert_eq(h.step, HS_WAIT_HELLO);
}
