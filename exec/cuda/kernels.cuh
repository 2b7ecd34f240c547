/* Launchers of the CUDA backend's kernels (kernels_layers.cu,
 * kernels_attn.cu). Every launcher enqueues on the given stream and
 * returns at once; none synchronizes. Row-major layouts as in gpt_cpu.c:
 * N = B*T rows of width C. */
#ifndef PP_CUDA_KERNELS_CUH
#define PP_CUDA_KERNELS_CUH

#include <cstddef>
#include <cuda_runtime.h>

#define PP_LN_EPS 1e-5f

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
/* dx = (dres ? dres : 0) + dLN/dx applied to dout (dx may equal dres). */
void k_layernorm_backward_input(float *dx, const float *dres, const float *dout, const float *x,
                                const float *mean, const float *rstd, const float *w, int N,
                                int C, cudaStream_t s);
/* out = dout * xhat, the summand of the LayerNorm weight gradient. */
void k_layernorm_dout_xhat(float *out, const float *dout, const float *x, const float *mean,
                           const float *rstd, int N, int C, cudaStream_t s);

/* out[n][o] += bias[o] (+ res[n][o] when res). */
void k_bias_residual(float *out, const float *bias, const float *res, int N, int OC,
                     cudaStream_t s);
void k_gelu_forward(float *out, const float *x, size_t n, cudaStream_t s);
/* dx = dout * gelu'(x). */
void k_gelu_backward(float *dx, const float *x, const float *dout, size_t n, cudaStream_t s);
void k_fill(float *x, float v, size_t n, cudaStream_t s);

/* AdamW over n parameters; tensor k covers [tstart[k], tstart[k+1]) and
 * decays when decay[k]. Bias corrections c1, c2 come from the host. */
void k_adamw(float *w, const float *g, float *m, float *v, size_t n,
             const unsigned long long *tstart, const unsigned char *decay, int ntensors,
             float lr, float beta1, float beta2, float eps, float wd, float c1, float c2,
             cudaStream_t s);

/* Causal softmax in place over rows of length T (row r is query r % T):
 * entries j <= t become probabilities, j > t zero. */
void k_softmax_causal_forward(float *att, size_t rows, int T, cudaStream_t s);
/* datt (in: dP, out: dScores) = P * (dP - sum P dP) * scale, 0 above the
 * diagonal. */
void k_softmax_causal_backward(float *datt, const float *att, size_t rows, int T, float scale,
                               cudaStream_t s);
/* Softmax of logits[N][V] in place; losses[n] = -log p[target]. */
void k_xent_forward(float *logits, float *losses, const int *targets, int N, int V,
                    cudaStream_t s);
/* *out = mean of losses[N] (double accumulation, fixed order). */
void k_mean(float *out, const float *losses, int N, cudaStream_t s);
/* probs -> (probs - onehot(target)) * k in place. */
void k_xent_backward(float *probs, const int *targets, int N, int V, float k, cudaStream_t s);

#endif
