/* The CUDA backend's AdamW: the optimizer step on the stage's stream, and
 * its state (m, v, t) to and from the host in the CPU backend's layout, for
 * checkpoints. */
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>

#include "cuda_stage.cuh"
#include "kernels.cuh"

namespace pp_cuda {

/* --- optimizer -------------------------------------------------------------------- */

void cuda_optimizer_step(void *stage, void *w, void *grad, float lr)
{
    cuda_stage *c = S(stage);
    size_t np = c->g.nparams;
    stage_scope in(c);
    reclassify(c, grad, MK_GRADS);
    c->t++;
    /* Bias corrections as adamw.c computes them: in double, then float. */
    float c1 = (float)(1.0 - pow(c->hp.beta1, (double)c->t));
    float c2 = (float)(1.0 - pow(c->hp.beta2, (double)c->t));
    if (np) {
        k_adamw((float *)w, (const float *)grad, c->m, c->v, np, c->d_tstart, c->d_tdecay,
                c->g.ntensors, lr, c->hp.beta1, c->hp.beta2, c->hp.eps, c->hp.weight_decay, c1,
                c2, c->stream);
        check_launch(c, "adamw");
    }
    ck(c, cudaMemsetAsync(grad, 0, np * sizeof(float), c->stream), "zero grad");
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
