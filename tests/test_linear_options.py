"""The per-object NeRF layer options (training/networks/hyper.py set_linear_options): every combination computes the
same function and gradients as the plain path (baddbmm forward, one weight-gradient GEMM, unpadded inputs)."""
from __future__ import annotations

import itertools

import pytest
import torch

from training.networks import hyper
from training.networks.nerf import NeRFMLP

PLAIN = {"forward": "baddbmm", "split_k": False, "pad_inputs": False}


@pytest.fixture(autouse=True)
def restore_options():
    old = hyper.linear_options()
    yield
    hyper.set_linear_options(**old)


def _run(mlp: NeRFMLP, w: torch.Tensor, pts: torch.Tensor, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    hyper.set_linear_options(**options)
    mlp.zero_grad()
    raw = mlp(w, pts)                                                       # [B, N, 4]
    (raw * torch.linspace(-1, 1, raw.numel(), dtype=raw.dtype).view_as(raw)).sum().backward()
    return raw.detach(), [p.grad.clone() for p in mlp.parameters()]


@pytest.mark.parametrize("num_layers", [4, 8])          # 8 layers: the skip layer's [PE, h] input is padded too
def test_every_option_set_matches_the_plain_path(num_layers: int) -> None:
    torch.manual_seed(0)
    mlp = NeRFMLP(num_layers=num_layers, width=32, w_dim=16, rank=3).double()
    w = torch.randn(3, 16, dtype=torch.float64)
    pts = torch.randn(3, 4096, 3, dtype=torch.float64)
    ref_raw, ref_grads = _run(mlp, w, pts, **PLAIN)
    assert all(g.abs().sum() > 0 for g in ref_grads)
    for fwd, split, pad in itertools.product(hyper.LINEAR_FORWARDS, (False, True), (False, True)):
        raw, grads = _run(mlp, w, pts, forward=fwd, split_k=split, pad_inputs=pad)
        assert raw.shape == ref_raw.shape
        torch.testing.assert_close(raw, ref_raw, rtol=1e-12, atol=1e-12)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_split_weight_gradient_in_half_precision_is_close() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 8192, 63)
    g = torch.randn(2, 8192, 4)
    want = torch.bmm(x.double().transpose(1, 2), g.double())                      # [2, 63, 4]
    for split in (1, 8):
        got = hyper.weight_grad(x.bfloat16(), g.bfloat16(), split)
        assert got.shape == (2, 63, 4) and got.dtype == torch.bfloat16
        rel = (got.double() - want).norm() / want.norm()
        assert rel < 2e-2, (split, rel)


def test_split_count() -> None:
    assert hyper.split_count(4, 32768) == 32             # T4 patch: 32 chunks of 1024 points (the minimum chunk)
    assert hyper.split_count(4, 262144) == 64            # standard patch: 4 * 64 = 256 partial GEMMs
    assert hyper.split_count(4, 32768, min_rows=512) == 64
    assert hyper.split_count(4, 1000) == 1               # too few points to split
    assert hyper.split_count(3, 15 * 1024) == 8          # the largest power of two leaving chunks >= 1024
    assert hyper.split_count(64, 4096) == 4              # 256 partial GEMMs already


def test_bad_forward_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown forward"):
        hyper.set_linear_options(forward="einsum")


def test_config_switch_sets_the_options() -> None:
    from training.config import resolve_config
    from training.training_loop import configure_torch
    for on in (False, True):
        cfg = resolve_config("smoke", sets=[f"g_gemm_tuning={str(on).lower()}"])
        configure_torch(cfg, torch.device("cpu"))
        opts = hyper.linear_options()
        assert opts["split_k"] is on and opts["pad_inputs"] is on and opts["forward"] == "baddbmm"


def test_config_sets_the_fir_implementation_and_epilogue_split() -> None:
    from torch_utils.ops import fir
    from training.config import resolve_config
    from training.networks import discriminator
    from training.training_loop import configure_torch
    from dnnlib.util import UserError
    try:
        configure_torch(resolve_config("smoke", sets=["d_fir=single", "d_epilogue_split_rows=0"]),
                        torch.device("cpu"))
        assert fir._fir_impl == "single" and discriminator._gemm_options["split_taps"] is True
        assert discriminator.split_epilogue(64) and discriminator.split_epilogue(128)
        configure_torch(resolve_config("smoke", sets=["d_epilogue_split=true", "d_epilogue_split_rows=64"]),
                        torch.device("cpu"))
        assert discriminator.split_epilogue(64) and not discriminator.split_epilogue(128)
        configure_torch(resolve_config("smoke", sets=["d_epilogue_split=false"]), torch.device("cpu"))
        assert not discriminator.split_epilogue(64) and not discriminator.split_epilogue(128)
        configure_torch(resolve_config("smoke"), torch.device("cpu"))   # the default: split at <= 64 rows
        assert fir._fir_impl == "auto" and discriminator._gemm_options == {"split_taps": True, "max_rows": 64}
        assert discriminator.split_epilogue(64) and not discriminator.split_epilogue(128)
        with pytest.raises(UserError, match="d_epilogue_split_rows"):
            resolve_config("smoke", sets=["d_epilogue_split_rows=-1"])
    finally:
        fir.set_fir_impl("auto")
        discriminator.set_conv_gemm_split(False)


def test_start_line_names_the_gemm_and_r1_layout_choices() -> None:
    from training.config import resolve_config
    from training.fast_step import wrap_step_for_speed
    for sets, want, absent in ((["g_gemm_tuning=true"], "(tuned GEMMs)", "R1 NCHW"),
                               (["g_gemm_tuning=false", "r1_channels_last=false"], "(plain GEMMs)", None)):
        cfg = resolve_config("smoke", sets=["cuda_graphs=false", *sets])
        # cuda_graphs=false returns the eager step before any CUDA call, so a CPU machine can build the line
        _, _, desc = wrap_step_for_speed(None, None, cfg, torch.device("cuda"), None, lambda: iter(()))
        assert want in desc and "eager step (cuda_graphs=false)" in desc and "R1 FIR triton)" in desc
        if absent:
            assert absent not in desc
        else:
            assert "D compiled (channels_last; R1 NCHW; R1 FIR triton)" in desc
