/* Every option of ppsim and pprun in one table: its value, where the value
 * goes, the tools that take it and its line in each tool's --help. An
 * option the two tools read differently (--seed, --profile, --model's
 * default, the link options) has one row per tool. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef enum { V_STR, V_INT, V_DOUBLE, V_FLAG, V_SEED, V_FORMAT } value_type;

typedef enum {
    SEC_SCHEDULE,
    SEC_COST,
    SEC_MODEL,
    SEC_TRAINING,
    SEC_OPTIMIZER,
    SEC_MULTI,
    SEC_CHECKPOINT,
    SEC_OUTPUT,
    SEC_COUNT
} section;

/* Section titles as ppsim and as pprun print them. */
static const char *const section_title[SEC_COUNT][2] = {
    [SEC_SCHEDULE] = {"schedule:", "schedule:"},
    [SEC_COST] = {"cost model (time units; seconds with --profile):", NULL},
    [SEC_MODEL] = {"model (memory and message sizes):", "model:"},
    [SEC_TRAINING] = {NULL, "training:"},
    [SEC_OPTIMIZER] = {"optimizer (the memory of its state):", "optimizer (per stage):"},
    [SEC_MULTI] = {NULL, "multi-process runs (one process per stage; rank and world size from "
                         "mpirun,\nsrun or RANK/WORLD_SIZE):"},
    [SEC_CHECKPOINT] = {NULL, "checkpoints:"},
    [SEC_OUTPUT] = {"output:", "outputs:"},
};

typedef struct {
    const char *flag, *alias; /* alias: a short spelling ("-o"), or NULL */
    const char *arg;          /* the value's name in --help; NULL for a flag */
    pp_tool tools;
    section sec;
    value_type type;
    size_t offset;            /* into pp_cli_opts */
    double min, max;          /* V_INT: range; V_DOUBLE: range, max 0 for none */
    const char *help;         /* lines after the first start with '\n' */
} option;

#define AT(field) offsetof(pp_cli_opts, field)
#define SIM PP_TOOL_SIM
#define RUN PP_TOOL_RUN
#define BOTH PP_TOOL_BOTH
#define IMAX (INT_MAX / 4)

static const option options[] = {
    /* schedule */
    {"--schedule", NULL, "NAME", BOTH, SEC_SCHEDULE, V_STR, AT(schedule), 0, 0,
     "gpipe, 1f1b-flush, pipedream, pipedream-2bw, paci,\ninterleaved-1f1b, looped-bfs, zb-h1, zbv, dualpipev\n(`ppsim list` describes them)"},
    {"--schedules", NULL, "A,B,..", SIM, SEC_SCHEDULE, V_STR, AT(sim.schedules), 0, 0,
     "compare: the schedules side by side\n(default 1f1b-flush,pipedream-2bw,paci)"},
    {"--ir", NULL, "FILE", BOTH, SEC_SCHEDULE, V_STR, AT(ir_file), 0, 0,
     "a schedule IR JSON file instead of a generator"},
    {"--pytorch-csv", NULL, "FILE", BOTH, SEC_SCHEDULE, V_STR, AT(csv_file), 0, 0,
     "a torch.distributed.pipelining CSV (_dump_csv,\ncompute_only or compute_comms)"},
    {"--stages", NULL, "P", BOTH, SEC_SCHEDULE, V_INT, AT(gen.stages), 1, 4096,
     "pipeline stages (default 8); for schedules that put\nseveral stages on a rank, the ranks"},
    {"--ranks", NULL, "R", BOTH, SEC_SCHEDULE, V_INT, AT(gen.stages), 1, 4096,
     "ranks (devices): alias of --stages"},
    {"--chunks", NULL, "V", BOTH, SEC_SCHEDULE, V_INT, AT(gen.chunks), 1, 64,
     "stages (model chunks) per rank: interleaved-1f1b and\nlooped-bfs (default 2), paci and "
     "pipedream-2bw\n(default 1); zbv and dualpipev have 2; compare\ngives it to the schedules "
     "that take it"},
    {"--microbatches", NULL, "M", BOTH, SEC_SCHEDULE, V_INT, AT(gen.microbatches), 1, IMAX,
     "micro-batches per optimizer step (default 8)"},
    {"--accum", NULL, "A", BOTH, SEC_SCHEDULE, V_INT, AT(gen.microbatches), 1, IMAX,
     "PACI's accumulation factor (alias of --microbatches)"},
    {"--steps", NULL, "S", BOTH, SEC_SCHEDULE, V_INT, AT(gen.steps), 1, IMAX,
     "optimizer steps (default 16)"},
    {"--max-input-bytes", NULL, "N", BOTH, SEC_SCHEDULE, V_DOUBLE, AT(max_input_bytes), 1, 1e15,
     "refuse schedule, profile and CSV files larger than N\nbytes (default 2^30)"},
    {"--recompute", NULL, NULL, BOTH, SEC_SCHEDULE, V_FLAG, AT(gen.recompute), 0, 0,
     "PACI: keep only stage inputs, recompute in backward"},
    {"--seed", NULL, "N", SIM, SEC_COST, V_SEED, AT(seed), 0, 0, "jitter seed (default 1)"},

    /* ppsim's cost model */
    {"--fwd", NULL, "T", SIM, SEC_COST, V_STR, AT(sim.fwd), 0, 0,
     "forward duration, one value or one per stage\n(1,1,1.3,1); default 1"},
    {"--bwd", NULL, "T", SIM, SEC_COST, V_STR, AT(sim.bwd), 0, 0,
     "backward duration (default 2; split into I and W\nby --split-backward)"},
    {"--split-backward", NULL, "X", SIM, SEC_COST, V_STR, AT(sim.split_backward), 0, 0,
     "a split backward's I takes X of B and W the rest,\none value or one per stage "
     "(default 0.5)"},
    {"--opt", NULL, "T", SIM, SEC_COST, V_STR, AT(sim.opt), 0, 0,
     "optimizer step duration (default 0)"},
    {"--opt-flops", NULL, NULL, SIM, SEC_COST, V_FLAG, AT(sim.opt_flops), 0, 0,
     "add to each OPT the --optimizer's matrix products\n(muon: 5 Newton-Schulz iterations; "
     "adamw-rotated:\nrotations, covariances, eigenbases every 10 steps)\nat the forward's "
     "FLOP rate: --fwd x their FLOPs / the\nstage's forward FLOPs (default off: OPT is "
     "--opt\nwhatever the optimizer; adamw adds nothing)"},
    {"--comm-latency", NULL, "T", SIM, SEC_COST, V_DOUBLE, AT(comm_latency), 0, PP_MAX_DURATION,
     "per message latency (default 0)"},
    {"--comm-bandwidth", NULL, "B", SIM, SEC_COST, V_DOUBLE, AT(comm_bandwidth), 0, 1e30,
     "bytes per time unit (default 0 = infinite)"},
    {"--overlap-efficiency", NULL, "X", SIM, SEC_COST, V_DOUBLE, AT(sim.overlap_efficiency), 0,
     1, "an overlapped forward and backward (dualpipev)\ntake max(F,B) + (1-X) min(F,B); "
     "default 0:\nno gain, 1: the shorter hides entirely"},
    {"--jitter", NULL, "X", SIM, SEC_COST, V_DOUBLE, AT(sim.jitter), 0, 0,
     "each duration times U[1-X, 1+X] (0 <= X < 1)"},
    {"--straggler", NULL, "S:F[@T0-T1]", SIM, SEC_COST, V_STR, AT(sim.straggler), 0, 0,
     "stage S slower by factor F (from T0 to T1)"},
    {"--profile", NULL, "FILE", SIM, SEC_COST, V_STR, AT(profile), 0, 0,
     "measured per-stage op times written by pprun"},

    /* model */
    {"--model", NULL, "NAME", SIM, SEC_MODEL, V_STR, AT(model), 0, 0,
     "tiny, gpt2-small, gpt2-medium (default), gpt2-large,\ngpt2-xl"},
    {"--model", NULL, "NAME", RUN, SEC_MODEL, V_STR, AT(model), 0, 0,
     "tiny (default), gpt2-small, gpt2-medium, gpt2-large,\ngpt2-xl"},
    {"--layers", NULL, "N", BOTH, SEC_MODEL, V_INT, AT(layers), 1, 100000,
     "transformer blocks (overrides the preset)"},
    {"--dim", NULL, "N", BOTH, SEC_MODEL, V_INT, AT(dim), 1, 1 << 20, "model width"},
    {"--heads", NULL, "N", BOTH, SEC_MODEL, V_INT, AT(heads), 1, 1 << 16, "attention heads"},
    {"--seq-len", NULL, "N", BOTH, SEC_MODEL, V_INT, AT(seq_len), 1, 1 << 24,
     "tokens per sequence"},
    {"--vocab", NULL, "N", SIM, SEC_MODEL, V_INT, AT(vocab), 1, 1 << 24, "vocabulary size"},
    {"--vocab", NULL, "N", RUN, SEC_MODEL, V_INT, AT(vocab), 1, 1 << 24,
     "vocabulary size of --data-bin (a text file has its own)"},
    {"--micro-batch-size", NULL, "N", BOTH, SEC_MODEL, V_INT, AT(micro_batch), 1, 1 << 20,
     "sequences per micro-batch"},
    {"--precision", NULL, "bf16|fp32", SIM, SEC_MODEL, V_STR, AT(precision), 0, 0,
     "bytes per element of weights and activations"},

    /* pprun's training */
    {"--backend", NULL, "cpu|cuda", RUN, SEC_TRAINING, V_STR, AT(run.backend), 0, 0,
     "(default cpu)"},
    {"--data", NULL, "FILE", RUN, SEC_TRAINING, V_STR, AT(run.data), 0, 0,
     "text file; vocabulary = its distinct bytes; 90/10 split"},
    {"--data-bin", NULL, "FILE", RUN, SEC_TRAINING, V_STR, AT(run.data_bin), 0, 0,
     "llm.c .bin token shard (--val-bin FILE for validation)"},
    {"--val-bin", NULL, "FILE", RUN, SEC_TRAINING, V_STR, AT(run.val_bin), 0, 0,
     "llm.c .bin token shard for validation"},
    {"--lr", NULL, "X", RUN, SEC_TRAINING, V_DOUBLE, AT(run.lr), 0, 10,
     "peak learning rate (default 1e-3)"},
    {"--min-lr", NULL, "X", RUN, SEC_TRAINING, V_DOUBLE, AT(run.min_lr), 0, 10,
     "end of the cosine decay (default lr/10)"},
    {"--warmup", NULL, "N", RUN, SEC_TRAINING, V_INT, AT(run.warmup), 0, 1 << 30,
     "warm-up updates (default 10)"},
    {"--seed", NULL, "N", RUN, SEC_TRAINING, V_SEED, AT(seed), 0, 0,
     "weight initialisation and data order (default 1)"},
    {"--eval-every", NULL, "N", RUN, SEC_TRAINING, V_INT, AT(run.eval_every), 0, 1 << 30,
     "validation loss every N updates (default 0: at the end)"},
    {"--eval-batches", NULL, "N", RUN, SEC_TRAINING, V_INT, AT(run.eval_batches), 0, 1 << 30,
     "validate on a fixed, seeded random sample of N batches\n(default 0: the whole validation "
     "split)"},
    {"--data-order", NULL, "random|sequential", RUN, SEC_TRAINING, V_STR, AT(run.data_order), 0,
     0, "training sequences at seeded random offsets (default,\nnanoGPT's way) or consecutive "
     "aligned ones"},
    {"--threads", NULL, "N", RUN, SEC_TRAINING, V_INT, AT(run.threads), 0, 1024,
     "CPU threads per stage (default: the cores divided by\nthe stages this process runs, at "
     "least 1)"},
    {"--devices", NULL, "LIST", RUN, SEC_TRAINING, V_STR, AT(run.devices), 0, 0,
     "GPU ids, e.g. 0 or 0,1,2,3 (cuda backend; default 0, or\nthe local rank in a "
     "multi-process run)"},
    {"--sm-partitions", NULL, "on|off", RUN, SEC_TRAINING, V_STR, AT(run.sm_partitions), 0, 0,
     "stages sharing a GPU each get their own SMs (green\ncontexts; default on)"},
    {"--timeout", NULL, "S", RUN, SEC_TRAINING, V_DOUBLE, AT(run.timeout), 0.001, 1e9,
     "a stage waiting longer fails the run (default 600)"},
    {"--comm-latency", NULL, "S", RUN, SEC_TRAINING, V_DOUBLE, AT(comm_latency), 0,
     PP_MAX_DURATION,
     "model the link between stages of one process: every\nmessage waits S seconds more, "
     "one at a time per link\n(as ppsim does)"},
    {"--comm-bandwidth", NULL, "B/S", RUN, SEC_TRAINING, V_DOUBLE, AT(comm_bandwidth), 0, 1e30,
     "... and its bytes over B/S bytes per second"},

    /* pprun's optimizer */
    {"--optimizer", NULL, "NAME", BOTH, SEC_OPTIMIZER, V_STR, AT(optimizer), 0, 0,
     "adamw (default), muon, adamw-rotated"},
    {"--delay-correction", NULL, "BETA", BOTH, SEC_OPTIMIZER, V_DOUBLE, AT(delay_correction),
     0, 1,
     "apply u + BETA (u - u_prev), u the update: our reading\nof arXiv 2606.30634, not its "
     "exact formula; one more\nfp32 buffer per stage (default 0: off)"},
    {"--beta1", NULL, "X", RUN, SEC_OPTIMIZER, V_DOUBLE, AT(run.beta1), 0, 0,
     "first-moment decay (default 0.9)"},
    {"--beta2", NULL, "X", RUN, SEC_OPTIMIZER, V_DOUBLE, AT(run.beta2), 0, 0,
     "second-moment decay (default 0.95)"},
    {"--eps", NULL, "X", RUN, SEC_OPTIMIZER, V_DOUBLE, AT(run.eps), 0, 1,
     "added to the root of the second moment (default 1e-8)"},
    {"--weight-decay", NULL, "X", RUN, SEC_OPTIMIZER, V_DOUBLE, AT(run.weight_decay), 0, 100,
     "decoupled, on matrices only (default 0.1)"},
    {"--grad-clip", NULL, "X", RUN, SEC_OPTIMIZER, V_DOUBLE, AT(run.grad_clip), 0, 1e30,
     "clip the gradient's global norm to X (default 0: off)"},
    {"--muon-momentum", NULL, "X", RUN, SEC_OPTIMIZER, V_DOUBLE, AT(run.muon_momentum), 0, 0,
     "muon: the momentum's decay, Nesterov (default 0.95)"},
    {"--rotate-every", NULL, "K", RUN, SEC_OPTIMIZER, V_INT, AT(run.rotate_every), 1, 1 << 30,
     "adamw-rotated: new eigenbases every K updates\n(default 10)"},
    {"--rotate-sides", NULL, "SIDES", RUN, SEC_OPTIMIZER, V_STR, AT(run.rotate_sides), 0, 0,
     "adamw-rotated: left, right or both (default)"},
    {"--rotate-basis", NULL, "SOURCE", RUN, SEC_OPTIMIZER, V_STR, AT(run.rotate_basis), 0, 0,
     "adamw-rotated: eigenvectors of the covariances of the\ngradient (default) or of the "
     "first moment (moment)"},
    {"--rotate-beta", NULL, "X", RUN, SEC_OPTIMIZER, V_DOUBLE, AT(run.rotate_beta), 0, 0,
     "adamw-rotated: the covariances' decay (default: --beta2)"},
    {"--lr-delay-correction", NULL, "T", RUN, SEC_OPTIMIZER, V_INT, AT(run.lr_delay_correction),
     0, 1 << 30,
     "PipeMare: stage s's lr / tau_s^(1 - min(t/T, 1)) at its\nupdate t, tau_s its delay (below; "
     "default 0: off)"},

    /* pprun's multi-process runs */
    {"--rendezvous", NULL, "SPEC", RUN, SEC_MULTI, V_STR, AT(run.rendezvous), 0, 0,
     "tcp://HOST:PORT (rank 0's host), file:DIR (shared\ndirectory) or mpi; default "
     "$PPSCHED_RENDEZVOUS, then\ntcp://$MASTER_ADDR:$MASTER_PORT, then mpi under mpirun"},
    {"--transport", NULL, "NAME", RUN, SEC_MULTI, V_STR, AT(run.transport), 0, 0,
     "nccl (default with cuda) or tcp (default with cpu)"},
    {"--job-secret-file", NULL, "FILE", RUN, SEC_MULTI, V_STR, AT(run.job_secret_file), 0, 0,
     "the job's shared secret (chmod 600), when\n$PPSCHED_JOB_SECRET is not set; tcp:// needs one"},
    {"--bind", NULL, "ADDR", RUN, SEC_MULTI, V_STR, AT(run.bind), 0, 0,
     "listen on ADDR (0.0.0.0: every interface);\ndefault: the rendezvous host (rank 0), the\n"
     "address the others are told (other ranks)"},

    /* pprun's checkpoints */
    {"--checkpoint", NULL, "DIR", RUN, SEC_CHECKPOINT, V_STR, AT(run.checkpoint), 0, 0,
     "write DIR/checkpoint.ckpt (atomically) at the cuts below"},
    {"--checkpoint-every", NULL, "K", RUN, SEC_CHECKPOINT, V_INT, AT(run.checkpoint_every), 1,
     1 << 30, "after every K-th update (each overwrites the last)"},
    {"--stop-after", NULL, "K", RUN, SEC_CHECKPOINT, V_INT, AT(run.stop_after), 1, 1 << 30,
     "checkpoint after update K and stop there"},
    {"--resume", NULL, "DIR", RUN, SEC_CHECKPOINT, V_STR, AT(run.resume), 0, 0,
     "continue a run from DIR/checkpoint.ckpt (same schedule\nand model options); losses "
     "continue bit for bit on cpu"},

    /* outputs */
    {"--format", NULL, "table|json|csv", SIM, SEC_OUTPUT, V_FORMAT, AT(sim.format), 0, 0,
     "report format (default table); export: json (the\nIR, default) or pytorch-csv (what "
     "PyTorch's\n_load_csv reads: one step, no weight versions)"},
    {"--log", NULL, "FILE.jsonl", RUN, SEC_OUTPUT, V_STR, AT(run.log), 0, 0,
     "one JSON line per update: step, loss, val_loss,\ntokens_per_s, lr"},
    {"--versions", NULL, "FILE.csv", RUN, SEC_OUTPUT, V_STR, AT(run.versions), 0, 0,
     "stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,\nb_end (s)"},
    {"--trace", NULL, "FILE.json", BOTH, SEC_OUTPUT, V_STR, AT(trace), 0, 0,
     "Chrome trace (Perfetto, chrome://tracing)"},
    {"--svg", NULL, "FILE.svg", BOTH, SEC_OUTPUT, V_STR, AT(svg), 0, 0, "timeline picture"},
    {"--per-microbatch", NULL, "FILE.csv", SIM, SEC_OUTPUT, V_STR, AT(sim.per_mb), 0, 0,
     "stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,\nb_end"},
    {"--profile", NULL, "FILE.json", RUN, SEC_OUTPUT, V_STR, AT(profile), 0, 0,
     "measured per-stage op times (ppsim --profile FILE)"},
    {"--quiet", NULL, NULL, SIM, SEC_OUTPUT, V_FLAG, AT(sim.quiet), 0, 0,
     "no progress line on a terminal (shown for runs over 2 s)"},
    {"--output", "-o", "FILE", SIM, SEC_OUTPUT, V_STR, AT(sim.output), 0, 0,
     "export: where the IR JSON goes"},
};

#define NOPTIONS (sizeof options / sizeof options[0])

static const char *tool_name(pp_tool t)
{
    return t == PP_TOOL_SIM ? "ppsim" : "pprun";
}

void pp_cli_defaults(pp_cli_opts *o, pp_tool tool)
{
    memset(o, 0, sizeof *o);
    o->gen.stages = 8;
    o->gen.microbatches = 8;
    o->gen.steps = 16;
    o->seed = 1;
    o->model = tool == PP_TOOL_SIM ? "gpt2-medium" : "tiny";
    o->max_input_bytes = (double)(1 << 30);
    o->sim.format = PP_FORMAT_TABLE;
    o->run.backend = "cpu";
    o->run.lr = 1e-3;
    o->run.min_lr = -1; /* lr/10 */
    o->run.warmup = 10;
    o->run.eval_batches = 0; /* the whole validation split */
    o->run.data_order = "random";
    o->optimizer = "adamw";
    o->run.beta1 = 0.9;
    o->run.beta2 = 0.95;
    o->run.eps = 1e-8;
    o->run.weight_decay = 0.1;
    o->run.muon_momentum = -1; /* not given: 0.95 with --optimizer muon */
    o->run.rotate_beta = -1;   /* not given: beta2 with --optimizer adamw-rotated */
    o->run.timeout = 600;
}

/* "--flag" or "--flag=value" */
static int matches(const char *arg, const char *flag)
{
    size_t n = strlen(flag);
    return strncmp(arg, flag, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

static const option *find(const char *arg, unsigned tools)
{
    for (size_t k = 0; k < NOPTIONS; k++) {
        const option *op = &options[k];
        if (!(op->tools & tools))
            continue;
        if (op->type == V_FLAG ? !strcmp(arg, op->flag)
                               : matches(arg, op->flag) || (op->alias && !strcmp(arg, op->alias)))
            return op;
    }
    return NULL;
}

int pp_cli_parse_int(const char *flag, const char *v, long min, long max, int *out, pp_err *e)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno)
        return pp_errf(e, "%s: \"%s\" is not an integer", flag, v);
    if (x < min || x > max)
        return pp_errf(e, "%s: %ld is out of range %ld..%ld", flag, x, min, max);
    *out = (int)x;
    return 0;
}

int pp_cli_parse_double(const char *flag, const char *v, double min, double *out, pp_err *e)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(x))
        return pp_errf(e, "%s: \"%s\" is not a number", flag, v);
    if (x < min)
        return pp_errf(e, "%s: %g is below the minimum %g", flag, x, min);
    *out = x;
    return 0;
}

static int parse_seed(const char *v, uint64_t *out, pp_err *e)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v || *end || errno || v[0] == '-')
        return pp_errf(e, "--seed: \"%s\" is not a non-negative integer", v);
    *out = x;
    return 0;
}

static int parse_format(const char *v, pp_format *out, pp_err *e)
{
    if (strcmp(v, "table") == 0)
        *out = PP_FORMAT_TABLE;
    else if (strcmp(v, "json") == 0)
        *out = PP_FORMAT_JSON;
    else if (strcmp(v, "csv") == 0)
        *out = PP_FORMAT_CSV;
    else if (strcmp(v, "pytorch-csv") == 0)
        *out = PP_FORMAT_PYTORCH_CSV;
    else
        return pp_errf(e, "--format: \"%s\" is not table, json, csv or pytorch-csv", v);
    return 0;
}

int pp_cli_option(pp_cli_opts *o, pp_tool tool, int argc, char **argv, int *i, pp_err *e)
{
    const char *arg = argv[*i];
    if (arg[0] != '-' || !arg[1])
        return 0;
    const option *op = find(arg, tool);
    if (!op) {
        const option *other = find(arg, PP_TOOL_BOTH & ~tool);
        if (other)
            return pp_errf(e, "%s is one of the %s options (%s); %s", other->flag,
                           tool == PP_TOOL_RUN ? "simulator" : "executor", tool_name(other->tools),
                           tool == PP_TOOL_RUN ? "pprun measures" : "ppsim simulates");
        return pp_errf(e, "unknown option \"%s\" (see %s --help)", arg, tool_name(tool));
    }
    void *field = (char *)o + op->offset;
    if (op->type == V_FLAG) {
        *(int *)field = 1;
        return 1;
    }
    const char *name = op->alias && !strcmp(arg, op->alias) ? op->alias : op->flag;
    const char *v;
    const char *eq = strchr(arg, '=');
    if (eq && name == op->flag) {
        v = eq + 1;
    } else if (*i + 1 < argc) {
        v = argv[++*i];
    } else {
        return pp_errf(e, "%s needs a value", name);
    }
    switch (op->type) {
    case V_STR:
        if (!*v)
            return pp_errf(e, "%s: empty value", name);
        *(const char **)field = v;
        return 1;
    case V_INT:
        return pp_cli_parse_int(name, v, (long)op->min, (long)op->max, field, e) < 0 ? -1 : 1;
    case V_DOUBLE:
        if (pp_cli_parse_double(name, v, op->min, field, e) < 0)
            return -1;
        if (op->max > 0 && *(double *)field > op->max)
            return pp_errf(e, "%s: %g is above the maximum %g", name, *(double *)field, op->max);
        return 1;
    case V_SEED:
        return parse_seed(v, field, e) < 0 ? -1 : 1;
    case V_FORMAT:
        return parse_format(v, field, e) < 0 ? -1 : 1;
    case V_FLAG:
        break;
    }
    return 1;
}

/* "  --flag ARG            help", continuation lines under the help; a
 * long "--flag ARG" gets a line of its own. */
static void print_option(FILE *f, const option *op)
{
    char left[64];
    snprintf(left, sizeof left, "%s%s%s%s%s", op->alias ? op->alias : "", op->alias ? ", " : "",
             op->flag, op->arg ? " " : "", op->arg ? op->arg : "");
    if (strlen(left) > 21)
        fprintf(f, "  %s\n%24s", left, "");
    else
        fprintf(f, "  %-22s", left);
    for (const char *p = op->help; *p; p++) {
        fputc(*p, f);
        if (*p == '\n')
            fprintf(f, "%24s", "");
    }
    fputc('\n', f);
}

void pp_cli_help(FILE *f, pp_tool tool)
{
    int which = tool == PP_TOOL_SIM ? 0 : 1;
    for (int sec = 0; sec < SEC_COUNT; sec++) {
        const char *title = section_title[sec][which];
        if (!title)
            continue;
        fprintf(f, "%s\n", title);
        for (size_t k = 0; k < NOPTIONS; k++)
            if (options[k].sec == (section)sec && (options[k].tools & tool))
                print_option(f, &options[k]);
    }
}
