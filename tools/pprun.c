/* pprun: train a GPT model by running a schedule IR stage by stage
 * (DESIGN §6, §7). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atomic_file.h"
#include "model/backend.h"
#include "runtime/checkpoint.h"
#include "runtime/cut.h"
#include "cli.h"
#include "model/data.h"
#include "launch/dist.h"
#include "engine.h"
#include "metrics.h"
#include "runtime/placement.h"
#include "report.h"
#include "runtime/runtime.h"
#include "pprun_dist.h"

#define EXIT_BAD_INPUT 2
#define EXIT_RUNTIME 1

static const char usage[] =
    "usage: pprun --schedule NAME --data FILE [options]\n"
    "       pprun --ir FILE --data FILE [options]\n"
    "\n"
    "Trains a GPT model with a pipeline schedule, stage by stage, and reports\n"
    "what really happened (bubble, drift, staleness per stage).\n"
    "\n"
    "training:\n"
    "  --backend cpu|cuda      (default cpu)\n"
    "  --data FILE             text file; vocabulary = its distinct bytes; 90/10 split\n"
    "  --data-bin FILE         llm.c .bin token shard (--val-bin FILE for validation)\n"
    "  --lr X                  peak learning rate (default 1e-3)\n"
    "  --min-lr X              end of the cosine decay (default lr/10)\n"
    "  --warmup N              warm-up updates (default 10)\n"
    "  --seed N                weight initialisation (default 1)\n"
    "  --eval-every N          validation loss every N updates (default 0: at the end)\n"
    "  --eval-batches N        validation batches per evaluation (default 8)\n"
    "  --devices LIST          GPU ids, e.g. 0 or 0,1,2,3 (cuda backend; default 0, or\n"
    "                          the local rank in a multi-process run)\n"
    "  --sm-partitions on|off  stages sharing a GPU each get their own SMs (green\n"
    "                          contexts; default on)\n"
    "  --timeout S             a stage waiting longer fails the run (default 600)\n"
    "  --comm-latency S        model the link between stages of one process: every\n"
    "  --comm-bandwidth B/S    message waits S seconds plus its bytes over B/S bytes\n"
    "                          per second, one at a time per link (as ppsim does)\n"
    "multi-process runs (one process per stage; rank and world size from mpirun,\n"
    "srun or RANK/WORLD_SIZE):\n"
    "  --rendezvous SPEC       tcp://HOST:PORT (rank 0's host), file:DIR (shared\n"
    "                          directory) or mpi; default $PPSCHED_RENDEZVOUS, then\n"
    "                          tcp://$MASTER_ADDR:$MASTER_PORT, then mpi under mpirun\n"
    "  --transport NAME        nccl (default with cuda) or tcp (default with cpu)\n"
    "checkpoints:\n"
    "  --checkpoint DIR        write DIR/checkpoint.ckpt (atomically) at the cuts below\n"
    "  --checkpoint-every K    after every K-th update (each overwrites the last)\n"
    "  --stop-after K          checkpoint after update K and stop there\n"
    "  --resume DIR            continue a run from DIR/checkpoint.ckpt (same schedule\n"
    "                          and model options); losses continue bit for bit on cpu\n"
    "outputs:\n"
    "  --log FILE.jsonl        one JSON line per update: step, loss, val_loss, tokens_per_s, lr\n"
    "  --versions FILE.csv     stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,b_end (s)\n"
    "  --trace FILE.json       Chrome trace of the measured run\n"
    "  --svg FILE.svg          timeline picture of the measured run\n"
    "  --profile FILE.json     measured per-stage op times (ppsim --profile FILE)\n"
    "the summary ends with the simulator's prediction from this run's own op times\n"
    "and its error against the measured makespan\n"
    "\n";

typedef struct {
    pp_cli_opts cli;
    const char *backend, *data, *data_bin, *val_bin, *log, *versions, *trace, *svg, *profile;
    const char *devices, *checkpoint, *resume, *rendezvous, *transport, *sm_partitions;
    double lr, min_lr, timeout;
    int warmup, eval_every, eval_batches, checkpoint_every, stop_after;
} pprun_opts;

#define CKPT_NAME "checkpoint.ckpt"

typedef struct {
    const char *dir;
    pp_ckpt_shape shape;
    const pp_schedule *ir;
    uint64_t ir_hash;
} ckpt_ctx;

typedef struct {
    pp_data data;
    pp_loader base;   /* training batches: micro-batch mb = base + mb */
    int B;
    FILE *log;
    int total_steps;
    int tty;
    double last_print;
} run_ctx;

static int fail(int code, const pp_err *e)
{
    fprintf(stderr, "pprun: error: %s\n", e->msg);
    return code;
}

static int parse(pprun_opts *o, int argc, char **argv, pp_err *e)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = pp_cli_shared_option(&o->cli, argc, argv, &i, e);
        if (r < 0)
            return -1;
        if (r > 0)
            continue;
        struct { const char *flag; const char **dst; } strs[] = {
            {"--backend", &o->backend}, {"--data", &o->data}, {"--data-bin", &o->data_bin},
            {"--val-bin", &o->val_bin}, {"--log", &o->log}, {"--versions", &o->versions},
            {"--trace", &o->trace}, {"--svg", &o->svg}, {"--devices", &o->devices},
            {"--checkpoint", &o->checkpoint}, {"--resume", &o->resume},
            {"--rendezvous", &o->rendezvous}, {"--transport", &o->transport},
            {"--sm-partitions", &o->sm_partitions},
        };
        int done = 0;
        for (size_t k = 0; k < sizeof strs / sizeof strs[0] && !done; k++)
            if (pp_cli_is(a, strs[k].flag)) {
                if (!(*strs[k].dst = pp_cli_value(argc, argv, &i, strs[k].flag, e)))
                    return -1;
                if (!**strs[k].dst)
                    return pp_errf(e, "%s: empty value", strs[k].flag);
                done = 1;
            }
        if (done)
            continue;
        struct { const char *flag; double *dst; double min; } dbls[] = {
            {"--lr", &o->lr, 0}, {"--min-lr", &o->min_lr, 0}, {"--timeout", &o->timeout, 0.001},
        };
        for (size_t k = 0; k < sizeof dbls / sizeof dbls[0] && !done; k++)
            if (pp_cli_is(a, dbls[k].flag)) {
                const char *v = pp_cli_value(argc, argv, &i, dbls[k].flag, e);
                if (!v || pp_cli_parse_double(dbls[k].flag, v, dbls[k].min, dbls[k].dst, e) < 0)
                    return -1;
                done = 1;
            }
        struct { const char *flag; int *dst; long min; } ints[] = {
            {"--warmup", &o->warmup, 0}, {"--eval-every", &o->eval_every, 0},
            {"--eval-batches", &o->eval_batches, 1},
            {"--checkpoint-every", &o->checkpoint_every, 1}, {"--stop-after", &o->stop_after, 1},
        };
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !done; k++)
            if (pp_cli_is(a, ints[k].flag)) {
                const char *v = pp_cli_value(argc, argv, &i, ints[k].flag, e);
                if (!v || pp_cli_parse_int(ints[k].flag, v, ints[k].min, 1 << 30, ints[k].dst, e) < 0)
                    return -1;
                done = 1;
            }
        if (done)
            continue;
        return pp_errf(e, a[0] == '-' ? "unknown option \"%s\" (see pprun --help)"
                                      : "unexpected argument \"%s\"", a);
    }
    return 0;
}

static int train_batch(void *ctx, long index, int *tokens, int *targets, pp_err *e)
{
    (void)e;
    run_ctx *c = ctx;
    pp_loader_peek(&c->base, index, tokens, targets);
    return 0;
}

static int val_batch(void *ctx, long index, int *tokens, int *targets, pp_err *e)
{
    (void)e;
    run_ctx *c = ctx;
    pp_data_val_batch(&c->data, c->B, index, tokens, targets);
    return 0;
}

static void on_step(void *ctx, const pp_step_record *r)
{
    run_ctx *c = ctx;
    double tps = r->elapsed_s > 0 ? r->tokens / r->elapsed_s : 0;
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

/* Measured mean op durations per stage: the simulator's cost model. */
static int profile_from_timeline(const pp_timeline *tl, double link_s, pp_cost *c, pp_err *e)
{
    int P = tl->info.stages;
    if (pp_cost_init(c, P, e) < 0)
        return -1;
    snprintf(c->unit, sizeof c->unit, "s");
    c->comm_latency = link_s; /* the modelled link, when there is one */
    for (int s = 0; s < P; s++) {
        double sum[PP_OP_COUNT] = {0};
        int n[PP_OP_COUNT] = {0};
        for (size_t i = 0; i < tl->stage[s].count; i++) {
            const pp_timed_action *a = &tl->stage[s].items[i];
            sum[a->act.op] += a->end - a->start;
            n[a->act.op]++;
        }
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

static int save_profile(const char *path, const pp_timeline *tl, double link_s, pp_err *e)
{
    pp_cost c;
    if (profile_from_timeline(tl, link_s, &c, e) < 0)
        return -1;
    int rc = pp_cost_save_profile(&c, path, e);
    pp_cost_free(&c);
    return rc;
}

/* What the simulator predicts for this very IR from this run's own op
 * times (exactly what `ppsim run --profile` computes from the saved
 * profile), printed against the measured figures. */
static int print_prediction(const pp_schedule *ir, const pp_timeline *tl, double link_s,
                            const pp_metrics *met, const pp_model_desc *m, pp_err *e)
{
    pp_cost cost;
    pp_stream *st = NULL;
    pp_metrics pred;
    if (profile_from_timeline(tl, link_s, &cost, e) < 0)
        return -1;
    pp_sim_config cfg = {&cost, m, 0, NULL};
    int rc = pp_stream_from_schedule(ir, &st, e);
    if (rc == 0)
        rc = pp_simulate(st, &cfg, &pred, e);
    if (st)
        pp_stream_free(st);
    pp_cost_free(&cost);
    if (rc < 0)
        return -1;
    double S = ir->info.steps > 0 ? ir->info.steps : 1;
    double err = met->makespan > 0 ? (pred.makespan - met->makespan) / met->makespan : 0;
    printf("\nsimulator fed this run's op times (ppsim run --profile):\n");
    printf("  step time        predicted %.6g s, measured %.6g s, error %+.1f%%\n",
           pred.makespan / S, met->makespan / S, 100.0 * err);
    printf("  bubble           predicted %.1f%%, measured %.1f%%\n",
           100.0 * pred.bubble_fraction, 100.0 * met->bubble_fraction);
    if (pred.has_steady && met->has_steady)
        printf("  steady bubble    predicted %.1f%%, measured %.1f%%\n",
               100.0 * pred.steady_bubble_fraction, 100.0 * met->steady_bubble_fraction);
    printf("PREDICTION schedule=%s stages=%d m=%d steps=%d measured_step_s=%.6g "
           "predicted_step_s=%.6g error=%.4f measured_bubble=%.4f predicted_bubble=%.4f "
           "measured_steady_bubble=%.4f predicted_steady_bubble=%.4f tokens_per_s=%.1f\n",
           ir->info.name, ir->info.stages, ir->info.microbatches_per_step, ir->info.steps,
           met->makespan / S, pred.makespan / S, err, met->bubble_fraction, pred.bubble_fraction,
           met->has_steady ? met->steady_bubble_fraction : -1.0,
           pred.has_steady ? pred.steady_bubble_fraction : -1.0, met->throughput_tokens);
    pp_metrics_free(&pred);
    return 0;
}

/* Stage -> GPU (and SM partition) for the cuda backend; NULL for the CPU. */
static int plan_placement(const pprun_opts *o, const pp_backend_ops *b, int P,
                          const pp_dist_env *d, pp_placement **out, pp_err *e)
{
    *out = NULL;
    int partition = !o->sm_partitions || !strcmp(o->sm_partitions, "on");
    if (o->sm_partitions && !partition && strcmp(o->sm_partitions, "off"))
        return pp_errf(e, "--sm-partitions: expected on or off, not \"%s\"", o->sm_partitions);
    if (strcmp(b->name, "cuda")) {
        if (o->devices)
            return pp_errf(e, "--devices: only with --backend cuda");
        return 0;
    }
    return pp_placement_plan(o->devices, P, d->world > 1 ? d->local_rank : -1, partition, out, e);
}

static int load_data(const pprun_opts *o, run_ctx *c, pp_model_desc *m, pp_err *e)
{
    if (!!o->data == !!o->data_bin)
        return pp_errf(e, "give one of --data FILE (text) or --data-bin FILE (tokens)");
    if (o->data) {
        if (pp_data_load_text(&c->data, o->data, m->seq_len, e) < 0)
            return -1;
        m->vocab = c->data.vocab; /* a byte vocabulary comes from the file */
    } else if (pp_data_load_bin(&c->data, o->data_bin, o->val_bin, m->vocab, m->seq_len, e) < 0) {
        return -1;
    }
    c->B = m->micro_batch;
    pp_loader_init(&c->base, &c->data, c->B);
    return 0;
}

static int open_outputs(const pprun_opts *o, run_ctx *c, pp_atomic_file *logf, pp_err *e)
{
    if (!o->log)
        return 0;
    if (pp_atomic_open(logf, o->log, e) < 0)
        return -1;
    c->log = logf->f;
    return 0;
}

static int write_outputs(const pprun_opts *o, const pp_timeline *tl, double link_s, pp_err *e)
{
    if (pp_cli_write_timeline(tl, o->trace, o->svg, o->versions, e) < 0)
        return -1;
    if (o->profile && save_profile(o->profile, tl, link_s, e) < 0)
        return -1;
    return 0;
}

static int get_schedule(const pprun_opts *o, pp_schedule *ir, pp_err *e)
{
    int r = pp_cli_load_ir(&o->cli, ir, e);
    if (r <= 0)
        return r;
    if (!o->cli.schedule)
        return pp_errf(e, "give --schedule NAME or --ir FILE");
    if (pp_generate_schedule(o->cli.schedule, &o->cli.gen, ir, e) < 0)
        return -1;
    if (pp_schedule_validate(ir, e) < 0) {
        pp_schedule_free(ir);
        return -1;
    }
    return 0;
}

/* FNV-1a over the action lists: a resume must run the very same IR. */
static uint64_t ir_hash(const pp_schedule *ir)
{
    uint64_t h = 1469598103934665603ULL;
    for (int s = 0; s < ir->info.stages; s++)
        for (size_t i = 0; i < ir->stage[s].count; i++) {
            const pp_action *a = &ir->stage[s].items[i];
            int32_t v[4] = {a->op, a->sel, a->mb, a->version};
            const unsigned char *p = (const unsigned char *)v;
            for (size_t k = 0; k < sizeof v; k++)
                h = (h ^ p[k]) * 1099511628211ULL;
        }
    return h;
}

static int write_checkpoint(void *ctx, int K, void **blobs, size_t *sizes, double tokens,
                            pp_err *e)
{
    ckpt_ctx *c = ctx;
    pp_ckpt_writer w;
    if (pp_ckpt_writer_open(&w, c->dir, CKPT_NAME, &c->shape, e) < 0)
        return -1;
    char run[512];
    int n = snprintf(run, sizeof run,
                     "{\"schedule\": \"%s\", \"stages\": %d, \"microbatches_per_step\": %d, "
                     "\"steps\": %d, \"update\": %d, \"tokens\": %.0f, \"ir_hash\": \"%016llx\"}",
                     c->ir->info.name, c->ir->info.stages, c->ir->info.microbatches_per_step,
                     c->ir->info.steps, K, tokens, (unsigned long long)c->ir_hash);
    if (pp_ckpt_writer_add(&w, "run.json", run, (size_t)n, e) < 0)
        goto fail;
    for (int s = 0; s < c->ir->info.stages; s++) {
        char name[32];
        snprintf(name, sizeof name, "stage%d", s);
        if (pp_ckpt_writer_add(&w, name, blobs[s], sizes[s], e) < 0)
            goto fail;
    }
    if (pp_ckpt_writer_commit(&w, e) < 0)
        return -1;
    fprintf(stderr, "%spprun: checkpoint after update %d in %s/%s\n", isatty(2) ? "\n" : "", K,
            c->dir, CKPT_NAME);
    return 0;
fail:
    pp_ckpt_writer_abort(&w);
    return -1;
}

/* Reads --resume DIR: checks model shape and IR, returns per-stage blobs. */
static int read_checkpoint(const char *dir, const ckpt_ctx *want, void ***blobs,
                           size_t **sizes, double *tokens, int *update, pp_err *e)
{
    pp_ckpt_reader r;
    if (pp_ckpt_open(&r, dir, CKPT_NAME, e) < 0)
        return -1;
    int P = want->ir->info.stages, rc = pp_ckpt_check_shape(&r, &want->shape, e);
    char *run = NULL;
    size_t n;
    if (rc == 0)
        rc = pp_ckpt_read_alloc(&r, "run.json", (void **)&run, &n, e);
    char hash[32];
    snprintf(hash, sizeof hash, "\"%016llx\"", (unsigned long long)want->ir_hash);
    if (rc == 0 && !strstr(run, hash))
        rc = pp_errf(e, "%s: checkpoint was written by another schedule (%s); resume with the "
                        "same --schedule/--stages/--microbatches/--steps", dir, run);
    const char *u = rc == 0 ? strstr(run, "\"update\": ") : NULL;
    const char *t = rc == 0 ? strstr(run, "\"tokens\": ") : NULL;
    if (rc == 0 && (!u || !t))
        rc = pp_errf(e, "%s: checkpoint run record is damaged", dir);
    if (rc == 0) {
        *update = atoi(u + 10);
        *tokens = atof(t + 10);
        *blobs = calloc((size_t)P, sizeof **blobs);
        *sizes = calloc((size_t)P, sizeof **sizes);
        if (!*blobs || !*sizes)
            rc = pp_errf(e, "out of memory");
    }
    for (int s = 0; rc == 0 && s < P; s++) {
        char name[32];
        snprintf(name, sizeof name, "stage%d", s);
        rc = pp_ckpt_read_alloc(&r, name, &(*blobs)[s], &(*sizes)[s], e);
    }
    free(run);
    pp_ckpt_close(&r);
    return rc;
}

/* Cuts at every K-th update and at --stop-after. */
static int plan_cuts(const pprun_opts *o, const pp_schedule *ir, int first_update, pp_cut **cuts,
                     int *ncuts, int *stop_cut, pp_err *e)
{
    *cuts = NULL;
    *ncuts = 0;
    *stop_cut = -1;
    if (!o->checkpoint) {
        if (o->checkpoint_every || o->stop_after)
            return pp_errf(e, "--checkpoint-every and --stop-after need --checkpoint DIR");
        return 0;
    }
    int S = ir->info.steps, cap = 0;
    for (int K = first_update + 1; K < S; K++) {
        int every = o->checkpoint_every && K % o->checkpoint_every == 0;
        if (!every && K != o->stop_after)
            continue;
        if (*ncuts == cap) {
            cap = cap ? cap * 2 : 8;
            pp_cut *x = realloc(*cuts, (size_t)cap * sizeof *x);
            if (!x)
                return pp_errf(e, "out of memory");
            *cuts = x;
        }
        if (pp_cut_plan(ir, K, &(*cuts)[*ncuts], e) < 0)
            return -1;
        if (K == o->stop_after)
            *stop_cut = *ncuts;
        (*ncuts)++;
    }
    if (o->stop_after && *stop_cut < 0)
        return pp_errf(e, "--stop-after %d: must be between %d and %d updates", o->stop_after,
                       first_update + 1, S - 1);
    if (!*ncuts)
        return pp_errf(e, "--checkpoint: give --checkpoint-every K or --stop-after K (below %d)", S);
    return 0;
}

/* What the summary needs of the run, from pp_run's result or, in a
 * multi-process run, from the last stage's report. */
static void print_summary(const pp_metrics *met, const pp_dist_summary *sum, double val_loss,
                          const pp_model_desc *m)
{
    printf("\nmeasured run (times in seconds):\n");
    pp_report_table(stdout, met, m);
    printf("\ntrained %d updates, %.0f tokens in %.1f s (%.0f tokens/s)\n", sum->steps,
           sum->tokens, sum->elapsed_s, sum->elapsed_s > 0 ? sum->tokens / sum->elapsed_s : 0);
    if (sum->steps > 0 && !isnan(val_loss))
        printf("final training loss %.4f, validation loss %.4f (nats; uniform over %d symbols: "
               "%.4f)\n", sum->last_loss, val_loss, m->vocab, log((double)m->vocab));
    else if (sum->steps > 0)
        printf("final training loss %.4f (nats; uniform over %d symbols: %.4f)\n",
               sum->last_loss, m->vocab, log((double)m->vocab));
}

static void set_run_config(pp_run_config *cfg, const pprun_opts *o, const pp_schedule *ir,
                           const pp_model_desc *m, const pp_backend_ops *backend, run_ctx *c)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->ir = ir;
    cfg->model = *m;
    cfg->backend = backend;
    cfg->seed = o->cli.seed;
    int updates = ir->info.steps;
    cfg->lr = (pp_lr_schedule){(float)o->lr, (float)(o->min_lr >= 0 ? o->min_lr : o->lr / 10),
                               o->warmup, updates};
    cfg->train_batch = train_batch;
    cfg->val_batch = val_batch;
    cfg->data = c;
    cfg->eval_every = o->eval_every;
    cfg->eval_batches = o->eval_batches;
    cfg->timeout_s = o->timeout;
    cfg->on_step = on_step;
    cfg->on_step_ctx = c;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            fputs(pp_cli_shared_help, stdout);
            return 0;
        }
    pprun_opts o;
    memset(&o, 0, sizeof o);
    pp_cli_defaults(&o.cli, "tiny");
    o.backend = "cpu";
    o.lr = 1e-3;
    o.min_lr = -1;
    o.warmup = 10;
    o.eval_batches = 8;
    o.timeout = 600;
    pp_err e = {{0}};
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_BAD_INPUT;
    }
    if (parse(&o, argc, argv, &e) < 0)
        return fail(EXIT_BAD_INPUT, &e);
    o.profile = o.cli.profile; /* for pprun, --profile is an output */
    if (o.cli.fwd || o.cli.bwd || o.cli.opt || o.cli.straggler || o.cli.jitter > 0) {
        pp_errf(&e, "--fwd/--bwd/--opt/--jitter/--straggler are simulator options; "
                    "pprun measures");
        return fail(EXIT_BAD_INPUT, &e);
    }
    pprun_dist dist;
    memset(&dist, 0, sizeof dist);
    if (pp_dist_env_detect(&dist.env, &e) < 0)
        return fail(EXIT_BAD_INPUT, &e);
    const pp_backend_ops *backend = pp_backend_find(o.backend, &e);
    if (!backend)
        return fail(EXIT_BAD_INPUT, &e);
    pp_schedule ir;
    if (get_schedule(&o, &ir, &e) < 0)
        return fail(EXIT_BAD_INPUT, &e);
    run_ctx c;
    memset(&c, 0, sizeof c);
    pp_model_desc m;
    int rc = EXIT_BAD_INPUT;
    pp_atomic_file logf = {0};
    pp_timeline tl;
    int have_tl = 0, have_data = 0;
    void **blobs = NULL;
    size_t *sizes = NULL;
    double tokens0 = 0;
    int first_update = 0, ncuts = 0, stop_cut = -1;
    pp_cut *cuts = NULL;
    pp_placement *placement = NULL;
    int P = ir.info.stages, multi = dist.env.world > 1;
    /* in a multi-process run, rank r runs stage r; the last stage's process
     * logs the updates, rank 0 writes the timelines and the summary */
    int writes_log = !multi || dist.env.rank == P - 1, writes_summary = dist.env.rank == 0;
    if (pp_cli_model(&o.cli, P, &m, &e) < 0)
        goto out;
    m.bytes_per_elem = 4; /* the executor trains in fp32 */
    if (plan_placement(&o, backend, P, &dist.env, &placement, &e) < 0)
        goto out;
    const char *transport = NULL, *rdzv = o.rendezvous;
    char rdzv_buf[512];
    pprun_dist_opts dopts = {o.transport, o.checkpoint || o.resume, o.eval_every};
    if (multi && (pprun_dist_check(&dist, &ir, backend, &dopts, &transport, &e) < 0 ||
                  (!rdzv && !(rdzv = pp_dist_rendezvous(&dist.env, rdzv_buf, sizeof rdzv_buf, &e)))))
        goto out;
    if (load_data(&o, &c, &m, &e) < 0)
        goto out;
    have_data = 1;
    if (pp_timeline_init(&tl, &ir.info, &e) < 0)
        goto out;
    have_tl = 1;
    snprintf(tl.source, sizeof tl.source, "measured");
    snprintf(tl.unit, sizeof tl.unit, "s");
    tl.us_per_unit = 1e6;
    ckpt_ctx ck = {o.checkpoint ? o.checkpoint : o.resume,
                   {m.layers, m.dim, m.heads, m.seq_len, m.vocab, P}, &ir, ir_hash(&ir)};
    if (o.resume && read_checkpoint(o.resume, &ck, &blobs, &sizes, &tokens0, &first_update, &e) < 0)
        goto out;
    ck.dir = o.checkpoint;
    if (plan_cuts(&o, &ir, first_update, &cuts, &ncuts, &stop_cut, &e) < 0)
        goto out;
    if (writes_log && open_outputs(&o, &c, &logf, &e) < 0)
        goto out;
    pp_run_config cfg;
    set_run_config(&cfg, &o, &ir, &m, backend, &c);
    cfg.placement = placement;
    /* the modelled link: latency plus one fp32 boundary tensor over the bandwidth */
    cfg.link_s = o.cli.comm_latency;
    if (o.cli.comm_bandwidth > 0)
        cfg.link_s += (double)m.micro_batch * m.seq_len * m.dim * 4 / o.cli.comm_bandwidth;
    if (multi && cfg.link_s > 0) {
        pp_errf(&e, "--comm-latency/--comm-bandwidth model the link between stages of one "
                    "process; a multi-process run has real links");
        goto out;
    }
    cfg.timeline = &tl;
    cfg.cuts = cuts;
    cfg.ncuts = ncuts;
    cfg.stop_cut = stop_cut;
    cfg.on_checkpoint = write_checkpoint;
    cfg.on_checkpoint_ctx = &ck;
    cfg.resume_blobs = blobs;
    cfg.resume_sizes = sizes;
    cfg.resume_tokens = tokens0;
    if (o.resume)
        fprintf(stderr, "pprun: resuming after update %d from %s/%s\n", first_update, o.resume,
                CKPT_NAME);
    c.total_steps = ir.info.steps;
    c.tty = writes_log && isatty(2);
    if (writes_summary)
        fprintf(stderr, "pprun: %s, P=%d, m=%d, %d updates; model %d layers x %d, %d heads, "
                        "seq %d, vocab %d, micro-batch %d; %.2fM parameters; backend %s%s\n",
                ir.info.name, P, ir.info.microbatches_per_step, ir.info.steps, m.layers, m.dim,
                m.heads, m.seq_len, m.vocab, m.micro_batch, pp_model_total_params(&m) / 1e6,
                backend->name, multi ? ", one process per stage" : "");
    if (multi) {
        rc = EXIT_RUNTIME;
        if (pprun_dist_connect(&dist, &ir, rdzv, transport, o.timeout, &e) < 0)
            goto out;
        /* a common time origin: every process leaves the barrier together */
        if (pp_store_barrier(dist.store, &e) < 0)
            goto out;
        cfg.t0 = pp_now_s();
        cfg.local_first = dist.env.rank;
        cfg.local_count = 1;
        cfg.transport = dist.tr;
        cfg.keep_final_weights = 1;
    }
    pp_run_result res;
    if (pp_run(&cfg, &res, &e) < 0) {
        rc = EXIT_RUNTIME;
        if (c.tty)
            fputc('\n', stderr);
        if (multi)
            pp_err_prefix(&e, "rank %d", dist.env.rank);
        goto out;
    }
    if (c.tty)
        fputc('\n', stderr);
    pp_dist_summary sum = {multi ? dist.env.rank : P - 1, res.steps,
                           res.steps ? res.step_loss[res.steps - 1] : NAN, res.tokens,
                           res.elapsed_s};
    double val_loss = res.final_val_loss;
    if (multi && pprun_dist_evaluate(&dist, &cfg, &res, &val_loss, &e) < 0) {
        pp_run_result_free(&res);
        rc = EXIT_RUNTIME;
        goto out;
    }
    pp_run_result_free(&res);
    if (c.log) {
        fprintf(c.log, "{\"final\": true, \"steps\": %d", sum.steps);
        if (!isnan(val_loss))
            fprintf(c.log, ", \"val_loss\": %.6f", val_loss);
        fprintf(c.log, ", \"tokens_per_s\": %.1f}\n",
                sum.elapsed_s > 0 ? sum.tokens / sum.elapsed_s : 0);
        c.log = NULL;
        if (pp_atomic_commit(&logf, &e) < 0)
            goto out;
    }
    if (multi) {
        rc = EXIT_RUNTIME;
        pp_dist_summary last;
        if (pp_dist_gather_timeline(dist.store, &tl, &sum, &last, &e) < 0)
            goto out;
        sum = last;
        if (!writes_summary) {
            rc = 0;
            goto out;
        }
    }
    /* the measured metrics, computed as the simulator computes them; they
     * also add the memory counters to the trace */
    pp_metrics met;
    int whole = !o.resume && stop_cut < 0;
    if (whole && pp_metrics_from_timeline(&tl, &m, 0, &tl, &met, &e) < 0)
        goto out;
    if (write_outputs(&o, &tl, cfg.link_s, &e) < 0) {
        if (whole)
            pp_metrics_free(&met);
        goto out;
    }
    if (!whole) {
        printf("trained updates %d..%d of %d (%.0f tokens in %.1f s); the measured summary "
               "needs a whole run\n", first_update + 1, first_update + sum.steps, ir.info.steps,
               sum.tokens - tokens0, sum.elapsed_s);
    } else {
        print_summary(&met, &sum, val_loss, &m);
        int prc = print_prediction(&ir, &tl, cfg.link_s, &met, &m, &e);
        pp_metrics_free(&met);
        if (prc < 0)
            goto out;
    }
    rc = 0;
out:
    if (rc && dist.tr)
        dist.tr->abort(dist.tr);
    pprun_dist_close(&dist);
    free(placement);
    for (int j = 0; j < ncuts; j++)
        pp_cut_free(&cuts[j], P);
    free(cuts);
    for (int st = 0; blobs && st < P; st++)
        free(blobs[st]);
    free(blobs);
    free(sizes);
    if (c.log)
        pp_atomic_abort(&logf);
    if (have_tl)
        pp_timeline_free(&tl);
    if (have_data)
        pp_data_free(&c.data);
    pp_schedule_free(&ir);
    return rc ? fail(rc, &e) : 0;
}
