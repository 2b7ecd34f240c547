/* A bounded, thread-safe FIFO of (tag, pointer) items: the in-process
 * transport between stage threads. Push blocks while the queue is full
 * (back-pressure: a fast stage cannot run arbitrarily far ahead), pop
 * blocks while it is empty. Abort wakes every waiter and makes every later
 * push and pop fail, so a stage that hits an error stops the others instead
 * of leaving them blocked forever. */
#ifndef PP_QUEUE_H
#define PP_QUEUE_H

#include <pthread.h>

#include "error.h"

enum {
    PP_QUEUE_OK = 0,
    PP_QUEUE_CLOSED = -1,  /* aborted (or closed and, for pop, empty) */
    PP_QUEUE_TIMEOUT = -2, /* the timed call gave up */
};

typedef struct {
    int tag;
    void *ptr;
} pp_queue_item;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    pp_queue_item *items; /* ring buffer of `capacity` items */
    int capacity, head, count;
    int closed;  /* no more pushes; pops drain what is left */
    int aborted; /* every push and pop fails at once */
} pp_queue;

int pp_queue_init(pp_queue *q, int capacity, pp_err *e);
/* No thread may be using q. Items still queued are dropped (see drain). */
void pp_queue_free(pp_queue *q);

/* PP_QUEUE_OK, or PP_QUEUE_CLOSED once the queue is closed or aborted. */
int pp_queue_push(pp_queue *q, int tag, void *ptr);
/* PP_QUEUE_OK with the oldest item, or PP_QUEUE_CLOSED when aborted, or
 * closed with nothing left. */
int pp_queue_pop(pp_queue *q, int *tag, void **ptr);

/* As above, giving up with PP_QUEUE_TIMEOUT after timeout_s seconds
 * (a negative timeout waits forever). */
int pp_queue_push_timed(pp_queue *q, int tag, void *ptr, double timeout_s);
int pp_queue_pop_timed(pp_queue *q, int *tag, void **ptr, double timeout_s);

/* End of stream: later pushes fail, pops return what is queued and then
 * fail. Wakes all waiters. */
void pp_queue_close(pp_queue *q);
/* Failure: every blocked and later push and pop fails at once. */
void pp_queue_abort(pp_queue *q);

/* After the threads are gone: takes one queued item regardless of close or
 * abort (so the owner can free what was in flight); 0 when empty. */
int pp_queue_drain(pp_queue *q, int *tag, void **ptr);

#endif
