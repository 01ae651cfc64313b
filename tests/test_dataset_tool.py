"""dataset_tool.py: convert (RGBA, grayscale, center-crop, labels), info, synth, and the CLI error paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner
from conftest import random_pngs

import dataset_tool
from training.dataset import ImageDataset

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """Run dataset_tool.py in a fresh process, as a user would."""
    return subprocess.run([sys.executable, str(REPO / "dataset_tool.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def _invoke(*args: str) -> object:
    result = CliRunner().invoke(dataset_tool.cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _fields(info_output: str) -> dict[str, str]:
    """'Key: value' lines of `info` as a dict."""
    pairs = (line.split(":", 1) for line in info_output.splitlines())
    return {key: value.strip() for key, value in pairs}


def _rgb_folder(folder: Path, n: int = 3, size: int = 16) -> None:
    random_pngs(folder, n, size, name="x{i}.png")


def test_convert_rgba_and_grayscale(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    rgba[4:] = (0, 0, 255, 0)
    PIL.Image.fromarray(rgba, "RGBA").save(src / "a.png")
    gray = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))
    PIL.Image.fromarray(gray, "L").save(src / "b.png")
    dest = tmp_path / "out.zip"
    result = _invoke("convert", "--source", str(src), "--dest", str(dest), "--resolution", "8")
    assert "2 images at 8x8" in result.output
    data = ImageDataset(dest)
    a, b = data[0][0], data[1][0]  # [3, 8, 8]
    np.testing.assert_array_equal(a[:, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(a[:, 7, 0], [255, 255, 255])  # composited on white
    np.testing.assert_array_equal(b, np.stack([gray] * 3))
    with zipfile.ZipFile(dest) as zf:
        assert sorted(zf.namelist()) == ["00000/img00000000.png", "00000/img00000001.png", "dataset.json"]
        assert json.loads(zf.read("dataset.json")) == {"labels": None}


def test_convert_center_crop_resize_and_labels(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    wide = np.zeros((16, 32, 3), np.uint8)
    wide[:, 8:24] = 200  # the central 16x16 square is uniform grey
    PIL.Image.fromarray(wide).save(src / "wide.png")
    PIL.Image.fromarray(np.full((32, 32, 3), 50, np.uint8)).save(src / "sq.jpg")
    (src / "dataset.json").write_text(json.dumps({"labels": [["sq.jpg", [1.0, 2.0]], ["wide.png", [3.0, 4.0]]],
                                                  "camera": {"radius": 4.0}}))
    dest = tmp_path / "out.zip"
    _invoke("convert", "--source", str(src), "--dest", str(dest), "--resolution", "8", "--transform", "center-crop",
            "--resize-filter", "box")
    data = ImageDataset(dest, resolution=8, use_labels=True)
    assert len(data) == 2 and data.camera == {"radius": 4.0}
    np.testing.assert_array_equal(data[1][0], np.full((3, 8, 8), 200, np.uint8))  # wide.png sorts second
    np.testing.assert_array_equal(data[0][1], [1.0, 2.0])
    np.testing.assert_array_equal(data[1][1], [3.0, 4.0])
    assert abs(int(data[0][0].mean()) - 50) <= 2  # JPEG


def test_convert_from_zip_and_refuses_overwrite(tmp_path: Path) -> None:
    _rgb_folder(tmp_path / "src", n=3, size=16)
    first = tmp_path / "a.zip"
    _invoke("convert", "--source", str(tmp_path / "src"), "--dest", str(first), "--resolution", "16")
    second = tmp_path / "b.zip"
    _invoke("convert", "--source", str(first), "--dest", str(second), "--resolution", "16", "--max-images", "2")
    a, b = ImageDataset(first), ImageDataset(second)
    assert len(b) == 2
    np.testing.assert_array_equal(a[1][0], b[1][0])
    result = CliRunner().invoke(dataset_tool.cli, ["convert", "--source", str(first), "--dest", str(second),
                                                   "--resolution", "16"])
    assert result.exit_code != 0 and "already exists" in str(result.exception)
    _invoke("convert", "--source", str(first), "--dest", str(second), "--resolution", "8", "--force")
    assert ImageDataset(second).resolution == 8


def test_info_prints_summary(tmp_path: Path) -> None:
    _rgb_folder(tmp_path / "src", n=3, size=16)
    dest = tmp_path / "d.zip"
    _invoke("convert", "--source", str(tmp_path / "src"), "--dest", str(dest), "--resolution", "16")
    fields = _fields(_invoke("info", str(dest)).output)
    assert fields["Images"] == "3" and fields["Resolution"] == "16x16" and fields["Channels"] == "3"
    assert fields["Labels"] == "no" and fields["Camera"] == "none"
    assert fields["Hash"] == ImageDataset(dest).dataset_hash


def _error_case(case: str, tmp: Path) -> list[str]:
    """Inputs for one CLI error path; returns the dataset_tool arguments."""
    src = tmp / "src"
    src.mkdir()
    convert = ["convert", "--source", str(src), "--dest", str(tmp / "o.zip"), "--resolution", "8"]
    if case == "nonsquare":
        PIL.Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(src / "wide.png")
        return convert
    if case == "corrupt":
        PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "good.png")
        (src / "bad.png").write_bytes(b"\x89PNG garbage")
        return convert
    if case == "rgba":
        PIL.Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(src / "a.png")
        return ["info", str(src)]
    if case == "missing":
        return ["info", str(tmp / "missing.zip")]
    assert case == "family"
    return ["synth", "--family", "teapots", "--count", "2", "--resolution", "8", "--dest", str(tmp / "s.zip")]


@pytest.mark.parametrize("case, expected", [
    ("nonsquare", ["'wide.png' is 16x8", "--transform center-crop"]),
    ("corrupt", ["'bad.png'", "corrupt"]),
    ("rgba", ["RGBA", "dataset_tool.py convert"]),
    ("missing", ["Dataset not found", "missing.zip"]),
    ("family", ["teapots", "chairs"]),
])
def test_cli_errors_exit_1_without_traceback(tmp_path: Path, case: str, expected: list[str]) -> None:
    r = _cli(*_error_case(case, tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.startswith("Error: ")
    for text in expected:
        assert text in r.stderr
    assert not (tmp_path / "o.zip").exists() and sorted(os.listdir(tmp_path)) == ["src"]  # no partial output


def test_synth_writes_and_refuses_overwrite(tmp_path: Path) -> None:
    from training.synthetic import FAMILIES
    family = sorted(FAMILIES)[0]
    dest = tmp_path / "s.zip"
    args = ["synth", "--family", family, "--count", "4", "--resolution", "32", "--seed", "1", "--dest", str(dest),
            "--workers", "1"]
    out = _invoke(*args).output
    assert f"4 images of {family} at 32x32" in out
    data = ImageDataset(dest, use_labels=True)
    assert len(data) == 4 and data.resolution == 32 and data.label_dim == 25
    fields = _fields(_invoke("info", str(dest)).output)
    assert fields["Images"] == "4" and fields["Resolution"] == "32x32" and fields["Labels"] == "yes (dim 25)"
    assert family in fields["Objects"] and "fov_x_rad" in fields["Camera"]
    r = _cli(*args)
    assert r.returncode == 1 and "already exists" in r.stderr and "--force" in r.stderr


@pytest.mark.parametrize("bad", [["--resolution", "12"], ["--dest", "x.tar"]])
def test_convert_rejects_bad_options(tmp_path: Path, bad: list[str]) -> None:
    _rgb_folder(tmp_path / "src", n=1, size=8)
    opts = {"--resolution": "8", "--dest": str(tmp_path / "o.zip"), **dict([bad])}
    args = ["convert", "--source", str(tmp_path / "src")] + [x for kv in opts.items() for x in kv]
    result = CliRunner().invoke(dataset_tool.cli, args)
    assert result.exit_code != 0 and ("power of two" in str(result.exception) or ".zip" in str(result.exception))
