/* A stage, top to bottom: prepare it (buffers, weight versions, what it
 * must know ahead), run each of its actions as its rank's thread reaches
 * them in the rank's IR list (receive the input, compute, send, log the
 * times), and report updates and snapshots to the main thread
 * (supervise.c, evaluate.c). */
#include <stdlib.h>
#include <string.h>

#include "runtime_private.h"

/* --- per-stage preparation ------------------------------------------- */

int pp_stage_prepare(stage_rt *s, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    size_t BT = (size_t)r->cfg->model.micro_batch * r->cfg->model.seq_len;
    s->tokens = malloc(BT * sizeof(int));
    s->targets = malloc(BT * sizeof(int));
    if (!s->tokens || !s->targets || pp_mbt_init(&s->flying, sizeof(flying_mb)) < 0 ||
        pp_log_init(s, e) < 0)
        return pp_errf(e, "out of memory");
    if (pp_weights_init(&s->ws, b, s->bk, r->cfg->seed, e) < 0)
        return -1;
    size_t nb = b->boundary_floats(s->bk) * sizeof(float);
    s->grad = b->alloc(s->bk, s->ws.bytes);
    s->x_in = b->alloc(s->bk, nb);
    s->x_out = b->alloc(s->bk, nb);
    s->dx_in = b->alloc(s->bk, nb);
    s->dx_out = b->alloc(s->bk, nb);
    if (!s->grad || !s->x_in || !s->x_out || !s->dx_in || !s->dx_out)
        return pp_errf(e, "out of memory for stage %d buffers", s->s);
    const pp_run_config *c = r->cfg;
    if (c->resume_blobs &&
        pp_stage_restore(s, c->resume_blobs[s->s], c->resume_sizes[s->s], e) < 0) {
        r->bad_resume = 1;
        return -1;
    }
    /* every activation buffer the schedule will hold at once, now: none
     * is allocated (or zeroed, or faulted in) per micro-batch */
    return pp_acts_reserve(s, e);
}

void pp_stage_release(stage_rt *s)
{
    if (!s->bk) /* not created, or another process's stage */
        return;
    const pp_backend_ops *b = s->r->cfg->backend;
    for (size_t i = 0; s->flying.keys && i <= s->flying.mask; i++)
        if (s->flying.keys[i] >= 0)
            b->release(s->bk, ((flying_mb *)(s->flying.vals + i * s->flying.vsize))->acts);
    pp_mbt_free(&s->flying);
    pp_acts_free(s);
    void *bufs[] = {s->grad, s->x_in, s->x_out, s->dx_in, s->dx_out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            b->release(s->bk, bufs[i]);
    if (s->ws.v)
        pp_weights_free(&s->ws);
    free(s->tokens);
    free(s->targets);
    pp_log_free(s);
    for (int i = 0; i < s->noutbox; i++)
        free(s->outbox[i].buf);
    free(s->outbox);
    b->destroy(s->bk);
    s->bk = NULL;
}

/* --- checksums (test hook) ------------------------------------------- */

static void record_checksum(stage_rt *s, const void *w, int mb, int which)
{
    double *dst = s->r->cfg->weight_checksums;
    if (!dst)
        return;
    const pp_backend_ops *b = s->r->cfg->backend;
    size_t n = s->ws.bytes / sizeof(float);
    float *h = malloc(s->ws.bytes);
    if (!h)
        return;
    b->to_host(s->bk, h, w, s->ws.bytes);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += h[i] * (double)((i % 97) + 1);
    free(h);
    dst[((size_t)s->s * s->r->N + mb) * 2 + which] = sum;
}

/* --- actions --------------------------------------------------------- */

static int do_forward(stage_rt *s, const pp_action *a, pp_timed_action *ta, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    int mb = a->mb, first = s->s == 0, last = s->s == r->P - 1, dup;
    int v = a->sel == PP_SEL_VERSION ? a->version : s->ws.current;
    void *w = pp_weights_get(&s->ws, v);
    if (!w)
        return pp_errf(e, "F%d: weight version %d is not alive", mb, v);
    size_t nb = b->boundary_floats(s->bk) * sizeof(float);
    if ((first || last) && r->cfg->train_batch(r->cfg->data, mb, s->tokens, s->targets, e) < 0)
        return -1;
    flying_mb *f = pp_mbt_add(&s->flying, mb, &dup);
    if (!f)
        return dup ? pp_errf(e, "F%d: micro-batch %d is in flight already", mb, mb)
                   : pp_errf(e, "out of memory");
    if (!(f->acts = pp_acts_get(s))) {
        pp_mbt_remove(&s->flying, mb, NULL);
        return pp_errf(e, "out of memory for the activations of micro-batch %d", mb);
    }
    f->v_f = v;
    f->stash = r->ir->stashes && r->ir->stashes(r->ir, s->s, mb);
    if (b->forward(s->bk, w, first ? s->tokens : NULL, first ? NULL : s->x_in,
                   last ? s->targets : NULL, f->acts, last ? NULL : s->x_out,
                   last ? &f->loss : NULL, e) < 0)
        return -1;
    if (f->stash) {
        pp_weights_ref(&s->ws, v, 1);
        ta->flags |= PP_TA_STASH;
    }
    record_checksum(s, w, mb, 0);
    ta->version = v;
    if (!last)
        return r->tr->send(r->tr, s->s, s->s + 1, PP_MSG_ACT, mb, s->x_out, nb, e);
    return 0;
}

/* The weight version the backward of mb reads: its forward's when stashed. */
static int backward_version(stage_rt *s, const flying_mb *f)
{
    return f->stash ? f->v_f : s->ws.current;
}

/* B or I: the input gradient, sent upstream. */
static int do_backward_input(stage_rt *s, const pp_action *a, int *version, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    int mb = a->mb, first = s->s == 0, last = s->s == r->P - 1;
    flying_mb *f = pp_flying(s, mb);
    void *w = f ? pp_weights_get(&s->ws, backward_version(s, f)) : NULL;
    if (!w)
        return pp_errf(e, "%s%d: no forward state", pp_op_name(a->op), mb);
    size_t nb = b->boundary_floats(s->bk) * sizeof(float);
    float scale = 1.0f / (float)r->info.microbatches_per_step;
    if (b->backward_input(s->bk, w, f->acts, last ? NULL : s->dx_out, first ? NULL : s->dx_in,
                          scale, e) < 0)
        return -1;
    record_checksum(s, w, mb, 1);
    *version = backward_version(s, f);
    if (!first)
        return r->tr->send(r->tr, s->s, s->s - 1, PP_MSG_GRAD, mb, s->dx_in, nb, e);
    return 0;
}

/* B or W: the weight gradient, then the micro-batch is done here. */
static int do_backward_weight(stage_rt *s, const pp_action *a, int *version, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    flying_mb f;
    if (!pp_mbt_remove(&s->flying, a->mb, &f))
        return pp_errf(e, "%s%d: no forward state", pp_op_name(a->op), a->mb);
    *version = backward_version(s, &f);
    int rc = b->backward_weight(s->bk, f.acts, s->grad, e);
    pp_acts_put(s, f.acts);
    if (f.stash)
        pp_weights_ref(&s->ws, f.v_f, -1);
    if (s->s == r->P - 1) {
        s->loss_sum += f.loss;
        s->loss_n++;
    }
    return rc;
}

/* AdamW's hyperparameters of the run: a config that leaves them all zero
 * (memset) gets the defaults. */
static pp_adamw_hparams run_adamw(const pp_run_config *c)
{
    static const pp_adamw_hparams unset;
    return memcmp(&c->adamw, &unset, sizeof unset) ? c->adamw : pp_adamw_defaults();
}

/* The gradient scale (clipping) is the OPT's input: receive_input set it. */
static int do_opt(stage_rt *s, int *version, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    pp_opt_step step = {pp_lr_at(&r->cfg->lr, s->updates), run_adamw(r->cfg), s->grad_scale};
    if (r->cfg->lr_delay_tau)
        step.lr = (float)(step.lr * pp_lr_delay_factor(r->cfg->lr_delay_tau[s->s], s->updates,
                                                       r->cfg->lr_delay_T));
    void *w = pp_weights_begin_update(&s->ws, e);
    if (!w)
        return -1;
    if (b->optimizer_update(s->bk, w, s->grad, &step, e) < 0)
        return -1;
    pp_weights_commit_update(&s->ws);
    s->updates++;
    *version = s->ws.current;
    if (s->s == r->P - 1 && pp_report_update(s, e) < 0)
        return -1;
    int every = r->cfg->eval_every;
    if (pp_run_evaluates(r) && every > 0 && s->updates % every == 0)
        return pp_snapshot_deposit(s, s->updates, e);
    return 0;
}

/* A barrier that an aborted run releases with an error: every local rank's
 * thread arrives once. */
static int run_barrier(run *r, pp_err *e)
{
    pthread_mutex_lock(&r->mu);
    int gen = r->bar_gen;
    if (++r->bar_count == r->local_ranks) {
        r->bar_count = 0;
        r->bar_gen++;
        pthread_cond_broadcast(&r->cv);
    }
    while (gen == r->bar_gen && !r->aborted)
        pthread_cond_wait(&r->cv, &r->mu);
    int rc = gen == r->bar_gen ? pp_errf(e, "run aborted while waiting at a barrier") : 0;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* --- the loop: each action in IR order -------------------------------- */

/* Waits for the action's input from a neighbour, before the action's clock
 * starts: waiting is idle time, not work. An OPT's input is its gradient
 * scale: with clipping, the gradient norm, in a synchronous schedule the
 * other stages' too (grad_clip.c). */
static int receive_input(stage_rt *s, const pp_action *a, pp_err *e)
{
    run *r = s->r;
    if (a->op == PP_OP_OPT)
        return pp_clip_scale(s, e);
    size_t nb = r->cfg->backend->boundary_floats(s->bk) * sizeof(float);
    if (a->op == PP_OP_F && s->s > 0)
        return r->tr->recv(r->tr, s->s, s->s - 1, PP_MSG_ACT, a->mb, s->x_in, nb, e);
    if ((a->op == PP_OP_B || a->op == PP_OP_I) && s->s < r->P - 1)
        return r->tr->recv(r->tr, s->s, s->s + 1, PP_MSG_GRAD, a->mb, s->dx_out, nb, e);
    return 0;
}

/* e, prefixed with the stage and the action (its index in the list). */
static int action_failed(const stage_rt *s, size_t idx, const pp_action *a, pp_err *e)
{
    char buf[32];
    return pp_err_prefix(e, "stage %d, action %zu \"%s\"", s->s, idx,
                         pp_action_format(*a, buf, sizeof buf));
}

static int run_action(stage_rt *s, const pp_action *a, pp_err *e)
{
    const pp_backend_ops *b = s->r->cfg->backend;
    pp_stream *ir = s->r->ir;
    size_t idx = s->pos;
    /* the version the stage's next F names, as the simulator asks it */
    int32_t next_fv = ir->next_f_version ? ir->next_f_version(ir, s->s) : -1;
    int rc = receive_input(s, a, e), v = 0, start_slot = -1;
    pp_timed_action ta = {*a, 0, 0, next_fv, pp_now_s() - s->r->t0, 0};
    if (rc == 0 && b->clock_mark)
        rc = pp_clock_begin(s, &start_slot, e);
    switch (rc < 0 ? -1 : a->op) {
    case PP_OP_F:
        rc = do_forward(s, a, &ta, e);
        v = ta.version;
        break;
    case PP_OP_B:
        rc = do_backward_input(s, a, &v, e);
        if (rc == 0)
            rc = do_backward_weight(s, a, &v, e);
        break;
    case PP_OP_I:
        rc = do_backward_input(s, a, &v, e);
        break;
    case PP_OP_W:
        rc = do_backward_weight(s, a, &v, e);
        break;
    case PP_OP_OPT:
        rc = do_opt(s, &v, e);
        break;
    case PP_OP_BARRIER:
        rc = run_barrier(s->r, e);
        v = s->ws.current;
        break;
    }
    int sent = (a->op == PP_OP_F && s->s < s->r->P - 1) ||
               ((a->op == PP_OP_B || a->op == PP_OP_I) && s->s > 0);
    if (rc == 0 && sent && s->r->cfg->ncuts)
        rc = pp_stage_keep_for_checkpoint(s, a, idx, e);
    if (rc < 0)
        return action_failed(s, idx, a, e);
    if (pp_weights_pin(&s->ws, next_fv) < 0)
        return pp_errf(e, "stage %d: version %d is not alive", s->s, next_fv);
    ta.version = v;
    s->pos++;
    if (b->clock_mark) { /* queued: its device times are read later */
        ta.end = pp_now_s() - s->r->t0;
        pp_clock_end(s, &ta, start_slot);
        return 0;
    }
    if (b->sync(s->bk, e) < 0)
        return action_failed(s, idx, a, e);
    ta.end = pp_now_s() - s->r->t0;
    return pp_log_push(s, &ta, e);
}

/* Runs one action and, at a checkpoint cut, saves the stage; returns 1
 * when the run stops at this cut. */
static int step(stage_rt *s, const pp_action *a, pp_err *e)
{
    const pp_run_config *c = s->r->cfg;
    if (run_action(s, a, e) < 0)
        return -1;
    for (int j = 0; j < c->ncuts; j++)
        if (c->cuts[j].pos[s->s] == s->pos) {
            if (pp_stage_reach_cut(s, j, e) < 0)
                return -1;
            if (j == c->stop_cut)
                return 1;
        }
    return 0;
}

/* Before a stage's first action: its clock origin and the messages a
 * resumed stage owes its neighbours. */
static int stage_begin(stage_rt *s)
{
    if (s->r->cfg->backend->clock_origin)
        pp_clock_start(s);
    return pp_stage_resend(s, &s->err);
}

/* After a rank's last action, for each of its stages: what is still
 * queued (its errors, then its times; a failed stage waits too, before the
 * buffers its queued work reads are freed), then the stage is done. rc is
 * the stage's own result; `quiet` a stage whose rank failed on another
 * stage: it waits for its work and says nothing. */
static void stage_finish(stage_rt *s, int rc, int quiet)
{
    const pp_backend_ops *b = s->r->cfg->backend;
    int synced = b->sync(s->bk, rc < 0 || quiet ? NULL : &s->err);
    if (rc >= 0 && !quiet && synced < 0)
        rc = pp_err_prefix(&s->err, "stage %d, after its last action", s->s);
    if (rc >= 0 && !quiet && b->clock_mark)
        rc = pp_clock_drain(s, &s->err);
    if (rc < 0) {
        s->failed = 1;
        pp_run_abort(s->r);
    }
    pp_log_close(s);
    if (s->r->cfg->peak_weight_copies)
        s->r->cfg->peak_weight_copies[s->s] = s->ws.peak_copies;
    pthread_mutex_lock(&s->r->mu);
    s->r->stages_done++;
    pthread_cond_broadcast(&s->r->cv);
    pthread_mutex_unlock(&s->r->mu);
}

/* A rank's thread: its stages (one, or V chunks of the model) run the
 * rank's action list in order, each action on its own stage's state;
 * messages between them go through the transport like any other. */
void *pp_rank_main(void *arg)
{
    const pp_rank_rt *k = arg;
    run *r = k->r;
    int st[PP_MAX_RANK_STAGES];
    int n = pp_rank_stages(&r->info, k->rank, st, PP_MAX_RANK_STAGES);
    stage_rt *failed = NULL;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if ((rc = stage_begin(&r->st[st[i]])) < 0)
            failed = &r->st[st[i]];
    /* A stage at the cut the run stops at runs nothing more; the rank
     * stops once all its stages are there (a cut's consistency means none
     * still needs what a stopped stage would send). On resume, each stage
     * first skips the actions it did before its checkpoint. */
    int stopped = 0;
    pp_action a;
    while (rc >= 0 && stopped < n && pp_stream_next(r->ir, k->rank, &a)) {
        stage_rt *s = &r->st[a.op == PP_OP_BARRIER ? st[0] : a.stage];
        if (s->resume_skip > 0) {
            s->resume_skip--;
            continue;
        }
        if (s->stopped)
            continue;
        int got = step(s, &a, &s->err);
        if (got < 0) {
            rc = got;
            failed = s;
        } else if (got == 1) {
            s->stopped = 1;
            stopped++;
            rc = 1;
        }
    }
    for (int i = 0; i < n; i++) {
        stage_rt *s = &r->st[st[i]];
        stage_finish(s, s == failed ? rc : rc > 0 ? 1 : 0, failed && s != failed);
    }
    return NULL;
}
