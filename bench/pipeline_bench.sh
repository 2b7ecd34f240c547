#!/usr/bin/env bash
# Pipelines on one GPU (DESIGN §6; issue: measured versus simulated
# timelines). For P = 4 and 8 stages, each on its own SM partition of GPU 0
# (green contexts), trains a GPT that fills the stages (24 layers x 1024,
# 16 heads, sequence 1024; bf16 tensor-core products, fp32 master weights)
# with 1f1b-flush, pipedream-2bw and paci at m = a = 8, and prints for
# each: measured tokens/s, measured bubble (whole run and steady state),
# the simulator's prediction from the same run's op times, the error
# between them, and whether the run's weight versions equal the
# simulator's, row by row. Then the issue's checks, PASS or FAIL.
#
#   bench/pipeline_bench.sh                    # the H100/H200 benchmark
#   STAGES="8" SCHEDULES="1f1b-flush paci" STEPS=12 bench/pipeline_bench.sh
#   BACKEND=cpu MODEL="--model tiny --layers 8 --dim 64 --heads 4 --seq-len 64 \
#     --micro-batch-size 4" STAGES=4 STEPS=8 bench/pipeline_bench.sh   # CPU smoke run
#   EXTRA_ARGS="--sm-partitions off --timeout 20" bench/pipeline_bench.sh  # more pprun options
#   NO_BUILD=1 BUILD_DIR=build bench/pipeline_bench.sh     # that build as it is
#
# Outputs under $OUT_DIR (default out/pipeline): per run the log, the
# measured trace (NAME.trace.json) beside the simulated one from the run's
# profile (NAME.sim-trace.json; open both in Perfetto), versions, profile,
# and summary.txt with one line per run. Exit status 1 when a check fails.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-cuda}
backend=${BACKEND:-cuda}
stages_list=${STAGES:-"4 8"}
schedules=${SCHEDULES:-"1f1b-flush pipedream-2bw paci"}
m=${M:-8}
steps=${STEPS:-16}
model=${MODEL:-"--layers 24 --dim 1024 --heads 16 --seq-len 1024 --micro-batch-size 1"}
export PPSCHED_CUDA_MATH=${PPSCHED_CUDA_MATH:-bf16}
out=${OUT_DIR:-$root/out/pipeline}
data=${DATA:-$root/data/tinyshakespeare.txt}
read -ra extra <<<"${EXTRA_ARGS:-}"

if [ "${NO_BUILD:-0}" != 1 ]; then # NO_BUILD=1: use $BUILD_DIR as it is
    cmake -S "$root" -B "$build" -DPPSCHED_TESTS=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
    cmake --build "$build" -j"$(nproc)" --target pprun ppsim >/dev/null || exit 1
fi
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
{
    echo "machine: $(hostname), $(nproc) cores; backend $backend$([ "$backend" = cuda ] && echo ", matrix products $PPSCHED_CUDA_MATH")"
    command -v nvidia-smi >/dev/null &&
        nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
    echo "model: $model; m = a = $m; $steps steps; data $(basename "$data")"
} | tee -a "$summary"

fails=0
check() { # check NAME CONDITION-AS-AWK-EXPR DETAIL (counted in this shell, not a pipe's)
    local verdict=PASS
    awk "BEGIN { exit !($2) }" || { verdict=FAIL; fails=$((fails + 1)); }
    echo "$verdict $1 ($3)" | tee -a "$summary"
}
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

for P in $stages_list; do
    declare -A thr=() pred=() steady=()
    for s in $schedules; do
        name=$s-P$P
        args=(--schedule "$s" --stages "$P" --microbatches "$m" --steps "$steps" $model
              --data "$data" --seed 1 --lr 3e-4 --warmup 2 "${extra[@]}")
        [ "$backend" = cuda ] && args+=(--backend cuda --devices 0)
        echo "== $name" >&2
        "$build/pprun" "${args[@]}" --log "$out/$name.jsonl" --versions "$out/$name.versions.csv" \
            --trace "$out/$name.trace.json" --profile "$out/$name.profile.json" \
            >"$out/$name.txt" 2>"$out/$name.err"
        rc=$?
        line=$(grep '^PREDICTION ' "$out/$name.txt")
        if [ $rc -ne 0 ] || [ -z "$line" ]; then
            echo "$name: pprun failed (exit $rc): $(tail -3 "$out/$name.err")" | tee -a "$summary"
            fails=$((fails + 1))
            continue
        fi
        # the simulator on the same IR fed this run's profile: its timeline
        # (to open beside the measured trace) and its versions, compared row by row
        "$build/ppsim" run --schedule "$s" --stages "$P" --microbatches "$m" --steps "$steps" \
            --profile "$out/$name.profile.json" --trace "$out/$name.sim-trace.json" \
            --per-microbatch "$out/$name.sim.csv" >"$out/$name.sim.txt" 2>"$out/$name.sim.err"
        if diff -q <(cut -d, -f1-4 "$out/$name.versions.csv") <(cut -d, -f1-4 "$out/$name.sim.csv") >/dev/null; then
            versions="v_f,v_b equal the simulator's in all $(($(wc -l <"$out/$name.sim.csv") - 1)) rows"
        else
            versions="v_f,v_b DIFFER from the simulator's"
            fails=$((fails + 1))
        fi
        tps=$(field "$line" tokens_per_s)
        err=$(field "$line" error)
        printf '%-14s P=%d  %9.0f tokens/s  bubble %5.1f%% (steady %5.1f%%)  predicted step %.4g s, measured %.4g s, error %+.1f%%  predicted steady bubble %5.1f%%  %s\n' \
            "$s" "$P" "$tps" "$(awk "BEGIN{print 100*$(field "$line" measured_bubble)}")" \
            "$(awk "BEGIN{print 100*$(field "$line" measured_steady_bubble)}")" \
            "$(field "$line" predicted_step_s)" "$(field "$line" measured_step_s)" \
            "$(awk "BEGIN{print 100*$err}")" \
            "$(awk "BEGIN{print 100*$(field "$line" predicted_steady_bubble)}")" "$versions" | tee -a "$summary"
        check "$name: simulator predicts the measured step time within 10%" "($err < 0 ? -($err) : $err) <= 0.10" "error $(awk "BEGIN{printf \"%+.1f%%\", 100*$err}")"
        thr[$s]=$tps
        pred[$s]=$(field "$line" predicted_step_s)
        steady[$s]=$(field "$line" measured_steady_bubble)
    done
    if [ -n "${thr[paci]:-}" ] && [ -n "${thr[1f1b-flush]:-}" ]; then
        ratio=$(awk "BEGIN{print ${thr[paci]}/${thr[1f1b-flush]}}")
        ideal=$(awk "BEGIN{print ${pred[1f1b-flush]}/${pred[paci]}}")
        check "P=$P: paci/1f1b-flush throughput >= 90% of the simulator's ratio" \
            "$ratio >= 0.9 * $ideal" "measured $(printf %.3f "$ratio")x, simulator from the measured profiles $(printf %.3f "$ideal")x, uniform-stage ideal $(awk "BEGIN{printf \"%.3f\", ($m+$P-1)/$m}")x"
        check "P=$P: paci steady-state bubble under 5%" "${steady[paci]} >= 0 && ${steady[paci]} < 0.05" \
            "$(awk "BEGIN{printf \"%.1f%%\", 100*${steady[paci]}}")"
    fi
    unset thr pred steady
done
echo "summary in $summary"
[ $fails -eq 0 ]
