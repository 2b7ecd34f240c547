#define _POSIX_C_SOURCE 200809L /* clock_gettime, pthread_condattr_setclock */

#include "queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Waits use CLOCK_MONOTONIC so a wall-clock jump cannot fire or stall a
 * timeout. */
static int init_cond(pthread_cond_t *c)
{
    pthread_condattr_t a;
    if (pthread_condattr_init(&a) != 0)
        return -1;
    int rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

int pp_queue_init(pp_queue *q, int capacity, pp_err *e)
{
    memset(q, 0, sizeof *q);
    if (capacity < 1)
        return pp_errf(e, "queue capacity must be at least 1 (got %d)", capacity);
    q->items = malloc((size_t)capacity * sizeof *q->items);
    if (!q->items)
        return pp_errf(e, "out of memory for a queue of %d items", capacity);
    q->capacity = capacity;
    if (pthread_mutex_init(&q->mu, NULL) != 0)
        goto fail_mu;
    if (init_cond(&q->not_empty) != 0)
        goto fail_empty;
    if (init_cond(&q->not_full) != 0)
        goto fail_full;
    return 0;
fail_full:
    pthread_cond_destroy(&q->not_empty);
fail_empty:
    pthread_mutex_destroy(&q->mu);
fail_mu:
    free(q->items);
    memset(q, 0, sizeof *q);
    return pp_errf(e, "cannot initialise queue synchronisation");
}

void pp_queue_free(pp_queue *q)
{
    if (!q->items)
        return;
    pthread_cond_destroy(&q->not_full);
    pthread_cond_destroy(&q->not_empty);
    pthread_mutex_destroy(&q->mu);
    free(q->items);
    memset(q, 0, sizeof *q);
}

/* Fills *t with the CLOCK_MONOTONIC time timeout_s from now and returns
 * it, or returns NULL (no deadline) for a negative, NaN or huge timeout. */
static const struct timespec *deadline_after(double timeout_s, struct timespec *t)
{
    if (!(timeout_s >= 0 && timeout_s < 1e9))
        return NULL;
    clock_gettime(CLOCK_MONOTONIC, t);
    time_t whole = (time_t)timeout_s;
    long ns = t->tv_nsec + (long)((timeout_s - (double)whole) * 1e9);
    t->tv_sec += whole + ns / 1000000000L;
    t->tv_nsec = ns % 1000000000L;
    return t;
}

/* One wait on c; deadline NULL waits without limit. Returns ETIMEDOUT
 * when the deadline passed. */
static int wait_on(pthread_cond_t *c, pthread_mutex_t *mu, const struct timespec *deadline)
{
    if (!deadline)
        return pthread_cond_wait(c, mu);
    return pthread_cond_timedwait(c, mu, deadline);
}

static int push(pp_queue *q, int tag, void *ptr, double timeout_s)
{
    struct timespec dl;
    const struct timespec *deadline = deadline_after(timeout_s, &dl);
    pthread_mutex_lock(&q->mu);
    int rc = PP_QUEUE_OK;
    while (!q->closed && !q->aborted && q->count == q->capacity && rc == PP_QUEUE_OK)
        if (wait_on(&q->not_full, &q->mu, deadline) == ETIMEDOUT)
            rc = PP_QUEUE_TIMEOUT;
    if (q->closed || q->aborted)
        rc = PP_QUEUE_CLOSED;
    else if (q->count < q->capacity) { /* room, even if the wait just timed out */
        q->items[(q->head + q->count) % q->capacity] = (pp_queue_item){tag, ptr};
        q->count++;
        rc = PP_QUEUE_OK;
        pthread_cond_signal(&q->not_empty);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static void take(pp_queue *q, int *tag, void **ptr)
{
    pp_queue_item it = q->items[q->head];
    q->head = (q->head + 1) % q->capacity;
    q->count--;
    if (tag)
        *tag = it.tag;
    if (ptr)
        *ptr = it.ptr;
}

static int pop(pp_queue *q, int *tag, void **ptr, double timeout_s)
{
    struct timespec dl;
    const struct timespec *deadline = deadline_after(timeout_s, &dl);
    pthread_mutex_lock(&q->mu);
    int rc = PP_QUEUE_OK;
    while (!q->closed && !q->aborted && q->count == 0 && rc == PP_QUEUE_OK)
        if (wait_on(&q->not_empty, &q->mu, deadline) == ETIMEDOUT)
            rc = PP_QUEUE_TIMEOUT;
    if (q->aborted || (q->closed && q->count == 0))
        rc = PP_QUEUE_CLOSED;
    else if (q->count > 0) {
        take(q, tag, ptr);
        rc = PP_QUEUE_OK;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int pp_queue_push(pp_queue *q, int tag, void *ptr)
{
    return push(q, tag, ptr, -1);
}

int pp_queue_pop(pp_queue *q, int *tag, void **ptr)
{
    return pop(q, tag, ptr, -1);
}

int pp_queue_push_timed(pp_queue *q, int tag, void *ptr, double timeout_s)
{
    return push(q, tag, ptr, timeout_s);
}

int pp_queue_pop_timed(pp_queue *q, int *tag, void **ptr, double timeout_s)
{
    return pop(q, tag, ptr, timeout_s);
}

static void shut(pp_queue *q, int abort)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    q->aborted |= abort;
    pthread_cond_broadcast(&q->not_empty);
    pthread_cond_broadcast(&q->not_full);
    pthread_mutex_unlock(&q->mu);
}

void pp_queue_close(pp_queue *q)
{
    shut(q, 0);
}

void pp_queue_abort(pp_queue *q)
{
    shut(q, 1);
}

int pp_queue_drain(pp_queue *q, int *tag, void **ptr)
{
    pthread_mutex_lock(&q->mu);
    int got = q->count > 0;
    if (got)
        take(q, tag, ptr);
    pthread_mutex_unlock(&q->mu);
    return got;
}
