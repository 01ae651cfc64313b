"""Prepare datasets: render the embedded synthetic families (`synth`), convert folders/zips of images into the
StyleGAN2-ADA zip layout (`convert`), and describe a dataset (`info`).

    python dataset_tool.py synth   --family chairs --count 10000 --resolution 128 --seed 0 --dest data/chairs-128.zip
    python dataset_tool.py convert --source DIR_OR_ZIP --dest data/x.zip --resolution 128 [--transform center-crop]
    python dataset_tool.py info    data/x.zip
"""
from __future__ import annotations

import collections
import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import click
import numpy as np
import PIL.Image

from dnnlib import util
from training import dataset as ds
from training import synthetic
from training.synthetic.writer import image_fname

RESIZE_FILTERS = {"lanczos": PIL.Image.Resampling.LANCZOS, "box": PIL.Image.Resampling.BOX,
                  "bilinear": PIL.Image.Resampling.BILINEAR}
PNG_COMPRESS_LEVEL = 6  # 1-3 KB per 128-px render instead of 49 KB at level 0; decoding cost is the same


def _check_dest(dest: str, force: bool) -> None:
    if not dest.lower().endswith(".zip"):
        raise util.UserError(f"--dest must be a .zip file (got '{dest}').")
    if os.path.exists(dest) and not force:
        raise util.UserError(f"'{dest}' already exists; pass --force to overwrite it or choose another --dest.")


def _size_text(path: str) -> str:
    return f"{os.path.getsize(path) / 2**20:.2f} MiB"


@click.group()
def cli() -> None:
    """Prepare and inspect datasets (StyleGAN2-ADA zip layout)."""


# ---------------------------------------------------------------------------------------------------------------------
# synth

@cli.command()
@click.option("--family", required=True, help=f"Synthetic shape family: {', '.join(synthetic.FAMILIES)}.")
@click.option("--count", type=click.IntRange(min=1), required=True, help="Number of images.")
@click.option("--resolution", type=click.IntRange(min=8), default=128, show_default=True, help="Image size (px).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Dataset seed.")
@click.option("--dest", required=True, help="Output zip.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Render processes [default: all cores].")
@click.option("--ss", type=click.IntRange(min=1), default=2, show_default=True, help="Supersampling per axis.")
@click.option("--force", is_flag=True, help="Overwrite --dest if it exists.")
def synth(family: str, count: int, resolution: int, seed: int, dest: str, workers: int | None, ss: int,
          force: bool) -> None:
    """Render an embedded procedural dataset (deterministic per seed, independent of --workers)."""
    _check_dest(dest, force)
    with click.progressbar(length=count, label=f"Rendering {family}", show_pos=True) as bar:
        def progress(n_done: int) -> None:
            bar.update(n_done - bar.pos)

        summary = synthetic.write_dataset_zip(dest, family.lower(), count, resolution, seed, workers=workers, ss=ss,
                                              progress=progress, overwrite=force)
    click.echo(f"Wrote {dest}: {count} images of {family.lower()} at {resolution}x{resolution}, seed {seed}, "
               f"in {summary['seconds']:.1f} s with {summary['workers']} workers ({_size_text(dest)}).")
    if summary.get("gt_path"):
        click.echo(f"Ground truth: {summary['gt_path']} ({_size_text(summary['gt_path'])}).")


# ---------------------------------------------------------------------------------------------------------------------
# convert

def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL image -> RGB: transparency is composited over white, grayscale is replicated to 3 channels."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth grayscale -> 8 bit
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if arr.max(initial=0) > 255 else 1.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(arr, "L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def prepare_image(img: PIL.Image.Image, name: str, resolution: int, transform: str,
                  resample: PIL.Image.Resampling) -> PIL.Image.Image:
    """RGB, square (center-crop when asked), resized to resolution x resolution."""
    img = to_rgb(img)
    w, h = img.size
    if w != h:
        if transform != "center-crop":
            raise ds.DatasetError(f"Image '{name}' is {w}x{h}, not square: pass --transform center-crop to keep its "
                                  f"central {min(w, h)}x{min(w, h)} square.")
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), resample=resample)
    return img


def _converted_metadata(meta: dict | None, names: list[str], where: str) -> dict:
    """dataset.json for the converted zip: labels (when the source has them) and per-file entries renamed."""
    meta = meta or {}
    ds.parse_labels(meta, names, where)  # validates coverage; raises naming a missing file
    new_name = {n: image_fname(i) for i, n in enumerate(names)}
    out: dict[str, Any] = {"labels": None}
    if meta.get("labels") is not None:
        table = dict(meta["labels"])
        out["labels"] = [[new_name[n], table[n]] for n in names]
    if isinstance(meta.get("objects"), list):
        out["objects"] = [[new_name[o[0]], *o[1:]] for o in meta["objects"] if o and o[0] in new_name]
    for key in ("camera", "generator"):
        if key in meta:
            out[key] = meta[key]
    return out


def _write_zip(tmp: str, source: ds.ImageSource, names: list[str], meta: dict, resolution: int, transform: str,
               resample: PIL.Image.Resampling) -> int:
    """Write the converted images and dataset.json into zip `tmp`. Returns how many images were upscaled."""
    upscaled = 0
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf, \
            click.progressbar(names, label="Converting", show_pos=True) as bar:
        for idx, name in enumerate(bar):
            img = ds.decode_image(source, name)
            upscaled += int(min(img.size) < resolution)
            img = prepare_image(img, name, resolution, transform, resample)
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            zf.writestr(image_fname(idx), buf.getvalue())
        zf.writestr("dataset.json", json.dumps(meta))
    return upscaled


@cli.command()
@click.option("--source", required=True, help="Folder (recursive) or zip of images.")
@click.option("--dest", required=True, help="Output zip.")
@click.option("--resolution", type=click.IntRange(min=4), required=True, help="Output size (power of two).")
@click.option("--transform", type=click.Choice(["none", "center-crop"]), default="none", show_default=True,
              help="What to do with non-square images.")
@click.option("--resize-filter", type=click.Choice(sorted(RESIZE_FILTERS)), default="lanczos", show_default=True)
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Convert only the first N (sorted).")
@click.option("--force", is_flag=True, help="Overwrite --dest if it exists.")
def convert(source: str, dest: str, resolution: int, transform: str, resize_filter: str, max_images: int | None,
            force: bool) -> None:
    """Convert images into a training zip: RGB, square, resized, with dataset.json."""
    if resolution & (resolution - 1):
        raise util.UserError(f"--resolution {resolution} is not a power of two (use 64, 128, 256, ...).")
    _check_dest(dest, force)
    src = ds.ImageSource(source)
    if os.path.abspath(src.path) == os.path.abspath(dest):
        raise util.UserError("--source and --dest are the same file; write to another --dest.")
    names = src.image_names[:max_images]
    meta = _converted_metadata(src.read_json(), names, src.path)
    start = time.perf_counter()
    upscaled = [0]

    def write(tmp: str) -> None:
        upscaled[0] = _write_zip(tmp, src, names, meta, resolution, transform, RESIZE_FILTERS[resize_filter])

    util.atomic_write(dest, write)
    check = ds.ImageDataset(dest, resolution=resolution)  # validate what was written
    click.echo(f"Wrote {dest}: {check.num_images} images at {resolution}x{resolution} RGB, labels "
               f"{'yes' if meta['labels'] is not None else 'no'}, in {time.perf_counter() - start:.1f} s "
               f"({_size_text(dest)}).")
    if upscaled[0]:
        click.echo(f"Note: {upscaled[0]} source images were smaller than {resolution} px and were upscaled.")


# ---------------------------------------------------------------------------------------------------------------------
# info

def _objects_summary(objects: list) -> str:
    """'N entries, K distinct objects; families: ...' from dataset.json rows [fname, object_id, family, template_id]."""
    rows = [o for o in objects if isinstance(o, list) and len(o) >= 4]
    families = collections.Counter(str(o[2]) for o in rows)
    unique = len({(o[2], o[1]) for o in rows})
    templates = len({(o[2], o[3]) for o in rows if isinstance(o[3], int) and o[3] >= 0})
    text = f"{len(objects)} entries, {unique} distinct objects"
    if templates:
        text += f" from {templates} templates"
    return text + "; families: " + (", ".join(f"{f} {n}" for f, n in sorted(families.items())) or "none")


@cli.command()
@click.argument("path")
def info(path: str) -> None:
    """Describe a dataset zip or folder (validates it too)."""
    data = ds.ImageDataset(path, use_labels=True)
    rows = [("Dataset", data.path), ("Images", data.num_images),
            ("Resolution", f"{data.resolution}x{data.resolution}"), ("Channels", data.num_channels),
            ("Labels", f"yes (dim {data.label_dim})" if data.has_labels else "no")]
    if data.camera:
        rows.append(("Camera", ", ".join(f"{k}={v}" for k, v in data.camera.items())))
    else:
        rows.append(("Camera", "none"))
    if isinstance(data.metadata.get("objects"), list):
        rows.append(("Objects", _objects_summary(data.metadata["objects"])))
    gen = data.metadata.get("generator")
    if isinstance(gen, dict):
        rows.append(("Generator", ", ".join(f"{k}={gen[k]}" for k in ("name", "version", "seed") if k in gen)))
    sidecar = Path(data.path).with_name(f"{Path(data.path).stem}_gt.npz")
    if sidecar.is_file():
        rows.append(("Ground truth", str(sidecar)))
    rows.append(("Hash", data.dataset_hash))
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        click.echo(f"{key + ':':<{width}} {value}")


main = util.run_cli(cli)

if __name__ == "__main__":
    main()
