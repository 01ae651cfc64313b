"""Portable network snapshots: a module is stored as (import path, JSON-serialisable constructor kwargs, state dict).

Unlike pickling the object (StyleGAN2-ADA embeds source code; stock pickle ties files to private module paths),
a portable record rebuilds with nothing but the installed package, and the kwargs are readable JSON.
Only classes from this project's packages may be rebuilt, so loading a snapshot never imports arbitrary code.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
from typing import Any

import torch

_ALLOWED_PREFIXES = ("training.", "torch_utils.", "metrics.")


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
    if not path.startswith(_ALLOWED_PREFIXES):
        raise ValueError(f"refusing to rebuild class {path!r}: only this project's classes can be loaded")
    mod_name, _, cls_name = path.rpartition(".")
    return getattr(importlib.import_module(mod_name), cls_name)


def from_record(record: dict, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild a module from `to_record` output; every parameter and buffer must match (strict)."""
    cls = resolve_class(record["class"])
    module = cls(**record["kwargs"])
    module.load_state_dict(record["state"], strict=True)
    return module.to(device)
