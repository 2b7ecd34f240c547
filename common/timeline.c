#include "timeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"

int pp_timeline_init(pp_timeline *t, const pp_ir_info *info, pp_err *e)
{
    memset(t, 0, sizeof *t);
    if (info->stages < 1)
        return pp_errf(e, "timeline needs at least 1 stage, got %d", info->stages);
    t->info = *info;
    if (pp_info_check_placement(&t->info, e) < 0)
        return -1;
    snprintf(t->source, sizeof t->source, "simulated");
    snprintf(t->unit, sizeof t->unit, "units");
    t->us_per_unit = 1000.0; /* one unit shown as one millisecond */
    t->stage = calloc((size_t)info->stages, sizeof *t->stage);
    t->mem = calloc((size_t)info->stages, sizeof *t->mem);
    if (!t->stage || !t->mem) {
        pp_timeline_free(t);
        return pp_errf(e, "out of memory");
    }
    return 0;
}

void pp_timeline_free(pp_timeline *t)
{
    for (int s = 0; t->stage && s < t->info.stages; s++)
        free(t->stage[s].items);
    for (int s = 0; t->mem && s < t->info.stages; s++)
        free(t->mem[s].items);
    free(t->stage);
    free(t->mem);
    free(t->transfers);
    memset(t, 0, sizeof *t);
}

/* Makes room for one more element of size `size` in a doubling array. */
static int grow(void **items, size_t count, size_t *cap, size_t size)
{
    if (count < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 64;
    if (ncap > SIZE_MAX / size)
        return -1;
    void *p = realloc(*items, ncap * size);
    if (!p)
        return -1;
    *items = p;
    *cap = ncap;
    return 0;
}

int pp_timeline_add_action(pp_timeline *t, int stage, const pp_timed_action *a)
{
    if (stage < 0 || stage >= t->info.stages)
        return -1;
    pp_timed_list *l = &t->stage[stage];
    if (grow((void **)&l->items, l->count, &l->cap, sizeof *l->items) < 0)
        return -1;
    l->items[l->count++] = *a;
    return 0;
}

int pp_timeline_add_mem(pp_timeline *t, int stage, const pp_mem_sample *m)
{
    if (stage < 0 || stage >= t->info.stages)
        return -1;
    pp_mem_list *l = &t->mem[stage];
    if (grow((void **)&l->items, l->count, &l->cap, sizeof *l->items) < 0)
        return -1;
    l->items[l->count++] = *m;
    return 0;
}

int pp_timeline_add_transfer(pp_timeline *t, const pp_transfer *x)
{
    if (grow((void **)&t->transfers, t->ntransfers, &t->transfers_cap, sizeof *t->transfers) < 0)
        return -1;
    t->transfers[t->ntransfers++] = *x;
    return 0;
}

static int is_mb_op(int op)
{
    return op == PP_OP_F || op == PP_OP_B || op == PP_OP_I || op == PP_OP_W;
}

/* Largest micro-batch id among the stage's F/B/I/W actions, -1 if none. */
static long max_mb(const pp_timed_list *l)
{
    long m = -1;
    for (size_t i = 0; i < l->count; i++)
        if (is_mb_op(l->items[i].act.op) && l->items[i].act.mb > m)
            m = l->items[i].act.mb;
    return m;
}

int pp_timeline_f_versions(const pp_timeline *t, int stage, int32_t **v, size_t *n)
{
    const pp_timed_list *l = &t->stage[stage];
    size_t len = (size_t)(max_mb(l) + 1);
    *v = malloc((len ? len : 1) * sizeof **v);
    *n = len;
    if (!*v)
        return -1;
    for (size_t i = 0; i < len; i++)
        (*v)[i] = -1;
    for (size_t i = 0; i < l->count; i++)
        if (l->items[i].act.op == PP_OP_F && l->items[i].act.mb >= 0)
            (*v)[l->items[i].act.mb] = l->items[i].version;
    return 0;
}

/* Folds one action into its micro-batch's row. */
static void fill_row(pp_mb_row *r, const pp_timed_action *a)
{
    switch (a->act.op) {
    case PP_OP_F:
        r->v_f = a->version;
        r->f_start = a->start;
        r->f_end = a->end;
        break;
    case PP_OP_B:
        r->v_b = a->version;
        r->b_start = a->start;
        r->b_end = a->end;
        break;
    case PP_OP_I: /* the input-grad half reads the weights drift is about */
        r->v_b = a->version;
        r->b_start = a->start;
        break;
    case PP_OP_W:
        r->b_end = a->end;
        break;
    default:
        break;
    }
}

/* Appends the stage's rows to rows[*n..]: a dense slot per micro-batch id
 * keeps them in id order without sorting, then empty slots are dropped. */
static int stage_rows(const pp_timeline *t, int s, pp_mb_row **rows, size_t *n, size_t *cap)
{
    const pp_timed_list *l = &t->stage[s];
    size_t len = (size_t)(max_mb(l) + 1), base = *n;
    while (*cap < base + len) {
        size_t ncap = *cap ? *cap * 2 : 256;
        pp_mb_row *p = realloc(*rows, ncap * sizeof *p);
        if (!p)
            return -1;
        *rows = p;
        *cap = ncap;
    }
    unsigned char *seen = calloc(len ? len : 1, 1);
    if (!seen)
        return -1;
    for (size_t i = 0; i < len; i++)
        (*rows)[base + i] = (pp_mb_row){s, (int)i, -1, -1, NAN, NAN, NAN, NAN};
    for (size_t i = 0; i < l->count; i++) {
        const pp_timed_action *a = &l->items[i];
        if (!is_mb_op(a->act.op) || a->act.mb < 0)
            continue;
        fill_row(&(*rows)[base + (size_t)a->act.mb], a);
        seen[a->act.mb] = 1;
    }
    size_t k = base;
    for (size_t i = 0; i < len; i++)
        if (seen[i])
            (*rows)[k++] = (*rows)[base + i];
    *n = k;
    free(seen);
    return 0;
}

int pp_timeline_mb_rows(const pp_timeline *t, pp_mb_row **rows, size_t *n, pp_err *e)
{
    size_t cap = 0;
    *rows = NULL;
    *n = 0;
    for (int s = 0; s < t->info.stages; s++) {
        if (stage_rows(t, s, rows, n, &cap) < 0) {
            free(*rows);
            *rows = NULL;
            *n = 0;
            return pp_errf(e, "out of memory");
        }
    }
    return 0;
}

/* A missing value is an empty cell, so spreadsheets do not read it as 0. */
static void put_int(FILE *f, int v)
{
    if (v >= 0)
        fprintf(f, "%d", v);
}

static void put_time(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.9g", v);
}

int pp_mb_csv_write(FILE *f, const pp_mb_row *rows, size_t n)
{
    fputs("stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,b_end\n", f);
    for (size_t i = 0; i < n; i++) {
        const pp_mb_row *r = &rows[i];
        fprintf(f, "%d,%d,", r->stage, r->mb);
        put_int(f, r->v_f);
        fputc(',', f);
        put_int(f, r->v_b);
        fputc(',', f);
        if (r->v_f >= 0 && r->v_b >= 0)
            fprintf(f, "%d", r->v_b - r->v_f);
        const double times[4] = {r->f_start, r->f_end, r->b_start, r->b_end};
        for (int k = 0; k < 4; k++) {
            fputc(',', f);
            put_time(f, times[k]);
        }
        fputc('\n', f);
    }
    return ferror(f) ? -1 : 0;
}

int pp_mb_csv_save(const char *path, const pp_timeline *t, pp_err *e)
{
    pp_mb_row *rows;
    size_t n;
    if (pp_timeline_mb_rows(t, &rows, &n, e) < 0)
        return -1;
    pp_atomic_file af;
    if (pp_atomic_open(&af, path, e) < 0) {
        free(rows);
        return -1;
    }
    if (pp_mb_csv_write(af.f, rows, n) < 0) {
        free(rows);
        pp_atomic_abort(&af);
        return pp_errf(e, "%s: write failed", path);
    }
    free(rows);
    return pp_atomic_commit(&af, e);
}
