/* bf16 storage's matrix products (PPSCHED_CUDA_MATH=bf16): cuBLASLt on
 * bf16 operands with fp32 accumulation, the bias, GELU and d GELU fused as
 * epilogues, and the bf16 shadows of the fp32 weight buffers that feed
 * them. fp32 math never comes here (cuda_layers.cu's cublasGemmEx).
 *
 * A matmul descriptor, its layouts and the heuristic's algorithm are made
 * once per shape (lt_plan) and kept by the stage: a stage runs the same
 * dozen products every micro-batch. The workspace is the stage's cuBLAS
 * workspace: both libraries run on the stage's one stream, in order. */
#include <cublasLt.h>

#include <atomic>
#include <cstdint>
#include <cstdio>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

struct lt_plan {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldd;
    unsigned align; /* bytes every matrix pointer is aligned to: 256 or 16 */
    cudaDataType_t dt;
    cublasLtEpilogue_t epi;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulAlgo_t algo;
};

static bool same_shape(const lt_plan *p, const lt_args &a, unsigned align)
{
    return p->align == align && p->ta == a.ta && p->tb == a.tb && p->m == a.m && p->n == a.n &&
           p->k == a.k && p->lda == a.lda && p->ldb == a.ldb && p->ldd == a.ldd && p->dt == a.dt &&
           p->epi == a.epi;
}

static void plan_free(lt_plan *p)
{
    if (p->ld)
        cublasLtMatrixLayoutDestroy(p->ld);
    if (p->lb)
        cublasLtMatrixLayoutDestroy(p->lb);
    if (p->la)
        cublasLtMatrixLayoutDestroy(p->la);
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    delete p;
}

/* The epilogue's pointers, set at every call. */
static bool set_pointers(cuda_stage *c, lt_plan *p, const void *bias, const void *aux)
{
    const char *w = "cublasLtMatmulDescSetAttribute";
    if (bias && !ckb(c, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias, sizeof bias), w))
        return false;
    if (aux && !ckb(c, cublasLtMatmulDescSetAttribute(
                           p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux),
                    w))
        return false;
    return true;
}

static bool plan_desc(cuda_stage *c, lt_plan *p, const lt_args &a)
{
    const char *w = "cublasLtMatmulDescSetAttribute";
    bool ok = ckb(c, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                  "cublasLtMatmulDescCreate") &&
              ckb(c, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &p->ta,
                                                    sizeof p->ta), w) &&
              ckb(c, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &p->tb,
                                                    sizeof p->tb), w) &&
              ckb(c, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                    &p->epi, sizeof p->epi), w);
    if (ok && p->epi != CUBLASLT_EPILOGUE_DEFAULT && p->epi != CUBLASLT_EPILOGUE_BIAS) {
        /* the GELU pre-activation [n][m] row-major, bf16 */
        int64_t ld = p->m;
        cudaDataType_t at = CUDA_R_16BF;
        ok = ckb(c, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                   &ld, sizeof ld), w) &&
             ckb(c, cublasLtMatmulDescSetAttribute(
                        p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &at, sizeof at), w);
    }
    if (ok && c->part.ctx) { /* pick kernels for the partition's SMs */
        int sms = c->sms;
        ok = ckb(c, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET,
                                                   &sms, sizeof sms), w);
    }
    /* The heuristic reads the alignment of the bias and aux pointers from
     * their values, and the plan serves every pointer of its alignment
     * class: it sees addresses aligned to exactly that. */
    const void *at = (const void *)(uintptr_t)p->align;
    return ok && set_pointers(c, p, a.bias ? at : nullptr, a.aux ? at : nullptr);
}

static bool plan_layouts(cuda_stage *c, lt_plan *p)
{
    const char *w = "cublasLtMatrixLayoutCreate";
    bool an = p->ta == CUBLAS_OP_N, bn = p->tb == CUBLAS_OP_N;
    return ckb(c, cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, an ? p->m : p->k,
                                             an ? p->k : p->m, p->lda), w) &&
           ckb(c, cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, bn ? p->k : p->n,
                                             bn ? p->n : p->k, p->ldb), w) &&
           ckb(c, cublasLtMatrixLayoutCreate(&p->ld, p->dt, p->m, p->n, p->ldd), w);
}

static bool plan_algo(cuda_stage *c, lt_plan *p)
{
    cublasLtMatmulPreference_t pref = nullptr;
    size_t ws = c->workspace_bytes;
    if (!ckb(c, cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate"))
        return false;
    const char *w = "cublasLtMatmulPreferenceSetAttribute";
    bool ok = ckb(c, cublasLtMatmulPreferenceSetAttribute(
                         pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws), w);
    /* The heuristic assumes 256-byte aligned matrices unless told: the
     * weight shadow's tensors start C bf16 apart. */
    const cublasLtMatmulPreferenceAttributes_t al[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    uint32_t align = p->align;
    for (auto at : al)
        ok = ok && ckb(c, cublasLtMatmulPreferenceSetAttribute(pref, at, &align, sizeof align), w);
    cublasLtMatmulHeuristicResult_t r;
    int found = 0;
    if (ok)
        ok = ckb(c, cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->la, p->lb, p->ld, p->ld, pref,
                                                   1, &r, &found),
                 "cublasLtMatmulAlgoGetHeuristic");
    cublasLtMatmulPreferenceDestroy(pref);
    if (ok && found == 0) {
        char d[160];
        snprintf(d, sizeof d, "no algorithm for m %d n %d k %d, epilogue %d", p->m, p->n, p->k,
                 (int)p->epi);
        fail(c, "cublasLtMatmulAlgoGetHeuristic", d);
        return false;
    }
    if (ok)
        p->algo = r.algo;
    return ok;
}

static lt_plan *plan_for(cuda_stage *c, const lt_args &a, unsigned align)
{
    for (lt_plan *p : c->lt_plans)
        if (same_shape(p, a, align))
            return p;
    lt_plan *p = new lt_plan();
    p->align = align;
    p->ta = a.ta;
    p->tb = a.tb;
    p->m = a.m;
    p->n = a.n;
    p->k = a.k;
    p->lda = a.lda;
    p->ldb = a.ldb;
    p->ldd = a.ldd;
    p->dt = a.dt;
    p->epi = a.epi;
    if (!plan_desc(c, p, a) || !plan_layouts(c, p) || !plan_algo(c, p)) {
        plan_free(p);
        return nullptr;
    }
    c->lt_plans.push_back(p);
    return p;
}

/* cuBLASLt wants 16-byte aligned matrices, bias and aux. */
static bool aligned(const void *p, unsigned to = 16)
{
    return ((uintptr_t)p & (to - 1)) == 0;
}

void lt_matmul(cuda_stage *c, const lt_args &a)
{
    if (c->failed)
        return;
    if (!aligned(a.A) || !aligned(a.B) || !aligned(a.D) || !aligned(a.Cm) || !aligned(a.bias) ||
        !aligned(a.aux)) {
        fail(c, "cublasLtMatmul", "an operand is not 16-byte aligned");
        return;
    }
    bool a256 = aligned(a.A, 256) && aligned(a.B, 256) && aligned(a.D, 256) &&
                aligned(a.Cm, 256) && aligned(a.bias, 256) && aligned(a.aux, 256);
    lt_plan *p = plan_for(c, a, a256 ? 256 : 16);
    if (!p || !set_pointers(c, p, a.bias, a.aux))
        return;
    float alpha = 1.0f, beta = a.Cm ? a.beta : 0.0f;
    const void *Cm = a.Cm ? a.Cm : a.D;
    ckb(c, cublasLtMatmul(c->lt, p->op, &alpha, a.A, p->la, a.B, p->lb, &beta, Cm, p->ld, a.D,
                          p->ld, &p->algo, c->workspace, c->workspace_bytes, c->stream),
        "cublasLtMatmul");
}

void colsum_bf16(cuda_stage *c, float *out, const bf16 *x, int rows, int cols)
{
    float one = 1.0f;
    ckb(c, cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, cols, 1, rows, &one, x, CUDA_R_16BF,
                        cols, c->h1, CUDA_R_16BF, rows, &one, out, CUDA_R_32F, cols,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx (bias gradient)");
}

/* --- the stage's cuBLASLt state -------------------------------------------- */

bool lt_init(cuda_stage *c, pp_err *e)
{
    cublasStatus_t st = cublasLtCreate(&c->lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        c->lt = nullptr;
        pp_errf(e, "--backend cuda: stage %d: cublasLtCreate: %s", c->g.s,
                cublasGetStatusString(st));
        return false;
    }
    size_t NC = (size_t)c->N * c->C;
    c->hs = (bf16 *)dev_alloc(c, 2 * NC * sizeof(bf16), MK_WS);
    c->h1 = (bf16 *)dev_alloc(c, c->N * sizeof(bf16), MK_WS);
    if (!c->hs || !c->h1) {
        pp_errf(e, "--backend cuda: stage %d: out of device memory (bf16 scratch)", c->g.s);
        return false;
    }
    k_to_bf16(c->h1, c->ones, c->N, c->stream); /* c->ones is filled before */
    check_launch(c, "to_bf16 (ones)");
    return true;
}

void lt_release(cuda_stage *c)
{
    for (lt_plan *p : c->lt_plans)
        plan_free(p);
    c->lt_plans.clear();
    if (c->lt)
        cublasLtDestroy(c->lt);
    c->lt = nullptr;
}

/* --- bf16 shadows of the weight buffers -------------------------------------- */

/* Bumped by every write that may reach a weight buffer, of any stage (a
 * stage's copy can write another's buffer): a shadow made before the last
 * write is stale. Coarse on purpose: a needless re-make costs one
 * conversion of the weights, a missed one trains on old weights. */
static std::atomic<unsigned long long> g_written{1};

void weights_written()
{
    g_written.fetch_add(1);
}

/* The runtime passes several weight versions (pp_weight_store): a few
 * shadows per stage, the least recently used re-made for a new buffer. */
const bf16 *weights_bf16(cuda_stage *c, const float *w)
{
    const size_t kShadows = 4, np = c->g.nparams;
    unsigned long long now = g_written.load();
    weight_shadow *e = nullptr;
    for (auto &s : c->shadows)
        if (s.src == w)
            e = &s;
    if (!e && c->shadows.size() < kShadows) {
        bf16 *h = (bf16 *)dev_alloc(c, np * sizeof(bf16), MK_WEIGHTS);
        if (!h) {
            fail(c, "bf16 weights", "out of device memory");
            return nullptr;
        }
        c->shadows.push_back({nullptr, h, 0, 0});
        e = &c->shadows.back();
    }
    if (!e) {
        e = &c->shadows[0];
        for (auto &s : c->shadows)
            if (s.used < e->used)
                e = &s;
    }
    e->used = ++c->shadow_tick;
    if (e->src == w && e->gen == now)
        return e->h;
    k_to_bf16(e->h, w, np, c->stream);
    check_launch(c, "to_bf16 (weights)");
    e->src = w;
    e->gen = now;
    return e->h;
}

} // namespace pp_cuda
