/* Muon on the device: cpu_optim.h's update of every hidden matrix (it has
 * the formulas and their sources), on the stage's stream. Momentum, the
 * Frobenius norm and the (un)transposing are kernels_optim.cu's; the five
 * quintic Newton-Schulz steps are cuBLAS products.
 *
 * The matrices are row-major C arrays and cuBLAS is column-major: a
 * row-major [r][c] buffer read column-major is its transpose, c x r with
 * leading dimension c. So the row-major product C = A B is computed as the
 * column-major C^T = B^T A^T, operands swapped, and X X^T (row-major) as
 * the column-major (X^T)^T (X^T), the first operand transposed. Each call
 * below says its shapes.
 *
 * Arithmetic: the stage's (PPSCHED_CUDA_MATH). fp32 is the parity mode
 * (cuBLAS fp32 products: the CPU's numbers up to summation order); tf32
 * runs the same calls on TF32 tensor cores; bf16 rounds each product's
 * operands to bf16 copies and multiplies them with fp32 accumulation into
 * an fp32 result, as Muon's reference implementation does, while X and the
 * Gram matrices stay fp32 between the products. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <utility>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

/* cpu_optim.c's coefficients, step count and epsilon (cpu_optim.h says
 * whose they are); kept equal to the CPU's so that the backends agree. */
constexpr float kNsA = 3.4445f, kNsB = -4.7750f, kNsC = 2.0315f;
constexpr int kNsSteps = 5;
constexpr double kNsEps = 1e-7;

void muon_scratch_floats(int rows, int cols, size_t *big, size_t *gram)
{
    size_t k = (size_t)(rows < cols ? rows : cols);
    *big = (size_t)rows * cols;
    *gram = k * k;
}

bool muon_bf16(const cuda_stage *c)
{
    return c->compute == CUBLAS_COMPUTE_32F_FAST_16BF;
}

/* Column-major C [m][n] = alpha op(A) B + beta C, fp32 C. Operands are
 * fp32 (the stage's compute type) or, in bf16 math, bf16 copies multiplied
 * with fp32 accumulation. */
static void ns_gemm(cuda_stage *c, cublasOperation_t ta, int m, int n, int k, float alpha,
                    const void *A, int lda, const void *B, int ldb, float beta, float *Cm,
                    int ldc)
{
    bool bf = muon_bf16(c);
    cudaDataType t = bf ? CUDA_R_16BF : CUDA_R_32F;
    ckb(c,
        cublasGemmEx(c->blas, ta, CUBLAS_OP_N, m, n, k, &alpha, A, t, lda, B, t, ldb, &beta, Cm,
                     CUDA_R_32F, ldc, bf ? CUBLAS_COMPUTE_32F : c->compute,
                     CUBLAS_GEMM_DEFAULT),
        "Newton-Schulz cublasGemmEx");
}

/* The bf16 copy of an fp32 operand in bf16 math, else the operand itself. */
static const void *operand(cuda_stage *c, const float *x, __nv_bfloat16 *h, size_t n)
{
    if (!muon_bf16(c))
        return x;
    k_to_bf16(h, x, n, c->stream);
    check_launch(c, "Newton-Schulz bf16 copy");
    return h;
}

/* One step on X, row-major [r][cc] with r <= cc, into Y:
 *   A = X X^T,  B = b A + c A A,  Y = a X + B X. */
static void ns_step(cuda_stage *c, const float *X, float *Y, int r, int cc)
{
    cuda_optim &o = c->opt;
    size_t n = (size_t)r * cc, rr = (size_t)r * r;
    float *A = o.ns_a, *B = o.ns_b;
    const void *Xo = operand(c, X, o.ns_xh, n);
    /* A [r][r] = X X^T. Read column-major, X's buffer is X^T (cc x r, ld
     * cc), and X X^T = (X^T)^T (X^T): op(A) = transpose of the cc x r
     * buffer (m = r, k = cc, lda = cc), op(B) = the buffer (k = cc, n = r,
     * ldb = cc); C is r x r (ldc = r) and X X^T is symmetric, so either
     * reading of A's buffer is A (each entry one rounding of its dot product). */
    ns_gemm(c, CUBLAS_OP_T, r, r, cc, 1.0f, Xo, cc, Xo, cc, 0.0f, A, r);
    const void *Ao = operand(c, A, o.ns_ah, rr);
    /* B [r][r] = c A A + b A: B starts as a copy of A (the beta term).
     * Row-major B = A A is column-major B^T = A^T A^T, and A's buffer read
     * column-major is A^T: both operands the buffer as is (m = n = k = r,
     * lda = ldb = ldc = r). */
    ck(c, cudaMemcpyAsync(B, A, rr * sizeof(float), cudaMemcpyDeviceToDevice, c->stream),
       "Newton-Schulz copy");
    ns_gemm(c, CUBLAS_OP_N, r, r, r, kNsC, Ao, r, Ao, r, kNsB, B, r);
    const void *Bo = operand(c, B, o.ns_bh, rr);
    /* Y [r][cc] = B X + a X: Y starts as a copy of X. Row-major Y = B X is
     * column-major Y^T = X^T B^T: op(A) = X's buffer (cc x r, m = cc, k =
     * r, lda = cc), op(B) = B's buffer, read as B^T (r x r, n = r, ldb =
     * r); C = Y's buffer, cc x r (ldc = cc). */
    ck(c, cudaMemcpyAsync(Y, X, n * sizeof(float), cudaMemcpyDeviceToDevice, c->stream),
       "Newton-Schulz copy");
    ns_gemm(c, CUBLAS_OP_N, cc, r, r, 1.0f, Xo, cc, Bo, r, kNsA, Y, cc);
}

/* Muon's update of hidden matrix t: momentum (mom, its packed part), the
 * orthogonalised update, the step on w. */
static void muon_matrix(cuda_stage *c, const pp_gpt_tensor *t, float *mom, float *w,
                        const float *grad, float lr, float wd)
{
    cuda_optim &o = c->opt;
    size_t n = t->numel;
    int rows = t->rows, cols = t->cols;
    /* the wide orientation [r][cc], r <= cc: X X^T is the smaller Gram */
    int r = rows > cols ? cols : rows, cc = rows > cols ? rows : cols;
    k_muon_momentum(mom, o.ns_y, grad + t->offset, o.cfg.muon_momentum, n, c->stream);
    k_sumsq_partial(o.ns_y, n, o.ns_part, c->stream);
    k_inv_norm(o.ns_inv, o.ns_part, kNsEps, c->stream);
    k_muon_load(o.ns_x, o.ns_y, o.ns_inv, rows, cols, c->stream);
    check_launch(c, "Muon momentum");
    float *X = o.ns_x, *Y = o.ns_y;
    for (int step = 0; step < kNsSteps; step++) {
        ns_step(c, X, Y, r, cc);
        std::swap(X, Y);
    }
    /* cpu_optim.c's scale and decay, computed the same way */
    float scale = 0.2f * sqrtf((float)cc), wdt = t->decay ? wd : 0.0f;
    k_matrix_apply(w + t->offset, o.prev ? o.prev + t->offset : nullptr, X, rows, cols,
                   rows > cols, lr, scale, wdt, o.cfg.delay_beta, c->stream);
    check_launch(c, "Muon update");
}

void muon_update(cuda_stage *c, float *w, const float *grad, float lr, float wd)
{
    cuda_optim &o = c->opt;
    for (int i = 0; i < c->g.ntensors; i++)
        if (o.mom_at[i] != PP_GPT_NO_STATE)
            muon_matrix(c, &c->g.tensors[i], o.mom + o.mom_at[i], w, grad, lr, wd);
}

} // namespace pp_cuda
