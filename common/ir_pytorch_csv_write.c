/* Export of a schedule as the compute-only CSV that PyTorch's
 * torch.distributed.pipelining reads (_load_csv(path,
 * format="compute_only"); checked against PyTorch 2.15): one row per
 * rank, rank r = stage r, the stage's F, B, I and W as "<stage><op><mb>"
 * cells in its order, rows ending in CRLF as PyTorch's csv writer ends
 * them. A PyTorch schedule is one optimizer step without weight versions,
 * so only such schedules export: every stage's one OPT last (or none), no
 * BARRIER, no weight selector. */
#include <stdio.h>

#include "atomic_file.h"
#include "ir.h"

/* Why stage s cannot be written, or 0. */
static int check_exportable(const pp_schedule *s, int stage, pp_err *e)
{
    const pp_action_list *l = &s->stage[stage];
    for (size_t i = 0; i < l->count; i++) {
        pp_action a = l->items[i];
        const char *why = NULL;
        if (a.op == PP_OP_BARRIER)
            why = "PyTorch's schedules have no barrier";
        else if (a.op == PP_OP_OPT && i + 1 != l->count)
            why = "a PyTorch schedule is one optimizer step, its update at the end (export a "
                  "synchronous schedule with --steps 1)";
        else if (a.sel != PP_SEL_LATEST)
            why = "PyTorch's schedules name no weight versions";
        if (why) {
            char text[32];
            return pp_errf(e, "stage %d, action %zu \"%s\": %s", stage, i + 1,
                           pp_action_format(a, text, sizeof text), why);
        }
    }
    return 0;
}

int pp_schedule_write_pytorch_csv(const pp_schedule *s, FILE *f, pp_err *e)
{
    for (int st = 0; st < s->info.stages; st++)
        if (check_exportable(s, st, e) < 0)
            return -1;
    static const char ops[] = {'F', 'B', 'I', 'W'}; /* pp_op order */
    for (int st = 0; st < s->info.stages; st++) {
        const pp_action_list *l = &s->stage[st];
        int first = 1;
        for (size_t i = 0; i < l->count; i++) {
            pp_action a = l->items[i];
            if (a.op == PP_OP_OPT)
                continue;
            fprintf(f, "%s%d%c%d", first ? "" : ",", st, ops[a.op], a.mb);
            first = 0;
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
