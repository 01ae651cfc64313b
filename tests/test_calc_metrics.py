"""calc_metrics.py end to end: --compare on tiny image sets, a run directory with a real tiny Generator snapshot
(jsonl provenance, skipping, --force), and clear errors (exit 1) for bad input. Uses a TorchScript stand-in detector."""
from __future__ import annotations

import json
import zipfile

import pytest
from conftest import invoke, random_pngs
import torch

import calc_metrics
from training.checkpoint import save_network_snapshot
from training.networks.generator import Generator


@pytest.fixture()
def env(tmp_path, monkeypatch, standin_detector):
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path, standin_detector


def _write_images(folder, n: int, res: int, seed: int, as_zip: bool = False) -> str:
    random_pngs(folder, n, res, seed=seed, name="img{i:04d}.png")
    if not as_zip:
        return str(folder)
    zpath = folder.with_suffix(".zip")
    with zipfile.ZipFile(zpath, "w") as z:
        for i in range(n):
            z.write(folder / f"img{i:04d}.png", f"img{i:04d}.png")
    return str(zpath)


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process through its run_cli wrapper; returns (exit code, stdout, stderr)."""
    return invoke(calc_metrics.main, args, capsys)


def test_compare_two_image_sets(env, capsys):
    tmp, det = env
    a = _write_images(tmp / "a", 12, 16, seed=0)
    b = _write_images(tmp / "b", 10, 16, seed=1, as_zip=True)
    code, out, err = run(["--data", a, "--compare", b, "--metrics", "fid1k_full,kid1k_full", "--detector", det,
                          "--device", "cpu"], capsys)
    assert code == 0, err
    assert "fid1k_full=" in out and "kid1k_full=" in out and "n_real" in out
    row = next(line for line in out.splitlines() if "fid1k_full=" in line).split()
    assert row[-3:-1] == ["12", "10"]  # all of A vs the first min(1000, 10) of B
    code, out, _ = run(["--data", a, "--compare", a, "--metrics", "fid1k_full", "--detector", det], capsys)
    assert code == 0 and abs(float(out.split("fid1k_full=")[1].split()[0])) < 1e-6


@pytest.mark.parametrize("args,message", [
    (["--network", "missing-run-dir"], "Network not found"),
    (["--network", ".", "--metrics", "fid1k_full,is50k"], "Valid metrics: fid1k_full"),
    (["--data", "x", "--compare", "y", "--detector", "no-such-detector.pt"], "pip install --no-deps"),
    (["--compare", "y"], "--compare needs --data"),
    ([], "Pass --network"),
])
def test_bad_input_exits_1_with_clear_message(env, capsys, args, message):
    code, out, err = run(args + ["--device", "cpu"], capsys)
    assert code == 1
    assert message in err and "Traceback" not in err


def test_run_dir_snapshot_jsonl_skip_and_force(env, capsys):
    tmp, det = env
    data = _write_images(tmp / "reals", 8, 16, seed=2)
    torch.manual_seed(0)
    kwargs = dict(z_dim=8, w_dim=8, num_layers=2, width=16, rank=2, multires=2, img_resolution=16, num_samples=2)
    G = Generator(**kwargs)
    run_dir = tmp / "run"
    save_network_snapshot(run_dir / "network-snapshot-000004.pkl", G=G, G_ema=G, training_set_kwargs={"path": data},
                          kimg=4.0)
    args = ["--network", run_dir, "--metrics", "fid1k_full", "--detector", det, "--device", "cpu", "--batch", "250"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    lines = (run_dir / "metric-fid1k_full.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["snapshot_pkl"] == "network-snapshot-000004.pkl" and rec["kimg"] == 4.0
    assert (rec["n_real"], rec["n_fake"], rec["seed"]) == (8, 1000, 0)
    assert rec["detector_sha1"] and rec["resize"] == "nv_bilinear_float_32" and rec["results"]["fid1k_full"] > 0
    assert f"{rec['results']['fid1k_full']:.6g}" in out
    assert rec["mlp"] == "torch" and "mlp torch" in out          # --impl auto on a CPU: the PyTorch MLP, recorded
    code, out, _ = run(args, capsys)
    assert code == 0 and "skipped" in out
    assert len((run_dir / "metric-fid1k_full.jsonl").read_text().splitlines()) == 1
    code, _, _ = run(args + ["--force"], capsys)
    lines = (run_dir / "metric-fid1k_full.jsonl").read_text().splitlines()
    assert code == 0 and len(lines) == 2
    assert json.loads(lines[1])["results"] == rec["results"]  # same seed -> same z/poses -> same value


def test_impl_option(env, capsys, monkeypatch):
    """--impl reference renders what the default (auto) does on a CPU, up to float rounding; a bad value names the
    choices before any data is read or any record written."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tmp, det = env
    data = _write_images(tmp / "reals", 8, 16, seed=2)
    kwargs = dict(z_dim=8, w_dim=8, num_layers=2, width=16, rank=2, multires=2, img_resolution=16, num_samples=2)
    torch.manual_seed(0)
    G = Generator(**kwargs)
    run_dir = tmp / "run"
    save_network_snapshot(run_dir / "network-snapshot-000004.pkl", G=G, G_ema=G, training_set_kwargs={"path": data},
                          kimg=4.0)
    args = ["--network", run_dir, "--metrics", "fid1k_full", "--detector", det, "--device", "cpu", "--batch", "250"]
    code, _, err = run(args + ["--impl", "nope"], capsys)
    assert code != 0 and "--impl" in err and "'auto', 'reference'" in err and "Traceback" not in err
    assert not (run_dir / "metric-fid1k_full.jsonl").exists()
    code, out, err = run(args + ["--impl", "reference"], capsys)
    assert code == 0 and "mlp torch" in out and "Backend: impl=reference on cpu" in out, err
    code, out, err = run(args + ["--force"], capsys)                      # the default: auto
    assert code == 0 and "Backend: impl=auto on cpu" in out, err
    recs = [json.loads(line) for line in (run_dir / "metric-fid1k_full.jsonl").read_text().splitlines()]
    assert [r["mlp"] for r in recs] == ["torch", "torch"]
    a, b = recs[0]["results"]["fid1k_full"], recs[1]["results"]["fid1k_full"]
    assert abs(a - b) <= 1e-3 * max(abs(a), 1.0), (a, b)


def test_reals_never_include_xflips(env):
    from metrics.detector import load_detector
    from metrics.feature_stats import dataset_features
    from training.dataset import ImageDataset
    tmp, det = env
    folder = _write_images(tmp / "flip", 5, 16, seed=3)
    d = load_detector(det, "cpu")
    plain = dataset_features(ImageDataset(folder), d, capture_all=True, cache=False)
    flipped = dataset_features(ImageDataset(folder, xflip=True), d, capture_all=True, cache=False)
    assert flipped.num_items == plain.num_items == 5
    torch.testing.assert_close(flipped.get_all(), plain.get_all())


def test_recorded_data_path_that_is_gone_asks_for_data(env, capsys):
    """A snapshot trained elsewhere (the authors' files record a relative path) names --data when its path is gone."""
    tmp, det = env
    G = Generator(z_dim=8, w_dim=8, num_layers=2, width=16, rank=2, multires=2, img_resolution=16, num_samples=2)
    pkl = tmp / "network-snapshot-000004.pkl"
    save_network_snapshot(pkl, G=G, G_ema=G, training_set_kwargs={"path": "data/gone.zip"}, kimg=4.0)
    code, _, err = run(["--network", pkl, "--metrics", "fid1k_full", "--detector", det, "--device", "cpu"], capsys)
    assert code == 1 and "pass --data" in err and "data/gone.zip" in err and "Traceback" not in err
