#!/usr/bin/env bash
# nanoGPT's documented CPU run, trained by pprun: its README's
#   python train.py config/train_shakespeare_char.py --device=cpu --compile=False
#       --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
#       --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
# ("about 3 minutes ... a loss of only 1.88"), with what the config file and
# train.py's defaults add: lr 1e-3 cosine to 1e-4 over the run after 100
# warm-up updates, AdamW betas (0.9, 0.99), weight decay 0.1, gradients
# clipped to norm 1.0. Here: one stage, one micro-batch of 12 sequences of
# 64 characters per update, training sequences at random offsets as
# nanoGPT's get_batch draws them, for three seeds.
#
# Not the same model or measurement, on purpose or not yet:
# - nanoGPT ties the token embedding to the output layer and has no biases
#   (bias=False); ours has an untied output layer and biases. Both have a
#   vocabulary of 65 characters and no dropout here.
# - nanoGPT's 1.88 is the mean of 20 random validation batches of 12; ours
#   is the whole validation split (1742 sequences of 64), the same for every
#   seed. nanoGPT also runs 2001 updates (iterations 0..2000).
#
#   bench/nanogpt_cpu.sh PPRUN [UPDATES]     (default 2000; fewer for a quick check)
# prints, per seed, the final validation loss and the wall time, and their mean.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pprun=${1:?usage: bench/nanogpt_cpu.sh PPRUN [UPDATES]}
updates=${2:-2000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

args=(--schedule 1f1b-flush --stages 1 --microbatches 1 --steps "$updates"
      --model tiny --layers 4 --dim 128 --heads 4 --seq-len 64 --micro-batch-size 12
      --data "$root/data/tinyshakespeare.txt" --data-order random --eval-batches 0
      --lr 1e-3 --min-lr 1e-4 --warmup 100 --beta1 0.9 --beta2 0.99 --weight-decay 0.1
      --grad-clip 1.0)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "nanoGPT's CPU run: 4 layers x 128, 4 heads, seq 64, 12 sequences per update, $updates updates"
printf '%-6s %-16s %-12s %s\n' seed "validation loss" "wall (s)" "training (s)"
for seed in 1 2 3; do
    t0=$(date +%s.%N)
    if ! "$pprun" "${args[@]}" --seed "$seed" >"$out/$seed.txt" 2>"$out/$seed.err"; then
        echo "seed $seed: pprun failed: $(tail -1 "$out/$seed.err")" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    val=$(sed -n 's/^final training loss [0-9.]*, validation loss \([0-9.]*\) .*/\1/p' "$out/$seed.txt")
    train_s=$(sed -n 's/^trained [0-9]* updates, [0-9]* tokens in \([0-9.]*\) s .*/\1/p' "$out/$seed.txt")
    covers=$(sed -n 's/^final training loss .*, validation loss [0-9.]* (\([^)]*\)).*/\1/p' "$out/$seed.txt")
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    printf '%-6s %-16s %-12s %s\n' "$seed" "$val" "$wall" "$train_s"
    echo "$val $wall" >>"$out/all"
done
awk '{ v += $1; w += $2; n++ } END { printf "%-6s %-16.4f %-12.1f\n", "mean", v / n, w / n }' "$out/all"
echo "validation loss over the $covers; nanoGPT's README: 1.88 in about 3 minutes"
