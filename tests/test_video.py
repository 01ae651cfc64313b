"""training/video.py: uint8 conversion, grids, padding, MP4 read-back, overwrite policy, GIF fallback."""
from __future__ import annotations

import os

import imageio.v2 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from dnnlib.util import UserError
from training import video


def _frames(n: int, h: int = 40, w: int = 70) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 200 // w, yy * 200 // h, np.full_like(xx, 90)], -1).astype(np.uint8)   # smooth ramps
    return [np.roll(base, 3 * k, axis=1) for k in range(n)]


def test_to_uint8_float_nchw_matches_convention():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 4).expand(2, 3, 1, 4)   # [2, 3, 1, 4]
    out = video.to_uint8(x)
    assert out.shape == (2, 1, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    np.testing.assert_array_equal(video.to_uint8(x.numpy()), out)
    hwc = np.arange(2 * 5 * 4 * 3, dtype=np.uint8).reshape(2, 5, 4, 3)
    np.testing.assert_array_equal(video.to_uint8(hwc), hwc)
    np.testing.assert_array_equal(video.to_uint8(hwc[0]), hwc[:1])


def test_make_grid_places_cells_row_major_and_leaves_white():
    imgs = np.stack([np.full((2, 3, 3), 10 * (k + 1), np.uint8) for k in range(5)])   # [5, 2, 3, 3]
    grid = video.make_grid(imgs, grid=(3, 2))
    assert grid.shape == (4, 9, 3)
    assert grid[0, 0, 0] == 10 and grid[0, 3, 0] == 20 and grid[0, 6, 0] == 30
    assert grid[2, 0, 0] == 40 and grid[2, 3, 0] == 50 and (grid[2:, 6:] == 255).all()
    assert video.grid_shape(9) == (3, 3) and video.grid_shape(5) == (3, 2) and video.grid_shape(1) == (1, 1)
    with pytest.raises(ValueError):
        video.make_grid(imgs, grid=(2, 2))


def test_save_image_grid_roundtrip(tmp_path):
    imgs = torch.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    canvas = video.save_image_grid(imgs, tmp_path / "g.png", grid=(2, 2))
    back = np.asarray(Image.open(tmp_path / "g.png"))
    assert back.shape == (16, 16, 3)
    np.testing.assert_array_equal(back, canvas)
    np.testing.assert_array_equal(back[8:, 8:], video.to_uint8(imgs)[3])
    video.save_image_grid(imgs, tmp_path / "g.jpg")
    assert Image.open(tmp_path / "g.jpg").size == (16, 16)
    with pytest.raises(UserError):
        video.save_image_grid(imgs, tmp_path / "g.bmpx")


def test_pad_to_multiple_pads_white_bottom_right():
    f = np.zeros((40, 70, 3), np.uint8)
    p = video.pad_to_multiple(f)
    assert p.shape == (48, 80, 3)
    assert (p[:40, :70] == 0).all() and (p[40:] == 255).all() and (p[:, 70:] == 255).all()
    assert video.pad_to_multiple(np.zeros((32, 16, 3), np.uint8)).shape == (32, 16, 3)


def test_write_mp4_reads_back_with_padded_size(tmp_path):
    frames = _frames(12)
    path = video.write_video(tmp_path / "sub" / "v.mp4", frames, fps=12, quality=9)
    assert path == tmp_path / "sub" / "v.mp4"
    reader = iio.get_reader(str(path))
    try:
        assert reader.count_frames() == 12
        first = reader.get_data(0)
    finally:
        reader.close()
    assert first.shape == (48, 80, 3)
    assert np.abs(first[:40, :70].astype(int) - frames[0].astype(int)).mean() < 12   # lossy, but the same picture
    assert (first[44:, 74:] > 230).all()                                                # white padding
    assert os.listdir(tmp_path / "sub") == ["v.mp4"]                                    # no temp file left


def test_existing_video_needs_force(tmp_path):
    path = tmp_path / "v.mp4"
    video.write_video(path, _frames(3), fps=5)
    with pytest.raises(UserError, match="--force"):
        video.write_video(path, _frames(4), fps=5)
    video.write_video(path, _frames(5), fps=5, force=True)
    reader = iio.get_reader(str(path))
    assert reader.count_frames() == 5
    reader.close()


def test_unwritable_target_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="Cannot create the folder"):
        video.write_video(tmp_path / "file" / "v.mp4", _frames(2))
    with pytest.raises(UserError, match=".mp4"):
        video.write_video(tmp_path / "v.avi", _frames(2))
    with pytest.raises(UserError, match="is a folder"):
        video.check_writable(tmp_path, force=True)


def test_checking_a_path_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "v.mp4"
    assert video.check_writable(target) == target and not (tmp_path / "a").exists()
    written = video.write_video(target, _frames(2))                      # the writer makes the folders
    assert written.exists() and written.parent == target.parent


def _assert_gif(path, n, size):
    im = Image.open(path)
    assert im.format == "GIF" and im.n_frames == n and im.size == size


def test_gif_fallback_when_ffmpeg_is_missing(tmp_path, monkeypatch, capsys):
    import imageio_ffmpeg

    def missing():
        raise RuntimeError("No ffmpeg exe could be found.")
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    assert not video.ffmpeg_available()
    path = video.write_video(tmp_path / "v.mp4", _frames(6), fps=10)
    assert path == tmp_path / "v.gif" and not (tmp_path / "v.mp4").exists()
    _assert_gif(path, 6, (80, 48))
    assert "GIF" in capsys.readouterr().out
    with pytest.raises(UserError, match="--force"):   # the fallback file is protected too
        video.write_video(tmp_path / "v.mp4", _frames(2), fps=10)


def test_gif_fallback_when_ffmpeg_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-such-ffmpeg"))
    path = video.write_video(tmp_path / "v.mp4", _frames(4), fps=10)
    assert path.suffix == ".gif"
    _assert_gif(path, 4, (80, 48))
    assert "ffmpeg failed" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["v.gif"]                                    # the temp mp4 is gone


def test_explicit_gif_path(tmp_path):
    path = video.write_video(tmp_path / "v.gif", _frames(3), fps=10)
    _assert_gif(path, 3, (80, 48))
