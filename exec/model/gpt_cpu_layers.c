/* The layer kernels of the CPU GPT: linear, LayerNorm, GELU, causal
 * attention and the softmax cross-entropy, forward and backward, on plain
 * arrays (declared in gpt_cpu_layers.h). Every sum runs in a fixed order. */
#include "gpt_cpu_layers.h"

#include "cpu_gemm.h"

#include <math.h>
#include <string.h>

#define LN_EPS 1e-5f

void pp_cpu_linear_forward(float *out, const float *in, const float *W, const float *bias,
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

void pp_cpu_linear_backward_input(float *din, const float *dout, const float *W, int N, int IC,
                                  int OC)
{
    memset(din, 0, (size_t)N * IC * sizeof *din);
    pp_gemm_acc(din, dout, OC, 1, W, N, IC, OC);
}

void pp_cpu_linear_backward_weight(float *dW, float *dbias, const float *dout, const float *in,
                                   int N, int IC, int OC)
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

void pp_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w,
                              const float *b, int N, int C)
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

void pp_cpu_layernorm_backward_input(float *dx, const float *dout, const float *x,
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

/* tanh through expf, several times faster than tanhf. Its absolute error
 * (~1e-7) is what GELU sees: 0.5 x (1 + tanh) is insensitive to the
 * relative error near 0. Saturates to +-1 correctly when expf overflows. */
static inline float fast_tanh(float u)
{
    return 1.0f - 2.0f / (1.0f + expf(2.0f * u));
}

void pp_cpu_gelu_forward(float *out, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float u = GELU_K * (x[i] + GELU_A * x[i] * x[i] * x[i]);
        out[i] = 0.5f * x[i] * (1.0f + fast_tanh(u));
    }
}

void pp_cpu_gelu_backward(float *dx, const float *x, const float *dout, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float xi = x[i];
        float t = fast_tanh(GELU_K * (xi + GELU_A * xi * xi * xi));
        float du = GELU_K * (1.0f + 3.0f * GELU_A * xi * xi);
        dx[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * xi * (1.0f - t * t) * du);
    }
}

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

void pp_cpu_attention_forward(float *restrict y, float *restrict att, const float *restrict qkv,
                              float *restrict kt, pp_cpu_att_dims d)
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

void pp_cpu_attention_backward(float *restrict dqkv, float *restrict datt, float *restrict vt,
                               const float *restrict dy, const float *restrict qkv,
                               const float *restrict att, pp_cpu_att_dims d)
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
