/* PipeDream: 1F1B over all micro-batches without a flush, an OPT after every
 * backward (m = 1), backward on the stashed weights its forward used. Stage s
 * keeps up to P-s weight versions; its gradients are P-1-s updates stale.
 * To compare like with like, it runs the same m*S micro-batches as the
 * other schedules, as m*S steps of one micro-batch. */
#include "onef1b.h"
#include "registry.h"

int pp_gen_pipedream(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    pp_ir_info info;
    if (pp_gen_info("pipedream", o->stages, o->microbatches, o->steps, &info, e) < 0)
        return -1;
    info.microbatches_per_step = 1;
    info.steps = info.total_microbatches;
    pp_1f1b_rule rule = {.segment = info.total_microbatches, .opt_every = 1,
                         .f_prev_step = 0, .b_sel = PP_SEL_STASH};
    return pp_1f1b_open(&info, &rule, out, e);
}
