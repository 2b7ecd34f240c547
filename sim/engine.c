#include "engine.h"

#include <stdlib.h>
#include <string.h>

#include "event_queue.h"
#include "ring.h"

enum { EV_END, EV_ACT_ARRIVES, EV_GRAD_ARRIVES };

/* An event's payload: micro-batch << 32 | stage << 2 | kind. */
typedef pp_event event;

static event make_event(double t, int kind, int stage, int mb)
{
    event ev = {t, (uint64_t)(uint32_t)mb << 32 | (uint64_t)stage << 2 | (uint64_t)kind};
    return ev;
}

static int ev_kind(event ev) { return (int)(ev.what & 3); }
static int ev_stage(event ev) { return (int)((ev.what >> 2) & 0x3fffffff); }
static int ev_mb(event ev) { return (int32_t)(uint32_t)(ev.what >> 32); }

typedef struct {
    pp_action head;
    int has_head, busy;
    int at_barrier;        /* counted as waiting at the current barrier */
    int next_fv, next_fv_known; /* cached stream hint */
    uint64_t index;        /* actions started so far */
    pp_timed_action cur;   /* the running action */
    pp_ring acts, grads;   /* micro-batches whose inputs have arrived */
    double link_up_free, link_down_free; /* send streams towards s-1 / s+1 */
} stage_state;

typedef struct {
    const pp_sim_config *cfg;
    pp_stream *src;
    int P;
    stage_state *st;
    pp_event_queue q;
    double comm; /* transfer time of one message */
    int at_barrier;
    pp_metrics_acc acc;
    uint64_t finished; /* actions finished, for cfg->progress */
} engine;

static int schedule(engine *g, double t, int kind, int stage, int mb, pp_err *e)
{
    if (pp_eq_push(&g->q, make_event(t, kind, stage, mb)) < 0)
        return pp_errf(e, "out of memory");
    return 0;
}

static void fetch_head(engine *g, int s)
{
    stage_state *st = &g->st[s];
    st->has_head = pp_stream_next(g->src, s, &st->head);
}

/* Whether the head action's inputs are here (consuming them if so). */
static int inputs_ready(engine *g, int s)
{
    stage_state *st = &g->st[s];
    const pp_action *a = &st->head;
    pp_ring *need = NULL;
    if (a->op == PP_OP_F && s > 0)
        need = &st->acts;
    else if ((a->op == PP_OP_B || a->op == PP_OP_I) && s < g->P - 1)
        need = &st->grads;
    if (!need)
        return 1;
    return pp_ring_take(need, a->mb);
}

static int start_action(engine *g, int s, double now, pp_err *e)
{
    stage_state *st = &g->st[s];
    pp_timed_action *ta = &st->cur;
    ta->act = st->head;
    ta->version = 0;
    ta->flags = 0;
    ta->start = now;
    ta->end = now + pp_cost_duration(g->cfg->cost, st->head.op, s, st->index++, now);
    if (ta->act.op == PP_OP_F && g->src->stashes && g->src->stashes(g->src, s, ta->act.mb))
        ta->flags |= PP_TA_STASH;
    /* the next forward changes only when this action is a forward */
    if (g->src->next_f_version && (ta->act.op == PP_OP_F || !st->next_fv_known)) {
        st->next_fv = g->src->next_f_version(g->src, s);
        st->next_fv_known = 1;
    }
    ta->next_f_version = g->src->next_f_version ? st->next_fv : -1;
    if (pp_acc_action(&g->acc, s, ta, e) < 0)
        return -1;
    if (g->cfg->timeline && pp_timeline_add_action(g->cfg->timeline, s, ta) < 0)
        return pp_errf(e, "out of memory");
    st->busy = 1;
    return schedule(g, ta->end, EV_END, s, ta->act.mb, e);
}

static int try_start(engine *g, int s, double now, pp_err *e);

/* A barrier starts on every stage once the last one reaches it. */
static int try_barrier(engine *g, int s, double now, pp_err *e)
{
    stage_state *st = &g->st[s];
    if (st->busy || st->at_barrier)
        return 0;
    st->at_barrier = 1;
    if (++g->at_barrier < g->P)
        return 0;
    g->at_barrier = 0;
    for (int i = 0; i < g->P; i++) {
        g->st[i].at_barrier = 0;
        if (start_action(g, i, now, e) < 0)
            return -1;
    }
    return 0;
}

static int try_start(engine *g, int s, double now, pp_err *e)
{
    stage_state *st = &g->st[s];
    if (st->busy || !st->has_head)
        return 0;
    if (st->head.op == PP_OP_BARRIER)
        return try_barrier(g, s, now, e);
    if (!inputs_ready(g, s))
        return 0;
    return start_action(g, s, now, e);
}

static int deliver(engine *g, int kind, int dst, int mb, double now, pp_err *e)
{
    stage_state *st = &g->st[dst];
    int fresh;
    if (!pp_ring_put(kind == EV_ACT_ARRIVES ? &st->acts : &st->grads, mb, &fresh))
        return pp_errf(e, "out of memory");
    return try_start(g, dst, now, e);
}

/* Sends on the link's own stream: after the previous message on it. */
static int send(engine *g, int src, int dst, int mb, double now, pp_err *e)
{
    int kind = dst > src ? EV_ACT_ARRIVES : EV_GRAD_ARRIVES;
    if (g->comm <= 0.0 && !g->cfg->timeline)
        return deliver(g, kind, dst, mb, now, e);
    stage_state *st = &g->st[src];
    double *link = dst > src ? &st->link_down_free : &st->link_up_free;
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

static int on_end(engine *g, int s, double now, pp_err *e)
{
    stage_state *st = &g->st[s];
    if (g->cfg->progress && (++g->finished & ((1u << 20) - 1)) == 0)
        g->cfg->progress(g->cfg->progress_ctx, g->finished, total_actions(&g->src->info));
    const pp_action *a = &st->cur.act;
    st->busy = 0;
    if (a->op == PP_OP_F && s < g->P - 1 && send(g, s, s + 1, a->mb, now, e) < 0)
        return -1;
    if ((a->op == PP_OP_B || a->op == PP_OP_I) && s > 0 && send(g, s, s - 1, a->mb, now, e) < 0)
        return -1;
    fetch_head(g, s);
    return try_start(g, s, now, e);
}

static int report_deadlock(engine *g, pp_err *e)
{
    for (int s = 0; s < g->P; s++) {
        stage_state *st = &g->st[s];
        if (!st->has_head)
            continue;
        char buf[32];
        const pp_action *a = &st->head;
        pp_action_format(*a, buf, sizeof buf);
        if (a->op == PP_OP_F)
            return pp_errf(e, "deadlock: stage %d stalls at action %llu \"%s\" waiting for F%d on stage %d",
                           s, (unsigned long long)st->index, buf, a->mb, s - 1);
        if (a->op == PP_OP_BARRIER)
            return pp_errf(e, "deadlock: stage %d stalls at action %llu \"BARRIER\" waiting for the other stages",
                           s, (unsigned long long)st->index);
        return pp_errf(e, "deadlock: stage %d stalls at action %llu \"%s\" waiting for the gradient of micro-batch %d from stage %d",
                       s, (unsigned long long)st->index, buf, a->mb, s + 1);
    }
    return 0;
}

static void engine_free(engine *g)
{
    if (g->st)
        for (int s = 0; s < g->P; s++) {
            pp_ring_free(&g->st[s].acts);
            pp_ring_free(&g->st[s].grads);
        }
    free(g->st);
    pp_eq_free(&g->q);
    pp_acc_free(&g->acc);
}

static int run(engine *g, pp_err *e)
{
    for (int s = 0; s < g->P; s++) {
        fetch_head(g, s);
        if (try_start(g, s, 0.0, e) < 0)
            return -1;
    }
    event ev;
    int got;
    while ((got = pp_eq_pop(&g->q, &ev)) > 0) {
        int kind = ev_kind(ev);
        int rc = kind == EV_END ? on_end(g, ev_stage(ev), ev.t, e)
                                : deliver(g, kind, ev_stage(ev), ev_mb(ev), ev.t, e);
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
    g.cfg = cfg;
    g.src = src;
    g.P = src->info.stages;
    if (cfg->cost->stages != g.P)
        return pp_errf(e, "cost model has %d stages, the schedule %d", cfg->cost->stages, g.P);
    g.comm = pp_cost_comm_time(cfg->cost);
    g.st = calloc((size_t)g.P, sizeof *g.st);
    int rc = g.st ? 0 : pp_errf(e, "out of memory");
    for (int s = 0; rc == 0 && s < g.P; s++)
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
