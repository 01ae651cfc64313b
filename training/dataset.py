"""Training images: the StyleGAN2-ADA dataset format (zip or folder + optional dataset.json), its validation,
`synth:` dataset specs (generated once, then cached), and the infinite sampler that feeds reals to training.

Owns: ImageDataset, DatasetError, resolve_data, InfiniteSampler, iterate_reals, and the small helpers that list and
read images from a zip or folder (also used by dataset_tool.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import PIL.Image
import torch

from dnnlib import util
from dnnlib.util import UserError
from training import synthetic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CONVERT_HINT = ("convert it with `python dataset_tool.py convert --source SRC --dest OUT.zip --resolution R` "
                "(RGBA is composited on white, grayscale becomes RGB)")


class DatasetError(UserError):
    """A dataset that cannot be used as it is; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading a zip or a folder.

def _not_found(path: str) -> DatasetError:
    return DatasetError(f"Dataset not found: '{path}'. Pass a zip or folder of images, or a spec like "
                        f"'synth:chairs' to generate the embedded synthetic dataset.")


def _is_image_name(name: str) -> bool:
    parts = name.split("/")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageSource:
    """Read-only access to the files of a zip or folder dataset. Picklable: the zip is reopened in each process."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise _not_found(self.path)
        if os.path.isdir(self.path):
            self.kind = "folder"
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
        else:
            raise DatasetError(f"'{self.path}' is neither a folder nor a readable zip file. Pass a folder of PNG/JPG "
                               f"images or a zip written by dataset_tool.py.")
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self.all_names = self._list_names()

    def _list_names(self) -> list[str]:
        if self.kind == "zip":
            return sorted(info.filename for info in self.zipfile().infolist() if not info.is_dir())
        out = []
        for root, _dirs, files in os.walk(self.path):
            rel = os.path.relpath(root, self.path)
            out += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files]
        return sorted(out)

    @property
    def image_names(self) -> list[str]:
        """Sorted image file names relative to the root, '/'-separated. Raises DatasetError when there are none."""
        names = [n for n in self.all_names if _is_image_name(n)]
        if not names:
            raise DatasetError(f"No images found in '{self.path}'. Expected PNG or JPG files "
                               f"({', '.join(IMAGE_EXTENSIONS)}), in sub-folders or at the root.")
        return names

    def zipfile(self) -> zipfile.ZipFile:
        """The open zip of this process (reopened after fork or unpickling)."""
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def open(self, name: str) -> io.IOBase:
        """A binary file object for `name`."""
        if self.kind == "zip":
            return self.zipfile().open(name, "r")
        return open(os.path.join(self.path, name), "rb")

    def read_json(self, name: str = "dataset.json") -> dict | None:
        """The parsed JSON file at the root, or None when absent. Raises DatasetError when it does not parse."""
        if name not in self.all_names:
            return None
        try:
            with self.open(name) as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"'{name}' in '{self.path}' is not valid JSON ({exc}). Fix or delete it.") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"'{name}' in '{self.path}' must hold a JSON object like {{\"labels\": ...}}.")
        return data

    def fingerprint(self, name: str) -> tuple[int, int]:
        """(size in bytes, CRC-32) of one file: free for zips, a full read for folders."""
        if self.kind == "zip":
            info = self.zipfile().getinfo(name)
            return info.file_size, info.CRC
        with self.open(name) as f:
            data = f.read()
        return len(data), zlib.crc32(data)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._zip = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zip=None, _zip_pid=None)


def read_header(source: ImageSource, name: str) -> tuple[int, int, str]:
    """(width, height, PIL mode) of one image from its header, without decoding the pixels."""
    try:
        with source.open(name) as f, PIL.Image.open(f) as img:
            return img.width, img.height, img.mode
    except Exception as exc:
        raise DatasetError(f"Cannot read image '{name}' in '{source.path}': the file is corrupt or not an image "
                           f"({type(exc).__name__}: {exc}). Replace or delete it.") from exc


def decode_image(source: ImageSource, name: str) -> PIL.Image.Image:
    """Fully decode one image (any mode). Raises DatasetError naming the file when it is corrupt."""
    try:
        with source.open(name) as f:
            img = PIL.Image.open(f)
            img.load()
        return img
    except FileNotFoundError as exc:
        raise DatasetError(f"Image '{name}' of '{source.path}' is gone: the dataset was moved or deleted while in "
                           f"use. Put it back and continue with `train.py --resume auto`.") from exc
    except Exception as exc:
        raise DatasetError(f"Cannot decode image '{name}' in '{source.path}': the file is corrupt or truncated "
                           f"({type(exc).__name__}: {exc}). Replace or delete it.") from exc


def parse_labels(meta: dict | None, names: list[str], where: str) -> np.ndarray | None:
    """Labels from dataset.json for `names` as float32 [N, label_dim] (integer class labels become one-hot),
    or None when dataset.json has no labels. Raises DatasetError when they do not cover every image."""
    labels = None if meta is None else meta.get("labels")
    if labels is None:
        return None
    try:
        table = dict(labels)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"'labels' in dataset.json of '{where}' must be a list of [file_name, label] pairs or a "
                           f"dict; fix dataset.json or set \"labels\": null.") from exc
    missing = [n for n in names if n not in table]
    if missing:
        raise DatasetError(f"dataset.json of '{where}' has labels for {len(names) - len(missing)} of {len(names)} "
                           f"images; '{missing[0]}' (and {len(missing) - 1} more) has none. Give every image a label "
                           f"or set \"labels\": null.")
    values = [table[n] for n in names]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        classes = np.asarray(values, dtype=np.int64)
        if classes.size and classes.min() < 0:
            raise DatasetError(f"Class labels in dataset.json of '{where}' must be non-negative integers.")
        onehot = np.zeros([len(values), int(classes.max(initial=-1)) + 1], dtype=np.float32)
        onehot[np.arange(len(values)), classes] = 1
        return onehot
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"Labels in dataset.json of '{where}' must all be integers or float lists of one "
                           f"length ({exc}).") from exc
    if arr.ndim != 2:
        raise DatasetError(f"Labels in dataset.json of '{where}' must all be integers or float lists of one length.")
    return arr


# ---------------------------------------------------------------------------------------------------------------------
# The dataset.

def _check_sizes(source: ImageSource, names: list[str], resolution: int | None) -> int:
    """Check every image header: one square power-of-two size, RGB. Returns the resolution."""
    first: tuple[str, int, int] | None = None
    for name in names:
        w, h, mode = read_header(source, name)
        if mode != "RGB":
            kind = {"RGBA": "RGBA", "LA": "grayscale+alpha", "L": "grayscale", "1": "black-and-white",
                    "P": "palette", "PA": "palette+alpha", "CMYK": "CMYK", "I;16": "16-bit grayscale",
                    "I;16B": "16-bit grayscale", "I": "32-bit grayscale", "F": "floating-point grayscale"
                    }.get(mode, f"'{mode}'")
            raise DatasetError(f"Image '{name}' in '{source.path}' is {kind}; training needs 3-channel RGB images: "
                               f"{CONVERT_HINT}.")
        if first is None:
            first = (name, w, h)
        elif (w, h) != first[1:]:
            raise DatasetError(f"Images in '{source.path}' have different sizes: '{first[0]}' is {first[1]}x{first[2]}"
                               f" but '{name}' is {w}x{h}. Resize them to one resolution: {CONVERT_HINT}.")
    assert first is not None
    name, w, h = first
    if w != h:
        raise DatasetError(f"Images in '{source.path}' are not square ('{name}' is {w}x{h}): convert with "
                           f"`python dataset_tool.py convert --transform center-crop --resolution R ...`.")
    if w & (w - 1):
        raise DatasetError(f"Images in '{source.path}' are {w}x{h}, which is not a power of two: resize them with "
                           f"`python dataset_tool.py convert --resolution R ...` (R = 64, 128, 256, ...).")
    if resolution is not None and resolution != w:
        raise DatasetError(f"Images in '{source.path}' are {w}x{w} but resolution {resolution} was requested: use a "
                           f"{resolution}-px dataset (`dataset_tool.py convert --resolution {resolution}`) or set the "
                           f"resolution to {w}.")
    return w


class ImageDataset(torch.utils.data.Dataset):
    """Images of a zip or folder, validated when opened. Item i -> (uint8 ndarray [3, H, W], float32 label
    [label_dim]). With xflip the dataset has 2N items and items N..2N-1 are the mirrored images."""

    def __init__(self, path: str | os.PathLike, resolution: int | None = None, use_labels: bool = False,
                 xflip: bool = False, max_size: int | None = None, random_seed: int = 0) -> None:
        self._source = ImageSource(path)
        self.path = self._source.path
        self.name = Path(self.path.rstrip("/\\")).stem
        names = self._source.image_names
        self.resolution = _check_sizes(self._source, names, resolution)
        meta = self._source.read_json()
        labels = parse_labels(meta, names, self.path)
        self.camera: dict | None = (meta or {}).get("camera")
        self.metadata: dict = {k: v for k, v in (meta or {}).items() if k != "labels"}
        self.num_channels = 3
        self.image_shape = [self.num_channels, self.resolution, self.resolution]
        self.use_labels = use_labels
        self.xflip = xflip

        # Pick the images (deterministic subset by random_seed) and their labels.
        raw_idx = np.arange(len(names), dtype=np.int64)
        if max_size is not None:
            if max_size < 1:
                raise DatasetError(f"max_size must be at least 1 (got {max_size}).")
            if max_size < len(names):
                rng = np.random.default_rng(random_seed)
                raw_idx = np.sort(rng.permutation(len(names))[:max_size])
        self._names = [names[i] for i in raw_idx]
        if use_labels and labels is not None:
            self.raw_labels = labels[raw_idx]  # [N, label_dim]
        else:
            self.raw_labels = np.zeros([len(raw_idx), 0], dtype=np.float32)  # [N, 0]
        self.label_dim = int(self.raw_labels.shape[1])
        self.label_shape = [self.label_dim]
        self.has_labels = self.label_dim > 0
        self._dataset_hash: str | None = None

    @property
    def num_images(self) -> int:
        """Number of distinct images (without the x-flipped copies)."""
        return len(self._names)

    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def file_name(self, idx: int) -> str:
        """File name of item idx inside the dataset."""
        return self._names[idx % self.num_images]

    def load_image(self, idx: int) -> np.ndarray:
        """Decoded image of item idx (mirrored for the second half when xflip): uint8 [3, H, W]."""
        name = self.file_name(idx)
        img = decode_image(self._source, name)
        if img.mode != "RGB" or img.size != (self.resolution, self.resolution):
            raise DatasetError(f"Image '{name}' in '{self.path}' decoded as {img.mode} {img.width}x{img.height}, "
                               f"unlike its header; the file is damaged. Replace or delete it.")
        arr = np.asarray(img).transpose(2, 0, 1)  # [3, H, W]
        if idx >= self.num_images:
            arr = arr[:, :, ::-1]
        return np.ascontiguousarray(arr)

    def get_label(self, idx: int) -> np.ndarray:
        """float32 [label_dim] (shape [0] without labels)."""
        return self.raw_labels[idx % self.num_images].copy()

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} items")
        idx = idx % len(self)
        return self.load_image(idx), self.get_label(idx)

    @property
    def dataset_hash(self) -> str:
        """sha1 of what the dataset yields: selected file names with sizes and CRC-32s, labels and xflip."""
        if self._dataset_hash is None:
            h = hashlib.sha1()
            h.update(json.dumps({"xflip": self.xflip, "resolution": self.resolution}).encode())
            for name in self._names:
                size, crc = self._source.fingerprint(name)
                h.update(f"{name}\0{size}\0{crc}\n".encode())
            h.update(self.raw_labels.tobytes())
            self._dataset_hash = h.hexdigest()
        return self._dataset_hash

    def close(self) -> None:
        self._source.close()

    def __repr__(self) -> str:
        return (f"ImageDataset('{self.path}', {self.num_images} images, {self.resolution}x{self.resolution}, "
                f"label_dim={self.label_dim}, xflip={self.xflip})")


# ---------------------------------------------------------------------------------------------------------------------
# `synth:` specs.

SYNTH_PREFIX = "synth:"


def parse_synth_spec(spec: str, resolution: int = 128, count: int = 10000, seed: int = 0) -> tuple[str, int, int, int]:
    """'synth:FAMILY[:RES[:COUNT[:SEED]]]' -> (family, resolution, count, seed); empty fields take the defaults."""
    fields = spec[len(SYNTH_PREFIX):].split(":")
    family = fields[0].strip().lower()
    if family not in synthetic.FAMILIES:
        raise DatasetError(f"Unknown synthetic family '{fields[0]}' in '{spec}'. Valid families: "
                           f"{', '.join(synthetic.FAMILIES)} (e.g. 'synth:chairs:128:10000:0').")
    if len(fields) > 4:
        raise DatasetError(f"Too many fields in '{spec}': use synth:FAMILY[:RES[:COUNT[:SEED]]].")
    values = [resolution, count, seed]
    for k, (field, what) in enumerate(zip(fields[1:], ("resolution", "count", "seed"))):
        if field.strip() == "":
            continue
        if not re.fullmatch(r"\d+", field.strip()):
            raise DatasetError(f"Bad {what} '{field}' in '{spec}': use synth:FAMILY[:RES[:COUNT[:SEED]]] with "
                               f"non-negative integers.")
        values[k] = int(field)
    res, cnt, sd = values
    if res < 8 or res & (res - 1):
        raise DatasetError(f"Synthetic resolution {res} in '{spec}' must be a power of two >= 8 (e.g. 64, 128).")
    if cnt < 1:
        raise DatasetError(f"Synthetic image count in '{spec}' must be at least 1.")
    return family, res, cnt, sd


def synth_cache_path(family: str, resolution: int, count: int, seed: int) -> Path:
    """Where the cached zip of a synthetic dataset lives."""
    return util.cache_dir() / "datasets" / f"synth-{family}-{resolution}-{count}-s{seed}.zip"


class _FileLock:
    """An exclusive advisory lock (fcntl) so that racing processes render a cache entry once; a no-op where fcntl
    does not exist (the writer's atomic os.replace keeps the result correct there too)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "_FileLock":
        self.file = open(self.path, "a+")
        try:
            import fcntl
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()  # closing releases the lock


def resolve_data(spec: str, resolution: int = 128, count: int = 10000, seed: int = 0,
                 workers: int | None = None) -> str:
    """A dataset path from a path or a 'synth:FAMILY[:RES[:COUNT[:SEED]]]' spec. Synthetic sets are rendered on
    first use into the cache (`$HNG_CACHE_DIR/datasets/`, with their `_gt.npz` sidecar) and reused afterwards.
    Racing processes render once: a file lock serialises them and the writer moves finished files into place."""
    spec = os.fspath(spec)
    if not spec.startswith(SYNTH_PREFIX):
        if not os.path.exists(spec):
            raise _not_found(spec)
        return spec
    family, res, cnt, sd = parse_synth_spec(spec, resolution, count, seed)
    dest = synth_cache_path(family, res, cnt, sd)
    if dest.is_file():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(dest.with_name(dest.name + ".lock")):
        if not dest.is_file():  # another process may have rendered it while we waited
            print(f"Rendering synthetic dataset '{family}' ({cnt} images at {res}x{res}, seed {sd}) into {dest} "
                  f"(first use; cached afterwards)...", flush=True)
            synthetic.write_dataset_zip(dest, family, cnt, res, sd, workers=workers, overwrite=True)  # atomic
    return str(dest)


# ---------------------------------------------------------------------------------------------------------------------
# Feeding reals to training.

class InfiniteSampler(torch.utils.data.Sampler):
    """An endless, deterministic stream of dataset indices for one rank.

    Positions are visited cyclically through a shuffled order. After position i is yielded it is swapped with a
    random position among the `window` most recently visited ones of the current pass, so the order keeps drifting
    between passes (no epoch boundaries), yet every pass of len(dataset) steps still visits every index exactly
    once. All ranks draw the same stream from `seed`; rank r takes steps r, r + num_replicas, ... The first `start`
    indices of this rank's stream are skipped (to resume a run).
    """

    def __init__(self, dataset: torch.utils.data.Dataset | int, rank: int = 0, num_replicas: int = 1,
                 shuffle: bool = True, seed: int = 0, window_size: float = 0.5, start: int = 0) -> None:
        self.size = dataset if isinstance(dataset, int) else len(dataset)
        if self.size < 1:
            raise DatasetError("Cannot sample from an empty dataset.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        if not 0 <= window_size <= 1:
            raise ValueError(f"window_size must be in [0, 1] (got {window_size})")
        self.rank, self.num_replicas = rank, num_replicas
        if start < 0:
            raise ValueError(f"start must be >= 0 (got {start})")
        self.shuffle, self.seed, self.window_size, self.start = shuffle, seed, window_size, start

    def __iter__(self) -> Iterator[int]:
        n = self.size
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        window = int(round(n * self.window_size)) if self.shuffle else 0
        step, skip = 0, self.start
        while True:
            i = step % n
            if step % self.num_replicas == self.rank:
                if skip == 0:
                    yield int(order[i])
                else:
                    skip -= 1
            if window >= 2:
                j = i - int(rng.integers(min(window, i + 1)))  # a visited position of this pass
                order[i], order[j] = order[j], order[i]
            step += 1


def _reraise_worker_errors(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """Iterate `loader`; a DatasetError raised in a worker process arrives with the worker's traceback folded into its
    message: raise it again with the original one-paragraph message only."""
    it = iter(loader)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except DatasetError as exc:
            text = str(exc)
            marker = f"{DatasetError.__module__}.{DatasetError.__qualname__}: "
            if "Traceback" in text and marker in text:
                raise DatasetError(text.rsplit(marker, 1)[1].strip()) from None
            raise
        yield item


def iterate_reals(dataset: torch.utils.data.Dataset, batch: int, device: torch.device | str, seed: int = 0,
                  rank: int = 0, world: int = 1, num_workers: int = 2, prefetch_factor: int = 2,
                  with_labels: bool = False, start: int = 0
                  ) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of this rank's reals: uint8 [batch, C, H, W] on `device` (with float32 labels
    [batch, label_dim] too when with_labels). `batch` is the per-rank batch size; `start` skips that many indices of
    this rank's stream (resume where a previous run stopped)."""
    device = torch.device(device)
    sampler = InfiniteSampler(dataset, rank=rank, num_replicas=world, seed=seed, start=start)
    kwargs: dict[str, Any] = dict(num_workers=num_workers, pin_memory=device.type == "cuda")
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=True)
    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=batch, **kwargs)
    for images, labels in _reraise_worker_errors(loader):
        images = images.to(device, non_blocking=True)  # [B, C, H, W] uint8
        if with_labels:
            yield images, labels.to(device, non_blocking=True)
        else:
            yield images
