"""Which launches of the fused Triton NeRF MLP (torch_utils/ops/fused_mlp.py) run correctly on this GPU.

    python bench/fused_mlp_faults.py                   # every launch below, each in its own child process
    python bench/fused_mlp_faults.py --sanitize        # the same under compute-sanitizer memcheck (first report kept)
    python bench/fused_mlp_faults.py --only 64,4,1,2   # one launch: BLOCK_N, num_warps, pipeline (0/1), num_stages

On H200 GPUs the launch that was once the default (BLOCK_N 64, 4 warps, pipelined, 2 stages) faulted with an
out-of-bounds shared-memory read in a hidden layer's `tl.dot` (docs/PERFORMANCE.md); this script's table of launches
made 64 points on 8 warps the default. A fault leaves a process's CUDA
context unusable, so every launch runs in a fresh child on small shapes (2 objects, 77 and 1,000 points; 4 layers;
8 layers with the skip; fp16 and bf16) against `reference_evaluate` with the same rounding. Each row prints ok (with
the worst relative L2 error), mismatch, or the child's last error line. The last line names the launches that passed
and is also written as JSON with --out. Never part of the test suite; under TRITON_INTERPRET=1 it runs on the CPU
(slowly; the interpreter cannot fault like a GPU, so a CPU run only checks the script; pass --dtypes float16
there: triton 3.6's interpreter gets bf16 dots wrong, rel L2 ~1e11 for every launch).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "FAULTS_ROW"

# BLOCK_N, num_warps, pipeline, num_stages: the former default first, one change at a time, then the plainest launch.
LAUNCHES = [(64, 4, True, 2), (64, 4, True, 1), (64, 4, False, 1), (64, 8, True, 2), (32, 4, True, 2),
            (128, 8, True, 2), (128, 4, False, 1), (32, 4, False, 1), (16, 4, False, 1)]

CHILD = """
import sys, torch
from torch_utils.ops import fused_mlp as fm
block_n, warps, pipe, stages = (int(v) for v in sys.argv[1:5])
dtypes = [getattr(torch, d) for d in sys.argv[5].split(",")]
dev = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
gen = torch.Generator().manual_seed(0)
worst = 0.0
for dt in dtypes:
    for layers, skip_after in ((4, 4), (8, 4)):
        cfg = dict(num_layers=layers, multires=10, skip_after=skip_after, uses_skip=layers > skip_after + 1)
        w = fm.random_weights(2, num_layers=layers, skip_after=skip_after, device=dev, generator=gen)
        for n in (77, 1000):
            pts = (torch.rand([2, n, 3], generator=gen) * 2 - 1).to(dev)
            with torch.no_grad():
                got = fm.fused_evaluate(w, pts, dtype=dt, block_n=block_n, num_warps=warps, pipeline=bool(pipe),
                                        num_stages=stages, **cfg)
                want = fm.reference_evaluate(w, pts, dtype=dt, **cfg)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            worst = max(worst, ((got - want).norm() / want.norm().clamp_min(1e-12)).item())
print("%s %s %.3g" % (sys.argv[6], "ok" if worst < 5e-3 else "mismatch", worst), flush=True)
"""


def run_launch(launch: tuple[int, int, bool, int], dtypes: str, sanitize: bool, timeout: float) -> dict:
    """One launch in a child process (under compute-sanitizer with `sanitize`): its row of the table."""
    block_n, warps, pipe, stages = launch
    argv = [sys.executable, "-c", CHILD, str(block_n), str(warps), str(int(pipe)), str(stages), dtypes, MARK]
    if sanitize:
        argv = ["compute-sanitizer", "--tool", "memcheck", "--print-limit", "1", *argv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    row = dict(block_n=block_n, num_warps=warps, pipeline=pipe, num_stages=stages)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return row | dict(result="timeout", detail=f"over {timeout:g} s")
    out = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode == 0 and out:
        return row | dict(result=out[-1][1], detail=f"rel L2 {out[-1][2]}")
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    report = [ln for ln in lines if "Invalid" in ln or "out of bounds" in ln or " at " in ln and "fused" in ln]
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln]   # torch's last line is a generic hint
    return row | dict(result=f"failed ({proc.returncode})",
                      detail=" | ".join(report[:3]) or (errors[-1:] or lines[-1:] or [""])[0])


def parse_launch(spec: str) -> tuple[int, int, bool, int]:
    try:
        parts = [int(v) for v in spec.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4:
        raise SystemExit(f"a launch is BLOCK_N,num_warps,pipeline,num_stages (e.g. 64,8,1,2), got {spec!r}")
    return parts[0], parts[1], bool(parts[2]), parts[3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sanitize", action="store_true", help="run each child under compute-sanitizer memcheck")
    ap.add_argument("--only", default=None, help="one launch: BLOCK_N,num_warps,pipeline,num_stages")
    ap.add_argument("--dtypes", default="float16,bfloat16", help="comma list of kernel dtypes")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per child (compilation included)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    if args.sanitize and shutil.which("compute-sanitizer") is None:
        raise SystemExit("--sanitize needs compute-sanitizer on PATH (CUDA toolkit)")
    launches = [parse_launch(args.only)] if args.only else LAUNCHES
    rows = []
    print(f"{'BLOCK_N':>7} {'warps':>5} {'pipe':>4} {'stages':>6}  result", flush=True)
    for launch in launches:
        row = run_launch(launch, args.dtypes, args.sanitize, args.timeout)
        rows.append(row)
        print(f"{row['block_n']:>7} {row['num_warps']:>5} {int(row['pipeline']):>4} {row['num_stages']:>6}  "
              f"{row['result']}: {row['detail'][:300]}", flush=True)
    passed = [f"{r['block_n']},{r['num_warps']},{int(r['pipeline'])},{r['num_stages']}" for r in rows
              if r["result"] == "ok"]
    print(f"passed: {' '.join(passed) or 'none'}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
