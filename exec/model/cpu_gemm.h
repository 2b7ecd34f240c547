/* Single-precision matrix products for the CPU executor.
 *
 * pp_mm_*: the three products a linear layer needs, split by rows of C
 * over a stage's thread team (cpu_pool.h). Each part is one single-threaded
 * call to OpenBLAS's cblas_sgemm where the build found OpenBLAS
 * (PPSCHED_HAVE_BLAS), else to the own kernel below. Deterministic for a
 * fixed team size: every element of C is computed by one part.
 *
 * pp_gemm_acc: the own kernel, portable SIMD (GCC/Clang vector extensions)
 * with register tiles and cache blocking: each element of C is its old
 * value plus the products in ascending k, in that order, whatever the
 * sizes, tiling or blocking. The fallback without OpenBLAS, and the
 * reference the tests hold the BLAS path to. */
#ifndef PP_CPU_GEMM_H
#define PP_CPU_GEMM_H

#include <stddef.h>

#include "cpu_pool.h"

/* C[M][N] = A[M][K] B[N][K]^T, plus the old C when accumulate, plus bias[N]
 * in every row when bias is not NULL (each part fills its rows with the
 * bias first, then adds the product). bt is K*N floats of scratch for the
 * own kernel (unused with OpenBLAS). */
void pp_mm_abt(pp_pool *pool, float *C, const float *A, const float *B, const float *bias,
               float *bt, int M, int N, int K, int accumulate);
/* C[M][N] = A[M][K] B[K][N], plus the old C when accumulate. */
void pp_mm_ab(pp_pool *pool, float *C, const float *A, const float *B, int M, int N, int K,
              int accumulate);
/* C[M][N] = A[K][M]^T B[K][N], plus the old C when accumulate. */
void pp_mm_atb(pp_pool *pool, float *C, const float *A, const float *B, int M, int N, int K,
               int accumulate);

/* One small product on this thread, any strides (row-major):
 * C[M][N] = alpha op(A) op(B) + beta C, op(X) = X or X^T as tA/tB say
 * (A is [M][K], or [K][M] when tA; B is [K][N], or [N][K] when tB).
 * cblas_sgemm with OpenBLAS; a plain loop (ascending k) without it. */
void pp_sgemm_small(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc);

/* "OpenBLAS" or "own kernel": what pp_mm_* run on in this build. */
const char *pp_mm_engine(void);

/* C[M][N] += A(i,k) B[K][N], with A(i,k) = A[i*ars + k*acs]: A is row-major
 * [M][K] with (ars, acs) = (K, 1), or read transposed from [K][M] with
 * (1, M). B and C are row-major and contiguous. */
void pp_gemm_acc(float *restrict C, const float *restrict A, size_t ars, size_t acs,
                 const float *restrict B, int M, int N, int K);

/* dst[cols][rows] = src[rows][cols]. */
void pp_transpose(float *restrict dst, const float *restrict src, int rows, int cols);

#endif
