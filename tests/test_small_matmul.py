"""G's few-row matmuls (torch_utils/layers.py set_small_matmul): the broadcast-product form that torch.compile fuses
computes the same function and gradients as the GEMMs, alone and through a whole G render; 'auto' picks it only
while torch.compile traces."""
from __future__ import annotations

import pytest
import torch

from dnnlib.util import UserError
from torch_utils import layers
from training.config import TrainConfig
from training.networks.generator import Generator


@pytest.fixture(autouse=True)
def restore_mode():
    old = layers.set_small_matmul("auto")
    yield
    layers.set_small_matmul(old)


def _value_and_grads(fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    coef = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)
    return out.detach(), torch.autograd.grad((coef * out).sum(), inputs)


@pytest.mark.parametrize("bias", [True, False])
def test_small_linear_forms_agree(bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 24, dtype=torch.float64, generator=gen)
    w = torch.randn(40, 24, dtype=torch.float64, generator=gen)
    b = torch.randn(40, dtype=torch.float64, generator=gen)
    fn = (lambda x, w, b: layers.small_linear(x, w, b)) if bias else (lambda x, w, b: layers.small_linear(x, w) + 0 * b)
    results = {}
    for mode in ("gemm", "pointwise"):
        layers.set_small_matmul(mode)
        results[mode] = _value_and_grads(fn, x, w, b)
    torch.testing.assert_close(results["pointwise"][0], torch.nn.functional.linear(x, w, b if bias else None))
    torch.testing.assert_close(results["pointwise"][0], results["gemm"][0], rtol=1e-12, atol=1e-12)
    for a, g in zip(results["pointwise"][1], results["gemm"][1]):
        torch.testing.assert_close(a, g, rtol=1e-12, atol=1e-12)


def test_small_bmm_forms_agree() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 16, 5, dtype=torch.float64, generator=gen)
    b = torch.randn(3, 5, 12, dtype=torch.float64, generator=gen)
    results = {}
    for mode in ("gemm", "pointwise"):
        layers.set_small_matmul(mode)
        results[mode] = _value_and_grads(layers.small_bmm, a, b)
    torch.testing.assert_close(results["pointwise"][0], torch.bmm(a, b), rtol=1e-12, atol=1e-12)
    for x, y in zip(results["pointwise"][1], results["gemm"][1]):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def _render(G: Generator, z: torch.Tensor, c2w: torch.Tensor, win: torch.Tensor) -> tuple[torch.Tensor, list]:
    G.zero_grad(set_to_none=True)
    img = G(z, c2w, window=win, patch_size=8)                                       # [B, 3, 8, 8]
    (img * torch.linspace(-1, 1, img.numel(), dtype=img.dtype).view_as(img)).sum().backward()
    return img.detach(), [p.grad.clone() for p in G.parameters()]


def test_whole_render_and_gradients_match_between_forms() -> None:
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, num_layers=4, width=32, rank=3, multires=4, img_resolution=16,
                  num_samples=4).double()
    gen = torch.Generator().manual_seed(2)
    z = G.sample_z(3, generator=gen).double()
    c2w = G.sample_poses(3, generator=gen).double()
    win = G.sample_windows(3, 8, generator=gen)
    layers.set_small_matmul("gemm")
    ref_img, ref_grads = _render(G, z, c2w, win)
    layers.set_small_matmul("pointwise")
    img, grads = _render(G, z, c2w, win)
    torch.testing.assert_close(img, ref_img, rtol=1e-10, atol=1e-12)
    assert all(g.abs().sum() > 0 for g in ref_grads)          # every parameter (mapping, affines, base W) moves
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_auto_uses_the_pointwise_form_only_while_compiling() -> None:
    seen = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append(layers._pointwise_matmul())
        return layers.small_linear(x, torch.eye(3, dtype=x.dtype))

    x = torch.randn(2, 3)
    torch.testing.assert_close(probe(x), x)
    torch.testing.assert_close(torch.compile(probe, backend="aot_eager", fullgraph=True)(x), x)
    assert seen == [False, True]
    layers.set_small_matmul("gemm")
    torch._dynamo.reset()
    torch.compile(probe, backend="aot_eager", fullgraph=True)(x)
    assert seen[-1] is False


def test_bad_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown small-matmul mode"):
        layers.set_small_matmul("cuda")
    with pytest.raises(UserError, match="g_small_matmul 'fast'"):
        TrainConfig(g_small_matmul="fast")
    with pytest.raises(UserError, match="r1_fir 'fast' is neither 'same'"):
        TrainConfig(r1_fir="fast")
