#include "cut.h"

#include <stdlib.h>
#include <string.h>

/* Index of each micro-batch's F and input-gradient action on one stage. */
typedef struct {
    long *f, *bi;
} positions;

static int index_stage(const pp_schedule *s, int stage, positions *p)
{
    size_t N = (size_t)s->info.total_microbatches;
    p->f = malloc((N ? N : 1) * sizeof *p->f);
    p->bi = malloc((N ? N : 1) * sizeof *p->bi);
    if (!p->f || !p->bi)
        return -1;
    for (size_t i = 0; i < N; i++)
        p->f[i] = p->bi[i] = -1;
    const pp_action_list *l = &s->rank[stage];
    for (size_t i = 0; i < l->count; i++) {
        const pp_action *a = &l->items[i];
        if (a->op == PP_OP_F)
            p->f[a->mb] = (long)i;
        else if (a->op == PP_OP_B || a->op == PP_OP_I)
            p->bi[a->mb] = (long)i;
    }
    return 0;
}

void pp_cut_free(pp_cut *cut, int P)
{
    for (int s = 0; cut->keep && s < P; s++)
        free(cut->keep[s]);
    free(cut->keep);
    free(cut->pos);
    memset(cut, 0, sizeof *cut);
}

/* Marks sends kept for the outbox; fails on a message crossing the cut
 * backwards in time. */
static int mark_link(const pp_schedule *s, pp_cut *cut, const positions *pos, int src, int dst,
                     pp_err *e)
{
    int N = s->info.total_microbatches, grad = dst < src;
    for (int mb = 0; mb < N; mb++) {
        long sent = grad ? pos[src].bi[mb] : pos[src].f[mb];
        long used = grad ? pos[dst].bi[mb] : pos[dst].f[mb];
        int sent_before = sent < (long)cut->pos[src], used_before = used < (long)cut->pos[dst];
        if (sent_before && !used_before)
            cut->keep[src][sent] = 1;
        if (!sent_before && used_before)
            return pp_errf(e, "no consistent checkpoint after update %d: stage %d uses the %s "
                              "of micro-batch %d before its cut, stage %d sends it after",
                           cut->K, dst, grad ? "gradient" : "activation", mb, src);
    }
    return 0;
}

/* With several stages per rank, each stage's own actions in its rank's
 * order: the positions of a cut count a stage's actions, as the runtime's
 * cursor of the stage does. */
static int stage_lists(const pp_schedule *s, pp_schedule *out, pp_err *e)
{
    pp_stream *st, *view;
    if (pp_stream_from_schedule(s, &st, e) < 0)
        return -1;
    int rc = pp_stream_stage_view(st, &view, e);
    pp_stream_free(st);
    if (rc < 0)
        return -1;
    rc = pp_schedule_from_stream(view, out, e);
    pp_stream_free(view);
    return rc;
}

int pp_cut_plan(const pp_schedule *s, int K, pp_cut *cut, pp_err *e)
{
    memset(cut, 0, sizeof *cut);
    if (pp_multi_stage(&s->info)) {
        for (int r = 0; r < s->info.ranks; r++)
            for (size_t i = 0; i < s->rank[r].count; i++)
                if (s->rank[r].items[i].op == PP_OP_BARRIER) /* a BARRIER counts once per rank */
                    return pp_errf(e, "checkpoints of a schedule with several stages per rank "
                                      "and BARRIERs are not supported (rank %d, action %zu)",
                                   r, i);
        pp_schedule lists;
        if (stage_lists(s, &lists, e) < 0)
            return -1;
        int rc = pp_cut_plan(&lists, K, cut, e);
        pp_schedule_free(&lists);
        return rc;
    }
    int P = s->info.stages;
    cut->K = K;
    cut->pos = calloc((size_t)P, sizeof *cut->pos);
    cut->keep = calloc((size_t)P, sizeof *cut->keep);
    positions *pos = calloc((size_t)P, sizeof *pos);
    int rc = cut->pos && cut->keep && pos ? 0 : pp_errf(e, "out of memory");
    for (int st = 0; rc == 0 && st < P; st++) {
        const pp_action_list *l = &s->rank[st];
        int opts = 0;
        size_t i = 0;
        while (i < l->count && opts < K)
            opts += l->items[i++].op == PP_OP_OPT;
        if (opts < K || i == l->count)
            rc = pp_errf(e, "--stop-after %d: stage %d has %s", K, st,
                         opts < K ? "fewer updates than that" : "nothing left after it");
        cut->pos[st] = i;
        if (rc == 0 && (!(cut->keep[st] = calloc(l->count, 1)) || index_stage(s, st, &pos[st]) < 0))
            rc = pp_errf(e, "out of memory");
    }
    for (int st = 0; rc == 0 && st + 1 < P; st++)
        if (mark_link(s, cut, pos, st, st + 1, e) < 0 || mark_link(s, cut, pos, st + 1, st, e) < 0)
            rc = -1;
    for (int st = 0; pos && st < P; st++) {
        free(pos[st].f);
        free(pos[st].bi);
    }
    free(pos);
    if (rc < 0)
        pp_cut_free(cut, P);
    return rc;
}
