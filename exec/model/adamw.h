/* AdamW over a flat parameter array, the gradient helpers of an update
 * (zeroing, the sum of squares and the scaling that clipping needs) and the
 * learning-rate schedule (DESIGN §6): betas 0.9/0.95, eps 1e-8, decoupled
 * weight decay 0.1 on the tensors flagged for it by default, bias
 * correction with the owner's own step count (each pipeline stage steps its
 * own optimizer). */
#ifndef PP_ADAMW_H
#define PP_ADAMW_H

#include <stddef.h>

#include "error.h"

typedef struct {
    float beta1, beta2, eps, weight_decay;
} pp_adamw_hparams;

/* 0.9, 0.95, 1e-8, 0.1. */
pp_adamw_hparams pp_adamw_defaults(void);

/* Optimizer state; m, v and t are what a checkpoint must save. */
typedef struct {
    pp_adamw_hparams hp;
    size_t n;
    float *m, *v; /* first and second moments, zero at t = 0 */
    long t;       /* steps taken */
} pp_adamw;

int pp_adamw_init(pp_adamw *o, size_t n, pp_adamw_hparams hp, pp_err *e);
void pp_adamw_free(pp_adamw *o);

/* One step: pp_adamw_begin_step once (t += 1), then pp_adamw_update for
 * each range [offset, offset + count) of the parameters, decay saying
 * whether weight decay applies there. Ranges of one step must not overlap. */
void pp_adamw_begin_step(pp_adamw *o);
void pp_adamw_update(const pp_adamw *o, float *w, const float *grad, size_t offset,
                     size_t count, int decay, float lr);

/* The same step on `count` parameters p with gradient g and moments m, v
 * given apart (an optimizer that runs AdamW on part of its parameters
 * keeps their moments packed), at step t. With prev (the delay
 * correction, optim.h) the update u applied is u + beta (u - prev) and u
 * is kept in prev; without, u itself, as pp_adamw_update. */
void pp_adamw_apply(const pp_adamw_hparams *hp, long t, float *m, float *v, float *p,
                    const float *g, size_t count, int decay, float lr, float *prev, float beta);

/* Zeroes n gradient elements (before the first micro-batch of a step). */
void pp_grad_zero(float *grad, size_t n);

/* Sum of the squares of n gradient elements, in double and in a fixed
 * order: the same gradient always gives the same bits. */
double pp_grad_sumsq(const float *grad, size_t n);

/* grad[i] *= k (gradient clipping). */
void pp_grad_scale(float *grad, size_t n, float k);

/* Linear warm-up over `warmup` steps, then cosine decay from lr to min_lr
 * at step `total`; min_lr after that. */
typedef struct {
    float lr, min_lr;
    long warmup, total;
} pp_lr_schedule;

/* Learning rate of step `step` (0-based): lr * (step + 1) / warmup during
 * warm-up, so step warmup - 1 already uses the full lr; then
 * min_lr + (lr - min_lr) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2. */
float pp_lr_at(const pp_lr_schedule *s, long step);

#endif
