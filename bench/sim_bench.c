/* Simulator speed and memory in summary mode: simulates one generated
 * schedule, then prints actions, seconds, actions per second and the
 * process's peak resident memory. Run once per size (tools/bench-sim) so
 * each peak belongs to one size. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "engine.h"
#include "registry.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: sim_bench SCHEDULE STAGES MICROBATCHES_PER_STEP TOTAL_MICROBATCHES\n");
        return 2;
    }
    const char *name = argv[1];
    int P = atoi(argv[2]), m = atoi(argv[3]);
    long total = atol(argv[4]);
    if (P < 1 || m < 1 || total < m) {
        fprintf(stderr, "sim_bench: error: bad sizes\n");
        return 2;
    }
    pp_gen_opts o = {P, m, (int)(total / m), 0};
    pp_err e;
    pp_stream *st;
    pp_cost cost;
    if (pp_generate(name, &o, &st, &e) < 0 || pp_cost_init(&cost, P, &e) < 0) {
        fprintf(stderr, "sim_bench: error: %s\n", e.msg);
        return 2;
    }
    pp_sim_config cfg = {&cost, NULL, 0, NULL};
    pp_metrics met;
    double t0 = now_s();
    if (pp_simulate(st, &cfg, &met, &e) < 0) {
        fprintf(stderr, "sim_bench: error: %s\n", e.msg);
        return 1;
    }
    double dt = now_s() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%-14s P=%-3d m=%-3d micro-batches=%-8ld actions=%-10lld %.3f s  %.1f M actions/s  "
           "peak RSS %.1f MiB  (makespan %.0f, bubble %.4f)\n",
           name, P, m, (long)met.info.total_microbatches, met.actions, dt, met.actions / dt / 1e6,
           ru.ru_maxrss / 1024.0, met.makespan, met.bubble_fraction);
    pp_metrics_free(&met);
    pp_stream_free(st);
    pp_cost_free(&cost);
    return 0;
}
