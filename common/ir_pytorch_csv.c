/* Import of the CSV schedules PyTorch's torch.distributed.pipelining
 * writes (_dump_csv, both formats; checked against PyTorch 2.15, whose
 * files are in tests/fixtures/pytorch/): one row per rank, rank 0 first,
 * cells separated by commas, rows of any length. Cells, by kind:
 *   - compute: "<stage><F|B|I|W><micro-batch>", such as "0F1", "3B0",
 *     "1I0", "1W0", the stage global (0 .. S-1); the row's order is the
 *     rank's order;
 *   - overlapped "(<stage>F<mb>;<stage>B<mb>)OVERLAP_F_B" (DualPipeV; I in
 *     place of B, either sub-action first): one forward and one backward
 *     that the rank runs at once, imported as an overlapped pair;
 *   - empty: an idle slot (compute_only format), skipped;
 *   - bookkeeping, skipped: "<stage>REDUCE_GRAD", "<stage>WAIT_REDUCE_GRAD"
 *     (the end of the step's gradients; the import appends an OPT per stage
 *     at the end of its rank's list, in model order), "<stage>UNSHARD",
 *     "<stage>RESHARD" (FSDP);
 *   - communication (compute_comms format), skipped: "<stage>SEND_F<mb>",
 *     "RECV_F", "SEND_B", "RECV_B", "WAIT_SEND_F", "WAIT_SEND_B". They
 *     are not needed as ordering hints: a receive precedes the compute
 *     that reads it, which the simulator derives from the compute order,
 *     and messages cost what its cost model says.
 * The file does not say where its stages sit; the import reads it from the
 * compute cells (a stage on two rows is refused, as PyTorch's _load_csv
 * refuses it) and takes the first placement that puts every stage there:
 * one stage per rank, looped (Interleaved1F1B, LoopedBFS,
 * InterleavedZeroBubble) or V-shape (ZBVZeroBubble, DualPipeV). Three
 * passes over the text (what it holds, where its stages are, the actions)
 * keep every allocation within the size of the file. */
#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* A cell of the CSV: [b, e) inside the text, with its 1-based position. */
typedef struct {
    const char *b, *e;
    int row, col;
} csv_cell;

static int cell_err(pp_err *e, const csv_cell *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int cell_err(pp_err *e, const csv_cell *c, const char *fmt, ...)
{
    if (!e)
        return -1;
    char reason[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    int len = (int)(c->e - c->b);
    return pp_errf(e, "row %d (rank %d), column %d: cell \"%.*s\": %s", c->row, c->row - 1,
                   c->col, len > 40 ? 40 : len, c->b, reason);
}

/* Strips blanks and one pair of double quotes (as a CSV writer may add). */
static void trim_cell(csv_cell *c)
{
    while (c->b < c->e && isspace((unsigned char)*c->b))
        c->b++;
    while (c->e > c->b && isspace((unsigned char)c->e[-1]))
        c->e--;
    if (c->e - c->b >= 2 && *c->b == '"' && c->e[-1] == '"') {
        c->b++;
        c->e--;
        trim_cell(c);
    }
}

/* Reads a non-negative decimal that fits in int; returns chars used or 0. */
static int read_num(const char *p, const char *end, int *out)
{
    long long v = 0;
    int i = 0;
    while (p + i < end && isdigit((unsigned char)p[i])) {
        v = v * 10 + (p[i] - '0');
        if (v > INT_MAX)
            return 0;
        i++;
    }
    *out = (int)v;
    return i;
}

/* The cells that carry no compute: their names after the stage number,
 * and whether a micro-batch number follows. */
static const struct {
    const char *name;
    int has_mb;
} skipped[] = {
    {"REDUCE_GRAD", 0}, {"WAIT_REDUCE_GRAD", 0}, {"UNSHARD", 0},    {"RESHARD", 0},
    {"SEND_F", 1},      {"RECV_F", 1},           {"SEND_B", 1},     {"RECV_B", 1},
    {"WAIT_SEND_F", 1}, {"WAIT_SEND_B", 1},
};

#define CELL_FORMS                                                                            \
    "expected <stage><F|B|I|W><micro-batch> like \"0F1\", an overlapped "                     \
    "\"(0F3;3B1)OVERLAP_F_B\", or one of PyTorch's REDUCE_GRAD, UNSHARD, RESHARD, SEND_F, "    \
    "RECV_F, SEND_B, RECV_B, WAIT_SEND_F, WAIT_SEND_B cells"

#define OVERLAP_TAIL ")OVERLAP_F_B"

/* Reads "<stage><F|B|I|W><mb>" that fills [p, end) exactly; -1 if not.
 * A stage of PP_MAX_STAGES or more reads as PP_NO_STAGE. */
static int read_compute(const char *p, const char *end, pp_action *out)
{
    static const char ops[] = "FBIW"; /* pp_op order */
    int stage, mb;
    int k = read_num(p, end, &stage);
    if (k == 0 || p + k >= end || !p[k] || !strchr(ops, p[k]))
        return -1;
    pp_op op = (pp_op)(strchr(ops, p[k]) - ops);
    int m = read_num(p + k + 1, end, &mb);
    if (m == 0 || p + k + 1 + m != end)
        return -1;
    *out = pp_act_on(op, stage < PP_MAX_STAGES ? stage : PP_NO_STAGE, mb);
    return 0;
}

/* Whether [p, end) is one of the cells without compute. */
static int is_skipped(const char *p, const char *end)
{
    int num;
    int k = read_num(p, end, &num);
    if (k == 0)
        return 0;
    p += k;
    for (size_t i = 0; i < sizeof skipped / sizeof skipped[0]; i++) {
        size_t n = strlen(skipped[i].name);
        if ((size_t)(end - p) < n || memcmp(p, skipped[i].name, n) != 0)
            continue;
        int m = skipped[i].has_mb ? read_num(p + n, end, &num) : 0;
        if (p + n + m == end && (m > 0 || !skipped[i].has_mb))
            return 1; /* else another name with this prefix, or a bad number */
    }
    return 0;
}

static int is_grad(pp_op op)
{
    return op == PP_OP_B || op == PP_OP_I;
}

/* Parses an overlapped cell into out[0..1], out[0] with with_next. */
static int parse_overlap(const csv_cell *c, pp_action out[2], pp_err *e)
{
    const char *end = c->e - strlen(OVERLAP_TAIL);
    const char *semi = memchr(c->b, ';', (size_t)(end - c->b));
    if (!semi || read_compute(c->b + 1, semi, &out[0]) < 0 ||
        read_compute(semi + 1, end, &out[1]) < 0)
        return cell_err(e, c, "expected (<stage>F<micro-batch>;<stage><B|I><micro-batch>)"
                              "OVERLAP_F_B like \"(0F3;3B1)OVERLAP_F_B\"");
    int f = (out[0].op == PP_OP_F) + (out[1].op == PP_OP_F);
    int g = is_grad((pp_op)out[0].op) + is_grad((pp_op)out[1].op);
    if (f != 1 || g != 1)
        return cell_err(e, c, "an overlapped cell is one forward and one backward (B or I), "
                              "not %s",
                        f == 2 ? "two forwards" : g == 2 ? "two backwards" : "a W");
    out[0].with_next = 1;
    return 2;
}

/* Parses a non-empty trimmed cell: the number of compute actions it holds
 * into out (0 for a cell without compute, 1, or 2 for an overlapped pair),
 * or -1 with a message. */
static int parse_cell(const csv_cell *c, pp_action out[2], pp_err *e)
{
    size_t len = (size_t)(c->e - c->b), tail = strlen(OVERLAP_TAIL);
    int n;
    if (*c->b == '(' && len > tail && memcmp(c->e - tail, OVERLAP_TAIL, tail) == 0)
        n = parse_overlap(c, out, e);
    else if (is_skipped(c->b, c->e))
        return 0;
    else if (read_compute(c->b, c->e, &out[0]) == 0)
        n = 1;
    else
        return cell_err(e, c, CELL_FORMS);
    for (int i = 0; i < n; i++) {
        if (out[i].stage == PP_NO_STAGE)
            return cell_err(e, c, "stage number too large (a schedule holds at most %d stages)",
                            PP_MAX_STAGES);
        if (out[i].mb == INT_MAX) /* the count of micro-batches must fit in int too */
            return cell_err(e, c, "micro-batch %d too large", (int)out[i].mb);
    }
    return n;
}

/* Number of rows: lines, not counting blank lines at the end. */
static int count_rows(const char *text)
{
    int rows = 0, pending = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        const char *end = nl ? nl : p + strlen(p);
        int blank = 1;
        for (const char *q = p; q < end; q++)
            blank &= isspace((unsigned char)*q) != 0;
        pending++;
        if (!blank) {
            rows += pending;
            pending = 0;
        }
        p = nl ? nl + 1 : end;
    }
    return rows;
}

/* Called with each compute cell and its 1 or 2 actions (the cell's rank
 * is c->row - 1). */
typedef int (*cell_fn)(void *ctx, const csv_cell *c, const pp_action *a, int n, pp_err *e);

/* Parses every cell of the first `rows` rows, in order, calling fn on the
 * compute cells. */
static int each_compute_cell(const char *text, int rows, cell_fn fn, void *ctx, pp_err *e)
{
    const char *p = text;
    for (int r = 0; r < rows; r++) {
        const char *nl = strchr(p, '\n');
        const char *end = nl ? nl : p + strlen(p);
        for (csv_cell c = {p, p, r + 1, 1};; c.col++) {
            const char *comma = memchr(c.b, ',', (size_t)(end - c.b));
            csv_cell t = {c.b, comma ? comma : end, c.row, c.col};
            trim_cell(&t);
            if (t.b < t.e) {
                pp_action a[2];
                int n = parse_cell(&t, a, e);
                if (n < 0 || (n > 0 && fn(ctx, &t, a, n, e) < 0))
                    return -1;
            }
            if (!comma)
                break;
            c.b = comma + 1;
        }
        p = nl ? nl + 1 : end;
    }
    return 0;
}

/* --- pass 1: what the file holds ------------------------------------- */

typedef struct {
    size_t actions;       /* compute actions (a pair counts two) */
    int max_stage, max_mb;
    csv_cell max_cell;    /* the first cell naming max_stage */
} survey;

static int survey_cell(void *ctx, const csv_cell *c, const pp_action *a, int n, pp_err *e)
{
    (void)e;
    survey *sv = ctx;
    for (int i = 0; i < n; i++) {
        sv->actions++;
        if (a[i].stage > sv->max_stage) {
            sv->max_stage = a[i].stage;
            sv->max_cell = *c;
        }
        if (a[i].mb > sv->max_mb)
            sv->max_mb = a[i].mb;
    }
    return 0;
}

/* --- pass 2: where the stages are ------------------------------------ */

typedef struct {
    int *rank_of;        /* per stage below `known`: its rank, or -1 */
    int known;
    unsigned char *busy; /* per rank: runs some stage */
} stage_map;

static int map_cell(void *ctx, const csv_cell *c, const pp_action *a, int n, pp_err *e)
{
    stage_map *m = ctx;
    int rank = c->row - 1;
    m->busy[rank] = 1;
    for (int i = 0; i < n; i++) {
        int s = a[i].stage;
        if (s >= m->known) /* beyond the file's cells: a stage is missing */
            continue;
        if (m->rank_of[s] < 0)
            m->rank_of[s] = rank;
        else if (m->rank_of[s] != rank)
            return cell_err(e, c, "stage %d appears on rank %d and rank %d (a stage runs on "
                                  "one rank)",
                            s, m->rank_of[s], rank);
    }
    return 0;
}

static int v_rank(int s, int R)
{
    return s < R ? s : 2 * R - 1 - s;
}

/* The first placement that puts every stage where the file has it: one
 * stage per rank, looped, V-shape; else one line naming a stage that fits
 * neither of the multi-stage ones (or the stage count that does not). */
static int derive_placement(const int *rank_of, int S, int R, int *out, pp_err *e)
{
    int bad_l = -1, bad_v = -1, neither = -1; /* the first stage each misplaces */
    for (int s = 0; s < S; s++) {
        int l = rank_of[s] != s % R, v = S != 2 * R || rank_of[s] != v_rank(s, R);
        if (l && bad_l < 0)
            bad_l = s;
        if (v && bad_v < 0)
            bad_v = s;
        if (l && v && neither < 0)
            neither = s;
    }
    if (bad_l < 0 && S == R)
        *out = PP_PLACE_ONE;
    else if (bad_l < 0 && S % R == 0)
        *out = PP_PLACE_LOOPED;
    else if (bad_v < 0)
        *out = PP_PLACE_V;
    else if (bad_l < 0) /* stage s on rank s mod R, but S is no multiple of R */
        return pp_errf(e, "stage %d is on rank %d as looped placement puts it, but %d stages do "
                          "not divide over %d ranks (looped placement needs a multiple of %d, "
                          "V-shape exactly %d)",
                       S - 1, rank_of[S - 1], S, R, R, 2 * R);
    else if (neither >= 0 && S != 2 * R)
        return pp_errf(e, "stage %d is on rank %d, which fits neither looped placement (rank %d) "
                          "nor V-shape (%d stages over %d ranks, the file has %d)",
                       neither, rank_of[neither], neither % R, 2 * R, R, S);
    else if (neither >= 0)
        return pp_errf(e, "stage %d is on rank %d, which fits neither looped placement (rank %d) "
                          "nor V-shape (rank %d)",
                       neither, rank_of[neither], neither % R, v_rank(neither, R));
    else
        return pp_errf(e, "stage %d is on rank %d, not rank %d as looped placement puts it, and "
                          "stage %d on rank %d, not rank %d as V-shape puts it",
                       bad_l, rank_of[bad_l], bad_l % R, bad_v, rank_of[bad_v],
                       v_rank(bad_v, R));
    return 0;
}

/* Fills info's stages and placement from where the file runs each stage. */
static int find_placement(const char *text, const survey *sv, pp_ir_info *info, pp_err *e)
{
    int R = info->ranks;
    /* With every stage 0..S-1 present, S <= the number of actions. */
    size_t known = (size_t)sv->max_stage < sv->actions ? (size_t)sv->max_stage + 1
                                                        : sv->actions + 1;
    stage_map m = {malloc(known * sizeof *m.rank_of), (int)known, calloc((size_t)R, 1)};
    int rc = -1;
    if (!m.rank_of || !m.busy) {
        pp_errf(e, "out of memory for %zu stages on %d ranks", known, R);
        goto done;
    }
    for (size_t s = 0; s < known; s++)
        m.rank_of[s] = -1;
    if (each_compute_cell(text, R, map_cell, &m, e) < 0)
        goto done;
    for (int s = 0; s < m.known; s++)
        if (m.rank_of[s] < 0) {
            cell_err(e, &sv->max_cell, "stage %d, but no cell names stage %d (the stages are 0 "
                                       "to S-1, each on one rank)",
                     sv->max_stage, s);
            goto done;
        }
    for (int r = 0; r < R; r++)
        if (!m.busy[r]) {
            pp_errf(e, "row %d (rank %d): no compute cell (every rank runs at least one stage)",
                    r + 1, r);
            goto done;
        }
    info->stages = sv->max_stage + 1;
    rc = derive_placement(m.rank_of, info->stages, R, &info->placement, e);
done:
    free(m.rank_of);
    free(m.busy);
    return rc;
}

/* --- pass 3: the actions --------------------------------------------- */

static int push_cell(void *ctx, const csv_cell *c, const pp_action *a, int n, pp_err *e)
{
    for (int i = 0; i < n; i++)
        if (pp_schedule_push(ctx, c->row - 1, a[i], e) < 0)
            return -1;
    return 0;
}

/* Every backward (B or I) of a stage after its forward, every W after its
 * I: one line naming the rank, the action and the micro-batch otherwise
 * (PyTorch 2.15's Schedule1F1B writes such files: its last rank runs B0
 * before any F0). A stage's actions are all in its rank's list, so the
 * rank's order is the stage's. */
static int check_rank_order(const pp_schedule *s, int nmb, size_t actions, pp_err *e)
{
    /* fewer actions than stages x micro-batches: some stage cannot hold an
     * F of each, which validation says; and the table stays within the
     * file's size */
    size_t S = (size_t)s->info.stages;
    if ((size_t)nmb > actions / S)
        return 0;
    unsigned char *seen = calloc(S * (size_t)nmb, 1); /* bit 0: F, bit 1: I */
    if (!seen)
        return pp_errf(e, "out of memory");
    int rc = 0;
    for (int r = 0; rc == 0 && r < s->info.ranks; r++) {
        const pp_action_list *l = &s->rank[r];
        for (size_t i = 0; rc == 0 && i < l->count; i++) {
            pp_action a = l->items[i];
            unsigned char *m = &seen[(size_t)a.stage * (size_t)nmb + (size_t)a.mb];
            const char *missing = NULL;
            if (a.op == PP_OP_F)
                *m |= 1;
            else if (is_grad((pp_op)a.op) && !(*m & 1))
                missing = "forward";
            else if (a.op == PP_OP_W && !(*m & 2))
                missing = "input gradient (I)";
            if (a.op == PP_OP_I)
                *m |= 2;
            if (missing) {
                char text[32];
                rc = pp_errf(e, "rank %d, action %zu \"%s\": micro-batch %d has no %s before it",
                             r, i + 1, pp_action_format_in(&s->info, a, text, sizeof text),
                             a.mb, missing);
            }
        }
    }
    free(seen);
    return rc;
}

int pp_schedule_parse_pytorch_csv(const char *text, pp_schedule *out, pp_err *e)
{
    memset(out, 0, sizeof *out);
    pp_ir_info info = {0};
    snprintf(info.name, sizeof info.name, "pytorch-csv");
    info.ranks = count_rows(text);
    if (info.ranks == 0)
        return pp_errf(e, "no rows (expected one row per rank)");
    survey sv = {0, -1, -1, {0}};
    if (each_compute_cell(text, info.ranks, survey_cell, &sv, e) < 0)
        return -1;
    if (sv.actions == 0)
        return pp_errf(e, "no actions in any row");
    if (find_placement(text, &sv, &info, e) < 0)
        return -1;
    /* One optimizer step over every micro-batch found. */
    info.steps = 1;
    info.total_microbatches = info.microbatches_per_step = sv.max_mb + 1;
    if (pp_schedule_init(out, &info, e) < 0)
        return -1;
    int rc = each_compute_cell(text, info.ranks, push_cell, out, e);
    if (rc == 0)
        rc = check_rank_order(out, sv.max_mb + 1, sv.actions, e);
    /* An OPT per stage, in model order, after its rank's compute. */
    for (int s = 0; rc == 0 && s < info.stages; s++)
        rc = pp_schedule_push(out, pp_stage_rank(&out->info, s), pp_act_on(PP_OP_OPT, s, -1), e);
    if (rc < 0)
        pp_schedule_free(out);
    return rc;
}

int pp_schedule_load_pytorch_csv(const char *path, pp_schedule *out, pp_err *e)
{
    char *text;
    memset(out, 0, sizeof *out);
    if (pp_read_file(path, &text, NULL, e) < 0)
        return -1;
    int rc = pp_schedule_parse_pytorch_csv(text, out, e);
    free(text);
    return rc < 0 ? pp_err_prefix(e, "%s", path) : 0;
}
