/* Small dense linear algebra for the optimizer tests (test_optimizers.c
 * on the CPU, test_cuda.c against the GPU): seeded normal numbers, random
 * orthogonal bases, and the check that a basis is the ordered eigenbasis
 * of a covariance. In double, written for clarity, not speed. */
#ifndef PP_TEST_LINALG_H
#define PP_TEST_LINALG_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* A seeded standard normal (Box-Muller over a 64-bit LCG). */
static inline double normal(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    double u1 = ((*state >> 11) + 1.0) / 9007199254740994.0;
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    double u2 = (*state >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* A seeded random orthogonal k x k matrix (orthonormal columns, row-major):
 * Gram-Schmidt, each column twice, in double. */
static inline void random_orthogonal(float *q, int k, uint64_t seed)
{
    double *a = malloc((size_t)k * k * sizeof *a);
    for (size_t i = 0; i < (size_t)k * k; i++)
        a[i] = normal(&seed);
    for (int j = 0; j < k; j++) {
        for (int pass = 0; pass < 2; pass++)
            for (int p = 0; p < j; p++) {
                double d = 0;
                for (int i = 0; i < k; i++)
                    d += a[i * k + p] * a[i * k + j];
                for (int i = 0; i < k; i++)
                    a[i * k + j] -= d * a[i * k + p];
            }
        double norm = 0;
        for (int i = 0; i < k; i++)
            norm += a[i * k + j] * a[i * k + j];
        for (int i = 0; i < k; i++)
            a[i * k + j] /= sqrt(norm);
    }
    for (size_t i = 0; i < (size_t)k * k; i++)
        q[i] = (float)a[i];
    free(a);
}

/* Q^T Q - I and the off-diagonal of Q^T A Q (against its largest
 * diagonal element), for the basis q of the k x k covariance a; whether
 * the diagonal ascends, and how far q is from the identity. */
typedef struct {
    double orth, offdiag, from_identity;
    int ascending;
} basis_check;

static inline basis_check check_basis(const float *q, const float *a, int k)
{
    basis_check b = {0, 0, 0, 1};
    double *aq = malloc((size_t)k * k * sizeof *aq), *ds = malloc((size_t)k * sizeof *ds);
    double diag_max = 0;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double acc = 0;
            for (int l = 0; l < k; l++)
                acc += (double)a[i * k + l] * q[l * k + j];
            aq[i * k + j] = acc; /* A Q */
        }
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double qq = 0, d = 0;
            for (int l = 0; l < k; l++) {
                qq += (double)q[l * k + i] * q[l * k + j];
                d += (double)q[l * k + i] * aq[l * k + j];
            }
            b.orth = fmax(b.orth, fabs(qq - (i == j)));
            b.from_identity = fmax(b.from_identity, fabs(q[i * k + j] - (i == j)));
            if (i == j) {
                diag_max = fmax(diag_max, fabs(d));
                ds[i] = d;
            } else {
                b.offdiag = fmax(b.offdiag, fabs(d));
            }
        }
    b.offdiag /= diag_max > 0 ? diag_max : 1;
    /* ascending up to rounding, relative to the largest: the covariance
     * of a few gradients has many eigenvalues that are zero but for it */
    for (int i = 1; i < k; i++)
        b.ascending &= ds[i] >= ds[i - 1] - 1e-6 * diag_max;
    free(aq);
    free(ds);
    return b;
}

#endif
