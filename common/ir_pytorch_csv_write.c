/* Export of a schedule as the compute-only CSV that PyTorch's
 * torch.distributed.pipelining reads (_load_csv(path,
 * format="compute_only"); checked against PyTorch 2.15): one row per
 * rank, the rank's F, B, I and W as "<stage><op><mb>" cells in its order,
 * an overlapped pair as "(<stage>F<mb>;<stage>B<mb>)OVERLAP_F_B", rows
 * ending in CRLF as PyTorch's csv writer ends them. A PyTorch schedule is
 * one optimizer step without weight versions, so only such schedules
 * export: the OPTs at the end of the rank's list (or none), no BARRIER, no
 * weight selector. */
#include <stdio.h>

#include "atomic_file.h"
#include "ir.h"

/* Why rank r's list cannot be written, or 0. */
static int check_exportable(const pp_schedule *s, int r, pp_err *e)
{
    const pp_action_list *l = &s->rank[r];
    size_t tail = l->count; /* where the trailing OPTs begin */
    while (tail > 0 && l->items[tail - 1].op == PP_OP_OPT)
        tail--;
    for (size_t i = 0; i < l->count; i++) {
        pp_action a = l->items[i];
        const char *why = NULL;
        if (a.op == PP_OP_BARRIER)
            why = "PyTorch's schedules have no barrier";
        else if (a.op == PP_OP_OPT && i < tail)
            why = "a PyTorch schedule is one optimizer step, its update at the end (export a "
                  "synchronous schedule with --steps 1)";
        else if (a.sel != PP_SEL_LATEST)
            why = "PyTorch's schedules name no weight versions";
        if (why) {
            char text[32];
            return pp_errf(e, "%s %d, action %zu \"%s\": %s",
                           pp_multi_stage(&s->info) ? "rank" : "stage", r, i + 1,
                           pp_action_format_in(&s->info, a, text, sizeof text), why);
        }
    }
    return 0;
}

int pp_schedule_write_pytorch_csv(const pp_schedule *s, FILE *f, pp_err *e)
{
    for (int r = 0; r < s->info.ranks; r++)
        if (check_exportable(s, r, e) < 0)
            return -1;
    static const char ops[] = {'F', 'B', 'I', 'W'}; /* pp_op order */
    for (int r = 0; r < s->info.ranks; r++) {
        const pp_action_list *l = &s->rank[r];
        int first = 1;
        for (size_t i = 0; i < l->count; i++) {
            pp_action a = l->items[i];
            if (a.op == PP_OP_OPT)
                continue;
            fputs(first ? "" : ",", f);
            first = 0;
            if (a.with_next && i + 1 < l->count) {
                pp_action b = l->items[++i];
                if (b.op == PP_OP_F) { /* PyTorch writes the forward first */
                    pp_action t = a;
                    a = b;
                    b = t;
                }
                fprintf(f, "(%dF%d;%d%c%d)OVERLAP_F_B", a.stage, a.mb, b.stage, ops[b.op], b.mb);
                continue;
            }
            fprintf(f, "%d%c%d", a.stage, ops[a.op], a.mb);
        }
        fputs("\r\n", f);
    }
    return ferror(f) ? pp_errf(e, "write error") : 0;
}

static int write_csv(FILE *f, const void *s, pp_err *e)
{
    return pp_schedule_write_pytorch_csv(s, f, e);
}

int pp_schedule_save_pytorch_csv(const pp_schedule *s, const char *path, pp_err *e)
{
    return pp_atomic_save(path, write_csv, s, e);
}
