import gzip

import numpy as np
import pytest

from helpers import fashion_mnist


def test_reads_the_debian_files(fashion_mnist_data):
    assert fashion_mnist.missing() is None
    images, labels = fashion_mnist.load("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # the test split is balanced
    assert len(fashion_mnist.CLASSES) == 10


def test_idx_format_and_errors(tmp_path):
    body = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(n).to_bytes(4, "big") for n in body.shape)
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(header + body.tobytes())
    np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / "x.gz"), body)
    (tmp_path / "short").write_bytes(header + body.tobytes()[:-1])
    with pytest.raises(ValueError, match="expected 24 values"):
        fashion_mnist.read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion_mnist.load("train", tmp_path)
    assert "pass data_dir a folder" in fashion_mnist.missing(tmp_path)


def test_missing_data_is_named_with_the_command_that_installs_it(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIR", tmp_path / "absent")
    reason = fashion_mnist.missing(fashion_mnist.DEFAULT_DIR)
    assert "not installed" in reason and "sudo make system" in reason
    from helpers import evaluate

    assert evaluate.unavailable(["near-duplicates", "fashion-mnist"]) == {"fashion-mnist": reason}
    assert evaluate.unavailable(["near-duplicates"]) == {}
