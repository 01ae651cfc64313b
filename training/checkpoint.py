"""Network snapshots (`network-snapshot-NNNNNN.pkl`) and the one reader for every file a user hands us.

A snapshot is data, not a program. It is a `torch.save` archive (zip) of plain containers and tensors:
{'format': 'hypernerfgan-snapshot/2', 'G': record, 'G_ema': record, 'D': record or None, 'augment_pipe': record or
None, 'training_set_kwargs': dict, 'config': dict, 'kimg': float}, where each record is
torch_utils.persistence.to_record(module): {'class': 'training....Class', 'kwargs': JSON-plain dict, 'state':
{name: tensor}}. Loading rebuilds each module from its constructor kwargs and checks every tensor against it.

`read_data_file` is the single entry to any snapshot or training state: a zip archive is read with
`torch.load(weights_only=True)`; a bare pickle (snapshots in the earlier 'hypernerfgan-snapshot/1' format, written by
`pickle.dump`) is read with dnnlib.safe_pickle, which resolves only the tensor-rebuilding globals such files use and
never unpickles a storage with full power. Neither path can run code from the file.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any

import torch

from dnnlib import safe_pickle
from dnnlib.util import EasyDict, UserError, atomic_write_bytes
from torch_utils import persistence

SNAPSHOT_FORMAT = "hypernerfgan-snapshot/2"
LEGACY_SNAPSHOT_FORMAT = "hypernerfgan-snapshot/1"  # pickle.dump of the same dict; still read (safely)
_MODULE_KEYS = ("G", "G_ema", "D", "augment_pipe")
_ZIP_MAGIC = b"PK\x03\x04"


def save_network_snapshot(path: str | os.PathLike, *, G: torch.nn.Module, G_ema: torch.nn.Module,
                          D: torch.nn.Module | None = None, augment_pipe: torch.nn.Module | None = None,
                          training_set_kwargs: dict | None = None, config: dict | None = None,
                          kimg: float = 0.0) -> None:
    """Write a snapshot atomically (temp file + rename): a torch.save archive of plain data."""
    data: dict[str, Any] = {"format": SNAPSHOT_FORMAT, "training_set_kwargs": dict(training_set_kwargs or {}),
                            "config": dict(config or {}), "kimg": float(kimg)}
    for key, module in zip(_MODULE_KEYS, (G, G_ema, D, augment_pipe)):
        data[key] = None if module is None else persistence.to_record(module)
    buf = io.BytesIO()  # serialise first: a full disk then fails in a plain write, with a clear OSError
    torch.save(data, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_data_file(path: str | os.PathLike, what: str) -> Any:
    """Read a snapshot or training state without running code from it. UserError (one paragraph) on any problem.

    `what` names the file kind in messages ('network snapshot', 'training state').
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"The {what} '{path}' was not found (no such file).")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0)
            if head == _ZIP_MAGIC:
                return torch.load(f, map_location="cpu", weights_only=True)
            return safe_pickle.safe_load(f, safe_pickle.TENSOR_GLOBALS)
    except safe_pickle.ForbiddenGlobalError as exc:
        raise UserError(f"Refusing to load the {what} '{path}': {exc}. It was not written by this project's "
                        f"train.py; code in files is never executed. See SECURITY.md.") from exc
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
            m = re.search(r"GLOBAL ([\w.]+)", str(exc))
            reason = (f"the file refers to the Python global '{m.group(1)}', which this reader does not resolve" if m
                      else "the file holds objects other than plain data and tensors")
            m = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|\n|$)", str(exc))
            if m and "GLOBAL" not in m.group(1):
                reason += f" ({m.group(1).strip()[:200]})"
            raise UserError(f"Refusing to load the {what} '{path}': {reason}. It was not written by this project's "
                            f"train.py; code in files is never executed. See SECURITY.md.") from exc
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"Cannot read the {what} '{path}': the file is truncated, corrupt, or not a {what} of this "
                        f"project ({type(exc).__name__}: {detail}).") from exc


def load_network_snapshot(path: str | os.PathLike, device: torch.device | str = "cpu") -> EasyDict:
    """Load a snapshot written by save_network_snapshot (either format). Raises UserError with a clear message."""
    path = os.fspath(path)
    from training import official
    if os.path.isfile(path) and official.is_authors_snapshot(path):   # the authors' released models
        return official.load_authors_snapshot(path, device)          # (docs/AUTHORS_MODELS.md)
    data = read_data_file(path, "network snapshot")
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt not in (SNAPSHOT_FORMAT, LEGACY_SNAPSHOT_FORMAT):
        kind = f"format '{str(fmt)[:60]}'" if isinstance(fmt, str) else f"a {type(data).__name__} without a format tag"
        if fmt == "hypernerfgan-training-state/1":
            raise UserError(f"'{path}' is a training state, not a network snapshot. Pass a network-snapshot-NNNNNN.pkl "
                            f"(a training state is for train.py --resume).")
        raise UserError(f"'{path}' is not a network snapshot of this project (found {kind}; expected "
                        f"'{SNAPSHOT_FORMAT}'). Pass a network-snapshot-NNNNNN.pkl written by train.py.")
    kimg = data.get("kimg")
    out = EasyDict(training_set_kwargs=_plain_dict(data.get("training_set_kwargs")),
                   config=_plain_dict(data.get("config")), kimg=float(kimg) if isinstance(kimg, (int, float)) else 0.0,
                   format=fmt)
    for key in _MODULE_KEYS:
        rec = data.get(key)
        if rec is None and key in ("G", "G_ema"):
            raise UserError(f"Snapshot '{path}' holds no '{key}' network.")
        try:
            out[key] = None if rec is None else persistence.from_record(rec, device=device).eval().requires_grad_(False)
        except Exception as exc:
            raise UserError(f"Snapshot '{path}' holds a '{key}' network that cannot be rebuilt: "
                            f"{' '.join(str(exc).split())[:300]}.") from exc
    return out


def _plain_dict(value: Any) -> dict:
    return dict(value) if isinstance(value, dict) else {}

