/* Streams over the IR: a cursor per rank over a schedule in memory (with
 * the stash and next-forward hints the simulator asks for), draining a
 * stream into a schedule, and the per-stage view of a multi-stage one. */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* --- streams ---------------------------------------------------------- */

void pp_stream_free(pp_stream *st)
{
    if (st)
        st->destroy(st);
}

typedef struct {
    const pp_schedule *s;
    size_t *pos;     /* per-rank cursor */
    size_t *next_f;  /* per stage: index in its rank's list of its next F at or after pos */
    uint64_t *stash; /* per-stage bitmaps: B/I of mb reads the stash */
    size_t words;    /* bitmap words per stage (0 when nothing stashes) */
} sched_stream;

static int sched_next(pp_stream *st, int rank, pp_action *out)
{
    sched_stream *ss = st->state;
    if (rank < 0 || rank >= ss->s->info.ranks)
        return 0;
    const pp_action_list *l = &ss->s->rank[rank];
    if (ss->pos[rank] >= l->count)
        return 0;
    *out = l->items[ss->pos[rank]++];
    return 1;
}

static int sched_stashes(pp_stream *st, int stage, int mb)
{
    sched_stream *ss = st->state;
    if (stage < 0 || stage >= ss->s->info.stages || mb < 0 || (size_t)mb / 64 >= ss->words)
        return 0;
    return (ss->stash[(size_t)stage * ss->words + (size_t)mb / 64] >> (mb % 64)) & 1;
}

/* The cursor to the next F only moves forward, so all the calls of a run
 * cost O(actions x stages per rank) together. */
static int sched_next_f_version(pp_stream *st, int stage)
{
    sched_stream *ss = st->state;
    if (stage < 0 || stage >= ss->s->info.stages)
        return -1;
    int rank = pp_stage_rank(&ss->s->info, stage);
    const pp_action_list *l = &ss->s->rank[rank];
    size_t *i = &ss->next_f[stage];
    if (*i < ss->pos[rank])
        *i = ss->pos[rank];
    while (*i < l->count && (l->items[*i].op != PP_OP_F || l->items[*i].stage != stage))
        (*i)++;
    if (*i == l->count || l->items[*i].sel != PP_SEL_VERSION)
        return -1;
    return l->items[*i].version;
}

static void sched_destroy(pp_stream *st)
{
    sched_stream *ss = st->state;
    free(ss->pos);
    free(ss->next_f);
    free(ss->stash);
    free(ss);
    free(st);
}

static int reads_stash(const pp_action *a)
{
    return (a->op == PP_OP_B || a->op == PP_OP_I) && a->sel == PP_SEL_STASH && a->mb >= 0;
}

/* Marks which backwards read the stash. Sized by the largest stashing
 * micro-batch, so an unvalidated schedule cannot ask for a huge bitmap. */
static int build_stash_map(sched_stream *ss)
{
    const pp_schedule *s = ss->s;
    int32_t max_mb = -1;
    for (int r = 0; r < s->info.ranks; r++)
        for (size_t i = 0; i < s->rank[r].count; i++) {
            const pp_action *a = &s->rank[r].items[i];
            if (reads_stash(a) && a->mb > max_mb)
                max_mb = a->mb;
        }
    if (max_mb < 0)
        return 0;
    ss->words = (size_t)max_mb / 64 + 1;
    ss->stash = calloc((size_t)s->info.stages * ss->words, sizeof *ss->stash);
    if (!ss->stash)
        return -1;
    for (int r = 0; r < s->info.ranks; r++)
        for (size_t i = 0; i < s->rank[r].count; i++) {
            const pp_action *a = &s->rank[r].items[i];
            if (reads_stash(a) && a->stage < s->info.stages)
                ss->stash[(size_t)a->stage * ss->words + (size_t)a->mb / 64] |=
                    (uint64_t)1 << (a->mb % 64);
        }
    return 0;
}

int pp_stream_from_schedule(const pp_schedule *s, pp_stream **out, pp_err *e)
{
    pp_stream *st = calloc(1, sizeof *st);
    sched_stream *ss = calloc(1, sizeof *ss);
    size_t *pos = calloc((size_t)s->info.ranks, sizeof *pos);
    size_t *next_f = calloc((size_t)s->info.stages, sizeof *next_f);
    if (ss)
        ss->s = s;
    if (!st || !ss || !pos || !next_f || build_stash_map(ss) < 0) {
        if (ss)
            free(ss->stash);
        free(st);
        free(ss);
        free(pos);
        free(next_f);
        return pp_errf(e, "out of memory");
    }
    ss->pos = pos;
    ss->next_f = next_f;
    st->info = s->info;
    st->next = sched_next;
    st->destroy = sched_destroy;
    st->stashes = sched_stashes;
    st->next_f_version = sched_next_f_version;
    st->state = ss;
    *out = st;
    return 0;
}

int pp_schedule_from_stream(pp_stream *st, pp_schedule *out, pp_err *e)
{
    if (pp_schedule_init(out, &st->info, e) < 0)
        return -1;
    for (int r = 0; r < out->info.ranks; r++) {
        pp_action a;
        while (pp_stream_next(st, r, &a))
            if (pp_schedule_push(out, r, a, e) < 0) {
                pp_schedule_free(out);
                return -1;
            }
    }
    return 0;
}

/* --- per-stage view ---------------------------------------------------- */

typedef struct {
    pp_schedule s;
    size_t *pos; /* per stage: cursor in its rank's list */
} stage_view;

static int view_next(pp_stream *st, int stage, pp_action *out)
{
    stage_view *v = st->state;
    if (stage < 0 || stage >= v->s.info.stages)
        return 0;
    const pp_action_list *l = &v->s.rank[pp_stage_rank(&v->s.info, stage)];
    for (size_t *i = &v->pos[stage]; *i < l->count; ++*i) {
        const pp_action *a = &l->items[*i];
        if (a->op == PP_OP_BARRIER || a->stage == stage) {
            *out = *a;
            out->with_next = 0;
            ++*i;
            return 1;
        }
    }
    return 0;
}

static void view_destroy(pp_stream *st)
{
    stage_view *v = st->state;
    pp_schedule_free(&v->s);
    free(v->pos);
    free(v);
    free(st);
}

int pp_stream_stage_view(pp_stream *src, pp_stream **out, pp_err *e)
{
    stage_view *v = calloc(1, sizeof *v);
    pp_stream *st = calloc(1, sizeof *st);
    if (!v || !st) {
        free(v);
        free(st);
        return pp_errf(e, "out of memory");
    }
    if (pp_schedule_from_stream(src, &v->s, e) < 0) {
        free(v);
        free(st);
        return -1;
    }
    if (!(v->pos = calloc((size_t)v->s.info.stages, sizeof *v->pos))) {
        st->state = v;
        view_destroy(st);
        return pp_errf(e, "out of memory");
    }
    st->info = v->s.info;
    st->info.ranks = st->info.stages; /* each stage read as its own rank */
    st->info.placement = PP_PLACE_ONE;
    st->next = view_next;
    st->destroy = view_destroy;
    st->state = v;
    *out = st;
    return 0;
}
