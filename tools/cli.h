/* Command-line options shared by ppsim and pprun: the schedule (generated or
 * from a file), the cost model and the model description (DESIGN §7). */
#ifndef PP_CLI_H
#define PP_CLI_H

#include <stdint.h>

#include "cost.h"
#include "error.h"
#include "ir.h"
#include "model.h"
#include "registry.h"
#include "timeline.h"

typedef struct {
    /* schedule */
    const char *schedule, *ir_file, *csv_file;
    pp_gen_opts gen;
    /* cost model */
    const char *fwd, *bwd, *opt, *profile, *straggler;
    double comm_latency, comm_bandwidth, jitter;
    uint64_t seed;
    /* model */
    const char *model, *precision;
    int layers, dim, heads, vocab, seq_len, micro_batch;
} pp_cli_opts;

void pp_cli_defaults(pp_cli_opts *o, const char *default_model);

/* Splits "--flag=value"; for "--flag value" takes argv[*i+1]. Returns the
 * value or NULL (error set) when missing. */
const char *pp_cli_value(int argc, char **argv, int *i, const char *flag, pp_err *e);
/* Matches argv[i] against flag, with or without "=value". */
int pp_cli_is(const char *arg, const char *flag);

/* If argv[*i] is one of the shared options, consumes it (and its value):
 * returns 1; 0 if not ours; -1 on a bad value. */
int pp_cli_shared_option(pp_cli_opts *o, int argc, char **argv, int *i, pp_err *e);

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

/* Writes whichever of the Chrome trace, SVG timeline and per-micro-batch
 * CSV were asked for (NULL paths are skipped). */
int pp_cli_write_timeline(const pp_timeline *tl, const char *trace, const char *svg,
                          const char *per_mb, pp_err *e);

/* Usage text of the shared options. */
extern const char pp_cli_shared_help[];

#endif
