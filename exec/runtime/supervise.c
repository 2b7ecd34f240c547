/* The main thread's side of a run: the last stage hands it one record
 * per update; it emits them in order (each with its validation loss once
 * every stage deposited that snapshot), hands on the measured actions
 * (timed_log.c) and complete checkpoint cuts to the writer, until every
 * local stage is done. */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "runtime_private.h"

int pp_report_update(stage_rt *s, pp_err *e)
{
    run *r = s->r;
    pp_step_record rec = {0};
    rec.step = s->updates;
    rec.loss = s->loss_n ? s->loss_sum / s->loss_n : NAN;
    rec.lr = pp_lr_at(&r->cfg->lr, s->updates - 1);
    rec.elapsed_s = pp_now_s() - r->t0;
    double tokens = (double)s->loss_n * r->cfg->model.micro_batch * r->cfg->model.seq_len;
    s->loss_sum = 0;
    s->loss_n = 0;
    pthread_mutex_lock(&r->mu);
    r->tokens += tokens;
    rec.tokens = r->tokens;
    if (r->nrecords == r->caprecords) {
        int cap = r->caprecords ? r->caprecords * 2 : 64;
        pp_step_record *x = realloc(r->records, (size_t)cap * sizeof *x);
        if (!x) {
            pthread_mutex_unlock(&r->mu);
            return pp_errf(e, "out of memory");
        }
        r->records = x;
        r->caprecords = cap;
    }
    r->records[r->nrecords++] = rec;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static int report_ready(run *r, reporter *rep, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    while (rep->emitted < r->nrecords) {
        pp_step_record rec = r->records[rep->emitted];
        int want_val = pp_run_evaluates(r) && c->eval_every > 0 && rec.step % c->eval_every == 0;
        if (want_val) {
            snapshot *sn = pp_snapshot_find(r, rec.step);
            if (!sn || sn->have < r->P)
                return 0;
            pthread_mutex_unlock(&r->mu);
            int rc = pp_evaluate(c->backend, &c->model, r->P, rep->eval_stages, sn->w,
                                 c->val_batch, c->data, c->eval_batches, &rec.val_loss, e);
            pthread_mutex_lock(&r->mu);
            if (rc < 0)
                return -1;
            rec.has_val = 1;
            pp_snapshot_free(r, pp_snapshot_find(r, rec.step));
            r->records[rep->emitted] = rec;
        }
        rep->emitted++;
        if (c->on_step) {
            pthread_mutex_unlock(&r->mu);
            c->on_step(c->on_step_ctx, &rec);
            pthread_mutex_lock(&r->mu);
        }
    }
    return 0;
}

/* Hands complete cuts to the checkpoint writer (called with r->mu held);
 * returns how many it handed, or -1. */
static int checkpoints_ready(run *r, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    int handed = 0;
    for (int j = 0; j < c->ncuts; j++) {
        if (r->cut_have[j] != r->P)
            continue;
        r->cut_have[j] = -1; /* handled */
        handed++;
        /* the tokens trained by update K: the last stage recorded them
         * before it reached the cut (later updates may be in r->tokens) */
        double tokens = r->tokens;
        for (int i = 0; i < r->nrecords; i++)
            if (r->records[i].step == c->cuts[j].K)
                tokens = r->records[i].tokens;
        pthread_mutex_unlock(&r->mu);
        int rc = c->on_checkpoint ? c->on_checkpoint(c->on_checkpoint_ctx, c->cuts[j].K,
                                                     r->cut_blobs[j], r->cut_sizes[j], tokens, e)
                                  : 0;
        pthread_mutex_lock(&r->mu);
        for (int s = 0; s < r->P; s++) {
            free(r->cut_blobs[j][s]);
            r->cut_blobs[j][s] = NULL;
        }
        if (rc < 0)
            return -1;
    }
    return handed;
}

int pp_supervise(run *r, reporter *rep, pp_err *e)
{
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        /* read before reporting: reporting unlocks, and what arrives
         * meanwhile (its wake-up lost) must still be reported */
        int done = r->stages_done == r->nloc, emitted = rep->emitted, handed = 0;
        if (rc == 0 && !done && pp_run_interrupted()) {
            rc = pp_errf(e, "interrupted");
            pthread_mutex_unlock(&r->mu);
            pp_run_abort(r);
            pthread_mutex_lock(&r->mu);
        }
        if (rc == 0) { /* the measured actions so far (all of them once done) */
            pthread_mutex_unlock(&r->mu);
            rc = pp_log_merge(r, e);
            if (rc < 0)
                pp_run_abort(r);
            pthread_mutex_lock(&r->mu);
        }
        if (rc == 0 && (report_ready(r, rep, e) < 0 || (handed = checkpoints_ready(r, e)) < 0)) {
            rc = -1;
            pthread_mutex_unlock(&r->mu);
            pp_run_abort(r);
            pthread_mutex_lock(&r->mu);
        }
        if (done)
            break;
        if (rc == 0 && (rep->emitted > emitted || handed > 0))
            continue; /* it unlocked: look again before sleeping */
        if (r->stages_done < r->nloc) { /* a wake-up, or a look at the interrupt flag */
            struct timespec at;
            clock_gettime(CLOCK_REALTIME, &at);
            at.tv_nsec += 200 * 1000000L;
            if (at.tv_nsec >= 1000000000L) {
                at.tv_sec++;
                at.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&r->cv, &r->mu, &at);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}
