"""Pure helpers of the GPU benchmark (bench/train_speed.py), checked on CPU; the benchmark itself never runs here."""
from __future__ import annotations

import torch

from bench.train_speed import flipped_pixels


def test_flipped_pixels_counts_large_errors_and_measures_the_rest():
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 4, 4, generator=gen) * 2 - 1
    noise = 1e-3 * torch.randn(ref.shape, generator=gen)
    img = ref + noise
    img[0, 1, 2, 3] += 0.7                  # one channel of one pixel flips
    img[1, :, 0, 0] -= 0.5                  # every channel of another
    got = flipped_pixels(img, ref)
    assert got["flipped_pixels"] == 2 and got["pixels"] == 32
    keep = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    keep[0, 0, 2, 3] = keep[1, 0, 0, 0] = False
    keep = keep.expand_as(ref)
    want = (noise[keep].norm() / ref[keep].norm()).item()
    assert abs(got["rel_l2_without_flipped"] - want) < 1e-7
    assert flipped_pixels(ref, ref) == {"flipped_pixels": 0, "pixels": 32, "rel_l2_without_flipped": 0.0}


def test_d_grads_gate_passes_on_cpu_and_catches_a_wrong_filter_gradient(monkeypatch):
    """The t4_d_grads gate's machinery on the smoke preset (CPU: no compile, NCHW): every FIR implementation matches
    the grouped-conv fp32 reference; a pool form whose backward is off by a factor (as the NHWC CUDA kernel was)
    fails it."""
    from bench import train_speed
    from torch_utils.ops import fir
    data = train_speed.RandomImages(8, 128)
    got = train_speed.gate_d_grads("smoke", torch.device("cpu"), data)
    assert got["pass"] and got["fp32_r1_pool_penalty_rel"] < 1e-6
    pool = fir._fir2d_pool

    def wrong_backward(x, padding, down):
        y = pool(x, padding, down)
        return y.detach() + 0.5 * (y - y.detach())            # right values, half the gradient

    monkeypatch.setattr(fir, "_fir2d_pool", wrong_backward)
    got = train_speed.gate_d_grads("smoke", torch.device("cpu"), data)
    assert not got["pass"] and got["fp32_r1_pool_penalty_rel"] > 0.5
    assert got["fp32_r1_depthwise_penalty_rel"] < 1e-6       # the other implementations are still right
