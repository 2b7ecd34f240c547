/* What a run learns from its IR before the first action (pp_ir_plan): the
 * messages every link must hold so that no send blocks, per stage the most
 * micro-batches held at once, a schedule that deadlocks even with
 * unbounded links; and that a run reading its IR as a stream (a long run
 * never holds it) trains exactly as one holding it whole. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "test_support.h"

static pp_ir_plan plan_of(const pp_schedule *ir)
{
    pp_stream *st;
    pp_ir_plan p;
    pp_err e = {{0}};
    ck_assert_msg(pp_stream_from_schedule(ir, &st, &e) == 0, "%s", e.msg);
    ck_assert_msg(pp_ir_plan_make(st, &p, &e) == 0, "%s: %s", ir->info.name, e.msg);
    pp_stream_free(st);
    return p;
}

/* P = 2, m = 1: stage 0 forwards all S micro-batches before it takes a
 * gradient back; stage 1 runs F, B, OPT per micro-batch. */
static pp_schedule forward_ahead(int S)
{
    pp_ir_info info = {.stages = 2, .microbatches_per_step = 1, .steps = S,
                       .total_microbatches = S};
    snprintf(info.name, sizeof info.name, "forward-ahead");
    pp_schedule ir;
    pp_err e = {{0}};
    ck_assert(pp_schedule_init(&ir, &info, &e) == 0);
    for (int mb = 0; mb < S; mb++)
        pp_schedule_push(&ir, 0, pp_act(PP_OP_F, mb), &e);
    for (int mb = 0; mb < S; mb++) {
        pp_schedule_push(&ir, 0, pp_act(PP_OP_B, mb), &e);
        pp_schedule_push(&ir, 0, pp_act(PP_OP_OPT, -1), &e);
        pp_schedule_push(&ir, 1, pp_act(PP_OP_F, mb), &e);
        pp_schedule_push(&ir, 1, pp_act(PP_OP_B, mb), &e);
        pp_schedule_push(&ir, 1, pp_act(PP_OP_OPT, -1), &e);
    }
    ck_assert_msg(pp_schedule_validate(&ir, &e) == 0, "%s", e.msg);
    return ir;
}

START_TEST(links_hold_what_the_schedule_sends_ahead)
{
    /* gpipe: a step's m forwards before any gradient comes back */
    pp_schedule g = test_schedule("gpipe", 3, 5, 3);
    pp_ir_plan p = plan_of(&g);
    ck_assert_msg(p.slots == 5, "gpipe m=5: %d slots", p.slots);
    for (int s = 0; s < 3; s++)
        ck_assert_int_eq(p.peak_held[s], 5);
    ck_assert_int_eq(p.actions[0], 3 * (2 * 5 + 1));
    ck_assert_int_eq(p.barrier_stage, -1);
    pp_ir_plan_free(&p);
    pp_schedule_free(&g);
    /* the 1F1B family: within the m + P messages the queues always had */
    const char *names[] = {"1f1b-flush", "pipedream", "pipedream-2bw", "paci"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int P = 4, m = strcmp(names[i], "pipedream") ? 4 : 1;
        pp_schedule ir = test_schedule(names[i], P, m, 5);
        p = plan_of(&ir);
        ck_assert_msg(p.slots >= 1 && p.slots <= m + P, "%s: %d slots", names[i], p.slots);
        if (!strcmp(names[i], "1f1b-flush"))
            for (int s = 0; s < P; s++)
                ck_assert_int_eq(p.peak_held[s], P - s < m ? P - s : m);
        pp_ir_plan_free(&p);
        pp_schedule_free(&ir);
    }
    /* 12 activations ahead and 12 gradients back, where m + P = 3 */
    pp_schedule ahead = forward_ahead(12);
    p = plan_of(&ahead);
    ck_assert_msg(p.slots == 12, "forward-ahead: %d slots", p.slots);
    pp_ir_plan_free(&p);
    pp_err e = {{0}};
    ck_assert_int_eq(pp_schedule_link_slots(&ahead, &e), 12);
    pp_schedule_free(&ahead);
}
END_TEST

/* Micro-batches taken in another order than they were sent: the receiver
 * parks those it wants later (at most the link's capacity of them). */
START_TEST(out_of_order_receives_are_covered)
{
    pp_ir_info info = {.stages = 2, .microbatches_per_step = 4, .steps = 1,
                       .total_microbatches = 4};
    pp_schedule ir;
    pp_err e = {{0}};
    ck_assert(pp_schedule_init(&ir, &info, &e) == 0);
    for (int mb = 0; mb < 4; mb++)
        pp_schedule_push(&ir, 0, pp_act(PP_OP_F, mb), &e);
    for (int mb = 3; mb >= 0; mb--) { /* stage 1 takes them last first */
        pp_schedule_push(&ir, 1, pp_act(PP_OP_F, mb), &e);
        pp_schedule_push(&ir, 1, pp_act(PP_OP_B, mb), &e);
    }
    for (int mb = 3; mb >= 0; mb--)
        pp_schedule_push(&ir, 0, pp_act(PP_OP_B, mb), &e);
    pp_schedule_push(&ir, 0, pp_act(PP_OP_OPT, -1), &e);
    pp_schedule_push(&ir, 1, pp_act(PP_OP_OPT, -1), &e);
    ck_assert_msg(pp_schedule_validate(&ir, &e) == 0, "%s", e.msg);
    pp_ir_plan p = plan_of(&ir);
    /* all 4 sent before stage 1 takes one; taking F3 first parks F0..F2 */
    ck_assert_msg(p.slots == 4, "%d slots", p.slots);
    ck_assert_int_eq(p.slots_src, 0);
    ck_assert_int_eq(p.slots_dst, 1);
    pp_ir_plan_free(&p);
    pp_schedule_free(&ir);
}
END_TEST

START_TEST(a_schedule_that_deadlocks_is_named)
{
    pp_ir_info info = {.stages = 2, .microbatches_per_step = 1, .steps = 1,
                       .total_microbatches = 1};
    pp_schedule ir;
    pp_err e = {{0}};
    ck_assert(pp_schedule_init(&ir, &info, &e) == 0);
    pp_schedule_push(&ir, 0, pp_act(PP_OP_B, 0), &e); /* waits for stage 1's gradient */
    pp_schedule_push(&ir, 0, pp_act(PP_OP_F, 0), &e);
    pp_schedule_push(&ir, 1, pp_act(PP_OP_F, 0), &e); /* waits for stage 0's activation */
    pp_schedule_push(&ir, 1, pp_act(PP_OP_B, 0), &e);
    ck_assert_int_eq(pp_schedule_link_slots(&ir, &e), -1);
    ck_assert_msg(strstr(e.msg, "stage 0 waits forever at action 0 \"B0\""), "%s", e.msg);
    pp_schedule_free(&ir);
}
END_TEST

/* The run sizes its links from the plan: a schedule 12 messages ahead
 * trains to its end (it stalled until the timeout with m + P slots). */
START_TEST(a_schedule_far_ahead_trains_to_its_end)
{
    pp_schedule ir = forward_ahead(12);
    pp_model_desc md = test_model(2, 16, 2, 8, 32, 2);
    pp_run_config c = test_run_config(&ir, &md, &pp_backend_cpu, 5);
    c.threads = 1;
    pp_run_result r;
    pp_err e = {{0}};
    double t0 = pp_now_s();
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(r.steps, 12);
    ck_assert_msg(pp_now_s() - t0 < 4, "took %.1f s", pp_now_s() - t0);
    pp_run_result_free(&r);
    pp_schedule_free(&ir);
}
END_TEST

typedef struct {
    const char *name;
    pp_gen_opts o;
} gen_ctx;

static int open_gen(void *ctx, pp_stream **out, pp_err *e)
{
    gen_ctx *g = ctx;
    return pp_generate(g->name, &g->o, out, e);
}

typedef struct {
    pp_timed_action last;
    long n;
} counted;

static int count_action(void *ctx, int stage, const pp_timed_action *a, pp_err *e)
{
    (void)stage, (void)e;
    counted *c = ctx;
    ck_assert_msg(c->n == 0 || a->start >= c->last.start, "actions handed on out of order");
    c->last = *a;
    c->n++;
    return 0;
}

/* Streamed, held whole: the same losses bit for bit, the same decision on
 * clipping, and every action handed on once, in start order. */
START_TEST(a_streamed_schedule_trains_as_a_held_one)
{
    const char *names[] = {"gpipe", "1f1b-flush", "pipedream-2bw", "paci"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        gen_ctx g = {names[i], {3, 3, 4, 0, 0}};
        pp_schedule ir = test_schedule(names[i], 3, 3, 4);
        pp_model_desc md = test_model(3, 16, 2, 8, 32, 2);
        pp_err e = {{0}};
        pp_run_result whole, streamed;
        pp_run_config c = test_run_config(&ir, &md, &pp_backend_cpu, 30);
        c.threads = 1;
        ck_assert_msg(pp_run(&c, &whole, &e) == 0, "%s", e.msg);
        counted seen = {0};
        c.ir = NULL;
        c.open_ir = open_gen;
        c.open_ir_ctx = &g;
        c.on_action = count_action;
        c.on_action_ctx = &seen;
        ck_assert_msg(pp_run(&c, &streamed, &e) == 0, "%s", e.msg);
        ck_assert_int_eq(whole.steps, streamed.steps);
        ck_assert_msg(memcmp(whole.step_loss, streamed.step_loss,
                             (size_t)whole.steps * sizeof *whole.step_loss) == 0,
                      "%s: streamed losses differ", names[i]);
        ck_assert_int_eq(seen.n, (long)pp_schedule_action_count(&ir));
        pp_stream *st;
        ck_assert(open_gen(&g, &st, &e) == 0);
        int sync = pp_stream_synchronous(st, &e);
        pp_stream_free(st);
        ck_assert_int_eq(sync, pp_schedule_synchronous(&ir, &e));
        ck_assert_int_eq(sync, !strcmp(names[i], "gpipe") || !strcmp(names[i], "1f1b-flush"));
        pp_run_result_free(&whole);
        pp_run_result_free(&streamed);
        pp_schedule_free(&ir);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ir_plan");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, links_hold_what_the_schedule_sends_ahead);
    tcase_add_test(tc, out_of_order_receives_are_covered);
    tcase_add_test(tc, a_schedule_that_deadlocks_is_named);
    tcase_add_test(tc, a_schedule_far_ahead_trains_to_its_end);
    tcase_add_test(tc, a_streamed_schedule_trains_as_a_held_one);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
