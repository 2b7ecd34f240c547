/* GPT model description: presets, how blocks are split over stages, and the
 * memory/bytes model the simulator uses (DESIGN §4). The executor uses the
 * same split so the simulator and a real run agree on what a stage holds. */
#ifndef PP_MODEL_H
#define PP_MODEL_H

#include "error.h"

/* The optimizer whose state the memory model counts (optim_cost.h). */
typedef enum { PP_OPTIM_ADAMW, PP_OPTIM_MUON, PP_OPTIM_ADAMW_ROTATED } pp_optim_kind;

typedef struct {
    char name[32];
    int layers;       /* transformer blocks */
    int dim;          /* model width h */
    int heads;
    int seq_len;
    int vocab;
    int micro_batch;  /* sequences per micro-batch */
    int bytes_per_elem; /* activations and weights: 2 = bf16, 4 = fp32 */
    /* memory model only (presets: plain AdamW) */
    pp_optim_kind optimizer;
    int delay_correction; /* 1: one more fp32 buffer of the stage's parameters */
} pp_model_desc;

/* Fills *out for "tiny", "gpt2-small", "gpt2-medium", "gpt2-large",
 * "gpt2-xl" (micro_batch 1, bf16; tiny: fp32, vocab 65). */
int pp_model_preset(const char *name, pp_model_desc *out, pp_err *e);
/* Comma-separated list of preset names, for --help. */
const char *pp_model_preset_names(void);
int pp_model_check(const pp_model_desc *m, int stages, pp_err *e);

/* Blocks of stage s when the model is split over P stages as evenly as
 * possible (the first layers%P stages get one extra). */
void pp_model_stage_blocks(const pp_model_desc *m, int P, int s,
                           int *first_block, int *nblocks);

/* Parameters (elements) held by stage s: its blocks, plus token and
 * position embeddings on stage 0, final LayerNorm and output layer on the
 * last stage. */
double pp_model_stage_params(const pp_model_desc *m, int P, int s);
double pp_model_total_params(const pp_model_desc *m);
/* FLOPs of stage s's matrix products in the forward of one micro-batch:
 * 24 t h^2 + 4 t L h per block for t tokens of sequence length L
 * (Narayanan et al. 2021, attention scores over the full L x L), plus
 * 2 t V h for the output layer on the last stage. */
double pp_model_forward_flops(const pp_model_desc *m, int P, int s);

/* Memory of one stage, in bytes. */
typedef struct {
    double weights;        /* one copy of the weights (bytes_per_elem each) */
    double grads;          /* fp32 gradient accumulation buffer */
    double optimizer;      /* the optimizer's state, fp32 master weights below
                              fp32 included (pp_optim_state_bytes) */
    double activation_per_mb; /* activations kept per micro-batch in flight */
    double input_per_mb;   /* the stage input alone (recompute mode) */
} pp_stage_memory;

pp_stage_memory pp_model_stage_memory(const pp_model_desc *m, int P, int s);

/* Bytes crossing a stage boundary per micro-batch (activation forward,
 * gradient backward: the same shape). */
double pp_model_boundary_bytes(const pp_model_desc *m);
/* Tokens per micro-batch. */
static inline double pp_model_tokens_per_mb(const pp_model_desc *m)
{
    return (double)m->micro_batch * m->seq_len;
}

#endif
