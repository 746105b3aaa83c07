"""helpers.features: GeM pooling and object focus on the real model and real photos."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from helpers import features, models
from helpers.vectors import l2_normalise


@pytest.fixture(scope="module")
def model():
    return models.load_model("efficientnet-lite0")


def test_gem_between_average_and_max():
    rng = np.random.default_rng(0)
    fmap = rng.random((3, 7, 7, 16)).astype(np.float32)
    pooled = features.gem(fmap)
    assert np.all(pooled >= fmap.mean(axis=(1, 2)) - 1e-6) and np.all(pooled <= fmap.max(axis=(1, 2)) + 1e-6)
    np.testing.assert_allclose(features.gem(np.full((1, 7, 7, 4), 2.0, np.float32)), 2.0, rtol=1e-5)
    np.testing.assert_allclose(features.gem(fmap, p=1.0), fmap.mean(axis=(1, 2)), rtol=1e-5)


def test_regional_pooling_covers_the_map_at_three_sizes():
    found = features.regions(7, 7)
    assert found[0] == (0, 0, 7) and len(found) == 14
    covered = np.zeros((7, 7), int)
    for top, left, side in found:
        assert top >= 0 and left >= 0 and top + side <= 7 and left + side <= 7
        covered[top:top + side, left:left + side] += 1
    assert covered.min() >= 3  # every cell in the whole map and at least one region of each level
    uniform = np.random.default_rng(0).random((1, 1, 1, 8)).astype(np.float32) * np.ones((1, 7, 7, 8), np.float32)
    np.testing.assert_allclose(l2_normalise(features.regional_gem(uniform)), l2_normalise(features.gem(uniform)),
                               atol=1e-5)  # every region sees the same: the same direction as GeM


def test_object_box_follows_the_activation_blob():
    fmap = np.zeros((1, 7, 7, 4), np.float32)
    fmap[0, 1:3, 4:6] = 5.0  # a blob in the top right
    fmap[0, 6, 0] = 1.0      # a weaker speck elsewhere
    top, left, bottom, right = features.object_boxes(fmap, margin=0)[0]
    assert (top, left, bottom, right) == pytest.approx((1 / 7, 4 / 7, 3 / 7, 6 / 7))


def test_object_focus_finds_a_small_product(model):
    """A cat photo in the top-left quarter of a white canvas: the box is around it."""
    canvas = Image.new("RGB", (448, 448), "white")
    canvas.paste(photo("chelsea").resize((200, 200)), (10, 10))
    batch = np.asarray(canvas.resize((224, 224)))[None]
    top, left, bottom, right = features.object_boxes(model.feature_map(batch))[0]
    assert bottom <= 0.72 and right <= 0.72 and top < 0.2 and left < 0.2
    embedder = features.Embedder(model, pooling="avg", focus="object")
    crop = np.asarray(photo("chelsea").resize((224, 224)))[None]
    vector = embedder(batch)
    plain = features.Embedder(model, "avg")(batch)
    target = features.Embedder(model, "avg")(crop)
    # the object crop looks more like the cat alone than the whole canvas does
    assert float(vector[0] @ target[0]) > float(plain[0] @ target[0])


def test_options_give_unit_vectors_of_the_model_dim(model):
    batch = np.stack([np.asarray(photo(n).resize((224, 224))) for n in ("coffee", "rocket")])
    for pooling in features.POOLINGS:
        for focus in features.FOCUS:
            for hog_weight, dim in ((0, model.dim), (features.DEFAULT_HOG_WEIGHT, model.dim + features.HOG_DIM)):
                out = features.Embedder(model, pooling, focus, hog_weight)(batch)
                assert out.shape == (2, dim) and out.dtype == np.float32
                np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert features.Embedder(model).dim == 1280 + features.HOG_DIM  # the default: model + outline
    # "auto" is gem for a model with a feature map; TFLite and TF give the same vectors
    tf_model = models.load_model("efficientnet-lite0", runtime="tf")
    for pooling in ("avg", "gem"):
        np.testing.assert_allclose(features.Embedder(model, pooling)(batch),
                                   features.Embedder(tf_model, pooling)(batch), atol=1e-4)
    np.testing.assert_array_equal(features.Embedder(model)(batch), features.Embedder(model, "gem")(batch))
    with pytest.raises(ValueError, match="pooling"):
        features.Embedder(model, pooling="max")


def test_pooled_only_hub_module_says_what_is_missing(tmp_path):
    import tensorflow as tf

    class Pooled(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2])

    tf.saved_model.save(Pooled(), str(tmp_path / "pooled"))
    module = models.load_model(str(tmp_path / "pooled"))
    assert features.Embedder(module, hog_weight=0)(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 3)
    assert features.Embedder(module)(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 3 + features.HOG_DIM)
    with pytest.raises(models.ModelUnavailableError, match="feature map"):
        features.Embedder(module, pooling="gem")


def test_center_focus_weighs_the_middle():
    weights = features.center_weights(7, 7)
    assert weights[3, 3] == weights.max() and weights[0, 0] < 0.01 * weights[3, 3]
    fmap = np.zeros((1, 7, 7, 2), np.float32)
    fmap[0, 3, 3, 0] = 1.0  # something in the middle
    fmap[0, 0, :, 1] = 1.0  # something along the top edge
    pooled = features.gem(fmap, weights=weights)[0]
    assert pooled[0] > 3 * pooled[1]
    plain = features.gem(fmap)[0]
    assert plain[1] > plain[0]  # unweighted, the edge dominates


def test_gem_converts_only_the_feature_map():
    """TFLite conversion happens on first use: a gem-only process converts one function."""
    fresh = models.load_model("efficientnet-lite0")
    features.Embedder(fresh, "gem")(np.zeros((1, 224, 224, 3), np.uint8))
    assert fresh.runtime == "tflite" and list(fresh._converted) == ["feature_map"]


def test_center_zoom_sees_a_product_in_a_scene_better_than_the_whole_picture(model):
    """The cat pasted into the middle of the astronaut photo (a busy scene, the product filling
    about 60% of the side): the centre-and-zoom vector is closer to the cat alone than the
    whole-picture vector is, and closer than the one-pass centre weight."""
    scene = photo("astronaut").resize((224, 224))
    scene.paste(photo("chelsea").resize((134, 134)), (45, 45))
    cat = np.asarray(photo("chelsea").resize((224, 224)))[None]
    batch = np.asarray(scene)[None]
    closeness = {focus: float(features.Embedder(model, "gem", focus)(batch)[0]
                              @ features.Embedder(model, "gem", focus)(cat)[0])
                 for focus in ("none", "center", "center-zoom")}
    assert closeness["center-zoom"] > closeness["center"] > closeness["none"], closeness


def test_hog_outline_keeps_shape_and_ignores_brightness():
    """The HOG part alone, on real photos: a brighter copy keeps its outline, another photo
    does not, and the mirror image has the very same outline."""
    pictures = np.stack([np.asarray(photo(n).resize((224, 224))) for n in ("chelsea", "coffee")])
    brighter = np.clip(pictures[:1].astype(np.float32) * 1.2 + 10, 0, 255).astype(np.uint8)
    mirrored = pictures[:1, :, ::-1]
    outline = features.hog_vectors(np.concatenate([pictures, brighter, mirrored]))
    assert outline.shape == (4, features.HOG_DIM)
    np.testing.assert_allclose(np.linalg.norm(outline, axis=1), 1.0, rtol=1e-5)
    same, other, mirror = outline[0] @ outline[2], outline[0] @ outline[1], outline[0] @ outline[3]
    assert same > 0.95 and other < same - 0.2 and mirror > 0.9999, (same, other, mirror)


def test_batch_hog_is_scikit_images_hog():
    """helpers.features.hog (all pictures at once) gives scikit-image's hog of each picture:
    real photos, their mirror images, a flat picture and a binary silhouette."""
    from skimage.feature import hog

    def grey(picture):
        return np.asarray(picture.convert("L").resize((features.HOG_SIZE,) * 2, Image.BOX), np.float32)

    pictures = [grey(photo(n)) for n in ("chelsea", "coffee", "astronaut", "rocket")]
    pictures += [p[:, ::-1] for p in pictures]
    silhouette = np.where(np.add.outer(range(32), range(32)) > 31, 255, 0).astype(np.float32)  # flat but its edge
    pictures += [np.full((32, 32), 7, np.float32), silhouette]
    ours = features.hog(np.stack(pictures))
    theirs = np.stack([hog(p, orientations=features.HOG_ORIENTATIONS, pixels_per_cell=(features.HOG_CELL,) * 2,
                           cells_per_block=(2, 2), block_norm="L2-Hys", feature_vector=False) for p in pictures])
    assert ours.shape == theirs.shape == (10, 7, 7, 2, 2, 9)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert features.hog_vectors(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, features.HOG_DIM)


def test_hog_weight_mixes_the_two_cosines(model):
    """cos(a, b) of the joined vector = (model cosine + w^2 * outline cosine) / (1 + w^2)."""
    pictures = np.stack([np.asarray(photo(n).resize((224, 224))) for n in ("chelsea", "coffee", "rocket")])
    plain, joined = features.Embedder(model, "gem", hog_weight=0), features.Embedder(model, "gem", hog_weight=0.5)
    assert joined.dim == plain.dim + features.HOG_DIM == 1280 + 882
    a, m, h = joined(pictures), plain(pictures), features.hog_vectors(pictures)
    np.testing.assert_allclose(a @ a.T, (m @ m.T + 0.25 * (h @ h.T)) / 1.25, atol=1e-5)
    np.testing.assert_array_equal(features.Embedder(model, "gem", hog_weight=0)(pictures), m)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1", True, None])
def test_hog_weight_must_be_a_number_at_least_zero(model, bad):
    with pytest.raises(ValueError, match="hog_weight"):
        features.Embedder(model, "gem", hog_weight=bad)


def test_hog_weight_lifts_fashion_mnist(tmp_path, fashion_mnist_data):
    """What the outline is for: garments told apart by their cut (Fashion-MNIST subset;
    docs/benchmarks.md has the full protocol). The default weight lifts it, more weight more."""
    from helpers import evaluate

    def precision(hog_weight):
        result = evaluate.run_fashion_mnist(tmp_path, n_queries=200, n_gallery=2000, pooling="gem",
                                            hog_weight=hog_weight, progress=False)
        return result["summary"].loc["all", "precision@20"]

    off, default, full = precision(0.0), precision(features.DEFAULT_HOG_WEIGHT), precision(1.0)
    assert default > off + 0.01 and full > default, (off, default, full)
