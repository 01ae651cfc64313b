"""Writes a synthetic family as a StyleGAN2-ADA dataset zip plus a ground-truth sidecar (owns `write_dataset_zip`).

Zip: ZIP_STORED, RGB PNGs (compress_level 6) named `{idx//1000:05d}/img{idx:08d}.png`, and `dataset.json` with the
EG3D-style 25-float labels, the camera block, the object table and the generator record.
Sidecar `<stem>_gt.npz` next to the zip (never inside it): depth float32 [N,H,W] (camera-z, +inf = background),
alpha uint8 [N,H,W] (coverage * 255, rounded), part uint8 [N,H,W] (0 = background), c2w float32 [N,4,4], and
`meta_json` (uint8 UTF-8 bytes of a JSON dict with fnames, part names and every object's primitive list). Read it
with `load_gt`. Rendering runs in a multiprocessing pool; output is identical for any number of workers.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

from dnnlib.util import UserError, atomic_write
from training.rendering import camera
from training.synthetic import render
from training.synthetic.shapes import FAMILIES, PART_NAMES, RADIUS_RANGE

GENERATOR_NAME = "hng-synth"
GENERATOR_VERSION = "1.0"
NEAR, FAR = 3.0, 5.0


def image_fname(idx: int) -> str:
    return f"{idx // 1000:05d}/img{idx:08d}.png"


def gt_path_for(dest: str | os.PathLike) -> Path:
    """Sidecar path `<dest stem>_gt.npz` next to the zip."""
    dest = Path(dest)
    return dest.with_name(dest.stem + "_gt.npz")


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 [H, W, 3] -> PNG bytes (compress_level 6, never RGBA)."""
    buf = io.BytesIO()
    PIL.Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _init_worker() -> None:
    torch.set_num_threads(1)


def _render_chunk(args: tuple[str, list[int], int, int, int]) -> list[dict[str, Any]]:
    """Worker: render and PNG-encode a chunk of image indices."""
    family, indices, resolution, seed, ss = args
    out = []
    for idx in indices:
        r = render.render_index(family, idx, resolution, seed, ss)
        out.append({"idx": idx, "png": encode_png(r["image"]), "c2w": r["c2w"], "obj": r["obj"],
                    "depth": r["depth"], "alpha": np.floor(r["alpha"] * 255.0 + 0.5).astype(np.uint8),
                    "part": r["part"].astype(np.uint8)})
    return out


def _chunks(count: int, workers: int) -> list[list[int]]:
    size = max(1, min(64, count // max(1, workers * 8)))
    return [list(range(i, min(count, i + size))) for i in range(0, count, size)]


class _NpyStream:
    """Writes one .npy file of known shape/dtype sequentially, image by image."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.file = path, open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.file, header)
        self.dtype = np.dtype(dtype)

    def write(self, arr: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(arr, self.dtype).tobytes())

    def close(self) -> None:
        self.file.close()


def _validate(dest: Path, family: str, count: int, resolution: int, ss: int, overwrite: bool) -> None:
    if family not in FAMILIES:
        raise UserError(f"Unknown synthetic family '{family}': choose one of {', '.join(FAMILIES)}.")
    if count < 1:
        raise UserError(f"--count must be at least 1 (got {count}).")
    if resolution < 8 or resolution & (resolution - 1):
        raise UserError(f"--resolution must be a power of two >= 8 (got {resolution}); try 64 or 128.")
    if ss < 1:
        raise UserError(f"Supersampling factor ss must be >= 1 (got {ss}).")
    if dest.suffix.lower() != ".zip":
        raise UserError(f"Destination '{dest}' must end in .zip.")
    if not overwrite and (dest.exists() or gt_path_for(dest).exists()):
        raise UserError(f"'{dest}' (or its _gt.npz sidecar) already exists: delete it or choose another --dest.")


def _dataset_json(family: str, records: list[dict], resolution: int, seed: int, ss: int, count: int) -> dict:
    c2w = torch.from_numpy(np.stack([r["c2w"] for r in records]).astype(np.float32))
    labels = camera.label_from_pose(c2w, resolution).numpy()                                  # [N, 25]
    fnames = [image_fname(r["idx"]) for r in records]
    cam = {"convention": camera.CONVENTION, "fov_x_rad": camera.FOV_X_RAD, "radius": camera.RADIUS, "near": NEAR,
           "far": FAR, "elev_deg": [0.0, 90.0], "azim_deg": [-180.0, 180.0],
           "pixel_center": camera.DEFAULT_PIXEL_CENTER}
    params = {"family": family, "count": count, "resolution": resolution, "ss": ss, "radius_range": RADIUS_RANGE,
              "lights": {"key": render.LIGHT_KEY.tolist(), "fill": render.LIGHT_FILL.tolist(),
                         "k_ambient": render.K_AMBIENT, "k_key": render.K_KEY, "k_fill": render.K_FILL},
              "background": "white", "depth": "camera_z"}
    return {"labels": [[f, [float(x) for x in lab]] for f, lab in zip(fnames, labels)], "camera": cam,
            "objects": [[f, r["obj"].object_id, family, r["obj"].template_id] for f, r in zip(fnames, records)],
            "generator": {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": seed, "params": params}}


def _iter_chunks(tasks: list[tuple], workers: int):
    """Yield rendered chunks in task order (a pool of `workers` processes, or in-process for 1)."""
    if workers == 1:
        for t in tasks:
            yield _render_chunk(t)
        return
    # spawn, not Linux's default fork: a process that already runs torch's thread pools (train.py --data synth:...,
    # the test suite) can fork a worker that deadlocks on a lock held by one of those threads (seen: make test hung).
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_render_chunk, tasks)


def _write_images(zip_path: str, gt_dir: Path | None, family: str, count: int, resolution: int, seed: int, ss: int,
                  workers: int, progress: Callable[[int], None] | None) -> list[dict]:
    """Render every image into the (temporary) zip and stream the GT arrays into .npy files under gt_dir."""
    shape = (count, resolution, resolution)
    streams = {} if gt_dir is None else {k: _NpyStream(gt_dir / f"{k}.npy", shape, dt) for k, dt in
                                         (("depth", np.float32), ("alpha", np.uint8), ("part", np.uint8))}
    records, done = [], 0
    tasks = [(family, idx, resolution, seed, ss) for idx in _chunks(count, workers)]
    try:
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
            for chunk in _iter_chunks(tasks, workers):
                for r in chunk:
                    zf.writestr(image_fname(r["idx"]), r["png"])
                    for k, stream in streams.items():
                        stream.write(r[k])
                    records.append({"idx": r["idx"], "c2w": r["c2w"], "obj": r["obj"]})
                done += len(chunk)
                if progress is not None:
                    progress(done)
            meta = _dataset_json(family, records, resolution, seed, ss, count)
            zf.writestr("dataset.json", json.dumps(meta))
    finally:
        for stream in streams.values():
            stream.close()
    return records


def _write_sidecar(path: Path, gt_dir: Path, family: str, records: list[dict]) -> None:
    """Pack the streamed arrays, c2w and the object JSON into `<stem>_gt.npz` (deflated), atomically."""
    np.save(gt_dir / "c2w.npy", np.stack([r["c2w"] for r in records]).astype(np.float32))
    meta = {"family": family, "fnames": [image_fname(r["idx"]) for r in records], "depth": "camera_z, inf = empty",
            "alpha_scale": 255, "part_names": PART_NAMES[family], "objects": [r["obj"].to_json() for r in records]}
    blob = np.frombuffer(json.dumps(meta, separators=(",", ":")).encode("utf-8"), np.uint8)
    np.save(gt_dir / "meta_json.npy", blob)

    def _write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for name in ("depth", "alpha", "part", "c2w", "meta_json"):
                zf.write(gt_dir / f"{name}.npy", f"{name}.npy")
    atomic_write(path, _write)


def load_gt(path: str | os.PathLike) -> dict[str, Any]:
    """Read a `_gt.npz` sidecar: arrays depth/alpha/part/c2w plus the decoded `meta` dict."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in ("depth", "alpha", "part", "c2w")}
        out["meta"] = json.loads(data["meta_json"].tobytes().decode("utf-8"))
    return out


def write_dataset_zip(dest: str | os.PathLike, family: str, count: int, resolution: int, seed: int,
                      workers: int | None = None, ss: int = 2, progress: Callable[[int], None] | None = None,
                      gt_sidecar: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Render `count` images of `family` into a StyleGAN2-ADA zip at `dest` (+ `<stem>_gt.npz`), atomically.

    workers: processes (default os.cpu_count()); the pixels do not depend on it. progress(n_done) is called after
    every finished chunk. Refuses to replace existing outputs unless overwrite=True.
    Returns {"path", "gt_path", "count", "resolution", "seconds", "bytes", "workers"}.
    """
    dest = Path(dest)
    _validate(dest, family, int(count), int(resolution), int(ss), overwrite)
    if workers is not None and int(workers) < 1:
        raise UserError(f"workers must be >= 1 (got {workers}); leave it unset to use every CPU core.")
    workers = int(workers) if workers is not None else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(_chunks(count, workers))))
    gt_path = gt_path_for(dest) if gt_sidecar else None
    t0 = time.time()
    dest.parent.mkdir(parents=True, exist_ok=True)

    def _write(tmp_zip: str) -> None:
        gt_dir = Path(tempfile.mkdtemp(prefix=".hng-gt-", dir=dest.parent)) if gt_sidecar else None
        try:
            records = _write_images(tmp_zip, gt_dir, family, count, resolution, seed, ss, workers, progress)
            if gt_dir is not None:
                _write_sidecar(gt_path, gt_dir, family, records)
        finally:
            if gt_dir is not None:
                shutil.rmtree(gt_dir, ignore_errors=True)
    atomic_write(dest, _write)
    return {"path": str(dest), "gt_path": str(gt_path) if gt_path else None, "count": int(count),
            "resolution": int(resolution), "seconds": time.time() - t0, "bytes": dest.stat().st_size,
            "workers": workers}
