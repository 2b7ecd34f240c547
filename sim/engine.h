/* The discrete-event engine (DESIGN §4): every stage walks its action list;
 * an action starts when its stage is free and its inputs have arrived, and
 * ends after its duration from the cost model. Communication runs on its
 * own stream per link and direction, overlapping compute. */
#ifndef PP_ENGINE_H
#define PP_ENGINE_H

#include <stdint.h>

#include "cost.h"
#include "ir.h"
#include "metrics.h"
#include "model.h"
#include "timeline.h"

typedef struct {
    const pp_cost *cost;
    const pp_model_desc *model; /* memory and tokens; NULL for none */
    int recompute;              /* PACI's low-memory mode */
    pp_timeline *timeline;      /* full mode: every action recorded; NULL = summary */
    /* Optional: called every 2^20 finished actions with the count so far
     * and the schedule's total (a progress line for long runs). */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
} pp_sim_config;

/* Runs the stream to the end. Errors: a deadlock (naming the stage, its
 * action and what it waits for) or an action the metrics reject. */
int pp_simulate(pp_stream *src, const pp_sim_config *cfg, pp_metrics *out, pp_err *e);

#endif
