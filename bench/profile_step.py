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
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            step(reals, idx)
            torch.cuda.synchronize()
        print(f"=== {name} step ({args.presets}, {step.precision}) ===")
        events = [e for e in prof.key_averages(group_by_input_shape=True) if e.device_time_total > 0]
        events.sort(key=lambda e: e.self_device_time_total, reverse=True)
        total = sum(e.self_device_time_total for e in events)
        print(f"total self CUDA time {total / 1e3:.2f} ms")
        for e in events[:args.rows]:
            print(f"{e.self_device_time_total / 1e3:8.3f} ms {e.count:5d}x  {e.key[:60]:60s} {str(e.input_shapes)[:90]}")
        if args.out:
            prof.export_chrome_trace(str(Path(args.out) / f"trace_{name}.json"))


if __name__ == "__main__":
    main()
