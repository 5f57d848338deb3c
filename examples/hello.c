/* hello: the smallest arbor program. Start a node, spawn a process, send it a message,
 * call it, stop the node. */
#include <arbor.h>
#include <stdio.h>

static void greeter(ar_proc_t *self, void *state, const ar_msg_t *m)
{
    if (m->kind == AR_MSG_CAST)
        printf("greeter got: %.*s\n", (int)m->len, (const char *)m->data);
    else if (m->kind == AR_MSG_CALL)
        ar_reply(ar_node(self), m->reply_to, "hello, world", 12);
}

int main(void)
{
    static const ar_behaviour_t greeter_b = {.name = "greeter", .handle = greeter};
    ar_node_config_t cfg;
    ar_node_t *node;
    ar_pid_t pid;
    ar_buf_t reply;

    ar_node_config_init(&cfg);
    if (ar_node_start(&cfg, &node) != 0)
        return 1;
    if (ar_spawn(node, &greeter_b, NULL, NULL, &pid) != 0 ||
        ar_send(node, pid, 0, "hi", 2) != 0 ||
        ar_call(node, pid, 0, NULL, 0, &reply, 1000) != 0) {
        ar_node_stop(node, 1000);
        return 1;
    }
    printf("greeter answered: %.*s\n", (int)reply.len, (const char *)reply.data);
    ar_buf_free(&reply);
    return ar_node_stop(node, 1000) == 0 ? 0 : 1;
}
