/* Which GPU (and which SM partition of it) each stage runs on. */
#ifndef PP_PLACEMENT_H
#define PP_PLACEMENT_H

#include "model/backend.h"
#include "error.h"

/* For P stages from a --devices list ("0" or "0,1,2,3"; NULL: the default).
 * One process (local_rank < 0): stages are spread over the list in order,
 * stage s on devices[s * k / P] (default: GPU 0), and with `partition`
 * the stages that share a GPU split its SMs, partition = their order there.
 * One process per stage (local_rank >= 0): every stage entry is the local
 * rank's GPU, devices[local_rank % k] (default: GPU local_rank), whole.
 * *out gets P entries (caller frees). */
int pp_placement_plan(const char *devices, int P, int local_rank, int partition,
                      pp_placement **out, pp_err *e);

#endif
