"""Profile eager training steps (one plain step and one lazy-R1 step) and print the most expensive CUDA kernels.

    python bench/profile_step.py [--presets carla,t4] [--precision auto] [--out DIR]
Writes a Chrome trace (trace_*.json) to --out when given. CUDA only; never run in CI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_speed import RandomImages, make_cfg, make_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="carla,t4")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    device = torch.device("cuda")
    cfg = make_cfg(args.presets, args.precision)
    _, step = make_step(cfg, device)
    reals = RandomImages(cfg.batch, 128).images.to(device)
    for i in range(20):
        step(reals, i)
    torch.cuda.synchronize()
    for name, idx in (("plain", 1), ("r1", 16)):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step(reals, idx)
            torch.cuda.synchronize()
        print(f"=== {name} step ({args.presets}, {step.precision}) ===")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
        if args.out:
            prof.export_chrome_trace(str(Path(args.out) / f"trace_{name}.json"))


if __name__ == "__main__":
    main()
