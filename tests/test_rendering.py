"""Volume rendering: sampling, positional encoding, analytic compositing cases, chunking, windows."""
from __future__ import annotations

import math

import torch

from training.rendering import camera
from training.rendering.renderer import render_image, render_rays
from training.rendering.volume import (composite, encoding_dim, linear_depths, positional_encoding, sample_depths,
                                       stratify)


def _reference_composite(sigma, rgb, t, dir_norm):
    """The authors' compositing (1e10 last interval, exclusive cumprod of 1 - alpha + 1e-10), written with cumprod."""
    delta = torch.cat([t[..., 1:] - t[..., :-1], torch.full_like(t[..., :1], 1e10)], -1) * dir_norm[..., None]
    alpha = 1.0 - torch.exp(-sigma * delta)
    ones = torch.ones_like(alpha[..., :1])
    trans = torch.cumprod(torch.cat([ones, 1.0 - alpha + 1e-10], -1), -1)[..., :-1]
    weights = alpha * trans
    acc = weights.sum(-1)
    return (weights[..., None] * rgb).sum(-2) + (1 - acc[..., None]), acc, (weights * t).sum(-1)


def test_depths_and_stratified_bins() -> None:
    t = linear_depths(3.0, 5.0, 5, dtype=torch.float64)
    torch.testing.assert_close(t, torch.tensor([3.0, 3.5, 4.0, 4.5, 5.0], dtype=torch.float64))
    torch.testing.assert_close(stratify(t, torch.zeros(5, dtype=torch.float64)),
                               torch.tensor([3.0, 3.25, 3.75, 4.25, 4.75], dtype=torch.float64))
    torch.testing.assert_close(stratify(t, torch.ones(5, dtype=torch.float64)),
                               torch.tensor([3.25, 3.75, 4.25, 4.75, 5.0], dtype=torch.float64))
    plain = sample_depths(3.0, 5.0, 5, (2, 3))
    assert plain.shape == (2, 3, 5) and torch.equal(plain[1, 2], t.float())
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    jit = sample_depths(3.0, 5.0, 5, (2, 3), perturb=True, generator=g1)
    assert torch.equal(jit, sample_depths(3.0, 5.0, 5, (2, 3), perturb=True, generator=g2))
    assert (jit[..., 1:] >= jit[..., :-1]).all() and jit.min() >= 3.0 and jit.max() <= 5.0
    assert not torch.equal(jit, plain)


def test_positional_encoding_order() -> None:
    p = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    enc = positional_encoding(p, multires=10)
    assert enc.shape == (1, 63) == (1, encoding_dim(10))
    expected = [p]
    for k in range(10):
        expected += [torch.sin(2.0 ** k * p), torch.cos(2.0 ** k * p)]
    torch.testing.assert_close(enc, torch.cat(expected, -1), rtol=0, atol=1e-13)


def test_composite_matches_reference_formula() -> None:
    torch.manual_seed(0)
    sigma = torch.relu(torch.randn(4, 7, 12, dtype=torch.float64)) * 3
    rgb = torch.rand(4, 7, 12, 3, dtype=torch.float64)
    t = torch.sort(3 + 2 * torch.rand(4, 7, 12, dtype=torch.float64), -1).values
    dir_norm = 1 + torch.rand(4, 7, dtype=torch.float64)
    out = composite(sigma, rgb, t, dir_norm)
    ref_rgb, ref_acc, ref_depth = _reference_composite(sigma, rgb, t, dir_norm)
    torch.testing.assert_close(out["rgb"], ref_rgb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["opacity"], ref_acc, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["depth"], ref_depth, rtol=1e-10, atol=1e-10)
    # Transmittance never increases; the reference's +1e-10 per step lets opacity exceed 1 by at most S * 1e-10.
    trans = 1.0 - torch.cumsum(out["weights"], -1)
    assert (trans[..., 1:] <= trans[..., :-1] + 1e-12).all() and (out["opacity"] <= 1 + 12e-10).all()


def test_empty_space_is_white() -> None:
    t = linear_depths(3.0, 5.0, 16).expand(2, 5, 16)
    out = composite(torch.zeros(2, 5, 16), torch.rand(2, 5, 16, 3), t, torch.ones(2, 5))
    torch.testing.assert_close(out["rgb"], torch.ones(2, 5, 3))
    assert torch.count_nonzero(out["opacity"]) == 0 and torch.count_nonzero(out["depth"]) == 0


def test_uniform_slab_opacity() -> None:
    # Samples exactly aligned with a slab of 20 intervals of 0.01 (and ||d|| = 2 doubles the path length).
    t = linear_depths(3.0, 5.0, 201, dtype=torch.float64)
    sigma = torch.zeros(201, dtype=torch.float64)
    sigma[50:70] = 1.7
    out = composite(sigma[None], torch.zeros(1, 201, 3, dtype=torch.float64), t[None],
                    torch.tensor([2.0], dtype=torch.float64), white_background=False)
    torch.testing.assert_close(out["opacity"], torch.tensor([1 - math.exp(-1.7 * 0.2 * 2)], dtype=torch.float64))
    # Through the full renderer with an analytic slab |z| < 0.25 (length 0.5) seen by a camera on the +z axis.
    def slab(pts):
        return torch.ones_like(pts), torch.where(pts[..., 2].abs() < 0.25, 3.0, 0.0).to(pts.dtype)
    c2w = camera.pose_spherical(torch.tensor([0.0], dtype=torch.float64), torch.tensor([90.0]), 4.0)
    o, d = camera.get_rays(c2w, 9)
    res = render_rays(slab, o[:, 4:5, 4], d[:, 4:5, 4], 3.0, 5.0, 2001)
    torch.testing.assert_close(res["opacity"], torch.tensor([[1 - math.exp(-1.5)]], dtype=torch.float64),
                               atol=5e-3, rtol=0)


def test_opaque_wall_depth() -> None:
    # A wall perpendicular to the optical axis at camera depth 3.7: every pixel reads depth 3.7 and opacity 1.
    c2w = camera.pose_spherical(torch.tensor([35.0], dtype=torch.float64), torch.tensor([20.0]), 4.0)
    centre, forward = c2w[0, :3, 3], -c2w[0, :3, 2]

    def wall(pts):
        depth = (pts - centre) @ forward
        return torch.full_like(pts, 0.25), torch.where(depth >= 3.7, 1e4, 0.0).to(pts.dtype)
    img, aux = render_image(wall, c2w, 8, num_samples=401)
    torch.testing.assert_close(aux["depth"], torch.full_like(aux["depth"], 3.7), atol=6e-3, rtol=0)
    torch.testing.assert_close(aux["opacity"], torch.ones_like(aux["opacity"]))
    torch.testing.assert_close(img, torch.full_like(img, -0.5))


def _blobby_field(pts):
    rgb = torch.sigmoid(torch.stack([pts[..., 0] * 3, pts[..., 1] * 2, pts[..., 2]], -1))
    return rgb, 4.0 * torch.sin(3 * pts).sum(-1) - 1.0


def test_chunked_equals_unchunked_with_randomness() -> None:
    # Chunking changes only the batching, not the formula: compared in float64 (float32 sums differ by luck).
    c2w = camera.sample_poses(3, generator=torch.Generator().manual_seed(4)).double()
    kw = dict(num_samples=9, perturb=True, raw_noise_std=1.0)
    full, aux_full = render_image(_blobby_field, c2w, 12, generator=torch.Generator().manual_seed(5), **kw)
    chunk, aux_chunk = render_image(_blobby_field, c2w, 12, generator=torch.Generator().manual_seed(5),
                                    ray_chunk=3 * 17, **kw)
    assert full.dtype == torch.float64
    torch.testing.assert_close(chunk, full, rtol=0, atol=1e-12)
    torch.testing.assert_close(aux_chunk["depth"], aux_full["depth"], rtol=0, atol=1e-12)
    again, _ = render_image(_blobby_field, c2w, 12, generator=torch.Generator().manual_seed(6), **kw)
    assert not torch.allclose(again, full)


def test_window_equals_cut_of_full_render() -> None:
    c2w = camera.sample_poses(3, generator=torch.Generator().manual_seed(8)).double()
    window = torch.tensor([[0, 0], [2, 7], [9, 9]])
    full, aux = render_image(_blobby_field, c2w, 16, num_samples=11)
    win, aux_win = render_image(_blobby_field, c2w, 16, window=window, patch_size=7, num_samples=11)
    assert win.shape == (3, 3, 7, 7)
    for b, (r0, c0) in enumerate(window.tolist()):
        torch.testing.assert_close(win[b], full[b, :, r0:r0 + 7, c0:c0 + 7], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(aux_win["depth"][b], aux["depth"][b, :, r0:r0 + 7, c0:c0 + 7])
