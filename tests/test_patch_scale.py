"""Whole-object training: patch-scale laws, anti-aliased reals, the scale-aware D, recipes, faithful presets."""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

import train
from dnnlib.util import UserError, run_cli
from training import patch_scale as ps
from training.config import RETIRED_KEYS, list_recipes, resolve_config
from training.networks.discriminator import Discriminator
from training.rendering import camera
from training.state import load_training_state

DATA = Path(__file__).resolve().parent / "data"


def _law(law, start, end=None, kimg=0.0, res=128, P=32, nimg=None):
    return ps.PatchScaleLaw(law, res, P, start, start if end is None else end, kimg, nimg=nimg)


def _ks(samples: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov distance between the samples' empirical CDF and `cdf` (a host function)."""
    x = np.sort(samples.double().numpy())
    n = len(x)
    f = np.array([cdf(v) for v in x])
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


# ---------------------------------------------------------------------------------------------------------------------
# The laws.

@pytest.mark.parametrize("law, param", [("uniform", 0.0), ("uniform", 0.25), ("uniform", 0.9), ("beta", 0.5),
                                        ("beta", 0.8), ("beta", 1.0), ("beta", 3.0)])
def test_scales_follow_the_closed_form_law(law, param):
    n = 20000
    w = _law(law, param).sample(n, generator=torch.Generator().manual_seed(1))
    scales = ps.window_scale(w, 128, 32)
    s_min = ps.min_scale(128, 32)
    d = _ks(scales, lambda x: ps.cdf(law, param, s_min, x))
    assert d < 1.63 / math.sqrt(n), d                        # KS test at the 1 % level
    assert abs(float(scales.double().mean()) - ps.expected_mean_scale(law, param, s_min)) < 0.01


def test_beta_law_at_0_001_is_almost_always_the_whole_frame_and_uniform_bound_one_is_whole():
    w = _law("beta", 0.001).sample(4000, generator=torch.Generator().manual_seed(0))
    assert float((ps.window_scale(w, 128, 32) > 0.99).float().mean()) > 0.98
    w = _law("uniform", 1.0).sample(100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w, ps.whole_frame_windows(100, 128, 32), rtol=0, atol=1e-5)


@pytest.mark.parametrize("law, param", [("uniform", 0.0), ("beta", 0.8), ("beta", 0.001)])
@pytest.mark.parametrize("res, P", [(128, 32), (64, 16), (32, 16), (128, 64)])
def test_windows_stay_inside_the_frame(law, param, res, P):
    w = _law(law, param, res=res, P=P).sample(3000, generator=torch.Generator().manual_seed(2))
    row0, col0, s = w.unbind(1)
    assert w.dtype == torch.float32 and s.min() >= 1.0 and s.max() <= camera.max_window_spacing(res, P) + 1e-5
    for start in (row0, col0):
        assert start.min() >= 0 and (start + (P - 1) * s).max() <= res - 1 + 1e-4
    scale = ps.window_scale(w, res, P)
    assert scale.min() >= ps.min_scale(res, P) - 1e-6 and scale.max() <= 1 + 1e-6


def test_fixed_law_draws_the_reference_crops():
    a = _law("fixed", 0.0).sample(64, generator=torch.Generator().manual_seed(3))
    b = camera.sample_windows(64, 128, 32, generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.int64 and torch.equal(a, b)
    assert ps.window_scale(a, 128, 32).allclose(torch.full([64], 31 / 127))


def test_annealing_endpoints_and_linear_path():
    nimg = torch.zeros([], dtype=torch.int64)
    law = _law("beta", 0.001, 0.8, kimg=10.0, nimg=nimg)
    for count, want in ((0, 0.001), (2500, 0.001 + 0.799 / 4), (10000, 0.8), (50000, 0.8)):
        nimg.fill_(count)
        assert float(law.param()) == pytest.approx(want, rel=1e-6)
        assert law.param_at(count / 1000) == pytest.approx(want, rel=1e-12)
    assert float(_law("uniform", 0.9, 0.25, kimg=0.0, nimg=nimg).param()) == pytest.approx(0.25)
    nimg.fill_(0)                                              # the draws follow the clock
    early = ps.window_scale(law.sample(4000, generator=torch.Generator().manual_seed(0)), 128, 32).mean()
    nimg.fill_(10000)
    late = ps.window_scale(law.sample(4000, generator=torch.Generator().manual_seed(0)), 128, 32).mean()
    assert float(early) > 0.99 and float(late) == pytest.approx(ps.expected_mean_scale("beta", 0.8, 31 / 127),
                                                                 abs=0.02)


def test_window_features_span_their_ranges():
    res, P = 128, 32
    whole = ps.window_features(ps.whole_frame_windows(2, res, P), res, P)
    torch.testing.assert_close(whole, torch.tensor([[1.0, 0.0, 0.0]] * 2), rtol=0, atol=1e-6)
    corner = ps.window_features(torch.tensor([[0, 0], [96, 96]]), res, P)             # reference crops
    torch.testing.assert_close(corner[:, 0], torch.zeros(2))
    torch.testing.assert_close(corner[:, 1:], torch.tensor([[-96 / 127] * 2, [96 / 127] * 2]), rtol=0, atol=1e-6)


def test_scale_histogram_counts_quarters():
    h = ps.scale_histogram(torch.tensor([0.25, 0.3, 0.7, 1.0, 1.0]), 0.2)
    torch.testing.assert_close(h, torch.tensor([0.4, 0.0, 0.2, 0.4]))


# ---------------------------------------------------------------------------------------------------------------------
# Reals at the fakes' positions, anti-aliased.

def test_resample_is_an_exact_crop_at_spacing_one_and_bilinear_below():
    from training.augment import crop_patches, sample_patches
    img = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    off = torch.tensor([[0, 0], [8, 31], [24, 2]])
    win = torch.cat([off.float(), torch.ones(3, 1)], 1)
    assert torch.equal(ps.resample_patches(img, win, 9), crop_patches(img, off, 9))
    frac = torch.tensor([[0.25, 1.5, 1.0], [3.7, 0.1, 0.75], [10.5, 20.25, 1.0]])
    torch.testing.assert_close(ps.resample_patches(img, frac, 8), sample_patches(img, frac, 8), rtol=0, atol=1e-5)


@pytest.mark.parametrize("res, P", [(128, 32), (64, 16), (128, 16)])
def test_whole_frame_resample_is_a_low_pass(res, P):
    """Whole-frame patches keep a slow wave and remove one that a P-sample grid would alias (above its Nyquist
    frequency), close to torch's antialiased resize."""
    x = torch.arange(res, dtype=torch.float32)
    win = ps.whole_frame_windows(1, res, P)
    s = float(win[0, 2])
    for cycles_per_sample, keep in ((0.1, True), (0.8, False)):
        wave = torch.cos(2 * math.pi * cycles_per_sample / s * x).expand(1, 1, res, res).contiguous()
        amp = float(ps.resample_patches(wave, win, P)[0, 0, 0, 2:-2].abs().max())
        assert (amp > 0.8) if keep else (amp < 0.1), (cycles_per_sample, amp)
    img = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(img, size=(P, P), mode="bilinear", antialias=True, align_corners=False)
    assert float((ps.resample_patches(img, win, P) - ref).abs().mean()) < 0.05


def test_antialiasing_removes_what_a_point_sampler_aliases():
    """A checkerboard at the pixel frequency is gray at any downscale; point (bilinear) samples of it alias."""
    from training.augment import sample_patches
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    board = ((yy + xx) % 2).float().mul(2).sub(1).expand(1, 3, 128, 128)
    win = ps.whole_frame_windows(1, 128, 32)
    assert float(ps.resample_patches(board, win, 32)[:, :, 2:-2, 2:-2].abs().max()) < 0.1
    assert float(sample_patches(board, win, 32).abs().max()) > 0.5


def test_reals_are_resampled_where_the_fakes_rays_meet_the_frame():
    """Ray directions are affine in pixel coordinates and a symmetric normalised filter keeps affine functions, so
    the full frame's directions, resampled at a window, equal the directions G's rays of that window take (away
    from the border, where the filter is cut): reals and fakes show the same part of the frame at every scale."""
    res, P = 64, 8
    gen = torch.Generator().manual_seed(4)
    c2w = camera.sample_poses(6, generator=gen)
    win = _law("beta", 1.0, res=res, P=P).sample(6, generator=gen)
    _, full = camera.get_rays(c2w, res)                                                     # [6, res, res, 3]
    _, rays = camera.get_rays(c2w, res, window=win, patch_size=P)                           # [6, P, P, 3]
    sampled = ps.resample_patches(full.permute(0, 3, 1, 2).contiguous(), win, P).permute(0, 2, 3, 1)
    pos = win[:, None, :2] + torch.arange(P)[None, :, None] * win[:, 2:3, None]             # [6, P, 2]
    inside = ((pos - win[:, None, 2:3] >= 0) & (pos + win[:, None, 2:3] <= res - 1))        # filter within frame
    mask = inside[:, :, None, 0] & inside[:, None, :, 1]                                    # [6, P, P]
    assert mask.sum() > 50
    torch.testing.assert_close(sampled[mask], rays[mask], rtol=0, atol=1e-5)


def test_a_rendered_scene_seen_both_ways_agrees():
    """Render one scene of G at full resolution and as a window at spacing 1 with fractional offsets: the real
    path (bilinear resampling of the full render) and the fake path (G's rays of the window) agree to the scene's
    smoothness: compare with an affine-in-pixels field, where both are exact."""
    from training.rendering.renderer import render_image
    res, P = 32, 8

    def field(pts):                                   # colour affine in x, y; a dense slab at z in [-1, 1]
        rgb = torch.sigmoid(torch.stack([pts[..., 0], pts[..., 1], torch.zeros_like(pts[..., 0])], -1))
        return rgb, torch.where(pts[..., 2].abs() < 1, 50.0, -50.0)
    c2w = camera.pose_spherical(torch.tensor([0.0]), torch.tensor([90.0]))                  # looking down z
    full, _ = render_image(field, c2w, res, near=3.0, far=5.0, num_samples=64)
    win = torch.tensor([[5.5, 9.25, 1.0]])
    patch, _ = render_image(field, c2w, res, window=win, patch_size=P, near=3.0, far=5.0, num_samples=64)
    torch.testing.assert_close(ps.resample_patches(full, win, P), patch, rtol=0, atol=2e-3)


def test_resample_is_twice_differentiable():
    img = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    win = torch.tensor([[0.5, 1.25, 1.5], [0.0, 0.0, 11 / 4]], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda x: ps.resample_patches(x, win, 5), (img,))


# ---------------------------------------------------------------------------------------------------------------------
# The scale-aware discriminator.

def _cond_D(**kw):
    torch.manual_seed(0)
    return Discriminator(16, channel_base=256, channel_max=32, patch_features=3, **kw)


def test_scale_aware_d_depends_on_the_window_and_needs_it():
    D = _cond_D()
    img = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([[0.0, 0.1, -0.2], [1.0, 0.0, 0.0], [0.5, 0.3, 0.3], [0.2, -0.9, 0.9]])
    a, b = D(img, patch=c), D(img, patch=c.flip(0))
    assert a.shape == (4, 1) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="window features"):
        D(img)
    with pytest.raises(ValueError, match="window features"):
        D(img, patch=c[:, :2])
    assert "patch_cond" not in dict(Discriminator(16).named_children())   # the reference D is unchanged


def test_scale_aware_d_gradients_and_r1():
    D = _cond_D(num_fp16_res=0)
    img = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    D = D.double()
    assert torch.autograd.gradcheck(lambda x: D(x, patch=c), (img.clone().requires_grad_(True),))
    x = img.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x, patch=c).sum(), x, create_graph=True)
    g.square().sum().backward()                                          # R1's double backward
    for name, p in D.patch_cond.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_scale_aware_d_and_the_law_compile_without_graph_breaks():
    """The compiled first-order D of the fast path takes the window features as one more tensor input; the law's
    draw is static-shape device code (fullgraph: no graph break, no host sync)."""
    D = _cond_D()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    c = torch.rand(4, 3, generator=torch.Generator().manual_seed(1))
    out = torch.compile(D, backend="aot_eager", fullgraph=True)(x, mp_dtype=torch.bfloat16, patch=c)
    out.sum().backward()
    torch.testing.assert_close(out, D(x, mp_dtype=torch.bfloat16, patch=c), rtol=0, atol=1e-5)
    nimg = torch.full([], 5000, dtype=torch.int64)
    law = _law("beta", 0.001, 0.8, kimg=10.0, nimg=nimg)
    u = torch.rand(64, generator=torch.Generator().manual_seed(2))
    draw = torch.compile(lambda v: law.scale_from_uniform(v, law.param()), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(draw(u), law.scale_from_uniform(u, law.param()), rtol=0, atol=1e-6)


def test_paired_scoring_with_windows_equals_two_calls():
    from training.loss import HyperNeRFGANLoss
    D = _cond_D().double()                 # the pairing is a formula: compared in float64
    loss = HyperNeRFGANLoss(torch.nn.Linear(1, 1), D, None, 16, 1.0)
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randn(4, 3, 16, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    ca, cb = (torch.rand(4, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    pa, pb = loss.score_pair(a, b, ca, cb)
    torch.testing.assert_close(pa, loss.score(a, patch=ca), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pb, loss.score(b, patch=cb), rtol=1e-12, atol=1e-12)


def test_training_steps_with_the_recipe_law_and_scale_aware_d():
    from training.phases import TrainStep
    from training.training_loop import build_networks
    cfg = resolve_config("carla,t4-whole,smoke", ["synth_resolution=32", "patch_scale=beta:0.001:0.8:0.008"])
    nets = build_networks(cfg, 32, torch.device("cpu"))
    step = TrainStep(cfg, nets.G, nets.D, nets.G_ema, nets.augment_pipe, torch.device("cpu"),
                     torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in nets.D.state_dict().items()}
    reals = torch.randint(0, 256, [4, 3, 32, 32], generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    for i in range(3):                                   # step 0 has R1; the clock passes the annealing length
        step(reals, i)
    assert int(step.law_nimg) == 8 and int(step.cur_nimg) == 12
    moved = [k for k, v in nets.D.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("patch_cond.") for k in moved) and any(k.startswith("b4.") for k in moved)
    assert float(step.loss.patch_law.param()) == pytest.approx(0.8)


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and recipes.

FAITHFUL = ["t4", "standard", "carla", "cars", "planes", "chairs", "ns8", "patch8", "noaug", "gamma05"]
NEW_KEYS = {"patch_scale": "fixed", "d_patch_cond": False}


def test_faithful_presets_config_hashes_are_unchanged():
    """The resolved configs of the faithful presets (alone and each dataset preset with each setting preset) hash as
    before the whole-object options existed; the new options are off in all of them. The recorded hashes leave out
    the keys that only chose how to compute (folded into `impl`, training.config.RETIRED_KEYS), so `impl` is left
    out here and must be `auto`."""
    want = json.loads((DATA / "faithful_configs.json").read_text())
    assert len(want) == 34
    for name, digest in want.items():
        d = resolve_config(name).to_dict()
        assert {k: d.pop(k) for k in NEW_KEYS} == NEW_KEYS, name
        assert d.pop("impl") == "auto", name
        assert not set(RETIRED_KEYS) & set(d), name
        assert hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest() == digest, name


def test_faithful_presets_train_as_before():
    """Two training steps of six faithful presets (CPU-sized, float64) give the renders and D logits recorded in
    tests/data/faithful_outputs.json (see tests/faithful_probe.py for how they were recorded). Other CPUs' kernels
    and thread counts move these float64 values by less than 3e-7; a change of the method moves them by far more
    than the 2e-5 allowed (the outputs are O(1))."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import faithful_probe
    want = json.loads((DATA / "faithful_outputs.json").read_text())
    for name in faithful_probe.PRESETS:
        got = faithful_probe.probe(name)
        assert got["dtype"] == want[name]["dtype"] == "torch.float64", name
        for key in ("render", "logits"):
            np.testing.assert_allclose(got[key], want[name][key], rtol=0, atol=2e-5, err_msg=f"{name} {key}")
        assert got["render_sum"] == pytest.approx(want[name]["render_sum"], abs=2e-5 * 2 * 3 * 32 * 32)
    assert torch.get_default_dtype() == torch.float32                     # the probe restores the default


def test_recipes_state_their_departures_and_resolve():
    assert {"t4-whole", "t4-whole-uncond", "t4-standard"} <= set(list_recipes())
    whole = resolve_config("cars,t4-whole")
    assert (whole.patch_size, whole.num_samples, whole.batch) == (32, 32, 4)
    assert whole.patch_law == ("beta", 0.001, 0.8, 200.0) and whole.d_patch_cond and whole.d_lr == 0.001
    assert whole.num_layers == 8 and whole.r1_gamma == 1.0                  # the dataset preset's values stay
    assert not resolve_config("t4-whole-uncond").d_patch_cond
    std, t4s = resolve_config("standard").to_dict(), resolve_config("t4-standard").to_dict()
    assert std == t4s                                                       # the authors' setting, unchanged
    for name in list_recipes():
        text = (Path(__file__).resolve().parent.parent / "configs" / "recipes" / f"{name}.toml").read_text()
        assert text.startswith(f"# {name}:")                                # each states what it changes and why


@pytest.mark.parametrize("sets, match", [
    (["patch_scale=gamma:1"], "the law 'gamma'"),
    (["patch_scale=beta:0"], "Beta"),
    (["patch_scale=uniform:0.5:1.5"], r"\[0, 1\]"),
    (["patch_scale=uniform:0.5", "patch_max_spacing=2"], "patch_scale=uniform:LOW instead"),
    (["patch_scale=beta:0.1:0.2:-1"], "KIMG must be >= 0"),
    (["patch_scale=beta"], "LAW:START"),
    (["patch_scale=beta:x"], "must be numbers"),
    (["patch_scale=fixed:1"], "takes no parameters"),
])
def test_bad_law_settings_are_refused(sets, match):
    with pytest.raises(UserError, match=match):
        resolve_config("t4", sets)


def test_preset_names_cannot_leave_the_config_folder():
    with pytest.raises(UserError, match="Unknown preset"):
        resolve_config("../pyproject")


# ---------------------------------------------------------------------------------------------------------------------
# train.py end to end.


def _cli(args, capsys):
    try:
        run_cli(train.main)([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _run_dir(outdir):
    dirs = [d for d in Path(outdir).iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_dry_run_prints_the_scale_aware_d(capsys, tmp_path):
    code, out, err = _cli(["--outdir", tmp_path, "--cfg", "cars,t4-whole", "--data", "/not/used", "--dry-run"],
                          capsys)
    assert code == 0, err
    assert "D.patch_cond" in out and '"patch_scale": "beta:0.001:0.8:200"' in out


@pytest.mark.parametrize("recipe", ["t4-whole", "t4-whole-uncond", "t4-standard"])
def test_each_recipe_trains_on_cpu(recipe, tiny_data, tmp_path, capsys):
    code, out, err = _cli(["--outdir", tmp_path, "--cfg", f"chairs,{recipe},smoke", "--data", tiny_data, "--set",
                           "grid_w=2", "--set", "grid_h=2", "--kimg", "0.02", "--set", "kimg_per_tick=0.01"], capsys)
    assert code == 0, err
    run_dir = _run_dir(tmp_path)
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    for key in ("Progress/D_whole_fake", "Progress/D_whole_real", "Progress/D_whole_gap"):
        assert math.isfinite(stats[-1][key]["mean"]), key
    if recipe == "t4-standard":                       # the faithful law: no patch-scale series, no patch grids
        assert "PatchScale/scale" not in stats[-1] and not list(run_dir.glob("patches*.png"))
        return
    quarters = sum(stats[-1][f"PatchScale/quarter{i}"]["mean"] for i in range(4))
    assert quarters == pytest.approx(1.0) and stats[-1]["PatchScale/scale"]["mean"] > 0.9   # b ~ 0.001 early
    assert stats[-1]["PatchScale/param"]["mean"] == pytest.approx(0.001, abs=1e-4)
    assert (run_dir / "patches000000.png").is_file() and " scale " in out
    assert PIL.Image.open(run_dir / "patches000000.png").size == (2 * 16, 2 * 16)


def test_whole_frame_scores_with_a_grid_that_is_no_multiple_of_the_stddev_group(tiny_data, tmp_path, capsys):
    code, out, err = _cli(["--outdir", tmp_path, "--cfg", "chairs,smoke", "--data", tiny_data, "--set", "grid_w=5",
                           "--set", "grid_h=1", "--kimg", "0.008", "--set", "kimg_per_tick=0.004"], capsys)
    assert code == 0, err
    stats = [json.loads(line) for line in (_run_dir(tmp_path) / "stats.jsonl").read_text().splitlines()]
    assert math.isfinite(stats[-1]["Progress/D_whole_gap"]["mean"])


def test_resume_is_exact_with_an_annealed_law(tiny_data, tmp_path, capsys):
    """8 steps straight == 4 steps + --resume auto + 4 steps, while the beta law anneals over those 8 steps."""
    common = ["--cfg", "chairs,t4-whole,smoke", "--data", tiny_data, "--deterministic", "--set", "grid_w=2",
              "--set", "grid_h=2", "--set", "d_reg_interval=3", "--set", "kimg_per_tick=0.016", "--set",
              "patch_scale=beta:0.01:2:0.032"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _cli(["--outdir", straight, *common, "--kimg", "0.032"], capsys)[0] == 0
    assert _cli(["--outdir", split, *common, "--kimg", "0.016"], capsys)[0] == 0
    code, out, err = _cli(["--outdir", split, *common, "--kimg", "0.032", "--resume", "auto"], capsys)
    assert code == 0, err
    a = load_training_state(sorted(_run_dir(straight).glob("training-state-*.pt"))[-1])
    b = load_training_state(sorted(_run_dir(split).glob("training-state-*.pt"))[-1])
    assert a["counters"] == b["counters"]
    for key in ("G_ema", "D"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=1e-6, msg=f"{key}.{name}")
    sa = [json.loads(x) for x in (_run_dir(straight) / "stats.jsonl").read_text().splitlines()]
    sb = [json.loads(x) for x in (_run_dir(split) / "stats.jsonl").read_text().splitlines()]
    assert sa[-1]["PatchScale/param"]["mean"] == pytest.approx(sb[-1]["PatchScale/param"]["mean"], rel=1e-6)
    assert sa[-1]["PatchScale/param"]["mean"] > sa[0]["PatchScale/param"]["mean"]       # it annealed


@pytest.mark.parametrize("spec, want", [
    ("fixed", ("fixed", 0.0, 0.0, 0.0)),
    ("beta:0.001:0.8:200", ("beta", 0.001, 0.8, 200.0)),
    ("uniform:0.5", ("uniform", 0.5, 0.5, 0.0)),
    ("uniform:1:0.25", ("uniform", 1.0, 0.25, 0.0)),
])
def test_patch_scale_spec_parses(spec, want):
    from training.config import parse_patch_scale
    assert parse_patch_scale(spec) == want
    cfg = resolve_config("t4", [f"patch_scale={spec}"])
    assert cfg.patch_law == want
