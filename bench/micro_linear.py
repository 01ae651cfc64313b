"""Microbenchmark of the per-object linear layer y_b = x_b W_b^T + bias (fwd + bwd), the G MLP's building block.

    python bench/micro_linear.py   (CUDA only; prints ms per fwd+bwd for a few formulations and dtypes)
"""
from __future__ import annotations

import torch


class PerObjectLinear(torch.autograd.Function):
    """y = x @ Wt + b with hand-written backward (weight grad as grad^T @ x, bias grad via a matmul with ones)."""

    @staticmethod
    def forward(ctx, x, wt, b):
        ctx.save_for_backward(x, wt)
        return torch.baddbmm(b.view(1, 1, -1), x, wt)

    @staticmethod
    def backward(ctx, g):
        x, wt = ctx.saved_tensors
        gx = torch.bmm(g, wt.transpose(1, 2))
        gw = torch.bmm(x.transpose(1, 2), g)
        gb = g.sum(dim=(0, 1))
        return gx, gw, gb


def bench(fn, reps=50):
    for _ in range(5):
        fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps


def main():
    dev = "cuda"
    for dt in (torch.bfloat16, torch.float16):
        for (B, N, K, M) in ((4, 32768, 128, 128), (4, 262144, 128, 128)):
            x = torch.randn(B, N, K, device=dev, dtype=dt, requires_grad=True)
            wt = torch.randn(B, K, M, device=dev, dtype=dt, requires_grad=True)
            b = torch.randn(M, device=dev, dtype=dt, requires_grad=True)
            g = torch.randn(B, N, M, device=dev, dtype=dt)

            def v_autograd():
                y = torch.baddbmm(b.view(1, 1, -1), x, wt)
                torch.autograd.grad(y, (x, wt, b), g)

            def v_custom():
                y = PerObjectLinear.apply(x, wt, b)
                torch.autograd.grad(y, (x, wt, b), g)

            def v_parts():
                torch.bmm(g, wt.transpose(1, 2))
                torch.bmm(x.transpose(1, 2), g)

            def v_wgrad_only():
                torch.bmm(x.transpose(1, 2), g)

            def v_wgrad_T():
                torch.bmm(g.transpose(1, 2), x)

            def v_bias():
                g.sum(dim=(0, 1))

            def v_bias_f32():
                g.float().sum(dim=(0, 1))

            ones = torch.ones(1, B * N, device=dev, dtype=dt)

            def v_bias_mm():
                torch.mm(ones, g.view(B * N, M))

            def v_fwd():
                torch.baddbmm(b.view(1, 1, -1), x, wt)
            row = {k: round(bench(f), 4) for k, f in (("fwd", v_fwd), ("autograd_fb", v_autograd),
                                                      ("custom_fb", v_custom), ("dx+dw", v_parts),
                                                      ("dw", v_wgrad_only), ("dwT", v_wgrad_T),
                                                      ("dbias", v_bias), ("dbias_f32", v_bias_f32),
                                                      ("dbias_mm", v_bias_mm))}
            print(dt, (B, N, K, M), row, flush=True)


if __name__ == "__main__":
    main()
