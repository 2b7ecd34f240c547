/* The simulator's event queue: a radix heap. Simulated time never goes
 * back (every event is scheduled at or after the one being handled), so
 * events can sit in buckets by the highest bit in which their time differs
 * from the last time popped: a push is an append, and a pop rarely
 * redistributes one bucket. It replaced a binary heap whose sifts cost a
 * third of a simulation in mispredicted branches. Times are non-negative
 * doubles, whose bit patterns order like the numbers. Events of equal time
 * pop in a fixed (LIFO) order, so runs are reproducible. */
#ifndef PP_EVENT_QUEUE_H
#define PP_EVENT_QUEUE_H

#include <stdint.h>
#include <string.h>

typedef struct {
    double t;
    uint64_t what; /* the engine's payload */
} pp_event;

typedef struct {
    pp_event *items;
    uint32_t n, cap;
} pp_event_bucket;

typedef struct {
    pp_event_bucket b[65];
    uint64_t last; /* bits of the time last popped */
    size_t n;
} pp_event_queue;

void pp_eq_init(pp_event_queue *q);
void pp_eq_free(pp_event_queue *q);
int pp_eq_grow(pp_event_bucket *b);
/* Takes the earliest event; 0 when the queue is empty. */
int pp_eq_pop(pp_event_queue *q, pp_event *out);

static inline uint64_t pp_eq_key(double t)
{
    uint64_t k;
    memcpy(&k, &t, sizeof k);
    return k;
}

static inline int pp_eq_bucket(uint64_t key, uint64_t last)
{
    return key == last ? 0 : 64 - __builtin_clzll(key ^ last);
}

/* Adds an event no earlier than the last one popped; -1 when out of memory. */
static inline int pp_eq_push(pp_event_queue *q, pp_event ev)
{
    pp_event_bucket *b = &q->b[pp_eq_bucket(pp_eq_key(ev.t), q->last)];
    if (b->n == b->cap && pp_eq_grow(b) < 0)
        return -1;
    b->items[b->n++] = ev;
    q->n++;
    return 0;
}

#endif
