"""Discriminator: shapes, dtypes, exact parameter counts, mixed precision, minibatch stddev, R1 double backward."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dnnlib.util import UserError
from torch_utils.ops.fir import fir2d_reference, make_fir_filter
from torch_utils.persistence import from_record, to_record
from training.networks.discriminator import Conv2dLayer, Discriminator, minibatch_stddev

TINY = dict(channel_base=128, channel_max=16)  # 16 channels at res <= 8: fast CPU tests


def _imgs(n: int, p: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, p, p, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _make(p: int, seed: int = 0, **kwargs) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(p, **{**TINY, **kwargs})


@pytest.mark.parametrize("p", [8, 16, 32])
@pytest.mark.parametrize("mp_dtype", [None, torch.bfloat16, torch.float16])
def test_output_shape_and_dtype(p: int, mp_dtype: torch.dtype | None):
    D = _make(p)
    assert D.block_resolutions == [2 ** i for i in range(int(math.log2(p)), 2, -1)]
    out = D(_imgs(4, p), mp_dtype=mp_dtype)
    assert out.shape == (4, 1)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_exact_parameter_counts_of_the_real_config():
    # Hand count: block = 2 * (512*512*9 + 512) + 512*512; fromRGB 3*512 + 512;
    # epilogue (513*512*9 + 512) + (8192*512 + 512) + (512 + 1).
    block = 2 * (512 * 512 * 9 + 512) + 512 * 512
    epilogue = (513 * 512 * 9 + 512) + (512 * 16 * 512 + 512) + (512 + 1)
    expected = {32: 3 * block + 2048 + epilogue, 64: 4 * block + 2048 + epilogue}
    assert expected == {32: 21_507_073, 64: 26_488_833}
    for p, count in expected.items():
        D = Discriminator(p)
        assert sum(t.numel() for t in D.parameters()) == count
        assert all(getattr(D, f"b{r}").conv0.out_channels == 512 for r in D.block_resolutions)
        assert D.fp16_resolution == 8  # every conv block runs in the mixed-precision dtype for P = 32, 64


def test_fp16_threshold_and_channels_follow_the_formulas():
    D = Discriminator(128, channel_base=2048, channel_max=64, num_fp16_res=2)
    assert D.fp16_resolution == max(2 ** (7 + 1 - 2), 8) == 64
    assert [getattr(D, f"b{r}").use_mp for r in D.block_resolutions] == [True, True, False, False, False]
    assert D.b128.conv0.out_channels == 16 and D.b16.conv1.out_channels == 64 and D.b4.fc.out_features == 64


def test_initialisation_is_equalised_lr():
    D = Discriminator(8, channel_base=512, channel_max=64)
    assert D.b8.conv0.weight_gain == pytest.approx(1 / math.sqrt(64 * 9))
    assert all(float(b.detach().abs().max()) == 0 for n, b in D.named_parameters() if n.endswith("bias"))
    assert abs(float(D.b8.conv0.weight.detach().std()) - 1.0) < 0.05
    assert D.b8.skip.bias is None


def test_bf16_close_to_fp32():
    D = _make(16)
    x = _imgs(4, 16)
    ref, mp = D(x), D(x, mp_dtype=torch.bfloat16)
    assert mp.dtype == torch.float32
    assert not torch.equal(ref, mp)  # the blocks really ran in bf16
    assert (mp - ref).abs().max() <= 0.03 * ref.abs().max() + 1e-3


def test_conv_clamp_bounds_activations():
    layer = Conv2dLayer(3, 4, 3, activation="lrelu", conv_clamp=1.0)
    y = layer(torch.randn(2, 3, 8, 8) * 100, gain=0.5)
    assert y.abs().max() <= 0.5 + 1e-6


def test_down_conv_equals_fir_then_strided_conv():
    torch.manual_seed(1)
    f = make_fir_filter().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)  # two formulations of one formula: compared in float64
    conv = Conv2dLayer(3, 5, 3, down=2).double()
    expected = F.conv2d(fir2d_reference(x, f, padding=2), conv.weight * conv.weight_gain, stride=2)
    assert torch.allclose(conv(x), expected + conv.bias.reshape(1, -1, 1, 1), rtol=0, atol=1e-12)
    skip = Conv2dLayer(3, 5, 1, bias=False, down=2).double()
    expected = F.conv2d(fir2d_reference(x, f, padding=1, down=2), skip.weight * skip.weight_gain)
    assert skip(x).shape == (2, 5, 4, 4)
    assert torch.allclose(skip(x), expected, rtol=0, atol=1e-12)


def _mbstd_naive(x: torch.Tensor, group_size: int) -> torch.Tensor:
    N = x.shape[0]
    G = min(group_size, N)
    n = N // G
    # Group i holds the samples i, i + n, i + 2n, ...
    stds = torch.stack([(x[i::n].var(dim=0, unbiased=False) + 1e-8).sqrt().mean() for i in range(n)])
    return torch.cat([x, stds[torch.arange(N) % n].reshape(N, 1, 1, 1).expand(N, 1, *x.shape[2:])], dim=1)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12])
def test_minibatch_stddev_matches_naive_groups(n: int):
    x = torch.randn(n, 6, 4, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    out = minibatch_stddev(x, group_size=4)
    assert out.shape == (n, 7, 4, 4)
    assert torch.allclose(out, _mbstd_naive(x, 4), atol=1e-12)


def test_minibatch_stddev_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible"):
        minibatch_stddev(torch.randn(6, 4, 4, 4), group_size=4)


def test_r1_double_backward_through_d():
    D = _make(16)
    x = _imgs(4, 16).requires_grad_(True)
    for mp_dtype in (None, torch.bfloat16):
        D.zero_grad(set_to_none=True)
        (grad,) = torch.autograd.grad(D(x, mp_dtype=mp_dtype).sum(), x, create_graph=True)
        penalty = grad.square().sum([1, 2, 3]).mean()
        penalty.backward()
        grads = {n: p.grad for n, p in D.named_parameters()}
        assert grads.pop("b4.out.bias") is None  # the output bias does not change d logits / d x
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert grads["b16.conv0.weight"].abs().sum() > 0 and grads["b4.fc.weight"].abs().sum() > 0


def _r1(D: Discriminator, x: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return grad.square().sum()


def test_r1_gradient_matches_finite_differences_float64():
    # One-direction version of gradgradcheck (the full check takes minutes on CPU for a conv net).
    D = Discriminator(8, channel_base=64, channel_max=8, mbstd_group_size=2).double()
    gen = torch.Generator().manual_seed(7)
    x = _imgs(2, 8, dtype=torch.float64).requires_grad_(True)
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    eps = 1e-6
    (first,) = torch.autograd.grad(D(x).sum(), x)
    assert D(x).dtype == torch.float64
    numeric = D((x + eps * u).detach()).sum() - D((x - eps * u).detach()).sum()
    assert torch.allclose((first * u).sum(), numeric / (2 * eps), rtol=1e-6, atol=1e-9)
    (analytic,) = torch.autograd.grad(_r1(D, x), x)
    shifted = [(x + sign * eps * u).detach().requires_grad_(True) for sign in (1, -1)]
    numeric = _r1(D, shifted[0]) - _r1(D, shifted[1])
    assert torch.allclose((analytic * u).sum(), numeric / (2 * eps), rtol=1e-5, atol=1e-8)
    # Same along a parameter direction (what the optimiser uses).
    w = D.b8.conv0.weight
    (analytic_w,) = torch.autograd.grad(_r1(D, x), w)
    v = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            w.add_(sign * eps * v)
        values.append(_r1(D, x).detach())
        with torch.no_grad():
            w.sub_(sign * eps * v)
    assert torch.allclose((analytic_w * v).sum(), (values[0] - values[1]) / (2 * eps), rtol=1e-5, atol=1e-8)


def test_channels_last_matches():
    D = _make(16).double()  # a different memory layout sums in another order: compared in float64
    x = _imgs(4, 16).double()
    assert torch.allclose(D(x), D(x, channels_last=True), rtol=0, atol=1e-12)


def test_persistence_round_trip():
    D = _make(16, seed=3)
    D2 = from_record(to_record(D))
    x = _imgs(4, 16)
    assert D2.init_kwargs == D.init_kwargs
    assert torch.equal(D(x), D2(x))


def test_bad_inputs_raise():
    with pytest.raises(UserError):
        Discriminator(24)
    D = _make(8)
    with pytest.raises(ValueError, match="expected images"):
        D(_imgs(4, 16))
    with pytest.raises(ValueError, match="mp_dtype"):
        D(_imgs(4, 8), mp_dtype=torch.int8)


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    D = _make(8)
    x = _imgs(4, 8).requires_grad_(True)
    compiled = torch.compile(D, backend="aot_eager", fullgraph=True)
    out = compiled(x, mp_dtype=torch.bfloat16)
    out.sum().backward()
    assert torch.allclose(out, D(x, mp_dtype=torch.bfloat16), atol=1e-6)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_epilogue_conv_split_by_taps_is_the_same_function():
    """D's epilogue conv split by kernel taps (the backend's epilogue_split, at <= 64 GEMM rows) gives the same
    logits and gradients as the single GEMM; a batch of 4 at the 4x4 epilogue splits, a batch of 8 does not."""
    from torch_utils import backend
    from training.networks.discriminator import Discriminator
    torch.manual_seed(0)
    D = Discriminator(16, channel_base=256, channel_max=32).double()
    img = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    results = []
    for split, batch in ((False, 4), (True, 4), (True, 8), (False, 8)):
        x_in = torch.cat([img, img.flip(0)]) if batch == 8 else img
        with backend.use(backend.REFERENCE.replace(epilogue_split=split)):
            with torch.autograd.profiler.profile() as prof:
                logits = D(x_in)
            taps = sum(e.name == "aten::bmm" for e in prof.function_events)
            assert (taps > 0) == (split and batch * 16 <= 64), (split, batch)
            results.append((logits.detach(), torch.autograd.grad(logits.square().sum(), list(D.parameters()))))
    for ref, got in ((0, 1), (3, 2)):
        torch.testing.assert_close(results[got][0], results[ref][0], rtol=1e-12, atol=1e-12)
        for a, b in zip(results[got][1], results[ref][1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
