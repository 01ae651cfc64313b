"""Random-scale training windows (config patch_max_spacing > 1): the window law, G's rays, the reals' sampler."""
from __future__ import annotations

import pytest
import torch

from training.augment import AugmentPipe, crop_patches, sample_patches
from training.config import resolve_config
from training.rendering import camera
from dnnlib.util import UserError


def test_reference_windows_are_unchanged_at_spacing_one():
    a = camera.sample_windows(64, 128, 32, generator=torch.Generator().manual_seed(3))
    b = camera.sample_windows(64, 128, 32, generator=torch.Generator().manual_seed(3), max_spacing=1.0)
    assert a.dtype == torch.int64 and a.shape == (64, 2) and torch.equal(a, b)


@pytest.mark.parametrize("res, P, top", [(128, 32, 2.5), (128, 32, 100.0), (32, 16, 2.0), (64, 8, 9.0)])
def test_random_scale_windows_stay_inside_the_image(res, P, top):
    w = camera.sample_windows(4000, res, P, generator=torch.Generator().manual_seed(0), max_spacing=top)
    assert w.shape == (4000, 3) and w.dtype == torch.float32
    hi = min(top, camera.max_window_spacing(res, P))
    row0, col0, s = w.unbind(1)
    assert s.min() >= 1.0 and s.max() <= hi + 1e-5 and s.max() > 1 + 0.9 * (hi - 1)    # spread over [1, hi]
    last = (P - 1) * s                                                                  # first to last ray
    for start in (row0, col0):
        assert start.min() >= 0 and (start + last).max() <= res - 1 + 1e-4


def test_whole_image_spacing_spans_the_first_to_the_last_pixel():
    assert camera.max_window_spacing(128, 32) == pytest.approx(127 / 31)
    assert camera.max_window_spacing(32, 32) == 1.0


def test_rays_of_a_spacing_one_window_equal_the_integer_windows():
    c2w = camera.sample_poses(3, generator=torch.Generator().manual_seed(1))
    win = torch.tensor([[0, 5], [17, 3], [96, 96]])
    o1, d1 = camera.get_rays(c2w, 128, window=win, patch_size=32)
    o2, d2 = camera.get_rays(c2w, 128, window=torch.cat([win.float(), torch.ones(3, 1)], 1), patch_size=32)
    torch.testing.assert_close(d2, d1, rtol=0, atol=1e-6)
    torch.testing.assert_close(o2, o1)


def test_reals_are_sampled_where_g_s_rays_meet_the_image():
    """Directions are affine in pixel coordinates, so the full image's ray directions, sampled bilinearly at a
    window by `sample_patches`, must equal the directions `get_rays` gives that window: the reals' patch shows
    exactly the part of the frame the fakes' patch renders."""
    res, P = 64, 8
    gen = torch.Generator().manual_seed(2)
    c2w = camera.sample_poses(5, generator=gen)
    win = camera.sample_windows(5, res, P, generator=gen, max_spacing=50.0)                 # [5, 3], up to whole
    _, full = camera.get_rays(c2w, res)                                                    # [5, res, res, 3]
    _, patch = camera.get_rays(c2w, res, window=win, patch_size=P)                         # [5, P, P, 3]
    sampled = sample_patches(full.permute(0, 3, 1, 2).contiguous(), win, P)                # [5, 3, P, P]
    torch.testing.assert_close(sampled.permute(0, 2, 3, 1), patch, rtol=0, atol=2e-5)


def test_sample_patches_equals_crop_at_spacing_one_and_interpolates_linearly():
    torch.manual_seed(0)
    img = torch.randn(3, 4, 40, 40)
    off = torch.tensor([[0, 0], [8, 31], [31, 2]])
    win = torch.cat([off.float(), torch.ones(3, 1)], 1)
    assert torch.equal(sample_patches(img, win, 9), crop_patches(img, off, 9))
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    ramp = (yy + 100 * xx).expand(2, 1, 40, 40)                                             # linear: exact
    win = torch.tensor([[0.25, 1.5, 3.0], [1.0, 0.0, 38 / 7]])                             # last ray: row 39
    out = sample_patches(ramp, win, 8)                                                      # [2, 1, 8, 8]
    i = torch.arange(8.0)
    want = (win[:, 0, None, None] + i[None, :, None] * win[:, 2, None, None]
            + 100 * (win[:, 1, None, None] + i[None, None, :] * win[:, 2, None, None]))
    torch.testing.assert_close(out[:, 0], want, rtol=0, atol=1e-3)


def test_sample_patches_is_twice_differentiable():
    img = torch.randn(2, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    win = torch.tensor([[0.5, 1.25, 1.5], [0.0, 0.0, 9 / 4]], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda x: sample_patches(x, win, 5), (img,))


def test_augment_pipe_samples_reals_at_random_scales():
    imgs = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64).repeat(1, 3, 1, 1)
    fixed = AugmentPipe("noaug", patch_size=16)(imgs, generator=torch.Generator().manual_seed(0))
    again = AugmentPipe("noaug", patch_size=16, max_spacing=1.0)(imgs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fixed, again)
    pipe = AugmentPipe("noaug", patch_size=16, max_spacing=4.0)
    out = pipe(imgs, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and not torch.equal(out, fixed)
    step = out[:, 0, 0, 1] - out[:, 0, 0, 0]                  # one column further = spacing pixels of the ramp
    assert (step >= 1 - 1e-3).all() and (step <= 63 / 15 + 1e-3).all()
    with pytest.raises(UserError, match="max_spacing"):
        AugmentPipe("fixed", patch_size=16, max_spacing=0.5)


def test_config_key_and_its_checks():
    assert resolve_config("t4").patch_max_spacing == 1.0                      # the reference by default
    assert resolve_config("t4", ["patch_max_spacing=4"]).augment_kwargs()["max_spacing"] == 4.0
    with pytest.raises(UserError, match="patch_max_spacing must be >= 1"):
        resolve_config("t4", ["patch_max_spacing=0.5"])
