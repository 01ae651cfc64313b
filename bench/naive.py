"""A naive HyperNeRFGAN generator with the reference implementation's structure, for the speed benchmark only.

It reuses the parameters of a `training.networks.generator.Generator` (so its images can be compared with ours) but
renders the way the authors' code does (the authors' renderer): a python loop over objects, poses from
numpy, rays, stratified depths and the 63-d positional encoding built on the CPU, 65,536-point chunks copied to the
GPU, FMM weights rebuilt per chunk, each layer applied as a per-point `matmul(W, x[..., None])`, relu * sqrt(2) as a
separate op, and compositing with a cumulative product. fp32 everywhere. Never used by training.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from training.networks.hyper import fmm_weights

NET_CHUNK = 65536
SQRT2 = math.sqrt(2.0)


def _layer_weight(layer: torch.nn.Module, w: torch.Tensor) -> torch.Tensor:
    """The reference's per-object weight [c_out, c_in] (no folded input gain)."""
    styles = layer.affine(w)                                               # [1, (c_in + c_out) r]
    return fmm_weights(layer.weight, styles, layer.rank)[0]                # [c_out, c_in]


def _cpu_rays(c2w: np.ndarray, res: int, focal: float, pixel_center: float) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.meshgrid(np.arange(res, dtype=np.float32) + pixel_center,
                       np.arange(res, dtype=np.float32) + pixel_center, indexing="xy")
    dirs = np.stack([(i - res * 0.5) / focal, -(j - res * 0.5) / focal, -np.ones_like(i)], -1)   # [H, W, 3]
    rays_d = np.sum(dirs[..., None, :] * c2w[:3, :3], -1)
    rays_o = np.broadcast_to(c2w[:3, -1], rays_d.shape)
    return rays_o, rays_d


def _cpu_encoding(x: torch.Tensor, multires: int) -> torch.Tensor:
    out = [x]
    for k in range(multires):
        out += [torch.sin(x * 2.0 ** k), torch.cos(x * 2.0 ** k)]
    return torch.cat(out, -1)


def _mlp_chunk(G: torch.nn.Module, w: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    nerf = G.nerf
    h = pe
    last = len(nerf.layers) - 1
    for i, layer in enumerate(nerf.layers):
        weight = _layer_weight(layer, w)                                   # rebuilt per chunk, as the reference
        h = torch.matmul(weight, h[..., None])[..., 0] + layer.bias        # [N, c_out]
        if i == last:
            break
        h = torch.relu(h) * SQRT2
        if nerf.uses_skip and i == nerf.skip_after:
            h = torch.cat([pe, h], -1)
    return h


def naive_render(G: torch.nn.Module, z: torch.Tensor, c2w: torch.Tensor, window: torch.Tensor | None = None,
                 patch_size: int | None = None, perturb: bool = False, update_w_avg: bool = False) -> torch.Tensor:
    """Images [B, 3, h, w] in [-1, 1], one object at a time. Jitter and noise come from the CPU/global RNG."""
    device = z.device
    res, S = G.img_resolution, G.num_samples
    focal = 0.5 * res / math.tan(0.5 * G.fov_x_rad)
    out = []
    for b in range(z.shape[0]):
        w = G.mapping(z[b:b + 1], update_w_avg=update_w_avg)               # [1, w_dim]
        rays_o, rays_d = _cpu_rays(c2w[b].detach().cpu().numpy(), res, focal, G.pixel_center)
        if window is not None:
            r0, c0 = (int(v) for v in window[b].cpu())
            rays_o, rays_d = rays_o[r0:r0 + patch_size, c0:c0 + patch_size], rays_d[r0:r0 + patch_size, c0:c0 + patch_size]
        h, wd = rays_o.shape[:2]
        rays_o = torch.from_numpy(np.ascontiguousarray(rays_o)).reshape(-1, 3)
        rays_d = torch.from_numpy(np.ascontiguousarray(rays_d)).reshape(-1, 3)
        t = torch.linspace(G.near, G.far, S).expand(rays_o.shape[0], S)
        if perturb:
            mids = 0.5 * (t[:, 1:] + t[:, :-1])
            upper, lower = torch.cat([mids, t[:, -1:]], -1), torch.cat([t[:, :1], mids], -1)
            t = lower + (upper - lower) * torch.rand(t.shape)
        pts = rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]        # [R, S, 3] on the CPU
        pe = _cpu_encoding(pts.reshape(-1, 3), G.nerf.multires)           # [R*S, 63] on the CPU
        raw = torch.cat([_mlp_chunk(G, w, pe[i:i + NET_CHUNK].to(device)) for i in range(0, pe.shape[0], NET_CHUNK)])
        raw = raw.reshape(-1, S, 4)
        rgb = torch.sigmoid(raw[..., :3])
        noise = torch.randn(raw[..., 3].shape).to(device) * G.raw_noise_std if perturb else 0.0
        dists = torch.cat([t[:, 1:] - t[:, :-1], torch.full_like(t[:, :1], 1e10)], -1)
        dists = (dists * rays_d.norm(dim=-1, keepdim=True)).to(device)
        alpha = 1.0 - torch.exp(-torch.relu(raw[..., 3] + noise) * dists)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
        weights = alpha * trans
        color = (weights[..., None] * rgb).sum(-2) + (1.0 - weights.sum(-1, keepdim=True))
        out.append((color * 2 - 1).reshape(h, wd, 3).permute(2, 0, 1))
    return torch.stack(out)


def naive_run_G(loss: object, n: int, update_w_avg: bool = False) -> torch.Tensor:
    """Drop-in for HyperNeRFGANLoss.run_G with the reference structure (poses and windows from numpy)."""
    G = loss.G
    device = next(G.parameters()).device
    z = torch.randn([n, G.z_dim], device=device)
    theta = np.random.uniform(-180, 180, n)
    elev = np.degrees(np.arcsin(np.random.uniform(0, 1, n)))
    from training.rendering.camera import pose_spherical
    c2w = pose_spherical(torch.tensor(theta, dtype=torch.float32), torch.tensor(elev, dtype=torch.float32), G.radius)
    P = loss.patch_size
    window = torch.from_numpy(np.random.randint(0, G.img_resolution - P + 1, size=(n, 2)))
    return naive_render(G, z, c2w, window, P, perturb=True, update_w_avg=update_w_avg)
