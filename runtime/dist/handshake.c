/* The handshake state machine (wire.h): one side of a connection's authentication.
 *
 *   connector: SEND_HELLO -output HELLO-> WAIT_CHALLENGE -feed CHALLENGE-> WAIT_WELCOME
 *              (owes AUTH) -feed WELCOME, mac_B checked-> DONE (feed returns 1)
 *   acceptor:  WAIT_HELLO -feed HELLO-> WAIT_AUTH (owes CHALLENGE) -feed AUTH, mac_A
 *              checked-> DONE (feed returns 1, owes WELCOME)
 *
 * h->owe is the frame ar__hs_output produces next; a frame fed while one is owed is out
 * of sequence (the peer cannot have seen what it would answer). Any error sets HS_FAILED,
 * after which feed fails and output produces nothing.
 *
 * The connector proves first: HELLO and CHALLENGE carry no MAC, AUTH carries the
 * connector's challenge cA with mac_A over both challenges, and the acceptor computes
 * nothing from the cookie until mac_A has checked out; only then does WELCOME carry mac_B.
 * So whoever can merely open a connection never gets a MAC to guess the cookie from
 * offline: the acceptor's only output to an unproven connector is its CHALLENGE.
 *
 * The MACs: HMAC-SHA256 keyed with the cookie over
 *   "arbor-dist" | version (4 bytes, big-endian) | side ('B' acceptor, 'A' connector) |
 *   len | sender's name | len | receiver's name | receiver's challenge | sender's challenge
 * (each len one byte), which gives wire.h's mac_A (name_A name_B cB cA) and mac_B
 * (name_B name_A cA cB). The side letter keeps a MAC from being reflected back as the
 * other side's. MACs are compared with CRYPTO_memcmp; MACs computed here are wiped after
 * use. The cookie is only ever handed to HMAC(): it is never copied, formatted or
 * returned.
 *
 * Pure functions over the caller's ar__hs_t; no allocation of ours (OpenSSL's HMAC may
 * allocate inside). One thread at a time per ar__hs_t.
 */
#include "wire.h"

#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

#define MAC_LABEL "arbor-dist"
#define MAC_INPUT_MAX                                                                      \
    (sizeof MAC_LABEL - 1 + 4 + 1 + 2 * (1 + AR_NODE_NAME_MAX) + 2 * AR__CHALLENGE_LEN)

_Static_assert(AR__HS_MAX >= AR__FRAME_PREFIX + 1 + 1 + 5 + 2 + AR_NODE_NAME_MAX + 9 + 3 +
                                 AR_NAME_MAX + 2 + AR__CHALLENGE_LEN + 2 + AR__MAC_LEN,
               "every handshake frame fits in AR__HS_MAX");

/* HMAC-SHA256(cookie, label version side sender receiver c_receiver c_sender). */
static bool mac(const ar__hs_t *h, char side, const char *sender, size_t sender_len,
                const char *receiver, size_t receiver_len, const uint8_t *c_receiver,
                const uint8_t *c_sender, uint8_t out[AR__MAC_LEN])
{
    uint8_t in[MAC_INPUT_MAX];
    size_t n = 0;
    memcpy(in, MAC_LABEL, sizeof MAC_LABEL - 1);
    n += sizeof MAC_LABEL - 1;
    in[n++] = (uint8_t)(AR__WIRE_VERSION >> 24);
    in[n++] = (uint8_t)(AR__WIRE_VERSION >> 16);
    in[n++] = (uint8_t)(AR__WIRE_VERSION >> 8);
    in[n++] = (uint8_t)AR__WIRE_VERSION;
    in[n++] = (uint8_t)side;
    in[n++] = (uint8_t)sender_len;
    memcpy(in + n, sender, sender_len);
    n += sender_len;
    in[n++] = (uint8_t)receiver_len;
    memcpy(in + n, receiver, receiver_len);
    n += receiver_len;
    memcpy(in + n, c_receiver, AR__CHALLENGE_LEN);
    n += AR__CHALLENGE_LEN;
    memcpy(in + n, c_sender, AR__CHALLENGE_LEN);
    n += AR__CHALLENGE_LEN;
    size_t klen = strlen(h->cookie);
    unsigned int outlen = 0;
    bool ok = klen <= (size_t)INT_MAX &&
              HMAC(EVP_sha256(), h->cookie, (int)klen, in, n, out, &outlen) != NULL &&
              outlen == AR__MAC_LEN;
    if (!ok) OPENSSL_cleanse(out, AR__MAC_LEN);
    return ok;
}

static char side_of(enum ar__hs_role role) { return role == HS_ACCEPTOR ? 'B' : 'A'; }

/* Whether got is the MAC the peer (named peer, with challenge c_peer) had to send, compared
 * in constant time. An HMAC failure counts as a mismatch: the handshake fails closed. */
static bool peer_mac_ok(const ar__hs_t *h, const char *peer, size_t peer_len,
                        const uint8_t *c_peer, const uint8_t got[AR__MAC_LEN])
{
    uint8_t want[AR__MAC_LEN];
    char side = side_of(h->role == HS_ACCEPTOR ? HS_CONNECTOR : HS_ACCEPTOR);
    bool ok = mac(h, side, peer, peer_len, h->name, strlen(h->name), h->mine, c_peer, want) &&
              CRYPTO_memcmp(want, got, AR__MAC_LEN) == 0;
    OPENSSL_cleanse(want, sizeof want);
    return ok;
}

static bool listen_ok(const char *s)
{
    size_t n = strnlen(s, AR_NAME_MAX);
    if (n >= AR_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] > '~') return false;
    return true;
}

int ar__hs_init(ar__hs_t *h, enum ar__hs_role role, const char *cookie, const char *name,
                uint64_t node_hi, const char *listen)
{
    memset(h, 0, sizeof *h);
    h->step = HS_FAILED;
    if (!cookie || !*cookie || !name ||
        !ar__node_name_valid(name, strnlen(name, AR_NODE_NAME_MAX)) || node_hi == 0 ||
        (listen && !listen_ok(listen)) || (role != HS_CONNECTOR && role != HS_ACCEPTOR))
        return AR_EINVAL;
    if (RAND_bytes(h->mine, sizeof h->mine) != 1) return AR_ENOMEM;
    h->role = role;
    h->cookie = cookie;
    strcpy(h->name, name);
    h->node_hi = node_hi;
    strcpy(h->listen, listen ? listen : "");
    if (role == HS_CONNECTOR) {
        h->step = HS_SEND_HELLO;
        h->owe = W_HELLO;
    } else {
        h->step = HS_WAIT_HELLO;
        h->owe = W_NONE;
    }
    return 0;
}

size_t ar__hs_output(ar__hs_t *h, void *out, size_t cap)
{
    if (h->step == HS_FAILED || h->owe == W_NONE) return 0;
    ar__hs_msg_t m;
    memset(&m, 0, sizeof m);
    m.kind = h->owe;
    m.version = AR__WIRE_VERSION;
    if (h->owe == W_HELLO || h->owe == W_CHALLENGE) { /* who we are */
        m.name = h->name;
        m.name_len = strlen(h->name);
        m.node_hi = h->node_hi;
        m.listen = h->listen[0] ? h->listen : NULL;
        m.listen_len = strlen(h->listen);
    }
    if (h->owe == W_CHALLENGE || h->owe == W_AUTH) { /* cB, or the cA mac_A covers */
        m.has_challenge = true;
        memcpy(m.challenge, h->mine, AR__CHALLENGE_LEN);
    }
    /* AUTH: the connector's mac_A over the acceptor's challenge and its own; WELCOME: the
     * acceptor's mac_B, owed only once a feed has checked mac_A */
    if (h->owe == W_AUTH || h->owe == W_WELCOME) {
        m.has_mac = mac(h, side_of(h->role), h->name, strlen(h->name), h->peer_name,
                        strlen(h->peer_name), h->theirs, h->mine, m.mac);
        if (!m.has_mac) goto fail;
    }
    size_t n = ar__hs_size(&m);
    if (n > cap) goto fail;
    ar__hs_encode(&m, out);
    OPENSSL_cleanse(m.mac, sizeof m.mac);
    if (h->owe == W_HELLO) h->step = HS_WAIT_CHALLENGE;
    h->owe = W_NONE;
    return n;
fail:
    OPENSSL_cleanse(m.mac, sizeof m.mac);
    h->step = HS_FAILED;
    h->owe = W_NONE;
    return 0;
}

/* HELLO or CHALLENGE: a well-formed introduction from someone other than ourselves,
 * with a challenge (CHALLENGE) or without (HELLO), and never a mac. */
static int check_intro(const ar__hs_t *h, const ar__hs_msg_t *m, bool with_challenge)
{
    if (!m->name || m->node_hi == 0 || m->has_challenge != with_challenge || m->has_mac)
        return AR_EBADMSG;
    if ((m->name_len == strlen(h->name) && memcmp(m->name, h->name, m->name_len) == 0) ||
        m->node_hi == h->node_hi)
        return AR_EBADMSG;
    return 0;
}

static void remember_peer(ar__hs_t *h, const ar__hs_msg_t *m)
{
    memcpy(h->peer_name, m->name, m->name_len);
    h->peer_name[m->name_len] = '\0';
    h->peer_hi = m->node_hi;
    if (m->listen) memcpy(h->peer_listen, m->listen, m->listen_len);
    h->peer_listen[m->listen ? m->listen_len : 0] = '\0';
}

/* AUTH or WELCOME: no introduction; a mac, and (AUTH only) the connector's challenge. */
static bool bare(const ar__hs_msg_t *m, bool with_challenge)
{
    return !m->name && !m->listen && m->node_hi == 0 && m->has_challenge == with_challenge &&
           m->has_mac;
}

static int feed(ar__hs_t *h, const void *body, size_t len)
{
    if (h->owe != W_NONE) return AR_EBADMSG;
    ar__hs_msg_t m;
    if (ar__hs_decode(body, len, &m) != 0 || m.version != AR__WIRE_VERSION) return AR_EBADMSG;
    int rc;
    switch (h->step) {
    case HS_WAIT_HELLO:
        if (m.kind != W_HELLO) return AR_EBADMSG;
        if ((rc = check_intro(h, &m, false)) != 0) return rc;
        remember_peer(h, &m);
        h->owe = W_CHALLENGE;
        h->step = HS_WAIT_AUTH;
        return 0;
    case HS_WAIT_CHALLENGE: /* nothing to check yet: the acceptor proves in WELCOME */
        if (m.kind != W_CHALLENGE) return AR_EBADMSG;
        if ((rc = check_intro(h, &m, true)) != 0) return rc;
        remember_peer(h, &m);
        memcpy(h->theirs, m.challenge, AR__CHALLENGE_LEN);
        h->owe = W_AUTH;
        h->step = HS_WAIT_WELCOME;
        return 0;
    case HS_WAIT_AUTH: /* mac_A over our challenge and the one it brings */
        if (m.kind != W_AUTH || !bare(&m, true)) return AR_EBADMSG;
        if (!peer_mac_ok(h, h->peer_name, strlen(h->peer_name), m.challenge, m.mac))
            return AR_EAUTH;
        memcpy(h->theirs, m.challenge, AR__CHALLENGE_LEN);
        h->owe = W_WELCOME;
        h->step = HS_DONE;
        return 1;
    case HS_WAIT_WELCOME: /* mac_B over both challenges, as our AUTH sent them */
        if (m.kind != W_WELCOME || !bare(&m, false)) return AR_EBADMSG;
        if (!peer_mac_ok(h, h->peer_name, strlen(h->peer_name), h->theirs, m.mac))
            return AR_EAUTH;
        h->step = HS_DONE;
        return 1;
    default: /* SEND_HELLO owes a frame; DONE and FAILED take no more */
        return AR_EBADMSG;
    }
}

int ar__hs_feed(ar__hs_t *h, const void *body, size_t len)
{
    int rc = h->step == HS_FAILED ? AR_EBADMSG : feed(h, body, len);
    if (rc < 0) {
        h->step = HS_FAILED;
        h->owe = W_NONE;
    }
    return rc;
}
