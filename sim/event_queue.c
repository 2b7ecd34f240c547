#include "event_queue.h"

#include <stdlib.h>

void pp_eq_init(pp_event_queue *q)
{
    memset(q, 0, sizeof *q);
}

void pp_eq_free(pp_event_queue *q)
{
    for (int i = 0; i < 65; i++)
        free(q->b[i].items);
    memset(q, 0, sizeof *q);
}

int pp_eq_grow(pp_event_bucket *b)
{
    uint32_t cap = b->cap ? b->cap * 2 : 16;
    pp_event *items = realloc(b->items, cap * sizeof *items);
    if (!items)
        return -1;
    b->items = items;
    b->cap = cap;
    return 0;
}

int pp_eq_pop(pp_event_queue *q, pp_event *out)
{
    if (!q->n)
        return 0;
    if (!q->b[0].n) {
        /* The first non-empty bucket holds the minimum: it becomes the new
         * reference and its events move to lower buckets (never this one
         * again, so each event moves at most 64 times over its life). */
        int i = 1;
        while (!q->b[i].n)
            i++;
        pp_event_bucket *src = &q->b[i];
        uint64_t min = pp_eq_key(src->items[0].t);
        for (uint32_t k = 1; k < src->n; k++) {
            uint64_t key = pp_eq_key(src->items[k].t);
            min = key < min ? key : min;
        }
        q->last = min;
        for (uint32_t k = 0; k < src->n; k++) {
            pp_event_bucket *dst = &q->b[pp_eq_bucket(pp_eq_key(src->items[k].t), min)];
            if (dst->n == dst->cap && pp_eq_grow(dst) < 0)
                return -1;
            dst->items[dst->n++] = src->items[k];
        }
        src->n = 0;
    }
    *out = q->b[0].items[--q->b[0].n];
    q->n--;
    return 1;
}
