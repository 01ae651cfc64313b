"""The [1, 3, 3, 1] FIR (zero padding, stride 1 or 2) and its adjoint as one memory-bound Triton kernel each.

`fir_down(x, padding, down)` computes fir2d's filter L; `fir_adjoint(g, padding, down, in_hw)` computes L^T (the
gradient of L, a transposed filter). Each output element gathers its 16 taps from the input with the input's own
strides, so NCHW and NHWC (channels_last) tensors are read in place and the output keeps the input's memory format;
elements are numbered in the output's memory order, so neighbouring threads touch neighbouring addresses. fir.py
wraps both in autograd Functions whose derivatives are each other (its 'triton' form, which the backend picks for
the R1 phase where the kernels pass a launch check).

Why: in the R1 phase's double backward cuDNN runs the depthwise form of this filter with a grouped direct kernel
that took ~50 us per call at 512 channels and 32 x 32 (H200), for a few MB of memory traffic.
CUDA tensors (fp16, bf16, fp32, fp64), or CPU tensors under TRITON_INTERPRET=1 (the tests); `runs_on` tells which.
"""
from __future__ import annotations

import contextlib

import torch

from torch_utils.ops.triton_support import interpreting

try:  # Optional dependency: CPU-only installs and CI have no triton.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None

BLOCK = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_nhwc(x: torch.Tensor) -> bool:
    """Whether x [N, C, H, W] is laid out channels_last (and not also plain contiguous, as when C or H*W is 1)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def runs_on(x: torch.Tensor) -> bool:
    """Whether the kernels can take x (triton present; CUDA, or the CPU interpreter; a supported dtype)."""
    return triton is not None and x.dtype in _DTYPES and (x.is_cuda or interpreting())


if triton is not None:
    @triton.jit
    def _unflatten(offs, size1, size2, size3):
        """Row-major linear index -> (q0, q1, q2, q3) of a [*, size1, size2, size3] array."""
        q3 = offs % size3
        rest = offs // size3
        q2 = rest % size2
        rest = rest // size2
        return rest // size1, rest % size1, q2, q3

    @triton.jit
    def _fir_kernel(src, dst, total, C, OH, OW, SH, SW,
                    s_n, s_c, s_h, s_w, d_n, d_c, d_h, d_w,
                    PAD: tl.constexpr, DOWN: tl.constexpr, ADJOINT: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                    WIDE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = offs < total
        if CHANNELS_LAST:                      # output element order (n, i, j, c)
            n, i, j, c = _unflatten(offs, OH, OW, C)
        else:                                  # (n, c, i, j)
            n, c, i, j = _unflatten(offs, C, OH, OW)
        if WIDE:
            acc = tl.zeros([BLOCK], dtype=tl.float64)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
        base = src + n.to(tl.int64) * s_n + c.to(tl.int64) * s_c
        for a in tl.static_range(4):
            for b in tl.static_range(4):
                tap = (1 + a * (3 - a)) * (1 + b * (3 - b)) / 64.0     # [1, 3, 3, 1] x [1, 3, 3, 1] / 64
                if ADJOINT:                    # x-gradient at (i, j) from the outputs (u, v) with i = DOWN u + a - PAD
                    nu = i + PAD - a
                    nv = j + PAD - b
                    u = nu // DOWN
                    v = nv // DOWN
                    ok = (nu >= 0) & (nv >= 0) & (nu % DOWN == 0) & (nv % DOWN == 0) & (u < SH) & (v < SW)
                else:                          # output (i, j) from the input at (DOWN i + a - PAD, DOWN j + b - PAD)
                    u = i * DOWN + a - PAD
                    v = j * DOWN + b - PAD
                    ok = (u >= 0) & (v >= 0) & (u < SH) & (v < SW)
                ok = ok & live
                val = tl.load(base + u.to(tl.int64) * s_h + v.to(tl.int64) * s_w, mask=ok, other=0.0)
                acc += val.to(acc.dtype) * tap
        out = dst + n.to(tl.int64) * d_n + c.to(tl.int64) * d_c + i.to(tl.int64) * d_h + j.to(tl.int64) * d_w
        tl.store(out, acc.to(dst.dtype.element_ty), mask=live)


def _launch(src: torch.Tensor, out_hw: tuple[int, int], padding: int, down: int, adjoint: bool) -> torch.Tensor:
    if not runs_on(src):
        raise RuntimeError("the FIR kernel needs triton and a CUDA tensor (or TRITON_INTERPRET=1)")
    N, C, SH, SW = src.shape
    OH, OW = out_hw
    channels_last = is_nhwc(src)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dst = torch.empty([N, C, OH, OW], device=src.device, dtype=src.dtype, memory_format=fmt)
    total = dst.numel()
    if total == 0:
        return dst
    grid = (triton.cdiv(total, BLOCK),)
    with torch.cuda.device(src.device) if src.is_cuda else contextlib.nullcontext():
        _fir_kernel[grid](src, dst, total, C, OH, OW, SH, SW, *src.stride(), *dst.stride(),
                          PAD=padding, DOWN=down, ADJOINT=adjoint, CHANNELS_LAST=channels_last,
                          WIDE=src.dtype == torch.float64, BLOCK=BLOCK)
    return dst


def fir_down(x: torch.Tensor, padding: int, down: int) -> torch.Tensor:
    """The normalised [1, 3, 3, 1] filter of x [N, C, H, W] with zero padding `padding` and stride `down`:
    -> [N, C, (H + 2 padding - 4) // down + 1, ...] (fir2d's function for that filter)."""
    H, W = x.shape[-2:]
    return _launch(x, ((H + 2 * padding - 4) // down + 1, (W + 2 * padding - 4) // down + 1), padding, down, False)


def fir_adjoint(g: torch.Tensor, padding: int, down: int, in_hw: tuple[int, int]) -> torch.Tensor:
    """L^T g for the filter L of `fir_down` with input size in_hw: g [N, C, h, w] -> [N, C, *in_hw]."""
    return _launch(g, tuple(in_hw), padding, down, True)
