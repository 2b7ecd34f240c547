/* The optimizers' kernels (cuda_optimizer.cu, cuda_muon.cu,
 * cuda_rotated.cu): sums of squares, AdamW with its per-tensor state table
 * and the delay correction, Muon's elementwise parts around the
 * Newton-Schulz products, and adamw-rotated's around its basis changes and
 * eigensolver. fp32 throughout, the formulas of adamw.c, cpu_optim.c and
 * cpu_rotated.c; also the bf16 conversions that Muon's products and the
 * cuDNN attention (cuda_attention_cudnn.cu) share. */
#include "kernels.cuh"

namespace {

constexpr int kThreads = 256;

inline unsigned grid_for(size_t n)
{
    size_t g = (n + kThreads - 1) / kThreads;
    if (g > 65535u * 16u)
        g = 65535u * 16u; /* grid-stride loops cover the rest */
    return g ? (unsigned)g : 1u;
}

#define GRID_STRIDE(i, n)                                                                     \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                   \
         i += (size_t)gridDim.x * blockDim.x)

/* partial[b]: block b's grid-stride share of sum x[i]^2, in double. The
 * grid is fixed (PP_SUMSQ_BLOCKS x kThreads) whatever the device or
 * partition, so the same vector always sums in the same order. */
__global__ void sumsq_partial(const float *x, size_t n, double *partial)
{
    __shared__ double acc[kThreads];
    double s = 0.0;
    GRID_STRIDE(i, n) {
        s += (double)x[i] * x[i];
    }
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int k = kThreads / 2; k > 0; k /= 2) {
        if ((int)threadIdx.x < k)
            acc[threadIdx.x] += acc[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partial[blockIdx.x] = acc[0];
}

__global__ void scale(float *x, float k, size_t n)
{
    GRID_STRIDE(i, n) {
        x[i] *= k;
    }
}

/* One thread: the partial sums in block order (as the host adds the
 * gradient norm's), then cpu_optim.c's 1 / (||x|| + eps) in double. */
__global__ void inv_norm(float *inv, const double *partial, double eps)
{
    double s = 0.0;
    for (int b = 0; b < PP_SUMSQ_BLOCKS; b++)
        s += partial[b];
    *inv = (float)(1.0 / (sqrt(s) + eps));
}

__global__ void adamw(float *w, const float *g, float *m, float *v, float *prev, size_t n,
                      const unsigned long long *tstart, const unsigned long long *state_at,
                      const unsigned char *decay, int nt, pp_adamw_args a)
{
    GRID_STRIDE(i, n) {
        /* The tensor holding i: the last k with tstart[k] <= i. */
        int lo = 0, hi = nt - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (tstart[mid] <= i)
                lo = mid;
            else
                hi = mid - 1;
        }
        if (state_at[lo] == PP_NO_STATE)
            continue; /* Muon's */
        size_t j = state_at[lo] + (i - tstart[lo]); /* its moments, packed */
        float wdk = decay[lo] ? a.wd : 0.0f;
        float gi = g[i];
        float mi = a.beta1 * m[j] + (1.0f - a.beta1) * gi;
        float vi = a.beta2 * v[j] + (1.0f - a.beta2) * gi * gi;
        m[j] = mi;
        v[j] = vi;
        float mhat = mi / a.c1, vhat = vi / a.c2;
        float p = w[i];
        if (!prev) {
            w[i] = p - a.lr * (mhat / (sqrtf(vhat) + a.eps) + wdk * p);
            continue;
        }
        /* optim.h's pp_delay_correct */
        float u = a.lr * (mhat / (sqrtf(vhat) + a.eps) + wdk * p);
        float applied = u + a.delay_beta * (u - prev[i]);
        prev[i] = u;
        w[i] = p - applied;
    }
}

__global__ void muon_momentum(float *mom, float *x, const float *g, float mu, size_t n)
{
    GRID_STRIDE(i, n) {
        float mi = mu * mom[i] + (1.0f - mu) * g[i];
        mom[i] = mi;
        x[i] = mu * mi + (1.0f - mu) * g[i]; /* Nesterov */
    }
}

/* X [r][c] = x [rows][cols] * inv, transposed when tall (r = cols, c = rows). */
__global__ void muon_load(float *X, const float *x, const float *inv, int rows, int cols,
                          bool tall)
{
    size_t n = (size_t)rows * cols, c = tall ? rows : cols;
    float k = *inv;
    GRID_STRIDE(j, n) {
        size_t a = j / c, b = j % c; /* X[a][b] */
        X[j] = x[tall ? b * cols + a : j] * k;
    }
}

/* w [rows][cols] -= lr (scale O + wd w), O read from X [r][c] (transposed
 * back when tall), through the delay correction when prev. */
__global__ void matrix_apply(float *w, float *prev, const float *X, int rows, int cols, bool tall,
                           float lr, float scl, float wd, float beta)
{
    size_t n = (size_t)rows * cols;
    GRID_STRIDE(i, n) {
        size_t row = i / cols, col = i % cols;
        float o = X[tall ? col * rows + row : i];
        float p = w[i];
        float u = lr * (scl * o + wd * p);
        if (prev) {
            float applied = u + beta * (u - prev[i]);
            prev[i] = u;
            u = applied;
        }
        w[i] = p - u;
    }
}

__global__ void to_bf16(__nv_bfloat16 *dst, const float *src, size_t n)
{
    GRID_STRIDE(i, n) {
        dst[i] = __float2bfloat16_rn(src[i]);
    }
}

__global__ void from_bf16(float *dst, const __nv_bfloat16 *src, size_t n)
{
    GRID_STRIDE(i, n) {
        dst[i] = __bfloat162float(src[i]);
    }
}

/* AdamW's first moment, its expression (adamw.c). */
__global__ void adam_moment(float *m, const float *g, float b1, size_t n)
{
    GRID_STRIDE(i, n) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
    }
}

/* cpu_rotated.c's Adam in the basis, term for term; u may be gt. */
__global__ void rotated_adam(float *u, float *v, const float *gt, const float *mt, float b2,
                             float c1, float c2, float eps, size_t n)
{
    GRID_STRIDE(i, n) {
        float g = gt[i];
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        v[i] = vi;
        float mhat = mt[i] / c1, vhat = vi / c2;
        u[i] = mhat / (sqrtf(vhat) + eps);
    }
}

__global__ void flag_nonfinite(int *bad, const float *x, size_t n)
{
    GRID_STRIDE(i, n) {
        if (!isfinite(x[i]))
            *bad = 1; /* every writer writes the same value */
    }
}

__global__ void identity(float *q, int k)
{
    size_t kk = (size_t)k * k;
    GRID_STRIDE(i, kk) {
        q[i] = i / k == i % k ? 1.0f : 0.0f;
    }
}

__global__ void copy_or_identity(float *a, const float *x, int k, const int *bad)
{
    size_t kk = (size_t)k * k;
    bool id = *bad != 0;
    GRID_STRIDE(i, kk) {
        a[i] = id ? (i / k == i % k ? 1.0f : 0.0f) : x[i];
    }
}

/* q[i][j] = a[j][i]: column j of q is column j of the column-major a. */
__global__ void take_basis(float *q, const float *a, int k, const int *bad, const int *info)
{
    if (*bad || *info != 0)
        return;
    size_t kk = (size_t)k * k;
    GRID_STRIDE(i, kk) {
        size_t row = i / k, col = i % k;
        q[i] = a[col * k + row];
    }
}

} // namespace

void k_sumsq_partial(const float *x, size_t n, double *partial, cudaStream_t s)
{
    sumsq_partial<<<PP_SUMSQ_BLOCKS, kThreads, 0, s>>>(x, n, partial);
}

void k_scale(float *x, float k, size_t n, cudaStream_t s)
{
    scale<<<grid_for(n), kThreads, 0, s>>>(x, k, n);
}

void k_inv_norm(float *inv, const double *partial, double eps, cudaStream_t s)
{
    inv_norm<<<1, 1, 0, s>>>(inv, partial, eps);
}

void k_adamw(float *w, const float *g, float *m, float *v, float *prev, size_t n,
             const unsigned long long *tstart, const unsigned long long *state_at,
             const unsigned char *decay, int ntensors, const pp_adamw_args *a, cudaStream_t s)
{
    adamw<<<grid_for(n), kThreads, 0, s>>>(w, g, m, v, prev, n, tstart, state_at, decay,
                                           ntensors, *a);
}

void k_muon_momentum(float *mom, float *x, const float *g, float mu, size_t n, cudaStream_t s)
{
    muon_momentum<<<grid_for(n), kThreads, 0, s>>>(mom, x, g, mu, n);
}

void k_muon_load(float *X, const float *x, const float *inv, int rows, int cols, cudaStream_t s)
{
    muon_load<<<grid_for((size_t)rows * cols), kThreads, 0, s>>>(X, x, inv, rows, cols,
                                                                 rows > cols);
}

void k_matrix_apply(float *w, float *prev, const float *X, int rows, int cols, bool transposed,
                    float lr, float scale, float wd, float beta, cudaStream_t s)
{
    matrix_apply<<<grid_for((size_t)rows * cols), kThreads, 0, s>>>(w, prev, X, rows, cols,
                                                                    transposed, lr, scale, wd,
                                                                    beta);
}

void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n, cudaStream_t s)
{
    to_bf16<<<grid_for(n), kThreads, 0, s>>>(dst, src, n);
}

void k_from_bf16(float *dst, const __nv_bfloat16 *src, size_t n, cudaStream_t s)
{
    from_bf16<<<grid_for(n), kThreads, 0, s>>>(dst, src, n);
}

void k_adam_moment(float *m, const float *g, float beta1, size_t n, cudaStream_t s)
{
    adam_moment<<<grid_for(n), kThreads, 0, s>>>(m, g, beta1, n);
}

void k_rotated_adam(float *u, float *v, const float *gt, const float *mt, float beta2, float c1,
                    float c2, float eps, size_t n, cudaStream_t s)
{
    rotated_adam<<<grid_for(n), kThreads, 0, s>>>(u, v, gt, mt, beta2, c1, c2, eps, n);
}

void k_flag_nonfinite(int *bad, const float *x, size_t n, cudaStream_t s)
{
    flag_nonfinite<<<grid_for(n), kThreads, 0, s>>>(bad, x, n);
}

void k_copy_or_identity(float *a, const float *x, int k, const int *bad, cudaStream_t s)
{
    copy_or_identity<<<grid_for((size_t)k * k), kThreads, 0, s>>>(a, x, k, bad);
}

void k_take_basis(float *q, const float *a, int k, const int *bad, const int *info,
                  cudaStream_t s)
{
    take_basis<<<grid_for((size_t)k * k), kThreads, 0, s>>>(q, a, k, bad, info);
}

void k_identity(float *q, int k, cudaStream_t s)
{
    identity<<<grid_for((size_t)k * k), kThreads, 0, s>>>(q, k);
}
