/* Metrics of a recorded timeline (the executor's log): its actions fed to
 * the accumulator of metrics.c in start-time order, with the hints a
 * stream would give (stash, next forward's version) read off the lists. */
#include <stdlib.h>

#include "metrics.h"

/* Whether the backward (or input-gradient half) of mb on this stage reads
 * the stash. Linear, but only used on recorded runs, which are small. */
static int backward_stashes(const pp_timed_list *l, int mb)
{
    for (size_t i = 0; i < l->count; i++) {
        const pp_action *a = &l->items[i].act;
        if (a->mb == mb && (a->op == PP_OP_B || a->op == PP_OP_I))
            return a->sel == PP_SEL_STASH;
    }
    return 0;
}

/* For each action, the version the next forward after it names, or -1. */
static int32_t *next_f_versions(const pp_timed_list *l)
{
    int32_t *v = malloc((l->count ? l->count : 1) * sizeof *v);
    if (!v)
        return NULL;
    int32_t next = -1;
    for (size_t i = l->count; i-- > 0;) {
        v[i] = next;
        const pp_action *a = &l->items[i].act;
        if (a->op == PP_OP_F)
            next = a->sel == PP_SEL_VERSION ? a->version : -1;
    }
    return v;
}

/* Order of feeding: by start time, ties kept in each stage's own order. */
typedef struct {
    double start;
    int stage;
    size_t idx;
} feed_item;

static int feed_cmp(const void *x, const void *y)
{
    const feed_item *a = x, *b = y;
    if (a->start != b->start)
        return a->start < b->start ? -1 : 1;
    if (a->stage != b->stage)
        return a->stage < b->stage ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

int pp_metrics_from_timeline(const pp_timeline *t, const pp_model_desc *model, int recompute,
                             pp_timeline *mem_out, pp_metrics *out, pp_err *e)
{
    size_t n = 0;
    for (int s = 0; s < t->info.stages; s++)
        n += t->stage[s].count;
    feed_item *items = malloc((n ? n : 1) * sizeof *items);
    if (!items)
        return pp_errf(e, "out of memory");
    size_t k = 0;
    for (int s = 0; s < t->info.stages; s++)
        for (size_t i = 0; i < t->stage[s].count; i++)
            items[k++] = (feed_item){t->stage[s].items[i].start, s, i};
    qsort(items, n, sizeof *items, feed_cmp);
    int32_t **next_fv = calloc((size_t)t->info.stages, sizeof *next_fv);
    for (int s = 0; next_fv && s < t->info.stages; s++)
        next_fv[s] = next_f_versions(&t->stage[s]);
    pp_metrics_acc acc;
    int rc = pp_acc_init(&acc, &t->info, model, recompute, mem_out, e);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        pp_timed_action ta = t->stage[items[i].stage].items[items[i].idx];
        if (ta.act.op == PP_OP_F && backward_stashes(&t->stage[items[i].stage], ta.act.mb))
            ta.flags |= PP_TA_STASH;
        ta.next_f_version = next_fv && next_fv[items[i].stage] ? next_fv[items[i].stage][items[i].idx] : -1;
        rc = pp_acc_action(&acc, items[i].stage, &ta, e);
    }
    if (rc == 0)
        rc = pp_acc_finish(&acc, out, e);
    if (rc == 0)
        snprintf(out->unit, sizeof out->unit, "%s", t->unit);
    pp_acc_free(&acc);
    for (int s = 0; next_fv && s < t->info.stages; s++)
        free(next_fv[s]);
    free(next_fv);
    free(items);
    return rc;
}
