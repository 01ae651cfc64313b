"""Image renderer for the synthetic families: poses, supersampled ray grids, Lambertian shading, sRGB, compositing.

Owns `render_object`, `render_images`, `sample_pose` and the shading model shared with the density oracle:
  c_lin = albedo_lin * (K_AMBIENT (0.5 + 0.5 n_z) + K_KEY max(0, n.l_key) + K_FILL max(0, n.l_fill)),
clipped to [0, 1], sRGB-encoded per sub-sample, composited over WHITE and averaged over the s x s sub-samples
u = j + pixel_center + ((a + 0.5) / s - 0.5), v likewise (s = 1: exactly the pixel_center convention), then
quantised with round-half-up. The camera maths comes from training/rendering/camera.py only.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from training.rendering import camera
from training.synthetic import raycast
from training.synthetic.shapes import ObjectSpec, make_object

LIGHT_KEY = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
LIGHT_FILL = np.array([-0.5, -0.3, 0.2]) / np.linalg.norm([-0.5, -0.3, 0.2])
K_AMBIENT, K_KEY, K_FILL = 0.35, 0.65, 0.15
_POSE_SALT = 9001


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1.0 / 2.4) - 0.055)


def shade_linear(normals: np.ndarray, albedo_lin: np.ndarray) -> np.ndarray:
    """Linear-light colour [..., 3] (unclipped) for world normals [..., 3] and linear albedo [..., 3]."""
    n = normals
    key = n[..., 0] * LIGHT_KEY[0] + n[..., 1] * LIGHT_KEY[1] + n[..., 2] * LIGHT_KEY[2]
    fill = n[..., 0] * LIGHT_FILL[0] + n[..., 1] * LIGHT_FILL[1] + n[..., 2] * LIGHT_FILL[2]
    light = K_AMBIENT * (0.5 + 0.5 * n[..., 2]) + K_KEY * np.maximum(key, 0.0) + K_FILL * np.maximum(fill, 0.0)
    return albedo_lin * light[..., None]


def shade(normals: np.ndarray, albedo_srgb: np.ndarray) -> np.ndarray:
    """Shaded sRGB colour [..., 3] in [0, 1] for world normals [..., 3] and display (sRGB) albedo [..., 3]."""
    return linear_to_srgb(shade_linear(normals, srgb_to_linear(albedo_srgb)))


def sample_pose(seed: int, idx: int, azim_range_deg: tuple[float, float] = (-180.0, 180.0),
                elev_range_deg: tuple[float, float] = (0.0, 90.0),
                radius: float = camera.RADIUS) -> tuple[float, float, np.ndarray]:
    """Pose of image idx: theta ~ U[azim range], sin(elev) ~ U[sin lo, sin hi] (numpy RNG [seed, idx, salt]).

    Returns (theta_deg, elev_deg, c2w float32 [4, 4]) with c2w from camera.pose_spherical (float64, then float32).
    """
    u = np.random.default_rng([int(seed), int(idx), _POSE_SALT]).random(2)
    theta = azim_range_deg[0] + (azim_range_deg[1] - azim_range_deg[0]) * u[0]
    s_lo, s_hi = math.sin(math.radians(elev_range_deg[0])), math.sin(math.radians(elev_range_deg[1]))
    elev = math.degrees(math.asin(min(max(s_lo + (s_hi - s_lo) * u[1], -1.0), 1.0)))
    c2w = camera.pose_spherical(torch.tensor([theta], dtype=torch.float64), torch.tensor([elev], dtype=torch.float64),
                                radius)[0]
    return float(theta), float(elev), c2w.numpy().astype(np.float32)


@functools.lru_cache(maxsize=16)
def _camera_grid(resolution: int, ss: int, pixel_center: float, fov_x_rad: float) -> tuple[np.ndarray, np.ndarray,
                                                                                            np.ndarray]:
    """Sub-sample coordinates su [S] (columns), sv [S] (rows) and camera-space directions [S, S, 3] (float64)."""
    S = resolution * ss
    coords = (torch.arange(S, dtype=torch.float64) + 0.5) / ss + (pixel_center - 0.5)             # [S]
    dirs = camera.camera_directions(coords[None, :], coords[:, None], resolution, fov_x_rad)      # [S, S, 3]
    return coords.numpy(), coords.numpy(), dirs.numpy()


def _block_mean(x: np.ndarray, ss: int) -> np.ndarray:
    """Mean over s x s blocks of [S, S, ...] in a fixed summation order."""
    acc = None
    for a in range(ss):
        for b in range(ss):
            acc = x[a::ss, b::ss] if acc is None else acc + x[a::ss, b::ss]
    return acc / float(ss * ss)


def render_object(obj: ObjectSpec, c2w: np.ndarray, resolution: int, ss: int = 2,
                  pixel_center: float = camera.DEFAULT_PIXEL_CENTER,
                  fov_x_rad: float = camera.FOV_X_RAD) -> dict[str, np.ndarray]:
    """Ray-cast one object at pose c2w [4, 4] (world = object frame).

    Returns image uint8 [H, W, 3] (over white), alpha float32 [H, W] (covered sub-sample fraction), depth float32
    [H, W] (mean camera-z depth of the covered sub-samples, +inf where alpha == 0), normal float32 [H, W, 3] (mean
    world normal of the covered sub-samples, renormalised; 0 on background) and part int16 [H, W] (part id of the
    nearest covered sub-sample; 0 on background).
    """
    c2w = np.asarray(c2w, np.float64)
    su, sv, dcam = _camera_grid(int(resolution), int(ss), float(pixel_center), float(fov_x_rad))
    R = c2w[:3, :3]
    dirs = tuple((dcam[..., 0] * R[i, 0] + dcam[..., 1] * R[i, 1] + dcam[..., 2] * R[i, 2]).astype(np.float32)
                 for i in range(3))                                                                # 3 x [S, S]
    arrays = obj.arrays()
    focal = camera.focal_length(resolution, fov_x_rad)
    t, idx = raycast.cast(arrays, c2w, dirs, focal, resolution, su, sv)                            # [S, S]
    hit = idx >= 0
    n_hit = raycast.hit_normals(arrays, c2w, dirs, t, idx, hit)                                    # [M, 3]
    color = np.ones(idx.shape + (3,), np.float64)                                                  # [S, S, 3]
    color[hit] = linear_to_srgb(shade_linear(n_hit, srgb_to_linear(arrays["albedo"])[idx[hit]]))
    image = np.floor(_block_mean(color, ss) * 255.0 + 0.5).clip(0, 255).astype(np.uint8)          # [H, W, 3]
    alpha = _block_mean(hit.astype(np.float64), ss)
    depth_sum = _block_mean(np.where(hit, t, 0.0).astype(np.float64), ss)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(alpha > 0, depth_sum / alpha, np.inf)
    normals = np.zeros(idx.shape + (3,), np.float32)                                               # [S, S, 3]
    normals[hit] = n_hit
    nsum = _block_mean(normals, ss)
    nlen = np.sqrt((nsum * nsum).sum(-1, keepdims=True))
    normal = np.where(nlen > 0, nsum / np.maximum(nlen, 1e-12), 0.0)
    return {"image": image, "alpha": alpha.astype(np.float32), "depth": depth.astype(np.float32),
            "normal": normal.astype(np.float32), "part": _nearest_part(t, idx, arrays["part"], ss)}


def _nearest_part(t: np.ndarray, idx: np.ndarray, parts: np.ndarray, ss: int) -> np.ndarray:
    """Part id [H, W] int16 of the nearest covered sub-sample of every pixel (0 = background)."""
    best_t = np.full(t[::ss, ::ss].shape, np.inf)
    best_part = np.zeros(best_t.shape, np.int16)
    for a in range(ss):
        for b in range(ss):
            ts, ks = t[a::ss, b::ss], idx[a::ss, b::ss]
            closer = (ks >= 0) & (ts < best_t)
            best_t = np.where(closer, ts, best_t)
            best_part = np.where(closer, parts[np.maximum(ks, 0)].astype(np.int16), best_part)
    return best_part


def render_index(family: str, idx: int, resolution: int, seed: int, ss: int = 2) -> dict:
    """Object, pose and render of image idx of the (family, seed) dataset."""
    obj = make_object(family, seed, idx)
    theta, elev, c2w = sample_pose(seed, idx)
    out = render_object(obj, c2w, resolution, ss=ss)
    out.update(obj=obj, c2w=c2w, theta_deg=theta, elev_deg=elev)
    return out


def render_images(family: str, indices: list[int] | np.ndarray, resolution: int, seed: int,
                  ss: int = 2) -> dict[str, object]:
    """Render images `indices` of a family in this process.

    Returns images uint8 [N, H, W, 3], c2w float32 [N, 4, 4], labels float32 [N, 25] (camera.label_from_pose),
    alpha/depth float32 [N, H, W], normal float32 [N, H, W, 3], part int16 [N, H, W], objects (list of ObjectSpec),
    theta_deg / elev_deg float64 [N].
    """
    outs = [render_index(family, int(i), resolution, seed, ss) for i in indices]
    if not outs:
        raise ValueError("render_images needs at least one index")
    c2w = np.stack([o["c2w"] for o in outs]).astype(np.float32).reshape(-1, 4, 4)
    labels = camera.label_from_pose(torch.from_numpy(c2w), resolution).numpy().astype(np.float32)
    res = {k: np.stack([o[k] for o in outs]) for k in ("image", "alpha", "depth", "normal", "part")}
    return {"images": res["image"], "c2w": c2w, "labels": labels, "alpha": res["alpha"], "depth": res["depth"],
            "normal": res["normal"], "part": res["part"], "objects": [o["obj"] for o in outs],
            "theta_deg": np.array([o["theta_deg"] for o in outs]), "elev_deg": np.array([o["elev_deg"] for o in outs])}


def contact_sheet(family: str, rows: int = 4, cols: int = 8, resolution: int = 64, seed: int = 0,
                  ss: int = 2) -> np.ndarray:
    """Images 0 .. rows*cols-1 of a family tiled row-major into one uint8 [rows*H, cols*W, 3] picture."""
    imgs = render_images(family, range(rows * cols), resolution, seed, ss)["images"]             # [N, H, W, 3]
    grid = imgs.reshape(rows, cols, resolution, resolution, 3).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * resolution, cols * resolution, 3)
