/* libFuzzer target: both roles of the handshake state machine fed arbitrary frames.
 *
 * A connector and an acceptor are set up honestly; the input is a script that delivers
 * their own frames to each other (so whole valid handshakes and every valid prefix are
 * reachable), feeds either side arbitrary bodies, and replays, bit-flips or truncates
 * frames seen so far. Byte 0 picks the setup: bit 0 gives the acceptor another cookie,
 * bit 1 the same name to both, bit 2 the same node_hi. The challenges are fixed rather
 * than random, so every input replays exactly (and frames from other runs, which the
 * corpus keeps, are replays an attacker could make).
 *
 * Properties checked after every step (any violation aborts):
 *   - feed returns 0, 1, AR_EAUTH or AR_EBADMSG; an error leaves HS_FAILED for good (every
 *     later feed fails, output produces nothing); 1 means HS_DONE;
 *   - every output is a well-formed handshake frame of at most AR__HS_MAX bytes, and
 *     never contains the cookie;
 *   - each frame carries what wire.h says and nothing else: the connector sends HELLO (no
 *     challenge, no mac) then AUTH (its challenge and mac_A, no introduction), the
 *     acceptor CHALLENGE (its challenge, no mac) then WELCOME (only mac_B);
 *   - the connector proves first: the acceptor sends a MAC (its WELCOME) only once it has
 *     checked the connector's, so before that its only output is a CHALLENGE without one;
 *   - authentication: with different cookies neither side ever gets past the MAC check
 *     (nor does a MAC reflected from its own side); with the same cookie, a side that did
 *     has the other's name and challenge as its peer's (what the MACs bind), and never
 *     accepted its own name or node_hi. The connector has checked the acceptor's MAC only
 *     when it is done, after WELCOME;
 *   - the frame that ends a side's handshake (feed returns 1) carries exactly the MAC of
 *     wire.h, computed here independently under that side's cookie: a tampered MAC (in
 *     AUTH or in WELCOME) never gets through.
 */
#include "../runtime/dist/wire.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COOKIE "fuzz-cookie-0123456789"
#define OTHER_COOKIE "fuzz-cookie-9876543210"
#define HISTORY 16

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_handshake: %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

typedef struct frame {
    uint8_t b[AR__HS_MAX];
    size_t n; /* 0: none */
} frame_t;

typedef struct side {
    ar__hs_t h;
    frame_t pending; /* its last output, not yet delivered */
    bool failed;
} side_t;

static frame_t history[HISTORY];
static size_t history_n;

static void remember(const uint8_t *body, size_t len)
{
    if (len > AR__HS_MAX) len = AR__HS_MAX;
    frame_t *f = &history[history_n++ % HISTORY];
    memcpy(f->b, body, len);
    f->n = len;
}

/* Has h checked its peer's MAC successfully? Each side checks one, in the frame that
 * ends its handshake: the acceptor in AUTH, the connector in WELCOME. */
static bool authenticated(const ar__hs_t *h) { return h->step == HS_DONE; }

static void take_output(side_t *s)
{
    frame_t f;
    f.n = ar__hs_output(&s->h, f.b, sizeof f.b);
    if (s->failed) CHECK(f.n == 0);
    if (f.n == 0) return;
    CHECK(f.n > AR__FRAME_PREFIX && f.n <= AR__HS_MAX);
    CHECK(((size_t)f.b[0] << 24 | (size_t)f.b[1] << 16 | (size_t)f.b[2] << 8 | f.b[3]) ==
          f.n - AR__FRAME_PREFIX);
    CHECK(!memmem(f.b, f.n, COOKIE, strlen(COOKIE)));
    CHECK(!memmem(f.b, f.n, OTHER_COOKIE, strlen(OTHER_COOKIE)));
    ar__hs_msg_t m;
    CHECK(ar__hs_decode(f.b + AR__FRAME_PREFIX, f.n - AR__FRAME_PREFIX, &m) == 0);
    CHECK(m.version == AR__WIRE_VERSION);
    bool intro = m.name && m.node_hi != 0;
    bool bare = !m.name && m.node_hi == 0 && !m.listen;
    if (s->h.role == HS_CONNECTOR) {
        CHECK(m.kind == W_HELLO || m.kind == W_AUTH);
        if (m.kind == W_HELLO) CHECK(intro && !m.has_challenge && !m.has_mac);
        if (m.kind == W_AUTH) CHECK(bare && m.has_challenge && m.has_mac);
        if (m.kind == W_AUTH) CHECK(s->h.step == HS_WAIT_WELCOME);
    } else {
        CHECK(m.kind == W_CHALLENGE || m.kind == W_WELCOME);
        if (m.kind == W_CHALLENGE) CHECK(intro && m.has_challenge && !m.has_mac);
        if (m.kind == W_WELCOME) CHECK(bare && !m.has_challenge && m.has_mac);
        /* a MAC from the acceptor only after it checked the connector's */
        if (m.has_mac) CHECK(authenticated(&s->h));
    }
    if (m.has_challenge) CHECK(memcmp(m.challenge, s->h.mine, AR__CHALLENGE_LEN) == 0);
    CHECK(ar__hs_output(&s->h, f.b, sizeof f.b) == 0 || !"a second output"); /* owed once */
    s->pending = f;
}

/* The MAC h's peer owes it (wire.h): HMAC-SHA256(h's cookie, "arbor-dist" version side
 * sender receiver c_receiver c_sender), the sender being the peer. */
static void want_mac(const ar__hs_t *h, const ar__hs_t *peer, uint8_t out[AR__MAC_LEN])
{
    uint8_t in[128];
    size_t n = 0;
    memcpy(in, "arbor-dist", 10);
    n += 10;
    for (int shift = 24; shift >= 0; shift -= 8)
        in[n++] = (uint8_t)(AR__WIRE_VERSION >> shift);
    in[n++] = peer->role == HS_ACCEPTOR ? 'B' : 'A';
    in[n++] = (uint8_t)strlen(peer->name);
    memcpy(in + n, peer->name, strlen(peer->name));
    n += strlen(peer->name);
    in[n++] = (uint8_t)strlen(h->name);
    memcpy(in + n, h->name, strlen(h->name));
    n += strlen(h->name);
    memcpy(in + n, h->mine, AR__CHALLENGE_LEN);
    n += AR__CHALLENGE_LEN;
    memcpy(in + n, peer->mine, AR__CHALLENGE_LEN);
    n += AR__CHALLENGE_LEN;
    unsigned int l = 0;
    CHECK(HMAC(EVP_sha256(), h->cookie, (int)strlen(h->cookie), in, n, out, &l) && l == 32);
}

static void feed(side_t *s, const side_t *other, const uint8_t *body, size_t len,
                 bool same_cookie)
{
    bool was_failed = s->h.step == HS_FAILED;
    int rc = ar__hs_feed(&s->h, body, len);
    remember(body, len);
    CHECK(rc == 0 || rc == 1 || rc == AR_EAUTH || rc == AR_EBADMSG);
    if (was_failed) CHECK(rc == AR_EBADMSG);
    if (rc < 0) {
        CHECK(s->h.step == HS_FAILED);
        s->failed = true;
    }
    if (rc == 1) {
        CHECK(s->h.step == HS_DONE);
        ar__hs_msg_t m;
        uint8_t want[AR__MAC_LEN];
        CHECK(ar__hs_decode(body, len, &m) == 0 && m.has_mac);
        CHECK(m.kind == (s->h.role == HS_ACCEPTOR ? W_AUTH : W_WELCOME));
        want_mac(&s->h, &other->h, want);
        CHECK(memcmp(m.mac, want, AR__MAC_LEN) == 0);
    }
    if (authenticated(&s->h)) {
        const ar__hs_t *h = &s->h, *o = &other->h;
        CHECK(same_cookie);
        CHECK(strcmp(h->peer_name, o->name) == 0);
        CHECK(memcmp(h->theirs, o->mine, AR__CHALLENGE_LEN) == 0);
        CHECK(strcmp(h->peer_name, h->name) != 0);
        CHECK(h->peer_hi != h->node_hi && h->peer_hi != 0);
        CHECK(ar__node_name_valid(h->peer_name, strlen(h->peer_name)));
    }
    take_output(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    uint8_t setup = data[0];
    size_t pos = 1;
    bool same_cookie = !(setup & 1);
    side_t c, a;
    memset(&c, 0, sizeof c);
    memset(&a, 0, sizeof a);
    history_n = 0;
    memset(history, 0, sizeof history);
    CHECK(ar__hs_init(&c.h, HS_CONNECTOR, COOKIE, "connector@host", 0x8000000100000001u,
                      NULL) == 0);
    CHECK(ar__hs_init(&a.h, HS_ACCEPTOR, same_cookie ? COOKIE : OTHER_COOKIE,
                      setup & 2 ? "connector@host" : "acceptor",
                      setup & 4 ? 0x8000000100000001u : 0x8000000300000001u,
                      "127.0.0.1:4369") == 0);
    memset(c.h.mine, 0x11, AR__CHALLENGE_LEN);
    memset(a.h.mine, 0x22, AR__CHALLENGE_LEN);
    take_output(&c);
    CHECK(c.pending.n > 0);
#define NEXT() (pos < size ? data[pos++] : 0)
    while (pos < size) {
        uint8_t op = NEXT();
        side_t *to = op & 0x80 ? &c : &a, *from = to == &c ? &a : &c;
        switch (op & 0x7f) {
        case 0: case 1: case 2: case 3: /* deliver the other side's frame as it is */
            if (from->pending.n) {
                frame_t f = from->pending;
                from->pending.n = 0;
                feed(to, from, f.b + AR__FRAME_PREFIX, f.n - AR__FRAME_PREFIX, same_cookie);
            }
            break;
        case 4: { /* arbitrary bytes */
            size_t n = NEXT();
            if (n > size - pos) n = size - pos;
            feed(to, from, data + pos, n, same_cookie);
            pos += n;
            break;
        }
        case 5: case 6: { /* a frame seen before, with one byte changed */
            if (!history_n) break;
            frame_t f = history[NEXT() % (history_n < HISTORY ? history_n : HISTORY)];
            uint8_t at = NEXT(), x = NEXT();
            if (f.n) f.b[at % f.n] ^= x;
            feed(to, from, f.b, f.n, same_cookie);
            break;
        }
        case 7: { /* a frame seen before, cut short */
            if (!history_n) break;
            frame_t f = history[NEXT() % (history_n < HISTORY ? history_n : HISTORY)];
            size_t cut = NEXT();
            feed(to, from, f.b, f.n ? cut % f.n : 0, same_cookie);
            break;
        }
        default: { /* the other side's frame, with one byte changed */
            if (!from->pending.n) break;
            frame_t f = from->pending;
            from->pending.n = 0;
            size_t body = f.n - AR__FRAME_PREFIX;
            uint8_t at = NEXT(), x = NEXT();
            f.b[AR__FRAME_PREFIX + at % body] ^= x;
            feed(to, from, f.b + AR__FRAME_PREFIX, body, same_cookie);
            break;
        }
        }
    }
#undef NEXT
    return 0;
}
