/* Synchronous schedules written as one step: each generator lays out the
 * order of every rank for micro-batches 0..m-1 once (as PyTorch's
 * pipeline_order does), and this stream repeats it for every step with the
 * micro-batches shifted by m. Each rank ends its step with an OPT per
 * stage it holds (model order), after that stage's last backward, as
 * 1F1B-flush does: the next step's forwards read the updated weights and
 * any flush comes from dependencies alone. A step with S = 1 is the list
 * PyTorch's CSV of the same schedule imports as. Memory: one step's
 * actions, whatever the number of steps. */
#ifndef PP_STEP_ORDER_H
#define PP_STEP_ORDER_H

#include "ir.h"
#include "registry.h"

/* One step under construction. Errors are sticky: after the first failed
 * push the builder ignores the rest, and pp_step_open reports it. */
typedef struct {
    pp_ir_info info;  /* the whole run's */
    pp_schedule step; /* one step: micro-batches 0..m-1 */
    pp_err *e;
    int failed;
} pp_step_builder;

/* Checks R = o->stages, m, S and `chunks` (stages per rank) and fills the
 * info of a run with R*chunks stages in `placement`. */
int pp_gen_multi_info(const char *name, const pp_gen_opts *o, int chunks, int placement,
                      pp_ir_info *info, pp_err *e);

int pp_step_builder_init(pp_step_builder *b, const pp_ir_info *info, pp_err *e);
/* Appends `op` of micro-batch mb on `stage` to the stage's rank. */
void pp_step_add(pp_step_builder *b, pp_op op, int stage, int mb);
/* The same, run together with the rank's next action (an overlapped pair). */
void pp_step_add_overlapped(pp_step_builder *b, pp_op op, int stage, int mb);
/* Turns the step into a stream of info->steps steps. Frees the builder,
 * whether it succeeds or not. */
int pp_step_open(pp_step_builder *b, pp_stream **out, pp_err *e);

#endif
