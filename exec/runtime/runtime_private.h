/* What the runtime's files share; not a public API. runtime.c runs the
 * whole (pp_run), stage.c is one stage's thread, supervise.c the main
 * thread's reports, evaluate.c validation snapshots, collect.c the result,
 * runtime_ckpt.c a stage's state at a checkpoint cut. */
#ifndef PP_RUNTIME_PRIVATE_H
#define PP_RUNTIME_PRIVATE_H

#include <pthread.h>

#include "cut.h"
#include "mb_table.h"
#include "runtime.h"
#include "transport/transport.h"
#include "weights.h"

/* --- shared run state ------------------------------------------------ */

typedef struct run run;

/* A micro-batch between its F and its weight gradient on a stage (the
 * stage's `flying` table, keyed by micro-batch). */
typedef struct {
    void *acts;
    int32_t v_f;              /* the weight version its forward read */
    uint8_t stash;            /* its backward reads v_f (which stays alive) */
    float loss;               /* last stage: its training loss */
} flying_mb;

/* An action queued on a device, its clock marks not read yet
 * (device_clock.c). */
typedef struct {
    pp_timed_action ta;
    int start_slot, end_slot;
} pp_clocked_action;

#define PP_CLOCK_PENDING 32

typedef struct {
    run *r;
    int s;
    void *bk;                 /* backend stage */
    pp_weight_store ws;
    void *grad;
    pp_mb_table flying;       /* mb -> flying_mb */
    size_t pos;               /* actions of the stage's list done (or skipped on resume) */
    size_t resume_skip;       /* several stages per rank: actions its rank's thread still
                                 skips for it on resume */
    int stopped;              /* reached the cut the run stops at */
    void *x_in, *x_out, *dx_in, *dx_out; /* boundary buffers */
    int *tokens, *targets;
    int updates;
    double loss_sum;
    int loss_n;
    /* measured actions on their way to the main thread (timed_log.c):
     * `pending` and `closed` under log_mu, `ready` the main thread's */
    pthread_mutex_t log_mu;
    int log_mu_made;
    pp_timed_list pending, ready;
    size_t ready_head;
    int closed, ready_closed;
    pp_err err;
    int failed;
    struct pp_outbox_msg *outbox; /* copies kept for checkpoints */
    int noutbox, capoutbox;
    pp_spares free_acts;          /* activation buffers not in use (acts_pool.c) */
    /* device clocks (device_clock.c): the actions whose marks are not
     * read yet, oldest at clk_head; the next slot; the anchor mark and its
     * time on the run's time line */
    pp_clocked_action clk_pending[PP_CLOCK_PENDING];
    int clk_head, clk_count, clk_next, clk_anchor;
    double clk_anchor_t;
    float grad_scale;             /* the next OPT's gradient factor (grad_clip.c) */
} stage_rt;

/* One gradient-norm exchange of a synchronous schedule (grad_clip.c): the
 * stages' sums of squares for their k-th update. */
typedef struct {
    long k;
    int have;                 /* stages that deposited */
    int done;                 /* every stage did: total is set */
    double total;             /* the sum over stages, in stage order */
    double *sumsq;            /* [P] */
    unsigned char *deposited; /* [P]: stage t's sum is in */
} clip_exchange;

/* Snapshot of the model after update k on every stage, for evaluation. */
typedef struct {
    int k;
    int have;                 /* stages that deposited */
    void **w;                 /* [P] host copies */
} snapshot;

struct run {
    const pp_run_config *cfg;
    pp_ir_info info;
    int P, N;
    pp_stream *ir;            /* the ranks' cursors: rank r reads only its own */
    pp_stream *stage_view;    /* several stages per rank, on resume: each stage's own
                                 list (runtime_ckpt.c skips through it) */
    pp_ir_plan plan;          /* what the IR needs (pp_ir_plan_make) */
    int bad_resume;           /* a resume blob was refused */
    stage_rt *st;
    pp_transport *tr;
    double t0;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* barrier */
    int bar_count, bar_gen;
    /* gradient clipping: by the global norm, the k-th updates meeting at
     * clip[k % 2] (a stage may reach update k + 1 while another still
     * reads the total of k, never k + 2) */
    int clip_global;
    clip_exchange clip[2];
    /* the stages this process runs: [lo, lo + nloc); the rank threads
     * that run them (one per stage, or all ranks where ranks hold several
     * stages) */
    int lo, nloc;
    int local_ranks;
    int own_tr;               /* tr is the in-process transport pp_run made */
    /* reports from the last stage, in update order */
    pp_step_record *records;
    int nrecords, caprecords;
    snapshot *snaps;
    int nsnaps;
    int stages_done;
    int aborted;
    double tokens;
    /* checkpoints: per cut, the stages' state blobs as they arrive */
    void ***cut_blobs;
    size_t **cut_sizes;
    int *cut_have;
};


/* A message kept for a checkpoint: sent before the sender's cut, used
 * after the receiver's. */
typedef struct pp_outbox_msg {
    int cut;       /* index into cfg->cuts */
    int kind, dst, mb;
    void *buf;     /* host copy */
    size_t bytes;
} pp_outbox_msg;

/* runtime.c: marks the run aborted and wakes every waiting stage. */
void pp_run_abort(run *r);
/* A fresh stream over the configured IR (cfg->ir or cfg->open_ir). */
int pp_run_open_ir(const pp_run_config *c, pp_stream **out, pp_err *e);

/* Evaluation needs the whole model: only a process that runs every stage. */
static inline int pp_run_evaluates(const run *r)
{
    return r->cfg->val_batch && r->nloc == r->P;
}

/* stage.c: a stage's buffers and state before its thread starts (and
 * restored from a checkpoint blob on resume); freed by release. */
int pp_stage_prepare(stage_rt *s, pp_err *e);
void pp_stage_release(stage_rt *s);
/* A rank's thread (one per local rank): runs the rank's action list on
 * its stages. */
#define PP_MAX_RANK_STAGES 64
typedef struct {
    run *r;
    int rank;
} pp_rank_rt;
void *pp_rank_main(void *arg);
/* The stage's micro-batch in flight, or NULL. */
static inline flying_mb *pp_flying(stage_rt *s, int mb)
{
    return pp_mbt_get(&s->flying, mb);
}

/* timed_log.c: the measured actions, from the stages to the main thread.
 * A stage pushes each action it finished and closes its log when its
 * thread ends; pp_log_merge (main thread) hands on, in start order, every
 * action whose turn has come: all of them once every local stage closed. */
int pp_log_init(stage_rt *s, pp_err *e);
int pp_log_push(stage_rt *s, const pp_timed_action *ta, pp_err *e);
void pp_log_close(stage_rt *s);
int pp_log_merge(run *r, pp_err *e);
void pp_log_free(stage_rt *s);

/* device_clock.c: actions timed by the device's clock (backends with
 * clock_mark), read behind the work instead of waiting for each action.
 * start records the origin; begin marks an action's start (reading the
 * oldest pending action first when PP_CLOCK_PENDING are), end its end
 * and keeps it pending; drain reads and logs every pending action. */
void pp_clock_start(stage_rt *s);
int pp_clock_begin(stage_rt *s, int *start_slot, pp_err *e);
void pp_clock_end(stage_rt *s, const pp_timed_action *ta, int start_slot);
int pp_clock_drain(stage_rt *s, pp_err *e);

/* grad_clip.c: gradient clipping. init decides how this run clips (the
 * global norm needs every stage here) and sets up the exchange; before each
 * OPT, pp_clip_scale sets s->grad_scale (1 without clipping), in a
 * synchronous schedule after every stage's gradient of that update is in.
 * An aborted run releases the waiters with an error. */
int pp_clip_init(run *r, pp_err *e);
void pp_clip_free(run *r);
int pp_clip_scale(stage_rt *s, pp_err *e);

/* acts_pool.c: a stage's activation buffers. reserve allocates, once,
 * as many as the stage's action list ever holds at a time (less those a
 * resume restored); get and put take one and give it back, allocating
 * only if the schedule holds more than it said; free releases the spares. */
int pp_acts_reserve(stage_rt *s, pp_err *e);
void *pp_acts_get(stage_rt *s);
void pp_acts_put(stage_rt *s, void *buf);
void pp_acts_free(stage_rt *s);

/* supervise.c: the main thread's reports. The last stage records each
 * update; pp_supervise emits the records in order and writes complete
 * checkpoint cuts until every local stage is done. */
typedef struct {
    void **eval_stages;       /* [P] evaluator stages, or NULL */
    int emitted;              /* records handed to on_step */
} reporter;
int pp_report_update(stage_rt *s, pp_err *e);
int pp_supervise(run *r, reporter *rep, pp_err *e);

/* evaluate.c: snapshots (under r->mu) and the final evaluation. */
snapshot *pp_snapshot_find(run *r, int k);
int pp_snapshot_deposit(stage_rt *s, int k, pp_err *e);
void pp_snapshot_free(run *r, snapshot *sn);
int pp_run_final_evaluation(run *r, void **eval_stages, pp_run_result *res, pp_err *e);

/* collect.c: the result of a finished run. */
int pp_run_collect(run *r, pp_run_result *res, pp_err *e);
int pp_run_keep_final_weights(run *r, pp_run_result *res, pp_err *e);

/* runtime_ckpt.c: a message just sent (by action a, at index idx) that a
 * cut will need; the stage's state at cut j, handed to the main thread. */
int pp_stage_keep_for_checkpoint(stage_rt *s, const pp_action *a, size_t idx, pp_err *e);
int pp_stage_reach_cut(stage_rt *s, int j, pp_err *e);

/* Serialises stage s's state at cut j into a fresh host blob. */
int pp_stage_save(stage_rt *s, int j, void **blob, size_t *bytes, pp_err *e);
/* Restores a stage from a blob and moves its cursor to where its action
 * list resumes (s->pos). */
int pp_stage_restore(stage_rt *s, const void *blob, size_t bytes, pp_err *e);
/* Resends the outbox messages a resumed stage owes its neighbours. */
int pp_stage_resend(stage_rt *s, pp_err *e);

#endif
