"""The GPU gates' machinery (tests/gpu/gpu_gates.py), checked on a CPU: a gate that can pass there passes, and a
wrong filter gradient fails it."""
from __future__ import annotations

import torch

from gpu.gpu_gates import flipped_pixels


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
    """The d_grads gate's machinery on the smoke preset (CPU: no compile, NCHW): every R1 filter form matches the
    fp32 reference; a pool form whose backward is off by a factor (as the NHWC CUDA kernel was) fails it."""
    from gpu import gpu_gates
    from torch_utils.ops import fir
    data = gpu_gates.RandomImages(8, 128)
    got = gpu_gates.gate_d_grads("smoke", torch.device("cpu"), data)
    assert got["pass"] and got["fp32_r1_pool_penalty_rel"] < 1e-6
    pool = fir._fir2d_pool

    def wrong_backward(x, padding, down):
        y = pool(x, padding, down)
        return y.detach() + 0.5 * (y - y.detach())            # right values, half the gradient

    monkeypatch.setattr(fir, "_fir2d_pool", wrong_backward)
    got = gpu_gates.gate_d_grads("smoke", torch.device("cpu"), data)
    assert not got["pass"] and got["fp32_r1_pool_penalty_rel"] > 0.5
    assert got["fp32_r1_depthwise_penalty_rel"] < 1e-6       # the other implementations are still right


def test_graph_and_g_learns_gates_run_on_a_cpu():
    """On a CPU the 'graphed' steps are eager ones: the graph gate compares a run with itself (exactly), and G moves
    under impl=auto about as much as under the reference."""
    from gpu import gpu_gates
    data = gpu_gates.RandomImages(8, 32)
    assert gpu_gates.gate_graph("smoke", torch.device("cpu"), data, steps=2)["max_rel_param_diff"] == 0.0
    got = gpu_gates.gate_g_learns("smoke", torch.device("cpu"), data, steps=3)
    assert got["pass"], got
