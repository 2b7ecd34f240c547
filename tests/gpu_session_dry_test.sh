#!/usr/bin/env bash
# bench/gpu_session.sh without a GPU: the session's control flow, not its
# figures. Stubs first on PATH (nvidia-smi printing an H200,
# compute-sanitizer running its program plainly), this build tree reused as
# it is (the session's build step skipped, pipeline_bench.sh with NO_BUILD), every time box at a fifth, and the
# PyTorch part replaced by a command that prints two figures and then hangs,
# deaf to SIGTERM. Checks: the script ends within its deadline, $OUT holds
# session.txt and session-logs.tar.gz only, every step has its STEP line, the
# hung part reads "timed out" and is gone, the GPU suites read SKIP, failure
# lines and MFU are captured, the build's cuDNN is named, the tarball holds
# the logs.
#
# usage: gpu_session_dry_test.sh SOURCE_DIR BUILD_DIR
# Prints "SKIP: ..." and exits 0 when the build has no CUDA programs, or on a
# machine with a GPU (where the suites and benchmarks would really run).
set -u
src=$1
build=$2
for t in pprun ppsim cuda_bench tests/test_cuda tests/test_nccl; do
    [ -x "$build/$t" ] || { echo "SKIP: $build/$t not built (the dry run reuses a build with CUDA)"; exit 0; }
done
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "SKIP: a GPU is present: run bench/gpu_session.sh itself"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

stubs=$tmp/stubs
mkdir -p "$stubs"
cat >"$stubs/nvidia-smi" <<'EOF'
#!/bin/sh
case "$*" in
*--query-gpu*)
    case "$*" in *noheader*) ;; *) echo "name, memory.total [MiB], clocks.max.sm [MHz], driver_version" ;; esac
    echo "NVIDIA H200, 143771 MiB, 1980 MHz, 580.95.05" ;;
*)
    echo "+-----------------------------------------------------------------------------------------+"
    echo "| NVIDIA-SMI 580.95.05              Driver Version: 580.95.05      CUDA Version: 13.0     |"
    echo "|   0  NVIDIA H200                    On  |   00000000:19:00.0 Off |                    0 |"
    echo "| N/A   31C    P0             76W /  700W |       0MiB / 143771MiB |      0%      Default |"
    echo "+-----------------------------------------------------------------------------------------+" ;;
esac
EOF
cat >"$stubs/compute-sanitizer" <<'EOF'
#!/bin/bash
while [[ ${1:-} == --* ]]; do
    case $1 in --tool | --error-exitcode | --print-limit) shift 2 ;; *) shift ;; esac
done
echo "========= COMPUTE-SANITIZER (stub)"
"$@"
rc=$?
echo "========= ERROR SUMMARY: 0 errors"
exit $rc
EOF
cat >"$stubs/torch-hang" <<EOF
#!/bin/bash
echo "RESULT figure=bf16-peak n=8192 reps=20 ms=1.375 tflops=800.0"
echo "RESULT figure=gpt2-small-eager B=8 T=1024 steps=10 ms_per_step=70.00 tokens_per_s=117029 tflops=100.00"
echo \$\$ >"$tmp/hang.pid"
trap '' TERM
exec sleep 600
EOF
chmod +x "$stubs"/*

out=$tmp/out
scale=0.2
bound=$(awk -v k=$scale 'BEGIN { print int(450 * k) + 15 }') # the deadline, kill grace, packing
t0=$(date +%s)
OUT=$out PATH=$stubs:$PATH PPSCHED_SESSION_BUILD_DIR=$build PPSCHED_SESSION_SKIP_BUILD=1 \
    PPSCHED_SESSION_BOX_SCALE=$scale PPSCHED_SESSION_TORCH_PYTHON=$stubs/torch-hang \
    timeout -k 5 300 bash "$src/bench/gpu_session.sh" >"$tmp/stdout" 2>"$tmp/stderr"
rc=$?
took=$(($(date +%s) - t0))
s=$out/session.txt

((took <= bound)) && ok || bad "the session took $took s, over its bound of $bound s (exit $rc)"
((rc == 1)) && ok || bad "exit $rc, expected 1 (steps fail without a GPU)"
files=$(cd "$out" && find . -mindepth 1 | sort | tr '\n' ' ')
[ "$files" = "./session-logs.tar.gz ./session.txt " ] && ok || bad "\$OUT holds: $files"
for step in versions deps build test_cuda bench pipeline test_nccl sanitizer; do
    grep -Eq "^STEP $step: (PASS|FAIL|SKIP)( \(.*\))? in [0-9]+ s$" "$s" && ok ||
        bad "no STEP line for $step: $(grep "^STEP $step" "$s")"
done
[ "$(grep -c '^STEP ' "$s")" = 8 ] && ok || bad "$(grep -c '^STEP ' "$s") STEP lines, not 8"
grep -Eq '^STEP bench: FAIL \(.*torch baseline: timed out after [0-9]+ s' "$s" && ok ||
    bad "the hung PyTorch part does not read timed out: $(grep '^STEP bench' "$s")"
pid=$(cat "$tmp/hang.pid" 2>/dev/null)
[ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && ok || bad "the hung command ($pid) still runs"
grep -q '^STEP build: SKIP (PPSCHED_SESSION_SKIP_BUILD=1' "$s" && ok || bad "$(grep '^STEP build' "$s")"
for t in test_cuda test_nccl; do
    grep -q "^STEP $t: SKIP (no CUDA GPU" "$s" && ok || bad "$t without a GPU: $(grep "^STEP $t" "$s")"
done
grep -q '^  GPU: NVIDIA H200, 143771 MiB' "$s" && ok || bad "the GPU line is missing"
grep -Eq '^  cuDNN in the build: (off|not found|not looked for|[0-9]+\.[0-9]+)' "$s" && ok ||
    bad "no line says what the build found of cuDNN: $(grep 'cuDNN in the build' "$s")"
grep -q 'cuda_bench: error: ' "$s" && ok || bad "cuda_bench's error line is not captured"
grep -q 'pprun: error: ' "$s" && ok || bad "pprun's error lines are not captured"
grep -q 'P=4 with --sm-partitions off --timeout ' "$s" && ok ||
    bad "P=4's failed runs were not tried again without SM partitions"
grep -q '^  MFU gpt2-small-eager: 100.0 TFLOP/s, 12.5% of the measured bf16 peak 800.0 TFLOP/s, 10.1% of 989' "$s" &&
    ok || bad "no MFU line: $(grep MFU "$s")"
grep -Eq '^TOTAL [0-9]+ s elapsed' <(tail -1 "$s") && ok || bad "session.txt does not end with the total"
[ "$(tail -n "$(wc -l <"$s")" "$tmp/stdout")" = "$(cat "$s")" ] && ok || bad "stdout does not end with session.txt"
listing=$(tar -tzf "$out/session-logs.tar.gz")
for f in logs/versions.txt logs/nvidia-smi.txt logs/deps.txt logs/test_cuda.txt \
         logs/cuda_bench-gpt2-small-bf16.txt logs/torch_baseline.txt logs/pipeline-P4.txt \
         logs/pipeline-P4/summary.txt logs/pipeline-P8-shared.txt logs/test_nccl.txt session.txt; do
    grep -qx "$f" <<<"$listing" && ok || bad "the tarball lacks $f"
done

if ((fails)); then
    echo "--- session.txt"; cat "$s"; echo "--- stderr"; tail -20 "$tmp/stderr"
fi
echo "gpu_session_dry: $passes passed, $fails failed ($took s)"
[ "$fails" -eq 0 ]
