"""The whole-object recipe on a CUDA GPU: the fast path (CUDA graphs, compiled G and D, fp16) trains it and keeps
the annealing clock, and in fp32 it computes what the eager step computes."""
from __future__ import annotations

import pytest
import torch

from training.config import resolve_config
from training.fast_step import GraphedTrainStep
from training.phases import TrainStep
from training.training_loop import build_networks, configure_torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SETS = ["synth_resolution=64", "patch_size=16", "num_samples=8", "width=32", "d_channel_base=1024",
        "d_channel_max=64", "patch_scale=beta:0.001:0.8:0.04", "d_reg_interval=4"]


def _train(sets: list[str], steps: int, graphs: bool):
    cfg = resolve_config("carla,t4-whole", SETS + sets)
    dev = torch.device("cuda")
    configure_torch(cfg, dev)
    nets = build_networks(cfg, 64, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    step = TrainStep(cfg, nets.G, nets.D, nets.G_ema, nets.augment_pipe, dev, gen)
    run = GraphedTrainStep(step, cfg.batch_gpu, (3, 64, 64), dev, enabled=graphs)
    data = torch.Generator().manual_seed(1)
    for i in range(steps):
        run(torch.randint(0, 256, [cfg.batch, 3, 64, 64], generator=data, dtype=torch.uint8).to(dev), i)
    torch.cuda.synchronize()
    return step, nets


def test_fast_path_trains_the_recipe_and_anneals():
    step, nets = _train([], 12, graphs=True)
    assert int(step.law_nimg) == 44 and int(step.cur_nimg) == 48
    assert float(step.loss.patch_law.param()) == pytest.approx(0.8, rel=1e-5)
    for p in nets.D.patch_cond.parameters():
        assert torch.isfinite(p).all()


def test_graphed_fp32_step_equals_the_eager_step():
    fp32 = ["precision=fp32"]
    graphed, nets_a = _train(fp32, 8, graphs=True)
    eager, nets_b = _train(fp32, 8, graphs=False)
    for (name, a), b in zip(nets_a.G_ema.state_dict().items(), nets_b.G_ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(nets_a.D.state_dict().items(), nets_b.D.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
