/* The layer kernels of the CPU GPT: linear, LayerNorm, GELU, causal
 * attention and the softmax cross-entropy, forward and backward, on plain
 * arrays (declared in gpt_cpu_layers.h). Every sum runs in a fixed order. */
#include "gpt_cpu_layers.h"

#include "cpu_gemm.h"
#include "cpu_vmath.h"

#include <math.h>
#include <string.h>

#define LN_EPS 1e-5f

void pp_cpu_linear_forward(pp_pool *pool, float *out, const float *in, const float *W,
                           const float *bias, float *wt, int N, int IC, int OC)
{
    pp_mm_abt(pool, out, in, W, bias, wt, N, OC, IC, 0);
}

void pp_cpu_linear_backward_input(pp_pool *pool, float *din, const float *dout, const float *W,
                                  int N, int IC, int OC)
{
    pp_mm_ab(pool, din, dout, W, N, IC, OC, 0);
}

typedef struct {
    float *dbias;
    const float *dout;
    int N, OC;
} dbias_job;

/* Columns [lo, hi) of dbias: each sums its column over the rows in order. */
static void dbias_part(void *ctx, int lo, int hi, int part)
{
    (void)part;
    const dbias_job *j = ctx;
    for (int n = 0; n < j->N; n++) {
        const float *d = j->dout + (size_t)n * j->OC;
        for (int o = lo; o < hi; o++)
            j->dbias[o] += d[o];
    }
}

void pp_cpu_linear_backward_weight(pp_pool *pool, float *dW, float *dbias, const float *dout,
                                   const float *in, int N, int IC, int OC)
{
    pp_mm_atb(pool, dW, dout, in, OC, IC, N, 1);
    if (!dbias)
        return;
    dbias_job j = {dbias, dout, N, OC};
    pp_pool_run(pool, OC, dbias_part, &j);
}

typedef struct {
    float *x;
    const float *y;
    size_t n;
} add_job;

#define ADD_BLOCK 4096 /* elements per unit of work */

static void add_part(void *ctx, int lo, int hi, int part)
{
    (void)part;
    const add_job *j = ctx;
    size_t end = (size_t)hi * ADD_BLOCK < j->n ? (size_t)hi * ADD_BLOCK : j->n;
    for (size_t i = (size_t)lo * ADD_BLOCK; i < end; i++)
        j->x[i] += j->y[i];
}

void pp_cpu_add(pp_pool *pool, float *x, const float *y, size_t n)
{
    add_job j = {x, y, n};
    pp_pool_run(pool, (int)((n + ADD_BLOCK - 1) / ADD_BLOCK), add_part, &j);
}

typedef struct {
    float *out, *mean, *rstd;
    const float *x, *w, *b, *dout;
    const float *mean_in, *rstd_in;
    int C;
} ln_job;

/* Rows [lo, hi): each row normalised on its own. */
static void layernorm_forward_part(void *ctx, int lo, int hi, int part)
{
    (void)part;
    const ln_job *j = ctx;
    int C = j->C;
    for (int n = lo; n < hi; n++) {
        const float *xn = j->x + (size_t)n * C;
        float *on = j->out + (size_t)n * C;
        float m = 0.0f, v = 0.0f;
        for (int c = 0; c < C; c++)
            m += xn[c];
        m /= C;
        for (int c = 0; c < C; c++)
            v += (xn[c] - m) * (xn[c] - m);
        float rs = 1.0f / sqrtf(v / C + LN_EPS);
        for (int c = 0; c < C; c++)
            on[c] = (xn[c] - m) * rs * j->w[c] + j->b[c];
        j->mean[n] = m;
        j->rstd[n] = rs;
    }
}

void pp_cpu_layernorm_forward(pp_pool *pool, float *out, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int N, int C)
{
    ln_job j = {out, mean, rstd, x, w, b, NULL, NULL, NULL, C};
    pp_pool_run(pool, N, layernorm_forward_part, &j);
}

static void layernorm_backward_input_part(void *ctx, int lo, int hi, int part)
{
    (void)part;
    const ln_job *j = ctx;
    int C = j->C;
    for (int n = lo; n < hi; n++) {
        const float *xn = j->x + (size_t)n * C, *dn = j->dout + (size_t)n * C;
        float *dxn = j->out + (size_t)n * C;
        float m = j->mean_in[n], rs = j->rstd_in[n], s1 = 0.0f, s2 = 0.0f;
        for (int c = 0; c < C; c++) {
            float dxhat = dn[c] * j->w[c];
            s1 += dxhat;
            s2 += dxhat * (xn[c] - m) * rs;
        }
        s1 /= C;
        s2 /= C;
        for (int c = 0; c < C; c++) {
            float xhat = (xn[c] - m) * rs;
            dxn[c] += rs * (dn[c] * j->w[c] - s1 - xhat * s2);
        }
    }
}

void pp_cpu_layernorm_backward_input(pp_pool *pool, float *dx, const float *dout, const float *x,
                                     const float *mean, const float *rstd, const float *w,
                                     int N, int C)
{
    ln_job j = {dx, NULL, NULL, x, w, NULL, dout, mean, rstd, C};
    pp_pool_run(pool, N, layernorm_backward_input_part, &j);
}

void pp_cpu_layernorm_backward_weight(float *dw, float *db, const float *dout, const float *x,
                                      const float *mean, const float *rstd, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C, *dn = dout + (size_t)n * C;
        float m = mean[n], rs = rstd[n];
        for (int c = 0; c < C; c++) {
            dw[c] += dn[c] * (xn[c] - m) * rs;
            db[c] += dn[c];
        }
    }
}

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f
#define GELU_BLOCK 1024 /* elements per unit of work: a multiple of PP_VW */

typedef struct {
    float *out;
    const float *x, *dout;
    size_t n;
} gelu_job;

/* GELU and its derivative on PP_VW lanes: tanh through pp_vexp, whose
 * absolute error is what GELU sees (0.5 x (1 + tanh) is insensitive to the
 * relative error of tanh near 0). */
PP_VINLINE pp_vf gelu_v(pp_vf x)
{
    pp_vf t = pp_vtanh(GELU_K * (x + GELU_A * x * x * x));
    return 0.5f * x * (1.0f + t);
}

PP_VINLINE pp_vf gelu_grad_v(pp_vf x, pp_vf dout)
{
    pp_vf t = pp_vtanh(GELU_K * (x + GELU_A * x * x * x));
    pp_vf du = GELU_K * (1.0f + 3.0f * GELU_A * x * x);
    return dout * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
}

/* Elements [lo, hi) blocks of the job; a ragged end goes through a padded
 * vector, so every element gets the same arithmetic wherever it falls. */
PP_SIMD_CLONES static void gelu_part(void *ctx, int lo, int hi, int part, int backward)
{
    (void)part;
    const gelu_job *j = ctx;
    size_t i = (size_t)lo * GELU_BLOCK, end = (size_t)hi * GELU_BLOCK;
    if (end > j->n)
        end = j->n;
    for (; i + PP_VW <= end; i += PP_VW) {
        pp_vf x = pp_vload(j->x + i);
        pp_vstore(j->out + i, backward ? gelu_grad_v(x, pp_vload(j->dout + i)) : gelu_v(x));
    }
    if (i < end) {
        float xb[PP_VW] = {0}, db[PP_VW] = {0}, ob[PP_VW];
        memcpy(xb, j->x + i, (end - i) * sizeof *xb);
        if (backward)
            memcpy(db, j->dout + i, (end - i) * sizeof *db);
        pp_vf x = pp_vload(xb);
        pp_vstore(ob, backward ? gelu_grad_v(x, pp_vload(db)) : gelu_v(x));
        memcpy(j->out + i, ob, (end - i) * sizeof *ob);
    }
}

static void gelu_forward_part(void *ctx, int lo, int hi, int part)
{
    gelu_part(ctx, lo, hi, part, 0);
}

static void gelu_backward_part(void *ctx, int lo, int hi, int part)
{
    gelu_part(ctx, lo, hi, part, 1);
}

static int gelu_blocks(size_t n)
{
    return (int)((n + GELU_BLOCK - 1) / GELU_BLOCK);
}

void pp_cpu_gelu_forward(pp_pool *pool, float *out, const float *x, size_t n)
{
    gelu_job j = {out, x, NULL, n};
    pp_pool_run(pool, gelu_blocks(n), gelu_forward_part, &j);
}

void pp_cpu_gelu_backward(pp_pool *pool, float *dx, const float *x, const float *dout, size_t n)
{
    gelu_job j = {dx, x, dout, n};
    pp_pool_run(pool, gelu_blocks(n), gelu_backward_part, &j);
}

/* Softmax over row[0..n) in place. */
static void softmax_row(float *row, int n)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int j = 0; j < n; j++)
        mx = row[j] > mx ? row[j] : mx;
    for (int j = 0; j < n; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    for (int j = 0; j < n; j++)
        row[j] /= sum;
}

typedef struct {
    float *y, *att, *dqkv, *scratch;
    const float *qkv, *dy, *att_in;
    size_t scratch_part; /* floats of scratch per part */
    pp_cpu_att_dims d;
} attn_job;

/* Causal softmax of the scores in place, row t over [0, t]; zero after. */
static void causal_softmax(float *att, int T)
{
    for (int t = 0; t < T; t++) {
        float *row = att + (size_t)t * T;
        softmax_row(row, t + 1);
        memset(row + t + 1, 0, (size_t)(T - 1 - t) * sizeof *row);
    }
}

/* Heads [lo, hi) of the B*H (sequence, head) pairs, each independent and
 * each three small matrix products: S = Q K^T / sqrt(hs), P = softmax(S)
 * under the causal mask, Y = P V. */
static void attention_forward_part(void *ctx, int lo, int hi, int part)
{
    (void)part;
    const attn_job *j = ctx;
    pp_cpu_att_dims d = j->d;
    int hs = d.C / d.H, T = d.T, ld = 3 * d.C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int bh = lo; bh < hi; bh++) {
        int b = bh / d.H, h = bh % d.H;
        const float *q = j->qkv + (size_t)b * T * ld + h * hs, *k = q + d.C, *v = q + 2 * d.C;
        float *att = j->att + (size_t)bh * T * T;
        pp_sgemm_small(0, 1, T, T, hs, scale, q, ld, k, ld, 0.0f, att, T);
        causal_softmax(att, T);
        pp_sgemm_small(0, 0, T, hs, T, 1.0f, att, T, v, ld, 0.0f,
                       j->y + (size_t)b * T * d.C + h * hs, d.C);
    }
}

size_t pp_cpu_attention_scratch(pp_cpu_att_dims d)
{
    return (size_t)d.T * d.T;
}

void pp_cpu_attention_forward(pp_pool *pool, float *y, float *att, const float *qkv,
                              float *scratch, pp_cpu_att_dims d)
{
    attn_job j = {y, att, NULL, scratch, qkv, NULL, NULL, pp_cpu_attention_scratch(d), d};
    pp_pool_run(pool, d.B * d.H, attention_forward_part, &j);
}

/* The backward of one pair: dP = dY V^T; dS = P (dP - rowsum(P dP)) /
 * sqrt(hs) (softmax backward; zero above the diagonal, where P is); then
 * dQ = dS K, dK = dS^T Q, dV = P^T dY, each written whole. */
static void attention_backward_part(void *ctx, int lo, int hi, int part)
{
    const attn_job *j = ctx;
    pp_cpu_att_dims d = j->d;
    int hs = d.C / d.H, T = d.T, ld = 3 * d.C;
    float scale = 1.0f / sqrtf((float)hs);
    float *ds = j->scratch + (size_t)part * j->scratch_part;
    for (int bh = lo; bh < hi; bh++) {
        int b = bh / d.H, h = bh % d.H;
        size_t base = (size_t)b * T * ld + h * hs;
        const float *q = j->qkv + base, *k = q + d.C, *v = q + 2 * d.C;
        const float *att = j->att_in + (size_t)bh * T * T;
        const float *dy = j->dy + (size_t)b * T * d.C + h * hs;
        float *dq = j->dqkv + base, *dk = dq + d.C, *dv = dq + 2 * d.C;
        pp_sgemm_small(0, 1, T, T, hs, 1.0f, dy, d.C, v, ld, 0.0f, ds, T);
        for (int t = 0; t < T; t++) {
            const float *p = att + (size_t)t * T;
            float *row = ds + (size_t)t * T, dot = 0.0f;
            for (int c = 0; c <= t; c++)
                dot += p[c] * row[c];
            for (int c = 0; c <= t; c++)
                row[c] = p[c] * (row[c] - dot) * scale;
            memset(row + t + 1, 0, (size_t)(T - 1 - t) * sizeof *row);
        }
        pp_sgemm_small(0, 0, T, hs, T, 1.0f, ds, T, k, ld, 0.0f, dq, ld);
        pp_sgemm_small(1, 0, T, hs, T, 1.0f, ds, T, q, ld, 0.0f, dk, ld);
        pp_sgemm_small(1, 0, T, hs, T, 1.0f, att, T, dy, d.C, 0.0f, dv, ld);
    }
}

void pp_cpu_attention_backward(pp_pool *pool, float *dqkv, float *scratch, const float *dy,
                               const float *qkv, const float *att, pp_cpu_att_dims d)
{
    attn_job j = {NULL, NULL, dqkv, scratch, qkv, dy, att, pp_cpu_attention_scratch(d), d};
    pp_pool_run(pool, d.B * d.H, attention_backward_part, &j);
}

float pp_cpu_softmax_xent(float *probs, const float *targets, int N, int V)
{
    double total = 0.0;
    for (int n = 0; n < N; n++) {
        float *p = probs + (size_t)n * V;
        float mx = -INFINITY, sum = 0.0f;
        for (int v = 0; v < V; v++)
            mx = p[v] > mx ? p[v] : mx;
        float target_logit = p[(int)targets[n]];
        for (int v = 0; v < V; v++) {
            p[v] = expf(p[v] - mx);
            sum += p[v];
        }
        for (int v = 0; v < V; v++)
            p[v] /= sum;
        total += (double)logf(sum) + mx - target_logit;
    }
    return (float)(total / N);
}

void pp_cpu_xent_backward(float *dlogits, const float *probs, const float *targets, int N, int V,
                          float loss_scale)
{
    float k = loss_scale / N;
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        for (int v = 0; v < V; v++)
            d[v] = p[v] * k;
        d[(int)targets[n]] -= k;
    }
}
