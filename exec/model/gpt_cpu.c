/* A CPU GPT stage: its parameter table, setup, weight initialisation and
 * optimizer step. The forward and backward passes over the stage's buffers
 * are gpt_cpu_passes.c's, the layer kernels gpt_cpu_layers.c's. */
#include "gpt_cpu.h"

#include "gpt_cpu_passes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TWO_PI 6.283185307179586

/* ------------------------------------------------------------------ */
/* Stage setup and initialisation.                                     */
/* ------------------------------------------------------------------ */

static size_t add_tensor(pp_gpt_stage *g, size_t *off, const char *name, pp_gpt_kind kind,
                         int block, int rows, int cols)
{
    pp_gpt_tensor *t = &g->tensors[g->ntensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->block = block;
    t->offset = *off;
    t->rows = rows;
    t->cols = cols;
    t->numel = (size_t)rows * cols;
    t->decay = cols > 1; /* 2-D matrices only */
    *off += t->numel;
    return t->offset;
}

static size_t add_block_tensor(pp_gpt_stage *g, size_t *off, int block, const char *suffix,
                               pp_gpt_kind kind, int rows, int cols)
{
    char name[32];
    snprintf(name, sizeof name, "h%d.%s", block, suffix);
    return add_tensor(g, off, name, kind, block, rows, cols);
}

static void add_block(pp_gpt_stage *g, size_t *off, int l)
{
    int C = g->C, blk = g->first_block + l;
    pp_gpt_block_offsets *b = &g->blocks[l];
    b->ln1_w = add_block_tensor(g, off, blk, "ln1_w", PP_GPT_LN1_W, C, 1);
    b->ln1_b = add_block_tensor(g, off, blk, "ln1_b", PP_GPT_LN1_B, C, 1);
    b->qkv_w = add_block_tensor(g, off, blk, "qkv_w", PP_GPT_QKV_W, 3 * C, C);
    b->qkv_b = add_block_tensor(g, off, blk, "qkv_b", PP_GPT_QKV_B, 3 * C, 1);
    b->attn_w = add_block_tensor(g, off, blk, "attn_w", PP_GPT_ATTN_W, C, C);
    b->attn_b = add_block_tensor(g, off, blk, "attn_b", PP_GPT_ATTN_B, C, 1);
    b->ln2_w = add_block_tensor(g, off, blk, "ln2_w", PP_GPT_LN2_W, C, 1);
    b->ln2_b = add_block_tensor(g, off, blk, "ln2_b", PP_GPT_LN2_B, C, 1);
    b->fc_w = add_block_tensor(g, off, blk, "fc_w", PP_GPT_FC_W, 4 * C, C);
    b->fc_b = add_block_tensor(g, off, blk, "fc_b", PP_GPT_FC_B, 4 * C, 1);
    b->proj_w = add_block_tensor(g, off, blk, "proj_w", PP_GPT_PROJ_W, C, 4 * C);
    b->proj_b = add_block_tensor(g, off, blk, "proj_b", PP_GPT_PROJ_B, C, 1);
}

static void build_tensor_table(pp_gpt_stage *g)
{
    size_t off = 0;
    if (g->is_first) {
        g->wte = add_tensor(g, &off, "wte", PP_GPT_WTE, -1, g->V, g->C);
        g->wpe = add_tensor(g, &off, "wpe", PP_GPT_WPE, -1, g->T, g->C);
    }
    for (int l = 0; l < g->nblocks; l++)
        add_block(g, &off, l);
    if (g->is_last) {
        g->lnf_w = add_tensor(g, &off, "lnf_w", PP_GPT_LNF_W, -1, g->C, 1);
        g->lnf_b = add_tensor(g, &off, "lnf_b", PP_GPT_LNF_B, -1, g->C, 1);
        g->head_w = add_tensor(g, &off, "head_w", PP_GPT_HEAD_W, -1, g->V, g->C);
    }
    g->nparams = off;
}

static int check_sizes(const pp_model_desc *m, int P, int s, pp_err *e)
{
    if (pp_model_check(m, P, e) != 0)
        return -1;
    if (P < 1 || s < 0 || s >= P)
        return pp_errf(e, "stage %d out of range for %d stages", s, P);
    /* Token ids are kept as floats in the activation buffer. */
    if (m->vocab > (1 << 24))
        return pp_errf(e, "vocab %d too large for the CPU executor (max %d)", m->vocab,
                       1 << 24);
    return 0;
}

int pp_gpt_stage_init(pp_gpt_stage *g, const pp_model_desc *m, int P, int s, pp_err *e)
{
    memset(g, 0, sizeof *g);
    if (check_sizes(m, P, s, e) != 0)
        return -1;
    g->model = *m;
    g->P = P;
    g->s = s;
    pp_model_stage_blocks(m, P, s, &g->first_block, &g->nblocks);
    g->is_first = s == 0;
    g->is_last = s == P - 1;
    g->B = m->micro_batch;
    g->T = m->seq_len;
    g->C = m->dim;
    g->H = m->heads;
    g->V = m->vocab;
    g->tensors = calloc((size_t)g->nblocks * 12 + 5, sizeof *g->tensors);
    g->blocks = calloc((size_t)g->nblocks, sizeof *g->blocks);
    if (!g->tensors || !g->blocks)
        goto oom;
    build_tensor_table(g);
    g->acts_floats = pp_gpt_layout_acts_floats(g);
    g->gacts_floats = pp_gpt_layout_gacts_floats(g);
    g->scratch = malloc(pp_gpt_layout_scratch_floats(g) * sizeof *g->scratch);
    g->gacts_scratch = malloc(g->gacts_floats * sizeof *g->gacts_scratch);
    if (!g->scratch || !g->gacts_scratch)
        goto oom;
    return 0;
oom:
    pp_gpt_stage_free(g);
    return pp_errf(e, "out of memory setting up stage %d of %d", s, P);
}

int pp_gpt_stage_set_threads(pp_gpt_stage *g, int threads, pp_err *e)
{
    pp_pool_free(g->pool);
    g->pool = NULL;
    if (threads > 1 && pp_pool_create(threads, &g->pool, e) < 0)
        return -1;
    /* each team member has its own attention scratch */
    float *scratch = realloc(g->scratch, pp_gpt_layout_scratch_floats(g) * sizeof *scratch);
    if (!scratch)
        return pp_errf(e, "out of memory for the scratch of %d threads", threads);
    g->scratch = scratch;
    return 0;
}

void pp_gpt_stage_free(pp_gpt_stage *g)
{
    pp_pool_free(g->pool);
    free(g->tensors);
    free(g->blocks);
    free(g->scratch);
    free(g->gacts_scratch);
    memset(g, 0, sizeof *g);
}

const pp_gpt_tensor *pp_gpt_stage_find(const pp_gpt_stage *g, const char *name)
{
    for (int i = 0; i < g->ntensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}

size_t pp_gpt_acts_floats(const pp_gpt_stage *g)
{
    return g->acts_floats;
}

size_t pp_gpt_gacts_floats(const pp_gpt_stage *g)
{
    return g->gacts_floats;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1): never 0, so log() below is finite. */
static double uniform01(uint64_t *state)
{
    return ((double)(splitmix64(state) >> 11) + 0.5) * 0x1.0p-53;
}

/* One stream per tensor: the seed mixed with an FNV-1a hash of the name. */
static uint64_t tensor_stream(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    uint64_t state = seed ^ h;
    splitmix64(&state);
    return state;
}

/* Box-Muller, both outputs used, in element order. */
static void fill_normal(float *x, size_t n, double std, uint64_t state)
{
    for (size_t i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(uniform01(&state)));
        double th = TWO_PI * uniform01(&state);
        x[i] = (float)(std * r * cos(th));
        if (i + 1 < n)
            x[i + 1] = (float)(std * r * sin(th));
    }
}

static void fill_const(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

void pp_gpt_stage_init_weights(const pp_gpt_stage *g, float *w, uint64_t seed)
{
    /* GPT-2: residual projections shrink with depth so the residual stream
     * keeps its scale. */
    double std = 0.02, resid_std = 0.02 / sqrt(2.0 * g->model.layers);
    for (int i = 0; i < g->ntensors; i++) {
        const pp_gpt_tensor *t = &g->tensors[i];
        float *x = w + t->offset;
        switch (t->kind) {
        case PP_GPT_LN1_W:
        case PP_GPT_LN2_W:
        case PP_GPT_LNF_W:
            fill_const(x, t->numel, 1.0f);
            break;
        case PP_GPT_ATTN_W:
        case PP_GPT_PROJ_W:
            fill_normal(x, t->numel, resid_std, tensor_stream(seed, t->name));
            break;
        default:
            if (t->decay)
                fill_normal(x, t->numel, std, tensor_stream(seed, t->name));
            else
                fill_const(x, t->numel, 0.0f);
        }
    }
}

typedef struct {
    const pp_gpt_stage *g;
    const pp_adamw *o;
    const size_t *at;
    float *w;
    const float *grad;
    float lr;
    float *prev;
    float beta;
} adamw_job;

#define ADAMW_BLOCK 16384 /* parameters per unit of work */

/* Parameters [lo, hi) blocks, tensor by tensor (each has its decay flag).
 * AdamW is elementwise: the bits do not depend on the blocks or threads. */
static void adamw_part(void *ctx, int lo, int hi, int part)
{
    (void)part;
    const adamw_job *j = ctx;
    size_t a = (size_t)lo * ADAMW_BLOCK, b = (size_t)hi * ADAMW_BLOCK;
    for (int i = 0; i < j->g->ntensors; i++) {
        const pp_gpt_tensor *t = &j->g->tensors[i];
        size_t at = j->at ? j->at[i] : t->offset;
        size_t from = t->offset > a ? t->offset : a, to = t->offset + t->numel;
        if (to > b)
            to = b;
        if (from >= to || at == PP_GPT_NO_STATE)
            continue;
        size_t k = at + (from - t->offset); /* the state of parameter `from` */
        pp_adamw_apply(&j->o->hp, j->o->t, j->o->m + k, j->o->v + k, j->w + from,
                       j->grad + from, to - from, t->decay, j->lr, j->prev ? j->prev + from : NULL,
                       j->beta);
    }
}

void pp_gpt_adamw_tensors(const pp_gpt_stage *g, const pp_adamw *o, const size_t *at, float *w,
                          const float *grad, float lr, float *prev, float beta)
{
    adamw_job j = {g, o, at, w, grad, lr, prev, beta};
    pp_pool_run(g->pool, (int)((g->nparams + ADAMW_BLOCK - 1) / ADAMW_BLOCK), adamw_part, &j);
}

void pp_gpt_adamw_step(const pp_gpt_stage *g, pp_adamw *o, float *w, const float *grad,
                       float lr)
{
    pp_adamw_begin_step(o);
    pp_gpt_adamw_tensors(g, o, NULL, w, grad, lr, NULL, 0.0f);
}
