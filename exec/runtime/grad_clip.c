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
 * finishing the same batch's backward. Where a rank holds several stages,
 * its thread reaches its stages' OPTs one after another: the first of them
 * deposits for all of the rank's stages (their gradients are complete:
 * each rank's OPTs of an update stand together, which pp_clip_init checks)
 * and only then waits.
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

/* One stage's actions up to its next OPT (or its end): the micro-batches
 * whose weight gradient that OPT applies, and the BARRIERs on the way. */
typedef struct {
    int32_t *mbs;
    size_t n, cap;
    long barriers;
    int opt;           /* ends at an OPT (else: the stage's end) */
} segment;

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Reads stage s's next segment; *inflight counts its micro-batches
 * forwarded and not yet through their weight gradient. -1 when out of
 * memory, 0 when one is in flight at the OPT, else 1. */
static int read_segment(pp_stream *st, int s, int *inflight, segment *g)
{
    g->n = 0;
    g->barriers = 0;
    g->opt = 0;
    pp_action a;
    while (pp_stream_next(st, s, &a)) {
        if (a.op == PP_OP_OPT) {
            g->opt = 1;
            break;
        }
        g->barriers += a.op == PP_OP_BARRIER;
        if (a.op == PP_OP_F)
            ++*inflight;
        if (a.op != PP_OP_B && a.op != PP_OP_W)
            continue;
        --*inflight;
        if (a.mb < 0 || a.mb >= st->info.total_microbatches)
            continue;
        if (g->n == g->cap) {
            size_t cap = g->cap ? 2 * g->cap : 64;
            int32_t *x = realloc(g->mbs, cap * sizeof *x);
            if (!x)
                return -1;
            g->mbs = x;
            g->cap = cap;
        }
        g->mbs[g->n++] = a.mb;
    }
    qsort(g->mbs, g->n, sizeof *g->mbs, cmp_i32);
    return !(g->opt && *inflight != 0);
}

static int same_segment(const segment *a, const segment *b)
{
    return a->opt == b->opt && a->barriers == b->barriers && a->n == b->n &&
           (a->n == 0 || memcmp(a->mbs, b->mbs, a->n * sizeof *a->mbs) == 0);
}

/* Update by update, every stage's k-th OPT must apply the same
 * micro-batches, with none in flight, and meet the others (OPT, BARRIER)
 * in the same order: O(micro-batches per update) of memory, however long
 * the run. */
static int stages_synchronous(pp_stream *st, pp_err *e)
{
    int P = st->info.stages, sync = 1;
    segment first = {0}, other = {0};
    int *inflight = calloc((size_t)(P > 0 ? P : 1), sizeof *inflight);
    if (!inflight)
        return pp_errf(e, "out of memory");
    for (int more = 1; sync > 0 && more;) {
        sync = read_segment(st, 0, &inflight[0], &first);
        for (int s = 1; sync > 0 && s < P; s++) {
            sync = read_segment(st, s, &inflight[s], &other);
            if (sync > 0)
                sync = same_segment(&first, &other);
        }
        more = first.opt;
    }
    free(first.mbs);
    free(other.mbs);
    free(inflight);
    return sync < 0 ? pp_errf(e, "out of memory") : sync;
}

/* With several stages per rank, the same test on each stage's own list. */
int pp_stream_synchronous(pp_stream *st, pp_err *e)
{
    if (pp_info_check_placement(&st->info, e) < 0)
        return -1;
    if (!pp_multi_stage(&st->info))
        return stages_synchronous(st, e);
    pp_stream *view;
    if (pp_stream_stage_view(st, &view, e) < 0)
        return -1;
    int sync = stages_synchronous(view, e);
    pp_stream_free(view);
    return sync;
}

int pp_schedule_synchronous(const pp_schedule *ir, pp_err *e)
{
    pp_stream *st;
    if (pp_stream_from_schedule(ir, &st, e) < 0)
        return -1;
    int sync = pp_stream_synchronous(st, e);
    pp_stream_free(st);
    return sync;
}

/* --- the run's clipping ----------------------------------------------- */

/* Several stages per rank: whether every rank's OPTs come in groups of one
 * per stage of the rank with no other action between them (so that at the
 * first of them every stage of the rank has its whole gradient). 1 yes,
 * -1 no (with the reason). */
static int opts_grouped(run *r, pp_err *e)
{
    pp_stream *st;
    if (pp_run_open_ir(r->cfg, &st, e) < 0)
        return -1;
    int per_rank = r->info.stages / r->info.ranks, rc = 1;
    for (int rank = 0; rc == 1 && rank < r->info.ranks; rank++) {
        int run_len = 0;
        size_t i = 0;
        pp_action a;
        for (; rc == 1 && pp_stream_next(st, rank, &a); i++) {
            if (a.op == PP_OP_OPT) {
                run_len++;
                continue;
            }
            if (run_len % per_rank != 0 || run_len > per_rank)
                rc = pp_errf(e, "clipping by the global gradient norm needs each rank's OPTs "
                                "of an update together (rank %d, action %zu)", rank, i);
            run_len = 0;
        }
        if (rc == 1 && run_len != 0 && run_len != per_rank)
            rc = pp_errf(e, "clipping by the global gradient norm needs each rank's OPTs of an "
                            "update together (rank %d ends with %d)", rank, run_len);
    }
    pp_stream_free(st);
    return rc;
}

int pp_clip_init(run *r, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    if (!(c->grad_clip > 0))
        return 0;
    pp_stream *st;
    if (pp_run_open_ir(c, &st, e) < 0)
        return -1;
    int sync = pp_stream_synchronous(st, e);
    pp_stream_free(st);
    if (sync <= 0)
        return sync;
    if (r->nloc < r->P)
        return pp_errf(e, "clipping by the global gradient norm (%s is synchronous) needs every "
                          "stage in one process", r->info.name);
    if (pp_multi_stage(&r->info) && opts_grouped(r, e) <= 0)
        return -1;
    r->clip_global = 1;
    for (int i = 0; i < 2; i++) {
        r->clip[i].k = -1;
        if (!(r->clip[i].sumsq = calloc((size_t)r->P, sizeof *r->clip[i].sumsq)) ||
            !(r->clip[i].deposited = calloc((size_t)r->P, 1)))
            return pp_errf(e, "out of memory");
    }
    return 0;
}

void pp_clip_free(run *r)
{
    for (int i = 0; i < 2; i++) {
        free(r->clip[i].sumsq);
        free(r->clip[i].deposited);
        r->clip[i].sumsq = NULL;
        r->clip[i].deposited = NULL;
    }
}

/* Deposits stage t's sum of squares at exchange x (once); the last deposit
 * sums them in stage order. Under r->mu. */
static void deposit(run *r, clip_exchange *x, int t, double own)
{
    if (x->deposited[t])
        return;
    x->deposited[t] = 1;
    x->sumsq[t] = own;
    if (++x->have == r->P) {
        double sum = 0.0;
        for (int st = 0; st < r->P; st++)
            sum += x->sumsq[st];
        x->total = sum;
        x->done = 1;
        pthread_cond_broadcast(&r->cv);
    }
}

/* Exchange k = the stage's update count: deposits the stage's sum of
 * squares (and, with several stages per rank, those of the rank's other
 * stages) and waits for every stage's; *total is their sum. */
static int exchange(stage_rt *s, double own, double *total, pp_err *e)
{
    run *r = s->r;
    long k = s->updates;
    clip_exchange *x = &r->clip[k % 2];
    int rank = pp_stage_rank(&r->info, s->s);
    double mine[PP_MAX_RANK_STAGES];
    int st[PP_MAX_RANK_STAGES];
    int n = pp_rank_stages(&r->info, rank, st, PP_MAX_RANK_STAGES);
    for (int i = 0; i < n; i++) /* outside the lock: a device reduction each */
        mine[i] = st[i] == s->s ? own
                                : r->cfg->backend->grad_sumsq(r->st[st[i]].bk, r->st[st[i]].grad);
    pthread_mutex_lock(&r->mu);
    if (x->k != k) { /* the first stage here: the slot held update k - 2, which all have left */
        x->k = k;
        x->have = 0;
        x->done = 0;
        memset(x->deposited, 0, (size_t)r->P);
    }
    for (int i = 0; i < n; i++)
        deposit(r, x, st[i], mine[i]);
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
