/* The optimizers of the executor (model/optim.h, model/cpu_optim.h):
 * Newton-Schulz gives singular values near 1, Muon leaves every parameter
 * that is not a hidden matrix to AdamW bit for bit, the delay correction
 * with beta 0 and the learning-rate correction without delay change
 * nothing, every optimizer resumes from a checkpoint bit for bit, Muon
 * trains, and a backend without an optimizer refuses it. */
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
#include "test_support.h"

#ifdef PPSCHED_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

/* --- helpers -------------------------------------------------------- */

/* A seeded standard normal (Box-Muller over a 64-bit LCG). */
static double normal(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    double u1 = ((*state >> 11) + 1.0) / 9007199254740994.0;
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    double u2 = (*state >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

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

/* K updates of w (from the same start) with the optimizer cfg, seeded
 * gradients, a learning rate that changes every step. */
static float *optimize(const pp_gpt_stage *g, const pp_optim_config *cfg, int K)
{
    size_t n = g->nparams;
    float *w = malloc(n * sizeof *w), *grad = malloc(n * sizeof *grad);
    pp_gpt_stage_init_weights(g, w, 7);
    pp_cpu_optim o;
    pp_err e = {{0}};
    ck_assert_msg(pp_cpu_optim_init(&o, g, cfg, &e) == 0, "%s", e.msg);
    pp_adamw_hparams hp = pp_adamw_defaults();
    for (int k = 0; k < K; k++) {
        fill_normal(grad, n, 0.01, 1000 + (uint64_t)k);
        pp_cpu_optim_step(&o, w, grad, 1e-2f / (float)(k + 1), &hp);
    }
    pp_cpu_optim_free(&o);
    free(grad);
    return w;
}

static pp_optim_config config(pp_optim_kind kind, int delay_buffer, float beta)
{
    pp_optim_config c = pp_optim_defaults();
    c.kind = kind;
    c.delay_buffer = delay_buffer;
    c.delay_beta = beta;
    return c;
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
    pp_optim_config adamw = config(PP_OPTIM_ADAMW, 0, 0), muon = config(PP_OPTIM_MUON, 0, 0);
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

/* --- the delay correction and the learning-rate correction ------------ */

/* Keeping the last update but extrapolating with beta 0 applies the
 * optimizer's own update, bit for bit, for every optimizer; beta 0.5
 * changes the result. */
START_TEST(delay_correction_with_beta_zero_is_the_plain_optimizer)
{
    pp_gpt_stage g;
    small_stage(&g);
    for (int kind = PP_OPTIM_ADAMW; kind <= PP_OPTIM_MUON; kind++) {
        pp_optim_config plain = config(kind, 0, 0), zero = config(kind, 1, 0),
                        half = config(kind, 1, 0.5f);
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
} opt_case;

static void configure(pp_run_config *c, const opt_case *k)
{
    c->optim = config(k->kind, k->beta != 0, k->beta);
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
    opt_case plain = {PP_OPTIM_ADAMW, 0, 0, {0}}, ones = {PP_OPTIM_ADAMW, 0, 8, {1, 1, 1}},
             late = {PP_OPTIM_ADAMW, 0, 8, {3, 2, 1}};
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
        {PP_OPTIM_ADAMW, 0, 0, {0}},
        {PP_OPTIM_MUON, 0, 0, {0}},
        {PP_OPTIM_ADAMW, 0.5f, 0, {0}},
        {PP_OPTIM_MUON, 0.5f, 0, {0}},
        {PP_OPTIM_MUON, 0.5f, 6, {3, 2, 1, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_resume("1f1b-flush", 4, 6, 3, &cases[i]);
        check_resume("pipedream", 2, 8, 4, &cases[i]);
    }
}
END_TEST

/* The state's size: Muon keeps one buffer for its matrices and AdamW's
 * two for the rest, the delay correction one more of the whole stage,
 * and every state ends with the step count t. */
START_TEST(state_sizes_follow_the_optimizer)
{
    pp_gpt_stage g;
    small_stage(&g);
    size_t nmat = 0, n = g.nparams;
    for (int i = 0; i < g.ntensors; i++)
        nmat += pp_muon_matrix(&g.tensors[i]) ? g.tensors[i].numel : 0;
    const struct {
        pp_optim_config c;
        size_t floats;
    } want[] = {
        {config(PP_OPTIM_ADAMW, 0, 0), 2 * n},
        {config(PP_OPTIM_MUON, 0, 0), nmat + 2 * (n - nmat)},
        {config(PP_OPTIM_ADAMW, 1, 0.5f), 3 * n},
        {config(PP_OPTIM_MUON, 1, 0.5f), nmat + 2 * (n - nmat) + n},
    };
    pp_err e = {{0}};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
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
    opt_case muon = {PP_OPTIM_MUON, 0, 0, {0}};
    pp_run_result r = train("1f1b-flush", 2, 4, 20, &muon);
    double first = (r.step_loss[0] + r.step_loss[1]) / 2;
    double last = (r.step_loss[18] + r.step_loss[19]) / 2;
    ck_assert_msg(last < first - 0.1, "Muon: loss %.4f at the start, %.4f after 20 updates",
                  first, last);
    pp_run_result_free(&r);
}
END_TEST

/* A backend without optimizer_init runs AdamW and refuses the others by
 * name; the CUDA backend refuses Muon and the delay correction so far. */
START_TEST(a_backend_refuses_what_it_lacks)
{
    pp_backend_ops adamw_only = pp_backend_cpu;
    adamw_only.name = "plain";
    adamw_only.optimizer_init = NULL;
    pp_err e = {{0}};
    pp_optim_config adamw = config(PP_OPTIM_ADAMW, 0, 0), muon = config(PP_OPTIM_MUON, 0, 0),
                    delay = config(PP_OPTIM_ADAMW, 1, 0.5f);
    ck_assert(pp_backend_optimizer_init(&adamw_only, NULL, &adamw, &e) == 0);
    ck_assert(pp_backend_optimizer_init(&adamw_only, NULL, &muon, &e) < 0);
    ck_assert_msg(strstr(e.msg, "--optimizer muon: the plain backend has only adamw"), "%s",
                  e.msg);
    ck_assert(pp_backend_optimizer_init(&pp_backend_cpu, NULL, &muon, &e) == 0);
    ck_assert(pp_backend_optimizer_init(&pp_backend_cpu, NULL, &delay, &e) == 0);
    ck_assert(pp_optim_executable(PP_OPTIM_ADAMW_ROTATED, &e) < 0);
    ck_assert_msg(strstr(e.msg, "adamw-rotated: not yet"), "%s", e.msg);
#ifdef PPSCHED_HAVE_CUDA
    ck_assert(pp_backend_optimizer_init(&pp_backend_cuda, NULL, &adamw, &e) == 0);
    ck_assert(pp_backend_optimizer_init(&pp_backend_cuda, NULL, &muon, &e) < 0);
    ck_assert_msg(strstr(e.msg, "cuda backend has only adamw"), "%s", e.msg);
    ck_assert(pp_backend_optimizer_init(&pp_backend_cuda, NULL, &delay, &e) < 0);
    ck_assert_msg(strstr(e.msg, "--delay-correction"), "%s", e.msg);
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
    tcase_add_test(t, delay_correction_with_beta_zero_is_the_plain_optimizer);
    tcase_add_test(t, delay_correction_extrapolates_the_last_two_updates);
    tcase_add_test(t, lr_correction_without_delay_is_none);
    tcase_add_test(t, lr_correction_with_tau_one_changes_nothing);
    tcase_add_test(t, every_optimizer_resumes_bit_identically);
    tcase_add_test(t, state_sizes_follow_the_optimizer);
    tcase_add_test(t, muon_lowers_the_loss);
    tcase_add_test(t, a_backend_refuses_what_it_lacks);
    suite_add_tcase(s, t);
    return run_suite(s);
}
