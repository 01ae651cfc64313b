"""Convert a network snapshot into this project's portable snapshot format.

  python convert_network.py --source carla_improved_1600.pkl --dest runs/authors/network-snapshot-001600.pkl

The source is one of the authors' released HyperNeRFGAN snapshots (read without executing anything from the file:
docs/AUTHORS_MODELS.md) or a snapshot of ours. The result holds G_ema (and G, D and the augment pipe where the
source has them) as this project's networks, with the authors' configuration carried over (their pixel-centre
convention included) and the estimated w_avg, plus the config keys that describe the networks. Every tool reads it
like a snapshot written by train.py. An existing --dest is kept unless --force; the file is written atomically.
"""
from __future__ import annotations

import os

import click

from dnnlib.util import UserError, run_cli


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--source", required=True, metavar="PKL", help="An authors' snapshot (or one of ours).")
@click.option("--dest", required=True, metavar="PKL", help="Output file, e.g. network-snapshot-001600.pkl.")
@click.option("--force", is_flag=True, help="Replace an existing --dest.")
def main(source: str, dest: str, force: bool) -> None:
    """Convert an authors' HyperNeRFGAN snapshot into this project's snapshot format."""
    from training.checkpoint import load_network_snapshot, save_network_snapshot
    if os.path.exists(dest) and not force:
        raise UserError(f"--dest '{dest}' exists; choose another path or pass --force to replace it.")
    if os.path.exists(dest) and os.path.samefile(source, dest):
        raise UserError("--source and --dest are the same file; write the converted snapshot elsewhere.")
    snap = load_network_snapshot(source, device="cpu")
    G_ema = snap.get("G_ema") or snap.get("G")
    save_network_snapshot(dest, G=snap.get("G") or G_ema, G_ema=G_ema, D=snap.get("D"),
                          augment_pipe=snap.get("augment_pipe"), training_set_kwargs=snap.training_set_kwargs,
                          config=snap.config, kimg=snap.kimg)
    kept = ", ".join(k for k in ("G", "G_ema", "D", "augment_pipe") if snap.get(k) is not None)
    note = f"; w_avg {snap.origin['w_avg']}" if snap.get("origin") else ""
    click.echo(f"Wrote '{dest}' ({kept}; kimg {snap.kimg:g}; {G_ema.num_layers} NeRF layers, "
               f"{G_ema.num_samples} samples per ray, {G_ema.img_resolution} px, pixel_center "
               f"{G_ema.pixel_center:g}{note}).")


if __name__ == "__main__":
    run_cli(main)()
