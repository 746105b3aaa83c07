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


RESCORE_MARGIN = 8


def pair_cosine(queries: np.ndarray, vectors: np.ndarray, idx: np.ndarray, block: int = 256) -> np.ndarray:
    """Cosine of query row r with ``vectors[idx[r, j]]`` for every (r, j); -inf where idx < 0.

    Computed one pair at a time (einsum), so a pair's value never depends on what else is
    in the batch: exact search and incremental refreshes agree to the last bit.
    """
    out = np.full(idx.shape, -np.inf, np.float32)
    for start in range(0, len(idx), block):
        rows = idx[start:start + block]
        gathered = np.asarray(vectors)[np.maximum(rows, 0)]
        sims = np.einsum("rd,rcd->rc", np.asarray(queries[start:start + block], np.float32), gathered)
        out[start:start + block] = np.where(rows >= 0, sims, -np.inf)
    return out


def _top_k_parallel(scores: np.ndarray, k: int) -> np.ndarray:
    """``top_k`` indices with the rows split over the cores (NumPy's partition releases the GIL)."""
    threads = _n_threads(-1)
    if threads == 1 or len(scores) < 64:
        return top_k(scores, k)[0]
    bounds = np.linspace(0, len(scores), threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(lambda lo, hi: top_k(scores[lo:hi], k)[0], bounds[:-1], bounds[1:])
        return np.concatenate(list(parts))


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
            # a few spare candidates, re-scored pair by pair: BLAS rounding depends on the
            # matrix shapes, pair_cosine does not, so near-ties order the same in every run
            idx = _top_k_parallel(scores, min(n_out + RESCORE_MARGIN, scores.shape[1]))
            sim = pair_cosine(queries[start:stop], self.vectors, idx)
            if exclude is not None:
                sim[idx == exclude[start:stop, None]] = -np.inf
            order = np.lexsort((idx, -sim), axis=1)[:, :n_out]
            out_idx[start:stop] = np.take_along_axis(idx, order, axis=1)
            out_sim[start:stop] = np.take_along_axis(sim, order, axis=1)
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
    """Annoy over unit vectors; the same inputs and seed give the same index file.

    ``pca_dims``: build the trees on a PCA projection of that many dimensions (learned on
    the catalog) and re-rank ``candidates`` results per query by exact cosine on the full
    vectors: distances in 128-d cost a tenth of 1280-d, and trees split better.
    """

    backend = "annoy"

    def __init__(self, dim: int, n_trees: int = 10, search_k: int = -1, seed: int = 42,
                 n_jobs: int = -1, projection: tuple[np.ndarray, np.ndarray] | None = None,
                 vectors: np.ndarray | None = None, candidates: int | None = None):
        from annoy import AnnoyIndex as _Annoy

        self.dim, self.n_trees, self.search_k, self.seed, self.n_jobs = dim, n_trees, search_k, seed, n_jobs
        self.projection, self.vectors, self.candidates = projection, vectors, candidates
        tree_dim = dim if projection is None else projection[1].shape[0]
        self._annoy = _Annoy(tree_dim, "angular")
        self._annoy.set_seed(seed)

    def __len__(self) -> int:
        return self._annoy.get_n_items()

    @classmethod
    def build(cls, vectors: np.ndarray, n_trees: int = 10, search_k: int = -1, seed: int = 42,
              n_jobs: int = -1, on_disk_path: str | Path | None = None, pca_dims: int | None = None,
              candidates: int | None = None, build_jobs: int = -1) -> "AnnoyIndex":
        """Add every row of ``vectors`` as item i and build ``n_trees`` trees.

        ``on_disk_path``: build straight into that file (for indexes bigger than memory).
        ``build_jobs``: threads for the build; -1 (default) uses every core. Each thread grows
        its own seeded trees, so the same inputs and seed find the same neighbours every run,
        but Annoy numbers nodes in the order threads finish: for a byte-identical index file
        (the same inputs and seed give the same file), build with ``build_jobs=1``.
        ``n_jobs``: threads for queries.
        """
        projection = None
        if pca_dims and pca_dims < vectors.shape[1]:
            projection = fit_pca(vectors, pca_dims, seed)
        index = cls(vectors.shape[1], n_trees, search_k, seed, n_jobs, projection,
                    vectors if projection is not None else None, candidates)
        if on_disk_path is not None:
            index._annoy.on_disk_build(str(on_disk_path))
        for start in range(0, len(vectors), 8192):
            block = index._project(vectors[start:start + 8192])
            for i, v in enumerate(block, start):
                index._annoy.add_item(i, v)
        index._annoy.build(n_trees, n_jobs=build_jobs)
        return index

    def _project(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.projection is None:
            return x
        mean, components = self.projection
        return (x - mean) @ components.T

    def save(self, path: str | Path) -> None:
        self._annoy.save(str(path))
        if self.projection is not None:
            np.savez(f"{path}.pca.npz", mean=self.projection[0], components=self.projection[1])

    @classmethod
    def load(cls, path: str | Path, dim: int, search_k: int = -1, n_jobs: int = -1,
             vectors: np.ndarray | None = None, candidates: int | None = None) -> "AnnoyIndex":
        """Load a saved index; a PCA index also needs the full ``vectors`` to re-rank."""
        projection = None
        if Path(f"{path}.pca.npz").exists():
            saved = np.load(f"{path}.pca.npz")
            projection = (saved["mean"], saved["components"])
            if vectors is None:
                raise ValueError(f"{path} was built on a PCA projection: pass vectors= to re-rank")
        index = cls(dim, search_k=search_k, n_jobs=n_jobs, projection=projection, vectors=vectors,
                    candidates=candidates)
        index._annoy.load(str(path))
        index.n_trees = index._annoy.get_n_trees()
        return index

    def _query(self, fetch, items, queries, k: int, drop: np.ndarray | None):
        """Run ``fetch(item, n)`` for every item in threads; return padded (idx, cosine).

        Annoy's calls run in threads (it releases the GIL); dropping the query itself,
        the exact re-rank and the ordering are then done for all rows at once.
        """
        extra = 1 if drop is not None else 0
        n_out = max(0, min(k, len(self) - extra))
        want = n_out if self.projection is None else min(len(self), max(n_out, self.candidates or 4 * n_out))
        cand = np.full((len(items), want + extra), -1, np.int64)
        dist = np.full((len(items), want + extra), np.inf, np.float32)

        sims = np.full((len(items), want + extra), -np.inf, np.float32)

        def work(lo: int, hi: int) -> None:
            for r in range(lo, hi):
                ids, d = fetch(items[r], want + extra)
                cand[r, :len(ids)], dist[r, :len(ids)] = ids, d
            if drop is not None:
                block = cand[lo:hi]
                block[block == np.asarray(drop[lo:hi])[:, None]] = -1
            if self.projection is not None:  # re-rank by cosine on the full vectors
                sims[lo:hi] = pair_cosine(queries[lo:hi], self.vectors, cand[lo:hi])
            else:
                sims[lo:hi] = np.where(cand[lo:hi] >= 0, 1.0 - dist[lo:hi] ** 2 / 2.0, -np.inf)

        threads = _n_threads(self.n_jobs)
        # blocks of ~512 rows: fetching one block overlaps with re-ranking another
        bounds = np.unique(np.linspace(0, len(items), max(threads * 4, len(items) // 512) + 1).astype(int))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, bounds[:-1], bounds[1:]))
        order = np.lexsort((np.where(cand >= 0, cand, np.iinfo(np.int64).max), -sims), axis=1)[:, :n_out]
        out_idx = np.take_along_axis(cand, order, axis=1)
        out_sim = np.take_along_axis(sims, order, axis=1)
        out_sim[out_idx < 0] = -np.inf
        return out_idx, out_sim

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
        """(indices, similarities) for query vectors; rows Annoy cannot fill are -1 / -inf."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        projected = self._project(queries)

        def fetch(r, n):
            return self._annoy.get_nns_by_vector(projected[r], n, search_k=self.search_k, include_distances=True)

        return self._query(fetch, np.arange(len(queries)), queries, k, exclude)

    def all_neighbors(self, k: int, include_self: bool = False):
        """Top-k for every item, via ``get_nns_by_item`` as the reference did."""
        rows = np.arange(len(self))

        def fetch(i, n):
            return self._annoy.get_nns_by_item(int(i), n, search_k=self.search_k, include_distances=True)

        return self._query(fetch, rows, self.vectors if self.vectors is not None else None, k,
                           None if include_self else rows)


def fit_pca(vectors: np.ndarray, dims: int, seed: int = 42, sample: int = 10_000):
    """(mean, components) of the top ``dims`` principal axes, learned on a sample of rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False))
    x = np.asarray(vectors[rows], dtype=np.float32)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:dims].astype(np.float32)


def build_index(vectors: np.ndarray, backend: str = "exact", n_trees: int = 10, search_k: int = -1,
                seed: int = 42, n_jobs: int = -1, pca_dims: int | None = None):
    """An ``ExactIndex`` or a built ``AnnoyIndex`` over ``vectors``."""
    if backend == "exact":
        return ExactIndex(vectors)
    if backend == "annoy":
        return AnnoyIndex.build(vectors, n_trees=n_trees, search_k=search_k, seed=seed, n_jobs=n_jobs,
                                pca_dims=pca_dims)
    raise ValueError(f"backend={backend!r}; choose one of {BACKENDS}")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact top-k ids) present in the row of ``found``."""
    if truth.size == 0:
        return 1.0
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth)]
    return float(np.sum(hits) / truth.size)
