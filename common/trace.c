/* Chrome Trace Event JSON (DESIGN §5), streamed with fprintf so a trace of
 * millions of actions costs linear time and no tree in memory. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "timeline.h"

enum { TID_COMPUTE = 0, TID_SEND = 1, TID_RECV = 2 };

/* A JSON string literal; control characters become \u escapes. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p == '\t')
            fputs("\\t", f);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* JSON has no NaN or infinity; a time the run did not record becomes 0. */
static double finite_or_0(double v)
{
    return isfinite(v) ? v : 0.0;
}

/* Microseconds with nanosecond resolution. */
static void put_us(FILE *f, const char *key, double t, const pp_timeline *tl)
{
    fprintf(f, ",\"%s\":%.3f", key, finite_or_0(t * tl->us_per_unit));
}

/* Separates events; the first one gets no comma. */
static void sep(FILE *f, int *first)
{
    fputs(*first ? "\n" : ",\n", f);
    *first = 0;
}

static void meta(FILE *f, int *first, const char *what, int pid, int tid, const char *key,
                 const char *sval, int ival)
{
    sep(f, first);
    fprintf(f, "{\"name\":\"%s\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"%s\":", what, pid,
            tid, key);
    if (sval)
        json_str(f, sval);
    else
        fprintf(f, "%d", ival);
    fputs("}}", f);
}

static void stage_metadata(FILE *f, int *first, int s)
{
    static const char *const threads[] = {"compute", "send", "recv"};
    char name[32];
    snprintf(name, sizeof name, "stage %d", s);
    meta(f, first, "process_name", s, 0, "name", name, 0);
    meta(f, first, "process_sort_index", s, 0, "sort_index", NULL, s);
    for (int tid = 0; tid < 3; tid++) {
        meta(f, first, "thread_name", s, tid, "name", threads[tid], 0);
        meta(f, first, "thread_sort_index", s, tid, "sort_index", NULL, tid);
    }
}

static const char *op_cat(int op)
{
    static const char *const cats[PP_OP_COUNT] = {"F", "B", "I", "W", "OPT", "BARRIER"};
    return op >= 0 && op < PP_OP_COUNT ? cats[op] : "?";
}

/* The action's args: micro-batch, version, and drift for backwards. */
static void action_args(FILE *f, const pp_timed_action *a, const int32_t *fv, size_t nfv)
{
    char text[32];
    pp_action_format(a->act, text, sizeof text);
    fputs(",\"args\":{\"action\":", f);
    json_str(f, text);
    int op = a->act.op, mb = a->act.mb;
    if (mb >= 0)
        fprintf(f, ",\"microbatch\":%d", mb);
    fprintf(f, ",\"version\":%d", a->version);
    if (op == PP_OP_F) {
        fprintf(f, ",\"v_f\":%d", a->version);
    } else if (op == PP_OP_B || op == PP_OP_I) {
        int vf = mb >= 0 && (size_t)mb < nfv ? fv[mb] : -1;
        if (vf >= 0)
            fprintf(f, ",\"v_f\":%d", vf);
        fprintf(f, ",\"v_b\":%d", a->version);
        if (vf >= 0)
            fprintf(f, ",\"drift\":%d", a->version - vf);
    }
    fputc('}', f);
}

static int stage_actions(FILE *f, int *first, const pp_timeline *t, int s)
{
    int32_t *fv;
    size_t nfv;
    if (pp_timeline_f_versions(t, s, &fv, &nfv) < 0)
        return -1;
    const pp_timed_list *l = &t->stage[s];
    for (size_t i = 0; i < l->count; i++) {
        const pp_timed_action *a = &l->items[i];
        pp_action bare = a->act; /* name without selector: "F12", not "F12@v1" */
        bare.sel = PP_SEL_LATEST;
        bare.version = 0;
        char name[32];
        pp_action_format(bare, name, sizeof name);
        sep(f, first);
        fputs("{\"name\":", f);
        json_str(f, name);
        fprintf(f, ",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d", op_cat(a->act.op), s,
                TID_COMPUTE);
        put_us(f, "ts", a->start, t);
        put_us(f, "dur", a->end - a->start, t);
        action_args(f, a, fv, nfv);
        fputc('}', f);
    }
    free(fv);
    return 0;
}

/* One side of a transfer: its slice and the flow end bound to that slice.
 * The flow point sits mid-slice so it binds to it even at equal times. */
static void transfer_side(FILE *f, int *first, const pp_timeline *t, const pp_transfer *x,
                          size_t id, int sender)
{
    char name[32];
    snprintf(name, sizeof name, "%s%d", x->is_grad ? "grad" : "act", x->mb);
    int pid = sender ? x->src : x->dst, tid = sender ? TID_SEND : TID_RECV;
    sep(f, first);
    fprintf(f, "{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d", name,
            sender ? "send" : "recv", pid, tid);
    put_us(f, "ts", x->start, t);
    put_us(f, "dur", x->end - x->start, t);
    fprintf(f, ",\"args\":{\"microbatch\":%d,\"kind\":\"%s\",\"from\":%d,\"to\":%d}}", x->mb,
            x->is_grad ? "gradient" : "activation", x->src, x->dst);
    sep(f, first);
    fprintf(f, "{\"name\":\"%s\",\"cat\":\"flow\",\"ph\":\"%s\",\"id\":%zu,\"pid\":%d,\"tid\":%d%s",
            name, sender ? "s" : "f", id, pid, tid, sender ? "" : ",\"bp\":\"e\"");
    put_us(f, "ts", (x->start + x->end) / 2.0, t);
    fputc('}', f);
}

static void memory_counters(FILE *f, int *first, const pp_timeline *t, int s)
{
    const pp_mem_list *l = &t->mem[s];
    for (size_t i = 0; i < l->count; i++) {
        const pp_mem_sample *m = &l->items[i];
        sep(f, first);
        fprintf(f, "{\"name\":\"memory\",\"ph\":\"C\",\"pid\":%d,\"tid\":0", s);
        put_us(f, "ts", m->t, t);
        fprintf(f, ",\"args\":{\"bytes_GiB\":%.6g,\"inflight\":%d}}",
                finite_or_0(m->bytes) / (1024.0 * 1024.0 * 1024.0), m->inflight);
        sep(f, first);
        fprintf(f, "{\"name\":\"weights\",\"ph\":\"C\",\"pid\":%d,\"tid\":0", s);
        put_us(f, "ts", m->t, t);
        fprintf(f, ",\"args\":{\"version\":%d,\"copies\":%d}}", m->version, m->copies);
    }
}

static void other_data(FILE *f, const pp_timeline *t)
{
    const pp_ir_info *in = &t->info;
    fputs("\"otherData\":{\"source\":", f);
    json_str(f, t->source);
    fputs(",\"schedule\":", f);
    json_str(f, in->name);
    fputs(",\"time_unit\":", f);
    json_str(f, t->unit);
    fprintf(f, ",\"us_per_unit\":%.17g", finite_or_0(t->us_per_unit));
    fprintf(f, ",\"stages\":%d,\"microbatches_per_step\":%d,\"steps\":%d,"
               "\"total_microbatches\":%d",
            in->stages, in->microbatches_per_step, in->steps, in->total_microbatches);
    fputs(",\"params\":{", f);
    for (int i = 0; i < in->nparams; i++) {
        fputs(i ? "," : "", f);
        json_str(f, in->params[i].key);
        fputc(':', f);
        json_str(f, in->params[i].value);
    }
    fputs("}}", f);
}

static int write_trace(FILE *f, const pp_timeline *t)
{
    int first = 1;
    fputs("{\"traceEvents\":[", f);
    for (int s = 0; s < t->info.stages; s++)
        stage_metadata(f, &first, s);
    for (int s = 0; s < t->info.stages; s++)
        if (stage_actions(f, &first, t, s) < 0)
            return -1;
    for (size_t i = 0; i < t->ntransfers; i++) {
        transfer_side(f, &first, t, &t->transfers[i], i + 1, 1);
        transfer_side(f, &first, t, &t->transfers[i], i + 1, 0);
    }
    for (int s = 0; s < t->info.stages; s++)
        memory_counters(f, &first, t, s);
    fputs("\n],\n\"displayTimeUnit\":\"ms\",\n", f);
    other_data(f, t);
    fputs("}\n", f);
    return 0;
}

int pp_trace_save(const char *path, const pp_timeline *t, pp_err *e)
{
    pp_atomic_file af;
    if (pp_atomic_open(&af, path, e) < 0)
        return -1;
    if (write_trace(af.f, t) < 0) {
        pp_atomic_abort(&af);
        return pp_errf(e, "%s: out of memory", path);
    }
    return pp_atomic_commit(&af, e);
}
