"""The augmentation pipe applied to reals and fakes before every D call (the authors' `augment.py`; docs/MODEL.md).

Modes:
* "fixed" (the official default): images larger than the patch size P are cropped to a random P x P window (always,
  whatever p), then x-flipped with probability xflip * p * 0.5 (a coin drawn with probability xflip * p, as in the
  reference: 0.25 at p = 0.5). p stays constant.
* "ada": crop, then the StyleGAN2-ADA blit (x-flip, rotation by 90 degrees, integer translation), geom (isotropic
  scale, rotation, anisotropic scale, fractional translation) and color (brightness, contrast, luma flip, hue rotation,
  saturation) transforms, each applied with probability strength * p, written from the formulas of the ADA paper
  (Karras et al. 2020, appendix). The geometric part is one 3x3 matrix per image and one bilinear resampling pass with
  symmetric (half-sample) reflection at the borders; the colour part is one 4x4 matrix per image. p adapts with
  `ada_update` (on device).
* "noaug": crop only.

Deliberate deviations from the reference, all documented here:
* Crop offsets cover every valid start 0..H-P (the reference's exclusive randint never shows the last row/column).
* Reals are cropped before the other transforms (the reference flips the full image, then crops): the distribution
  is the same for flips, and the ADA transforms then see exactly what fakes see (a P x P patch).
* x-flips are exact mirrors. The reference sends every batch through its geometric stage (2x sym6 up-sampling,
  grid_sample, 2x down-sampling), which is lossless for the identity but turns a mirror into a slightly filtered
  mirror (about 5 % relative L2 on rendered patches), for reals and fakes alike.
* ADA resamples with plain bilinear interpolation at the patch resolution (the ADA paper supersamples 2x with a
  wavelet filter to limit aliasing); blit transforms and the identity are still exact.

Everything is static-shape and sync-free (no .item(), no boolean-mask indexing; crops use gather), randomness comes
from the explicit generator, and the whole pipe is twice differentiable w.r.t. the input images (for R1).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dnnlib.util import UserError
from torch_utils.ops.grid_sample import grid_sample2d
from torch_utils.persistence import persistent_class
from training.rendering.camera import sample_windows

MODES = ("fixed", "ada", "noaug")
_BLIT = dict(xflip=1.0, rotate90=1.0, xint=1.0)
_GEOM = dict(scale=1.0, rotate=1.0, aniso=1.0, xfrac=1.0)
_COLOR = dict(brightness=1.0, contrast=1.0, lumaflip=1.0, hue=1.0, saturation=1.0)
_ALL_OFF = {k: 0.0 for k in {**_BLIT, **_GEOM, **_COLOR}}
AUGPIPE_SPECS: dict[str, dict[str, float]] = {
    "blit": {**_ALL_OFF, **_BLIT},
    "geom": {**_ALL_OFF, **_GEOM},
    "color": {**_ALL_OFF, **_COLOR},
    "bg": {**_ALL_OFF, **_BLIT, **_GEOM},
    "bgc": {**_ALL_OFF, **_BLIT, **_GEOM, **_COLOR},
}


# ----------------------------------------------------------------------------------------------------------------------
# Random numbers from an explicit generator.

def _draw(kind: str, shape: list[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """rand / randn / coin (int64 in {0, 1}) / quarter (int64 in {0..3}) drawn on the generator's device."""
    gdev = generator.device if generator is not None else device
    if kind == "rand":
        out = torch.rand(shape, generator=generator, device=gdev)
    elif kind == "randn":
        out = torch.randn(shape, generator=generator, device=gdev)
    elif kind == "coin":
        out = torch.randint(0, 2, shape, generator=generator, device=gdev)
    else:
        out = torch.randint(0, 4, shape, generator=generator, device=gdev)
    return out.to(device)


def _gate(value: torch.Tensor, identity: float, prob: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Keep each of the B values (first axis) with probability prob, else replace it by `identity`."""
    keep = _draw("rand", [value.shape[0]], generator, value.device) < prob  # [B]
    keep = keep.reshape([-1] + [1] * (value.ndim - 1))
    return torch.where(keep, value, torch.full_like(value, identity))


# ----------------------------------------------------------------------------------------------------------------------
# Crops.

def sample_crop_offsets(n: int, resolution: int, patch_size: int, generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """(row0, col0) [n, 2] int64 on `device`, uniform over every valid start 0..resolution-patch_size."""
    return sample_windows(n, resolution, patch_size, generator=generator, device=device).to(device)


def crop_patches(images: torch.Tensor, offsets: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images [B, C, H, W], offsets [B, 2] (row0, col0) -> [B, C, P, P] via two gathers (differentiable, no sync)."""
    B, C, H, W = images.shape
    P = patch_size
    ar = torch.arange(P, device=images.device)
    rows = (offsets[:, 0:1].to(images.device) + ar).reshape(B, 1, P, 1).expand(B, C, P, W)  # [B, C, P, W]
    x = images.gather(2, rows)                                                                # [B, C, P, W]
    cols = (offsets[:, 1:2].to(images.device) + ar).reshape(B, 1, 1, P).expand(B, C, P, P)  # [B, C, P, P]
    return x.gather(3, cols)                                                                  # [B, C, P, P]


def sample_patches(images: torch.Tensor, windows: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images [B, C, H, W], windows [B, 3] (row0, col0, spacing) -> [B, C, P, P]: pixel (i, j) of the patch is the
    image bilinearly sampled at (row0 + i * spacing, col0 + j * spacing) in pixel-index coordinates, the point where
    G's ray of the same window meets the image plane (camera.get_rays). Gathers and lerps only: differentiable to
    any order (R1) and free of host syncs. At spacing 1 and integer starts it equals `crop_patches`."""
    B, C, H, W = images.shape
    steps = torch.arange(patch_size, device=images.device, dtype=torch.float32)
    win = windows.to(device=images.device, dtype=torch.float32)

    def taps(start: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = (start[:, None] + steps[None, :] * win[:, 2:3]).clamp(0, size - 1)              # [B, P]
        lo = pos.floor()
        return lo.long(), (lo + 1).clamp(max=size - 1).long(), (pos - lo).to(images.dtype)
    r0, r1, fr = taps(win[:, 0], H)
    c0, c1, fc = taps(win[:, 1], W)
    P = patch_size

    def rows(idx: torch.Tensor) -> torch.Tensor:
        return images.gather(2, idx.reshape(B, 1, P, 1).expand(B, C, P, W))                   # [B, C, P, W]
    x = torch.lerp(rows(r0), rows(r1), fr.reshape(B, 1, P, 1))                                 # [B, C, P, W]

    def cols(idx: torch.Tensor) -> torch.Tensor:
        return x.gather(3, idx.reshape(B, 1, 1, P).expand(B, C, P, P))                        # [B, C, P, P]
    return torch.lerp(cols(c0), cols(c1), fc.reshape(B, 1, 1, P))                              # [B, C, P, P]


# ----------------------------------------------------------------------------------------------------------------------
# Homogeneous matrices (batched). 2-D ones act on centred pixel coordinates (x right, y down, origin at the centre).

def _mat3(rows: list[list[torch.Tensor | float]], ref: torch.Tensor) -> torch.Tensor:
    """Stack a 3x3 (or 4x4) layout of [B] tensors / scalars into [B, n, n]."""
    # Python numbers become full_like tensors (a fill kernel, never a host-to-device copy: CUDA-graph safe).
    cols = [v.to(ref.dtype).expand_as(ref) if isinstance(v, torch.Tensor) else torch.full_like(ref, float(v))
            for row in rows for v in row]
    n = len(rows)
    return torch.stack(cols, dim=-1).reshape(ref.shape[0], n, n)


def translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] translation by (tx, ty) pixels."""
    return _mat3([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] scaling about the image centre."""
    return _mat3([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] rotation by theta radians about the image centre (x towards y)."""
    c, s = torch.cos(theta), torch.sin(theta)
    return _mat3([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def _reflect(u: torch.Tensor, n: int) -> torch.Tensor:
    """Fold pixel-index coordinates into [0, n - 1] by symmetric reflection about the edges -0.5 and n - 0.5."""
    t = torch.remainder(u + 0.5, 2 * n)
    t = torch.where(t > n, 2 * n - t, t)
    return (t - 0.5).clamp(0, n - 1)


def affine_resample(images: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Resample images [B, C, H, W] with `mat` [B, 3, 3] mapping output to input centred pixel coordinates.

    Bilinear, symmetric reflection outside the image; exact for the identity, flips, 90-degree rotations of square
    images and integer translations. Twice differentiable w.r.t. images (not w.r.t. mat).
    """
    B, C, H, W = images.shape
    dtype = torch.promote_types(images.dtype, torch.float32)
    dev = images.device
    xs = torch.arange(W, device=dev, dtype=dtype) + 0.5 - W / 2
    ys = torch.arange(H, device=dev, dtype=dtype) + 0.5 - H / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    q = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, H * W, 3)  # [1, H*W, 3]
    src = q @ mat.to(dtype).transpose(1, 2)                                      # [B, H*W, 3]
    u = _reflect(src[..., 0] + W / 2 - 0.5, W)                                   # [B, H*W] column index
    v = _reflect(src[..., 1] + H / 2 - 0.5, H)                                   # [B, H*W] row index
    grid = torch.stack([(2 * u + 1) / W - 1, (2 * v + 1) / H - 1], dim=-1)       # [B, H*W, 2]
    grid = grid.reshape(B, H, W, 2).to(images.dtype)
    return grid_sample2d(images, grid)


def _luma_axis(ref: torch.Tensor) -> torch.Tensor:
    """[4] luma axis v = (1, 1, 1, 0) / sqrt(3)."""
    axis = torch.full([4], 1.0 / math.sqrt(3), dtype=ref.dtype, device=ref.device)   # no host copy (graph safe)
    return torch.cat([axis[:3], torch.zeros_like(axis[3:])])


def apply_color_matrix(images: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """images [B, C, H, W] (C = 3, or 1 = luma only), mat [B, 4, 4] acting on homogeneous RGB."""
    mat = mat.to(images.dtype)
    if images.shape[1] == 3:
        return torch.einsum("bij,bjhw->bihw", mat[:, :3, :3], images) + mat[:, :3, 3, None, None]
    if images.shape[1] == 1:
        gain = mat[:, :3, :3].mean(dim=1).sum(dim=1)  # [B] response of the mean channel to a grey input
        return images * gain[:, None, None, None] + mat[:, :3, 3].mean(dim=1)[:, None, None, None]
    raise UserError(f"Colour augmentation needs 1- or 3-channel images, got {images.shape[1]} channels: "
                    "use an augment pipe without the color group.")


# ----------------------------------------------------------------------------------------------------------------------

@persistent_class
class AugmentPipe(nn.Module):
    """Crop to P x P plus fixed flips or ADA augmentations; p is a 0-dim float32 buffer (see module docstring)."""

    def __init__(self,
                 mode: str = "fixed",           # "fixed" (crop + flip), "ada" (crop + blit/geom/color), "noaug".
                 patch_size: int = 32,          # Output size P (= the discriminator resolution).
                 xflip: float = 1.0,            # Strength (probability multiplier) of x-flips.
                 rotate90: float = 1.0,         # ADA blit: rotations by multiples of 90 degrees.
                 xint: float = 1.0,             # ADA blit: integer translation.
                 scale: float = 1.0,            # ADA geom: isotropic scaling.
                 rotate: float = 1.0,           # ADA geom: arbitrary rotation.
                 aniso: float = 1.0,            # ADA geom: anisotropic scaling.
                 xfrac: float = 1.0,            # ADA geom: fractional translation.
                 brightness: float = 1.0,       # ADA color: brightness.
                 contrast: float = 1.0,         # ADA color: contrast.
                 lumaflip: float = 1.0,         # ADA color: luma flip.
                 hue: float = 1.0,              # ADA color: hue rotation.
                 saturation: float = 1.0,       # ADA color: saturation.
                 xint_max: float = 0.125,       # Integer translation range, fraction of the image size.
                 scale_std: float = 0.2,        # log2 std of isotropic scaling.
                 rotate_max: float = 1.0,       # Rotation range, fraction of a half turn.
                 aniso_std: float = 0.2,        # log2 std of anisotropic scaling.
                 xfrac_std: float = 0.125,      # Fractional translation std, fraction of the image size.
                 brightness_std: float = 0.2,   # Std of the brightness offset.
                 contrast_std: float = 0.5,     # log2 std of the contrast gain.
                 hue_max: float = 1.0,          # Hue rotation range, fraction of a half turn.
                 saturation_std: float = 1.0,   # log2 std of the saturation gain.
                 p: float | None = None,        # Initial probability; None = 0.5 for "fixed", 0 otherwise.
                 max_spacing: float = 1.0,      # Reals' windows: 1 = full-resolution crops; > 1 random-scale patches.
                 ) -> None:
        super().__init__()
        if mode not in MODES:
            raise UserError(f"Unknown augmentation mode '{mode}': use one of {', '.join(MODES)}.")
        if int(patch_size) != patch_size or patch_size < 1:
            raise UserError(f"patch_size must be a positive integer, got {patch_size}.")
        strengths = dict(xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate, aniso=aniso,
                         xfrac=xfrac, brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue,
                         saturation=saturation)
        bad = [k for k, v in strengths.items() if v < 0]
        if bad:
            raise UserError(f"Augmentation strengths must be >= 0 (got negative {', '.join(bad)}).")
        if p is None:
            p = 0.5 if mode == "fixed" else 0.0
        if p < 0:
            raise UserError(f"The augmentation probability p must be >= 0, got {p}.")
        if not max_spacing >= 1.0:
            raise UserError(f"max_spacing must be >= 1 (1 = full-resolution crops), got {max_spacing}.")
        self.mode, self.patch_size, self.max_spacing = mode, int(patch_size), float(max_spacing)
        self.strengths = {k: float(v) for k, v in strengths.items()}
        self.ranges = dict(xint_max=float(xint_max), scale_std=float(scale_std), rotate_max=float(rotate_max),
                           aniso_std=float(aniso_std), xfrac_std=float(xfrac_std),
                           brightness_std=float(brightness_std), contrast_std=float(contrast_std),
                           hue_max=float(hue_max), saturation_std=float(saturation_std))
        self.register_buffer("p", torch.tensor(float(p), dtype=torch.float32))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images [B, C, H, W] (reals: H = W >= P; fakes: P x P) -> [B, C, P, P]."""
        B, C, H, W = images.shape
        P = self.patch_size
        if H != W or H < P:
            raise ValueError(f"AugmentPipe expects square images of at least {P}x{P}, got {H}x{W}")
        x = images
        if H > P:   # the law of G's windows (loss.run_G): [B, 2] starts, or [B, 3] random-scale windows
            windows = sample_windows(B, H, P, generator=generator, device=images.device,
                                     max_spacing=self.max_spacing).to(images.device)
            x = sample_patches(x, windows, P) if windows.shape[1] == 3 else crop_patches(x, windows, P)
        if self.mode == "fixed":
            x = self._fixed_flip(x, generator)
        elif self.mode == "ada":
            x = self._ada(x, generator)
        return x

    @torch.no_grad()
    def ada_update(self, sign_real_mean: torch.Tensor, num_images: int, target: float = 0.6,
                   ada_kimg: float = 500) -> None:
        """p <- max(p + sign(r_t - target) * num_images / (ada_kimg * 1000), 0), on p's device (no host sync).

        sign_real_mean: r_t = E[sign(D(real))] over the images seen since the last update (0-dim tensor or float).
        """
        if self.mode != "ada":
            raise RuntimeError(f"ada_update() called on an AugmentPipe in '{self.mode}' mode; only 'ada' adapts p")
        rt = torch.as_tensor(sign_real_mean, dtype=torch.float32).to(self.p.device)
        adjust = torch.sign(rt - target) * (num_images / (ada_kimg * 1000))
        self.p.copy_((self.p + adjust).clamp(min=0).reshape(()))

    def _fixed_flip(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Mirror each image with probability xflip * p * 0.5."""
        if self.strengths["xflip"] == 0:
            return x
        B = x.shape[0]
        coin = _draw("coin", [B], generator, x.device)
        flip = _gate(coin, 0, self.p * self.strengths["xflip"], generator).bool()  # [B]
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def _ada(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        s = self.strengths
        if any(s[k] > 0 for k in (*_BLIT, *_GEOM)):
            x = affine_resample(x, self._geometric_matrix(x, generator))
        if any(s[k] > 0 for k in _COLOR):
            x = apply_color_matrix(x, self._color_matrix(x, generator))
        return x

    def _geometric_matrix(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[B, 3, 3] inverse transform (output -> input pixel coordinates), composed in ADA order."""
        B, _, H, W = x.shape
        s, r, p, dev = self.strengths, self.ranges, self.p, x.device
        m = torch.eye(3, device=dev).repeat(B, 1, 1)  # [B, 3, 3]
        if s["xflip"] > 0:
            i = _gate(_draw("coin", [B], generator, dev).float(), 0, p * s["xflip"], generator)
            m = m @ scale2d(1 - 2 * i, torch.ones_like(i))
        if s["rotate90"] > 0:
            i = _gate(_draw("quarter", [B], generator, dev).float(), 0, p * s["rotate90"], generator)
            m = m @ rotate2d(-i * (math.pi / 2))
        if s["xint"] > 0:
            t = (_draw("rand", [B, 2], generator, dev) * 2 - 1) * r["xint_max"]
            t = _gate(t, 0, p * s["xint"], generator)
            m = m @ translate2d(-torch.round(t[:, 0] * W), -torch.round(t[:, 1] * H))
        if s["scale"] > 0:
            k = _gate(torch.exp2(_draw("randn", [B], generator, dev) * r["scale_std"]), 1, p * s["scale"], generator)
            m = m @ scale2d(1 / k, 1 / k)
        p_rot = 1 - torch.sqrt((1 - p * s["rotate"]).clamp(0, 1))  # two rotations: total probability p * rotate
        if s["rotate"] > 0:
            theta = _gate((_draw("rand", [B], generator, dev) * 2 - 1) * math.pi * r["rotate_max"], 0, p_rot, generator)
            m = m @ rotate2d(-theta)
        if s["aniso"] > 0:
            k = _gate(torch.exp2(_draw("randn", [B], generator, dev) * r["aniso_std"]), 1, p * s["aniso"], generator)
            m = m @ scale2d(1 / k, k)
        if s["rotate"] > 0:
            theta = _gate((_draw("rand", [B], generator, dev) * 2 - 1) * math.pi * r["rotate_max"], 0, p_rot, generator)
            m = m @ rotate2d(-theta)
        if s["xfrac"] > 0:
            t = _gate(_draw("randn", [B, 2], generator, dev) * r["xfrac_std"], 0, p * s["xfrac"], generator)
            m = m @ translate2d(-t[:, 0] * W, -t[:, 1] * H)
        return m

    def _color_matrix(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """[B, 4, 4] colour transform on homogeneous RGB, composed in ADA order (each new step applied last)."""
        B, dev = x.shape[0], x.device
        s, r, p = self.strengths, self.ranges, self.p
        eye = torch.eye(4, device=dev)
        c = eye.repeat(B, 1, 1)                      # [B, 4, 4]
        v = _luma_axis(c)                            # [4]
        vv = torch.outer(v, v)                       # [4, 4]
        if s["brightness"] > 0:
            b = _gate(_draw("randn", [B], generator, dev) * r["brightness_std"], 0, p * s["brightness"], generator)
            c = translate3d(b, b, b) @ c
        if s["contrast"] > 0:
            k = _gate(torch.exp2(_draw("randn", [B], generator, dev) * r["contrast_std"]), 1, p * s["contrast"],
                      generator)
            c = scale3d(k, k, k) @ c
        if s["lumaflip"] > 0:
            i = _gate(_draw("coin", [B], generator, dev).float(), 0, p * s["lumaflip"], generator)
            c = (eye - 2 * vv * i[:, None, None]) @ c
        if s["hue"] > 0:
            theta = _gate((_draw("rand", [B], generator, dev) * 2 - 1) * math.pi * r["hue_max"], 0, p * s["hue"],
                          generator)
            c = rotate3d(v[:3], theta) @ c
        if s["saturation"] > 0:
            k = _gate(torch.exp2(_draw("randn", [B], generator, dev) * r["saturation_std"]), 1,
                      p * s["saturation"], generator)
            c = (vv + (eye - vv) * k[:, None, None]) @ c
        return c

    def extra_repr(self) -> str:
        return f"mode={self.mode}, patch_size={self.patch_size}, max_spacing={self.max_spacing:g}"


def translate3d(tx: torch.Tensor, ty: torch.Tensor, tz: torch.Tensor) -> torch.Tensor:
    """[B, 4, 4] translation of homogeneous RGB."""
    return _mat3([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], tx)


def scale3d(sx: torch.Tensor, sy: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """[B, 4, 4] per-channel scaling of homogeneous RGB."""
    return _mat3([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], sx)


def rotate3d(axis: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """[B, 4, 4] rotation of RGB by theta [B] radians about the unit `axis` [3] (Rodrigues' formula)."""
    a = axis.to(theta.dtype)
    z = torch.zeros_like(a[0])
    cross = torch.stack([torch.stack([z, -a[2], a[1]]), torch.stack([a[2], z, -a[0]]),
                         torch.stack([-a[1], a[0], z])])  # [3, 3]: cross @ u = axis x u
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    rot = c * torch.eye(3, dtype=theta.dtype, device=theta.device) + s * cross + (1 - c) * torch.outer(a, a)
    rot = torch.cat([rot, torch.zeros_like(rot[:, :, :1])], dim=2)               # [B, 3, 4]
    last = torch.zeros_like(rot[:, :1, :])                                         # [B, 1, 4]
    last[:, :, 3] = 1.0
    return torch.cat([rot, last], dim=1)                                           # [B, 4, 4]
