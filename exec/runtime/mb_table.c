#include "mb_table.h"

#include <stdlib.h>
#include <string.h>

/* Consecutive micro-batches land in consecutive slots: no hashing needed
 * for the usual window of them. */
static size_t slot_of(const pp_mb_table *t, int32_t mb)
{
    return (size_t)(uint32_t)mb & t->mask;
}

static int alloc_slots(pp_mb_table *t, size_t size)
{
    t->keys = malloc(size * sizeof *t->keys);
    t->vals = calloc(size, t->vsize ? t->vsize : 1);
    if (!t->keys || !t->vals) {
        free(t->keys);
        free(t->vals);
        t->keys = NULL;
        t->vals = NULL;
        return -1;
    }
    memset(t->keys, 0xff, size * sizeof *t->keys);
    t->mask = size - 1;
    return 0;
}

int pp_mbt_init(pp_mb_table *t, size_t vsize)
{
    memset(t, 0, sizeof *t);
    t->vsize = vsize;
    return alloc_slots(t, 16);
}

void pp_mbt_free(pp_mb_table *t)
{
    free(t->keys);
    free(t->vals);
    memset(t, 0, sizeof *t);
}

static size_t find(const pp_mb_table *t, int32_t mb)
{
    size_t i = slot_of(t, mb);
    while (t->keys[i] >= 0 && t->keys[i] != mb)
        i = (i + 1) & t->mask;
    return i;
}

void *pp_mbt_get(const pp_mb_table *t, int mb)
{
    size_t i = find(t, mb);
    return t->keys[i] == mb ? t->vals + i * t->vsize : NULL;
}

/* Doubles the slots, keeping the table at most half full. */
static int grow(pp_mb_table *t)
{
    pp_mb_table old = *t;
    if (alloc_slots(t, (old.mask + 1) * 2) < 0) {
        *t = old;
        return -1;
    }
    for (size_t i = 0; i <= old.mask; i++)
        if (old.keys[i] >= 0) {
            size_t j = find(t, old.keys[i]);
            t->keys[j] = old.keys[i];
            memcpy(t->vals + j * t->vsize, old.vals + i * t->vsize, t->vsize);
        }
    free(old.keys);
    free(old.vals);
    return 0;
}

void *pp_mbt_add(pp_mb_table *t, int mb, int *dup)
{
    *dup = 0;
    if (mb < 0)
        return NULL;
    if (2 * (t->n + 1) > t->mask + 1 && grow(t) < 0)
        return NULL;
    size_t i = find(t, mb);
    if (t->keys[i] == mb) {
        *dup = 1;
        return NULL;
    }
    t->keys[i] = mb;
    t->n++;
    memset(t->vals + i * t->vsize, 0, t->vsize);
    return t->vals + i * t->vsize;
}

int pp_mbt_remove(pp_mb_table *t, int mb, void *out)
{
    size_t i = find(t, mb);
    if (t->keys[i] != mb)
        return 0;
    if (out)
        memcpy(out, t->vals + i * t->vsize, t->vsize);
    t->keys[i] = -1;
    t->n--;
    /* backward shift: an entry further along that may sit in the hole
     * moves into it, so that no probe stops early */
    for (size_t j = (i + 1) & t->mask; t->keys[j] >= 0; j = (j + 1) & t->mask) {
        size_t home = slot_of(t, t->keys[j]);
        int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (between)
            continue;
        t->keys[i] = t->keys[j];
        memcpy(t->vals + i * t->vsize, t->vals + j * t->vsize, t->vsize);
        t->keys[j] = -1;
        i = j;
    }
    return 1;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int32_t *pp_mbt_keys(const pp_mb_table *t)
{
    int32_t *k = malloc((t->n ? t->n : 1) * sizeof *k);
    if (!k)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->keys[i] >= 0)
            k[n++] = t->keys[i];
    qsort(k, n, sizeof *k, cmp_i32);
    return k;
}
