"""Tests of the fused NeRF MLP (torch_utils/ops/fused_mlp.py).

Without a GPU: the PyTorch reference and the weight packing are checked everywhere; the Triton kernel itself runs
under Triton's CPU interpreter (TRITON_INTERPRET=1, in a subprocess so the setting cannot leak into other tests)
when triton is installed (`make install` adds it next to the CPU torch, so CI runs it), and is skipped otherwise.
The compiled GPU kernel is exercised by bench/micro_fused_mlp.py and by `available()`'s self-check on a CUDA machine.
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
    nerf = _nerf(num_layers)
    assert nerf.uses_skip == (num_layers == 8)
    w = torch.randn([3, 128], generator=torch.Generator().manual_seed(1))
    pts = _points(3, 50)
    with torch.no_grad():
        weights = nerf.build_weights(w)
        want = nerf.evaluate(weights, pts)
        got = fm.reference_evaluate(weights, pts, dtype=torch.float32, **fm.mlp_config(nerf))
    assert got.shape == (3, 50, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


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


def test_available_is_false_without_cuda_and_never_raises():
    assert fm.available("cpu") is False
    assert fm.available(torch.device("cpu"), torch.float16) is False
    assert fm.available(torch.device("cpu"), torch.float32) is False
    assert fm.available("not a device") is False
    if not torch.cuda.is_available():
        assert fm.available("cuda") is False


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
    results["self_check"] = fm._self_check(torch.device("cpu"), torch.float16)     # available()'s check
    print("RESULTS " + json.dumps(results))
""")


def _run_interpreted(tmp_path: Path, name: str, script: str) -> dict:
    """Run `script` in a subprocess under Triton's CPU interpreter; returns the JSON of its last 'RESULTS ' line."""
    path = tmp_path / name
    path.write_text(script)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
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
    from training.networks.generator import Generator
    torch.manual_seed(0)
    G = Generator(width=16, num_layers=2, img_resolution=8, num_samples=6)
    z = torch.randn(2, G.z_dim)
    c2w = G.sample_poses(2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w = G.mapping(z)
        ref = G.synthesis(w, c2w)
        fused = G.synthesis(w, c2w, fused_mlp=True, ray_chunk=40)
        auto_path = G.mlp_path("auto")
        auto = G.synthesis(w, c2w, mlp="auto", ray_chunk=40)          # the CLIs' default picks the kernel here
        required = G.synthesis(w, c2w, mlp="fused", ray_chunk=40)
        torch_path = G.synthesis(w, c2w, mlp="torch", ray_chunk=40)
    with torch.autocast("cpu", dtype=torch.float16):   # the default path in fp16, for scale
        with torch.no_grad():
            half = G.synthesis(w, c2w)
    print("RESULTS " + json.dumps({"fused": (fused - ref).abs().max().item(),
                                   "half": (half.float() - ref).abs().max().item(),
                                   "auto_path": auto_path, "grad_path": G.mlp_path("auto"),
                                   "auto_is_fused": torch.equal(auto, fused),
                                   "required_is_fused": torch.equal(required, fused),
                                   "torch_vs_ref": (torch_path - ref).abs().max().item()}))
""")


def test_generator_fused_mlp_flag_on_cpu_is_the_default_path():
    from training.networks.generator import Generator
    torch.manual_seed(0)
    G = Generator(width=16, num_layers=2, img_resolution=8, num_samples=6)
    w, c2w = G.mapping(torch.randn(2, G.z_dim)), G.sample_poses(2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(G.synthesis(w, c2w, fused_mlp=True), G.synthesis(w, c2w))   # no GPU: not used
    img = G.synthesis(w, c2w, fused_mlp=True)                    # grad mode: never the (forward-only) kernel
    img.sum().backward()
    assert G.nerf.layers[0].weight.grad is not None


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU CI): the kernel is only tested under the "
                                           "Triton interpreter or on a GPU")
def test_generator_renders_through_the_fused_mlp_under_the_interpreter(tmp_path):
    res = _run_interpreted(tmp_path, "run_fused_generator.py", _G_SCRIPT)
    assert 0 < res["fused"] < 0.05, res          # fp16 matmuls: close to fp32, but not the fp32 path itself
    # mlp='auto' (generate.py / calc_metrics.py's default) picks the kernel where it can run, and only without grad.
    assert res["auto_path"] == "fused" and res["grad_path"] == "torch", res
    assert res["auto_is_fused"] and res["required_is_fused"], res
    assert res["torch_vs_ref"] < 1e-6, res       # mlp='torch' stays the PyTorch path (only the chunking differs)


# ----------------------------------------------------------------------------------------------------------------------
# Choosing the MLP path (Generator.mlp_path, resolve_mlp): runs everywhere, no triton needed.

def _small_generator(**kw):
    from training.networks.generator import Generator
    torch.manual_seed(0)
    return Generator(**{**dict(width=16, num_layers=2, img_resolution=8, num_samples=6), **kw})


def test_mlp_mode_names_are_checked():
    from dnnlib.util import UserError
    from training.networks.generator import MLP_MODES, check_mlp_mode
    assert MLP_MODES == ("auto", "fused", "torch")
    assert check_mlp_mode("Auto") == "auto" and check_mlp_mode(" torch ") == "torch"
    for bad in ("fast", "", None, True):
        with pytest.raises(UserError, match="use one of auto, fused, torch"):
            check_mlp_mode(bad)
    G = _small_generator()
    w, c2w = G.mapping(torch.randn(1, G.z_dim)), G.sample_poses(1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), pytest.raises(UserError, match="use one of"):
        G.synthesis(w, c2w, mlp="triton")
    with torch.no_grad(), pytest.raises(UserError, match="contradicts"):
        G.synthesis(w, c2w, fused_mlp=True, mlp="torch")


def test_mlp_auto_on_cpu_is_the_torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    G = _small_generator()
    w, c2w = G.mapping(torch.randn(2, G.z_dim)), G.sample_poses(2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert G.mlp_path("auto") == "torch" and G.mlp_path("torch") == "torch"
        ref = G.synthesis(w, c2w, mlp="torch")
        assert torch.equal(G.synthesis(w, c2w, mlp="auto"), ref)
        assert torch.equal(G.synthesis(w, c2w), ref)                  # the library default: the PyTorch path
    img = G.synthesis(w, c2w, mlp="auto")                  # grad mode: the PyTorch path, differentiable
    img.sum().backward()
    assert G.nerf.layers[0].weight.grad is not None


def test_mlp_fused_where_it_cannot_run_is_a_clear_error(monkeypatch):
    from dnnlib.util import UserError
    from training.networks.generator import resolve_mlp
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    G = _small_generator()
    w, c2w = G.mapping(torch.randn(1, G.z_dim)), G.sample_poses(1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with pytest.raises(UserError, match=r"--mlp fused\) cannot run here: it needs a CUDA GPU .*sm_80.*on cpu.*"
                                            r"--mlp auto .* or --mlp torch"):
            G.synthesis(w, c2w, mlp="fused")
        assert "CUDA GPU" in G.fused_mlp_blocker("cpu")
    with pytest.raises(UserError, match="autograd is on"):             # the kernel is forward-only
        G.mlp_path("fused", "cpu")
    assert G.fused_mlp_blocker("cpu", grad_enabled=True).startswith("autograd")
    # An MLP shape the kernel does not cover (width 24: not a power of two) names the shape, whatever the device.
    odd = _small_generator(width=24)
    assert "outside the kernel's shapes" in odd.fused_mlp_blocker("cpu", grad_enabled=False)
    assert odd.mlp_path("auto", "cpu", grad_enabled=False) == "torch"
    # Generator-like modules without the fused path (the metrics' test stand-ins): auto -> torch, fused -> error.
    stand_in = torch.nn.Linear(2, 2)
    assert resolve_mlp(stand_in, "auto", "cpu") == "torch" and resolve_mlp(stand_in, "torch", "cpu") == "torch"
    with pytest.raises(UserError, match="Linear has no fused MLP path"):
        resolve_mlp(stand_in, "fused", "cpu")


@pytest.mark.skipif(HAS_TRITON, reason="checks the message of an install without triton")
def test_mlp_fused_under_the_interpreter_without_triton(monkeypatch):
    from dnnlib.util import UserError
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    G = _small_generator()
    assert "triton is not installed" in G.fused_mlp_blocker("cpu", grad_enabled=False)
    with pytest.raises(UserError, match="triton is not installed"):
        G.mlp_path("fused", "cpu", grad_enabled=False)


# ----------------------------------------------------------------------------------------------------------------------
# available(): the self-check runs in a child process, so a faulting kernel cannot take the caller's CUDA context.

_MARK = fm._CHILD_MARK


@pytest.mark.parametrize("code, ok, why", [
    (f"print('{_MARK} ok')", True, ""),
    (f"print('{_MARK} mismatch')", False, "differs from the reference"),
    # what a kernel fault looks like from outside: an error on stderr, a non-zero exit, no result line
    ("import sys; sys.stderr.write('RuntimeError: an illegal memory access was encountered\\n'); sys.exit(1)",
     False, "exit status 1): RuntimeError: an illegal memory access"),
    ("import os; os.abort()", False, "exit status -6"),
    # the child imports this repository's torch_utils whatever the caller's working directory
    ("from torch_utils.ops import fused_mlp; print(fused_mlp._CHILD_MARK, 'ok')", True, ""),
])
def test_isolated_self_check_reports_the_child_outcome(code, ok, why, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got_ok, got_why = fm._self_check_isolated(torch.device("cuda", 0), torch.float16, code=code)
    assert got_ok is ok and why in got_why


def test_available_falls_back_when_the_isolated_check_fails(monkeypatch):
    calls = []

    def fake_check(device, dtype):
        calls.append((device, dtype))
        return False, "the self-check process failed (exit status 1): illegal memory access"
    monkeypatch.setattr(fm, "triton", object())                 # as if triton were installed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(fm, "_self_check_isolated", fake_check)
    monkeypatch.setattr(fm, "_AVAILABLE", {})
    with pytest.warns(UserWarning, match="illegal memory access; using the PyTorch path"):
        assert fm.available(torch.device("cuda", 0)) is False
    assert fm.available(torch.device("cuda", 0)) is False         # cached: one child per device and dtype
    assert calls == [(torch.device("cuda", 0), torch.float16)]
    monkeypatch.setattr(fm, "_AVAILABLE", {})
    monkeypatch.setattr(fm, "_self_check_isolated", lambda device, dtype: (True, ""))
    assert fm.available(torch.device("cuda", 0)) is True


def test_env_switch_turns_the_kernel_off_without_a_self_check(monkeypatch):
    """HNG_FUSED_MLP=0: no self-check child (under NVIDIA MPS a faulting one breaks every client of the server)."""
    calls = []
    monkeypatch.setattr(fm, "triton", object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(fm, "_self_check_isolated", lambda device, dtype: calls.append(dtype) or (True, ""))
    monkeypatch.setattr(fm, "_AVAILABLE", {})
    monkeypatch.setenv("HNG_FUSED_MLP", "0")
    assert fm.available(torch.device("cuda", 0)) is False and calls == []
    monkeypatch.setenv("HNG_FUSED_MLP", "1")
    assert fm.available(torch.device("cuda", 0)) is True and calls == [torch.float16]


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
    print("RESULTS " + json.dumps(dict(path=nets.G.mlp_path("fused", "cpu", grad_enabled=False),
                                       shape=list(fused.shape), max_abs=(fused - plain).abs().max().item(),
                                       scale=plain.abs().mean().item())))
""")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU CI): the kernel is only tested under the "
                                           "Triton interpreter or on a GPU")
def test_dmain_fakes_through_the_kernel_inside_a_compiled_render(tmp_path):
    """Dmain's no-grad fakes (g_fakes_mlp): the fused kernel called from a torch.compile'd render (its launch
    stays eager) gives the patch of the PyTorch path, from the same draws."""
    r = _run_interpreted(tmp_path, "run_fakes_interpreted.py", _FAKES_SCRIPT)
    assert r["path"] == "fused" and r["shape"] == [2, 3, 16, 16]
    assert r["max_abs"] < 5e-3 and r["scale"] > 0.01, r


def test_fakes_path_on_cpu():
    from dnnlib.util import UserError
    from training.config import resolve_config
    from training.phases import fakes_mlp_path
    from training.training_loop import build_networks
    cfg = resolve_config("smoke")
    G = build_networks(cfg, 32, torch.device("cpu")).G
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert fakes_mlp_path(cfg, G, torch.device("cpu"), torch.float16) == "torch"
        with pytest.raises(UserError, match="g_fakes_mlp=fused"):
            fakes_mlp_path(resolve_config("smoke", sets=["g_fakes_mlp=fused"]), G, torch.device("cpu"),
                           torch.float16)
    assert fakes_mlp_path(cfg, G, torch.device("cpu"), None) == "torch"          # auto needs the fp16 step
    assert fakes_mlp_path(resolve_config("smoke", sets=["g_fakes_mlp=torch"]), G, torch.device("cpu"),
                          torch.float16) == "torch"
