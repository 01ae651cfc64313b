"""The reproduction study of the seed (issue 8) as one command, plus the zip splitter behind its noise floors.

  python scripts/reproduce.py run --outdir runs/study            # the whole study (GPU; idempotent, resumable)
  python scripts/reproduce.py run --outdir runs/smoke --smoke --families cars --ablations ns8 --detector D.pt
  python scripts/reproduce.py report --outdir runs/study         # docs/RESULTS.md + docs/results_fid.png
  python scripts/reproduce.py split --source set.zip --dest-a a.zip --dest-b b.zip --count-a 2000

What `run` does, each step printed and appended to `<outdir>/commands.txt` before it runs (as a subprocess of this
Python interpreter, from the repository root):
1. per family, `dataset_tool.py synth` renders the training set to `<outdir>/data/<family>-<res>-<count>.zip`;
2. per study run (family baseline, cars ablations, extra seeds of the spread family) two `train.py` runs:
   `runs/<name>/start` trains ONE minibatch (the "0 kimg" point: train.py snapshots only at tick ends, and the
   reference's tick-0 snapshot is likewise taken after its first minibatch) and `runs/<name>/train` trains the full
   length with one tick = --snap-kimg, a snapshot + metrics every tick (50, 100, 150, 200 kimg);
   metrics are fid1k_full and pr1k3_full against every real image, no x-flips (train.py's own protocol).
   With --detector, train.py cannot take the detector, so it trains with `--metrics none` and
   `calc_metrics.py --network RUN_DIR --detector ...` evaluates every snapshot afterwards;
3. noise floors: `split` cuts each training set into two disjoint halves (seeded permutation of its images) and
   `calc_metrics.py --data HALF_A --compare HALF_B` measures FID-1k/PR between them (all of A vs 1k images of B);
4. per family, `generate.py images --pose 30,30 --sheet` (contact sheet) and `generate.py interp` (strip + video)
   from the baseline's last snapshot;
5. the report (scripts/results.py).
A run whose last metric record reaches the full length is skipped; one with a training state is continued with
`--resume auto`; finished data sets, halves, floors and figures are reused. `runs/<name>/reproduce.json` records the
device and the wall time of every session of that run.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import click
import numpy as np

from dnnlib import util
from dnnlib.util import UserError

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------------------------
# Zip splitting (noise floors: two disjoint parts of the SAME image set).

def _split_meta(meta: dict | None, names: list[str], part: str, source: str, seed: int) -> dict:
    """dataset.json of one part: per-image lists ('labels', 'objects') filtered to `names`, the rest kept."""
    keep = set(names)
    out: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        per_image = isinstance(value, list) and all(isinstance(v, list) and v and isinstance(v[0], str) for v in value)
        out[key] = [v for v in value if v[0] in keep] if per_image and value else value
    out["split"] = {"source": os.path.basename(source), "part": part, "seed": int(seed), "count": len(names)}
    return out


def split_zip(source: str | os.PathLike, dest_a: str | os.PathLike, dest_b: str | os.PathLike, count_a: int,
              count_b: int | None = None, seed: int = 0, force: bool = False) -> tuple[list[str], list[str]]:
    """Split the images of a dataset zip into two disjoint zips (a seeded permutation; each part in name order).

    Part A gets `count_a` images, part B the next `count_b` (default: all the rest). Image bytes are copied unchanged;
    dataset.json keeps its keys with per-image lists filtered and a 'split' record added. Returns (names A, names B).
    """
    source = Path(source)
    if not zipfile.is_zipfile(source):
        raise UserError(f"'{source}' is not a zip file: split takes a dataset zip written by dataset_tool.py.")
    for dest in (dest_a, dest_b):
        if Path(dest).exists() and not force:
            raise UserError(f"'{dest}' already exists; pass --force to overwrite it or choose another path.")
    from training.dataset import _is_image_name
    with zipfile.ZipFile(source) as z:
        names = sorted(n for n in z.namelist() if _is_image_name(n))
        count_b = len(names) - count_a if count_b is None else count_b
        if count_a < 1 or count_b < 1 or count_a + count_b > len(names):
            raise UserError(f"Cannot take {count_a} + {count_b} images from '{source}' ({len(names)} images): both "
                            f"parts need at least one image and together at most {len(names)}.")
        perm = np.random.default_rng(seed).permutation(len(names))
        parts = {"a": sorted(names[i] for i in perm[:count_a]),
                 "b": sorted(names[i] for i in perm[count_a:count_a + count_b])}
        meta = json.loads(z.read("dataset.json")) if "dataset.json" in z.namelist() else None
        for part, dest in (("a", dest_a), ("b", dest_b)):
            _write_part(z, Path(dest), parts[part], _split_meta(meta, parts[part], part, str(source), seed))
    return parts["a"], parts["b"]


def _write_part(src: zipfile.ZipFile, dest: Path, names: list[str], meta: dict) -> None:
    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
            for name in names:
                out.writestr(name, src.read(name))
            out.writestr("dataset.json", json.dumps(meta))
    util.atomic_write(dest, write)


# ---------------------------------------------------------------------------------------------------------------------
# Command line.

@click.group()
def cli() -> None:
    """The seed's reproduction study: run it, report it, split data sets for noise floors."""


@cli.command()
@click.option("--source", required=True, help="Dataset zip to split.")
@click.option("--dest-a", required=True, help="Output zip of part A (the 'reals' of a noise floor).")
@click.option("--dest-b", required=True, help="Output zip of part B (the 'fakes').")
@click.option("--count-a", type=click.IntRange(min=1), required=True, help="Images in part A.")
@click.option("--count-b", type=click.IntRange(min=1), default=None, help="Images in part B [default: the rest].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Permutation seed.")
@click.option("--force", is_flag=True, help="Overwrite existing output zips.")
def split(source: str, dest_a: str, dest_b: str, count_a: int, count_b: int | None, seed: int, force: bool) -> None:
    """Split a dataset zip into two disjoint zips (seeded permutation), e.g. for FID noise floors."""
    a, b = split_zip(source, dest_a, dest_b, count_a, count_b, seed=seed, force=force)
    click.echo(f"Wrote {dest_a} ({len(a)} images) and {dest_b} ({len(b)} images) from {source} (seed {seed}).")


main = util.run_cli(cli)

if __name__ == "__main__":
    main()
