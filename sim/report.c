#include "report.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "optim_cost.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

/* Plain AdamW is the memory model's baseline: only another optimizer, or
 * the delay correction, adds its lines, fields and columns, so that the
 * outputs without them stay as they were. */
static int other_optimizer(const pp_model_desc *m)
{
    return m && (m->optimizer != PP_OPTIM_ADAMW || m->delay_correction);
}

static double adamw_state_bytes(const pp_model_desc *m, int P, int s)
{
    pp_model_desc a = *m;
    a.optimizer = PP_OPTIM_ADAMW;
    a.delay_correction = 0;
    return pp_optim_state_bytes(&a, P, s);
}

static void print_model_line(FILE *f, const pp_model_desc *model)
{
    if (!model)
        return;
    fprintf(f, "memory model: %s, %d layers x %d wide, %d heads, seq %d,\n"
               "              vocab %d, micro-batch %d sequences, %s\n",
            model->name, model->layers, model->dim, model->heads, model->seq_len, model->vocab,
            model->micro_batch, model->bytes_per_elem == 2 ? "bf16" : "fp32");
    if (other_optimizer(model))
        fprintf(f, "              optimizer %s%s\n", pp_optim_name(model->optimizer),
                model->delay_correction ? " with the delay correction" : "");
}

static void fmt_steady(char *buf, size_t n, const pp_metrics *m)
{
    if (m->has_steady)
        snprintf(buf, n, "%.1f%%", 100.0 * m->steady_bubble_fraction);
    else
        snprintf(buf, n, "n/a");
}

/* With several stages per rank: what each device does and holds. */
static void rank_table(FILE *f, const pp_metrics *m)
{
    const pp_ir_info *i = &m->info;
    fprintf(f, "\nrank     busy    idle bubble in-flight peak GiB  stages\n");
    fprintf(f, "       (%s)  (%s)      %%       max\n", m->unit, m->unit);
    for (int r = 0; r < i->ranks; r++) {
        const pp_rank_metrics *p = &m->rank[r];
        fprintf(f, "%4d %8.4g %7.4g %6.1f %9d %8.3f  ", r, p->busy, p->idle,
                100.0 * p->bubble_fraction, p->peak_inflight, p->peak_memory_bytes / GIB);
        int st[64];
        int n = pp_rank_stages(i, r, st, (int)(sizeof st / sizeof st[0]));
        for (int k = 0; k < n; k++)
            fprintf(f, "%s%d", k ? "," : "", st[k]);
        fprintf(f, n == (int)(sizeof st / sizeof st[0]) ? ",...\n" : "\n");
    }
}

void pp_report_table(FILE *f, const pp_metrics *m, const pp_model_desc *model)
{
    const pp_ir_info *i = &m->info;
    char steady[32];
    fmt_steady(steady, sizeof steady, m);
    int multi = pp_multi_stage(i);
    if (multi)
        fprintf(f, "schedule %s: R=%d ranks holding %d stages (%s placement), m=%d "
                   "micro-batches/step, %d steps, %d micro-batches\n",
                i->name, i->ranks, i->stages, pp_place_name(i->placement),
                i->microbatches_per_step, i->steps, i->total_microbatches);
    else
        fprintf(f, "schedule %s: P=%d stages, m=%d micro-batches/step, %d steps, %d "
                   "micro-batches\n",
                i->name, i->stages, i->microbatches_per_step, i->steps, i->total_microbatches);
    print_model_line(f, model);
    fprintf(f, "makespan          %.6g %s\n", m->makespan, m->unit);
    fprintf(f, "throughput        %.6g micro-batches/%s", m->throughput_mb, m->unit);
    if (m->throughput_tokens > 0)
        fprintf(f, ", %.6g tokens/%s", m->throughput_tokens, m->unit);
    fprintf(f, "\nbubble            %.2f%% of %s x makespan (Megatron convention: %.2f%% of compute)\n",
            100.0 * m->bubble_fraction, multi ? "R" : "P", 100.0 * m->bubble_megatron);
    fprintf(f, "steady bubble     %s", steady);
    if (m->has_steady)
        fprintf(f, " (over [%.6g, %.6g] %s, the middle steps)", m->steady_from, m->steady_to, m->unit);
    else
        fprintf(f, " (too few steps for a steady state)");
    fprintf(f, "\ndrift             max %d, mean %.3f versions (backward minus forward)\n",
            m->drift_max, m->drift_mean);
    fprintf(f, "staleness         max %d, mean %.3f updates (gradient age at its OPT)\n",
            m->staleness_max, m->staleness_mean);
    fprintf(f, "age               max %d, mean %.3f (staleness + drift)\n", m->age_max, m->age_mean);
    fprintf(f, "peak memory       %.3f GiB (largest %s)\n\n", m->peak_memory_bytes_max / GIB,
            multi ? "rank" : "stage");
    fprintf(f, "stage    busy    idle bubble  drift  stale  in-flight copies peak GiB  hold\n");
    fprintf(f, "       (%s)  (%s)      %%  max/mean max/mean    max    max           mean\n",
            m->unit, m->unit);
    for (int s = 0; s < i->stages; s++) {
        const pp_stage_metrics *p = &m->stage[s];
        fprintf(f, "%5d %7.4g %7.4g %6.1f %2d/%-5.2f %2d/%-5.2f %6d %6d %8.3f %6.4g\n", s, p->busy,
                p->idle, 100.0 * p->bubble_fraction, p->drift_max, p->drift_mean,
                p->staleness_max, p->staleness_mean, p->peak_inflight, p->peak_weight_copies,
                p->peak_memory_bytes / GIB, p->hold_mean);
    }
    if (multi)
        rank_table(f, m);
}

/* Peak memory per device: per stage when every schedule has one stage per
 * rank, else per rank (a rank holds all its stages). */
static void compare_memory(FILE *f, const pp_metrics *ms, int n)
{
    int R = ms[0].info.ranks, multi = 0;
    for (int k = 0; k < n; k++)
        multi |= pp_multi_stage(&ms[k].info);
    const int per_block = 8;
    fprintf(f, "\npeak memory per %s (GiB)\n", multi ? "rank" : "stage");
    for (int first = 0; first < R; first += per_block) {
        int last = first + per_block < R ? first + per_block : R;
        fprintf(f, "%-16s", "schedule");
        for (int s = first; s < last; s++)
            fprintf(f, " %6s%-d", multi ? "r" : "s", s);
        fprintf(f, "\n");
        for (int k = 0; k < n; k++) {
            fprintf(f, "%-16.16s", ms[k].info.name);
            for (int s = first; s < last && s < ms[k].info.ranks; s++)
                fprintf(f, " %7.2f", ms[k].rank[s].peak_memory_bytes / GIB);
            fprintf(f, "\n");
        }
    }
}

/* The optimizer's state per stage against plain AdamW's: it does not
 * depend on the schedule, so one block serves them all. */
static void compare_optimizer(FILE *f, int P, const pp_model_desc *model)
{
    const int per_block = 8;
    const char *name = pp_optim_name(model->optimizer);
    fprintf(f, "\noptimizer state per stage (GiB), part of every schedule's peaks above\n");
    if (model->delay_correction)
        fprintf(f, "%s with the delay correction (one more fp32 copy of the parameters)\n", name);
    for (int first = 0; first < P; first += per_block) {
        int last = first + per_block < P ? first + per_block : P;
        fprintf(f, "%-14s", "optimizer");
        for (int s = first; s < last; s++)
            fprintf(f, " %6s%-d", "s", s);
        fprintf(f, "\n%-14.14s", name);
        for (int s = first; s < last; s++)
            fprintf(f, " %7.2f", pp_optim_state_bytes(model, P, s) / GIB);
        fprintf(f, "\n%-14s", "plain adamw");
        for (int s = first; s < last; s++)
            fprintf(f, " %7.2f", adamw_state_bytes(model, P, s) / GIB);
        fprintf(f, "\n%-14s", "difference");
        for (int s = first; s < last; s++)
            fprintf(f, " %+7.2f",
                    (pp_optim_state_bytes(model, P, s) - adamw_state_bytes(model, P, s)) / GIB);
        fprintf(f, "\n");
    }
}

void pp_report_compare_table(FILE *f, const pp_metrics *ms, int n, const pp_model_desc *model)
{
    if (n < 1)
        return;
    const pp_ir_info *i = &ms[0].info;
    int multi = 0;
    for (int k = 0; k < n; k++)
        multi |= pp_multi_stage(&ms[k].info);
    if (multi)
        fprintf(f, "R=%d ranks, m=%d micro-batches/step, %d steps; times in %s\n", i->ranks,
                i->microbatches_per_step, i->steps, ms[0].unit);
    else
        fprintf(f, "P=%d stages, m=%d micro-batches/step, %d steps; times in %s\n", i->stages,
                i->microbatches_per_step, i->steps, ms[0].unit);
    print_model_line(f, model);
    fprintf(f, "\n%-16s %7s %5s %6s %6s %8s %8s %6s %7s\n", "schedule", "thrpt", "x", "bubble",
            "steady", "drift", "stale", "copies", "peak");
    fprintf(f, "%-16s %7s %5s %6s %6s %8s %8s %6s %7s\n", "", "mb/unit", "", "%", "%",
            "max/mean", "max/mean", "max", "GiB");
    for (int k = 0; k < n; k++) {
        const pp_metrics *m = &ms[k];
        char steady[16], drift[16], stale[16];
        if (m->has_steady)
            snprintf(steady, sizeof steady, "%.1f", 100.0 * m->steady_bubble_fraction);
        else
            snprintf(steady, sizeof steady, "n/a");
        snprintf(drift, sizeof drift, "%d/%.2f", m->drift_max, m->drift_mean);
        snprintf(stale, sizeof stale, "%d/%.2f", m->staleness_max, m->staleness_mean);
        double x = ms[0].throughput_mb > 0 ? m->throughput_mb / ms[0].throughput_mb : 0.0;
        fprintf(f, "%-16.16s %7.4f %5.2f %6.1f %6s %8s %8s %6d %7.2f\n", m->info.name,
                m->throughput_mb, x, 100.0 * m->bubble_fraction, steady, drift, stale,
                m->peak_weight_copies_max, m->peak_memory_bytes_max / GIB);
    }
    fprintf(f, "x: throughput relative to %s; bubble: idle / (%s x makespan);\n"
               "steady: the same over the middle steps (n/a: run too short)\n", ms[0].info.name,
            multi ? "R" : "P");
    if (multi)
        fprintf(f, "several stages per rank: each of a rank's V chunks takes 1/V of --fwd and "
                   "--bwd\n(the same model on the same ranks in every row)\n");
    compare_memory(f, ms, n);
    if (other_optimizer(model))
        compare_optimizer(f, i->stages, model);
}

static cJSON *stage_json(const pp_stage_metrics *p, int s, int P, const pp_model_desc *model)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "stage", s);
    cJSON_AddNumberToObject(o, "busy", p->busy);
    cJSON_AddNumberToObject(o, "idle", p->idle);
    cJSON_AddNumberToObject(o, "bubble_fraction", p->bubble_fraction);
    cJSON_AddNumberToObject(o, "drift_max", p->drift_max);
    cJSON_AddNumberToObject(o, "drift_mean", p->drift_mean);
    cJSON_AddNumberToObject(o, "staleness_max", p->staleness_max);
    cJSON_AddNumberToObject(o, "staleness_mean", p->staleness_mean);
    cJSON_AddNumberToObject(o, "age_max", p->age_max);
    cJSON_AddNumberToObject(o, "peak_inflight", p->peak_inflight);
    cJSON_AddNumberToObject(o, "peak_weight_copies", p->peak_weight_copies);
    cJSON_AddNumberToObject(o, "peak_memory_bytes", p->peak_memory_bytes);
    cJSON_AddNumberToObject(o, "activation_hold_mean", p->hold_mean);
    cJSON_AddNumberToObject(o, "activation_hold_max", p->hold_max);
    cJSON_AddNumberToObject(o, "final_version", p->final_version);
    if (other_optimizer(model)) {
        double state = pp_optim_state_bytes(model, P, s);
        cJSON_AddNumberToObject(o, "optimizer_state_bytes", state);
        cJSON_AddNumberToObject(o, "optimizer_state_vs_adamw_bytes",
                                state - adamw_state_bytes(model, P, s));
    }
    return o;
}

static cJSON *metrics_json(const pp_metrics *m, const pp_model_desc *model)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "schedule", m->info.name);
    cJSON_AddNumberToObject(o, "stages", m->info.stages);
    cJSON_AddNumberToObject(o, "ranks", m->info.ranks);
    cJSON_AddStringToObject(o, "placement", pp_place_name(m->info.placement));
    cJSON_AddNumberToObject(o, "microbatches_per_step", m->info.microbatches_per_step);
    cJSON_AddNumberToObject(o, "steps", m->info.steps);
    cJSON_AddNumberToObject(o, "total_microbatches", m->info.total_microbatches);
    cJSON_AddStringToObject(o, "time_unit", m->unit);
    cJSON_AddNumberToObject(o, "makespan", m->makespan);
    cJSON_AddNumberToObject(o, "throughput", m->throughput_mb);
    cJSON_AddNumberToObject(o, "throughput_tokens", m->throughput_tokens);
    cJSON_AddNumberToObject(o, "bubble_fraction", m->bubble_fraction);
    cJSON_AddNumberToObject(o, "bubble_megatron", m->bubble_megatron);
    if (m->has_steady)
        cJSON_AddNumberToObject(o, "steady_bubble_fraction", m->steady_bubble_fraction);
    else
        cJSON_AddNullToObject(o, "steady_bubble_fraction");
    cJSON_AddNumberToObject(o, "drift_max", m->drift_max);
    cJSON_AddNumberToObject(o, "drift_mean", m->drift_mean);
    cJSON_AddNumberToObject(o, "staleness_max", m->staleness_max);
    cJSON_AddNumberToObject(o, "staleness_mean", m->staleness_mean);
    cJSON_AddNumberToObject(o, "age_max", m->age_max);
    cJSON_AddNumberToObject(o, "age_mean", m->age_mean);
    cJSON_AddNumberToObject(o, "peak_weight_copies_max", m->peak_weight_copies_max);
    cJSON_AddNumberToObject(o, "peak_inflight_max", m->peak_inflight_max);
    cJSON_AddNumberToObject(o, "peak_memory_bytes_max", m->peak_memory_bytes_max);
    cJSON_AddNumberToObject(o, "actions", (double)m->actions);
    if (other_optimizer(model)) {
        cJSON_AddStringToObject(o, "optimizer", pp_optim_name(model->optimizer));
        cJSON_AddBoolToObject(o, "delay_correction", model->delay_correction);
    }
    cJSON *arr = cJSON_AddArrayToObject(o, "per_stage");
    for (int s = 0; s < m->info.stages; s++)
        cJSON_AddItemToArray(arr, stage_json(&m->stage[s], s, m->info.stages, model));
    cJSON *ranks = cJSON_AddArrayToObject(o, "per_rank");
    for (int r = 0; r < m->info.ranks; r++) {
        const pp_rank_metrics *p = &m->rank[r];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "rank", r);
        cJSON_AddNumberToObject(x, "busy", p->busy);
        cJSON_AddNumberToObject(x, "idle", p->idle);
        cJSON_AddNumberToObject(x, "bubble_fraction", p->bubble_fraction);
        cJSON_AddNumberToObject(x, "peak_inflight", p->peak_inflight);
        cJSON_AddNumberToObject(x, "peak_memory_bytes", p->peak_memory_bytes);
        cJSON_AddItemToArray(ranks, x);
    }
    return o;
}

int pp_report_json(FILE *f, const pp_metrics *ms, int n, int as_array,
                   const pp_model_desc *model)
{
    cJSON *root = (n == 1 && !as_array) ? metrics_json(&ms[0], model) : cJSON_CreateArray();
    if (cJSON_IsArray(root))
        for (int k = 0; k < n; k++)
            cJSON_AddItemToArray(root, metrics_json(&ms[k], model));
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text)
        return -1;
    fprintf(f, "%s\n", text);
    free(text);
    return 0;
}

/* The optimizer's columns of a CSV row: its name, the delay correction,
 * then the state bytes of every stage and their difference to AdamW's. */
static void csv_optimizer(FILE *f, int P, const pp_model_desc *model, int header)
{
    if (header) {
        fprintf(f, ",optimizer,delay_correction");
        for (int s = 0; s < P; s++)
            fprintf(f, ",optimizer_state_bytes_s%d", s);
        for (int s = 0; s < P; s++)
            fprintf(f, ",optimizer_state_vs_adamw_bytes_s%d", s);
        return;
    }
    fprintf(f, ",%s,%d", pp_optim_name(model->optimizer), model->delay_correction);
    for (int s = 0; s < P; s++)
        fprintf(f, ",%.17g", pp_optim_state_bytes(model, P, s));
    for (int s = 0; s < P; s++)
        fprintf(f, ",%.17g", pp_optim_state_bytes(model, P, s) - adamw_state_bytes(model, P, s));
}

void pp_report_csv(FILE *f, const pp_metrics *ms, int n, const pp_model_desc *model)
{
    int opt = n > 0 && other_optimizer(model);
    fprintf(f, "schedule,stages,microbatches_per_step,steps,time_unit,makespan,throughput,"
               "bubble_fraction,steady_bubble_fraction,drift_max,drift_mean,staleness_max,"
               "staleness_mean,age_max,age_mean,peak_weight_copies_max,peak_inflight_max,"
               "peak_memory_bytes_max");
    if (opt)
        csv_optimizer(f, ms[0].info.stages, model, 1);
    fprintf(f, "\n");
    for (int k = 0; k < n; k++) {
        const pp_metrics *m = &ms[k];
        fprintf(f, "%s,%d,%d,%d,%s,%.9g,%.9g,%.9g,", m->info.name, m->info.stages,
                m->info.microbatches_per_step, m->info.steps, m->unit, m->makespan,
                m->throughput_mb, m->bubble_fraction);
        if (m->has_steady)
            fprintf(f, "%.9g", m->steady_bubble_fraction);
        fprintf(f, ",%d,%.9g,%d,%.9g,%d,%.9g,%d,%d,%.9g", m->drift_max, m->drift_mean,
                m->staleness_max, m->staleness_mean, m->age_max, m->age_mean,
                m->peak_weight_copies_max, m->peak_inflight_max, m->peak_memory_bytes_max);
        if (opt)
            csv_optimizer(f, m->info.stages, model, 0);
        fprintf(f, "\n");
    }
}
