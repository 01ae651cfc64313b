"""Fused NeRF MLP for inference: encoding + every layer of `NeRFMLP.evaluate` in one Triton kernel (forward only).

The function (training/networks/nerf.py, hyper.py): for object b and points x [N, 3],
    pe = positional_encoding(x)                          # [N, 3 + 6 L] = [x, sin(2^0 x), cos(2^0 x), ...]
    h  = relu(pe @ W_0[b] + bias_0)                      # [N, C]
    h  = relu(h @ W_l[b] + bias_l), l = 1..L-1           # (the layer after `skip_after` takes [pe, h])
    raw = h @ W_out[b] + bias_out                        # [N, 4], linear
with weight^T [B, c_in, c_out] per object and one bias [c_out] shared by all objects (the relu gain sqrt(2) is
already folded into the next weight, so the hidden activation is a plain relu).

Kernel layout: one program per (block of BLOCK_N points, object b). The program
  1. loads its points in fp32 and builds the encoding in fp32 registers, then casts it to `dtype` (fp16 / bf16);
  2. runs every layer as tl.dot in `dtype` with fp32 accumulation; bias + relu in fp32, then a cast to `dtype`
     feeds the next dot, so the [BLOCK_N, C] activations never leave the chip;
  3. stores raw [BLOCK_N, 4] in fp32.
Weights are cast and zero-padded once per call (`pack_weights`, reusable across point chunks): the 4 outputs are
padded to 16 columns and the encoding rows are reordered to the kernel's encoding layout (below).

Encoding layout inside the kernel. With F = multires frequencies and A = the 3 F arguments x_c 2^f ordered (f, c),
the kernel builds two tiles of PE_HALF = max(16, next_pow2(3 F + 2)) columns each (32 for F = 10):
    S = [sin(A_0) .. sin(A_{3F-1}), x_0, x_1, ...]     C = [cos(A_0) .. cos(A_{3F-1}), (x_2), 0, ...]
i.e. one sin and one cos per argument (no wasted transcendental) plus the 3 raw coordinates in the pad columns.
The weight rows that multiply the encoding are permuted to this order in `pack_weights` (exact: a reordering of
the terms of the same sum), and a pe layer is computed as dot(S, W_S) + dot(C, W_C).

sin / cos are evaluated by a branch-free quadrant reduction (3-part Cody-Waite split of pi/2, exact products for
|x 2^f| < 2^13 pi / 2) and single-precision minimax polynomials on [-pi/4, pi/4] (Cephes sinf / cosf
coefficients): ~1e-7 absolute error, far below the 2^-11 step of the fp16 cast that follows, and not dependent on
what a backend's sin does with arguments up to 2^9 |x|.

Hidden layers run either fully unrolled (pipeline=False: each [C, C] weight tile is loaded synchronously) or as a
runtime loop (pipeline=True, the default) that Triton software-pipelines: the next layer's weight tile is fetched
with cp.async into a num_stages-deep shared-memory ring while the current layer's dot runs (checked in the PTX for
sm_80 / sm_90; tests compile both variants ahead of time). On sm_90, tl.dot becomes wgmma; on sm_80, mma.sync.
GPUs before sm_80 (T4 = sm_75): Triton 3.5 has no tensor-core dot there (it emits FMA loops and takes minutes to
compile), so the backend (torch_utils/backend.py) keeps the PyTorch path there; `fused_evaluate` still computes
the right result in fp16 if called directly.

CUDA graphs: everything `fused_evaluate` does is capturable once the kernel is compiled and the encoding row index
is cached for the device, i.e. after one call outside capture (the backend's self-check runs before any capture).

`reference_evaluate` is the same function in plain PyTorch with the kernel's rounding (fp32 encoding -> dtype,
products of dtype values accumulated in fp32, fp32 bias + relu, cast to dtype between layers), for tests and for
`self_check`, which the backend runs once per GPU and dtype. Importing this module never needs triton; without it
`fused_evaluate` raises.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from torch_utils.ops.encoding import positional_encoding
from torch_utils.ops.triton_support import interpreting, next_pow2

try:  # Optional dependency: CPU-only installs and CI have no triton.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

MAX_LAYERS = 8              # Hidden layers supported (compile time grows with the unrolled depth).
MAX_MULTIRES = 16           # Encoding frequencies supported (the sin/cos reduction is exact for |x 2^f| < 12868).
OUT_FEATURES = 4            # raw = (rgb logits, density logit).
OUT_PAD = 16                # Output columns of the last dot (tensor-core minimum N).
KERNEL_DTYPES = (torch.float16, torch.bfloat16)

LayerWeights = list[tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------------------------------
# Configuration helpers.

def pe_half_width(multires: int) -> int:
    """Columns of each of the kernel's two encoding tiles: room for 3 L arguments and the 3 raw coordinates."""
    return max(16, next_pow2(3 * multires + 2))


def mlp_config(nerf_mlp) -> dict:
    """The keyword arguments of `fused_evaluate` / `pack_weights` that describe a NeRFMLP module."""
    return dict(num_layers=int(nerf_mlp.num_layers), multires=int(nerf_mlp.multires),
                skip_after=int(nerf_mlp.skip_after), uses_skip=bool(nerf_mlp.uses_skip))


def _width_ok(width: int) -> bool:
    return 16 <= width <= 256 and width & (width - 1) == 0


def supported(nerf_mlp) -> bool:
    """True when the fused kernel can evaluate this NeRFMLP (never raises).

    Needs: 1..MAX_LAYERS hidden layers, a power-of-two width in 16..256, 0..MAX_MULTIRES frequencies, 3-d points,
    4 outputs, and layer shapes that match the module's skip configuration.
    """
    try:
        L, width, multires = int(nerf_mlp.num_layers), int(nerf_mlp.width), int(nerf_mlp.multires)
        skip_after, uses_skip = int(nerf_mlp.skip_after), bool(nerf_mlp.uses_skip)
        if not (1 <= L <= MAX_LAYERS and _width_ok(width) and 0 <= multires <= MAX_MULTIRES):
            return False
        if uses_skip and not 0 <= skip_after < L - 1:
            return False
        pe_dim = 3 * (1 + 2 * multires)
        layers = list(nerf_mlp.layers)
        if len(layers) != L + 1:
            return False
        for i, layer in enumerate(layers[:-1]):
            c_in = pe_dim if i == 0 else (pe_dim + width if uses_skip and i == skip_after + 1 else width)
            if (layer.in_features, layer.out_features) != (c_in, width):
                return False
        return (layers[-1].in_features, layers[-1].out_features) == (width, OUT_FEATURES)
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Pure-PyTorch reference with the kernel's rounding.

def _check_no_grad(weights, pts: torch.Tensor, what: str) -> None:
    if not torch.is_grad_enabled():
        return
    tensors = [pts] + ([t for pair in weights for t in pair] if isinstance(weights, (list, tuple)) else [])
    if any(t.requires_grad for t in tensors):
        raise RuntimeError(f"{what} is inference-only (no autograd): call it under torch.no_grad() / "
                           "torch.inference_mode(), or use NeRFMLP.evaluate when gradients are needed.")


def reference_evaluate(weights: LayerWeights, pts: torch.Tensor, num_layers: int, multires: int, skip_after: int,
                       uses_skip: bool, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """NeRFMLP.evaluate in plain PyTorch with the fused kernel's rounding -> raw [B, N, 4] fp32 (float64 stays).

    weights: NeRFMLP.build_weights output, per layer (weight^T [B, c_in, c_out], bias [c_out]); pts [B, N, 3].
    The encoding is computed in fp32 (or wider) and cast to `dtype`; each layer multiplies `dtype` values with a
    wide accumulation (exact products, computed here by upcasting the rounded operands), adds the bias in fp32, and
    the hidden relu output is cast to `dtype`. With dtype=torch.float32 this is plain fp32 NeRFMLP.evaluate.
    """
    wide = torch.promote_types(pts.dtype, torch.float32)
    if len(weights) != num_layers + 1:
        raise ValueError(f"expected {num_layers + 1} layers of weights, got {len(weights)}")
    pe = positional_encoding(pts.to(wide), multires).to(dtype).to(wide)            # [B, N, pe_dim], rounded
    h = pe
    for i, (weight_t, bias) in enumerate(weights):
        w = weight_t.to(dtype).to(wide)                                              # [B, c_in, c_out], rounded
        acc = torch.baddbmm(bias.to(wide).view(1, 1, -1), h, w)                      # [B, N, c_out], wide
        if i == num_layers:
            return acc                                                               # [B, N, 4]
        h = torch.relu(acc).to(dtype).to(wide)                                       # [B, N, C], rounded
        if uses_skip and i == skip_after:
            h = torch.cat([pe, h], dim=-1)                                           # [B, N, pe_dim + C]
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------------------------------
# Weight packing (once per call, or once per object batch when the caller keeps the result for many chunks).

@dataclasses.dataclass
class PackedMLP:
    """Per-object weights in the kernel's layout (see the module docstring). L = num_layers, C = width."""
    w_pe: torch.Tensor        # [B, 2 PE_HALF, C] dtype: layer 0 (S rows, then C rows)
    w_skip_pe: torch.Tensor   # [B, 2 PE_HALF, C] dtype: encoding rows of the skip layer ([1] dummy without skip)
    w_hid: torch.Tensor       # [B, max(L-1, 1), C, C] dtype: layers 1..L-1 (their hidden-state rows)
    w_out: torch.Tensor       # [B, C, OUT_PAD] dtype: output layer, zero columns past 4
    b_hid: torch.Tensor       # [L, C] fp32
    b_out: torch.Tensor       # [OUT_PAD] fp32
    num_layers: int
    multires: int
    skip_layer: int           # index of the layer that takes [pe, h], -1 without skip
    width: int
    dtype: torch.dtype

    @property
    def batch(self) -> int:
        return self.w_pe.shape[0]


def _pe_row_index(multires: int) -> list[int]:
    """Row of the original pe_dim-row weight for each of the 2 PE_HALF kernel encoding rows (pe_dim = zero row)."""
    pe_dim, narg, half = 3 * (1 + 2 * multires), 3 * multires, pe_half_width(multires)
    index = []
    for tile in (0, 1):                                       # 0: S (sin) tile, 1: C (cos) tile
        for j in range(half):
            if j < narg:
                f, c = divmod(j, 3)
                index.append(3 + 6 * f + 3 * tile + c)        # positional_encoding: [x, (sin 3, cos 3) per f]
            else:
                r = j - narg + tile * (half - narg)           # raw coordinates fill the pad columns, S first
                index.append(r if r < 3 else pe_dim)
    return index


_ROW_INDEX: dict[tuple[int, torch.device], torch.Tensor] = {}


def _pe_rows(weight_t: torch.Tensor, multires: int, dtype: torch.dtype) -> torch.Tensor:
    """weight^T rows for the encoding [B, pe_dim, C] -> kernel layout [B, 2 PE_HALF, C] in dtype."""
    B, pe_dim, C = weight_t.shape
    padded = torch.cat([weight_t.to(dtype), weight_t.new_zeros([B, 1, C], dtype=dtype)], dim=1)  # [B, pe_dim+1, C]
    key = (multires, weight_t.device)
    if key not in _ROW_INDEX:                           # cached: no host-to-device copy per call (CUDA graphs)
        _ROW_INDEX[key] = torch.tensor(_pe_row_index(multires), device=weight_t.device)
    return padded.index_select(1, _ROW_INDEX[key]).contiguous()


def pack_weights(weights: LayerWeights, num_layers: int, multires: int, skip_after: int, uses_skip: bool,
                 dtype: torch.dtype = torch.float16) -> PackedMLP:
    """NeRFMLP.build_weights output -> PackedMLP (cast to dtype, padded, encoding rows reordered). Validates shapes."""
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"fused MLP dtype must be one of {KERNEL_DTYPES}, got {dtype}")
    if not 1 <= num_layers <= MAX_LAYERS:
        raise ValueError(f"fused MLP supports 1..{MAX_LAYERS} hidden layers, got num_layers={num_layers}")
    if not 0 <= multires <= MAX_MULTIRES:
        raise ValueError(f"fused MLP supports multires 0..{MAX_MULTIRES}, got {multires}")
    if len(weights) != num_layers + 1:
        raise ValueError(f"expected {num_layers + 1} (weight_t, bias) pairs, got {len(weights)}")
    if uses_skip and not 0 <= skip_after < num_layers - 1:
        raise ValueError(f"uses_skip needs skip_after in 0..num_layers-2, got skip_after={skip_after}")
    skip_layer = skip_after + 1 if uses_skip else -1
    pe_dim = 3 * (1 + 2 * multires)
    w0, b0 = weights[0]
    if w0.ndim != 3:
        raise ValueError(f"weight_t must be [B, c_in, c_out], got {tuple(w0.shape)}")
    B, C = w0.shape[0], w0.shape[2]
    if not _width_ok(C):
        raise ValueError(f"fused MLP needs a power-of-two width in 16..256, got {C}")
    for i, (wt, b) in enumerate(weights):
        c_in = pe_dim if i == 0 else (pe_dim + C if i == skip_layer else C)
        c_out = OUT_FEATURES if i == num_layers else C
        if tuple(wt.shape) != (B, c_in, c_out) or tuple(b.shape) != (c_out,):
            raise ValueError(f"layer {i}: expected weight_t {(B, c_in, c_out)} and bias {(c_out,)}, got "
                             f"{tuple(wt.shape)} and {tuple(b.shape)}")

    w_pe = _pe_rows(w0, multires, dtype)                                                   # [B, 2 PE_HALF, C]
    hidden = []
    w_skip_pe = w_pe.new_zeros([1])
    for i in range(1, num_layers):
        wt = weights[i][0]
        if i == skip_layer:
            w_skip_pe = _pe_rows(wt[:, :pe_dim], multires, dtype)                         # [B, 2 PE_HALF, C]
            wt = wt[:, pe_dim:]                                                            # [B, C, C]
        hidden.append(wt.to(dtype))
    w_hid = (torch.stack(hidden, dim=1) if hidden else w_pe.new_zeros([B, 1, C, C])).contiguous()  # [B, L-1, C, C]
    w_last, b_last = weights[num_layers]
    w_out = w_pe.new_zeros([B, C, OUT_PAD])
    w_out[:, :, :OUT_FEATURES] = w_last.to(dtype)                                           # [B, C, OUT_PAD]
    b_hid = torch.stack([weights[i][1].float() for i in range(num_layers)]).contiguous()   # [L, C]
    b_out = b_last.new_zeros([OUT_PAD], dtype=torch.float32)
    b_out[:OUT_FEATURES] = b_last.float()                                                  # [OUT_PAD]
    return PackedMLP(w_pe=w_pe, w_skip_pe=w_skip_pe.contiguous(), w_hid=w_hid, w_out=w_out.contiguous(),
                     b_hid=b_hid, b_out=b_out, num_layers=num_layers, multires=multires, skip_layer=skip_layer,
                     width=C, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------------
# The Triton kernel.

if triton is not None:

    @triton.jit
    def _sincos(a):
        """sin(a), cos(a) for fp32 a (any shape): quadrant reduction + minimax polynomials on [-pi/4, pi/4]."""
        q = tl.floor(a * 0.6366197723675814 + 0.5)                 # nearest multiple of pi/2
        r = a - q * 1.5703125                                      # pi/2 = P1 + P2 + P3; q P1, q P2 exact
        r = r - q * 4.837512969970703125e-4
        r = r - q * 7.54978995489188216e-8                         # |r| <= pi/4 (+ rounding)
        qi = q.to(tl.int32)
        z = r * r
        sin_r = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r
        cos_r = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z \
            - 0.5 * z + 1.0
        odd = (qi & 1) != 0                                        # sin(q pi/2 + r): sin r, cos r, -sin r, -cos r
        s = tl.where(odd, cos_r, sin_r)
        c = tl.where(odd, sin_r, cos_r)                            # cos(q pi/2 + r): cos r, -sin r, -cos r, sin r
        s = tl.where((qi & 2) != 0, -s, s)
        c = tl.where(((qi + 1) & 2) != 0, -c, c)
        return s, c

    @triton.jit
    def _raw_coord(x0, x1, x2, r):
        """x0, x1, x2 [BLOCK_N, 1] fp32, r [1, K] int -> [BLOCK_N, K]: x_r where r in 0..2, else 0."""
        return tl.where(r == 0, x0, tl.where(r == 1, x1, tl.where(r == 2, x2, 0.0)))

    @triton.jit
    def _encode(x0, x1, x2, MULTIRES: tl.constexpr, PE_HALF: tl.constexpr):
        """Points (3 x [BLOCK_N] fp32) -> encoding tiles S, C [BLOCK_N, PE_HALF] fp32 (layout: module docstring)."""
        NARG: tl.constexpr = 3 * MULTIRES
        j = tl.arange(0, PE_HALF)[None, :]                         # [1, PE_HALF] column
        c = j % 3                                                  # coordinate of column j
        f = tl.minimum(j // 3, MULTIRES)                           # frequency exponent (clamped in pad columns)
        x0, x1, x2 = x0[:, None], x1[:, None], x2[:, None]         # [BLOCK_N, 1]
        xc = tl.where(c == 0, x0, tl.where(c == 1, x1, x2))        # [BLOCK_N, PE_HALF]
        a = xc * (1 << f).to(tl.float32)                           # x_c 2^f: exact in fp32
        s, co = _sincos(a)                                         # [BLOCK_N, PE_HALF] each
        s = tl.where(j < NARG, s, _raw_coord(x0, x1, x2, j - NARG))
        co = tl.where(j < NARG, co, _raw_coord(x0, x1, x2, j - NARG + (PE_HALF - NARG)))
        return s, co

    @triton.jit
    def _pe_load(w_ptr, PE_HALF: tl.constexpr, WIDTH: tl.constexpr):
        """Encoding rows of one object's layer, w_ptr -> [2 PE_HALF, WIDTH]: the (S rows, C rows) tiles."""
        k = tl.arange(0, PE_HALF)[:, None]
        n = tl.arange(0, WIDTH)[None, :]
        return tl.load(w_ptr + k * WIDTH + n), tl.load(w_ptr + (PE_HALF + k) * WIDTH + n)   # [PE_HALF, WIDTH] x 2

    @triton.jit
    def _pe_dot(s, c, w_s, w_c, acc):
        """acc [BLOCK_N, WIDTH] + S @ W_S + C @ W_C (fp32 accumulation)."""
        return tl.dot(c, w_c, tl.dot(s, w_s, acc))

    @triton.jit
    def _hidden_layer(h, s, c, w_hid_obj, w_skip_obj, b_hid_ptr, layer, SKIP: tl.constexpr, PE_HALF: tl.constexpr,
                      WIDTH: tl.constexpr):
        """Hidden layer `layer` >= 1: relu(h @ W + bias) -> [BLOCK_N, WIDTH] in h's dtype; with SKIP the input is
        [pe, h], i.e. + S @ W_S + C @ W_C from the skip layer's encoding rows at w_skip_obj."""
        kw = tl.arange(0, WIDTH)
        w = tl.load(w_hid_obj + ((layer - 1) * WIDTH + kw[:, None]) * WIDTH + kw[None, :])    # [WIDTH, WIDTH]
        acc = tl.dot(h, w)                                                                    # [BLOCK_N, WIDTH] fp32
        if SKIP:
            w_s, w_c = _pe_load(w_skip_obj, PE_HALF, WIDTH)
            acc = _pe_dot(s, c, w_s, w_c, acc)
        return tl.maximum(acc + tl.load(b_hid_ptr + layer * WIDTH + kw)[None, :], 0.0).to(h.dtype)

    @triton.jit
    def _hidden_loop(h, w_hid_obj, b_hid_ptr, START: tl.constexpr, END: tl.constexpr, WIDTH: tl.constexpr):
        """Plain hidden layers START..END-1 as a runtime loop (software-pipelined weight loads)."""
        kw = tl.arange(0, WIDTH)
        for layer in range(START, END):
            w = tl.load(w_hid_obj + ((layer - 1) * WIDTH + kw[:, None]) * WIDTH + kw[None, :])  # [WIDTH, WIDTH]
            acc = tl.dot(h, w)                                                                  # [BLOCK_N, WIDTH]
            h = tl.maximum(acc + tl.load(b_hid_ptr + layer * WIDTH + kw)[None, :], 0.0).to(h.dtype)
        return h

    @triton.jit
    def _fused_mlp_kernel(
        pts_ptr,        # [B, N, 3] fp32, contiguous
        out_ptr,        # [B, N, 4] fp32, contiguous
        w_pe_ptr,       # [B, 2 PE_HALF, WIDTH] dtype: layer 0
        w_skip_pe_ptr,  # [B, 2 PE_HALF, WIDTH] dtype: encoding rows of layer SKIP_LAYER (unused when -1)
        w_hid_ptr,      # [B, HID_SLOTS, WIDTH, WIDTH] dtype: layers 1..L-1
        w_out_ptr,      # [B, WIDTH, OUT_PAD] dtype
        b_hid_ptr,      # [NUM_LAYERS, WIDTH] fp32
        b_out_ptr,      # [OUT_PAD] fp32
        N,              # points per object
        NUM_LAYERS: tl.constexpr, SKIP_LAYER: tl.constexpr, HID_SLOTS: tl.constexpr, MULTIRES: tl.constexpr,
        PE_HALF: tl.constexpr, WIDTH: tl.constexpr, OUT_PAD: tl.constexpr, OUT_FEATURES: tl.constexpr,
        BLOCK_N: tl.constexpr, PIPELINE: tl.constexpr,
    ):
        pid_n = tl.program_id(0)                                   # point block (fastest: neighbours share weights
        b = tl.program_id(1).to(tl.int64)                          # in L2), object b
        dtype = w_pe_ptr.dtype.element_ty                          # fp16 or bf16
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)             # [BLOCK_N] point indices
        row_ok = rows < N                                          # ragged last block

        # Layer 0's weights and bias first: their loads are in flight while the encoding is computed.
        kw = tl.arange(0, WIDTH)                                   # [WIDTH]
        w_s, w_c = _pe_load(w_pe_ptr + b * (2 * PE_HALF * WIDTH), PE_HALF, WIDTH)   # [PE_HALF, WIDTH] x 2
        bias0 = tl.load(b_hid_ptr + kw)                            # [WIDTH] fp32

        # 1. Encoding in fp32, then cast.
        p = pts_ptr + b * N * 3 + rows * 3
        x0 = tl.load(p, mask=row_ok, other=0.0)                    # [BLOCK_N] fp32 each
        x1 = tl.load(p + 1, mask=row_ok, other=0.0)
        x2 = tl.load(p + 2, mask=row_ok, other=0.0)
        s, c = _encode(x0, x1, x2, MULTIRES, PE_HALF)
        s = s.to(dtype)                                            # [BLOCK_N, PE_HALF]
        c = c.to(dtype)

        # 2. Hidden layers: acc fp32 [BLOCK_N, WIDTH]; h = relu(acc + bias) in dtype.
        acc = _pe_dot(s, c, w_s, w_c, tl.zeros([BLOCK_N, WIDTH], dtype=tl.float32))
        h = tl.maximum(acc + bias0[None, :], 0.0).to(dtype)
        w_hid_obj = w_hid_ptr + b * (HID_SLOTS * WIDTH * WIDTH)
        w_skip_obj = w_skip_pe_ptr + b * (2 * PE_HALF * WIDTH)
        if PIPELINE:
            # Runtime loops over the plain layers, so that Triton's software pipeliner can prefetch the next
            # layer's [WIDTH, WIDTH] weight tile into shared memory while the current dot runs; the skip layer
            # (which also reads the encoding) sits between the two loops.
            if SKIP_LAYER > 0:
                h = _hidden_loop(h, w_hid_obj, b_hid_ptr, 1, SKIP_LAYER, WIDTH)
                h = _hidden_layer(h, s, c, w_hid_obj, w_skip_obj, b_hid_ptr, SKIP_LAYER, True, PE_HALF, WIDTH)
                h = _hidden_loop(h, w_hid_obj, b_hid_ptr, SKIP_LAYER + 1, NUM_LAYERS, WIDTH)
            else:
                h = _hidden_loop(h, w_hid_obj, b_hid_ptr, 1, NUM_LAYERS, WIDTH)
        else:
            # Fully unrolled at compile time.
            for layer in tl.static_range(1, NUM_LAYERS):
                h = _hidden_layer(h, s, c, w_hid_obj, w_skip_obj, b_hid_ptr, layer, layer == SKIP_LAYER,
                                  PE_HALF, WIDTH)

        # 3. Output layer (linear), padded to OUT_PAD columns; store the first OUT_FEATURES in fp32.
        ko = tl.arange(0, OUT_PAD)                                 # [OUT_PAD]
        w_o = tl.load(w_out_ptr + b * (WIDTH * OUT_PAD) + kw[:, None] * OUT_PAD + ko[None, :])   # [WIDTH, OUT_PAD]
        raw = tl.dot(h, w_o) + tl.load(b_out_ptr + ko)[None, :]                                   # [BLOCK_N, OUT_PAD]
        o = out_ptr + b * N * OUT_FEATURES + rows[:, None] * OUT_FEATURES + ko[None, :]
        tl.store(o, raw, mask=row_ok[:, None] & (ko[None, :] < OUT_FEATURES))

    @triton.jit
    def _sincos_kernel(a_ptr, s_ptr, c_ptr, n, BLOCK: tl.constexpr):
        """Elementwise _sincos over a flat fp32 tensor (used by tests to check the encoding's accuracy)."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = i < n
        s, c = _sincos(tl.load(a_ptr + i, mask=ok, other=0.0))
        tl.store(s_ptr + i, s, mask=ok)
        tl.store(c_ptr + i, c, mask=ok)


# ----------------------------------------------------------------------------------------------------------------------
# Python API.

def default_launch(device: torch.device) -> dict:
    """Launch parameters of `fused_evaluate`: block_n (points per program), num_warps, pipeline (runtime loop over the
    plain hidden layers, whose weight tiles Triton then prefetches with cp.async into a num_stages-deep shared-memory
    ring; else every layer unrolled with synchronous loads) and num_stages.

    Chosen from measurements on sm_90 (one H200, driver 580.159.04, triton 3.6.0,
    docs/bench/bench-h200-2026-12-01-s7.json). `bench/fused_mlp_faults.py`: every launch with 64 points on 4 warps
    (pipelined or not, 1 or 2 stages) and 128 on 8 warps reads shared memory out of bounds in a hidden layer's
    `tl.dot` there; 64 on 8 warps and 32 or 16 on 4 warps are correct. Of those, 64 on 8 warps renders fastest: 2,381
    T4-setting images/s against 1,932 for 32 on 4 warps (`bench/train_speed.py --sections render`, batch 64). The self
    check (`self_check`, run by the backend) still guards every new machine, which then keeps the torch MLP.
    """
    return dict(block_n=64, num_warps=8, pipeline=True, num_stages=2)


def fused_evaluate(weights: LayerWeights | PackedMLP, pts: torch.Tensor, num_layers: int, multires: int,
                   skip_after: int, uses_skip: bool, dtype: torch.dtype = torch.float16,
                   block_n: int | None = None, num_warps: int | None = None, pipeline: bool | None = None,
                   num_stages: int | None = None) -> torch.Tensor:
    """NeRFMLP.evaluate(weights, pts) in one fused kernel -> raw [B, N, 4] fp32. Inference only (no autograd).

    weights: NeRFMLP.build_weights(w) output (cast/padded here), or a `pack_weights` result to reuse across chunks.
    pts: [B, N, 3] (any float dtype, converted to fp32). dtype: torch.float16 or torch.bfloat16 (sm_80+ only) for the
    matmuls. Raises ValueError for unsupported configurations (check `supported(nerf_mlp)` first) and RuntimeError
    without triton / CUDA or when called with inputs that require grad while grad mode is on.
    """
    _check_no_grad(weights, pts, "fused_evaluate")
    if triton is None:
        raise RuntimeError("fused_evaluate needs triton (pip install triton)")
    if not (pts.is_cuda or interpreting()):
        raise RuntimeError("fused_evaluate needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    if pts.ndim != 3 or pts.shape[-1] != 3:
        raise ValueError(f"pts must be [B, N, 3], got {tuple(pts.shape)}")
    if pts.is_cuda and dtype == torch.bfloat16 and torch.cuda.get_device_capability(pts.device)[0] < 8:
        raise ValueError("bf16 tensor-core dots need sm_80+; use dtype=torch.float16 on this GPU")
    with torch.no_grad():
        if isinstance(weights, PackedMLP):
            packed = weights
            if (packed.num_layers, packed.multires, packed.skip_layer) != \
                    (num_layers, multires, skip_after + 1 if uses_skip else -1) or packed.dtype != dtype:
                raise ValueError("packed weights were made for another configuration or dtype")
        else:
            packed = pack_weights(weights, num_layers, multires, skip_after, uses_skip, dtype)
        B, N = pts.shape[0], pts.shape[1]
        if B != packed.batch:
            raise ValueError(f"pts has {B} objects but the weights have {packed.batch}")
        if packed.w_pe.device != pts.device:
            raise ValueError(f"weights on {packed.w_pe.device} but pts on {pts.device}")
        pts = pts.to(torch.float32).contiguous()
        out = torch.empty([B, N, OUT_FEATURES], device=pts.device, dtype=torch.float32)
        if B == 0 or N == 0:
            return out
        launch = default_launch(pts.device)
        block_n = block_n or launch["block_n"]
        num_warps = num_warps or launch["num_warps"]
        pipeline = launch["pipeline"] if pipeline is None else bool(pipeline)
        num_stages = num_stages or launch["num_stages"]
        if block_n < 16 or block_n & (block_n - 1):
            raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
        grid = (triton.cdiv(N, block_n), B)
        with torch.cuda.device(pts.device) if pts.is_cuda else contextlib.nullcontext():   # triton launches on
            _launch(grid, pts, out, packed, block_n, num_warps, pipeline, num_stages)     # the current device
    return out


def _launch(grid, pts, out, packed: PackedMLP, block_n: int, num_warps: int, pipeline: bool, num_stages: int):
    """pts [B, N, 3] fp32 contiguous, out [B, N, 4] fp32 -> fills out."""
    _fused_mlp_kernel[grid](
        pts, out, packed.w_pe, packed.w_skip_pe, packed.w_hid, packed.w_out, packed.b_hid, packed.b_out, pts.shape[1],
        NUM_LAYERS=packed.num_layers, SKIP_LAYER=packed.skip_layer, HID_SLOTS=packed.w_hid.shape[1],
        MULTIRES=packed.multires, PE_HALF=pe_half_width(packed.multires), WIDTH=packed.width,
        OUT_PAD=OUT_PAD, OUT_FEATURES=OUT_FEATURES, BLOCK_N=block_n, PIPELINE=pipeline, num_warps=num_warps,
        num_stages=num_stages)


def kernel_sincos(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's fp32 sin(a), cos(a), evaluated by Triton (CUDA, or CPU under TRITON_INTERPRET=1). For tests."""
    if triton is None:
        raise RuntimeError("kernel_sincos needs triton")
    a = a.to(torch.float32).contiguous()
    s, c = torch.empty_like(a), torch.empty_like(a)
    if a.numel():
        block = 1024
        _sincos_kernel[(triton.cdiv(a.numel(), block),)](a, s, c, a.numel(), BLOCK=block)
    return s, c


def random_weights(B: int, num_layers: int = 4, width: int = 128, multires: int = 10, skip_after: int = 4,
                   device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> LayerWeights:
    """Random per-object weights shaped like NeRFMLP.build_weights (unit-variance activations), for tests / checks."""
    pe_dim = 3 * (1 + 2 * multires)
    uses_skip = num_layers > skip_after + 1
    weights = []
    for i in range(num_layers + 1):
        c_in = pe_dim if i == 0 else (pe_dim + width if uses_skip and i == skip_after + 1 else width)
        c_out = OUT_FEATURES if i == num_layers else width
        gain = 1.0 if i == 0 else 2.0 ** 0.5                       # relu gain, as folded in by HyperLinear
        w = torch.randn([B, c_in, c_out], generator=generator) * (gain / c_in ** 0.5)
        b = torch.randn([c_out], generator=generator) * 0.1
        weights.append((w.to(device), b.to(device)))
    return weights


def self_check(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel matches `reference_evaluate` (same rounding; a relative error ~1e-4 is expected) on the
    default 4-layer configuration and a 3-layer one with a skip (both layer loops and the skip layer), on a ragged
    point count. The backend runs it once per GPU and dtype, in a child process."""
    gen = torch.Generator().manual_seed(0)
    for num_layers, skip_after in ((4, 4), (3, 0)):
        weights = random_weights(2, num_layers=num_layers, skip_after=skip_after, device=device, generator=gen)
        pts = (torch.rand([2, 77, 3], generator=gen) * 2 - 1).to(device)
        cfg = dict(num_layers=num_layers, multires=10, skip_after=skip_after, uses_skip=num_layers > skip_after + 1)
        with torch.no_grad():
            got = fused_evaluate(weights, pts, dtype=dtype, **cfg)
            want = reference_evaluate(weights, pts, dtype=dtype, **cfg)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            err = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
        if not err < 5e-3:
            return False
    return True
