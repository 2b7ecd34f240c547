/* The in-process transport: stages are threads of one process. Each link
 * and direction is a bounded queue (exec/queue.h) of (micro-batch, buffer)
 * messages; a sender blocks while its link is full, so a fast stage cannot
 * run unboundedly ahead. A receiver takes messages in arrival order and
 * parks those it does not want yet, so stages may consume in whatever order
 * their IR says. Only the receiving thread touches its parked list. */
#include <stdlib.h>
#include <string.h>

#include "mailbox.h"
#include "transport.h"

typedef struct {
    int P;
    double timeout_s;
    const pp_backend_ops *b;
    void **stages;
    pp_mailbox *in; /* [dst][kind] */
} inproc;

static pp_mailbox *inbox_of(inproc *t, int dst, int kind)
{
    return &t->in[dst * 2 + kind];
}

static int inproc_send(pp_transport *tp, int src, int dst, int kind, int mb, const void *buf,
                       size_t bytes, pp_err *e)
{
    inproc *t = tp->state;
    void *copy = t->b->alloc(t->stages[src], bytes);
    if (!copy)
        return pp_errf(e, "out of memory for a message");
    t->b->copy(t->stages[src], copy, buf, bytes);
    int rc = pp_queue_push_timed(&inbox_of(t, dst, kind)->q, mb, copy, t->timeout_s);
    if (rc == PP_QUEUE_OK)
        return 0;
    t->b->release(t->stages[src], copy);
    if (rc == PP_QUEUE_TIMEOUT)
        return pp_errf(e, "timed out after %.0f s sending to stage %d", t->timeout_s, dst);
    return pp_errf(e, "run aborted");
}

static int inproc_recv(pp_transport *tp, int dst, int src, int kind, int mb, void *buf,
                       size_t bytes, pp_err *e)
{
    inproc *t = tp->state;
    void *msg = NULL;
    int rc = pp_mailbox_take(inbox_of(t, dst, kind), mb, t->timeout_s, &msg);
    if (rc == PP_MAILBOX_NOMEM) {
        t->b->release(t->stages[src], msg);
        return pp_errf(e, "out of memory");
    }
    if (rc == PP_QUEUE_TIMEOUT)
        return pp_errf(e, "timed out after %.0f s waiting for micro-batch %d from stage %d",
                       t->timeout_s, mb, src);
    if (rc != PP_QUEUE_OK)
        return pp_errf(e, "run aborted");
    t->b->copy(t->stages[dst], buf, msg, bytes);
    t->b->release(t->stages[src], msg);
    return 0;
}

static void inproc_abort(pp_transport *tp)
{
    inproc *t = tp->state;
    for (int i = 0; i < t->P * 2; i++)
        pp_queue_abort(&t->in[i].q);
}

typedef struct {
    const pp_backend_ops *b;
    void *stage;
} release_ctx;

static void release_msg(void *ctx, void *buf)
{
    release_ctx *c = ctx;
    c->b->release(c->stage, buf);
}

static void inproc_destroy(pp_transport *tp)
{
    inproc *t = tp->state;
    for (int d = 0; d < t->P; d++)
        for (int k = 0; k < 2; k++) {
            int src = k == PP_MSG_ACT ? d - 1 : d + 1; /* who allocated its messages */
            release_ctx rc = {t->b, t->stages[src >= 0 && src < t->P ? src : d]};
            pp_mailbox_free(inbox_of(t, d, k), release_msg, &rc);
        }
    free(t->in);
    free(t->stages);
    free(t);
    free(tp);
}

int pp_transport_inproc_create(int stages, int capacity, double timeout_s,
                               const pp_backend_ops *backend, void **backend_stages,
                               pp_transport **out, pp_err *e)
{
    pp_transport *tp = calloc(1, sizeof *tp);
    inproc *t = calloc(1, sizeof *t);
    int made = 0;
    if (!tp || !t)
        goto oom;
    t->P = stages;
    t->timeout_s = timeout_s;
    t->b = backend;
    t->stages = malloc((size_t)stages * sizeof *t->stages);
    t->in = calloc((size_t)stages * 2, sizeof *t->in);
    if (!t->stages || !t->in)
        goto oom;
    memcpy(t->stages, backend_stages, (size_t)stages * sizeof *t->stages);
    for (; made < stages * 2; made++)
        if (pp_mailbox_init(&t->in[made], capacity, e) < 0)
            goto fail;
    tp->send = inproc_send;
    tp->recv = inproc_recv;
    tp->abort = inproc_abort;
    tp->destroy = inproc_destroy;
    tp->state = t;
    *out = tp;
    return 0;
oom:
    pp_errf(e, "out of memory");
fail:
    for (int i = 0; i < made; i++)
        pp_queue_free(&t->in[i].q);
    if (t) {
        free(t->in);
        free(t->stages);
    }
    free(t);
    free(tp);
    return -1;
}
