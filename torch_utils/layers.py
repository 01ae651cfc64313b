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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, *self.scaled_params(x.dtype))
        return lrelu_gain(x) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"
