/* adamw-rotated on the device: cpu_rotated.h's update of every hidden
 * matrix (it has the formulas, the options and their sources), on the
 * stage's stream. The covariance updates and the basis changes are cuBLAS
 * products in the stage's arithmetic (PPSCHED_CUDA_MATH; fp32 is the
 * parity mode), the eigenbasis refresh is cuSOLVER's syevd (the same
 * divide-and-conquer algorithm as LAPACK's ssyevd on the CPU, eigenvalues
 * ascending), the elementwise parts are kernels_optim.cu's. Nothing comes
 * back to the host: a covariance gone to inf or nan keeps the old basis,
 * decided on the device.
 *
 * Against the CPU: covariances, first moments and every non-rotated
 * parameter agree to roundoff; a basis agrees only up to the sign of each
 * eigenvector (the update does not depend on it: a flipped column of Q_L
 * flips a row of G~, m~ and U alike and Q_L U flips it back) and up to the
 * choice inside a repeated eigenvalue's eigenspace, which any rank-deficient
 * covariance has (S S^T of a [r][c] matrix with r > c); there the two
 * backends run Adam in different, equally valid bases. tests/test_cuda.c
 * checks the rule with pinned bases and the refresh by its properties. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cmath>
#include <cstdio>

#include "cuda_stage.cuh"
#include "kernels.cuh"

extern "C" {
#include "model/cpu_optim.h" /* pp_muon_matrix: the matrices that rotate; the layout */
}

namespace pp_cuda {

static bool left_of(const pp_optim_config *cfg)
{
    return (cfg->rotate_sides & PP_ROTATE_LEFT) != 0;
}

static bool right_of(const pp_optim_config *cfg)
{
    return (cfg->rotate_sides & PP_ROTATE_RIGHT) != 0;
}

static bool cks(cuda_stage *c, cusolverStatus_t rc, const char *what)
{
    if (rc == CUSOLVER_STATUS_SUCCESS)
        return true;
    char detail[64];
    snprintf(detail, sizeof detail, "cuSOLVER status %d", (int)rc);
    fail(c, what, detail);
    return false;
}

/* One rotated matrix's covariances and bases inside o.rot (cpu_rotated.h's
 * order: L, Q_L when the left side rotates, then R, Q_R); nullptr for a
 * side that does not rotate. */
struct view {
    float *L, *QL, *R, *QR;
};

static view view_of(const cuda_stage *c, const cuda_optim &o, int i)
{
    view q = {nullptr, nullptr, nullptr, nullptr};
    const pp_gpt_tensor *t = &c->g.tensors[i];
    size_t rr = (size_t)t->rows * t->rows, cc = (size_t)t->cols * t->cols;
    float *p = o.rot + o.rot_at[i];
    if (left_of(&o.cfg)) {
        q.L = p;
        q.QL = p + rr;
        p += 2 * rr;
    }
    if (right_of(&o.cfg)) {
        q.R = p;
        q.QR = p + cc;
    }
    return q;
}

/* Row-major C [M][N] = alpha op(A) op(B) + beta C, with op(A) M x K and
 * op(B) K x N, A and B row-major with their natural leading dimensions. As
 * cuda_muon.cu explains, cuBLAS reads a row-major buffer as its transpose,
 * so this is the column-major C^T = op(B)^T op(A)^T: operands swapped, each
 * keeping its own transposition flag. */
static void rm_gemm(cuda_stage *c, bool ta, bool tb, int M, int N, int K, float alpha,
                    const float *A, const float *B, float beta, float *Cm)
{
    gemm_batched(c, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                 alpha, B, tb ? K : N, 0, A, ta ? M : K, 0, beta, Cm, N, 0, 1);
}

/* q <- the eigenvectors of the symmetric cov [k][k], unless cov is not
 * finite or the solver reports a failure (then q stays). cov, symmetric,
 * reads the same row- or column-major; syevd leaves the eigenvectors as
 * the columns of its column-major matrix, which k_take_basis transposes
 * into q's columns. */
static void eigenbasis(cuda_stage *c, const float *cov, float *q, int k)
{
    cuda_optim &o = c->opt;
    int *bad = o.eig_flags, *info = o.eig_flags + 1;
    size_t kk = (size_t)k * k;
    ck(c, cudaMemsetAsync(bad, 0, sizeof *bad, c->stream), "rotation basis");
    k_flag_nonfinite(bad, cov, kk, c->stream);
    k_copy_or_identity(o.eig_a, cov, k, bad, c->stream);
    check_launch(c, "rotation basis");
    cks(c,
        cusolverDnSsyevd(o.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, k, o.eig_a,
                         k, o.eig_w, o.eig_work, o.eig_lwork, info),
        "rotation basis (cusolverDnSsyevd)");
    k_take_basis(q, o.eig_a, k, bad, info, c->stream);
    check_launch(c, "rotation basis");
}

/* out [R][C] = Q_L^T x Q_R, a side that does not rotate the identity. */
static void to_basis(cuda_stage *c, const view &q, const float *x, float *out, int R, int C)
{
    float *tmp = c->opt.rt_tmp;
    if (q.QL && q.QR) {
        rm_gemm(c, true, false, R, C, R, 1.0f, q.QL, x, 0.0f, tmp);
        rm_gemm(c, false, false, R, C, C, 1.0f, tmp, q.QR, 0.0f, out);
    } else if (q.QL) {
        rm_gemm(c, true, false, R, C, R, 1.0f, q.QL, x, 0.0f, out);
    } else {
        rm_gemm(c, false, false, R, C, C, 1.0f, x, q.QR, 0.0f, out);
    }
}

/* out [R][C] = Q_L x Q_R^T: back from the basis. */
static void from_basis(cuda_stage *c, const view &q, const float *x, float *out, int R, int C)
{
    float *tmp = c->opt.rt_tmp;
    if (q.QL && q.QR) {
        rm_gemm(c, false, false, R, C, R, 1.0f, q.QL, x, 0.0f, tmp);
        rm_gemm(c, false, true, R, C, C, 1.0f, tmp, q.QR, 0.0f, out);
    } else if (q.QL) {
        rm_gemm(c, false, false, R, C, R, 1.0f, q.QL, x, 0.0f, out);
    } else {
        rm_gemm(c, false, true, R, C, C, 1.0f, x, q.QR, 0.0f, out);
    }
}

/* cpu_rotated.c's pp_rotated_step for tensor i, step for step. */
static void rotated_matrix(cuda_stage *c, int i, float *w, const float *grad, float lr,
                           const pp_adamw_hparams *hp, float c1, float c2)
{
    cuda_optim &o = c->opt;
    const pp_gpt_tensor *t = &c->g.tensors[i];
    view q = view_of(c, o, i);
    int R = t->rows, C = t->cols;
    size_t n = t->numel;
    const float *G = grad + t->offset;
    float *m = o.m + t->offset, *v = o.v + t->offset;
    k_adam_moment(m, G, hp->beta1, n, c->stream);
    check_launch(c, "adamw-rotated moment");
    /* the covariances of the basis' source (one product each, the running
     * average in the product's beta), and the refresh */
    const float *S = o.cfg.rotate_basis == PP_ROTATE_MOMENT ? m : G;
    float bc = o.cfg.rotate_beta < 0 ? hp->beta2 : o.cfg.rotate_beta;
    bool refresh = o.cfg.rotate_every > 0 && (o.t == 1 || o.t % o.cfg.rotate_every == 0);
    if (q.L) {
        rm_gemm(c, false, true, R, R, C, 1.0f - bc, S, S, bc, q.L); /* S S^T */
        if (refresh)
            eigenbasis(c, q.L, q.QL, R);
    }
    if (q.R) {
        rm_gemm(c, true, false, C, C, R, 1.0f - bc, S, S, bc, q.R); /* S^T S */
        if (refresh)
            eigenbasis(c, q.R, q.QR, C);
    }
    to_basis(c, q, G, o.rt_g, R, C);
    to_basis(c, q, m, o.rt_m, R, C);
    k_rotated_adam(o.rt_g, v, o.rt_g, o.rt_m, hp->beta2, c1, c2, hp->eps, n, c->stream);
    check_launch(c, "adamw-rotated");
    from_basis(c, q, o.rt_g, o.rt_m, R, C);
    float wd = t->decay ? hp->weight_decay : 0.0f;
    k_matrix_apply(w + t->offset, o.prev ? o.prev + t->offset : nullptr, o.rt_m, R, C, false,
                   lr, 1.0f, wd, o.cfg.delay_beta, c->stream);
    check_launch(c, "adamw-rotated update");
}

void rotated_update(cuda_stage *c, float *w, const float *grad, float lr,
                    const pp_adamw_hparams *hp, float c1, float c2)
{
    cuda_optim &o = c->opt;
    for (int i = 0; i < c->g.ntensors; i++)
        if (o.rot_at[i] != PP_GPT_NO_STATE)
            rotated_matrix(c, i, w, grad, lr, hp, c1, c2);
}

bool rotated_init(cuda_stage *c, cuda_optim &o)
{
    const pp_gpt_stage *g = &c->g;
    bool left = left_of(&o.cfg), right = right_of(&o.cfg);
    size_t nmax = 1;
    int kmax = 1;
    o.rot_at.assign(g->ntensors, PP_GPT_NO_STATE);
    o.nrot = 0;
    for (int i = 0; i < g->ntensors; i++) {
        const pp_gpt_tensor *t = &g->tensors[i];
        if (!pp_muon_matrix(t))
            continue;
        o.rot_at[i] = o.nrot;
        o.nrot += pp_rotated_state_floats(t, &o.cfg);
        nmax = t->numel > nmax ? t->numel : nmax;
        if (left && t->rows > kmax)
            kmax = t->rows;
        if (right && t->cols > kmax)
            kmax = t->cols;
    }
    const size_t f = sizeof(float);
    bool ok = (o.rot = (float *)dev_alloc(c, o.nrot * f, MK_OPT)) != nullptr;
    float **ws[] = {&o.rt_g, &o.rt_m, &o.rt_tmp};
    for (float **p : ws)
        ok = ok && (*p = (float *)dev_alloc(c, nmax * f, MK_WS));
    ok = ok && (o.eig_a = (float *)dev_alloc(c, (size_t)kmax * kmax * f, MK_WS));
    ok = ok && (o.eig_w = (float *)dev_alloc(c, (size_t)kmax * f, MK_WS));
    ok = ok && (o.eig_flags = (int *)dev_alloc(c, 2 * sizeof(int), MK_WS));
    if (!ok)
        return false;
    if (!cks(c, cusolverDnCreate(&o.solver), "cusolverDnCreate") ||
        !cks(c, cusolverDnSetStream(o.solver, c->stream), "cusolverDnSetStream"))
        return false;
    /* syevd's work space, sized once for every side that rotates (a
     * refresh never allocates) */
    o.eig_lwork = 1;
    for (int i = 0; i < g->ntensors; i++) {
        if (o.rot_at[i] == PP_GPT_NO_STATE)
            continue;
        int sides[2] = {left ? g->tensors[i].rows : 0, right ? g->tensors[i].cols : 0};
        for (int k : sides) {
            int lw = 0;
            if (k && !cks(c,
                          cusolverDnSsyevd_bufferSize(o.solver, CUSOLVER_EIG_MODE_VECTOR,
                                                      CUBLAS_FILL_MODE_UPPER, k, o.eig_a, k,
                                                      o.eig_w, &lw),
                          "cusolverDnSsyevd_bufferSize"))
                return false;
            o.eig_lwork = lw > o.eig_lwork ? lw : o.eig_lwork;
        }
    }
    if (!(o.eig_work = (float *)dev_alloc(c, (size_t)o.eig_lwork * f, MK_WS)))
        return false;
    /* the bases start as the identity, the covariances at zero */
    for (int i = 0; i < g->ntensors; i++) {
        if (o.rot_at[i] == PP_GPT_NO_STATE)
            continue;
        view q = view_of(c, o, i);
        if (q.QL)
            k_identity(q.QL, g->tensors[i].rows, c->stream);
        if (q.QR)
            k_identity(q.QR, g->tensors[i].cols, c->stream);
    }
    check_launch(c, "adamw-rotated init");
    return !c->failed;
}

void rotated_release(cuda_stage *c, cuda_optim &o)
{
    void *bufs[] = {o.rot, o.rt_g, o.rt_m, o.rt_tmp, o.eig_a, o.eig_w, o.eig_work, o.eig_flags};
    for (void *p : bufs)
        cuda_release(c, p);
    if (o.solver)
        cusolverDnDestroy(o.solver);
    o.solver = nullptr;
}

} // namespace pp_cuda
