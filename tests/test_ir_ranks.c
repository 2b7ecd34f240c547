/* Ranks that hold several stages: the staged text form, placements, IR
 * JSON with ranks and overlapped pairs, validation that names rank, stage
 * and action, and the simulator's rank resource (free hand-over between
 * stages of one rank, links per pair of ranks, overlapped pairs). */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cost.h"
#include "engine.h"
#include "ir.h"

/* A schedule from IR JSON text; fails the test when it does not parse. */
static pp_schedule parse_ok(const char *json)
{
    pp_schedule s;
    pp_err e = {{0}};
    ck_assert_msg(pp_schedule_parse_json(json, &s, &e) == 0, "%s", e.msg);
    return s;
}

/* The error of parsing (or, if it parses, of validating) json. */
static void expect_error(const char *json, const char *want)
{
    pp_schedule s;
    pp_err e = {{0}};
    int rc = pp_schedule_parse_json(json, &s, &e);
    if (rc == 0) {
        rc = pp_schedule_validate(&s, &e);
        pp_schedule_free(&s);
    }
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strstr(e.msg, want), "want \"%s\" in \"%s\"", want, e.msg);
    ck_assert_msg(!strchr(e.msg, '\n'), "one line: %s", e.msg);
}

#define HDR(S, R, PLACE)                                                                   \
    "{\"format\":\"ppsched-ir\",\"version\":1,\"schedule\":\"t\",\"stages\":" #S             \
    ",\"ranks\":" #R ",\"placement\":\"" PLACE "\",\"microbatches_per_step\":2,\"steps\":1,"

/* One rank holding both stages of a V (stage 0 down, stage 1 back up). */
static const char *v_one_rank =
    HDR(2, 1, "v") "\"actions\":[[\"0F0\",\"1F0\",\"0F1+1B0\",\"1F1\",\"1B1\",\"0B0\","
                   "\"0B1\",\"0OPT\",\"1OPT\"]]}";

START_TEST(staged_text)
{
    pp_action a[2];
    int n;
    pp_err e = {{0}};
    ck_assert(pp_action_parse("12B3@s", &a[0], &e) == 0);
    ck_assert_int_eq(a[0].stage, 12);
    ck_assert_int_eq(a[0].op, PP_OP_B);
    ck_assert_int_eq(a[0].sel, PP_SEL_STASH);
    ck_assert(pp_action_parse("F3", &a[0], &e) == 0);
    ck_assert_int_eq(a[0].stage, PP_NO_STAGE);
    ck_assert(pp_action_parse("2OPT", &a[0], &e) == 0);
    ck_assert_int_eq(a[0].stage, 2);
    char buf[32];
    ck_assert_str_eq(pp_action_format_staged(a[0], buf, sizeof buf), "2OPT");
    ck_assert(pp_action_parse_cell("2F5+1B3", a, &n, &e) == 0);
    ck_assert_int_eq(n, 2);
    ck_assert(a[0].with_next && !a[1].with_next);
    ck_assert_str_eq(pp_action_format_staged(a[1], buf, sizeof buf), "1B3");
    const char *bad[][2] = {
        {"01F3", "the stage must be an integer"},
        {"1BARRIER", "BARRIER belongs to a rank"},
        {"65535F1", "the stage must be an integer 0..65534"},
        {"1F1+2F2", "one forward and one backward"},
        {"1W1+2F2", "one forward and one backward"},
        {"1F1+", "unknown action"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(pp_action_parse_cell(bad[i][0], a, &n, &e) == -1, "%s parsed", bad[i][0]);
        ck_assert_msg(strstr(e.msg, bad[i][1]), "%s: %s", bad[i][0], e.msg);
    }
}
END_TEST

START_TEST(placements)
{
    pp_ir_info in = {0};
    pp_err e = {{0}};
    in.stages = 8;
    in.ranks = 4;
    in.placement = PP_PLACE_LOOPED;
    ck_assert(pp_info_check_placement(&in, &e) == 0);
    int want_looped[8] = {0, 1, 2, 3, 0, 1, 2, 3}, want_v[8] = {0, 1, 2, 3, 3, 2, 1, 0};
    for (int s = 0; s < 8; s++)
        ck_assert_int_eq(pp_stage_rank(&in, s), want_looped[s]);
    in.placement = PP_PLACE_V;
    for (int s = 0; s < 8; s++)
        ck_assert_int_eq(pp_stage_rank(&in, s), want_v[s]);
    int st[4];
    ck_assert_int_eq(pp_rank_stages(&in, 1, st, 4), 2);
    ck_assert(st[0] == 1 && st[1] == 6);
    in.stages = 6;
    ck_assert(pp_info_check_placement(&in, &e) == -1);
    ck_assert_msg(strstr(e.msg, "two stages per rank"), "%s", e.msg);
    in.placement = PP_PLACE_LOOPED;
    in.ranks = 4;
    ck_assert(pp_info_check_placement(&in, &e) == -1);
    ck_assert_msg(strstr(e.msg, "6 stages do not divide over 4 ranks"), "%s", e.msg);
    pp_ir_info old = {0};
    old.stages = 5; /* written before ranks existed: one stage per rank */
    ck_assert(pp_info_check_placement(&old, &e) == 0);
    ck_assert_int_eq(old.ranks, 5);
}
END_TEST

START_TEST(json_round_trip_with_ranks)
{
    pp_schedule s = parse_ok(v_one_rank);
    pp_err e = {{0}};
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(s.info.ranks, 1);
    ck_assert_int_eq(s.info.placement, PP_PLACE_V);
    ck_assert_uint_eq(s.rank[0].count, 10); /* the pair is two actions */
    ck_assert(s.rank[0].items[2].with_next);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ck_assert(pp_schedule_write_json(&s, f, &e) == 0);
    fclose(f);
    ck_assert_msg(strstr(text, "\"0F1+1B0\""), "%s", text);
    ck_assert_msg(strstr(text, "\"placement\": \"v\""), "%s", text);
    pp_schedule back = parse_ok(text);
    ck_assert_uint_eq(back.rank[0].count, s.rank[0].count);
    ck_assert(memcmp(back.rank[0].items, s.rank[0].items,
                     s.rank[0].count * sizeof *s.rank[0].items) == 0);
    free(text);
    pp_schedule_free(&back);
    pp_schedule_free(&s);
}
END_TEST

START_TEST(json_refuses_misplaced_stages)
{
    expect_error(HDR(4, 2, "looped") "\"actions\":[[\"1F0\"],[]]}",
                 "rank 0: \"1F0\": stage 1 runs on rank 1 (looped placement)");
    expect_error(HDR(4, 2, "looped") "\"actions\":[[\"F0\"],[]]}", "names no stage");
    expect_error(HDR(4, 2, "looped") "\"actions\":[[\"7F0\"],[]]}", "names stage 7 of 4");
    expect_error(HDR(5, 2, "looped") "\"actions\":[[],[]]}", "5 stages do not divide over 2 ranks");
    expect_error(HDR(4, 2, "diagonal") "\"actions\":[[],[]]}", "\"placement\" must be");
    expect_error(HDR(4, 2, "looped") "\"actions\":[[]]}", "\"actions\" has 1 lists but \"ranks\" is 2");
    /* one stage per rank: a stage prefix must name the list's own stage */
    expect_error("{\"format\":\"ppsched-ir\",\"version\":1,\"schedule\":\"t\",\"stages\":2,"
                 "\"microbatches_per_step\":1,\"steps\":1,\"actions\":[[\"1F0\"],[]]}",
                 "names stage 1 in stage 0's list");
}
END_TEST

START_TEST(validate_names_rank_stage_action)
{
    /* stage 1's F0 (rank 1) waits for stage 0's F0, which rank 0 runs only
     * after its stage 2's F0, which needs stage 1's: a cycle over ranks */
    expect_error("{\"format\":\"ppsched-ir\",\"version\":1,\"schedule\":\"t\",\"stages\":4,"
                 "\"ranks\":2,\"placement\":\"looped\",\"microbatches_per_step\":1,\"steps\":1,"
                 "\"actions\":[[\"2F0\",\"0F0\",\"2B0\",\"0B0\",\"0OPT\",\"2OPT\"],"
                 "[\"1F0\",\"3F0\",\"3B0\",\"1B0\",\"1OPT\",\"3OPT\"]]}",
                 "deadlock: rank 0 stalls at action 0 \"2F0\" (stage 2, micro-batch 0) waiting "
                 "for F0 on stage 1 (rank 1)");
    expect_error(HDR(2, 1, "v") "\"actions\":[[\"0F0\",\"1F0\",\"1B0+0F0\",\"0F1\",\"1F1\","
                                "\"1B1\",\"0B0\",\"0B1\"]]}",
                 "rank 0 action 3 \"0F0\": second F of micro-batch 0");
    expect_error(HDR(2, 1, "v") "\"actions\":[[\"0F0\",\"0F1\",\"1F0\",\"1F1\",\"1I0\","
                                "\"1W1\",\"1W0\",\"1I1\",\"0B0\",\"0B1\"]]}",
                 "rank 0 action 5 \"1W1\": W before I of micro-batch 1");
    expect_error(HDR(2, 1, "v") "\"actions\":[[\"0F0\",\"0F1\",\"1F0\",\"1F1\",\"1B0\","
                                "\"1B1\",\"0B0\",\"0OPT\"]]}",
                 "stage 0 (rank 0): micro-batch 1 has no B");
    expect_error(HDR(2, 1, "v") "\"actions\":[[\"0F0\",\"0F1\",\"1F0\",\"1F1\",\"1B0\","
                                "\"1B1\",\"0B0\",\"0B1+0F1\"]]}",
                 "overlapped with its own micro-batch");
}
END_TEST

/* Uniform costs F = 1, B = 2 over S stages, X the overlap efficiency. */
static double makespan_of(const char *json, double X, double latency)
{
    pp_schedule s = parse_ok(json);
    pp_err e = {{0}};
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_cost c;
    ck_assert(pp_cost_init(&c, s.info.stages, &e) == 0);
    c.overlap_efficiency = X;
    c.comm_latency = latency;
    pp_stream *st;
    ck_assert(pp_stream_from_schedule(&s, &st, &e) == 0);
    pp_sim_config cfg = {&c, NULL, 0, NULL, NULL, NULL};
    pp_metrics m;
    ck_assert_msg(pp_simulate(st, &cfg, &m, &e) == 0, "%s", e.msg);
    double t = m.makespan;
    /* one rank computes the whole time but for the overlapped savings */
    if (s.info.ranks == 1)
        ck_assert_double_eq_tol(m.rank[0].busy, t, 1e-12);
    pp_metrics_free(&m);
    pp_stream_free(st);
    pp_cost_free(&c);
    pp_schedule_free(&s);
    return t;
}

START_TEST(overlapped_pair_costs)
{
    /* sequential: 1 + 1 + pair + 1 + 2 + 2 + 2, the pair max(1,2) + (1-X) 1 */
    ck_assert_double_eq_tol(makespan_of(v_one_rank, 0.0, 0.0), 12.0, 1e-12);
    ck_assert_double_eq_tol(makespan_of(v_one_rank, 1.0, 0.0), 11.0, 1e-12);
    ck_assert_double_eq_tol(makespan_of(v_one_rank, 0.5, 0.0), 11.5, 1e-12);
    /* stages of one rank hand over for free, whatever a link costs */
    ck_assert_double_eq_tol(makespan_of(v_one_rank, 0.0, 100.0), 12.0, 1e-12);
}
END_TEST

START_TEST(links_between_ranks_cost)
{
    /* looped, R = 2, S = 4, one micro-batch: F goes 0,1,2,3 over ranks
     * 0,1,0,1 and B back: 6 rank-to-rank messages of latency 10 */
    const char *one_mb =
        "{\"format\":\"ppsched-ir\",\"version\":1,\"schedule\":\"t\",\"stages\":4,\"ranks\":2,"
        "\"placement\":\"looped\",\"microbatches_per_step\":1,\"steps\":1,\"actions\":["
        "[\"0F0\",\"2F0\",\"2B0\",\"0B0\",\"0OPT\",\"2OPT\"],"
        "[\"1F0\",\"3F0\",\"3B0\",\"1B0\",\"1OPT\",\"3OPT\"]]}";
    ck_assert_double_eq_tol(makespan_of(one_mb, 0.0, 0.0), 12.0, 1e-12);
    ck_assert_double_eq_tol(makespan_of(one_mb, 0.0, 10.0), 12.0 + 6 * 10.0, 1e-12);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("ir_ranks");
    TCase *t = tcase_create("core");
    tcase_add_test(t, staged_text);
    tcase_add_test(t, placements);
    tcase_add_test(t, json_round_trip_with_ranks);
    tcase_add_test(t, json_refuses_misplaced_stages);
    tcase_add_test(t, validate_names_rank_stage_action);
    tcase_add_test(t, overlapped_pair_costs);
    tcase_add_test(t, links_between_ranks_cost);
    suite_add_tcase(su, t);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
