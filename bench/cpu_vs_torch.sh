#!/usr/bin/env bash
# pprun's CPU backend against PyTorch, side by side on this machine: the
# same GPT (bench/torch_gpt.py is PyTorch's copy of it), the same sizes and
# batch, the same text, at 1 and 2 threads, one stage. Both figures are
# training tokens/s over the updates after the first three (warm-up).
#
#   bench/cpu_vs_torch.sh [BUILD_DIR] [SCALE]
#
# SCALE (default 1) multiplies the number of timed updates. PyTorch comes
# from PyPI (pip install torch) for this script only; nothing else needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
scale=${2:-1}
data=data/tinyshakespeare.txt
python3 -c 'import torch' 2>/dev/null || { echo "bench: needs PyTorch (pip install torch)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# name layers dim heads seq batch updates
configs=(
    "tiny 8 64 4 64 8 200"
    "4x128 4 128 4 64 12 100"
    "6x384 6 384 6 256 8 12"
)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "torch: $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null | tail -1)"
printf '%-7s %7s %14s %14s %7s\n' config threads pprun_tok/s torch_tok/s ratio
for c in "${configs[@]}"; do
    read -r name L C H T B N <<<"$c"
    N=$((N * scale + 3))
    for threads in 1 2; do
        "$build/pprun" --schedule gpipe --stages 1 --microbatches 1 --steps "$N" \
            --model tiny --layers "$L" --dim "$C" --heads "$H" --seq-len "$T" \
            --micro-batch-size "$B" --data "$data" --eval-batches 1 --threads "$threads" \
            --log "$tmp/log.jsonl" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
        [ "$c" = "${configs[0]}" ] && [ "$threads" = 1 ] && echo "pprun: $(grep -o 'backend cpu.*' "$tmp/err")"
        ours=$(python3 - "$tmp/log.jsonl" "$B" "$T" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l]
a, b = rows[2], rows[-1]  # after update 3 .. the last
print(f"{(b['step'] - a['step']) * int(sys.argv[2]) * int(sys.argv[3]) / (b['elapsed_s'] - a['elapsed_s']):.1f}")
PY
)
        theirs=$(python3 bench/torch_gpt.py --layers "$L" --dim "$C" --heads "$H" --seq-len "$T" \
            --batch "$B" --threads "$threads" --steps $((N - 3)) --data "$data" 2>/dev/null |
            sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p')
        printf '%-7s %7d %14s %14s %7.2f\n' "$name" "$threads" "$ours" "$theirs" \
            "$(python3 -c "print($ours / $theirs)")"
    done
done
