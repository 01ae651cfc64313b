"""Hostile pickles for the loader tests. Each payload, if it ever ran, would create the file `sentinel`.

Loading these with plain `pickle.load` WOULD run them: the tests only hand them to the safe readers.
"""
from __future__ import annotations

import builtins
import importlib
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


class Reduce:
    """Pickles as `fn(*args)`: what a crafted file can ask an unrestricted unpickler to call."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args

    def __call__(self, *args: Any) -> Any:  # pickle wants a callable first item; this one is only ever pickled
        raise TypeError("not to be called")


class StorageBlob:
    """Pickles as `torch.storage._load_from_bytes(blob)`, the call a tensor's storage is written as."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple:
        return torch.storage._load_from_bytes, (self.blob,)


def payloads(sentinel: Path) -> dict[str, Any]:
    """name -> an object whose pickle runs code that writes `sentinel` when unpickled without restriction."""
    s = str(sentinel)
    touch_code = f"open({s!r}, 'w').write('ran')"
    inner = pickle.dumps(Reduce(builtins.exec, touch_code))
    evil_file = Path(s + ".inner.pkl")
    evil_file.write_bytes(inner)
    return {
        "eval": Reduce(builtins.eval, touch_code),
        "exec": Reduce(builtins.exec, touch_code),
        "os.system": Reduce(os.system, f"touch '{s}'"),
        "subprocess": Reduce(subprocess.call, ["touch", s]),
        "getattr": Reduce(Reduce(builtins.getattr, Reduce(importlib.import_module, "os"), "system"), f"touch '{s}'"),
        # torch.load with a pickle_module: weights_only defaults to False then
        "torch.load": Reduce(torch.load, str(evil_file), None, Reduce(importlib.import_module, "pickle")),
        "nested pickle": Reduce(pickle.loads, inner),
        "storage blob with a payload": StorageBlob(inner),
        "numpy object array": np.array([Reduce(builtins.exec, touch_code), 1], dtype=object),
    }


def hostile_pickles(sentinel: Path) -> dict[str, bytes]:
    """name -> pickle bytes (protocol 4) of a dict that looks like a snapshot but carries a payload."""
    out = {}
    for name, obj in payloads(sentinel).items():
        data = {"format": "hypernerfgan-snapshot/1", "payload": obj, "kimg": 0.0}
        out[name] = pickle.dumps(data, protocol=4)
    return out
