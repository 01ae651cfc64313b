"""train.py end to end on the CPU: dry-run for every preset, smoke run outputs, exact resume, signals, bad input."""
import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import train
from dnnlib.util import run_cli
from training.config import list_presets
from training.state import load_training_state

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["--cfg", "smoke", "--set", "grid_w=2", "--set", "grid_h=2"]


def cli(args, capsys=None):
    """Run train.py in-process; returns (exit code, stdout, stderr)."""
    try:
        run_cli(train.main)(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def only_run_dir(outdir):
    dirs = [d for d in Path(outdir).iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.parametrize("preset", list_presets())
def test_dry_run_every_preset(preset, capsys, tmp_path):
    code, out, err = cli(["--outdir", str(tmp_path), "--cfg", preset, "--data", "/does/not/matter", "--dry-run"],
                         capsys)
    assert code == 0, err
    assert "G total" in out and "D total" in out and '"patch_size"' in out
    if preset in ("carla", "planes"):
        assert "1,498,658" in out
    if preset in ("cars", "chairs"):
        assert "2,975,000" in out
    assert not any(tmp_path.iterdir())           # nothing written, data untouched


def test_smoke_run_writes_everything(tiny_data, tmp_path, capsys):
    code, out, err = cli(["--outdir", str(tmp_path), *SMOKE, "--data", tiny_data, "--kimg", "0.02"], capsys)
    assert code == 0, err
    run_dir = only_run_dir(tmp_path)
    for name in ("log.txt", "training_options.json", "stats.jsonl", "reals.png", "fakes_init.png",
                 "fakes000000.png", "network-snapshot-000000.pkl", "training-state-000000.pt"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert "tick 1" in (run_dir / "log.txt").read_text() and "Training options" in (run_dir / "log.txt").read_text()
    options = json.loads((run_dir / "training_options.json").read_text())
    assert options["config"]["kimg"] == 0.02 and options["presets"] == ["smoke"]
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert "Loss/G/loss" in stats[-1] and "Loss/D/loss" in stats[-1] and "Loss/r1_penalty" in stats[-1]
    assert 0.0 <= stats[-1]["Progress/G_ema_opacity"]["mean"] <= 1.0
    state = load_training_state(run_dir / "training-state-000000.pt")   # weights_only=True
    assert state["counters"]["cur_nimg"] == 20 and state["counters"]["batch_idx"] == 5
    from training.checkpoint import load_network_snapshot
    snap = load_network_snapshot(run_dir / "network-snapshot-000000.pkl")
    assert snap.training_set_kwargs["data"] == tiny_data and snap.config["patch_size"] == 16
    # A second run never reuses the first directory.
    code, _, err = cli(["--outdir", str(tmp_path), *SMOKE, "--data", tiny_data, "--kimg", "0.004"], capsys)
    assert code == 0, err
    assert sorted(d.name[:5] for d in tmp_path.iterdir()) == ["00000", "00001"]


def _final_state(run_dir):
    states = sorted(Path(run_dir).glob("training-state-*.pt"))
    return load_training_state(states[-1])


def test_resume_is_exact_under_deterministic(tiny_data, tmp_path, capsys):
    """8 steps straight == 4 steps + --resume auto + 4 steps (G_ema, D, ADA p, counters), with R1 and ADA active."""
    common = [*SMOKE, "--data", tiny_data, "--deterministic", "--aug", "ada", "--set", "ada_kimg=0.05",
              "--set", "ada_interval=2", "--set", "d_reg_interval=3", "--set", "kimg_per_tick=0.016"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli(["--outdir", str(straight), *common, "--kimg", "0.032"], capsys)[0] == 0
    assert cli(["--outdir", str(split), *common, "--kimg", "0.016"], capsys)[0] == 0
    half = _final_state(only_run_dir(split))
    code, out, err = cli(["--outdir", str(split), *common, "--kimg", "0.032", "--resume", "auto"], capsys)
    assert code == 0, err
    assert "Resuming from" in out and "starting at kimg 0.016" in out
    a, b = _final_state(only_run_dir(straight)), _final_state(only_run_dir(split))
    assert a["counters"] == b["counters"] == {"cur_nimg": 32, "cur_tick": 2, "batch_idx": 8}
    assert half["augment_pipe"]["p"] != 0                       # ADA moved p before the resume ...
    torch.testing.assert_close(a["augment_pipe"]["p"], b["augment_pipe"]["p"], rtol=0, atol=1e-7)  # ... and it continued
    for key in ("G_ema", "D"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=1e-6, msg=f"{key}.{name}")
    lines = (only_run_dir(split) / "stats.jsonl").read_text().splitlines()
    kimgs = [json.loads(line)["Progress/kimg"]["mean"] for line in lines]
    assert kimgs == sorted(kimgs) and kimgs[-1] == 0.032         # the curves continue in the same file


def test_ticks_stay_on_the_kimg_grid_after_a_mid_tick_stop(tiny_data, tmp_path, capsys):
    """A run stopped mid-tick (here: an earlier, shorter --kimg) and continued ends its ticks at the same kimg
    as an uninterrupted run: 0.016 and 0.032, not 0.008 + 0.016."""
    common = [*SMOKE, "--data", tiny_data, "--set", "kimg_per_tick=0.016"]
    assert cli(["--outdir", str(tmp_path), *common, "--kimg", "0.008"], capsys)[0] == 0
    assert cli(["--outdir", str(tmp_path), *common, "--kimg", "0.032", "--resume", "auto"], capsys)[0] == 0
    lines = (only_run_dir(tmp_path) / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["Progress/kimg"]["mean"] for line in lines] == [0.008, 0.016, 0.032]


def test_resume_path_starts_new_run_dir(tiny_data, tmp_path, capsys):
    assert cli(["--outdir", str(tmp_path), *SMOKE, "--data", tiny_data, "--kimg", "0.008"], capsys)[0] == 0
    state = next(only_run_dir(tmp_path).glob("training-state-*.pt"))
    code, out, err = cli(["--outdir", str(tmp_path), *SMOKE, "--data", tiny_data, "--kimg", "0.012",
                          "--resume", str(state)], capsys)
    assert code == 0, err
    dirs = sorted(d for d in tmp_path.iterdir() if d.is_dir())
    assert len(dirs) == 2 and _final_state(dirs[1])["counters"]["cur_nimg"] == 12


@pytest.mark.parametrize("case", ["missing_data", "unknown_preset", "unknown_key", "patch_gt_res", "corrupt_data",
                                  "resume_nothing", "bad_impl", "retired_key", "metrics_detector_missing",
                                  "patch_spacing_too_large"])
def test_bad_input_gives_one_paragraph_and_exit_1(case, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    corrupt = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(corrupt, "w") as zf:
        zf.writestr("img0.png", b"this is not a png")
    args = {
        "missing_data": ["--cfg", "smoke", "--data", str(tmp_path / "nope.zip")],
        "unknown_preset": ["--cfg", "smoke,bogus", "--data", tiny_data],
        "unknown_key": ["--cfg", "smoke", "--data", tiny_data, "--set", "bogus_key=1"],
        "patch_gt_res": ["--cfg", "smoke", "--data", tiny_data, "--set", "patch_size=64"],
        "corrupt_data": ["--cfg", "smoke", "--data", str(corrupt)],
        "resume_nothing": ["--cfg", "smoke", "--data", tiny_data, "--resume", "auto"],
        "bad_impl": ["--cfg", "smoke", "--data", tiny_data, "--set", "impl=fast"],
        # A key that only saved configs may still hold: new input naming it is an error.
        "retired_key": ["--cfg", "smoke", "--data", tiny_data, "--set", "metrics_mlp=fused"],
        "metrics_detector_missing": ["--cfg", "smoke", "--data", tiny_data, "--metrics", "fid1k_full", "--set",
                                     f"metrics_detector={tmp_path / 'no-such-detector.pt'}"],
        # 16 x 16 windows of 32 x 32 images: at most 31 / 15 = 2.066 pixels between rays.
        "patch_spacing_too_large": ["--cfg", "smoke", "--data", tiny_data, "--set", "patch_max_spacing=3"],
    }[case]
    outdir = tmp_path / "runs"
    code, out, err = cli(["--outdir", str(outdir), *args, "--kimg", "0.004"], capsys)
    assert code == 1
    assert err.startswith("Error: ") and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not outdir.exists() or not any(d.is_dir() for d in outdir.iterdir())   # no half-made run directory


def test_subprocess_error_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--outdir", str(tmp_path), "--cfg", "nope",
                           "--dry-run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Unknown preset 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_writes_state_and_exits_cleanly(tiny_data, tmp_path):
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--outdir", str(tmp_path), *SMOKE,
                             "--data", tiny_data, "--kimg", "100"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            run_dirs = [d for d in tmp_path.iterdir() if d.is_dir()]
            if run_dirs and (run_dirs[0] / "fakes_init.png").exists():
                break
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Received signal" in out
    state = _final_state(only_run_dir(tmp_path))
    assert state["counters"]["cur_nimg"] > 0 and state["counters"]["cur_nimg"] % 4 == 0


def _smoke_step(tiny_data):
    from training.config import resolve_config
    from training.phases import TrainStep
    from training.training_loop import build_networks
    cfg = resolve_config("smoke", ["max_bad_steps=3"], {"data": tiny_data})
    nets = build_networks(cfg, 32, torch.device("cpu"))
    step = TrainStep(cfg, nets.G, nets.D, nets.G_ema, nets.augment_pipe, torch.device("cpu"),
                     torch.Generator().manual_seed(0))
    return cfg, nets, step


def test_step_updates_g_ema_from_the_g_after_gmain(tiny_data):
    """One step = Gmain, then G_ema moves toward that G (issued before Dmain: on a GPU it overlaps Dmain on a side
    stream, which is only correct because Dmain and Dreg leave G alone); the image count comes first."""
    import copy

    from training.loss import ema_beta, update_ema
    cfg, nets, step = _smoke_step(tiny_data)
    assert step.ema_stream is None                             # CPU: in line
    reals = torch.randint(0, 256, [4, 3, 32, 32], dtype=torch.uint8)
    ema_before = copy.deepcopy(nets.G_ema)
    g_before = [p.detach().clone() for p in nets.G.parameters()]
    step(reals, 1)
    moved = [not torch.equal(p, q) for p, q in zip(nets.G.parameters(), g_before)]
    assert any(moved)
    update_ema(ema_before, nets.G, ema_beta(cfg.batch, torch.tensor(cfg.batch), cfg.ema_kimg, cfg.ema_rampup))
    for a, b in zip(nets.G_ema.parameters(), ema_before.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(step.cur_nimg) == cfg.batch


def test_bad_steps_counted_on_device_and_abort(tiny_data):
    from dnnlib.util import EasyDict
    from training.training_loop import TrainingDiverged, check_bad_steps
    cfg, nets, step = _smoke_step(tiny_data)
    for b in (True, True, False, True, True, True, False):
        step._count_bad(torch.tensor(b))
    assert step.read_bad_steps() == (3, 5)
    assert step.read_bad_steps() == (0, 5)                    # the longest run resets at each check
    with torch.no_grad():
        next(nets.D.parameters()).fill_(float("nan"))          # every D gradient becomes NaN
    reals = torch.randint(0, 256, [4, 3, 32, 32], dtype=torch.uint8)
    for i in range(3):
        step(reals, i + 1)
    assert all(torch.isfinite(p).all() for p in nets.G.parameters())   # sanitised (nan -> 0), never applied
    run = EasyDict(step=step, cfg=cfg, cur_nimg=12)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps had non-finite gradients"):
        check_bad_steps(run)


@pytest.mark.slow
def test_acceptance_smoke_synth_chairs(tmp_path, monkeypatch, capsys):
    """The README's quick-start command (synthetic set generated into a fresh cache), then --resume auto."""
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path / "cache"))
    args = ["--outdir", str(tmp_path / "R"), "--cfg", "smoke", "--data", "synth:chairs"]
    code, out, err = cli([*args, "--kimg", "0.2"], capsys)
    assert code == 0, err
    run_dir = only_run_dir(tmp_path / "R")
    assert (run_dir / "network-snapshot-000000.pkl").is_file() and (run_dir / "training-state-000000.pt").is_file()
    p_saved = _final_state(run_dir)["augment_pipe"]["p"]
    code, out, err = cli([*args, "--kimg", "0.25", "--resume", "auto"], capsys)
    assert code == 0, err
    assert "starting at kimg 0.200" in out and "augment 0.500" in out
    assert _final_state(run_dir)["augment_pipe"]["p"] == p_saved


def test_divergence_warning_signs():
    from training.training_loop import divergence_warning
    stat = lambda v: {"num": 1, "mean": v, "std": 0.0}  # noqa: E731
    assert divergence_warning({}) is None
    assert divergence_warning({"Progress/loss_scale_D": stat(4096.0), "Loss/r1_penalty": stat(0.4)}) is None
    msg = divergence_warning({"Progress/loss_scale_D": stat(0.84), "Loss/r1_penalty": stat(8230.0)})
    assert "loss scale fell to 0.84" in msg and "R1 penalty is 8230" in msg and "d_lr=0.001" in msg
    assert "R1 penalty is nan" in divergence_warning({"Loss/r1_penalty": stat(float("nan"))})



def test_the_run_prints_one_backend_line_and_takes_impl(tiny_data, tmp_path, capsys):
    code, out, err = cli(["--outdir", str(tmp_path), *SMOKE, "--data", tiny_data, "--kimg", "0.004", "--impl",
                          "reference"], capsys)
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("Backend:")]
    assert lines == ["Backend: impl=reference on cpu (plain eager PyTorch)."]
    assert json.loads((only_run_dir(tmp_path) / "training_options.json").read_text())["config"]["impl"] == \
        "reference"
    code, out, err = cli(["--outdir", str(tmp_path / "auto"), *SMOKE, "--data", tiny_data, "--kimg", "0.004"], capsys)
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("Backend:")]
    assert len(lines) == 1 and lines[0].startswith("Backend: impl=auto on cpu: eager step"), lines


@pytest.mark.slow  # ~25 s on 2 cores: one FID-1k (1,000 smoke renders)
def test_snapshot_metrics_use_the_metrics_detector_file(tiny_data, tmp_path, capsys, standin_detector):
    """--set metrics_detector=FILE: the metrics at each snapshot use that TorchScript file (its sha1 is recorded)."""
    from metrics.detector import file_sha1
    code, out, err = cli(["--outdir", str(tmp_path), *SMOKE, "--data", tiny_data, "--kimg", "0.004", "--metrics",
                          "fid1k_full", "--set", f"metrics_detector={standin_detector}"], capsys)
    assert code == 0, err
    recs = [json.loads(ln) for ln in (only_run_dir(tmp_path) / "metric-fid1k_full.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["detector_sha1"] == file_sha1(standin_detector)
    assert recs[0]["results"]["fid1k_full"] >= 0


def test_random_scale_windows_train(tiny_data, tmp_path, capsys):
    """--set patch_max_spacing: fakes and reals both at random scales; the run trains and records the option."""
    code, out, err = cli(["--outdir", str(tmp_path), *SMOKE, "--data", tiny_data, "--kimg", "0.008", "--set",
                          "patch_max_spacing=2"], capsys)
    assert code == 0, err
    opts = json.loads((only_run_dir(tmp_path) / "training_options.json").read_text())
    assert opts["config"]["patch_max_spacing"] == 2.0


def test_empty_render_probe_and_warning(tiny_data):
    """G_ema whose density logit is pushed far below zero renders nothing: the per-tick probe sees opacity 0 and
    warns; pushed far above zero every pixel is opaque and nothing is said."""
    from dnnlib.util import EasyDict
    from training.training_loop import EMPTY_PROBES, empty_render_warning, probe_opacity
    cfg, nets, _ = _smoke_step(tiny_data)
    gen = torch.Generator().manual_seed(1)
    run = EasyDict(G_ema=nets.G_ema, cfg=cfg, grid_z=nets.G.sample_z(10, generator=gen),
                   grid_c2w=nets.G.sample_poses(10, generator=gen))
    rng = torch.get_rng_state()
    bias = nets.G_ema.nerf.layers[-1].bias
    with torch.no_grad():
        bias[3] = -1e4
    empty = probe_opacity(run)
    assert empty.shape == (EMPTY_PROBES,) and float(empty.max()) == 0.0
    msg = empty_render_warning(empty)
    assert "renders empty scenes" in msg and "d_lr=0.001" in msg and "--seed" in msg
    with torch.no_grad():
        bias[3] = 1e4
    full = probe_opacity(run)
    assert float(full.min()) > 0.99 and empty_render_warning(full) is None
    assert torch.equal(torch.get_rng_state(), rng)                       # the probe draws nothing
    assert empty_render_warning(torch.tensor([0.0, 0.0, 0.02])) is None  # one object is enough
    assert empty_render_warning(torch.zeros(0)) is None


def test_frozen_g_warning_unit():
    from training.training_loop import frozen_g_warning, param_fingerprint
    net = torch.nn.Linear(3, 2)
    before = param_fingerprint(net)
    assert before.shape == (2,)
    assert frozen_g_warning(None, before, 5) is None                       # no earlier fingerprint
    assert frozen_g_warning(before, param_fingerprint(net), 0) is None     # no steps in the tick
    msg = frozen_g_warning(before, param_fingerprint(net), 5)
    assert "none of G's 2 parameter tensors changed" in msg and "5 steps" in msg and "README" in msg
    with torch.no_grad():
        net.bias[0] += 1e-3
    assert frozen_g_warning(before, param_fingerprint(net), 5) is None     # one tensor moved: G learns
    assert "G_ema is not learning (its EMA update" in frozen_g_warning(before, before.clone(), 3, "G_ema")


def test_training_warns_when_g_does_not_learn(tiny_data, tmp_path, capsys, monkeypatch):
    """A G whose optimiser never moves it (lr 0, as a broken backward would leave it) is named at every tick and
    stats.jsonl records it (max_frozen_ticks=0), or the run stops with a clear error after max_frozen_ticks ticks;
    a normal run has Progress/G_frozen 0."""
    from training import phases
    real = phases.make_optimizer
    calls = []

    def g_frozen(params, lr, *args, **kwargs):
        calls.append(lr)
        return real(params, 0.0 if len(calls) % 2 else lr, *args, **kwargs)   # each step makes G's, then D's
    args = [*SMOKE, "--data", tiny_data, "--kimg", "0.016", "--set", "kimg_per_tick=0.008"]
    assert cli(["--outdir", str(tmp_path / "ok"), *args], capsys)[0] == 0
    stats = [json.loads(s) for s in (only_run_dir(tmp_path / "ok") / "stats.jsonl").read_text().splitlines()]
    assert [s["Progress/G_frozen"]["mean"] for s in stats] == [0.0, 0.0]
    assert [s["Progress/G_ema_frozen"]["mean"] for s in stats] == [0.0, 0.0]
    monkeypatch.setattr(phases, "make_optimizer", g_frozen)
    code, out, err = cli(["--outdir", str(tmp_path / "stop"), *args, "--set", "max_frozen_ticks=1"], capsys)
    assert code == 1 and "G did not change in 1 consecutive ticks" in err and "Traceback" not in err
    code, out, err = cli(["--outdir", str(tmp_path / "frozen"), *args, "--set", "max_frozen_ticks=0"], capsys)
    assert code == 0, err
    assert out.count("none of G's") == 2 and "G is not learning" in out
    assert out.count("none of G_ema's") == 2          # G_ema follows a frozen G
    stats = [json.loads(s) for s in (only_run_dir(tmp_path / "frozen") / "stats.jsonl").read_text().splitlines()]
    assert [s["Progress/G_frozen"]["mean"] for s in stats] == [1.0, 1.0]
    assert [s["Progress/G_ema_frozen"]["mean"] for s in stats] == [1.0, 1.0]


def test_gmain_freezes_d_only_for_its_own_backward(tiny_data):
    """Gmain turns D's requires_grad off (D's backward then computes only input gradients): G's gradient is the one
    of an unfrozen D, D gets no gradient, and D's parameters require grad again afterwards."""
    cfg, nets, step = _smoke_step(tiny_data)
    state = step.generator.get_state()                                     # a copy: the same draws twice
    nets.G.zero_grad(set_to_none=True)
    step.loss.gmain(4).backward(inputs=step.G_params)                     # D unfrozen, no optimiser step
    want = [p.grad.clone() for p in step.G_params]
    step.generator.set_state(state)
    nets.D.zero_grad(set_to_none=True)
    step.opt_G.step = lambda *a, **k: None                                 # keep G's weights to compare grads
    step.gmain_phase(4)
    assert all(p.requires_grad for p in step.D_params)
    assert all(p.grad is None for p in step.D_params)
    for p, w in zip(step.G_params, want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-7)


def test_compiled_d_is_recompiled_when_its_parameters_are_frozen():
    """The compiled first-order D sees Gmain (frozen parameters) and Dmain (trainable) calls alternately; each must
    get its own graph, or Dmain would train D with the graph of a frozen D (no weight gradients)."""
    from training.networks.discriminator import Discriminator
    torch.manual_seed(0)
    D = Discriminator(16, channel_base=256, channel_max=32)
    compiled = torch.compile(D, backend="aot_eager")
    x = torch.randn(4, 3, 16, 16)
    for _ in range(2):
        for p in D.parameters():
            p.requires_grad_(False)
        xi = x.clone().requires_grad_(True)
        compiled(xi).sum().backward()
        assert xi.grad is not None and all(p.grad is None for p in D.parameters())
        for p in D.parameters():
            p.requires_grad_(True)
        compiled(x).sum().backward()
        got = [p.grad.clone() for p in D.parameters()]
        D.zero_grad(set_to_none=True)
        D(x).sum().backward()
        for g, p in zip(got, D.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)
        D.zero_grad(set_to_none=True)


def test_training_steps_on_the_fused_layers_equal_the_cublas_ones(tiny_data):
    """Three full steps (Gmain, Dmain, lazy R1 at step 0) from the same state with G's MLP on the fused chain (the
    backend's g_layers=fused; on a CPU its op is the reference) and on the tuned cuBLAS layers (the same padded
    GEMMs): the same G and D after. (The plain layers equal these in float64: tests/test_backend.py.)"""
    from torch_utils import backend
    from training.config import resolve_config
    from training.phases import TrainStep
    from training.training_loop import build_networks
    finals = []
    cfg = resolve_config("smoke", [], {"data": tiny_data})
    for layers in ("tuned", "fused"):
        torch.manual_seed(0)
        nets = build_networks(cfg, 32, torch.device("cpu"))
        step = TrainStep(cfg, nets.G, nets.D, nets.G_ema, nets.augment_pipe, torch.device("cpu"),
                         torch.Generator().manual_seed(0), selection=backend.REFERENCE.replace(g_layers=layers))
        reals = torch.randint(0, 256, [4, 3, 32, 32], dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        for i in range(3):
            step(reals, i)
        finals.append([p.detach().clone() for p in [*nets.G.parameters(), *nets.D.parameters()]])
    torch.manual_seed(0)
    start = build_networks(cfg, 32, torch.device("cpu"))
    n_g = len(list(start.G.parameters()))
    assert sum(not torch.equal(a, b) for a, b in zip(finals[0][:n_g], start.G.parameters())) > n_g // 2   # G moved
    for other in finals[1:]:
        for a, b in zip(finals[0], other):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
