"""G's fused training layers (torch_utils/ops/object_linear.py, hyper.fused_layers): the op's reference semantics,
the fused chain against the baddbmm + relu path (float64: values and every parameter gradient), the op inside a
compiled graph, and the Triton kernel under Triton's CPU interpreter."""
from __future__ import annotations

import textwrap

import pytest
import torch

from test_fused_mlp import _run_interpreted, ptx_and_report
from torch_utils import backend
from torch_utils.ops import object_linear as ol
from training.networks import hyper
from training.networks.nerf import NeRFMLP

HAS_TRITON = ol.triton is not None
FUSED, PLAIN = backend.REFERENCE.replace(g_layers="fused"), backend.REFERENCE.replace(g_layers="plain")


def test_reference_epilogue_semantics():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]], dtype=torch.float64)        # [1, 3, 2]
    w = torch.tensor([[[1.0, -2.0, float("nan")], [0.5, 1.0, 0.0]]], dtype=torch.float64)  # [1, 2, 3]
    b = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
    y = ol.reference(x, w, b, None, relu=True)
    assert y[0, 0, 0] == 1.0 and y[0, 0, 1] == 0.0 and torch.isnan(y[0, :, 2]).all()     # relu keeps NaN
    assert y[0, 2, 0] == 0.0 and y[0, 2, 1] == 1.5
    mask = torch.tensor([[[1.0, 0.0, -1.0], [float("nan"), 2.0, 0.0], [3.0, 3.0, 3.0]]], dtype=torch.float64)
    g = ol.reference(x, w, None, mask, relu=False)
    assert g[0, 0, 1] == 0.0 and g[0, 0, 2] == 0.0 and g[0, 1, 0] == 0.5                 # mask <= 0 -> 0, NaN kept
    torch.testing.assert_close(g[0, 2], x[0, 2] @ w[0], equal_nan=True)
    op = torch.ops.hypernerf.object_linear(x, w, b, None, True)
    torch.testing.assert_close(op, y, equal_nan=True)


def test_op_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"x \[B, N, K\] and w \[B, K, C\]"):
        torch.ops.hypernerf.object_linear(torch.zeros(2, 5, 3), torch.zeros(2, 4, 6), None, None, False)
    with pytest.raises(ValueError, match="bias must be"):
        torch.ops.hypernerf.object_linear(torch.zeros(2, 5, 3), torch.zeros(2, 3, 6), torch.zeros(5), None, False)


# The fused chain against the baddbmm + relu path (values and every gradient, float64, 4 and 8 layers) is
# tests/test_backend.py::test_g_layer_forms_match_the_plain_path, which checks every form of G's layers.

def test_weight_gradient_split_or_not_is_the_plain_product() -> None:
    torch.manual_seed(0)
    for split in (1, 4):
        x, g = torch.randn(3, 4096, 24, dtype=torch.float64), torch.randn(3, 4096, 8, dtype=torch.float64)
        torch.testing.assert_close(hyper.weight_grad(x, g, split), torch.bmm(x.transpose(1, 2), g))


def test_fused_chain_compiles_without_graph_breaks() -> None:
    torch.manual_seed(0)
    # Fused vs unfused is the same formula in another order of summation: compared in float64.
    mlp = NeRFMLP(num_layers=8, width=32, w_dim=16, rank=3).double()
    w, pts = torch.randn(2, 16, dtype=torch.float64), torch.randn(2, 512, 3, dtype=torch.float64)
    with backend.use(PLAIN):
        ref = mlp(w, pts)
        ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    compiled = torch.compile(lambda a, b: mlp(a, b), backend="aot_eager", fullgraph=True)
    with backend.use(FUSED):
        out = compiled(w, pts)
        out.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for p, r in zip(mlp.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, r, rtol=1e-10, atol=1e-10)
    with torch.no_grad(), backend.use(FUSED):                              # Dmain's no-grad fakes, compiled
        torch.testing.assert_close(compiled(w, pts), ref, rtol=1e-10, atol=1e-10)


def test_fused_chain_refuses_a_gradient_for_the_encoding() -> None:
    pe = torch.randn(1, 8, 16, requires_grad=True)
    layers = [(torch.randn(1, 16, 16, requires_grad=True), torch.zeros(16)), (torch.randn(1, 16, 8), torch.zeros(8))]
    with pytest.raises(RuntimeError, match="gives the encoding no gradient"):
        hyper.fused_layers(pe, layers).sum().backward()


def test_launch_parameters() -> None:
    p = ol.default_launch(128, 128)
    assert p["block_m"] >= 16 and p["block_k"] == 64
    assert ol.default_launch(8, 128, masked=True)["block_k"] == 16
    assert ol.default_launch(192, 128, masked=True)["block_k"] == 128


_INTERPRETER_SCRIPT = textwrap.dedent("""
    import copy, json, torch
    from tolerances import gamma
    from torch_utils import backend
    from torch_utils.ops import object_linear as ol
    from training.networks import hyper
    from training.networks.nerf import NeRFMLP

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

    results = {}
    gen = torch.Generator().manual_seed(0)
    # One layer against its float64 value, elementwise within the rounding bound of an fp32 accumulation in any
    # order plus the rounding to the output dtype: gamma_{K+1} (|x| |w| + |b|) + eps_out |y|.
    # (K, C, bias, relu, mask, N, block_m): the training shapes, ragged point counts and widths, strided weights.
    cases = [(64, 128, True, True, False, 300, 64), (192, 128, True, True, False, 129, 32),
             (128, 8, True, False, False, 77, 64), (128, 128, False, False, True, 100, 64),
             (8, 128, False, False, True, 65, 32), (20, 40, True, True, True, 33, 16)]
    for dt in (torch.float16, torch.float32):
        for K, C, bias, relu, masked, N, bm in cases:
            x = torch.randn([2, N, K], generator=gen).to(dt)
            w = (torch.randn([2, C, K], generator=gen) / K ** 0.5).to(dt).transpose(1, 2)
            b = torch.randn([C], generator=gen).to(dt) if bias else None
            m = torch.randn([2, N, C], generator=gen).to(dt) if masked else None
            got = ol.launch(x, w, b, m, relu, block_m=bm)
            want = ol.reference(x.double(), w.double(), None if b is None else b.double(),
                                None if m is None else m.double(), relu)
            scale = x.double().abs() @ w.double().abs() + (0 if b is None else b.double().abs())
            bound = gamma(K + 1) * scale + torch.finfo(dt).eps * want.abs()
            results[f"{dt}-K{K}-C{C}-N{N}"] = dict(shape=list(got.shape), dtype=str(got.dtype),
                                                   excess=((got.double() - want).abs() - bound).max().item())
    # The whole chain through the kernel (the op runs it for CPU tensors under the interpreter), fp32, with its
    # gradients, against the plain baddbmm path in float64. Each layer's rounding is bounded above; what the chain
    # adds is the wiring (padding, skip input, relu, the backward's masks), whose faults are of order one.
    torch.manual_seed(0)
    mlp = NeRFMLP(num_layers=6, width=32, w_dim=16, rank=3)
    w, pts = torch.randn(2, 16), torch.randn(2, 96, 3)
    out = {}
    for mode in ("fused", "float64"):
        model = copy.deepcopy(mlp).double() if mode == "float64" else mlp
        dt = torch.float64 if mode == "float64" else torch.float32
        with backend.use(backend.REFERENCE.replace(g_layers="fused" if mode == "fused" else "plain")):
            raw = model(w.to(dt), pts.to(dt))
            raw.square().sum().backward()
        out[mode] = (raw.detach(), [p.grad.clone() for p in model.parameters()])
    results["chain"] = dict(raw=rel(out["fused"][0], out["float64"][0]),
                            grads=max(rel(a, b) for a, b in zip(out["fused"][1], out["float64"][1])))
    results["self_check"] = ol.self_check(torch.device("cpu"), torch.float16)
    print("RESULTS " + json.dumps(results))
""")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: the kernel is only tested under the Triton "
                                           "interpreter or on a GPU")
def test_kernel_under_triton_interpreter(tmp_path):
    results = _run_interpreted(tmp_path, "run_object_linear_interpreted.py", _INTERPRETER_SCRIPT)
    assert results.pop("self_check") < 1e-3
    chain = results.pop("chain")
    # fp32 rounding through the chain measured 1e-7 to 6e-5 on different CPUs; a wiring fault is of order one.
    assert chain["raw"] < 1e-3 and chain["grads"] < 1e-3, chain
    for name, r in results.items():
        dt = name.split("-")[0]
        n, c = int(name.split("-N")[1]), int(name.split("-C")[1].split("-")[0])
        assert r["shape"] == [2, n, c] and r["dtype"] == dt, (name, r)
        assert r["excess"] <= 0, (name, r)


def test_fused_chain_without_grad_equals_the_plain_path() -> None:
    torch.manual_seed(0)
    mlp = NeRFMLP(num_layers=8, width=32, w_dim=16, rank=3).double()
    w, pts = torch.randn(2, 16, dtype=torch.float64), torch.randn(2, 300, 3, dtype=torch.float64)
    with torch.no_grad():
        with backend.use(PLAIN):
            want = mlp(w, pts)
        with backend.use(FUSED):
            got = mlp(w, pts)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: the GPU compile path is not checked")
@pytest.mark.parametrize("cc,dtype,K,C,masked", [(90, "fp16", 128, 128, False), (90, "fp16", 128, 128, True),
                                                 (90, "bf16", 192, 128, False), (80, "fp16", 8, 128, True),
                                                 (80, "fp16", 128, 8, False)])
def test_kernel_compiles_for_gpus(cc, dtype, K, C, masked):
    """Ahead-of-time compile with the default launch (no GPU needed): the dots become tensor-core instructions."""
    pytest.importorskip("triton.compiler")
    try:
        from triton.compiler import ASTSource
    except ImportError as exc:                                   # a triton without this AOT API
        pytest.skip(f"triton's ahead-of-time API differs: {exc}")
    launch = ol.default_launch(K, C, masked=masked)
    sig = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "m_ptr": f"*{dtype}",
           "y_ptr": f"*{dtype}", "N": "i32", **{n: "i32" for n in ("sx_b", "sx_n", "sx_k", "sw_b", "sw_k", "sw_c",
                                                                  "sm_b", "sm_n", "sm_c")}}
    const = dict(K=K, C=C, HAS_BIAS=not masked, RELU=not masked, HAS_MASK=masked, BLOCK_M=launch["block_m"],
                 BLOCK_C=max(16, 1 << (C - 1).bit_length()), BLOCK_K=launch["block_k"])
    sig.update({k: "constexpr" for k in const})
    src = ASTSource(fn=ol._object_linear_kernel, signature=sig, constexprs=const,
                    attrs={(i,): [["tt.divisibility", 16]] for i in range(5)})
    ptx, report = ptx_and_report(src, cc, launch["num_warps"], launch["num_stages"])
    assert ("wgmma.mma_async" if cc == 90 else "mma.sync") in ptx, report


def test_wide_layers_take_the_reference_path():
    x, w = torch.randn(1, 5, 8), torch.randn(1, 8, ol.MAX_COLUMNS + 8)
    torch.testing.assert_close(torch.ops.hypernerf.object_linear(x, w, None, None, True), torch.relu(x @ w))
