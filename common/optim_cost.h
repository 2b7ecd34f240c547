/* What each optimizer holds and computes per pipeline stage: the state
 * bytes of the simulator's memory model (pp_model_stage_memory) and the
 * FLOPs of its matrix work per OPT (ppsim --opt-flops). Counted on the GPT
 * layout the executor builds (exec/model/gpt_cpu.h): per block the hidden
 * matrices qkv [3h][h], attention projection [h][h], MLP up [4h][h] and
 * down [h][4h], and the vectors (biases, LayerNorm); token and position
 * embeddings on the first stage; final LayerNorm and the output layer
 * [V][h] on the last.
 *
 * State per stage, all fp32 (4 bytes an element):
 *   adamw          m and v for every parameter
 *   muon           one momentum buffer for the hidden matrices, AdamW's m
 *                  and v for the rest (embeddings, output layer, biases,
 *                  LayerNorm)
 *   adamw-rotated  m and v for every parameter, plus, per hidden matrix
 *                  r x c, two covariance accumulators (r x r, c x c) and
 *                  two eigenbases (r x r, c x c)
 * and for each: an fp32 master copy of the parameters when they are kept
 * below fp32 (bf16), and with the delay correction one more fp32 buffer of
 * the parameters (the previous update). */
#ifndef PP_OPTIM_COST_H
#define PP_OPTIM_COST_H

#include "error.h"
#include "model.h"

/* "adamw", "muon" or "adamw-rotated"; anything else is an error naming
 * the known ones. */
int pp_optim_parse(const char *name, pp_optim_kind *out, pp_err *e);
const char *pp_optim_name(pp_optim_kind k);

/* Parameters (elements) of stage s of P, by how the optimizers treat them. */
typedef struct {
    double hidden;   /* the blocks' 2-D matrices: Muon's and the rotated ones */
    double other;    /* embeddings, output layer, biases, LayerNorm */
    double rotation; /* covariances and bases: 2 (r^2 + c^2) per hidden matrix */
} pp_optim_params;

pp_optim_params pp_optim_stage_params(const pp_model_desc *m, int P, int s);

/* Bytes of optimizer state on stage s for m->optimizer and
 * m->delay_correction, fp32 master weights included (see above). */
double pp_optim_state_bytes(const pp_model_desc *m, int P, int s);

/* FLOPs of the optimizer's matrix products in one OPT on stage s: Muon's
 * 5 Newton-Schulz iterations per hidden matrix; for adamw-rotated the two
 * covariance updates, the rotation of the gradient into the bases and of
 * the update back, and the two eigendecompositions amortised over a
 * refresh every PP_OPTIM_ROTATED_REFRESH steps; 0 for AdamW, whose
 * element-wise step is what --opt gives. */
#define PP_OPTIM_NS_STEPS 5
#define PP_OPTIM_ROTATED_REFRESH 10
double pp_optim_step_flops(const pp_model_desc *m, int P, int s);

#endif
