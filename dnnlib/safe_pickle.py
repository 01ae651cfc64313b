"""Reading pickles without running code from them.

A pickle is a small program: every `module.name` it mentions is imported and may be called with arguments taken from
the file. `pickle.load` therefore runs whatever the file asks for. This module reads pickles through an Unpickler
that resolves only an explicit table of exact `(module, name)` pairs, each mapped to a stand-in written here that
checks its arguments and builds plain data. Any other global ends the load with `ForbiddenGlobalError`, whose message
names the global; the file is never executed.

Tensors. `pickle.dump` of a torch tensor writes `torch._utils._rebuild_tensor_v2(storage, ...)` with the storage as
`torch.storage._load_from_bytes(blob)`; the real `_load_from_bytes` runs a full `torch.load(weights_only=False)` of
the blob, which is as unsafe as `pickle.load`. Here the blob is parsed by `load_storage_bytes` (torch's legacy
one-storage stream or a zip archive, read through the same restricted Unpickler) into a `StorageData`, and
`rebuild_tensor` checks the size, stride and offset against it. Nothing is ever unpickled with full power.

Public API:
    SafeUnpickler(file, allowed, persistent_load=None)   the restricted Unpickler (subclass it to extend)
    safe_load(file, allowed=TENSOR_GLOBALS), safe_loads(data, allowed=TENSOR_GLOBALS)
    ForbiddenGlobalError                                 raised for a global outside the table (.module, .name)
    TENSOR_GLOBALS, NUMPY_GLOBALS, CONTAINER_GLOBALS     ready tables (read-only mappings); merge with allow(...)
    load_storage_bytes(blob) -> StorageData              one torch storage from its serialised bytes
    rebuild_tensor(...), rebuild_parameter(...)          the stand-ins for torch._utils' rebuild functions
    find_globals(data) -> list[(module, name)]           the globals a pickle names, found without loading it

Example, a reader for a format that also holds `mylib.Point(x, y)` records:

    table = allow(TENSOR_GLOBALS, {("mylib", "Point"): lambda x, y: {"x": float(x), "y": float(y)}})
    data = safe_load(open(path, "rb"), table)
"""
from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import IO, Any, Callable, Mapping

import numpy as np
import torch

__all__ = [
    "ForbiddenGlobalError", "SafeUnpickler", "safe_load", "safe_loads", "allow", "StorageData", "load_storage_bytes",
    "rebuild_tensor", "rebuild_parameter", "find_globals", "TENSOR_GLOBALS", "NUMPY_GLOBALS", "CONTAINER_GLOBALS",
    "STORAGE_DTYPES",
]

GlobalTable = Mapping[tuple[str, str], Any]


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The pickle names a global outside the reader's table. `module` and `name` say which one."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        super().__init__(f"the file refers to the Python global '{module}.{name}', which this reader does not "
                         f"resolve (only plain data and tensors are read, and no code from the file is run)")


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the exact `(module, name)` pairs of `allowed`, to the values given there.

    `persistent_load(pid)`, if given, resolves persistent ids (e.g. storages of a torch zip archive); without it, a
    persistent id is refused. No import is ever made on behalf of the file.
    """

    def __init__(self, file: IO[bytes], allowed: GlobalTable,
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise ForbiddenGlobalError(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("the file uses a persistent id, which this reader does not resolve")
        return self._persistent(pid)


def safe_load(file: IO[bytes], allowed: GlobalTable | None = None) -> Any:
    """Read one pickle from a binary file object through `SafeUnpickler` (default table: `TENSOR_GLOBALS`)."""
    return SafeUnpickler(file, TENSOR_GLOBALS if allowed is None else allowed).load()


def safe_loads(data: bytes, allowed: GlobalTable | None = None) -> Any:
    """`safe_load` of a bytes object."""
    return safe_load(io.BytesIO(data), allowed)


def allow(*tables: GlobalTable) -> dict[tuple[str, str], Any]:
    """Merge global tables (later tables win) into a new dict, e.g. `allow(TENSOR_GLOBALS, NUMPY_GLOBALS, mine)`."""
    out: dict[tuple[str, str], Any] = {}
    for table in tables:
        for key, value in table.items():
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
                raise TypeError(f"global table keys must be (module, name) string pairs, got {key!r}")
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Storages

STORAGE_DTYPES: Mapping[str, torch.dtype] = MappingProxyType({
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
})
"""Storage class names of `torch` (as a pickle names them) and the element type each holds."""

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class StorageData:
    """A deserialised torch storage: `data` is a 1-D CPU tensor of `dtype` holding every element of the storage."""
    dtype: torch.dtype
    data: torch.Tensor

    @property
    def numel(self) -> int:
        return int(self.data.numel())


class _StorageType:
    """What a storage class name resolves to inside a storage stream: only its element type."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("a storage class may only appear in a storage record")


_STORAGE_TYPE_GLOBALS: Mapping[tuple[str, str], Any] = MappingProxyType({
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    ("torch.storage", "UntypedStorage"): _StorageType(torch.uint8),
    ("torch", "UntypedStorage"): _StorageType(torch.uint8),
})


@dataclass(frozen=True)
class _StorageRef:
    dtype: torch.dtype
    key: str
    numel: int


def _storage_ref(pid: Any) -> _StorageRef:
    """Check a ('storage', type, key, location, numel[, None]) persistent id; the location is ignored (-> CPU)."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and pid[5:] in ((), (None,))):
        raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]!r} (only storage records are read)")
    _, stype, key, location, numel = pid[:5]
    if not isinstance(stype, _StorageType):
        raise pickle.UnpicklingError("storage record without a storage class")
    if not (isinstance(key, str) and isinstance(location, str) and type(numel) is int and numel >= 0):
        raise pickle.UnpicklingError("malformed storage record")
    return _StorageRef(stype.dtype, key, numel)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _tensor_from_bytes(raw: bytes, dtype: torch.dtype, numel: int) -> torch.Tensor:
    if len(raw) != numel * _element_size(dtype):
        raise pickle.UnpicklingError(f"storage data holds {len(raw)} bytes, expected {numel} elements of {dtype}")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype)


def _load_legacy_storage(blob: bytes) -> StorageData:
    """torch's pre-zip `torch.save` stream of one storage: five protocol-2 pickles, then the raw elements."""
    f = io.BytesIO(blob)

    def next_pickle(persistent_load: Callable[[Any], Any] | None = None) -> Any:
        return SafeUnpickler(f, _STORAGE_TYPE_GLOBALS, persistent_load).load()

    if next_pickle() != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("storage data does not start with torch's serialisation magic number")
    if next_pickle() != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("storage data has an unknown serialisation protocol version")
    sys_info = next_pickle()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise pickle.UnpicklingError("storage data is not little-endian")
    refs: list[_StorageRef] = []

    def persistent(pid: Any) -> _StorageRef:
        refs.append(_storage_ref(pid))
        return refs[-1]

    root = next_pickle(persistent)
    if not (isinstance(root, _StorageRef) and len(refs) == 1):
        raise pickle.UnpicklingError("storage data does not hold exactly one storage")
    keys = next_pickle()
    if keys != [root.key]:
        raise pickle.UnpicklingError("storage data lists unexpected storage keys")
    header = f.read(8)
    if len(header) != 8 or struct.unpack("<q", header)[0] != root.numel:
        raise pickle.UnpicklingError("storage data element count does not match its record")
    return StorageData(root.dtype, _tensor_from_bytes(f.read(), root.dtype, root.numel))


def _load_zip_storage(blob: bytes) -> StorageData:
    """A zip-archive `torch.save` of one storage: `<dir>/data.pkl` plus `<dir>/data/<key>` raw elements."""
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise pickle.UnpicklingError("storage archive has no single data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        refs: list[_StorageRef] = []

        def persistent(pid: Any) -> _StorageRef:
            refs.append(_storage_ref(pid))
            return refs[-1]

        root = SafeUnpickler(io.BytesIO(zf.read(pkl[0])), _STORAGE_TYPE_GLOBALS, persistent).load()
        if not (isinstance(root, _StorageRef) and len(refs) == 1):
            raise pickle.UnpicklingError("storage archive does not hold exactly one storage")
        member = f"{prefix}data/{root.key}"
        if member not in names:
            raise pickle.UnpicklingError(f"storage archive lacks its data member {member!r}")
        return StorageData(root.dtype, _tensor_from_bytes(zf.read(member), root.dtype, root.numel))


def load_storage_bytes(blob: bytes) -> StorageData:
    """Parse the bytes `torch.storage._load_from_bytes` would receive, without unpickling anything with full power.

    Accepts torch's legacy one-storage stream (what `pickle.dump` of a tensor writes, in every torch version) and a zip
    archive of one storage. Device tags are ignored: the result is always on the CPU.
    """
    if not isinstance(blob, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage data must be bytes")
    blob = bytes(blob)
    if blob.startswith(b"PK\x03\x04"):
        return _load_zip_storage(blob)
    return _load_legacy_storage(blob)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(value, (tuple, list)) and all(type(v) is int for v in value)):
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of integers")
    return tuple(value)


def _check_hooks(hooks: Any) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and len(hooks) == 0):
        raise pickle.UnpicklingError("tensors with backward hooks are not read")


def rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                   backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """Stand-in for `torch._utils._rebuild_tensor_v2`: a CPU tensor viewing `storage`, bounds-checked, then copied."""
    if not isinstance(storage, StorageData):
        raise pickle.UnpicklingError("a tensor must be built from a storage record")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if type(storage_offset) is not int or storage_offset < 0 or len(size) != len(stride):
        raise pickle.UnpicklingError("malformed tensor record")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError("tensor record with a negative size or stride")
    _check_hooks(backward_hooks)
    if metadata is not None and not (isinstance(metadata, dict) and len(metadata) == 0):
        raise pickle.UnpicklingError("tensors with extra metadata are not read")
    if 0 in size:
        return torch.empty(size, dtype=storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel:
        raise pickle.UnpicklingError(f"tensor of size {list(size)} reaches past its storage of {storage.numel} "
                                     f"elements")
    return torch.as_strided(storage.data, size, stride, storage_offset).clone()


def rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.nn.Parameter:
    """Stand-in for `torch._utils._rebuild_parameter`."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter must wrap a tensor")
    _check_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad) and data.is_floating_point())


def _load_from_bytes(blob: Any) -> StorageData:
    return load_storage_bytes(blob)


def _ordered_dict(*args: Any) -> OrderedDict:
    if len(args) > 1:
        raise pickle.UnpicklingError("OrderedDict takes at most one argument")
    return OrderedDict(*args)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Stand-in for `_codecs.encode`, which protocol-2 pickles use to write bytes: latin-1 text only."""
    if not (isinstance(text, str) and encoding == "latin1"):
        raise pickle.UnpicklingError("_codecs.encode is read only for latin-1 encoded bytes")
    return text.encode("latin1")


CONTAINER_GLOBALS: GlobalTable = MappingProxyType({
    ("collections", "OrderedDict"): _ordered_dict,
    ("_codecs", "encode"): _codecs_encode,
    **{(mod, name): cls for mod in ("builtins", "__builtin__")
       for name, cls in (("set", set), ("frozenset", frozenset))},
})
"""Plain containers that pickles spell as globals: OrderedDict, sets (protocol < 4) and bytes (protocol 2)."""

TENSOR_GLOBALS: GlobalTable = MappingProxyType({
    **CONTAINER_GLOBALS,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
})
"""CONTAINER_GLOBALS plus CPU tensors and parameters as `pickle.dump` writes them (torch 1.x and 2.x)."""


# ---------------------------------------------------------------------------------------------------------------------
# numpy arrays and scalars (numeric dtypes only: an object dtype would turn file bytes into object pointers)

class _NdarrayType:
    """What `numpy.ndarray` resolves to: a marker `_reconstruct` accepts; it builds nothing itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("numpy.ndarray may only appear as the type of a reconstructed array")


_NDARRAY = _NdarrayType()


class _DtypeSpec:
    """Stand-in for `numpy.dtype(spec, align, copy)` + its BUILD state: a plain numeric dtype and a byte order."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str) or len(spec) > 8:
            raise pickle.UnpicklingError("numpy dtypes are read only from a short type code")
        try:
            dtype = np.dtype(spec)
        except TypeError as exc:
            raise pickle.UnpicklingError(f"unknown numpy dtype {spec!r}") from exc
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biufcSU":
            raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not a plain numeric or string type")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")):
            raise pickle.UnpicklingError("malformed numpy dtype state")
        if state[3] is not None or state[4] is not None:
            raise pickle.UnpicklingError("structured numpy dtypes are not read")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _SafeArray(np.ndarray):
    """An ndarray whose unpickling state is checked (numeric dtype from `_DtypeSpec`, raw bytes of the right length).

    Use it like any ndarray; `np.asarray(x)` gives the plain base class.
    """

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        version, shape, spec, fortran, raw = state
        if not isinstance(spec, _DtypeSpec) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy arrays are read only with a plain dtype and raw bytes")
        shape = _int_tuple(shape, "shape")
        if any(n < 0 for n in shape) or int(np.prod(shape, dtype=np.int64)) * spec.dtype.itemsize != len(raw):
            raise pickle.UnpicklingError("numpy array data does not match its shape and dtype")
        super().__setstate__((version, shape, spec.dtype, bool(fortran), bytes(raw)))


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> _SafeArray:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy arrays are read")
    return _SafeArray((0,), dtype=np.uint8)


def _np_scalar(spec: Any, raw: Any) -> Any:
    if not isinstance(spec, _DtypeSpec) or not isinstance(raw, (bytes, bytearray)) or len(raw) != spec.dtype.itemsize:
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(bytes(raw), dtype=spec.dtype)[0]


NUMPY_GLOBALS: GlobalTable = MappingProxyType({
    **{(mod, "_reconstruct"): _np_reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "scalar"): _np_scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeSpec,
})
"""numpy arrays and scalars of numeric or string dtypes, as numpy 1.x and 2.x pickle them."""


# ---------------------------------------------------------------------------------------------------------------------
# Static inspection

def find_globals(data: bytes) -> list[tuple[str, str]]:
    """The `(module, name)` globals a pickle names, in order of first use, found by reading its opcodes only.

    Useful to tell what kind of file one holds (and to report every global a reader would refuse) before loading.
    Raises ValueError for bytes that are not a well-formed pickle.
    """
    found: list[tuple[str, str]] = []
    memo: dict[int, Any] = {}
    stack: list[Any] = []  # only string values are tracked; anything else is None
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                pair: Any = (module, attr)
                stack.append(None)
            elif name == "STACK_GLOBAL":
                attr, module = (stack.pop() if stack else None), (stack.pop() if stack else None)
                pair = (module, attr) if isinstance(module, str) and isinstance(attr, str) else None
                stack.append(None)
            else:
                pair = None
                if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    stack.append(arg)
                elif name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = stack[-1] if stack else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo.get(arg))
                elif name == "STOP":
                    break
                else:
                    stack.append(None)
            if pair is not None and pair not in found:
                found.append(pair)
    except Exception as exc:
        raise ValueError(f"not a well-formed pickle ({exc})") from exc
    return found
