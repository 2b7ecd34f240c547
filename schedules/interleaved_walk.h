/* The interleaved walk that PACI and PipeDream-2BW take with --chunks V > 1:
 * V chunks per rank, stage s on rank s mod R (P = VR stages), Megatron's
 * interleaved 1F1B order run over all N = mS micro-batches as one segment,
 * with no flush. Where OPT goes and which weights F and B read come from a
 * pp_1f1b_rule, as in the one-chunk walk (onef1b.h); its `segment` is not
 * read. interleaved_walk.c states the order and proves how many
 * micro-batches it keeps in flight per stage, which bounds PACI's drift
 * (paci.c) and PipeDream-2BW's smallest m (pipedream_2bw.c). */
#ifndef PP_INTERLEAVED_WALK_H
#define PP_INTERLEAVED_WALK_H

#include "onef1b.h"
#include "registry.h"

/* Checks that m is a multiple of R (the order takes micro-batches through
 * the chunks in groups of R) and fills the info of a run with R*chunks
 * stages in the looped placement. */
int pp_interleaved_walk_info(const char *name, const pp_gen_opts *o, int chunks,
                             pp_ir_info *info, pp_err *e);

/* info from pp_interleaved_walk_info (name, params set by the caller). */
int pp_interleaved_walk_open(const pp_ir_info *info, const pp_1f1b_rule *rule,
                             pp_stream **out, pp_err *e);

#endif
