/* pp_run: checks the configuration, creates the local stages and the
 * transport, starts one thread per rank (stage.c; a rank runs one stage,
 * or several chunks of the model), supervises them from this thread
 * (supervise.c), then collects the result and tears down. */
#include "runtime.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/cpu_pool.h"
#include "runtime_private.h"

static atomic_int interrupt_requested;

void pp_run_interrupt(void)
{
    atomic_store(&interrupt_requested, 1);
}

int pp_run_interrupted(void)
{
    return atomic_load(&interrupt_requested);
}

double pp_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void pp_run_abort(run *r)
{
    pthread_mutex_lock(&r->mu);
    r->aborted = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    r->tr->abort(r->tr);
}

/* Where stage s runs: the configured placement (default: GPU 0, whole),
 * with the CPU threads each stage gets. */
static pp_placement placement_of(const run *r, int s)
{
    const pp_run_config *c = r->cfg;
    pp_placement at = c->placement ? c->placement[s] : PP_PLACEMENT_WHOLE(0);
    /* a rank runs one stage at a time: its stages share its threads' cores */
    at.threads = pp_run_stage_threads(c->threads, pp_multi_stage(&r->info) ? r->info.ranks
                                                                           : r->nloc);
    return at;
}

static int create_stages(run *r, void ***eval_stages, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    for (int s = r->lo; s < r->lo + r->nloc; s++) {
        r->st[s].r = r;
        r->st[s].s = s;
        pp_placement at = placement_of(r, s);
        if (c->backend->create(&c->model, r->P, s, &at, &r->st[s].bk, e) < 0)
            return pp_err_prefix(e, "stage %d", s);
        if (pp_backend_optimizer_init(c->backend, r->st[s].bk, &c->optim, e) < 0)
            return pp_err_prefix(e, "stage %d", s);
        if (pp_stage_prepare(&r->st[s], e) < 0) /* a refused resume names the stage */
            return r->bad_resume ? -1 : pp_err_prefix(e, "stage %d", s);
    }
    if (!pp_run_evaluates(r))
        return 0;
    *eval_stages = calloc((size_t)(unsigned)r->P, sizeof **eval_stages);
    if (!*eval_stages)
        return pp_errf(e, "out of memory");
    for (int s = 0; s < r->P; s++) {
        pp_placement at = placement_of(r, s);
        if (c->backend->create(&c->model, r->P, s, &at, &(*eval_stages)[s], e) < 0)
            return pp_err_prefix(e, "evaluator stage %d", s);
    }
    return 0;
}

int pp_run_stage_threads(int threads, int local_stages)
{
    if (threads > 0)
        return threads;
    int per = pp_cpu_cores() / (local_stages > 0 ? local_stages : 1);
    return per > 1 ? per : 1;
}

int pp_run_open_ir(const pp_run_config *c, pp_stream **out, pp_err *e)
{
    if (c->ir)
        return pp_stream_from_schedule(c->ir, out, e);
    if (!c->open_ir)
        return pp_errf(e, "no schedule to run");
    return c->open_ir(c->open_ir_ctx, out, e);
}

/* Configuration errors, found before anything is allocated. */
static int check_config(const run *r, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    if (r->P < 1 || r->P > 4096)
        return pp_errf(e, "bad number of stages %d", r->P);
    if (r->lo < 0 || r->nloc < 1 || r->lo + r->nloc > r->P)
        return pp_errf(e, "local stages %d..%d are not stages of a %d-stage schedule", r->lo,
                       r->lo + r->nloc - 1, r->P);
    if (r->nloc < r->P && !c->transport)
        return pp_errf(e, "running %d of %d stages needs a transport to the others", r->nloc,
                       r->P);
    if (r->nloc < r->P && (c->ncuts || c->resume_blobs))
        return pp_errf(e, "checkpoints need every stage in one process");
    if (pp_multi_stage(&r->info) && r->nloc < r->P)
        return pp_errf(e, "a schedule with several stages per rank runs in one process (all "
                          "%d ranks here) so far", r->info.ranks);
    if (r->info.stages / r->info.ranks > PP_MAX_RANK_STAGES)
        return pp_errf(e, "%d stages per rank: at most %d", r->info.stages / r->info.ranks,
                       PP_MAX_RANK_STAGES);
    for (int s = 0; c->lr_delay_tau && s < r->P; s++)
        if (!(c->lr_delay_tau[s] >= 1 && isfinite(c->lr_delay_tau[s])) || c->lr_delay_T < 1)
            return pp_errf(e, "learning-rate correction: stage %d's delay %g (at least 1) over "
                              "%ld updates (at least 1)", s, c->lr_delay_tau[s], c->lr_delay_T);
    return 0;
}

/* The IR's needs (pp_ir_plan), from a pass over it before the run. */
static int plan_ir(run *r, pp_err *e)
{
    pp_stream *st;
    if (pp_run_open_ir(r->cfg, &st, e) < 0)
        return -1;
    int rc = pp_ir_plan_make(st, &r->plan, e);
    pp_stream_free(st);
    if (rc == 0 && r->nloc < r->P && r->plan.barrier_stage >= 0)
        rc = pp_errf(e, "stage %d, action %zu: BARRIER needs every stage in one process",
                     r->plan.barrier_stage, r->plan.barrier_pos);
    return rc;
}

/* A stage view of the IR, for resuming a schedule whose ranks hold
 * several stages (runtime_ckpt.c). */
static int open_stage_view(run *r, pp_err *e)
{
    pp_stream *st;
    if (pp_run_open_ir(r->cfg, &st, e) < 0)
        return -1;
    int rc = pp_stream_stage_view(st, &r->stage_view, e);
    pp_stream_free(st);
    return rc;
}

/* Per checkpoint cut, a slot for each stage's state blob. */
static int alloc_cuts(run *r, pp_err *e)
{
    int n = r->cfg->ncuts;
    if (n <= 0)
        return 0;
    r->cut_blobs = calloc((size_t)n, sizeof *r->cut_blobs);
    r->cut_sizes = calloc((size_t)n, sizeof *r->cut_sizes);
    r->cut_have = calloc((size_t)n, sizeof *r->cut_have);
    if (!r->cut_blobs || !r->cut_sizes || !r->cut_have)
        return pp_errf(e, "out of memory");
    for (int j = 0; j < n; j++) {
        r->cut_blobs[j] = calloc((size_t)r->P, sizeof **r->cut_blobs);
        r->cut_sizes[j] = calloc((size_t)r->P, sizeof **r->cut_sizes);
        if (!r->cut_blobs[j] || !r->cut_sizes[j])
            return pp_errf(e, "out of memory");
    }
    return 0;
}

static void free_cuts(run *r)
{
    for (int j = 0; r->cut_blobs && j < r->cfg->ncuts; j++) {
        for (int st = 0; r->cut_blobs[j] && st < r->P; st++)
            free(r->cut_blobs[j][st]);
        free(r->cut_blobs[j]);
        if (r->cut_sizes)
            free(r->cut_sizes[j]);
    }
    free(r->cut_blobs);
    free(r->cut_sizes);
    free(r->cut_have);
}

/* The transport the configuration gives, or an in-process one between
 * the stages; then each local stage is attached to it. */
static int open_transport(run *r, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    int rc = 0;
    if (c->transport) {
        r->tr = c->transport;
    } else {
        r->own_tr = 1;
        void **bks = malloc((size_t)r->P * sizeof *bks);
        int *rank_of = malloc((size_t)r->P * sizeof *rank_of);
        for (int s = 0; bks && rank_of && s < r->P; s++) {
            bks[s] = r->st[s].bk;
            rank_of[s] = pp_stage_rank(&r->info, s);
        }
        /* as many messages per link as the IR can send ahead (ir_plan.c):
         * fewer can stall a valid schedule until its timeout */
        rc = bks && rank_of
                 ? pp_transport_inproc_create(r->P, r->plan.slots,
                                              c->timeout_s > 0 ? c->timeout_s : 600, c->link_s,
                                              c->backend, bks, rank_of, &r->tr, e)
                 : pp_errf(e, "out of memory");
        free(bks);
        free(rank_of);
    }
    for (int s = r->lo; rc == 0 && r->tr->attach && s < r->lo + r->nloc; s++)
        rc = r->tr->attach(r->tr, s, c->backend, r->st[s].bk, e);
    return rc;
}

/* One thread per local rank, supervised from this thread until all are
 * done. A failure is reported with the first failing stage's cause. */
static int run_stages(run *r, void **eval_stages, pp_err *e)
{
    /* the local ranks: the local stages with one stage per rank, else all */
    int multi = pp_multi_stage(&r->info);
    int first = multi ? 0 : r->lo, nranks = r->local_ranks;
    pthread_t *threads = calloc((size_t)nranks, sizeof *threads);
    pp_rank_rt *ranks = calloc((size_t)nranks, sizeof *ranks);
    if (!threads || !ranks) {
        free(threads);
        free(ranks);
        return pp_errf(e, "out of memory");
    }
    int rc = 0, started = 0;
    r->t0 = r->cfg->t0 > 0 ? r->cfg->t0 : pp_now_s();
    for (; started < nranks; started++) {
        ranks[started] = (pp_rank_rt){r, first + started};
        if (pthread_create(&threads[started], NULL, pp_rank_main, &ranks[started]) != 0)
            break;
    }
    if (started < nranks) {
        rc = pp_errf(e, "cannot start rank threads");
        pp_run_abort(r);
        pthread_mutex_lock(&r->mu);
        for (int k = started; k < nranks; k++) /* their stages will not report */
            r->stages_done += r->info.stages / r->info.ranks;
        pthread_mutex_unlock(&r->mu);
    }
    reporter rep = {eval_stages, 0};
    int src = pp_supervise(r, &rep, e);
    if (rc == 0)
        rc = src;
    for (int s = 0; s < started; s++)
        pthread_join(threads[s], NULL);
    free(threads);
    free(ranks);
    for (int s = r->lo; s < r->lo + r->nloc; s++)
        if (r->st[s].failed) { /* the first stage that failed has the cause */
            int caused = !strstr(r->st[s].err.msg, "aborted");
            if (caused || src == 0)
                *e = r->st[s].err; /* else the supervisor's reason stands */
            rc = -1;
            if (caused)
                break;
        }
    return rc;
}

int pp_run(const pp_run_config *c, pp_run_result *res, pp_err *e)
{
    memset(res, 0, sizeof *res);
    run r;
    memset(&r, 0, sizeof r);
    r.cfg = c;
    if (pp_run_open_ir(c, &r.ir, e) < 0)
        return -1;
    r.info = r.ir->info;
    if (pp_info_check_placement(&r.info, e) < 0) {
        pp_stream_free(r.ir);
        return -1;
    }
    r.P = r.info.stages;
    r.N = r.info.total_microbatches;
    r.lo = c->local_first;
    r.nloc = c->local_count ? c->local_count : r.P;
    r.local_ranks = pp_multi_stage(&r.info) ? r.info.ranks : r.nloc;
    if (check_config(&r, e) < 0 || plan_ir(&r, e) < 0) {
        pp_stream_free(r.ir);
        return -1;
    }
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    r.tokens = c->resume_tokens;
    void **eval_stages = NULL;
    r.st = calloc((size_t)r.P, sizeof *r.st);
    int rc = r.st ? 0 : pp_errf(e, "out of memory");
    if (rc == 0)
        rc = pp_clip_init(&r, e);
    if (rc == 0)
        rc = alloc_cuts(&r, e);
    if (rc == 0 && c->resume_blobs && pp_multi_stage(&r.info))
        rc = open_stage_view(&r, e);
    if (rc == 0)
        rc = create_stages(&r, &eval_stages, e);
    if (rc == 0)
        rc = open_transport(&r, e);
    if (rc == 0 && c->on_ready)
        c->on_ready(c->on_ready_ctx);
    if (rc == 0) {
        rc = run_stages(&r, eval_stages, e);
        res->elapsed_s = pp_now_s() - r.t0;
    }
    if (rc == 0)
        rc = pp_run_collect(&r, res, e);
    if (rc == 0 && c->keep_final_weights)
        rc = pp_run_keep_final_weights(&r, res, e);
    res->final_val_loss = NAN;
    if (rc == 0 && pp_run_evaluates(&r))
        rc = pp_run_final_evaluation(&r, eval_stages, res, e);

    while (r.nsnaps)
        pp_snapshot_free(&r, &r.snaps[0]);
    free(r.snaps);
    free_cuts(&r);
    pp_clip_free(&r);
    for (int s = 0; eval_stages && s < r.P; s++)
        if (eval_stages[s])
            c->backend->destroy(eval_stages[s]);
    free(eval_stages);
    if (r.tr && r.own_tr)
        r.tr->destroy(r.tr);
    for (int s = 0; r.st && s < r.P; s++)
        pp_stage_release(&r.st[s]);
    free(r.st);
    free(r.records);
    pp_ir_plan_free(&r.plan);
    pp_stream_free(r.ir);
    pp_stream_free(r.stage_view);
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cv);
    if (rc < 0)
        pp_run_result_free(res);
    res->bad_resume = rc < 0 && r.bad_resume;
    return rc;
}

void pp_run_result_free(pp_run_result *r)
{
    free(r->step_loss);
    r->step_loss = NULL;
    for (int s = 0; r->final_weights && r->final_weight_bytes && s < r->nstages; s++)
        free(r->final_weights[s]);
    free(r->final_weights);
    free(r->final_weight_bytes);
    r->final_weights = NULL;
    r->final_weight_bytes = NULL;
}

