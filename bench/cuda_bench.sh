#!/usr/bin/env bash
# CUDA backend benchmark (no network needed): builds with CUDA, runs the
# GPU parity suite (tests/test_cuda.c), then times single-stage (P = 1)
# forward + backward + AdamW on GPT-2 small and medium at sequence 1024 in
# each matrix-product arithmetic, printing tokens/s and MFU.
#
#   bench/cuda_bench.sh                 # everything
#   MATHS="bf16" MODELS="gpt2-medium" bench/cuda_bench.sh
#   BUILD_DIR=/tmp/b SMALL_B=8 MEDIUM_B=8 ITERS=10 bench/cuda_bench.sh
#
# Results go to stdout and, one RESULT line per run, to $OUT_FILE
# (default out/cuda_bench.txt).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-cuda}
maths=${MATHS:-"fp32 tf32 bf16"}
models=${MODELS:-"gpt2-small gpt2-medium"}
small_b=${SMALL_B:-8}
medium_b=${MEDIUM_B:-8}
iters=${ITERS:-10}
out_file=${OUT_FILE:-$root/out/cuda_bench.txt}

cmake -S "$root" -B "$build" -DPPSCHED_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target test_cuda cuda_bench

echo "== test_cuda (CUDA vs CPU parity)"
"$build/tests/test_cuda"

if [ ! -x "$build/cuda_bench" ]; then
  echo "cuda_bench was not built (no CUDA toolkit at configure time)" >&2
  exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true

mkdir -p "$(dirname "$out_file")"
: >"$out_file"
for math in $maths; do
  for model in $models; do
    b=$small_b
    [ "$model" = gpt2-medium ] && b=$medium_b
    echo "== $model, math $math, micro-batch $b, seq 1024"
    PPSCHED_CUDA_MATH=$math "$build/cuda_bench" --model "$model" --micro-batch "$b" \
      --seq 1024 --iters "$iters" --warmup 2 | tee /dev/stderr | grep '^RESULT' >>"$out_file" || {
      echo "cuda_bench failed for $model $math" >&2
    }
  done
done 2>&1
echo "== summary ($out_file)"
cat "$out_file"
