/* GPipe: per step, every forward in order, then every backward, then OPT.
 * Peak activations held: all m micro-batches of a step. */
#include <stdlib.h>

#include "onef1b.h"
#include "registry.h"

typedef struct {
    int pos; /* position inside the current step: 0..2m (2m = OPT) */
    int step;
} gpipe_cursor;

static int gpipe_next(pp_stream *st, int s, pp_action *out)
{
    gpipe_cursor *c = (gpipe_cursor *)st->state + s;
    int m = st->info.microbatches_per_step;
    if (c->step >= st->info.steps)
        return 0;
    int base = c->step * m;
    if (c->pos < m)
        *out = pp_act(PP_OP_F, base + c->pos);
    else if (c->pos < 2 * m)
        *out = pp_act(PP_OP_B, base + c->pos - m);
    else
        *out = pp_act(PP_OP_OPT, -1);
    if (++c->pos > 2 * m) {
        c->pos = 0;
        c->step++;
    }
    return 1;
}

static void gpipe_destroy(pp_stream *st)
{
    free(st->state);
    free(st);
}

int pp_gen_gpipe(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    pp_ir_info info;
    if (pp_gen_info("gpipe", o->stages, o->microbatches, o->steps, &info, e) < 0)
        return -1;
    pp_stream *st = calloc(1, sizeof *st);
    gpipe_cursor *cur = calloc((size_t)info.stages, sizeof *cur);
    if (!st || !cur) {
        free(st);
        free(cur);
        return pp_errf(e, "out of memory");
    }
    st->info = info;
    st->next = gpipe_next;
    st->destroy = gpipe_destroy;
    st->state = cur;
    *out = st;
    return 0;
}
