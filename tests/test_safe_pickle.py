"""dnnlib.safe_pickle: plain data and tensors load; every code-running global is refused by name; nothing runs."""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from crafted_pickles import Reduce, StorageBlob, hostile_pickles
from dnnlib import safe_pickle as sp


def _tensors() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "view": torch.arange(12, dtype=torch.float32).reshape(3, 4)[:, 1:3],  # offset + non-contiguous stride
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "f16": torch.randn(2, 2, generator=g).half(),
        "bf16": torch.randn(3, generator=g).bfloat16(),
        "i64": torch.arange(-3, 3),
        "u8": torch.arange(7, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tensors_round_trip_bit_exact(protocol):
    data = {"t": _tensors(), "od": OrderedDict(a=1, b=[1, 2.5, "x", None]), "bytes": b"\x00\xff", "set": {1, 2}}
    out = sp.safe_loads(pickle.dumps(data, protocol=protocol))
    for key, ref in data["t"].items():
        got = out["t"][key]
        assert got.dtype == ref.dtype and got.shape == ref.shape, key
        assert torch.equal(got, ref.detach()), key
    assert isinstance(out["t"]["param"], torch.nn.Parameter)
    assert out["od"] == data["od"] and isinstance(out["od"], OrderedDict)
    assert out["bytes"] == data["bytes"] and out["set"] == data["set"]


def test_numpy_arrays_and_scalars():
    data = {"a": np.arange(6.0).reshape(2, 3), "big": np.arange(4, dtype=">i4"), "f": np.asfortranarray(np.eye(2)),
            "s": np.float64(0.25), "i": np.int32(-7)}
    out = sp.safe_loads(pickle.dumps(data, protocol=4), sp.allow(sp.TENSOR_GLOBALS, sp.NUMPY_GLOBALS))
    for key, ref in data.items():
        got = np.asarray(out[key])
        assert np.array_equal(got, ref) and got.dtype.newbyteorder("=") == ref.dtype.newbyteorder("="), key
    assert type(out["s"]) is np.float64


def test_numpy_globals_are_not_in_the_default_table():
    with pytest.raises(sp.ForbiddenGlobalError):
        sp.safe_loads(pickle.dumps(np.zeros(2)))


@pytest.mark.parametrize("name", ["eval", "exec", "os.system", "subprocess", "getattr", "torch.load",
                                  "nested pickle", "storage blob with a payload", "numpy object array"])
def test_payloads_are_refused_and_never_run(tmp_path, name):
    sentinel = tmp_path / "sentinel"
    blob = hostile_pickles(sentinel)[name]
    table = sp.allow(sp.TENSOR_GLOBALS, sp.NUMPY_GLOBALS)
    with pytest.raises(pickle.UnpicklingError) as exc:
        sp.safe_loads(blob, table)
    assert not sentinel.exists()
    refused = {(m, n) for m, n in sp.find_globals(blob) if (m, n) not in table}
    if name == "storage blob with a payload":  # the refused global is inside the storage bytes
        refused = {("builtins", "exec")}
    if isinstance(exc.value, sp.ForbiddenGlobalError):
        assert (exc.value.module, exc.value.name) in refused
        assert f"'{exc.value.module}.{exc.value.name}'" in str(exc.value)
    # The same bytes do run under an unrestricted unpickler: the test above is about a live payload.
    try:
        pickle.loads(blob)
    except Exception:
        pass
    assert sentinel.exists()


def test_find_globals_lists_names_without_loading(tmp_path):
    blob = hostile_pickles(tmp_path / "sentinel")["os.system"]
    assert (("posix", "system") in sp.find_globals(blob)) or (("nt", "system") in sp.find_globals(blob))
    assert not (tmp_path / "sentinel").exists()
    with pytest.raises(ValueError):
        sp.find_globals(b"\x80\x04not a pickle")


def _storage_blob(t: torch.Tensor) -> bytes:
    return t.__reduce_ex__(4)[1][0].__reduce__()[1][0]


def test_tensor_reaching_past_its_storage_is_refused():
    blob = _storage_blob(torch.zeros(4))
    bad = Reduce(torch._utils._rebuild_tensor_v2, StorageBlob(blob), 2, (3,), (1,), False, OrderedDict())
    with pytest.raises(pickle.UnpicklingError, match="past its storage"):
        sp.safe_loads(pickle.dumps(bad))
    ok = Reduce(torch._utils._rebuild_tensor_v2, StorageBlob(blob), 1, (3,), (1,), False, OrderedDict())
    assert torch.equal(sp.safe_loads(pickle.dumps(ok)), torch.zeros(3))


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_storage_data_is_refused(cut):
    blob = _storage_blob(torch.arange(10.0))
    with pytest.raises(pickle.UnpicklingError):
        sp.load_storage_bytes(blob[: int(len(blob) * cut)])


def test_zip_storage_blob_and_cuda_location_tag():
    buf = io.BytesIO()
    torch.save(torch.arange(5, dtype=torch.float64).untyped_storage(), buf)
    got = sp.load_storage_bytes(buf.getvalue())
    assert got.dtype == torch.uint8 and got.numel == 40
    assert torch.equal(got.data.view(torch.float64), torch.arange(5, dtype=torch.float64))
    legacy = _storage_blob(torch.arange(3.0)).replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    assert torch.equal(sp.load_storage_bytes(legacy).data, torch.arange(3.0))


def test_allow_merges_and_checks_keys():
    table = sp.allow(sp.TENSOR_GLOBALS, {("m", "f"): len})
    assert table[("m", "f")] is len and ("torch._utils", "_rebuild_tensor_v2") in table
    with pytest.raises(TypeError):
        sp.allow({"m.f": len})
