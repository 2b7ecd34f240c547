/* 1F1B-flush (PipeDream-Flush): each step is its own 1F1B segment followed
 * by OPT; the next step's first forward waits for that OPT, so the flush
 * bubble (P-1)/(m+P-1) comes from dependencies alone. */
#include "onef1b.h"
#include "registry.h"

int pp_gen_1f1b_flush(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    pp_ir_info info;
    if (pp_gen_info("1f1b-flush", o->stages, o->microbatches, o->steps, &info, e) < 0)
        return -1;
    pp_1f1b_rule rule = {.segment = o->microbatches, .opt_every = o->microbatches,
                         .f_prev_step = 0, .b_sel = PP_SEL_LATEST};
    return pp_1f1b_open(&info, &rule, out, e);
}
