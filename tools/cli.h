/* The command lines of ppsim and pprun (DESIGN §7): one table of every
 * option (cli_options.c) that knows which tool takes it, so each tool's
 * --help lists its own options and each refuses the other's by name; and
 * the helpers both tools build their inputs with (the schedule from a
 * generator or a file, the model description, the simulator's cost
 * model, the timeline files). */
#ifndef PP_CLI_H
#define PP_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "cost.h"
#include "error.h"
#include "ir.h"
#include "model.h"
#include "registry.h"
#include "timeline.h"

typedef enum { PP_TOOL_SIM = 1, PP_TOOL_RUN = 2, PP_TOOL_BOTH = 3 } pp_tool;

typedef enum { PP_FORMAT_TABLE, PP_FORMAT_JSON, PP_FORMAT_CSV, PP_FORMAT_PYTORCH_CSV } pp_format;

/* ppsim only: the cost model and the report. */
typedef struct {
    const char *fwd, *bwd, *opt, *straggler;
    const char *split_backward; /* --split-backward: I's share of B, per stage */
    double jitter;
    double overlap_efficiency; /* --overlap-efficiency: what an overlapped pair saves */
    pp_format format;
    const char *per_mb, *output, *schedules;
    int quiet;       /* no progress line */
    int opt_flops;   /* OPT += the optimizer's matrix FLOPs at the forward's rate */
} pp_sim_opts;

/* pprun only: training, placement, multi-process runs, checkpoints, logs. */
typedef struct {
    const char *backend, *data, *data_bin, *val_bin, *log, *versions;
    const char *devices, *checkpoint, *resume, *rendezvous, *transport, *sm_partitions;
    const char *data_order;  /* random (default) or sequential */
    const char *bind, *job_secret_file; /* multi-process runs */
    double lr, min_lr, timeout;
    double beta1, beta2, eps, weight_decay, grad_clip; /* AdamW; grad_clip 0: off */
    double muon_momentum;    /* --optimizer muon only; -1: not given (0.95) */
    /* --optimizer adamw-rotated only; 0, NULL, -1: not given */
    int rotate_every;
    const char *rotate_sides, *rotate_basis;
    double rotate_beta;
    int lr_delay_correction; /* PipeMare's lr correction over T updates; 0: off */
    int warmup, eval_every, eval_batches, checkpoint_every, stop_after;
    int threads;             /* per stage on the CPU; 0: cores / stages here */
} pp_run_opts;

typedef struct {
    /* schedule */
    const char *schedule, *ir_file, *csv_file;
    pp_gen_opts gen;
    uint64_t seed;  /* ppsim: jitter; pprun: weight initialisation */
    /* model */
    const char *model, *precision;
    const char *optimizer;  /* --optimizer: the executor's, and its memory in ppsim */
    double delay_correction; /* --delay-correction beta; > 0: on (one more buffer) */
    int layers, dim, heads, vocab, seq_len, micro_batch;
    /* link between stages: time units (ppsim) or seconds (pprun's model) */
    double comm_latency, comm_bandwidth;
    double max_input_bytes; /* schedule, profile and CSV files larger are refused */
    /* timeline outputs; --profile is ppsim's input and pprun's output */
    const char *trace, *svg, *profile;
    pp_sim_opts sim;
    pp_run_opts run;
} pp_cli_opts;

/* The defaults of `tool` (DESIGN §7). */
void pp_cli_defaults(pp_cli_opts *o, pp_tool tool);

/* If argv[*i] is an option of `tool`, consumes it (and its value) and
 * returns 1; returns 0 for an argument that is not an option (a word, or
 * "-"); -1 with one line in e for an unknown option, the other tool's
 * option, or a bad value. */
int pp_cli_option(pp_cli_opts *o, pp_tool tool, int argc, char **argv, int *i, pp_err *e);

/* The option part of `tool`'s --help, section by section. */
void pp_cli_help(FILE *f, pp_tool tool);

int pp_cli_parse_int(const char *flag, const char *v, long min, long max, int *out, pp_err *e);
int pp_cli_parse_double(const char *flag, const char *v, double min, double *out, pp_err *e);

/* The model description after --model and its overrides; checks it
 * against the number of stages. */
int pp_cli_model(const pp_cli_opts *o, int stages, pp_model_desc *out, pp_err *e);
/* The cost model for P stages: defaults, --fwd/--bwd/--opt, comm, jitter,
 * straggler, or a measured --profile. */
int pp_cli_cost(const pp_cli_opts *o, int stages, const pp_model_desc *model, pp_cost *c,
                pp_err *e);

/* Loads --ir or --pytorch-csv into *s and validates it; returns 0, or -1.
 * Returns 1 when neither was given. */
int pp_cli_load_ir(const pp_cli_opts *o, pp_schedule *s, pp_err *e);

/* Before any work: every output path (NULL ones skipped) can be created,
 * in an existing, writable directory, and is neither a directory nor one
 * of the inputs (or another output). `dirs` are directories a run will
 * create or fill (their parent, or they, must be writable). One line names
 * the first that fails. */
int pp_cli_check_outputs(const char *const *outs, int nout, const char *const *dirs, int ndirs,
                         const char *const *ins, int nin, pp_err *e);

/* Writes whichever of the Chrome trace, SVG timeline and per-micro-batch
 * CSV were asked for (NULL paths are skipped). */
int pp_cli_write_timeline(const pp_timeline *tl, const char *trace, const char *svg,
                          const char *per_mb, pp_err *e);

#endif
