"""The converted backbones are the real ImageNet networks, loaded the TF Hub way."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import models
from fixtures.reference_inputs import square_crop

REFERENCE = np.load(Path(__file__).parent / "fixtures" / "torch_reference.npz")
# ImageNet classes: 281-285 are domestic cats, 967 espresso, 968 cup, 504 coffee mug
CATS, COFFEE = set(range(281, 286)), {967, 968, 504}


def reference_inputs(size):
    from skimage import data
    return np.stack([square_crop(getattr(data, p)(), size) for p in REFERENCE["photos"]])


@pytest.fixture(scope="module", params=["efficientnet-lite0", "efficientnet-lite2"])
def backbone(request):
    return models.load_model(request.param)


def test_features_match_original_pytorch_model(backbone):
    key = backbone.handle.replace("-", "_")
    features = backbone.embed(reference_inputs(backbone.image_size))
    ref = REFERENCE[f"{key}_features"]
    cosine = (features * ref).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(ref, axis=1)
    assert backbone.dim == 1280
    assert cosine.min() >= 0.9999


def test_converted_classifier_names_real_photos(backbone):
    x = tf.constant(reference_inputs(backbone.image_size), tf.float32) / 255.0
    top5 = np.argsort(-backbone.module.logits(x).numpy(), axis=1)[:, :5]
    photos = list(REFERENCE["photos"])
    assert top5[photos.index("chelsea")][0] in CATS
    assert top5[photos.index("coffee")][0] in COFFEE
    np.testing.assert_array_equal(top5, np.argsort(-REFERENCE[f"{backbone.handle.replace('-', '_')}_logits"], 1)[:, :5])


def test_input_sizes():
    assert models.load_model("efficientnet-lite0").image_size == 224
    assert models.load_model("efficientnet-lite2").image_size == 260


def test_build_is_cached_and_atomic(tmp_path):
    first = models.build_efficientnet_lite("efficientnet-lite0", cache=tmp_path)
    stamp = (first / "saved_model.pb").stat().st_mtime_ns
    again = models.build_efficientnet_lite("efficientnet-lite0", cache=tmp_path)
    assert again == first and (first / "saved_model.pb").stat().st_mtime_ns == stamp
    leftovers = [p.name for p in first.parent.iterdir() if p != first]
    assert leftovers == []  # the temporary build folder was renamed, nothing half-built remains


def test_local_savedmodel_folder_is_a_handle():
    folder = models.build_efficientnet_lite("efficientnet-lite0")
    by_path = models.load_model(str(folder))
    by_name = models.load_model("efficientnet-lite0")
    pixels = reference_inputs(224)[:2]
    np.testing.assert_allclose(by_path.embed(pixels), by_name.embed(pixels), atol=1e-5)
    assert by_path.image_size == 224


class _RangeProbe(tf.Module):
    """A stand-in TF Hub image module that reports the range of what it was fed."""

    @tf.function(input_signature=[tf.TensorSpec([None, 96, 96, 3], tf.float32)])
    def __call__(self, images):
        return tf.stack([tf.reduce_min(images, [1, 2, 3]), tf.reduce_max(images, [1, 2, 3])], axis=1)


def test_hub_modules_are_fed_zero_to_one(tmp_path):
    """The reference fed 0-255 to a module that expects [0, 1]; we must not."""
    tf.saved_model.save(_RangeProbe(), str(tmp_path / "probe"))
    probe = models.load_model(str(tmp_path / "probe"))
    assert probe.image_size == 96  # read from the module's signature
    batch = np.zeros((2, 96, 96, 3), np.uint8)
    batch[0] = 255
    out = probe.embed(batch)
    np.testing.assert_allclose(out, [[1.0, 1.0], [0.0, 0.0]])


def test_offline_hub_url_names_the_offline_default():
    with pytest.raises(models.ModelUnavailableError, match="efficientnet-lite0"):
        models.load_model("https://tfhub.dev/google/imagenet/mobilenet_v2_140_224/feature_vector/4")


def test_unknown_handle():
    with pytest.raises(models.ModelUnavailableError, match="neither a known name"):
        models.load_model("resnet-9000")


def test_tflite_runtime_gives_the_same_vectors():
    tf_model = models.load_model("efficientnet-lite0", runtime="tf")
    lite = models.load_model("efficientnet-lite0", runtime="tflite")
    pixels = reference_inputs(224)
    assert lite.runtime == "tflite" and lite.dim == tf_model.dim
    np.testing.assert_allclose(lite.embed(pixels), tf_model.embed(pixels), atol=1e-4)
    np.testing.assert_allclose(lite.embed(pixels[:1]), tf_model.embed(pixels[:1]), atol=1e-4)


def test_int8_precision_is_quantised_yet_finds_the_same_photos():
    from PIL import Image

    from helpers.features import Embedder

    pixels = reference_inputs(224)
    full = models.load_model("efficientnet-lite0", runtime="tflite")
    int8 = models.load_model("efficientnet-lite0", precision="int8")
    for function in ("embed", "feature_map"):
        a, b = (getattr(m, function)(pixels).reshape(len(pixels), -1) for m in (full, int8))
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() > 0.95, cosine     # measured 0.98-0.996 on these photos
        assert np.abs(a - b).max() > 1e-3      # and really another (quantised) network
    # edited copies (crop + turn) still find their own photo first
    edited = np.stack([np.asarray(Image.fromarray(p).crop((20, 12, 210, 200)).rotate(6).resize((224, 224)))
                       for p in pixels])
    embedder = Embedder(int8, "gem", "none")
    similarity = embedder(edited) @ embedder(pixels).T
    np.testing.assert_array_equal(similarity.argmax(1), np.arange(len(pixels)))
    with pytest.raises(ValueError, match="int8.*TFLite"):
        models.load_model("efficientnet-lite0", runtime="tf", precision="int8")
    with pytest.raises(ValueError, match="precision="):
        models.load_model("efficientnet-lite0", precision="float16")


def test_tflite_conversions_are_cached_on_disk(tmp_path, monkeypatch):
    """The second process reads the converted model instead of converting again (int8: ~30 s here;
    float32, ~11 s, is what this test converts: the cache is the same for every precision)."""
    folder = str(models.build_efficientnet_lite("efficientnet-lite0"))  # the session's build
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    pixels = reference_inputs(224)[:2]
    first = models.load_model(folder, precision="float32").embed(pixels)
    (cached,) = (tmp_path / "tflite").glob("*.tflite")

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "_convert", no_conversion)
    np.testing.assert_array_equal(models.load_model(folder, precision="float32").embed(pixels), first)
    # another precision, function or model content is another file, never the cached one
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    paths = {models.tflite_cache_path(str(copy), "pooled", 224, "float32"),
             models.tflite_cache_path(folder, "pooled", 224, "int8"),
             models.tflite_cache_path(folder, "feature_map", 224, "float32")}
    assert models.tflite_cache_path(str(copy), "pooled", 224, "float32") == cached  # same files, same name
    (copy / "variables" / "variables.index").write_bytes(b"changed")
    assert models.tflite_cache_path(str(copy), "pooled", 224, "float32") not in paths | {cached}
    assert len(paths - {cached}) == 2
    # a damaged cache file is converted again, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    cached.write_bytes(b"not a model")
    np.testing.assert_array_equal(models.load_model(folder, precision="float32").embed(pixels), first)
    assert cached.stat().st_size > 1_000_000


def test_unknown_runtime():
    with pytest.raises(ValueError, match="runtime="):
        models.load_model("efficientnet-lite0", runtime="onnx")


def test_auto_precision_is_chosen_by_cpu_feature():
    """int8 where the CPU has 8-bit dot products (VNNI, AMX), for the bundled models only."""
    lite = "efficientnet-lite0"
    assert models.resolve_precision("auto", lite, {"avx2", "avx512f", "avx512_vnni"}) == "int8"  # AMD EPYC
    assert models.resolve_precision("auto", lite, {"avx2", "amx_int8", "amx_bf16"}) == "int8"    # Intel with AMX
    assert models.resolve_precision("auto", lite, {"avx2", "fma"}) == "float32"                 # no VNNI
    assert models.resolve_precision("auto", "/models/my_savedmodel", {"avx512_vnni"}) == "float32"
    assert models.resolve_precision("float32", lite, {"avx512_vnni"}) == "float32"
    from helpers.options import EmbeddingOptions

    here = models.resolve_precision("auto", lite, models.cpu_flags())
    assert EmbeddingOptions().precision == here  # resolved once, recorded as what ran
    assert EmbeddingOptions.of({"precision": "float32"}).precision == "float32"  # a store's record wins


def test_threads_run_their_own_interpreters_with_the_same_vectors():
    """01's workers call one model from several threads at once: each gets its own
    interpreter, and every thread's vectors equal the one-thread vectors exactly."""
    from concurrent.futures import ThreadPoolExecutor

    pixels = reference_inputs(224)
    model = models.load_model("efficientnet-lite0", precision="int8", threads=1)
    alone = model.feature_map(pixels)
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: model.feature_map(pixels), range(6)))
    for fmap in together:
        np.testing.assert_array_equal(fmap, alone)
