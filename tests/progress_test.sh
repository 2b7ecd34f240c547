#!/usr/bin/env bash
# ppsim's progress line: on a terminal, a run of a few seconds shows it
# (and clears it before the report); --quiet, or no terminal, shows none.
# Needs script(1) for a pseudo-terminal; labelled slow (a 60 M action run).
set -u
PPSIM=$1
command -v script >/dev/null || { echo "SKIP: no script(1) for a pseudo-terminal"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
long=(run --schedule paci --stages 8 --accum 64 --steps 60000)

script -qfec "$PPSIM ${long[*]}" "$tmp/tty.txt" >/dev/null 2>&1
grep -q 'ppsim: simulating paci: .*% of 61.9 M actions' "$tmp/tty.txt" && ok ||
    bad "no progress line on a terminal: $(tr '\r' '\n' <"$tmp/tty.txt" | head -3)"
grep -q 'steady bubble' "$tmp/tty.txt" && ok || bad "no report after the progress line"
script -qfec "$PPSIM ${long[*]} --quiet" "$tmp/quiet.txt" >/dev/null 2>&1
grep -q 'simulating' "$tmp/quiet.txt" && bad "--quiet still shows progress" || ok
"$PPSIM" "${long[@]}" >"$tmp/out" 2>"$tmp/err"
[ -s "$tmp/err" ] && bad "progress written without a terminal: $(head -c 200 "$tmp/err")" || ok

echo "progress: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
