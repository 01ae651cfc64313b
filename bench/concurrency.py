"""Several training processes on one GPU at once (e.g. the runs of the reproduction study), with and without MPS.

    python bench/concurrency.py --procs 1,2,3 [--mps] [--presets carla,t4] [--steps 2000]

At batch 4 the T4-setting step is a chain of small kernels that leaves most of an H100 idle, so independent runs
may share the GPU. Each child builds the default training step (CUDA graphs, compiled G and D, fp16) on random
reals, warms up, waits at a file barrier until every child is ready, then times `--steps` steps. Printed: per-child
and summed img/s for each process count. `--mps` starts a private NVIDIA MPS control daemon (pipe and log folders in
a temporary directory, so nothing system-wide changes) for the duration, so that kernels of different processes can
run concurrently instead of time-slicing. CUDA only; never run in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(args: argparse.Namespace) -> None:
    from bench.train_speed import RandomImages, cuda_time, make_cfg, make_step
    from training.fast_step import DeviceImageCache, GraphedTrainStep
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total))
    data = RandomImages(512, 128, seed=args.rank)
    cfg = make_cfg(args.presets, "auto")
    _, step = make_step(cfg, device, seed=args.rank)
    wrapped = GraphedTrainStep(step, cfg.batch_gpu, data.image_shape, device, cache=DeviceImageCache(data, device))
    gen = torch.Generator(device=device).manual_seed(args.rank)

    def one(i: int) -> None:
        wrapped(torch.randint(0, len(data), [cfg.batch], generator=gen, device=device), i)

    for i in range(40):
        one(i)
    torch.cuda.synchronize()
    barrier = Path(args.barrier)
    (barrier / f"ready{args.rank}").touch()
    while len(list(barrier.glob("ready*"))) < args.world:
        time.sleep(0.01)
    t0 = time.time()
    sec = cuda_time(lambda i: one(40 + i), args.steps)
    print(json.dumps({"rank": args.rank, "img_per_s": cfg.batch / sec, "start": t0, "end": time.time(),
                      "peak_alloc_gb": torch.cuda.max_memory_allocated() / 2**30}), flush=True)


def run_group(n: int, args: argparse.Namespace, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as barrier:
        cmd = [sys.executable, __file__, "--child", "--world", str(n), "--barrier", barrier, "--steps", str(args.steps),
               "--presets", args.presets, "--cap-gib", str(args.cap_gib)]
        procs = [subprocess.Popen(cmd + ["--rank", str(r)], env=env, stdout=subprocess.PIPE, text=True)
                 for r in range(n)]
        rows = []
        for p in procs:
            out, _ = p.communicate()
            rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    overlap = min(r["end"] for r in rows) - max(r["start"] for r in rows) if rows else 0.0
    return {"procs": n, "per_proc": [round(r["img_per_s"], 1) for r in rows],
            "sum_img_per_s": round(sum(r["img_per_s"] for r in rows), 1), "timed_overlap_s": round(overlap, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", default="1,2,3")
    ap.add_argument("--mps", action="store_true")
    ap.add_argument("--presets", default="carla,t4")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--cap-gib", type=float, default=14.5)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--barrier", default=None)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    env = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="mps")
    if args.mps:
        env.update(CUDA_MPS_PIPE_DIRECTORY=f"{tmp}/pipe", CUDA_MPS_LOG_DIRECTORY=f"{tmp}/log")
        os.makedirs(f"{tmp}/pipe"), os.makedirs(f"{tmp}/log")
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, check=True)
    try:
        for n in (int(x) for x in args.procs.split(",")):
            print(json.dumps({"mps": args.mps, **run_group(n, args, env)}), flush=True)
    finally:
        if args.mps:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=env)


if __name__ == "__main__":
    main()
