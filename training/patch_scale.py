"""Patch-scale laws: which part of the frame D judges, for fakes and reals alike (opt-in; see configs/recipes/).

A P x P patch of an R x R image is a window (row0, col0, spacing): its rays (and the reals' samples) sit at pixel
coordinates row0 + i * spacing, col0 + j * spacing, i, j = 0..P-1 (training.rendering.camera.get_rays). Its scale is
the fraction of the frame it spans between the first and the last ray,

    scale = (P - 1) * spacing / (R - 1),   s_min = (P - 1) / (R - 1) (spacing 1) <= scale <= 1 (the whole frame),

and its offset is uniform over the positions that keep it inside the frame. The laws of the scale:

* fixed: s_min always, with integer starts (the reference's full-resolution crops; the faithful presets).
* uniform: scale ~ U[lo, 1]; lo is the annealed parameter, clamped to [s_min, 1] (GRAF: lo from 0.9 to 0.25;
  EpiGRAF's uniform variant: lo from 1 down to s_min).
* beta: scale = s_min + (1 - s_min) * Beta(1, b); b is the annealed parameter (EpiGRAF, Skorokhodov et al. 2022:
  b from 0.001, almost always the whole frame, to 0.8). Drawn by inverting the CDF: Beta(1, b) = 1 - (1 - u)^(1/b).

The parameter moves linearly from `start` to `end` over the first `anneal_kimg` thousand images shown to D, read
from a device counter (the count at the start of the step, part of the training state), so a resumed run draws
exactly what an uninterrupted one does, and a CUDA graph replay sees the current value without any host sync.

Reals are resampled at the window's positions with an anti-aliasing filter (`resample_patches`): the image's linear
interpolant averaged with a tent around each sample, in all a low-pass with the variance of PIL's antialiased
bilinear filter (a tent of half-width `spacing`). At spacing <= 1 it is plain bilinear interpolation, at
spacing 1 with integer starts an exact crop, and being symmetric it keeps affine images exact: each real sample is
centred where G's ray of the same window meets the frame. A downscaled real is as smooth as the fakes, whose rays
sample a continuous field, so D cannot tell them apart by aliasing.
"""
from __future__ import annotations

import math

import torch

LAWS = ("fixed", "uniform", "beta")


def min_scale(resolution: int, patch_size: int) -> float:
    """The scale of a full-resolution (spacing 1) window: (P - 1) / (R - 1); 1 when P = R."""
    return (patch_size - 1) / (resolution - 1) if resolution > patch_size else 1.0


class PatchScaleLaw:
    """Draws windows [n, 3] float32 (row0, col0, spacing) of one law for `resolution` x `resolution` images.

    nimg: a 0-dim int64 device tensor holding the images shown so far (the annealing clock), or None (clock at 0).
    Everything runs on the device, from the given torch.Generator, with static shapes (CUDA-graph and
    torch.compile friendly). The fixed law returns [n, 2] int64 starts, as camera.sample_windows does at spacing 1.
    """

    def __init__(self, law: str, resolution: int, patch_size: int, start: float, end: float, anneal_kimg: float,
                 nimg: torch.Tensor | None = None) -> None:
        if law not in LAWS:
            raise ValueError(f"unknown patch-scale law {law!r}: use one of {', '.join(LAWS)}")
        if patch_size > resolution:
            raise ValueError(f"patch_size {patch_size} is larger than the image resolution {resolution}")
        self.law, self.resolution, self.patch_size = law, int(resolution), int(patch_size)
        self.start, self.end, self.anneal_kimg = float(start), float(end), float(anneal_kimg)
        self.s_min = min_scale(self.resolution, self.patch_size)
        self.nimg = nimg

    def param(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The annealed parameter now: 0-dim float32 on the clock's device (or `device` without a clock)."""
        if self.nimg is None:
            return torch.tensor(self.start if self.anneal_kimg > 0 else self.end, dtype=torch.float32, device=device)
        if self.anneal_kimg <= 0:
            return torch.full([], self.end, dtype=torch.float32, device=self.nimg.device)
        t = (self.nimg.to(torch.float32) / (1000.0 * self.anneal_kimg)).clamp(0.0, 1.0)
        return self.start + (self.end - self.start) * t

    def param_at(self, kimg: float) -> float:
        """The annealed parameter after `kimg` thousand images, on the host (logs, tests)."""
        t = min(max(kimg / self.anneal_kimg, 0.0), 1.0) if self.anneal_kimg > 0 else 1.0
        return self.start + (self.end - self.start) * t

    def scale_from_uniform(self, u: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """The law's scale for uniform draws u in [0, 1) (inverse CDF): float32 like u, in [s_min, 1]."""
        s_min = self.s_min
        if self.law == "fixed":
            return torch.full_like(u, s_min)
        if self.law == "uniform":
            lo = param.clamp(s_min, 1.0)
            return lo + (1.0 - lo) * u
        b = param.clamp_min(1e-6)
        x = 1.0 - torch.exp(torch.log1p(-u) / b)                            # Beta(1, b) by inverse CDF
        return s_min + (1.0 - s_min) * x

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """n windows on the generator's device: [n, 3] (row0, col0, spacing) float32; [n, 2] int64 for fixed."""
        if generator is not None:
            device = generator.device
        R, P = self.resolution, self.patch_size
        if self.law == "fixed":
            return torch.randint(0, R - P + 1, [n, 2], generator=generator, device=device)
        u = torch.rand([n, 3], generator=generator, device=device, dtype=torch.float32)
        scale = self.scale_from_uniform(u[:, 2], self.param(device).to(device))
        spacing = (scale * (R - 1) / (P - 1)).clamp_min(1.0) if P > 1 else torch.ones_like(scale)
        room = ((R - 1) - (P - 1) * spacing).clamp_min(0.0)                 # free pixels, >= 0
        return torch.stack([u[:, 0] * room, u[:, 1] * room, spacing], dim=1)

    def scale_of(self, windows: torch.Tensor) -> torch.Tensor:
        """Scales [n] float32 of windows [n, 2] (spacing 1) or [n, 3]."""
        return window_scale(windows, self.resolution, self.patch_size)

    def describe(self) -> str:
        if self.law == "fixed":
            return f"fixed (full-resolution {self.patch_size} px crops, scale {self.s_min:.3f})"
        what = "lower bound of the scale" if self.law == "uniform" else "Beta(1, b) parameter b"
        return (f"{self.law}, {what} {self.start:g} -> {self.end:g} over {self.anneal_kimg:g} kimg "
                f"(scales {self.s_min:.3f} .. 1 of the frame)")


def window_scale(windows: torch.Tensor, resolution: int, patch_size: int) -> torch.Tensor:
    """Scale [n] float32 of windows [n, 2] (integer starts, spacing 1) or [n, 3] (row0, col0, spacing)."""
    spacing = windows[:, 2].float() if windows.shape[1] == 3 else torch.ones(windows.shape[0], device=windows.device)
    return spacing * ((patch_size - 1) / max(resolution - 1, 1))


def window_features(windows: torch.Tensor, resolution: int, patch_size: int) -> torch.Tensor:
    """What a scale-aware D is told about each patch: [n, 3] float32 = (scale, centre row, centre column) with the
    scale in [0, 1] from s_min to the whole frame and the centre in [-1, 1] of the frame (0 = the frame centre)."""
    w = windows.float()
    spacing = w[:, 2] if w.shape[1] == 3 else torch.ones_like(w[:, 0])
    s_min = min_scale(resolution, patch_size)
    scale = window_scale(windows, resolution, patch_size)
    scale01 = (scale - s_min) / (1.0 - s_min) if s_min < 1.0 else torch.zeros_like(scale)
    half = (patch_size - 1) * spacing / 2                                      # [n]
    centre = (w[:, :2] + half[:, None]) / max(resolution - 1, 1) * 2 - 1       # [n, 2] in [-1, 1]
    return torch.cat([scale01[:, None], centre], dim=1)


def whole_frame_windows(n: int, resolution: int, patch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """n windows [n, 3] that span the whole frame (scale 1): row0 = col0 = 0, spacing (R - 1) / (P - 1)."""
    spacing = (resolution - 1) / (patch_size - 1) if patch_size > 1 else 1.0
    return torch.tensor([0.0, 0.0, spacing], device=device).expand(n, 3).clone()


def _filter_weights(start: torch.Tensor, spacing: torch.Tensor, patch_size: int, size: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """Row weights [n, P, size] of `resample_patches` for samples at x_i = start + i * spacing.

    The image's linear interpolant is averaged around x_i with a tent of half-width a = sqrt(spacing^2 - 1) (0 at
    spacing <= 1), evaluated at 2M + 1 symmetric taps x_i + a j / M (tent weights, each tap a linear interpolation;
    taps are clamped to the frame). The interpolant's own tent adds variance 1/6 to the tent's a^2/6, so the whole
    filter has the variance of a tent of half-width `spacing` (PIL's antialiased bilinear filter). M = ceil(2 a) for
    the largest spacing these shapes allow keeps the taps at most half a pixel apart."""
    wt = torch.promote_types(dtype, torch.float32)          # float32 (float64 for float64 images)
    dev = start.device
    top = (size - 1) / (patch_size - 1) if patch_size > 1 else 1.0
    m = max(1, math.ceil(2 * math.sqrt(max(top * top - 1.0, 0.0))))
    j = torch.arange(-m, m + 1, device=dev, dtype=wt) / m                                 # [K] in [-1, 1]
    tap_w = 1.0 - j.abs()                                                                  # [K] tent weights
    a = (spacing.to(wt).square() - 1.0).clamp_min(0.0).sqrt()                              # [n]
    steps = torch.arange(patch_size, device=dev, dtype=wt)
    pos = start.to(wt)[:, None] + steps[None, :] * spacing.to(wt)[:, None]                # [n, P]
    taps = (pos[:, :, None] + a[:, None, None] * j).clamp(0, size - 1)                     # [n, P, K]
    k = torch.arange(size, device=dev, dtype=wt)
    hat = (1.0 - (k - taps[..., None]).abs()).clamp_min(0.0)                               # [n, P, K, size]
    w = (hat * tap_w[:, None]).sum(dim=2)                                                  # [n, P, size]
    return (w / w.sum(dim=2, keepdim=True)).to(dtype)


def resample_patches(images: torch.Tensor, windows: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images [n, C, H, W] sampled at windows [n, 3] (row0, col0, spacing) -> [n, C, P, P], anti-aliased.

    Separable: patch = A_rows @ image @ A_cols^T with the weights of `_filter_weights` (module docstring). Two
    batched matmuls, twice differentiable w.r.t. the images (R1), any device and float dtype; the weights are built
    in float32 (float64 for float64 images) and cast to the images' dtype."""
    n, C, H, W = images.shape
    win = windows.to(images.device)
    spacing = win[:, 2] if win.shape[1] == 3 else torch.ones_like(win[:, 0], dtype=torch.float32)
    rows = _filter_weights(win[:, 0], spacing, patch_size, H, images.dtype)              # [n, P, H]
    cols = _filter_weights(win[:, 1], spacing, patch_size, W, images.dtype)              # [n, P, W]
    x = torch.matmul(rows[:, None], images)                                              # [n, C, P, W]
    return torch.matmul(x, cols[:, None].transpose(-1, -2))                              # [n, C, P, P]


def scale_histogram(scales: torch.Tensor, s_min: float, bins: int = 4) -> torch.Tensor:
    """Fractions [bins] of scales in equal bins of [s_min, 1] (the last bin includes 1); device-side, no sync."""
    span = max(1.0 - s_min, 1e-12)
    idx = ((scales.float() - s_min) / span * bins).floor().clamp(0, bins - 1)                # [n]
    return (idx[:, None] == torch.arange(bins, device=scales.device)).float().mean(dim=0)   # [bins]


def law_from_config(cfg, resolution: int, nimg: torch.Tensor | None = None) -> PatchScaleLaw | None:
    """The law of a TrainConfig, or None for the reference crops (fixed law and no patch_max_spacing): the faithful
    code path, untouched."""
    law, start, end, anneal_kimg = cfg.patch_law
    if law == "fixed":
        return None
    return PatchScaleLaw(law, resolution, cfg.patch_size, start, end, anneal_kimg, nimg=nimg)


def expected_mean_scale(law: str, param: float, s_min: float) -> float:
    """E[scale] of a law at parameter `param` (closed form; docs and tests)."""
    if law == "fixed":
        return s_min
    if law == "uniform":
        lo = min(max(param, s_min), 1.0)
        return (lo + 1.0) / 2
    return s_min + (1.0 - s_min) / (1.0 + param)


def cdf(law: str, param: float, s_min: float, x: float) -> float:
    """P(scale <= x) of a law at parameter `param` (closed form, for the KS tests)."""
    if law == "fixed":
        return float(x >= s_min)
    if law == "uniform":
        lo = min(max(param, s_min), 1.0)
        return 1.0 if x >= 1.0 else (0.0 if x < lo else (x - lo) / (1.0 - lo))
    t = (x - s_min) / (1.0 - s_min)
    return 0.0 if t <= 0 else (1.0 if t >= 1 else 1.0 - (1.0 - t) ** param)

