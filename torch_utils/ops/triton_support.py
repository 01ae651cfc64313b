"""What the project's Triton kernels share: whether triton is installed, whether it interprets kernels on the CPU,
and the power-of-two block-size rule."""
from __future__ import annotations

import os

try:  # Optional dependency: CPU-only installs have no triton.
    import triton
except Exception:  # pragma: no cover - depends on the environment
    triton = None

INSTALLED = triton is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1; the tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()
