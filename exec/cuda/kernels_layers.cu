/* Elementwise and per-row kernels of the CUDA backend: embeddings,
 * LayerNorm, bias and residual, GELU (the optimizers' are in
 * kernels_optim.cu). fp32 arithmetic, the same formulas as gpt_cpu.c;
 * on bf16 storage LayerNorm writes its output and reads its output's
 * gradient in bf16 (templates whose fp32 instances are the fp32 path). */
#include "kernels.cuh"

#include <cstdint>

namespace {

constexpr int kThreads = 256;

inline unsigned grid_for(size_t n, int threads = kThreads)
{
    size_t g = (n + threads - 1) / threads;
    if (g > 65535u * 16u)
        g = 65535u * 16u; /* grid-stride loops cover the rest */
    return g ? (unsigned)g : 1u;
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void embed_forward(float *x, const int *tokens, const float *wte, const float *wpe,
                              int T, int C, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / C;
        int c = (int)(i % C), t = (int)(n % T);
        x[i] = wte[(size_t)tokens[n] * C + c] + wpe[(size_t)t * C + c];
    }
}

__global__ void embed_backward_wpe(float *dwpe, const float *dx, int B, int T, int C)
{
    size_t total = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int b = 0; b < B; b++)
            s += dx[(size_t)b * total + i];
        dwpe[i] += s;
    }
}

/* One block per segment of equal tokens. */
__global__ void embed_backward_wte(float *dwte, const float *dx, const int *perm,
                                   const int *seg_start, const int *seg_token, const int *nseg,
                                   int C)
{
    int k = blockIdx.x;
    if (k >= *nseg)
        return;
    int lo = seg_start[k], hi = seg_start[k + 1];
    float *dst = dwte + (size_t)seg_token[k] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0.0f;
        for (int p = lo; p < hi; p++)
            s += dx[(size_t)perm[p] * C + c];
        dst[c] += s;
    }
}

/* One warp per row. */
template <typename To>
__global__ void layernorm_forward(To *out, float *mean, float *rstd, const float *x,
                                  const float *w, const float *b, int N, int C)
{
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= N)
        return;
    const float *xr = x + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32)
        s += xr[c];
    float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = xr[c] - m;
        v += d * d;
    }
    float rs = 1.0f / sqrtf(warp_sum(v) / C + PP_LN_EPS);
    To *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32)
        st(o + c, (xr[c] - m) * rs * w[c] + b[c]);
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

template <typename Td>
__global__ void layernorm_backward_input(float *dx, const float *dres, const Td *dout,
                                         const float *x, const float *mean, const float *rstd,
                                         const float *w, int N, int C)
{
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= N)
        return;
    size_t base = (size_t)row * C;
    const float *xr = x + base;
    const Td *dr = dout + base;
    float m = mean[row], rs = rstd[row], s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float dxhat = ld32(dr[c]) * w[c];
        s1 += dxhat;
        s2 += dxhat * (xr[c] - m) * rs;
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    for (int c = lane; c < C; c += 32) {
        float xhat = (xr[c] - m) * rs;
        float g = rs * (ld32(dr[c]) * w[c] - s1 - xhat * s2);
        dx[base + c] = (dres ? dres[base + c] : 0.0f) + g;
    }
}

template <typename Td>
__global__ void layernorm_dout_xhat(float *out, const Td *dout, const float *x,
                                    const float *mean, const float *rstd, int C, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / C;
        out[i] = ld32(dout[i]) * ((x[i] - mean[n]) * rstd[n]);
    }
}

__global__ void bias_residual(float *out, const float *bias, const float *res, int OC,
                              size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = out[i] + bias[i % OC];
        out[i] = res ? v + res[i] : v;
    }
}

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

__global__ void gelu_forward(float *out, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float xi = x[i];
        float u = GELU_K * (xi + GELU_A * xi * xi * xi);
        out[i] = 0.5f * xi * (1.0f + tanhf(u));
    }
}

__global__ void gelu_backward(float *dx, const float *x, const float *dout, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float xi = x[i];
        float t = tanhf(GELU_K * (xi + GELU_A * xi * xi * xi));
        float du = GELU_K * (1.0f + 3.0f * GELU_A * xi * xi);
        dx[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * xi * (1.0f - t * t) * du);
    }
}

__global__ void fill_uniform(float *x, size_t n, unsigned long long seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned long long z = seed + i * 0x9E3779B97F4A7C15ull; /* splitmix64 */
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        x[i] = (float)(z >> 40) * 0x1.0p-23f - 1.0f;
    }
}

__global__ void fill(float *x, float v, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = v;
}

} // namespace

void k_embed_forward(float *x, const int *tokens, const float *wte, const float *wpe, int B,
                     int T, int C, cudaStream_t s)
{
    size_t total = (size_t)B * T * C;
    embed_forward<<<grid_for(total), kThreads, 0, s>>>(x, tokens, wte, wpe, T, C, total);
}

void k_embed_backward_wpe(float *dwpe, const float *dx, int B, int T, int C, cudaStream_t s)
{
    embed_backward_wpe<<<grid_for((size_t)T * C), kThreads, 0, s>>>(dwpe, dx, B, T, C);
}

void k_embed_backward_wte(float *dwte, const float *dx, const int *perm, const int *seg_start,
                          const int *seg_token, const int *nseg, int N, int C, cudaStream_t s)
{
    int threads = C < 256 ? 32 * ((C + 31) / 32) : 256;
    embed_backward_wte<<<N, threads, 0, s>>>(dwte, dx, perm, seg_start, seg_token, nseg, C);
}

template <typename To>
static void layernorm_forward_launch(To *out, float *mean, float *rstd, const float *x,
                                     const float *w, const float *b, int N, int C,
                                     cudaStream_t s)
{
    int rows_per_block = kThreads / 32;
    layernorm_forward<<<(N + rows_per_block - 1) / rows_per_block, kThreads, 0, s>>>(
        out, mean, rstd, x, w, b, N, C);
}

void k_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                         const float *b, int N, int C, cudaStream_t s)
{
    layernorm_forward_launch(out, mean, rstd, x, w, b, N, C, s);
}

void k_layernorm_forward(__nv_bfloat16 *out, float *mean, float *rstd, const float *x,
                         const float *w, const float *b, int N, int C, cudaStream_t s)
{
    layernorm_forward_launch(out, mean, rstd, x, w, b, N, C, s);
}

template <typename Td>
static void layernorm_backward_launch(float *dx, const float *dres, const Td *dout,
                                      const float *x, const float *mean, const float *rstd,
                                      const float *w, int N, int C, cudaStream_t s)
{
    int rows_per_block = kThreads / 32;
    layernorm_backward_input<<<(N + rows_per_block - 1) / rows_per_block, kThreads, 0, s>>>(
        dx, dres, dout, x, mean, rstd, w, N, C);
}

void k_layernorm_backward_input(float *dx, const float *dres, const float *dout, const float *x,
                                const float *mean, const float *rstd, const float *w, int N,
                                int C, cudaStream_t s)
{
    layernorm_backward_launch(dx, dres, dout, x, mean, rstd, w, N, C, s);
}

void k_layernorm_backward_input(float *dx, const float *dres, const __nv_bfloat16 *dout,
                                const float *x, const float *mean, const float *rstd,
                                const float *w, int N, int C, cudaStream_t s)
{
    layernorm_backward_launch(dx, dres, dout, x, mean, rstd, w, N, C, s);
}

void k_layernorm_dout_xhat(float *out, const float *dout, const float *x, const float *mean,
                           const float *rstd, int N, int C, cudaStream_t s)
{
    size_t total = (size_t)N * C;
    layernorm_dout_xhat<<<grid_for(total), kThreads, 0, s>>>(out, dout, x, mean, rstd, C,
                                                             total);
}

void k_layernorm_dout_xhat(float *out, const __nv_bfloat16 *dout, const float *x,
                           const float *mean, const float *rstd, int N, int C, cudaStream_t s)
{
    size_t total = (size_t)N * C;
    layernorm_dout_xhat<<<grid_for(total), kThreads, 0, s>>>(out, dout, x, mean, rstd, C,
                                                             total);
}

void k_bias_residual(float *out, const float *bias, const float *res, int N, int OC,
                     cudaStream_t s)
{
    size_t total = (size_t)N * OC;
    bias_residual<<<grid_for(total), kThreads, 0, s>>>(out, bias, res, OC, total);
}

void k_gelu_forward(float *out, const float *x, size_t n, cudaStream_t s)
{
    gelu_forward<<<grid_for(n), kThreads, 0, s>>>(out, x, n);
}

void k_gelu_backward(float *dx, const float *x, const float *dout, size_t n, cudaStream_t s)
{
    gelu_backward<<<grid_for(n), kThreads, 0, s>>>(dx, x, dout, n);
}

void k_fill_uniform(float *x, size_t n, unsigned long long seed, cudaStream_t s)
{
    fill_uniform<<<grid_for(n), kThreads, 0, s>>>(x, n, seed);
}

void k_fill(float *x, float v, size_t n, cudaStream_t s)
{
    fill<<<grid_for(n), kThreads, 0, s>>>(x, v, n);
}
