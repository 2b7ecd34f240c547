/* The GPT's layers on a stage's stream: cuBLAS products, the linear and
 * LayerNorm launchers, a transformer block forward and backward, and the
 * forward, backward_input and backward_weight entries of the backend.
 * On bf16 storage the products are cuda_layers_bf16.cu's. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstring>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

/* --- matrix products ---------------------------------------------------- */

/* Column-major GEMM: C = alpha op(A) op(B) + beta C, fp32 storage, the
 * stage's compute type. */
static void gemm(cuda_stage *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                 float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                 float *Cm, int ldc)
{
    ckb(c,
        cublasGemmEx(c->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb,
                     &beta, Cm, CUDA_R_32F, ldc, c->compute, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

void gemm_batched(cuda_stage *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                  float alpha, const float *A, int lda, long long sa, const float *B, int ldb,
                  long long sb, float beta, float *Cm, int ldc, long long sc, int batch)
{
    ckb(c,
        cublasGemmStridedBatchedEx(c->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, sa, B,
                                   CUDA_R_32F, ldb, sb, &beta, Cm, CUDA_R_32F, ldc, sc, batch,
                                   c->compute, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx");
}

/* Row-major linear layers, W[OC][IC] as in PyTorch. The output's rows
 * are ld apart (0: OC), for the padded logits (cuda_stage::Vp). */

/* out[N][OC] = in[N][IC] W^T (+ bias) (+ res). */
static void linear_forward(cuda_stage *c, float *out, const float *in, const float *W,
                           const float *bias, const float *res, int IC, int OC, int ld = 0)
{
    gemm(c, CUBLAS_OP_T, CUBLAS_OP_N, OC, c->N, IC, 1.0f, W, IC, in, IC, 0.0f, out,
         ld ? ld : OC);
    if (bias) {
        k_bias_residual(out, bias, res, c->N, OC, c->stream);
        check_launch(c, "bias_residual");
    }
}

/* din[N][IC] = dout[N][OC] W. */
static void linear_backward_input(cuda_stage *c, float *din, const float *dout, const float *W,
                                  int IC, int OC, int ld = 0)
{
    gemm(c, CUBLAS_OP_N, CUBLAS_OP_N, IC, c->N, OC, 1.0f, W, IC, dout, ld ? ld : OC, 0.0f, din,
         IC);
}

/* dW[OC][IC] += dout^T in; dbias[OC] += column sums of dout. */
static void linear_backward_weight(cuda_stage *c, float *dW, float *dbias, const float *dout,
                                   const float *in, int IC, int OC, int ld = 0)
{
    gemm(c, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, c->N, 1.0f, in, IC, dout, ld ? ld : OC, 1.0f, dW,
         IC);
    if (dbias) { /* (never with ld: the output layer has no bias) */
        float one = 1.0f;
        ckb(c, cublasSgemv(c->blas, CUBLAS_OP_N, OC, c->N, &one, dout, OC, c->ones, 1, &one,
                           dbias, 1),
            "cublasSgemv");
    }
}

static void layernorm_backward_weight(cuda_stage *c, float *dw, float *db, const float *dout,
                                      const float *x, const float *mean, const float *rstd)
{
    float one = 1.0f;
    k_layernorm_dout_xhat(c->tmp, dout, x, mean, rstd, c->N, c->C, c->stream);
    check_launch(c, "layernorm_dout_xhat");
    ckb(c, cublasSgemv(c->blas, CUBLAS_OP_N, c->C, c->N, &one, c->tmp, c->C, c->ones, 1, &one,
                       dw, 1),
        "cublasSgemv");
    ckb(c, cublasSgemv(c->blas, CUBLAS_OP_N, c->C, c->N, &one, dout, c->C, c->ones, 1, &one, db,
                       1),
        "cublasSgemv");
}

/* --- forward ---------------------------------------------------------------- */

static int check_ids(const int *ids, int n, int V, const char *what, pp_err *e)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return pp_errf(e, "%s %d at position %d is outside the vocabulary [0, %d)", what,
                           ids[i], i, V);
    return 0;
}

/* Tokens, and for the embedding gradient the positions grouped by token
 * (counting sort, stable), uploaded in one copy. */
static void upload_tokens(cuda_stage *c, void *acts, const int *tokens)
{
    int N = c->N, V = c->V;
    const acts_layout &L = c->L;
    int *h = c->h_head.data();
    int *cnt = c->h_counts.data();
    memset(cnt, 0, ((size_t)V + 1) * sizeof *cnt);
    memcpy(h + L.tokens, tokens, (size_t)N * sizeof *h);
    for (int n = 0; n < N; n++)
        cnt[tokens[n] + 1]++;
    int nseg = 0;
    for (int v = 0; v < V; v++) {
        if (cnt[v + 1] > 0) {
            h[L.seg_token + nseg] = v;
            h[L.seg_start + nseg] = cnt[v];
            nseg++;
        }
        cnt[v + 1] += cnt[v]; /* cnt[v]: first slot of token v */
    }
    h[L.seg_start + nseg] = N;
    h[L.nseg] = nseg;
    for (int n = 0; n < N; n++)
        h[L.perm + cnt[tokens[n]]++] = n;
    /* Pageable source: the copy is staged before this returns, so the host
     * arrays may be reused at once. */
    ck(c, cudaMemcpyAsync(acts, h, (L.nseg + 1) * sizeof(int), cudaMemcpyHostToDevice,
                          c->stream),
       "upload tokens");
}

static void block_forward(cuda_stage *c, const float *w, void *acts, int l, float *out)
{
    const pp_gpt_block_offsets *p = &c->g.blocks[l];
    const block_layout &a = c->L.blk[l];
    int N = c->N, C = c->C;
    k_layernorm_forward(F(acts, a.ln1), F(acts, a.ln1_mean), F(acts, a.ln1_rstd),
                        F(acts, a.res_in), w + p->ln1_w, w + p->ln1_b, N, C, c->stream);
    check_launch(c, "layernorm_forward");
    linear_forward(c, F(acts, a.qkv), F(acts, a.ln1), w + p->qkv_w, w + p->qkv_b, nullptr, C,
                   3 * C);
    attention_forward(c, acts, a);
    linear_forward(c, F(acts, a.res_mid), F(acts, a.atty), w + p->attn_w, w + p->attn_b,
                   F(acts, a.res_in), C, C);
    k_layernorm_forward(F(acts, a.ln2), F(acts, a.ln2_mean), F(acts, a.ln2_rstd),
                        F(acts, a.res_mid), w + p->ln2_w, w + p->ln2_b, N, C, c->stream);
    check_launch(c, "layernorm_forward");
    linear_forward(c, F(acts, a.fc), F(acts, a.ln2), w + p->fc_w, w + p->fc_b, nullptr, C,
                   4 * C);
    k_gelu_forward(F(acts, a.fcg), F(acts, a.fc), 4 * (size_t)N * C, c->stream);
    check_launch(c, "gelu_forward");
    linear_forward(c, out, F(acts, a.fcg), w + p->proj_w, w + p->proj_b, F(acts, a.res_mid),
                   4 * C, C);
}

int cuda_forward(void *stage, const void *wv, const int *tokens, const void *x_in,
                 const int *targets, void *acts, void *x_out, float *loss, pp_err *e)
{
    cuda_stage *c = S(stage);
    const pp_gpt_stage *g = &c->g;
    const float *w = (const float *)wv;
    const acts_layout &L = c->L;
    int N = c->N;
    size_t NC = (size_t)N * c->C;
    stage_scope in(c);
    if (status(c, e) < 0)
        return -1;
    if (g->is_first && check_ids(tokens, N, c->V, "token", e) != 0)
        return -1;
    if (g->is_last && check_ids(targets, N, c->V, "target", e) != 0)
        return -1;
    float *x0 = F(acts, L.blk.empty() ? L.res_last : L.blk[0].res_in);
    if (g->is_first) {
        upload_tokens(c, acts, tokens);
        k_embed_forward(x0, I(acts, L.tokens), w + g->wte, w + g->wpe, c->B, c->T, c->C,
                        c->stream);
        check_launch(c, "embed_forward");
    } else {
        ck(c, cudaMemcpyAsync(x0, x_in, NC * sizeof(float), cudaMemcpyDeviceToDevice, c->stream),
           "copy x_in");
    }
    if (g->is_last)
        ck(c, cudaMemcpyAsync(I(acts, L.targets), targets, (size_t)N * sizeof(int),
                              cudaMemcpyHostToDevice, c->stream),
           "upload targets");
    bool products = g->nblocks > 0 || g->is_last;
    const bf16 *wh = c->bf16 && products ? weights_bf16(c, w) : nullptr;
    for (int l = 0; l < g->nblocks; l++) {
        int final = l == g->nblocks - 1;
        float *out;
        if (!final)
            out = F(acts, L.blk[l + 1].res_in);
        else
            out = g->is_last ? F(acts, L.res_last) : (float *)x_out;
        if (c->bf16)
            block_forward_bf16(c, w, wh, acts, l, out);
        else
            block_forward(c, w, acts, l, out);
    }
    if (!g->is_last && g->nblocks == 0) /* a stage without blocks passes x on */
        ck(c, cudaMemcpyAsync(x_out, x0, NC * sizeof(float), cudaMemcpyDeviceToDevice,
                              c->stream),
           "copy x_out");
    if (g->is_last && c->bf16)
        head_forward_bf16(c, w, wh, acts);
    if (g->is_last && !c->bf16) {
        k_layernorm_forward(F(acts, L.lnf), F(acts, L.lnf_mean), F(acts, L.lnf_rstd),
                            F(acts, L.res_last), w + g->lnf_w, w + g->lnf_b, N, c->C,
                            c->stream);
        check_launch(c, "layernorm_forward");
        linear_forward(c, F(acts, L.logits), F(acts, L.lnf), w + g->head_w, nullptr, nullptr,
                       c->C, c->V, c->Vp);
        k_xent_forward(F(acts, L.logits), F(acts, L.losses), I(acts, L.targets), N, c->V,
                       c->Vp, c->stream);
        check_launch(c, "xent_forward");
    }
    if (g->is_last) {
        k_mean(c->d_loss, F(acts, L.losses), N, c->stream);
        check_launch(c, "mean");
        ck(c, cudaMemcpyAsync(loss, c->d_loss, sizeof(float), cudaMemcpyDeviceToHost, c->stream),
           "loss to host");
        ck(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    }
    if (status(c, e) < 0)
        return -1;
    return 0;
}

/* --- backward: I -------------------------------------------------------------- */

static void block_backward_input(cuda_stage *c, const float *w, void *acts, int l)
{
    const pp_gpt_block_offsets *p = &c->g.blocks[l];
    const block_layout &a = c->L.blk[l];
    const acts_layout &L = c->L;
    int N = c->N, C = c->C;
    float *d_out = F(acts, L.d_res[l + 1]);
    /* MLP branch. */
    linear_backward_input(c, c->tmp, d_out, w + p->proj_w, 4 * C, C);
    k_gelu_backward(F(acts, a.d_fc), F(acts, a.fc), c->tmp, 4 * (size_t)N * C, c->stream);
    check_launch(c, "gelu_backward");
    linear_backward_input(c, F(acts, a.d_ln2), F(acts, a.d_fc), w + p->fc_w, C, 4 * C);
    k_layernorm_backward_input(F(acts, a.d_res_mid), d_out, F(acts, a.d_ln2), F(acts, a.res_mid),
                               F(acts, a.ln2_mean), F(acts, a.ln2_rstd), w + p->ln2_w, N, C,
                               c->stream);
    check_launch(c, "layernorm_backward_input");
    /* Attention branch. */
    linear_backward_input(c, c->tmp, F(acts, a.d_res_mid), w + p->attn_w, C, C);
    attention_backward(c, acts, a, c->tmp);
    linear_backward_input(c, F(acts, a.d_ln1), F(acts, a.d_qkv), w + p->qkv_w, C, 3 * C);
    k_layernorm_backward_input(F(acts, L.d_res[l]), F(acts, a.d_res_mid), F(acts, a.d_ln1),
                               F(acts, a.res_in), F(acts, a.ln1_mean), F(acts, a.ln1_rstd),
                               w + p->ln1_w, N, C, c->stream);
    check_launch(c, "layernorm_backward_input");
}

int cuda_backward_input(void *stage, const void *wv, void *acts, const void *dx_out,
                        void *dx_in, float loss_scale, pp_err *e)
{
    cuda_stage *c = S(stage);
    const pp_gpt_stage *g = &c->g;
    const float *w = (const float *)wv;
    const acts_layout &L = c->L;
    int N = c->N, nb = g->nblocks;
    size_t NC = (size_t)N * c->C;
    stage_scope in(c);
    if (status(c, e) < 0)
        return -1;
    bool products = nb > 0 || g->is_last;
    const bf16 *wh = c->bf16 && products ? weights_bf16(c, w) : nullptr;
    if (g->is_last && c->bf16) {
        head_backward_input_bf16(c, w, wh, acts, loss_scale);
    } else if (g->is_last) {
        k_xent_backward(F(acts, L.logits), I(acts, L.targets), N, c->V, c->Vp, loss_scale / N,
                        c->stream);
        check_launch(c, "xent_backward");
        linear_backward_input(c, F(acts, L.d_lnf), F(acts, L.logits), w + g->head_w, c->C,
                              c->V, c->Vp);
        k_layernorm_backward_input(F(acts, L.d_res[nb]), nullptr, F(acts, L.d_lnf),
                                   F(acts, L.res_last), F(acts, L.lnf_mean),
                                   F(acts, L.lnf_rstd), w + g->lnf_w, N, c->C, c->stream);
        check_launch(c, "layernorm_backward_input");
    } else {
        ck(c, cudaMemcpyAsync(F(acts, L.d_res[nb]), dx_out, NC * sizeof(float),
                              cudaMemcpyDeviceToDevice, c->stream),
           "copy dx_out");
    }
    for (int l = nb - 1; l >= 0; l--) {
        if (c->bf16)
            block_backward_input_bf16(c, w, wh, acts, l);
        else
            block_backward_input(c, w, acts, l);
    }
    if (!g->is_first)
        ck(c, cudaMemcpyAsync(dx_in, F(acts, L.d_res[0]), NC * sizeof(float),
                              cudaMemcpyDeviceToDevice, c->stream),
           "copy dx_in");
    return status(c, e);
}

/* --- backward: W ---------------------------------------------------------------- */

/* Every weight gradient but the embeddings', fp32 storage. */
static void backward_weight(cuda_stage *c, void *acts, float *grad)
{
    const pp_gpt_stage *g = &c->g;
    const acts_layout &L = c->L;
    int C = c->C;
    if (g->is_last) {
        linear_backward_weight(c, grad + g->head_w, nullptr, F(acts, L.logits), F(acts, L.lnf),
                               C, c->V, c->Vp);
        layernorm_backward_weight(c, grad + g->lnf_w, grad + g->lnf_b, F(acts, L.d_lnf),
                                  F(acts, L.res_last), F(acts, L.lnf_mean),
                                  F(acts, L.lnf_rstd));
    }
    for (int l = g->nblocks - 1; l >= 0; l--) {
        const pp_gpt_block_offsets *p = &g->blocks[l];
        const block_layout &a = L.blk[l];
        linear_backward_weight(c, grad + p->proj_w, grad + p->proj_b, F(acts, L.d_res[l + 1]),
                               F(acts, a.fcg), 4 * C, C);
        linear_backward_weight(c, grad + p->fc_w, grad + p->fc_b, F(acts, a.d_fc),
                               F(acts, a.ln2), C, 4 * C);
        layernorm_backward_weight(c, grad + p->ln2_w, grad + p->ln2_b, F(acts, a.d_ln2),
                                  F(acts, a.res_mid), F(acts, a.ln2_mean), F(acts, a.ln2_rstd));
        linear_backward_weight(c, grad + p->attn_w, grad + p->attn_b, F(acts, a.d_res_mid),
                               F(acts, a.atty), C, C);
        linear_backward_weight(c, grad + p->qkv_w, grad + p->qkv_b, F(acts, a.d_qkv),
                               F(acts, a.ln1), C, 3 * C);
        layernorm_backward_weight(c, grad + p->ln1_w, grad + p->ln1_b, F(acts, a.d_ln1),
                                  F(acts, a.res_in), F(acts, a.ln1_mean), F(acts, a.ln1_rstd));
    }
}

int cuda_backward_weight(void *stage, void *acts, void *gradv, pp_err *e)
{
    cuda_stage *c = S(stage);
    const pp_gpt_stage *g = &c->g;
    const acts_layout &L = c->L;
    float *grad = (float *)gradv;
    int C = c->C;
    stage_scope in(c);
    if (status(c, e) < 0)
        return -1;
    reclassify(c, gradv, MK_GRADS);
    if (c->bf16)
        backward_weight_bf16(c, acts, grad);
    else
        backward_weight(c, acts, grad);
    if (g->is_first) {
        const float *dx = F(acts, L.d_res[0]);
        k_embed_backward_wte(grad + g->wte, dx, I(acts, L.perm), I(acts, L.seg_start),
                             I(acts, L.seg_token), I(acts, L.nseg), c->N, C, c->stream);
        check_launch(c, "embed_backward_wte");
        k_embed_backward_wpe(grad + g->wpe, dx, c->B, c->T, C, c->stream);
        check_launch(c, "embed_backward_wpe");
    }
    return status(c, e);
}

} // namespace pp_cuda
