"""The fast training path: reals resident on the GPU and the whole step replayed as CUDA graphs.

At the T4 setting (batch 4, 32x32 patches, 32 samples) one step is ~1 ms of GPU work but hundreds of kernel
launches; eager PyTorch spends most of its time launching. `GraphedTrainStep` captures each phase pattern of
`training.phases.TrainStep` (plain / with lazy R1 / with the ADA update) as one CUDA graph and replays it, so a step
costs one small host-to-device index copy and one graph launch. `DeviceImageCache` keeps the training images on the
device as uint8 so reals are gathered inside the graph (no DataLoader in the hot loop); the dataset's index stream
(`InfiniteSampler`, x-flip mirroring included) is unchanged, so sampling, determinism and resume are as in the
reference path. On CPU, or when disabled, the wrapper simply calls the eager step.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torch_utils.cuda_graph import StepGraph


class DeviceImageCache:
    """All images of a dataset as one uint8 tensor [N, C, H, W] on `device`; gathers x-flip-mirrored batches.

    Index semantics follow ImageDataset(xflip=True): index i >= N is image i - N mirrored horizontally.
    """

    def __init__(self, dataset: Any, device: torch.device | str) -> None:
        n = self.distinct_images(dataset)
        first = np.asarray(dataset[0][0])
        images = np.empty((n, *first.shape), dtype=np.uint8)
        for i in range(n):
            images[i] = np.asarray(dataset[i][0])
        self.num_images = n
        self.images = torch.from_numpy(images).to(device)                     # [N, C, H, W] uint8

    @staticmethod
    def distinct_images(dataset: Any) -> int:
        n = getattr(dataset, "num_images", None)
        return int(n) if n is not None else len(dataset) // (2 if getattr(dataset, "xflip", False) else 1)

    @staticmethod
    def estimate_bytes(dataset: Any) -> int:
        shape = getattr(dataset, "image_shape", None)
        n = DeviceImageCache.distinct_images(dataset)
        return int(n * int(np.prod(shape))) if shape is not None else 0

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """index [B] int64 on device (dataset indices, mirrored ones >= N) -> uint8 [B, C, H, W]; no host sync."""
        base = torch.remainder(index, self.num_images)
        flip = (index >= self.num_images).view(-1, 1, 1, 1)
        x = self.images.index_select(0, base)                                  # [B, C, H, W]
        return torch.where(flip, x.flip(-1), x)


class GraphedTrainStep:
    """Wrap a TrainStep: same call signature (batch, step_idx), one CUDA graph per phase pattern.

    `batch` is either a uint8 reals tensor [b, C, H, W] (copied into a static buffer) or, with a DeviceImageCache,
    an int64 tensor [b] of dataset indices on the device (see `device_index_batches`; one device-to-device copy into
    a static index tensor, the gather happens inside the graph).
    """

    def __init__(self, step: Any, batch_gpu: int, image_shape: tuple[int, int, int], device: torch.device,
                 cache: DeviceImageCache | None = None, warmup: int = 3, enabled: bool = True) -> None:
        self.step, self.cache, self.device = step, cache, torch.device(device)
        self.enabled = enabled and self.device.type == "cuda"
        self.warmup = warmup
        self.static_index = torch.zeros([batch_gpu], dtype=torch.int64, device=device)
        self.static_reals = None if cache is not None else torch.zeros([batch_gpu, *image_shape], dtype=torch.uint8,
                                                                      device=device)
        self.pool = torch.cuda.graph_pool_handle() if self.enabled else None
        self.graphs: dict[tuple[bool, bool], StepGraph] = {}

    def __getattr__(self, name: str) -> Any:
        # Everything else (precision, state_dict, read_bad_steps, optimisers, ...) is the wrapped step's.
        return getattr(self.__dict__["step"], name)

    def pattern(self, step_idx: int) -> tuple[bool, bool]:
        """Which optional phases run at this step: (lazy R1, ADA update)."""
        cfg = self.step.cfg
        reg = self.step.is_reg_step(step_idx)
        ada = cfg.aug == "ada" and self.step.augment_pipe is not None and (step_idx + 1) % cfg.ada_interval == 0
        return reg, ada

    def graph_key(self, step_idx: int) -> tuple[bool, bool]:
        """The graph this step replays: its phase pattern."""
        return self.pattern(step_idx)

    def _reals(self) -> torch.Tensor:
        return self.cache.gather(self.static_index) if self.cache is not None else self.static_reals

    def _load(self, batch: torch.Tensor) -> None:
        if self.cache is None:
            self.static_reals.copy_(batch, non_blocking=True)
        else:
            self.static_index.copy_(batch, non_blocking=True)

    def __call__(self, batch: torch.Tensor, step_idx: int) -> None:
        self._load(batch)
        if not self.enabled:
            self.step(self._reals(), step_idx)
            return
        key = self.graph_key(step_idx)
        graph = self.graphs.get(key)
        if graph is None:
            generators = [g for g in (getattr(self.step, "generator", None),) if g is not None]
            graph = StepGraph(lambda i=step_idx: self.step(self._reals(), i), self.device, warmup=self.warmup,
                              pool=self.pool, generators=generators)
            self.graphs[key] = graph
        graph()


def device_index_batches(indices: Any, batch: int, device: torch.device | str, steps_per_upload: int = 512):
    """Turn a host stream of dataset indices into int64 [batch] tensors on `device`, uploading `steps_per_upload`
    steps' worth at a time (one host-to-device copy per upload; each yielded batch is a view, no launch)."""
    it = iter(indices)
    while True:
        chunk = np.fromiter(it, dtype=np.int64, count=batch * steps_per_upload)   # [steps * batch]
        block = torch.from_numpy(chunk).to(device).view(steps_per_upload, batch)   # [steps, batch]
        for row in block:
            yield row


REALS_ON_GPU_GB = 2.0   # with CUDA graphs, reals up to this size stay on the GPU (uint8); larger sets stream


def wrap_step_for_speed(step: Any, dataset: Any, cfg: Any, device: torch.device, sampler_indices: Any,
                        reals_iter_fn: Any) -> tuple[Any, Any, str]:
    """Choose the step path for a run: returns (step callable, batch iterator, one-line description).

    Where the step's backend selection replays it as CUDA graphs (impl=auto on a GPU; not with --deterministic):
    the reals kept on the device when they fit in REALS_ON_GPU_GB (index batches from `sampler_indices`), else reals
    from `reals_iter_fn()` copied into a static buffer. Otherwise the eager step with `reals_iter_fn()`.
    """
    graphs = getattr(step, "selection", None) is not None and step.selection.step_graphs
    if device.type != "cuda" or not graphs or cfg.deterministic:
        why = "CPU" if device.type != "cuda" else ("deterministic" if cfg.deterministic else "impl=reference")
        return step, reals_iter_fn(), f"eager step ({why})"
    nbytes = DeviceImageCache.estimate_bytes(dataset)
    if 0 < nbytes <= REALS_ON_GPU_GB * 2**30:
        cache = DeviceImageCache(dataset, device)
        graphed = GraphedTrainStep(step, cfg.batch_gpu, tuple(dataset.image_shape), device, cache=cache)
        return graphed, device_index_batches(sampler_indices, cfg.batch_gpu, device), \
            f"CUDA graphs, {nbytes / 2**20:.0f} MB of reals on the GPU"
    graphed = GraphedTrainStep(step, cfg.batch_gpu, tuple(dataset.image_shape), device)
    return graphed, reals_iter_fn(), f"CUDA graphs, reals from the data loader ({nbytes / 2**30:.1f} GB > " \
        f"{REALS_ON_GPU_GB:g} GB)"
