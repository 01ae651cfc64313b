"""Loss terms (signs, lazy R1 through a crop), lr/beta rescaling, EMA, the device-side gradient guard, precision."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.augment import AugmentPipe
from training.loss import (GradGuard, HyperNeRFGANLoss, ema_beta, lazy_reg_hparams, make_optimizer, pair_batches,
                           unpair_batches, update_ema)
from torch_utils.backend import resolve_precision


class LinearD(nn.Module):
    """logit = <w, img> + b on P x P inputs."""

    def __init__(self, P):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, P, P, generator=torch.Generator().manual_seed(1)))
        self.b = nn.Parameter(torch.zeros([]))

    def forward(self, img, mp_dtype=None):
        return (img * self.w).sum(dim=[1, 2, 3])[:, None] + self.b


class TinyG(nn.Module):
    """A stand-in with the Generator sampling API: image = tanh(bias + z-independent param)."""

    def __init__(self, P):
        super().__init__()
        self.img = nn.Parameter(torch.zeros(3, P, P))

    def sample_z(self, n, generator=None, device=None):
        return torch.randn([n, 4], generator=generator, device=device)

    def sample_poses(self, n, generator=None, device=None):
        return torch.eye(4, device=device).expand(n, 4, 4)

    def sample_windows(self, n, patch_size, generator=None, device=None):
        return torch.zeros([n, 2], dtype=torch.int64, device=device)

    def sample_randomness(self, n, patch_size=None, generator=None, device=None):
        return None, None

    def forward(self, z, c2w, window=None, patch_size=None, perturb=False, generator=None, update_w_avg=False,
                randomness=None):
        return torch.tanh(self.img).expand(z.shape[0], 3, patch_size, patch_size) + 0 * z.sum()


def test_r1_of_linear_d_through_crop_is_gamma_half_norm_w():
    P, H, gamma, gain = 8, 16, 0.7, 16
    D = LinearD(P)
    loss = HyperNeRFGANLoss(TinyG(P), D, AugmentPipe(mode="noaug", patch_size=P), P, gamma,
                            generator=torch.Generator().manual_seed(0))
    real = torch.rand(3, 3, H, H) * 2 - 1
    reg = loss.dreg(real, gain=gain)
    expected = gamma / 2 * D.w.detach().square().sum() * gain
    # Sums of 3 P^2 non-negative float32 terms in two orders: relative error <= 3 P^2 eps each.
    rtol = 2 * 3 * P * P * torch.finfo(torch.float32).eps
    torch.testing.assert_close(reg.detach(), expected, rtol=rtol, atol=0)
    # The gradient w.r.t. the full-resolution real is w inside the crop window and zero outside.
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss.run_D(x).sum(), x)
    assert ((grad != 0).flatten(1).sum(1) <= 3 * P * P).all()
    torch.testing.assert_close(grad.square().sum(dim=[1, 2, 3]), D.w.detach().square().sum().expand(3), rtol=rtol,
                               atol=0)
    # R1 backpropagates into D's parameters (double backward through the crop).
    reg.backward()
    torch.testing.assert_close(D.w.grad, gamma * gain * D.w.detach(), rtol=1e-4, atol=1e-5)


def test_lazy_reg_rescaling_matches_reference():
    lr, betas = lazy_reg_hparams(0.0025, 0.0, 0.99, 4)
    assert math.isclose(lr, 0.002) and betas[0] == 0.0 and math.isclose(betas[1], 0.99 ** 0.8)
    lr, betas = lazy_reg_hparams(0.0025, 0.0, 0.99, 16)
    assert math.isclose(lr, 0.0025 * 16 / 17) and math.isclose(betas[1], 0.99 ** (16 / 17))
    assert lazy_reg_hparams(0.1, 0.5, 0.9, None) == (0.1, (0.5, 0.9))
    opt = make_optimizer([nn.Parameter(torch.zeros(2))], lr, betas, 1e-8, torch.device("cpu"))
    assert opt.param_groups[0]["betas"] == betas and opt.param_groups[0]["eps"] == 1e-8


def test_loss_signs():
    P = 4
    G, D = TinyG(P), LinearD(P)
    loss = HyperNeRFGANLoss(G, D, None, P, 1.0, generator=torch.Generator().manual_seed(0))
    fake_score = lambda: D(G(torch.zeros(2, 4), None, patch_size=P)).mean().item()  # noqa: E731
    gl = loss.gmain(2)
    torch.testing.assert_close(gl, F.softplus(-D(G(torch.zeros(2, 4), None, patch_size=P))).mean())
    before = fake_score()
    gl.backward(inputs=list(G.parameters()))
    torch.optim.SGD(G.parameters(), lr=0.1).step()
    assert fake_score() > before                     # G moves its fakes toward higher D scores
    real = torch.rand(2, 3, P, P) * 2 - 1
    d_loss, sign_sum = loss.dmain(real)
    assert sign_sum.shape == () and abs(sign_sum.item()) <= 2
    fake = G(torch.zeros(2, 4), None, patch_size=P)
    expected = (F.softplus(D(fake)) + F.softplus(-D(real))).mean()    # fakes pushed down, reals pushed up
    torch.testing.assert_close(d_loss, expected)
    assert sign_sum.item() == D(real).sign().sum().item()


def test_ema_beta_and_lerp():
    beta = ema_beta(4, torch.tensor(1_000_000), 20.0, 0.05)
    assert math.isclose(beta.item(), 0.5 ** (4 / 20000), rel_tol=1e-6)
    beta = ema_beta(4, torch.tensor(1000), 20.0, 0.05)        # ramp-up: ema_nimg = 50
    assert math.isclose(beta.item(), 0.5 ** (4 / 50), rel_tol=1e-6)
    assert math.isclose(ema_beta(4, torch.tensor(1000), 20.0, 0.0).item(), 0.5 ** (4 / 20000), rel_tol=1e-6)
    G, G_ema = nn.Linear(3, 2), nn.Linear(3, 2)
    old = [p.detach().clone() for p in G_ema.parameters()]
    b = torch.tensor(0.9)
    update_ema(G_ema, G, b)
    for pe, p, o in zip(G_ema.parameters(), G.parameters(), old):
        torch.testing.assert_close(pe, p + 0.9 * (o - p))


def _param_with_grad(values):
    p = nn.Parameter(torch.zeros(len(values)))
    p.grad = torch.tensor(values)
    return p


def test_grad_guard_sanitises_like_reference_and_counts():
    p = _param_with_grad([float("nan"), float("inf"), -float("inf"), 2.0])
    guard = GradGuard([p], torch.device("cpu"), dynamic=False)
    bad = guard.unscale_and_check()
    assert bad.item() is True
    torch.testing.assert_close(p.grad, torch.tensor([0.0, 1e5, -1e5, 2.0]))
    p.grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert guard.unscale_and_check().item() is False


def test_loss_scaler_unscales_skips_and_adapts():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    guard = GradGuard([p], torch.device("cpu"), dynamic=True, init_scale=1024.0, growth_interval=2)
    guard.scale_loss((p * torch.tensor([3.0, 5.0])).sum()).backward()
    assert guard.unscale_and_check().item() is False
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 5.0]))      # unscaled
    assert guard.scale.item() == 1024.0
    p.grad = torch.tensor([1.0, 1.0]) * guard.scale
    guard.unscale_and_check()
    assert guard.scale.item() == 2048.0                                 # grows after growth_interval clean steps
    p.grad = torch.tensor([float("inf"), 1.0])
    assert guard.unscale_and_check().item() is True
    torch.testing.assert_close(p.grad, torch.zeros(2))                  # the whole step is skipped
    assert guard.scale.item() == 1024.0 and guard.growth_tracker.item() == 0
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.0, 0.99))              # beta1 = 0: zero grads leave p unchanged
    before = p.detach().clone()
    opt.step()
    torch.testing.assert_close(p.detach(), before)
    state = guard.state_dict()
    other = GradGuard([p], torch.device("cpu"), dynamic=True, init_scale=1.0)
    other.load_state_dict(state)
    assert other.scale.item() == 1024.0


def test_attached_fused_adam_skips_a_flagged_step_on_the_device():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_optimizer([p], 0.1, (0.0, 0.99), 1e-8, torch.device("cpu"))
    guard = GradGuard([p], torch.device("cpu"), dynamic=True, init_scale=8.0)
    assert guard.attach(opt)
    assert not GradGuard([p], torch.device("cpu"), dynamic=False).attach(opt)       # fp32 never skips
    p.grad = torch.tensor([8.0, 16.0])                                                # clean: unscaled, stepped
    assert guard.unscale_and_check().item() is False
    torch.testing.assert_close(p.grad, torch.tensor([1.0, 2.0]))
    opt.step()
    after_clean = p.detach().clone()
    assert not torch.equal(after_clean, torch.tensor([1.0, -2.0]))
    moments = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.tensor([float("nan"), 1.0])                                        # bad: skipped entirely
    assert guard.unscale_and_check().item() is True and guard.found_inf.item() == 1.0
    opt.step()
    torch.testing.assert_close(p.detach(), after_clean)
    for k, v in opt.state[p].items():
        torch.testing.assert_close(v, moments[k])                                    # moments and step count too
    assert guard.scale.item() == 4.0
    p.grad = torch.tensor([4.0, 4.0])                                                 # and the next clean one runs
    assert guard.unscale_and_check().item() is False
    opt.step()
    assert not torch.equal(p.detach(), after_clean)


@pytest.mark.parametrize("n", [4, 8, 2])
def test_one_d_call_for_fakes_and_reals_equals_two(n):
    from training.networks.discriminator import Discriminator
    torch.manual_seed(0)
    D = Discriminator(16, channel_base=256, channel_max=32).double()
    a, b = torch.randn(n, 3, 16, 16, dtype=torch.float64), torch.randn(n, 3, 16, 16, dtype=torch.float64)
    group = min(4, n)
    back = unpair_batches(pair_batches(a, b, group), group)
    assert torch.equal(back[0], a) and torch.equal(back[1], b)
    loss = HyperNeRFGANLoss(Generator_small(), D, None, 16, 1.0)
    assert loss._mbstd_group(n) == (4 if n >= 4 else None)
    la, lb = loss.score_pair(a, b)
    torch.testing.assert_close(la, D(a).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(lb, D(b).float(), rtol=0, atol=1e-6)


def Generator_small():
    from training.networks.generator import Generator
    return Generator(width=16, num_layers=2, img_resolution=16, num_samples=4)


def test_g_render_from_predrawn_randomness_is_exact_and_compiles_without_graph_breaks():
    G = Generator_small()
    loss = HyperNeRFGANLoss(G, LinearD(8), None, 8, 1.0, generator=torch.Generator().manual_seed(3))
    img = loss.run_G(2)
    gen = torch.Generator().manual_seed(3)
    z, c2w = G.sample_z(2, generator=gen), G.sample_poses(2, generator=gen)
    window = G.sample_windows(2, 8, generator=gen)
    assert torch.equal(img, G(z, c2w, window=window, patch_size=8, perturb=True, generator=gen))
    u, noise = G.sample_randomness(2, 8, generator=torch.Generator().manual_seed(4))
    assert u.shape == noise.shape == (2, 64, 4)
    compiled = torch.compile(loss._render_eager, backend="aot_eager", fullgraph=True)
    ref = loss._render_eager(z, c2w, window, u, noise, False)
    out = compiled(z, c2w, window, u, noise, False)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    assert all(p.grad is not None for p in G.parameters())


def test_resolve_precision_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == ("fp32", None)
    assert resolve_precision("bf16", torch.device("cpu")) == ("bf16", torch.bfloat16)
    assert resolve_precision("fp16", torch.device("cpu")) == ("fp16", torch.float16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_g_paths_run_on_cpu(dtype):
    """The G phase under CPU autocast (bf16 and fp16) returns fp32 images and finite G gradients."""
    from training.networks.generator import Generator
    G = Generator(width=16, num_layers=2, img_resolution=16, num_samples=4)
    loss = HyperNeRFGANLoss(G, LinearD(8), None, 8, 1.0, generator=torch.Generator().manual_seed(0), g_dtype=dtype,
                            d_dtype=None)
    img = loss.run_G(2)
    assert img.dtype == torch.float32 and img.shape == (2, 3, 8, 8)
    guard = GradGuard(G.parameters(), torch.device("cpu"), dynamic=dtype == torch.float16, init_scale=256.0)
    guard.scale_loss(loss.gmain(2)).backward(inputs=list(G.parameters()))
    assert guard.unscale_and_check().item() is False
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())


def test_r1_phase_precision_is_separate_from_the_main_phases():
    """r1_dtype=None runs the R1 phase's D in fp32 while Dmain/Gmain use the 16-bit D (config r1_fp32)."""
    seen = []

    class RecordingD(LinearD):
        def forward(self, img, mp_dtype=None):
            seen.append(mp_dtype)
            return super().forward(img, mp_dtype)
    P = 4
    loss = HyperNeRFGANLoss(TinyG(P), RecordingD(P), None, P, 1.0, generator=torch.Generator().manual_seed(0),
                            d_dtype=torch.float16, r1_dtype=None)
    real = torch.rand(4, 3, P, P) * 2 - 1
    loss.dmain(real)
    assert seen and all(d == torch.float16 for d in seen)
    seen.clear()
    loss.dreg(real, gain=16)
    assert seen == [None]


def test_two_guards_share_one_fused_adam_with_separate_scales():
    """Dmain and R1 phases of D: one optimiser, two loss scales; an R1 overflow skips only the R1 step."""
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_optimizer([p], 0.1, (0.0, 0.99), 1e-8, torch.device("cpu"))
    main = GradGuard([p], torch.device("cpu"), dynamic=True, init_scale=1024.0)
    reg = GradGuard([p], torch.device("cpu"), dynamic=True, init_scale=1024.0)
    assert main.attach(opt) and reg.attach(opt)
    p.grad = torch.tensor([1024.0, 1024.0])
    assert main.unscale_and_check().item() is False
    main.bind()
    before = p.detach().clone()
    opt.step()
    assert not torch.equal(p.detach(), before)
    p.grad = torch.tensor([float("inf"), 1.0])
    assert reg.unscale_and_check().item() is True
    reg.bind()
    after_main = p.detach().clone()
    opt.step()
    torch.testing.assert_close(p.detach(), after_main)                  # the R1 step was skipped ...
    assert reg.scale.item() == 512.0 and main.scale.item() == 1024.0    # ... and only its scale halved


@pytest.mark.parametrize("fir_impl", ["pool", "depthwise", "triton", "reference"])
def test_r1_penalty_is_the_same_in_every_layout_and_fir_implementation(fir_impl):
    """D's layout and the backend's FIR forms change how the R1 phase runs, not what it computes (penalty and D
    grads)."""
    from torch_utils import backend
    from training.networks.discriminator import Discriminator
    torch.manual_seed(0)
    D = Discriminator(16, channel_base=256, channel_max=32).double()
    real = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    results = []
    for impl, d_cl in (("reference", False), (fir_impl, True), (fir_impl, False)):
        with backend.use(backend.REFERENCE.replace(fir=impl)):
            loss = HyperNeRFGANLoss(Generator_small(), D, None, 16, 1.0, d_channels_last=d_cl)
            reg = loss.dreg(real, gain=16)
        grads = torch.autograd.grad(reg, list(D.parameters()), allow_unused=True)   # R1 ignores the out bias
        results.append((reg.detach(), [torch.zeros(1) if g is None else g for g in grads]))
    # The loss's own r1_fir (the backend's r1_fir) picks the R1 phase's filter whatever the first-order one is.
    with backend.use(backend.REFERENCE.replace(fir="pool")):
        loss = HyperNeRFGANLoss(Generator_small(), D, None, 16, 1.0, r1_fir=fir_impl)
        seen = []
        D.register_forward_pre_hook(lambda *_: seen.append(backend.current().fir))
        reg = loss.dreg(real, gain=16)
        assert seen == [fir_impl] and backend.current().fir == "pool"
    grads = torch.autograd.grad(reg, list(D.parameters()), allow_unused=True)
    results.append((reg.detach(), [torch.zeros(1) if g is None else g for g in grads]))
    for reg, grads in results[1:]:
        torch.testing.assert_close(reg, results[0][0], rtol=1e-10, atol=1e-12)
        for g, r in zip(grads, results[0][1]):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12)
