"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3.

As in StyleGAN2-ADA (Binkowski et al. 2018): average over `num_subsets` random subsets (drawn without replacement)
of size m = min(n_real, n_fake, max_subset_size). The subsets come from a private seeded torch.Generator, and the
kernel sums run in float64 on the features' device.
"""
from __future__ import annotations

import torch


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a b^T / D + 1)^3 for a [m, D], b [m, D] -> [m, m]."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 between equal-size samples x [m, D] and y [m, D] (float64 0-dim tensor)."""
    m = x.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2.0 * kxy.sum() / (m * m)


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0,
                              device: torch.device | str | None = None) -> dict[str, float]:
    """KID between real [Nr, D] and fake [Nf, D] features. Returns {'kid': mean, 'kid_std': std over subsets}."""
    device = torch.device(device) if device is not None else real.device
    real = real.to(device, torch.float64)
    fake = fake.to(device, torch.float64)
    m = min(real.shape[0], fake.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 fake features, got {real.shape[0]} and {fake.shape[0]}")
    gen = torch.Generator().manual_seed(int(seed))
    values = []
    for _ in range(num_subsets):
        x = real[torch.randperm(real.shape[0], generator=gen)[:m].to(device)]          # [m, D]
        y = fake[torch.randperm(fake.shape[0], generator=gen)[:m].to(device)]          # [m, D]
        values.append(mmd2_unbiased(x, y))
    values_t = torch.stack(values)
    return {"kid": float(values_t.mean()), "kid_std": float(values_t.std()) if num_subsets > 1 else 0.0}
