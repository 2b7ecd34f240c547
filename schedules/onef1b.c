#include "onef1b.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int f_next, b_next;   /* next micro-batch to forward / backward */
    int seg_start;        /* first micro-batch of the current segment */
    int bs_since_opt;
    int pending_opt;
} stage_cursor;

typedef struct {
    pp_1f1b_rule rule;
    stage_cursor *cur;
} walk_state;

int pp_gen_info(const char *name, int stages, int m, int steps, pp_ir_info *info,
                pp_err *e)
{
    if (stages < 1)
        return pp_errf(e, "--stages must be at least 1 (got %d)", stages);
    if (m < 1)
        return pp_errf(e, "--microbatches must be at least 1 (got %d)", m);
    if (steps < 1)
        return pp_errf(e, "--steps must be at least 1 (got %d)", steps);
    if ((long long)m * steps > INT_MAX / 2)
        return pp_errf(e, "%d micro-batches x %d steps is too many", m, steps);
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", name);
    info->stages = info->ranks = stages; /* one stage per rank */
    info->microbatches_per_step = m;
    info->steps = steps;
    info->total_microbatches = m * steps;
    return 0;
}

pp_action pp_1f1b_forward(const pp_1f1b_rule *rule, int mb, int m)
{
    pp_action a = pp_act(PP_OP_F, mb);
    if (rule->f_prev_step) {
        int b = mb / m;
        a.sel = PP_SEL_VERSION;
        a.version = b > 0 ? b - 1 : 0;
    }
    return a;
}

static int walk_next(pp_stream *st, int s, pp_action *out)
{
    walk_state *w = st->state;
    stage_cursor *c = &w->cur[s];
    int N = st->info.total_microbatches, P = st->info.stages;

    if (c->pending_opt) {
        c->pending_opt = 0;
        *out = pp_act(PP_OP_OPT, -1);
        return 1;
    }
    if (c->b_next >= N)
        return 0;
    int seg_end = c->seg_start + w->rule.segment;
    if (seg_end > N)
        seg_end = N;
    int len = seg_end - c->seg_start;
    int warm = P - s - 1 < len ? P - s - 1 : len;
    int fs = c->f_next - c->seg_start, bs = c->b_next - c->seg_start;

    /* After warm-up, F when the forwards beyond warm-up equal the backwards. */
    if (fs < len && (fs < warm || fs - warm <= bs)) {
        *out = pp_1f1b_forward(&w->rule, c->f_next++, st->info.microbatches_per_step);
        return 1;
    }
    *out = pp_act(PP_OP_B, c->b_next++);
    out->sel = (uint8_t)w->rule.b_sel;
    if (++c->bs_since_opt == w->rule.opt_every || c->b_next == N) {
        c->bs_since_opt = 0;
        c->pending_opt = 1;
    }
    if (c->b_next == seg_end)
        c->seg_start = seg_end;
    return 1;
}

int pp_1f1b_stashes(pp_stream *st, int stage, int mb)
{
    (void)st;
    (void)stage;
    (void)mb;
    return 1; /* installed only for rules whose backwards read the stash */
}

static int walk_next_f_version(pp_stream *st, int stage)
{
    walk_state *w = st->state;
    const stage_cursor *c = &w->cur[stage];
    if (!w->rule.f_prev_step || c->f_next >= st->info.total_microbatches)
        return -1;
    return pp_1f1b_forward(&w->rule, c->f_next, st->info.microbatches_per_step).version;
}

static void walk_destroy(pp_stream *st)
{
    walk_state *w = st->state;
    free(w->cur);
    free(w);
    free(st);
}

int pp_1f1b_open(const pp_ir_info *info, const pp_1f1b_rule *rule, pp_stream **out,
                 pp_err *e)
{
    pp_stream *st = calloc(1, sizeof *st);
    walk_state *w = calloc(1, sizeof *w);
    stage_cursor *cur = calloc((size_t)info->stages, sizeof *cur);
    if (!st || !w || !cur) {
        free(st);
        free(w);
        free(cur);
        return pp_errf(e, "out of memory");
    }
    w->rule = *rule;
    w->cur = cur;
    st->info = *info;
    st->next = walk_next;
    st->destroy = walk_destroy;
    /* hints only where they say something: they cost a call per action */
    st->stashes = rule->b_sel == PP_SEL_STASH ? pp_1f1b_stashes : NULL;
    st->next_f_version = rule->f_prev_step ? walk_next_f_version : NULL;
    st->state = w;
    *out = st;
    return 0;
}
