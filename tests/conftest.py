"""Shared test fixtures."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F


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
