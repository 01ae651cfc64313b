"""Custom ops: FIR filter and twice-differentiable grid_sample (values vs references, gradcheck, gradgradcheck)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops.fir import downsample_padding, fir2d, fir2d_reference, make_fir_filter
from torch_utils.ops.grid_sample import grid_sample2d, grid_sample2d_reference
from tolerances import assert_within, sum_atol


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _grid(n: int, h: int, w: int, seed: int = 1, spread: float = 1.2) -> torch.Tensor:
    """Random sampling grid [n, h, w, 2], partly outside [-1, 1] to exercise zero padding."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, h, w, 2, generator=g, dtype=torch.float64) * 2 - 1) * spread


# ----------------------------------------------------------------------------------------------------------------------
# FIR.

def test_fir_filter_is_normalised_outer_product():
    f = make_fir_filter()
    assert f.shape == (4, 4)
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    expected = torch.tensor([1.0, 3, 3, 1])
    assert torch.allclose(f * 64, expected[:, None] * expected[None, :])


@pytest.mark.parametrize("padding,down", [(1, 2), (2, 1), (0, 1), (3, 2)])
def test_fir2d_matches_reference(padding: int, down: int):
    x = _rand(2, 3, 8, 8, dtype=torch.float32)
    f = make_fir_filter()
    out, ref = fir2d(x, f, padding, down), fir2d_reference(x, f, padding, down)
    assert out.shape == ref.shape
    assert_within(out, ref, sum_atol(f.numel(), float(f.abs().sum() * x.abs().max())))


def test_fir2d_asymmetric_filter_is_correlation():
    x = _rand(1, 1, 5, 5, dtype=torch.float32)
    f = torch.arange(9.0).reshape(3, 3)
    assert_within(fir2d(x, f, 1), fir2d_reference(x, f, 1), sum_atol(9, float(f.abs().sum() * x.abs().max())))


def test_fir_downsample_halves_and_keeps_constants():
    # Padding chosen for 'FIR then stride-2 1x1' gives exactly H/2; the interior of a constant image is unchanged.
    pad0, pad1 = downsample_padding(1)
    assert (pad0, pad1) == (1, 1)
    assert downsample_padding(3) == (2, 2)
    x = torch.full([1, 2, 8, 8], 3.0)
    y = fir2d(x, make_fir_filter(), padding=pad0, down=2)
    assert y.shape == (1, 2, 4, 4)
    assert torch.allclose(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 3.0))
    assert (y[..., 0, 0] < 3.0).all()  # zero padding darkens the border, as in upfirdn2d


def test_fir2d_gradcheck_and_gradgradcheck():
    x = _rand(1, 1, 6, 6).requires_grad_(True)
    f = make_fir_filter().double()
    assert torch.autograd.gradcheck(lambda t: fir2d(t, f, 1, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fir2d(t, f, 1, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fir2d(t, f, 2, 1), (x,))


# ----------------------------------------------------------------------------------------------------------------------
# grid_sample.

def test_grid_sample_matches_torch_and_reference():
    x = _rand(2, 3, 5, 7)
    grid = _grid(2, 4, 6)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert torch.allclose(grid_sample2d(x, grid), expected, atol=1e-12)
    assert torch.allclose(grid_sample2d_reference(x, grid), expected, atol=1e-12)


def test_grid_sample_identity_grid_is_exact():
    x = _rand(1, 2, 4, 8, dtype=torch.float32)
    ys = (torch.arange(4) * 2 + 1) / 4 - 1
    xs = (torch.arange(8) * 2 + 1) / 8 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None]
    assert torch.equal(grid_sample2d(x, grid), x)
    assert torch.equal(grid_sample2d_reference(x, grid), x)


def test_grid_sample_first_order_grads_match_reference():
    x = _rand(2, 2, 5, 5).requires_grad_(True)
    grid = _grid(2, 3, 4).requires_grad_(True)
    go = _rand(2, 2, 3, 4, seed=3)
    fast = torch.autograd.grad(grid_sample2d(x, grid), (x, grid), go)
    ref = torch.autograd.grad(grid_sample2d_reference(x, grid), (x, grid), go)
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, atol=1e-10)


def test_grid_sample_gradcheck():
    x = _rand(1, 2, 4, 5).requires_grad_(True)
    grid = _grid(1, 3, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(grid_sample2d, (x, grid))


def test_grid_sample_gradgradcheck_input_only():
    # The R1 case: the grid is a constant of the augmentation, gradients flow to the images only.
    x = _rand(2, 2, 4, 4).requires_grad_(True)
    grid = _grid(2, 3, 3)
    assert torch.autograd.gradgradcheck(grid_sample2d, (x, grid))


def test_grid_sample_gradgradcheck_input_and_grid():
    x = _rand(1, 2, 4, 4).requires_grad_(True)
    grid = _grid(1, 3, 3).requires_grad_(True)
    assert torch.autograd.gradgradcheck(grid_sample2d, (x, grid))
    assert torch.autograd.gradgradcheck(grid_sample2d_reference, (x, grid))


def test_grid_sample_r1_style_double_backward_matches_reference():
    # d/dw of ||d<v, sample(f(x, w))>/dx||^2 with the fast op equals the same through the reference op.
    x = _rand(2, 1, 5, 5).requires_grad_(True)
    grid = _grid(2, 4, 4, spread=0.9)
    v = _rand(2, 1, 4, 4, seed=5)
    results = []
    for op in (grid_sample2d, grid_sample2d_reference):
        w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        out = (op(x * w, grid).tanh() * v).sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.square().sum(), w)
        results.append(gw)
    assert torch.allclose(results[0], results[1], atol=1e-10)
    assert results[0].abs() > 0
