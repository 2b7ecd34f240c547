/* A timed run: what the simulator predicts in full mode and what the
 * executor measures. Traces, SVG timelines and the per-micro-batch CSV are
 * written from this one shape, so simulated and measured runs look alike. */
#ifndef PP_TIMELINE_H
#define PP_TIMELINE_H

#include <stddef.h>
#include <stdio.h>

#include "error.h"
#include "ir.h"

/* A forward whose backward will read the stashed version: the stage keeps
 * that version alive from the forward on (the weight-copy count needs to
 * know at forward time). */
#define PP_TA_STASH 1
/* One half of an overlapped pair: it ran at once with the rank's other
 * action of the same interval (the SVG splits their box). */
#define PP_TA_OVERLAP 2

typedef struct {
    pp_action act;
    int32_t version; /* weights read (F/B/I/W); version created (OPT) */
    int32_t flags;   /* PP_TA_* */
    /* The version the stage's next forward names explicitly (F@vK), or -1:
     * that version must stay alive until then (PipeDream-2BW). */
    int32_t next_f_version;
    double start, end;
} pp_timed_action;

/* One message between neighbouring stages (activation or gradient). */
typedef struct {
    int32_t src, dst, mb;
    int32_t is_grad;
    double start, end; /* sender starts sending, receiver has it */
} pp_transfer;

/* Memory state of a stage from time t on. */
typedef struct {
    double t;
    int32_t inflight; /* micro-batches whose activations are held */
    int32_t copies;   /* weight versions alive */
    int32_t version;  /* current weight version */
    int32_t pad_;
    double bytes;     /* modelled bytes */
} pp_mem_sample;

typedef struct {
    pp_timed_action *items;
    size_t count, cap;
} pp_timed_list;

typedef struct {
    pp_mem_sample *items;
    size_t count, cap;
} pp_mem_list;

typedef struct {
    pp_ir_info info;
    char source[16];      /* "simulated" or "measured" */
    char unit[16];        /* time unit of all times: "units" or "s" */
    double us_per_unit;   /* trace scale: microseconds per time unit */
    pp_timed_list *stage; /* per stage, in execution order */
    pp_mem_list *mem;     /* per stage */
    pp_transfer *transfers;
    size_t ntransfers, transfers_cap;
} pp_timeline;

int pp_timeline_init(pp_timeline *t, const pp_ir_info *info, pp_err *e);
void pp_timeline_free(pp_timeline *t);
int pp_timeline_add_action(pp_timeline *t, int stage, const pp_timed_action *a);
int pp_timeline_add_mem(pp_timeline *t, int stage, const pp_mem_sample *m);
int pp_timeline_add_transfer(pp_timeline *t, const pp_transfer *x);

/* Weight version each micro-batch's F read on `stage`: (*v)[mb] for mb in
 * [0, *n), -1 where the stage has no F for it. Caller frees *v. Lets the
 * trace and SVG writers show drift on backward actions in linear time. */
int pp_timeline_f_versions(const pp_timeline *t, int stage, int32_t **v, size_t *n);

/* One row of the per-micro-batch CSV. */
typedef struct {
    int stage, mb;
    int v_f, v_b;
    double f_start, f_end, b_start, b_end; /* B, or I..W for split backward */
} pp_mb_row;

/* Rows sorted by (stage, micro-batch); caller frees *rows. A part a run did
 * not record (an interrupted measured run) reads -1 (versions) or NAN
 * (times), and the CSV leaves that cell and the drift empty. */
int pp_timeline_mb_rows(const pp_timeline *t, pp_mb_row **rows, size_t *n,
                        pp_err *e);
/* Header "stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,b_end". */
int pp_mb_csv_write(FILE *f, const pp_mb_row *rows, size_t n);
/* Atomic: writes PATH.tmp then renames, so no half-written file remains. */
int pp_mb_csv_save(const char *path, const pp_timeline *t, pp_err *e);

/* Chrome Trace Event JSON (DESIGN §5). Atomic write. */
int pp_trace_save(const char *path, const pp_timeline *t, pp_err *e);
/* SVG timeline: one row per stage, boxes coloured by kind, shaded by
 * micro-batch, OPT marks, legend. Atomic write. */
int pp_svg_save(const char *path, const pp_timeline *t, pp_err *e);

#endif
