"""Device-side statistics bus: `report(name, value)` anywhere, one host sync per tick (`Collector.sync`).

Every report adds [count, sum, sum of squares] of `value` (any shape, detached) into a float64 buffer that lives on
the value's device, with in-place ops only: no `.item()`, no host sync, no data-dependent shapes, so reporting is
safe inside a CUDA-graph-captured or compiled step once a name's buffer exists. `sync()` all-reduces the buffers
across ranks (when torch.distributed is initialised), copies them to the host once and resets them.
"""
from __future__ import annotations

import math

import torch

_DTYPE = torch.float64


class Collector:
    """Accumulates named moments on device; `sync()` returns {name: {'num', 'mean', 'std'}} and resets."""

    def __init__(self) -> None:
        self._acc: dict[str, torch.Tensor] = {}   # name -> [3] (count, sum, sum of squares)
        self._exps: dict[torch.device, torch.Tensor] = {}

    def _exponents(self, device: torch.device) -> torch.Tensor:
        e = self._exps.get(device)
        if e is None:
            e = self._exps[device] = torch.tensor([0.0, 1.0, 2.0], dtype=_DTYPE, device=device)
        return e

    def report(self, name: str, value: torch.Tensor | float) -> None:
        """Add the elements of `value` to series `name` (non-finite elements are counted as they are)."""
        value = torch.as_tensor(value).detach().flatten()
        if value.numel() == 0:
            return
        # [n, 3] = (v^0, v^1, v^2) in float64 by one broadcast pow (the cast happens inside it; x^0 = 1 also for
        # non-finite x, so the count is exact), then one sum: 3 kernels per report inside the training step.
        moments = torch.pow(value.unsqueeze(1), self._exponents(value.device)).sum(0)             # [3]
        acc = self._acc.get(name)
        if acc is None or acc.device != moments.device:
            self._acc[name] = moments.clone()
        else:
            acc.add_(moments)

    def reset(self) -> None:
        """Forget every series (a new run in the same process)."""
        self._acc = {}

    def names(self) -> list[str]:
        return sorted(self._acc)

    def sync(self, names: list[str] | None = None) -> dict[str, dict[str, float]]:
        """Reduce over ranks (all ranks must call with the same names) and return host-side means/stds."""
        names = sorted(names if names is not None else self._acc)
        if not names:
            return {}
        device = next(iter(self._acc.values())).device if self._acc else torch.device("cpu")
        stacked = torch.stack([self._acc[n].to(device) if n in self._acc else torch.zeros(3, dtype=_DTYPE,
                               device=device) for n in names])   # [N, 3]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stacked)
        host = stacked.cpu().tolist()
        for n in names:
            if n in self._acc:
                self._acc[n].zero_()
        out = {}
        for n, (cnt, s, sq) in zip(names, host):
            if cnt <= 0:
                continue
            mean = s / cnt
            var = max(sq / cnt - mean * mean, 0.0) if math.isfinite(sq) else float("nan")
            out[n] = {"num": cnt, "mean": mean, "std": math.sqrt(var) if math.isfinite(var) else float("nan")}
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().clone() for n, t in self._acc.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        self._acc = {n: t.to(device=device, dtype=_DTYPE).clone() for n, t in state.items()}


default_collector = Collector()


def report(name: str, value: torch.Tensor | float) -> None:
    """Report into the process-wide collector (the training loop syncs it once per tick)."""
    default_collector.report(name, value)
