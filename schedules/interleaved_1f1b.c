/* Interleaved 1F1B (Megatron-LM's virtual pipeline, Narayanan et al. 2021;
 * PyTorch's ScheduleInterleaved1F1B): V chunks per rank, stage s on rank
 * s mod R. Micro-batches go in groups of R: the k-th forward of a rank is
 * chunk (k/R) mod V of micro-batch (k/(RV))R + k mod R, and the k-th
 * backward the same with the chunks in reverse. Rank r runs
 * (V-1)R + 2(R-1-r) warm-up forwards, then one F and one B, then the last
 * backwards. With uniform costs F, B per chunk a step takes
 * (Vm + R - 1)(F + B). */
#include "step_order.h"

/* The k-th forward (or, with reverse, backward) of rank r. */
static void chunk_op(pp_step_builder *b, pp_op op, int k, int r, int R, int V, int reverse)
{
    int chunk = (k / R) % V;
    if (reverse)
        chunk = V - 1 - chunk;
    pp_step_add(b, op, chunk * R + r, k / (R * V) * R + k % R);
}

int pp_gen_interleaved_1f1b(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    int R = o->stages, m = o->microbatches, V = o->chunks ? o->chunks : 2;
    if (R >= 1 && m >= 1 && m % R != 0)
        return pp_errf(e, "interleaved-1f1b needs --microbatches to be a multiple of --stages "
                          "(got m=%d, R=%d): micro-batches go through the chunks in groups of R",
                       m, R);
    pp_ir_info info;
    pp_step_builder b;
    if (pp_gen_multi_info("interleaved-1f1b", o, V, PP_PLACE_LOOPED, &info, e) < 0 ||
        pp_step_builder_init(&b, &info, e) < 0)
        return -1;
    int total = V * m;
    for (int r = 0; r < R; r++) {
        int warm = (V - 1) * R + 2 * (R - 1 - r);
        if (warm > total)
            warm = total;
        for (int k = 0; k < warm; k++)
            chunk_op(&b, PP_OP_F, k, r, R, V, 0);
        for (int k = 0; k < total - warm; k++) {
            chunk_op(&b, PP_OP_F, warm + k, r, R, V, 0);
            chunk_op(&b, PP_OP_B, k, r, R, V, 1);
        }
        for (int k = total - warm; k < total; k++)
            chunk_op(&b, PP_OP_B, k, r, R, V, 1);
    }
    return pp_step_open(&b, out, e);
}
