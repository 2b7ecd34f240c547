#include "step_order.h"

#include <stdio.h>
#include <stdlib.h>

#include "onef1b.h"

int pp_gen_multi_info(const char *name, const pp_gen_opts *o, int chunks, int placement,
                      pp_ir_info *info, pp_err *e)
{
    if (pp_gen_info(name, o->stages, o->microbatches, o->steps, info, e) < 0)
        return -1;
    if ((long long)chunks * o->stages > PP_MAX_STAGES)
        return pp_errf(e, "%s: %d chunks on %d ranks make %lld stages, more than %d", name,
                       chunks, o->stages, (long long)chunks * o->stages, PP_MAX_STAGES);
    info->ranks = o->stages;
    info->stages = chunks * o->stages;
    info->placement = placement;
    if (placement != PP_PLACE_ONE) {
        char buf[16];
        snprintf(buf, sizeof buf, "%d", chunks);
        pp_info_set_param(info, "chunks", buf);
    }
    return pp_info_check_placement(info, e);
}

int pp_step_builder_init(pp_step_builder *b, const pp_ir_info *info, pp_err *e)
{
    pp_ir_info one = *info;
    one.steps = 1;
    one.total_microbatches = info->microbatches_per_step;
    b->info = *info;
    b->e = e;
    b->failed = 0;
    return pp_schedule_init(&b->step, &one, e);
}

static void add(pp_step_builder *b, pp_op op, int stage, int mb, int with_next)
{
    if (b->failed)
        return;
    pp_action a = pp_act_on(op, stage, mb);
    a.with_next = (uint8_t)(with_next & 1);
    if (pp_schedule_push(&b->step, pp_stage_rank(&b->step.info, stage), a, b->e) < 0)
        b->failed = 1;
}

void pp_step_add(pp_step_builder *b, pp_op op, int stage, int mb)
{
    add(b, op, stage, mb, 0);
}

void pp_step_add_overlapped(pp_step_builder *b, pp_op op, int stage, int mb)
{
    add(b, op, stage, mb, 1);
}

/* --- the stream ------------------------------------------------------- */

typedef struct {
    pp_schedule one; /* one step per rank, OPTs included */
    size_t *pos;     /* per rank: next action in its step */
    int *step;       /* per rank: the step it is in */
} step_state;

static int step_next(pp_stream *st, int rank, pp_action *out)
{
    step_state *s = st->state;
    if (rank < 0 || rank >= st->info.ranks || s->step[rank] >= st->info.steps)
        return 0;
    const pp_action_list *l = &s->one.rank[rank];
    *out = l->items[s->pos[rank]];
    if (out->op != PP_OP_OPT)
        out->mb += s->step[rank] * st->info.microbatches_per_step;
    if (++s->pos[rank] == l->count) {
        s->pos[rank] = 0;
        s->step[rank]++;
    }
    return 1;
}

static void step_destroy(pp_stream *st)
{
    step_state *s = st->state;
    pp_schedule_free(&s->one);
    free(s->pos);
    free(s->step);
    free(s);
    free(st);
}

int pp_step_open(pp_step_builder *b, pp_stream **out, pp_err *e)
{
    /* Each rank ends its step with the OPTs of its stages, in model order
     * (as PyTorch's CSV of the step imports, and as its export wants). */
    for (int s = 0; s < b->step.info.stages; s++)
        add(b, PP_OP_OPT, s, -1, 0);
    int R = b->info.ranks;
    pp_stream *st = calloc(1, sizeof *st);
    step_state *s = calloc(1, sizeof *s);
    size_t *pos = calloc((size_t)R, sizeof *pos);
    int *step = calloc((size_t)R, sizeof *step);
    if (b->failed || !st || !s || !pos || !step) {
        pp_schedule_free(&b->step);
        free(st);
        free(s);
        free(pos);
        free(step);
        return b->failed ? -1 : pp_errf(e, "out of memory");
    }
    s->one = b->step;
    s->pos = pos;
    s->step = step;
    st->info = b->info;
    st->next = step_next;
    st->destroy = step_destroy;
    st->state = s;
    *out = st;
    return 0;
}
