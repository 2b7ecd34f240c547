#!/usr/bin/env bash
# Every GPU check of the pipeline work in one call of the device tool (a lent
# H200; 15 minutes of device time in all, one call at most 10, 8 files back),
# after `tools/gpu-deps` here:
#
#   run(command="bash bench/gpu_session.sh", carry=[".deps/debs"], timeout_s=590)
#
# Eight steps, in this order, each time-boxed with `timeout -k 5` (the boxes
# below), every box also cut to what is left before one deadline ($total s),
# so the whole script ends before 8 minutes:
#   1 versions   driver, CUDA, cuBLAS, cuDNN, NCCL, PyTorch; nvidia-smi
#   2 deps       the carried .debs unpacked where the machine lacks them;
#                NCCL and cuDNN each taken from the first place with both
#                its header and its library (passed to CMake)
#   3 build      cmake -G Ninja, Release, tests on, sm_90a; the targets
#                below; the cuDNN the build uses (its attention path)
#   4 test_cuda  tests/test_cuda, with Check's TAP log
#   5 bench      bf16 smoke runs of Muon and adamw-rotated with the delay
#                correction (loss must fall); cuda_bench: GPT-2 small bf16 and
#                tf32, medium bf16 (bf16: cuDNN attention where the build has
#                it, tf32: cuBLAS; each RESULT names it); PyTorch's
#                bf16 GEMM peak and GPT-2 small baseline (bench/
#                torch_gpu_baseline.py); MFU of each against both peaks
#   6 pipeline   bench/pipeline_bench.sh at P = 4, then 8; a P whose runs fail
#                on SM partitions runs again with --sm-partitions off; cuBLAS
#                attention (PPSCHED_CUDA_ATTENTION, unless set): cuDNN compiles
#                its plans per stage, seconds that the box was not sized for
#   7 test_nccl  tests/test_nccl
#   8 sanitizer  compute-sanitizer memcheck on a tiny two-stage CUDA run, when
#                enough time is left
# A failed step does not stop the script; a failed build skips the steps that
# need it.
#
# $OUT (default out/gpu) ends with exactly two files: session.txt, one line
# `STEP name: PASS|FAIL|SKIP (cause) in N s` per step with its figures and
# failure lines under it and the total at the end (also printed to stdout),
# and session-logs.tar.gz, every full log. The work happens in a temporary
# folder, packed on any exit, an interruption included.
#
# Overrides (tests/gpu_session_dry_test.sh runs this without a GPU):
#   PPSCHED_SESSION_BUILD_DIR     build tree (default build-cuda)
#   PPSCHED_SESSION_SKIP_BUILD=1  use that tree as it is (step 3 says SKIP)
#   PPSCHED_SESSION_BOX_SCALE     multiplies every box and the deadline
#   PPSCHED_SESSION_TORCH_PYTHON  what runs bench/torch_gpu_baseline.py
#                                 (default python3)
#   PPSCHED_SESSION_CUDA_ARCH     CUDA architectures (default 90a-real)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
# the toolkit's programs (nvcc, compute-sanitizer) where PATH lacks them
command -v nvcc >/dev/null || [ ! -x /usr/local/cuda/bin/nvcc ] || PATH=/usr/local/cuda/bin:$PATH

# Time boxes in seconds. The first seven steps add up to the deadline; the
# retries of step 6 and step 8 run on what the others leave unused.
total=450            # the deadline: 7.5 minutes, packing included
grace=5              # timeout -k: a command ignoring SIGTERM is killed after this
box_versions=20
box_deps=10
box_build=66         # configure and build (about 30 s expected on 16 cores)
box_test_cuda=60
box_smoke=12         # each of the two bf16 optimizer runs (tiny model)
box_cuda_bench=25    # each of the three runs
box_torch=100        # import, GEMM peak, eager, torch.compile (cold: most of it)
box_pipeline=35      # each P, and each retry
box_test_nccl=25
box_sanitizer=45
min_sanitizer=20     # step 8 starts only with this much left

scale=${PPSCHED_SESSION_BOX_SCALE:-1}
scaled() { awk -v s="$1" -v k="$scale" 'BEGIN { v = int(s * k + 0.5); print (v < 1 ? 1 : v) }'; }
for v in total box_versions box_deps box_build box_test_cuda box_smoke box_cuda_bench box_torch \
         box_pipeline box_test_nccl box_sanitizer min_sanitizer; do
    printf -v "$v" %s "$(scaled "${!v}")"
done

build=${PPSCHED_SESSION_BUILD_DIR:-$root/build-cuda}
torch_py=${PPSCHED_SESSION_TORCH_PYTHON:-python3}
cuda_arch=${PPSCHED_SESSION_CUDA_ARCH:-90a-real}
targets=(pprun ppsim cuda_bench test_cuda test_nccl)
bench_iters=10
pipeline_steps=8
pprun_timeout=20     # pprun --timeout: a stage waiting longer fails its run
pipeline_attention=${PPSCHED_CUDA_ATTENTION:-cublas}
data=$root/data/tinyshakespeare.txt
steps="versions deps build test_cuda bench pipeline test_nccl sanitizer"

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && out=$(cd "$OUT" && pwd) || exit 1
else # our own folder: emptied, so it ends with the two files only
    out=$root/out/gpu
    rm -rf "$out" && mkdir -p "$out" || exit 1
fi
work=$(mktemp -d /tmp/ppsession.XXXXXX) || exit 1
logs=$work/logs
mkdir -p "$logs"
session=$work/session.txt
figs=$work/figures.txt
t0=$(date +%s)
deadline=$((t0 + total))

# --- steps and their record ------------------------------------------------

declare -A finished=()
step='' step_t0=$t0 step_box=0
say() { echo "$*" >&2; }
step_begin() { # NAME BOX
    step=$1 step_box=$2 step_t0=$(date +%s)
    : >"$figs"
    say "== $step (box $step_box s, $((step_t0 - t0)) s elapsed)"
}
step_left() { echo $((step_box - ($(date +%s) - step_t0))); }
fig() { printf '  %s\n' "$*" >>"$figs"; }
figs_in() { sed 's/^/  /' >>"$figs"; } # the lines on stdin, as figures
step_end() { # PASS|FAIL|SKIP [CAUSE]
    local line="STEP $step: $1${2:+ ($2)} in $(($(date +%s) - step_t0)) s"
    say "$line"
    { echo "$line"; cat "$figs"; } >>"$session"
    : >"$figs"
    finished[$step]=1
}

# box SECONDS LOG CMD...: CMD under `timeout -k`, its box cut to what is left
# before the deadline, stdout and stderr appended to LOG. Sets $cause (empty
# when CMD exits 0) and returns CMD's status.
box_pid=
box() {
    local s=$1 log=$2 left t rc
    shift 2
    left=$((deadline - $(date +%s) - grace))
    ((s > left)) && s=$left
    if ((s < 1)); then
        cause="no time left before the deadline"
        echo "not run ($cause): $*" >>"$log"
        return 125
    fi
    echo "\$ $* (box $s s)" >>"$log"
    t=$(date +%s)
    # in the background, so that a signal to this script is handled at once
    timeout -k "$grace" "$s" "$@" >>"$log" 2>&1 </dev/null &
    box_pid=$!
    wait "$box_pid" 2>/dev/null # (no "Killed" notice from bash)
    rc=$?
    box_pid=
    if ((rc == 124 || (rc == 137 && $(date +%s) - t >= s))); then
        cause="timed out after $s s"
    elif ((rc == 0)); then cause=
    elif ((rc == 127)); then cause="not found (exit 127)"
    elif ((rc > 128)); then cause="killed by signal $((rc - 128))"
    else cause="exit $rc"
    fi
    echo "exit $rc${cause:+ ($cause)}" >>"$log"
    return "$rc"
}
causes=() # a step's failed parts, joined into its STEP line
failed() { causes+=("$1: $cause"); }
joined() { local IFS=';' j; j="${causes[*]}"; echo "${j//;/; }"; }

interrupted=
finish() {
    trap - EXIT INT TERM
    if [ -n "$box_pid" ]; then # timeout forwards the signal, then kills after $grace
        kill -TERM "$box_pid" 2>/dev/null
        wait "$box_pid" 2>/dev/null
    fi
    for s in $steps; do
        [ -n "${finished[$s]:-}" ] && continue
        if [ "$s" = "$step" ]; then
            step_end FAIL "${interrupted:-the script ended in this step}"
        else
            step=$s step_t0=$(date +%s)
            : >"$figs"
            step_end SKIP "${interrupted:+$interrupted }before it started"
        fi
    done
    local n
    n=$(grep -c '^STEP ' "$session")
    echo "TOTAL $(($(date +%s) - t0)) s elapsed (deadline $total s); $n steps:" \
        "$(grep -c '^STEP [a-z_]*: PASS' "$session") PASS," \
        "$(grep -c '^STEP [a-z_]*: FAIL' "$session") FAIL," \
        "$(grep -c '^STEP [a-z_]*: SKIP' "$session") SKIP" >>"$session"
    cp "$session" "$out/session.txt"
    tar -czf "$out/session-logs.tar.gz" -C "$work" logs session.txt
    if [ "$(stat -c %s "$out/session-logs.tar.gz")" -gt $((15 << 20)) ]; then
        tar -czf "$out/session-logs.tar.gz" -C "$work" --exclude='*.trace.json' logs session.txt
        echo "(session-logs.tar.gz over 15 MiB: packed without the traces)" >>"$out/session.txt"
    fi
    echo
    cat "$out/session.txt"
    rm -rf "$work"
    if [ -n "$interrupted" ] || grep -q '^STEP [a-z_]*: FAIL' "$out/session.txt"; then exit 1; fi
}
trap 'interrupted="interrupted by SIGINT"; exit 130' INT
trap 'interrupted="interrupted by SIGTERM"; exit 143' TERM
trap finish EXIT

{
    echo "ppsched GPU session, $(date -u '+%Y-%m-%d %H:%M UTC'), host $(hostname)," \
        "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$( [ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ] && echo '(with local changes)')"
    echo "boxes (s): versions $box_versions, deps $box_deps, build $box_build," \
        "test_cuda $box_test_cuda, optimizer smoke 2 x $box_smoke, cuda_bench 3 x $box_cuda_bench," \
        "torch $box_torch," \
        "pipeline $box_pipeline per P, test_nccl $box_test_nccl, sanitizer $box_sanitizer;" \
        "deadline $total"
} >"$session"

# --- where headers and libraries may be ------------------------------------

cuda_home=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
# the Python that PyTorch and NVIDIA's wheels are installed for
site_dirs=$(timeout -k 2 10 python3 -c 'import site, sysconfig
print(*dict.fromkeys(site.getsitepackages() + [site.getusersitepackages(),
      sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))' 2>/dev/null)
# (include, lib) folder pairs: the toolkit's, the system's, and each of
# NVIDIA's pip wheels (site-packages/nvidia/*/{include,lib}, as PyTorch has them)
dir_pairs() {
    local sp d
    echo "$cuda_home/include $cuda_home/lib64"
    echo "$cuda_home/include $cuda_home/lib"
    echo "$cuda_home/targets/x86_64-linux/include $cuda_home/targets/x86_64-linux/lib"
    echo "/usr/include /usr/lib/x86_64-linux-gnu"
    echo "/usr/include/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu"
    for sp in $site_dirs; do
        for d in "$sp"/nvidia/*/; do
            [ -d "$d" ] && echo "${d}include ${d}lib"
        done
    done
}
# header_version FILE MAJOR MINOR PATCH: "M.m.p" from the #defines
header_version() {
    awk -v a="$2" -v b="$3" -v c="$4" '$1 == "#define" && $2 == a { x = $3 }
        $1 == "#define" && $2 == b { y = $3 } $1 == "#define" && $2 == c { z = $3 }
        END { if (x != "") print x "." y "." z }' "$1" 2>/dev/null
}
# find_pairs HEADER LIBPREFIX: "include-dir library" where both are found
find_pairs() {
    local inc lib f
    while read -r inc lib; do
        [ -f "$inc/$1" ] || continue
        for f in "$lib/$2".so*; do
            [ -e "$f" ] && { echo "$(readlink -f "$inc") $f"; break; }
        done
    done < <(dir_pairs) | awk '!seen[$1]++'
}
# find_headers HEADER: every such header, with or without a library
find_headers() {
    dir_pairs | while read -r inc _; do
        [ -f "$inc/$1" ] && readlink -f "$inc/$1"
    done | awk '!seen[$0]++'
}

# --- 1 versions ------------------------------------------------------------

step_begin versions "$box_versions"
log=$logs/versions.txt
causes=()
box "$(step_left)" "$logs/nvidia-smi.txt" nvidia-smi || failed nvidia-smi
box "$(step_left)" "$log" nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version \
    --format=csv,noheader || failed "nvidia-smi --query-gpu"
fig "GPU: $(grep -v -e '^\$' -e '^exit' "$log" | tail -1)"
fig "driver's CUDA: $(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$logs/nvidia-smi.txt" | head -1)"
box "$(step_left)" "$log" nvcc --version || failed nvcc
fig "nvcc: $(grep -m1 'release' "$log" || echo 'not found')"
h=$cuda_home/include/cublas_api.h
v=$(header_version "$h" CUBLAS_VER_MAJOR CUBLAS_VER_MINOR CUBLAS_VER_PATCH)
fig "cuBLAS: ${v:-not found} ($h)"
for h in $(find_headers cudnn_version.h); do
    fig "cuDNN: $(header_version "$h" CUDNN_MAJOR CUDNN_MINOR CUDNN_PATCHLEVEL) ($h)"
done
for h in $(find_headers nccl.h); do
    fig "NCCL: $(header_version "$h" NCCL_MAJOR NCCL_MINOR NCCL_PATCH) ($h)"
done
box "$(step_left)" "$log" python3 -c 'import torch, torch.backends.cudnn as c
n = torch.cuda.nccl.version() if torch.cuda.is_available() else None
print("PyTorch:", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", c.version(),
      "NCCL", ".".join(map(str, n)) if isinstance(n, tuple) else n)' || failed "import torch"
fig "$(grep -m1 '^PyTorch:' "$log" || echo 'PyTorch: not importable')"
fig "$(cmake --version 2>/dev/null | head -1), ninja $(ninja --version 2>/dev/null)," \
    "$(nproc) cores, $(grep -m1 PRETTY_NAME /etc/os-release 2>/dev/null | cut -d= -f2)"
fig "nvidia-smi:"
grep -v -e '^\$ ' -e '^exit ' "$logs/nvidia-smi.txt" | figs_in
if [ ${#causes[@]} -eq 0 ]; then step_end PASS; else step_end FAIL "$(joined)"; fi

# --- 2 deps: carried packages, NCCL and cuDNN -------------------------------

step_begin deps "$box_deps"
log=$logs/deps.txt
causes=()
cmake_extra=()
deps=$work/deps
if ! command -v pkg-config >/dev/null ||
        ! pkg-config --exists libcjson check libcrypto lapacke 2>/dev/null; then
    debs=(.deps/debs/*.deb)
    if [ -e "${debs[0]}" ]; then
        # a .deb is an ar archive holding data.tar.*, where dpkg is missing
        # shellcheck disable=SC2016 # $1 and $2 are bash -c's arguments
        box "$(step_left)" "$log" bash -c 'for f in "$1"/*.deb; do
                if command -v dpkg >/dev/null; then dpkg -x "$f" "$2"
                else (d=$(mktemp -d) && cd "$d" && ar x "$f" && tar -xf data.tar.* -C "$2")
                fi || { echo "cannot unpack $f"; exit 1; }
            done' unpack "$root/.deps/debs" "$deps" || failed "unpacking .deps/debs"
        fig "unpacked ${#debs[@]} carried packages (pkg-config, cJSON, Check, libcrypto or LAPACKE missing)"
        multiarch=$deps/usr/lib/x86_64-linux-gnu
        export PKG_CONFIG_PATH=$multiarch/pkgconfig:$deps/usr/share/pkgconfig
        export PKG_CONFIG_SYSROOT_DIR=$deps
        # LAPACK and BLAS sit in subfolders (Debian's alternatives, not made by an unpack)
        export LD_LIBRARY_PATH=$multiarch:$multiarch/lapack:$multiarch/blas:${LD_LIBRARY_PATH:-}
        command -v pkg-config >/dev/null || cmake_extra+=(-DPKG_CONFIG_EXECUTABLE="$deps/usr/bin/pkgconf")
    else
        cause="missing, and no .deps/debs carried (run tools/gpu-deps, carry .deps/debs)"
        failed "pkg-config, cJSON, Check, libcrypto or LAPACKE"
    fi
else
    fig "pkg-config, cJSON, Check, libcrypto, LAPACKE: present"
fi
# NCCL: the first place with both the header and the library (a library
# alone, as some wheels carry, would build without the transport's header)
nccl=$(find_pairs nccl.h libnccl | head -1)
if [ -n "$nccl" ]; then
    read -r nccl_inc nccl_lib <<<"$nccl"
    fig "NCCL $(header_version "$nccl_inc/nccl.h" NCCL_MAJOR NCCL_MINOR NCCL_PATCH): $nccl_inc/nccl.h and $nccl_lib"
    cmake_extra+=(-DNCCL_INCLUDE_DIR="$nccl_inc" -DNCCL_LIBRARY="$nccl_lib")
    LD_LIBRARY_PATH=$(dirname "$nccl_lib"):${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH
else
    fig "NCCL: no place with both nccl.h and libnccl.so*: the NCCL transport is left out" \
        "(headers: $(find_headers nccl.h | tr '\n' ' '))"
fi
# cuDNN the same way (the CUDA backend's fused attention); a wheel's library
# loads its engine libraries from beside it
cudnn=$(find_pairs cudnn_version.h libcudnn | head -1)
if [ -n "$cudnn" ]; then
    read -r cudnn_inc cudnn_lib <<<"$cudnn"
    fig "cuDNN $(header_version "$cudnn_inc/cudnn_version.h" CUDNN_MAJOR CUDNN_MINOR CUDNN_PATCHLEVEL):" \
        "include $cudnn_inc, library $cudnn_lib"
    cmake_extra+=(-DCUDNN_INCLUDE_DIR="$cudnn_inc" -DCUDNN_LIBRARY="$cudnn_lib")
    LD_LIBRARY_PATH=$(dirname "$cudnn_lib"):${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH
else
    fig "cuDNN: no place with both cudnn_version.h and libcudnn.so*: cuBLAS attention only"
fi
{ echo "cmake extra: ${cmake_extra[*]}"; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "PKG_CONFIG_PATH=${PKG_CONFIG_PATH:-}"; dir_pairs; } >>"$log"
if [ ${#causes[@]} -eq 0 ]; then step_end PASS; else step_end FAIL "$(joined)"; fi

# --- 3 build ------------------------------------------------------------------

step_begin build "$box_build"
causes=()
built=0
if [ "${PPSCHED_SESSION_SKIP_BUILD:-0}" = 1 ]; then
    for t in pprun ppsim cuda_bench tests/test_cuda tests/test_nccl; do
        [ -x "$build/$t" ] || causes+=("$build/$t: missing")
    done
    if [ ${#causes[@]} -eq 0 ]; then
        built=1
        step_end SKIP "PPSCHED_SESSION_SKIP_BUILD=1: $build used as it is"
    else
        step_end FAIL "PPSCHED_SESSION_SKIP_BUILD=1 and $(joined)"
    fi
else
    # a tree another generator made (the former session used make) cannot take -G Ninja
    if [ -f "$build/CMakeCache.txt" ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$build/CMakeCache.txt"; then
        rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
        fig "$build: made by another generator, configured afresh"
    fi
    if box "$(step_left)" "$logs/configure.txt" cmake -S "$root" -B "$build" -G Ninja \
            -DPPSCHED_TESTS=ON -DCMAKE_BUILD_TYPE=Release \
            -DPPSCHED_CUDA_ARCHITECTURES="$cuda_arch" "${cmake_extra[@]}"; then
        grep -E 'ppsched (backends|eigensolver)' "$logs/configure.txt" | sed 's/^-- //' | figs_in
        if ! grep -q 'cuda=ON' "$logs/configure.txt"; then
            cause="CMake found no CUDA toolkit"
            failed configure
        elif box "$(step_left)" "$logs/build.txt" cmake --build "$build" -j"$(nproc)" \
                --target "${targets[@]}"; then
            built=1
            fig "built ${targets[*]} in $(($(date +%s) - step_t0)) s"
        else
            failed build
            grep -E '^FAILED:|error' "$logs/build.txt" | head -20 | figs_in
        fi
    else
        failed configure
        grep -E 'CMake Error|error' -A2 "$logs/configure.txt" | head -20 | figs_in
    fi
    if [ $built = 1 ]; then step_end PASS; else step_end FAIL "$(joined)"; fi
fi
# what the build found of cuDNN, from its cache (also for a build reused as it is)
note=$(sed -n 's/^PPSCHED_CUDNN_NOTE:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null)
echo "  cuDNN in the build: ${note:-unknown (no PPSCHED_CUDNN_NOTE in $build/CMakeCache.txt)}" >>"$session"

# --- 4 and 7: a Check suite ---------------------------------------------------

# suite NAME BOX: tests/NAME with Check's TAP log; a "SKIP: " line is a SKIP.
# (fp32: test_cuda's parity tolerances are for it, and it skips otherwise)
suite() {
    local name=$1 log=$logs/$1.txt tap=$logs/$1.tap
    step_begin "$name" "$2"
    causes=()
    if [ $built = 0 ]; then step_end SKIP "no build"; return; fi
    box "$(step_left)" "$log" env CK_TAP_LOG_FILE_NAME="$tap" CK_VERBOSITY=verbose \
        PPSCHED_CUDA_MATH=fp32 PPSCHED_SOURCE_DIR="$root" PPSCHED_BUILD_DIR="$build" \
        "$build/tests/$name" || failed "$name"
    grep -E '^[0-9]+%: Checks' "$log" | figs_in
    grep -E '^(not )?ok ' "$tap" 2>/dev/null | figs_in
    grep -E '^[^ :]+:[0-9]+:[FE]:|pprun: error:' "$log" | figs_in
    local skip
    skip=$(sed -n 's/^SKIP: //p' "$log" | head -1)
    if [ ${#causes[@]} -ne 0 ]; then step_end FAIL "$(joined)"
    elif [ -n "$skip" ]; then step_end SKIP "$skip"
    else step_end PASS
    fi
}
suite test_cuda "$box_test_cuda"

# --- 5 bench: cuda_bench, PyTorch's peak and baseline, MFU ----------------------

step_begin bench $((2 * box_smoke + 3 * box_cuda_bench + box_torch))
causes=()
if [ $built = 0 ]; then
    step_end SKIP "no build"
else
    # issue 13's optimizers on the device in bf16, each with the delay
    # correction, under the delay they are for: the run ends and its loss falls
    for run in "pipedream-2bw muon" "pipedream adamw-rotated"; do
        read -r sched opt <<<"$run"
        log=$logs/smoke-$opt.txt
        box "$box_smoke" "$log" env PPSCHED_CUDA_MATH=bf16 "$build/pprun" --backend cuda \
            --devices 0 --schedule "$sched" --stages 2 --microbatches 4 --steps 20 --model tiny \
            --data "$data" --optimizer "$opt" --delay-correction 0.5 --timeout 10 \
            --log "$logs/smoke-$opt.jsonl" || failed "bf16 $opt smoke"
        losses=$(python3 -c 'import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(rows[0]["loss"], rows[-1]["loss"])' "$logs/smoke-$opt.jsonl" 2>/dev/null)
        read -r l0 l1 <<<"$losses"
        fig "bf16 $sched $opt + delay correction 0.5: loss ${l0:-?} -> ${l1:-?} over 20 updates"
        if [ -n "$l1" ] && ! awk "BEGIN { exit !($l1 < $l0) }"; then
            cause="the loss did not fall"
            failed "bf16 $opt smoke"
        fi
        grep -E 'pprun: error:' "$log" | head -3 | figs_in
    done
    for run in "gpt2-small bf16" "gpt2-small tf32" "gpt2-medium bf16"; do
        read -r model math <<<"$run"
        log=$logs/cuda_bench-$model-$math.txt
        box "$box_cuda_bench" "$log" env PPSCHED_CUDA_MATH="$math" "$build/cuda_bench" \
            --model "$model" --micro-batch 8 --seq 1024 --iters "$bench_iters" --warmup 2 ||
            failed "cuda_bench $model $math"
        grep -E '^RESULT |^cuda_bench: error:' "$log" | head -5 | figs_in
    done
    log=$logs/torch_baseline.txt
    box "$box_torch" "$log" "$torch_py" bench/torch_gpu_baseline.py --batch 8 --seq 1024 ||
        failed "torch baseline"
    grep -E '^RESULT |^torch_gpu_baseline: error:' "$log" | head -10 | figs_in
    # MFU of every run that gives its TFLOP/s, against the measured bf16 peak and 989
    peak=$(sed -n 's/^RESULT figure=bf16-peak .*tflops=\([0-9.]*\).*/\1/p' "$log" | head -1)
    cat "$logs"/cuda_bench-*.txt "$log" | grep '^RESULT ' | grep -v 'figure=bf16-peak' |
        awk -v peak="$peak" '{
            label = ""; tf = ""
            for (i = 2; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] == "model" || kv[1] == "math" || kv[1] == "attention" || kv[1] == "figure")
                    label = label " " kv[2]
                if (kv[1] == "tflops") tf = kv[2]
            }
            if (tf == "") next
            m = peak != "" ? sprintf("%.1f%% of the measured bf16 peak %.1f TFLOP/s", 100 * tf / peak, peak) \
                           : "no measured bf16 peak"
            printf "MFU%s: %.1f TFLOP/s, %s, %.1f%% of 989 TFLOP/s\n", label, tf, m, 100 * tf / 989
        }' | figs_in
    if [ ${#causes[@]} -eq 0 ]; then step_end PASS; else step_end FAIL "$(joined)"; fi
fi

# --- 6 pipeline: P = 4 then 8, again without SM partitions where runs fail -----

# pipeline P DIR EXTRA-PPRUN-OPTIONS: bench/pipeline_bench.sh for P stages into
# DIR; its summary as figures; sets $cause and returns its status
pipeline() {
    local rc runs checks
    box "$box_pipeline" "$2.txt" env NO_BUILD=1 BUILD_DIR="$build" OUT_DIR="$2" STAGES="$1" \
        STEPS=$pipeline_steps EXTRA_ARGS="$3" PPSCHED_CUDA_ATTENTION="$pipeline_attention" \
        bash bench/pipeline_bench.sh
    rc=$?
    runs=$(grep -c 'pprun failed' "$2/summary.txt" 2>/dev/null)
    checks=$(grep -c '^FAIL ' "$2/summary.txt" 2>/dev/null)
    if ((rc != 0)) && [[ $cause != timed* ]] && ((runs + checks > 0)); then
        cause=$( ((runs)) && echo "$runs runs failed")$( ((runs && checks)) && echo ", ")
        cause+=$( ((checks)) && echo "$checks checks failed")
    fi
    fig "P=$1 with $3, $pipeline_attention attention: $( ((rc == 0)) && echo PASS || echo "FAIL ($cause)")"
    grep -E '^(PASS|FAIL) |P=[0-9]|pprun failed' "$2/summary.txt" 2>/dev/null | figs_in
    # a run cut short by the box has no summary line: its errors, if any
    ((runs)) || grep -h 'pprun: error:' "$2"/*.err 2>/dev/null | sort | uniq -c | figs_in
    return $rc
}

step_begin pipeline $((2 * box_pipeline))
causes=()
if [ $built = 0 ]; then
    step_end SKIP "no build"
else
    for P in 4 8; do
        pipeline $P "$logs/pipeline-P$P" "--timeout $pprun_timeout" && continue
        failed "P=$P"
        # runs that failed or hung (not a failed check): SM partitions suspect
        if [[ $cause == timed* ]] || grep -q 'pprun failed' "$logs/pipeline-P$P/summary.txt" 2>/dev/null; then
            pipeline $P "$logs/pipeline-P$P-shared" "--sm-partitions off --timeout $pprun_timeout" ||
                failed "P=$P with --sm-partitions off"
        fi
    done
    if [ ${#causes[@]} -eq 0 ]; then step_end PASS; else step_end FAIL "$(joined)"; fi
fi

# --- 7 test_nccl ----------------------------------------------------------------

suite test_nccl "$box_test_nccl"

# --- 8 sanitizer, with what is left ---------------------------------------------

step_begin sanitizer "$box_sanitizer"
causes=()
left=$((deadline - $(date +%s) - grace))
sanitizer=$(command -v compute-sanitizer || ls "$cuda_home/bin/compute-sanitizer" 2>/dev/null)
if [ $built = 0 ]; then
    step_end SKIP "no build"
elif ((left < min_sanitizer)); then
    step_end SKIP "only $left s left before the deadline, $min_sanitizer needed"
elif [ -z "$sanitizer" ]; then
    step_end SKIP "compute-sanitizer not found"
else
    log=$logs/sanitizer.txt
    box "$box_sanitizer" "$log" "$sanitizer" --tool memcheck --error-exitcode 3 --print-limit 20 \
        "$build/pprun" --backend cuda --devices 0 --schedule 1f1b-flush --stages 2 \
        --microbatches 2 --steps 2 --model tiny --layers 2 --seq-len 32 --micro-batch-size 2 \
        --data "$data" --timeout 30 || failed memcheck
    grep -E 'ERROR SUMMARY|^========= (Invalid|Program hit|.*[Ee]rror)|pprun: error:' "$log" |
        head -20 | figs_in
    fig "note: one process, no fork (a Check suite under the sanitizer needs CK_FORK=no;" \
        "run_gpu_suite already runs without fork); memcheck slows kernels many times: tiny model only"
    if [ ${#causes[@]} -eq 0 ]; then step_end PASS; else step_end FAIL "$(joined)"; fi
fi
# the EXIT trap writes the total, packs and prints
