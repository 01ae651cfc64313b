"""Faults and bad input: hostile or damaged snapshots and training states, processes killed mid-write, a full disk,
damaged datasets, concurrent runs, mismatched resumes, and the mode of written files.

Each case asserts a one-paragraph error and exit status 1 where the input is bad, that no payload ran (a sentinel file
it would create never appears), and that no earlier file was lost or replaced by a partial one.
"""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import random
import resource
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import invoke

import calc_metrics
import generate
import train
from crafted_pickles import hostile_pickles, payloads
from dnnlib import util
from dnnlib.util import UserError, WriteError
from torch_utils import persistence
from training import state as state_io
from training.checkpoint import LEGACY_SNAPSHOT_FORMAT, load_network_snapshot, save_network_snapshot
from training.dataset import DatasetError, ImageDataset, iterate_reals
from training.networks.generator import Generator

REPO = Path(__file__).resolve().parent.parent
PAYLOADS = ["eval", "exec", "os.system", "subprocess", "getattr", "torch.load", "nested pickle",
            "storage blob with a payload", "numpy object array"]
SMOKE = ["--cfg", "smoke", "--set", "grid_w=2", "--set", "grid_h=2"]
G_KWARGS = dict(z_dim=16, w_dim=16, mapping_layers=2, num_layers=4, width=32, rank=4, multires=4, img_resolution=16,
                num_samples=8)


def one_paragraph(err: str) -> bool:
    return err.startswith("Error: ") and err.strip().count("\n") == 0 and "Traceback" not in err


def _nets(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    G, G_ema = Generator(**G_KWARGS), Generator(**G_KWARGS)
    G_ema.load_state_dict(G.state_dict())
    return G, G_ema


def _legacy_snapshot_bytes(G: torch.nn.Module, G_ema: torch.nn.Module, **extra) -> bytes:
    """A snapshot as the earlier writer made it: pickle.dump of the plain dict with portable records."""
    data = {"format": LEGACY_SNAPSHOT_FORMAT, "training_set_kwargs": {"path": "x.zip", "resolution": 16},
            "config": {}, "kimg": 1.5, "G": persistence.to_record(G), "G_ema": persistence.to_record(G_ema),
            "D": None, "augment_pipe": None, **extra}
    return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)


def _raw_reduce_pickle(module: str, name: str, arg) -> bytes:
    """A protocol-2 pickle of `module.name(arg)` written opcode by opcode (the global need not exist here)."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(arg, protocol=2)[2:-1] + b"\x85R."


@pytest.fixture(scope="module")
def snapshot_file(tmp_path_factory) -> Path:
    G, G_ema = _nets()
    path = tmp_path_factory.mktemp("snap") / "network-snapshot-000000.pkl"
    save_network_snapshot(path, G=G, G_ema=G_ema, D=None, training_set_kwargs={"resolution": 16}, kimg=0.0)
    return path


@pytest.fixture(scope="module")
def smoke_state(tiny_data, tmp_path_factory) -> Path:
    """A training state of a 32 px smoke run (and its run directory with training_options.json)."""
    out = tmp_path_factory.mktemp("smoke")
    with pytest.raises(SystemExit) as exc:
        util.run_cli(train.main)(["--outdir", str(out), *SMOKE, "--data", tiny_data, "--kimg", "0.004"])
    assert exc.value.code == 0
    return next(out.glob("*/training-state-*.pt"))


# ---------------------------------------------------------------------------------------------------------------------
# Crafted snapshots and training states.

@pytest.mark.parametrize("container", ["pickle", "zip"])
@pytest.mark.parametrize("name", PAYLOADS)
def test_hostile_snapshot_is_refused_and_never_runs(tmp_path, name, container):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "network-snapshot-000000.pkl"
    if container == "pickle":
        path.write_bytes(hostile_pickles(sentinel)[name])
    else:
        torch.save({"format": "hypernerfgan-snapshot/2", "G": payloads(sentinel)[name]}, path)
    with pytest.raises(UserError, match="Refusing to load the network snapshot") as exc:
        load_network_snapshot(path)
    assert "\n" not in str(exc.value) and "Python global '" in str(exc.value)
    with pytest.raises(UserError, match="Refusing to load the training state"):
        state_io.load_training_state(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_no_cli_runs_a_payload(tmp_path, name, capsys, tiny_data, standin_detector):
    """generate.py --network, calc_metrics.py --network and train.py --resume refuse every payload (exit 1)."""
    sentinel = tmp_path / "sentinel"
    pkl = tmp_path / "network-snapshot-000000.pkl"
    pkl.write_bytes(hostile_pickles(sentinel)[name])
    state = tmp_path / "training-state-000000.pt"
    torch.save({"format": state_io.STATE_FORMAT, "G": payloads(sentinel)[name]}, state)
    calls = [
        (generate.main, ["images", "--network", pkl, "--seeds", "0", "--outdir", tmp_path / "out", "--device", "cpu"]),
        (calc_metrics.main, ["--network", pkl, "--metrics", "fid1k_full", "--data", tiny_data,
                             "--detector", standin_detector, "--device", "cpu"]),
        (util.run_cli(train.main), ["--outdir", tmp_path / "runs", *SMOKE, "--data", tiny_data, "--resume", state]),
        (util.run_cli(train.main), ["--outdir", tmp_path / "runs", *SMOKE, "--data", tiny_data, "--resume", pkl]),
    ]
    for main, args in calls:
        code, _, err = invoke(main, args, capsys)
        assert code == 1 and one_paragraph(err) and "Refusing to load" in err, (args[:2], err)
    assert not sentinel.exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()   # no run, no empty --outdir


def test_authors_style_pickle_is_refused_without_running_its_source(tmp_path):
    """A snapshot of another project (StyleGAN2-ADA-style persistence: source text exec'd by its own loader). Such a
    pickle goes to the reader of the authors' HyperNeRFGAN snapshots, which records the object without running its
    source and refuses it as none of their snapshots."""
    sentinel = tmp_path / "sentinel"
    meta = {"type": "class", "version": 6, "class_name": "G", "state": {},
            "module_src": f"open({str(sentinel)!r}, 'w').write('ran')\nclass G: pass\n"}
    path = tmp_path / "network-snapshot-000100.pkl"
    path.write_bytes(_raw_reduce_pickle("torch_utils.persistence", "_reconstruct_persistent_obj", meta))
    with pytest.raises(UserError, match=r"authors' HyperNeRFGAN snapshots: the file holds a PersistentObject, not a "
                                        r"dict of networks\. Nothing from the file was executed"):
        load_network_snapshot(path)
    assert not sentinel.exists()


def test_other_projects_checkpoint_and_wrong_tags(tmp_path, smoke_state, snapshot_file):
    other = tmp_path / "other.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "epoch": 3}, other)
    with pytest.raises(UserError, match="not a network snapshot of this project.*without a format tag"):
        load_network_snapshot(other)
    with pytest.raises(UserError, match="not a training state of this project"):
        state_io.load_training_state(other)
    tagged = tmp_path / "tagged.pkl"
    torch.save({"format": "hypernerfgan-snapshot/9"}, tagged)
    with pytest.raises(UserError, match="format 'hypernerfgan-snapshot/9'"):
        load_network_snapshot(tagged)
    with pytest.raises(UserError, match="is a training state, not a network snapshot"):
        load_network_snapshot(smoke_state)
    with pytest.raises(UserError, match="not a training state of this project"):
        state_io.load_training_state(snapshot_file)
    text = tmp_path / "notes.pkl"
    text.write_text("hello")
    with pytest.raises(UserError, match="truncated, corrupt"):
        load_network_snapshot(text)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.97])
def test_truncated_snapshot(tmp_path, snapshot_file, fmt, keep):
    blob = snapshot_file.read_bytes() if fmt == "zip" else _legacy_snapshot_bytes(*_nets())
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(UserError, match="truncated, corrupt") as exc:
        load_network_snapshot(path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_truncated_training_state(tmp_path, smoke_state, keep):
    blob = smoke_state.read_bytes()
    path = tmp_path / "training-state-000000.pt"
    path.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(UserError, match="truncated, corrupt"):
        state_io.load_training_state(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("damage,message", [
    ("shape", r"'mapping_network\.layers\.0\.weight' has shape \[3, 3\].*expects \[16, 16\]"),
    ("dtype", r"'mapping_network\.layers\.0\.weight' .*dtype torch\.float64.*expects .*torch\.float32"),
    ("nan", r"'mapping_network\.layers\.0\.weight' holds NaN or infinite values"),
    ("missing", r"missing tensors \['mapping_network\.layers\.0\.weight'\]"),
    ("class", r"not a network class of this project"),
    ("function", r"not a network class of this project"),
    ("kwargs", r"not plain data"),
])
def test_damaged_records_are_refused_by_name(tmp_path, fmt, damage, message):
    G, G_ema = _nets()
    rec = persistence.to_record(G_ema)
    key = "mapping_network.layers.0.weight"
    assert key in rec["state"]
    if damage == "shape":
        rec["state"][key] = torch.zeros(3, 3)
    elif damage == "dtype":
        rec["state"][key] = rec["state"][key].double()
    elif damage == "nan":
        rec["state"][key][0, 0] = float("nan")
    elif damage == "missing":
        del rec["state"][key]
    elif damage == "class":
        rec["class"] = "training.dataset.ImageDataset"
    elif damage == "function":
        rec["class"] = "training.training_loop.training_loop"   # a callable of ours that is no network
    elif damage == "kwargs":
        rec["kwargs"]["width"] = torch.zeros(1)
    path = tmp_path / "network-snapshot-000000.pkl"
    if fmt == "legacy":
        path.write_bytes(pickle.dumps({"format": LEGACY_SNAPSHOT_FORMAT, "G": persistence.to_record(G), "G_ema": rec}))
    else:
        torch.save({"format": "hypernerfgan-snapshot/2", "G": persistence.to_record(G), "G_ema": rec}, path)
    with pytest.raises(UserError, match=message) as exc:
        load_network_snapshot(path)
    assert "'G_ema'" in str(exc.value) and "\n" not in str(exc.value)


def test_legacy_snapshot_still_loads_and_renders(tmp_path, capsys):
    """A hypernerfgan-snapshot/1 file (pickle.dump, as the earlier train.py wrote) loads through the safe reader."""
    G, G_ema = _nets(seed=3)
    path = tmp_path / "network-snapshot-000001.pkl"
    path.write_bytes(_legacy_snapshot_bytes(G, G_ema))
    snap = load_network_snapshot(path)
    assert snap.format == LEGACY_SNAPSHOT_FORMAT and snap.kimg == 1.5
    for name, tensor in G_ema.state_dict().items():
        assert torch.equal(snap.G_ema.state_dict()[name], tensor), name
    z = G_ema.sample_z(2, generator=torch.Generator().manual_seed(0))
    c2w = G_ema.sample_poses(2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(snap.G_ema(z, c2w=c2w), G_ema.eval()(z, c2w=c2w))
    code, _, err = invoke(generate.main, ["images", "--network", path, "--seeds", "0", "--outdir", tmp_path / "o",
                                          "--device", "cpu"], capsys)
    assert code == 0, err
    assert list((tmp_path / "o").glob("*.png"))


# ---------------------------------------------------------------------------------------------------------------------
# Killed mid-write (SIGKILL at random points) and a full disk.

_WRITER = """
import sys, torch
from training.checkpoint import save_network_snapshot
from training.networks.generator import Generator
from training import state as state_io
out = sys.argv[1]
kw = dict(z_dim=16, w_dim=16, mapping_layers=2, num_layers=4, width=64, rank=4, multires=4, img_resolution=16,
          num_samples=8)
G = Generator(**kw)
print("ready", flush=True)
i = 0
while True:
    i += 1
    with torch.no_grad():
        G.mapping_network.layers[0].weight.fill_(float(i))
    save_network_snapshot(f"{out}/network-snapshot-000000.pkl", G=G, G_ema=G, kimg=float(i))
    state_io.save_training_state(f"{out}/training-state-000000.pt",
                                 {"G": G.state_dict(), "counters": {"cur_nimg": i}, "pad": torch.randn(300000)})
"""


def test_sigkill_during_writes_never_leaves_a_partial_file(tmp_path):
    rng = random.Random(0)
    snap, state = tmp_path / "network-snapshot-000000.pkl", tmp_path / "training-state-000000.pt"
    last = (0, 0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not snap.exists() or not state.exists():
            continue
        s = load_network_snapshot(snap)           # complete, whichever write was cut
        t = state_io.load_training_state(state)
        i = int(s.kimg)
        assert float(s.G.mapping_network.layers[0].weight[0, 0]) == i
        n = t["counters"]["cur_nimg"]
        assert n in (i, i - 1)
        assert torch.equal(t["G"]["mapping_network.layers.0.weight"], torch.full((16, 16), float(n)))
        last = (i, t["counters"]["cur_nimg"])
    assert last[0] >= 1                           # at least one complete pair was written and checked
    # Killed writes leave only hidden temporaries, which nothing reads.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [snap.name, state.name]
    assert state_io.latest_state(tmp_path) == state


@pytest.mark.slow
def test_sigkill_during_training_then_resume_auto(tiny_data, tmp_path, capsys):
    """train.py killed at a random point: every state left loads, and --resume auto continues from the newest."""
    args = [sys.executable, str(REPO / "train.py"), "--outdir", str(tmp_path), *SMOKE, "--data", tiny_data,
            "--kimg", "1", "--set", "snap=1", "--set", "kimg_per_tick=0.004", "--set", "image_snap=100"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("*/training-state-000000.pt")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(random.Random(1).uniform(0.2, 1.5))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_dir = next(d for d in tmp_path.iterdir() if d.is_dir())
    states = sorted(run_dir.glob("training-state-*.pt"))
    assert states
    for path in states + sorted(run_dir.glob("network-snapshot-*.pkl")):
        (state_io.load_training_state if path.suffix == ".pt" else load_network_snapshot)(path)
    newest = state_io.latest_state(run_dir)
    kimg = state_io.load_training_state(newest)["counters"]["cur_nimg"] / 1000
    code, out, err = invoke(util.run_cli(train.main), ["--outdir", run_dir, "--resume", "auto", "--kimg",
                                                       f"{kimg + 0.004:.3f}"], capsys)
    assert code == 0, err
    assert f"Resuming from {newest}" in out


def _fill_after(limit: int):
    """Context: file writes past `limit` bytes fail with EFBIG (RLIMIT_FSIZE), as on a full disk."""
    class _Limit:
        def __enter__(self):
            self.old = resource.getrlimit(resource.RLIMIT_FSIZE)
            self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, self.old[1]))

        def __exit__(self, *exc):
            resource.setrlimit(resource.RLIMIT_FSIZE, self.old)
            signal.signal(signal.SIGXFSZ, self.handler)
    return _Limit()


def test_full_disk_during_snapshot_and_state_writes(tmp_path):
    G, G_ema = _nets()
    snap = tmp_path / "network-snapshot-000000.pkl"
    save_network_snapshot(snap, G=G, G_ema=G_ema, kimg=1.0)
    before = snap.read_bytes()
    state = tmp_path / "training-state-000000.pt"
    state_io.save_training_state(state, {"counters": {"cur_nimg": 1}})
    state_before = state.read_bytes()
    big = torch.nn.Linear(1, 1)
    with _fill_after(len(before) // 2):
        with pytest.raises(WriteError, match=r"Could not write .*network-snapshot-000000\.pkl.*full") as exc:
            save_network_snapshot(snap, G=G, G_ema=G_ema, kimg=2.0)
        assert isinstance(exc.value, OSError) and "\n" not in str(exc.value)
        with pytest.raises(WriteError, match=r"Could not write .*training-state-000000\.pt"):
            state_io.save_training_state(state, {"pad": torch.zeros(len(before)), "m": big.state_dict()})
    assert snap.read_bytes() == before and state.read_bytes() == state_before
    assert load_network_snapshot(snap).kimg == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [snap.name, state.name]   # no temporaries left


def test_full_disk_during_training_exits_cleanly(tiny_data, tmp_path, capsys, monkeypatch):
    """A failing writer in train.py's snapshot: one-paragraph error, exit 1, no file under the snapshot's name."""
    import training.checkpoint as checkpoint

    def failing(path, data):
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        util.atomic_write(path, write)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", failing)
    code, _, err = invoke(util.run_cli(train.main), ["--outdir", tmp_path, *SMOKE, "--data", tiny_data,
                                                     "--kimg", "0.004"], capsys)
    assert code == 1 and one_paragraph(err) and "No space left on device" in err and "full" in err
    run_dir = next(tmp_path.iterdir())
    assert not list(run_dir.glob("network-snapshot-*")) and not list(run_dir.glob(".network-snapshot-*"))
    assert (run_dir / "training_options.json").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Datasets.

def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    PIL.Image.fromarray(array, mode).save(path) if mode else PIL.Image.fromarray(array).save(path)


def _bad_data(kind: str, root: Path) -> tuple[str, str]:
    """(dataset path, the message it must give)."""
    rng = np.random.default_rng(0)
    rgb = lambda h, w=None: rng.integers(0, 256, (h, w or h, 3), dtype=np.uint8)  # noqa: E731
    d = root / kind
    d.mkdir()
    for i in range(3):
        _png(d / f"ok{i}.png", rgb(32))
    if kind == "mixed":
        _png(d / "odd.png", rgb(16))
        return str(d), r"different sizes: '(ok0|odd)\.png' is (32x32|16x16) but '(odd|ok0)\.png' is (16x16|32x32)"
    if kind == "nonsquare":
        for p in d.iterdir():
            p.unlink()
        _png(d / "odd.png", rgb(32, 16))
        return str(d), r"not square \('odd\.png' is 16x32\)"
    if kind == "gray16":
        PIL.Image.fromarray(np.zeros((32, 32), np.uint16)).save(d / "odd.png")
        return str(d), r"'odd\.png'.* is 16-bit grayscale"
    if kind == "palette":
        PIL.Image.fromarray(rgb(32)).convert("P").save(d / "odd.png")
        return str(d), r"'odd\.png'.* is palette"
    if kind == "rgba":
        _png(d / "odd.png", rng.integers(0, 256, (32, 32, 4), dtype=np.uint8))
        return str(d), r"'odd\.png'.* is RGBA"
    if kind == "empty_zip":
        z = root / "empty.zip"
        with zipfile.ZipFile(z, "w"):
            pass
        return str(z), r"No images found in '.*empty\.zip'"
    if kind == "labels":
        (d / "dataset.json").write_text(json.dumps({"labels": [["ok0.png", 1], ["ok1.png", 0], ["gone.png", 1]]}))
        return str(d), r"labels for 2 of 3 .*'ok2\.png'"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["mixed", "nonsquare", "gray16", "palette", "rgba", "empty_zip", "labels"])
def test_bad_dataset_rejected_before_training(kind, tmp_path, capsys):
    data, message = _bad_data(kind, tmp_path)
    outdir = tmp_path / "runs"
    code, _, err = invoke(util.run_cli(train.main), ["--outdir", outdir, *SMOKE, "--data", data, "--kimg", "0.004"],
                          capsys)
    assert code == 1 and one_paragraph(err), err
    import re
    assert re.search(message, err), err
    assert not outdir.exists() or not any(outdir.iterdir())      # rejected before any run directory


def test_16bit_rgb_png_is_read_as_8bit(tmp_path):
    """48-bit RGB PNGs are accepted: Pillow reads them as 8-bit RGB (the high byte of each sample)."""
    import struct
    import zlib
    h = w = 8
    rows = b"".join(b"\x00" + np.full((w, 3), 0xAB12, ">u2").tobytes() for _ in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2,
                                           0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    image, _ = ImageDataset(tmp_path / "d")[0]
    assert image.dtype == np.uint8 and (image == 0xAB).all()


def test_truncated_png_in_the_middle_of_a_zip(tiny_data, tmp_path, capsys):
    """The header check passes; training stops at the image with a message naming it, exit 1, no traceback."""
    z = tmp_path / "data.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i, p in enumerate(sorted(Path(tiny_data).iterdir())):
            blob = p.read_bytes()
            zf.writestr(p.name, blob[:120] if i == 6 else blob)
    code, _, err = invoke(util.run_cli(train.main), ["--outdir", tmp_path / "runs", *SMOKE, "--data", z,
                                                     "--kimg", "0.024"], capsys)
    assert code == 1 and one_paragraph(err), err
    assert "Cannot decode image '006.png'" in err


@pytest.mark.parametrize("workers", [0, 1])
def test_dataset_folder_disappearing_mid_run(tmp_path, workers):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(6):
        _png(d / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    data = ImageDataset(d)
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    with pytest.raises(DatasetError) as exc:
        next(iter(iterate_reals(data, 2, "cpu", num_workers=workers)))
    assert "is gone" in str(exc.value) and "Traceback" not in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------------------------------
# Concurrent runs and mismatched resumes.

def _new_run_dir(outdir: str, barrier, queue) -> None:
    barrier.wait()
    queue.put(str(state_io.new_run_dir(outdir, "race")))


def test_simultaneous_new_run_dirs_are_distinct(tmp_path):
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_new_run_dir, args=(str(tmp_path), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    dirs = [queue.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join()
    assert len(set(dirs)) == n and sorted(Path(d).name for d in dirs) == [f"{i:05d}-race" for i in range(n)]


@pytest.mark.slow
def test_two_train_processes_on_one_outdir(tiny_data, tmp_path):
    args = [sys.executable, str(REPO / "train.py"), "--outdir", str(tmp_path), *SMOKE, "--data", tiny_data,
            "--kimg", "0.004"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*args, "--seed", str(i)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for i in range(2)]
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    dirs = sorted(d for d in tmp_path.iterdir() if d.is_dir())
    assert len(dirs) == 2
    seeds = sorted(json.loads((d / "training_options.json").read_text())["config"]["seed"] for d in dirs)
    assert seeds == [0, 1]                                        # each run kept its own options
    for d in dirs:
        state_io.load_training_state(d / "training-state-000000.pt")
        load_network_snapshot(d / "network-snapshot-000000.pkl")


@pytest.mark.parametrize("where", ["file", "below_file"])
def test_outdir_that_cannot_be_a_folder(where, tiny_data, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, kept as it is")
    outdir = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "runs"
    code, _, err = invoke(util.run_cli(train.main), ["--outdir", outdir, *SMOKE, "--data", tiny_data], capsys)
    assert code == 1 and one_paragraph(err) and "not a folder" in err, err
    assert (tmp_path / "taken").read_text() == "a file, kept as it is"


def test_resume_at_another_resolution_is_refused(smoke_state, tmp_path, capsys):
    d = tmp_path / "d16"
    d.mkdir()
    for i in range(4):
        _png(d / f"{i}.png", np.zeros((16, 16, 3), np.uint8))
    code, _, err = invoke(util.run_cli(train.main), ["--outdir", tmp_path / "runs", *SMOKE, "--data", d,
                                                     "--set", "patch_size=8", "--resume", smoke_state], capsys)
    assert code == 1 and one_paragraph(err), err
    assert "32x32 images" in err and "16x16" in err
    assert not (tmp_path / "runs").exists()


def test_resume_with_another_preset_is_refused(smoke_state, tiny_data, tmp_path, capsys):
    code, _, err = invoke(util.run_cli(train.main), ["--outdir", tmp_path / "runs", "--cfg", "smoke,noaug",
                                                     "--data", tiny_data, "--resume", smoke_state], capsys)
    assert code == 1 and one_paragraph(err), err
    assert "--cfg smoke," in err and "--cfg smoke,noaug" in err
    code, _, err = invoke(util.run_cli(train.main), ["--outdir", tmp_path / "runs", *SMOKE, "--set", "width=48",
                                                     "--data", tiny_data, "--resume", smoke_state], capsys)
    assert code == 1 and one_paragraph(err), err
    assert "holds a G of another shape" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------------------------
# File modes follow the umask.

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    from training.video import save_image
    old = os.umask(umask)
    try:
        G, G_ema = _nets()
        save_network_snapshot(tmp_path / "network-snapshot-000000.pkl", G=G, G_ema=G_ema)
        state_io.save_training_state(tmp_path / "training-state-000000.pt", {"counters": {}})
        util.atomic_write_text(tmp_path / "metric.jsonl", "{}\n")
        save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "img.png")
        with open(tmp_path / "plain.txt", "w") as f:  # what any other new file of the process gets
            f.write("x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {name: want for name in modes} and len(modes) == 5, {k: oct(v) for k, v in modes.items()}


def test_write_error_is_a_user_error_and_an_oserror(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError) as exc:
        util.atomic_write_text(tmp_path / "file" / "sub.txt", "y")   # a file where a folder is needed
    assert isinstance(exc.value, UserError) and isinstance(exc.value, OSError)
    assert str(exc.value).startswith("Could not write") and "\n" not in str(exc.value)
