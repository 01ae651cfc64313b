"""The discriminator: a StyleGAN2 residual CNN that judges P x P patches (as the authors' D).

Blocks run from the patch resolution P down to 8 (each halves the resolution with the [1, 3, 3, 1] FIR filter),
then a 4 x 4 epilogue (minibatch standard deviation, 3x3 conv, two fully connected layers) gives one logit per image.
Equalised learning rate everywhere; leaky ReLU 0.2 with gain sqrt(2); residual sums scaled by sqrt(0.5).

Mixed precision: `forward(img, mp_dtype=torch.float16 | torch.bfloat16)` runs the blocks at resolution
>= max(2 ** (log2(P) + 1 - num_fp16_res), 8) in that dtype (weights cast on the fly); the epilogue is always fp32.
As in the reference, every conv layer except the skips clamps its output to +-conv_clamp * gain (in every precision;
the clamp only matters for 16-bit activations in practice). Only native PyTorch ops are used, so the network works
under torch.compile, in CUDA graphs, and with double backward (R1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dnnlib.util import UserError
from torch_utils.layers import SQRT2, FullyConnectedLayer
from torch_utils.ops.conv_gemm import conv_as_gemm
from torch_utils.ops.fir import downsample_padding, fir2d, is_binomial4, make_fir_filter
from torch_utils.persistence import persistent_class

SQRT_HALF = math.sqrt(0.5)
_MP_DTYPES = (torch.float16, torch.bfloat16)


class Conv2dLayer(nn.Module):
    """Equalised-lr conv: y = clamp(act(conv(x, W / sqrt(fan_in)) + b) * act_gain * gain, +-conv_clamp * gain).

    down=2 first filters with the FIR kernel (zero padding chosen so that the output is exactly half the input),
    then convolves with stride 2 (kernel_size > 1) or filters with stride 2 then applies the 1x1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None,
                 as_gemm: bool = False) -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"unknown activation {activation!r}")
        if down not in (1, 2):
            raise ValueError(f"down must be 1 or 2, got {down}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        # as_gemm: compute the (down=1) conv as unfold + matmul. For the tiny fp32 4x4 epilogue conv cuDNN picks
        # latency-bound kernels (~120 us per call on an H100); the GEMM form is the same function and far faster.
        self.as_gemm = bool(as_gemm) and down == 1
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = SQRT2 if activation == "lrelu" else 1.0
        self.register_buffer("resample_filter", make_fir_filter(), persistent=False)  # [4, 4]
        self.fir_binomial = is_binomial4(self.resample_filter)  # decided once, never read back from the GPU
        pad0, pad1 = downsample_padding(kernel_size, self.resample_filter.shape[-1], 2)
        assert pad0 == pad1, "the [1, 3, 3, 1] filter gives symmetric padding"
        self.fir_padding = pad0

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """x [N, C_in, H, W] -> [N, C_out, H / down, W / down] in x's dtype."""
        w = (self.weight * self.weight_gain).to(x.dtype)  # [C_out, C_in, k, k]
        if self.as_gemm:
            x = conv_as_gemm(x, w)
        elif self.down == 1:
            x = F.conv2d(x, w, padding=self.kernel_size // 2)
        elif self.kernel_size == 1:
            x = fir2d(x, self.resample_filter, padding=self.fir_padding, down=2, binomial=self.fir_binomial)
            x = F.conv2d(x, w)
        else:
            x = fir2d(x, self.resample_filter, padding=self.fir_padding, down=1, binomial=self.fir_binomial)
            x = F.conv2d(x, w, stride=2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2)
        act_gain = self.act_gain * gain
        if act_gain != 1.0:
            x = x * act_gain
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp * gain, self.conv_clamp * gain)
        return x

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, act={self.activation}, "
                f"down={self.down}, clamp={self.conv_clamp}")


class DiscriminatorBlock(nn.Module):
    """One residual block at `resolution`: [fromRGB,] conv0 3x3, conv1 3x3 down 2; skip 1x1 down 2; sum."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 conv_clamp: float | None, use_mp: bool) -> None:
        super().__init__()
        self.resolution, self.use_mp = resolution, use_mp
        self.fromrgb = None
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor, dtype: torch.dtype,
                memory_format: torch.memory_format) -> torch.Tensor:
        """x [N, C, R, R] (None for the first block), img [N, img_channels, R, R] -> [N, C_out, R/2, R/2]."""
        if self.fromrgb is not None:
            x = self.fromrgb(img.to(dtype=dtype, memory_format=memory_format))
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
        y = self.skip(x, gain=SQRT_HALF)
        x = self.conv0(x)
        x = self.conv1(x, gain=SQRT_HALF)
        return y + x


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int = 1) -> torch.Tensor:
    """Append `num_channels` feature maps holding the std over groups of G = min(group_size, N) samples.

    x [N, C, H, W] -> [N, C + num_channels, H, W]. Sample n belongs to group n mod (N / G) (strided groups, as in
    StyleGAN2). N must be divisible by G. Shapes only, no host synchronisation.
    """
    N, C, H, W = x.shape
    G = min(group_size, N)
    if N % G != 0:
        raise ValueError(f"batch size {N} is not divisible by the minibatch-stddev group size {G}; "
                         f"use a per-GPU batch that is a multiple of {G}")
    if C % num_channels != 0:
        raise ValueError(f"{C} channels cannot be split into {num_channels} stddev groups")
    y = x.reshape(G, N // G, num_channels, C // num_channels, H, W)  # [G, n, F, c, H, W]
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()                       # [n, F, c, H, W]
    y = y.mean(dim=[2, 3, 4])                                         # [n, F]
    y = y.reshape(N // G, num_channels, 1, 1).repeat(G, 1, H, W)      # [N, F, H, W]
    return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4x4 head in fp32: mbstd -> conv 3x3 (C+F -> C) lrelu -> FC (C*16 -> C) lrelu -> FC (C -> 1)."""

    def __init__(self, in_channels: int, conv_clamp: float | None, mbstd_group_size: int,
                 mbstd_num_channels: int, out_features: int = 1) -> None:
        super().__init__()
        self.mbstd_group_size, self.mbstd_num_channels = mbstd_group_size, mbstd_num_channels
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp, as_gemm=True)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, out_features)

    def forward(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x [N, C, 4, 4] (any dtype/memory format) -> logits [N, out_features] in `dtype` (float32, or float64 in
        tests); a scale-aware D projects its out_features on the patch embedding."""
        x = x.to(dtype=dtype, memory_format=torch.contiguous_format)
        if self.mbstd_num_channels > 0:
            x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)  # [N, C + F, 4, 4]
        x = self.conv(x)                 # [N, C, 4, 4]
        x = self.fc(x.flatten(1))        # [N, C]
        return self.out(x)               # [N, 1]


@persistent_class
class Discriminator(nn.Module):
    """StyleGAN2 resnet discriminator at the patch resolution P; unconditioned (the reference) unless patch_features
    > 0, which makes it scale-aware (training/networks/patch_cond.py)."""

    def __init__(self,
                 img_resolution: int,               # Patch size P (power of two >= 8).
                 img_channels: int = 3,             # Channels of the input images.
                 channel_base: int = 32768,         # Channels at resolution r = min(channel_base // r, channel_max).
                 channel_max: int = 512,            # Maximum number of channels.
                 num_fp16_res: int = 4,             # Mixed precision for the blocks at the highest resolutions.
                 conv_clamp: float | None = 256,    # Clamp conv outputs to +-this (None = off).
                 mbstd_group_size: int = 4,         # Minibatch-stddev group (min(this, batch) is used).
                 mbstd_num_channels: int = 1,       # Minibatch-stddev feature maps (0 = off).
                 patch_features: int = 0,           # > 0: scale-aware, told this many window features per patch.
                 ) -> None:
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise UserError(f"The discriminator resolution (patch size) must be a power of two >= 8, got "
                            f"{img_resolution}: choose a patch size like 8, 16, 32 or 64.")
        if img_channels < 1 or channel_base < 1 or channel_max < 1 or mbstd_group_size < 1:
            raise UserError("Discriminator channel counts and mbstd_group_size must be positive integers.")
        self.img_resolution, self.img_channels = img_resolution, img_channels
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]  # P, P/2, ..., 8
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        self.fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        for res in self.block_resolutions:
            in_ch = 0 if res == img_resolution else channels[res]
            block = DiscriminatorBlock(in_ch, channels[res], channels[res // 2], res, img_channels, conv_clamp,
                                       use_mp=res >= self.fp16_resolution)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(channels[4], conv_clamp, mbstd_group_size, mbstd_num_channels,
                                        out_features=channels[4] if patch_features > 0 else 1)
        self.patch_cond = None
        if patch_features > 0:
            from training.networks.patch_cond import PatchConditioning
            self.patch_cond = PatchConditioning(patch_features, channels[4])

    def forward(self, img: torch.Tensor, mp_dtype: torch.dtype | None = None,
                channels_last: bool = False, patch: torch.Tensor | None = None) -> torch.Tensor:
        """img [N, img_channels, P, P] float -> logits [N, 1] float32 (float64 for float64 images, for gradcheck).

        mp_dtype: None / torch.float32 (all fp32), torch.float16 or torch.bfloat16 (mixed-precision blocks).
        channels_last: run the conv blocks in NHWC memory format (faster convolutions on GPUs).
        patch: a scale-aware D's window features [N, patch_features] (training.patch_scale.window_features).
        """
        if mp_dtype is not None and mp_dtype != torch.float32 and mp_dtype not in _MP_DTYPES:
            raise ValueError(f"mp_dtype must be None, torch.float16 or torch.bfloat16, got {mp_dtype}")
        P = self.img_resolution
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, P, P):
            raise ValueError(f"expected images [N, {self.img_channels}, {P}, {P}], got {list(img.shape)}")
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        base_dtype = torch.float64 if img.dtype == torch.float64 else torch.float32
        x = None
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            dtype = mp_dtype if (block.use_mp and mp_dtype in _MP_DTYPES) else base_dtype
            x = block(x, img, dtype, memory_format)
        if self.patch_cond is not None:
            return self.patch_cond(self.b4(x, base_dtype), patch)
        return self.b4(x, base_dtype)

    def extra_repr(self) -> str:
        return f"img_resolution={self.img_resolution}, fp16_resolution={self.fp16_resolution}"
