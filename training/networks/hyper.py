"""Hypernetwork heads: per NeRF layer, an affine map w -> low-rank FMM factors -> that layer's per-object weights.

FMM (the authors' `fmm_modulate_linear_nerf`): s = A(w) in R^{(c_in + c_out) r}; U = s[:c_out r] as [c_out, r]
(row-major), V = the rest as [r, c_in]; W_b = W0 * (1 + U V / sqrt(r)); each output row divided by (||row||_2 + 1e-8).
Built for all objects at once (batched over B) and always in fp32 (float64 stays float64), also under autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torch_utils.layers import FullyConnectedLayer
from torch_utils.persistence import persistent_class
from training.networks.mapping import compute_dtype


def fmm_weights(base: torch.Tensor, styles: torch.Tensor, rank: int, demodulate: bool = True,
                eps: float = 1e-8) -> torch.Tensor:
    """Per-object weights [B, c_out, c_in] from base W0 [c_out, c_in] and factors styles [B, (c_in + c_out) rank]."""
    c_out, c_in = base.shape
    B = styles.shape[0]
    left = styles[:, :c_out * rank].reshape(B, c_out, rank)       # [B, c_out, r]
    right = styles[:, c_out * rank:].reshape(B, rank, c_in)       # [B, r, c_in]
    mod = torch.bmm(left, right) * (1.0 / math.sqrt(rank))        # [B, c_out, c_in]
    weight = base.unsqueeze(0) * (1.0 + mod)                      # [B, c_out, c_in]
    if demodulate:
        weight = weight / (weight.norm(dim=2, keepdim=True) + eps)
    return weight


@persistent_class
class HyperLinear(nn.Module):
    """One NeRF layer whose weight is generated per object from w by FMM; the bias is shared by all objects.

    `input_gain` (a constant) multiplies the inputs from column `input_gain_start` on: it folds the previous layer's
    relu gain sqrt(2) into this layer's weight, so the previous layer only needs a plain relu (exact same function).
    """

    def __init__(self,
                 in_features: int,            # c_in.
                 out_features: int,           # c_out.
                 w_dim: int = 128,            # Size of w.
                 rank: int = 10,              # FMM rank r.
                 input_gain: float = 1.0,     # Constant gain of inputs [input_gain_start:], folded into the weight.
                 input_gain_start: int = 0,   # First input column the gain applies to.
                 ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.input_gain, self.input_gain_start = float(input_gain), int(input_gain_start)
        self.affine = FullyConnectedLayer(w_dim, (in_features + out_features) * rank, activation="linear",
                                          lr_multiplier=1.0, bias_init=0.0)
        self.weight = nn.Parameter(torch.randn([out_features, in_features]))
        self.bias = nn.Parameter(torch.zeros([out_features]))

    def build(self, w: torch.Tensor, styles: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """w [B, w_dim] -> (weight^T [B, c_in, c_out] with the input gain folded in, bias [c_out]); fp32 or wider.
        styles: this layer's affine(w) when the caller computed it (`affine_styles`, one GEMM for every layer)."""
        dtype = compute_dtype(w.dtype)
        with torch.autocast(device_type=w.device.type, enabled=False):
            if styles is None:
                styles = self.affine(w.to(dtype))                                        # [B, (c_in+c_out) r]
            styles = styles.to(dtype)
            weight = fmm_weights(self.weight.to(dtype), styles, self.rank)               # [B, c_out, c_in]
            if self.input_gain != 1.0:
                k = self.input_gain_start
                weight = torch.cat([weight[:, :, :k], weight[:, :, k:] * self.input_gain], dim=2)
        return weight.transpose(1, 2), self.bias.to(dtype)

    @staticmethod
    def apply_weights(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor, tuned: bool = True) -> torch.Tensor:
        """One batched GEMM over objects: x [B, N, c_in] @ weight^T [B, c_in, c_out] + bias -> [B, N, c_out].
        tuned: with `_PerObjectLinear`'s backward (split-K weight gradient, bias gradient as a GEMM); else a plain
        baddbmm that autograd differentiates (the reference)."""
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight_t, bias = x.to(dtype), weight_t.to(dtype), bias.to(dtype)
        else:
            weight_t, bias = weight_t.to(x.dtype), bias.to(x.dtype)
        if not tuned:
            return torch.baddbmm(bias.view(1, 1, -1), x, weight_t)                     # [B, N, c_out]
        return _PerObjectLinear.apply(x, weight_t, bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, input_gain={self.input_gain:g}"


def affine_styles(layers: list[HyperLinear], w: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's affine(w) [B, (c_in + c_out) r] as one `chunked_linear` over the layers' weights concatenated
    (the same function as calling each affine: at batch 4 the separate GEMMs are a dozen latency-bound kernels per
    step, forward and backward). fp32 or wider, also under autocast."""
    dtype = compute_dtype(w.dtype)
    affines = [layer.affine for layer in layers]
    with torch.autocast(device_type=w.device.type, enabled=False):
        weights, biases = zip(*(a.scaled_params(dtype) for a in affines))
        styles = chunked_linear(w.to(dtype), torch.cat(weights), torch.cat(biases))     # [B, sum out]
    return list(styles.split([a.out_features for a in affines], dim=1))


AFFINE_CHUNK = 512


def chunked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   chunk: int = AFFINE_CHUNK) -> torch.Tensor:
    """F.linear(x, weight, bias) for few rows and many outputs (x [B, K], weight [O, K] -> [B, O]), computed as a
    batch of GEMMs over blocks of `chunk` outputs (zero-padded to a whole block).

    The same function; the point is its backward. x's gradient grad [B, O] @ weight [O, K] sums over all O outputs
    (B = 4, O = 10,910, K = 128 for G's affines at the T4 setting), which one GEMM walks on a few thread blocks.
    Here autograd sums the blocks' partial products (the backward of the expand), i.e. a split-K GEMM over
    O / chunk blocks. Measured on an H200 (`bench/micro_gemm.py`): forward + backward 0.380 -> 0.119 ms in
    isolation; the compiled training step's Gmain did not get faster (1.585 vs 1.574 ms).
    """
    O, K = weight.shape
    blocks = -(-O // chunk)
    if x.ndim != 2 or blocks <= 1:
        return F.linear(x, weight, bias)
    padded = F.pad(weight, [0, 0, 0, blocks * chunk - O]).view(blocks, chunk, K)       # [n, chunk, K]
    y = torch.bmm(x.unsqueeze(0).expand(blocks, -1, -1), padded.transpose(1, 2))        # [n, B, chunk]
    y = y.transpose(0, 1).reshape(x.shape[0], blocks * chunk)[:, :O]                    # [B, O]
    return y if bias is None else y + bias


def split_count(batch: int, n: int, target: int = 256, min_rows: int = 1024) -> int:
    """How many chunks of points the weight gradient is split into: a power of two dividing n, with chunks of at
    least `min_rows` points, aiming at about `target` partial GEMMs in all (1 = no split)."""
    s = 1
    while batch * s * 2 <= target and n % (s * 2) == 0 and n // (s * 2) >= min_rows:
        s *= 2
    return s


def weight_grad(x: torch.Tensor, grad: torch.Tensor, split: int | None = None) -> torch.Tensor:
    """x^T @ grad per object: x [B, N, c_in], grad [B, N, c_out] -> [B, c_in, c_out] in x's dtype.

    c_in and c_out are padded to multiples of 8 (with odd sizes cuBLAS falls back to slow kernels: 0.44 ms instead of
    ~0.05 ms for a 63-input layer on an H100). split > 1: `split` partial GEMMs per object over chunks of N / split
    points, summed in fp32 (float64 inputs in float64; one GEMM over N = 32768+ points runs on a few dozen thread
    blocks). split=None: `split_count`.
    """
    B, N, c_in = x.shape
    if split is None:
        split = split_count(B, N)
    c_out = grad.shape[-1]
    xp = F.pad(x, [0, -c_in % 8]) if c_in % 8 else x                                  # [B, N, c_in8]
    gp = F.pad(grad, [0, -c_out % 8]) if c_out % 8 else grad                          # [B, N, c_out8]
    if split > 1:
        rows = N // split
        part = torch.bmm(xp.reshape(B * split, rows, -1).transpose(1, 2), gp.reshape(B * split, rows, -1))
        acc = torch.promote_types(x.dtype, torch.float32)                               # fp32, or float64
        gw = part.view(B, split, *part.shape[1:]).sum(1, dtype=acc).to(x.dtype)          # [B, c_in8, c_out8]
    else:
        gw = torch.bmm(xp.transpose(1, 2), gp)                                         # [B, c_in8, c_out8]
    return gw[:, :c_in, :c_out]


class _PerObjectLinear(torch.autograd.Function):
    """y = x @ W^T + bias per object (one baddbmm), with a backward tuned for tensor cores.

    * The shared bias gradient is a GEMM with a row of ones: autograd's reduction of grad [B, N, c_out] over (B, N)
      measured 5x slower on an H100 (0.12 vs 0.024 ms at B=4, N=32768, c_out=128).
    * The weight gradient is `weight_grad` (padded to multiples of 8; split over chunks of points).
    First derivatives only (nothing differentiates G twice).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight_t)
        ctx.bias_dtype = bias.dtype
        return torch.baddbmm(bias.view(1, 1, -1), x, weight_t)                          # [B, N, c_out]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight_t = ctx.saved_tensors
        c_out = weight_t.shape[2]
        grad = grad.contiguous()
        gx = torch.bmm(grad, weight_t.transpose(1, 2)) if ctx.needs_input_grad[0] else None   # [B, N, c_in]
        gw = None
        if ctx.needs_input_grad[1]:
            gw = weight_grad(x, grad)                                                         # [B, c_in, c_out]
        gb = bias_grad(grad, ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def bias_grad(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sum of grad [B, N, c_out] over objects and points -> [c_out] in `dtype`, as a GEMM with a row of ones."""
    flat = grad.reshape(-1, grad.shape[-1])                                                 # [B*N, c_out]
    return torch.mm(flat.new_ones([1, flat.shape[0]]), flat).view(-1).to(dtype)


def fused_layers(pe: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]], skip: int = -1) -> torch.Tensor:
    """The NeRF MLP's chain of per-object layers on `object_linear`: pe [B, N, K0] (no gradient), layers
    [(weight^T [B, c_in, c_out], bias [c_out])] in the compute dtype; every layer but the last is followed by relu,
    layer `skip` takes [pe, h]. -> raw [B, N, c_out of the last layer]. Same function as the baddbmm + relu loop."""
    flat = [t for pair in layers for t in pair]
    return _FusedLayers.apply(pe, skip, pe.shape[-1], *flat)


class _FusedLayers(torch.autograd.Function):
    """Forward: h_{i+1} = relu(x_i @ W_i + b_i) with x_i = h_i (or [pe, h_i] at the skip layer), one kernel each; the
    last layer is linear. Backward, from the top: weight and bias gradients from the saved inputs (`weight_grad`,
    `bias_grad`); the input gradient of layer i, masked by relu's result h_i (= the h columns of x_i), is already
    the gradient of layer i-1's pre-activation, so no separate relu backward runs. The encoding gets no gradient."""

    @staticmethod
    def forward(ctx, pe: torch.Tensor, skip: int, pe_cols: int, *params: torch.Tensor) -> torch.Tensor:
        from torch_utils.ops.object_linear import object_linear
        n = len(params) // 2
        keep = any(ctx.needs_input_grad[3:])   # no-grad renders free each activation as the plain loop does
        h, inputs = pe, []
        for i in range(n):
            x = torch.cat([pe, h], dim=-1) if i == skip else h
            if keep:
                inputs.append(x)
            h = object_linear(x, params[2 * i], params[2 * i + 1], None, i < n - 1)
        ctx.n, ctx.skip, ctx.pe_cols = n, skip, pe_cols
        ctx.bias_dtypes = [params[2 * i + 1].dtype for i in range(n)]
        if keep:
            ctx.save_for_backward(*inputs, *params[0::2])
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        from torch_utils.ops.object_linear import object_linear
        if ctx.needs_input_grad[0]:
            raise RuntimeError("fused_layers gives the encoding no gradient; use the per-layer path")
        n = ctx.n
        inputs, weights = ctx.saved_tensors[:n], ctx.saved_tensors[n:]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        g = grad.contiguous()
        for i in reversed(range(n)):
            x, w = inputs[i], weights[i]
            if ctx.needs_input_grad[3 + 2 * i]:
                grads[2 * i] = weight_grad(x, g)                                            # [B, c_in, c_out]
            if ctx.needs_input_grad[4 + 2 * i]:
                grads[2 * i + 1] = bias_grad(g, ctx.bias_dtypes[i])                         # [c_out]
            if i > 0:
                lo = ctx.pe_cols if i == ctx.skip else 0                                    # the h columns of x
                g = object_linear(g, w[:, lo:, :].transpose(1, 2), None, x[..., lo:], False)  # [B, N, c_h]
        return (None, None, None, *grads)
