/* Gradient clipping (pp_run_config.grad_clip = X, pprun --grad-clip X):
 * each update's gradient g is multiplied by min(1, X / ||g||), ||g|| its
 * L2 norm. What "the gradient of an update" is depends on the schedule.
 *
 * Synchronous schedules (1F1B-flush, GPipe: pp_schedule_synchronous). The
 * k-th OPT of every stage applies the same global batch, computed on the
 * same weights: together the stages' k-th updates are one update of the
 * whole model, and it is clipped by the true global norm, as unpipelined
 * training clips (PyTorch's clip_grad_norm_ over every parameter). Before
 * its k-th OPT each stage deposits its gradient's sum of squares at
 * exchange k and waits for the others; the total is summed in stage order,
 * so that a run repeats bit for bit. The wait costs little: the schedule
 * flushes there anyway, and a stage waits only for stages that are
 * finishing the same batch's backward.
 *
 * Asynchronous schedules (PipeDream, PipeDream-2BW, PACI). The stages
 * update at different moments on purpose (stage 0 forwards the next batch
 * while the last stage still applies the previous one), and there is no
 * update of the whole model to take the norm of: a global norm would make
 * every stage wait at every OPT for the slowest, the flush these schedules
 * exist to avoid. Each stage clips its own gradient against its share of
 * X, X * sqrt(n_s / n) (n_s its parameters, n the model's): the shares'
 * squares add up to X^2, so when every stage sits at its threshold the
 * global norm is exactly X, and no stage waits for another. A stage whose
 * gradient is larger than its parameter count suggests is clipped harder
 * than a global norm would clip it: the price of not waiting. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_private.h"

/* --- is the schedule synchronous? ------------------------------------- */

/* upd[mb] = the OPT (0-based) that applies micro-batch mb's weight
 * gradient on this stage, -1 if none does. Returns the number of OPTs, or
 * -1 when a micro-batch is in flight at an OPT. */
static int stage_updates(const pp_action_list *l, int *upd, size_t N)
{
    int opts = 0, inflight = 0;
    for (size_t mb = 0; mb < N; mb++)
        upd[mb] = -1;
    for (size_t i = 0; i < l->count; i++) {
        const pp_action *a = &l->items[i];
        if (a->op == PP_OP_F)
            inflight++;
        else if ((a->op == PP_OP_B || a->op == PP_OP_W) && (size_t)a->mb < N) {
            inflight--;
            upd[a->mb] = opts;
        } else if (a->op == PP_OP_OPT) {
            if (inflight != 0)
                return -1;
            opts++;
        }
    }
    return opts;
}

/* Whether two stages meet the others (OPT, BARRIER) in the same order. */
static int same_meetings(const pp_action_list *a, const pp_action_list *b)
{
    size_t i = 0, j = 0;
    for (;;) {
        while (i < a->count && a->items[i].op != PP_OP_OPT && a->items[i].op != PP_OP_BARRIER)
            i++;
        while (j < b->count && b->items[j].op != PP_OP_OPT && b->items[j].op != PP_OP_BARRIER)
            j++;
        if (i == a->count || j == b->count)
            return i == a->count && j == b->count;
        if (a->items[i++].op != b->items[j++].op)
            return 0;
    }
}

int pp_schedule_synchronous(const pp_schedule *ir, pp_err *e)
{
    size_t N = (size_t)ir->info.total_microbatches;
    int *first = malloc((N ? N : 1) * sizeof *first), *upd = malloc((N ? N : 1) * sizeof *upd);
    if (!first || !upd) {
        free(first);
        free(upd);
        return pp_errf(e, "out of memory");
    }
    int sync = stage_updates(&ir->stage[0], first, N) >= 0;
    for (int st = 1; sync && st < ir->info.stages; st++)
        sync = stage_updates(&ir->stage[st], upd, N) >= 0 &&
               memcmp(first, upd, N * sizeof *upd) == 0 &&
               same_meetings(&ir->stage[0], &ir->stage[st]);
    free(first);
    free(upd);
    return sync;
}

/* --- the run's clipping ----------------------------------------------- */

int pp_clip_init(run *r, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    if (!(c->grad_clip > 0))
        return 0;
    int sync = pp_schedule_synchronous(c->ir, e);
    if (sync <= 0)
        return sync;
    if (r->nloc < r->P)
        return pp_errf(e, "clipping by the global gradient norm (%s is synchronous) needs every "
                          "stage in one process", c->ir->info.name);
    r->clip_global = 1;
    for (int i = 0; i < 2; i++) {
        r->clip[i].k = -1;
        if (!(r->clip[i].sumsq = calloc((size_t)r->P, sizeof *r->clip[i].sumsq)))
            return pp_errf(e, "out of memory");
    }
    return 0;
}

void pp_clip_free(run *r)
{
    for (int i = 0; i < 2; i++) {
        free(r->clip[i].sumsq);
        r->clip[i].sumsq = NULL;
    }
}

/* Exchange k = the stage's update count: deposits the stage's sum of
 * squares and waits for every stage's; *total is their sum. */
static int exchange(stage_rt *s, double own, double *total, pp_err *e)
{
    run *r = s->r;
    long k = s->updates;
    clip_exchange *x = &r->clip[k % 2];
    pthread_mutex_lock(&r->mu);
    if (x->k != k) { /* the first stage here: the slot held update k - 2, which all have left */
        x->k = k;
        x->have = 0;
        x->done = 0;
    }
    x->sumsq[s->s] = own;
    if (++x->have == r->P) {
        double sum = 0.0;
        for (int st = 0; st < r->P; st++)
            sum += x->sumsq[st];
        x->total = sum;
        x->done = 1;
        pthread_cond_broadcast(&r->cv);
    }
    while (!x->done && !r->aborted)
        pthread_cond_wait(&r->cv, &r->mu);
    int rc = x->done ? 0
                     : pp_errf(e, "run aborted while waiting for the other stages' gradient "
                                  "norms of update %ld", k + 1);
    *total = x->total;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int pp_clip_scale(stage_rt *s, pp_err *e)
{
    run *r = s->r;
    const pp_run_config *c = r->cfg;
    double limit = c->grad_clip, sumsq;
    s->grad_scale = 1.0f;
    if (!(limit > 0))
        return 0;
    double own = c->backend->grad_sumsq(s->bk, s->grad);
    if (r->clip_global) {
        if (exchange(s, own, &sumsq, e) < 0)
            return -1;
    } else {
        sumsq = own;
        limit *= sqrt(pp_model_stage_params(&c->model, r->P, s->s) /
                      pp_model_total_params(&c->model));
    }
    double norm = sqrt(sumsq);
    if (norm > limit) /* a zero or NaN norm (a failed device) leaves the gradient as it is */
        s->grad_scale = (float)(limit / norm);
    return 0;
}
