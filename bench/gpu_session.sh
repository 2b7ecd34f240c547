#!/usr/bin/env bash
# Every GPU check of the pipeline work in one call of the device tool (a
# lent H100/H200), after `tools/gpu-deps` here:
#
#   run(command="bash bench/gpu_session.sh", carry=[".deps/debs"], timeout_s=590)
#
# 1. what the machine has (GPU, nvcc, CMake, pkg-config, cJSON, Check, NCCL);
# 2. unpacks the carried cJSON/Check/pkg-config packages where missing;
# 3. builds for sm_90a with the tests;
# 4. tests/test_cuda (CPU parity whole-GPU and on SM partitions, device
#    clocks) and tests/test_nccl (the NCCL transport on one GPU: self
#    send/receive, losses equal to the in-process transport; timeouts);
# 5. bench/pipeline_bench.sh (STAGES, default "8 4"; STEPS, default 12).
# Logs and results under $OUT (the device tool's folder) or out/gpu.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/out/gpu}
mkdir -p "$out"
log=$out/session.txt
: >"$log"
say() { echo "$*" | tee -a "$log"; }
t0=$(date +%s)

say "== machine"
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  nvcc --version | tail -2; cmake --version | head -1; uname -a; nproc
  grep -m1 PRETTY_NAME /etc/os-release; } 2>&1 | tee -a "$log"

# cJSON, Check, pkg-config and libcrypto from the carried Debian packages if missing
deps=/tmp/ppdeps
cmake_extra=()
if ! command -v pkg-config >/dev/null || ! pkg-config --exists libcjson check libcrypto 2>/dev/null; then
    say "== unpacking .deps/debs (missing pkg-config, cJSON, Check or libcrypto)"
    mkdir -p "$deps"
    for f in .deps/debs/*.deb; do
        if command -v dpkg >/dev/null; then dpkg -x "$f" "$deps"
        else # a .deb is an ar archive holding data.tar.*
            (d=$(mktemp -d) && cd "$d" && ar x "$root/$f" && tar -xf data.tar.* -C "$deps")
        fi || say "cannot unpack $f"
    done
    export PKG_CONFIG_PATH=$deps/usr/lib/x86_64-linux-gnu/pkgconfig:$deps/usr/share/pkgconfig
    export PKG_CONFIG_SYSROOT_DIR=$deps
    export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
    command -v pkg-config >/dev/null || cmake_extra+=(-DPKG_CONFIG_EXECUTABLE=$deps/usr/bin/pkgconf)
fi
# NCCL: the toolkit's, else the one PyTorch's wheels carry
if ! ls /usr/local/cuda/lib64/libnccl.so* /usr/lib/x86_64-linux-gnu/libnccl.so* >/dev/null 2>&1; then
    nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null \
        || python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null)
    if [ -n "$nccl" ] && [ -f "$nccl/include/nccl.h" ]; then
        lib=$(ls "$nccl"/lib/libnccl.so* | head -1)
        say "== NCCL from $nccl ($lib)"
        cmake_extra+=(-DNCCL_INCLUDE_DIR=$nccl/include -DNCCL_LIBRARY=$lib)
        export LD_LIBRARY_PATH=$nccl/lib:${LD_LIBRARY_PATH:-}
    else
        say "== no NCCL found: the NCCL transport will be left out"
    fi
fi

say "== build (sm_90a)"
build=$root/build-cuda
if ! cmake -S . -B "$build" -DPPSCHED_TESTS=ON -DCMAKE_BUILD_TYPE=Release \
        "${cmake_extra[@]}" >"$out/configure.txt" 2>&1; then
    tail -20 "$out/configure.txt" | tee -a "$log"; exit 1
fi
grep "ppsched backends" "$out/configure.txt" | tee -a "$log"
if ! cmake --build "$build" -j"$(nproc)" >"$out/build.txt" 2>&1; then
    grep -E "error" "$out/build.txt" | head -20 | tee -a "$log"; exit 1
fi
say "built in $(( $(date +%s) - t0 )) s"

say "== GPU tests"
for t in test_cuda test_nccl; do
    timeout 300 "$build/tests/$t" >"$out/$t.txt" 2>&1
    say "$t: exit $? $(grep -E '^[0-9]+%|SKIP' "$out/$t.txt" | tail -1)"
    grep -E "Failure|Error|SKIP" "$out/$t.txt" | head -10 | tee -a "$log"
done

say "== pipeline benchmark"
BUILD_DIR=$build OUT_DIR=$out/pipeline STAGES=${STAGES:-"8 4"} STEPS=${STEPS:-12} \
    timeout $(( 570 - ($(date +%s) - t0) )) bash bench/pipeline_bench.sh 2>"$out/pipeline_bench.err"
say "pipeline_bench exit $? after $(( $(date +%s) - t0 )) s; summary:"
cat "$out/pipeline/summary.txt" >>"$log" 2>/dev/null
tail -40 "$log"
