/* arbor: Erlang/OTP-style processes, mailboxes and supervision for C11.
 *
 * The whole public API. Rules that hold everywhere:
 *  - Every int result is 0 or a negative AR_E* code; ar_strerror() names it.
 *  - Functions taking `ar_node_t *node` work from any thread. When the calling thread is
 *    running a process of that node, that process is the sender / parent / the one parked.
 *  - Functions taking `ar_proc_t *self` act on the calling process and may only be called
 *    from its own handlers (else AR_EINVAL).
 *  - Timeouts are milliseconds: AR_INFINITY waits for ever, 0 polls, other negatives are
 *    AR_EINVAL.
 *  - Payloads and strings given to the runtime are copied; `void *arg` pointers are the
 *    caller's and never copied or freed.
 * How the pieces behave together, rule by rule: docs/README.md.
 */
#ifndef ARBOR_H
#define ARBOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define AR_EXTERN __attribute__((visibility("default")))
#else
#define AR_EXTERN
#endif

#define AR_VERSION_MAJOR 0
#define AR_VERSION_MINOR 1
#define AR_VERSION_PATCH 0
/* "0.1.0" */
AR_EXTERN const char *ar_version(void);

/* ---- Errors ------------------------------------------------------------------------ */
/* X(name, value, text): one table makes the enum, ar_strerror() and ar_err_name(). */
#define AR_ERRNO_MAP(X)                                                   \
    X(EINVAL, -1, "invalid argument")                                     \
    X(ENOMEM, -2, "out of memory")                                        \
    X(ENOPROC, -3, "no such process")                                     \
    X(ETIMEDOUT, -4, "timed out")                                         \
    X(EEXIST, -5, "name or key already taken")                            \
    X(ENOTPROC, -6, "must be called from a process")                      \
    X(ECLOSED, -7, "node is stopping")                                    \
    X(ENOCONN, -8, "peer node unreachable")                               \
    X(EAUTH, -9, "peer failed authentication")                            \
    X(E2BIG, -10, "message or buffer too large")                          \
    X(EBADMSG, -11, "undecodable input")                                  \
    X(EAGAIN, -12, "mailbox or table full")                               \
    X(ENOENT, -13, "no such child, key or timer")                         \
    X(EBUSY, -14, "child running or restarting")                          \
    X(EALREADY, -15, "child spec kept but not running")                   \
    X(ENOTSUP, -16, "not supported for this supervisor kind")             \
    X(EDEADLK, -17, "a call to oneself")                                  \
    X(EADDRINUSE, -18, "address already in use")                          \
    X(ENOTCONN, -19, "socket closed")                                     \
    X(EIO, -20, "socket error")

typedef enum ar_errno {
#define AR__ERR_ENUM(name, val, text) AR_##name = (val),
    AR_ERRNO_MAP(AR__ERR_ENUM)
#undef AR__ERR_ENUM
} ar_errno_t;

/* Text of an AR_E* code ("no such process"); "unknown error" for anything else. */
AR_EXTERN const char *ar_strerror(int err);
/* Name of an AR_E* code ("AR_ENOPROC"); "AR_OK" for 0, "AR_UNKNOWN" otherwise. */
AR_EXTERN const char *ar_err_name(int err);

#define AR_INFINITY (-1)  /* timeout: wait for ever */
#define AR_NAME_MAX 128   /* names and child ids, with the NUL */
#define AR_KEY_MAX 1024   /* registry keys */

/* ---- Memory ------------------------------------------------------------------------ */
/* Every allocation of the runtime goes through this hook. Set it before any node starts
 * (AR_EBUSY while a node runs); NULL restores malloc/realloc/free. The hook functions
 * must be thread-safe. malloc returning NULL makes the operation fail with AR_ENOMEM. */
typedef struct ar_allocator {
    void *(*malloc)(size_t size, void *ud);
    void *(*realloc)(void *p, size_t size, void *ud);
    void (*free)(void *p, void *ud);
    void *ud;
} ar_allocator_t;
AR_EXTERN int ar_set_allocator(const ar_allocator_t *a);
/* The runtime's allocator, for code built on arbor whose memory should obey the hook too
 * (the supervisors use it; so may user behaviours). NULL on failure; ar_free(NULL) is a
 * no-op; ar_calloc checks n * size for overflow. */
AR_EXTERN void *ar_malloc(size_t size);
AR_EXTERN void *ar_calloc(size_t n, size_t size);
AR_EXTERN void *ar_realloc(void *p, size_t size);
AR_EXTERN void ar_free(void *p);

/* ---- Node -------------------------------------------------------------------------- */
typedef struct ar_node ar_node_t;
typedef struct ar_node_config {
    unsigned schedulers;       /* 0: one per CPU */
    const char *name;          /* node name (1 to AR_NODE_NAME_MAX - 1 bytes of
                                  [A-Za-z0-9_@-]); NULL: "local", no distribution */
    const char *listen;        /* "127.0.0.1:9100" to accept peer nodes (port 0: any);
                                  NULL: none. Needs name and cookie */
    const char *cookie;        /* shared secret for peer authentication; required to
                                  listen; never logged */
    size_t max_message_bytes;  /* 0: default (64 MiB) */
    size_t event_buffer;       /* per subscriber; 0: default (4096 events) */
    bool handle_signals;       /* SIGINT/SIGTERM begin a graceful stop */
    size_t stack_size;         /* usable bytes per handler stack; 0: 64 KiB */
    unsigned spin_us;          /* an idle scheduler spins this long before it parks;
                                  0: default (50 us) */
    /* Crash reports (see "Lifecycle events"): one line per abnormal exit, failed start,
     * supervisor restart and give-up. Zero means on, written to stderr. */
    bool crash_reports_off;    /* true: no crash reports */
    void (*crash_log)(const char *line, void *ud); /* NULL: stderr; else gets each line
                                  (no newline), on the node's events thread */
    void *crash_log_ud;
    /* Distribution (see "Distribution"). */
    unsigned tick_ms;          /* a tick to each peer when nothing else was written for
                                  this long; silent for 4 ticks: down. 0: 1000 */
    size_t dist_queue_limit;   /* bytes queued to one peer beyond which ar_send and
                                  ar_call to it return AR_EAGAIN; 0: 64 MiB */
} ar_node_config_t;

/* Fills cfg with the defaults (all zero/NULL/false: crash reports on, to stderr). */
AR_EXTERN void ar_node_config_init(ar_node_config_t *cfg);
/* Starts a node: its scheduler threads and its I/O thread.
 * AR_EINVAL (out NULL, bad config), AR_ENOMEM. */
AR_EXTERN int ar_node_start(const ar_node_config_t *cfg, ar_node_t **out);
/* Blocks until a stop is requested (ar_node_request_stop or a handled signal).
 * AR_EINVAL (NULL), AR_EDEADLK when called from a process of this node. */
AR_EXTERN int ar_node_wait(ar_node_t *node);
/* Asks ar_node_wait to return. Async-signal-safe. */
AR_EXTERN void ar_node_request_stop(ar_node_t *node);
/* Ordered shutdown: stops the top-level processes (spawned from outside any process) one
 * at a time in reverse spawn order with AR_SHUTDOWN, waiting for each to end, then sends
 * AR_SHUTDOWN once to whatever is left and waits for it. AR_INFINITY waits as long as
 * that takes; with a timeout nothing is killed before it runs out, then what is left is
 * killed (AR_ETIMEDOUT, else 0). A process in its terminate is never cut short but by
 * that kill. Calls other threads have in progress finish before the node is freed; a new
 * ar_call from outside the node gets AR_ECLOSED, as does ar_spawn; no call may start once
 * this has returned. Then it joins every thread and frees the node. Must be called from
 * outside the node's processes and events callbacks (AR_EDEADLK). AR_EINVAL for NULL or a
 * bad timeout. */
AR_EXTERN int ar_node_stop(ar_node_t *node, int timeout_ms);

/* ---- Pids, refs, reasons ------------------------------------------------------------ */
typedef struct ar_pid {
    uint64_t hi, lo;
} ar_pid_t; /* value type; the layout is internal */
#define AR_PID_NONE ((ar_pid_t){0, 0})
AR_EXTERN bool ar_pid_eq(ar_pid_t a, ar_pid_t b);
AR_EXTERN bool ar_pid_is_none(ar_pid_t p);
AR_EXTERN bool ar_pid_is_local(ar_node_t *node, ar_pid_t p);
#define AR_PID_STRLEN 64 /* enough for any pid */
#define AR_NODE_NAME_MAX 40 /* node names, with the NUL */
/* Writes "<node.index.serial>", node being the node's name when this OS process knows
 * it (a node of its own, or a peer one of them met), else its number. AR_E2BIG if n is too small (output truncated),
 * AR_EINVAL for a NULL buf or n == 0. */
AR_EXTERN int ar_pid_format(ar_pid_t p, char *buf, size_t n);
typedef uint64_t ar_ref_t; /* unique per node, 0: none */

typedef enum ar_exit_code {
    AR_NORMAL,
    AR_SHUTDOWN,
    AR_KILL,   /* untrappable, sent */
    AR_KILLED, /* what links see */
    AR_NOPROC,
    AR_NOCONNECTION,
    AR_TIMEOUT,
    AR_ERROR /* crash; text says why */
} ar_exit_code_t;
typedef struct ar_reason {
    ar_exit_code_t code;
    const char *text; /* may be NULL */
} ar_reason_t;
#define AR_REASON(code) ((ar_reason_t){(code), NULL})
/* "normal", "shutdown", ... */
AR_EXTERN const char *ar_exit_code_name(ar_exit_code_t code);

/* ---- Messages ---------------------------------------------------------------------- */
typedef enum ar_msg_kind {
    AR_MSG_CAST,  /* from ar_send */
    AR_MSG_CALL,  /* from ar_call: answer with ar_reply(node, m->reply_to, ...) */
    AR_MSG_REPLY, /* answer to ar_ask; reason.code != AR_NORMAL when it failed */
    AR_MSG_EXIT,  /* exit signal of a linked process, while trapping exits */
    AR_MSG_DOWN,  /* a monitored process ended: from, ref, reason */
    AR_MSG_TIMER, /* from ar_send_after: tag, data */
    AR_MSG_EVENT, /* lifecycle event for a subscriber: event */
    AR_MSG_SOCKET, /* from a socket the process owns: tag (ar_sock_event_t), ref (the
                      socket), data (AR_SOCK_DATA), reason (AR_SOCK_CLOSED) */
} ar_msg_kind_t;
typedef struct ar_reply_to {
    ar_pid_t pid;
    ar_ref_t ref;
} ar_reply_to_t;
struct ar_event;
typedef struct ar_msg { /* read-only; valid until the handler returns */
    ar_msg_kind_t kind;
    uint32_t tag; /* the sender's own message type */
    ar_pid_t from;
    ar_ref_t ref;
    ar_reason_t reason;
    ar_reply_to_t reply_to;
    const void *data; /* payload bytes (msgpack by convention), len bytes */
    size_t len;
    const struct ar_event *event; /* AR_MSG_EVENT only */
} ar_msg_t;
typedef struct ar_buf {
    void *data;
    size_t len;
} ar_buf_t;
/* Frees a buffer the runtime handed out (a call's reply) and zeroes it. NULL: no-op. */
AR_EXTERN void ar_buf_free(ar_buf_t *b);

/* ---- Behaviours and processes ------------------------------------------------------- */
typedef struct ar_proc ar_proc_t; /* the calling process, inside its handlers */
typedef struct ar_behaviour {
    const char *name;
    int (*init)(ar_proc_t *self, void *arg, void **state); /* <0: start fails */
    void (*handle)(ar_proc_t *self, void *state, const ar_msg_t *m);
    void (*terminate)(ar_proc_t *self, void *state, ar_reason_t why); /* optional */
} ar_behaviour_t;
typedef struct ar_spawn_opts {
    bool link;            /* link to the calling process, atomically (AR_ENOTPROC outside) */
    bool trap_exit;
    size_t mailbox_limit; /* 0: unbounded; else ar_send fails with AR_EAGAIN */
    const char *name;     /* registered before init runs; a taken name fails the spawn
                             with AR_EEXIST and leaves nothing behind */
} ar_spawn_opts_t;

/* Starts a process running behaviour b. init (optional) runs in the new process's own
 * context and completes before ar_spawn returns; it may block. On success *out (optional)
 * is the new pid. Errors: AR_EINVAL (NULL node/b, b->handle NULL, bad opts), AR_ECLOSED
 * (node stopping), AR_ENOMEM, init's own negative result as is, AR_ENOPROC if init
 * crashed (AR_FAIL, ar_exit_self, stack overflow). A failed start leaves nothing behind. */
AR_EXTERN int ar_spawn(ar_node_t *node, const ar_behaviour_t *b, void *arg,
                       const ar_spawn_opts_t *opts, ar_pid_t *out);
AR_EXTERN ar_pid_t ar_self(ar_proc_t *self);
AR_EXTERN ar_node_t *ar_node(ar_proc_t *self);

/* ---- Sending, calling, replying, receiving ----------------------------------------- */
/* Sends a copy of data as an AR_MSG_CAST. A dead or unknown pid: 0, the message is
 * dropped and counted. AR_EINVAL (NULL node, data NULL with len > 0), AR_E2BIG (over
 * max_message_bytes), AR_EAGAIN (target's mailbox_limit reached), AR_ENOMEM. */
AR_EXTERN int ar_send(ar_node_t *node, ar_pid_t to, uint32_t tag, const void *data,
                      size_t len);
/* Sends an AR_MSG_CALL and waits for its reply, parking the calling process (a foreign
 * thread blocks). On success *reply holds the answer: free it with ar_buf_free.
 * AR_ETIMEDOUT, AR_ENOPROC (target dead, or it died before answering: at once),
 * AR_ENOCONN (a remote target's node was lost: at once), AR_EDEADLK (call to self),
 * AR_EINVAL, AR_E2BIG, AR_EAGAIN (the target's mailbox_limit, or its node's queue, full),
 * AR_ECLOSED (from outside the node while it stops), AR_ENOMEM (also: no stack to park
 * the caller on). */
AR_EXTERN int ar_call(ar_node_t *node, ar_pid_t to, uint32_t tag, const void *req,
                      size_t len, ar_buf_t *reply, int timeout_ms);
/* Sends an AR_MSG_CALL without waiting; 0 once sent (ref required). Exactly one
 * AR_MSG_REPLY with m->ref == *ref follows: the answer, or a failure whose reason says
 * why: AR_TIMEOUT, AR_NOPROC, the target's own exit reason when it died before answering,
 * AR_NOCONNECTION when a remote target's node was lost. */
AR_EXTERN int ar_ask(ar_proc_t *self, ar_pid_t to, uint32_t tag, const void *req,
                     size_t len, int timeout_ms, ar_ref_t *ref);
/* Answers a CALL (now or later, from any thread). 0 also when the caller is gone or gave
 * up. AR_EINVAL (bad reply_to), AR_E2BIG, AR_ENOMEM. */
AR_EXTERN int ar_reply(ar_node_t *node, ar_reply_to_t to, const void *data, size_t len);
/* Selective receive: waits for the first queued message for which match returns true
 * (match NULL: any), parking the process. Unmatched messages stay queued in order.
 * *out is the caller's until ar_msg_release. AR_ETIMEDOUT, AR_EINVAL, AR_ENOMEM (no
 * memory for the timer, or no stack to park on). */
AR_EXTERN int ar_receive(ar_proc_t *self, bool (*match)(const ar_msg_t *m, void *ud),
                         void *ud, int timeout_ms, ar_msg_t **out);
AR_EXTERN void ar_msg_release(ar_proc_t *self, ar_msg_t *m);
/* Parks the calling process for ms milliseconds; its mailbox keeps filling. AR_ENOMEM:
 * no memory for the timer or no stack to park on (it returns at once). */
AR_EXTERN int ar_sleep(ar_proc_t *self, int ms);
/* After ms milliseconds (never sooner), sends `to` an AR_MSG_TIMER (tag, a copy of data)
 * from the calling process (or AR_PID_NONE). *timer (optional) identifies it for
 * cancelling. The timer is cancelled when its owner process ends. AR_EINVAL, AR_E2BIG,
 * AR_ECLOSED (node stopping), AR_ENOMEM (then no timer was armed). */
AR_EXTERN int ar_send_after(ar_node_t *node, int ms, ar_pid_t to, uint32_t tag,
                            const void *data, size_t len, ar_ref_t *timer);
/* Cancels a pending timer: 0, or AR_ENOENT when it fired, was cancelled or is unknown. */
AR_EXTERN int ar_cancel_timer(ar_node_t *node, ar_ref_t timer);

/* ---- Ending ------------------------------------------------------------------------ */
/* Ends the calling process with why after the current handler (or init) returns. */
AR_EXTERN void ar_stop(ar_proc_t *self, ar_reason_t why);
/* Ends the calling process now, unwinding the handler; terminate still runs. */
AR_EXTERN _Noreturn void ar_exit_self(ar_proc_t *self, ar_reason_t why);
AR_EXTERN _Noreturn void ar__fail(ar_proc_t *self, const char *file, int line,
                                  const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
AR_EXTERN _Noreturn void ar__assert_fail(ar_proc_t *self, const char *file, int line,
                                         const char *cond);
/* Crashes the calling process with AR_ERROR and the formatted text, followed by
 * " at file:line" (as AR_ASSERT does). */
#define AR_FAIL(self, ...) ar__fail((self), __FILE__, __LINE__, __VA_ARGS__)
/* Crashes the calling process with AR_ERROR ("assertion failed: cond at file:line"). */
#define AR_ASSERT(self, cond)                                                      \
    do {                                                                           \
        if (!(cond)) ar__assert_fail((self), __FILE__, __LINE__, #cond);           \
    } while (0)

/* ---- Links, monitors, exit signals (Erlang's rules: see README) ----------------------- */
/* Sends an exit signal to target from the calling process (or from no process). A dead
 * target: 0, nothing happens. AR_KILL kills it (reason AR_KILLED) even if it traps exits.
 * AR_EINVAL for a NULL node. */
AR_EXTERN int ar_exit(ar_node_t *node, ar_pid_t target, ar_reason_t why);
/* Links the calling process and other (both ways, once per pair). Linking to oneself does
 * nothing. AR_ENOPROC (nothing changes) if other is dead. The exit signals the link
 * promises are set aside now: AR_ENOMEM (nothing changes) is the only failure, and
 * once linked each end's exit signal is delivered whatever memory is left. */
AR_EXTERN int ar_link(ar_proc_t *self, ar_pid_t other);
/* Removes the link; afterwards it cannot affect the caller (an AR_MSG_EXIT already in the
 * mailbox stays). 0 also when there was no link. Never fails. */
AR_EXTERN int ar_unlink(ar_proc_t *self, ar_pid_t other);
/* Monitors target: exactly one AR_MSG_DOWN with m->ref == *ref follows when it ends (at
 * once, with AR_NOPROC, if it is already dead), unless demonitored first. The DOWN is set
 * aside now: AR_ENOMEM (nothing changes) is the only failure. */
AR_EXTERN int ar_monitor(ar_proc_t *self, ar_pid_t target, ar_ref_t *ref);
/* Removes a monitor: no DOWN for ref is added afterwards; with flush, one already in the
 * mailbox is removed too. An unknown or fired ref: 0. Never fails. */
AR_EXTERN int ar_demonitor(ar_proc_t *self, ar_ref_t ref, bool flush);
/* Turns exit trapping on or off; returns the old value (false for a NULL self). While
 * trapping, exit signals (but AR_KILL from ar_exit) arrive as AR_MSG_EXIT messages. */
AR_EXTERN bool ar_trap_exit(ar_proc_t *self, bool on);

/* ---- Names ------------------------------------------------------------------------- */
/* A name (1 to AR_NAME_MAX - 1 bytes) maps to one live local process; a process has at
 * most one name. The name is released as the process ends, before any DOWN or EXIT of it
 * is sent, so whoever sees the death can take the name at once. Lookups take no lock.
 * ar_register: AR_EINVAL (NULL node, bad name), AR_EEXIST (name taken), AR_EALREADY (the
 * process has a name), AR_ENOPROC (dead, unknown or remote pid), AR_ENOMEM.
 * ar_unregister: AR_EINVAL, AR_ENOENT (no such name).
 * ar_whereis: the pid, or AR_PID_NONE (unknown name, or bad arguments). */
AR_EXTERN int ar_register(ar_node_t *node, const char *name, ar_pid_t pid);
AR_EXTERN int ar_unregister(ar_node_t *node, const char *name);
AR_EXTERN ar_pid_t ar_whereis(ar_node_t *node, const char *name);

/* ---- Distribution -------------------------------------------------------------------- */
/* Nodes with a name and a cookie talk over TCP (msgpack frames, HMAC-SHA256 handshake).
 * Remote pids work everywhere a pid does, with the local rules; a pid names one process of
 * one run of one node, on every node. Connecting happens on the node's I/O thread, on
 * first use of a remote pid or here; no send ever waits for it.
 *
 * ar_node_connect: connects to the node listening at "host:port" and waits for the
 * handshake (from a process, the process parks). 0 (also when already connected),
 * AR_EINVAL (bad address, no name or cookie), AR_ENOCONN (unreachable, or closed during
 * the handshake), AR_EAUTH (wrong cookie), AR_ETIMEDOUT, AR_ECLOSED.
 * ar_whereis_remote: the pid registered as name on the node peer (a node name, or
 * "host:port" to connect first). AR_ENOENT (no such name there), AR_ENOCONN, AR_EAUTH,
 * AR_ETIMEDOUT, AR_EINVAL.
 *
 * Node loss (a peer silent for 4 ticks, a reset, a closed socket): links to its processes
 * fire AR_NOCONNECTION, monitors of them get a DOWN with AR_NOCONNECTION, pending calls
 * return AR_ENOCONN, and AR_EV_NODE_DOWN is emitted (name: the peer; NODE_UP on each
 * handshake). A pid of an earlier run of a node is dead: sends dropped, links and
 * monitors AR_NOPROC. Messages in flight when a connection breaks may be lost; nothing
 * is replayed. A message over the receiving node's max_message_bytes is dropped there and
 * counted (a call to it waits for its timeout); a call to a full bounded mailbox fails with
 * AR_EAGAIN, a cast to one is dropped there and counted. Back-pressure: once more than dist_queue_limit bytes wait for one peer,
 * ar_send and ar_call to it return AR_EAGAIN (signals and replies always go). */
AR_EXTERN int ar_node_connect(ar_node_t *node, const char *addr, int timeout_ms);
/* The address the node listens on, as "host:port" with the port the system chose for
 * port 0: AR_ENOENT if it does not listen, AR_E2BIG if n is too small. */
AR_EXTERN int ar_node_address(ar_node_t *node, char *buf, size_t n);
/* Drops the connection to the node named peer, as if it were lost (Erlang's
 * disconnect_node): both sides fire what the connection held with AR_NOCONNECTION and
 * emit NODE_DOWN; the next use connects again. Returns at once: AR_ENOENT (not
 * connected), AR_EINVAL, AR_ENOMEM, AR_ECLOSED. */
AR_EXTERN int ar_node_disconnect(ar_node_t *node, const char *peer);
/* The node's name ("local" without one). */
AR_EXTERN const char *ar_node_name(ar_node_t *node);
AR_EXTERN int ar_whereis_remote(ar_node_t *node, const char *peer, const char *name,
                                ar_pid_t *out, int timeout_ms);

/* ---- Sockets ------------------------------------------------------------------------ */
/* TCP sockets owned by processes, as Erlang's gen_tcp with {active, once}. A socket
 * belongs to one process, its owner: only the owner may use it, its events arrive in the
 * owner's mailbox as AR_MSG_SOCKET messages (m->tag says which, m->ref is the socket), and
 * it is closed when the owner ends, however it ends. All socket I/O runs on the node's I/O
 * thread; no call here blocks.
 * Flow control: a socket delivers data (or, listening, accepted connections) only while
 * its owner has asked for it with ar_socket_active, so a slow owner pauses its peer
 * instead of growing its mailbox. A send queues at most send_limit bytes; past that it
 * returns AR_EAGAIN and an AR_SOCK_WRITABLE message follows once the queue has drained to
 * half. Rules: docs/sockets.md. */
typedef uint64_t ar_socket_t; /* 0: none */
typedef enum ar_sock_event {
    AR_SOCK_DATA = 1,  /* data, len: bytes read (one delivery of the active count) */
    AR_SOCK_ACCEPTED,  /* a listening socket accepted a connection: m->ref is the new
                          socket, passive, owned by the listener's owner;
                          m->reply_to.ref is the listening socket */
    AR_SOCK_CONNECTED, /* ar_socket_connect succeeded: the socket is passive */
    AR_SOCK_CLOSED,    /* the peer closed (reason AR_NORMAL), or an error or a failed
                          connect (AR_ERROR, text says why); always delivered. The owner
                          still holds the socket until ar_socket_close or its end */
    AR_SOCK_PASSIVE,   /* the count given to ar_socket_active (n > 0) ran out */
    AR_SOCK_WRITABLE,  /* the send queue drained to half after a send got AR_EAGAIN */
    AR_SOCK_OWNED,     /* ar_socket_give made the receiver the owner: the socket is passive */
} ar_sock_event_t;
typedef struct ar_socket_opts {
    size_t send_limit; /* bytes a socket queues for sending; 0: 1 MiB */
    int backlog;       /* listen backlog; 0: 511 */
} ar_socket_opts_t;
#define AR_ACTIVE_ONCE (-1) /* ar_socket_active: one delivery, then passive, no message */
/* A node holds at most 262,144 sockets; past that, listen and connect return AR_ENOMEM
 * and accepted connections are closed at once. */
/* Listens on "host:port" (numeric IPv4, IPv6 "[::1]:port", or "localhost"; port 0: any
 * free one). The
 * calling process owns the socket; it is passive: arm it with ar_socket_active to get
 * AR_SOCK_ACCEPTED messages. opts may be NULL. AR_EINVAL (bad address or opts, not a
 * process), AR_EADDRINUSE, AR_EIO (other refusals), AR_ENOMEM. */
AR_EXTERN int ar_socket_listen(ar_proc_t *self, const char *addr, const ar_socket_opts_t *opts,
                               ar_socket_t *out);
/* Starts connecting to "host:port"; *out is the socket at once, and AR_SOCK_CONNECTED or
 * AR_SOCK_CLOSED follows. Sends made before it connects are queued. AR_EINVAL, AR_ENOMEM. */
AR_EXTERN int ar_socket_connect(ar_proc_t *self, const char *addr, const ar_socket_opts_t *opts,
                                ar_socket_t *out);
/* Arms delivery: n > 0 adds n deliveries (AR_SOCK_PASSIVE follows when they are used up),
 * AR_ACTIVE_ONCE allows one more (no message when it is used), 0 makes it passive now.
 * AR_EINVAL (not the owner, unknown socket, bad n), AR_ENOTCONN (closed). */
AR_EXTERN int ar_socket_active(ar_proc_t *self, ar_socket_t s, int n);
/* Queues a copy of data for sending, in order. AR_EAGAIN (send_limit reached: nothing
 * queued; AR_SOCK_WRITABLE follows), AR_ENOTCONN (closed), AR_EINVAL (not the owner, a
 * listening socket, data NULL with len > 0), AR_E2BIG (over max_message_bytes),
 * AR_ENOMEM (nothing queued; if part had been written already, the connection closes,
 * so the peer never sees a stream with a hole). */
AR_EXTERN int ar_socket_send(ar_proc_t *self, ar_socket_t s, const void *data, size_t len);
/* Hands the socket to the process `to`, which gets AR_SOCK_OWNED before any other event of
 * the socket; the socket becomes passive. Messages already queued stay with the giver. To
 * itself: 0, nothing changes. AR_ENOPROC (`to` is dead or not local: the caller still owns
 * it), AR_EINVAL (not the owner), AR_ENOMEM (nothing changes). */
AR_EXTERN int ar_socket_give(ar_proc_t *self, ar_socket_t s, ar_pid_t to);
/* Closes the socket: what was queued is still sent, then its FIN; what the peer still
 * sends is dropped until it closes too (5 s at most), so no reset cuts off what it has not
 * read. With nothing queued the FIN goes before this returns (a listener's port is free).
 * The id is invalid from here. AR_EINVAL (not the owner, unknown). */
AR_EXTERN int ar_socket_close(ar_proc_t *self, ar_socket_t s);
/* The local ("sockname") or peer address as "host:port". AR_EINVAL, AR_ENOTCONN,
 * AR_E2BIG (n too small). */
AR_EXTERN int ar_socket_address(ar_proc_t *self, ar_socket_t s, bool peer, char *buf, size_t n);
/* "DATA", "ACCEPTED", ...; "UNKNOWN" otherwise. */
AR_EXTERN const char *ar_sock_event_name(int ev);

/* ---- Keyed registry ------------------------------------------------------------------ */
/* A registry maps keys (1 to AR_KEY_MAX bytes) to entry processes, one per key, started
 * on first use and reaped when idle: keyed actors (one per user, session, device...).
 *
 * - Sends and calls to a running entry go straight to it (a lock-free table lookup, no
 *   registry process in the way); a missing key is started by the caller itself, whose
 *   ar_registry_* call runs the entry's init (as ar_spawn does).
 * - An entry is reaped once it has handled nothing (through the registry or not: timers
 *   and direct sends count) and has had nothing queued for idle_ms, counted from the end
 *   of its last handler; the check runs every idle_ms, so it goes between idle_ms and
 *   twice that after. It stops with AR_SHUTDOWN and its terminate runs; one still in its
 *   terminate after reap_timeout_ms is killed.
 * - Nothing sent through the registry is lost to a reap: it is handled by the old
 *   incarnation, or held and delivered to the next one in the order sent, or refused to
 *   its sender with an error. An entry that ends by itself (crash, ar_stop) leaves its key
 *   free, unless messages were held for it: then a fresh incarnation takes them. What was
 *   queued at an entry when it crashed is lost with it, as in Erlang.
 * - Entries are children of the registry's process. ar_registry_stop and ar_node_stop
 *   stop every entry (terminate runs) and free the table.
 * - init's arg is a const ar_registry_arg_t *, valid during init (copy the key to keep
 *   it); arg is config.arg. A key whose init fails (< 0) is not kept: the call that
 *   started it returns init's result, and calls held meanwhile fail. */
typedef struct ar_registry ar_registry_t;
typedef struct ar_key {
    const void *data;
    size_t len;
} ar_key_t;
typedef struct ar_registry_arg {
    ar_key_t key;
    void *arg;
} ar_registry_arg_t;
typedef struct ar_registry_config {
    const ar_behaviour_t *behaviour; /* what every entry runs (handle required) */
    void *arg;                       /* handed to every entry's init beside its key */
    int idle_ms;                     /* reap entries idle this long; 0: never */
    size_t max_entries;              /* 0: unbounded; beyond it a new key is AR_EAGAIN */
    const char *name;                /* registers its process (ar_registry_find); copied */
    int reap_timeout_ms;             /* a reaped entry's terminate; 0: 5000 */
} ar_registry_config_t;
/* The registry's behaviour, for a supervisor's child spec: arg is a
 * const ar_registry_config_t * that outlives the supervisor (give it a name to find the
 * registry again after a restart). Its stop stops every entry, each bounded by
 * reap_timeout_ms: give the child .shutdown_ms = AR_SHUTDOWN_INFINITY (as OTP does for a
 * supervisor), or one long enough, so that its supervisor never kills it half way (its
 * entries would then run on, unowned, until the node stops). */
AR_EXTERN extern const ar_behaviour_t ar_registry;
/* Starts a registry process (a child of the calling process, else top-level). AR_EINVAL
 * (bad config), AR_EEXIST (its name is taken), AR_ECLOSED, AR_ENOMEM. */
AR_EXTERN int ar_registry_start(ar_node_t *node, const ar_registry_config_t *cfg,
                                ar_registry_t **out);
/* The running registry registered under name, or NULL. */
AR_EXTERN ar_registry_t *ar_registry_find(ar_node_t *node, const char *name);
AR_EXTERN ar_pid_t ar_registry_pid(ar_registry_t *r);
/* The key's entry, started if there is none (its init runs in this call). Errors:
 * AR_EINVAL, AR_EAGAIN (max_entries), AR_ENOMEM, AR_ENOPROC (registry stopped), AR_ECLOSED,
 * init's own result. */
AR_EXTERN int ar_registry_get_or_spawn(ar_registry_t *r, ar_key_t key, ar_pid_t *out);
/* The key's running entry, never started: AR_ENOPROC if none (or it is being reaped). */
AR_EXTERN int ar_registry_lookup(ar_registry_t *r, ar_key_t key, ar_pid_t *out);
/* ar_send and ar_call by key, starting the entry if need be (errors as get_or_spawn's,
 * and as ar_send's and ar_call's). */
AR_EXTERN int ar_registry_send(ar_registry_t *r, ar_key_t key, uint32_t tag, const void *data,
                               size_t len);
AR_EXTERN int ar_registry_call(ar_registry_t *r, ar_key_t key, uint32_t tag, const void *req,
                               size_t len, ar_buf_t *reply, int timeout_ms);
/* Keys in the table (running, starting or being reaped). */
AR_EXTERN size_t ar_registry_count(ar_registry_t *r);
/* Stops the registry: every entry is stopped (terminate runs), the table freed. Waits.
 * The handle stays valid (every call on it fails AR_ENOPROC) until the node stops.
 * AR_EINVAL, AR_EDEADLK (from the registry's own process). */
AR_EXTERN int ar_registry_stop(ar_registry_t *r);

/* ---- Supervisors (supervisors/, written on this API alone) ------------------------- */
typedef enum { AR_ONE_FOR_ONE, AR_ONE_FOR_ALL, AR_REST_FOR_ONE, AR_SIMPLE_ONE_FOR_ONE } ar_strategy_t;
typedef enum { AR_PERMANENT, AR_TRANSIENT, AR_TEMPORARY } ar_restart_t;
typedef enum {
    AR_AUTO_SHUTDOWN_NEVER,
    AR_AUTO_SHUTDOWN_ANY,
    AR_AUTO_SHUTDOWN_ALL
} ar_auto_shutdown_t;
#define AR_SHUTDOWN_BRUTAL (-1)   /* kill at once */
#define AR_SHUTDOWN_INFINITY (-2) /* wait for as long as it takes */
#define AR_NO_RESTARTS (-1)       /* intensity: the first restart gives up */
typedef enum { AR_WORKER, AR_SUPERVISOR } ar_child_type_t;
typedef struct ar_child_spec { /* zero fields take OTP's defaults */
    const char *id;
    const ar_behaviour_t *behaviour;
    void *arg;            /* a nested supervisor: &ar_supervisor, &spec */
    ar_restart_t restart; /* AR_PERMANENT */
    int shutdown_ms;      /* 0: 5000 for workers, infinity for supervisors */
    ar_child_type_t type; /* children of &ar_supervisor are supervisors */
    bool significant;
} ar_child_spec_t;
typedef struct ar_sup_spec {
    ar_strategy_t strategy;
    int intensity, period_ms; /* 0: defaults 1 and 5000, as OTP */
    ar_auto_shutdown_t auto_shutdown;
    int backoff_min_ms, backoff_max_ms; /* 0, 0: restart at once, as OTP */
    const ar_child_spec_t *children;
    size_t nchildren;
} ar_sup_spec_t;
AR_EXTERN extern const ar_behaviour_t ar_supervisor; /* arg: const ar_sup_spec_t * */
/* Starts a supervisor (its children in order). AR_EINVAL for an invalid spec, before
 * anything starts; a child's start error as is, with nothing left behind. */
AR_EXTERN int ar_sup_start(ar_node_t *node, const ar_sup_spec_t *spec,
                           const ar_spawn_opts_t *o, ar_pid_t *out);
/* How long every ar_sup_* call but ar_sup_stop waits for the supervisor's answer: then it
 * returns AR_ETIMEDOUT (the supervisor may still carry the request out). A supervisor
 * answers once it has done what was asked, so a call may wait for a child's init or for
 * children's shutdowns. */
#define AR_SUP_CALL_MS 60000
/* Stops its children in reverse order, each by its shutdown policy, then the supervisor
 * ends with AR_SHUTDOWN; returns once it has ended. Within timeout_ms (AR_INFINITY: no
 * limit) for the whole tree: when it runs out, what is left is killed (child supervisors
 * get the time left for their own trees) and the result is AR_ETIMEDOUT; a supervisor that
 * does not even answer by then is killed. AR_ENOPROC for a dead supervisor. */
AR_EXTERN int ar_sup_stop(ar_node_t *node, ar_pid_t sup, int timeout_ms);
AR_EXTERN int ar_sup_start_child(ar_node_t *node, ar_pid_t sup, const ar_child_spec_t *spec,
                                 void *arg, ar_pid_t *child);
AR_EXTERN int ar_sup_terminate_child(ar_node_t *node, ar_pid_t sup, const char *id,
                                     ar_pid_t child);
AR_EXTERN int ar_sup_restart_child(ar_node_t *node, ar_pid_t sup, const char *id,
                                   ar_pid_t *child);
AR_EXTERN int ar_sup_delete_child(ar_node_t *node, ar_pid_t sup, const char *id);
typedef struct ar_child_info {
    char id[AR_NAME_MAX];
    ar_pid_t pid; /* AR_PID_NONE: stopped */
    bool restarting;
    ar_restart_t restart;
    ar_child_type_t type;
} ar_child_info_t;
/* Fills up to cap entries in start order; *n is how many there are. */
AR_EXTERN int ar_sup_which_children(ar_node_t *node, ar_pid_t sup, ar_child_info_t *out,
                                    size_t cap, size_t *n);
typedef struct ar_child_counts {
    size_t specs, active, supervisors, workers;
} ar_child_counts_t;
AR_EXTERN int ar_sup_count_children(ar_node_t *node, ar_pid_t sup, ar_child_counts_t *out);

/* ---- Lifecycle events --------------------------------------------------------------- */
/* A stream of what happens to processes, for observers: loggers, metrics, tools. Each
 * subscriber names the kinds it wants (a mask) and has a buffer of its own of at most
 * event_buffer events (node config; default 4096). A producer never waits for a
 * subscriber: when the buffer is full (or memory runs out) the event is dropped for that
 * subscriber and counted, and the next event it gets is AR_EV_LAGGED with the exact count
 * (LAGGED is always delivered, whatever the mask). For each process: one SPAWN (after its
 * init succeeded), then at most one EXIT (after its name was released), in that order; a
 * failed init gives START_FAILED instead of both. Every event carries a node-wide sequence
 * number: a subscriber sees its events in increasing seq. */
typedef enum ar_event_kind {
    AR_EV_SPAWN = 1u << 0,        /* pid, behaviour, name: init succeeded */
    AR_EV_EXIT = 1u << 1,         /* pid, behaviour, name, reason */
    AR_EV_RESTART = 1u << 2,      /* a supervisor restarted a child: pid (the new one),
                                     old_pid, supervisor, behaviour, name (child id),
                                     reason (why the old one ended) */
    AR_EV_START_FAILED = 1u << 3, /* init failed: pid (the process that was), behaviour,
                                     reason. From a supervisor: supervisor, name (child
                                     id), behaviour, reason (what ar_spawn returned) */
    AR_EV_GIVE_UP = 1u << 4,      /* a supervisor reached its restart intensity and exits:
                                     pid (the supervisor), supervisor (its parent), name
                                     (the child it would not restart), reason (why that
                                     child ended) */
    AR_EV_REGISTER = 1u << 5,     /* pid, name */
    AR_EV_UNREGISTER = 1u << 6,   /* pid, name */
    AR_EV_REAP = 1u << 7,         /* a registry reaped an idle entry: pid, name (key) */
    AR_EV_NODE_UP = 1u << 8,
    AR_EV_NODE_DOWN = 1u << 9,
    AR_EV_LAGGED = 1u << 10,      /* dropped: events this subscriber missed */
    AR_EV_USER = 1u << 11,        /* emitted by user behaviours */
} ar_event_kind_t;
#define AR_EV_ALL 0xFFFu          /* every kind */
#define AR_EVENT_TEXT_MAX 1024    /* an event's reason text is cut to this, with the NUL */
typedef struct ar_event {
    ar_event_kind_t kind;
    uint64_t seq;            /* node-wide, increasing; LAGGED: that of the last it stands for */
    uint64_t time_ns;        /* wall clock (CLOCK_REALTIME), ns since the epoch */
    ar_pid_t pid;            /* the process it is about (see the kinds) */
    ar_pid_t old_pid;        /* RESTART: the child that ended */
    ar_pid_t supervisor;     /* RESTART, START_FAILED: the supervisor; GIVE_UP: its parent */
    const char *behaviour;   /* the behaviour's name (NULL: none) */
    const char *name;        /* registered name, child id or registry key text (NULL: none) */
    ar_reason_t reason;      /* EXIT, RESTART, START_FAILED, GIVE_UP */
    uint64_t dropped;        /* LAGGED: how many events this subscriber missed */
} ar_event_t; /* strings: valid during the callback, or until the handler returns */

/* Subscribes the calling process: each event of kinds (AR_EV_* bits) arrives as an
 * AR_MSG_EVENT message (m->event; m->ref is the subscription's ref), never refused by
 * mailbox_limit. The buffer counts event messages queued and not yet handled. The
 * subscription ends with ar_events_unsubscribe or when the process ends. *sub (optional)
 * is its ref. AR_EINVAL (NULL node, kinds 0 or unknown bits), AR_ENOTPROC (not called
 * from a process of node), AR_ENOMEM. */
AR_EXTERN int ar_events_subscribe(ar_node_t *node, uint32_t kinds, ar_ref_t *sub);
/* Subscribes fn: it is called with each event of kinds, one at a time, on the node's
 * events thread (never a scheduler thread, never as a process: it may block, and may call
 * any ar_node_t function but ar_node_stop). All function subscribers share that thread,
 * so a slow one delays the others (each still has its own buffer); the runtime never
 * waits for it. The subscription lasts until ar_events_unsubscribe or ar_node_stop (which
 * delivers what is buffered first).
 * AR_EINVAL (NULL node or fn, bad kinds), AR_ECLOSED (node stopping), AR_ENOMEM. */
AR_EXTERN int ar_events_subscribe_fn(ar_node_t *node, uint32_t kinds,
                                     void (*fn)(const ar_event_t *e, void *ud), void *ud,
                                     ar_ref_t *sub);
/* Ends a subscription: no event is delivered for it once this returns (a callback of it
 * running on the events thread is waited for, unless this is called from that thread).
 * Event messages already in a process's mailbox stay, as a DOWN does after ar_demonitor
 * without flush. AR_EINVAL (NULL node), AR_ENOENT (unknown or ended ref). */
AR_EXTERN int ar_events_unsubscribe(ar_node_t *node, ar_ref_t sub);
/* Publishes a copy of *e (its strings are copied; seq and time_ns are filled in) to the
 * subscribers of its kind; never blocks. Supervisors emit RESTART, START_FAILED and
 * GIVE_UP this way; user behaviours emit AR_EV_USER. AR_EINVAL (NULL node or e, a kind
 * that is not exactly one known bit, or AR_EV_LAGGED). */
AR_EXTERN int ar_events_emit(ar_node_t *node, const ar_event_t *e);
/* True when some subscriber wants one of kinds now: lets an emitter skip building an
 * event nobody reads. One relaxed load. */
AR_EXTERN bool ar_events_wanted(ar_node_t *node, uint32_t kinds);
/* "SPAWN", "EXIT", ... for one kind bit; "UNKNOWN" otherwise. */
AR_EXTERN const char *ar_event_kind_name(uint32_t kind);

/* ---- Introspection ----------------------------------------------------------------- */
typedef struct ar_proc_info {
    ar_pid_t pid, parent;
    const char *behaviour; /* the behaviour's own static name */
    char name[AR_NAME_MAX]; /* registered name, "" if none */
    size_t mailbox_len; /* casts and calls queued (what mailbox_limit counts); replies,
                           timers, events and socket messages are not counted */
    size_t links, monitors /* held by it */, monitored_by;
    uint64_t handled;
    bool trap_exit, blocked /* parked in a call, receive or sleep */;
} ar_proc_info_t;
/* A snapshot of a live local process. AR_ENOPROC when it is dead or unknown. */
AR_EXTERN int ar_proc_info(ar_node_t *node, ar_pid_t pid, ar_proc_info_t *out);
typedef struct ar_node_stats {
    size_t processes;
    uint64_t spawned, exited, sent, delivered, dropped;
} ar_node_stats_t;
/* Node-wide counters. sent: CASTs and CALLs accepted (ar_send, ar_call, ar_ask);
 * delivered: messages handed to a handler or ar_receive (replies and timer messages
 * included); dropped: messages addressed to processes that are gone (sends, calls,
 * timers); processes: alive now. */
AR_EXTERN void ar_node_stats(ar_node_t *node, ar_node_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif /* ARBOR_H */
