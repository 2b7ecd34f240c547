/* IR JSON (DESIGN §2 "JSON form"). Writing is hand-rolled fprintf, one line
 * per stage, linear in the number of actions; reading uses cJSON and checks
 * every field, so a bad file gives one message and never a crash. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "ir.h"

/* --- writing ---------------------------------------------------------- */

static void write_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void write_params(const pp_ir_info *in, FILE *f)
{
    fputs(" \"params\": {", f);
    for (int i = 0; i < in->nparams; i++) {
        fputs(i ? ", " : "", f);
        write_string(f, in->params[i].key);
        fputs(": ", f);
        /* Always a string: text survives the round trip byte for byte. */
        write_string(f, in->params[i].value);
    }
    fputs("},\n", f);
}

/* One rank's list; an overlapped pair is one cell "2F5+1B3". */
static void write_rank(const pp_ir_info *in, const pp_action_list *l, FILE *f)
{
    fputs("  [", f);
    for (size_t i = 0; i < l->count; i++) {
        char buf[32];
        fprintf(f, i ? ", \"%s" : "\"%s", pp_action_format_in(in, l->items[i], buf, sizeof buf));
        if (l->items[i].with_next && i + 1 < l->count)
            fprintf(f, "+%s", pp_action_format_in(in, l->items[++i], buf, sizeof buf));
        fputc('"', f);
    }
    fputc(']', f);
}

int pp_schedule_write_json(const pp_schedule *s, FILE *f, pp_err *e)
{
    const pp_ir_info *in = &s->info;
    fputs("{\"format\": \"ppsched-ir\", \"version\": 1,\n \"schedule\": ", f);
    write_string(f, in->name);
    fprintf(f,
            ", \"stages\": %d, \"microbatches_per_step\": %d, \"steps\": %d, "
            "\"total_microbatches\": %d,\n",
            in->stages, in->microbatches_per_step, in->steps, in->total_microbatches);
    if (pp_multi_stage(in))
        fprintf(f, " \"ranks\": %d, \"placement\": \"%s\",\n", in->ranks,
                pp_place_name(in->placement));
    write_params(in, f);
    fputs(" \"actions\": [\n", f);
    for (int r = 0; r < in->ranks; r++) {
        write_rank(in, &s->rank[r], f);
        fputs(r + 1 < in->ranks ? ",\n" : "\n", f);
    }
    fputs(" ]}\n", f);
    if (ferror(f))
        return pp_errf(e, "write failed");
    return 0;
}

static int write_json(FILE *f, const void *s, pp_err *e)
{
    return pp_schedule_write_json(s, f, e);
}

int pp_schedule_save_json(const pp_schedule *s, const char *path, pp_err *e)
{
    return pp_atomic_save(path, write_json, s, e);
}

/* --- reading ---------------------------------------------------------- */

/* An integer field in [lo, hi]; absent is an error unless `dflt` is given. */
static int get_int(const cJSON *root, const char *key, int lo, int hi, const int *dflt,
                   int *out, pp_err *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) {
        if (!dflt)
            return pp_errf(e, "missing field \"%s\"", key);
        *out = *dflt;
        return 0;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d))
        return pp_errf(e, "field \"%s\" must be an integer", key);
    if (d < lo || d > hi)
        return pp_errf(e, "field \"%s\" is %.15g, outside %d..%d", key, d, lo, hi);
    *out = (int)d;
    return 0;
}

static int check_header(const cJSON *root, pp_err *e)
{
    if (!cJSON_IsObject(root))
        return pp_errf(e, "not a ppsched IR: the top level must be a JSON object");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "ppsched-ir") != 0)
        return pp_errf(e, "not a ppsched IR: \"format\" must be \"ppsched-ir\"");
    int version;
    if (get_int(root, "version", INT_MIN, INT_MAX, NULL, &version, e) < 0)
        return -1;
    if (version != 1)
        return pp_errf(e, "unsupported IR version %d (this build reads version 1)", version);
    return 0;
}

/* A JSON number as short text that reads back as the same value. */
static void number_text(double d, char *buf, size_t n)
{
    if (d == floor(d) && fabs(d) < 9007199254740992.0) {
        snprintf(buf, n, "%.0f", d);
        return;
    }
    snprintf(buf, n, "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, n, "%.17g", d);
}

static int read_params(const cJSON *root, pp_ir_info *in, pp_err *e)
{
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(root, "params");
    if (!ps)
        return 0;
    if (!cJSON_IsObject(ps))
        return pp_errf(e, "field \"params\" must be an object");
    for (const cJSON *p = ps->child; p; p = p->next) {
        char num[64];
        const char *val = num;
        if (cJSON_IsString(p))
            val = p->valuestring;
        else if (cJSON_IsNumber(p))
            number_text(p->valuedouble, num, sizeof num);
        else
            return pp_errf(e, "param \"%s\" must be a string or a number", p->string);
        if (pp_info_set_param(in, p->string, val) < 0)
            return pp_errf(e, "param \"%s\": too many params (at most %d) or key/value too "
                              "long (at most %zu/%zu characters)",
                           p->string, PP_MAX_PARAMS, sizeof in->params[0].key - 1,
                           sizeof in->params[0].value - 1);
    }
    return 0;
}

/* "ranks" and "placement" are optional: without them, one stage per rank
 * (every IR file written before ranks existed). */
static int read_placement(const cJSON *root, pp_ir_info *in, pp_err *e)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "placement");
    in->placement = PP_PLACE_ONE;
    if (p && (!cJSON_IsString(p) || pp_place_parse(p->valuestring, &in->placement) < 0))
        return pp_errf(e, "field \"placement\" must be \"one\", \"looped\" or \"v\"");
    /* checked against the stages by pp_schedule_init, after the lists are
     * counted (a huge count must not allocate before that) */
    int dflt = in->stages;
    return get_int(root, "ranks", 1, INT_MAX, in->placement == PP_PLACE_ONE ? &dflt : NULL,
                   &in->ranks, e);
}

static int read_info(const cJSON *root, pp_ir_info *in, pp_err *e)
{
    memset(in, 0, sizeof *in);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "schedule");
    if (!name)
        return pp_errf(e, "missing field \"schedule\"");
    if (!cJSON_IsString(name) || strlen(name->valuestring) >= sizeof in->name)
        return pp_errf(e, "field \"schedule\" must be a string of at most %zu characters",
                       sizeof in->name - 1);
    snprintf(in->name, sizeof in->name, "%s", name->valuestring);
    if (get_int(root, "stages", 1, INT_MAX, NULL, &in->stages, e) < 0 ||
        get_int(root, "microbatches_per_step", 1, INT_MAX, NULL, &in->microbatches_per_step,
                e) < 0 ||
        get_int(root, "steps", 1, INT_MAX, NULL, &in->steps, e) < 0)
        return -1;
    /* total_microbatches is optional: by default every step is full. */
    long long n = (long long)in->microbatches_per_step * in->steps;
    if (!cJSON_GetObjectItemCaseSensitive(root, "total_microbatches") && n > INT_MAX)
        return pp_errf(e, "microbatches_per_step*steps = %lld is too large; give "
                          "\"total_microbatches\"", n);
    int dflt = (int)(n > INT_MAX ? 0 : n);
    if (get_int(root, "total_microbatches", 0, INT_MAX, &dflt, &in->total_microbatches, e) < 0)
        return -1;
    if (read_placement(root, in, e) < 0)
        return -1;
    return read_params(root, in, e);
}

static int read_rank(const cJSON *list, int r, pp_schedule *out, pp_err *e)
{
    const char *who = pp_multi_stage(&out->info) ? "rank" : "stage";
    if (!cJSON_IsArray(list))
        return pp_errf(e, "actions[%d] must be an array of action strings", r);
    size_t i = 0;
    for (const cJSON *a = list->child; a; a = a->next, i++) {
        pp_action act[2];
        int n;
        if (!cJSON_IsString(a))
            return pp_errf(e, "%s %d action %zu: must be a string like \"F3\"", who, r, i);
        if (pp_action_parse_cell(a->valuestring, act, &n, e) < 0)
            return pp_err_prefix(e, "%s %d action %zu", who, r, i);
        for (int k = 0; k < n; k++) {
            /* one stage per rank: the list is the stage; a prefix must agree */
            if (!pp_multi_stage(&out->info) && act[k].stage != PP_NO_STAGE &&
                act[k].stage != r)
                return pp_errf(e, "stage %d action %zu \"%s\": names stage %d in stage %d's "
                                  "list", r, i, a->valuestring, (int)act[k].stage, r);
            if (pp_schedule_push(out, r, act[k], e) < 0)
                return pp_err_prefix(e, "%s %d action %zu", who, r, i);
        }
    }
    return 0;
}

/* The number of lists was checked against "ranks" before allocating. */
static int read_actions(const cJSON *root, pp_schedule *out, pp_err *e)
{
    const cJSON *acts = cJSON_GetObjectItemCaseSensitive(root, "actions");
    int r = 0;
    for (const cJSON *l = acts->child; l; l = l->next, r++)
        if (read_rank(l, r, out, e) < 0)
            return -1;
    return 0;
}

/* Counts the lists first (one per rank), so that a huge "stages" or
 * "ranks" cannot make us allocate more than the input justifies. */
static int check_action_count(const cJSON *root, const pp_ir_info *in, pp_err *e)
{
    int stages = in->ranks;
    const char *key = pp_multi_stage(in) ? "ranks" : "stages";
    const cJSON *acts = cJSON_GetObjectItemCaseSensitive(root, "actions");
    if (!acts)
        return pp_errf(e, "missing field \"actions\"");
    if (!cJSON_IsArray(acts))
        return pp_errf(e, "field \"actions\" must be an array (one list per rank)");
    int n = 0;
    for (const cJSON *l = acts->child; l && n <= stages; l = l->next)
        n++;
    if (n > stages)
        return pp_errf(e, "\"actions\" has more than %d lists but \"%s\" is %d", stages,
                       key, stages);
    if (n < stages)
        return pp_errf(e, "\"actions\" has %d lists but \"%s\" is %d", n, key, stages);
    return 0;
}

int pp_schedule_parse_json(const char *text, pp_schedule *out, pp_err *e)
{
    memset(out, 0, sizeof *out);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        if (!end)
            end = cJSON_GetErrorPtr();
        size_t off = end ? (size_t)(end - text) : 0;
        return pp_errf(e, "invalid JSON near offset %zu", off);
    }
    pp_ir_info info;
    int rc = check_header(root, e);
    if (rc == 0)
        rc = read_info(root, &info, e);
    if (rc == 0)
        rc = check_action_count(root, &info, e);
    if (rc == 0)
        rc = pp_schedule_init(out, &info, e);
    if (rc == 0 && (rc = read_actions(root, out, e)) < 0)
        pp_schedule_free(out);
    cJSON_Delete(root);
    return rc;
}

int pp_schedule_load_json(const char *path, pp_schedule *out, pp_err *e)
{
    char *text;
    memset(out, 0, sizeof *out);
    if (pp_read_file(path, &text, NULL, e) < 0)
        return -1;
    int rc = pp_schedule_parse_json(text, out, e);
    free(text);
    return rc < 0 ? pp_err_prefix(e, "%s", path) : 0;
}
