"""Training / rendering / FID-1k speed benchmark, side by side in one process (CUDA only). Timing only: the
correctness gates of these paths are tests (`pytest -m gpu tests/gpu`); run them first on a new machine.

    python bench/train_speed.py --out bench_out [--sections t4,standard,render,fid] [--detector PATH]
    python bench/train_speed.py --sections t4 --variants naive,default --choices 'r1_fir=depthwise;g_layers=tuned'

Variants per setting (identical initial weights and seeds):
  naive         the reference's structure (bench/naive.py): per-object loop, CPU rays + encoding, per-point
                matmul, fp32 G (D in fp16 blocks, as the reference)
  eager         our batched TrainStep without CUDA graphs (precision auto = fp16 + loss scaling), plain D
  graphs_only   reals on the device + one CUDA graph per phase pattern, plain D (NCHW, not compiled), eager G
  d_compiled    graphs + D in channels_last and torch.compile'd (R1 eager), eager G render
  default       what train.py runs on a GPU (impl=auto): d_compiled + G's patch render torch.compile'd, fp16
  default_bf16  the same in bf16
--choices: the default variant once per set of backend overrides (torch_utils/backend.py Selection fields, e.g.
'g_layers=tuned' or 'r1_fir=depthwise,epilogue_split=false'), one row each.
Render section (full 128x128 no-grad renders): the t4_bf16_* / t4_fp32_* / std_bf16_* rows time the PyTorch MLP path
(mlp='torch', under bf16 autocast or in fp32: what renders on a T4 and on CPU); the *_fused_* rows time the fused
Triton MLP (mlp='fused', fp16), which generate.py / calc_metrics.py / the training metrics use with impl=auto on
sm_80+ GPUs; a fused row records why where the backend does not select the kernel (e.g. a T4).
Memory is capped (default 14.5 GiB, a T4's allocatable memory) to emulate a T4.
Writes bench.json after every section (partial results survive a timeout) and prints a table. Never run in CI.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.naive import naive_render, naive_run_G  # noqa: E402
from torch_utils import backend  # noqa: E402
from torch_utils.cuda_graph import StepGraph  # noqa: E402
from training.config import resolve_config  # noqa: E402
from training.fast_step import DeviceImageCache, GraphedTrainStep  # noqa: E402
from training.phases import TrainStep  # noqa: E402
from training.training_loop import build_networks, configure_torch  # noqa: E402

RESULTS: dict = {"sections": {}}


def save(out: Path) -> None:
    (out / "bench.json").write_text(json.dumps(RESULTS, indent=2, default=str))


class RandomImages:
    """Stand-in dataset: N random uint8 images (data loading is excluded from the timings)."""

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


def make_step(cfg, device, res=128, seed=0, choices: dict | None = None):
    """Networks and a TrainStep on the backend's choices for cfg, with `choices` (Selection fields) overridden."""
    configure_torch(cfg, device)
    _, dtype = backend.resolve_precision(cfg.precision, device)
    sel = backend.select(cfg.impl, device, dtype).replace(**(choices or {}))
    nets = build_networks(cfg, res, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    step = TrainStep(cfg, nets.G, nets.D, nets.G_ema, nets.augment_pipe, device, gen, selection=sel)
    return nets, step


def parse_choices(spec: str) -> dict:
    """'g_layers=tuned,epilogue_split=false' -> Selection overrides (typed like the Selection's defaults)."""
    fields = {f.name: f.default for f in dataclasses.fields(backend.Selection)}
    out: dict = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        keys = [k for k in fields if k not in ("impl", "device")]
        if key not in keys or not value:
            sys.exit(f"error: bad --choices item {item!r}; keys: {', '.join(keys)}")
        out[key] = value.lower() in ("1", "true", "yes", "on") if isinstance(fields[key], bool) else value
    return out


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
                naive: bool = False, choices: dict | None = None) -> dict:
    gc.collect()                 # free the previous variant's CUDA graphs and their memory pools
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()   # left by earlier variants (e.g. compiled code holding old networks)
    cfg = make_cfg(presets, "fp32" if naive else precision)
    nets, step = make_step(cfg, device, choices=choices)
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
           "backend": step.selection.describe()}
    if not naive:   # after the timing: the phase graphs take optimiser steps of their own
        res["phase_ms"] = phase_times(step, host_reals, cfg, graphed=graphed)
    return res


def phase_fns(step: TrainStep, reals: torch.Tensor, cfg) -> dict:
    """The step's phases as separate callables of a dummy index (each a full phase: loss, backward, optimiser step):
    Gmain, Dmain, Dreg (lazy R1) and the per-step rest (EMA, counters and ADA bookkeeping)."""
    real = reals.float() / 127.5 - 1
    b = real.shape[0]

    def gmain(_):
        with backend.use(step.selection):
            step.gmain_phase(b)

    def dmain(_):
        with backend.use(step.selection):
            step.dmain_phase(real)

    def dreg(_):
        with backend.use(step.selection):
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


@torch.no_grad()
def render_speed(device, presets: str, batch: int, chunk: int, reps: int, dtype, fused: bool = False) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    cfg = make_cfg(presets, "fp32")
    nets, _ = make_step(cfg, device)
    G = nets.G_ema
    mlp = "fused" if fused else "torch"        # explicit: a fused row never times the PyTorch path by accident
    sel = backend.select("auto", device)
    if fused and sel.render_mlp != "fused":
        return {"error": f"the backend does not select the fused MLP here ({sel.describe()})"}
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
    ap.add_argument("--sections", default="t4,standard,render,fid")
    ap.add_argument("--cap-gib", type=float, default=14.5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--naive-steps", type=int, default=8)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--variants", default=None, help="Comma list of training variants to run (default: all).")
    ap.add_argument("--choices", default=None,
                    help="';'-separated backend override sets for the default variant, each a comma list of "
                         "FIELD=VALUE of torch_utils/backend.py Selection (one row each), e.g. "
                         "'r1_fir=depthwise;g_layers=tuned'.")
    args = ap.parse_args()
    t4, std = "carla,t4", "cars,standard"
    choice_sets = [parse_choices(c) for c in args.choices.split(";")] if args.choices else []  # errors before CUDA
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
    plain = {"channels_last": False, "compile_d": False}
    for sec_name, presets in (("t4", t4), ("standard", std)):
        if sec_name not in sections:
            continue
        rows = []
        variants = [("naive", "fp32", False, True, {**plain, "step_graphs": False}),
                    ("eager", "auto", False, False, {**plain, "step_graphs": False}),
                    ("graphs_only", "auto", True, False, {**plain, "compile_g": False}),
                    ("d_compiled", "auto", True, False, {"compile_g": False}),
                    ("default", "auto", True, False, {}), ("default_bf16", "bf16", True, False, {})]
        if sec_name == "standard":
            variants = [v for v in variants if v[0] != "default_bf16"]
        if args.variants:
            variants = [v for v in variants if v[0] in args.variants.split(",")]
        expanded = []                          # --choices: the default variant once per override set
        for v in variants:
            if v[0] != "default" or not choice_sets:
                expanded.append(v)
                continue
            for choices in choice_sets:
                label = ",".join(f"{k}={val}" for k, val in choices.items())
                expanded.append((f"default[{label}]", *v[1:4], choices))
        for name, prec, graphed, naive, choices in expanded:
            steps = args.naive_steps if naive else (args.steps if sec_name == "t4" else max(30, args.steps // 6))
            try:
                r = run_variant(name, presets, prec, device, data, steps, graphed, naive, choices)
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
