"""Scale-aware discriminator conditioning: D is told which part of the frame each patch shows (opt-in).

The window features (scale, centre row, centre column) of training.patch_scale.window_features are encoded with
sines and cosines of `num_freqs` octaves (as NeRF encodes positions), mapped by a small MLP to an embedding, and the
embedding is projected on D's last features: logit = <features, embedding> / sqrt(dim), the output projection of
conditional StyleGAN2 (Miyato and Koyama's projection discriminator). EpiGRAF (Skorokhodov et al. 2022) conditions D
on the same patch parameters so that it knows at what resolution it is judging.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from torch_utils.layers import FullyConnectedLayer


class PatchConditioning(nn.Module):
    """Embedding of window features [n, num_features] and the projection of D's features [n, dim] on it."""

    def __init__(self, num_features: int, dim: int, num_freqs: int = 4, num_layers: int = 2) -> None:
        super().__init__()
        self.num_features, self.dim, self.num_freqs = num_features, dim, num_freqs
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float32),
                             persistent=False)
        in_dim = num_features * (1 + 2 * num_freqs)
        layers = []
        for i in range(num_layers):
            layers.append(FullyConnectedLayer(in_dim if i == 0 else dim, dim,
                                              activation="lrelu" if i < num_layers - 1 else "linear"))
        self.mapping = nn.Sequential(*layers)

    def encode(self, c: torch.Tensor) -> torch.Tensor:
        """c [n, F] -> [n, F * (1 + 2 * num_freqs)]: c, sin(2^k pi c), cos(2^k pi c)."""
        x = c[:, :, None] * self.freqs.to(c.dtype)                                  # [n, F, K]
        return torch.cat([c, x.sin().flatten(1), x.cos().flatten(1)], dim=1)

    def embed(self, c: torch.Tensor) -> torch.Tensor:
        """Window features [n, F] -> embedding [n, dim]."""
        return self.mapping(self.encode(c))

    def forward(self, features: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """D's last features [n, dim] and window features [n, F] -> logits [n, 1] in the features' dtype."""
        if c is None:
            raise ValueError("this discriminator is scale-aware: pass the patches' window features (patch=...)")
        if c.ndim != 2 or c.shape[1] != self.num_features or c.shape[0] != features.shape[0]:
            raise ValueError(f"expected window features [{features.shape[0]}, {self.num_features}], got "
                             f"{list(c.shape)}")
        cmap = self.embed(c.to(features.dtype))                                     # [n, dim]
        return (features * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.dim)

    def extra_repr(self) -> str:
        return f"features={self.num_features}, dim={self.dim}, freqs={self.num_freqs}"
