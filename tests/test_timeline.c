/* Timeline outputs: per-micro-batch rows and CSV, Chrome trace JSON, SVG. */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "timeline.h"

static void add(pp_timeline *t, int s, int op, int mb, int version, double t0, double t1)
{
    pp_timed_action a;
    memset(&a, 0, sizeof a);
    a.act = pp_act((pp_op)op, mb);
    a.version = version;
    a.start = t0;
    a.end = t1;
    ck_assert_int_eq(pp_timeline_add_action(t, s, &a), 0);
}

static void xfer(pp_timeline *t, int src, int dst, int mb, double t0, double t1)
{
    pp_transfer x = {src, dst, mb, dst < src, t0, t1};
    ck_assert_int_eq(pp_timeline_add_transfer(t, &x), 0);
}

static void mem(pp_timeline *t, int s, double time, int inflight, int copies, int version,
                double bytes)
{
    pp_mem_sample m = {time, inflight, copies, version, 0, bytes};
    ck_assert_int_eq(pp_timeline_add_mem(t, s, &m), 0);
}

static void init(pp_timeline *t, const char *name, int P, int m)
{
    pp_ir_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.name, sizeof info.name, "%s", name);
    info.stages = P;
    info.microbatches_per_step = m;
    info.steps = 1;
    info.total_microbatches = m;
    pp_err e = {{0}};
    ck_assert_int_eq(pp_timeline_init(t, &info, &e), 0);
    t->us_per_unit = 1000.0;
}

/* P = 2, m = 2. Stage 0 runs F1 before F0 (so rows must be sorted) and
 * backwards micro-batch 1 after its OPT: drift 1 there. */
static void build_small(pp_timeline *t, const char *name)
{
    init(t, name, 2, 2);
    add(t, 0, PP_OP_F, 1, 0, 0, 1);
    add(t, 0, PP_OP_F, 0, 0, 1, 2);
    add(t, 0, PP_OP_B, 0, 0, 5, 7);
    add(t, 0, PP_OP_OPT, -1, 1, 7, 7);
    add(t, 0, PP_OP_B, 1, 1, 7, 9);
    add(t, 1, PP_OP_F, 1, 0, 1.5, 2.5);
    add(t, 1, PP_OP_F, 0, 0, 2.5, 3.5);
    add(t, 1, PP_OP_B, 0, 0, 3.5, 4.5);
    add(t, 1, PP_OP_B, 1, 0, 4.5, 5.5);
    add(t, 1, PP_OP_OPT, -1, 1, 5.5, 5.5);
    xfer(t, 0, 1, 1, 1, 1.5);
    xfer(t, 0, 1, 0, 2, 2.5);
    xfer(t, 1, 0, 0, 4.5, 5);
    xfer(t, 1, 0, 1, 5.5, 6);
    mem(t, 0, 0, 1, 1, 0, 1073741824.0);
    mem(t, 0, 7, 1, 1, 1, 536870912.0);
    mem(t, 1, 1.5, 1, 1, 0, 268435456.0);
}

#define SMALL_ACTIONS 10
#define SMALL_TRANSFERS 4
#define SMALL_SAMPLES 3

static const char small_csv[] =
    "stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,b_end\n"
    "0,0,0,0,0,1,2,5,7\n"
    "0,1,0,1,1,0,1,7,9\n"
    "1,0,0,0,0,2.5,3.5,3.5,4.5\n"
    "1,1,0,0,0,1.5,2.5,4.5,5.5\n";

/* A fresh private directory, so tests can check what files appear. */
static void make_dir(char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/test_timeline.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *ent;
    while ((ent = readdir(d)))
        n += strcmp(ent->d_name, ".") != 0 && strcmp(ent->d_name, "..") != 0;
    closedir(d);
    return n;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* A plain scan, not repeated strstr: sanitizers check the whole haystack on
 * every strstr call, which is quadratic on a 100 MB file. */
static int count_str(const char *hay, const char *needle)
{
    size_t len = strlen(needle);
    int n = 0;
    for (const char *p = hay; *p; p++)
        n += *p == needle[0] && strncmp(p, needle, len) == 0;
    return n;
}

static void cleanup(const char *dir, const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    remove(path);
    rmdir(dir);
}

/* --- rows and CSV ------------------------------------------------------ */

START_TEST(rows_sorted_with_drift)
{
    pp_timeline t;
    build_small(&t, "paci");
    pp_mb_row *rows;
    size_t n;
    pp_err e = {{0}};
    ck_assert_int_eq(pp_timeline_mb_rows(&t, &rows, &n, &e), 0);
    ck_assert_uint_eq(n, 4);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(rows[i].stage, (int)i / 2);
        ck_assert_int_eq(rows[i].mb, (int)i % 2);
    }
    ck_assert_int_eq(rows[1].v_f, 0);
    ck_assert_int_eq(rows[1].v_b, 1);
    ck_assert_double_eq(rows[1].f_start, 0);
    ck_assert_double_eq(rows[1].f_end, 1);
    ck_assert_double_eq(rows[1].b_start, 7);
    ck_assert_double_eq(rows[1].b_end, 9);
    ck_assert_int_eq(rows[2].v_b - rows[2].v_f, 0);
    ck_assert_double_eq(rows[3].f_start, 1.5);
    free(rows);
    pp_timeline_free(&t);
}
END_TEST

START_TEST(csv_text_exact)
{
    pp_timeline t;
    build_small(&t, "paci");
    pp_mb_row *rows;
    size_t n;
    pp_err e = {{0}};
    ck_assert_int_eq(pp_timeline_mb_rows(&t, &rows, &n, &e), 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(pp_mb_csv_write(f, rows, n), 0);
    fclose(f);
    ck_assert_str_eq(buf, small_csv);
    free(buf);
    free(rows);
    pp_timeline_free(&t);
}
END_TEST

START_TEST(csv_save_atomic)
{
    pp_timeline t;
    build_small(&t, "paci");
    char dir[64], path[128];
    make_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/mb.csv", dir);
    pp_err e = {{0}};
    ck_assert_int_eq(pp_mb_csv_save(path, &t, &e), 0);
    char *text = slurp(path);
    ck_assert_str_eq(text, small_csv);
    ck_assert_int_eq(count_entries(dir), 1); /* no temp file left behind */
    free(text);
    cleanup(dir, "mb.csv");
    pp_timeline_free(&t);
}
END_TEST

/* Split backward: I gives v_b and b_start, W gives b_end; a part the run
 * did not record leaves its cells (and the drift) empty. */
START_TEST(split_backward_rows)
{
    pp_timeline t;
    init(&t, "zb", 1, 3);
    add(&t, 0, PP_OP_F, 0, 0, 0, 1);
    add(&t, 0, PP_OP_F, 1, 0, 1, 2);
    add(&t, 0, PP_OP_I, 0, 0, 2, 3);
    add(&t, 0, PP_OP_OPT, -1, 1, 3, 3.25);
    add(&t, 0, PP_OP_I, 1, 1, 3.25, 4.25);
    add(&t, 0, PP_OP_W, 0, 1, 4.25, 5.25);
    add(&t, 0, PP_OP_I, 2, 1, 5.25, 6);
    pp_mb_row *rows;
    size_t n;
    pp_err e = {{0}};
    ck_assert_int_eq(pp_timeline_mb_rows(&t, &rows, &n, &e), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(rows[0].v_b, 0);
    ck_assert_double_eq(rows[0].b_start, 2);
    ck_assert_double_eq(rows[0].b_end, 5.25);
    ck_assert_int_eq(rows[1].v_b - rows[1].v_f, 1);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_int_eq(pp_mb_csv_write(f, rows, n), 0);
    fclose(f);
    ck_assert_str_eq(buf, "stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,b_end\n"
                          "0,0,0,0,0,0,1,2,5.25\n"
                          "0,1,0,1,1,1,2,3.25,\n"
                          "0,2,,1,,,,5.25,\n");
    free(buf);
    free(rows);
    pp_timeline_free(&t);
}
END_TEST

START_TEST(empty_timeline_rows)
{
    pp_timeline t;
    init(&t, "none", 3, 1);
    pp_mb_row *rows;
    size_t n = 99;
    pp_err e = {{0}};
    ck_assert_int_eq(pp_timeline_mb_rows(&t, &rows, &n, &e), 0);
    ck_assert_uint_eq(n, 0);
    free(rows);
    pp_timeline_free(&t);
}
END_TEST

START_TEST(init_rejects_no_stages)
{
    pp_timeline t;
    pp_ir_info info;
    memset(&info, 0, sizeof info);
    pp_err e = {{0}};
    ck_assert_int_eq(pp_timeline_init(&t, &info, &e), -1);
    ck_assert_ptr_nonnull(strstr(e.msg, "stage"));
    pp_timed_action a;
    memset(&a, 0, sizeof a);
    init(&t, "x", 2, 1);
    ck_assert_int_eq(pp_timeline_add_action(&t, 2, &a), -1);
    ck_assert_int_eq(pp_timeline_add_action(&t, -1, &a), -1);
    pp_timeline_free(&t);
}
END_TEST

/* --- trace ------------------------------------------------------------- */

static cJSON *load_trace(const pp_timeline *t, char *dir, size_t n)
{
    char path[128];
    make_dir(dir, n);
    snprintf(path, sizeof path, "%s/trace.json", dir);
    pp_err e = {{0}};
    ck_assert_int_eq(pp_trace_save(path, t, &e), 0);
    ck_assert_int_eq(count_entries(dir), 1);
    char *text = slurp(path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(root);
    return root;
}

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double num_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(v), "missing number %s", key);
    return v->valuedouble;
}

static int has(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key) != NULL;
}

/* Finds the X event named `name` on process `pid`'s compute thread. */
static const cJSON *find_x(const cJSON *events, const char *name, int pid)
{
    const cJSON *ev;
    cJSON_ArrayForEach(ev, events)
    {
        if (strcmp(str_of(ev, "ph"), "X") == 0 && strcmp(str_of(ev, "name"), name) == 0 &&
            num_of(ev, "pid") == pid && num_of(ev, "tid") == 0)
            return ev;
    }
    return NULL;
}

START_TEST(trace_shape)
{
    pp_timeline t;
    build_small(&t, "paci");
    char dir[64];
    cJSON *root = load_trace(&t, dir, sizeof dir);
    ck_assert_str_eq(str_of(root, "displayTimeUnit"), "ms");
    const cJSON *other = cJSON_GetObjectItemCaseSensitive(root, "otherData");
    ck_assert_str_eq(str_of(other, "source"), "simulated");
    ck_assert_str_eq(str_of(other, "schedule"), "paci");
    ck_assert_str_eq(str_of(other, "time_unit"), "units");
    ck_assert_double_eq(num_of(other, "us_per_unit"), 1000.0);
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
    ck_assert(cJSON_IsArray(events));
    int x = 0, procs = 0, threads = 0, mem_c = 0, w_c = 0;
    const cJSON *ev;
    cJSON_ArrayForEach(ev, events)
    {
        const char *ph = str_of(ev, "ph"), *name = str_of(ev, "name");
        x += strcmp(ph, "X") == 0;
        if (strcmp(ph, "M") == 0 && strcmp(name, "process_name") == 0) {
            char want[32];
            snprintf(want, sizeof want, "stage %d", (int)num_of(ev, "pid"));
            ck_assert_str_eq(str_of(cJSON_GetObjectItem(ev, "args"), "name"), want);
            procs++;
        }
        threads += strcmp(ph, "M") == 0 && strcmp(name, "thread_name") == 0;
        if (strcmp(ph, "C") == 0) {
            const cJSON *args = cJSON_GetObjectItem(ev, "args");
            if (strcmp(name, "memory") == 0) {
                mem_c++;
                ck_assert(has(args, "bytes_GiB") && has(args, "inflight"));
            } else if (strcmp(name, "weights") == 0) {
                w_c++;
                ck_assert(has(args, "version") && has(args, "copies"));
            }
        }
    }
    ck_assert_int_eq(x, SMALL_ACTIONS + 2 * SMALL_TRANSFERS);
    ck_assert_int_eq(procs, 2);
    ck_assert_int_eq(threads, 2 * 3);
    ck_assert_int_eq(mem_c, SMALL_SAMPLES);
    ck_assert_int_eq(w_c, SMALL_SAMPLES);
    cJSON_Delete(root);
    cleanup(dir, "trace.json");
    pp_timeline_free(&t);
}
END_TEST

START_TEST(trace_actions_scaled_with_drift)
{
    pp_timeline t;
    build_small(&t, "paci");
    char dir[64];
    cJSON *root = load_trace(&t, dir, sizeof dir);
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
    const cJSON *f0 = find_x(events, "F0", 1);
    ck_assert_ptr_nonnull(f0);
    ck_assert_str_eq(str_of(f0, "cat"), "F");
    ck_assert_double_eq_tol(num_of(f0, "ts"), 2500.0, 1e-6);
    ck_assert_double_eq_tol(num_of(f0, "dur"), 1000.0, 1e-6);
    const cJSON *b1 = find_x(events, "B1", 0);
    ck_assert_ptr_nonnull(b1);
    const cJSON *args = cJSON_GetObjectItem(b1, "args");
    ck_assert_double_eq(num_of(args, "microbatch"), 1);
    ck_assert_double_eq(num_of(args, "v_f"), 0);
    ck_assert_double_eq(num_of(args, "v_b"), 1);
    ck_assert_double_eq(num_of(args, "drift"), 1);
    const cJSON *opt = find_x(events, "OPT", 0);
    ck_assert_ptr_nonnull(opt);
    ck_assert_double_eq(num_of(cJSON_GetObjectItem(opt, "args"), "version"), 1);
    ck_assert_double_eq(num_of(opt, "dur"), 0);
    const cJSON *mem0 = NULL, *ev;
    cJSON_ArrayForEach(ev, events)
    {
        if (!mem0 && strcmp(str_of(ev, "ph"), "C") == 0 && strcmp(str_of(ev, "name"), "memory") == 0)
            mem0 = ev;
    }
    ck_assert_double_eq_tol(num_of(cJSON_GetObjectItem(mem0, "args"), "bytes_GiB"), 1.0, 1e-9);
    cJSON_Delete(root);
    cleanup(dir, "trace.json");
    pp_timeline_free(&t);
}
END_TEST

/* Every send has exactly one receive with the same id, on the right
 * processes and threads. */
START_TEST(trace_flows_pair_up)
{
    pp_timeline t;
    build_small(&t, "paci");
    char dir[64];
    cJSON *root = load_trace(&t, dir, sizeof dir);
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
    int sends[SMALL_TRANSFERS + 1] = {0}, recvs[SMALL_TRANSFERS + 1] = {0};
    const cJSON *ev;
    cJSON_ArrayForEach(ev, events)
    {
        const char *ph = str_of(ev, "ph");
        if (strcmp(ph, "s") != 0 && strcmp(ph, "f") != 0)
            continue;
        ck_assert_str_eq(str_of(ev, "cat"), "flow");
        int id = (int)num_of(ev, "id");
        ck_assert(id >= 1 && id <= SMALL_TRANSFERS);
        const pp_transfer *x = &t.transfers[id - 1];
        if (ph[0] == 's') { /* on the sender's "send to stage dst" thread */
            sends[id]++;
            ck_assert_int_eq((int)num_of(ev, "pid"), x->src);
            ck_assert_int_eq((int)num_of(ev, "tid"), 1 + 2 * x->dst);
        } else { /* on the receiver's "recv from stage src" thread */
            recvs[id]++;
            ck_assert_int_eq((int)num_of(ev, "pid"), x->dst);
            ck_assert_int_eq((int)num_of(ev, "tid"), 2 + 2 * x->src);
            ck_assert_str_eq(str_of(ev, "bp"), "e");
        }
        double ts = num_of(ev, "ts");
        ck_assert(ts >= x->start * 1000.0 - 1e-6 && ts <= x->end * 1000.0 + 1e-6);
    }
    for (int i = 1; i <= SMALL_TRANSFERS; i++) {
        ck_assert_int_eq(sends[i], 1);
        ck_assert_int_eq(recvs[i], 1);
    }
    cJSON_Delete(root);
    cleanup(dir, "trace.json");
    pp_timeline_free(&t);
}
END_TEST

/* A time in the trace (microseconds, 3 decimals) in whole nanoseconds. */
static long long ns_in(const cJSON *ev, const char *key)
{
    return llround(num_of(ev, key) * 1000.0);
}

/* The X events of one (pid, tid), sorted by ts, into out; their count. */
static int slices_of(const cJSON *events, int pid, int tid, const cJSON **out, int cap)
{
    int n = 0;
    const cJSON *ev;
    cJSON_ArrayForEach(ev, events)
    {
        if (strcmp(str_of(ev, "ph"), "X") == 0 && num_of(ev, "pid") == pid &&
            num_of(ev, "tid") == tid && n < cap)
            out[n++] = ev;
    }
    for (int i = 1; i < n; i++) /* insertion sort by ts */
        for (int j = i; j > 0 && ns_in(out[j], "ts") < ns_in(out[j - 1], "ts"); j--) {
            const cJSON *tmp = out[j];
            out[j] = out[j - 1];
            out[j - 1] = tmp;
        }
    return n;
}

/* Back-to-back slices whose times fall between nanoseconds: written as
 * rounded end less rounded start, one ends exactly where the next begins
 * (rounding start and duration apart overlapped them by 0.001 us). */
START_TEST(trace_slices_do_not_overlap_after_rounding)
{
    pp_timeline t;
    init(&t, "x", 2, 4);
    t.us_per_unit = 1.0; /* units are microseconds: the fractions below are sub-ns */
    double at[] = {0.0006, 1.0004, 2.0006, 3.0004, 4.0006};
    for (int i = 0; i < 4; i++) {
        add(&t, 0, PP_OP_F, i, 0, at[i], at[i + 1]);
        xfer(&t, 0, 1, i, at[i + 1], at[i + 1] + 0.9998);
    }
    char dir[64];
    cJSON *root = load_trace(&t, dir, sizeof dir);
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
    const cJSON *sl[8];
    int tracks[][2] = {{0, 0}, {0, 3}, {1, 2}}; /* compute; send to 1; recv from 0 */
    for (int k = 0; k < 3; k++) {
        int n = slices_of(events, tracks[k][0], tracks[k][1], sl, 8);
        ck_assert_int_eq(n, 4);
        for (int i = 1; i < n; i++) {
            long long end = ns_in(sl[i - 1], "ts") + ns_in(sl[i - 1], "dur");
            ck_assert_msg(end <= ns_in(sl[i], "ts"),
                          "pid %d tid %d: slice %d ends at %lld ns, slice %d starts at %lld ns",
                          tracks[k][0], tracks[k][1], i - 1, end, i, ns_in(sl[i], "ts"));
        }
    }
    cJSON_Delete(root);
    cleanup(dir, "trace.json");
    pp_timeline_free(&t);
}
END_TEST

/* Stage 1 sends an activation to stage 2 and a gradient to stage 0 over
 * the same interval (free, independent links): the two transfers sit on
 * two threads of stage 1 ("send to stage 2", "send to stage 0"), so they
 * do not overlap on one thread, and each flow arrow starts on its own
 * transfer's thread inside its slice. */
START_TEST(trace_one_thread_per_link)
{
    pp_timeline t;
    init(&t, "x", 3, 1);
    add(&t, 1, PP_OP_F, 0, 0, 0, 1);
    xfer(&t, 1, 2, 0, 1, 2);
    xfer(&t, 1, 0, 0, 1, 2);
    char dir[64];
    cJSON *root = load_trace(&t, dir, sizeof dir);
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
    int names = 0;
    const cJSON *ev;
    cJSON_ArrayForEach(ev, events)
    {
        if (strcmp(str_of(ev, "ph"), "M") != 0 || strcmp(str_of(ev, "name"), "thread_name") != 0)
            continue;
        int pid = (int)num_of(ev, "pid"), tid = (int)num_of(ev, "tid");
        const char *name = str_of(cJSON_GetObjectItem(ev, "args"), "name");
        names++;
        if (tid == 0)
            ck_assert_str_eq(name, "compute");
        else if (pid == 1)
            ck_assert_str_eq(name, tid == 5 ? "send to stage 2" : "send to stage 0");
        else
            ck_assert_str_eq(name, "recv from stage 1");
    }
    ck_assert_int_eq(names, 3 + 4); /* three compute threads, two links both ways */
    const cJSON *sl[4];
    ck_assert_int_eq(slices_of(events, 1, 5, sl, 4), 1); /* send to stage 2 */
    ck_assert_str_eq(str_of(sl[0], "name"), "act0");
    ck_assert_int_eq(slices_of(events, 1, 1, sl, 4), 1); /* send to stage 0 */
    ck_assert_str_eq(str_of(sl[0], "name"), "grad0");
    cJSON_ArrayForEach(ev, events)
    {
        const char *ph = str_of(ev, "ph");
        if (strcmp(ph, "s") != 0 && strcmp(ph, "f") != 0)
            continue;
        const pp_transfer *x = &t.transfers[(int)num_of(ev, "id") - 1];
        int pid = (int)num_of(ev, "pid"), tid = (int)num_of(ev, "tid");
        ck_assert_int_eq(slices_of(events, pid, tid, sl, 4), 1);
        ck_assert_str_eq(str_of(ev, "name"), str_of(sl[0], "name"));
        ck_assert_int_eq(pid, ph[0] == 's' ? x->src : x->dst);
    }
    cJSON_Delete(root);
    cleanup(dir, "trace.json");
    pp_timeline_free(&t);
}
END_TEST

/* Two ranks holding two stages each (looped: stages 0 and 2 on rank 0,
 * 1 and 3 on rank 1): one process per rank named "rank r", every compute
 * slice on its rank's process with its stage in the name ("2F0") and in
 * args.stage, and a transfer between ranks on the ranks' link threads. */
START_TEST(trace_one_process_per_rank)
{
    pp_timeline t;
    pp_ir_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.name, sizeof info.name, "interleaved");
    info.stages = 4;
    info.ranks = 2;
    info.placement = PP_PLACE_LOOPED;
    info.microbatches_per_step = info.steps = info.total_microbatches = 1;
    pp_err e = {{0}};
    ck_assert_int_eq(pp_timeline_init(&t, &info, &e), 0);
    for (int s = 0; s < 4; s++) {
        pp_timed_action a;
        memset(&a, 0, sizeof a);
        a.act = pp_act_on(PP_OP_F, s, 0);
        a.start = s;
        a.end = s + 1;
        ck_assert_int_eq(pp_timeline_add_action(&t, s, &a), 0);
    }
    xfer(&t, 1, 2, 0, 2, 2.5); /* stage 1 (rank 1) to stage 2 (rank 0) */
    char dir[64];
    cJSON *root = load_trace(&t, dir, sizeof dir);
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
    int processes = 0;
    const cJSON *ev;
    cJSON_ArrayForEach(ev, events)
    {
        if (strcmp(str_of(ev, "name"), "process_name") != 0)
            continue;
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(ev, "args");
        char want[16];
        snprintf(want, sizeof want, "rank %d", (int)num_of(ev, "pid"));
        ck_assert_str_eq(str_of(args, "name"), want);
        processes++;
    }
    ck_assert_int_eq(processes, 2);
    const cJSON *x = find_x(events, "2F0", 0);
    ck_assert_ptr_nonnull(x);
    ck_assert_int_eq((int)num_of(cJSON_GetObjectItemCaseSensitive(x, "args"), "stage"), 2);
    ck_assert_ptr_nonnull(find_x(events, "3F0", 1));
    ck_assert_ptr_null(find_x(events, "2F0", 2)); /* no process per stage */
    const cJSON *sl[4];
    ck_assert_int_eq(slices_of(events, 1, 1, sl, 4), 1); /* rank 1: send to rank 0 */
    ck_assert_int_eq(slices_of(events, 0, 4, sl, 4), 1); /* rank 0: recv from rank 1 */
    cJSON_Delete(root);
    cleanup(dir, "trace.json");
    pp_timeline_free(&t);
}
END_TEST

START_TEST(trace_escapes_strings)
{
    pp_timeline t;
    const char *name = "we\"ird\\na<me>\t";
    build_small(&t, name);
    snprintf(t.source, sizeof t.source, "measured");
    snprintf(t.unit, sizeof t.unit, "s");
    t.us_per_unit = 1e6;
    char dir[64];
    cJSON *root = load_trace(&t, dir, sizeof dir);
    const cJSON *other = cJSON_GetObjectItemCaseSensitive(root, "otherData");
    ck_assert_str_eq(str_of(other, "schedule"), name);
    ck_assert_str_eq(str_of(other, "source"), "measured");
    ck_assert_str_eq(str_of(other, "time_unit"), "s");
    const cJSON *b0 = find_x(cJSON_GetObjectItem(root, "traceEvents"), "B0", 0);
    ck_assert_double_eq_tol(num_of(b0, "ts"), 5e6, 1e-3);
    cJSON_Delete(root);
    cleanup(dir, "trace.json");
    pp_timeline_free(&t);
}
END_TEST

/* --- SVG --------------------------------------------------------------- */

static char *save_svg(const pp_timeline *t, char *dir, size_t n)
{
    char path[128];
    make_dir(dir, n);
    snprintf(path, sizeof path, "%s/t.svg", dir);
    pp_err e = {{0}};
    ck_assert_int_eq(pp_svg_save(path, t, &e), 0);
    ck_assert_int_eq(count_entries(dir), 1);
    return slurp(path);
}

START_TEST(svg_boxes_titles_legend)
{
    pp_timeline t;
    build_small(&t, "paci<1>");
    char dir[64];
    char *svg = save_svg(&t, dir, sizeof dir);
    ck_assert(strncmp(svg, "<svg", 4) == 0);
    ck_assert_ptr_nonnull(strstr(svg, "</svg>\n"));
    /* one box per action, each with a tooltip; no other titled rect */
    ck_assert_int_eq(count_str(svg, "<title>"), SMALL_ACTIONS);
    ck_assert_int_eq(count_str(svg, "\"><title>"), SMALL_ACTIONS);
    ck_assert_int_eq(count_str(svg, "</title></rect>"), SMALL_ACTIONS);
    ck_assert_ptr_nonnull(strstr(svg, "<title>B1 stage 0 v1 (F v0, drift 1) [7, 9]</title>"));
    ck_assert_ptr_nonnull(strstr(svg, "<title>OPT stage 1 v1 [5.5, 5.5]</title>"));
    ck_assert_ptr_nonnull(strstr(svg, ">stage 0<"));
    ck_assert_ptr_nonnull(strstr(svg, ">stage 1<"));
    ck_assert_ptr_nonnull(strstr(svg, "F forward"));
    ck_assert_ptr_nonnull(strstr(svg, "B backward"));
    ck_assert_ptr_nonnull(strstr(svg, "OPT optimizer step"));
    ck_assert_ptr_nonnull(strstr(svg, ">idle<"));
    ck_assert_ptr_nonnull(strstr(svg, "time (units)"));
    ck_assert_ptr_nonnull(strstr(svg, "paci&lt;1&gt;"));
    ck_assert_ptr_nonnull(strstr(svg, "P = 2, m = 2, steps = 1, simulated"));
    ck_assert_ptr_null(strstr(svg, "I input grad")); /* no split backward here */
    free(svg);
    cleanup(dir, "t.svg");
    pp_timeline_free(&t);
}
END_TEST

START_TEST(svg_split_backward_legend)
{
    pp_timeline t;
    init(&t, "zb", 1, 1);
    add(&t, 0, PP_OP_F, 0, 0, 0, 1);
    add(&t, 0, PP_OP_I, 0, 0, 1, 2);
    add(&t, 0, PP_OP_W, 0, 0, 2, 3);
    add(&t, 0, PP_OP_OPT, -1, 1, 3, 3);
    char dir[64];
    char *svg = save_svg(&t, dir, sizeof dir);
    ck_assert_int_eq(count_str(svg, "</title></rect>"), 4);
    ck_assert_ptr_nonnull(strstr(svg, "I input grad"));
    ck_assert_ptr_nonnull(strstr(svg, "W weight grad"));
    free(svg);
    cleanup(dir, "t.svg");
    pp_timeline_free(&t);
}
END_TEST

/* --- errors and scale ---------------------------------------------------- */

START_TEST(unwritable_path_fails_cleanly)
{
    pp_timeline t;
    build_small(&t, "paci");
    const char *paths[3] = {"/nonexistent-dir/x.svg", "/nonexistent-dir/x.json",
                            "/nonexistent-dir/x.csv"};
    for (int i = 0; i < 3; i++) {
        pp_err e = {{0}};
        int rc = i == 0 ? pp_svg_save(paths[i], &t, &e)
                 : i == 1 ? pp_trace_save(paths[i], &t, &e)
                          : pp_mb_csv_save(paths[i], &t, &e);
        ck_assert_int_eq(rc, -1);
        ck_assert_ptr_nonnull(strstr(e.msg, paths[i]));
        ck_assert_int_ne(access(paths[i], F_OK), 0);
    }
    pp_timeline_free(&t);
}
END_TEST

/* 10^6 actions: all three writers stay linear (a quadratic pass would not
 * finish within the test timeout). */
START_TEST(large_timeline_linear)
{
    enum { P = 4, N = 125000 };
    pp_timeline t;
    init(&t, "big", P, 8);
    for (int s = 0; s < P; s++)
        for (int mb = 0; mb < N; mb++) {
            double base = 3.0 * mb + s;
            add(&t, s, PP_OP_F, mb, mb / 8, base, base + 1);
            add(&t, s, PP_OP_B, mb, mb / 8, base + 1, base + 3);
        }
    char dir[64], path[128];
    make_dir(dir, sizeof dir);
    pp_err e = {{0}};
    const char *files[3] = {"big.json", "big.svg", "big.csv"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        int rc = i == 0 ? pp_trace_save(path, &t, &e)
                 : i == 1 ? pp_svg_save(path, &t, &e)
                          : pp_mb_csv_save(path, &t, &e);
        ck_assert_msg(rc == 0, "%s", e.msg);
    }
    snprintf(path, sizeof path, "%s/big.svg", dir);
    char *svg = slurp(path);
    ck_assert_int_eq(count_str(svg, "</title></rect>"), 2 * P * N);
    ck_assert_int_eq(count_str(svg, "stroke=\"none\""), 0); /* no labels at this size */
    free(svg);
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        remove(path);
    }
    rmdir(dir);
    pp_timeline_free(&t);
}
END_TEST

static Suite *timeline_suite(void)
{
    Suite *s = suite_create("timeline");
    TCase *rows = tcase_create("rows");
    tcase_add_test(rows, rows_sorted_with_drift);
    tcase_add_test(rows, csv_text_exact);
    tcase_add_test(rows, csv_save_atomic);
    tcase_add_test(rows, split_backward_rows);
    tcase_add_test(rows, empty_timeline_rows);
    tcase_add_test(rows, init_rejects_no_stages);
    suite_add_tcase(s, rows);
    TCase *trace = tcase_create("trace");
    tcase_add_test(trace, trace_shape);
    tcase_add_test(trace, trace_actions_scaled_with_drift);
    tcase_add_test(trace, trace_flows_pair_up);
    tcase_add_test(trace, trace_slices_do_not_overlap_after_rounding);
    tcase_add_test(trace, trace_one_thread_per_link);
    tcase_add_test(trace, trace_one_process_per_rank);
    tcase_add_test(trace, trace_escapes_strings);
    suite_add_tcase(s, trace);
    TCase *svg = tcase_create("svg");
    tcase_add_test(svg, svg_boxes_titles_legend);
    tcase_add_test(svg, svg_split_backward_legend);
    suite_add_tcase(s, svg);
    TCase *err = tcase_create("errors_and_scale");
    tcase_add_test(err, unwritable_path_fails_cleanly);
    tcase_add_test(err, large_timeline_linear);
    tcase_set_timeout(err, 120); /* linear, but 10^6 actions and fsync */
    suite_add_tcase(s, err);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(timeline_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
