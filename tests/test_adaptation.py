"""helpers.adaptation: 01's adapt="whiten-pairs", learned from the catalog's own edited copies
and applied identically to the catalog, to new queries and on every re-run."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import photo

from helpers import adaptation, embed, neighbors, runfolder, store, whitening
from helpers.options import EmbeddingOptions
from helpers.vectors import l2_normalise


def _products_with_nuisance(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Products in 48 dimensions, and copies that move along 4 loud nuisance directions
    (a background, a colour cast) more than products differ in the others."""
    rng = np.random.default_rng(seed)
    products = rng.normal(size=(n, 48))
    nuisance = np.zeros((n, 48))
    nuisance[:, :4] = rng.normal(scale=8.0, size=(n, 4))
    return l2_normalise(products), l2_normalise(products + nuisance)


@pytest.mark.parametrize("method, at_least", [("whiten-pairs", 0.95), ("head", 0.75)])
def test_pairs_teach_which_directions_do_not_tell_products_apart(method, at_least):
    catalog, copied = _products_with_nuisance(400, seed=0)
    fit, held_out = np.arange(200), np.arange(200, 400)
    learned = adaptation.learn(method, fit, copied[fit], catalog)
    before = (copied[held_out] @ catalog.T).argmax(axis=1) == held_out
    after = (learned.apply(copied[held_out]) @ learned.apply(catalog).T).argmax(axis=1) == held_out
    assert after.mean() >= at_least > before.mean() + 0.15  # measured on products it never saw
    again = adaptation.learn(method, fit, copied[fit], catalog)
    np.testing.assert_array_equal(again.projection, learned.projection)  # a refit is deterministic


def test_adapt_cannot_be_combined_with_another_whitening():
    with pytest.raises(ValueError, match="adapt='head' already learns a projection.*postprocess='none'"):
        EmbeddingOptions(adapt="head", postprocess="whiten")
    with pytest.raises(ValueError, match="adapt='fine-tune'; choose one of"):
        EmbeddingOptions(adapt="fine-tune")
    plain, adapted = EmbeddingOptions(), EmbeddingOptions(adapt="whiten-pairs")
    assert plain.vector_key() == adapted.vector_key() and plain.key() != adapted.key()


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backgrounds")
    for name in ("grass", "brick"):
        photo(name).convert("RGB").save(folder / f"{name}.jpg")
    return folder


def test_an_adapted_run_is_the_same_for_catalog_queries_and_reruns(tiny_catalog, backgrounds, tmp_path):
    catalog = tiny_catalog / "image_data.json"
    run_dir = tmp_path / "run"
    meta = embed.embed_folder(tiny_catalog, run_dir, catalog=catalog, adapt="whiten-pairs",
                              backgrounds=backgrounds, progress=False)
    record = meta["adaptation"]
    assert record["sources"] == 8 and record["pairs"] == 8 * 8 and not record["copies_reused"]
    assert meta["seconds"]["adaptation"] > 0
    vectors, items, _ = store.load_store(run_dir)
    raw, _, _ = store.load_store(run_dir, postprocessed=False)
    learned = whitening.Whitening.load(run_dir / runfolder.WHITENING)
    np.testing.assert_array_equal(vectors, learned.apply(raw))
    assert not np.allclose(vectors, raw)
    # a query photo is embedded and projected as the catalog was
    found = neighbors.search_by_image(run_dir, [tiny_catalog / "coffee.jpg"], k=2)
    row = int(np.flatnonzero(items["path"] == "coffee.jpg")[0])
    assert found["similar_pi"].iloc[0] == items["productId"].iloc[row] and found["similarity"].iloc[0] >= 0.999
    # a re-run reuses the copies and learns exactly the same; so does a fresh run elsewhere
    again = embed.embed_folder(tiny_catalog, run_dir, catalog=catalog, adapt="whiten-pairs",
                               backgrounds=backgrounds, progress=False)
    assert again["n_embedded_now"] == 0 and again["adaptation"]["copies_reused"]
    np.testing.assert_array_equal(store.load_store(run_dir)[0], vectors)
    embed.embed_folder(tiny_catalog, tmp_path / "fresh", catalog=catalog, adapt="whiten-pairs",
                       backgrounds=backgrounds, progress=False)
    np.testing.assert_array_equal(store.load_store(tmp_path / "fresh")[0], vectors)
    assert again["computed_from"]["store_key"] == runfolder.record(tmp_path / "fresh", "embed")["computed_from"]["store_key"]


def test_lists_from_an_adapted_store_are_refused_once_it_is_not(tiny_catalog, backgrounds, tmp_path):
    catalog = tiny_catalog / "image_data.json"
    run_dir = tmp_path / "run"
    embed.embed_folder(tiny_catalog, run_dir, catalog=catalog, progress=False)
    plain_key = runfolder.record(run_dir, "embed")["computed_from"]["store_key"]
    embed.embed_folder(tiny_catalog, run_dir, catalog=catalog, adapt="whiten-pairs", backgrounds=backgrounds,
                       progress=False)
    neighbors.write_neighbors(run_dir, k=2)
    runfolder.check_current(run_dir, "neighbors", "export")
    # switched off: the model's vectors again (nothing re-embedded), the learned files gone,
    # and 03's lists from the adapted store refused
    meta = embed.embed_folder(tiny_catalog, run_dir, catalog=catalog, progress=False)
    assert meta["n_embedded_now"] == 0 and meta["computed_from"]["store_key"] == plain_key
    assert not (run_dir / runfolder.WHITENING).exists() and not (run_dir / runfolder.ADAPTATION_PAIRS).exists()
    with pytest.raises(runfolder.StaleError, match="re-run 03"):
        runfolder.check_current(run_dir, "neighbors", "export")
