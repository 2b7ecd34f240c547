/* Validation: host snapshots of every stage's weights after an update,
 * deposited by the stages while they keep training, and the loss of the
 * whole model over validation batches on separate evaluator stages. */
#include <stdlib.h>

#include "runtime_private.h"

snapshot *pp_snapshot_find(run *r, int k)
{
    for (int i = 0; i < r->nsnaps; i++)
        if (r->snaps[i].k == k)
            return &r->snaps[i];
    return NULL;
}

/* Copies this stage's weights after update k to the host for the
 * evaluator: the other stages keep training meanwhile. */
int pp_snapshot_deposit(stage_rt *s, int k, pp_err *e)
{
    run *r = s->r;
    void *host = malloc(s->ws.bytes);
    if (!host)
        return pp_errf(e, "out of memory for an evaluation snapshot");
    r->cfg->backend->to_host(s->bk, host, pp_weights_get(&s->ws, s->ws.current), s->ws.bytes);
    pthread_mutex_lock(&r->mu);
    snapshot *sn = pp_snapshot_find(r, k);
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

void pp_snapshot_free(run *r, snapshot *sn)
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
            /* On a GPU each evaluator stage has its own stream: stage s's
             * output must be written before stage s + 1 reads it (and x,
             * read by stage s, is written next by stage s + 1). */
            if (rc == 0)
                rc = b->sync(stages[s], e);
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

int pp_run_final_evaluation(run *r, void **eval_stages, pp_run_result *res, pp_err *e)
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
