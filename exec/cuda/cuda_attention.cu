/* Causal self-attention of a block on a stage's stream: the score and value
 * products as cuBLAS strided-batched GEMMs (one batch of heads per
 * sequence) around the softmax kernels of kernels_attn.cu. */
#include <cublas_v2.h>

#include <cmath>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

/* --- attention ------------------------------------------------------------ */

/* qkv[B][T][3C] -> att[B][H][T][T] probabilities, y[B][T][C]. Per sequence
 * b, the heads are one strided batch: head h of q starts at column h*hs. */
void attention_forward(cuda_stage *c, float *y, float *att, const float *qkv)
{
    int T = c->T, C = c->C, H = c->H, hs = C / H;
    long long TT = (long long)T * T;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < c->B; b++) {
        const float *q = qkv + (size_t)b * T * 3 * C;
        /* att^T (col-major [j][t]) = K^T Q scaled: scores[t][j] = q_t . k_j */
        gemm_batched(c, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, scale, q + C, 3 * C, hs, q, 3 * C,
                     hs, 0.0f, att + (size_t)b * H * TT, T, TT, H);
    }
    k_softmax_causal_forward(att, (size_t)c->B * H * T, T, c->stream);
    check_launch(c, "softmax_causal_forward");
    for (int b = 0; b < c->B; b++) {
        const float *q = qkv + (size_t)b * T * 3 * C;
        /* y[t][i] = sum_j P[t][j] v[j][i] */
        gemm_batched(c, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, q + 2 * C, 3 * C, hs,
                     att + (size_t)b * H * TT, T, TT, 0.0f, y + (size_t)b * T * C, C, hs, H);
    }
}

/* dqkv (overwritten) from dy[B][T][C]. */
void attention_backward(cuda_stage *c, float *dqkv, const float *dy, const float *qkv,
                        const float *att)
{
    int T = c->T, C = c->C, H = c->H, hs = C / H;
    long long TT = (long long)T * T;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < c->B; b++) {
        size_t so = (size_t)b * T * 3 * C;
        const float *q = qkv + so, *k = q + C, *v = q + 2 * C;
        float *dq = dqkv + so, *dk = dq + C, *dv = dq + 2 * C;
        const float *dyb = dy + (size_t)b * T * C;
        const float *P = att + (size_t)b * H * TT;
        /* dP[t][j] = dy_t . v_j */
        gemm_batched(c, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, 1.0f, v, 3 * C, hs, dyb, C, hs, 0.0f,
                     c->datt, T, TT, H);
        /* dv[j][i] = sum_t P[t][j] dy[t][i] */
        gemm_batched(c, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, dyb, C, hs, P, T, TT, 0.0f, dv,
                     3 * C, hs, H);
        k_softmax_causal_backward(c->datt, P, (size_t)H * T, T, scale, c->stream);
        check_launch(c, "softmax_causal_backward");
        /* dq[t][i] = sum_j dS[t][j] k[j][i] */
        gemm_batched(c, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, k, 3 * C, hs, c->datt, T, TT,
                     0.0f, dq, 3 * C, hs, H);
        /* dk[j][i] = sum_t dS[t][j] q[t][i] */
        gemm_batched(c, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, q, 3 * C, hs, c->datt, T, TT,
                     0.0f, dk, 3 * C, hs, H);
    }
}

} // namespace pp_cuda
