/* A growable stack of spare buffers: what the executor keeps to use again
 * instead of freeing it (activations, weight copies, message buffers). */
#ifndef PP_SPARES_H
#define PP_SPARES_H

#include <stdlib.h>

typedef struct {
    void **items;
    int n, cap;
} pp_spares;

/* Pushes p; returns -1 (p not kept) when out of memory. */
static inline int pp_spares_push(pp_spares *s, void *p)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 4;
        void **x = realloc(s->items, (size_t)cap * sizeof *x);
        if (!x)
            return -1;
        s->items = x;
        s->cap = cap;
    }
    s->items[s->n++] = p;
    return 0;
}

/* The last pushed, or NULL when empty. */
static inline void *pp_spares_pop(pp_spares *s)
{
    return s->n ? s->items[--s->n] : NULL;
}

#endif
