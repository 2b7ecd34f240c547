/* adamw-rotated's matrices (cpu_rotated.h): their state, the update with
 * its products on the stage's team (pp_mm_*, deterministic for a fixed
 * team size) and the eigenbasis refresh through LAPACKE. */
#include "cpu_rotated.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_gemm.h"
#include "cpu_optim.h"

#ifdef PPSCHED_HAVE_LAPACKE
#include <lapacke.h>
/* the workspace's integers are declared int in cpu_rotated.h */
_Static_assert(sizeof(lapack_int) == sizeof(int), "LAPACKE with 64-bit integers");
#endif

static int left_of(const pp_optim_config *cfg)
{
    return (cfg->rotate_sides & PP_ROTATE_LEFT) != 0;
}

static int right_of(const pp_optim_config *cfg)
{
    return (cfg->rotate_sides & PP_ROTATE_RIGHT) != 0;
}

size_t pp_rotated_state_floats(const pp_gpt_tensor *t, const pp_optim_config *cfg)
{
    size_t r = (size_t)t->rows, c = (size_t)t->cols;
    return (left_of(cfg) ? 2 * r * r : 0) + (right_of(cfg) ? 2 * c * c : 0);
}

/* Scratch of one matrix: the rotated gradient, moment and update and a
 * product's intermediate (4 r c), a covariance product (k^2, k the larger
 * side) and the own GEMM kernel's transposed operand (pp_mm_abt: r c for
 * S S^T, c^2 for the back rotation). */
static size_t scratch_floats(const pp_gpt_tensor *t)
{
    size_t r = (size_t)t->rows, c = (size_t)t->cols, n = r * c, k = r > c ? r : c;
    return 4 * n + k * k + (n > c * c ? n : c * c);
}

static void set_identity(float *q, int k)
{
    memset(q, 0, (size_t)k * k * sizeof *q);
    for (int i = 0; i < k; i++)
        q[(size_t)i * k + i] = 1.0f;
}

/* ssyevd's workspace for a k x k problem: the documented minimum with
 * eigenvectors (1 + 6k + 2k^2 floats, 3 + 5k integers), or LAPACK's own
 * answer to a size query when larger. Sized once, so that a refresh never
 * allocates. */
static void eig_workspace(int k, int *lwork, int *liwork)
{
    *lwork = 1 + 6 * k + 2 * k * k;
    *liwork = 3 + 5 * k;
#ifdef PPSCHED_HAVE_LAPACKE
    float a = 0, w = 0, qwork = 0;
    lapack_int qiwork = 0;
    if (LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'U', k, &a, k, &w, &qwork, -1, &qiwork, -1) ==
        0) {
        if ((int)qwork > *lwork)
            *lwork = (int)qwork;
        if (qiwork > *liwork)
            *liwork = (int)qiwork;
    }
#endif
}

int pp_rotated_init(pp_rotated *r, const pp_gpt_stage *g, const pp_optim_config *cfg,
                    pp_err *e)
{
    memset(r, 0, sizeof *r);
    if (pp_optim_executable(PP_OPTIM_ADAMW_ROTATED, e) < 0)
        return -1; /* a build without LAPACKE */
    size_t scratch = 1;
    int kmax = 1;
    r->at = malloc((size_t)(g->ntensors ? g->ntensors : 1) * sizeof *r->at);
    if (!r->at)
        return pp_errf(e, "out of memory for the rotation's state");
    for (int i = 0; i < g->ntensors; i++) {
        const pp_gpt_tensor *t = &g->tensors[i];
        r->at[i] = PP_GPT_NO_STATE;
        if (!pp_muon_matrix(t))
            continue;
        r->at[i] = r->n;
        r->n += pp_rotated_state_floats(t, cfg);
        if (scratch_floats(t) > scratch)
            scratch = scratch_floats(t);
        if (left_of(cfg) && t->rows > kmax)
            kmax = t->rows;
        if (right_of(cfg) && t->cols > kmax)
            kmax = t->cols;
    }
    eig_workspace(kmax, &r->lwork, &r->liwork);
    r->state = calloc(r->n ? r->n : 1, sizeof *r->state);
    r->scratch = malloc(scratch * sizeof *r->scratch);
    r->eig_a = malloc((size_t)kmax * kmax * sizeof *r->eig_a);
    r->eig_w = malloc((size_t)kmax * sizeof *r->eig_w);
    r->eig_work = malloc((size_t)r->lwork * sizeof *r->eig_work);
    r->eig_iwork = malloc((size_t)r->liwork * sizeof *r->eig_iwork);
    if (!r->state || !r->scratch || !r->eig_a || !r->eig_w || !r->eig_work || !r->eig_iwork) {
        pp_rotated_free(r);
        return pp_errf(e, "out of memory for the rotation's state (%zu floats)", r->n);
    }
    for (int i = 0; i < g->ntensors; i++) {
        pp_rotated_view q = pp_rotated_view_of(r, g, i, cfg);
        if (q.QL)
            set_identity(q.QL, g->tensors[i].rows);
        if (q.QR)
            set_identity(q.QR, g->tensors[i].cols);
    }
    return 0;
}

void pp_rotated_free(pp_rotated *r)
{
    free(r->at);
    free(r->state);
    free(r->scratch);
    free(r->eig_a);
    free(r->eig_w);
    free(r->eig_work);
    free(r->eig_iwork);
    memset(r, 0, sizeof *r);
}

pp_rotated_view pp_rotated_view_of(const pp_rotated *r, const pp_gpt_stage *g, int i,
                                   const pp_optim_config *cfg)
{
    pp_rotated_view q = {NULL, NULL, NULL, NULL};
    if (!r->at || i < 0 || i >= g->ntensors || r->at[i] == PP_GPT_NO_STATE)
        return q;
    size_t rr = (size_t)g->tensors[i].rows * g->tensors[i].rows;
    size_t cc = (size_t)g->tensors[i].cols * g->tensors[i].cols;
    float *p = r->state + r->at[i];
    if (left_of(cfg)) {
        q.L = p;
        q.QL = p + rr;
        p += 2 * rr;
    }
    if (right_of(cfg)) {
        q.R = p;
        q.QR = p + cc;
    }
    return q;
}

int pp_rotated_eigenbasis(pp_rotated *r, const float *cov, float *q, int k)
{
#ifdef PPSCHED_HAVE_LAPACKE
    size_t kk = (size_t)k * k;
    /* a gradient gone to inf or nan makes the covariance so; LAPACK's
     * answer to it is undefined, and the old basis is as good as any */
    for (size_t i = 0; i < kk; i++)
        if (!isfinite(cov[i]))
            return -1;
    /* The covariance is symmetric, so its row-major array is also its
     * column-major one; column-major keeps LAPACKE from allocating a
     * transposed copy. The eigenvectors come back as columns of a
     * column-major array, i.e. as rows of a row-major one: transposed
     * into q's columns. */
    memcpy(r->eig_a, cov, kk * sizeof *cov);
    lapack_int info = LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'U', k, r->eig_a, k, r->eig_w,
                                          r->eig_work, r->lwork, r->eig_iwork, r->liwork);
    if (info != 0)
        return -1;
    pp_transpose(q, r->eig_a, k, k);
    return 0;
#else
    (void)r;
    (void)cov;
    (void)q;
    (void)k;
    return -1;
#endif
}

/* c <- b c + (1 - b) s over n elements: a running average. */
static void decay_into(float *restrict c, const float *restrict s, size_t n, float b)
{
    for (size_t i = 0; i < n; i++)
        c[i] = b * c[i] + (1.0f - b) * s[i];
}

/* out = Q_L^T x Q_R, a side that does not rotate taken as the identity. */
static void to_basis(pp_pool *pool, const pp_rotated_view *q, const float *x, float *out,
                     float *tmp, int R, int C)
{
    if (q->QL && q->QR) {
        pp_mm_atb(pool, tmp, q->QL, x, R, C, R, 0);
        pp_mm_ab(pool, out, tmp, q->QR, R, C, C, 0);
    } else if (q->QL) {
        pp_mm_atb(pool, out, q->QL, x, R, C, R, 0);
    } else {
        pp_mm_ab(pool, out, x, q->QR, R, C, C, 0);
    }
}

/* out = Q_L x Q_R^T: back from the basis. bt is pp_mm_abt's scratch. */
static void from_basis(pp_pool *pool, const pp_rotated_view *q, const float *x, float *out,
                       float *tmp, float *bt, int R, int C)
{
    if (q->QL && q->QR) {
        pp_mm_ab(pool, tmp, q->QL, x, R, C, R, 0);
        pp_mm_abt(pool, out, tmp, q->QR, NULL, bt, R, C, C, 0);
    } else if (q->QL) {
        pp_mm_ab(pool, out, q->QL, x, R, C, R, 0);
    } else {
        pp_mm_abt(pool, out, x, q->QR, NULL, bt, R, C, C, 0);
    }
}

void pp_rotated_step(pp_rotated *r, const pp_gpt_stage *g, int i, const pp_optim_config *cfg,
                     const pp_adamw_hparams *hp, long t, float *m, float *v, float *w,
                     const float *grad, float lr, float *prev)
{
    const pp_gpt_tensor *ten = &g->tensors[i];
    pp_rotated_view q = pp_rotated_view_of(r, g, i, cfg);
    pp_pool *pool = g->pool;
    int R = ten->rows, C = ten->cols, k = R > C ? R : C;
    size_t n = ten->numel;
    float *gt = r->scratch, *mt = gt + n, *u = mt + n, *tmp = u + n, *cov = tmp + n,
          *bt = cov + (size_t)k * k;
    float *p = w + ten->offset;
    const float *G = grad + ten->offset;
    float b1 = hp->beta1, b2 = hp->beta2;
    /* the first moment, as AdamW's (the same expression, so that an
     * identity basis gives AdamW's bits) */
    for (size_t j = 0; j < n; j++)
        m[j] = b1 * m[j] + (1.0f - b1) * G[j];
    /* the covariances of the basis' source, and the refresh */
    const float *S = cfg->rotate_basis == PP_ROTATE_MOMENT ? m : G;
    float bc = cfg->rotate_beta < 0 ? b2 : cfg->rotate_beta;
    int refresh = cfg->rotate_every > 0 && (t == 1 || t % cfg->rotate_every == 0);
    if (q.L) {
        pp_mm_abt(pool, cov, S, S, NULL, bt, R, R, C, 0); /* S S^T */
        decay_into(q.L, cov, (size_t)R * R, bc);
        if (refresh)
            pp_rotated_eigenbasis(r, q.L, q.QL, R);
    }
    if (q.R) {
        pp_mm_atb(pool, cov, S, S, C, C, R, 0); /* S^T S */
        decay_into(q.R, cov, (size_t)C * C, bc);
        if (refresh)
            pp_rotated_eigenbasis(r, q.R, q.QR, C);
    }
    to_basis(pool, &q, G, gt, tmp, R, C);
    to_basis(pool, &q, m, mt, tmp, R, C);
    /* Adam in the basis: AdamW's expressions, term for term */
    float c1 = (float)(1.0 - pow(b1, (double)t));
    float c2 = (float)(1.0 - pow(b2, (double)t));
    for (size_t j = 0; j < n; j++) {
        v[j] = b2 * v[j] + (1.0f - b2) * gt[j] * gt[j];
        float mhat = mt[j] / c1, vhat = v[j] / c2;
        u[j] = mhat / (sqrtf(vhat) + hp->eps);
    }
    from_basis(pool, &q, u, gt, tmp, bt, R, C);
    float wd = ten->decay ? hp->weight_decay : 0.0f;
    for (size_t j = 0; j < n; j++) {
        float step = lr * (gt[j] + wd * p[j]);
        p[j] -= prev ? pp_delay_correct(step, &prev[j], cfg->delay_beta) : step;
    }
}
