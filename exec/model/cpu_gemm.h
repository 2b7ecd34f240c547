/* Single-precision matrix multiply for the CPU executor: portable SIMD
 * (GCC/Clang vector extensions) with register tiles and cache blocking.
 * Deterministic: each element of C is its old value plus the products in
 * ascending k, in that order, whatever the sizes, tiling or blocking. */
#ifndef PP_CPU_GEMM_H
#define PP_CPU_GEMM_H

#include <stddef.h>

/* C[M][N] += A(i,k) B[K][N], with A(i,k) = A[i*ars + k*acs]: A is row-major
 * [M][K] with (ars, acs) = (K, 1), or read transposed from [K][M] with
 * (1, M). B and C are row-major and contiguous. */
void pp_gemm_acc(float *restrict C, const float *restrict A, size_t ars, size_t acs,
                 const float *restrict B, int M, int N, int K);

/* dst[cols][rows] = src[rows][cols]. */
void pp_transpose(float *restrict dst, const float *restrict src, int rows, int cols);

#endif
