"""Ground-truth density/colour field of a synthetic object, in torch (owns the SDFs and `oracle_field`).

sigma(p) = sigma_max * sigmoid(-sharpness * sdf(p)) with sdf = min over primitives (exact box and capped-cylinder SDFs,
the usual first-order ellipsoid approximation k0 (k0 - 1) / k1 whose zero level set is exact). The colour at p is the
SHADED sRGB colour of the nearest primitive, using the same nearest-face normal rule and lighting as the image
renderer (render.shade), so volume-rendering this field reproduces the ray-cast images up to sampling error.
"""
from __future__ import annotations

import torch

from training.synthetic import render
from training.synthetic.shapes import BOX, CYLINDER, ELLIPSOID, ObjectSpec


def _sdf_and_normal(kind: int, p: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local SDF [N, K] and nearest-surface local unit normal [N, K, 3] for points p [N, K, 3], sizes [K, 3]."""
    if kind == BOX:
        q = p.abs() - size                                                         # [N, K, 3]
        sdf = q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)
        face = torch.nn.functional.one_hot(q.argmax(-1), 3).to(p.dtype)            # [N, K, 3]
        normal = face * torch.where(p < 0, -1.0, 1.0).to(p.dtype)
    elif kind == ELLIPSOID:
        k0 = (p / size).norm(dim=-1)
        grad = p / (size * size)
        k1 = grad.norm(dim=-1)
        sdf = torch.where(k1 > 1e-9, k0 * (k0 - 1.0) / k1.clamp_min(1e-9), -size.amin(-1).expand_as(k0))
        normal = grad / k1.clamp_min(1e-12)[..., None]
    else:
        radial = (p[..., 0] ** 2 + p[..., 2] ** 2).sqrt()
        dr, dy = radial - size[:, 0], p[..., 1].abs() - size[:, 1]
        sdf = torch.maximum(dr, dy).clamp_max(0) + torch.stack([dr, dy], -1).clamp_min(0).norm(dim=-1)
        side = torch.stack([p[..., 0], torch.zeros_like(radial), p[..., 2]], -1) / radial.clamp_min(1e-12)[..., None]
        cap = torch.stack([torch.zeros_like(radial), torch.sign(p[..., 1]), torch.zeros_like(radial)], -1)
        normal = torch.where((dy > dr)[..., None], cap, side)
    return sdf, normal


def union_sdf(obj: ObjectSpec, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sdf [N] of the union, index [N] of the nearest primitive, and its world normal [N, 3], for pts [N, 3]."""
    arrays = obj.arrays()
    dtype, device = pts.dtype, pts.device
    sdfs, normals, order = [], [], []
    for kind in (BOX, ELLIPSOID, CYLINDER):
        sel = (arrays["kind"] == kind).nonzero()[0]
        if len(sel) == 0:
            continue
        c = torch.as_tensor(arrays["center"][sel], dtype=dtype, device=device)      # [K, 3]
        R = torch.as_tensor(arrays["rot"][sel], dtype=dtype, device=device)         # [K, 3, 3]
        size = torch.as_tensor(arrays["size"][sel], dtype=dtype, device=device)     # [K, 3]
        local = torch.einsum("nkj,kji->nki", pts[:, None, :] - c, R)                 # [N, K, 3]
        sdf, n_local = _sdf_and_normal(kind, local, size)
        sdfs.append(sdf)
        normals.append(torch.einsum("kij,nkj->nki", R, n_local))                    # [N, K, 3] world
        order.append(torch.as_tensor(sel, device=device))
    sdf_all, normal_all, prim = torch.cat(sdfs, 1), torch.cat(normals, 1), torch.cat(order)
    best = sdf_all.argmin(1)                                                        # [N]
    rows = torch.arange(pts.shape[0], device=device)
    return sdf_all[rows, best], prim[best], normal_all[rows, best]


def shade_torch(normals: torch.Tensor, albedo_srgb: torch.Tensor) -> torch.Tensor:
    """torch twin of render.shade: shaded sRGB colour [..., 3] in [0, 1]."""
    key = torch.as_tensor(render.LIGHT_KEY, dtype=normals.dtype, device=normals.device)
    fill = torch.as_tensor(render.LIGHT_FILL, dtype=normals.dtype, device=normals.device)
    light = (render.K_AMBIENT * (0.5 + 0.5 * normals[..., 2]) + render.K_KEY * (normals @ key).clamp_min(0)
             + render.K_FILL * (normals @ fill).clamp_min(0))
    lin_alb = torch.where(albedo_srgb <= 0.04045, albedo_srgb / 12.92, ((albedo_srgb + 0.055) / 1.055) ** 2.4)
    x = (lin_alb * light[..., None]).clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)


def oracle_field(obj: ObjectSpec, pts: torch.Tensor, sharpness: float = 3000.0,
                 sigma_max: float = 1000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Density sigma [N] and baked shaded colour rgb [N, 3] in [0, 1] of the object at world points pts [N, 3].

    sigma = sigma_max * sigmoid(-sharpness * sdf). The defaults suit dense sampling (>= 256 samples over near..far
    = 3..5); with coarse sampling lower the sharpness so thin parts (walls of ~0.015) are not skipped between samples.
    """
    sdf, prim, normal = union_sdf(obj, pts)
    albedo = torch.as_tensor(obj.arrays()["albedo"], dtype=pts.dtype, device=pts.device)[prim]   # [N, 3]
    sigma = sigma_max * torch.sigmoid(-sharpness * sdf)
    return sigma, shade_torch(normal, albedo)
