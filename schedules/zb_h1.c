/* ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", section 2.1;
 * PyTorch's ScheduleInterleavedZeroBubble with one stage per rank): the
 * backward is split into I (input gradient, on the critical path) and W
 * (weight gradient, free to move). Rank r keeps 1F1B's order with B
 * replaced by I: R-1-r warm-up forwards, then F and I alternately, then
 * the last I's. Its first r W's are deferred, so from then on each F,I is
 * followed by the oldest pending W, and the W's left at the end fill the
 * cool-down bubble. Every rank then holds at most R micro-batches between
 * F and W, the peak of 1F1B's first rank. With uniform costs and
 * W <= min(F, I) a step takes m(F+I+W) + (R-1)(F+I-W). */
#include "step_order.h"

int pp_gen_zb_h1(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    int R = o->stages, m = o->microbatches;
    pp_ir_info info;
    pp_step_builder b;
    if (pp_gen_multi_info("zb-h1", o, 1, PP_PLACE_ONE, &info, e) < 0 ||
        pp_step_builder_init(&b, &info, e) < 0)
        return -1;
    for (int r = 0; r < R; r++) {
        int warm = R - 1 - r < m ? R - 1 - r : m;
        int f = 0, g = 0, w = 0; /* next F, I and W */
        while (f < warm)
            pp_step_add(&b, PP_OP_F, r, f++);
        for (int k = warm; k < m + warm; k++) {
            if (k < m)
                pp_step_add(&b, PP_OP_F, r, f++);
            pp_step_add(&b, PP_OP_I, r, g++);
            if (k - warm >= r)
                pp_step_add(&b, PP_OP_W, r, w++);
        }
        while (w < m)
            pp_step_add(&b, PP_OP_W, r, w++);
    }
    return pp_step_open(&b, out, e);
}
