/* Every allocation of a training run may fail: for k = 0, 1, 2, ... the
 * k-th malloc/calloc/realloc made by ppsched's own code (the test binary
 * is linked with --wrap, so libraries' allocations are not counted) returns
 * NULL, and the run must come back with an error that keeps its cause
 * (never an empty message or a bare "run aborted"), without crashing,
 * hanging or, under ASan, leaking. The loop ends at the first k beyond the
 * run's last allocation. */
#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "test_support.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);

static atomic_long calls, fail_at = -1;

static int fails_now(void)
{
    long k = atomic_fetch_add(&calls, 1);
    return k == atomic_load(&fail_at);
}

void *__wrap_malloc(size_t n)
{
    return fails_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t k, size_t n)
{
    return fails_now() ? NULL : __real_calloc(k, n);
}

void *__wrap_realloc(void *p, size_t n)
{
    return fails_now() ? NULL : __real_realloc(p, n);
}

/* evaluate: a validation pass after every update (the snapshots and the
 * evaluation's own buffers) */
static void every_allocation_may_fail(const char *schedule, int evaluate)
{
    pp_schedule ir = test_schedule(schedule, 2, 2, 2);
    pp_model_desc m = test_model(2, 16, 2, 8, 32, 2);
    pp_run_config c = test_run_config(&ir, &m, &pp_backend_cpu, 20);
    if (evaluate) {
        c.val_batch = synth_batch;
        c.eval_every = 1;
        c.eval_batches = 2;
    }
    int failures = 0;
    for (long k = 0;; k++) {
        atomic_store(&calls, 0);
        atomic_store(&fail_at, k);
        pp_run_result r;
        pp_err e = {{0}};
        int rc = pp_run(&c, &r, &e);
        atomic_store(&fail_at, -1);
        if (rc == 0) {
            pp_run_result_free(&r);
            if (atomic_load(&calls) <= k)
                break; /* the k-th allocation never happened: all covered */
            continue;  /* a failure the run could live with (e.g. a spare) */
        }
        failures++;
        ck_assert_msg(e.msg[0], "%s: allocation %ld failed: empty message", schedule, k);
        ck_assert_msg(strcmp(e.msg, "run aborted") != 0,
                      "%s: allocation %ld failed: \"%s\" lost its cause", schedule, k, e.msg);
        ck_assert_msg(strstr(e.msg, "memory") || strstr(e.msg, "thread"),
                      "%s: allocation %ld failed: \"%s\" does not say memory ran out", schedule,
                      k, e.msg);
    }
    ck_assert_int_gt(failures, 10); /* the wrapping did take effect */
    pp_schedule_free(&ir);
}

START_TEST(a_failed_allocation_in_a_synchronous_run_is_reported)
{
    every_allocation_may_fail("1f1b-flush", 0);
}
END_TEST

START_TEST(a_failed_allocation_in_an_asynchronous_run_is_reported)
{
    every_allocation_may_fail("paci", 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("alloc_failures");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, a_failed_allocation_in_a_synchronous_run_is_reported);
    tcase_add_test(tc, a_failed_allocation_in_an_asynchronous_run_is_reported);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
