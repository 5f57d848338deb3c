/* A process-owned socket, as socket.c (the owner's side: the public calls, the table and
 * the owners' index) and socket_io.c (the I/O thread's side: libuv) share it.
 *
 * Who touches what:
 *  - the owner, from its handlers: the public calls; it is the one producer of the send
 *    queue and may write to the descriptor directly while it holds the write token;
 *  - the I/O thread: the libuv handles, reading, accepting, connecting, the queued writes;
 *  - anyone with a stale id only reads `serial` and `owner_lo`, and acts on nothing.
 * Changes of state reach the I/O thread through one command embedded in the slot (the
 * kick), submitted at most once at a time, so arming, sending and closing never allocate
 * a command and none is lost.
 *
 * A slot lives while it has references: the owner's (from creation or hand-over until
 * ar_socket_close or the owner's end), the I/O thread's (until its handles are closed) and
 * one per kick in flight. Slots are never given back to the allocator before the node is
 * freed, so a stale id reads a live slot with another serial.
 */
#ifndef ARBOR_SOCKET_H
#define ARBOR_SOCKET_H

#include "internal.h"

#include <netinet/in.h>
#include <uv.h>

#define AR__SOCK_CHUNK 64          /* slots per allocation */
#define AR__SOCK_MAX_CHUNKS 4096   /* 262,144 sockets per node */
#define AR__SOCK_BUCKETS 1024      /* owners' index */
#define AR__SOCK_STRIPES 64        /* its locks */
#define AR__SOCK_IOVS 16           /* queued sends coalesced into one write */
#define AR__SOCK_READ 65536        /* the most one AR_SOCK_DATA carries */
#define AR__SOCK_SEND_LIMIT (1u << 20)
#define AR__SOCK_BACKLOG 511
#define AR__SOCK_LINGER_MS 5000    /* a closed socket's queued bytes get this long to go */
#define AR__SOCK_ACCEPT_RETRY_MS 10 /* a listener with no memory even to refuse a pending
                                       connection tries again after this: libuv watches it
                                       no more until that connection is taken */
#define AR__SOCK_ADDR 64
#define AR__SOCK_NOTE (1 << 30)    /* in `active`: one word, so that the deliveries' end is
                                      told (or not) as the arming that gave them said */
#define AR__SOCK_COUNT (AR__SOCK_NOTE - 1) /* the most a count arms (more saturates) */

enum ar__sock_state {
    SK_LISTEN,     /* bound and listening (the owner did both), not yet on the loop */
    SK_CONNECTING,
    SK_OPEN,       /* connected or accepted */
    SK_CLOSED,     /* the I/O side is closed or closing */
};

/* Bytes queued for sending (owner -> I/O thread). */
typedef struct ar__sock_out {
    struct ar__qnode q; /* must be first */
    size_t len;
    /* bytes follow */
} ar__sock_out_t;

typedef struct ar__sock {
    /* --- read by anyone holding an id (a stale one too) --- */
    _Atomic uint32_t serial;   /* the id's high half; changes when the slot is freed */
    _Atomic uint64_t owner_lo; /* the owner's pid (a local one); 0: nobody */
    /* --- from here, reset when the slot is taken --- */
    _Atomic int refs;
    _Atomic int active;        /* deliveries the owner allows (AR__SOCK_COUNT), with
                                  AR__SOCK_NOTE when they come from a count: PASSIVE when
                                  they run out; 0: passive (NOTE never stays alone) */
    _Atomic uint8_t state;     /* enum ar__sock_state */
    _Atomic bool close_req;    /* the owner let go */
    _Atomic bool want_writable;
    _Atomic bool broken;       /* a send lost bytes (no memory): the I/O side closes */
    _Atomic bool kicked;       /* kick is in the I/O inbox */
    _Atomic bool fin_sent;     /* its writing side is shut down (SHUT_WR) */
    _Atomic bool route_lock;   /* held to read owner_lo and route to it, and to change it */
    _Atomic int wtoken;        /* 1: a thread writes to fd now (the I/O thread: for good
                                  once it closes) */
    _Atomic int fd;            /* -1: none */
    _Atomic size_t queued;     /* bytes queued or being written */
    size_t send_limit;
    int backlog;
    bool listener;
    uint32_t index;
    uint32_t next;             /* owners' index chain, or the free list (index + 1) */
    struct ar_node *node;
    _Atomic uintptr_t out_head; /* the send queue (internal.h's MPSC queue) */
    struct ar__qnode *out_tail;
    struct ar__qnode out_stub;
    ar__io_cmd_t kick;
    struct sockaddr_storage dest;         /* connect: where to */
    char local[AR__SOCK_ADDR], peer[AR__SOCK_ADDR]; /* set before it is OPEN or LISTENing */
    ar__env_t *closed;         /* AR_SOCK_CLOSED's envelope, had with the slot: CLOSED is told
                                  whatever memory is left (the I/O thread takes it) */
    /* --- the I/O thread alone --- */
    uv_tcp_t tcp;
    uv_timer_t linger;         /* a closing socket's drain; a listener's accept retry */
    uv_write_t wreq;
    uv_connect_t creq;
    uv_shutdown_t sreq;
    uv_buf_t iov[AR__SOCK_IOVS];
    ar__sock_out_t *inflight[AR__SOCK_IOVS];
    unsigned ninflight;
    ar__env_t *held;           /* read while its owner had not asked for it */
    unsigned handles;          /* open libuv handles */
    bool opened, reading, writing, closing, has_token, accept_pending, closed_told, done;
} ar__sock_t;

struct ar__sockets {
    pthread_mutex_t lock; /* slots taken and freed */
    ar__sock_t *chunks[AR__SOCK_MAX_CHUNKS];
    _Atomic uint32_t nslots; /* made so far; lookups read it first */
    uint32_t free_head;      /* index + 1 */
    _Atomic size_t live;     /* slots in use: an exit with none to look for skips the index */
    pthread_mutex_t stripes[AR__SOCK_STRIPES];
    uint32_t buckets[AR__SOCK_BUCKETS]; /* index + 1 of the first slot an owner hashes to */
    ar__io_cmd_t stop_cmd;
    _Atomic bool stopping;
    struct ar_node *node;
    char rbuf[AR__SOCK_READ]; /* the I/O thread reads into it */
};

static inline ar_socket_t ar__sock_id(const ar__sock_t *sk)
{
    return ((uint64_t)atomic_load_explicit(&sk->serial, memory_order_relaxed) << 32) | (sk->index + 1);
}

/* socket.c */
/* A slot (refs: owner, I/O) with its CLOSED envelope; NULL: no memory for either. */
ar__sock_t *ar__sock_new(struct ar_node *node, uint64_t owner_lo);
void ar__sock_unref(ar__sock_t *sk);
/* Makes owner_lo the owner in the index, if it is still alive (checked): AR_ENOPROC. */
int ar__sock_own(ar__sock_t *sk, uint64_t owner_lo);
/* The owner lets go: out of the index, close asked, its reference dropped. */
void ar__sock_let_go(ar__sock_t *sk);
/* Hands sk's state to the I/O thread (at most one command in its inbox). */
void ar__sock_kick(ar__sock_t *sk);
/* Routes e to sk's owner (or frees it when there is none): under the route lock, so a
 * hand-over's OWNED is the first thing the new owner hears of the socket. */
void ar__sock_to_owner(ar__sock_t *sk, ar__env_t *e);

/* socket_io.c (I/O thread) */
void ar__sock_io_kicked(ar__io_cmd_t *cmd, uv_loop_t *loop);
void ar__sock_io_stop(ar__io_cmd_t *cmd, uv_loop_t *loop);
void ar__sock_out_free(ar__sock_out_t *o);

#endif
