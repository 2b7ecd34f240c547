/* The optimizers of the executor (model/optim.h, model/cpu_optim.h,
 * model/cpu_rotated.h): Newton-Schulz gives singular values near 1, Muon
 * leaves every parameter that is not a hidden matrix to AdamW bit for bit,
 * adamw-rotated with the identity basis is AdamW bit for bit and with a
 * fixed orthogonal basis is AdamW on the rotated problem, its refresh
 * gives orthonormal eigenbases, the delay correction with beta 0 and the
 * learning-rate correction without delay change nothing, every optimizer
 * resumes from a checkpoint bit for bit, Muon and adamw-rotated train, and
 * a backend without an optimizer refuses it. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu_optim.h"
#include "model/optim.h"
#include "runtime/cut.h"
#include "runtime/runtime.h"
#include "synth_data.h"
#include "test_linalg.h"
#include "test_support.h"

#ifdef PPSCHED_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

/* --- helpers -------------------------------------------------------- */

static void fill_normal(float *x, size_t n, double scale, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * normal(&seed));
}

/* Eigenvalues of the symmetric k x k matrix a (destroyed) by cyclic
 * Jacobi rotations, into ev[k]: a test's own check, in double. */
static void jacobi_eigenvalues(double *a, int k, double *ev)
{
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0;
        for (int p = 0; p < k; p++)
            for (int q = p + 1; q < k; q++)
                off += a[p * k + q] * a[p * k + q];
        if (off < 1e-26)
            break;
        for (int p = 0; p < k; p++)
            for (int q = p + 1; q < k; q++) {
                double apq = a[p * k + q];
                if (fabs(apq) < 1e-300)
                    continue;
                double theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int i = 0; i < k; i++) { /* columns p and q */
                    double aip = a[i * k + p], aiq = a[i * k + q];
                    a[i * k + p] = c * aip - s * aiq;
                    a[i * k + q] = s * aip + c * aiq;
                }
                for (int i = 0; i < k; i++) { /* rows p and q */
                    double api = a[p * k + i], aqi = a[q * k + i];
                    a[p * k + i] = c * api - s * aqi;
                    a[q * k + i] = s * api + c * aqi;
                }
            }
    }
    for (int i = 0; i < k; i++)
        ev[i] = a[i * k + i];
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The singular values of x [rows][cols], ascending, into sv[min(rows, cols)]. */
static void singular_values(const float *x, int rows, int cols, double *sv)
{
    int k = rows < cols ? rows : cols, tall = rows > cols;
    double *gram = malloc((size_t)k * k * sizeof *gram);
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double acc = 0.0; /* X^T X when tall, X X^T when wide */
            int n = tall ? rows : cols;
            for (int l = 0; l < n; l++)
                acc += tall ? (double)x[l * cols + i] * x[l * cols + j]
                            : (double)x[i * cols + l] * x[j * cols + l];
            gram[i * k + j] = acc;
        }
    jacobi_eigenvalues(gram, k, sv);
    for (int i = 0; i < k; i++)
        sv[i] = sqrt(sv[i] > 0 ? sv[i] : 0);
    qsort(sv, (size_t)k, sizeof *sv, cmp_double);
    free(gram);
}

/* What five steps of the quintic make of a singular value s of the
 * normalised matrix (cpu_optim.h's coefficients). */
static double quintic5(double s)
{
    for (int i = 0; i < 5; i++)
        s = 3.4445 * s - 4.7750 * s * s * s + 2.0315 * s * s * s * s * s;
    return s;
}

/* A stage of a small model (P = 1, every kind of tensor). */
static void small_stage(pp_gpt_stage *g)
{
    pp_model_desc m = test_model(2, 16, 2, 8, 13, 2);
    pp_err e = {{0}};
    ck_assert_msg(pp_gpt_stage_init(g, &m, 1, 0, &e) == 0, "%s", e.msg);
}

/* The learning rate of update k (0-based) in the runs below: one that
 * changes every step. */
static float lr_of(int k)
{
    return 1e-2f / (float)(k + 1);
}

/* K updates of w with the optimizer o and hyperparameters hp: seeded
 * gradients, lr_of. */
static void steps(pp_cpu_optim *o, const pp_gpt_stage *g, float *w, int K,
                  const pp_adamw_hparams *hp)
{
    size_t n = g->nparams;
    float *grad = malloc(n * sizeof *grad);
    for (int k = 0; k < K; k++) {
        fill_normal(grad, n, 0.01, 1000 + (uint64_t)k);
        pp_cpu_optim_step(o, w, grad, lr_of(k), hp);
    }
    free(grad);
}

/* K updates of w (from the same start) with the optimizer cfg. */
static float *optimize(const pp_gpt_stage *g, const pp_optim_config *cfg, int K)
{
    float *w = malloc(g->nparams * sizeof *w);
    pp_gpt_stage_init_weights(g, w, 7);
    pp_cpu_optim o;
    pp_err e = {{0}};
    ck_assert_msg(pp_cpu_optim_init(&o, g, cfg, &e) == 0, "%s", e.msg);
    pp_adamw_hparams hp = pp_adamw_defaults();
    steps(&o, g, w, K, &hp);
    pp_cpu_optim_free(&o);
    return w;
}

/* 1 when this build runs adamw-rotated (it needs LAPACKE); else says why
 * the rotated checks are skipped. */
static int have_rotated(void)
{
    pp_err e = {{0}};
    if (pp_optim_executable(PP_OPTIM_ADAMW_ROTATED, &e) == 0)
        return 1;
    ck_assert_msg(strstr(e.msg, "no LAPACKE"), "%s", e.msg);
    printf("adamw-rotated checks skipped: %s\n", e.msg);
    return 0;
}


/* --- Newton-Schulz ---------------------------------------------------- */

/* Five quintic steps from the Frobenius-normalised matrix map each of its
 * singular values s to quintic5(s) (the iteration keeps the singular
 * vectors), and every s >= 0.002 (of a matrix of unit Frobenius norm)
 * ends in [0.68, 1.21]: the band the coefficients give, computed below
 * from the polynomial itself. Checked for tall, wide and square random
 * matrices, the square ones shifted so that no singular value is tiny. */
START_TEST(newton_schulz_singular_values_near_one)
{
    double lo = 1e9, hi = 0;
    for (int i = 0; i <= 200000; i++) {
        double y = quintic5(0.002 + (1 - 0.002) * i / 200000.0);
        lo = y < lo ? y : lo;
        hi = y > hi ? y : hi;
    }
    ck_assert_msg(lo > 0.68 && hi < 1.21, "the quintic's band is [%g, %g]", lo, hi);
    const int shapes[][2] = {{96, 32}, {32, 96}, {48, 48}, {64, 16}, {7, 40}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int r = shapes[k][0], c = shapes[k][1], m = r < c ? r : c;
        size_t n = (size_t)r * c;
        float *x = malloc(n * sizeof *x);
        float *scratch = malloc(pp_newton_schulz_scratch(r, c) * sizeof *scratch);
        fill_normal(x, n, 3.0, 17 + k);
        if (r == c)
            for (int i = 0; i < r; i++)
                x[i * c + i] += 3.0f * 3.0f * sqrtf((float)r);
        double *in = malloc((size_t)m * sizeof *in), *out = malloc((size_t)m * sizeof *out);
        double fro = 0;
        for (size_t i = 0; i < n; i++)
            fro += (double)x[i] * x[i];
        fro = sqrt(fro);
        singular_values(x, r, c, in);
        pp_newton_schulz(NULL, x, r, c, scratch);
        singular_values(x, r, c, out);
        for (int i = 0; i < m; i++)
            in[i] = quintic5(in[i] / fro);
        qsort(in, (size_t)m, sizeof *in, cmp_double);
        for (int i = 0; i < m; i++) {
            ck_assert_msg(fabs(out[i] - in[i]) < 2e-3, "%dx%d: singular value %d is %.6f, the "
                          "quintic gives %.6f", r, c, i, out[i], in[i]);
            ck_assert_msg(out[i] > lo - 2e-3 && out[i] < hi + 2e-3,
                          "%dx%d: singular value %d is %.6f, outside [%.4f, %.4f]", r, c, i,
                          out[i], lo, hi);
        }
        free(x);
        free(scratch);
        free(in);
        free(out);
    }
}
END_TEST

/* A zero update stays zero (the 1e-7 in the normalisation) and a matrix
 * already orthogonal stays near orthogonal. */
START_TEST(newton_schulz_of_zero_is_zero)
{
    float x[6 * 4] = {0}, scratch[200];
    ck_assert_uint_ge(sizeof scratch / sizeof *scratch, pp_newton_schulz_scratch(6, 4));
    pp_newton_schulz(NULL, x, 6, 4, scratch);
    for (int i = 0; i < 24; i++)
        ck_assert(x[i] == 0.0f);
}
END_TEST

/* --- Muon ------------------------------------------------------------- */

/* Muon updates only the blocks' attention and MLP matrices itself: the
 * embeddings, biases, LayerNorm and output layer take AdamW's steps, bit
 * for bit, and the matrices do not. */
START_TEST(muon_leaves_the_rest_to_adamw_bit_for_bit)
{
    pp_gpt_stage g;
    small_stage(&g);
    pp_optim_config adamw = test_optim_config(PP_OPTIM_ADAMW, 0, 0),
                    muon = test_optim_config(PP_OPTIM_MUON, 0, 0);
    float *a = optimize(&g, &adamw, 6), *b = optimize(&g, &muon, 6);
    int matrices = 0, others = 0;
    for (int i = 0; i < g.ntensors; i++) {
        const pp_gpt_tensor *t = &g.tensors[i];
        int same = !memcmp(a + t->offset, b + t->offset, t->numel * sizeof *a);
        if (pp_muon_matrix(t)) {
            matrices++;
            ck_assert_msg(!same, "%s: Muon's matrix update equals AdamW's", t->name);
        } else {
            others++;
            ck_assert_msg(same, "%s: not AdamW's update bit for bit under Muon", t->name);
        }
    }
    ck_assert_int_eq(matrices, 2 * 4);
    ck_assert_int_ge(others, 2 * 8 + 5);
    free(a);
    free(b);
    pp_gpt_stage_free(&g);
}
END_TEST

/* --- adamw-rotated ---------------------------------------------------- */

/* adamw-rotated on `sides` with its bases pinned (rotate_every 0): the
 * identity they start as, or what a test writes into them. */
static pp_optim_config pinned(int sides)
{
    pp_optim_config c = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 0, 0);
    c.rotate_every = 0;
    c.rotate_sides = sides;
    return c;
}

/* With its bases pinned to the identity adamw-rotated takes AdamW's steps
 * bit for bit on every parameter: the rotations into the basis and back
 * are real products (OpenBLAS's, or the own kernel's), through which the
 * identity passes exactly, and the rest is AdamW's expressions term for
 * term. For each choice of sides, on one thread and on a team of three,
 * with and without the delay correction. With bases that refresh (the
 * defaults), the hidden matrices move otherwise and the other parameters
 * still take AdamW's bits. */
START_TEST(rotated_with_identity_basis_is_adamw_bit_for_bit)
{
    if (!have_rotated())
        return;
    pp_gpt_stage g;
    small_stage(&g);
    pp_err e = {{0}};
    for (int threads = 1; threads <= 3; threads += 2) {
        ck_assert_msg(pp_gpt_stage_set_threads(&g, threads, &e) == 0, "%s", e.msg);
        for (int delay = 0; delay <= 1; delay++) {
            pp_optim_config adamw = test_optim_config(PP_OPTIM_ADAMW, delay, 0.5f * (float)delay);
            float *a = optimize(&g, &adamw, 6);
            for (int sides = PP_ROTATE_LEFT; sides <= PP_ROTATE_BOTH; sides++) {
                pp_optim_config rot = pinned(sides);
                rot.delay_buffer = adamw.delay_buffer;
                rot.delay_beta = adamw.delay_beta;
                float *b = optimize(&g, &rot, 6);
                for (int i = 0; i < g.ntensors; i++) {
                    const pp_gpt_tensor *t = &g.tensors[i];
                    ck_assert_msg(!memcmp(a + t->offset, b + t->offset, t->numel * sizeof *a),
                                  "%s, identity basis on %s side(s), %d threads, delay "
                                  "correction %d: not AdamW's bits", t->name,
                                  pp_rotate_sides_name(sides), threads, delay);
                }
                free(b);
            }
            free(a);
        }
    }
    pp_optim_config adamw = test_optim_config(PP_OPTIM_ADAMW, 0, 0),
                    rot = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 0, 0);
    float *a = optimize(&g, &adamw, 6), *b = optimize(&g, &rot, 6);
    for (int i = 0; i < g.ntensors; i++) {
        const pp_gpt_tensor *t = &g.tensors[i];
        int same = !memcmp(a + t->offset, b + t->offset, t->numel * sizeof *a);
        ck_assert_msg(same != pp_muon_matrix(t), "%s: %s AdamW's update with refreshed bases",
                      t->name, same ? "takes" : "does not take");
    }
    free(a);
    free(b);
    pp_gpt_stage_free(&g);
}
END_TEST

/* y [r][c] = Q_L^T x Q_R, in double (a side NULL: the identity). */
static void rotate_into(const pp_rotated_view *q, const float *x, double *y, int r, int c)
{
    double *tmp = malloc((size_t)r * c * sizeof *tmp);
    for (int i = 0; i < r; i++)
        for (int j = 0; j < c; j++) {
            double acc = 0;
            for (int a = 0; a < r; a++)
                acc += (q->QL ? q->QL[a * r + i] : (double)(a == i)) * x[a * c + j];
            tmp[i * c + j] = acc;
        }
    for (int i = 0; i < r; i++)
        for (int j = 0; j < c; j++) {
            double acc = 0;
            for (int b = 0; b < c; b++)
                acc += tmp[i * c + b] * (q->QR ? q->QR[b * c + j] : (double)(b == j));
            y[i * c + j] = acc;
        }
    free(tmp);
}

static void to_float(float *out, const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (float)x[i];
}

/* With fixed orthogonal bases Q_L, Q_R adamw-rotated on W is AdamW on the
 * rotated problem W' = Q_L^T W Q_R, G' = Q_L^T G Q_R. In exact arithmetic
 * the two runs are one: the first moment is linear in G, so rotating the
 * one kept in the original basis (m~ = Q_L^T m Q_R) gives AdamW's first
 * moment of G' exactly; the second moment is AdamW's of G' by
 * construction; and Q_L^T (wd W) Q_R = wd W'. So Q_L^T W Q_R after K
 * updates equals AdamW's W' up to float rounding (the products, and Q
 * orthogonal to float precision): within 1e-4 of the distance the weights
 * moved (8 updates, 2.6e-2; seen: 1.3e-5 at most), while AdamW on W
 * itself, rotated the same way, lands 100 times farther. Keeping m in the
 * original basis differs from keeping it rotated only when the basis
 * changes, which it does not here.
 * eps is 1e-4 in this test: with 1e-8, a rotated gradient element that
 * happens to lie within a few eps of zero makes Adam's g / (|g| + eps)
 * amplify the products' rounding up to 1/eps times (seen: one element in
 * about 10^5, 8e-5 off); the equivalence is the same, and the tolerance
 * can then be tight. */
START_TEST(rotated_with_fixed_basis_is_adamw_on_the_rotated_problem)
{
    if (!have_rotated())
        return;
    const int K = 8;
    pp_gpt_stage g;
    small_stage(&g);
    pp_err e = {{0}};
    for (int sides = PP_ROTATE_LEFT; sides <= PP_ROTATE_BOTH; sides++) {
        pp_optim_config cfg = pinned(sides), plain = test_optim_config(PP_OPTIM_ADAMW, 0, 0);
        pp_cpu_optim o;
        ck_assert_msg(pp_cpu_optim_init(&o, &g, &cfg, &e) == 0, "%s", e.msg);
        size_t n = g.nparams;
        float *w = malloc(n * sizeof *w), *w0 = malloc(n * sizeof *w0),
              *grad = malloc(n * sizeof *grad);
        pp_gpt_stage_init_weights(&g, w0, 7);
        memcpy(w, w0, n * sizeof *w);
        for (int i = 0; i < g.ntensors; i++) {
            pp_rotated_view q = pp_rotated_view_of(&o.rot, &g, i, &cfg);
            if (q.QL)
                random_orthogonal(q.QL, g.tensors[i].rows, 100 + (uint64_t)i);
            if (q.QR)
                random_orthogonal(q.QR, g.tensors[i].cols, 200 + (uint64_t)i);
        }
        pp_adamw_hparams hp = pp_adamw_defaults();
        hp.eps = 1e-4f; /* see above */
        steps(&o, &g, w, K, &hp);
        float *unrotated = malloc(n * sizeof *unrotated);
        memcpy(unrotated, w0, n * sizeof *unrotated);
        pp_cpu_optim po;
        ck_assert_msg(pp_cpu_optim_init(&po, &g, &plain, &e) == 0, "%s", e.msg);
        steps(&po, &g, unrotated, K, &hp);
        pp_cpu_optim_free(&po);
        int checked = 0;
        for (int i = 0; i < g.ntensors; i++) {
            const pp_gpt_tensor *t = &g.tensors[i];
            pp_rotated_view q = pp_rotated_view_of(&o.rot, &g, i, &cfg);
            if (!q.QL && !q.QR)
                continue;
            int r = t->rows, c = t->cols;
            size_t numel = t->numel;
            double *x = malloc(numel * sizeof *x), *start = malloc(numel * sizeof *start);
            float *wp = malloc(numel * sizeof *wp), *gp = malloc(numel * sizeof *gp);
            float *m = calloc(numel, sizeof *m), *v = calloc(numel, sizeof *v);
            rotate_into(&q, w0 + t->offset, start, r, c);
            to_float(wp, start, numel);
            for (int k = 0; k < K; k++) { /* steps()'s gradients and learning rates */
                fill_normal(grad, n, 0.01, 1000 + (uint64_t)k);
                rotate_into(&q, grad + t->offset, x, r, c);
                to_float(gp, x, numel);
                pp_adamw_apply(&hp, k + 1, m, v, wp, gp, numel, t->decay, lr_of(k), NULL, 0);
            }
            double err = 0, moved = 0, apart = 0;
            rotate_into(&q, w + t->offset, x, r, c);
            for (size_t j = 0; j < numel; j++) {
                err = fmax(err, fabs(x[j] - wp[j]));
                moved = fmax(moved, fabs(wp[j] - start[j]));
            }
            rotate_into(&q, unrotated + t->offset, x, r, c);
            for (size_t j = 0; j < numel; j++)
                apart = fmax(apart, fabs(x[j] - wp[j]));
            ck_assert_msg(err < 1e-4 * moved,
                          "%s (%s side(s)): Q_L^T W Q_R is %.3g from AdamW's W' on the "
                          "rotated problem (the weights moved %.3g)", t->name,
                          pp_rotate_sides_name(sides), err, moved);
            ck_assert_msg(apart > 100 * err, "%s: AdamW without rotation lands as close (%.3g)",
                          t->name, apart);
            checked++;
            free(x);
            free(start);
            free(wp);
            free(gp);
            free(m);
            free(v);
        }
        ck_assert_int_eq(checked, 2 * 4);
        free(w);
        free(w0);
        free(grad);
        free(unrotated);
        pp_cpu_optim_free(&o);
    }
    pp_gpt_stage_free(&g);
}
END_TEST

/* A refresh (at update 3 with rotate_every 3) replaces each basis by the
 * eigenvectors of its covariance: orthonormal columns, Q^T L Q diagonal
 * (off-diagonal within 1e-5 of its largest element), the eigenvalues
 * ascending (ssyevd's order, which pairs v's coordinates with the
 * eigenvector of the same rank from one basis to the next). On both sides
 * of every rotated matrix, for both sources of the basis. The covariance
 * is the running average it should be: L = sum_k (1 - b) b^(3-k) G_k
 * G_k^T, b = beta2, and likewise R. A covariance that is not finite
 * leaves the basis as it was. */
START_TEST(refresh_gives_orthonormal_eigenbases_of_the_covariances)
{
    if (!have_rotated())
        return;
    pp_gpt_stage g;
    small_stage(&g);
    pp_err e = {{0}};
    for (int src = PP_ROTATE_GRADIENT; src <= PP_ROTATE_MOMENT; src++) {
        pp_optim_config cfg = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 0, 0);
        cfg.rotate_every = 3;
        cfg.rotate_basis = (pp_rotate_basis)src;
        pp_cpu_optim o;
        ck_assert_msg(pp_cpu_optim_init(&o, &g, &cfg, &e) == 0, "%s", e.msg);
        float *w = malloc(g.nparams * sizeof *w);
        pp_gpt_stage_init_weights(&g, w, 7);
        pp_adamw_hparams hp = pp_adamw_defaults();
        steps(&o, &g, w, 3, &hp);
        for (int i = 0; i < g.ntensors; i++) {
            pp_rotated_view q = pp_rotated_view_of(&o.rot, &g, i, &cfg);
            if (!q.QL)
                continue;
            const float *cov[2] = {q.L, q.R}, *basis[2] = {q.QL, q.QR};
            int k[2] = {g.tensors[i].rows, g.tensors[i].cols};
            for (int side = 0; side < 2; side++) {
                basis_check b = check_basis(basis[side], cov[side], k[side]);
                ck_assert_msg(b.orth < 1e-5 && b.offdiag < 1e-5 && b.ascending &&
                                  b.from_identity > 0.1,
                              "%s %s basis from the %s: |Q^T Q - I| %.3g, off-diagonal %.3g, "
                              "ascending %d, %.3g from the identity", g.tensors[i].name,
                              side ? "right" : "left", pp_rotate_basis_name(cfg.rotate_basis),
                              b.orth, b.offdiag, b.ascending, b.from_identity);
            }
        }
        /* the running average, by hand, on the first block's qkv matrix */
        const pp_gpt_tensor *t = pp_gpt_stage_find(&g, "h0.qkv_w");
        pp_rotated_view q = pp_rotated_view_of(&o.rot, &g, (int)(t - g.tensors), &cfg);
        if (src == PP_ROTATE_GRADIENT) {
            int r = t->rows, c = t->cols;
            float *grad = malloc(g.nparams * sizeof *grad);
            double *L = calloc((size_t)r * r, sizeof *L), *R = calloc((size_t)c * c, sizeof *R);
            double b = pp_adamw_defaults().beta2;
            for (int s = 0; s < 3; s++) {
                fill_normal(grad, g.nparams, 0.01, 1000 + (uint64_t)s);
                const float *G = grad + t->offset;
                for (int x = 0; x < r * r; x++)
                    L[x] *= b;
                for (int x = 0; x < c * c; x++)
                    R[x] *= b;
                for (int a = 0; a < r; a++)
                    for (int a2 = 0; a2 < r; a2++) {
                        double acc = 0;
                        for (int j = 0; j < c; j++)
                            acc += (double)G[a * c + j] * G[a2 * c + j];
                        L[a * r + a2] += (1 - b) * acc;
                    }
                for (int j = 0; j < c; j++)
                    for (int j2 = 0; j2 < c; j2++) {
                        double acc = 0;
                        for (int a = 0; a < r; a++)
                            acc += (double)G[a * c + j] * G[a * c + j2];
                        R[j * c + j2] += (1 - b) * acc;
                    }
            }
            double errL = 0, errR = 0, maxL = 0, maxR = 0;
            for (int x = 0; x < r * r; x++) {
                errL = fmax(errL, fabs(q.L[x] - L[x]));
                maxL = fmax(maxL, fabs(L[x]));
            }
            for (int x = 0; x < c * c; x++) {
                errR = fmax(errR, fabs(q.R[x] - R[x]));
                maxR = fmax(maxR, fabs(R[x]));
            }
            ck_assert_msg(errL < 1e-5 * maxL && errR < 1e-5 * maxR,
                          "covariances %.3g and %.3g from their running averages by hand", errL,
                          errR);
            free(grad);
            free(L);
            free(R);
        }
        /* inf in the covariance: the basis stays */
        int r = t->rows;
        size_t rr = (size_t)r * r;
        float *bad = malloc(rr * sizeof *bad), *before = malloc(rr * sizeof *before);
        memcpy(bad, q.L, rr * sizeof *bad);
        memcpy(before, q.QL, rr * sizeof *before);
        bad[1] = INFINITY;
        ck_assert_int_eq(pp_rotated_eigenbasis(&o.rot, bad, q.QL, r), -1);
        ck_assert(!memcmp(before, q.QL, rr * sizeof *before));
        free(bad);
        free(before);
        free(w);
        pp_cpu_optim_free(&o);
    }
    pp_gpt_stage_free(&g);
}
END_TEST

/* --- the delay correction and the learning-rate correction ------------ */

/* Keeping the last update but extrapolating with beta 0 applies the
 * optimizer's own update, bit for bit, for every optimizer; beta 0.5
 * changes the result. */
START_TEST(delay_correction_with_beta_zero_is_the_plain_optimizer)
{
    pp_gpt_stage g;
    small_stage(&g);
    for (int kind = PP_OPTIM_ADAMW; kind <= PP_OPTIM_MUON; kind++) {
        pp_optim_config plain = test_optim_config(kind, 0, 0), zero = test_optim_config(kind, 1, 0),
                        half = test_optim_config(kind, 1, 0.5f);
        float *a = optimize(&g, &plain, 5), *b = optimize(&g, &zero, 5),
              *c = optimize(&g, &half, 5);
        ck_assert_msg(!memcmp(a, b, g.nparams * sizeof *a), "%s: beta 0 is not the plain update",
                      pp_optim_name(kind));
        ck_assert_msg(memcmp(a, c, g.nparams * sizeof *a), "%s: beta 0.5 changes nothing",
                      pp_optim_name(kind));
        free(a);
        free(b);
        free(c);
    }
    pp_gpt_stage_free(&g);
}
END_TEST

/* The correction itself, on AdamW's kernel (no weight decay, so that
 * AdamW's update u_t does not depend on the weights): after two steps the
 * weights are w_0 - (1 + beta) u_1 - (u_2 + beta (u_2 - u_1)), u_1 and u_2
 * computed here by hand, and u_2 is kept for the next step. */
START_TEST(delay_correction_extrapolates_the_last_two_updates)
{
    pp_adamw_hparams hp = pp_adamw_defaults();
    const float g[2][3] = {{0.1f, -0.2f, 0.3f}, {-0.05f, 0.4f, 0.3f}}, w0[3] = {0.5f, -1, 2};
    const float lr = 1e-2f, beta = 0.5f;
    float m[3] = {0}, v[3] = {0}, prev[3] = {0}, w[3];
    memcpy(w, w0, sizeof w);
    for (int t = 1; t <= 2; t++)
        pp_adamw_apply(&hp, t, m, v, w, g[t - 1], 3, 0, lr, prev, beta);
    for (int i = 0; i < 3; i++) {
        double mm = 0, vv = 0, u[2];
        for (int t = 1; t <= 2; t++) {
            mm = hp.beta1 * mm + (1 - hp.beta1) * g[t - 1][i];
            vv = hp.beta2 * vv + (1 - hp.beta2) * (double)g[t - 1][i] * g[t - 1][i];
            double mhat = mm / (1 - pow(hp.beta1, t)), vhat = vv / (1 - pow(hp.beta2, t));
            u[t - 1] = lr * mhat / (sqrt(vhat) + hp.eps);
        }
        double want = w0[i] - (1 + beta) * u[0] - (u[1] + beta * (u[1] - u[0]));
        ck_assert_msg(fabs(w[i] - want) < 1e-6, "parameter %d: %.9g, by hand %.9g", i, w[i],
                      want);
        ck_assert_msg(fabs(prev[i] - u[1]) < 1e-8, "kept update %d: %.9g, by hand %.9g", i,
                      prev[i], u[1]);
    }
}
END_TEST

/* PipeMare's factor: exactly 1 without delay (tau 1) at every update;
 * 1/tau at the start, 1/sqrt(tau) half way, 1 from update T on. */
START_TEST(lr_correction_without_delay_is_none)
{
    for (long t = 0; t < 50; t++)
        ck_assert(pp_lr_delay_factor(1.0, t, 20) == 1.0);
    ck_assert(fabs(pp_lr_delay_factor(4.0, 0, 20) - 0.25) < 1e-15);
    ck_assert(fabs(pp_lr_delay_factor(4.0, 10, 20) - 0.5) < 1e-15);
    ck_assert(pp_lr_delay_factor(4.0, 20, 20) == 1.0);
    ck_assert(pp_lr_delay_factor(4.0, 99, 20) == 1.0);
}
END_TEST

/* --- runs -------------------------------------------------------------- */

static pp_model_desc run_model(void)
{
    return test_model(4, 32, 2, 16, 29, 2);
}

typedef struct {
    pp_optim_kind kind;
    float beta;        /* the delay correction (0: off) */
    int lr_T;          /* the learning-rate correction's T (0: off) */
    double tau[8];     /* its stage delays */
    int rotate_every;  /* adamw-rotated's refresh (0: the default) */
    int rotate_sides;  /* and its sides (0: the default) */
    pp_rotate_basis rotate_basis;
} opt_case;

static void configure(pp_run_config *c, const opt_case *k)
{
    c->optim = test_optim_config(k->kind, k->beta != 0, k->beta);
    if (k->rotate_every)
        c->optim.rotate_every = k->rotate_every;
    if (k->rotate_sides)
        c->optim.rotate_sides = k->rotate_sides;
    c->optim.rotate_basis = k->rotate_basis;
    if (k->lr_T) {
        c->lr_delay_tau = k->tau;
        c->lr_delay_T = k->lr_T;
    }
}

static pp_run_result train(const char *name, int P, int m, int S, const opt_case *k)
{
    pp_model_desc md = run_model();
    pp_schedule ir = test_schedule(name, P, m, S);
    pp_run_config c = test_run_config(&ir, &md, &pp_backend_cpu, 60);
    configure(&c, k);
    pp_run_result r;
    pp_err e = {{0}};
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s: %s", name, e.msg);
    pp_schedule_free(&ir);
    return r;
}

/* A run with tau = 1 on every stage takes the uncorrected steps, bit for
 * bit; tau 3 on a stage does not. */
START_TEST(lr_correction_with_tau_one_changes_nothing)
{
    opt_case plain = {.kind = PP_OPTIM_ADAMW},
             ones = {.kind = PP_OPTIM_ADAMW, .lr_T = 8, .tau = {1, 1, 1}},
             late = {.kind = PP_OPTIM_ADAMW, .lr_T = 8, .tau = {3, 2, 1}};
    pp_run_result a = train("pipedream", 3, 2, 6, &plain), b = train("pipedream", 3, 2, 6, &ones),
                  c = train("pipedream", 3, 2, 6, &late);
    int differs = 0;
    for (int i = 0; i < a.steps; i++) {
        ck_assert_msg(a.step_loss[i] == b.step_loss[i], "update %d: %.9g vs %.9g", i + 1,
                      a.step_loss[i], b.step_loss[i]);
        differs |= a.step_loss[i] != c.step_loss[i];
    }
    ck_assert_msg(differs, "tau 3,2,1 trains exactly as no correction");
    pp_run_result_free(&a);
    pp_run_result_free(&b);
    pp_run_result_free(&c);
}
END_TEST

/* The checkpoint blobs of a 4-stage run, captured in memory. */
typedef struct {
    void *blobs[4];
    size_t sizes[4];
    double tokens;
} captured;

static int capture(void *ctx, int K, void **blobs, size_t *sizes, double tokens, pp_err *e)
{
    (void)K;
    (void)e;
    captured *c = ctx;
    for (int s = 0; s < 4; s++) {
        c->blobs[s] = malloc(sizes[s]);
        memcpy(c->blobs[s], blobs[s], sizes[s]);
        c->sizes[s] = sizes[s];
    }
    c->tokens = tokens;
    return 0;
}

/* Train S updates straight, and K + checkpoint + resume: the losses after
 * K are the same bits. P = 4 stages. */
static void check_resume(const char *name, int m, int S, int K, const opt_case *k)
{
    const int P = 4;
    pp_model_desc md = run_model();
    pp_schedule ir = test_schedule(name, P, m, S);
    pp_err e = {{0}};
    pp_run_config c = test_run_config(&ir, &md, &pp_backend_cpu, 60);
    configure(&c, k);
    pp_run_result full, first, second;
    ck_assert_msg(pp_run(&c, &full, &e) == 0, "%s", e.msg);
    pp_cut cut;
    ck_assert_msg(pp_cut_plan(&ir, K, &cut, &e) == 0, "%s: %s", name, e.msg);
    captured cap = {{0}, {0}, 0};
    c.cuts = &cut;
    c.ncuts = 1;
    c.stop_cut = 0;
    c.on_checkpoint = capture;
    c.on_checkpoint_ctx = &cap;
    ck_assert_msg(pp_run(&c, &first, &e) == 0, "%s", e.msg);
    pp_run_config c2 = test_run_config(&ir, &md, &pp_backend_cpu, 60);
    configure(&c2, k);
    c2.seed = 999; /* the weights come from the checkpoint */
    c2.resume_blobs = cap.blobs;
    c2.resume_sizes = cap.sizes;
    c2.resume_tokens = cap.tokens;
    ck_assert_msg(pp_run(&c2, &second, &e) == 0, "%s %s: %s", name, pp_optim_name(k->kind),
                  e.msg);
    ck_assert_int_eq(second.steps, full.steps - K);
    for (int i = 0; i < second.steps; i++)
        ck_assert_msg(second.step_loss[i] == full.step_loss[K + i],
                      "%s %s beta %g: update %d after resume: %.9g vs %.9g", name,
                      pp_optim_name(k->kind), k->beta, K + i + 1, second.step_loss[i],
                      full.step_loss[K + i]);
    for (int s = 0; s < P; s++)
        free(cap.blobs[s]);
    pp_run_result_free(&full);
    pp_run_result_free(&first);
    pp_run_result_free(&second);
    pp_cut_free(&cut, P);
    pp_schedule_free(&ir);
}

START_TEST(every_optimizer_resumes_bit_identically)
{
    const opt_case cases[] = {
        {.kind = PP_OPTIM_ADAMW},
        {.kind = PP_OPTIM_MUON},
        {.kind = PP_OPTIM_ADAMW, .beta = 0.5f},
        {.kind = PP_OPTIM_MUON, .beta = 0.5f},
        {.kind = PP_OPTIM_MUON, .beta = 0.5f, .lr_T = 6, .tau = {3, 2, 1, 1}},
        /* refreshes before and after the cut */
        {.kind = PP_OPTIM_ADAMW_ROTATED, .rotate_every = 2},
        {.kind = PP_OPTIM_ADAMW_ROTATED, .beta = 0.5f, .lr_T = 6, .tau = {3, 2, 1, 1},
         .rotate_every = 3, .rotate_sides = PP_ROTATE_LEFT, .rotate_basis = PP_ROTATE_MOMENT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].kind == PP_OPTIM_ADAMW_ROTATED && !have_rotated())
            continue;
        check_resume("1f1b-flush", 4, 6, 3, &cases[i]);
        check_resume("pipedream", 2, 8, 4, &cases[i]);
    }
}
END_TEST

/* The state's size: Muon keeps one buffer for its matrices and AdamW's
 * two for the rest; adamw-rotated AdamW's two for every parameter and, per
 * rotated r x c matrix, a covariance and a basis per side (2 r^2 + 2 c^2
 * for both, as ppsim's memory model counts); the delay correction one
 * more buffer of the whole stage; and every state ends with the step
 * count t. */
START_TEST(state_sizes_follow_the_optimizer)
{
    pp_gpt_stage g;
    small_stage(&g);
    size_t nmat = 0, n = g.nparams, left = 0, right = 0;
    for (int i = 0; i < g.ntensors; i++)
        if (pp_muon_matrix(&g.tensors[i])) {
            size_t r = (size_t)g.tensors[i].rows, c = (size_t)g.tensors[i].cols;
            nmat += g.tensors[i].numel;
            left += 2 * r * r;
            right += 2 * c * c;
        }
    pp_optim_config rot_left = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 1, 0.5f);
    rot_left.rotate_sides = PP_ROTATE_LEFT;
    const struct {
        pp_optim_config c;
        size_t floats;
    } want[] = {
        {test_optim_config(PP_OPTIM_ADAMW, 0, 0), 2 * n},
        {test_optim_config(PP_OPTIM_MUON, 0, 0), nmat + 2 * (n - nmat)},
        {test_optim_config(PP_OPTIM_ADAMW, 1, 0.5f), 3 * n},
        {test_optim_config(PP_OPTIM_MUON, 1, 0.5f), nmat + 2 * (n - nmat) + n},
        {test_optim_config(PP_OPTIM_ADAMW_ROTATED, 0, 0), 2 * n + left + right},
        {rot_left, 2 * n + left + n},
    };
    pp_err e = {{0}};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        if (want[k].c.kind == PP_OPTIM_ADAMW_ROTATED && !have_rotated())
            continue;
        pp_cpu_optim o;
        ck_assert_msg(pp_cpu_optim_init(&o, &g, &want[k].c, &e) == 0, "%s", e.msg);
        size_t bytes = pp_cpu_optim_state_bytes(&o);
        ck_assert_uint_eq(bytes, want[k].floats * sizeof(float) + sizeof(double));
        pp_adamw_hparams hp = pp_adamw_defaults();
        float *w = calloc(n, sizeof *w), *grad = calloc(n, sizeof *grad);
        fill_normal(grad, n, 0.1, 5);
        for (int t = 0; t < 3; t++)
            pp_cpu_optim_step(&o, w, grad, 1e-3f, &hp);
        unsigned char *st = malloc(bytes);
        pp_cpu_optim_state_get(&o, st);
        double t;
        memcpy(&t, st + bytes - sizeof t, sizeof t);
        ck_assert(t == 3.0);
        free(st);
        free(w);
        free(grad);
        pp_cpu_optim_free(&o);
    }
    pp_gpt_stage_free(&g);
}
END_TEST

/* A short run with Muon lowers the training loss (by 0.14 nats in 20
 * updates here; AdamW at the same learning rate by 0.22: Muon's scaled
 * update has the RMS of AdamW's later steps, 0.2, not of its first). */
START_TEST(muon_lowers_the_loss)
{
    opt_case muon = {.kind = PP_OPTIM_MUON};
    pp_run_result r = train("1f1b-flush", 2, 4, 20, &muon);
    double first = (r.step_loss[0] + r.step_loss[1]) / 2;
    double last = (r.step_loss[18] + r.step_loss[19]) / 2;
    ck_assert_msg(last < first - 0.1, "Muon: loss %.4f at the start, %.4f after 20 updates",
                  first, last);
    pp_run_result_free(&r);
}
END_TEST

/* A short run with adamw-rotated (the defaults: both sides, the
 * gradient's covariances, a refresh at updates 1, 10 and 20) lowers the
 * training loss, as AdamW's does. */
START_TEST(rotated_lowers_the_loss)
{
    if (!have_rotated())
        return;
    opt_case rot = {.kind = PP_OPTIM_ADAMW_ROTATED};
    pp_run_result r = train("1f1b-flush", 2, 4, 20, &rot);
    double first = (r.step_loss[0] + r.step_loss[1]) / 2;
    double last = (r.step_loss[18] + r.step_loss[19]) / 2;
    ck_assert_msg(last < first - 0.1, "adamw-rotated: loss %.4f at the start, %.4f after 20 "
                  "updates", first, last);
    pp_run_result_free(&r);
}
END_TEST

/* A backend without optimizer_init runs AdamW and refuses the others by
 * name; the CPU and CUDA backends take every optimizer (adamw-rotated on
 * the CPU where the build has LAPACKE). */
START_TEST(a_backend_refuses_what_it_lacks)
{
    pp_backend_ops adamw_only = pp_backend_cpu;
    adamw_only.name = "plain";
    adamw_only.optimizer_init = NULL;
    pp_err e = {{0}};
    pp_optim_config adamw = test_optim_config(PP_OPTIM_ADAMW, 0, 0),
                    muon = test_optim_config(PP_OPTIM_MUON, 0, 0),
                    delay = test_optim_config(PP_OPTIM_ADAMW, 1, 0.5f);
    ck_assert(pp_backend_optimizer_init(&adamw_only, NULL, &adamw, &e) == 0);
    ck_assert(pp_backend_optimizer_init(&adamw_only, NULL, &muon, &e) < 0);
    ck_assert_msg(strstr(e.msg, "--optimizer muon: the plain backend has only adamw"), "%s",
                  e.msg);
    ck_assert(pp_backend_optimizer_init(&pp_backend_cpu, NULL, &muon, &e) == 0);
    ck_assert(pp_backend_optimizer_init(&pp_backend_cpu, NULL, &delay, &e) == 0);
    if (have_rotated()) {
        pp_optim_config rot = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 0, 0);
        ck_assert(pp_backend_optimizer_init(&pp_backend_cpu, NULL, &rot, &e) == 0);
    }
#ifdef PPSCHED_HAVE_CUDA
    ck_assert(pp_backend_optimizer_init(&pp_backend_cuda, NULL, &adamw, &e) == 0);
    ck_assert(pp_backend_optimizer_init(&pp_backend_cuda, NULL, &muon, &e) == 0);
    ck_assert(pp_backend_optimizer_init(&pp_backend_cuda, NULL, &delay, &e) == 0);
    pp_optim_config rot = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 1, 0.5f);
    ck_assert_msg(pp_backend_optimizer_init(&pp_backend_cuda, NULL, &rot, &e) == 0, "%s", e.msg);
#endif
}
END_TEST

int main(void)
{
    Suite *s = suite_create("optimizers");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 600);
    tcase_add_test(t, newton_schulz_singular_values_near_one);
    tcase_add_test(t, newton_schulz_of_zero_is_zero);
    tcase_add_test(t, muon_leaves_the_rest_to_adamw_bit_for_bit);
    tcase_add_test(t, rotated_with_identity_basis_is_adamw_bit_for_bit);
    tcase_add_test(t, rotated_with_fixed_basis_is_adamw_on_the_rotated_problem);
    tcase_add_test(t, refresh_gives_orthonormal_eigenbases_of_the_covariances);
    tcase_add_test(t, delay_correction_with_beta_zero_is_the_plain_optimizer);
    tcase_add_test(t, delay_correction_extrapolates_the_last_two_updates);
    tcase_add_test(t, lr_correction_without_delay_is_none);
    tcase_add_test(t, lr_correction_with_tau_one_changes_nothing);
    tcase_add_test(t, every_optimizer_resumes_bit_identically);
    tcase_add_test(t, state_sizes_follow_the_optimizer);
    tcase_add_test(t, muon_lowers_the_loss);
    tcase_add_test(t, rotated_lowers_the_loss);
    tcase_add_test(t, a_backend_refuses_what_it_lacks);
    suite_add_tcase(s, t);
    return run_suite(s);
}
