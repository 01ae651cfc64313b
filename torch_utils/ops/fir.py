"""FIR filtering with optional 2x downsampling (the StyleGAN2 [1, 3, 3, 1] resampling filter), in pure PyTorch.

`fir2d` computes it in the form the backend picks (average pools, a depthwise conv with explicit derivatives, or
Triton kernels; all work under torch.compile, in CUDA graphs and with double backward). `fir2d_reference` computes
the same thing as an explicit sum of shifted slices; tests check that every form agrees with it. All compute a
correlation with zero padding, which equals the convolution of upfirdn2d for the symmetric filters used here.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from torch_utils import backend
from torch_utils.ops import fir_kernel


def make_fir_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """Separable 2-D filter [k, k] = outer(taps, taps), normalised to sum 1 (unit DC gain)."""
    t = torch.as_tensor(taps, dtype=torch.float32)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"taps must be a non-empty 1-D sequence, got {taps!r}")
    f = t[:, None] * t[None, :]
    return f / f.sum()


FIR_IMPLS = ("pool", "depthwise", "triton", "reference")
_TAPS4 = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float32)      # fp32 whatever the default dtype
_BINOMIAL4 = torch.outer(_TAPS4, _TAPS4) / 64.0


def fir2d(x: torch.Tensor, f: torch.Tensor, padding: int, down: int = 1, binomial: bool | None = None,
          impl: str | None = None) -> torch.Tensor:
    """Zero-pad every side by `padding`, filter each channel with f [k, k], keep every `down`-th sample.

    x: [N, C, H, W] -> [N, C, (H + 2 * padding - k) // down + 1, ...].
    binomial: whether f is the [1, 3, 3, 1] filter (None = check f, which reads it on the host: callers on a hot
    path, e.g. inside CUDA graph capture, pass it).
    impl (None = the backend's `fir`; the R1 phase runs under its `r1_fir`), every one the same function:
      'pool'       the binomial filter as three 2x2 average pools ([1, 3, 3, 1] / 8 = [1, 1] / 2 * [1, 1] / 2 *
                   [1, 1] / 2): memory-bound kernels that inductor fuses into its own under torch.compile. Other
                   filters, and eager CUDA channels_last inputs (`pool_grad_is_wrong`), take 'depthwise'.
      'depthwise'  one depthwise conv with its derivatives written out (`_FirDepthwise`): the gradient of the filter
                   is the transposed depthwise conv and the gradient of that is the filter again, so R1's double
                   backward runs one conv per FIR (PyTorch's own double backward of a grouped conv loops over the
                   groups: ~150 ms per R1 step on an H100 at 512 channels).
      'triton'     'depthwise' with both directions as the memory-bound Triton kernels of `fir_kernel` (the
                   binomial filter on CUDA, or under Triton's CPU interpreter; 'pool' inside torch.compile).
      'reference'  `fir2d_reference`, a sum of shifted slices.
    """
    N, C, H, W = x.shape
    k = f.shape[-1]
    if binomial is None:
        binomial = _is_binomial4(f)
    if impl is None:
        impl = backend.current().fir
    elif impl not in FIR_IMPLS:
        raise ValueError(f"unknown FIR implementation {impl!r}; choose from {FIR_IMPLS}")
    if impl == "reference":
        return fir2d_reference(x, f, padding, down)
    if impl == "triton" and torch.compiler.is_compiling():
        impl = "pool"
    if impl == "pool":
        if binomial and not pool_grad_is_wrong(x, padding):
            return _fir2d_pool(x, padding, down)
        impl = "depthwise"                      # the same function, with derivatives that are right in NHWC
    weight = f.to(dtype=x.dtype, device=x.device).reshape(1, 1, k, k)                  # [1, 1, k, k]
    kernel = impl == "triton" and binomial and fir_kernel.runs_on(x)
    return _FirDepthwise.apply(x, weight.expand(C, 1, k, k), padding, down, kernel)


def pool_grad_is_wrong(x: torch.Tensor, padding: int) -> bool:
    """Whether the 'pool' form would get x's gradient wrong: eager CUDA avg_pool2d's backward ignores the padding
    for channels_last inputs (pytorch/pytorch#188344; torch 2.11 on an H200 gave rel. error 0.92 for this filter,
    the forward was right). fir2d then runs 'depthwise' instead. Under torch.compile inductor lowers the pools'
    backward itself (tests/gpu checks the compiled D's gradients)."""
    return x.device.type == "cuda" and padding > 0 and not torch.compiler.is_compiling() and fir_kernel.is_nhwc(x)


def _filter(x: torch.Tensor, weight: torch.Tensor, padding: int, down: int, kernel: bool) -> torch.Tensor:
    """L x: the Triton kernel (binomial filter only) or the depthwise conv with weight [C, 1, k, k]."""
    if kernel:
        return fir_kernel.fir_down(x, padding, down)
    return F.conv2d(x, weight, stride=down, padding=padding, groups=x.shape[1])


def _adjoint(g: torch.Tensor, weight: torch.Tensor, padding: int, down: int, in_hw: tuple[int, int],
             kernel: bool) -> torch.Tensor:
    """L^T g (output size in_hw): the Triton kernel or the transposed depthwise conv."""
    if kernel:
        return fir_kernel.fir_adjoint(g, padding, down, in_hw)
    k = weight.shape[-1]
    extra = [size - ((h - 1) * down - 2 * padding + k) for size, h in zip(in_hw, g.shape[-2:])]
    return F.conv_transpose2d(g, weight, stride=down, padding=padding, output_padding=tuple(extra),
                              groups=g.shape[1])


class _FirDepthwise(torch.autograd.Function):
    """y = L x: the depthwise FIR (weight [C, 1, k, k], zero padding, stride `down`), a linear map of x alone.

    Its backward is L^T (`_FirDepthwiseT`), whose backward is L again, so derivatives of every order stay single
    filter calls: depthwise convs (transposed for L^T), or with kernel=True the Triton kernels of `fir_kernel`
    ('triton', binomial filter). The filter is a constant (no gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, padding: int, down: int, kernel: bool) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.padding, ctx.down, ctx.in_hw, ctx.kernel = padding, down, tuple(x.shape[-2:]), kernel
        return _filter(x, weight, padding, down, kernel)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        gx = _FirDepthwiseT.apply(grad, weight, ctx.padding, ctx.down, ctx.in_hw, ctx.kernel)
        return gx, None, None, None, None


class _FirDepthwiseT(torch.autograd.Function):
    """g -> L^T g, the adjoint of `_FirDepthwise` (output size in_hw); its backward is L."""

    @staticmethod
    def forward(ctx, grad: torch.Tensor, weight: torch.Tensor, padding: int, down: int,
                in_hw: tuple[int, int], kernel: bool) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.padding, ctx.down, ctx.kernel = padding, down, kernel
        return _adjoint(grad, weight, padding, down, in_hw, kernel)

    @staticmethod
    def backward(ctx, gg: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return _FirDepthwise.apply(gg, weight, ctx.padding, ctx.down, ctx.kernel), None, None, None, None, None


def is_binomial4(f: torch.Tensor) -> bool:
    """Whether f is the normalised [1, 3, 3, 1] outer-product filter (reads f on the host)."""
    return _is_binomial4(f)


def _is_binomial4(f: torch.Tensor) -> bool:
    return tuple(f.shape) == (4, 4) and bool(torch.allclose(f.detach().float().cpu(), _BINOMIAL4, atol=1e-7))


def _fir2d_pool(x: torch.Tensor, padding: int, down: int) -> torch.Tensor:
    """The [1, 3, 3, 1] FIR as three 2x2 average pools; zero padding split as 1 per pool (count_include_pad)."""
    pads = [min(1, max(0, padding - i)) for i in range(3)]        # e.g. padding 2 -> (1, 1, 0), 1 -> (1, 0, 0)
    if padding > 3:
        x = F.pad(x, [padding - 3] * 4)
        pads = [1, 1, 1]
    x = F.avg_pool2d(x, 2, stride=1, padding=pads[0])
    x = F.avg_pool2d(x, 2, stride=1, padding=pads[1])
    return F.avg_pool2d(x, 2, stride=down, padding=pads[2])


def fir2d_reference(x: torch.Tensor, f: torch.Tensor, padding: int, down: int = 1) -> torch.Tensor:
    """Same result as `fir2d`, as a sum of k*k shifted, weighted slices of the padded input (slow, obvious)."""
    N, C, H, W = x.shape
    k = f.shape[-1]
    xp = F.pad(x, [padding] * 4)  # [N, C, H + 2p, W + 2p]
    out_h = (H + 2 * padding - k) // down + 1
    out_w = (W + 2 * padding - k) // down + 1
    out = x.new_zeros([N, C, out_h, out_w])
    f = f.to(dtype=x.dtype, device=x.device)
    for i in range(k):
        for j in range(k):
            window = xp[:, :, i: i + down * (out_h - 1) + 1: down, j: j + down * (out_w - 1) + 1: down]
            out = out + f[i, j] * window
    return out


def downsample_padding(kernel_size: int, filter_size: int = 4, down: int = 2) -> tuple[int, int]:
    """Padding (before, after) for 'FIR then stride-`down` conv of `kernel_size`' so that output = input / down.

    As in upfirdn2d-based resampling: before = k//2 + (f - down + 1)//2, after = k//2 + (f - down)//2.
    """
    return kernel_size // 2 + (filter_size - down + 1) // 2, kernel_size // 2 + (filter_size - down) // 2
