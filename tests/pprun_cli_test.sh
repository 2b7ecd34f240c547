#!/usr/bin/env bash
# pprun as a user runs it: a short real training run with every output, a
# checkpoint and a resume that continues the losses exactly, and one clear
# error line with exit status 2 for every kind of bad input.
set -u
PPRUN=$1
DATA=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

expect_error() {
    local frag=$1; shift
    "$PPRUN" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ $rc -ne 2 ]; then bad "pprun $* exited $rc, expected 2: $(cat "$tmp/err")"; return; fi
    if [ "$(grep -c . "$tmp/err")" -ne 1 ] || ! grep -q '^pprun: error: ' "$tmp/err"; then
        bad "pprun $*: stderr is not one error line: $(cat "$tmp/err")"; return; fi
    grep -qF -- "$frag" "$tmp/err" || { bad "pprun $*: message lacks \"$frag\": $(cat "$tmp/err")"; return; }
    ok
}

small=(--model tiny --layers 4 --dim 32 --heads 2 --seq-len 16 --micro-batch-size 2)
common=(--schedule paci --stages 2 --accum 2 --steps 6 "${small[@]}" --data "$DATA" --eval-batches 2)

# --- a run with every output
if "$PPRUN" "${common[@]}" --eval-every 3 --log "$tmp/log.jsonl" --versions "$tmp/v.csv" \
    --trace "$tmp/t.json" --profile "$tmp/p.json" >"$tmp/out" 2>"$tmp/err"; then ok; else bad "run: $(cat "$tmp/err")"; fi
[ "$(grep -c '"step"' "$tmp/log.jsonl")" -eq 6 ] || bad "log: 6 update lines"
grep -q '"val_loss"' "$tmp/log.jsonl" || bad "log: validation loss"
head -1 "$tmp/v.csv" | grep -qx 'stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,b_end' || bad "versions header"
[ "$(wc -l <"$tmp/v.csv")" -eq 25 ] || bad "versions: 2 stages x 12 micro-batches"
python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); assert any(e.get("ph")=="X" for e in t["traceEvents"]) and any(e.get("ph")=="C" for e in t["traceEvents"])' "$tmp/t.json" || bad "trace"
grep -q 'steady bubble' "$tmp/out" || bad "summary table"
# the measured profile drives the simulator
ppsim=$(dirname "$PPRUN")/ppsim
if "$ppsim" run --schedule paci --stages 2 --accum 2 --steps 6 --profile "$tmp/p.json" --model tiny >/dev/null 2>"$tmp/err"; then ok; else bad "ppsim --profile: $(cat "$tmp/err")"; fi

# --- stop after 2 updates, resume: the losses continue exactly
"$PPRUN" "${common[@]}" --log "$tmp/full.jsonl" >/dev/null 2>&1
"$PPRUN" "${common[@]}" --checkpoint "$tmp/ck" --stop-after 2 --log "$tmp/a.jsonl" >/dev/null 2>&1 || bad "stop-after"
"$PPRUN" "${common[@]}" --resume "$tmp/ck" --log "$tmp/b.jsonl" >/dev/null 2>&1 || bad "resume"
grep '"step"' "$tmp/full.jsonl" | cut -d, -f1,2 >"$tmp/full.txt"
cat "$tmp/a.jsonl" "$tmp/b.jsonl" | grep '"step"' | cut -d, -f1,2 >"$tmp/ab.txt"
cmp -s "$tmp/full.txt" "$tmp/ab.txt" && ok || bad "resumed losses differ: $(diff "$tmp/full.txt" "$tmp/ab.txt")"

# --- bad input
printf '' >"$tmp/empty.txt"
printf 'short text' >"$tmp/short.txt"
python3 - "$tmp" <<'PY'
import struct, sys
d = sys.argv[1]
def shard(name, magic=20240520, version=1, tokens=range(200), count=None):
    toks = list(tokens)
    hdr = [0] * 256
    hdr[0], hdr[1], hdr[2] = magic, version, len(toks) if count is None else count
    with open(f"{d}/{name}", "wb") as f:
        f.write(struct.pack("<256i", *hdr)); f.write(struct.pack(f"<{len(toks)}H", *toks))
shard("magic.bin", magic=1234)
shard("vocab.bin", tokens=[(7 * i) % 300 for i in range(200)])
PY
# --- the modelled link: 50 ms per message dominates the tiny model (also
# under the sanitizers, with other tests on the cores); the simulator, fed
# the run's op times and the same link, predicts the step
"$PPRUN" --schedule 1f1b-flush --stages 2 --microbatches 4 --steps 3 "${small[@]}" --data "$DATA" \
    --comm-latency 0.05 >"$tmp/link.out" 2>"$tmp/link.err" || bad "link model run: $(cat "$tmp/link.err")"
line=$(grep '^PREDICTION' "$tmp/link.out")
step=$(sed -n 's/.* measured_step_s=\([^ ]*\).*/\1/p' <<<"$line")
err=$(sed -n 's/.* error=\([^ ]*\).*/\1/p' <<<"$line")
# per step the critical path crosses the link at least twice per micro-batch on the way
awk -v s="$step" 'BEGIN { exit !(s >= 0.2) }' && ok || bad "link model: measured step $step s, expected >= 0.2"
awk -v x="$err" 'BEGIN { exit !(x < 0.1 && x > -0.1) }' && ok || bad "link model: prediction error $err"

expect_error 'missing.txt' "${common[@]/$DATA/$tmp/missing.txt}"
expect_error 'empty.txt' "${common[@]/$DATA/$tmp/empty.txt}"
expect_error 'short.txt' "${common[@]/$DATA/$tmp/short.txt}"
expect_error 'magic' --schedule paci --stages 2 --steps 2 "${small[@]}" --vocab 256 --data-bin "$tmp/magic.bin"
expect_error 'vocab' --schedule paci --stages 2 --steps 2 "${small[@]}" --vocab 256 --data-bin "$tmp/vocab.bin"
expect_error 'only 4 layers' --schedule paci --stages 8 --steps 2 "${small[@]}" --data "$DATA"
expect_error 'unknown model' --schedule paci --model gpt7 --data "$DATA"
printf '{"format":"ppsched-ir","version":1,"schedule":"x","stages":1,"microbatches_per_step":1,"steps":1,"actions":[["F0","OPT"]]}' >"$tmp/bad.json"
expect_error 'bad.json' --ir "$tmp/bad.json" "${small[@]}" --data "$DATA"
expect_error 'checkpoint is for dim 32' --schedule paci --stages 2 --accum 2 --steps 6 --model tiny --layers 4 --dim 64 --heads 2 --seq-len 16 --micro-batch-size 2 --data "$DATA" --resume "$tmp/ck"
expect_error 'another schedule' --schedule 1f1b-flush --stages 2 --microbatches 2 --steps 6 "${small[@]}" --data "$DATA" --resume "$tmp/ck"
expect_error 'unknown option' "${common[@]}" --frobnicate
expect_error '--lr' "${common[@]}" --lr abc
expect_error 'simulator options' "${common[@]}" --fwd 2
RANK=1 WORLD_SIZE=2 expect_error 'multi-process run has real links' "${common[@]}" \
    --comm-latency 0.01 --rendezvous tcp://127.0.0.1:1

expect_error "give one of --data" --schedule paci --stages 2 "${small[@]}"
if [ -z "${PPSCHED_HAVE_CUDA:-}" ]; then expect_error 'cuda' "${common[@]}" --backend cuda; fi

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
