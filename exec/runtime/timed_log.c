/* The measured actions, from the stage threads to the main thread, handed
 * on (pp_run_config.on_action, .timeline) as the run goes: a long run
 * keeps only the actions not yet handed on, not a record of every action.
 *
 * The simulator's metrics take the actions of all stages in start order.
 * Each stage's own actions come in that order; the merge hands on the
 * earliest head of the stages' queues (ties: the lower stage) once every
 * stage still running has an action queued, since a stage with none may
 * yet start one earlier than the others' heads. That is exactly the order
 * of sorting every action of the run by (start, stage, index). How far the
 * others get ahead of a waiting stage is bounded by the schedule (what they
 * can do without it), not by the length of the run. */
#include <stdlib.h>
#include <string.h>

#include "runtime_private.h"

static int list_reserve(pp_timed_list *l, size_t n)
{
    if (l->count + n <= l->cap)
        return 0;
    size_t cap = l->cap ? l->cap : 256;
    while (cap < l->count + n)
        cap *= 2;
    pp_timed_action *items = realloc(l->items, cap * sizeof *items);
    if (!items)
        return -1;
    l->items = items;
    l->cap = cap;
    return 0;
}

int pp_log_init(stage_rt *s, pp_err *e)
{
    if (pthread_mutex_init(&s->log_mu, NULL) != 0)
        return pp_errf(e, "cannot create a mutex");
    s->log_mu_made = 1;
    return 0;
}

void pp_log_free(stage_rt *s)
{
    free(s->pending.items);
    free(s->ready.items);
    memset(&s->pending, 0, sizeof s->pending);
    memset(&s->ready, 0, sizeof s->ready);
    if (s->log_mu_made)
        pthread_mutex_destroy(&s->log_mu);
    s->log_mu_made = 0;
}

int pp_log_push(stage_rt *s, const pp_timed_action *ta, pp_err *e)
{
    pthread_mutex_lock(&s->log_mu);
    int rc = list_reserve(&s->pending, 1);
    if (rc == 0)
        s->pending.items[s->pending.count++] = *ta;
    pthread_mutex_unlock(&s->log_mu);
    return rc < 0 ? pp_errf(e, "out of memory") : 0;
}

void pp_log_close(stage_rt *s)
{
    pthread_mutex_lock(&s->log_mu);
    s->closed = 1;
    pthread_mutex_unlock(&s->log_mu);
}

/* Moves what the stage pushed since the last merge behind its ready queue. */
static int take_pending(stage_rt *s)
{
    pp_timed_list *q = &s->ready;
    if (s->ready_head > 0) { /* drop what was handed on */
        memmove(q->items, q->items + s->ready_head,
                (q->count - s->ready_head) * sizeof *q->items);
        q->count -= s->ready_head;
        s->ready_head = 0;
    }
    pthread_mutex_lock(&s->log_mu);
    int rc = list_reserve(q, s->pending.count);
    if (rc == 0) {
        if (s->pending.count)
            memcpy(q->items + q->count, s->pending.items,
                   s->pending.count * sizeof *q->items);
        q->count += s->pending.count;
        s->pending.count = 0;
        s->ready_closed = s->closed;
    }
    pthread_mutex_unlock(&s->log_mu);
    return rc;
}

/* The stage whose head action comes next, -1 when it cannot be known yet
 * (a running stage has none queued) or nothing is queued. */
static int next_stage(run *r)
{
    int best = -1;
    double start = 0;
    for (int s = r->lo; s < r->lo + r->nloc; s++) {
        stage_rt *st = &r->st[s];
        if (st->ready_head == st->ready.count) {
            if (!st->ready_closed)
                return -1;
            continue;
        }
        double t = st->ready.items[st->ready_head].start;
        if (best < 0 || t < start) {
            best = s;
            start = t;
        }
    }
    return best;
}

int pp_log_merge(run *r, pp_err *e)
{
    const pp_run_config *c = r->cfg;
    for (int s = r->lo; s < r->lo + r->nloc; s++)
        if (r->st[s].log_mu_made && take_pending(&r->st[s]) < 0)
            return pp_errf(e, "out of memory");
    for (int s; (s = next_stage(r)) >= 0;) {
        stage_rt *st = &r->st[s];
        const pp_timed_action *ta = &st->ready.items[st->ready_head++];
        if (c->timeline && pp_timeline_add_action(c->timeline, s, ta) < 0)
            return pp_errf(e, "out of memory");
        if (c->on_action && c->on_action(c->on_action_ctx, s, ta, e) < 0)
            return -1;
    }
    return 0;
}
