#include "gpt_cpu.h"

#include "cpu_gemm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LN_EPS 1e-5f
#define TWO_PI 6.283185307179586

/* ------------------------------------------------------------------ */
/* Layers. Linear weights are [OC][IC] as in PyTorch.                  */
/* ------------------------------------------------------------------ */

/* out[N][OC] = in[N][IC] W^T + bias (bias may be NULL). wt: OC*IC scratch. */
static void linear_forward(float *out, const float *in, const float *W, const float *bias,
                           float *wt, int N, int IC, int OC)
{
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * OC;
        if (bias)
            memcpy(o, bias, (size_t)OC * sizeof *o);
        else
            memset(o, 0, (size_t)OC * sizeof *o);
    }
    pp_transpose(wt, W, OC, IC);
    pp_gemm_acc(out, in, IC, 1, wt, N, OC, IC);
}

/* din[N][IC] = dout[N][OC] W (overwrites din). */
static void linear_backward_input(float *din, const float *dout, const float *W, int N,
                                  int IC, int OC)
{
    memset(din, 0, (size_t)N * IC * sizeof *din);
    pp_gemm_acc(din, dout, OC, 1, W, N, IC, OC);
}

/* dW[OC][IC] += dout^T in; dbias[OC] += column sums of dout (if dbias). */
static void linear_backward_weight(float *dW, float *dbias, const float *dout,
                                   const float *in, int N, int IC, int OC)
{
    pp_gemm_acc(dW, dout, 1, OC, in, OC, IC, N);
    if (!dbias)
        return;
    for (int n = 0; n < N; n++) {
        const float *d = dout + (size_t)n * OC;
        for (int o = 0; o < OC; o++)
            dbias[o] += d[o];
    }
}

static void layernorm_forward(float *out, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C;
        float *on = out + (size_t)n * C;
        float m = 0.0f, v = 0.0f;
        for (int c = 0; c < C; c++)
            m += xn[c];
        m /= C;
        for (int c = 0; c < C; c++)
            v += (xn[c] - m) * (xn[c] - m);
        float rs = 1.0f / sqrtf(v / C + LN_EPS);
        for (int c = 0; c < C; c++)
            on[c] = (xn[c] - m) * rs * w[c] + b[c];
        mean[n] = m;
        rstd[n] = rs;
    }
}

/* dx += d LayerNorm(x) / dx applied to dout. */
static void layernorm_backward_input(float *dx, const float *dout, const float *x,
                                     const float *mean, const float *rstd, const float *w,
                                     int N, int C)
{
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C, *dn = dout + (size_t)n * C;
        float *dxn = dx + (size_t)n * C;
        float m = mean[n], rs = rstd[n], s1 = 0.0f, s2 = 0.0f;
        for (int c = 0; c < C; c++) {
            float dxhat = dn[c] * w[c];
            s1 += dxhat;
            s2 += dxhat * (xn[c] - m) * rs;
        }
        s1 /= C;
        s2 /= C;
        for (int c = 0; c < C; c++) {
            float xhat = (xn[c] - m) * rs;
            dxn[c] += rs * (dn[c] * w[c] - s1 - xhat * s2);
        }
    }
}

static void layernorm_backward_weight(float *dw, float *db, const float *dout, const float *x,
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

/* tanh through expf, several times faster than tanhf. Its absolute error
 * (~1e-7) is what GELU sees: 0.5 x (1 + tanh) is insensitive to the
 * relative error near 0. Saturates to +-1 correctly when expf overflows. */
static inline float fast_tanh(float u)
{
    return 1.0f - 2.0f / (1.0f + expf(2.0f * u));
}

static void gelu_forward(float *out, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float u = GELU_K * (x[i] + GELU_A * x[i] * x[i] * x[i]);
        out[i] = 0.5f * x[i] * (1.0f + fast_tanh(u));
    }
}

/* dx = dout * gelu'(x). */
static void gelu_backward(float *dx, const float *x, const float *dout, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float xi = x[i];
        float t = fast_tanh(GELU_K * (xi + GELU_A * xi * xi * xi));
        float du = GELU_K * (1.0f + 3.0f * GELU_A * xi * xi);
        dx[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * xi * (1.0f - t * t) * du);
    }
}

typedef struct {
    int B, T, C, H;
} att_dims;

/* dst[hs][T] = one head's keys or values of one sequence (src points at
 * element 0 of that head in row 0; rows ld apart), so the loops over
 * positions run along contiguous memory and vectorize. */
static void head_transpose(float *restrict dst, const float *restrict src, size_t ld, int T,
                           int hs)
{
    for (int j = 0; j < T; j++)
        for (int i = 0; i < hs; i++)
            dst[(size_t)i * T + j] = src[(size_t)j * ld + i];
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

/* Causal self-attention. qkv[B*T][3C] holds q, k, v; att[B][H][T][T] gets
 * the softmax probabilities (zero above the diagonal); y[B*T][C] the
 * per-head outputs side by side. kt: (C/H)*T floats of scratch. */
static void attention_forward(float *restrict y, float *restrict att,
                              const float *restrict qkv, float *restrict kt, att_dims d)
{
    int hs = d.C / d.H, T = d.T;
    size_t ld = 3 * (size_t)d.C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < d.B; b++)
        for (int h = 0; h < d.H; h++) {
            const float *seq = qkv + (size_t)b * T * ld + h * hs;
            head_transpose(kt, seq + d.C, ld, T, hs);
            for (int t = 0; t < T; t++) {
                const float *q = seq + (size_t)t * ld;
                float *row = att + (((size_t)b * d.H + h) * T + t) * T;
                memset(row, 0, (size_t)T * sizeof *row);
                for (int i = 0; i < hs; i++)
                    for (int j = 0; j <= t; j++)
                        row[j] += q[i] * kt[(size_t)i * T + j];
                for (int j = 0; j <= t; j++)
                    row[j] *= scale;
                softmax_row(row, t + 1);
                float *yo = y + ((size_t)b * T + t) * d.C + h * hs;
                memset(yo, 0, (size_t)hs * sizeof *yo);
                for (int j = 0; j <= t; j++) {
                    const float *v = seq + (size_t)j * ld + 2 * d.C;
                    for (int i = 0; i < hs; i++)
                        yo[i] += row[j] * v[i];
                }
            }
        }
}

/* dqkv (overwritten) from dy. Scratch: datt T floats, vt (C/H)*T. */
static void attention_backward(float *restrict dqkv, float *restrict datt,
                               float *restrict vt, const float *restrict dy,
                               const float *restrict qkv, const float *restrict att,
                               att_dims d)
{
    int hs = d.C / d.H, T = d.T;
    size_t ld = 3 * (size_t)d.C;
    float scale = 1.0f / sqrtf((float)hs);
    memset(dqkv, 0, (size_t)d.B * T * ld * sizeof *dqkv);
    for (int b = 0; b < d.B; b++)
        for (int h = 0; h < d.H; h++) {
            size_t base = (size_t)b * T * ld + h * hs;
            const float *seq = qkv + base;
            float *dseq = dqkv + base;
            head_transpose(vt, seq + 2 * d.C, ld, T, hs);
            for (int t = 0; t < T; t++) {
                const float *row = att + (((size_t)b * d.H + h) * T + t) * T;
                const float *dyo = dy + ((size_t)b * T + t) * d.C + h * hs;
                const float *q = seq + (size_t)t * ld;
                float *dq = dseq + (size_t)t * ld;
                memset(datt, 0, (size_t)(t + 1) * sizeof *datt);
                for (int i = 0; i < hs; i++)
                    for (int j = 0; j <= t; j++)
                        datt[j] += dyo[i] * vt[(size_t)i * T + j];
                float dot = 0.0f;
                for (int j = 0; j <= t; j++)
                    dot += row[j] * datt[j];
                for (int j = 0; j <= t; j++) {
                    /* Softmax backward, then the 1/sqrt(hs) of the scores. */
                    float ds = row[j] * (datt[j] - dot) * scale;
                    const float *k = seq + (size_t)j * ld + d.C;
                    float *dk = dseq + (size_t)j * ld + d.C;
                    float *dv = dseq + (size_t)j * ld + 2 * d.C;
                    for (int i = 0; i < hs; i++) {
                        dv[i] += row[j] * dyo[i];
                        dq[i] += ds * k[i];
                        dk[i] += ds * q[i];
                    }
                }
            }
        }
}

/* ------------------------------------------------------------------ */
/* Buffer layouts.                                                     */
/* ------------------------------------------------------------------ */

/* Per-micro-batch activations: [tokens N][targets N] res_0, then per block
 * {ln1 .. fcg, res_out}; the last block's res_out exists only on the last
 * stage (elsewhere it is x_out), followed by the final LayerNorm and probs. */
typedef struct {
    size_t res_in, ln1, ln1_mean, ln1_rstd, qkv, att, atty, res_mid;
    size_t ln2, ln2_mean, ln2_rstd, fc, fcg, res_out;
} block_acts;

typedef struct {
    size_t tokens, targets, res_last, lnf, lnf_mean, lnf_rstd, probs, end;
} stage_acts;

static size_t nc(const pp_gpt_stage *g)
{
    return (size_t)g->B * g->T * g->C;
}

static size_t ntok(const pp_gpt_stage *g)
{
    return (size_t)g->B * g->T;
}

static size_t acts_head(const pp_gpt_stage *g)
{
    return (g->is_first ? ntok(g) : 0) + (g->is_last ? ntok(g) : 0);
}

static size_t acts_block_stride(const pp_gpt_stage *g)
{
    size_t N = ntok(g), NC = nc(g);
    return NC * 16 + N * 4 + (size_t)g->B * g->H * g->T * g->T;
}

static block_acts block_acts_at(const pp_gpt_stage *g, int l)
{
    size_t N = ntok(g), NC = nc(g);
    block_acts a;
    a.res_in = acts_head(g) + (size_t)l * acts_block_stride(g);
    a.ln1 = a.res_in + NC;
    a.ln1_mean = a.ln1 + NC;
    a.ln1_rstd = a.ln1_mean + N;
    a.qkv = a.ln1_rstd + N;
    a.att = a.qkv + 3 * NC;
    a.atty = a.att + (size_t)g->B * g->H * g->T * g->T;
    a.res_mid = a.atty + NC;
    a.ln2 = a.res_mid + NC;
    a.ln2_mean = a.ln2 + NC;
    a.ln2_rstd = a.ln2_mean + N;
    a.fc = a.ln2_rstd + N;
    a.fcg = a.fc + 4 * NC;
    a.res_out = a.fcg + 4 * NC;
    return a;
}

static stage_acts stage_acts_of(const pp_gpt_stage *g)
{
    size_t N = ntok(g), NC = nc(g);
    stage_acts a;
    a.tokens = 0;
    a.targets = g->is_first ? N : 0;
    a.res_last = acts_head(g) + (size_t)g->nblocks * acts_block_stride(g);
    a.lnf = a.res_last + NC;
    a.lnf_mean = a.lnf + NC;
    a.lnf_rstd = a.lnf_mean + N;
    a.probs = a.lnf_rstd + N;
    a.end = g->is_last ? a.probs + N * g->V : a.res_last;
    return a;
}

/* Activation gradients saved by the I action for the W action: per block
 * {d_res_in, d_ln1, d_qkv, d_res_mid, d_ln2, d_fc}, then d_res of the stage
 * output, then (last stage) d_lnf and d_logits. */
typedef struct {
    size_t d_res_in, d_ln1, d_qkv, d_res_mid, d_ln2, d_fc, d_res_out;
} block_gacts;

typedef struct {
    size_t d_res_last, d_lnf, d_logits, end;
} stage_gacts;

static block_gacts block_gacts_at(const pp_gpt_stage *g, int l)
{
    size_t NC = nc(g);
    block_gacts a;
    a.d_res_in = (size_t)l * 11 * NC;
    a.d_ln1 = a.d_res_in + NC;
    a.d_qkv = a.d_ln1 + NC;
    a.d_res_mid = a.d_qkv + 3 * NC;
    a.d_ln2 = a.d_res_mid + NC;
    a.d_fc = a.d_ln2 + NC;
    a.d_res_out = a.d_fc + 4 * NC;
    return a;
}

static stage_gacts stage_gacts_of(const pp_gpt_stage *g)
{
    size_t NC = nc(g);
    stage_gacts a;
    a.d_res_last = (size_t)g->nblocks * 11 * NC;
    a.d_lnf = a.d_res_last + NC;
    a.d_logits = a.d_lnf + NC;
    a.end = g->is_last ? a.d_logits + ntok(g) * g->V : a.d_lnf;
    return a;
}

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

/* Scratch, one region after the other: the largest transposed weight, one
 * [N][4C] activation gradient, one attention row, one transposed head. */
typedef struct {
    float *wt, *tmp, *datt, *head;
} scratch_parts;

static size_t wt_floats(const pp_gpt_stage *g)
{
    size_t C = g->C, wt = 4 * C * C;
    if (g->is_last && (size_t)g->V * C > wt)
        wt = (size_t)g->V * C;
    return wt;
}

static size_t scratch_floats(const pp_gpt_stage *g)
{
    return wt_floats(g) + 4 * nc(g) + (size_t)g->T + (size_t)(g->C / g->H) * g->T;
}

static scratch_parts scratch_of(const pp_gpt_stage *g)
{
    scratch_parts p;
    p.wt = g->scratch;
    p.tmp = p.wt + wt_floats(g);
    p.datt = p.tmp + 4 * nc(g);
    p.head = p.datt + g->T;
    return p;
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
    g->acts_floats = stage_acts_of(g).end;
    g->gacts_floats = stage_gacts_of(g).end;
    g->scratch = malloc(scratch_floats(g) * sizeof *g->scratch);
    g->gacts_scratch = malloc(g->gacts_floats * sizeof *g->gacts_scratch);
    if (!g->scratch || !g->gacts_scratch)
        goto oom;
    return 0;
oom:
    pp_gpt_stage_free(g);
    return pp_errf(e, "out of memory setting up stage %d of %d", s, P);
}

void pp_gpt_stage_free(pp_gpt_stage *g)
{
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

/* ------------------------------------------------------------------ */
/* Forward.                                                            */
/* ------------------------------------------------------------------ */

static int check_ids(const int *ids, size_t n, int V, const char *what, pp_err *e)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return pp_errf(e, "%s %d at position %zu is outside the vocabulary [0, %d)", what,
                           ids[i], i, V);
    return 0;
}

static void store_ids(float *dst, const int *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)ids[i];
}

static void embed_forward(const pp_gpt_stage *g, const float *w, const int *tokens, float *x)
{
    int C = g->C;
    for (int b = 0; b < g->B; b++)
        for (int t = 0; t < g->T; t++) {
            size_t n = (size_t)b * g->T + t;
            const float *te = w + g->wte + (size_t)tokens[n] * C;
            const float *pe = w + g->wpe + (size_t)t * C;
            for (int c = 0; c < C; c++)
                x[n * C + c] = te[c] + pe[c];
        }
}

static void add_inplace(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

static att_dims dims_of(const pp_gpt_stage *g)
{
    att_dims d = {g->B, g->T, g->C, g->H};
    return d;
}

/* One block: x + attn(ln1(x)), then + mlp(ln2(.)), into out. */
static void block_forward(pp_gpt_stage *g, const float *w, float *acts, int l, float *out)
{
    const pp_gpt_block_offsets *p = &g->blocks[l];
    block_acts a = block_acts_at(g, l);
    int N = (int)ntok(g), C = g->C;
    scratch_parts sp = scratch_of(g);
    float *wt = sp.wt;
    layernorm_forward(acts + a.ln1, acts + a.ln1_mean, acts + a.ln1_rstd, acts + a.res_in,
                      w + p->ln1_w, w + p->ln1_b, N, C);
    linear_forward(acts + a.qkv, acts + a.ln1, w + p->qkv_w, w + p->qkv_b, wt, N, C, 3 * C);
    attention_forward(acts + a.atty, acts + a.att, acts + a.qkv, sp.head, dims_of(g));
    linear_forward(acts + a.res_mid, acts + a.atty, w + p->attn_w, w + p->attn_b, wt, N, C, C);
    add_inplace(acts + a.res_mid, acts + a.res_in, nc(g));
    layernorm_forward(acts + a.ln2, acts + a.ln2_mean, acts + a.ln2_rstd, acts + a.res_mid,
                      w + p->ln2_w, w + p->ln2_b, N, C);
    linear_forward(acts + a.fc, acts + a.ln2, w + p->fc_w, w + p->fc_b, wt, N, C, 4 * C);
    gelu_forward(acts + a.fcg, acts + a.fc, 4 * nc(g));
    linear_forward(out, acts + a.fcg, w + p->proj_w, w + p->proj_b, wt, N, 4 * C, C);
    add_inplace(out, acts + a.res_mid, nc(g));
}

/* Softmax of the logits in place, returning the mean cross-entropy. */
static float softmax_xent(float *probs, const float *targets, int N, int V)
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

static void head_forward(pp_gpt_stage *g, const float *w, float *acts, float *loss)
{
    stage_acts a = stage_acts_of(g);
    int N = (int)ntok(g), C = g->C;
    layernorm_forward(acts + a.lnf, acts + a.lnf_mean, acts + a.lnf_rstd, acts + a.res_last,
                      w + g->lnf_w, w + g->lnf_b, N, C);
    linear_forward(acts + a.probs, acts + a.lnf, w + g->head_w, NULL, scratch_of(g).wt, N, C,
                   g->V);
    *loss = softmax_xent(acts + a.probs, acts + a.targets, N, g->V);
}

int pp_gpt_forward(pp_gpt_stage *g, const float *w, const int *tokens, const float *x_in,
                   const int *targets, float *acts, float *x_out, float *loss, pp_err *e)
{
    size_t N = ntok(g);
    stage_acts sa = stage_acts_of(g);
    if (g->is_first && check_ids(tokens, N, g->V, "token", e) != 0)
        return -1;
    if (g->is_last && check_ids(targets, N, g->V, "target", e) != 0)
        return -1;
    float *x0 = acts + block_acts_at(g, 0).res_in;
    if (g->is_first) {
        store_ids(acts + sa.tokens, tokens, N);
        embed_forward(g, w, tokens, x0);
    } else {
        memcpy(x0, x_in, nc(g) * sizeof *x0);
    }
    if (g->is_last)
        store_ids(acts + sa.targets, targets, N);
    for (int l = 0; l < g->nblocks; l++) {
        int final = l == g->nblocks - 1;
        float *out = final && !g->is_last ? x_out : acts + block_acts_at(g, l).res_out;
        block_forward(g, w, acts, l, out);
    }
    if (g->is_last)
        head_forward(g, w, acts, loss);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Backward: I action.                                                 */
/* ------------------------------------------------------------------ */

/* d_logits = (probs - onehot(target)) * scale / N, so the last stage starts
 * from d(loss_scale * mean loss). */
static void xent_backward(float *dlogits, const float *probs, const float *targets, int N,
                          int V, float loss_scale)
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

static void head_backward_input(pp_gpt_stage *g, const float *w, const float *acts,
                                float *gacts, float loss_scale)
{
    stage_acts a = stage_acts_of(g);
    stage_gacts ga = stage_gacts_of(g);
    int N = (int)ntok(g), C = g->C;
    xent_backward(gacts + ga.d_logits, acts + a.probs, acts + a.targets, N, g->V, loss_scale);
    linear_backward_input(gacts + ga.d_lnf, gacts + ga.d_logits, w + g->head_w, N, C, g->V);
    memset(gacts + ga.d_res_last, 0, nc(g) * sizeof *gacts);
    layernorm_backward_input(gacts + ga.d_res_last, gacts + ga.d_lnf, acts + a.res_last,
                             acts + a.lnf_mean, acts + a.lnf_rstd, w + g->lnf_w, N, C);
}

static void block_backward_input(pp_gpt_stage *g, const float *w, const float *acts,
                                 float *gacts, int l)
{
    const pp_gpt_block_offsets *p = &g->blocks[l];
    block_acts a = block_acts_at(g, l);
    block_gacts d = block_gacts_at(g, l);
    int N = (int)ntok(g), C = g->C;
    size_t NC = nc(g);
    scratch_parts sp = scratch_of(g);
    float *tmp = sp.tmp;
    /* MLP branch. */
    linear_backward_input(tmp, gacts + d.d_res_out, w + p->proj_w, N, 4 * C, C);
    gelu_backward(gacts + d.d_fc, acts + a.fc, tmp, 4 * NC);
    linear_backward_input(gacts + d.d_ln2, gacts + d.d_fc, w + p->fc_w, N, C, 4 * C);
    memcpy(gacts + d.d_res_mid, gacts + d.d_res_out, NC * sizeof *gacts);
    layernorm_backward_input(gacts + d.d_res_mid, gacts + d.d_ln2, acts + a.res_mid,
                             acts + a.ln2_mean, acts + a.ln2_rstd, w + p->ln2_w, N, C);
    /* Attention branch. */
    linear_backward_input(tmp, gacts + d.d_res_mid, w + p->attn_w, N, C, C);
    attention_backward(gacts + d.d_qkv, sp.datt, sp.head, tmp, acts + a.qkv, acts + a.att,
                       dims_of(g));
    linear_backward_input(gacts + d.d_ln1, gacts + d.d_qkv, w + p->qkv_w, N, C, 3 * C);
    memcpy(gacts + d.d_res_in, gacts + d.d_res_mid, NC * sizeof *gacts);
    layernorm_backward_input(gacts + d.d_res_in, gacts + d.d_ln1, acts + a.res_in,
                             acts + a.ln1_mean, acts + a.ln1_rstd, w + p->ln1_w, N, C);
}

void pp_gpt_backward_input(pp_gpt_stage *g, const float *w, const float *acts,
                           const float *dx_out, float *dx_in, float *gacts, float loss_scale)
{
    size_t NC = nc(g);
    if (g->is_last)
        head_backward_input(g, w, acts, gacts, loss_scale);
    else /* kept: the W action reads it after the caller reuses dx_out */
        memcpy(gacts + stage_gacts_of(g).d_res_last, dx_out, NC * sizeof *gacts);
    for (int l = g->nblocks - 1; l >= 0; l--)
        block_backward_input(g, w, acts, gacts, l);
    if (!g->is_first)
        memcpy(dx_in, gacts + block_gacts_at(g, 0).d_res_in, NC * sizeof *dx_in);
}

/* ------------------------------------------------------------------ */
/* Backward: W action.                                                 */
/* ------------------------------------------------------------------ */

static void head_backward_weight(pp_gpt_stage *g, const float *acts, const float *gacts,
                                 float *grad)
{
    stage_acts a = stage_acts_of(g);
    stage_gacts ga = stage_gacts_of(g);
    int N = (int)ntok(g), C = g->C;
    linear_backward_weight(grad + g->head_w, NULL, gacts + ga.d_logits, acts + a.lnf, N, C,
                           g->V);
    layernorm_backward_weight(grad + g->lnf_w, grad + g->lnf_b, gacts + ga.d_lnf,
                              acts + a.res_last, acts + a.lnf_mean, acts + a.lnf_rstd, N, C);
}

static void block_backward_weight(pp_gpt_stage *g, const float *acts, const float *gacts,
                                  float *grad, int l)
{
    const pp_gpt_block_offsets *p = &g->blocks[l];
    block_acts a = block_acts_at(g, l);
    block_gacts d = block_gacts_at(g, l);
    int N = (int)ntok(g), C = g->C;
    linear_backward_weight(grad + p->proj_w, grad + p->proj_b, gacts + d.d_res_out,
                           acts + a.fcg, N, 4 * C, C);
    linear_backward_weight(grad + p->fc_w, grad + p->fc_b, gacts + d.d_fc, acts + a.ln2, N, C,
                           4 * C);
    layernorm_backward_weight(grad + p->ln2_w, grad + p->ln2_b, gacts + d.d_ln2,
                              acts + a.res_mid, acts + a.ln2_mean, acts + a.ln2_rstd, N, C);
    linear_backward_weight(grad + p->attn_w, grad + p->attn_b, gacts + d.d_res_mid,
                           acts + a.atty, N, C, C);
    linear_backward_weight(grad + p->qkv_w, grad + p->qkv_b, gacts + d.d_qkv, acts + a.ln1, N,
                           C, 3 * C);
    layernorm_backward_weight(grad + p->ln1_w, grad + p->ln1_b, gacts + d.d_ln1,
                              acts + a.res_in, acts + a.ln1_mean, acts + a.ln1_rstd, N, C);
}

static void embed_backward_weight(const pp_gpt_stage *g, const float *acts, const float *dx,
                                  float *grad)
{
    const float *tokens = acts + stage_acts_of(g).tokens;
    int C = g->C;
    for (int b = 0; b < g->B; b++)
        for (int t = 0; t < g->T; t++) {
            size_t n = (size_t)b * g->T + t;
            float *te = grad + g->wte + (size_t)tokens[n] * C;
            float *pe = grad + g->wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) {
                te[c] += dx[n * C + c];
                pe[c] += dx[n * C + c];
            }
        }
}

void pp_gpt_backward_weight(pp_gpt_stage *g, const float *acts, const float *gacts,
                            float *grad)
{
    if (g->is_last)
        head_backward_weight(g, acts, gacts, grad);
    for (int l = g->nblocks - 1; l >= 0; l--)
        block_backward_weight(g, acts, gacts, grad, l);
    if (g->is_first)
        embed_backward_weight(g, acts, gacts + block_gacts_at(g, 0).d_res_in, grad);
}

void pp_gpt_backward(pp_gpt_stage *g, const float *w, const float *acts, const float *dx_out,
                     float *dx_in, float *grad, float loss_scale)
{
    pp_gpt_backward_input(g, w, acts, dx_out, dx_in, g->gacts_scratch, loss_scale);
    pp_gpt_backward_weight(g, acts, g->gacts_scratch, grad);
}

void pp_gpt_adamw_step(const pp_gpt_stage *g, pp_adamw *o, float *w, const float *grad,
                       float lr)
{
    pp_adamw_begin_step(o);
    for (int i = 0; i < g->ntensors; i++) {
        const pp_gpt_tensor *t = &g->tensors[i];
        pp_adamw_update(o, w, grad, t->offset, t->numel, t->decay, lr);
    }
}
