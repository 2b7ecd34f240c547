#!/usr/bin/env bash
# pprun within bounds a user can rely on (issue 12):
#  - a schedule that ppsim accepts runs to its end, however far ahead it
#    sends: the links hold what the IR can send ahead (it used to stall on
#    a full queue until --timeout);
#  - peak memory does not grow with the number of steps (it grew by a
#    record per action, and the measured metrics took quadratic time);
#  - a checkpoint whose AdamW step count is absurd is refused, exit 2.
set -u
PPRUN=$1
DATA=$2
here=$(cd "$(dirname "$0")" && pwd) # ckpt_edit.py
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
tiny=(--layers 2 --dim 8 --heads 1 --seq-len 8 --micro-batch-size 1 --data "$DATA" --threads 1
      --eval-batches 1)

# --- stage 0 forwards all 12 micro-batches before it takes a gradient back,
# while stage 1 runs F B OPT per micro-batch: 12 messages ahead each way,
# where the queues used to hold m + P = 3 and both stages blocked sending
python3 - "$tmp/ahead.json" <<'PY'
import json, sys
S = 12
s0 = [f"F{i}" for i in range(S)] + [a for i in range(S) for a in (f"B{i}", "OPT")]
s1 = [a for i in range(S) for a in (f"F{i}", f"B{i}", "OPT")]
json.dump({"format": "ppsched-ir", "version": 1, "schedule": "forward-ahead", "stages": 2,
           "microbatches_per_step": 1, "steps": S, "actions": [s0, s1]}, open(sys.argv[1], "w"))
PY
start=$(date +%s%N)
timeout 60 "$PPRUN" --ir "$tmp/ahead.json" "${tiny[@]}" --timeout 5 --log "$tmp/ahead.jsonl" \
    >"$tmp/out" 2>"$tmp/err"
rc=$?
took=$((($(date +%s%N) - start) / 1000000))
[ $rc -eq 0 ] && grep -q '"final": true, "steps": 12' "$tmp/ahead.jsonl" && ok ||
    bad "a schedule 12 messages ahead: exit $rc after $took ms: $(tail -2 "$tmp/err")"
[ "$took" -lt 4000 ] && ok || bad "a schedule 12 messages ahead took $took ms"

# --- peak memory of 150 and of 2000 steps (64 micro-batches each, about
# 516 000 actions): the same within a few MB (it grew by ~12 KB a step).
# A sanitizer build would count what AddressSanitizer keeps of freed memory.
peak_kb() {
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0" python3 -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode == 0 else -1)' \
        timeout 300 "$PPRUN" --schedule 1f1b-flush --stages 2 --microbatches 64 "${tiny[@]}" "$@"
}
short=$(peak_kb --steps 150)
long=$(peak_kb --steps 2000)
if [ "$short" -gt 0 ] && [ "$long" -gt 0 ] && [ $((long - short)) -lt 4096 ]; then ok
else bad "peak memory: $short KB for 150 steps, $long KB for 2000 (4096 KB apart at most)"; fi

# --- a checkpoint's AdamW step count t: 2 after update 2; -5, 1e300 and nan
# are refused with one line naming it, exit 2 (a resume used to cast it)
"$PPRUN" --schedule 1f1b-flush --stages 2 --microbatches 2 --steps 6 "${tiny[@]}" \
    --checkpoint "$tmp/ck" --stop-after 2 >/dev/null 2>&1 || bad "checkpoint for the t test"
set_t() { # set_t VALUE: stage 0's t in a copy of the checkpoint, CRCs made right
    rm -rf "$tmp/ck-t" && cp -r "$tmp/ck" "$tmp/ck-t"
    PYTHONPATH="$here" python3 - "$tmp/ck-t/checkpoint.ckpt" "$1" <<'PY'
import struct, sys
from ckpt_edit import rewrite
value = float(sys.argv[2])
def set_t(name, data):
    if name == b"stage0":
        # runtime_ckpt.c: 10 int64 of header, the loss sum, per weight
        # version its number and weights (w bytes), the optimizer state
        # (m and v, w bytes each, then t as a double), the gradient (w);
        # after a flush nothing is in flight and no message is kept
        head = struct.unpack_from("<10q", data, 0)
        assert head[6] == 1 and head[7] == 0 and head[8] == 0, head
        w = (len(data) - 104) // 4
        at = 88 + 8 + w + 2 * w
        assert struct.unpack_from("<d", data, at)[0] == 2.0
        struct.pack_into("<d", data, at, value)
    return data
rewrite(sys.argv[1], set_t)
PY
}
set_t 2 || bad "rewriting the checkpoint"
"$PPRUN" --schedule 1f1b-flush --stages 2 --microbatches 2 --steps 6 "${tiny[@]}" \
    --resume "$tmp/ck-t" >/dev/null 2>"$tmp/err" && ok || bad "the rewritten checkpoint with t = 2: $(cat "$tmp/err")"
for t in -5 1e+300 nan; do
    set_t "$t" || bad "rewriting the checkpoint"
    "$PPRUN" --schedule 1f1b-flush --stages 2 --microbatches 2 --steps 6 "${tiny[@]}" \
        --resume "$tmp/ck-t" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ $rc -eq 2 ] && [ "$(grep -c . "$tmp/err")" -eq 1 ] &&
        grep -qF "AdamW step count t is $t, the stage has made 2 updates" "$tmp/err"; then ok
    else bad "t = $t: exit $rc: $(cat "$tmp/err")"; fi
done

echo "pprun_bounds: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
