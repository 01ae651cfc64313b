"""Microbenchmark of the discriminator passes at batch 4 (Dmain-like fwd+bwd, and the lazy R1 double backward)
for the FIR forms (fir2d's impl) and memory formats.   python bench/micro_d.py   (CUDA only)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.micro_linear import bench  # noqa: E402
from torch_utils import backend  # noqa: E402
from training.networks.discriminator import Discriminator  # noqa: E402


def main() -> None:
    dev = "cuda"
    torch.backends.cudnn.benchmark = True
    for P in (32, 64):
        D = Discriminator(P).to(dev)
        x = torch.randn(4, 3, P, P, device=dev)
        for impl in ("pool", "depthwise", "triton", "reference"):
            for dt in (torch.float16, torch.bfloat16):
                for cl in (False, True):
                    def fb():
                        out = D(x, mp_dtype=dt, channels_last=cl)
                        out.sum().backward()

                    def r1():
                        xr = x.detach().requires_grad_(True)
                        out = D(xr, mp_dtype=dt, channels_last=cl)
                        (g,) = torch.autograd.grad(out.sum(), xr, create_graph=True)
                        g.square().sum().backward()
                    with backend.use(backend.REFERENCE.replace(fir=impl)):
                        print(P, impl, dt, "channels_last" if cl else "nchw",
                              f"fwd+bwd {bench(fb, 20):.3f} ms  r1 {bench(r1, 20):.3f} ms", flush=True)


if __name__ == "__main__":
    main()
