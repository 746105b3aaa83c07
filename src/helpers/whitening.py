"""PCA-whitening learned on the catalog itself (01's ``postprocess="whiten"``); also the form
in which 01's ``adapt="whiten-pairs"`` is saved and applied (``helpers.adaptation``).

Centres the vectors, rotates them onto their principal axes and divides each axis by
the square root of its variance (plus a small floor, so near-empty axes of a small
catalog are not blown up), then L2-normalises. Frequent, uninformative directions
(the "every product photo looks a bit like this" component) stop dominating the cosine.

Unsupervised: learned from the run's own vectors, saved in the run folder (``runfolder.WHITENING``) and
applied by ``store.load_store`` to every reader of the run, and by ``search_by_image`` to
new query photos, so catalog and queries always get exactly the same transform.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runfolder import atomic_path
from .vectors import l2_normalise

POSTPROCESS = ("none", "whiten")
FLOOR = 0.1  # eigenvalue floor as a share of the mean eigenvalue (regularises small catalogs)


def is_learned(options: dict) -> bool:
    """Whether a run with these (recorded) options has a learned transform (``runfolder.WHITENING``):
    01's ``postprocess="whiten"``, or its ``adapt`` (``helpers.adaptation``), which saves one too."""
    return options.get("postprocess", "none") != "none" or options.get("adapt", "none") != "none"


@dataclass
class Whitening:
    mean: np.ndarray        # (dim,)
    projection: np.ndarray  # (dim, out_dim): principal axes divided by sqrt(variance)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised float32 rows; processed in blocks to bound memory."""
        vectors = np.asarray(vectors)
        out = np.empty((len(vectors), self.projection.shape[1]), np.float32)
        for start in range(0, len(vectors), 8192):
            block = np.asarray(vectors[start:start + 8192], dtype=np.float32) - self.mean
            out[start:start + len(block)] = l2_normalise(block @ self.projection)
        return out

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, projection=self.projection)

    @classmethod
    def identity(cls, dim: int) -> "Whitening":
        """No change (a catalog of one image has nothing to learn from)."""
        return cls(np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32))

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        with np.load(path) as data:
            return cls(data["mean"].astype(np.float32), data["projection"].astype(np.float32))


def learn(vectors: np.ndarray, dims: int | None = None, floor: float = FLOOR) -> Whitening:
    """Learn PCA-whitening from (n, dim) vectors, keeping ``dims`` axes (default: all that
    the data can support, at most dim and n - 1)."""
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"whitening needs at least 2 vectors, got {len(x)}")
    mean = x.mean(axis=0)
    covariance = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), 8192):
        block = x[start:start + 8192] - mean
        covariance += block.T @ block
    covariance /= len(x) - 1
    variance, axes = np.linalg.eigh(covariance)
    order = np.argsort(variance)[::-1]
    keep = min(dims or x.shape[1], x.shape[1], len(x) - 1)
    variance, axes = variance[order][:keep], axes[:, order][:, :keep]
    variance = np.maximum(variance, 0.0) + floor * max(float(variance.mean()), 1e-12)
    return Whitening(mean.astype(np.float32), (axes / np.sqrt(variance)).astype(np.float32))
