/* The CPU reference model and optimizer: gradients against finite
 * differences, split pipelines against the whole model, initialisation
 * independent of the split, AdamW and the LR schedule in closed form, and a
 * short training run that learns. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/adamw.h"
#include "model/cpu_gemm.h"
#include "model/gpt_cpu.h"

/* ------------------------------------------------------------------ */
/* Helpers.                                                            */
/* ------------------------------------------------------------------ */

static pp_model_desc test_model(int layers)
{
    pp_model_desc m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "test");
    m.layers = layers;
    m.dim = 16;
    m.heads = 2;
    m.seq_len = 8;
    m.vocab = 11;
    m.micro_batch = 2;
    m.bytes_per_elem = 4;
    return m;
}

/* A stage with its weights, gradient and one micro-batch of buffers. */
typedef struct {
    pp_gpt_stage g;
    float *w, *grad, *acts, *gacts;
} stage;

static void stage_open(stage *st, const pp_model_desc *m, int P, int s, uint64_t seed)
{
    pp_err e = {{0}};
    ck_assert_msg(pp_gpt_stage_init(&st->g, m, P, s, &e) == 0, "%s", e.msg);
    st->w = malloc(st->g.nparams * sizeof(float));
    st->grad = calloc(st->g.nparams, sizeof(float));
    st->acts = calloc(pp_gpt_acts_floats(&st->g), sizeof(float));
    st->gacts = calloc(pp_gpt_gacts_floats(&st->g), sizeof(float));
    ck_assert(st->w && st->grad && st->acts && st->gacts);
    pp_gpt_stage_init_weights(&st->g, st->w, seed);
}

static void stage_close(stage *st)
{
    free(st->w);
    free(st->grad);
    free(st->acts);
    free(st->gacts);
    pp_gpt_stage_free(&st->g);
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_sym(uint64_t *s)
{
    return (float)((double)(rng_next(s) >> 11) * 0x1.0p-52 - 1.0);
}

static void random_ids(int *ids, size_t n, int V, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = (int)(rng_next(&seed) % (uint64_t)V);
}

/* GPT-2 init makes many gradients tiny (q/k weights, deep biases), too
 * small for a float finite difference to see. The gradient check runs at a
 * generic point instead: every parameter moved by up to +-amp, identically
 * on every split (by tensor name and element). */
static void perturb_weights(const pp_gpt_stage *g, float *w, float amp)
{
    for (int i = 0; i < g->ntensors; i++) {
        const pp_gpt_tensor *t = &g->tensors[i];
        uint64_t s = 0;
        for (const char *p = t->name; *p; p++)
            s = s * 131 + (unsigned char)*p;
        for (size_t k = 0; k < t->numel; k++)
            w[t->offset + k] += amp * rng_sym(&s);
    }
}

static size_t ntokens(const pp_model_desc *m)
{
    return (size_t)m->micro_batch * m->seq_len;
}

static size_t nact(const pp_model_desc *m)
{
    return ntokens(m) * m->dim;
}

/* Loss of a whole (P = 1) model. */
static double whole_loss(stage *st, const int *tok, const int *tgt)
{
    pp_err e = {{0}};
    float loss = 0.0f;
    ck_assert_msg(pp_gpt_forward(&st->g, st->w, tok, NULL, tgt, st->acts, NULL, &loss, &e) == 0,
                  "%s", e.msg);
    return loss;
}

/* ------------------------------------------------------------------ */
/* Matrix multiply.                                                    */
/* ------------------------------------------------------------------ */

/* The blocked kernel against a plain triple loop, A read straight and
 * transposed, over sizes with ragged edges and more than one cache block
 * in k (256) and m (96). Both sum in the same order; the tolerance only
 * allows for FMA contraction under -march=native. */
static void check_gemm(int M, int N, int K, int transposed)
{
    float *A = malloc((size_t)M * K * sizeof *A), *B = malloc((size_t)K * N * sizeof *B);
    float *C = malloc((size_t)M * N * sizeof *C), *R = malloc((size_t)M * N * sizeof *R);
    uint64_t s = (uint64_t)M * 1000003u + (uint64_t)N * 1009u + (uint64_t)K;
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = rng_sym(&s);
    for (size_t i = 0; i < (size_t)K * N; i++)
        B[i] = rng_sym(&s);
    for (size_t i = 0; i < (size_t)M * N; i++)
        C[i] = R[i] = rng_sym(&s);
    size_t ars = transposed ? 1 : (size_t)K, acs = transposed ? (size_t)M : 1;
    pp_gemm_acc(C, A, ars, acs, B, M, N, K);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = R[(size_t)i * N + j], mag = fabsf(acc);
            for (int k = 0; k < K; k++) {
                float p = A[i * ars + k * acs] * B[(size_t)k * N + j];
                acc += p;
                mag += fabsf(p);
            }
            ck_assert_msg(fabsf(C[(size_t)i * N + j] - acc) <= 1e-6f * mag,
                          "%dx%dx%d%s C[%d][%d] %.9g vs %.9g", M, N, K,
                          transposed ? " (A^T)" : "", i, j, C[(size_t)i * N + j], acc);
        }
    free(A);
    free(B);
    free(C);
    free(R);
}

START_TEST(test_gemm_matches_naive)
{
    static const int sizes[][3] = {{1, 1, 1},   {3, 5, 7},    {4, 8, 16},  {16, 48, 16},
                                   {17, 33, 9}, {100, 40, 300}, {200, 19, 520}, {97, 64, 257}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (int tr = 0; tr < 2; tr++)
            check_gemm(sizes[i][0], sizes[i][1], sizes[i][2], tr);
    float src[6] = {1, 2, 3, 4, 5, 6}, dst[6];
    pp_transpose(dst, src, 2, 3);
    float want[6] = {1, 4, 2, 5, 3, 6};
    ck_assert(memcmp(dst, want, sizeof want) == 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Finite differences.                                                 */
/* ------------------------------------------------------------------ */

/* Central differences in fp32. eps = 2^-6: large enough that the float
 * rounding of a loss near 2.4 (~1e-7 relative per forward pass) turns into
 * only ~1e-5 of gradient noise, small enough that the O(eps^2) truncation
 * error stays about as small at this point. The actual perturbation (w + eps
 * rounded to float) divides the difference. Pass: |fd - an| <= ATOL +
 * RTOL * |fd|: the absolute floor covers that noise for gradients near
 * zero, the relative part truncation on large ones. Most sampled gradients
 * are 1e-3..1e-1; the worst case seen uses a quarter of the bound (also
 * with -march=x86-64-v3), while a 2-5% error in one backward term fails. */
#define FD_EPS 0x1.0p-6f
#define ATOL 1e-4
#define RTOL 1e-2

typedef double (*scalar_fn)(void *ctx);

/* d f / d x[i] by central differences, x restored afterwards. */
static double central_diff(float *x, scalar_fn f, void *ctx)
{
    float x0 = *x;
    *x = x0 + FD_EPS;
    double hi = *x, fp = f(ctx);
    *x = x0 - FD_EPS;
    double lo = *x, fm = f(ctx);
    *x = x0;
    return (fp - fm) / (hi - lo);
}

static void assert_grad_close(double fd, double an, const char *what, size_t idx)
{
    ck_assert_msg(fabs(fd - an) <= ATOL + RTOL * fabs(fd),
                  "%s[%zu]: analytic %.6g vs finite difference %.6g", what, idx, an, fd);
}

/* Elements checked per tensor: spread over the tensor, always the first
 * and last. */
#define SAMPLES 6

static size_t sample_index(size_t numel, int k)
{
    if (numel <= SAMPLES)
        return (size_t)k % numel;
    return (size_t)k * (numel - 1) / (SAMPLES - 1);
}

typedef struct {
    stage *st;
    const int *tok, *tgt;
} whole_ctx;

static double whole_fn(void *p)
{
    whole_ctx *c = p;
    return whole_loss(c->st, c->tok, c->tgt);
}

/* Compares every tensor kind of a whole model against finite differences. */
static void check_whole_model_grads(stage *st, const int *tok, const int *tgt)
{
    int seen[PP_GPT_NKINDS] = {0};
    whole_ctx c = {st, tok, tgt};
    whole_loss(st, tok, tgt);
    pp_grad_zero(st->grad, st->g.nparams);
    pp_gpt_backward(&st->g, st->w, st->acts, NULL, NULL, st->grad, 1.0f);
    for (int i = 0; i < st->g.ntensors; i++) {
        const pp_gpt_tensor *t = &st->g.tensors[i];
        seen[t->kind] = 1;
        for (int k = 0; k < SAMPLES; k++) {
            size_t j = t->offset + sample_index(t->numel, k);
            double fd = central_diff(&st->w[j], whole_fn, &c);
            assert_grad_close(fd, st->grad[j], t->name, j - t->offset);
        }
    }
    for (int k = 0; k < PP_GPT_NKINDS; k++)
        ck_assert_msg(seen[k], "tensor kind %d never checked", k);
}

START_TEST(test_grad_whole_model)
{
    pp_model_desc m = test_model(2);
    stage st;
    stage_open(&st, &m, 1, 0, 1234);
    perturb_weights(&st.g, st.w, 0.3f);
    int tok[16], tgt[16];
    random_ids(tok, ntokens(&m), m.vocab, 1);
    random_ids(tgt, ntokens(&m), m.vocab, 2);
    check_whole_model_grads(&st, tok, tgt);
    stage_close(&st);
}
END_TEST

/* A middle stage (1 of 3) seen through f = sum(x_out * r) for a fixed r,
 * whose gradient with respect to x_out is r. */
typedef struct {
    stage *st;
    float *x_in, *x_out;
    const float *r;
    size_t n;
} middle_ctx;

static double middle_fn(void *p)
{
    middle_ctx *c = p;
    pp_err e = {{0}};
    ck_assert(pp_gpt_forward(&c->st->g, c->st->w, NULL, c->x_in, NULL, c->st->acts, c->x_out,
                             NULL, &e) == 0);
    double f = 0.0;
    for (size_t i = 0; i < c->n; i++)
        f += (double)c->x_out[i] * c->r[i];
    return f;
}

START_TEST(test_grad_middle_stage_input)
{
    pp_model_desc m = test_model(3);
    stage st;
    stage_open(&st, &m, 3, 1, 99);
    ck_assert(!st.g.is_first && !st.g.is_last);
    perturb_weights(&st.g, st.w, 0.3f);
    size_t n = nact(&m);
    float *x_in = malloc(n * sizeof *x_in), *x_out = malloc(n * sizeof *x_out);
    float *r = malloc(n * sizeof *r), *dx_in = malloc(n * sizeof *dx_in);
    uint64_t s = 7;
    for (size_t i = 0; i < n; i++) {
        x_in[i] = rng_sym(&s);
        r[i] = 0.1f * rng_sym(&s);
    }
    middle_ctx c = {&st, x_in, x_out, r, n};
    middle_fn(&c);
    pp_gpt_backward(&st.g, st.w, st.acts, r, dx_in, st.grad, 1.0f);
    for (size_t i = 0; i < n; i += 7) {
        double fd = central_diff(&x_in[i], middle_fn, &c);
        assert_grad_close(fd, dx_in[i], "dx_in", i);
    }
    /* The weight gradients of a middle stage too, one matrix and one
     * LayerNorm vector. */
    const char *names[] = {"h1.fc_w", "h1.ln1_b"};
    for (int k = 0; k < 2; k++) {
        const pp_gpt_tensor *t = pp_gpt_stage_find(&st.g, names[k]);
        ck_assert_ptr_nonnull(t);
        for (int j = 0; j < SAMPLES; j++) {
            size_t idx = t->offset + sample_index(t->numel, j);
            double fd = central_diff(&st.w[idx], middle_fn, &c);
            assert_grad_close(fd, st.grad[idx], t->name, idx - t->offset);
        }
    }
    free(x_in);
    free(x_out);
    free(r);
    free(dx_in);
    stage_close(&st);
}
END_TEST

/* The last stage's input gradient, through the loss. */
typedef struct {
    stage *st;
    float *x_in;
    const int *tgt;
} last_ctx;

static double last_fn(void *p)
{
    last_ctx *c = p;
    pp_err e = {{0}};
    float loss;
    ck_assert(pp_gpt_forward(&c->st->g, c->st->w, NULL, c->x_in, c->tgt, c->st->acts, NULL,
                             &loss, &e) == 0);
    return loss;
}

START_TEST(test_grad_last_stage_input)
{
    pp_model_desc m = test_model(2);
    stage st;
    stage_open(&st, &m, 2, 1, 5);
    perturb_weights(&st.g, st.w, 0.3f);
    size_t n = nact(&m);
    float *x_in = malloc(n * sizeof *x_in), *dx_in = malloc(n * sizeof *dx_in);
    uint64_t s = 11;
    for (size_t i = 0; i < n; i++)
        x_in[i] = rng_sym(&s);
    int tgt[16];
    random_ids(tgt, ntokens(&m), m.vocab, 3);
    last_ctx c = {&st, x_in, tgt};
    last_fn(&c);
    pp_gpt_backward(&st.g, st.w, st.acts, NULL, dx_in, st.grad, 1.0f);
    for (size_t i = 0; i < n; i += 5) {
        double fd = central_diff(&x_in[i], last_fn, &c);
        assert_grad_close(fd, dx_in[i], "dx_in", i);
    }
    free(x_in);
    free(dx_in);
    stage_close(&st);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Pipelined by hand = whole model.                                    */
/* ------------------------------------------------------------------ */

/* Forward and backward of one micro-batch through P stages chained by
 * hand, gradients accumulated into each stage's grad; returns the loss. */
static float chain_step(stage *st, int P, const int *tok, const int *tgt, float loss_scale)
{
    pp_err e = {{0}};
    size_t n = nact(&st[0].g.model);
    float *x = malloc((size_t)(P + 1) * n * sizeof *x);
    float *dx = malloc((size_t)(P + 1) * n * sizeof *dx);
    float loss = NAN;
    for (int s = 0; s < P; s++)
        ck_assert_msg(pp_gpt_forward(&st[s].g, st[s].w, tok, s ? x + s * n : NULL, tgt,
                                     st[s].acts, x + (s + 1) * n, &loss, &e) == 0,
                      "%s", e.msg);
    for (int s = P - 1; s >= 0; s--)
        pp_gpt_backward(&st[s].g, st[s].w, st[s].acts, s < P - 1 ? dx + (s + 1) * n : NULL,
                        s ? dx + s * n : NULL, st[s].grad, loss_scale);
    free(x);
    free(dx);
    return loss;
}

/* Every tensor of every stage equals the same-named tensor of whole[0]
 * bit for bit, in weights (which) = 0 or gradients = 1. */
static void assert_split_equal(const stage *whole, const stage *st, int P, int which)
{
    size_t covered = 0;
    for (int s = 0; s < P; s++)
        for (int i = 0; i < st[s].g.ntensors; i++) {
            const pp_gpt_tensor *t = &st[s].g.tensors[i];
            const pp_gpt_tensor *u = pp_gpt_stage_find(&whole->g, t->name);
            ck_assert_msg(u && u->numel == t->numel && u->decay == t->decay, "%s", t->name);
            const float *a = (which ? st[s].grad : st[s].w) + t->offset;
            const float *b = (which ? whole->grad : whole->w) + u->offset;
            for (size_t k = 0; k < t->numel; k++)
                ck_assert_msg(a[k] == b[k], "stage %d/%d %s[%zu]: %.9g vs whole %.9g", s, P,
                              t->name, k, a[k], b[k]);
            covered += t->numel;
        }
    ck_assert_uint_eq(covered, whole->g.nparams);
}

/* The 2-stage chain gives the whole model's loss and gradients exactly:
 * every sum runs in the same order whatever the split, so the brief's
 * ~1e-5 holds with equality (which pipelined training relies on). The
 * chained gradients are also checked against finite differences of the
 * whole model through that equality. */
START_TEST(test_two_stage_chain_equals_whole)
{
    pp_model_desc m = test_model(2);
    stage whole, st[2];
    stage_open(&whole, &m, 1, 0, 42);
    perturb_weights(&whole.g, whole.w, 0.3f);
    for (int s = 0; s < 2; s++) {
        stage_open(&st[s], &m, 2, s, 42);
        perturb_weights(&st[s].g, st[s].w, 0.3f);
    }
    assert_split_equal(&whole, st, 2, 0);
    int tok[16], tgt[16];
    random_ids(tok, ntokens(&m), m.vocab, 8);
    random_ids(tgt, ntokens(&m), m.vocab, 9);
    float lw = chain_step(&whole, 1, tok, tgt, 0.5f);
    float ls = chain_step(st, 2, tok, tgt, 0.5f);
    ck_assert_msg(lw == ls, "loss %.9g vs %.9g", lw, ls);
    assert_split_equal(&whole, st, 2, 1);
    stage_close(&whole);
    for (int s = 0; s < 2; s++)
        stage_close(&st[s]);
}
END_TEST

/* I then W with the gradients of several micro-batches interleaved as a
 * zero-bubble schedule would: same as backward done at once. */
START_TEST(test_split_backward_interleaved)
{
    pp_model_desc m = test_model(3);
    stage st;
    stage_open(&st, &m, 3, 1, 3);
    size_t n = nact(&m), na = pp_gpt_acts_floats(&st.g), ng = pp_gpt_gacts_floats(&st.g);
    size_t np = st.g.nparams;
    float *x = malloc(2 * n * sizeof *x), *y = malloc(n * sizeof *y);
    float *dy = malloc(2 * n * sizeof *dy), *dx = malloc(4 * n * sizeof *dx);
    float *acts = malloc(2 * na * sizeof *acts), *gacts = malloc(2 * ng * sizeof *gacts);
    float *gref = calloc(2 * np, sizeof *gref), *gsplit = calloc(2 * np, sizeof *gsplit);
    uint64_t s = 17;
    for (size_t i = 0; i < 2 * n; i++) {
        x[i] = rng_sym(&s);
        dy[i] = rng_sym(&s);
    }
    pp_err e = {{0}};
    /* Both forwards first, then I(1), I(0), W(0), W(1). */
    for (int k = 0; k < 2; k++)
        ck_assert(pp_gpt_forward(&st.g, st.w, NULL, x + k * n, NULL, acts + k * na, y, NULL,
                                 &e) == 0);
    for (int k = 1; k >= 0; k--)
        pp_gpt_backward_input(&st.g, st.w, acts + k * na, dy + k * n, dx + k * n,
                              gacts + k * ng, 1.0f);
    for (int k = 0; k < 2; k++)
        pp_gpt_backward_weight(&st.g, acts + k * na, gacts + k * ng, gsplit + k * np);
    /* Reference: each micro-batch forward and full backward on its own. */
    for (int k = 0; k < 2; k++) {
        ck_assert(pp_gpt_forward(&st.g, st.w, NULL, x + k * n, NULL, st.acts, y, NULL, &e) ==
                  0);
        pp_gpt_backward(&st.g, st.w, st.acts, dy + k * n, dx + (2 + k) * n, gref + k * np,
                        1.0f);
    }
    ck_assert(memcmp(dx, dx + 2 * n, 2 * n * sizeof *dx) == 0);
    ck_assert(memcmp(gref, gsplit, 2 * np * sizeof *gref) == 0);
    /* Gradients accumulate: a second backward doubles them (to rounding). */
    pp_gpt_backward(&st.g, st.w, st.acts, dy + n, dx, gref + np, 1.0f);
    for (size_t i = 0; i < np; i++)
        ck_assert(fabsf(gref[np + i] - 2.0f * gsplit[np + i]) <=
                  1e-6f * (1.0f + fabsf(gsplit[np + i])));
    free(x);
    free(y);
    free(dy);
    free(dx);
    free(acts);
    free(gacts);
    free(gref);
    free(gsplit);
    stage_close(&st);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Layout and initialisation.                                          */
/* ------------------------------------------------------------------ */

START_TEST(test_init_invariant_under_split)
{
    pp_model_desc m = test_model(5); /* 5 over 3 stages: 2, 2, 1 blocks */
    stage whole, st[3];
    stage_open(&whole, &m, 1, 0, 2024);
    for (int s = 0; s < 3; s++) {
        stage_open(&st[s], &m, 3, s, 2024);
        ck_assert(fabs((double)st[s].g.nparams - pp_model_stage_params(&m, 3, s)) < 0.5);
    }
    ck_assert(fabs((double)whole.g.nparams - pp_model_total_params(&m)) < 0.5);
    assert_split_equal(&whole, st, 3, 0);
    /* A different seed gives different numbers. */
    float *w2 = malloc(whole.g.nparams * sizeof *w2);
    pp_gpt_stage_init_weights(&whole.g, w2, 2025);
    ck_assert(memcmp(w2, whole.w, whole.g.nparams * sizeof *w2) != 0);
    free(w2);
    stage_close(&whole);
    for (int s = 0; s < 3; s++)
        stage_close(&st[s]);
}
END_TEST

static double tensor_std(const float *x, size_t n)
{
    double s = 0.0, s2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
        s2 += (double)x[i] * x[i];
    }
    return sqrt(s2 / n - (s / n) * (s / n));
}

START_TEST(test_init_values_and_decay_flags)
{
    pp_model_desc m = test_model(2);
    m.dim = 64;
    m.heads = 4;
    m.vocab = 65;
    stage st;
    stage_open(&st, &m, 1, 0, 1);
    double resid = 0.02 / sqrt(4.0);
    for (int i = 0; i < st.g.ntensors; i++) {
        const pp_gpt_tensor *t = &st.g.tensors[i];
        const float *x = st.w + t->offset;
        int matrix = t->cols > 1;
        ck_assert_int_eq(t->decay, matrix);
        if (matrix) {
            double want = t->kind == PP_GPT_ATTN_W || t->kind == PP_GPT_PROJ_W ? resid : 0.02;
            double got = tensor_std(x, t->numel);
            ck_assert_msg(fabs(got - want) < 0.1 * want, "%s std %g, want %g", t->name, got,
                          want);
        } else {
            int ln_weight = t->kind == PP_GPT_LN1_W || t->kind == PP_GPT_LN2_W ||
                            t->kind == PP_GPT_LNF_W;
            for (size_t k = 0; k < t->numel; k++)
                ck_assert(x[k] == (ln_weight ? 1.0f : 0.0f));
        }
    }
    ck_assert_ptr_nonnull(pp_gpt_stage_find(&st.g, "h1.proj_b"));
    ck_assert_ptr_null(pp_gpt_stage_find(&st.g, "h2.proj_b"));
    stage_close(&st);
}
END_TEST

START_TEST(test_bad_inputs)
{
    pp_model_desc m = test_model(2);
    pp_gpt_stage g;
    pp_err e = {{0}};
    ck_assert_int_eq(pp_gpt_stage_init(&g, &m, 3, 0, &e), -1); /* more stages than layers */
    ck_assert_int_eq(pp_gpt_stage_init(&g, &m, 2, 2, &e), -1);
    m.heads = 3;
    ck_assert_int_eq(pp_gpt_stage_init(&g, &m, 1, 0, &e), -1);
    m = test_model(2);
    stage st;
    stage_open(&st, &m, 1, 0, 1);
    int tok[16] = {0}, tgt[16] = {0};
    float loss;
    tok[3] = 11;
    ck_assert_int_eq(pp_gpt_forward(&st.g, st.w, tok, NULL, tgt, st.acts, NULL, &loss, &e), -1);
    ck_assert_ptr_nonnull(strstr(e.msg, "token 11"));
    tok[3] = 0;
    tgt[15] = -1;
    ck_assert_int_eq(pp_gpt_forward(&st.g, st.w, tok, NULL, tgt, st.acts, NULL, &loss, &e), -1);
    stage_close(&st);
}
END_TEST

/* ------------------------------------------------------------------ */
/* AdamW and the schedule.                                             */
/* ------------------------------------------------------------------ */

START_TEST(test_adamw_first_step_closed_form)
{
    pp_adamw o;
    pp_err e;
    ck_assert(pp_adamw_init(&o, 4, pp_adamw_defaults(), &e) == 0);
    float w[4] = {0.5f, -1.0f, 2.0f, 0.25f}, w0[4];
    float g[4] = {0.1f, -0.02f, 0.0f, 3.0f};
    memcpy(w0, w, sizeof w);
    float lr = 0.01f;
    pp_adamw_begin_step(&o);
    pp_adamw_update(&o, w, g, 0, 2, 1, lr); /* decayed */
    pp_adamw_update(&o, w, g, 2, 2, 0, lr); /* not decayed */
    ck_assert_int_eq(o.t, 1);
    /* At t = 1 bias correction gives mhat = g, vhat = g^2, so the step is
     * lr * (g / (|g| + eps) + wd * w). */
    for (int i = 0; i < 4; i++) {
        double wd = i < 2 ? 0.1 : 0.0;
        double want = w0[i] - lr * (g[i] / (fabs(g[i]) + 1e-8) + wd * w0[i]);
        ck_assert_msg(fabs(w[i] - want) < 1e-6, "w[%d] %.9g want %.9g", i, w[i], want);
        ck_assert(fabs(o.m[i] - 0.1 * g[i]) < 1e-6 * (1e-3 + fabs(o.m[i])));
        ck_assert(fabs(o.v[i] - 0.05 * g[i] * g[i]) < 1e-6 * (1e-3 + o.v[i]));
    }
    ck_assert(w[2] == w0[2]); /* zero gradient, no decay: untouched */
    /* Second step with the same gradient: m = 0.19 g, v = 0.0975 g^2,
     * mhat = 0.19 g / 0.19, vhat = 0.0975 g^2 / 0.0975: the same step. */
    float w1[4];
    memcpy(w1, w, sizeof w);
    pp_adamw_begin_step(&o);
    pp_adamw_update(&o, w, g, 0, 4, 0, lr);
    for (int i = 0; i < 4; i++) {
        double want = w1[i] - lr * (g[i] / (fabs(g[i]) + 1e-8));
        ck_assert_msg(fabs(w[i] - want) < 1e-6, "step 2 w[%d] %.9g want %.9g", i, w[i], want);
    }
    pp_adamw_free(&o);
}
END_TEST

START_TEST(test_adamw_decay_only_where_flagged)
{
    pp_model_desc m = test_model(2);
    stage st;
    stage_open(&st, &m, 1, 0, 6);
    pp_adamw o;
    pp_err e;
    ck_assert(pp_adamw_init(&o, st.g.nparams, pp_adamw_defaults(), &e) == 0);
    float *w0 = malloc(st.g.nparams * sizeof *w0);
    memcpy(w0, st.w, st.g.nparams * sizeof *w0);
    pp_grad_zero(st.grad, st.g.nparams);
    pp_gpt_adamw_step(&st.g, &o, st.w, st.grad, 0.5f);
    /* Zero gradient: only decay moves weights, by the factor 1 - lr wd. */
    for (int i = 0; i < st.g.ntensors; i++) {
        const pp_gpt_tensor *t = &st.g.tensors[i];
        float f = t->decay ? 1.0f - 0.5f * 0.1f : 1.0f;
        for (size_t k = 0; k < t->numel; k++) {
            size_t j = t->offset + k;
            ck_assert_msg(fabsf(st.w[j] - f * w0[j]) <= 4e-7f * fabsf(w0[j]), "%s",
                          t->name);
        }
    }
    free(w0);
    pp_adamw_free(&o);
    stage_close(&st);
}
END_TEST

START_TEST(test_lr_schedule)
{
    pp_lr_schedule s = {1e-3f, 1e-4f, 10, 110};
    ck_assert(fabsf(pp_lr_at(&s, 0) - 1e-4f) < 1e-9f);  /* (0 + 1) / 10 */
    ck_assert(fabsf(pp_lr_at(&s, 4) - 5e-4f) < 1e-9f);  /* mid warm-up */
    ck_assert(fabsf(pp_lr_at(&s, 9) - 1e-3f) < 1e-9f);  /* end of warm-up */
    ck_assert(fabsf(pp_lr_at(&s, 10) - 1e-3f) < 1e-9f); /* cosine starts at lr */
    ck_assert(fabsf(pp_lr_at(&s, 60) - 5.5e-4f) < 1e-9f); /* half way down */
    ck_assert(fabsf(pp_lr_at(&s, 110) - 1e-4f) < 1e-9f);  /* end */
    ck_assert(fabsf(pp_lr_at(&s, 500) - 1e-4f) < 1e-9f);  /* and after */
    for (long t = 10; t < 110; t++)
        ck_assert(pp_lr_at(&s, t + 1) <= pp_lr_at(&s, t));
    pp_lr_schedule flat = {1e-3f, 1e-3f, 0, 100};
    ck_assert(pp_lr_at(&flat, 0) == 1e-3f);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Training.                                                           */
/* ------------------------------------------------------------------ */

/* Steps of 2 micro-batches (loss_scale 1/2) over P stages chained by hand;
 * losses[step] is the mean of the step's micro-batch losses. */
static void train(int P, int steps, float *losses)
{
    pp_model_desc m = test_model(2);
    stage st[2];
    pp_adamw opt[2];
    pp_err e;
    for (int s = 0; s < P; s++) {
        stage_open(&st[s], &m, P, s, 77);
        ck_assert(pp_adamw_init(&opt[s], st[s].g.nparams, pp_adamw_defaults(), &e) == 0);
    }
    /* A fixed batch the model can memorise: predict the next symbol of a
     * repeating pattern. */
    int tok[2][16], tgt[2][16];
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 16; i++) {
            tok[k][i] = (3 * i + k) % 11;
            tgt[k][i] = (3 * i + k + 3) % 11;
        }
    pp_lr_schedule sched = {1e-2f, 1e-3f, 3, steps};
    for (int t = 0; t < steps; t++) {
        for (int s = 0; s < P; s++)
            pp_grad_zero(st[s].grad, st[s].g.nparams);
        losses[t] = 0.0f;
        for (int k = 0; k < 2; k++)
            losses[t] += 0.5f * chain_step(st, P, tok[k], tgt[k], 0.5f);
        for (int s = 0; s < P; s++)
            pp_gpt_adamw_step(&st[s].g, &opt[s], st[s].w, st[s].grad, pp_lr_at(&sched, t));
    }
    for (int s = 0; s < P; s++) {
        pp_adamw_free(&opt[s]);
        stage_close(&st[s]);
    }
}

START_TEST(test_training_reduces_loss)
{
    enum { STEPS = 40 };
    float l1[STEPS], l2[STEPS];
    train(1, STEPS, l1);
    ck_assert_msg(fabsf(l1[0] - logf(11.0f)) < 0.1f, "initial loss %g", l1[0]);
    ck_assert_msg(l1[STEPS - 1] < 0.5f * l1[0], "loss %g -> %g", l1[0], l1[STEPS - 1]);
    /* Pipelined over two stages: the same losses, exactly. */
    train(2, STEPS, l2);
    for (int t = 0; t < STEPS; t++)
        ck_assert_msg(l1[t] == l2[t], "step %d: %.9g vs %.9g", t, l1[t], l2[t]);
}
END_TEST

static Suite *gpt_cpu_suite(void)
{
    Suite *s = suite_create("gpt_cpu");
    TCase *gemm = tcase_create("gemm");
    tcase_add_test(gemm, test_gemm_matches_naive);
    suite_add_tcase(s, gemm);
    TCase *grad = tcase_create("gradients");
    tcase_add_test(grad, test_grad_whole_model);
    tcase_add_test(grad, test_grad_middle_stage_input);
    tcase_add_test(grad, test_grad_last_stage_input);
    tcase_add_test(grad, test_two_stage_chain_equals_whole);
    tcase_add_test(grad, test_split_backward_interleaved);
    suite_add_tcase(s, grad);
    TCase *init = tcase_create("init");
    tcase_add_test(init, test_init_invariant_under_split);
    tcase_add_test(init, test_init_values_and_decay_flags);
    tcase_add_test(init, test_bad_inputs);
    suite_add_tcase(s, init);
    TCase *opt = tcase_create("adamw");
    tcase_add_test(opt, test_adamw_first_step_closed_form);
    tcase_add_test(opt, test_adamw_decay_only_where_flagged);
    tcase_add_test(opt, test_lr_schedule);
    suite_add_tcase(s, opt);
    TCase *train_tc = tcase_create("training");
    tcase_add_test(train_tc, test_training_reduces_loss);
    suite_add_tcase(s, train_tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(gpt_cpu_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
