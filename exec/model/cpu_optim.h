/* The optimizer of one CPU stage (optim.h names them): AdamW, or Muon or
 * adamw-rotated (cpu_rotated.h) with AdamW for what is not a hidden
 * matrix, any of them with the delay correction; over the stage's flat
 * parameter array as its tensor table (gpt_cpu.h) describes it, on the
 * stage's thread team.
 *
 * Muon (Keller Jordan, "Muon: An optimizer for hidden layers in neural
 * networks", 2024, kellerjordan.github.io/posts/muon), for each hidden
 * matrix W [rows][cols] with gradient G:
 *   M <- mu M + (1 - mu) G                  momentum, mu = 0.95 by default
 *   N = mu M + (1 - mu) G                   Nesterov: the step looks ahead
 *   X = N / (||N||_F + 1e-7), transposed when rows > cols (so X X^T is the
 *       small side); five times X <- a X + (b A + c A A) X with A = X X^T,
 *       (a, b, c) = (3.4445, -4.7750, 2.0315): the quintic Newton-Schulz
 *       iteration of the write-up, which drives every singular value of X
 *       towards 1 quickly rather than exactly (a value s of the normalised
 *       matrix with s >= 0.002 ends in [0.68, 1.21]); O = X (transposed
 *       back): the orthogonalised update
 *   W <- W - lr (0.2 sqrt(max(rows, cols)) O + wd W)
 * The scale 0.2 sqrt(max(rows, cols)) gives O the RMS of a typical AdamW
 * update (Liu et al., "Muon is Scalable for LLM Training", Moonshot AI,
 * arXiv 2502.16982), so Muon shares --lr and --weight-decay with the AdamW
 * part. The stacked qkv matrix [3 dim][dim] is orthogonalised as one
 * matrix, as the stage stores it. The products run through pp_mm_*
 * (cpu_gemm.h): deterministic for a fixed team size.
 *
 * State, in this order (what a checkpoint saves): Muon's momentum, packed
 * over the hidden matrices; AdamW's m, then v, packed over the other
 * parameters (all of them for adamw; for adamw-rotated too, each at its
 * parameter's offset, the hidden matrices' v in their rotated basis); the
 * rotation's covariances and bases (adamw-rotated, cpu_rotated.h); the
 * last update of every parameter (the delay correction, when on); AdamW's
 * step count t as a double (every update takes one step, so t is the
 * stage's update count). */
#ifndef PP_CPU_OPTIM_H
#define PP_CPU_OPTIM_H

#include <stddef.h>

#include "adamw.h"
#include "cpu_rotated.h"
#include "error.h"
#include "gpt_cpu.h"
#include "optim.h"

typedef struct {
    pp_optim_config cfg;
    const pp_gpt_stage *g; /* its tensor table and thread team; not owned */
    pp_adamw adam;         /* m, v over the AdamW parameters, packed; t */
    /* [ntensors]: where tensor i's state starts in adam's m and v, or in
     * mom; PP_GPT_NO_STATE in the table of the other optimizer */
    size_t *adam_at, *mom_at;
    float *mom;            /* Muon's momentum, packed over the hidden matrices */
    size_t nmom;
    float *prev;           /* [nparams]: the last update (delay correction), or NULL */
    float *scratch;        /* Muon: a matrix's update and its Newton-Schulz work space */
    pp_rotated rot;        /* adamw-rotated: covariances and bases of the hidden matrices */
} pp_cpu_optim;

/* 1 when Muon orthogonalises tensor t's update, and adamw-rotated rotates
 * it: the attention and MLP weights of a block. */
int pp_muon_matrix(const pp_gpt_tensor *t);

/* Sets up the optimizer cfg names over stage g's parameters, state zero.
 * -1 with one line when out of memory. */
int pp_cpu_optim_init(pp_cpu_optim *o, const pp_gpt_stage *g, const pp_optim_config *cfg,
                      pp_err *e);
void pp_cpu_optim_free(pp_cpu_optim *o);

/* One update of w with grad (already scaled for clipping) at learning
 * rate lr; AdamW's hyperparameters (and Muon's weight decay) from hp. */
void pp_cpu_optim_step(pp_cpu_optim *o, float *w, const float *grad, float lr,
                       const pp_adamw_hparams *hp);

/* The state as described above: bytes, copy out, copy in. */
size_t pp_cpu_optim_state_bytes(const pp_cpu_optim *o);
void pp_cpu_optim_state_get(const pp_cpu_optim *o, void *host);
void pp_cpu_optim_state_put(pp_cpu_optim *o, const void *host);

/* Newton-Schulz orthogonalisation (above) of x [rows][cols] in place, on
 * the team `pool`; scratch holds pp_newton_schulz_scratch floats. */
void pp_newton_schulz(pp_pool *pool, float *x, int rows, int cols, float *scratch);
/* Floats of scratch pp_newton_schulz needs for [rows][cols]. */
size_t pp_newton_schulz_scratch(int rows, int cols);

#endif
