/* The NCCL transport (label "gpu").
 *
 * Without a usable GPU, or in a build without CUDA or NCCL, it prints
 * "SKIP: ..." and exits 0; CTest reports it as skipped.
 *
 * With a GPU, on the loopback transport (every stage in this process, each
 * link and direction a one-rank communicator sending to itself; NCCL
 * refuses two ranks on one GPU):
 *   - the stage runtime on the CUDA backend, P = 2 and 3, 1F1B and PACI,
 *     once with the in-process transport and once with NCCL: the per-update
 *     losses are identical (a transport only moves bytes);
 *   - messages taken out of the sender's order are parked and delivered
 *     with their contents;
 *   - a send out of the IR's order fails with a message;
 *   - a receive whose message never comes fails after the timeout (2 s)
 *     with a message saying so, instead of hanging;
 * and on the multi-process path, rank 0 of a two-stage pipeline whose rank
 * 1 never starts: creating the communicators fails after the timeout. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(PPSCHED_HAVE_CUDA) && defined(PPSCHED_HAVE_NCCL)

#include "model/backend.h"
#include "cuda/cuda_backend.h"
#include "registry.h"
#include "runtime/runtime.h"
#include "synth_data.h"
#define PP_TEST_NEEDS_GPU
#include "test_support.h"
#include "cuda/transport_nccl.h"

#define TIMEOUT_S 2.0
/* How late a timed-out call may return: polling, then tearing down. */
#define TIMEOUT_SLACK_S 10.0

static pp_model_desc tiny_model(void)
{
    pp_model_desc m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "tiny-nccl-test");
    m.layers = 6; /* splits over 2 and 3 stages */
    m.dim = 32;
    m.heads = 2;
    m.seq_len = 16;
    m.vocab = 29;
    m.micro_batch = 2;
    m.bytes_per_elem = 4;
    return m;
}


/* --- the runtime over both transports ---------------------------------- */

static pp_run_result train(const pp_schedule *ir, pp_model_desc *m, int nccl)
{
    pp_err e = {{0}};
    pp_run_config c = test_run_config(ir, m, &pp_backend_cuda, 120);
    pp_transport *tr = NULL;
    if (nccl) {
        int capacity = pp_schedule_link_slots(ir, &e); /* as pp_run */
        ck_assert_msg(capacity > 0, "%s", e.msg);
        ck_assert_msg(pp_transport_nccl_loopback_create(ir, capacity, c.timeout_s, &tr, &e) == 0,
                      "%s", e.msg);
        c.transport = tr; /* every stage local: local_first/local_count stay 0 */
    }
    pp_run_result r;
    int rc = pp_run(&c, &r, &e);
    if (tr)
        tr->destroy(tr);
    ck_assert_msg(rc == 0, "%s, P = %d, %s transport: %s", ir->info.name, ir->info.stages,
                  nccl ? "NCCL" : "in-process", e.msg);
    return r;
}

START_TEST(test_runtime_parity)
{
    pp_model_desc m = tiny_model();
    const char *scheds[] = {"1f1b-flush", "paci"};
    for (int P = 2; P <= 3; P++)
        for (int i = 0; i < 2; i++) {
            pp_schedule ir = test_schedule(scheds[i], P, 4, 3);
            pp_run_result a = train(&ir, &m, 0);
            pp_run_result b = train(&ir, &m, 1);
            ck_assert_int_gt(a.steps, 0);
            ck_assert_int_eq(a.steps, b.steps);
            for (int k = 0; k < a.steps; k++)
                ck_assert_msg(a.step_loss[k] == b.step_loss[k],
                              "%s, P = %d, update %d: loss %.9g in-process, %.9g over NCCL",
                              scheds[i], P, k + 1, a.step_loss[k], b.step_loss[k]);
            pp_run_result_free(&a);
            pp_run_result_free(&b);
            pp_schedule_free(&ir);
        }
}
END_TEST

/* --- the transport by hand ---------------------------------------------- */

/* Two CUDA stages attached to a loopback transport over a P = 2 schedule. */
typedef struct {
    pp_schedule ir;
    pp_model_desc m;
    const pp_backend_ops *b;
    void *st[2];
    size_t nb;
    pp_transport *tr;
} link2;

static void link2_open(link2 *l)
{
    pp_err e = {{0}};
    memset(l, 0, sizeof *l);
    l->ir = test_schedule("1f1b-flush", 2, 4, 3);
    l->m = tiny_model();
    l->b = &pp_backend_cuda;
    ck_assert_msg(pp_transport_nccl_loopback_create(&l->ir, 4, TIMEOUT_S, &l->tr, &e) == 0, "%s",
                  e.msg);
    for (int s = 0; s < 2; s++) {
        pp_placement at = PP_PLACEMENT_WHOLE(0);
        ck_assert_msg(l->b->create(&l->m, 2, s, &at, &l->st[s], &e) == 0, "%s", e.msg);
    }
    l->nb = l->b->boundary_floats(l->st[0]) * sizeof(float);
    for (int s = 0; s < 2; s++)
        ck_assert_msg(l->tr->attach(l->tr, s, l->b, l->st[s], &e) == 0, "%s", e.msg);
}

static void link2_close(link2 *l)
{
    l->tr->destroy(l->tr);
    for (int s = 0; s < 2; s++)
        l->b->destroy(l->st[s]);
    pp_schedule_free(&l->ir);
}

/* A device buffer of stage s holding n floats base, base + 1, ... */
static void *pattern(link2 *l, int s, float base)
{
    size_t n = l->nb / sizeof(float);
    float *h = malloc(l->nb);
    ck_assert(h != NULL);
    for (size_t i = 0; i < n; i++)
        h[i] = base + (float)i;
    void *d = l->b->alloc(l->st[s], l->nb);
    ck_assert(d != NULL);
    l->b->from_host(l->st[s], d, h, l->nb);
    free(h);
    return d;
}

static void check_pattern(link2 *l, int s, const void *d, float base)
{
    size_t n = l->nb / sizeof(float);
    float *h = malloc(l->nb);
    ck_assert(h != NULL);
    l->b->to_host(l->st[s], h, d, l->nb);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(h[i] == base + (float)i, "element %zu: %g, expected %g", i, h[i],
                      base + (float)i);
    free(h);
}

/* The sender sends micro-batches 0, 1, 2 (its F order); the receiver asks
 * for 2, then 0, then 1: 0 and 1 are parked, then copied out. The send
 * buffer is overwritten right after each send, as the runtime does. */
START_TEST(test_parking)
{
    link2 l;
    link2_open(&l);
    pp_err e = {{0}};
    void *x = l.b->alloc(l.st[0], l.nb);
    void *scribble = pattern(&l, 0, -7.0f);
    for (int mb = 0; mb < 3; mb++) {
        void *src = pattern(&l, 0, 1000.0f * (float)mb);
        l.b->copy(l.st[0], x, src, l.nb);
        ck_assert_msg(l.tr->send(l.tr, 0, 1, PP_MSG_ACT, mb, x, l.nb, &e) == 0, "%s", e.msg);
        l.b->copy(l.st[0], x, scribble, l.nb); /* reused at once, as the runtime does */
        l.b->release(l.st[0], src);
    }
    l.b->release(l.st[0], scribble);
    void *y = l.b->alloc(l.st[1], l.nb);
    const int want[] = {2, 0, 1};
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(l.tr->recv(l.tr, 1, 0, PP_MSG_ACT, want[i], y, l.nb, &e) == 0, "%s",
                      e.msg);
        ck_assert(l.b->sync(l.st[1], NULL) == 0);
        check_pattern(&l, 1, y, 1000.0f * (float)want[i]);
    }
    /* And the other direction: gradients from stage 1 to stage 0. */
    void *g = pattern(&l, 1, 5.0f);
    ck_assert_msg(l.tr->send(l.tr, 1, 0, PP_MSG_GRAD, 0, g, l.nb, &e) == 0, "%s", e.msg);
    ck_assert_msg(l.tr->recv(l.tr, 0, 1, PP_MSG_GRAD, 0, x, l.nb, &e) == 0, "%s", e.msg);
    ck_assert(l.b->sync(l.st[0], NULL) == 0);
    check_pattern(&l, 0, x, 5.0f);
    l.b->release(l.st[0], x);
    l.b->release(l.st[1], y);
    l.b->release(l.st[1], g);
    link2_close(&l);
}
END_TEST

/* NCCL matches by order: a send the receiver would not expect fails. */
START_TEST(test_send_out_of_order)
{
    link2 l;
    link2_open(&l);
    pp_err e = {{0}};
    void *x = pattern(&l, 0, 0.0f);
    ck_assert(l.tr->send(l.tr, 0, 1, PP_MSG_ACT, 1, x, l.nb, &e) < 0);
    ck_assert_msg(strstr(e.msg, "out of the IR's order") != NULL, "%s", e.msg);
    l.b->release(l.st[0], x);
    link2_close(&l);
}
END_TEST

/* Nobody sends: the receive returns after the timeout, with a message. */
START_TEST(test_receive_times_out)
{
    link2 l;
    link2_open(&l);
    pp_err e = {{0}};
    void *y = l.b->alloc(l.st[1], l.nb);
    double t0 = pp_now_s();
    ck_assert(l.tr->recv(l.tr, 1, 0, PP_MSG_ACT, 0, y, l.nb, &e) < 0);
    double waited = pp_now_s() - t0;
    ck_assert_msg(strstr(e.msg, "after") != NULL, "%s", e.msg);
    ck_assert_msg(strstr(e.msg, "aborted") == NULL, "the cause must not read as an abort: %s",
                  e.msg);
    ck_assert_msg(waited >= TIMEOUT_S * 0.9 && waited <= TIMEOUT_S + TIMEOUT_SLACK_S,
                  "returned after %.2f s with a %.0f s timeout", waited, TIMEOUT_S);
    /* The transport is shut down: further calls fail at once. */
    ck_assert(l.tr->recv(l.tr, 1, 0, PP_MSG_ACT, 0, y, l.nb, &e) < 0);
    ck_assert_msg(strstr(e.msg, "run aborted") != NULL, "%s", e.msg);
    l.b->release(l.st[1], y);
    link2_close(&l);
}
END_TEST

/* Multi-process path: rank 0 of 2, rank 1 never starts. Creating the
 * communicators (in attach) gives up after the timeout. */
START_TEST(test_peer_never_joins)
{
    pp_err e = {{0}};
    pp_schedule ir = test_schedule("1f1b-flush", 2, 4, 3);
    pp_model_desc m = tiny_model();
    int nb = pp_nccl_ids_bytes(2);
    ck_assert_int_eq(nb, 2 * 128);
    void *ids = malloc((size_t)nb);
    ck_assert(ids != NULL);
    ck_assert_msg(pp_nccl_make_ids(2, ids, &e) == 0, "%s", e.msg);
    pp_transport *tr = NULL;
    ck_assert_msg(pp_transport_nccl_create(&ir, 0, ids, 6, TIMEOUT_S, &tr, &e) == 0, "%s", e.msg);
    void *st = NULL;
    pp_placement at = PP_PLACEMENT_WHOLE(0);
    ck_assert_msg(pp_backend_cuda.create(&m, 2, 0, &at, &st, &e) == 0, "%s", e.msg);
    double t0 = pp_now_s();
    ck_assert(tr->attach(tr, 0, &pp_backend_cuda, st, &e) < 0);
    double waited = pp_now_s() - t0;
    ck_assert_msg(strstr(e.msg, "after") != NULL, "%s", e.msg);
    ck_assert_msg(waited <= TIMEOUT_S + TIMEOUT_SLACK_S, "returned after %.2f s", waited);
    tr->destroy(tr);
    pp_backend_cuda.destroy(st);
    free(ids);
    pp_schedule_free(&ir);
}
END_TEST

static Suite *nccl_suite(void)
{
    Suite *s = suite_create("nccl");
    TCase *tc = tcase_create("loopback");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_parking);
    tcase_add_test(tc, test_send_out_of_order);
    tcase_add_test(tc, test_receive_times_out);
    tcase_add_test(tc, test_runtime_parity);
    tcase_add_test(tc, test_peer_never_joins);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (skip_without_gpu())
        return EXIT_SUCCESS;
    return run_gpu_suite(nccl_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}

#else /* no CUDA or no NCCL */

int main(void)
{
#ifdef PPSCHED_HAVE_CUDA
    printf("SKIP: no CUDA GPU: this build has no NCCL (the NCCL transport is not built)\n");
#else
    printf("SKIP: no CUDA GPU: this build has no CUDA backend\n");
#endif
    return EXIT_SUCCESS;
}

#endif
