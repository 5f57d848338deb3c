/* stress_io: the I/O thread's command inbox under contention (white-box).
 *
 * Processes on both schedulers and foreign threads submit commands in seeded bursts, with
 * pauses between them that let the inbox run empty (so the consumer rests its stub while
 * pushes are linking in) or not; then one more burst is submitted right before
 * ar_node_stop. Invariants: every command runs exactly once, on the I/O thread, in its
 * submitter's order, including those submitted just before the stop; nothing the
 * runtime allocated is left after it.
 *
 * Usage: stress_io [seed]
 */
#include "stress_util.h"

#include "../../runtime/internal.h"

#define N_PROCS 4
#define N_THREADS 3
#define N_SUBMITTERS (N_PROCS + N_THREADS + 1) /* the last: main, right before the stop */
#define PER (ST_TSAN ? 20000 : 200000)

typedef struct cmd {
    ar__io_cmd_t base;
    uint32_t who, seq;
} cmd_t;

static cmd_t *cmds[N_SUBMITTERS];
static uint32_t next_seq[N_SUBMITTERS]; /* the I/O thread's alone */
static atomic_ulong ran;
static pthread_t io_thread;             /* the I/O thread's alone */

static void run_cmd(ar__io_cmd_t *base, struct uv_loop_s *loop)
{
    cmd_t *c = (cmd_t *)base;
    if (!loop || ar__current_sched() != NULL) st_violation("command %u/%u off the I/O thread", c->who, c->seq);
    if (atomic_load_explicit(&ran, memory_order_relaxed) == 0) io_thread = pthread_self();
    else if (!pthread_equal(io_thread, pthread_self())) st_violation("commands on two threads");
    if (c->seq != next_seq[c->who])
        st_violation("submitter %u: command %u ran when %u was due", c->who, c->seq,
                     next_seq[c->who]);
    next_seq[c->who] = c->seq + 1;
    atomic_fetch_add_explicit(&ran, 1, memory_order_release);
}

/* Submits PER commands in seeded bursts; pauses let the inbox run dry now and then. */
static void submit_all(ar_node_t *node, uint32_t who, bool may_pause)
{
    st_rng_t rng = st_rng_for(who);
    for (uint32_t i = 0; i < PER;) {
        uint32_t burst = (uint32_t)st_range(&rng, 1, 2000);
        for (uint32_t k = 0; k < burst && i < PER; k++, i++) {
            cmds[who][i] = (cmd_t){.base.run = run_cmd, .who = who, .seq = i};
            ar__io_submit(node, &cmds[who][i].base);
        }
        if (may_pause && st_chance(&rng, 20)) st_nap_us((unsigned)st_range(&rng, 1, 200));
    }
}

static void proc_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    (void)state;
    uint32_t who;
    memcpy(&who, m->data, sizeof who);
    submit_all(ar_node(self), who, false); /* a process does not sleep its scheduler */
}
static const ar_behaviour_t proc_b = {"io_submitter", NULL, proc_handle, NULL};

typedef struct targ {
    ar_node_t *node;
    uint32_t who;
} targ_t;
static void *thread_main(void *arg)
{
    targ_t *t = arg;
    submit_all(t->node, t->who, true);
    return NULL;
}

int main(int argc, char **argv)
{
    st_begin("stress_io", argc, argv);
    uint64_t t0 = st_now_ms();
    int rc = ar_set_allocator(st_counting_allocator());
    if (rc) st_fail("ar_set_allocator: %s", ar_err_name(rc));
    for (int i = 0; i < N_SUBMITTERS; i++)
        if (!(cmds[i] = calloc(PER, sizeof(cmd_t)))) st_fail("out of memory");
    ar_node_t *node = st_node_start(2);
    for (uint32_t who = 0; who < N_PROCS; who++) {
        ar_pid_t p;
        if ((rc = ar_spawn(node, &proc_b, NULL, NULL, &p)) != 0)
            st_fail("spawn: %s", ar_err_name(rc));
        ar_send(node, p, 0, &who, sizeof who);
    }
    pthread_t th[N_THREADS];
    targ_t args[N_THREADS];
    for (uint32_t i = 0; i < N_THREADS; i++) {
        args[i] = (targ_t){node, N_PROCS + i};
        st_start_thread(&th[i], thread_main, &args[i]);
    }
    for (int i = 0; i < N_THREADS; i++) st_join(th[i]);
    ST_WAIT(atomic_load_explicit(&ran, memory_order_acquire) == (N_SUBMITTERS - 1) * (unsigned long)PER,
            "every command submitted so far to run");
    submit_all(node, N_SUBMITTERS - 1, false); /* and stop at once */
    if ((rc = ar_node_stop(node, ST_WAIT_MS)) != 0) st_fail("ar_node_stop: %s", ar_err_name(rc));
    unsigned long total = atomic_load_explicit(&ran, memory_order_acquire);
    if (total != N_SUBMITTERS * (unsigned long)PER)
        st_violation("%lu commands ran of %lu", total, N_SUBMITTERS * (unsigned long)PER);
    long live = atomic_load(st_live_blocks());
    if (live != 0) st_violation("%ld runtime blocks left after the stop", live);
    for (int i = 0; i < N_SUBMITTERS; i++) free(cmds[i]);
    return st_finish(t0);
}
