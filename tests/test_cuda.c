/* The CUDA backend against the CPU reference (label "gpu").
 *
 * Without a usable GPU (or in a build without CUDA) it prints
 * "SKIP: no CUDA GPU: <reason>" and exits 0; CTest reports it as skipped.
 *
 * With a GPU, on a tiny model (2 layers, width 32, 2 heads, sequence 16,
 * vocabulary 29, micro-batch 2), split over P = 1 and P = 2 stages:
 *   - forward: loss and every stage output x_out;
 *   - backward (I then W, two micro-batches accumulated, loss scale 0.5):
 *     every stage input gradient dx_in and every gradient tensor;
 *   - ten AdamW steps: the loss of every step, then the weights and the
 *     optimizer state (m, v, t) through opt_state_get;
 *   - the stage runtime (threads, streams, in-process transport) running
 *     1F1B and PipeDream-2BW on both backends: the per-update losses;
 *   - SM partitions (CUDA green contexts): P = 2 stages on two partitions of
 *     device 0, forward/backward parity as above and 1F1B through the
 *     runtime; asking for more partitions than the GPU has SMs for fails;
 *   - device clocks: non-negative times that increase around forwards;
 *   - attention through cuDNN (PPSCHED_CUDA_ATTENTION=cudnn) against cuBLAS,
 *     both in bf16 math (the suite's fp32 tolerances do not apply):
 *     losses within 1e-2 and every gradient tensor within 2e-2 (relative
 *     norm of the difference) over two micro-batches whose backwards run
 *     after both forwards, the path each stage reports, and activations
 *     smaller by the B H T^2 probabilities of every block;
 *   - bf16 storage (PPSCHED_CUDA_MATH=bf16: bf16 products and activations,
 *     fp32 master weights) against the fp32 CPU: losses within 1e-2,
 *     every gradient tensor within 2e-2 (relative norm of the
 *     difference), the loss after new weights come through from_host (the
 *     bf16 weight copy re-made), ten AdamW steps whose losses track the
 *     CPU's within 2e-2, and activations under 0.6 of fp32 storage's.
 *
 * Tolerances (fp32, PPSCHED_CUDA_MATH unset or fp32): a tensor matches when
 *     max_i |cuda_i - cpu_i| <= 1e-4 * max_i |cpu_i|
 * i.e. a relative error of 1e-4 in the max norm of that tensor (loss:
 * |cuda - cpu| <= 1e-4 |cpu|). Sums run in different orders on the two
 * devices (cuBLAS tiles, warp reductions), so elements agree to ~1e-6 of
 * the tensor scale, not bit for bit.
 *
 * Training (ten AdamW steps on a fixed batch): the first loss within 1e-4,
 * the later ones within 5e-4 relative, the AdamW first moment within 1e-3
 * (max norm). The weights themselves are not compared after training: AdamW
 * divides by sqrt(v), so a gradient element that is roundoff-small flips
 * sign between the devices and moves its weight by +-lr on one and -+lr on
 * the other. The update rule is checked exactly instead (test_adamw_exact):
 * identical weights and gradients on both backends, three steps with weight
 * decay, every tensor within 1e-4, which also checks the per-tensor decay
 * flags (decay moves a weight by 0.1 lr w per step, 1e-3 of w here).
 *
 * The other optimizers (optim.h) the same way:
 *   - Muon (momentum, Newton-Schulz, AdamW for the rest), Muon with the
 *     delay correction, AdamW with the delay correction: three steps on
 *     identical weights and gradients (test_optimizers_exact: every weight
 *     tensor within 1e-4 and every part of the optimizer state within
 *     1e-3, which also checks that both backends pick the same hidden
 *     matrices and lay the state out alike), five training steps
 *     (test_muon_steps, test_delay_steps: the losses, the first part of
 *     the state, the state's size against the memory accounting), and the
 *     runtime running PipeDream-2BW with Muon and the delay correction
 *     (test_runtime_muon);
 *   - adamw-rotated: with its bases pinned to the same random orthogonal
 *     matrices on both backends (rotate_every 0), three steps on identical
 *     weights and gradients give every weight within 1e-4 and every part
 *     of the state within 1e-3 (test_rotated_exact); with a refresh at
 *     every update, where cuSOLVER and LAPACK may pick different (equally
 *     valid) eigenvectors, the refresh is checked by what it must give:
 *     orthonormal bases that diagonalise their covariances in ascending
 *     order, covariances and first moments equal to the CPU's, every
 *     parameter that does not rotate equal to the CPU's, and a covariance
 *     gone to nan leaving the basis as it was (test_rotated_refresh); the
 *     runtime with pinned (identity) bases under PipeDream
 *     (test_runtime_rotated);
 *   - resume: a CUDA stage given another's weights and optimizer state
 *     through opt_state_get/put continues bit for bit, for Muon and for
 *     adamw-rotated with refreshes after the cut (test_optimizer_resume);
 *   - optimizer_init: adamw, muon and adamw-rotated, each with and without
 *     the delay correction (test_optimizer_choices).
 * Newton-Schulz (x -> a x + b x^3 + c x^5, five times) multiplies the
 * roundoff along a singular value s << 1 of its normalised input by up to
 * a^5 ~ 490; random gradients keep s away from zero (a normalised random
 * 32 x 96 matrix has s >= ~0.07, a 32 x 32 one rarely below 1e-3), so the
 * Muon weights still agree to ~1e-6 of their scale. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef PPSCHED_HAVE_CUDA

#include "model/backend.h"
#include "cuda/cuda_backend.h"
#include "model/cpu_optim.h"
#include "model/gpt_cpu.h"
#include "registry.h"
#include "runtime/runtime.h"
#include "synth_data.h"
#include "test_linalg.h"
#define PP_TEST_NEEDS_GPU
#include "test_support.h"

#define TOL 1e-4
#define TOL_STEPS 5e-4
#define TOL_MOMENT 1e-3
#define MAXP 2

static pp_model_desc tiny_model(void)
{
    pp_model_desc m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "tiny-cuda-test");
    m.layers = 2;
    m.dim = 32;
    m.heads = 2;
    m.seq_len = 16;
    m.vocab = 29;
    m.micro_batch = 2;
    m.bytes_per_elem = 4;
    return m;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void random_ids(int *ids, size_t n, int V, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = (int)(rng_next(&seed) % (uint64_t)V);
}

/* max |a - b| / max |b| (0 when both are zero). */
static double rel_err(const float *a, const float *b, size_t n)
{
    double d = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > d || isnan(e))
            d = isnan(e) ? INFINITY : e;
        if (fabs((double)b[i]) > s)
            s = fabs((double)b[i]);
    }
    if (s == 0.0)
        return d == 0.0 ? 0.0 : INFINITY;
    return d / s;
}

/* |a - b| / |b| in the 2-norm (0 when both are zero). */
static double rel_norm_err(const float *a, const float *b, size_t n)
{
    double d = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double x = (double)a[i] - b[i];
        d += x * x;
        s += (double)b[i] * b[i];
    }
    if (s == 0.0)
        return d == 0.0 ? 0.0 : INFINITY;
    return isnan(d) ? INFINITY : sqrt(d / s);
}

/* A pipeline of P stages of one backend, driven by hand. */
typedef struct {
    const pp_backend_ops *b;
    int P;
    size_t nb; /* bytes of one boundary message */
    void *st[MAXP], *w[MAXP], *grad[MAXP], *acts[MAXP], *x[MAXP], *dx[MAXP];
    pp_gpt_stage tab[MAXP]; /* tensor names and offsets (host) */
} pipe;

/* partitions > 0: stage s on SM partition s of that many on device 0. */
static void pipe_open_at(pipe *p, const pp_backend_ops *b, const pp_model_desc *m, int P,
                         int partitions, uint64_t seed)
{
    pp_err e = {{0}};
    memset(p, 0, sizeof *p);
    p->b = b;
    p->P = P;
    for (int s = 0; s < P; s++) {
        pp_placement at =
            partitions > 0 ? (pp_placement){0, s, partitions, 1} : PP_PLACEMENT_WHOLE(0);
        ck_assert_msg(b->create(m, P, s, &at, &p->st[s], &e) == 0, "%s", e.msg);
        ck_assert_msg(pp_gpt_stage_init(&p->tab[s], m, P, s, &e) == 0, "%s", e.msg);
        size_t wb = b->nparams(p->st[s]) * sizeof(float);
        ck_assert_uint_eq(b->nparams(p->st[s]), p->tab[s].nparams);
        p->nb = b->boundary_floats(p->st[s]) * sizeof(float);
        p->w[s] = b->alloc(p->st[s], wb);
        p->grad[s] = b->alloc(p->st[s], wb);
        p->acts[s] = b->alloc(p->st[s], b->acts_bytes(p->st[s]));
        p->x[s] = b->alloc(p->st[s], p->nb);
        p->dx[s] = b->alloc(p->st[s], p->nb);
        ck_assert(p->w[s] && p->grad[s] && p->acts[s] && p->x[s] && p->dx[s]);
        b->init_weights(p->st[s], p->w[s], seed);
        ck_assert(b->sync(p->st[s], NULL) == 0);
    }
}

static void pipe_open(pipe *p, const pp_backend_ops *b, const pp_model_desc *m, int P,
                      uint64_t seed)
{
    pipe_open_at(p, b, m, P, 0, seed);
}

static void pipe_close(pipe *p)
{
    for (int s = 0; s < p->P; s++) {
        void *bufs[] = {p->w[s], p->grad[s], p->acts[s], p->x[s], p->dx[s]};
        for (int i = 0; i < 5; i++)
            p->b->release(p->st[s], bufs[i]);
        p->b->destroy(p->st[s]);
        pp_gpt_stage_free(&p->tab[s]);
    }
}

/* Forward through every stage; the loss of the last. Stage s's output is
 * stage s+1's input (one device: the buffer is passed as is, after a sync). */
static float pipe_forward(pipe *p, const int *tok, const int *tgt)
{
    pp_err e = {{0}};
    float loss = NAN;
    for (int s = 0; s < p->P; s++) {
        int first = s == 0, last = s == p->P - 1;
        ck_assert_msg(p->b->forward(p->st[s], p->w[s], first ? tok : NULL,
                                    first ? NULL : p->x[s - 1], last ? tgt : NULL, p->acts[s],
                                    last ? NULL : p->x[s], last ? &loss : NULL, &e) == 0,
                      "%s", e.msg);
        ck_assert(p->b->sync(p->st[s], NULL) == 0);
    }
    return loss;
}

static void pipe_backward(pipe *p, float scale)
{
    for (int s = p->P - 1; s >= 0; s--) {
        int first = s == 0, last = s == p->P - 1;
        ck_assert(p->b->backward_input(p->st[s], p->w[s], p->acts[s],
                                       last ? NULL : p->dx[s + 1], first ? NULL : p->dx[s],
                                       scale, NULL) == 0);
        ck_assert(p->b->sync(p->st[s], NULL) == 0);
    }
    for (int s = 0; s < p->P; s++) {
        ck_assert(p->b->backward_weight(p->st[s], p->acts[s], p->grad[s], NULL) == 0);
        ck_assert(p->b->sync(p->st[s], NULL) == 0);
    }
}

static float *host_copy(pipe *p, int s, const void *dev, size_t bytes)
{
    float *h = malloc(bytes ? bytes : 1);
    ck_assert(h);
    p->b->to_host(p->st[s], h, dev, bytes);
    return h;
}

/* Every tensor of a flat array (weights or gradients) of stage s. */
static void compare_tensors(pipe *gpu, pipe *cpu, int s, void *dg, void *dc, double tol,
                            const char *what)
{
    size_t bytes = cpu->tab[s].nparams * sizeof(float);
    float *g = host_copy(gpu, s, dg, bytes), *c = host_copy(cpu, s, dc, bytes);
    for (int i = 0; i < cpu->tab[s].ntensors; i++) {
        const pp_gpt_tensor *t = &cpu->tab[s].tensors[i];
        double r = rel_err(g + t->offset, c + t->offset, t->numel);
        ck_assert_msg(r <= tol, "P=%d stage %d %s %s: relative error %.3g > %.1g", cpu->P, s,
                      what, t->name, r, tol);
    }
    free(g);
    free(c);
}

static void compare_buffer(pipe *gpu, pipe *cpu, int s, void *dg, void *dc, const char *what)
{
    float *g = host_copy(gpu, s, dg, cpu->nb), *c = host_copy(cpu, s, dc, cpu->nb);
    double r = rel_err(g, c, cpu->nb / sizeof(float));
    ck_assert_msg(r <= TOL, "P=%d stage %d %s: relative error %.3g > %.1g", cpu->P, s, what, r,
                  TOL);
    free(g);
    free(c);
}

static void check_loss(float g, float c, double tol, const char *what)
{
    ck_assert_msg(isfinite(g) && fabs((double)g - c) <= tol * fabs((double)c),
                  "%s: cuda %.8g cpu %.8g (tolerance %.1g relative)", what, g, c, tol);
}

/* ------------------------------------------------------------------ */

START_TEST(test_available)
{
    pp_err e = {{0}};
    ck_assert_msg(pp_cuda_available(&e) == 0, "%s", e.msg);
    const pp_backend_ops *b = pp_backend_find("cuda", &e);
    ck_assert_msg(b == &pp_backend_cuda, "%s", e.msg);
    char name[128];
    pp_cuda_device_name(0, name, sizeof name);
    printf("test_cuda: device 0: %s\n", name);
}
END_TEST

/* The same weights on both backends, byte for byte. */
START_TEST(test_init_weights)
{
    pp_model_desc m = tiny_model();
    for (int P = 1; P <= MAXP; P++) {
        pipe g, c;
        pipe_open(&g, &pp_backend_cuda, &m, P, 7);
        pipe_open(&c, &pp_backend_cpu, &m, P, 7);
        for (int s = 0; s < P; s++) {
            size_t bytes = c.tab[s].nparams * sizeof(float);
            float *hg = host_copy(&g, s, g.w[s], bytes);
            ck_assert(memcmp(hg, c.w[s], bytes) == 0);
            free(hg);
        }
        pipe_close(&g);
        pipe_close(&c);
    }
}
END_TEST

/* Loss, x_out, dx_in and every gradient tensor of P stages (on SM
 * partitions of device 0 when partitions > 0) against the CPU, two
 * micro-batches accumulated into the gradient. */
static void check_parity(const pp_model_desc *mp, int P, int partitions)
{
    pp_model_desc m = *mp;
    size_t n = (size_t)m.micro_batch * m.seq_len;
    int *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    pipe g, c;
    pipe_open_at(&g, &pp_backend_cuda, &m, P, partitions, 1234);
    pipe_open(&c, &pp_backend_cpu, &m, P, 1234);
    for (int mb = 0; mb < 2; mb++) {
        random_ids(tok, n, m.vocab, 100 + mb);
        random_ids(tgt, n, m.vocab, 200 + mb);
        float lg = pipe_forward(&g, tok, tgt), lc = pipe_forward(&c, tok, tgt);
        check_loss(lg, lc, TOL, "forward loss");
        for (int s = 0; s + 1 < P; s++)
            compare_buffer(&g, &c, s, g.x[s], c.x[s], "x_out");
        pipe_backward(&g, 0.5f);
        pipe_backward(&c, 0.5f);
        for (int s = 1; s < P; s++)
            compare_buffer(&g, &c, s, g.dx[s], c.dx[s], "dx_in");
    }
    for (int s = 0; s < P; s++)
        compare_tensors(&g, &c, s, g.grad[s], c.grad[s], TOL, "gradient");

    /* Memory accounting sees the weights, the gradient (once used as
     * one), the optimizer state and the activations. */
    for (int s = 0; s < P; s++) {
        pp_cuda_memory mem;
        pp_cuda_stage_memory(g.st[s], &mem);
        size_t wb = c.tab[s].nparams * sizeof(float);
        ck_assert_uint_eq(mem.weights, wb);
        ck_assert_uint_eq(mem.grads, wb);
        ck_assert_uint_eq(mem.optimizer, 2 * wb);
        ck_assert_uint_eq(mem.activations, pp_backend_cuda.acts_bytes(g.st[s]));
        ck_assert_uint_eq(mem.messages, 2 * g.nb);
        ck_assert(mem.workspace > 0 && mem.total <= mem.peak_total);
    }
    pipe_close(&g);
    pipe_close(&c);
    free(tok);
    free(tgt);
}

START_TEST(test_forward_backward_parity)
{
    pp_model_desc m = tiny_model();
    for (int P = 1; P <= MAXP; P++)
        check_parity(&m, P, 0);
}
END_TEST

static void *open_stage_at(int partition, int partitions)
{
    pp_model_desc m = tiny_model();
    pp_placement at = {0, partition, partitions, 1};
    pp_err e = {{0}};
    void *st = NULL;
    ck_assert_msg(pp_backend_cuda.create(&m, 1, 0, &at, &st, &e) == 0, "%s", e.msg);
    return st;
}

/* Two stages, each on its half of the SMs (a green context): the same
 * numbers as on the whole GPU. Before that, two stage objects on one
 * partition at once (as a training stage and its evaluation twin are):
 * each holds a green context of its own on the same SMs. */
START_TEST(test_partition_parity)
{
    pp_model_desc m = tiny_model();
    void *whole = open_stage_at(-1, 0);
    int all = pp_cuda_stage_sms(whole);
    pp_backend_cuda.destroy(whole);
    for (int s = 0; s < 2; s++) {
        void *a = open_stage_at(s, 2), *b = open_stage_at(s, 2);
        int sms = pp_cuda_stage_sms(a);
        printf("test_cuda: device 0: %d SMs, partition %d of 2: %d SMs\n", all, s, sms);
        ck_assert_msg(sms >= 8 && sms % 8 == 0 && 2 * sms <= all,
                      "partition %d of 2: %d SMs of %d", s, sms, all);
        ck_assert_int_eq(pp_cuda_stage_sms(b), sms);
        pp_backend_cuda.destroy(a);
        pp_backend_cuda.destroy(b);
    }
    check_parity(&m, 2, 2);
}
END_TEST

/* One partition per stage asked of a GPU that has far too few SMs. */
START_TEST(test_partition_too_many)
{
    pp_model_desc m = tiny_model();
    pp_placement at = {0, 0, 1000, 1};
    pp_err e = {{0}};
    void *st = NULL;
    ck_assert(pp_backend_cuda.create(&m, 2, 0, &at, &st, &e) < 0);
    ck_assert_msg(strstr(e.msg, "SM") != NULL, "%s", e.msg);
    printf("test_cuda: 1000 partitions: %s\n", e.msg);
}
END_TEST

/* Device clocks around two rounds of forwards through every stage: each
 * mark at or after the origin, each action's end after its start, the
 * second round after the first. */
static void check_clocks(int P, int partitions)
{
    pp_model_desc m = tiny_model();
    size_t n = (size_t)m.micro_batch * m.seq_len;
    int *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    random_ids(tok, n, m.vocab, 11);
    random_ids(tgt, n, m.vocab, 12);
    pipe g;
    pipe_open_at(&g, &pp_backend_cuda, &m, P, partitions, 5);
    ck_assert(g.b->clock_origin && g.b->clock_mark && g.b->clock_between);
    double prev[MAXP];
    for (int s = 0; s < P; s++) {
        g.b->clock_origin(g.st[s], 0);
        prev[s] = 0.0;
    }
    for (int round = 0; round < 2; round++) {
        int m0 = 1 + 2 * round, m1 = m0 + 1; /* this round's marks */
        for (int s = 0; s < P; s++)
            g.b->clock_mark(g.st[s], m0);
        pipe_forward(&g, tok, tgt);
        for (int s = 0; s < P; s++) {
            g.b->clock_mark(g.st[s], m1);
            double t0 = g.b->clock_between(g.st[s], 0, m0);
            double t1 = t0 + g.b->clock_between(g.st[s], m0, m1);
            ck_assert_msg(t0 >= prev[s] && t1 > t0,
                          "partitions %d stage %d round %d: clocks %.9f, %.9f after %.9f",
                          partitions, s, round, t0, t1, prev[s]);
            prev[s] = t1;
        }
    }
    pipe_close(&g);
    free(tok);
    free(tgt);
}

START_TEST(test_device_clocks)
{
    check_clocks(1, 0);
    check_clocks(2, 2);
}
END_TEST

/* Both pipelines' stages switch to optimizer cfg (state zero). */
static void pipes_use(pipe *g, pipe *c, const pp_optim_config *cfg)
{
    pp_err e = {{0}};
    for (int s = 0; s < c->P; s++) {
        ck_assert_msg(pp_backend_optimizer_init(g->b, g->st[s], cfg, &e) == 0, "%s", e.msg);
        ck_assert_msg(pp_backend_optimizer_init(c->b, c->st[s], cfg, &e) == 0, "%s", e.msg);
    }
}

#define NPARTS 5

/* Floats of tensor t's rotation state (cpu_rotated.h: L and Q_L when the
 * left side rotates, R and Q_R when the right does). */
static size_t rotation_floats(const pp_gpt_tensor *t, const pp_optim_config *cfg)
{
    size_t r = (size_t)t->rows, c = (size_t)t->cols;
    return ((cfg->rotate_sides & PP_ROTATE_LEFT) ? 2 * r * r : 0) +
           ((cfg->rotate_sides & PP_ROTATE_RIGHT) ? 2 * c * c : 0);
}

/* The parts of stage s's optimizer state in cpu_optim.h's order (Muon's
 * momentum, AdamW's m and v, the rotation's covariances and bases, the
 * delay buffer), from the tensor table: floats of each and their names;
 * returns their count. */
static int state_parts(const pipe *c, int s, const pp_optim_config *cfg, size_t n[NPARTS],
                       const char *name[NPARTS])
{
    const pp_gpt_stage *tab = &c->tab[s];
    size_t nmom = 0, nrot = 0;
    for (int i = 0; i < tab->ntensors; i++) {
        if (!pp_muon_matrix(&tab->tensors[i]))
            continue;
        if (cfg->kind == PP_OPTIM_MUON)
            nmom += tab->tensors[i].numel;
        if (cfg->kind == PP_OPTIM_ADAMW_ROTATED)
            nrot += rotation_floats(&tab->tensors[i], cfg);
    }
    int k = 0;
    if (cfg->kind == PP_OPTIM_MUON) {
        n[k] = nmom;
        name[k++] = "Muon momentum";
    }
    n[k] = tab->nparams - nmom;
    name[k++] = "AdamW m";
    n[k] = tab->nparams - nmom;
    name[k++] = "AdamW v";
    if (cfg->kind == PP_OPTIM_ADAMW_ROTATED) {
        n[k] = nrot;
        name[k++] = "rotation covariances and bases";
    }
    if (cfg->delay_buffer) {
        n[k] = tab->nparams;
        name[k++] = "delay buffer";
    }
    return k;
}

/* Stage s's optimizer state on both backends: the same size (the layout
 * cfg implies), t = steps on both, the first `nparts` parts within tol
 * (max norm of each part), and a put/get round trip on the GPU that gives
 * the CPU's bytes back. */
static void compare_state(pipe *g, pipe *c, int s, const pp_optim_config *cfg, int steps,
                          int nparts, double tol, const char *what)
{
    size_t n[NPARTS];
    const char *name[NPARTS];
    int k = state_parts(c, s, cfg, n, name);
    size_t ob = g->b->opt_state_bytes(g->st[s]), want = sizeof(double);
    for (int i = 0; i < k; i++)
        want += n[i] * sizeof(float);
    ck_assert_uint_eq(ob, c->b->opt_state_bytes(c->st[s]));
    ck_assert_msg(ob == want, "%s stage %d: optimizer state of %zu bytes, the layout has %zu",
                  what, s, ob, want);
    char *og = malloc(ob), *oc = malloc(ob);
    g->b->opt_state_get(g->st[s], og);
    c->b->opt_state_get(c->st[s], oc);
    double tg, tc;
    memcpy(&tg, og + ob - sizeof tg, sizeof tg);
    memcpy(&tc, oc + ob - sizeof tc, sizeof tc);
    ck_assert_msg(tg == steps && tc == steps, "%s: t = %g (cuda), %g (cpu), want %d", what, tg,
                  tc, steps);
    size_t at = 0;
    for (int i = 0; i < k && i < nparts; i++) {
        double r = rel_err((float *)og + at, (float *)oc + at, n[i]);
        ck_assert_msg(r <= tol, "%s P=%d stage %d: %s relative error %.3g > %.1g", what, c->P,
                      s, name[i], r, tol);
        at += n[i];
    }
    g->b->opt_state_put(g->st[s], oc);
    g->b->opt_state_get(g->st[s], og);
    ck_assert_msg(memcmp(og, oc, ob) == 0, "%s: opt_state put/get changed the state", what);
    free(og);
    free(oc);
}

/* `steps` training steps with optimizer cfg (NULL: the stages' AdamW, no
 * optimizer_init call) on a fixed batch, weight decay and a changing
 * learning rate: the loss of every step, then the zeroed gradient and the
 * optimizer state (its first part within TOL_MOMENT). */
static void train_steps(const pp_optim_config *cfg, int steps, const char *what)
{
    pp_model_desc m = tiny_model();
    pp_optim_config adamw = pp_optim_defaults();
    size_t n = (size_t)m.micro_batch * m.seq_len;
    int *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    for (int P = 1; P <= MAXP; P++) {
        pipe g, c;
        pipe_open(&g, &pp_backend_cuda, &m, P, 99);
        pipe_open(&c, &pp_backend_cpu, &m, P, 99);
        if (cfg)
            pipes_use(&g, &c, cfg);
        float first = 0.0f, lastc = 0.0f;
        for (int step = 0; step < steps; step++) {
            /* A fixed batch, so the loss must fall. */
            random_ids(tok, n, m.vocab, 5);
            random_ids(tgt, n, m.vocab, 6);
            float lg = pipe_forward(&g, tok, tgt), lc = pipe_forward(&c, tok, tgt);
            char msg[96];
            snprintf(msg, sizeof msg, "%s P=%d step %d loss", what, P, step);
            check_loss(lg, lc, step == 0 ? TOL : TOL_STEPS, msg);
            if (step == 0)
                first = lc;
            lastc = lc;
            pipe_backward(&g, 1.0f);
            pipe_backward(&c, 1.0f);
            float lr = 1e-2f * (float)(step + 1) / 10.0f;
            pp_opt_step os = pp_opt_step_default(lr);
            for (int s = 0; s < P; s++) {
                ck_assert(g.b->optimizer_update(g.st[s], g.w[s], g.grad[s], &os, NULL) == 0);
                ck_assert(c.b->optimizer_update(c.st[s], c.w[s], c.grad[s], &os, NULL) == 0);
                ck_assert(g.b->sync(g.st[s], NULL) == 0);
            }
        }
        ck_assert_msg(lastc < first, "%s: the loss did not fall: %g -> %g", what, first, lastc);
        for (int s = 0; s < P; s++) {
            /* The gradient is zeroed by the step. */
            size_t bytes = c.tab[s].nparams * sizeof(float);
            float *hg = host_copy(&g, s, g.grad[s], bytes);
            for (size_t i = 0; i < c.tab[s].nparams; i++)
                ck_assert(hg[i] == 0.0f);
            free(hg);
            compare_state(&g, &c, s, cfg ? cfg : &adamw, steps, 1, TOL_MOMENT, what);
            /* The memory accounting counts the state, t aside. */
            pp_cuda_memory mem;
            pp_cuda_stage_memory(g.st[s], &mem);
            ck_assert_uint_eq(mem.optimizer, g.b->opt_state_bytes(g.st[s]) - sizeof(double));
        }
        pipe_close(&g);
        pipe_close(&c);
    }
    free(tok);
    free(tgt);
}

/* Ten AdamW steps. */
START_TEST(test_optimizer_steps)
{
    train_steps(NULL, 10, "AdamW");
}
END_TEST

/* Five Muon steps (with weight decay on the matrices as on AdamW's). */
START_TEST(test_muon_steps)
{
    pp_optim_config muon = test_optim_config(PP_OPTIM_MUON, 0, 0.0f);
    train_steps(&muon, 5, "Muon");
}
END_TEST

/* Five AdamW steps through the delay correction. */
START_TEST(test_delay_steps)
{
    pp_optim_config delay = test_optim_config(PP_OPTIM_ADAMW, 1, 0.5f);
    train_steps(&delay, 5, "AdamW + delay correction");
}
END_TEST

/* Stage s of both pipelines: the same weights and gradients (well away
 * from zero), then `steps` updates with a rising learning rate. */
static void same_steps(pipe *g, pipe *c, int s, int steps)
{
    size_t np = c->tab[s].nparams, bytes = np * sizeof(float);
    float *hw = malloc(bytes), *hg = malloc(bytes);
    uint64_t r = 77 + (uint64_t)s;
    for (size_t i = 0; i < np; i++) {
        double u = (double)(rng_next(&r) >> 11) * 0x1.0p-53;
        hw[i] = (float)(u * 2.0 - 1.0);
        u = (double)(rng_next(&r) >> 11) * 0x1.0p-53;
        hg[i] = (float)((0.1 + 0.9 * u) * ((rng_next(&r) & 1) ? 1 : -1));
    }
    g->b->from_host(g->st[s], g->w[s], hw, bytes);
    c->b->from_host(c->st[s], c->w[s], hw, bytes);
    for (int step = 0; step < steps; step++) {
        float lr = 1e-2f * (float)(step + 1);
        pp_opt_step os = pp_opt_step_default(lr);
        g->b->from_host(g->st[s], g->grad[s], hg, bytes);
        c->b->from_host(c->st[s], c->grad[s], hg, bytes);
        ck_assert(g->b->optimizer_update(g->st[s], g->w[s], g->grad[s], &os, NULL) == 0);
        ck_assert(c->b->optimizer_update(c->st[s], c->w[s], c->grad[s], &os, NULL) == 0);
        ck_assert(g->b->sync(g->st[s], NULL) == 0);
    }
    free(hw);
    free(hg);
}

/* Tensor i's covariances and bases inside a state buffer of stage s
 * (adamw-rotated: after AdamW's m and v, nparams floats each); NULL for a
 * side that does not rotate. */
typedef struct {
    float *L, *QL, *R, *QR;
} rotation;

static rotation rotation_of(const pipe *c, int s, const pp_optim_config *cfg, void *state, int i)
{
    const pp_gpt_stage *tab = &c->tab[s];
    rotation q = {NULL, NULL, NULL, NULL};
    float *at = (float *)state + 2 * tab->nparams;
    for (int j = 0; j < i; j++)
        if (pp_muon_matrix(&tab->tensors[j]))
            at += rotation_floats(&tab->tensors[j], cfg);
    size_t rr = (size_t)tab->tensors[i].rows * tab->tensors[i].rows;
    if (cfg->rotate_sides & PP_ROTATE_LEFT) {
        q.L = at;
        q.QL = at + rr;
        at += 2 * rr;
    }
    if (cfg->rotate_sides & PP_ROTATE_RIGHT) {
        q.R = at;
        q.QR = at + (size_t)tab->tensors[i].cols * tab->tensors[i].cols;
    }
    return q;
}

/* adamw-rotated with rotate_every 0: the same random orthogonal bases in
 * both backends' stage s, through the state the CPU reports. */
static void pin_bases(pipe *g, pipe *c, int s, const pp_optim_config *cfg)
{
    size_t ob = c->b->opt_state_bytes(c->st[s]);
    char *st = malloc(ob);
    c->b->opt_state_get(c->st[s], st);
    for (int i = 0; i < c->tab[s].ntensors; i++) {
        if (!pp_muon_matrix(&c->tab[s].tensors[i]))
            continue;
        rotation q = rotation_of(c, s, cfg, st, i);
        if (q.QL)
            random_orthogonal(q.QL, c->tab[s].tensors[i].rows, 100 + (uint64_t)i);
        if (q.QR)
            random_orthogonal(q.QR, c->tab[s].tensors[i].cols, 200 + (uint64_t)i);
    }
    c->b->opt_state_put(c->st[s], st);
    g->b->opt_state_put(g->st[s], st);
    free(st);
}

/* One optimizer's update rule: three steps of same_steps; every weight
 * tensor within TOL, every part of the optimizer state within TOL_MOMENT
 * (the delay buffer holds Muon's update itself, whose Newton-Schulz
 * iteration multiplies roundoff along a matrix's smallest singular values
 * by up to a^5 ~ 490: 1e-4 of it is within roundoff, not certain).
 * adamw-rotated runs with its bases pinned (pin_bases). */
static void exact_steps(const pp_optim_config *cfg, const char *what)
{
    pp_model_desc m = tiny_model();
    for (int P = 1; P <= MAXP; P++) {
        pipe g, c;
        pipe_open(&g, &pp_backend_cuda, &m, P, 3);
        pipe_open(&c, &pp_backend_cpu, &m, P, 3);
        pipes_use(&g, &c, cfg);
        for (int s = 0; s < P; s++) {
            if (cfg->kind == PP_OPTIM_ADAMW_ROTATED) {
                ck_assert(cfg->rotate_every == 0);
                pin_bases(&g, &c, s, cfg);
            }
            same_steps(&g, &c, s, 3);
            char msg[96];
            snprintf(msg, sizeof msg, "weights after %s", what);
            compare_tensors(&g, &c, s, g.w[s], c.w[s], TOL, msg);
            compare_state(&g, &c, s, cfg, 3, NPARTS, TOL_MOMENT, what);
        }
        pipe_close(&g);
        pipe_close(&c);
    }
}

/* AdamW alone. */
START_TEST(test_adamw_exact)
{
    pp_optim_config adamw = pp_optim_defaults();
    exact_steps(&adamw, "AdamW");
}
END_TEST

/* Muon, Muon with the delay correction, AdamW with it. */
START_TEST(test_optimizers_exact)
{
    pp_optim_config muon = test_optim_config(PP_OPTIM_MUON, 0, 0.0f),
                    muon_delay = test_optim_config(PP_OPTIM_MUON, 1, 0.5f),
                    adamw_delay = test_optim_config(PP_OPTIM_ADAMW, 1, 0.5f);
    exact_steps(&muon, "Muon");
    exact_steps(&muon_delay, "Muon + delay correction");
    exact_steps(&adamw_delay, "AdamW + delay correction");
}
END_TEST

/* adamw-rotated with pinned random bases: both sides, the left alone, and
 * both with the delay correction. */
START_TEST(test_rotated_exact)
{
    pp_optim_config both = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 0, 0.0f),
                    left = both, delay = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 1, 0.5f);
    both.rotate_every = left.rotate_every = delay.rotate_every = 0;
    left.rotate_sides = PP_ROTATE_LEFT;
    exact_steps(&both, "adamw-rotated");
    exact_steps(&left, "adamw-rotated, left side");
    exact_steps(&delay, "adamw-rotated + delay correction");
}
END_TEST

/* adamw-rotated refreshing its bases at every update (cuSOLVER syevd on
 * the device), three steps of same_steps: what the refresh must give,
 * whatever eigenvectors the solver picks (see the top of this file). */
START_TEST(test_rotated_refresh)
{
    pp_model_desc m = tiny_model();
    pp_optim_config cfg = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 0, 0.0f);
    cfg.rotate_every = 1;
    pipe g, c;
    pipe_open(&g, &pp_backend_cuda, &m, MAXP, 3);
    pipe_open(&c, &pp_backend_cpu, &m, MAXP, 3);
    pipes_use(&g, &c, &cfg);
    for (int s = 0; s < MAXP; s++) {
        const pp_gpt_stage *tab = &c.tab[s];
        same_steps(&g, &c, s, 3);
        size_t ob = g.b->opt_state_bytes(g.st[s]), np = tab->nparams;
        ck_assert_uint_eq(ob, c.b->opt_state_bytes(c.st[s]));
        char *og = malloc(ob), *oc = malloc(ob);
        g.b->opt_state_get(g.st[s], og);
        c.b->opt_state_get(c.st[s], oc);
        double r = rel_err((float *)og, (float *)oc, np);
        ck_assert_msg(r <= TOL_MOMENT, "stage %d: first moments differ by %.3g", s, r);
        size_t wb = np * sizeof(float);
        float *wg = host_copy(&g, s, g.w[s], wb), *wc = host_copy(&c, s, c.w[s], wb);
        int rotated = 0;
        for (int i = 0; i < tab->ntensors; i++) {
            const pp_gpt_tensor *t = &tab->tensors[i];
            if (!pp_muon_matrix(t)) {
                r = rel_err(wg + t->offset, wc + t->offset, t->numel);
                ck_assert_msg(r <= TOL, "stage %d %s: weights differ by %.3g", s, t->name, r);
                continue;
            }
            rotated++;
            rotation qg = rotation_of(&c, s, &cfg, og, i), qc = rotation_of(&c, s, &cfg, oc, i);
            const float *cov[2] = {qg.L, qg.R}, *covc[2] = {qc.L, qc.R},
                        *basis[2] = {qg.QL, qg.QR};
            int k[2] = {t->rows, t->cols};
            for (int side = 0; side < 2; side++) {
                r = rel_err(cov[side], covc[side], (size_t)k[side] * k[side]);
                ck_assert_msg(r <= TOL_MOMENT, "stage %d %s: %s covariance differs by %.3g", s,
                              t->name, side ? "right" : "left", r);
                basis_check b = check_basis(basis[side], cov[side], k[side]);
                ck_assert_msg(b.orth < 1e-4 && b.offdiag < 1e-4 && b.ascending &&
                                  b.from_identity > 0.1,
                              "stage %d %s %s basis: |Q^T Q - I| %.3g, off-diagonal %.3g, "
                              "ascending %d, %.3g from the identity",
                              s, t->name, side ? "right" : "left", b.orth, b.offdiag,
                              b.ascending, b.from_identity);
            }
        }
        ck_assert_int_gt(rotated, 0);
        /* A nan in the first rotated matrix's gradient: its covariances go
         * to nan, its bases stay (the other matrices refresh as usual). */
        int first = 0;
        while (!pp_muon_matrix(&tab->tensors[first]))
            first++;
        float *bad = calloc(np, sizeof *bad);
        bad[tab->tensors[first].offset] = NAN;
        g.b->from_host(g.st[s], g.grad[s], bad, wb);
        pp_opt_step os = pp_opt_step_default(1e-2f);
        ck_assert(g.b->optimizer_update(g.st[s], g.w[s], g.grad[s], &os, NULL) == 0);
        ck_assert(g.b->sync(g.st[s], NULL) == 0);
        char *after = malloc(ob);
        g.b->opt_state_get(g.st[s], after);
        rotation q0 = rotation_of(&c, s, &cfg, og, first);
        rotation q1 = rotation_of(&c, s, &cfg, after, first);
        const pp_gpt_tensor *t = &tab->tensors[first];
        ck_assert_msg(isnan(q1.L[0]) && isnan(q1.R[0]), "stage %d %s: the covariances took no nan",
                      s, t->name);
        ck_assert_msg(memcmp(q0.QL, q1.QL, (size_t)t->rows * t->rows * sizeof(float)) == 0 &&
                          memcmp(q0.QR, q1.QR, (size_t)t->cols * t->cols * sizeof(float)) == 0,
                      "stage %d %s: a nan covariance changed the basis", s, t->name);
        free(after);
        free(bad);
        free(wg);
        free(wc);
        free(og);
        free(oc);
    }
    pipe_close(&g);
    pipe_close(&c);
}
END_TEST

/* Three training steps with an optimizer on the GPU, then a fresh GPU
 * pipeline given the first's weights and
 * optimizer state (to_host/from_host, opt_state_get/put): three more steps
 * on both give the same losses, weights and state, bit for bit. */
static void resume_check(const pp_optim_config *cfg, int P, const char *what)
{
    pp_model_desc m = tiny_model();
    size_t n = (size_t)m.micro_batch * m.seq_len;
    int *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    pp_err e = {{0}};
    pipe a, b;
    pipe_open(&a, &pp_backend_cuda, &m, P, 21);
    pipe_open(&b, &pp_backend_cuda, &m, P, 22); /* other weights, overwritten below */
    for (int s = 0; s < P; s++) {
        ck_assert_msg(pp_backend_optimizer_init(a.b, a.st[s], cfg, &e) == 0, "%s", e.msg);
        ck_assert_msg(pp_backend_optimizer_init(b.b, b.st[s], cfg, &e) == 0, "%s", e.msg);
    }
    float la[3], lb[3];
    for (int step = 0; step < 6; step++) {
        if (step == 3) /* the cut: a's state into b */
            for (int s = 0; s < P; s++) {
                size_t wb = a.tab[s].nparams * sizeof(float), ob = a.b->opt_state_bytes(a.st[s]);
                ck_assert_uint_eq(ob, b.b->opt_state_bytes(b.st[s]));
                float *w = host_copy(&a, s, a.w[s], wb);
                char *o = malloc(ob), *back = malloc(ob);
                a.b->opt_state_get(a.st[s], o);
                b.b->from_host(b.st[s], b.w[s], w, wb);
                b.b->opt_state_put(b.st[s], o);
                b.b->opt_state_get(b.st[s], back);
                ck_assert_msg(memcmp(o, back, ob) == 0, "%s: put/get changed the state", what);
                free(w);
                free(o);
                free(back);
            }
        pipe *run[2] = {&a, &b};
        for (int k = 0; k < (step < 3 ? 1 : 2); k++) {
            pipe *p = run[k];
            random_ids(tok, n, m.vocab, 30 + step);
            random_ids(tgt, n, m.vocab, 40 + step);
            float loss = pipe_forward(p, tok, tgt);
            if (step >= 3)
                (k == 0 ? la : lb)[step - 3] = loss;
            pipe_backward(p, 1.0f);
            pp_opt_step os = pp_opt_step_default(1e-2f);
            for (int s = 0; s < P; s++) {
                ck_assert(p->b->optimizer_update(p->st[s], p->w[s], p->grad[s], &os, NULL) == 0);
                ck_assert(p->b->sync(p->st[s], NULL) == 0);
            }
        }
    }
    for (int k = 0; k < 3; k++)
        ck_assert_msg(memcmp(&la[k], &lb[k], sizeof la[k]) == 0,
                      "%s P=%d: step %d after the cut: loss %.9g, resumed %.9g", what, P, k + 1,
                      la[k], lb[k]);
    for (int s = 0; s < P; s++) {
        size_t wb = a.tab[s].nparams * sizeof(float), ob = a.b->opt_state_bytes(a.st[s]);
        float *wa = host_copy(&a, s, a.w[s], wb), *wb2 = host_copy(&b, s, b.w[s], wb);
        ck_assert_msg(memcmp(wa, wb2, wb) == 0, "%s P=%d stage %d: weights differ", what, P, s);
        char *oa = malloc(ob), *obb = malloc(ob);
        a.b->opt_state_get(a.st[s], oa);
        b.b->opt_state_get(b.st[s], obb);
        ck_assert_msg(memcmp(oa, obb, ob) == 0, "%s P=%d stage %d: optimizer state differs",
                      what, P, s);
        free(wa);
        free(wb2);
        free(oa);
        free(obb);
    }
    pipe_close(&a);
    pipe_close(&b);
    free(tok);
    free(tgt);
}

/* Muon, Muon with the delay correction, adamw-rotated refreshing at every
 * second update (at updates 4 and 6, after the cut) with the correction. */
START_TEST(test_optimizer_resume)
{
    pp_optim_config muon = test_optim_config(PP_OPTIM_MUON, 0, 0.0f),
                    muon_delay = test_optim_config(PP_OPTIM_MUON, 1, 0.5f),
                    rotated = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 1, 0.5f);
    rotated.rotate_every = 2;
    for (int P = 1; P <= MAXP; P++) {
        resume_check(&muon, P, "Muon");
        resume_check(&muon_delay, P, "Muon + delay correction");
        resume_check(&rotated, P, "adamw-rotated + delay correction");
    }
}
END_TEST

/* What optimizer_init takes without a stage (a tool asks before any
 * work): every optimizer, with and without the delay correction. */
START_TEST(test_optimizer_choices)
{
    pp_err e = {{0}};
    pp_optim_kind ok[] = {PP_OPTIM_ADAMW, PP_OPTIM_MUON, PP_OPTIM_ADAMW_ROTATED};
    for (int i = 0; i < 3; i++)
        for (int d = 0; d < 2; d++) {
            pp_optim_config cfg = test_optim_config(ok[i], d, 0.5f);
            ck_assert_msg(pp_backend_optimizer_init(&pp_backend_cuda, NULL, &cfg, &e) == 0, "%s",
                          e.msg);
        }
}
END_TEST

/* The runtime: stage threads with their own streams, the in-process
 * transport copying between stages, weight stashes. */

static pp_run_result run_opt(const pp_backend_ops *b, const char *sched, pp_model_desc *m,
                             const pp_placement *at, const pp_optim_config *optim)
{
    pp_schedule ir = test_schedule(sched, 2, 4, 3);
    pp_err e = {{0}};
    pp_run_config c = test_run_config(&ir, m, b, 120);
    c.placement = at;
    if (optim)
        c.optim = *optim;
    pp_run_result r;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s on %s: %s", sched, b->name, e.msg);
    pp_schedule_free(&ir);
    return r;
}

static pp_run_result run_with(const pp_backend_ops *b, const char *sched, pp_model_desc *m,
                              const pp_placement *at)
{
    return run_opt(b, sched, m, at, NULL);
}

/* The per-update losses of a CUDA run g against the CPU's c (both freed). */
static void compare_runs(pp_run_result *g, pp_run_result *c, const char *what)
{
    ck_assert_int_eq(g->steps, c->steps);
    for (int k = 0; k < c->steps; k++) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s update %d loss", what, k + 1);
        check_loss((float)g->step_loss[k], (float)c->step_loss[k], k == 0 ? TOL : TOL_STEPS,
                   msg);
    }
    pp_run_result_free(g);
    pp_run_result_free(c);
}

START_TEST(test_runtime_parity)
{
    pp_model_desc m = tiny_model();
    const char *scheds[] = {"1f1b-flush", "pipedream-2bw"};
    for (int i = 0; i < 2; i++) {
        pp_run_result g = run_with(&pp_backend_cuda, scheds[i], &m, NULL);
        pp_run_result c = run_with(&pp_backend_cpu, scheds[i], &m, NULL);
        compare_runs(&g, &c, scheds[i]);
    }
}
END_TEST

/* The runtime with Muon and the delay correction on every stage (it calls
 * optimizer_init on both backends), under PipeDream-2BW's one-step delay. */
START_TEST(test_runtime_muon)
{
    pp_model_desc m = tiny_model();
    pp_optim_config muon = test_optim_config(PP_OPTIM_MUON, 1, 0.5f);
    pp_run_result g = run_opt(&pp_backend_cuda, "pipedream-2bw", &m, NULL, &muon);
    pp_run_result c = run_opt(&pp_backend_cpu, "pipedream-2bw", &m, NULL, &muon);
    compare_runs(&g, &c, "Muon + delay correction:");
}
END_TEST

/* The runtime with adamw-rotated and the delay correction under
 * PipeDream's per-stage delay, its bases pinned to the identity
 * (rotate_every 0: the products and the state are all there, and the two
 * backends must agree; test_rotated_refresh checks the refresh). */
START_TEST(test_runtime_rotated)
{
    pp_model_desc m = tiny_model();
    pp_optim_config rot = test_optim_config(PP_OPTIM_ADAMW_ROTATED, 1, 0.5f);
    rot.rotate_every = 0;
    pp_run_result g = run_opt(&pp_backend_cuda, "pipedream", &m, NULL, &rot);
    pp_run_result c = run_opt(&pp_backend_cpu, "pipedream", &m, NULL, &rot);
    compare_runs(&g, &c, "adamw-rotated + delay correction:");
}
END_TEST

/* The validation losses a run reports (on_step), in update order. */
typedef struct {
    double val[16];
    int n;
} val_log;

static void keep_val(void *ctx, const pp_step_record *rec)
{
    val_log *v = ctx;
    if (rec->has_val && v->n < 16)
        v->val[v->n++] = rec->val_loss;
}

/* Validation on the GPU at P = 2 and 3: the evaluator's stages run on
 * their own streams, so stage s + 1 must not read its input before stage
 * s has written it. The validation losses after every update and at the
 * end match the CPU's, and two runs give the same bits (a race would make
 * them differ from run to run). */
START_TEST(test_runtime_evaluation)
{
    pp_model_desc m = tiny_model();
    m.layers = 3; /* a block on every stage at P = 3 */
    for (int P = 2; P <= 3; P++) {
        pp_run_result r[3];
        val_log v[3] = {{{0}, 0}};
        const pp_backend_ops *b[3] = {&pp_backend_cuda, &pp_backend_cuda, &pp_backend_cpu};
        for (int k = 0; k < 3; k++) {
            pp_schedule ir = test_schedule("pipedream-2bw", P, 4, 3);
            pp_err e = {{0}};
            pp_run_config c = test_run_config(&ir, &m, b[k], 120);
            c.val_batch = synth_batch;
            c.eval_every = 1;
            c.eval_batches = 3;
            c.on_step = keep_val;
            c.on_step_ctx = &v[k];
            ck_assert_msg(pp_run(&c, &r[k], &e) == 0, "P=%d %s: %s", P, b[k]->name, e.msg);
            pp_schedule_free(&ir);
        }
        ck_assert_int_gt(v[2].n, 1);
        ck_assert_int_eq(v[0].n, v[2].n);
        ck_assert_int_eq(v[1].n, v[2].n);
        for (int i = 0; i < v[2].n; i++) {
            ck_assert_msg(memcmp(&v[0].val[i], &v[1].val[i], sizeof(double)) == 0,
                          "P=%d evaluation %d: validation loss %.9g, then %.9g", P, i + 1,
                          v[0].val[i], v[1].val[i]);
            char msg[64];
            snprintf(msg, sizeof msg, "P=%d evaluation %d: validation loss", P, i + 1);
            check_loss((float)v[0].val[i], (float)v[2].val[i], i == 0 ? TOL : TOL_STEPS, msg);
        }
        check_loss((float)r[0].final_val_loss, (float)r[2].final_val_loss, TOL_STEPS,
                   "final validation loss");
        for (int k = 0; k < 3; k++)
            pp_run_result_free(&r[k]);
    }
}
END_TEST

/* The runtime with each stage thread in its own SM partition: messages
 * cross green contexts (one stage releases what another allocated). */
START_TEST(test_runtime_partitions)
{
    pp_model_desc m = tiny_model();
    pp_placement at[2] = {{0, 0, 2, 1}, {0, 1, 2, 1}};
    pp_run_result g = run_with(&pp_backend_cuda, "1f1b-flush", &m, at);
    pp_run_result c = run_with(&pp_backend_cpu, "1f1b-flush", &m, NULL);
    compare_runs(&g, &c, "partitions:");
}
END_TEST

/* --- attention: cuDNN against cuBLAS, in bf16 ---------------------- */

/* Two blocks, four heads of 32, sequence 64, micro-batch 2: shapes cuDNN's
 * fused attention takes. */
static pp_model_desc attn_model(void)
{
    return test_model(2, 128, 4, 64, 67, 2);
}

/* Sets (value NULL: unsets) an environment variable; returns the old value
 * for env_restore. */
static char *env_set(const char *name, const char *value)
{
    const char *old = getenv(name);
    char *keep = old ? strdup(old) : NULL;
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
    return keep;
}

static void env_restore(const char *name, char *old)
{
    if (old)
        setenv(name, old, 1);
    else
        unsetenv(name);
    free(old);
}

/* One CUDA stage holding the whole model, two micro-batch buffers. */
typedef struct {
    void *st, *w, *grad, *acts[2];
    pp_gpt_stage tab;
} attn_stage;

/* The stage in bf16 math with PPSCHED_CUDA_ATTENTION=path (both restored
 * after); -1 with e filled when create fails. */
static int attn_open(attn_stage *a, const pp_model_desc *m, const char *path, pp_err *e)
{
    const pp_backend_ops *b = &pp_backend_cuda;
    memset(a, 0, sizeof *a);
    char *math = env_set("PPSCHED_CUDA_MATH", "bf16");
    char *att = env_set("PPSCHED_CUDA_ATTENTION", path);
    int rc = b->create(m, 1, 0, &PP_PLACEMENT_WHOLE(0), &a->st, e);
    env_restore("PPSCHED_CUDA_MATH", math);
    env_restore("PPSCHED_CUDA_ATTENTION", att);
    if (rc < 0)
        return -1;
    ck_assert_msg(pp_gpt_stage_init(&a->tab, m, 1, 0, e) == 0, "%s", e->msg);
    size_t wb = a->tab.nparams * sizeof(float);
    a->w = b->alloc(a->st, wb);
    a->grad = b->alloc(a->st, wb);
    for (int i = 0; i < 2; i++)
        a->acts[i] = b->alloc(a->st, b->acts_bytes(a->st));
    ck_assert(a->w && a->grad && a->acts[0] && a->acts[1]);
    b->init_weights(a->st, a->w, 4321);
    ck_assert(b->sync(a->st, NULL) == 0);
    return 0;
}

static void attn_close(attn_stage *a)
{
    void *bufs[] = {a->w, a->grad, a->acts[0], a->acts[1]};
    for (int i = 0; i < 4; i++)
        pp_backend_cuda.release(a->st, bufs[i]);
    pp_backend_cuda.destroy(a->st);
    pp_gpt_stage_free(&a->tab);
}

/* 1 when the stage took attention `want`; 0 (the caller skips, after a
 * line) when cuDNN was asked for and the stage fell back saying why. A
 * path that differs without a reason fails. */
static int attn_took(attn_stage *a, const char *want)
{
    const char *why = NULL, *path = pp_cuda_stage_attention(a->st, &why);
    if (strcmp(path, want) == 0)
        return 1;
    ck_assert_msg(strcmp(want, "cudnn") == 0 && why,
                  "asked for %s attention, the stage took %s without a reason", want, path);
    printf("test_cuda: cuDNN attention unavailable here, not tested: %s\n", why);
    return 0;
}

#ifdef PPSCHED_HAVE_CUDNN
/* Micro-batches 0 and 1 forward, then both backward (each backward reads
 * what its forward kept while the other's forward ran in between): the
 * losses, and the accumulated gradient on the host. */
static float *attn_run(attn_stage *a, const pp_model_desc *m, float loss[2])
{
    const pp_backend_ops *b = &pp_backend_cuda;
    pp_err e = {{0}};
    size_t n = (size_t)m->micro_batch * m->seq_len, wb = a->tab.nparams * sizeof(float);
    int *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    for (int mb = 0; mb < 2; mb++) {
        random_ids(tok, n, m->vocab, 300 + mb);
        random_ids(tgt, n, m->vocab, 400 + mb);
        int rc = b->forward(a->st, a->w, tok, NULL, tgt, a->acts[mb], NULL, &loss[mb], &e);
        ck_assert_msg(rc == 0, "%s", e.msg);
    }
    for (int mb = 0; mb < 2; mb++) {
        ck_assert_msg(b->backward_input(a->st, a->w, a->acts[mb], NULL, NULL, 0.5f, &e) == 0, "%s",
                      e.msg);
        ck_assert_msg(b->backward_weight(a->st, a->acts[mb], a->grad, &e) == 0, "%s", e.msg);
    }
    ck_assert_msg(b->sync(a->st, &e) == 0, "%s", e.msg);
    float *g = malloc(wb);
    ck_assert(g);
    b->to_host(a->st, g, a->grad, wb);
    free(tok);
    free(tgt);
    return g;
}

#endif

START_TEST(test_cudnn_attention_parity)
{
    pp_model_desc m = attn_model();
    pp_err e = {{0}};
    attn_stage u, d;
#ifndef PPSCHED_HAVE_CUDNN
    /* Asked for, cuDNN is an error in a build without it; bf16 math
     * defaults to cuBLAS. */
    ck_assert(attn_open(&d, &m, "cudnn", &e) < 0);
    ck_assert_msg(strstr(e.msg, "no cuDNN") != NULL, "%s", e.msg);
    ck_assert_msg(attn_open(&u, &m, NULL, &e) == 0, "%s", e.msg);
    ck_assert(attn_took(&u, "cublas"));
    attn_close(&u);
    printf("test_cuda: this build has no cuDNN: its attention is not tested\n");
#else
    ck_assert_msg(attn_open(&u, &m, "cublas", &e) == 0, "%s", e.msg);
    ck_assert(attn_took(&u, "cublas"));
    ck_assert_msg(attn_open(&d, &m, "cudnn", &e) == 0, "%s", e.msg);
    if (!attn_took(&d, "cudnn")) {
        attn_close(&d);
        attn_close(&u);
        return;
    }
    /* bf16 math and cuDNN in the build: cuDNN by default */
    attn_stage dflt;
    ck_assert_msg(attn_open(&dflt, &m, NULL, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(pp_cuda_stage_attention(dflt.st, NULL), "cudnn");
    attn_close(&dflt);
    float lu[2], ld[2];
    float *gu = attn_run(&u, &m, lu), *gd = attn_run(&d, &m, ld);
    for (int mb = 0; mb < 2; mb++) {
        printf("test_cuda: attention micro-batch %d loss: cuBLAS %.6f cuDNN %.6f\n", mb, lu[mb],
               ld[mb]);
        double diff = fabs((double)ld[mb] - lu[mb]);
        ck_assert_msg(isfinite(ld[mb]) && diff <= 1e-2 * fabs((double)lu[mb]),
                      "micro-batch %d loss: cuDNN %.8g cuBLAS %.8g (tolerance 1e-2 relative)", mb,
                      ld[mb], lu[mb]);
    }
    double worst = 0.0;
    for (int i = 0; i < u.tab.ntensors; i++) {
        const pp_gpt_tensor *t = &u.tab.tensors[i];
        double r = rel_norm_err(gd + t->offset, gu + t->offset, t->numel);
        ck_assert_msg(r < 2e-2,
                      "gradient %s: cuDNN against cuBLAS, relative norm of the difference %.3g "
                      ">= 2e-2",
                      t->name, r);
        if (r > worst)
            worst = r;
    }
    printf("test_cuda: attention gradients: largest relative difference %.3g\n", worst);
    free(gu);
    free(gd);
    attn_close(&d);
    attn_close(&u);
#endif
}
END_TEST

/* The cuDNN stage keeps one statistic per score row instead of the B H T^2
 * probabilities of every block. */
START_TEST(test_cudnn_attention_memory)
{
#ifdef PPSCHED_HAVE_CUDNN
    pp_model_desc m = attn_model();
    pp_err e = {{0}};
    attn_stage u, d;
    ck_assert_msg(attn_open(&u, &m, "cublas", &e) == 0, "%s", e.msg);
    ck_assert_msg(attn_open(&d, &m, "cudnn", &e) == 0, "%s", e.msg);
    if (attn_took(&d, "cudnn")) {
        size_t bu = pp_backend_cuda.acts_bytes(u.st), bd = pp_backend_cuda.acts_bytes(d.st);
        double probs = 4.0 * m.micro_batch * m.heads * (double)m.seq_len * m.seq_len * m.layers;
        printf("test_cuda: activations per micro-batch: cuBLAS %zu bytes, cuDNN %zu (%.0f of "
               "probabilities)\n",
               bu, bd, probs);
        ck_assert_msg(bd < bu && (double)(bu - bd) >= 0.9 * probs,
                      "cuDNN activations %zu bytes, cuBLAS %zu: %.0f saved, want at least %.0f", bd,
                      bu, (double)bu - (double)bd, 0.9 * probs);
        pp_cuda_memory mem;
        pp_cuda_stage_memory(d.st, &mem);
        ck_assert_uint_eq(mem.activations, 2 * bd);
    }
    attn_close(&d);
    attn_close(&u);
#else
    printf("test_cuda: this build has no cuDNN: its attention's memory is not tested\n");
#endif
}
END_TEST

/* --- bf16 storage (PPSCHED_CUDA_MATH=bf16) against the CPU ---------- */

/* bf16 operands and activations, fp32 accumulation: the tolerances of the
 * cuDNN test above, against the fp32 CPU. */
#define TOL_BF16 1e-2
#define TOL_BF16_GRAD 2e-2
#define TOL_BF16_STEPS 2e-2

/* pipe_open on the CUDA backend in bf16 math (the variable restored). */
static void pipe_open_bf16(pipe *p, const pp_model_desc *m, int P, uint64_t seed)
{
    char *math = env_set("PPSCHED_CUDA_MATH", "bf16");
    pipe_open(p, &pp_backend_cuda, m, P, seed);
    env_restore("PPSCHED_CUDA_MATH", math);
    for (int s = 0; s < P; s++)
        ck_assert_str_eq(pp_cuda_stage_storage(p->st[s]), "bf16");
}

/* Every tensor of a flat gradient, in the 2-norm of the difference. */
static void compare_tensors_norm(pipe *gpu, pipe *cpu, int s, void *dg, void *dc, double tol,
                                 const char *what)
{
    size_t bytes = cpu->tab[s].nparams * sizeof(float);
    float *g = host_copy(gpu, s, dg, bytes), *c = host_copy(cpu, s, dc, bytes);
    for (int i = 0; i < cpu->tab[s].ntensors; i++) {
        const pp_gpt_tensor *t = &cpu->tab[s].tensors[i];
        double r = rel_norm_err(g + t->offset, c + t->offset, t->numel);
        ck_assert_msg(r < tol, "P=%d stage %d %s %s: relative norm of the difference %.3g >= %.1g",
                      cpu->P, s, what, t->name, r, tol);
    }
    free(g);
    free(c);
}

/* Losses of two micro-batches and the accumulated gradient; then every
 * weight tripled through from_host: the next forward must see the new
 * weights (its bf16 copy re-made), not the old ones. */
START_TEST(test_bf16_storage_parity)
{
    pp_model_desc m = attn_model();
    size_t n = (size_t)m.micro_batch * m.seq_len;
    int *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    for (int P = 1; P <= MAXP; P++) {
        pipe g, c;
        pipe_open_bf16(&g, &m, P, 1234);
        pipe_open(&c, &pp_backend_cpu, &m, P, 1234);
        float lc = 0.0f;
        for (int mb = 0; mb < 2; mb++) {
            random_ids(tok, n, m.vocab, 100 + mb);
            random_ids(tgt, n, m.vocab, 200 + mb);
            float lg = pipe_forward(&g, tok, tgt);
            lc = pipe_forward(&c, tok, tgt);
            check_loss(lg, lc, TOL_BF16, "bf16 forward loss");
            pipe_backward(&g, 0.5f);
            pipe_backward(&c, 0.5f);
        }
        for (int s = 0; s < P; s++)
            compare_tensors_norm(&g, &c, s, g.grad[s], c.grad[s], TOL_BF16_GRAD, "bf16 gradient");
        for (int s = 0; s < P; s++) {
            size_t np = c.tab[s].nparams;
            float *w = c.w[s];
            for (size_t i = 0; i < np; i++)
                w[i] *= 3.0f;
            g.b->from_host(g.st[s], g.w[s], w, np * sizeof(float));
        }
        float lg2 = pipe_forward(&g, tok, tgt), lc2 = pipe_forward(&c, tok, tgt);
        check_loss(lg2, lc2, TOL_BF16, "bf16 loss after new weights");
        ck_assert_msg(fabs((double)lc2 - lc) > 10 * TOL_BF16 * lc,
                      "tripled weights moved the loss only from %g to %g", lc, lc2);
        pipe_close(&g);
        pipe_close(&c);
    }
    free(tok);
    free(tgt);
}
END_TEST

/* Ten AdamW steps on a fixed batch: every loss tracks the CPU's, and the
 * last is nearer the CPU's than the first (stale bf16 weights would keep
 * the first). */
START_TEST(test_bf16_storage_steps)
{
    pp_model_desc m = attn_model();
    size_t n = (size_t)m.micro_batch * m.seq_len;
    int *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    random_ids(tok, n, m.vocab, 5);
    random_ids(tgt, n, m.vocab, 6);
    for (int P = 1; P <= MAXP; P++) {
        pipe g, c;
        pipe_open_bf16(&g, &m, P, 99);
        pipe_open(&c, &pp_backend_cpu, &m, P, 99);
        float lg = 0.0f, lc = 0.0f, first = 0.0f;
        for (int step = 0; step < 10; step++) {
            lg = pipe_forward(&g, tok, tgt);
            lc = pipe_forward(&c, tok, tgt);
            char msg[64];
            snprintf(msg, sizeof msg, "bf16 P=%d step %d loss", P, step);
            check_loss(lg, lc, TOL_BF16_STEPS, msg);
            if (step == 0)
                first = lg;
            pipe_backward(&g, 1.0f);
            pipe_backward(&c, 1.0f);
            pp_opt_step os = pp_opt_step_default(1e-2f * (float)(step + 1) / 10.0f);
            for (int s = 0; s < P; s++) {
                ck_assert(g.b->optimizer_update(g.st[s], g.w[s], g.grad[s], &os, NULL) == 0);
                ck_assert(c.b->optimizer_update(c.st[s], c.w[s], c.grad[s], &os, NULL) == 0);
                ck_assert(g.b->sync(g.st[s], NULL) == 0);
            }
        }
        printf("test_cuda: bf16 P=%d: loss %.5f -> %.5f (cpu %.5f)\n", P, first, lg, lc);
        ck_assert_msg(fabs((double)lg - lc) < 0.5 * fabs((double)lg - first),
                      "P=%d: bf16 loss %g after ten steps, cpu %g, first %g", P, lg, lc, first);
        pipe_close(&g);
        pipe_close(&c);
    }
    free(tok);
    free(tgt);
}
END_TEST

/* Activations per micro-batch on bf16 storage under 0.6 of fp32's, the
 * attention path the same on both (width 256 over 4 heads, sequence 32:
 * cuBLAS's probabilities do not dominate either). */
START_TEST(test_bf16_storage_memory)
{
    pp_model_desc m = test_model(2, 256, 4, 32, 67, 2);
#ifdef PPSCHED_HAVE_CUDNN
    char *att = env_set("PPSCHED_CUDA_ATTENTION", "cudnn");
#else
    char *att = env_set("PPSCHED_CUDA_ATTENTION", "cublas");
#endif
    const char *maths[2] = {"fp32", "bf16"};
    void *st[2];
    pp_err e = {{0}};
    for (int i = 0; i < 2; i++) {
        char *math = env_set("PPSCHED_CUDA_MATH", maths[i]);
        int rc = pp_backend_cuda.create(&m, 1, 0, &PP_PLACEMENT_WHOLE(0), &st[i], &e);
        env_restore("PPSCHED_CUDA_MATH", math);
        ck_assert_msg(rc == 0, "%s", e.msg);
    }
    env_restore("PPSCHED_CUDA_ATTENTION", att);
    const char *a32 = pp_cuda_stage_attention(st[0], NULL);
    const char *a16 = pp_cuda_stage_attention(st[1], NULL);
    size_t b32 = pp_backend_cuda.acts_bytes(st[0]), b16 = pp_backend_cuda.acts_bytes(st[1]);
    printf("test_cuda: activations per micro-batch (%s attention): fp32 %zu bytes, bf16 %zu "
           "(%.3f)\n",
           a16, b32, b16, (double)b16 / b32);
    if (strcmp(a32, a16) == 0) {
        ck_assert_msg((double)b16 < 0.6 * b32,
                      "bf16 activations %zu bytes, fp32 %zu: %.3f of them, want under 0.6", b16,
                      b32, (double)b16 / b32);
        void *acts = pp_backend_cuda.alloc(st[1], b16);
        ck_assert(acts);
        pp_cuda_memory mem;
        pp_cuda_stage_memory(st[1], &mem);
        ck_assert_uint_eq(mem.activations, b16);
        pp_backend_cuda.release(st[1], acts);
    } else {
        printf("test_cuda: attention paths differ (%s, %s): bf16 memory not compared\n", a32,
               a16);
    }
    for (int i = 0; i < 2; i++)
        pp_backend_cuda.destroy(st[i]);
}
END_TEST

/* Bad token ids fail with a message, like the CPU backend. */
START_TEST(test_bad_token)
{
    pp_model_desc m = tiny_model();
    size_t n = (size_t)m.micro_batch * m.seq_len;
    int *tok = calloc(n, sizeof *tok), *tgt = calloc(n, sizeof *tgt);
    tok[3] = m.vocab;
    pipe g;
    pipe_open(&g, &pp_backend_cuda, &m, 1, 1);
    pp_err e = {{0}};
    float loss;
    ck_assert(g.b->forward(g.st[0], g.w[0], tok, NULL, tgt, g.acts[0], NULL, &loss, &e) < 0);
    ck_assert_msg(strstr(e.msg, "outside the vocabulary") != NULL, "%s", e.msg);
    pipe_close(&g);
    free(tok);
    free(tgt);
}
END_TEST

static Suite *cuda_suite(void)
{
    Suite *s = suite_create("cuda");
    TCase *tc = tcase_create("parity");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_available);
    tcase_add_test(tc, test_init_weights);
    tcase_add_test(tc, test_forward_backward_parity);
    tcase_add_test(tc, test_adamw_exact);
    tcase_add_test(tc, test_optimizer_steps);
    tcase_add_test(tc, test_optimizer_choices);
    tcase_add_test(tc, test_optimizers_exact);
    tcase_add_test(tc, test_muon_steps);
    tcase_add_test(tc, test_delay_steps);
    tcase_add_test(tc, test_rotated_exact);
    tcase_add_test(tc, test_rotated_refresh);
    tcase_add_test(tc, test_optimizer_resume);
    tcase_add_test(tc, test_runtime_rotated);
    tcase_add_test(tc, test_runtime_evaluation);
    tcase_add_test(tc, test_runtime_muon);
    tcase_add_test(tc, test_runtime_parity);
    tcase_add_test(tc, test_bad_token);
    tcase_add_test(tc, test_partition_parity);
    tcase_add_test(tc, test_partition_too_many);
    tcase_add_test(tc, test_runtime_partitions);
    tcase_add_test(tc, test_device_clocks);
    tcase_add_test(tc, test_cudnn_attention_parity);
    tcase_add_test(tc, test_cudnn_attention_memory);
    tcase_add_test(tc, test_bf16_storage_parity);
    tcase_add_test(tc, test_bf16_storage_steps);
    tcase_add_test(tc, test_bf16_storage_memory);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    /* Set by the backend at load, before CUDA starts (backend_cuda.cu): a
     * check that needs no GPU. */
    const char *queues = getenv("CUDA_DEVICE_MAX_CONNECTIONS");
    if (!queues || strcmp(queues, "32") != 0) {
        printf("FAIL: CUDA_DEVICE_MAX_CONNECTIONS is %s, not 32\n", queues ? queues : "unset");
        return EXIT_FAILURE;
    }
    if (skip_without_gpu())
        return EXIT_SUCCESS;
    const char *math = getenv("PPSCHED_CUDA_MATH");
    if (math && strcmp(math, "fp32") != 0) {
        printf("SKIP: PPSCHED_CUDA_MATH=%s: the parity tolerances are for fp32\n", math);
        return EXIT_SUCCESS;
    }
    /* The parity tests are for cuBLAS attention (the fp32 default); the
     * cuDNN tests choose their path themselves. */
    const char *attention = getenv("PPSCHED_CUDA_ATTENTION");
    if (attention) {
        printf("test_cuda: PPSCHED_CUDA_ATTENTION=%s ignored: each test sets its own\n", attention);
        unsetenv("PPSCHED_CUDA_ATTENTION");
    }
    return run_gpu_suite(cuda_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}

#else /* !PPSCHED_HAVE_CUDA */

int main(void)
{
    printf("SKIP: no CUDA GPU: this build has no CUDA backend\n");
    return EXIT_SUCCESS;
}

#endif
