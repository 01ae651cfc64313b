"""One training step (`TrainStep`): Gmain, Dmain, lazy Dreg, EMA, ADA update and bad-step counting.

The step is a callable of (reals uint8 [B, C, H, W] on device, step index) that keeps every per-step quantity on
the device: no .item(), no boolean masking, static shapes, randomness from one explicit device torch.Generator.
Host-side decisions depend only on the python step index (which phases run), so a caller may capture each phase
pattern as a CUDA graph or compile it. Counters (cur_nimg, bad steps, ADA sign accumulator) are device tensors.
"""
from __future__ import annotations

from typing import Callable

import torch

from torch_utils import backend
from torch_utils import distributed as dist_utils
from torch_utils import training_stats
from training.config import TrainConfig
from training.loss import GradGuard, HyperNeRFGANLoss, ema_beta, lazy_reg_hparams, make_optimizer, update_ema


class TrainStep:
    """Owns the optimisers, gradient guards, loss and device counters of a run; `__call__` performs one step."""

    def __init__(self, cfg: TrainConfig, G: torch.nn.Module, D: torch.nn.Module, G_ema: torch.nn.Module,
                 augment_pipe: torch.nn.Module | None, device: torch.device, generator: torch.Generator,
                 world: int = 1, selection: backend.Selection | None = None) -> None:
        """selection: the backend's choices for this step (default: the current one)."""
        self.cfg, self.G, self.D, self.G_ema, self.augment_pipe = cfg, G, D, G_ema, augment_pipe
        self.device, self.generator, self.world = device, generator, world
        self.selection = sel = selection if selection is not None else backend.current()
        self.precision, dtype = backend.resolve_precision(cfg.precision, device)
        dynamic = self.precision == "fp16"
        self.G_params = [p for p in G.parameters() if p.requires_grad]
        self.D_params = [p for p in D.parameters() if p.requires_grad]
        g_lr, g_betas = lazy_reg_hparams(cfg.g_lr, cfg.beta1, cfg.beta2, cfg.g_reg_interval)
        d_lr, d_betas = lazy_reg_hparams(cfg.d_lr, cfg.beta1, cfg.beta2, cfg.d_reg_interval)
        self.opt_G = make_optimizer(self.G_params, g_lr, g_betas, cfg.eps, device)
        self.opt_D = make_optimizer(self.D_params, d_lr, d_betas, cfg.eps, device)
        self.guard_G = GradGuard(self.G_params, device, dynamic)   # fp16: dynamic loss scale from 2^15
        self.guard_D = GradGuard(self.D_params, device, dynamic)
        # The R1 phase has its own fp16 loss scale: its double backward through a sharp D overflows at scales where
        # Dmain's gradients are fine, and one shared scale would shrink until Dmain's fp16 gradients underflow.
        self.guard_Dreg = GradGuard(self.D_params, device, dynamic)
        for guard, opt in ((self.guard_G, self.opt_G), (self.guard_D, self.opt_D), (self.guard_Dreg, self.opt_D)):
            guard.attach(opt)   # fp16: fused Adam skips steps with non-finite gradients on the device
        # Whole-object training (opt-in): the patch-scale law anneals on `law_nimg`, the image count at the start of
        # the step (copied from cur_nimg on the main stream, so the side-stream EMA's count update never races it).
        from training.patch_scale import PatchScaleLaw, law_from_config
        self.law_nimg = torch.zeros([], dtype=torch.int64, device=device)
        patch_law = law_from_config(cfg, G.img_resolution, self.law_nimg)
        if patch_law is None and cfg.d_patch_cond:   # a scale-aware D with the reference crops: D needs the windows
            patch_law = PatchScaleLaw("fixed", G.img_resolution, cfg.patch_size, 0.0, 0.0, 0.0, self.law_nimg)
        cuda = device.type == "cuda"
        fakes_mlp = sel.fakes_mlp
        if fakes_mlp == "fused":                    # where this G's MLP shape is one the render kernel covers
            with backend.use(sel):
                fakes_mlp = G.render_mlp(device) if hasattr(G, "render_mlp") else "torch"
        self.loss = HyperNeRFGANLoss(G, D, augment_pipe, cfg.patch_size, cfg.r1_gamma, generator=generator,
                                     g_dtype=dtype, d_dtype=dtype, d_channels_last=sel.channels_last and cuda,
                                     compile_d=sel.compile_d and cuda, compile_g=sel.compile_g and cuda,
                                     r1_dtype=dtype, max_spacing=cfg.patch_max_spacing, fakes_mlp=fakes_mlp,
                                     r1_fir=sel.r1_fir, patch_law=patch_law, d_patch_cond=cfg.d_patch_cond)
        self.ema_stream = torch.cuda.Stream(device) if sel.ema_stream and cuda else None
        z = lambda dt=torch.int64: torch.zeros([], dtype=dt, device=device)  # noqa: E731
        self.cur_nimg = z()                      # images shown to D over all ranks
        self.bad_consec = z()                    # current run of consecutive steps with non-finite gradients
        self.bad_consec_max = z()                # longest run since the last check (reset once per tick)
        self.bad_total = z()                     # all bad steps of the run
        self.ada_acc = torch.zeros([2], dtype=torch.float32, device=device)  # [sum sign(D(real)), count]

    def _phase(self, loss: torch.Tensor, params: list, opt: torch.optim.Optimizer, guard: GradGuard) -> torch.Tensor:
        """Backward (scaled), all-reduce, unscale + check, optimiser step. Returns `bad` (0-dim bool)."""
        guard.scale_loss(loss).backward(inputs=params)
        dist_utils.all_reduce_grads(params)
        bad = guard.unscale_and_check()
        guard.bind()
        opt.step()
        return bad

    def _on_side_stream(self, stream: torch.cuda.Stream | None, work: Callable[[], None]) -> Callable[[], None]:
        """Run `work` now: in line without a stream, else on `stream` after the current stream's work so far (a CUDA
        graph captures the fork). Returns the join, which makes the current stream wait for it."""
        if stream is None:
            work()
            return lambda: None
        main = torch.cuda.current_stream(self.device)
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            work()
        return lambda: main.wait_stream(stream)

    def is_reg_step(self, step_idx: int) -> bool:
        """Whether step `step_idx` runs the lazy R1 phase (CUDA graphs are keyed by it too)."""
        return self.cfg.r1_gamma > 0 and step_idx % self.cfg.d_reg_interval == 0    # lazy R1 every interval steps

    def gmain_phase(self, n: int) -> torch.Tensor:
        """Gmain: update G to fool D on n fresh fakes. Returns `bad` (0-dim bool).

        D's parameters do not require grad during this phase (as the reference toggles requires_grad per phase), so
        D's backward, compiled or not, computes only the input gradients that reach G, not D's weight gradients."""
        self.opt_G.zero_grad(set_to_none=True)
        frozen = [p for p in self.D_params if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            bad = self._phase(self.loss.gmain(n), self.G_params, self.opt_G, self.guard_G)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if self.world > 1:
            dist_utils.all_reduce_mean_buffers(self.G)   # w_avg tracks the global batch on every rank
        return bad

    def dmain_phase(self, real: torch.Tensor) -> torch.Tensor:
        """Dmain: logistic loss on fresh fakes and the reals (real [b, 3, H, W] in [-1, 1]). Returns `bad`."""
        self.opt_D.zero_grad(set_to_none=True)
        d_loss, sign_sum = self.loss.dmain(real)
        bad = self._phase(d_loss, self.D_params, self.opt_D, self.guard_D)
        self.ada_acc.add_(torch.stack([sign_sum.float(), torch.full_like(sign_sum, real.shape[0]).float()]))
        return bad

    def dreg_phase(self, real: torch.Tensor) -> torch.Tensor:
        """Dreg: lazy R1 on the full-resolution reals, multiplied by the interval. Returns `bad`."""
        self.opt_D.zero_grad(set_to_none=True)
        reg = self.loss.dreg(real, gain=self.cfg.d_reg_interval)
        return self._phase(reg, self.D_params, self.opt_D, self.guard_Dreg)

    def ema_phase(self) -> None:
        """Count this step's images, then move G_ema toward G (beta from the count; no host sync)."""
        cfg = self.cfg
        self.cur_nimg.add_(cfg.batch)
        update_ema(self.G_ema, self.G, ema_beta(cfg.batch, self.cur_nimg, cfg.ema_kimg, cfg.ema_rampup))

    def _start_ema(self) -> Callable[[], None]:
        """Run `ema_phase` now, on the side stream when there is one (the backend's ema_stream: it then overlaps
        Dmain, a CUDA graph captures the fork and the join). Returns the join: the current stream waits for it.
        Every tensor the side stream uses is persistent or allocated on it, so the caching allocator cannot hand
        its memory to the main stream early."""
        return self._on_side_stream(self.ema_stream, self.ema_phase)

    def __call__(self, reals: torch.Tensor, step_idx: int) -> None:
        """One step on this rank's reals (uint8 [batch_gpu, C, H, W] on device); step_idx counts from 0. The
        networks' ops run on the step's backend selection."""
        with backend.use(self.selection):
            self._step(reals, step_idx)

    def _step(self, reals: torch.Tensor, step_idx: int) -> None:
        cfg = self.cfg
        real = reals.to(torch.float32) / 127.5 - 1                                 # [b, 3, H, W] in [-1, 1]
        reg = self.is_reg_step(step_idx)
        if self.loss.patch_law is not None:
            self.law_nimg.copy_(self.cur_nimg)      # the annealing clock of this step (CUDA graphs replay the copy)
        bad = self.gmain_phase(real.shape[0])
        join_ema = self._start_ema()        # G_ema <- G while Dmain runs (Dmain and Dreg only read G)
        bad = bad | self.dmain_phase(real)
        if reg:
            bad = bad | self.dreg_phase(real)

        join_ema()
        self._count_bad(bad)

        # ADA: move p toward the target from the mean sign of D(real) over the last ada_interval steps (all ranks).
        if cfg.aug == "ada" and self.augment_pipe is not None and (step_idx + 1) % cfg.ada_interval == 0:
            acc = dist_utils.all_reduce_sum_(self.ada_acc.clone())
            self.augment_pipe.ada_update(acc[0] / acc[1].clamp_min(1), num_images=cfg.batch * cfg.ada_interval,
                                         target=cfg.ada_target, ada_kimg=cfg.ada_kimg)
            self.ada_acc.zero_()

    def _count_bad(self, bad: torch.Tensor) -> None:
        b = bad.to(torch.int64)
        self.bad_consec.mul_(b).add_(b)
        torch.maximum(self.bad_consec_max, self.bad_consec, out=self.bad_consec_max)
        self.bad_total.add_(b)
        training_stats.report("Progress/bad_step", b)
        if self.guard_G.dynamic:
            training_stats.report("Progress/loss_scale_G", self.guard_G.scale)
            training_stats.report("Progress/loss_scale_D", self.guard_D.scale)
            training_stats.report("Progress/loss_scale_Dreg", self.guard_Dreg.scale)

    def read_bad_steps(self) -> tuple[int, int]:
        """Host read (once per tick): (longest consecutive run of bad steps since the last call, total bad steps)."""
        longest, total = int(self.bad_consec_max), int(self.bad_total)
        self.bad_consec_max.copy_(self.bad_consec)
        return longest, total

    def state_dict(self) -> dict:
        return {"opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "guard_G": self.guard_G.state_dict(), "guard_D": self.guard_D.state_dict(),
                "guard_Dreg": self.guard_Dreg.state_dict(),
                "cur_nimg": self.cur_nimg.cpu().clone(), "bad_consec": self.bad_consec.cpu().clone(),
                "bad_total": self.bad_total.cpu().clone(), "ada_acc": self.ada_acc.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.guard_G.load_state_dict(state["guard_G"])
        self.guard_D.load_state_dict(state["guard_D"])
        self.guard_Dreg.load_state_dict(state.get("guard_Dreg", state["guard_D"]))   # states from before the split
        for name in ("cur_nimg", "bad_consec", "bad_total", "ada_acc"):
            getattr(self, name).copy_(state[name])
        self.bad_consec_max.copy_(self.bad_consec)
