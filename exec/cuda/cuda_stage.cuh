/* Private to exec/cuda/: the CUDA backend's stage (struct cuda_stage) and the
 * helpers that its .cu files share. C code, and the NCCL transport, see the
 * backend through cuda_backend.h only. */
#ifndef PP_CUDA_STAGE_CUH
#define PP_CUDA_STAGE_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cusolverDn.h>
#include <cuda_runtime.h>

#include <mutex>
#include <vector>

extern "C" {
#include "model/backend.h"
#include "model/gpt_cpu.h"
}
#include "green_ctx.h"

namespace pp_cuda {

enum mem_kind { MK_WEIGHTS, MK_GRADS, MK_OPT, MK_ACTS, MK_MSG, MK_WS, MK_N };

struct alloc_rec {
    void *p;
    size_t bytes;
    int kind;
};

/* Offsets (in 4-byte elements) of one micro-batch's buffer. res[l] is the
 * input of block l; res[nblocks] the stage output on the last stage. What
 * attention keeps for the backward depends on its path (cuda_stage's
 * attention): att, the probabilities [B][H][T][T], for cuBLAS; stats, the
 * log-sum-exp of every score row [B][H][T], for cuDNN. The other is 0. */
struct block_layout {
    size_t res_in, ln1, ln1_mean, ln1_rstd, qkv, att, stats, atty, res_mid, ln2, ln2_mean,
        ln2_rstd, fc, fcg;
    /* gradients */
    size_t d_ln1, d_qkv, d_res_mid, d_ln2, d_fc;
};

struct acts_layout {
    size_t tokens, perm, seg_start, seg_token, nseg; /* ints, stage 0 */
    size_t targets;                                  /* ints, last stage */
    std::vector<block_layout> blk;
    size_t res_last, lnf, lnf_mean, lnf_rstd, logits, losses; /* last stage */
    std::vector<size_t> d_res; /* nblocks + 1 */
    size_t d_lnf;
    size_t total;
};

/* The stage's optimizer (optim.h), with cpu_optim.h's state: Muon's
 * momentum packed over the hidden matrices (pp_muon_matrix), AdamW's m and
 * v packed over the other tensors (all of them for adamw; for
 * adamw-rotated every parameter at its offset), adamw-rotated's
 * covariances and bases, the delay correction's last update of every
 * parameter, and the step count t.
 * Hyperparameters come with every update. */
struct cuda_optim {
    pp_optim_config cfg;
    long t;
    float *m, *v; /* nadam each */
    size_t nadam;
    float *mom; /* nmom; NULL for adamw */
    size_t nmom;
    float *prev; /* nparams, or NULL without the delay correction */
    /* per tensor, host: where its state starts in m and v, or in mom;
     * PP_GPT_NO_STATE in the other's table */
    std::vector<size_t> adam_at, mom_at;
    /* Muon's Newton-Schulz work space (cuda_muon.cu), for the largest
     * matrix: two of its size (x and y), two of the small Gram side (a, b),
     * bf16 copies of the product operands in bf16 math, and the Frobenius
     * norm's partial sums and inverse */
    float *ns_x, *ns_y, *ns_a, *ns_b, *ns_inv;
    __nv_bfloat16 *ns_xh, *ns_ah, *ns_bh;
    double *ns_part;
    /* adamw-rotated (cuda_rotated.cu): covariances and bases packed as
     * cpu_rotated.h lays them out, per tensor where its part starts
     * (PP_GPT_NO_STATE: not rotated); one matrix's work space (rotated
     * gradient, moment, a product's intermediate); the eigensolver's
     * matrix, eigenvalues and work space, its info and the not-finite flag
     * (two ints), and its handle on the stage's stream */
    float *rot;
    size_t nrot;
    std::vector<size_t> rot_at;
    float *rt_g, *rt_m, *rt_tmp;
    float *eig_a, *eig_w, *eig_work;
    int eig_lwork;
    int *eig_flags;
    cusolverDnHandle_t solver;
};

struct cudnn_attention; /* cuda_attention_cudnn.cu */
struct lt_plan;         /* cuda_lt.cu */

/* A bf16 copy of one fp32 weight buffer (cuda_lt.cu): fresh while the
 * weight generation (weights_written) is the one it was made at. */
struct weight_shadow {
    const float *src;
    __nv_bfloat16 *h; /* nparams, every tensor at its fp32 offset */
    unsigned long long gen, used;
};

struct cuda_stage {
    pp_gpt_stage g; /* tensor table and sizes; its host scratch is freed */
    int device;
    pp_green part; /* its SM partition; zero: the whole device */
    int sms;       /* SMs the stage may use */
    int B, T, C, H, V, N;
    /* The logits' row stride: V rounded up to a multiple of 128, so that
     * every row starts 16-byte aligned and the output layer's three
     * products (a quarter of GPT-2's FLOPs at V = 50257) can take cuBLAS's
     * fastest kernels; the padding columns are never written or read. */
    int Vp;
    cudaStream_t stream;
    cudaEvent_t clk[PP_CLOCK_SLOTS]; /* device clock marks (backend.h) */
    cublasHandle_t blas;
    cublasComputeType_t compute;
    const char *math;
    /* bf16 storage (math "bf16"): the products take bf16 operands through
     * cuBLASLt (cuda_lt.cu) and the activations that feed them are bf16;
     * fp32 master weights, gradients and optimizer state. False: fp32
     * storage, the CPU's arithmetic. */
    bool bf16;
    cublasLtHandle_t lt;
    std::vector<lt_plan *> lt_plans;
    std::vector<weight_shadow> shadows;
    unsigned long long shadow_tick;
    __nv_bfloat16 *hs;  /* bf16 scratch, 2 N C: converted douts, attention's dy */
    __nv_bfloat16 *h1;  /* N ones, the bias gradients of bf16 douts */
    float *att32;       /* 7 N C, cuBLAS attention on bf16 storage */
    /* "cublas" or "cudnn" (PPSCHED_CUDA_ATTENTION, cuda_attention.cu); the
     * cuDNN graphs and scratch when cudnn; why cuDNN was asked for and not
     * taken, or "" */
    const char *attention;
    cudnn_attention *cudnn;
    char attention_fallback[320];
    void *workspace;
    size_t workspace_bytes;
    acts_layout L;
    cuda_optim opt;
    double *d_sumsq; /* the gradient norm's per-block partial sums, made on first use */
    /* the tensor table for the AdamW kernel: starts, decay flags, and where
     * each tensor's moments are (cuda_optim's adam_at; PP_NO_STATE for Muon's) */
    unsigned long long *d_tstart, *d_state_at;
    unsigned char *d_tdecay;
    /* scratch (one micro-batch at a time: the stream serializes) */
    float *ones; /* N */
    float *tmp;  /* 4 N C */
    float *datt; /* H T T, cuBLAS attention only */
    float *d_loss;
    /* host scratch for the embedding-gradient segments */
    std::vector<int> h_counts, h_head;
    /* device memory accounting; release() may come from another thread */
    std::mutex mu;
    std::vector<alloc_rec> allocs;
    std::vector<void *> freed; /* released, to be freed on the stage's thread */
    size_t bytes[MK_N];
    size_t total, peak;
    /* sticky error */
    bool failed;
    char err[400];
};

/* --- errors (backend_cuda.cu) ------------------------------------------ */

void fail(cuda_stage *c, const char *what, const char *detail);
bool ck(cuda_stage *c, cudaError_t rc, const char *what);
bool ckb(cuda_stage *c, cublasStatus_t rc, const char *what);
void check_launch(cuda_stage *c, const char *what);
/* 0, or -1 with the stage's sticky error in e: what every action returns. */
int status(cuda_stage *c, pp_err *e);

/* --- memory and the activation layout (cuda_memory.cu) ----------------- */

void drain_frees(cuda_stage *c);
void *dev_alloc(cuda_stage *c, size_t bytes, int kind);
void reclassify(cuda_stage *c, void *p, int kind);
void build_layout(cuda_stage *c);

/* Held for the duration of every entry point (but release): it may run on a
 * thread that has not selected the device. A stage on an SM partition makes
 * its green context current for the call and gives the thread its previous
 * context back on return, because a green context must be current to one
 * thread at a time and the main thread enters stages (create, destroy,
 * evaluation twins) while the stage threads run. */
class stage_scope {
  public:
    explicit stage_scope(cuda_stage *c)
    {
        if (c->part.ctx) {
            prev_ = pp_green_current();
            switched_ = prev_ != c->part.ctx;
            if (switched_)
                pp_green_make_current(c->part.ctx);
        } else {
            cudaSetDevice(c->device);
        }
        drain_frees(c);
    }
    ~stage_scope()
    {
        if (switched_)
            pp_green_make_current(prev_);
    }
    stage_scope(const stage_scope &) = delete;
    stage_scope &operator=(const stage_scope &) = delete;

  private:
    CUcontext prev_ = nullptr;
    bool switched_ = false;
};

inline float *F(void *acts, size_t off)
{
    return (float *)acts + off;
}
inline int *I(void *acts, size_t off)
{
    return (int *)acts + off;
}

/* A bf16 region of an activation buffer (offsets stay in 4-byte units). */
inline __nv_bfloat16 *H(void *acts, size_t off)
{
    return (__nv_bfloat16 *)((float *)acts + off);
}

inline cuda_stage *S(void *p)
{
    return (cuda_stage *)p;
}

/* --- matrix products (cuda_layers.cu) and attention (cuda_attention.cu) - */

void gemm_batched(cuda_stage *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                  float alpha, const float *A, int lda, long long sa, const float *B, int ldb,
                  long long sb, float beta, float *Cm, int ldc, long long sc, int batch);
/* Picks the stage's attention path (before build_layout, which depends on
 * it) and allocates its scratch; -1 with e filled on a bad
 * PPSCHED_CUDA_ATTENTION, cuDNN asked for in a build without it, or out of
 * device memory. attention_release frees what is not device memory. */
int attention_init(cuda_stage *c, pp_err *e);
void attention_release(cuda_stage *c);
/* Block a of micro-batch buffer acts: qkv -> atty, keeping att or stats. */
void attention_forward(cuda_stage *c, void *acts, const block_layout &a);
/* d_qkv of block a (overwritten) from dy [B][T][C]. */
void attention_backward(cuda_stage *c, void *acts, const block_layout &a, const float *dy);
/* The same on bf16 storage (qkv, atty, d_qkv bf16; dy bf16 [B][T][C]). */
void attention_forward_bf16(cuda_stage *c, void *acts, const block_layout &a);
void attention_backward_bf16(cuda_stage *c, void *acts, const block_layout &a,
                             const __nv_bfloat16 *dy);

#ifdef PPSCHED_HAVE_CUDNN
/* cuda_attention_cudnn.cu: the fused attention graphs of the stage's
 * shapes, built once; 0, or -1 with why (the cuDNN call, status and
 * message) and nothing left allocated. */
int cudnn_attention_init(cuda_stage *c, char *why, size_t n);
void cudnn_attention_release(cuda_stage *c);
/* y [B][T][C] and stats [B][H][T] from qkv [B][T][3C]. */
void cudnn_attention_forward(cuda_stage *c, float *y, float *stats, const float *qkv);
/* dqkv (overwritten) from dy, with the forward's qkv, y and stats. */
void cudnn_attention_backward(cuda_stage *c, float *dqkv, const float *dy, const float *qkv,
                              const float *y, const float *stats);
/* The same on bf16 storage: no conversions. */
void cudnn_attention_forward_bf16(cuda_stage *c, __nv_bfloat16 *y, float *stats,
                                  const __nv_bfloat16 *qkv);
void cudnn_attention_backward_bf16(cuda_stage *c, __nv_bfloat16 *dqkv, const __nv_bfloat16 *dy,
                                   const __nv_bfloat16 *qkv, const __nv_bfloat16 *y,
                                   const float *stats);
#endif

/* --- bf16 storage (cuda_lt.cu, cuda_layers_bf16.cu) -------------------- */

typedef __nv_bfloat16 bf16;

/* One cuBLASLt product, column-major: D = op(A) op(B) (+ beta C) with the
 * epilogue; A and B bf16, fp32 accumulation and scale, D (and C) of type
 * dt, ld in elements. C is D's own layout; cm NULL: C = D. bias has D's
 * type; aux (bf16, m x n, ld m) is the GELU pre-activation. */
struct lt_args {
    cublasOperation_t ta, tb;
    int m, n, k;
    const bf16 *A;
    int lda;
    const bf16 *B;
    int ldb;
    float beta;
    const void *Cm;
    void *D;
    cudaDataType_t dt;
    int ldd;
    cublasLtEpilogue_t epi;
    const void *bias;
    bf16 *aux;
};
void lt_matmul(cuda_stage *c, const lt_args &a);
/* Creates the stage's cuBLASLt handle and scratch; false on failure (e). */
bool lt_init(cuda_stage *c, pp_err *e);
void lt_release(cuda_stage *c);
/* out[cols] += column sums of x[rows][cols] (bf16), in fp32. */
void colsum_bf16(cuda_stage *c, float *out, const bf16 *x, int rows, int cols);
/* The bf16 shadow of weight buffer w, re-made when stale. */
const bf16 *weights_bf16(cuda_stage *c, const float *w);
/* Every shadow is stale: a weight buffer may have been written. */
void weights_written();

/* cuda_layers_bf16.cu: the block and head products on bf16 storage. */
void block_forward_bf16(cuda_stage *c, const float *w, const bf16 *wh, void *acts, int l,
                        float *out);
void head_forward_bf16(cuda_stage *c, const float *w, const bf16 *wh, void *acts);
void block_backward_input_bf16(cuda_stage *c, const float *w, const bf16 *wh, void *acts, int l);
void head_backward_input_bf16(cuda_stage *c, const float *w, const bf16 *wh, void *acts,
                              float loss_scale);
void backward_weight_bf16(cuda_stage *c, void *acts, float *grad);

/* --- Muon (cuda_muon.cu) ------------------------------------------------ */

/* Device floats of Newton-Schulz work space for [rows][cols] (ns_x,
 * ns_y; ns_a, ns_b), and whether its products take bf16 operands. */
void muon_scratch_floats(int rows, int cols, size_t *big, size_t *gram);
bool muon_bf16(const cuda_stage *c);
/* Muon's part of an update: every hidden matrix of w, from grad. */
void muon_update(cuda_stage *c, float *w, const float *grad, float lr, float wd);

/* --- adamw-rotated (cuda_rotated.cu) ------------------------------------ */

/* Lays out and allocates o's rotation state (covariances zero, bases the
 * identity), its work space and eigensolver for stage c's hidden
 * matrices; false when out of device memory or cuSOLVER fails. */
bool rotated_init(cuda_stage *c, cuda_optim &o);
void rotated_release(cuda_stage *c, cuda_optim &o);
/* The rotated matrices' part of update t (o.t, already counted), AdamW's
 * bias corrections c1, c2 as the AdamW kernel takes them. */
void rotated_update(cuda_stage *c, float *w, const float *grad, float lr,
                    const pp_adamw_hparams *hp, float c1, float c2);

/* --- entries of the pp_backend_ops table, by file ---------------------- */

/* backend_cuda.cu (also used by pp_cuda_gemm_tflops) */
const char *math_from_env(cublasComputeType_t *ct);
/* cuda_memory.cu */
size_t cuda_acts_bytes(void *stage);
void *cuda_alloc(void *stage, size_t bytes);
void cuda_release(void *stage, void *p);
/* cuda_layers.cu */
int cuda_forward(void *stage, const void *wv, const int *tokens, const void *x_in,
                 const int *targets, void *acts, void *x_out, float *loss, pp_err *e);
int cuda_backward_input(void *stage, const void *wv, void *acts, const void *dx_out,
                        void *dx_in, float loss_scale, pp_err *e);
int cuda_backward_weight(void *stage, void *acts, void *gradv, pp_err *e);
/* cuda_optimizer.cu */
int cuda_optimizer_update(void *stage, void *w, void *grad, const pp_opt_step *step,
                          pp_err *e);
int cuda_optimizer_init(void *stage, const pp_optim_config *cfg, pp_err *e);
double cuda_grad_sumsq(void *stage, const void *grad);
size_t cuda_opt_state_bytes(void *stage);
void cuda_opt_state_get(void *stage, void *host);
void cuda_opt_state_put(void *stage, const void *host);

} // namespace pp_cuda

#endif
