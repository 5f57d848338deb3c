/* stress_park: many park/resume cycles per process, across two schedulers.
 *
 * Client processes each make thousands of blocking calls to a few servers, mixed (by the
 * seed) with short ar_sleep and ar_receive-with-timeout parks, so every process parks and
 * resumes tens of thousands of times, often on the other scheduler. Each park leaves a
 * loop frame behind on a stack that is later reused: under ThreadSanitizer this is what
 * grew a fiber's shadow stack without bound before fibers were renewed per reuse.
 * Invariants: every call returns 0 with its own request echoed back (a call number and
 * the client's id), every sleep and timed receive returns as documented, and every
 * client finishes all its rounds.
 *
 * Usage: stress_park [seed]
 */
#include "stress_util.h"

#include <string.h>

#define N_SERVERS 3
#define N_CLIENTS 6
#define ROUNDS (ST_TSAN ? 5000 : 40000)

enum { TAG_GO = 1, TAG_REQ, TAG_NEVER };

typedef struct client {
    uint32_t id;
    ar_pid_t servers[N_SERVERS];
    st_rng_t rng;
    _Atomic uint32_t rounds_done;
    _Atomic int finished;
} client_t;

static client_t clients[N_CLIENTS];
static atomic_int finished;

static void server_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, m->data, m->len);
}
static const ar_behaviour_t server_b = {"park_server", NULL, server_handle, NULL};

static int client_init(ar_proc_t *self, void *arg, void **state)
{
    (void)self;
    *state = arg;
    return 0;
}

static bool never(const ar_msg_t *m, void *ud)
{
    (void)ud;
    return m->tag == TAG_NEVER;
}

static void client_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    client_t *c = state;
    if (m->tag != TAG_GO) return;
    ar_node_t *node = ar_node(self);
    for (uint32_t i = 0; i < ROUNDS; i++) {
        uint64_t req[2] = {c->id, i};
        unsigned pick = (unsigned)st_below(&c->rng, 100);
        if (pick < 2) {
            int rc = ar_sleep(self, 1);
            ST_EXPECT_RC(rc, 0, "ar_sleep");
        } else if (pick < 4) {
            ar_msg_t *got = NULL;
            int rc = ar_receive(self, never, NULL, 1, &got);
            ST_EXPECT_RC(rc, AR_ETIMEDOUT, "ar_receive of a message that never comes");
        } else {
            ar_buf_t r = {0};
            ar_pid_t to = c->servers[st_below(&c->rng, N_SERVERS)];
            int rc = ar_call(node, to, TAG_REQ, req, sizeof req, &r, ST_WAIT_MS);
            ST_EXPECT_RC(rc, 0, "ar_call");
            if (rc == 0) {
                uint64_t got[2] = {0, 0};
                if (r.len == sizeof got) memcpy(got, r.data, sizeof got);
                ST_CHECK(r.len == sizeof got && got[0] == c->id && got[1] == i,
                         "client %u round %u: another request's answer", c->id, i);
                ar_buf_free(&r);
            }
        }
        st_set(&c->rounds_done, i + 1);
    }
    atomic_fetch_add(&finished, 1);
}
static const ar_behaviour_t client_b = {"park_client", client_init, client_handle, NULL};

static void hang_report(void)
{
    for (int i = 0; i < N_CLIENTS; i++)
        fprintf(stderr, "client %d: %u of %u rounds\n", i, st_get(&clients[i].rounds_done),
                (unsigned)ROUNDS);
}

int main(int argc, char **argv)
{
    st_begin("stress_park", argc, argv);
    uint64_t t0 = st_now_ms();
    st_hang_report = hang_report;
    ar_node_t *node = st_node_start(2);
    ar_pid_t servers[N_SERVERS];
    for (int i = 0; i < N_SERVERS; i++) {
        int rc = ar_spawn(node, &server_b, NULL, NULL, &servers[i]);
        if (rc) st_fail("spawn server: %s", ar_err_name(rc));
    }
    ar_pid_t pids[N_CLIENTS];
    for (uint32_t i = 0; i < N_CLIENTS; i++) {
        clients[i].id = i;
        memcpy(clients[i].servers, servers, sizeof servers);
        clients[i].rng = st_rng_for(i);
        int rc = ar_spawn(node, &client_b, &clients[i], NULL, &pids[i]);
        if (rc) st_fail("spawn client: %s", ar_err_name(rc));
    }
    for (int i = 0; i < N_CLIENTS; i++) ar_send(node, pids[i], TAG_GO, NULL, 0);
    ST_WAIT(atomic_load(&finished) == N_CLIENTS, "every client finishing its rounds");
    int rc = ar_node_stop(node, ST_WAIT_MS);
    if (rc) st_fail("ar_node_stop: %s", ar_err_name(rc));
    return st_finish(t0);
}
