import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from helpers.models import weights_path
from helpers.torch_weights import UnsafeWeightsError, load_state_dict

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["tiny_zip.pth", "tiny_legacy.pth"])
def test_both_pytorch_formats(name):
    state = load_state_dict(FIXTURES / name)
    assert list(state) == ["weight", "transposed", "steps"]
    np.testing.assert_array_equal(state["weight"], np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(state["transposed"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert state["steps"] == 7 and state["steps"].dtype == np.int64


def test_real_weights_wheel():
    state = load_state_dict(weights_path("efficientnet-lite0"))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in state.values())


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch should-not-exist",))


def _legacy_file(path: Path, payload) -> Path:
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, payload, []):
            pickle.dump(obj, f, protocol=2)
    return path


def test_code_in_a_weights_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = _legacy_file(tmp_path / "evil.pth", {"weight": _Evil()})
    with pytest.raises(UnsafeWeightsError, match="system"):
        load_state_dict(evil)
    assert not (tmp_path / "should-not-exist").exists()


def test_not_a_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    with open(bad, "wb") as f:
        pickle.dump(12345, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="magic"):
        load_state_dict(bad)


def test_truncated_weights_file(tmp_path):
    data = (FIXTURES / "tiny_legacy.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:-8])
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        load_state_dict(cut)


# --- crafted files: the reader trusts no size, stride, offset or reference in them ------------
class _Ref:
    """A storage as a .pth file names it (pickled as a persistent id)."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


def _crafted_zip(path: Path, state, storages: dict, monkeypatch) -> Path:
    """Write ``state`` (with ``_Tensor`` values) the way torch's zip format does, using stand-in
    torch globals (torch is not installed, and must not be needed)."""
    import collections
    import io
    import sys
    import types
    import zipfile

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__, _rebuild_tensor_v2.__qualname__ = "FloatStorage", "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    _Tensor.rebuild, _Tensor.meta = _rebuild_tensor_v2, collections.OrderedDict

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel) if isinstance(obj, _Ref) else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


class _Tensor:
    def __init__(self, storage: _Ref, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return type(self).rebuild, (*self.args, False, type(self).meta())


FOUR_BYTES = {"0": np.float32(1.5).tobytes()}


@pytest.mark.parametrize("offset, size, stride, what", [
    (0, (64, 64), (64, 1), "a 4-byte storage read as a 16 KB tensor (process memory)"),
    (0, (2,), (2 ** 40,), "a stride of 2**40 (segfault)"),
    (1, (), (), "an offset past the storage"),
    (0, (-1,), (1,), "a negative size"),
    (-3, (1,), (1,), "a negative offset"),
    (0, (True,), (1,), "a size that is not a count"),
])
def test_tensor_views_outside_their_storage_are_refused(tmp_path, monkeypatch, offset, size, stride, what):
    state = {"w": _Tensor(_Ref("0", 1), offset, size, stride)}
    crafted = _crafted_zip(tmp_path / "crafted.pth", state, FOUR_BYTES, monkeypatch)
    with pytest.raises(UnsafeWeightsError):
        load_state_dict(crafted)


def test_a_crafted_file_that_is_in_bounds_still_loads(tmp_path, monkeypatch):
    storages = {"0": np.arange(6, dtype=np.float32).tobytes()}
    state = {"w": _Tensor(_Ref("0", 6), 0, (2, 3), (3, 1)), "t": _Tensor(_Ref("0", 6), 1, (2,), (3,))}
    loaded = load_state_dict(_crafted_zip(tmp_path / "fine.pth", state, storages, monkeypatch))
    np.testing.assert_array_equal(loaded["w"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(loaded["t"], [1, 4])


def test_shared_nested_references_are_refused(tmp_path, monkeypatch):
    """A few hundred bytes whose dicts share each other: walking them doubles per level."""
    level = {"w": _Tensor(_Ref("0", 1), 0, (), ())}
    for _ in range(22):
        level = {"a": level, "b": level}
    crafted = _crafted_zip(tmp_path / "shared.pth", level, FOUR_BYTES, monkeypatch)
    assert crafted.stat().st_size < 2000
    with pytest.raises(UnsafeWeightsError, match="shares or nests"):
        load_state_dict(crafted)


def test_a_legacy_storage_longer_than_the_file_is_refused(tmp_path):
    data = bytearray((FIXTURES / "tiny_legacy.pth").read_bytes())
    at = data.rfind(struct.pack("<q", 12))  # the element count written before the first storage's bytes
    assert at > 0
    for claim in (-1, 2 ** 61):
        data[at:at + 8] = struct.pack("<q", claim)
        (tmp_path / "long.pth").write_bytes(bytes(data))
        with pytest.raises(pickle.UnpicklingError, match="claims"):
            load_state_dict(tmp_path / "long.pth")
