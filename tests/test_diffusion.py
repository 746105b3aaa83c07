"""helpers.diffusion: re-ranking along the gallery's own neighbour graph."""
import numpy as np
import pytest

from helpers import diffusion, fashion_mnist, metrics


def arc_and_loner():
    """A query at angle 0 in the xy-plane, 29 gallery points along an arc of that plane from
    0.1 to 1.5 rad (a chain of look-alikes), and one loner 0.5 rad away out of the plane."""
    angles = np.arange(0.1, 1.55, 0.05)
    arc = np.stack([np.cos(angles), np.sin(angles), 0 * angles], axis=1)
    loner = [[np.cos(0.5), 0.0, np.sin(0.5)]]
    return np.array([[1.0, 0.0, 0.0]], np.float32), np.concatenate([arc, loner]).astype(np.float32)


def test_a_loner_sinks_below_the_chain_it_outranked():
    query, gallery = arc_and_loner()
    loner = len(gallery) - 1
    rows, sims = metrics.retrieve(query, gallery, len(gallery))
    assert list(rows[0]).index(loner) == 9  # by cosine: behind the 9 arc points within 0.5 rad
    scores = diffusion.diffuse(gallery[rows[0]], sims[0], graph_k=10)
    diffused = rows[0][np.argsort(-scores)]
    assert list(diffused).index(loner) >= 20  # not linked both ways to anything: it only keeps its seed
    reranked, _ = metrics.retrieve(query, gallery, 12, rerank="diffusion")  # default settings
    assert loner not in reranked[0]


def test_rerank_pads_like_a_search_and_ties_break_by_row():
    _, gallery = arc_and_loner()
    candidates = np.array([[3, 4, -1, -1], [-1, -1, -1, -1], [5, 4, 6, 7]])
    sims = np.array([[0.9, 0.8, np.nan, np.nan], [np.nan] * 4, [0.7, 0.7, 0.6, 0.5]], np.float32)
    rows, scores = diffusion.rerank(gallery, candidates, sims, k=3)
    assert rows.shape == scores.shape == (3, 3)
    assert set(rows[0, :2]) == {3, 4} and rows[0, 2] == -1 and np.isnan(scores[0, 2])
    assert (rows[1] == -1).all() and np.isnan(scores[1]).all()
    assert set(rows[2]) <= {4, 5, 6, 7} and np.all(np.diff(scores[2]) <= 0)


def test_diffusion_helps_on_fashion_mnist_pixels(fashion_mnist_data):
    """Real data, no model: 200 test pictures against 3,000 train pictures as raw pixels."""
    train, train_labels = fashion_mnist.load("train")
    test, test_labels = fashion_mnist.load("test")
    queries = np.random.default_rng(0).permutation(len(test))[:200]

    def unit(x):
        v = x.reshape(len(x), -1).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def precision(rerank):
        found, _ = metrics.retrieve(unit(test[queries]), unit(train[:3000]), 10, rerank=rerank)
        return (train_labels[found] == test_labels[queries][:, None]).mean()

    assert precision("diffusion") > precision("none") + 0.01


def test_unknown_rerank_is_refused_before_any_work():
    with pytest.raises(ValueError, match="rerank='difusion'; choose one of"):
        metrics.retrieve(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), 1, rerank="difusion")
