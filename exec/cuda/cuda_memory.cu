/* The CUDA backend's device memory: stream-ordered allocations counted by
 * kind (pp_cuda_stage_memory), releases that may come from another thread,
 * and the layout of one micro-batch's activation buffer. */
#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#include "cuda_stage.cuh"

namespace pp_cuda {

/* --- memory -------------------------------------------------------------- */

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
static void dev_free(cuda_stage *c, void *p)
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
static size_t take(size_t *off, size_t n)
{
    size_t at = *off;
    *off += (n + 63) / 64 * 64;
    return at;
}

/* n elements of a product's operand: bf16 (half the slots) on bf16
 * storage, fp32 otherwise. */
static size_t take_op(const cuda_stage *c, size_t *off, size_t n)
{
    return take(off, c->bf16 ? (n + 1) / 2 : n);
}

/* The attention path must be chosen (attention_init): cuBLAS keeps the
 * probabilities, B H T^2 floats a block, cuDNN one log-sum-exp per score
 * row, B H T. (cuDNN's bf16 operands are scratch of the stage, converted
 * again from qkv and atty for the backward: keeping them here would cost
 * 8 N C bytes a block to save converting 4 N C floats once more.)
 * On bf16 storage (take_op) what feeds or leaves a product is bf16: ln1,
 * qkv, atty, ln2, fc (the GELU pre-activation), fcg, lnf and their
 * gradients d_ln1, d_qkv, d_res_mid, d_ln2, d_fc, d_lnf (d_res_mid: what the
 * W pass reads; I keeps it in fp32 scratch); the residual stream res_*, its
 * gradients d_res, LayerNorm's statistics and the losses stay fp32. The
 * logits (then probabilities, then d logits) are bf16 too. */
void build_layout(cuda_stage *c)
{
    const pp_gpt_stage *g = &c->g;
    size_t N = c->N, NC = (size_t)c->N * c->C, rows = (size_t)c->B * c->H * c->T;
    bool cudnn = c->cudnn != nullptr;
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
        b.ln1 = take_op(c, &off, NC);
        b.ln1_mean = take(&off, N);
        b.ln1_rstd = take(&off, N);
        b.qkv = take_op(c, &off, 3 * NC);
        b.att = cudnn ? 0 : take(&off, rows * c->T);
        b.stats = cudnn ? take(&off, rows) : 0;
        b.atty = take_op(c, &off, NC);
        b.res_mid = take(&off, NC);
        b.ln2 = take_op(c, &off, NC);
        b.ln2_mean = take(&off, N);
        b.ln2_rstd = take(&off, N);
        b.fc = take_op(c, &off, 4 * NC);
        b.fcg = take_op(c, &off, 4 * NC);
    }
    L.res_last = L.lnf = L.lnf_mean = L.lnf_rstd = L.logits = L.losses = 0;
    if (g->is_last) {
        L.res_last = take(&off, NC);
        L.lnf = take_op(c, &off, NC);
        L.lnf_mean = take(&off, N);
        L.lnf_rstd = take(&off, N);
        /* [N][Vp]: logits, probabilities, then d logits */
        L.logits = take_op(c, &off, N * (size_t)c->Vp);
        L.losses = take(&off, N);
    }
    /* Gradients saved by I for W. */
    L.d_res.resize(g->nblocks + 1);
    for (int l = 0; l <= g->nblocks; l++)
        L.d_res[l] = take(&off, NC);
    for (int l = 0; l < g->nblocks; l++) {
        block_layout &b = L.blk[l];
        b.d_ln1 = take_op(c, &off, NC);
        b.d_qkv = take_op(c, &off, 3 * NC);
        b.d_res_mid = take_op(c, &off, NC);
        b.d_ln2 = take_op(c, &off, NC);
        b.d_fc = take_op(c, &off, 4 * NC);
    }
    L.d_lnf = g->is_last ? take_op(c, &off, NC) : 0;
    L.total = off;
}

/* --- the alloc and release entries ------------------------------------- */

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
    if (kind == MK_WEIGHTS) /* a new buffer where an old one had a shadow */
        weights_written();
    return dev_alloc(c, bytes, kind);
}

/* No CUDA call here: see dev_free. */
void cuda_release(void *stage, void *p)
{
    dev_free(S(stage), p);
}

} // namespace pp_cuda
