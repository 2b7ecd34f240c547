/* The GPT's products on bf16 storage (PPSCHED_CUDA_MATH=bf16): a block and
 * the output layer forward, backward to the input and to the weights,
 * through cuBLASLt (cuda_lt.cu) on bf16 activations and the bf16 shadow of
 * the weights. cuda_layers.cu's entries call these in place of their fp32
 * products; LayerNorm, the residual stream and the loss stay fp32.
 *
 * Fused: the bias of every product, the residual add (cuBLASLt's C, with
 * beta 1), GELU forward (its pre-activation kept as the epilogue's aux)
 * and backward (d GELU from that aux). Not fused: the bias gradients, for
 * cuBLASLt's BGRADB epilogue writes the bias gradient where every
 * micro-batch must add to it; they are column sums in fp32 instead.
 * The logits are bf16 (cuBLASLt writes them so), and so are their
 * probabilities and gradient, in place; the loss sums in fp32.
 * Activation gradients: those a product reads (d_fc, d_qkv, d_ln*, the
 * logits', and d_res_mid, whose fp32 LayerNorm reads from
 * scratch) are bf16 in the activation buffer; the residual stream's d_res
 * are fp32 and converted into the stage's bf16 scratch for each product
 * that reads them. */
#include <cublasLt.h>
#include <cublas_v2.h>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

/* Row-major linear layers, W[OC][IC] as in PyTorch, cuBLASLt's
 * column-major view: a row-major [rows][cols] matrix is column-major
 * cols x rows with the same leading dimension. */

/* out[N][OC] (rows ldo apart, 0: OC; type dt) = in[N][IC] W^T with the
 * epilogue's bias (out's type) and aux, + res when res (fp32 out). */
static void lin_fwd(cuda_stage *c, void *out, cudaDataType_t dt, const bf16 *in, const bf16 *W,
                    cublasLtEpilogue_t epi, const void *bias, bf16 *aux, const float *res, int IC,
                    int OC, int ldo = 0)
{
    lt_args a = {};
    a.ta = CUBLAS_OP_T;
    a.tb = CUBLAS_OP_N;
    a.m = OC;
    a.n = c->N;
    a.k = IC;
    a.A = W;
    a.lda = IC;
    a.B = in;
    a.ldb = IC;
    a.Cm = res;
    a.beta = 1.0f;
    a.D = out;
    a.dt = dt;
    a.ldd = ldo ? ldo : OC;
    a.epi = epi;
    a.bias = bias;
    a.aux = aux;
    lt_matmul(c, a);
}

/* din[N][IC] (bf16) = dout[N][OC] (rows ld apart, 0: OC) W, times
 * gelu'(aux) with DGELU. */
static void lin_bwd_in(cuda_stage *c, bf16 *din, const bf16 *dout, const bf16 *W, int IC, int OC,
                       int ld = 0, cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT,
                       bf16 *aux = nullptr)
{
    lt_args a = {};
    a.ta = CUBLAS_OP_N;
    a.tb = CUBLAS_OP_N;
    a.m = IC;
    a.n = c->N;
    a.k = OC;
    a.A = W;
    a.lda = IC;
    a.B = dout;
    a.ldb = ld ? ld : OC;
    a.D = din;
    a.dt = CUDA_R_16BF;
    a.ldd = IC;
    a.epi = epi;
    a.aux = aux;
    lt_matmul(c, a);
}

/* dW[OC][IC] (fp32) += dout[N][OC]^T (rows ld apart, 0: OC) in[N][IC]. */
static void lin_bwd_w(cuda_stage *c, float *dW, const bf16 *dout, const bf16 *in, int IC, int OC,
                      int ld = 0)
{
    lt_args a = {};
    a.ta = CUBLAS_OP_N;
    a.tb = CUBLAS_OP_T;
    a.m = IC;
    a.n = OC;
    a.k = c->N;
    a.A = in;
    a.lda = IC;
    a.B = dout;
    a.ldb = ld ? ld : OC;
    a.Cm = dW;
    a.beta = 1.0f;
    a.D = dW;
    a.dt = CUDA_R_32F;
    a.ldd = IC;
    a.epi = CUBLASLT_EPILOGUE_DEFAULT;
    lt_matmul(c, a);
}

/* out[cols] += column sums of x[N][cols], fp32. */
static void colsum_f32(cuda_stage *c, float *out, const float *x, int cols)
{
    float one = 1.0f;
    ckb(c, cublasSgemv(c->blas, CUBLAS_OP_N, cols, c->N, &one, x, cols, c->ones, 1, &one, out, 1),
        "cublasSgemv");
}

/* dout (fp32) in the stage's bf16 scratch, for a product. */
static bf16 *to_scratch(cuda_stage *c, const float *x)
{
    k_to_bf16(c->hs, x, (size_t)c->N * c->C, c->stream);
    check_launch(c, "to_bf16 (gradient)");
    return c->hs;
}

/* --- forward ------------------------------------------------------------------ */

void block_forward_bf16(cuda_stage *c, const float *w, const bf16 *wh, void *acts, int l,
                        float *out)
{
    const pp_gpt_block_offsets *p = &c->g.blocks[l];
    const block_layout &a = c->L.blk[l];
    int N = c->N, C = c->C;
    const cublasLtEpilogue_t BIAS = CUBLASLT_EPILOGUE_BIAS;
    k_layernorm_forward(H(acts, a.ln1), F(acts, a.ln1_mean), F(acts, a.ln1_rstd),
                        F(acts, a.res_in), w + p->ln1_w, w + p->ln1_b, N, C, c->stream);
    check_launch(c, "layernorm_forward");
    lin_fwd(c, H(acts, a.qkv), CUDA_R_16BF, H(acts, a.ln1), wh + p->qkv_w, BIAS, wh + p->qkv_b,
            nullptr, nullptr, C, 3 * C);
    attention_forward_bf16(c, acts, a);
    lin_fwd(c, F(acts, a.res_mid), CUDA_R_32F, H(acts, a.atty), wh + p->attn_w, BIAS,
            w + p->attn_b, nullptr, F(acts, a.res_in), C, C);
    k_layernorm_forward(H(acts, a.ln2), F(acts, a.ln2_mean), F(acts, a.ln2_rstd),
                        F(acts, a.res_mid), w + p->ln2_w, w + p->ln2_b, N, C, c->stream);
    check_launch(c, "layernorm_forward");
    lin_fwd(c, H(acts, a.fcg), CUDA_R_16BF, H(acts, a.ln2), wh + p->fc_w,
            CUBLASLT_EPILOGUE_GELU_AUX_BIAS, wh + p->fc_b, H(acts, a.fc), nullptr, C, 4 * C);
    lin_fwd(c, out, CUDA_R_32F, H(acts, a.fcg), wh + p->proj_w, BIAS, w + p->proj_b, nullptr,
            F(acts, a.res_mid), 4 * C, C);
}

/* Final LayerNorm, the logits [N][Vp] (bf16), their probabilities in
 * place and every position's loss. */
void head_forward_bf16(cuda_stage *c, const float *w, const bf16 *wh, void *acts)
{
    const pp_gpt_stage *g = &c->g;
    const acts_layout &L = c->L;
    k_layernorm_forward(H(acts, L.lnf), F(acts, L.lnf_mean), F(acts, L.lnf_rstd),
                        F(acts, L.res_last), w + g->lnf_w, w + g->lnf_b, c->N, c->C, c->stream);
    check_launch(c, "layernorm_forward");
    lin_fwd(c, H(acts, L.logits), CUDA_R_16BF, H(acts, L.lnf), wh + g->head_w,
            CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, nullptr, c->C, c->V, c->Vp);
    k_xent_forward(H(acts, L.logits), F(acts, L.losses), I(acts, L.targets), c->N, c->V, c->Vp,
                   c->stream);
    check_launch(c, "xent_forward");
}

/* --- backward: I ------------------------------------------------------------------ */

void block_backward_input_bf16(cuda_stage *c, const float *w, const bf16 *wh, void *acts, int l)
{
    const pp_gpt_block_offsets *p = &c->g.blocks[l];
    const block_layout &a = c->L.blk[l];
    int N = c->N, C = c->C;
    const float *d_out = F(acts, c->L.d_res[l + 1]);
    float *d_mid = c->tmp; /* fp32 for LayerNorm; the buffer keeps it in bf16 */
    bf16 *dy = c->hs + (size_t)N * C; /* the second half of the scratch */
    /* MLP branch: d fc = (d out W_proj) gelu'(fc) in one product. */
    lin_bwd_in(c, H(acts, a.d_fc), to_scratch(c, d_out), wh + p->proj_w, 4 * C, C, 0,
               CUBLASLT_EPILOGUE_DGELU, H(acts, a.fc));
    lin_bwd_in(c, H(acts, a.d_ln2), H(acts, a.d_fc), wh + p->fc_w, C, 4 * C);
    k_layernorm_backward_input(d_mid, d_out, H(acts, a.d_ln2), F(acts, a.res_mid),
                               F(acts, a.ln2_mean), F(acts, a.ln2_rstd), w + p->ln2_w, N, C,
                               c->stream);
    check_launch(c, "layernorm_backward_input");
    k_to_bf16(H(acts, a.d_res_mid), d_mid, (size_t)N * C, c->stream);
    check_launch(c, "to_bf16 (gradient)");
    /* Attention branch. */
    lin_bwd_in(c, dy, H(acts, a.d_res_mid), wh + p->attn_w, C, C);
    attention_backward_bf16(c, acts, a, dy);
    lin_bwd_in(c, H(acts, a.d_ln1), H(acts, a.d_qkv), wh + p->qkv_w, C, 3 * C);
    k_layernorm_backward_input(F(acts, c->L.d_res[l]), d_mid, H(acts, a.d_ln1),
                               F(acts, a.res_in), F(acts, a.ln1_mean), F(acts, a.ln1_rstd),
                               w + p->ln1_w, N, C, c->stream);
    check_launch(c, "layernorm_backward_input");
}

/* The loss's gradient (over the probabilities, bf16) through the output
 * layer and the final LayerNorm. */
void head_backward_input_bf16(cuda_stage *c, const float *w, const bf16 *wh, void *acts,
                              float loss_scale)
{
    const pp_gpt_stage *g = &c->g;
    const acts_layout &L = c->L;
    int N = c->N;
    k_xent_backward(H(acts, L.logits), I(acts, L.targets), N, c->V, c->Vp, loss_scale / N,
                    c->stream);
    check_launch(c, "xent_backward");
    lin_bwd_in(c, H(acts, L.d_lnf), H(acts, L.logits), wh + g->head_w, c->C, c->V, c->Vp);
    k_layernorm_backward_input(F(acts, L.d_res[g->nblocks]), nullptr, H(acts, L.d_lnf),
                               F(acts, L.res_last), F(acts, L.lnf_mean), F(acts, L.lnf_rstd),
                               w + g->lnf_w, N, c->C, c->stream);
    check_launch(c, "layernorm_backward_input");
}

/* --- backward: W ------------------------------------------------------------------ */

static void layernorm_weight_bf16(cuda_stage *c, float *dw, float *db, const bf16 *dout,
                                  const float *x, const float *mean, const float *rstd)
{
    k_layernorm_dout_xhat(c->tmp, dout, x, mean, rstd, c->N, c->C, c->stream);
    check_launch(c, "layernorm_dout_xhat");
    colsum_f32(c, dw, c->tmp, c->C);
    colsum_bf16(c, db, dout, c->N, c->C);
}

static void block_weight_bf16(cuda_stage *c, void *acts, float *grad, int l)
{
    const pp_gpt_block_offsets *p = &c->g.blocks[l];
    const block_layout &a = c->L.blk[l];
    int N = c->N, C = c->C;
    const float *d_out = F(acts, c->L.d_res[l + 1]);
    const bf16 *d_mid = H(acts, a.d_res_mid);
    lin_bwd_w(c, grad + p->proj_w, to_scratch(c, d_out), H(acts, a.fcg), 4 * C, C);
    colsum_f32(c, grad + p->proj_b, d_out, C);
    lin_bwd_w(c, grad + p->fc_w, H(acts, a.d_fc), H(acts, a.ln2), C, 4 * C);
    colsum_bf16(c, grad + p->fc_b, H(acts, a.d_fc), N, 4 * C);
    layernorm_weight_bf16(c, grad + p->ln2_w, grad + p->ln2_b, H(acts, a.d_ln2),
                          F(acts, a.res_mid), F(acts, a.ln2_mean), F(acts, a.ln2_rstd));
    lin_bwd_w(c, grad + p->attn_w, d_mid, H(acts, a.atty), C, C);
    colsum_bf16(c, grad + p->attn_b, d_mid, N, C);
    lin_bwd_w(c, grad + p->qkv_w, H(acts, a.d_qkv), H(acts, a.ln1), C, 3 * C);
    colsum_bf16(c, grad + p->qkv_b, H(acts, a.d_qkv), N, 3 * C);
    layernorm_weight_bf16(c, grad + p->ln1_w, grad + p->ln1_b, H(acts, a.d_ln1),
                          F(acts, a.res_in), F(acts, a.ln1_mean), F(acts, a.ln1_rstd));
}

/* Every weight gradient but the embeddings' (cuda_backward_weight's). */
void backward_weight_bf16(cuda_stage *c, void *acts, float *grad)
{
    const pp_gpt_stage *g = &c->g;
    const acts_layout &L = c->L;
    if (g->is_last) {
        lin_bwd_w(c, grad + g->head_w, H(acts, L.logits), H(acts, L.lnf), c->C, c->V, c->Vp);
        layernorm_weight_bf16(c, grad + g->lnf_w, grad + g->lnf_b, H(acts, L.d_lnf),
                              F(acts, L.res_last), F(acts, L.lnf_mean), F(acts, L.lnf_rstd));
    }
    for (int l = g->nblocks - 1; l >= 0; l--)
        block_weight_bf16(c, acts, grad, l);
}

} // namespace pp_cuda
