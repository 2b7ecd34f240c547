/* pprun: train a GPT model by running a schedule IR stage by stage
 * (DESIGN §6, §7). The flow of one run, top to bottom: read the inputs
 * (options, schedule, model, data, checkpoint), run the stages (pp_run),
 * then write what happened (log, timeline files, summary, prediction).
 * The multi-process side is in pprun_dist.c. */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atomic_file.h"
#include "model/cpu_gemm.h"
#include "pprun.h"
#include "pprun_dist.h"

/* Everything one run holds; freed by pprun_free. */
typedef struct {
    pp_cli_opts o;
    pprun_dist dist;
    const pp_backend_ops *backend;
    pp_schedule ir;
    pp_model_desc m;
    run_ctx c;
    int have_data, have_tl;
    pp_atomic_file logf;
    pp_timeline tl;
    pprun_measure meas;
    int have_meas;
    int whole_ir; /* ir holds the action lists (else it is streamed: info only) */
    ckpt_ctx ck;
    void **blobs; /* [P] stage states read by --resume */
    size_t *sizes;
    double tokens0;
    int first_update;
    pp_cut *cuts;
    int ncuts, stop_cut;
    pp_placement *placement;
    int P, multi, writes_log, writes_summary;
    int clip_global; /* --grad-clip by the global norm (a synchronous schedule) */
    pp_optim_config optim;
    double *tau; /* [P] --lr-delay-correction's stage delays, or NULL */
    const char *transport, *rdzv;
    char rdzv_buf[512];
} pprun;

static int fail(int code, const pp_err *e)
{
    pp_err_print(stderr, "pprun", e);
    return code;
}

/* Stage 0 and the last stage call these from their own threads: the
 * sampler is read-only, every batch a function of its index. */
static int train_batch(void *ctx, long index, int *tokens, int *targets, pp_err *e)
{
    (void)e;
    run_ctx *c = ctx;
    pp_sampler_batch(&c->sampler, index, tokens, targets);
    return 0;
}

static int val_batch(void *ctx, long index, int *tokens, int *targets, pp_err *e)
{
    (void)e;
    run_ctx *c = ctx;
    pp_sampler_val_batch(&c->sampler, index, tokens, targets);
    return 0;
}

/* The schedule. A file is held whole, and so is a generated schedule
 * that a multi-process run (its transports, the job's hash) or checkpoints
 * (their cuts) need whole; otherwise the generator is streamed to the run,
 * opened once per pass, so that a long run never holds its IR (its memory
 * would grow with the steps). */
static int open_schedule(pprun *p, pp_err *e)
{
    const pp_cli_opts *o = &p->o;
    p->whole_ir = !o->schedule || o->ir_file || o->csv_file || p->multi || o->run.checkpoint ||
                  o->run.resume;
    if (p->whole_ir)
        return pprun_schedule(o, &p->ir, e);
    pp_stream *st;
    if (pp_generate(o->schedule, &o->gen, &st, e) < 0)
        return -1;
    memset(&p->ir, 0, sizeof p->ir);
    p->ir.info = st->info;
    pp_stream_free(st);
    return 0;
}

static int open_generated(void *ctx, pp_stream **out, pp_err *e)
{
    const pp_cli_opts *o = ctx;
    return pp_generate(o->schedule, &o->gen, out, e);
}

/* A fresh stream over the schedule, held or generated. */
static int open_ir(const pprun *p, pp_stream **out, pp_err *e)
{
    return p->whole_ir ? pp_stream_from_schedule(&p->ir, out, e)
                       : open_generated((void *)&p->o, out, e);
}

static int schedule_synchronous(const pprun *p, pp_err *e)
{
    pp_stream *st;
    if (open_ir(p, &st, e) < 0)
        return -1;
    int sync = pp_stream_synchronous(st, e);
    pp_stream_free(st);
    return sync;
}

/* --lr-delay-correction: each stage's delay, read from the schedule. */
static int stage_delays(pprun *p, pp_err *e)
{
    pp_stream *st;
    if (open_ir(p, &st, e) < 0)
        return -1;
    int rc = pprun_stage_delays(st, &p->m, &p->tau, e);
    pp_stream_free(st);
    return rc;
}

/* Every measured action is kept where a file shows them all, or rank 0
 * gathers them. */
static int keeps_timeline(const pprun *p)
{
    return p->multi || p->o.trace || p->o.svg || p->o.run.versions;
}

static int load_data(const pp_cli_opts *o, run_ctx *c, pp_model_desc *m, pp_err *e)
{
    pp_data_order order;
    if (pp_data_order_parse(o->run.data_order, &order) < 0)
        return pp_errf(e, "--data-order: expected random or sequential, not \"%s\"",
                       o->run.data_order);
    if (!!o->run.data == !!o->run.data_bin)
        return pp_errf(e, "give one of --data FILE (text) or --data-bin FILE (tokens)");
    if (o->run.data) {
        if (pp_data_load_text(&c->data, o->run.data, m->seq_len, e) < 0)
            return -1;
        m->vocab = c->data.vocab; /* a byte vocabulary comes from the file */
    } else if (pp_data_load_bin(&c->data, o->run.data_bin, o->run.val_bin, m->vocab, m->seq_len,
                                e) < 0) {
        return -1;
    }
    pp_sampler_init(&c->sampler, &c->data, m->micro_batch, o->seed, order, o->run.eval_batches);
    if (pp_sampler_val_batches(&c->sampler) > INT_MAX)
        return pp_errf(e, "%s: %zu validation sequences make too many batches of %d: give "
                          "--eval-batches N", c->data.path, pp_data_val_sequences(&c->data),
                       m->micro_batch);
    return 0;
}

/* Model, placement, the multi-process checks, data, timeline, checkpoint
 * and log: everything that can be wrong before training starts (bad input). */
static int prepare(pprun *p, pp_err *e)
{
    const pp_cli_opts *o = &p->o;
    if (pp_cli_model(o, p->P, &p->m, e) < 0)
        return -1;
    if (pprun_optimizer(o, p->backend, &p->optim, e) < 0)
        return -1;
    if (o->run.lr_delay_correction > 0 && stage_delays(p, e) < 0)
        return -1;
    p->m.bytes_per_elem = 4; /* the executor trains in fp32 */
    if (pprun_placement(o, p->backend, &p->ir.info, &p->dist.env, &p->placement, e) < 0)
        return -1;
    p->rdzv = o->run.rendezvous;
    pprun_dist_opts dopts = {o->run.transport, o->run.checkpoint || o->run.resume,
                             o->run.eval_every, o->run.bind};
    if (p->multi &&
        (pprun_dist_check(&p->dist, &p->ir, p->backend, &dopts, &p->transport, e) < 0 ||
         (!p->rdzv &&
          !(p->rdzv = pp_dist_rendezvous(&p->dist.env, p->rdzv_buf, sizeof p->rdzv_buf, e)))))
        return -1;
    pp_store_spec spec;
    if (p->multi && (pp_store_parse(p->rdzv, &spec, e) < 0 ||
                     pprun_dist_secret(&p->dist, &spec, o->run.job_secret_file, e) < 0))
        return -1;
    if (load_data(o, &p->c, &p->m, e) < 0)
        return -1;
    p->have_data = 1;
    if (pp_timeline_init(&p->tl, &p->ir.info, e) < 0)
        return -1;
    p->have_tl = 1;
    snprintf(p->tl.source, sizeof p->tl.source, "measured");
    snprintf(p->tl.unit, sizeof p->tl.unit, "s");
    p->tl.us_per_unit = 1e6;
    const pp_model_desc *m = &p->m;
    p->ck = (ckpt_ctx){o->run.checkpoint ? o->run.checkpoint : o->run.resume,
                       {m->layers, m->dim, m->heads, m->seq_len, m->vocab, p->P}, &p->ir,
                       p->whole_ir ? pprun_ir_hash(&p->ir) : 0, o->seed, &p->c.sampler,
                       &p->optim};
    if (o->run.resume && pprun_read_checkpoint(o->run.resume, &p->ck, &p->blobs, &p->sizes,
                                               &p->tokens0, &p->first_update, e) < 0)
        return -1;
    p->ck.dir = o->run.checkpoint;
    if (pprun_plan_cuts(o, &p->ir, p->first_update, &p->cuts, &p->ncuts, &p->stop_cut, e) < 0)
        return -1;
    /* the metrics of a whole run, fed as the actions finish; a
     * multi-process run computes them from the timeline rank 0 gathers */
    int metrics = !p->multi && !o->run.resume && p->stop_cut < 0;
    p->have_meas = 1;
    if (pprun_measure_init(&p->meas, &p->ir.info, &p->m, metrics,
                           keeps_timeline(p) ? &p->tl : NULL, e) < 0)
        return -1;
    if (p->writes_log && o->run.log) {
        if (pp_atomic_open(&p->logf, o->run.log, e) < 0)
            return -1;
        p->c.log = p->logf.f;
    }
    return 0;
}

static int configure(pprun *p, pp_run_config *cfg, pp_err *e)
{
    const pp_cli_opts *o = &p->o;
    memset(cfg, 0, sizeof *cfg);
    cfg->ir = p->whole_ir ? &p->ir : NULL;
    cfg->open_ir = p->whole_ir ? NULL : open_generated;
    cfg->open_ir_ctx = &p->o;
    cfg->model = p->m;
    cfg->backend = p->backend;
    cfg->placement = p->placement;
    cfg->seed = o->seed;
    cfg->lr = (pp_lr_schedule){(float)o->run.lr,
                               (float)(o->run.min_lr >= 0 ? o->run.min_lr : o->run.lr / 10),
                               o->run.warmup, p->ir.info.steps};
    /* AdamW and clipping; the parser already refused values below 0 */
    const pp_run_opts *r = &o->run;
    if (r->beta1 >= 1 || r->beta2 >= 1)
        return pp_errf(e, "%s: %g is not below 1 (a moment's decay is in [0, 1))",
                       r->beta1 >= 1 ? "--beta1" : "--beta2", r->beta1 >= 1 ? r->beta1 : r->beta2);
    if (!(r->eps > 0))
        return pp_errf(e, "--eps: must be above 0 (it keeps the update finite)");
    cfg->adamw = (pp_adamw_hparams){(float)r->beta1, (float)r->beta2, (float)r->eps,
                                    (float)r->weight_decay};
    cfg->optim = p->optim;
    cfg->lr_delay_tau = p->tau;
    cfg->lr_delay_T = r->lr_delay_correction;
    cfg->grad_clip = r->grad_clip;
    int sync = r->grad_clip > 0 ? schedule_synchronous(p, e) : 0;
    if (sync < 0)
        return -1;
    if (sync && p->multi)
        return pp_errf(e, "--grad-clip: %s clips by the global gradient norm, which needs every "
                          "stage in one process (asynchronous schedules clip per stage)",
                       p->ir.info.name);
    p->clip_global = sync;
    cfg->train_batch = train_batch;
    cfg->val_batch = val_batch;
    cfg->data = &p->c;
    cfg->eval_every = o->run.eval_every;
    cfg->eval_batches = (int)pp_sampler_val_batches(&p->c.sampler);
    cfg->timeout_s = o->run.timeout;
    cfg->threads = o->run.threads;
    cfg->on_step = pprun_on_step;
    cfg->on_step_ctx = &p->c;
    /* the modelled link: latency plus one fp32 boundary tensor over the bandwidth */
    const pp_model_desc *m = &p->m;
    cfg->link_s = o->comm_latency;
    if (o->comm_bandwidth > 0)
        cfg->link_s += (double)m->micro_batch * m->seq_len * m->dim * 4 / o->comm_bandwidth;
    if (p->multi && cfg->link_s > 0)
        return pp_errf(e, "--comm-latency/--comm-bandwidth model the link between stages of one "
                          "process; a multi-process run has real links");
    cfg->timeline = keeps_timeline(p) ? &p->tl : NULL;
    cfg->on_action = p->multi ? NULL : pprun_measure_action;
    cfg->on_action_ctx = &p->meas;
    cfg->cuts = p->cuts;
    cfg->ncuts = p->ncuts;
    cfg->stop_cut = p->stop_cut;
    cfg->on_checkpoint = pprun_write_checkpoint;
    cfg->on_checkpoint_ctx = &p->ck;
    cfg->resume_blobs = p->blobs;
    cfg->resume_sizes = p->sizes;
    cfg->resume_tokens = p->tokens0;
    return 0;
}

static void print_banner(const pprun *p)
{
    const pp_model_desc *m = &p->m;
    char cpu[96] = "";
    if (!strcmp(p->backend->name, "cpu"))
        snprintf(cpu, sizeof cpu, " (%d threads per stage, %s)",
                 pp_run_stage_threads(p->o.run.threads, p->multi ? 1 : p->P), pp_mm_engine());
    fprintf(stderr, "pprun: %s, P=%d, m=%d, %d updates; model %d layers x %d, %d heads, "
                    "seq %d, vocab %d, micro-batch %d; %.2fM parameters; backend %s%s%s\n",
            p->ir.info.name, p->P, p->ir.info.microbatches_per_step, p->ir.info.steps, m->layers,
            m->dim, m->heads, m->seq_len, m->vocab, m->micro_batch,
            pp_model_total_params(m) / 1e6, p->backend->name, cpu,
            p->multi ? ", one process per stage" : "");
    double clip = p->o.run.grad_clip;
    if (clip > 0)
        fprintf(stderr, p->clip_global
                            ? "pprun: gradient clipping: global norm to %g (%s is synchronous: "
                              "the stages' k-th updates add up their norms first)\n"
                            : "pprun: gradient clipping: per stage, each stage's norm to %g * "
                              "sqrt(its parameters / the model's) (%s is asynchronous: a "
                              "global norm would make every update wait for every stage)\n",
                clip, p->ir.info.name);
    pprun_print_optimizer(&p->optim, p->tau, p->P, p->o.run.lr_delay_correction);
}

/* What starts: the checkpoint it resumes from, the run, the clipping. */
static void announce(void *ctx)
{
    const pprun *p = ctx;
    if (p->o.run.resume)
        fprintf(stderr, "pprun: resuming after update %d from %s/%s\n", p->first_update,
                p->o.run.resume, PPRUN_CKPT_NAME);
    if (p->writes_summary)
        print_banner(p);
}

/* After a successful pp_run: the final log line, the timelines (gathered
 * on rank 0 in a multi-process run), the measured metrics, the files, the
 * summary and the prediction. Returns an exit status. */
static int finish(pprun *p, const pp_run_config *cfg, pp_run_result *res, pp_err *e)
{
    /* an output that cannot be written is bad input (its path); in a
     * multi-process run, every failure after connecting is a run-time one */
    int rc = p->multi ? EXIT_RUNTIME : EXIT_BAD_INPUT;
    pp_dist_summary sum = {p->multi ? p->dist.env.rank : p->P - 1, res->steps,
                           res->steps ? res->step_loss[res->steps - 1] : NAN, res->tokens,
                           res->elapsed_s};
    double val_loss = res->final_val_loss;
    if (p->multi && pprun_dist_evaluate(&p->dist, cfg, res, &val_loss, e) < 0)
        return EXIT_RUNTIME;
    if (p->c.log) {
        fprintf(p->c.log, "{\"final\": true, \"steps\": %d", sum.steps);
        if (!isnan(val_loss))
            fprintf(p->c.log, ", \"val_loss\": %.6f", val_loss);
        fprintf(p->c.log, ", \"tokens_per_s\": %.1f}\n",
                sum.elapsed_s > 0 ? sum.tokens / sum.elapsed_s : 0);
        p->c.log = NULL;
        if (pp_atomic_commit(&p->logf, e) < 0)
            return rc;
    }
    if (p->multi) {
        pp_dist_summary last;
        if (pp_dist_gather_timeline(p->dist.store, &p->tl, &sum, &last, e) < 0)
            return EXIT_RUNTIME;
        sum = last;
        if (!p->writes_summary)
            return 0;
    }
    /* the measured metrics, computed as the simulator computes them; they
     * also add the memory counters to the trace */
    pp_metrics met;
    int whole = !p->o.run.resume && p->stop_cut < 0;
    if (p->multi)
        pprun_measure_timeline(&p->meas, &p->tl);
    if (whole && (p->multi ? pp_metrics_from_timeline(&p->tl, &p->m, 0, &p->tl, &met, e)
                           : pprun_measure_metrics(&p->meas, &met, e)) < 0)
        return rc;
    if (pprun_write_outputs(&p->o, &p->tl, &p->meas, cfg->link_s, e) < 0) {
        if (whole)
            pp_metrics_free(&met);
        return rc;
    }
    if (!whole) {
        printf("trained updates %d..%d of %d (%.0f tokens in %.1f s); the measured summary "
               "needs a whole run\n", p->first_update + 1, p->first_update + sum.steps,
               p->ir.info.steps, sum.tokens - p->tokens0, sum.elapsed_s);
        return 0;
    }
    char val_what[128];
    pprun_val_coverage(&p->c.sampler, val_what, sizeof val_what);
    pprun_print_summary(&met, &sum, val_loss, val_what, &p->m);
    pp_stream *st;
    int prc = open_ir(p, &st, e);
    if (prc == 0) {
        prc = pprun_print_prediction(st, &p->meas, cfg->link_s, &met, &p->m, e);
        pp_stream_free(st);
    }
    pp_metrics_free(&met);
    return prc < 0 ? rc : 0;
}

/* SIGINT or SIGTERM: the run stops; the log keeps the updates so far. */
static void on_signal(int sig)
{
    (void)sig;
    pp_run_interrupt();
}

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* An interrupted run: its log, with the updates it reported and a last
 * line saying so, goes to its own path. */
static int interrupted(pprun *p, pp_err *e)
{
    if (p->c.log) {
        fprintf(p->c.log, "{\"interrupted\": true, \"steps\": %d}\n", p->c.last_step);
        p->c.log = NULL;
        if (pp_atomic_commit(&p->logf, e) < 0)
            return EXIT_RUNTIME;
    }
    pp_errf(e, "interrupted after update %d%s%s", p->c.last_step,
            p->o.run.log ? "; the log is in " : "", p->o.run.log ? p->o.run.log : "");
    return EXIT_RUNTIME;
}

/* Prepares, runs and finishes; returns an exit status. */
static int train(pprun *p, pp_err *e)
{
    pp_run_config cfg;
    if (prepare(p, e) < 0 || configure(p, &cfg, e) < 0)
        return EXIT_BAD_INPUT;
    p->c.total_steps = p->ir.info.steps;
    p->c.tty = p->writes_log && isatty(2);
    /* one process: the banner once the stages are ready, so that a resume
     * the runtime refuses is the only line; several: before meeting */
    cfg.on_ready = p->multi ? NULL : announce;
    cfg.on_ready_ctx = p;
    if (p->multi) {
        announce(p);
        pp_job job;
        pprun_dist_job(&job, &p->ir, &p->m, &p->o, &p->c.data, p->backend->name, p->transport);
        if (pprun_dist_connect(&p->dist, &p->ir, p->rdzv, p->transport, p->o.run.timeout,
                               p->o.run.bind, &job, e) < 0)
            return p->dist.refused ? EXIT_BAD_INPUT : EXIT_RUNTIME;
        if (pp_store_strangers(p->dist.store)[0])
            fprintf(stderr, "pprun: note: rendezvous: %s\n", pp_store_strangers(p->dist.store));
        /* a common time origin: every process leaves the barrier together */
        if (pp_store_barrier(p->dist.store, e) < 0)
            return EXIT_RUNTIME;
        cfg.t0 = pp_now_s();
        cfg.local_first = p->dist.env.rank;
        cfg.local_count = 1;
        cfg.transport = p->dist.tr;
        cfg.keep_final_weights = 1;
    }
    pp_run_result res;
    int rc = pp_run(&cfg, &res, e);
    if (p->c.tty)
        fputc('\n', stderr);
    if (rc < 0 && pp_run_interrupted())
        return interrupted(p, e);
    if (rc < 0) {
        if (p->multi)
            pp_err_prefix(e, "rank %d", p->dist.env.rank);
        /* a checkpoint whose stage states make no sense is bad input */
        return res.bad_resume ? EXIT_BAD_INPUT : EXIT_RUNTIME;
    }
    rc = finish(p, &cfg, &res, e);
    pp_run_result_free(&res);
    return rc;
}

static void pprun_free(pprun *p, int failed)
{
    if (failed && p->dist.tr)
        p->dist.tr->abort(p->dist.tr);
    pprun_dist_close(&p->dist);
    free(p->placement);
    free(p->tau);
    for (int j = 0; j < p->ncuts; j++)
        pp_cut_free(&p->cuts[j], p->P);
    free(p->cuts);
    for (int st = 0; p->blobs && st < p->P; st++)
        free(p->blobs[st]);
    free(p->blobs);
    free(p->sizes);
    if (p->c.log)
        pp_atomic_abort(&p->logf);
    if (p->have_tl)
        pp_timeline_free(&p->tl);
    if (p->have_meas)
        pprun_measure_free(&p->meas);
    if (p->have_data)
        pp_data_free(&p->c.data);
    pp_schedule_free(&p->ir);
}

static void print_usage(FILE *f)
{
    fputs(pprun_usage, f);
    pp_cli_help(f, PP_TOOL_RUN);
    fputs(pprun_usage_tail, f);
    fputs("the summary ends with the simulator's prediction from this run's own op times\n"
          "and its error against the measured makespan\n",
          f);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_usage(stdout);
            return 0;
        }
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    pprun p;
    memset(&p, 0, sizeof p);
    pp_err e = {{0}};
    pp_cli_defaults(&p.o, PP_TOOL_RUN);
    if (pprun_parse(&p.o, argc, argv, &e) < 0 || pprun_check_paths(&p.o, &e) < 0)
        return fail(EXIT_BAD_INPUT, &e);
    if (pp_dist_env_detect(&p.dist.env, &e) < 0)
        return fail(EXIT_BAD_INPUT, &e);
    if (!(p.backend = pp_backend_find(p.o.run.backend, &e)))
        return fail(EXIT_BAD_INPUT, &e);
    p.multi = p.dist.env.world > 1;
    if (open_schedule(&p, &e) < 0)
        return fail(EXIT_BAD_INPUT, &e);
    p.P = p.ir.info.stages;
    p.stop_cut = -1;
    /* in a multi-process run, rank r runs stage r; the last stage's process
     * logs the updates, rank 0 writes the timelines and the summary */
    p.writes_log = !p.multi || p.dist.env.rank == p.P - 1;
    p.writes_summary = p.dist.env.rank == 0;
    catch_signals();
    int rc = train(&p, &e);
    pprun_free(&p, rc != 0);
    return rc ? fail(rc, &e) : 0;
}
