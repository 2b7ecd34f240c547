/* Launchers of the CUDA backend's kernels (kernels_layers.cu,
 * kernels_attn.cu, kernels_optim.cu). Every launcher enqueues on the given stream and
 * returns at once; none synchronizes. Row-major layouts as in gpt_cpu.c:
 * N = B*T rows of width C. */
#ifndef PP_CUDA_KERNELS_CUH
#define PP_CUDA_KERNELS_CUH

#include <cstddef>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define PP_LN_EPS 1e-5f

/* For the kernels (kernels_*.cu): loads and stores of fp32 or bf16, the
 * two storages of the activations. */
__device__ __forceinline__ float ld32(float v)
{
    return v;
}
__device__ __forceinline__ float ld32(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}
__device__ __forceinline__ void st(float *p, float v)
{
    *p = v;
}
__device__ __forceinline__ void st(__nv_bfloat16 *p, float v)
{
    *p = __float2bfloat16(v);
}

/* x[N][C] = wte[tokens[n]] + wpe[n % T]. */
void k_embed_forward(float *x, const int *tokens, const float *wte, const float *wpe, int B,
                     int T, int C, cudaStream_t s);
/* dwpe[t][c] += sum_b dx[b][t][c] (b in order). */
void k_embed_backward_wpe(float *dwpe, const float *dx, int B, int T, int C, cudaStream_t s);
/* dwte[tok] += sum of dx rows with that token, in position order: seg k
 * (k < *nseg) covers perm[seg_start[k] .. seg_start[k+1]) of token
 * seg_token[k]. Deterministic, no atomics. */
void k_embed_backward_wte(float *dwte, const float *dx, const int *perm, const int *seg_start,
                          const int *seg_token, const int *nseg, int N, int C, cudaStream_t s);

/* out = (x - mean) * rstd * w + b per row; mean, rstd saved. */
void k_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                         const float *b, int N, int C, cudaStream_t s);
/* The same, out in bf16 (bf16 storage). */
void k_layernorm_forward(__nv_bfloat16 *out, float *mean, float *rstd, const float *x,
                         const float *w, const float *b, int N, int C, cudaStream_t s);
/* dx = (dres ? dres : 0) + dLN/dx applied to dout (dx may equal dres). */
void k_layernorm_backward_input(float *dx, const float *dres, const float *dout, const float *x,
                                const float *mean, const float *rstd, const float *w, int N,
                                int C, cudaStream_t s);
void k_layernorm_backward_input(float *dx, const float *dres, const __nv_bfloat16 *dout,
                                const float *x, const float *mean, const float *rstd,
                                const float *w, int N, int C, cudaStream_t s);
/* out = dout * xhat, the summand of the LayerNorm weight gradient. */
void k_layernorm_dout_xhat(float *out, const float *dout, const float *x, const float *mean,
                           const float *rstd, int N, int C, cudaStream_t s);
void k_layernorm_dout_xhat(float *out, const __nv_bfloat16 *dout, const float *x,
                           const float *mean, const float *rstd, int N, int C, cudaStream_t s);

/* out[n][o] += bias[o] (+ res[n][o] when res). */
void k_bias_residual(float *out, const float *bias, const float *res, int N, int OC,
                     cudaStream_t s);
void k_gelu_forward(float *out, const float *x, size_t n, cudaStream_t s);
/* dx = dout * gelu'(x). */
void k_gelu_backward(float *dx, const float *x, const float *dout, size_t n, cudaStream_t s);
void k_fill(float *x, float v, size_t n, cudaStream_t s);
/* x[i] uniform in [-1, 1), from a hash of (seed, i): random operands for
 * timing (zeros or constants run faster than real data). */
void k_fill_uniform(float *x, size_t n, unsigned long long seed, cudaStream_t s);

/* Causal softmax in place over rows of length T (row r is query r % T):
 * entries j <= t become probabilities, j > t zero. */
void k_softmax_causal_forward(float *att, size_t rows, int T, cudaStream_t s);
/* datt (in: dP, out: dScores) = P * (dP - sum P dP) * scale, 0 above the
 * diagonal. */
void k_softmax_causal_backward(float *datt, const float *att, size_t rows, int T, float scale,
                               cudaStream_t s);
/* Softmax of logits[N][V] (rows ld apart) in place; losses[n] = -log
 * p[target]. */
void k_xent_forward(float *logits, float *losses, const int *targets, int N, int V, int ld,
                    cudaStream_t s);
/* *out = mean of losses[N] (double accumulation, fixed order). */
void k_mean(float *out, const float *losses, int N, cudaStream_t s);
/* probs -> (probs - onehot(target)) * k in place (rows ld apart). */
void k_xent_backward(float *probs, const int *targets, int N, int V, int ld, float k,
                     cudaStream_t s);
/* The same on bf16 logits (bf16 storage). */
void k_xent_forward(__nv_bfloat16 *logits, float *losses, const int *targets, int N, int V,
                    int ld, cudaStream_t s);
void k_xent_backward(__nv_bfloat16 *probs, const int *targets, int N, int V, int ld, float k,
                     cudaStream_t s);

/* --- optimizers (kernels_optim.cu) --- */

/* The fixed grid of k_sumsq_partial: partial[PP_SUMSQ_BLOCKS]. */
#define PP_SUMSQ_BLOCKS 128
/* A tensor without AdamW state (Muon updates it): gpt_cpu.h's
 * PP_GPT_NO_STATE as the device table stores it. */
#define PP_NO_STATE (~0ull)

/* partial[b] = block b's share of sum x[i]^2 in double; the same x always
 * sums in the same order. */
void k_sumsq_partial(const float *x, size_t n, double *partial, cudaStream_t s);
/* x[i] *= k. */
void k_scale(float *x, float k, size_t n, cudaStream_t s);
/* *inv = 1 / (sqrt(sum of partial[PP_SUMSQ_BLOCKS] in order) + eps),
 * without a trip to the host. */
void k_inv_norm(float *inv, const double *partial, double eps, cudaStream_t s);

/* One AdamW step's scalars: bias corrections c1, c2 from the host (in
 * double, as adamw.c), delay_beta for the delay correction. */
typedef struct {
    float lr, beta1, beta2, eps, wd, c1, c2, delay_beta;
} pp_adamw_args;

/* AdamW over the n parameters of a stage; tensor k covers [tstart[k],
 * tstart[k+1]), decays when decay[k] and keeps its moments at m, v +
 * state_at[k] (PP_NO_STATE: left alone). With prev (n floats, the last
 * update of every parameter) the delay correction applies
 * u + delay_beta (u - prev) and keeps u in prev. */
void k_adamw(float *w, const float *g, float *m, float *v, float *prev, size_t n,
             const unsigned long long *tstart, const unsigned long long *state_at,
             const unsigned char *decay, int ntensors, const pp_adamw_args *a, cudaStream_t s);

/* Muon's momentum of one matrix: mom = mu mom + (1 - mu) g, then the
 * Nesterov look-ahead x = mu mom + (1 - mu) g. */
void k_muon_momentum(float *mom, float *x, const float *g, float mu, size_t n, cudaStream_t s);
/* X = x [rows][cols] * (*inv), transposed to [cols][rows] when rows > cols. */
void k_muon_load(float *X, const float *x, const float *inv, int rows, int cols, cudaStream_t s);
/* w [rows][cols] -= lr (scale O + wd w), O = X, or X [cols][rows]
 * transposed back when `transposed`; with prev (the matrix's part of the
 * delay buffer) corrected as k_adamw does. */
void k_matrix_apply(float *w, float *prev, const float *X, int rows, int cols, bool transposed,
                    float lr, float scale, float wd, float beta, cudaStream_t s);
/* dst = src rounded to bf16 (to nearest even). */
void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n, cudaStream_t s);
/* dst = src widened to fp32 (exact). */
void k_from_bf16(float *dst, const __nv_bfloat16 *src, size_t n, cudaStream_t s);

/* adamw-rotated (cuda_rotated.cu). m = beta1 m + (1 - beta1) g. */
void k_adam_moment(float *m, const float *g, float beta1, size_t n, cudaStream_t s);
/* Adam on the rotated gradient gt and moment mt: v = beta2 v + (1 - beta2)
 * gt^2, u = (mt / c1) / (sqrt(v / c2) + eps); u may be gt. */
void k_rotated_adam(float *u, float *v, const float *gt, const float *mt, float beta2, float c1,
                    float c2, float eps, size_t n, cudaStream_t s);
/* *bad = 1 when an element of x is inf or nan; left as it is otherwise. */
void k_flag_nonfinite(int *bad, const float *x, size_t n, cudaStream_t s);
/* q [k][k] = the identity. */
void k_identity(float *q, int k, cudaStream_t s);
/* a [k][k] = x, or the identity when *bad: the eigensolver's input. */
void k_copy_or_identity(float *a, const float *x, int k, const int *bad, cudaStream_t s);
/* q [k][k] (row-major, eigenvectors as columns) = the column-major
 * eigenvectors a transposed, unless *bad or the solver's *info != 0: then
 * q keeps the old basis, as the CPU does. */
void k_take_basis(float *q, const float *a, int k, const int *bad, const int *info,
                  cudaStream_t s);

#endif
