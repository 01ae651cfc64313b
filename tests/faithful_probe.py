"""Outputs of a few training steps of the faithful presets, small enough for a CPU test.

`probe(cfg_names)` builds G, D and the augment pipe from a preset (shrunk to 32 px data, a narrow NeRF and a small
D) with float64 as the default dtype, runs two training steps (the first with lazy R1) on fixed random reals, and
returns G_ema's full render of fixed latents and D's logits on fixed images. In float32 two Adam steps turn the
last-bit differences of another CPU's kernels into differences of up to 6e-4; in float64 they stay below 3e-7
(measured with torch's and the BLAS libraries' instruction sets lowered to SSE4 and one thread).

tests/data/faithful_outputs.json holds these values; the code that recorded them reproduced, to 2.4e-7, the float32
outputs recorded before the patch-scale laws and the scale-aware discriminator existed. `python
tests/faithful_probe.py` writes that file again (only do so for a deliberate change of the faithful method).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.config import resolve_config  # noqa: E402
from training.phases import TrainStep  # noqa: E402
from training.training_loop import build_networks, configure_torch  # noqa: E402

OUT = Path(__file__).resolve().parent / "data" / "faithful_outputs.json"
PRESETS = ["carla,t4", "cars,standard", "chairs,noaug", "planes,ns8", "cars,patch8", "carla,gamma05"]
SHRINK = ["synth_resolution=32", "width=32", "num_layers=4", "d_channel_base=1024", "d_channel_max=64",
          "num_samples=8", "batch=4"]


def shrink(cfg_names: str) -> list[str]:
    """The --set items that make a preset CPU-sized; the patch stays the preset's (capped at 16 px for 32 px data)."""
    cfg = resolve_config(cfg_names)
    return SHRINK + [f"patch_size={min(cfg.patch_size, 16)}"] + (
        [f"num_samples={min(cfg.num_samples, 8)}"] if cfg.num_samples < 8 else [])


def probe(cfg_names: str) -> dict[str, list[float]]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _probe(cfg_names)
    finally:
        torch.set_default_dtype(previous)


def _probe(cfg_names: str) -> dict[str, list[float]]:
    cfg = resolve_config(cfg_names, shrink(cfg_names))
    device = torch.device("cpu")
    configure_torch(cfg, device)
    nets = build_networks(cfg, 32, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = TrainStep(cfg, nets.G, nets.D, nets.G_ema, nets.augment_pipe, device, gen)
    data = torch.Generator().manual_seed(123)
    for i in range(2):
        reals = torch.randint(0, 256, [cfg.batch, 3, 32, 32], generator=data, dtype=torch.uint8)
        step(reals, i)
    fixed = torch.Generator().manual_seed(7)
    z = nets.G.sample_z(2, generator=fixed)
    c2w = nets.G.sample_poses(2, generator=fixed)
    imgs = torch.rand([4, 3, cfg.patch_size, cfg.patch_size], generator=fixed) * 2 - 1
    with torch.no_grad():
        render = nets.G_ema(z, c2w)                                     # [2, 3, 32, 32]
        logits = nets.D(imgs)                                           # [4, 1]
    return {"render": render.flatten()[::37].tolist(), "render_sum": float(render.double().sum()),
            "logits": logits.flatten().tolist(), "dtype": str(render.dtype)}


if __name__ == "__main__":
    result = {name: probe(name) for name in PRESETS}
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(OUT)
    print(f"wrote {OUT}")
