/* A fork-join team of threads for one CPU stage: the stage's thread and
 * threads-1 workers run the parts of one loop together and meet at its
 * end. The split of a loop over n items depends only on n and the team
 * size, so a computation whose parts write disjoint outputs gives the same
 * bits run after run for a fixed --threads. */
#ifndef PP_CPU_POOL_H
#define PP_CPU_POOL_H

#include "error.h"

typedef struct pp_pool pp_pool;

/* A team of `threads` (>= 1; 1 starts no worker). */
int pp_pool_create(int threads, pp_pool **out, pp_err *e);
void pp_pool_free(pp_pool *p);

/* Team size; 1 for a NULL pool. */
int pp_pool_threads(const pp_pool *p);

/* Calls fn(ctx, lo, hi, part) for the parts of [0, n): part t of T gets
 * [n*t/T, n*(t+1)/T) and runs on team member t (the caller is member 0).
 * Returns when every part is done. A NULL pool runs fn(ctx, 0, n, 0). Not
 * reentrant: call it from the stage's own thread only. */
typedef void (*pp_pool_fn)(void *ctx, int lo, int hi, int part);
void pp_pool_run(pp_pool *p, int n, pp_pool_fn fn, void *ctx);

/* The cores this process may run on (its CPU affinity), at least 1. */
int pp_cpu_cores(void);

#endif
