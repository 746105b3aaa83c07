"""All-items top-20 on real embeddings: the reference's Annoy setting vs ours vs exact vs auto.

    .venv/bin/python benchmarks/index_sweep.py [--sizes 10000 60000]

Embeddings: Fashion-MNIST train (Debian's dataset-fashion-mnist) embedded with the default
model, cached under benchmarks/cache/. For each catalog size (the first N train images):
  (a) reference: n_trees=10000, default search_k (when its build would exceed the time budget,
      build and query time are extrapolated from a smaller forest, and the output says so);
  (b) ours: the configuration helpers.sweep recommends for target recall 0.95, with the trees
      built on 64 PCA dimensions and candidates re-ranked by exact cosine (queries in
      parallel threads); (b') the same on full 1280-d vectors;
  (c) exact chunked search;
  (d) auto: what 03_neighbors picks without a sweep (exact up to 6,500 items, else
      Annoy as helpers.neighbors.auto_choice sets it);
  (e) FAISS HNSW, Voyager and FAISS IVF-PQ (re-ranked), each at the cheapest setting of a
      small sweep that reaches recall 0.95.
Each row: wall seconds (build + all-items top-20), peak RSS growth, recall@20 on 1,000
sampled items.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from embed_throughput import machine  # noqa: E402

from helpers import fashion_mnist  # noqa: E402
from helpers.embed import embed_pixels  # noqa: E402
from helpers.index import AnnoyIndex, ExactIndex, build_index, recall_at_k  # noqa: E402
from helpers.neighbors import auto_choice  # noqa: E402
from helpers.sweep import cheapest, peak_memory, run_sweep, settings_of  # noqa: E402

K = 20


def fashion_embeddings(split: str = "train", model_handle: str = "efficientnet-lite0") -> np.ndarray:
    path = HERE / "cache" / f"fashion_mnist_{split}_{model_handle}_crop.npy"
    if not path.exists():
        images, _ = fashion_mnist.load(split)
        vectors = embed_pixels(images, model_handle=model_handle, progress=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return np.load(path)


def timed(fn):
    start = time.perf_counter()
    with peak_memory() as mem:
        result = fn()
    return result, time.perf_counter() - start, mem["bytes"]


def measure(vectors: np.ndarray, sample: np.ndarray, truth: np.ndarray, budget_seconds: float,
            annoy: bool = True, reference_forest: bool = True) -> list[dict]:
    n = len(vectors)
    rows = []

    (exact_result, exact_s, exact_mem) = timed(lambda: ExactIndex(vectors).all_neighbors(K))
    rows.append({"config": "(c) exact", "seconds": exact_s, "peak_mb": exact_mem / 1e6,
                 "recall": recall_at_k(exact_result[0][sample], truth)})

    def annoy_row(label: str, settings: dict) -> dict:
        (result, seconds, mem) = timed(lambda: AnnoyIndex.build(vectors, **settings).all_neighbors(K))
        text = " ".join(f"{k}={v}" for k, v in settings.items())
        return {"config": f"{label}: annoy {text}", "seconds": seconds, "peak_mb": mem / 1e6,
                "recall": recall_at_k(result[0][sample], truth)}

    # (e) the FAISS and Voyager backends, each at its cheapest setting reaching recall 0.95 in 02's sweep
    table = run_sweep(vectors, k=K, n_queries=1000, backends=["faiss-hnsw", "voyager", "faiss-ivfpq"],
                      M_grid=(16, 32), ef_grid=(32, 64, 128), nprobe_grid=(8, 16, 32, 64), progress=False)
    for backend in ("faiss-hnsw", "voyager", "faiss-ivfpq"):
        best = cheapest(table, 0.95, backend)
        if best is None:
            rows.append({"config": f"(e) {backend}: no setting in the grid reached recall 0.95"})
            continue
        settings = settings_of(best)
        (result, seconds, mem) = timed(lambda: build_index(vectors, backend, **settings).all_neighbors(K))
        text = " ".join(f"{k}={v}" for k, v in settings.items())
        rows.append({"config": f"(e) {backend} {text}", "seconds": seconds, "peak_mb": mem / 1e6,
                     "recall": recall_at_k(result[0][sample], truth)})
    if not annoy:
        return rows
    # 02's recommendation, on full vectors and on 64 PCA dimensions with exact re-ranking
    for label, pca_dims, trees, multiples in (("(b') full vectors", None, (10, 25, 50), (-1, 2, 5, 10)),
                                             ("(b) ours, PCA 64 + re-rank", 64, (5, 10, 20), (-1, 5, 10, 15))):
        table = run_sweep(vectors, n_trees_grid=trees, search_k_grid=multiples, k=K, n_queries=1000,
                          include_reference=False, pca_dims=pca_dims, progress=False)
        best = cheapest(table, 0.95, "annoy")
        if best is None:
            rows.append({"config": f"{label}: no setting in the grid reached recall 0.95"})
            continue
        rows.append(annoy_row(label, {"n_trees": int(best["n_trees"]), "search_k": int(best["search_k"]),
                                      "pca_dims": pca_dims}))
    choice = auto_choice(n, vectors.nbytes)
    if choice.pop("backend") == "exact":
        rows.append({**rows[0], "config": "(d) auto -> exact"})
    else:
        rows.append(annoy_row("(d) auto", choice))
    if reference_forest:
        rows.append(reference(vectors, sample, truth, budget_seconds))
    return rows


def reference(vectors, sample, truth, budget_seconds: float) -> dict:
    """n_trees=10000 with Annoy's default search_k, single-threaded queries as in the reference."""
    n = len(vectors)
    trial_trees = 100
    (index, trial_s, trial_mem) = timed(lambda: AnnoyIndex.build(vectors, n_trees=trial_trees, n_jobs=1, build_jobs=1))
    per_tree = trial_s / trial_trees
    build_estimate = per_tree * 10_000
    note = ""
    if build_estimate <= budget_seconds:
        (index, build_s, build_mem) = timed(lambda: AnnoyIndex.build(vectors, n_trees=10_000, n_jobs=1, build_jobs=1))
    else:
        build_s, build_mem = build_estimate, trial_mem * 100
        note = f"build extrapolated from {trial_trees} trees; "
    index.n_jobs = 1
    index.search_k = 10_000 * K  # Annoy's default: n_trees * k
    queries = sample[:200]
    start = time.perf_counter()
    found, _ = index.search(vectors[queries], K, exclude=queries)
    per_query = (time.perf_counter() - start) / len(queries)
    if index.n_trees != 10_000:
        note += f"queries timed on a {index.n_trees}-tree forest with the reference's search_k ({10_000 * K})"
    return {"config": "(a) reference: annoy n_trees=10000, default search_k", "seconds": build_s + per_query * n,
            "peak_mb": build_mem / 1e6, "recall": recall_at_k(found, truth[:len(queries)]),
            "note": note.strip("; ") or "measured"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 60_000])
    parser.add_argument("--budget-seconds", type=float, default=1800,
                        help="build the real 10,000-tree forest only when estimated below this")
    parser.add_argument("--no-annoy", action="store_true", help="only exact and the FAISS / Voyager rows (e)")
    parser.add_argument("--no-reference", action="store_true", help="leave out (a), the 10,000-tree forest")
    args = parser.parse_args()
    train = fashion_embeddings("train")
    report = {"machine": machine(), "k": K, "results": {}}
    for n in args.sizes:
        vectors = np.ascontiguousarray(train[:n])
        sample = np.sort(np.random.default_rng(0).choice(n, size=min(1000, n), replace=False))
        truth, _ = ExactIndex(vectors).search(vectors[sample], K, exclude=sample)
        rows = measure(vectors, sample, truth, args.budget_seconds, annoy=not args.no_annoy,
                       reference_forest=not args.no_reference)
        exact_s = next(r["seconds"] for r in rows if r["config"].startswith("(c)"))
        for r in rows:
            if "seconds" in r:
                r["speedup_vs_exact"] = exact_s / r["seconds"]
        report["results"][n] = rows
        print(json.dumps({n: rows}, indent=1, default=float), flush=True)
    out = HERE / "cache" / "index_sweep.json"
    out.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
