/* The CUDA backend (DESIGN §6): the pp_backend_ops table of backend.h on
 * one GPU, fp32, numerically the CPU reference of gpt_cpu.c.
 *
 * A stage owns a non-blocking stream, a cuBLAS handle bound to it with its
 * own workspace, its optimizer's state (AdamW's moments until
 * optimizer_init chooses another), the tensor table (on the device, for
 * the per-tensor weight decay and optimizer state) and scratch for one
 * micro-batch's backward.
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
 * The per-micro-batch activation buffer has its own layout (acts_layout in
 * cuda_stage.cuh): it never leaves the device.
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
 * a message at the next forward instead of computing on garbage.
 *
 * This file holds the stage's lifecycle, its copies and clocks and the ops
 * table; the rest of the backend lives beside it: cuda_stage.cuh (the stage
 * struct, private to exec/cuda/), cuda_memory.cu (allocations, accounting,
 * activation layout), cuda_layers.cu (GEMMs, layers, forward and backward),
 * cuda_layers_bf16.cu and cuda_lt.cu (bf16 storage's cuBLASLt products and
 * weight shadows), cuda_attention.cu (cuBLAS, or cuDNN's fused attention in
 * cuda_attention_cudnn.cu), cuda_optimizer.cu (AdamW, the optimizer state),
 * cuda_muon.cu (Muon's Newton-Schulz products), kernels_*.cu (the kernels
 * and their launchers) and cuda_introspect.cu (the
 * pp_cuda_stage_* queries and the GEMM benchmark of cuda_backend.h). */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "cuda_stage.cuh"
#include "cuda_backend.h"
#include "kernels.cuh"

namespace pp_cuda {

/* Hopper has 32 hardware work queues, but the CUDA runtime opens 8 unless
 * CUDA_DEVICE_MAX_CONNECTIONS says otherwise, and reads it once, when it
 * creates the context. With more streams than queues (8 stages and their
 * evaluation twins on one GPU) streams share queues and one stage's work
 * can wait behind another's: idle time that is not the schedule's bubble.
 * So the backend asks for 32 when the program loads, before any CUDA
 * call; a value the user set stays. */
__attribute__((constructor)) static void open_every_work_queue(void)
{
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
}

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

int status(cuda_stage *c, pp_err *e)
{
    std::lock_guard<std::mutex> lk(c->mu);
    return c->failed ? pp_errf(e, "%s", c->err) : 0;
}

/* --- stage lifecycle ------------------------------------------------------ */

static void stage_free(cuda_stage *c)
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
        attention_release(c); /* cuDNN's handle and graphs */
        lt_release(c);
        for (cudaEvent_t ev : c->clk)
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

static int cuda_create(const pp_model_desc *m, int P, int s, const pp_placement *at, void **out,
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
    c->Vp = (c->V + 127) / 128 * 128;
    c->N = c->B * c->T;
    c->math = math_from_env(&c->compute);
    c->bf16 = strcmp(c->math, "bf16") == 0;
    /* bf16 rows of width C start 16-byte aligned, as cuBLASLt wants */
    if (c->bf16 && c->C % 8 != 0) {
        pp_errf(e, "--backend cuda: PPSCHED_CUDA_MATH=bf16 needs a width that is a multiple of "
                   "8 (got %d)", c->C);
        pp_gpt_stage_free(&c->g);
        delete c;
        return -1;
    }

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
    rc = cudaSuccess;
    for (int i = 0; i < PP_CLOCK_SLOTS && rc == cudaSuccess; i++)
        rc = cudaEventCreate(&c->clk[i]);
    if (rc != cudaSuccess) {
        cudaGetLastError();
        pp_errf(e, "--backend cuda: stage %d: cudaEventCreate: %s", s, cudaGetErrorString(rc));
        stage_free(c);
        return -1;
    }

    /* The attention path first: the activation layout depends on it. */
    if (attention_init(c, e) < 0) {
        stage_free(c);
        return -1;
    }
    build_layout(c);

    size_t np = c->g.nparams, NC = (size_t)c->N * c->C;
    int nt = c->g.ntensors;
    c->workspace_bytes = 32u << 20; /* cuBLAS's recommendation for Hopper */
    c->workspace = dev_alloc(c, c->workspace_bytes, MK_WS);
    c->d_tstart = (unsigned long long *)dev_alloc(c, nt * sizeof(unsigned long long), MK_WS);
    c->d_state_at = (unsigned long long *)dev_alloc(c, nt * sizeof(unsigned long long), MK_WS);
    c->d_tdecay = (unsigned char *)dev_alloc(c, nt, MK_WS);
    c->ones = (float *)dev_alloc(c, c->N * sizeof(float), MK_WS);
    c->tmp = (float *)dev_alloc(c, 4 * NC * sizeof(float), MK_WS);
    c->d_loss = (float *)dev_alloc(c, sizeof(float), MK_WS);
    if (!c->workspace || !c->d_tstart || !c->d_state_at || !c->d_tdecay || !c->ones || !c->tmp ||
        !c->d_loss) {
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
    if (c->bf16 && !lt_init(c, e)) {
        stage_free(c);
        return -1;
    }
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
    /* AdamW until optimizer_init chooses another (backend.h) */
    pp_optim_config adamw = pp_optim_defaults();
    if (cuda_optimizer_init(c, &adamw, e) < 0) {
        stage_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

static void cuda_destroy(void *stage)
{
    stage_free(S(stage));
}

static size_t cuda_nparams(void *stage)
{
    return S(stage)->g.nparams;
}

static size_t cuda_boundary_floats(void *stage)
{
    cuda_stage *c = S(stage);
    return (size_t)c->N * c->C;
}

/* Synchronous for the host: the transport hands the destination to another
 * stage's stream right after this returns. */
static void cuda_copy(void *stage, void *dst, const void *src, size_t bytes)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    /* cudaMemcpyDefault: with --devices 0,1,... the neighbour's buffer may
     * live on another GPU (unified addressing finds it) */
    if (bytes == c->g.nparams * sizeof(float))
        weights_written();
    ck(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream), "copy");
    ck(c, cudaStreamSynchronize(c->stream), "copy");
}

/* The transport's ordering without host waits (backend.h): CUDA events
 * without timing, waited for by another stage's stream (of another green
 * context or device too). */
static void cuda_copy_queued(void *stage, void *dst, const void *src, size_t bytes)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    if (bytes == c->g.nparams * sizeof(float)) /* a weight version, maybe */
        weights_written();
    ck(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream), "message copy");
}

static void *cuda_fence_new(void *stage)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    cudaEvent_t ev = nullptr;
    if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess) {
        cudaGetLastError(); /* out of resources: the transport says out of memory */
        return nullptr;
    }
    return ev;
}

static void cuda_fence_free(void *stage, void *fence)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    cudaEventDestroy((cudaEvent_t)fence);
}

static void cuda_fence_mark(void *stage, void *fence)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    ck(c, cudaEventRecord((cudaEvent_t)fence, c->stream), "message fence");
}

static void cuda_fence_wait(void *stage, void *fence)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    ck(c, cudaStreamWaitEvent(c->stream, (cudaEvent_t)fence, 0), "message fence wait");
}

static void cuda_to_host(void *stage, void *host, const void *dev, size_t bytes)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    ck(c, cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, c->stream), "to_host");
    ck(c, cudaStreamSynchronize(c->stream), "to_host");
}

static void cuda_from_host(void *stage, void *dev, const void *host, size_t bytes)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    weights_written(); /* weights, or anything: a checkpoint's restore */
    ck(c, cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, c->stream), "from_host");
    ck(c, cudaStreamSynchronize(c->stream), "from_host");
}

static void cuda_init_weights(void *stage, void *w, uint64_t seed)
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

static int cuda_sync(void *stage, pp_err *e)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    ck(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    return status(c, e);
}

/* --- device clocks ---------------------------------------------------------------- */

/* The clocks are a measurement, not part of the computation: a failure
 * shows as clock_between < 0 (the runtime then keeps the host's times) and
 * its error is cleared so that the next launch check does not take it for
 * the stage's own. */
static void cuda_clock_origin(void *stage, int slot)
{
    cuda_stage *c = S(stage);
    if (slot < 0 || slot >= PP_CLOCK_SLOTS)
        return;
    stage_scope in(c);
    if (cudaEventRecord(c->clk[slot], c->stream) != cudaSuccess ||
        cudaEventSynchronize(c->clk[slot]) != cudaSuccess)
        cudaGetLastError();
}

static void cuda_clock_mark(void *stage, int slot)
{
    cuda_stage *c = S(stage);
    if (slot < 0 || slot >= PP_CLOCK_SLOTS)
        return;
    stage_scope in(c);
    if (cudaEventRecord(c->clk[slot], c->stream) != cudaSuccess)
        cudaGetLastError();
}

/* Waits for mark b only: the work queued after it runs on. */
static double cuda_clock_between(void *stage, int a, int b)
{
    cuda_stage *c = S(stage);
    if (a < 0 || a >= PP_CLOCK_SLOTS || b < 0 || b >= PP_CLOCK_SLOTS)
        return -1.0;
    stage_scope in(c);
    float ms = 0.0f;
    if (cudaEventSynchronize(c->clk[b]) != cudaSuccess ||
        cudaEventElapsedTime(&ms, c->clk[a], c->clk[b]) != cudaSuccess) {
        cudaGetLastError();
        return -1.0;
    }
    return ms / 1000.0;
}

} // namespace pp_cuda

using namespace pp_cuda;

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
    cuda_optimizer_update,
    cuda_optimizer_init,
    cuda_grad_sumsq,
    cuda_opt_state_bytes,
    cuda_opt_state_get,
    cuda_opt_state_put,
    cuda_sync,
    cuda_fence_new,
    cuda_fence_free,
    cuda_fence_mark,
    cuda_fence_wait,
    cuda_copy_queued,
    cuda_clock_origin,
    cuda_clock_mark,
    cuda_clock_between,
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

} // extern "C"
