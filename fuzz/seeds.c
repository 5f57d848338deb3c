/* Writes the fuzz targets' seed corpora: seeds DIR fills DIR/wire and DIR/handshake.
 *
 * wire: frame bodies of every kind, msgpack of every type, and byte streams as a
 * connection carries them (prefixed frames, a message in W_FRAG slices among others).
 * handshake: scripts for fuzz_handshake.c (see there): honest handshakes under each
 * setup, and ones that replay, flip and cut frames along the way.
 */
#include "../runtime/dist/wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *dir;
static unsigned count;

static void put(const char *target, const void *b, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/seed-%03u", dir, target, count++);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static uint8_t frame[1 << 16];

static size_t enc(const ar__wire_msg_t *m)
{
    size_t n = ar__wire_size(m);
    if (n > sizeof frame) exit(1);
    ar__wire_encode(m, frame);
    return n;
}

static void wire_seeds(void)
{
    static const ar_pid_t a = {0x8000000100000001u, 0x0000000200000005u};
    static const ar_pid_t b = {0x8000000300000001u, 0x0000000100000009u};
    static uint8_t payload[600];
    for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)i;
    for (uint8_t k = W_CAST; k <= W_PEER; k++) {
        ar__wire_msg_t m = {.kind = k, .flags = k == W_EXIT, .tag = 1000u * k, .from = a,
                            .to = b, .reply_pid = k == W_CALL ? a : AR_PID_NONE,
                            .ref = k == W_FRAG ? 3 : 0x123456789u, .code = k % 8,
                            .text = k == W_EXIT || k == W_PEER ? "node_b" : NULL,
                            .text_len = 6, .payload = payload, .len = k * 7u};
        if (!m.text) m.text_len = 0;
        size_t n = enc(&m);
        put("wire", frame + AR__FRAME_PREFIX, n - AR__FRAME_PREFIX);
    }
    /* a stream: a tick, a cast, then a call in W_FRAG slices of 64 with a tick between */
    static uint8_t stream[1 << 15];
    size_t s = 0;
    ar__wire_msg_t tick = {.kind = W_TICK};
    size_t n = enc(&tick);
    memcpy(stream, frame, n);
    s += n;
    ar__wire_msg_t cast = {.kind = W_CAST, .to = b, .payload = "hello", .len = 5};
    n = enc(&cast);
    memcpy(stream + s, frame, n);
    s += n;
    ar__wire_msg_t call = {.kind = W_CALL, .from = a, .to = b, .reply_pid = a, .ref = 7,
                           .payload = payload, .len = 300};
    static uint8_t whole[1024];
    size_t wn = ar__wire_size(&call);
    ar__wire_encode(&call, whole);
    for (size_t off = AR__FRAME_PREFIX; off < wn; off += 64) {
        size_t sl = wn - off < 64 ? wn - off : 64;
        size_t h = ar__wire_frag_head(stream + s, 9, off + sl == wn, sl);
        memcpy(stream + s + h, whole + off, sl);
        s += h + sl;
        if (off == AR__FRAME_PREFIX) {
            n = enc(&tick);
            memcpy(stream + s, frame, n);
            s += n;
        }
    }
    put("wire", stream, s);
    put("wire", stream, 2 * AR__FRAME_PREFIX + 12 + 10); /* cut inside the second frame */
    /* msgpack of every type, and a handshake frame (not an envelope) */
    static const uint8_t types[] = {
        0x9f, 0xc0, 0xc2, 0xc3, 0x05, 0xe0, 0xcc, 1, 0xcd, 1, 2, 0xce, 1, 2, 3, 4, 0xcf, 0,
        0, 0, 0, 0, 0, 0, 1, 0xd0, 0xff, 0xca, 0, 0, 0, 0, 0xa1, 'x', 0xd9, 1, 'y', 0xc4, 1,
        0, 0xd4, 1, 2, 0xc7, 1, 3, 4, 0x81, 1, 2, 0x91, 0x90, 0xdc, 0, 1, 0xc0,
    };
    put("wire", types, sizeof types);
    ar__hs_msg_t hs = {.kind = W_HELLO, .version = AR__WIRE_VERSION, .name = "n1",
                       .name_len = 2, .node_hi = 1, .has_challenge = true};
    uint8_t hb[AR__HS_MAX];
    ar__hs_encode(&hs, hb);
    put("wire", hb + AR__FRAME_PREFIX, ar__hs_size(&hs) - AR__FRAME_PREFIX);
    static const uint8_t huge[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    put("wire", huge, sizeof huge);
}

static void handshake_seeds(void)
{
    /* op: bit 7 picks the receiver (0 acceptor, 1 connector); see fuzz_handshake.c */
    static const uint8_t honest[] = {0x00, 0x00, 0x80, 0x00, 0x80};
    for (uint8_t setup = 0; setup < 8; setup++) {
        uint8_t b[sizeof honest];
        memcpy(b, honest, sizeof b);
        b[0] = setup;
        put("handshake", b, sizeof b);
    }
    static const struct {
        uint8_t b[16];
        size_t n;
    } scripts[] = {
        {{0x00, 0x00, 0x80, 0x00, 0x80, 0x05, 2, 0, 0}, 9}, /* done, then an old AUTH again */
        {{0x00, 0x00, 0x80, 0x05, 0, 0, 0}, 7},             /* a HELLO where AUTH belongs */
        {{0x00, 0x00, 0x88, 10, 1}, 5},                     /* CHALLENGE with a byte flipped */
        {{0x00, 0x08, 40, 0x80}, 4},                        /* HELLO with a byte flipped */
        {{0x00, 0x00, 0x80, 0x08, 30, 1}, 6},               /* AUTH with a byte flipped */
        {{0x00, 0x00, 0x80, 0x00, 0x88, 20, 1}, 7},         /* WELCOME with a byte flipped */
        {{0x00, 0x00, 0x80, 0x05, 1, 0, 0}, 7},             /* CHALLENGE where AUTH belongs */
        {{0x00, 0x00, 0x07, 0, 20}, 5},                     /* HELLO cut short, again */
        {{0x00, 0x84, 5, 0x97, 0x0e, 1, 0xa0, 0}, 8},       /* garbage to the connector */
        {{0x00, 0x04, 5, 0xdd, 0xff, 0xff, 0xff, 0xff}, 8}, /* a huge header */
        {{0x00, 0x00, 0x00, 0x80, 0x00}, 5},                /* out of turn */
    };
    for (size_t i = 0; i < sizeof scripts / sizeof scripts[0]; i++)
        put("handshake", scripts[i].b, scripts[i].n);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seeds DIR\n");
        return 2;
    }
    dir = argv[1];
    char path[4096];
    const char *sub[] = {"", "/wire", "/handshake"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s%s", dir, sub[i]);
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            perror(path);
            return 1;
        }
    }
    wire_seeds();
    handshake_seeds();
    return 0;
}
