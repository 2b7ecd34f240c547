/* The in-process transport: stages are threads of one process. Each link
 * and direction is a bounded queue (queue.h) of (micro-batch, buffer)
 * messages; a sender blocks while its link is full, so a fast stage cannot
 * run unboundedly ahead. A receiver takes messages in arrival order and
 * parks those it does not want yet, so stages may consume in whatever order
 * their IR says. Only the receiving thread touches its parked list.
 *
 * An optional link model delays every message by `link_s` seconds on its
 * link, one message after another per link and direction, exactly as the
 * simulator's communication streams do: on one GPU, stages then see the
 * transfer times of a real interconnect. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailbox.h"
#include "transport.h"

/* A message in a mailbox: the sender's copy and when it has crossed the link. */
typedef struct {
    void *buf;
    double ready;
} inproc_msg;

typedef struct {
    int P;
    double timeout_s;
    double link_s;   /* transfer time of one message; 0: none */
    double *link_free; /* [src][kind]: when the link is free again (sender's own) */
    const pp_backend_ops *b;
    void **stages;
    pp_mailbox *in; /* [dst][kind] */
} inproc;

static pp_mailbox *inbox_of(inproc *t, int dst, int kind)
{
    return &t->in[dst * 2 + kind];
}

static double clock_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int inproc_send(pp_transport *tp, int src, int dst, int kind, int mb, const void *buf,
                       size_t bytes, pp_err *e)
{
    inproc *t = tp->state;
    inproc_msg *m = malloc(sizeof *m);
    void *copy = m ? t->b->alloc(t->stages[src], bytes) : NULL;
    if (!copy) {
        free(m);
        return pp_errf(e, "out of memory for a message");
    }
    t->b->copy(t->stages[src], copy, buf, bytes);
    m->buf = copy;
    m->ready = 0;
    if (t->link_s > 0) { /* after the link's previous message, as the simulator */
        double now = clock_s(), *free_at = &t->link_free[src * 2 + kind];
        m->ready = (*free_at > now ? *free_at : now) + t->link_s;
        *free_at = m->ready;
    }
    int rc = pp_queue_push_timed(&inbox_of(t, dst, kind)->q, mb, m, t->timeout_s);
    if (rc == PP_QUEUE_OK)
        return 0;
    t->b->release(t->stages[src], copy);
    free(m);
    if (rc == PP_QUEUE_TIMEOUT)
        return pp_errf(e, "timed out after %.0f s sending to stage %d", t->timeout_s, dst);
    return pp_errf(e, "run aborted");
}

static int inproc_recv(pp_transport *tp, int dst, int src, int kind, int mb, void *buf,
                       size_t bytes, pp_err *e)
{
    inproc *t = tp->state;
    inproc_msg *msg = NULL;
    int rc = pp_mailbox_take(inbox_of(t, dst, kind), mb, t->timeout_s, (void **)&msg);
    if (rc == PP_MAILBOX_NOMEM) {
        t->b->release(t->stages[src], msg->buf);
        free(msg);
        return pp_errf(e, "out of memory");
    }
    if (rc == PP_QUEUE_TIMEOUT)
        return pp_errf(e, "timed out after %.0f s waiting for micro-batch %d from stage %d",
                       t->timeout_s, mb, src);
    if (rc != PP_QUEUE_OK)
        return pp_errf(e, "run aborted");
    double wait = msg->ready - clock_s(); /* still on the link */
    if (wait > 0) {
        struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        while (nanosleep(&ts, &ts) != 0)
            ;
    }
    t->b->copy(t->stages[dst], buf, msg->buf, bytes);
    t->b->release(t->stages[src], msg->buf);
    free(msg);
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

static void release_msg(void *ctx, void *msg)
{
    release_ctx *c = ctx;
    c->b->release(c->stage, ((inproc_msg *)msg)->buf);
    free(msg);
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
    free(t->link_free);
    free(t->stages);
    free(t);
    free(tp);
}

int pp_transport_inproc_create(int stages, int capacity, double timeout_s, double link_s,
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
    t->link_s = link_s;
    t->b = backend;
    t->stages = malloc((size_t)stages * sizeof *t->stages);
    t->in = calloc((size_t)stages * 2, sizeof *t->in);
    t->link_free = calloc((size_t)stages * 2, sizeof *t->link_free);
    if (!t->stages || !t->in || !t->link_free)
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
        free(t->link_free);
        free(t->stages);
    }
    free(t);
    free(tp);
    return -1;
}
