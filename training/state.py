"""Run directories and the resumable training state (`training-state-NNNNNN.pt`).

Run directories: a new run is `<outdir>/<NNNNN>-<desc>` with NNNNN one above the highest existing id; an existing
directory is never reused by a new run. `--resume auto` continues IN an existing run directory: `--outdir` is either
that run directory itself, or a runs root whose newest run (highest id) holding a training state is picked.

The training state is a plain dict of tensors, numbers, strings and state dicts, saved with torch.save and loadable
with `torch.load(weights_only=True)`: G, G_ema, D, augment pipe, both optimisers, loss scalers, counters, all RNG
states (torch CPU/CUDA, the step generator, the data sampler position) and the statistics accumulators.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from dnnlib.util import UserError, atomic_write_bytes

STATE_FORMAT = "hypernerfgan-training-state/1"
STATE_RE = re.compile(r"^training-state-(\d+)\.pt$")
RUN_RE = re.compile(r"^(\d+)-")


def snapshot_name(cur_nimg: int) -> str:
    return f"{cur_nimg // 1000:06d}"


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "training_options.json").is_file() or any(STATE_RE.match(f.name) for f in _files(p))


def _files(p: Path) -> list[Path]:
    return [f for f in p.iterdir() if f.is_file()] if p.is_dir() else []


def check_outdir(outdir: str | os.PathLike) -> None:
    """UserError unless `outdir` is a writable folder or can be created as one (nothing is created here)."""
    path = Path(outdir)
    if path.exists() and not path.is_dir():
        raise UserError(f"--outdir '{outdir}' exists and is not a folder: choose another --outdir.")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--outdir '{outdir}' cannot be created: '{parent}' is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--outdir '{outdir}': the folder '{parent}' is not writable. Choose another --outdir.")


def new_run_dir(outdir: str | os.PathLike, desc: str) -> Path:
    """Create `<outdir>/<NNNNN>-<desc>` with a fresh id (never an existing directory, also when several processes
    start at once: mkdir is atomic, and a taken id moves on to the next)."""
    root = Path(outdir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        while True:
            ids = [int(m.group(1)) for d in root.iterdir() if d.is_dir() and (m := RUN_RE.match(d.name))]
            run_dir = root / f"{max(ids, default=-1) + 1:05d}-{desc}"
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:  # another process took this id meanwhile
                continue
    except OSError as exc:
        raise UserError(f"Cannot create a run directory under --outdir '{outdir}' ({exc.strerror or exc}): choose a "
                        f"writable --outdir.") from exc


def latest_state(run_dir: str | os.PathLike) -> Path | None:
    """The training state with the highest kimg in a run directory (or None)."""
    states = [(int(m.group(1)), f) for f in _files(Path(run_dir)) if (m := STATE_RE.match(f.name))]
    return max(states)[1] if states else None


def find_resume(outdir: str | os.PathLike) -> tuple[Path, Path]:
    """For --resume auto: (run_dir, newest state). `outdir` is a run dir or a runs root (newest run with a state)."""
    root = Path(outdir)
    if is_run_dir(root):
        state = latest_state(root)
        if state is None:
            raise UserError(f"--resume auto: run directory '{root}' holds no training-state-*.pt to resume from.")
        return root, state
    runs = sorted(((int(m.group(1)), d) for d in (root.iterdir() if root.is_dir() else [])
                   if d.is_dir() and (m := RUN_RE.match(d.name)) and latest_state(d) is not None), reverse=True)
    if not runs:
        raise UserError(f"--resume auto: no run directory with a training-state-*.pt under '{root}'. Pass the run "
                        f"directory as --outdir, a state file with --resume PATH, or drop --resume to start anew.")
    run_dir = runs[0][1]
    return run_dir, latest_state(run_dir)


def resolve_resume_path(path: str | os.PathLike) -> Path:
    """For --resume PATH: a training-state file, or a run directory (its newest state)."""
    p = Path(path)
    if p.is_dir():
        state = latest_state(p)
        if state is None:
            raise UserError(f"--resume {p}: the directory holds no training-state-*.pt.")
        return state
    if not p.is_file():
        raise UserError(f"--resume {p}: no such file. Pass a training-state-NNNNNN.pt, a run directory, or 'auto'.")
    return p


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save `state` (+ format tag) to memory, then write it atomically (a full disk fails cleanly)."""
    data = {"format": STATE_FORMAT, **state}
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read through training.checkpoint.read_data_file (never runs code from the file); UserError for anything that
    is not our state file."""
    from training.checkpoint import read_data_file
    data = read_data_file(path, "training state")
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise UserError(f"'{path}' is not a training state of this project (expected format '{STATE_FORMAT}'). "
                        f"Pass a training-state-NNNNNN.pt written by train.py, or a run directory.")
    return data


def _saved_presets(state: dict[str, Any], state_path: Path) -> list[str] | None:
    options = Path(state_path).parent / "training_options.json"
    if "presets" in state and isinstance(state["presets"], list):
        return [str(p) for p in state["presets"]]
    try:
        presets = json.loads(options.read_text(encoding="utf-8")).get("presets")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(p) for p in presets] if isinstance(presets, list) else None


def _shape_mismatch(saved: Any, module: torch.nn.Module) -> str | None:
    """The first tensor of `module`'s state dict that the saved state dict lacks or holds with another shape."""
    if not isinstance(saved, dict):
        return "(no state dict)"
    for name, ref in module.state_dict().items():
        got = saved.get(name)
        if not isinstance(got, torch.Tensor):
            return f"'{name}' is missing"
        if got.shape != ref.shape:
            return f"'{name}' is {list(got.shape)} in the state but {list(ref.shape)} here"
    extra = sorted(set(saved) - set(module.state_dict()))
    return f"'{extra[0]}' is in the state only" if extra else None


def check_resume_compatible(state: dict[str, Any], state_path: str | os.PathLike, cfg: Any, presets: list[str],
                            resolution: int) -> None:
    """Refuse (UserError naming both sides) to resume a state written with other presets, at another resolution, or
    for networks of other shapes than the ones `cfg` builds. `presets`: this run's --cfg list (empty: the saved
    configuration was reused, so the presets match by construction)."""
    state_path = Path(state_path)
    saved_res = (state.get("training_set_kwargs") or {}).get("resolution")
    if isinstance(saved_res, int) and saved_res != int(resolution):
        raise UserError(f"--resume: the training state '{state_path}' was trained on {saved_res}x{saved_res} images, "
                        f"but this run's data is {resolution}x{resolution}. Resume with the dataset of that run, or "
                        f"start a new run without --resume.")
    saved = _saved_presets(state, state_path)
    if presets and saved is not None and list(presets) != saved:
        raise UserError(f"--resume: the training state '{state_path}' was written by a run with --cfg "
                        f"{','.join(saved) or '(none)'}, but this run asks for --cfg {','.join(presets)}. Resume with "
                        f"the same --cfg (or none, to reuse the saved configuration), or start a new run without "
                        f"--resume.")
    from training.networks.discriminator import Discriminator
    from training.networks.generator import Generator
    with torch.random.fork_rng(devices=[]):  # the throwaway networks' init must not move the global RNG
        for key, module in (("G", Generator(**cfg.G_kwargs(resolution))), ("D", Discriminator(**cfg.D_kwargs()))):
            problem = _shape_mismatch(state.get(key), module)
            if problem is not None:
                raise UserError(f"--resume: the training state '{state_path}' holds a {key} of another shape than "
                                f"this run's configuration builds ({problem}); it was written with other network "
                                f"options. Resume with the options of that run, or start a new run without --resume.")
