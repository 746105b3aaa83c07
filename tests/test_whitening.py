"""helpers.whitening: learned on the catalog, applied identically to new queries."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import embed, images, neighbors, runfolder, store, whitening
from helpers.features import HOG_DIM


def test_whitening_decorrelates_and_normalises():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8)) * np.array([10, 5, 3, 1, 1, 0.5, 0.2, 0.1])
    x = (rng.normal(size=(2000, 8)) @ mixing.T + 3.0).astype(np.float32)
    learned = whitening.learn(x, floor=0.0)
    z = (x - learned.mean) @ learned.projection
    np.testing.assert_allclose(np.cov(z.T), np.eye(8), atol=1e-3)  # unit variance, no correlation
    out = learned.apply(x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert whitening.learn(x[:5]).projection.shape == (8, 4)  # a tiny catalog keeps n - 1 axes
    with pytest.raises(ValueError, match="at least 2"):
        whitening.learn(x[:1])


def test_save_load_round_trip(tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
    learned = whitening.learn(x)
    learned.save(tmp_path / "w.npz")
    again = whitening.Whitening.load(tmp_path / "w.npz")
    np.testing.assert_array_equal(again.apply(x), learned.apply(x))


def test_run_whitening_is_applied_identically_to_new_queries(tiny_catalog, tmp_path):
    run_dir = tmp_path / "run"
    meta = embed.embed_folder(tiny_catalog, run_dir, catalog=tiny_catalog / "image_data.json",
                              postprocess="whiten", progress=False)
    assert meta["postprocess"] == "whiten" and (run_dir / runfolder.WHITENING).exists()
    vectors, items, _ = store.load_store(run_dir)
    raw, _, _ = store.load_store(run_dir, postprocessed=False)
    # readers see the whitened vectors (a catalog of 8 images supports 7 axes)
    assert vectors.shape == (8, 7) and raw.shape == (8, 1280 + HOG_DIM)
    # a query photo goes through the same model and the same learned transform
    row = int(np.flatnonzero(items["path"] == "coffee.jpg")[0])
    query, _ = images.decode_image((tiny_catalog / "coffee.jpg").read_bytes(), 224)
    learned = whitening.Whitening.load(run_dir / runfolder.WHITENING)
    np.testing.assert_allclose(learned.apply(embed.embed_pixels([query], resize="squash"))[0], vectors[row],
                               atol=1e-3)
    found = neighbors.search_by_image(run_dir, [tiny_catalog / "coffee.jpg"], k=2)
    assert found["similar_pi"].iloc[0] == items["productId"].iloc[row]
    assert found["similarity"].iloc[0] >= 0.999
    # incremental: nothing is embedded again, the transform is the same
    again = embed.embed_folder(tiny_catalog, run_dir, catalog=tiny_catalog / "image_data.json",
                               postprocess="whiten", progress=False)
    assert again["n_embedded_now"] == 0
    np.testing.assert_allclose(store.load_store(run_dir)[0], vectors, atol=1e-6)
    # neighbour lists are searched again, never refreshed: a changed catalog moves every vector
    assert not neighbors.write_neighbors(run_dir, k=2)["refreshed"]
    assert not neighbors.write_neighbors(run_dir, k=2)["refreshed"]
    # switching it off removes it: readers get the model's vectors again
    embed.embed_folder(tiny_catalog, run_dir, catalog=tiny_catalog / "image_data.json", progress=False)
    assert not (run_dir / runfolder.WHITENING).exists()
    np.testing.assert_allclose(store.load_store(run_dir)[0], raw, atol=1e-6)
