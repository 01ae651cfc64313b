"""Mapping network z -> w (one w per object) with a tracked w_avg for truncation.

Reference behaviour (the authors' mapping network): z is normalised by its RMS, then `num_layers` equalised-lr FC
layers with leaky ReLU x sqrt(2) (the last one too) and lr multiplier 0.01. The w_avg buffer is our addition
(docs/MODEL.md): the official code has none and crashes on psi != 1.
"""
from __future__ import annotations

import torch
from torch import nn

from torch_utils.layers import FullyConnectedLayer
from torch_utils.persistence import persistent_class


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last axis. [..., D] -> [..., D]."""
    return x * (x.square().mean(dim=-1, keepdim=True) + eps).rsqrt()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 (float64 stays float64): the dtype for work that must not run in half precision."""
    return torch.promote_types(dtype, torch.float32)


@persistent_class
class MappingNetwork(nn.Module):
    """z [B, z_dim] -> w [B, w_dim]. Runs in fp32 (or float64) even under autocast; it is tiny."""

    def __init__(self,
                 z_dim: int = 128,            # Latent size.
                 w_dim: int = 128,            # Output size.
                 num_layers: int = 2,         # FC layers, each lrelu x sqrt(2).
                 lr_multiplier: float = 0.01,  # Equalised-lr multiplier of every layer.
                 w_avg_beta: float = 0.995,   # EMA decay of w_avg when update_w_avg=True.
                 ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MappingNetwork needs at least one layer, got num_layers={num_layers}")
        self.z_dim, self.w_dim, self.num_layers, self.w_avg_beta = z_dim, w_dim, num_layers, w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList([
            FullyConnectedLayer(dims[i], dims[i + 1], activation="lrelu", lr_multiplier=lr_multiplier, bias_init=0.0)
            for i in range(num_layers)])
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        """z [B, z_dim] -> w [B, w_dim]; truncation w_avg + psi (w - w_avg). update_w_avg: lerp w_avg (training)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = normalize_2nd_moment(z.to(compute_dtype(z.dtype)))     # [B, z_dim]
            for layer in self.layers:
                x = layer(x)                                            # [B, w_dim]
            if update_w_avg:
                batch_mean = x.detach().mean(dim=0).to(self.w_avg.dtype)
                self.w_avg.copy_(batch_mean.lerp(self.w_avg, self.w_avg_beta))
            if psi != 1:
                x = self.w_avg.to(x.dtype).lerp(x, psi)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_layers={self.num_layers}"
