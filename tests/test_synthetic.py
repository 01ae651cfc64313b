"""Tests for training/synthetic: shapes, exact intersections, renderer, zip writer, density oracle."""
from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from dnnlib.util import UserError
from training.rendering import camera
from training.synthetic import (FAMILIES, load_gt, make_object, oracle_field, render_images, render_object,
                                sample_pose, write_dataset_zip)
from training.synthetic import raycast
from training.synthetic.shapes import BOX, CYLINDER, ELLIPSOID, NUM_CARLA_TEMPLATES, max_extent, rot_x, rot_y, rot_z

# sha256 of the decoded uint8 pixels of render_images(family, [0, 1], 32, seed=0) (ss=2).
GOLDEN = {
    "chairs": "c534667e54b23c764492e8c6ea12e8444a495a4c19bcc830cf9a95db84bc7954",
    "planes": "791ac0d2426822d92df6c32d217daf272bcc1d12643a0d8a942408fee8f50a59",
}


def _decode_zip_images(path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        return {n: np.asarray(PIL.Image.open(io.BytesIO(zf.read(n)))) for n in zf.namelist() if n.endswith(".png")}


@pytest.fixture(scope="module")
def small_zip(tmp_path_factory):
    dest = tmp_path_factory.mktemp("synth") / "chairs-32.zip"
    summary = write_dataset_zip(dest, "chairs", 10, 32, seed=3, workers=2)
    return dest, summary


# ---------------------------------------------------------------------------------------------------------------------
# Shapes.

@pytest.mark.parametrize("family", FAMILIES)
def test_objects_inside_unit_ball(family):
    for idx in range(40):
        obj = make_object(family, 7, idx)
        ext = max_extent(obj.primitives)
        assert ext <= 0.95, (family, idx, ext)
        assert 0.79 <= ext <= 0.93, (family, idx, ext)
        assert abs(ext - obj.radius) < 0.01
        for p in obj.primitives:
            assert np.allclose(p.rot @ p.rot.T, np.eye(3), atol=1e-9) and np.linalg.det(p.rot) > 0
            assert np.all(p.size > 0) and np.all((p.albedo >= 0) & (p.albedo <= 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_objects_are_mirror_symmetric(family):
    """Every primitive has a mirror partner about the x-z plane (or is its own mirror image)."""
    flip = np.diag([1.0, -1.0, 1.0])
    for idx in range(10):
        prims = make_object(family, 1, idx).primitives
        pts = [np.round(raycast_points(p), 6) for p in prims]
        keys = {tuple(sorted(map(tuple, q))) for q in pts}
        for q in pts:
            mirrored = tuple(sorted(map(tuple, np.round(q @ flip, 6) + 0.0)))
            assert mirrored in keys, (family, idx)


def raycast_points(p) -> np.ndarray:
    """The 8 corners of a primitive's oriented bounding box (a mirror-invariant fingerprint of its placement)."""
    corners = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], np.float64)
    return p.center + (corners * p.size) @ p.rot.T


def test_make_object_is_deterministic_and_seed_dependent():
    a, b, c = make_object("cars", 0, 5), make_object("cars", 0, 5), make_object("cars", 1, 5)
    assert a.to_json_str() == b.to_json_str()
    assert a.to_json_str() != c.to_json_str()
    with pytest.raises(UserError):
        make_object("boats", 0, 0)


def test_carla_templates_fixed_paint_random():
    objs = [make_object("carla", 0, i) for i in range(60)]
    assert {o.template_id for o in objs} <= set(range(NUM_CARLA_TEMPLATES))
    by_tmpl: dict[int, list] = {}
    for o in objs:
        by_tmpl.setdefault(o.template_id, []).append(o)
    pair = next(v for v in by_tmpl.values() if len(v) >= 2)
    geo = [[(p.center.tolist(), p.size.tolist()) for p in o.primitives] for o in pair[:2]]
    assert geo[0] == geo[1]
    assert not np.allclose(pair[0].primitives[0].albedo, pair[1].primitives[0].albedo)
    assert len(by_tmpl) >= 10


# ---------------------------------------------------------------------------------------------------------------------
# Exact intersections against brute force.

def _inside(kind: int, p: np.ndarray, size: np.ndarray) -> np.ndarray:
    if kind == BOX:
        return np.all(np.abs(p) <= size, axis=-1)
    if kind == ELLIPSOID:
        return ((p / size) ** 2).sum(-1) <= 1.0
    return (p[..., 0] ** 2 + p[..., 2] ** 2 <= size[0] ** 2) & (np.abs(p[..., 1]) <= size[1])


@pytest.mark.parametrize("kind", [BOX, ELLIPSOID, CYLINDER])
def test_intersection_matches_brute_force(kind):
    rng = np.random.default_rng(kind)
    checked = 0
    for _ in range(8):
        size = rng.uniform(0.05, 0.5, 3)
        if kind == CYLINDER:
            size[2] = size[0]
        R = rot_z(rng.uniform(-180, 180)) @ rot_y(rng.uniform(-90, 90)) @ rot_x(rng.uniform(-180, 180))
        center = rng.uniform(-0.3, 0.3, 3)
        origin = rng.normal(size=3)
        origin *= 4.0 / np.linalg.norm(origin)
        target = center + rng.uniform(-0.6, 0.6, (100, 3))
        d = target - origin                                                          # [M, 3] unnormalised
        o_loc = R.T @ (origin - center)
        d_loc = tuple(col for col in (d @ R).T)
        t = raycast.intersect(kind, o_loc, d_loc, size)
        ts = np.arange(0.5, 1.5, 1e-4)                                                # [T] (|d| ~ 4)
        pts = o_loc + ts[None, :, None] * np.stack(d_loc, 1)[:, None, :]              # [M, T, 3]
        inside = _inside(kind, pts, size)
        first = np.where(inside.any(1), ts[np.argmax(inside, 1)], np.inf)
        both = np.isfinite(first) & np.isfinite(t)
        assert not np.any(np.isfinite(first) & ~np.isfinite(t))                       # no missed entry
        assert np.mean(np.isfinite(t) & ~np.isfinite(first)) < 0.02                    # only grazing chords
        tol = ts[1] - ts[0]
        assert np.all((first[both] - t[both] >= -1e-9) & (first[both] - t[both] <= tol + 1e-9))
        checked += both.sum()
    assert checked > 100


def test_cast_union_takes_nearest_hit():
    obj = make_object("chairs", 0, 0)
    _, _, c2w = sample_pose(0, 0)
    out = render_object(obj, c2w, 24, ss=1)
    o, d = camera.get_rays(torch.from_numpy(c2w).double()[None], 24)
    o, d = o[0].numpy(), d[0].numpy()                                                 # [24, 24, 3]
    arrays = obj.arrays()
    best = np.full((24, 24), np.inf)
    for k in range(len(obj.primitives)):
        R, c = arrays["rot"][k], arrays["center"][k]
        d_loc = tuple(np.moveaxis(d @ R, -1, 0))
        best = np.minimum(best, raycast.intersect(int(arrays["kind"][k]), R.T @ (o[0, 0] - c), d_loc,
                                                  arrays["size"][k]))
    assert np.array_equal(np.isfinite(best), np.isfinite(out["depth"]))
    hit = np.isfinite(best)
    assert hit.sum() > 10
    np.testing.assert_allclose(out["depth"][hit], best[hit], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Renderer.

@pytest.mark.parametrize("family", FAMILIES)
def test_images_rgb_white_background(family):
    out = render_images(family, [0, 1, 2], 32, seed=0)
    img = out["images"]
    assert img.dtype == np.uint8 and img.shape == (3, 32, 32, 3)
    corners = np.concatenate([img[:, :3, :3], img[:, :3, -3:], img[:, -3:, :3], img[:, -3:, -3:]], 1)
    assert (corners == 255).mean() > 0.95
    assert (img < 250).any(axis=-1).mean() > 0.02                                     # an object is visible
    assert np.all(out["alpha"][out["images"].min(-1) == 255] < 0.01)
    empty = out["alpha"] == 0
    assert np.all(np.isinf(out["depth"][empty])) and np.all(out["part"][empty] == 0)
    d = out["depth"][~empty]
    assert d.min() > 3.0 and d.max() < 5.0


def test_different_seed_gives_different_images():
    a = render_images("cars", [0, 1], 32, seed=0)["images"]
    b = render_images("cars", [0, 1], 32, seed=1)["images"]
    assert not np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])


def test_golden_pixels():
    for family, want in GOLDEN.items():
        img = render_images(family, [0, 1], 32, seed=0)["images"]
        assert hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() == want, family


def test_supersampling_antialiases_edges():
    obj = make_object("cars", 0, 3)
    _, _, c2w = sample_pose(0, 3)
    a1, a2 = render_object(obj, c2w, 32, ss=1)["alpha"], render_object(obj, c2w, 32, ss=3)["alpha"]
    assert set(np.unique(a1)) <= {0.0, 1.0}
    assert ((a2 > 0) & (a2 < 1)).sum() > 10
    assert abs(a1.mean() - a2.mean()) < 0.02


def test_mirror_pose_gives_mirrored_silhouette():
    """Symmetric object: the view from azimuth 180 - theta is the x-flip of the view from theta."""
    obj = make_object("planes", 2, 4)
    c2w = camera.pose_spherical(torch.tensor([30.0, 150.0], dtype=torch.float64),
                                torch.tensor([25.0, 25.0], dtype=torch.float64)).numpy()
    a = render_object(obj, c2w[0], 48, ss=1)["alpha"]
    b = render_object(obj, c2w[1], 48, ss=1)["alpha"]
    assert a.sum() > 50
    assert (a != b[:, ::-1]).mean() < 0.005


def test_pose_prior():
    poses = [sample_pose(0, i) for i in range(2000)]
    theta = np.array([p[0] for p in poses])
    elev = np.array([p[1] for p in poses])
    assert theta.min() >= -180 and theta.max() <= 180 and elev.min() >= 0 and elev.max() <= 90
    s = np.sin(np.radians(elev))
    assert abs(s.mean() - 0.5) < 0.03 and abs(np.mean(s < 0.25) - 0.25) < 0.03
    c2w = poses[5][2].astype(np.float64)
    assert abs(np.linalg.norm(c2w[:3, 3]) - 4.0) < 1e-5
    np.testing.assert_allclose(-c2w[:3, 2], -c2w[:3, 3] / 4.0, atol=1e-6)           # looks at the origin
    assert math.isclose(elev[5], math.degrees(math.asin(c2w[2, 3] / 4.0)), abs_tol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# Zip writer.

def test_zip_layout_and_schema(small_zip):
    dest, summary = small_zip
    assert summary["count"] == 10 and summary["resolution"] == 32 and summary["bytes"] == dest.stat().st_size
    with zipfile.ZipFile(dest) as zf:
        names = zf.namelist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        meta = json.loads(zf.read("dataset.json"))
        first = PIL.Image.open(io.BytesIO(zf.read("00000/img00000000.png")))
        assert first.mode == "RGB" and first.size == (32, 32)
    fnames = [f"00000/img{i:08d}.png" for i in range(10)]
    assert sorted(n for n in names if n.endswith(".png")) == fnames and "dataset.json" in names
    assert not any(n.endswith(".npz") for n in names)
    assert set(meta) == {"labels", "camera", "objects", "generator"}
    labels = dict((f, lab) for f, lab in meta["labels"])
    assert set(labels) == set(fnames) and all(len(v) == 25 for v in labels.values())
    cam = meta["camera"]
    assert cam["convention"] == camera.CONVENTION and cam["pixel_center"] == 0.5
    assert (cam["near"], cam["far"], cam["radius"]) == (3.0, 5.0, 4.0) and cam["fov_x_rad"] == camera.FOV_X_RAD
    assert cam["elev_deg"] == [0, 90] and cam["azim_deg"] == [-180, 180]
    assert meta["objects"][3] == [fnames[3], 3, "chairs", -1]
    assert meta["generator"]["name"] == "hng-synth" and meta["generator"]["seed"] == 3
    gt = load_gt(summary["gt_path"])
    assert gt["depth"].shape == (10, 32, 32) and gt["alpha"].dtype == np.uint8 and gt["c2w"].shape == (10, 4, 4)
    assert len(gt["meta"]["objects"]) == 10 and gt["meta"]["fnames"] == fnames
    assert np.all(np.isinf(gt["depth"][gt["alpha"] == 0]))
    with pytest.raises(UserError):
        write_dataset_zip(dest, "chairs", 10, 32, seed=3)


def test_labels_match_pose_and_renders(small_zip):
    dest, summary = small_zip
    with zipfile.ZipFile(dest) as zf:
        labels = dict((f, lab) for f, lab in json.loads(zf.read("dataset.json"))["labels"])
    imgs = _decode_zip_images(dest)
    ref = render_images("chairs", [2, 7], 32, seed=3)
    for k, idx in enumerate((2, 7)):
        fname = f"00000/img{idx:08d}.png"
        c2w = torch.from_numpy(sample_pose(3, idx)[2])[None]
        want = camera.label_from_pose(c2w, 32)[0].numpy()
        np.testing.assert_array_equal(np.array(labels[fname], np.float32), want)
        np.testing.assert_array_equal(ref["labels"][k], want)
        np.testing.assert_array_equal(imgs[fname], ref["images"][k])


def test_workers_do_not_change_pixels(small_zip, tmp_path):
    dest, _ = small_zip
    one = tmp_path / "one.zip"
    write_dataset_zip(one, "chairs", 10, 32, seed=3, workers=1, progress=lambda n: None)
    a, b = _decode_zip_images(dest), _decode_zip_images(one)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ga, gb = load_gt(dest.with_name("chairs-32_gt.npz")), load_gt(tmp_path / "one_gt.npz")
    assert all(np.array_equal(ga[k], gb[k]) for k in ("depth", "alpha", "part", "c2w"))


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        write_dataset_zip(tmp_path / "x.zip", "boats", 4, 32, 0)
    with pytest.raises(UserError):
        write_dataset_zip(tmp_path / "x.zip", "cars", 4, 33, 0)
    with pytest.raises(UserError):
        write_dataset_zip(tmp_path / "x.tar", "cars", 4, 32, 0)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# Density oracle.

def test_oracle_agrees_with_ray_caster_at_hits():
    for family in ("cars", "chairs"):
        obj = make_object(family, 0, 1)
        _, _, c2w = sample_pose(0, 1)
        out = render_object(obj, c2w, 32, ss=1)
        o, d = camera.get_rays(torch.from_numpy(c2w).double()[None], 32)
        hit = torch.from_numpy(np.isfinite(out["depth"]))
        t = torch.from_numpy(out["depth"].astype(np.float64))[hit]
        p = o[0][hit] + d[0][hit] * t[:, None]                                         # [M, 3] surface points
        n = torch.from_numpy(out["normal"]).double()[hit]
        sig_in, rgb = oracle_field(obj, p - 2e-3 * n)
        sig_out, _ = oracle_field(obj, p + 5e-3 * n)
        assert (sig_in > 500).float().mean() > 0.97 and (sig_out < 1).float().mean() > 0.97
        _, rgb = oracle_field(obj, p)
        err = (rgb.numpy() * 255.0 - out["image"][hit.numpy()]).__abs__().max(1)
        assert np.mean(err <= 1.0) > 0.95, family


def test_oracle_volume_render_matches_image():
    obj = make_object("cars", 0, 2)
    _, _, c2w = sample_pose(0, 2)
    ref = render_object(obj, c2w, 32, ss=1)
    o, d = camera.get_rays(torch.from_numpy(c2w).double()[None], 32)
    o, d = o[0].reshape(-1, 3), d[0].reshape(-1, 3)
    z = torch.linspace(3.0, 5.0, 256, dtype=torch.float64)
    sigma, rgb = oracle_field(obj, (o[:, None] + d[:, None] * z[None, :, None]).reshape(-1, 3))
    alpha = 1.0 - torch.exp(-sigma.reshape(-1, 256) * (z[1] - z[0]) * d.norm(dim=-1, keepdim=True))
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
    w = alpha * trans                                                                 # [R, 256]
    img = (w[..., None] * rgb.reshape(-1, 256, 3)).sum(1) + (1.0 - w.sum(1, keepdim=True))
    mse = ((img.reshape(32, 32, 3).numpy() - ref["image"] / 255.0) ** 2).mean()
    mask_a, mask_b = w.sum(1).reshape(32, 32).numpy() > 0.5, ref["alpha"] > 0.5
    assert -10 * math.log10(mse) > 28.0
    assert (mask_a & mask_b).sum() / (mask_a | mask_b).sum() > 0.97
