#include "ring.h"

#include <stdlib.h>
#include <string.h>

static int ring_alloc(pp_ring *r, uint32_t size)
{
    r->keys = malloc(size * sizeof *r->keys);
    r->vals = calloc(size, r->vsize ? r->vsize : 1);
    if (!r->keys || !r->vals) {
        free(r->keys);
        free(r->vals);
        return -1;
    }
    memset(r->keys, 0xff, size * sizeof *r->keys);
    r->mask = size - 1;
    return 0;
}

int pp_ring_init(pp_ring *r, size_t vsize)
{
    memset(r, 0, sizeof *r);
    r->vsize = vsize;
    return ring_alloc(r, 16);
}

void pp_ring_free(pp_ring *r)
{
    free(r->keys);
    free(r->vals);
    memset(r, 0, sizeof *r);
}

/* Doubles until every live key has a slot of its own. */
static int ring_grow(pp_ring *r)
{
    pp_ring old = *r;
    uint32_t size = (old.mask + 1) * 2;
    for (;;) {
        if (ring_alloc(r, size) < 0) {
            *r = old;
            return -1;
        }
        int clash = 0;
        for (uint32_t i = 0; i <= old.mask && !clash; i++) {
            if (old.keys[i] < 0)
                continue;
            uint32_t j = (uint32_t)old.keys[i] & r->mask;
            if (r->keys[j] >= 0)
                clash = 1;
            r->keys[j] = old.keys[i];
            memcpy(r->vals + j * r->vsize, old.vals + i * r->vsize, r->vsize);
        }
        if (!clash)
            break;
        free(r->keys);
        free(r->vals);
        size *= 2;
    }
    free(old.keys);
    free(old.vals);
    return 0;
}

void *pp_ring_put_slow(pp_ring *r, int32_t key, int *fresh)
{
    for (;;) {
        uint32_t i = (uint32_t)key & r->mask;
        if (r->keys[i] == key) {
            *fresh = 0;
            return r->vals + i * r->vsize;
        }
        if (r->keys[i] < 0) {
            r->keys[i] = key;
            r->live++;
            *fresh = 1;
            return r->vals + i * r->vsize;
        }
        if (ring_grow(r) < 0)
            return NULL;
    }
}
