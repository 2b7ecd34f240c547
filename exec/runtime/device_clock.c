/* A stage's actions timed by its device's clock, read behind the work.
 *
 * On a GPU the stage thread only queues its actions: waiting for each to
 * finish before queueing the next would leave the device idle between
 * actions (tens of microseconds each) and put the host's delay into every
 * measured gap. So each action gets two clock marks on the stage's queue
 * (start, end), and its times are read later, oldest first, once
 * PP_CLOCK_PENDING newer actions are queued behind it or when the stage's
 * list ends: reading the oldest waits only for it, while the device works
 * on the ones behind it.
 *
 * Times are chained from one known point, the anchor: a mark whose time on
 * the run's time line is known (first the origin, recorded and waited for
 * at the stage's start; then the end mark of the action read last). An
 * action starts at the anchor's time plus the device's time from the
 * anchor to its start mark, and lasts the time between its two marks; its
 * end mark becomes the anchor. Each reading spans a short interval, so the
 * backend's float milliseconds stay exact to well under a microsecond
 * however long the run.
 *
 * Slots are taken round-robin. In use at once: the anchor and the two
 * marks of each pending action (an action reads the oldest before it
 * takes its own when PP_CLOCK_PENDING are pending), at most
 * 2 PP_CLOCK_PENDING + 1, all newer than the anchor; PP_CLOCK_SLOTS
 * (backend.h) is one more, so the slot taken next is never one still to
 * be read. */
#include "runtime_private.h"

_Static_assert(PP_CLOCK_SLOTS >= 2 * PP_CLOCK_PENDING + 2, "too few clock slots");

static int take_slot(stage_rt *s)
{
    int slot = s->clk_next;
    s->clk_next = (s->clk_next + 1) % PP_CLOCK_SLOTS;
    return slot;
}

void pp_clock_start(stage_rt *s)
{
    s->clk_anchor = take_slot(s);
    s->r->cfg->backend->clock_origin(s->bk, s->clk_anchor);
    s->clk_anchor_t = pp_now_s() - s->r->t0;
}

/* Reads the oldest pending action's marks and logs it. A failed reading
 * keeps the host's times for that action (when it was queued) and anchors
 * the next at its host end. */
static int read_oldest(stage_rt *s, pp_err *e)
{
    const pp_backend_ops *b = s->r->cfg->backend;
    pp_clocked_action *p = &s->clk_pending[s->clk_head];
    double gap = b->clock_between(s->bk, s->clk_anchor, p->start_slot);
    double dur = b->clock_between(s->bk, p->start_slot, p->end_slot);
    if (gap >= 0 && dur >= 0) {
        p->ta.start = s->clk_anchor_t + gap;
        p->ta.end = p->ta.start + dur;
    }
    s->clk_anchor = p->end_slot;
    s->clk_anchor_t = p->ta.end;
    s->clk_head = (s->clk_head + 1) % PP_CLOCK_PENDING;
    s->clk_count--;
    return pp_log_push(s, &p->ta, e);
}

/* With PP_CLOCK_PENDING actions pending, the oldest is read first, before
 * this action takes its slots. */
int pp_clock_begin(stage_rt *s, int *start_slot, pp_err *e)
{
    if (s->clk_count == PP_CLOCK_PENDING && read_oldest(s, e) < 0)
        return -1;
    *start_slot = take_slot(s);
    s->r->cfg->backend->clock_mark(s->bk, *start_slot);
    return 0;
}

void pp_clock_end(stage_rt *s, const pp_timed_action *ta, int start_slot)
{
    int end_slot = take_slot(s);
    s->r->cfg->backend->clock_mark(s->bk, end_slot);
    int at = (s->clk_head + s->clk_count) % PP_CLOCK_PENDING;
    s->clk_pending[at] = (pp_clocked_action){*ta, start_slot, end_slot};
    s->clk_count++;
}

int pp_clock_drain(stage_rt *s, pp_err *e)
{
    while (s->clk_count > 0)
        if (read_oldest(s, e) < 0)
            return -1;
    return 0;
}
