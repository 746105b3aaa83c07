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
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each query's candidates (gallery rows, best first, -1 = none; with the query's
    cosine ``similarities`` to them) by diffusion. Returns the first ``k`` (rows, scores),
    padded with -1 / NaN like a search."""
    n_queries = len(candidates)
    rows = np.full((n_queries, k), -1, np.int64)
    scores = np.full((n_queries, k), np.nan, np.float32)
    for q in range(n_queries):
        valid = candidates[q] >= 0
        found, sims = candidates[q][valid], np.asarray(similarities[q][valid], np.float32)
        if len(found) == 0:
            continue
        f = diffuse(np.asarray(gallery_vectors[found], np.float32), sims)
        order = np.lexsort((found, -f))[:k]  # best score first; ties by gallery row, as searches break them
        rows[q, :len(order)], scores[q, :len(order)] = found[order], f[order]
    return rows, scores


def diffuse(vectors: np.ndarray, query_similarity: np.ndarray, graph_k: int = GRAPH_K, seeds: int = SEEDS,
            alpha: float = ALPHA, gamma: float = GAMMA) -> np.ndarray:
    """Diffusion scores of one query's shortlist: unit ``vectors`` (m, dim) of the results and
    the query's cosine similarity to each, best first."""
    m = len(vectors)
    affinity = vectors @ vectors.T
    np.fill_diagonal(affinity, -np.inf)
    links = min(graph_k, m - 1)
    graph = np.zeros((m, m), np.float32)
    if links > 0:
        nearest = np.argpartition(-affinity, links - 1, axis=1)[:, :links]
        weight = np.maximum(np.take_along_axis(affinity, nearest, axis=1), 0) ** gamma
        np.put_along_axis(graph, nearest, weight, axis=1)
        graph = np.minimum(graph, graph.T)  # mutual links only
    degree = graph.sum(axis=1)
    scale = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0.0).astype(np.float32)
    normalised = graph * scale[:, None] * scale[None, :]
    start = np.zeros(m, np.float32)
    start[:seeds] = np.maximum(query_similarity[:seeds], 0) ** gamma
    return np.linalg.solve(np.eye(m, dtype=np.float32) - alpha * normalised, start)
