/* Softmax kernels of the CUDA backend: the causal attention softmax and its
 * backward, and the output layer's softmax + cross-entropy. The score and
 * value products themselves are cuBLAS batched GEMMs (cuda_attention.cu).
 * The cross-entropy reads fp32 or (bf16 storage) bf16 logits, in fp32. */
#include "kernels.cuh"

#include <cmath>

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide reductions; every thread gets the result. `sh` holds 32. */
__device__ float block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
}

__device__ float block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(v);
}

/* One warp per row. */
__global__ void softmax_causal_forward(float *att, size_t rows, int T)
{
    size_t row = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows)
        return;
    int t = (int)(row % T);
    float *p = att + row * T;
    float mx = -INFINITY;
    for (int j = lane; j <= t; j += 32)
        mx = fmaxf(mx, p[j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j <= t; j += 32)
        sum += expf(p[j] - mx);
    sum = warp_sum(sum);
    float inv = 1.0f / sum;
    for (int j = lane; j < T; j += 32)
        p[j] = j <= t ? expf(p[j] - mx) * inv : 0.0f;
}

__global__ void softmax_causal_backward(float *datt, const float *att, size_t rows, int T,
                                        float scale)
{
    size_t row = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows)
        return;
    int t = (int)(row % T);
    const float *p = att + row * T;
    float *d = datt + row * T;
    float dot = 0.0f;
    for (int j = lane; j <= t; j += 32)
        dot += p[j] * d[j];
    dot = warp_sum(dot);
    for (int j = lane; j < T; j += 32)
        d[j] = j <= t ? p[j] * (d[j] - dot) * scale : 0.0f;
}

/* One block per row of V logits, rows ld apart. */
template <typename T>
__global__ void xent_forward(T *logits, float *losses, const int *targets, int V, int ld)
{
    __shared__ float sh[32];
    T *x = logits + (size_t)blockIdx.x * ld;
    float target_logit = ld32(x[targets[blockIdx.x]]);
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x)
        mx = fmaxf(mx, ld32(x[v]));
    mx = block_max(mx, sh);
    float sum = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x)
        sum += expf(ld32(x[v]) - mx);
    sum = block_sum(sum, sh);
    float inv = 1.0f / sum;
    for (int v = threadIdx.x; v < V; v += blockDim.x)
        st(x + v, expf(ld32(x[v]) - mx) * inv);
    if (threadIdx.x == 0)
        losses[blockIdx.x] = logf(sum) + mx - target_logit;
}

/* One block; a fixed reduction tree, so the result is deterministic. */
__global__ void mean_kernel(float *out, const float *x, int n)
{
    __shared__ double sh[kThreads];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w)
            sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        *out = (float)(sh[0] / n);
}

/* Over the N x V entries, rows ld apart (the padding left alone). */
template <typename T>
__global__ void xent_backward(T *probs, const int *targets, int V, int ld, float k, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / V;
        int v = (int)(i % V);
        T *p = probs + n * ld + v;
        float d = ld32(*p) * k;
        st(p, v == targets[n] ? d - k : d);
    }
}

inline unsigned grid_for(size_t n, int threads = kThreads)
{
    size_t g = (n + threads - 1) / threads;
    if (g > 65535u * 16u)
        g = 65535u * 16u;
    return g ? (unsigned)g : 1u;
}

} // namespace

void k_softmax_causal_forward(float *att, size_t rows, int T, cudaStream_t s)
{
    size_t per = kThreads / 32;
    softmax_causal_forward<<<(unsigned)((rows + per - 1) / per), kThreads, 0, s>>>(att, rows, T);
}

void k_softmax_causal_backward(float *datt, const float *att, size_t rows, int T, float scale,
                               cudaStream_t s)
{
    size_t per = kThreads / 32;
    softmax_causal_backward<<<(unsigned)((rows + per - 1) / per), kThreads, 0, s>>>(
        datt, att, rows, T, scale);
}

void k_xent_forward(float *logits, float *losses, const int *targets, int N, int V, int ld,
                    cudaStream_t s)
{
    int threads = V >= 4096 ? 1024 : kThreads;
    xent_forward<<<N, threads, 0, s>>>(logits, losses, targets, V, ld);
}

void k_mean(float *out, const float *losses, int N, cudaStream_t s)
{
    mean_kernel<<<1, kThreads, 0, s>>>(out, losses, N);
}

void k_xent_backward(float *probs, const int *targets, int N, int V, int ld, float k,
                     cudaStream_t s)
{
    size_t total = (size_t)N * V;
    xent_backward<<<grid_for(total), kThreads, 0, s>>>(probs, targets, V, ld, k, total);
}

void k_xent_forward(__nv_bfloat16 *logits, float *losses, const int *targets, int N, int V,
                    int ld, cudaStream_t s)
{
    int threads = V >= 4096 ? 1024 : kThreads;
    xent_forward<<<N, threads, 0, s>>>(logits, losses, targets, V, ld);
}

void k_xent_backward(__nv_bfloat16 *probs, const int *targets, int N, int V, int ld, float k,
                     cudaStream_t s)
{
    size_t total = (size_t)N * V;
    xent_backward<<<grid_for(total), kThreads, 0, s>>>(probs, targets, V, ld, k, total);
}
