#include "registry.h"

#include <stdio.h>
#include <string.h>

static const pp_generator generators[] = {
    {"gpipe", "GPipe: all forwards, all backwards, then a synchronous update per step",
     "P, m, S", 0, pp_gen_gpipe},
    {"1f1b-flush", "1F1B with a flush per step (PipeDream-Flush): no drift, bubble (P-1)/(m+P-1)",
     "P, m, S", 0, pp_gen_1f1b_flush},
    {"pipedream", "PipeDream: asynchronous 1F1B, update per micro-batch, weight stashing",
     "P, S (m = 1)", 0, pp_gen_pipedream},
    {"pipedream-2bw",
     "PipeDream-2BW: asynchronous 1F1B, two weight versions, delay one update; --chunks V: "
     "interleaved",
     "P, m >= P, S; with V = chunks (1) > 1: R = P, m >= 2R-2 a multiple of R", 1,
     pp_gen_pipedream_2bw},
    {"paci",
     "PACI: asynchronous 1F1B with local accumulation of a, drift <= ceil((P-1-s)/a); "
     "--chunks V: interleaved",
     "P, a = m, S, recompute; with V = chunks (1) > 1: R = P, m a multiple of R", 1,
     pp_gen_paci},
    {"interleaved-1f1b",
     "Interleaved 1F1B (Megatron virtual pipeline): V chunks per rank, (Vm+R-1)(F+B) a step",
     "R = P, V = chunks (2), m a multiple of R, S", 1, pp_gen_interleaved_1f1b},
    {"looped-bfs", "Looped BFS: V chunks per rank, all forwards chunk by chunk, then all backwards",
     "R = P, V = chunks (2), m, S", 1, pp_gen_looped_bfs},
    {"zb-h1", "ZB-H1: 1F1B with backward split into I and W, W's deferred into the bubbles",
     "P, m, S", 0, pp_gen_zb_h1},
    {"zbv", "ZB-V: two chunks per rank in a V, split backward, no steady bubble if F=I=W",
     "R = P, V = 2, m, S", 1, pp_gen_zbv},
    {"dualpipev", "DualPipeV (DeepSeek): two chunks per rank in a V, forward+backward overlapped",
     "R = P, V = 2, m >= 2R, S", 1, pp_gen_dualpipev},
};

#define NGEN (sizeof generators / sizeof generators[0])

const pp_generator *pp_generators(size_t *count)
{
    *count = NGEN;
    return generators;
}

const pp_generator *pp_generator_find(const char *name)
{
    for (size_t i = 0; i < NGEN; i++)
        if (strcmp(generators[i].name, name) == 0)
            return &generators[i];
    return NULL;
}

const char *pp_generator_names(void)
{
    return "gpipe, 1f1b-flush, pipedream, pipedream-2bw, paci, interleaved-1f1b, looped-bfs, "
           "zb-h1, zbv, dualpipev";
}

int pp_generate(const char *name, const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    const pp_generator *g = pp_generator_find(name);
    if (!g)
        return pp_errf(e, "unknown schedule \"%s\" (known: %s)", name, pp_generator_names());
    if (o->chunks < 0)
        return pp_errf(e, "--chunks must be at least 1 (got %d)", o->chunks);
    if (!g->chunked && o->chunks > 1) {
        char takers[256] = "";
        for (size_t i = 0; i < NGEN; i++)
            if (generators[i].chunked)
                snprintf(takers + strlen(takers), sizeof takers - strlen(takers), "%s%s",
                         takers[0] ? ", " : "", generators[i].name);
        return pp_errf(e, "%s has one stage per rank (got --chunks %d); these take chunks: %s",
                       name, o->chunks, takers);
    }
    return g->open(o, out, e);
}

int pp_generate_schedule(const char *name, const pp_gen_opts *o, pp_schedule *out,
                         pp_err *e)
{
    pp_stream *st;
    if (pp_generate(name, o, &st, e) < 0)
        return -1;
    int rc = pp_schedule_from_stream(st, out, e);
    pp_stream_free(st);
    return rc;
}
