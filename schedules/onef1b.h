/* The one-forward-one-backward walk that 1F1B-flush, PipeDream,
 * PipeDream-2BW and PACI share. Micro-batches are cut into segments (one
 * per step for 1F1B-flush, one for the whole run otherwise); within a
 * segment stage s does min(P-s-1, L) warm-up forwards, then alternates F and
 * B, then drains its backwards. The schedules differ only in where OPT goes
 * and which weights F and B read; with several chunks per rank the same
 * rules run on the interleaved walk (interleaved_walk.h). */
#ifndef PP_ONEF1B_H
#define PP_ONEF1B_H

#include "ir.h"

typedef struct {
    int segment;         /* micro-batches per flush segment */
    int opt_every;       /* OPT after every k-th backward on a stage */
    int f_prev_step;     /* F of step b reads version max(b-1, 0) (2BW) */
    pp_sel b_sel;        /* PP_SEL_LATEST or PP_SEL_STASH */
} pp_1f1b_rule;

/* info: name, stages, microbatches_per_step, steps, total, params. */
int pp_1f1b_open(const pp_ir_info *info, const pp_1f1b_rule *rule, pp_stream **out,
                 pp_err *e);

/* The forward of micro-batch mb under the rule, m micro-batches a step (its
 * stage left 0). */
pp_action pp_1f1b_forward(const pp_1f1b_rule *rule, int mb, int m);
/* The stream's `stashes` hint where b_sel is PP_SEL_STASH: every backward. */
int pp_1f1b_stashes(pp_stream *st, int stage, int mb);

/* Checks P, m, S and fills the common fields of an IR info. */
int pp_gen_info(const char *name, int stages, int m, int steps, pp_ir_info *info,
                pp_err *e);

#endif
