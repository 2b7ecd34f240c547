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

int pp_acts_reserve(stage_rt *s, pp_err *e)
{
    const pp_backend_ops *b = s->r->cfg->backend;
    /* the most micro-batches the stage's actions hold at once (F takes a
     * buffer, B or W returns it), less those a resume restored */
    int want = s->r->plan.peak_held[s->s] - (int)s->flying.n;
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
