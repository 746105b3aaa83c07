import pickle
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
