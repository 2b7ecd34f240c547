/* The runtime with ranks that hold several stages: one thread per rank
 * runs its chunks of the model in the rank's order. Synchronous schedules
 * (interleaved 1F1B, looped BFS, ZB-H1, ZB-V, DualPipeV) apply exactly the
 * updates of unpipelined training; the measured run's weight versions
 * equal the simulator's, asynchronous chunked PACI and PipeDream-2BW too; a
 * run that cannot be done says so in one line. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "registry.h"
#include "runtime/runtime.h"
#include "synth_data.h"
#include "test_support.h"

static pp_model_desc small_model(void)
{
    pp_model_desc m = {"test", 4, 32, 2, 16, 29, 2, 4, PP_OPTIM_ADAMW, 0};
    return m;
}

/* R ranks, V chunks (0: the generator's default), m micro-batches, S
 * steps. */
static pp_schedule gen(const char *name, int R, int V, int m, int S)
{
    return test_generate(name, test_gen_opts(R, m, S, V));
}

static pp_run_result train_clip(const pp_schedule *ir, pp_timeline *tl, double clip)
{
    pp_model_desc md = small_model();
    pp_run_config c = test_run_config(ir, &md, &pp_backend_cpu, 60);
    c.grad_clip = clip;
    pp_err e = {{0}};
    if (tl) {
        ck_assert(pp_timeline_init(tl, &ir->info, &e) == 0);
        c.timeline = tl;
    }
    pp_run_result r;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s: %s", ir->info.name, e.msg);
    return r;
}

static pp_run_result train(const pp_schedule *ir, pp_timeline *tl)
{
    return train_clip(ir, tl, 0);
}

/* The largest relative difference of two runs' step losses. */
static double loss_gap(const pp_run_result *a, const pp_run_result *b)
{
    double worst = 0;
    for (int i = 0; i < a->steps && i < b->steps; i++) {
        double d = fabs(a->step_loss[i] - b->step_loss[i]) / fabs(b->step_loss[i]);
        worst = d > worst ? d : worst;
    }
    return worst;
}

/* Every synchronous schedule with several stages per rank gives the losses
 * of one stage on one device (the reference kernels sum in an order
 * independent of the split, so they agree to the last bit; 1e-6 relative
 * leaves room for a backend that reassociates). */
START_TEST(several_stages_per_rank_train_like_one_device)
{
    pp_schedule one = gen("1f1b-flush", 1, 0, 4, 6);
    pp_run_result ref = train(&one, NULL);
    pp_schedule_free(&one);
    ck_assert(ref.step_loss[5] < ref.step_loss[0]);
    struct {
        const char *name;
        int R, V;
    } cases[] = {
        {"interleaved-1f1b", 2, 2}, {"looped-bfs", 2, 2}, {"zbv", 2, 2}, {"dualpipev", 2, 2},
        {"zb-h1", 4, 0},            {"interleaved-1f1b", 1, 4}, {"zbv", 1, 2},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        pp_schedule ir = gen(cases[k].name, cases[k].R, cases[k].V, 4, 6);
        pp_run_result r = train(&ir, NULL);
        ck_assert_int_eq(r.steps, 6);
        for (int i = 0; i < 6; i++)
            ck_assert_msg(fabs(r.step_loss[i] - ref.step_loss[i]) <= 1e-6 * fabs(ref.step_loss[i]),
                          "%s R=%d V=%d step %d: %.9g vs %.9g", cases[k].name, cases[k].R,
                          cases[k].V, i, r.step_loss[i], ref.step_loss[i]);
        pp_run_result_free(&r);
        pp_schedule_free(&ir);
    }
    pp_run_result_free(&ref);
}
END_TEST

/* Clipping by the global norm: a rank's thread reaches its stages' OPTs
 * one after another, so the first deposits every one of its stages' sums
 * (a rank waiting for its own later stage would wait forever); the runs
 * train as one stage does with the same clip, and the clip is active. */
START_TEST(global_clip_with_several_stages_per_rank)
{
    pp_schedule one = gen("1f1b-flush", 1, 0, 4, 6);
    pp_run_result ref = train_clip(&one, NULL, 0.5), plain = train(&one, NULL);
    ck_assert_msg(loss_gap(&ref, &plain) > 1e-5, "clipping to 0.5 changed no loss");
    const char *names[] = {"interleaved-1f1b", "zbv", "dualpipev"};
    for (int k = 0; k < 3; k++) {
        pp_schedule ir = gen(names[k], 2, 2, 4, 6);
        pp_run_result r = train_clip(&ir, NULL, 0.5);
        ck_assert_msg(loss_gap(&r, &ref) <= 1e-6, "%s: losses differ by %g from one stage",
                      names[k], loss_gap(&r, &ref));
        pp_run_result_free(&r);
        pp_schedule_free(&ir);
    }
    pp_run_result_free(&ref);
    pp_run_result_free(&plain);
    pp_schedule_free(&one);
}
END_TEST

/* The measured run records every action of every stage, and its metrics
 * (from the simulator's code) see R ranks: each rank's busy time is the
 * union of its stages'. The versions every action read equal the
 * simulator's. */
static void check_measured_run(const char *name, int R, int V, int mbs, int S)
{
    pp_schedule ir = gen(name, R, V, mbs, S);
    pp_timeline real;
    pp_run_result r = train(&ir, &real);
    pp_run_result_free(&r);
    pp_err e = {{0}};
    pp_metrics m;
    ck_assert_msg(pp_metrics_from_timeline(&real, NULL, 0, NULL, &m, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(m.info.ranks, R);
    for (int k = 0; k < R; k++) {
        double stages_busy = 0; /* looped: rank k holds stages k, k + R, ... */
        for (int s = k; s < ir.info.stages; s += R)
            stages_busy += m.stage[s].busy;
        /* one thread per rank: its stages never overlap in time */
        ck_assert_double_eq_tol(m.rank[k].busy, stages_busy, 1e-9);
        ck_assert(m.rank[k].busy <= m.makespan);
    }
    pp_metrics_free(&m);

    pp_stream *st;
    ck_assert(pp_stream_from_schedule(&ir, &st, &e) == 0);
    pp_cost cost;
    ck_assert(pp_cost_init(&cost, ir.info.stages, &e) == 0);
    pp_timeline sim;
    ck_assert(pp_timeline_init(&sim, &ir.info, &e) == 0);
    pp_sim_config cfg = {&cost, NULL, 0, &sim, NULL, NULL};
    ck_assert_msg(pp_simulate(st, &cfg, &m, &e) == 0, "%s", e.msg);
    pp_mb_row *a, *b;
    size_t na, nb;
    ck_assert(pp_timeline_mb_rows(&real, &a, &na, &e) == 0);
    ck_assert(pp_timeline_mb_rows(&sim, &b, &nb, &e) == 0);
    ck_assert_uint_eq(na, nb);
    ck_assert_uint_eq(na, (size_t)ir.info.stages * ir.info.total_microbatches);
    for (size_t i = 0; i < na; i++)
        ck_assert_msg(a[i].stage == b[i].stage && a[i].mb == b[i].mb && a[i].v_f == b[i].v_f &&
                          a[i].v_b == b[i].v_b,
                      "%s stage %d mb %d: measured v_f=%d v_b=%d, simulated %d %d", name,
                      a[i].stage, a[i].mb, a[i].v_f, a[i].v_b, b[i].v_f, b[i].v_b);
    free(a);
    free(b);
    pp_metrics_free(&m);
    pp_timeline_free(&sim);
    pp_timeline_free(&real);
    pp_cost_free(&cost);
    pp_stream_free(st);
    pp_schedule_free(&ir);
}

START_TEST(measured_timeline_has_ranks_and_versions)
{
    check_measured_run("interleaved-1f1b", 2, 2, 4, 3);
    /* asynchronous, several stages per rank: the versions every action
     * read, row by row, are the simulator's (drift and stashes included) */
    check_measured_run("paci", 2, 2, 2, 6);
    check_measured_run("paci", 1, 4, 2, 6);
    check_measured_run("pipedream-2bw", 2, 2, 4, 4);
}
END_TEST

/* A link model delays messages between ranks only: with every stage on one
 * rank (ZB-V, R = 1: its two chunks hand over at the V's turn), a link of
 * half a second would add 0.5 s to each of the run's 8 messages; the run
 * takes milliseconds. */
START_TEST(a_rank_hands_over_to_its_own_stages_without_a_link)
{
    pp_schedule ir = gen("zbv", 1, 2, 2, 2);
    pp_model_desc md = small_model();
    pp_run_config c = test_run_config(&ir, &md, &pp_backend_cpu, 60);
    c.link_s = 0.5;
    pp_run_result r;
    pp_err e = {{0}};
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s", e.msg);
    ck_assert_msg(r.elapsed_s < 2.0, "took %.3f s: a message between stages of one rank waited "
                                     "for a link", r.elapsed_s);
    pp_run_result_free(&r);
    pp_schedule_free(&ir);
}
END_TEST

/* BARRIERs in a schedule whose ranks hold several stages: each rank's
 * thread arrives once (the barrier counted stages and waited forever), and
 * the run trains as without them. */
START_TEST(barriers_meet_once_per_rank)
{
    pp_schedule plain = gen("interleaved-1f1b", 2, 2, 4, 3), with;
    pp_err e = {{0}};
    ck_assert(pp_schedule_init(&with, &plain.info, &e) == 0);
    for (int r = 0; r < 2; r++) {
        const pp_action_list *l = &plain.rank[r];
        for (size_t i = 0; i < l->count; i++) {
            ck_assert(pp_schedule_push(&with, r, l->items[i], &e) == 0);
            int group_end = l->items[i].op == PP_OP_OPT &&
                            (i + 1 == l->count || l->items[i + 1].op != PP_OP_OPT);
            if (group_end) /* after each step's OPTs */
                ck_assert(pp_schedule_push(&with, r, pp_act(PP_OP_BARRIER, -1), &e) == 0);
        }
    }
    ck_assert_msg(pp_schedule_validate(&with, &e) == 0, "%s", e.msg);
    pp_run_result a = train(&plain, NULL), b = train(&with, NULL);
    ck_assert_double_eq(loss_gap(&a, &b), 0.0);
    pp_run_result_free(&a);
    pp_run_result_free(&b);
    pp_schedule_free(&with);
    pp_schedule_free(&plain);
}
END_TEST

/* Stopped after update K and resumed: the losses after K are those of the
 * uninterrupted run, bit for bit, with several stages per rank too (each
 * stage saved at its own cut; the rank stops once all of its stages are
 * there, and on resume skips, stage by stage, what each did before). */
static void check_resume(const char *name, int R, int V, int m, int S, int K)
{
    pp_model_desc md = small_model();
    pp_schedule ir = gen(name, R, V, m, S);
    test_check_resume(&ir, &md, K, 0);
    pp_schedule_free(&ir);
}

START_TEST(resume_with_several_stages_per_rank_is_bit_identical)
{
    check_resume("interleaved-1f1b", 2, 2, 4, 4, 2);
    check_resume("zbv", 2, 2, 4, 4, 1);
    check_resume("dualpipev", 2, 2, 4, 4, 3);
    check_resume("paci", 2, 2, 2, 6, 3);
    check_resume("pipedream-2bw", 2, 2, 4, 5, 2);
}
END_TEST

/* What the runtime cannot do yet with several stages per rank is refused
 * before any work, in one line. */
START_TEST(unsupported_runs_are_refused)
{
    pp_schedule ir = gen("zbv", 2, 2, 4, 2);
    pp_model_desc md = small_model();
    pp_run_config c = test_run_config(&ir, &md, &pp_backend_cpu, 60);
    pp_run_result r;
    pp_err e = {{0}};
    c.local_first = 0;
    c.local_count = 2; /* two of the four stages: another process would run the rest */
    ck_assert_int_eq(pp_run(&c, &r, &e), -1);
    ck_assert_msg(strstr(e.msg, "several stages per rank") || strstr(e.msg, "transport"), "%s",
                  e.msg);
    pp_schedule_free(&ir);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("runtime_ranks");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, several_stages_per_rank_train_like_one_device);
    tcase_add_test(t, measured_timeline_has_ranks_and_versions);
    tcase_add_test(t, global_clip_with_several_stages_per_rank);
    tcase_add_test(t, barriers_meet_once_per_rank);
    tcase_add_test(t, resume_with_several_stages_per_rank_is_bit_identical);
    tcase_add_test(t, unsupported_runs_are_refused);
    tcase_add_test(t, a_rank_hands_over_to_its_own_stages_without_a_link);
    suite_add_tcase(su, t);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
