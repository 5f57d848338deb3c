/* The I/O thread's command inbox (white-box: ar__io_submit is internal; sockets and the
 * distribution layer hand their work over through it). Commands submitted from processes
 * on every scheduler and from foreign threads all run, once, on the one I/O thread (no
 * scheduler, not the submitter), in each submitter's order; commands submitted right
 * before ar_node_stop still run before it returns. */
#include "test_helpers.h"

#include "../runtime/internal.h"

enum { SUBMITTERS = 4, PER = 5000, FOREIGN = 2 };

typedef struct cmd {
    ar__io_cmd_t base;
    int who;
    int seq;
} cmd_t;

static cmd_t cmds[SUBMITTERS][PER];
static int next_seq[SUBMITTERS];        /* touched by the I/O thread alone */
static pthread_t io_thread;             /* the first runner, by the I/O thread alone */
static atomic_int ran, out_of_order, not_on_io, on_two_threads;
static pthread_t submitter_threads[SUBMITTERS];

static void run_cmd(ar__io_cmd_t *base, struct uv_loop_s *loop)
{
    cmd_t *c = (cmd_t *)base;
    if (!loop) atomic_fetch_add(&not_on_io, 1);
    if (atomic_load_explicit(&ran, memory_order_relaxed) == 0) io_thread = pthread_self();
    if (!pthread_equal(io_thread, pthread_self())) atomic_fetch_add(&on_two_threads, 1);
    if (ar__current_sched() != NULL) atomic_fetch_add(&not_on_io, 1);
    if (c->seq != next_seq[c->who]++) atomic_fetch_add(&out_of_order, 1);
    atomic_fetch_add_explicit(&ran, 1, memory_order_release);
}

static void submit_all(ar_node_t *node, int who)
{
    submitter_threads[who] = pthread_self();
    for (int i = 0; i < PER; i++) {
        cmds[who][i] = (cmd_t){.base.run = run_cmd, .who = who, .seq = i};
        ar__io_submit(node, &cmds[who][i].base);
    }
}

static void submitter_handle(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    int who;
    memcpy(&who, m->data, sizeof who);
    submit_all(ar_node(self), who);
}
static const ar_behaviour_t submitter_b = {"submitter", NULL, submitter_handle, NULL};

typedef struct thread_arg {
    ar_node_t *node;
    int who;
} thread_arg_t;
static void *submitter_thread(void *arg)
{
    thread_arg_t *t = arg;
    submit_all(t->node, t->who);
    return NULL;
}

Test(loop, commands_from_processes_and_threads_run_once_in_order_on_the_io_thread,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(2);
    for (int who = FOREIGN; who < SUBMITTERS; who++)
        th_send(node, th_spawn(node, &submitter_b, NULL), 0, &who, sizeof who);
    pthread_t th[FOREIGN];
    thread_arg_t args[FOREIGN];
    for (int who = 0; who < FOREIGN; who++) {
        args[who] = (thread_arg_t){node, who};
        cr_assert_eq(pthread_create(&th[who], NULL, submitter_thread, &args[who]), 0);
    }
    for (int who = 0; who < FOREIGN; who++) pthread_join(th[who], NULL);
    th_await(atomic_load_explicit(&ran, memory_order_acquire) == SUBMITTERS * PER);
    cr_assert_eq(atomic_load(&out_of_order), 0, "a submitter's commands ran out of order");
    cr_assert_eq(atomic_load(&not_on_io), 0, "a command ran on a scheduler");
    cr_assert_eq(atomic_load(&on_two_threads), 0, "commands ran on more than one thread");
    for (int who = 0; who < SUBMITTERS; who++) {
        cr_assert_eq(next_seq[who], PER);
        cr_assert(!pthread_equal(io_thread, submitter_threads[who]), "ran on its submitter");
    }
    th_node_stop(node);
    cr_assert_eq(atomic_load(&ran), SUBMITTERS * PER, "a command ran twice");
}

Test(loop, commands_submitted_right_before_the_stop_run_before_it_returns,
     .timeout = TH_TIMEOUT)
{
    ar_node_t *node = th_node(1);
    submit_all(node, 0);
    th_node_stop(node);
    cr_assert_eq(atomic_load(&ran), PER);
    cr_assert_eq(next_seq[0], PER);
    cr_assert_eq(atomic_load(&out_of_order), 0);
}
