/* The CUDA backend's AdamW: the optimizer step on the stage's stream, the
 * gradient's sum of squares and scaling for clipping, and the optimizer
 * state (m, v, t) to and from the host in the CPU backend's layout, for
 * checkpoints. */
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

/* --- gradient clipping ----------------------------------------------------------- */

/* The kernels here run on a fixed grid, whatever the device or partition:
 * the same gradient always sums in the same order. */
constexpr int kBlocks = 128, kThreads = 256;

/* partial[b]: block b's grid-stride share of sum g[i]^2, in double. */
__global__ void sumsq_partial(const float *g, size_t n, double *partial)
{
    __shared__ double acc[kThreads];
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        s += (double)g[i] * g[i];
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int k = kThreads / 2; k > 0; k /= 2) {
        if ((int)threadIdx.x < k)
            acc[threadIdx.x] += acc[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partial[blockIdx.x] = acc[0];
}

__global__ void scale(float *x, float k, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= k;
}

/* The partial sums come to the host, which adds them in block order. */
double cuda_grad_sumsq(void *stage, const void *grad)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    if (!c->d_sumsq)
        c->d_sumsq = (double *)dev_alloc(c, kBlocks * sizeof(double), MK_WS);
    if (!c->d_sumsq) {
        fail(c, "gradient norm", "out of device memory");
        return NAN;
    }
    sumsq_partial<<<kBlocks, kThreads, 0, c->stream>>>((const float *)grad, c->g.nparams,
                                                        c->d_sumsq);
    check_launch(c, "gradient norm");
    double partial[kBlocks];
    ck(c, cudaMemcpyAsync(partial, c->d_sumsq, sizeof partial, cudaMemcpyDeviceToHost, c->stream),
       "gradient norm");
    ck(c, cudaStreamSynchronize(c->stream), "gradient norm");
    if (c->failed)
        return NAN;
    double sum = 0.0;
    for (int b = 0; b < kBlocks; b++)
        sum += partial[b];
    return sum;
}

/* --- optimizer -------------------------------------------------------------------- */

void cuda_optimizer_update(void *stage, void *w, void *grad, const pp_opt_step *step)
{
    cuda_stage *c = S(stage);
    const pp_adamw_hparams *hp = &step->hp;
    size_t np = c->g.nparams;
    stage_scope in(c);
    reclassify(c, grad, MK_GRADS);
    c->t++;
    /* Bias corrections as adamw.c computes them: in double, then float. */
    float c1 = (float)(1.0 - pow(hp->beta1, (double)c->t));
    float c2 = (float)(1.0 - pow(hp->beta2, (double)c->t));
    if (np && step->grad_scale != 1.0f) {
        scale<<<kBlocks, kThreads, 0, c->stream>>>((float *)grad, step->grad_scale, np);
        check_launch(c, "clip gradient");
    }
    if (np) {
        k_adamw((float *)w, (const float *)grad, c->m, c->v, np, c->d_tstart, c->d_tdecay,
                c->g.ntensors, step->lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay, c1,
                c2, c->stream);
        check_launch(c, "adamw");
    }
    ck(c, cudaMemsetAsync(grad, 0, np * sizeof(float), c->stream), "zero grad");
}

/* AdamW only, so far: Muon and the delay correction run on the CPU
 * backend (the learning-rate correction is the runtime's and works here). */
int cuda_optimizer_init(void *stage, const pp_optim_config *cfg, pp_err *e)
{
    (void)stage;
    if (cfg->kind != PP_OPTIM_ADAMW)
        return pp_errf(e, "--optimizer %s: the cuda backend has only adamw so far (--backend cpu "
                          "has %s)", pp_optim_name(cfg->kind), pp_optim_name(cfg->kind));
    if (cfg->delay_buffer)
        return pp_errf(e, "--delay-correction: the cuda backend does not have it yet (--backend "
                          "cpu does)");
    return 0;
}

/* m, v, then t as a double: the CPU backend's layout. */
size_t cuda_opt_state_bytes(void *stage)
{
    return 2 * S(stage)->g.nparams * sizeof(float) + sizeof(double);
}

void cuda_opt_state_get(void *stage, void *host)
{
    cuda_stage *c = S(stage);
    size_t n = c->g.nparams * sizeof(float);
    double t = (double)c->t;
    stage_scope in(c);
    ck(c, cudaMemcpyAsync(host, c->m, n, cudaMemcpyDeviceToHost, c->stream), "opt_state_get");
    ck(c, cudaMemcpyAsync((char *)host + n, c->v, n, cudaMemcpyDeviceToHost, c->stream),
       "opt_state_get");
    ck(c, cudaStreamSynchronize(c->stream), "opt_state_get");
    memcpy((char *)host + 2 * n, &t, sizeof t);
}

void cuda_opt_state_put(void *stage, const void *host)
{
    cuda_stage *c = S(stage);
    size_t n = c->g.nparams * sizeof(float);
    double t;
    stage_scope in(c);
    ck(c, cudaMemcpyAsync(c->m, host, n, cudaMemcpyHostToDevice, c->stream), "opt_state_put");
    ck(c, cudaMemcpyAsync(c->v, (const char *)host + n, n, cudaMemcpyHostToDevice, c->stream),
       "opt_state_put");
    ck(c, cudaStreamSynchronize(c->stream), "opt_state_put");
    memcpy(&t, (const char *)host + 2 * n, sizeof t);
    c->t = (long)t;
}

} // namespace pp_cuda
