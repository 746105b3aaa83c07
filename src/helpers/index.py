"""Nearest-neighbour search over L2-normalised vectors (cosine similarity).

``ExactIndex``: chunked float32 matrix products with a top-k per chunk; never builds the
N x N matrix, memory is bounded by ``chunk_size`` x N. It is the ground truth for recall.
"""
from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the k largest scores per row, best first (ties: lower index)."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.empty((len(scores), 0), np.int64), np.empty((len(scores), 0), scores.dtype)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(vals, order, axis=1)


class ExactIndex:
    """Brute-force cosine search; ``search`` and ``all_neighbors`` like the Annoy backend."""

    def __init__(self, vectors: np.ndarray, chunk_size: int | None = None):
        self.vectors = np.asarray(vectors, dtype=np.float32)
        # default: a score block of about 128 MB, whatever N is
        self.chunk_size = chunk_size or max(16, 2**25 // max(len(self.vectors), 1))

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
        """(indices, similarities) of the k most similar items per query row.

        ``exclude``: optional item row per query to leave out (the query itself).
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        n_out = min(k, len(self) - (exclude is not None))
        out_idx = np.empty((len(queries), n_out), np.int64)
        out_sim = np.empty((len(queries), n_out), np.float32)
        for start in range(0, len(queries), self.chunk_size):
            stop = min(start + self.chunk_size, len(queries))
            scores = queries[start:stop] @ self.vectors.T
            if exclude is not None:
                scores[np.arange(stop - start), exclude[start:stop]] = -np.inf
            idx, sim = top_k(scores, n_out)
            out_idx[start:stop], out_sim[start:stop] = idx, sim
        return out_idx, out_sim

    def all_neighbors(self, k: int, include_self: bool = False):
        """Top-k for every item in the index (the reference pipeline's job)."""
        rows = np.arange(len(self))
        return self.search(self.vectors, k, exclude=None if include_self else rows)
