/* What a finished run hands back: per-update losses and (for a
 * multi-process run's evaluation) host copies of the local stages' final
 * weights. The measured actions went out as the run went (timed_log.c). */
#include <stdlib.h>

#include "runtime_private.h"

int pp_run_keep_final_weights(run *r, pp_run_result *res, pp_err *e)
{
    res->nstages = r->P;
    res->final_weights = calloc((size_t)r->P, sizeof *res->final_weights);
    res->final_weight_bytes = calloc((size_t)r->P, sizeof *res->final_weight_bytes);
    if (!res->final_weights || !res->final_weight_bytes)
        return pp_errf(e, "out of memory");
    for (int s = r->lo; s < r->lo + r->nloc; s++) {
        stage_rt *st = &r->st[s];
        if (!(res->final_weights[s] = malloc(st->ws.bytes)))
            return pp_errf(e, "out of memory for the final weights");
        r->cfg->backend->to_host(st->bk, res->final_weights[s],
                                 pp_weights_get(&st->ws, st->ws.current), st->ws.bytes);
        res->final_weight_bytes[s] = st->ws.bytes;
    }
    return 0;
}

int pp_run_collect(run *r, pp_run_result *res, pp_err *e)
{
    res->steps = r->nrecords;
    res->step_loss = malloc((size_t)(r->nrecords ? r->nrecords : 1) * sizeof *res->step_loss);
    if (!res->step_loss)
        return pp_errf(e, "out of memory");
    for (int i = 0; i < r->nrecords; i++)
        res->step_loss[i] = r->records[i].loss;
    res->tokens = r->tokens;
    return 0;
}
