#!/usr/bin/env bash
# One help text per tool: every option ppsim --help lists, ppsim takes, and
# pprun refuses by name unless pprun --help lists it too; and the other way
# round. Simulator-only options (the cost model, the report) never appear
# in pprun --help, executor-only ones (training, data, checkpoints) never in
# ppsim --help.
set -u
PPSIM=$1 PPRUN=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$PPSIM" --help >"$tmp/sim.help" || bad "ppsim --help failed"
"$PPRUN" --help >"$tmp/run.help" || bad "pprun --help failed"
# the option lines: "  --flag ..." or "  -o, --flag ..."
flags() { grep -oE '^  (-[a-z], )?--[a-z0-9-]+' "$1" | grep -oE -- '--[a-z0-9-]+' | sort -u; }
flags "$tmp/sim.help" >"$tmp/sim.flags"
flags "$tmp/run.help" >"$tmp/run.flags"
[ "$(wc -l <"$tmp/sim.flags")" -ge 20 ] || bad "ppsim --help lists too few options"
[ "$(wc -l <"$tmp/run.flags")" -ge 20 ] || bad "pprun --help lists too few options"

for f in --fwd --bwd --opt --jitter --straggler --format --per-microbatch --precision; do
    if grep -qx -- "$f" "$tmp/run.flags"; then bad "pprun --help lists simulator-only $f"; else ok; fi
done
for f in --backend --data --lr --warmup --checkpoint --resume --rendezvous --log --versions; do
    if grep -qx -- "$f" "$tmp/sim.flags"; then bad "ppsim --help lists executor-only $f"; else ok; fi
done

# tool TOOL_CMD... FLAG: the message of a tool given FLAG and a value
try() { "$@" 1 >/dev/null 2>"$tmp/err"; echo $? >"$tmp/rc"; }
while read -r f; do
    try "$PPSIM" run "$f"
    if grep -qE 'unknown option|executor options' "$tmp/err"; then
        bad "ppsim lists $f but refuses it: $(cat "$tmp/err")"; else ok; fi
    if ! grep -qx -- "$f" "$tmp/run.flags"; then
        try "$PPRUN" "$f"
        if [ "$(cat "$tmp/rc")" = 2 ] && grep -q "pprun: error: $f is one of the simulator options" "$tmp/err"; then
            ok; else bad "pprun $f: not refused as a simulator option: $(cat "$tmp/err")"; fi
    fi
done <"$tmp/sim.flags"
while read -r f; do
    try "$PPRUN" "$f"
    if grep -qE 'unknown option|simulator options' "$tmp/err"; then
        bad "pprun lists $f but refuses it: $(cat "$tmp/err")"; else ok; fi
    if ! grep -qx -- "$f" "$tmp/sim.flags"; then
        try "$PPSIM" run "$f"
        if [ "$(cat "$tmp/rc")" = 2 ] && grep -q "ppsim: error: $f is one of the executor options" "$tmp/err"; then
            ok; else bad "ppsim run $f: not refused as an executor option: $(cat "$tmp/err")"; fi
    fi
done <"$tmp/run.flags"
awk 'length > 80 { exit 1 }' "$tmp/sim.help" "$tmp/run.help" || bad "a help line is wider than 80 columns"

echo "help: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
