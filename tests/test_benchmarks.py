"""helpers.benchmarks on vectors: Fashion-MNIST on raw pixels."""
from __future__ import annotations

import numpy as np

from helpers import benchmarks, evaluate, metrics


def test_fashion_mnist_benchmark_on_pixels(fashion_mnist_data):
    """The protocol itself, with raw pixels as the 'model': far better than chance (0.1)."""
    def pixels(pictures):
        v = np.asarray(pictures, dtype=np.float32).reshape(len(pictures), -1)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    result = benchmarks.fashion_mnist_benchmark(pixels, k=10, n_queries=200, n_gallery=3000)
    overall = result["summary"].loc["all"]
    assert overall["queries"] == 200
    assert 0.6 < overall["precision@10"] < 0.95
    assert overall["recall@1"] >= overall["precision@10"] - 0.1
    assert set(result["summary"].index) <= set(result["classes"]) | {"all"}
    confusion = metrics.confusion(result["per_query"]["label"].to_numpy(), result["gallery_labels"],
                                   result["neighbors"], result["classes"])
    # trousers are rarely confused; shirts are, with T-shirts and pullovers
    assert confusion.loc["Trouser", "Trouser"] > confusion.loc["Shirt", "Shirt"]
    grids = evaluate.worst_query_grids(result, n=2, k=4, thumb_size=40)
    assert len(grids) == 2 and grids[0].width > 4 * 40
