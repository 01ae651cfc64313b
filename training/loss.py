"""The GAN objective and its optimisation helpers: non-saturating logistic loss with lazy R1, optimisers with the
lazy-regularisation lr/beta rescaling, EMA of G, and a device-side gradient guard (fp16 loss scaling + non-finite
counting) that never syncs with the host.

Phases (the authors' StyleGAN2-ADA-style loop): Gmain softplus(-D(aug(G(z)))); Dmain softplus(D(aug(G(z)))) +
softplus(-D(aug(x))); Dreg every `d_reg_interval` D steps: gamma/2 * ||dD(aug(x))/dx||^2 w.r.t. the full-resolution
real before augmentation, times the interval. The empty Greg phase of the reference is dropped, its lr/beta scaling is kept.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F

from torch_utils import backend, training_stats


def lazy_reg_hparams(lr: float, beta1: float, beta2: float, reg_interval: int | None) -> tuple[float, tuple[float, float]]:
    """Adam lr and betas rescaled for lazy regularisation: k = interval / (interval + 1); lr*k, beta**k."""
    if not reg_interval:
        return lr, (beta1, beta2)
    k = reg_interval / (reg_interval + 1)
    return lr * k, (beta1 ** k, beta2 ** k)


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], eps: float,
                   device: torch.device) -> torch.optim.Adam:
    """Fused Adam (on CUDA also capturable, so it can live inside a CUDA graph); foreach Adam where this PyTorch has
    no fused Adam for the device. The fused one can skip a step on the device (GradGuard.attach)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True, capturable=device.type == "cuda")
    except RuntimeError:
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

    dynamic=True (fp16): the loss is multiplied by `scale`; after backward one multi-tensor kernel unscales the
    gradients and flags non-finite values (`found_inf`); a flagged step is skipped and the scale halves; after
    `growth_interval` clean steps it doubles. The skip: an optimiser bound with `attach` (fused Adam) reads
    `found_inf` and leaves weights and moments untouched on the device; without one, all gradients are zeroed (with
    beta1 = 0 Adam then leaves the weights unchanged).
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
        self.found_inf = torch.zeros([], dtype=torch.float32, device=device)   # 1.0: this step had non-finite grads
        self.optimizer: torch.optim.Optimizer | None = None

    def attach(self, optimizer: torch.optim.Optimizer) -> bool:
        """Let `optimizer` skip flagged steps itself (fused Adam reads `found_inf`); dynamic mode only.
        Returns whether it was attached (optimisers without device-side skipping get zeroed gradients instead)."""
        if not (self.dynamic and getattr(optimizer, "_step_supports_amp_scaling", False)):
            return False
        self.optimizer = optimizer
        self.bind()
        return True

    def bind(self) -> None:
        """Point the attached optimiser's skip flag at this guard (several guards may share one optimiser, e.g. the
        Dmain and R1 phases of D: each binds before its own optimiser step)."""
        if self.optimizer is not None:
            self.optimizer.found_inf = self.found_inf

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.dynamic else loss

    @torch.no_grad()
    def unscale_and_check(self) -> torch.Tensor:
        """Unscale, detect and handle non-finite gradients; returns `bad` (0-dim bool on device)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            self.found_inf.zero_()
            return torch.zeros([], dtype=torch.bool, device=self.scale.device)
        if self.dynamic:
            self.found_inf.zero_()
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self.scale.reciprocal())
            bad = self.found_inf > 0
            if self.optimizer is None:
                keep = (~bad).to(grads[0].dtype)
                for g in grads:
                    torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0).mul_(keep)
            self._update_scale(bad)
            return bad
        norms = torch.stack(torch._foreach_norm(grads))                         # [num_params]
        bad = ~torch.isfinite(norms).all()
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
    """`torch.compile(fn)` (a module or a function) that falls back to the eager `fn`, once and with one printed line,
    if compiling or running the compiled code fails (e.g. no Triton or no C compiler on the machine). The eager `fn`
    is the reference path; both share the same parameters."""

    def __init__(self, module, name: str | None = None) -> None:
        self.module = module
        self.name = name or type(module).__name__
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
                print(f"torch.compile of {self.name} failed ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); continuing with the eager code.",
                      flush=True)
        return self.module(*args, **kwargs)


def pair_batches(a: torch.Tensor, b: torch.Tensor, group: int) -> torch.Tensor:
    """Interleave a, b [n, ...] into [2n, ...] so that strided minibatch-stddev groups (sample i in group i mod
    (N / group)) of the 2n batch are exactly a's groups and b's groups: index g*2k + s*k + j holds (a, b)[s][g*k + j],
    k = n / group."""
    n = a.shape[0]
    k = n // group
    return torch.stack([a.reshape(group, k, *a.shape[1:]), b.reshape(group, k, *b.shape[1:])], dim=1) \
        .reshape(2 * n, *a.shape[1:])


def unpair_batches(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of pair_batches: [2n, ...] -> (a [n, ...], b [n, ...])."""
    n = x.shape[0] // 2
    y = x.reshape(group, 2, n // group, *x.shape[1:])
    return y[:, 0].reshape(n, *x.shape[1:]), y[:, 1].reshape(n, *x.shape[1:])


class HyperNeRFGANLoss:
    """Loss terms of the three phases. Every phase draws its own z, poses and windows from `generator`."""

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, augment_pipe: torch.nn.Module | None,
                 patch_size: int, r1_gamma: float, generator: torch.Generator | None = None,
                 g_dtype: torch.dtype | None = None, d_dtype: torch.dtype | None = None,
                 d_channels_last: bool = False, compile_d: bool = False, compile_g: bool = False,
                 r1_dtype: torch.dtype | None = None, max_spacing: float = 1.0, fakes_mlp: str = "torch",
                 r1_fir: str | None = None, patch_law=None, d_patch_cond: bool = False) -> None:
        self.G, self.D, self.augment_pipe = G, D, augment_pipe
        # Whole-object training (training/patch_scale.py): a PatchScaleLaw draws the windows of fakes and reals (None:
        # the reference path, windows drawn by G.sample_windows and the augment pipe); d_patch_cond: D is told each
        # patch's window features.
        self.patch_law, self.d_patch_cond = patch_law, d_patch_cond
        self.patch_size = patch_size
        self.max_spacing = max_spacing   # > 1: random-scale windows (config patch_max_spacing), reals alike
        self.r1_gamma = r1_gamma
        self.generator = generator
        self.g_dtype = g_dtype      # autocast dtype of the G MLP (None = fp32); compositing stays fp32 inside G
        self.d_dtype = d_dtype      # D mp_dtype (None = fp32)
        self.r1_dtype = r1_dtype    # D mp_dtype of the R1 phase (None = fp32)
        self.fakes_mlp = fakes_mlp  # 'fused': Dmain's no-grad fakes through the fused render kernel (resolved)
        self.r1_fir = r1_fir        # D's FIR implementation in the R1 phase (None: the backend's first-order one)
        self.d_channels_last = d_channels_last   # D's blocks in NHWC, in every phase
        # torch.compile'd D for the first-order phases (fuses bias/lrelu/gain/clamp around every conv). R1 needs a
        # double backward, which compiled graphs do not support, so dreg always runs the eager D (same parameters).
        self.D_first_order = CompiledWithFallback(D) if compile_d else D
        # G's rendering (mapping, FMM weights, rays, encoding, MLP, compositing) as one compiled function of tensors:
        # every random draw happens before it (run_G), so no torch.Generator enters the compiled code.
        self._render = CompiledWithFallback(self._render_eager, "G") if compile_g else self._render_eager

    def _device(self) -> torch.device:
        return next(self.G.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.g_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device().type, dtype=self.g_dtype)

    def run_G(self, n: int, update_w_avg: bool = False, mlp: str = "torch",
              return_windows: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Render n fake P x P patches with fresh z, poses and windows; training noise on. -> [n, 3, P, P] fp32.

        Draw order from the generator: z, poses, windows, stratified offsets, density noise (the order G.forward
        would draw them in), so the result equals G(z, ..., generator=gen) exactly. mlp: 'fused' evaluates the NeRF
        MLP with the fused forward-only kernel (where the backend chose it for Dmain's fakes; no-grad renders only).
        With a patch-scale law the windows come from it (same place in the draw order). return_windows: also return
        the windows ([n, 2] int64 or [n, 3] float32).
        """
        gen, dev = self.generator, self._device()
        z = self.G.sample_z(n, generator=gen, device=dev)                               # [n, z_dim]
        c2w = self.G.sample_poses(n, generator=gen, device=dev)                         # [n, 4, 4]
        if self.patch_law is not None:
            window = self.patch_law.sample(n, generator=gen, device=dev).to(dev)        # [n, 2] or [n, 3]
        else:
            scale = {"max_spacing": self.max_spacing} if self.max_spacing > 1 else {}   # G-like stand-ins too
            window = self.G.sample_windows(n, self.patch_size, generator=gen, device=dev, **scale)  # [n, 2] / [n, 3]
        u, noise = self.G.sample_randomness(n, self.patch_size, generator=gen, device=dev)  # [n, P*P, S] each
        img = self._render(z, c2w, window, u, noise, update_w_avg, mlp)                 # [n, 3, P, P]
        return (img, window) if return_windows else img

    def _render_eager(self, z: torch.Tensor, c2w: torch.Tensor, window: torch.Tensor, u: torch.Tensor | None,
                      noise: torch.Tensor | None, update_w_avg: bool, mlp: str = "torch") -> torch.Tensor:
        """G's perturbed patch render from pre-drawn randomness (a pure function of tensors, compilable)."""
        extra = {"mlp": mlp} if hasattr(self.G, "render_mlp") else {}     # G-like stand-ins have one MLP path
        with self._autocast():
            img = self.G(z, c2w, window=window, patch_size=self.patch_size, perturb=True,
                         update_w_avg=update_w_avg, randomness=(u, noise), **extra)
        return img.float()

    def augment(self, img: torch.Tensor) -> torch.Tensor:
        """The augment pipe (crops reals larger than P; identity without a pipe). [n, 3, H, W] -> [n, 3, P, P]."""
        if self.augment_pipe is not None:
            img = self.augment_pipe(img, generator=self.generator)
        return img

    def augment_real(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reals [n, 3, H, W] -> (augmented patches [n, 3, P, P], their windows or None). With a patch-scale law the
        window comes from it and the real is resampled there (anti-aliased, training.patch_scale.resample_patches)
        before the augment pipe; without one the pipe crops as in the reference and no window is returned."""
        if self.patch_law is None:
            return self.augment(img), None
        from training.augment import crop_patches
        from training.patch_scale import resample_patches
        window = self.patch_law.sample(img.shape[0], generator=self.generator, device=img.device).to(img.device)
        patch = (crop_patches(img, window, self.patch_size) if window.shape[1] == 2
                 else resample_patches(img, window, self.patch_size))                  # [n, 3, P, P]
        return self.augment(patch), window

    def report_windows(self, window: torch.Tensor) -> None:
        """stats.jsonl / TensorBoard: the scales D judges (mean, std), the law's parameter now, and the fractions of
        patches in each quarter of [s_min, 1] (quarter3: the largest, near-whole-frame patches)."""
        from training.patch_scale import scale_histogram
        scales = self.patch_law.scale_of(window)                                        # [n]
        training_stats.report("PatchScale/scale", scales)
        training_stats.report("PatchScale/param", self.patch_law.param(window.device))
        for i, frac in enumerate(scale_histogram(scales, self.patch_law.s_min).unbind(0)):
            training_stats.report(f"PatchScale/quarter{i}", frac)

    def cond(self, window: torch.Tensor | None) -> torch.Tensor | None:
        """The window features a scale-aware D is told ([n, 3]), or None for an unconditioned D."""
        if not self.d_patch_cond:
            return None
        from training.patch_scale import window_features
        return window_features(window, self.G.img_resolution, self.patch_size)

    def score(self, img: torch.Tensor, double_backward: bool = False,
              patch: torch.Tensor | None = None) -> torch.Tensor:
        """D logits of augmented patches [n, 3, P, P] -> [n, 1] fp32 (the compiled D unless R1 needs the eager one).
        patch: the window features of a scale-aware D (`cond`)."""
        extra = {"channels_last": True} if self.d_channels_last else {}
        if patch is not None:
            extra["patch"] = patch
        if double_backward:
            return self.D(img, mp_dtype=self.r1_dtype, **extra).float()
        return self.D_first_order(img, mp_dtype=self.d_dtype, **extra).float()

    def run_D(self, img: torch.Tensor, double_backward: bool = False) -> torch.Tensor:
        """Augment (crops reals larger than P) and score. img: [n, 3, H, W] -> logits [n, 1] fp32."""
        return self.score(self.augment(img), double_backward)

    def _mbstd_group(self, n: int) -> int | None:
        """Group size G such that D on a pair batch built by `pair_batches` equals D on each half (None: cannot).

        D's only cross-sample op is the minibatch stddev over strided groups of min(group, N) samples; two halves of
        n samples keep their own groups in one batch of 2n when min(group, n) == min(group, 2n), i.e. n >= group.
        """
        epilogue = getattr(self.D, "b4", None)
        if epilogue is None or not hasattr(epilogue, "mbstd_group_size"):
            return None
        group = epilogue.mbstd_group_size
        if epilogue.mbstd_num_channels == 0:
            return 1
        return group if n >= group and n % group == 0 else None

    def score_pair(self, a: torch.Tensor, b: torch.Tensor, ca: torch.Tensor | None = None,
                   cb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """D logits of two batches of n patches in one D call when that is exact, else two calls.
        ca, cb: their window features for a scale-aware D. -> ([n, 1], [n, 1])."""
        n = a.shape[0]
        group = self._mbstd_group(n) if b.shape[0] == n else None
        if group is None:
            return self.score(a, patch=ca), self.score(b, patch=cb)
        cond = None if ca is None else pair_batches(ca, cb, group)                      # [2n, F]
        logits = self.score(pair_batches(a, b, group), patch=cond)                      # [2n, 1]
        return unpair_batches(logits, group)

    def gmain(self, n: int) -> torch.Tensor:
        """Non-saturating G loss (mean over n fakes)."""
        fake, window = self.run_G(n, update_w_avg=True, return_windows=True)            # [n, 3, P, P]
        logits = self.score(self.augment(fake), patch=self.cond(window))                # [n, 1]
        loss = F.softplus(-logits)
        training_stats.report("Loss/scores/fake", logits)
        training_stats.report("Loss/signs/fake", logits.sign())
        training_stats.report("Loss/G/loss", loss)
        return loss.mean()

    def dmain(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D loss on fresh fakes and the reals. real: [n, 3, H, W] in [-1, 1]. Returns (loss, sum of sign(D(real)))."""
        with torch.no_grad():
            fake, fake_window = self.run_G(real.shape[0], mlp=self.fakes_mlp, return_windows=True)
        # Augment fakes then reals (the draw order of two run_D calls), then score both in one D call where exact.
        fake_aug = self.augment(fake)
        real_aug, real_window = self.augment_real(real)
        if real_window is not None:
            self.report_windows(torch.cat([fake_window.to(real_window.dtype), real_window]))
        fake_logits, real_logits = self.score_pair(fake_aug, real_aug, self.cond(fake_window),
                                                   self.cond(real_window))             # [n, 1] each
        loss = F.softplus(fake_logits) + F.softplus(-real_logits)
        training_stats.report("Loss/scores/fake", fake_logits)
        training_stats.report("Loss/scores/real", real_logits)
        training_stats.report("Loss/signs/real", real_logits.sign())
        training_stats.report("Loss/D/loss", loss)
        return loss.mean(), real_logits.detach().sign().sum()

    def _r1_backend(self) -> contextlib.AbstractContextManager:
        """The backend's selection with the R1 phase's FIR form (unchanged where r1_fir is None)."""
        if self.r1_fir is None:
            return contextlib.nullcontext()
        return backend.use(backend.current().replace(fir=self.r1_fir))

    def dreg(self, real: torch.Tensor, gain: float) -> torch.Tensor:
        """Lazy R1: gain * gamma/2 * ||dD(aug(x))/dx||^2 w.r.t. the full-res real x [n, 3, H, W] (before augment)."""
        x = real.detach().requires_grad_(True)
        with self._r1_backend():                                # the forward picks the FIR's derivatives too
            patch, window = self.augment_real(x)
            logits = self.score(patch, double_backward=True, patch=self.cond(window))   # [n, 1]
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)               # [n, 3, H, W]
        penalty = grad.float().square().sum(dim=[1, 2, 3])                              # [n]
        loss = penalty * (self.r1_gamma / 2) * gain
        training_stats.report("Loss/r1_penalty", penalty)
        training_stats.report("Loss/D/reg", loss)
        return loss.mean()
