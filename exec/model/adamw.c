#include "adamw.h"

#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

pp_adamw_hparams pp_adamw_defaults(void)
{
    pp_adamw_hparams hp = {0.9f, 0.95f, 1e-8f, 0.1f};
    return hp;
}

int pp_adamw_init(pp_adamw *o, size_t n, pp_adamw_hparams hp, pp_err *e)
{
    memset(o, 0, sizeof *o);
    o->hp = hp;
    o->n = n;
    o->m = calloc(n ? n : 1, sizeof *o->m);
    o->v = calloc(n ? n : 1, sizeof *o->v);
    if (!o->m || !o->v) {
        pp_adamw_free(o);
        return pp_errf(e, "out of memory for AdamW state (%zu parameters)", n);
    }
    return 0;
}

void pp_adamw_free(pp_adamw *o)
{
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

void pp_adamw_begin_step(pp_adamw *o)
{
    o->t++;
}

void pp_adamw_update(const pp_adamw *o, float *w, const float *grad, size_t offset,
                     size_t count, int decay, float lr)
{
    pp_adamw_apply(&o->hp, o->t, o->m + offset, o->v + offset, w + offset, grad + offset, count,
                   decay, lr, NULL, 0.0f);
}

void pp_adamw_apply(const pp_adamw_hparams *hp, long t, float *restrict m, float *restrict v,
                    float *restrict p, const float *restrict g, size_t count, int decay, float lr,
                    float *restrict prev, float beta)
{
    /* Bias corrections in double: 1 - beta^t is tiny for small t. */
    float c1 = (float)(1.0 - pow(hp->beta1, (double)t));
    float c2 = (float)(1.0 - pow(hp->beta2, (double)t));
    float wd = decay ? hp->weight_decay : 0.0f;
    if (!prev) {
        for (size_t i = 0; i < count; i++) {
            m[i] = hp->beta1 * m[i] + (1.0f - hp->beta1) * g[i];
            v[i] = hp->beta2 * v[i] + (1.0f - hp->beta2) * g[i] * g[i];
            float mhat = m[i] / c1, vhat = v[i] / c2;
            /* Decoupled decay: uses the weight before this step's update. */
            p[i] -= lr * (mhat / (sqrtf(vhat) + hp->eps) + wd * p[i]);
        }
        return;
    }
    /* The same update u, kept for the delay correction (a loop of its own
     * so that the plain one stays as simple as it was) */
    for (size_t i = 0; i < count; i++) {
        m[i] = hp->beta1 * m[i] + (1.0f - hp->beta1) * g[i];
        v[i] = hp->beta2 * v[i] + (1.0f - hp->beta2) * g[i] * g[i];
        float mhat = m[i] / c1, vhat = v[i] / c2;
        float u = lr * (mhat / (sqrtf(vhat) + hp->eps) + wd * p[i]);
        p[i] -= pp_delay_correct(u, &prev[i], beta);
    }
}

void pp_grad_zero(float *grad, size_t n)
{
    memset(grad, 0, n * sizeof *grad);
}

double pp_grad_sumsq(const float *grad, size_t n)
{
    /* Four interleaved partial sums: independent additions keep the FPU
     * busy, and the order stays fixed. */
    double acc[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++)
            acc[k] += (double)grad[i + k] * grad[i + k];
    for (; i < n; i++)
        acc[0] += (double)grad[i] * grad[i];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

void pp_grad_scale(float *grad, size_t n, float k)
{
    for (size_t i = 0; i < n; i++)
        grad[i] *= k;
}

float pp_lr_at(const pp_lr_schedule *s, long step)
{
    if (step < s->warmup)
        return s->lr * (float)(step + 1) / (float)s->warmup;
    if (step >= s->total)
        return s->min_lr;
    double ratio = (double)(step - s->warmup) / (double)(s->total - s->warmup);
    double coeff = 0.5 * (1.0 + cos(3.141592653589793 * ratio));
    return (float)(s->min_lr + coeff * (s->lr - s->min_lr));
}
