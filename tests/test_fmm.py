"""FMM hyper layers: batched weight construction equals a naive per-object loop (float64)."""
from __future__ import annotations

import math

import pytest
import torch

from training.networks.hyper import HyperLinear, fmm_weights


def _naive_weight(layer: HyperLinear, w_b: torch.Tensor) -> torch.Tensor:
    """One object's [c_out, c_in] weight, entry by entry, following the FMM formula of docs/MODEL.md."""
    c_in, c_out, r = layer.in_features, layer.out_features, layer.rank
    a = layer.affine
    s = (a.weight * (1.0 / math.sqrt(a.in_features))) @ w_b + a.bias               # [(c_in + c_out) r]
    U = torch.zeros(c_out, r, dtype=w_b.dtype)
    V = torch.zeros(r, c_in, dtype=w_b.dtype)
    for o in range(c_out):
        for k in range(r):
            U[o, k] = s[o * r + k]
    for k in range(r):
        for i in range(c_in):
            V[k, i] = s[c_out * r + k * c_in + i]
    W = torch.zeros(c_out, c_in, dtype=w_b.dtype)
    for o in range(c_out):
        for i in range(c_in):
            m = sum(U[o, k] * V[k, i] for k in range(r)) / math.sqrt(r)
            W[o, i] = layer.weight[o, i] * (1.0 + m)
        W[o] = W[o] / (torch.sqrt((W[o] ** 2).sum()) + 1e-8)
    return W


def _random_layer(c_in: int, c_out: int, w_dim: int, rank: int, **kw) -> HyperLinear:
    layer = HyperLinear(c_in, c_out, w_dim=w_dim, rank=rank, **kw).double()
    with torch.no_grad():  # Non-zero biases so that their handling is tested too.
        layer.affine.bias.normal_()
        layer.bias.normal_()
    return layer


def test_fmm_weights_match_naive_loop() -> None:
    torch.manual_seed(0)
    layer = _random_layer(5, 4, w_dim=6, rank=3)
    w = torch.randn(3, 6, dtype=torch.float64)
    weight_t, bias = layer.build(w)
    assert weight_t.shape == (3, 5, 4) and bias.shape == (4,) and weight_t.dtype == torch.float64
    for b in range(3):
        torch.testing.assert_close(weight_t[b].T, _naive_weight(layer, w[b]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weight_t.transpose(1, 2).norm(dim=2), torch.ones(3, 4, dtype=torch.float64))


def test_factor_shapes_and_no_demod() -> None:
    base = torch.randn(4, 5, dtype=torch.float64)
    styles = torch.zeros(2, (4 + 5) * 3, dtype=torch.float64)
    torch.testing.assert_close(fmm_weights(base, styles, 3, demodulate=False), base.expand(2, 4, 5))
    with pytest.raises(RuntimeError):
        fmm_weights(base, torch.zeros(2, 7, dtype=torch.float64), 3)


def test_input_gain_folding_and_apply() -> None:
    torch.manual_seed(1)
    layer = _random_layer(7, 4, w_dim=6, rank=2, input_gain=math.sqrt(2.0), input_gain_start=3)
    w = torch.randn(2, 6, dtype=torch.float64)
    x = torch.randn(2, 11, 7, dtype=torch.float64)
    out = layer.apply_weights(x, *layer.build(w))                                   # [2, 11, 4]
    for b in range(2):
        W = _naive_weight(layer, w[b])
        xb = torch.cat([x[b, :, :3], x[b, :, 3:] * math.sqrt(2.0)], dim=1)
        torch.testing.assert_close(out[b], xb @ W.T + layer.bias, rtol=1e-12, atol=1e-12)


def test_weights_stay_fp32_under_autocast() -> None:
    torch.manual_seed(2)
    layer = HyperLinear(6, 5, w_dim=8, rank=2)
    w = torch.randn(2, 8)
    ref_t, _ = layer.build(w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight_t, bias = layer.build(w)
        y = layer.apply_weights(torch.randn(2, 3, 6), weight_t, bias)
    assert weight_t.dtype == torch.float32 and bias.dtype == torch.float32
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(weight_t, ref_t)


def test_one_gemm_for_every_layers_affine_is_the_same_function():
    from training.networks import hyper
    from training.networks.nerf import NeRFMLP
    torch.manual_seed(0)
    mlp = NeRFMLP(num_layers=6, width=32, w_dim=16, rank=3).double()
    for layer in mlp.layers:                                          # non-zero biases, so their gradient shows
        torch.nn.init.normal_(layer.affine.bias)
    w = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    got = hyper.affine_styles(list(mlp.layers), w)
    want = [layer.affine(w) for layer in mlp.layers]
    assert [g.shape for g in got] == [t.shape for t in want]
    for g, t in zip(got, want):
        torch.testing.assert_close(g, t, rtol=1e-12, atol=1e-12)
    coef = [torch.randn_like(t) for t in want]
    params = [w, *[p for layer in mlp.layers for p in layer.affine.parameters()]]
    g_got = torch.autograd.grad(sum((c * g).sum() for c, g in zip(coef, got)), params)
    g_want = torch.autograd.grad(sum((c * t).sum() for c, t in zip(coef, want)), params)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("outputs,chunk", [(37, 8), (32, 8), (5, 8), (37, 1)])
def test_chunked_linear_is_f_linear(outputs: int, chunk: int):
    """hyper.chunked_linear (G's affines: a batch of GEMMs over blocks of outputs, so x's gradient is a split-K GEMM)
    equals F.linear in value and in every gradient, also when the outputs do not fill the last block."""
    from training.networks import hyper
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(outputs, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(outputs, dtype=torch.float64, generator=gen, requires_grad=True)
    got = hyper.chunked_linear(x, weight, bias, chunk=chunk)
    want = torch.nn.functional.linear(x, weight, bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    coef = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    for a, b in zip(torch.autograd.grad((coef * got).sum(), (x, weight, bias)),
                    torch.autograd.grad((coef * want).sum(), (x, weight, bias))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hyper.chunked_linear(x, weight, chunk=chunk), torch.nn.functional.linear(x, weight))
