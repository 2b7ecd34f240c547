/* Simulator speed and memory in summary mode: simulates one generated
 * schedule REPEAT times and prints actions, the best and the median time,
 * actions per second at both, and the process's peak resident memory. Run
 * once per size (tools/bench-sim) so each peak belongs to one size. The
 * best of several runs is the usual figure on a shared, noisy machine. */
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
    if (argc < 5 || argc > 7) {
        fprintf(stderr, "usage: sim_bench SCHEDULE STAGES_OR_RANKS MICROBATCHES_PER_STEP "
                        "TOTAL_MICROBATCHES [REPEAT [CHUNKS]]\n");
        return 2;
    }
    int repeat = argc >= 6 ? atoi(argv[5]) : 1;
    int chunks = argc == 7 ? atoi(argv[6]) : 0;
    if (repeat < 1 || repeat > 99) {
        fprintf(stderr, "sim_bench: error: REPEAT must be 1..99\n");
        return 2;
    }
    const char *name = argv[1];
    int P = atoi(argv[2]), m = atoi(argv[3]);
    long total = atol(argv[4]);
    if (P < 1 || m < 1 || total < m) {
        fprintf(stderr, "sim_bench: error: bad sizes\n");
        return 2;
    }
    pp_gen_opts o = {P, m, (int)(total / m), 0, chunks};
    pp_err e;
    pp_cost cost;
    pp_stream *probe; /* the schedule's number of stages sizes the cost model */
    if (pp_generate(name, &o, &probe, &e) < 0 ||
        pp_cost_init(&cost, probe->info.stages, &e) < 0) {
        fprintf(stderr, "sim_bench: error: %s\n", e.msg);
        return 2;
    }
    pp_stream_free(probe);
    pp_sim_config cfg = {&cost, NULL, 0, NULL, NULL, NULL};
    pp_metrics met;
    double times[99];
    for (int r = 0; r < repeat; r++) {
        pp_stream *st;
        if (pp_generate(name, &o, &st, &e) < 0) {
            fprintf(stderr, "sim_bench: error: %s\n", e.msg);
            return 2;
        }
        double t0 = now_s();
        if (pp_simulate(st, &cfg, &met, &e) < 0) {
            fprintf(stderr, "sim_bench: error: %s\n", e.msg);
            return 1;
        }
        times[r] = now_s() - t0;
        pp_stream_free(st);
        if (r + 1 < repeat)
            pp_metrics_free(&met);
    }
    for (int i = 1; i < repeat; i++) /* insertion sort: tiny */
        for (int j = i; j > 0 && times[j] < times[j - 1]; j--) {
            double x = times[j];
            times[j] = times[j - 1];
            times[j - 1] = x;
        }
    double best = times[0], median = times[repeat / 2];
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    char size[32];
    if (pp_multi_stage(&met.info))
        snprintf(size, sizeof size, "R=%d V=%d", met.info.ranks,
                 met.info.stages / met.info.ranks);
    else
        snprintf(size, sizeof size, "P=%d", P);
    printf("%-16s %-9s m=%-2d mbs=%-7ld actions=%-9lld best %.3f s %.1f M/s, median %.1f M/s, "
           "peak RSS %.1f MiB\n",
           name, size, m, (long)met.info.total_microbatches, met.actions, best,
           met.actions / best / 1e6, met.actions / median / 1e6, ru.ru_maxrss / 1024.0);
    pp_metrics_free(&met);
    pp_cost_free(&cost);
    return 0;
}
