/* The interleaved walk (interleaved_walk.h). R ranks, V chunks, P = VR
 * stages; stage s = cR + r is chunk c of rank r; N = mS micro-batches, a
 * multiple of R.
 *
 * Order. Rank r's j-th forward is chunk (j/R) mod V of micro-batch
 * (j/P)R + j mod R, its j-th backward the same with chunk V-1-(j/R mod V)
 * (interleaved_1f1b.c's step with m = N). It runs W_r = (V-1)R + 2(R-1-r)
 * warm-up forwards, then one F and one B while forwards remain, then its
 * last backwards; so before its j-th forward it has run max(0, j - W_r)
 * backwards and it holds at most W_r + 1 micro-batches over its chunks.
 * Each stage runs its forwards, and its backwards, in micro-batch order.
 *
 * Micro-batches in flight on a stage. Let k = gR + i (0 <= i < R). F(s, k)
 * is the rank's forward j = gP + cR + i; B(s, k') of k' = g'R + i' is its
 * backward j' = g'P + (V-1-c)R + i'. So k' < k is in flight (forwarded,
 * not yet backwarded) at F(s, k) iff j' >= j - W_r, that is iff
 *     (g - g')P <= T_s + i' - i,   T_s = 2(P-1-s)
 * (since (V-1-c)R - cR + W_r = T_s). At the first micro-batch of a group
 * (i = 0) those of group g - d, d >= 1, with i' >= dP - T_s count:
 *     I_s = clamp(T_s + R - P, 0, R) + clamp(T_s + R - 2P, 0, R)
 * (d >= 3 gives none, as T_s < 2P), exactly so from g = 2 on and fewer
 * before, where the groups g - d < 0 do not exist. I_s <= max(R, 2R-2),
 * and I_s = 0 from s = (P+R-2)/2 up. Taking the same count at every i, stage s
 * holds at most cap_s = min(T_s + 1, R) + clamp(T_s + 1 - P, 0, R)
 * micro-batches (2R on the first stages, 1 on the last; 1F1B's one chunk
 * per rank holds P - s). W_r reaches VN only when N = R, on ranks
 * r <= (R-2)/2: they run every forward first and hold at most R <= cap_s. */
#include "interleaved_walk.h"

#include <limits.h>
#include <stdlib.h>

#include "step_order.h"

typedef struct {
    int f, b;        /* forwards and backwards yielded */
    int warm;        /* W_r */
    int pending_opt; /* the stage whose OPT comes next, or -1 */
} rank_cursor;

typedef struct {
    pp_1f1b_rule rule;
    int R, V, N;
    rank_cursor *rk;
    int *bs_since_opt; /* per stage */
} walk_state;

int pp_interleaved_walk_info(const char *name, const pp_gen_opts *o, int chunks,
                             pp_ir_info *info, pp_err *e)
{
    int R = o->stages, m = o->microbatches;
    if (R >= 1 && m >= 1 && m % R != 0)
        return pp_errf(e, "%s with --chunks %d needs --microbatches to be a multiple of "
                          "--stages (got m=%d, R=%d): micro-batches go through the chunks in "
                          "groups of R",
                       name, chunks, m, R);
    if (pp_gen_multi_info(name, o, chunks, PP_PLACE_LOOPED, info, e) < 0)
        return -1;
    if ((long long)chunks * info->total_microbatches > INT_MAX)
        return pp_errf(e, "%s: %d chunks x %d micro-batches is too many", name, chunks,
                       info->total_microbatches);
    return 0;
}

/* Micro-batch of the rank's j-th forward or backward (the same for both). */
static int mb_of(const walk_state *w, int j)
{
    return j / (w->R * w->V) * w->R + j % w->R;
}

static pp_action forward(const walk_state *w, int stage, int mb, int m)
{
    pp_action a = pp_1f1b_forward(&w->rule, mb, m);
    a.stage = (uint16_t)stage;
    return a;
}

static int walk_next(pp_stream *st, int r, pp_action *out)
{
    walk_state *w = st->state;
    rank_cursor *c = &w->rk[r];
    int R = w->R, V = w->V, total = V * w->N;

    if (c->pending_opt >= 0) {
        *out = pp_act_on(PP_OP_OPT, c->pending_opt, -1);
        c->pending_opt = -1;
        return 1;
    }
    if (c->b >= total)
        return 0;
    if (c->f < total && (c->f < c->warm || c->f - c->warm <= c->b)) {
        int chunk = c->f / R % V;
        *out = forward(w, chunk * R + r, mb_of(w, c->f), st->info.microbatches_per_step);
        c->f++;
        return 1;
    }
    int stage = (V - 1 - c->b / R % V) * R + r, mb = mb_of(w, c->b++);
    *out = pp_act_on(PP_OP_B, stage, mb);
    out->sel = (uint8_t)w->rule.b_sel;
    if (++w->bs_since_opt[stage] == w->rule.opt_every || mb == w->N - 1) {
        w->bs_since_opt[stage] = 0;
        c->pending_opt = stage;
    }
    return 1;
}

/* The chunk's forwards among the rank's first f come in runs of R, one run
 * per group of P. */
static int walk_next_f_version(pp_stream *st, int stage)
{
    walk_state *w = st->state;
    int R = w->R, P = R * w->V, f = w->rk[stage % R].f;
    int into = f % P - stage / R * R;
    int mb = f / P * R + (into < 0 ? 0 : into > R ? R : into);
    if (mb >= w->N)
        return -1;
    return forward(w, stage, mb, st->info.microbatches_per_step).version;
}

static void walk_destroy(pp_stream *st)
{
    walk_state *w = st->state;
    free(w->rk);
    free(w->bs_since_opt);
    free(w);
    free(st);
}

int pp_interleaved_walk_open(const pp_ir_info *info, const pp_1f1b_rule *rule,
                             pp_stream **out, pp_err *e)
{
    int R = info->ranks, V = info->stages / info->ranks;
    pp_stream *st = calloc(1, sizeof *st);
    walk_state *w = calloc(1, sizeof *w);
    rank_cursor *rk = calloc((size_t)R, sizeof *rk);
    int *bs = calloc((size_t)info->stages, sizeof *bs);
    if (!st || !w || !rk || !bs) {
        free(st);
        free(w);
        free(rk);
        free(bs);
        return pp_errf(e, "out of memory");
    }
    w->rule = *rule;
    w->R = R;
    w->V = V;
    w->N = info->total_microbatches;
    for (int r = 0; r < R; r++) {
        int warm = (V - 1) * R + 2 * (R - 1 - r);
        rk[r].warm = warm < V * w->N ? warm : V * w->N;
        rk[r].pending_opt = -1;
    }
    w->rk = rk;
    w->bs_since_opt = bs;
    st->info = *info;
    st->next = walk_next;
    st->destroy = walk_destroy;
    /* hints only where they say something, as in the one-chunk walk */
    st->stashes = rule->b_sel == PP_SEL_STASH ? pp_1f1b_stashes : NULL;
    st->next_f_version = rule->f_prev_step ? walk_next_f_version : NULL;
    st->state = w;
    *out = st;
    return 0;
}
