/* What pprun writes: the --log line per update and the progress line,
 * what it measures as the actions finish (op times, the metrics), the
 * measured timeline's files and profile, the summary of the measured run
 * and the simulator's prediction from this run's own op times. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "pprun.h"
#include "report.h"

void pprun_on_step(void *ctx, const pp_step_record *r)
{
    run_ctx *c = ctx;
    double tps = r->elapsed_s > 0 ? r->tokens / r->elapsed_s : 0;
    c->last_step = r->step;
    if (c->log) {
        fprintf(c->log, "{\"step\": %d, \"loss\": %.6f", r->step, r->loss);
        if (r->has_val)
            fprintf(c->log, ", \"val_loss\": %.6f", r->val_loss);
        fprintf(c->log, ", \"tokens_per_s\": %.1f, \"lr\": %.6g, \"elapsed_s\": %.3f}\n", tps,
                r->lr, r->elapsed_s);
    }
    if (c->tty && (r->elapsed_s - c->last_print > 0.2 || r->step == c->total_steps)) {
        double eta = r->step > 0 ? r->elapsed_s / r->step * (c->total_steps - r->step) : 0;
        fprintf(stderr, "\rstep %d/%d  loss %.4f%s  %.0f tok/s  ETA %.0f s   ", r->step,
                c->total_steps, r->loss, r->has_val ? " (val)" : "", tps, eta);
        c->last_print = r->elapsed_s;
    }
}

int pprun_measure_init(pprun_measure *m, const pp_ir_info *info, const pp_model_desc *model,
                       int metrics, pp_timeline *mem_out, pp_err *e)
{
    memset(m, 0, sizeof *m);
    m->P = info->stages;
    m->sum = calloc((size_t)m->P, sizeof *m->sum);
    m->n = calloc((size_t)m->P, sizeof *m->n);
    if (!m->sum || !m->n)
        return pp_errf(e, "out of memory");
    if (metrics && pp_acc_init(&m->acc, info, model, 0, mem_out, e) < 0)
        return -1;
    m->metrics = metrics;
    return 0;
}

void pprun_measure_free(pprun_measure *m)
{
    if (m->metrics)
        pp_acc_free(&m->acc);
    free(m->sum);
    free(m->n);
    memset(m, 0, sizeof *m);
}

static void add_time(pprun_measure *m, int stage, const pp_timed_action *a)
{
    m->sum[stage][a->act.op] += a->end - a->start;
    m->n[stage][a->act.op]++;
}

int pprun_measure_action(void *ctx, int stage, const pp_timed_action *a, pp_err *e)
{
    (void)e;
    pprun_measure *m = ctx;
    add_time(m, stage, a);
    if (!m->metrics || m->failed)
        return 0;
    pp_timed_action ta = *a; /* the metrics write the version they derive */
    m->failed = pp_acc_action(&m->acc, stage, &ta, &m->err) < 0;
    return 0; /* reported with the metrics, after the run, as before */
}

void pprun_measure_timeline(pprun_measure *m, const pp_timeline *tl)
{
    for (int s = 0; s < m->P; s++)
        for (size_t i = 0; i < tl->stage[s].count; i++)
            add_time(m, s, &tl->stage[s].items[i]);
}

int pprun_measure_metrics(pprun_measure *m, pp_metrics *out, pp_err *e)
{
    if (!m->metrics)
        return pp_errf(e, "the metrics were not measured");
    if (m->failed) {
        *e = m->err;
        return -1;
    }
    if (pp_acc_finish(&m->acc, out, e) < 0)
        return -1;
    snprintf(out->unit, sizeof out->unit, "s");
    return 0;
}

/* Measured mean op durations per stage: the simulator's cost model. */
static int profile_from_times(const pprun_measure *m, double link_s, pp_cost *c, pp_err *e)
{
    int P = m->P;
    if (pp_cost_init(c, P, e) < 0)
        return -1;
    snprintf(c->unit, sizeof c->unit, "s");
    c->comm_latency = link_s; /* the modelled link, when there is one */
    for (int s = 0; s < P; s++) {
        const double *sum = m->sum[s];
        const long *n = m->n[s];
        double *dst[] = {c->fwd, c->bwd, c->inp, c->wgt, c->opt};
        for (int op = 0; op <= PP_OP_OPT; op++)
            dst[op][s] = n[op] ? sum[op] / n[op] : 0.0;
        if (!n[PP_OP_I]) {
            c->inp[s] = c->bwd[s] / 2;
            c->wgt[s] = c->bwd[s] / 2;
        }
        if (!n[PP_OP_B])
            c->bwd[s] = c->inp[s] + c->wgt[s];
    }
    return 0;
}

static int save_profile(const char *path, const pprun_measure *m, double link_s, pp_err *e)
{
    pp_cost c;
    if (profile_from_times(m, link_s, &c, e) < 0)
        return -1;
    int rc = pp_cost_save_profile(&c, path, e);
    pp_cost_free(&c);
    return rc;
}

int pprun_write_outputs(const pp_cli_opts *o, const pp_timeline *tl, const pprun_measure *m,
                        double link_s, pp_err *e)
{
    if (pp_cli_write_timeline(tl, o->trace, o->svg, o->run.versions, e) < 0)
        return -1;
    if (o->profile && save_profile(o->profile, m, link_s, e) < 0)
        return -1;
    return 0;
}

void pprun_val_coverage(const pp_sampler *s, char *buf, size_t n)
{
    if (s->val_sample > 0) {
        snprintf(buf, n, "%d random batches of %d sequences", s->val_sample, s->B);
        return;
    }
    size_t nseq = pp_data_val_sequences(s->d), B = (size_t)s->B, r = nseq % B;
    int k = snprintf(buf, n, "whole validation split: %zu sequences", nseq);
    if (r && k >= 0 && (size_t)k < n) /* see pp_sampler: the last batch wraps around */
        snprintf(buf + k, n - (size_t)k, ", %zu of them twice to fill the last batch of %zu",
                 B - r, B);
}

/* What the summary needs of the run, from pp_run's result or, in a
 * multi-process run, from the last stage's report. */
void pprun_print_summary(const pp_metrics *met, const pp_dist_summary *sum, double val_loss,
                         const char *val_what, const pp_model_desc *m)
{
    printf("\nmeasured run (times in seconds):\n");
    pp_report_table(stdout, met, m);
    printf("\ntrained %d updates, %.0f tokens in %.1f s (%.0f tokens/s)\n", sum->steps,
           sum->tokens, sum->elapsed_s, sum->elapsed_s > 0 ? sum->tokens / sum->elapsed_s : 0);
    if (sum->steps > 0 && !isnan(val_loss))
        printf("final training loss %.4f, validation loss %.4f (%s) (nats; uniform over %d "
               "symbols: %.4f)\n", sum->last_loss, val_loss, val_what, m->vocab,
               log((double)m->vocab));
    else if (sum->steps > 0)
        printf("final training loss %.4f (nats; uniform over %d symbols: %.4f)\n",
               sum->last_loss, m->vocab, log((double)m->vocab));
}

/* What the simulator predicts for this very IR from this run's own op
 * times (exactly what `ppsim run --profile` computes from the saved
 * profile), printed against the measured figures. */
int pprun_print_prediction(pp_stream *st, const pprun_measure *times, double link_s,
                           const pp_metrics *met, const pp_model_desc *m, pp_err *e)
{
    pp_cost cost;
    pp_metrics pred;
    const pp_ir_info *info = &st->info;
    if (profile_from_times(times, link_s, &cost, e) < 0)
        return -1;
    pp_sim_config cfg = {&cost, m, 0, NULL, NULL, NULL};
    int rc = pp_simulate(st, &cfg, &pred, e);
    pp_cost_free(&cost);
    if (rc < 0)
        return -1;
    double S = info->steps > 0 ? info->steps : 1;
    double err = met->makespan > 0 ? (pred.makespan - met->makespan) / met->makespan : 0;
    printf("\nsimulator fed this run's op times (ppsim run --profile):\n");
    printf("  step time        predicted %.6g s, measured %.6g s, error %+.1f%%\n",
           pred.makespan / S, met->makespan / S, 100.0 * err);
    printf("  bubble           predicted %.1f%%, measured %.1f%%\n",
           100.0 * pred.bubble_fraction, 100.0 * met->bubble_fraction);
    if (pred.has_steady && met->has_steady)
        printf("  steady bubble    predicted %.1f%%, measured %.1f%%\n",
               100.0 * pred.steady_bubble_fraction, 100.0 * met->steady_bubble_fraction);
    printf("PREDICTION schedule=%s stages=%d ranks=%d m=%d steps=%d measured_step_s=%.6g "
           "predicted_step_s=%.6g error=%.4f measured_bubble=%.4f predicted_bubble=%.4f "
           "measured_steady_bubble=%.4f predicted_steady_bubble=%.4f tokens_per_s=%.1f\n",
           info->name, info->stages, info->ranks, info->microbatches_per_step, info->steps,
           met->makespan / S, pred.makespan / S, err, met->bubble_fraction, pred.bubble_fraction,
           met->has_steady ? met->steady_bubble_fraction : -1.0,
           pred.has_steady ? pred.steady_bubble_fraction : -1.0, met->throughput_tokens);
    pp_metrics_free(&pred);
    return 0;
}

void pprun_print_optimizer(const pp_optim_config *c, const double *tau, int P, int T)
{
    if (pp_optim_plain_adamw(c) && !tau)
        return;
    fprintf(stderr, "pprun: optimizer %s", pp_optim_name(c->kind));
    if (c->kind == PP_OPTIM_MUON)
        fprintf(stderr, " (Nesterov momentum %g, Newton-Schulz on the blocks' matrices, AdamW on "
                        "the rest)", c->muon_momentum);
    if (c->kind == PP_OPTIM_ADAMW_ROTATED) {
        fprintf(stderr, " (Adam in the eigenbases of the blocks' matrices, %s side%s, from the "
                        "%s's covariances, new every %d updates, covariance decay ",
                pp_rotate_sides_name(c->rotate_sides), c->rotate_sides == PP_ROTATE_BOTH ? "s" : "",
                c->rotate_basis == PP_ROTATE_MOMENT ? "first moment" : "gradient",
                c->rotate_every);
        if (c->rotate_beta < 0)
            fprintf(stderr, "beta2");
        else
            fprintf(stderr, "%g", c->rotate_beta);
        fprintf(stderr, "; AdamW on the rest)");
    }
    if (c->delay_buffer)
        fprintf(stderr, "; delay correction u + %g (u - u_prev)", c->delay_beta);
    if (tau) {
        fprintf(stderr, "; lr correction over %d updates, stage delays", T);
        for (int s = 0; s < P; s++)
            fprintf(stderr, "%c%g", s ? ',' : ' ', tau[s]);
    }
    fputc('\n', stderr);
}
