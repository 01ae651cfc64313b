"""Feature statistics: streaming float64 mean/covariance (+ optional raw features), and the two feature producers.

* `FeatureStats` merges batches with Chan's parallel update (numerically stable, float64, on the features' device).
  The covariance is the population one (divide by n), as in StyleGAN2-ADA.
* `dataset_features`: every image of a dataset (no x-flip), uint8 at native resolution, cached on disk under
  `dnnlib.util.cache_dir()/"metrics"` keyed by dataset hash + detector sha1 + resize mode + count + feature kind.
* `generator_features`: full-resolution G renders without jitter or noise, z and poses drawn from a private seeded
  `torch.Generator` on the device (the global RNG is never touched), quantised like StyleGAN2-ADA. G is a black
  box that renders (its NeRF MLP runs on the path the backend chose).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from dnnlib.util import atomic_write, cache_dir
from metrics.detector import Detector

ProgressFn = Callable[[str, int, int], None]  # (phase label, items done, items total)
LOADER_WORKERS_FROM = 1024  # datasets at least this large are decoded by DataLoader workers


class FeatureStats:
    """Streaming statistics of feature vectors [N, D]: mean/cov in float64 and, if asked, all raw features."""

    def __init__(self, capture_all: bool = False, capture_mean_cov: bool = True, max_items: int | None = None) -> None:
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features: int | None = None
        self._mean: torch.Tensor | None = None   # [D] float64
        self._m2: torch.Tensor | None = None     # [D, D] float64, sum of centred outer products
        self._all: list[torch.Tensor] = []       # list of [n, D] float32 on the CPU

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x: torch.Tensor) -> None:
        """Add a batch of features [n, D] (truncated so that at most max_items are kept)."""
        x = torch.as_tensor(x)
        assert x.ndim == 2, x.shape
        if self.max_items is not None:
            x = x[: max(self.max_items - self.num_items, 0)]
        if x.shape[0] == 0:
            return
        if self.num_features is None:
            self.num_features = x.shape[1]
        assert x.shape[1] == self.num_features, (x.shape, self.num_features)
        if self.capture_all:
            self._all.append(x.detach().to("cpu", torch.float32))
        if self.capture_mean_cov:
            self._merge(x.detach().to(torch.float64))
        self.num_items += x.shape[0]

    def _merge(self, x: torch.Tensor) -> None:
        n_b = x.shape[0]
        mean_b = x.mean(0)                                                    # [D]
        xc = x - mean_b
        m2_b = xc.T @ xc                                                      # [D, D]
        if self._mean is None:
            self._mean, self._m2 = mean_b, m2_b
            return
        n_a = self.num_items
        n = n_a + n_b
        mean_a, m2_a = self._mean.to(x.device), self._m2.to(x.device)
        delta = mean_b - mean_a                                               # [D]
        self._mean = mean_a + delta * (n_b / n)
        self._m2 = m2_a + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)

    def get_mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [D] and population covariance [D, D], both float64."""
        assert self.capture_mean_cov and self._mean is not None, "no mean/cov captured"
        return self._mean, self._m2 / self.num_items

    def get_all(self) -> torch.Tensor:
        """All captured features [N, D] float32 on the CPU."""
        assert self.capture_all, "raw features were not captured"
        return torch.cat(self._all) if self._all else torch.zeros(0, self.num_features or 0)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically as .npz (mean, m2, count and, if captured, the raw features)."""
        arrays: dict[str, np.ndarray] = {"num_items": np.array(self.num_items, dtype=np.int64)}
        if self.capture_mean_cov and self._mean is not None:
            arrays["mean"], arrays["m2"] = self._mean.cpu().numpy(), self._m2.cpu().numpy()
        if self.capture_all:
            arrays["features"] = self.get_all().numpy()

        def _write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        atomic_write(path, _write)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "FeatureStats":
        with np.load(path, allow_pickle=False) as data:
            stats = cls(capture_all="features" in data, capture_mean_cov="mean" in data)
            stats.num_items = int(data["num_items"])
            if stats.capture_mean_cov:
                stats._mean = torch.from_numpy(data["mean"]).to(device)
                stats._m2 = torch.from_numpy(data["m2"]).to(device)
                stats.num_features = stats._mean.shape[0]
            if stats.capture_all:
                stats._all = [torch.from_numpy(data["features"])]
                stats.num_features = stats._all[0].shape[1]
        return stats


def stats_cache_path(dataset_hash: str, detector: Detector, count: int, kind: str, name: str = "data") -> Path:
    """Cache file for real-data statistics: the key covers everything that changes the numbers."""
    key = json.dumps({"dataset_hash": dataset_hash, "detector_sha1": detector.sha1, "resize": detector.resize,
                      "count": count, "kind": kind}, sort_keys=True)
    digest = hashlib.md5(key.encode("utf-8")).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64]
    return cache_dir() / "metrics" / f"{safe}-{digest}.npz"


def dataset_features(dataset: torch.utils.data.Dataset, detector: Detector, batch_size: int = 64,
                     max_items: int | None = None, capture_all: bool = False, cache: bool = True,
                     progress: ProgressFn | None = None, label: str = "reals") -> FeatureStats:
    """Statistics of the first `max_items` (default all) images of `dataset`, in order; cached when possible.

    Items are (uint8 [C, H, W], label) pairs; an ImageDataset's mirrored second half (xflip) is never used.
    """
    total = int(getattr(dataset, "num_images", len(dataset)))  # ImageDataset: x-flipped copies (if any) excluded
    count = total if max_items is None else min(max_items, total)
    dataset_hash = getattr(dataset, "dataset_hash", None)
    path = None
    if cache and dataset_hash is not None and detector.sha1 is not None:
        name = getattr(dataset, "name", "data")
        kinds = ["all+meancov"] if capture_all else ["meancov", "all+meancov"]  # raw features also serve mean/cov
        for kind in kinds:
            if stats_cache_path(dataset_hash, detector, count, kind, name).is_file():
                return FeatureStats.load(stats_cache_path(dataset_hash, detector, count, kind, name), detector.device)
        path = stats_cache_path(dataset_hash, detector, count, kinds[0], name)
    stats = FeatureStats(capture_all=capture_all, max_items=count)
    for images in _image_batches(dataset, count, batch_size):
        stats.append(detector(images))
        if progress is not None:
            progress(label, stats.num_items, count)
    if path is not None:
        stats.save(path)
    return stats


def _image_batches(dataset: torch.utils.data.Dataset, count: int, batch_size: int) -> Iterable[torch.Tensor]:
    """Items 0..count-1 in order as uint8 [b, C, H, W] batches; large sets decode in worker processes."""
    workers = min(4, (os.cpu_count() or 1) // 2) if count >= LOADER_WORKERS_FROM else 0
    subset = torch.utils.data.Subset(dataset, range(count))
    # A private generator: the loader's base seed must not come from (and disturb) the global RNG.
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=_collate_images, generator=torch.Generator().manual_seed(0))


def _collate_images(batch: list) -> torch.Tensor:
    """(uint8 [C, H, W], label) items -> uint8 [N, C, H, W]."""
    return torch.stack([torch.as_tensor(np.asarray(item[0] if isinstance(item, tuple) else item)) for item in batch])


def quantize_images(img: torch.Tensor) -> torch.Tensor:
    """G output in [-1, 1] float -> uint8 with StyleGAN2-ADA's rounding (x * 127.5 + 128, clamp, truncate)."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def generator_features(G: torch.nn.Module, detector: Detector, num_gen: int, device: torch.device | str,
                       seed: int = 0, batch_size: int = 16, ray_chunk: int | None = None,
                       capture_all: bool = False, progress: ProgressFn | None = None,
                       label: str = "fakes") -> FeatureStats:
    """Statistics of `num_gen` full-resolution renders of G (no jitter/noise, psi = 1, poses from the prior).

    All z and poses come from one private torch.Generator seeded with `seed`, drawn before rendering, so the fake
    set depends on (seed, num_gen) only, not on batch_size.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    stats = FeatureStats(capture_all=capture_all, max_items=num_gen)
    z_all = G.sample_z(num_gen, generator=gen, device=device)               # [num_gen, z_dim], drawn up front so
    c2w_all = G.sample_poses(num_gen, generator=gen, device=device)         # [num_gen, 4, 4]  batching can't matter
    for z, c2w in zip(z_all.split(batch_size), c2w_all.split(batch_size)):
        w = G.mapping(z)                                                    # [n, w_dim]
        img = G.synthesis(w, c2w, perturb=False, ray_chunk=ray_chunk)   # [n, 3, H, W], [-1, 1]
        stats.append(detector(quantize_images(img.float())))
        if progress is not None:
            progress(label, stats.num_items, num_gen)
    return stats
