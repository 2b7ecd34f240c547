/* A table keyed by micro-batch, for the few that are in flight at once: a
 * stage's micro-batches between their F and their weight gradient, a
 * link's messages sent and not yet taken. Memory follows what is in flight,
 * not the length of the run (an array indexed by micro-batch would grow
 * with the steps). Open addressing; a removal may move other entries, so a
 * pointer from get or add is valid until the next add or remove. Not the
 * simulator's sim/ring.h: that direct-mapped table grows with the span of
 * its live keys, and here keys also come from a checkpoint being resumed,
 * where two far-apart micro-batches must not cost memory in between. */
#ifndef PP_MB_TABLE_H
#define PP_MB_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t *keys;       /* -1: empty */
    unsigned char *vals; /* vsize bytes per slot */
    size_t vsize, mask, n;
} pp_mb_table;

int pp_mbt_init(pp_mb_table *t, size_t vsize); /* -1 when out of memory */
void pp_mbt_free(pp_mb_table *t);
/* The value of mb, or NULL. */
void *pp_mbt_get(const pp_mb_table *t, int mb);
/* A new zeroed value for mb (mb >= 0); NULL when mb is there already or
 * out of memory (*dup tells which). */
void *pp_mbt_add(pp_mb_table *t, int mb, int *dup);
/* Removes mb, copying its value to out (if not NULL); 0 when absent. */
int pp_mbt_remove(pp_mb_table *t, int mb, void *out);
/* The keys, ascending, into a fresh array of t->n (caller frees); NULL
 * when out of memory (or empty). */
int32_t *pp_mbt_keys(const pp_mb_table *t);

#endif
