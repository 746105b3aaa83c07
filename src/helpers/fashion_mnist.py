"""Fashion-MNIST (70,000 labelled 28x28 clothing images), the public quality benchmark.

Read from the IDX files of Debian's ``dataset-fashion-mnist`` package by default.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a NumPy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {np.prod(shape)} values, found {body.size}")
    return body.reshape(shape)


def missing(data_dir: str | Path = DEFAULT_DIR) -> str | None:
    """Why the data set cannot be read from ``data_dir`` and the one command that fixes it,
    or None when its four files are there."""
    data_dir = Path(data_dir)
    absent = [f"{prefix}-{kind}.gz" for prefix in ("train", "t10k")
              for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
              if not any((data_dir / f"{prefix}-{kind}{ext}").exists() for ext in (".gz", ""))]
    if not absent:
        return None
    if data_dir == DEFAULT_DIR:
        return (f"Fashion-MNIST is not installed ({data_dir} has no {absent[0]}); "
                "enable it with: sudo make system (Debian's dataset-fashion-mnist)")
    return f"{data_dir} has no {absent[0]}: pass data_dir a folder with the Fashion-MNIST IDX files"


def load(split: str = "train", data_dir: str | Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of the "train" or "test" split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    data_dir = Path(data_dir)
    found = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [data_dir / f"{prefix}-{kind}.gz", data_dir / f"{prefix}-{kind}"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise FileNotFoundError(
                f"{candidates[0]} not found: apt-get install dataset-fashion-mnist, or pass data_dir")
        found[kind] = read_idx(path)
    return found["images-idx3-ubyte"], found["labels-idx1-ubyte"]
