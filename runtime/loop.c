/* The I/O thread: one libuv loop per node, running from ar_node_start to ar_node_stop.
 *
 * Other threads hand it work through its command inbox: Vyukov's intrusive MPSC queue
 * (one atomic exchange per command, no lock) and one uv_async_t. uv_async_send coalesces
 * (a million sends come out as some thousands of callbacks), so the callback drains the
 * whole inbox each time; a command whose push is still linking in when the callback runs
 * is taken by the callback its own uv_async_send brings. Commands run on the I/O thread,
 * once each, in the order each submitting thread pushed them. No libuv handle is ever
 * touched from another thread.
 *
 * It also turns SIGINT/SIGTERM into a graceful stop request (node config handle_signals).
 * The distribution layer (dist/conn.c) and process-owned sockets (socket_io.c) run their
 * libuv handles on this loop.
 *
 * Stop: ar_node_stop stops the loop after every process has ended, so nothing submits any
 * more; the last commands run before the handles close.
 */
#include "internal.h"

#include <signal.h>
#include <uv.h>

struct ar__loop {
    uv_loop_t loop;
    uv_async_t wake; /* commands arrived, or the stop */
    uv_signal_t sigint, sigterm;
    uv_thread_t thread;
    ar_node_t *node;
    struct ar__pool_cache cache; /* the I/O thread's pooled blocks */
    _Atomic int stopping;
    /* the inbox (internal.h's MPSC queue): producers exchange `head`; the I/O thread alone
     * moves `tail` */
    _Atomic uintptr_t head;
    struct ar__qnode *tail;
    struct ar__qnode stub;
};

static void inbox_init(struct ar__loop *l)
{
    atomic_store_explicit(&l->stub.next, NULL, memory_order_relaxed);
    atomic_store_explicit(&l->head, (uintptr_t)&l->stub, memory_order_relaxed);
    l->tail = &l->stub;
}

static ar__io_cmd_t *inbox_pop(struct ar__loop *l)
{
    return (ar__io_cmd_t *)ar__mpsc_pop(&l->head, &l->tail, &l->stub, 0);
}

void ar__io_submit(ar_node_t *node, ar__io_cmd_t *cmd)
{
    struct ar__loop *l = node->loop;
    ar__mpsc_push(&l->head, &cmd->q, 0);
    uv_async_send(&l->wake); /* after the push: a pop that missed it is called again */
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    ar_node_request_stop(((struct ar__loop *)h->data)->node);
}

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void on_wake(uv_async_t *h)
{
    struct ar__loop *l = h->data;
    ar__io_cmd_t *c;
    while ((c = inbox_pop(l)) != NULL) c->run(c, &l->loop);
    /* acquire: pairs with ar__loop_stop's store; every command came before it, but the
     * drain above may have read the inbox before the last of them: drain it again, so
     * that no command (a socket layer's final close) finds its handles closed under it */
    if (atomic_load_explicit(&l->stopping, memory_order_acquire)) {
        while ((c = inbox_pop(l)) != NULL) c->run(c, &l->loop);
        uv_walk(h->loop, close_handle, NULL);
    }
}

static void loop_main(void *arg)
{
    struct ar__loop *l = arg;
    /* it makes and frees the envelopes and frames of the distribution layer: pooled */
    ar__pool_thread_cache(&l->node->depot, &l->cache);
    uv_run(&l->loop, UV_RUN_DEFAULT);
    ar__pool_cache_flush(&l->node->depot, &l->cache);
    ar__pool_thread_cache(NULL, NULL);
}

int ar__loop_start(ar_node_t *node)
{
    struct ar__loop *l = ar__calloc(1, sizeof *l);
    if (!l) return AR_ENOMEM;
    l->node = node;
    inbox_init(l);
    if (uv_loop_init(&l->loop) != 0) {
        ar__free(l);
        return AR_ENOMEM;
    }
    uv_async_init(&l->loop, &l->wake, on_wake);
    l->wake.data = l;
    if (node->cfg.handle_signals) {
        uv_signal_init(&l->loop, &l->sigint);
        uv_signal_init(&l->loop, &l->sigterm);
        l->sigint.data = l->sigterm.data = l;
        uv_signal_start(&l->sigint, on_signal, SIGINT);
        uv_signal_start(&l->sigterm, on_signal, SIGTERM);
    }
    node->loop = l; /* before the thread: a command may come at once */
    if (uv_thread_create(&l->thread, loop_main, l) != 0) {
        node->loop = NULL;
        uv_walk(&l->loop, close_handle, NULL);
        uv_run(&l->loop, UV_RUN_DEFAULT);
        uv_loop_close(&l->loop);
        ar__free(l);
        return AR_ENOMEM;
    }
    return 0;
}

void ar__loop_stop(ar_node_t *node)
{
    struct ar__loop *l = node->loop;
    if (!l) return;
    /* release: the commands submitted before are seen by the callback that sees this */
    atomic_store_explicit(&l->stopping, 1, memory_order_release);
    uv_async_send(&l->wake);
    uv_thread_join(&l->thread);
    AR__ASSERT(inbox_pop(l) == NULL); /* nothing may be submitted once processes are gone */
    uv_loop_close(&l->loop);
    ar__free(l);
    node->loop = NULL;
}
