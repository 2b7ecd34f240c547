/* The passes of a CPU GPT stage over its buffers: where each activation,
 * activation gradient and scratch region lives, then the forward, the I
 * action (input gradient) and the W action (weight gradients), block by
 * block. The layer kernels they chain are gpt_cpu_layers.c's. */
#include "gpt_cpu.h"

#include "gpt_cpu_layers.h"
#include "gpt_cpu_passes.h"

#include <string.h>

/* ------------------------------------------------------------------ */
/* Buffer layouts.                                                     */
/* ------------------------------------------------------------------ */

/* Per-micro-batch activations: [tokens N][targets N] res_0, then per block
 * {ln1 .. fcg, res_out}; the last block's res_out exists only on the last
 * stage (elsewhere it is x_out), followed by the final LayerNorm and probs. */
typedef struct {
    size_t res_in, ln1, ln1_mean, ln1_rstd, qkv, att, atty, res_mid;
    size_t ln2, ln2_mean, ln2_rstd, fc, fcg, res_out;
} block_acts;

typedef struct {
    size_t tokens, targets, res_last, lnf, lnf_mean, lnf_rstd, probs, end;
} stage_acts;

static size_t nc(const pp_gpt_stage *g)
{
    return (size_t)g->B * g->T * g->C;
}

static size_t ntok(const pp_gpt_stage *g)
{
    return (size_t)g->B * g->T;
}

static size_t acts_head(const pp_gpt_stage *g)
{
    return (g->is_first ? ntok(g) : 0) + (g->is_last ? ntok(g) : 0);
}

static size_t acts_block_stride(const pp_gpt_stage *g)
{
    size_t N = ntok(g), NC = nc(g);
    return NC * 16 + N * 4 + (size_t)g->B * g->H * g->T * g->T;
}

static block_acts block_acts_at(const pp_gpt_stage *g, int l)
{
    size_t N = ntok(g), NC = nc(g);
    block_acts a;
    a.res_in = acts_head(g) + (size_t)l * acts_block_stride(g);
    a.ln1 = a.res_in + NC;
    a.ln1_mean = a.ln1 + NC;
    a.ln1_rstd = a.ln1_mean + N;
    a.qkv = a.ln1_rstd + N;
    a.att = a.qkv + 3 * NC;
    a.atty = a.att + (size_t)g->B * g->H * g->T * g->T;
    a.res_mid = a.atty + NC;
    a.ln2 = a.res_mid + NC;
    a.ln2_mean = a.ln2 + NC;
    a.ln2_rstd = a.ln2_mean + N;
    a.fc = a.ln2_rstd + N;
    a.fcg = a.fc + 4 * NC;
    a.res_out = a.fcg + 4 * NC;
    return a;
}

static stage_acts stage_acts_of(const pp_gpt_stage *g)
{
    size_t N = ntok(g), NC = nc(g);
    stage_acts a;
    a.tokens = 0;
    a.targets = g->is_first ? N : 0;
    a.res_last = acts_head(g) + (size_t)g->nblocks * acts_block_stride(g);
    a.lnf = a.res_last + NC;
    a.lnf_mean = a.lnf + NC;
    a.lnf_rstd = a.lnf_mean + N;
    a.probs = a.lnf_rstd + N;
    a.end = g->is_last ? a.probs + N * g->V : a.res_last;
    return a;
}

/* Activation gradients saved by the I action for the W action: per block
 * {d_res_in, d_ln1, d_qkv, d_res_mid, d_ln2, d_fc}, then d_res of the stage
 * output, then (last stage) d_lnf and d_logits. */
typedef struct {
    size_t d_res_in, d_ln1, d_qkv, d_res_mid, d_ln2, d_fc, d_res_out;
} block_gacts;

typedef struct {
    size_t d_res_last, d_lnf, d_logits, end;
} stage_gacts;

static block_gacts block_gacts_at(const pp_gpt_stage *g, int l)
{
    size_t NC = nc(g);
    block_gacts a;
    a.d_res_in = (size_t)l * 11 * NC;
    a.d_ln1 = a.d_res_in + NC;
    a.d_qkv = a.d_ln1 + NC;
    a.d_res_mid = a.d_qkv + 3 * NC;
    a.d_ln2 = a.d_res_mid + NC;
    a.d_fc = a.d_ln2 + NC;
    a.d_res_out = a.d_fc + 4 * NC;
    return a;
}

static stage_gacts stage_gacts_of(const pp_gpt_stage *g)
{
    size_t NC = nc(g);
    stage_gacts a;
    a.d_res_last = (size_t)g->nblocks * 11 * NC;
    a.d_lnf = a.d_res_last + NC;
    a.d_logits = a.d_lnf + NC;
    a.end = g->is_last ? a.d_logits + ntok(g) * g->V : a.d_lnf;
    return a;
}

static pp_cpu_att_dims dims_of(const pp_gpt_stage *g)
{
    pp_cpu_att_dims d = {g->B, g->T, g->C, g->H};
    return d;
}

/* Scratch, one region after the other: the largest transposed weight, one
 * [N][4C] activation gradient, the attention scratch of each team member. */
typedef struct {
    float *wt, *tmp, *attn;
} scratch_parts;

static size_t wt_floats(const pp_gpt_stage *g)
{
    size_t C = g->C, wt = 4 * C * C;
    if (g->is_last && (size_t)g->V * C > wt)
        wt = (size_t)g->V * C;
    return wt;
}

static size_t scratch_floats(const pp_gpt_stage *g)
{
    size_t attn = pp_cpu_attention_scratch(dims_of(g)) * (size_t)pp_pool_threads(g->pool);
    return wt_floats(g) + 4 * nc(g) + attn;
}

static scratch_parts scratch_of(const pp_gpt_stage *g)
{
    scratch_parts p;
    p.wt = g->scratch;
    p.tmp = p.wt + wt_floats(g);
    p.attn = p.tmp + 4 * nc(g);
    return p;
}

size_t pp_gpt_layout_acts_floats(const pp_gpt_stage *g)
{
    return stage_acts_of(g).end;
}

size_t pp_gpt_layout_gacts_floats(const pp_gpt_stage *g)
{
    return stage_gacts_of(g).end;
}

size_t pp_gpt_layout_scratch_floats(const pp_gpt_stage *g)
{
    return scratch_floats(g);
}

/* ------------------------------------------------------------------ */
/* Forward.                                                            */
/* ------------------------------------------------------------------ */

static int check_ids(const int *ids, size_t n, int V, const char *what, pp_err *e)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return pp_errf(e, "%s %d at position %zu is outside the vocabulary [0, %d)", what,
                           ids[i], i, V);
    return 0;
}

static void store_ids(float *dst, const int *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)ids[i];
}

static void embed_forward(const pp_gpt_stage *g, const float *w, const int *tokens, float *x)
{
    int C = g->C;
    for (int b = 0; b < g->B; b++)
        for (int t = 0; t < g->T; t++) {
            size_t n = (size_t)b * g->T + t;
            const float *te = w + g->wte + (size_t)tokens[n] * C;
            const float *pe = w + g->wpe + (size_t)t * C;
            for (int c = 0; c < C; c++)
                x[n * C + c] = te[c] + pe[c];
        }
}


/* One block: x + attn(ln1(x)), then + mlp(ln2(.)), into out. */
static void block_forward(pp_gpt_stage *g, const float *w, float *acts, int l, float *out)
{
    const pp_gpt_block_offsets *p = &g->blocks[l];
    block_acts a = block_acts_at(g, l);
    int N = (int)ntok(g), C = g->C;
    scratch_parts sp = scratch_of(g);
    float *wt = sp.wt;
    pp_cpu_layernorm_forward(g->pool, acts + a.ln1, acts + a.ln1_mean, acts + a.ln1_rstd, acts + a.res_in,
                             w + p->ln1_w, w + p->ln1_b, N, C);
    pp_cpu_linear_forward(g->pool, acts + a.qkv, acts + a.ln1, w + p->qkv_w, w + p->qkv_b, wt, N, C, 3 * C);
    pp_cpu_attention_forward(g->pool, acts + a.atty, acts + a.att, acts + a.qkv, sp.attn,
                             dims_of(g));
    pp_cpu_linear_forward(g->pool, acts + a.res_mid, acts + a.atty, w + p->attn_w, w + p->attn_b, wt, N, C,
                          C);
    pp_cpu_add(g->pool, acts + a.res_mid, acts + a.res_in, nc(g));
    pp_cpu_layernorm_forward(g->pool, acts + a.ln2, acts + a.ln2_mean, acts + a.ln2_rstd, acts + a.res_mid,
                             w + p->ln2_w, w + p->ln2_b, N, C);
    pp_cpu_linear_forward(g->pool, acts + a.fc, acts + a.ln2, w + p->fc_w, w + p->fc_b, wt, N, C, 4 * C);
    pp_cpu_gelu_forward(g->pool, acts + a.fcg, acts + a.fc, 4 * nc(g));
    pp_cpu_linear_forward(g->pool, out, acts + a.fcg, w + p->proj_w, w + p->proj_b, wt, N, 4 * C, C);
    pp_cpu_add(g->pool, out, acts + a.res_mid, nc(g));
}

static void head_forward(pp_gpt_stage *g, const float *w, float *acts, float *loss)
{
    stage_acts a = stage_acts_of(g);
    int N = (int)ntok(g), C = g->C;
    pp_cpu_layernorm_forward(g->pool, acts + a.lnf, acts + a.lnf_mean, acts + a.lnf_rstd, acts + a.res_last,
                             w + g->lnf_w, w + g->lnf_b, N, C);
    pp_cpu_linear_forward(g->pool, acts + a.probs, acts + a.lnf, w + g->head_w, NULL, scratch_of(g).wt, N, C,
                          g->V);
    *loss = pp_cpu_softmax_xent(acts + a.probs, acts + a.targets, N, g->V);
}

int pp_gpt_forward(pp_gpt_stage *g, const float *w, const int *tokens, const float *x_in,
                   const int *targets, float *acts, float *x_out, float *loss, pp_err *e)
{
    size_t N = ntok(g);
    stage_acts sa = stage_acts_of(g);
    if (g->is_first && check_ids(tokens, N, g->V, "token", e) != 0)
        return -1;
    if (g->is_last && check_ids(targets, N, g->V, "target", e) != 0)
        return -1;
    float *x0 = acts + block_acts_at(g, 0).res_in;
    if (g->is_first) {
        store_ids(acts + sa.tokens, tokens, N);
        embed_forward(g, w, tokens, x0);
    } else {
        memcpy(x0, x_in, nc(g) * sizeof *x0);
    }
    if (g->is_last)
        store_ids(acts + sa.targets, targets, N);
    for (int l = 0; l < g->nblocks; l++) {
        int final = l == g->nblocks - 1;
        float *out = final && !g->is_last ? x_out : acts + block_acts_at(g, l).res_out;
        block_forward(g, w, acts, l, out);
    }
    if (g->is_last)
        head_forward(g, w, acts, loss);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Backward: I action.                                                 */
/* ------------------------------------------------------------------ */

static void head_backward_input(pp_gpt_stage *g, const float *w, const float *acts,
                                float *gacts, float loss_scale)
{
    stage_acts a = stage_acts_of(g);
    stage_gacts ga = stage_gacts_of(g);
    int N = (int)ntok(g), C = g->C;
    pp_cpu_xent_backward(gacts + ga.d_logits, acts + a.probs, acts + a.targets, N, g->V,
                         loss_scale);
    pp_cpu_linear_backward_input(g->pool, gacts + ga.d_lnf, gacts + ga.d_logits, w + g->head_w, N, C, g->V);
    memset(gacts + ga.d_res_last, 0, nc(g) * sizeof *gacts);
    pp_cpu_layernorm_backward_input(g->pool, gacts + ga.d_res_last, gacts + ga.d_lnf, acts + a.res_last,
                                    acts + a.lnf_mean, acts + a.lnf_rstd, w + g->lnf_w, N, C);
}

static void block_backward_input(pp_gpt_stage *g, const float *w, const float *acts,
                                 float *gacts, int l)
{
    const pp_gpt_block_offsets *p = &g->blocks[l];
    block_acts a = block_acts_at(g, l);
    block_gacts d = block_gacts_at(g, l);
    int N = (int)ntok(g), C = g->C;
    size_t NC = nc(g);
    scratch_parts sp = scratch_of(g);
    float *tmp = sp.tmp;
    /* MLP branch. */
    pp_cpu_linear_backward_input(g->pool, tmp, gacts + d.d_res_out, w + p->proj_w, N, 4 * C, C);
    pp_cpu_gelu_backward(g->pool, gacts + d.d_fc, acts + a.fc, tmp, 4 * NC);
    pp_cpu_linear_backward_input(g->pool, gacts + d.d_ln2, gacts + d.d_fc, w + p->fc_w, N, C, 4 * C);
    memcpy(gacts + d.d_res_mid, gacts + d.d_res_out, NC * sizeof *gacts);
    pp_cpu_layernorm_backward_input(g->pool, gacts + d.d_res_mid, gacts + d.d_ln2, acts + a.res_mid,
                                    acts + a.ln2_mean, acts + a.ln2_rstd, w + p->ln2_w, N, C);
    /* Attention branch. */
    pp_cpu_linear_backward_input(g->pool, tmp, gacts + d.d_res_mid, w + p->attn_w, N, C, C);
    pp_cpu_attention_backward(g->pool, gacts + d.d_qkv, sp.attn, tmp, acts + a.qkv,
                              acts + a.att, dims_of(g));
    pp_cpu_linear_backward_input(g->pool, gacts + d.d_ln1, gacts + d.d_qkv, w + p->qkv_w, N, C, 3 * C);
    memcpy(gacts + d.d_res_in, gacts + d.d_res_mid, NC * sizeof *gacts);
    pp_cpu_layernorm_backward_input(g->pool, gacts + d.d_res_in, gacts + d.d_ln1, acts + a.res_in,
                                    acts + a.ln1_mean, acts + a.ln1_rstd, w + p->ln1_w, N, C);
}

void pp_gpt_backward_input(pp_gpt_stage *g, const float *w, const float *acts,
                           const float *dx_out, float *dx_in, float *gacts, float loss_scale)
{
    size_t NC = nc(g);
    if (g->is_last)
        head_backward_input(g, w, acts, gacts, loss_scale);
    else /* kept: the W action reads it after the caller reuses dx_out */
        memcpy(gacts + stage_gacts_of(g).d_res_last, dx_out, NC * sizeof *gacts);
    for (int l = g->nblocks - 1; l >= 0; l--)
        block_backward_input(g, w, acts, gacts, l);
    if (!g->is_first)
        memcpy(dx_in, gacts + block_gacts_at(g, 0).d_res_in, NC * sizeof *dx_in);
}

/* ------------------------------------------------------------------ */
/* Backward: W action.                                                 */
/* ------------------------------------------------------------------ */

static void head_backward_weight(pp_gpt_stage *g, const float *acts, const float *gacts,
                                 float *grad)
{
    stage_acts a = stage_acts_of(g);
    stage_gacts ga = stage_gacts_of(g);
    int N = (int)ntok(g), C = g->C;
    pp_cpu_linear_backward_weight(g->pool, grad + g->head_w, NULL, gacts + ga.d_logits, acts + a.lnf, N, C,
                                  g->V);
    pp_cpu_layernorm_backward_weight(grad + g->lnf_w, grad + g->lnf_b, gacts + ga.d_lnf,
                                     acts + a.res_last, acts + a.lnf_mean, acts + a.lnf_rstd, N, C);
}

static void block_backward_weight(pp_gpt_stage *g, const float *acts, const float *gacts,
                                  float *grad, int l)
{
    const pp_gpt_block_offsets *p = &g->blocks[l];
    block_acts a = block_acts_at(g, l);
    block_gacts d = block_gacts_at(g, l);
    int N = (int)ntok(g), C = g->C;
    pp_cpu_linear_backward_weight(g->pool, grad + p->proj_w, grad + p->proj_b, gacts + d.d_res_out,
                                  acts + a.fcg, N, 4 * C, C);
    pp_cpu_linear_backward_weight(g->pool, grad + p->fc_w, grad + p->fc_b, gacts + d.d_fc, acts + a.ln2, N,
                                  C, 4 * C);
    pp_cpu_layernorm_backward_weight(grad + p->ln2_w, grad + p->ln2_b, gacts + d.d_ln2,
                                     acts + a.res_mid, acts + a.ln2_mean, acts + a.ln2_rstd, N, C);
    pp_cpu_linear_backward_weight(g->pool, grad + p->attn_w, grad + p->attn_b, gacts + d.d_res_mid,
                                  acts + a.atty, N, C, C);
    pp_cpu_linear_backward_weight(g->pool, grad + p->qkv_w, grad + p->qkv_b, gacts + d.d_qkv, acts + a.ln1,
                                  N, C, 3 * C);
    pp_cpu_layernorm_backward_weight(grad + p->ln1_w, grad + p->ln1_b, gacts + d.d_ln1,
                                     acts + a.res_in, acts + a.ln1_mean, acts + a.ln1_rstd, N, C);
}

static void embed_backward_weight(const pp_gpt_stage *g, const float *acts, const float *dx,
                                  float *grad)
{
    const float *tokens = acts + stage_acts_of(g).tokens;
    int C = g->C;
    for (int b = 0; b < g->B; b++)
        for (int t = 0; t < g->T; t++) {
            size_t n = (size_t)b * g->T + t;
            float *te = grad + g->wte + (size_t)tokens[n] * C;
            float *pe = grad + g->wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) {
                te[c] += dx[n * C + c];
                pe[c] += dx[n * C + c];
            }
        }
}

void pp_gpt_backward_weight(pp_gpt_stage *g, const float *acts, const float *gacts,
                            float *grad)
{
    if (g->is_last)
        head_backward_weight(g, acts, gacts, grad);
    for (int l = g->nblocks - 1; l >= 0; l--)
        block_backward_weight(g, acts, gacts, grad, l);
    if (g->is_first)
        embed_backward_weight(g, acts, gacts + block_gacts_at(g, 0).d_res_in, grad);
}

void pp_gpt_backward(pp_gpt_stage *g, const float *w, const float *acts, const float *dx_out,
                     float *dx_in, float *grad, float loss_scale)
{
    pp_gpt_backward_input(g, w, acts, dx_out, dx_in, g->gacts_scratch, loss_scale);
    pp_gpt_backward_weight(g, acts, g->gacts_scratch, grad);
}

