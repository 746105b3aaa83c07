"""Visual clusters of the catalog, and a 2-D map that keeps neighbours together.

**Clusters** (03): Ward's agglomerative clustering on the first ``PCA_DIMS`` principal
components of the vectors, restricted to each image's ``GRAPH_NEIGHBORS`` nearest
neighbours (so it scales and follows the catalog's own neighbourhoods). With
``n_clusters="auto"`` the tree is cut where the silhouette (cosine, on a sample) is best
among ``AUTO_COUNTS`` (at least 5 clusters from 1,000 images); on Fashion-MNIST it picks
the 10 classes (docs/benchmarks.md).

**Map** (04): t-SNE (openTSNE) of the same principal components. On Fashion-MNIST
it keeps a third of each image's 10 nearest neighbours among its 10 nearest on the map;
the first two principal components keep 3%.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd

PCA_DIMS = 50
GRAPH_NEIGHBORS = 10
AUTO_COUNTS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100)
SILHOUETTE_SAMPLE = 3_000
LARGE_CATALOG = 1_000
FEWEST_LARGE = 5
MAP_MAX_ITEMS = 20_000  # beyond this the map is drawn for a seeded sample of the images (~3 min on 2 cores)
AUTO_MAX_ITEMS = 200_000  # beyond this "auto" does not cluster (the tree grows with the catalog): give a number


def check_n_clusters(n_clusters) -> None:
    if n_clusters == "auto" or n_clusters is None:
        return
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r}; give 'auto' (chosen by silhouette), a whole number "
                         "of clusters of at least 1, or None (no clustering)")


def principal_components(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA

    vectors = np.asarray(vectors, np.float32)
    dims = min(PCA_DIMS, vectors.shape[1], len(vectors))
    return PCA(dims, random_state=seed, svd_solver="randomized" if len(vectors) > 5_000 else "auto") \
        .fit_transform(vectors).astype(np.float32)


def cluster(vectors: np.ndarray, n_clusters="auto", seed: int = 0) -> tuple[np.ndarray, dict]:
    """(cluster label per row, the parameters used and the silhouette of each count tried)."""
    from scipy.cluster.hierarchy import fcluster
    from sklearn.cluster import ward_tree
    from sklearn.neighbors import kneighbors_graph

    check_n_clusters(n_clusters)
    n = len(vectors)
    if n < 3:
        return np.zeros(n, np.int64), {"method": "ward", "n_clusters": min(n, 1)}
    points = principal_components(vectors, seed)
    graph = kneighbors_graph(points, min(GRAPH_NEIGHBORS, n - 1), include_self=False)
    with warnings.catch_warnings():  # separate islands in the graph: sklearn joins them, and says so
        warnings.simplefilter("ignore", UserWarning)
        children, _, _, _, distances = ward_tree(points, connectivity=graph, return_distance=True)
    tree = _linkage(children, distances, n)
    # "auto": at least 10 images a cluster on average (the silhouette keeps rising towards n),
    # and from LARGE_CATALOG images at least FEWEST_LARGE clusters (else it may split a
    # catalog in two: tops and shoes, useless for browsing)
    fewest = FEWEST_LARGE if n >= LARGE_CATALOG else 2
    counts = [c for c in AUTO_COUNTS if fewest <= c <= max(2, n // 10)] or [2] if n_clusters == "auto" \
        else [min(int(n_clusters), n)]
    scores = {c: _silhouette(points, fcluster(tree, c, "maxclust"), seed) for c in counts} \
        if n_clusters == "auto" else {}
    chosen = max(scores, key=scores.get) if scores else counts[0]
    labels = fcluster(tree, chosen, "maxclust") - 1
    return _by_size(labels), {"method": "ward on the k-NN graph", "pca_dims": int(points.shape[1]),
                              "graph_neighbors": GRAPH_NEIGHBORS, "n_clusters": int(labels.max() + 1),
                              "silhouette": {str(c): round(s, 4) for c, s in scores.items()}}


def _linkage(children: np.ndarray, distances: np.ndarray, n: int) -> np.ndarray:
    """sklearn's ward tree as a scipy linkage matrix (a graph-restricted tree may merge
    out of order; the running maximum keeps the distances monotone, as scipy needs)."""
    sizes = np.ones(2 * n - 1)
    for i, (a, b) in enumerate(children):
        sizes[n + i] = sizes[a] + sizes[b]
    return np.column_stack([children, np.maximum.accumulate(distances), sizes[n:]]).astype(np.float64)


def _silhouette(points: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return -1.0
    sample = np.random.default_rng(seed).permutation(len(points))[:SILHOUETTE_SAMPLE]
    if len(np.unique(labels[sample])) < 2:
        return -1.0
    return float(silhouette_score(points[sample], labels[sample], metric="cosine"))


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... from the biggest cluster down."""
    counts = np.bincount(labels)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels].astype(np.int64)


def cluster_table(items: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(len(items)), "path": items["path"].to_numpy(),
                         "product_id": items["productId"].astype(str).to_numpy(), "cluster": labels})


def neighbor_map(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) t-SNE coordinates that keep neighbours together (NaN for rows left out of a
    sample beyond ``MAP_MAX_ITEMS``)."""
    from openTSNE import TSNE

    n = len(vectors)
    out = np.full((n, 2), np.nan, np.float32)
    if n < 5:
        out[:] = principal_components(vectors, seed)[:, :2] if n > 2 else 0.0
        return out
    rows = np.sort(np.random.default_rng(seed).permutation(n)[:MAP_MAX_ITEMS])
    points = principal_components(np.asarray(vectors)[rows], seed)
    perplexity = float(min(30, max(2, (len(rows) - 1) / 3)))
    out[rows] = np.asarray(TSNE(perplexity=perplexity, n_jobs=2, random_state=seed, metric="cosine",
                                verbose=False).fit(points), np.float32)
    return out


def kept_neighbors(vectors: np.ndarray, coordinates: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's k nearest neighbours (cosine) that are among its k nearest
    on the map."""
    from sklearn.neighbors import NearestNeighbors

    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    true = NearestNeighbors(n_neighbors=k + 1).fit(unit).kneighbors(unit, return_distance=False)[:, 1:]
    near = NearestNeighbors(n_neighbors=k + 1).fit(coordinates).kneighbors(coordinates, return_distance=False)[:, 1:]
    return float(np.mean([len(set(t) & set(m)) / k for t, m in zip(true, near)]))
