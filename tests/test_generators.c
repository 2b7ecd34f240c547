/* The generators whose ranks hold several stages or whose backward is
 * split (interleaved-1f1b, looped-bfs, zb-h1, zbv, dualpipev): they
 * validate over a grid of sizes, they are synchronous, their orders are
 * the published ones (written out literally, and equal to the files
 * PyTorch 2.15 writes, tests/fixtures/pytorch/), and their makespans meet
 * the closed forms. */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "registry.h"
#include "test_support.h"

#define EPS 1e-9

#ifndef PPSCHED_SOURCE_DIR
#define PPSCHED_SOURCE_DIR "."
#endif

static const char *const new_generators[] = {"interleaved-1f1b", "looped-bfs", "zb-h1", "zbv",
                                             "dualpipev"};


/* Appends one action as text: staged ("2F5", "0OPT"), an overlapped pair
 * joined by "+" ("2F5+1B3"), otherwise separated by spaces. */
static void append(char *out, size_t n, pp_action a, int after_pair)
{
    char buf[32];
    size_t len = strlen(out);
    snprintf(out + len, n - len, "%s%s", len && !after_pair ? " " : "",
             pp_action_format_staged(a, buf, sizeof buf));
    if (a.with_next)
        strncat(out, "+", n - strlen(out) - 1);
}

/* A rank's list as text, with or without its OPTs. */
static void rank_text(const pp_schedule *s, int rank, int with_opt, char *out, size_t n)
{
    out[0] = '\0';
    const pp_action_list *l = &s->rank[rank];
    for (size_t i = 0; i < l->count; i++)
        if (with_opt || l->items[i].op != PP_OP_OPT)
            append(out, n, l->items[i], i > 0 && l->items[i - 1].with_next);
}

/* --- structure -------------------------------------------------------- */

/* Synchronous: on every stage, every action of micro-batch mb comes after
 * the OPTs of the steps before mb's and before the OPT of its own step. */
static void assert_synchronous(const pp_schedule *s, const char *name)
{
    int m = s->info.microbatches_per_step;
    int *opts_seen = calloc((size_t)s->info.stages, sizeof *opts_seen);
    ck_assert_ptr_nonnull(opts_seen);
    for (int r = 0; r < s->info.ranks; r++)
        for (size_t i = 0; i < s->rank[r].count; i++) {
            pp_action a = s->rank[r].items[i];
            if (a.op == PP_OP_OPT)
                opts_seen[a.stage]++;
            else
                ck_assert_msg(a.mb / m == opts_seen[a.stage],
                              "%s: rank %d action %zu (stage %d, mb %d) after %d OPTs", name, r,
                              i, (int)a.stage, (int)a.mb, opts_seen[a.stage]);
        }
    for (int st = 0; st < s->info.stages; st++)
        ck_assert_msg(opts_seen[st] == s->info.steps, "%s: stage %d has %d OPTs for %d steps",
                      name, st, opts_seen[st], s->info.steps);
    free(opts_seen);
}

static void check_grid_point(const char *name, int R, int V, int m, int S, int placement,
                             int stages)
{
    pp_schedule s = test_generate(name, test_gen_opts(R, m, S, V));
    ck_assert_int_eq(s.info.ranks, R);
    ck_assert_int_eq(s.info.stages, stages);
    ck_assert_int_eq(s.info.placement, placement);
    ck_assert_int_eq(s.info.microbatches_per_step, m);
    ck_assert_int_eq(s.info.steps, S);
    ck_assert_int_eq(s.info.total_microbatches, m * S);
    assert_synchronous(&s, name);
    pp_schedule_free(&s);
}

START_TEST(every_size_of_the_grid_validates)
{
    for (int R = 1; R <= 8; R++)
        for (int k = 1; k <= 4; k++)
            for (int S = 1; S <= 3; S++) {
                int m = k * R;
                for (int V = 1; V <= 4; V++) {
                    check_grid_point("interleaved-1f1b", R, V, m, S, PP_PLACE_LOOPED, V * R);
                    check_grid_point("looped-bfs", R, V, m, S, PP_PLACE_LOOPED, V * R);
                }
                check_grid_point("zb-h1", R, 0, m, S, PP_PLACE_ONE, R);
                check_grid_point("zbv", R, 2, m, S, PP_PLACE_V, 2 * R);
                if (m >= 2 * R)
                    check_grid_point("dualpipev", R, 0, m, S, PP_PLACE_V, 2 * R);
            }
    /* Where the schedule does not need m to be a multiple of R. */
    for (int R = 1; R <= 6; R++)
        for (int m = 1; m <= 3 * R + 1; m++) {
            check_grid_point("looped-bfs", R, 3, m, 2, PP_PLACE_LOOPED, 3 * R);
            check_grid_point("zb-h1", R, 1, m, 2, PP_PLACE_ONE, R);
            check_grid_point("zbv", R, 0, m, 2, PP_PLACE_V, 2 * R);
            if (m >= 2 * R)
                check_grid_point("dualpipev", R, 2, m, 2, PP_PLACE_V, 2 * R);
        }
}
END_TEST

START_TEST(default_chunks_are_two)
{
    const char *names[] = {"interleaved-1f1b", "looped-bfs", "zbv", "dualpipev"};
    for (size_t i = 0; i < 4; i++) {
        pp_schedule s = test_generate(names[i], test_gen_opts(4, 8, 1, 0));
        ck_assert_int_eq(s.info.stages, 8);
        ck_assert_str_eq(pp_info_get_param(&s.info, "chunks"), "2");
        pp_schedule_free(&s);
    }
}
END_TEST

/* One line, naming what is wrong. */
static void assert_refused(const char *name, pp_gen_opts o, const char *a, const char *b)
{
    pp_err e = {{0}};
    pp_stream *st = NULL;
    ck_assert_msg(pp_generate(name, &o, &st, &e) == -1, "%s accepted R=%d V=%d m=%d", name,
                  o.stages, o.chunks, o.microbatches);
    ck_assert_msg(strstr(e.msg, a) && (!b || strstr(e.msg, b)) && !strchr(e.msg, '\n'),
                  "%s: \"%s\" lacks \"%s\"/\"%s\"", name, e.msg, a, b ? b : "");
}

START_TEST(bad_options_give_one_line)
{
    assert_refused("interleaved-1f1b", test_gen_opts(4, 6, 1, 2), "m=6", "R=4");
    assert_refused("interleaved-1f1b", test_gen_opts(4, 2, 1, 2), "multiple", "R=4");
    assert_refused("zbv", test_gen_opts(4, 8, 1, 3), "two-chunk", "got 3");
    assert_refused("zbv", test_gen_opts(4, 8, 1, 1), "two-chunk", NULL);
    assert_refused("dualpipev", test_gen_opts(4, 8, 1, 4), "two-chunk", NULL);
    assert_refused("dualpipev", test_gen_opts(4, 7, 1, 0), "m=7", "R=4");
    assert_refused("zb-h1", test_gen_opts(4, 8, 1, 2), "one stage per rank", NULL);
    assert_refused("gpipe", test_gen_opts(4, 8, 1, 2), "one stage per rank", NULL);
    assert_refused("1f1b-flush", test_gen_opts(4, 8, 1, 3), "one stage per rank", NULL);
    assert_refused("looped-bfs", test_gen_opts(4, 8, 1, -1), "--chunks", NULL);
    assert_refused("looped-bfs", test_gen_opts(0, 8, 1, 2), "--stages", NULL);
    assert_refused("interleaved-1f1b", test_gen_opts(4, 8, 0, 2), "--steps", NULL);
    assert_refused("zbv", test_gen_opts(40000, 8, 1, 2), "stages", NULL);
}
END_TEST

START_TEST(registry_lists_them)
{
    for (size_t i = 0; i < sizeof new_generators / sizeof *new_generators; i++) {
        const pp_generator *g = pp_generator_find(new_generators[i]);
        ck_assert_msg(g != NULL, "%s not registered", new_generators[i]);
        ck_assert(strlen(g->description) > 10 && strlen(g->parameters) > 0);
        ck_assert_msg(strstr(pp_generator_names(), new_generators[i]), "%s not in the names",
                      new_generators[i]);
    }
}
END_TEST

/* --- orders written out ----------------------------------------------- */

static void assert_rank(const char *name, pp_gen_opts o, int rank, const char *want)
{
    pp_schedule s = test_generate(name, o);
    char got[4096];
    rank_text(&s, rank, 1, got, sizeof got);
    ck_assert_msg(strcmp(got, want) == 0, "%s rank %d:\n got  %s\n want %s", name, rank, got,
                  want);
    pp_schedule_free(&s);
}

START_TEST(interleaved_order_is_megatrons)
{
    /* R=2, V=2, m=4: forwards in groups of R over (group, chunk), warm-up
     * (V-1)R + 2(R-1-r), then 1F1B, backwards with the chunks reversed. */
    pp_gen_opts o = test_gen_opts(2, 4, 1, 2);
    assert_rank("interleaved-1f1b", o, 0,
                "0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3 0OPT 2OPT");
    assert_rank("interleaved-1f1b", o, 1,
                "1F0 1F1 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 1B2 1B3 1OPT 3OPT");
    /* The second step: micro-batches 4..7, after the OPTs. */
    pp_schedule s = test_generate("interleaved-1f1b", test_gen_opts(2, 4, 2, 2));
    char got[4096];
    rank_text(&s, 0, 1, got, sizeof got);
    ck_assert_str_eq(strstr(got, "2OPT") + 5,
                     "0F4 0F5 2F4 2F5 0F6 2B4 0F7 2B5 2F6 0B4 2F7 0B5 2B6 2B7 0B6 0B7 0OPT 2OPT");
    pp_schedule_free(&s);
}
END_TEST

START_TEST(looped_bfs_order_is_pytorchs)
{
    pp_gen_opts o = test_gen_opts(2, 4, 1, 2);
    assert_rank("looped-bfs", o, 0,
                "0F0 0F1 0F2 0F3 2F0 2F1 2F2 2F3 2B3 2B2 2B1 2B0 0B3 0B2 0B1 0B0 0OPT 2OPT");
    assert_rank("looped-bfs", o, 1,
                "1F0 1F1 1F2 1F3 3F0 3F1 3F2 3F3 3B3 3B2 3B1 3B0 1B3 1B2 1B1 1B0 1OPT 3OPT");
}
END_TEST

START_TEST(zb_h1_defers_r_weight_grads_on_rank_r)
{
    pp_gen_opts o = test_gen_opts(4, 8, 1, 0);
    assert_rank("zb-h1", o, 0,
                "0F0 0F1 0F2 0F3 0I0 0W0 0F4 0I1 0W1 0F5 0I2 0W2 0F6 0I3 0W3 0F7 0I4 0W4 0I5 0W5 "
                "0I6 0W6 0I7 0W7 0OPT");
    assert_rank("zb-h1", o, 1,
                "1F0 1F1 1F2 1I0 1F3 1I1 1W0 1F4 1I2 1W1 1F5 1I3 1W2 1F6 1I4 1W3 1F7 1I5 1W4 1I6 "
                "1W5 1I7 1W6 1W7 1OPT");
    assert_rank("zb-h1", o, 3,
                "3F0 3I0 3F1 3I1 3F2 3I2 3F3 3I3 3W0 3F4 3I4 3W1 3F5 3I5 3W2 3F6 3I6 3W3 3F7 3I7 "
                "3W4 3W5 3W6 3W7 3OPT");
}
END_TEST

START_TEST(zbv_order_is_pytorchs)
{
    pp_gen_opts o = test_gen_opts(2, 4, 1, 2);
    assert_rank("zbv", o, 0,
                "0F0 0F1 0F2 3F0 3I0 3W0 3F1 3I1 3W1 0F3 0I0 0W0 3F2 3I2 3W2 0I1 0W1 3F3 3I3 3W3 "
                "0I2 0W2 0I3 0W3 0OPT 3OPT");
    assert_rank("zbv", o, 1,
                "1F0 2F0 1F1 2F1 2I0 2W0 1F2 1I0 1W0 2F2 2I1 2W1 1F3 1I1 1W1 2F3 2I2 2W2 1I2 2I3 "
                "1I3 1W2 2W3 1W3 1OPT 2OPT");
}
END_TEST

START_TEST(dualpipev_order_is_pytorchs)
{
    pp_gen_opts o = test_gen_opts(2, 4, 1, 2);
    assert_rank("dualpipev", o, 0,
                "0F0 0F1 0F2 3F0 3I0 3W0 3F1 0F3+3B1 3F2+0B0 3B2 3F3+0B1 3B3 0I2 0W2 0I3 0W3 "
                "0OPT 3OPT");
    assert_rank("dualpipev", o, 1,
                "1F0 2F0 1F1 2F1 1F2 2B0 2F2+1B0 1F3+2B1 2F3+1B1 2B2 1B2 2I3 1I3 2W3 1W3 1OPT "
                "2OPT");
}
END_TEST

/* --- PyTorch's own files ---------------------------------------------- */

static const char *fixture_dir(void)
{
    static char dir[4096];
    const char *src = getenv("PPSCHED_SOURCE_DIR");
    snprintf(dir, sizeof dir, "%s/tests/fixtures/pytorch", src ? src : PPSCHED_SOURCE_DIR);
    return dir;
}

/* The generator for a PyTorch class and size, or NULL where none matches
 * (InterleavedZeroBubble with two chunks is ZB1P, not one of ours). */
static const char *generator_for(const char *cls, int v)
{
    if (strcmp(cls, "ScheduleInterleaved1F1B") == 0)
        return "interleaved-1f1b";
    if (strcmp(cls, "ScheduleLoopedBFS") == 0)
        return "looped-bfs";
    if (strcmp(cls, "ScheduleInterleavedZeroBubble") == 0 && v == 1)
        return "zb-h1";
    if (strcmp(cls, "ScheduleZBVZeroBubble") == 0)
        return "zbv";
    if (strcmp(cls, "ScheduleDualPipeV") == 0)
        return "dualpipev";
    return NULL;
}

/* Reads "<class>-r<R>-v<V>-m<m>-compute_only.csv". */
static int parse_fixture_name(const char *file, char *cls, size_t n, int *R, int *V, int *m)
{
    const char *suffix = "-compute_only.csv";
    size_t len = strlen(file), sl = strlen(suffix);
    const char *dash = strchr(file, '-');
    if (len <= sl || strcmp(file + len - sl, suffix) != 0 || !dash || (size_t)(dash - file) >= n)
        return -1;
    memcpy(cls, file, (size_t)(dash - file));
    cls[dash - file] = '\0';
    return sscanf(dash, "-r%d-v%d-m%d-", R, V, m) == 3 ? 0 : -1;
}

/* One rank's compute cells as our text: "0F1" as is, "(0F3;3B1)OVERLAP_F_B"
 * as "0F3+3B1"; empty cells (idle) and bookkeeping cells left out. */
static void csv_row_text(char *row, char *out, size_t n)
{
    out[0] = '\0';
    for (char *cell = row, *next; cell; cell = next) {
        next = strchr(cell, ',');
        if (next)
            *next++ = '\0';
        pp_action a[2];
        pp_err e;
        char *semi = strchr(cell, ';'), *close = strchr(cell, ')');
        if (cell[0] == '(' && semi && close && strcmp(close, ")OVERLAP_F_B") == 0) {
            *semi = *close = '\0';
            if (pp_action_parse(cell + 1, &a[0], &e) < 0 || pp_action_parse(semi + 1, &a[1], &e) < 0)
                continue;
            a[0].with_next = 1;
            append(out, n, a[0], 0);
            append(out, n, a[1], 1);
        } else if (cell[0] && pp_action_parse(cell, &a[0], &e) == 0 && a[0].op <= PP_OP_W) {
            append(out, n, a[0], 0);
        }
    }
}

/* Compares one fixture with our generator; returns 1 when it is one of ours. */
static int compare_fixture(const char *file)
{
    char cls[64];
    int R, V, m;
    if (parse_fixture_name(file, cls, sizeof cls, &R, &V, &m) < 0)
        return 0;
    const char *name = generator_for(cls, V);
    if (!name)
        return 0;
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", fixture_dir(), file);
    char *text;
    pp_err e;
    ck_assert_msg(pp_read_file(path, &text, NULL, &e) == 0, "%s", e.msg);
    pp_schedule s = test_generate(name, test_gen_opts(R, m, 1, V));
    int rank = 0;
    for (char *line = strtok(text, "\r\n"); line; line = strtok(NULL, "\r\n"), rank++) {
        ck_assert_msg(rank < R, "%s: more rows than its %d ranks", file, R);
        static char want[8192], got[8192];
        char *row = strdup(line);
        csv_row_text(row, want, sizeof want);
        free(row);
        rank_text(&s, rank, 0, got, sizeof got);
        ck_assert_msg(strcmp(got, want) == 0, "%s rank %d:\n %s gives %s\n PyTorch wrote %s",
                      file, rank, name, got, want);
    }
    ck_assert_msg(rank == R, "%s: %d rows for %d ranks", file, rank, R);
    pp_schedule_free(&s);
    free(text);
    return 1;
}

START_TEST(orders_equal_pytorchs_files)
{
    DIR *d = opendir(fixture_dir());
    ck_assert_msg(d != NULL, "cannot open %s", fixture_dir());
    int compared = 0;
    for (struct dirent *de; (de = readdir(d));)
        compared += compare_fixture(de->d_name);
    closedir(d);
    /* 8 Interleaved1F1B, 8 LoopedBFS, 4 InterleavedZeroBubble v1, 4 ZBV,
     * 3 DualPipeV (PyTorch refuses r=4 m=4) */
    ck_assert_int_ge(compared, 27);
}
END_TEST

/* --- makespans -------------------------------------------------------- */

/* Simulates a generated stream with uniform costs per stage (chunk). */
static pp_metrics simulate(const char *name, pp_gen_opts o, double F, double B, double I,
                           double W)
{
    pp_err e = {{0}};
    pp_stream *st;
    ck_assert_msg(pp_generate(name, &o, &st, &e) == 0, "%s: %s", name, e.msg);
    pp_cost c;
    ck_assert(pp_cost_init(&c, st->info.stages, &e) == 0);
    for (int s = 0; s < st->info.stages; s++) {
        c.fwd[s] = F;
        c.bwd[s] = B;
        c.inp[s] = I;
        c.wgt[s] = W;
    }
    pp_sim_config cfg = {&c, NULL, 0, NULL, NULL, NULL};
    pp_metrics m;
    ck_assert_msg(pp_simulate(st, &cfg, &m, &e) == 0, "%s R=%d V=%d m=%d: %s", name, o.stages,
                  o.chunks, o.microbatches, e.msg);
    pp_stream_free(st);
    pp_cost_free(&c);
    return m;
}

/* Zero-bubble ZB-H1: m(F+I+W) + (R-1)(F+I-W) a step, which needs W <= min(F, I) (the W's
 * that fill the cool-down must fit into its gaps). */
START_TEST(zb_h1_closed_form)
{
    const double costs[][3] = {{1, 1, 1}, {2, 1, 1}, {1, 2, 1}, {2, 2, 1},
                               {1, 1, 0.5}, {3, 2, 1}, {2, 3, 2}, {1.5, 1, 0.25}};
    for (int R = 1; R <= 8; R++)
        for (int k = 1; k <= 3; k++)
            for (int S = 1; S <= 3; S++)
                for (size_t c = 0; c < sizeof costs / sizeof *costs; c++) {
                    double F = costs[c][0], I = costs[c][1], W = costs[c][2];
                    int m = k * R;
                    pp_metrics r = simulate("zb-h1", test_gen_opts(R, m, S, 0), F, I + W, I, W);
                    double want = S * (m * (F + I + W) + (R - 1) * (F + I - W));
                    ck_assert_msg(r.makespan > want - EPS && r.makespan < want + EPS,
                                  "zb-h1 R=%d m=%d S=%d F=%g I=%g W=%g: makespan %g, want %g",
                                  R, m, S, F, I, W, r.makespan, want);
                    ck_assert_int_eq(r.drift_max, 0);
                    ck_assert_int_eq(r.staleness_max, 0);
                    pp_metrics_free(&r);
                }
}
END_TEST

/* ZB-H1 holds no more activations than 1F1B: every rank keeps at most R
 * micro-batches between F and W, the peak of 1F1B's first rank (the paper
 * evens the ranks out at that peak rather than keeping 1F1B's R-r). */
START_TEST(zb_h1_peak_inflight_is_1f1bs)
{
    for (int R = 1; R <= 8; R++)
        for (int k = 1; k <= 3; k++) {
            int m = k * R;
            pp_metrics z = simulate("zb-h1", test_gen_opts(R, m, 2, 0), 1, 2, 1, 1);
            pp_metrics f = simulate("1f1b-flush", test_gen_opts(R, m, 2, 0), 1, 2, 1, 1);
            ck_assert_int_eq(z.peak_inflight_max, f.peak_inflight_max);
            for (int s = 0; s < R; s++)
                ck_assert_msg(z.stage[s].peak_inflight <= f.stage[0].peak_inflight,
                              "R=%d m=%d stage %d: %d in flight, 1F1B's peak %d", R, m, s,
                              z.stage[s].peak_inflight, f.stage[0].peak_inflight);
            pp_metrics_free(&z);
            pp_metrics_free(&f);
        }
}
END_TEST

/* The tests below need the simulator's one compute resource per rank
 * (several stages on one rank). */

/* Megatron's interleaved 1F1B and PyTorch's looped BFS, F and B per chunk:
 * (Vm + R - 1)(F + B) a step when m is a multiple of R (looped BFS: m >= R). */
START_TEST(interleaved_and_looped_bfs_closed_form)
{
    const double costs[][2] = {{1, 2}, {2, 3}, {1, 1}};
    const char *names[] = {"interleaved-1f1b", "looped-bfs"};
    const int Rs[] = {2, 3, 4, 8};
    for (size_t n = 0; n < 2; n++)
        for (size_t i = 0; i < 4; i++)
            for (int V = 1, R = Rs[i]; V <= 4; V++)
                for (int k = 1; k <= 3; k++)
                    for (int S = 1; S <= 3; S += 2)
                        for (size_t c = 0; c < 3; c++) {
                            double F = costs[c][0], B = costs[c][1];
                            int m = k * R;
                            pp_metrics r = simulate(names[n], test_gen_opts(R, m, S, V), F, B, B / 2,
                                                    B / 2);
                            double want = S * (V * m + R - 1) * (F + B);
                            ck_assert_msg(r.makespan > want - EPS && r.makespan < want + EPS,
                                          "%s R=%d V=%d m=%d S=%d: makespan %g, want %g",
                                          names[n], R, V, m, S, r.makespan, want);
                            ck_assert_int_eq(r.drift_max, 0);
                            pp_metrics_free(&r);
                        }
}
END_TEST

/* ZB-V with F = I = W: no rank ever idles once it has started, steps
 * included, so S steps take 6mS + R - 1 and the steady bubble is 0. */
START_TEST(zbv_has_no_steady_bubble)
{
    for (int R = 2; R <= 8; R++)
        for (int k = 2; k <= 4; k++) {
            int m = k * R, S = 8;
            pp_metrics r = simulate("zbv", test_gen_opts(R, m, S, 2), 1, 2, 1, 1);
            double want = 6.0 * m * S + R - 1;
            ck_assert_msg(r.makespan > want - EPS && r.makespan < want + EPS,
                          "zbv R=%d m=%d: makespan %g, want %g", R, m, r.makespan, want);
            ck_assert(r.has_steady);
            ck_assert_msg(r.steady_bubble_fraction < EPS, "zbv R=%d m=%d: steady bubble %g", R,
                          m, r.steady_bubble_fraction);
            pp_metrics_free(&r);
        }
}
END_TEST

/* One rank holding every stage has nothing to wait for: each of these
 * runs back to back, S*V*m*(F+B) (F, I, W = 1, B = 2). */
START_TEST(one_rank_runs_its_stages_back_to_back)
{
    const char *names[] = {"interleaved-1f1b", "looped-bfs", "zbv", "dualpipev"};
    for (size_t n = 0; n < 4; n++)
        for (int V = 1; V <= 4; V++)
            for (int m = 2; m <= 4; m++) {
                if (n >= 2 && V != 2)
                    continue;
                pp_metrics r = simulate(names[n], test_gen_opts(1, m, 3, V), 1, 2, 1, 1);
                double want = 3.0 * V * m * 3;
                ck_assert_msg(r.makespan > want - EPS && r.makespan < want + EPS,
                              "%s R=1 V=%d m=%d: makespan %g, want %g", names[n], V, m,
                              r.makespan, want);
                pp_metrics_free(&r);
            }
}
END_TEST

/* Each fixture of ours simulates to the makespan PyTorch's visualiser gives
 * it (manifest.json: F=1, B=2, I=W=1, an overlapped pair 3, free links). */
START_TEST(makespans_equal_pytorchs)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/manifest.json", fixture_dir());
    char *text;
    pp_err e;
    ck_assert_msg(pp_read_file(path, &text, NULL, &e) == 0, "%s", e.msg);
    cJSON *root = cJSON_Parse(text);
    ck_assert_ptr_nonnull(root);
    int compared = 0;
    const cJSON *f;
    cJSON_ArrayForEach(f, cJSON_GetObjectItem(root, "files"))
    {
        const char *file = cJSON_GetStringValue(cJSON_GetObjectItem(f, "file"));
        char cls[64];
        int R, V, m;
        if (!file || parse_fixture_name(file, cls, sizeof cls, &R, &V, &m) < 0)
            continue;
        const char *name = generator_for(cls, V);
        const cJSON *want = cJSON_GetObjectItem(cJSON_GetObjectItem(f, "pytorch_visualizer"),
                                                "makespan");
        if (!name || !cJSON_IsNumber(want))
            continue;
        pp_metrics r = simulate(name, test_gen_opts(R, m, 1, V), 1, 2, 1, 1);
        ck_assert_msg(r.makespan > want->valuedouble - EPS && r.makespan < want->valuedouble + EPS,
                      "%s: makespan %g, PyTorch %g", file, r.makespan, want->valuedouble);
        pp_metrics_free(&r);
        compared++;
    }
    ck_assert_int_ge(compared, 27);
    cJSON_Delete(root);
    free(text);
}
END_TEST

static Suite *generators_suite(void)
{
    Suite *s = suite_create("generators");
    TCase *t = tcase_create("orders");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, every_size_of_the_grid_validates);
    tcase_add_test(t, default_chunks_are_two);
    tcase_add_test(t, bad_options_give_one_line);
    tcase_add_test(t, registry_lists_them);
    tcase_add_test(t, interleaved_order_is_megatrons);
    tcase_add_test(t, looped_bfs_order_is_pytorchs);
    tcase_add_test(t, zb_h1_defers_r_weight_grads_on_rank_r);
    tcase_add_test(t, zbv_order_is_pytorchs);
    tcase_add_test(t, dualpipev_order_is_pytorchs);
    tcase_add_test(t, orders_equal_pytorchs_files);
    suite_add_tcase(s, t);
    t = tcase_create("zb_h1");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, zb_h1_closed_form);
    tcase_add_test(t, zb_h1_peak_inflight_is_1f1bs);
    suite_add_tcase(s, t);
    t = tcase_create("makespan"); /* several stages per rank in the simulator */
    tcase_set_timeout(t, 120);
    tcase_add_test(t, interleaved_and_looped_bfs_closed_form);
    tcase_add_test(t, zbv_has_no_steady_bubble);
    tcase_add_test(t, one_rank_runs_its_stages_back_to_back);
    tcase_add_test(t, makespans_equal_pytorchs);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(generators_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
