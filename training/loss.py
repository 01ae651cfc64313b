"""The GAN objective and its optimisation helpers: non-saturating logistic loss with lazy R1, optimisers with the
lazy-regularisation lr/beta rescaling, EMA of G, and a device-side gradient guard (fp16 loss scaling + non-finite
counting) that never syncs with the host.

Phases (REFERENCE.md 5.2): Gmain softplus(-D(aug(G(z)))); Dmain softplus(D(aug(G(z)))) + softplus(-D(aug(x)));
Dreg every `d_reg_interval` D steps: gamma/2 * ||dD(aug(x))/dx||^2 w.r.t. the full-resolution real before
augmentation, times the interval. The empty Greg phase of the reference is dropped, its lr/beta scaling is kept.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F

from torch_utils import training_stats


def lazy_reg_hparams(lr: float, beta1: float, beta2: float, reg_interval: int | None) -> tuple[float, tuple[float, float]]:
    """Adam lr and betas rescaled for lazy regularisation: k = interval / (interval + 1); lr*k, beta**k."""
    if not reg_interval:
        return lr, (beta1, beta2)
    k = reg_interval / (reg_interval + 1)
    return lr * k, (beta1 ** k, beta2 ** k)


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], eps: float,
                   device: torch.device) -> torch.optim.Adam:
    """Adam; fused on CUDA (capturable, so it can live inside a CUDA graph), foreach on CPU."""
    params = list(params)
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True, capturable=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, foreach=True)


def ema_beta(batch: int, cur_nimg: torch.Tensor, ema_kimg: float, ema_rampup: float) -> torch.Tensor:
    """beta = 0.5 ** (batch / ema_nimg), ema_nimg = min(ema_kimg * 1000, rampup * cur_nimg); on cur_nimg's device."""
    ema_nimg = torch.full_like(cur_nimg, ema_kimg * 1000.0, dtype=torch.float64)
    if ema_rampup > 0:
        ema_nimg = torch.minimum(ema_nimg, cur_nimg.to(torch.float64) * ema_rampup)
    return torch.pow(0.5, batch / ema_nimg.clamp_min(1e-8)).to(torch.float32)


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: torch.Tensor) -> None:
    """theta_ema <- theta + beta * (theta_ema - theta) for parameters (one foreach lerp); buffers are copied."""
    ema_params = list(G_ema.parameters())
    src_params = list(G.parameters())
    # ema += (1 - beta) * (src - ema) with a device-tensor weight: no host sync, so it can run inside a CUDA graph.
    diff = torch._foreach_sub(src_params, ema_params)
    torch._foreach_mul_(diff, (1.0 - beta).to(ema_params[0].device))
    torch._foreach_add_(ema_params, diff)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


class GradGuard:
    """Per-optimiser gradient guard, entirely on device.

    dynamic=True (fp16): the loss is multiplied by `scale`; after backward the gradients are unscaled, and a step with
    any non-finite gradient is skipped (all gradients zeroed: with beta1 = 0 Adam then leaves the weights unchanged),
    the scale halves; after `growth_interval` clean steps it doubles.
    dynamic=False: gradients are sanitised like the reference (nan -> 0, +-inf -> +-1e5). Either way the bad step is
    reported and returned as a 0-dim bool tensor so the caller can count it.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], device: torch.device, dynamic: bool = False,
                 init_scale: float = 2.0 ** 15, growth_interval: int = 1000) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.dynamic = dynamic
        self.growth_interval = growth_interval
        self.scale = torch.tensor(init_scale if dynamic else 1.0, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros([], dtype=torch.int64, device=device)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.dynamic else loss

    @torch.no_grad()
    def unscale_and_check(self) -> torch.Tensor:
        """Unscale, detect and handle non-finite gradients; returns `bad` (0-dim bool on device)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros([], dtype=torch.bool, device=self.scale.device)
        if self.dynamic:
            torch._foreach_mul_(grads, (1.0 / self.scale).to(grads[0].dtype))
        norms = torch.stack(torch._foreach_norm(grads))                         # [num_params]
        bad = ~torch.isfinite(norms).all()
        if self.dynamic:
            keep = (~bad).to(grads[0].dtype)
            for g in grads:
                torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0).mul_(keep)
            self._update_scale(bad)
        else:
            for g in grads:
                torch.nan_to_num_(g, nan=0.0, posinf=1e5, neginf=-1e5)
        return bad

    def _update_scale(self, bad: torch.Tensor) -> None:
        grown = self.growth_tracker + 1
        grow = (~bad) & (grown >= self.growth_interval)
        factor = torch.where(bad, 0.5, torch.where(grow, 2.0, 1.0)).to(self.scale.dtype)
        self.scale.mul_(factor)
        self.growth_tracker.copy_(torch.where(bad | grow, torch.zeros_like(grown), grown))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scale": self.scale.detach().cpu().clone(), "growth_tracker": self.growth_tracker.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.scale.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])


class CompiledWithFallback:
    """`torch.compile(module)` that falls back to the eager module, once and with one printed line, if compiling or
    running the compiled code fails (e.g. no Triton or no C compiler on the machine). The eager module is the
    reference path; both share the same parameters."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.compiled = torch.compile(module, dynamic=False)
        self.failed = False

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure; real errors recur in the eager call
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    raise
                self.failed = True
                print(f"torch.compile of {type(self.module).__name__} failed ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); continuing with the eager module.",
                      flush=True)
        return self.module(*args, **kwargs)


class HyperNeRFGANLoss:
    """Loss terms of the three phases. Every phase draws its own z, poses and windows from `generator`."""

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, augment_pipe: torch.nn.Module | None,
                 patch_size: int, r1_gamma: float, generator: torch.Generator | None = None,
                 g_dtype: torch.dtype | None = None, d_dtype: torch.dtype | None = None,
                 d_channels_last: bool = False, compile_d: bool = False) -> None:
        self.G, self.D, self.augment_pipe = G, D, augment_pipe
        self.patch_size = patch_size
        self.r1_gamma = r1_gamma
        self.generator = generator
        self.g_dtype = g_dtype      # autocast dtype of the G MLP (None = fp32); compositing stays fp32 inside G
        self.d_dtype = d_dtype      # D mp_dtype (None = fp32)
        self.d_channels_last = d_channels_last
        # torch.compile'd D for the first-order phases (fuses bias/lrelu/gain/clamp around every conv). R1 needs a
        # double backward, which compiled graphs do not support, so dreg always runs the eager D (same parameters).
        self.D_first_order = CompiledWithFallback(D) if compile_d else D

    def _device(self) -> torch.device:
        return next(self.G.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.g_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device().type, dtype=self.g_dtype)

    def run_G(self, n: int, update_w_avg: bool = False) -> torch.Tensor:
        """Render n fake P x P patches with fresh z, poses and windows; training noise on. -> [n, 3, P, P] fp32."""
        gen, dev = self.generator, self._device()
        z = self.G.sample_z(n, generator=gen, device=dev)                               # [n, z_dim]
        c2w = self.G.sample_poses(n, generator=gen, device=dev)                         # [n, 4, 4]
        window = self.G.sample_windows(n, self.patch_size, generator=gen, device=dev)   # [n, 2]
        with self._autocast():
            img = self.G(z, c2w, window=window, patch_size=self.patch_size, perturb=True, generator=gen,
                         update_w_avg=update_w_avg)
        return img.float()                                                              # [n, 3, P, P]

    def run_D(self, img: torch.Tensor, double_backward: bool = False) -> torch.Tensor:
        """Augment (crops reals larger than P) and score. img: [n, 3, H, W] -> logits [n, 1] fp32."""
        if self.augment_pipe is not None:
            img = self.augment_pipe(img, generator=self.generator)
        extra = {"channels_last": True} if self.d_channels_last else {}
        D = self.D if double_backward else self.D_first_order
        return D(img, mp_dtype=self.d_dtype, **extra).float()

    def gmain(self, n: int) -> torch.Tensor:
        """Non-saturating G loss (mean over n fakes)."""
        logits = self.run_D(self.run_G(n, update_w_avg=True))                           # [n, 1]
        loss = F.softplus(-logits)
        training_stats.report("Loss/scores/fake", logits)
        training_stats.report("Loss/signs/fake", logits.sign())
        training_stats.report("Loss/G/loss", loss)
        return loss.mean()

    def dmain(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D loss on fresh fakes and the reals. real: [n, 3, H, W] in [-1, 1]. Returns (loss, sum of sign(D(real)))."""
        with torch.no_grad():
            fake = self.run_G(real.shape[0])
        fake_logits = self.run_D(fake)                                                  # [n, 1]
        real_logits = self.run_D(real)                                                  # [n, 1]
        loss = F.softplus(fake_logits) + F.softplus(-real_logits)
        training_stats.report("Loss/scores/fake", fake_logits)
        training_stats.report("Loss/scores/real", real_logits)
        training_stats.report("Loss/signs/real", real_logits.sign())
        training_stats.report("Loss/D/loss", loss)
        return loss.mean(), real_logits.detach().sign().sum()

    def dreg(self, real: torch.Tensor, gain: float) -> torch.Tensor:
        """Lazy R1: gain * gamma/2 * ||dD(aug(x))/dx||^2 w.r.t. the full-res real x [n, 3, H, W] (before augment)."""
        x = real.detach().requires_grad_(True)
        logits = self.run_D(x, double_backward=True)                                    # [n, 1]
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)               # [n, 3, H, W]
        penalty = grad.float().square().sum(dim=[1, 2, 3])                              # [n]
        loss = penalty * (self.r1_gamma / 2) * gain
        training_stats.report("Loss/r1_penalty", penalty)
        training_stats.report("Loss/D/reg", loss)
        return loss.mean()
