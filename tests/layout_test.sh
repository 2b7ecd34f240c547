#!/usr/bin/env bash
# The house rules of DESIGN §1 hold on this tree (tools/check-layout), and
# the checker really finds each kind of violation in a copy of the tree
# where one was planted.
set -u
SRC=$1
CHECK="$SRC/tools/check-layout"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

if bash "$CHECK" "$SRC" >"$tmp/out"; then ok; else bad "the tree breaks the layout rules:"; cat "$tmp/out"; fi

# plant VIOLATION_FILE LINE EXPECTED_FRAGMENT: a fresh copy with LINE
# appended to the file must fail the check with the fragment.
plant() {
    local file=$1 line=$2 frag=$3
    rm -rf "$tmp/tree" && mkdir "$tmp/tree"
    cp -r "$SRC/common" "$SRC/schedules" "$SRC/sim" "$SRC/exec" "$SRC/tools" "$SRC/bench" "$tmp/tree/"
    printf '%s\n' "$line" >>"$tmp/tree/$file"
    if bash "$CHECK" "$tmp/tree" >"$tmp/out"; then
        bad "check-layout missed: $line in $file"
    elif ! grep -qF -- "$frag" "$tmp/out"; then
        bad "check-layout on $line in $file: message lacks \"$frag\": $(cat "$tmp/out")"
    else
        ok
    fi
}
plant exec/model/adamw.c '#include "runtime/runtime.h"' 'no arrow model -> runtime'
plant exec/transport/queue.c '#include "runtime/cut.h"' 'no arrow transport -> runtime'
plant exec/launch/store.c '#include "model/data.h"' 'no arrow launch -> model'
plant exec/model/data.c '#include "transport.h"' 'neither in exec/model/ nor in common/'
plant exec/transport/queue.c '#include "transport/nothere.h"' 'is not a header of exec/'
plant sim/engine.c '#include "model/backend.h"' 'may not include the executor'
plant common/ir.c '#include <nccl.h>' 'CUDA, NCCL or MPI'
plant exec/runtime/cut.c "$(yes '/* filler */' | head -600)" 'split it by concern'

echo "layout: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
