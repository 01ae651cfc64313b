"""Microbenchmark of G's training layers: cuBLAS (baddbmm + relu; bmm + relu's backward) against the fused
`object_linear` kernel, per layer shape and for the whole NeRF MLP forward + backward, at the T4 and standard
settings. Every timing is a CUDA-graph replay (no launch overhead), fp16.

    python bench/micro_object_linear.py [--sweep] [--json FILE]

--sweep also times a grid of launch parameters for the hidden-layer forward and input-gradient shapes (each checked
against the reference first). CUDA only; never run in CI.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_speed import cuda_time  # noqa: E402
from torch_utils import backend  # noqa: E402
from torch_utils.cuda_graph import StepGraph  # noqa: E402
from torch_utils.ops import object_linear as ol  # noqa: E402
from training.networks.nerf import NeRFMLP  # noqa: E402

DT = torch.float16
SETTINGS = {"t4": (4, 32768, 4), "standard": (4, 262144, 8)}      # objects, points per object, hidden layers


def graph_ms(fn, reps: int = 50) -> float:
    """ms per replay of `fn` captured as a CUDA graph (StepGraph: three eager warm-up calls, then the capture)."""
    graph = StepGraph(fn, "cuda", warmup=3)
    for _ in range(4):
        graph()
    return cuda_time(lambda _: graph(), reps) * 1e3


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def layer_cases(B: int, N: int):
    """(name, x, w, bias, mask, relu, cuBLAS equivalent) for the layer shapes of the training MLP."""
    dev = "cuda"
    cases = []
    shapes = (("fwd_pe_64x128", 64, 128, True, False), ("fwd_hidden_128x128", 128, 128, True, False),
              ("fwd_skip_192x128", 192, 128, True, False), ("fwd_out_128x8", 128, 8, False, False),
              ("bwd_gx_128x128_mask", 128, 128, False, True), ("bwd_gx_out_8x128_mask", 8, 128, False, True))
    for name, K, C, relu, masked in shapes:
        x = torch.randn(B, N, K, device=dev, dtype=DT)
        w = (torch.randn(B, C, K, device=dev, dtype=DT) / K ** 0.5).transpose(1, 2)        # [B, K, C] strided
        bias = None if masked else torch.randn(C, device=dev, dtype=DT)
        mask = torch.randn(B, N, C, device=dev, dtype=DT) if masked else None
        if masked:
            def cublas(x=x, w=w, mask=mask):
                return torch.ops.aten.threshold_backward(torch.bmm(x, w), mask, 0)
        elif relu:
            def cublas(x=x, w=w, bias=bias):
                return torch.relu(torch.baddbmm(bias.view(1, 1, -1), x, w))
        else:
            def cublas(x=x, w=w, bias=bias):
                return torch.baddbmm(bias.view(1, 1, -1), x, w)
        cases.append((name, x, w, bias, mask, relu, cublas))
    return cases


def mlp_rows(setting: str) -> dict:
    B, N, layers = SETTINGS[setting]
    torch.manual_seed(0)
    mlp = NeRFMLP(num_layers=layers, width=128, w_dim=128, rank=10).cuda()
    w = torch.randn(B, 128, device="cuda")
    pts = torch.rand(B, N, 3, device="cuda") * 2 - 1
    weights_ref = None
    out: dict = {}
    for fused in (False, True):
        sel = backend.REFERENCE.replace(g_layers="fused" if fused else "tuned")

        def fwd_bwd(sel=sel):
            mlp.zero_grad(set_to_none=False)
            with torch.autocast("cuda", dtype=DT), backend.use(sel):
                raw = mlp(w, pts)
            raw.float().square().mean().backward()

        def fwd(sel=sel):
            with torch.no_grad(), torch.autocast("cuda", dtype=DT), backend.use(sel):
                return mlp(w, pts)
        for p in mlp.parameters():
            p.grad = torch.zeros_like(p)
        fwd_bwd()
        grads = [p.grad.clone() for p in mlp.parameters()]
        raw = fwd().float()
        key = "fused" if fused else "cublas"
        out[f"{key}_fwd_ms"] = graph_ms(fwd)
        out[f"{key}_fwd_bwd_ms"] = graph_ms(fwd_bwd)
        if weights_ref is None:
            weights_ref, raw_ref = grads, raw
        else:
            out["raw_rel_err"] = rel(raw, raw_ref)
            out["grad_rel_err_max"] = max(rel(g, r) for g, r in zip(grads, weights_ref))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("micro_object_linear.py needs a CUDA GPU")
    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "self_check_fp16": ol.self_check(torch.device("cuda"), torch.float16),
                 "self_check_bf16": ol.self_check(torch.device("cuda"), torch.bfloat16),
                 "available_fp16": backend.kernel_ok("object_linear", "cuda", torch.float16), "layers": {}, "mlp": {},
                 "sweep": []}
    print(f"self-check rel err fp16 {res['self_check_fp16']:.2e} bf16 {res['self_check_bf16']:.2e}; available "
          f"{res['available_fp16']}", flush=True)
    for setting, (B, N, _) in SETTINGS.items():
        for name, x, w, bias, mask, relu, cublas in layer_cases(B, N):
            got = ol.launch(x, w, bias, mask, relu)
            row = {"rel_err_vs_cublas": rel(got, cublas()), "cublas_ms": graph_ms(cublas),
                   "fused_ms": graph_ms(lambda: ol.launch(x, w, bias, mask, relu))}
            res["layers"][f"{setting}/{name}"] = row
            print(f"{setting:9s} {name:24s} cuBLAS {row['cublas_ms']:.4f} ms  fused {row['fused_ms']:.4f} ms  "
                  f"rel {row['rel_err_vs_cublas']:.1e}", flush=True)
        res["mlp"][setting] = mlp_rows(setting)
        print(setting, "MLP", {k: round(v, 5) for k, v in res["mlp"][setting].items()}, flush=True)
    if args.sweep:
        for setting in ("t4",):
            B, N, _ = SETTINGS[setting]
            for name, x, w, bias, mask, relu, cublas in layer_cases(B, N):
                if name not in ("fwd_hidden_128x128", "bwd_gx_128x128_mask"):
                    continue
                want = cublas()
                for bm, bk, nw, ns in itertools.product((64, 128, 256), (64, 128), (4, 8), (2, 3)):
                    if bm == 256 and nw == 4:
                        continue
                    try:
                        launch = dict(block_m=bm, block_k=bk, num_warps=nw, num_stages=ns)
                        err = rel(ol.launch(x, w, bias, mask, relu, **launch), want)
                        ms = graph_ms(lambda: ol.launch(x, w, bias, mask, relu, **launch), reps=20)
                    except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory for a config
                        res["sweep"].append({"case": f"{setting}/{name}", **launch, "error": str(exc)[:200]})
                        continue
                    res["sweep"].append({"case": f"{setting}/{name}", **launch, "ms": ms, "rel_err": err})
                    print(f"sweep {setting}/{name} bm={bm} bk={bk} w={nw} s={ns}: {ms:.4f} ms rel {err:.1e}",
                          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
