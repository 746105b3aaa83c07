"""helpers.evaluate: 05's orchestration on a real run."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import evaluate


def test_split_sources_avoids_lookalikes():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 32))
    twins = base[:10] + 0.01 * rng.normal(size=(10, 32))  # ten near-copies of the first ten
    vectors = np.concatenate([base, twins]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sources, distractors = evaluate.split_sources(vectors, 30)
    chosen = np.concatenate([sources, distractors])
    assert len(sources) == 30 and len(set(chosen)) == len(chosen)
    similarity = vectors[chosen] @ vectors[chosen].T
    np.fill_diagonal(similarity, 0)
    assert similarity.max() < 0.9  # no pair of look-alikes survives
    assert len(chosen) == 50


def test_labels_benchmark_on_a_real_run(tiny_run, tmp_path):
    """A user's CSV: every photo and its cropped copy share a label; an unlabelled image
    stays in as a distractor, a label missing from the run is ignored."""
    run_dir, _ = tiny_run
    # written by hand: spaces after commas, "./" in front of some names
    rows = ["imageName, label"] + [f"{'./' if s == '.jpg' else ''}{n}{s}, {n}"
                                   for n in ("chelsea", "coffee", "astronaut") for s in (".jpg", "_copy.png")]
    rows += ["not_in_run.jpg,ghost"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    result = evaluate.run_labels(run_dir, tmp_path / "labels.csv", k=3, n_queries=100)
    per_query = result["per_query"]
    assert len(per_query) == 6  # labelled images of the run; rocket is unlabelled
    np.testing.assert_allclose(per_query["recall@1"], 1.0)  # each finds its copy first
    np.testing.assert_allclose(per_query["mAP@3"], 1.0)     # one right answer, found at rank 1
    np.testing.assert_allclose(per_query["precision@3"], 1 / 3)
    # the same file saved by a spreadsheet that separates with semicolons
    (tmp_path / "semicolons.csv").write_text("\n".join(r.replace(",", ";") for r in rows) + "\n")
    again = evaluate.run_labels(run_dir, tmp_path / "semicolons.csv", k=3, n_queries=100)["per_query"]
    pd.testing.assert_frame_equal(again, per_query)
    (tmp_path / "bad.csv").write_text("file,class\na,b\n")
    with pytest.raises(ValueError, match="label"):
        evaluate.run_labels(run_dir, tmp_path / "bad.csv")
    (tmp_path / "one_column.csv").write_text("path\nchelsea.jpg\ncoffee.jpg\n")
    with pytest.raises(ValueError, match=r"needs a 'label' column.*found \['path'\]"):
        evaluate.run_labels(run_dir, tmp_path / "one_column.csv")


def test_check_benchmarks():
    assert evaluate.check_benchmarks("fashion-mnist") == ["fashion-mnist"]
    assert evaluate.check_benchmarks(["near-duplicates", "labels"]) == ["near-duplicates", "labels"]
    with pytest.raises(ValueError, match="choose from"):
        evaluate.check_benchmarks(["near-duplicate"])
