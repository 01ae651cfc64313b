"""The fast training path and the speed-motivated rewrites compute exactly what the reference formulations do."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_fused_mlp import _run_interpreted

from torch_utils.ops import fir
from training.fast_step import DeviceImageCache, GraphedTrainStep, device_index_batches
from training.networks.discriminator import Conv2dLayer
from training.networks.hyper import HyperLinear


@pytest.mark.parametrize("padding", [0, 1, 2, 3, 5])
def test_pool_fir_is_twice_differentiable_and_keeps_channels_last(padding):
    f = fir.make_fir_filter().double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fir.fir2d(x, f, padding, 2, impl="pool"), fir.fir2d_reference(x, f, padding, 2))
    assert torch.autograd.gradgradcheck(lambda t: fir.fir2d(t, f, padding, 2, impl="pool"), (x,))
    xc = x.detach().float().contiguous(memory_format=torch.channels_last)
    assert fir.fir2d(xc, f.float(), padding, 1, impl="pool").is_contiguous(memory_format=torch.channels_last)


def test_per_object_linear_backward_matches_autograd_baddbmm():
    torch.manual_seed(0)
    for c_in, c_out in ((63, 128), (128, 4), (191, 128), (16, 16)):
        x = torch.randn(3, 50, c_in, dtype=torch.float64, requires_grad=True)
        wt = torch.randn(3, c_in, c_out, dtype=torch.float64, requires_grad=True)
        b = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
        g = torch.randn(3, 50, c_out, dtype=torch.float64)
        y, y_ref = HyperLinear.apply_weights(x, wt, b), torch.baddbmm(b.view(1, 1, -1), x, wt)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)                 # forward == baddbmm
        ours = torch.autograd.grad(y, (x, wt, b), g)
        ref = torch.autograd.grad(y_ref, (x, wt, b), g)
        for a, r in zip(ours, ref):
            assert a.shape == r.shape
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_per_object_linear_in_16_bit_stays_within_one_rounding_of_baddbmm():
    torch.manual_seed(0)
    x, wt, b = torch.randn(2, 64, 128), torch.randn(2, 128, 128) / 128 ** 0.5, torch.randn(128)
    want = torch.baddbmm(b.view(1, 1, -1), x, wt)                                           # fp32
    out = HyperLinear.apply_weights(x.bfloat16(), wt.bfloat16(), b.bfloat16())
    got = out.float()
    assert out.dtype == torch.bfloat16 and (got - want).abs().max() < 0.05               # bf16 step near |y| ~ 3
    torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)


def test_gemm_conv_equals_cudnn_style_conv_and_is_twice_differentiable():
    torch.manual_seed(0)
    a = Conv2dLayer(9, 5, 3, activation="lrelu", conv_clamp=256).double()
    b = Conv2dLayer(9, 5, 3, activation="lrelu", conv_clamp=256, as_gemm=True).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 9, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(b(x), a(x), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda t: b(t), (x,))


@pytest.mark.parametrize("down,size", [(1, 12), (2, 12), (2, 13)])
def test_depthwise_fir_derivatives_of_every_order(down, size):
    """'depthwise' writes the FIR's derivatives out (the filter's adjoint, whose adjoint is the filter): first,
    second and third derivatives are checked numerically, also for odd sizes (output_padding of the adjoint)."""
    torch.manual_seed(0)
    f = fir.make_fir_filter().double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)

    def fn(t):
        return fir.fir2d(t, f, padding=2, down=down, impl="depthwise")

    torch.testing.assert_close(fn(x), fir.fir2d_reference(x, f, padding=2, down=down), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))

    def grad_of_square(t):      # d/dt of sum(fn(t)^2) keeps t in the graph (second order), checked twice more
        (g,) = torch.autograd.grad(fn(t).square().sum(), t, create_graph=True)
        return g
    assert torch.autograd.gradgradcheck(grad_of_square, (x,))
    xl = x.detach().to(memory_format=torch.channels_last)
    torch.testing.assert_close(fn(xl), fn(x.detach()), rtol=1e-12, atol=1e-12)


def test_backend_use_restores_after_errors():
    from torch_utils import backend
    before = backend.current()
    with pytest.raises(RuntimeError):
        with backend.use(before.replace(fir="depthwise")):
            assert backend.current().fir == "depthwise"
            raise RuntimeError("boom")
    assert backend.current() is before


def test_pool_fir_avoids_the_cuda_nhwc_avg_pool_backward(monkeypatch):
    """Eager CUDA avg_pool2d gets the input gradient of padded channels_last inputs wrong (pytorch#188344), so
    'pool' runs the depthwise form there. On CPU the predicate is false; forced true, fir2d takes the
    depthwise path (its autograd node) and gives the reference's value and gradients."""
    torch.manual_seed(0)
    f = fir.make_fir_filter().double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_(True)
    assert not fir.pool_grad_is_wrong(x, 2)
    weight = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    (ref,) = torch.autograd.grad((fir.fir2d_reference(x, f, padding=2, down=2) * weight).sum(), x)
    monkeypatch.setattr(fir, "pool_grad_is_wrong", lambda t, padding: padding > 0)
    y = fir.fir2d(x, f, padding=2, down=2, impl="pool")
    assert type(y.grad_fn).__name__ == "_FirDepthwiseBackward"
    (g,) = torch.autograd.grad((y * weight).sum(), x)
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)
    assert "Pool" in type(fir.fir2d(x, f, padding=0, down=2, impl="pool").grad_fn).__name__   # no padding: unaffected


@pytest.mark.parametrize("down", [1, 2])
def test_fir_implementations_agree(down):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 12, 12, dtype=torch.float64)
    f = fir.make_fir_filter().double()
    outs = [fir.fir2d(x, f, padding=2, down=down, impl=impl) for impl in fir.FIR_IMPLS]
    ref = fir.fir2d_reference(x, f, padding=2, down=down)
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    other = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 16
    for impl in fir.FIR_IMPLS:                                # a filter the pools do not cover: the depthwise form
        torch.testing.assert_close(fir.fir2d(x, other, 1, down, impl=impl), fir.fir2d_reference(x, other, 1, down))
    with pytest.raises(ValueError):
        fir.fir2d(x, f, padding=2, impl="nope")


class _Images:
    def __init__(self, n: int, xflip: bool) -> None:
        g = np.random.default_rng(0)
        self.images = g.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8)
        self.num_images, self.xflip, self.image_shape = n, xflip, (3, 8, 8)

    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def __getitem__(self, i: int):
        img = self.images[i % self.num_images]
        return (img[:, :, ::-1].copy() if i >= self.num_images else img), np.zeros([0], np.float32)


def test_device_cache_gathers_dataset_items_including_mirrored_ones():
    data = _Images(5, xflip=True)
    cache = DeviceImageCache(data, "cpu")
    idx = torch.tensor([0, 4, 5, 9, 7])
    got = cache.gather(idx)
    want = np.stack([data[int(i)][0] for i in idx])
    assert torch.equal(got, torch.from_numpy(want))
    assert cache.estimate_bytes(data) == 5 * 3 * 8 * 8


def test_device_index_batches_preserve_the_sampler_stream():
    stream = iter(range(1000))
    batches = device_index_batches(stream, batch=4, device="cpu", steps_per_upload=3)
    got = torch.cat([next(batches) for _ in range(7)]).tolist()
    assert got == list(range(28))


def test_graphed_step_on_cpu_calls_the_step_with_gathered_reals_and_proxies_attributes():
    calls = []

    class Step:
        precision = "fp32"

        def __call__(self, reals, step_idx):
            calls.append((reals.clone(), step_idx))

    data = _Images(4, xflip=True)
    cache = DeviceImageCache(data, "cpu")
    wrapped = GraphedTrainStep(Step(), 2, data.image_shape, "cpu", cache=cache)
    assert not wrapped.enabled and wrapped.precision == "fp32"
    wrapped(torch.tensor([1, 6]), 0)
    reals, idx = calls[0]
    assert idx == 0 and torch.equal(reals, cache.gather(torch.tensor([1, 6])))
    assert torch.equal(reals[1], torch.from_numpy(data[6][0]))


def test_graph_key_tells_apart_phase_patterns():
    from types import SimpleNamespace

    class Step:
        cfg = SimpleNamespace(aug="ada", ada_interval=4)
        augment_pipe = object()

        def is_reg_step(self, i):
            return i % 16 == 0

    step = Step()
    data = _Images(4, xflip=False)
    wrapped = GraphedTrainStep(step, 2, data.image_shape, "cpu", cache=DeviceImageCache(data, "cpu"))
    assert wrapped.graph_key(1) == (False, False)
    assert wrapped.graph_key(3) == (False, True)
    assert wrapped.graph_key(16) == (True, False)


def test_compiled_d_falls_back_to_eager_once_with_a_message(monkeypatch, capsys):
    from training import loss as loss_mod

    def broken_compile(module, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(loss_mod.torch, "compile", broken_compile)
    layer = torch.nn.Linear(3, 2)
    wrapped = loss_mod.CompiledWithFallback(layer)
    x = torch.randn(4, 3)
    torch.testing.assert_close(wrapped(x), layer(x))
    torch.testing.assert_close(wrapped(x), layer(x))
    out = capsys.readouterr().out
    assert out.count("torch.compile of Linear failed (RuntimeError: no compiler here)") == 1
    assert "continuing with the eager code" in out
    assert wrapped.failed


_FIR_KERNEL_SCRIPT = r'''
import json
import torch
from tolerances import gamma
from torch_utils.ops import fir, fir_kernel

f = fir.make_fir_filter().double()
out = {}
for down, pad, size, channels_last in ((2, 2, 12, False), (2, 2, 13, True), (1, 2, 9, False), (1, 1, 8, True)):
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=gen)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert fir_kernel.runs_on(x)
    res = {}
    for impl in ("triton", "depthwise"):
        xi = x.detach().clone().requires_grad_(True)
        y = fir.fir2d(xi, f, padding=pad, down=down, impl=impl)
        c = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        (g,) = torch.autograd.grad((c * y * y).sum(), xi, create_graph=True)      # first order, kept
        (gg,) = torch.autograd.grad((g * g).sum(), xi)                             # second order
        res[impl] = (y.detach(), g.detach(), gg, y.is_contiguous(memory_format=torch.channels_last))
    ref = fir.fir2d_reference(x, f, pad, down)
    t, d = res["triton"], res["depthwise"]
    out[f"d{down}-p{pad}-s{size}-cl{int(channels_last)}"] = {
        "y": (t[0] - ref).abs().max().item(), "g": (t[1] - d[1]).abs().max().item(),
        "gg": (t[2] - d[2]).abs().max().item(), "keeps_layout": t[3] == channels_last}
# fp32 against float64, within the rounding bound of an fp32 sum of n products in any order: gamma_n (|f| * |x|).
x32, f32 = torch.randn(2, 4, 8, 8), fir.make_fir_filter()
n = f32.numel() ** (2 if f32.ndim == 1 else 1) + 1
want = fir.fir2d_reference(x32.double(), f32.double(), 2, 2)
scale = fir.fir2d_reference(x32.double().abs(), f32.double().abs(), 2, 2)
excess = (fir_kernel.fir_down(x32, 2, 2).double() - want).abs() - gamma(n) * scale
out["fp32"] = {"excess": excess.max().item()}
print("RESULTS " + json.dumps(out))
'''


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_fir_kernel_under_triton_interpreter(tmp_path):
    """fir2d's 'triton' form (the backend's R1 filter on GPUs): the Triton FIR and its adjoint (CPU interpreter,
    fp64) give fir2d's values and the same first and second derivatives as 'depthwise', in NCHW and NHWC (kept),
    stride 1 and 2, odd sizes."""
    results = _run_interpreted(tmp_path, "run_fir_kernel.py", _FIR_KERNEL_SCRIPT)
    assert results.pop("fp32")["excess"] <= 0
    assert len(results) == 4
    for name, r in results.items():
        assert r["y"] < 1e-12 and r["g"] < 1e-12 and r["gg"] < 1e-10 and r["keeps_layout"], (name, r)


def test_triton_fir_falls_back_off_the_kernel():
    """Without CUDA (and without the interpreter) 'triton' runs the depthwise convs, inside torch.compile the pools:
    the same values either way."""
    torch.manual_seed(0)
    f = fir.make_fir_filter()
    x = torch.randn(2, 3, 10, 10)
    ref = fir.fir2d_reference(x, f, padding=2, down=2)
    torch.testing.assert_close(fir.fir2d(x, f, padding=2, down=2, impl="triton"), ref)
    compiled = torch.compile(lambda t: fir.fir2d(t, f, padding=2, down=2, binomial=True, impl="triton"),
                             backend="aot_eager")
    torch.testing.assert_close(compiled(x), ref)


def test_triton_fir_kernels_are_tried_once_per_gpu(monkeypatch):
    """A GPU where the Triton FIR kernels fail to compile or launch (e.g. no C compiler for Triton's launcher) gets
    one warning and the depthwise form for R1; a GPU where they run keeps them; each device and dtype is tried once,
    at any compute capability (an sm_75 T4 too). (CPU test: stand-in launches on a claimed GPU.)"""
    import warnings

    from torch_utils import backend
    from torch_utils.ops import fir_kernel
    monkeypatch.setattr(backend, "_CHECKED", {})
    monkeypatch.setattr(backend, "HAS_TRITON", True)
    monkeypatch.delenv(backend.OFF_SWITCH, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(backend, "_probe_input", lambda device, dtype: torch.zeros(1, 1, 4, 4, dtype=dtype))
    launches = []

    def launch(*args):
        launches.append(args)
        if len(launches) == 1:
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.\nmore")
        return torch.zeros(1, 1, 2, 2)
    monkeypatch.setattr(fir_kernel, "fir_down", launch)
    monkeypatch.setattr(fir_kernel, "fir_adjoint", lambda *a: torch.zeros(1, 1, 4, 4))
    gpu0, gpu1 = torch.device("cuda", 0), torch.device("cuda", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not backend.kernel_ok("fir", gpu0, torch.float16) and not backend.kernel_ok("fir", gpu0, torch.float16)
        texts = [str(w.message) for w in caught]
        want = ("fir kernel self-check on cuda:0 (torch.float16): RuntimeError: Failed to find C compiler. "
                "Please specify via CC environment variable.; using a depthwise conv")
        assert texts == [want]
        assert backend.kernel_ok("fir", gpu1, torch.float16) and backend.kernel_ok("fir", gpu1, torch.float16)
        assert len(launches) == 2 and len(caught) == 1
        assert backend._CHECKED == {("fir", 0, torch.float16): False, ("fir", 1, torch.float16): True}
