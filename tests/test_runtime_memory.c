/* The runtime allocates a stage's buffers before its first action, not per
 * micro-batch or update: a run of six times as many updates makes as many
 * backend allocations, give or take the messages that happen to be in
 * flight at once (recycled per link, so at most the links' capacity), for
 * schedules that hold one weight copy (1f1b-flush, paci) and several
 * (pipedream, pipedream-2bw); and exactly as many activation buffers as
 * the stages' action lists hold in flight. */
#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "test_support.h"

static atomic_long allocs, acts_allocs;
static size_t acts_size[8]; /* per stage: no other buffer has these sizes here */
static int nstages;
static pp_backend_ops counting; /* the CPU backend, counting its allocations */

static void *count_alloc(void *stage, size_t bytes)
{
    atomic_fetch_add(&allocs, 1);
    for (int s = 0; s < nstages; s++)
        if (bytes == acts_size[s]) {
            atomic_fetch_add(&acts_allocs, 1);
            break;
        }
    return pp_backend_cpu.alloc(stage, bytes);
}

/* Backend allocations of a run of `steps` updates; *acts: how many of
 * them were activation buffers. */
static long run_allocs(const char *schedule, int P, int m, int steps, long *acts_allocated)
{
    pp_schedule ir = test_schedule(schedule, P, m, steps);
    pp_model_desc md = test_model(3, 32, 2, 16, 40, 2);
    counting = pp_backend_cpu;
    counting.alloc = count_alloc;
    pp_err e = {{0}};
    nstages = P;
    for (int s = 0; s < P; s++) {
        void *probe;
        ck_assert(pp_backend_cpu.create(&md, P, s, NULL, &probe, &e) == 0);
        acts_size[s] = pp_backend_cpu.acts_bytes(probe);
        pp_backend_cpu.destroy(probe);
    }
    atomic_store(&allocs, 0);
    atomic_store(&acts_allocs, 0);
    pp_run_config c = test_run_config(&ir, &md, &counting, 60);
    c.threads = 1;
    pp_run_result r;
    ck_assert_msg(pp_run(&c, &r, &e) == 0, "%s: %s", schedule, e.msg);
    ck_assert_int_eq(r.steps, steps);
    pp_run_result_free(&r);
    pp_schedule_free(&ir);
    *acts_allocated = atomic_load(&acts_allocs);
    return atomic_load(&allocs);
}

START_TEST(allocations_do_not_grow_with_the_run)
{
    /* activation buffers: the sum over stages of the most micro-batches
     * each holds between its F and its B */
    struct { const char *name; int P, m; long acts; } cases[] = {
        /* 1f1b-flush holds min(P - s, m) per stage: 3 + 2 + 1 */
        {"1f1b-flush", 3, 4, 6},
        {"paci", 3, 3, 6},
        {"pipedream", 3, 1, 6},
        {"pipedream-2bw", 3, 3, 6},
        /* gpipe holds all m on every stage */
        {"gpipe", 2, 3, 6},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        long acts4, acts24, P = cases[i].P, m = cases[i].m;
        long a4 = run_allocs(cases[i].name, cases[i].P, cases[i].m, 4, &acts4);
        long a24 = run_allocs(cases[i].name, cases[i].P, cases[i].m, 24, &acts24);
        /* links: P - 1 each way, each holding at most m + P messages (what
         * these schedules send ahead: test_ir_plan); one allocation per
         * message would add 2 (P - 1) m per update */
        long slack = 2 * (P - 1) * (m + P);
        ck_assert_msg(labs(a24 - a4) <= slack,
                      "%s: %ld allocations for 4 updates, %ld for 24 (%ld apart at most)",
                      cases[i].name, a4, a24, slack);
        ck_assert_msg(acts4 == cases[i].acts && acts24 == cases[i].acts,
                      "%s: %ld and %ld activation buffers allocated, the schedule holds %ld",
                      cases[i].name, acts4, acts24, cases[i].acts);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("runtime_memory");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, allocations_do_not_grow_with_the_run);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
