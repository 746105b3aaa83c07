"""Retrieval metrics: pure functions on ranked result arrays, no I/O.

``relevance`` turns neighbour similarities and "is this neighbour right?" flags into per-rank
*expected* relevance: results with exactly the same similarity are in no meaningful order, so
each gets the mean relevance of its tied group (precision@k and recall@1 are then the exact
expectation over tie orders). Lists shorter than k (a small gallery, a similarity cut-off)
count the missing ranks as wrong, so a short list never looks better than a full one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import diffusion
from .index import ExactIndex


def relevance(similarity: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Expected relevance per rank: ties in ``similarity`` share their group's mean.

    ``similarity`` and ``correct`` are (n_queries, n_results), best first; NaN similarity
    marks a missing result (it counts as wrong).
    """
    similarity = np.atleast_2d(np.asarray(similarity, dtype=np.float64))
    rel = np.atleast_2d(np.asarray(correct, dtype=np.float64)).copy()
    rel[np.isnan(similarity)] = 0.0
    for q in range(len(rel)):
        row, sim = rel[q], similarity[q]
        start = 0
        while start < len(row):
            end = start + 1
            while end < len(row) and sim[end] == sim[start]:
                end += 1
            if end - start > 1:
                row[start:end] = row[start:end].mean()
            start = end
    return rel


def _pad(rel: np.ndarray, k: int) -> np.ndarray:
    rel = np.atleast_2d(np.asarray(rel, dtype=np.float64))[:, :k]
    if rel.shape[1] < k:
        rel = np.pad(rel, ((0, 0), (0, k - rel.shape[1])))
    return rel


def precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """Share of the first k results that are right, per query (missing results are wrong)."""
    return _pad(rel, k).sum(axis=1) / k


def recall_at_1(rel: np.ndarray) -> np.ndarray:
    """1 when the first result is right (the expected value under ties), per query."""
    return _pad(rel, 1)[:, 0]


def hit_rate_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """Chance that at least one of the first k results is right, per query.

    The near-duplicate "recall@k": did the copy find its original (or its sibling copy)?
    Fractional relevance (tied groups) is treated as independent chances.
    """
    return 1.0 - np.prod(1.0 - _pad(rel, k), axis=1)


def average_precision_at_k(rel: np.ndarray, k: int, n_relevant) -> np.ndarray:
    """AP@k per query: mean of precision@i at the ranks i <= k holding a right result,
    divided by min(k, number of right items in the gallery)."""
    rel = _pad(rel, k)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, k + 1)
    denominator = np.minimum(k, np.broadcast_to(np.asarray(n_relevant, dtype=np.float64), (len(rel),)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * rel).sum(axis=1) / denominator
    return np.where(denominator > 0, ap, 0.0)


def retrieve(query_vectors: np.ndarray, gallery_vectors: np.ndarray, k: int,
             exclude: np.ndarray | None = None, rerank: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (indices, similarities) of each query in the gallery; -1 / NaN pad.

    ``rerank="diffusion"``: the first ``diffusion.SHORTLIST`` re-ordered by diffusion, which
    then gives the scores (see ``helpers.diffusion``)."""
    diffusion.check_rerank(rerank)
    gallery_vectors = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
    fetch = k if rerank == "none" else max(k, diffusion.SHORTLIST)
    found = ExactIndex(gallery_vectors).search(np.ascontiguousarray(query_vectors, dtype=np.float32),
                                                k=fetch, exclude=exclude)
    return found if rerank == "none" else diffusion.rerank(gallery_vectors, *found, k)


def label_metrics(query_labels: np.ndarray, gallery_labels: np.ndarray, neighbors: np.ndarray,
                  similarity: np.ndarray, k: int, queries_in_gallery: bool = False) -> pd.DataFrame:
    """Per-query precision@k, mAP@k, recall@1 and hit@5/@k for label (class) matching.

    ``queries_in_gallery``: the queries are gallery images excluded from their own results,
    so each has one right answer fewer (matters for mAP's denominator)."""
    gallery_labels = np.asarray(gallery_labels)
    query_labels = np.asarray(query_labels)
    valid = neighbors >= 0
    found = np.where(valid, gallery_labels[np.where(valid, neighbors, 0)], None)
    correct = valid & (found == query_labels[:, None])
    similarity = np.where(valid, similarity, np.nan)
    rel = relevance(similarity, correct)
    labels, counts = np.unique(gallery_labels, return_counts=True)
    in_gallery = dict(zip(labels.tolist(), counts.tolist()))
    n_relevant = np.array([in_gallery.get(lab, 0) for lab in query_labels.tolist()]) - int(queries_in_gallery)
    return pd.DataFrame({
        "label": query_labels,
        f"precision@{k}": precision_at_k(rel, k),
        f"mAP@{k}": average_precision_at_k(rel, k, n_relevant),
        "recall@1": recall_at_1(rel),
        **({"recall@5": hit_rate_at_k(rel, 5)} if k > 5 else {}),
        f"recall@{k}": hit_rate_at_k(rel, k),
    })


def summarise(per_query: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean of every metric column per group, plus an "all" row; with query counts."""
    metrics = [c for c in per_query.columns if "@" in c]
    table = per_query.groupby(by)[metrics].mean()
    table.insert(0, "queries", per_query.groupby(by).size())
    overall = per_query[metrics].mean().to_frame("all").T
    overall.insert(0, "queries", len(per_query))
    return pd.concat([table, overall]).round(4)


def confusion(query_labels: np.ndarray, gallery_labels: np.ndarray, neighbors: np.ndarray,
              classes: list | None = None) -> pd.DataFrame:
    """Share of each query class's top-k neighbours that fall in each class (rows sum to 1)."""
    gallery_labels = np.asarray(gallery_labels)
    valid = neighbors >= 0
    rows = np.repeat(np.asarray(query_labels), neighbors.shape[1])[valid.ravel()]
    cols = gallery_labels[neighbors[valid]]
    classes = classes if classes is not None else sorted(set(rows.tolist()) | set(cols.tolist()))
    table = pd.crosstab(pd.Categorical(rows, classes), pd.Categorical(cols, classes), dropna=False)
    table.index.name, table.columns.name = "query class", "neighbour class"
    return table.div(table.sum(axis=1).replace(0, 1), axis=0)
