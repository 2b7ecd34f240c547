/* The layer kernels of the CPU GPT (gpt_cpu_layers.c), forward and backward,
 * on plain float arrays: the stage's passes (gpt_cpu_passes.c) chain them.
 * Internal to exec/model/, not a public API: the contract of the model is
 * gpt_cpu.h. N rows (tokens) of C features; linear weights are [OC][IC] as
 * in PyTorch. A backward_input writes or adds the input gradient, a
 * backward_weight adds (+=) into the weight gradients. */
#ifndef PP_GPT_CPU_LAYERS_H
#define PP_GPT_CPU_LAYERS_H

#include <stddef.h>

#include "cpu_pool.h"

/* The matrix products run on the stage's team `pool` (NULL: this thread). */
/* out[N][OC] = in[N][IC] W^T + bias (bias may be NULL). wt: OC*IC scratch
 * (the own GEMM's transposed W; unused with OpenBLAS). */
void pp_cpu_linear_forward(pp_pool *pool, float *out, const float *in, const float *W,
                           const float *bias, float *wt, int N, int IC, int OC);
/* din[N][IC] = dout[N][OC] W (overwrites din). */
void pp_cpu_linear_backward_input(pp_pool *pool, float *din, const float *dout, const float *W,
                                  int N, int IC, int OC);
/* dW[OC][IC] += dout^T in; dbias[OC] += column sums of dout (if dbias). */
void pp_cpu_linear_backward_weight(pp_pool *pool, float *dW, float *dbias, const float *dout,
                                   const float *in, int N, int IC, int OC);

/* x[i] += y[i] for i < n. */
void pp_cpu_add(pp_pool *pool, float *x, const float *y, size_t n);

/* out = LayerNorm(x) w + b per row; saves each row's mean and 1/std. */
void pp_cpu_layernorm_forward(pp_pool *pool, float *out, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int N, int C);
/* dx += d LayerNorm(x) / dx applied to dout. */
void pp_cpu_layernorm_backward_input(pp_pool *pool, float *dx, const float *dout, const float *x,
                                     const float *mean, const float *rstd, const float *w,
                                     int N, int C);
void pp_cpu_layernorm_backward_weight(float *dw, float *db, const float *dout, const float *x,
                                      const float *mean, const float *rstd, int N, int C);

/* GELU, tanh approximation, over n elements. */
void pp_cpu_gelu_forward(pp_pool *pool, float *out, const float *x, size_t n);
/* dx = dout * gelu'(x) (overwrites dx). */
void pp_cpu_gelu_backward(pp_pool *pool, float *dx, const float *x, const float *dout, size_t n);

typedef struct {
    int B, T, C, H;
} pp_cpu_att_dims;

/* Causal self-attention on the team, one (sequence, head) pair at a time.
 * qkv[B*T][3C] holds q, k, v; att[B][H][T][T] gets the softmax
 * probabilities (zero above the diagonal); y[B*T][C] the per-head outputs
 * side by side. scratch: pp_cpu_attention_scratch floats per team member. */
size_t pp_cpu_attention_scratch(pp_cpu_att_dims d);
void pp_cpu_attention_forward(pp_pool *pool, float *y, float *att, const float *qkv,
                              float *scratch, pp_cpu_att_dims d);
/* dqkv (overwritten) from dy; scratch as for the forward. */
void pp_cpu_attention_backward(pp_pool *pool, float *dqkv, float *scratch, const float *dy,
                               const float *qkv, const float *att, pp_cpu_att_dims d);

/* Softmax of the logits probs[N][V] in place, returning the mean
 * cross-entropy against targets (token ids stored as floats). */
float pp_cpu_softmax_xent(float *probs, const float *targets, int N, int V);
/* d_logits = (probs - onehot(target)) * scale / N, so the last stage starts
 * from d(loss_scale * mean loss). */
void pp_cpu_xent_backward(float *dlogits, const float *probs, const float *targets, int N, int V,
                          float loss_scale);

#endif
