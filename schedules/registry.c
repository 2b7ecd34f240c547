#include "registry.h"

#include <string.h>

static const pp_generator generators[] = {
    {"gpipe", "GPipe: all forwards, all backwards, then a synchronous update per step",
     "P, m, S", pp_gen_gpipe},
    {"1f1b-flush", "1F1B with a flush per step (PipeDream-Flush): no drift, bubble (P-1)/(m+P-1)",
     "P, m, S", pp_gen_1f1b_flush},
    {"pipedream", "PipeDream: asynchronous 1F1B, update per micro-batch, weight stashing",
     "P, S (m = 1)", pp_gen_pipedream},
    {"pipedream-2bw", "PipeDream-2BW: asynchronous 1F1B, two weight versions, delay one update",
     "P, m >= P, S", pp_gen_pipedream_2bw},
    {"paci", "PACI: asynchronous 1F1B with local accumulation of a, drift <= ceil((P-1-s)/a)",
     "P, a = m, S, recompute", pp_gen_paci},
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
    return "gpipe, 1f1b-flush, pipedream, pipedream-2bw, paci";
}

int pp_generate(const char *name, const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    const pp_generator *g = pp_generator_find(name);
    if (!g)
        return pp_errf(e, "unknown schedule \"%s\" (known: %s)", name, pp_generator_names());
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
