/* The optimizers in the simulator's memory and cost models (optim_cost.h),
 * checked against figures computed by hand for GPT-2 medium. */
#include <check.h>
#include <string.h>

#include "engine.h"
#include "optim_cost.h"
#include "registry.h"

static pp_model_desc gpt2_medium(pp_optim_kind k)
{
    pp_err e;
    pp_model_desc m;
    ck_assert(pp_model_preset("gpt2-medium", &m, &e) == 0);
    m.optimizer = k;
    return m;
}

/* GPT-2 medium (24 layers, h = 1024, 16 heads, vocab 50257, seq 1024,
 * bf16) on P = 8 stages: 3 blocks a stage, h^2 = 1 048 576.
 *
 * Per block: hidden matrices qkv 3h x h, attention projection h x h, MLP
 * up 4h x h and down h x 4h: 12 h^2 = 12 582 912; biases 3h + h + 4h + h
 * and two LayerNorms 2 x 2h: 13 h = 13 312.
 *
 * Stage 0: hidden 3 x 12 582 912 = 37 748 736;
 *          other  3 x 13 312 = 39 936, token embedding 50257 x 1024 =
 *                 51 463 168, position embedding 1024 x 1024 = 1 048 576:
 *                 52 551 680;  all 90 300 416.
 * Stage 7: hidden 37 748 736;
 *          other  39 936 + final LayerNorm 2 x 1024 = 2 048 + output layer
 *                 50257 x 1024 = 51 463 168: 51 505 152;  all 89 253 888.
 *
 * fp32 elements, 4 bytes each; bf16 parameters add an fp32 master copy:
 *   adamw  2 all + all                   (m, v, master)
 *     s0: 12 x 90 300 416 = 1 083 604 992     s7: 12 x 89 253 888 = 1 071 046 656
 *   muon   hidden + 2 other + all        (momentum; m, v; master)
 *     s0: 4 x (37 748 736 + 105 103 360 + 90 300 416) = 4 x 233 152 512 = 932 610 048
 *     s7: 4 x (37 748 736 + 103 010 304 + 89 253 888) = 4 x 230 012 928 = 920 051 712
 *   adamw-rotated  2 all + all + rotation, rotation = per block the
 *     covariances and bases 2 (r^2 + c^2) of each matrix:
 *     2 (9 + 1) h^2 + 2 (1 + 1) h^2 + 2 (16 + 1) h^2 + 2 (1 + 16) h^2 = 92 h^2,
 *     3 blocks: 276 h^2 = 289 406 976 elements = 1 157 627 904 bytes
 *     s0: 1 083 604 992 + 1 157 627 904 = 2 241 232 896
 *     s7: 1 071 046 656 + 1 157 627 904 = 2 228 674 560 */
START_TEST(gpt2_medium_state_matches_hand_computation)
{
    const struct {
        pp_optim_kind k;
        double s0, s7;
    } want[] = {
        {PP_OPTIM_ADAMW, 1083604992.0, 1071046656.0},
        {PP_OPTIM_MUON, 932610048.0, 920051712.0},
        {PP_OPTIM_ADAMW_ROTATED, 2241232896.0, 2228674560.0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        pp_model_desc m = gpt2_medium(want[i].k);
        const char *name = pp_optim_name(want[i].k);
        double s0 = pp_model_stage_memory(&m, 8, 0).optimizer;
        double s7 = pp_model_stage_memory(&m, 8, 7).optimizer;
        ck_assert_msg(s0 == want[i].s0, "%s stage 0: %.0f bytes, by hand %.0f", name, s0,
                      want[i].s0);
        ck_assert_msg(s7 == want[i].s7, "%s stage 7: %.0f bytes, by hand %.0f", name, s7,
                      want[i].s7);
    }
    /* the split behind them: hidden and other as counted above */
    pp_model_desc m = gpt2_medium(PP_OPTIM_ADAMW);
    pp_optim_params p0 = pp_optim_stage_params(&m, 8, 0), p7 = pp_optim_stage_params(&m, 8, 7);
    ck_assert_double_eq(p0.hidden, 37748736.0);
    ck_assert_double_eq(p0.other, 52551680.0);
    ck_assert_double_eq(p7.other, 51505152.0);
    ck_assert_double_eq(p0.rotation, 289406976.0);
}
END_TEST

/* The simulator carries the state into every stage's peak: a run with
 * another optimizer peaks higher or lower by exactly the difference in
 * state, whatever the schedule. */
START_TEST(simulated_peaks_move_by_the_state_difference)
{
    pp_err e = {{0}};
    pp_cost c;
    ck_assert(pp_cost_init(&c, 8, &e) == 0);
    pp_model_desc adamw = gpt2_medium(PP_OPTIM_ADAMW);
    const char *scheds[] = {"1f1b-flush", "pipedream-2bw", "paci"};
    for (int k = PP_OPTIM_MUON; k <= PP_OPTIM_ADAMW_ROTATED; k++) {
        pp_model_desc other = gpt2_medium((pp_optim_kind)k);
        for (size_t i = 0; i < 3; i++) {
            pp_gen_opts o = {8, 8, 4, 0, 0};
            pp_metrics r[2];
            const pp_model_desc *md[2] = {&adamw, &other};
            for (int j = 0; j < 2; j++) {
                pp_stream *st;
                ck_assert_msg(pp_generate(scheds[i], &o, &st, &e) == 0, "%s", e.msg);
                pp_sim_config cfg = {&c, md[j], 0, NULL, NULL, NULL};
                ck_assert_msg(pp_simulate(st, &cfg, &r[j], &e) == 0, "%s", e.msg);
                pp_stream_free(st);
            }
            for (int s = 0; s < 8; s++) {
                double moved = r[1].stage[s].peak_memory_bytes - r[0].stage[s].peak_memory_bytes;
                double diff = pp_optim_state_bytes(&other, 8, s) - pp_optim_state_bytes(&adamw, 8, s);
                ck_assert_msg(moved == diff, "%s, %s, stage %d: peak moved %.0f bytes, state %.0f",
                              scheds[i], pp_optim_name(other.optimizer), s, moved, diff);
            }
            pp_metrics_free(&r[0]);
            pp_metrics_free(&r[1]);
        }
    }
    pp_cost_free(&c);
}
END_TEST

/* fp32 parameters need no master copy; the delay correction keeps one
 * more fp32 buffer of the parameters, for every optimizer. */
START_TEST(master_copy_only_below_fp32_and_delay_correction_adds_one_buffer)
{
    for (int k = PP_OPTIM_ADAMW; k <= PP_OPTIM_ADAMW_ROTATED; k++)
        for (int s = 0; s < 8; s++) {
            pp_model_desc m = gpt2_medium((pp_optim_kind)k);
            double bf16 = pp_optim_state_bytes(&m, 8, s);
            double params = pp_model_stage_params(&m, 8, s);
            m.bytes_per_elem = 4;
            ck_assert_double_eq(pp_optim_state_bytes(&m, 8, s), bf16 - 4.0 * params);
            m.bytes_per_elem = 2;
            m.delay_correction = 1;
            ck_assert_double_eq(pp_optim_state_bytes(&m, 8, s), bf16 + 4.0 * params);
        }
}
END_TEST

/* The split into hidden matrices and the rest covers exactly the
 * parameters the model puts on each stage, for uneven splits too. */
START_TEST(parameter_split_adds_up_to_the_stage)
{
    const char *presets[] = {"tiny", "gpt2-small", "gpt2-medium", "gpt2-xl"};
    for (size_t i = 0; i < 4; i++) {
        pp_err e;
        pp_model_desc m;
        ck_assert(pp_model_preset(presets[i], &m, &e) == 0);
        for (int P = 1; P <= 8; P++)
            for (int s = 0; s < P; s++) {
                pp_optim_params p = pp_optim_stage_params(&m, P, s);
                int first, n;
                pp_model_stage_blocks(&m, P, s, &first, &n);
                ck_assert_double_eq(p.hidden, n * 12.0 * m.dim * m.dim);
                ck_assert_double_eq(p.hidden + p.other, pp_model_stage_params(&m, P, s));
                ck_assert(p.other > 0);
            }
    }
}
END_TEST

/* Muon's 5 Newton-Schulz iterations per block of GPT-2 medium, h = 1024:
 * per iteration on an a x b matrix (a <= b) 4 a^2 b + 2 a^3 FLOPs, so
 * qkv 14 h^3, projection 6 h^3, MLP up and down 18 h^3 each: 56 h^3, x 5
 * = 280 h^3. One micro-batch's forward of a block (t = 4 x 1024 tokens):
 * 24 t h^2 + 4 t 1024 h = (98 304 + 16 384) h^2 = 114 688 h^2. Ratio
 * 280 x 1024 / 114 688 = 2.5 forwards, on every stage without the output
 * layer; AdamW's element-wise step has no matrix products. */
START_TEST(muon_newton_schulz_costs_two_and_a_half_forwards_on_gpt2_medium)
{
    pp_model_desc m = gpt2_medium(PP_OPTIM_MUON);
    for (int s = 0; s < 7; s++)
        ck_assert_double_eq(pp_optim_step_flops(&m, 8, s) / pp_model_forward_flops(&m, 8, s),
                            2.5);
    ck_assert(pp_optim_step_flops(&m, 8, 7) / pp_model_forward_flops(&m, 8, 7) < 2.5);
    m.optimizer = PP_OPTIM_ADAMW;
    ck_assert_double_eq(pp_optim_step_flops(&m, 8, 3), 0.0);
    m.optimizer = PP_OPTIM_ADAMW_ROTATED;
    ck_assert(pp_optim_step_flops(&m, 8, 3) > 0.0);
}
END_TEST

START_TEST(unknown_optimizer_is_refused_by_name)
{
    pp_err e = {{0}};
    pp_optim_kind k;
    ck_assert_int_eq(pp_optim_parse("bogus", &k, &e), -1);
    ck_assert_msg(strstr(e.msg, "\"bogus\"") && strstr(e.msg, "adamw-rotated"), "%s", e.msg);
    for (int i = PP_OPTIM_ADAMW; i <= PP_OPTIM_ADAMW_ROTATED; i++) {
        ck_assert_int_eq(pp_optim_parse(pp_optim_name((pp_optim_kind)i), &k, &e), 0);
        ck_assert_int_eq(k, i);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("optim_cost");
    TCase *t = tcase_create("optim_cost");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, gpt2_medium_state_matches_hand_computation);
    tcase_add_test(t, simulated_peaks_move_by_the_state_difference);
    tcase_add_test(t, master_copy_only_below_fp32_and_delay_correction_adds_one_buffer);
    tcase_add_test(t, parameter_split_adds_up_to_the_stage);
    tcase_add_test(t, muon_newton_schulz_costs_two_and_a_half_forwards_on_gpt2_medium);
    tcase_add_test(t, unknown_optimizer_is_refused_by_name);
    suite_add_tcase(s, t);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
