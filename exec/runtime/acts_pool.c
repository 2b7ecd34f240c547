/* A stage's activation buffers, allocated once. A micro-batch takes one at
 * its F and gives it back after its W (or B); the most the stage ever holds
 * at a time follows from its action list, so the pool is sized before the
 * first action and the loop allocates nothing. (Allocating ~50 MB per
 * micro-batch and freeing it again cost 5-15% of the CPU backend's time in
 * page faults; on a GPU, an allocation and a memset inside the measured
 * forward.) Buffers are reused as they are: the backends overwrite every
 * activation before reading it. */
#include <stdlib.h>

#include "runtime_private.h"

/* The most micro-batches the stage's actions hold at once: F takes a
 * buffer, B or W returns it. */
static int peak_in_flight(const pp_action_list *l)
{
    int held = 0, peak = 0;
    for (size_t i = 0; i < l->count; i++) {
        int op = l->items[i].op;
        if (op == PP_OP_F && ++held > peak)
            peak = held;
        else if (op == PP_OP_B || op == PP_OP_W)
            held--;
    }
    return peak;
}

int pp_acts_reserve(stage_rt *s, pp_err *e)
{
    const pp_backend_ops *b = s->r->cfg->backend;
    int want = peak_in_flight(&s->r->cfg->ir->stage[s->s]);
    for (int mb = 0; mb < s->r->N; mb++) /* restored from a checkpoint */
        want -= s->acts[mb] != NULL;
    size_t bytes = b->acts_bytes(s->bk);
    for (int i = 0; i < want; i++) {
        void *p = b->alloc(s->bk, bytes);
        if (!p || pp_spares_push(&s->free_acts, p) < 0) {
            if (p)
                b->release(s->bk, p);
            return pp_errf(e, "out of memory for the activations of %d micro-batches in flight "
                              "(%.1f MB each) on stage %d", want, bytes / 1e6, s->s);
        }
    }
    return 0;
}

void *pp_acts_get(stage_rt *s)
{
    void *p = pp_spares_pop(&s->free_acts);
    if (p)
        return p;
    const pp_backend_ops *b = s->r->cfg->backend;
    return b->alloc(s->bk, b->acts_bytes(s->bk));
}

void pp_acts_put(stage_rt *s, void *buf)
{
    if (pp_spares_push(&s->free_acts, buf) < 0) /* no room to keep it: let it go */
        s->r->cfg->backend->release(s->bk, buf);
}

void pp_acts_free(stage_rt *s)
{
    for (void *p; (p = pp_spares_pop(&s->free_acts));)
        s->r->cfg->backend->release(s->bk, p);
    free(s->free_acts.items);
    s->free_acts = (pp_spares){0};
}
