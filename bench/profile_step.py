"""Where the GPU time of a training step goes: kernels per CUDA-graph replay, per phase, and the top kernels.

    python bench/profile_step.py [--presets carla,t4] [--precision auto] [--eager] [--out DIR] [--json FILE]

Default mode profiles what train.py runs on a GPU (the compiled step captured as CUDA graphs): for the plain phase
pattern and the lazy-R1 one it replays the captured graph and reports ms per replay (CUDA events), kernels per replay,
the sum of their durations and the busy span (first kernel start to last kernel end). A span much longer than the
kernel sum means the GPU idles between kernels (launch latency of many small kernels inside the graph); a kernel
sum close to the span means the kernels themselves are the cost. The same numbers are given for each phase captured
on its own (Gmain, Dmain, Dreg, EMA + counters). --eager profiles eager steps instead (host-bound; for kernel names).
Writes a Chrome trace (trace_*.json) to --out when given. CUDA only; never run in CI.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_speed import RandomImages, cuda_time, make_cfg, make_step, parse_choices, phase_graphs  # noqa: E402
from training.fast_step import DeviceImageCache, GraphedTrainStep  # noqa: E402


def kernel_stats(prof, reps: int, rows: int) -> dict:
    """Kernel count, duration sum and busy span per repetition, and the `rows` most expensive kernels."""
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA and e.time_range.elapsed_us() >= 0
               and not e.name.startswith(("Memcpy", "Memset"))]
    if not kernels:
        return {"kernels_per_rep": 0}
    by_name: dict = defaultdict(lambda: [0, 0.0])
    for e in kernels:
        by_name[e.name][0] += 1
        by_name[e.name][1] += e.time_range.elapsed_us()
    start = min(e.time_range.start for e in kernels)
    end = max(e.time_range.end for e in kernels)
    total = sum(v[1] for v in by_name.values())
    top = sorted(by_name.items(), key=lambda kv: kv[1][1], reverse=True)[:rows]
    return {"kernels_per_rep": len(kernels) / reps, "kernel_ms_per_rep": total / 1e3 / reps,
            "span_ms_per_rep": (end - start) / 1e3 / reps,
            "top": [{"ms_per_rep": t / 1e3 / reps, "count_per_rep": c / reps, "name": n[:110]}
                    for n, (c, t) in top]}


def profiled(fn, reps: int, rows: int, trace: Path | None) -> dict:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    return kernel_stats(prof, reps, rows)


def show(name: str, ms: float, stats: dict, rows: int) -> None:
    print(f"=== {name}: {ms:.3f} ms per replay (CUDA events); {stats.get('kernels_per_rep', 0):.0f} kernels, "
          f"kernel sum {stats.get('kernel_ms_per_rep', 0):.3f} ms, busy span {stats.get('span_ms_per_rep', 0):.3f} ms")
    for t in stats.get("top", [])[:rows]:
        print(f"  {t['ms_per_rep']:8.4f} ms {t['count_per_rep']:6.1f}x  {t['name']}")


def graphed(args, out: Path | None) -> dict:
    device = torch.device("cuda")
    cfg = make_cfg(args.presets, args.precision, extra=tuple(args.set))
    _, step = make_step(cfg, device, choices=parse_choices(args.choices) if args.choices else None)
    data = RandomImages(256, 128)
    cache = DeviceImageCache(data, device)
    wrapped = GraphedTrainStep(step, cfg.batch_gpu, data.image_shape, device, cache=cache)
    idx = torch.arange(cfg.batch, device=device)
    for i in range(2 * cfg.d_reg_interval + 2):            # warms up and captures every phase pattern
        wrapped(idx, i)
    torch.cuda.synchronize()
    res: dict = {"presets": args.presets, "precision": step.precision, "sets": args.set,
                 "backend": step.selection.describe(), "patterns": {}, "phases": {}}
    for name, step_idx in (("plain", 1), ("r1", cfg.d_reg_interval)):
        graph = wrapped.graphs[wrapped.graph_key(step_idx)]
        ms = cuda_time(lambda _: graph(), args.reps) * 1e3
        stats = profiled(graph, args.prof_reps, args.rows, out / f"trace_{name}.json" if out else None)
        res["patterns"][name] = {"ms": ms, **stats}
        show(f"step pattern {name}", ms, stats, args.rows)
    per = cfg.d_reg_interval
    plain, r1 = res["patterns"]["plain"]["ms"], res["patterns"]["r1"]["ms"]
    res["mean_ms_per_step"] = ((per - 1) * plain + r1) / per
    res["img_per_s_from_replays"] = cfg.batch / res["mean_ms_per_step"] * 1e3
    print(f"mean over a lazy-R1 period: {res['mean_ms_per_step']:.3f} ms/step = {res['img_per_s_from_replays']:.1f} "
          f"img/s (R1 adds {(r1 - plain) / per:.3f} ms/step amortised)")
    reals = cache.gather(idx)
    for name, graph in phase_graphs(step, reals, cfg):
        ms = cuda_time(lambda _: graph(), args.reps) * 1e3
        stats = profiled(graph, args.prof_reps, args.rows, None)
        res["phases"][name] = {"ms": ms, **stats}
        show(f"phase {name}", ms, stats, min(args.rows, 12))
    return res


def eager(args, out: Path | None) -> dict:
    device = torch.device("cuda")
    cfg = make_cfg(args.presets, args.precision, extra=tuple(args.set))
    _, step = make_step(cfg, device, choices=parse_choices(args.choices) if args.choices else None)
    reals = RandomImages(cfg.batch, 128).images.to(device)
    for i in range(20):
        step(reals, i)
    res: dict = {"presets": args.presets, "precision": step.precision, "eager": {}}
    for name, idx in (("plain", 1), ("r1", 16)):
        stats = profiled(lambda i=idx: step(reals, i), 1, args.rows, out / f"trace_{name}.json" if out else None)
        res["eager"][name] = stats
        show(f"eager step {name}", float("nan"), stats, args.rows)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="carla,t4")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--set", action="append", default=[], help="Config override KEY=VALUE (repeatable).")
    ap.add_argument("--choices", default=None, help="Backend overrides, as bench/train_speed.py --choices (one set).")
    ap.add_argument("--eager", action="store_true", help="Profile eager steps instead of graph replays.")
    ap.add_argument("--reps", type=int, default=100, help="Replays timed with CUDA events.")
    ap.add_argument("--prof-reps", type=int, default=5, help="Replays under the profiler.")
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--out", default=None, help="Folder for Chrome traces.")
    ap.add_argument("--json", default=None, help="Write the numbers to this file.")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_step.py needs a CUDA GPU")
    if args.choices:
        parse_choices(args.choices)             # a bad spec is an error before any CUDA work
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    res = eager(args, out) if args.eager else graphed(args, out)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
