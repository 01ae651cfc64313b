"""training/mesh.py: marching cubes of analytic fields is closed, oriented and the right size; PLY round trips."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dnnlib.util import UserError
from training import mesh as M


def sphere_field(radius: float = 0.6, centre=(0.1, -0.05, 0.0)):
    c = torch.tensor(centre)

    def field(pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = (pts - c).norm(dim=-1)
        return (pts * 0.5 + 0.5).clamp(0, 1), 100.0 * (radius - d)        # sigma = 10 at d = radius - 0.1
    return field


def box_field(half=(0.5, 0.3, 0.7)):
    h = torch.tensor(half)

    def field(pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = (pts.abs() <= h).all(-1)
        return torch.full_like(pts, 0.25), inside.float() * 50.0
    return field


def edge_counts(faces: np.ndarray) -> np.ndarray:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return counts


def signed_volume(m: M.Mesh) -> float:
    v, f = m.vertices.astype(np.float64), m.faces
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6.0)


def test_sphere_mesh_is_closed_oriented_and_sized():
    res, bound = 41, 1.0
    cell = 2 * bound / (res - 1)
    m = M.extract_mesh(sphere_field(), resolution=res, threshold=10.0, bound=bound, chunk=5000)
    assert (edge_counts(m.faces) == 2).all()
    r = 0.5                                                                  # iso-surface radius (sigma = 10)
    centre = np.array([0.1, -0.05, 0.0])
    np.testing.assert_allclose(m.vertices.min(0), centre - r, atol=cell)
    np.testing.assert_allclose(m.vertices.max(0), centre + r, atol=cell)
    assert signed_volume(m) == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.03)   # positive: outward winding
    radial = m.vertices - centre
    assert ((m.normals * radial).sum(1) > 0).mean() > 0.99                  # normals point outward
    expected = np.clip(m.vertices * 0.5 + 0.5, 0, 1) * 255
    assert np.abs(m.colors.astype(float) - expected).max() <= 1.0            # colours come from the field


def test_box_mesh_bounding_box_within_a_cell():
    res, bound = 33, 1.0
    cell = 2 * bound / (res - 1)
    m = M.extract_mesh(box_field(), resolution=res, threshold=10.0, bound=bound)
    assert (edge_counts(m.faces) == 2).all()
    half = np.array([0.5, 0.3, 0.7])
    np.testing.assert_allclose(m.vertices.max(0), half, atol=cell)
    np.testing.assert_allclose(m.vertices.min(0), -half, atol=cell)
    assert signed_volume(m) > 0
    assert (m.colors == 64).all()


def test_shape_larger_than_the_cube_is_cut_and_closed():
    m = M.extract_mesh(sphere_field(radius=1.8, centre=(0.0, 0.0, 0.0)), resolution=17, threshold=10.0, bound=1.0)
    assert (edge_counts(m.faces) == 2).all()
    np.testing.assert_allclose(m.vertices.min(0), -1.0, atol=1e-6)
    np.testing.assert_allclose(m.vertices.max(0), 1.0, atol=1e-6)
    assert signed_volume(m) == pytest.approx(8.0, rel=0.02)


def test_density_grid_axis_order_and_chunking():
    calls = []

    def field(pts):
        calls.append(pts.shape[0])
        return torch.zeros_like(pts), pts[:, 0] + 10 * pts[:, 1] + 100 * pts[:, 2]
    grid = M.density_grid(field, resolution=5, bound=2.0, chunk=30)
    assert grid.shape == (5, 5, 5) and max(calls) == 30 and sum(calls) == 125
    axis = np.linspace(-2, 2, 5)
    np.testing.assert_allclose(grid[:, 1, 2], axis + 10 * axis[1] + 100 * axis[2], atol=1e-5)
    np.testing.assert_allclose(grid[3, :, 0], axis[3] + 10 * axis + 100 * axis[0], atol=1e-5)


def test_empty_field_is_a_user_error():
    with pytest.raises(UserError, match="threshold"):
        M.extract_mesh(lambda p: (torch.zeros_like(p), torch.zeros(p.shape[0])), resolution=8, threshold=1.0)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path, binary):
    m = M.extract_mesh(sphere_field(), resolution=17, threshold=10.0)
    path = tmp_path / "s.ply"
    M.write_ply(path, m, binary=binary)
    head = path.read_bytes()[:400].decode("ascii", errors="replace")
    assert head.startswith("ply\n") and ("binary_little_endian" in head) == binary
    assert f"element vertex {len(m.vertices)}" in head and f"element face {len(m.faces)}" in head
    back = M.read_ply(path)
    np.testing.assert_array_equal(back.faces, m.faces)
    np.testing.assert_array_equal(back.colors, m.colors)
    np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-5)
    np.testing.assert_allclose(back.normals, m.normals, atol=1e-5)
