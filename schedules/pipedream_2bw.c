/* PipeDream-2BW: 1F1B without a flush, OPT after every m-th backward on each
 * stage. Micro-batch k of step b = k/m runs its forward on version
 * max(b-1, 0) and its backward on the same, stashed, version: two weight
 * copies per stage and a gradient delay of one update. */
#include "onef1b.h"
#include "registry.h"

int pp_gen_pipedream_2bw(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    if (o->microbatches < o->stages)
        return pp_errf(e, "pipedream-2bw needs --microbatches >= --stages (got m=%d, P=%d): "
                          "a step's forwards must start after the previous step's update "
                          "exists on every stage",
                       o->microbatches, o->stages);
    pp_ir_info info;
    if (pp_gen_info("pipedream-2bw", o->stages, o->microbatches, o->steps, &info, e) < 0)
        return -1;
    pp_1f1b_rule rule = {.segment = info.total_microbatches, .opt_every = o->microbatches,
                         .f_prev_step = 1, .b_sel = PP_SEL_STASH};
    return pp_1f1b_open(&info, &rule, out, e);
}
