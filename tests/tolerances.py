"""Float32 tolerances derived from a computation's scale, for tests that compare two float32 evaluations of one
quantity computed in different orders (chunking, batching, memory layout, kernels, thread counts).

A float32 sum of n terms differs from the exact sum by at most gamma_n * sum(|term|), gamma_n = n * eps / (1 - n * eps)
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5); two evaluations in any two orders differ
by at most twice that. These bounds hold for every summation order, so a test using them cannot pass or fail by the
luck of one BLAS kernel. Where a test is about a formula rather than about float32, compare in float64 instead.
"""
from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps


def gamma(n: int, eps: float = EPS32) -> float:
    return n * eps / (1 - n * eps)


def sum_atol(n_terms: int, abs_sum: float | torch.Tensor, eps: float = EPS32) -> float | torch.Tensor:
    """Largest difference between two evaluations of a sum of `n_terms` terms whose absolute values sum to
    `abs_sum` (a number, or a tensor of per-element sums)."""
    return 2 * gamma(n_terms, eps) * abs_sum


def matmul_atol(a: torch.Tensor, b: torch.Tensor, eps: float = EPS32) -> torch.Tensor:
    """Per-element bound for two evaluations of `a @ b` (inner size k): 2 gamma_k (|a| @ |b|), in float64."""
    return sum_atol(a.shape[-1], a.double().abs() @ b.double().abs(), eps)


def assert_within(got: torch.Tensor, want: torch.Tensor, atol: float | torch.Tensor) -> None:
    """|got - want| <= atol elementwise (atol a number or a broadcastable tensor), with the worst offender shown."""
    diff = (got.double() - want.double()).abs()
    bound = torch.as_tensor(atol, dtype=torch.float64).broadcast_to(diff.shape)
    worst = int((diff - bound).flatten().argmax())
    assert float(diff.flatten()[worst]) <= float(bound.flatten()[worst]), (
        f"max |diff| {float(diff.max()):.3g} exceeds the bound (worst element {worst}: diff "
        f"{float(diff.flatten()[worst]):.3g}, bound {float(bound.flatten()[worst]):.3g})")
