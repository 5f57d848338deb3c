/* The distribution layer's shared pieces: peers, frames, connections.
 *
 * The core knows one thing of it: a pid whose node part is not this node's goes to
 * ar__dist_route (from the one routing point, route.c). Everything else happens here:
 *
 *   peers.c  the peer directory (node id -> peer, lock-free reads), the send side (an
 *            envelope becomes a frame on the peer's out queue, with back-pressure), the
 *            names this OS process knows for ar_pid_format
 *   links.c  the remote halves: what links, monitors and calls across a connection owe
 *            when the peer is lost, kept on the peer's entry (as ERTS keeps them on its
 *            dist entry), so that node loss fires them all at once
 *   conn.c   sockets, on the I/O thread only: listen, accept, connect, handshake, reads
 *            (bounded, validated, fragments reassembled), coalesced writes (large bodies
 *            in slices between other traffic), ticks, node loss
 *   dist.c   start and stop, ar_node_connect, ar_whereis_remote and the node's own
 *            pseudo-process that answers remote whereis requests
 *   wire.c, handshake.c   the wire format (wire.h)
 *
 * Threads: senders (schedulers, foreign threads) only push frames on a peer's lock-free
 * out queue and read its atomics; every socket, every list and the remote halves belong to
 * the I/O thread.
 */
#ifndef ARBOR_DIST_H
#define ARBOR_DIST_H

#include "../internal.h"
#include "wire.h"

#include <uv.h>

#define AR__MAX_PEERS 1024u          /* nodes one node knows of */
#define AR__PEER_SLOTS 2048u         /* the directory's open-addressed table */
#define AR__DEFAULT_TICK_MS 1000u
#define AR__DEFAULT_QUEUE_LIMIT (64u * 1024u * 1024u)
#define AR__SILENT_TICKS 4u          /* a peer silent this many ticks is down */
#define AR__WRITE_BATCH (256u * 1024u) /* bytes of small frames gathered into one write */
#define AR__WRITE_IOVS 256u
#define AR__MAX_STREAMS 16u          /* fragmented messages being received at once */
#define AR__MAX_HANDSHAKES 64u       /* connections still in their handshake */
#define AR__DIRECT_MAX (64u * 1024u) /* frames a sender may write itself */
#define AR__DIRECT_GAP_NS 20000u       /* ... if none went to the peer for this long */

/* A node's id is the low half of its pids' hi; the high half is its incarnation. */
static inline uint32_t ar__node_id(uint64_t hi) { return (uint32_t)hi; }
/* A node's own pseudo-process (lo 0, any incarnation): remote whereis requests go to it. */
static inline ar_pid_t ar__net_pid(uint32_t id) { return (ar_pid_t){id, 0}; }
static inline bool ar__is_net_pid(ar_pid_t p) { return p.lo == 0 && (p.hi >> 32) == 0 && p.hi; }
#define AR__TAG_WHEREIS 1u

/* What a frame does to the remote halves of its peer (links.c) once the I/O thread takes
 * it off the queue. */
enum ar__book { BOOK_NONE, BOOK_ADD, BOOK_DEL };
enum ar__rhalf_kind {
    RH_LINK = 1,  /* a local process linked with a remote one: owes it EXIT noconnection */
    RH_MONITOR,   /* a local process monitors a remote one: owes it DOWN noconnection */
    RH_WATCHED,   /* a remote process monitors a local one: owes the local one DEMONITOR */
    RH_CALL,      /* a local caller waits for a remote answer: owes it a failed reply */
};

typedef struct ar__frame {
    struct ar__qnode q;        /* first: the peer's out queue links frames through it */
    struct ar__frame *next;    /* I/O thread lists */
    uint32_t len;              /* bytes, prefix included */
    uint32_t sent;             /* of a fragmented one: body bytes gone; of a direct
                                  write's rest: bytes gone */
    uint64_t to_hi;            /* the target's node part: checked against the incarnation
                                  a handshake reveals */
    ar_pid_t from;             /* later frames of this sender wait behind a fragmented one */
    uint64_t stream;           /* of a fragmented one: its stream id */
    ar__env_t *answer;         /* BOOK_ADD: the remote half (the signal owed on loss) */
    uint64_t book_local, book_key;
    uint8_t book, book_kind;
    bool counted;              /* a CAST or CALL: counts against dist_queue_limit */
    uint8_t bytes[];
} ar__frame_t;

struct ar__conn;

/* The remote halves of one peer: an intrusive chained hash of envelopes (I/O thread). */
typedef struct ar__rhalves {
    ar__env_t **b;
    uint32_t mask, n;
} ar__rhalves_t;

typedef struct ar__peer {
    uint32_t id;
    char name[AR_NODE_NAME_MAX];
    _Atomic uint64_t hi;       /* its current run's node part; 0: never connected */
    _Atomic int state;         /* enum ar__peer_state */
    _Atomic size_t queued;     /* bytes of counted frames not yet written */
    _Atomic int must_drop;     /* a signal found no memory: the connection goes */
    /* Direct writes (peers.c): a sender whose frame finds nothing queued before it and
     * the connection idle writes it itself, without a non-blocking send. The token says who
     * may touch the socket: 0 free, 1 taken (a direct writer, or the I/O thread for as
     * long as its write is in flight, or for good while the peer is down). */
    _Atomic int wtoken;
    _Atomic int fd;            /* the up connection's socket; -1 */
    _Atomic long backlog;      /* frames queued or held by the I/O thread, not yet gone */
    _Atomic int wrote;         /* a direct write since the last tick */
    _Atomic uint64_t last_send_ns; /* of the last frame queued or written to it */
    _Atomic(ar__frame_t *) partial; /* a direct write's unsent rest: it goes first */
    /* the out queue (internal.h's MPSC queue) */
    _Atomic uintptr_t head;
    struct ar__qnode *tail;
    struct ar__qnode stub;
    ar__io_cmd_t connect_cmd;  /* submitted by the sender that moved DOWN -> CONNECTING */
    struct ar__dist *dist;
    /* I/O thread only */
    char addr[AR_NAME_MAX];    /* where it listens; "" if unknown */
    struct ar__conn *conn;     /* the connection that passed its handshake, or NULL */
    struct ar__conn *dialing;  /* our connection to it still in its handshake */
    ar__frame_t *fifo, *fifo_tail; /* taken off the queue, not yet written */
    ar__frame_t *bigs;         /* fragmented frames being written, oldest first */
    ar__frame_t *held, *held_tail; /* frames waiting behind a fragmented one of their sender */
    uint64_t next_stream;
    ar__rhalves_t rh;
    unsigned retries;
} ar__peer_t;
enum ar__peer_state { PEER_DOWN, PEER_CONNECTING, PEER_UP };

struct ar__dist {
    ar_node_t *node;
    uv_loop_t *loop;
    uv_async_t flush;          /* senders queued frames */
    uv_timer_t tick;
    uv_tcp_t listener;
    bool listening, stopping;
    _Atomic int closed;        /* the node stops: nothing more is queued */
    char address[AR_NAME_MAX]; /* where it listens, the port resolved */
    size_t queue_limit;
    unsigned tick_ms;
    pthread_mutex_t peers_lock; /* adding peers (reads take none) */
    _Atomic(ar__peer_t *) slots[AR__PEER_SLOTS];
    ar__peer_t *all[AR__MAX_PEERS];
    _Atomic uint32_t npeers;
    struct ar__conn *conns;    /* every open connection (I/O thread) */
    unsigned handshakes;       /* of them, those still in their handshake */
};

/* ---- peers.c ---- */
ar__peer_t *ar__peer_find(struct ar__dist *d, uint32_t id);
/* Finds or adds the peer with that id (any thread); NULL when the directory is full or
 * out of memory. name may be NULL (unknown yet). */
ar__peer_t *ar__peer_get(struct ar__dist *d, uint32_t id, const char *name);
void ar__peer_free_all(struct ar__dist *d);
/* A frame's room, from the pools or malloc. */
ar__frame_t *ar__frame_new(size_t len);
void ar__frame_free(ar__frame_t *f);
/* Takes and gives back the socket (see wtoken). */
static inline bool ar__peer_token_take(ar__peer_t *p)
{
    int free_ = 0;
    return atomic_compare_exchange_strong_explicit(&p->wtoken, &free_, 1, memory_order_acquire,
                                                   memory_order_relaxed);
}
void ar__peer_token_give(ar__peer_t *p);
/* A frame written or dropped: its bytes leave p's count, its memory goes. */
void ar__frame_done(ar__peer_t *p, ar__frame_t *f);

/* Pushes f on p's out queue and wakes the I/O thread (connecting first if need be). */
void ar__peer_push(ar__peer_t *p, ar__frame_t *f);

/* ---- links.c (I/O thread) ---- */
void ar__rh_add(ar__peer_t *p, int kind, uint64_t local, uint64_t key, ar__env_t *answer);
void ar__rh_del(ar__peer_t *p, int kind, uint64_t local, uint64_t key);
/* The peer is lost: every half owed goes out, with why (AR_NOCONNECTION). */
void ar__rh_fire_all(ar__peer_t *p, ar_node_t *node, ar_exit_code_t why);
void ar__rh_free_all(ar__peer_t *p);
/* The remote-halves step of a frame the I/O thread takes off a peer's queue. */
void ar__rh_book(ar__peer_t *p, ar__frame_t *f);
/* An answer owed (a frame's, or a half's) goes to its local process with why. */
void ar__rh_deliver(ar_node_t *node, ar__env_t *answer, ar_exit_code_t why);

/* ---- conn.c (I/O thread) ---- */
int ar__conn_listen(struct ar__dist *d, const char *addr);
/* Drops p's connection as if it were lost (ar_node_disconnect). */
void ar__conn_drop(ar__peer_t *p);
/* Connects to addr (peer: the entry it is for, or NULL for ar_node_connect's own). The
 * reply, if any, answers when the handshake ends: its payload gets an int result. */
void ar__conn_dial(struct ar__dist *d, ar__peer_t *peer, const char *addr, ar__env_t *reply,
                   ar_pid_t reply_to);
/* Writes what p has queued, if its connection is up and idle. */
void ar__conn_kick(ar__peer_t *p);
void ar__conn_tick(struct ar__dist *d);
void ar__conn_close_all(struct ar__dist *d);
/* p's frames queued to a lost peer: answers delivered with why, the rest dropped. */
void ar__peer_drain_lost(ar__peer_t *p, ar_exit_code_t why);
/* Delivers a decoded envelope frame from peer p to its local target. */
int ar__dist_deliver(struct ar__dist *d, ar__peer_t *p, const ar__wire_msg_t *m);

/* ---- dist.c ---- */
/* The answer to a connect or whereis request: a REPLY with an int result (and a pid). */
void ar__dist_answer(ar_node_t *node, ar__env_t *reply, ar_pid_t to, int rc, ar_pid_t pid);
/* A remote whereis request reached this node's pseudo-process (I/O thread). */
void ar__dist_whereis(struct ar__dist *d, ar__peer_t *p, const ar__wire_msg_t *m);

#endif
