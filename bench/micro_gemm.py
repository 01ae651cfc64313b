"""The few-row fp32 GEMMs of a training step at batch 4 / 8, as cuBLAS runs them and in reshaped forms.

    python bench/micro_gemm.py [--json FILE]

Rows, forward and forward + backward timed in CUDA graphs (`train_speed.cuda_time`): G's concatenated affine maps
(x [B, 128] -> [B, 10910]) and D's epilogue FC (x [B, 8192] -> [B, 512]), each as one F.linear, as
`hyper.chunked_linear` (a batch of GEMMs over blocks of outputs, so the input gradient is a split-K GEMM) and as a
split-K forward; D's 4x4 epilogue conv as unfold + GEMM, one GEMM or one per kernel tap
(`conv_gemm.conv_as_gemm`, the backend's epilogue_split). CUDA only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_speed import cuda_time  # noqa: E402
from torch_utils.cuda_graph import StepGraph  # noqa: E402
from torch_utils.ops.conv_gemm import conv_as_gemm  # noqa: E402
from training.networks.hyper import chunked_linear  # noqa: E402


def time_fwd_bwd(fn, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, need_w_grad: bool, reps: int = 200) -> dict:
    """ms per forward and per forward + backward (grad of x, and of w and b when need_w_grad) in CUDA graphs."""
    x = x.detach().requires_grad_(True)
    w = w.detach().requires_grad_(need_w_grad)
    b = b.detach().requires_grad_(need_w_grad)
    out = {}

    @torch.no_grad()
    def forward():
        fn(x, w, b)
    g = StepGraph(forward, x.device)
    out["fwd_ms"] = cuda_time(lambda i: g(), reps) * 1e3
    with torch.no_grad():
        coef = torch.randn_like(fn(x, w, b))
    inputs = [x, w, b] if need_w_grad else [x]

    def both():
        torch.autograd.grad((fn(x, w, b) * coef).sum(), inputs)
    g2 = StepGraph(both, x.device)
    out["fwd_bwd_ms"] = cuda_time(lambda i: g2(), reps) * 1e3
    return out


def k_split_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, parts: int = 8) -> torch.Tensor:
    """F.linear as `parts` partial GEMMs over blocks of the inner axis K, summed (a split-K forward)."""
    B, K = x.shape
    xs = x.view(B, parts, K // parts).transpose(0, 1)                                   # [p, B, K/p]
    ws = w.view(w.shape[0], parts, K // parts).permute(1, 2, 0)                         # [p, K/p, O]
    return torch.bmm(xs, ws).sum(0) + b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("micro_gemm.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    rows = {}
    for name, rows_, k, o, need_w in (("affine_b4", 4, 128, 10910, True), ("d_fc_b4_frozen", 4, 8192, 512, False),
                                      ("d_fc_b8", 8, 8192, 512, True)):
        x = torch.randn(rows_, k, device=dev)
        w = torch.randn(o, k, device=dev) / k ** 0.5
        b = torch.randn(o, device=dev)
        for form, fn in (("linear", F.linear), ("chunked512", lambda x, w, b: chunked_linear(x, w, b, 512)),
                         ("chunked128", lambda x, w, b: chunked_linear(x, w, b, 128)),
                         ("ksplit8", k_split_linear)):
            if form != "linear" and o <= 512 and form == "chunked512":
                continue
            err = (fn(x, w, b) - F.linear(x.double(), w.double(), b.double()).float()).abs().max().item()
            rows[f"{name}_{form}"] = {**time_fwd_bwd(fn, x, w, b, need_w), "max_abs_vs_fp64": err}
            print(f"{name:16s} {form:11s} " + "  ".join(f"{k} {v:.4f}" for k, v in rows[f"{name}_{form}"].items()),
                  flush=True)
    for name, batch, need_w in (("d_epilogue_conv_b4_frozen", 4, False), ("d_epilogue_conv_b8", 8, True)):
        x = torch.randn(batch, 513, 4, 4, device=dev)
        w = torch.randn(512, 513, 3, 3, device=dev) / (513 * 9) ** 0.5
        b = torch.randn(512, device=dev)
        want = F.conv2d(x.double(), w.double(), padding=1).float()
        for split in (False, True):
            def fn(x, w, b, split=split):
                return conv_as_gemm(x, w, split=split) + b.view(1, -1, 1, 1)
            err = (fn(x, w, 0 * b) - want).abs().max().item()
            key = f"{name}_{'split_taps' if split else 'one_gemm'}"
            rows[key] = {**time_fwd_bwd(fn, x, w, b, need_w), "max_abs_vs_fp64": err}
            print(f"{key:36s} " + "  ".join(f"{k} {v:.4f}" for k, v in rows[key].items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(dev), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
