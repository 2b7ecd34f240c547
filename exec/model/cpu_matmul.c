/* pp_mm_* of cpu_gemm.h: a linear layer's products, split by rows of C
 * over the stage's team, each part one single-threaded GEMM (OpenBLAS, or
 * the own kernel of cpu_gemm.c where the build has no OpenBLAS). Splitting
 * ourselves, rather than letting OpenBLAS thread, gives every stage its own
 * thread count (OpenBLAS's is one global setting) and keeps stages that
 * share a machine from fighting over its threads. */
#include "cpu_gemm.h"

#include <pthread.h>
#include <string.h>

#ifdef PPSCHED_HAVE_BLAS
#include <cblas.h>

/* OpenBLAS's own threads stay idle: every call runs on its caller. */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_threaded(void)
{
    openblas_set_num_threads(1);
}
#endif

typedef enum { AB, ABT, ATB } mm_kind;

typedef struct {
    mm_kind kind;
    float *C;
    const float *A, *B, *bias;
    int M, N, K, accumulate;
} mm_job;

/* Rows [lo, hi) of C. */
static void mm_rows(void *ctx, int lo, int hi, int part)
{
    (void)part;
    const mm_job *j = ctx;
    int m = hi - lo, N = j->N, K = j->K, accumulate = j->accumulate;
    float *C = j->C + (size_t)lo * N;
    if (j->bias) {
        for (int i = 0; i < m; i++)
            memcpy(C + (size_t)i * N, j->bias, (size_t)N * sizeof *C);
        accumulate = 1;
    }
#ifdef PPSCHED_HAVE_BLAS
    float beta = accumulate ? 1.0f : 0.0f;
    switch (j->kind) {
    case AB:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, N, K, 1.0f,
                    j->A + (size_t)lo * K, K, j->B, N, beta, C, N);
        break;
    case ABT:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, N, K, 1.0f,
                    j->A + (size_t)lo * K, K, j->B, K, beta, C, N);
        break;
    case ATB:
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, N, K, 1.0f, j->A + lo, j->M,
                    j->B, N, beta, C, N);
        break;
    }
#else
    if (!accumulate)
        memset(C, 0, (size_t)m * N * sizeof *C);
    if (j->kind == ATB)
        pp_gemm_acc(C, j->A + lo, 1, (size_t)j->M, j->B, m, N, K);
    else /* ABT: B holds the transposed matrix by now */
        pp_gemm_acc(C, j->A + (size_t)lo * K, (size_t)K, 1, j->B, m, N, K);
#endif
}

static void mm_run(pp_pool *pool, mm_job *j)
{
#ifdef PPSCHED_HAVE_BLAS
    pthread_once(&blas_once, blas_single_threaded);
#endif
    pp_pool_run(pool, j->M, mm_rows, j);
}

void pp_mm_ab(pp_pool *pool, float *C, const float *A, const float *B, int M, int N, int K,
              int accumulate)
{
    mm_job j = {AB, C, A, B, NULL, M, N, K, accumulate};
    mm_run(pool, &j);
}

void pp_mm_abt(pp_pool *pool, float *C, const float *A, const float *B, const float *bias,
               float *bt, int M, int N, int K, int accumulate)
{
#ifdef PPSCHED_HAVE_BLAS
    (void)bt;
    mm_job j = {ABT, C, A, B, bias, M, N, K, accumulate};
#else
    pp_transpose(bt, B, N, K); /* B[N][K] -> bt[K][N] */
    mm_job j = {ABT, C, A, bt, bias, M, N, K, accumulate};
#endif
    mm_run(pool, &j);
}

void pp_mm_atb(pp_pool *pool, float *C, const float *A, const float *B, int M, int N, int K,
               int accumulate)
{
    mm_job j = {ATB, C, A, B, NULL, M, N, K, accumulate};
    mm_run(pool, &j);
}

void pp_sgemm_small(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc)
{
#ifdef PPSCHED_HAVE_BLAS
    pthread_once(&blas_once, blas_single_threaded);
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M,
                N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc += (tA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                       (tB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            float *c = &C[(size_t)i * ldc + j];
            *c = alpha * acc + (beta != 0.0f ? beta * *c : 0.0f);
        }
#endif
}

const char *pp_mm_engine(void)
{
#ifdef PPSCHED_HAVE_BLAS
    return "OpenBLAS";
#else
    return "own kernel";
#endif
}
