"""Frechet Inception Distance from two (mean, covariance) pairs, with a stable float64 matrix square root.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2). The last trace is computed without a general `sqrtm`:
S1 S2 is similar to A = S1^1/2 S2 S1^1/2 (symmetric PSD), so tr sqrt(S1 S2) = sum_i sqrt(lambda_i(A)). Two float64
`eigh` calls on the statistics' device replace scipy's `sqrtm` (tiny negative eigenvalues from round-off are clamped).
"""
from __future__ import annotations

import torch

from metrics.feature_stats import FeatureStats


def _sym(m: torch.Tensor) -> torch.Tensor:
    return 0.5 * (m + m.T)


def psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix [D, D] via eigh in float64 (negative eigenvalues clamped to 0)."""
    evals, evecs = torch.linalg.eigh(_sym(s.to(torch.float64)))
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T                  # [D, D]


def trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """tr sqrt(S1 S2) for PSD S1, S2 [D, D]; float64 0-dim tensor on their device."""
    root1 = psd_sqrt(s1)
    inner = _sym(root1 @ s2.to(torch.float64) @ root1)                       # [D, D], PSD
    return torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """FID between Gaussians N(mu1 [D], cov1 [D, D]) and N(mu2, cov2), computed in float64."""
    mu1, mu2 = mu1.to(torch.float64), mu2.to(device=mu1.device, dtype=torch.float64)
    cov1, cov2 = cov1.to(mu1.device, torch.float64), cov2.to(mu1.device, torch.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"feature dimensions differ: {tuple(mu1.shape)} vs {tuple(mu2.shape)}")
    mean_term = (mu1 - mu2).square().sum()
    trace_term = cov1.trace() + cov2.trace() - 2.0 * trace_sqrt_product(cov1, cov2)
    return float(mean_term + trace_term)


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
    """FID between two FeatureStats (both must hold mean/cov)."""
    mu_r, cov_r = real.get_mean_cov()
    mu_f, cov_f = fake.get_mean_cov()
    return frechet_distance(mu_f, cov_f, mu_r, cov_r)
