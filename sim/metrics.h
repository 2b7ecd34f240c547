/* Metrics of a timed run (DESIGN §4), derived from its actions fed in order
 * of start time. The simulator feeds it as it runs; the executor feeds it
 * from its measured log, so both report with the same code. Memory is
 * bounded by the micro-batches in flight, not by the length of the run. */
#ifndef PP_METRICS_H
#define PP_METRICS_H

#include "ir.h"
#include "model.h"
#include "ring.h"
#include "timeline.h"

typedef struct {
    double busy, idle, bubble_fraction; /* time units; idle/elapsed */
    int drift_max;
    double drift_mean;         /* over backwards */
    int staleness_max;
    double staleness_mean;     /* over gradients applied by OPT */
    int age_max;
    double age_mean;
    int peak_inflight;         /* micro-batches whose activations are held */
    int peak_weight_copies;
    double peak_memory_bytes;  /* from the model's memory model, 0 without */
    double hold_mean, hold_max;/* activations held: F start to B end */
    int final_version;
    long long forwards, backwards, opts;
} pp_stage_metrics;

/* A rank's share: the device time its stages leave idle and the memory
 * they hold together (a rank holds the weights of all its stages). With
 * one stage per rank these equal the stage's figures. */
typedef struct {
    double busy, idle, bubble_fraction; /* busy: time any of its stages computes */
    int peak_inflight;                  /* micro-batches held, all its stages */
    double peak_memory_bytes;
} pp_rank_metrics;

typedef struct {
    pp_ir_info info;
    char unit[16];
    double makespan;             /* time units */
    double throughput_mb;        /* micro-batches per time unit */
    double throughput_tokens;    /* tokens per time unit (0 without a model) */
    double bubble_fraction;      /* idle / (R x makespan), R ranks */
    double bubble_megatron;      /* idle / busy (Megatron's convention) */
    int has_steady;              /* 0: too few steps for a steady state */
    double steady_bubble_fraction;
    double steady_from, steady_to;
    int drift_max;
    double drift_mean;
    int staleness_max;
    double staleness_mean;
    int age_max;
    double age_mean;
    int peak_weight_copies_max, peak_inflight_max;
    double peak_memory_bytes_max;
    long long actions;
    pp_stage_metrics *stage;     /* info.stages entries */
    pp_rank_metrics *rank;       /* info.ranks entries */
} pp_metrics;

void pp_metrics_free(pp_metrics *m);

/* --- the accumulator ------------------------------------------------- */
typedef struct pp_acc_stage pp_acc_stage;
typedef struct pp_acc_rank pp_acc_rank;

typedef struct {
    pp_ir_info info;
    pp_acc_stage *st;
    pp_acc_rank *rk;            /* kept only with several stages per rank */
    int multi;
    const pp_model_desc *model; /* NULL: no bytes */
    int recompute;
    pp_timeline *timeline;      /* NULL: no memory samples */
    int steady_lo, steady_hi;   /* middle steps [lo, hi) */
    double t_lo, t_hi;
    double *busy_lo, *busy_hi;  /* per-rank busy time before t_lo / t_hi */
    int seen_lo, seen_hi;
    double last_start;
    long long actions;
} pp_metrics_acc;

int pp_acc_init(pp_metrics_acc *a, const pp_ir_info *info, const pp_model_desc *model,
                int recompute, pp_timeline *timeline, pp_err *e);
void pp_acc_free(pp_metrics_acc *a);
/* Feeds one action of `stage` (start, end, act set). Computes the weight
 * version it reads (or, for OPT, creates) into ta->version. Errors name the
 * stage and action: a backward without its forward, a duplicate forward,
 * a version that does not exist yet, a stash selector on a forward, or
 * actions fed out of start-time order. */
int pp_acc_action(pp_metrics_acc *a, int stage, pp_timed_action *ta, pp_err *e);
/* Closes the run: checks every stage finished every micro-batch and fills
 * *out (which the caller frees with pp_metrics_free). */
int pp_acc_finish(pp_metrics_acc *a, pp_metrics *out, pp_err *e);

/* Metrics of a recorded timeline (the executor's log): actions of all
 * stages fed in start-time order. With mem_out (which may be t itself),
 * the memory and weight-version samples are added to it for the trace's
 * counter tracks. */
int pp_metrics_from_timeline(const pp_timeline *t, const pp_model_desc *model,
                             int recompute, pp_timeline *mem_out, pp_metrics *out, pp_err *e);

#endif
