import gzip

import numpy as np
import pytest

from helpers import fashion_mnist


def test_reads_the_debian_files():
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
