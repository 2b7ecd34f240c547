/* What the tools build from their options: the model description, the
 * simulator's cost model, a schedule from a file, the timeline files. */
#include "cli.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "optim_cost.h"

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
    if (o->optimizer && pp_optim_parse(o->optimizer, &m->optimizer, e) < 0)
        return -1;
    m->delay_correction = o->delay_correction > 0;
    return pp_model_check(m, stages, e);
}

/* A number at *p, finite, ending where *end says; 0 or -1. */
static int number_at(const char *p, char **end, double *out)
{
    errno = 0;
    *out = strtod(p, end);
    return *end == p || errno || !isfinite(*out) ? -1 : 0;
}

static int parse_straggler(const char *text, pp_cost *c, pp_err *e)
{
    char *end;
    errno = 0;
    long stage = strtol(text, &end, 10);
    double factor, from = 0.0, until = INFINITY;
    if (end == text || errno || *end != ':' || number_at(end + 1, &end, &factor) < 0 ||
        (*end && *end != '@'))
        return pp_errf(e, "--straggler: \"%s\" is not STAGE:FACTOR[@FROM-UNTIL]", text);
    if (*end == '@' && (number_at(end + 1, &end, &from) < 0 || *end != '-' ||
                        number_at(end + 1, &end, &until) < 0 || *end))
        return pp_errf(e, "--straggler: bad time window in \"%s\"", text);
    if (stage < 0 || stage >= c->stages)
        return pp_errf(e, "--straggler: stage %ld out of range 0..%d", stage, c->stages - 1);
    if (!(factor > 0.0) || factor > 1e6)
        return pp_errf(e, "--straggler: factor %g must be above 0 and at most 1e6", factor);
    if (!(until > from) || from < 0)
        return pp_errf(e, "--straggler: window must start at 0 or later and end after it starts");
    c->straggler_stage = stage;
    c->straggler_factor = factor;
    c->straggler_from = from;
    c->straggler_until = until;
    return 0;
}

/* --split-backward X: I = X B and W = (1 - X) B on each stage (after
 * --bwd and --profile), X in [0, 1]. */
static int split_backward(const char *text, pp_cost *c, pp_err *e)
{
    double *x = malloc((size_t)c->stages * sizeof *x);
    if (!x)
        return pp_errf(e, "out of memory");
    int rc = pp_parse_per_stage(text, x, c->stages, "--split-backward", e);
    for (int s = 0; rc == 0 && s < c->stages; s++) {
        if (!(x[s] >= 0.0 && x[s] <= 1.0))
            rc = pp_errf(e, "--split-backward: %g for stage %d is not a share between 0 and 1",
                         x[s], s);
        c->inp[s] = x[s] * c->bwd[s];
        c->wgt[s] = c->bwd[s] - c->inp[s];
    }
    free(x);
    return rc;
}

int pp_cli_cost(const pp_cli_opts *o, int stages, const pp_model_desc *model, pp_cost *c,
                pp_err *e)
{
    if (pp_cost_init(c, stages, e) < 0)
        return -1;
    pp_set_max_input_bytes((size_t)o->max_input_bytes);
    if (o->profile && pp_cost_load_profile(c, o->profile, e) < 0)
        goto fail;
    if (o->sim.fwd && pp_parse_per_stage(o->sim.fwd, c->fwd, stages, "--fwd", e) < 0)
        goto fail;
    if (o->sim.bwd) {
        if (pp_parse_per_stage(o->sim.bwd, c->bwd, stages, "--bwd", e) < 0)
            goto fail;
        pp_cost_split_backward(c);
    }
    if (o->sim.split_backward && split_backward(o->sim.split_backward, c, e) < 0)
        goto fail;
    if (o->sim.opt && pp_parse_per_stage(o->sim.opt, c->opt, stages, "--opt", e) < 0)
        goto fail;
    /* the optimizer's matrix work at the FLOP rate the stage's forward runs at */
    if (o->sim.opt_flops && model)
        for (int s = 0; s < stages; s++)
            c->opt[s] += c->fwd[s] * pp_optim_step_flops(model, stages, s) /
                         pp_model_forward_flops(model, stages, s);
    if (o->comm_latency > 0)
        c->comm_latency = o->comm_latency;
    if (o->comm_bandwidth > 0)
        c->comm_bandwidth = o->comm_bandwidth;
    c->boundary_bytes = model ? pp_model_boundary_bytes(model) : 0.0;
    if (o->sim.jitter >= 1.0) {
        pp_errf(e, "--jitter: %g must be below 1", o->sim.jitter);
        goto fail;
    }
    c->jitter = o->sim.jitter;
    c->overlap_efficiency = o->sim.overlap_efficiency;
    c->seed = o->seed;
    if (o->sim.straggler && parse_straggler(o->sim.straggler, c, e) < 0)
        goto fail;
    return 0;
fail:
    pp_cost_free(c);
    return -1;
}

int pp_cli_load_ir(const pp_cli_opts *o, pp_schedule *s, pp_err *e)
{
    int rc;
    pp_set_max_input_bytes((size_t)o->max_input_bytes);
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

/* The directory a path would be created in must exist and be writable. */
static int writable_parent(const char *path, const char *what, pp_err *e)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    const char *dir = dirname(copy);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return pp_errf(e, "cannot write %s %s: directory %s does not exist", what, path, dir);
    if (access(dir, W_OK) != 0)
        return pp_errf(e, "cannot write %s %s: directory %s is not writable", what, path, dir);
    return 0;
}

static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (strcmp(a, b) == 0)
        return 1;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int pp_cli_check_outputs(const char *const *outs, int nout, const char *const *dirs, int ndirs,
                         const char *const *ins, int nin, pp_err *e)
{
    struct stat st;
    for (int i = 0; i < nout; i++) {
        const char *o = outs[i];
        if (!o)
            continue;
        if (stat(o, &st) == 0 && S_ISDIR(st.st_mode))
            return pp_errf(e, "cannot write output %s: it is a directory", o);
        if (writable_parent(o, "output", e) < 0)
            return -1;
        for (int k = 0; k < nin; k++)
            if (ins[k] && same_file(o, ins[k]))
                return pp_errf(e, "cannot write output %s: it is also an input", o);
        for (int k = 0; k < i; k++)
            if (outs[k] && same_file(o, outs[k]))
                return pp_errf(e, "cannot write output %s twice", o);
    }
    for (int i = 0; i < ndirs; i++) {
        const char *d = dirs[i];
        if (!d)
            continue;
        if (stat(d, &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                return pp_errf(e, "cannot write into %s: not a directory", d);
            if (access(d, W_OK) != 0)
                return pp_errf(e, "cannot write into %s: directory is not writable", d);
        } else if (writable_parent(d, "directory", e) < 0) {
            return -1;
        }
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
