#!/usr/bin/env bash
# ppsim against the schedules PyTorch 2.15 itself wrote (_dump_csv, both
# formats, seven classes: tests/fixtures/pytorch/, manifest.json says what
# each file is and what PyTorch computed for it). Every file whose ranks
# hold one stage each loads and simulates, with F = 1, B = 2 (I = W = 1)
# and free communication, to the makespan PyTorch's schedule visualiser
# computes for the same costs; PyTorch's own Schedule1F1B files (its last
# rank runs B0 before any F0) are refused naming that rank, the action and
# the micro-batch; files with several stages per rank are refused in one
# line until ppsched models such ranks. ppsim's own exports (gpipe,
# 1f1b-flush, one step) read back to the same makespan; asynchronous
# schedules are refused. PyTorch's ZB-H1 files meet the closed form
# m (F + I + W) + (R - 1) (F + I - W) for unequal splits (--split-backward).
#
# usage: pytorch_csv_test.sh PPSIM FIXTURE_DIR
set -u
ppsim=$1
dir=$2
python3 - "$ppsim" "$dir" <<'PY'
import json, os, subprocess, sys

ppsim, d = sys.argv[1], sys.argv[2]
manifest = json.load(open(os.path.join(d, "manifest.json")))
fails = checked = 0


def bad(msg):
    global fails
    fails += 1
    print("FAIL:", msg)


for f in manifest["files"]:
    path = os.path.join(d, f["file"])
    r = subprocess.run([ppsim, "run", "--pytorch-csv", path, "--fwd", "1", "--bwd", "2",
                        "--format", "json"], capture_output=True, text=True)
    err = r.stderr.strip()
    checked += 1
    if f["class"] == "Schedule1F1B":
        if r.returncode != 2 or err.count("\n") or not (f"rank {f['ranks'] - 1}, action 2 \"B0\": micro-batch 0" in err):
            bad(f"{f['file']}: PyTorch's invalid 1F1B order: exit {r.returncode}, {err!r}")
    elif f["stages_per_rank"] > 1:
        if r.returncode != 2 or err.count("\n") or "several stages" not in err:
            bad(f"{f['file']}: several stages per rank: exit {r.returncode}, {err!r}")
    else:
        want = f["pytorch_visualizer"]["makespan"]
        if r.returncode != 0:
            bad(f"{f['file']}: exit {r.returncode}: {err}")
            continue
        got = json.loads(r.stdout)["makespan"]
        if want is None or abs(got - want) > 1e-9:
            bad(f"{f['file']}: makespan {got}, PyTorch's visualiser {want}")
# PyTorch's ZB-H1 (ScheduleInterleavedZeroBubble, one stage per rank) with
# an unequal split of B: the closed form m (F + I + W) + (R - 1) (F + I - W).
for f in manifest["files"]:
    if f["class"] != "ScheduleInterleavedZeroBubble" or f["stages_per_rank"] != 1:
        continue
    for x in (0.5, 0.6, 0.75):
        F, I, W = 1.0, 2.0 * x, 2.0 * (1 - x)
        want = f["microbatches"] * (F + I + W) + (f["ranks"] - 1) * (F + I - W)
        r = subprocess.run([ppsim, "run", "--pytorch-csv", os.path.join(d, f["file"]), "--fwd",
                            "1", "--bwd", "2", "--split-backward", str(x), "--format", "json"],
                           capture_output=True, text=True)
        checked += 1
        got = json.loads(r.stdout)["makespan"] if r.returncode == 0 else r.stderr
        if not isinstance(got, float) and not isinstance(got, int) or abs(got - want) > 1e-9:
            bad(f"{f['file']} --split-backward {x}: makespan {got}, ZB-H1's closed form {want}")
r = subprocess.run([ppsim, "run", "--schedule", "gpipe", "--split-backward", "1.5"],
                   capture_output=True, text=True)
checked += 1
if r.returncode != 2 or "--split-backward: 1.5 for stage 0" not in r.stderr:
    bad(f"--split-backward 1.5: exit {r.returncode}, {r.stderr.strip()!r}")

# Export: what ppsim writes for PyTorch reads back as the same schedule
# (PyTorch's own _load_csv accepting it is check_export.py's, with torch).
import tempfile
with tempfile.TemporaryDirectory() as tmp:
    for sched in ("gpipe", "1f1b-flush"):
        for P, m in ((2, 4), (4, 8)):
            gen = ["--schedule", sched, "--stages", str(P), "--microbatches", str(m), "--steps", "1"]
            out = os.path.join(tmp, "x.csv")
            r = subprocess.run([ppsim, "export", *gen, "--format", "pytorch-csv", "-o", out],
                               capture_output=True, text=True)
            if r.returncode != 0:
                bad(f"export {sched} P={P} m={m}: {r.stderr.strip()}")
                continue
            spans = []
            for src in (gen, ["--pytorch-csv", out]):
                r = subprocess.run([ppsim, "run", *src, "--format", "json"], capture_output=True,
                                   text=True)
                spans.append(json.loads(r.stdout)["makespan"] if r.returncode == 0 else r.stderr)
            checked += 1
            if spans[0] != spans[1]:
                bad(f"export {sched} P={P} m={m}: makespan {spans[0]}, exported and read back {spans[1]}")
    for sched, why in (("paci", "one optimizer step"), ("pipedream", "no weight versions")):
        r = subprocess.run([ppsim, "export", "--schedule", sched, "--stages", "4", "--format",
                            "pytorch-csv", "-o", os.path.join(tmp, "y.csv")],
                           capture_output=True, text=True)
        checked += 1
        if r.returncode != 2 or why not in r.stderr or os.path.exists(os.path.join(tmp, "y.csv")):
            bad(f"export {sched}: exit {r.returncode}, {r.stderr.strip()!r}")
print(f"{checked} files of PyTorch {manifest['torch_version']} and exports, {fails} failed")
sys.exit(1 if fails or checked < 60 else 0)
PY
