#include "cpu_gemm.h"

#include <string.h>

/* Register tile of C (MR rows by NR = NV vectors of VW floats) and cache
 * blocks, sized so the MR * NV accumulators fit the 16 vector registers of
 * SSE or AVX. 4 x 2 vectors measured best with both on the tiny model. */
#if defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
#ifndef PP_GEMM_MR
#define PP_GEMM_MR 4
#endif
#ifndef PP_GEMM_NV
#define PP_GEMM_NV 2
#endif
enum { MR = PP_GEMM_MR, NV = PP_GEMM_NV, NR = NV * VW, KC = 256, MC = 96 };

/* GCC/Clang vector extension: portable SIMD that lowers to whatever the
 * target has. memcpy gives unaligned loads and stores. */
typedef float vfloat __attribute__((vector_size(VW * sizeof(float))));

static inline vfloat vload(const float *p)
{
    vfloat v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void vstore(float *p, vfloat v)
{
    memcpy(p, &v, sizeof v);
}

/* C[MR][NR] += A(i,k) B[k][0..NR), A(i,k) = A[i*ars + k*acs]. */
static void tile_full(float *restrict C, size_t ldc, const float *restrict A, size_t ars,
                      size_t acs, const float *restrict B, size_t ldb, int kc)
{
    vfloat acc[MR][NV];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = vload(C + r * ldc + v * VW);
    for (int k = 0; k < kc; k++) {
        vfloat b[NV];
        for (int v = 0; v < NV; v++)
            b[v] = vload(B + k * ldb + v * VW);
        for (int r = 0; r < MR; r++) {
            float a = A[r * ars + k * acs];
            for (int v = 0; v < NV; v++)
                acc[r][v] += a * b[v];
        }
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            vstore(C + r * ldc + v * VW, acc[r][v]);
}

/* The same for a ragged edge tile (mr <= MR rows, nr <= NR columns). */
static void tile_edge(float *restrict C, size_t ldc, const float *restrict A, size_t ars,
                      size_t acs, const float *restrict B, size_t ldb, int kc, int mr, int nr)
{
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++) {
            float acc = C[r * ldc + j];
            for (int k = 0; k < kc; k++)
                acc += A[r * ars + k * acs] * B[k * ldb + j];
            C[r * ldc + j] = acc;
        }
}

void pp_gemm_acc(float *restrict C, const float *restrict A, size_t ars, size_t acs,
                 const float *restrict B, int M, int N, int K)
{
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = K - k0 < KC ? K - k0 : KC;
        const float *Ak = A + (size_t)k0 * acs, *Bk = B + (size_t)k0 * N;
        for (int i0 = 0; i0 < M; i0 += MC) {
            int i1 = M - i0 < MC ? M : i0 + MC;
            for (int j = 0; j < N; j += NR) {
                int nr = N - j < NR ? N - j : NR;
                for (int i = i0; i < i1; i += MR) {
                    int mr = i1 - i < MR ? i1 - i : MR;
                    float *c = C + (size_t)i * N + j;
                    const float *a = Ak + (size_t)i * ars;
                    if (mr == MR && nr == NR)
                        tile_full(c, N, a, ars, acs, Bk + j, N, kc);
                    else
                        tile_edge(c, N, a, ars, acs, Bk + j, N, kc, mr, nr);
                }
            }
        }
    }
}

void pp_transpose(float *restrict dst, const float *restrict src, int rows, int cols)
{
    enum { TB = 32 };
    for (int i0 = 0; i0 < rows; i0 += TB)
        for (int j0 = 0; j0 < cols; j0 += TB)
            for (int i = i0; i < i0 + TB && i < rows; i++)
                for (int j = j0; j < j0 + TB && j < cols; j++)
                    dst[(size_t)j * rows + i] = src[(size_t)i * cols + j];
}
