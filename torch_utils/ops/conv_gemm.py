"""A stride-1 'same' convolution as unfold + GEMM, for D's 4 x 4 epilogue conv.

For that tiny fp32 conv cuDNN picks latency-bound kernels (~120 us per call on an H100); the GEMM form is the same
function and far faster. At batch 4 its single GEMM ([N * 16 = 64 rows, K = 513 * 9 = 4,617]) still leaves most of
the GPU idle while it walks its long inner axis, so where the backend's `epilogue_split` is on and the GEMM has at
most SPLIT_MAX_ROWS rows it runs as one GEMM per kernel tap (a split-K GEMM). The row limit is measured: H200, T4
setting, 1,036.6 img/s with the split at <= 64 rows (Gmain, Dreg), 1,016.7 split at every call, 1,006.7 never; the
split loses at Dmain's 128 rows (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from torch_utils import backend

SPLIT_MAX_ROWS = 64


def split_taps(rows: int) -> bool:
    """Whether a GEMM with `rows` rows (N * H * W) runs split by taps. A plain int comparison on the shape, so
    torch.compile specialises on it like on the shape itself."""
    return backend.current().epilogue_split and rows <= SPLIT_MAX_ROWS


def conv_as_gemm(x: torch.Tensor, w: torch.Tensor, split: bool | None = None) -> torch.Tensor:
    """x [N, C, H, W], w [O, C, k, k] -> [N, O, H, W] (zero padding k // 2). split: one GEMM per kernel tap (k * k
    GEMMs of inner size C, batched, then summed) instead of one of inner size C k^2; None = `split_taps`."""
    N, C, H, W = x.shape
    O, k = w.shape[0], w.shape[-1]
    if split is None:
        split = split_taps(N * H * W)
    cols = F.unfold(x, k, padding=k // 2)                                               # [N, C*k*k, H*W]
    if not split:
        return torch.matmul(w.reshape(O, -1), cols).reshape(N, O, H, W)
    taps = cols.view(N, C, k * k, H * W).permute(2, 1, 0, 3).reshape(k * k, C, N * H * W)  # [kk, C, N*HW]
    per_tap = torch.bmm(w.reshape(O, C, k * k).permute(2, 0, 1), taps)                   # [kk, O, N*HW]
    return per_tap.sum(0).view(O, N, H, W).transpose(0, 1)                               # [N, O, H, W]
