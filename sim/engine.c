#include "engine.h"

#include <stdlib.h>
#include <string.h>

#include "event_queue.h"
#include "ring.h"

/* EV_END is a rank's running action (or overlapped pair) finishing; the
 * arrivals are messages for a stage. */
enum { EV_END, EV_ACT_ARRIVES, EV_GRAD_ARRIVES };

/* An event's payload: micro-batch << 32 | rank or stage << 2 | kind. */
typedef pp_event event;

static event make_event(double t, int kind, int where, int mb)
{
    event ev = {t, (uint64_t)(uint32_t)mb << 32 | (uint64_t)where << 2 | (uint64_t)kind};
    return ev;
}

static int ev_kind(event ev) { return (int)(ev.what & 3); }
static int ev_where(event ev) { return (int)((ev.what >> 2) & 0x3fffffff); }
static int ev_mb(event ev) { return (int32_t)(uint32_t)(ev.what >> 32); }

/* A link from one rank to another: messages on it go one after another. */
typedef struct {
    int dst;
    double free;
} link_state;

/* What a rank runs: one action at a time, or an overlapped pair. */
typedef struct {
    pp_action head[2];
    int nhead;             /* 0: finished, 1, or 2 for an overlapped pair */
    int busy;
    int at_barrier;        /* counted as waiting at the current barrier */
    pp_timed_action cur[2];
    int ncur;
    link_state links[4];   /* outgoing links used so far (a rank has few neighbours) */
    int nlinks;
} rank_state;

/* What a stage has received, and its hints. */
typedef struct {
    pp_ring acts, grads;        /* micro-batches whose inputs have arrived */
    uint64_t index;             /* actions started so far (the cost's jitter key) */
    int next_fv, next_fv_known; /* cached stream hint */
} stage_state;

typedef struct {
    const pp_sim_config *cfg;
    pp_stream *src;
    const pp_ir_info *info;
    int R, S;
    int multi; /* several stages per rank */
    rank_state *rk;
    stage_state *st;
    pp_event_queue q;
    double comm; /* transfer time of one message */
    int at_barrier;
    pp_metrics_acc acc;
    uint64_t finished; /* actions finished, for cfg->progress */
} engine;

static inline int schedule(engine *g, double t, int kind, int where, int mb, pp_err *e)
{
    if (pp_eq_push(&g->q, make_event(t, kind, where, mb)) < 0)
        return pp_errf(e, "out of memory");
    return 0;
}

/* The rank's next action, and its partner when it is overlapped. A stage
 * that does not belong to the rank is refused here, since streams are not
 * validated before a run. */
static inline __attribute__((always_inline)) int fetch_head(engine *g, int r, pp_err *e)
{
    rank_state *rk = &g->rk[r];
    rk->nhead = 0;
    if (!pp_stream_next(g->src, r, &rk->head[0]))
        return 0;
    rk->nhead = 1;
    if (rk->head[0].with_next) {
        if (!pp_stream_next(g->src, r, &rk->head[1]))
            return pp_errf(e, "rank %d: an overlapped action is the rank's last", r);
        rk->nhead = 2;
    }
    if (!g->multi) /* the stream set the stage to the rank */
        return 0;
    for (int k = 0; k < rk->nhead; k++) {
        const pp_action *a = &rk->head[k];
        if (a->op != PP_OP_BARRIER &&
            (a->stage >= g->S || pp_stage_rank(g->info, a->stage) != r))
            return pp_errf(e, "rank %d: an action of stage %d, which is not on this rank", r,
                           (int)a->stage);
    }
    return 0;
}

/* The ring that must hold a's input, or NULL when it needs none. */
static pp_ring *input_of(engine *g, const pp_action *a)
{
    stage_state *st = &g->st[a->stage];
    if (a->op == PP_OP_F && a->stage > 0)
        return &st->acts;
    if ((a->op == PP_OP_B || a->op == PP_OP_I) && a->stage < g->S - 1)
        return &st->grads;
    return NULL;
}

/* Whether every head action's input is here; consumes them if so. */
static inline __attribute__((always_inline)) int inputs_ready(engine *g, int r)
{
    rank_state *rk = &g->rk[r];
    if (rk->nhead == 1) {
        pp_ring *need = input_of(g, &rk->head[0]);
        return !need || pp_ring_take(need, rk->head[0].mb);
    }
    for (int k = 0; k < rk->nhead; k++) {
        pp_ring *need = input_of(g, &rk->head[k]);
        if (need && !pp_ring_has(need, rk->head[k].mb))
            return 0;
    }
    for (int k = 0; k < rk->nhead; k++) {
        pp_ring *need = input_of(g, &rk->head[k]);
        if (need)
            pp_ring_take(need, rk->head[k].mb);
    }
    return 1;
}

static double action_time(engine *g, const pp_action *a, double now)
{
    stage_state *st = &g->st[a->stage];
    return pp_cost_duration(g->cfg->cost, a->op, a->stage, st->index++, now);
}

/* Opens one timed action of the rank (the hints, metrics and timeline). */
static inline __attribute__((always_inline)) int record(engine *g, pp_timed_action *ta,
                                                        const pp_action *a, double now,
                                                        double end, int overlapped, pp_err *e)
{
    stage_state *st = &g->st[a->stage];
    ta->act = *a;
    ta->version = 0;
    ta->flags = overlapped ? PP_TA_OVERLAP : 0;
    ta->start = now;
    ta->end = end;
    if (a->op == PP_OP_F && g->src->stashes && g->src->stashes(g->src, a->stage, a->mb))
        ta->flags |= PP_TA_STASH;
    /* the next forward changes only when this action is a forward */
    if (g->src->next_f_version && (a->op == PP_OP_F || !st->next_fv_known)) {
        st->next_fv = g->src->next_f_version(g->src, a->stage);
        st->next_fv_known = 1;
    }
    ta->next_f_version = g->src->next_f_version ? st->next_fv : -1;
    if (pp_acc_action(&g->acc, a->stage, ta, e) < 0)
        return -1;
    if (g->cfg->timeline && pp_timeline_add_action(g->cfg->timeline, a->stage, ta) < 0)
        return pp_errf(e, "out of memory");
    return 0;
}

static int start_action(engine *g, int r, double now, pp_err *e)
{
    rank_state *rk = &g->rk[r];
    double d = action_time(g, &rk->head[0], now);
    if (rk->nhead == 2)
        d = pp_cost_overlap(g->cfg->cost, d, action_time(g, &rk->head[1], now));
    rk->ncur = rk->nhead;
    if (record(g, &rk->cur[0], &rk->head[0], now, now + d, rk->ncur == 2, e) < 0 ||
        (rk->ncur == 2 && record(g, &rk->cur[1], &rk->head[1], now, now + d, 1, e) < 0))
        return -1;
    rk->busy = 1;
    return schedule(g, now + d, EV_END, r, 0, e);
}

/* A barrier starts on every rank once the last one reaches it. */
static int try_barrier(engine *g, int r, double now, pp_err *e)
{
    rank_state *rk = &g->rk[r];
    if (rk->busy || rk->at_barrier)
        return 0;
    rk->at_barrier = 1;
    if (++g->at_barrier < g->R)
        return 0;
    g->at_barrier = 0;
    for (int i = 0; i < g->R; i++) {
        g->rk[i].at_barrier = 0;
        if (start_action(g, i, now, e) < 0)
            return -1;
    }
    return 0;
}

/* Inlined into its two callers: it runs twice per action and mostly finds
 * the rank busy or its input missing. */
static inline __attribute__((always_inline)) int try_start(engine *g, int r, double now,
                                                           pp_err *e)
{
    rank_state *rk = &g->rk[r];
    if (rk->busy || rk->nhead == 0)
        return 0;
    if (rk->head[0].op == PP_OP_BARRIER)
        return try_barrier(g, r, now, e);
    if (!inputs_ready(g, r))
        return 0;
    return start_action(g, r, now, e);
}

static int deliver(engine *g, int kind, int dst, int mb, double now, pp_err *e)
{
    stage_state *st = &g->st[dst];
    int fresh;
    if (!pp_ring_put(kind == EV_ACT_ARRIVES ? &st->acts : &st->grads, mb, &fresh))
        return pp_errf(e, "out of memory");
    return try_start(g, g->multi ? pp_stage_rank(g->info, dst) : dst, now, e);
}

/* The time the link from rank `from` to rank `to` is free, kept per pair
 * and direction: activations and gradients that take the same link queue
 * behind each other, messages on two links do not. */
static double *link_free(engine *g, int from, int to, pp_err *e)
{
    rank_state *rk = &g->rk[from];
    for (int i = 0; i < rk->nlinks; i++)
        if (rk->links[i].dst == to)
            return &rk->links[i].free;
    if (rk->nlinks == (int)(sizeof rk->links / sizeof rk->links[0])) {
        pp_errf(e, "rank %d sends to more than %d ranks", from, rk->nlinks);
        return NULL;
    }
    rk->links[rk->nlinks] = (link_state){to, 0.0};
    return &rk->links[rk->nlinks++].free;
}

/* Sends stage src's output to stage dst. Between stages of one rank the
 * hand-over is free and uses no link. */
static int send(engine *g, int src, int dst, int mb, double now, pp_err *e)
{
    int kind = dst > src ? EV_ACT_ARRIVES : EV_GRAD_ARRIVES;
    if (g->comm <= 0.0 && !g->cfg->timeline)
        return deliver(g, kind, dst, mb, now, e);
    int from = pp_stage_rank(g->info, src), to = pp_stage_rank(g->info, dst);
    if (from == to)
        return deliver(g, kind, dst, mb, now, e);
    double *link = link_free(g, from, to, e);
    if (!link)
        return -1;
    double t0 = *link > now ? *link : now, t1 = t0 + g->comm;
    *link = t1;
    if (g->cfg->timeline) {
        pp_transfer x = {src, dst, mb, kind == EV_GRAD_ARRIVES, t0, t1};
        if (pp_timeline_add_transfer(g->cfg->timeline, &x) < 0)
            return pp_errf(e, "out of memory");
    }
    if (g->comm <= 0.0)
        return deliver(g, kind, dst, mb, now, e);
    return schedule(g, t1, kind, dst, mb, e);
}

/* Every stage's F and B (or I and W) of every micro-batch plus its OPTs:
 * the actions a run will finish, for the progress report. */
static uint64_t total_actions(const pp_ir_info *info)
{
    return (uint64_t)info->stages * (2 * (uint64_t)info->total_microbatches + info->steps);
}

/* Sends what a finished action produced: an F's activation downstream, a
 * B's or I's gradient upstream. */
static inline __attribute__((always_inline)) int send_output(engine *g, const pp_action *a,
                                                             double now, pp_err *e)
{
    int s = a->stage;
    if (g->cfg->progress && (++g->finished & ((1u << 20) - 1)) == 0)
        g->cfg->progress(g->cfg->progress_ctx, g->finished, total_actions(g->info));
    if (a->op == PP_OP_F && s < g->S - 1)
        return send(g, s, s + 1, a->mb, now, e);
    if ((a->op == PP_OP_B || a->op == PP_OP_I) && s > 0)
        return send(g, s, s - 1, a->mb, now, e);
    return 0;
}

static int on_end(engine *g, int r, double now, pp_err *e)
{
    rank_state *rk = &g->rk[r];
    rk->busy = 0;
    rk->nhead = 0; /* finished: a hand-over to a stage of this rank must not restart it */
    if (send_output(g, &rk->cur[0].act, now, e) < 0 ||
        (rk->ncur == 2 && send_output(g, &rk->cur[1].act, now, e) < 0))
        return -1;
    rk->ncur = 0;
    if (fetch_head(g, r, e) < 0)
        return -1;
    return try_start(g, r, now, e);
}

/* The head action of a stalled rank that waits (with a pair, the part
 * whose input is missing). */
static const pp_action *waiting(engine *g, int r)
{
    rank_state *rk = &g->rk[r];
    for (int k = 0; k < rk->nhead; k++) {
        pp_ring *need = input_of(g, &rk->head[k]);
        if (need && !pp_ring_has(need, rk->head[k].mb))
            return &rk->head[k];
    }
    return &rk->head[0];
}

static int report_deadlock(engine *g, pp_err *e)
{
    int multi = pp_multi_stage(g->info);
    for (int r = 0; r < g->R; r++) {
        rank_state *rk = &g->rk[r];
        if (rk->nhead == 0)
            continue;
        char buf[32], where[48];
        const pp_action *a = waiting(g, r);
        int s = a->stage;
        pp_action_format_in(g->info, *a, buf, sizeof buf);
        unsigned long long index = g->st[s].index;
        if (multi)
            snprintf(where, sizeof where, "rank %d (stage %d)", r, s);
        else
            snprintf(where, sizeof where, "stage %d", s);
        if (a->op == PP_OP_BARRIER)
            return pp_errf(e, "deadlock: %s stalls at action %llu \"BARRIER\" waiting for the "
                              "other %ss",
                           where, index, multi ? "rank" : "stage");
        if (a->op == PP_OP_F)
            return pp_errf(e, "deadlock: %s stalls at action %llu \"%s\" waiting for F%d on "
                              "stage %d",
                           where, index, buf, a->mb, s - 1);
        return pp_errf(e, "deadlock: %s stalls at action %llu \"%s\" waiting for the gradient of "
                          "micro-batch %d from stage %d",
                       where, index, buf, a->mb, s + 1);
    }
    return 0;
}

static void engine_free(engine *g)
{
    if (g->st)
        for (int s = 0; s < g->S; s++) {
            pp_ring_free(&g->st[s].acts);
            pp_ring_free(&g->st[s].grads);
        }
    free(g->st);
    free(g->rk);
    pp_eq_free(&g->q);
    pp_acc_free(&g->acc);
}

static int run(engine *g, pp_err *e)
{
    for (int r = 0; r < g->R; r++)
        if (fetch_head(g, r, e) < 0 || try_start(g, r, 0.0, e) < 0)
            return -1;
    event ev;
    int got;
    while ((got = pp_eq_pop(&g->q, &ev)) > 0) {
        int kind = ev_kind(ev);
        int rc = kind == EV_END ? on_end(g, ev_where(ev), ev.t, e)
                                : deliver(g, kind, ev_where(ev), ev_mb(ev), ev.t, e);
        if (rc < 0)
            return -1;
    }
    if (got < 0)
        return pp_errf(e, "out of memory");
    return report_deadlock(g, e);
}

int pp_simulate(pp_stream *src, const pp_sim_config *cfg, pp_metrics *out, pp_err *e)
{
    engine g;
    memset(&g, 0, sizeof g);
    memset(out, 0, sizeof *out);
    if (pp_info_check_placement(&src->info, e) < 0)
        return -1;
    g.cfg = cfg;
    g.src = src;
    g.info = &src->info;
    g.S = src->info.stages;
    g.R = src->info.ranks;
    g.multi = pp_multi_stage(g.info);
    if (cfg->cost->stages != g.S)
        return pp_errf(e, "cost model has %d stages, the schedule %d", cfg->cost->stages, g.S);
    g.comm = pp_cost_comm_time(cfg->cost);
    g.st = calloc((size_t)g.S, sizeof *g.st);
    g.rk = calloc((size_t)g.R, sizeof *g.rk);
    int rc = g.st && g.rk ? 0 : pp_errf(e, "out of memory");
    for (int s = 0; rc == 0 && s < g.S; s++)
        if (pp_ring_init(&g.st[s].acts, 0) < 0 || pp_ring_init(&g.st[s].grads, 0) < 0)
            rc = pp_errf(e, "out of memory");
    if (rc == 0)
        rc = pp_acc_init(&g.acc, &src->info, cfg->model, cfg->recompute, cfg->timeline, e);
    if (rc == 0)
        rc = run(&g, e);
    if (rc == 0)
        rc = pp_acc_finish(&g.acc, out, e);
    if (rc == 0)
        snprintf(out->unit, sizeof out->unit, "%s", cfg->cost->unit);
    engine_free(&g);
    return rc;
}
