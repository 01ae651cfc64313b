"""ImageDataset validation and items, resolve_data (`synth:` caching), InfiniteSampler and iterate_reals."""
from __future__ import annotations

import io
import json
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from training import dataset as ds
from training.dataset import DatasetError, ImageDataset, InfiniteSampler, iterate_reals, resolve_data


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(arr, mode).save(path)


def _images(folder: Path, n: int = 5, size: int = 8, seed: int = 0, labels: bool = False) -> list[np.ndarray]:
    """n random RGB PNGs (some in a sub-folder) plus optional float labels in dataset.json."""
    rng = np.random.default_rng(seed)
    arrs, names = [], []
    for i in range(n):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        name = f"img{i:02d}.png" if i % 2 else f"sub/img{i:02d}.png"
        _save(folder / name, arr)
        arrs.append(arr)
        names.append(name)
    if labels:
        (folder / "dataset.json").write_text(json.dumps({"labels": [[nm, [float(i), -1.0]] for i, nm in
                                                                    enumerate(names)], "camera": {"radius": 4.0}}))
    order = np.argsort(names)  # the dataset sorts file names
    return [arrs[i] for i in order]


def _zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return dest


def test_items_shapes_and_pixels(tmp_path: Path) -> None:
    arrs = _images(tmp_path / "d", n=5, size=8)
    data = ImageDataset(tmp_path / "d")
    assert len(data) == 5 and data.resolution == 8 and data.num_channels == 3
    assert data.image_shape == [3, 8, 8] and data.label_dim == 0 and not data.has_labels
    assert data.camera is None and data.name == "d"
    for i, arr in enumerate(arrs):
        img, label = data[i]
        assert img.dtype == np.uint8 and img.shape == (3, 8, 8)
        np.testing.assert_array_equal(img, arr.transpose(2, 0, 1))
        assert label.dtype == np.float32 and label.shape == (0,)
    with pytest.raises(IndexError):
        data[5]


def test_zip_and_folder_identical(tmp_path: Path) -> None:
    _images(tmp_path / "d", n=4, size=16, labels=True)
    a = ImageDataset(tmp_path / "d", use_labels=True)
    b = ImageDataset(_zip_folder(tmp_path / "d", tmp_path / "d.zip"), use_labels=True)
    assert len(a) == len(b) == 4
    for i in range(4):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
    assert a.dataset_hash == b.dataset_hash  # same names, sizes and CRCs
    assert b.camera == {"radius": 4.0}


def test_xflip_doubles_and_mirrors(tmp_path: Path) -> None:
    _images(tmp_path / "d", n=3, size=8)
    plain = ImageDataset(tmp_path / "d")
    flip = ImageDataset(tmp_path / "d", xflip=True)
    assert len(flip) == 6 and flip.num_images == 3
    for i in range(3):
        np.testing.assert_array_equal(flip[i][0], plain[i][0])
        np.testing.assert_array_equal(flip[i + 3][0], plain[i][0][:, :, ::-1])
    assert not np.array_equal(flip[3][0], flip[0][0])
    assert flip.dataset_hash != plain.dataset_hash


def test_max_size_subset_deterministic(tmp_path: Path) -> None:
    _images(tmp_path / "d", n=12, size=8)
    full = ImageDataset(tmp_path / "d")
    a = ImageDataset(tmp_path / "d", max_size=5, random_seed=1)
    b = ImageDataset(tmp_path / "d", max_size=5, random_seed=1)
    c = ImageDataset(tmp_path / "d", max_size=5, random_seed=2)
    names = [a.file_name(i) for i in range(5)]
    assert len(a) == 5 and names == [b.file_name(i) for i in range(5)] and names == sorted(names)
    assert names != [c.file_name(i) for i in range(5)]
    assert set(names) <= {full.file_name(i) for i in range(12)}
    assert len(ImageDataset(tmp_path / "d", max_size=50)) == 12
    assert a.dataset_hash != full.dataset_hash
    with pytest.raises(DatasetError, match="max_size"):
        ImageDataset(tmp_path / "d", max_size=0)


def test_labels_float_and_class(tmp_path: Path) -> None:
    _images(tmp_path / "d", n=4, size=8, labels=True)
    data = ImageDataset(tmp_path / "d", use_labels=True)
    assert data.has_labels and data.label_dim == 2 and data.raw_labels.shape == (4, 2)
    by_name = {data.file_name(i): data[i][1] for i in range(4)}
    np.testing.assert_array_equal(by_name["img01.png"], np.array([1.0, -1.0], np.float32))
    assert ImageDataset(tmp_path / "d").label_dim == 0  # use_labels=False ignores them
    names = [data.file_name(i) for i in range(4)]
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({"labels": {n: i % 3 for i, n in enumerate(names)}}))
    onehot = ImageDataset(tmp_path / "d", use_labels=True)
    assert onehot.label_dim == 3
    np.testing.assert_array_equal(onehot[3][1], np.array([1, 0, 0], np.float32))


def test_pickle_roundtrip_after_use(tmp_path: Path) -> None:
    _images(tmp_path / "d", n=3, size=8)
    data = ImageDataset(_zip_folder(tmp_path / "d", tmp_path / "d.zip"))
    first = data[0][0]  # opens the zip in this process
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone[0][0], first)


# ---------------------------------------------------------------------------------------------------------------------
# Validation errors.

def _bad_dataset(kind: str, root: Path) -> Path:
    rng = np.random.default_rng(0)
    rgb = lambda s, t=None: rng.integers(0, 256, (s, t or s, 3), dtype=np.uint8)  # noqa: E731
    d = root / kind
    d.mkdir()
    if kind == "mixed":
        _save(d / "a.png", rgb(8))
        _save(d / "b.png", rgb(16))
    elif kind == "nonsquare":
        _save(d / "a.png", rgb(8, 16))
    elif kind == "npot":
        _save(d / "a.png", rgb(12))
    elif kind == "rgba":
        _save(d / "a.png", rng.integers(0, 256, (8, 8, 4), dtype=np.uint8))
    elif kind == "gray":
        _save(d / "a.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    elif kind == "corrupt":
        _save(d / "a.png", rgb(8))
        (d / "b.png").write_bytes(b"not an image at all")
    elif kind == "labels":
        _save(d / "a.png", rgb(8))
        _save(d / "b.png", rgb(8))
        (d / "dataset.json").write_text(json.dumps({"labels": [["a.png", [1.0]]]}))
    elif kind == "badjson":
        _save(d / "a.png", rgb(8))
        (d / "dataset.json").write_text("{labels: ")
    return d


@pytest.mark.parametrize("kind, expected", [
    ("mixed", r"different sizes: 'a.png' is 8x8 but 'b.png' is 16x16"),
    ("nonsquare", r"not square .*'a.png' is 16x8.*center-crop"),
    ("npot", r"12x12, which is not a power of two"),
    ("rgba", r"'a.png'.* is RGBA.*dataset_tool.py convert.*composited on white"),
    ("gray", r"'a.png'.* is grayscale.*dataset_tool.py convert"),
    ("corrupt", r"Cannot read image 'b.png'"),
    ("labels", r"'b.png' \(and 0 more\) has none"),
    ("badjson", r"not valid JSON"),
])
def test_bad_datasets_raise(tmp_path: Path, kind: str, expected: str) -> None:
    with pytest.raises(DatasetError, match=expected):
        ImageDataset(_bad_dataset(kind, tmp_path))


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Dataset not found"):
        ImageDataset(tmp_path / "missing.zip")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="No images found"):
        ImageDataset(tmp_path / "empty")
    (tmp_path / "fake.zip").write_bytes(b"plain text")
    with pytest.raises(DatasetError, match="neither a folder nor a readable zip"):
        ImageDataset(tmp_path / "fake.zip")


def test_resolution_mismatch(tmp_path: Path) -> None:
    _images(tmp_path / "d", n=2, size=8)
    assert ImageDataset(tmp_path / "d", resolution=8).resolution == 8
    with pytest.raises(DatasetError, match="are 8x8 but resolution 16 was requested"):
        ImageDataset(tmp_path / "d", resolution=16)


def test_corrupt_body_found_lazily(tmp_path: Path) -> None:
    _images(tmp_path / "d", n=2, size=32)
    victim = tmp_path / "d" / "img01.png"
    victim.write_bytes(victim.read_bytes()[:80])  # valid header, truncated pixel data
    data = ImageDataset(tmp_path / "d")  # the header check passes
    good, bad = (0, 1) if data.file_name(1) == "img01.png" else (1, 0)
    data[good]
    with pytest.raises(DatasetError, match="Cannot decode image 'img01.png'"):
        data[bad]


def test_hash_tracks_content(tmp_path: Path) -> None:
    _images(tmp_path / "d", n=3, size=8)
    h1 = ImageDataset(tmp_path / "d").dataset_hash
    assert h1 == ImageDataset(tmp_path / "d").dataset_hash and len(h1) == 40
    _save(tmp_path / "d" / "img01.png", np.zeros((8, 8, 3), np.uint8))
    assert ImageDataset(tmp_path / "d").dataset_hash != h1


# ---------------------------------------------------------------------------------------------------------------------
# Sampler and loader.

def test_infinite_sampler_passes_and_ranks() -> None:
    n = 10
    stream = iter(InfiniteSampler(n, seed=3))
    seq = [next(stream) for _ in range(4 * n)]
    for p in range(4):  # every pass visits every index once
        assert sorted(seq[p * n:(p + 1) * n]) == list(range(n))
    assert seq[:n] != seq[n:2 * n]  # the order drifts between passes
    again = iter(InfiniteSampler(n, seed=3))
    assert [next(again) for _ in range(4 * n)] == seq
    other = iter(InfiniteSampler(n, seed=4))
    assert [next(other) for _ in range(4 * n)] != seq
    r0, r1 = iter(InfiniteSampler(n, rank=0, num_replicas=2, seed=3)), iter(InfiniteSampler(n, rank=1, num_replicas=2,
                                                                                          seed=3))
    assert [next(r0) for _ in range(2 * n)] == seq[0::2] and [next(r1) for _ in range(2 * n)] == seq[1::2]
    resumed = iter(InfiniteSampler(n, rank=1, num_replicas=2, seed=3, start=7))
    assert [next(resumed) for _ in range(5)] == seq[1::2][7:12]
    plain = iter(InfiniteSampler(n, shuffle=False))
    assert [next(plain) for _ in range(n + 2)] == list(range(n)) + [0, 1]
    with pytest.raises(ValueError):
        InfiniteSampler(n, rank=2, num_replicas=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_iterate_reals(tmp_path: Path, workers: int) -> None:
    _images(tmp_path / "d", n=5, size=8, labels=True)
    data = ImageDataset(_zip_folder(tmp_path / "d", tmp_path / "d.zip"), use_labels=True, xflip=True)
    data[0]  # an open zip handle must not leak into the workers
    it = iterate_reals(data, batch=4, device="cpu", seed=0, num_workers=workers, with_labels=True)
    batches = [next(it) for _ in range(3)]
    for images, labels in batches:
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 8, 8) and labels.shape == (4, 2)
    expected = iter(InfiniteSampler(len(data), seed=0))
    first = [next(expected) for _ in range(4)]
    np.testing.assert_array_equal(batches[0][0].numpy(), np.stack([data[i][0] for i in first]))


# ---------------------------------------------------------------------------------------------------------------------
# resolve_data.

def test_resolve_plain_paths_and_bad_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path / "cache"))
    _images(tmp_path / "d", n=1)
    assert resolve_data(str(tmp_path / "d")) == str(tmp_path / "d")
    with pytest.raises(DatasetError, match="Dataset not found"):
        resolve_data(str(tmp_path / "nope.zip"))
    from training.synthetic import FAMILIES
    with pytest.raises(DatasetError, match="Valid families: " + ", ".join(FAMILIES)):
        resolve_data("synth:teapots")
    with pytest.raises(DatasetError, match="Bad count 'ten'"):
        resolve_data(f"synth:{sorted(FAMILIES)[0]}:64:ten")
    with pytest.raises(DatasetError, match="power of two"):
        resolve_data(f"synth:{sorted(FAMILIES)[0]}:48")
    assert ds.parse_synth_spec(f"synth:{sorted(FAMILIES)[0]}::7", 64, 100, 3) == (sorted(FAMILIES)[0], 64, 7, 3)


def _fake_writer(calls: list) -> object:
    """Stand-in for write_dataset_zip that records its calls and writes a 2-image zip plus a sidecar."""
    def write(dest: str, family: str, count: int, resolution: int, seed: int, **kwargs: object) -> dict:
        calls.append((family, count, resolution, seed))
        with zipfile.ZipFile(dest, "w") as zf:
            for i in range(2):
                buf = io.BytesIO()
                PIL.Image.fromarray(np.full((resolution, resolution, 3), i, np.uint8)).save(buf, format="PNG")
                zf.writestr(f"00000/img{i:08d}.png", buf.getvalue())
        Path(dest).with_name(Path(dest).stem + "_gt.npz").write_bytes(b"gt")
        return {"count": count}
    return write


def test_resolve_synth_caches_and_races(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.synthetic as synthetic
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path / "cache"))
    calls: list = []
    monkeypatch.setattr(synthetic, "write_dataset_zip", _fake_writer(calls))
    family = sorted(synthetic.FAMILIES)[0]
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_data(f"synth:{family}:8:2:5")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = tmp_path / "cache" / "datasets" / f"synth-{family}-8-2-s5.zip"
    assert results == [str(expected)] * 3 and calls == [(family, 2, 8, 5)]
    assert expected.with_name(f"synth-{family}-8-2-s5_gt.npz").is_file()
    assert [p.name for p in expected.parent.iterdir() if p.name.startswith(".")] == []  # temp folder removed
    assert resolve_data(f"synth:{family}", resolution=8, count=2, seed=5) == str(expected) and len(calls) == 1


def test_resolve_synth_real_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.synthetic as synthetic
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path))
    family = sorted(synthetic.FAMILIES)[0]
    path = resolve_data(f"synth:{family}:32:4:0", workers=1)
    data = ImageDataset(path, use_labels=True)
    assert len(data) == 4 and data.resolution == 32 and data.label_dim == 25 and data.camera is not None
    mtime = Path(path).stat().st_mtime_ns

    def no_render(*args: object, **kwargs: object) -> None:
        raise AssertionError("re-rendered a cached dataset")
    monkeypatch.setattr(synthetic, "write_dataset_zip", no_render)
    assert resolve_data(f"synth:{family}:32:4:0") == path and Path(path).stat().st_mtime_ns == mtime
