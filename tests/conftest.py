"""Shared test fixtures."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from torch_utils import backend


GPU_TESTS = Path(__file__).resolve().parent / "gpu"


@pytest.hookimpl(tryfirst=True)      # before `-m gpu` selects by marker
def pytest_collection_modifyitems(config, items):
    """tests/gpu holds the GPU correctness gates: marked gpu, and skipped without CUDA (`pytest -m gpu`)."""
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the GPU gates never run on a CPU)")
    for item in items:
        if GPU_TESTS in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)


def random_pngs(folder: Path, n: int, size: int, seed: int = 0, name: str = "{i:03d}.png") -> str:
    """Write n random RGB size x size PNGs into `folder` (created), named by `name`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name.format(i=i))
    return str(folder)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """A folder of 12 random 32x32 PNGs (fast to make, no synthetic renderer needed)."""
    return random_pngs(tmp_path_factory.mktemp("data"), 12, 32)


@pytest.fixture(autouse=True)
def _restore_backend():
    """Entry points run in-process (train, generate, calc_metrics) make their backend selection the process's
    current one; every test starts from the one before it."""
    before = backend.current()
    yield
    backend.activate(before, quiet=True)


class _StandIn(torch.nn.Module):
    """Tiny TorchScript feature net fed at 32 px (its `input_size`): 4x4 average pooling and a fixed projection
    -> [N, 16].
    Stands in for the Inception detector where a test is about plumbing, not about the features."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size = 32
        self.register_buffer("proj", torch.randn(48, 16, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj


@pytest.fixture()
def standin_detector(tmp_path) -> str:
    """Path of a saved TorchScript stand-in detector (usable with --detector)."""
    path = tmp_path / "standin.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_StandIn()), str(path))
    return str(path)


def invoke(main, args: list, capsys=None) -> tuple[int, str, str]:
    """Run a CLI's `main` (a dnnlib.util.run_cli wrapper, which always exits) in-process.

    Returns (exit code, stdout, stderr); the outputs are empty strings without capsys."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr() if capsys is not None else None
    return exc.value.code, (out.out if out else ""), (out.err if out else "")
