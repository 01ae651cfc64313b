"""Equalised-learning-rate building blocks (StyleGAN2 convention): weights stored N(0, 1)/lr_mul, scaled at run time."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def lrelu_gain(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    """Leaky ReLU followed by the StyleGAN2 gain sqrt(2)."""
    return F.leaky_relu(x, slope) * SQRT2


# G's hypernetwork runs a dozen fp32 matmuls per step on a handful of rows (the batch of 4 objects: mapping layers,
# the affine maps, the rank-10 FMM products). As cuBLAS GEMMs each one is a latency-bound kernel (forward and two
# backward); written as a broadcast product summed over the inner axis, torch.compile fuses them with their
# neighbours (weight gains, bias, activation, FMM's modulation and normalisation) into a few Triton kernels.
SMALL_MATMUL_MODES = ("auto", "pointwise", "gemm")
_small_matmul = {"mode": "auto"}


def set_small_matmul(mode: str) -> str:
    """How `small_linear` / `small_bmm` run: 'auto' (the pointwise form while torch.compile traces, a GEMM in eager
    code, where the broadcast product would be materialised), 'pointwise' (always; for tests) or 'gemm' (never).
    All three compute the same function. Returns the previous mode."""
    if mode not in SMALL_MATMUL_MODES:
        raise ValueError(f"unknown small-matmul mode {mode!r}; choose from {SMALL_MATMUL_MODES}")
    old, _small_matmul["mode"] = _small_matmul["mode"], mode
    return old


def _pointwise_matmul() -> bool:
    mode = _small_matmul["mode"]
    return mode == "pointwise" or (mode == "auto" and torch.compiler.is_compiling())


def small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for inputs with few rows: x [M, K], weight [N, K], bias [N] -> [M, N] (see `set_small_matmul`)."""
    if not _pointwise_matmul() or x.ndim != 2:
        return F.linear(x, weight, bias)
    y = (x.unsqueeze(1) * weight.unsqueeze(0)).sum(dim=2)                                # [M, N]
    return y if bias is None else y + bias


def small_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.bmm for a short inner axis: a [B, M, R], b [B, R, N] -> [B, M, N] (see `set_small_matmul`)."""
    if not _pointwise_matmul():
        return torch.bmm(a, b)
    return (a.unsqueeze(3) * b.unsqueeze(1)).sum(dim=2)                                 # [B, M, N]


class FullyConnectedLayer(nn.Module):
    """y = act(x @ (W * lr_mul / sqrt(in)).T + b * lr_mul).

    weight is initialised N(0, 1) / lr_mul and bias to bias_init / lr_mul, so the effective values start at
    N(0, 1/in) and bias_init while the optimiser sees a parameter lr_mul times larger (equalised learning rate).
    activation: 'linear' or 'lrelu' (slope 0.2, gain sqrt(2)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)) / lr_multiplier) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def scaled_params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The effective (weight [out, in], bias [out] or None) in `dtype`: the stored ones times their gains."""
        w = self.weight.to(dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(dtype) * self.bias_gain
        return w, b

    def forward(self, x: torch.Tensor, few_rows: bool = False) -> torch.Tensor:
        """x [M, in] -> [M, out]. few_rows: x has a handful of rows (G's mapping), so `small_linear` may run it."""
        x = (small_linear if few_rows else F.linear)(x, *self.scaled_params(x.dtype))
        return lrelu_gain(x) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"
