"""Visual clusters and the map that keeps neighbours."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import clusters


def blobs(counts=(60, 40, 30), dim=32, spread=0.15, seed=0):
    """Unit vectors around well-separated centres, with their true blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), dim))
    truth = np.repeat(np.arange(len(counts)), counts)
    vectors = centres[truth] + spread * rng.normal(size=(len(truth), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), truth


def test_auto_finds_the_blobs_biggest_first():
    vectors, truth = blobs()
    labels, params = clusters.cluster(vectors)
    assert params["n_clusters"] == 3 and max(params["silhouette"], key=params["silhouette"].get) == "3"
    assert all(len(set(labels[truth == t])) == 1 for t in range(3))  # each blob is one cluster ...
    assert np.bincount(labels).tolist() == [60, 40, 30]  # ... numbered from the biggest


def test_a_given_count_is_used_and_bad_counts_are_refused():
    vectors, _ = blobs()
    labels, params = clusters.cluster(vectors, n_clusters=5)
    assert params["n_clusters"] == 5 and len(set(labels)) == 5
    assert clusters.cluster(vectors[:2])[0].tolist() == [0, 0]  # too few to cluster
    for bad in (0, -3, 2.5, True, "many"):
        with pytest.raises(ValueError, match="n_clusters"):
            clusters.check_n_clusters(bad)


def test_the_map_keeps_more_neighbours_than_principal_components():
    vectors, _ = blobs(counts=(80, 80, 80, 80, 80), dim=64, spread=0.6, seed=1)
    coordinates = clusters.neighbor_map(vectors)
    assert coordinates.shape == (len(vectors), 2) and np.isfinite(coordinates).all()
    pca = clusters.principal_components(vectors)[:, :2]
    assert clusters.kept_neighbors(vectors, coordinates) > clusters.kept_neighbors(vectors, pca) + 0.05
    np.testing.assert_array_equal(clusters.neighbor_map(vectors), coordinates)  # seeded: the same map again


def test_a_tiny_catalog_still_gets_a_map():
    vectors, _ = blobs(counts=(2, 1), dim=8)
    assert np.isfinite(clusters.neighbor_map(vectors)).all()
