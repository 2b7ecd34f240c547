/* The CUDA backend (DESIGN §6): the pp_backend_ops table of backend.h on
 * one GPU, fp32, numerically the CPU reference of gpt_cpu.c.
 *
 * A stage owns a non-blocking stream, a cuBLAS handle bound to it with its
 * own workspace, the AdamW moments, the tensor table (on the device, for
 * the per-tensor weight decay) and scratch for one micro-batch's backward.
 * Every kernel, copy, memset, allocation (stream-ordered cudaMallocAsync)
 * and cuBLAS call goes to that stream; nothing uses the default stream and
 * nothing synchronizes the device. Calls that hand data to the host or to
 * another stage (to_host, from_host, copy, the last stage's loss) wait for
 * the stage's stream only.
 *
 * The parameter layout, initialisation and tensor table are gpt_cpu.c's
 * (pp_gpt_stage_init builds the table; the weights are initialised on the
 * host with pp_gpt_stage_init_weights and uploaded), so a weight buffer,
 * gradient or optimizer state moves between the two backends unchanged.
 * The per-micro-batch activation buffer has its own layout (acts_layout
 * below): it never leaves the device.
 *
 * A stage placed on an SM partition (pp_placement.partition >= 0) gets its
 * stream from a CUDA green context of that partition (green_ctx.h), and
 * every entry point makes that context current on the calling thread for
 * the call, so that all of the stage's work, cuBLAS included, runs on the
 * partition's SMs only.
 *
 * Device clocks: an origin event and two mark events per stage, recorded on
 * the stage's stream, time each action on the GPU itself.
 *
 * Errors: CUDA and cuBLAS failures are sticky per stage. The first one is
 * printed on stderr once; forward() then fails with it, so a run stops with
 * a message at the next forward instead of computing on garbage. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

extern "C" {
#include "model/backend.h"
#include "model/gpt_cpu.h"
}
#include "cuda_backend.h"
#include "green_ctx.h"
#include "kernels.cuh"

namespace {

enum mem_kind { MK_WEIGHTS, MK_GRADS, MK_OPT, MK_ACTS, MK_MSG, MK_WS, MK_N };

struct alloc_rec {
    void *p;
    size_t bytes;
    int kind;
};

/* Offsets (in 4-byte elements) of one micro-batch's buffer. res[l] is the
 * input of block l; res[nblocks] the stage output on the last stage. */
struct block_layout {
    size_t res_in, ln1, ln1_mean, ln1_rstd, qkv, att, atty, res_mid, ln2, ln2_mean, ln2_rstd,
        fc, fcg;
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

struct cuda_stage {
    pp_gpt_stage g; /* tensor table and sizes; its host scratch is freed */
    int device;
    pp_green part; /* its SM partition; zero: the whole device */
    int sms;       /* SMs the stage may use */
    int B, T, C, H, V, N;
    cudaStream_t stream;
    cudaEvent_t clk_origin, clk_mark[2]; /* device clocks */
    cublasHandle_t blas;
    cublasComputeType_t compute;
    const char *math;
    void *workspace;
    size_t workspace_bytes;
    acts_layout L;
    /* AdamW */
    pp_adamw_hparams hp;
    float *m, *v;
    long t;
    unsigned long long *d_tstart;
    unsigned char *d_tdecay;
    /* scratch (one micro-batch at a time: the stream serializes) */
    float *ones; /* N */
    float *tmp;  /* 4 N C */
    float *datt; /* H T T */
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

/* --- errors ------------------------------------------------------------ */

void fail(cuda_stage *c, const char *what, const char *detail)
{
    std::lock_guard<std::mutex> lk(c->mu);
    if (c->failed)
        return;
    c->failed = true;
    snprintf(c->err, sizeof c->err, "CUDA stage %d: %s: %s", c->g.s, what, detail);
    fprintf(stderr, "pprun: error: %s\n", c->err);
}

bool ck(cuda_stage *c, cudaError_t rc, const char *what)
{
    if (rc == cudaSuccess)
        return true;
    fail(c, what, cudaGetErrorString(rc));
    return false;
}

bool ckb(cuda_stage *c, cublasStatus_t rc, const char *what)
{
    if (rc == CUBLAS_STATUS_SUCCESS)
        return true;
    fail(c, what, cublasGetStatusString(rc));
    return false;
}

void check_launch(cuda_stage *c, const char *what)
{
    ck(c, cudaGetLastError(), what);
}

/* Frees what release() queued, on the stage's stream. */
void drain_frees(cuda_stage *c)
{
    std::vector<void *> q;
    {
        std::lock_guard<std::mutex> lk(c->mu);
        if (c->freed.empty() || !c->stream)
            return;
        q.swap(c->freed);
    }
    for (void *p : q)
        ck(c, cudaFreeAsync(p, c->stream), "cudaFreeAsync");
}

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

/* --- memory -------------------------------------------------------------- */

void *dev_alloc(cuda_stage *c, size_t bytes, int kind)
{
    void *p = nullptr;
    if (bytes == 0)
        bytes = 4;
    if (cudaMallocAsync(&p, bytes, c->stream) != cudaSuccess) {
        cudaGetLastError(); /* out of memory is not sticky: alloc returns NULL */
        return nullptr;
    }
    if (!ck(c, cudaMemsetAsync(p, 0, bytes, c->stream), "cudaMemsetAsync")) {
        cudaFreeAsync(p, c->stream);
        return nullptr;
    }
    std::lock_guard<std::mutex> lk(c->mu);
    c->allocs.push_back({p, bytes, kind});
    c->bytes[kind] += bytes;
    c->total += bytes;
    if (c->total > c->peak)
        c->peak = c->total;
    return p;
}

/* release() may come from another stage's thread (the in-process transport
 * frees the sender's message once the receiver has copied it): the pointer
 * is queued and freed by the stage's next call, on its own thread and
 * stream, so that two threads never use one stage's stream or green context
 * at once. The accounting drops at once. */
void dev_free(cuda_stage *c, void *p)
{
    if (!p)
        return;
    std::lock_guard<std::mutex> lk(c->mu);
    for (size_t i = 0; i < c->allocs.size(); i++)
        if (c->allocs[i].p == p) {
            c->bytes[c->allocs[i].kind] -= c->allocs[i].bytes;
            c->total -= c->allocs[i].bytes;
            c->allocs[i] = c->allocs.back();
            c->allocs.pop_back();
            break;
        }
    c->freed.push_back(p);
}

void reclassify(cuda_stage *c, void *p, int kind)
{
    std::lock_guard<std::mutex> lk(c->mu);
    for (auto &a : c->allocs)
        if (a.p == p && a.kind != kind) {
            c->bytes[a.kind] -= a.bytes;
            c->bytes[kind] += a.bytes;
            a.kind = kind;
            return;
        }
}

/* --- layout -------------------------------------------------------------- */

/* 64 elements = 256 bytes: every region starts aligned for cuBLAS. */
size_t take(size_t *off, size_t n)
{
    size_t at = *off;
    *off += (n + 63) / 64 * 64;
    return at;
}

void build_layout(cuda_stage *c)
{
    const pp_gpt_stage *g = &c->g;
    size_t N = c->N, NC = (size_t)c->N * c->C, att = (size_t)c->B * c->H * c->T * c->T;
    size_t off = 0;
    acts_layout &L = c->L;
    L.tokens = L.perm = L.seg_start = L.seg_token = L.nseg = L.targets = 0;
    if (g->is_first) {
        L.tokens = take(&off, N);
        L.perm = take(&off, N);
        L.seg_start = take(&off, N + 1);
        L.seg_token = take(&off, N);
        L.nseg = take(&off, 1);
    }
    if (g->is_last)
        L.targets = take(&off, N);
    L.blk.resize(g->nblocks);
    for (int l = 0; l < g->nblocks; l++) {
        block_layout &b = L.blk[l];
        b.res_in = take(&off, NC);
        b.ln1 = take(&off, NC);
        b.ln1_mean = take(&off, N);
        b.ln1_rstd = take(&off, N);
        b.qkv = take(&off, 3 * NC);
        b.att = take(&off, att);
        b.atty = take(&off, NC);
        b.res_mid = take(&off, NC);
        b.ln2 = take(&off, NC);
        b.ln2_mean = take(&off, N);
        b.ln2_rstd = take(&off, N);
        b.fc = take(&off, 4 * NC);
        b.fcg = take(&off, 4 * NC);
    }
    L.res_last = L.lnf = L.lnf_mean = L.lnf_rstd = L.logits = L.losses = 0;
    if (g->is_last) {
        L.res_last = take(&off, NC);
        L.lnf = take(&off, NC);
        L.lnf_mean = take(&off, N);
        L.lnf_rstd = take(&off, N);
        L.logits = take(&off, N * (size_t)c->V); /* probabilities, then d logits */
        L.losses = take(&off, N);
    }
    /* Gradients saved by I for W. */
    L.d_res.resize(g->nblocks + 1);
    for (int l = 0; l <= g->nblocks; l++)
        L.d_res[l] = take(&off, NC);
    for (int l = 0; l < g->nblocks; l++) {
        block_layout &b = L.blk[l];
        b.d_ln1 = take(&off, NC);
        b.d_qkv = take(&off, 3 * NC);
        b.d_res_mid = take(&off, NC);
        b.d_ln2 = take(&off, NC);
        b.d_fc = take(&off, 4 * NC);
    }
    L.d_lnf = g->is_last ? take(&off, NC) : 0;
    L.total = off;
}

inline float *F(void *acts, size_t off)
{
    return (float *)acts + off;
}
inline int *I(void *acts, size_t off)
{
    return (int *)acts + off;
}

/* --- matrix products ---------------------------------------------------- */

/* Column-major GEMM: C = alpha op(A) op(B) + beta C, fp32 storage, the
 * stage's compute type. */
void gemm(cuda_stage *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
          float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *Cm,
          int ldc)
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

/* Row-major linear layers, W[OC][IC] as in PyTorch. */

/* out[N][OC] = in[N][IC] W^T (+ bias) (+ res). */
void linear_forward(cuda_stage *c, float *out, const float *in, const float *W,
                    const float *bias, const float *res, int IC, int OC)
{
    gemm(c, CUBLAS_OP_T, CUBLAS_OP_N, OC, c->N, IC, 1.0f, W, IC, in, IC, 0.0f, out, OC);
    if (bias) {
        k_bias_residual(out, bias, res, c->N, OC, c->stream);
        check_launch(c, "bias_residual");
    }
}

/* din[N][IC] = dout[N][OC] W. */
void linear_backward_input(cuda_stage *c, float *din, const float *dout, const float *W, int IC,
                           int OC)
{
    gemm(c, CUBLAS_OP_N, CUBLAS_OP_N, IC, c->N, OC, 1.0f, W, IC, dout, OC, 0.0f, din, IC);
}

/* dW[OC][IC] += dout^T in; dbias[OC] += column sums of dout. */
void linear_backward_weight(cuda_stage *c, float *dW, float *dbias, const float *dout,
                            const float *in, int IC, int OC)
{
    gemm(c, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, c->N, 1.0f, in, IC, dout, OC, 1.0f, dW, IC);
    if (dbias) {
        float one = 1.0f;
        ckb(c, cublasSgemv(c->blas, CUBLAS_OP_N, OC, c->N, &one, dout, OC, c->ones, 1, &one,
                           dbias, 1),
            "cublasSgemv");
    }
}

void layernorm_backward_weight(cuda_stage *c, float *dw, float *db, const float *dout,
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

/* --- stage lifecycle ------------------------------------------------------ */

void stage_free(cuda_stage *c)
{
    if (!c)
        return;
    {
        stage_scope in(c); /* frees the queued releases too */
        if (c->stream) {
            cudaStreamSynchronize(c->stream);
            /* Buffers still held by the caller are freed with the stage. */
            std::vector<alloc_rec> left;
            {
                std::lock_guard<std::mutex> lk(c->mu);
                left.swap(c->allocs);
            }
            for (auto &a : left)
                cudaFreeAsync(a.p, c->stream);
            cudaStreamSynchronize(c->stream);
        }
        cudaEvent_t evs[] = {c->clk_origin, c->clk_mark[0], c->clk_mark[1]};
        for (cudaEvent_t ev : evs)
            if (ev)
                cudaEventDestroy(ev);
        if (c->blas)
            cublasDestroy(c->blas);
        if (c->stream && !c->part.green)
            cudaStreamDestroy(c->stream);
    }
    pp_green_close(&c->part); /* its stream, then the green context back to the table */
    pp_gpt_stage_free(&c->g);
    delete c;
}

const char *math_from_env(cublasComputeType_t *ct)
{
    const char *m = getenv("PPSCHED_CUDA_MATH");
    if (m && strcmp(m, "tf32") == 0) {
        *ct = CUBLAS_COMPUTE_32F_FAST_TF32;
        return "tf32";
    }
    if (m && strcmp(m, "bf16") == 0) {
        *ct = CUBLAS_COMPUTE_32F_FAST_16BF;
        return "bf16";
    }
    *ct = CUBLAS_COMPUTE_32F;
    return "fp32";
}

int cuda_create(const pp_model_desc *m, int P, int s, const pp_placement *at, void **out,
                pp_err *e)
{
    int device = at ? at->device : 0;
    int ndev = 0;
    cudaError_t rc = cudaGetDeviceCount(&ndev);
    if (rc != cudaSuccess || ndev == 0)
        return pp_errf(e, "--backend cuda: no CUDA GPU found (cudaGetDeviceCount: %s)",
                       rc != cudaSuccess ? cudaGetErrorString(rc) : "0 devices");
    if (device < 0 || device >= ndev)
        return pp_errf(e, "--devices: CUDA device %d does not exist (%d found)", device, ndev);
    cuda_stage *c = new (std::nothrow) cuda_stage();
    if (!c)
        return pp_errf(e, "out of memory");
    if (pp_gpt_stage_init(&c->g, m, P, s, e) < 0) {
        delete c;
        return -1;
    }
    /* The host scratch of the CPU math is not needed here. */
    free(c->g.scratch);
    free(c->g.gacts_scratch);
    c->g.scratch = c->g.gacts_scratch = nullptr;
    c->device = device;
    c->B = c->g.B;
    c->T = c->g.T;
    c->C = c->g.C;
    c->H = c->g.H;
    c->V = c->g.V;
    c->N = c->B * c->T;
    c->hp = pp_adamw_defaults();
    c->math = math_from_env(&c->compute);
    build_layout(c);

    bool partitioned = at && at->partition >= 0;
    const char *what = "cudaSetDevice";
    rc = cudaSetDevice(device);
    if (rc == cudaSuccess) {
        /* Keep freed pool memory for reuse instead of returning it at every
         * synchronization. */
        cudaMemPool_t pool;
        if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
            unsigned long long keep = ~0ull;
            cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
        }
        what = "cudaDeviceGetAttribute";
        rc = cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, device);
    }
    if (rc == cudaSuccess && !partitioned) {
        what = "cudaStreamCreateWithFlags";
        rc = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    }
    if (rc != cudaSuccess) {
        cudaGetLastError();
        pp_errf(e, "--backend cuda: stage %d: %s: %s", s, what, cudaGetErrorString(rc));
        c->stream = nullptr;
        stage_free(c);
        return -1;
    }
    if (partitioned) {
        if (pp_green_open(device, at->partition, at->partitions, &c->part, e) < 0) {
            pp_err_prefix(e, "--backend cuda: stage %d", s);
            stage_free(c);
            return -1;
        }
        c->stream = (cudaStream_t)c->part.stream;
        c->sms = c->part.sms;
    }
    /* From here on (cuBLAS handle, events, buffers) inside the partition. */
    stage_scope in(c);
    cublasStatus_t bs = cublasCreate(&c->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        c->blas = nullptr;
        pp_errf(e, "--backend cuda: stage %d: cublasCreate: %s", s, cublasGetStatusString(bs));
        stage_free(c);
        return -1;
    }
    cublasSetStream(c->blas, c->stream);
    cublasSetPointerMode(c->blas, CUBLAS_POINTER_MODE_HOST);
    /* cuBLAS picks its kernels for the SMs it sees, the whole device's,
     * unless told how many the partition has. */
    if (partitioned)
        ckb(c, cublasSetSmCountTarget(c->blas, c->sms), "cublasSetSmCountTarget");
    /* Default flags: timing enabled (the device clocks). */
    what = "cudaEventCreate";
    rc = cudaEventCreate(&c->clk_origin);
    for (int i = 0; i < 2 && rc == cudaSuccess; i++)
        rc = cudaEventCreate(&c->clk_mark[i]);
    if (rc != cudaSuccess) {
        cudaGetLastError();
        pp_errf(e, "--backend cuda: stage %d: cudaEventCreate: %s", s, cudaGetErrorString(rc));
        stage_free(c);
        return -1;
    }

    size_t np = c->g.nparams, NC = (size_t)c->N * c->C;
    int nt = c->g.ntensors;
    c->workspace_bytes = 32u << 20; /* cuBLAS's recommendation for Hopper */
    c->workspace = dev_alloc(c, c->workspace_bytes, MK_WS);
    c->m = (float *)dev_alloc(c, np * sizeof(float), MK_OPT);
    c->v = (float *)dev_alloc(c, np * sizeof(float), MK_OPT);
    c->d_tstart = (unsigned long long *)dev_alloc(c, nt * sizeof(unsigned long long), MK_WS);
    c->d_tdecay = (unsigned char *)dev_alloc(c, nt, MK_WS);
    c->ones = (float *)dev_alloc(c, c->N * sizeof(float), MK_WS);
    c->tmp = (float *)dev_alloc(c, 4 * NC * sizeof(float), MK_WS);
    c->datt = (float *)dev_alloc(c, (size_t)c->H * c->T * c->T * sizeof(float), MK_WS);
    c->d_loss = (float *)dev_alloc(c, sizeof(float), MK_WS);
    if (!c->workspace || !c->m || !c->v || !c->d_tstart || !c->d_tdecay || !c->ones || !c->tmp ||
        !c->datt || !c->d_loss) {
        pp_errf(e, "--backend cuda: stage %d: out of device memory (%zu parameters)", s, np);
        stage_free(c);
        return -1;
    }
    cublasSetWorkspace(c->blas, c->workspace, c->workspace_bytes);
    std::vector<unsigned long long> ts(nt);
    std::vector<unsigned char> td(nt);
    for (int i = 0; i < nt; i++) {
        ts[i] = c->g.tensors[i].offset;
        td[i] = (unsigned char)c->g.tensors[i].decay;
    }
    ck(c, cudaMemcpyAsync(c->d_tstart, ts.data(), nt * sizeof(unsigned long long),
                          cudaMemcpyHostToDevice, c->stream),
       "upload tensor table");
    ck(c, cudaMemcpyAsync(c->d_tdecay, td.data(), nt, cudaMemcpyHostToDevice, c->stream),
       "upload tensor table");
    k_fill(c->ones, 1.0f, c->N, c->stream);
    check_launch(c, "fill");
    if (c->g.is_first) {
        c->h_counts.assign((size_t)c->V + 1, 0);
        c->h_head.assign(c->L.nseg + 1, 0);
    }
    ck(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    if (c->failed) {
        pp_errf(e, "--backend cuda: %s", c->err);
        stage_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

cuda_stage *S(void *p)
{
    return (cuda_stage *)p;
}

void cuda_destroy(void *stage)
{
    stage_free(S(stage));
}

size_t cuda_nparams(void *stage)
{
    return S(stage)->g.nparams;
}

size_t cuda_boundary_floats(void *stage)
{
    cuda_stage *c = S(stage);
    return (size_t)c->N * c->C;
}

size_t cuda_acts_bytes(void *stage)
{
    return S(stage)->L.total * sizeof(float);
}

void *cuda_alloc(void *stage, size_t bytes)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    int kind = MK_MSG;
    if (bytes == cuda_acts_bytes(stage))
        kind = MK_ACTS;
    else if (bytes == c->g.nparams * sizeof(float))
        kind = MK_WEIGHTS;
    return dev_alloc(c, bytes, kind);
}

/* No CUDA call here: see dev_free. */
void cuda_release(void *stage, void *p)
{
    dev_free(S(stage), p);
}

/* Synchronous for the host: the transport hands the destination to another
 * stage's stream right after this returns. */
void cuda_copy(void *stage, void *dst, const void *src, size_t bytes)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    /* cudaMemcpyDefault: with --devices 0,1,... the neighbour's buffer may
     * live on another GPU (unified addressing finds it) */
    ck(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream), "copy");
    ck(c, cudaStreamSynchronize(c->stream), "copy");
}

void cuda_to_host(void *stage, void *host, const void *dev, size_t bytes)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    ck(c, cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, c->stream), "to_host");
    ck(c, cudaStreamSynchronize(c->stream), "to_host");
}

void cuda_from_host(void *stage, void *dev, const void *host, size_t bytes)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    ck(c, cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, c->stream), "from_host");
    ck(c, cudaStreamSynchronize(c->stream), "from_host");
}

void cuda_init_weights(void *stage, void *w, uint64_t seed)
{
    cuda_stage *c = S(stage);
    size_t bytes = c->g.nparams * sizeof(float);
    float *h = (float *)malloc(bytes ? bytes : 1);
    if (!h) {
        fail(c, "init_weights", "out of host memory");
        return;
    }
    pp_gpt_stage_init_weights(&c->g, h, seed);
    cuda_from_host(stage, w, h, bytes);
    free(h);
}

/* --- forward ---------------------------------------------------------------- */

int check_ids(const int *ids, int n, int V, const char *what, pp_err *e)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return pp_errf(e, "%s %d at position %d is outside the vocabulary [0, %d)", what,
                           ids[i], i, V);
    return 0;
}

/* Tokens, and for the embedding gradient the positions grouped by token
 * (counting sort, stable), uploaded in one copy. */
void upload_tokens(cuda_stage *c, void *acts, const int *tokens)
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

void block_forward(cuda_stage *c, const float *w, void *acts, int l, float *out)
{
    const pp_gpt_block_offsets *p = &c->g.blocks[l];
    const block_layout &a = c->L.blk[l];
    int N = c->N, C = c->C;
    k_layernorm_forward(F(acts, a.ln1), F(acts, a.ln1_mean), F(acts, a.ln1_rstd),
                        F(acts, a.res_in), w + p->ln1_w, w + p->ln1_b, N, C, c->stream);
    check_launch(c, "layernorm_forward");
    linear_forward(c, F(acts, a.qkv), F(acts, a.ln1), w + p->qkv_w, w + p->qkv_b, nullptr, C,
                   3 * C);
    attention_forward(c, F(acts, a.atty), F(acts, a.att), F(acts, a.qkv));
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
    if (c->failed)
        return pp_errf(e, "%s", c->err);
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
    for (int l = 0; l < g->nblocks; l++) {
        int final = l == g->nblocks - 1;
        float *out;
        if (!final)
            out = F(acts, L.blk[l + 1].res_in);
        else
            out = g->is_last ? F(acts, L.res_last) : (float *)x_out;
        block_forward(c, w, acts, l, out);
    }
    if (!g->is_last && g->nblocks == 0) /* a stage without blocks passes x on */
        ck(c, cudaMemcpyAsync(x_out, x0, NC * sizeof(float), cudaMemcpyDeviceToDevice,
                              c->stream),
           "copy x_out");
    if (g->is_last) {
        k_layernorm_forward(F(acts, L.lnf), F(acts, L.lnf_mean), F(acts, L.lnf_rstd),
                            F(acts, L.res_last), w + g->lnf_w, w + g->lnf_b, N, c->C,
                            c->stream);
        check_launch(c, "layernorm_forward");
        linear_forward(c, F(acts, L.logits), F(acts, L.lnf), w + g->head_w, nullptr, nullptr,
                       c->C, c->V);
        k_xent_forward(F(acts, L.logits), F(acts, L.losses), I(acts, L.targets), N, c->V,
                       c->stream);
        check_launch(c, "xent_forward");
        k_mean(c->d_loss, F(acts, L.losses), N, c->stream);
        check_launch(c, "mean");
        ck(c, cudaMemcpyAsync(loss, c->d_loss, sizeof(float), cudaMemcpyDeviceToHost, c->stream),
           "loss to host");
        ck(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    }
    if (c->failed)
        return pp_errf(e, "%s", c->err);
    return 0;
}

/* --- backward: I -------------------------------------------------------------- */

void block_backward_input(cuda_stage *c, const float *w, void *acts, int l)
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
    attention_backward(c, F(acts, a.d_qkv), c->tmp, F(acts, a.qkv), F(acts, a.att));
    linear_backward_input(c, F(acts, a.d_ln1), F(acts, a.d_qkv), w + p->qkv_w, C, 3 * C);
    k_layernorm_backward_input(F(acts, L.d_res[l]), F(acts, a.d_res_mid), F(acts, a.d_ln1),
                               F(acts, a.res_in), F(acts, a.ln1_mean), F(acts, a.ln1_rstd),
                               w + p->ln1_w, N, C, c->stream);
    check_launch(c, "layernorm_backward_input");
}

void cuda_backward_input(void *stage, const void *wv, void *acts, const void *dx_out,
                         void *dx_in, float loss_scale)
{
    cuda_stage *c = S(stage);
    const pp_gpt_stage *g = &c->g;
    const float *w = (const float *)wv;
    const acts_layout &L = c->L;
    int N = c->N, nb = g->nblocks;
    size_t NC = (size_t)N * c->C;
    stage_scope in(c);
    if (g->is_last) {
        k_xent_backward(F(acts, L.logits), I(acts, L.targets), N, c->V, loss_scale / N,
                        c->stream);
        check_launch(c, "xent_backward");
        linear_backward_input(c, F(acts, L.d_lnf), F(acts, L.logits), w + g->head_w, c->C,
                              c->V);
        k_layernorm_backward_input(F(acts, L.d_res[nb]), nullptr, F(acts, L.d_lnf),
                                   F(acts, L.res_last), F(acts, L.lnf_mean),
                                   F(acts, L.lnf_rstd), w + g->lnf_w, N, c->C, c->stream);
        check_launch(c, "layernorm_backward_input");
    } else {
        ck(c, cudaMemcpyAsync(F(acts, L.d_res[nb]), dx_out, NC * sizeof(float),
                              cudaMemcpyDeviceToDevice, c->stream),
           "copy dx_out");
    }
    for (int l = nb - 1; l >= 0; l--)
        block_backward_input(c, w, acts, l);
    if (!g->is_first)
        ck(c, cudaMemcpyAsync(dx_in, F(acts, L.d_res[0]), NC * sizeof(float),
                              cudaMemcpyDeviceToDevice, c->stream),
           "copy dx_in");
}

/* --- backward: W ---------------------------------------------------------------- */

void cuda_backward_weight(void *stage, void *acts, void *gradv)
{
    cuda_stage *c = S(stage);
    const pp_gpt_stage *g = &c->g;
    const acts_layout &L = c->L;
    float *grad = (float *)gradv;
    int C = c->C, nb = g->nblocks;
    stage_scope in(c);
    reclassify(c, gradv, MK_GRADS);
    if (g->is_last) {
        linear_backward_weight(c, grad + g->head_w, nullptr, F(acts, L.logits), F(acts, L.lnf),
                               C, c->V);
        layernorm_backward_weight(c, grad + g->lnf_w, grad + g->lnf_b, F(acts, L.d_lnf),
                                  F(acts, L.res_last), F(acts, L.lnf_mean),
                                  F(acts, L.lnf_rstd));
    }
    for (int l = nb - 1; l >= 0; l--) {
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
    if (g->is_first) {
        const float *dx = F(acts, L.d_res[0]);
        k_embed_backward_wte(grad + g->wte, dx, I(acts, L.perm), I(acts, L.seg_start),
                             I(acts, L.seg_token), I(acts, L.nseg), c->N, C, c->stream);
        check_launch(c, "embed_backward_wte");
        k_embed_backward_wpe(grad + g->wpe, dx, c->B, c->T, C, c->stream);
        check_launch(c, "embed_backward_wpe");
    }
}

/* --- optimizer -------------------------------------------------------------------- */

void cuda_optimizer_step(void *stage, void *w, void *grad, float lr)
{
    cuda_stage *c = S(stage);
    size_t np = c->g.nparams;
    stage_scope in(c);
    reclassify(c, grad, MK_GRADS);
    c->t++;
    /* Bias corrections as adamw.c computes them: in double, then float. */
    float c1 = (float)(1.0 - pow(c->hp.beta1, (double)c->t));
    float c2 = (float)(1.0 - pow(c->hp.beta2, (double)c->t));
    if (np) {
        k_adamw((float *)w, (const float *)grad, c->m, c->v, np, c->d_tstart, c->d_tdecay,
                c->g.ntensors, lr, c->hp.beta1, c->hp.beta2, c->hp.eps, c->hp.weight_decay, c1,
                c2, c->stream);
        check_launch(c, "adamw");
    }
    ck(c, cudaMemsetAsync(grad, 0, np * sizeof(float), c->stream), "zero grad");
}

/* m, v, then t as a double: the CPU backend's layout. */
size_t cuda_opt_state_bytes(void *stage)
{
    return 2 * S(stage)->g.nparams * sizeof(float) + sizeof(double);
}

void cuda_opt_state_get(void *stage, void *host)
{
    cuda_stage *c = S(stage);
    size_t n = c->g.nparams * sizeof(float);
    double t = (double)c->t;
    stage_scope in(c);
    ck(c, cudaMemcpyAsync(host, c->m, n, cudaMemcpyDeviceToHost, c->stream), "opt_state_get");
    ck(c, cudaMemcpyAsync((char *)host + n, c->v, n, cudaMemcpyDeviceToHost, c->stream),
       "opt_state_get");
    ck(c, cudaStreamSynchronize(c->stream), "opt_state_get");
    memcpy((char *)host + 2 * n, &t, sizeof t);
}

void cuda_opt_state_put(void *stage, const void *host)
{
    cuda_stage *c = S(stage);
    size_t n = c->g.nparams * sizeof(float);
    double t;
    stage_scope in(c);
    ck(c, cudaMemcpyAsync(c->m, host, n, cudaMemcpyHostToDevice, c->stream), "opt_state_put");
    ck(c, cudaMemcpyAsync(c->v, (const char *)host + n, n, cudaMemcpyHostToDevice, c->stream),
       "opt_state_put");
    ck(c, cudaStreamSynchronize(c->stream), "opt_state_put");
    memcpy(&t, (const char *)host + 2 * n, sizeof t);
    c->t = (long)t;
}

void cuda_sync(void *stage)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    ck(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
}

/* --- device clocks ---------------------------------------------------------------- */

/* The clocks are a measurement, not part of the computation: a failure
 * shows as clock_read < 0 (the runtime then keeps the host's times) and
 * its error is cleared so that the next launch check does not take it for
 * the stage's own. */
void cuda_clock_origin(void *stage)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    if (cudaEventRecord(c->clk_origin, c->stream) != cudaSuccess ||
        cudaEventSynchronize(c->clk_origin) != cudaSuccess)
        cudaGetLastError();
}

void cuda_clock_mark(void *stage, int slot)
{
    cuda_stage *c = S(stage);
    if (slot < 0 || slot > 1)
        return;
    stage_scope in(c);
    if (cudaEventRecord(c->clk_mark[slot], c->stream) != cudaSuccess)
        cudaGetLastError();
}

double cuda_clock_read(void *stage, int slot)
{
    cuda_stage *c = S(stage);
    if (slot < 0 || slot > 1)
        return -1.0;
    stage_scope in(c);
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, c->clk_origin, c->clk_mark[slot]) != cudaSuccess) {
        cudaGetLastError();
        return -1.0;
    }
    return ms / 1000.0;
}

} // namespace

extern "C" {

/* Positional: this must follow the member order of pp_backend_ops. */
const pp_backend_ops pp_backend_cuda = {
    "cuda",
    cuda_create,
    cuda_destroy,
    cuda_nparams,
    cuda_boundary_floats,
    cuda_acts_bytes,
    cuda_alloc,
    cuda_release,
    cuda_copy,
    cuda_to_host,
    cuda_from_host,
    cuda_init_weights,
    cuda_forward,
    cuda_backward_input,
    cuda_backward_weight,
    cuda_optimizer_step,
    cuda_opt_state_bytes,
    cuda_opt_state_get,
    cuda_opt_state_put,
    cuda_sync,
    cuda_clock_origin,
    cuda_clock_mark,
    cuda_clock_read,
};

int pp_cuda_available(pp_err *e)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        cudaGetLastError();
        return pp_errf(e, "--backend cuda: no CUDA GPU found (cudaGetDeviceCount: %s)",
                       cudaGetErrorString(rc));
    }
    if (n == 0)
        return pp_errf(e, "--backend cuda: no CUDA GPU found (cudaGetDeviceCount: 0 devices)");
    return 0;
}

void pp_cuda_stage_memory(void *stage, pp_cuda_memory *out)
{
    cuda_stage *c = S(stage);
    std::lock_guard<std::mutex> lk(c->mu);
    out->weights = c->bytes[MK_WEIGHTS];
    out->grads = c->bytes[MK_GRADS];
    out->optimizer = c->bytes[MK_OPT];
    out->activations = c->bytes[MK_ACTS];
    out->messages = c->bytes[MK_MSG];
    out->workspace = c->bytes[MK_WS];
    out->total = c->total;
    out->peak_total = c->peak;
}

void *pp_cuda_stage_stream(void *stage)
{
    return (void *)S(stage)->stream;
}

int pp_cuda_stage_device(void *stage)
{
    return S(stage)->device;
}

int pp_cuda_stage_sms(void *stage)
{
    return S(stage)->sms;
}

void pp_cuda_stage_bind(void *stage)
{
    cuda_stage *c = S(stage);
    if (c->part.ctx)
        pp_green_make_current(c->part.ctx);
    else
        cudaSetDevice(c->device);
}

const char *pp_cuda_stage_math(void *stage)
{
    return S(stage)->math;
}

void pp_cuda_device_name(int device, char *buf, size_t n)
{
    cudaDeviceProp p;
    if (n == 0)
        return;
    buf[0] = 0;
    if (cudaGetDeviceProperties(&p, device) == cudaSuccess)
        snprintf(buf, n, "%s", p.name);
    else
        cudaGetLastError();
}

double pp_cuda_gemm_tflops(int device, int n, int reps, pp_err *e)
{
    cublasComputeType_t ct;
    math_from_env(&ct);
    cudaStream_t st = nullptr;
    cublasHandle_t h = nullptr;
    cudaEvent_t t0 = nullptr, t1 = nullptr;
    float *a = nullptr, *b = nullptr, *c = nullptr;
    void *ws = nullptr;
    size_t bytes = (size_t)n * n * sizeof(float), wsb = 32u << 20;
    double best = -1.0;
    cudaError_t rc = cudaSetDevice(device);
    if (rc == cudaSuccess)
        rc = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    if (rc == cudaSuccess)
        rc = cudaMallocAsync((void **)&a, bytes, st);
    if (rc == cudaSuccess)
        rc = cudaMallocAsync((void **)&b, bytes, st);
    if (rc == cudaSuccess)
        rc = cudaMallocAsync((void **)&c, bytes, st);
    if (rc == cudaSuccess)
        rc = cudaMallocAsync(&ws, wsb, st);
    if (rc == cudaSuccess)
        rc = cudaEventCreate(&t0);
    if (rc == cudaSuccess)
        rc = cudaEventCreate(&t1);
    if (rc != cudaSuccess) {
        pp_errf(e, "gemm peak: %s", cudaGetErrorString(rc));
        goto out;
    }
    k_fill(a, 0.5f, (size_t)n * n, st);
    k_fill(b, 0.25f, (size_t)n * n, st);
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        h = nullptr;
        pp_errf(e, "gemm peak: cublasCreate failed");
        goto out;
    }
    cublasSetStream(h, st);
    cublasSetWorkspace(h, ws, wsb);
    for (int r = -1; r < reps; r++) {
        float one = 1.0f, zero = 0.0f;
        cudaEventRecord(t0, st);
        cublasStatus_t bs =
            cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_32F, n, b,
                         CUDA_R_32F, n, &zero, c, CUDA_R_32F, n, ct, CUBLAS_GEMM_DEFAULT);
        cudaEventRecord(t1, st);
        if (bs != CUBLAS_STATUS_SUCCESS || cudaEventSynchronize(t1) != cudaSuccess) {
            pp_errf(e, "gemm peak: cublasGemmEx failed");
            best = -1.0;
            goto out;
        }
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, t0, t1);
        double tf = 2.0 * n * (double)n * n / (ms * 1e-3) / 1e12;
        if (r >= 0 && tf > best)
            best = tf;
    }
out:
    if (h)
        cublasDestroy(h);
    if (st) {
        cudaFreeAsync(a, st);
        cudaFreeAsync(b, st);
        cudaFreeAsync(c, st);
        cudaFreeAsync(ws, st);
        cudaStreamSynchronize(st);
        cudaStreamDestroy(st);
    }
    if (t0)
        cudaEventDestroy(t0);
    if (t1)
        cudaEventDestroy(t1);
    cudaGetLastError();
    return best;
}

} // extern "C"
