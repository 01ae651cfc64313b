"""Per-object GEMM with a fused epilogue, for G's NeRF layers in training: one Triton kernel per layer.

    y[b] = epilogue(x[b] @ w[b]),   x [B, N, K], w [B, K, C] (any strides), y [B, N, C] contiguous, in x's dtype
    epilogue: + bias[C] (optional), relu (optional), zero where mask[b] <= 0 (optional, mask [B, N, C])

Why: at batch 4 a hidden layer of the training MLP is a GEMM of 32,768 (T4 setting) or 262,144 (standard) points
per object on 128 columns, so its cost is memory traffic. cuBLAS's baddbmm first writes the broadcast bias into the
output, reads it back as C and writes the result, and the relu is one more read and write: five passes over a
[B, N, C] tensor where one read of x and one write of y suffice. In the backward, relu's mask is a separate
elementwise pass over the incoming gradient; here it is the epilogue of the input-gradient GEMM of the layer above
(`mask` = that layer's input, i.e. the relu output). `training.networks.nerf` chains these into the whole MLP.

Accumulation is fp32; the bias is added and the relu taken in fp32 before one rounding to the output dtype (what
cuBLAS's baddbmm does with its fp32 compute type, minus the rounding of the pre-relu value). relu keeps NaN (as
torch.relu), the mask zeroes where mask <= 0 (as relu's backward, threshold_backward), so a non-finite value still
reaches the fp16 gradient guard.

`object_linear` is a torch custom op (`torch.ops.hypernerf.object_linear`), opaque to torch.compile and
capturable in CUDA graphs once compiled. On CUDA tensors it launches the Triton kernel (fp16 / bf16 inputs and at
most MAX_COLUMNS outputs; fp32 stays on cuBLAS, whose fp32 does not use TF32 here); elsewhere it is `reference`
(or the kernel under TRITON_INTERPRET=1, for tests). Whether training uses it is the backend's choice
(torch_utils/backend.py: sm_80+, triton importable, and `self_check` passed in a child process).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

try:  # Optional dependency: CPU-only installs and CI have no triton.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

from torch_utils.ops.fused_mlp import KERNEL_DTYPES
from torch_utils.ops.triton_support import interpreting, next_pow2

MAX_COLUMNS = 256           # output columns of one program (wider layers take the reference path)


def reference(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], mask: Optional[torch.Tensor],
              relu: bool) -> torch.Tensor:
    """The op in plain PyTorch with the kernel's rounding: products accumulated in fp32 (float64 stays float64),
    bias / relu / mask in that precision, one rounding to x's dtype."""
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    y = torch.bmm(x.to(acc_dtype), w.to(acc_dtype))                                # [B, N, C]
    if bias is not None:
        y = y + bias.to(acc_dtype)
    if relu:
        y = torch.where(y < 0, torch.zeros_like(y), y)                              # keeps NaN, like torch.relu
    if mask is not None:
        y = torch.where(mask <= 0, torch.zeros_like(y), y)                           # like threshold_backward
    return y.to(x.dtype)


def default_launch(K: int, C: int, masked: bool = False) -> dict:
    """Launch parameters for a [*, K] @ [K, C] layer: block_m points per program, the whole output width in one
    block (C <= 256), K in block_k steps. From the sweep of `bench/micro_object_linear.py --sweep` on an H200
    (4 x 32768 points, fp16): the forward 128 x 128 layer takes 26-34 us over the grid (64 points, K in
    64-steps, 8 warps, 2 stages: 26.3 us), the masked input gradient 32-62 us (64 points, K in 128-steps, 4 warps:
    32.2 us, against 47.9 us for cuBLAS's bmm + relu's backward)."""
    block_c = max(16, next_pow2(C))
    if masked:
        return dict(block_m=64, block_k=min(128, max(16, next_pow2(K))), num_warps=4, num_stages=2)
    return dict(block_m=64 if block_c <= 128 else 32, block_k=min(64, max(16, next_pow2(K))),
                num_warps=8 if block_c >= 64 else 4, num_stages=2)


if triton is not None:
    @triton.jit
    def _object_linear_kernel(x_ptr, w_ptr, b_ptr, m_ptr, y_ptr, N, K: tl.constexpr, C: tl.constexpr,
                              sx_b, sx_n, sx_k, sw_b, sw_k, sw_c, sm_b, sm_n, sm_c,
                              HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_MASK: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
        """One program: BLOCK_M points of object program_id(1), all C outputs; K in BLOCK_K steps (K and C are
        compile-time constants: a training MLP has a handful of layer shapes)."""
        b = tl.program_id(1).to(tl.int64)
        rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        rc = tl.arange(0, BLOCK_C)
        rk = tl.arange(0, BLOCK_K)
        m_ok = rm < N
        c_ok = rc < C
        x_rows = x_ptr + b * sx_b + rm[:, None] * sx_n                              # [BLOCK_M, 1]
        w_cols = w_ptr + b * sw_b + rc[None, :] * sw_c                              # [1, BLOCK_C]
        acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < K
            a = tl.load(x_rows + kk[None, :] * sx_k, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_cols + kk[:, None] * sw_k, mask=k_ok[:, None] & c_ok[None, :], other=0.0)
            acc = tl.dot(a, w, acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rc, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        if RELU:
            acc = tl.where(acc < 0, 0.0, acc)
        ok = m_ok[:, None] & c_ok[None, :]
        if HAS_MASK:
            m = tl.load(m_ptr + b * sm_b + rm[:, None] * sm_n + rc[None, :] * sm_c, mask=ok, other=0.0)
            acc = tl.where(m <= 0, 0.0, acc)
        tl.store(y_ptr + (b * N + rm[:, None]) * C + rc[None, :], acc.to(y_ptr.dtype.element_ty), mask=ok)


def _check(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], mask: Optional[torch.Tensor]) -> None:
    if x.ndim != 3 or w.ndim != 3 or x.shape[0] != w.shape[0] or x.shape[2] != w.shape[1]:
        raise ValueError(f"object_linear needs x [B, N, K] and w [B, K, C]; got {tuple(x.shape)} and "
                         f"{tuple(w.shape)}")
    C = w.shape[2]
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(f"bias must be [{C}], got {tuple(bias.shape)}")
    if mask is not None and tuple(mask.shape) != (x.shape[0], x.shape[1], C):
        raise ValueError(f"mask must be {[x.shape[0], x.shape[1], C]}, got {tuple(mask.shape)}")


def launch(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], mask: Optional[torch.Tensor],
           relu: bool, block_m: int | None = None, block_k: int | None = None, num_warps: int | None = None,
           num_stages: int | None = None) -> torch.Tensor:
    """The Triton kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1); launch parameters default by shape."""
    if triton is None:
        raise RuntimeError("object_linear's kernel needs triton")
    _check(x, w, bias, mask)
    B, N, K = x.shape
    C = w.shape[2]
    if C > MAX_COLUMNS:
        raise ValueError(f"object_linear's kernel takes at most {MAX_COLUMNS} output columns, got {C}")
    w = w.to(x.dtype)
    bias = bias.to(x.dtype).contiguous() if bias is not None else None
    y = torch.empty([B, N, C], device=x.device, dtype=x.dtype)
    if B == 0 or N == 0:
        return y
    if K == 0:
        return reference(x, w, bias, mask, relu)
    p = default_launch(K, C, masked=mask is not None)
    block_m, block_k = block_m or p["block_m"], block_k or p["block_k"]
    m = mask if mask is not None else y
    grid = (triton.cdiv(N, block_m), B)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _object_linear_kernel[grid](
            x, w, bias if bias is not None else y, m, y, N, K, C,
            x.stride(0), x.stride(1), x.stride(2), w.stride(0), w.stride(1), w.stride(2),
            m.stride(0), m.stride(1), m.stride(2),
            HAS_BIAS=bias is not None, RELU=bool(relu), HAS_MASK=mask is not None,
            BLOCK_M=block_m, BLOCK_C=max(16, next_pow2(C)), BLOCK_K=block_k,
            num_warps=num_warps or p["num_warps"], num_stages=num_stages or p["num_stages"])
    return y


@torch.library.custom_op("hypernerf::object_linear", mutates_args=())
def object_linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                  relu: bool) -> torch.Tensor:
    """epilogue(x[b] @ w[b]) per object -> [B, N, C] in x's dtype (see the module docstring)."""
    kernel = (x.is_cuda and x.dtype in KERNEL_DTYPES) or (interpreting() and triton is not None)
    if kernel and w.shape[-1] <= MAX_COLUMNS:
        return launch(x, w, bias, mask, relu)
    _check(x, w, bias, mask)
    return reference(x, w, bias, mask, relu)


@object_linear.register_fake
def _(x, w, bias, mask, relu):
    return x.new_empty([x.shape[0], x.shape[1], w.shape[2]])


def self_check(device: torch.device, dtype: torch.dtype) -> float:
    """Largest relative L2 error of the kernel against `reference` over the epilogue variants and the layer shapes
    of the training MLP (encoding 64, hidden 128, skip 192, output 8; a ragged point count)."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for K, C, bias, relu, masked in ((64, 128, True, True, False), (128, 128, True, True, False),
                                     (192, 128, True, True, False), (128, 8, True, False, False),
                                     (128, 128, False, False, True), (8, 128, False, False, True)):
        x = torch.randn([2, 301, K], generator=gen).to(device, dtype)
        w = (torch.randn([2, C, K], generator=gen) / K ** 0.5).to(device, dtype).transpose(1, 2)
        b = torch.randn([C], generator=gen).to(device, dtype) if bias else None
        m = torch.randn([2, 301, C], generator=gen).to(device, dtype) if masked else None
        got = launch(x, w, b, m, relu).float()
        want = reference(x, w, b, m, relu).float()
        worst = max(worst, ((got - want).norm() / want.norm().clamp_min(1e-12)).item())
    return worst
