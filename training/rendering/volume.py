"""Volume-rendering maths as pure functions: sample depths, positional encoding, density activation, compositing.

Reference behaviour: the authors' positional encoding, density/colour heads, stratified sampling and compositing
(docs/MODEL.md). The encoding lives in torch_utils/ops/encoding.py (the fused MLP kernel builds the same one) and
is re-exported here.
Every random draw takes an explicit torch.Generator (None = global RNG) and happens on the given device.
Density activation, transmittance and the weighted sums run in at least fp32 whatever the input dtype.
"""
from __future__ import annotations

import torch

from torch_utils.ops.encoding import encoding_dim, positional_encoding  # noqa: F401 - part of this API

FAR_DELTA = 1e10          # Length of the last interval (the reference's "infinite" last sample).
TRANSMITTANCE_EPS = 1e-10  # T_k = prod_{j<k} (1 - alpha_j + eps), as in the reference.


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def linear_depths(near: float, far: float, num_samples: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """t_k = near + (far - near) k / (N - 1), k = 0..N-1. Returns [N]."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    k = torch.arange(num_samples, device=device, dtype=dtype)
    return near + (far - near) * k / (num_samples - 1)


def stratify(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Jitter depths inside the reference's bins: [t_0, m_0], [m_0, m_1], ..., [m_{N-2}, t_{N-1}] (m = midpoints).

    t: [N] (or broadcastable to u), u: [..., N] uniform in [0, 1). Returns [..., N].
    """
    mids = 0.5 * (t[..., 1:] + t[..., :-1])                          # [N-1]
    upper = torch.cat([mids, t[..., -1:]], dim=-1)                   # [N]
    lower = torch.cat([t[..., :1], mids], dim=-1)                    # [N]
    return lower + (upper - lower) * u


def sample_depths(near: float, far: float, num_samples: int, shape: tuple[int, ...], perturb: bool = False,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, u: torch.Tensor | None = None) -> torch.Tensor:
    """Depths [*shape, N] along every ray: linear in [near, far], stratified-jittered when perturb=True.

    u: pre-drawn uniform offsets [*shape, N] (perturb only); None draws them here from `generator`.
    """
    t = linear_depths(near, far, num_samples, device, dtype)           # [N]
    if not perturb:
        return t.expand(*shape, num_samples)
    if u is None:
        u = torch.rand([*shape, num_samples], generator=generator, device=device, dtype=dtype)
    return stratify(t, u.to(dtype))                                    # [*shape, N]


def density_activation(raw_sigma: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """sigma = relu(raw + noise) in fp32 (noise only for training fakes). [...] -> [...]."""
    raw_sigma = raw_sigma.to(_wide(raw_sigma.dtype))
    if noise is not None:
        raw_sigma = raw_sigma + noise.to(raw_sigma.dtype)
    return torch.relu(raw_sigma)


def composite(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, dir_norm: torch.Tensor,
              white_background: bool = True) -> dict[str, torch.Tensor]:
    """Alpha compositing along the last sample axis.

    sigma [..., S] (>= 0), rgb [..., S, 3] in [0, 1], t [..., S] depths, dir_norm [...] = ||d|| of each ray.
    delta_k = (t_{k+1} - t_k) ||d|| with the last delta 1e10 ||d||; alpha = 1 - exp(-sigma delta);
    T_k = prod_{j<k} (1 - alpha_j + 1e-10), evaluated as exp(cumsum(log(.))) (exclusive); w = alpha T.
    Returns dict(rgb [..., 3] (+ (1 - acc) on white), opacity [...] = sum w, depth [...] = sum w t), all fp32 or wider.
    """
    dtype = _wide(torch.promote_types(sigma.dtype, t.dtype))
    sigma, rgb, t, dir_norm = sigma.to(dtype), rgb.to(dtype), t.to(dtype), dir_norm.to(dtype)
    delta = torch.cat([t[..., 1:] - t[..., :-1], torch.full_like(t[..., :1], FAR_DELTA)], dim=-1)  # [..., S]
    sigma_delta = sigma * (delta * dir_norm.unsqueeze(-1))                                        # [..., S]
    alpha = -torch.expm1(-sigma_delta)                                                            # [..., S]
    log_pass = torch.log(torch.exp(-sigma_delta) + TRANSMITTANCE_EPS)                             # [..., S]
    log_trans = torch.cat([torch.zeros_like(log_pass[..., :1]), torch.cumsum(log_pass[..., :-1], dim=-1)], -1)
    weights = alpha * torch.exp(log_trans)                                                        # [..., S]
    color = torch.sum(weights.unsqueeze(-1) * rgb, dim=-2)                                        # [..., 3]
    opacity = weights.sum(dim=-1)                                                                 # [...]
    depth = torch.sum(weights * t, dim=-1)                                                        # [...]
    if white_background:
        color = color + (1.0 - opacity).unsqueeze(-1)
    return {"rgb": color, "opacity": opacity, "depth": depth, "weights": weights}
