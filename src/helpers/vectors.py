"""Vector arithmetic shared by the steps: unit length, and the plane of a map."""
from __future__ import annotations

import numpy as np


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def first_two_components(vectors: np.ndarray) -> np.ndarray:
    """(n, 2) coordinates on the first two principal components (zeros below two rows)."""
    x = np.asarray(vectors, dtype=np.float32)
    if len(x) < 2:
        return np.zeros((len(x), 2), np.float32)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32)
