/* Closed forms and equivalences of the generators and the simulator
 * (uniform stages, F=1, B=2, free communication unless a test says so). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "registry.h"

#define EPS 1e-9

static pp_gen_opts gen(int P, int m, int S)
{
    pp_gen_opts o = {P, m, S, 0, 0};
    return o;
}

/* Simulates a generated schedule in summary mode with the default costs. */
static pp_metrics sim_cost(const char *name, pp_gen_opts o, const pp_cost *cost,
                           const pp_model_desc *model)
{
    pp_err e = {{0}};
    pp_stream *st;
    ck_assert_msg(pp_generate(name, &o, &st, &e) == 0, "%s", e.msg);
    pp_sim_config cfg = {cost, model, o.recompute, NULL, NULL, NULL};
    pp_metrics m;
    ck_assert_msg(pp_simulate(st, &cfg, &m, &e) == 0, "%s: %s", name, e.msg);
    pp_stream_free(st);
    return m;
}

static pp_metrics sim(const char *name, pp_gen_opts o)
{
    pp_cost c;
    pp_err e;
    ck_assert(pp_cost_init(&c, o.stages, &e) == 0);
    pp_metrics m = sim_cost(name, o, &c, NULL);
    pp_cost_free(&c);
    return m;
}

static int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

START_TEST(flush_closed_forms)
{
    int Ps[] = {1, 2, 3, 4, 5, 8}, ms[] = {1, 2, 3, 4, 8, 12};
    for (size_t i = 0; i < 6; i++)
        for (size_t j = 0; j < 6; j++) {
            int P = Ps[i], m = ms[j], S = 8;
            pp_metrics r = sim("1f1b-flush", gen(P, m, S));
            ck_assert_double_eq_tol(r.makespan, (double)S * (m + P - 1) * 3, EPS);
            ck_assert(r.has_steady);
            ck_assert_double_eq_tol(r.steady_bubble_fraction, (double)(P - 1) / (m + P - 1), EPS);
            ck_assert_double_eq_tol(r.bubble_fraction, (double)(P - 1) / (m + P - 1), EPS);
            ck_assert_double_eq_tol(r.bubble_megatron, (double)(P - 1) / m, EPS);
            ck_assert_int_eq(r.drift_max, 0);
            ck_assert_int_eq(r.staleness_max, 0);
            ck_assert_int_eq(r.peak_weight_copies_max, 1);
            for (int s = 0; s < P; s++) {
                int in_flight = P - s < m ? P - s : m;
                ck_assert_int_eq(r.stage[s].peak_inflight, in_flight);
                ck_assert_int_eq(r.stage[s].final_version, S);
            }
            pp_metrics_free(&r);
        }
}
END_TEST

START_TEST(paci_closed_forms)
{
    int Ps[] = {2, 3, 4, 6, 8}, as[] = {1, 2, 3, 4, 7, 8};
    for (size_t i = 0; i < 5; i++)
        for (size_t j = 0; j < 6; j++) {
            int P = Ps[i], a = as[j], S = 4 * P, N = a * S;
            pp_metrics r = sim("paci", gen(P, a, S));
            ck_assert_double_eq_tol(r.makespan, (double)(N + P - 1) * 3, EPS);
            ck_assert(r.has_steady);
            ck_assert_double_eq_tol(r.steady_bubble_fraction, 0.0, EPS);
            ck_assert_int_eq(r.staleness_max, 0);
            ck_assert_int_eq(r.peak_weight_copies_max, 1);
            for (int s = 0; s < P; s++) {
                ck_assert_msg(r.stage[s].drift_max == ceil_div(P - 1 - s, a),
                              "P=%d a=%d stage %d: drift %d", P, a, s, r.stage[s].drift_max);
                ck_assert_int_eq(r.stage[s].peak_inflight, P - s);
            }
            pp_metrics_free(&r);
        }
}
END_TEST

START_TEST(pipedream_2bw_closed_forms)
{
    int Ps[] = {2, 3, 4, 8};
    for (size_t i = 0; i < 4; i++)
        for (int extra = 0; extra <= 4; extra += 2) {
            int P = Ps[i], m = P + extra, S = 10;
            pp_metrics r = sim("pipedream-2bw", gen(P, m, S));
            ck_assert_int_eq(r.drift_max, 0);
            ck_assert_int_eq(r.staleness_max, 1);
            /* Step 0 updates version 0 with gradients of version 0; every
             * later update uses gradients one version old. */
            ck_assert_double_eq_tol(r.staleness_mean, (double)(S - 1) / S, EPS);
            for (int s = 0; s < P; s++)
                ck_assert_int_eq(r.stage[s].peak_weight_copies, 2);
            pp_metrics_free(&r);
        }
    pp_err e;
    pp_stream *st;
    pp_gen_opts o = gen(8, 4, 4);
    ck_assert_int_eq(pp_generate("pipedream-2bw", &o, &st, &e), -1);
    ck_assert(strstr(e.msg, "m=4") && strstr(e.msg, "P=8"));
}
END_TEST

START_TEST(pipedream_closed_forms)
{
    for (int P = 1; P <= 8; P++) {
        pp_metrics r = sim("pipedream", gen(P, 4, 8)); /* 32 micro-batches */
        ck_assert_int_eq(r.info.microbatches_per_step, 1);
        ck_assert_int_eq(r.drift_max, 0);
        for (int s = 0; s < P; s++) {
            ck_assert_int_eq(r.stage[s].staleness_max, P - 1 - s);
            ck_assert_int_eq(r.stage[s].peak_weight_copies, P - s);
        }
        ck_assert_double_eq_tol(r.makespan, (32.0 + P - 1) * 3, EPS);
        pp_metrics_free(&r);
    }
}
END_TEST

START_TEST(gpipe_closed_forms)
{
    for (int P = 1; P <= 6; P++)
        for (int m = 1; m <= 9; m += 2) {
            pp_metrics r = sim("gpipe", gen(P, m, 3));
            ck_assert_double_eq_tol(r.makespan, 3.0 * (m + P - 1) * 3, EPS);
            ck_assert_int_eq(r.drift_max, 0);
            ck_assert_int_eq(r.staleness_max, 0);
            for (int s = 0; s < P; s++)
                ck_assert_int_eq(r.stage[s].peak_inflight, m);
            pp_metrics_free(&r);
        }
}
END_TEST

/* Stage s's action list as text, e.g. "F0 F1 B0 OPT". */
static void stage_text(const pp_schedule *s, int stage, size_t limit, char *out, size_t n)
{
    out[0] = '\0';
    for (size_t i = 0; i < s->rank[stage].count && i < limit; i++) {
        char buf[32];
        pp_action_format(s->rank[stage].items[i], buf, sizeof buf);
        strncat(out, i ? " " : "", n - strlen(out) - 1);
        strncat(out, buf, n - strlen(out) - 1);
    }
}

static pp_metrics sim_full(const char *name, pp_gen_opts o, pp_timeline *tl)
{
    pp_err e = {{0}};
    pp_schedule s;
    ck_assert_msg(pp_generate_schedule(name, &o, &s, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_stream *st;
    ck_assert(pp_stream_from_schedule(&s, &st, &e) == 0);
    pp_cost c;
    ck_assert(pp_cost_init(&c, o.stages, &e) == 0);
    ck_assert(pp_timeline_init(tl, &s.info, &e) == 0);
    pp_sim_config cfg = {&c, NULL, 0, tl, NULL, NULL};
    pp_metrics m;
    ck_assert_msg(pp_simulate(st, &cfg, &m, &e) == 0, "%s", e.msg);
    pp_stream_free(st);
    pp_schedule_free(&s);
    pp_cost_free(&c);
    return m;
}

START_TEST(reference_timeline_p4)
{
    pp_err e;
    pp_schedule s;
    pp_gen_opts o = gen(4, 4, 3);
    ck_assert(pp_generate_schedule("paci", &o, &s, &e) == 0);
    char text[512];
    stage_text(&s, 0, 14, text, sizeof text);
    ck_assert_str_eq(text, "F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 OPT F7 B4");
    stage_text(&s, 3, 9, text, sizeof text);
    ck_assert_str_eq(text, "F0 B0 F1 B1 F2 B2 F3 B3 OPT");
    pp_schedule_free(&s);
    o = gen(4, 4, 2);
    ck_assert(pp_generate_schedule("1f1b-flush", &o, &s, &e) == 0);
    stage_text(&s, 0, 16, text, sizeof text);
    ck_assert_str_eq(text, "F0 F1 F2 F3 B0 B1 B2 B3 OPT F4 F5 F6 F7 B4 B5 B6");
    stage_text(&s, 2, 9, text, sizeof text);
    ck_assert_str_eq(text, "F0 F1 B0 F2 B1 F3 B2 B3 OPT");
    pp_schedule_free(&s);

    pp_timeline tl;
    pp_metrics r = sim_full("paci", gen(4, 4, 3), &tl);
    ck_assert_double_eq_tol(r.makespan, 45.0, EPS);
    /* micro-batch 4 on stage 0: forward at version 0, backward at 1 */
    pp_mb_row *rows;
    size_t n;
    ck_assert(pp_timeline_mb_rows(&tl, &rows, &n, &e) == 0);
    ck_assert_int_eq(n, 4 * 12);
    ck_assert_int_eq(rows[4].stage, 0);
    ck_assert_int_eq(rows[4].mb, 4);
    ck_assert_int_eq(rows[4].v_f, 0);
    ck_assert_int_eq(rows[4].v_b, 1);
    /* stage 0: F0..F3 at 0,1,2,3; B0 waits for the gradient from stage 1 */
    ck_assert_double_eq_tol(rows[3].f_start, 3.0, EPS);
    /* its B0 starts after B0 ran on stages 3, 2, 1: [4,6], [6,8], [8,10] */
    ck_assert_double_eq_tol(rows[0].b_start, 10.0, EPS);
    free(rows);
    pp_timeline_free(&tl);
    pp_metrics_free(&r);

    r = sim_full("1f1b-flush", gen(4, 4, 2), &tl);
    ck_assert_double_eq_tol(r.makespan, 42.0, EPS);
    pp_timeline_free(&tl);
    pp_metrics_free(&r);
}
END_TEST

START_TEST(summary_equals_full)
{
    const char *names[] = {"gpipe", "1f1b-flush", "pipedream", "pipedream-2bw", "paci"};
    for (int k = 0; k < 5; k++) {
        pp_timeline tl;
        pp_metrics a = sim(names[k], gen(5, 6, 7)), b = sim_full(names[k], gen(5, 6, 7), &tl);
        ck_assert_double_eq(a.makespan, b.makespan);
        ck_assert_double_eq(a.bubble_fraction, b.bubble_fraction);
        ck_assert_int_eq(a.has_steady, b.has_steady);
        ck_assert_double_eq(a.steady_bubble_fraction, b.steady_bubble_fraction);
        ck_assert_double_eq(a.drift_mean, b.drift_mean);
        ck_assert_double_eq(a.staleness_mean, b.staleness_mean);
        /* and the metrics recomputed from the recorded timeline agree */
        pp_metrics c;
        pp_err e;
        ck_assert_msg(pp_metrics_from_timeline(&tl, NULL, 0, NULL, &c, &e) == 0, "%s", e.msg);
        ck_assert_double_eq(a.makespan, c.makespan);
        ck_assert_double_eq(a.steady_bubble_fraction, c.steady_bubble_fraction);
        ck_assert_double_eq(a.staleness_mean, c.staleness_mean);
        ck_assert_int_eq(a.drift_max, c.drift_max);
        pp_metrics_free(&a);
        pp_metrics_free(&b);
        pp_metrics_free(&c);
        pp_timeline_free(&tl);
    }
}
END_TEST

START_TEST(steady_absent_when_too_short)
{
    pp_metrics r = sim("1f1b-flush", gen(4, 4, 2));
    ck_assert_int_eq(r.has_steady, 0);
    pp_metrics_free(&r);
    r = sim("1f1b-flush", gen(4, 4, 3));
    ck_assert_int_eq(r.has_steady, 1);
    pp_metrics_free(&r);
}
END_TEST

START_TEST(communication_alpha_beta)
{
    pp_err e;
    pp_cost c;
    ck_assert(pp_cost_init(&c, 2, &e) == 0);
    c.comm_latency = 0.5;
    c.comm_bandwidth = 100.0;
    c.boundary_bytes = 50.0; /* + 0.5 per message */
    pp_metrics r = sim_cost("1f1b-flush", gen(2, 1, 1), &c, NULL);
    /* F0 s0 [0,1], send 1, F0 s1 [2,3], B0 s1 [3,5], send 1, B0 s0 [6,8] */
    ck_assert_double_eq_tol(r.makespan, 8.0, EPS);
    pp_metrics_free(&r);
    /* messages on one link queue behind each other: GPipe P=2, m=2 with a
     * transfer of 3 > F: the second activation arrives at 1+3+3 = 7 */
    c.comm_latency = 3.0;
    c.comm_bandwidth = 0.0;
    r = sim_cost("gpipe", gen(2, 2, 1), &c, NULL);
    /* sends [1,4] [4,7]; s1 F0 [4,5] F1 [7,8] B0 [8,10] B1 [10,12];
     * gradients [10,13] [13,16]; s0 B0 [13,15] B1 [16,18] */
    ck_assert_double_eq_tol(r.makespan, 18.0, EPS);
    pp_metrics_free(&r);
    pp_cost_free(&c);
}
END_TEST

START_TEST(heterogeneous_and_straggler)
{
    pp_err e;
    pp_cost c;
    ck_assert(pp_cost_init(&c, 3, &e) == 0);
    ck_assert(pp_parse_per_stage("1,2,3", c.fwd, 3, "--fwd", &e) == 0);
    pp_metrics r = sim_cost("1f1b-flush", gen(3, 1, 1), &c, NULL);
    ck_assert_double_eq_tol(r.makespan, 1 + 2 + 3 + 2 * 3, EPS);
    pp_metrics_free(&r);
    ck_assert_int_eq(pp_parse_per_stage("1,2", c.fwd, 3, "--fwd", &e), -1);
    ck_assert(strstr(e.msg, "--fwd"));
    ck_assert_int_eq(pp_parse_per_stage("-1", c.fwd, 3, "--fwd", &e), -1);
    pp_cost_free(&c);

    ck_assert(pp_cost_init(&c, 1, &e) == 0);
    c.straggler_stage = 0;
    c.straggler_factor = 2.0;
    r = sim_cost("1f1b-flush", gen(1, 4, 2), &c, NULL);
    ck_assert_double_eq_tol(r.makespan, 2 * 8 * 3.0, EPS);
    pp_metrics_free(&r);
    c.straggler_until = 12.0; /* slow for the first 12 units only: 4 F, 2 B */
    r = sim_cost("1f1b-flush", gen(1, 4, 2), &c, NULL);
    ck_assert_double_eq_tol(r.makespan, 24.0 + 12.0 / 2, EPS);
    pp_metrics_free(&r);
    pp_cost_free(&c);
}
END_TEST

START_TEST(jitter_is_seeded)
{
    pp_err e;
    pp_cost c;
    ck_assert(pp_cost_init(&c, 4, &e) == 0);
    c.jitter = 0.2;
    c.seed = 7;
    pp_metrics a = sim_cost("paci", gen(4, 4, 8), &c, NULL);
    pp_metrics b = sim_cost("paci", gen(4, 4, 8), &c, NULL);
    c.seed = 8;
    pp_metrics d = sim_cost("paci", gen(4, 4, 8), &c, NULL);
    ck_assert_double_eq(a.makespan, b.makespan);
    ck_assert(a.makespan != d.makespan);
    ck_assert(fabs(a.makespan - 105.0) < 0.2 * 105.0);
    ck_assert(a.makespan != 105.0);
    pp_metrics_free(&a);
    pp_metrics_free(&b);
    pp_metrics_free(&d);
    pp_cost_free(&c);
}
END_TEST

START_TEST(memory_model)
{
    pp_err e;
    pp_model_desc md;
    ck_assert(pp_model_preset("gpt2-medium", &md, &e) == 0);
    pp_cost c;
    ck_assert(pp_cost_init(&c, 8, &e) == 0);
    pp_metrics f = sim_cost("1f1b-flush", gen(8, 8, 8), &c, &md);
    pp_metrics p = sim_cost("paci", gen(8, 8, 8), &c, &md);
    pp_metrics w = sim_cost("pipedream-2bw", gen(8, 8, 8), &c, &md);
    for (int s = 0; s < 8; s++) {
        pp_stage_memory sm = pp_model_stage_memory(&md, 8, s);
        double expect = sm.weights + sm.grads + sm.optimizer + (8 - s) * sm.activation_per_mb;
        ck_assert_double_eq_tol(f.stage[s].peak_memory_bytes, expect, 1.0);
        /* PACI holds what 1F1B-flush holds; 2BW one more weight copy */
        ck_assert_double_eq_tol(p.stage[s].peak_memory_bytes, expect, 1.0);
        ck_assert_double_eq_tol(w.stage[s].peak_memory_bytes, expect + sm.weights, 1.0);
    }
    ck_assert_double_eq_tol(f.throughput_tokens, f.throughput_mb * 4 * 1024, 1e-9);
    /* parameter count of GPT-2 medium with an untied output layer */
    ck_assert_double_eq_tol(pp_model_total_params(&md), 355e6 + 50257.0 * 1024, 2e6);
    pp_metrics_free(&f);
    pp_metrics_free(&p);
    pp_metrics_free(&w);
    /* recompute: only stage inputs in flight, plus one micro-batch's
     * activations while it is recomputed */
    pp_gen_opts o = gen(8, 8, 8);
    o.recompute = 1;
    p = sim_cost("paci", o, &c, &md);
    pp_stage_memory sm = pp_model_stage_memory(&md, 8, 3);
    ck_assert_double_eq_tol(p.stage[3].peak_memory_bytes,
                            sm.weights + sm.grads + sm.optimizer + 5 * sm.input_per_mb +
                                sm.activation_per_mb, 1.0);
    pp_metrics_free(&p);
    pp_cost_free(&c);
    ck_assert_int_eq(pp_model_preset("gpt5", &md, &e), -1);
    ck_assert(strstr(e.msg, "gpt5"));
}
END_TEST

START_TEST(engine_reports_deadlock)
{
    pp_err e = {{0}};
    pp_ir_info info = {0};
    snprintf(info.name, sizeof info.name, "bad");
    info.stages = 2;
    info.microbatches_per_step = 2;
    info.steps = 1;
    info.total_microbatches = 2;
    pp_schedule s;
    ck_assert(pp_schedule_init(&s, &info, &e) == 0);
    /* stage 0 waits for B0's gradient before sending F1; stage 1 wants F1 first */
    pp_action s0[] = {pp_act(PP_OP_F, 0), pp_act(PP_OP_B, 0), pp_act(PP_OP_F, 1),
                      pp_act(PP_OP_B, 1), pp_act(PP_OP_OPT, -1)};
    pp_action s1[] = {pp_act(PP_OP_F, 0), pp_act(PP_OP_F, 1), pp_act(PP_OP_B, 0),
                      pp_act(PP_OP_B, 1), pp_act(PP_OP_OPT, -1)};
    for (int i = 0; i < 5; i++) {
        pp_schedule_push(&s, 0, s0[i], &e);
        pp_schedule_push(&s, 1, s1[i], &e);
    }
    pp_stream *st;
    ck_assert(pp_stream_from_schedule(&s, &st, &e) == 0);
    pp_cost c;
    pp_cost_init(&c, 2, &e);
    pp_sim_config cfg = {&c, NULL, 0, NULL, NULL, NULL};
    pp_metrics m;
    ck_assert_int_eq(pp_simulate(st, &cfg, &m, &e), -1);
    ck_assert_msg(strstr(e.msg, "deadlock: stage 0") && strstr(e.msg, "B0"), "%s", e.msg);
    pp_stream_free(st);
    pp_cost_free(&c);
    pp_schedule_free(&s);
}
END_TEST

/* A profile is for exactly its "stages": 2.9 is not a profile for 2
 * stages (it loaded as one: cJSON's valueint truncates). */
START_TEST(profile_stages_must_equal_the_schedules)
{
    const char *stages[] = {"2", "2.0", "2.9", "2.000001", "1e300", "\"2\""};
    const int loads[] = {1, 1, 0, 0, 0, 0};
    char path[] = "/tmp/ppsched-test-profile-XXXXXX";
    int fd = mkstemp(path);
    ck_assert(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof stages / sizeof *stages; i++) {
        FILE *f = fopen(path, "w");
        ck_assert(f);
        fprintf(f, "{\"format\": \"ppsched-profile\", \"version\": 1, \"stages\": %s, "
                   "\"fwd\": [1, 1], \"bwd\": [2, 2]}", stages[i]);
        fclose(f);
        pp_cost c;
        pp_err e = {{0}};
        ck_assert(pp_cost_init(&c, 2, &e) == 0);
        int rc = pp_cost_load_profile(&c, path, &e);
        ck_assert_msg(rc == (loads[i] ? 0 : -1), "\"stages\": %s %s (%s)", stages[i],
                      loads[i] ? "refused" : "loaded for 2 stages", e.msg);
        ck_assert_msg(loads[i] || strstr(e.msg, "the schedule has 2"), "%s", e.msg);
        pp_cost_free(&c);
    }
    unlink(path);
}
END_TEST

/* A torch.distributed.pipelining compute-only CSV of 1F1B (one row per
 * rank, one column per time slot of F=1, empty cells where the rank idles,
 * as PyTorch writes it) simulates exactly like the generated 1f1b-flush. */
START_TEST(pytorch_csv_equals_generated)
{
    int P = 4, m = 8;
    pp_timeline tl;
    pp_gen_opts o = {P, m, 1, 0, 0};
    pp_cost unit;
    pp_err e = {{0}};
    /* lay the generated schedule on a grid of unit slots (F=1, B=2 -> 2) */
    pp_metrics ref = sim_full("1f1b-flush", o, &tl);
    char csv[8192] = "";
    for (int s = 0; s < P; s++) {
        int slot = 0;
        for (size_t i = 0; i < tl.stage[s].count; i++) {
            const pp_timed_action *a = &tl.stage[s].items[i];
            if (a->act.op == PP_OP_OPT)
                continue;
            for (; slot < (int)a->start; slot++)
                strcat(csv, ",");
            char cell[32];
            snprintf(cell, sizeof cell, "%d%c%d,", s, a->act.op == PP_OP_F ? 'F' : 'B', a->act.mb);
            strcat(csv, cell);
            slot = (int)a->end;
        }
        csv[strlen(csv) - 1] = '\n';
    }
    pp_schedule parsed;
    ck_assert_msg(pp_schedule_parse_pytorch_csv(csv, &parsed, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_schedule_validate(&parsed, &e) == 0, "%s", e.msg);
    pp_stream *st;
    ck_assert(pp_stream_from_schedule(&parsed, &st, &e) == 0);
    ck_assert(pp_cost_init(&unit, P, &e) == 0);
    pp_sim_config cfg = {&unit, NULL, 0, NULL, NULL, NULL};
    pp_metrics got;
    ck_assert_msg(pp_simulate(st, &cfg, &got, &e) == 0, "%s", e.msg);
    ck_assert_double_eq(got.makespan, ref.makespan);
    ck_assert_double_eq(got.bubble_fraction, ref.bubble_fraction);
    ck_assert_int_eq(got.drift_max, ref.drift_max);
    ck_assert_int_eq(got.staleness_max, ref.staleness_max);
    for (int s = 0; s < P; s++) {
        ck_assert_double_eq(got.stage[s].busy, ref.stage[s].busy);
        ck_assert_int_eq(got.stage[s].peak_inflight, ref.stage[s].peak_inflight);
    }
    pp_metrics_free(&got);
    pp_metrics_free(&ref);
    pp_stream_free(st);
    pp_schedule_free(&parsed);
    pp_cost_free(&unit);
    pp_timeline_free(&tl);
}
END_TEST

static Suite *sim_suite(void)
{
    Suite *s = suite_create("sim");
    TCase *t = tcase_create("closed_forms");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, flush_closed_forms);
    tcase_add_test(t, paci_closed_forms);
    tcase_add_test(t, pipedream_2bw_closed_forms);
    tcase_add_test(t, pipedream_closed_forms);
    tcase_add_test(t, gpipe_closed_forms);
    tcase_add_test(t, reference_timeline_p4);
    tcase_add_test(t, summary_equals_full);
    tcase_add_test(t, steady_absent_when_too_short);
    tcase_add_test(t, communication_alpha_beta);
    tcase_add_test(t, heterogeneous_and_straggler);
    tcase_add_test(t, jitter_is_seeded);
    tcase_add_test(t, memory_model);
    tcase_add_test(t, engine_reports_deadlock);
    tcase_add_test(t, pytorch_csv_equals_generated);
    tcase_add_test(t, profile_stages_must_equal_the_schedules);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(sim_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
