"""The backend (torch_utils/backend.py): what `select` chooses from plain values, the self-check gate and the off
switch, the one start-up line; every per-op choice computes the reference's function (G's layers, the epilogue conv,
the FIR); and the layering rules (which package may import which)."""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
import torch

from torch_utils import backend
from torch_utils.ops import conv_gemm
from training.networks import hyper
from training.networks.nerf import NeRFMLP

ROOT = Path(__file__).resolve().parents[1]


def _run(mlp: NeRFMLP, w: torch.Tensor, pts: torch.Tensor, layers: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """mlp's raw output and every parameter gradient of a fixed weighting of it, with G's layers as `layers`."""
    with backend.use(backend.REFERENCE.replace(g_layers=layers)):
        mlp.zero_grad()
        raw = mlp(w, pts)                                                   # [B, N, 4]
        (raw * torch.linspace(-1, 1, raw.numel(), dtype=raw.dtype).view_as(raw)).sum().backward()
    return raw.detach(), [p.grad.clone() for p in mlp.parameters()]


# ----------------------------------------------------------------------------------------------------------------------
# The decision.

def test_reference_and_cpu_choices():
    ref = backend.select("reference", "cpu")
    assert ref == backend.REFERENCE.replace(impl="reference", device="cpu")
    assert not (ref.step_graphs or ref.compile_g or ref.compile_d or ref.channels_last or ref.epilogue_split)
    assert (ref.g_layers, ref.fir, ref.r1_fir, ref.render_mlp, ref.fakes_mlp) == \
        ("plain", "reference", "reference", "torch", "torch")
    auto = backend.select("Auto", torch.device("cpu"), torch.float16)
    assert auto.impl == "auto" and not (auto.step_graphs or auto.compile_g or auto.compile_d or auto.ema_stream)
    assert (auto.g_layers, auto.fir, auto.epilogue_split) == ("tuned", "pool", True)
    with pytest.raises(ValueError, match="not one of auto, reference"):
        backend.select("fast", "cpu")


@pytest.fixture()
def fake_gpu(monkeypatch):
    """A CUDA device of a chosen compute capability, with every kernel self-check answered by `checks` (and counted)
    instead of run; triton counts as installed."""
    state = {"cc": (9, 0), "calls": [], "ok": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state["cc"])
    monkeypatch.setattr(backend, "HAS_TRITON", True)
    monkeypatch.setattr(backend, "_CHECKED", {})
    monkeypatch.delenv(backend.OFF_SWITCH, raising=False)

    def check(name):
        return lambda device, dtype: state["calls"].append((name, device.index, dtype)) or (state["ok"], "no")
    monkeypatch.setattr(backend, "_KERNELS", {name: (min_cc, check(name), fallback)
                                             for name, (min_cc, _, fallback) in backend._KERNELS.items()})
    return state


def test_auto_on_an_h100_takes_every_fast_path(fake_gpu):
    sel = backend.select("auto", "cuda", torch.float16)
    assert sel.device == "cuda:0"
    assert sel.step_graphs and sel.compile_g and sel.compile_d and sel.channels_last and sel.ema_stream
    assert (sel.g_layers, sel.fakes_mlp, sel.render_mlp, sel.fir, sel.r1_fir, sel.epilogue_split) == \
        ("fused", "fused", "fused", "pool", "triton", True)
    assert sorted(c[0] for c in fake_gpu["calls"]) == ["fir", "fir", "fused_mlp", "object_linear"]
    backend.select("auto", "cuda:0", torch.float16)
    assert len(fake_gpu["calls"]) == 4                                          # every check once per process
    bf16 = backend.select("auto", "cuda", torch.bfloat16)
    assert bf16.fakes_mlp == "torch" and bf16.render_mlp == "fused"             # the fakes kernel is fp16 only
    fp32 = backend.select("auto", "cuda", None)
    assert fp32.g_layers == "tuned" and fp32.fakes_mlp == "torch"               # no 16-bit layers to fuse
    fake_gpu["calls"].clear()
    backend._CHECKED.clear()
    tool = backend.select("auto", "cuda", training=False)                      # generate.py, calc_metrics.py
    assert (tool.render_mlp, tool.g_layers, tool.training) == ("fused", "tuned", False)
    assert [c[0] for c in fake_gpu["calls"]] == ["fused_mlp"]                    # no training kernel checked
    assert tool.describe() == "Backend: impl=auto on cuda:0 (rendering): fused Triton MLP."
    assert backend.resolve_precision("auto", "cuda") == ("fp16", torch.float16)


def test_auto_on_a_t4_keeps_fp16_and_no_tensor_core_kernels(fake_gpu):
    fake_gpu["cc"] = (7, 5)
    assert backend.resolve_precision("auto", "cuda") == ("fp16", torch.float16)
    sel = backend.select("auto", "cuda", torch.float16)
    assert (sel.g_layers, sel.fakes_mlp, sel.render_mlp) == ("tuned", "torch", "torch")
    assert sel.step_graphs and sel.compile_g and sel.compile_d and sel.r1_fir == "triton"
    assert {c[0] for c in fake_gpu["calls"]} == {"fir"}                         # no tensor-core self-check child
    fake_gpu["cc"] = (7, 0)
    assert backend.resolve_precision("auto", "cuda") == ("fp32", None)


def test_a_failed_self_check_falls_back_with_one_warning(fake_gpu):
    fake_gpu["ok"] = False
    with pytest.warns(UserWarning, match="self-check"):
        sel = backend.select("auto", "cuda", torch.float16)
    assert (sel.g_layers, sel.render_mlp, sel.r1_fir) == ("tuned", "torch", "depthwise")


def test_off_switch_skips_the_kernels_and_their_checks(fake_gpu, monkeypatch):
    monkeypatch.setenv(backend.OFF_SWITCH, "0")
    sel = backend.select("auto", "cuda", torch.float16)
    assert fake_gpu["calls"] == []
    assert (sel.g_layers, sel.render_mlp, sel.r1_fir) == ("tuned", "torch", "depthwise")
    assert sel.step_graphs and sel.compile_g                                    # graphs and compile stay on


def test_the_start_line_names_the_choices(capsys, fake_gpu):
    sel = backend.select("auto", "cuda", torch.float16)
    with backend.use(backend.REFERENCE):
        backend.activate(sel)
        assert backend.current() is sel
        backend.activate(backend.REFERENCE, quiet=True)
    assert backend.current() is backend.REFERENCE
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Backend: impl=auto on cuda:0: CUDA graphs, G compiled (fused")
    assert "R1 FIR triton" in lines[0] and "renders fused Triton MLP" in lines[0]
    assert backend.select("reference", "cpu").describe() == "Backend: impl=reference on cpu (plain eager PyTorch)."


_MARK = backend._CHILD_MARK


@pytest.mark.parametrize("code, ok, why", [
    (f"import sys; print('{_MARK} ok'); sys.exit(0)", True, ""),
    (f"import sys; print('{_MARK} mismatch'); sys.exit(0)", False, "differs from the reference"),
    # what a kernel fault looks like from outside: an error on stderr, a non-zero exit, no result line
    ("import sys; sys.stderr.write('RuntimeError: an illegal memory access was encountered\\n'); sys.exit(1)",
     False, "exit status 1): RuntimeError: an illegal memory access"),
    ("import os; os.abort()", False, "exit status -6"),
    # the child imports this repository's torch_utils whatever the caller's working directory
    (f"import sys; from torch_utils.ops import fused_mlp; print('{_MARK} ok'); sys.exit(0)", True, ""),
])
def test_child_self_check_reports_the_child_outcome(code, ok, why, tmp_path, monkeypatch):
    """The tensor-core kernels' self-checks run in a child process, so a faulting kernel cannot take this process's
    CUDA context with it; the parent reads the child's outcome."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(backend._CHILD_CODE, "probe", code)
    got_ok, got_why = backend._child_check("probe", torch.device("cuda", 0), torch.float16)
    assert got_ok is ok and why in got_why


# ----------------------------------------------------------------------------------------------------------------------
# Every choice computes the reference's function.

@pytest.mark.parametrize("num_layers", [4, 8])          # 8 layers: the skip layer's [PE, h] input is padded too
def test_g_layer_forms_match_the_plain_path(num_layers: int) -> None:
    torch.manual_seed(0)
    mlp = NeRFMLP(num_layers=num_layers, width=32, w_dim=16, rank=3).double()
    w = torch.randn(3, 16, dtype=torch.float64)
    pts = torch.randn(3, 4096, 3, dtype=torch.float64)
    ref_raw, ref_grads = _run(mlp, w, pts, "plain")
    assert all(g.abs().sum() > 0 for g in ref_grads)
    for layers in ("tuned", "fused"):
        raw, grads = _run(mlp, w, pts, layers)
        torch.testing.assert_close(raw, ref_raw, rtol=1e-12, atol=1e-12)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-11)


def test_split_weight_gradient_in_half_precision_is_close() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 8192, 63)
    g = torch.randn(2, 8192, 4)
    want = torch.bmm(x.double().transpose(1, 2), g.double())                      # [2, 63, 4]
    for split in (1, 8):
        got = hyper.weight_grad(x.bfloat16(), g.bfloat16(), split)
        assert got.shape == (2, 63, 4) and got.dtype == torch.bfloat16
        rel = (got.double() - want).norm() / want.norm()
        assert rel < 2e-2, (split, rel)


def test_split_count() -> None:
    assert hyper.split_count(4, 32768) == 32             # T4 patch: 32 chunks of 1024 points (the minimum chunk)
    assert hyper.split_count(4, 262144) == 64            # standard patch: 4 * 64 = 256 partial GEMMs
    assert hyper.split_count(4, 32768, min_rows=512) == 64
    assert hyper.split_count(4, 1000) == 1               # too few points to split
    assert hyper.split_count(3, 15 * 1024) == 8          # the largest power of two leaving chunks >= 1024
    assert hyper.split_count(64, 4096) == 4              # 256 partial GEMMs already


def test_epilogue_split_rule_and_function() -> None:
    """The split by taps runs only where the backend allows it and the GEMM has <= 64 rows; both forms equal the
    conv (float64, to second order)."""
    with backend.use(backend.REFERENCE.replace(epilogue_split=True)):
        assert conv_gemm.split_taps(64) and not conv_gemm.split_taps(128)
    with backend.use(backend.REFERENCE):
        assert not conv_gemm.split_taps(64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, 3, 3, generator=gen, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, w, padding=1)
    for split in (False, True):
        got = conv_gemm.conv_as_gemm(x, w, split=split)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda t: conv_gemm.conv_as_gemm(t, w, split=True), (x,))


# ----------------------------------------------------------------------------------------------------------------------
# Layers: torch_utils never imports training/ or metrics/; metrics/ never imports the networks; config.py imports
# neither ops nor networks; the package import graph has no cycle.

def _imports(path: Path, modules: set[str] | None = None) -> set[str]:
    """Modules `path` imports (anywhere in it). With `modules`: `from pkg import sub` counts as importing pkg.sub
    alone where that is one of `modules` (as Python resolves it), else pkg."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            if modules is None:
                names.update({node.module} | subs)
            else:
                names.update({m for m in subs if m in modules} or {node.module})
    return names


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_layering_rules():
    for path in (ROOT / "torch_utils").rglob("*.py"):
        bad = [m for m in _imports(path) if m.split(".")[0] in ("training", "metrics")]
        assert not bad, (path, bad)
    for path in (ROOT / "metrics").rglob("*.py"):
        bad = [m for m in _imports(path) if m.startswith("training.networks")]
        assert not bad, (path, bad)
    bad = [m for m in _imports(ROOT / "training" / "config.py")
           if m.startswith(("torch_utils.ops", "training.networks", "torch_utils.backend"))]
    assert not bad, bad


def test_no_import_cycles():
    packages = ("torch_utils", "training", "metrics", "dnnlib")
    paths = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module(p).removesuffix(".__init__"): p for p in paths}
    graph = {m: {i for i in _imports(p, set(modules)) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(n):] + [n])}")
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [m])


def test_nothing_outside_the_backend_and_ops_asks_about_the_gpu_or_triton():
    """Compute capability, Triton and self-check state are the backend's business (and the kernels' own)."""
    words = ("get_device_capability", "import triton", "TRITON_INTERPRET", "self_check")
    for pkg in ("training", "metrics", "dnnlib"):
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert not [w for w in words if w in text], path
    for path in (ROOT / name for name in ("train.py", "generate.py", "calc_metrics.py", "dataset_tool.py")):
        assert not [w for w in words if w in path.read_text(encoding="utf-8")], path


def test_every_fir_form_matches_the_reference():
    from torch_utils.ops import fir
    f = fir.make_fir_filter()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    for padding, down, impl in itertools.product((1, 2), (1, 2), ("pool", "depthwise", "triton", "reference")):
        torch.testing.assert_close(fir.fir2d(x, f, padding, down, impl=impl), fir.fir2d_reference(x, f, padding, down))
        with backend.use(backend.REFERENCE.replace(fir=impl)):
            torch.testing.assert_close(fir.fir2d(x, f, padding, down), fir.fir2d_reference(x, f, padding, down))


def test_auto_and_reference_compute_the_same_g_and_d():
    """impl=auto on a CPU (tuned layers, pooled FIR, split epilogue) against impl=reference, in float64: G's patch,
    D's logits, and every parameter gradient of both through one loss."""
    from training.networks.discriminator import Discriminator
    from training.networks.generator import Generator
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, num_layers=6, width=32, rank=3, img_resolution=16, num_samples=6).double()
    D = Discriminator(16, channel_base=256, channel_max=32).double()
    gen = torch.Generator().manual_seed(1)
    z = G.sample_z(4, generator=gen).double()
    c2w = G.sample_poses(4, generator=gen).double()
    window = G.sample_windows(4, 16, generator=gen)
    results = []
    for sel in (backend.select("reference", "cpu"), backend.select("auto", "cpu")):
        with backend.use(sel):
            img = G(z, c2w, window=window, patch_size=16)
            logits = D(img)
            params = [*G.parameters(), *D.parameters()]
            grads = torch.autograd.grad(logits.square().sum(), params)
        results.append((img.detach(), logits.detach(), grads))
    (img_r, log_r, grads_r), (img_a, log_a, grads_a) = results
    torch.testing.assert_close(img_a, img_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(log_a, log_r, rtol=1e-10, atol=1e-12)
    for a, r in zip(grads_a, grads_r):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-12)
