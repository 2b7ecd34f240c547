/* The NCCL transport's logic on the CPU (runs in CI; no GPU, no NCCL).
 *
 * exec/cuda/transport_nccl.cu is compiled unchanged, as C++, against the
 * fake CUDA runtime and NCCL of this directory (fake_runtime.cpp says which
 * of their rules it models and which not), and the stages run on the CPU
 * backend under the CUDA backend's name (fake_backend.c). What the real
 * libraries add (GPU streams, NCCL's connections and kernels) is
 * tests/test_nccl.c's, on a GPU.
 *
 *   - ranks as threads, each with its own pp_transport_nccl_create and a
 *     pp_run of its own stage, as pprun's processes do: the per-update
 *     losses are those of the in-process transport, bit for bit
 *     (1f1b-flush, paci, pipedream-2bw at P = 2 and 3);
 *   - an IR whose stages take their messages in the opposite order to the
 *     one they are sent in, so that both directions park: the same;
 *   - the loopback transport (every stage in one process): the same;
 *   - a rank that never starts, and a rank that fails in mid-run: the
 *     others fail within their timeout, with a message saying "after";
 *   - a send out of the IR's order is refused with a message. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/backend.h"
#include "cuda/cuda_backend.h"
#include "registry.h"
#include "runtime/runtime.h"
#include "synth_data.h"
#include "test_support.h"
#include "cuda/transport_nccl.h"

#define RUN_TIMEOUT_S 30.0 /* runs that succeed: never reached */
#define FAIL_TIMEOUT_S 1.0 /* runs that are meant to fail */
/* How late a timed-out rank may return: polling, then tearing down
 * (generous: the sanitizer build is slow). */
#define SLACK_S 10.0
#define FAILING_MB 5

static pp_model_desc tiny_model(void)
{
    pp_model_desc m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "tiny-nccl-logic");
    m.layers = 6; /* splits over 2 and 3 stages */
    m.dim = 16;
    m.heads = 2;
    m.seq_len = 8;
    m.vocab = 29;
    m.micro_batch = 2;
    m.bytes_per_elem = 4;
    return m;
}


/* Two stages, two steps of two micro-batches. Stage 0 forwards 0 then 1,
 * stage 1 wants 1 first: activation 0 is parked. Stage 1's backwards send
 * gradient 1 first, stage 0 wants 0 first: gradient 1 is parked. */
static pp_schedule crossed(void)
{
    static const char *const order[2][10] = {
        {"F0", "F1", "B0", "B1", "OPT", "F2", "F3", "B2", "B3", "OPT"},
        {"F1", "F0", "B1", "B0", "OPT", "F3", "F2", "B3", "B2", "OPT"},
    };
    pp_ir_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.name, sizeof info.name, "crossed");
    info.stages = 2;
    info.microbatches_per_step = 2;
    info.steps = 2;
    info.total_microbatches = 4;
    pp_schedule ir;
    pp_err e = {{0}};
    ck_assert_msg(pp_schedule_init(&ir, &info, &e) == 0, "%s", e.msg);
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 10; i++) {
            pp_action a;
            ck_assert_msg(pp_action_parse(order[s][i], &a, &e) == 0, "%s", e.msg);
            ck_assert_msg(pp_schedule_push(&ir, s, a, &e) == 0, "%s", e.msg);
        }
    ck_assert_msg(pp_schedule_validate(&ir, &e) == 0, "%s", e.msg);
    return ir;
}

/* As pp_run sizes the in-process transport. */
static int capacity(const pp_schedule *ir)
{
    pp_err e;
    int slots = pp_schedule_link_slots(ir, &e);
    ck_assert_msg(slots > 0, "%s", e.msg);
    return slots;
}

/* m is the data's description too: it must outlive the run. One CPU
 * thread per stage in every run: a stage's team size sets the order of
 * its GEMM sums, and the in-process run (every stage here) would
 * otherwise get fewer threads per stage than a rank (one stage). */
static pp_run_config run_config(const pp_schedule *ir, pp_model_desc *m, double timeout_s)
{
    pp_run_config c = test_run_config(ir, m, &pp_backend_cuda, timeout_s);
    c.threads = 1;
    return c;
}

/* Every stage in this process, over the in-process transport (tr NULL) or
 * tr. */
static pp_run_result train(const pp_schedule *ir, pp_transport *tr)
{
    pp_model_desc m = tiny_model();
    pp_run_config c = run_config(ir, &m, RUN_TIMEOUT_S);
    c.transport = tr;
    pp_run_result r;
    pp_err e = {{0}};
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s, P = %d, %s transport: %s", ir->info.name,
                  ir->info.stages, tr ? "NCCL" : "in-process", e.msg);
    ck_assert_int_gt(r.steps, 0);
    return r;
}

static pp_run_result train_loopback(const pp_schedule *ir)
{
    pp_transport *tr = NULL;
    pp_err e = {{0}};
    ck_assert_msg(pp_transport_nccl_loopback_create(ir, capacity(ir), RUN_TIMEOUT_S, &tr, &e) == 0,
                  "%s", e.msg);
    pp_run_result r = train(ir, tr);
    tr->destroy(tr);
    return r;
}

static void assert_same_losses(const pp_schedule *ir, const pp_run_result *want,
                               const pp_run_result *got, const char *how)
{
    ck_assert_msg(got->steps == want->steps, "%s, P = %d, %s: %d updates, in-process %d",
                  ir->info.name, ir->info.stages, how, got->steps, want->steps);
    for (int k = 0; k < want->steps; k++)
        ck_assert_msg(got->step_loss[k] == want->step_loss[k],
                      "%s, P = %d, update %d: loss %.9g %s, %.9g in-process", ir->info.name,
                      ir->info.stages, k + 1, got->step_loss[k], how, want->step_loss[k]);
}

/* --- ranks as threads ---------------------------------------------------- */

/* One rank: what a pprun process with --transport nccl does. */
typedef struct {
    const pp_schedule *ir;
    pp_model_desc model;
    const void *ids;
    int rank;
    double timeout_s;
    pp_batch_fn batch;
    int rc;
    pp_err err;
    pp_run_result result;
    double seconds; /* until pp_run returned */
} rank_job;

static void *rank_main(void *arg)
{
    rank_job *j = arg;
    double t0 = pp_now_s();
    pp_transport *tr = NULL;
    j->rc = pp_transport_nccl_create(j->ir, j->rank, j->ids, capacity(j->ir), j->timeout_s, &tr,
                                     &j->err);
    if (j->rc == 0) {
        pp_run_config c = run_config(j->ir, &j->model, j->timeout_s);
        c.train_batch = j->batch;
        c.local_first = j->rank;
        c.local_count = 1;
        c.transport = tr;
        j->rc = pp_run(&c, &j->result, &j->err);
        tr->destroy(tr);
    }
    j->seconds = pp_now_s() - t0;
    return NULL;
}

static int failing_batch(void *ctx, long index, int *tokens, int *targets, pp_err *e)
{
    if (index == FAILING_MB)
        return pp_errf(e, "test data: micro-batch %d cannot be read", FAILING_MB);
    return synth_batch(ctx, index, tokens, targets, e);
}

/* Runs the ranks of ir as threads, sharing rank 0's unique ids; rank
 * `absent` (-1: none) never starts, rank `failing` (-1: none) cannot read
 * micro-batch FAILING_MB. Returns jobs[P]; free with free_ranks. */
static rank_job *run_ranks(const pp_schedule *ir, double timeout_s, int absent, int failing)
{
    int P = ir->info.stages;
    pp_err e = {{0}};
    void *ids = malloc((size_t)pp_nccl_ids_bytes(P));
    rank_job *jobs = calloc((size_t)P, sizeof *jobs);
    pthread_t *threads = calloc((size_t)P, sizeof *threads);
    ck_assert(ids && jobs && threads);
    ck_assert_msg(pp_nccl_make_ids(P, ids, &e) == 0, "%s", e.msg);
    for (int r = 0; r < P; r++) {
        jobs[r] = (rank_job){.ir = ir, .model = tiny_model(), .ids = ids, .rank = r,
                             .timeout_s = timeout_s,
                             .batch = r == failing ? failing_batch : synth_batch};
        if (r != absent)
            ck_assert_int_eq(pthread_create(&threads[r], NULL, rank_main, &jobs[r]), 0);
    }
    for (int r = 0; r < P; r++)
        if (r != absent)
            pthread_join(threads[r], NULL);
    free(threads);
    free(ids);
    return jobs;
}

static void free_ranks(rank_job *jobs, int P)
{
    for (int r = 0; r < P; r++)
        if (jobs[r].rc == 0)
            pp_run_result_free(&jobs[r].result);
    free(jobs);
}

/* The last rank reports the updates, as pprun's last process does. */
static void assert_ranks_match_inprocess(const pp_schedule *ir)
{
    int P = ir->info.stages;
    pp_run_result want = train(ir, NULL);
    rank_job *jobs = run_ranks(ir, RUN_TIMEOUT_S, -1, -1);
    for (int r = 0; r < P; r++)
        ck_assert_msg(jobs[r].rc == 0, "%s, P = %d, rank %d: %s", ir->info.name, P, r,
                      jobs[r].err.msg);
    assert_same_losses(ir, &want, &jobs[P - 1].result, "with a rank per stage over NCCL");
    free_ranks(jobs, P);
    pp_run_result_free(&want);
}

/* A rank that failed because another went away: it says it waited, and
 * does not blame an abort. */
static void assert_gave_up(const rank_job *j)
{
    ck_assert_msg(j->rc < 0, "rank %d succeeded without its peer", j->rank);
    ck_assert_msg(strstr(j->err.msg, "after") != NULL, "rank %d: %s", j->rank, j->err.msg);
    ck_assert_msg(strstr(j->err.msg, "run aborted") == NULL, "rank %d: %s", j->rank, j->err.msg);
    ck_assert_msg(j->seconds >= 0.9 * j->timeout_s, "rank %d gave up after %.2f s (timeout %g s)",
                  j->rank, j->seconds, j->timeout_s);
}

/* --- tests --------------------------------------------------------------- */

static const struct {
    const char *schedule;
    int P;
} runs[] = {
    {"1f1b-flush", 2}, {"1f1b-flush", 3},    {"paci", 2},
    {"paci", 3},       {"pipedream-2bw", 2}, {"pipedream-2bw", 3},
};
#define NRUNS (int)(sizeof runs / sizeof runs[0])

START_TEST(test_ranks_match_inprocess)
{
    pp_schedule ir = test_schedule(runs[_i].schedule, runs[_i].P, 4, 3);
    assert_ranks_match_inprocess(&ir);
    pp_schedule_free(&ir);
}
END_TEST

START_TEST(test_crossed_orders_park)
{
    pp_schedule ir = crossed();
    assert_ranks_match_inprocess(&ir);
    pp_run_result want = train(&ir, NULL);
    pp_run_result got = train_loopback(&ir);
    assert_same_losses(&ir, &want, &got, "over loopback NCCL");
    pp_run_result_free(&got);
    pp_run_result_free(&want);
    pp_schedule_free(&ir);
}
END_TEST

START_TEST(test_loopback_matches_inprocess)
{
    pp_schedule ir = test_schedule(runs[_i].schedule, runs[_i].P, 4, 3);
    pp_run_result want = train(&ir, NULL);
    pp_run_result got = train_loopback(&ir);
    assert_same_losses(&ir, &want, &got, "over loopback NCCL");
    pp_run_result_free(&got);
    pp_run_result_free(&want);
    pp_schedule_free(&ir);
}
END_TEST

/* Rank 2 of 3 never starts. Rank 1 cannot create its communicators with
 * it; rank 0 has its communicators, but its first messages to rank 1 never
 * go through. */
START_TEST(test_rank_never_starts)
{
    pp_schedule ir = test_schedule("1f1b-flush", 3, 4, 3);
    rank_job *jobs = run_ranks(&ir, FAIL_TIMEOUT_S, 2, -1);
    for (int r = 0; r < 2; r++) {
        assert_gave_up(&jobs[r]);
        ck_assert_msg(jobs[r].seconds <= 2 * FAIL_TIMEOUT_S + SLACK_S,
                      "rank %d returned after %.2f s", r, jobs[r].seconds);
    }
    free_ranks(jobs, 3);
    pp_schedule_free(&ir);
}
END_TEST

/* Rank 0 of 3 fails at micro-batch FAILING_MB and leaves (aborting its
 * communicators); its peers hear nothing more and give up: rank 1 on
 * rank 0, rank 2 on rank 1. */
START_TEST(test_rank_fails_mid_run)
{
    pp_schedule ir = test_schedule("1f1b-flush", 3, 4, 3);
    rank_job *jobs = run_ranks(&ir, FAIL_TIMEOUT_S, -1, 0);
    ck_assert_msg(jobs[0].rc < 0 && strstr(jobs[0].err.msg, "cannot be read") != NULL,
                  "rank 0: %s", jobs[0].rc < 0 ? jobs[0].err.msg : "succeeded");
    for (int r = 1; r < 3; r++) {
        assert_gave_up(&jobs[r]);
        ck_assert_msg(jobs[r].seconds <= 3 * FAIL_TIMEOUT_S + SLACK_S,
                      "rank %d returned after %.2f s", r, jobs[r].seconds);
    }
    free_ranks(jobs, 3);
    pp_schedule_free(&ir);
}
END_TEST

/* NCCL matches by order: a send the receiver would not expect next is
 * refused, and the transport shuts down so that the receiver does not
 * wait for it. */
START_TEST(test_send_out_of_order)
{
    pp_schedule ir = test_schedule("1f1b-flush", 2, 4, 3);
    pp_model_desc m = tiny_model();
    const pp_backend_ops *b = &pp_backend_cuda;
    pp_err e = {{0}};
    pp_transport *tr = NULL;
    ck_assert_msg(pp_transport_nccl_loopback_create(&ir, 4, RUN_TIMEOUT_S, &tr, &e) == 0, "%s",
                  e.msg);
    void *st[2];
    for (int s = 0; s < 2; s++) {
        pp_placement at = PP_PLACEMENT_WHOLE(0);
        ck_assert_msg(b->create(&m, 2, s, &at, &st[s], &e) == 0, "%s", e.msg);
        ck_assert_msg(tr->attach(tr, s, b, st[s], &e) == 0, "%s", e.msg);
    }
    size_t bytes = b->boundary_floats(st[0]) * sizeof(float);
    void *x = b->alloc(st[0], bytes), *y = b->alloc(st[1], bytes);
    ck_assert(x && y);
    ck_assert(tr->send(tr, 0, 1, PP_MSG_ACT, 1, x, bytes, &e) < 0);
    ck_assert_msg(strstr(e.msg, "out of the IR's order") != NULL, "%s", e.msg);
    ck_assert_msg(strstr(e.msg, "expects micro-batch 0") != NULL, "%s", e.msg);
    ck_assert(tr->recv(tr, 1, 0, PP_MSG_ACT, 0, y, bytes, &e) < 0);
    ck_assert_msg(strstr(e.msg, "run aborted") != NULL, "%s", e.msg);
    b->release(st[0], x);
    b->release(st[1], y);
    tr->destroy(tr);
    for (int s = 0; s < 2; s++)
        b->destroy(st[s]);
    pp_schedule_free(&ir);
}
END_TEST

static Suite *nccl_logic_suite(void)
{
    Suite *s = suite_create("nccl_logic");
    TCase *tc = tcase_create("fake_nccl");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_ranks_match_inprocess, 0, NRUNS);
    tcase_add_test(tc, test_crossed_orders_park);
    tcase_add_loop_test(tc, test_loopback_matches_inprocess, 0, NRUNS);
    tcase_add_test(tc, test_rank_never_starts);
    tcase_add_test(tc, test_rank_fails_mid_run);
    tcase_add_test(tc, test_send_out_of_order);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(nccl_logic_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
