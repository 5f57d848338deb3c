/* counter_registry: keyed counters, one process per key, started on first use and reaped
 * when idle (passivation). Each counter saves its value when it is reaped and restores it
 * when the key comes back, so a reaped key loses nothing but its memory.
 * The registry's REAP events are printed as they happen. */
#include <arbor.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum { INC = 1, GET = 2 };

/* ---- a tiny "store": where a counter keeps its value while it is passivated ---- */
#define STORE_MAX 16
static struct { char key[32]; long value; } store[STORE_MAX];
static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;

static long *store_slot(const ar_key_t *k)
{
    for (int i = 0; i < STORE_MAX; i++)
        if (store[i].key[0] && strlen(store[i].key) == k->len && !memcmp(store[i].key, k->data, k->len))
            return &store[i].value;
    for (int i = 0; i < STORE_MAX; i++)
        if (!store[i].key[0] && k->len < sizeof store[i].key) {
            memcpy(store[i].key, k->data, k->len);
            return &store[i].value;
        }
    return NULL;
}

/* ---- the counter behaviour ---- */
typedef struct counter {
    char key[32];
    long value;
} counter_t;

static int counter_init(ar_proc_t *self, void *arg, void **state)
{
    const ar_registry_arg_t *ra = arg; /* the key, valid during init: copy it */
    counter_t *c = ar_calloc(1, sizeof *c);
    if (!c || ra->key.len >= sizeof c->key) {
        ar_free(c);
        return AR_ENOMEM;
    }
    memcpy(c->key, ra->key.data, ra->key.len);
    pthread_mutex_lock(&store_lock);
    long *saved = store_slot(&ra->key);
    if (saved) c->value = *saved;
    pthread_mutex_unlock(&store_lock);
    printf("  [%s] started with value %ld\n", c->key, c->value);
    *state = c;
    return 0;
}

static void counter_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    counter_t *c = state;
    if (m->tag == INC) c->value++;
    if (m->kind == AR_MSG_CALL) ar_reply(ar_node(self), m->reply_to, &c->value, sizeof c->value);
}

static void counter_terminate(ar_proc_t *self, void *state, ar_reason_t why)
{
    counter_t *c = state;
    pthread_mutex_lock(&store_lock);
    ar_key_t k = {c->key, strlen(c->key)};
    long *slot = store_slot(&k);
    if (slot) *slot = c->value; /* passivated: keep the value for the next incarnation */
    pthread_mutex_unlock(&store_lock);
    ar_free(c);
}

static const ar_behaviour_t counter_b = {"counter", counter_init, counter_handle, counter_terminate};

/* ---- watching the registry's REAP events ---- */
static pthread_mutex_t reaps_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reaps_cond = PTHREAD_COND_INITIALIZER;
static int reaps;

static void on_event(const ar_event_t *e, void *ud)
{
    (void)ud;
    char pid[AR_PID_STRLEN];
    ar_pid_format(e->pid, pid, sizeof pid);
    printf("  event: REAP of key \"%s\" (%s, %s)\n", e->name ? e->name : "", pid,
           e->behaviour ? e->behaviour : "?");
    pthread_mutex_lock(&reaps_lock);
    reaps++;
    pthread_cond_broadcast(&reaps_cond);
    pthread_mutex_unlock(&reaps_lock);
}

static bool wait_reaps(int n, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    pthread_mutex_lock(&reaps_lock);
    int rc = 0;
    while (reaps < n && rc == 0) rc = pthread_cond_timedwait(&reaps_cond, &reaps_lock, &until);
    bool ok = reaps >= n;
    pthread_mutex_unlock(&reaps_lock);
    return ok;
}

static long get(ar_registry_t *reg, const char *key)
{
    ar_buf_t reply;
    long v = -1;
    if (ar_registry_call(reg, (ar_key_t){key, strlen(key)}, GET, NULL, 0, &reply, 1000) == 0) {
        memcpy(&v, reply.data, sizeof v);
        ar_buf_free(&reply);
    }
    return v;
}

int main(void)
{
    ar_node_config_t cfg;
    ar_node_t *node;
    ar_node_config_init(&cfg);
    if (ar_node_start(&cfg, &node) != 0) return 1;
    ar_ref_t sub;
    ar_events_subscribe_fn(node, AR_EV_REAP, on_event, NULL, &sub);

    ar_registry_config_t rc = {.behaviour = &counter_b, .idle_ms = 200, .name = "counters"};
    ar_registry_t *reg;
    if (ar_registry_start(node, &rc, &reg) != 0) return 1;

    printf("counting: alice x3, bob x2\n");
    const char *keys[] = {"alice", "alice", "bob", "alice", "bob"};
    for (int i = 0; i < 5; i++)
        ar_registry_send(reg, (ar_key_t){keys[i], strlen(keys[i])}, INC, NULL, 0);
    printf("alice = %ld, bob = %ld, keys alive: %zu\n", get(reg, "alice"), get(reg, "bob"),
           ar_registry_count(reg));

    printf("idle for a while: both counters are reaped\n");
    bool reaped = wait_reaps(2, 5000);
    /* the event comes as the entry ends; its key leaves the table right after */
    for (int i = 0; i < 1000 && ar_registry_count(reg) > 0; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    printf("keys alive: %zu\n", ar_registry_count(reg));

    printf("alice again: the key comes back with its value\n");
    ar_registry_send(reg, (ar_key_t){"alice", 5}, INC, NULL, 0);
    long alice = get(reg, "alice");
    printf("alice = %ld, keys alive: %zu\n", alice, ar_registry_count(reg));

    ar_registry_stop(reg);
    int stopped = ar_node_stop(node, 5000);
    return reaped && alice == 4 && stopped == 0 ? 0 : 1;
}
