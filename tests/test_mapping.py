"""Mapping network: shapes, normalisation, equalised lr, truncation, w_avg tracking."""
from __future__ import annotations

import math

import torch

from torch_utils.layers import lrelu_gain
from training.networks.mapping import MappingNetwork


def test_shapes_and_reference_formula() -> None:
    torch.manual_seed(0)
    net = MappingNetwork(z_dim=128, w_dim=128, num_layers=2).double()
    z = torch.randn(5, 128, dtype=torch.float64)
    w = net(z)
    assert w.shape == (5, 128) and w.dtype == torch.float64
    # Naive: RMS-normalise, then two FC layers with runtime weight W * 0.01 / sqrt(128), bias * 0.01, lrelu*sqrt2.
    x = z / torch.sqrt((z ** 2).mean(dim=1, keepdim=True) + 1e-8)
    for layer in net.layers:
        x = lrelu_gain(x @ (layer.weight * (0.01 / math.sqrt(128))).T + layer.bias * 0.01)
    torch.testing.assert_close(w, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net(3.0 * z), w)                                   # scale-invariant input
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in net.layers)    # bias init 0


def test_truncation() -> None:
    torch.manual_seed(1)
    net = MappingNetwork(z_dim=16, w_dim=8)
    net.w_avg.copy_(torch.randn(8))
    z = torch.randn(4, 16)
    torch.testing.assert_close(net(z, psi=0.0), net.w_avg.expand(4, 8))
    w1 = net(z)
    torch.testing.assert_close(net(z, psi=0.5), net.w_avg + 0.5 * (w1 - net.w_avg))


def test_w_avg_updates_only_in_training() -> None:
    torch.manual_seed(2)
    net = MappingNetwork(z_dim=16, w_dim=8, w_avg_beta=0.9)
    z = torch.randn(6, 16)
    net(z)
    net(z, psi=0.7)
    assert torch.count_nonzero(net.w_avg) == 0
    w = net(z, update_w_avg=True)
    torch.testing.assert_close(net.w_avg, 0.1 * w.detach().mean(0))
    before = net.w_avg.clone()
    w2 = net(z, update_w_avg=True)
    torch.testing.assert_close(net.w_avg, 0.9 * before + 0.1 * w2.detach().mean(0))
    assert "w_avg" in net.state_dict() and "w_avg" not in dict(net.named_parameters())


def test_fp32_under_autocast() -> None:
    net = MappingNetwork(z_dim=16, w_dim=8)
    z = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = net(z)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, net(z))
