/* The in-process transport: stages are threads of one process. Each link
 * and direction is a bounded FIFO of (micro-batch, buffer) messages; a
 * sender blocks while its link is full (so a fast stage cannot run
 * unboundedly ahead), a receiver takes the message for the micro-batch it
 * names, leaving earlier arrivals for later receives. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "transport.h"

typedef struct {
    int mb;
    void *buf;
} message;

typedef struct {
    message *items; /* arrival order */
    int count;
} link_box;

typedef struct {
    int P, capacity;
    double timeout_s;
    const pp_backend_ops *b;
    void **stages;
    link_box *boxes; /* [dst][kind] */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int aborted;
} inproc;

static link_box *box_of(inproc *t, int dst, int kind)
{
    return &t->boxes[dst * 2 + kind];
}

static void deadline_in(struct timespec *ts, double seconds)
{
    clock_gettime(CLOCK_REALTIME, ts);
    double whole = (double)(long)seconds;
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static int inproc_send(pp_transport *tp, int src, int dst, int kind, int mb, const void *buf,
                       size_t bytes, pp_err *e)
{
    inproc *t = tp->state;
    void *copy = t->b->alloc(t->stages[src], bytes);
    if (!copy)
        return pp_errf(e, "out of memory for a message");
    t->b->copy(t->stages[src], copy, buf, bytes);
    struct timespec dl;
    deadline_in(&dl, t->timeout_s);
    pthread_mutex_lock(&t->mu);
    link_box *box = box_of(t, dst, kind);
    int rc = 0;
    while (box->count >= t->capacity && !t->aborted && rc == 0)
        if (pthread_cond_timedwait(&t->cv, &t->mu, &dl) == ETIMEDOUT)
            rc = pp_errf(e, "timed out after %.0f s sending to stage %d", t->timeout_s, dst);
    if (t->aborted && rc == 0)
        rc = pp_errf(e, "run aborted");
    if (rc == 0) {
        box->items[box->count++] = (message){mb, copy};
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    if (rc < 0)
        t->b->release(t->stages[src], copy);
    return rc;
}

static int take(link_box *box, int mb, void **buf)
{
    for (int i = 0; i < box->count; i++)
        if (box->items[i].mb == mb) {
            *buf = box->items[i].buf;
            memmove(&box->items[i], &box->items[i + 1], (size_t)(box->count - i - 1) * sizeof(message));
            box->count--;
            return 1;
        }
    return 0;
}

static int inproc_recv(pp_transport *tp, int dst, int src, int kind, int mb, void *buf,
                       size_t bytes, pp_err *e)
{
    inproc *t = tp->state;
    void *msg = NULL;
    struct timespec dl;
    deadline_in(&dl, t->timeout_s);
    pthread_mutex_lock(&t->mu);
    link_box *box = box_of(t, dst, kind);
    int rc = 0;
    while (!take(box, mb, &msg) && rc == 0) {
        if (t->aborted)
            rc = pp_errf(e, "run aborted");
        else if (box->count >= t->capacity)
            rc = pp_errf(e, "link from stage %d is full and holds no %s of micro-batch %d: "
                            "the schedule's orders do not match",
                         src, kind == PP_MSG_ACT ? "activation" : "gradient", mb);
        else if (pthread_cond_timedwait(&t->cv, &t->mu, &dl) == ETIMEDOUT)
            rc = pp_errf(e, "timed out after %.0f s waiting for micro-batch %d from stage %d",
                         t->timeout_s, mb, src);
    }
    if (rc == 0)
        pthread_cond_broadcast(&t->cv); /* room on the link */
    pthread_mutex_unlock(&t->mu);
    if (rc < 0)
        return -1;
    t->b->copy(t->stages[dst], buf, msg, bytes);
    t->b->release(t->stages[src], msg);
    return 0;
}

static void inproc_abort(pp_transport *tp)
{
    inproc *t = tp->state;
    pthread_mutex_lock(&t->mu);
    t->aborted = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static void inproc_destroy(pp_transport *tp)
{
    inproc *t = tp->state;
    for (int d = 0; d < t->P; d++)
        for (int k = 0; k < 2; k++) {
            link_box *box = box_of(t, d, k);
            int src = k == PP_MSG_ACT ? d - 1 : d + 1;
            for (int i = 0; i < box->count; i++)
                t->b->release(t->stages[src], box->items[i].buf);
            free(box->items);
        }
    free(t->boxes);
    free(t->stages);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
    free(tp);
}

int pp_transport_inproc_create(int stages, int capacity, double timeout_s,
                               const pp_backend_ops *backend, void **backend_stages,
                               pp_transport **out, pp_err *e)
{
    pp_transport *tp = calloc(1, sizeof *tp);
    inproc *t = calloc(1, sizeof *t);
    if (!tp || !t)
        goto oom;
    t->P = stages;
    t->capacity = capacity;
    t->timeout_s = timeout_s;
    t->b = backend;
    t->stages = malloc((size_t)stages * sizeof *t->stages);
    t->boxes = calloc((size_t)stages * 2, sizeof *t->boxes);
    if (!t->stages || !t->boxes)
        goto oom;
    memcpy(t->stages, backend_stages, (size_t)stages * sizeof *t->stages);
    for (int i = 0; i < stages * 2; i++)
        if (!(t->boxes[i].items = calloc((size_t)capacity, sizeof(message))))
            goto oom;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    tp->send = inproc_send;
    tp->recv = inproc_recv;
    tp->abort = inproc_abort;
    tp->destroy = inproc_destroy;
    tp->state = t;
    *out = tp;
    return 0;
oom:
    if (t && t->boxes)
        for (int i = 0; i < stages * 2; i++)
            free(t->boxes[i].items);
    if (t) {
        free(t->boxes);
        free(t->stages);
    }
    free(t);
    free(tp);
    return pp_errf(e, "out of memory");
}
