/* Validation of a schedule (DESIGN §2): structure per stage first, then a
 * zero-duration dependency walk that finds deadlocks. Both are linear in the
 * number of actions and use flat per-micro-batch arrays, so they run on
 * schedules with millions of actions. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* --- error helpers ---------------------------------------------------- */

/* "stage S action I "TEXT": <reason>" with one stage per rank, else
 * "rank R action I "1F3": <reason>" (I counts in the rank's list). */
static int act_err(pp_err *e, const pp_ir_info *in, int r, size_t i, pp_action a,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int act_err(pp_err *e, const pp_ir_info *in, int r, size_t i, pp_action a,
                   const char *fmt, ...)
{
    if (!e)
        return -1;
    char reason[384], text[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return pp_errf(e, "%s %d action %zu \"%s\": %s", pp_multi_stage(in) ? "rank" : "stage", r,
                   i, pp_action_format_in(in, a, text, sizeof text), reason);
}

/* "stage S" or "stage S (rank R)": where an error is about a stage. */
static const char *stage_name(const pp_ir_info *in, int s, char *buf, size_t n)
{
    if (pp_multi_stage(in))
        snprintf(buf, n, "stage %d (rank %d)", s, pp_stage_rank(in, s));
    else
        snprintf(buf, n, "stage %d", s);
    return buf;
}

/* --- structure -------------------------------------------------------- */

/* What one stage has seen of one micro-batch so far. */
enum { SEEN_F = 1, SEEN_B = 2, SEEN_I = 4, SEEN_W = 8 };

static int check_info(const pp_ir_info *in, pp_err *e)
{
    if (in->stages < 1)
        return pp_errf(e, "stages must be at least 1 (got %d)", in->stages);
    pp_ir_info copy = *in;
    if (pp_info_check_placement(&copy, e) < 0)
        return -1;
    if (in->microbatches_per_step < 1)
        return pp_errf(e, "microbatches_per_step must be at least 1 (got %d)",
                       in->microbatches_per_step);
    if (in->steps < 1)
        return pp_errf(e, "steps must be at least 1 (got %d)", in->steps);
    if (in->total_microbatches < 0)
        return pp_errf(e, "total_microbatches must not be negative (got %d)",
                       in->total_microbatches);
    return 0;
}

/* Checks one compute action against what its stage has seen of its
 * micro-batch, and records it. (r, i): where it is in its rank's list. */
static int check_compute(const pp_ir_info *in, int r, size_t i, pp_action a, uint8_t *seen,
                         int opts, pp_err *e)
{
    uint8_t *m = &seen[a.mb];
    if (a.sel == PP_SEL_STASH && a.op == PP_OP_F)
        return act_err(e, in, r, i, a, "the stash selector is only legal on B, I and W");
    if (a.sel == PP_SEL_VERSION && a.op != PP_OP_F)
        return act_err(e, in, r, i, a, "an explicit version is only legal on F");
    switch (a.op) {
    case PP_OP_F:
        if (*m & SEEN_F)
            return act_err(e, in, r, i, a, "second F of micro-batch %d", (int)a.mb);
        if (a.sel == PP_SEL_VERSION && (a.version < 0 || a.version > opts))
            return act_err(e, in, r, i, a,
                           "version %d does not exist yet (only 0..%d after %d OPTs)",
                           (int)a.version, opts, opts);
        *m |= SEEN_F;
        return 0;
    case PP_OP_B:
    case PP_OP_I: {
        int self = a.op == PP_OP_B ? SEEN_B : SEEN_I;
        if (*m & self)
            return act_err(e, in, r, i, a, "second %s of micro-batch %d",
                           pp_op_name((pp_op)a.op), (int)a.mb);
        if (*m & (a.op == PP_OP_B ? SEEN_I | SEEN_W : SEEN_B))
            return act_err(e, in, r, i, a, "micro-batch %d has both B and I/W on this stage",
                           (int)a.mb);
        if (!(*m & SEEN_F))
            return act_err(e, in, r, i, a, "%s before F of micro-batch %d",
                           pp_op_name((pp_op)a.op), (int)a.mb);
        *m = (uint8_t)(*m | self);
        return 0;
    }
    default: /* PP_OP_W */
        if (*m & SEEN_W)
            return act_err(e, in, r, i, a, "second W of micro-batch %d", (int)a.mb);
        if (*m & SEEN_B)
            return act_err(e, in, r, i, a, "micro-batch %d has both B and I/W on this stage",
                           (int)a.mb);
        if (!(*m & SEEN_I))
            return act_err(e, in, r, i, a, "W before I of micro-batch %d", (int)a.mb);
        *m |= SEEN_W;
        return 0;
    }
}

static int is_grad(const pp_action *a)
{
    return a->op == PP_OP_B || a->op == PP_OP_I;
}

/* What every action of a rank's list must be on its own: a known op and
 * selector, its stage on this rank, an overlapped pair of one F and one B
 * or I. Counts the rank's BARRIERs into *barriers. */
static int check_rank(const pp_schedule *sc, int r, int *barriers, pp_err *e)
{
    const pp_ir_info *in = &sc->info;
    const pp_action_list *l = &sc->rank[r];
    *barriers = 0;
    for (size_t i = 0; i < l->count; i++) {
        pp_action a = l->items[i];
        if (a.op >= PP_OP_COUNT)
            return pp_errf(e, "%s %d action %zu: unknown op %d",
                           pp_multi_stage(in) ? "rank" : "stage", r, i, (int)a.op);
        if (a.sel > PP_SEL_VERSION)
            return act_err(e, in, r, i, a, "unknown selector %d", (int)a.sel);
        if ((a.op == PP_OP_OPT || a.op == PP_OP_BARRIER) && a.sel != PP_SEL_LATEST)
            return act_err(e, in, r, i, a, "OPT and BARRIER take no selector");
        if (a.op == PP_OP_BARRIER) {
            (*barriers)++;
        } else if (a.stage >= in->stages || pp_stage_rank(in, a.stage) != r) {
            return act_err(e, in, r, i, a, "stage %d is not on this rank", (int)a.stage);
        }
        if (!a.with_next)
            continue;
        if (i + 1 == l->count)
            return act_err(e, in, r, i, a, "overlapped with nothing (the rank's last action)");
        pp_action b = l->items[i + 1];
        if (b.with_next || (a.op == PP_OP_F) + (b.op == PP_OP_F) != 1 ||
            is_grad(&a) + is_grad(&b) != 1)
            return act_err(e, in, r, i, a, "an overlapped pair is one forward and one "
                                           "backward (B or I)");
        if (a.stage == b.stage && a.mb == b.mb)
            return act_err(e, in, r, i, a, "overlapped with its own micro-batch");
    }
    return 0;
}

/* Walks one stage's actions in its rank's list; `seen` (N bytes, zeroed)
 * is scratch. */
static int check_stage(const pp_schedule *sc, int s, uint8_t *seen, pp_err *e)
{
    const pp_ir_info *in = &sc->info;
    int r = pp_stage_rank(in, s);
    const pp_action_list *l = &sc->rank[r];
    int n = in->total_microbatches, opts = 0;
    for (size_t i = 0; i < l->count; i++) {
        pp_action a = l->items[i];
        if (a.op == PP_OP_BARRIER || a.stage != s)
            continue;
        if (a.op == PP_OP_OPT) {
            opts++;
            continue;
        }
        if (a.mb < 0 || a.mb >= n)
            return act_err(e, in, r, i, a, "micro-batch %d out of range (total_microbatches %d)",
                           (int)a.mb, n);
        if (check_compute(in, r, i, a, seen, opts, e) < 0)
            return -1;
    }
    char name[48];
    for (int mb = 0; mb < n; mb++) {
        if (!(seen[mb] & SEEN_F))
            return pp_errf(e, "%s: micro-batch %d has no F", stage_name(in, s, name, sizeof name),
                           mb);
        if (seen[mb] & SEEN_I && !(seen[mb] & SEEN_W))
            return pp_errf(e, "%s: micro-batch %d has I but no W",
                           stage_name(in, s, name, sizeof name), mb);
        if (!(seen[mb] & (SEEN_B | SEEN_I)))
            return pp_errf(e, "%s: micro-batch %d has no B (nor I and W)",
                           stage_name(in, s, name, sizeof name), mb);
    }
    return 0;
}

/* Every micro-batch needs at least an F and a B per stage; catching a short
 * rank before allocating N bytes keeps memory bounded by the input when N
 * is absurd. */
static int check_sizes(const pp_schedule *sc, pp_err *e)
{
    const pp_ir_info *in = &sc->info;
    size_t per_rank = (size_t)(in->stages / in->ranks);
    size_t need = 2 * (size_t)in->total_microbatches * per_rank;
    for (int r = 0; r < in->ranks; r++)
        if (sc->rank[r].count < need) {
            if (!pp_multi_stage(in))
                return pp_errf(e,
                               "stage %d: %zu actions cannot hold an F and a B for each of %d "
                               "micro-batches",
                               r, sc->rank[r].count, in->total_microbatches);
            return pp_errf(e,
                           "rank %d: %zu actions cannot hold an F and a B for each of %d "
                           "micro-batches on each of its %zu stages",
                           r, sc->rank[r].count, in->total_microbatches, per_rank);
        }
    return 0;
}

static int check_structure(const pp_schedule *sc, pp_err *e)
{
    const pp_ir_info *in = &sc->info;
    if (check_sizes(sc, e) < 0)
        return -1;
    int first_barriers = 0;
    for (int r = 0; r < in->ranks; r++) {
        int barriers;
        if (check_rank(sc, r, &barriers, e) < 0)
            return -1;
        if (r == 0)
            first_barriers = barriers;
        else if (barriers != first_barriers)
            return pp_errf(e, "%s %d has %d BARRIERs but %s 0 has %d (all %ss must meet at "
                              "every BARRIER)",
                           pp_multi_stage(in) ? "rank" : "stage", r, barriers,
                           pp_multi_stage(in) ? "rank" : "stage", first_barriers,
                           pp_multi_stage(in) ? "rank" : "stage");
    }
    size_t n = (size_t)in->total_microbatches;
    uint8_t *seen = malloc(n ? n : 1);
    if (!seen)
        return pp_errf(e, "out of memory validating %zu micro-batches", n);
    int rc = 0;
    for (int s = 0; s < in->stages && rc == 0; s++) {
        memset(seen, 0, n);
        rc = check_stage(sc, s, seen, e);
    }
    free(seen);
    return rc;
}

/* --- deadlock walk ---------------------------------------------------- */

/* Ranks run in zero time: a rank advances while its head action's inputs
 * (both actions' of an overlapped pair) are there. A queue holds the ranks
 * that might advance; finishing an F wakes the rank of the next stage,
 * finishing a B/I the rank of the previous one, and the last arrival at a
 * BARRIER wakes everyone, so each action is looked at O(1) times. */
typedef struct {
    const pp_schedule *sc;
    const pp_ir_info *in;
    int R, S;
    size_t words;      /* 64-bit words per stage bitmap */
    uint64_t *fdone;   /* S bitmaps: F of mb done on stage s */
    uint64_t *gdone;   /* S bitmaps: B or I of mb done (gradient sent) */
    size_t *pos;       /* per-rank cursor */
    char *at_barrier;  /* rank is waiting at a BARRIER */
    int waiting;       /* number of ranks waiting at the current BARRIER */
    int *queue;        /* ring of ranks to look at */
    char *queued;
    int qhead, qlen;
} walk;

static int bit(const uint64_t *map, size_t words, int s, int mb)
{
    return (map[(size_t)s * words + (size_t)mb / 64] >> (mb % 64)) & 1;
}

static void set_bit(uint64_t *map, size_t words, int s, int mb)
{
    map[(size_t)s * words + (size_t)mb / 64] |= (uint64_t)1 << (mb % 64);
}

static void wake(walk *w, int r)
{
    if (r < 0 || r >= w->R || w->queued[r])
        return;
    w->queued[r] = 1;
    w->queue[(w->qhead + w->qlen++) % w->R] = r;
}

static int pop(walk *w)
{
    int r = w->queue[w->qhead];
    w->qhead = (w->qhead + 1) % w->R;
    w->qlen--;
    w->queued[r] = 0;
    return r;
}

/* Whether the inputs of compute action a are available. The same-stage
 * order (B after F, W after I) was checked structurally. */
static int ready(const walk *w, pp_action a)
{
    int s = a.stage;
    if (a.op == PP_OP_F)
        return s == 0 || bit(w->fdone, w->words, s - 1, a.mb);
    if (is_grad(&a))
        return s == w->S - 1 || bit(w->gdone, w->words, s + 1, a.mb);
    return 1; /* W, OPT */
}

static void finish(walk *w, pp_action a)
{
    if (a.op == PP_OP_F) {
        set_bit(w->fdone, w->words, a.stage, a.mb);
        if (a.stage + 1 < w->S)
            wake(w, pp_stage_rank(w->in, a.stage + 1));
    } else if (is_grad(&a)) {
        set_bit(w->gdone, w->words, a.stage, a.mb);
        if (a.stage > 0)
            wake(w, pp_stage_rank(w->in, a.stage - 1));
    }
}

static void release_barrier(walk *w)
{
    for (int t = 0; t < w->R; t++) {
        w->at_barrier[t] = 0;
        w->pos[t]++;
        wake(w, t);
    }
    w->waiting = 0;
}

static void run_rank(walk *w, int r)
{
    const pp_action_list *l = &w->sc->rank[r];
    while (w->pos[r] < l->count && !w->at_barrier[r]) {
        pp_action a = l->items[w->pos[r]];
        if (a.op == PP_OP_BARRIER) {
            w->at_barrier[r] = 1;
            if (++w->waiting == w->R)
                release_barrier(w);
            return;
        }
        int pair = a.with_next && w->pos[r] + 1 < l->count;
        if (!ready(w, a) || (pair && !ready(w, l->items[w->pos[r] + 1])))
            return;
        finish(w, a);
        if (pair)
            finish(w, l->items[++w->pos[r]]);
        w->pos[r]++;
    }
}

/* Finds the action (B or I) of micro-batch mb on stage s, for the message. */
static const char *grad_op_name(const walk *w, int s, int mb)
{
    const pp_action_list *l = &w->sc->rank[pp_stage_rank(w->in, s)];
    for (size_t i = 0; i < l->count; i++)
        if (l->items[i].stage == s && l->items[i].mb == mb && is_grad(&l->items[i]))
            return pp_op_name((pp_op)l->items[i].op);
    return "B";
}

/* The action of the stalled head (or of its pair) that waits. */
static pp_action waiting_action(const walk *w, int r)
{
    const pp_action_list *l = &w->sc->rank[r];
    pp_action a = l->items[w->pos[r]];
    if (ready(w, a) && a.with_next && w->pos[r] + 1 < l->count)
        return l->items[w->pos[r] + 1];
    return a;
}

/* Names the first rank stalled on a compute action (a rank waiting at a
 * BARRIER only waits for the others, so it is not the cause). */
static int report_stall(const walk *w, pp_err *e)
{
    const pp_ir_info *in = w->in;
    int r = -1;
    for (int t = 0; t < w->R && r < 0; t++)
        if (w->pos[t] < w->sc->rank[t].count && !w->at_barrier[t])
            r = t;
    if (r < 0) { /* cannot happen with equal BARRIER counts; stay safe */
        for (int t = 0; t < w->R && r < 0; t++)
            if (w->pos[t] < w->sc->rank[t].count)
                r = t;
        return act_err(e, in, r, w->pos[r], w->sc->rank[r].items[w->pos[r]],
                       "deadlock at a BARRIER");
    }
    pp_action a = waiting_action(w, r);
    char text[32];
    pp_action_format_in(in, a, text, sizeof text);
    int from = a.op == PP_OP_F ? a.stage - 1 : a.stage + 1;
    char what[16];
    if (a.op == PP_OP_F)
        snprintf(what, sizeof what, "F%d", (int)a.mb);
    else
        snprintf(what, sizeof what, "%s%d", grad_op_name(w, from, a.mb), (int)a.mb);
    if (!pp_multi_stage(in))
        return pp_errf(e, "deadlock: stage %d stalls at action %zu \"%s\" waiting for %s on "
                          "stage %d",
                       r, w->pos[r], text, what, from);
    return pp_errf(e, "deadlock: rank %d stalls at action %zu \"%s\" (stage %d, micro-batch %d) "
                      "waiting for %s on stage %d (rank %d)",
                   r, w->pos[r], text, (int)a.stage, (int)a.mb, what, from,
                   pp_stage_rank(in, from));
}

static void walk_free(walk *w)
{
    free(w->fdone);
    free(w->gdone);
    free(w->pos);
    free(w->at_barrier);
    free(w->queue);
    free(w->queued);
}

static int walk_init(walk *w, const pp_schedule *sc, pp_err *e)
{
    memset(w, 0, sizeof *w);
    w->sc = sc;
    w->in = &sc->info;
    w->R = sc->info.ranks;
    w->S = sc->info.stages;
    w->words = ((size_t)sc->info.total_microbatches + 63) / 64;
    size_t S = (size_t)w->S, R = (size_t)w->R;
    w->fdone = calloc(S * w->words + 1, sizeof *w->fdone);
    w->gdone = calloc(S * w->words + 1, sizeof *w->gdone);
    w->pos = calloc(R, sizeof *w->pos);
    w->at_barrier = calloc(R, 1);
    w->queue = calloc(R, sizeof *w->queue);
    w->queued = calloc(R, 1);
    if (!w->fdone || !w->gdone || !w->pos || !w->at_barrier || !w->queue || !w->queued) {
        walk_free(w);
        pp_errf(e, "out of memory validating %d stages", w->S);
        return -1;
    }
    return 0;
}

static int check_deadlock(const pp_schedule *sc, pp_err *e)
{
    walk w;
    if (walk_init(&w, sc, e) < 0)
        return -1;
    for (int r = 0; r < w.R; r++)
        wake(&w, r);
    while (w.qlen > 0)
        run_rank(&w, pop(&w));
    int rc = 0;
    for (int r = 0; r < w.R && rc == 0; r++)
        if (w.pos[r] < sc->rank[r].count)
            rc = report_stall(&w, e);
    walk_free(&w);
    return rc;
}

int pp_schedule_validate(const pp_schedule *s, pp_err *e)
{
    if (check_info(&s->info, e) < 0)
        return -1;
    if (!s->rank)
        return pp_errf(e, "schedule has no action lists");
    if (check_structure(s, e) < 0)
        return -1;
    return check_deadlock(s, e);
}
