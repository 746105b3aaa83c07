"""helpers.evaluate: metrics against hand-computed cases, the near-duplicate generator, benchmarks."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import photo
from helpers import catalog, evaluate, images


def test_precision_counts_missing_results_as_wrong():
    rel = evaluate.relevance([[0.9, 0.8, 0.7]], [[1, 0, 1]])
    assert evaluate.precision_at_k(rel, 3)[0] == pytest.approx(2 / 3)
    short = evaluate.relevance([[0.9]], [[1]])  # only one result came back
    assert evaluate.precision_at_k(short, 3)[0] == pytest.approx(1 / 3)
    missing = evaluate.relevance([[0.9, np.nan, np.nan]], [[1, 1, 1]])  # NaN = no result
    assert evaluate.precision_at_k(missing, 3)[0] == pytest.approx(1 / 3)


def test_ties_share_their_group_mean():
    # ranks 2 and 3 are tied: either order is as likely, so the cut at k=2 gets half a hit
    rel = evaluate.relevance([[0.9, 0.8, 0.8, 0.7]], [[1, 1, 0, 0]])
    np.testing.assert_allclose(rel, [[1, 0.5, 0.5, 0]])
    assert evaluate.precision_at_k(rel, 2)[0] == pytest.approx(0.75)
    assert evaluate.precision_at_k(rel, 3)[0] == pytest.approx(2 / 3)  # whole group inside: no change
    top_tie = evaluate.relevance([[0.9, 0.9]], [[0, 1]])
    assert evaluate.recall_at_1(top_tie)[0] == pytest.approx(0.5)


def test_average_precision_by_hand():
    rel = evaluate.relevance([[0.9, 0.8, 0.7]], [[1, 0, 1]])
    assert evaluate.average_precision_at_k(rel, 3, 2)[0] == pytest.approx((1 + 2 / 3) / 2)
    # more right items exist than k: the denominator is k
    assert evaluate.average_precision_at_k(rel, 3, 5)[0] == pytest.approx((1 + 2 / 3) / 3)
    short = evaluate.relevance([[0.9, 0.8]], [[0, 1]])  # fewer than k results
    assert evaluate.average_precision_at_k(short, 3, 3)[0] == pytest.approx((1 / 2) / 3)
    assert evaluate.average_precision_at_k(short, 3, 0)[0] == 0.0  # nothing right exists


def test_hit_rate():
    rel = evaluate.relevance([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], [[0, 0, 1], [1, 1, 0]])
    np.testing.assert_allclose(evaluate.hit_rate_at_k(rel, 2), [0, 1])
    np.testing.assert_allclose(evaluate.hit_rate_at_k(rel, 3), [1, 1])
    np.testing.assert_allclose(evaluate.hit_rate_at_k(rel, 5), [1, 1])


def test_label_metrics_match_brute_force():
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(300, 16)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[:40] + 0.3 * rng.normal(size=(40, 16)).astype(np.float32)
    g_labels, q_labels = rng.integers(0, 4, 300), rng.integers(0, 4, 40)
    idx, sim = evaluate.retrieve(queries, gallery, 10)
    table = evaluate.label_metrics(q_labels, g_labels, idx, sim, 10)
    order = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    right = g_labels[order] == q_labels[:, None]
    np.testing.assert_allclose(table["precision@10"], right.mean(axis=1))
    np.testing.assert_allclose(table["recall@1"], right[:, 0])
    ap = [sum(right[q, :i + 1].mean() for i in range(10) if right[q, i]) / 10 for q in range(40)]
    np.testing.assert_allclose(table["mAP@10"], ap)


def test_confusion_rows_sum_to_one():
    idx = np.array([[0, 1, -1], [2, 2, 0]])
    table = evaluate.confusion(np.array(["a", "b"]), np.array(["a", "b", "b"]), idx, ["a", "b"])
    np.testing.assert_allclose(table.to_numpy(), [[0.5, 0.5], [1 / 3, 2 / 3]])


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three photos on white (no alpha) and one object with alpha."""
    root = tmp_path_factory.mktemp("sources")
    for name in ("chelsea", "coffee", "rocket"):
        im = photo(name)
        canvas = Image.new("RGB", (im.width + 80, im.height + 80), "white")
        canvas.paste(im, (40, 40))
        canvas.save(root / f"{name}.jpg", quality=92)
    disc = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    pixels = np.asarray(photo("astronaut").resize((200, 200))).copy()
    yy, xx = np.mgrid[:200, :200]
    alpha = (((yy - 100) ** 2 + (xx - 100) ** 2) < 70 ** 2) * 255
    disc = Image.fromarray(np.dstack([pixels, alpha]).astype(np.uint8), "RGBA")
    disc.save(root / "disc.png")
    return root


def test_near_duplicate_generator_labels(sources, tmp_path):
    paths = images.list_images(sources)
    labels = evaluate.make_near_duplicates(sources, paths[:3], tmp_path, variants_per_source=7,
                                           distractors=paths[3:], seed=1)
    assert len(labels) == 3 * 8 + 1
    # every transform used equally often, every image its own product, groups = sources
    counts = labels["transform"].value_counts()
    assert all(counts[t] == 3 for t in evaluate.TRANSFORMS) and counts["source"] == 3
    assert counts["distractor"] == 1 and labels["productId"].is_unique
    for group, rows in labels.groupby("group"):
        assert rows["source"].nunique() == 1
    for path in labels["path"]:
        pixels, _ = images.decode_image((tmp_path / path).read_bytes(), 64)
        assert pixels.shape == (64, 64, 3)
    # the catalog file it writes matches every image
    records = catalog.read_catalog(tmp_path / "image_data.json")
    match = catalog.match_catalog(images.list_images(tmp_path), records)
    assert len(match.product_id) == len(labels)
    assert json.loads((tmp_path / "image_data.json").read_text().splitlines()[0])["productId"]
    # a flip really is the mirror image of its source
    row = labels[(labels["transform"] == "flip")].iloc[0]
    source = np.asarray(Image.open(tmp_path / labels[(labels["group"] == row["group"])
                                                      & (labels["transform"] == "source")]["path"].iloc[0]))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / row["path"])), source[:, ::-1])
    # made again with fewer sources: no image of the first benchmark is left behind
    again = evaluate.make_near_duplicates(sources, paths[:1], tmp_path, variants_per_source=1)
    assert sorted(images.list_images(tmp_path)) == sorted(again["path"])
    # nothing readable to start from (a run without images): said plainly, not found out later
    (tmp_path / "junk.png").write_text("not a picture")
    for nothing in ([], ["junk.png"]):
        with pytest.raises(ValueError, match="no near-duplicate benchmark to build"):
            evaluate.make_near_duplicates(tmp_path, nothing, tmp_path / "out")


def test_background_swap_keeps_the_object_and_replaces_the_background(sources, tmp_path):
    im = Image.open(sources / "disc.png")
    mask = evaluate.foreground_mask(im)  # alpha is used where there is one
    assert mask[100, 100] and not mask[5, 5]
    white = Image.open(sources / "chelsea.jpg")
    mask = evaluate.foreground_mask(white)  # else: what differs from the border colour
    assert mask[white.height // 2, white.width // 2] and not mask[10, 10]
    assert 0.6 < mask.mean() < 0.95
    labels = evaluate.make_near_duplicates(sources, ["disc.png"], tmp_path, variants_per_source=7, seed=2)
    swapped = np.asarray(Image.open(tmp_path / labels.loc[labels["transform"] == "background", "path"].iloc[0]))
    corners = np.concatenate([swapped[:8, :8], swapped[-8:, -8:]]).reshape(-1, 3)
    assert np.abs(corners.astype(int) - 255).max() > 30  # the white background is gone


def test_sources_are_read_upright_and_bad_background_photos_are_passed_over(tmp_path):
    src, backgrounds = tmp_path / "src", tmp_path / "backgrounds"
    src.mkdir(), backgrounds.mkdir()
    # a phone photo stored sideways (EXIF orientation 6: turn 90 degrees clockwise to view)
    upright = photo("chelsea").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.ROTATE_90).save(src / "sideways.jpg", exif=exif, quality=95)
    Image.new("RGB", (3000, 1500), "navy").save(src / "big.png")  # shrunk to SOURCE_MAX_SIDE
    photo("coffee").save(backgrounds / "good.jpg")
    (backgrounds / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    labels = evaluate.make_near_duplicates(src, ["sideways.jpg", "big.png"], tmp_path / "out",
                                           variants_per_source=7, backgrounds=backgrounds, seed=3)
    by_name = labels.set_index(["source", "transform"])["path"]
    copy = Image.open(tmp_path / "out" / by_name["sideways.jpg", "source"])
    assert copy.size == (300, 200)  # as the photo is viewed, not as it is stored
    assert np.abs(np.asarray(copy, float) - np.asarray(upright, float)).mean() < 8
    assert Image.open(tmp_path / "out" / by_name["big.png", "source"]).size == (1024, 512)
    assert (labels["transform"] == "background").sum() == 2  # made despite the broken photo


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


def test_fashion_mnist_benchmark_on_pixels(fashion_mnist_data):
    """The protocol itself, with raw pixels as the 'model': far better than chance (0.1)."""
    def pixels(pictures):
        v = np.asarray(pictures, dtype=np.float32).reshape(len(pictures), -1)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    result = evaluate.fashion_mnist_benchmark(pixels, k=10, n_queries=200, n_gallery=3000)
    overall = result["summary"].loc["all"]
    assert overall["queries"] == 200
    assert 0.6 < overall["precision@10"] < 0.95
    assert overall["recall@1"] >= overall["precision@10"] - 0.1
    assert set(result["summary"].index) <= set(result["classes"]) | {"all"}
    confusion = evaluate.confusion(result["per_query"]["label"].to_numpy(), result["gallery_labels"],
                                   result["neighbors"], result["classes"])
    # trousers are rarely confused; shirts are, with T-shirts and pullovers
    assert confusion.loc["Trouser", "Trouser"] > confusion.loc["Shirt", "Shirt"]
    grids = evaluate.worst_query_grids(result, n=2, k=4, thumb_size=40)
    assert len(grids) == 2 and grids[0].width > 4 * 40


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
