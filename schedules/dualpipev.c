/* DualPipeV (DeepSeek-V3's DualPipe folded into a V, Liu et al. 2024, and
 * github.com/deepseek-ai/DualPipe; PyTorch's ScheduleDualPipeV): two chunks
 * per rank in a V (rank r holds stage r down and 2R-1-r up). In its main
 * phase a rank overlaps the forward of one chunk with the full backward of
 * the other (a pair: two actions, the first with with_next). Rank r, with
 * chunk 0 down and 1 up:
 *   1. 2(R-r-1) forwards of chunk 0;      2. r+1 times F0, F1;
 *   3. R-r-1 times I1, a pending W, F1;   4. m-2R+r+1 times F0+B1, F1+B0
 *      (the last rank runs its first F0, B1 apart);
 *   5. R-r-1 times B1, F1+B0;             6. r+1 times B1, B0, switching to
 *      I instead of B half way (after B1 on odd ranks, before B0 on even);
 *   7. R-r-1 times a pending W, then B0 or I0;  8. the pending W's.
 * W's run oldest first. Needs m >= 2R, as PyTorch does. */
#include <stdlib.h>

#include "step_order.h"

typedef struct {
    pp_step_builder *b;
    int stage[2];  /* down chunk, up chunk */
    int f[2], g[2];/* next micro-batch to forward, to B or I */
    int (*wq)[2];  /* (chunk, mb) of I's whose W is pending, oldest first */
    int wq_head, wq_tail;
} dpv_rank;

static void fwd(dpv_rank *d, int c)
{
    pp_step_add(d->b, PP_OP_F, d->stage[c], d->f[c]++);
}

/* B (full backward) or I (its W queued). */
static void bwd(dpv_rank *d, pp_op op, int c)
{
    int mb = d->g[c]++;
    pp_step_add(d->b, op, d->stage[c], mb);
    if (op == PP_OP_I) {
        d->wq[d->wq_tail][0] = c;
        d->wq[d->wq_tail++][1] = mb;
    }
}

/* F of chunk fc overlapped with B of the other chunk. */
static void pair(dpv_rank *d, int fc)
{
    pp_step_add_overlapped(d->b, PP_OP_F, d->stage[fc], d->f[fc]++);
    pp_step_add(d->b, PP_OP_B, d->stage[1 - fc], d->g[1 - fc]++);
}

static void pending_w(dpv_rank *d)
{
    if (d->wq_head < d->wq_tail) {
        int *w = d->wq[d->wq_head++];
        pp_step_add(d->b, PP_OP_W, d->stage[w[0]], w[1]);
    }
}

static void rank_order(dpv_rank *d, int r, int R, int m)
{
    for (int k = 0; k < 2 * (R - r - 1); k++)
        fwd(d, 0);
    for (int k = 0; k < r + 1; k++) {
        fwd(d, 0);
        fwd(d, 1);
    }
    for (int k = 0; k < R - r - 1; k++) {
        bwd(d, PP_OP_I, 1);
        pending_w(d);
        fwd(d, 1);
    }
    for (int k = 0; k < m - 2 * R + r + 1; k++) {
        if (k == 0 && r == R - 1) { /* DualPipe keeps these apart: a smaller bubble */
            fwd(d, 0);
            bwd(d, PP_OP_B, 1);
        } else {
            pair(d, 0);
        }
        pair(d, 1);
    }
    for (int k = 0; k < R - r - 1; k++) {
        bwd(d, PP_OP_B, 1);
        pair(d, 1);
    }
    pp_op g = PP_OP_B;
    for (int k = 0; k < r + 1; k++) {
        if (k == (r + 1) / 2 && r % 2 == 1)
            g = PP_OP_I;
        bwd(d, g, 1);
        if (k == (r + 1) / 2 && r % 2 == 0)
            g = PP_OP_I;
        bwd(d, g, 0);
    }
    for (int k = 0; k < R - r - 1; k++) {
        pending_w(d);
        bwd(d, g, 0);
    }
    while (d->wq_head < d->wq_tail)
        pending_w(d);
}

int pp_gen_dualpipev(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    if (o->chunks != 0 && o->chunks != 2)
        return pp_errf(e, "dualpipev is a two-chunk schedule (two stages per rank in a V): "
                          "--chunks must be 2 (got %d)", o->chunks);
    int R = o->stages, m = o->microbatches;
    if (R >= 1 && m >= 1 && m < 2 * R)
        return pp_errf(e, "dualpipev needs --microbatches >= 2 x --stages (got m=%d, R=%d): "
                          "its main phase starts once every one of the 2R stages has a "
                          "micro-batch", m, R);
    pp_ir_info info;
    if (pp_gen_multi_info("dualpipev", o, 2, PP_PLACE_V, &info, e) < 0)
        return -1;
    int (*wq)[2] = malloc(2 * (size_t)m * sizeof *wq);
    pp_step_builder b;
    if (!wq || pp_step_builder_init(&b, &info, e) < 0) {
        free(wq);
        return wq ? -1 : pp_errf(e, "out of memory");
    }
    for (int r = 0; r < R; r++) {
        dpv_rank d = {&b, {r, 2 * R - 1 - r}, {0, 0}, {0, 0}, wq, 0, 0};
        rank_order(&d, r, R, m);
    }
    free(wq);
    return pp_step_open(&b, out, e);
}
