/* Multi-process plumbing on the CPU: the rendezvous store (tcp and file)
 * with real processes (fork), its timeouts, and the launcher environment.
 * The socket transport and pprun across processes are tested end to end by
 * tests/pprun_dist_test.sh. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "launch/dist.h"
#include "launch/net.h"
#include "runtime/placement.h"
#include "launch/store.h"

#define WORLD 3

/* A free TCP port: bind to 0, read it, close (another process could take it
 * in between, but not in a test sandbox). */
static int free_port(void)
{
    pp_err e;
    int port = 0, fd = pp_net_listen("127.0.0.1", 0, &port, &e);
    ck_assert_int_ge(fd, 0);
    close(fd);
    return port;
}

/* Every rank of a test job holds this secret. */
static pp_store_opts opts(double timeout_s)
{
    pp_store_opts o = {timeout_s, {{0}, 0}, NULL, NULL};
    const char *key = "a test job's secret, 32 bytes..";
    o.secret.len = strlen(key);
    memcpy(o.secret.key, key, o.secret.len);
    return o;
}

static int open_store(const char *spec, int rank, int world, double timeout_s, pp_store **st,
                      pp_err *e)
{
    pp_store_opts o = opts(timeout_s);
    int refused;
    return pp_store_open(spec, rank, world, &o, st, &refused, e);
}

/* What every rank does: bcast, gather of rank-dependent sizes, allgather,
 * barrier; the exit status says what went wrong (0: all right). */
static int exercise(const char *spec, int rank)
{
    pp_err e;
    pp_store *st;
    if (open_store(spec, rank, WORLD, 20, &st, &e) < 0) {
        fprintf(stderr, "rank %d: %s\n", rank, e.msg);
        return 10;
    }
    int rc = 0;
    char word[16] = {0};
    if (rank == 0)
        snprintf(word, sizeof word, "pipeline");
    if (pp_store_bcast(st, word, sizeof word, &e) < 0 || strcmp(word, "pipeline"))
        rc = 11;
    /* rank r sends r+1 bytes of value r */
    char mine[WORLD];
    memset(mine, rank, sizeof mine);
    void **all;
    size_t *sizes;
    if (rc == 0 && pp_store_gather(st, mine, (size_t)rank + 1, &all, &sizes, &e) < 0)
        rc = 12;
    if (rc == 0 && rank == 0) {
        for (int r = 0; r < WORLD; r++)
            if (sizes[r] != (size_t)r + 1 || ((char *)all[r])[r] != r)
                rc = 13;
        pp_store_free_gathered(st, all, sizes);
    } else if (rc == 0 && (all || sizes)) {
        rc = 14; /* only rank 0 receives */
    }
    int ranks[WORLD], me = rank * 7;
    if (rc == 0 && pp_store_allgather(st, &me, sizeof me, ranks, &e) < 0)
        rc = 15;
    for (int r = 0; rc == 0 && r < WORLD; r++)
        if (ranks[r] != r * 7)
            rc = 16;
    if (rc == 0 && pp_store_barrier(st, &e) < 0)
        rc = 17;
    if (rc)
        fprintf(stderr, "rank %d: step %d: %s\n", rank, rc, e.msg);
    pp_store_close(st);
    return rc;
}

static void run_world(const char *spec)
{
    pid_t pids[WORLD];
    for (int r = 0; r < WORLD; r++) {
        pids[r] = fork();
        ck_assert_int_ge(pids[r], 0);
        if (pids[r] == 0)
            _exit(exercise(spec, r));
    }
    for (int r = 0; r < WORLD; r++) {
        int status;
        ck_assert_int_eq(waitpid(pids[r], &status, 0), pids[r]);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "rank %d failed (%d)", r,
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
}

START_TEST(test_store_tcp)
{
    char spec[64];
    snprintf(spec, sizeof spec, "tcp://127.0.0.1:%d", free_port());
    run_world(spec);
}
END_TEST

START_TEST(test_store_file)
{
    char dir[] = "/tmp/ppsched-store-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char spec[64];
    snprintf(spec, sizeof spec, "file:%s/rdzv", dir);
    run_world(spec);
    /* rank 0 removed the store's files and its directory at close */
    char sub[64];
    snprintf(sub, sizeof sub, "%s/rdzv", dir);
    ck_assert_int_ne(access(sub, F_OK), 0);
    rmdir(dir);
}
END_TEST

START_TEST(test_store_world_of_one)
{
    pp_err e;
    pp_store *st;
    ck_assert_int_eq(open_store("tcp://127.0.0.1:1", 0, 1, 1, &st, &e), 0);
    int x = 5, all = 0;
    ck_assert_int_eq(pp_store_allgather(st, &x, sizeof x, &all, &e), 0);
    ck_assert_int_eq(all, 5);
    pp_store_close(st);
}
END_TEST

/* Rank 1 of 2 with nobody at the address: one line, after the timeout,
 * not a hang. Rank 0 of 2 whose peer never comes: the same. */
START_TEST(test_store_timeouts)
{
    pp_err e;
    pp_store *st;
    char spec[64];
    snprintf(spec, sizeof spec, "tcp://127.0.0.1:%d", free_port());
    double t0 = pp_net_now();
    ck_assert_int_lt(open_store(spec, 1, 2, 1.0, &st, &e), 0);
    ck_assert_msg(strstr(e.msg, "cannot connect"), "%s", e.msg);
    ck_assert_double_lt(pp_net_now() - t0, 5.0);
    t0 = pp_net_now();
    ck_assert_int_lt(open_store(spec, 0, 2, 1.0, &st, &e), 0);
    ck_assert_msg(strstr(e.msg, "rank 1 did not"), "%s", e.msg);
    ck_assert_double_lt(pp_net_now() - t0, 5.0);

    char dir[] = "/tmp/ppsched-store-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(spec, sizeof spec, "file:%s", dir);
    t0 = pp_net_now(); /* opening waits for rank 0's word on the secret */
    ck_assert_int_lt(open_store(spec, 1, 2, 1.0, &st, &e), 0);
    ck_assert_msg(strstr(e.msg, "rank 0 wrote nothing after 1 s"), "%s", e.msg);
    ck_assert_double_lt(pp_net_now() - t0, 5.0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_store_bad_specs)
{
    pp_err e;
    pp_store *st;
    const char *bad[] = {"tcp://host", "tcp://:80", "tcp://h:0", "tcp://h:99999", "tcp://h:8x",
                         "file:", "udp://h:1", "mpi://x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_lt(open_store(bad[i], 0, 2, 1, &st, &e), 0);
        ck_assert_msg(strstr(e.msg, "--rendezvous"), "%s: %s", bad[i], e.msg);
    }
    ck_assert_int_lt(open_store("tcp://h:1", 2, 2, 1, &st, &e), 0);
    ck_assert_msg(strstr(e.msg, "rank 2"), "%s", e.msg);
}
END_TEST

static void clear_env(void)
{
    const char *vars[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK",
                          "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK",
                          "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID", "SLURM_NTASKS",
                          "SLURM_LOCALID", "PPSCHED_RENDEZVOUS", "MASTER_ADDR", "MASTER_PORT"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

START_TEST(test_env_detect)
{
    pp_err e;
    pp_dist_env d;
    clear_env();
    ck_assert_int_eq(pp_dist_env_detect(&d, &e), 0);
    ck_assert_int_eq(d.world, 1);
    ck_assert_int_eq(d.rank, 0);

    setenv("SLURM_PROCID", "5", 1);
    setenv("SLURM_NTASKS", "8", 1);
    setenv("SLURM_LOCALID", "1", 1);
    ck_assert_int_eq(pp_dist_env_detect(&d, &e), 0);
    ck_assert_int_eq(d.rank, 5);
    ck_assert_int_eq(d.world, 8);
    ck_assert_int_eq(d.local_rank, 1);
    ck_assert_str_eq(d.source, "SLURM_PROCID/SLURM_NTASKS");
    ck_assert_int_eq(d.under_mpirun, 0);

    /* torchrun-style variables win over Slurm's (torchrun under srun) */
    setenv("RANK", "2", 1);
    setenv("WORLD_SIZE", "4", 1);
    ck_assert_int_eq(pp_dist_env_detect(&d, &e), 0);
    ck_assert_int_eq(d.rank, 2);
    ck_assert_int_eq(d.world, 4);
    ck_assert_int_eq(d.local_rank, 2); /* no LOCAL_RANK: the rank */
    clear_env();

    setenv("OMPI_COMM_WORLD_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    ck_assert_int_eq(pp_dist_env_detect(&d, &e), 0);
    ck_assert_int_eq(d.rank, 1);
    ck_assert_int_eq(d.under_mpirun, 1);
    clear_env();

    setenv("RANK", "4", 1);
    setenv("WORLD_SIZE", "4", 1);
    ck_assert_int_lt(pp_dist_env_detect(&d, &e), 0);
    ck_assert_msg(strstr(e.msg, "RANK=4 is not a rank of WORLD_SIZE=4"), "%s", e.msg);
    setenv("RANK", "x", 1);
    ck_assert_int_lt(pp_dist_env_detect(&d, &e), 0);
    ck_assert_msg(strstr(e.msg, "RANK=\"x\""), "%s", e.msg);
    unsetenv("WORLD_SIZE");
    setenv("RANK", "0", 1);
    ck_assert_int_lt(pp_dist_env_detect(&d, &e), 0);
    ck_assert_msg(strstr(e.msg, "RANK is set without WORLD_SIZE"), "%s", e.msg);
    clear_env();
}
END_TEST

START_TEST(test_env_rendezvous)
{
    pp_err e;
    pp_dist_env d = {1, 2, 1, "RANK/WORLD_SIZE", 0};
    char buf[128];
    clear_env();
    ck_assert_ptr_null(pp_dist_rendezvous(&d, buf, sizeof buf, &e));
    ck_assert_msg(strstr(e.msg, "--rendezvous"), "%s", e.msg);
    setenv("MASTER_ADDR", "node7", 1);
    setenv("MASTER_PORT", "29500", 1);
    ck_assert_str_eq(pp_dist_rendezvous(&d, buf, sizeof buf, &e), "tcp://node7:29500");
    setenv("PPSCHED_RENDEZVOUS", "file:/shared/x", 1);
    ck_assert_str_eq(pp_dist_rendezvous(&d, buf, sizeof buf, &e), "file:/shared/x");
    clear_env();
}
END_TEST

START_TEST(test_placement)
{
    pp_err e;
    pp_placement *p;
    /* one GPU, eight stages: eight partitions of it */
    ck_assert_int_eq(pp_placement_plan("0", 8, -1, 1, &p, &e), 0);
    for (int s = 0; s < 8; s++) {
        ck_assert_int_eq(p[s].device, 0);
        ck_assert_int_eq(p[s].partition, s);
        ck_assert_int_eq(p[s].partitions, 8);
    }
    free(p);
    /* the default is GPU 0; without partitions the stages share it whole */
    ck_assert_int_eq(pp_placement_plan(NULL, 4, -1, 0, &p, &e), 0);
    for (int s = 0; s < 4; s++)
        ck_assert(p[s].device == 0 && p[s].partition == -1);
    free(p);
    /* two GPUs, six stages: 0-2 on GPU 2 and 3-5 on GPU 5, three partitions each */
    ck_assert_int_eq(pp_placement_plan("2,5", 6, -1, 1, &p, &e), 0);
    int want_dev[] = {2, 2, 2, 5, 5, 5}, want_part[] = {0, 1, 2, 0, 1, 2};
    for (int s = 0; s < 6; s++) {
        ck_assert_int_eq(p[s].device, want_dev[s]);
        ck_assert_int_eq(p[s].partition, want_part[s]);
        ck_assert_int_eq(p[s].partitions, 3);
    }
    free(p);
    /* as many GPUs as stages: whole GPUs */
    ck_assert_int_eq(pp_placement_plan("0,1,2,3", 4, -1, 1, &p, &e), 0);
    for (int s = 0; s < 4; s++)
        ck_assert(p[s].device == s && p[s].partition == -1);
    free(p);
    /* one process per stage: the local rank's GPU, whole */
    ck_assert_int_eq(pp_placement_plan(NULL, 8, 3, 1, &p, &e), 0);
    ck_assert(p[3].device == 3 && p[3].partition == -1);
    free(p);
    ck_assert_int_eq(pp_placement_plan("4,5", 8, 3, 1, &p, &e), 0);
    ck_assert(p[3].device == 5 && p[3].partition == -1);
    free(p);
    const char *bad[] = {"", "x", "0,", "0,,1", "-1", "0;1", "2000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_lt(pp_placement_plan(bad[i], 4, -1, 1, &p, &e), 0);
        ck_assert_msg(strstr(e.msg, "--devices"), "%s: %s", bad[i], e.msg);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dist");
    TCase *tc = tcase_create("dist");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_store_tcp);
    tcase_add_test(tc, test_store_file);
    tcase_add_test(tc, test_store_world_of_one);
    tcase_add_test(tc, test_store_timeouts);
    tcase_add_test(tc, test_store_bad_specs);
    tcase_add_test(tc, test_env_detect);
    tcase_add_test(tc, test_env_rendezvous);
    tcase_add_test(tc, test_placement);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
