#!/usr/bin/env bash
# ppsim against the schedules PyTorch 2.15 itself wrote (_dump_csv, both
# formats, seven classes: tests/fixtures/pytorch/, manifest.json says what
# each file is and what PyTorch computed for it). Every file loads with the
# placement its class uses (one stage per rank; looped for Interleaved1F1B,
# LoopedBFS, InterleavedZeroBubble; V-shape for ZBVZeroBubble, DualPipeV),
# and simulates, with F = 1, B = 2 (I = W = 1), an overlapped F and B 3
# (the default --overlap-efficiency 0) and free communication, to the
# makespan PyTorch's schedule visualiser computes for the same costs; a
# compute_comms file is the same schedule as its compute_only twin, and
# ppsim writes back the file's compute cells in order. PyTorch's own
# Schedule1F1B files (its last rank runs B0 before any F0) are refused
# naming that rank, the action and the micro-batch. Bad files (a stage on
# two ranks, an overlapped cell of two forwards or two backwards, a W
# before its I, a backward before its forward, missing stages, a mapping
# that is no placement) are refused in one line. ppsim's own exports
# (gpipe, 1f1b-flush and the multi-stage generators `ppsim list` shows, one
# step) read back to the same schedule and makespan; asynchronous schedules
# are refused. PyTorch's ZB-H1 files meet the closed form
# m (F + I + W) + (R - 1) (F + I - W) for unequal splits (--split-backward).
#
# usage: pytorch_csv_test.sh PPSIM FIXTURE_DIR
set -u
ppsim=$1
dir=$2
python3 - "$ppsim" "$dir" <<'PY'
import json, os, re, subprocess, sys, tempfile

ppsim, d = sys.argv[1], sys.argv[2]
manifest = json.load(open(os.path.join(d, "manifest.json")))
fails = checked = 0
tmp = tempfile.mkdtemp()


def bad(msg):
    global fails
    fails += 1
    print("FAIL:", msg)


def sim(*args):
    return subprocess.run([ppsim, *args], capture_output=True, text=True)


def one_error_line(r, want):
    """Whether r is exit 2 with one stderr line that contains want."""
    err = r.stderr.strip()
    return r.returncode == 2 and "\n" not in err and want in err


def ir_json(src):
    """The IR JSON ppsim writes for a schedule source (argument list)."""
    out = os.path.join(tmp, "ir.json")
    r = sim("export", *src, "-o", out)
    if r.returncode != 0:
        return r.stderr.strip()
    ir = json.load(open(out))
    os.remove(out)
    ir.setdefault("ranks", ir["stages"])  # written only with several stages per rank
    ir.setdefault("placement", "one")
    return ir


def makespan(src, *cost):
    r = sim("run", *src, "--fwd", "1", "--bwd", "2", *cost, "--format", "json")
    return json.loads(r.stdout)["makespan"] if r.returncode == 0 else r.stderr.strip()


COMPUTE = re.compile(r"^(\d+[FBIW]\d+|\(\d+[FBIW]\d+;\d+[FBIW]\d+\)OVERLAP_F_B)$")


def compute_cells(path):
    """Per row, the compute cells of a PyTorch CSV in order."""
    with open(path, newline="") as f:
        return [[c for c in line.rstrip("\r\n").split(",") if COMPUTE.match(c)]
                for line in f if line.strip()]


PLACEMENT = {"ScheduleZBVZeroBubble": "v", "ScheduleDualPipeV": "v"}

# --- every file PyTorch wrote ---------------------------------------------
for f in manifest["files"]:
    path = os.path.join(d, f["file"])
    src = ["--pytorch-csv", path]
    R, v = f["ranks"], f["stages_per_rank"]
    checked += 1
    if f["class"] == "Schedule1F1B":
        for cmd in ("validate", "run"):
            r = sim(cmd, *src)
            want = f"rank {R - 1}, action 2 \"B0\": micro-batch 0 has no forward"
            if not one_error_line(r, want):
                bad(f"{f['file']}: PyTorch's invalid 1F1B order, {cmd}: exit {r.returncode}, "
                    f"{r.stderr.strip()!r}")
        continue
    r = sim("validate", *src)
    if r.returncode != 0 or f"{R * v} stages" not in r.stdout:
        bad(f"{f['file']}: validate: exit {r.returncode}, {(r.stdout + r.stderr).strip()!r}")
        continue
    ir = ir_json(src)
    want = "one" if v == 1 else PLACEMENT.get(f["class"], "looped")
    if not isinstance(ir, dict) or (ir["ranks"], ir["stages"], ir["placement"]) != (R, R * v, want):
        got = ir if not isinstance(ir, dict) else (ir["ranks"], ir["stages"], ir["placement"])
        bad(f"{f['file']}: (ranks, stages, placement) {got}, want {(R, R * v, want)}")
    # the compute_comms file is its compute_only twin with communication
    if f["format"] == "compute_comms":
        twin = ir_json(["--pytorch-csv", path.replace("compute_comms", "compute_only")])
        if twin != ir:
            bad(f"{f['file']}: not the same schedule as its compute_only twin")
    # what ppsim writes for PyTorch: the file's compute cells, in order
    out = os.path.join(tmp, "back.csv")
    r = sim("export", *src, "--format", "pytorch-csv", "-o", out)
    if r.returncode != 0 or compute_cells(out) != compute_cells(path):
        bad(f"{f['file']}: written back as PyTorch CSV: exit {r.returncode}, {r.stderr.strip()!r}"
            f"{'' if r.returncode else ', other cells'}")
    # the makespan PyTorch's visualiser computes (F=1, I=W=1, B=2, F+B overlapped 3)
    want = f["pytorch_visualizer"]["makespan"]
    got = makespan(src)
    if want is None or not isinstance(got, (int, float)) or abs(got - want) > 1e-9:
        bad(f"{f['file']}: makespan {got}, PyTorch's visualiser {want}")

# PyTorch's ZB-H1 (ScheduleInterleavedZeroBubble, one stage per rank) with
# an unequal split of B: the closed form m (F + I + W) + (R - 1) (F + I - W).
for f in manifest["files"]:
    if f["class"] != "ScheduleInterleavedZeroBubble" or f["stages_per_rank"] != 1:
        continue
    for x in (0.5, 0.6, 0.75):
        F, I, W = 1.0, 2.0 * x, 2.0 * (1 - x)
        want = f["microbatches"] * (F + I + W) + (f["ranks"] - 1) * (F + I - W)
        got = makespan(["--pytorch-csv", os.path.join(d, f["file"])], "--split-backward", str(x))
        checked += 1
        if not isinstance(got, (int, float)) or abs(got - want) > 1e-9:
            bad(f"{f['file']} --split-backward {x}: makespan {got}, ZB-H1's closed form {want}")
r = sim("run", "--schedule", "gpipe", "--split-backward", "1.5")
checked += 1
if r.returncode != 2 or "--split-backward: 1.5 for stage 0" not in r.stderr:
    bad(f"--split-backward 1.5: exit {r.returncode}, {r.stderr.strip()!r}")

# --- bad files: exit 2, one line saying where and why ---------------------
BAD = [
    ("0F0,0B0\n1F0,3F0,3B0,1B0\n2F0,3F0,3B0,2B0\n",
     'row 3 (rank 2), column 2: cell "3F0": stage 3 appears on rank 1 and rank 2'),
    ("0F0,(0F1;1F0)OVERLAP_F_B\n",
     'cell "(0F1;1F0)OVERLAP_F_B": an overlapped cell is one forward and one backward (B or I), '
     "not two forwards"),
    ("0F0,(0B0;1I0)OVERLAP_F_B\n", "not two backwards"),
    ("0F0,1F0,1I0,0W0,0I0,1W0\n",
     'rank 0, action 4 "0W0": micro-batch 0 has no input gradient (I) before it'),
    ("0F0,2B0,2F0,0B0\n1F0,3F0,3B0,1B0\n",
     'rank 0, action 2 "2B0": micro-batch 0 has no forward before it'),
    ("0F0,0B0\n3F0,3B0\n",
     'row 2 (rank 1), column 1: cell "3F0": stage 3, but no cell names stage 1'),
    ("0F0,0B0,65534F0\n", 'cell "65534F0": stage 65534, but no cell names stage 1'),
    ("0F0,1F0,1B0,0B0\n2F0,3F0,3B0,2B0\n",
     "stage 1 is on rank 0, which fits neither looped placement (rank 1) nor V-shape (rank 1)"),
]
for i, (text, want) in enumerate(BAD):
    path = os.path.join(tmp, f"bad{i}.csv")
    with open(path, "w") as fh:
        fh.write(text)
    for cmd in ("validate", "run"):
        r = sim(cmd, "--pytorch-csv", path)
        checked += 1
        if not one_error_line(r, want):
            bad(f"{cmd} {text!r}: exit {r.returncode}, {r.stderr.strip()!r}, want {want!r}")

# --- export: what ppsim writes for PyTorch reads back as the same schedule
# (PyTorch's own _load_csv accepting it is check_export.py's, with torch).
listed = sim("list").stdout.split()
cases = [(s, P, m) for s in ("gpipe", "1f1b-flush") for P, m in ((2, 4), (4, 8))]
cases += [(s, R, m) for s in ("interleaved-1f1b", "looped-bfs", "zb-h1", "zbv", "dualpipev")
          if s in listed for R, m in ((2, 4), (4, 8))]
for sched, P, m in cases:
    gen = ["--schedule", sched, "--stages", str(P), "--microbatches", str(m), "--steps", "1"]
    out, again = os.path.join(tmp, "x.csv"), os.path.join(tmp, "y.csv")
    checked += 1
    r = sim("export", *gen, "--format", "pytorch-csv", "-o", out)
    if r.returncode != 0:
        bad(f"export {sched} P={P} m={m}: {r.stderr.strip()}")
        continue
    spans = [makespan(gen), makespan(["--pytorch-csv", out])]
    if spans[0] != spans[1]:
        bad(f"export {sched} P={P} m={m}: makespan {spans[0]}, exported and read back {spans[1]}")
    a, b = ir_json(gen), ir_json(["--pytorch-csv", out])
    if not isinstance(a, dict) or not isinstance(b, dict):
        bad(f"export {sched} P={P} m={m}: {a if isinstance(b, dict) else b}")
        continue
    compute = lambda ir: [[x for x in row if not x.endswith("OPT")] for row in ir["actions"]]
    for key in ("ranks", "stages", "placement"):
        if a[key] != b[key]:
            bad(f"export {sched} P={P} m={m}: {key} {a[key]}, read back {b[key]}")
    if compute(a) != compute(b):
        bad(f"export {sched} P={P} m={m}: the actions read back differ")
    r = sim("export", "--pytorch-csv", out, "--format", "pytorch-csv", "-o", again)
    if r.returncode != 0 or open(out, "rb").read() != open(again, "rb").read():
        bad(f"export {sched} P={P} m={m}: read back and written again, the file differs")
for sched, why in (("paci", "one optimizer step"), ("pipedream", "no weight versions")):
    r = sim("export", "--schedule", sched, "--stages", "4", "--format", "pytorch-csv", "-o",
            os.path.join(tmp, "z.csv"))
    checked += 1
    if r.returncode != 2 or why not in r.stderr or os.path.exists(os.path.join(tmp, "z.csv")):
        bad(f"export {sched}: exit {r.returncode}, {r.stderr.strip()!r}")
for name in os.listdir(tmp):
    os.remove(os.path.join(tmp, name))
os.rmdir(tmp)
print(f"{checked} files of PyTorch {manifest['torch_version']}, bad files and exports, "
      f"{fails} failed")
sys.exit(1 if fails or checked < 80 else 0)
PY
