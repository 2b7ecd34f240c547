/* PipeDream-2BW: 1F1B without a flush, OPT after every m-th backward on each
 * stage. Micro-batch k of step b = k/m runs its forward on version
 * max(b-1, 0) and its backward on the same, stashed, version: two weight
 * copies per stage and a gradient delay of one update.
 *
 * With --chunks V > 1 the same rule runs on Megatron's interleaved order
 * over all N micro-batches (interleaved_walk.h: stage s on rank s mod R,
 * m a multiple of R). F(s, bm) reads version b-1, which exists iff the
 * stage has run (b-1)m backwards before it, that is iff it holds at most m
 * micro-batches then. bm starts a group of R, where stage s holds I_s
 * (interleaved_walk.c), most on stage 0: I_0 = max(R, 2R-2). Hence m >= 2R-2
 * (m >= 2R from R = 3 on). Two copies still: while a stage is at version t
 * it holds only micro-batches of steps >= t (its backwards go in order), and
 * none of a step beyond t+1 (its forward would read a version not made
 * yet), so its forwards, stashes and weights are versions t-1 and t. */
#include "interleaved_walk.h"
#include "onef1b.h"
#include "registry.h"

/* The interleaved walk, with the rule below. */
static int open_chunked(const pp_gen_opts *o, const pp_1f1b_rule *rule, pp_stream **out,
                        pp_err *e)
{
    int V = o->chunks, R = o->stages, m = o->microbatches;
    pp_ir_info info;
    if (pp_interleaved_walk_info("pipedream-2bw", o, V, &info, e) < 0)
        return -1;
    if (m < 2 * R - 2)
        return pp_errf(e, "pipedream-2bw with --chunks %d needs --microbatches >= 2R-2 = %d "
                          "(got m=%d, R=%d): stage 0 holds 2R-2 micro-batches when a step's "
                          "first forward reads the previous step's update",
                       V, 2 * R - 2, m, R);
    return pp_interleaved_walk_open(&info, rule, out, e);
}

int pp_gen_pipedream_2bw(const pp_gen_opts *o, pp_stream **out, pp_err *e)
{
    /* one segment of all N micro-batches (no flush): set once N is known */
    pp_1f1b_rule rule = {.opt_every = o->microbatches, .f_prev_step = 1,
                         .b_sel = PP_SEL_STASH};
    if (o->chunks > 1)
        return open_chunked(o, &rule, out, e);
    if (o->microbatches < o->stages)
        return pp_errf(e, "pipedream-2bw needs --microbatches >= --stages (got m=%d, P=%d): "
                          "a step's forwards must start after the previous step's update "
                          "exists on every stage",
                       o->microbatches, o->stages);
    pp_ir_info info;
    if (pp_gen_info("pipedream-2bw", o->stages, o->microbatches, o->steps, &info, e) < 0)
        return -1;
    rule.segment = info.total_microbatches;
    return pp_1f1b_open(&info, &rule, out, e);
}
