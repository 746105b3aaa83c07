"""Clusters and maps on Fashion-MNIST, against the classes.

    .venv/bin/python benchmarks/clusters.py [--n 10000] [--offset 0]

On n train images (the default model's vectors, cached by 05's benchmark when present,
else embedded now): 03's clusters (``helpers.clusters.cluster``, count chosen by
silhouette, no labels) against k-means on the same principal components with the true 10
classes, and with the count 03 chose; ARI and NMI against the classes. Then the maps: the
share of each image's 10 nearest neighbours (cosine, full vectors) among its 10 nearest on
the map, for 04's t-SNE map and for the first two principal components (the old map).
Use --offset to measure on images the defaults were not chosen on.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from embed_throughput import machine  # noqa: E402

from helpers import clusters, fashion_mnist  # noqa: E402
from helpers.options import EmbeddingOptions  # noqa: E402


def vectors_of(pictures: np.ndarray) -> np.ndarray:
    """The default options' vectors of the first train images, from 05's cache (filled if short)."""
    from helpers.benchmarks import _cached
    from helpers.evaluate import fashion_mnist_embedder
    from helpers.models import cache_dir

    options = EmbeddingOptions()
    return _cached(cache_dir() / "benchmarks" / "fashion-mnist", f"train-{options.vector_key()}", pictures,
                   len(pictures), fashion_mnist_embedder(options, progress=True))


def main() -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--offset", type=int, default=0)
    args = parser.parse_args()
    pictures, classes = fashion_mnist.load("train")
    chosen = slice(args.offset, args.offset + args.n)
    vectors, truth = vectors_of(pictures[: args.offset + args.n])[chosen], classes[chosen]
    print(f"Machine: {machine()}\n\nFashion-MNIST train images {args.offset:,}-{args.offset + len(truth):,}\n")
    print("| clustering | clusters | ARI | NMI | seconds |\n|---|---|---|---|---|")
    start = time.perf_counter()
    labels, params = clusters.cluster(vectors)
    seconds = time.perf_counter() - start
    rows = [("03: Ward on the k-NN graph, count by silhouette", labels, seconds)]
    points = clusters.principal_components(vectors)
    for k in sorted({10, params["n_clusters"]}):
        start = time.perf_counter()
        found = KMeans(k, n_init=4, random_state=0).fit_predict(points)
        rows.append((f"k-means, k = {k}" + (" (the true count)" if k == 10 else " (03's count)"), found,
                     time.perf_counter() - start))
    for name, found, took in rows:
        print(f"| {name} | {len(set(found))} | {adjusted_rand_score(truth, found):.3f} | "
              f"{normalized_mutual_info_score(truth, found):.3f} | {took:.1f} |")
    print("\n| map | 10-NN kept | seconds |\n|---|---|---|")
    start = time.perf_counter()
    tsne = clusters.neighbor_map(vectors)
    seconds = time.perf_counter() - start
    print(f"| t-SNE (04's neighbor_map.jpg) | {clusters.kept_neighbors(vectors, tsne):.3f} | {seconds:.1f} |")
    print(f"| first two principal components (catalog_map.jpg) | "
          f"{clusters.kept_neighbors(vectors, points[:, :2]):.3f} | - |")


if __name__ == "__main__":
    main()
