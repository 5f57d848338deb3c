/* Pipelining: the bucket requests of one read are sent all at once (ar_ask), then their
 * answers are taken in request order (ar_receive), so that 16 pipelined GETs cost their
 * bucket one wake-up and the connection one wait instead of 16 round trips.
 *
 * Order is kept per key: every request of a batch for one key goes to the same pid, the
 * first one found, so they reach it in the order sent. If that bucket ends under them
 * (DEL, expiry, crash, reap), each of them fails in turn and is run again with a call,
 * still in order. Requests for different keys run in parallel, as they would on different
 * Redis shards. Anything else (PING, DBSIZE, multi-key DEL...) first waits for the batch:
 * it sees every earlier request done. */
#include "kvcache.h"

#include <string.h>

typedef struct kv_slot {
    kv_req_t *req;    /* kept until answered: a failed request runs again from it */
    const char *text; /* answered at once (a miss, a refusal); else asked or to run */
    ar_pid_t pid;     /* the bucket asked */
    ar_ref_t ref;     /* the ask; 0: not asked */
    int op;
} kv_slot_t;

static bool same_key(const kv_arg_t *a, const kv_arg_t *b)
{
    return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
}

/* The pid an earlier request of this batch asked for key, if any. */
static bool batch_pid(const kv_conn_t *c, const kv_arg_t *key, ar_pid_t *pid)
{
    for (size_t i = c->nslots; i-- > 0;)
        if (c->slots[i].ref && same_key(&c->slots[i].req->argv[1], key)) {
            *pid = c->slots[i].pid;
            return true;
        }
    return false;
}

bool kv_batch_add(ar_proc_t *self, kv_conn_t *c, kv_req_t *req)
{
    kv_ask_t a;
    if (!kv_prepare(c, req, &a)) return false;
    if (c->nslots == c->slots_cap) {
        size_t cap = c->slots_cap ? c->slots_cap * 2 : 16;
        kv_slot_t *s = ar_realloc(c->slots, cap * sizeof *s);
        if (!s) return false; /* no room: it runs alone */
        c->slots = s;
        c->slots_cap = cap;
    }
    kv_slot_t *s = &c->slots[c->nslots];
    *s = (kv_slot_t){.req = req, .op = a.op};
    int rc = 0;
    if (a.error)
        s->text = a.error;
    else if (!batch_pid(c, a.key, &s->pid))
        rc = a.start ? ar_registry_get_or_spawn(c->reg, (ar_key_t){a.key->str, a.key->len}, &s->pid)
                     : ar_registry_lookup(c->reg, (ar_key_t){a.key->str, a.key->len}, &s->pid);
    if (rc == AR_ENOPROC && !a.start)
        s->text = a.missing;
    else if (rc == 0 && !s->text)
        rc = ar_ask(self, s->pid, (uint32_t)a.op, a.payload, a.len, AR_INFINITY, &s->ref);
    c->nslots++;
    /* A request not asked runs with a call at the flush, in its turn: flushing now keeps
     * any later request for its key from being asked before it. */
    if (c->nslots == KV_BATCH || (!s->text && !s->ref)) kv_batch_flush(self, c);
    return true;
}

static bool is_answer(const ar_msg_t *m, void *ref)
{
    return m->kind == AR_MSG_REPLY && m->ref == *(ar_ref_t *)ref;
}

void kv_batch_flush(ar_proc_t *self, kv_conn_t *c)
{
    for (size_t i = 0; i < c->nslots; i++) {
        kv_slot_t *s = &c->slots[i];
        if (s->text) {
            kv_out(c, s->text, strlen(s->text));
            continue;
        }
        bool again = !s->ref;
        if (s->ref) {
            ar_msg_t *m;
            int rc = ar_receive(self, is_answer, &s->ref, AR_INFINITY, &m);
            if (rc != 0) AR_FAIL(self, "ar_receive: %s", ar_strerror(rc)); /* no stack */
            if (m->reason.code == AR_NORMAL)
                kv_out_reply(c, m->data, m->len);
            else if (s->op == KV_CRASH && m->reason.code == AR_ERROR)
                kv_out(c, kv_crashed, strlen(kv_crashed));
            else
                again = true; /* its bucket ended before it answered */
            ar_msg_release(self, m);
        }
        if (again) kv_command(self, c, s->req);
    }
    kv_batch_free(c);
}

void kv_batch_free(kv_conn_t *c)
{
    for (size_t i = 0; i < c->nslots; i++) kv_req_free(c->slots[i].req);
    c->nslots = 0;
}
