"""Metric maths (FID closed form, stable square root vs scipy, unbiased KID, precision/recall), streaming statistics,
the registry, and calc_metric / compare_datasets / evaluate_snapshot_metrics with a toy G and a stand-in detector."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from dnnlib.util import UserError
from metrics import metric_main, precision_recall as pr_mod
from metrics.detector import CallableDetector
from metrics.feature_stats import FeatureStats, quantize_images
from metrics.fid import frechet_distance, psd_sqrt, trace_sqrt_product
from metrics.kid import kernel_inception_distance, mmd2_unbiased
from metrics.precision_recall import precision_recall


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_spd(d: int, seed: int, jitter: float = 0.1) -> torch.Tensor:
    a = torch.randn(d, d, generator=_gen(seed), dtype=torch.float64)
    return a @ a.T / d + jitter * torch.eye(d, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------------
# FID.

def test_fid_closed_form_diagonal():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0, -1.0]).double(), torch.tensor([1.0, 1.0, 0.0, 0.5]).double()
    a, b = torch.tensor([1.0, 2.0, 0.5, 3.0]).double(), torch.tensor([4.0, 0.5, 0.5, 1.0]).double()
    expect = float((mu1 - mu2).square().sum() + (a + b - 2 * (a * b).sqrt()).sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expect, rel=1e-12)


def test_fid_from_samples_matches_closed_form():
    d, n = 3, 200_000
    mu1, mu2 = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    cov1, cov2 = _random_spd(d, 1), _random_spd(d, 2)
    x1 = mu1 + torch.randn(n, d, generator=_gen(3), dtype=torch.float64) @ torch.linalg.cholesky(cov1).T
    x2 = mu2 + torch.randn(n, d, generator=_gen(4), dtype=torch.float64) @ torch.linalg.cholesky(cov2).T
    s1, s2 = FeatureStats(), FeatureStats()
    for chunk in x1.split(30_000):
        s1.append(chunk)
    s2.append(x2)
    closed = float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace()
                   - 2 * np.trace(scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy())).real)
    assert frechet_distance(*s1.get_mean_cov(), *s2.get_mean_cov()) == pytest.approx(closed, abs=0.03)


@pytest.mark.parametrize("n", [500, 40])  # full-rank and singular (n < D) covariances
def test_fid_of_identical_sets_is_zero(n):
    x = torch.randn(n, 64, generator=_gen(5)) * 3 + 1
    s = FeatureStats()
    s.append(x)
    mu, cov = s.get_mean_cov()
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6 * float(cov.trace())


@pytest.mark.parametrize("d,seed", [(5, 0), (32, 1), (64, 2)])
def test_trace_sqrt_matches_scipy(d, seed):
    s1, s2 = _random_spd(d, seed), _random_spd(d, seed + 100, jitter=0.01)
    ref = np.trace(scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())).real
    assert float(trace_sqrt_product(s1, s2)) == pytest.approx(ref, rel=1e-9)
    root = psd_sqrt(s1)
    torch.testing.assert_close(root @ root, s1, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# KID.

def _mmd2_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Direct transcription of the unbiased MMD^2 definition with k(a, b) = (a.b / D + 1)^3."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_definition():
    x = torch.randn(9, 5, generator=_gen(6), dtype=torch.float64)
    y = torch.randn(9, 5, generator=_gen(7), dtype=torch.float64) + 0.3
    assert float(mmd2_unbiased(x, y)) == pytest.approx(_mmd2_loops(x.numpy(), y.numpy()), rel=1e-10)


def test_kid_is_unbiased_on_identical_distributions():
    reps, m, d = 400, 16, 8
    x = torch.randn(reps, m, d, generator=_gen(8), dtype=torch.float64)
    y = torch.randn(reps, m, d, generator=_gen(9), dtype=torch.float64)
    vals = torch.stack([mmd2_unbiased(x[r], y[r]) for r in range(reps)])
    se = float(vals.std()) / reps ** 0.5
    assert abs(float(vals.mean())) < 4 * se
    # The biased V-statistic (diagonal kept) is clearly positive here, so the test can tell the two apart.
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    biased = torch.stack([k(x[r], x[r]).mean() + k(y[r], y[r]).mean() - 2 * k(x[r], y[r]).mean() for r in range(reps)])
    assert float(biased.mean()) > 8 * se


def test_kid_subsets_and_separation():
    real = torch.randn(300, 8, generator=_gen(10))
    same = kernel_inception_distance(real, torch.randn(300, 8, generator=_gen(11)), num_subsets=20,
                                     max_subset_size=100, seed=0)
    far = kernel_inception_distance(real, torch.randn(300, 8, generator=_gen(12)) + 1.0, num_subsets=20,
                                    max_subset_size=100, seed=0)
    assert far["kid"] > 20 * abs(same["kid"]) and far["kid"] > 0
    again = kernel_inception_distance(real, torch.randn(300, 8, generator=_gen(11)), num_subsets=20,
                                      max_subset_size=100, seed=0)
    assert again == same  # own seeded generator: reproducible


# ---------------------------------------------------------------------------------------------------------------------
# Precision / recall.

def test_precision_recall_identical_and_disjoint():
    x = torch.randn(200, 16, generator=_gen(13))
    assert precision_recall(x, x.clone()) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(x, x + 1000.0) == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_hand_case_and_tiling(monkeypatch):
    real = torch.arange(10.0)[:, None]                     # 1-D grid 0..9, k=3 radii 3 (ends: 3)
    fake = torch.tensor([[0.5], [4.0], [8.5], [20.0]])     # 3 of 4 inside the real manifold
    full = precision_recall(real, fake, k=1)
    assert full["precision"] == pytest.approx(0.75)
    monkeypatch.setattr(pr_mod, "TILE_ELEMENTS", 7)        # force many tiny tiles
    assert precision_recall(real, fake, k=1) == full
    big_real, big_fake = torch.randn(300, 6, generator=_gen(14)), torch.randn(250, 6, generator=_gen(15)) * 1.5
    tiled = precision_recall(big_real, big_fake, k=3)
    monkeypatch.setattr(pr_mod, "TILE_ELEMENTS", 1 << 24)
    assert precision_recall(big_real, big_fake, k=3) == tiled
    assert 0.0 < tiled["precision"] < 1.0 and 0.0 < tiled["recall"] < 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Streaming statistics.

def test_streaming_stats_equal_numpy_and_roundtrip(tmp_path):
    x = torch.randn(1003, 12, generator=_gen(16)) * torch.linspace(0.1, 5, 12) + 7.0
    s = FeatureStats(capture_all=True)
    for chunk in torch.split(x, [1, 500, 2, 300, 200]):
        s.append(chunk)
    mu, cov = s.get_mean_cov()
    xd = x.double().numpy()
    np.testing.assert_allclose(mu.numpy(), xd.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(xd.T, bias=True), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s.get_all(), x)
    s.save(tmp_path / "s.npz")
    t = FeatureStats.load(tmp_path / "s.npz")
    assert t.num_items == 1003 and t.capture_all
    torch.testing.assert_close(t.get_mean_cov()[1], cov, rtol=0, atol=0)
    one_by_one = FeatureStats()
    for row in x.split(1):
        one_by_one.append(row)
    torch.testing.assert_close(one_by_one.get_mean_cov()[1], cov, rtol=1e-10, atol=1e-10)


def test_stats_max_items_truncates():
    s = FeatureStats(capture_all=True, max_items=5)
    s.append(torch.arange(12.0).reshape(3, 4))
    s.append(torch.arange(12.0).reshape(3, 4) + 100)
    assert s.is_full() and s.num_items == 5 and s.get_all().shape == (5, 4)
    assert s.get_all()[4, 0] == 104.0


def test_quantize_matches_stylegan_rule():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0 / 255, 1.0, 3.0])
    assert quantize_images(x).tolist() == [0, 0, 128, 128, 255, 255]


# ---------------------------------------------------------------------------------------------------------------------
# Registry and metric evaluation with a toy generator.

def test_parse_metric_names():
    assert metric_main.parse_metric("fid1k_full").num_fake == 1000
    spec = metric_main.parse_metric("pr50k3_full")
    assert (spec.kind, spec.num_fake, spec.k) == ("pr", 50_000, 3)
    assert metric_main.parse_metric("kid2k_full").kind == "kid"
    for name in metric_main.KNOWN_METRICS:
        metric_main.parse_metric(name)
    with pytest.raises(UserError, match="fid50k_full"):
        metric_main.parse_metric("is50k")
    with pytest.raises(UserError):
        metric_main.parse_metric("fid0k_full")
    assert metric_main.parse_metric_list("fid1k_full, kid1k_full,fid1k_full") == ["fid1k_full", "kid1k_full"]


class ToyG(torch.nn.Module):
    """The metric-facing interface of the Generator, rendering 8x8 colour patterns from z and the pose."""

    img_resolution = 8

    def sample_z(self, n, generator=None, device=None):
        return torch.randn(n, 4, generator=generator, device=device)

    def sample_poses(self, n, generator=None, device=None):
        return torch.rand(n, 4, 4, generator=generator, device=device)

    def mapping(self, z, psi=1.0, update_w_avg=False):
        return z * 0.5

    def synthesis(self, w, c2w, window=None, patch_size=None, perturb=False, generator=None, ray_chunk=None):
        assert perturb is False and generator is None
        ramp = torch.linspace(-1, 1, 8)
        pattern = (ramp[None, None, :, None] * w[:, :3, None, None]
                   + ramp[None, None, None, :] * c2w[:, :3, 0, None, None])
        return torch.tanh(pattern + w[:, 3:4, None, None])                # [B, 3, 8, 8]


class ToyDataset(torch.utils.data.Dataset):
    """uint8 images from ToyG with a fixed seed, plus the attributes metrics use."""

    def __init__(self, n: int, seed: int) -> None:
        g = ToyG()
        gen = _gen(seed)
        self.images = quantize_images(g.synthesis(g.mapping(g.sample_z(n, gen)), g.sample_poses(n, gen)))
        self.dataset_hash = f"toy-{n}-{seed}"
        self.name, self.resolution, self.path = "toy", 8, f"toy://{seed}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int):
        return self.images[idx].numpy(), np.zeros(0, np.float32)


class CountingDetector(CallableDetector):
    def __init__(self) -> None:
        super().__init__(lambda x: F.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1), sha1="toy-detector-1",
                         name="toy")
        self.images_seen = 0

    def features(self, images):
        self.images_seen += images.shape[0]
        return super().features(images)


def test_calc_metric_reproducible_cached_and_private_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path))
    data, det = ToyDataset(300, seed=1), CountingDetector()
    rng_before = torch.get_rng_state()
    r1 = metric_main.calc_metric("fid1k_full", ToyG(), data, "cpu", detector=det, seed=3, batch_size=64)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert (r1["n_real"], r1["n_fake"], r1["seed"], r1["detector_sha1"]) == (300, 1000, 3, "toy-detector-1")
    assert det.images_seen == 1300 and list((tmp_path / "metrics").glob("*.npz"))
    r2 = metric_main.calc_metric("fid1k_full", ToyG(), data, "cpu", detector=det, seed=3, batch_size=7)
    assert det.images_seen == 2300  # reals came from the disk cache
    assert r2["results"]["fid1k_full"] == pytest.approx(r1["results"]["fid1k_full"], rel=1e-9, abs=1e-12)
    r3 = metric_main.calc_metric("fid1k_full", ToyG(), data, "cpu", detector=det, seed=4, batch_size=64)
    assert r3["results"]["fid1k_full"] != r1["results"]["fid1k_full"]
    assert 0 < r1["results"]["fid1k_full"] < 0.05  # fakes and reals come from the same toy distribution


def test_kid_and_pr_metrics_and_resolution_check(tmp_path, monkeypatch):
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path))
    data, det = ToyDataset(200, seed=2), CountingDetector()
    kid = metric_main.calc_metric("kid1k_full", ToyG(), data, "cpu", detector=det, batch_size=250)
    assert set(kid["results"]) == {"kid1k_full", "kid1k_full_std"}
    assert abs(kid["results"]["kid1k_full"]) < 2 * kid["results"]["kid1k_full_std"]
    far_g = ToyG()
    far_g.mapping = lambda z, psi=1.0, update_w_avg=False: z * 3.0
    far = metric_main.calc_metric("kid1k_full", far_g, data, "cpu", detector=det, batch_size=250)
    assert far["results"]["kid1k_full"] > 10 * abs(kid["results"]["kid1k_full"])
    pr = metric_main.calc_metric("pr1k3_full", ToyG(), data, "cpu", detector=det, batch_size=250)
    assert pr["results"]["pr1k3_full_precision"] > 0.8 and pr["results"]["pr1k3_full_recall"] > 0.8
    big = ToyG()
    big.img_resolution = 16
    with pytest.raises(UserError, match="16x16"):
        metric_main.calc_metric("fid1k_full", big, data, "cpu", detector=det)


def test_compare_datasets_floor(tmp_path, monkeypatch):
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path))
    a, b, det = ToyDataset(120, seed=5), ToyDataset(150, seed=6), CountingDetector()
    same = metric_main.compare_datasets("fid1k_full", a, a, "cpu", detector=det, cache=False)
    assert abs(same["results"]["fid1k_full"]) < 1e-9 and same["n_real"] == same["n_fake"] == 120
    floor = metric_main.compare_datasets("fid1k_full", a, b, "cpu", detector=det)
    assert floor["n_fake"] == 150 and floor["results"]["fid1k_full"] > 0
    det2, memo = CountingDetector(), metric_main.new_memo(["fid1k_full", "kid1k_full"])
    for name in ("fid1k_full", "kid1k_full"):
        metric_main.compare_datasets(name, a, b, "cpu", detector=det2, cache=False, memo=memo)
    assert det2.images_seen == 120 + 150  # one pass per set serves both metrics


def test_raw_feature_cache_serves_mean_cov(tmp_path, monkeypatch):
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path))
    data, det = ToyDataset(50, seed=9), CountingDetector()
    from metrics.feature_stats import dataset_features
    full = dataset_features(data, det, capture_all=True)
    again = dataset_features(data, det, capture_all=False)
    assert det.images_seen == 50
    torch.testing.assert_close(again.get_mean_cov()[1], full.get_mean_cov()[1])


def test_evaluate_snapshot_metrics_appends_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    data, det = ToyDataset(100, seed=7), CountingDetector()
    out = metric_main.evaluate_snapshot_metrics(["fid1k_full", "kid1k_full"], ToyG(), data, "cpu", run,
                                                "network-snapshot-000004.pkl", kimg=4.0, detector=det,
                                                batch_size=500)
    assert det.images_seen == 100 + 1000  # fakes and reals shared between the two metrics
    metric_main.evaluate_snapshot_metrics(["fid1k_full"], ToyG(), data, "cpu", run, "network-snapshot-000008.pkl",
                                          kimg=8.0, detector=det, batch_size=500)
    lines = (run / "metric-fid1k_full.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    assert rec["results"]["fid1k_full"] == out["fid1k_full"]["results"]["fid1k_full"]
    for key in ("snapshot_pkl", "kimg", "n_real", "n_fake", "detector_sha1", "resize", "seed", "time", "seconds",
                "dataset_hash"):
        assert key in rec
    assert json.loads(lines[1])["snapshot_pkl"] == "network-snapshot-000008.pkl"
    assert rec["mlp"] == "torch"                  # a generator without the fused path renders with PyTorch
    assert len(metric_main.read_metric_jsonl(run, "kid1k_full")) == 1


def test_dataset_features_with_loader_workers_keep_order_and_global_rng(monkeypatch):
    from metrics import feature_stats
    monkeypatch.setattr(feature_stats, "LOADER_WORKERS_FROM", 10)
    monkeypatch.setattr(feature_stats.os, "cpu_count", lambda: 2)  # one worker process
    data, det = ToyDataset(40, seed=8), CountingDetector()
    rng_before = torch.get_rng_state()
    stats = feature_stats.dataset_features(data, det, batch_size=16, capture_all=True, cache=False)
    assert torch.equal(torch.get_rng_state(), rng_before)
    torch.testing.assert_close(stats.get_all(), det.fn(data.images))
