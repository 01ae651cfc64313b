"""Tests of the fused NeRF MLP (torch_utils/ops/fused_mlp.py).

Without a GPU: the PyTorch reference and the weight packing are checked everywhere; the Triton kernel itself runs
under Triton's CPU interpreter (TRITON_INTERPRET=1, in a subprocess so the setting cannot leak into other tests)
when triton is installed (`make install` adds it next to the CPU torch, so CI runs it), and is skipped otherwise.
The compiled GPU kernel is exercised by bench/micro_fused_mlp.py, tests/gpu and the backend's self-check on a GPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from torch_utils.ops import fused_mlp as fm
from training.networks.nerf import NeRFMLP
from training.rendering.volume import positional_encoding

REPO = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _nerf(num_layers: int, width: int = 128, multires: int = 10, seed: int = 0) -> NeRFMLP:
    torch.manual_seed(seed)
    nerf = NeRFMLP(num_layers=num_layers, width=width, multires=multires)
    with torch.no_grad():                      # non-zero shared biases, so the bias path is exercised too
        for layer in nerf.layers:
            layer.bias.normal_(0.0, 0.1)
    return nerf


def _points(B: int, N: int, seed: int = 0) -> torch.Tensor:
    return torch.rand([B, N, 3], generator=torch.Generator().manual_seed(seed)) * 2.4 - 1.2


# ----------------------------------------------------------------------------------------------------------------------
# Pure PyTorch: runs everywhere.

@pytest.mark.parametrize("num_layers", [4, 8])
def test_reference_matches_nerf_fp32(num_layers):
    # The same formula in two orders of summation: float32 agrees only to its rounding, so also compare in float64.
    nerf = _nerf(num_layers)
    assert nerf.uses_skip == (num_layers == 8)
    w = torch.randn([3, 128], generator=torch.Generator().manual_seed(1))
    pts = _points(3, 50)
    with torch.no_grad():
        weights = nerf.build_weights(w)
        got = fm.reference_evaluate(weights, pts, dtype=torch.float32, **fm.mlp_config(nerf))
        nerf64 = nerf.double()
        weights64 = nerf64.build_weights(w.double())
        want64 = nerf64.evaluate(weights64, pts.double())
        got64 = fm.reference_evaluate(weights64, pts.double(), dtype=torch.float64, **fm.mlp_config(nerf64))
    assert got.shape == (3, 50, 4) and got.dtype == torch.float32 and got64.dtype == torch.float64
    torch.testing.assert_close(got64, want64, rtol=0, atol=1e-10)
    # float32 against the float64 value: 128-term sums per layer, each within a few gamma_128 of exact, relative to
    # the output's scale (a wrong formula errs by O(1)).
    torch.testing.assert_close(got.double(), want64, rtol=0, atol=num_layers * 4 * 128 * torch.finfo(torch.float32).eps
                               * float(want64.abs().max()))


def test_reference_half_rounding_is_close_to_fp32():
    nerf = _nerf(8)
    with torch.no_grad():
        weights = nerf.build_weights(torch.randn([2, 128], generator=torch.Generator().manual_seed(2)))
        pts = _points(2, 64)
        full = fm.reference_evaluate(weights, pts, dtype=torch.float32, **fm.mlp_config(nerf))
        half = fm.reference_evaluate(weights, pts, dtype=torch.float16, **fm.mlp_config(nerf))
    rel = ((half - full).norm() / full.norm()).item()
    assert 0 < rel < 1e-2                      # rounded (not identical) but close


def _kernel_layout_tiles(pts: torch.Tensor, multires: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's S / C encoding tiles [B, N, PE_HALF], as described in fused_mlp's docstring, in torch."""
    half, narg = fm.pe_half_width(multires), 3 * multires
    j = torch.arange(half)
    f, c = (j // 3).clamp(max=multires), j % 3
    a = pts[..., c] * (2.0 ** f).to(pts.dtype)                                   # [B, N, PE_HALF]
    zeros = torch.zeros_like(pts[..., :1])
    raw = torch.cat([pts, zeros.expand(*pts.shape[:-1], 2 * half)], dim=-1)      # raw coordinate r (0 past 2)
    s_raw = raw[..., (j - narg).clamp(min=0)]
    c_raw = raw[..., (j - narg + half - narg).clamp(min=0)]
    s = torch.where(j < narg, torch.sin(a), s_raw)
    co = torch.where(j < narg, torch.cos(a), c_raw)
    return s, co


@pytest.mark.parametrize("num_layers,multires,width,skip_after", [(8, 10, 128, 4), (3, 4, 32, 0), (2, 0, 16, 4)])
def test_packed_layout_is_the_same_function(num_layers, multires, width, skip_after):
    """Layer 0 and the skip layer computed from the packed (reordered, padded) weights and the kernel's encoding
    tiles equal the original weights applied to positional_encoding (fp64, so only the layout is tested)."""
    B, N = 2, 7
    uses_skip = num_layers > skip_after + 1
    gen = torch.Generator().manual_seed(3)
    weights = [(w.double(), b.double()) for w, b in fm.random_weights(B, num_layers, width, multires, skip_after,
                                                                      generator=gen)]
    packed = fm.pack_weights(weights, num_layers, multires, skip_after, uses_skip, torch.float16)
    half = fm.pe_half_width(multires)
    assert packed.w_pe.shape == (B, 2 * half, width) and packed.w_out.shape == (B, width, fm.OUT_PAD)
    assert packed.w_hid.shape == (B, max(num_layers - 1, 1), width, width)
    assert packed.w_pe.dtype == torch.float16 and packed.b_hid.dtype == torch.float32
    pts = _points(B, N).double()
    pe = positional_encoding(pts, multires)                                      # [B, N, pe_dim]
    s, c = _kernel_layout_tiles(pts, multires)
    enc = torch.cat([s, c], dim=-1)                                              # [B, N, 2 PE_HALF]

    def rounded(w):
        return w.to(torch.float16).double()

    torch.testing.assert_close(enc @ packed.w_pe.double(), pe @ rounded(weights[0][0]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(packed.w_out[..., :4].double(), rounded(weights[-1][0]))
    assert not packed.w_out[..., 4:].any() and not packed.b_out[4:].any()
    if uses_skip:
        pe_dim = pe.shape[-1]
        wt = weights[skip_after + 1][0]
        assert packed.skip_layer == skip_after + 1
        torch.testing.assert_close(enc @ packed.w_skip_pe.double(), pe @ rounded(wt[:, :pe_dim]), rtol=1e-12,
                                   atol=1e-12)
        torch.testing.assert_close(packed.w_hid[:, skip_after].double(), rounded(wt[:, pe_dim:]))
    else:
        assert packed.skip_layer == -1


def test_supported():
    assert fm.supported(NeRFMLP(num_layers=4)) and fm.supported(NeRFMLP(num_layers=8))
    assert fm.supported(NeRFMLP(num_layers=1, width=64, multires=4))
    assert fm.supported(NeRFMLP(num_layers=5))                                   # depth 5: no skip
    assert not fm.supported(NeRFMLP(num_layers=9))                               # deeper than MAX_LAYERS
    assert not fm.supported(NeRFMLP(num_layers=4, width=96))                     # not a power of two
    assert not fm.supported(object())                                            # never raises


def test_the_backend_never_picks_the_kernel_on_a_cpu(monkeypatch):
    from torch_utils import backend
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backend.select("auto", "cpu", torch.float16).render_mlp == "torch"
    assert backend.kernel_ok("fused_mlp", "cpu", torch.float16) is False
    assert backend.kernel_ok("fused_mlp", "not a device", torch.float16) is False      # never raises


def test_fused_evaluate_refuses_grad_and_bad_configs():
    nerf = _nerf(4)
    pts = _points(2, 10)
    weights = nerf.build_weights(torch.randn([2, 128]))                          # requires grad (G's parameters)
    with pytest.raises(RuntimeError, match="inference-only"):
        fm.fused_evaluate(weights, pts, dtype=torch.float16, **fm.mlp_config(nerf))
    with pytest.raises(RuntimeError, match="inference-only"):
        fm.fused_evaluate([(w.detach(), b.detach()) for w, b in weights], pts.requires_grad_(),
                          dtype=torch.float16, **fm.mlp_config(nerf))
    with torch.no_grad():
        cfg = fm.mlp_config(nerf)
        if os.environ.get("TRITON_INTERPRET") != "1":
            with pytest.raises(RuntimeError, match="needs (triton|CUDA)"):        # CPU tensors, no interpreter
                fm.fused_evaluate(weights, pts, dtype=torch.float16, **cfg)
        with pytest.raises(ValueError, match="dtype"):
            fm.pack_weights(weights, dtype=torch.float32, **cfg)
        with pytest.raises(ValueError, match="expected"):
            fm.pack_weights(weights[:-1], dtype=torch.float16, **cfg)
        with pytest.raises(ValueError, match="layer 1"):
            fm.pack_weights(weights, dtype=torch.float16, **dict(cfg, uses_skip=True, skip_after=0))
        with pytest.raises(ValueError, match="hidden layers"):
            fm.pack_weights(weights, dtype=torch.float16, **dict(cfg, num_layers=9))


# ----------------------------------------------------------------------------------------------------------------------
# The Triton kernel under the CPU interpreter (subprocess with TRITON_INTERPRET=1).

_INTERPRETER_SCRIPT = textwrap.dedent("""
    import json, torch
    from torch_utils.ops import fused_mlp as fm
    from training.networks.nerf import NeRFMLP

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    results = {}
    # (num_layers, multires, width, skip_after, N, block_n): no skip, skip after 4 (8 and 6 layers), skip after 0
    # with a 16-wide encoding tile, one layer, 5 layers (no skip); ragged last blocks (100 = 64 + 36, 3 * 32 + 4);
    # each with the unrolled and the pipelined (runtime loop) layer code.
    configs = [(4, 10, 128, 4, 100, 64), (8, 10, 128, 4, 100, 64), (6, 10, 64, 4, 100, 32),
               (3, 4, 32, 0, 100, 32), (1, 10, 16, 4, 37, 16), (5, 2, 32, 4, 5, 16)]
    for (L, mr, W, sa, N, bn), pipe in [(c, p) for c in configs for p in (False, True)]:
        us = L > sa + 1
        weights = fm.random_weights(2, L, W, mr, sa, generator=torch.Generator().manual_seed(L))
        pts = torch.rand([2, N, 3], generator=torch.Generator().manual_seed(10 + L)) * 2.4 - 1.2
        got = fm.fused_evaluate(weights, pts, L, mr, sa, us, torch.float16, block_n=bn, num_warps=4, pipeline=pipe)
        ref = fm.reference_evaluate(weights, pts, L, mr, sa, us, torch.float16)
        results[f"L{L}-mr{mr}-W{W}-skip{sa if us else None}-N{N}-bn{bn}-pipe{pipe}"] = dict(
            shape=list(got.shape), dtype=str(got.dtype), finite=bool(got.isfinite().all()), rel=rel(got, ref),
            max_abs=(got - ref).abs().max().item() / ref.abs().max().item())

    # A real NeRFMLP (8 layers, skip) through build_weights, packed once and reused for two chunks.
    torch.manual_seed(0)
    nerf = NeRFMLP(num_layers=8)
    with torch.no_grad():
        weights = nerf.build_weights(torch.randn([2, 128]))
        pts = torch.rand([2, 130, 3]) * 2.4 - 1.2
        cfg = fm.mlp_config(nerf)
        packed = fm.pack_weights(weights, dtype=torch.float16, **cfg)
        got = torch.cat([fm.fused_evaluate(packed, pts[:, :65], dtype=torch.float16, **cfg),
                         fm.fused_evaluate(packed, pts[:, 65:], dtype=torch.float16, **cfg)], dim=1)
        ref = fm.reference_evaluate(weights, pts, dtype=torch.float16, **cfg)
        full = nerf.evaluate(weights, pts)
    results["nerf8-packed"] = dict(shape=list(got.shape), dtype=str(got.dtype), finite=bool(got.isfinite().all()),
                                   rel=rel(got, ref), max_abs=(got - ref).abs().max().item() / ref.abs().max().item(),
                                   rel_fp32=rel(got, full))

    # The encoding's sin / cos against float64 over the range the encoding meets (|x| <= 16 at 2^9) and beyond.
    a = torch.cat([torch.linspace(-8192.0, 8192.0, 200001), torch.tensor([0.0, 0.7853982, -2.3561945, 1e5])])
    s, c = fm.kernel_sincos(a)
    a64 = a.double()
    results["sincos"] = dict(sin=(s.double() - a64.sin()).abs().max().item(),
                             cos=(c.double() - a64.cos()).abs().max().item())
    results["self_check"] = fm.self_check(torch.device("cpu"), torch.float16)      # the backend's check
    print("RESULTS " + json.dumps(results))
""")


def _run_interpreted(tmp_path: Path, name: str, script: str) -> dict:
    """Run `script` in a subprocess under Triton's CPU interpreter (the repository and tests/ importable, e.g. the
    `tolerances` helpers); returns the JSON of its last 'RESULTS ' line."""
    path = tmp_path / name
    path.write_text(script)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        [str(REPO), str(REPO / "tests")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, str(path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU CI): the kernel is only tested under the "
                                           "Triton interpreter or on a GPU")
def test_kernel_under_triton_interpreter(tmp_path):
    results = _run_interpreted(tmp_path, "run_fused_mlp_interpreted.py", _INTERPRETER_SCRIPT)
    assert results.pop("self_check") is True
    sincos = results.pop("sincos")
    assert sincos["sin"] < 1e-6 and sincos["cos"] < 1e-6, sincos
    for name, r in results.items():
        n = int(name.split("-N")[1].split("-")[0]) if "-N" in name else 130
        assert r["shape"] == [2, n, 4] and r["dtype"] == "torch.float32" and r["finite"], (name, r)
        assert r["rel"] < 1e-3 and r["max_abs"] < 5e-3, (name, r)     # same rounding as the reference
    assert results["nerf8-packed"]["rel_fp32"] < 1e-2, results["nerf8-packed"]   # fp16 vs the fp32 module


# ----------------------------------------------------------------------------------------------------------------------
# The GPU compile path without a GPU: ahead-of-time compilation for sm_90 / sm_80 with triton's bundled ptxas.

def _aot_compile(cc: int, dtype: str, num_layers: int, skip_layer: int, pipeline: bool) -> tuple[str, str]:
    """Compile _fused_mlp_kernel for cuda:cc with the default launch parameters and the specialisation a real launch
    gets (16-byte aligned pointers, N % 16 == 0). Returns (PTX, ptxas -v report)."""
    from triton.compiler import ASTSource

    launch = fm.default_launch(torch.device("cuda"))
    sig = {"pts_ptr": "*fp32", "out_ptr": "*fp32", "w_pe_ptr": f"*{dtype}", "w_skip_pe_ptr": f"*{dtype}",
           "w_hid_ptr": f"*{dtype}", "w_out_ptr": f"*{dtype}", "b_hid_ptr": "*fp32", "b_out_ptr": "*fp32", "N": "i32"}
    const = dict(NUM_LAYERS=num_layers, SKIP_LAYER=skip_layer, HID_SLOTS=max(num_layers - 1, 1), MULTIRES=10,
                 PE_HALF=fm.pe_half_width(10), WIDTH=128, OUT_PAD=fm.OUT_PAD, OUT_FEATURES=fm.OUT_FEATURES,
                 BLOCK_N=launch["block_n"], PIPELINE=pipeline)
    sig.update({k: "constexpr" for k in const})
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(9)}
    src = ASTSource(fn=fm._fused_mlp_kernel, signature=sig, constexprs=const, attrs=attrs)
    return ptx_and_report(src, cc, launch["num_warps"], launch["num_stages"])


def ptx_and_report(src, cc: int, num_warps: int, num_stages: int) -> tuple[str, str]:
    """Compile a triton ASTSource for cuda:cc (no GPU needed) -> (PTX, ptxas -v report, empty without ptxas)."""
    import triton
    from triton.backends.compiler import GPUTarget
    kernel = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = kernel.asm["ptx"]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    report = ""
    if ptxas.exists():
        arch = "sm_90a" if cc == 90 else f"sm_{cc}"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "k.ptx"
            path.write_text(ptx)
            proc = subprocess.run([str(ptxas), f"-arch={arch}", "-v", str(path), "-o", os.devnull],
                                  capture_output=True, text=True, timeout=120)
            report = proc.stdout + proc.stderr
    return ptx, report


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU CI): the GPU compile path is not checked")
@pytest.mark.parametrize("cc,dtype,num_layers,skip_layer,pipeline", [
    (90, "bf16", 4, -1, True), (90, "fp16", 8, 5, True), (90, "bf16", 4, -1, False), (80, "bf16", 8, 5, True)])
def test_kernel_compiles_for_gpus(cc, dtype, num_layers, skip_layer, pipeline):
    """Ahead-of-time compile (no GPU needed): tensor-core instructions and (pipelined) async copies are emitted.

    Register spills are a speed property, not asserted here (bench/micro_fused_mlp.py times launch choices): on
    an H200 (triton 3.6) ptxas reported a 24-byte stack for (80, bf16, 8 layers)."""
    pytest.importorskip("triton.compiler")
    try:
        ptx, report = _aot_compile(cc, dtype, num_layers, skip_layer, pipeline)
    except ImportError as exc:                                   # a triton without this AOT API
        pytest.skip(f"triton's ahead-of-time API differs: {exc}")
    assert ("wgmma.mma_async" if cc == 90 else "mma.sync") in ptx, report
    if pipeline:
        assert "cp.async" in ptx, report                         # weight tiles prefetched asynchronously


_G_SCRIPT = textwrap.dedent("""
    import json, torch
    from torch_utils import backend
    from training.networks.generator import Generator
    torch.manual_seed(0)
    G = Generator(width=16, num_layers=2, img_resolution=8, num_samples=6)
    z = torch.randn(2, G.z_dim)
    c2w = G.sample_poses(2, generator=torch.Generator().manual_seed(1))
    sel = backend.select("auto", "cpu")                       # under the interpreter: the kernel renders
    with torch.no_grad():
        w = G.mapping(z)
        ref = G.synthesis(w, c2w)                             # the reference backend: the PyTorch path
        fused = G.synthesis(w, c2w, mlp="fused", ray_chunk=40)
        with backend.use(sel):
            auto_path = G.render_mlp()
            auto = G.synthesis(w, c2w, ray_chunk=40)           # the tools' default picks the kernel here
            torch_path = G.synthesis(w, c2w, mlp="torch", ray_chunk=40)
    with backend.use(sel):
        grad_img = G.synthesis(w, c2w, ray_chunk=40)          # autograd on: never the forward-only kernel
    with torch.autocast("cpu", dtype=torch.float16):   # the default path in fp16, for scale
        with torch.no_grad():
            half = G.synthesis(w, c2w)
    print("RESULTS " + json.dumps({"fused": (fused - ref).abs().max().item(),
                                   "half": (half.float() - ref).abs().max().item(),
                                   "render_mlp": sel.render_mlp, "auto_path": auto_path,
                                   "auto_is_fused": torch.equal(auto, fused),
                                   "grad_vs_ref": (grad_img.detach() - ref).abs().max().item(),
                                   "torch_vs_ref": (torch_path - ref).abs().max().item()}))
""")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU CI): the kernel is only tested under the "
                                           "Triton interpreter or on a GPU")
def test_generator_renders_through_the_fused_mlp_under_the_interpreter(tmp_path):
    res = _run_interpreted(tmp_path, "run_fused_generator.py", _G_SCRIPT)
    assert 0 < res["fused"] < 0.05, res          # fp16 matmuls: close to fp32, but not the fp32 path itself
    # impl=auto (the tools' default) picks the kernel where it can run, and only without grad.
    assert res["render_mlp"] == "fused" and res["auto_path"] == "fused" and res["auto_is_fused"], res
    assert res["grad_vs_ref"] < 1e-6 and res["torch_vs_ref"] < 1e-6, res


# ----------------------------------------------------------------------------------------------------------------------
# Which MLP path a render takes (Generator.render_mlp): runs everywhere, no triton needed.

def _small_generator(**kw):
    from training.networks.generator import Generator
    torch.manual_seed(0)
    return Generator(**{**dict(width=16, num_layers=2, img_resolution=8, num_samples=6), **kw})


def test_mlp_argument_is_checked():
    G = _small_generator()
    w, c2w = G.mapping(torch.randn(1, G.z_dim)), G.sample_poses(1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), pytest.raises(ValueError, match="mlp must be None, 'fused' or 'torch'"):
        G.synthesis(w, c2w, mlp="auto")


def test_render_path_follows_the_backend_device_and_shape(monkeypatch):
    from torch_utils import backend
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    G = _small_generator()
    w, c2w = G.mapping(torch.randn(2, G.z_dim)), G.sample_poses(2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = G.synthesis(w, c2w, mlp="torch")
        for sel in (backend.REFERENCE, backend.select("auto", "cpu")):
            with backend.use(sel):
                assert G.render_mlp() == "torch"
                assert torch.equal(G.synthesis(w, c2w), ref)
    fused_cpu = backend.REFERENCE.replace(impl="auto", device="cpu", render_mlp="fused")
    with backend.use(fused_cpu):
        assert G.render_mlp() == "fused" and G.render_mlp("cuda:0") == "torch"   # chosen for another device
        assert _small_generator(width=24).render_mlp() == "torch"              # a shape the kernel does not cover
        img = G.synthesis(w, c2w)                  # grad mode: the PyTorch path, differentiable
    img.sum().backward()
    assert G.nerf.layers[0].weight.grad is not None


_FAKES_SCRIPT = textwrap.dedent("""
    import json, torch
    from training.config import resolve_config
    from training.loss import HyperNeRFGANLoss
    from training.training_loop import build_networks
    cfg = resolve_config("smoke")
    nets = build_networks(cfg, 32, torch.device("cpu"))
    loss = HyperNeRFGANLoss(nets.G, nets.D, None, cfg.patch_size, 1.0, generator=torch.Generator().manual_seed(0),
                            fakes_mlp="fused")
    loss._render = torch.compile(loss._render_eager, backend="aot_eager")   # as training compiles it
    state = loss.generator.get_state()
    with torch.no_grad():
        fused = loss.run_G(2, mlp="fused")
        loss.generator.set_state(state)
        plain = loss.run_G(2, mlp="torch")
    print("RESULTS " + json.dumps(dict(shape=list(fused.shape), max_abs=(fused - plain).abs().max().item(),
                                       scale=plain.abs().mean().item())))
""")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU CI): the kernel is only tested under the "
                                           "Triton interpreter or on a GPU")
def test_dmain_fakes_through_the_kernel_inside_a_compiled_render(tmp_path):
    """Dmain's no-grad fakes (the backend's fakes_mlp): the fused kernel called from a torch.compile'd render (its
    launch stays eager) gives the patch of the PyTorch path, from the same draws."""
    r = _run_interpreted(tmp_path, "run_fakes_interpreted.py", _FAKES_SCRIPT)
    assert r["shape"] == [2, 3, 16, 16]
    assert r["max_abs"] < 5e-3 and r["scale"] > 0.01, r


def test_fakes_path_follows_the_step_precision(monkeypatch):
    from torch_utils import backend
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backend, "HAS_TRITON", True)
    assert backend.select("auto", "cpu", torch.float16).fakes_mlp == "fused"
    assert backend.select("auto", "cpu", None).fakes_mlp == "torch"             # the kernel is fp16: fp16 steps only
    assert backend.select("reference", "cpu", torch.float16).fakes_mlp == "torch"
