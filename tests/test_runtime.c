/* The stage runtime against its specification: pipelined synchronous
 * training equals unpipelined training, the simulator predicts exactly the
 * weight versions every real forward and backward read, stashing keeps
 * the forward's weights by content, and the optimizer's options (AdamW's
 * hyperparameters, gradient clipping) reach every stage. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "registry.h"
#include "runtime/cut.h"
#include "runtime/runtime.h"
#include "synth_data.h"
#include "test_support.h"

static pp_model_desc small_model(void)
{
    pp_model_desc m = {"test", 4, 32, 2, 16, 29, 2, 4, PP_OPTIM_ADAMW, 0};
    return m;
}



static pp_run_config base_config(const pp_schedule *ir, pp_model_desc *m)
{
    return test_run_config(ir, m, &pp_backend_cpu, 60);
}

/* A run with AdamW's hyperparameters hp (all zero: the defaults) and
 * gradient clipping to clip (0: off). */
static pp_run_result train_opt(const char *name, int P, int m, int S, pp_timeline *tl,
                               pp_adamw_hparams hp, double clip)
{
    pp_model_desc md = small_model();
    pp_schedule ir = test_schedule(name, P, m, S);
    pp_run_config c = base_config(&ir, &md);
    c.adamw = hp;
    c.grad_clip = clip;
    pp_err e;
    if (tl) {
        ck_assert(pp_timeline_init(tl, &ir.info, &e) == 0);
        c.timeline = tl;
    }
    pp_run_result r;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s: %s", name, e.msg);
    pp_schedule_free(&ir);
    return r;
}

static pp_run_result train(const char *name, int P, int m, int S, pp_timeline *tl)
{
    return train_opt(name, P, m, S, tl, (pp_adamw_hparams){0}, 0);
}

/* 1F1B-flush and GPipe apply exactly the updates of unpipelined training:
 * the same micro-batches, the same weights, gradients summed in the same
 * order. The reference kernels sum in an order independent of the split,
 * so the losses agree to the last bit; the tolerance 1e-6 (relative)
 * leaves room only for floating-point reassociation, should a backend
 * reorder sums. */
START_TEST(synchronous_equals_sequential)
{
    const char *names[] = {"1f1b-flush", "gpipe"};
    pp_run_result ref = train("1f1b-flush", 1, 4, 10, NULL);
    ck_assert_int_eq(ref.steps, 10);
    ck_assert(ref.step_loss[9] < ref.step_loss[0]);
    for (int k = 0; k < 2; k++)
        for (int P = 2; P <= 4; P += 2) {
            pp_run_result r = train(names[k], P, 4, 10, NULL);
            ck_assert_int_eq(r.steps, 10);
            for (int i = 0; i < 10; i++)
                ck_assert_msg(fabs(r.step_loss[i] - ref.step_loss[i]) <= 1e-6 * fabs(ref.step_loss[i]),
                              "%s P=%d step %d: %.9g vs %.9g", names[k], P, i, r.step_loss[i],
                              ref.step_loss[i]);
            pp_run_result_free(&r);
        }
    pp_run_result_free(&ref);
}
END_TEST

/* The versions every real action read equal the simulator's prediction. */
static void check_versions_match(const char *name, int P, int m, int S)
{
    pp_timeline real;
    pp_run_result r = train(name, P, m, S, &real);
    pp_run_result_free(&r);

    pp_schedule ir = test_schedule(name, P, m, S);
    pp_stream *st;
    pp_err e;
    ck_assert(pp_stream_from_schedule(&ir, &st, &e) == 0);
    pp_cost cost;
    ck_assert(pp_cost_init(&cost, P, &e) == 0);
    pp_timeline sim;
    ck_assert(pp_timeline_init(&sim, &ir.info, &e) == 0);
    pp_sim_config cfg = {&cost, NULL, 0, &sim, NULL, NULL};
    pp_metrics met;
    ck_assert_msg(pp_simulate(st, &cfg, &met, &e) == 0, "%s", e.msg);

    pp_mb_row *a, *b;
    size_t na, nb;
    ck_assert(pp_timeline_mb_rows(&real, &a, &na, &e) == 0);
    ck_assert(pp_timeline_mb_rows(&sim, &b, &nb, &e) == 0);
    ck_assert_int_eq(na, nb);
    ck_assert_int_eq(na, (size_t)P * ir.info.total_microbatches);
    for (size_t i = 0; i < na; i++) {
        ck_assert_int_eq(a[i].stage, b[i].stage);
        ck_assert_int_eq(a[i].mb, b[i].mb);
        ck_assert_msg(a[i].v_f == b[i].v_f && a[i].v_b == b[i].v_b,
                      "%s P=%d m=%d stage %d mb %d: real v_f=%d v_b=%d, simulated %d %d", name,
                      P, m, a[i].stage, a[i].mb, a[i].v_f, a[i].v_b, b[i].v_f, b[i].v_b);
    }
    /* and the measured run's metrics come from the simulator's code */
    pp_metrics real_met;
    ck_assert_msg(pp_metrics_from_timeline(&real, NULL, 0, NULL, &real_met, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(real_met.drift_max, met.drift_max);
    ck_assert_double_eq_tol(real_met.staleness_mean, met.staleness_mean, 1e-12);
    pp_metrics_free(&real_met);
    free(a);
    free(b);
    pp_metrics_free(&met);
    pp_timeline_free(&sim);
    pp_timeline_free(&real);
    pp_cost_free(&cost);
    pp_stream_free(st);
    pp_schedule_free(&ir);
}

START_TEST(versions_match_simulator)
{
    check_versions_match("paci", 4, 1, 6);
    check_versions_match("paci", 4, 2, 4);
    check_versions_match("paci", 4, 4, 3);
    check_versions_match("pipedream", 4, 1, 10);
    check_versions_match("pipedream-2bw", 4, 4, 3);
    check_versions_match("1f1b-flush", 4, 3, 3);
}
END_TEST

/* PipeDream-2BW: two copies, and each micro-batch's backward reads the very
 * weights its forward read (by content). PACI's backward reads the newer
 * weights whenever its drift is positive. */
START_TEST(stash_by_content)
{
    pp_model_desc md = small_model();
    int P = 4, m = 4, S = 3, N = m * S;
    pp_schedule ir = test_schedule("pipedream-2bw", P, m, S);
    pp_run_config c = base_config(&ir, &md);
    double *sums = calloc((size_t)P * N * 2, sizeof *sums);
    int peak[4];
    c.weight_checksums = sums;
    c.peak_weight_copies = peak;
    pp_run_result r;
    pp_err e;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s", e.msg);
    for (int s = 0; s < P; s++) {
        ck_assert_int_eq(peak[s], 2);
        for (int mb = 0; mb < N; mb++)
            ck_assert(sums[(s * N + mb) * 2] == sums[(s * N + mb) * 2 + 1]);
    }
    /* step 2's micro-batches read version 1, not version 0 */
    ck_assert(sums[(0 * N + 8) * 2] != sums[(0 * N + 0) * 2]);
    pp_run_result_free(&r);
    pp_schedule_free(&ir);

    ir = test_schedule("paci", P, 2, 4);
    c = base_config(&ir, &md);
    memset(sums, 0, (size_t)P * N * 2 * sizeof *sums);
    c.weight_checksums = sums;
    c.peak_weight_copies = peak;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s", e.msg);
    /* stage 0, micro-batch 2: forward before the first update, backward after */
    ck_assert(sums[(0 * 8 + 2) * 2] != sums[(0 * 8 + 2) * 2 + 1]);
    for (int s = 0; s < P; s++)
        ck_assert_int_eq(peak[s], 1);
    pp_run_result_free(&r);
    pp_schedule_free(&ir);

    ir = test_schedule("pipedream", P, 1, 8);
    c = base_config(&ir, &md);
    c.peak_weight_copies = peak;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s", e.msg);
    for (int s = 0; s < P; s++)
        ck_assert_int_eq(peak[s], P - s);
    pp_run_result_free(&r);
    pp_schedule_free(&ir);
    free(sums);
}
END_TEST

/* The IR's split backward: every B replaced by I then W (weight gradients
 * of micro-batch k deferred past the next forward) trains to the same
 * losses, bit for bit, and the simulator agrees on the versions. */
START_TEST(split_backward_equals_full)
{
    pp_model_desc md = small_model();
    pp_schedule full = test_schedule("1f1b-flush", 3, 3, 4), split;
    pp_err e;
    ck_assert(pp_schedule_init(&split, &full.info, &e) == 0);
    for (int st = 0; st < 3; st++) {
        const pp_action_list *l = &full.rank[st];
        int pending_w = -1;
        for (size_t i = 0; i < l->count; i++) {
            pp_action a = l->items[i];
            if (a.op == PP_OP_B) {
                if (pending_w >= 0)
                    pp_schedule_push(&split, st, pp_act(PP_OP_W, pending_w), &e);
                a.op = PP_OP_I;
                pp_schedule_push(&split, st, a, &e);
                pending_w = a.mb;
                continue;
            }
            if (a.op == PP_OP_OPT && pending_w >= 0) {
                pp_schedule_push(&split, st, pp_act(PP_OP_W, pending_w), &e);
                pending_w = -1;
            }
            pp_schedule_push(&split, st, a, &e);
        }
    }
    ck_assert_msg(pp_schedule_validate(&split, &e) == 0, "%s", e.msg);
    pp_run_config c = base_config(&full, &md);
    pp_run_result a, b;
    ck_assert_msg(pp_run(&c, &a, &e) == 0, "%s", e.msg);
    c.ir = &split;
    ck_assert_msg(pp_run(&c, &b, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(a.steps, b.steps);
    for (int i = 0; i < a.steps; i++)
        ck_assert(a.step_loss[i] == b.step_loss[i]);
    pp_run_result_free(&a);
    pp_run_result_free(&b);
    pp_schedule_free(&split);
    pp_schedule_free(&full);
}
END_TEST

/* Stopped after update K and resumed: bit for bit (test_check_resume). */
static void check_resume(const char *name, int P, int m, int S, int K, double clip)
{
    pp_model_desc md = small_model();
    pp_schedule ir = test_schedule(name, P, m, S);
    test_check_resume(&ir, &md, K, clip);
    pp_schedule_free(&ir);
}

START_TEST(resume_is_bit_identical)
{
    check_resume("paci", 4, 2, 6, 3, 0);
    check_resume("paci", 3, 1, 8, 2, 0);
    check_resume("1f1b-flush", 4, 4, 5, 2, 0);
    check_resume("pipedream-2bw", 4, 4, 5, 2, 0);
    check_resume("pipedream", 4, 1, 10, 5, 0);
    check_resume("gpipe", 2, 3, 4, 1, 0);
    /* with clipping: the global norm's exchange resumes at update K */
    check_resume("1f1b-flush", 3, 4, 5, 2, 0.5);
    check_resume("paci", 3, 2, 6, 3, 0.5);
}
END_TEST

/* A backend whose "device clock" says every action took exactly 0.25 s,
 * one action per device second: the runtime must put those times, not the
 * host's, on the timeline, reading each action's marks after up to 32
 * newer ones were queued (device_clock.c), so the marks' slots are reused
 * many times over 54 actions: a slot read after it was reused would give
 * another action's time. One stage, so the counters need no lock. */
static int fake_origins, fake_marks;
static double fake_time[PP_CLOCK_SLOTS];

static void fake_clock_origin(void *stage, int slot)
{
    (void)stage;
    fake_origins++;
    fake_marks = 0;
    fake_time[slot] = 0.0;
}

/* Mark k after the origin: action k / 2 starts at k / 2 + 1 s, ends 0.25 s later. */
static void fake_clock_mark(void *stage, int slot)
{
    (void)stage;
    fake_time[slot] = fake_marks / 2 + 1.0 + (fake_marks % 2 ? 0.25 : 0.0);
    fake_marks++;
}

static double fake_clock_between(void *stage, int a, int b)
{
    (void)stage;
    return fake_time[b] - fake_time[a];
}

START_TEST(device_clock_times_the_actions)
{
    pp_backend_ops clocked = pp_backend_cpu;
    clocked.clock_origin = fake_clock_origin;
    clocked.clock_mark = fake_clock_mark;
    clocked.clock_between = fake_clock_between;
    pp_model_desc md = small_model();
    pp_schedule ir = test_schedule("1f1b-flush", 1, 4, 6);
    pp_run_config c = base_config(&ir, &md);
    c.backend = &clocked;
    pp_timeline tl;
    pp_err e;
    ck_assert(pp_timeline_init(&tl, &ir.info, &e) == 0);
    c.timeline = &tl;
    pp_run_result r;
    fake_origins = 0;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s", e.msg);
    size_t n = tl.stage[0].count;
    ck_assert_uint_eq(n, 6 * (4 * 2 + 1));
    const pp_timed_action *first = &tl.stage[0].items[0];
    for (size_t i = 0; i < n; i++) {
        const pp_timed_action *a = &tl.stage[0].items[i];
        ck_assert_double_eq_tol(a->end - a->start, 0.25, 1e-9);
        ck_assert_msg(fabs(a->start - first->start - (double)i) < 1e-9,
                      "action %zu starts %.9f s after the first, not %zu", i,
                      a->start - first->start, i);
    }
    ck_assert_int_eq(fake_origins, 1); /* chained readings: no new origin */
    pp_run_result_free(&r);
    pp_timeline_free(&tl);
    pp_schedule_free(&ir);
}
END_TEST

/* The in-process transport on a backend with fences (a GPU's way: no host
 * waits for messages): each message is copied in behind a wait for its
 * fence and marks it, and copied out the same way. On the CPU the copies
 * are done at once, so the run must train exactly as without fences, with
 * one wait and one mark per copy and every fence freed. */
static int fence_marks, fence_waits, fences_live;

static void *count_fence_new(void *st)
{
    (void)st;
    __atomic_add_fetch(&fences_live, 1, __ATOMIC_SEQ_CST);
    return malloc(1);
}

static void count_fence_free(void *st, void *f)
{
    (void)st;
    __atomic_sub_fetch(&fences_live, 1, __ATOMIC_SEQ_CST);
    free(f);
}

static void count_fence_mark(void *st, void *f)
{
    (void)st;
    (void)f;
    __atomic_add_fetch(&fence_marks, 1, __ATOMIC_SEQ_CST);
}

static void count_fence_wait(void *st, void *f)
{
    (void)st;
    (void)f;
    __atomic_add_fetch(&fence_waits, 1, __ATOMIC_SEQ_CST);
}

START_TEST(fenced_messages_train_alike)
{
    pp_backend_ops fenced = pp_backend_cpu;
    fenced.fence_new = count_fence_new;
    fenced.fence_free = count_fence_free;
    fenced.fence_mark = count_fence_mark;
    fenced.fence_wait = count_fence_wait;
    fenced.copy_queued = pp_backend_cpu.copy;
    int P = 3, m = 4, S = 3;
    pp_model_desc md = small_model();
    pp_run_result r[2];
    for (int k = 0; k < 2; k++) {
        pp_schedule ir = test_schedule("1f1b-flush", P, m, S);
        pp_run_config c = base_config(&ir, &md);
        c.backend = k ? &fenced : &pp_backend_cpu;
        pp_err e = {{0}};
        fence_marks = fence_waits = fences_live = 0;
        ck_assert_msg(pp_run(&c, &r[k], &e) == 0, "%s", e.msg);
        pp_schedule_free(&ir);
    }
    int copies = 2 * 2 * (P - 1) * m * S; /* activations and gradients, in and out */
    ck_assert_int_eq(fence_marks, copies);
    ck_assert_int_eq(fence_waits, copies);
    ck_assert_int_eq(fences_live, 0);
    ck_assert_int_eq(r[0].steps, r[1].steps);
    for (int i = 0; i < r[0].steps; i++)
        ck_assert_msg(r[0].step_loss[i] == r[1].step_loss[i], "update %d: loss %.9g, fenced %.9g",
                      i + 1, r[0].step_loss[i], r[1].step_loss[i]);
    pp_run_result_free(&r[0]);
    pp_run_result_free(&r[1]);
}
END_TEST

/* --- the optimizer's options ----------------------------------------- */

/* A device that fails in any action stops the run: a CPU backend whose
 * call number `fail_at` of one kind fails, as a GPU's sticky error would
 * (backend.h), with the stage and action named. */
static int calls, fail_at;

static int failing(pp_err *e)
{
    int n = __atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST); /* stage threads call at once */
    return n == fail_at ? pp_errf(e, "CUDA stage 1: injected device failure") : 0;
}

static int fail_backward_input(void *st, const void *w, void *acts, const void *dx_out,
                               void *dx_in, float loss_scale, pp_err *e)
{
    if (pp_backend_cpu.backward_input(st, w, acts, dx_out, dx_in, loss_scale, e) < 0)
        return -1;
    return failing(e);
}

static int fail_backward_weight(void *st, void *acts, void *grad, pp_err *e)
{
    if (pp_backend_cpu.backward_weight(st, acts, grad, e) < 0)
        return -1;
    return failing(e);
}

static int fail_optimizer_update(void *st, void *w, void *grad, const pp_opt_step *step,
                                 pp_err *e)
{
    if (pp_backend_cpu.optimizer_update(st, w, grad, step, e) < 0)
        return -1;
    return failing(e);
}

static int fail_sync(void *st, pp_err *e)
{
    (void)st;
    return failing(e);
}

START_TEST(a_failing_device_stops_the_run)
{
    const char *kinds[] = {"backward_input", "backward_weight", "optimizer_update", "sync"};
    for (int k = 0; k < 4; k++) {
        pp_backend_ops b = pp_backend_cpu;
        if (k == 0)
            b.backward_input = fail_backward_input;
        else if (k == 1)
            b.backward_weight = fail_backward_weight;
        else if (k == 2)
            b.optimizer_update = fail_optimizer_update;
        else
            b.sync = fail_sync;
        calls = 0;
        fail_at = 3; /* counted over the calls of every stage */
        pp_model_desc md = small_model();
        pp_schedule ir = test_schedule("1f1b-flush", 2, 2, 3);
        pp_run_config c = test_run_config(&ir, &md, &b, 60);
        pp_run_result r;
        pp_err e = {{0}};
        ck_assert_msg(pp_run(&c, &r, &e) < 0, "%s: a failed call went unnoticed", kinds[k]);
        ck_assert_msg(strstr(e.msg, "injected device failure") && strstr(e.msg, "stage ") &&
                          strstr(e.msg, "action ") && !strchr(e.msg, '\n'),
                      "%s: %s", kinds[k], e.msg);
        pp_schedule_free(&ir);
    }
}
END_TEST

/* Largest relative difference between two runs' losses. */
static double loss_gap(const pp_run_result *a, const pp_run_result *b)
{
    ck_assert_int_eq(a->steps, b->steps);
    double most = 0;
    for (int i = 0; i < a->steps; i++)
        most = fmax(most, fabs(a->step_loss[i] - b->step_loss[i]) / fabs(b->step_loss[i]));
    return most;
}

/* AdamW with betas 0.8/0.99, eps 1e-3 and weight decay 0.05, three steps,
 * against the update written out by hand in double: the moments, their
 * bias corrections, and the decay on the decayed half only. */
START_TEST(adamw_hyperparameters_by_hand)
{
    pp_adamw_hparams hp = {0.8f, 0.99f, 1e-3f, 0.05f};
    double b1 = hp.beta1, b2 = hp.beta2, eps = hp.eps, wd = hp.weight_decay;
    pp_adamw o;
    pp_err e;
    ck_assert(pp_adamw_init(&o, 4, hp, &e) == 0);
    float w[4] = {0.5f, -1.0f, 2.0f, 0.25f}, lr[3] = {0.1f, 0.05f, 0.02f};
    double hw[4] = {0.5, -1.0, 2.0, 0.25}, m[4] = {0}, v[4] = {0};
    for (int t = 1; t <= 3; t++) {
        float g[4] = {0.3f * t, -0.2f, 0.01f * t, -1.5f / t};
        pp_adamw_begin_step(&o);
        pp_adamw_update(&o, w, g, 0, 2, 1, lr[t - 1]); /* decayed */
        pp_adamw_update(&o, w, g, 2, 2, 0, lr[t - 1]);
        for (int i = 0; i < 4; i++) {
            m[i] = b1 * m[i] + (1 - b1) * g[i];
            v[i] = b2 * v[i] + (1 - b2) * (double)g[i] * g[i];
            double mhat = m[i] / (1 - pow(b1, t)), vhat = v[i] / (1 - pow(b2, t));
            hw[i] -= lr[t - 1] * (mhat / (sqrt(vhat) + eps) + (i < 2 ? wd * hw[i] : 0));
            ck_assert_msg(fabs(w[i] - hw[i]) <= 1e-6 * fabs(hw[i]) + 1e-7,
                          "step %d, w[%d] = %.9g, by hand %.9g", t, i, w[i], hw[i]);
        }
    }
    pp_adamw_free(&o);
}
END_TEST

/* The CPU backend's update uses what it is given: scale 0.5 equals a
 * halved gradient bit for bit, pp_opt_step_default is AdamW's defaults,
 * other hyperparameters give other weights; grad_sumsq sums the squares. */
START_TEST(cpu_update_takes_hyperparameters_and_scale)
{
    pp_model_desc md = small_model();
    const pp_backend_ops *b = &pp_backend_cpu;
    pp_opt_step half = {1e-2f, {0.5f, 0.9f, 1e-4f, 0.3f}, 0.5f}, whole = half;
    pp_opt_step dflt = pp_opt_step_default(1e-2f);
    pp_opt_step spelled = {1e-2f, {0.9f, 0.95f, 1e-8f, 0.1f}, 1.0f};
    whole.grad_scale = 1.0f;
    void *st[4];
    float *w[4], *g[4];
    pp_err e;
    for (int k = 0; k < 4; k++)
        ck_assert(b->create(&md, 1, 0, NULL, &st[k], &e) == 0);
    size_t n = b->nparams(st[0]);
    for (int k = 0; k < 4; k++) {
        w[k] = malloc(n * sizeof(float));
        g[k] = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            w[k][i] = (float)((int)(i % 13) - 6) * 0.01f;
    }
    for (int step = 1; step <= 2; step++) {
        double sumsq = 0;
        for (size_t i = 0; i < n; i++) {
            float gi = (float)((int)(i % 7) - 3) * 0.125f * step; /* exact squares and sums */
            for (int k = 0; k < 4; k++)
                g[k][i] = k == 0 ? gi : gi * 0.5f;
            sumsq += (double)gi * gi;
        }
        ck_assert(b->grad_sumsq(st[0], g[0]) == sumsq);
        ck_assert(b->optimizer_update(st[0], w[0], g[0], &half, NULL) == 0);
        ck_assert(b->optimizer_update(st[1], w[1], g[1], &whole, NULL) == 0);
        ck_assert(b->optimizer_update(st[2], w[2], g[2], &spelled, NULL) == 0);
        ck_assert(b->optimizer_update(st[3], w[3], g[3], &dflt, NULL) == 0);
        ck_assert(b->grad_sumsq(st[0], g[0]) == 0.0); /* the update zeroes the gradient */
    }
    ck_assert_msg(memcmp(w[0], w[1], n * sizeof(float)) == 0, "scale 0.5 != halved gradient");
    ck_assert_msg(memcmp(w[2], w[3], n * sizeof(float)) == 0, "the default step is not AdamW 0.9/0.95/1e-8/0.1");
    ck_assert_msg(memcmp(w[1], w[3], n * sizeof(float)) != 0, "hyperparameters ignored");
    for (int k = 0; k < 4; k++) {
        free(w[k]);
        free(g[k]);
        b->destroy(st[k]);
    }
}
END_TEST

/* Non-default AdamW settings reach every stage: 1F1B-flush on 3 stages
 * trains as on 1, and not as with the defaults. */
START_TEST(adamw_hyperparameters_reach_every_stage)
{
    pp_adamw_hparams hp = {0.8f, 0.99f, 1e-6f, 0.2f};
    pp_run_result one = train_opt("1f1b-flush", 1, 4, 8, NULL, hp, 0);
    pp_run_result three = train_opt("1f1b-flush", 3, 4, 8, NULL, hp, 0);
    pp_run_result dflt = train("1f1b-flush", 1, 4, 8, NULL);
    ck_assert_msg(loss_gap(&three, &one) <= 1e-6, "3 stages differ from 1 by %g",
                  loss_gap(&three, &one));
    ck_assert_msg(loss_gap(&one, &dflt) > 1e-5, "the hyperparameters changed nothing");
    pp_run_result_free(&one);
    pp_run_result_free(&three);
    pp_run_result_free(&dflt);
}
END_TEST

/* 1F1B-flush and GPipe are synchronous (every stage's k-th OPT applies one
 * batch, nothing in flight); PACI, PipeDream and PipeDream-2BW are not. */
START_TEST(synchronous_schedules_are_detected)
{
    const char *names[] = {"1f1b-flush", "gpipe", "paci", "pipedream", "pipedream-2bw"};
    pp_err e;
    for (int k = 0; k < 5; k++) {
        pp_schedule ir = test_schedule(names[k], 3, k == 3 ? 1 : 3, 3);
        ck_assert_msg(pp_schedule_synchronous(&ir, &e) == (k < 2), "%s", names[k]);
        pp_schedule_free(&ir);
    }
    /* a BARRIER before stage 0's first OPT but after stage 1's: the stages
     * would wait for each other at both, so this is not synchronous */
    pp_schedule full = test_schedule("1f1b-flush", 2, 2, 2), odd;
    ck_assert(pp_schedule_init(&odd, &full.info, &e) == 0);
    for (int st = 0; st < 2; st++)
        for (size_t i = 0, seen = 0; i < full.rank[st].count; i++) {
            pp_action a = full.rank[st].items[i];
            if (a.op == PP_OP_OPT && !seen && st == 0)
                pp_schedule_push(&odd, st, pp_act(PP_OP_BARRIER, 0), &e);
            pp_schedule_push(&odd, st, a, &e);
            if (a.op == PP_OP_OPT && !seen++ && st == 1)
                pp_schedule_push(&odd, st, pp_act(PP_OP_BARRIER, 0), &e);
        }
    ck_assert_int_eq(pp_schedule_synchronous(&full, &e), 1);
    ck_assert_int_eq(pp_schedule_synchronous(&odd, &e), 0);
    pp_schedule_free(&odd);
    pp_schedule_free(&full);
}
END_TEST

/* Clipping in a synchronous schedule uses the true global norm: the
 * stages' k-th updates add their sums of squares, so 1F1B-flush and GPipe
 * on 2 and 3 stages train as one stage does with the same clip (within
 * synchronous_equals_sequential's tolerance; clipping each stage by its
 * own norm misses it by 1e-4), and the clip is active. */
START_TEST(global_clip_equals_sequential)
{
    const char *names[] = {"1f1b-flush", "gpipe"};
    pp_adamw_hparams dflt = {0};
    pp_run_result ref = train_opt("1f1b-flush", 1, 4, 10, NULL, dflt, 0.5);
    pp_run_result plain = train("1f1b-flush", 1, 4, 10, NULL);
    ck_assert_msg(loss_gap(&ref, &plain) > 1e-5, "clipping to 0.5 changed no loss");
    for (int k = 0; k < 2; k++)
        for (int P = 2; P <= 3; P++) {
            pp_run_result r = train_opt(names[k], P, 4, 10, NULL, dflt, 0.5);
            ck_assert_msg(loss_gap(&r, &ref) <= 1e-6, "%s P=%d: losses differ by %g from P=1",
                          names[k], P, loss_gap(&r, &ref));
            pp_run_result_free(&r);
        }
    pp_run_result_free(&ref);
    pp_run_result_free(&plain);
}
END_TEST

/* A clip above every norm changes nothing, bit for bit, in both forms. */
START_TEST(clip_above_every_norm_changes_nothing)
{
    const char *names[] = {"1f1b-flush", "paci"};
    for (int k = 0; k < 2; k++) {
        pp_run_result a = train(names[k], 3, 2, 6, NULL);
        pp_run_result b = train_opt(names[k], 3, 2, 6, NULL, (pp_adamw_hparams){0}, 1e30);
        ck_assert_msg(loss_gap(&a, &b) == 0, "%s: a clip of 1e30 changed the losses", names[k]);
        pp_run_result_free(&a);
        pp_run_result_free(&b);
    }
}
END_TEST

/* PACI clips each stage by its own norm (no stage waits for another): the
 * run completes, still learns, and the clip is active. */
START_TEST(per_stage_clip_on_paci)
{
    pp_run_result plain = train("paci", 3, 2, 10, NULL);
    pp_run_result r = train_opt("paci", 3, 2, 10, NULL, (pp_adamw_hparams){0}, 0.5);
    ck_assert_int_eq(r.steps, 10);
    ck_assert(r.step_loss[9] < r.step_loss[0]);
    ck_assert_msg(loss_gap(&r, &plain) > 1e-5, "clipping to 0.5 changed no loss");
    pp_run_result_free(&plain);
    pp_run_result_free(&r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("runtime");
    TCase *t = tcase_create("runtime");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, synchronous_equals_sequential);
    tcase_add_test(t, versions_match_simulator);
    tcase_add_test(t, stash_by_content);
    tcase_add_test(t, resume_is_bit_identical);
    tcase_add_test(t, split_backward_equals_full);
    tcase_add_test(t, device_clock_times_the_actions);
    tcase_add_test(t, adamw_hyperparameters_by_hand);
    tcase_add_test(t, cpu_update_takes_hyperparameters_and_scale);
    tcase_add_test(t, adamw_hyperparameters_reach_every_stage);
    tcase_add_test(t, synchronous_schedules_are_detected);
    tcase_add_test(t, global_clip_equals_sequential);
    tcase_add_test(t, clip_above_every_norm_changes_nothing);
    tcase_add_test(t, per_stage_clip_on_paci);
    tcase_add_test(t, a_failing_device_stops_the_run);
    tcase_add_test(t, fenced_messages_train_alike);
    suite_add_tcase(s, t);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
