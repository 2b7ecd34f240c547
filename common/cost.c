#include "cost.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "ir.h"

int pp_cost_init(pp_cost *c, int stages, pp_err *e)
{
    memset(c, 0, sizeof *c);
    if (stages < 1)
        return pp_errf(e, "stages must be at least 1");
    c->stages = stages;
    double *all = calloc((size_t)stages * 5, sizeof *all);
    if (!all)
        return pp_errf(e, "out of memory");
    c->fwd = all;
    c->bwd = all + stages;
    c->inp = all + 2 * stages;
    c->wgt = all + 3 * stages;
    c->opt = all + 4 * stages;
    for (int s = 0; s < stages; s++) {
        c->fwd[s] = 1.0;
        c->bwd[s] = 2.0;
    }
    pp_cost_split_backward(c);
    c->straggler_stage = -1;
    c->straggler_factor = 1.0;
    c->straggler_until = INFINITY;
    snprintf(c->unit, sizeof c->unit, "units");
    return 0;
}

void pp_cost_free(pp_cost *c)
{
    free(c->fwd); /* one block holds all per-stage arrays */
    memset(c, 0, sizeof *c);
}

void pp_cost_split_backward(pp_cost *c)
{
    for (int s = 0; s < c->stages; s++)
        c->inp[s] = c->wgt[s] = c->bwd[s] / 2.0;
}

/* splitmix64: a tiny, good-quality mixer; keyed on (seed, stage, index) so
 * a draw does not depend on the order the engine processes events in. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

double pp_cost_duration(const pp_cost *c, int op, int stage, uint64_t index, double t)
{
    double d;
    switch (op) {
    case PP_OP_F: d = c->fwd[stage]; break;
    case PP_OP_B: d = c->bwd[stage]; break;
    case PP_OP_I: d = c->inp[stage]; break;
    case PP_OP_W: d = c->wgt[stage]; break;
    case PP_OP_OPT: d = c->opt[stage]; break;
    default: d = c->barrier; break;
    }
    if (c->jitter > 0.0) {
        uint64_t h = mix64(c->seed ^ mix64(((uint64_t)stage << 40) ^ index));
        double u = (double)(h >> 11) / 9007199254740992.0; /* [0,1) */
        d *= 1.0 + c->jitter * (2.0 * u - 1.0);
    }
    if (stage == c->straggler_stage && t >= c->straggler_from && t < c->straggler_until)
        d *= c->straggler_factor;
    return d;
}

double pp_cost_overlap(const pp_cost *c, double a, double b)
{
    double hi = a > b ? a : b, lo = a > b ? b : a;
    return hi + (1.0 - c->overlap_efficiency) * lo;
}

double pp_cost_comm_time(const pp_cost *c)
{
    double t = c->comm_latency;
    if (c->comm_bandwidth > 0.0)
        t += c->boundary_bytes / c->comm_bandwidth;
    return t;
}

static int read_stage_array(const cJSON *root, const char *key, double *dst, int stages,
                            int required, const char *path, pp_err *e)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!a) {
        if (required)
            return pp_errf(e, "%s: profile has no \"%s\" array", path, key);
        return 0;
    }
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != stages)
        return pp_errf(e, "%s: \"%s\" must be an array of %d numbers", path, key, stages);
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, a) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0.0) || !(v->valuedouble <= PP_MAX_DURATION))
            return pp_errf(e, "%s: \"%s\"[%d] must be a number in 0..%g", path, key, i,
                           PP_MAX_DURATION);
        dst[i++] = v->valuedouble;
    }
    return 1;
}

int pp_cost_load_profile(pp_cost *c, const char *path, pp_err *e)
{
    char *text;
    size_t len;
    if (pp_read_file(path, &text, &len, e) < 0)
        return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    int rc = -1;
    if (!root || !cJSON_IsObject(root)) {
        pp_errf(e, "%s: not a JSON object", path);
        goto out;
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stages");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "ppsched-profile") != 0) {
        pp_errf(e, "%s: not a ppsched profile (\"format\" must be \"ppsched-profile\")", path);
        goto out;
    }
    /* valuedouble, not valueint: cJSON truncates 2.9 to the int 2 */
    if (!cJSON_IsNumber(st) || st->valuedouble != c->stages) {
        pp_errf(e, "%s: profile is for %.15g stages, the schedule has %d", path,
                cJSON_IsNumber(st) ? st->valuedouble : -1.0, c->stages);
        goto out;
    }
    if (read_stage_array(root, "fwd", c->fwd, c->stages, 1, path, e) < 0 ||
        read_stage_array(root, "bwd", c->bwd, c->stages, 1, path, e) < 0)
        goto out;
    pp_cost_split_backward(c);
    if (read_stage_array(root, "inp", c->inp, c->stages, 0, path, e) < 0 ||
        read_stage_array(root, "wgt", c->wgt, c->stages, 0, path, e) < 0 ||
        read_stage_array(root, "opt", c->opt, c->stages, 0, path, e) < 0)
        goto out;
    const cJSON *comm = cJSON_GetObjectItemCaseSensitive(root, "comm");
    if (comm) {
        if (!cJSON_IsNumber(comm) || !(comm->valuedouble >= 0) ||
            !(comm->valuedouble <= PP_MAX_DURATION)) {
            pp_errf(e, "%s: \"comm\" must be a number in 0..%g", path, PP_MAX_DURATION);
            goto out;
        }
        c->comm_latency = comm->valuedouble;
        c->comm_bandwidth = 0.0;
    }
    const cJSON *unit = cJSON_GetObjectItemCaseSensitive(root, "unit");
    snprintf(c->unit, sizeof c->unit, "%s", cJSON_IsString(unit) ? unit->valuestring : "s");
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

static void write_array(FILE *f, const char *key, const double *v, int n)
{
    fprintf(f, "  \"%s\": [", key);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%.9g", i ? ", " : "", v[i]);
    fprintf(f, "],\n");
}

int pp_cost_save_profile(const pp_cost *c, const char *path, pp_err *e)
{
    pp_atomic_file af;
    if (pp_atomic_open(&af, path, e) < 0)
        return -1;
    FILE *f = af.f;
    fprintf(f, "{\n  \"format\": \"ppsched-profile\",\n  \"version\": 1,\n");
    fprintf(f, "  \"unit\": \"%s\",\n  \"stages\": %d,\n", c->unit, c->stages);
    write_array(f, "fwd", c->fwd, c->stages);
    write_array(f, "bwd", c->bwd, c->stages);
    write_array(f, "inp", c->inp, c->stages);
    write_array(f, "wgt", c->wgt, c->stages);
    write_array(f, "opt", c->opt, c->stages);
    fprintf(f, "  \"comm\": %.9g\n}\n", pp_cost_comm_time(c));
    return pp_atomic_commit(&af, e);
}

int pp_parse_per_stage(const char *text, double *dst, int stages, const char *flag,
                       pp_err *e)
{
    int n = 0;
    const char *p = text;
    double vals[4096];
    while (1) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno || !isfinite(v) || v < 0.0 || (*end && *end != ','))
            return pp_errf(e, "%s: \"%s\" is not a non-negative number or a comma list", flag,
                           text);
        if (v > PP_MAX_DURATION)
            return pp_errf(e, "%s: %g is above the largest duration, %g", flag, v,
                           PP_MAX_DURATION);
        if (n == (int)(sizeof vals / sizeof vals[0]))
            return pp_errf(e, "%s: too many values", flag);
        vals[n++] = v;
        if (!*end)
            break;
        p = end + 1;
    }
    if (n != 1 && n != stages)
        return pp_errf(e, "%s: %d values given for %d stages (give one value or one per stage)",
                       flag, n, stages);
    for (int s = 0; s < stages; s++)
        dst[s] = vals[n == 1 ? 0 : s];
    return 0;
}
