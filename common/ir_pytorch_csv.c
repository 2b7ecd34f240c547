/* Import of the CSV schedules PyTorch's torch.distributed.pipelining
 * writes (_dump_csv, both formats; checked against PyTorch 2.15, whose
 * files are in tests/fixtures/pytorch/): one row per rank, rank 0 first,
 * cells separated by commas, rows of any length. Cells, by kind:
 *   - compute: "<stage><F|B|I|W><micro-batch>", such as "0F1", "1B0",
 *     "1I0", "1W0"; the row's order is the rank's order;
 *   - empty: an idle slot (compute_only format), skipped;
 *   - bookkeeping, skipped: "<stage>REDUCE_GRAD", "<stage>WAIT_REDUCE_GRAD"
 *     (the end of the step's gradients; the import appends an OPT per stage
 *     after the row), "<stage>UNSHARD", "<stage>RESHARD" (FSDP);
 *   - communication (compute_comms format), skipped: "<stage>SEND_F<mb>",
 *     "RECV_F", "SEND_B", "RECV_B", "WAIT_SEND_F", "WAIT_SEND_B". They
 *     are not needed as ordering hints: a receive precedes the compute
 *     that reads it, which the simulator derives from the compute order,
 *     and messages cost what its cost model says.
 *   - overlapped "(<stage>F<mb>;<stage>B<mb>)OVERLAP_F_B" (DualPipeV):
 *     refused, as is a rank with a stage other than its own: both need
 *     ranks that hold several stages, which this IR does not have yet
 *     (stage r runs on rank r). */
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
    "expected <stage><F|B|I|W><micro-batch> like \"0F1\", or one of PyTorch's "               \
    "REDUCE_GRAD, UNSHARD, RESHARD, SEND_F, RECV_F, SEND_B, RECV_B, WAIT_SEND_F, "              \
    "WAIT_SEND_B cells"

/* Parses a non-empty trimmed cell of rank `rank`: 1 and *out for a compute
 * action, 0 for a cell without compute, -1 with a message. */
static int parse_cell(const csv_cell *c, int rank, pp_action *out, pp_err *e)
{
    if (*c->b == '(' && c->e - c->b >= 11 && memcmp(c->e - 11, "OVERLAP_F_B", 11) == 0)
        return cell_err(e, c,
                        "an overlapped forward and backward (DualPipeV) needs ranks that hold "
                        "several stages, which ppsched does not model yet");
    int stage, mb;
    int k = read_num(c->b, c->e, &stage);
    const char *p = c->b + k;
    if (k == 0 || p >= c->e)
        return cell_err(e, c, CELL_FORMS);
    for (size_t i = 0; i < sizeof skipped / sizeof skipped[0]; i++) {
        size_t n = strlen(skipped[i].name);
        if ((size_t)(c->e - p) < n || memcmp(p, skipped[i].name, n) != 0)
            continue;
        int m = skipped[i].has_mb ? read_num(p + n, c->e, &mb) : 0;
        if (p + n + m != c->e || (skipped[i].has_mb && m == 0))
            continue; /* another name with this prefix, or a bad number */
        return 0;
    }
    const char *ops = "FBIW";
    if (!strchr(ops, *p))
        return cell_err(e, c, CELL_FORMS);
    pp_op op = (pp_op)(strchr(ops, *p) - ops); /* F, B, I, W in pp_op order */
    int m = read_num(p + 1, c->e, &mb);
    if (m == 0 || p + 1 + m != c->e)
        return cell_err(e, c, CELL_FORMS);
    if (mb == INT_MAX) /* the count of micro-batches must fit in int too */
        return cell_err(e, c, "micro-batch %d too large", mb);
    if (stage != rank)
        return cell_err(e, c,
                        "stage %d on rank %d: a rank that holds several stages (interleaved, "
                        "looped, V-shaped) is not modelled yet (rank r must hold stage r only)",
                        stage, rank);
    *out = pp_act(op, mb);
    return 1;
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

/* Parses one row [b, e) into stage `rank`; tracks the largest mb. */
static int parse_row(const char *b, const char *e_, int rank, pp_schedule *out, int *max_mb,
                     pp_err *e)
{
    csv_cell c = {b, b, rank + 1, 1};
    for (;;) {
        const char *comma = memchr(c.b, ',', (size_t)(e_ - c.b));
        const char *cell_end = comma ? comma : e_;
        csv_cell t = {c.b, cell_end, c.row, c.col};
        trim_cell(&t);
        if (t.b < t.e) {
            pp_action a;
            int got = parse_cell(&t, rank, &a, e);
            if (got < 0 || (got && pp_schedule_push(out, rank, a, e) < 0))
                return -1;
            if (got && a.mb > *max_mb)
                *max_mb = a.mb;
        }
        if (!comma)
            return 0;
        c.b = comma + 1;
        c.col++;
    }
}

static int parse_rows(const char *text, pp_schedule *out, int *max_mb, pp_err *e)
{
    const char *p = text;
    for (int r = 0; r < out->info.stages; r++) {
        const char *nl = strchr(p, '\n');
        const char *end = nl ? nl : p + strlen(p);
        if (parse_row(p, end, r, out, max_mb, e) < 0)
            return -1;
        p = nl ? nl + 1 : end;
    }
    return 0;
}

/* Every backward (B or I) of a rank after its forward, every W after its
 * I: one line naming the rank, the action and the micro-batch otherwise
 * (PyTorch 2.15's Schedule1F1B writes such files: its last rank runs B0
 * before any F0). */
static int check_rank_order(const pp_schedule *s, int nmb, pp_err *e)
{
    /* a rank with fewer actions than micro-batches cannot hold them all:
     * validation says so; and the table below stays within the file's size */
    for (int r = 0; r < s->info.ranks; r++)
        if (s->rank[r].count < (size_t)nmb)
            return 0;
    unsigned char *seen = malloc((size_t)nmb);
    if (!seen)
        return pp_errf(e, "out of memory");
    int rc = 0;
    for (int r = 0; rc == 0 && r < s->info.ranks; r++) {
        memset(seen, 0, (size_t)nmb); /* bit 0: F, bit 1: I */
        const pp_action_list *l = &s->rank[r];
        for (size_t i = 0; rc == 0 && i < l->count; i++) {
            pp_action a = l->items[i];
            const char *missing = NULL;
            if (a.op == PP_OP_F)
                seen[a.mb] |= 1;
            else if ((a.op == PP_OP_B || a.op == PP_OP_I) && !(seen[a.mb] & 1))
                missing = "forward";
            else if (a.op == PP_OP_W && !(seen[a.mb] & 2))
                missing = "input gradient (I)";
            if (a.op == PP_OP_I)
                seen[a.mb] |= 2;
            if (missing) {
                char text[32];
                rc = pp_errf(e, "rank %d, action %zu \"%s\": micro-batch %d has no %s before it",
                             r, i + 1, pp_action_format(a, text, sizeof text), a.mb, missing);
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
    info.stages = count_rows(text);
    info.microbatches_per_step = info.steps = 1;
    if (info.stages == 0)
        return pp_errf(e, "no rows (expected one row per rank)");
    if (pp_schedule_init(out, &info, e) < 0)
        return -1;
    int max_mb = -1;
    if (parse_rows(text, out, &max_mb, e) < 0) {
        pp_schedule_free(out);
        return -1;
    }
    if (max_mb < 0) {
        pp_schedule_free(out);
        return pp_errf(e, "no actions in any row");
    }
    if (check_rank_order(out, max_mb + 1, e) < 0) {
        pp_schedule_free(out);
        return -1;
    }
    /* One optimizer step over every micro-batch found. */
    out->info.total_microbatches = out->info.microbatches_per_step = max_mb + 1;
    for (int s = 0; s < out->info.stages; s++)
        if (pp_schedule_push(out, s, pp_act(PP_OP_OPT, -1), e) < 0) {
            pp_schedule_free(out);
            return -1;
        }
    return 0;
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
