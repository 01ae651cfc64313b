"""AugmentPipe: crops (every offset, = slicing), fixed flips, ADA transforms, ada_update, gradients, persistence."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dnnlib.util import UserError
from torch_utils.persistence import from_record, to_record
from training.augment import (AUGPIPE_SPECS, AugmentPipe, affine_resample, rotate2d, sample_crop_offsets, scale2d,
                              translate2d)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _imgs(n: int, res: int, c: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, c, res, res, generator=_gen(seed), dtype=dtype)


def _index_images(n: int, res: int) -> torch.Tensor:
    """[n, 1, res, res] where pixel (r, c) holds r * res + c."""
    return torch.arange(res * res, dtype=torch.float32).reshape(1, 1, res, res).repeat(n, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# Crops.

@pytest.mark.parametrize("mode", ["noaug", "fixed"])
def test_crop_hits_every_valid_offset(mode: str):
    res, P, n = 6, 3, 400
    pipe = AugmentPipe(mode, patch_size=P, p=0.0)
    out = pipe(_index_images(n, res), _gen(1))  # [n, 1, 3, 3]
    corner = out[:, 0, 0, 0].long()
    rows, cols = corner // res, corner % res
    hits = set(zip(rows.tolist(), cols.tolist()))
    assert hits == {(r, c) for r in range(res - P + 1) for c in range(res - P + 1)}  # includes the last row/column


def test_crop_equals_slicing():
    res, P = 9, 4
    x = _imgs(16, res)
    out = AugmentPipe("noaug", patch_size=P)(x, _gen(3))
    offsets = sample_crop_offsets(16, res, P, generator=_gen(3))  # the pipe draws the crop first
    for b, (r, c) in enumerate(offsets.tolist()):
        assert torch.equal(out[b], x[b, :, r:r + P, c:c + P])


def test_patch_sized_images_are_not_cropped_and_small_ones_rejected():
    x = _imgs(4, 8)
    assert torch.equal(AugmentPipe("noaug", patch_size=8)(x), x)
    with pytest.raises(ValueError, match="at least"):
        AugmentPipe("noaug", patch_size=16)(x)


@pytest.mark.parametrize("mode", ["fixed", "ada"])
def test_gradient_reaches_full_res_input_only_inside_the_crop(mode: str):
    res, P, n = 12, 6, 4
    x = _imgs(n, res).requires_grad_(True)
    pipe = AugmentPipe(mode, patch_size=P, p=1.0)
    out = pipe(x, _gen(5))
    weights = torch.rand(out.shape, generator=_gen(6)) + 0.5
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    offsets = sample_crop_offsets(n, res, P, generator=_gen(5))
    for b, (r, c) in enumerate(offsets.tolist()):
        inside = torch.zeros(res, res, dtype=torch.bool)
        inside[r:r + P, c:c + P] = True
        mag = grad[b].abs().sum(0)
        assert mag[~inside].max() == 0
        assert mag[inside].sum() > 0


# ----------------------------------------------------------------------------------------------------------------------
# Fixed mode.

def test_fixed_mode_flip_probability_is_a_quarter():
    n = 4000
    ramp = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).expand(n, 1, 2, 2)
    pipe = AugmentPipe("fixed", patch_size=2)
    assert float(pipe.p) == 0.5
    out = pipe(ramp, _gen(11))
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, 1]
    assert torch.equal(out[~flipped], ramp[~flipped]) and torch.equal(out[flipped], ramp[flipped].flip(3))
    rate = flipped.float().mean().item()
    sigma = math.sqrt(0.25 * 0.75 / n)
    assert abs(rate - 0.25) < 4 * sigma


def test_fixed_mode_p_zero_never_flips():
    x = _imgs(64, 4)
    assert torch.equal(AugmentPipe("fixed", patch_size=4, p=0.0)(x, _gen(0)), x)


def test_same_generator_seed_reproduces():
    x = _imgs(8, 10)
    for mode in ("fixed", "ada"):
        pipe = AugmentPipe(mode, patch_size=6, p=0.8)
        assert torch.equal(pipe(x, _gen(2)), pipe(x, _gen(2)))
        assert not torch.equal(pipe(x, _gen(2)), pipe(x, _gen(3)))


# ----------------------------------------------------------------------------------------------------------------------
# ADA: resampling conventions and exact transforms.

def test_affine_resample_conventions():
    # About the conventions, so in float64: a quarter turn is then exact to ~1e-15 (cos(pi/2) ~ 6e-17).
    f64 = dict(dtype=torch.float64)
    x = _imgs(2, 6, **f64)
    eye = torch.eye(3, **f64).repeat(2, 1, 1)
    assert torch.allclose(affine_resample(x, eye), x, rtol=0, atol=1e-12)
    assert torch.equal(affine_resample(_imgs(2, 8), eye.float()), _imgs(2, 8))  # float32: exact at a power of two
    quarter = torch.full([2], math.pi / 2, **f64)
    assert torch.allclose(affine_resample(x, rotate2d(quarter)), torch.rot90(x, 1, dims=(2, 3)), rtol=0, atol=1e-12)
    shifted = affine_resample(x, translate2d(torch.ones(2, **f64), torch.zeros(2, **f64)))  # one pixel to the right
    assert torch.allclose(shifted[..., :-1], x[..., 1:], rtol=0, atol=1e-12)
    flipped = affine_resample(x, scale2d(-torch.ones(2, **f64), torch.ones(2, **f64)))
    assert torch.allclose(flipped, x.flip(3), rtol=0, atol=1e-12)


def test_blit_flip_and_rotate90_give_exact_dihedral_images():
    x = _imgs(32, 8)
    # The sampling grid is float32 whatever the input: its coordinates (~res pixels) carry a few ulps, and a bilinear
    # tap errs by that times the image's slope (<= 2 max|x| per pixel). A wrong transform errs by ~max|x|.
    tol = 4 * 8 * torch.finfo(torch.float32).eps * 2 * float(x.abs().max())
    spec = {**AUGPIPE_SPECS["blit"], "xint": 0.0}
    out = AugmentPipe("ada", patch_size=8, p=1.0, **spec)(x, _gen(4))
    seen = set()
    for b in range(32):
        variants = [torch.rot90(t, k, dims=(1, 2)) for t in (x[b], x[b].flip(2)) for k in range(4)]
        errs = [float((out[b] - v).abs().max()) for v in variants]
        assert min(errs) < tol
        seen.add(int(np.argmin(errs)))
    assert len(seen) >= 6  # the transforms really vary


def test_integer_translation_is_an_exact_shift_with_symmetric_reflection():
    res, n = 8, 16
    x = _imgs(n, res, dtype=torch.float64)
    out = AugmentPipe("ada", patch_size=res, p=1.0, **{**AUGPIPE_SPECS["blit"], "xflip": 0.0, "rotate90": 0.0})(
        x, _gen(8))
    padded = np.pad(x.numpy(), [(0, 0), (0, 0), (res, res), (res, res)], mode="symmetric")
    max_shift = round(0.125 * res)
    for b in range(n):
        errs = {(dy, dx): np.abs(out[b].numpy() - padded[b, :, res + dy:2 * res + dy, res + dx:2 * res + dx]).max()
                for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)}
        assert min(errs.values()) < 1e-9


def test_geometric_transforms_keep_constant_images_constant():
    # Reflection padding: no zero borders under rotation, scaling or fractional translation.
    x = torch.full([8, 3, 8, 8], 0.7, dtype=torch.float64)
    out = AugmentPipe("ada", patch_size=8, p=1.0, **AUGPIPE_SPECS["geom"])(x, _gen(9))
    assert torch.allclose(out, x, rtol=0, atol=1e-12)
    y = AugmentPipe("ada", patch_size=8, p=1.0, **AUGPIPE_SPECS["geom"])(_imgs(8, 8), _gen(9))
    assert not torch.allclose(y, _imgs(8, 8), atol=1e-2)


def _color_only(name: str) -> dict:
    return {**AUGPIPE_SPECS["color"], **{k: 0.0 for k in ("brightness", "contrast", "lumaflip", "hue", "saturation")
                                         if k != name}}


def test_color_transforms_follow_their_definitions():
    x = _imgs(16, 4, dtype=torch.float64)  # about the definitions: float64, tolerances far above its rounding
    run = lambda name: AugmentPipe("ada", patch_size=4, p=1.0, **_color_only(name))(x, _gen(12))  # noqa: E731
    diff = run("brightness") - x
    assert torch.allclose(diff, diff[:, :1, :1, :1].expand_as(diff), atol=1e-10)
    ratio = run("contrast") / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-8)
    chroma = lambda t: t - _luma(t)[:, None]  # noqa: E731
    for name in ("hue", "saturation"):
        assert torch.allclose(_luma(run(name)), _luma(x), atol=1e-5)
    assert torch.allclose(chroma(run("hue")).norm(dim=1), chroma(x).norm(dim=1), atol=1e-5)
    flipped = run("lumaflip")
    assert torch.allclose(chroma(flipped), chroma(x), atol=1e-5)
    negated = torch.isclose(_luma(flipped), -_luma(x), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(_luma(flipped), _luma(x), atol=1e-5).flatten(1).all(1)
    assert (negated | same).all() and negated.any() and same.any()


def test_grayscale_colour_and_bad_channel_count():
    pipe = AugmentPipe("ada", patch_size=4, p=1.0, **AUGPIPE_SPECS["color"])
    assert pipe(_imgs(4, 4, c=1), _gen(0)).shape == (4, 1, 4, 4)
    with pytest.raises(UserError):
        pipe(_imgs(4, 4, c=2), _gen(0))


@pytest.mark.parametrize("res", [8, 12])
def test_ada_with_p_zero_is_identity_except_crop(res: int):
    x = _imgs(6, res)
    out = AugmentPipe("ada", patch_size=8, p=0.0)(x, _gen(4))
    expected = AugmentPipe("noaug", patch_size=8)(x, _gen(4))
    assert torch.allclose(out, expected, atol=1e-6)


def test_full_ada_pipe_gradcheck_and_gradgradcheck():
    pipe = AugmentPipe("ada", patch_size=4, p=0.9)
    x = _imgs(1, 5, dtype=torch.float64).requires_grad_(True)
    fn = lambda t: pipe(t, _gen(21))  # noqa: E731  (same random transforms on every call)
    assert fn(x).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# ----------------------------------------------------------------------------------------------------------------------
# p, ada_update, persistence.

def test_ada_update_moves_p_on_device_and_never_below_zero():
    pipe = AugmentPipe("ada", patch_size=4)
    assert float(pipe.p) == 0.0
    buf = pipe.p
    pipe.ada_update(torch.tensor(0.9), num_images=1000, target=0.6, ada_kimg=1)  # overfitting: raise p
    assert pipe.p is buf and pipe.p.shape == ()
    assert float(pipe.p) == pytest.approx(1.0)
    pipe.ada_update(torch.tensor(0.2), num_images=250, target=0.6, ada_kimg=1)   # not overfitting: lower p
    assert float(pipe.p) == pytest.approx(0.75)
    for _ in range(5):
        pipe.ada_update(torch.tensor(-1.0), num_images=500, target=0.6, ada_kimg=1)
    assert float(pipe.p) == 0.0
    with pytest.raises(RuntimeError, match="only 'ada'"):
        AugmentPipe("fixed").ada_update(torch.tensor(1.0), 4)


def test_persistence_round_trip_keeps_kwargs_and_p():
    pipe = AugmentPipe("ada", patch_size=6, rotate=0.5, hue_max=0.3)
    pipe.ada_update(torch.tensor(1.0), num_images=300, ada_kimg=1)
    pipe2 = from_record(to_record(pipe))
    assert pipe2.init_kwargs == pipe.init_kwargs and pipe2.mode == "ada"
    assert float(pipe2.p) == pytest.approx(0.3)
    x = _imgs(4, 10)
    assert torch.equal(pipe(x, _gen(1)), pipe2(x, _gen(1)))


def test_bad_construction_raises_user_error():
    with pytest.raises(UserError, match="mode"):
        AugmentPipe("crop")
    with pytest.raises(UserError, match=">= 0"):
        AugmentPipe("ada", xflip=-1.0)
    with pytest.raises(UserError):
        AugmentPipe("fixed", p=-0.1)


@pytest.mark.slow
def test_pipe_and_d_compile_without_graph_breaks():
    from training.networks.discriminator import Discriminator
    torch.manual_seed(0)
    D = Discriminator(8, channel_base=64, channel_max=8)
    pipe = AugmentPipe("ada", patch_size=8, p=0.7)
    step = torch.compile(lambda t: D(pipe(t), mp_dtype=torch.bfloat16), backend="aot_eager", fullgraph=True)
    x = _imgs(4, 12).requires_grad_(True)
    out = step(x)
    out.sum().backward()
    assert out.shape == (4, 1) and torch.isfinite(x.grad).all()
