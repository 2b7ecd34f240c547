#include "weights.h"

#include <stdlib.h>
#include <string.h>

static pp_weight_version *find(const pp_weight_store *ws, int version)
{
    for (int i = 0; i < ws->n; i++)
        if (ws->v[i].version == version)
            return &ws->v[i];
    return NULL;
}

static pp_weight_version *add(pp_weight_store *ws, int version, void *buf)
{
    if (ws->n == ws->cap) {
        int cap = ws->cap ? ws->cap * 2 : 4;
        pp_weight_version *v = realloc(ws->v, (size_t)cap * sizeof *v);
        if (!v)
            return NULL;
        ws->v = v;
        ws->cap = cap;
    }
    pp_weight_version *x = &ws->v[ws->n++];
    x->version = version;
    x->refs = 0;
    x->buf = buf;
    if (ws->n > ws->peak_copies)
        ws->peak_copies = ws->n;
    return x;
}

int pp_weights_init(pp_weight_store *ws, const pp_backend_ops *b, void *stage, uint64_t seed,
                    pp_err *e)
{
    memset(ws, 0, sizeof *ws);
    ws->b = b;
    ws->stage = stage;
    ws->bytes = b->nparams(stage) * sizeof(float);
    ws->pinned = -1;
    void *buf = b->alloc(stage, ws->bytes);
    if (!buf || !add(ws, 0, buf)) {
        if (buf)
            b->release(stage, buf);
        free(ws->v);
        return pp_errf(e, "out of memory for weights (%zu bytes)", ws->bytes);
    }
    b->init_weights(stage, buf, seed);
    ws->v[0].refs = 1; /* the current version */
    return 0;
}

/* A buffer nobody reads any more: kept for the next copy. */
static void retire(pp_weight_store *ws, void *buf)
{
    if (pp_spares_push(&ws->spare, buf) < 0)
        ws->b->release(ws->stage, buf);
}

void pp_weights_free(pp_weight_store *ws)
{
    for (int i = 0; i < ws->n; i++)
        ws->b->release(ws->stage, ws->v[i].buf);
    for (void *p; (p = pp_spares_pop(&ws->spare));)
        ws->b->release(ws->stage, p);
    free(ws->spare.items);
    free(ws->v);
    memset(ws, 0, sizeof *ws);
}

void *pp_weights_get(const pp_weight_store *ws, int version)
{
    pp_weight_version *x = find(ws, version);
    return x ? x->buf : NULL;
}

int pp_weights_ref(pp_weight_store *ws, int version, int delta)
{
    pp_weight_version *x = find(ws, version);
    if (!x)
        return -1;
    x->refs += delta;
    if (x->refs <= 0) {
        retire(ws, x->buf);
        *x = ws->v[--ws->n];
    }
    return 0;
}

int pp_weights_pin(pp_weight_store *ws, int version)
{
    if (version > ws->current)
        version = -1; /* not made yet: it will be the current one then */
    if (version == ws->pinned)
        return 0;
    if (version >= 0 && pp_weights_ref(ws, version, 1) < 0)
        return -1;
    if (ws->pinned >= 0)
        pp_weights_ref(ws, ws->pinned, -1);
    ws->pinned = version;
    return 0;
}

void *pp_weights_begin_update(pp_weight_store *ws, pp_err *e)
{
    pp_weight_version *cur = find(ws, ws->current);
    if (cur->refs == 1) { /* only "current": update in place */
        cur->version = ws->current + 1;
        return cur->buf;
    }
    void *buf = pp_spares_pop(&ws->spare);
    if (!buf)
        buf = ws->b->alloc(ws->stage, ws->bytes);
    if (!buf) {
        pp_errf(e, "out of memory for a weight copy (%zu bytes)", ws->bytes);
        return NULL;
    }
    /* on the stage's own queue, before the update that reads it: no host
     * wait where the backend can queue it */
    if (ws->b->copy_queued)
        ws->b->copy_queued(ws->stage, buf, cur->buf, ws->bytes);
    else
        ws->b->copy(ws->stage, buf, cur->buf, ws->bytes);
    cur->refs--; /* no longer current; still read by others */
    pp_weight_version *x = add(ws, ws->current + 1, buf);
    if (!x) {
        cur->refs++;
        retire(ws, buf);
        pp_errf(e, "out of memory");
        return NULL;
    }
    x->refs = 1;
    return buf;
}

void pp_weights_commit_update(pp_weight_store *ws)
{
    ws->current++;
}

void pp_weights_reset(pp_weight_store *ws, int current, int pinned)
{
    for (int i = 0; i < ws->n; i++)
        ws->b->release(ws->stage, ws->v[i].buf);
    ws->n = 0;
    ws->current = current;
    ws->pinned = pinned;
}

int pp_weights_adopt(pp_weight_store *ws, int version, void *buf, int refs)
{
    pp_weight_version *x = add(ws, version, buf);
    if (!x)
        return -1;
    x->refs = refs;
    return 0;
}
