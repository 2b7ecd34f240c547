/* pprun's command line: the options (from the shared table, cli.h), and
 * the schedule and stage placement they name. */
#include <string.h>

#include "pprun.h"
#include "runtime/placement.h"

const char pprun_usage[] =
    "usage: pprun --schedule NAME --data FILE [options]\n"
    "       pprun --ir FILE --data FILE [options]\n"
    "\n"
    "Trains a GPT model with a pipeline schedule, stage by stage, and reports\n"
    "what really happened (bubble, drift, staleness per stage).\n"
    "\n";

int pprun_parse(pp_cli_opts *o, int argc, char **argv, pp_err *e)
{
    for (int i = 1; i < argc; i++) {
        int r = pp_cli_option(o, PP_TOOL_RUN, argc, argv, &i, e);
        if (r < 0)
            return -1;
        if (r == 0)
            return pp_errf(e, "unexpected argument \"%s\"", argv[i]);
    }
    return 0;
}

int pprun_check_paths(const pp_cli_opts *o, pp_err *e)
{
    const pp_run_opts *r = &o->run;
    const char *outs[] = {r->log, o->trace, o->svg, r->versions, o->profile};
    const char *dirs[] = {r->checkpoint};
    const char *ins[] = {r->data, r->data_bin, r->val_bin, o->ir_file, o->csv_file};
    return pp_cli_check_outputs(outs, 5, dirs, 1, ins, 5, e);
}

int pprun_schedule(const pp_cli_opts *o, pp_schedule *ir, pp_err *e)
{
    int r = pp_cli_load_ir(o, ir, e);
    if (r <= 0)
        return r;
    if (!o->schedule)
        return pp_errf(e, "give --schedule NAME or --ir FILE");
    if (pp_generate_schedule(o->schedule, &o->gen, ir, e) < 0)
        return -1;
    if (pp_schedule_validate(ir, e) < 0) {
        pp_schedule_free(ir);
        return -1;
    }
    return 0;
}

int pprun_placement(const pp_cli_opts *o, const pp_backend_ops *b, int P, const pp_dist_env *d,
                    pp_placement **out, pp_err *e)
{
    *out = NULL;
    const char *sm = o->run.sm_partitions;
    int partition = !sm || !strcmp(sm, "on");
    if (sm && !partition && strcmp(sm, "off"))
        return pp_errf(e, "--sm-partitions: expected on or off, not \"%s\"", sm);
    if (strcmp(b->name, "cuda")) {
        if (o->run.devices)
            return pp_errf(e, "--devices: only with --backend cuda");
        return 0;
    }
    return pp_placement_plan(o->run.devices, P, d->world > 1 ? d->local_rank : -1, partition, out,
                             e);
}
