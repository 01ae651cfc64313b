"""Training / rendering / FID-1k speed benchmark with correctness gates, side by side in one process (CUDA only).

    python bench/train_speed.py --out bench_out [--sections t4,standard,render,fid] [--detector PATH]
    python bench/train_speed.py --sections gates --gates t4_g_learns      # one gate (names: see main)
    python bench/train_speed.py --sections t4 --variants naive,default --sets 'd_fir=pool;d_fir=single'   # A/B rows

Variants per setting (identical initial weights and seeds):
  naive         the reference's structure (bench/naive.py): per-object loop, CPU rays + encoding, per-point
                matmul, fp32 G (D in fp16 blocks, as the reference)
  eager         our batched TrainStep without CUDA graphs (precision auto = fp16 + loss scaling), plain D
  graphs_only   reals on the device + one CUDA graph per phase pattern, plain D (NCHW, not compiled), eager G
  d_compiled    graphs + D in channels_last and torch.compile'd (R1 eager), eager G render
  default       what train.py runs on a GPU: d_compiled + G's patch render torch.compile'd, fp16
  default_bf16  the same in bf16
Render section (full 128x128 no-grad renders): the t4_bf16_* / t4_fp32_* / std_bf16_* rows time the PyTorch MLP path
(mlp='torch', under bf16 autocast or in fp32: what renders on a T4 and on CPU); the *_fused_* rows time the fused
Triton MLP (mlp='fused', fp16), which generate.py / calc_metrics.py / the training metrics now use by default
(--mlp auto) on sm_80+ GPUs; a fused row records an error where the kernel cannot run (e.g. a T4).
Gates run before timing: batched G == naive G (fp32), bf16/fp16 images close to fp32 with aligned G gradients,
graphed steps == eager steps. Memory is capped (default 14.5 GiB, a T4's allocatable memory) to emulate a T4.
Writes bench.json after every section (partial results survive a timeout) and prints a table. Never run in CI.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.naive import naive_render, naive_run_G  # noqa: E402
from dnnlib.util import UserError  # noqa: E402
from torch_utils.cuda_graph import StepGraph  # noqa: E402
from training.config import resolve_config  # noqa: E402
from training.fast_step import DeviceImageCache, GraphedTrainStep  # noqa: E402
from training.networks import hyper  # noqa: E402
from training.phases import TrainStep  # noqa: E402
from training.training_loop import build_networks, configure_torch  # noqa: E402

RESULTS: dict = {"sections": {}}


def save(out: Path) -> None:
    (out / "bench.json").write_text(json.dumps(RESULTS, indent=2, default=str))


class RandomImages:
    """Stand-in dataset: N random uint8 images (data loading is excluded from the timings, as in PERF.md §5)."""

    def __init__(self, n: int, res: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, [n, 3, res, res], generator=g, dtype=torch.uint8)
        self.image_shape, self.xflip, self.num_images = (3, res, res), False, n

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].numpy(), None


def make_cfg(presets: str, precision: str, batch: int = 4, extra: tuple = ()):
    return resolve_config(presets, sets=[f"precision={precision}", f"batch={batch}", "aug=fixed", *extra])


def make_step(cfg, device, res=128, seed=0):
    configure_torch(cfg, device)
    nets = build_networks(cfg, res, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    step = TrainStep(cfg, nets.G, nets.D, nets.G_ema, nets.augment_pipe, device, gen)
    return nets, step


def cuda_time(fn, steps: int) -> float:
    """Seconds per call (CUDA events around `steps` calls)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(steps):
        fn(i)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / steps


def run_variant(name: str, presets: str, precision: str, device, data, steps: int, graphed: bool,
                naive: bool = False, extra: tuple = (), linear: dict | None = None) -> dict:
    gc.collect()                 # free the previous variant's CUDA graphs and their memory pools
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()   # left by earlier variants (e.g. compiled code holding old networks)
    cfg = make_cfg(presets, "fp32" if naive else precision, extra=extra)
    nets, step = make_step(cfg, device)
    if linear:                                  # after make_step, whose configure_torch applies the config's choice
        hyper.set_linear_options(**linear)
    if naive:
        step.loss.run_G = lambda n, update_w_avg=False, mlp="torch": naive_run_G(step.loss, n, update_w_avg)
        step.loss.d_dtype = torch.float16           # the reference D runs its conv blocks in fp16
    cache = DeviceImageCache(data, device) if graphed else None
    wrapped = GraphedTrainStep(step, cfg.batch_gpu, data.image_shape, device, cache=cache, enabled=graphed)
    idx_gen = torch.Generator(device=device).manual_seed(1)
    host_reals = data.images[:cfg.batch].to(device)

    def one(i: int) -> None:
        if graphed:
            wrapped(torch.randint(0, len(data), [cfg.batch], generator=idx_gen, device=device), i)
        else:
            wrapped(host_reals, i)

    warm = 3 if naive else 20
    for i in range(warm):
        one(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sec = cuda_time(lambda i: one(warm + i), steps)
    host = time.perf_counter() - t0
    res = {"variant": name, "precision": step.precision, "graphed": graphed, "steps": steps,
           "ms_per_step": sec * 1e3, "img_per_s": cfg.batch / sec, "s_per_kimg": sec * 1000 / cfg.batch,
           "peak_alloc_gb": torch.cuda.max_memory_allocated() / 2**30,
           "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30, "wall_s": host,
           "resident_before_gb": resident / 2**30,   # included in peak_alloc_gb; 0 for the first variant
           "linear": hyper.linear_options()}
    if not naive:   # after the timing: the phase graphs take optimiser steps of their own
        res["phase_ms"] = phase_times(step, host_reals, cfg, graphed=graphed)
    return res


def parse_linear(spec: str) -> dict:
    """'base' -> every option off; 'forward=bmm_add,split_k=1' -> set_linear_options keywords."""
    if spec == "base":
        return {"forward": "baddbmm", "split_k": False, "pad_inputs": False, "fused": False}
    out: dict = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key not in ("forward", "split_k", "pad_inputs", "fused") or not value:
            sys.exit(f"error: bad --linear item {item!r}")
        out[key] = value if key == "forward" else value not in ("0", "false", "False")
    return out


def phase_fns(step: TrainStep, reals: torch.Tensor, cfg) -> dict:
    """The step's phases as separate callables of a dummy index (each a full phase: loss, backward, optimiser step):
    Gmain, Dmain, Dreg (lazy R1) and the per-step rest (EMA, counters and ADA bookkeeping)."""
    real = reals.float() / 127.5 - 1
    b = real.shape[0]

    def gmain(_):
        step.gmain_phase(b)

    def dmain(_):
        step.dmain_phase(real)

    def dreg(_):
        step.dreg_phase(real)

    def rest(_):
        step.ema_phase()
        step._count_bad(torch.zeros([], dtype=torch.bool, device=real.device))

    return {"Gmain": gmain, "Dmain": dmain, "Dreg": dreg, "EMA+counters": rest}


def phase_graphs(step: TrainStep, reals: torch.Tensor, cfg):
    """Yield (name, replay) per phase of `phase_fns`, each phase captured as its own CUDA graph (warmed up and
    captured before it is yielded; one graph alive at a time, so the memory of the previous one can go)."""
    for name, fn in phase_fns(step, reals, cfg).items():
        graph = StepGraph(lambda f=fn: f(0), reals.device, warmup=3, generators=[step.generator])
        for _ in range(4):
            graph()
        yield name, graph


def phase_times(step: TrainStep, reals: torch.Tensor, cfg, reps: int = 20, graphed: bool = False) -> dict:
    """Milliseconds per phase: eager calls, or (graphed=True) replays of each phase captured as its own CUDA graph
    (what the graphed step costs phase by phase; the whole-step graph adds no gaps between phases)."""
    if graphed:
        return {name: cuda_time(lambda _, g=graph: g(), reps) * 1e3 for name, graph in phase_graphs(step, reals, cfg)}
    return {name: cuda_time(fn, reps) * 1e3 for name, fn in phase_fns(step, reals, cfg).items()}


def gate_images(presets: str, device) -> dict:
    """Same weights, poses, windows: naive fp32 vs batched fp32 / bf16 / fp16; G-gradient cosine for 16-bit."""
    cfg = make_cfg(presets, "fp32")
    nets, _ = make_step(cfg, device)
    G = nets.G
    g = torch.Generator(device=device).manual_seed(123)
    z = G.sample_z(4, generator=g)
    c2w = G.sample_poses(4, generator=g)
    win = G.sample_windows(4, cfg.patch_size, generator=g)
    ref = G(z, c2w, window=win, patch_size=cfg.patch_size)
    with torch.no_grad():
        naive = naive_render(G, z, c2w, win, cfg.patch_size)
    out = {"naive_vs_batched_max_abs": (naive - ref).abs().max().item()}
    weight = torch.randn_like(ref)
    grads32 = torch.autograd.grad((ref * weight).sum(), list(G.parameters()))
    flat32 = torch.cat([x.flatten() for x in grads32])
    half = {}   # fp16 / bf16 on the cuBLAS layers: an fp32 config's make_step leaves the fused layers off
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        img, flat = half[name] = autocast_render(G, z, c2w, win, cfg.patch_size, dt, weight)
        out[f"{name}_rel_l2"] = ((img - ref).norm() / ref.norm()).item()
        out[f"{name}_grad_cos"] = torch.nn.functional.cosine_similarity(flat, flat32, dim=0).item()
        out.update({f"{name}_{k}": v for k, v in flipped_pixels(img, ref.detach()).items()})
    # PERF.md's acceptance for a 16-bit path: image rel. L2 <= 1e-2 and G-gradient cosine >= 0.999, per precision.
    # The measured misses (fp16 1.0e-2 / 2.3e-2, bf16 4-5e-2 and cosine 0.992-0.995) are explained in
    # docs/PERFORMANCE.md (bistable last-sample pixels); they stay failures here rather than widened tolerances.
    # `flipped_pixels` records how many pixels carry that miss and the rel L2 of the rest (information only).
    for n in ("bf16", "fp16"):
        out[f"{n}_pass"] = out[f"{n}_rel_l2"] <= 1e-2 and out[f"{n}_grad_cos"] >= 0.999
    out["pass"] = out["naive_vs_batched_max_abs"] <= 1e-4 and out["bf16_pass"] and out["fp16_pass"]
    out.update(gate_fused_paths(G, z, c2w, win, cfg.patch_size, ref, weight, flat32, half["fp16"]))
    return out


def flipped_pixels(img: torch.Tensor, ref: torch.Tensor, threshold: float = 0.05) -> dict:
    """Where a 16-bit image leaves the fp32 one: pixels (over colour channels) off by more than `threshold` (the
    bistable last-sample flips of the reference's compositing), and the rel L2 of the image without them.
    img, ref: [B, 3, H, W]. Informational: the gates' pass criteria do not use it."""
    off = (img - ref).abs().amax(dim=1, keepdim=True) > threshold                      # [B, 1, H, W]
    keep = (~off).expand_as(ref)
    rest = ((img - ref)[keep].norm() / ref[keep].norm().clamp_min(1e-12)).item()
    return {"flipped_pixels": int(off.sum()), "pixels": off.numel(), "rel_l2_without_flipped": rest}


def autocast_render(G, z, c2w, win, patch: int, dtype, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """G's patch under `dtype` autocast -> (image fp32, G's gradient of <image, weight> flattened)."""
    with torch.autocast("cuda", dtype=dtype):
        img = G(z, c2w, window=win, patch_size=patch)
    grads = torch.autograd.grad((img.float() * weight).sum(), list(G.parameters()))
    return img.float().detach(), torch.cat([x.flatten() for x in grads])


def gate_fused_paths(G, z, c2w, win, patch: int, ref, weight, flat32, cublas16) -> dict:
    """The sm_80+ training paths against the fp16 cuBLAS layers (`cublas16`: gate_images' fp16 (image, gradient))
    on the same inputs: G's fused layers (image and G-gradient) and Dmain's no-grad fakes through the fused render
    kernel (image). Recorded beside gate_images' rows; `fused_pass` asks the fused layers to have run (kernel
    launches counted by the profiler) and to match the cuBLAS fp16 path (image rel L2 <= 1e-2, gradient cosine >=
    0.999), and the kernel fakes to match the cuBLAS fp16 image within 1e-2. (Session 10 first held the fakes to
    the fp32 image: 1.008e-2 at the T4 setting, the cuBLAS fp16 path's own known miss, see gate_images; the
    kernel is now held to the 16-bit path it replaces.)"""
    from torch_utils.ops import object_linear
    if not object_linear.available(z.device, torch.float16):
        return {"fused": "unavailable on this GPU"}
    out = {}
    old = hyper.set_linear_options(fused=True)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            img, flat = autocast_render(G, z, c2w, win, patch, torch.float16, weight)
            torch.cuda.synchronize()
    finally:
        hyper.set_linear_options(**old)
    # Proof that the fused layers ran: their kernel's launches (forward and backward) in this render.
    out["object_linear_launches"] = sum(e.name.startswith("_object_linear_kernel") for e in prof.events())
    img16, flat16 = cublas16
    cos = torch.nn.functional.cosine_similarity
    out["fp16_fused_rel_l2"] = ((img - ref).norm() / ref.norm()).item()
    out["fp16_fused_grad_cos"] = cos(flat, flat32, dim=0).item()
    out["fused_vs_cublas_fp16_rel_l2"] = ((img - img16).norm() / img16.norm()).item()
    out["fused_vs_cublas_fp16_grad_cos"] = cos(flat, flat16, dim=0).item()
    with torch.no_grad():
        fakes = G(z, c2w, window=win, patch_size=patch, mlp=G.mlp_path("auto", z.device, grad_enabled=False))
    out["kernel_fakes_rel_l2"] = ((fakes.float() - ref).norm() / ref.norm()).item()
    out["kernel_fakes_vs_cublas_fp16_rel_l2"] = ((fakes.float() - img16).norm() / img16.norm()).item()
    out["fused_pass"] = out["object_linear_launches"] > 0 and out["fused_vs_cublas_fp16_rel_l2"] <= 1e-2 \
        and out["fused_vs_cublas_fp16_grad_cos"] >= 0.999 and out["kernel_fakes_vs_cublas_fp16_rel_l2"] <= 1e-2
    return out


def gate_compiled_g(presets: str, device) -> dict:
    """Compiled vs eager G patch render (the training path, fp16 autocast), same weights and pre-drawn randomness:
    image max abs difference and G-gradient cosine."""
    cfg = make_cfg(presets, "fp16")
    nets, step = make_step(cfg, device)
    G, loss = nets.G, step.loss
    g = torch.Generator(device=device).manual_seed(7)
    args = (G.sample_z(4, generator=g), G.sample_poses(4, generator=g),
            G.sample_windows(4, cfg.patch_size, generator=g),
            *G.sample_randomness(4, cfg.patch_size, generator=g))
    outs = []
    for fn in (loss._render_eager, loss._render):
        img = fn(*args, False)
        weight = torch.ones_like(img).normal_(generator=torch.Generator(device=device).manual_seed(1))
        grads = torch.autograd.grad((img * weight).sum(), list(G.parameters()))
        outs.append((img.detach(), torch.cat([x.flatten() for x in grads])))
    (img_e, g_e), (img_c, g_c) = outs
    res = {"max_abs": (img_c - img_e).abs().max().item(),
           "grad_cos": torch.nn.functional.cosine_similarity(g_c, g_e, dim=0).item(),
           "compiled": not getattr(loss._render, "failed", True)}
    res["pass"] = res["compiled"] and res["grad_cos"] >= 0.999
    return res


def _d_grads(step, cfg, img, real, impls) -> dict:
    """D's gradients in `step`'s configuration: the first-order D of Gmain / Dmain (compiled where configured) on
    patches img [n, 3, P, P] (logit-sum gradient w.r.t. img and D), then the R1 loss on the reals for each FIR
    implementation in `impls` (loss and D-gradient, through the R1 phase's loss scale; the augmentation draws
    restored between them). -> float64."""
    loss = step.loss
    params = [p for p in loss.D.parameters() if p.requires_grad]
    flat = lambda grads: torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double()  # noqa: E731
                                    for p, g in zip(params, grads)])
    x = img.detach().requires_grad_(True)
    grads = torch.autograd.grad(loss.score(x).sum(), [x, *params], allow_unused=True)
    out = {"input": grads[0].double().flatten(), "first_order": flat(grads[1:])}
    for impl in impls:
        loss.r1_fir = impl
        gen = loss.generator.get_state()
        reg = loss.dreg(real, gain=cfg.d_reg_interval)
        loss.generator.set_state(gen)                    # the same augmentation draws for every implementation
        guard = step.guard_Dreg                          # fp16: the R1 phase's loss scale, as in training
        scale = float(guard.scale) if guard.dynamic else 1.0
        grads = torch.autograd.grad(guard.scale_loss(reg), params, allow_unused=True)
        out[f"r1_{impl}"] = (reg.detach().double(), flat(grads) / scale)
    return out


def gate_d_grads(presets: str, device, data) -> dict:
    """D's gradients on the GPU against a plain reference: fp32, NCHW, eager, the filter as a grouped conv that
    autograd differentiates itself (no average pools, no custom autograd Function), same D weights and draws.
    Checked in fp32 and fp16 (the T4's precision) with the default layout, compile and options: the first-order
    D (input and weight gradients of the logits: Gmain's and Dmain's D) and the R1 loss and D-gradient of each R1
    FIR implementation. Eager CUDA avg_pool2d's backward is wrong for padded NHWC inputs (pytorch#188344)."""
    ref_cfg = make_cfg(presets, "fp32", extra=("d_channels_last=false", "r1_channels_last=false", "d_fir=grouped",
                                               "r1_fir=grouped", "d_compile=false"))
    nets, ref_step = make_step(ref_cfg, device)
    d_state = {k: v.detach().clone() for k, v in nets.D.state_dict().items()}
    g = torch.Generator(device=device).manual_seed(3)
    img = torch.rand([ref_cfg.batch, 3, ref_cfg.patch_size, ref_cfg.patch_size], generator=g, device=device) * 2 - 1
    real = data.images[:ref_cfg.batch].to(device).float() / 127.5 - 1
    ref = _d_grads(ref_step, ref_cfg, img, real, ("grouped",))
    ref_reg, ref_r1 = ref.pop("r1_grouped")
    del nets, ref_step
    out, ok = {}, True
    for precision, cos_min, rel_max in (("fp32", 0.9999, 1e-3), ("fp16", 0.999, 1e-2)):
        cfg = make_cfg(presets, precision)
        nets, step = make_step(cfg, device)
        nets.D.load_state_dict(d_state)
        got = _d_grads(step, cfg, img, real, ("pool", "depthwise", "triton"))
        for name in ("input", "first_order"):
            cos = torch.nn.functional.cosine_similarity(got[name], ref[name], dim=0).item()
            out[f"{precision}_{name}_grad_cos"] = cos
            ok = ok and cos >= cos_min
        for impl in ("pool", "depthwise", "triton"):
            reg, grad = got[f"r1_{impl}"]
            rel = ((reg - ref_reg).abs() / ref_reg.abs().clamp_min(1e-12)).item()
            cos = torch.nn.functional.cosine_similarity(grad, ref_r1, dim=0).item()
            out[f"{precision}_r1_{impl}_penalty_rel"], out[f"{precision}_r1_{impl}_grad_cos"] = rel, cos
            ok = ok and rel <= rel_max and cos >= cos_min
        del nets, step
    out["pass"] = ok
    return out


def train_steps(step: TrainStep, cfg, device, data, steps: int, graphed: bool) -> None:
    """`steps` training steps of `step` on the first images of `data` in order (eager or CUDA-graphed), synced."""
    cache = DeviceImageCache(data, device)
    wrapped = GraphedTrainStep(step, cfg.batch_gpu, data.image_shape, device, cache=cache, enabled=graphed)
    idx = torch.arange(steps * cfg.batch, device=device).view(steps, cfg.batch) % len(data)
    for i in range(steps):
        wrapped(idx[i], i)
    step.flush()                                # a deferred D update (d_step_overlap) lands before D is read
    torch.cuda.synchronize()


def gate_graph(presets: str, device, data, steps: int = 50) -> dict:
    """Eager steps (everything in line) vs graphed steps (G_ema on its side stream, the default; and with D's
    deferred update on its own stream, d_step_overlap) from identical state and RNG (fp32): max relative
    G / D / G_ema parameter difference of each graphed run to the eager one."""
    finals = {}
    for name, graphed, extra in (("eager", False, ("ema_overlap=false", "d_step_overlap=false")),
                                 ("graphed", True, ()), ("graphed_d_overlap", True, ("d_step_overlap=true",))):
        cfg = make_cfg(presets, "fp32", extra=("d_compile=false", *extra))
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        nets, step = make_step(cfg, device)
        torch.backends.cudnn.benchmark = False
        train_steps(step, cfg, device, data, steps, graphed)
        params = [*nets.G.parameters(), *nets.D.parameters(), *nets.G_ema.parameters()]
        finals[name] = [p.detach().clone() for p in params]
    torch.backends.cudnn.deterministic = False
    ref = finals.pop("eager")
    out = {"steps": steps}
    for name, params in finals.items():
        out[f"{name}_max_rel_param_diff"] = max(((a - b).norm() / (b.norm() + 1e-12)).item()
                                                for a, b in zip(params, ref))
    out["max_rel_param_diff"] = max(out[f"{name}_max_rel_param_diff"] for name in finals)
    out["pass"] = out["max_rel_param_diff"] <= 1e-4
    return out


def gate_g_learns(presets: str, device, data, steps: int = 60) -> dict:
    """G moves under the training path: the relative change of G's parameters after `steps` steps from the same
    initial state, eager fp32 (the plain path) vs the default (auto precision, CUDA graphs, compiled G and D). Session
    6 lost a study to a G that never moved on the default path while every CPU test passed; this gate catches that:
    the default's change must be > 0 for every parameter tensor and within 4x of the eager path's."""
    rows = {}
    for name, prec, graphed, extra in (("eager_fp32", "fp32", False, ("d_compile=false", "g_compile=false")),
                                       ("default", "auto", True, ())):
        gc.collect()
        torch.cuda.empty_cache()
        cfg = make_cfg(presets, prec, extra=extra)
        nets, step = make_step(cfg, device)
        start = [p.detach().clone() for p in nets.G.parameters()]
        train_steps(step, cfg, device, data, steps, graphed)
        moved = [(p.detach() - q).norm().item() for p, q in zip(nets.G.parameters(), start)]   # per tensor
        den = sum(q.norm().item() ** 2 for q in start) ** 0.5
        rows[name] = {"precision": step.precision, "graphed": graphed,
                      "rel_change": sum(m ** 2 for m in moved) ** 0.5 / den,
                      "unchanged_tensors": sum(m == 0.0 for m in moved), "tensors": len(moved)}
    ratio = rows["default"]["rel_change"] / max(rows["eager_fp32"]["rel_change"], 1e-30)
    ok = rows["default"]["unchanged_tensors"] == 0 and rows["eager_fp32"]["unchanged_tensors"] == 0 \
        and 0.25 <= ratio <= 4.0
    return {"steps": steps, **rows, "ratio_default_to_eager": ratio, "pass": ok}


@torch.no_grad()
def render_speed(device, presets: str, batch: int, chunk: int, reps: int, dtype, fused: bool = False) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    cfg = make_cfg(presets, "fp32")
    nets, _ = make_step(cfg, device)
    G = nets.G_ema
    mlp = "fused" if fused else "torch"        # explicit: a fused row never times the PyTorch path by accident
    G.mlp_path(mlp, device)                    # UserError where the kernel cannot run (the caller records it)
    g = torch.Generator(device=device).manual_seed(0)
    z, c2w = G.sample_z(batch, generator=g), G.sample_poses(batch, generator=g)

    def one(_):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            return G.synthesis(G.mapping(z), c2w, ray_chunk=chunk, mlp=mlp)
    img = one(0)
    ref = G.synthesis(G.mapping(z), c2w, mlp="torch")   # fp32 PyTorch path, G's default chunk: the reference
    torch.cuda.reset_peak_memory_stats()
    sec = cuda_time(one, reps)
    return {"batch": batch, "ray_chunk": chunk, "dtype": str(dtype), "fused_mlp": fused, "mlp": mlp,
            "images_per_s": batch / sec,
            "max_abs_vs_fp32": (img.float() - ref).abs().max().item(),
            "mean_abs_vs_fp32": (img.float() - ref).abs().mean().item(),
            "samples_per_s": batch * G.img_resolution ** 2 * G.num_samples / sec,
            "peak_alloc_gb": torch.cuda.max_memory_allocated() / 2**30}


@torch.no_grad()
def naive_render_speed(device, presets: str, n: int) -> dict:
    cfg = make_cfg(presets, "fp32")
    nets, _ = make_step(cfg, device)
    G = nets.G_ema
    z, c2w = G.sample_z(n, device=device), G.sample_poses(n, device=device)
    sec = cuda_time(lambda i: naive_render(G, z[i:i + 1], c2w[i:i + 1]), n)
    return {"images_per_s": 1 / sec}


def fid_speed(device, presets: str, detector) -> dict:
    from metrics.metric_main import calc_metric
    cfg = make_cfg(presets, "fp32")
    nets, _ = make_step(cfg, device)
    data = RandomImages(1000, 128)
    data.resolution, data.dataset_hash, data.name = 128, "bench-random-1000", "bench"
    t0 = time.perf_counter()
    calc_metric("fid1k_full", nets.G_ema, data, device, detector=detector, batch_size=64, cache=True,
                       ray_chunk=65536)
    t1 = time.perf_counter()
    warm = calc_metric("fid1k_full", nets.G_ema, data, device, detector=detector, batch_size=64, cache=True,
                       ray_chunk=65536)
    t2 = time.perf_counter()
    return {"cold_s": t1 - t0, "warm_s": t2 - t1, "fid": warm["results"], "detector": warm["detector"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--sections", default="gates,t4,standard,render,fid")
    ap.add_argument("--cap-gib", type=float, default=14.5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--naive-steps", type=int, default=8)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--variants", default=None, help="Comma list of training variants to run (default: all).")
    ap.add_argument("--linear", default=None,
                    help="';'-separated NeRF-layer option sets for the default variant, each 'base' or a comma list "
                         "of forward=baddbmm|bmm_add, split_k=0|1, pad_inputs=0|1 (one row each; see "
                         "training/networks/hyper.py set_linear_options).")
    ap.add_argument("--sets", default=None,
                    help="';'-separated config override sets for the default variant, each a comma list of "
                         "KEY=VALUE (one row each), e.g. 'r1_channels_last=true;r1_channels_last=false'.")
    ap.add_argument("--gates", default=None, help="Comma list of gates to run, e.g. t4_g_learns (default: all).")
    args = ap.parse_args()
    t4, std = "carla,t4", "cars,standard"
    gates = {"t4_images": lambda: gate_images(t4, device), "std_images": lambda: gate_images(std, device),
             "t4_compiled_g": lambda: gate_compiled_g(t4, device),
             "std_compiled_g": lambda: gate_compiled_g(std, device),
             "t4_graph": lambda: gate_graph(t4, device, data),
             "t4_d_grads": lambda: gate_d_grads(t4, device, data),
             "std_d_grads": lambda: gate_d_grads(std, device, data),
             "t4_g_learns": lambda: gate_g_learns(t4, device, data),
             "std_g_learns": lambda: gate_g_learns(std, device, data, steps=30)}   # device, data: set below
    chosen = args.gates.split(",") if args.gates else list(gates)
    unknown = sorted(set(chosen) - set(gates))
    if unknown:
        sys.exit(f"error: unknown gate(s) {', '.join(unknown)}; choose from {', '.join(gates)}")
    for spec in (args.linear.split(";") if args.linear else []):
        parse_linear(spec)                      # bad specs are errors before any CUDA call
    for sets in (args.sets.split(";") if args.sets else []):
        try:
            make_cfg("carla,t4", "auto", extra=tuple(sets.split(",")))
        except UserError as exc:
            sys.exit(f"error: bad --sets {sets!r}: {exc}")
    if not torch.cuda.is_available():
        sys.exit("train_speed.py needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total))
    RESULTS.update(gpu=torch.cuda.get_device_name(device), torch=torch.__version__, cap_gib=args.cap_gib,
                   date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv))
    sections = args.sections.split(",")
    data = RandomImages(512, 128)
    if "gates" in sections:
        RESULTS["sections"]["gates"] = {}
        for name in chosen:   # one gate at a time, saved as it lands; a gate that raises fails, the rest still run
            try:
                RESULTS["sections"]["gates"][name] = gates[name]()
            except Exception as exc:  # noqa: BLE001 - recorded as a failed gate with its message
                RESULTS["sections"]["gates"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500], "pass": False}
            print("gate", name, json.dumps(RESULTS["sections"]["gates"][name]), flush=True)
            save(out)
        print(json.dumps(RESULTS["sections"]["gates"], indent=1), flush=True)
        failed = [name for name, gate in RESULTS["sections"]["gates"].items() if not gate["pass"]]
        RESULTS["gates_pass"] = not failed
        for name in failed:
            print(f"GATE FAILED: {name} (timings below compare paths that disagree)", flush=True)
        save(out)
    for sec_name, presets in (("t4", t4), ("standard", std)):
        if sec_name not in sections:
            continue
        rows = []
        plain = ("d_channels_last=false", "d_compile=false")
        variants = [("naive", "fp32", False, True, plain), ("eager", "auto", False, False, plain),
                    ("graphs_only", "auto", True, False, plain + ("g_compile=false",)),
                    ("d_compiled", "auto", True, False, ("g_compile=false",)),
                    ("default", "auto", True, False, ()), ("default_bf16", "bf16", True, False, ())]
        if sec_name == "standard":
            variants = [v for v in variants if v[0] != "default_bf16"]
        if args.variants:
            variants = [v for v in variants if v[0] in args.variants.split(",")]
        # --linear / --sets: the default variant once per option set (and per combination when both are given)
        linear_specs = args.linear.split(";") if args.linear else [None]
        set_specs = args.sets.split(";") if args.sets else [None]
        expanded = []
        for v in variants:
            if v[0] != "default" or (args.linear is None and args.sets is None):
                expanded.append((*v, None))
                continue
            for spec in linear_specs:
                for sets in set_specs:
                    label = ",".join(x for x in (spec, sets) if x)
                    extra = v[4] + tuple(sets.split(",") if sets else ())
                    expanded.append((f"default[{label}]", *v[1:4], extra, spec))
        variants = expanded
        for name, prec, graphed, naive, extra, spec in variants:   # make_step resets the options from the config
            steps = args.naive_steps if naive else (args.steps if sec_name == "t4" else max(30, args.steps // 6))
            try:
                r = run_variant(name, presets, prec, device, data, steps, graphed, naive, extra,
                                parse_linear(spec) if spec else None)
            except torch.OutOfMemoryError:
                r = {"variant": name, "error": f"OOM@{args.cap_gib}GiB"}
            rows.append(r)
            print(sec_name, json.dumps(r), flush=True)
            RESULTS["sections"][sec_name] = rows
            save(out)
        base = rows[0].get("img_per_s")
        for r in rows:
            if base and "img_per_s" in r:
                r["x_naive"] = r["img_per_s"] / base
        save(out)
    if "render" in sections:
        rr = RESULTS["sections"]["render"] = {"naive_t4": naive_render_speed(device, "carla,t4", 4)}
        rows = [(f"t4_bf16_b{b}", ("carla,t4", b, ch, 10, torch.bfloat16)) for b, ch in ((16, None), (64, 65536),
                                                                                          (128, 65536))]
        rows += [("t4_fp32_b64", ("carla,t4", 64, 65536, 5, None)),
                 ("std_bf16_b32", ("cars,standard", 32, 65536, 5, torch.bfloat16))]
        rows += [(f"t4_fused_b{b}_c{ch}", ("carla,t4", b, ch, 10, None)) for b, ch in ((64, 65536), (64, 262144))]
        rows += [("std_fused_b32", ("cars,standard", 32, 65536, 5, None))]
        for name, spec in rows:   # one row at a time, saved as it lands: an OOM costs its row, not the section
            try:
                rr[name] = render_speed(device, *spec, fused="fused" in name)
            except torch.OutOfMemoryError:
                rr[name] = {"error": f"OOM@{args.cap_gib}GiB"}
            except UserError as exc:           # a fused row where the kernel cannot run (before sm_80, no triton)
                rr[name] = {"error": str(exc)}
            print("render", name, json.dumps(rr[name]), flush=True)
            save(out)
    if "fid" in sections:
        RESULTS["sections"]["fid"] = fid_speed(device, "carla,t4", args.detector)
        print(json.dumps(RESULTS["sections"]["fid"], indent=1), flush=True)
        save(out)
    print_table()


def print_table() -> None:
    print(f"\n{RESULTS['gpu']}  torch {RESULTS['torch']}  cap {RESULTS['cap_gib']} GiB  {RESULTS['date']}")
    for sec in ("t4", "standard"):
        for r in RESULTS["sections"].get(sec, []):
            if "img_per_s" in r:
                print(f"{sec:9s} {r['variant']:8s} {r['precision']:5s} {r['img_per_s']:9.1f} img/s "
                      f"{r['s_per_kimg']:8.2f} s/kimg  x{r.get('x_naive', float('nan')):7.1f}  "
                      f"peak {r['peak_alloc_gb']:.2f} GB  "
                      + " ".join(f"{k} {v:.3f}" for k, v in r.get("phase_ms", {}).items()))
            else:
                print(f"{sec:9s} {r['variant']:8s} {r.get('error')}")


if __name__ == "__main__":
    main()
