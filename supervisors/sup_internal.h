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
    ar_child_spec_t spec; /* START (not simple_one_for_one): its strings live during the call */
    void *arg;            /* START on simple_one_for_one */
    char id[AR_NAME_MAX]; /* TERMINATE, RESTART, DELETE */
    ar_pid_t pid;         /* TERMINATE on simple_one_for_one */
} ar__sup_req_t;

typedef struct ar__sup_reply {
    int rc;
    ar_pid_t pid;
    ar_child_counts_t counts;
} ar__sup_reply_t;

int ar__sup_check_spec(const ar_sup_spec_t *s);
int ar__sup_check_child(const ar_child_spec_t *c);

#endif
