/* Single-stage (P = 1) training throughput of the CUDA backend: forward,
 * backward (I then W) and one AdamW step per iteration on a GPT-2 preset,
 * timed on the host around the stage's stream. Prints tokens/s, achieved
 * TFLOP/s, MFU against the device's bf16 GEMM peak measured here on random
 * operands (pp_cuda_gemm_tflops) and against 989 TFLOP/s (the H100/H200
 * SXM datasheet's dense bf16), whatever the run's arithmetic
 * (PPSCHED_CUDA_MATH), the attention path the stage took
 * (PPSCHED_CUDA_ATTENTION: cudnn or cublas) and the stage's device memory by
 * kind.
 *
 * FLOPs per iteration (PaLM's accounting, causal masking not discounted,
 * which is also what the kernels compute):
 *   6 * P_mm * tokens + 12 * layers * seq * dim * tokens
 * with P_mm the parameters that enter a matrix product (all but the token
 * and position embeddings; the output layer included) and tokens = B * T.
 *
 * usage: cuda_bench [--model gpt2-small] [--micro-batch 8] [--seq 1024]
 *                   [--iters 10] [--warmup 2] [--device 0] */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/backend.h"
#include "cuda/cuda_backend.h"
#include "model.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int die(const char *msg)
{
    fprintf(stderr, "cuda_bench: error: %s\n", msg);
    return 1;
}

int main(int argc, char **argv)
{
    const char *model = "gpt2-small";
    int B = 8, T = 1024, iters = 10, warmup = 2, device = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "cuda_bench: error: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--model") == 0)
            model = v;
        else if (strcmp(a, "--micro-batch") == 0)
            B = atoi(v);
        else if (strcmp(a, "--seq") == 0)
            T = atoi(v);
        else if (strcmp(a, "--iters") == 0)
            iters = atoi(v);
        else if (strcmp(a, "--warmup") == 0)
            warmup = atoi(v);
        else if (strcmp(a, "--device") == 0)
            device = atoi(v);
        else {
            fprintf(stderr, "cuda_bench: error: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (B < 1 || T < 1 || iters < 1 || warmup < 0) {
        fprintf(stderr, "cuda_bench: error: sizes and counts must be positive\n");
        return 2;
    }

    pp_err e = {{0}};
    if (pp_cuda_available(&e) < 0)
        return die(e.msg);
    pp_model_desc m;
    if (pp_model_preset(model, &m, &e) < 0)
        return die(e.msg);
    m.micro_batch = B;
    m.seq_len = T;
    m.bytes_per_elem = 4;

    const pp_backend_ops *b = &pp_backend_cuda;
    void *st;
    if (b->create(&m, 1, 0, &PP_PLACEMENT_WHOLE(device), &st, &e) < 0)
        return die(e.msg);
    size_t np = b->nparams(st), wb = np * sizeof(float);
    void *w = b->alloc(st, wb), *grad = b->alloc(st, wb);
    void *acts = b->alloc(st, b->acts_bytes(st));
    if (!w || !grad || !acts)
        return die("out of device memory (try a smaller --micro-batch)");
    b->init_weights(st, w, 1);

    size_t N = (size_t)B * T;
    int *tok = malloc(N * sizeof *tok), *tgt = malloc(N * sizeof *tgt);
    if (!tok || !tgt)
        return die("out of memory");
    uint64_t r = 12345;
    for (size_t i = 0; i < N; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int)((r >> 33) % (uint64_t)m.vocab);
    }
    for (size_t i = 0; i < N; i++)
        tgt[i] = tok[(i + 1) % N];

    double t_f = 0, t_i = 0, t_w = 0, t_o = 0, t_all = 0;
    float loss = 0.0f, first_loss = 0.0f;
    for (int it = 0; it < warmup + iters; it++) {
        double t0 = now_s();
        if (b->forward(st, w, tok, NULL, tgt, acts, NULL, &loss, &e) < 0)
            return die(e.msg);
        if (b->sync(st, &e) < 0)
            return die(e.msg);
        double t1 = now_s();
        if (b->backward_input(st, w, acts, NULL, NULL, 1.0f, &e) < 0 || b->sync(st, &e) < 0)
            return die(e.msg);
        double t2 = now_s();
        if (b->backward_weight(st, acts, grad, &e) < 0 || b->sync(st, &e) < 0)
            return die(e.msg);
        double t3 = now_s();
        pp_opt_step os = {1e-4f, pp_adamw_defaults(), 1.0f};
        if (b->optimizer_update(st, w, grad, &os, &e) < 0 || b->sync(st, &e) < 0)
            return die(e.msg);
        double t4 = now_s();
        if (it == 0)
            first_loss = loss;
        if (it >= warmup) {
            t_f += t1 - t0;
            t_i += t2 - t1;
            t_w += t3 - t2;
            t_o += t4 - t3;
            t_all += t4 - t0;
        }
    }
    /* a failure in the last iteration shows at the next forward */
    if (b->forward(st, w, tok, NULL, tgt, acts, NULL, &loss, &e) < 0)
        return die(e.msg);

    double p_mm = (double)np - (double)m.vocab * m.dim - (double)T * m.dim;
    double tokens = (double)N;
    double flops = 6.0 * p_mm * tokens + 12.0 * m.layers * (double)T * m.dim * tokens;
    double per_it = t_all / iters;
    double tflops = flops / per_it / 1e12;
    double peak = pp_cuda_gemm_tflops(device, 8192, 10, &e);
    char name[128];
    pp_cuda_device_name(device, name, sizeof name);

    pp_cuda_memory mem;
    pp_cuda_stage_memory(st, &mem);
    const double GiB = 1024.0 * 1024.0 * 1024.0;

    printf("device        %s\n", name);
    printf("model         %s: %d layers, dim %d, heads %d, vocab %d, %.1fM parameters\n",
           model, m.layers, m.dim, m.heads, m.vocab, np / 1e6);
    const char *fallback = NULL, *attention = pp_cuda_stage_attention(st, &fallback);
    printf("batch         micro-batch %d x seq %d = %zu tokens, P = 1, math %s, storage %s, "
           "attention %s",
           B, T, N, pp_cuda_stage_math(st), pp_cuda_stage_storage(st), attention);
    if (fallback)
        printf(" (cuDNN not used: %s)", fallback);
    printf("\n");
    printf("loss          %.4f (first iteration) -> %.4f (after %d steps)\n", first_loss, loss,
           warmup + iters);
    printf("time/iter     %.2f ms  (forward %.2f, backward-I %.2f, backward-W %.2f, "
           "AdamW %.2f)\n",
           per_it * 1e3, t_f / iters * 1e3, t_i / iters * 1e3, t_w / iters * 1e3,
           t_o / iters * 1e3);
    printf("throughput    %.0f tokens/s, %.1f TFLOP/s (%.3g TFLOP per iteration)\n",
           tokens / per_it, tflops, flops / 1e12);
    if (peak > 0)
        printf("MFU           %.1f%% of the measured bf16 GEMM peak (%.1f TFLOP/s, 8192^3, "
               "random operands)\n",
               100.0 * tflops / peak, peak);
    else
        printf("MFU           (bf16 GEMM peak not measured: %s)\n", e.msg);
    printf("MFU (989)     %.1f%% of 989 TFLOP/s (datasheet dense bf16)\n", 100.0 * tflops / 989.0);
    printf("memory GiB    weights %.2f, grads %.2f, optimizer %.2f, activations %.2f, "
           "workspace %.2f, total %.2f (peak %.2f)\n",
           mem.weights / GiB, mem.grads / GiB, mem.optimizer / GiB, mem.activations / GiB,
           mem.workspace / GiB, mem.total / GiB, mem.peak_total / GiB);
    printf("RESULT model=%s math=%s storage=%s attention=%s B=%d T=%d tokens_per_s=%.0f "
           "tflops=%.2f bf16_peak=%.1f mfu_measured=%.4f mfu_989=%.4f ms_per_iter=%.3f "
           "activation_bytes=%zu\n",
           model, pp_cuda_stage_math(st), pp_cuda_stage_storage(st), attention, B, T,
           tokens / per_it, tflops, peak,
           peak > 0 ? tflops / peak : 0.0, tflops / 989.0, per_it * 1e3,
           b->acts_bytes(st));

    b->release(st, acts);
    b->release(st, grad);
    b->release(st, w);
    b->destroy(st);
    free(tok);
    free(tgt);
    return 0;
}
