"""Measure Annoy settings against exact search and recommend one (notebook 02).

For every ``n_trees`` x ``search_k`` combination: build seconds, index bytes, peak memory of
the build, queries/second and recall@k on a sample of catalog items, with the exact backend
as ground truth. The recommendation is the configuration with the smallest estimated
all-items time (build + N queries) that reaches ``target_recall`` -- or exact search when
that is faster at this catalog size.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .index import AnnoyIndex, ExactIndex, recall_at_k

REFERENCE_N_TREES = 10_000
EXACT_PREFERENCE = 1.25  # recommend Annoy only when at least this much faster than exact
# 10,000 trees cost ~300 MB and ~35 s at 2,000 items; beyond this size the reference
# configuration is left out of interactive sweeps (benchmarks/index_sweep.py measures it).
REFERENCE_MAX_ITEMS = 5_000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory():
    """Yield a dict whose "bytes" is the peak RSS growth over the block (sampled every 5 ms)."""
    result = {"bytes": 0}
    base, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes() - base)
            stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["bytes"] = max(peak[0], _rss_bytes() - base)


def resolve_search_k(multiple: float, k: int, n_trees: int) -> int:
    """-1 stays Annoy's default; any other value is a multiple of k * n_trees."""
    return -1 if multiple == -1 else int(multiple * k * n_trees)


def run_sweep(embeddings: np.ndarray, n_trees_grid=(1, 5, 10, 25, 50, 100, 200),
              search_k_grid=(-1, 2, 5, 10, 20), k: int = 20, n_queries: int = 1000,
              include_reference: bool | None = None, seed: int = 0, pca_dims: int | None = None,
              progress: bool = True) -> pd.DataFrame:
    """One row per configuration (plus one for exact search) with cost and recall@k.

    ``pca_dims``: build the Annoy trees on that many PCA dimensions and re-rank exactly.
    """
    from tqdm import tqdm

    vectors = np.asarray(embeddings, dtype=np.float32)
    n = len(vectors)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    exact = ExactIndex(vectors)
    start = time.perf_counter()
    with peak_memory() as mem:
        truth, _ = exact.search(vectors[queries], k, exclude=queries)
    exact_seconds = time.perf_counter() - start
    rows = [{"backend": "exact", "n_trees": 0, "search_k_multiple": np.nan, "search_k": np.nan,
             "build_seconds": 0.0, "index_bytes": vectors.nbytes, "peak_memory_bytes": mem["bytes"],
             "queries_per_second": max(len(queries), 1) / exact_seconds, "recall": 1.0}]
    grid = sorted(set(n_trees_grid)) if n >= 2 else []  # nothing to index below two items
    if include_reference is None:
        include_reference = n <= REFERENCE_MAX_ITEMS
    if include_reference and grid and REFERENCE_N_TREES not in grid:
        grid.append(REFERENCE_N_TREES)
    bar = tqdm(total=len(grid) * len(search_k_grid), desc="sweep", disable=not progress, mininterval=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        for n_trees in grid:
            start = time.perf_counter()
            with peak_memory() as mem:
                index = AnnoyIndex.build(vectors, n_trees=n_trees,
                                         pca_dims=None if n_trees == REFERENCE_N_TREES else pca_dims)
            build_seconds = time.perf_counter() - start
            path = Path(tmp) / f"{n_trees}.ann"
            index.save(path)
            size = path.stat().st_size
            # the reference only ever used the default search_k
            multiples = [-1] if n_trees == REFERENCE_N_TREES and n_trees not in n_trees_grid else search_k_grid
            for multiple in multiples:
                index.search_k = resolve_search_k(multiple, k, n_trees)
                start = time.perf_counter()
                found, _ = index.search(vectors[queries], k, exclude=queries)
                seconds = time.perf_counter() - start
                rows.append({"backend": "annoy", "n_trees": n_trees, "pca_dims": pca_dims if index.projection is not None else None,
                             "search_k_multiple": multiple,
                             "search_k": index.search_k, "build_seconds": build_seconds,
                             "index_bytes": size, "peak_memory_bytes": mem["bytes"],
                             "queries_per_second": len(queries) / seconds,
                             "recall": recall_at_k(found, truth)})
                bar.update(1)
            path.unlink()
            del index
    bar.close()
    table = pd.DataFrame(rows)
    table["all_items_seconds"] = table["build_seconds"] + n / table["queries_per_second"]
    table["reference"] = table["n_trees"] == REFERENCE_N_TREES
    table["pareto"] = pareto_front(table["recall"].to_numpy(), table["queries_per_second"].to_numpy())
    return table


def pareto_front(recall: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """True where no other point is at least as good on both axes and better on one."""
    better_or_equal = (recall[None, :] >= recall[:, None]) & (speed[None, :] >= speed[:, None])
    strictly = (recall[None, :] > recall[:, None]) | (speed[None, :] > speed[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


def cheapest_annoy(table: pd.DataFrame, target_recall: float = 0.95) -> pd.Series | None:
    """The Annoy row with the smallest estimated all-items time reaching target_recall."""
    ok = table[(table["backend"] == "annoy") & (table["recall"] >= target_recall)]
    return None if ok.empty else ok.sort_values(["all_items_seconds", "index_bytes"]).iloc[0]


def recommend(table: pd.DataFrame, target_recall: float = 0.95) -> dict:
    """The configuration with the smallest estimated all-items time reaching target_recall."""
    exact = table[table["backend"] == "exact"].iloc[0]
    cheapest = cheapest_annoy(table, target_recall)
    if cheapest is None:
        best, reason = exact, (f"no Annoy configuration reached recall {target_recall}; "
                               "exact search is the better choice at this size")
    else:
        # exact search has perfect recall: Annoy must be clearly faster to be worth it
        if exact["all_items_seconds"] <= EXACT_PREFERENCE * cheapest["all_items_seconds"]:
            best, reason = exact, (f"exact search ({exact['all_items_seconds']:.1f} s estimated) is "
                                   f"faster than the cheapest Annoy setting reaching recall "
                                   f"{target_recall} ({cheapest['all_items_seconds']:.1f} s)")
        else:
            best, reason = cheapest, (f"cheapest Annoy setting reaching recall {target_recall}; "
                                      f"{exact['all_items_seconds'] / cheapest['all_items_seconds']:.1f}x "
                                      "faster than exact search")
    choice = {"backend": best["backend"], "recall": round(float(best["recall"]), 4),
              "estimated_all_items_seconds": round(float(best["all_items_seconds"]), 2),
              "target_recall": target_recall, "reason": reason}
    if best["backend"] == "annoy":
        choice.update(n_trees=int(best["n_trees"]), search_k=int(best["search_k"]),
                      pca_dims=None if pd.isna(best.get("pca_dims")) else int(best["pca_dims"]))
    return choice
