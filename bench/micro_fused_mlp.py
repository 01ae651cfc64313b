"""Microbenchmark of the fused Triton NeRF MLP (torch_utils/ops/fused_mlp.py) against the PyTorch path.

    python bench/micro_fused_mlp.py                      # CUDA only: 64 objects, 128x128 rays, 32 samples
    python bench/micro_fused_mlp.py --sweep              # + other (BLOCK_N, num_warps, pipeline, stages) launches
    python bench/micro_fused_mlp.py --sweep --launches 64,8,1,2/32,4,1,2   # only these (e.g. the ones that
                                                         # bench/fused_mlp_faults.py passed on this GPU)
    python bench/micro_fused_mlp.py --render             # + whole G.synthesis renders with the kernel patched in
    python bench/micro_fused_mlp.py --objects 8 --res 64 # quick look

For each depth (4 layers, and 8 layers with the skip) and dtype (bf16, fp16) it prints
  * correctness on the first chunk of points: the kernel against `reference_evaluate` (same rounding), against the
    fp32 module, and the current autocast path against the fp32 module (max abs error, max abs / max |ref|, rel L2);
  * the time of all B x res^2 x samples points: the PyTorch path (`NeRFMLP.evaluate` under torch.autocast, in
    renderer-sized chunks of --chunk-rays rays over all objects), the kernel in one launch, and the kernel per chunk
    (weights packed once, and packed again for every chunk as a naive integration would), as ms, points/s and the
    implied images/s of the MLP alone (median of --reps timed runs after warm-up, CUDA events).
Points are real ray samples (pose prior, near 3 / far 5), so the encoding sees the renderer's value range.
The sweep runs in this process: a launch that faults (64 points on 4 warps were seen to read shared memory out of
bounds on H200s) leaves the CUDA context unusable and every later row fails, so on a new machine run
bench/fused_mlp_faults.py first and pass the launches it passed with --launches. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch_utils import backend  # noqa: E402
from torch_utils.ops import fused_mlp as fm  # noqa: E402
from training.networks.nerf import NeRFMLP  # noqa: E402
from training.rendering.camera import get_rays, sample_poses  # noqa: E402
from training.rendering.volume import linear_depths  # noqa: E402
from fused_mlp_faults import parse_launch  # noqa: E402  (bench/ is on sys.path when this file runs)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# (BLOCK_N, num_warps, pipeline, num_stages) tried by --sweep.
SWEEP = [(64, 4, True, 2), (64, 4, True, 3), (64, 4, False, 2), (128, 8, True, 2), (128, 8, True, 3),
         (128, 8, False, 2), (128, 4, True, 2), (32, 4, True, 2), (64, 8, True, 2), (256, 8, True, 2)]


def cuda_time(fn, reps: int, warmup: int = 3) -> float:
    """Median seconds of fn() over `reps` runs, each timed with CUDA events, after `warmup` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return statistics.median(times)


def ray_points(B: int, res: int, samples: int, device, seed: int = 0) -> torch.Tensor:
    """Sample points of full res x res renders: [B, res^2 * samples, 3] fp32 (ray-major, as the renderer does)."""
    g = torch.Generator(device=device).manual_seed(seed)
    c2w = sample_poses(B, generator=g, device=device)                             # [B, 4, 4]
    origins, dirs = get_rays(c2w, res)                                             # [B, res, res, 3]
    t = linear_depths(3.0, 5.0, samples, device)                                   # [S]
    pts = origins[..., None, :] + t[:, None] * dirs[..., None, :]                  # [B, res, res, S, 3]
    return pts.reshape(B, -1, 3).contiguous()


def errors(got: torch.Tensor, ref: torch.Tensor) -> str:
    d = (got.float() - ref.float()).abs()
    rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    return f"max_abs {d.max().item():.3e}  max_abs/max|ref| {d.max().item() / ref.abs().max().item():.3e}  " \
           f"rel_L2 {rel:.3e}"


def report(name: str, sec: float, points: int, B: int) -> None:
    print(f"    {name:<48s} {sec * 1e3:9.3f} ms  {points / sec / 1e9:7.3f} Gpoints/s  "
          f"{B / sec:9.1f} images/s (MLP only)", flush=True)


@torch.no_grad()
def bench_mlp(args, device, num_layers: int) -> None:
    torch.manual_seed(0)
    nerf = NeRFMLP(num_layers=num_layers).to(device)
    cfg = fm.mlp_config(nerf)
    B, S = args.objects, args.samples
    weights = nerf.build_weights(torch.randn([B, 128], device=device))
    pts = ray_points(B, args.res, S, device)                                       # [B, N, 3]
    N = pts.shape[1]
    step = max(1, args.chunk_rays // B) * S                                        # points per object per chunk
    chunks = [pts[:, i:i + step] for i in range(0, N, step)]
    print(f"\n== num_layers={num_layers} skip={nerf.uses_skip} supported={fm.supported(nerf)}  B={B} "
          f"N={N} ({args.res}x{args.res} x {S} samples)  chunk={step} points/object ({len(chunks)} chunks)",
          flush=True)

    sub = chunks[0]
    want32 = nerf.evaluate(weights, sub)                                           # fp32 module
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        print(f"  -- {name}")
        if not backend.kernel_ok("fused_mlp", device, dtype):
            print("    fused kernel not available for this dtype on this device (see warnings)")
            continue
        ref = fm.reference_evaluate(weights, sub, dtype=dtype, **cfg)
        ker = fm.fused_evaluate(weights, sub, dtype=dtype, **cfg)
        with torch.autocast("cuda", dtype=dtype):
            amp = nerf.evaluate(weights, sub)
        print(f"    kernel vs reference (same rounding): {errors(ker, ref)}")
        print(f"    kernel vs fp32 module:               {errors(ker, want32)}")
        print(f"    autocast path vs fp32 module:        {errors(amp, want32)}")

        def torch_path():
            with torch.autocast("cuda", dtype=dtype):
                for c in chunks:
                    nerf.evaluate(weights, c)

        packed = fm.pack_weights(weights, dtype=dtype, **cfg)

        def kernel_full():
            fm.fused_evaluate(packed, pts, dtype=dtype, **cfg)

        def kernel_chunks():
            for c in chunks:
                fm.fused_evaluate(packed, c, dtype=dtype, **cfg)

        def kernel_chunks_repack():
            for c in chunks:
                fm.fused_evaluate(weights, c, dtype=dtype, **cfg)

        def pack_only():
            fm.pack_weights(weights, dtype=dtype, **cfg)

        total = B * N
        report("torch autocast, chunked", cuda_time(torch_path, args.reps), total, B)
        report("fused, one launch", cuda_time(kernel_full, args.reps), total, B)
        report("fused, chunked, packed once", cuda_time(kernel_chunks, args.reps), total, B)
        report("fused, chunked, repacked per chunk", cuda_time(kernel_chunks_repack, args.reps), total, B)
        print(f"    pack_weights alone: {cuda_time(pack_only, args.reps) * 1e3:.3f} ms", flush=True)

        if args.sweep:
            print(f"    sweep (one launch over all points; default {fm.default_launch(device)}):")
            for block_n, num_warps, pipeline, num_stages in args.launches:
                label = f"BN={block_n:3d} warps={num_warps} pipe={int(pipeline)} stages={num_stages}"
                launch = dict(block_n=block_n, num_warps=num_warps, pipeline=pipeline, num_stages=num_stages)

                def run(launch=launch):
                    fm.fused_evaluate(packed, pts, dtype=dtype, **launch, **cfg)
                try:
                    got = fm.fused_evaluate(packed, sub, dtype=dtype, **launch, **cfg)
                    err = ((got - ref).norm() / ref.norm()).item()
                    report(f"{label} (rel {err:.0e})", cuda_time(run, args.reps), total, B)
                except Exception as exc:                                            # e.g. out of shared memory
                    print(f"    {label}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                          flush=True)


@torch.no_grad()
def bench_render(args, device, num_layers: int, samples: int) -> None:
    """Whole renders (G.synthesis, no grad) with G.nerf.evaluate replaced by the kernel on the instance (no file is
    changed): images/s of the current path vs the patched one, and the max pixel difference."""
    from training.networks.generator import Generator

    torch.manual_seed(0)
    G = Generator(num_layers=num_layers, num_samples=samples, img_resolution=args.res).to(device).eval()
    B = args.objects
    g = torch.Generator(device=device).manual_seed(0)
    z, c2w = G.sample_z(B, generator=g), G.sample_poses(B, generator=g)
    cfg = fm.mlp_config(G.nerf)
    print(f"\n== render: num_layers={num_layers} samples={samples} {args.res}x{args.res} B={B} "
          f"ray_chunk={args.chunk_rays}", flush=True)
    img32 = G.synthesis(G.mapping(z), c2w, ray_chunk=args.chunk_rays)
    original = G.nerf.evaluate
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        if not backend.kernel_ok("fused_mlp", device, dtype):
            print(f"  -- {name}: fused kernel not available")
            continue

        cache: list = [None, None]                   # (weights of this render, packed): pack once per render

        def fused(weights, pts, dtype=dtype, cache=cache):
            if cache[0] is not weights[0][0]:
                cache[:] = [weights[0][0], fm.pack_weights(weights, dtype=dtype, **cfg)]
            return fm.fused_evaluate(cache[1], pts, dtype=dtype, **cfg)

        def render():
            with torch.autocast("cuda", dtype=dtype):
                return G.synthesis(G.mapping(z), c2w, ray_chunk=args.chunk_rays)
        try:
            G.nerf.evaluate = original
            img_amp = render()
            t_amp = cuda_time(render, args.reps, warmup=1)
            G.nerf.evaluate = fused
            img_fused = render()
            t_fused = cuda_time(render, args.reps, warmup=1)
        finally:
            G.nerf.evaluate = original
        print(f"  -- {name}: autocast {B / t_amp:8.1f} images/s   fused {B / t_fused:8.1f} images/s   "
              f"(x{t_amp / t_fused:.2f})")
        print(f"     max |pixel| diff vs fp32: autocast {(img_amp - img32).abs().max().item():.3e}  "
              f"fused {(img_fused - img32).abs().max().item():.3e}  fused vs autocast "
              f"{(img_fused - img_amp).abs().max().item():.3e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=64)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--chunk-rays", type=int, default=65536, help="rays over all objects per PyTorch-path call")
    p.add_argument("--layers", default="4,8", help="comma list of depths (8 uses the skip)")
    p.add_argument("--dtypes", default="bf16,fp16")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--sweep", action="store_true", help="time the launch configurations in SWEEP")
    p.add_argument("--launches", default=None, help="with --sweep: '/'-separated BLOCK_N,num_warps,pipeline,stages "
                   "launches to time instead of SWEEP, e.g. 64,8,1,2/32,4,1,2")
    p.add_argument("--render", action="store_true", help="also time whole renders with the kernel patched in")
    args = p.parse_args()
    args.launches = [parse_launch(v) for v in args.launches.split("/")] if args.launches else SWEEP
    if not torch.cuda.is_available():
        sys.exit("micro_fused_mlp.py needs a CUDA GPU")
    device = torch.device("cuda")
    import triton
    print(f"{torch.cuda.get_device_name(device)}  torch {torch.__version__}  triton {triton.__version__}  "
          f"default launch (BLOCK_N, num_warps) = {fm.default_launch(device)}")
    for name in args.dtypes.split(","):
        print(f"available({name}) = {backend.kernel_ok('fused_mlp', device, DTYPES[name])}")
    for L in (int(v) for v in args.layers.split(",")):
        bench_mlp(args, device, L)
        torch.cuda.empty_cache()                                                   # free this depth's points
    if args.render:
        bench_render(args, device, 4, args.samples)
        bench_render(args, device, 8, 64)


if __name__ == "__main__":
    main()
