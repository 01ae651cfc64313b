"""Portable network snapshots: a module is stored as (import path, JSON-serialisable constructor kwargs, state dict).

Unlike pickling the object (StyleGAN2-ADA embeds source code; stock pickle ties files to private module paths),
a portable record rebuilds with nothing but the installed package, and the kwargs are readable JSON.
Only classes decorated with @persistent_class in this project's packages may be rebuilt, with JSON-plain kwargs, so a
record can neither import arbitrary code nor call anything but a network constructor.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
from typing import Any

import torch

_ALLOWED_PREFIXES = ("training.", "torch_utils.", "metrics.")
_REGISTRY: set[str] = set()  # class paths of every @persistent_class (the only classes from_record builds)


def persistent_class(cls: type) -> type:
    """Class decorator: record the constructor arguments in `self.init_kwargs` (they must be JSON-serialisable)."""
    orig_init = cls.__init__
    sig = inspect.signature(orig_init)

    @functools.wraps(orig_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        record = {k: v for k, v in bound.arguments.items() if k != "self"}
        extra = record.pop("kwargs", None) if "kwargs" in sig.parameters else None
        if extra:
            record.update(extra)
        record = json.loads(json.dumps(record))  # Fail early on non-JSON kwargs; tuples become lists.
        orig_init(self, *args, **kwargs)
        self.init_kwargs = record

    cls.__init__ = __init__
    _REGISTRY.add(f"{cls.__module__}.{cls.__qualname__}")
    return cls


def class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def to_record(module: torch.nn.Module) -> dict:
    """Module -> {'class': 'pkg.mod.Class', 'kwargs': {...}, 'state': {name: CPU tensor}}."""
    if not hasattr(module, "init_kwargs"):
        raise TypeError(f"{class_path(module)} is not decorated with @persistent_class")
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return {"class": class_path(module), "kwargs": dict(module.init_kwargs), "state": state}


def resolve_class(path: str) -> type:
    """The @persistent_class class at `path` ('pkg.module.Class'); ValueError for anything else."""
    if not isinstance(path, str) or not path.startswith(_ALLOWED_PREFIXES) or "." not in path:
        raise ValueError(f"refusing to rebuild class {str(path)[:100]!r}: only this project's network classes can be "
                         f"loaded")
    mod_name, _, cls_name = path.rpartition(".")
    if path not in _REGISTRY:  # the module may not be imported yet: importing one of our own modules is safe
        try:
            importlib.import_module(mod_name)
        except (ImportError, ValueError):  # no such module (or a malformed name): refused just below
            pass
    if path not in _REGISTRY:
        raise ValueError(f"refusing to rebuild {path!r}: it is not a network class of this project")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    if not isinstance(cls, type):
        raise ValueError(f"refusing to rebuild {path!r}: not a class")
    return cls


def _is_plain(value: Any, depth: int = 0) -> bool:
    """JSON-like data only: what @persistent_class records as constructor kwargs."""
    if depth > 16:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def from_record(record: dict, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild a module from `to_record` output. Every parameter and buffer must be present with the module's own
    shape and dtype, and hold finite values where it is floating point; ValueError names the first one that does not."""
    if not (isinstance(record, dict) and isinstance(record.get("kwargs"), dict)
            and isinstance(record.get("state"), dict)):
        raise ValueError("a network record must be a dict with 'class', 'kwargs' and 'state'")
    cls = resolve_class(record["class"])
    kwargs, state = record["kwargs"], record["state"]
    if not _is_plain(kwargs):
        raise ValueError(f"the constructor arguments of {record['class']} are not plain data")
    module = cls(**kwargs)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{record['class']}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    for name, ref in own.items():
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"'{name}' is a {type(got).__name__}, not a tensor")
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise ValueError(f"'{name}' has shape {list(got.shape)} and dtype {got.dtype}; the network built from "
                             f"the recorded arguments expects {list(ref.shape)} and {ref.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ValueError(f"'{name}' holds NaN or infinite values")
    module.load_state_dict(state, strict=True)
    return module.to(device)
