"""Procedural shape families as unions of oriented convex primitives (owns `Primitive`, `ObjectSpec`, `make_object`).

Object frame = world frame of the camera convention: z up, the object centred at the origin, mirror-symmetric about
the x-z plane (y -> -y), bounding-sphere radius rho ~ U[0.80, 0.92] after normalisation.
Cars and planes point their front along +x; chairs face +x (the back is at -x).

Primitive sizes: box = half-extents (hx, hy, hz); ellipsoid = semi-axes (ax, ay, az); cylinder (axis = local y) =
(radius, half_length, radius). `rot` maps local to world coordinates (its columns are the local axes).
Colours (`albedo`) are display (sRGB-encoded) values in [0, 1]; the renderer converts them to linear for shading.
"""
from __future__ import annotations

import colorsys
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FAMILIES = ("cars", "planes", "chairs", "carla")
KINDS = ("box", "ellipsoid", "cylinder")
BOX, ELLIPSOID, CYLINDER = 0, 1, 2
RADIUS_RANGE = (0.80, 0.92)
NUM_CARLA_TEMPLATES = 16

_FAMILY_SALT = {"cars": 101, "planes": 202, "chairs": 303, "carla": 404}
_CARLA_TEMPLATE_SALT = 4040

CAR_PARTS = {1: "body", 2: "cabin", 3: "glass", 4: "tyre", 5: "rim", 6: "light", 7: "bumper", 8: "spoiler",
             9: "bed", 10: "mirror", 11: "grille", 12: "plate", 13: "roof"}
PLANE_PARTS = {1: "fuselage", 2: "wing", 3: "tail", 4: "fin", 5: "engine", 6: "canopy"}
CHAIR_PARTS = {1: "seat", 2: "back", 3: "leg", 4: "stretcher", 5: "armrest", 6: "pedestal", 7: "base", 8: "caster"}
PART_NAMES = {"cars": CAR_PARTS, "planes": PLANE_PARTS, "chairs": CHAIR_PARTS, "carla": CAR_PARTS}
_PAINTED_CAR_PARTS = (1, 2, 8, 9, 10, 13)

GLASS = (0.12, 0.14, 0.18)
TYRE = (0.08, 0.08, 0.08)
RIM = (0.7, 0.7, 0.7)


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(x), 7) for x in values]


@dataclass
class Primitive:
    """One oriented convex primitive. center [3], rot [3, 3] (local -> world), size [3], albedo [3] (sRGB)."""
    kind: int
    center: np.ndarray
    rot: np.ndarray
    size: np.ndarray
    albedo: np.ndarray
    part: int

    def to_json(self) -> dict[str, Any]:
        """JSON record with numbers rounded to 1e-7 (far below the float32 precision of the renderer)."""
        return {"kind": KINDS[self.kind], "center": _rounded(self.center), "rot": [_rounded(r) for r in self.rot],
                "size": _rounded(self.size), "albedo": _rounded(self.albedo), "part": int(self.part)}


@dataclass
class ObjectSpec:
    """A shape instance: its primitives plus metadata (object_id = image index, template_id = -1 unless carla)."""
    family: str
    object_id: int
    template_id: int
    subtype: str
    primitives: list[Primitive]
    radius: float
    params: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """Packed float64 arrays: kind [K], center [K,3], rot [K,3,3], size [K,3], albedo [K,3], part [K]."""
        p = self.primitives
        return {"kind": np.array([q.kind for q in p], np.int64), "center": np.stack([q.center for q in p]),
                "rot": np.stack([q.rot for q in p]), "size": np.stack([q.size for q in p]),
                "albedo": np.stack([q.albedo for q in p]), "part": np.array([q.part for q in p], np.int64)}

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "object_id": self.object_id, "template_id": self.template_id,
                "subtype": self.subtype, "radius": self.radius, "part_names": PART_NAMES[self.family],
                "params": self.params, "primitives": [q.to_json() for q in self.primitives]}

    def to_json_str(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))


# ---------------------------------------------------------------------------------------------------------------------
# Geometry helpers.

def rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


AXIS_Y_TO_Z = rot_x(90.0)   # cylinders standing upright
AXIS_Y_TO_X = rot_z(-90.0)  # cylinders lying along x
_MIRROR = np.diag([1.0, -1.0, 1.0])


def hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def aabb_half_extent(prim: Primitive) -> np.ndarray:
    """World-axis half extents [3] of the primitive's exact axis-aligned bounding box."""
    R, s = prim.rot, prim.size
    if prim.kind == BOX:
        return np.abs(R) @ s
    if prim.kind == ELLIPSOID:
        return np.sqrt((R ** 2) @ (s ** 2))
    radius, half_len = s[0], s[1]
    return radius * np.sqrt(R[:, 0] ** 2 + R[:, 2] ** 2) + half_len * np.abs(R[:, 1])


def surface_points(prim: Primitive, n: int = 256) -> np.ndarray:
    """Deterministic points [M, 3] on the primitive surface incl. every extreme point of a box and cylinder rim."""
    s = prim.size
    if prim.kind == BOX:
        corners = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], np.float64)
        local = corners * s
    elif prim.kind == ELLIPSOID:
        k = np.arange(n) + 0.5
        phi = np.arccos(1.0 - 2.0 * k / n)
        theta = math.pi * (1.0 + 5.0 ** 0.5) * k
        unit = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
        unit = np.concatenate([unit, np.eye(3), -np.eye(3)])
        local = unit * s
    else:
        ang = np.linspace(0.0, 2.0 * math.pi, n // 2, endpoint=False)
        ring = np.stack([np.cos(ang) * s[0], np.zeros_like(ang), np.sin(ang) * s[0]], 1)
        local = np.concatenate([ring + [0.0, s[1], 0.0], ring - [0.0, s[1], 0.0]])
    return prim.center + local @ prim.rot.T


def max_extent(primitives: list[Primitive], n: int = 1024) -> float:
    """Largest distance from the origin of any surface point (dense sampling for curved primitives)."""
    return float(max(np.linalg.norm(surface_points(p, n), axis=1).max() for p in primitives))


class _Builder:
    """Collects primitives; `mirror=True` adds the mirror image about the x-z plane as well."""

    def __init__(self) -> None:
        self.prims: list[Primitive] = []

    def add(self, kind: int, center: Any, size: Any, albedo: Any, part: int, rot: np.ndarray | None = None,
            mirror: bool = False) -> None:
        c = np.asarray(center, np.float64)
        R = np.eye(3) if rot is None else np.asarray(rot, np.float64)
        prim = Primitive(kind, c, R, np.asarray(size, np.float64), np.asarray(albedo, np.float64), part)
        self.prims.append(prim)
        if mirror:
            self.prims.append(Primitive(kind, _MIRROR @ c, _MIRROR @ R @ _MIRROR, prim.size.copy(),
                                        prim.albedo.copy(), part))

    def box(self, center: Any, half: Any, albedo: Any, part: int, **kw: Any) -> None:
        self.add(BOX, center, half, albedo, part, **kw)

    def ellipsoid(self, center: Any, axes: Any, albedo: Any, part: int, **kw: Any) -> None:
        self.add(ELLIPSOID, center, axes, albedo, part, **kw)

    def cylinder(self, center: Any, radius: float, half_len: float, albedo: Any, part: int, **kw: Any) -> None:
        self.add(CYLINDER, center, (radius, half_len, radius), albedo, part, **kw)


def normalize(prims: list[Primitive], radius: float) -> list[Primitive]:
    """Translate the AABB centre to the origin and scale so the bounding-sphere radius equals `radius`."""
    lo = np.min([p.center - aabb_half_extent(p) for p in prims], axis=0)
    hi = np.max([p.center + aabb_half_extent(p) for p in prims], axis=0)
    mid = 0.5 * (lo + hi)
    mid[1] = 0.0  # symmetric shapes: keep the mirror plane exactly at y = 0
    moved = [Primitive(p.kind, p.center - mid, p.rot, p.size, p.albedo, p.part) for p in prims]
    scale = radius / max_extent(moved)
    return [Primitive(p.kind, p.center * scale, p.rot, p.size * scale, p.albedo, p.part) for p in moved]


# ---------------------------------------------------------------------------------------------------------------------
# Cars.

CAR_SUBTYPES = ("sedan", "hatch", "suv", "pickup", "van")


def _car_dims(rng: np.random.Generator, subtype: str) -> dict[str, float]:
    """Body, wheel and cabin dimensions for a car sub-type (uniform ranges)."""
    d = {"L": rng.uniform(1.5, 2.0), "W": rng.uniform(0.65, 0.9), "H": rng.uniform(0.25, 0.4),
         "r": rng.uniform(0.13, 0.2), "hw": rng.uniform(0.05, 0.08), "wb": rng.uniform(0.55, 0.7)}
    d["cl"], d["co"], d["ch"] = rng.uniform(0.35, 0.6), rng.uniform(-0.15, 0.1), rng.uniform(0.18, 0.3)
    if subtype == "hatch":
        d["L"], d["cl"] = rng.uniform(1.5, 1.75), rng.uniform(0.45, 0.6)
        d["co"] = -0.5 + 0.5 * d["cl"] + rng.uniform(0.0, 0.05)
    elif subtype == "suv":
        d["H"], d["r"], d["cl"] = rng.uniform(0.32, 0.4), rng.uniform(0.16, 0.2), rng.uniform(0.5, 0.62)
        d["co"], d["ch"] = -0.5 + 0.5 * d["cl"] + rng.uniform(0.03, 0.08), rng.uniform(0.22, 0.3)
    elif subtype == "pickup":
        d["cl"] = rng.uniform(0.28, 0.38)
        d["co"] = 0.5 - rng.uniform(0.25, 0.32) - 0.5 * d["cl"]
    elif subtype == "van":
        d["H"], d["cl"], d["ch"] = rng.uniform(0.3, 0.4), rng.uniform(0.72, 0.85), rng.uniform(0.26, 0.36)
        d["co"] = -0.5 + 0.5 * d["cl"] + rng.uniform(0.0, 0.03)
    d["clear"] = d["r"] * rng.uniform(0.45, 0.7)
    d["cw"] = d["W"] * rng.uniform(0.8, 0.92)
    return {k: float(v) for k, v in d.items()}


def _car_body(b: _Builder, d: dict[str, float], paint: Any, rng: np.random.Generator, subtype: str) -> None:
    """Body box, cabin (glass box + roof, glass half-ellipsoid, or painted box with a window band) and wheels."""
    L, W, H, r, hw = d["L"], d["W"], d["H"], d["r"], d["hw"]
    top = d["clear"] + H
    b.box((0.0, 0.0, d["clear"] + 0.5 * H), (0.5 * L, 0.5 * W, 0.5 * H), paint, 1)
    cl, cx, ch, cw = d["cl"] * L, d["co"] * L, d["ch"], d["cw"]
    style = "ellipsoid" if subtype == "sedan" and rng.random() < 0.4 else ("band" if subtype in ("suv", "van")
                                                                            else "glass")
    if style == "ellipsoid":
        b.ellipsoid((cx, 0.0, top), (0.5 * cl, 0.5 * cw, min(ch, 0.95 * H)), GLASS, 3)
    elif style == "glass":
        b.box((cx, 0.0, top + 0.5 * ch), (0.5 * cl, 0.5 * cw, 0.5 * ch), GLASS, 3)
        b.box((cx, 0.0, top + ch), (0.5 * cl + 0.01, 0.5 * cw + 0.01, 0.015), paint, 13)
    else:
        b.box((cx, 0.0, top + 0.5 * ch), (0.5 * cl, 0.5 * cw, 0.5 * ch), paint, 2)
        b.box((cx, 0.0, top + 0.62 * ch), (0.5 * cl + 0.006, 0.5 * cw + 0.006, 0.2 * ch), GLASS, 3)
    d["style_" + style] = 1.0
    wy = 0.5 * W - hw * rng.uniform(0.3, 0.8)
    for wx in (0.5 * d["wb"] * L, -0.5 * d["wb"] * L):
        b.cylinder((wx, wy, r), r, hw, TYRE, 4, mirror=True)
        b.cylinder((wx, wy + 0.006, r), 0.6 * r, hw, RIM, 5, mirror=True)


def _car_extras(b: _Builder, d: dict[str, float], paint: Any, rng: np.random.Generator, subtype: str,
                detail: bool) -> None:
    """Open pickup bed, optional spoiler, bumpers and lights; CARLA templates add mirrors, grille and plates."""
    L, W, H = d["L"], d["W"], d["H"]
    top, front, back = d["clear"] + H, 0.5 * L, -0.5 * L
    if subtype == "pickup":
        bed_len, bh, t = d["co"] * L - 0.5 * d["cl"] * L - back, rng.uniform(0.1, 0.16), rng.uniform(0.02, 0.03)
        b.box((back + 0.5 * bed_len, 0.5 * W - 0.5 * t, top + 0.5 * bh), (0.5 * bed_len, 0.5 * t, 0.5 * bh), paint, 9,
              mirror=True)
        b.box((back + 0.5 * t, 0.0, top + 0.5 * bh), (0.5 * t, 0.5 * W - t, 0.5 * bh), paint, 9)
    if subtype in ("sedan", "hatch") and rng.random() < 0.3:
        b.box((back + 0.06, 0.0, top + 0.07), (0.045, 0.45 * W, 0.012), paint, 8)
        b.box((back + 0.06, 0.3 * W, top + 0.035), (0.015, 0.015, 0.035), paint, 8, mirror=True)
    if detail or rng.random() < 0.6:
        bump = (0.2, 0.2, 0.21)
        for x in (front + 0.02, back - 0.02):
            b.box((x, 0.0, d["clear"] + 0.2 * H), (0.03, 0.49 * W, 0.15 * H), bump, 7)
    if detail or rng.random() < 0.7:
        lz = d["clear"] + 0.72 * H
        b.box((front + 0.004, 0.34 * W, lz), (0.01, 0.07, 0.025), (0.95, 0.93, 0.8), 6, mirror=True)
        b.box((back - 0.004, 0.36 * W, lz), (0.01, 0.06, 0.025), (0.75, 0.05, 0.05), 6, mirror=True)
    if detail:
        mx = d["co"] * L + 0.5 * d["cl"] * L - 0.03
        b.box((mx, 0.5 * d["cw"] + 0.045, top + 0.05), (0.02, 0.04, 0.025), paint, 10, mirror=True)
        b.box((front + 0.006, 0.0, d["clear"] + 0.55 * H), (0.01, 0.2 * W, 0.12 * H), (0.1, 0.1, 0.11), 11)
        for x in (front + 0.052, back - 0.052):
            b.box((x, 0.0, d["clear"] + 0.22 * H), (0.005, 0.09, 0.03), (0.9, 0.9, 0.88), 12)


def car_paint(rng: np.random.Generator) -> tuple[float, float, float]:
    """Body colour: HSV h ~ U[0,1), s ~ U[.2,.9], v ~ U[.25,.95]."""
    return hsv(rng.uniform(0.0, 1.0), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95))


def _make_car(rng: np.random.Generator, detail: bool = False) -> tuple[list[Primitive], str, dict[str, float]]:
    subtype = str(rng.choice(CAR_SUBTYPES, p=[0.3, 0.2, 0.2, 0.15, 0.15]))
    d = _car_dims(rng, subtype)
    paint = car_paint(rng)
    b = _Builder()
    _car_body(b, d, paint, rng, subtype)
    _car_extras(b, d, paint, rng, subtype, detail)
    return b.prims, subtype, d


# ---------------------------------------------------------------------------------------------------------------------
# Planes.

def _wing(b: _Builder, root: np.ndarray, semispan: float, chord: float, thick: float, sweep: float, dihedral: float,
          taper: float | None, albedo: Any, part: int) -> None:
    """A mirrored wing pair from `root` (at y = 0) along the swept, dihedralled span axis; optional taper."""
    R = rot_z(sweep) @ rot_x(dihedral)
    axis = R[:, 1]
    if taper is None:
        b.box(root + axis * (0.5 * semispan), (0.5 * chord, 0.5 * semispan, 0.5 * thick), albedo, part, rot=R,
              mirror=True)
        return
    inner, outer = 0.5 * semispan, 0.52 * semispan
    b.box(root + axis * (0.5 * inner), (0.5 * chord, 0.5 * inner, 0.5 * thick), albedo, part, rot=R, mirror=True)
    shift = R[:, 0] * (0.5 * chord * (1.0 - taper) * 0.5)
    b.box(root + axis * (semispan - 0.5 * outer) + shift, (0.5 * chord * taper, 0.5 * outer, 0.5 * thick), albedo,
          part, rot=R, mirror=True)


def _make_plane(rng: np.random.Generator) -> tuple[list[Primitive], str, dict[str, float]]:
    p = {"Lf": rng.uniform(1.5, 2.0), "rf": rng.uniform(0.08, 0.16), "span": rng.uniform(1.3, 2.0),
         "chord": rng.uniform(0.2, 0.4), "thick": rng.uniform(0.02, 0.04), "sweep": rng.uniform(0.0, 35.0),
         "dihedral": rng.uniform(-3.0, 9.0), "mount": float(rng.integers(3)), "wx": rng.uniform(-0.1, 0.12),
         "taper": rng.uniform(0.35, 0.7) if rng.random() < 0.5 else 0.0, "engines": float(rng.choice([0, 2, 4])),
         "ttail": float(rng.random() < 0.25), "tail_span": rng.uniform(0.32, 0.5), "fin_h": rng.uniform(0.2, 0.35)}
    base = hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.35) * (rng.random() < 0.5), rng.uniform(0.6, 0.95))
    accent = hsv(rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.9))
    wing_col = tuple(np.clip(np.asarray(base) * rng.uniform(0.9, 1.0), 0, 1))
    Lf, rf, th = p["Lf"], p["rf"], p["thick"]
    b = _Builder()
    b.ellipsoid((0.0, 0.0, 0.0), (0.5 * Lf, rf, rf * rng.uniform(0.9, 1.1)), base, 1)
    if rng.random() < 0.5:
        b.ellipsoid((0.3 * Lf, 0.0, 0.55 * rf), (0.12 * Lf, 0.55 * rf, 0.5 * rf), GLASS, 6)
    root = np.array([p["wx"] * Lf, 0.0, (p["mount"] - 1.0) * 0.6 * rf])
    _wing(b, root, 0.5 * p["span"], p["chord"], th, p["sweep"], p["dihedral"], p["taper"] or None, wing_col, 2)
    fin_chord, fin_sweep = rng.uniform(0.15, 0.28), rng.uniform(15.0, 45.0)
    tail_x = -0.5 * Lf + 0.6 * fin_chord
    fin_rot = rot_y(-fin_sweep)
    b.box(np.array([tail_x, 0.0, 0.5 * rf]) + fin_rot[:, 2] * (0.5 * p["fin_h"]),
          (0.5 * fin_chord, 0.5 * th, 0.5 * p["fin_h"]), accent, 4, rot=fin_rot)
    tail_root = np.array([tail_x, 0.0, 0.2 * rf])
    if p["ttail"]:
        tail_root = np.array([tail_x, 0.0, 0.5 * rf]) + fin_rot[:, 2] * (0.97 * p["fin_h"])
    _wing(b, tail_root, 0.5 * p["tail_span"] * p["span"], rng.uniform(0.12, 0.2), th, p["sweep"] * 0.8 + 5.0,
          p["dihedral"] * 0.5, None, accent, 3)
    _engines(b, rng, p, root, wing_col, accent)
    subtype = "jet" if p["sweep"] > 18 else "prop"
    return b.prims, subtype, {k: float(v) for k, v in p.items()}


def _engines(b: _Builder, rng: np.random.Generator, p: dict[str, float], root: np.ndarray, wing_col: Any,
             accent: Any) -> None:
    """0, 2 or 4 engine nacelles (cylinders along x) hung under the wings."""
    R = rot_z(p["sweep"]) @ rot_x(p["dihedral"])
    er, el = rng.uniform(0.04, 0.07), rng.uniform(0.1, 0.18)
    col = accent if rng.random() < 0.3 else wing_col
    fracs = {0: [], 2: [rng.uniform(0.3, 0.45)], 4: [0.28, 0.55]}[int(p["engines"])]
    for frac in fracs:
        pos = root + R[:, 1] * (frac * 0.5 * p["span"])
        b.cylinder(pos + np.array([0.1 * p["chord"], 0.0, -0.5 * p["thick"] - 0.8 * er]), er, el, col, 5,
                   rot=AXIS_Y_TO_X, mirror=True)


# ---------------------------------------------------------------------------------------------------------------------
# Chairs.

def _chair_colours(rng: np.random.Generator) -> tuple[tuple, tuple]:
    """(upholstery/seat colour, frame colour): wood browns, black, grey or saturated fabric."""
    kind = rng.choice(["wood", "black", "grey", "fabric"], p=[0.4, 0.2, 0.15, 0.25])
    wood = hsv(rng.uniform(0.02, 0.12), rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.65))
    black = hsv(0.0, 0.0, rng.uniform(0.05, 0.15))
    grey = hsv(0.0, rng.uniform(0.0, 0.08), rng.uniform(0.3, 0.7))
    fabric = hsv(rng.uniform(0, 1), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.85))
    seat = {"wood": wood, "black": black, "grey": grey, "fabric": fabric}[str(kind)]
    frame = seat if kind == "wood" or rng.random() < 0.4 else (black if rng.random() < 0.6 else grey)
    return seat, frame


def _chair_back(b: _Builder, rng: np.random.Generator, p: dict[str, float], seat_col: Any, frame_col: Any) -> str:
    """Back as a solid panel, 3-5 vertical slats with gaps, or an open frame with top rail; tilted about y."""
    w, d, hb, top = p["w"], p["d"], p["hb"], p["seat_top"]
    R = rot_y(-p["tilt"])
    t = rng.uniform(0.035, 0.07)
    pivot = np.array([-0.5 * d + 0.5 * t, 0.0, top])
    kind = str(rng.choice(["panel", "slats", "frame"], p=[0.45, 0.3, 0.25]))

    def at(x: float, y: float, z: float) -> np.ndarray:
        return pivot + R @ np.array([x, y, z])  # back frame -> object frame

    if kind == "panel":
        b.box(at(0.0, 0.0, 0.5 * hb), (0.5 * t, 0.5 * w, 0.5 * hb), seat_col, 2, rot=R)
        return kind
    post, rail = rng.uniform(0.025, 0.045), rng.uniform(0.05, 0.12)
    b.box(at(0.0, 0.5 * w - post, 0.5 * hb), (0.5 * t, post, 0.5 * hb), frame_col, 2, rot=R, mirror=True)
    b.box(at(0.0, 0.0, hb - 0.5 * rail), (0.5 * t, 0.5 * w - 2 * post, 0.5 * rail), seat_col, 2, rot=R)
    inner = 0.5 * w - 2.0 * post
    if kind == "slats":
        n = int(rng.integers(3, 6))
        half = min(rng.uniform(0.25, 0.4) * inner / n * 2.0, 0.06)
        for y in np.linspace(-inner, inner, n + 2)[1:-1]:
            if y >= -1e-9:
                b.box(at(0.0, y, 0.5 * (hb - rail)), (0.4 * t, half, 0.5 * (hb - rail)), frame_col, 2, rot=R,
                      mirror=y > 1e-9)
    elif rng.random() < 0.5:
        b.box(at(0.0, 0.0, 0.45 * hb), (0.4 * t, inner, 0.5 * rail * 0.6), seat_col, 2, rot=R)
    return kind


def _chair_legs(b: _Builder, rng: np.random.Generator, p: dict[str, float], seat_col: Any, frame_col: Any) -> str:
    """Four thin legs (boxes or cylinders, optional stretchers), an office pedestal with a 5-star base, or a block."""
    w, d, floor, bottom = p["w"], p["d"], p["floor"], p["seat_top"] - p["t"]
    kind = str(rng.choice(["legs", "office", "solid"], p=[0.65, 0.22, 0.13]))
    if kind == "legs":
        ht, h = rng.uniform(0.02, 0.05), bottom - floor
        ix, iy, round_legs = 0.5 * d - ht - rng.uniform(0, 0.05), 0.5 * w - ht - rng.uniform(0, 0.05), rng.random()
        for x in (ix, -ix):
            if round_legs < 0.4:
                b.cylinder((x, iy, floor + 0.5 * h), ht, 0.5 * h, frame_col, 3, rot=AXIS_Y_TO_Z, mirror=True)
            else:
                b.box((x, iy, floor + 0.5 * h), (ht, ht, 0.5 * h), frame_col, 3, mirror=True)
        if rng.random() < 0.4:
            st, sz = 0.6 * ht, floor + rng.uniform(0.15, 0.35) * h
            b.box((0.0, iy, sz), (ix, st, st), frame_col, 4, mirror=True)
            b.box((ix, 0.0, sz + 0.05), (st, iy, st), frame_col, 4)
    elif kind == "office":
        hub_z = floor + rng.uniform(0.06, 0.1)
        b.cylinder((0.0, 0.0, 0.5 * (hub_z + bottom)), rng.uniform(0.03, 0.05), 0.5 * (bottom - hub_z), frame_col, 6,
                   rot=AXIS_Y_TO_Z)
        arm, ht = rng.uniform(0.32, 0.45), rng.uniform(0.02, 0.035)
        for k, ang in enumerate((0.0, 72.0, 144.0)):
            R = rot_z(ang)
            b.box(R @ np.array([0.5 * arm, 0.0, hub_z]), (0.5 * arm, ht, ht), frame_col, 7, rot=R, mirror=k > 0)
            b.ellipsoid(R @ np.array([arm, 0.0, floor + 0.03]), (0.035, 0.03, 0.03), (0.1, 0.1, 0.1), 8,
                        mirror=k > 0)
    else:
        b.box((0.0, 0.0, 0.5 * (floor + bottom)), (0.5 * d * 0.9, 0.5 * w * 0.9, 0.5 * (bottom - floor)), seat_col, 7)
    return kind


def _make_chair(rng: np.random.Generator) -> tuple[list[Primitive], str, dict[str, float]]:
    p = {"w": rng.uniform(0.7, 1.0), "d": rng.uniform(0.7, 1.0), "t": rng.uniform(0.05, 0.12),
         "height": rng.uniform(0.7, 0.95), "hb": rng.uniform(0.6, 1.0), "tilt": rng.uniform(0.0, 15.0),
         "floor": -0.9}
    p["seat_top"] = p["floor"] + p["height"]
    seat_col, frame_col = _chair_colours(rng)
    b = _Builder()
    b.box((0.0, 0.0, p["seat_top"] - 0.5 * p["t"]), (0.5 * p["d"], 0.5 * p["w"], 0.5 * p["t"]), seat_col, 1)
    back = _chair_back(b, rng, p, seat_col, frame_col)
    legs = _chair_legs(b, rng, p, seat_col, frame_col)
    if rng.random() < (0.7 if legs == "solid" else 0.3):
        ah, at = rng.uniform(0.18, 0.3), rng.uniform(0.03, 0.06)
        ay = 0.5 * p["w"] - at
        b.box((0.0, ay, p["seat_top"] + ah), (0.45 * p["d"], at, 0.025), frame_col, 5, mirror=True)
        b.box((0.35 * p["d"], ay, p["seat_top"] + 0.5 * ah), (0.02, 0.02, 0.5 * ah), frame_col, 5, mirror=True)
    return b.prims, f"{legs}-{back}", {k: float(v) for k, v in p.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Public entry points.

def family_rng(family: str, seed: int, idx: int) -> np.random.Generator:
    """Per-image shape RNG: np.random.default_rng([seed, idx, family salt]) (independent of worker count)."""
    return np.random.default_rng([int(seed), int(idx), _FAMILY_SALT[family]])


@functools.lru_cache(maxsize=NUM_CARLA_TEMPLATES)
def carla_template(template_id: int) -> ObjectSpec:
    """One of the 16 fixed CARLA-like car templates (fixed seeds, extra detail parts), normalised."""
    rng = np.random.default_rng([_CARLA_TEMPLATE_SALT, int(template_id)])
    prims, subtype, params = _make_car(rng, detail=True)
    radius = float(rng.uniform(*RADIUS_RANGE))
    return ObjectSpec("carla", -1, int(template_id), subtype, normalize(prims, radius), radius, params)


def make_object(family: str, seed: int, idx: int) -> ObjectSpec:
    """The shape shown in image `idx` of the (family, seed) dataset. Deterministic in (family, seed, idx)."""
    if family not in FAMILIES:
        from dnnlib.util import UserError
        raise UserError(f"Unknown synthetic family '{family}': choose one of {', '.join(FAMILIES)}.")
    rng = family_rng(family, seed, idx)
    if family == "carla":
        tmpl = carla_template(int(rng.integers(NUM_CARLA_TEMPLATES)))
        paint = np.asarray(car_paint(rng), np.float64)
        prims = [Primitive(p.kind, p.center, p.rot, p.size, paint if p.part in _PAINTED_CAR_PARTS else p.albedo,
                           p.part) for p in tmpl.primitives]
        return ObjectSpec(family, int(idx), tmpl.template_id, tmpl.subtype, prims, tmpl.radius,
                          dict(tmpl.params, paint=[float(x) for x in paint]))
    build = {"cars": _make_car, "planes": _make_plane, "chairs": _make_chair}[family]
    prims, subtype, params = build(rng)
    radius = float(rng.uniform(*RADIUS_RANGE))
    return ObjectSpec(family, int(idx), -1, subtype, normalize(prims, radius), radius, params)
