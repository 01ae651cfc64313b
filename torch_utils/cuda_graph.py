"""Whole-step CUDA graph capture for launch-bound training steps (batch 4 at 32x32 is ~1 ms of GPU work but
~15-30 ms of kernel launches in eager mode).

`StepGraph(fn)` wraps a zero-argument callable that reads static input buffers and updates state in place
(parameters, optimiser moments, statistics accumulators, counters) without host syncs. The first `warmup` calls run
eagerly on a side stream (they are real steps); the next call captures the graph and replays it, so every call
performs exactly one step. Requirements on `fn`: static shapes, no .item()/boolean masks, randomness from the
default CUDA generator or from CUDA generators passed in `generators` (registered with the graph, so each
replay advances their Philox offsets), optimisers with capturable=True and
gradients zeroed with set_to_none=False. On CPU, or with enabled=False, `StepGraph` simply calls `fn`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class StepGraph:
    """Capture `fn` as a CUDA graph after `warmup` eager calls; replay it afterwards."""

    def __init__(self, fn: Callable[[], Any], device: torch.device | str, warmup: int = 3, enabled: bool = True,
                 pool: Any = None, generators: list[torch.Generator] | tuple = ()) -> None:
        self.fn = fn
        self.device = torch.device(device)
        self.enabled = bool(enabled) and self.device.type == "cuda"
        self.warmup = int(warmup)
        self.pool = pool
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0
        self.output: Any = None
        self.generators = [g for g in generators if g.device.type == "cuda"]

    def __call__(self) -> Any:
        self.calls += 1
        if not self.enabled:
            return self.fn()
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self.fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if self.graph is None:
            torch.cuda.synchronize(self.device)
            self.graph = torch.cuda.CUDAGraph()
            for gen in self.generators:  # Explicit CUDA generators must be registered to advance on each replay.
                self.graph.register_generator_state(gen)
            with torch.cuda.graph(self.graph, pool=self.pool):
                self.output = self.fn()
        self.graph.replay()
        return self.output
