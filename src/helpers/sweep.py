"""Measure index settings against exact search and recommend one (notebook 02).

For every combination (Annoy ``n_trees`` x ``search_k``; FAISS IVF-PQ ``nlist`` x ``nprobe``;
FAISS HNSW and Voyager ``M`` x ``ef``): build seconds, index bytes, peak memory of
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

from .index import (BACKENDS, PARAMETERS, QUERY_PARAMETERS, ExactIndex, build_index, check_counts, default_nlist,
                    recall_at_k)

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


# query-time settings swept per build, and the build settings, for the graph/list backends
DEFAULT_GRIDS = {"nlist_grid": (None,), "nprobe_grid": (1, 4, 16, 64),
                 "M_grid": (16, 32), "ef_grid": (32, 64, 128, 256)}


def run_sweep(embeddings: np.ndarray, n_trees_grid=(1, 5, 10, 25, 50, 100, 200),
              search_k_grid=(-1, 2, 5, 10, 20), k: int = 20, n_queries: int = 1000,
              include_reference: bool | None = None, seed: int = 0, pca_dims: int | None = None,
              progress: bool = True, backends=("annoy",), nlist_grid=DEFAULT_GRIDS["nlist_grid"],
              nprobe_grid=DEFAULT_GRIDS["nprobe_grid"], M_grid=DEFAULT_GRIDS["M_grid"],
              ef_grid=DEFAULT_GRIDS["ef_grid"]) -> pd.DataFrame:
    """One row per configuration (plus one for exact search) with cost and recall@k.

    ``backends``: any of "annoy" (``n_trees_grid`` x ``search_k_grid``; ``pca_dims``: trees on
    that many PCA dimensions, re-ranked exactly), "faiss-ivfpq" (``nlist_grid`` x
    ``nprobe_grid``; None = about sqrt(N) lists), "faiss-hnsw" and "voyager" (``M_grid`` x
    ``ef_grid``). Each build setting is built once and every query setting measured on it.
    """
    check_counts(k=k, n_queries=n_queries)
    unknown = sorted(set(backends) - set(BACKENDS) - {"exact"})
    if unknown:
        raise ValueError(f"backends {unknown}: choose from {[b for b in BACKENDS if b != 'exact']}")
    vectors = np.asarray(embeddings, dtype=np.float32)
    n = len(vectors)
    queries = np.sort(np.random.default_rng(seed).choice(n, size=min(n_queries, n), replace=False))
    exact = ExactIndex(vectors)
    start = time.perf_counter()
    with peak_memory() as mem:
        truth, _ = exact.search(vectors[queries], k, exclude=queries)
    rows = [{"backend": "exact", "build": "exact", "n_trees": 0, "search_k_multiple": np.nan, "search_k": np.nan,
             "build_seconds": 0.0, "index_bytes": vectors.nbytes, "peak_memory_bytes": mem["bytes"],
             "queries_per_second": max(len(queries), 1) / (time.perf_counter() - start), "recall": 1.0}]
    plans = sweep_plans(n, vectors.shape[1], backends, k, n_trees_grid, search_k_grid, include_reference,
                        pca_dims, nlist_grid, nprobe_grid, M_grid, ef_grid)
    rows += measure(vectors, queries, truth, k, plans, progress)
    table = pd.DataFrame(rows)
    table["all_items_seconds"] = table["build_seconds"] + n / table["queries_per_second"]
    table["reference"] = table["n_trees"] == REFERENCE_N_TREES
    table["pareto"] = pareto_front(table["recall"].to_numpy(), table["queries_per_second"].to_numpy())
    return table


def sweep_plans(n: int, dim: int, backends, k: int, n_trees_grid, search_k_grid, include_reference,
                pca_dims, nlist_grid, nprobe_grid, M_grid, ef_grid) -> list[tuple[str, dict, list[dict]]]:
    """(backend, build settings, [query settings]) to measure; query settings are what the
    index's ``set`` takes, plus columns for the table (Annoy's search_k multiple)."""
    plans = []
    if n < 2:  # nothing to index below two items
        return plans
    if "annoy" in backends:
        grid = sorted(set(n_trees_grid))
        if include_reference is None:
            include_reference = n <= REFERENCE_MAX_ITEMS
        if include_reference and grid and REFERENCE_N_TREES not in grid:
            grid.append(REFERENCE_N_TREES)
        projected = pca_dims if pca_dims and pca_dims < dim else None
        for n_trees in grid:
            reference_only = n_trees == REFERENCE_N_TREES and n_trees not in n_trees_grid
            # the reference only ever used the default search_k (and full vectors)
            multiples = [-1] if reference_only else search_k_grid
            plans.append(("annoy", {"n_trees": n_trees, "pca_dims": None if n_trees == REFERENCE_N_TREES else projected},
                          [{"search_k_multiple": m, "search_k": resolve_search_k(m, k, n_trees)} for m in multiples]))
    if "faiss-ivfpq" in backends:
        for nlist in dict.fromkeys(min(nl or default_nlist(n), n) for nl in nlist_grid):
            plans.append(("faiss-ivfpq", {"nlist": nlist},
                          [{"nprobe": p} for p in sorted(set(nprobe_grid)) if p <= nlist] or [{"nprobe": nlist}]))
    for backend in ("faiss-hnsw", "voyager"):
        if backend in backends:
            plans += [(backend, {"M": M}, [{"ef": ef} for ef in sorted(set(ef_grid))]) for M in sorted(set(M_grid))]
    return plans


def measure(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int, plans, progress: bool) -> list[dict]:
    """Build each plan's index once, then time and score every query setting on it: the
    same verbs for every backend (build_index, set, search, rerank_count, save)."""
    from tqdm import tqdm

    rows = []
    bar = tqdm(total=sum(len(q) for _, _, q in plans), desc="sweep", disable=not progress, mininterval=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        for backend, settings, query_settings in plans:
            start = time.perf_counter()
            with peak_memory() as mem:
                index = build_index(vectors, backend, **settings)
            build_seconds = time.perf_counter() - start
            size = index_bytes(index, Path(tmp) / "index")
            label = " ".join(f"{key}={value}" for key, value in settings.items() if value is not None)
            for query in query_settings:
                index.set(**{name: query[name] for name in QUERY_PARAMETERS[backend]})
                start = time.perf_counter()
                found, _ = index.search(vectors[queries], k, exclude=queries)
                seconds = time.perf_counter() - start
                rows.append({"backend": backend, "build": f"{backend} {label}", **settings, **query,
                             "candidates": index.rerank_count(k) or None, "build_seconds": build_seconds,
                             "index_bytes": size, "peak_memory_bytes": mem["bytes"],
                             "queries_per_second": len(queries) / seconds, "recall": recall_at_k(found, truth)})
                bar.update(1)
            del index
    bar.close()
    return rows


def index_bytes(index, path: Path) -> int:
    """Bytes of the index as saved (the float32 matrix for exact search)."""
    if isinstance(index, ExactIndex):
        return index.vectors.nbytes
    index.save(path)
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    return size


def pareto_front(recall: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """True where no other point is at least as good on both axes and better on one."""
    better_or_equal = (recall[None, :] >= recall[:, None]) & (speed[None, :] >= speed[:, None])
    strictly = (recall[None, :] > recall[:, None]) | (speed[None, :] > speed[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


def cheapest(table: pd.DataFrame, target_recall: float = 0.95, backend: str | None = None) -> pd.Series | None:
    """The index row (of ``backend``, or any) with the smallest all-items time reaching target_recall."""
    ok = table[(table["backend"] != "exact") & (table["recall"] >= target_recall)]
    if backend is not None:
        ok = ok[ok["backend"] == backend]
    return None if ok.empty else ok.sort_values(["all_items_seconds", "index_bytes"]).iloc[0]


def settings_of(row: pd.Series) -> dict:
    """The build_index keyword arguments of a sweep row (search_k resolved, NaN dropped)."""
    out = {}
    # "candidates" is reported, not recommended: 03 re-ranks its own k's default
    for name in (p for p in PARAMETERS.get(row["backend"], ()) if p != "candidates"):
        value = row.get(name)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        out[name] = value if isinstance(value, str) else int(value)
    return out


def recommend(table: pd.DataFrame, target_recall: float = 0.95) -> dict:
    """The configuration with the smallest estimated all-items time reaching target_recall."""
    exact = table[table["backend"] == "exact"].iloc[0]
    best_index = cheapest(table, target_recall)
    if best_index is None:
        best, reason = exact, (f"no index configuration reached recall {target_recall}; "
                               "exact search is the better choice at this size")
    else:
        name = best_index["backend"]
        # exact search has perfect recall: an index must be clearly faster to be worth it
        if exact["all_items_seconds"] <= EXACT_PREFERENCE * best_index["all_items_seconds"]:
            best, reason = exact, (f"exact search ({exact['all_items_seconds']:.1f} s estimated) is "
                                   f"faster than the cheapest {name} setting reaching recall "
                                   f"{target_recall} ({best_index['all_items_seconds']:.1f} s)")
        else:
            best, reason = best_index, (f"cheapest {name} setting reaching recall {target_recall}; "
                                        f"{exact['all_items_seconds'] / best_index['all_items_seconds']:.1f}x "
                                        "faster than exact search")
    choice = {"backend": best["backend"], "recall": round(float(best["recall"]), 4),
              "estimated_all_items_seconds": round(float(best["all_items_seconds"]), 2),
              "target_recall": target_recall, "reason": reason}
    choice.update(settings_of(best))
    if best["backend"] == "annoy":
        choice.setdefault("pca_dims", None)
    return choice


def write_results(run_dir: str | Path, table: pd.DataFrame, choice: dict, parameters: dict) -> dict:
    """02's files (sweep.csv, index_choice.json), committed together; the choice records the
    store it was measured on, so 03 ignores it once 01 has re-embedded."""
    from . import runfolder

    with runfolder.lock(run_dir, "02_index_sweep"):
        record = {**choice, "computed_from": {"store_key": runfolder.store_key(run_dir), "parameters": parameters}}
        staging = runfolder.Staging(run_dir, "index")
        runfolder.write_table(staging.path(runfolder.SWEEP), table)
        staging.commit(record)
    return record
