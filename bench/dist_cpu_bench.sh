#!/usr/bin/env bash
# The same CPU training run with the stages as threads of one process and
# as one process per stage (socket transport, TCP rendezvous on this
# machine): tokens/s of each and whether the losses are identical.
#   bench/dist_cpu_bench.sh [SCHEDULE] [STEPS]     (default paci 50)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
sched=${1:-paci}
steps=${2:-50}
P=4
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cmake --build "$build" --target pprun >/dev/null
args=(--schedule "$sched" --stages $P --microbatches 4 --steps "$steps" --model tiny
      --micro-batch-size 8 --data "$root/data/tinyshakespeare.txt" --seed 1)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
"$build/pprun" "${args[@]}" --log "$out/one.jsonl" >"$out/one.txt" 2>/dev/null
port=$((20000 + RANDOM % 30000))
export PPSCHED_JOB_SECRET=${PPSCHED_JOB_SECRET:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
pids=()
for r in $(seq 0 $((P - 1))); do
    RANK=$r WORLD_SIZE=$P MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$build/pprun" "${args[@]}" \
        --log "$out/multi.jsonl" >"$out/multi.$r.txt" 2>/dev/null &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
tps() { sed -n 's/.*"tokens_per_s": \([0-9.]*\)}$/\1/p' "$1" | tail -1; }
same=$(diff -q <(grep -o '"loss": [0-9.]*' "$out/one.jsonl") <(grep -o '"loss": [0-9.]*' "$out/multi.jsonl") >/dev/null && echo identical || echo DIFFERENT)
echo "$sched P=$P, $steps updates, tiny model (8 x 64, seq 64, micro-batch 8)"
echo "  threads in one process     $(tps "$out/one.jsonl") tokens/s"
echo "  one process per stage      $(tps "$out/multi.jsonl") tokens/s (socket transport)"
echo "  losses of the two runs     $same"
