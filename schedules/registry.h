/* Schedule generators behind one registry: name -> generator, one-line
 * description and the parameters it reads (DESIGN §3). Every generator
 * yields a pp_stream, so a simulation never has to hold the whole IR. */
#ifndef PP_REGISTRY_H
#define PP_REGISTRY_H

#include <stddef.h>

#include "ir.h"

typedef struct {
    int stages;       /* P, or R (ranks) for the generators with chunks */
    int microbatches; /* m per step (PACI's accumulation factor a) */
    int steps;        /* S */
    int recompute;    /* PACI: store only stage inputs, recompute in backward */
    int chunks;       /* V stages per rank (R*V stages) where a generator takes it
                         (chunked below); 0 = its default: 2 for interleaved-1f1b
                         and looped-bfs, 1 for paci and pipedream-2bw */
} pp_gen_opts;

typedef struct {
    const char *name;
    const char *description;
    const char *parameters; /* for `ppsim list` */
    int chunked;            /* reads pp_gen_opts.chunks (else one stage per rank) */
    int (*open)(const pp_gen_opts *o, pp_stream **out, pp_err *e);
} pp_generator;

/* All generators, in a fixed order. */
const pp_generator *pp_generators(size_t *count);
const pp_generator *pp_generator_find(const char *name);
/* "gpipe, 1f1b-flush, ..." for messages. */
const char *pp_generator_names(void);

/* Opens the named generator; errors name an unknown schedule or a bad
 * option (for example PipeDream-2BW with m < P, saying why, or chunks for
 * a schedule with one stage per rank). */
int pp_generate(const char *name, const pp_gen_opts *o, pp_stream **out, pp_err *e);
/* The same, drained into a whole schedule. */
int pp_generate_schedule(const char *name, const pp_gen_opts *o, pp_schedule *out,
                         pp_err *e);

/* Generators (one file each). */
int pp_gen_gpipe(const pp_gen_opts *o, pp_stream **out, pp_err *e);
int pp_gen_1f1b_flush(const pp_gen_opts *o, pp_stream **out, pp_err *e);
int pp_gen_pipedream(const pp_gen_opts *o, pp_stream **out, pp_err *e);
int pp_gen_pipedream_2bw(const pp_gen_opts *o, pp_stream **out, pp_err *e);
int pp_gen_paci(const pp_gen_opts *o, pp_stream **out, pp_err *e);
/* Synchronous schedules with several stages per rank or a split backward
 * (schedules/step_order.h): o->stages is the number of ranks R. */
int pp_gen_interleaved_1f1b(const pp_gen_opts *o, pp_stream **out, pp_err *e);
int pp_gen_looped_bfs(const pp_gen_opts *o, pp_stream **out, pp_err *e);
int pp_gen_zb_h1(const pp_gen_opts *o, pp_stream **out, pp_err *e);
int pp_gen_zbv(const pp_gen_opts *o, pp_stream **out, pp_err *e);
int pp_gen_dualpipev(const pp_gen_opts *o, pp_stream **out, pp_err *e);

#endif
