/* Causal self-attention of a block on a stage's stream, by one of two
 * paths that the stage picks when it is created:
 *   cublas  the score and value products as cuBLAS strided-batched GEMMs
 *           (one batch of heads per sequence) around the softmax kernels of
 *           kernels_attn.cu; keeps the probabilities [B][H][T][T] for the
 *           backward. The stage's math (PPSCHED_CUDA_MATH) applies: in fp32
 *           it matches the CPU.
 *   cudnn   cuDNN's fused flash attention on bf16 copies
 *           (cuda_attention_cudnn.cu); keeps one log-sum-exp per score row.
 * PPSCHED_CUDA_ATTENTION=cudnn|cublas chooses; by default cudnn where the
 * build has cuDNN and the math is bf16 (operands rounded to bf16 either
 * way), cublas otherwise. */
#include <cublas_v2.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

/* --- the path ------------------------------------------------------------- */

#ifdef PPSCHED_HAVE_CUDNN
/* A fallback is said once per reason, not once per stage (a pipeline and
 * its evaluation twins create many stages of one shape). */
static void warn_fallback(const cuda_stage *c)
{
    static std::mutex mu;
    static std::string said;
    std::lock_guard<std::mutex> lk(mu);
    if (said == c->attention_fallback)
        return;
    said = c->attention_fallback;
    fprintf(stderr, "ppsched: warning: CUDA stage %d: cuDNN attention not used: %s; using cuBLAS "
                    "attention\n",
            c->g.s, c->attention_fallback);
}
#endif

int attention_init(cuda_stage *c, pp_err *e)
{
#ifdef PPSCHED_HAVE_CUDNN
    const bool built = true;
#else
    const bool built = false;
#endif
    const char *env = getenv("PPSCHED_CUDA_ATTENTION");
    bool want;
    if (env && *env) {
        if (strcmp(env, "cudnn") != 0 && strcmp(env, "cublas") != 0)
            return pp_errf(e, "--backend cuda: PPSCHED_CUDA_ATTENTION=%s: expected cudnn or cublas",
                           env);
        want = strcmp(env, "cudnn") == 0;
        if (want && !built)
            return pp_errf(e, "--backend cuda: PPSCHED_CUDA_ATTENTION=cudnn: this build has no "
                              "cuDNN (CMake found no cuDNN 9, or -DPPSCHED_WITH_CUDNN=OFF)");
    } else {
        want = built && strcmp(c->math, "bf16") == 0;
    }
    c->attention = "cublas";
    c->attention_fallback[0] = 0;
#ifdef PPSCHED_HAVE_CUDNN
    if (want) {
        if (cudnn_attention_init(c, c->attention_fallback, sizeof c->attention_fallback) == 0) {
            c->attention = "cudnn";
            return 0;
        }
        if (!c->attention_fallback[0]) /* (out of device memory, say) */
            snprintf(c->attention_fallback, sizeof c->attention_fallback, "unknown reason");
        warn_fallback(c);
    }
#else
    (void)want;
#endif
    c->datt = (float *)dev_alloc(c, (size_t)c->H * c->T * c->T * sizeof(float), MK_WS);
    if (c->bf16 && c->datt)
        c->att32 = (float *)dev_alloc(c, 7 * (size_t)c->N * c->C * sizeof(float), MK_WS);
    if (!c->datt || (c->bf16 && !c->att32))
        return pp_errf(e, "--backend cuda: stage %d: out of device memory (attention scratch of "
                          "%d x %d x %d floats)",
                       c->g.s, c->H, c->T, c->T);
    return 0;
}

void attention_release(cuda_stage *c)
{
#ifdef PPSCHED_HAVE_CUDNN
    cudnn_attention_release(c);
#else
    (void)c;
#endif
}

/* --- cuBLAS ----------------------------------------------------------------- */

/* qkv[B][T][3C] -> att[B][H][T][T] probabilities, y[B][T][C]. Per sequence
 * b, the heads are one strided batch: head h of q starts at column h*hs. */
static void cublas_attention_forward(cuda_stage *c, float *y, float *att, const float *qkv)
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
static void cublas_attention_backward(cuda_stage *c, float *dqkv, const float *dy,
                                      const float *qkv, const float *att)
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

/* --- dispatch --------------------------------------------------------------- */

void attention_forward(cuda_stage *c, void *acts, const block_layout &a)
{
#ifdef PPSCHED_HAVE_CUDNN
    if (c->cudnn) {
        cudnn_attention_forward(c, F(acts, a.atty), F(acts, a.stats), F(acts, a.qkv));
        return;
    }
#endif
    cublas_attention_forward(c, F(acts, a.atty), F(acts, a.att), F(acts, a.qkv));
}

void attention_backward(cuda_stage *c, void *acts, const block_layout &a, const float *dy)
{
#ifdef PPSCHED_HAVE_CUDNN
    if (c->cudnn) {
        cudnn_attention_backward(c, F(acts, a.d_qkv), dy, F(acts, a.qkv), F(acts, a.atty),
                                 F(acts, a.stats));
        return;
    }
#endif
    cublas_attention_backward(c, F(acts, a.d_qkv), dy, F(acts, a.qkv), F(acts, a.att));
}

/* --- bf16 storage ------------------------------------------------------------ */

/* cuDNN reads and writes the bf16 activations directly; the cuBLAS path
 * widens them into the stage's att32 scratch (qkv 3 N C, y or dy N C, dqkv
 * 3 N C) and runs its fp32 products. */
void attention_forward_bf16(cuda_stage *c, void *acts, const block_layout &a)
{
#ifdef PPSCHED_HAVE_CUDNN
    if (c->cudnn) {
        cudnn_attention_forward_bf16(c, H(acts, a.atty), F(acts, a.stats), H(acts, a.qkv));
        return;
    }
#endif
    size_t NC = (size_t)c->N * c->C;
    float *qkv = c->att32, *y = qkv + 3 * NC;
    k_from_bf16(qkv, H(acts, a.qkv), 3 * NC, c->stream);
    check_launch(c, "from_bf16 (attention)");
    cublas_attention_forward(c, y, F(acts, a.att), qkv);
    k_to_bf16(H(acts, a.atty), y, NC, c->stream);
    check_launch(c, "to_bf16 (attention)");
}

void attention_backward_bf16(cuda_stage *c, void *acts, const block_layout &a,
                             const __nv_bfloat16 *dy)
{
#ifdef PPSCHED_HAVE_CUDNN
    if (c->cudnn) {
        cudnn_attention_backward_bf16(c, H(acts, a.d_qkv), dy, H(acts, a.qkv), H(acts, a.atty),
                                      F(acts, a.stats));
        return;
    }
#endif
    size_t NC = (size_t)c->N * c->C;
    float *qkv = c->att32, *dy32 = qkv + 3 * NC, *dqkv = dy32 + NC;
    k_from_bf16(qkv, H(acts, a.qkv), 3 * NC, c->stream);
    k_from_bf16(dy32, dy, NC, c->stream);
    check_launch(c, "from_bf16 (attention)");
    cublas_attention_backward(c, dqkv, dy32, qkv, F(acts, a.att));
    k_to_bf16(H(acts, a.d_qkv), dqkv, 3 * NC, c->stream);
    check_launch(c, "to_bf16 (attention)");
}

} // namespace pp_cuda
