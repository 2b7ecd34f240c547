/* exec/runtime/: the stage runtime that interprets the schedule IR: the
 * run (this header), each stage's action loop, weight versions, checkpoint
 * cuts and files, the placement of stages on devices, and the backends by
 * name. May include model/, transport/, launch/ and cuda/'s C headers: the
 * runtime sits above every other room, and no room includes it.
 *
 * The stage runtime (DESIGN §6): one thread per stage walks that stage's
 * action list from the IR and honours its weight selectors. Each stage owns
 * its weight versions (the current one, versions stashed for in-flight
 * backwards, a version a later F@vK names), its gradient buffer and
 * optimizer, and the activations of its micro-batches in flight. The main
 * thread collects per-update losses, evaluates snapshots and reports. */
#ifndef PP_RUNTIME_H
#define PP_RUNTIME_H

#include <stdint.h>

#include "model/adamw.h"
#include "model/backend.h"
#include "model/optim.h"
#include "ir.h"
#include "model.h"
#include "timeline.h"
#include "transport/transport.h"

struct pp_cut;

/* One line of the training log: the last stage's k-th update. */
typedef struct {
    int step;          /* 1-based */
    double loss;       /* mean training loss of the micro-batches it applied */
    int has_val;
    double val_loss;   /* the model after update k on every stage */
    double lr;
    double elapsed_s;  /* wall time since the run started */
    double tokens;     /* training tokens through the last stage so far */
} pp_step_record;

/* Fills tokens[B*T] and targets[B*T] of training micro-batch mb, or of
 * validation batch i. */
typedef int (*pp_batch_fn)(void *ctx, long index, int *tokens, int *targets, pp_err *e);

typedef struct {
    const pp_schedule *ir;       /* validated; or NULL, and open_ir */
    /* The IR as a stream instead (a generator): opened once per pass over
     * it, the checks before the run and then one cursor per stage, so a
     * long run never holds its whole IR. Its deadlocks are found before
     * the first action (pp_ir_plan); the generator is trusted otherwise. */
    int (*open_ir)(void *ctx, pp_stream **out, pp_err *e);
    void *open_ir_ctx;
    pp_model_desc model;         /* micro_batch = B, seq_len = T */
    const pp_backend_ops *backend;
    const pp_placement *placement; /* [P]; NULL: every stage on GPU 0, whole */
    /* The stages this process runs: [local_first, local_first + local_count);
     * local_count 0 means all. With fewer than all, `transport` (required)
     * reaches the others; the run reports updates where the last stage is,
     * and evaluation (which needs every stage's weights) is left out. */
    int local_first, local_count;
    pp_transport *transport;     /* not owned; NULL: the in-process transport */
    double t0;                   /* time origin (pp_now_s clock); 0: when the stages start */
    uint64_t seed;
    pp_lr_schedule lr;           /* indexed by each stage's own update count */
    pp_adamw_hparams adamw;      /* all zero (a memset config): pp_adamw_defaults() */
    pp_optim_config optim;       /* the stages' optimizer; all zero: AdamW */
    /* PipeMare's learning-rate correction (model/optim.h): stage s's
     * learning rate divided by lr_delay_tau[s]^(1 - min(t / lr_delay_T, 1))
     * at its update t; taus at least 1, NULL: off. */
    const double *lr_delay_tau;
    long lr_delay_T;
    /* Gradient clipping to this L2 norm (0: off): the true global norm in a
     * synchronous schedule, a per-stage share of it otherwise (grad_clip.c
     * says why); the global form needs every stage in this process. */
    double grad_clip;
    pp_batch_fn train_batch, val_batch;
    void *data;
    int eval_every;              /* evaluate after every k-th update; 0 = at the end only */
    int eval_batches;            /* validation batches per evaluation */
    double timeout_s;            /* a stage waiting longer than this fails the run */
    double link_s;               /* in-process transport: seconds per message on a link */
    int threads;                 /* CPU threads per stage; 0: the cores / local stages */
    /* Measured actions (seconds) as the stages finish them, the local
     * stages' merged in start order (ties: stage, then the stage's own
     * order), as the simulator's metrics take them. Either or both: every
     * action appended to `timeline`, and each handed to on_action (from
     * the thread that called pp_run; an error fails the run). Each action
     * carries PP_TA_STASH and next_f_version as the simulator sets them.
     * The run itself keeps only those not yet handed on. */
    pp_timeline *timeline;
    int (*on_action)(void *ctx, int stage, const pp_timed_action *a, pp_err *e);
    void *on_action_ctx;
    void (*on_step)(void *ctx, const pp_step_record *r);
    void *on_step_ctx;
    /* Called once the stages are created (and restored from resume_blobs),
     * before the first action: a tool's banner, after which only run-time
     * failures remain. */
    void (*on_ready)(void *ctx);
    void *on_ready_ctx;
    /* Test hook: when set, [stage][mb][0/1] receives a checksum of the
     * weights the forward / backward of mb read on that stage. */
    double *weight_checksums;
    /* Test hook: peak number of weight copies alive per stage (P ints). */
    int *peak_weight_copies;
    /* Checkpoints: consistent cuts (runtime/cut.h) at which every stage
     * serialises its state; on_checkpoint gets the P blobs of a cut once
     * all arrived. stop_cut >= 0 ends the run at that cut. */
    const struct pp_cut *cuts;
    int ncuts, stop_cut;
    int (*on_checkpoint)(void *ctx, int K, void **blobs, size_t *sizes, double tokens,
                         pp_err *e);
    void *on_checkpoint_ctx;
    /* Resume: per-stage blobs from a checkpoint, and the tokens trained
     * before it (NULL for a fresh start). */
    void **resume_blobs;
    size_t *resume_sizes;
    double resume_tokens;
    /* Hand back host copies of the local stages' final weights (for an
     * evaluation elsewhere: a multi-process run's rank 0). */
    int keep_final_weights;
} pp_run_config;

typedef struct {
    int steps;                   /* updates on the last stage */
    double *step_loss;           /* [steps], caller frees */
    double final_val_loss;       /* after the last update (if val_batch) */
    double elapsed_s, tokens;
    int nstages;                 /* P, with final_weights */
    void **final_weights;        /* [P] with keep_final_weights: local stages', else NULL */
    size_t *final_weight_bytes;  /* [P] */
    int bad_resume;              /* failed: a resume blob's contents are wrong (bad input) */
} pp_run_result;

/* "cpu", or "cuda" when built with CUDA; a one-line error otherwise. */
const pp_backend_ops *pp_backend_find(const char *name, pp_err *e);

/* Threads per stage: `threads` if set, else the cores this process may
 * use divided among its local stages, at least 1. */
int pp_run_stage_threads(int threads, int local_stages);

/* 1 when the schedule is synchronous: every stage has the same OPTs and
 * BARRIERs in the same order, its k-th OPT applies the same micro-batches
 * as every other stage's k-th, and no micro-batch is in flight (forwarded,
 * its weight gradient not yet taken) at an OPT: 1F1B-flush and GPipe, not
 * PipeDream, PipeDream-2BW or PACI. 0 when not, -1 when out of memory.
 * Such a schedule clips by the global norm (grad_clip.c). */
int pp_schedule_synchronous(const pp_schedule *ir, pp_err *e);
/* The same, read from a fresh stream (left exhausted). */
int pp_stream_synchronous(pp_stream *st, pp_err *e);

/* What a run learns from its IR before the first action, by playing it
 * through with links that never fill (ir_plan.c says how): per stage the
 * most micro-batches it holds at once and its number of actions, the
 * first BARRIER, and the messages every link and direction must be able
 * to hold (sent and not yet taken by the receiver, or taken and parked
 * until it wants them) so that no send ever blocks: with fewer, a valid IR
 * can stall both neighbours on their sends. A schedule that deadlocks even
 * with unbounded links fails, naming the stage and action. */
typedef struct {
    int P;
    int slots;                 /* the most any link needs, at least 1 */
    int slots_src, slots_dst;  /* the link that needs them (-1: none sends) */
    int *peak_held;            /* [P] */
    size_t *actions;           /* [P] */
    int barrier_stage;         /* the first BARRIER's stage, -1: none */
    size_t barrier_pos;
} pp_ir_plan;
int pp_ir_plan_make(pp_stream *st, pp_ir_plan *p, pp_err *e);
void pp_ir_plan_free(pp_ir_plan *p);

/* The capacity per link and direction a transport needs for this IR (the
 * `capacity` of pp_transport_tcp_create and the NCCL transport): the plan's
 * slots, or -1 with the reason. The in-process transport of pp_run is
 * sized this way already. */
int pp_schedule_link_slots(const pp_schedule *ir, pp_err *e);

/* CLOCK_MONOTONIC in seconds: the clock of the measured timelines. */
double pp_now_s(void);

int pp_run(const pp_run_config *cfg, pp_run_result *res, pp_err *e);

/* Asks the runs of this process to stop soon (async-signal-safe: for a
 * SIGINT/SIGTERM handler): pp_run then fails with "interrupted" after the
 * updates it has reported. pp_run_interrupted says whether it was asked. */
void pp_run_interrupt(void);
int pp_run_interrupted(void);
void pp_run_result_free(pp_run_result *r);

/* Mean validation loss of the full model over n batches, with weights
 * given per stage (host copies, stage order). Used by pp_run's evaluator. */
int pp_evaluate(const pp_backend_ops *b, const pp_model_desc *m, int P, void **stage_objs,
                void **weights, pp_batch_fn val_batch, void *data, int n, double *loss,
                pp_err *e);

#endif
