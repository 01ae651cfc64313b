"""Rays -> images for any radiance field: sampling, field queries, density activation and compositing, chunked.

A field is a callable `field(pts [B, N, 3]) -> (rgb [B, N, 3] in [0, 1], raw_sigma [B, N])`; the renderer applies
sigma = relu(raw_sigma + noise) itself, so the NeRF generator and analytic fields (the synthetic-data oracle) share
this exact code path. Random numbers are drawn for the whole ray set before chunking, in this order from `generator`:
stratified offsets u [B, R, S] (perturb only), then density noise [B, R, S] (perturb and raw_noise_std > 0 only), so
a chunked render equals the unchunked one exactly. `draw_randomness` draws the same two tensors up front (same order,
same generator) so that a caller can pass them in as `randomness` and keep torch.Generator objects out of code it
compiles: a render with pre-drawn randomness equals the one that draws it itself, bit for bit.
Everything is built on the device of the rays.
"""
from __future__ import annotations

from typing import Callable

import torch

from training.rendering import camera
from training.rendering.volume import composite, density_activation, sample_depths

FieldFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _render_chunk(field: FieldFn, origins: torch.Tensor, dirs: torch.Tensor, t: torch.Tensor,
                  noise: torch.Tensor | None, white_background: bool) -> dict[str, torch.Tensor]:
    """origins, dirs [B, r, 3], t [B, r, S], noise [B, r, S] or None -> composite() outputs for these rays."""
    B, r, S = t.shape
    pts = origins.unsqueeze(2) + t.unsqueeze(-1) * dirs.unsqueeze(2)           # [B, r, S, 3]
    rgb, raw_sigma = field(pts.reshape(B, r * S, 3))                           # [B, r*S, 3], [B, r*S]
    sigma = density_activation(raw_sigma.reshape(B, r, S), noise)              # [B, r, S]
    return composite(sigma, rgb.reshape(B, r, S, 3), t, dirs.norm(dim=-1), white_background)


Randomness = tuple[torch.Tensor | None, torch.Tensor | None]


def draw_randomness(B: int, R: int, num_samples: int, perturb: bool = False, raw_noise_std: float = 0.0,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Randomness:
    """The random draws of a render of B x R rays, in render order: (u [B, R, S] or None, noise [B, R, S] or None).

    u: stratified offsets in [0, 1) (perturb only); noise: density noise, already multiplied by raw_noise_std
    (perturb and raw_noise_std > 0 only).
    """
    u = torch.rand([B, R, num_samples], generator=generator, device=device, dtype=dtype) if perturb else None
    noise = None
    if perturb and raw_noise_std > 0:
        noise = torch.randn([B, R, num_samples], generator=generator, device=device, dtype=dtype) * raw_noise_std
    return u, noise


def render_rays(field: FieldFn, origins: torch.Tensor, dirs: torch.Tensor, near: float, far: float,
                num_samples: int, perturb: bool = False, raw_noise_std: float = 0.0,
                generator: torch.Generator | None = None, ray_chunk: int | None = None,
                white_background: bool = True, randomness: Randomness | None = None) -> dict[str, torch.Tensor]:
    """Render rays origins/dirs [B, R, 3] (dirs unnormalised, t = camera-z depth) through `field`.

    ray_chunk: at most about this many rays (over all B objects) per field call; None = all at once.
    randomness: (u, noise) from `draw_randomness` with the same perturb / raw_noise_std; None draws them here.
    Returns dict(rgb [B, R, 3] in [0, 1], opacity [B, R], depth [B, R]) in fp32 (float64 for float64 rays).
    """
    B, R = origins.shape[:2]
    device, dtype = origins.device, torch.promote_types(origins.dtype, torch.float32)
    origins, dirs = origins.to(dtype), dirs.to(dtype)
    if randomness is None:
        randomness = draw_randomness(B, R, num_samples, perturb, raw_noise_std, generator, device, dtype)
    u, noise = randomness
    if perturb and (u is None or tuple(u.shape) != (B, R, num_samples)):
        raise ValueError(f"perturb=True needs stratified offsets u of shape {[B, R, num_samples]}")
    t = sample_depths(near, far, num_samples, (B, R), perturb, generator, device, dtype, u=u)   # [B, R, S]
    if noise is not None:
        noise = noise.to(dtype)
    step = R if ray_chunk is None else max(1, min(R, ray_chunk // B))
    outs = []
    for start in range(0, R, step):
        sl = slice(start, start + step)
        outs.append(_render_chunk(field, origins[:, sl], dirs[:, sl], t[:, sl],
                                  None if noise is None else noise[:, sl], white_background))
    keys = ("rgb", "opacity", "depth")
    if len(outs) == 1:
        return {k: outs[0][k] for k in keys}
    return {k: torch.cat([o[k] for o in outs], dim=1) for k in keys}


def render_image(field: FieldFn, c2w: torch.Tensor, resolution: int, window: torch.Tensor | None = None,
                 patch_size: int | None = None, near: float = 3.0, far: float = 5.0, num_samples: int = 64,
                 perturb: bool = False, raw_noise_std: float = 0.0, generator: torch.Generator | None = None,
                 ray_chunk: int | None = None, pixel_center: float = camera.DEFAULT_PIXEL_CENTER,
                 fov_x_rad: float = camera.FOV_X_RAD, white_background: bool = True,
                 randomness: Randomness | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Render full images (window None) or P x P windows (window [B, 2] (row0, col0), patch_size P) of a field.

    c2w [B, 4, 4]. Returns (img [B, 3, h, w] = 2 rgb - 1 in [-1, 1], aux dict(depth, opacity [B, 1, h, w])).
    """
    with torch.autocast(device_type=c2w.device.type, enabled=False):  # Rays must stay fp32: PE goes up to 2^9 x.
        origins, dirs = camera.get_rays(c2w, resolution, window=window, patch_size=patch_size,
                                        pixel_center=pixel_center, fov_x_rad=fov_x_rad)   # [B, h, w, 3] each
    B, h, w = origins.shape[:3]
    out = render_rays(field, origins.reshape(B, h * w, 3), dirs.reshape(B, h * w, 3), near, far, num_samples,
                      perturb=perturb, raw_noise_std=raw_noise_std, generator=generator, ray_chunk=ray_chunk,
                      white_background=white_background, randomness=randomness)
    img = (out["rgb"] * 2.0 - 1.0).reshape(B, h, w, 3).permute(0, 3, 1, 2).contiguous()  # [B, 3, h, w]
    aux = {k: out[k].reshape(B, 1, h, w) for k in ("depth", "opacity")}
    return img, aux
