/* Helpers several Check suites share. */
#ifndef PP_TEST_SUPPORT_H
#define PP_TEST_SUPPORT_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ir.h"
#include "registry.h"
#include "runtime/cut.h"
#include "runtime/runtime.h"
#include "synth_data.h"

/* A generated, validated schedule: P stages, m micro-batches per step, S steps. */
static inline pp_schedule test_schedule(const char *name, int P, int m, int S)
{
    pp_gen_opts o = {P, m, S, 0, 0};
    pp_schedule s;
    pp_err e = {{0}};
    ck_assert_msg(pp_generate_schedule(name, &o, &s, &e) == 0, "%s: %s", name, e.msg);
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s: %s", name, e.msg);
    return s;
}

/* Generator options: R ranks (P stages with one per rank), m
 * micro-batches per step, S steps, V chunks (0: the generator's default). */
static inline pp_gen_opts test_gen_opts(int R, int m, int S, int V)
{
    pp_gen_opts o = {.stages = R, .microbatches = m, .steps = S, .chunks = V};
    return o;
}

/* The generated schedule, validated; a failure names the sizes. */
static inline pp_schedule test_generate(const char *name, pp_gen_opts o)
{
    pp_err e = {{0}};
    pp_schedule s;
    ck_assert_msg(pp_generate_schedule(name, &o, &s, &e) == 0, "%s R=%d V=%d m=%d S=%d: %s",
                  name, o.stages, o.chunks, o.microbatches, o.steps, e.msg);
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s R=%d V=%d m=%d S=%d: %s", name,
                  o.stages, o.chunks, o.microbatches, o.steps, e.msg);
    return s;
}

/* Checkpoint blobs captured in memory (pp_run_config.on_checkpoint =
 * test_capture, on_checkpoint_ctx = a test_captured): blobs and sizes
 * have room for P stages; the caller frees the blobs. */
typedef struct {
    int K, P;
    void **blobs;
    size_t *sizes;
    double tokens;
} test_captured;

static inline int test_capture(void *ctx, int K, void **blobs, size_t *sizes, double tokens,
                               pp_err *e)
{
    (void)e;
    test_captured *c = ctx;
    c->K = K;
    c->tokens = tokens;
    for (int s = 0; s < c->P; s++) {
        c->blobs[s] = malloc(sizes[s]);
        memcpy(c->blobs[s], blobs[s], sizes[s]);
        c->sizes[s] = sizes[s];
    }
    return 0;
}

/* The tiny preset resized: L blocks of width C, H heads, sequence T,
 * vocabulary V, micro-batch B. */
static inline pp_model_desc test_model(int L, int C, int H, int T, int V, int B)
{
    pp_model_desc m;
    pp_err e = {{0}};
    ck_assert_msg(pp_model_preset("tiny", &m, &e) == 0, "%s", e.msg);
    m.layers = L;
    m.dim = C;
    m.heads = H;
    m.seq_len = T;
    m.vocab = V;
    m.micro_batch = B;
    return m;
}

/* A training run of ir on `backend` with the synthetic data, seed 42 and a
 * short warm-up and decay. m is the data's description too: it must
 * outlive the run. */
static inline pp_run_config test_run_config(const pp_schedule *ir, pp_model_desc *m,
                                            const pp_backend_ops *backend, double timeout_s)
{
    pp_run_config c;
    memset(&c, 0, sizeof c);
    c.ir = ir;
    c.model = *m;
    c.backend = backend;
    c.seed = 42;
    c.lr = (pp_lr_schedule){1e-3f, 1e-4f, 2, 10};
    c.train_batch = synth_batch;
    c.data = m;
    c.timeout_s = timeout_s;
    return c;
}

/* An optimizer configuration: kind, with the delay correction's buffer
 * (delay_buffer 1) and beta. */
static inline pp_optim_config test_optim_config(pp_optim_kind kind, int delay_buffer, float beta)
{
    pp_optim_config c = pp_optim_defaults();
    c.kind = kind;
    c.delay_buffer = delay_buffer;
    c.delay_beta = beta;
    return c;
}

/* Runs a suite (each test in a forked child) and returns the exit status. */
static inline int run_suite(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

/* Stopped after update K and resumed (CPU backend): the losses after K
 * are those of the uninterrupted run, bit for bit; clip is --grad-clip.
 * The schedule has at most 8 stages. */
static inline void test_check_resume(const pp_schedule *ir, pp_model_desc *md, int K,
                                     double clip)
{
    const char *name = ir->info.name;
    int P = ir->info.stages;
    pp_err e = {{0}};
    pp_run_config c = test_run_config(ir, md, &pp_backend_cpu, 60);
    c.grad_clip = clip;
    pp_run_result full;
    ck_assert_msg(pp_run(&c, &full, &e) == 0, "%s", e.msg);
    pp_cut cut;
    ck_assert_msg(pp_cut_plan(ir, K, &cut, &e) == 0, "%s: %s", name, e.msg);
    void *blobs[8];
    size_t sizes[8];
    ck_assert_int_le(P, 8);
    test_captured cap = {0, P, blobs, sizes, 0};
    c.cuts = &cut;
    c.ncuts = 1;
    c.stop_cut = 0;
    c.on_checkpoint = test_capture;
    c.on_checkpoint_ctx = &cap;
    pp_run_result first;
    ck_assert_msg(pp_run(&c, &first, &e) == 0, "%s: %s", name, e.msg);
    ck_assert_int_eq(cap.K, K);
    pp_run_config c2 = test_run_config(ir, md, &pp_backend_cpu, 60);
    c2.grad_clip = clip;
    c2.seed = 999; /* must not matter: the weights come from the checkpoint */
    c2.resume_blobs = blobs;
    c2.resume_sizes = sizes;
    c2.resume_tokens = cap.tokens;
    pp_run_result second;
    ck_assert_msg(pp_run(&c2, &second, &e) == 0, "%s: %s", name, e.msg);
    ck_assert_int_eq(first.steps, K);
    ck_assert_int_eq(second.steps, full.steps - K);
    for (int i = 0; i < K; i++)
        ck_assert(first.step_loss[i] == full.step_loss[i]);
    for (int i = 0; i < second.steps; i++)
        ck_assert_msg(second.step_loss[i] == full.step_loss[K + i],
                      "%s: step %d after resume: %.9g vs %.9g", name, K + i + 1,
                      second.step_loss[i], full.step_loss[K + i]);
    for (int s = 0; s < P; s++)
        free(blobs[s]);
    pp_run_result_free(&full);
    pp_run_result_free(&first);
    pp_run_result_free(&second);
    pp_cut_free(&cut, P);
}

#ifdef PP_TEST_NEEDS_GPU
#include "cuda/cuda_backend.h"
/* The GPU suites' start: 1 (after printing "SKIP: no CUDA GPU: why", which
 * CTest reports as skipped) where no GPU is usable. */
static inline int skip_without_gpu(void)
{
    pp_err e = {{0}};
    if (pp_cuda_available(&e) == 0)
        return 0;
    const char *why = e.msg, *prefix = "--backend cuda: ";
    if (strncmp(why, prefix, strlen(prefix)) == 0)
        why += strlen(prefix);
    printf("SKIP: no CUDA GPU: %s\n", why);
    return 1;
}

/* Runs a GPU suite in this process: CUDA is initialised here already, and
 * a forked child could not use it. Returns the exit status. */
static inline int run_gpu_suite(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
#endif

#endif
