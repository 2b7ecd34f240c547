/* exec/cuda/: the CUDA backend (kernels, cuBLAS, green contexts) and the
 * NCCL transport. May include model/ and transport/ headers (by room:
 * "model/backend.h") and common/; never runtime/ or launch/. C code sees
 * only this header and transport_nccl.h.
 *
 * The CUDA backend seen from C (DESIGN §6). No CUDA type crosses this
 * header: C code (pprun, the tests, the benchmark) includes it and calls
 * the backend through the pp_backend_ops table of backend.h.
 *
 * Numerics: fp32 weights, gradients and optimizer state, the same flat
 * parameter layout, initialisation and (in fp32 math) arithmetic as
 * the CPU reference (gpt_cpu.c, cpu_optim.c: AdamW, Muon, the delay
 * correction, with the CPU's optimizer state layout). The matrix products run through cuBLAS;
 * the environment variable PPSCHED_CUDA_MATH picks their arithmetic when a
 * stage is created:
 *   fp32 (default)  full fp32 products: matches the CPU to ~1e-5
 *   tf32            TF32 tensor cores, fp32 accumulation
 *   bf16            bf16 storage: cuBLASLt products on bf16 operands
 *                   (a bf16 copy of the weights, the activations that
 *                   feed a product stored in bf16), fp32 accumulation,
 *                   fp32 master weights, gradients and optimizer state
 *                   (cuda_layers_bf16.cu, cuda_lt.cu); needs a width
 *                   that is a multiple of 8. Muon's Newton-Schulz
 *                   products multiply bf16 copies of their operands
 *                   (cuda_muon.cu)
 * Attention has two paths, picked when a stage is created (cuda_attention.cu):
 * PPSCHED_CUDA_ATTENTION=cublas (cuBLAS products around softmax kernels,
 * the stage's math, the probabilities kept for the backward) or cudnn
 * (cuDNN's fused flash attention on bf16 operands, no B H T^2 tensor);
 * unset: cudnn when the build has cuDNN and the math is bf16, cublas
 * otherwise. A stage that cannot build its cuDNN graphs (head size, no
 * engine) uses cuBLAS and says why once on stderr; asking for cudnn in a
 * build without cuDNN fails the stage's creation.
 * Everything of a stage runs on its own non-blocking stream with its own
 * cuBLAS handle and workspace; `sync` waits for that stream only. A stage
 * placed on an SM partition runs all of it inside a CUDA green context of
 * that partition (at least 8 SMs, a multiple of 8, on Hopper). */
#ifndef PP_CUDA_BACKEND_H
#define PP_CUDA_BACKEND_H

#include <stddef.h>

/* C headers: C linkage also when a .cu file includes them first */
#ifdef __cplusplus
extern "C" {
#endif

#include "model/backend.h"
#include "error.h"

extern const pp_backend_ops pp_backend_cuda;

/* 0 when at least one CUDA device is usable; otherwise -1 with e holding
 * one line ("--backend cuda: no CUDA GPU found (...)"). Never crashes. */
int pp_cuda_available(pp_err *e);

/* Device memory of one stage, in bytes, as allocated now (and the peak of
 * their sum). Buffers handed out by alloc() are classified by size and use:
 * acts_bytes() -> activations; nparams floats -> weights, or gradients once
 * passed as the gradient to backward_weight/optimizer_update; anything else
 * (boundary messages) -> messages. The stage's own optimizer state (AdamW's
 * m and v, Muon's momentum, the delay correction's buffer) is optimizer;
 * the cuBLAS workspace, attention, reduction and Newton-Schulz scratch and
 * the tensor table are workspace. */
typedef struct {
    size_t weights, grads, optimizer, activations, messages, workspace;
    size_t total, peak_total;
} pp_cuda_memory;

void pp_cuda_stage_memory(void *stage, pp_cuda_memory *out);

/* The stage's stream (a cudaStream_t) and device, for code that puts its
 * own work in the stage's order (the NCCL transport). */
void *pp_cuda_stage_stream(void *stage);
int pp_cuda_stage_device(void *stage);

/* Makes the stage's device current on the calling thread, or, for a stage
 * on an SM partition, its green context (cuCtxSetCurrent), and leaves it
 * so: for code that launches its own work on pp_cuda_stage_stream. Call it
 * from the thread that drives the stage only: a green context may be
 * current to one thread at a time. */
void pp_cuda_stage_bind(void *stage);

/* SMs the stage may use: its partition's (pp_placement.partition >= 0), or
 * the whole device's multiprocessor count. */
int pp_cuda_stage_sms(void *stage);

/* "fp32", "tf32" or "bf16": the matrix-product arithmetic of the stage. */
const char *pp_cuda_stage_math(void *stage);

/* "bf16" when the products' operands and the activations that feed them
 * are stored in bf16 (math bf16: fp32 master weights, gradients and
 * optimizer state, bf16 copies of the weights for the products), else
 * "fp32". */
const char *pp_cuda_stage_storage(void *stage);

/* "cublas" or "cudnn": the stage's attention path. When cuDNN was asked for
 * (or the default) and not taken, *fallback gets why (the cuDNN call and
 * status), else NULL; fallback may be NULL. */
const char *pp_cuda_stage_attention(void *stage, const char **fallback);

/* Name of device `device` ("NVIDIA H100 80GB HBM3"), or "" if unknown. */
void pp_cuda_device_name(int device, char *buf, size_t n);

/* The device's bf16 matrix-product peak, TFLOP/s, the denominator of an
 * honest MFU: an n x n x n product of random bf16 operands with fp32
 * accumulation and an fp32 result (random, because zeros or constants run
 * faster than real data), the median of `reps` after a warm-up. -1 with e
 * filled on failure. */
double pp_cuda_gemm_tflops(int device, int n, int reps, pp_err *e);

#ifdef __cplusplus
}
#endif

#endif
