"""Improved precision and recall (Kynkaanniemi et al. 2019) on detector features, computed in batches on the device.

Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest neighbour
(excluding the point itself). precision = fraction of fakes inside the real manifold; recall = fraction of reals
inside the fake manifold. Distances are float32 Euclidean (torch.cdist), tiled so that no [N, N] matrix is built.
"""
from __future__ import annotations

import torch

TILE_ELEMENTS = 1 << 24  # distance entries per tile (64 MiB of float32)


def _row_batch(num_cols: int) -> int:
    return max(1, TILE_ELEMENTS // max(num_cols, 1))


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x [N, D] to its k-th nearest other row -> [N]."""
    if x.shape[0] <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {x.shape[0]}")
    radii = []
    for rows in x.split(_row_batch(x.shape[0])):
        d = torch.cdist(rows, x)                                            # [b, N]
        radii.append(d.kthvalue(k + 1, dim=1).values)                       # k+1: the point itself is at 0
    return torch.cat(radii)


def manifold_coverage(ref: torch.Tensor, radii: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Fraction of query rows [M, D] within radii[i] of some ref row i (ref [N, D], radii [N]) -> 0-dim tensor."""
    inside = []
    for rows in query.split(_row_batch(ref.shape[0])):
        d = torch.cdist(rows, ref)                                          # [b, N]
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside).float().mean()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3,
                     device: torch.device | str | None = None) -> dict[str, float]:
    """Precision and recall of fake [Nf, D] against real [Nr, D] features with k-NN radii."""
    device = torch.device(device) if device is not None else real.device
    real = real.to(device, torch.float32)
    fake = fake.to(device, torch.float32)
    precision = manifold_coverage(real, knn_radii(real, k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k), real)
    return {"precision": float(precision), "recall": float(recall)}
