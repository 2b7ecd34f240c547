/* The CUDA backend's optimizers (optim.h: AdamW, Muon, adamw-rotated, any
 * of them with the delay correction) on the stage's stream: choosing one and laying out its
 * state, the update, the gradient's sum of squares and scaling for
 * clipping, and the state to and from the host in the CPU backend's layout
 * (cpu_optim.h), so that a checkpoint's optimizer state means the same on
 * both backends. Muon's matrices are cuda_muon.cu's, adamw-rotated's
 * cuda_rotated.cu's. */
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cuda_stage.cuh"
#include "kernels.cuh"

extern "C" {
#include "model/cpu_optim.h" /* pp_muon_matrix: the CPU's choice of hidden matrices */
}

namespace pp_cuda {

/* --- gradient clipping ----------------------------------------------------------- */

/* The partial sums come to the host, which adds them in block order. */
double cuda_grad_sumsq(void *stage, const void *grad)
{
    cuda_stage *c = S(stage);
    stage_scope in(c);
    if (!c->d_sumsq)
        c->d_sumsq = (double *)dev_alloc(c, PP_SUMSQ_BLOCKS * sizeof(double), MK_WS);
    if (!c->d_sumsq) {
        fail(c, "gradient norm", "out of device memory");
        return NAN;
    }
    k_sumsq_partial((const float *)grad, c->g.nparams, c->d_sumsq, c->stream);
    check_launch(c, "gradient norm");
    double partial[PP_SUMSQ_BLOCKS];
    ck(c, cudaMemcpyAsync(partial, c->d_sumsq, sizeof partial, cudaMemcpyDeviceToHost, c->stream),
       "gradient norm");
    ck(c, cudaStreamSynchronize(c->stream), "gradient norm");
    if (c->failed)
        return NAN;
    double sum = 0.0;
    for (int b = 0; b < PP_SUMSQ_BLOCKS; b++)
        sum += partial[b];
    return sum;
}

/* --- the update ------------------------------------------------------------------- */

int cuda_optimizer_update(void *stage, void *w, void *grad, const pp_opt_step *step, pp_err *e)
{
    cuda_stage *c = S(stage);
    cuda_optim &o = c->opt;
    const pp_adamw_hparams *hp = &step->hp;
    size_t np = c->g.nparams;
    stage_scope in(c);
    if (status(c, e) < 0)
        return -1;
    reclassify(c, grad, MK_GRADS);
    weights_written();
    o.t++; /* every update is one AdamW step, Muon's included (cpu_optim.c) */
    if (np && step->grad_scale != 1.0f) {
        k_scale((float *)grad, step->grad_scale, np, c->stream);
        check_launch(c, "clip gradient");
    }
    /* Bias corrections as adamw.c computes them: in double, then float. */
    float c1 = (float)(1.0 - pow(hp->beta1, (double)o.t)),
          c2 = (float)(1.0 - pow(hp->beta2, (double)o.t));
    if (np) {
        pp_adamw_args a = {step->lr, hp->beta1, hp->beta2, hp->eps, hp->weight_decay,
                           c1,       c2,        o.cfg.delay_beta};
        k_adamw((float *)w, (const float *)grad, o.m, o.v, o.prev, np, c->d_tstart,
                c->d_state_at, c->d_tdecay, c->g.ntensors, &a, c->stream);
        check_launch(c, "adamw");
    }
    if (o.mom)
        muon_update(c, (float *)w, (const float *)grad, step->lr, hp->weight_decay);
    if (o.rot)
        rotated_update(c, (float *)w, (const float *)grad, step->lr, hp, c1, c2);
    ck(c, cudaMemsetAsync(grad, 0, np * sizeof(float), c->stream), "zero grad");
    return status(c, e);
}

/* --- choosing the optimizer ------------------------------------------------------- */

static void release_state(cuda_stage *c, cuda_optim &o)
{
    void *bufs[] = {o.m, o.v, o.mom, o.prev, o.ns_x, o.ns_y, o.ns_a, o.ns_b, o.ns_inv,
                    o.ns_xh, o.ns_ah, o.ns_bh, o.ns_part};
    for (void *p : bufs)
        cuda_release(c, p);
    rotated_release(c, o);
}

/* cpu_optim.c's layout for cfg over the stage's tensors, its buffers
 * allocated (zero) in o; false when out of device memory. */
static bool make_state(cuda_stage *c, const pp_optim_config *cfg, cuda_optim &o)
{
    const pp_gpt_stage *g = &c->g;
    bool muon = cfg->kind == PP_OPTIM_MUON, rotated = cfg->kind == PP_OPTIM_ADAMW_ROTATED;
    size_t big = 0, gram = 0;
    o.cfg = *cfg;
    o.adam_at.assign(g->ntensors, PP_GPT_NO_STATE);
    o.mom_at.assign(g->ntensors, PP_GPT_NO_STATE);
    for (int i = 0; i < g->ntensors; i++) {
        const pp_gpt_tensor *t = &g->tensors[i];
        if (muon && pp_muon_matrix(t)) {
            o.mom_at[i] = o.nmom;
            o.nmom += t->numel;
            size_t b, k;
            muon_scratch_floats(t->rows, t->cols, &b, &k);
            big = b > big ? b : big;
            gram = k > gram ? k : gram;
        } else if (rotated) {
            /* moments for every parameter at its own offset; the AdamW
             * kernel leaves the hidden matrices to cuda_rotated.cu */
            o.adam_at[i] = pp_muon_matrix(t) ? PP_GPT_NO_STATE : t->offset;
            o.nadam = g->nparams;
        } else {
            o.adam_at[i] = o.nadam;
            o.nadam += t->numel;
        }
    }
    const size_t f = sizeof(float), h = sizeof(__nv_bfloat16);
    o.m = (float *)dev_alloc(c, o.nadam * f, MK_OPT);
    o.v = (float *)dev_alloc(c, o.nadam * f, MK_OPT);
    bool ok = o.m && o.v;
    if (cfg->delay_buffer)
        ok = ok && (o.prev = (float *)dev_alloc(c, g->nparams * f, MK_OPT));
    if (rotated)
        return ok && rotated_init(c, o);
    if (!muon)
        return ok;
    ok = ok && (o.mom = (float *)dev_alloc(c, o.nmom * f, MK_OPT));
    float **ws[] = {&o.ns_x, &o.ns_y, &o.ns_a, &o.ns_b, &o.ns_inv};
    size_t wn[] = {big, big, gram, gram, 1};
    for (int i = 0; i < 5; i++)
        ok = ok && (*ws[i] = (float *)dev_alloc(c, wn[i] * f, MK_WS));
    ok = ok && (o.ns_part = (double *)dev_alloc(c, PP_SUMSQ_BLOCKS * sizeof(double), MK_WS));
    if (muon_bf16(c)) {
        __nv_bfloat16 **hs[] = {&o.ns_xh, &o.ns_ah, &o.ns_bh};
        size_t hn[] = {big, gram, gram};
        for (int i = 0; i < 3; i++)
            ok = ok && (*hs[i] = (__nv_bfloat16 *)dev_alloc(c, hn[i] * h, MK_WS));
    }
    return ok;
}

/* AdamW, Muon and adamw-rotated, any of them with the delay correction;
 * what a stage is created with (AdamW) goes through here too. */
int cuda_optimizer_init(void *stage, const pp_optim_config *cfg, pp_err *e)
{
    if (cfg->kind != PP_OPTIM_ADAMW && cfg->kind != PP_OPTIM_MUON &&
        cfg->kind != PP_OPTIM_ADAMW_ROTATED)
        return pp_errf(e, "--optimizer %s: not an optimizer of the cuda backend",
                       pp_optim_name(cfg->kind));
    if (!stage)
        return 0;
    cuda_stage *c = S(stage);
    stage_scope in(c);
    cuda_optim fresh = cuda_optim();
    if (!make_state(c, cfg, fresh)) {
        release_state(c, fresh);
        if (c->failed)
            return pp_errf(e, "--backend cuda: %s", c->err);
        return pp_errf(e, "--backend cuda: stage %d: out of device memory for the %s state",
                       c->g.s, pp_optim_name(cfg->kind));
    }
    /* The AdamW kernel's table: where each tensor's moments are. Queued
     * after the updates of the previous optimizer, which read the old one. */
    std::vector<unsigned long long> at(c->g.ntensors);
    for (int i = 0; i < c->g.ntensors; i++)
        at[i] = fresh.adam_at[i] == PP_GPT_NO_STATE ? PP_NO_STATE : fresh.adam_at[i];
    ck(c, cudaMemcpyAsync(c->d_state_at, at.data(), at.size() * sizeof at[0],
                          cudaMemcpyHostToDevice, c->stream),
       "optimizer table");
    release_state(c, c->opt);
    c->opt = std::move(fresh);
    ck(c, cudaStreamSynchronize(c->stream), "optimizer init");
    if (c->failed)
        return pp_errf(e, "--backend cuda: %s", c->err);
    return 0;
}

/* --- the state, for checkpoints ----------------------------------------------------- */

/* Its device parts in cpu_optim.h's order (Muon's momentum, AdamW's m, v,
 * the rotation's covariances and bases, the delay buffer), then t as a
 * double. */
struct part {
    float *p;
    size_t n;
};

#define NPARTS 5

static int parts(cuda_stage *c, part out[NPARTS])
{
    cuda_optim &o = c->opt;
    int k = 0;
    if (o.mom)
        out[k++] = {o.mom, o.nmom};
    out[k++] = {o.m, o.nadam};
    out[k++] = {o.v, o.nadam};
    if (o.rot)
        out[k++] = {o.rot, o.nrot};
    if (o.prev)
        out[k++] = {o.prev, c->g.nparams};
    return k;
}

size_t cuda_opt_state_bytes(void *stage)
{
    part p[NPARTS];
    size_t bytes = sizeof(double);
    for (int i = 0, k = parts(S(stage), p); i < k; i++)
        bytes += p[i].n * sizeof(float);
    return bytes;
}

void cuda_opt_state_get(void *stage, void *host)
{
    cuda_stage *c = S(stage);
    part p[NPARTS];
    char *at = (char *)host;
    stage_scope in(c);
    for (int i = 0, k = parts(c, p); i < k; i++) {
        ck(c, cudaMemcpyAsync(at, p[i].p, p[i].n * sizeof(float), cudaMemcpyDeviceToHost,
                              c->stream),
           "opt_state_get");
        at += p[i].n * sizeof(float);
    }
    ck(c, cudaStreamSynchronize(c->stream), "opt_state_get");
    double t = (double)c->opt.t; /* exact up to 2^53 */
    memcpy(at, &t, sizeof t);
}

void cuda_opt_state_put(void *stage, const void *host)
{
    cuda_stage *c = S(stage);
    part p[NPARTS];
    const char *at = (const char *)host;
    stage_scope in(c);
    for (int i = 0, k = parts(c, p); i < k; i++) {
        ck(c, cudaMemcpyAsync(p[i].p, at, p[i].n * sizeof(float), cudaMemcpyHostToDevice,
                              c->stream),
           "opt_state_put");
        at += p[i].n * sizeof(float);
    }
    ck(c, cudaStreamSynchronize(c->stream), "opt_state_put");
    double t;
    memcpy(&t, at, sizeof t);
    c->opt.t = (long)t;
}

} // namespace pp_cuda
