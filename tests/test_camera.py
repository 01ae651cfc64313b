"""Camera convention: pose_spherical vs the reference matrix product, pose prior, rays."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from training.rendering import camera


def _reference_pose(theta_deg: float, phi_deg: float, radius: float) -> np.ndarray:
    """NeRF-Blender pose_spherical: M @ R_theta @ R_phi @ T(r), written out from the formulas."""
    th, ph = math.radians(theta_deg), math.radians(phi_deg)
    trans = np.eye(4)
    trans[2, 3] = radius
    rot_phi = np.array([[1, 0, 0, 0], [0, math.cos(ph), -math.sin(ph), 0],
                        [0, math.sin(ph), math.cos(ph), 0], [0, 0, 0, 1]])
    rot_theta = np.array([[math.cos(th), 0, -math.sin(th), 0], [0, 1, 0, 0],
                          [math.sin(th), 0, math.cos(th), 0], [0, 0, 0, 1]])
    flip = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    return flip @ rot_theta @ rot_phi @ trans


@pytest.mark.parametrize("theta,elev", [(0.0, 0.0), (30.0, 30.0), (-135.0, 75.0), (170.0, 5.0), (90.0, 90.0)])
def test_pose_spherical_matches_reference_product(theta: float, elev: float) -> None:
    ours = camera.pose_spherical(torch.tensor([theta], dtype=torch.float64), torch.tensor([elev]), 4.0)[0]
    ref = _reference_pose(theta, -elev, 4.0)  # The reference's phi is minus our elevation.
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)


def test_sampled_poses_orthonormal_and_centre_ray_hits_origin() -> None:
    gen = torch.Generator().manual_seed(3)
    c2w = camera.sample_poses(64, generator=gen).double()                     # [64, 4, 4]
    rot = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(64, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[:, :3, 3].norm(dim=1), torch.full([64], 4.0, dtype=torch.float64))
    # Odd resolution with pixel centres: the middle pixel samples exactly the principal point.
    res = 9
    origins, dirs = camera.get_rays(c2w, res, pixel_center=0.5)             # [64, 9, 9, 3]
    o, d = origins[:, res // 2, res // 2], dirs[:, res // 2, res // 2]
    torch.testing.assert_close(d.norm(dim=1), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(o + 4.0 * d, torch.zeros(64, 3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_elevation_uniform_in_sine_and_azimuth_uniform() -> None:
    gen = torch.Generator().manual_seed(0)
    c2w = camera.sample_poses(4000, generator=gen).double()
    centre = c2w[:, :3, 3] / 4.0
    sin_elev = centre[:, 2].numpy()
    assert sin_elev.min() >= 0.0 and sin_elev.max() <= 1.0
    assert scipy.stats.kstest(sin_elev, "uniform", args=(0.0, 1.0)).pvalue > 1e-3
    azim = torch.rad2deg(torch.atan2(centre[:, 0], centre[:, 1])).numpy()   # theta = 0 is the +y axis
    assert scipy.stats.kstest(azim, "uniform", args=(-180.0, 360.0)).pvalue > 1e-3
    # A plain uniform elevation would be rejected by the same test.
    elev = np.degrees(np.arcsin(sin_elev))
    assert scipy.stats.kstest(elev, "uniform", args=(0.0, 90.0)).pvalue < 1e-6


def test_window_rays_equal_cut_of_full_rays() -> None:
    c2w = camera.sample_poses(3, generator=torch.Generator().manual_seed(1))
    window = torch.tensor([[0, 0], [3, 5], [8, 8]])
    o_full, d_full = camera.get_rays(c2w, 16)
    o_win, d_win = camera.get_rays(c2w, 16, window=window, patch_size=8)
    for b, (r0, c0) in enumerate(window.tolist()):
        torch.testing.assert_close(d_win[b], d_full[b, r0:r0 + 8, c0:c0 + 8])
        torch.testing.assert_close(o_win[b], o_full[b, r0:r0 + 8, c0:c0 + 8])
