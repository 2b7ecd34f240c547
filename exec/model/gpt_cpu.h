/* One pipeline stage of a GPT-2 style model on the CPU, fp32 (DESIGN §6):
 * the numerical reference every other backend is compared against.
 *
 * Stage s of P holds the blocks pp_model_stage_blocks() gives it, plus the
 * token and position embeddings on stage 0 and the final LayerNorm, the
 * untied output layer and the mean cross-entropy loss on stage P-1.
 *
 * All parameters of a stage live in one flat float array described by a
 * table of named tensors, so a weight version or stash is one memcpy and the
 * gradient buffer uses the same layout. Matrices are stored PyTorch style,
 * [out][in] (the output layer is [vocab][dim]).
 *
 * Per micro-batch the caller owns an activation buffer (pp_gpt_acts_floats)
 * filled by the forward pass and read by the backward passes. Backward is
 * split as the IR splits it: pp_gpt_backward_input (the I action) computes
 * the input gradient and saves the activation gradients in a second
 * per-micro-batch buffer (pp_gpt_gacts_floats); pp_gpt_backward_weight (the
 * W action) turns those into weight gradients. pp_gpt_backward runs both.
 * The split and the full backward give bit-identical gradients.
 *
 * Results are deterministic: every sum runs in a fixed order that does not
 * depend on the split, so a P-stage pipeline chained by hand reproduces the
 * P=1 numbers. A stage object holds scratch memory: use it from one thread
 * at a time (one object per stage thread). */
#ifndef PP_GPT_CPU_H
#define PP_GPT_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "adamw.h"
#include "cpu_pool.h"
#include "error.h"
#include "model.h"

typedef enum {
    PP_GPT_WTE,    /* token embedding [vocab][dim] (stage 0) */
    PP_GPT_WPE,    /* position embedding [seq][dim] (stage 0) */
    PP_GPT_LN1_W,  /* per block from here to PP_GPT_PROJ_B */
    PP_GPT_LN1_B,
    PP_GPT_QKV_W,  /* [3 dim][dim]: q, k, v stacked */
    PP_GPT_QKV_B,
    PP_GPT_ATTN_W, /* attention output projection [dim][dim] */
    PP_GPT_ATTN_B,
    PP_GPT_LN2_W,
    PP_GPT_LN2_B,
    PP_GPT_FC_W,   /* MLP up [4 dim][dim] */
    PP_GPT_FC_B,
    PP_GPT_PROJ_W, /* MLP down [dim][4 dim] */
    PP_GPT_PROJ_B,
    PP_GPT_LNF_W,  /* final LayerNorm (last stage) */
    PP_GPT_LNF_B,
    PP_GPT_HEAD_W, /* untied output layer [vocab][dim], no bias (last stage) */
    PP_GPT_NKINDS
} pp_gpt_kind;

typedef struct {
    char name[32];   /* "wte", "h3.qkv_w" (global block index), "head_w" */
    pp_gpt_kind kind;
    int block;       /* global block index, -1 outside the blocks */
    size_t offset;   /* into the stage's flat parameter array */
    size_t numel;
    int rows, cols;  /* matrices: [rows][cols]; vectors: rows = numel, cols = 1 */
    int decay;       /* 1: AdamW weight decay applies (2-D matrices, embeddings
                        and output layer included); 0: biases, LayerNorm */
} pp_gpt_tensor;

/* Where one block's tensors start in the flat array. */
typedef struct {
    size_t ln1_w, ln1_b, qkv_w, qkv_b, attn_w, attn_b;
    size_t ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b;
} pp_gpt_block_offsets;

typedef struct {
    pp_model_desc model;
    int P, s;                 /* this is stage s of P */
    int first_block, nblocks; /* global index of the first block, count */
    int is_first, is_last;
    int B, T, C, H, V;        /* micro-batch, sequence, width, heads, vocab */
    size_t nparams;
    int ntensors;
    pp_gpt_tensor *tensors;   /* in flat-array order */
    pp_gpt_block_offsets *blocks; /* nblocks entries */
    size_t wte, wpe, lnf_w, lnf_b, head_w; /* offsets (where present) */
    size_t acts_floats, gacts_floats;
    pp_pool *pool;            /* the stage's thread team (NULL: its own thread) */
    float *scratch;           /* transposed weights, temporary gradients */
    float *gacts_scratch;     /* activation gradients for pp_gpt_backward */
} pp_gpt_stage;

/* Builds stage s of P for model m (fp32 whatever m->bytes_per_elem says).
 * Returns -1 with e filled on bad sizes or out of memory. */
int pp_gpt_stage_init(pp_gpt_stage *g, const pp_model_desc *m, int P, int s, pp_err *e);
void pp_gpt_stage_free(pp_gpt_stage *g);

/* Runs the stage's work on `threads` threads from now on (its own thread
 * and threads-1 workers); a stage starts with 1. Results are deterministic
 * for a fixed count. */
int pp_gpt_stage_set_threads(pp_gpt_stage *g, int threads, pp_err *e);

/* The tensor called name ("h3.fc_w"), or NULL when this stage lacks it. */
const pp_gpt_tensor *pp_gpt_stage_find(const pp_gpt_stage *g, const char *name);

/* GPT-2 initialisation of w[nparams]: normal(0, 0.02) matrices, the two
 * residual projections (attn_w, proj_w) scaled by 1/sqrt(2 layers), biases
 * 0, LayerNorm weight 1 and bias 0. Every tensor draws from its own stream
 * keyed by (seed, tensor name), so the numbers do not depend on P or s. */
void pp_gpt_stage_init_weights(const pp_gpt_stage *g, float *w, uint64_t seed);

/* Floats of the per-micro-batch buffers. */
size_t pp_gpt_acts_floats(const pp_gpt_stage *g);
size_t pp_gpt_gacts_floats(const pp_gpt_stage *g);

/* Forward of one micro-batch. Stage 0 reads tokens[B*T]; other stages read
 * x_in[B*T*C] (copied, so the caller may reuse it). The last stage reads
 * targets[B*T] and writes the mean cross-entropy to *loss; other stages
 * write x_out[B*T*C]. Unused pointers may be NULL. Fills acts. Returns -1
 * with e filled when a token or target is outside [0, vocab). */
int pp_gpt_forward(pp_gpt_stage *g, const float *w, const int *tokens, const float *x_in,
                   const int *targets, float *acts, float *x_out, float *loss, pp_err *e);

/* I action: from dx_out[B*T*C] (non-last stages; the last stage starts from
 * d loss * loss_scale) computes dx_in[B*T*C] (non-first stages; NULL on
 * stage 0) and saves the activation gradients in gacts. Weights only read. */
void pp_gpt_backward_input(pp_gpt_stage *g, const float *w, const float *acts,
                           const float *dx_out, float *dx_in, float *gacts,
                           float loss_scale);

/* W action: adds (+=) this micro-batch's weight gradients into grad
 * (same layout as the weights) from acts and the gacts of the I action. */
void pp_gpt_backward_weight(pp_gpt_stage *g, const float *acts, const float *gacts,
                            float *grad);

/* Both halves, using the stage's own gacts scratch. */
void pp_gpt_backward(pp_gpt_stage *g, const float *w, const float *acts,
                     const float *dx_out, float *dx_in, float *grad, float loss_scale);

/* One AdamW step over the stage's parameters: begin_step, then every tensor
 * with its own decay flag. */
void pp_gpt_adamw_step(const pp_gpt_stage *g, pp_adamw *o, float *w, const float *grad,
                       float lr);

/* AdamW's part of an update (after pp_adamw_begin_step), on the stage's
 * team: tensor i's moments start at o->m + at[i] (at NULL: at its own
 * offset; PP_GPT_NO_STATE: another optimizer updates it, cpu_optim.h);
 * prev, when not NULL, is the delay correction's last update of every
 * parameter (adamw.h's pp_adamw_apply). */
#define PP_GPT_NO_STATE ((size_t)-1)
void pp_gpt_adamw_tensors(const pp_gpt_stage *g, const pp_adamw *o, const size_t *at, float *w,
                          const float *grad, float lr, float *prev, float beta);

#endif
