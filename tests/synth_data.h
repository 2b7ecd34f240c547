/* Deterministic pseudo-text for executor tests (a pp_batch_fn): micro-batch
 * `index` gets tokens that depend only on (index, position), targets are
 * the same stream shifted by one. ctx is the pp_model_desc. */
#ifndef PP_TEST_SYNTH_DATA_H
#define PP_TEST_SYNTH_DATA_H

#include "model.h"

static int synth_batch(void *ctx, long index, int *tokens, int *targets, pp_err *e)
{
    (void)e;
    const pp_model_desc *m = ctx;
    int n = m->micro_batch * m->seq_len;
    for (int i = 0; i <= n; i++) {
        unsigned x = (unsigned)(index * 7919 + i * 31 + (i / 5) * 17);
        int tok = (int)((x * 2654435761u) >> 16) % m->vocab;
        if (i < n)
            tokens[i] = (tok + i) % m->vocab;
        if (i > 0)
            targets[i - 1] = (tok + i) % m->vocab;
    }
    return 0;
}

#endif
