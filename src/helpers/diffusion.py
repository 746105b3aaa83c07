"""Diffusion re-ranking of search results (05's and 03's ``rerank="diffusion"``).

Cosine similarity compares the query with each result on its own. Diffusion (Iscen et al.,
"Efficient Diffusion on Region Manifolds", CVPR 2017; here in its truncated form) also asks
how well a result is connected to the query through the other results: a picture that is
close to several pictures close to the query rises, a lone look-alike sinks. That follows
the catalog's own groups (every picture of one kind of garment, say) beyond what one
vector can say.

For each query, on its ``shortlist`` best results by cosine:

- graph: each result linked to its ``graph_k`` most similar results of the shortlist, kept
  when the link goes both ways, weighted by similarity cubed;
- seeds: the query's similarity cubed to its first ``SEEDS`` results;
- scores: f solving (I - ``ALPHA`` S) f = seeds, S the symmetrically normalised graph:
  the seeds' weight spread along the graph (a random walk that restarts at the seeds).

The results are the shortlist re-ordered by f; f is returned as the score (it is not a
cosine). Unsupervised, no learned state; about 4 ms per query for a 200-result shortlist of
3,000-number vectors on 2 cores. Numbers: docs/benchmarks.md ("Quality").
"""
from __future__ import annotations

import numpy as np

RERANK = ("none", "diffusion")
SHORTLIST = 200  # results re-ranked per query
GRAPH_K = 20     # links per result inside the shortlist
SEEDS = 10       # first results the query's similarity starts from
ALPHA = 0.9      # share of the score passed on along the graph (vs kept at the seeds)
GAMMA = 3.0      # similarities are cubed: strong links count, weak ones hardly


def check_rerank(rerank: str) -> None:
    if rerank not in RERANK:
        raise ValueError(f"rerank={rerank!r}; choose one of {RERANK}")


def rerank(gallery_vectors: np.ndarray, candidates: np.ndarray, similarities: np.ndarray,
           k: int, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each query's candidates (gallery rows, best first, -1 = none; with the query's
    cosine ``similarities`` to them) by diffusion. Returns the first ``k`` (rows, scores),
    padded with -1 / NaN like a search. Queries with full shortlists go ``batch`` at a time."""
    n_queries = len(candidates)
    rows = np.full((n_queries, k), -1, np.int64)
    scores = np.full((n_queries, k), np.nan, np.float32)
    full = np.flatnonzero((candidates >= 0).all(axis=1)) if candidates.shape[1] else np.array([], int)
    for start in range(0, len(full), batch):
        group = full[start:start + batch]
        found = candidates[group]
        f = diffuse(np.asarray(gallery_vectors[found.ravel()], np.float32).reshape(*found.shape, -1),
                    np.asarray(similarities[group], np.float32))
        _keep(rows, scores, group, found, f, k)
    for q in np.setdiff1d(np.arange(n_queries), full):  # short lists: one at a time
        valid = candidates[q] >= 0
        if valid.any():
            found = candidates[q][valid][None]
            f = diffuse(np.asarray(gallery_vectors[found[0]], np.float32)[None],
                        np.asarray(similarities[q][valid], np.float32)[None])
            _keep(rows, scores, [q], found, f, k)
    return rows, scores


def _keep(rows, scores, queries, found, f, k):
    for i, q in enumerate(queries):
        order = np.lexsort((found[i], -f[i]))[:k]  # best score first; ties by gallery row, as searches
        rows[q, :len(order)], scores[q, :len(order)] = found[i][order], f[i][order]


def diffuse(vectors: np.ndarray, query_similarity: np.ndarray, graph_k: int = GRAPH_K, seeds: int = SEEDS,
            alpha: float = ALPHA, gamma: float = GAMMA) -> np.ndarray:
    """Diffusion scores of shortlists: unit ``vectors`` (..., m, dim) of each query's results and
    the query's cosine similarity to each (..., m), best first. Returns (..., m)."""
    m = vectors.shape[-2]
    affinity = vectors @ np.swapaxes(vectors, -1, -2)
    diagonal = np.arange(m)
    affinity[..., diagonal, diagonal] = -np.inf
    links = min(graph_k, m - 1)
    graph = np.zeros_like(affinity)
    if links > 0:
        nearest = np.argpartition(-affinity, links - 1, axis=-1)[..., :links]
        weight = np.maximum(np.take_along_axis(affinity, nearest, axis=-1), 0) ** gamma
        np.put_along_axis(graph, nearest, weight, axis=-1)
        graph = np.minimum(graph, np.swapaxes(graph, -1, -2))  # mutual links only
    degree = graph.sum(axis=-1)
    scale = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0.0).astype(np.float32)
    normalised = graph * scale[..., :, None] * scale[..., None, :]
    start = np.zeros(query_similarity.shape, np.float32)
    start[..., :seeds] = np.maximum(query_similarity[..., :seeds], 0) ** gamma
    system = np.eye(m, dtype=np.float32) - alpha * normalised
    return np.linalg.solve(system, start[..., None])[..., 0]
