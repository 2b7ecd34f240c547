/* What C code may ask of a CUDA stage or device beyond the pp_backend_ops
 * table (cuda_backend.h): a stage's memory, stream, device, SMs, math and
 * attention path, a device's name and its measured GEMM throughput
 * (bench/cuda_bench.c, tests). */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <vector>

#include "cuda_stage.cuh"
#include "cuda_backend.h"
#include "kernels.cuh"

using namespace pp_cuda;

extern "C" {

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

const char *pp_cuda_stage_storage(void *stage)
{
    return S(stage)->bf16 ? "bf16" : "fp32";
}

const char *pp_cuda_stage_attention(void *stage, const char **fallback)
{
    cuda_stage *c = S(stage);
    if (fallback)
        *fallback = c->attention_fallback[0] ? c->attention_fallback : nullptr;
    return c->attention;
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
    cudaStream_t st = nullptr;
    cublasHandle_t h = nullptr;
    cudaEvent_t t0 = nullptr, t1 = nullptr;
    float *a = nullptr, *b = nullptr, *c = nullptr;
    __nv_bfloat16 *ah = nullptr, *bh = nullptr;
    void *ws = nullptr;
    size_t nn = (size_t)n * n, wsb = 32u << 20;
    std::vector<double> tf;
    double median = -1.0;
    cudaError_t rc = cudaSetDevice(device);
    if (rc == cudaSuccess)
        rc = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    void **bufs[] = {(void **)&a, (void **)&b, (void **)&c, (void **)&ah, (void **)&bh, &ws};
    size_t sizes[] = {nn * 4, nn * 4, nn * 4, nn * 2, nn * 2, wsb};
    for (int i = 0; i < 6 && rc == cudaSuccess; i++)
        rc = cudaMallocAsync(bufs[i], sizes[i], st);
    if (rc == cudaSuccess)
        rc = cudaEventCreate(&t0);
    if (rc == cudaSuccess)
        rc = cudaEventCreate(&t1);
    if (rc != cudaSuccess) {
        pp_errf(e, "gemm peak: %s", cudaGetErrorString(rc));
        goto out;
    }
    k_fill_uniform(a, nn, 1, st);
    k_fill_uniform(b, nn, 2, st);
    k_to_bf16(ah, a, nn, st);
    k_to_bf16(bh, b, nn, st);
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        h = nullptr;
        pp_errf(e, "gemm peak: cublasCreate failed");
        goto out;
    }
    cublasSetStream(h, st);
    cublasSetWorkspace(h, ws, wsb);
    for (int r = -1; r < reps; r++) {
        float one = 1.0f, zero = 0.0f, ms = 0.0f;
        cudaEventRecord(t0, st);
        cublasStatus_t bs =
            cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, ah, CUDA_R_16BF, n, bh,
                         CUDA_R_16BF, n, &zero, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT);
        cudaEventRecord(t1, st);
        if (bs != CUBLAS_STATUS_SUCCESS || cudaEventSynchronize(t1) != cudaSuccess) {
            pp_errf(e, "gemm peak: cublasGemmEx failed");
            goto out;
        }
        cudaEventElapsedTime(&ms, t0, t1);
        if (r >= 0) /* the first is the warm-up */
            tf.push_back(2.0 * n * (double)n * n / (ms * 1e-3) / 1e12);
    }
    std::sort(tf.begin(), tf.end());
    median = tf.empty() ? -1.0 : tf[tf.size() / 2];
out:
    if (h)
        cublasDestroy(h);
    if (st) {
        for (void **p : bufs)
            if (*p)
                cudaFreeAsync(*p, st);
        cudaStreamSynchronize(st);
        cudaStreamDestroy(st);
    }
    if (t0)
        cudaEventDestroy(t0);
    if (t1)
        cudaEventDestroy(t1);
    cudaGetLastError();
    return median;
}

} // extern "C"
