/* ppsim: simulate pipeline-parallel schedules and compare them (DESIGN §7). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "optim_cost.h"
#include "registry.h"
#include "report.h"
#include "timeline.h"

#define EXIT_BAD_INPUT 2

static const char usage[] =
    "usage: ppsim COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  list                          one line per schedule: name, description\n"
    "  run --schedule NAME [opts]    simulate one schedule and print its report\n"
    "  run --ir FILE | --pytorch-csv FILE   simulate a schedule from a file\n"
    "  compare [--schedules a,b,..]  one row per schedule, side by side\n"
    "  export --schedule NAME -o FILE   write the IR as JSON (or a --pytorch-csv's)\n"
    "                                   (--format pytorch-csv: as PyTorch reads it)\n"
    "  validate FILE | --pytorch-csv FILE   check a schedule file\n"
    "\n";

static void print_usage(FILE *f)
{
    fputs(usage, f);
    pp_cli_help(f, PP_TOOL_SIM);
    fputs("\nDefaults: P=8, M=8, S=16, gpt2-medium memory model, F=1 B=2 time units.\n", f);
}

static int fail(const pp_err *e)
{
    pp_err_print(stderr, "ppsim", e);
    return EXIT_BAD_INPUT;
}

/* Parses the options of a command; -1 on error. */
static int parse_options(pp_cli_opts *o, int argc, char **argv, int first, const char **positional,
                         pp_err *e)
{
    for (int i = first; i < argc; i++) {
        int r = pp_cli_option(o, PP_TOOL_SIM, argc, argv, &i, e);
        if (r < 0)
            return -1;
        if (r > 0)
            continue;
        if (!positional || *positional)
            return pp_errf(e, "unexpected argument \"%s\"", argv[i]);
        *positional = argv[i];
    }
    return 0;
}

/* The schedule to simulate, as a stream. Full mode (or a file) keeps the
 * whole IR in *held and validates it first; summary mode streams the
 * generator and lets the engine check it as it runs. */
/* The schedule from a file or a generator. In a comparison (`compare`),
 * --chunks goes to the generators that take it and the others keep one
 * stage per rank, so that 1F1B-flush can sit beside interleaved 1F1B. */
static int open_schedule(const pp_cli_opts *o, const char *name, int full, int compare,
                         pp_schedule *held, int *have_held, pp_stream **st, pp_err *e)
{
    *have_held = 0;
    int r = pp_cli_load_ir(o, held, e);
    if (r < 0)
        return -1;
    if (r == 0) {
        *have_held = 1;
        return pp_stream_from_schedule(held, st, e);
    }
    if (!name)
        return pp_errf(e, "give --schedule NAME (%s), --ir FILE or --pytorch-csv FILE",
                       pp_generator_names());
    pp_gen_opts gen = o->gen;
    const pp_generator *g = pp_generator_find(name);
    if (compare && g && !g->chunked)
        gen.chunks = 0;
    if (!full)
        return pp_generate(name, &gen, st, e);
    if (pp_generate_schedule(name, &gen, held, e) < 0)
        return -1;
    *have_held = 1;
    if (pp_schedule_validate(held, e) < 0)
        return pp_err_prefix(e, "generated %s", name);
    return pp_stream_from_schedule(held, st, e);
}

/* The progress line on a terminal, for runs longer than two seconds. */
typedef struct {
    const char *name;
    double t0, last;
    int shown;
} progress;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void show_progress(void *ctx, uint64_t done, uint64_t total)
{
    progress *p = ctx;
    double t = now_s();
    if (t - p->t0 < 2.0 || t - p->last < 0.5)
        return;
    double frac = total ? (double)done / (double)total : 0;
    double eta = frac > 0 ? (t - p->t0) * (1 - frac) / frac : 0;
    fprintf(stderr, "\rppsim: simulating %s: %3.0f%% of %.3g M actions, ETA %.0f s   ",
            p->name, 100.0 * frac, total / 1e6, eta);
    p->last = t;
    p->shown = 1;
}

/* Simulates one schedule; fills *m (and *tl when tl is not NULL). With
 * `per_rank_costs` (compare), --fwd and --bwd are a rank's share of the
 * model: a schedule with V stages per rank gives each chunk 1/V of them,
 * so that every row of a comparison runs the same model on the same
 * ranks. */
static int simulate(const pp_cli_opts *o, const char *name, int per_rank_costs,
                    pp_model_desc *model, pp_metrics *m, pp_timeline *tl, pp_err *e)
{
    pp_schedule held;
    int have_held = 0, rc = -1;
    pp_stream *st = NULL;
    pp_cost cost;
    int have_cost = 0;
    if (open_schedule(o, name, tl != NULL, per_rank_costs, &held, &have_held, &st, e) < 0)
        goto out;
    int P = st->info.stages;
    if (pp_cli_model(o, P, model, e) < 0 || pp_cli_cost(o, P, model, &cost, e) < 0)
        goto out;
    have_cost = 1;
    if (per_rank_costs && pp_info_check_placement(&st->info, e) == 0 && st->info.ranks < P)
        for (int s = 0; s < P; s++) {
            double share = (double)st->info.ranks / P;
            cost.fwd[s] *= share;
            cost.bwd[s] *= share;
            cost.inp[s] *= share;
            cost.wgt[s] *= share;
        }
    const char *rc_param = pp_info_get_param(&st->info, "recompute");
    int recompute = o->gen.recompute || (rc_param && strcmp(rc_param, "1") == 0);
    if (tl) {
        if (pp_timeline_init(tl, &st->info, e) < 0)
            goto out;
        snprintf(tl->source, sizeof tl->source, "simulated");
        snprintf(tl->unit, sizeof tl->unit, "%s", cost.unit);
        tl->us_per_unit = strcmp(cost.unit, "s") == 0 ? 1e6 : 1000.0;
    }
    progress pr = {st->info.name, now_s(), 0, 0};
    int tty = !o->sim.quiet && isatty(2);
    pp_sim_config cfg = {&cost, model, recompute, tl, tty ? show_progress : NULL, &pr};
    rc = pp_simulate(st, &cfg, m, e);
    if (pr.shown) /* the line goes; the report follows */
        fprintf(stderr, "\r%*s\r", 79, "");
    if (rc < 0 && tl)
        pp_timeline_free(tl);
out:
    if (st)
        pp_stream_free(st);
    if (have_held)
        pp_schedule_free(&held);
    if (have_cost)
        pp_cost_free(&cost);
    return rc;
}

static void print_report(const pp_cli_opts *o, const pp_metrics *ms, int n, int compare,
                         const pp_model_desc *model)
{
    if (o->sim.format == PP_FORMAT_JSON)
        pp_report_json(stdout, ms, n, compare, model);
    else if (o->sim.format == PP_FORMAT_CSV)
        pp_report_csv(stdout, ms, n, model);
    else if (compare)
        pp_report_compare_table(stdout, ms, n, model);
    else
        pp_report_table(stdout, ms, model);
}

static int cmd_run(pp_cli_opts *o, pp_err *e)
{
    int full = o->trace || o->svg || o->sim.per_mb;
    pp_model_desc model;
    pp_metrics m;
    pp_timeline tl;
    if (simulate(o, o->schedule, 0, &model, &m, full ? &tl : NULL, e) < 0)
        return -1;
    int rc = full ? pp_cli_write_timeline(&tl, o->trace, o->svg, o->sim.per_mb, e) : 0;
    if (rc == 0)
        print_report(o, &m, 1, 0, &model);
    if (full)
        pp_timeline_free(&tl);
    pp_metrics_free(&m);
    return rc;
}

static int cmd_compare(pp_cli_opts *o, pp_err *e)
{
    if (o->ir_file || o->csv_file || o->schedule)
        return pp_errf(e, "compare takes --schedules a,b,...; use run for one schedule or a file");
    if (o->trace || o->svg || o->sim.per_mb)
        return pp_errf(e, "--trace, --svg and --per-microbatch go with run, one schedule at a time");
    char list[1024];
    snprintf(list, sizeof list, "%s", o->sim.schedules ? o->sim.schedules : "1f1b-flush,pipedream-2bw,paci");
    pp_metrics ms[16];
    pp_model_desc model;
    int n = 0, rc = 0;
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name;
         name = strtok_r(NULL, ",", &save)) {
        if (n == 16) {
            rc = pp_errf(e, "--schedules: at most 16 schedules");
            break;
        }
        if (simulate(o, name, 1, &model, &ms[n], NULL, e) < 0) {
            rc = pp_err_prefix(e, "%s", name);
            break;
        }
        n++;
    }
    if (rc == 0 && n == 0)
        rc = pp_errf(e, "--schedules: no schedule named");
    if (rc == 0)
        print_report(o, ms, n, 1, &model);
    for (int k = 0; k < n; k++)
        pp_metrics_free(&ms[k]);
    return rc;
}

static int cmd_export(pp_cli_opts *o, pp_err *e)
{
    if (!o->sim.output)
        return pp_errf(e, "export needs -o FILE");
    if (o->sim.format == PP_FORMAT_CSV)
        return pp_errf(e, "export --format: json (the IR) or pytorch-csv, not csv");
    pp_schedule s;
    int r = pp_cli_load_ir(o, &s, e);
    if (r < 0)
        return -1;
    if (r == 1) {
        if (!o->schedule)
            return pp_errf(e, "export needs --schedule NAME (%s) or a file to convert",
                           pp_generator_names());
        if (pp_generate_schedule(o->schedule, &o->gen, &s, e) < 0)
            return -1;
        if (pp_schedule_validate(&s, e) < 0) {
            pp_schedule_free(&s);
            return -1;
        }
    }
    int torch = o->sim.format == PP_FORMAT_PYTORCH_CSV;
    int rc = torch ? pp_schedule_save_pytorch_csv(&s, o->sim.output, e)
                   : pp_schedule_save_json(&s, o->sim.output, e);
    if (rc == 0)
        fprintf(stderr, "ppsim: wrote %s (%s, %d stages on %d ranks, %zu actions)\n",
                o->sim.output, s.info.name, s.info.stages, s.info.ranks,
                pp_schedule_action_count(&s));
    pp_schedule_free(&s);
    return rc;
}

static int cmd_validate(pp_cli_opts *o, const char *file, pp_err *e)
{
    if (file && !o->ir_file && !o->csv_file)
        o->ir_file = file;
    else if (file)
        return pp_errf(e, "validate takes one file");
    pp_schedule s;
    int r = pp_cli_load_ir(o, &s, e);
    if (r < 0)
        return -1;
    if (r == 1)
        return pp_errf(e, "validate needs a FILE (or --pytorch-csv FILE)");
    char ranks[64] = "";
    if (pp_multi_stage(&s.info))
        snprintf(ranks, sizeof ranks, " on %d ranks (%s placement)", s.info.ranks,
                 pp_place_name(s.info.placement));
    printf("%s: valid %s schedule: %d stages%s, m=%d, %d steps, %d micro-batches, %zu actions\n",
           o->ir_file ? o->ir_file : o->csv_file, s.info.name, s.info.stages, ranks,
           s.info.microbatches_per_step, s.info.steps, s.info.total_microbatches,
           pp_schedule_action_count(&s));
    pp_schedule_free(&s);
    return 0;
}

static void cmd_list(void)
{
    size_t n;
    const pp_generator *g = pp_generators(&n);
    for (size_t i = 0; i < n; i++)
        printf("%-17s %s\n", g[i].name, g[i].description);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        print_usage(stdout);
        return 0;
    }
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_usage(stdout);
            return 0;
        }
    pp_cli_opts o;
    pp_cli_defaults(&o, PP_TOOL_SIM);
    pp_err e = {{0}};
    const char *positional = NULL;
    int is_validate = !strcmp(cmd, "validate");
    if (parse_options(&o, argc, argv, 2, is_validate ? &positional : NULL, &e) < 0)
        return fail(&e);
    const char *outs[] = {o.trace, o.svg, o.sim.per_mb, o.sim.output};
    const char *ins[] = {o.ir_file, o.csv_file, o.profile, positional};
    if (pp_cli_check_outputs(outs, 4, NULL, 0, ins, 4, &e) < 0)
        return fail(&e);
    pp_optim_kind optimizer; /* a bad name is refused before any work */
    if (pp_optim_parse(o.optimizer, &optimizer, &e) < 0)
        return fail(&e);
    if (o.sim.format == PP_FORMAT_PYTORCH_CSV && strcmp(cmd, "export") != 0)
        return fail(&(pp_err){"--format pytorch-csv: only for export (a schedule, not a report)"});
    int rc;
    if (!strcmp(cmd, "list")) {
        cmd_list();
        rc = 0;
    } else if (!strcmp(cmd, "run")) {
        rc = cmd_run(&o, &e);
    } else if (!strcmp(cmd, "compare")) {
        rc = cmd_compare(&o, &e);
    } else if (!strcmp(cmd, "export")) {
        rc = cmd_export(&o, &e);
    } else if (is_validate) {
        rc = cmd_validate(&o, positional, &e);
    } else {
        rc = pp_errf(&e, "unknown command \"%s\" (list, run, compare, export, validate)", cmd);
    }
    return rc < 0 ? fail(&e) : 0;
}
