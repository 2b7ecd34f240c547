#!/usr/bin/env python3
"""PyTorch's figures on the GPU that bench/cuda_bench.c runs on, for
bench/gpu_session.sh: the bf16 matrix-product peak (the denominator of an
honest MFU) and a GPT-2 small training-step baseline at the same batch,
eager and under torch.compile.

  python3 bench/torch_gpu_baseline.py                    # all three figures
  python3 bench/torch_gpu_baseline.py --figures peak     # the peak only

One line per figure, printed as soon as it is measured:

  RESULT figure=bf16-peak n=8192 reps=20 ms=... tflops=...
  RESULT figure=gpt2-small-eager B=8 T=1024 steps=10 ms_per_step=... tokens_per_s=... tflops=...
  RESULT figure=gpt2-small-compile ... compile_s=...

or, for a figure that could not be measured (torch.compile failing, say),
`RESULT figure=NAME status=failed reason=...`; the others still run.
Exit status 1 when a figure failed, 2 without PyTorch or a CUDA device.

The model is bench/torch_gpt.py's (PyTorch's copy of pprun's GPT: learned
positions, pre-LayerNorm, tanh GELU, F.scaled_dot_product_attention, untied
output layer; AdamW 0.9/0.95, weight decay 0.1 on matrices) at GPT-2
small's sizes (12 layers, 768 wide, 12 heads, vocabulary 50257), under bf16
autocast, on random tokens. FLOPs per token as bench/cuda_bench.c counts
them (PaLM's accounting): 6 * P_mm + 12 * layers * seq * dim, P_mm the
parameters that enter a matrix product (all but the two embeddings).
"""
import argparse
import os
import statistics
import sys
import time

FIGURES = ("peak", "eager", "compile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch bf16 GEMM peak and GPT-2 small training baseline "
                    "(one RESULT line per figure)")
    p.add_argument("--figures", default=",".join(FIGURES),
                   help="comma-separated subset of peak, eager, compile (default: all)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence (default 1024)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (default 10)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed training steps first (default 3)")
    p.add_argument("--peak-n", type=int, default=8192, help="square GEMM size (default 8192)")
    p.add_argument("--peak-reps", type=int, default=20,
                   help="timed GEMMs; the median counts (default 20)")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    a.figures = [f for f in a.figures.split(",") if f]
    bad = [f for f in a.figures if f not in FIGURES]
    if bad:
        p.error(f"--figures: unknown {', '.join(bad)} (choose from {', '.join(FIGURES)})")
    if min(a.batch, a.seq, a.steps, a.peak_n, a.peak_reps) < 1 or a.warmup < 0:
        p.error("sizes and counts must be positive")
    return a


def result(**fields):
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def gpt_class():
    """bench/torch_gpt.py's GPT (one copy of the model for the CPU and GPU
    baselines)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_gpt

    return torch_gpt.GPT


def bf16_peak(torch, n, reps):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b, out=c)
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b, out=c)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = statistics.median(times)
    result(figure="bf16-peak", n=n, reps=reps, ms=f"{ms:.3f}",
           tflops=f"{2.0 * n ** 3 / (ms * 1e-3) / 1e12:.1f}")


def training(torch, args, compiled):
    """Tokens/s of GPT-2 small training steps, eager or under torch.compile."""
    vocab, layers, dim, heads = 50257, 12, 768, 12
    B, T = args.batch, args.seq
    torch.manual_seed(args.seed)
    model = gpt_class()(vocab, T, layers, dim, heads).cuda()
    p_mm = (sum(p.numel() for p in model.parameters())
            - model.wte.weight.numel() - model.wpe.weight.numel())
    flops_per_token = 6 * p_mm + 12 * layers * T * dim
    groups = [{"params": [p for p in model.parameters() if p.dim() == 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    forward = torch.compile(model) if compiled else model
    batches = [(torch.randint(vocab, (B, T), device="cuda"),
                torch.randint(vocab, (B, T), device="cuda")) for _ in range(4)]

    def step(i):
        x, y = batches[i % len(batches)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    step(0)  # under torch.compile: the compilation
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    for i in range(1, args.warmup):
        step(i)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(args.steps):
        loss = step(i)
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end) / args.steps
    tokens_per_s = B * T / (ms * 1e-3)
    fields = dict(figure="gpt2-small-compile" if compiled else "gpt2-small-eager", B=B, T=T,
                  steps=args.steps, ms_per_step=f"{ms:.2f}", tokens_per_s=f"{tokens_per_s:.0f}",
                  tflops=f"{tokens_per_s * flops_per_token / 1e12:.2f}",
                  loss=f"{loss.item():.4f}")
    if compiled:
        fields["compile_s"] = f"{first_s:.1f}"
    result(**fields)
    del model, forward, opt, batches
    torch.cuda.empty_cache()


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError as err:
        print(f"torch_gpu_baseline: error: PyTorch is not importable: {err}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_gpu_baseline: error: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda})", flush=True)
    names = {"peak": "bf16-peak", "eager": "gpt2-small-eager", "compile": "gpt2-small-compile"}
    failures = 0
    for fig in args.figures:
        try:
            if fig == "peak":
                bf16_peak(torch, args.peak_n, args.peak_reps)
            else:
                training(torch, args, compiled=fig == "compile")
        except Exception as err:  # report, then the next figure
            failures += 1
            msg = str(err).strip().splitlines()
            reason = type(err).__name__ + (": " + msg[0] if msg else "")
            result(figure=names[fig], status="failed", reason=reason[:300])
            torch.cuda.empty_cache()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
