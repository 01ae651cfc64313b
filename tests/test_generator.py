"""Generator: parameter counts, batched render == per-object reference loop, chunks, windows, gradients, API."""
from __future__ import annotations

import math

import pytest
import torch

from dnnlib.util import UserError
from torch_utils import persistence
from training.networks.generator import Generator
from training.rendering import camera

SMALL = dict(z_dim=8, w_dim=8, num_layers=8, width=16, rank=3, img_resolution=8, num_samples=6)


def _small_g(seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    G = Generator(**{**SMALL, **overrides})
    with torch.no_grad():  # Non-zero biases so their handling is exercised.
        for name, p in G.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1 / (0.01 if name.startswith("mapping") else 1.0))
    return G


@pytest.mark.parametrize("num_layers,expected", [(4, 1_498_658), (8, 2_975_000)])
def test_parameter_counts_match_reference(num_layers: int, expected: int) -> None:
    G = Generator(num_layers=num_layers)
    assert sum(p.numel() for p in G.parameters()) == expected
    assert (G.img_resolution, G.num_samples, G.z_dim, G.w_dim, G.num_layers) == (128, 32, 128, 128, num_layers)
    assert (G.near, G.far) == (3.0, 5.0)


def _naive_layer_weight(layer, w_b: torch.Tensor) -> torch.Tensor:
    a, r = layer.affine, layer.rank
    s = a.weight @ w_b / math.sqrt(a.in_features) + a.bias                      # [(c_in + c_out) r]
    U = s[:layer.out_features * r].reshape(layer.out_features, r)
    V = s[layer.out_features * r:].reshape(r, layer.in_features)
    W = layer.weight * (1 + U @ V / math.sqrt(r))
    return W / (W.norm(dim=1, keepdim=True) + 1e-8)


def _reference_object(G: Generator, w_b, c2w_b, window_b, patch, u_b, noise_b):
    """One object, one layer at a time, exactly as REFERENCE.md §1-2 describes (no batching, no gain folding)."""
    o, d = camera.get_rays(c2w_b[None], G.img_resolution, None if window_b is None else window_b[None], patch)
    h_img, w_img = o.shape[1:3]
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)                                   # [R, 3]
    t = torch.linspace(G.near, G.far, G.num_samples, dtype=torch.float64).expand(o.shape[0], -1)
    if u_b is not None:
        mids = 0.5 * (t[:, 1:] + t[:, :-1])
        lower, upper = torch.cat([t[:, :1], mids], 1), torch.cat([mids, t[:, -1:]], 1)
        t = lower + (upper - lower) * u_b
    pts = o[:, None] + t[..., None] * d[:, None]                                # [R, S, 3]
    pe = [pts] + [f(2.0 ** k * pts) for k in range(10) for f in (torch.sin, torch.cos)]
    pe = torch.cat(pe, -1)
    h = pe
    for i, layer in enumerate(G.nerf.layers):
        h = h @ _naive_layer_weight(layer, w_b).T + layer.bias
        if i < len(G.nerf.layers) - 1:
            h = torch.relu(h) * math.sqrt(2)
            if i == 4 and G.num_layers >= 6:
                h = torch.cat([pe, h], -1)
    rgb, raw_sigma = torch.sigmoid(h[..., :3]), h[..., 3]
    sigma = torch.relu(raw_sigma + (0 if noise_b is None else noise_b))
    delta = torch.cat([t[:, 1:] - t[:, :-1], torch.full_like(t[:, :1], 1e10)], 1) * d.norm(dim=1, keepdim=True)
    alpha = 1 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], 1), 1)[:, :-1]
    weights = alpha * trans
    color = (weights[..., None] * rgb).sum(1) + 1 - weights.sum(1, keepdim=True)
    return (2 * color - 1).T.reshape(3, h_img, w_img), (weights * t).sum(1).reshape(1, h_img, w_img)


@pytest.mark.parametrize("perturb,patch,num_layers", [(True, 5, 8), (False, None, 8), (True, 4, 4)])
def test_batched_equals_per_object_reference(perturb: bool, patch: int | None, num_layers: int) -> None:
    G = _small_g(num_layers=num_layers).double()
    B, S = 3, G.num_samples
    z = torch.randn(B, G.z_dim, dtype=torch.float64)
    c2w = G.sample_poses(B, generator=torch.Generator().manual_seed(1)).double()
    window = None if patch is None else torch.tensor([[0, 3], [2, 1], [3, 3]])
    img, aux = G(z, c2w=c2w, window=window, patch_size=patch, perturb=perturb,
                 generator=torch.Generator().manual_seed(2), return_aux=True)
    R = (patch or G.img_resolution) ** 2
    gen = torch.Generator().manual_seed(2)  # The renderer's documented draw order: offsets, then density noise.
    u = torch.rand([B, R, S], generator=gen, dtype=torch.float64) if perturb else None
    noise = torch.randn([B, R, S], generator=gen, dtype=torch.float64) if perturb else None
    for b in range(B):
        w_b = G.mapping(z[b:b + 1])[0]
        ref_img, ref_depth = _reference_object(G, w_b, c2w[b], None if window is None else window[b], patch,
                                               None if u is None else u[b], None if noise is None else noise[b])
        torch.testing.assert_close(img[b], ref_img, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(aux["depth"][b], ref_depth, rtol=1e-9, atol=1e-9)


def test_chunked_and_window_renders_match_full() -> None:
    # float64: chunks and windows change the GEMM shapes, and float32 summation order with them (seen at 1.4e-5)
    G = _small_g(img_resolution=12).double()
    z = G.sample_z(3, generator=torch.Generator().manual_seed(3)).double()
    c2w = G.sample_poses(3, generator=torch.Generator().manual_seed(4)).double()
    full = G(z, c2w=c2w)
    torch.testing.assert_close(G(z, c2w=c2w, ray_chunk=3 * 7), full, rtol=0, atol=1e-10)
    window = G.sample_windows(3, 5, generator=torch.Generator().manual_seed(5))
    win = G(z, c2w=c2w, window=window, patch_size=5)
    for b, (r0, c0) in enumerate(window.tolist()):
        torch.testing.assert_close(win[b], full[b, :, r0:r0 + 5, c0:c0 + 5], rtol=0, atol=1e-10)


def test_every_parameter_gets_gradient_from_patch_loss() -> None:
    G = Generator(**SMALL)
    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(7)
    img = G(G.sample_z(4, generator=gen), patch_size=4, perturb=True, generator=gen, update_w_avg=True)
    assert img.shape == (4, 3, 4, 4)
    (img * torch.randn_like(img)).sum().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    assert torch.count_nonzero(G.mapping_network.w_avg) > 0


def test_randomness_is_explicit() -> None:
    G = _small_g()
    z = G.sample_z(2, generator=torch.Generator().manual_seed(0))
    a = G(z, patch_size=4, perturb=True, generator=torch.Generator().manual_seed(1))
    b = G(z, patch_size=4, perturb=True, generator=torch.Generator().manual_seed(1))
    c = G(z, patch_size=4, perturb=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    c2w = G.sample_poses(2, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(10)
    d = G(z, c2w=c2w)
    torch.manual_seed(11)
    assert torch.equal(d, G(z, c2w=c2w))  # perturb=False draws nothing
    assert d.dtype == torch.float32 and d.shape == (2, 3, 8, 8) and d.min() >= -1 and d.max() <= 1 + 1e-6


def test_query_field_matches_render_path() -> None:
    G = _small_g()
    w = G.mapping(G.sample_z(2))
    pts = torch.randn(2, 50, 3)
    rgb, sigma = G.query_field(w, pts)
    rgb_c, sigma_c = G.query_field(w, pts, point_chunk=7)
    assert rgb.shape == (2, 50, 3) and sigma.shape == (2, 50) and (sigma >= 0).all()
    torch.testing.assert_close(rgb_c, rgb)
    torch.testing.assert_close(sigma_c, sigma)
    raw = G.nerf(w, pts)
    torch.testing.assert_close(sigma, torch.relu(raw[..., 3]))


def test_persistence_round_trip_and_truncation() -> None:
    G = _small_g(azim_range_deg=[-90.0, 90.0])
    G.mapping_network.w_avg.normal_()
    G2 = persistence.from_record(persistence.to_record(G))
    z = G.sample_z(2)
    c2w = G.sample_poses(2)
    torch.testing.assert_close(G2(z, c2w=c2w, psi=0.5), G(z, c2w=c2w, psi=0.5))
    zero_psi = G(z, c2w=c2w[:1].expand(2, 4, 4), psi=0.0)
    torch.testing.assert_close(zero_psi[0], zero_psi[1])


def test_autocast_keeps_fp32_output() -> None:
    G = _small_g(img_resolution=16, num_layers=4)
    z, c2w = G.sample_z(4), G.sample_poses(4)
    ref = G(z, c2w=c2w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z, c2w=c2w)
    assert img.dtype == torch.float32
    # A ray whose last-sample density is ~0 flips between clear and opaque (its delta is 1e10), so compare most pixels.
    assert ((img - ref).abs() > 0.05).float().mean() < 0.03


def test_bad_arguments_raise_user_errors() -> None:
    G = _small_g()
    z = G.sample_z(1)
    with pytest.raises(UserError):
        G(z, window=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(UserError):
        G(z, patch_size=9)
    with pytest.raises(UserError):
        Generator(num_samples=1)
    starts = G.sample_windows(2000, 4, generator=torch.Generator().manual_seed(0))
    assert starts.min() == 0 and starts.max() == 4  # Every valid offset, the last row/column included.


def test_full_renders_are_chunked_by_default(monkeypatch) -> None:
    """ray_chunk=None bounds the points per field call for full images (metrics at batch 16 must fit a T4)."""
    G = _small_g(img_resolution=12)
    monkeypatch.setattr(G, "DEFAULT_RAY_CHUNK", 100)
    sizes = []
    evaluate = G.nerf.evaluate
    monkeypatch.setattr(G.nerf, "evaluate", lambda weights, pts: sizes.append(pts.shape[0] * pts.shape[1])
                        or evaluate(weights, pts))
    z = G.sample_z(3, generator=torch.Generator().manual_seed(3))
    c2w = G.sample_poses(3, generator=torch.Generator().manual_seed(4))
    img = G(z, c2w=c2w)
    assert len(sizes) > 1 and max(sizes) <= 100 * G.num_samples
    sizes.clear()
    torch.testing.assert_close(G(z, c2w=c2w, ray_chunk=10 ** 9), img, rtol=0, atol=1e-6)
    assert len(sizes) == 1                                        # an explicit chunk still wins
    sizes.clear()
    G(z, c2w=c2w, window=G.sample_windows(3, 5, generator=torch.Generator().manual_seed(5)), patch_size=5)
    assert len(sizes) == 1                                        # windows: one call
