/* PACI and PipeDream-2BW with --chunks V > 1 (schedules/interleaved_walk.h):
 * the order is interleaved 1F1B over all micro-batches with no flush, the
 * weight rules are the one-chunk schedules' per stage, PACI's drift meets
 * the bound that paci.c proves (and reaches it on every stage), 2BW keeps
 * two versions, and the hints the executor reads are there. With V <= 1
 * both are today's schedules, action for action. Uniform stages, F = 1,
 * B = 2, free communication unless a test says otherwise. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "registry.h"
#include "test_support.h"

#define EPS 1e-9


/* Simulates the generated stream (summary mode) with F, B per stage. */
static pp_metrics simulate(const char *name, pp_gen_opts o, double F, double B)
{
    pp_err e = {{0}};
    pp_stream *st;
    ck_assert_msg(pp_generate(name, &o, &st, &e) == 0, "%s: %s", name, e.msg);
    pp_cost c;
    ck_assert(pp_cost_init(&c, st->info.stages, &e) == 0);
    for (int s = 0; s < st->info.stages; s++) {
        c.fwd[s] = F;
        c.bwd[s] = B;
    }
    pp_cost_split_backward(&c);
    pp_sim_config cfg = {&c, NULL, 0, NULL, NULL, NULL};
    pp_metrics m;
    ck_assert_msg(pp_simulate(st, &cfg, &m, &e) == 0, "%s R=%d V=%d m=%d: %s", name, o.stages,
                  o.chunks, o.microbatches, e.msg);
    pp_stream_free(st);
    pp_cost_free(&c);
    return m;
}

static int clamp(int x, int lo, int hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

static int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

/* interleaved_walk.c: micro-batches stage s holds when it forwards the
 * first of a group of R (T = 2(P-1-s)), and the most it ever holds. */
static int held_at_group(int R, int V, int s)
{
    int P = V * R, T = 2 * (P - 1 - s);
    return clamp(T + R - P, 0, R) + clamp(T + R - 2 * P, 0, R);
}

static int held_cap(int R, int V, int s)
{
    int P = V * R, T = 2 * (P - 1 - s);
    return (T + 1 < R ? T + 1 : R) + clamp(T + 1 - P, 0, R);
}

/* paci.c's bound: ceil((P-1-s)/a) with one chunk, ceil(I_s/a) with V. */
static int paci_drift_bound(int R, int V, int a, int s)
{
    return V <= 1 ? ceil_div(R - 1 - s, a) : ceil_div(held_at_group(R, V, s), a);
}

/* Rank r's list without its OPTs, as "2F5 0B3 ...". */
static void rank_text(const pp_schedule *s, int r, char *out, size_t n)
{
    out[0] = '\0';
    for (size_t i = 0; i < s->rank[r].count; i++) {
        char buf[32];
        if (s->rank[r].items[i].op == PP_OP_OPT)
            continue;
        size_t len = strlen(out);
        snprintf(out + len, n - len, "%s%s", len ? " " : "",
                 pp_action_format_staged(s->rank[r].items[i], buf, sizeof buf));
    }
}

static int same_actions(pp_action a, pp_action b)
{
    return a.op == b.op && a.sel == b.sel && a.with_next == b.with_next &&
           a.stage == b.stage && a.mb == b.mb && a.version == b.version;
}

/* --- V <= 1: today's schedules ---------------------------------------- */

START_TEST(one_chunk_is_todays_schedule)
{
    const char *names[] = {"paci", "pipedream-2bw"};
    for (int n = 0; n < 2; n++)
        for (int P = 1; P <= 6; P++)
            for (int m = P; m <= 2 * P + 1; m += P + 1)
                for (int S = 1; S <= 4; S += 3) {
                    pp_schedule a = test_generate(names[n], test_gen_opts(P, m, S, 0));
                    pp_schedule b = test_generate(names[n], test_gen_opts(P, m, S, 1));
                    ck_assert_int_eq(b.info.placement, PP_PLACE_ONE);
                    ck_assert_int_eq(b.info.ranks, P);
                    ck_assert_int_eq(b.info.stages, P);
                    ck_assert_ptr_null(pp_info_get_param(&b.info, "chunks"));
                    for (int r = 0; r < P; r++) {
                        ck_assert_uint_eq(a.rank[r].count, b.rank[r].count);
                        for (size_t i = 0; i < a.rank[r].count; i++)
                            ck_assert_msg(same_actions(a.rank[r].items[i], b.rank[r].items[i]),
                                          "%s P=%d m=%d S=%d: rank %d action %zu differs",
                                          names[n], P, m, S, r, i);
                    }
                    pp_schedule_free(&a);
                    pp_schedule_free(&b);
                }
    /* and that is DESIGN §3's reference order */
    pp_schedule s = test_generate("paci", test_gen_opts(4, 4, 3, 1));
    char text[4096];
    rank_text(&s, 0, text, sizeof text);
    const char *want = "0F0 0F1 0F2 0F3 0B0 0F4 0B1 0F5 0B2 0F6 0B3 0F7 0B4";
    ck_assert_msg(strncmp(text, want, strlen(want)) == 0, "%s", text);
    pp_schedule_free(&s);
}
END_TEST

/* --- the order ---------------------------------------------------------- */

START_TEST(chunked_order_is_interleaved_1f1b_without_flush)
{
    /* R=2, V=2, m=2, S=2: Megatron's order over all 4 micro-batches, an
     * OPT on each stage after its every second backward. */
    pp_schedule s = test_generate("paci", test_gen_opts(2, 2, 2, 2));
    char text[4096] = "";
    for (size_t i = 0; i < s.rank[0].count; i++) {
        char buf[32];
        size_t len = strlen(text);
        snprintf(text + len, sizeof text - len, "%s%s", i ? " " : "",
                 pp_action_format_staged(s.rank[0].items[i], buf, sizeof buf));
    }
    ck_assert_str_eq(text, "0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2OPT 2F2 0B0 2F3 0B1 0OPT 2B2 2B3 "
                           "2OPT 0B2 0B3 0OPT");
    pp_schedule_free(&s);

    /* In general: one step of interleaved-1f1b with m = N, OPTs aside. */
    for (int R = 1; R <= 6; R++)
        for (int V = 2; V <= 4; V++)
            for (int k = 1; k <= 2; k++)
                for (int S = 1; S <= 3; S++) {
                    int m = k * R;
                    pp_schedule p = test_generate("paci", test_gen_opts(R, m, S, V));
                    pp_schedule q = test_generate("interleaved-1f1b", test_gen_opts(R, m * S, 1, V));
                    ck_assert_int_eq(p.info.placement, PP_PLACE_LOOPED);
                    ck_assert_int_eq(p.info.stages, V * R);
                    ck_assert_int_eq(p.info.total_microbatches, m * S);
                    for (int r = 0; r < R; r++) {
                        static char a[1 << 16], b[1 << 16];
                        rank_text(&p, r, a, sizeof a);
                        rank_text(&q, r, b, sizeof b);
                        ck_assert_msg(strcmp(a, b) == 0, "R=%d V=%d m=%d S=%d rank %d:\n%s\n%s",
                                      R, V, m, S, r, a, b);
                    }
                    pp_schedule_free(&p);
                    pp_schedule_free(&q);
                }
}
END_TEST

/* OPT on a stage after each of its a-th backwards, and nowhere else. */
START_TEST(each_stage_updates_after_every_a_backwards)
{
    for (int R = 1; R <= 5; R++)
        for (int V = 2; V <= 3; V++) {
            int m = 2 * R, S = 3;
            pp_schedule s = test_generate("pipedream-2bw", test_gen_opts(R, m, S, V));
            int *bs = calloc((size_t)(V * R), sizeof *bs);
            int *opt = calloc((size_t)(V * R), sizeof *opt);
            ck_assert(bs && opt);
            for (int r = 0; r < R; r++)
                for (size_t i = 0; i < s.rank[r].count; i++) {
                    pp_action a = s.rank[r].items[i];
                    if (a.op == PP_OP_OPT) {
                        ck_assert_msg(bs[a.stage] == (opt[a.stage] + 1) * m,
                                      "R=%d V=%d stage %d: OPT %d after %d backwards", R, V,
                                      (int)a.stage, opt[a.stage], bs[a.stage]);
                        opt[a.stage]++;
                    } else if (a.op == PP_OP_B) {
                        ck_assert_int_eq(a.sel, PP_SEL_STASH);
                        bs[a.stage]++;
                    } else {
                        ck_assert_int_eq(a.sel, PP_SEL_VERSION);
                        ck_assert_int_eq(a.version, a.mb / m > 0 ? a.mb / m - 1 : 0);
                    }
                }
            for (int st = 0; st < V * R; st++)
                ck_assert_int_eq(opt[st], S);
            free(bs);
            free(opt);
            pp_schedule_free(&s);
        }
}
END_TEST

START_TEST(bad_options_give_one_line)
{
    struct {
        const char *name;
        pp_gen_opts o;
        const char *a, *b;
    } cases[] = {
        {"paci", {4, 6, 2, 0, 2}, "m=6", "R=4"},
        {"paci", {4, 2, 2, 0, 3}, "multiple", "--chunks 3"},
        {"pipedream-2bw", {4, 6, 2, 0, 2}, "m=6", "R=4"},
        {"pipedream-2bw", {4, 4, 2, 0, 2}, "2R-2 = 6", "m=4"},
        {"pipedream-2bw", {8, 8, 2, 0, 4}, "2R-2 = 14", "R=8"},
        {"paci", {0, 8, 2, 0, 2}, "--stages", NULL},
        {"paci", {4, 8, 0, 0, 2}, "--steps", NULL},
        {"1f1b-flush", {4, 8, 2, 0, 2}, "one stage per rank", "paci"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pp_err e = {{0}};
        pp_stream *st = NULL;
        ck_assert_msg(pp_generate(cases[i].name, &cases[i].o, &st, &e) == -1, "%s accepted",
                      cases[i].name);
        ck_assert_msg(strstr(e.msg, cases[i].a) && (!cases[i].b || strstr(e.msg, cases[i].b)) &&
                          !strchr(e.msg, '\n'),
                      "%s: \"%s\" lacks \"%s\"/\"%s\"", cases[i].name, e.msg, cases[i].a,
                      cases[i].b ? cases[i].b : "");
    }
}
END_TEST

START_TEST(registry_says_they_take_chunks)
{
    const char *names[] = {"paci", "pipedream-2bw"};
    for (int n = 0; n < 2; n++) {
        const pp_generator *g = pp_generator_find(names[n]);
        ck_assert_ptr_nonnull(g);
        ck_assert(g->chunked);
        ck_assert_msg(strstr(g->description, "--chunks"), "%s", g->description);
    }
}
END_TEST

/* --- PACI's drift ------------------------------------------------------- */

/* paci.c's bound on every stage of the grid, reached on every stage once a
 * step boundary ba >= 2R lies inside the run (S >= 3, or S = 2 with
 * a >= 2R); below that only <=. V = 1 is today's ceil((P-1-s)/a). */
START_TEST(paci_drift_meets_its_bound_on_every_stage)
{
    const int mult[] = {1, 2, 4};
    for (int R = 1; R <= 8; R++)
        for (int V = 1; V <= 4; V++)
            for (int j = 0; j < 3; j++)
                for (int S = 1; S <= 4; S++) {
                    int a = mult[j] * R, N = a * S, P = V * R;
                    int tight = S >= 3 || (S == 2 && a >= 2 * R);
                    pp_metrics r = simulate("paci", test_gen_opts(R, a, S, V), 1, 2);
                    ck_assert_int_eq(r.info.stages, P);
                    ck_assert_int_eq(r.staleness_max, 0);
                    ck_assert_int_eq(r.peak_weight_copies_max, 1);
                    /* interleaved 1F1B over all N micro-batches at once */
                    ck_assert_double_eq_tol(r.makespan, (double)(V * N + R - 1) * 3, EPS);
                    for (int s = 0; s < P; s++) {
                        int bound = paci_drift_bound(R, V, a, s), got = r.stage[s].drift_max;
                        ck_assert_msg(tight ? got == bound : got <= bound,
                                      "R=%d V=%d a=%d S=%d stage %d: drift %d, bound %d", R, V,
                                      a, S, s, got, bound);
                    }
                    pp_metrics_free(&r);
                }
}
END_TEST

/* The cap the order keeps: cap_s per stage (1F1B's P - s with one chunk),
 * warm-up + 1 per rank, both reached once the run is three steps long. */
START_TEST(paci_in_flight_meets_its_caps)
{
    const int mult[] = {1, 2, 4};
    for (int R = 1; R <= 8; R++)
        for (int V = 2; V <= 4; V++)
            for (int j = 0; j < 3; j++)
                for (int S = 1; S <= 3; S++) {
                    int a = mult[j] * R, N = a * S;
                    pp_metrics m = simulate("paci", test_gen_opts(R, a, S, V), 1, 2);
                    for (int s = 0; s < V * R; s++) {
                        int cap = held_cap(R, V, s), got = m.stage[s].peak_inflight;
                        ck_assert_msg(S == 3 ? got == cap : got <= cap,
                                      "R=%d V=%d a=%d S=%d stage %d: %d in flight, cap %d", R,
                                      V, a, S, s, got, cap);
                    }
                    for (int r = 0; r < R; r++) {
                        int warm = (V - 1) * R + 2 * (R - 1 - r);
                        int want = warm + 1 < V * N ? warm + 1 : V * N;
                        ck_assert_msg(m.rank[r].peak_inflight == want,
                                      "R=%d V=%d a=%d S=%d rank %d: %d in flight, want %d", R, V,
                                      a, S, r, m.rank[r].peak_inflight, want);
                    }
                    pp_metrics_free(&m);
                }
}
END_TEST

/* No flush: the middle steps have no bubble, and S steps beat S steps of
 * interleaved 1F1B (S(Vm+R-1)(F+B)) by the flushes they leave out. */
START_TEST(chunked_paci_has_no_steady_bubble)
{
    const double costs[][2] = {{1, 2}, {2, 3}, {1, 1}};
    for (int R = 2; R <= 8; R += 2)
        for (int V = 2; V <= 4; V++)
            for (size_t c = 0; c < 3; c++) {
                double F = costs[c][0], B = costs[c][1];
                int m = 2 * R, S = 8;
                pp_metrics p = simulate("paci", test_gen_opts(R, m, S, V), F, B);
                pp_metrics q = simulate("interleaved-1f1b", test_gen_opts(R, m, S, V), F, B);
                ck_assert_double_eq_tol(p.makespan, (V * m * S + R - 1) * (F + B), EPS);
                ck_assert_double_eq_tol(q.makespan, S * (V * m + R - 1) * (F + B), EPS);
                ck_assert(p.has_steady);
                ck_assert_msg(p.steady_bubble_fraction < EPS, "R=%d V=%d: steady bubble %g", R,
                              V, p.steady_bubble_fraction);
                pp_metrics_free(&p);
                pp_metrics_free(&q);
            }
}
END_TEST

/* --- PipeDream-2BW ------------------------------------------------------ */

/* As with one chunk (test_sim): no drift (backwards read the stash), a
 * gradient delay of one update, two weight copies on every stage. */
START_TEST(pipedream_2bw_chunked_keeps_two_versions)
{
    for (int R = 1; R <= 8; R++)
        for (int V = 2; V <= 4; V++) {
            int least = R >= 3 ? 2 * R : R; /* the multiple of R >= 2R-2 */
            for (int m = least; m <= least + 2 * R; m += R) {
                int S = 10;
                pp_metrics r = simulate("pipedream-2bw", test_gen_opts(R, m, S, V), 1, 2);
                ck_assert_int_eq(r.drift_max, 0);
                ck_assert_int_eq(r.staleness_max, 1);
                ck_assert_double_eq_tol(r.staleness_mean, (double)(S - 1) / S, EPS);
                for (int s = 0; s < V * R; s++)
                    ck_assert_msg(r.stage[s].peak_weight_copies == 2,
                                  "R=%d V=%d m=%d stage %d: %d weight copies", R, V, m, s,
                                  r.stage[s].peak_weight_copies);
                pp_metrics_free(&r);
            }
        }
}
END_TEST

/* --- the executor's hints ------------------------------------------------ */

/* The version the next forward of `stage` names after position i of its
 * rank's list, or -1. */
static int next_f_version_after(const pp_schedule *s, int rank, size_t i, int stage)
{
    for (size_t j = i + 1; j < s->rank[rank].count; j++) {
        pp_action a = s->rank[rank].items[j];
        if (a.op == PP_OP_F && a.stage == stage)
            return a.sel == PP_SEL_VERSION ? a.version : -1;
    }
    return -1;
}

/* Hints where the one-chunk schedule has them (2BW: stash and the next
 * forward's version; PACI: none), and per stage they name what the list
 * does. */
START_TEST(hints_are_there_per_stage)
{
    const char *names[] = {"paci", "pipedream-2bw"};
    for (int n = 0; n < 2; n++)
        for (int R = 1; R <= 5; R++)
            for (int V = 2; V <= 3; V++) {
                int m = R >= 3 ? 2 * R : R;
                pp_gen_opts o = test_gen_opts(R, m, 3, V), one = test_gen_opts(R, R, 3, 0);
                pp_err e = {{0}};
                pp_stream *st, *st1;
                ck_assert(pp_generate(names[n], &o, &st, &e) == 0);
                ck_assert(pp_generate(names[n], &one, &st1, &e) == 0);
                ck_assert_int_eq(st->stashes != NULL, st1->stashes != NULL);
                ck_assert_int_eq(st->next_f_version != NULL, st1->next_f_version != NULL);
                pp_stream_free(st1);
                pp_schedule s = test_generate(names[n], o);
                for (int r = 0; r < R; r++) {
                    pp_action a;
                    for (size_t i = 0; pp_stream_next(st, r, &a); i++) {
                        ck_assert(same_actions(a, s.rank[r].items[i]));
                        if (a.op == PP_OP_F && st->stashes)
                            ck_assert(st->stashes(st, a.stage, a.mb));
                        for (int c = 0; c < V && st->next_f_version; c++) {
                            int stage = c * R + r, got = st->next_f_version(st, stage);
                            int want = next_f_version_after(&s, r, i, stage);
                            ck_assert_msg(got == want,
                                          "%s R=%d V=%d rank %d after action %zu: stage %d's "
                                          "next forward reads v%d, the hint says %d",
                                          names[n], R, V, r, i, stage, want, got);
                        }
                    }
                }
                pp_stream_free(st);
                pp_schedule_free(&s);
            }
}
END_TEST

/* The stream in summary mode and the drained, validated IR agree. */
START_TEST(stream_and_drained_ir_agree)
{
    const char *names[] = {"paci", "pipedream-2bw"};
    for (int n = 0; n < 2; n++) {
        pp_gen_opts o = test_gen_opts(4, 8, 5, 3);
        pp_metrics a = simulate(names[n], o, 1, 2);
        pp_schedule s = test_generate(names[n], o);
        pp_err e = {{0}};
        pp_stream *st;
        ck_assert(pp_stream_from_schedule(&s, &st, &e) == 0);
        pp_cost c;
        ck_assert(pp_cost_init(&c, s.info.stages, &e) == 0);
        pp_sim_config cfg = {&c, NULL, 0, NULL, NULL, NULL};
        pp_metrics b;
        ck_assert_msg(pp_simulate(st, &cfg, &b, &e) == 0, "%s", e.msg);
        ck_assert_double_eq(a.makespan, b.makespan);
        ck_assert_int_eq(a.drift_max, b.drift_max);
        ck_assert_double_eq(a.drift_mean, b.drift_mean);
        ck_assert_double_eq(a.staleness_mean, b.staleness_mean);
        ck_assert_int_eq(a.peak_inflight_max, b.peak_inflight_max);
        pp_metrics_free(&a);
        pp_metrics_free(&b);
        pp_stream_free(st);
        pp_schedule_free(&s);
        pp_cost_free(&c);
    }
}
END_TEST

static Suite *async_chunks_suite(void)
{
    Suite *s = suite_create("async_chunks");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, one_chunk_is_todays_schedule);
    tcase_add_test(t, chunked_order_is_interleaved_1f1b_without_flush);
    tcase_add_test(t, each_stage_updates_after_every_a_backwards);
    tcase_add_test(t, bad_options_give_one_line);
    tcase_add_test(t, registry_says_they_take_chunks);
    tcase_add_test(t, paci_drift_meets_its_bound_on_every_stage);
    tcase_add_test(t, paci_in_flight_meets_its_caps);
    tcase_add_test(t, chunked_paci_has_no_steady_bubble);
    tcase_add_test(t, pipedream_2bw_chunked_keeps_two_versions);
    tcase_add_test(t, hints_are_there_per_stage);
    tcase_add_test(t, stream_and_drained_ir_agree);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(async_chunks_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
