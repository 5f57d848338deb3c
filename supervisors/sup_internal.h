/* Shared by supervisor.c and sup_api.c: the requests the ar_sup_* calls send a
 * supervisor, and its answers. Built on include/arbor.h alone. */
#ifndef AR_SUP_INTERNAL_H
#define AR_SUP_INTERNAL_H

#include <arbor.h>

#include <sys/types.h>

enum {
    AR__SUP_START = 0x5a500001u, /* tags of the CALLs; RETRY is a CAST to itself */
    AR__SUP_TERMINATE,
    AR__SUP_RESTART,
    AR__SUP_DELETE,
    AR__SUP_WHICH,
    AR__SUP_COUNT,
    AR__SUP_STOP,
    AR__SUP_RETRY,
};

typedef struct ar__sup_req {
    int timeout_ms;       /* STOP: the whole tree is stopped within it (AR_INFINITY: no limit) */
    ar_child_spec_t spec; /* START (not simple_one_for_one): its strings live during the call */
    void *arg;            /* START on simple_one_for_one */
    char id[AR_NAME_MAX]; /* TERMINATE, RESTART, DELETE */
    ar_pid_t pid;         /* TERMINATE on simple_one_for_one */
} ar__sup_req_t;

typedef struct ar__sup_reply { /* WHICH: the header, children follow (counts.specs) */
    int rc;
    ar_pid_t pid;
    ar_child_counts_t counts;
} ar__sup_reply_t;

/* A supervisor answers STOP once its tree is down: the caller waits the stop's own time
 * and this much more for the answer to travel, before it kills the supervisor. */
#define AR__SUP_STOP_GRACE_MS 1000
/* How long the ar_sup_* calls but ar_sup_stop wait for an answer: AR_SUP_CALL_MS,
 * shortened only by the tests. */
extern int ar__sup_call_ms;

int ar__sup_check_spec(const ar_sup_spec_t *s);
int ar__sup_check_child(const ar_child_spec_t *c);

#endif
