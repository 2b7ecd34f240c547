/* Chrome Trace Event JSON (DESIGN §5), streamed with fprintf so a trace of
 * millions of actions costs linear time and no tree in memory.
 *
 * One process per rank (named "stage s" with one stage per rank): its
 * compute thread (tid 0), with the stage named on every slice, then one
 * thread per link and direction it uses: "send to rank p" (tid 1 + 2p) and
 * "recv from rank p" (tid 2 + 2p); messages between stages of one rank use
 * no link. A link moves one message at a time, so the
 * slices of one thread never overlap, and the flow arrow of a transfer,
 * bound to the slice around its mid-point on its sender's and receiver's
 * link threads, finds that transfer's slice and no other (two links'
 * transfers with identical intervals used to share a thread, and an arrow
 * could bind to the other's slice). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "timeline.h"

enum { TID_COMPUTE = 0 };

static int tid_send_to(int peer)
{
    return 1 + 2 * peer;
}

static int tid_recv_from(int peer)
{
    return 2 + 2 * peer;
}

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

/* t in whole nanoseconds (llround), within what an int64 holds. */
static long long ns_of(double t, const pp_timeline *tl)
{
    double ns = finite_or_0(t * tl->us_per_unit) * 1e3;
    return ns > 9e18 ? (long long)9e18 : ns < -9e18 ? (long long)-9e18 : llround(ns);
}

static void put_ns_as_us(FILE *f, const char *key, long long ns)
{
    unsigned long long a = ns < 0 ? 0ull - (unsigned long long)ns : (unsigned long long)ns;
    fprintf(f, ",\"%s\":%s%llu.%03llu", key, ns < 0 ? "-" : "", a / 1000, a % 1000);
}

/* A slice's ts and dur: the end rounded, less the start rounded, so that
 * a slice that ends where the next begins does not overlap it after
 * rounding (rounding the duration on its own could add a nanosecond). */
static void put_span(FILE *f, double start, double end, const pp_timeline *tl)
{
    long long a = ns_of(start, tl), b = ns_of(end, tl);
    put_ns_as_us(f, "ts", a);
    put_ns_as_us(f, "dur", b - a);
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

static void thread_metadata(FILE *f, int *first, int pid, int tid, const char *name)
{
    meta(f, first, "thread_name", pid, tid, "name", name, 0);
    meta(f, first, "thread_sort_index", pid, tid, "sort_index", NULL, tid);
}

/* One thread of a process: (pid, tid) packed for sorting. */
typedef struct {
    int pid, tid;
} track;

static int track_cmp(const void *a, const void *b)
{
    const track *x = a, *y = b;
    if (x->pid != y->pid)
        return x->pid < y->pid ? -1 : 1;
    return (x->tid > y->tid) - (x->tid < y->tid);
}

/* The process of a stage's rank. */
static int rank_of(const pp_timeline *t, int stage)
{
    return pp_stage_rank(&t->info, stage);
}

/* Every rank's process and compute thread, and the link threads its
 * transfers use, each once. -1 when out of memory. */
static int metadata(FILE *f, int *first, const pp_timeline *t)
{
    const char *unit = pp_multi_stage(&t->info) ? "rank" : "stage";
    for (int r = 0; r < t->info.ranks; r++) {
        char name[32];
        snprintf(name, sizeof name, "%s %d", unit, r);
        meta(f, first, "process_name", r, 0, "name", name, 0);
        meta(f, first, "process_sort_index", r, 0, "sort_index", NULL, r);
        thread_metadata(f, first, r, TID_COMPUTE, "compute");
    }
    track *k = malloc((2 * t->ntransfers + 1) * sizeof *k);
    if (!k)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < t->ntransfers; i++) {
        const pp_transfer *x = &t->transfers[i];
        int from = rank_of(t, x->src), to = rank_of(t, x->dst);
        k[n++] = (track){from, tid_send_to(to)};
        k[n++] = (track){to, tid_recv_from(from)};
    }
    qsort(k, n, sizeof *k, track_cmp);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && track_cmp(&k[i], &k[i - 1]) == 0)
            continue;
        char name[48];
        int peer = (k[i].tid - 1) / 2;
        snprintf(name, sizeof name, k[i].tid % 2 ? "send to %s %d" : "recv from %s %d", unit,
                 peer);
        thread_metadata(f, first, k[i].pid, k[i].tid, name);
    }
    free(k);
    return 0;
}

static const char *op_cat(int op)
{
    static const char *const cats[PP_OP_COUNT] = {"F", "B", "I", "W", "OPT", "BARRIER"};
    return op >= 0 && op < PP_OP_COUNT ? cats[op] : "?";
}

/* The action's args: stage, micro-batch, version, and drift for
 * backwards. */
static void action_args(FILE *f, const pp_timeline *t, const pp_timed_action *a,
                        const int32_t *fv, size_t nfv)
{
    char text[32];
    pp_action_format_in(&t->info, a->act, text, sizeof text);
    fputs(",\"args\":{\"action\":", f);
    json_str(f, text);
    fprintf(f, ",\"stage\":%d", (int)a->act.stage);
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
        pp_action_format_in(&t->info, bare, name, sizeof name);
        sep(f, first);
        fputs("{\"name\":", f);
        json_str(f, name);
        fprintf(f, ",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d", op_cat(a->act.op),
                rank_of(t, s), TID_COMPUTE);
        put_span(f, a->start, a->end, t);
        action_args(f, t, a, fv, nfv);
        fputc('}', f);
    }
    free(fv);
    return 0;
}

/* One side of a transfer: its slice on the link's thread and the flow end
 * bound to that slice. The flow point sits mid-slice so that it binds to
 * it even where the link's previous transfer ends as this one starts. */
static void transfer_side(FILE *f, int *first, const pp_timeline *t, const pp_transfer *x,
                          size_t id, int sender)
{
    char name[32];
    snprintf(name, sizeof name, "%s%d", x->is_grad ? "grad" : "act", x->mb);
    int from = rank_of(t, x->src), to = rank_of(t, x->dst);
    int pid = sender ? from : to;
    int tid = sender ? tid_send_to(to) : tid_recv_from(from);
    sep(f, first);
    fprintf(f, "{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d", name,
            sender ? "send" : "recv", pid, tid);
    put_span(f, x->start, x->end, t);
    fprintf(f, ",\"args\":{\"microbatch\":%d,\"kind\":\"%s\",\"from\":%d,\"to\":%d", x->mb,
            x->is_grad ? "gradient" : "activation", x->src, x->dst);
    if (pp_multi_stage(&t->info))
        fprintf(f, ",\"from_rank\":%d,\"to_rank\":%d", from, to);
    fputs("}}", f);
    sep(f, first);
    fprintf(f, "{\"name\":\"%s\",\"cat\":\"flow\",\"ph\":\"%s\",\"id\":%zu,\"pid\":%d,\"tid\":%d%s",
            name, sender ? "s" : "f", id, pid, tid, sender ? "" : ",\"bp\":\"e\"");
    put_ns_as_us(f, "ts", (ns_of(x->start, t) + ns_of(x->end, t)) / 2);
    fputc('}', f);
}

/* Counters per stage on its rank's process ("memory", or "memory s1"
 * where a rank holds several stages). */
static void memory_counters(FILE *f, int *first, const pp_timeline *t, int s)
{
    const pp_mem_list *l = &t->mem[s];
    char suffix[16] = "";
    if (pp_multi_stage(&t->info))
        snprintf(suffix, sizeof suffix, " s%d", s);
    int pid = rank_of(t, s);
    for (size_t i = 0; i < l->count; i++) {
        const pp_mem_sample *m = &l->items[i];
        sep(f, first);
        fprintf(f, "{\"name\":\"memory%s\",\"ph\":\"C\",\"pid\":%d,\"tid\":0", suffix, pid);
        put_us(f, "ts", m->t, t);
        fprintf(f, ",\"args\":{\"bytes_GiB\":%.6g,\"inflight\":%d}}",
                finite_or_0(m->bytes) / (1024.0 * 1024.0 * 1024.0), m->inflight);
        sep(f, first);
        fprintf(f, "{\"name\":\"weights%s\",\"ph\":\"C\",\"pid\":%d,\"tid\":0", suffix, pid);
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
    fprintf(f, ",\"stages\":%d,\"ranks\":%d,\"placement\":\"%s\",\"microbatches_per_step\":%d,"
               "\"steps\":%d,\"total_microbatches\":%d",
            in->stages, in->ranks, pp_place_name(in->placement), in->microbatches_per_step,
            in->steps, in->total_microbatches);
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
    if (metadata(f, &first, t) < 0)
        return -1;
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

static int save_trace(FILE *f, const void *t, pp_err *e)
{
    return write_trace(f, t) < 0 ? pp_errf(e, "out of memory") : 0;
}

int pp_trace_save(const char *path, const pp_timeline *t, pp_err *e)
{
    return pp_atomic_save(path, save_trace, t, e);
}
