/* The CUDA backend as test_nccl_logic sees it: the CPU reference backend
 * under the name the NCCL transport insists on (attach() accepts only
 * &pp_backend_cuda), plus the two questions the transport asks a CUDA stage.
 * It stands in for exec/cuda/backend_cuda.cu, which this test never links.
 *
 * Every stage's stream is the NULL stream, which fake_runtime.cpp runs on
 * the host at once: the CPU backend has finished its work when it returns,
 * so a stream that is always caught up is the honest one. */
#include <stddef.h>

#include "model/backend.h"
#include "cuda/cuda_backend.h"

#define CPU pp_backend_cpu

static int fake_create(const pp_model_desc *m, int P, int s, const pp_placement *at,
                       void **stage, pp_err *e)
{
    return CPU.create(m, P, s, at, stage, e);
}

static void fake_destroy(void *st)
{
    CPU.destroy(st);
}

static size_t fake_nparams(void *st)
{
    return CPU.nparams(st);
}

static size_t fake_boundary_floats(void *st)
{
    return CPU.boundary_floats(st);
}

static size_t fake_acts_bytes(void *st)
{
    return CPU.acts_bytes(st);
}

static void *fake_alloc(void *st, size_t bytes)
{
    return CPU.alloc(st, bytes);
}

static void fake_release(void *st, void *p)
{
    CPU.release(st, p);
}

static void fake_copy(void *st, void *dst, const void *src, size_t bytes)
{
    CPU.copy(st, dst, src, bytes);
}

static void fake_to_host(void *st, void *host, const void *dev, size_t bytes)
{
    CPU.to_host(st, host, dev, bytes);
}

static void fake_from_host(void *st, void *dev, const void *host, size_t bytes)
{
    CPU.from_host(st, dev, host, bytes);
}

static void fake_init_weights(void *st, void *w, uint64_t seed)
{
    CPU.init_weights(st, w, seed);
}

static int fake_forward(void *st, const void *w, const int *tokens, const void *x_in,
                        const int *targets, void *acts, void *x_out, float *loss, pp_err *e)
{
    return CPU.forward(st, w, tokens, x_in, targets, acts, x_out, loss, e);
}

static int fake_backward_input(void *st, const void *w, void *acts, const void *dx_out,
                               void *dx_in, float loss_scale, pp_err *e)
{
    return CPU.backward_input(st, w, acts, dx_out, dx_in, loss_scale, e);
}

static int fake_backward_weight(void *st, void *acts, void *grad, pp_err *e)
{
    return CPU.backward_weight(st, acts, grad, e);
}

static int fake_optimizer_update(void *st, void *w, void *grad, const pp_opt_step *step,
                                 pp_err *e)
{
    return CPU.optimizer_update(st, w, grad, step, e);
}

static double fake_grad_sumsq(void *st, const void *grad)
{
    return CPU.grad_sumsq(st, grad);
}

static size_t fake_opt_state_bytes(void *st)
{
    return CPU.opt_state_bytes(st);
}

static void fake_opt_state_get(void *st, void *host)
{
    CPU.opt_state_get(st, host);
}

static void fake_opt_state_put(void *st, const void *host)
{
    CPU.opt_state_put(st, host);
}

static int fake_sync(void *st, pp_err *e)
{
    return CPU.sync(st, e);
}

const pp_backend_ops pp_backend_cuda = {
    .name = "cuda",
    .create = fake_create,
    .destroy = fake_destroy,
    .nparams = fake_nparams,
    .boundary_floats = fake_boundary_floats,
    .acts_bytes = fake_acts_bytes,
    .alloc = fake_alloc,
    .release = fake_release,
    .copy = fake_copy,
    .to_host = fake_to_host,
    .from_host = fake_from_host,
    .init_weights = fake_init_weights,
    .forward = fake_forward,
    .backward_input = fake_backward_input,
    .backward_weight = fake_backward_weight,
    .optimizer_update = fake_optimizer_update,
    .grad_sumsq = fake_grad_sumsq,
    .opt_state_bytes = fake_opt_state_bytes,
    .opt_state_get = fake_opt_state_get,
    .opt_state_put = fake_opt_state_put,
    .sync = fake_sync,
};

void *pp_cuda_stage_stream(void *stage)
{
    (void)stage;
    return NULL;
}

int pp_cuda_stage_device(void *stage)
{
    (void)stage;
    return 0;
}
