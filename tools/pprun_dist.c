/* pprun's side of a multi-process run (one process per stage): checking
 * the options, meeting the other processes and connecting the transport,
 * and the final model's validation loss on rank 0. */
#include "pprun_dist.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launch/net.h"
#include "pprun.h"
#include "transport/transport_tcp.h"
#ifdef PPSCHED_HAVE_NCCL
#include "cuda/transport_nccl.h"
#endif

/* What can be checked before meeting the others (bad input, exit 2). */
int pprun_dist_check(const pprun_dist *d, const pp_schedule *ir, const pp_backend_ops *b,
                     const pprun_dist_opts *o, const char **transport, pp_err *e)
{
    int P = ir->info.stages;
    if (d->env.world != P)
        return pp_errf(e, "%d processes (from %s) for %d stages: run one process per stage",
                       d->env.world, d->env.source, P);
    if (o->checkpointing)
        return pp_errf(e, "--checkpoint/--resume: not available in multi-process runs yet");
    if (o->eval_every)
        return pp_errf(e, "--eval-every: multi-process runs evaluate the final model only "
                          "(rank 0 gathers the stages at the end)");
    const char *tr = o->transport ? o->transport : !strcmp(b->name, "cuda") ? "nccl" : "tcp";
    if (strcmp(tr, "tcp") && strcmp(tr, "nccl"))
        return pp_errf(e, "--transport: expected tcp or nccl, not \"%s\"", tr);
#ifndef PPSCHED_HAVE_NCCL
    if (!strcmp(tr, "nccl"))
        return pp_errf(e, "--transport nccl: this build has no NCCL (use --transport tcp)");
#endif
    if (!strcmp(tr, "nccl") && strcmp(b->name, "cuda"))
        return pp_errf(e, "--transport nccl needs --backend cuda");
    if (o->bind) { /* an address of this machine, before any work */
        int port, fd = pp_net_listen(o->bind, 0, &port, e);
        if (fd < 0)
            return pp_err_prefix(e, "--bind %s", o->bind);
        close(fd);
    }
    *transport = tr;
    return 0;
}

int pprun_dist_secret(pprun_dist *d, const pp_store_spec *spec, const char *file, pp_err *e)
{
    if (pp_secret_load(&d->secret, file, e) < 0)
        return -1;
    if (spec->kind == PP_STORE_TCP && d->secret.len == 0)
        return pp_errf(e, "a tcp:// rendezvous needs a job secret: give every rank the same "
                          "PPSCHED_JOB_SECRET (e.g. from openssl rand -hex 16) or "
                          "--job-secret-file FILE");
    return 0;
}

/* A digest of the data that does not read all of a large set: its sizes,
 * its first and last MiB and 64 pieces spread in between. */
static void add_data(pp_job *j, const char *name, const uint16_t *tok, size_t n)
{
    const size_t edge = (size_t)1 << 19, piece = 2048, pieces = 64; /* in tokens */
    size_t cap = 2 * edge + pieces * piece + 1;
    uint16_t *sample = malloc((n < cap ? n : cap) * sizeof *sample + sizeof n);
    if (!sample) { /* a digest of the size alone still catches most mistakes */
        pp_job_bytes(j, name, &n, sizeof n);
        return;
    }
    size_t k = 0;
    if (n <= cap) {
        memcpy(sample, tok, n * sizeof *tok);
        k = n;
    } else {
        memcpy(sample, tok, edge * sizeof *tok);
        k = edge;
        for (size_t i = 0; i < pieces; i++) {
            memcpy(sample + k, tok + edge + (n - 2 * edge - piece) / pieces * i,
                   piece * sizeof *tok);
            k += piece;
        }
        memcpy(sample + k, tok + n - edge, edge * sizeof *tok);
        k += edge;
    }
    memcpy(sample + k, &n, sizeof n);
    pp_job_bytes(j, name, sample, k * sizeof *sample + sizeof n);
    free(sample);
}

void pprun_dist_job(pp_job *j, const pp_schedule *ir, const pp_model_desc *m,
                    const pp_cli_opts *o, const pp_data *data, const char *backend,
                    const char *transport)
{
    const pp_run_opts *r = &o->run;
    pp_job_init(j);
    pp_job_text(j, "schedule", ir->info.name);
    pp_job_hash(j, "schedule IR", pprun_ir_hash(ir));
    pp_job_number(j, "layers", m->layers);
    pp_job_number(j, "model width", m->dim);
    pp_job_number(j, "heads", m->heads);
    pp_job_number(j, "sequence length", m->seq_len);
    pp_job_number(j, "vocabulary", m->vocab);
    pp_job_number(j, "micro-batch size", m->micro_batch);
    add_data(j, "training data", data->train, data->n_train);
    add_data(j, "validation data", data->val, data->n_val);
    pp_job_number(j, "seed", (double)o->seed);
    pp_job_text(j, "data order", r->data_order);
    pp_job_number(j, "eval batches", r->eval_batches);
    pp_job_text(j, "backend", backend);
    pp_job_text(j, "transport", transport);
    pp_job_text(j, "optimizer", o->optimizer);
    pp_job_number(j, "muon momentum", r->muon_momentum);
    pp_job_number(j, "rotate every", r->rotate_every);
    pp_job_text(j, "rotate sides", r->rotate_sides ? r->rotate_sides : "default");
    pp_job_text(j, "rotate basis", r->rotate_basis ? r->rotate_basis : "default");
    pp_job_number(j, "rotate beta", r->rotate_beta);
    pp_job_number(j, "delay correction", o->delay_correction);
    pp_job_number(j, "lr delay correction", r->lr_delay_correction);
    pp_job_number(j, "learning rate", r->lr);
    pp_job_number(j, "min learning rate", r->min_lr);
    pp_job_number(j, "warmup", r->warmup);
    pp_job_number(j, "beta1", r->beta1);
    pp_job_number(j, "beta2", r->beta2);
    pp_job_number(j, "eps", r->eps);
    pp_job_number(j, "weight decay", r->weight_decay);
    pp_job_number(j, "grad clip", r->grad_clip);
}

/* Meets the other processes and connects the transport (run time, exit 1;
 * d->refused when the cause is the user's, exit 2). */
int pprun_dist_connect(pprun_dist *d, const pp_schedule *ir, const char *spec,
                       const char *transport, double timeout_s, const char *bind,
                       const pp_job *job, pp_err *e)
{
    int P = ir->info.stages, rank = d->env.rank;
    pp_store_opts so = {timeout_s, d->secret, bind, job};
    if (pp_store_open(spec, rank, P, &so, &d->store, &d->refused, e) < 0)
        return -1;
    /* as many messages per link as the schedule can have waiting at once */
    int capacity = pp_schedule_link_slots(ir, e);
    if (capacity < 0)
        return -1;
    if (!strcmp(transport, "tcp"))
        return pp_transport_tcp_create(d->store, rank, P, capacity, timeout_s, &d->tr, e);
#ifdef PPSCHED_HAVE_NCCL
    int nb = pp_nccl_ids_bytes(P);
    void *ids = calloc(1, (size_t)nb);
    if (!ids)
        return pp_errf(e, "out of memory");
    int rc = rank == 0 ? pp_nccl_make_ids(P, ids, e) : 0;
    /* rank 0 broadcasts even after a failure, so that nobody waits for it */
    if (pp_store_bcast(d->store, ids, (size_t)nb, rc < 0 ? &(pp_err){{0}} : e) < 0 && rc == 0)
        rc = -1;
    if (rc == 0)
        rc = pp_transport_nccl_create(ir, rank, ids, capacity, timeout_s, &d->tr, e);
    free(ids);
    return rc;
#else
    return -1;
#endif
}

/* The whole model from every stage's final weights, on rank 0's device. */
static int evaluate_on_rank0(const pp_run_config *cfg, void **w, size_t *sizes, double *loss,
                             pp_err *e)
{
    int P = cfg->ir->info.stages;
    const pp_backend_ops *b = cfg->backend;
    const pp_placement *at = cfg->placement ? &cfg->placement[0] : NULL;
    void **stages = calloc((size_t)P, sizeof *stages);
    int rc = stages ? 0 : pp_errf(e, "out of memory");
    for (int s = 0; rc == 0 && s < P; s++) {
        if (b->create(&cfg->model, P, s, at, &stages[s], e) < 0)
            rc = pp_err_prefix(e, "evaluating the final model, stage %d", s);
        else if (sizes[s] != b->nparams(stages[s]) * sizeof(float))
            rc = pp_errf(e, "rank %d sent %zu bytes of weights for stage %d, expected %zu", s,
                         sizes[s], s, b->nparams(stages[s]) * sizeof(float));
    }
    if (rc == 0)
        rc = pp_evaluate(b, &cfg->model, P, stages, w, cfg->val_batch, cfg->data,
                         cfg->eval_batches, loss, e);
    for (int s = 0; stages && s < P; s++)
        if (stages[s])
            b->destroy(stages[s]);
    free(stages);
    return rc;
}

/* The validation loss of a multi-process run: rank 0 collects every
 * stage's final weights and evaluates the whole model on its own device. */
int pprun_dist_evaluate(pprun_dist *d, const pp_run_config *cfg, const pp_run_result *res,
                        double *loss, pp_err *e)
{
    int r = d->env.rank;
    void **w;
    size_t *sizes;
    if (pp_store_gather(d->store, res->final_weights[r], res->final_weight_bytes[r], &w, &sizes,
                        e) < 0)
        return -1;
    int rc = 0;
    if (r == 0)
        rc = evaluate_on_rank0(cfg, w, sizes, loss, e);
    pp_store_free_gathered(d->store, w, sizes);
    /* the last stage's process writes the log: everyone learns the loss */
    struct {
        double loss;
        int32_t ok, pad;
    } verdict = {rc == 0 ? *loss : NAN, rc == 0, 0};
    if (pp_store_bcast(d->store, &verdict, sizeof verdict, rc < 0 ? &(pp_err){{0}} : e) < 0 &&
        rc == 0)
        rc = -1;
    if (rc == 0 && !verdict.ok)
        rc = pp_errf(e, "rank 0 could not evaluate the final model (see its message)");
    if (rc == 0)
        *loss = verdict.loss;
    return rc;
}

void pprun_dist_close(pprun_dist *d)
{
    if (d->tr)
        d->tr->destroy(d->tr);
    pp_store_close(d->store);
    d->tr = NULL;
    d->store = NULL;
}

