"""Nearest-neighbour search over L2-normalised vectors (cosine similarity).

Backends with one interface (``build``, ``save``, ``load``, ``search``, ``all_neighbors``):

- ``ExactIndex``: chunked float32 matrix products with a top-k per chunk; never builds the
  N x N matrix, memory is bounded by the chunk size. The ground truth for recall, and the
  fast path for small catalogs.
- ``AnnoyIndex``: Spotify's Annoy, angular metric, ``n_trees`` / ``search_k``, fixed seed,
  multi-threaded build and queries (Annoy releases the GIL), optional on-disk build.
- ``FaissIndex`` (backends "faiss-ivfpq" and "faiss-hnsw"): FAISS inverted lists with
  product-quantised codes (``nlist``, ``nprobe``, ``pq_m`` bytes per vector: the compressed
  index for millions of items; shards built apart and merged), or an HNSW graph (``M``, ``ef``).
- ``VoyagerIndex``: Spotify's Voyager, Annoy's HNSW successor (``M``, ``ef``, ``storage``
  float32 / e4m3 / float8: one byte per dimension).

Any backend can re-rank its first ``candidates`` results by exact cosine on the full vectors
(``vectors=``): compressed codes find the neighbourhood, the stored vectors order it.

All return (indices, similarities) with similarity = cosine = 1 - d^2 / 2 for unit vectors.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BACKENDS = ("exact", "annoy", "faiss-ivfpq", "faiss-hnsw", "voyager")


def check_counts(**counts) -> None:
    """ValueError naming the first of ``counts`` (k, n_queries, ...) that is not a whole number
    of at least 1: k=0 wrote empty neighbour lists, n_queries=0 measured a recall of nothing."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r}; must be a whole number of at least 1")


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


def pair_cosine(queries: np.ndarray, vectors: np.ndarray, idx: np.ndarray, block: int = 16) -> np.ndarray:
    """Cosine of query row r with ``vectors[idx[r, j]]`` for every (r, j); -inf where idx < 0.

    Computed one pair at a time (einsum), so a pair's value never depends on what else is
    in the batch: exact search and incremental refreshes agree to the last bit. Small blocks
    keep the gathered rows in cache (1.7x faster than blocks of 256 rows at 81 pairs per row).
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

    def set(self) -> None:
        """Exact search has no query-time settings."""

    def rerank_count(self, k: int) -> int:
        return 0

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

    def set(self, search_k: int | None = None) -> None:
        """Change the query-time setting: nodes inspected per query (-1: Annoy's default)."""
        if search_k is not None:
            self.search_k = int(search_k)

    def rerank_count(self, k: int) -> int:
        """Hits re-ranked by exact cosine for a top-k (only on a PCA index; 0: none)."""
        return 0 if self.projection is None else min(len(self), max(k, self.candidates or 4 * k))

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

    def _query(self, fetch, items, queries, k: int, drop: np.ndarray | None, points: np.ndarray | None):
        """Run ``fetch(item, n)`` for every item in threads; return padded (idx, cosine).

        Annoy's calls run in threads (it releases the GIL); dropping the query itself and
        the exact re-rank are done per block of rows, the ordering for all rows at once.
        ``points``: the rows as the trees see them; queries then run in ``locality_order``.
        """
        extra = 1 if drop is not None else 0
        n_out = max(0, min(k, len(self) - extra))
        want = n_out if self.projection is None else min(len(self), max(n_out, self.candidates or 4 * n_out))
        cand = np.full((len(items), want + extra), -1, np.int64)
        sims = np.full((len(items), want + extra), -np.inf, np.float32)
        order = locality_order(points) if points is not None else np.arange(len(items))

        def work(lo: int, hi: int) -> None:
            rows = order[lo:hi]
            block = np.full((len(rows), want + extra), -1, np.int64)
            dist = np.full(block.shape, np.inf, np.float32)
            for j, r in enumerate(rows):
                ids, d = fetch(items[r], want + extra)
                block[j, :len(ids)], dist[j, :len(ids)] = ids, d
            if drop is not None:
                block[block == np.asarray(drop)[rows][:, None]] = -1
            if self.projection is not None:  # re-rank by cosine on the full vectors
                sims[rows] = pair_cosine(queries[rows], self.vectors, block)
            else:
                sims[rows] = np.where(block >= 0, 1.0 - dist ** 2 / 2.0, -np.inf)
            cand[rows] = block

        threads = _n_threads(self.n_jobs)
        # blocks of ~512 rows: fetching one block overlaps with re-ranking another
        bounds = np.unique(np.linspace(0, len(items), max(threads * 4, len(items) // 512) + 1).astype(int))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, bounds[:-1], bounds[1:]))
        return finish(cand, sims, n_out)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
        """(indices, similarities) for query vectors; rows Annoy cannot fill are -1 / -inf."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        projected = self._project(queries)

        def fetch(r, n):
            return self._annoy.get_nns_by_vector(projected[r], n, search_k=self.search_k, include_distances=True)

        return self._query(fetch, np.arange(len(queries)), queries, k, exclude, projected)

    def all_neighbors(self, k: int, include_self: bool = False):
        """Top-k for every item, via ``get_nns_by_item`` as the reference did."""
        rows = np.arange(len(self))

        def fetch(i, n):
            return self._annoy.get_nns_by_item(int(i), n, search_k=self.search_k, include_distances=True)

        points = None if self.vectors is None else self._project(self.vectors)
        return self._query(fetch, rows, self.vectors, k, None if include_self else rows, points)


def locality_order(points: np.ndarray, seed: int = 0, groups: int = 256) -> np.ndarray:
    """Row order that keeps near rows together: grouped by the nearest of ``groups`` sampled rows.

    Queries run in this order touch the same index nodes and re-rank the same vectors one after
    another, so they find them in the CPU cache: on 60,000 embeddings Annoy's queries ran 1.25x
    and the re-rank 1.35x faster than in catalog order. Results do not depend on the order.
    """
    n = len(points)
    groups = min(groups, n // 64)
    if groups < 2:
        return np.arange(n)
    points = np.asarray(points, dtype=np.float32)
    centres = points[np.random.default_rng(seed).choice(n, size=groups, replace=False)]
    half_norms = (centres ** 2).sum(axis=1) / 2
    nearest = np.concatenate([np.argmax(points[a:b] @ centres.T - half_norms, axis=1) for a, b in _blocks(n)])
    return np.argsort(nearest, kind="stable")


def finish(cand: np.ndarray, sims: np.ndarray, n_out: int, exclude: np.ndarray | None = None,
           queries: np.ndarray | None = None, vectors: np.ndarray | None = None):
    """Padded candidate rows (-1 = none) -> the best ``n_out`` per row, best first.

    Drops each row's ``exclude`` item, re-scores by exact cosine when ``vectors`` (and the
    ``queries``) are given, and orders by similarity, then row (the exact backend's tie-break).
    """
    cand = np.array(cand, dtype=np.int64)
    if exclude is not None:
        cand[cand == np.asarray(exclude)[:, None]] = -1
    if vectors is not None:
        sims = pair_cosine(queries, vectors, cand)
    sims = np.where(cand >= 0, sims, -np.inf).astype(np.float32)
    order = np.lexsort((np.where(cand >= 0, cand, np.iinfo(np.int64).max), -sims), axis=1)[:, :n_out]
    out_idx = np.take_along_axis(cand, order, axis=1)
    out_sim = np.take_along_axis(sims, order, axis=1)
    if out_idx.shape[1] < n_out:  # fewer candidates than asked: pad
        pad = n_out - out_idx.shape[1]
        out_idx = np.pad(out_idx, ((0, 0), (0, pad)), constant_values=-1)
        out_sim = np.pad(out_sim, ((0, 0), (0, pad)), constant_values=-np.inf)
    out_idx[~np.isfinite(out_sim)] = -1
    return out_idx, out_sim


def _blocks(n: int, size: int = 65_536):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def default_nlist(n: int) -> int:
    """Inverted lists for n items: about sqrt(n), with at least 39 training points each."""
    return int(max(1, min(round(np.sqrt(n)), n // 39)))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query: 1/16 of them, at least 8 (nprobe 64 of 1,000 lists reached
    recall@20 0.92 on a million items, docs/scaling.md)."""
    return int(min(nlist, max(8, nlist // 16)))


def default_pq_m(dim: int) -> int:
    """Bytes per vector of the PQ code: the largest divisor of dim up to dim / 8 (1/32 of float32)."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


class FaissIndex:
    """FAISS over unit vectors, inner product = cosine.

    "faiss-ivfpq": ``nlist`` inverted lists (k-means on a sample), each vector stored as a
    ``pq_m``-byte product-quantised code of its residual; ``nprobe`` lists are scanned per
    query. The index is ~``pq_m + 8`` bytes per item, and shards trained from the same
    empty index can be built apart (other processes, other machines) and merged.
    "faiss-hnsw": an HNSW graph over the float32 vectors, ``M`` links per node, ``ef``
    candidates explored per query (``ef_construction`` while building).
    IVF-PQ re-ranks its first ``candidates`` hits (default 10 x k; 0: none) by exact cosine
    on the full ``vectors`` when it has them: PQ similarities are approximate, and at a
    million items they rank the true top-20 well only with that re-rank (docs/scaling.md).
    """

    def __init__(self, faiss_index, backend: str, vectors: np.ndarray | None = None,
                 candidates: int | None = None):
        self.index, self.backend = faiss_index, backend
        self.vectors, self.candidates = vectors, candidates

    @classmethod
    def empty(cls, dim: int, backend: str = "faiss-ivfpq", nlist: int = 1024, pq_m: int | None = None,
              nbits: int = 8, nprobe: int | None = None, M: int = 32, ef: int = 64,
              ef_construction: int = 80) -> "FaissIndex":
        """An index with nothing in it (IVF-PQ: still to be ``train``-ed)."""
        import faiss

        if backend == "faiss-ivfpq":
            pq_m = pq_m or default_pq_m(dim)
            if dim % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the dimension {dim} "
                                 f"(e.g. pq_m={default_pq_m(dim)})")
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFPQ(quantizer, dim, int(nlist), int(pq_m), int(nbits), faiss.METRIC_INNER_PRODUCT)
            index.nprobe = int(nprobe or default_nprobe(nlist))
        elif backend == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(dim, int(M), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef)
        else:
            raise ValueError(f"backend={backend!r} is not a FAISS backend (faiss-ivfpq, faiss-hnsw)")
        return cls(index, backend)

    @classmethod
    def build(cls, vectors: np.ndarray, backend: str = "faiss-ivfpq", nlist: int | None = None,
              nprobe: int | None = None, pq_m: int | None = None, M: int = 32, ef: int = 64,
              ef_construction: int = 80, candidates: int | None = None, seed: int = 42,
              train_size: int | None = None) -> "FaissIndex":
        """Train (IVF-PQ) on a seeded sample of rows, then add every row as item i, in blocks.

        Defaults: ``nlist`` about sqrt(N), ``nprobe`` 1/16 of the lists, ``pq_m`` dim / 8 bytes.
        """
        n, dim = vectors.shape
        nbits = int(min(8, max(1, np.floor(np.log2(max(n, 2))))))  # no more PQ centroids than items
        nlist = int(min(nlist or default_nlist(n), max(1, n)))
        nprobe = nprobe or default_nprobe(nlist)
        index = cls.empty(dim, backend, nlist=nlist, pq_m=pq_m, nbits=nbits, nprobe=nprobe, M=M,
                          ef=ef, ef_construction=ef_construction)
        if backend == "faiss-ivfpq":
            size = min(n, train_size or max(64 * nlist, 39 * 2 ** nbits, 10_000))
            rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
            index.train(vectors[rows], seed)
        for start, stop in _blocks(n):
            index.add(vectors[start:stop], start)
        index.vectors, index.candidates = vectors, candidates
        return index

    def train(self, sample: np.ndarray, seed: int = 42) -> None:
        if self.backend == "faiss-ivfpq":
            for params in (self.index.cp, self.index.pq.cp):
                params.seed = seed
                params.min_points_per_centroid = 1  # small catalogs: train anyway, without a warning
            self.index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def add(self, vectors: np.ndarray, start: int | None = None) -> None:
        """Add rows as items ``start, start + 1, ...`` (default: after the last one)."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        start = len(self) if start is None else start
        if self.backend == "faiss-ivfpq":
            self.index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
        else:
            if start != len(self):
                raise ValueError("an HNSW index numbers items in the order they are added")
            self.index.add(x)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def nbytes(self) -> int:
        """Size of the serialised index."""
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, nprobe: int | None = None, ef: int | None = None,
             vectors: np.ndarray | None = None, candidates: int | None = None,
             mmap: bool = False) -> "FaissIndex":
        """Load a saved index (``mmap``: leave the inverted lists on disk)."""
        import faiss

        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
        backend = "faiss-hnsw" if isinstance(index, faiss.IndexHNSW) else "faiss-ivfpq"
        loaded = cls(index, backend, vectors, candidates)
        loaded.set(nprobe=nprobe, ef=ef)
        return loaded

    def set(self, nprobe: int | None = None, ef: int | None = None) -> None:
        """Change the query-time settings."""
        if nprobe is not None and self.backend == "faiss-ivfpq":
            self.index.nprobe = int(nprobe)
        if ef is not None and self.backend == "faiss-hnsw":
            self.index.hnsw.efSearch = int(ef)

    @classmethod
    def merge(cls, paths, out: str | Path | None = None) -> "FaissIndex":
        """One IVF-PQ index from shards that were trained alike (``empty`` + ``train``, saved,
        copied, filled with ``add(rows, start)`` elsewhere); written to ``out`` if given."""
        paths = [str(p) for p in paths]
        first = cls.load(paths[0])
        if first.backend != "faiss-ivfpq":
            raise ValueError("only IVF-PQ shards can be merged (an HNSW graph cannot)")
        for path in paths[1:]:
            other = cls.load(path)
            first.index.merge_from(other.index, 0)  # ids were given at add time
        if out is not None:
            first.save(out)
        return first

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
        queries = np.atleast_2d(np.ascontiguousarray(queries, dtype=np.float32))
        extra = 1 if exclude is not None else 0
        n_out = max(0, min(k, len(self) - extra))
        want = min(len(self), max(n_out, self.rerank_count(n_out)) + extra)
        if want == 0 or len(queries) == 0:
            return np.full((len(queries), n_out), -1, np.int64), np.full((len(queries), n_out), -np.inf, np.float32)
        if self.backend == "faiss-hnsw" and want > self.index.hnsw.efSearch:
            import faiss  # HNSW returns at most ef results: explore at least as many, this once

            sims, cand = self.index.search(queries, want, params=faiss.SearchParametersHNSW(efSearch=want))
        else:
            sims, cand = self.index.search(queries, want)
        rerank = self.vectors if self.rerank_count(n_out) else None
        return finish(cand, sims, n_out, exclude, queries, rerank)

    def rerank_count(self, k: int) -> int:
        """How many hits are re-ranked by exact cosine for a top-k (0: none)."""
        if self.backend != "faiss-ivfpq" or self.vectors is None or self.candidates == 0:
            return 0
        return int(self.candidates or 10 * k)

    def all_neighbors(self, k: int, include_self: bool = False):
        if self.vectors is None:
            raise ValueError("all_neighbors needs the indexed vectors: build with them or pass vectors=")
        return _all_neighbors(self, k, include_self)


class VoyagerIndex:
    """Spotify's Voyager (HNSW), cosine space; ``storage`` "float32", "e4m3" or "float8"
    (one byte per dimension). ``M`` links per node, ``ef_construction`` while building,
    ``ef`` candidates explored per query."""

    backend = "voyager"
    STORAGE = ("float32", "e4m3", "float8")

    def __init__(self, index, ef: int = 64, vectors: np.ndarray | None = None,
                 candidates: int | None = None, n_jobs: int = -1):
        self.index, self.ef, self.vectors, self.candidates, self.n_jobs = index, ef, vectors, candidates, n_jobs

    @classmethod
    def empty(cls, dim: int, max_items: int, M: int = 16, ef: int = 64, ef_construction: int = 200,
              storage: str = "float32", seed: int = 42, n_jobs: int = -1) -> "VoyagerIndex":
        """An index with room for ``max_items``; fill it with ``add``."""
        from voyager import Index, Space, StorageDataType

        if storage not in cls.STORAGE:
            raise ValueError(f"storage={storage!r}; choose one of {cls.STORAGE}")
        kind = {"float32": StorageDataType.Float32, "e4m3": StorageDataType.E4M3,
                "float8": StorageDataType.Float8}[storage]
        index = Index(Space.Cosine, num_dimensions=dim, M=int(M), ef_construction=int(ef_construction),
                      random_seed=int(seed), max_elements=max(int(max_items), 1), storage_data_type=kind)
        return cls(index, ef, n_jobs=n_jobs)

    def add(self, vectors: np.ndarray, start: int | None = None) -> None:
        """Add rows as items ``start, start + 1, ...`` (default: after the last one)."""
        start = len(self) if start is None else start
        # Voyager takes writable arrays only (a memory-mapped store is read-only)
        self.index.add_items(np.require(vectors, np.float32, ["C", "W"]),
                             ids=list(range(start, start + len(vectors))), num_threads=self.n_jobs)

    @classmethod
    def build(cls, vectors: np.ndarray, M: int = 16, ef: int = 64, ef_construction: int = 200,
              storage: str = "float32", seed: int = 42, candidates: int | None = None,
              n_jobs: int = -1) -> "VoyagerIndex":
        """Every row of ``vectors`` as item i, added in blocks (threads, so not byte-identical)."""
        n, dim = vectors.shape
        index = cls.empty(dim, n, M, ef, ef_construction, storage, seed, n_jobs)
        for start, stop in _blocks(n):
            index.add(vectors[start:stop], start)
        index.vectors, index.candidates = vectors, candidates
        return index

    def __len__(self) -> int:
        return int(self.index.num_elements)

    def save(self, path: str | Path) -> None:
        self.index.save(str(path))

    @classmethod
    def load(cls, path: str | Path, ef: int = 64, vectors: np.ndarray | None = None,
             candidates: int | None = None) -> "VoyagerIndex":
        from voyager import Index

        return cls(Index.load(str(path)), ef, vectors, candidates)

    def set(self, ef: int | None = None) -> None:
        """Change the query-time setting: candidates explored per query."""
        if ef is not None:
            self.ef = int(ef)

    def rerank_count(self, k: int) -> int:
        return int(self.candidates or 0)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None):
        queries = np.require(np.atleast_2d(queries), np.float32, ["C", "W"])
        extra = 1 if exclude is not None else 0
        n_out = max(0, min(k, len(self) - extra))
        want = min(len(self), max(n_out + extra, (self.candidates or 0) + extra))
        if want == 0 or len(queries) == 0:
            return np.full((len(queries), n_out), -1, np.int64), np.full((len(queries), n_out), -np.inf, np.float32)
        ids, dist = self.index.query(queries, k=want, num_threads=self.n_jobs, query_ef=max(self.ef, want))
        ids, dist = np.atleast_2d(ids).astype(np.int64), np.atleast_2d(dist)
        rerank = self.vectors if self.candidates else None
        return finish(ids, 1.0 - dist, n_out, exclude, queries, rerank)

    def all_neighbors(self, k: int, include_self: bool = False):
        if self.vectors is None:
            raise ValueError("all_neighbors needs the indexed vectors: build with them or pass vectors=")
        return _all_neighbors(self, k, include_self)


def _all_neighbors(index, k: int, include_self: bool, block: int = 8192):
    """Top-k of every item by searching with its own vector, in blocks of rows."""
    n = len(index)
    parts = []
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        parts.append(index.search(index.vectors[rows], k, exclude=None if include_self else rows))
    if not parts:
        return np.empty((0, 0), np.int64), np.empty((0, 0), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fit_pca(vectors: np.ndarray, dims: int, seed: int = 42, sample: int = 10_000):
    """(mean, components) of the top ``dims`` principal axes, learned on a sample of rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False))
    x = np.asarray(vectors[rows], dtype=np.float32)
    mean = x.mean(axis=0)
    centred = x - mean
    # eigenvectors of the d x d covariance: the same axes as an SVD of the sample, 8x faster
    _, axes = np.linalg.eigh((centred.T @ centred).astype(np.float64))
    return mean.astype(np.float32), np.ascontiguousarray(axes[:, ::-1][:, :dims].T, dtype=np.float32)


# what each backend's ``set`` takes: its query-time settings (a part of PARAMETERS). Every
# index has the same verbs: build_index, search, all_neighbors, set, rerank_count, save, load.
QUERY_PARAMETERS = {"exact": (), "annoy": ("search_k",), "faiss-ivfpq": ("nprobe",),
                    "faiss-hnsw": ("ef",), "voyager": ("ef",)}

# what each backend takes (build_index's keyword arguments)
PARAMETERS = {
    "exact": (),
    "annoy": ("n_trees", "search_k", "pca_dims", "candidates"),
    "faiss-ivfpq": ("nlist", "nprobe", "pq_m", "candidates"),
    "faiss-hnsw": ("M", "ef", "ef_construction"),
    "voyager": ("M", "ef", "ef_construction", "storage", "candidates"),
}


def build_index(vectors: np.ndarray, backend: str = "exact", seed: int = 42, n_jobs: int = -1, **params):
    """A built index of ``backend`` over ``vectors``; ``params`` as in ``PARAMETERS``.

    Parameters left at None take the backend's defaults; one that the backend does not
    take is an error (a typo must not silently change nothing).
    """
    if backend not in PARAMETERS:
        raise ValueError(f"backend={backend!r}; choose one of {BACKENDS}")
    params = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(params) - set(PARAMETERS[backend]))
    if unknown:
        raise ValueError(f"backend {backend!r} takes {', '.join(PARAMETERS[backend]) or 'no parameters'}; "
                         f"not {', '.join(unknown)}")
    if backend == "exact":
        return ExactIndex(vectors)
    if backend == "annoy":
        return AnnoyIndex.build(vectors, seed=seed, n_jobs=n_jobs, **params)
    if backend == "voyager":
        return VoyagerIndex.build(vectors, seed=seed, n_jobs=n_jobs, **params)
    return FaissIndex.build(vectors, backend, seed=seed, **params)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact top-k ids) present in the row of ``found``."""
    if truth.size == 0:
        return 1.0
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth)]
    return float(np.sum(hits) / truth.size)
