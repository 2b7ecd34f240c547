/* adamw-rotated on the CPU: Adam in a rotated basis for every hidden
 * matrix of a stage (the blocks' attention and MLP weights, as Muon's),
 * after Jung, Shin and Lee, "Mitigating Staleness in Asynchronous Pipeline
 * Parallelism via Basis Rotation" (arXiv 2602.03515, ICML 2026). The
 * other parameters take AdamW (cpu_optim.h). For a matrix W [r][c] with
 * gradient G, bases Q_L [r][r] and Q_R [c][c] (orthonormal columns), at
 * update t with AdamW's beta1, beta2, eps, weight decay wd:
 *
 *   m <- beta1 m + (1 - beta1) G              first moment, original basis
 *   L <- b L + (1 - b) S S^T,  R <- b R + (1 - b) S^T S
 *        S = G (--rotate-basis gradient) or the new m (moment);
 *        b = --rotate-beta, default beta2
 *   at t = 1 and every K-th update (--rotate-every, default 10):
 *        Q_L, Q_R <- the eigenvectors of L, R (LAPACK ssyevd, ascending
 *        eigenvalues)
 *   G~ = Q_L^T G Q_R,  m~ = Q_L^T m Q_R
 *   v <- beta2 v + (1 - beta2) G~ * G~        second moment, rotated basis
 *   U = (m~ / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
 *   W <- W - lr (Q_L U Q_R^T + wd W)
 *
 * A side that does not rotate (--rotate-sides left|right) is the identity
 * and keeps no state. The defaults are those of the paper's code
 * (github.com/LOG-postech/basis-rotation: refresh every 10 steps,
 * bilateral, covariances of the gradient with beta2 as their decay): the
 * Kronecker factors G G^T, G^T G are Shampoo's estimate of the gradient's
 * second moment, whose eigenbasis approximates the Hessian's that the
 * paper aligns Adam with. The moment source, with --rotate-beta 0, is the
 * paper's first-order variant: the singular vectors of the first moment
 * (the eigenvectors of m m^T and m^T m are its left and right ones).
 *
 * With a fixed basis this is exactly AdamW on the rotated problem
 * W' = Q_L^T W Q_R, G' = Q_L^T G Q_R: the first moment is linear in G, so
 * keeping it in the original basis and rotating it (m~) gives AdamW's
 * first moment of G' itself, and Q_L^T (wd W) Q_R = wd W'. The two differ
 * only when the basis changes: then v, kept as it is (as SOAP does; Vyas
 * et al., arXiv 2409.11321), pairs each coordinate with the eigenvector of
 * the same rank in the new basis (ssyevd sorts them), while m, kept in the
 * original basis, needs no re-projection at all. */
#ifndef PP_CPU_ROTATED_H
#define PP_CPU_ROTATED_H

#include <stddef.h>

#include "adamw.h"
#include "error.h"
#include "gpt_cpu.h"
#include "optim.h"

/* The rotation state of a stage: per rotated matrix, packed in tensor
 * order, L and Q_L [r][r] when the left side rotates, then R and Q_R
 * [c][c] when the right does (what a checkpoint saves, after AdamW's m and
 * v). Covariances start at zero, bases at the identity. */
typedef struct {
    size_t *at;     /* [ntensors]: tensor i's state in `state`, or PP_GPT_NO_STATE */
    float *state;
    size_t n;       /* floats of state */
    float *scratch; /* one matrix's rotated gradient, moment, update, products */
    /* ssyevd's workspace, sized once for the largest side */
    float *eig_a, *eig_w, *eig_work;
    int *eig_iwork;
    int lwork, liwork;
} pp_rotated;

/* One rotated matrix's covariances and bases inside the state; NULL for
 * a side that does not rotate (the identity). */
typedef struct {
    float *L, *QL, *R, *QR;
} pp_rotated_view;

/* Sets up the state for stage g's hidden matrices (pp_muon_matrix) and
 * cfg's sides. -1 with one line when out of memory or when the build has
 * no LAPACKE. */
/* Floats of one rotated matrix's state: a covariance and a basis per side
 * that rotates (the layout above; the CUDA backend's too). */
size_t pp_rotated_state_floats(const pp_gpt_tensor *t, const pp_optim_config *cfg);

int pp_rotated_init(pp_rotated *r, const pp_gpt_stage *g, const pp_optim_config *cfg,
                    pp_err *e);
void pp_rotated_free(pp_rotated *r);

/* Tensor i's view (all NULL when it does not rotate). A test pins a basis
 * by writing Q_L, Q_R here with rotate_every 0, and reads them after a
 * refresh. */
pp_rotated_view pp_rotated_view_of(const pp_rotated *r, const pp_gpt_stage *g, int i,
                                   const pp_optim_config *cfg);

/* One update of tensor i (above) at AdamW's step t: m, v its moments in
 * AdamW's arrays, prev (or NULL) its part of the delay correction's
 * buffer. */
void pp_rotated_step(pp_rotated *r, const pp_gpt_stage *g, int i, const pp_optim_config *cfg,
                     const pp_adamw_hparams *hp, long t, float *m, float *v, float *w,
                     const float *grad, float lr, float *prev);

/* Replaces q [k][k] by the eigenvectors (columns, ascending eigenvalues)
 * of the symmetric cov [k][k], through r's workspace (k at most the
 * largest side r was set up for). Keeps q and returns -1 when cov is not
 * finite or LAPACK fails. */
int pp_rotated_eigenbasis(pp_rotated *r, const float *cov, float *q, int k);

#endif
