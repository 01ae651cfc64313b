"""Render a trained generator: images, interpolation / orbit / front videos, depth maps and meshes.

  python generate.py images --network PKL --seeds 0-15 --outdir out/ [--pose random|front|AZ,EL] [--resolution 256]
  python generate.py interp --network PKL --seeds 0-3 --frames 120 --out interp.mp4 [--space w --method slerp --orbit]
  python generate.py orbit  --network PKL --seeds 0-8 --out orbit.mp4 [--frames 120 --elevation 30]
  python generate.py front  --network PKL --seeds 0-8 --out front.mp4
  python generate.py depth  --network PKL --seeds 0-3 --outdir out/
  python generate.py mesh   --network PKL --seeds 0-3 --outdir out/ [--grid 128 --threshold 10]

Seeds: seed N has its own torch.Generator (CPU, seeded with N) that draws z first and then the pose, so seed N always
gives the same object and, with --pose random, the same view, whatever the other seeds, the device or the order.
Cameras: azimuth AZ and elevation EL in degrees (training/rendering/camera.py); "front" = AZ 0, EL 0 (camera on +y).
Images go into --outdir (a seed's files are overwritten); a video path that exists is refused unless --force.
Rendering is chunked (--ray-chunk rays per field call, over all objects of a frame), so memory stays bounded.
--impl (images, interp, orbit, front, depth): auto (default) renders on the fast path where it runs (the fused fp16
Triton NeRF MLP on CUDA GPUs of compute capability 8.0+), reference on plain PyTorch; torch_utils/backend.py prints its
choice in one line. mesh samples its density grid with the PyTorch MLP either way.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np
import torch

import dnnlib
from dnnlib.util import UserError
from torch_utils import backend
from training.checkpoint import load_network_snapshot
from training.mesh import extract_mesh, write_ply
from training.rendering.camera import pose_spherical
from training.video import (check_video_path, check_writable, make_grid, save_image, save_image_grid, to_uint8,
                            write_video)

DEPTH_SCALE = 1000.0       # 16-bit depth PNG value = camera-z depth in world units x 1000 (millimetres at 1 unit = 1 m).
DEPTH_MIN_OPACITY = 0.05   # Pixels less opaque than this have no surface: depth 0.
INTERP_POSE = (30.0, 30.0)  # The reference's interpolation camera: theta = 30, phi = -30 (30 deg elevation).


# ---------------------------------------------------------------------------------------------------------------------
# Loading, seeds, cameras.

def resolve_device(name: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or None (cuda when available)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"Bad --device '{name}': use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available: use --device cpu.")
    return device


def load_generator(network: str, device: torch.device) -> torch.nn.Module:
    """The snapshot's G_ema (or G when a snapshot has no EMA copy), in eval mode on `device`."""
    snap = load_network_snapshot(network, device=device)
    G = snap.get("G_ema") or snap.get("G")
    if G is None:
        raise UserError(f"Snapshot '{network}' holds no generator (neither G_ema nor G).")
    return G.eval().requires_grad_(False)


def g_kwarg(G: torch.nn.Module, name: str, default: float) -> float:
    """A Generator constructor argument (recorded by @persistent_class), e.g. radius or render_size."""
    return getattr(G, "init_kwargs", {}).get(name, default)


def img_resolution(G: torch.nn.Module) -> int:
    return int(getattr(G, "img_resolution", None) or g_kwarg(G, "img_resolution", 128))


def generator_at_resolution(G: torch.nn.Module, resolution: int | None) -> torch.nn.Module:
    """A copy of G whose rays are built at `resolution` with the same field of view (G itself is untouched).

    Rebuilt from G's constructor kwargs with img_resolution replaced, sharing nothing mutable with G.
    """
    if resolution is None or resolution == img_resolution(G):
        return G
    if resolution < 1:
        raise UserError(f"--resolution must be positive (got {resolution}).")
    device = next(G.parameters()).device
    G2 = type(G)(**{**G.init_kwargs, "img_resolution": int(resolution)})
    try:
        G2.load_state_dict(G.state_dict(), strict=True)
    except RuntimeError as exc:
        raise UserError(f"This generator cannot render at --resolution {resolution} ({exc}); leave it out.") from exc
    return G2.to(device).eval().requires_grad_(False)


def seed_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def seed_latents(G: torch.nn.Module, seeds: Sequence[int], device: torch.device,
                 with_poses: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z [N, z_dim] (and prior poses c2w [N, 4, 4]) with one CPU generator per seed: z first, then the pose."""
    zs, poses = [], []
    for seed in seeds:
        gen = seed_generator(seed)
        zs.append(G.sample_z(1, generator=gen, device="cpu"))
        if with_poses:
            poses.append(G.sample_poses(1, generator=gen, device="cpu"))
    z = torch.cat(zs).to(device)
    return z, (torch.cat(poses).to(device) if with_poses else None)


def seed_view(G: torch.nn.Module, seed: int, cam: tuple[float, float] | None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """z [1, z_dim] of `seed` and its camera [1, 4, 4]: the seed's prior pose (cam None) or (azimuth, elevation)."""
    z, c2w = seed_latents(G, [seed], device, with_poses=cam is None)
    return z, (c2w if cam is None else poses(G, [cam[0]], [cam[1]], device))


def parse_pose(spec: str, allow_random: bool = True) -> tuple[float, float] | None:
    """'random' -> None, 'front' -> (0, 0), 'AZ,EL' -> (azimuth, elevation) in degrees."""
    spec = str(spec).strip().lower()
    if spec == "random" and allow_random:
        return None
    if spec == "front":
        return 0.0, 0.0
    parts = spec.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        az, el = float(parts[0]), float(parts[1])
    except ValueError:
        choices = "'random', 'front'" if allow_random else "'front'"
        raise UserError(f"Bad --pose '{spec}': use {choices} or 'AZ,EL' in degrees, e.g. '30,30'.") from None
    if not -90.0 <= el <= 90.0:
        raise UserError(f"Bad --pose '{spec}': the elevation must lie in [-90, 90] degrees.")
    return az, el


def poses(G: torch.nn.Module, azim_deg: Sequence[float] | torch.Tensor, elev_deg: Sequence[float] | torch.Tensor,
          device: torch.device) -> torch.Tensor:
    """Camera-to-world [B, 4, 4] on G's orbit radius, looking at the origin."""
    az = torch.as_tensor(azim_deg, dtype=torch.float32).reshape(-1)
    el = torch.as_tensor(elev_deg, dtype=torch.float32).reshape(-1).expand_as(az)
    return pose_spherical(az, el, float(g_kwarg(G, "radius", 4.0))).to(device)


def parse_seeds(spec: str, min_count: int = 1) -> list[int]:
    seeds = dnnlib.util.parse_int_list(spec)
    if len(seeds) < min_count:
        raise UserError(f"--seeds '{spec}' gives {len(seeds)} seed(s); this command needs at least {min_count}.")
    return seeds


def ensure_outdir(outdir: str) -> Path:
    path = Path(outdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create --outdir '{outdir}' ({exc.strerror}): choose a writable folder.") from exc
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise UserError(f"--outdir '{outdir}' is not a writable folder: choose another one.")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Rendering.

def select_backend(impl: str, device: torch.device) -> backend.Selection:
    """This command's implementation choices for --impl on `device` (printed in one line)."""
    return backend.activate(backend.select(impl, device, training=False))


@torch.no_grad()
def render(G: torch.nn.Module, w: torch.Tensor, c2w: torch.Tensor, ray_chunk: int | None,
           return_aux: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """Full images [B, 3, H, W] in [-1, 1] (no jitter, no noise); with return_aux also depth/opacity [B, 1, H, W]."""
    return G.synthesis(w, c2w, perturb=False, ray_chunk=ray_chunk, return_aux=return_aux)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a, b [N, D], t [T] -> [T, N, D]."""
    t = t.reshape(-1, 1, 1).to(a)
    return a[None] + (b - a)[None] * t


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation along the great circle through a and b (norms interpolated too). [T, N, D]."""
    t = t.reshape(-1, 1, 1).to(a)
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)           # [N, 1]
    cos = ((a / na.clamp_min(eps)) * (b / nb.clamp_min(eps))).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)[None]                                                  # [1, N, 1]
    so = torch.sin(omega)
    near = so.abs() < eps
    ca = torch.where(near, 1.0 - t, torch.sin((1.0 - t) * omega) / so.where(~near, torch.ones_like(so)))
    cb = torch.where(near, t, torch.sin(t * omega) / so.where(~near, torch.ones_like(so)))
    return ca * a[None] + cb * b[None]                                               # [T, N, D]


def interp_latents(G: torch.nn.Module, z: torch.Tensor, t: torch.Tensor, space: str, method: str,
                   psi: float) -> torch.Tensor:
    """w [T, P, w_dim] between consecutive seeds (P = N - 1 pairs) at interpolation weights t [T]."""
    fn = slerp if method == "slerp" else lerp
    if space == "z":
        zt = fn(z[:-1], z[1:], t)                                                    # [T, P, z_dim]
        return G.mapping(zt.reshape(-1, zt.shape[-1]), psi=psi).reshape(*zt.shape[:2], -1)
    w = G.mapping(z, psi=psi)                                                        # [N, w_dim]
    return fn(w[:-1], w[1:], t)                                                      # [T, P, w_dim]


def render_frames(G: torch.nn.Module, ws: torch.Tensor, cams: torch.Tensor, ray_chunk: int | None, label: str,
                  grid: tuple[int, int] | None = None) -> list[np.ndarray]:
    """ws [T, B, w_dim], cams [T, B, 4, 4] -> T grid frames uint8 [H', W', 3] (one batched render per frame)."""
    frames = []
    with click.progressbar(length=ws.shape[0], label=label, show_pos=True) as bar:
        for k in range(ws.shape[0]):
            frames.append(make_grid(render(G, ws[k], cams[k], ray_chunk), grid))
            bar.update(1)
    return frames


# ---------------------------------------------------------------------------------------------------------------------
# Command line.

def common_options(fn: Callable) -> Callable:
    """--network, --device, --trunc, --ray-chunk, shared by every subcommand."""
    fn = click.option("--ray-chunk", type=click.IntRange(min=1), default=16384, show_default=True,
                      help="Rays per field query (over all objects of a frame); lower it if memory runs out.")(fn)
    fn = click.option("--trunc", "psi", type=float, default=1.0, show_default=True, help="Truncation psi.")(fn)
    fn = click.option("--device", type=str, default=None,
                      help="cpu, cuda or cuda:N  [default: cuda when available, else cpu]")(fn)
    fn = click.option("--network", "network", type=str, required=True,
                      help="A network-snapshot-NNNNNN.pkl written by train.py, or one of the authors' released "
                           "snapshots (docs/AUTHORS_MODELS.md).")(fn)
    return fn


def impl_option(fn: Callable) -> Callable:
    """--impl, shared by the rendering subcommands (images, interp, orbit, front, depth)."""
    return click.option("--impl", type=click.Choice(backend.IMPLS, case_sensitive=False), default="auto",
                        show_default=True,
                        help="auto = the fast path where it runs (the fused fp16 Triton NeRF MLP on CUDA GPUs of "
                             "compute capability 8.0+), else PyTorch; reference = plain PyTorch.")(fn)


def still_options(fn: Callable) -> Callable:
    """--seeds, --outdir, --resolution, --pose, shared by the per-seed image subcommands (images, depth)."""
    fn = click.option("--pose", type=str, default="random", show_default=True,
                      help="'random' (the prior, tied to the seed), 'front' or 'AZ,EL' in degrees.")(fn)
    fn = click.option("--resolution", type=click.IntRange(min=1), default=None,
                      help="Render at this many pixels per side (same field of view)  "
                           "[default: the training resolution]")(fn)
    fn = click.option("--outdir", type=str, required=True,
                      help="Output folder (files of the given seeds are overwritten).")(fn)
    fn = click.option("--seeds", type=str, required=True, help="Seeds, e.g. '0-7' or '1,5,9'.")(fn)
    return fn


def video_options(fn: Callable) -> Callable:
    """--out, --fps, --quality, --force, shared by the video subcommands."""
    fn = click.option("--force", is_flag=True, help="Overwrite an existing video (and strip) at --out.")(fn)
    fn = click.option("--quality", type=click.FloatRange(0, 10), default=8.0, show_default=True,
                      help="imageio-ffmpeg quality (0 worst .. 10 best).")(fn)
    fn = click.option("--fps", type=click.FloatRange(min=1), default=30.0, show_default=True, help="Frame rate.")(fn)
    fn = click.option("--out", type=str, required=True, help="Output video (.mp4; .gif also works).")(fn)
    fn = click.option("--seeds", type=str, required=True, help="Seeds, e.g. '0-8' or '1,5,9'.")(fn)
    return fn


@click.group()
def cli() -> None:
    """Render images, videos, depth maps and meshes from a HyperNeRFGAN snapshot."""


@cli.command()
@common_options
@impl_option
@still_options
@click.option("--sheet", type=str, default=None,
              help="Also write all seeds as one contact-sheet PNG (near-square grid) to this path.")
def images(network: str, device: str | None, psi: float, ray_chunk: int, impl: str, seeds: str, outdir: str,
           resolution: int | None, pose: str, sheet: str | None) -> None:
    """One PNG per seed: seedNNNN.png (and optionally a contact sheet of them all)."""
    seed_list, cam = parse_seeds(seeds), parse_pose(pose)
    sheet_path = check_writable(sheet, force=True) if sheet else None
    dev = resolve_device(device)
    G = generator_at_resolution(load_generator(network, dev), resolution)
    out = ensure_outdir(outdir)                         # after the network is accepted: a refused file leaves no folder
    select_backend(impl, dev)
    rendered = []
    with click.progressbar(seed_list, label="Rendering images") as bar:
        for seed in bar:
            z, c2w = seed_view(G, seed, cam, dev)
            img = to_uint8(render(G, G.mapping(z, psi=psi), c2w, ray_chunk))[0]
            save_image(img, out / f"seed{seed:04d}.png")
            rendered.append(img)
    click.echo(f"Wrote {len(seed_list)} image(s) to '{out}'.")
    if sheet_path is not None:
        save_image_grid(np.stack(rendered), sheet_path)
        click.echo(f"Wrote the contact sheet '{sheet_path}'.")


def interp_schedule(frames: int, cam: tuple[float, float], orbit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolation weight t [F] (0 -> 1 -> 0, cosine eased, loops seamlessly) and azimuth [F] in degrees."""
    k = torch.arange(frames, dtype=torch.float64)
    t = 0.5 - 0.5 * torch.cos(2.0 * math.pi * k / frames)
    azim = cam[0] + (360.0 * k / frames if orbit else torch.zeros_like(k))
    return t.float(), azim.float()


@cli.command()
@common_options
@impl_option
@video_options
@click.option("--frames", type=click.IntRange(min=2), default=120, show_default=True, help="Video length in frames.")
@click.option("--space", type=click.Choice(["z", "w"]), default="z", show_default=True, help="Interpolate z or w.")
@click.option("--method", type=click.Choice(["lerp", "slerp"]), default="lerp", show_default=True,
              help="Linear or spherical (great-circle) interpolation.")
@click.option("--orbit", is_flag=True, help="Turn the camera once around the objects during the video.")
@click.option("--pose", type=str, default="30,30", show_default=True, help="Camera: 'front' or 'AZ,EL' in degrees.")
@click.option("--steps", type=click.IntRange(min=2), default=10, show_default=True,
              help="Columns of the PNG strip (interpolation steps per pair).")
def interp(network: str, device: str | None, psi: float, ray_chunk: int, impl: str, seeds: str, out: str, fps: float,
           quality: float, force: bool, frames: int, space: str, method: str, orbit: bool, pose: str,
           steps: int) -> None:
    """Interpolate between consecutive seeds: a video plus a PNG strip <out stem>.png.

    Pairs are (s0, s1), (s1, s2), ...  The strip has one row per pair with --steps images from the first seed to the
    second (the layout of the paper's interpolation figure). The video shows every pair at once (a near-square grid,
    one cell per pair) going from the first seed to the second and back (cosine-eased, so it loops seamlessly).
    """
    seed_list, cam = parse_seeds(seeds, min_count=2), parse_pose(pose, allow_random=False)
    strip_path = Path(out).with_suffix(".png")
    check_video_path(out, force)
    check_writable(strip_path, force)
    dev = resolve_device(device)
    G = load_generator(network, dev)
    select_backend(impl, dev)
    z, _ = seed_latents(G, seed_list, dev)
    pairs = len(seed_list) - 1

    with torch.no_grad():
        w_strip = interp_latents(G, z, torch.linspace(0, 1, steps), space, method, psi)    # [steps, P, w_dim]
    cams = poses(G, [cam[0]], [cam[1]], dev).expand(steps * pairs, 4, 4)
    strip = render_frames(G, w_strip.transpose(0, 1).reshape(1, pairs * steps, -1), cams[None], ray_chunk,
                          "Rendering strip", grid=(steps, pairs))[0]
    save_image(strip, strip_path)

    t, azim = interp_schedule(frames, cam, orbit)
    with torch.no_grad():
        ws = interp_latents(G, z, t, space, method, psi)                                  # [F, P, w_dim]
    cams = poses(G, azim, [cam[1]], dev)[:, None].expand(frames, pairs, 4, 4)
    video = write_video(out, render_frames(G, ws, cams, ray_chunk, "Rendering video"), fps, quality, force)
    click.echo(f"Wrote '{video}' ({frames} frames, {pairs} pair(s)) and the strip '{strip_path}'.")


def render_seed_video(network: str, device: str | None, psi: float, ray_chunk: int, seeds: str, out: str,
                      fps: float, quality: float, force: bool, azim: torch.Tensor, elev: torch.Tensor,
                      impl: str = "auto") -> None:
    """Grid video of every seed seen from the camera path azim/elev [F] (degrees)."""
    seed_list = parse_seeds(seeds)
    check_video_path(out, force)
    dev = resolve_device(device)
    G = load_generator(network, dev)
    select_backend(impl, dev)
    z, _ = seed_latents(G, seed_list, dev)
    with torch.no_grad():
        w = G.mapping(z, psi=psi)                                                        # [N, w_dim]
    n, F = len(seed_list), azim.shape[0]
    cams = poses(G, azim, elev, dev)[:, None].expand(F, n, 4, 4)
    frames = render_frames(G, w[None].expand(F, n, w.shape[-1]), cams, ray_chunk, "Rendering video")
    video = write_video(out, frames, fps, quality, force)
    click.echo(f"Wrote '{video}' ({F} frames, {n} seed(s)).")


@cli.command()
@common_options
@impl_option
@video_options
@click.option("--frames", type=click.IntRange(min=2), default=120, show_default=True, help="Frames per turn.")
@click.option("--elevation", type=click.FloatRange(-90, 90), default=30.0, show_default=True,
              help="Camera elevation in degrees.")
def orbit(network: str, device: str | None, psi: float, ray_chunk: int, impl: str, seeds: str, out: str, fps: float,
          quality: float, force: bool, frames: int, elevation: float) -> None:
    """A grid of the seeds turning once through 360 degrees (azimuth -180 .. 180, last frame != first: loops)."""
    azim = -180.0 + 360.0 * torch.arange(frames, dtype=torch.float32) / frames
    render_seed_video(network, device, psi, ray_chunk, seeds, out, fps, quality, force, azim,
                      torch.full_like(azim, elevation), impl=impl)


def front_schedule() -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's 128-frame front sweep: azimuth [128] and elevation [128] in degrees (elevation = -phi)."""
    theta = torch.cat([torch.linspace(-20, 20, 64), torch.linspace(20, -20, 64)])
    phi = torch.cat([torch.linspace(0, 8, 32), torch.linspace(8, -8, 64), torch.linspace(-8, 0, 32)])
    return theta, -phi


@cli.command()
@common_options
@impl_option
@video_options
def front(network: str, device: str | None, psi: float, ray_chunk: int, impl: str, seeds: str, out: str, fps: float,
          quality: float, force: bool) -> None:
    """The reference's front-view sweep (128 frames: azimuth +-20 deg, elevation +-8 deg around the +y axis)."""
    azim, elev = front_schedule()
    render_seed_video(network, device, psi, ray_chunk, seeds, out, fps, quality, force, azim, elev, impl=impl)


def depth_to_uint16(depth: torch.Tensor, opacity: torch.Tensor) -> np.ndarray:
    """Expected surface depth (sum w t / opacity) x DEPTH_SCALE as uint16 [H, W]; 0 where opacity < DEPTH_MIN_OPACITY."""
    surface = depth / opacity.clamp_min(1e-8)
    mm = torch.where(opacity >= DEPTH_MIN_OPACITY, (surface * DEPTH_SCALE).round(), torch.zeros_like(surface))
    return mm.clamp(0, 65535).to(torch.int32).cpu().numpy().astype(np.uint16)


@cli.command()
@common_options
@impl_option
@still_options
def depth(network: str, device: str | None, psi: float, ray_chunk: int, impl: str, seeds: str, outdir: str,
          resolution: int | None, pose: str) -> None:
    """Per seed: seedNNNN.png (RGB), seedNNNN_opacity.png (8-bit), seedNNNN_depth.png (16-bit).

    Depth PNG = camera-z depth of the expected surface (sum w_k t_k / opacity) times 1000 (so 1 unit = 1000;
    the object sits near 4000 at the default radius 4), 0 where the opacity is below 0.05 (background).
    """
    seed_list, cam = parse_seeds(seeds), parse_pose(pose)
    dev = resolve_device(device)
    G = generator_at_resolution(load_generator(network, dev), resolution)
    out = ensure_outdir(outdir)
    select_backend(impl, dev)
    with click.progressbar(seed_list, label="Rendering depth") as bar:
        for seed in bar:
            z, c2w = seed_view(G, seed, cam, dev)
            img, aux = render(G, G.mapping(z, psi=psi), c2w, ray_chunk, return_aux=True)
            opacity = aux["opacity"][0, 0].float()                                    # [H, W]
            save_image(to_uint8(img)[0], out / f"seed{seed:04d}.png")
            save_image((opacity.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy(),
                       out / f"seed{seed:04d}_opacity.png")
            save_image(depth_to_uint16(aux["depth"][0, 0].float(), opacity), out / f"seed{seed:04d}_depth.png")
    click.echo(f"Wrote RGB, opacity and depth (x{DEPTH_SCALE:g}, 16-bit) PNGs for {len(seed_list)} seed(s) to '{out}'.")


@cli.command()
@common_options
@click.option("--seeds", type=str, required=True, help="Seeds, e.g. '0-7' or '1,5,9'.")
@click.option("--outdir", type=str, required=True, help="Folder for seedNNNN.ply (existing seeds are overwritten).")
@click.option("--grid", "grid_res", type=click.IntRange(min=8, max=1024), default=128, show_default=True,
              help="Density samples per side.")
@click.option("--threshold", type=float, default=10.0, show_default=True, help="Density iso-level.")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Half side of the sampled cube  [default: render_size / 2, i.e. [-1, 1]^3 for render_size 2]")
@click.option("--ascii", "ascii_ply", is_flag=True, help="Write ASCII instead of binary PLY.")
def mesh(network: str, device: str | None, psi: float, ray_chunk: int, seeds: str, outdir: str, grid_res: int,
         threshold: float, bound: float | None, ascii_ply: bool) -> None:
    """Per seed: density grid -> marching cubes -> seedNNNN.ply with vertex colours and normals."""
    seed_list = parse_seeds(seeds)
    dev = resolve_device(device)
    G = load_generator(network, dev)
    out = ensure_outdir(outdir)
    bound = float(bound if bound is not None else g_kwarg(G, "render_size", 2.0) / 2)
    z, _ = seed_latents(G, seed_list, dev)
    failed = []
    for k, seed in enumerate(seed_list):
        with torch.no_grad():
            w = G.mapping(z[k:k + 1], psi=psi)                                           # [1, w_dim]

        def field(pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rgb, sigma = G.query_field(w, pts[None])                                     # [1, N, 3], [1, N]
            return rgb[0], sigma[0]

        with click.progressbar(length=grid_res ** 3, label=f"Seed {seed}: density grid") as bar:
            try:
                m = extract_mesh(field, grid_res, threshold, bound, chunk=ray_chunk * 8, device=dev,
                                 progress=bar.update)
            except UserError as exc:
                failed.append(f"seed {seed}: {exc}")
                continue
        write_ply(out / f"seed{seed:04d}.ply", m, binary=not ascii_ply)
        click.echo(f"Seed {seed}: {len(m.vertices)} vertices, {len(m.faces)} faces -> {out / f'seed{seed:04d}.ply'}")
    if failed:
        raise UserError("No mesh was written for " + "; ".join(failed))


main = dnnlib.util.run_cli(cli)

if __name__ == "__main__":
    main()
