#include "metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A micro-batch forwarded on a stage and not yet done with its backward. */
typedef struct {
    int32_t v_f, v_b;
    double f_start;
    uint8_t stash, input_done;
    uint8_t holds_ref; /* holds a reference on version v_f */
} mb_rec;

struct pp_acc_stage {
    int version;         /* current weight version */
    int pinned;          /* older version kept for a later F@vK, -1 */
    pp_ring mbs;         /* mb -> mb_rec */
    pp_ring vref;        /* version -> int reference count */
    int copies, inflight;
    double busy, last_end;
    pp_stage_memory mem;
    double bytes;        /* the last modelled bytes, for the rank's sum */
    /* gradients accumulated since the last OPT */
    long long g_n, g_sum_vb, g_sum_vf;
    int g_min_vb, g_min_vf;
    /* statistics */
    pp_stage_metrics m;
    long long drift_sum, stale_n;
    double stale_sum, age_sum, hold_sum;
};

/* The union of its stages' busy intervals (an overlapped pair counts
 * once) and the sum of their memory over time. */
struct pp_acc_rank {
    double busy, last_end;
    int inflight;
    double bytes;
    pp_rank_metrics m;
};

static pp_acc_rank *rank_of(pp_metrics_acc *a, int stage)
{
    return &a->rk[pp_stage_rank(&a->info, stage)];
}

/* The sum of the rank's stages' bytes (several stages per rank). */
static double rank_bytes(const pp_metrics_acc *a, int r)
{
    const pp_ir_info *in = &a->info;
    switch (in->placement) {
    case PP_PLACE_V: return a->st[r].bytes + a->st[2 * in->ranks - 1 - r].bytes;
    default: {
        double b = 0;
        for (int s = r; s < in->stages; s += in->ranks)
            b += a->st[s].bytes;
        return b;
    }
    }
}

static int vref_add(pp_acc_stage *s, int v, int delta, pp_err *e)
{
    int fresh;
    int *rc = pp_ring_put(&s->vref, v, &fresh);
    if (!rc)
        return pp_errf(e, "out of memory");
    if (fresh)
        *rc = 0;
    if (*rc == 0 && delta > 0)
        s->copies++;
    *rc += delta;
    if (*rc == 0) {
        s->copies--;
        pp_ring_del(&s->vref, v);
    }
    if (s->copies > s->m.peak_weight_copies)
        s->m.peak_weight_copies = s->copies;
    return 0;
}

static double stage_bytes(const pp_metrics_acc *a, const pp_acc_stage *s, int in_backward)
{
    if (!a->model)
        return 0.0;
    const pp_stage_memory *m = &s->mem;
    double b = s->copies * m->weights + m->grads + m->optimizer;
    if (a->recompute)
        b += s->inflight * m->input_per_mb + (in_backward ? m->activation_per_mb : 0.0);
    else
        b += s->inflight * m->activation_per_mb;
    return b;
}

/* Records peak memory, and a sample for the trace when a timeline is kept. */
static inline int note_memory(pp_metrics_acc *a, int stage, double t, int in_backward)
{
    pp_acc_stage *s = &a->st[stage];
    pp_acc_rank *rk = a->multi ? rank_of(a, stage) : NULL;
    if (s->inflight > s->m.peak_inflight)
        s->m.peak_inflight = s->inflight;
    if (rk && rk->inflight > rk->m.peak_inflight)
        rk->m.peak_inflight = rk->inflight;
    if (!a->model && !a->timeline) /* summary without bytes: only the count */
        return 0;
    double bytes = stage_bytes(a, s, in_backward);
    if (bytes > s->m.peak_memory_bytes)
        s->m.peak_memory_bytes = bytes;
    s->bytes = bytes;
    if (rk) {
        rk->bytes = rank_bytes(a, pp_stage_rank(&a->info, stage));
        if (rk->bytes > rk->m.peak_memory_bytes)
            rk->m.peak_memory_bytes = rk->bytes;
    }
    if (!a->timeline)
        return 0;
    pp_mem_sample ms = {t, s->inflight, s->copies, s->version, 0, bytes};
    return pp_timeline_add_mem(a->timeline, stage, &ms);
}

int pp_acc_init(pp_metrics_acc *a, const pp_ir_info *info, const pp_model_desc *model,
                int recompute, pp_timeline *timeline, pp_err *e)
{
    memset(a, 0, sizeof *a);
    a->info = *info;
    a->model = model;
    a->recompute = recompute;
    a->timeline = timeline;
    if (pp_info_check_placement(&a->info, e) < 0) {
        memset(a, 0, sizeof *a);
        return -1;
    }
    int P = info->stages, R = a->info.ranks;
    a->multi = pp_multi_stage(&a->info);
    a->st = calloc((size_t)P, sizeof *a->st);
    a->rk = calloc((size_t)R, sizeof *a->rk);
    a->busy_lo = calloc((size_t)R, sizeof *a->busy_lo);
    a->busy_hi = calloc((size_t)R, sizeof *a->busy_hi);
    if (!a->st || !a->rk || !a->busy_lo || !a->busy_hi)
        goto oom;
    for (int i = 0; i < P; i++) {
        pp_acc_stage *s = &a->st[i];
        s->pinned = -1;
        s->g_min_vb = s->g_min_vf = INT32_MAX;
        if (pp_ring_init(&s->mbs, sizeof(mb_rec)) < 0 || pp_ring_init(&s->vref, sizeof(int)) < 0)
            goto oom;
        if (model)
            s->mem = pp_model_stage_memory(model, P, i);
        if (vref_add(s, 0, 1, e) < 0)
            goto oom;
    }
    /* Steady state: the middle steps, leaving out max(1, ceil(S/4)) at
     * each end for fill and drain. */
    int S = info->steps, edge = (S + 3) / 4;
    if (edge < 1)
        edge = 1;
    a->steady_lo = edge;
    a->steady_hi = S - edge;
    for (int i = 0; i < P; i++)
        note_memory(a, i, 0.0, 0);
    return 0;
oom:
    pp_acc_free(a);
    return pp_errf(e, "out of memory");
}

void pp_acc_free(pp_metrics_acc *a)
{
    if (a->st)
        for (int i = 0; i < a->info.stages; i++) {
            pp_ring_free(&a->st[i].mbs);
            pp_ring_free(&a->st[i].vref);
        }
    free(a->st);
    free(a->rk);
    free(a->busy_lo);
    free(a->busy_hi);
    memset(a, 0, sizeof *a);
}

static double busy_before(double busy, double last_end, double t)
{
    return busy - (last_end > t ? last_end - t : 0.0);
}

static void snapshot_busy(pp_metrics_acc *a, double t, double *dst)
{
    for (int i = 0; i < a->info.ranks; i++)
        dst[i] = a->multi ? busy_before(a->rk[i].busy, a->rk[i].last_end, t)
                          : busy_before(a->st[i].busy, a->st[i].last_end, t);
}

static void watch_steady(pp_metrics_acc *a, const pp_timed_action *ta)
{
    int m = a->info.microbatches_per_step;
    int step = m > 0 ? ta->act.mb / m : 0;
    if (a->steady_hi <= a->steady_lo)
        return;
    if (!a->seen_lo && step >= a->steady_lo) {
        a->seen_lo = 1;
        a->t_lo = ta->start;
        snapshot_busy(a, ta->start, a->busy_lo);
    }
    if (!a->seen_hi && step >= a->steady_hi) {
        a->seen_hi = 1;
        a->t_hi = ta->start;
        snapshot_busy(a, ta->start, a->busy_hi);
    }
}

static int on_forward(pp_metrics_acc *a, int stage, pp_timed_action *ta, pp_err *e)
{
    pp_acc_stage *s = &a->st[stage];
    int mb = ta->act.mb;
    if (ta->act.sel == PP_SEL_STASH)
        return pp_errf(e, "F%d: the stash selector is for backwards only", mb);
    int v = s->version;
    if (ta->act.sel == PP_SEL_VERSION) {
        v = ta->act.version;
        if (v < 0 || v > s->version)
            return pp_errf(e, "F%d@v%d: version %d does not exist yet (the stage is at %d)", mb,
                           v, v, s->version);
    }
    int fresh;
    mb_rec *r = pp_ring_put(&s->mbs, mb, &fresh);
    if (!r)
        return pp_errf(e, "out of memory");
    if (!fresh)
        return pp_errf(e, "F%d: micro-batch %d is already forwarded and not yet backwarded", mb,
                       mb);
    *r = (mb_rec){0};
    r->v_f = v;
    r->f_start = ta->start;
    if (ta->flags & PP_TA_STASH) {
        r->holds_ref = 1;
        if (vref_add(s, v, 1, e) < 0)
            return -1;
    }
    ta->version = v;
    s->m.forwards++;
    s->inflight++;
    if (a->multi)
        rank_of(a, stage)->inflight++;
    if (stage == 0)
        watch_steady(a, ta);
    return note_memory(a, stage, ta->start, 0);
}

static void record_drift(pp_acc_stage *s, int v_b, int v_f)
{
    int drift = v_b - v_f;
    s->drift_sum += drift;
    if (drift > s->m.drift_max)
        s->m.drift_max = drift;
}

/* B, or I of a split backward: reads weights, gives the input gradient. */
static int on_backward_input(pp_metrics_acc *a, int stage, pp_timed_action *ta, mb_rec *r,
                             pp_err *e)
{
    pp_acc_stage *s = &a->st[stage];
    if (ta->act.sel == PP_SEL_VERSION)
        return pp_errf(e, "explicit versions are for forwards only");
    if (r->input_done)
        return pp_errf(e, "micro-batch %d already has its input gradient", ta->act.mb);
    r->stash = ta->act.sel == PP_SEL_STASH;
    r->v_b = r->stash ? r->v_f : s->version;
    r->input_done = 1;
    ta->version = r->v_b;
    record_drift(s, r->v_b, r->v_f);
    if (r->stash && !r->holds_ref) { /* not announced at the forward: late */
        r->holds_ref = 1;
        return vref_add(s, r->v_f, 1, e);
    }
    return 0;
}

/* B, or W of a split backward: the gradient joins the next OPT and the
 * activations are released. */
static int on_backward_weight(pp_metrics_acc *a, int stage, pp_timed_action *ta, mb_rec *r,
                              pp_err *e)
{
    pp_acc_stage *s = &a->st[stage];
    int mb = ta->act.mb;
    if (!r->input_done)
        return pp_errf(e, "W%d comes before I%d", mb, mb);
    if (ta->act.op == PP_OP_W)
        ta->version = r->v_b;
    s->g_n++;
    s->g_sum_vb += r->v_b;
    s->g_sum_vf += r->v_f;
    if (r->v_b < s->g_min_vb)
        s->g_min_vb = r->v_b;
    if (r->v_f < s->g_min_vf)
        s->g_min_vf = r->v_f;
    double hold = ta->end - r->f_start;
    s->hold_sum += hold;
    if (hold > s->m.hold_max)
        s->m.hold_max = hold;
    s->m.backwards++;
    if (note_memory(a, stage, ta->start, 1) < 0) /* recompute peaks inside B */
        return pp_errf(e, "out of memory");
    if (r->holds_ref && vref_add(s, r->v_f, -1, e) < 0)
        return -1;
    pp_ring_del(&s->mbs, mb);
    s->inflight--;
    if (a->multi)
        rank_of(a, stage)->inflight--;
    return note_memory(a, stage, ta->end, 0);
}

static int on_opt(pp_metrics_acc *a, int stage, pp_timed_action *ta, pp_err *e)
{
    pp_acc_stage *s = &a->st[stage];
    long long c = s->version;
    if (s->g_n > 0) {
        double stale = (double)(c * s->g_n - s->g_sum_vb), age = (double)(c * s->g_n - s->g_sum_vf);
        s->stale_sum += stale;
        s->age_sum += age;
        s->stale_n += s->g_n;
        if (c - s->g_min_vb > s->m.staleness_max)
            s->m.staleness_max = (int)(c - s->g_min_vb);
        if (c - s->g_min_vf > s->m.age_max)
            s->m.age_max = (int)(c - s->g_min_vf);
    }
    s->g_n = s->g_sum_vb = s->g_sum_vf = 0;
    s->g_min_vb = s->g_min_vf = INT32_MAX;
    /* Release before acquiring: an update nobody else references happens in
     * place and must not count as a second copy. */
    if (vref_add(s, s->version, -1, e) < 0 || vref_add(s, s->version + 1, 1, e) < 0)
        return -1;
    s->version++;
    ta->version = s->version;
    s->m.opts++;
    return note_memory(a, stage, ta->end, 0);
}

static int dispatch(pp_metrics_acc *a, int stage, pp_timed_action *ta, pp_err *e)
{
    pp_acc_stage *s = &a->st[stage];
    int op = ta->act.op, mb = ta->act.mb;
    if (op == PP_OP_F)
        return on_forward(a, stage, ta, e);
    if (op == PP_OP_OPT)
        return on_opt(a, stage, ta, e);
    if (op == PP_OP_BARRIER) {
        ta->version = s->version;
        return 0;
    }
    mb_rec *r = pp_ring_get(&s->mbs, mb);
    if (!r)
        return pp_errf(e, "%s%d has no forward of micro-batch %d before it", pp_op_name(op), mb,
                       mb);
    if (op == PP_OP_I)
        return on_backward_input(a, stage, ta, r, e);
    if (op == PP_OP_W) {
        if (ta->act.sel == PP_SEL_VERSION)
            return pp_errf(e, "explicit versions are for forwards only");
        return on_backward_weight(a, stage, ta, r, e);
    }
    if (on_backward_input(a, stage, ta, r, e) < 0)
        return -1;
    return on_backward_weight(a, stage, ta, r, e);
}

/* Keeps alive the version the stage's next forward names, once it exists. */
static int update_pin(pp_acc_stage *s, int wanted, pp_err *e)
{
    if (wanted > s->version)
        wanted = -1;
    if (wanted == s->pinned)
        return 0;
    if (wanted >= 0 && vref_add(s, wanted, 1, e) < 0)
        return -1;
    if (s->pinned >= 0 && vref_add(s, s->pinned, -1, e) < 0)
        return -1;
    s->pinned = wanted;
    return 0;
}

int pp_acc_action(pp_metrics_acc *a, int stage, pp_timed_action *ta, pp_err *e)
{
    if (stage < 0 || stage >= a->info.stages)
        return pp_errf(e, "stage %d out of range", stage);
    const pp_action *act = &ta->act;
    if (act->op >= PP_OP_COUNT)
        return pp_errf(e, "stage %d: unknown action", stage);
    int has_mb = act->op != PP_OP_OPT && act->op != PP_OP_BARRIER;
    if (has_mb && (act->mb < 0 || act->mb >= a->info.total_microbatches))
        return pp_errf(e, "stage %d: micro-batch %d out of range 0..%d", stage, act->mb,
                       a->info.total_microbatches - 1);
    if (ta->start < a->last_start)
        return pp_errf(e, "stage %d: actions fed out of start-time order", stage);
    a->last_start = ta->start;
    if (dispatch(a, stage, ta, e) < 0 || update_pin(&a->st[stage], ta->next_f_version, e) < 0) {
        char buf[32];
        return pp_err_prefix(e, "stage %d, action \"%s\"", stage,
                             pp_action_format(*act, buf, sizeof buf));
    }
    pp_acc_stage *s = &a->st[stage];
    s->busy += ta->end - ta->start;
    if (ta->end > s->last_end)
        s->last_end = ta->end;
    if (a->multi) { /* start order: the rank's union of intervals grows at its end */
        pp_acc_rank *rk = rank_of(a, stage);
        double from = ta->start > rk->last_end ? ta->start : rk->last_end;
        if (ta->end > from)
            rk->busy += ta->end - from;
        if (ta->end > rk->last_end)
            rk->last_end = ta->end;
    }
    a->actions++;
    return 0;
}

static int check_complete(const pp_metrics_acc *a, pp_err *e)
{
    long long N = a->info.total_microbatches;
    for (int i = 0; i < a->info.stages; i++) {
        const pp_acc_stage *s = &a->st[i];
        if (s->m.forwards != N || s->m.backwards != N || s->inflight != 0)
            return pp_errf(e, "stage %d ran %lld forwards and %lld backwards for %lld micro-batches",
                           i, s->m.forwards, s->m.backwards, N);
    }
    return 0;
}

static void finish_stage(const pp_metrics_acc *a, pp_acc_stage *s, double makespan)
{
    pp_stage_metrics *m = &s->m;
    m->busy = s->busy;
    m->idle = makespan - s->busy;
    m->bubble_fraction = makespan > 0 ? m->idle / makespan : 0.0;
    m->drift_mean = m->backwards ? (double)s->drift_sum / m->backwards : 0.0;
    m->staleness_mean = s->stale_n ? s->stale_sum / s->stale_n : 0.0;
    m->age_mean = s->stale_n ? s->age_sum / s->stale_n : 0.0;
    m->hold_mean = m->backwards ? s->hold_sum / m->backwards : 0.0;
    m->final_version = s->version;
    (void)a;
}

/* With one stage per rank the rank's figures are its stage's. */
static void finish_ranks(const pp_metrics_acc *a, pp_metrics *out)
{
    for (int r = 0; r < a->info.ranks; r++) {
        pp_rank_metrics *m = &out->rank[r];
        if (a->multi) {
            *m = a->rk[r].m;
            m->busy = a->rk[r].busy;
        } else {
            m->peak_inflight = a->st[r].m.peak_inflight;
            m->peak_memory_bytes = a->st[r].m.peak_memory_bytes;
            m->busy = a->st[r].busy;
        }
        m->idle = out->makespan - m->busy;
        m->bubble_fraction = out->makespan > 0 ? m->idle / out->makespan : 0.0;
    }
}

static void summarize(const pp_metrics_acc *a, pp_metrics *out)
{
    int P = a->info.stages, R = a->info.ranks;
    double busy = 0, drift_sum = 0, stale_sum = 0, age_sum = 0;
    long long nb = 0, ns = 0;
    for (int r = 0; r < R; r++)
        busy += out->rank[r].busy;
    for (int i = 0; i < P; i++) {
        const pp_acc_stage *s = &a->st[i];
        const pp_stage_metrics *m = &out->stage[i];
        drift_sum += (double)s->drift_sum;
        nb += m->backwards;
        stale_sum += s->stale_sum;
        age_sum += s->age_sum;
        ns += s->stale_n;
#define MAXTO(dst, v) if ((v) > (dst)) (dst) = (v)
        MAXTO(out->drift_max, m->drift_max);
        MAXTO(out->staleness_max, m->staleness_max);
        MAXTO(out->age_max, m->age_max);
        MAXTO(out->peak_weight_copies_max, m->peak_weight_copies);
    }
    for (int r = 0; r < R; r++) {
        MAXTO(out->peak_inflight_max, out->rank[r].peak_inflight);
        MAXTO(out->peak_memory_bytes_max, out->rank[r].peak_memory_bytes);
    }
#undef MAXTO
    double total = R * out->makespan;
    out->bubble_fraction = total > 0 ? (total - busy) / total : 0.0;
    out->bubble_megatron = busy > 0 ? (total - busy) / busy : 0.0;
    out->drift_mean = nb ? drift_sum / nb : 0.0;
    out->staleness_mean = ns ? stale_sum / ns : 0.0;
    out->age_mean = ns ? age_sum / ns : 0.0;
    out->throughput_mb = out->makespan > 0 ? a->info.total_microbatches / out->makespan : 0.0;
    if (a->model)
        out->throughput_tokens = out->throughput_mb * pp_model_tokens_per_mb(a->model);
    if (a->seen_lo && a->seen_hi && a->t_hi > a->t_lo) {
        double b = 0;
        for (int i = 0; i < R; i++)
            b += a->busy_hi[i] - a->busy_lo[i];
        out->has_steady = 1;
        out->steady_from = a->t_lo;
        out->steady_to = a->t_hi;
        out->steady_bubble_fraction = 1.0 - b / (R * (a->t_hi - a->t_lo));
        if (fabs(out->steady_bubble_fraction) < 1e-12)
            out->steady_bubble_fraction = 0.0;
    }
}

int pp_acc_finish(pp_metrics_acc *a, pp_metrics *out, pp_err *e)
{
    memset(out, 0, sizeof *out);
    if (check_complete(a, e) < 0)
        return -1;
    int P = a->info.stages;
    out->stage = P > 0 ? calloc((size_t)P, sizeof *out->stage) : NULL;
    out->rank = calloc((size_t)a->info.ranks, sizeof *out->rank);
    if (!out->stage || !out->rank) {
        pp_metrics_free(out);
        return pp_errf(e, "out of memory");
    }
    out->info = a->info;
    snprintf(out->unit, sizeof out->unit, "units");
    for (int i = 0; i < P; i++)
        if (a->st[i].last_end > out->makespan)
            out->makespan = a->st[i].last_end;
    for (int i = 0; i < P; i++) {
        finish_stage(a, &a->st[i], out->makespan);
        out->stage[i] = a->st[i].m;
    }
    out->actions = a->actions;
    finish_ranks(a, out);
    summarize(a, out);
    return 0;
}

void pp_metrics_free(pp_metrics *m)
{
    free(m->stage);
    free(m->rank);
    m->stage = NULL;
    m->rank = NULL;
}
