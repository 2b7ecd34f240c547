/* pprun's command line: the options (from the shared table, cli.h), and
 * the schedule, stage placement and optimizer they name. */
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "pprun.h"
#include "runtime/placement.h"

const char pprun_usage[] =
    "usage: pprun --schedule NAME --data FILE [options]\n"
    "       pprun --ir FILE --data FILE [options]\n"
    "\n"
    "Trains a GPT model with a pipeline schedule, stage by stage, and reports\n"
    "what really happened (bubble, drift, staleness per stage).\n"
    "\n";

const char pprun_usage_tail[] =
    "optimizers (per stage; --lr, --weight-decay and the AdamW options serve all):\n"
    "  adamw  AdamW on every parameter\n"
    "  muon   the blocks' attention and MLP matrices: momentum M <- mu M + (1-mu) G,\n"
    "         Nesterov N = mu M + (1-mu) G (mu = --muon-momentum, 0.95 as in Keller\n"
    "         Jordan's Muon write-up), orthogonalised by 5 quintic Newton-Schulz\n"
    "         steps X <- a X + (b A + c A A) X, A = X X^T, from X = N / ||N||_F,\n"
    "         transposed when rows > cols, (a,b,c) = (3.4445, -4.7750, 2.0315)\n"
    "         (the same write-up); the update scaled by 0.2 sqrt(max(rows, cols))\n"
    "         to AdamW's RMS (Moonshot's \"Muon is Scalable\", arXiv 2502.16982);\n"
    "         AdamW for the embeddings, output layer, biases and LayerNorm\n"
    "  adamw-rotated  the same matrices W [r][c] take Adam in the bases Q_L, Q_R\n"
    "         of the eigenvectors (LAPACK ssyevd) of running averages L, R of\n"
    "         S S^T and S^T S (S the gradient G, or the first moment m with\n"
    "         --rotate-basis moment; decay --rotate-beta, default beta2), new\n"
    "         at the first update and every --rotate-every K (default 10):\n"
    "         m <- b1 m + (1-b1) G in the original basis, v <- b2 v + (1-b2)\n"
    "         (Q_L^T G Q_R)^2 in the rotated one (kept as it is when the basis\n"
    "         changes), W <- W - lr (Q_L (m~^ / (sqrt(v^) + eps)) Q_R^T + wd W),\n"
    "         m~ = Q_L^T m Q_R, ^ AdamW's bias corrections (Jung, Shin, Lee,\n"
    "         arXiv 2602.03515, whose code's defaults these are); AdamW for\n"
    "         the rest\n"
    "  --delay-correction applies u + BETA (u - u_prev) to any: our reading of\n"
    "  the summary of arXiv 2606.30634, not its exact formula\n"
    "  --lr-delay-correction: tau_s is the most updates a gradient applied on\n"
    "  stage s is late against the weights its forward read (ppsim's age =\n"
    "  staleness + drift: P-1-s for pipedream, 1 for pipedream-2bw), 1 where 0\n";

int pprun_parse(pp_cli_opts *o, int argc, char **argv, pp_err *e)
{
    for (int i = 1; i < argc; i++) {
        int r = pp_cli_option(o, PP_TOOL_RUN, argc, argv, &i, e);
        if (r < 0)
            return -1;
        if (r == 0)
            return pp_errf(e, "unexpected argument \"%s\"", argv[i]);
    }
    return 0;
}

int pprun_check_paths(const pp_cli_opts *o, pp_err *e)
{
    const pp_run_opts *r = &o->run;
    const char *outs[] = {r->log, o->trace, o->svg, r->versions, o->profile};
    const char *dirs[] = {r->checkpoint};
    const char *ins[] = {r->data, r->data_bin, r->val_bin, o->ir_file, o->csv_file};
    return pp_cli_check_outputs(outs, 5, dirs, 1, ins, 5, e);
}

int pprun_schedule(const pp_cli_opts *o, pp_schedule *ir, pp_err *e)
{
    int r = pp_cli_load_ir(o, ir, e);
    if (r <= 0)
        return r;
    if (!o->schedule)
        return pp_errf(e, "give --schedule NAME or --ir FILE");
    if (pp_generate_schedule(o->schedule, &o->gen, ir, e) < 0)
        return -1;
    if (pp_schedule_validate(ir, e) < 0) {
        pp_schedule_free(ir);
        return -1;
    }
    return 0;
}

/* Placement per rank, then per stage: the stages of a rank share its
 * device (and its SM partition). */
int pprun_placement(const pp_cli_opts *o, const pp_backend_ops *b, const pp_ir_info *info,
                    const pp_dist_env *d, pp_placement **out, pp_err *e)
{
    *out = NULL;
    const char *sm = o->run.sm_partitions;
    int partition = !sm || !strcmp(sm, "on");
    if (sm && !partition && strcmp(sm, "off"))
        return pp_errf(e, "--sm-partitions: expected on or off, not \"%s\"", sm);
    if (strcmp(b->name, "cuda")) {
        if (o->run.devices)
            return pp_errf(e, "--devices: only with --backend cuda");
        return 0;
    }
    int R = info->ranks > 0 ? info->ranks : info->stages, P = info->stages;
    pp_placement *per_rank;
    if (pp_placement_plan(o->run.devices, R, d->world > 1 ? d->local_rank : -1, partition,
                          &per_rank, e) < 0)
        return -1;
    if (R == P) {
        *out = per_rank;
        return 0;
    }
    *out = calloc((size_t)P, sizeof **out);
    if (!*out) {
        free(per_rank);
        return pp_errf(e, "out of memory");
    }
    for (int s = 0; s < P; s++)
        (*out)[s] = per_rank[pp_stage_rank(info, s)];
    free(per_rank);
    return 0;
}

/* --rotate-*: adamw-rotated's options into c, refused with another
 * optimizer (they would change nothing). */
static int rotate_options(const pp_run_opts *r, pp_optim_config *c, pp_err *e)
{
    const char *given = r->rotate_every   ? "--rotate-every"
                        : r->rotate_sides ? "--rotate-sides"
                        : r->rotate_basis ? "--rotate-basis"
                        : r->rotate_beta >= 0 ? "--rotate-beta"
                                              : NULL;
    if (c->kind != PP_OPTIM_ADAMW_ROTATED)
        return given ? pp_errf(e, "%s: only with --optimizer adamw-rotated (this run has %s)",
                               given, pp_optim_name(c->kind))
                     : 0;
    if (r->rotate_every)
        c->rotate_every = r->rotate_every;
    if (r->rotate_sides && pp_rotate_sides_parse(r->rotate_sides, &c->rotate_sides, e) < 0)
        return -1;
    if (r->rotate_basis && pp_rotate_basis_parse(r->rotate_basis, &c->rotate_basis, e) < 0)
        return -1;
    if (r->rotate_beta >= 1)
        return pp_errf(e, "--rotate-beta: %g is not below 1 (a decay is in [0, 1))",
                       r->rotate_beta);
    if (r->rotate_beta >= 0)
        c->rotate_beta = (float)r->rotate_beta;
    return 0;
}

int pprun_optimizer(const pp_cli_opts *o, const pp_backend_ops *b, pp_optim_config *out,
                    pp_err *e)
{
    pp_optim_config c = pp_optim_defaults();
    if (pp_optim_parse(o->optimizer, &c.kind, e) < 0 || pp_optim_executable(c.kind, e) < 0)
        return -1;
    if (rotate_options(&o->run, &c, e) < 0)
        return -1;
    double mu = o->run.muon_momentum;
    if (mu >= 0 && c.kind != PP_OPTIM_MUON)
        return pp_errf(e, "--muon-momentum: only with --optimizer muon (this run has %s)",
                       pp_optim_name(c.kind));
    if (mu >= 1)
        return pp_errf(e, "--muon-momentum: %g is not below 1 (a momentum's decay is in [0, 1))",
                       mu);
    if (mu >= 0)
        c.muon_momentum = (float)mu;
    c.delay_buffer = o->delay_correction > 0;
    c.delay_beta = (float)o->delay_correction;
    if (pp_backend_optimizer_init(b, NULL, &c, e) < 0)
        return -1;
    *out = c;
    return 0;
}

int pprun_stage_delays(pp_stream *st, const pp_model_desc *m, double **tau, pp_err *e)
{
    int P = st->info.stages;
    pp_cost cost;
    if (pp_cost_init(&cost, P, e) < 0)
        return -1;
    /* the versions an action reads depend on the order of the actions
     * alone, not on their durations: the default costs will do */
    pp_sim_config sc = {&cost, m, 0, NULL, NULL, NULL};
    pp_metrics met;
    int rc = pp_simulate(st, &sc, &met, e);
    pp_cost_free(&cost);
    if (rc < 0)
        return -1;
    *tau = malloc((size_t)P * sizeof **tau);
    if (!*tau) {
        pp_metrics_free(&met);
        return pp_errf(e, "out of memory");
    }
    for (int s = 0; s < P; s++) {
        int age = met.stage[s].age_max;
        (*tau)[s] = age > 1 ? age : 1;
    }
    pp_metrics_free(&met);
    return 0;
}
