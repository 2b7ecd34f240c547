/* The CPU reference backend: host memory, gpt_cpu.c for the math, the
 * optimizers of cpu_optim.c. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu_optim.h"
#include "gpt_cpu.h"

typedef struct {
    pp_gpt_stage g;
    pp_cpu_optim opt;
} cpu_stage;

static int cpu_create(const pp_model_desc *m, int P, int s, const pp_placement *at, void **out,
                      pp_err *e)
{
    cpu_stage *c = calloc(1, sizeof *c);
    if (!c)
        return pp_errf(e, "out of memory");
    if (pp_gpt_stage_init(&c->g, m, P, s, e) < 0) {
        free(c);
        return -1;
    }
    if (pp_gpt_stage_set_threads(&c->g, at ? at->threads : 1, e) < 0) {
        pp_gpt_stage_free(&c->g);
        free(c);
        return -1;
    }
    pp_optim_config adamw = pp_optim_defaults();
    if (pp_cpu_optim_init(&c->opt, &c->g, &adamw, e) < 0) {
        pp_gpt_stage_free(&c->g);
        free(c);
        return -1;
    }
    *out = c;
    return 0;
}

static void cpu_destroy(void *stage)
{
    cpu_stage *c = stage;
    pp_cpu_optim_free(&c->opt);
    pp_gpt_stage_free(&c->g);
    free(c);
}

static size_t cpu_nparams(void *stage)
{
    return ((cpu_stage *)stage)->g.nparams;
}

static size_t cpu_boundary_floats(void *stage)
{
    const pp_gpt_stage *g = &((cpu_stage *)stage)->g;
    return (size_t)g->B * g->T * g->C;
}

/* A micro-batch keeps its activations and, between I and W, the
 * activation gradients: one buffer holds both. */
static size_t cpu_acts_bytes(void *stage)
{
    const pp_gpt_stage *g = &((cpu_stage *)stage)->g;
    return (pp_gpt_acts_floats(g) + pp_gpt_gacts_floats(g)) * sizeof(float);
}

static void *cpu_alloc(void *stage, size_t bytes)
{
    (void)stage;
    return calloc(1, bytes ? bytes : 1);
}

static void cpu_release(void *stage, void *p)
{
    (void)stage;
    free(p);
}

static void cpu_copy(void *stage, void *dst, const void *src, size_t bytes)
{
    (void)stage;
    memcpy(dst, src, bytes);
}

static void cpu_init_weights(void *stage, void *w, uint64_t seed)
{
    pp_gpt_stage_init_weights(&((cpu_stage *)stage)->g, w, seed);
}

static int cpu_forward(void *stage, const void *w, const int *tokens, const void *x_in,
                       const int *targets, void *acts, void *x_out, float *loss, pp_err *e)
{
    cpu_stage *c = stage;
    return pp_gpt_forward(&c->g, w, tokens, x_in, targets, acts, x_out, loss, e);
}

static float *gacts_of(cpu_stage *c, void *acts)
{
    return (float *)acts + pp_gpt_acts_floats(&c->g);
}

/* The CPU's compute cannot fail once its buffers exist: 0 throughout. */
static int cpu_backward_input(void *stage, const void *w, void *acts, const void *dx_out,
                              void *dx_in, float loss_scale, pp_err *e)
{
    (void)e;
    cpu_stage *c = stage;
    pp_gpt_backward_input(&c->g, w, acts, dx_out, dx_in, gacts_of(c, acts), loss_scale);
    return 0;
}

static int cpu_backward_weight(void *stage, void *acts, void *grad, pp_err *e)
{
    (void)e;
    cpu_stage *c = stage;
    pp_gpt_backward_weight(&c->g, acts, gacts_of(c, acts), grad);
    return 0;
}

/* The hyperparameters come with every update (configuration, not state). */
static int cpu_optimizer_update(void *stage, void *w, void *grad, const pp_opt_step *step,
                                pp_err *e)
{
    (void)e;
    cpu_stage *c = stage;
    if (step->grad_scale != 1.0f)
        pp_grad_scale(grad, c->g.nparams, step->grad_scale);
    pp_cpu_optim_step(&c->opt, w, grad, step->lr, &step->hp);
    pp_grad_zero(grad, c->g.nparams);
    return 0;
}

/* Every optimizer of optim.h; a stage's state starts from zero. */
static int cpu_optimizer_init(void *stage, const pp_optim_config *cfg, pp_err *e)
{
    if (!stage)
        return 0;
    cpu_stage *c = stage;
    pp_cpu_optim fresh;
    if (pp_cpu_optim_init(&fresh, &c->g, cfg, e) < 0)
        return -1;
    pp_cpu_optim_free(&c->opt);
    c->opt = fresh;
    return 0;
}

static double cpu_grad_sumsq(void *stage, const void *grad)
{
    return pp_grad_sumsq(grad, ((cpu_stage *)stage)->g.nparams);
}

static size_t cpu_opt_state_bytes(void *stage)
{
    return pp_cpu_optim_state_bytes(&((cpu_stage *)stage)->opt);
}

static void cpu_opt_state_get(void *stage, void *host)
{
    pp_cpu_optim_state_get(&((cpu_stage *)stage)->opt, host);
}

static void cpu_opt_state_put(void *stage, const void *host)
{
    pp_cpu_optim_state_put(&((cpu_stage *)stage)->opt, host);
}

static int cpu_sync(void *stage, pp_err *e)
{
    (void)stage;
    (void)e;
    return 0;
}

const pp_backend_ops pp_backend_cpu = {
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .nparams = cpu_nparams,
    .boundary_floats = cpu_boundary_floats,
    .acts_bytes = cpu_acts_bytes,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .copy = cpu_copy,
    .to_host = cpu_copy,
    .from_host = cpu_copy,
    .init_weights = cpu_init_weights,
    .forward = cpu_forward,
    .backward_input = cpu_backward_input,
    .backward_weight = cpu_backward_weight,
    .optimizer_update = cpu_optimizer_update,
    .optimizer_init = cpu_optimizer_init,
    .grad_sumsq = cpu_grad_sumsq,
    .opt_state_bytes = cpu_opt_state_bytes,
    .opt_state_get = cpu_opt_state_get,
    .opt_state_put = cpu_opt_state_put,
    .sync = cpu_sync,
};
