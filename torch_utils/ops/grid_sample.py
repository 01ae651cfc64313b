"""Bilinear `grid_sample` whose backward is itself differentiable (the R1 penalty differentiates through it twice).

Convention everywhere in this file: bilinear interpolation, zeros padding, align_corners=False (pixel i of a size-n
axis has its centre at normalised coordinate (2i + 1) / n - 1).

* `grid_sample2d` (fast): ATen's `grid_sampler_2d` forward and `grid_sampler_2d_backward` kernels wrapped in two
  autograd functions. The backward function's own backward uses the facts that grad_input = S(grid)^T grad_output is
  linear in grad_output (its adjoint is grid_sample again) and that the grid gradient of that term is another
  grid-gradient kernel call. Second-order terms that start from the *grid* gradient (only needed when the grid itself
  requires grad, never in augmentation) are evaluated exactly through the reference implementation.
* `grid_sample2d_reference` (slow, obvious): gather-based bilinear sampling built from native ops, differentiable to
  any order. Tests check the two agree in value, gradient and second-order gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_BILINEAR = 0
_ZEROS = 0
_ALIGN_CORNERS = False


def grid_sample2d(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """input [N, C, H, W], grid [N, Ho, Wo, 2] (x, y in [-1, 1]) -> [N, C, Ho, Wo]; twice differentiable."""
    return _GridSample2dForward.apply(input, grid)


def grid_sample2d_reference(input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch equivalent of `grid_sample2d` (gathers from a zero-padded copy of the input)."""
    N, C, H, W = input.shape
    _, Ho, Wo, _ = grid.shape
    ix = ((grid[..., 0] + 1) * W - 1) / 2  # [N, Ho, Wo] column coordinate in pixels
    iy = ((grid[..., 1] + 1) * H - 1) / 2  # [N, Ho, Wo] row coordinate in pixels
    x0, y0 = ix.detach().floor(), iy.detach().floor()
    wx1, wy1 = ix - x0, iy - y0
    wx0, wy0 = 1 - wx1, 1 - wy1
    flat = F.pad(input, [1, 1, 1, 1]).reshape(N, C, (H + 2) * (W + 2))  # one ring of zeros for out-of-range taps

    def tap(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        xi = (xx + 1).clamp(0, W + 1).long()
        yi = (yy + 1).clamp(0, H + 1).long()
        idx = (yi * (W + 2) + xi).reshape(N, 1, Ho * Wo).expand(N, C, Ho * Wo)
        return flat.gather(2, idx).reshape(N, C, Ho, Wo)

    out = tap(y0, x0) * (wy0 * wx0)[:, None] + tap(y0, x0 + 1) * (wy0 * wx1)[:, None]
    return out + tap(y0 + 1, x0) * (wy1 * wx0)[:, None] + tap(y0 + 1, x0 + 1) * (wy1 * wx1)[:, None]


class _GridSample2dForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(input, grid)
        return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=_ALIGN_CORNERS)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        input, grid = ctx.saved_tensors
        need_input, need_grid = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_input or need_grid):
            return None, None
        grad_input, grad_grid = _GridSample2dBackward.apply(grad_output, input, grid, need_input, need_grid)
        return (grad_input if need_input else None), (grad_grid if need_grid else None)


class _GridSample2dBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_output: torch.Tensor, input: torch.Tensor, grid: torch.Tensor,
                need_input: bool, need_grid: bool):
        ctx.save_for_backward(grad_output, input, grid)
        grad_input, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_output, input, grid, _BILINEAR, _ZEROS, _ALIGN_CORNERS, [need_input, need_grid])
        # Outputs that were not requested may be undefined or garbage: replace them by zeros of the right shape.
        grad_input = grad_input if need_input else torch.zeros_like(input)
        grad_grid = grad_grid if need_grid else torch.zeros_like(grid)
        return grad_input, grad_grid

    @staticmethod
    def backward(ctx, gg_input: torch.Tensor | None, gg_grid: torch.Tensor | None):
        grad_output, input, grid = ctx.saved_tensors
        need_go, need_in, need_grid = ctx.needs_input_grad[:3]
        d_go = d_in = d_grid = None
        if gg_input is not None:
            # <gg_input, S(grid)^T go> = <S(grid) gg_input, go>: linear in go, independent of input.
            if need_go:
                d_go = _GridSample2dForward.apply(gg_input, grid)
            if need_grid:
                d_grid = _GridSample2dBackward.apply(grad_output, gg_input, grid, False, True)[1]
        if gg_grid is not None and (need_go or need_in or need_grid):
            terms = _grid_gradient_vjp(grad_output, input, grid, gg_grid, (need_go, need_in, need_grid))
            d_go, d_in, d_grid = (_add(a, b) for a, b in zip((d_go, d_in, d_grid), terms))
        return d_go, d_in, d_grid, None, None


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _grid_gradient_vjp(grad_output: torch.Tensor, input: torch.Tensor, grid: torch.Tensor, gg_grid: torch.Tensor,
                       needs: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """Vector-Jacobian products of grad_grid(grad_output, input, grid) with gg_grid, via the reference op."""
    with torch.enable_grad():
        go, x, g = (t.detach().requires_grad_(True) for t in (grad_output, input, grid))
        out = grid_sample2d_reference(x, g)
        (grad_grid,) = torch.autograd.grad(out, g, go, create_graph=True)
        wanted = [t for t, n in zip((go, x, g), needs) if n]
        grads = iter(torch.autograd.grad(grad_grid, wanted, gg_grid, allow_unused=True))
    return tuple(next(grads) if n else None for n in needs)
