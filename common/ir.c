/* The schedule IR in memory: placements, builder, action text, file reading
 * (streams over it: ir_stream.c). */
#include "ir.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* --- schedule lifetime and builder ----------------------------------- */

/* --- placement -------------------------------------------------------- */

const char *pp_place_name(int placement)
{
    static const char *const names[PP_PLACE_COUNT] = {"one", "looped", "v"};
    return placement >= 0 && placement < PP_PLACE_COUNT ? names[placement] : "?";
}

int pp_place_parse(const char *text, int *out)
{
    for (int p = 0; p < PP_PLACE_COUNT; p++)
        if (strcmp(text, pp_place_name(p)) == 0) {
            *out = p;
            return 0;
        }
    return -1;
}

int pp_info_check_placement(pp_ir_info *info, pp_err *e)
{
    int S = info->stages;
    if (S < 1)
        return pp_errf(e, "a schedule needs at least 1 stage (got %d)", S);
    if (S > PP_MAX_STAGES)
        return pp_errf(e, "%d stages is more than the %d a schedule can hold", S,
                       PP_MAX_STAGES);
    if (info->ranks == 0 && info->placement == PP_PLACE_ONE)
        info->ranks = S;
    int R = info->ranks;
    if (R < 1)
        return pp_errf(e, "a schedule needs at least 1 rank (got %d)", R);
    switch (info->placement) {
    case PP_PLACE_ONE:
        if (R != S)
            return pp_errf(e, "one stage per rank needs as many ranks as stages (%d ranks, "
                              "%d stages)", R, S);
        return 0;
    case PP_PLACE_LOOPED:
        if (S % R != 0)
            return pp_errf(e, "%d stages do not divide over %d ranks (looped placement needs "
                              "a multiple)", S, R);
        return 0;
    case PP_PLACE_V:
        if (S != 2 * R)
            return pp_errf(e, "V-shape placement needs two stages per rank (%d stages, %d "
                              "ranks)", S, R);
        return 0;
    default:
        return pp_errf(e, "unknown placement %d", info->placement);
    }
}

int pp_rank_stages(const pp_ir_info *info, int rank, int *out, int cap)
{
    int n = 0;
    for (int s = rank; s < info->stages; s++)
        if (pp_stage_rank(info, s) == rank && n < cap)
            out[n++] = s;
    return n;
}

/* --- schedule lifetime and builder ----------------------------------- */

int pp_schedule_init(pp_schedule *s, const pp_ir_info *info, pp_err *e)
{
    memset(s, 0, sizeof *s);
    pp_ir_info in = *info;
    if (pp_info_check_placement(&in, e) < 0)
        return -1;
    s->rank = calloc((size_t)in.ranks, sizeof *s->rank);
    if (!s->rank)
        return pp_errf(e, "out of memory for %d ranks", in.ranks);
    s->info = in;
    return 0;
}

void pp_schedule_free(pp_schedule *s)
{
    if (s->rank)
        for (int i = 0; i < s->info.ranks; i++)
            free(s->rank[i].items);
    free(s->rank);
    memset(s, 0, sizeof *s);
}

/* Doubling growth keeps pushes amortized O(1) for 10^7-action schedules. */
static int list_grow(pp_action_list *l)
{
    size_t cap = l->cap ? l->cap * 2 : 64;
    if (cap > SIZE_MAX / sizeof *l->items)
        return -1;
    pp_action *items = realloc(l->items, cap * sizeof *items);
    if (!items)
        return -1;
    l->items = items;
    l->cap = cap;
    return 0;
}

int pp_schedule_push(pp_schedule *s, int rank, pp_action a, pp_err *e)
{
    const pp_ir_info *in = &s->info;
    if (rank < 0 || rank >= in->ranks)
        return pp_multi_stage(in)
                   ? pp_errf(e, "rank %d out of range (schedule has %d ranks)", rank, in->ranks)
                   : pp_errf(e, "stage %d out of range (schedule has %d stages)", rank,
                             in->stages);
    if (in->placement == PP_PLACE_ONE || a.op == PP_OP_BARRIER) {
        a.stage = (uint16_t)rank;
    } else if (a.stage >= in->stages || pp_stage_rank(in, a.stage) != rank) {
        char buf[32];
        pp_action_format_staged(a, buf, sizeof buf);
        if (a.stage == PP_NO_STAGE)
            return pp_errf(e, "rank %d: \"%s\" names no stage (with several stages per "
                              "rank an action reads like \"1F3\")", rank, buf);
        if (a.stage >= in->stages)
            return pp_errf(e, "rank %d: \"%s\" names stage %d of %d", rank, buf,
                           (int)a.stage, in->stages);
        return pp_errf(e, "rank %d: \"%s\": stage %d runs on rank %d (%s placement)", rank,
                       buf, (int)a.stage, pp_stage_rank(in, a.stage),
                       pp_place_name(in->placement));
    }
    pp_action_list *l = &s->rank[rank];
    if (l->count == l->cap && list_grow(l) < 0)
        return pp_errf(e, "out of memory after %zu actions on rank %d", l->count, rank);
    l->items[l->count++] = a;
    return 0;
}

size_t pp_schedule_action_count(const pp_schedule *s)
{
    size_t n = 0;
    for (int i = 0; i < s->info.ranks; i++)
        n += s->rank[i].count;
    return n;
}

/* --- parameters ------------------------------------------------------- */

int pp_info_set_param(pp_ir_info *info, const char *key, const char *value)
{
    /* Refuse rather than truncate: a cut key or value would silently differ. */
    if (strlen(key) >= sizeof info->params[0].key ||
        strlen(value) >= sizeof info->params[0].value)
        return -1;
    pp_param *p = NULL;
    for (int i = 0; i < info->nparams; i++)
        if (strcmp(info->params[i].key, key) == 0)
            p = &info->params[i];
    if (!p) {
        if (info->nparams >= PP_MAX_PARAMS)
            return -1;
        p = &info->params[info->nparams++];
        snprintf(p->key, sizeof p->key, "%s", key);
    }
    snprintf(p->value, sizeof p->value, "%s", value);
    return 0;
}

const char *pp_info_get_param(const pp_ir_info *info, const char *key)
{
    for (int i = 0; i < info->nparams; i++)
        if (strcmp(info->params[i].key, key) == 0)
            return info->params[i].value;
    return NULL;
}

/* --- actions as text -------------------------------------------------- */

const char *pp_op_name(pp_op op)
{
    static const char *const names[PP_OP_COUNT] = {"F", "B", "I", "W", "OPT", "BARRIER"};
    return (unsigned)op < PP_OP_COUNT ? names[op] : "?";
}

char *pp_action_format(pp_action a, char *buf, size_t n)
{
    if (a.op == PP_OP_OPT || a.op == PP_OP_BARRIER || a.op >= PP_OP_COUNT) {
        snprintf(buf, n, "%s", pp_op_name((pp_op)a.op));
        return buf;
    }
    const char *op = pp_op_name((pp_op)a.op);
    if (a.sel == PP_SEL_STASH)
        snprintf(buf, n, "%s%d@s", op, (int)a.mb);
    else if (a.sel == PP_SEL_VERSION)
        snprintf(buf, n, "%s%d@v%d", op, (int)a.mb, (int)a.version);
    else
        snprintf(buf, n, "%s%d", op, (int)a.mb);
    return buf;
}

char *pp_action_format_staged(pp_action a, char *buf, size_t n)
{
    if (a.op == PP_OP_BARRIER || a.stage == PP_NO_STAGE)
        return pp_action_format(a, buf, n);
    int k = snprintf(buf, n, "%d", (int)a.stage);
    if (k > 0 && (size_t)k < n)
        pp_action_format(a, buf + k, n - (size_t)k);
    return buf;
}

char *pp_action_format_in(const pp_ir_info *info, pp_action a, char *buf, size_t n)
{
    return pp_multi_stage(info) ? pp_action_format_staged(a, buf, n)
                                : pp_action_format(a, buf, n);
}

/* Reads a canonical non-negative decimal (no sign, no leading zeros) that
 * fits in int32. Returns the number of characters used, 0 when none. */
static size_t parse_count(const char *p, int32_t *out)
{
    size_t i = 0;
    int64_t v = 0;
    while (p[i] >= '0' && p[i] <= '9') {
        v = v * 10 + (p[i] - '0');
        if (v > INT32_MAX)
            return 0;
        i++;
    }
    if (i > 1 && p[0] == '0')
        return 0;
    *out = (int32_t)v;
    return i;
}

static int op_from_letter(char c, pp_op *op)
{
    switch (c) {
    case 'F': *op = PP_OP_F; return 0;
    case 'B': *op = PP_OP_B; return 0;
    case 'I': *op = PP_OP_I; return 0;
    case 'W': *op = PP_OP_W; return 0;
    default: return -1;
    }
}

/* Parses "@s" / "@vK" (or nothing) after a compute action. */
static int parse_selector(const char *p, pp_op op, pp_action *a, const char *text, pp_err *e)
{
    if (*p == '\0')
        return 0;
    if (p[0] == '@' && p[1] == 's' && p[2] == '\0') {
        if (op == PP_OP_F)
            return pp_errf(e, "bad action \"%s\": the stash selector @s is only legal on B, I "
                              "and W", text);
        a->sel = PP_SEL_STASH;
        return 0;
    }
    if (p[0] == '@' && p[1] == 'v') {
        int32_t v;
        size_t k = parse_count(p + 2, &v);
        if (k == 0 || p[2 + k] != '\0')
            return pp_errf(e, "bad action \"%s\": version must be a non-negative integer",
                           text);
        if (op != PP_OP_F)
            return pp_errf(e, "bad action \"%s\": an explicit version @v is only legal on F",
                           text);
        a->sel = PP_SEL_VERSION;
        a->version = v;
        return 0;
    }
    return pp_errf(e, "unknown action \"%s\"", text);
}

/* Parses an action without a stage prefix. */
static int parse_bare(const char *text, const char *whole, pp_action *out, pp_err *e)
{
    if (strcmp(text, "OPT") == 0 || strcmp(text, "BARRIER") == 0) {
        *out = pp_act(text[0] == 'O' ? PP_OP_OPT : PP_OP_BARRIER, -1);
        return 0;
    }
    if (strncmp(text, "OPT@", 4) == 0 || strncmp(text, "BARRIER@", 8) == 0)
        return pp_errf(e, "bad action \"%s\": OPT and BARRIER take no selector", whole);
    pp_op op;
    if (op_from_letter(text[0], &op) < 0)
        return pp_errf(e, "unknown action \"%s\"", whole);
    int32_t mb;
    size_t k = parse_count(text + 1, &mb);
    if (k == 0) {
        /* A number that is there but malformed deserves a precise reason. */
        char c = text[1];
        if (c == '-' || c == '+' || (c >= '0' && c <= '9'))
            return pp_errf(e, "bad action \"%s\": micro-batch must be a non-negative "
                              "integer below 2^31 without leading zeros", whole);
        return pp_errf(e, "unknown action \"%s\"", whole);
    }
    pp_action a = pp_act(op, mb);
    if (parse_selector(text + 1 + k, op, &a, whole, e) < 0)
        return -1;
    *out = a;
    return 0;
}

int pp_action_parse(const char *text, pp_action *out, pp_err *e)
{
    int32_t stage = PP_NO_STAGE;
    size_t k = 0;
    if (text[0] >= '0' && text[0] <= '9') {
        k = parse_count(text, &stage);
        if (k == 0 || stage >= PP_NO_STAGE)
            return pp_errf(e, "bad action \"%s\": the stage must be an integer 0..%d "
                              "without leading zeros", text, PP_MAX_STAGES - 1);
        if (strcmp(text + k, "BARRIER") == 0)
            return pp_errf(e, "bad action \"%s\": BARRIER belongs to a rank, not a stage",
                           text);
    }
    if (parse_bare(text + k, text, out, e) < 0)
        return -1;
    out->stage = (uint16_t)stage;
    return 0;
}

int pp_action_parse_cell(const char *text, pp_action out[2], int *n, pp_err *e)
{
    const char *plus = strchr(text, '+');
    if (!plus) {
        *n = 1;
        return pp_action_parse(text, &out[0], e);
    }
    char first[48];
    size_t len = (size_t)(plus - text);
    if (len >= sizeof first)
        return pp_errf(e, "bad action \"%s\": too long", text);
    memcpy(first, text, len);
    first[len] = '\0';
    if (pp_action_parse(first, &out[0], e) < 0 || pp_action_parse(plus + 1, &out[1], e) < 0)
        return -1;
    int f = (out[0].op == PP_OP_F) + (out[1].op == PP_OP_F);
    int g = (out[0].op == PP_OP_B || out[0].op == PP_OP_I) +
            (out[1].op == PP_OP_B || out[1].op == PP_OP_I);
    if (f != 1 || g != 1)
        return pp_errf(e, "bad overlapped action \"%s\": a pair is one forward and one "
                          "backward (B or I)", text);
    out[0].with_next = 1;
    *n = 2;
    return 0;
}

/* --- files ------------------------------------------------------------ */

static size_t max_input_bytes = (size_t)1 << 30;

void pp_set_max_input_bytes(size_t n)
{
    max_input_bytes = n;
}

/* Reads by growing a buffer rather than trusting the file size, so pipes
 * and /dev/stdin work too; stops at the input cap (an endless /dev/zero
 * must not take all memory). */
int pp_read_file(const char *path, char **text, size_t *len, pp_err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return pp_errf(e, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n > max_input_bytes) {
            free(buf);
            fclose(f);
            return pp_errf(e, "%s: larger than %zu bytes (see --max-input-bytes)", path,
                           max_input_bytes);
        }
        if (n < cap - 1)
            break;
        char *bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    int bad = !buf || ferror(f);
    int saved = errno;
    fclose(f);
    if (!buf)
        return pp_errf(e, "%s: out of memory while reading", path);
    if (bad) {
        free(buf);
        return pp_errf(e, "%s: cannot read: %s", path, strerror(saved));
    }
    buf[n] = '\0';
    *text = buf;
    if (len)
        *len = n;
    return 0;
}
