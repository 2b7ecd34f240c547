#!/usr/bin/env bash
# pprun as a user runs it: a short real training run with every output, a
# checkpoint and a resume that continues the losses exactly, and one clear
# error line with exit status 2 for every kind of bad input.
set -u
# the multi-process cases below stop at checks made before any rank meets
export PPSCHED_JOB_SECRET=pprun-cli-test-secret-0123456789
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

# --- random-offset batches (the default) are a function of (--seed, micro-batch):
# stopped after update 2 and resumed, a run continues bit for bit: the same
# losses and, at update 4, the same checkpoint bytes (run record, weights,
# optimizer state, in-flight activations) as the uninterrupted run; a run
# that writes checkpoints still logs every update
rnd=("${common[@]}" --data-order random --seed 5)
"$PPRUN" "${rnd[@]}" --log "$tmp/r-full.jsonl" >/dev/null 2>&1 || bad "random order run"
"$PPRUN" "${rnd[@]}" --checkpoint "$tmp/r-full" --checkpoint-every 2 --log "$tmp/r-ckevery.jsonl" \
    >/dev/null 2>&1 || bad "random order checkpoint"
cmp -s <(grep '"step"' "$tmp/r-full.jsonl" | cut -d, -f1,2) <(grep '"step"' "$tmp/r-ckevery.jsonl" | cut -d, -f1,2) &&
    ok || bad "a run with --checkpoint-every logs other losses or misses updates: $(cat "$tmp/r-ckevery.jsonl")"
"$PPRUN" "${rnd[@]}" --checkpoint "$tmp/r-ck" --stop-after 2 --log "$tmp/r-a.jsonl" >/dev/null 2>&1 || bad "random order stop-after"
"$PPRUN" "${rnd[@]}" --resume "$tmp/r-ck" --log "$tmp/r-b.jsonl" >/dev/null 2>&1 || bad "random order resume"
"$PPRUN" "${rnd[@]}" --resume "$tmp/r-ck" --checkpoint "$tmp/r-ck4" --stop-after 4 >/dev/null 2>&1 ||
    bad "random order resume and checkpoint"
grep '"step"' "$tmp/r-full.jsonl" | cut -d, -f1,2 >"$tmp/r-full.txt"
cat "$tmp/r-a.jsonl" "$tmp/r-b.jsonl" | grep '"step"' | cut -d, -f1,2 >"$tmp/r-ab.txt"
[ "$(wc -l <"$tmp/r-full.txt")" -eq 6 ] && cmp -s "$tmp/r-full.txt" "$tmp/r-ab.txt" && ok ||
    bad "random order: resumed losses differ: $(diff "$tmp/r-full.txt" "$tmp/r-ab.txt")"
"$PPRUN" "${rnd[@]}" --checkpoint "$tmp/r-full4" --stop-after 4 >/dev/null 2>&1 || bad "random order stop at 4"
cmp -s "$tmp/r-full4/checkpoint.ckpt" "$tmp/r-ck4/checkpoint.ckpt" && ok ||
    bad "random order: the resumed run's state at update 4 differs from the uninterrupted run's"
grep -q '"data_order": "random"' "$tmp/r-ck/checkpoint.ckpt" && ok || bad "run record lacks the data order"
"$PPRUN" "${common[@]}" --data-order sequential --seed 5 --log "$tmp/s-full.jsonl" >/dev/null 2>&1 || bad "sequential order run"
grep '"step"' "$tmp/s-full.jsonl" | cut -d, -f1,2 >"$tmp/s-full.txt"
cmp -s "$tmp/r-full.txt" "$tmp/s-full.txt" && bad "random and sequential orders trained the same losses" || ok
expect_error 'written with --seed 5, this run has --seed 6' \
    "${common[@]}" --data-order random --seed 6 --resume "$tmp/r-ck"
expect_error 'written with --data-order random, this run has --data-order sequential' \
    "${common[@]}" --data-order sequential --seed 5 --resume "$tmp/r-ck"
expect_error '--data-order: expected random or sequential, not "shuffled"' "${common[@]}" --data-order shuffled
# a run record from before the data order was recorded: sequential order
"$PPRUN" "${common[@]}" --data-order sequential --checkpoint "$tmp/old" --stop-after 2 >/dev/null 2>&1 || bad "sequential stop-after"
PYTHONPATH="$(dirname "$0")" python3 - "$tmp/old/checkpoint.ckpt" <<'PY' || bad "rewriting the run record"
import re, sys
from ckpt_edit import rewrite
def drop_seed(name, data):
    if name == b"run.json":
        data = re.sub(rb', "seed": [^}]*', b"", data)
        assert b"data_order" not in data and b"seed" not in data
    return data
rewrite(sys.argv[1], drop_seed)
PY
expect_error 'written with --data-order sequential (a record from before the option)' \
    "${common[@]}" --resume "$tmp/old"
if "$PPRUN" "${common[@]}" --data-order sequential --seed 9 --resume "$tmp/old" >/dev/null 2>"$tmp/err"; then ok
else bad "resume from a record without the data order: $(cat "$tmp/err")"; fi
# what the validation loss covers
"$PPRUN" "${common[@]}" >"$tmp/out" 2>&1
grep -q 'validation loss [0-9.]* (2 random batches of 2 sequences)' "$tmp/out" && ok || bad "summary: sampled validation: $(grep 'final training' "$tmp/out")"
"$PPRUN" "${common[@]}" --eval-batches 0 >"$tmp/out" 2>&1
grep -q 'validation loss [0-9.]* (whole validation split: 6971 sequences, 1 of them twice to fill the last batch of 2)' "$tmp/out" && ok ||
    bad "summary: whole validation split: $(grep 'final training' "$tmp/out")"

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

# --- the optimizer: bad values refused; the defaults spelled out train the
# same losses; the banner names the clipping the schedule gets
expect_error '--beta1: 1 is not below 1' "${common[@]}" --beta1 1
expect_error '--beta2: 1.5 is not below 1' "${common[@]}" --beta2 1.5
expect_error '--beta1' "${common[@]}" --beta1 -0.1
expect_error '--eps: must be above 0' "${common[@]}" --eps 0
expect_error '--weight-decay' "${common[@]}" --weight-decay -0.1
expect_error '--grad-clip' "${common[@]}" --grad-clip -1
"$PPRUN" "${common[@]}" --beta1 0.9 --beta2 0.95 --eps 1e-8 --weight-decay 0.1 --grad-clip 0 \
    --log "$tmp/opt-default.jsonl" >/dev/null 2>"$tmp/err" || bad "explicit defaults: $(cat "$tmp/err")"
cmp -s <(grep '"step"' "$tmp/full.jsonl" | cut -d, -f1,2) <(grep '"step"' "$tmp/opt-default.jsonl" | cut -d, -f1,2) &&
    ok || bad "the defaults given explicitly trained other losses"
grep -q 'gradient clipping' "$tmp/err" && bad "a run without --grad-clip mentions clipping" || ok
"$PPRUN" "${common[@]}" --beta2 0.99 --weight-decay 0 --log "$tmp/opt-other.jsonl" >/dev/null 2>&1 || bad "--beta2 0.99 run"
cmp -s <(grep '"step"' "$tmp/full.jsonl" | cut -d, -f1,2) <(grep '"step"' "$tmp/opt-other.jsonl" | cut -d, -f1,2) &&
    bad "--beta2 0.99 --weight-decay 0 trained the default losses" || ok
"$PPRUN" "${common[@]}" --grad-clip 0.5 >/dev/null 2>"$tmp/err" || bad "paci --grad-clip: $(cat "$tmp/err")"
[ "$(grep -c 'gradient clipping: per stage' "$tmp/err")" -eq 1 ] && ok || bad "paci: no per-stage clipping line: $(cat "$tmp/err")"
flush=(--schedule 1f1b-flush --stages 2 --microbatches 2 --steps 3 "${small[@]}" --data "$DATA" --eval-batches 2)
"$PPRUN" "${flush[@]}" --grad-clip 0.5 >/dev/null 2>"$tmp/err" || bad "1f1b-flush --grad-clip: $(cat "$tmp/err")"
[ "$(grep -c 'gradient clipping: global norm' "$tmp/err")" -eq 1 ] && ok || bad "1f1b-flush: no global clipping line: $(cat "$tmp/err")"
RANK=1 WORLD_SIZE=2 expect_error '--grad-clip: 1f1b-flush clips by the global gradient norm' "${flush[@]}" \
    --grad-clip 0.5 --rendezvous tcp://127.0.0.1:1

# --- the optimizers: a name or an option pprun does not take is one line
# and exit 2; Muon with both corrections stops and resumes bit for bit,
# and its checkpoint refuses another optimizer, and the delay correction
# switched off, by name
expect_error 'unknown optimizer "lion"' "${common[@]}" --optimizer lion
expect_error '--muon-momentum: only with --optimizer muon' "${common[@]}" --muon-momentum 0.9
expect_error '--muon-momentum: 1 is not below 1' "${common[@]}" --optimizer muon --muon-momentum 1
expect_error '--delay-correction' "${common[@]}" --delay-correction -0.5
expect_error '--lr-delay-correction' "${common[@]}" --lr-delay-correction -1
mu=("${common[@]}" --optimizer muon --muon-momentum 0.9 --delay-correction 0.5 --lr-delay-correction 4)
# resumes_exactly NAME ARGS...: a run of ARGS (its full log in $tmp/NAME-full.jsonl)
# stopped after update 3 and resumed trains the same losses, and not AdamW's
resumes_exactly() {
    local name=$1; shift
    "$PPRUN" "$@" --checkpoint "$tmp/$name-ck" --stop-after 3 --log "$tmp/$name-a.jsonl" >/dev/null 2>&1 || bad "$name stop-after"
    "$PPRUN" "$@" --resume "$tmp/$name-ck" --log "$tmp/$name-b.jsonl" >/dev/null 2>&1 || bad "$name resume"
    cmp -s <(grep '"step"' "$tmp/$name-full.jsonl" | cut -d, -f1,2) <(cat "$tmp/$name-a.jsonl" "$tmp/$name-b.jsonl" | grep '"step"' | cut -d, -f1,2) &&
        ok || bad "$name: resumed losses differ"
    cmp -s <(grep '"step"' "$tmp/full.jsonl" | cut -d, -f1,2) <(grep '"step"' "$tmp/$name-full.jsonl" | cut -d, -f1,2) &&
        bad "$name trained AdamW's losses" || ok
}
"$PPRUN" "${mu[@]}" --log "$tmp/mu-full.jsonl" >/dev/null 2>"$tmp/err" || bad "muon run: $(cat "$tmp/err")"
grep -q 'optimizer muon (Nesterov momentum 0.9' "$tmp/err" && ok || bad "muon: no banner line: $(cat "$tmp/err")"
resumes_exactly mu "${mu[@]}"
expect_error 'written with --optimizer muon, this run has --optimizer adamw' "${common[@]}" \
    --delay-correction 0.5 --resume "$tmp/mu-ck"
expect_error 'written with --delay-correction 0.5, this run has --delay-correction 0' "${common[@]}" \
    --optimizer muon --resume "$tmp/mu-ck"
expect_error 'written with --optimizer adamw, this run has --optimizer muon' "${common[@]}" \
    --optimizer muon --resume "$tmp/ck"

# --- adamw-rotated: its options refused without it or with a bad value;
# a run with a refresh every 2 updates stops and resumes bit for bit, and
# its checkpoint refuses other sides (a build without LAPACKE refuses the
# optimizer by name instead)
expect_error '--rotate-every: only with --optimizer adamw-rotated (this run has adamw)' "${common[@]}" --rotate-every 5
expect_error '--rotate-sides: only with --optimizer adamw-rotated (this run has muon)' "${common[@]}" \
    --optimizer muon --rotate-sides left
expect_error '--rotate-basis: only with --optimizer adamw-rotated' "${common[@]}" --rotate-basis moment
expect_error '--rotate-beta: only with --optimizer adamw-rotated' "${common[@]}" --rotate-beta 0.9
expect_error '--rotate-every' "${common[@]}" --optimizer adamw-rotated --rotate-every 0
rot=("${common[@]}" --optimizer adamw-rotated --rotate-every 2)
if "$PPRUN" "${rot[@]}" --log "$tmp/rot-full.jsonl" >/dev/null 2>"$tmp/err"; then
    grep -q 'optimizer adamw-rotated (Adam in the eigenbases' "$tmp/err" && ok || bad "adamw-rotated: no banner line: $(cat "$tmp/err")"
    expect_error '--rotate-sides: "up" is not left, right or both' "${rot[@]}" --rotate-sides up
    expect_error '--rotate-basis: "hessian" is not gradient or moment' "${rot[@]}" --rotate-basis hessian
    expect_error '--rotate-beta: 1 is not below 1' "${rot[@]}" --rotate-beta 1
    resumes_exactly rot "${rot[@]}"
    expect_error 'written with --rotate-sides both, this run has --rotate-sides left' "${rot[@]}" \
        --rotate-sides left --resume "$tmp/rot-ck"
else
    grep -q 'no LAPACKE' "$tmp/err" && ok || bad "adamw-rotated run: $(cat "$tmp/err")"
fi

if [ -z "${PPSCHED_HAVE_CUDA:-}" ]; then expect_error 'cuda' "${common[@]}" --backend cuda; fi

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
