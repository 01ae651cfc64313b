"""generate.py on a tiny CPU snapshot: every subcommand writes its files; seeds are reproducible; errors are clean."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v2 as iio
import numpy as np
import pytest
from conftest import invoke
import torch
from PIL import Image

import generate
from training.checkpoint import load_network_snapshot, save_network_snapshot
from training.mesh import read_ply
from training.networks.generator import Generator

RES = 24
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> str:
    torch.manual_seed(0)
    kwargs = dict(z_dim=16, w_dim=16, mapping_layers=2, num_layers=4, width=32, rank=4, multires=4,
                  img_resolution=RES, num_samples=8)
    G, G_ema = Generator(**kwargs), Generator(**kwargs)
    G_ema.load_state_dict(G.state_dict())
    path = tmp_path_factory.mktemp("snap") / "network-snapshot-000000.pkl"
    save_network_snapshot(path, G=G, G_ema=G_ema, D=None)
    return str(path)


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process through its run_cli wrapper; returns (exit code, stdout, stderr)."""
    return invoke(generate.main, args, capsys)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def read_video(path) -> tuple[int, tuple[int, int, int]]:
    reader = iio.get_reader(str(path))
    try:
        return reader.count_frames(), reader.get_data(0).shape
    finally:
        reader.close()


def test_images_are_reproducible_per_seed(snapshot, tmp_path, capsys):
    base = ["images", "--network", snapshot, "--device", "cpu"]
    assert run(base + ["--seeds", "0-2", "--outdir", tmp_path / "a"], capsys)[0] == 0
    assert run(base + ["--seeds", "2,0", "--outdir", tmp_path / "b"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["seed0000.png", "seed0001.png", "seed0002.png"]
    for name in ("seed0000.png", "seed0002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert png(tmp_path / "a" / "seed0000.png").shape == (RES, RES, 3)
    assert not np.array_equal(png(tmp_path / "a" / "seed0000.png"), png(tmp_path / "a" / "seed0001.png"))


def test_images_contact_sheet_tiles_the_seed_images(snapshot, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    args = ["images", "--network", snapshot, "--device", "cpu", "--seeds", "0-3", "--outdir", tmp_path / "s",
            "--sheet", sheet]
    assert run(args, capsys)[0] == 0
    grid = png(sheet)
    assert grid.shape == (2 * RES, 2 * RES, 3)
    np.testing.assert_array_equal(grid[:RES, RES:], png(tmp_path / "s" / "seed0001.png"))
    np.testing.assert_array_equal(grid[RES:, :RES], png(tmp_path / "s" / "seed0002.png"))


def test_images_resolution_and_fixed_pose(snapshot, tmp_path, capsys):
    base = ["images", "--network", snapshot, "--device", "cpu", "--seeds", "1"]
    assert run(base + ["--outdir", tmp_path / "hi", "--resolution", 40, "--pose", "front"], capsys)[0] == 0
    assert png(tmp_path / "hi" / "seed0001.png").shape == (40, 40, 3)
    assert run(base + ["--outdir", tmp_path / "f", "--pose", "0,0"], capsys)[0] == 0
    assert run(base + ["--outdir", tmp_path / "r", "--pose", "random"], capsys)[0] == 0
    front = png(tmp_path / "f" / "seed0001.png")
    G = load_network_snapshot(snapshot).G_ema
    z, _ = generate.seed_latents(G, [1], torch.device("cpu"))
    expected = generate.render(G, G.mapping(z), generate.poses(G, [0.0], [0.0], torch.device("cpu")), None)
    np.testing.assert_array_equal(front, generate.to_uint8(expected)[0])
    assert not np.array_equal(front, png(tmp_path / "r" / "seed0001.png"))


def test_generator_at_resolution_leaves_g_untouched(snapshot):
    G = load_network_snapshot(snapshot).G_ema
    assert generate.generator_at_resolution(G, None) is G and generate.generator_at_resolution(G, RES) is G
    G2 = generate.generator_at_resolution(G, 2 * RES)
    assert G.img_resolution == RES and G2.img_resolution == 2 * RES
    for a, b in zip(G.state_dict().values(), G2.state_dict().values()):
        assert torch.equal(a, b)


def test_interp_video_and_strip(snapshot, tmp_path, capsys):
    out = tmp_path / "interp.mp4"
    args = ["interp", "--network", snapshot, "--device", "cpu", "--seeds", "0-2", "--frames", 5, "--out", out,
            "--steps", 4, "--pose", "30,30"]
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "interp.mp4" in stdout
    assert read_video(out) == (5, (32, 48, 3))                 # 2 pairs side by side: 48 x 24, padded to 48 x 32
    strip = png(tmp_path / "interp.png")
    assert strip.shape == (2 * RES, 4 * RES, 3)                # one row per pair, --steps columns
    run(["images", "--network", snapshot, "--device", "cpu", "--seeds", "0-2", "--pose", "30,30",
         "--outdir", tmp_path / "ref"], capsys)
    seed = [png(tmp_path / "ref" / f"seed{k:04d}.png").astype(int) for k in range(3)]
    assert np.abs(strip[:RES, :RES] - seed[0]).max() == 0     # t = 0 is the first seed
    assert np.abs(strip[:RES, -RES:] - seed[1]).max() <= 1    # t = 1 is the second seed (rounding)
    assert np.abs(strip[RES:, :RES] - seed[1]).max() <= 1     # the next row starts there
    assert run(args, capsys)[0] == 1                           # exists, no --force
    code, _, _ = run(args + ["--force", "--space", "w", "--method", "slerp", "--orbit"], capsys)
    assert code == 0 and read_video(out)[0] == 5


def test_orbit_and_front_videos(snapshot, tmp_path, capsys):
    base = ["--network", snapshot, "--device", "cpu", "--fps", 10]
    assert run(["orbit", *base, "--seeds", "0-3", "--frames", 6, "--out", tmp_path / "o.mp4"], capsys)[0] == 0
    assert read_video(tmp_path / "o.mp4") == (6, (48, 48, 3))  # 2 x 2 grid of 24 px
    assert run(["front", *base, "--seeds", "0", "--out", tmp_path / "f.mp4"], capsys)[0] == 0
    assert read_video(tmp_path / "f.mp4") == (128, (32, 32, 3))


def test_schedules_match_the_reference():
    az, el = generate.front_schedule()
    assert az.shape == el.shape == (128,)
    assert az[0] == -20 and az[63] == 20 and az[64] == 20 and az[127] == -20
    assert el[0] == 0 and el[31] == pytest.approx(-8) and el[95] == pytest.approx(8) and el[127] == 0  # elev = -phi
    t, azim = generate.interp_schedule(8, (30.0, 20.0), orbit=True)
    assert t[0] == 0 and t[4] == pytest.approx(1.0) and azim[0] == 30 and azim[4] == pytest.approx(210)


def test_lerp_slerp_endpoints_and_norm():
    a, b = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), torch.randn(3, 16)
    t = torch.tensor([0.0, 0.3, 1.0])
    for fn in (generate.lerp, generate.slerp):
        out = fn(a, b, t)
        assert out.shape == (3, 3, 16)
        torch.testing.assert_close(out[0], a)
        torch.testing.assert_close(out[2], b, atol=1e-5, rtol=1e-5)
    u = torch.nn.functional.normalize(a, dim=-1)
    v = torch.nn.functional.normalize(b, dim=-1)
    torch.testing.assert_close(generate.slerp(u, v, t).norm(dim=-1), torch.ones(3, 3))
    torch.testing.assert_close(generate.slerp(u, u, t), u.expand(3, 3, 16))


def test_depth_outputs(snapshot, tmp_path, capsys):
    args = ["depth", "--network", snapshot, "--device", "cpu", "--seeds", "3", "--outdir", tmp_path]
    assert run(args, capsys)[0] == 0
    rgb, opacity = png(tmp_path / "seed0003.png"), png(tmp_path / "seed0003_opacity.png")
    im = Image.open(tmp_path / "seed0003_depth.png")
    depth = np.asarray(im)
    assert rgb.shape == (RES, RES, 3) and opacity.shape == (RES, RES) and opacity.dtype == np.uint8
    assert im.mode.startswith("I") and depth.shape == (RES, RES) and depth.max() > 255   # 16-bit
    G = load_network_snapshot(snapshot).G_ema
    surface = depth[opacity >= 0.05 * 255 + 1]
    assert surface.size > 0 and surface.min() >= G.near * 1000 - 1 and surface.max() <= G.far * 1000 + 1
    assert (depth[opacity < 0.05 * 255 - 1] == 0).all()
    assert np.array_equal(rgb, png_from_images(snapshot, tmp_path, capsys))


def png_from_images(snapshot, tmp_path, capsys) -> np.ndarray:
    run(["images", "--network", snapshot, "--device", "cpu", "--seeds", "3", "--outdir", tmp_path / "img"], capsys)
    return png(tmp_path / "img" / "seed0003.png")


def test_mesh_from_generator(snapshot, tmp_path, capsys):
    G = load_network_snapshot(snapshot).G_ema
    z, _ = generate.seed_latents(G, [0], torch.device("cpu"))
    with torch.no_grad():
        pts = torch.rand(1, 4096, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
        sigma = G.query_field(G.mapping(z), pts)[1]
    threshold = float(sigma.quantile(0.7))
    args = ["mesh", "--network", snapshot, "--device", "cpu", "--seeds", "0", "--outdir", tmp_path,
            "--grid", 16, "--threshold", threshold, "--ray-chunk", 256]
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "seed0000.ply" in stdout
    m = read_ply(tmp_path / "seed0000.ply")
    assert len(m.faces) > 0 and m.colors is not None
    assert np.abs(m.vertices).max() <= 1.0 + 1e-6
    code, _, err = run(args[:-4] + ["--threshold", 1e9], capsys)
    assert code == 1 and "lower --threshold" in err


def test_gif_fallback_through_the_cli(snapshot, tmp_path, capsys, monkeypatch):
    import imageio_ffmpeg

    def missing():
        raise RuntimeError("No ffmpeg exe could be found.")
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    code, stdout, _ = run(["orbit", "--network", snapshot, "--device", "cpu", "--seeds", "0", "--frames", 3,
                           "--out", tmp_path / "o.mp4"], capsys)
    assert code == 0 and "GIF" in stdout
    assert not (tmp_path / "o.mp4").exists() and Image.open(tmp_path / "o.gif").n_frames == 3


@pytest.mark.parametrize("case", ["missing", "corrupt", "range", "word", "unwritable", "unwritable_dir", "pose"])
def test_user_errors_exit_1_without_traceback(snapshot, tmp_path, capsys, case):
    (tmp_path / "corrupt.pkl").write_bytes(Path(snapshot).read_bytes()[:200])
    (tmp_path / "file").write_text("not a folder")
    net, seeds, target = snapshot, "0", ["--outdir", tmp_path / "o"]
    cmd, expect = "images", "Error:"
    if case == "missing":
        net, expect = str(tmp_path / "none.pkl"), "not found"
    elif case == "corrupt":
        net, expect = str(tmp_path / "corrupt.pkl"), "corrupt"
    elif case == "range":
        seeds, expect = "5-2", "5-2"
    elif case == "word":
        seeds, expect = "abc", "abc"
    elif case == "unwritable":
        cmd, target, expect = "orbit", ["--out", tmp_path / "file" / "o.mp4"], "writable"
    elif case == "unwritable_dir":
        target, expect = ["--outdir", tmp_path / "file" / "sub"], "writable"
    elif case == "pose":
        target, expect = target + ["--pose", "north"], "--pose"
    code, _, err = run([cmd, "--network", net, "--device", "cpu", "--seeds", seeds, *target], capsys)
    assert code == 1 and expect in err and "Traceback" not in err


def test_impl_option(snapshot, tmp_path, capsys, monkeypatch):
    """--impl: auto (the default) and reference both render on a CPU (the same images up to float rounding), each
    command prints the backend's one line, and a bad value names the choices."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    base = ["images", "--network", snapshot, "--device", "cpu", "--seeds", "0-1"]
    for impl in ("auto", "reference", "REFERENCE"):
        code, out, err = run(base + ["--outdir", tmp_path / impl, "--impl", impl], capsys)
        assert code == 0, err
        assert [ln for ln in out.splitlines() if ln.startswith("Backend: impl=")], out
    assert run(base + ["--outdir", tmp_path / "default"], capsys)[0] == 0
    for name in ("seed0000.png", "seed0001.png"):
        ref = (tmp_path / "reference" / name).read_bytes()
        assert (tmp_path / "REFERENCE" / name).read_bytes() == ref
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "auto" / name).read_bytes()
        a = np.asarray(Image.open(tmp_path / "auto" / name), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "reference" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1                    # the same function; at most one 8-bit rounding apart
    code, _, err = run(["depth", "--network", snapshot, "--device", "cpu", "--seeds", "0", "--outdir",
                        tmp_path / "d", "--impl", "reference"], capsys)
    assert code == 0, err
    code, _, err = run(base + ["--outdir", tmp_path / "bad", "--impl", "fast"], capsys)
    assert code != 0 and "--impl" in err and "'auto', 'reference'" in err and "Traceback" not in err
    code, _, err = run(base + ["--outdir", tmp_path / "bad", "--mlp", "torch"], capsys)
    assert code != 0 and "--mlp" in err and "Traceback" not in err          # the old option is gone


def test_corrupt_snapshot_in_a_subprocess(snapshot, tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x05 definitely not a snapshot")
    proc = subprocess.run([sys.executable, str(REPO / "generate.py"), "images", "--network", str(bad),
                           "--seeds", "0-1", "--outdir", str(tmp_path / "o"), "--device", "cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "Error:" in proc.stderr and "bad.pkl" in proc.stderr and "Traceback" not in proc.stderr
    assert not any((tmp_path / "o").glob("*.png"))
