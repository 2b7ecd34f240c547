#!/usr/bin/env bash
# Bad input found before any work (issue "Hostile input and launch
# mistakes", the outputs-and-numbers part): unusable or clashing output
# paths, absurd numbers from flags and files, endless inputs, and text
# from a file that tries to forge a second error line. Each gets exactly
# one error line and exit status 2, quickly, and touches nothing.
set -u
PPSIM=$1 PPRUN=$2 DATA=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# refused TOOL FRAGMENT ARGS...: exit 2 within 10 s, one plain error line
# (no control characters) containing FRAGMENT, nothing on stdout.
refused() {
    local tool=$1 frag=$2; shift 2
    local name; name=$(basename "$tool")
    timeout 10 "$tool" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ $rc -ne 2 ]; then bad "$name $*: exit $rc, expected 2: $(head -c 300 "$tmp/err")"; return; fi
    if [ "$(wc -l <"$tmp/err")" -ne 1 ] || ! grep -q "^$name: error: " "$tmp/err"; then
        bad "$name $*: not one error line: $(head -c 300 "$tmp/err" | od -c | head -3)"; return; fi
    if LC_ALL=C grep -q '[[:cntrl:]]' <(tr -d '\n' <"$tmp/err"); then
        bad "$name $*: control characters in the error line"; return; fi
    grep -qF -- "$frag" "$tmp/err" || { bad "$name $*: message lacks \"$frag\": $(cat "$tmp/err")"; return; }
    [ -s "$tmp/out" ] && { bad "$name $*: printed to stdout"; return; }
    ok
}

run=(--schedule paci --stages 2 --accum 2 --steps 200 --model tiny --layers 2 --dim 32 --heads 2
     --seq-len 16 --micro-batch-size 2 --data "$DATA")

# --- outputs checked before training (200 updates would take seconds)
refused "$PPRUN" "directory $tmp/missing does not exist" "${run[@]}" --trace "$tmp/missing/t.json"
refused "$PPRUN" "directory $tmp/missing does not exist" "${run[@]}" --checkpoint "$tmp/missing/ck"
cp "$DATA" "$tmp/data.txt"
sum=$(cksum <"$tmp/data.txt")
refused "$PPRUN" "is also an input" "${run[@]/$DATA/$tmp/data.txt}" --log "$tmp/data.txt"
[ "$(cksum <"$tmp/data.txt")" = "$sum" ] && ok || bad "pprun --log over its --data changed the data"
refused "$PPRUN" "twice" "${run[@]}" --trace "$tmp/x" --svg "$tmp/x"
refused "$PPSIM" "is a directory" export --schedule paci -o "$tmp"
"$PPSIM" export --schedule paci --stages 2 -o "$tmp/ir.json" 2>/dev/null || bad "export"
refused "$PPSIM" "is also an input" run --ir "$tmp/ir.json" --trace "$tmp/ir.json"

# a malformed rendezvous spec is bad input (2), found before connecting
export RANK=0 WORLD_SIZE=2
refused "$PPRUN" 'expected tcp://HOST:PORT, file:DIR or mpi' "${run[@]}" --rendezvous bogus:1
refused "$PPRUN" 'expected tcp://HOST:PORT' "${run[@]}" --rendezvous tcp://host:99999
unset RANK WORLD_SIZE

# --- numbers: finite and in range, from flags and from files
refused "$PPSIM" "above the largest duration" run --schedule paci --fwd 1e308
refused "$PPSIM" "above the maximum" run --schedule paci --comm-latency 1e300
refused "$PPSIM" "stage 4294967296 out of range" run --schedule paci --straggler 4294967296:2
refused "$PPSIM" "factor" run --schedule paci --straggler 1:1e308
refused "$PPRUN" "above the maximum 10" "${run[@]}" --lr 1e39
printf '{"format": "ppsched-profile", "version": 1, "unit": "s", "stages": 2, "fwd": [1, 1],
 "bwd": [2, 2], "comm": 1e999}\n' >"$tmp/p1.json"
refused "$PPSIM" '"comm" must be a number' run --schedule paci --stages 2 --profile "$tmp/p1.json"
printf '{"format": "ppsched-profile", "version": 1, "unit": "s", "stages": 2, "fwd": [1e300, 1],
 "bwd": [2, 2]}\n' >"$tmp/p2.json"
refused "$PPSIM" '"fwd"[0] must be a number' run --schedule paci --stages 2 --profile "$tmp/p2.json"

# --- an endless input stops at the cap, in bounded memory
# (the memory limit only without AddressSanitizer, which reserves terabytes
# of address space up front)
mkdir "$tmp/lim"
limit="ulimit -v 4000000"
grep -qa __asan_init "$PPSIM" && limit=":"
printf '#!/usr/bin/env bash\n%s\nexec "%s" "$@"\n' "$limit" "$PPSIM" >"$tmp/lim/ppsim"
chmod +x "$tmp/lim/ppsim"
# (a 64 MB cap: the default 1 GiB takes over 10 s on a loaded 2-core machine)
refused "$tmp/lim/ppsim" "larger than" validate /dev/zero --max-input-bytes 64000000
head -c 5000 /dev/zero | tr '\0' ' ' >"$tmp/big.json"
refused "$PPSIM" "larger than 1000 bytes" validate "$tmp/big.json" --max-input-bytes 1000

# --- text from a file cannot forge a line or send terminal escapes
printf '{"format": "ppsched-ir", "version": 1, "schedule": "x", "stages": 1, "microbatches_per_step": 1, "steps": 1, "actions": [["F0\\nppsim: error: forged \\u001b[31m"]]}\n' >"$tmp/crafted.json"
refused "$PPSIM" 'unknown action "F0\x0appsim: error: forged \x1b[31m"' validate "$tmp/crafted.json"

# --- resuming with another micro-batch size says so (it read past the
# stage state before)
"$PPRUN" "${run[@]}" --steps 6 --checkpoint "$tmp/ckmb" --stop-after 2 >/dev/null 2>&1 || bad "checkpoint for the resume test"
refused "$PPRUN" "written with --micro-batch-size 2, this run has 4" "${run[@]}" --steps 6 \
    --micro-batch-size 4 --resume "$tmp/ckmb"   # (the last --micro-batch-size counts)

# --- an interrupted run keeps its log at its own path, with a last line
# saying so, and leaves no temporary file
"$PPRUN" "${run[@]}" --steps 100000 --log "$tmp/int.jsonl" >/dev/null 2>"$tmp/int.err" &
pid=$!
sleep 2
kill -INT "$pid"
wait "$pid"
rc=$?
[ "$rc" -eq 1 ] && grep -q '"interrupted": true' "$tmp/int.jsonl" 2>/dev/null &&
    grep -q 'pprun: error: interrupted after update' "$tmp/int.err" &&
    [ -z "$(ls "$tmp" | grep 'int.jsonl.tmp')" ] && ok ||
    bad "interrupted run: exit $rc, log: $(tail -1 "$tmp/int.jsonl" 2>&1), $(cat "$tmp/int.err")"

echo "robust_cli: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
