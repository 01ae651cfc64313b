"""Meshes from radiance fields: a density grid from any field function, marching cubes, vertex colours, PLY files.

A field function maps points [N, 3] (torch, world units) to (rgb [N, 3] in [0, 1], sigma [N]); the Generator's
`query_field(w, pts)` is one (see `generate.py mesh`), an analytic shape is another (tests). The grid samples the cube
[-bound, bound]^3 at cell corners and is padded by one empty layer on every side, so a shape that touches the cube
still gives a closed surface (cut flat at the cube's faces).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from dnnlib.util import UserError, atomic_write_bytes

FieldFn = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class Mesh:
    """A triangle mesh: vertices [V, 3] float32, faces [F, 3] int32 (counter-clockwise seen from outside),
    normals [V, 3] float32 (outward), colors [V, 3] uint8 (may be None)."""
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: np.ndarray | None = None


def grid_points(resolution: int, bound: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Cell-corner coordinates of an R^3 grid over [-bound, bound]^3, indexed [i, j, k] -> (x_i, y_j, z_k): [R, R, R, 3]."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)


def _chunks(n: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n, chunk):
        yield slice(start, min(n, start + chunk))


@torch.no_grad()
def query_in_chunks(field_fn: FieldFn, pts: torch.Tensor, chunk: int = 65536,
                    progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate `field_fn` on pts [N, 3] in pieces of `chunk` points. Returns rgb [N, 3] and sigma [N] on the CPU."""
    rgbs, sigmas = [], []
    for sl in _chunks(pts.shape[0], chunk):
        rgb, sigma = field_fn(pts[sl])
        rgbs.append(rgb.float().cpu())
        sigmas.append(sigma.float().reshape(-1).cpu())
        if progress is not None:
            progress(sl.stop - sl.start)
    return torch.cat(rgbs), torch.cat(sigmas)


def density_grid(field_fn: FieldFn, resolution: int = 128, bound: float = 1.0, chunk: int = 65536,
                 device: torch.device | str = "cpu", progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Densities on the R^3 cell corners of [-bound, bound]^3: float32 [R, R, R] (index order x, y, z)."""
    pts = grid_points(resolution, bound, device).reshape(-1, 3)          # [R^3, 3]
    _, sigma = query_in_chunks(field_fn, pts, chunk, progress)
    return sigma.reshape(resolution, resolution, resolution).numpy()


def marching_cubes(sigma: np.ndarray, threshold: float, bound: float = 1.0) -> Mesh:
    """Iso-surface sigma = threshold of a grid over [-bound, bound]^3 (inside = denser). Colours are left empty."""
    from skimage import measure

    res = sigma.shape[0]
    lo, hi = float(np.nanmin(sigma)), float(np.nanmax(sigma))
    if not hi > threshold:
        raise UserError(f"No density above the threshold {threshold:g} (the field's densities span {lo:.3g} .. {hi:.3g}): "
                        f"lower --threshold.")
    empty = min(lo, threshold) - 1.0
    padded = np.pad(np.nan_to_num(sigma, nan=empty), 1, mode="constant", constant_values=empty)  # [R+2]^3
    spacing = 2.0 * bound / (res - 1)
    verts, faces, normals, _ = measure.marching_cubes(padded, level=threshold, spacing=(spacing,) * 3,
                                                      gradient_direction="descent", allow_degenerate=False)
    verts = np.clip(verts - bound - spacing, -bound, bound)                # undo the padding layer: [V, 3]
    # With 'descent' skimage's normals point to lower density (outward) but its triangles wind the other way:
    # reverse them so that the right-hand rule agrees with the normals (positive signed volume).
    faces = np.ascontiguousarray(faces[:, ::-1])
    return Mesh(vertices=verts.astype(np.float32), faces=faces.astype(np.int32), normals=normals.astype(np.float32))


def colorize(mesh: Mesh, field_fn: FieldFn, chunk: int = 65536, device: torch.device | str = "cpu") -> Mesh:
    """Vertex colours from the field's rgb at each vertex (uint8 [V, 3])."""
    pts = torch.from_numpy(mesh.vertices).to(device)
    rgb, _ = query_in_chunks(field_fn, pts, chunk)
    mesh.colors = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    return mesh


def extract_mesh(field_fn: FieldFn, resolution: int = 128, threshold: float = 10.0, bound: float = 1.0,
                 chunk: int = 65536, device: torch.device | str = "cpu",
                 progress: Callable[[int], None] | None = None) -> Mesh:
    """Density grid -> marching cubes -> coloured mesh. Raises UserError when nothing exceeds the threshold."""
    if resolution < 2:
        raise UserError(f"The grid needs at least 2 samples per side (got {resolution}).")
    sigma = density_grid(field_fn, resolution, bound, chunk, device, progress)
    return colorize(marching_cubes(sigma, threshold, bound), field_fn, chunk, device)


def ply_bytes(mesh: Mesh, binary: bool = True) -> bytes:
    """PLY 1.0 (binary little-endian or ASCII): x y z nx ny nz [red green blue] per vertex, int triangles."""
    v = len(mesh.vertices)
    colors = mesh.colors is not None
    props = ["float x", "float y", "float z", "float nx", "float ny", "float nz"]
    props += ["uchar red", "uchar green", "uchar blue"] if colors else []
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "comment written by hypernerfgan",
              f"element vertex {v}", *(f"property {p}" for p in props),
              f"element face {len(mesh.faces)}", "property list uchar int vertex_indices", "end_header"]
    head = ("\n".join(header) + "\n").encode("ascii")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")] if colors else []
    vert = np.zeros(v, dtype=fields)
    for k, name in enumerate("xyz"):
        vert[name] = mesh.vertices[:, k]
        vert["n" + name] = mesh.normals[:, k]
    if colors:
        for k, name in enumerate(("red", "green", "blue")):
            vert[name] = mesh.colors[:, k]
    face = np.zeros(len(mesh.faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face["n"], face["idx"] = 3, mesh.faces
    if binary:
        return head + vert.tobytes() + face.tobytes()
    lines = [" ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in row.tolist()) for row in vert]
    lines += [f"3 {a} {b} {c}" for a, b, c in mesh.faces.tolist()]
    return head + ("\n".join(lines) + "\n").encode("ascii")


def write_ply(path: str | os.PathLike, mesh: Mesh, binary: bool = True) -> None:
    """Write `mesh` to a .ply file atomically."""
    atomic_write_bytes(path, ply_bytes(mesh, binary))


def read_ply(path: str | os.PathLike) -> Mesh:
    """Read a PLY written by `write_ply` (either format) back into a Mesh."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    colors = any(h == "property uchar red" for h in header)
    if "binary_little_endian" in header[1]:
        fields = [(n, "<f4") for n in ("x", "y", "z", "nx", "ny", "nz")] + ([(c, "u1") for c in "rgb"] if colors else [])
        vert = np.frombuffer(data, dtype=fields, count=nv, offset=end)
        face = np.frombuffer(data, dtype=[("n", "u1"), ("idx", "<i4", (3,))], count=nf,
                             offset=end + vert.nbytes)
        xyzn = np.stack([vert[n] for n in ("x", "y", "z", "nx", "ny", "nz")], 1)
        rgb = np.stack([vert[c] for c in "rgb"], 1) if colors else None
        faces = face["idx"].astype(np.int32)
    else:
        rows = data[end:].decode("ascii").split("\n")
        vals = np.array([r.split() for r in rows[:nv]], dtype=np.float64).reshape(nv, -1)
        xyzn, rgb = vals[:, :6], vals[:, 6:9].astype(np.uint8) if colors else None
        faces = np.array([r.split()[1:4] for r in rows[nv:nv + nf]], dtype=np.int32).reshape(nf, 3)
    return Mesh(vertices=xyzn[:, :3].astype(np.float32), faces=faces, normals=xyzn[:, 3:6].astype(np.float32),
                colors=rgb)
