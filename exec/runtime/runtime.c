#include "runtime.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime_private.h"

double pp_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void run_abort(run *r)
{
    pthread_mutex_lock(&r->mu);
    r->aborted = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    r->tr->abort(r->tr);
}

/* Evaluation needs the whole model: only a process that runs every stage. */
static int evaluates(const run *r)
{
    return r->cfg->val_batch && r->nloc == r->P;
}

/* A barrier that an aborted run releases with an error. */
static int run_barrier(run *r, pp_err *e)
{
    pthread_mutex_lock(&r->mu);
    int gen = r->bar_gen;
    if (++r->bar_count == r->nloc) {
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

/* --- per-stage preparation ------------------------------------------- */

static int stage_prepare(stage_rt *s, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    const pp_action_list *l = &r->cfg->ir->stage[s->s];
    size_t N = (size_t)r->N;
    s->acts = calloc(N ? N : 1, sizeof *s->acts);
    s->v_f = calloc(N ? N : 1, sizeof *s->v_f);
    s->stash = calloc(N ? N : 1, 1);
    s->loss = calloc(N ? N : 1, sizeof *s->loss);
    s->next_fv = malloc((l->count ? l->count : 1) * sizeof *s->next_fv);
    size_t BT = (size_t)r->cfg->model.micro_batch * r->cfg->model.seq_len;
    s->tokens = malloc(BT * sizeof(int));
    s->targets = malloc(BT * sizeof(int));
    if (!s->acts || !s->v_f || !s->stash || !s->loss || !s->next_fv || !s->tokens || !s->targets)
        return pp_errf(e, "out of memory");
    /* What the stage must know ahead: which backwards read the stash, and
     * which version the next explicit-version forward names. */
    int32_t next = -1;
    for (size_t i = l->count; i-- > 0;) {
        const pp_action *a = &l->items[i];
        s->next_fv[i] = next;
        if (a->op == PP_OP_F)
            next = a->sel == PP_SEL_VERSION ? a->version : -1;
        if ((a->op == PP_OP_B || a->op == PP_OP_I) && a->sel == PP_SEL_STASH)
            s->stash[a->mb] = 1;
    }
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
    if (c->resume_blobs)
        return pp_stage_restore(s, c->resume_blobs[s->s], c->resume_sizes[s->s], &s->start_pos, e);
    return 0;
}

static void stage_release(stage_rt *s)
{
    if (!s->bk) /* not created, or another process's stage */
        return;
    const pp_backend_ops *b = s->r->cfg->backend;
    for (int i = 0; s->acts && i < s->r->N; i++)
        if (s->acts[i])
            b->release(s->bk, s->acts[i]);
    void *bufs[] = {s->grad, s->x_in, s->x_out, s->dx_in, s->dx_out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            b->release(s->bk, bufs[i]);
    if (s->ws.v)
        pp_weights_free(&s->ws);
    free(s->acts);
    free(s->v_f);
    free(s->stash);
    free(s->loss);
    free(s->next_fv);
    free(s->tokens);
    free(s->targets);
    free(s->log.items);
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

static int do_forward(stage_rt *s, const pp_action *a, int *version, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    int mb = a->mb, first = s->s == 0, last = s->s == r->P - 1;
    int v = a->sel == PP_SEL_VERSION ? a->version : s->ws.current;
    void *w = pp_weights_get(&s->ws, v);
    if (!w)
        return pp_errf(e, "F%d: weight version %d is not alive", mb, v);
    size_t nb = b->boundary_floats(s->bk) * sizeof(float);
    if ((first && r->cfg->train_batch(r->cfg->data, mb, s->tokens, s->targets, e) < 0) ||
        (last && !first && r->cfg->train_batch(r->cfg->data, mb, s->tokens, s->targets, e) < 0))
        return -1;
    if (!s->acts[mb] && !(s->acts[mb] = b->alloc(s->bk, b->acts_bytes(s->bk))))
        return pp_errf(e, "out of memory for the activations of micro-batch %d", mb);
    if (b->forward(s->bk, w, first ? s->tokens : NULL, first ? NULL : s->x_in,
                   last ? s->targets : NULL, s->acts[mb], last ? NULL : s->x_out,
                   last ? &s->loss[mb] : NULL, e) < 0)
        return -1;
    s->v_f[mb] = v;
    if (s->stash[mb])
        pp_weights_ref(&s->ws, v, 1);
    record_checksum(s, w, mb, 0);
    *version = v;
    if (!last)
        return r->tr->send(r->tr, s->s, s->s + 1, PP_MSG_ACT, mb, s->x_out, nb, e);
    return 0;
}

/* B or I: the input gradient, sent upstream. */
static int do_backward_input(stage_rt *s, const pp_action *a, int *version, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    int mb = a->mb, first = s->s == 0, last = s->s == r->P - 1;
    int v = s->stash[mb] ? s->v_f[mb] : s->ws.current;
    void *w = pp_weights_get(&s->ws, v);
    if (!w || !s->acts[mb])
        return pp_errf(e, "%s%d: no forward state", pp_op_name(a->op), mb);
    size_t nb = b->boundary_floats(s->bk) * sizeof(float);
    float scale = 1.0f / (float)r->cfg->ir->info.microbatches_per_step;
    b->backward_input(s->bk, w, s->acts[mb], last ? NULL : s->dx_out, first ? NULL : s->dx_in,
                      scale);
    record_checksum(s, w, mb, 1);
    *version = v;
    if (!first)
        return r->tr->send(r->tr, s->s, s->s - 1, PP_MSG_GRAD, mb, s->dx_in, nb, e);
    return 0;
}

/* B or W: the weight gradient, then the micro-batch is done here. */
static void do_backward_weight(stage_rt *s, const pp_action *a)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    int mb = a->mb;
    b->backward_weight(s->bk, s->acts[mb], s->grad);
    b->release(s->bk, s->acts[mb]);
    s->acts[mb] = NULL;
    if (s->stash[mb])
        pp_weights_ref(&s->ws, s->v_f[mb], -1);
    if (s->s == r->P - 1) {
        s->loss_sum += s->loss[mb];
        s->loss_n++;
    }
}

static int deposit_snapshot(stage_rt *s, int k, pp_err *e);
static int report_update(stage_rt *s, pp_err *e);

static int do_opt(stage_rt *s, int *version, pp_err *e)
{
    run *r = s->r;
    const pp_backend_ops *b = r->cfg->backend;
    float lr = pp_lr_at(&r->cfg->lr, s->updates);
    void *w = pp_weights_begin_update(&s->ws, e);
    if (!w)
        return -1;
    b->optimizer_step(s->bk, w, s->grad, lr);
    pp_weights_commit_update(&s->ws);
    s->updates++;
    *version = s->ws.current;
    if (s->s == r->P - 1 && report_update(s, e) < 0)
        return -1;
    int every = r->cfg->eval_every;
    if (evaluates(r) && every > 0 && s->updates % every == 0)
        return deposit_snapshot(s, s->updates, e);
    return 0;
}

/* A message this stage just sent that a checkpoint cut will need. */
static int keep_for_checkpoint(stage_rt *s, size_t idx, pp_err *e)
{
    const pp_run_config *c = s->r->cfg;
    const pp_action *a = &c->ir->stage[s->s].items[idx];
    for (int j = 0; j < c->ncuts; j++) {
        if (!c->cuts[j].keep[s->s][idx] || idx >= c->cuts[j].pos[s->s])
            continue;
        int grad = a->op != PP_OP_F;
        size_t bytes = c->backend->boundary_floats(s->bk) * sizeof(float);
        pp_outbox_msg m = {j, grad ? PP_MSG_GRAD : PP_MSG_ACT, grad ? s->s - 1 : s->s + 1, a->mb,
                           malloc(bytes), bytes};
        pp_outbox_msg *x = realloc(s->outbox, (size_t)(s->noutbox + 1) * sizeof *x);
        if (!m.buf || !x) {
            free(m.buf);
            if (x)
                s->outbox = x;
            return pp_errf(e, "out of memory");
        }
        s->outbox = x;
        c->backend->to_host(s->bk, m.buf, grad ? s->dx_in : s->x_out, bytes);
        s->outbox[s->noutbox++] = m;
    }
    return 0;
}

/* After the stage's K-th OPT: serialise its state for cut j. */
static int reach_cut(stage_rt *s, int j, pp_err *e)
{
    run *r = s->r;
    void *b;
    size_t n;
    if (pp_stage_save(s, j, &b, &n, e) < 0)
        return -1;
    for (int i = 0; i < s->noutbox; i++) /* saved: no longer needed */
        if (s->outbox[i].cut == j) {
            free(s->outbox[i].buf);
            s->outbox[i--] = s->outbox[--s->noutbox];
        }
    pthread_mutex_lock(&r->mu);
    r->cut_blobs[j][s->s] = b;
    r->cut_sizes[j][s->s] = n;
    r->cut_have[j]++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* Waits for the action's input from a neighbour, before the action's clock
 * starts: waiting is idle time, not work. */
static int receive_input(stage_rt *s, const pp_action *a, pp_err *e)
{
    run *r = s->r;
    size_t nb = r->cfg->backend->boundary_floats(s->bk) * sizeof(float);
    if (a->op == PP_OP_F && s->s > 0)
        return r->tr->recv(r->tr, s->s, s->s - 1, PP_MSG_ACT, a->mb, s->x_in, nb, e);
    if ((a->op == PP_OP_B || a->op == PP_OP_I) && s->s < r->P - 1)
        return r->tr->recv(r->tr, s->s, s->s + 1, PP_MSG_GRAD, a->mb, s->dx_out, nb, e);
    return 0;
}

/* The device clock's origin, now, on the host's time line. */
static void clock_restart(stage_rt *s)
{
    s->r->cfg->backend->clock_origin(s->bk);
    s->clock0 = pp_now_s() - s->r->t0;
}

static int run_action(stage_rt *s, size_t idx, pp_err *e)
{
    const pp_action *a = &s->r->cfg->ir->stage[s->s].items[idx];
    const pp_backend_ops *b = s->r->cfg->backend;
    int rc = receive_input(s, a, e), v = 0;
    pp_timed_action ta = {*a, 0, 0, -1, pp_now_s() - s->r->t0, 0};
    if (b->clock_mark)
        b->clock_mark(s->bk, 0);
    switch (rc < 0 ? -1 : a->op) {
    case PP_OP_F:
        rc = do_forward(s, a, &v, e);
        break;
    case PP_OP_B:
        rc = do_backward_input(s, a, &v, e);
        if (rc == 0)
            do_backward_weight(s, a);
        break;
    case PP_OP_I:
        rc = do_backward_input(s, a, &v, e);
        break;
    case PP_OP_W:
        v = s->stash[a->mb] ? s->v_f[a->mb] : s->ws.current;
        do_backward_weight(s, a);
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
        rc = keep_for_checkpoint(s, idx, e);
    if (rc < 0) {
        char buf[32];
        return pp_err_prefix(e, "stage %d, action %zu \"%s\"", s->s, idx,
                             pp_action_format(*a, buf, sizeof buf));
    }
    if (pp_weights_pin(&s->ws, s->next_fv[idx]) < 0)
        return pp_errf(e, "stage %d: version %d is not alive", s->s, s->next_fv[idx]);
    if (b->clock_mark)
        b->clock_mark(s->bk, 1);
    b->sync(s->bk);
    ta.version = v;
    ta.end = pp_now_s() - s->r->t0;
    if (b->clock_read) { /* the device's own times of the work, on the host's time line */
        double t0 = b->clock_read(s->bk, 0), t1 = b->clock_read(s->bk, 1);
        if (t0 >= 0 && t1 >= t0) {
            ta.start = s->clock0 + t0;
            ta.end = s->clock0 + t1;
        }
        /* event times are float milliseconds from the origin: a recent
         * origin keeps them to microseconds */
        if (t1 > 10.0)
            clock_restart(s);
    }
    if (s->log.count == s->log.cap) {
        size_t cap = s->log.cap ? s->log.cap * 2 : 256;
        pp_timed_action *items = realloc(s->log.items, cap * sizeof *items);
        if (!items)
            return pp_errf(e, "out of memory");
        s->log.items = items;
        s->log.cap = cap;
    }
    s->log.items[s->log.count++] = ta;
    return 0;
}

/* Runs one action and, at a checkpoint cut, saves the stage; returns 1
 * when the run stops at this cut. */
static int step(stage_rt *s, size_t i, pp_err *e)
{
    const pp_run_config *c = s->r->cfg;
    if (run_action(s, i, e) < 0)
        return -1;
    for (int j = 0; j < c->ncuts; j++)
        if (c->cuts[j].pos[s->s] == i + 1) {
            if (reach_cut(s, j, e) < 0)
                return -1;
            if (j == c->stop_cut)
                return 1;
        }
    return 0;
}

static void *stage_main(void *arg)
{
    stage_rt *s = arg;
    const pp_action_list *l = &s->r->cfg->ir->stage[s->s];
    if (s->r->cfg->backend->clock_origin)
        clock_restart(s);
    int rc = pp_stage_resend(s, &s->err);
    for (size_t i = s->start_pos; rc == 0 && i < l->count; i++)
        rc = step(s, i, &s->err);
    if (rc < 0) {
        s->failed = 1;
        run_abort(s->r);
    }
    if (s->r->cfg->peak_weight_copies)
        s->r->cfg->peak_weight_copies[s->s] = s->ws.peak_copies;
    pthread_mutex_lock(&s->r->mu);
    s->r->stages_done++;
    pthread_cond_broadcast(&s->r->cv);
    pthread_mutex_unlock(&s->r->mu);
    return NULL;
}

/* --- reports and evaluation ------------------------------------------ */

static int report_update(stage_rt *s, pp_err *e)
{
    run *r = s->r;
    pp_step_record rec = {0};
    rec.step = s->updates;
    rec.loss = s->loss_n ? s->loss_sum / s->loss_n : NAN;
    rec.lr = pp_lr_at(&r->cfg->lr, s->updates - 1);
    rec.elapsed_s = pp_now_s() - r->t0;
    r->tokens += (double)s->loss_n * r->cfg->model.micro_batch * r->cfg->model.seq_len;
    rec.tokens = r->tokens;
    s->loss_sum = 0;
    s->loss_n = 0;
    pthread_mutex_lock(&r->mu);
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

static snapshot *find_snapshot(run *r, int k)
{
    for (int i = 0; i < r->nsnaps; i++)
        if (r->snaps[i].k == k)
            return &r->snaps[i];
    return NULL;
}

/* Copies this stage's weights after update k to the host for the
 * evaluator: the other stages keep training meanwhile. */
static int deposit_snapshot(stage_rt *s, int k, pp_err *e)
{
    run *r = s->r;
    void *host = malloc(s->ws.bytes);
    if (!host)
        return pp_errf(e, "out of memory for an evaluation snapshot");
    r->cfg->backend->to_host(s->bk, host, pp_weights_get(&s->ws, s->ws.current), s->ws.bytes);
    pthread_mutex_lock(&r->mu);
    snapshot *sn = find_snapshot(r, k);
    if (!sn) {
        snapshot *x = realloc(r->snaps, (size_t)(r->nsnaps + 1) * sizeof *x);
        void **w = calloc((size_t)r->P, sizeof *w);
        if (!x || !w) {
            free(w);
            if (x)
                r->snaps = x;
            pthread_mutex_unlock(&r->mu);
            free(host);
            return pp_errf(e, "out of memory");
        }
        r->snaps = x;
        sn = &r->snaps[r->nsnaps++];
        sn->k = k;
        sn->have = 0;
        sn->w = w;
    }
    sn->w[s->s] = host;
    sn->have++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void free_snapshot(run *r, snapshot *sn)
{
    for (int i = 0; i < r->P; i++)
        free(sn->w[i]);
    free(sn->w);
    *sn = r->snaps[--r->nsnaps];
}

int pp_evaluate(const pp_backend_ops *b, const pp_model_desc *m, int P, void **stages,
                void **weights, pp_batch_fn val_batch, void *data, int n, double *loss,
                pp_err *e)
{
    size_t BT = (size_t)m->micro_batch * m->seq_len;
    size_t nb = BT * m->dim * sizeof(float);
    int *tokens = malloc(BT * sizeof *tokens), *targets = malloc(BT * sizeof *targets);
    void **w = calloc((size_t)P, sizeof *w);
    void *x = b->alloc(stages[0], nb), *y = b->alloc(stages[0], nb);
    void **acts = calloc((size_t)P, sizeof *acts);
    int rc = 0;
    if (!tokens || !targets || !w || !x || !y || !acts)
        rc = pp_errf(e, "out of memory for evaluation");
    for (int s = 0; rc == 0 && s < P; s++) {
        size_t bytes = b->nparams(stages[s]) * sizeof(float);
        w[s] = b->alloc(stages[s], bytes);
        acts[s] = b->alloc(stages[s], b->acts_bytes(stages[s]));
        if (!w[s] || !acts[s])
            rc = pp_errf(e, "out of memory for evaluation");
        else
            b->from_host(stages[s], w[s], weights[s], bytes);
    }
    double sum = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        float l = 0;
        rc = val_batch(data, i, tokens, targets, e);
        for (int s = 0; rc == 0 && s < P; s++) {
            rc = b->forward(stages[s], w[s], s == 0 ? tokens : NULL, s == 0 ? NULL : x,
                            s == P - 1 ? targets : NULL, acts[s], s == P - 1 ? NULL : y,
                            s == P - 1 ? &l : NULL, e);
            void *t = x;
            x = y;
            y = t;
        }
        sum += l;
    }
    if (rc == 0)
        *loss = sum / (n > 0 ? n : 1);
    for (int s = 0; s < P; s++) {
        if (w && w[s])
            b->release(stages[s], w[s]);
        if (acts && acts[s])
            b->release(stages[s], acts[s]);
    }
    if (x)
        b->release(stages[0], x);
    if (y)
        b->release(stages[0], y);
    free(w);
    free(acts);
    free(tokens);
    free(targets);
    return rc;
}

/* The main thread: emits step records in order, each with its validation
 * loss once every stage has deposited that snapshot. */
typedef struct {
    void **eval_stages;
    int emitted;
} reporter;

static int report_ready(run *r, reporter *rep, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    while (rep->emitted < r->nrecords) {
        pp_step_record rec = r->records[rep->emitted];
        int want_val = evaluates(r) && c->eval_every > 0 && rec.step % c->eval_every == 0;
        if (want_val) {
            snapshot *sn = find_snapshot(r, rec.step);
            if (!sn || sn->have < r->P)
                return 0;
            pthread_mutex_unlock(&r->mu);
            int rc = pp_evaluate(c->backend, &c->model, r->P, rep->eval_stages, sn->w,
                                 c->val_batch, c->data, c->eval_batches, &rec.val_loss, e);
            pthread_mutex_lock(&r->mu);
            if (rc < 0)
                return -1;
            rec.has_val = 1;
            free_snapshot(r, find_snapshot(r, rec.step));
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

/* Hands complete cuts to the checkpoint writer (called with r->mu held). */
static int checkpoints_ready(run *r, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    for (int j = 0; j < c->ncuts; j++) {
        if (r->cut_have[j] != r->P)
            continue;
        r->cut_have[j] = -1; /* handled */
        double tokens = r->tokens;
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
    return 0;
}

static int supervise(run *r, reporter *rep, pp_err *e)
{
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (rc == 0 && (report_ready(r, rep, e) < 0 || checkpoints_ready(r, e) < 0)) {
            rc = -1;
            pthread_mutex_unlock(&r->mu);
            run_abort(r);
            pthread_mutex_lock(&r->mu);
        }
        if (r->stages_done == r->nloc)
            break;
        pthread_cond_wait(&r->cv, &r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* --- setup and teardown ---------------------------------------------- */

static const pp_placement *placement_of(const pp_run_config *c, int s)
{
    static const pp_placement whole = {0, -1, 0};
    return c->placement ? &c->placement[s] : &whole;
}

static int create_stages(run *r, void ***eval_stages, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    for (int s = r->lo; s < r->lo + r->nloc; s++) {
        r->st[s].r = r;
        r->st[s].s = s;
        if (c->backend->create(&c->model, r->P, s, placement_of(c, s), &r->st[s].bk, e) < 0)
            return pp_err_prefix(e, "stage %d", s);
        if (stage_prepare(&r->st[s], e) < 0)
            return pp_err_prefix(e, "stage %d", s);
    }
    if (!evaluates(r))
        return 0;
    *eval_stages = calloc((size_t)(unsigned)r->P, sizeof **eval_stages);
    if (!*eval_stages)
        return pp_errf(e, "out of memory");
    for (int s = 0; s < r->P; s++)
        if (c->backend->create(&c->model, r->P, s, placement_of(c, s), &(*eval_stages)[s], e) < 0)
            return pp_err_prefix(e, "evaluator stage %d", s);
    return 0;
}

static int keep_final_weights(run *r, pp_run_result *res, pp_err *e)
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

static int final_evaluation(run *r, void **eval_stages, pp_run_result *res, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    void **w = calloc((size_t)r->P, sizeof *w);
    int rc = w ? 0 : pp_errf(e, "out of memory");
    for (int s = 0; rc == 0 && s < r->P; s++) {
        stage_rt *st = &r->st[s];
        if (!(w[s] = malloc(st->ws.bytes)))
            rc = pp_errf(e, "out of memory");
        else
            c->backend->to_host(st->bk, w[s], pp_weights_get(&st->ws, st->ws.current), st->ws.bytes);
    }
    if (rc == 0)
        rc = pp_evaluate(c->backend, &c->model, r->P, eval_stages, w, c->val_batch, c->data,
                         c->eval_batches, &res->final_val_loss, e);
    for (int s = 0; w && s < r->P; s++)
        free(w[s]);
    free(w);
    return rc;
}

static int collect(run *r, pp_run_result *res, pp_err *e)
{
    res->steps = r->nrecords;
    res->step_loss = malloc((size_t)(r->nrecords ? r->nrecords : 1) * sizeof *res->step_loss);
    if (!res->step_loss)
        return pp_errf(e, "out of memory");
    for (int i = 0; i < r->nrecords; i++)
        res->step_loss[i] = r->records[i].loss;
    res->tokens = r->tokens;
    pp_timeline *tl = r->cfg->timeline;
    for (int s = r->lo; tl && s < r->lo + r->nloc; s++)
        for (size_t i = 0; i < r->st[s].log.count; i++)
            if (pp_timeline_add_action(tl, s, &r->st[s].log.items[i]) < 0)
                return pp_errf(e, "out of memory");
    return 0;
}

int pp_run(const pp_run_config *c, pp_run_result *res, pp_err *e)
{
    memset(res, 0, sizeof *res);
    run r;
    memset(&r, 0, sizeof r);
    r.cfg = c;
    r.P = c->ir->info.stages;
    r.N = c->ir->info.total_microbatches;
    if (r.P < 1 || r.P > 4096)
        return pp_errf(e, "bad number of stages %d", r.P);
    r.lo = c->local_first;
    r.nloc = c->local_count ? c->local_count : r.P;
    if (r.lo < 0 || r.nloc < 1 || r.lo + r.nloc > r.P)
        return pp_errf(e, "local stages %d..%d are not stages of a %d-stage schedule", r.lo,
                       r.lo + r.nloc - 1, r.P);
    if (r.nloc < r.P && !c->transport)
        return pp_errf(e, "running %d of %d stages needs a transport to the others", r.nloc,
                       r.P);
    if (r.nloc < r.P && (c->ncuts || c->resume_blobs))
        return pp_errf(e, "checkpoints need every stage in one process");
    for (int st = 0; r.nloc < r.P && st < r.P; st++)
        for (size_t i = 0; i < c->ir->stage[st].count; i++)
            if (c->ir->stage[st].items[i].op == PP_OP_BARRIER)
                return pp_errf(e, "stage %d, action %zu: BARRIER needs every stage in one "
                                  "process", st, i);
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    void **eval_stages = NULL;
    reporter rep = {0};
    pthread_t *threads = calloc((size_t)r.P, sizeof *threads);
    r.st = calloc((size_t)r.P, sizeof *r.st);
    int rc = threads && r.st ? 0 : pp_errf(e, "out of memory");
    r.tokens = c->resume_tokens;
    if (rc == 0 && c->ncuts > 0) {
        r.cut_blobs = calloc((size_t)c->ncuts, sizeof *r.cut_blobs);
        r.cut_sizes = calloc((size_t)c->ncuts, sizeof *r.cut_sizes);
        r.cut_have = calloc((size_t)c->ncuts, sizeof *r.cut_have);
        rc = r.cut_blobs && r.cut_sizes && r.cut_have ? 0 : pp_errf(e, "out of memory");
        for (int j = 0; rc == 0 && j < c->ncuts; j++) {
            r.cut_blobs[j] = calloc((size_t)r.P, sizeof **r.cut_blobs);
            r.cut_sizes[j] = calloc((size_t)r.P, sizeof **r.cut_sizes);
            if (!r.cut_blobs[j] || !r.cut_sizes[j])
                rc = pp_errf(e, "out of memory");
        }
    }
    if (rc == 0)
        rc = create_stages(&r, &eval_stages, e);
    if (rc == 0 && c->transport) {
        r.tr = c->transport;
    } else if (rc == 0) {
        r.own_tr = 1;
        void **bks = malloc((size_t)r.P * sizeof *bks);
        for (int s = 0; bks && s < r.P; s++)
            bks[s] = r.st[s].bk;
        /* room for a step's messages per link: bounded, yet loose enough not
         * to couple the stages more tightly than the schedule does */
        int capacity = c->ir->info.microbatches_per_step + r.P;
        rc = bks ? pp_transport_inproc_create(r.P, capacity, c->timeout_s > 0 ? c->timeout_s : 600,
                                              c->link_s, c->backend, bks, &r.tr, e)
                 : pp_errf(e, "out of memory");
        free(bks);
    }
    for (int s = r.lo; rc == 0 && r.tr->attach && s < r.lo + r.nloc; s++)
        rc = r.tr->attach(r.tr, s, c->backend, r.st[s].bk, e);
    int started = 0;
    if (rc == 0) {
        r.t0 = c->t0 > 0 ? c->t0 : pp_now_s();
        for (; started < r.nloc; started++)
            if (pthread_create(&threads[started], NULL, stage_main, &r.st[r.lo + started]) != 0)
                break;
        if (started < r.nloc) {
            rc = pp_errf(e, "cannot start stage threads");
            run_abort(&r);
            pthread_mutex_lock(&r.mu);
            r.stages_done += r.nloc - started;
            pthread_mutex_unlock(&r.mu);
        }
        rep.eval_stages = eval_stages;
        int src = supervise(&r, &rep, e);
        if (rc == 0)
            rc = src;
    }
    for (int s = 0; s < started; s++)
        pthread_join(threads[s], NULL);
    res->elapsed_s = pp_now_s() - r.t0;
    for (int s = r.lo; s < r.lo + r.nloc && r.st; s++)
        if (r.st[s].failed) { /* the first stage that failed has the cause */
            *e = r.st[s].err;
            rc = -1;
            if (!strstr(e->msg, "aborted"))
                break;
        }
    if (rc == 0)
        rc = collect(&r, res, e);
    if (rc == 0 && c->keep_final_weights)
        rc = keep_final_weights(&r, res, e);
    res->final_val_loss = NAN;
    if (rc == 0 && evaluates(&r))
        rc = final_evaluation(&r, eval_stages, res, e);
    while (r.nsnaps)
        free_snapshot(&r, &r.snaps[0]);
    for (int j = 0; r.cut_blobs && j < c->ncuts; j++) {
        for (int st = 0; r.cut_blobs[j] && st < r.P; st++)
            free(r.cut_blobs[j][st]);
        free(r.cut_blobs[j]);
        if (r.cut_sizes)
            free(r.cut_sizes[j]);
    }
    free(r.cut_blobs);
    free(r.cut_sizes);
    free(r.cut_have);
    free(r.snaps);
    for (int s = 0; eval_stages && s < r.P; s++)
        if (eval_stages[s])
            c->backend->destroy(eval_stages[s]);
    free(eval_stages);
    if (r.tr && r.own_tr)
        r.tr->destroy(r.tr);
    for (int s = 0; r.st && s < r.P; s++)
        stage_release(&r.st[s]);
    free(r.st);
    free(threads);
    free(r.records);
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cv);
    if (rc < 0)
        pp_run_result_free(res);
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
