/* exec/model/: the model and its compute: GPT on the CPU (the numerical
 * reference), the GEMM, the optimizers, data loading, and the backend
 * table (this header) that the runtime calls and the CUDA backend
 * implements. Includes only common/ headers, never another room.
 *
 * What a stage's compute needs from a device, as a table of functions: the
 * CPU reference implements it in backend_cpu.c, the CUDA backend in
 * backend_cuda.cu behind the same table. Buffers are opaque device
 * pointers; the runtime never touches their contents except through
 * to_host/from_host (checkpoints, the in-process transport on the CPU).
 * Every function runs on the stage's own thread and, on a GPU, its own
 * stream.
 *
 * A device that fails keeps its first error (sticky): forward,
 * backward_input, backward_weight, optimizer_update and sync return -1
 * with it in one line once it is set, so a failure in any action stops
 * the run. Work queued on a GPU can fail after the call that queued it
 * returned: the next call, or sync, reports it. */
#ifndef PP_BACKEND_H
#define PP_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "adamw.h"
#include "error.h"
#include "model.h"
#include "optim.h"

typedef struct pp_backend_ops pp_backend_ops;

/* Clock marks a stage keeps (clock_mark): the runtime reads an action's
 * times up to 32 actions behind the work (runtime/device_clock.c). */
#define PP_CLOCK_SLOTS 66

/* Where a stage runs. On one GPU that several stages share, each stage
 * gets its own partition of the SMs (a CUDA green context), so that its
 * idle time really idles those SMs, as on P separate GPUs. */
typedef struct {
    int device;     /* GPU id (the CPU backend ignores it) */
    int partition;  /* this stage's SM partition, 0..partitions-1; -1: the whole GPU */
    int partitions; /* stages sharing the device with SM partitions */
    int threads;    /* CPU threads of the stage (CPU backend); 0 or 1: one */
} pp_placement;

#define PP_PLACEMENT_WHOLE(dev) ((pp_placement){(dev), -1, 0, 1})

/* One optimizer update as the runtime asks for it: the learning rate,
 * AdamW's hyperparameters (configuration, not state: checkpoints do not
 * save them) and the factor the gradient is multiplied by first (gradient
 * clipping; exactly 1 leaves the gradient untouched). */
typedef struct {
    float lr;
    pp_adamw_hparams hp;
    float grad_scale;
} pp_opt_step;

/* The update of a caller that has only a learning rate: AdamW's defaults,
 * no clipping. */
static inline pp_opt_step pp_opt_step_default(float lr)
{
    pp_opt_step st = {lr, pp_adamw_defaults(), 1.0f};
    return st;
}

struct pp_backend_ops {
    const char *name;
    /* Builds stage s of P; *stage is the backend's own state. */
    int (*create)(const pp_model_desc *m, int P, int s, const pp_placement *at, void **stage,
                  pp_err *e);
    void (*destroy)(void *stage);

    size_t (*nparams)(void *stage);       /* floats of one weight copy */
    size_t (*boundary_floats)(void *stage); /* B*T*C: one activation message */
    size_t (*acts_bytes)(void *stage);    /* saved per micro-batch in flight */

    void *(*alloc)(void *stage, size_t bytes); /* zeroed; NULL when out of memory */
    void (*release)(void *stage, void *p);
    void (*copy)(void *stage, void *dst, const void *src, size_t bytes);
    void (*to_host)(void *stage, void *host, const void *dev, size_t bytes);
    void (*from_host)(void *stage, void *dev, const void *host, size_t bytes);

    void (*init_weights)(void *stage, void *w, uint64_t seed);
    /* F: tokens/targets are host arrays of B*T ids (stage 0 / last). */
    int (*forward)(void *stage, const void *w, const int *tokens, const void *x_in,
                   const int *targets, void *acts, void *x_out, float *loss, pp_err *e);
    /* I: input gradient; the last stage starts from d loss * loss_scale. */
    int (*backward_input)(void *stage, const void *w, void *acts, const void *dx_out,
                          void *dx_in, float loss_scale, pp_err *e);
    /* W: adds this micro-batch's weight gradient into grad. */
    int (*backward_weight)(void *stage, void *acts, void *grad, pp_err *e);
    /* OPT: one step of the stage's optimizer (AdamW unless optimizer_init
     * chose another) on w with grad as `step` says, then zeroes grad. */
    int (*optimizer_update)(void *stage, void *w, void *grad, const pp_opt_step *step,
                            pp_err *e);
    /* Chooses the stage's optimizer (optim.h), state zero, before its
     * first update and before opt_state_*; a stage starts with AdamW.
     * With stage NULL it only says whether the backend has cfg's
     * optimizer (a tool asks before any work). -1 with one line naming
     * what the backend lacks. */
    int (*optimizer_init)(void *stage, const pp_optim_config *cfg, pp_err *e);
    /* Sum of the squares of grad's elements (the stage's gradient, for
     * clipping), in double and in a fixed order; waits for the stage's
     * queued work. NaN when the device failed. */
    double (*grad_sumsq)(void *stage, const void *grad);
    /* Optimizer state for checkpoints: bytes, and copy out / in (host).
     * Whatever the optimizer, it ends with its step count t as a double
     * (AdamW's, which every update advances), which a resume checks
     * against the stage's updates before handing the state back. */
    size_t (*opt_state_bytes)(void *stage);
    void (*opt_state_get)(void *stage, void *host);
    void (*opt_state_put)(void *stage, const void *host);
    /* Waits for the stage's queued work; -1 with the device's error. */
    int (*sync)(void *stage, pp_err *e);
    /* Ordering between stages without the host waiting, for messages
     * between their queues (NULL where every call has finished when it
     * returns: the CPU). A fence marks the work queued on a stage so far
     * (fence_mark); fence_wait makes what a stage queues next wait for the
     * fence's last mark (at once if it has none); copy_queued is copy
     * without the host's wait. fence_new: NULL when out of memory. */
    void *(*fence_new)(void *stage);
    void (*fence_free)(void *stage, void *fence);
    void (*fence_mark)(void *stage, void *fence);
    void (*fence_wait)(void *stage, void *fence);
    void (*copy_queued)(void *stage, void *dst, const void *src, size_t bytes);
    /* Device clocks: NULL where the host clock times the work exactly (the
     * CPU). A mark records the position of the stage's queue in one of
     * PP_CLOCK_SLOTS slots (a later mark in a slot replaces it):
     * clock_mark records it; clock_origin records it and waits for it, so
     * that its host time is known; clock_between waits for mark b and
     * returns the device's seconds from mark a to mark b (negative on
     * failure). The runtime reads them behind the work
     * (runtime/device_clock.c). */
    void (*clock_origin)(void *stage, int slot);
    void (*clock_mark)(void *stage, int slot);
    double (*clock_between)(void *stage, int a, int b);
};

/* Sets stage's optimizer to cfg through b's optimizer_init (stage NULL:
 * only checks that b has it). AdamW needs no call: every backend has it,
 * and one without optimizer_init has nothing else. */
static inline int pp_backend_optimizer_init(const pp_backend_ops *b, void *stage,
                                            const pp_optim_config *cfg, pp_err *e)
{
    if (pp_optim_plain_adamw(cfg))
        return 0;
    if (!b->optimizer_init)
        return pp_errf(e, "--optimizer %s: the %s backend has only adamw",
                       pp_optim_name(cfg->kind), b->name);
    return b->optimizer_init(stage, cfg, e);
}

/* The CPU reference (backend_cpu.c); the runtime's pp_backend_find picks
 * a backend by name. */
extern const pp_backend_ops pp_backend_cpu;

#endif
