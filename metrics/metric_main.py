"""Metric registry (protocol in the name), metric evaluation for generators and image sets, and jsonl results.

Names: `fid{N}k_full`, `kid{N}k_full`, `pr{N}k{K}_full` (N thousand fakes vs every real image, no x-flip; K = k of the
k-NN radii), e.g. fid1k_full, fid50k_full, kid1k_full, pr50k3_full. Fakes are full-resolution renders of G (see
feature_stats.generator_features): the same `seed` gives the same z/poses at every snapshot. Real statistics are
cached on disk. `compare_datasets` measures real-vs-real noise floors: all of A plays the reals, the first
min(N, len(B)) images of B (in dataset order) play the fakes.
Each evaluated metric can be appended as one JSON line to `<run dir>/metric-<name>.jsonl`; a generator metric's record
says which NeRF MLP path rendered its fakes (`mlp`: 'fused' = the fused Triton kernel, 'torch' = the PyTorch path), as
the generator reports it (`render_mlp`; the backend chooses).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from dnnlib.util import UserError, atomic_write_text
from metrics.detector import Detector, get_detector
from metrics.feature_stats import FeatureStats, ProgressFn, dataset_features, generator_features
from metrics.fid import fid_from_stats
from metrics.kid import kernel_inception_distance
from metrics.precision_recall import precision_recall

KNOWN_METRICS = ("fid1k_full", "fid5k_full", "fid10k_full", "fid50k_full", "kid1k_full", "kid10k_full",
                 "kid50k_full", "pr1k3_full", "pr50k3_full")
_NAME_RE = re.compile(r"(fid|kid)(\d+)k_full|pr(\d+)k(\d+)_full")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str            # 'fid' | 'kid' | 'pr'
    num_fake: int        # fakes (or images of the second set)
    k: int = 0           # k-NN size for 'pr'

    @property
    def needs_features(self) -> bool:
        return self.kind in ("kid", "pr")


def list_valid_metrics() -> list[str]:
    return list(KNOWN_METRICS)


def parse_metric(name: str) -> MetricSpec:
    """Metric name -> MetricSpec. Raises UserError listing the valid names."""
    m = _NAME_RE.fullmatch(name.strip())
    if m is None or any(int(g) < 1 for g in m.groups()[1:] if g is not None):
        raise UserError(f"Unknown metric '{name}'. Valid metrics: {', '.join(KNOWN_METRICS)} "
                        f"(or the patterns fid<N>k_full, kid<N>k_full, pr<N>k<K>_full).")
    if m.group(1):
        return MetricSpec(name=name.strip(), kind=m.group(1), num_fake=int(m.group(2)) * 1000)
    return MetricSpec(name=name.strip(), kind="pr", num_fake=int(m.group(3)) * 1000, k=int(m.group(4)))


def parse_metric_list(spec: str | list[str]) -> list[str]:
    """'fid1k_full,kid1k_full' -> validated names (duplicates removed, order kept)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"No metric given. Valid metrics: {', '.join(KNOWN_METRICS)}.")
    for n in names:
        parse_metric(n)
    return list(dict.fromkeys(names))


def _results(spec: MetricSpec, real: FeatureStats, fake: FeatureStats, seed: int,
             device: torch.device) -> dict[str, float]:
    if spec.kind == "fid":
        return {spec.name: fid_from_stats(real, fake)}
    if spec.kind == "kid":
        kid = kernel_inception_distance(real.get_all(), fake.get_all(), seed=seed, device=device)
        return {spec.name: kid["kid"], f"{spec.name}_std": kid["kid_std"]}
    pr = precision_recall(real.get_all(), fake.get_all(), k=spec.k, device=device)
    return {f"{spec.name}_precision": pr["precision"], f"{spec.name}_recall": pr["recall"]}


def new_memo(names: list[str]) -> dict:
    """A memo for evaluating `names` together: raw features are captured up front where any metric needs them."""
    specs = [parse_metric(n) for n in names]
    return {"capture_all": {"real": any(s.needs_features for s in specs),
                            "fake": {s.num_fake for s in specs if s.needs_features}}}


def _memo(memo: dict | None, key: tuple, need_all: bool, compute: Any) -> FeatureStats:
    """Reuse statistics computed earlier in the same evaluation (raw features also serve mean/cov requests)."""
    if memo is not None and key in memo and (memo[key].capture_all or not need_all):
        return memo[key]
    stats = compute()
    if memo is not None:
        memo[key] = stats
    return stats


def _record(spec: MetricSpec, results: dict, real: FeatureStats, fake: FeatureStats, det: Detector, seed: int,
            t0: float) -> dict[str, Any]:
    return {"name": spec.name, "results": results, "n_real": real.num_items, "n_fake": fake.num_items,
            "detector": det.name, "detector_sha1": det.sha1, "resize": det.resize, "seed": int(seed),
            "seconds": round(time.time() - t0, 3)}


def calc_metric(name: str, G: torch.nn.Module, dataset: torch.utils.data.Dataset, device: torch.device | str,
                detector: Any = None, seed: int = 0, batch_size: int = 16, progress: ProgressFn | None = None,
                cache: bool = True, ray_chunk: int | None = None, memo: dict | None = None) -> dict[str, Any]:
    """Evaluate one metric of generator G against every image of `dataset`.

    Returns dict(name, results {key: value}, n_real, n_fake, detector, detector_sha1, resize, seed, seconds, mlp).
    `memo` (a dict shared across calls) reuses real/fake features between metrics of one snapshot; its optional
    entry 'capture_all' = {'real': bool, 'fake': {num_fake, ...}} asks for raw features up front.
    """
    t0 = time.time()
    spec = parse_metric(name)
    device = torch.device(device)
    mlp_path = G.render_mlp(device) if hasattr(G, "render_mlp") else "torch"     # what the fakes render on
    det = get_detector(detector, device)
    g_res, d_res = getattr(G, "img_resolution", None), getattr(dataset, "resolution", None)
    if g_res is not None and d_res is not None and int(g_res) != int(d_res):
        raise UserError(f"The generator renders {g_res}x{g_res} images but the dataset holds {d_res}x{d_res}; "
                        f"pass --data with a dataset at {g_res} px (e.g. synth:chairs:{g_res}).")
    plan = (memo or {}).get("capture_all", {})
    need_real = spec.needs_features or plan.get("real", False)
    need_fake = spec.needs_features or spec.num_fake in plan.get("fake", ())
    real = _memo(memo, ("real", id(dataset)), need_real, lambda: dataset_features(
        dataset, det, capture_all=need_real, cache=cache, progress=progress))
    fake = _memo(memo, ("fake", spec.num_fake, seed, mlp_path), need_fake, lambda: generator_features(
        G, det, spec.num_fake, device, seed=seed, batch_size=batch_size, ray_chunk=ray_chunk, capture_all=need_fake,
        progress=progress))
    return {**_record(spec, _results(spec, real, fake, seed, device), real, fake, det, seed, t0), "mlp": mlp_path}


def compare_datasets(name: str, dataset_a: torch.utils.data.Dataset, dataset_b: torch.utils.data.Dataset,
                     device: torch.device | str, detector: Any = None, seed: int = 0, batch_size: int = 64,
                     progress: ProgressFn | None = None, cache: bool = True,
                     memo: dict | None = None) -> dict[str, Any]:
    """Metric between two image sets (noise floors): all of A as reals vs the first min(N, len(B)) of B as fakes.

    `memo` as in calc_metric (e.g. new_memo(names)) shares features between several metrics.
    """
    t0 = time.time()
    spec = parse_metric(name)
    device = torch.device(device)
    det = get_detector(detector, device)
    plan = (memo or {}).get("capture_all", {})
    need_a = spec.needs_features or plan.get("real", False)
    need_b = spec.needs_features or spec.num_fake in plan.get("fake", ())
    real = _memo(memo, ("a", id(dataset_a)), need_a, lambda: dataset_features(
        dataset_a, det, batch_size=batch_size, capture_all=need_a, cache=cache, progress=progress, label="set A"))
    fake = _memo(memo, ("b", id(dataset_b), spec.num_fake), need_b, lambda: dataset_features(
        dataset_b, det, batch_size=batch_size, max_items=spec.num_fake, capture_all=need_b, cache=cache,
        progress=progress, label="set B"))
    return _record(spec, _results(spec, real, fake, seed, device), real, fake, det, seed, t0)


def metric_jsonl_path(run_dir: str | os.PathLike, name: str) -> Path:
    return Path(run_dir) / f"metric-{name}.jsonl"


def read_metric_jsonl(run_dir: str | os.PathLike, name: str) -> list[dict]:
    """All records of `metric-<name>.jsonl` in run_dir (empty if absent; unreadable lines are skipped)."""
    path = metric_jsonl_path(run_dir, name)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_metric_jsonl(run_dir: str | os.PathLike, name: str, record: dict) -> Path:
    """Append one JSON line to `<run_dir>/metric-<name>.jsonl` atomically (rewrite via temp file + rename)."""
    path = metric_jsonl_path(run_dir, name)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(record, sort_keys=False) + "\n")
    return path


def evaluate_snapshot_metrics(metrics: list[str], G_ema: torch.nn.Module, dataset: torch.utils.data.Dataset,
                              device: torch.device | str, run_dir: str | os.PathLike, snapshot_name: str,
                              kimg: float, detector: Any = None, seed: int = 0, batch_size: int = 16,
                              progress: ProgressFn | None = None, ray_chunk: int | None = None,
                              cache: bool = True) -> dict[str, dict]:
    """Evaluate `metrics` for one snapshot and append each result to `<run_dir>/metric-<name>.jsonl`.

    Returns {metric name: the JSON record written}. Called by the training loop at each snapshot and by calc_metrics.
    """
    names = parse_metric_list(metrics)
    det = get_detector(detector, device)
    memo = new_memo(names)
    out = {}
    for name in names:
        res = calc_metric(name, G_ema, dataset, device, detector=det, seed=seed, batch_size=batch_size,
                          progress=progress, cache=cache, ray_chunk=ray_chunk, memo=memo)
        record = {"metric": name, **res, "snapshot_pkl": snapshot_name, "kimg": float(kimg),
                  "dataset": str(getattr(dataset, "path", getattr(dataset, "name", ""))),
                  "dataset_hash": getattr(dataset, "dataset_hash", None), "device": str(device),
                  "timestamp": time.time(),
                  "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        append_metric_jsonl(run_dir, name, record)
        out[name] = record
    return out
