"""Start a training run from a network snapshot's weights: fine-tuning (`train.py --finetune PKL`).

The snapshot is one of ours or one of the authors' released models (training/official.py). The new run takes G,
G_ema and D from it (a fresh D where it has none; G = G_ema where it has only G_ema), fresh optimiser states and
kimg 0. Its configuration starts from the snapshot's network settings (layers, width, rank, samples per ray, camera,
pose prior, pixel-centre convention, patch size, D's shape); presets, --set and flags apply on top. A setting that
changes a tensor's shape (e.g. another patch size for the snapshot's D) is refused before the run starts; one that
only changes how G renders (e.g. fewer samples per ray) is allowed and listed.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from dnnlib.util import EasyDict, UserError


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_start(path: str | os.PathLike) -> EasyDict:
    """The snapshot's networks (CPU), the config keys that describe them, and `origin` (what training_options.json
    records as `started_from`)."""
    from training.checkpoint import load_network_snapshot
    from training.official import network_config
    snap = load_network_snapshot(path, device="cpu")
    G_ema = snap.get("G_ema") or snap.get("G")
    if G_ema is None:
        raise UserError(f"--finetune '{path}': the snapshot holds no generator to start from.")
    config = network_config(G_ema, snap.get("D"), snap.get("training_set_kwargs") or {})
    if snap.get("D") is None and isinstance(snap.get("config"), dict) and "patch_size" in snap.config:
        config["patch_size"] = snap.config["patch_size"]
    origin = {"path": os.path.abspath(path), "sha256": file_sha256(path), "kimg": float(snap.get("kimg", 0.0)),
              "format": (snap.get("origin") or {}).get("format") or snap.get("format") or "hypernerfgan-snapshot",
              "modules": [k for k in ("G", "G_ema", "D") if snap.get(k) is not None]}
    if snap.get("origin"):
        origin["w_avg"] = snap.origin["w_avg"]
    return EasyDict(G=snap.get("G") or G_ema, G_ema=G_ema, D=snap.get("D"), config=config, origin=origin)


def _shape_mismatches(ours: torch.nn.Module, theirs: torch.nn.Module) -> list[str]:
    mine, other = ours.state_dict(), theirs.state_dict()
    out = [f"'{k}' {list(v.shape)} vs the snapshot's {list(other[k].shape) if k in other else 'none'}"
           for k, v in mine.items() if k not in other or other[k].shape != v.shape]
    return out + [f"'{k}' only in the snapshot" for k in other if k not in mine]


def check_start(cfg: Any, start: EasyDict, resolution: int) -> list[str]:
    """UserError when the run's networks cannot take the snapshot's tensors; else notes on the settings in which
    the run differs from the snapshot (each 'name RUN_VALUE vs SNAPSHOT_VALUE')."""
    from training.networks.discriminator import Discriminator
    from training.networks.generator import Generator
    with torch.random.fork_rng(devices=[]):            # throwaway networks: their init leaves the RNG alone
        G, D = Generator(**cfg.G_kwargs(resolution)), Discriminator(**cfg.D_kwargs())
    problems = _shape_mismatches(G, start.G_ema)
    if start.D is not None:
        problems += [f"D {p}" for p in _shape_mismatches(D, start.D)]
    if problems:
        raise UserError(f"--finetune: this run's networks do not fit the snapshot's tensors ({'; '.join(problems[:4])}"
                        f"{'; ...' if len(problems) > 4 else ''}). The snapshot's settings are the base of the config; "
                        f"drop the presets or --set values that change layers, width, rank, z/w size or the patch "
                        f"size (D), or start without --finetune.")
    run_kwargs, snap_kwargs = cfg.G_kwargs(resolution), start.G_ema.init_kwargs
    notes = [f"{k} {run_kwargs[k]} vs {snap_kwargs[k]}" for k in run_kwargs
             if k in snap_kwargs and _differs(run_kwargs[k], snap_kwargs[k])]
    if start.D is not None:
        d_run, d_snap = cfg.D_kwargs(), start.D.init_kwargs
        notes += [f"D {k} {d_run[k]} vs {d_snap[k]}" for k in d_run if k in d_snap and _differs(d_run[k], d_snap[k])]
    return notes


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) != float(b)
    return a != b


@torch.no_grad()
def apply_start(nets: EasyDict, start: EasyDict) -> None:
    """Copy the snapshot's weights into freshly built G, G_ema (and D where the snapshot has one)."""
    for key, source in (("G", start.G), ("G_ema", start.G_ema), ("D", start.D)):
        if source is not None:
            nets[key].load_state_dict(source.state_dict(), strict=True)
