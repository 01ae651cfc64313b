"""Exact ray-primitive intersections and the union ray caster (numpy; owns the geometry half of the renderer).

Rays are given as structure-of-arrays components (dx, dy, dz) of UNNORMALISED world directions whose camera-space z
component is -1, so the ray parameter t of a hit is the camera-z depth. All intersections return the ENTRY point of
the convex primitive (cameras are always outside the radius-0.95 ball that holds every object); misses are +inf.
Per-primitive culling: only the rectangle of samples covered by the projection of the primitive's oriented bounding
box is tested. Products are written out element-wise (no BLAS) so results do not depend on the CPU's BLAS kernels.
"""
from __future__ import annotations

import numpy as np

from training.synthetic.shapes import BOX, ELLIPSOID

_BOX_CORNERS = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], np.float64)


def _to_local(R: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> tuple[np.ndarray, ...]:
    """Directions in the primitive frame: d' = R^T d, component by component."""
    R = R.astype(dx.dtype)
    return (dx * R[0, 0] + dy * R[1, 0] + dz * R[2, 0],
            dx * R[0, 1] + dy * R[1, 1] + dz * R[2, 1],
            dx * R[0, 2] + dy * R[1, 2] + dz * R[2, 2])


def intersect_box(o: np.ndarray, d: tuple[np.ndarray, ...], half: np.ndarray) -> np.ndarray:
    """Slab test. o: local origin [3]; d: local direction components; half: half-extents [3]. Returns t (inf = miss)."""
    t_near, t_far = None, None
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / d[k]
            t1 = (-half[k] - o[k]) * inv
            t2 = (half[k] - o[k]) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            t_near = lo if t_near is None else np.maximum(t_near, lo)
            t_far = hi if t_far is None else np.minimum(t_far, hi)
    hit = (t_near <= t_far) & (t_near > 0)
    return np.where(hit, t_near, np.inf)


def intersect_ellipsoid(o: np.ndarray, d: tuple[np.ndarray, ...], axes: np.ndarray) -> np.ndarray:
    """Nearest root of |(o + t d) / a|^2 = 1. Returns t (inf = miss)."""
    u = [o[k] / axes[k] for k in range(3)]
    w = [d[k] * (1.0 / axes[k]) for k in range(3)]
    A = w[0] * w[0] + w[1] * w[1] + w[2] * w[2]
    B = 2.0 * (w[0] * u[0] + w[1] * u[1] + w[2] * u[2])
    C = u[0] * u[0] + u[1] * u[1] + u[2] * u[2] - 1.0
    disc = B * B - 4.0 * A * C
    with np.errstate(invalid="ignore"):
        t = (-B - np.sqrt(disc)) / (2.0 * A)
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def intersect_cylinder(o: np.ndarray, d: tuple[np.ndarray, ...], radius: float, half_len: float) -> np.ndarray:
    """Capped cylinder along local y: side entry (|y| <= half_len) or cap entry (x^2 + z^2 <= r^2), the nearer."""
    dx, dy, dz = d
    A = dx * dx + dz * dz
    B = 2.0 * (o[0] * dx + o[2] * dz)
    C = o[0] * o[0] + o[2] * o[2] - radius * radius
    disc = B * B - 4.0 * A * C
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-B - np.sqrt(disc)) / (2.0 * A)
        y_side = o[1] + t_side * dy
        side_ok = (disc >= 0) & (A > 0) & (t_side > 0) & (np.abs(y_side) <= half_len)
        cap_y = np.where(dy > 0, -half_len, half_len)
        t_cap = (cap_y - o[1]) / dy
        cx, cz = o[0] + t_cap * dx, o[2] + t_cap * dz
        cap_ok = (dy != 0) & (t_cap > 0) & (cx * cx + cz * cz <= radius * radius)
    t_side = np.where(side_ok, t_side, np.inf)
    return np.minimum(t_side, np.where(cap_ok, t_cap, np.inf))


def intersect(kind: int, o: np.ndarray, d: tuple[np.ndarray, ...], size: np.ndarray) -> np.ndarray:
    """Dispatch on the primitive kind; o, d in the primitive's local frame."""
    if kind == BOX:
        return intersect_box(o, d, size)
    if kind == ELLIPSOID:
        return intersect_ellipsoid(o, d, size)
    return intersect_cylinder(o, d, size[0], size[1])


def local_normals(kind: int, p: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Outward unit normals [M, 3] in the local frame at points p [M, 3] on (or near) the primitive surface.

    Uses the nearest-face rule shared with the density oracle: box = face of the largest |p_i| / h_i - style SDF
    component, ellipsoid = gradient p / a^2, cylinder = side or cap, whichever SDF component is larger.
    """
    n = np.zeros_like(p)
    if kind == BOX:
        q = np.abs(p) - size
        k = np.argmax(q, axis=1)
        rows = np.arange(p.shape[0])
        n[rows, k] = np.sign(p[rows, k])
    elif kind == ELLIPSOID:
        n = p / (size * size)
    else:
        radial = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2)
        cap = (np.abs(p[:, 1]) - size[1]) > (radial - size[0])
        n[:, 0] = np.where(cap, 0.0, p[:, 0])
        n[:, 2] = np.where(cap, 0.0, p[:, 2])
        n[:, 1] = np.where(cap, np.sign(p[:, 1]), 0.0)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.maximum(norm, 1e-12)


def _sample_range(coords: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    """Index range [a, b) of the sorted sample coordinates inside [lo, hi] (with a small safety margin)."""
    return int(np.searchsorted(coords, lo - 1e-3, "left")), int(np.searchsorted(coords, hi + 1e-3, "right"))


def primitive_rect(center: np.ndarray, rot: np.ndarray, size: np.ndarray, c2w: np.ndarray, focal: float,
                   resolution: int, su: np.ndarray, sv: np.ndarray) -> tuple[int, int, int, int]:
    """Sample-index rectangle (row0, row1, col0, col1) that covers the projection of the primitive's oriented box."""
    corners = center + (_BOX_CORNERS * size) @ rot.T                      # [8, 3] world
    cam = (corners - c2w[:3, 3]) @ c2w[:3, :3]                             # [8, 3] camera frame
    depth = -cam[:, 2]
    u = focal * cam[:, 0] / depth + 0.5 * resolution
    v = -focal * cam[:, 1] / depth + 0.5 * resolution
    r0, r1 = _sample_range(sv, v.min(), v.max())
    c0, c1 = _sample_range(su, u.min(), u.max())
    return r0, r1, c0, c1


def cast(arrays: dict[str, np.ndarray], c2w: np.ndarray, dirs: tuple[np.ndarray, ...], focal: float,
         resolution: int, su: np.ndarray, sv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union ray cast: nearest hit over all primitives.

    dirs: world direction components, each [S, S] (rows = v samples su/sv give their pixel coordinates).
    Returns depth t [S, S] (camera-z, +inf = background) and primitive index [S, S] int32 (-1 = background).
    """
    S0, S1 = dirs[0].shape
    t_best = np.full((S0, S1), np.inf, dirs[0].dtype)
    idx = np.full((S0, S1), -1, np.int32)
    origin = c2w[:3, 3]
    for k in range(len(arrays["kind"])):
        R, c, size = arrays["rot"][k], arrays["center"][k], arrays["size"][k]
        r0, r1, c0, c1 = primitive_rect(c, R, size, c2w, focal, resolution, su, sv)
        if r0 >= r1 or c0 >= c1:
            continue
        d_local = _to_local(R, *(comp[r0:r1, c0:c1] for comp in dirs))
        o_local = (R.T @ (origin - c)).astype(dirs[0].dtype)
        t = intersect(int(arrays["kind"][k]), o_local, d_local, size.astype(dirs[0].dtype))
        view_t, view_i = t_best[r0:r1, c0:c1], idx[r0:r1, c0:c1]
        closer = t < view_t
        view_t[closer] = t[closer]
        view_i[closer] = k
    return t_best, idx


def hit_normals(arrays: dict[str, np.ndarray], c2w: np.ndarray, dirs: tuple[np.ndarray, ...], t: np.ndarray,
                idx: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """World-space unit normals [M, 3] (float64) at the M hit samples selected by the boolean mask hit [S, S]."""
    hk = idx[hit]                                                                                 # [M]
    tk = t[hit].astype(np.float64)
    p = c2w[:3, 3] + np.stack([comp[hit].astype(np.float64) for comp in dirs], 1) * tk[:, None]   # [M, 3] world
    normals = np.zeros_like(p)
    for k in np.unique(hk):
        sel = hk == k
        R = arrays["rot"][k]
        local = (p[sel] - arrays["center"][k]) @ R                                                # [m, 3] local
        normals[sel] = local_normals(int(arrays["kind"][k]), local, arrays["size"][k]) @ R.T
    return normals
