"""helpers.metrics against hand-computed cases and brute force."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import metrics


def test_precision_counts_missing_results_as_wrong():
    rel = metrics.relevance([[0.9, 0.8, 0.7]], [[1, 0, 1]])
    assert metrics.precision_at_k(rel, 3)[0] == pytest.approx(2 / 3)
    short = metrics.relevance([[0.9]], [[1]])  # only one result came back
    assert metrics.precision_at_k(short, 3)[0] == pytest.approx(1 / 3)
    missing = metrics.relevance([[0.9, np.nan, np.nan]], [[1, 1, 1]])  # NaN = no result
    assert metrics.precision_at_k(missing, 3)[0] == pytest.approx(1 / 3)


def test_ties_share_their_group_mean():
    # ranks 2 and 3 are tied: either order is as likely, so the cut at k=2 gets half a hit
    rel = metrics.relevance([[0.9, 0.8, 0.8, 0.7]], [[1, 1, 0, 0]])
    np.testing.assert_allclose(rel, [[1, 0.5, 0.5, 0]])
    assert metrics.precision_at_k(rel, 2)[0] == pytest.approx(0.75)
    assert metrics.precision_at_k(rel, 3)[0] == pytest.approx(2 / 3)  # whole group inside: no change
    top_tie = metrics.relevance([[0.9, 0.9]], [[0, 1]])
    assert metrics.recall_at_1(top_tie)[0] == pytest.approx(0.5)


def test_average_precision_by_hand():
    rel = metrics.relevance([[0.9, 0.8, 0.7]], [[1, 0, 1]])
    assert metrics.average_precision_at_k(rel, 3, 2)[0] == pytest.approx((1 + 2 / 3) / 2)
    # more right items exist than k: the denominator is k
    assert metrics.average_precision_at_k(rel, 3, 5)[0] == pytest.approx((1 + 2 / 3) / 3)
    short = metrics.relevance([[0.9, 0.8]], [[0, 1]])  # fewer than k results
    assert metrics.average_precision_at_k(short, 3, 3)[0] == pytest.approx((1 / 2) / 3)
    assert metrics.average_precision_at_k(short, 3, 0)[0] == 0.0  # nothing right exists


def test_hit_rate():
    rel = metrics.relevance([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], [[0, 0, 1], [1, 1, 0]])
    np.testing.assert_allclose(metrics.hit_rate_at_k(rel, 2), [0, 1])
    np.testing.assert_allclose(metrics.hit_rate_at_k(rel, 3), [1, 1])
    np.testing.assert_allclose(metrics.hit_rate_at_k(rel, 5), [1, 1])


def test_label_metrics_match_brute_force():
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(300, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:40] + 0.3 * rng.normal(size=(40, 16)).astype(np.float32)
    g_labels, q_labels = rng.integers(0, 4, 300), rng.integers(0, 4, 40)
    idx, sim = metrics.retrieve(queries, gallery, 10)
    table = metrics.label_metrics(q_labels, g_labels, idx, sim, 10)
    order = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    right = g_labels[order] == q_labels[:, None]
    np.testing.assert_allclose(table["precision@10"], right.mean(axis=1))
    np.testing.assert_allclose(table["recall@1"], right[:, 0])
    ap = [sum(right[q, :i + 1].mean() for i in range(10) if right[q, i]) / 10 for q in range(40)]
    np.testing.assert_allclose(table["mAP@10"], ap)


def test_confusion_rows_sum_to_one():
    idx = np.array([[0, 1, -1], [2, 2, 0]])
    table = metrics.confusion(np.array(["a", "b"]), np.array(["a", "b", "b"]), idx, ["a", "b"])
    np.testing.assert_allclose(table.to_numpy(), [[0.5, 0.5], [1 / 3, 2 / 3]])
