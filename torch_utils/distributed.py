"""torch.distributed helpers for `torchrun` (env:// init): NCCL on CUDA, gloo on CPU, flat gradient all-reduce.

A single process without torchrun's environment runs with world size 1 and never touches torch.distributed.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist

from dnnlib.util import UserError


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(gpus: int) -> tuple[int, int, torch.device]:
    """Initialise the process group when launched by torchrun; returns (rank, world_size, device)."""
    if not launched_by_torchrun():
        if gpus > 1:
            raise UserError(f"gpus={gpus} needs torchrun: run `torchrun --nproc_per_node={gpus} train.py ...`.")
        return 0, 1, torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    world = int(os.environ["WORLD_SIZE"])
    if world != gpus:
        raise UserError(f"torchrun started {world} processes but the config says gpus={gpus}: pass --gpus {world}.")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return rank, world, device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Make every rank hold rank `src`'s parameters and buffers."""
    if not is_initialized():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=src)


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over ranks with one flat all-reduce (missing grads count as zeros)."""
    if not is_initialized():
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat.div_(get_world_size())
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        chunk = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity on one process)."""
    if is_initialized():
        dist.all_reduce(t)
    return t


def all_reduce_mean_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers of `module` over ranks (e.g. G's tracked w_avg), one flat all-reduce."""
    if not is_initialized():
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.flatten() for b in bufs])
    dist.all_reduce(flat)
    flat.div_(get_world_size())
    torch._foreach_copy_(bufs, [c.view_as(b) for c, b in zip(flat.split([b.numel() for b in bufs]), bufs)])
