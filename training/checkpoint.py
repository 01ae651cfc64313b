"""Network snapshots (`network-snapshot-NNNNNN.pkl`): portable records that load with only the installed package.

A snapshot is a pickle of plain data: {'format': 'hypernerfgan-snapshot/1', 'G': record, 'G_ema': record, 'D': record,
'augment_pipe': record or None, 'training_set_kwargs': dict, 'config': dict, 'kimg': float}, where each record is
torch_utils.persistence.to_record(module). Loading rebuilds the modules from their constructor kwargs + state dict.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any

import torch

from dnnlib.util import EasyDict, UserError, atomic_write_bytes
from torch_utils import persistence

SNAPSHOT_FORMAT = "hypernerfgan-snapshot/1"
_MODULE_KEYS = ("G", "G_ema", "D", "augment_pipe")


def save_network_snapshot(path: str | os.PathLike, *, G: torch.nn.Module, G_ema: torch.nn.Module,
                          D: torch.nn.Module | None = None, augment_pipe: torch.nn.Module | None = None,
                          training_set_kwargs: dict | None = None, config: dict | None = None,
                          kimg: float = 0.0) -> None:
    """Write a snapshot atomically (temp file + rename)."""
    data: dict[str, Any] = {"format": SNAPSHOT_FORMAT, "training_set_kwargs": dict(training_set_kwargs or {}),
                            "config": dict(config or {}), "kimg": float(kimg)}
    for key, module in zip(_MODULE_KEYS, (G, G_ema, D, augment_pipe)):
        data[key] = None if module is None else persistence.to_record(module)
    buf = io.BytesIO()
    pickle.dump(data, buf, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write_bytes(path, buf.getvalue())


class _RestrictedUnpickler(pickle.Unpickler):
    """Only plain containers and torch tensor storage may appear in a snapshot."""

    _ALLOWED_MODULES = ("torch", "collections", "builtins", "numpy", "_codecs")

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in self._ALLOWED_MODULES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in snapshot")


def load_network_snapshot(path: str | os.PathLike, device: torch.device | str = "cpu") -> EasyDict:
    """Load a snapshot written by save_network_snapshot. Raises UserError with a clear message on any problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"Network snapshot not found: '{path}'. Pass a network-snapshot-NNNNNN.pkl written by train.py.")
    from training import official
    if official.is_authors_snapshot(path):     # the authors' released models (docs/AUTHORS_MODELS.md)
        return official.load_authors_snapshot(path, device)
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except Exception as exc:
        raise UserError(f"Cannot read network snapshot '{path}': the file is corrupt or not a snapshot of this "
                        f"project ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
        raise UserError(f"'{path}' is not a {SNAPSHOT_FORMAT} file written by this project's train.py.")
    out = EasyDict(training_set_kwargs=data.get("training_set_kwargs", {}), config=data.get("config", {}),
                   kimg=data.get("kimg", 0.0))
    for key in _MODULE_KEYS:
        rec = data.get(key)
        try:
            out[key] = None if rec is None else persistence.from_record(rec, device=device).eval().requires_grad_(False)
        except Exception as exc:
            raise UserError(f"Snapshot '{path}' holds a '{key}' that cannot be rebuilt ({type(exc).__name__}: {exc}).") from exc
    return out
