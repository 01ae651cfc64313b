"""The device-side statistics bus: moments of any dtype, non-finite values counted, reset on sync."""
from __future__ import annotations

import math

import numpy as np
import torch

from torch_utils.training_stats import Collector


def test_moments_over_reports_of_mixed_dtypes():
    col = Collector()
    parts = [torch.tensor([1.0, 2.0, 3.5], dtype=torch.float16), torch.tensor([[4.0], [-1.0]]),
             torch.tensor([7, 8]), torch.tensor(True), 2.25]
    for p in parts:
        col.report("x", p)
    col.report("empty", torch.zeros(0))
    flat = np.concatenate([np.asarray(torch.as_tensor(p).double().flatten()) for p in parts])
    stats = col.sync()
    assert "empty" not in stats
    assert stats["x"]["num"] == len(flat)
    assert math.isclose(stats["x"]["mean"], flat.mean(), rel_tol=1e-12)
    assert math.isclose(stats["x"]["std"], flat.std(), rel_tol=1e-9)
    assert col.sync() == {}                                             # reset after the sync


def test_non_finite_values_are_counted():
    col = Collector()
    col.report("nan", torch.tensor([1.0, float("nan")]))
    col.report("inf", torch.tensor([float("inf"), 0.0, 1.0]))
    stats = col.sync()
    assert stats["nan"]["num"] == 2 and math.isnan(stats["nan"]["mean"])
    assert stats["inf"]["num"] == 3 and stats["inf"]["mean"] == float("inf")
