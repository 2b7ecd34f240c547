/* A direct-mapped table keyed by a non-negative int (micro-batch or weight
 * version) whose live keys lie in a sliding window: slot = key % size, and
 * the table doubles when two live keys collide. Memory follows the window
 * (micro-batches in flight), not the length of the run. */
#ifndef PP_RING_H
#define PP_RING_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t *keys;      /* -1 = empty */
    unsigned char *vals;
    size_t vsize;       /* bytes of payload per slot */
    uint32_t mask;      /* size - 1, size a power of two */
    size_t live;
} pp_ring;

int pp_ring_init(pp_ring *r, size_t vsize);
void pp_ring_free(pp_ring *r);
/* Payload of key, or NULL. */
static inline void *pp_ring_get(const pp_ring *r, int32_t key)
{
    uint32_t i = (uint32_t)key & r->mask;
    return r->keys[i] == key ? r->vals + i * r->vsize : NULL;
}
/* Whether key is there (for payload-less tables, where get says NULL). */
static inline int pp_ring_has(const pp_ring *r, int32_t key)
{
    return r->keys[(uint32_t)key & r->mask] == key;
}
/* Inserts key or returns the existing payload; NULL only when out of
 * memory. *fresh tells which; a fresh payload is uninitialised (callers
 * fill it: zeroing here cost 7% of a simulation). */
void *pp_ring_put_slow(pp_ring *r, int32_t key, int *fresh);
static inline void *pp_ring_put(pp_ring *r, int32_t key, int *fresh)
{
    uint32_t i = (uint32_t)key & r->mask;
    if (r->keys[i] < 0) { /* the usual case: a free slot */
        r->keys[i] = key;
        r->live++;
        *fresh = 1;
        return r->vals + i * r->vsize;
    }
    if (r->keys[i] == key) {
        *fresh = 0;
        return r->vals + i * r->vsize;
    }
    return pp_ring_put_slow(r, key, fresh);
}
static inline void pp_ring_del(pp_ring *r, int32_t key)
{
    uint32_t i = (uint32_t)key & r->mask;
    if (r->keys[i] == key) {
        r->keys[i] = -1;
        r->live--;
    }
}
/* Removes key; 1 if it was there. */
static inline int pp_ring_take(pp_ring *r, int32_t key)
{
    uint32_t i = (uint32_t)key & r->mask;
    if (r->keys[i] != key)
        return 0;
    r->keys[i] = -1;
    r->live--;
    return 1;
}

#endif
