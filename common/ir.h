/* The schedule IR (DESIGN §2): R ranks (devices, one compute resource
 * each) run S stages (model chunks, in model order); each rank has one
 * ordered list of actions, and every action names its stage. A placement
 * maps stages to ranks: one stage per rank (S = R, the default, where an
 * action's stage is its rank), looped (stage s on rank s mod R) or V-shape
 * (S = 2R: stages 0..R-1 down the ranks, R..2R-1 back up). Stage r is on
 * rank r in all three. Two forms share one action type:
 *   - pp_schedule: the whole IR in memory (files, export, validation);
 *   - pp_stream:   a per-rank cursor that yields actions on demand, so the
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

/* An overlapped pair (DualPipeV: the forward of one stage and micro-batch
 * with the backward or I of another, on one rank at once) is two
 * consecutive actions of a rank's list, the first with `with_next` set. */
typedef struct {
    uint8_t op;            /* pp_op */
    uint8_t sel : 7;       /* pp_sel */
    uint8_t with_next : 1; /* runs together with the rank's next action */
    uint16_t stage;        /* the model chunk it runs (BARRIER: the rank) */
    int32_t mb;            /* micro-batch, -1 for OPT and BARRIER */
    int32_t version;       /* only for PP_SEL_VERSION, else 0 */
} pp_action;

/* The most stages a schedule has (an action's stage is 16 bits). */
#define PP_MAX_STAGES 65535
/* Parsed text without a stage prefix ("F3", not "1F3"). */
#define PP_NO_STAGE 0xffff

typedef enum {
    PP_PLACE_ONE = 0, /* stage r on rank r, S = R */
    PP_PLACE_LOOPED,  /* stage s on rank s mod R, S a multiple of R */
    PP_PLACE_V,       /* S = 2R: stage s on rank s for s < R, else 2R-1-s */
    PP_PLACE_COUNT
} pp_place;

#define PP_NAME_MAX 64
#define PP_MAX_PARAMS 16

typedef struct {
    char key[32];
    char value[64];
} pp_param;

/* What every IR records besides its action lists. */
typedef struct {
    char name[PP_NAME_MAX];  /* schedule name, e.g. "paci" */
    int stages;              /* S (P when one stage per rank) */
    int ranks;               /* R; 0 is read as one stage per rank */
    int placement;           /* pp_place */
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
    pp_action_list *rank; /* info.ranks lists */
} pp_schedule;

/* --- placement -------------------------------------------------------- */
/* Fills ranks (0 -> stages) and checks that the placement fits S and R:
 * -1 with one line saying why ("12 stages do not divide over 8 ranks"). */
int pp_info_check_placement(pp_ir_info *info, pp_err *e);
/* The rank that runs `stage` (info checked by pp_info_check_placement). */
static inline int pp_stage_rank(const pp_ir_info *info, int stage)
{
    switch (info->placement) {
    case PP_PLACE_LOOPED: return stage % info->ranks;
    case PP_PLACE_V: return stage < info->ranks ? stage : 2 * info->ranks - 1 - stage;
    default: return stage;
    }
}
/* The stages of one rank, in model order: out[0..count) (count is S/R). */
int pp_rank_stages(const pp_ir_info *info, int rank, int *out, int cap);
const char *pp_place_name(int placement); /* "one", "looped", "v" */
int pp_place_parse(const char *text, int *out);
/* Whether the schedule holds several stages on a rank (S > R). */
static inline int pp_multi_stage(const pp_ir_info *info)
{
    return info->placement != PP_PLACE_ONE;
}

/* --- schedule lifetime and builder ----------------------------------- */
/* Checks the placement (pp_info_check_placement) and allocates R lists. */
int pp_schedule_init(pp_schedule *s, const pp_ir_info *info, pp_err *e);
void pp_schedule_free(pp_schedule *s);
/* Appends to `rank`'s list. With one stage per rank the action's stage is
 * set to the rank; otherwise it must be a stage placed on that rank
 * (BARRIER's stage is set to the rank). */
int pp_schedule_push(pp_schedule *s, int rank, pp_action a, pp_err *e);
size_t pp_schedule_action_count(const pp_schedule *s);

/* Sets (or replaces) a free-form parameter; returns -1 when full. */
int pp_info_set_param(pp_ir_info *info, const char *key, const char *value);
const char *pp_info_get_param(const pp_ir_info *info, const char *key);

/* --- actions as text: "F12", "B3@s", "F7@v2", "OPT", "BARRIER" ------- */
/* With several stages per rank the stage leads: "1F12", "0B3@s", "1OPT";
 * an overlapped pair is one cell "2F5+1B3". */
/* Writes the text form into buf (at least 32 bytes). Returns buf. */
char *pp_action_format(pp_action a, char *buf, size_t n);
/* The same with the stage in front ("1F12"; BARRIER has none). */
char *pp_action_format_staged(pp_action a, char *buf, size_t n);
/* The text form the schedule's own files use: staged where S > R. */
char *pp_action_format_in(const pp_ir_info *info, pp_action a, char *buf, size_t n);
/* Parses one action, with or without a stage prefix (stage PP_NO_STAGE
 * when none); -1 with a message naming the text on error. */
int pp_action_parse(const char *text, pp_action *out, pp_err *e);
/* Parses a cell: one action or an overlapped pair "2F5+1B3" (out[0] gets
 * with_next). *n = 1 or 2. The pair must be one F and one B or I. */
int pp_action_parse_cell(const char *text, pp_action out[2], int *n, pp_err *e);
const char *pp_op_name(pp_op op); /* "F", "B", ... */

static inline pp_action pp_act(pp_op op, int mb)
{
    pp_action a = {(uint8_t)op, PP_SEL_LATEST, 0, 0, mb, 0};
    return a;
}

/* The same on a given stage. */
static inline pp_action pp_act_on(pp_op op, int stage, int mb)
{
    pp_action a = pp_act(op, mb);
    a.stage = (uint16_t)stage;
    return a;
}

/* --- streams ---------------------------------------------------------- */
typedef struct pp_stream pp_stream;
struct pp_stream {
    pp_ir_info info;
    /* Next action of `rank` into *out: 1 = got one, 0 = rank finished.
     * With one stage per rank a stream may leave the stage 0: the rank is
     * the stage (pp_stream_next sets it). */
    int (*next)(pp_stream *st, int rank, pp_action *out);
    void (*destroy)(pp_stream *st); /* frees st itself too */
    /* Optional: whether the backward of `mb` on `stage` reads the stashed
     * version (so its forward's version must stay alive). NULL = never. */
    int (*stashes)(pp_stream *st, int stage, int mb);
    /* Optional: the version that the next forward of `stage` (after the
     * last action yielded) names explicitly, or -1. NULL = always -1. */
    int (*next_f_version)(pp_stream *st, int stage);
    void *state;
};

static inline int pp_stream_next(pp_stream *st, int rank, pp_action *out)
{
    int got = st->next(st, rank, out);
    if (got && st->info.placement == PP_PLACE_ONE)
        out->stage = (uint16_t)rank;
    return got;
}
void pp_stream_free(pp_stream *st);

/* A stream over an existing schedule (which must outlive the stream). */
int pp_stream_from_schedule(const pp_schedule *s, pp_stream **out, pp_err *e);
/* Drains a stream into a new schedule (stream left exhausted). */
int pp_schedule_from_stream(pp_stream *st, pp_schedule *out, pp_err *e);
/* Drains a stream into a per-stage view: a stream whose next(st, s, ...)
 * yields stage s's own actions in its rank's order (BARRIERs on every stage
 * of the rank), as if each stage had a rank of its own; for what looks at
 * stages one by one (is each update the same batch on every stage?). The
 * view owns the drained schedule. */
int pp_stream_stage_view(pp_stream *src, pp_stream **out, pp_err *e);

/* --- validation (DESIGN §2) ------------------------------------------ */
/* Checks every rule of the IR: each micro-batch has exactly one F and one B
 * (or one I and one W) per stage, B after F, I before W, legal selectors,
 * explicit versions that exist when used, micro-batch ids in range, every
 * action on its stage's rank, overlapped pairs of one F and one B or I, and
 * no deadlock (the message names the rank, stage and action where it
 * stalls). */
int pp_schedule_validate(const pp_schedule *s, pp_err *e);

/* --- files ------------------------------------------------------------ */
/* IR JSON (DESIGN §2 "JSON form"). */
int pp_schedule_write_json(const pp_schedule *s, FILE *f, pp_err *e);
int pp_schedule_save_json(const pp_schedule *s, const char *path, pp_err *e);
int pp_schedule_parse_json(const char *text, pp_schedule *out, pp_err *e);
int pp_schedule_load_json(const char *path, pp_schedule *out, pp_err *e);
/* PyTorch torch.distributed.pipelining CSV, either dump format (one row
 * per rank; cells "0F1", "1B0", "1I0", "1W0", overlapped
 * "(0F2;1B0)OVERLAP_F_B", empty = idle, bookkeeping and communication
 * cells skipped; ir_pytorch_csv.c has the grammar). The placement (one
 * per rank, looped or V) is read off which row runs which stage.
 * Micro-batches per step default to the number found; an OPT per stage
 * ends its rank's list, so the schedule is one optimizer step. */
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
