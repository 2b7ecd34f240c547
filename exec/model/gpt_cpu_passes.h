/* What the stage's setup (gpt_cpu.c) needs from its passes
 * (gpt_cpu_passes.c): the sizes of the buffers whose layout the passes own.
 * Internal to exec/model/, not a public API: the contract of the model is
 * gpt_cpu.h. Each reads only the stage's sizes (B, T, C, H, V, nblocks,
 * is_first, is_last), so setup may call it before allocating. */
#ifndef PP_GPT_CPU_PASSES_H
#define PP_GPT_CPU_PASSES_H

#include <stddef.h>

#include "gpt_cpu.h"

/* Floats of one micro-batch's activations and activation gradients. */
size_t pp_gpt_layout_acts_floats(const pp_gpt_stage *g);
size_t pp_gpt_layout_gacts_floats(const pp_gpt_stage *g);
/* Floats of the stage's scratch (transposed weights, temporaries). */
size_t pp_gpt_layout_scratch_floats(const pp_gpt_stage *g);

#endif
