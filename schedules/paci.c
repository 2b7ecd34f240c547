/* PACI: 1F1B without a flush and with local gradient accumulation. Stage s
 * keeps at most P-s micro-batches in flight and applies OPT after every a-th
 * backward, on its own: no stash, no extra weight copy, no global
 * synchronisation. Forward/backward drift on stage s is at most
 * ceil((P-1-s)/a). */
#include <stdio.h>

#include "onef1b.h"
#include "registry.h"

int pp_gen_paci(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    pp_ir_info info;
    if (pp_gen_info("paci", o->stages, o->microbatches, o->steps, &info, e) < 0)
        return -1;
    char buf[32];
    snprintf(buf, sizeof buf, "%d", o->microbatches);
    pp_info_set_param(&info, "accum", buf);
    pp_info_set_param(&info, "recompute", o->recompute ? "1" : "0");
    pp_1f1b_rule rule = {.segment = info.total_microbatches, .opt_every = o->microbatches,
                         .f_prev_step = 0, .b_sel = PP_SEL_LATEST};
    return pp_1f1b_open(&info, &rule, out, e);
}
