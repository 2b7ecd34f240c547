/* pprun's side of a multi-process run: one process per stage (rank r runs
 * stage r), meeting through a rendezvous store, connected by the socket or
 * the NCCL transport. */
#ifndef PPRUN_DIST_H
#define PPRUN_DIST_H

#include "model/backend.h"
#include "cli.h"
#include "launch/dist.h"
#include "launch/job.h"
#include "model/data.h"
#include "ir.h"
#include "runtime/runtime.h"
#include "launch/store.h"
#include "transport/transport.h"

typedef struct {
    pp_dist_env env;
    pp_secret secret; /* after pprun_dist_secret */
    pp_store *store;  /* after connect */
    pp_transport *tr; /* after connect */
    int refused;      /* connect failed on the user's mistake: exit 2 */
} pprun_dist;

typedef struct {
    const char *transport; /* --transport, or NULL */
    int checkpointing;     /* --checkpoint or --resume given */
    int eval_every;        /* --eval-every */
    const char *bind;      /* --bind, or NULL */
} pprun_dist_opts;

/* What can be checked before meeting the others: one process per stage, no
 * options a multi-process run lacks, a transport the backend can use (the
 * default: nccl for cuda, tcp for cpu) in *transport, a --bind address
 * of this machine. Bad input: exit 2. */
int pprun_dist_check(const pprun_dist *d, const pp_schedule *ir, const pp_backend_ops *b,
                     const pprun_dist_opts *o, const char **transport, pp_err *e);
/* The job secret ($PPSCHED_JOB_SECRET or the file); a tcp:// rendezvous
 * refuses to start without one (bad input, exit 2). */
int pprun_dist_secret(pprun_dist *d, const pp_store_spec *spec, const char *file, pp_err *e);
/* Everything the ranks must agree on, from this rank's options, model and
 * data. */
void pprun_dist_job(pp_job *j, const pp_schedule *ir, const pp_model_desc *m,
                    const pp_cli_opts *o, const pp_data *data, const char *backend,
                    const char *transport);
/* Meets the other processes through `spec` (checking that they run the
 * same job) and connects the transport; d->refused on a mismatch. */
int pprun_dist_connect(pprun_dist *d, const pp_schedule *ir, const char *spec,
                       const char *transport, double timeout_s, const char *bind,
                       const pp_job *job, pp_err *e);
/* Collective after a run with keep_final_weights: every rank ends with the
 * final model's validation loss, which rank 0 computes. */
int pprun_dist_evaluate(pprun_dist *d, const pp_run_config *cfg, const pp_run_result *res,
                        double *loss, pp_err *e);
void pprun_dist_close(pprun_dist *d);

#endif
