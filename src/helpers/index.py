"""Nearest-neighbour search over L2-normalised vectors (cosine similarity).

Two backends with one interface (``build``, ``save``, ``load``, ``search``, ``all_neighbors``):

- ``ExactIndex``: chunked float32 matrix products with a top-k per chunk; never builds the
  N x N matrix, memory is bounded by the chunk size. The ground truth for recall, and the
  fast path for small catalogs.
- ``AnnoyIndex``: Spotify's Annoy, angular metric, ``n_trees`` / ``search_k``, fixed seed,
  multi-threaded build and queries (Annoy releases the GIL), optional on-disk build.

Both return (indices, similarities) with similarity = cosine = 1 - d^2 / 2 for unit vectors.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BACKENDS = ("annoy", "exact")


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


def _n_threads(n_jobs: int) -> int:
    return max(1, os.cpu_count() or 1) if n_jobs in (-1, None) else max(1, n_jobs)


class ExactIndex:
    """Brute-force cosine search in chunks of queries."""

    backend = "exact"

    def __init__(self, vectors: np.ndarray, chunk_size: int | None = None):
        self.vectors = np.asarray(vectors, dtype=np.float32)
        # default: a score block of about 128 MB, whatever N is
        self.chunk_size = chunk_size or max(16, 2**25 // max(len(self.vectors), 1))

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
        """(indices, similarities) of the k most similar items per query row, best first.

        ``exclude``: optional item row per query to leave out (the query itself).
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        n_out = max(0, min(k, len(self) - (exclude is not None)))
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

    def save(self, path: str | Path) -> None:
        np.save(path, self.vectors)

    @classmethod
    def load(cls, path: str | Path) -> "ExactIndex":
        return cls(np.load(path, mmap_mode="r"))


class AnnoyIndex:
    """Annoy over unit vectors; the same inputs and seed give the same index file."""

    backend = "annoy"

    def __init__(self, dim: int, n_trees: int = 10, search_k: int = -1, seed: int = 42,
                 n_jobs: int = -1):
        from annoy import AnnoyIndex as _Annoy

        self.dim, self.n_trees, self.search_k, self.seed, self.n_jobs = dim, n_trees, search_k, seed, n_jobs
        self._annoy = _Annoy(dim, "angular")
        self._annoy.set_seed(seed)

    def __len__(self) -> int:
        return self._annoy.get_n_items()

    @classmethod
    def build(cls, vectors: np.ndarray, n_trees: int = 10, search_k: int = -1, seed: int = 42,
              n_jobs: int = -1, on_disk_path: str | Path | None = None) -> "AnnoyIndex":
        """Add every row of ``vectors`` as item i and build ``n_trees`` trees.

        ``on_disk_path``: build straight into that file (for indexes bigger than memory).
        """
        index = cls(vectors.shape[1], n_trees, search_k, seed, n_jobs)
        if on_disk_path is not None:
            index._annoy.on_disk_build(str(on_disk_path))
        for i, v in enumerate(vectors):
            index._annoy.add_item(i, v)
        index._annoy.build(n_trees, n_jobs=n_jobs)
        return index

    def save(self, path: str | Path) -> None:
        self._annoy.save(str(path))

    @classmethod
    def load(cls, path: str | Path, dim: int, search_k: int = -1, n_jobs: int = -1) -> "AnnoyIndex":
        index = cls(dim, search_k=search_k, n_jobs=n_jobs)
        index._annoy.load(str(path))
        index.n_trees = index._annoy.get_n_trees()
        return index

    def _query(self, fetch, items, k: int, drop: np.ndarray | None):
        """Run ``fetch(item, n)`` for every item in threads; return padded (idx, cosine)."""
        extra = 1 if drop is not None else 0
        n_out = max(0, min(k, len(self) - extra))
        out_idx = np.full((len(items), n_out), -1, np.int64)
        out_sim = np.full((len(items), n_out), -np.inf, np.float32)

        def work(lo: int, hi: int) -> None:
            for r in range(lo, hi):
                ids, dist = fetch(items[r], n_out + extra)
                ids, dist = np.asarray(ids, np.int64), np.asarray(dist, np.float32)
                if drop is not None:
                    keep = ids != drop[r]
                    ids, dist = ids[keep], dist[keep]
                ids, dist = ids[:n_out], dist[:n_out]
                out_idx[r, :len(ids)] = ids
                out_sim[r, :len(ids)] = 1.0 - dist * dist / 2.0

        threads = _n_threads(self.n_jobs)
        bounds = np.linspace(0, len(items), threads * 4 + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, bounds[:-1], bounds[1:]))
        return out_idx, out_sim

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
        """(indices, similarities) for query vectors; rows Annoy cannot fill are -1 / -inf."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))

        def fetch(q, n):
            return self._annoy.get_nns_by_vector(q, n, search_k=self.search_k, include_distances=True)

        return self._query(fetch, queries, k, exclude)

    def all_neighbors(self, k: int, include_self: bool = False):
        """Top-k for every item, via ``get_nns_by_item`` as the reference did."""
        rows = np.arange(len(self))

        def fetch(i, n):
            return self._annoy.get_nns_by_item(int(i), n, search_k=self.search_k, include_distances=True)

        return self._query(fetch, rows, k, None if include_self else rows)


def build_index(vectors: np.ndarray, backend: str = "exact", n_trees: int = 10, search_k: int = -1,
                seed: int = 42, n_jobs: int = -1):
    """An ``ExactIndex`` or a built ``AnnoyIndex`` over ``vectors``."""
    if backend == "exact":
        return ExactIndex(vectors)
    if backend == "annoy":
        return AnnoyIndex.build(vectors, n_trees=n_trees, search_k=search_k, seed=seed, n_jobs=n_jobs)
    raise ValueError(f"backend={backend!r}; choose one of {BACKENDS}")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact top-k ids) present in the row of ``found``."""
    if truth.size == 0:
        return 1.0
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth)]
    return float(np.sum(hits) / truth.size)
