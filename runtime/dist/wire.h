/* The distribution wire format: frames, their envelopes, and the handshake.
 *
 * Pure functions over byte buffers: no sockets, no node, no allocation on the decode
 * path but msgpack-c's zone (one per thread, made once and cleared after each frame).
 * conn.c drives them on the I/O thread; fuzz/ drives them directly.
 *
 * A frame is a 4-byte big-endian length L, then L bytes: one msgpack array.
 *
 *   envelope  [kind, flags, tag, from, to, ref, code, text, reply_pid, payload]
 *             kind: enum ar__wire_kind (W_CAST .. W_PEER); from, to, reply_pid: pids
 *             (msgpack ext AR__PID_EXT, 16 bytes: hi then lo, big-endian) or nil;
 *             text: str or nil; payload: bin, last (so a W_FRAG's head + slice is a frame).
 *   handshake [kind, version, name, node_hi, listen, challenge, mac]
 *             kind: W_HELLO .. W_WELCOME; listen: str or nil; challenge: bin 16 or nil;
 *             mac: bin 32 or nil.
 *
 * Every input is bounded before msgpack-c sees it (DEPENDENCIES.md: its unpacker trusts
 * lengths): the frame length against the caller's cap, then ar__mp_check walks the bytes
 * (every length fits in what is left, depth at most AR__MP_DEPTH, exactly one object),
 * and only then msgpack_unpack_next, whose result is checked field by field.
 */
#ifndef ARBOR_DIST_WIRE_H
#define ARBOR_DIST_WIRE_H

#include "arbor.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AR__WIRE_VERSION 1u
#define AR__PID_EXT 0x41           /* msgpack ext type of a pid */
#define AR__FRAME_PREFIX 4         /* the length before each frame */
#define AR__MP_DEPTH 8             /* nesting our frames never exceed */
/* Message bodies over AR__FRAG_SLICE travel as W_FRAG frames of at most that many
 * bytes, interleaved with other traffic: no frame on the wire is longer than
 * AR__WIRE_MAX, whatever max_message_bytes says. */
#define AR__FRAG_SLICE (128u * 1024u)
#define AR__WIRE_OVERHEAD 256u     /* an envelope's bytes beyond its payload and text */
#define AR__WIRE_MAX (AR__FRAG_SLICE + AR__WIRE_OVERHEAD)
#define AR__HS_MAX 512u            /* a handshake frame, at most */
#define AR__CHALLENGE_LEN 16u
#define AR__MAC_LEN 32u
/* A W_REPLY's flag: the call found the target's bounded mailbox full (AR_EAGAIN). */
#define W_FLAG_REFUSED 0x10u

enum ar__wire_kind {
    W_NONE,
    /* envelopes */
    W_CAST, W_CALL, W_REPLY,       /* messages (msg.kind); a failed W_REPLY's flags may
                                      hold W_FLAG_REFUSED */
    W_LINK, W_UNLINK, W_EXIT,      /* flags: ENVF_LINK on an EXIT through a link */
    W_MONITOR, W_DEMONITOR, W_DOWN,
    W_CALL_DONE,
    W_TICK,                        /* nothing else was written for a tick */
    W_FRAG,                        /* ref: stream id; flags & 1: the last; payload: a slice
                                      of a message body (the frame after its prefix) */
    W_PEER,                        /* gossip: text = a peer's name, payload = its listen
                                      address, ref = its node_hi */
    /* the handshake */
    W_HELLO,                       /* connector: name, node_hi, listen */
    W_CHALLENGE,                   /* acceptor: name, node_hi, listen, challenge */
    W_AUTH,                        /* connector: challenge, mac */
    W_WELCOME,                     /* acceptor: mac */
    W_KIND_END
};

typedef struct ar__wire_msg {
    uint8_t kind;     /* W_CAST .. W_PEER */
    uint8_t flags;
    uint32_t tag;
    ar_pid_t from, to, reply_pid;
    uint64_t ref;
    uint32_t code;    /* ar_exit_code_t, checked <= AR_ERROR */
    const char *text; /* not NUL-terminated; NULL: none */
    size_t text_len;
    const void *payload;
    size_t len;
} ar__wire_msg_t;

/* The frame m encodes to, prefix included. */
size_t ar__wire_size(const ar__wire_msg_t *m);
/* Writes that frame into buf (ar__wire_size(m) bytes). */
void ar__wire_encode(const ar__wire_msg_t *m, void *buf);
/* Decodes one frame's body (the bytes after the prefix): 0, or AR_EBADMSG for anything
 * malformed, truncated, of an unknown kind, or with trailing bytes. Pointers in *m point
 * into body. */
int ar__wire_decode(const void *body, size_t len, ar__wire_msg_t *m);
/* The head of a W_FRAG frame carrying `slice` bytes (which follow it on the wire): the
 * prefix, the array, and the bin header. Returns its length (<= AR__FRAG_HEAD_MAX). */
#define AR__FRAG_HEAD_MAX 40u
size_t ar__wire_frag_head(void *buf, uint64_t stream, bool last, size_t slice);

/* Bounded structure check of msgpack bytes: exactly one object, every length within
 * len, nesting at most max_depth. */
bool ar__mp_check(const void *data, size_t len, unsigned max_depth);

/* ---- the handshake ---------------------------------------------------------------- */
typedef struct ar__hs_msg {
    uint8_t kind;     /* W_HELLO .. W_WELCOME */
    uint32_t version;
    const char *name; /* not NUL-terminated; 1 to AR_NODE_NAME_MAX - 1 bytes when given */
    size_t name_len;
    uint64_t node_hi;
    const char *listen; /* NULL: the sender does not listen */
    size_t listen_len;
    bool has_challenge, has_mac;
    uint8_t challenge[AR__CHALLENGE_LEN];
    uint8_t mac[AR__MAC_LEN];
} ar__hs_msg_t;
size_t ar__hs_size(const ar__hs_msg_t *m);
void ar__hs_encode(const ar__hs_msg_t *m, void *buf);
int ar__hs_decode(const void *body, size_t len, ar__hs_msg_t *m); /* AR_EBADMSG */

/* One side of a handshake, as a state machine fed one frame body at a time.
 *
 *   connector                         acceptor
 *   HELLO(name, hi, listen)      ->                                  (no challenge, no mac)
 *                                <-   CHALLENGE(name, hi, listen, cB)           (no mac)
 *   AUTH(cA, mac_A)              ->                         (no name, node_hi or listen)
 *                                <-   WELCOME(mac_B)                       (only the mac)
 *
 * mac_A = HMAC-SHA256(cookie, "arbor-dist" version 'A' name_A name_B cB cA) and
 * mac_B = HMAC-SHA256(cookie, "arbor-dist" version 'B' name_B name_A cA cB), names
 * length-prefixed: both names, the version and both challenges are bound into each MAC,
 * which is compared in constant time. The connector proves first: the acceptor checks
 * mac_A before it computes or sends anything derived from the cookie, so a connection
 * that cannot prove the cookie gets nothing but the CHALLENGE, never a MAC to guess the
 * cookie from offline. The connector checks mac_B in WELCOME before it is done. The
 * cookie never leaves handshake.c's buffers. */
enum ar__hs_role { HS_CONNECTOR, HS_ACCEPTOR };
enum ar__hs_step { HS_SEND_HELLO, HS_WAIT_HELLO, HS_WAIT_CHALLENGE, HS_WAIT_AUTH,
                   HS_WAIT_WELCOME, HS_DONE, HS_FAILED };
typedef struct ar__hs {
    enum ar__hs_role role;
    enum ar__hs_step step;
    const char *cookie;      /* the node's; not copied */
    char name[AR_NAME_MAX];  /* ours */
    uint64_t node_hi;        /* ours */
    char listen[AR_NAME_MAX]; /* ours ("" if none) */
    uint8_t mine[AR__CHALLENGE_LEN];
    /* the peer's, once heard */
    char peer_name[AR_NAME_MAX];
    uint64_t peer_hi;
    char peer_listen[AR_NAME_MAX];
    uint8_t theirs[AR__CHALLENGE_LEN];
    uint8_t owe;             /* the frame ar__hs_output sends next; W_NONE: none */
} ar__hs_t;
/* Starts a handshake: AR_ENOMEM if no random challenge could be had; AR_EINVAL for no
 * cookie, an invalid name, node_hi 0 or a bad listen address. */
int ar__hs_init(ar__hs_t *h, enum ar__hs_role role, const char *cookie, const char *name,
                uint64_t node_hi, const char *listen);
/* What to send next (a whole frame, prefix included, into out of cap >= AR__HS_MAX
 * bytes): its length, or 0 when nothing is to be sent. The connector's first frame
 * comes from calling this before feeding anything. */
size_t ar__hs_output(ar__hs_t *h, void *out, size_t cap);
/* Feeds the peer's next frame body. 0: go on (call ar__hs_output); 1: done (the peer
 * is authenticated: the acceptor after a good AUTH, then call ar__hs_output once more
 * for its WELCOME; the connector after a good WELCOME);
 * AR_EAUTH: wrong MAC; AR_EBADMSG: malformed, unexpected, wrong version, or the peer
 * claims our own name or node. After an error the handshake is HS_FAILED for good. */
int ar__hs_feed(ar__hs_t *h, const void *body, size_t len);

/* Node names: 1 to AR_NODE_NAME_MAX - 1 bytes of [A-Za-z0-9_@-]. */
bool ar__node_name_valid(const char *name, size_t len);

#endif
