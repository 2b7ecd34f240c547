/* What a run learns from its schedule before the first action, by playing
 * the IR through once with links that never fill (runtime.h, pp_ir_plan).
 *
 * The links' need. A stage's send blocks while its link's queue holds
 * `capacity` messages the receiver has not taken, and a receiver takes
 * messages in the sender's order, parking those it wants later (mailbox.h)
 * in at most `capacity` slots too. A valid IR can send further ahead than
 * any fixed capacity (stage 0 forwarding every micro-batch before stage 1
 * sends its first gradient back); with too small a queue both sides then
 * block on a send and the run stalls until its timeout. So the run sizes
 * the queues to what the IR can ever hold, computed here exactly:
 *
 *  - queued: when stage s sends its k-th message to d, the least d can
 *    have taken is what d had taken when it sent the newest message s has
 *    received from it (or when they last met at a BARRIER): nothing else
 *    orders d's receives before s's send. Every message carries its
 *    sender's count of messages taken from the receiver, and the need of
 *    the link is the largest k minus that count over its sends.
 *  - parked: a receive takes messages up to the one it wants; those taken
 *    and not yet wanted wait parked. That follows from the two stages'
 *    orders alone.
 *
 * With queues that large no send ever blocks, so the run executes the IR
 * exactly as it would with unbounded links, and ends. The play-through
 * also finds a schedule that deadlocks even so (named by stage and
 * action), and keeps per stage what the run sizes before starting: the
 * most micro-batches held at once and the number of actions.
 *
 * The actors are the ranks (one thread each in the run): a rank waits at
 * its next action until that action's input is there. Where a rank holds
 * several stages, its order is one more thing that orders receives before
 * sends, which the counts above ignore: they can only overstate the need,
 * never understate it. */
#include <stdlib.h>
#include <string.h>

#include "mb_table.h"
#include "runtime.h"

enum { ACT = 0, GRAD = 1 }; /* = PP_MSG_ACT, PP_MSG_GRAD */

/* A message on a link: its place in the sender's sends on that link, and
 * how many messages of the opposite direction the sender had taken. */
typedef struct {
    long seq;
    long sender_took;
} msg;

/* A rank's cursor. */
typedef struct {
    pp_action next;
    int has_next, done;
    size_t pos;
} rank_cursor;

typedef struct {
    long sent[2];      /* messages sent: [ACT] to s+1, [GRAD] to s-1 */
    long took[2];      /* taken from the queue: [ACT] from s-1, [GRAD] from s+1 */
    long received[2];  /* of those, wanted by an action so far */
    long known[2];     /* the least the receiver of sent[k] has taken */
    int held;
} stage_state;

typedef struct {
    int P, R;
    const pp_ir_info *info;
    rank_cursor *rk;
    stage_state *st;
    pp_mb_table *link;  /* [2 * s + kind]: messages sent by s of that kind */
    pp_ir_plan *out;
} walk;

static pp_mb_table *link_of(walk *w, int src, int kind)
{
    return &w->link[2 * src + kind];
}

static void note_need(walk *w, int src, int kind, long queued, long parked)
{
    long need = queued > parked ? queued : parked;
    pp_ir_plan *p = w->out;
    if (need > p->slots) {
        p->slots = need > 0x3fffffff ? 0x3fffffff : (int)need;
        p->slots_src = src;
        p->slots_dst = kind == ACT ? src + 1 : src - 1;
    }
}

/* Takes message (kind, mb) from the neighbour for stage s; 0 when it has
 * not been sent yet. */
static int take(walk *w, int s, int kind, int mb)
{
    int src = kind == ACT ? s - 1 : s + 1;
    msg m;
    if (!pp_mbt_remove(link_of(w, src, kind), mb, &m))
        return 0;
    stage_state *me = &w->st[s];
    if (m.seq + 1 > me->took[kind])
        me->took[kind] = m.seq + 1; /* everything sent before it leaves the queue */
    me->received[kind]++;
    /* what the sender knew of our takes on the opposite link */
    if (m.sender_took > me->known[!kind])
        me->known[!kind] = m.sender_took;
    note_need(w, src, kind, 0, me->took[kind] - me->received[kind]);
    return 1;
}

static int send(walk *w, int s, int kind, int mb, pp_err *e)
{
    stage_state *me = &w->st[s];
    int dup;
    msg *m = pp_mbt_add(link_of(w, s, kind), mb, &dup);
    if (!m)
        return dup ? pp_errf(e, "stage %d sends the %s of micro-batch %d twice", s,
                             kind == ACT ? "activation" : "gradient", mb)
                   : pp_errf(e, "out of memory");
    m->seq = me->sent[kind]++;
    m->sender_took = me->took[!kind];
    note_need(w, s, kind, me->sent[kind] - me->known[kind], 0);
    return 0;
}

/* Runs rank r's next action if its input is there: 1 ran, 0 waits. (An
 * overlapped pair runs as its two actions in order: the run does so.) */
static int step(walk *w, int r, pp_err *e)
{
    const pp_action *a = &w->rk[r].next;
    int s = a->stage;
    stage_state *me = &w->st[s];
    int first = s == 0, last = s == w->P - 1;
    switch (a->op) {
    case PP_OP_F:
        if (!first && !take(w, s, ACT, a->mb))
            return 0;
        if (!last && send(w, s, ACT, a->mb, e) < 0)
            return -1;
        if (++me->held > w->out->peak_held[s])
            w->out->peak_held[s] = me->held;
        break;
    case PP_OP_B:
    case PP_OP_I:
        if (!last && !take(w, s, GRAD, a->mb))
            return 0;
        if (!first && send(w, s, GRAD, a->mb, e) < 0)
            return -1;
        me->held -= a->op == PP_OP_B;
        break;
    case PP_OP_W:
        me->held--;
        break;
    case PP_OP_BARRIER:
        return 0; /* all stages pass together (meet) */
    default:
        break;
    }
    return 1;
}

/* Moves rank r to its next action; a stage outside the schedule ends the
 * walk with an error (streams are not validated before a run). */
static int advance(walk *w, pp_stream *src, int r, pp_err *e)
{
    rank_cursor *me = &w->rk[r];
    pp_ir_plan *p = w->out;
    if (me->has_next) {
        me->pos++;
        p->actions[me->next.stage]++;
    }
    me->has_next = pp_stream_next(src, r, &me->next);
    me->done = !me->has_next;
    if (me->done)
        return 0;
    if (me->next.op != PP_OP_BARRIER &&
        (me->next.stage >= w->P || pp_stage_rank(w->info, me->next.stage) != r))
        return pp_errf(e, "rank %d, action %zu: stage %d is not on this rank", r, me->pos,
                       (int)me->next.stage);
    if (me->next.op == PP_OP_BARRIER && (p->barrier_stage < 0 || r < p->barrier_stage)) {
        p->barrier_stage = r;
        p->barrier_pos = me->pos;
    }
    return 0;
}

/* Every rank that has not finished waits at a BARRIER: all pass it, and
 * each stage learns how much its neighbours have taken. 0 when not all
 * wait. */
static int meet(walk *w, pp_stream *src, pp_err *e)
{
    int waiting = 0;
    for (int r = 0; r < w->R; r++) {
        if (w->rk[r].done)
            return 0;
        waiting += w->rk[r].next.op == PP_OP_BARRIER;
    }
    if (waiting < w->R)
        return 0;
    for (int s = 0; s < w->P; s++) {
        stage_state *me = &w->st[s];
        if (s + 1 < w->P && w->st[s + 1].took[ACT] > me->known[ACT])
            me->known[ACT] = w->st[s + 1].took[ACT];
        if (s > 0 && w->st[s - 1].took[GRAD] > me->known[GRAD])
            me->known[GRAD] = w->st[s - 1].took[GRAD];
    }
    for (int r = 0; r < w->R; r++)
        if (advance(w, src, r, e) < 0)
            return -1;
    return 1;
}

static int stalled(const walk *w, pp_err *e)
{
    for (int r = 0; r < w->R; r++)
        if (!w->rk[r].done) {
            char buf[32];
            return pp_errf(e, "the schedule deadlocks: %s %d waits forever at action %zu "
                              "\"%s\"", pp_multi_stage(w->info) ? "rank" : "stage", r,
                           w->rk[r].pos,
                           pp_action_format_in(w->info, w->rk[r].next, buf, sizeof buf));
        }
    return 0;
}

static int play(walk *w, pp_stream *src, pp_err *e)
{
    for (int r = 0; r < w->R; r++)
        if (advance(w, src, r, e) < 0)
            return -1;
    for (;;) {
        int progress = 0, open = 0;
        for (int r = 0; r < w->R; r++) {
            rank_cursor *me = &w->rk[r];
            int rc = 0;
            while (!me->done && (rc = step(w, r, e)) == 1) {
                if (advance(w, src, r, e) < 0)
                    return -1;
                progress = 1;
            }
            if (!me->done && rc < 0)
                return -1;
            open += !me->done;
        }
        if (!open)
            return 0;
        int met = progress ? 0 : meet(w, src, e);
        if (met < 0)
            return -1;
        if (!progress && !met)
            return stalled(w, e);
    }
}

int pp_ir_plan_make(pp_stream *src, pp_ir_plan *p, pp_err *e)
{
    memset(p, 0, sizeof *p);
    if (pp_info_check_placement(&src->info, e) < 0)
        return -1;
    int P = src->info.stages, R = src->info.ranks;
    p->P = P;
    p->slots = 1;
    p->slots_src = p->slots_dst = -1;
    p->barrier_stage = -1;
    walk w = {P, R, &src->info, calloc((size_t)R, sizeof *w.rk), calloc((size_t)P, sizeof *w.st),
              calloc((size_t)P * 2, sizeof *w.link), p};
    p->peak_held = calloc((size_t)P, sizeof *p->peak_held);
    p->actions = calloc((size_t)P, sizeof *p->actions);
    int made = 0, rc = 0;
    if (!w.rk || !w.st || !w.link || !p->peak_held || !p->actions)
        rc = pp_errf(e, "out of memory");
    for (; rc == 0 && made < 2 * P; made++)
        if (pp_mbt_init(&w.link[made], sizeof(msg)) < 0)
            rc = pp_errf(e, "out of memory");
    if (rc == 0)
        rc = play(&w, src, e);
    for (int i = 0; i < made; i++)
        pp_mbt_free(&w.link[i]);
    free(w.link);
    free(w.st);
    free(w.rk);
    if (rc < 0)
        pp_ir_plan_free(p);
    return rc;
}

void pp_ir_plan_free(pp_ir_plan *p)
{
    free(p->peak_held);
    free(p->actions);
    p->peak_held = NULL;
    p->actions = NULL;
}

int pp_schedule_link_slots(const pp_schedule *ir, pp_err *e)
{
    pp_stream *st;
    pp_ir_plan p;
    if (pp_stream_from_schedule(ir, &st, e) < 0)
        return -1;
    int rc = pp_ir_plan_make(st, &p, e);
    pp_stream_free(st);
    if (rc < 0)
        return -1;
    pp_ir_plan_free(&p);
    return p.slots;
}
