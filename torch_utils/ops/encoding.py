"""The NeRF positional encoding (no pi factor, as the authors' `get_embedder`): the function that both G's MLP and the
fused MLP kernel (`fused_mlp.py`) evaluate."""
from __future__ import annotations

import torch


def positional_encoding(x: torch.Tensor, multires: int = 10) -> torch.Tensor:
    """[x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)] (no pi). [..., 3] -> [..., 3 + 6 L]."""
    freqs = 2.0 ** torch.arange(multires, device=x.device, dtype=x.dtype)    # [L]
    xf = x.unsqueeze(-2) * freqs.unsqueeze(-1)                                # [..., L, 3]
    enc = torch.stack([torch.sin(xf), torch.cos(xf)], dim=-2)                 # [..., L, 2, 3]
    return torch.cat([x, enc.flatten(-3)], dim=-1)                            # [..., 3 + 6 L]


def encoding_dim(multires: int = 10, in_dim: int = 3) -> int:
    """Size of positional_encoding's output."""
    return in_dim * (1 + 2 * multires)
