"""Camera conventions shared by the NeRF renderer and the synthetic data renderer (one source of truth).

Convention (NeRF-Blender / OpenGL camera-to-world, world z up), as in the reference implementation:
  pose_spherical(theta, phi, r) = M @ R_phi(phi) @ R_theta(theta) @ T(r), with M = [[-1,0,0],[0,0,1],[0,1,0]];
  camera centre o = r * (sin(theta) cos(e), cos(theta) cos(e), sin(e)) with elevation e = -phi; the camera looks at
  the origin along its -z axis. theta = 0 puts the camera on +y.
Intrinsics: f = W / (2 tan(fov_x / 2)) with W the full image width, principal point (W/2, H/2).
Pixels: pixel (row i, column j) is sampled at u = j + pixel_center, v = i + pixel_center.
  pixel_center = 0.5 (our default, pixel centres; recorded in dataset.json) or 0.0 (the reference: integer coords).
Ray directions are unnormalised with camera-space z = -1, so t along a ray is the camera-z depth (near/far 3..5).

Every function works on torch tensors (any device); pass numpy arrays through torch.from_numpy if needed.
"""
from __future__ import annotations

import math

import torch

FOV_X_RAD = 0.6911112070083618  # Blender lego camera_angle_x, ~39.60 deg.
RADIUS = 4.0
DEFAULT_PIXEL_CENTER = 0.5
CONVENTION = "nerf_blender_opengl_c2w_z_up"


def focal_length(resolution: int, fov_x_rad: float = FOV_X_RAD) -> float:
    """Focal length in pixels for a square image of `resolution` pixels."""
    return 0.5 * resolution / math.tan(0.5 * fov_x_rad)


def intrinsics(resolution: int, fov_x_rad: float = FOV_X_RAD) -> torch.Tensor:
    """3x3 K in pixels."""
    f = focal_length(resolution, fov_x_rad)
    return torch.tensor([[f, 0.0, resolution / 2], [0.0, f, resolution / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)


def pose_spherical(theta_deg: torch.Tensor, elev_deg: torch.Tensor, radius: float | torch.Tensor = RADIUS) -> torch.Tensor:
    """Camera-to-world matrices [B, 4, 4] for azimuth theta and elevation e (degrees; e = -phi of the reference)."""
    theta_deg = torch.as_tensor(theta_deg)
    dtype = theta_deg.dtype if theta_deg.is_floating_point() else torch.float32
    th = torch.deg2rad(theta_deg.to(dtype)).reshape(-1)
    el = torch.deg2rad(torch.as_tensor(elev_deg, device=th.device).to(dtype)).reshape(-1)
    if isinstance(radius, torch.Tensor):
        r = radius.to(device=th.device, dtype=dtype).expand_as(th)
    else:  # No host-to-device copy (keeps this function usable inside CUDA graph capture).
        r = torch.full_like(th, float(radius))
    st, ct, se, ce = torch.sin(th), torch.cos(th), torch.sin(el), torch.cos(el)
    zero, one = torch.zeros_like(th), torch.ones_like(th)
    right = torch.stack([-ct, st, zero], -1)              # camera x axis in world
    up = torch.stack([-st * se, -ct * se, ce], -1)        # camera y axis in world
    back = torch.stack([st * ce, ct * ce, se], -1)        # camera z axis in world (camera looks along -z)
    centre = back * r[:, None]
    rot = torch.stack([right, up, back], -1)              # [B, 3, 3], columns = axes
    top = torch.cat([rot, centre[:, :, None]], -1)        # [B, 3, 4]
    bottom = torch.stack([zero, zero, zero, one], -1)[:, None, :]
    return torch.cat([top, bottom], 1)                    # [B, 4, 4]


def sample_pose_angles(n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                       azim_range_deg: tuple[float, float] = (-180.0, 180.0),
                       elev_range_deg: tuple[float, float] = (0.0, 90.0),
                       azim_std_deg: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose prior of the reference: azimuth uniform (or normal with std azim_std_deg), sin(elevation) uniform.

    Returns (theta_deg [n], elev_deg [n]) as float32. Uses only `generator` (never the global RNG when given).
    """
    if generator is not None:
        device = generator.device
    u = torch.rand([2, n], generator=generator, device=device, dtype=torch.float32)
    if azim_std_deg is not None:
        theta = torch.randn([n], generator=generator, device=device, dtype=torch.float32) * azim_std_deg
    else:
        theta = azim_range_deg[0] + (azim_range_deg[1] - azim_range_deg[0]) * u[0]
    s_lo, s_hi = math.sin(math.radians(elev_range_deg[0])), math.sin(math.radians(elev_range_deg[1]))
    elev = torch.rad2deg(torch.asin((s_lo + (s_hi - s_lo) * u[1]).clamp(-1.0, 1.0)))
    return theta, elev


def sample_poses(n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 radius: float = RADIUS, **prior) -> torch.Tensor:
    """Camera-to-world matrices [n, 4, 4] drawn from the pose prior (see sample_pose_angles for `prior`)."""
    theta, elev = sample_pose_angles(n, generator=generator, device=device, **prior)
    return pose_spherical(theta, elev, radius)


def pixel_grid(resolution: int, pixel_center: float = DEFAULT_PIXEL_CENTER, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) sample coordinates of every pixel: u[j] = j + pixel_center (columns), v[i] = i + pixel_center (rows)."""
    idx = torch.arange(resolution, device=device, dtype=dtype) + pixel_center
    return idx, idx


def camera_directions(u: torch.Tensor, v: torch.Tensor, resolution: int, fov_x_rad: float = FOV_X_RAD) -> torch.Tensor:
    """Camera-space directions ((u - W/2)/f, -(v - H/2)/f, -1) for broadcastable u (columns) and v (rows)."""
    f = focal_length(resolution, fov_x_rad)
    u, v = torch.broadcast_tensors(u, v)
    return torch.stack([(u - 0.5 * resolution) / f, -(v - 0.5 * resolution) / f, -torch.ones_like(u)], -1)


def get_rays(c2w: torch.Tensor, resolution: int, window: torch.Tensor | None = None, patch_size: int | None = None,
             pixel_center: float = DEFAULT_PIXEL_CENTER, fov_x_rad: float = FOV_X_RAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays for full images or for P x P windows.

    c2w: [B, 4, 4]. window: None (full image); [B, 2] integer (row0, col0) per object with patch_size P, rays at
    full-resolution pixel spacing; or [B, 3] float (row0, col0, spacing): ray i of a row at pixel coordinate
    row0 + pixel_center + i * spacing (spacing 1 = the integer window's rays; see `sample_windows`).
    Returns origins [B, h, w, 3] and unnormalised world directions [B, h, w, 3] (camera-z component -1).
    """
    B, device, dtype = c2w.shape[0], c2w.device, c2w.dtype
    if window is None:
        u, v = pixel_grid(resolution, pixel_center, device, dtype)
        uu, vv = u[None, None, :].expand(B, resolution, resolution), v[None, :, None].expand(B, resolution, resolution)
    else:
        if patch_size is None:
            raise ValueError("patch_size is required with a window")
        steps = torch.arange(patch_size, device=device, dtype=dtype)
        win = window.to(device=device, dtype=dtype)
        if win.shape[1] == 3:                           # (row0, col0, spacing): rays `spacing` pixels apart
            steps = steps[None, :] * win[:, 2:3]                                         # [B, P]
        offs = steps + pixel_center
        vv = (win[:, 0, None] + offs)[:, :, None].expand(B, patch_size, patch_size)
        uu = (win[:, 1, None] + offs)[:, None, :].expand(B, patch_size, patch_size)
    dirs_cam = camera_directions(uu, vv, resolution, fov_x_rad)                  # [B, h, w, 3]
    rot = c2w[:, :3, :3]
    dirs = torch.einsum("bij,bhwj->bhwi", rot, dirs_cam)                         # [B, h, w, 3]
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def max_window_spacing(resolution: int, patch_size: int, pixel_center: float = DEFAULT_PIXEL_CENTER) -> float:
    """The largest ray spacing (in full-resolution pixels) of a P x P window that stays inside the image: its rays
    span (P - 1) * spacing between the first and the last pixel centre, at most resolution - 1 (~ resolution / P,
    the whole image in one patch)."""
    return max(1.0, (resolution - 1) / (patch_size - 1)) if patch_size > 1 else 1.0


def sample_windows(n: int, resolution: int, patch_size: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu", max_spacing: float = 1.0) -> torch.Tensor:
    """Random P x P windows of an image.

    max_spacing 1 (the reference): (row0, col0) [n, 2] int64 starts, uniform over every valid offset
    0..resolution-patch_size (rays one pixel apart). max_spacing > 1 (random-scale patches, as in GRAF): [n, 3]
    float32 (row0, col0, spacing) with spacing ~ U[1, max_spacing] (clamped to `max_window_spacing`) and the start
    uniform over the positions that keep the window inside the image; fakes and reals draw from the same law.
    """
    if patch_size > resolution:
        raise ValueError(f"patch_size {patch_size} is larger than the image resolution {resolution}")
    if generator is not None:
        device = generator.device
    if max_spacing <= 1.0:
        return torch.randint(0, resolution - patch_size + 1, [n, 2], generator=generator, device=device)
    top = min(float(max_spacing), max_window_spacing(resolution, patch_size))
    u = torch.rand([n, 3], generator=generator, device=device, dtype=torch.float32)
    spacing = 1.0 + (top - 1.0) * u[:, 2]                                       # [n]
    room = (resolution - 1) - (patch_size - 1) * spacing                         # [n] free pixels, >= 0
    return torch.stack([u[:, 0] * room, u[:, 1] * room, spacing], dim=1)        # [n, 3]


def label_from_pose(c2w: torch.Tensor, resolution: int, fov_x_rad: float = FOV_X_RAD) -> torch.Tensor:
    """EG3D-compatible 25-float labels [B, 25]: 16 c2w floats (row-major) + 9 K floats normalised by the width."""
    K = intrinsics(resolution, fov_x_rad).to(c2w.dtype)
    K[:2] /= resolution
    return torch.cat([c2w.reshape(-1, 16), K.reshape(1, 9).expand(c2w.shape[0], 9).to(c2w.device)], 1)
