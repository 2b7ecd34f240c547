/* ZB-V (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", section 6;
 * PyTorch's ScheduleZBVZeroBubble): two chunks per rank in a V (rank r
 * holds stage r on the way down and 2R-1-r on the way up), backward split
 * into I and W. Rank r: 2(R-r)-1 forwards of its down chunk; r pairs of
 * forwards (up, down); R-r times F,I,W of the up chunk; then, while
 * forwards remain, F,I,W of the down chunk and F,I,W of the up chunk; then
 * r pairs of I's (down, up), R-r times I,W of the down chunk, and the
 * remaining W's (up chunk first). The order is laid out for
 * max(m, 2R-1) micro-batches and those beyond m are left out, as PyTorch
 * does. With F = I = W per chunk and m >= 2R no rank idles between its
 * first and its last action, across steps too: S steps take
 * (6mS + R - 1)F. */
#include "step_order.h"

typedef struct {
    pp_step_builder *b;
    int m;
    int stage[2];     /* down chunk, up chunk */
    int f[2], g[2], w[2]; /* next micro-batch to forward, I, W */
} zbv_rank;

static void op(zbv_rank *z, pp_op o, int c)
{
    int *next = o == PP_OP_F ? z->f : o == PP_OP_I ? z->g : z->w;
    int mb = next[c]++;
    if (mb < z->m)
        pp_step_add(z->b, o, z->stage[c], mb);
}

int pp_gen_zbv(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    if (o->chunks != 0 && o->chunks != 2)
        return pp_errf(e, "zbv is a two-chunk schedule (two stages per rank in a V): "
                          "--chunks must be 2 (got %d)", o->chunks);
    int R = o->stages, m = o->microbatches;
    pp_ir_info info;
    pp_step_builder b;
    if (pp_gen_multi_info("zbv", o, 2, PP_PLACE_V, &info, e) < 0 ||
        pp_step_builder_init(&b, &info, e) < 0)
        return -1;
    int n = m > 2 * R - 1 ? m : 2 * R - 1;
    for (int r = 0; r < R; r++) {
        zbv_rank z = {&b, m, {r, 2 * R - 1 - r}, {0, 0}, {0, 0}, {0, 0}};
        for (int k = 0; k < 2 * (R - r) - 1; k++)
            op(&z, PP_OP_F, 0);
        for (int k = 0; k < r; k++) {
            op(&z, PP_OP_F, 1);
            op(&z, PP_OP_F, 0);
        }
        for (int k = 0; k < R - r; k++) {
            op(&z, PP_OP_F, 1);
            op(&z, PP_OP_I, 1);
            op(&z, PP_OP_W, 1);
        }
        while (z.f[1] < z.f[0] || z.f[0] < n) {
            if (z.f[0] < n)
                op(&z, PP_OP_F, 0);
            op(&z, PP_OP_I, 0);
            op(&z, PP_OP_W, 0);
            op(&z, PP_OP_F, 1);
            op(&z, PP_OP_I, 1);
            op(&z, PP_OP_W, 1);
        }
        for (int k = 0; k < r; k++) {
            op(&z, PP_OP_I, 0);
            op(&z, PP_OP_I, 1);
        }
        for (int k = 0; k < R - r; k++) {
            op(&z, PP_OP_I, 0);
            op(&z, PP_OP_W, 0);
        }
        while (z.w[1] < z.g[1])
            op(&z, PP_OP_W, 1);
        while (z.w[0] < z.g[0])
            op(&z, PP_OP_W, 0);
    }
    return pp_step_open(&b, out, e);
}
