/* Import of PyTorch torch.distributed.pipelining compute-only CSV schedules:
 * one row per rank, one cell per time slot, cells "<stage><op><mb>" such as
 * "0F1", "1B0", "1I0", "1W0"; an empty cell is an idle slot. Only one stage
 * per rank (stage r on rank r) is supported: interleaved/virtual stages have
 * no place in this IR's one-list-per-stage model. */
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

/* Parses a non-empty trimmed cell into a compute action on stage `rank`. */
static int parse_cell(const csv_cell *c, int rank, pp_action *out, pp_err *e)
{
    int stage, mb;
    int k = read_num(c->b, c->e, &stage);
    const char *p = c->b + k;
    const char *ops = "FBIW";
    if (k == 0 || p >= c->e || !strchr(ops, *p))
        return cell_err(e, c, "expected <stage><F|B|I|W><micro-batch>, like \"0F1\"");
    pp_op op = (pp_op)(strchr(ops, *p) - ops); /* F, B, I, W in pp_op order */
    int m = read_num(p + 1, c->e, &mb);
    if (m == 0 || p + 1 + m != c->e)
        return cell_err(e, c, "expected <stage><F|B|I|W><micro-batch>, like \"0F1\"");
    if (mb == INT_MAX) /* the count of micro-batches must fit in int too */
        return cell_err(e, c, "micro-batch %d too large", mb);
    if (stage != rank)
        return cell_err(e, c,
                        "stage %d on rank %d: virtual/interleaved stages are not supported "
                        "(rank r must hold stage r only)",
                        stage, rank);
    *out = pp_act(op, mb);
    return 0;
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
            if (parse_cell(&t, rank, &a, e) < 0 || pp_schedule_push(out, rank, a, e) < 0)
                return -1;
            if (a.mb > *max_mb)
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
