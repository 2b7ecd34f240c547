#!/usr/bin/env bash
# ppsim as a user runs it: outputs, round trips through files, and one clear
# error line with exit status 2 for every kind of bad input.
set -u
PPSIM=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0

ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect_error "fragment" args...: exit 2, exactly one stderr line
# "ppsim: error: ...", containing the fragment, and nothing on stdout.
expect_error() {
    local frag=$1; shift
    "$PPSIM" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    local lines; lines=$(wc -l <"$tmp/err")
    if [ $rc -ne 2 ]; then bad "ppsim $* exited $rc, expected 2"; return; fi
    if [ "$lines" -ne 1 ] || ! grep -q '^ppsim: error: ' "$tmp/err"; then
        bad "ppsim $*: stderr is not one error line: $(cat "$tmp/err")"; return; fi
    if ! grep -qF -- "$frag" "$tmp/err"; then
        bad "ppsim $*: message lacks \"$frag\": $(cat "$tmp/err")"; return; fi
    if [ -s "$tmp/out" ]; then bad "ppsim $*: printed to stdout on error"; return; fi
    ok
}

expect_ok() {
    if "$PPSIM" "$@" >"$tmp/out" 2>"$tmp/err"; then ok; else bad "ppsim $* failed: $(cat "$tmp/err")"; fi
}

# --- normal use
expect_ok --help
grep -q 'usage: ppsim' "$tmp/out" || bad "--help prints no usage"
expect_ok list
[ "$(wc -l <"$tmp/out")" -eq 10 ] || bad "list should print 10 schedules"
expect_ok compare
awk 'length > 80 { exit 1 }' "$tmp/out" || bad "compare table is wider than 80 columns"
grep -q '^paci ' "$tmp/out" || bad "compare table lacks paci"
expect_ok compare --format json
python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); assert isinstance(a,list) and len(a)==3; assert {"schedule","stages","microbatches_per_step","steps","makespan","throughput","bubble_fraction","steady_bubble_fraction","drift_max","drift_mean","staleness_max","staleness_mean","peak_memory_bytes_max","per_stage"} <= set(a[0]); assert {"stage","busy","idle","bubble_fraction","drift_max","staleness_max","peak_inflight","peak_weight_copies","peak_memory_bytes"} <= set(a[0]["per_stage"][0])' "$tmp/out" || bad "compare --format json lacks fields"
expect_ok run --schedule 1f1b-flush --stages 4 --microbatches 4 --steps 2 --format json
python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); assert a["makespan"]==42 and a["steady_bubble_fraction"] is None' "$tmp/out" || bad "run json: makespan 42 / steady null"
expect_ok run --schedule paci --stages 4 --accum 4 --steps 3 --trace "$tmp/t.json" --svg "$tmp/t.svg" --per-microbatch "$tmp/t.csv"
head -1 "$tmp/t.csv" | grep -qx 'stage,microbatch,v_f,v_b,drift,f_start,f_end,b_start,b_end' || bad "per-microbatch header"
[ "$(wc -l <"$tmp/t.csv")" -eq 49 ] || bad "per-microbatch rows: expected 48 + header"
grep -q '^0,4,0,1,1,12,13,' "$tmp/t.csv" || bad "micro-batch 4 on stage 0: F at v0 in [12,13], B at v1"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))["traceEvents"]' "$tmp/t.json" || bad "trace is not JSON with traceEvents"
grep -q '<svg' "$tmp/t.svg" || bad "svg"
expect_ok run --schedule paci --stages 4 --accum 2 --steps 3 --format csv
[ "$(wc -l <"$tmp/out")" -eq 2 ] || bad "csv: header and one row"

# --- IR round trip: export, validate, run from the file = generated
expect_ok export --schedule pipedream-2bw --stages 4 --microbatches 4 --steps 5 -o "$tmp/ir.json"
expect_ok validate "$tmp/ir.json"
"$PPSIM" run --schedule pipedream-2bw --stages 4 --microbatches 4 --steps 5 --format json >"$tmp/a.json" 2>&1
"$PPSIM" run --ir "$tmp/ir.json" --format json >"$tmp/b.json" 2>&1
cmp -s "$tmp/a.json" "$tmp/b.json" && ok || bad "metrics of the exported IR differ from the generated schedule"

# --- the optimizer in the memory and cost models (tests/test_optim_cost.c
# has the hand computation): plain AdamW leaves every output as it was
"$PPSIM" compare >"$tmp/plain.txt" 2>&1
"$PPSIM" compare --optimizer adamw >"$tmp/adamw.txt" 2>&1
cmp -s "$tmp/plain.txt" "$tmp/adamw.txt" && ok || bad "compare --optimizer adamw differs from compare"
expect_ok compare --optimizer muon
awk 'length > 80 { exit 1 }' "$tmp/out" || bad "compare --optimizer muon is wider than 80 columns"
grep -qE '^difference +(-0\.14 +){7}-0\.14$' "$tmp/out" || bad "compare --optimizer muon: no per-stage difference of -0.14 GiB: $(cat "$tmp/out")"
expect_ok compare --optimizer adamw-rotated --format json
python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); s=a[0]["per_stage"]; assert a[0]["optimizer"]=="adamw-rotated" and s[0]["optimizer_state_bytes"]==2241232896 and s[7]["optimizer_state_vs_adamw_bytes"]==1157627904' "$tmp/out" || bad "compare --optimizer adamw-rotated --format json: state per stage"
expect_ok compare --optimizer muon --format csv
python3 -c 'import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); assert len(r)==3 and r[0]["optimizer"]=="muon" and float(r[0]["optimizer_state_vs_adamw_bytes_s0"])==-150994944' "$tmp/out" || bad "compare --optimizer muon --format csv: state columns"
# Muon's Newton-Schulz on gpt2-medium is 2.5 forwards a stage (P=4 stages
# of 6 blocks, last stage less): gpipe's two steps wait 2 x 2.5 on stage 0
expect_ok run --schedule gpipe --stages 4 --microbatches 4 --steps 2 --optimizer muon --opt-flops --format json
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["makespan"]==47' "$tmp/out" || bad "--opt-flops with muon: makespan is not 42 + 5"
expect_ok run --schedule gpipe --stages 4 --microbatches 4 --steps 2 --opt-flops --format json
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["makespan"]==42' "$tmp/out" || bad "--opt-flops with adamw changed the makespan"
expect_error 'unknown optimizer "bogus"' compare --optimizer bogus
expect_error '--delay-correction' compare --delay-correction 2

# --- bad input: one line, exit 2
expect_error 'unknown command' frobnicate
expect_error 'unknown option "--frob"' run --schedule paci --frob
expect_error 'unknown schedule "nope"' run --schedule nope
expect_error '--stages: "x" is not an integer' run --schedule paci --stages x
expect_error '--stages: -3 is out of range' run --schedule paci --stages -3
expect_error '--fwd' run --schedule paci --fwd -1
expect_error '--jitter' run --schedule paci --jitter abc
expect_error '--steps needs a value' run --schedule paci --steps
expect_error 'needs --microbatches >= --stages' run --schedule pipedream-2bw --stages 8 --microbatches 4
expect_error '--format' compare --format xml
expect_error '--model' run --schedule paci --model gpt5
expect_error 'only 24 layers' run --schedule paci --stages 32
expect_error 'missing.json' run --ir "$tmp/missing.json"
printf '{"format":"ppsched-ir","version":1,"schedule":"x","stages":2,' >"$tmp/trunc.json"
expect_error 'trunc.json' run --ir "$tmp/trunc.json"
printf '{"format":"ppsched-ir","version":1,"schedule":"x","stages":1,"microbatches_per_step":1,"steps":1,"actions":[["F0","X0","OPT"]]}' >"$tmp/unk.json"
expect_error 'X0' validate "$tmp/unk.json"
printf '{"format":"ppsched-ir","version":1,"schedule":"x","stages":1,"microbatches_per_step":1,"steps":1,"actions":[["F0","OPT"]]}' >"$tmp/nob.json"
expect_error 'nob.json' validate "$tmp/nob.json"
printf '{"format":"ppsched-ir","version":1,"schedule":"x","stages":1,"microbatches_per_step":1,"steps":1,"actions":[["F0","B0","B0","OPT"]]}' >"$tmp/dupb.json"
expect_error 'dupb.json' validate "$tmp/dupb.json"
printf '{"format":"ppsched-ir","version":1,"schedule":"x","stages":1,"microbatches_per_step":1,"steps":1,"actions":[["B0","F0","OPT"]]}' >"$tmp/bf.json"
expect_error 'bf.json' validate "$tmp/bf.json"
printf '{"format":"ppsched-ir","version":1,"schedule":"x","stages":2,"microbatches_per_step":2,"steps":1,"actions":[["F0","B0","F1","B1","OPT"],["F0","F1","B0","B1","OPT"]]}' >"$tmp/dead.json"
expect_error 'deadlock: stage' run --ir "$tmp/dead.json"
# ranks that hold several stages: chunk counts that do not fit
expect_error 'two-chunk schedule' run --schedule zbv --ranks 4 --chunks 3
expect_error 'multiple of --stages' run --schedule interleaved-1f1b --ranks 4 --microbatches 6
expect_error 'has one stage per rank' run --schedule 1f1b-flush --chunks 2
expect_error 'needs --microbatches >= 2 x --stages' run --schedule dualpipev --ranks 4 \
    --microbatches 4
printf '%s' '{"format":"ppsched-ir","version":1,"schedule":"x","stages":5,"ranks":2,
  "placement":"looped","microbatches_per_step":1,"steps":1,"actions":[[],[]]}' >"$tmp/odd.json"
expect_error '5 stages do not divide over 2 ranks' run --ir "$tmp/odd.json"
printf '0F0,0F1\n1F0,1X9\n' >"$tmp/bad.csv"
expect_error 'bad.csv' run --pytorch-csv "$tmp/bad.csv"
expect_error 'export needs -o' export --schedule paci
expect_error 'cannot write' export --schedule paci -o /nonexistent-dir/x.json
expect_error 'cannot write' run --schedule paci --svg /nonexistent-dir/x.svg
[ ! -e /nonexistent-dir ] || bad "created a directory"
chmod 000 "$tmp/ir.json"
if [ "$(id -u)" -ne 0 ]; then expect_error 'ir.json' run --ir "$tmp/ir.json"; fi
chmod 644 "$tmp/ir.json"
expect_error 'straggler' run --schedule paci --straggler 99:2

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
