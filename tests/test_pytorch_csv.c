/* The import of PyTorch's schedule CSV (common/ir_pytorch_csv.c) on ranks
 * that hold several stages: the placement read from the file (one stage
 * per rank, looped, V-shape), overlapped cells, a round trip through the
 * export, and one line for each kind of bad file. (Files with one stage
 * per rank: test_ir; every file PyTorch wrote: pytorch_csv_test.sh.) */
#define _POSIX_C_SOURCE 200809L /* open_memstream */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* Rank r's list as space-separated staged text, a pair as "0F3+3B1". */
static void rank_text(const pp_schedule *s, int r, char *out, size_t n)
{
    out[0] = '\0';
    const pp_action_list *l = &s->rank[r];
    for (size_t i = 0; i < l->count; i++) {
        char buf[32];
        pp_action_format_staged(l->items[i], buf, sizeof buf);
        strncat(out, i == 0 ? "" : l->items[i - 1].with_next ? "+" : " ", n - strlen(out) - 1);
        strncat(out, buf, n - strlen(out) - 1);
    }
}

static void parse_ok(const char *csv, pp_schedule *s)
{
    pp_err e = {{0}};
    ck_assert_msg(pp_schedule_parse_pytorch_csv(csv, s, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_schedule_validate(s, &e) == 0, "%s", e.msg);
}

/* The placement, ranks and stages the import found; `what` names the input. */
static void assert_layout(const pp_schedule *s, const char *what, int placement, int ranks,
                          int stages)
{
    ck_assert_msg(s->info.placement == placement && s->info.ranks == ranks &&
                      s->info.stages == stages,
                  "%s: %s placement, %d ranks, %d stages; want %s, %d, %d", what,
                  pp_place_name(s->info.placement), s->info.ranks, s->info.stages,
                  pp_place_name(placement), ranks, stages);
}

/* ScheduleDualPipeV r=2 m=4 as PyTorch 2.15 writes it (compute_only). */
static const char dualpipev[] =
    "0F0,0F1,0F2,3F0,3I0,3W0,3F1,(0F3;3B1)OVERLAP_F_B,(3F2;0B0)OVERLAP_F_B,3B2,"
    "(3F3;0B1)OVERLAP_F_B,3B3,0I2,0W2,0I3,0W3\r\n"
    "1F0,2F0,1F1,2F1,1F2,2B0,(2F2;1B0)OVERLAP_F_B,(1F3;2B1)OVERLAP_F_B,"
    "(2F3;1B1)OVERLAP_F_B,2B2,1B2,2I3,1I3,2W3,1W3\r\n";

START_TEST(v_shape_with_overlapped_cells)
{
    pp_schedule s;
    parse_ok(dualpipev, &s);
    assert_layout(&s, "DualPipeV", PP_PLACE_V, 2, 4);
    ck_assert_int_eq(s.info.total_microbatches, 4);
    ck_assert_int_eq(s.info.microbatches_per_step, 4);
    ck_assert_int_eq(s.info.steps, 1);
    char text[512];
    rank_text(&s, 0, text, sizeof text);
    ck_assert_str_eq(text, "0F0 0F1 0F2 3F0 3I0 3W0 3F1 0F3+3B1 3F2+0B0 3B2 3F3+0B1 3B3 0I2 0W2 "
                           "0I3 0W3 0OPT 3OPT");
    rank_text(&s, 1, text, sizeof text);
    ck_assert_str_eq(text, "1F0 2F0 1F1 2F1 1F2 2B0 2F2+1B0 1F3+2B1 2F3+1B1 2B2 1B2 2I3 1I3 2W3 "
                           "1W3 1OPT 2OPT");
    pp_schedule_free(&s);

    /* I in place of B, and the backward first: the same pair, either way */
    parse_ok("0F0,0F1,1F0,(1I0;0F2)OVERLAP_F_B,1W0,1F1,1I1,1W1,1F2,1B2,0B0,0B1,0B2\n", &s);
    assert_layout(&s, "one rank", PP_PLACE_LOOPED, 1, 2); /* looped before V-shape */
    rank_text(&s, 0, text, sizeof text);
    ck_assert_str_eq(text, "0F0 0F1 1F0 1I0+0F2 1W0 1F1 1I1 1W1 1F2 1B2 0B0 0B1 0B2 0OPT 1OPT");
    pp_schedule_free(&s);
}
END_TEST

START_TEST(looped_with_idle_slots)
{
    /* ScheduleInterleaved1F1B r=2 v=2 m=4 (compute_only, PyTorch 2.15) */
    pp_schedule s;
    parse_ok("0F0,0F1,2F0,2F1,,,0F2,2B0,0F3,2B1,2F2,0B0,2F3,0B1,,2B2,,2B3,,0B2,,0B3\r\n"
             ",1F0,1F1,,3F0,3B0,3F1,3B1,1F2,1B0,1F3,1B1,3F2,3B2,3F3,3B3,,1B2,,1B3\r\n",
             &s);
    assert_layout(&s, "Interleaved1F1B", PP_PLACE_LOOPED, 2, 4);
    char text[512];
    rank_text(&s, 1, text, sizeof text);
    ck_assert_str_eq(text, "1F0 1F1 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 1B2 1B3 1OPT "
                           "3OPT");
    pp_schedule_free(&s);

    /* LoopedBFS-like, 3 chunks per rank, with compute_comms cells */
    parse_ok("0UNSHARD,0F0,0SEND_F0,2RECV_F0,2F0,2SEND_F0,4RECV_F0,4F0,4B0,4SEND_B0,2RECV_B0,"
             "2B0,2SEND_B0,0RECV_B0,0B0,0REDUCE_GRAD,0WAIT_REDUCE_GRAD\n"
             "1RECV_F0,1F0,1SEND_F0,3RECV_F0,3F0,3SEND_F0,5RECV_F0,5F0,5B0,5SEND_B0,3RECV_B0,"
             "3B0,3SEND_B0,1RECV_B0,1B0,1SEND_B0\n",
             &s);
    assert_layout(&s, "LoopedBFS", PP_PLACE_LOOPED, 2, 6);
    rank_text(&s, 0, text, sizeof text);
    ck_assert_str_eq(text, "0F0 2F0 4F0 4B0 2B0 0B0 0OPT 2OPT 4OPT");
    pp_schedule_free(&s);

    /* one stage per rank stays one stage per rank */
    parse_ok("0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n", &s);
    assert_layout(&s, "1F1B", PP_PLACE_ONE, 2, 2);
    pp_schedule_free(&s);
}
END_TEST

START_TEST(fixture_files_get_their_placement)
{
    static const struct {
        const char *file;
        int placement, ranks, stages;
    } cases[] = {
        {"ScheduleGPipe-r4-v1-m8-compute_only.csv", PP_PLACE_ONE, 4, 4},
        {"ScheduleInterleaved1F1B-r4-v2-m8-compute_comms.csv", PP_PLACE_LOOPED, 4, 8},
        {"ScheduleLoopedBFS-r2-v2-m4-compute_only.csv", PP_PLACE_LOOPED, 2, 4},
        {"ScheduleInterleavedZeroBubble-r4-v2-m4-compute_only.csv", PP_PLACE_LOOPED, 4, 8},
        {"ScheduleZBVZeroBubble-r4-v2-m8-compute_comms.csv", PP_PLACE_V, 4, 8},
        {"ScheduleDualPipeV-r4-v2-m8-compute_only.csv", PP_PLACE_V, 4, 8},
    };
    const char *src = getenv("PPSCHED_SOURCE_DIR"); /* CTest's, else the build's */
    if (!src)
        src = PPSCHED_SOURCE_DIR;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tests/fixtures/pytorch/%s", src, cases[i].file);
        pp_err e = {{0}};
        pp_schedule s;
        ck_assert_msg(pp_schedule_load_pytorch_csv(path, &s, &e) == 0, "%s", e.msg);
        ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
        assert_layout(&s, cases[i].file, cases[i].placement, cases[i].ranks, cases[i].stages);
        pp_schedule_free(&s);
    }
}
END_TEST

/* Written as PyTorch's CSV and read back: the same placement and the
 * same lists, overlapped pairs included. */
START_TEST(export_reads_back_as_itself)
{
    pp_schedule a, b;
    parse_ok(dualpipev, &a);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    pp_err e = {{0}};
    ck_assert_msg(pp_schedule_write_pytorch_csv(&a, f, &e) == 0, "%s", e.msg);
    fclose(f);
    ck_assert_str_eq(buf, dualpipev); /* PyTorch's own file, byte for byte */
    parse_ok(buf, &b);
    free(buf);
    assert_layout(&b, "read back", a.info.placement, a.info.ranks, a.info.stages);
    for (int r = 0; r < a.info.ranks; r++) {
        ck_assert_uint_eq(a.rank[r].count, b.rank[r].count);
        ck_assert(memcmp(a.rank[r].items, b.rank[r].items,
                         a.rank[r].count * sizeof *a.rank[r].items) == 0);
    }
    pp_schedule_free(&a);
    pp_schedule_free(&b);
}
END_TEST

/* Each bad file: refused in one line that says where and why. */
START_TEST(bad_files_one_line_each)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        /* a stage on two ranks */
        {"0F0,0B0\n1F0,3F0,3B0,1B0\n2F0,3F0,3B0,2B0\n",
         "row 3 (rank 2), column 2: cell \"3F0\": stage 3 appears on rank 1 and rank 2"},
        {"0F0\n0F1\n", "row 2 (rank 1), column 1: cell \"0F1\": stage 0 appears on rank 0 and "
                       "rank 1"},
        /* overlapped cells that are not one forward and one backward */
        {"0F0,(0F1;1F0)OVERLAP_F_B\n", "row 1 (rank 0), column 2: cell \"(0F1;1F0)OVERLAP_F_B\": "
                                       "an overlapped cell is one forward and one backward (B or "
                                       "I), not two forwards"},
        {"0F0,(0B0;1I0)OVERLAP_F_B\n", "not two backwards"},
        {"0F0,(0F1;1W0)OVERLAP_F_B\n", "not a W"},
        {"0F0,(0F1;1B0;2B0)OVERLAP_F_B\n", "column 2: cell \"(0F1;1B0;2B0)OVERLAP_F_B\": "
                                           "expected (<stage>F<micro-batch>;"},
        {"0F0,(0F1)OVERLAP_F_B\n", "expected (<stage>F<micro-batch>;"},
        /* a W before its I, a backward before its forward (several stages) */
        {"0F0,1F0,1I0,0W0,0I0,1W0\n",
         "rank 0, action 4 \"0W0\": micro-batch 0 has no input gradient (I) before it"},
        {"0F0,2B0,2F0,0B0\n1F0,3F0,3B0,1B0\n",
         "rank 0, action 2 \"2B0\": micro-batch 0 has no forward before it"},
        {"0F0,0F1,0B0,0B1\n1B0,1F0,1F1,1B1\n",
         "rank 1, action 1 \"B0\": micro-batch 0 has no forward before it"},
        /* stages missing */
        {"0F0,0B0\n3F0,3B0\n",
         "row 2 (rank 1), column 1: cell \"3F0\": stage 3, but no cell names stage 1"},
        {"0F0,0B0,65534F0\n", "cell \"65534F0\": stage 65534, but no cell names stage 1"},
        {"0F0,65535F0\n", "cell \"65535F0\": stage number too large"},
        {"0F0,0B0\n\n1F0,1B0\n", "row 2 (rank 1): no compute cell"},
        /* mappings that are no placement */
        {"0F0,1F0,1B0,0B0\n2F0,3F0,3B0,2B0\n",
         "stage 1 is on rank 0, which fits neither looped placement (rank 1) nor V-shape (rank "
         "1)"},
        {"0F0,2F0,3F0,3B0,2B0,0B0\n1F0,1B0\n",
         "stage 3 is on rank 0, not rank 1 as looped placement puts it, and stage 2 on rank 0, "
         "not rank 1 as V-shape puts it"},
        {"0F0,2F0,2B0,0B0\n1F0,1B0\n",
         "stage 2 is on rank 0 as looped placement puts it, but 3 stages do not divide over 2 "
         "ranks"},
        {"0F0,2F0,0B0,2B0\n1F0,3F0,4F0,5F0,5B0,4B0,3B0,1B0\n",
         "stage 4 is on rank 1, which fits neither looped placement (rank 0) nor V-shape (4 "
         "stages over 2 ranks, the file has 6)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pp_err e = {{0}};
        pp_schedule s;
        ck_assert_msg(pp_schedule_parse_pytorch_csv(cases[i].text, &s, &e) == -1,
                      "case %zu accepted", i);
        ck_assert_msg(strstr(e.msg, cases[i].want), "case %zu: want \"%s\" in \"%s\"", i,
                      cases[i].want, e.msg);
        ck_assert_msg(!strchr(e.msg, '\n'), "case %zu: more than one line: %s", i, e.msg);
        ck_assert_ptr_null(s.rank);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pytorch_csv");
    TCase *t = tcase_create("import");
    tcase_add_test(t, v_shape_with_overlapped_cells);
    tcase_add_test(t, looped_with_idle_slots);
    tcase_add_test(t, fixture_files_get_their_placement);
    tcase_add_test(t, export_reads_back_as_itself);
    tcase_add_test(t, bad_files_one_line_each);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
