/* Validation of a schedule (DESIGN §2): structure per stage first, then a
 * zero-duration dependency walk that finds deadlocks. Both are linear in the
 * number of actions and use flat per-micro-batch arrays, so they run on
 * schedules with millions of actions. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* --- error helpers ---------------------------------------------------- */

/* "stage S action I "TEXT": <reason>" */
static int act_err(pp_err *e, int s, size_t i, pp_action a, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int act_err(pp_err *e, int s, size_t i, pp_action a, const char *fmt, ...)
{
    if (!e)
        return -1;
    char reason[384], text[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return pp_errf(e, "stage %d action %zu \"%s\": %s", s, i,
                   pp_action_format(a, text, sizeof text), reason);
}

/* --- structure -------------------------------------------------------- */

/* What one stage has seen of one micro-batch so far. */
enum { SEEN_F = 1, SEEN_B = 2, SEEN_I = 4, SEEN_W = 8 };

static int check_info(const pp_ir_info *in, pp_err *e)
{
    if (in->stages < 1)
        return pp_errf(e, "stages must be at least 1 (got %d)", in->stages);
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
 * micro-batch, and records it. */
static int check_compute(int s, size_t i, pp_action a, uint8_t *seen, int opts, pp_err *e)
{
    uint8_t *m = &seen[a.mb];
    if (a.sel == PP_SEL_STASH && a.op == PP_OP_F)
        return act_err(e, s, i, a, "the stash selector is only legal on B, I and W");
    if (a.sel == PP_SEL_VERSION && a.op != PP_OP_F)
        return act_err(e, s, i, a, "an explicit version is only legal on F");
    switch (a.op) {
    case PP_OP_F:
        if (*m & SEEN_F)
            return act_err(e, s, i, a, "second F of micro-batch %d", (int)a.mb);
        if (a.sel == PP_SEL_VERSION && (a.version < 0 || a.version > opts))
            return act_err(e, s, i, a,
                           "version %d does not exist yet (only 0..%d after %d OPTs)",
                           (int)a.version, opts, opts);
        *m |= SEEN_F;
        return 0;
    case PP_OP_B:
    case PP_OP_I: {
        int self = a.op == PP_OP_B ? SEEN_B : SEEN_I;
        if (*m & self)
            return act_err(e, s, i, a, "second %s of micro-batch %d",
                           pp_op_name((pp_op)a.op), (int)a.mb);
        if (*m & (a.op == PP_OP_B ? SEEN_I | SEEN_W : SEEN_B))
            return act_err(e, s, i, a, "micro-batch %d has both B and I/W on this stage",
                           (int)a.mb);
        if (!(*m & SEEN_F))
            return act_err(e, s, i, a, "%s before F of micro-batch %d",
                           pp_op_name((pp_op)a.op), (int)a.mb);
        *m = (uint8_t)(*m | self);
        return 0;
    }
    default: /* PP_OP_W */
        if (*m & SEEN_W)
            return act_err(e, s, i, a, "second W of micro-batch %d", (int)a.mb);
        if (*m & SEEN_B)
            return act_err(e, s, i, a, "micro-batch %d has both B and I/W on this stage",
                           (int)a.mb);
        if (!(*m & SEEN_I))
            return act_err(e, s, i, a, "W before I of micro-batch %d", (int)a.mb);
        *m |= SEEN_W;
        return 0;
    }
}

/* Walks one stage's list; `seen` (N bytes, zeroed) is scratch. Counts the
 * stage's BARRIERs into *barriers. */
static int check_stage(const pp_schedule *sc, int s, uint8_t *seen, int *barriers, pp_err *e)
{
    const pp_action_list *l = &sc->stage[s];
    int n = sc->info.total_microbatches, opts = 0;
    *barriers = 0;
    for (size_t i = 0; i < l->count; i++) {
        pp_action a = l->items[i];
        if (a.op >= PP_OP_COUNT)
            return pp_errf(e, "stage %d action %zu: unknown op %d", s, i, (int)a.op);
        if (a.sel > PP_SEL_VERSION)
            return act_err(e, s, i, a, "unknown selector %d", (int)a.sel);
        if (a.op == PP_OP_OPT || a.op == PP_OP_BARRIER) {
            if (a.sel != PP_SEL_LATEST)
                return act_err(e, s, i, a, "OPT and BARRIER take no selector");
            if (a.op == PP_OP_OPT)
                opts++;
            else
                (*barriers)++;
            continue;
        }
        if (a.mb < 0 || a.mb >= n)
            return act_err(e, s, i, a, "micro-batch %d out of range (total_microbatches %d)",
                           (int)a.mb, n);
        if (check_compute(s, i, a, seen, opts, e) < 0)
            return -1;
    }
    for (int mb = 0; mb < n; mb++) {
        if (!(seen[mb] & SEEN_F))
            return pp_errf(e, "stage %d: micro-batch %d has no F", s, mb);
        if (seen[mb] & SEEN_I && !(seen[mb] & SEEN_W))
            return pp_errf(e, "stage %d: micro-batch %d has I but no W", s, mb);
        if (!(seen[mb] & (SEEN_B | SEEN_I)))
            return pp_errf(e, "stage %d: micro-batch %d has no B (nor I and W)", s, mb);
    }
    return 0;
}

/* Every micro-batch needs at least an F and a B per stage; catching a short
 * stage before allocating N bytes keeps memory bounded by the input when N
 * is absurd. */
static int check_sizes(const pp_schedule *sc, pp_err *e)
{
    size_t need = 2 * (size_t)sc->info.total_microbatches;
    for (int s = 0; s < sc->info.stages; s++)
        if (sc->stage[s].count < need)
            return pp_errf(e,
                           "stage %d: %zu actions cannot hold an F and a B for each of %d "
                           "micro-batches",
                           s, sc->stage[s].count, sc->info.total_microbatches);
    return 0;
}

static int check_structure(const pp_schedule *sc, pp_err *e)
{
    if (check_sizes(sc, e) < 0)
        return -1;
    size_t n = (size_t)sc->info.total_microbatches;
    uint8_t *seen = malloc(n ? n : 1);
    if (!seen)
        return pp_errf(e, "out of memory validating %zu micro-batches", n);
    int rc = 0, first_barriers = 0;
    for (int s = 0; s < sc->info.stages && rc == 0; s++) {
        int barriers;
        memset(seen, 0, n);
        rc = check_stage(sc, s, seen, &barriers, e);
        if (rc == 0 && s == 0)
            first_barriers = barriers;
        else if (rc == 0 && barriers != first_barriers)
            rc = pp_errf(e, "stage %d has %d BARRIERs but stage 0 has %d (all stages must "
                            "meet at every BARRIER)",
                         s, barriers, first_barriers);
    }
    free(seen);
    return rc;
}

/* --- deadlock walk ---------------------------------------------------- */

/* Stages run in zero time: a stage advances while its head action's inputs
 * are there. A queue holds the stages that might advance; finishing an F
 * wakes the next stage, finishing a B/I the previous one, and the last
 * arrival at a BARRIER wakes everyone, so each action is looked at O(1)
 * times. */
typedef struct {
    const pp_schedule *sc;
    int P;
    size_t words;      /* 64-bit words per stage bitmap */
    uint64_t *fdone;   /* P bitmaps: F of mb done on stage s */
    uint64_t *gdone;   /* P bitmaps: B or I of mb done (gradient sent) */
    size_t *pos;       /* per-stage cursor */
    char *at_barrier;  /* stage is waiting at a BARRIER */
    int waiting;       /* number of stages waiting at the current BARRIER */
    int *queue;        /* ring of stages to look at */
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

static void wake(walk *w, int s)
{
    if (s < 0 || s >= w->P || w->queued[s])
        return;
    w->queued[s] = 1;
    w->queue[(w->qhead + w->qlen++) % w->P] = s;
}

static int pop(walk *w)
{
    int s = w->queue[w->qhead];
    w->qhead = (w->qhead + 1) % w->P;
    w->qlen--;
    w->queued[s] = 0;
    return s;
}

/* Whether the inputs of stage s's compute action a are available. The
 * same-stage order (B after F, W after I) was checked structurally. */
static int ready(const walk *w, int s, pp_action a)
{
    if (a.op == PP_OP_F)
        return s == 0 || bit(w->fdone, w->words, s - 1, a.mb);
    if (a.op == PP_OP_B || a.op == PP_OP_I)
        return s == w->P - 1 || bit(w->gdone, w->words, s + 1, a.mb);
    return 1; /* W, OPT */
}

static void release_barrier(walk *w)
{
    for (int t = 0; t < w->P; t++) {
        w->at_barrier[t] = 0;
        w->pos[t]++;
        wake(w, t);
    }
    w->waiting = 0;
}

static void run_stage(walk *w, int s)
{
    const pp_action_list *l = &w->sc->stage[s];
    while (w->pos[s] < l->count && !w->at_barrier[s]) {
        pp_action a = l->items[w->pos[s]];
        if (a.op == PP_OP_BARRIER) {
            w->at_barrier[s] = 1;
            if (++w->waiting == w->P)
                release_barrier(w);
            return;
        }
        if (!ready(w, s, a))
            return;
        if (a.op == PP_OP_F) {
            set_bit(w->fdone, w->words, s, a.mb);
            wake(w, s + 1);
        } else if (a.op == PP_OP_B || a.op == PP_OP_I) {
            set_bit(w->gdone, w->words, s, a.mb);
            wake(w, s - 1);
        }
        w->pos[s]++;
    }
}

/* Finds the action (B or I) of micro-batch mb on stage s, for the message. */
static const char *grad_op_name(const pp_schedule *sc, int s, int mb)
{
    const pp_action_list *l = &sc->stage[s];
    for (size_t i = 0; i < l->count; i++)
        if (l->items[i].mb == mb && (l->items[i].op == PP_OP_B || l->items[i].op == PP_OP_I))
            return pp_op_name((pp_op)l->items[i].op);
    return "B";
}

/* Names the first stage stalled on a compute action (a stage waiting at a
 * BARRIER only waits for the others, so it is not the cause). */
static int report_stall(const walk *w, pp_err *e)
{
    int s = -1;
    for (int t = 0; t < w->P && s < 0; t++)
        if (w->pos[t] < w->sc->stage[t].count && !w->at_barrier[t])
            s = t;
    if (s < 0) { /* cannot happen with equal BARRIER counts; stay safe */
        for (int t = 0; t < w->P && s < 0; t++)
            if (w->pos[t] < w->sc->stage[t].count)
                s = t;
        return act_err(e, s, w->pos[s], w->sc->stage[s].items[w->pos[s]],
                       "deadlock at a BARRIER");
    }
    pp_action a = w->sc->stage[s].items[w->pos[s]];
    char text[32];
    pp_action_format(a, text, sizeof text);
    if (a.op == PP_OP_F)
        return pp_errf(e, "deadlock: stage %d stalls at action %zu \"%s\" waiting for F%d on "
                          "stage %d",
                       s, w->pos[s], text, (int)a.mb, s - 1);
    return pp_errf(e, "deadlock: stage %d stalls at action %zu \"%s\" waiting for %s%d on "
                      "stage %d",
                   s, w->pos[s], text, grad_op_name(w->sc, s + 1, a.mb), (int)a.mb, s + 1);
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
    w->P = sc->info.stages;
    w->words = ((size_t)sc->info.total_microbatches + 63) / 64;
    size_t P = (size_t)w->P;
    w->fdone = calloc(P * w->words + 1, sizeof *w->fdone);
    w->gdone = calloc(P * w->words + 1, sizeof *w->gdone);
    w->pos = calloc(P, sizeof *w->pos);
    w->at_barrier = calloc(P, 1);
    w->queue = calloc(P, sizeof *w->queue);
    w->queued = calloc(P, 1);
    if (!w->fdone || !w->gdone || !w->pos || !w->at_barrier || !w->queue || !w->queued) {
        walk_free(w);
        pp_errf(e, "out of memory validating %d stages", w->P);
        return -1;
    }
    return 0;
}

static int check_deadlock(const pp_schedule *sc, pp_err *e)
{
    walk w;
    if (walk_init(&w, sc, e) < 0)
        return -1;
    for (int s = 0; s < w.P; s++)
        wake(&w, s);
    while (w.qlen > 0)
        run_stage(&w, pop(&w));
    int rc = 0;
    for (int s = 0; s < w.P && rc == 0; s++)
        if (w.pos[s] < sc->stage[s].count)
            rc = report_stall(&w, e);
    walk_free(&w);
    return rc;
}

int pp_schedule_validate(const pp_schedule *s, pp_err *e)
{
    if (check_info(&s->info, e) < 0)
        return -1;
    if (!s->stage)
        return pp_errf(e, "schedule has no action lists");
    if (check_structure(s, e) < 0)
        return -1;
    return check_deadlock(s, e);
}
