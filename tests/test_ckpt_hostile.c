/* Checkpoints with valid CRCs but crafted contents: a resume refuses each
 * with one line naming what is wrong, and never indexes out of range (the
 * sanitizer build runs this too). The stage state is taken from a real
 * 3-stage paci run stopped after update 2, then one number in it is
 * changed. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/checkpoint.h"
#include "runtime/cut.h"
#include "test_support.h"

enum { P = 3, M = 3, S = 6, K = 2 };

typedef struct {
    void *blobs[P];
    size_t sizes[P];
} state;

static int capture(void *ctx, int k, void **blobs, size_t *sizes, double tokens, pp_err *e)
{
    (void)k, (void)tokens, (void)e;
    state *st = ctx;
    for (int s = 0; s < P; s++) {
        st->blobs[s] = malloc(sizes[s]);
        memcpy(st->blobs[s], blobs[s], sizes[s]);
        st->sizes[s] = sizes[s];
    }
    return 0;
}

static pp_model_desc model(void)
{
    return test_model(3, 32, 2, 16, 29, 2);
}

/* The stages' states after update K of paci (P = 3). */
static state checkpoint(void)
{
    pp_model_desc md = model();
    pp_schedule ir = test_schedule("paci", P, M, S);
    pp_cut cut;
    pp_err e = {{0}};
    ck_assert_msg(pp_cut_plan(&ir, K, &cut, &e) == 0, "%s", e.msg);
    state st = {{0}, {0}};
    pp_run_config c = test_run_config(&ir, &md, &pp_backend_cpu, 60);
    c.cuts = &cut;
    c.ncuts = 1;
    c.stop_cut = 0;
    c.on_checkpoint = capture;
    c.on_checkpoint_ctx = &st;
    pp_run_result r;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s", e.msg);
    pp_run_result_free(&r);
    pp_cut_free(&cut, P);
    pp_schedule_free(&ir);
    return st;
}

/* Resumes from st; returns pp_run's result code, the message in e. */
static int resume(state *st, pp_err *e)
{
    pp_model_desc md = model();
    pp_schedule ir = test_schedule("paci", P, M, S);
    pp_run_config c = test_run_config(&ir, &md, &pp_backend_cpu, 20);
    c.resume_blobs = st->blobs;
    c.resume_sizes = st->sizes;
    pp_run_result r;
    int rc = pp_run(&c, &r, e);
    if (rc == 0)
        pp_run_result_free(&r);
    pp_schedule_free(&ir);
    return rc;
}

static void free_state(state *st)
{
    for (int s = 0; s < P; s++)
        free(st->blobs[s]);
}

static int64_t *head_of(state *st, int s)
{
    return (int64_t *)st->blobs[s];
}

/* The stage state's layout (runtime_ckpt.c): 10 int64 of header, the loss
 * sum, per weight version its number and weights, the optimizer state, the
 * gradient, per micro-batch in flight (mb, version, loss, activations),
 * per kept message (kind, dst, mb, bytes, data). */
static size_t inflight_at(state *st, int s)
{
    pp_model_desc md = model();
    void *bk;
    pp_err e = {{0}};
    ck_assert(pp_backend_cpu.create(&md, P, s, NULL, &bk, &e) == 0);
    size_t w = pp_backend_cpu.nparams(bk) * sizeof(float);
    size_t ob = pp_backend_cpu.opt_state_bytes(bk);
    pp_backend_cpu.destroy(bk);
    int64_t nversions = head_of(st, s)[6];
    return 10 * 8 + 8 + (size_t)nversions * (8 + w) + ob + w;
}

/* Where the optimizer state's last field, AdamW's step count t (a double),
 * lies in stage s's state: right before the gradient. */
static size_t adamw_t_at(state *st, int s)
{
    pp_model_desc md = model();
    void *bk;
    pp_err e = {{0}};
    ck_assert(pp_backend_cpu.create(&md, P, s, NULL, &bk, &e) == 0);
    size_t w = pp_backend_cpu.nparams(bk) * sizeof(float);
    pp_backend_cpu.destroy(bk);
    return inflight_at(st, s) - w - sizeof(double);
}

static void set_adamw_t(state *st, int s, double t)
{
    size_t at = adamw_t_at(st, s);
    double was;
    memcpy(&was, (char *)st->blobs[s] + at, sizeof was);
    ck_assert_msg(was == K, "stage %d: t is %g after update %d", s, was, K);
    memcpy((char *)st->blobs[s] + at, &t, sizeof t);
}

static size_t acts_bytes(int s)
{
    pp_model_desc md = model();
    void *bk;
    pp_err e = {{0}};
    ck_assert(pp_backend_cpu.create(&md, P, s, NULL, &bk, &e) == 0);
    size_t ab = pp_backend_cpu.acts_bytes(bk);
    pp_backend_cpu.destroy(bk);
    return ab;
}

static void set_i64(state *st, int s, size_t at, int64_t v)
{
    memcpy((char *)st->blobs[s] + at, &v, sizeof v);
}

/* mutate(st) changes one thing; the resume must fail naming `frag`. */
static void expect_refused(void (*mutate)(state *), const char *frag)
{
    state st = checkpoint();
    pp_err e = {{0}};
    ck_assert_msg(resume(&st, &e) == 0, "the untouched checkpoint resumes: %s", e.msg);
    free_state(&st);
    st = checkpoint();
    mutate(&st);
    memset(&e, 0, sizeof e);
    ck_assert_msg(resume(&st, &e) < 0, "a crafted checkpoint (%s) resumed", frag);
    ck_assert_msg(strstr(e.msg, frag), "message lacks \"%s\": %s", frag, e.msg);
    free_state(&st);
}

static void position_past_the_end(state *st) { head_of(st, 1)[2] = 1000000000; }
static void absurd_update_count(state *st) { head_of(st, 0)[3] = 123456789; }
static void version_not_stored(state *st) { head_of(st, 0)[4] = 7; head_of(st, 0)[3] = 7; }
static void many_versions(state *st) { head_of(st, 1)[6] = 100000; }
static void pinned_in_the_future(state *st) { head_of(st, 0)[5] = 99; }
static void counts_out_of_range(state *st) { head_of(st, 1)[7] = 1 << 30; }

/* A stage with 2 micro-batches in flight at the cut names the first one
 * twice. */
static void microbatch_in_flight_twice(state *st)
{
    int s = 0;
    while (s < P && head_of(st, s)[7] < 2)
        s++;
    ck_assert_msg(s < P, "no stage holds 2 micro-batches at the cut");
    size_t at = inflight_at(st, s);
    int64_t first;
    memcpy(&first, (char *)st->blobs[s] + at, sizeof first);
    set_i64(st, s, at + 16 + sizeof(float) + acts_bytes(s), first);
}

static void adamw_steps_negative(state *st) { set_adamw_t(st, 1, -5); }
static void adamw_steps_beyond_the_updates(state *st) { set_adamw_t(st, 0, K + 1); }
static void adamw_steps_overflowing(state *st) { set_adamw_t(st, 2, 1e300); }
static void adamw_steps_nan(state *st) { set_adamw_t(st, 0, NAN); }

static void microbatch_out_of_range(state *st)
{
    ck_assert_int_ge(head_of(st, 0)[7], 1);
    set_i64(st, 0, inflight_at(st, 0), 1 << 20);
}

START_TEST(crafted_stage_states_are_refused)
{
    expect_refused(position_past_the_end, "resumes at action 1000000000");
    expect_refused(absurd_update_count, "123456789 updates");
    expect_refused(version_not_stored, "weight version 7");
    expect_refused(many_versions, "100000 weight versions");
    expect_refused(pinned_in_the_future, "pins weight version 99");
    expect_refused(counts_out_of_range, "counts out of range");
    expect_refused(microbatch_in_flight_twice, "bad micro-batch or one twice");
    expect_refused(microbatch_out_of_range, "bad micro-batch");
    /* AdamW's t: one step per update, so exactly K; a resume used to cast
     * whatever it found to an integer (bias correction 1 - beta^t) */
    expect_refused(adamw_steps_negative, "stage 1: checkpoint's AdamW step count t is -5, the "
                                         "stage has made 2 updates");
    expect_refused(adamw_steps_beyond_the_updates, "AdamW step count t is 3");
    expect_refused(adamw_steps_overflowing, "AdamW step count t is 1e+300");
    expect_refused(adamw_steps_nan, "AdamW step count t is nan");
}
END_TEST

/* 9000 empty sections with valid CRCs: refused at once (the duplicate
 * check is quadratic; 80 000 sections took 17 s). */
START_TEST(a_checkpoint_of_too_many_sections_is_refused_quickly)
{
    char dir[] = "/tmp/pp_ckpt_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    pp_ckpt_writer w;
    pp_err e = {{0}};
    pp_ckpt_shape shape = {3, 32, 2, 16, 29, P};
    ck_assert_msg(pp_ckpt_writer_open(&w, dir, "c.ckpt", &shape, &e) == 0, "%s", e.msg);
    for (int i = 0; i < 9000; i++) {
        char name[32];
        snprintf(name, sizeof name, "s%d", i);
        ck_assert_msg(pp_ckpt_writer_add(&w, name, "", 0, &e) == 0, "%s", e.msg);
    }
    ck_assert_msg(pp_ckpt_writer_commit(&w, &e) == 0, "%s", e.msg);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pp_ckpt_reader r;
    int rc = pp_ckpt_open(&r, dir, "c.ckpt", &e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc == 0)
        pp_ckpt_close(&r);
    ck_assert_msg(rc < 0 && strstr(e.msg, "more than 8192 sections"), "opened, or: %s", e.msg);
    ck_assert((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9 < 5.0);
    char path[64];
    snprintf(path, sizeof path, "%s/c.ckpt", dir);
    unlink(path);
    rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ckpt_hostile");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, crafted_stage_states_are_refused);
    tcase_add_test(tc, a_checkpoint_of_too_many_sections_is_refused_quickly);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
