#!/usr/bin/env bash
# pprun with one process per stage on the CPU (socket transport), as a
# cluster launcher starts it: the ranks come from RANK/WORLD_SIZE (torchrun
# style) or SLURM_PROCID/SLURM_NTASKS (srun), meet through a TCP or file
# rendezvous, and must train exactly like the one-process run (same losses,
# same weight versions for every micro-batch). A rank that dies or never
# comes ends the others with a message within the timeout, never a hang.
set -u
PPRUN=$1
DATA=$2
tmp=$(mktemp -d)
pids=()
# pids are `timeout` wrappers: stop them and the pprun under each
stop_all() { for q in "${pids[@]}"; do pkill -9 -P "$q" 2>/dev/null; kill -9 "$q" 2>/dev/null; done; }
trap 'stop_all; rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
port() { echo $((20000 + RANDOM % 30000)); }
# every rank of a job holds its secret (a file: rendezvous makes its own)
export PPSCHED_JOB_SECRET=pprun-dist-test-secret-0123456789abcdef

P=4
small=(--model tiny --layers 4 --dim 32 --heads 2 --seq-len 16 --micro-batch-size 2)
run=(--stages $P --accum 4 --steps 6 "${small[@]}" --data "$DATA" --timeout 30)

# launch NAME ENV...: starts the P ranks in the background (ENV gets RANKVAR
# replaced by the rank) and waits for them; rank r's output in NAME.r.*
launch() {
    local name=$1 sched=$2; shift 2
    local envs=("$@") r rc all=0
    pids=()
    for r in $(seq 0 $((P - 1))); do
        env "${envs[@]//RANKVAR/$r}" timeout 120 "$PPRUN" --schedule "$sched" "${run[@]}" \
            --log "$tmp/$name.jsonl" --versions "$tmp/$name.csv" --trace "$tmp/$name.json" \
            >"$tmp/$name.$r.out" 2>"$tmp/$name.$r.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; rc=$?; [ $rc -ne 0 ] && all=$rc; done
    pids=()
    return $all
}

losses() { grep -o '"loss": [0-9.]*' "$1"; }

for sched in 1f1b-flush paci; do
    "$PPRUN" --schedule "$sched" "${run[@]}" --log "$tmp/one-$sched.jsonl" \
        --versions "$tmp/one-$sched.csv" >"$tmp/one.out" 2>"$tmp/one.err" \
        || bad "one-process $sched run: $(cat "$tmp/one.err")"
    if launch "tcp-$sched" "$sched" RANK=RANKVAR WORLD_SIZE=$P MASTER_ADDR=127.0.0.1 \
        MASTER_PORT="$(port)"; then ok; else bad "$sched over tcp: $(cat "$tmp"/tcp-$sched.*.err)"; fi
    # the same losses, update by update, bit for bit (the transport moves bytes)
    if [ -s "$tmp/tcp-$sched.jsonl" ] &&
        diff <(losses "$tmp/one-$sched.jsonl") <(losses "$tmp/tcp-$sched.jsonl") >/dev/null; then ok
    else bad "$sched: multi-process losses differ from the one-process run"; fi
    # the same final model: rank 0 gathers the stages and evaluates it
    vl() { grep -o '"final": true.*"val_loss": [0-9.]*' "$1" | grep -o '"val_loss": [0-9.]*'; }
    if [ -n "$(vl "$tmp/tcp-$sched.jsonl")" ] && [ "$(vl "$tmp/one-$sched.jsonl")" = "$(vl "$tmp/tcp-$sched.jsonl")" ]; then ok
    else bad "$sched: final validation loss $(vl "$tmp/tcp-$sched.jsonl"), one process: $(vl "$tmp/one-$sched.jsonl")"; fi
    # the same weight versions for every micro-batch and stage (the times differ)
    if [ -s "$tmp/tcp-$sched.csv" ] &&
        diff <(cut -d, -f1-5 "$tmp/one-$sched.csv") <(cut -d, -f1-5 "$tmp/tcp-$sched.csv") >/dev/null; then ok
    else bad "$sched: multi-process --versions differ from the one-process run"; fi
    # rank 0 gathered every stage into one trace and printed the summary
    for s in $(seq 0 $((P - 1))); do
        grep -q "\"stage $s\"" "$tmp/tcp-$sched.json" 2>/dev/null || bad "$sched: trace lacks stage $s"
    done
    grep -q '^PREDICTION schedule='"$sched" "$tmp/tcp-$sched.0.out" && ok || bad "$sched: rank 0 printed no prediction"
    [ ! -s "$tmp/tcp-$sched.1.out" ] && ok || bad "$sched: rank 1 printed a summary too"
done

# srun-style ranks and a rendezvous directory (as on a shared filesystem)
if launch file paci -u PPSCHED_JOB_SECRET SLURM_PROCID=RANKVAR SLURM_NTASKS=$P \
    PPSCHED_RENDEZVOUS="file:$tmp/rdzv"; then ok
else bad "paci over a file rendezvous: $(cat "$tmp"/file.*.err)"; fi
diff <(losses "$tmp/one-paci.jsonl") <(losses "$tmp/file.jsonl") >/dev/null && ok || bad "file rendezvous: losses differ"
[ ! -e "$tmp/rdzv" ] && ok || bad "the rendezvous directory was not cleaned up"

# mpirun (Open MPI) with a build that has MPI: the default rendezvous is mpi
if command -v mpirun >/dev/null && mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    if timeout 120 mpirun --allow-run-as-root --oversubscribe -np $P "$PPRUN" --schedule paci \
        "${run[@]}" --log "$tmp/mpi.jsonl" >"$tmp/mpi.out" 2>"$tmp/mpi.err"; then
        diff <(losses "$tmp/one-paci.jsonl") <(losses "$tmp/mpi.jsonl") >/dev/null && ok \
            || bad "mpirun: losses differ from the one-process run"
    elif grep -q "this build has no MPI\|give --rendezvous" "$tmp/mpi.err"; then
        echo "skipped: mpirun present but pprun was built without MPI"
    else
        bad "mpirun -np $P: $(tail -3 "$tmp/mpi.err")"
    fi
else
    echo "skipped: no Open MPI mpirun (install openmpi-bin libopenmpi-dev and rebuild to test it)"
fi

# a rank that never comes: everyone stops within the timeout, rank 0 names it
p=$(port)
start=$(date +%s)
pids=()
for r in 0 1 2; do
    RANK=$r WORLD_SIZE=$P timeout 60 "$PPRUN" --schedule paci "${run[@]}" --timeout 3 \
        --rendezvous "tcp://127.0.0.1:$p" >/dev/null 2>"$tmp/missing.$r.err" &
    pids+=($!)
done
codes=()
for q in "${pids[@]}"; do { wait "$q"; } 2>/dev/null; codes+=($?); done
pids=()
elapsed=$(( $(date +%s) - start ))
[ "${codes[*]}" = "1 1 1" ] && ok || bad "missing rank: exit codes ${codes[*]}, expected 1 1 1"
[ $elapsed -lt 30 ] && ok || bad "missing rank: took $elapsed s"
grep -q "rank 3 did not" "$tmp/missing.0.err" && ok || bad "missing rank: rank 0 said: $(cat "$tmp/missing.0.err")"

# a rank that dies mid-run: its neighbours name it and everyone exits
p=$(port)
long=(--schedule paci --stages $P --accum 4 --steps 100000 "${small[@]}" --data "$DATA" --timeout 20)
pids=()
for r in 0 1 2 3; do
    RANK=$r WORLD_SIZE=$P MASTER_ADDR=127.0.0.1 MASTER_PORT=$p timeout 90 "$PPRUN" "${long[@]}" \
        --log "$tmp/dead.jsonl" >/dev/null 2>"$tmp/dead.$r.err" &
    pids+=($!)
done
# kill once training runs: the last stage's log (its temporary file) has lines
for _ in $(seq 600); do
    [ -n "$(find "$tmp" -name 'dead.jsonl.tmp.*' -size +0 2>/dev/null)" ] && break
    sleep 0.1
done
pkill -9 -P "${pids[2]}" # rank 2's pprun, not its timeout wrapper
start=$(date +%s)
codes=()
for q in "${pids[@]}"; do { wait "$q"; } 2>/dev/null; codes+=($?); done
pids=()
elapsed=$(( $(date +%s) - start ))
[ "${codes[0]}" = 1 ] && [ "${codes[1]}" = 1 ] && [ "${codes[3]}" = 1 ] && ok \
    || bad "dead rank: exit codes ${codes[*]}, expected 1 1 (killed) 1"
[ $elapsed -lt 25 ] && ok || bad "dead rank: the others took $elapsed s to stop"
grep -q "stage 2" "$tmp/dead.1.err" && grep -q "stage 2" "$tmp/dead.3.err" && ok \
    || bad "dead rank: neighbours did not name stage 2: $(cat "$tmp/dead.1.err" "$tmp/dead.3.err")"
for r in 0 1 3; do
    [ -n "${PPSCHED_TEST_VERBOSE:-}" ] && echo "rank $r: $(cat "$tmp/dead.$r.err")"
    [ "$(grep -c . "$tmp/dead.$r.err")" -le 2 ] || bad "dead rank: rank $r printed too much: $(cat "$tmp/dead.$r.err")"
done

# bad input: one line, exit 2
expect2() {
    local frag=$1; shift
    env "$@" >/dev/null 2>"$tmp/err"; local rc=$?
    [ $rc -eq 2 ] && grep -q "^pprun: error: .*$frag" "$tmp/err" && [ "$(grep -c . "$tmp/err")" -le 2 ] && ok \
        || bad "expected exit 2 and \"$frag\": rc $rc: $(cat "$tmp/err")"
}
expect2 "3 processes (from RANK/WORLD_SIZE) for 4 stages" RANK=0 WORLD_SIZE=3 "$PPRUN" --schedule paci "${run[@]}"
expect2 "give --rendezvous" RANK=1 WORLD_SIZE=4 "$PPRUN" --schedule paci "${run[@]}"
expect2 "--transport nccl" RANK=1 WORLD_SIZE=4 "$PPRUN" --schedule paci "${run[@]}" --transport nccl --rendezvous tcp://127.0.0.1:1
expect2 "--transport: expected tcp or nccl" RANK=1 WORLD_SIZE=4 "$PPRUN" --schedule paci "${run[@]}" --transport udp --rendezvous tcp://127.0.0.1:1
expect2 "not available in multi-process" RANK=1 WORLD_SIZE=4 "$PPRUN" --schedule paci "${run[@]}" --checkpoint "$tmp/ck" --stop-after 2 --rendezvous tcp://127.0.0.1:1
expect2 "--eval-every: multi-process runs" RANK=1 WORLD_SIZE=4 "$PPRUN" --schedule paci "${run[@]}" --eval-every 2 --rendezvous tcp://127.0.0.1:1
expect2 "WORLD_SIZE=4" RANK=7 WORLD_SIZE=4 "$PPRUN" --schedule paci "${run[@]}"
expect2 "--devices: only with --backend cuda" "$PPRUN" --schedule paci "${run[@]}" --devices 0
expect2 "--sm-partitions: expected on or off" "$PPRUN" --schedule paci "${run[@]}" --sm-partitions maybe

# --- strangers at rank 0's port while the ranks gather (a port scanner, a
# silent connection, junk, a huge length prefix, a wrong secret): each is
# dropped and the honest ranks train exactly the one-process losses
p=$(port)
pids=()
RANK=0 WORLD_SIZE=$P MASTER_ADDR=127.0.0.1 MASTER_PORT=$p timeout 120 "$PPRUN" --schedule paci \
    "${run[@]}" --log "$tmp/poked.jsonl" >/dev/null 2>"$tmp/poked.0.err" &
pids+=($!)
poke() { # poke BYTES HOLD_S: connect, write, wait, close (bash's /dev/tcp)
    for _ in $(seq 50); do
        if { exec 7<>"/dev/tcp/127.0.0.1/$p"; } 2>/dev/null; then
            printf "$1" >&7 2>/dev/null; sleep "$2"; exec 7>&-; return 0
        fi
        sleep 0.1
    done
    return 1
}
poke "" 0 && poke "" 20 & silent=$! # still silent when the ranks are in
poke "GET / HTTP/1.0\r\n\r\n$(printf '%0200d' 0)" 0.2
poke '\xff\xff\xff\xff\xff\xff\xff\x7f' 0.5
PPSCHED_JOB_SECRET=not-this-jobs-secret-0123456789 RANK=1 WORLD_SIZE=$P MASTER_ADDR=127.0.0.1 \
    MASTER_PORT=$p timeout 60 "$PPRUN" --schedule paci "${run[@]}" >/dev/null 2>"$tmp/wrong.err"
wrong_rc=$?
for r in 1 2 3; do
    RANK=$r WORLD_SIZE=$P MASTER_ADDR=127.0.0.1 MASTER_PORT=$p timeout 120 "$PPRUN" --schedule paci \
        "${run[@]}" --log "$tmp/poked.jsonl" >/dev/null 2>"$tmp/poked.$r.err" &
    pids+=($!)
done
codes=()
for q in "${pids[@]}"; do wait "$q"; codes+=($?); done
pkill -P $silent 2>/dev/null; kill $silent 2>/dev/null; wait $silent 2>/dev/null
pids=()
[ "${codes[*]}" = "0 0 0 0" ] && ok || bad "ranks with strangers around: exit ${codes[*]}: $(cat "$tmp"/poked.*.err)"
diff <(losses "$tmp/one-paci.jsonl") <(losses "$tmp/poked.jsonl") >/dev/null && ok \
    || bad "ranks with strangers around trained other losses"
grep -q "^pprun: note: rendezvous: 4 connections dropped (the last: a wrong job secret)" \
    "$tmp/poked.0.err" && ok || bad "rank 0 did not say what it dropped: $(cat "$tmp/poked.0.err")"
[ $wrong_rc = 2 ] && grep -q "^pprun: error: .*the job secrets differ" "$tmp/wrong.err" && ok \
    || bad "a rank with the wrong secret: exit $wrong_rc: $(cat "$tmp/wrong.err")"

# --- --bind names an address of this machine, checked before any work
expect2 "--bind 198.51.100.7: cannot listen on 198.51.100.7" RANK=1 WORLD_SIZE=4 "$PPRUN" \
    --schedule paci "${run[@]}" --rendezvous tcp://127.0.0.1:1 --bind 198.51.100.7

# --- a tcp:// rendezvous without a secret is refused before any work
expect2 "needs a job secret" -u PPSCHED_JOB_SECRET RANK=1 WORLD_SIZE=4 "$PPRUN" --schedule paci \
    "${run[@]}" --rendezvous tcp://127.0.0.1:1

# --- two honest ranks launched differently: the handshake compares what
# they must agree on, and both stop at once with exit 2 naming it (they
# trained on heap garbage and exited 0 before)
# disagree NAME FRAGMENT ARGS0 -- ARGS1
disagree() {
    local name=$1 frag=$2; shift 2
    local a0=() a1=() side=0 arg mp r rcs=()
    for arg in "$@"; do
        if [ "$arg" = -- ]; then side=1; elif [ $side = 0 ]; then a0+=("$arg"); else a1+=("$arg"); fi
    done
    mp=$(port)
    pids=()
    local start=$(date +%s)
    for r in 0 1; do
        if [ $r = 0 ]; then set -- "${a0[@]}"; else set -- "${a1[@]}"; fi
        env RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$mp timeout 120 "$PPRUN" \
            --stages 2 --steps 4 --model tiny --layers 2 --dim 32 --heads 2 --seq-len 16 \
            --data "$DATA" --timeout 30 "$@" >"$tmp/$name.$r.out" 2>"$tmp/$name.$r.err" &
        pids+=($!)
    done
    for q in "${pids[@]}"; do wait "$q"; rcs+=($?); done
    pids=()
    local elapsed=$(( $(date +%s) - start ))
    if [ "${rcs[*]}" = "2 2" ] && [ $elapsed -lt 20 ] &&
        grep -q "^pprun: error: .*the ranks disagree: rank 1 has $frag" "$tmp/$name.0.err" &&
        grep -q "^pprun: error: .*the ranks disagree: rank 1 has $frag" "$tmp/$name.1.err"; then ok
    else bad "$name: exit ${rcs[*]} after $elapsed s: $(cat "$tmp/$name".*.err)"; fi
}
disagree mbs "micro-batch size 4, rank 0 has 2" --schedule paci --accum 2 --micro-batch-size 2 \
    -- --schedule paci --accum 2 --micro-batch-size 4
disagree sched "schedule paci, rank 0 has gpipe" --schedule gpipe --microbatches 2 \
    -- --schedule paci --accum 2
disagree seed "seed 8, rank 0 has 7" --schedule paci --accum 2 --seed 7 \
    -- --schedule paci --accum 2 --seed 8

echo "pprun_dist: $passes passed, $fails failed"
[ $fails -eq 0 ]
