/* The in-process transport: stages are threads of one process. Each link
 * and direction is a bounded queue (queue.h) of (micro-batch, buffer)
 * messages; a sender blocks while its link is full, so a fast stage cannot
 * run unboundedly ahead. A receiver takes messages in arrival order and
 * parks those it does not want yet, so stages may consume in whatever order
 * their IR says. Only the receiving thread touches its parked list.
 *
 * Message buffers are recycled per link: the receiver hands each back to a
 * small pool the sender takes from, so a run allocates as many as are ever
 * in flight on a link at once, not one per micro-batch.
 *
 * On a backend with fences (a GPU), neither side waits on the host: the
 * sender queues its copy into the message behind a wait for the message's
 * fence (the previous reader is done with it) and marks the fence; the
 * receiver queues its copy out behind a wait for the same fence (the
 * writer is done) and marks it again. The mailbox's lock orders the two
 * hosts' calls, so each wait sees the mark it needs.
 *
 * An optional link model delays every message by `link_s` seconds on its
 * link, one message after another per link and direction, exactly as the
 * simulator's communication streams do: on one GPU, stages then see the
 * transfer times of a real interconnect. Its delays are host times, so
 * with a link model the copies wait on the host (no fences). A link joins
 * two ranks: where a rank holds several stages, messages between its own
 * stages take no time, and those of its stages to the same other rank
 * share one link. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailbox.h"
#include "spares.h"
#include "transport.h"

/* A message in a mailbox: the sender's copy, when it has crossed the
 * link, and its fence (NULL without fences). */
typedef struct {
    void *buf;
    double ready;
    void *fence;
} inproc_msg;

/* Spent messages of one link and direction, for its sender to reuse. */
typedef struct {
    pthread_mutex_t mu;
    pp_spares msgs;
} msg_pool;

/* When a link from a rank to `to` is free again. */
typedef struct {
    int to;
    double free;
} link_slot;

/* A rank sends to its two neighbours (and, looped, around the end). */
#define LINKS_PER_RANK 4

typedef struct {
    int P;
    double timeout_s;
    double link_s;   /* transfer time of one message; 0: none */
    int fenced;      /* the backend orders copies with fences (and no link model) */
    int *rank;         /* [stage]: the rank that runs it */
    link_slot *links;  /* [rank][LINKS_PER_RANK]: its outgoing links (the sender's own) */
    const pp_backend_ops *b;
    void **stages;
    pp_mailbox *in; /* [dst][kind] */
    msg_pool *spent; /* [dst][kind], as in */
} inproc;

static pp_mailbox *inbox_of(inproc *t, int dst, int kind)
{
    return &t->in[dst * 2 + kind];
}

/* A message for link (dst, kind): a spent one, or a fresh one from src's
 * backend. NULL when out of memory. */
static inproc_msg *msg_get(inproc *t, int src, int dst, int kind, size_t bytes)
{
    msg_pool *p = &t->spent[dst * 2 + kind];
    pthread_mutex_lock(&p->mu);
    inproc_msg *m = pp_spares_pop(&p->msgs);
    pthread_mutex_unlock(&p->mu);
    if (m)
        return m;
    m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->buf = t->b->alloc(t->stages[src], bytes);
    if (m->buf && t->fenced)
        m->fence = t->b->fence_new(t->stages[src]);
    if (!m->buf || (t->fenced && !m->fence)) {
        if (m->buf)
            t->b->release(t->stages[src], m->buf);
        free(m);
        return NULL;
    }
    return m;
}

static void msg_free(const pp_backend_ops *b, void *stage, inproc_msg *m)
{
    if (m->fence)
        b->fence_free(stage, m->fence);
    b->release(stage, m->buf);
    free(m);
}

/* Copies between a stage's buffer and a message: queued behind the
 * message's fence and marking it, or waited for on the host. */
static void msg_copy(inproc *t, int stage, inproc_msg *m, void *dst, const void *src,
                     size_t bytes)
{
    void *st = t->stages[stage];
    if (!m->fence) {
        t->b->copy(st, dst, src, bytes);
        return;
    }
    t->b->fence_wait(st, m->fence);
    t->b->copy_queued(st, dst, src, bytes);
    t->b->fence_mark(st, m->fence);
}

/* Hands a received message back to its link's pool. */
static void msg_put(inproc *t, int src, int dst, int kind, inproc_msg *m)
{
    msg_pool *p = &t->spent[dst * 2 + kind];
    pthread_mutex_lock(&p->mu);
    int kept = pp_spares_push(&p->msgs, m) == 0;
    pthread_mutex_unlock(&p->mu);
    if (!kept) /* no room to keep it: let it go */
        msg_free(t->b, t->stages[src], m);
}

static double clock_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The free time of the link from rank `from` to rank `to`; NULL between
 * stages of one rank (no link), or for a fifth neighbour (none exists in
 * the built-in placements: the message then takes no time). */
static double *link_free_at(inproc *t, int from, int to)
{
    if (from == to)
        return NULL;
    link_slot *l = &t->links[(size_t)from * LINKS_PER_RANK];
    for (int i = 0; i < LINKS_PER_RANK; i++) {
        if (l[i].to == to)
            return &l[i].free;
        if (l[i].to < 0) {
            l[i].to = to;
            return &l[i].free;
        }
    }
    return NULL;
}

static int inproc_send(pp_transport *tp, int src, int dst, int kind, int mb, const void *buf,
                       size_t bytes, pp_err *e)
{
    inproc *t = tp->state;
    inproc_msg *m = msg_get(t, src, dst, kind, bytes);
    if (!m)
        return pp_errf(e, "out of memory for a message");
    msg_copy(t, src, m, m->buf, buf, bytes);
    m->ready = 0;
    double *free_at = t->link_s > 0 ? link_free_at(t, t->rank[src], t->rank[dst]) : NULL;
    if (free_at) { /* after the link's previous message, as the simulator */
        double now = clock_s();
        m->ready = (*free_at > now ? *free_at : now) + t->link_s;
        *free_at = m->ready;
    }
    int rc = pp_queue_push_timed(&inbox_of(t, dst, kind)->q, mb, m, t->timeout_s);
    if (rc == PP_QUEUE_OK)
        return 0;
    msg_free(t->b, t->stages[src], m);
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
    if (rc == PP_MAILBOX_NOMEM || rc == PP_MAILBOX_UNWANTED) {
        msg_free(t->b, t->stages[src], msg);
        return rc == PP_MAILBOX_NOMEM
                   ? pp_errf(e, "out of memory")
                   : pp_errf(e, "stage %d sent micro-batch %d twice or too far ahead", src,
                             inbox_of(t, dst, kind)->unwanted_mb);
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
    msg_copy(t, dst, msg, buf, msg->buf, bytes);
    msg_put(t, src, dst, kind, msg);
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
    msg_free(c->b, c->stage, msg);
}

static void inproc_destroy(pp_transport *tp)
{
    inproc *t = tp->state;
    for (int d = 0; d < t->P; d++)
        for (int k = 0; k < 2; k++) {
            int src = k == PP_MSG_ACT ? d - 1 : d + 1; /* who allocated its messages */
            release_ctx rc = {t->b, t->stages[src >= 0 && src < t->P ? src : d]};
            pp_mailbox_free(inbox_of(t, d, k), release_msg, &rc);
            msg_pool *p = &t->spent[d * 2 + k];
            for (void *m; (m = pp_spares_pop(&p->msgs));)
                release_msg(&rc, m);
            free(p->msgs.items);
            pthread_mutex_destroy(&p->mu);
        }
    free(t->spent);
    free(t->in);
    free(t->links);
    free(t->rank);
    free(t->stages);
    free(t);
    free(tp);
}

int pp_transport_inproc_create(int stages, int capacity, double timeout_s, double link_s,
                               const pp_backend_ops *backend, void **backend_stages,
                               const int *rank_of, pp_transport **out, pp_err *e)
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
    t->fenced = link_s <= 0 && backend->fence_new && backend->fence_free &&
                backend->fence_mark && backend->fence_wait && backend->copy_queued;
    t->stages = malloc((size_t)stages * sizeof *t->stages);
    t->in = calloc((size_t)stages * 2, sizeof *t->in);
    t->rank = malloc((size_t)stages * sizeof *t->rank);
    t->links = malloc((size_t)stages * LINKS_PER_RANK * sizeof *t->links);
    t->spent = calloc((size_t)stages * 2, sizeof *t->spent);
    if (!t->stages || !t->in || !t->rank || !t->links || !t->spent)
        goto oom;
    for (int s = 0; s < stages; s++) /* ranks are below the number of stages */
        t->rank[s] = rank_of ? rank_of[s] : s;
    for (int i = 0; i < stages * LINKS_PER_RANK; i++)
        t->links[i] = (link_slot){-1, 0.0};
    for (int i = 0; i < stages * 2; i++)
        pthread_mutex_init(&t->spent[i].mu, NULL);
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
        for (int i = 0; t->spent && i < stages * 2; i++)
            pthread_mutex_destroy(&t->spent[i].mu);
        free(t->spent);
        free(t->in);
        free(t->links);
        free(t->rank);
        free(t->stages);
    }
    free(t);
    free(tp);
    return -1;
}
