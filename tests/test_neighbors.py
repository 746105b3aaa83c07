import json

import numpy as np
import pandas as pd
import pytest

from helpers import runfolder
from helpers.index import AnnoyIndex
from helpers.duplicates import Rule, near_duplicates
from helpers.neighbors import neighbor_table, truncate4, write_nearest_neighbors_json
from helpers.options import EmbeddingOptions


def catalog(n=30, d=8, seed=0, products=None):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = products or [f"P{i:03d}" for i in range(n)]
    items = pd.DataFrame({"row": range(n), "path": [f"img{i}.jpg" for i in range(n)], "productId": ids})
    return v, items


def test_truncate_not_round():
    assert truncate4([0.81239, 0.99999, -0.12345, 1.0]).tolist() == [0.8123, 0.9999, -0.1234, 1.0]


def test_image_level_format_order_and_self_exclusion():
    v, items = catalog()
    table = neighbor_table(v, items, k=5)
    assert len(table) == 30 * 5
    assert (table["master_pi"] != table["similar_pi"]).all()
    for _, group in table.groupby("master_pi", sort=False):
        assert group["rank"].tolist() == [1, 2, 3, 4, 5]
        assert group["similarity"].is_monotonic_decreasing
    assert table["master_pi"].drop_duplicates().tolist() == items["productId"].tolist()
    sims = v @ v.T
    row = table.iloc[0]
    i, j = int(row.master_pi[1:]), int(row.similar_pi[1:])
    assert row.similarity == int(sims[i, j] * 10000) / 10000


def test_include_self_reproduces_the_reference():
    v, items = catalog()
    table = neighbor_table(v, items, k=3, include_self=True)
    first = table[table["rank"] == 1]
    assert (first["master_pi"] == first["similar_pi"]).all()
    assert (first["similarity"] >= 0.9999).all()


def test_product_level_uses_best_image_and_lists_each_product_once():
    v, items = catalog(products=[f"P{i // 3}" for i in range(30)])  # 10 products x 3 images
    table = neighbor_table(v, items, k=4, level="product")
    assert table["master_pi"].nunique() == 10
    sims = v @ v.T
    for master, group in table.groupby("master_pi"):
        assert group["similar_pi"].is_unique and master not in set(group["similar_pi"])
        assert len(group) == 4
        for other, sim in zip(group["similar_pi"], group["similarity"]):
            a, b = int(master[1:]), int(other[1:])
            best = sims[3 * a:3 * a + 3, 3 * b:3 * b + 3].max()
            assert sim == int(best * 10000) / 10000


def test_min_similarity_and_duplicates_file():
    v, items = catalog()
    v[1] = v[0]  # an exact duplicate
    table = neighbor_table(v, items, k=5, min_similarity=0.5)
    assert (table["similarity"] >= 0.5).all()
    dups = near_duplicates(neighbor_table(v, items, k=5), items, Rule(accept=0.99, source="given"), None)
    assert dups[["product_a", "product_b"]].values.tolist() == [["P000", "P001"]]


def test_missing_and_duplicate_product_ids_at_product_level():
    v, items = catalog(n=6, products=["A", "A", "B", "C", "C", "C"])
    table = neighbor_table(v, items, k=20, level="product")
    assert sorted(table["master_pi"].unique()) == ["A", "B", "C"]
    assert table.groupby("master_pi").size().tolist() == [2, 2, 2]


def test_annoy_backend_gives_same_table_at_high_search_k():
    v, items = catalog(n=200)
    exact = neighbor_table(v, items, k=5)
    annoy = neighbor_table(v, items, k=5, index=AnnoyIndex.build(v, n_trees=10, search_k=100000))
    pd.testing.assert_frame_equal(exact, annoy)


def test_graph_and_compressed_backends_give_the_exact_table():
    from helpers.index import build_index

    v, items = catalog(n=300)
    exact = neighbor_table(v, items, k=5, level="product")
    for backend, params in [("faiss-hnsw", {"ef": 300}), ("voyager", {"ef": 300}),
                            ("faiss-ivfpq", {"nlist": 4, "nprobe": 4, "candidates": 300})]:
        table = neighbor_table(v, items, k=5, level="product", index=build_index(v, backend, **params))
        pd.testing.assert_frame_equal(exact, table, obj=backend)


def test_write_neighbors_takes_the_sweeps_choice_and_index_params(tmp_path):
    """03 builds what 02 recommended, with its settings; index_params override them."""
    from helpers import store
    from helpers.neighbors import write_neighbors

    v, items = catalog(n=120, d=16)
    run_dir = tmp_path / "run"
    with store.EmbeddingWriter(run_dir, 16) as writer:
        writer.append(v)
    items = items.assign(imageName=items["path"], sha256=[f"{i:064x}" for i in range(120)], width=8, height=8)
    runfolder.write_table(run_dir / runfolder.ITEMS, items[store.ITEM_COLUMNS])
    made = {"store_key": "made-here", "options_key": "made-here"}
    runfolder.write_json(run_dir / runfolder.EMBED_META, {"dim": 16, "options": EmbeddingOptions().as_dict(),
                                                         "computed_from": made})
    runfolder.write_json(run_dir / runfolder.INDEX_CHOICE, {"backend": "voyager", "M": 8, "ef": 150, "recall": 1.0,
                                                           "computed_from": made})
    meta = write_neighbors(run_dir, k=5, level="image", refresh=False)
    assert meta["backend"] == "voyager" and meta["index_params"] == {"M": 8, "ef": 150}
    meta = write_neighbors(run_dir, k=5, level="image", refresh=False, index_params={"ef": 200})
    assert meta["index_params"] == {"M": 8, "ef": 200}
    exact = write_neighbors(run_dir, k=5, level="image", backend="exact", refresh=False)
    assert exact["index_params"] == {}  # the choice's settings belong to another backend
    meta = write_neighbors(run_dir, k=5, level="image", backend="faiss-hnsw", refresh=False)
    assert meta["index_params"] == {}


def test_json_is_exactly_the_reference_format(tmp_path):
    v, items = catalog()
    table = neighbor_table(v, items, k=3)
    write_nearest_neighbors_json(table, tmp_path / "nn.json")
    records = json.loads((tmp_path / "nn.json").read_text())
    assert len(records) == 90
    assert all(list(r) == ["similarity", "master_pi", "similar_pi"] for r in records)
    assert [r["master_pi"] for r in records[:3]] == ["P000"] * 3
    text = (tmp_path / "nn.json").read_text()
    assert all(len(str(r["similarity"]).split(".")[-1]) <= 4 for r in records), text[:200]
    write_nearest_neighbors_json(table.iloc[:0], tmp_path / "empty.json")
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_search_by_image_finds_the_catalog_product(hostile_run_dir):
    from conftest import photo
    from helpers.neighbors import search_by_image

    query = photo("coffee").rotate(8, expand=False).resize((300, 200))  # a new photo of the cup
    table = search_by_image(hostile_run_dir, [query], k=3)
    assert table["similar_path"].iloc[0] in {"coffee.PNG", "café ☕.jpg", "coffee_palette.gif"}
    assert table["rank"].tolist() == [1, 2, 3] and table["similarity"].is_monotonic_decreasing


def test_search_by_image_lists_products_once_and_skips_unreadable_photos(tiny_catalog, tmp_path):
    """Each photo and its cropped copy are one product here: two images per product."""
    from conftest import PHOTOS, write_catalog
    from helpers import embed
    from helpers.neighbors import search_by_image

    write_catalog(tmp_path / "image_data.json", [{"imageName": f"{n}{s}", "productId": n}
                                                 for n in PHOTOS for s in (".jpg", "_copy.png")])
    embed.embed_folder(tiny_catalog, tmp_path / "run", catalog=tmp_path / "image_data.json", progress=False)
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    queries = [tiny_catalog / "coffee.jpg", tmp_path / "broken.jpg", tmp_path / "missing.jpg"]
    with pytest.warns(UserWarning) as caught:
        table = search_by_image(tmp_path / "run", queries, k=3)
    said = " ".join(str(w.message) for w in caught)
    assert "broken.jpg: not an image" in said and "missing.jpg: cannot read the file (No such file" in said
    assert table["query"].unique().tolist() == [str(queries[0])]  # the good photo is still answered
    assert table["similar_pi"].tolist()[0] == "coffee" and table["similar_pi"].is_unique
    assert table["rank"].tolist() == [1, 2, 3]
    images = search_by_image(tmp_path / "run", queries[:1], k=3, level="image")
    assert images["similar_pi"].tolist()[:2] == ["coffee", "coffee"]  # the photo and its copy
    with pytest.warns(UserWarning):
        assert search_by_image(tmp_path / "run", queries[1:]).empty


def test_search_by_image_embeds_photos_like_the_run(tiny_catalog, tmp_path):
    """A run with the HOG outline appended: a catalog file used as the query finds itself."""
    from helpers import embed
    from helpers.neighbors import search_by_image

    embed.embed_folder(tiny_catalog, tmp_path / "run", hog_weight=1.0, progress=False)
    table = search_by_image(tmp_path / "run", [tiny_catalog / "rocket_copy.png"], k=1, level="image")
    assert table["similar_path"].tolist() == ["rocket_copy.png"] and table["similarity"].iloc[0] > 0.999
    diffused = search_by_image(tmp_path / "run", [tiny_catalog / "rocket_copy.png"], k=3, rerank="diffusion")
    assert len(diffused) == 3 and diffused["similar_path"].iloc[0] in {"rocket_copy.png", "rocket.jpg"}


def test_expand_averages_with_the_first_neighbours():
    from helpers.neighbors import expand

    gallery = np.eye(4, dtype=np.float32)
    out = expand(gallery[:2], gallery, np.array([[2, 3], [-1, 3]]), n=1)
    np.testing.assert_allclose(out[0], np.array([1, 0, 1, 0]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(out[1], [0, 1, 0, 0])  # no neighbour found: unchanged


def test_query_expansion_in_write_neighbors(tiny_catalog, tmp_path):
    """Expanded vectors: symmetric scores, recorded in the meta, and no refresh afterwards."""
    from helpers import embed
    from helpers.neighbors import write_neighbors
    from helpers.runfolder import CANDIDATES

    run_dir = tmp_path / "run"
    embed.embed_folder(tiny_catalog, run_dir, catalog=tiny_catalog / "image_data.json", progress=False)
    plain = write_neighbors(run_dir, k=3, level="image")
    assert (run_dir / CANDIDATES).exists()
    before = pd.read_parquet(run_dir / "neighbors.parquet")
    meta = write_neighbors(run_dir, k=3, level="image", query_expansion=1)
    after = pd.read_parquet(run_dir / "neighbors.parquet")
    assert meta["query_expansion"] == 1 and not meta["refreshed"] and plain["query_expansion"] == 0
    assert not (run_dir / CANDIDATES).exists()  # lists of expanded vectors are never refreshed
    # a photo and its copy stay each other's best match, now even closer
    top = after[after["rank"] == 1].set_index("master_path")["similar_path"]
    assert top["coffee.jpg"] == "coffee_copy.png" and top["coffee_copy.png"] == "coffee.jpg"
    pair = lambda t: t[(t["master_path"] == "coffee.jpg") & (t["similar_path"] == "coffee_copy.png")]["similarity"]
    assert float(pair(after).iloc[0]) >= float(pair(before).iloc[0])
    scores = after.set_index(["master_path", "similar_path"])["similarity"]
    for (a, b), s in scores.items():  # symmetric: the same score both ways
        if (b, a) in scores.index:
            assert scores[(b, a)] == s


def test_auto_choice_by_catalog_size_and_memory():
    from helpers.index import build_index
    from helpers.neighbors import auto_choice

    gb = 10 ** 9
    assert auto_choice(5_000, 5_000 * 5120, 24 * gb) == {"backend": "exact"}
    assert auto_choice(60_000, 60_000 * 5120, 24 * gb)["backend"] == "annoy"
    # Annoy searches more of a bigger forest: recall stays about the same as N grows
    assert auto_choice(10_000, 0, 24 * gb)["search_k"] < auto_choice(60_000, 0, 24 * gb)["search_k"]
    # a million items: Annoy's trees miss half the neighbours there; the graph fits in 24 GB
    assert auto_choice(1_000_000, 1_000_000 * 5120, 24 * gb) == {"backend": "faiss-hnsw", "M": 16, "ef": 128}
    # ten million: the graph's float32 copy (51 GB) does not fit: the compressed index
    assert auto_choice(10_000_000, 10_000_000 * 5120, 24 * gb)["backend"] == "faiss-ivfpq"
    assert auto_choice(1_000_000, 1_000_000 * 5120)["backend"] in ("faiss-hnsw", "faiss-ivfpq")  # this machine
    v, _ = catalog(n=50, d=8)
    for n in (5_000, 60_000, 1_000_000, 10_000_000):  # every choice builds
        choice = auto_choice(n, n * 5120, 24 * gb)
        build_index(v, choice.pop("backend"), **choice).all_neighbors(3)


def test_diffusion_in_03_reorders_but_reports_cosines(tiny_catalog, tmp_path):
    from helpers import embed, store
    from helpers.neighbors import write_neighbors

    run_dir = tmp_path / "run"
    embed.embed_folder(tiny_catalog, run_dir, catalog=tiny_catalog / "image_data.json", progress=False)
    meta = write_neighbors(run_dir, k=5, backend="exact", rerank="diffusion")
    table = pd.read_parquet(run_dir / "neighbors.parquet")
    assert meta["rerank"] == "diffusion" and not meta["refreshed"]
    assert len(table) == 8 * 5 and table.groupby("master_pi")["rank"].apply(list).map([1, 2, 3, 4, 5].__eq__).all()
    vectors, items, _ = store.load_store(run_dir)
    row = {path: i for i, path in enumerate(items["path"])}
    cosines = [float(vectors[row[a]] @ vectors[row[b]]) for a, b in zip(table["master_path"], table["similar_path"])]
    np.testing.assert_allclose(table["similarity"], cosines, atol=1e-4)  # truncated to 4 decimals
    assert json.loads((run_dir / "nearest_neighbors.json").read_text())[0]["master_pi"] == table["master_pi"][0]
    with pytest.raises(ValueError, match="rerank"):
        write_neighbors(run_dir, rerank="graph")


@pytest.mark.parametrize("options", [{"query_expansion": 1}, {"rerank": "diffusion"}, {"level": "product"}])
def test_neighbor_table_on_arrays_equals_03_on_the_run_folder(tiny_catalog, tmp_path, options):
    """One search path: the in-memory function and 03's step give the same lists."""
    from helpers import embed, store
    from helpers.neighbors import write_neighbors

    run_dir = tmp_path / "run"
    embed.embed_folder(tiny_catalog, run_dir, catalog=tiny_catalog / "image_data.json", progress=False)
    params = {"k": 3, "level": "image", **options}
    write_neighbors(run_dir, backend="exact", **params)
    embeddings, items, _ = store.load_store(run_dir)
    pd.testing.assert_frame_equal(neighbor_table(embeddings, items, backend="exact", **params),
                                  pd.read_parquet(run_dir / runfolder.NEIGHBORS))
