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


@pytest.mark.parametrize("setting", ["t4", "std"])
def test_images_and_fused_paths(setting, device):
    out, inputs = gates.images_and_inputs(PRESETS[setting], device)
    _check(f"{setting}_images", out)
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
