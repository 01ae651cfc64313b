"""The training loop: setup (`setup_run`), the step loop (`train`), and per-tick maintenance (`maintenance`):
status line, stats.jsonl, TensorBoard, image grids, network snapshots, training states, metrics, bad-step checks.

The step itself lives in training/phases.py; run directories and training states in training/state.py.
Only rank 0 writes files; every rank takes part in the collective statistics sync once per tick.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnnlib.util import EasyDict, Logger, UserError, format_table
from torch_utils import backend
from torch_utils import distributed as dist_utils
from torch_utils import training_stats
from training import state as state_io
from training.checkpoint import save_network_snapshot
from training.config import TrainConfig
from training.phases import TrainStep


class TrainingDiverged(UserError):
    """Raised when too many consecutive steps produced non-finite gradients."""


# ---------------------------------------------------------------------------------------------------------------------
# Setup.

def configure_torch(cfg: TrainConfig, device: torch.device) -> None:
    """Determinism, cuDNN and TF32 policy (TF32 off as in the reference: fp32 stays fp32)."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.deterministic
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def select_backend(cfg: TrainConfig, device: torch.device, quiet: bool = False) -> backend.Selection:
    """The run's implementation choices (cfg.impl on `device` in the run's precision), made the process's current
    ones; prints the backend's one line unless quiet."""
    _, dtype = backend.resolve_precision(cfg.precision, device)
    return backend.activate(backend.select(cfg.impl, device, dtype), quiet=quiet)


def open_dataset(cfg: TrainConfig, rank: int = 0) -> tuple[Any, dict]:
    """Resolve the data spec (rank 0 renders a synthetic set first) and open it; check the patch fits."""
    from training.dataset import ImageDataset, resolve_data
    if not cfg.data:
        raise UserError("No training data: pass --data PATH_OR_SPEC (e.g. --data synth:chairs) or a dataset preset "
                        "such as --cfg chairs.")
    if rank == 0:
        path = resolve_data(cfg.data, resolution=cfg.synth_resolution, count=cfg.synth_count)
    dist_utils.barrier()
    if rank != 0:
        path = resolve_data(cfg.data, resolution=cfg.synth_resolution, count=cfg.synth_count)
    dataset = ImageDataset(path, xflip=cfg.mirror, random_seed=cfg.seed)
    if cfg.patch_size > dataset.resolution:
        raise UserError(f"patch_size {cfg.patch_size} is larger than the dataset resolution {dataset.resolution} "
                        f"('{path}'): use --set patch_size={dataset.resolution} or smaller, or higher-resolution data.")
    from training.rendering.camera import max_window_spacing
    top = math.floor(max_window_spacing(dataset.resolution, cfg.patch_size) * 1000) / 1000   # 3 decimals, down
    if cfg.patch_max_spacing > top + 1e-9:
        raise UserError(f"patch_max_spacing {cfg.patch_max_spacing:g} is more than a {cfg.patch_size} x "
                        f"{cfg.patch_size} window of {dataset.resolution} x {dataset.resolution} images allows "
                        f"({top:g}, the whole image in one patch): use --set patch_max_spacing={top:g} or less.")
    kwargs = dict(path=str(path), data=cfg.data, resolution=int(dataset.resolution), xflip=cfg.mirror,
                  use_labels=False, camera=getattr(dataset, "camera", None))
    return dataset, kwargs


def build_networks(cfg: TrainConfig, resolution: int, device: torch.device) -> EasyDict:
    """G, G_ema, D and the augment pipe; identical initial weights on every rank (seeded, then broadcast)."""
    from training.augment import AugmentPipe
    from training.networks.discriminator import Discriminator
    from training.networks.generator import Generator
    torch.manual_seed(cfg.seed)
    G = Generator(**cfg.G_kwargs(resolution)).train().to(device)
    D = Discriminator(**cfg.D_kwargs()).train().to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    augment_pipe = AugmentPipe(**cfg.augment_kwargs()).train().requires_grad_(False).to(device)
    for module in (G, D, G_ema, augment_pipe):
        dist_utils.broadcast_module(module)
    return EasyDict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe)


def describe_networks(cfg: TrainConfig, resolution: int) -> str:
    """Parameter table of G (per top-level child) and D, built on the CPU (for --dry-run and log.txt)."""
    from training.networks.discriminator import Discriminator
    from training.networks.generator import Generator
    rows = []
    for name, net in (("G", Generator(**cfg.G_kwargs(resolution))), ("D", Discriminator(**cfg.D_kwargs()))):
        for child_name, child in net.named_children():
            rows.append([f"{name}.{child_name}", f"{sum(p.numel() for p in child.parameters()):,}"])
        rows.append([f"{name} total", f"{sum(p.numel() for p in net.parameters()):,}"])
    return format_table(rows, ["module", "parameters"])


def setup_run(cfg: TrainConfig, run_dir: Path, device: torch.device, rank: int = 0, world: int = 1,
              resume: dict | None = None, data: tuple[Any, dict] | None = None,
              init: EasyDict | None = None) -> EasyDict:
    """Everything a run needs: dataset, networks, step, data iterator, counters, writers, fixed grid latents.

    `data` is an already opened (dataset, training_set_kwargs) pair from open_dataset, or None to open it here.
    `init`: the snapshot a fine-tuning run starts from (training.finetune.load_start), or None.
    """
    configure_torch(cfg, device)
    select_backend(cfg, device, quiet=rank != 0)
    training_stats.default_collector.reset()
    dataset, set_kwargs = data if data is not None else open_dataset(cfg, rank)
    nets = build_networks(cfg, set_kwargs["resolution"], device)
    if init is not None:
        from training.finetune import apply_start
        apply_start(nets, init)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * world + rank)
    step = TrainStep(cfg, nets.G, nets.D, nets.G_ema, nets.augment_pipe, device, generator, world=world)
    run = EasyDict(cfg=cfg, run_dir=Path(run_dir), device=device, rank=rank, world=world, dataset=dataset,
                   training_set_kwargs=set_kwargs, step=step, generator=generator, cur_nimg=0, cur_tick=0,
                   batch_idx=0, stop_signal=None, writer=None, stats_file=None, **nets)
    if resume is not None:
        restore_state(run, resume)
    run.tick_start_nimg = run.cur_nimg
    run.g_fingerprint = param_fingerprint(run.G)   # the frozen-G checks at each tick's end (maintenance)
    run.g_ema_fingerprint = param_fingerprint(run.G_ema)
    from training.dataset import InfiniteSampler, iterate_reals
    from training.fast_step import wrap_step_for_speed
    start = run.batch_idx * cfg.batch_gpu   # resume: skip what this rank's index stream already delivered
    indices = InfiniteSampler(dataset, rank=rank, num_replicas=world, seed=cfg.seed, start=start)
    workers = 0 if cfg.deterministic else cfg.workers
    run.step, run.data_iter, run.step_path = wrap_step_for_speed(
        step, dataset, cfg, device, indices, lambda: iterate_reals(
            dataset, cfg.batch_gpu, device, seed=cfg.seed, rank=rank, world=world, num_workers=workers, start=start))
    grid_gen = torch.Generator().manual_seed(cfg.grid_seed)
    n_grid = cfg.grid_w * cfg.grid_h
    run.grid_z = nets.G.sample_z(n_grid, generator=grid_gen, device="cpu").to(device)          # [n, z_dim]
    run.grid_c2w = nets.G.sample_poses(n_grid, generator=grid_gen, device="cpu").to(device)    # [n, 4, 4]
    if rank == 0:
        _open_writers(run)
        if resume is None:
            save_reals_grid(run)
            save_fakes_grid(run, run.run_dir / "fakes_init.png")
    return run


def _open_writers(run: EasyDict) -> None:
    from torch.utils.tensorboard import SummaryWriter
    run.stats_file = open(run.run_dir / "stats.jsonl", "a", encoding="utf-8")
    run.writer = SummaryWriter(str(run.run_dir))


# ---------------------------------------------------------------------------------------------------------------------
# Image grids.

def save_reals_grid(run: EasyDict) -> None:
    """reals.png: the first grid_w * grid_h images of a fixed (seeded) shuffle of the dataset."""
    from training.video import save_image_grid
    n = min(run.cfg.grid_w * run.cfg.grid_h, len(run.dataset))
    idx = np.random.default_rng(run.cfg.grid_seed).permutation(len(run.dataset))[:n]
    images = np.stack([run.dataset[int(i)][0] for i in idx]).transpose(0, 2, 3, 1)         # [n, H, W, 3] uint8
    save_image_grid(images, run.run_dir / "reals.png", grid=(run.cfg.grid_w, run.cfg.grid_h))


@torch.no_grad()
def save_fakes_grid(run: EasyDict, path: Path) -> None:
    """Full-resolution G_ema renders of the fixed grid latents and poses (no jitter, no noise), in ray chunks."""
    from training.video import save_image_grid
    images = []
    for z, c2w in zip(run.grid_z.split(run.cfg.batch_gpu), run.grid_c2w.split(run.cfg.batch_gpu)):
        images.append(run.G_ema(z, c2w, ray_chunk=run.cfg.ray_chunk, mlp="torch").float().cpu())   # [b, 3, H, W]
    save_image_grid(torch.cat(images), path, grid=(run.cfg.grid_w, run.cfg.grid_h))


# ---------------------------------------------------------------------------------------------------------------------
# Training states and snapshots.

def collect_state(run: EasyDict) -> dict:
    """The complete resumable state (plain tensors/containers; loads with weights_only=True)."""
    rng = state_io.rng_state(run.generator, run.device)
    if run.world > 1:
        all_rng: list = [None] * run.world
        torch.distributed.all_gather_object(all_rng, rng)
    else:
        all_rng = [rng]
    return {"G": run.G.state_dict(), "G_ema": run.G_ema.state_dict(), "D": run.D.state_dict(),
            "augment_pipe": run.augment_pipe.state_dict(), "step": run.step.state_dict(),
            "counters": {"cur_nimg": run.cur_nimg, "cur_tick": run.cur_tick, "batch_idx": run.batch_idx},
            "rng": all_rng, "stats": training_stats.default_collector.state_dict(),
            "config": run.cfg.to_dict(), "training_set_kwargs": json.loads(json.dumps(run.training_set_kwargs))}


def restore_state(run: EasyDict, data: dict) -> None:
    """Load a state from collect_state into a freshly set-up run (same world size for exact RNG continuation)."""
    for key in ("G", "G_ema", "D", "augment_pipe"):
        run[key].load_state_dict(data[key])
    run.step.load_state_dict(data["step"])
    for key in ("cur_nimg", "cur_tick", "batch_idx"):
        run[key] = int(data["counters"][key])
    rng = data["rng"]
    state_io.set_rng_state(rng[run.rank] if run.rank < len(rng) else rng[0], run.generator, run.device)
    training_stats.default_collector.load_state_dict(data.get("stats", {}), device=run.device)


def save_checkpoints(run: EasyDict, snapshot: bool = True) -> None:
    """network-snapshot-NNNNNN.pkl (rank 0) and training-state-NNNNNN.pt (state gathered from all ranks)."""
    state = collect_state(run)
    if run.rank != 0:
        return
    name = state_io.snapshot_name(run.cur_nimg)
    if (run.run_dir / f"training-state-{name}.pt").exists():
        print(f"Note: replacing the kimg-{name} snapshot/state of this run with the newer one at kimg "
              f"{run.cur_nimg / 1000:.3f} (file names count whole kimg).", flush=True)
    if snapshot:
        save_network_snapshot(run.run_dir / f"network-snapshot-{name}.pkl", G=run.G, G_ema=run.G_ema, D=run.D,
                              augment_pipe=run.augment_pipe, training_set_kwargs=run.training_set_kwargs,
                              config=run.cfg.to_dict(), kimg=run.cur_nimg / 1000)
    state_io.save_training_state(run.run_dir / f"training-state-{name}.pt", state)


def run_metrics(run: EasyDict) -> dict:
    """Evaluate cfg.metrics on G_ema for the snapshot just written (rank 0)."""
    from metrics.metric_main import evaluate_snapshot_metrics
    from training.dataset import ImageDataset
    if run.get("metric_dataset") is None:  # all reals, no x-flips (as the reference's metrics)
        run.metric_dataset = ImageDataset(run.training_set_kwargs["path"], xflip=False)
    name = f"network-snapshot-{state_io.snapshot_name(run.cur_nimg)}.pkl"
    results = evaluate_snapshot_metrics(run.cfg.metrics, run.G_ema, run.metric_dataset, run.device, run.run_dir, name,
                                        kimg=run.cur_nimg / 1000, seed=run.cfg.seed, ray_chunk=run.cfg.ray_chunk,
                                        detector=run.cfg.metrics_detector or None)
    out = {}
    for metric, record in results.items():
        for key, value in record.get("results", {}).items():
            if isinstance(value, (int, float)):
                out[f"Metrics/{key}"] = float(value)
        print(f"Metric {metric}: {json.dumps(record.get('results', {}))}")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Maintenance (once per tick).

def _peak_mem_gb(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def status_line(run: EasyDict, stats: dict, tick_sec: float, maint_sec: float, peak_gb: float) -> str:
    """One line per tick: tick, kimg, time, sec/kimg, img/s, maintenance, peak GPU memory, p, G and D loss."""
    tick_kimg = (run.cur_nimg - run.tick_start_nimg) / 1000
    mean = lambda k: stats.get(k, {}).get("mean", float("nan"))  # noqa: E731
    p = float(run.augment_pipe.p) if hasattr(run.augment_pipe, "p") else 0.0
    return (f"tick {run.cur_tick:<5d} kimg {run.cur_nimg / 1000:<9.3f} time {time.time() - run.start_time:<8.1f} "
            f"sec/tick {tick_sec:<7.1f} sec/kimg {tick_sec / max(tick_kimg, 1e-9):<7.2f} "
            f"img/s {tick_kimg * 1000 / max(tick_sec, 1e-9):<7.1f} maint {maint_sec:<5.1f} "
            f"gpumem {peak_gb:<5.2f} augment {p:<5.3f} G_loss {mean('Loss/G/loss'):<7.4f} "
            f"D_loss {mean('Loss/D/loss'):<7.4f}"
            + (f" scale {mean('PatchScale/scale'):<5.3f}" if "PatchScale/scale" in stats else ""))


def write_stats(run: EasyDict, stats: dict, extra: dict[str, float]) -> None:
    """Append one stats.jsonl line and the TensorBoard scalars (x axis = kimg)."""
    record = {**stats, **{k: {"num": 1, "mean": v, "std": 0.0} for k, v in extra.items()}, "timestamp": time.time()}
    run.stats_file.write(json.dumps(record) + "\n")
    run.stats_file.flush()
    global_step = int(run.cur_nimg / 1000)
    for name, value in {**{k: v["mean"] for k, v in stats.items()}, **extra}.items():
        run.writer.add_scalar(name, value, global_step=global_step)
    run.writer.flush()


def check_bad_steps(run: EasyDict) -> int:
    """Once per tick: abort after max_bad_steps consecutive steps with non-finite gradients."""
    longest, total = run.step.read_bad_steps()
    if longest >= run.cfg.max_bad_steps:
        raise TrainingDiverged(
            f"Training diverged: {longest} consecutive steps had non-finite gradients (max_bad_steps = "
            f"{run.cfg.max_bad_steps}; {total} bad steps in total) at kimg {run.cur_nimg / 1000:.3f}. Resume from an "
            f"earlier training-state with a lower learning rate or a larger r1_gamma, or try --precision fp32.")
    return total


R1_PENALTY_WARN = 100.0   # healthy study runs stayed below ~5; diverging D's passed 50-1,000 before blowing up


def divergence_warning(stats: dict) -> str | None:
    """One line when this tick's statistics show the discriminator diverging, else None.

    Signs (measured on the synthetic cars set, docs/RESULTS.md): D's dynamic fp16 loss scale below 1 (its gradients
    overflow again and again), or a mean R1 penalty above R1_PENALTY_WARN.
    """
    mean = lambda k: stats[k]["mean"] if k in stats else None  # noqa: E731
    signs = []
    scale = mean("Progress/loss_scale_D")
    if scale is not None and scale < 1.0:
        signs.append(f"D's fp16 loss scale fell to {scale:.3g}")
    r1 = mean("Loss/r1_penalty")
    if r1 is not None and (r1 != r1 or r1 > R1_PENALTY_WARN):
        signs.append(f"the mean R1 penalty is {r1:.4g}")
    if not signs:
        return None
    return (f"Warning: {' and '.join(signs)}: the discriminator is probably diverging (README, Troubleshooting). "
            f"Resume an earlier training state with --set d_lr=0.001 (in the runs we measured it delayed or prevented "
            f"the divergence).")


EMPTY_OPACITY = 0.01   # mean pixel opacity under which a render shows no object (real objects cover 10-40 %)
EMPTY_PROBES = 8       # grid latents and poses rendered each tick for the check


@torch.no_grad()
def probe_opacity(run: EasyDict, return_images: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean pixel opacity of G_ema's full renders of the first EMPTY_PROBES grid latents and poses (no jitter, no
    noise): [<= EMPTY_PROBES] fp32 on the CPU. Costs a few full renders per tick (on the metrics' MLP path).
    return_images: also the renders [<= EMPTY_PROBES, 3, H, W] (on the device)."""
    z, c2w = run.grid_z[:EMPTY_PROBES], run.grid_c2w[:EMPTY_PROBES]
    img, aux = run.G_ema(z, c2w, ray_chunk=run.cfg.ray_chunk, return_aux=True)
    opacity = aux["opacity"].float().flatten(1).mean(dim=1).cpu()
    return (opacity, img) if return_images else opacity


def probe_reals(run: EasyDict) -> torch.Tensor:
    """The first EMPTY_PROBES images of reals.png's fixed shuffle: float [n, 3, H, W] in [-1, 1] on the device."""
    n = min(EMPTY_PROBES, len(run.dataset))
    idx = np.random.default_rng(run.cfg.grid_seed).permutation(len(run.dataset))[:n]
    images = np.stack([run.dataset[int(i)][0] for i in idx])                                 # [n, 3, H, W] uint8
    return torch.from_numpy(images).to(run.device).float() / 127.5 - 1


@torch.no_grad()
def whole_image_scores(run: EasyDict, renders: torch.Tensor) -> dict[str, float]:
    """D's view of whole frames, once per tick: its mean logit on G_ema's probe renders and on fixed reals, both
    resampled to one P x P patch spanning the frame (anti-aliased; a scale-aware D is told scale 1). A generator
    that draws rows of repeated parts or empty scenes shows a wide gap (real - fake) long before FID is computed;
    for a D trained only on full-resolution crops (the reference) the whole frame is out of its training range."""
    from training.patch_scale import resample_patches, whole_frame_windows, window_features
    if run.get("whole_reals") is None:
        run.whole_reals = probe_reals(run)
    cfg, P = run.cfg, run.cfg.patch_size
    out = {}
    for name, images in (("fake", renders.float()), ("real", run.whole_reals)):
        group = min(cfg.mbstd_group, images.shape[0])
        images = images[:images.shape[0] - images.shape[0] % group]       # D's minibatch-stddev groups divide it
        n, R = images.shape[0], images.shape[-1]
        win = whole_frame_windows(n, R, P, device=images.device)
        cond = {"patch": window_features(win, R, P)} if cfg.d_patch_cond else {}
        out[name] = float(run.D(resample_patches(images, win, P), **cond).float().mean())
    return {"Progress/D_whole_fake": out["fake"], "Progress/D_whole_real": out["real"],
            "Progress/D_whole_gap": out["real"] - out["fake"]}


@torch.no_grad()
def save_patches_grid(run: EasyDict, path: Path) -> None:
    """What D judges under the patch-scale law now: grid_w real patches (top row) and G_ema's renders of grid_w
    windows of the same law (bottom row), drawn from a fixed seed. Only for runs with a patch-scale law."""
    from training.augment import crop_patches
    from training.patch_scale import resample_patches
    from training.video import save_image_grid
    law = run.step.loss.patch_law
    n, P = min(run.cfg.grid_w, EMPTY_PROBES), run.cfg.patch_size
    if run.get("whole_reals") is None:
        run.whole_reals = probe_reals(run)
    n = min(n, run.whole_reals.shape[0])
    gen = torch.Generator(device=run.device).manual_seed(run.cfg.grid_seed)
    win = law.sample(n, generator=gen)
    reals = run.whole_reals[:n]
    real = crop_patches(reals, win, P) if win.shape[1] == 2 else resample_patches(reals, win, P)
    fake = run.G_ema(run.grid_z[:n], run.grid_c2w[:n], window=law.sample(n, generator=gen), patch_size=P)
    save_image_grid(torch.cat([real, fake.float()]).cpu(), path, grid=(n, 2))


def empty_render_warning(opacity: torch.Tensor) -> str | None:
    """One line when every probe render is empty (mean opacity below EMPTY_OPACITY): G has collapsed to scenes
    without density (measured on the cars set at d_lr=0.0025, docs/study/DISCUSSION.md), which D tells from reals
    without effort, so FID stops improving."""
    if opacity.numel() == 0 or float(opacity.max()) >= EMPTY_OPACITY:
        return None
    return (f"Warning: G_ema renders empty scenes (mean opacity at most {float(opacity.max()):.2g} in all "
            f"{opacity.numel()} probe renders): the generator has probably collapsed to no density (README, "
            f"Troubleshooting). Restart with another --seed or with --set d_lr=0.001, or resume a training state "
            f"from before the collapse with --set d_lr=0.001.")


def param_fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """Per-parameter L2 norms [n] (fp32, on the parameters' device). Training moves them every step; the same
    fingerprint at the start and the end of a tick means no parameter changed."""
    params = [p.detach().float() for p in module.parameters()]
    return torch.stack(torch._foreach_norm(params)) if params else torch.zeros([0])


def frozen_g_warning(before: torch.Tensor | None, after: torch.Tensor, steps: int, name: str = "G") -> str | None:
    """One line when none of `name`'s parameters (G or G_ema) moved during a tick of `steps` > 0 optimiser steps."""
    if before is None or steps <= 0 or before.shape != after.shape or not torch.equal(before, after):
        return None
    why = "zero gradients or skipped optimiser steps" if name == "G" else "its EMA update does not run"
    return (f"Warning: none of {name}'s {after.numel()} parameter tensors changed during this tick ({steps} steps): "
            f"{name} is not learning ({why}; FID stays at its first value). This is a bug or a broken GPU setup, "
            f"not a training dynamic: stop the run and check the setup as the README's Troubleshooting section "
            f"describes (the GPU tests, or --set impl=reference).")


def maintenance(run: EasyDict, done: bool) -> None:
    """End of a tick: stats sync, status line, logs, grids, snapshots, metrics. All ranks call it."""
    tick_end = time.time()
    tick_sec = tick_end - run.tick_start_time
    bad_total = check_bad_steps(run)
    p = run.augment_pipe.p.detach().float().reshape(()) if hasattr(run.augment_pipe, "p") else torch.zeros([])
    training_stats.report("Progress/augment", p)
    stats = training_stats.default_collector.sync()
    peak_gb = _peak_mem_gb(run.device)
    extra = {"Progress/tick": run.cur_tick, "Progress/kimg": run.cur_nimg / 1000, "Progress/bad_steps": bad_total,
             "Timing/sec_per_tick": tick_sec, "Timing/sec_per_kimg": tick_sec * 1000 / max(run.cur_nimg -
             run.tick_start_nimg, 1), "Timing/maintenance_sec": run.maint_sec, "Resources/peak_gpu_mem_gb": peak_gb}
    steps = (run.cur_nimg - run.tick_start_nimg) // max(run.cfg.batch, 1)
    frozen = []
    for name, key in (("G", "g_fingerprint"), ("G_ema", "g_ema_fingerprint")):
        now = param_fingerprint(run[name])
        frozen.append(frozen_g_warning(run.get(key), now, steps, name))
        run[key] = now
        extra[f"Progress/{name}_frozen"] = float(frozen[-1] is not None)
    if run.rank == 0:
        opacity, renders = probe_opacity(run, return_images=True)
        extra["Progress/G_ema_opacity"] = float(opacity.mean())
        extra.update(whole_image_scores(run, renders))
        empty = empty_render_warning(opacity)
        print(status_line(run, stats, tick_sec, run.maint_sec, peak_gb), flush=True)
        for warning in (divergence_warning(stats), *frozen, empty):
            if warning:
                print(warning, flush=True)
    snap_due = done or (run.cfg.snap > 0 and run.cur_tick % run.cfg.snap == 0)
    image_due = done or (run.cfg.image_snap > 0 and run.cur_tick % run.cfg.image_snap == 0)
    if image_due and run.rank == 0:
        save_fakes_grid(run, run.run_dir / f"fakes{state_io.snapshot_name(run.cur_nimg)}.png")
        if run.step.loss.patch_law is not None:
            save_patches_grid(run, run.run_dir / f"patches{state_io.snapshot_name(run.cur_nimg)}.png")
    if snap_due:
        save_checkpoints(run)
        if run.cfg.metrics and run.rank == 0:
            extra.update(run_metrics(run))
    if run.rank == 0:
        write_stats(run, stats, extra)
    run.frozen_ticks = run.get("frozen_ticks", 0) + 1 if frozen[0] else 0
    if 0 < run.cfg.max_frozen_ticks <= run.frozen_ticks:   # every rank sees the same G: all stop here together
        raise TrainingDiverged(
            f"Training stopped: G did not change in {run.frozen_ticks} consecutive ticks (max_frozen_ticks = "
            f"{run.cfg.max_frozen_ticks}) at kimg {run.cur_nimg / 1000:.3f}, so more steps would not train it. This "
            f"is a bug or a broken GPU setup: check it as the README's Troubleshooting section describes, or try --set "
            f"impl=reference or --precision fp32. --set max_frozen_ticks=0 trains on regardless.")
    dist_utils.barrier()
    run.tick_start_nimg = run.cur_nimg
    run.tick_start_time = time.time()
    run.maint_sec = run.tick_start_time - tick_end


# ---------------------------------------------------------------------------------------------------------------------
# The loop.

def _install_signal_handlers(run: EasyDict) -> dict:
    """SIGTERM/SIGINT set run.stop_signal; the loop then writes a training state and exits cleanly."""
    def handler(signum: int, _frame: Any) -> None:
        run.stop_signal = signum
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. tests driving the loop from a worker thread)
            pass
    return old


def next_tick_end(tick_start_nimg: int, kimg_per_tick: float) -> float:
    """Ticks end on a fixed grid, every kimg_per_tick from 0: the first multiple after the tick's start. A run
    resumed mid-tick (after SIGTERM) or continued past an earlier --kimg therefore snapshots at the same kimg as
    an uninterrupted run (e.g. 50, 100, 150, 200)."""
    period = kimg_per_tick * 1000
    return (math.floor(tick_start_nimg / period + 1e-9) + 1) * period - 1e-6


def train(run: EasyDict) -> None:
    """Run steps until cfg.kimg; maintenance at every tick boundary; stop cleanly on SIGTERM/SIGINT."""
    cfg = run.cfg
    total_nimg = int(round(cfg.kimg * 1000))
    run.start_time = run.tick_start_time = time.time()
    run.maint_sec = 0.0
    while run.cur_nimg < total_nimg:
        run.step(next(run.data_iter), run.batch_idx)
        run.batch_idx += 1
        run.cur_nimg += cfg.batch
        done = run.cur_nimg >= total_nimg
        tick_end = done or run.cur_nimg >= next_tick_end(run.tick_start_nimg, cfg.kimg_per_tick)
        if run.stop_signal is not None:
            save_checkpoints(run, snapshot=False)
            if run.rank == 0:
                print(f"Received signal {run.stop_signal}: wrote training-state-"
                      f"{state_io.snapshot_name(run.cur_nimg)}.pt at kimg {run.cur_nimg / 1000:.3f}; exiting. "
                      f"Continue with --resume auto.", flush=True)
            return
        if tick_end:
            run.cur_tick += 1
            maintenance(run, done)
    if run.rank == 0:
        print(f"Done: {run.cur_nimg / 1000:.3f} kimg in {run.cur_tick} ticks. Run directory: {run.run_dir}", flush=True)


def training_loop(cfg: TrainConfig, run_dir: str | os.PathLike, device: torch.device, rank: int = 0,
                  world: int = 1, resume: dict | None = None, data: tuple[Any, dict] | None = None,
                  init: EasyDict | None = None) -> EasyDict:
    """Set up, train to cfg.kimg (or until a signal), close the writers. Returns the run (for tests)."""
    run_dir = Path(run_dir)
    logger = Logger(str(run_dir / "log.txt"), "a") if rank == 0 else None
    run = None
    if rank == 0:
        print(f"Training options:\n{json.dumps(cfg.to_dict(), indent=2)}", flush=True)
    try:
        run = setup_run(cfg, run_dir, device, rank, world, resume, data, init)
        if rank == 0:
            print(f"Training on {run.dataset.resolution}px data '{run.training_set_kwargs['path']}' "
                  f"({len(run.dataset)} items), {world} process(es), precision {run.step.precision}, "
                  f"{run.step_path}, starting at "
                  f"kimg {run.cur_nimg / 1000:.3f}.", flush=True)
        old_handlers = _install_signal_handlers(run)
        try:
            train(run)
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
    finally:
        if run is not None and run.writer is not None:
            run.writer.close()
            run.stats_file.close()
        if logger is not None:
            logger.close()
    return run
