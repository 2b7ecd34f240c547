/* PACI: 1F1B without a flush and with local gradient accumulation. Stage s
 * keeps at most P-s micro-batches in flight and applies OPT after every a-th
 * backward, on its own: no stash, no extra weight copy, no global
 * synchronisation. Forward/backward drift on stage s is at most
 * ceil((P-1-s)/a).
 *
 * With --chunks V > 1 the same rule runs on Megatron's interleaved order
 * over all N micro-batches (interleaved_walk.h: stage s on rank s mod R,
 * P = VR, a = m a multiple of R). Its drift on stage s is at most
 *     ceil(I_s / a),  I_s = clamp(T_s + R - P, 0, R) + clamp(T_s + R - 2P, 0, R),
 * T_s = 2(P-1-s), the micro-batches the stage holds when it forwards the
 * first micro-batch of a group of R (interleaved_walk.c derives I_s).
 * Proof. The stage runs its backwards in micro-batch order with an OPT
 * after every a-th, so B(s, k) reads version floor(k/a), and F(s, k) reads
 * floor(b_k/a), where b_k = k - x_k counts the stage's backwards before it
 * and x_k its micro-batches in flight. Write k = gR + i: as R divides a, k
 * and gR lie in one block of a, and b_k >= b_gR, so the drift of k is at
 * most that of gR, floor(gR/a) - floor((gR - x)/a) with x = x_gR <= I_s.
 * The x backwards between cross at most ceil(x/a) multiples of a: drift
 * <= ceil(I_s/a). It is reached at every step boundary k = ba >= 2R
 * (1 <= b < S), where x = I_s: S >= 3 steps reach it on every stage. So
 * drift is at most 2 (I_s <= max(R, 2R-2); 2 only on stages s < (R-2)/2 with
 * a = R), at most 1 once a >= 2R-2, and 0 from stage (P+R-2)/2 up. */
#include <stdio.h>

#include "interleaved_walk.h"
#include "onef1b.h"
#include "registry.h"

int pp_gen_paci(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    int V = o->chunks > 1 ? o->chunks : 1;
    pp_ir_info info;
    if (V > 1 ? pp_interleaved_walk_info("paci", o, V, &info, e) < 0
              : pp_gen_info("paci", o->stages, o->microbatches, o->steps, &info, e) < 0)
        return -1;
    char buf[32];
    snprintf(buf, sizeof buf, "%d", o->microbatches);
    pp_info_set_param(&info, "accum", buf);
    pp_info_set_param(&info, "recompute", o->recompute ? "1" : "0");
    pp_1f1b_rule rule = {.segment = info.total_microbatches, .opt_every = o->microbatches,
                         .f_prev_step = 0, .b_sel = PP_SEL_LATEST};
    return V > 1 ? pp_interleaved_walk_open(&info, &rule, out, e)
                 : pp_1f1b_open(&info, &rule, out, e);
}
