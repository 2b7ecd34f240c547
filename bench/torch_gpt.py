"""The PyTorch side of bench/cpu_vs_torch.sh: pprun's GPT (learned positions,
pre-LayerNorm, tanh GELU, causal attention, untied output layer, AdamW
0.9/0.95, weight decay 0.1 on matrices) trained on the CPU in fp32 on the
same text, the same sizes and batch, at a given thread count. Prints one
line: tokens/s over the timed updates.

    python3 bench/torch_gpt.py --layers 4 --dim 128 --heads 4 --seq-len 64 \
        --batch 12 --threads 1 --steps 30 --data data/tinyshakespeare.txt
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C)
        self.out = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, T, L, C, H):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, H) for _ in range(L))
        self.lnf = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.lnf(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    for a in ("layers", "dim", "heads", "seq-len", "batch", "threads", "steps"):
        ap.add_argument("--" + a, type=int, required=True)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--data", required=True)
    o = ap.parse_args()
    torch.set_num_threads(o.threads)
    torch.manual_seed(1)
    text = open(o.data, "rb").read()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text[: len(text) * 9 // 10]], dtype=torch.long)
    T = o.seq_len
    model = GPT(len(vocab), T, o.layers, o.dim, o.heads)
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    t0 = None
    for step in range(o.warmup_steps + o.steps):
        if step == o.warmup_steps:
            t0 = time.perf_counter()
        off = torch.randint(len(ids) - T - 1, (o.batch,))
        x = torch.stack([ids[i:i + T] for i in off])
        y = torch.stack([ids[i + 1:i + T + 1] for i in off])
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    print(f"torch {torch.__version__} threads={o.threads} loss={loss.item():.4f} "
          f"tokens_per_s={o.steps * o.batch * T / dt:.1f}")


if __name__ == "__main__":
    main()
