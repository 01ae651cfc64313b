"""Image grids and video files: uint8 conversion, contact sheets, H.264 MP4 via imageio-ffmpeg, GIF fallback.

Owns every pixel that leaves the code base as a picture: `save_image_grid` (training snapshots, generate.py strips),
`write_video` (MP4 with libx264 / yuv420p; frame sides padded with white up to a multiple of 16 so that imageio never
resizes). If ffmpeg is missing or fails, the same frames go to an animated GIF (Pillow) next to the requested path and
one line says so. Every file is written atomically: a temporary file in the same folder, then os.replace.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from dnnlib.util import UserError, atomic_write, make_temp_beside

MACRO_BLOCK = 16
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".gif")


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images -> uint8 [N, H, W, 3].

    Accepts float NCHW in [-1, 1] (G output; converted as `(x * 127.5 + 128).clamp(0, 255)`), uint8 NHWC or NCHW,
    and a single image (3 dims) of either kind.
    """
    if isinstance(images, torch.Tensor):
        if images.is_floating_point():
            images = (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        images = images.detach().cpu().numpy()
        if images.ndim == 3:
            images = images[None]
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1) if images.shape[1] in (1, 3) else images)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise TypeError(f"expected uint8 or float images, got {images.dtype}")
        images = np.clip(images * 127.5 + 128, 0, 255).astype(np.uint8)
        images = images.transpose(0, 2, 3, 1)
    elif images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return np.ascontiguousarray(images)


def grid_shape(n: int) -> tuple[int, int]:
    """A near-square (gw, gh) with gw * gh >= n, wider than tall."""
    gw = max(1, math.ceil(math.sqrt(n)))
    return gw, max(1, math.ceil(n / gw))


def make_grid(images: torch.Tensor | np.ndarray, grid: tuple[int, int] | None = None, pad: int = 0,
              background: int = 255) -> np.ndarray:
    """Tile images row by row into one uint8 [gh*H + pad*(gh-1), gw*W + pad*(gw-1), 3]; empty cells are white."""
    images = to_uint8(images)                                 # [N, H, W, 3]
    n, h, w, _ = images.shape
    gw, gh = grid if grid is not None else grid_shape(n)
    if gw * gh < n:
        raise ValueError(f"grid {gw}x{gh} holds fewer than {n} images")
    out = np.full((gh * h + pad * (gh - 1), gw * w + pad * (gw - 1), 3), background, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, gw)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[k]
    return out


def save_image(image: np.ndarray, path: str | os.PathLike, quality: int = 95) -> None:
    """Write one uint8 image ([H, W, 3], [H, W] or uint16 [H, W]) atomically; format from the extension."""
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"Cannot write '{path}': use a .png, .jpg or .jpeg file name.")
    pil = Image.fromarray(image)
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    atomic_write(path, lambda tmp: pil.save(tmp, format=fmt, **kwargs))


def save_image_grid(images: torch.Tensor | np.ndarray, path: str | os.PathLike,
                    grid: tuple[int, int] | None = None, pad: int = 0, quality: int = 95) -> np.ndarray:
    """Save images (uint8 [N, H, W, 3] or float [-1, 1] NCHW) as one grid of gw x gh cells (PNG or JPEG).

    grid=None picks a near-square layout. Returns the grid image (uint8 [H', W', 3]).
    """
    canvas = make_grid(images, grid, pad=pad)
    save_image(canvas, path, quality=quality)
    return canvas


def pad_to_multiple(frame: np.ndarray, multiple: int = MACRO_BLOCK, value: int = 255) -> np.ndarray:
    """Pad uint8 [H, W, 3] on the bottom/right with `value` so both sides are multiples of `multiple`."""
    h, w = frame.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return frame
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="constant", constant_values=value)


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[str]:
    """A temporary file next to `path` that keeps its extension (ffmpeg picks the container from it)."""
    tmp = make_temp_beside(path, suffix=f".tmp{path.suffix}")  # the umask's mode, unlike mkstemp
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ffmpeg_available() -> bool:
    """True when imageio-ffmpeg can name an ffmpeg executable."""
    try:
        import imageio_ffmpeg
        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError, OSError):
        return False


def _write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float, quality: float) -> None:
    import imageio.v2 as iio
    with _temp_beside(path) as tmp:
        writer = iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=quality,
                                pixelformat="yuv420p", macro_block_size=MACRO_BLOCK, ffmpeg_log_level="error")
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()


def _write_gif(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    pil = [Image.fromarray(f) for f in frames]
    duration = max(20, int(round(1000.0 / fps)))
    atomic_write(path, lambda tmp: pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:],
                                               duration=duration, loop=0, optimize=False))


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to replace an existing file unless `force`, and a path whose folder could not be created or written.
    Creates nothing: the writers create the folder when they write (so a refused run leaves no empty folder)."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"'{path}' already exists: pass --force to overwrite it, or choose another --out.")
    if path.is_dir():
        raise UserError(f"'{path}' is a folder: give a file name such as '{path / 'video.mp4'}'.")
    folder = path.absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())      # the root always exists
    if not existing.is_dir():
        raise UserError(f"Cannot create the folder '{path.parent}': '{existing}' is a file. Choose a writable --out.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"The folder '{existing}' is not writable: choose another --out.")
    return path


def check_video_path(path: str | os.PathLike, force: bool = False) -> Path:
    """check_writable plus a container ffmpeg can write H.264 into (.mp4, .mov, .mkv) or .gif."""
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"Cannot write a video to '{path}': end the file name in one of {', '.join(VIDEO_SUFFIXES)}.")
    return check_writable(path, force)


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 30.0, quality: float = 8.0,
                force: bool = False) -> Path:
    """Write uint8 frames [H, W, 3] as an H.264 MP4 (libx264, yuv420p), or a GIF if ffmpeg is unusable.

    Frames are padded with white to multiples of 16. Returns the path actually written (`.gif` beside `path` on the
    fallback). An existing output raises UserError unless `force`.
    """
    path = check_video_path(path, force)
    if len(frames) == 0:
        raise ValueError("write_video needs at least one frame")
    frames = [pad_to_multiple(to_uint8(f)[0]) for f in frames]
    if path.suffix.lower() == ".gif":
        _write_gif(path, frames, fps)
        return path
    reason = None if ffmpeg_available() else "no ffmpeg executable was found"
    if reason is None:
        try:
            _write_mp4(path, frames, fps, quality)
            return path
        except (OSError, RuntimeError, ValueError, BrokenPipeError) as exc:
            reason = f"ffmpeg failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''})"
    gif = check_writable(path.with_suffix(".gif"), force)
    _write_gif(gif, frames, fps)
    print(f"Video: {reason}; wrote an animated GIF to '{gif}' instead of '{path}'.")
    return gif
