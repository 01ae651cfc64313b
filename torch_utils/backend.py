"""Which implementation computes each op: decided once per process, in this module only.

`select(impl, device, dtype)` takes plain values (the user's `impl`, the device, the run's 16-bit dtype) and what is
installed (triton, the GPU's compute capability, whether the project's Triton kernels pass their self-checks) and
returns a `Selection`: one frozen record of every choice. `activate(selection)` makes it the process's current one
and prints it as one line; networks, the loss, the training step, metrics and tools ask `current()`. Nothing else in
the project inspects compute capability, Triton or self-check state.

impl:
  auto       the fast path where it runs: on a CUDA GPU the training step replayed as CUDA graphs, G's patch render
             and D (first-order phases) torch.compile'd, D in channels_last, G_ema updated on a side stream, G's
             per-object layers as the fused Triton `object_linear` chain (sm_80+, 16-bit) or tuned cuBLAS GEMMs,
             no-grad renders through the fused Triton MLP (sm_80+), the R1 phase's FIR as a Triton kernel; on a CPU
             the tuned GEMMs and the same filter forms, eager.
  reference  the plain eager PyTorch path every fast path is tested against: no graphs, no compile, NCHW, plain
             baddbmm layers, the FIR as a sum of shifted slices, the epilogue conv as one GEMM.
Every choice computes the same function; they differ in speed and in rounding.

Emergency off switch: HNG_KERNELS=0 in the environment keeps the project's own Triton kernels (fused MLP,
object_linear, FIR) off and skips their self-checks, e.g. for several runs sharing one GPU under NVIDIA MPS, where
one faulting kernel breaks every client of the server. torch.compile and CUDA graphs stay on.

Benchmarks and tests override single choices with `use(current().replace(...))`, never through the config.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator

import torch

from torch_utils.ops import triton_support

IMPLS = ("auto", "reference")
OFF_SWITCH = "HNG_KERNELS"
TENSOR_CORE_DOT = (8, 0)        # Triton lowers tl.dot to FMA loops before sm_80 (a T4 is sm_75): the fused MLP and
                                # object_linear kernels run from sm_80 on; the memory-bound FIR kernel on any GPU
FP16_TENSOR_CORES = (7, 5)      # precision auto = fp16 (with loss scaling) from sm_75 (T4) on; bf16 only on request
SELF_CHECK_TIMEOUT_S = 900      # first compilation of a kernel's check configurations


@dataclasses.dataclass(frozen=True)
class Selection:
    """Every implementation choice of a process. The defaults are the reference path."""

    impl: str = "reference"      # what the user asked for (auto | reference)
    device: str = "cpu"          # the device the choices were made for
    step_graphs: bool = False    # training step replayed as CUDA graphs, reals on the GPU when they fit
    compile_g: bool = False      # torch.compile G's patch render (mapping .. compositing)
    compile_d: bool = False      # torch.compile D for the first-order phases (R1 stays eager)
    channels_last: bool = False  # D's conv blocks in NHWC (both phases)
    ema_stream: bool = False     # G_ema updated on a side CUDA stream while Dmain runs
    g_layers: str = "plain"      # G's per-object layers: fused (object_linear chain) | tuned | plain (baddbmm)
    fakes_mlp: str = "torch"     # Dmain's no-grad fakes: fused (the fp16 render kernel) | torch
    render_mlp: str = "torch"    # other no-grad renders (metrics, tools, probes): fused | torch
    fir: str = "reference"       # D's [1, 3, 3, 1] filter in the first-order phases: pool | depthwise | reference
    r1_fir: str = "reference"    # ... in the twice-differentiated R1 phase: triton | depthwise | reference
    epilogue_split: bool = False  # D's 4x4 epilogue conv split by kernel taps where it pays (`conv_gemm`)
    training: bool = True        # False: chosen for rendering only (the tools); training-only kernels not checked

    def replace(self, **changes) -> "Selection":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line: what was chosen."""
        if self.impl == "reference":
            return f"Backend: impl=reference on {self.device} (plain eager PyTorch)."
        g = {"fused": "fused Triton layers", "tuned": "tuned GEMMs", "plain": "plain GEMMs"}[self.g_layers]
        if not self.training:
            return (f"Backend: impl=auto on {self.device} (rendering): "
                    f"{'fused Triton MLP' if self.render_mlp == 'fused' else f'PyTorch MLP, {g}'}.")
        parts = [("CUDA graphs" if self.step_graphs else "eager step"),
                 f"G {'compiled' if self.compile_g else 'eager'} ({g}"
                 f"{', fused-kernel fakes' if self.fakes_mlp == 'fused' else ''})",
                 f"D {'compiled' if self.compile_d else 'eager'} ({'channels_last' if self.channels_last else 'NCHW'}"
                 f"; FIR {self.fir}, R1 FIR {self.r1_fir})",
                 f"renders {'fused Triton MLP' if self.render_mlp == 'fused' else 'PyTorch MLP'}"]
        if self.ema_stream:
            parts.append("G_ema on a side stream")
        return f"Backend: impl=auto on {self.device}: " + ", ".join(parts) + "."


REFERENCE = Selection()
_current = REFERENCE


def current() -> Selection:
    """The process's selection (the reference path until an entry point activates another)."""
    return _current


def activate(selection: Selection, quiet: bool = False) -> Selection:
    """Make `selection` the process's current one and print its line (unless quiet)."""
    global _current
    if not quiet:
        print(selection.describe(), flush=True)
    _current = selection
    return selection


@contextlib.contextmanager
def use(selection: Selection) -> Iterator[Selection]:
    """`selection` inside the block, the previous one after it (no line printed): tests, benchmarks, the R1 phase."""
    global _current
    old, _current = _current, selection
    try:
        yield selection
    finally:
        _current = old


def check_impl(impl: object) -> str:
    """'auto' | 'reference' (any case) -> lower case; ValueError naming the choices otherwise."""
    name = impl.strip().lower() if isinstance(impl, str) else None
    if name not in IMPLS:
        raise ValueError(f"impl {impl!r} is not one of {', '.join(IMPLS)} (auto = the fast path where it runs; "
                         f"reference = plain eager PyTorch)")
    return name


# ----------------------------------------------------------------------------------------------------------------------
# What is installed.

HAS_TRITON = triton_support.INSTALLED
interpreting = triton_support.interpreting


def kernels_off() -> bool:
    """The emergency off switch (HNG_KERNELS=0): the project's Triton kernels are not used."""
    return os.environ.get(OFF_SWITCH, "").strip() == "0"


def capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability of a CUDA device, None for other devices or when it cannot be queried."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        return tuple(torch.cuda.get_device_capability(device))
    except Exception:  # pragma: no cover - a broken CUDA setup
        return None


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, torch.dtype | None]:
    """'auto' -> fp16 on CUDA GPUs with fp16 tensor cores (sm_75+: T4 and newer), fp32 on CPU / older GPUs.

    fp16 (with dynamic loss scaling for G and D) rather than bf16 on sm_80+: it is the T4's only 16-bit format, so
    every GPU runs the same numerics, and it is the more accurate of the two here (G-gradient cosine against fp32 on
    an H100: 0.9998 for fp16, 0.992 for bf16; docs/PERFORMANCE.md). Returns (name, 16-bit dtype or None).
    """
    if precision == "auto":
        cc = capability(torch.device(device))
        precision = "fp16" if cc is not None and cc >= FP16_TENSOR_CORES else "fp32"
    return precision, {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


# ----------------------------------------------------------------------------------------------------------------------
# Self-checks: each kernel once per (kernel, device, dtype) and process.

_CHECKED: dict[tuple, bool] = {}

# The fused MLP and object_linear checks run in a child process: a kernel that faults (an illegal memory access)
# leaves the CUDA context of its process unusable, so a check in this process could not fall back afterwards.
_CHILD_MARK = "KERNEL_SELF_CHECK"
_CHILD_CODE = {
    "fused_mlp": "from torch_utils.ops import fused_mlp as m; ok = m.self_check(dev, dt)",
    "object_linear": "from torch_utils.ops import object_linear as m; ok = m.self_check(dev, dt) < 1e-2",
}


def _child_check(kernel: str, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """The kernel's self-check in a fresh Python process on the same GPU: (passed, why not). Never raises."""
    code = ("import sys, torch\n"
            "dev, dt = torch.device('cuda', int(sys.argv[1])), getattr(torch, sys.argv[2])\n"
            f"{_CHILD_CODE[kernel]}\n"
            "torch.cuda.synchronize(dev)\n"
            f"print('{_CHILD_MARK}', 'ok' if ok else 'mismatch', flush=True)\n")
    root = str(Path(__file__).resolve().parents[1])   # the repository root: torch_utils is importable from there
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, "-c", code, str(device.index or 0), str(dtype).removeprefix("torch.")]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=root, timeout=SELF_CHECK_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"the self-check process did not finish ({type(exc).__name__}: {exc})"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_CHILD_MARK)]
    if proc.returncode == 0 and lines and lines[-1].split()[-1] == "ok":
        return True, ""
    if proc.returncode == 0 and lines:
        return False, "its result differs from the reference"
    tail = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()][-1:] or ["no output"]
    return False, f"the self-check process failed (exit status {proc.returncode}): {tail[0][:300]}"


def _probe_input(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(1, 1, 4, 4, device=device, dtype=dtype)


def _fir_check(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Both FIR kernels launched once on a tiny tensor, in this process (no tensor-core code to fault)."""
    from torch_utils.ops import fir_kernel
    try:
        fir_kernel.fir_adjoint(fir_kernel.fir_down(_probe_input(device, dtype), 1, 2), 1, 2, (4, 4))
    except Exception as exc:  # noqa: BLE001 - any compiler or launcher failure
        return False, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    return True, ""


_KERNELS = {  # name -> (minimum compute capability, the check, what runs instead when it fails)
    "fused_mlp": (TENSOR_CORE_DOT, lambda d, t: _child_check("fused_mlp", d, t), "the PyTorch MLP"),
    "object_linear": (TENSOR_CORE_DOT, lambda d, t: _child_check("object_linear", d, t), "cuBLAS GEMMs"),
    "fir": ((0, 0), _fir_check, "a depthwise conv"),
}


def kernel_ok(kernel: str, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether one of the project's Triton kernels should run on a CUDA `device` in `dtype`: not switched off,
    triton installed, the compute capability high enough, and its self-check passed (run once per device and dtype,
    cached; a failure warns once with the reason). Never raises; call it outside CUDA-graph capture."""
    try:
        device = torch.device(device)
        if kernels_off() or not HAS_TRITON or device.type != "cuda" or not torch.cuda.is_available():
            return False
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (kernel, device.index, dtype)
        if key not in _CHECKED:
            min_cc, check, fallback = _KERNELS[kernel]
            ok = (capability(device) or (0, 0)) >= min_cc
            if ok:
                try:
                    ok, why = check(device, dtype)
                except Exception as exc:  # noqa: BLE001 - compile errors, launch errors, ...
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                if not ok:
                    warnings.warn(f"{kernel} kernel self-check on {device} ({dtype}): {why}; using {fallback}")
            _CHECKED[key] = ok
        return _CHECKED[key]
    except Exception:  # noqa: BLE001
        return False


# ----------------------------------------------------------------------------------------------------------------------
# The decision.

def select(impl: str, device: torch.device | str, dtype: torch.dtype | None = None,
           training: bool = True) -> Selection:
    """Every implementation choice for `impl` on `device`, with `dtype` the training step's 16-bit dtype (None: fp32
    or no training). Runs each needed self-check once. The choices of impl=auto on a CUDA GPU are the ones measured
    fastest at the T4 setting (docs/PERFORMANCE.md); on a CPU, auto keeps the eager step. training=False (the
    rendering tools): only the render path is chosen, and only its kernel is checked."""
    impl = check_impl(impl)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if impl == "reference":
        return Selection(impl=impl, device=str(device))
    if device.type == "cuda" and not training:
        render = "fused" if kernel_ok("fused_mlp", device, torch.float16) else "torch"
        return Selection(impl=impl, device=str(device), g_layers="tuned", render_mlp=render, fir="pool",
                         r1_fir="depthwise", epilogue_split=True, training=False)
    if device.type == "cuda":
        render = "fused" if kernel_ok("fused_mlp", device, torch.float16) else "torch"
        fused_layers = dtype is not None and kernel_ok("object_linear", device, dtype)
        fir_dtypes = {torch.float32} | ({dtype} if dtype is not None else set())
        r1_triton = all(kernel_ok("fir", device, dt) for dt in fir_dtypes)
        return Selection(impl=impl, device=str(device), step_graphs=True, compile_g=True, compile_d=True,
                         channels_last=True, ema_stream=True, g_layers="fused" if fused_layers else "tuned",
                         fakes_mlp=render if dtype == torch.float16 else "torch", render_mlp=render, fir="pool",
                         r1_fir="triton" if r1_triton else "depthwise", epilogue_split=True)
    # CPU (and other devices): eager; under Triton's CPU interpreter the kernels run there too (the tests).
    interp = interpreting() and HAS_TRITON and not kernels_off()
    render = "fused" if interp else "torch"
    return Selection(impl=impl, device=str(device), g_layers="tuned", render_mlp=render,
                     fakes_mlp=render if dtype == torch.float16 else "torch", fir="pool",
                     r1_fir="triton" if interp else "depthwise", epilogue_split=True, training=training)
