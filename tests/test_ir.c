/* The schedule IR: action text, builder, streams, JSON and PyTorch-CSV I/O,
 * and validation (structure and deadlocks). */
#define _POSIX_C_SOURCE 200809L /* open_memstream, mkdtemp, strndup */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ir.h"

/* --- helpers ---------------------------------------------------------- */

static pp_ir_info make_info(const char *name, int P, int m, int S)
{
    pp_ir_info in;
    memset(&in, 0, sizeof in);
    snprintf(in.name, sizeof in.name, "%s", name);
    in.stages = P;
    in.microbatches_per_step = m;
    in.steps = S;
    in.total_microbatches = m * S;
    return in;
}

/* Builds a one-step schedule of P stages and N micro-batches from one
 * space-separated action string per stage, e.g. "F0 F1 B0 B1 OPT". */
static void build(pp_schedule *s, int P, int N, const char *const *rows)
{
    pp_err e = {{0}};
    pp_ir_info in = make_info("test", P, N, 1);
    ck_assert_msg(pp_schedule_init(s, &in, &e) == 0, "%s", e.msg);
    for (int st = 0; st < P; st++) {
        char buf[4096];
        snprintf(buf, sizeof buf, "%s", rows[st]);
        for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " ")) {
            pp_action a;
            ck_assert_msg(pp_action_parse(tok, &a, &e) == 0, "%s", e.msg);
            ck_assert(pp_schedule_push(s, st, a, &e) == 0);
        }
    }
}

/* Stage `st` as space-separated text. */
static void stage_text(const pp_schedule *s, int st, char *out, size_t n)
{
    out[0] = '\0';
    for (size_t i = 0; i < s->rank[st].count; i++) {
        char buf[32];
        pp_action_format(s->rank[st].items[i], buf, sizeof buf);
        strncat(out, i ? " " : "", n - strlen(out) - 1);
        strncat(out, buf, n - strlen(out) - 1);
    }
}

static void assert_same(const pp_schedule *a, const pp_schedule *b)
{
    ck_assert_str_eq(a->info.name, b->info.name);
    ck_assert_int_eq(a->info.stages, b->info.stages);
    ck_assert_int_eq(a->info.microbatches_per_step, b->info.microbatches_per_step);
    ck_assert_int_eq(a->info.steps, b->info.steps);
    ck_assert_int_eq(a->info.total_microbatches, b->info.total_microbatches);
    ck_assert_int_eq(a->info.nparams, b->info.nparams);
    for (int i = 0; i < a->info.nparams; i++) {
        ck_assert_str_eq(a->info.params[i].key, b->info.params[i].key);
        ck_assert_str_eq(a->info.params[i].value, b->info.params[i].value);
    }
    for (int st = 0; st < a->info.stages; st++) {
        ck_assert_uint_eq(a->rank[st].count, b->rank[st].count);
        for (size_t i = 0; i < a->rank[st].count; i++) {
            pp_action x = a->rank[st].items[i], y = b->rank[st].items[i];
            ck_assert_int_eq(x.op, y.op);
            ck_assert_int_eq(x.sel, y.sel);
            ck_assert_int_eq(x.mb, y.mb);
            ck_assert_int_eq(x.version, y.version);
        }
    }
}

/* A schedule that uses every action kind and selector, with params. */
static void build_rich(pp_schedule *s)
{
    const char *rows[] = {
        "F0 F1@v0 B0@s BARRIER OPT I1 F2@v1 W1@s B2 OPT",
        "F0 B0 F1 I1@s W1 BARRIER OPT F2 B2@s OPT",
    };
    build(s, 2, 3, rows);
    snprintf(s->info.name, sizeof s->info.name, "rich \"quoted\" \\ name");
    ck_assert(pp_info_set_param(&s->info, "accum", "4") == 0);
    ck_assert(pp_info_set_param(&s->info, "note", "a \"b\"\tc") == 0);
}

/* --- action text ------------------------------------------------------ */

START_TEST(action_round_trip)
{
    const char *texts[] = {"F0",    "F12",  "B3",    "B3@s",   "I7",          "I7@s",
                           "W2",    "W2@s", "F7@v2", "F0@v0",  "F2147483647", "OPT",
                           "BARRIER", "B10@s", "F3@v2147483647"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        pp_err e = {{0}};
        pp_action a;
        char buf[32];
        ck_assert_msg(pp_action_parse(texts[i], &a, &e) == 0, "%s: %s", texts[i], e.msg);
        ck_assert_str_eq(pp_action_format(a, buf, sizeof buf), texts[i]);
    }
    pp_action a;
    pp_err e;
    ck_assert(pp_action_parse("F7@v2", &a, &e) == 0);
    ck_assert_int_eq(a.op, PP_OP_F);
    ck_assert_int_eq(a.sel, PP_SEL_VERSION);
    ck_assert_int_eq(a.mb, 7);
    ck_assert_int_eq(a.version, 2);
    ck_assert(pp_action_parse("W4@s", &a, &e) == 0);
    ck_assert_int_eq(a.op, PP_OP_W);
    ck_assert_int_eq(a.sel, PP_SEL_STASH);
    ck_assert(pp_action_parse("OPT", &a, &e) == 0);
    ck_assert_int_eq(a.op, PP_OP_OPT);
    ck_assert_int_eq(a.mb, -1);
    ck_assert_str_eq(pp_op_name(PP_OP_BARRIER), "BARRIER");
    ck_assert_str_eq(pp_op_name(PP_OP_I), "I");
}
END_TEST

START_TEST(action_rejects)
{
    const char *bad[] = {"",      "X3",     "F",     "F-1",     "F+1",    "F2147483648",
                         "F99999999999", "F012", "F1x", "F1 ",  " F1",    "F1@s",
                         "B1@v2", "I1@v0",  "W1@v1", "OPT@s",   "BARRIER@v1", "F1@v",
                         "F1@v-1", "F1@vx", "B1@",   "B1@ss",   "opt",    "f1",
                         "OPT1",  "F1@v01", "F1@v2147483648", "B1@s@s", "F 1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        pp_err e = {{0}};
        pp_action a;
        char quoted[64];
        ck_assert_msg(pp_action_parse(bad[i], &a, &e) == -1, "accepted \"%s\"", bad[i]);
        snprintf(quoted, sizeof quoted, "\"%s\"", bad[i]);
        ck_assert_msg(strstr(e.msg, quoted), "message for %s: %s", quoted, e.msg);
    }
    pp_err e;
    pp_action a;
    ck_assert_int_eq(pp_action_parse("X3", &a, &e), -1);
    ck_assert_str_eq(e.msg, "unknown action \"X3\"");
    ck_assert_int_eq(pp_action_parse("F1@s", &a, &e), -1);
    ck_assert(strstr(e.msg, "stash"));
    ck_assert_int_eq(pp_action_parse("B1@v2", &a, &e), -1);
    ck_assert(strstr(e.msg, "version"));
}
END_TEST

/* --- builder and streams ---------------------------------------------- */

START_TEST(builder)
{
    pp_err e = {{0}};
    pp_schedule s;
    pp_ir_info in = make_info("b", 0, 1, 1);
    ck_assert_int_eq(pp_schedule_init(&s, &in, &e), -1);
    ck_assert(strstr(e.msg, "stage"));
    in = make_info("b", 3, 2, 2);
    ck_assert(pp_schedule_init(&s, &in, &e) == 0);
    ck_assert_int_eq(pp_schedule_push(&s, 3, pp_act(PP_OP_F, 0), &e), -1);
    ck_assert(strstr(e.msg, "stage 3"));
    ck_assert_int_eq(pp_schedule_push(&s, -1, pp_act(PP_OP_F, 0), &e), -1);
    for (int i = 0; i < 10000; i++)
        ck_assert(pp_schedule_push(&s, i % 3, pp_act(PP_OP_F, i), &e) == 0);
    ck_assert_uint_eq(pp_schedule_action_count(&s), 10000);
    ck_assert_uint_eq(s.rank[1].count, 3333);
    ck_assert_int_eq(s.rank[2].items[10].mb, 32);
    pp_schedule_free(&s);
    ck_assert_ptr_null(s.rank);
    pp_schedule_free(&s); /* freeing twice is harmless */
}
END_TEST

START_TEST(params)
{
    pp_ir_info in = make_info("p", 1, 1, 1);
    ck_assert_ptr_null(pp_info_get_param(&in, "accum"));
    ck_assert(pp_info_set_param(&in, "accum", "4") == 0);
    ck_assert(pp_info_set_param(&in, "accum", "8") == 0);
    ck_assert_int_eq(in.nparams, 1);
    ck_assert_str_eq(pp_info_get_param(&in, "accum"), "8");
    char long_key[64], long_val[128];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    memset(long_val, 'v', sizeof long_val - 1);
    long_val[sizeof long_val - 1] = '\0';
    ck_assert_int_eq(pp_info_set_param(&in, long_key, "1"), -1);
    ck_assert_int_eq(pp_info_set_param(&in, "k", long_val), -1);
    for (int i = 1; i < PP_MAX_PARAMS; i++) {
        char key[16];
        snprintf(key, sizeof key, "p%d", i);
        ck_assert(pp_info_set_param(&in, key, "x") == 0);
    }
    ck_assert_int_eq(pp_info_set_param(&in, "one-too-many", "x"), -1);
    ck_assert(pp_info_set_param(&in, "p3", "y") == 0); /* replacing still works */
    ck_assert_str_eq(pp_info_get_param(&in, "p3"), "y");
}
END_TEST

START_TEST(stream_round_trip)
{
    pp_err e = {{0}};
    pp_schedule s, back;
    build_rich(&s);
    pp_stream *st;
    ck_assert(pp_stream_from_schedule(&s, &st, &e) == 0);
    ck_assert_int_eq(st->info.stages, 2);
    pp_action a;
    ck_assert_int_eq(pp_stream_next(st, 7, &a), 0); /* no such stage */
    ck_assert(pp_schedule_from_stream(st, &back, &e) == 0);
    ck_assert_int_eq(pp_stream_next(st, 0, &a), 0); /* drained */
    pp_stream_free(st);
    pp_stream_free(NULL);
    assert_same(&s, &back);
    pp_schedule_free(&s);
    pp_schedule_free(&back);
}
END_TEST

START_TEST(stream_hints)
{
    /* A schedule read as a stream tells the simulator which backwards read
     * the stash and which version the next forward names. */
    pp_err e = {{0}};
    pp_schedule s;
    build_rich(&s);
    pp_stream *st;
    ck_assert(pp_stream_from_schedule(&s, &st, &e) == 0);
    ck_assert_ptr_nonnull(st->stashes);
    ck_assert_int_eq(st->stashes(st, 0, 0), 1); /* B0@s */
    ck_assert_int_eq(st->stashes(st, 0, 1), 0); /* I1 latest (W1@s does not count) */
    ck_assert_int_eq(st->stashes(st, 1, 1), 1); /* I1@s */
    ck_assert_int_eq(st->stashes(st, 1, 2), 1);
    ck_assert_int_eq(st->stashes(st, 1, 0), 0);
    ck_assert_int_eq(st->stashes(st, 0, 999), 0);
    ck_assert_int_eq(st->stashes(st, 5, 0), 0);
    /* stage 0: F0 F1@v0 B0@s BARRIER OPT I1 F2@v1 W1@s B2 OPT */
    int want[] = {0, 1, 1, 1, 1, 1, -1, -1, -1, -1};
    pp_action a;
    ck_assert_int_eq(st->next_f_version(st, 0), -1); /* next is F0 */
    for (int i = 0; i < 10; i++) {
        ck_assert(pp_stream_next(st, 0, &a));
        ck_assert_msg(st->next_f_version(st, 0) == want[i], "after action %d", i);
    }
    ck_assert_int_eq(st->next_f_version(st, 1), -1); /* stage 1 names no version */
    pp_stream_free(st);
    /* nothing stashes: no bitmap, always 0 */
    const char *plain[] = {"F0 B0 OPT"};
    pp_schedule p;
    build(&p, 1, 1, plain);
    ck_assert(pp_stream_from_schedule(&p, &st, &e) == 0);
    ck_assert_int_eq(st->stashes(st, 0, 0), 0);
    pp_stream_free(st);
    pp_schedule_free(&p);
    pp_schedule_free(&s);
}
END_TEST

/* --- JSON ------------------------------------------------------------- */

/* Writes s as JSON into a malloc'd string. */
static char *to_json(const pp_schedule *s)
{
    pp_err e = {{0}};
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    ck_assert_msg(pp_schedule_write_json(s, f, &e) == 0, "%s", e.msg);
    fclose(f);
    return buf;
}

START_TEST(json_round_trip)
{
    pp_err e = {{0}};
    pp_schedule s, back;
    build_rich(&s);
    s.info.steps = 3; /* total stays 3: not m*S, must survive */
    char *text = to_json(&s);
    ck_assert_msg(pp_schedule_parse_json(text, &back, &e) == 0, "%s\n%s", e.msg, text);
    assert_same(&s, &back);
    /* one line per stage list */
    ck_assert(strstr(text, "[\"F0\", \"F1@v0\", \"B0@s\", \"BARRIER\""));
    free(text);
    pp_schedule_free(&back);

    char dir[] = "/tmp/test_ir.XXXXXX", path[128];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/ir.json", dir);
    ck_assert_msg(pp_schedule_save_json(&s, path, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_schedule_load_json(path, &back, &e) == 0, "%s", e.msg);
    assert_same(&s, &back);
    pp_schedule_free(&back);
    remove(path);
    ck_assert_int_eq(pp_schedule_load_json(path, &back, &e), -1);
    ck_assert_msg(strstr(e.msg, path), "%s", e.msg);
    ck_assert_int_eq(pp_schedule_save_json(&s, "/nonexistent-dir/x.json", &e), -1);
    ck_assert(strstr(e.msg, "/nonexistent-dir/x.json"));
    rmdir(dir);
    pp_schedule_free(&s);
}
END_TEST

START_TEST(json_defaults_and_numbers)
{
    pp_err e = {{0}};
    pp_schedule s;
    const char *text =
        "{\"format\":\"ppsched-ir\",\"version\":1,\"schedule\":\"x\",\"stages\":1,"
        "\"microbatches_per_step\":2,\"steps\":3,\"params\":{\"accum\":4,\"lr\":0.5,"
        "\"mode\":\"fast\"},\"actions\":[[\"F0\",\"B0\"]],\"extra\":true}";
    ck_assert_msg(pp_schedule_parse_json(text, &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(s.info.total_microbatches, 6);
    ck_assert_str_eq(pp_info_get_param(&s.info, "accum"), "4");
    ck_assert_str_eq(pp_info_get_param(&s.info, "lr"), "0.5");
    ck_assert_str_eq(pp_info_get_param(&s.info, "mode"), "fast");
    ck_assert_uint_eq(s.rank[0].count, 2);
    pp_schedule_free(&s);
}
END_TEST

#define HDR "{\"format\":\"ppsched-ir\",\"version\":1,\"schedule\":\"x\","
#define DIMS "\"stages\":2,\"microbatches_per_step\":1,\"steps\":1,"

START_TEST(json_malformed)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {HDR DIMS "\"actions\":[[\"F0\"],[\"F0\"]", "invalid JSON near offset"},
        {"", "invalid JSON near offset 0"},
        {"{\"format\": }", "invalid JSON near offset 11"},
        {HDR DIMS "\"actions\":[[],[]]} trailing", "invalid JSON near offset"},
        {"[1, 2]", "top level must be a JSON object"},
        {"{\"format\":\"other\",\"version\":1}", "\"format\" must be \"ppsched-ir\""},
        {"{\"version\":1}", "\"format\" must be \"ppsched-ir\""},
        {"{\"format\":\"ppsched-ir\",\"version\":2}", "unsupported IR version 2"},
        {"{\"format\":\"ppsched-ir\",\"version\":\"1\"}", "\"version\" must be an integer"},
        {"{\"format\":\"ppsched-ir\"}", "missing field \"version\""},
        {HDR "\"microbatches_per_step\":1,\"steps\":1,\"actions\":[]}",
         "missing field \"stages\""},
        {HDR "\"stages\":1.5,\"microbatches_per_step\":1,\"steps\":1,\"actions\":[[]]}",
         "\"stages\" must be an integer"},
        {HDR "\"stages\":0,\"microbatches_per_step\":1,\"steps\":1,\"actions\":[]}",
         "\"stages\" is 0"},
        {HDR "\"stages\":1e300,\"microbatches_per_step\":1,\"steps\":1,\"actions\":[]}",
         "\"stages\""},
        {HDR "\"stages\":1,\"microbatches_per_step\":-2,\"steps\":1,\"actions\":[[]]}",
         "\"microbatches_per_step\" is -2"},
        {HDR DIMS "\"total_microbatches\":-1,\"actions\":[[],[]]}", "\"total_microbatches\""},
        {HDR "\"stages\":1,\"microbatches_per_step\":100000,\"steps\":100000,"
             "\"actions\":[[]]}",
         "too large"},
        {"{\"format\":\"ppsched-ir\",\"version\":1," DIMS "\"actions\":[[],[]]}",
         "missing field \"schedule\""},
        {"{\"format\":\"ppsched-ir\",\"version\":1,\"schedule\":7," DIMS "\"actions\":[[],[]]}",
         "\"schedule\" must be a string"},
        {HDR DIMS "\"params\":[1],\"actions\":[[],[]]}", "\"params\" must be an object"},
        {HDR DIMS "\"params\":{\"k\":[1]},\"actions\":[[],[]]}",
         "param \"k\" must be a string or a number"},
        {HDR "\"stages\":2,\"microbatches_per_step\":1,\"steps\":1}",
         "missing field \"actions\""},
        {HDR DIMS "\"actions\":{}}", "\"actions\" must be an array"},
        {HDR DIMS "\"actions\":[[\"F0\"]]}", "\"actions\" has 1 lists but \"stages\" is 2"},
        {HDR DIMS "\"actions\":[[],[],[]]}", "more than 2 lists"},
        {HDR "\"stages\":2000000000,\"microbatches_per_step\":1,\"steps\":1,"
             "\"actions\":[[]]}",
         "\"actions\" has 1 lists"},
        {HDR DIMS "\"actions\":[[\"F0\"],\"F0\"]}", "actions[1] must be an array"},
        {HDR DIMS "\"actions\":[[\"F0\"],[\"F0\", 3]]}", "stage 1 action 1: must be a string"},
        {HDR DIMS "\"actions\":[[\"F0\"],[\"F0\", \"B0\", \"X3\"]]}",
         "stage 1 action 2: unknown action \"X3\""},
        {HDR DIMS "\"actions\":[[\"F0@s\"],[]]}", "stage 0 action 0: bad action \"F0@s\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pp_err e = {{0}};
        pp_schedule s;
        ck_assert_msg(pp_schedule_parse_json(cases[i].text, &s, &e) == -1, "accepted: %s",
                      cases[i].text);
        ck_assert_msg(strstr(e.msg, cases[i].want), "case %zu: want \"%s\" in \"%s\"", i,
                      cases[i].want, e.msg);
        ck_assert_ptr_null(s.rank);
    }
}
END_TEST

START_TEST(json_truncated_everywhere)
{
    /* Every prefix of a valid file is rejected cleanly (no crash, no leak). */
    pp_schedule s;
    build_rich(&s);
    char *text = to_json(&s);
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n'))
        n--;
    for (size_t cut = 0; cut < n; cut++) {
        char *prefix = strndup(text, cut);
        pp_err e = {{0}};
        pp_schedule back;
        ck_assert_msg(pp_schedule_parse_json(prefix, &back, &e) == -1, "cut %zu", cut);
        ck_assert_msg(strstr(e.msg, "invalid JSON near offset"), "%s", e.msg);
        free(prefix);
    }
    free(text);
    pp_schedule_free(&s);
}
END_TEST

/* --- validation ------------------------------------------------------- */

static void expect_invalid(int P, int N, const char *const *rows, const char *want1,
                           const char *want2)
{
    pp_err e = {{0}};
    pp_schedule s;
    build(&s, P, N, rows);
    ck_assert_msg(pp_schedule_validate(&s, &e) == -1, "accepted %s | %s", rows[0],
                  P > 1 ? rows[1] : "");
    ck_assert_msg(strstr(e.msg, want1), "want \"%s\" in \"%s\"", want1, e.msg);
    ck_assert_msg(!want2 || strstr(e.msg, want2), "want \"%s\" in \"%s\"", want2, e.msg);
    pp_schedule_free(&s);
}

START_TEST(validate_accepts)
{
    pp_err e = {{0}};
    pp_schedule s;
    /* hand-built 1F1B-flush, P=2, m=4 */
    const char *onef1b[] = {"F0 F1 B0 F2 B1 F3 B2 B3 OPT", "F0 B0 F1 B1 F2 B2 F3 B3 OPT"};
    build(&s, 2, 4, onef1b);
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_schedule_free(&s);
    /* every action kind, selectors and barriers */
    build_rich(&s);
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_schedule_free(&s);
    /* single stage, split backward */
    const char *one[] = {"F0 F1 I0 I1 W1 W0 OPT F2 B2 OPT"};
    build(&s, 1, 3, one);
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_schedule_free(&s);
}
END_TEST

START_TEST(validate_rejects_structure)
{
    const char *missing_b[] = {"F0 F1 B0 OPT", "F0 B0 F1 B1 OPT"};
    expect_invalid(2, 2, missing_b, "stage 0", "micro-batch 1 has no B");
    const char *dup_b[] = {"F0 F1 B0 B1 B0 OPT", "F0 B0 F1 B1 OPT"};
    expect_invalid(2, 2, dup_b, "stage 0 action 4 \"B0\"", "second B");
    const char *dup_f[] = {"F0 F1 B0 B1 OPT", "F0 F0 B0 F1 B1 OPT"};
    expect_invalid(2, 2, dup_f, "stage 1 action 1 \"F0\"", "second F");
    const char *b_before_f[] = {"F0 F1 B0 B1 OPT", "F0 B0 B1 F1 OPT"};
    expect_invalid(2, 2, b_before_f, "stage 1 action 2 \"B1\"", "B before F");
    const char *w_before_i[] = {"F0 F1 I0 W0 W1 I1 OPT"};
    expect_invalid(1, 2, w_before_i, "stage 0 action 4 \"W1\"", "W before I");
    const char *i_no_w[] = {"F0 F1 I0 W0 I1 OPT"};
    expect_invalid(1, 2, i_no_w, "stage 0", "micro-batch 1 has I but no W");
    const char *b_and_i[] = {"F0 F1 B0 I0 W0 B1 OPT"};
    expect_invalid(1, 2, b_and_i, "stage 0 action 3 \"I0\"", "both B and I");
    const char *i_and_b[] = {"F0 F1 I0 B0 W0 B1 OPT"};
    expect_invalid(1, 2, i_and_b, "stage 0 action 3 \"B0\"", "both B and I");
    const char *no_f[] = {"F0 B0 OPT", "F0 B0 OPT"};
    expect_invalid(2, 2, no_f, "stage 0", "stage 0: 3 actions cannot hold");
    const char *version[] = {"F0 B0 OPT F1@v2 B1 OPT"};
    expect_invalid(1, 2, version, "stage 0 action 3 \"F1@v2\"", "version 2 does not exist");
    const char *version_ok[] = {"F0 B0 OPT F1@v1 B1 OPT"};
    pp_err e;
    pp_schedule s;
    build(&s, 1, 2, version_ok);
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_schedule_free(&s);
    const char *range[] = {"F0 F1 B0 B1 F2 B2 OPT"};
    expect_invalid(1, 2, range, "stage 0 action 4 \"F2\"", "out of range");
    const char *barriers[] = {"F0 B0 BARRIER F1 B1 OPT", "F0 B0 F1 B1 OPT"};
    expect_invalid(2, 2, barriers, "stage 1 has 0 BARRIERs", "stage 0 has 1");
}
END_TEST

START_TEST(validate_rejects_bad_selectors_and_fields)
{
    /* Selectors the parser refuses can still be built in memory. */
    pp_err e = {{0}};
    pp_schedule s;
    const char *ok[] = {"F0 B0 OPT"};
    build(&s, 1, 1, ok);
    s.rank[0].items[0].sel = PP_SEL_STASH;
    ck_assert_int_eq(pp_schedule_validate(&s, &e), -1);
    ck_assert_msg(strstr(e.msg, "stage 0 action 0 \"F0@s\"") && strstr(e.msg, "stash"), "%s",
                  e.msg);
    s.rank[0].items[0].sel = PP_SEL_LATEST;
    s.rank[0].items[1].sel = PP_SEL_VERSION;
    ck_assert_int_eq(pp_schedule_validate(&s, &e), -1);
    ck_assert_msg(strstr(e.msg, "stage 0 action 1") && strstr(e.msg, "explicit version"),
                  "%s", e.msg);
    s.rank[0].items[1].sel = PP_SEL_LATEST;
    s.rank[0].items[2].sel = PP_SEL_STASH;
    ck_assert_int_eq(pp_schedule_validate(&s, &e), -1);
    ck_assert_msg(strstr(e.msg, "stage 0 action 2 \"OPT\""), "%s", e.msg);
    s.rank[0].items[2].sel = PP_SEL_LATEST;
    s.rank[0].items[0].mb = -3;
    ck_assert_int_eq(pp_schedule_validate(&s, &e), -1);
    ck_assert_msg(strstr(e.msg, "stage 0 action 0") && strstr(e.msg, "out of range"), "%s",
                  e.msg);
    s.rank[0].items[0].mb = 0;
    s.rank[0].items[0].op = 17;
    ck_assert_int_eq(pp_schedule_validate(&s, &e), -1);
    ck_assert_msg(strstr(e.msg, "stage 0 action 0: unknown op"), "%s", e.msg);
    s.rank[0].items[0].op = PP_OP_F;
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    s.info.steps = 0;
    ck_assert_int_eq(pp_schedule_validate(&s, &e), -1);
    ck_assert(strstr(e.msg, "steps"));
    s.info.steps = 1;
    s.info.total_microbatches = 2000000000; /* absurd N: refused without a huge allocation */
    ck_assert_int_eq(pp_schedule_validate(&s, &e), -1);
    ck_assert(strstr(e.msg, "stage 0"));
    pp_schedule_free(&s);
}
END_TEST

START_TEST(validate_rejects_deadlock)
{
    /* Stage 0 waits for B0's gradient before sending F1; stage 1 wants F1
     * before it runs B0: a cycle. */
    const char *cycle[] = {"F0 B0 F1 B1 OPT", "F0 F1 B0 B1 OPT"};
    pp_err e = {{0}};
    pp_schedule s;
    build(&s, 2, 2, cycle);
    ck_assert_int_eq(pp_schedule_validate(&s, &e), -1);
    ck_assert_str_eq(e.msg, "deadlock: stage 0 stalls at action 1 \"B0\" waiting for B0 on "
                            "stage 1");
    pp_schedule_free(&s);
    /* The gradient source is named by its own op (I here). */
    const char *cycle_i[] = {"F0 I0 W0 F1 B1 OPT", "F0 F1 I0 W0 B1 OPT"};
    expect_invalid(2, 2, cycle_i, "stage 0 stalls at action 1 \"I0\" waiting for I0 on stage 1",
                   NULL);
    /* Stage 0 sits at a BARRIER that stage 1 can never reach: stage 1 is the
     * one reported. */
    const char *barrier[] = {"F0 BARRIER F1 B0 B1 OPT", "F0 F1 B0 B1 BARRIER OPT"};
    expect_invalid(2, 2, barrier,
                   "deadlock: stage 1 stalls at action 1 \"F1\" waiting for F1 on stage 0",
                   NULL);
    /* Three stages: the middle stage wants F1 before F0. */
    const char *three[] = {"F0 B0 F1 B1 OPT", "F1 F0 B0 B1 OPT", "F0 B0 F1 B1 OPT"};
    expect_invalid(3, 2, three, "deadlock: stage 0 stalls at action 1 \"B0\"",
                   "waiting for B0 on stage 1");
}
END_TEST

/* 1F1B-flush over N micro-batches in one step (one OPT at the end). */
static void build_1f1b(pp_schedule *s, int P, int N)
{
    pp_err e = {{0}};
    pp_ir_info in = make_info("1f1b", P, N, 1);
    ck_assert(pp_schedule_init(s, &in, &e) == 0);
    for (int st = 0; st < P; st++) {
        int warm = P - st - 1 < N ? P - st - 1 : N, f = 0, b = 0;
        for (; f < warm; f++)
            pp_schedule_push(s, st, pp_act(PP_OP_F, f), &e);
        while (f < N) {
            pp_schedule_push(s, st, pp_act(PP_OP_F, f++), &e);
            pp_schedule_push(s, st, pp_act(PP_OP_B, b++), &e);
        }
        while (b < N)
            pp_schedule_push(s, st, pp_act(PP_OP_B, b++), &e);
        pp_schedule_push(s, st, pp_act(PP_OP_OPT, -1), &e);
    }
}

START_TEST(validate_scales)
{
    /* ~10^6 actions: linear time and memory. */
    pp_err e = {{0}};
    pp_schedule s;
    build_1f1b(&s, 8, 62500);
    ck_assert_uint_ge(pp_schedule_action_count(&s), 1000000);
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_schedule_free(&s);
}
END_TEST

/* --- PyTorch CSV ------------------------------------------------------ */

START_TEST(pytorch_csv_1f1b)
{
    /* 1F1B, 2 ranks, 4 micro-batches, as torch.distributed.pipelining
     * writes it (one column per time slot, empty = idle), with some
     * whitespace and a CRLF line end thrown in. */
    const char *csv = "0F0,0F1, ,0B0,0F2,0B1,0F3,0B2,,0B3\r\n"
                      ",1F0,1B0,1F1,1B1, 1F2 ,1B2,1F3,1B3,\n"
                      "\n";
    pp_err e = {{0}};
    pp_schedule s;
    ck_assert_msg(pp_schedule_parse_pytorch_csv(csv, &s, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(s.info.name, "pytorch-csv");
    ck_assert_int_eq(s.info.stages, 2);
    ck_assert_int_eq(s.info.total_microbatches, 4);
    ck_assert_int_eq(s.info.microbatches_per_step, 4);
    ck_assert_int_eq(s.info.steps, 1);
    char text[256];
    stage_text(&s, 0, text, sizeof text);
    ck_assert_str_eq(text, "F0 F1 B0 F2 B1 F3 B2 B3 OPT");
    stage_text(&s, 1, text, sizeof text);
    ck_assert_str_eq(text, "F0 B0 F1 B1 F2 B2 F3 B3 OPT");
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_schedule_free(&s);

    /* split backward, no trailing newline */
    const char *zb = "0F0,0F1,0I0,0W0,0I1,0W1\n1F0,1I0,1F1,1I1,1W0,1W1";
    ck_assert_msg(pp_schedule_parse_pytorch_csv(zb, &s, &e) == 0, "%s", e.msg);
    stage_text(&s, 1, text, sizeof text);
    ck_assert_str_eq(text, "F0 I0 F1 I1 W0 W1 OPT");
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_schedule_free(&s);
}
END_TEST

/* PyTorch's compute_comms format (and the bookkeeping cells of either):
 * communication, REDUCE_GRAD, UNSHARD and RESHARD cells carry no compute
 * and are skipped; CRLF line ends as PyTorch writes them. */
START_TEST(pytorch_csv_skips_communication)
{
    const char *csv = "0UNSHARD,0F0,0SEND_F0,0F1,0SEND_F1,0RECV_B0,0B0,0RECV_B1,0B1,"
                      "0WAIT_SEND_F0,0WAIT_SEND_F1,0REDUCE_GRAD,0WAIT_REDUCE_GRAD,0RESHARD\r\n"
                      "1UNSHARD,1RECV_F0,1F0,1B0,1SEND_B0,1RECV_F1,1F1,1B1,1SEND_B1,"
                      "1REDUCE_GRAD,1WAIT_REDUCE_GRAD,1RESHARD,1WAIT_SEND_B0,1WAIT_SEND_B1\r\n";
    pp_err e = {{0}};
    pp_schedule s;
    ck_assert_msg(pp_schedule_parse_pytorch_csv(csv, &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(s.info.microbatches_per_step, 2);
    char text[256];
    stage_text(&s, 0, text, sizeof text);
    ck_assert_str_eq(text, "F0 F1 B0 B1 OPT");
    stage_text(&s, 1, text, sizeof text);
    ck_assert_str_eq(text, "F0 B0 F1 B1 OPT");
    ck_assert_msg(pp_schedule_validate(&s, &e) == 0, "%s", e.msg);
    pp_schedule_free(&s);
}
END_TEST

START_TEST(pytorch_csv_rejects)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"0F0,0X1\n", "row 1 (rank 0), column 2: cell \"0X1\""},
        {"0F0,0F\n", "column 2: cell \"0F\""},
        {"0F0,F1\n", "column 2: cell \"F1\""},
        {"0F0,0F1x\n", "cell \"0F1x\""},
        {"0F0,0F-1\n", "cell \"0F-1\""},
        {"0F0\n1F0,1SEND_F\n", "row 2 (rank 1), column 2: cell \"1SEND_F\""},
        {"0F0\n1F0,1SEND_X0\n", "row 2 (rank 1), column 2: cell \"1SEND_X0\""},
        {"0F0,0REDUCE_GRAD1\n", "cell \"0REDUCE_GRAD1\""},
        {"0F0,1F0\n1F0\n", "row 2 (rank 1), column 1: cell \"1F0\": stage 1 appears on rank 0 "
                           "and rank 1"},
        {"0F0,(0F1;1F0)OVERLAP_F_B\n", "column 2: cell \"(0F1;1F0)OVERLAP_F_B\": an overlapped"},
        {"0F0,0B0\n1B0,1F0\n", "rank 1, action 1 \"B0\": micro-batch 0 has no forward before it"},
        {"0F0,0W0,0I0\n", "rank 0, action 2 \"W0\": micro-batch 0 has no input gradient (I)"},
        {"0F0\n0F1\n", "row 2 (rank 1), column 1"},
        {"0F99999999999\n", "cell \"0F99999999999\""},
        {"0F2147483647\n", "too large"},
        {"", "no rows"},
        {"\n\n", "no rows"},
        {",,\n, ,\n", "no actions"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pp_err e = {{0}};
        pp_schedule s;
        ck_assert_msg(pp_schedule_parse_pytorch_csv(cases[i].text, &s, &e) == -1,
                      "accepted: %s", cases[i].text);
        ck_assert_msg(strstr(e.msg, cases[i].want), "case %zu: want \"%s\" in \"%s\"", i,
                      cases[i].want, e.msg);
        ck_assert_ptr_null(s.rank);
    }
    pp_err e;
    pp_schedule s;
    ck_assert_int_eq(pp_schedule_load_pytorch_csv("/nonexistent/x.csv", &s, &e), -1);
    ck_assert(strstr(e.msg, "/nonexistent/x.csv"));
}
END_TEST

START_TEST(read_file_errors)
{
    pp_err e = {{0}};
    char *text;
    size_t len;
    ck_assert_int_eq(pp_read_file("/nonexistent/file", &text, &len, &e), -1);
    ck_assert(strstr(e.msg, "/nonexistent/file"));
    ck_assert_int_eq(pp_read_file("/tmp", &text, &len, &e), -1); /* a directory */
    ck_assert(strstr(e.msg, "/tmp"));
}
END_TEST

static Suite *ir_suite(void)
{
    Suite *s = suite_create("ir");
    TCase *t = tcase_create("core");
    tcase_add_test(t, action_round_trip);
    tcase_add_test(t, action_rejects);
    tcase_add_test(t, builder);
    tcase_add_test(t, params);
    tcase_add_test(t, stream_round_trip);
    tcase_add_test(t, stream_hints);
    tcase_add_test(t, json_round_trip);
    tcase_add_test(t, json_defaults_and_numbers);
    tcase_add_test(t, json_malformed);
    tcase_add_test(t, json_truncated_everywhere);
    tcase_add_test(t, validate_accepts);
    tcase_add_test(t, validate_rejects_structure);
    tcase_add_test(t, validate_rejects_bad_selectors_and_fields);
    tcase_add_test(t, validate_rejects_deadlock);
    tcase_add_test(t, validate_scales);
    tcase_add_test(t, pytorch_csv_1f1b);
    tcase_add_test(t, pytorch_csv_skips_communication);
    tcase_add_test(t, pytorch_csv_rejects);
    tcase_add_test(t, read_file_errors);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(ir_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
