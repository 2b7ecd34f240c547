/* A CPU stage's optimizer (cpu_optim.h): where each tensor's state lives,
 * the update (AdamW's part through gpt_cpu.c's loop, Muon's hidden
 * matrices one by one here, the rotated ones in cpu_rotated.c) and the
 * state a checkpoint saves. */
#include "cpu_optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_gemm.h"

/* The quintic's coefficients and step count (cpu_optim.h says whose). */
#define NS_A 3.4445f
#define NS_B (-4.7750f)
#define NS_C 2.0315f
#define NS_STEPS 5
#define NS_EPS 1e-7 /* keeps a zero update zero */

int pp_muon_matrix(const pp_gpt_tensor *t)
{
    switch (t->kind) {
    case PP_GPT_QKV_W:
    case PP_GPT_ATTN_W:
    case PP_GPT_FC_W:
    case PP_GPT_PROJ_W:
        return 1;
    default:
        return 0;
    }
}

size_t pp_newton_schulz_scratch(int rows, int cols)
{
    size_t n = (size_t)rows * cols, k = (size_t)(rows < cols ? rows : cols);
    return 3 * n + 2 * k * k;
}

void pp_newton_schulz(pp_pool *pool, float *x, int rows, int cols, float *scratch)
{
    /* Work on the wide orientation [r][c], r <= c: X X^T is then r x r,
     * the smaller of the two Gram matrices. */
    int tall = rows > cols, r = tall ? cols : rows, c = tall ? rows : cols;
    size_t n = (size_t)rows * cols;
    float *X = scratch, *Y = X + n, *bt = Y + n, *A = bt + n, *AA = A + (size_t)r * r;
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    /* Frobenius norm first: every singular value is then at most 1, where
     * the iteration converges */
    float inv = (float)(1.0 / (sqrt(ss) + NS_EPS));
    if (tall)
        pp_transpose(X, x, rows, cols);
    else
        memcpy(X, x, n * sizeof *X);
    for (size_t i = 0; i < n; i++)
        X[i] *= inv;
    for (int step = 0; step < NS_STEPS; step++) {
        pp_mm_abt(pool, A, X, X, NULL, bt, r, r, c, 0); /* A = X X^T */
        pp_mm_ab(pool, AA, A, A, r, r, r, 0);           /* A A */
        for (size_t i = 0; i < (size_t)r * r; i++)
            AA[i] = NS_B * A[i] + NS_C * AA[i];
        pp_mm_ab(pool, Y, AA, X, r, c, r, 0); /* (b A + c A A) X */
        for (size_t i = 0; i < n; i++)
            X[i] = NS_A * X[i] + Y[i];
    }
    if (tall)
        pp_transpose(x, X, r, c);
    else
        memcpy(x, X, n * sizeof *x);
}

int pp_cpu_optim_init(pp_cpu_optim *o, const pp_gpt_stage *g, const pp_optim_config *cfg,
                      pp_err *e)
{
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->g = g;
    int muon = cfg->kind == PP_OPTIM_MUON, rotated = cfg->kind == PP_OPTIM_ADAMW_ROTATED;
    size_t nadam = 0, scratch = 0;
    size_t nt = (size_t)(g->ntensors ? g->ntensors : 1);
    o->adam_at = malloc(nt * sizeof *o->adam_at);
    o->mom_at = malloc(nt * sizeof *o->mom_at);
    if (!o->adam_at || !o->mom_at) {
        pp_cpu_optim_free(o);
        return pp_errf(e, "out of memory for the optimizer's state");
    }
    for (int i = 0; i < g->ntensors; i++) {
        const pp_gpt_tensor *t = &g->tensors[i];
        o->adam_at[i] = o->mom_at[i] = PP_GPT_NO_STATE;
        if (muon && pp_muon_matrix(t)) {
            o->mom_at[i] = o->nmom;
            o->nmom += t->numel;
            size_t s = t->numel + pp_newton_schulz_scratch(t->rows, t->cols);
            if (s > scratch)
                scratch = s;
        } else if (rotated) {
            /* moments for every parameter at its own offset; AdamW's loop
             * leaves the hidden matrices to cpu_rotated.c */
            o->adam_at[i] = pp_muon_matrix(t) ? PP_GPT_NO_STATE : t->offset;
            nadam = g->nparams;
        } else {
            o->adam_at[i] = nadam;
            nadam += t->numel;
        }
    }
    int rc = pp_adamw_init(&o->adam, nadam, pp_adamw_defaults(), e);
    if (rc == 0 && rotated)
        rc = pp_rotated_init(&o->rot, g, cfg, e);
    if (rc == 0 && muon) {
        o->mom = calloc(o->nmom ? o->nmom : 1, sizeof *o->mom);
        o->scratch = malloc((scratch ? scratch : 1) * sizeof *o->scratch);
        if (!o->mom || !o->scratch)
            rc = pp_errf(e, "out of memory for Muon's momentum (%zu parameters)", o->nmom);
    }
    if (rc == 0 && cfg->delay_buffer) {
        o->prev = calloc(g->nparams ? g->nparams : 1, sizeof *o->prev);
        if (!o->prev)
            rc = pp_errf(e, "out of memory for the delay correction's buffer (%zu parameters)",
                         g->nparams);
    }
    if (rc < 0)
        pp_cpu_optim_free(o);
    return rc;
}

void pp_cpu_optim_free(pp_cpu_optim *o)
{
    pp_adamw_free(&o->adam);
    free(o->adam_at);
    free(o->mom_at);
    free(o->mom);
    free(o->prev);
    free(o->scratch);
    pp_rotated_free(&o->rot);
    memset(o, 0, sizeof *o);
}

/* Muon's update of hidden matrix t (cpu_optim.h has the formulas). */
static void muon_matrix(pp_cpu_optim *o, const pp_gpt_tensor *t, size_t mom_at, float *w,
                        const float *grad, float lr, float wd)
{
    size_t n = t->numel;
    float mu = o->cfg.muon_momentum;
    float *M = o->mom + mom_at, *x = o->scratch, *p = w + t->offset;
    const float *g = grad + t->offset;
    for (size_t i = 0; i < n; i++) {
        M[i] = mu * M[i] + (1.0f - mu) * g[i];
        x[i] = mu * M[i] + (1.0f - mu) * g[i]; /* Nesterov */
    }
    pp_newton_schulz(o->g->pool, x, t->rows, t->cols, o->scratch + n);
    int big = t->rows > t->cols ? t->rows : t->cols;
    float scale = 0.2f * sqrtf((float)big), wdt = t->decay ? wd : 0.0f;
    float *prev = o->prev ? o->prev + t->offset : NULL;
    for (size_t i = 0; i < n; i++) {
        float u = lr * (scale * x[i] + wdt * p[i]);
        p[i] -= prev ? pp_delay_correct(u, &prev[i], o->cfg.delay_beta) : u;
    }
}

void pp_cpu_optim_step(pp_cpu_optim *o, float *w, const float *grad, float lr,
                       const pp_adamw_hparams *hp)
{
    const pp_gpt_stage *g = o->g;
    o->adam.hp = *hp;
    pp_adamw_begin_step(&o->adam);
    pp_gpt_adamw_tensors(g, &o->adam, o->adam_at, w, grad, lr, o->prev, o->cfg.delay_beta);
    for (int i = 0; i < g->ntensors; i++) {
        const pp_gpt_tensor *t = &g->tensors[i];
        if (o->mom_at[i] != PP_GPT_NO_STATE)
            muon_matrix(o, t, o->mom_at[i], w, grad, lr, hp->weight_decay);
        else if (o->rot.at && o->rot.at[i] != PP_GPT_NO_STATE)
            pp_rotated_step(&o->rot, g, i, &o->cfg, hp, o->adam.t, o->adam.m + t->offset,
                            o->adam.v + t->offset, w, grad, lr,
                            o->prev ? o->prev + t->offset : NULL);
    }
}

/* The state's parts in checkpoint order (cpu_optim.h), t apart. */
typedef struct {
    float *p;
    size_t n;
} part;

#define NPARTS 5

static int parts(const pp_cpu_optim *o, part out[NPARTS])
{
    int k = 0;
    if (o->mom)
        out[k++] = (part){o->mom, o->nmom};
    out[k++] = (part){o->adam.m, o->adam.n};
    out[k++] = (part){o->adam.v, o->adam.n};
    if (o->rot.state)
        out[k++] = (part){o->rot.state, o->rot.n};
    if (o->prev)
        out[k++] = (part){o->prev, o->g->nparams};
    return k;
}

size_t pp_cpu_optim_state_bytes(const pp_cpu_optim *o)
{
    part p[NPARTS];
    size_t bytes = sizeof(double);
    for (int i = 0, k = parts(o, p); i < k; i++)
        bytes += p[i].n * sizeof(float);
    return bytes;
}

void pp_cpu_optim_state_get(const pp_cpu_optim *o, void *host)
{
    part p[NPARTS];
    char *at = host;
    for (int i = 0, k = parts(o, p); i < k; i++) {
        memcpy(at, p[i].p, p[i].n * sizeof(float));
        at += p[i].n * sizeof(float);
    }
    double t = (double)o->adam.t; /* exact up to 2^53 */
    memcpy(at, &t, sizeof t);
}

void pp_cpu_optim_state_put(pp_cpu_optim *o, const void *host)
{
    part p[NPARTS];
    const char *at = host;
    for (int i = 0, k = parts(o, p); i < k; i++) {
        memcpy(p[i].p, at, p[i].n * sizeof(float));
        at += p[i].n * sizeof(float);
    }
    double t;
    memcpy(&t, at, sizeof t);
    o->adam.t = (long)t;
}
