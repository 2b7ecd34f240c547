#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char pp_cli_shared_help[] =
    "schedule:\n"
    "  --schedule NAME         gpipe, 1f1b-flush, pipedream, pipedream-2bw, paci\n"
    "  --ir FILE               a schedule IR JSON file instead of a generator\n"
    "  --pytorch-csv FILE      a torch.distributed.pipelining compute-only CSV\n"
    "  --stages P              pipeline stages (default 8)\n"
    "  --microbatches M        micro-batches per optimizer step (default 8)\n"
    "  --accum A               PACI's accumulation factor (alias of --microbatches)\n"
    "  --steps S               optimizer steps (default 16)\n"
    "  --recompute             PACI: keep only stage inputs, recompute in backward\n"
    "cost model (time units; seconds with --profile):\n"
    "  --fwd T --bwd T --opt T durations, one value or one per stage (1,1,1.3,1);\n"
    "                          defaults F=1, B=2, OPT=0; split backward I=W=B/2\n"
    "  --comm-latency T        per message latency (default 0)\n"
    "  --comm-bandwidth B      bytes per time unit (default 0 = infinite)\n"
    "  --jitter X              each duration times U[1-X, 1+X] (0 <= X < 1)\n"
    "  --seed N                jitter seed (default 1)\n"
    "  --straggler S:F[@T0-T1] stage S slower by factor F (from T0 to T1)\n"
    "  --profile FILE          measured per-stage op times written by pprun\n"
    "model (memory and message sizes):\n"
    "  --model NAME            tiny, gpt2-small, gpt2-medium, gpt2-large, gpt2-xl\n"
    "  --layers N --dim N --heads N --seq-len N --vocab N   override the preset\n"
    "  --micro-batch-size N    sequences per micro-batch\n"
    "  --precision bf16|fp32\n";

void pp_cli_defaults(pp_cli_opts *o, const char *default_model)
{
    memset(o, 0, sizeof *o);
    o->gen.stages = 8;
    o->gen.microbatches = 8;
    o->gen.steps = 16;
    o->seed = 1;
    o->model = default_model;
}

int pp_cli_is(const char *arg, const char *flag)
{
    size_t n = strlen(flag);
    return strncmp(arg, flag, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

const char *pp_cli_value(int argc, char **argv, int *i, const char *flag, pp_err *e)
{
    const char *eq = strchr(argv[*i], '=');
    if (eq)
        return eq + 1;
    if (*i + 1 >= argc) {
        pp_errf(e, "%s needs a value", flag);
        return NULL;
    }
    return argv[++*i];
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

typedef enum { T_STR, T_INT, T_DOUBLE } opt_type;

typedef struct {
    const char *flag;
    opt_type type;
    size_t offset;
    long min, max;
} opt_spec;

#define OFF(field) offsetof(pp_cli_opts, field)
static const opt_spec specs[] = {
    {"--schedule", T_STR, OFF(schedule), 0, 0},
    {"--ir", T_STR, OFF(ir_file), 0, 0},
    {"--pytorch-csv", T_STR, OFF(csv_file), 0, 0},
    {"--stages", T_INT, OFF(gen.stages), 1, 4096},
    {"--microbatches", T_INT, OFF(gen.microbatches), 1, INT_MAX / 4},
    {"--accum", T_INT, OFF(gen.microbatches), 1, INT_MAX / 4},
    {"--steps", T_INT, OFF(gen.steps), 1, INT_MAX / 4},
    {"--fwd", T_STR, OFF(fwd), 0, 0},
    {"--bwd", T_STR, OFF(bwd), 0, 0},
    {"--opt", T_STR, OFF(opt), 0, 0},
    {"--profile", T_STR, OFF(profile), 0, 0},
    {"--straggler", T_STR, OFF(straggler), 0, 0},
    {"--comm-latency", T_DOUBLE, OFF(comm_latency), 0, 0},
    {"--comm-bandwidth", T_DOUBLE, OFF(comm_bandwidth), 0, 0},
    {"--jitter", T_DOUBLE, OFF(jitter), 0, 0},
    {"--model", T_STR, OFF(model), 0, 0},
    {"--precision", T_STR, OFF(precision), 0, 0},
    {"--layers", T_INT, OFF(layers), 1, 100000},
    {"--dim", T_INT, OFF(dim), 1, 1 << 20},
    {"--heads", T_INT, OFF(heads), 1, 1 << 16},
    {"--vocab", T_INT, OFF(vocab), 1, 1 << 24},
    {"--seq-len", T_INT, OFF(seq_len), 1, 1 << 24},
    {"--micro-batch-size", T_INT, OFF(micro_batch), 1, 1 << 20},
};

int pp_cli_shared_option(pp_cli_opts *o, int argc, char **argv, int *i, pp_err *e)
{
    const char *arg = argv[*i];
    if (strcmp(arg, "--recompute") == 0) {
        o->gen.recompute = 1;
        return 1;
    }
    if (pp_cli_is(arg, "--seed")) {
        const char *v = pp_cli_value(argc, argv, i, "--seed", e);
        char *end;
        errno = 0;
        if (!v)
            return -1;
        unsigned long long x = strtoull(v, &end, 10);
        if (end == v || *end || errno || v[0] == '-')
            return pp_errf(e, "--seed: \"%s\" is not a non-negative integer", v);
        o->seed = x;
        return 1;
    }
    for (size_t k = 0; k < sizeof specs / sizeof specs[0]; k++) {
        const opt_spec *sp = &specs[k];
        if (!pp_cli_is(arg, sp->flag))
            continue;
        const char *v = pp_cli_value(argc, argv, i, sp->flag, e);
        if (!v)
            return -1;
        char *field = (char *)o + sp->offset;
        switch (sp->type) {
        case T_STR:
            if (!*v)
                return pp_errf(e, "%s: empty value", sp->flag);
            *(const char **)field = v;
            return 1;
        case T_INT:
            return pp_cli_parse_int(sp->flag, v, sp->min, sp->max, (int *)field, e) < 0 ? -1 : 1;
        case T_DOUBLE:
            return pp_cli_parse_double(sp->flag, v, 0.0, (double *)field, e) < 0 ? -1 : 1;
        }
    }
    return 0;
}

int pp_cli_model(const pp_cli_opts *o, int stages, pp_model_desc *m, pp_err *e)
{
    if (pp_model_preset(o->model, m, e) < 0)
        return pp_err_prefix(e, "--model");
    if (o->layers) m->layers = o->layers;
    if (o->dim) m->dim = o->dim;
    if (o->heads) m->heads = o->heads;
    if (o->vocab) m->vocab = o->vocab;
    if (o->seq_len) m->seq_len = o->seq_len;
    if (o->micro_batch) m->micro_batch = o->micro_batch;
    if (o->precision) {
        if (strcmp(o->precision, "bf16") == 0)
            m->bytes_per_elem = 2;
        else if (strcmp(o->precision, "fp32") == 0)
            m->bytes_per_elem = 4;
        else
            return pp_errf(e, "--precision: \"%s\" is not bf16 or fp32", o->precision);
    }
    return pp_model_check(m, stages, e);
}

static int parse_straggler(const char *text, pp_cost *c, pp_err *e)
{
    int stage, n = 0;
    double factor, from = 0.0, until = INFINITY;
    if (sscanf(text, "%d:%lf%n", &stage, &factor, &n) != 2)
        return pp_errf(e, "--straggler: \"%s\" is not STAGE:FACTOR[@FROM-UNTIL]", text);
    const char *rest = text + n;
    if (*rest == '@') {
        int m = 0;
        if (sscanf(rest + 1, "%lf-%lf%n", &from, &until, &m) != 2 || rest[1 + m] != '\0')
            return pp_errf(e, "--straggler: bad time window in \"%s\"", text);
    } else if (*rest) {
        return pp_errf(e, "--straggler: \"%s\" is not STAGE:FACTOR[@FROM-UNTIL]", text);
    }
    if (stage < 0 || stage >= c->stages)
        return pp_errf(e, "--straggler: stage %d out of range 0..%d", stage, c->stages - 1);
    if (!(factor > 0.0) || !isfinite(factor))
        return pp_errf(e, "--straggler: factor must be positive");
    if (!(until > from))
        return pp_errf(e, "--straggler: window must end after it starts");
    c->straggler_stage = stage;
    c->straggler_factor = factor;
    c->straggler_from = from;
    c->straggler_until = until;
    return 0;
}

int pp_cli_cost(const pp_cli_opts *o, int stages, const pp_model_desc *model, pp_cost *c,
                pp_err *e)
{
    if (pp_cost_init(c, stages, e) < 0)
        return -1;
    if (o->profile && pp_cost_load_profile(c, o->profile, e) < 0)
        goto fail;
    if (o->fwd && pp_parse_per_stage(o->fwd, c->fwd, stages, "--fwd", e) < 0)
        goto fail;
    if (o->bwd) {
        if (pp_parse_per_stage(o->bwd, c->bwd, stages, "--bwd", e) < 0)
            goto fail;
        pp_cost_split_backward(c);
    }
    if (o->opt && pp_parse_per_stage(o->opt, c->opt, stages, "--opt", e) < 0)
        goto fail;
    if (o->comm_latency > 0)
        c->comm_latency = o->comm_latency;
    if (o->comm_bandwidth > 0)
        c->comm_bandwidth = o->comm_bandwidth;
    c->boundary_bytes = model ? pp_model_boundary_bytes(model) : 0.0;
    if (o->jitter >= 1.0) {
        pp_errf(e, "--jitter: %g must be below 1", o->jitter);
        goto fail;
    }
    c->jitter = o->jitter;
    c->seed = o->seed;
    if (o->straggler && parse_straggler(o->straggler, c, e) < 0)
        goto fail;
    return 0;
fail:
    pp_cost_free(c);
    return -1;
}

int pp_cli_load_ir(const pp_cli_opts *o, pp_schedule *s, pp_err *e)
{
    int rc;
    if (o->ir_file)
        rc = pp_schedule_load_json(o->ir_file, s, e);
    else if (o->csv_file)
        rc = pp_schedule_load_pytorch_csv(o->csv_file, s, e);
    else
        return 1;
    if (rc < 0)
        return -1;
    if (pp_schedule_validate(s, e) < 0) {
        pp_schedule_free(s);
        return pp_err_prefix(e, "%s", o->ir_file ? o->ir_file : o->csv_file);
    }
    return 0;
}

int pp_cli_write_timeline(const pp_timeline *tl, const char *trace, const char *svg,
                          const char *per_mb, pp_err *e)
{
    if (trace && pp_trace_save(trace, tl, e) < 0)
        return -1;
    if (svg && pp_svg_save(svg, tl, e) < 0)
        return -1;
    if (per_mb && pp_mb_csv_save(per_mb, tl, e) < 0)
        return -1;
    return 0;
}
