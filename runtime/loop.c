/* The I/O thread: one libuv loop per node. For now it turns SIGINT/SIGTERM into a
 * graceful stop request (node config handle_signals); the distribution layer's sockets
 * will live here too. Other threads reach the loop only through uv_async_send. */
#include "internal.h"

#include <signal.h>
#include <uv.h>

struct ar__loop {
    uv_loop_t loop;
    uv_async_t stop;
    uv_signal_t sigint, sigterm;
    uv_thread_t thread;
    ar_node_t *node;
};

static void on_signal(uv_signal_t *h, int signum)
{
    (void)signum;
    ar_node_request_stop(((struct ar__loop *)h->data)->node);
}

static void on_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void on_stop(uv_async_t *h)
{
    uv_walk(h->loop, on_close_walk, NULL);
}

static void loop_main(void *arg)
{
    struct ar__loop *l = arg;
    uv_run(&l->loop, UV_RUN_DEFAULT);
}

int ar__loop_start(ar_node_t *node)
{
    if (!node->cfg.handle_signals) return 0; /* nothing for the I/O thread to do yet */
    struct ar__loop *l = ar__calloc(1, sizeof *l);
    if (!l) return AR_ENOMEM;
    l->node = node;
    if (uv_loop_init(&l->loop) != 0) {
        ar__free(l);
        return AR_ENOMEM;
    }
    uv_async_init(&l->loop, &l->stop, on_stop);
    uv_signal_init(&l->loop, &l->sigint);
    uv_signal_init(&l->loop, &l->sigterm);
    l->sigint.data = l->sigterm.data = l;
    uv_signal_start(&l->sigint, on_signal, SIGINT);
    uv_signal_start(&l->sigterm, on_signal, SIGTERM);
    if (uv_thread_create(&l->thread, loop_main, l) != 0) {
        uv_walk(&l->loop, on_close_walk, NULL);
        uv_run(&l->loop, UV_RUN_DEFAULT);
        uv_loop_close(&l->loop);
        ar__free(l);
        return AR_ENOMEM;
    }
    node->loop = l;
    return 0;
}

void ar__loop_stop(ar_node_t *node)
{
    struct ar__loop *l = node->loop;
    if (!l) return;
    uv_async_send(&l->stop);
    uv_thread_join(&l->thread);
    uv_loop_close(&l->loop);
    ar__free(l);
    node->loop = NULL;
}
