/* pprun's checkpoints: DIR/checkpoint.ckpt holds a run record and one
 * state blob per stage (the runtime serialises the stages at consistent
 * cuts, runtime/cut.h); a resume must run the very same IR and model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pprun.h"

/* FNV-1a over the action lists: a resume must run the very same IR. With
 * several stages per rank each action's stage and overlap flag count too
 * (one stage per rank hashes as before ranks existed). */
uint64_t pprun_ir_hash(const pp_schedule *ir)
{
    uint64_t h = 1469598103934665603ULL;
    int multi = pp_multi_stage(&ir->info);
    for (int r = 0; r < ir->info.ranks; r++)
        for (size_t i = 0; i < ir->rank[r].count; i++) {
            const pp_action *a = &ir->rank[r].items[i];
            int32_t v[6] = {a->op, a->sel, a->mb, a->version, a->stage, a->with_next};
            const unsigned char *p = (const unsigned char *)v;
            for (size_t k = 0; k < (multi ? 6 : 4) * sizeof v[0]; k++)
                h = (h ^ p[k]) * 1099511628211ULL;
        }
    return h;
}

/* The rotated sides, which shape adamw-rotated's state; "none" for the
 * other optimizers. */
static const char *sides_of(const pp_optim_config *c)
{
    return c->kind == PP_OPTIM_ADAMW_ROTATED ? pp_rotate_sides_name(c->rotate_sides) : "none";
}

int pprun_write_checkpoint(void *ctx, int K, void **blobs, size_t *sizes, double tokens,
                           pp_err *e)
{
    ckpt_ctx *c = ctx;
    pp_ckpt_writer w;
    if (pp_ckpt_writer_open(&w, c->dir, PPRUN_CKPT_NAME, &c->shape, e) < 0)
        return -1;
    char run[896];
    int n = snprintf(run, sizeof run,
                     "{\"schedule\": \"%s\", \"stages\": %d, \"microbatches_per_step\": %d, "
                     "\"steps\": %d, \"update\": %d, \"tokens\": %.0f, \"ir_hash\": \"%016llx\", "
                     "\"seed\": %llu, \"data_order\": \"%s\", \"data_seed\": \"%016llx\", "
                     "\"micro_batch\": %d, \"optimizer\": \"%s\", \"delay_correction\": %.9g, "
                     "\"rotate_sides\": \"%s\"}",
                     c->ir->info.name, c->ir->info.stages, c->ir->info.microbatches_per_step,
                     c->ir->info.steps, K, tokens, (unsigned long long)c->ir_hash,
                     (unsigned long long)c->seed, pp_data_order_name(c->data->order),
                     (unsigned long long)c->data->seed, c->data->B, pp_optim_name(c->optim->kind),
                     c->optim->delay_buffer ? c->optim->delay_beta : 0.0, sides_of(c->optim));
    if (pp_ckpt_writer_add(&w, "run.json", run, (size_t)n, e) < 0)
        goto fail;
    for (int s = 0; s < c->ir->info.stages; s++) {
        char name[32];
        snprintf(name, sizeof name, "stage%d", s);
        if (pp_ckpt_writer_add(&w, name, blobs[s], sizes[s], e) < 0)
            goto fail;
    }
    if (pp_ckpt_writer_commit(&w, e) < 0)
        return -1;
    fprintf(stderr, "%spprun: checkpoint after update %d in %s/%s\n", isatty(2) ? "\n" : "", K,
            c->dir, PPRUN_CKPT_NAME);
    return 0;
fail:
    pp_ckpt_writer_abort(&w);
    return -1;
}

/* The value after "key": in the run record, or NULL. */
static const char *field(const char *run, const char *key)
{
    char pat[40];
    int n = snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(run, pat);
    return p ? p + n : NULL;
}

/* The resumed run must draw the batches the checkpointed one would have:
 * the same micro-batch size, data order and data seed. A record without
 * them was written before they were recorded, when the order was
 * sequential; its seed and micro-batch size are not compared (the stage
 * state's size still is). */
static int check_data(const char *dir, const char *run, const ckpt_ctx *want, pp_err *e)
{
    const char *mb = field(run, "micro_batch");
    if (mb && atoi(mb) != want->data->B)
        return pp_errf(e, "%s: checkpoint was written with --micro-batch-size %d, this run has "
                          "%d; resume with the same size", dir, atoi(mb), want->data->B);
    char order[16] = "sequential", seed[24] = "?";
    const char *o = field(run, "data_order"), *ds = field(run, "data_seed");
    const char *sd = field(run, "seed");
    if (o)
        sscanf(o, "\"%15[^\"]", order);
    if (sd)
        sscanf(sd, "%23[0-9]", seed);
    const char *mine = pp_data_order_name(want->data->order);
    if (strcmp(order, mine))
        return pp_errf(e, "%s: checkpoint was written with --data-order %s%s, this run has "
                          "--data-order %s; resume with the same order", dir, order,
                       o ? "" : " (a record from before the option)", mine);
    if (ds && strtoull(ds + 1, NULL, 16) != want->data->seed)
        return pp_errf(e, "%s: checkpoint was written with --seed %s, this run has --seed %llu; "
                          "resume with the same --seed (it draws the data)", dir, seed,
                       (unsigned long long)want->seed);
    return 0;
}

/* The stage states hold the checkpointed run's optimizer state: the
 * resumed run must have the same optimizer, adamw-rotated the same
 * sides, and the delay correction's buffer on or off as it was (its beta,
 * like the other hyperparameters, may change). A record without them is
 * AdamW's. */
static int check_optimizer(const char *dir, const char *run, const ckpt_ctx *want, pp_err *e)
{
    char name[32] = "adamw";
    const char *o = field(run, "optimizer"), *dc = field(run, "delay_correction");
    if (o)
        sscanf(o, "\"%31[^\"]", name);
    double beta = dc ? strtod(dc, NULL) : 0.0;
    const pp_optim_config *c = want->optim;
    const char *mine = pp_optim_name(c->kind);
    if (strcmp(name, mine))
        return pp_errf(e, "%s: checkpoint was written with --optimizer %s, this run has "
                          "--optimizer %s; resume with the same optimizer", dir, name, mine);
    char sides[16] = "none";
    const char *rs = field(run, "rotate_sides");
    if (rs)
        sscanf(rs, "\"%15[^\"]", sides);
    if (strcmp(sides, sides_of(c)))
        return pp_errf(e, "%s: checkpoint was written with --rotate-sides %s, this run has "
                          "--rotate-sides %s; resume with the same sides (they shape the "
                          "rotation's state)", dir, sides, sides_of(c));
    if ((beta != 0) != (c->delay_buffer != 0))
        return pp_errf(e, "%s: checkpoint was written with --delay-correction %g, this run has "
                          "--delay-correction %g; resume with it %s (its state keeps the last "
                          "update)", dir, beta, c->delay_buffer ? c->delay_beta : 0.0,
                       beta != 0 ? "on" : "off");
    return 0;
}

/* The run record's "update" and "tokens": a checkpoint is written after
 * update K, 1 <= K < steps, having trained a finite count of tokens. The
 * cuts still ahead are planned from K, so a damaged or crafted K outside
 * overflowed (INT_MAX) or planned a cut for every K from far below 1. */
static int record_numbers(const char *u, const char *t, int steps, int *update, double *tokens)
{
    char *end;
    long k = u ? strtol(u, &end, 10) : 0;
    if (!u || end == u || k < 1 || k >= steps)
        return -1;
    double n = t ? strtod(t, &end) : -1;
    if (!t || end == t || !(n >= 0) || !isfinite(n))
        return -1;
    *update = (int)k;
    *tokens = n;
    return 0;
}

/* Reads --resume DIR: checks model shape, IR and data order and seed,
 * returns per-stage blobs. */
int pprun_read_checkpoint(const char *dir, const ckpt_ctx *want, void ***blobs, size_t **sizes,
                          double *tokens, int *update, pp_err *e)
{
    pp_ckpt_reader r;
    if (pp_ckpt_open(&r, dir, PPRUN_CKPT_NAME, e) < 0)
        return -1;
    int P = want->ir->info.stages, rc = pp_ckpt_check_shape(&r, &want->shape, e);
    char *run = NULL;
    size_t n;
    if (rc == 0)
        rc = pp_ckpt_read_alloc(&r, "run.json", (void **)&run, &n, e);
    char hash[32];
    snprintf(hash, sizeof hash, "\"%016llx\"", (unsigned long long)want->ir_hash);
    if (rc == 0 && !strstr(run, hash))
        rc = pp_errf(e, "%s: checkpoint was written by another schedule (%s); resume with the "
                        "same --schedule/--stages/--microbatches/--steps", dir, run);
    if (rc == 0)
        rc = check_data(dir, run, want, e);
    if (rc == 0)
        rc = check_optimizer(dir, run, want, e);
    const char *u = rc == 0 ? field(run, "update") : NULL;
    const char *t = rc == 0 ? field(run, "tokens") : NULL;
    if (rc == 0 && record_numbers(u, t, want->ir->info.steps, update, tokens) < 0)
        rc = pp_errf(e, "%s: checkpoint run record is damaged (\"update\" must be 1..%d, "
                        "\"tokens\" a count)", dir, want->ir->info.steps - 1);
    if (rc == 0) {
        *blobs = calloc((size_t)P, sizeof **blobs);
        *sizes = calloc((size_t)P, sizeof **sizes);
        if (!*blobs || !*sizes)
            rc = pp_errf(e, "out of memory");
    }
    for (int s = 0; rc == 0 && s < P; s++) {
        char name[32];
        snprintf(name, sizeof name, "stage%d", s);
        rc = pp_ckpt_read_alloc(&r, name, &(*blobs)[s], &(*sizes)[s], e);
    }
    free(run);
    pp_ckpt_close(&r);
    return rc;
}

/* Cuts at every K-th update and at --stop-after. */
int pprun_plan_cuts(const pp_cli_opts *o, const pp_schedule *ir, int first_update,
                    pp_cut **cuts, int *ncuts, int *stop_cut, pp_err *e)
{
    *cuts = NULL;
    *ncuts = 0;
    *stop_cut = -1;
    if (!o->run.checkpoint) {
        if (o->run.checkpoint_every || o->run.stop_after)
            return pp_errf(e, "--checkpoint-every and --stop-after need --checkpoint DIR");
        return 0;
    }
    int S = ir->info.steps, cap = 0;
    for (int K = first_update + 1; K < S; K++) {
        int every = o->run.checkpoint_every && K % o->run.checkpoint_every == 0;
        if (!every && K != o->run.stop_after)
            continue;
        if (*ncuts == cap) {
            cap = cap ? cap * 2 : 8;
            pp_cut *x = realloc(*cuts, (size_t)cap * sizeof *x);
            if (!x)
                return pp_errf(e, "out of memory");
            *cuts = x;
        }
        if (pp_cut_plan(ir, K, &(*cuts)[*ncuts], e) < 0)
            return -1;
        if (K == o->run.stop_after)
            *stop_cut = *ncuts;
        (*ncuts)++;
    }
    if (o->run.stop_after && *stop_cut < 0)
        return pp_errf(e, "--stop-after %d: must be between %d and %d updates", o->run.stop_after,
                       first_update + 1, S - 1);
    if (!*ncuts)
        return pp_errf(e, "--checkpoint: give --checkpoint-every K or --stop-after K (below %d)", S);
    return 0;
}
