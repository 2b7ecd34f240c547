/* The schedule IR (DESIGN §2): for each of P stages an ordered list of
 * actions. Two forms share one action type:
 *   - pp_schedule: the whole IR in memory (files, export, validation);
 *   - pp_stream:   a per-stage cursor that yields actions on demand, so the
 *                  simulator can run 10^7 actions without storing them.
 * A pp_schedule can be read as a stream, and a stream drained into a
 * pp_schedule; generators are written once, as streams. */
#ifndef PP_IR_H
#define PP_IR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"

typedef enum {
    PP_OP_F = 0,   /* forward of a micro-batch */
    PP_OP_B,       /* full backward (input grad + weight grad) */
    PP_OP_I,       /* split backward: input grad only */
    PP_OP_W,       /* split backward: weight grad only */
    PP_OP_OPT,     /* apply accumulated gradients, version += 1 */
    PP_OP_BARRIER, /* all stages meet */
    PP_OP_COUNT
} pp_op;

typedef enum {
    PP_SEL_LATEST = 0, /* the stage's current weights */
    PP_SEL_STASH,      /* (B/I/W only) the version its own F used */
    PP_SEL_VERSION     /* (F only) weight version `version` */
} pp_sel;

typedef struct {
    uint8_t op;      /* pp_op */
    uint8_t sel;     /* pp_sel */
    uint16_t pad_;
    int32_t mb;      /* micro-batch, -1 for OPT and BARRIER */
    int32_t version; /* only for PP_SEL_VERSION, else 0 */
} pp_action;

#define PP_NAME_MAX 64
#define PP_MAX_PARAMS 16

typedef struct {
    char key[32];
    char value[64];
} pp_param;

/* What every IR records besides its action lists. */
typedef struct {
    char name[PP_NAME_MAX];  /* schedule name, e.g. "paci" */
    int stages;              /* P */
    int microbatches_per_step; /* m (PACI's accumulation factor a) */
    int steps;               /* S */
    int total_microbatches;  /* N, normally m*S */
    int nparams;
    pp_param params[PP_MAX_PARAMS];
} pp_ir_info;

typedef struct {
    pp_action *items;
    size_t count, cap;
} pp_action_list;

typedef struct {
    pp_ir_info info;
    pp_action_list *stage; /* info.stages lists */
} pp_schedule;

/* --- schedule lifetime and builder ----------------------------------- */
int pp_schedule_init(pp_schedule *s, const pp_ir_info *info, pp_err *e);
void pp_schedule_free(pp_schedule *s);
int pp_schedule_push(pp_schedule *s, int stage, pp_action a, pp_err *e);
size_t pp_schedule_action_count(const pp_schedule *s);

/* Sets (or replaces) a free-form parameter; returns -1 when full. */
int pp_info_set_param(pp_ir_info *info, const char *key, const char *value);
const char *pp_info_get_param(const pp_ir_info *info, const char *key);

/* --- actions as text: "F12", "B3@s", "F7@v2", "OPT", "BARRIER" ------- */
/* Writes the text form into buf (at least 32 bytes). Returns buf. */
char *pp_action_format(pp_action a, char *buf, size_t n);
/* Parses the text form; -1 with a message naming the text on error. */
int pp_action_parse(const char *text, pp_action *out, pp_err *e);
const char *pp_op_name(pp_op op); /* "F", "B", ... */

static inline pp_action pp_act(pp_op op, int mb)
{
    pp_action a = {(uint8_t)op, PP_SEL_LATEST, 0, mb, 0};
    return a;
}

/* --- streams ---------------------------------------------------------- */
typedef struct pp_stream pp_stream;
struct pp_stream {
    pp_ir_info info;
    /* Next action of `stage` into *out: 1 = got one, 0 = stage finished. */
    int (*next)(pp_stream *st, int stage, pp_action *out);
    void (*destroy)(pp_stream *st); /* frees st itself too */
    /* Optional: whether the backward of `mb` on `stage` reads the stashed
     * version (so its forward's version must stay alive). NULL = never. */
    int (*stashes)(pp_stream *st, int stage, int mb);
    /* Optional: the version that the next forward of `stage` (after the
     * last action yielded) names explicitly, or -1. NULL = always -1. */
    int (*next_f_version)(pp_stream *st, int stage);
    void *state;
};

static inline int pp_stream_next(pp_stream *st, int stage, pp_action *out)
{
    return st->next(st, stage, out);
}
void pp_stream_free(pp_stream *st);

/* A stream over an existing schedule (which must outlive the stream). */
int pp_stream_from_schedule(const pp_schedule *s, pp_stream **out, pp_err *e);
/* Drains a stream into a new schedule (stream left exhausted). */
int pp_schedule_from_stream(pp_stream *st, pp_schedule *out, pp_err *e);

/* --- validation (DESIGN §2) ------------------------------------------ */
/* Checks every rule of the IR: each micro-batch has exactly one F and one B
 * (or one I and one W) per stage, B after F, I before W, legal selectors,
 * explicit versions that exist when used, micro-batch ids in range, and no
 * deadlock (the message names the stage and action where it stalls). */
int pp_schedule_validate(const pp_schedule *s, pp_err *e);

/* --- files ------------------------------------------------------------ */
/* IR JSON (DESIGN §2 "JSON form"). */
int pp_schedule_write_json(const pp_schedule *s, FILE *f, pp_err *e);
int pp_schedule_save_json(const pp_schedule *s, const char *path, pp_err *e);
int pp_schedule_parse_json(const char *text, pp_schedule *out, pp_err *e);
int pp_schedule_load_json(const char *path, pp_schedule *out, pp_err *e);
/* PyTorch torch.distributed.pipelining compute-only CSV (one row per rank,
 * cells "0F1", "1B0", "1I0", "1W0", empty = idle). Micro-batches per step
 * default to the number of micro-batches found; an OPT is appended per
 * stage so the schedule is one optimizer step. */
int pp_schedule_parse_pytorch_csv(const char *text, pp_schedule *out, pp_err *e);
int pp_schedule_load_pytorch_csv(const char *path, pp_schedule *out, pp_err *e);
/* The compute-only CSV PyTorch's _load_csv reads (ir_pytorch_csv_write.c):
 * one step, no barriers, no weight selectors; -1 with the stage and
 * action that PyTorch's format cannot hold. */
int pp_schedule_write_pytorch_csv(const pp_schedule *s, FILE *f, pp_err *e);
int pp_schedule_save_pytorch_csv(const pp_schedule *s, const char *path, pp_err *e);

/* Reads a whole file into a NUL-terminated buffer (caller frees). */
int pp_read_file(const char *path, char **text, size_t *len, pp_err *e);
/* The most bytes pp_read_file reads before it refuses a file (1 GiB). */
void pp_set_max_input_bytes(size_t n);

#endif
