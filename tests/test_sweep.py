import numpy as np
import pytest

from helpers import sweep


def clustered(n=600, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    v = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_sweep_measures_every_combination():
    table = sweep.run_sweep(clustered(), n_trees_grid=[1, 5], search_k_grid=[-1, 10], k=5,
                            n_queries=100, include_reference=False, progress=False)
    annoy = table[table["backend"] == "annoy"]
    assert len(annoy) == 4 and (table["backend"] == "exact").sum() == 1
    assert annoy.set_index(["n_trees", "search_k"]).index.tolist() == [(1, -1), (1, 50), (5, -1), (5, 250)]
    assert (annoy["index_bytes"] > 0).all() and (annoy["queries_per_second"] > 0).all()
    assert annoy["recall"].between(0, 1).all()
    # more trees with a larger search_k never find less on this data
    assert annoy.iloc[-1]["recall"] >= annoy.iloc[0]["recall"]
    assert table["pareto"].any()


def test_reference_configuration_added_for_small_catalogs():
    table = sweep.run_sweep(clustered(200), n_trees_grid=[2], search_k_grid=[-1, 5], k=5, n_queries=50,
                            progress=False)
    ref = table[table["reference"]]
    assert ref["n_trees"].tolist() == [10_000] and ref["search_k"].tolist() == [-1]


def test_pareto_front():
    recall = np.array([0.9, 0.95, 0.8, 0.95])
    speed = np.array([100, 50, 40, 60])
    assert sweep.pareto_front(recall, speed).tolist() == [True, False, False, True]


def test_recommendation_rules():
    import pandas as pd
    base = dict(index_bytes=1, peak_memory_bytes=1, reference=False, pareto=False, search_k_multiple=-1)
    table = pd.DataFrame([
        dict(backend="exact", n_trees=0, search_k=np.nan, recall=1.0, all_items_seconds=100, **base),
        dict(backend="annoy", n_trees=5, search_k=-1, recall=0.90, all_items_seconds=5, **base),
        dict(backend="annoy", n_trees=10, search_k=-1, recall=0.96, all_items_seconds=10, **base),
        dict(backend="annoy", n_trees=50, search_k=-1, recall=0.99, all_items_seconds=40, **base),
    ])
    choice = sweep.recommend(table, 0.95)
    assert (choice["backend"], choice["n_trees"], choice["search_k"]) == ("annoy", 10, -1)
    assert sweep.recommend(table, 0.999)["backend"] == "exact"
    table.loc[0, "all_items_seconds"] = 12  # Annoy (10 s) is faster, but not clearly
    assert "faster" in sweep.recommend(table, 0.95)["reason"]
    assert sweep.recommend(table, 0.95)["backend"] == "exact"
    table.loc[0, "all_items_seconds"] = 13
    assert sweep.recommend(table, 0.95)["backend"] == "annoy"


@pytest.mark.parametrize("multiple,expected", [(-1, -1), (2, 400), (0.5, 100)])
def test_search_k_multiples(multiple, expected):
    assert sweep.resolve_search_k(multiple, k=20, n_trees=10) == expected


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_catalogs_recommend_exact(n):
    table = sweep.run_sweep(clustered(600)[:n], n_trees_grid=[1], search_k_grid=[-1], k=5, progress=False)
    assert table["backend"].tolist() == ["exact"]
    choice = sweep.recommend(table)
    assert choice["backend"] == "exact"
    import json
    json.loads(json.dumps(choice, allow_nan=False))  # valid JSON: no NaN


def test_sweep_puts_every_backend_on_one_table_and_recommends_with_its_settings():
    from helpers import plots
    from helpers.index import build_index, default_nlist

    vectors = clustered(800)
    table = sweep.run_sweep(vectors, n_trees_grid=[5], search_k_grid=[-1], k=5, n_queries=100,
                            include_reference=False, progress=False,
                            backends=["annoy", "faiss-ivfpq", "faiss-hnsw", "voyager"],
                            nlist_grid=[None, 8], nprobe_grid=[1, 8], M_grid=[8], ef_grid=[16, 64])
    counts = table["backend"].value_counts().to_dict()
    assert counts == {"exact": 1, "annoy": 1, "faiss-ivfpq": 4, "faiss-hnsw": 2, "voyager": 2}
    ivf = table[table["backend"] == "faiss-ivfpq"]
    assert sorted(set(ivf["nlist"])) == sorted({default_nlist(800), 8})
    assert set(ivf["nprobe"]) == {1, 8} and (ivf["candidates"] == 50).all()  # re-ranked: 10 x k
    graphs = table[table["backend"].isin(["faiss-hnsw", "voyager"])]
    assert set(graphs["ef"]) == {16, 64} and (graphs["recall"] >= 0.9).all()
    assert table["recall"].between(0, 1).all() and (table["index_bytes"] > 0).all()
    # the compressed index is smaller than the float32 vectors, the graphs are not
    assert (ivf["index_bytes"] < vectors.nbytes).all()
    choice = sweep.recommend(table, 0.9)
    if choice["backend"] != "exact":  # the recommended setting rebuilds as it was measured
        settings = {k: v for k, v in choice.items() if k not in ("backend", "recall", "estimated_all_items_seconds",
                                                                   "target_recall", "reason")}
        build_index(vectors, choice["backend"], **settings).all_neighbors(5)
    fig = plots.plot_sweep(table, k=5)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"faiss-hnsw M=8", "voyager M=8", "annoy n_trees=5", "faiss-ivfpq nlist=8"} <= set(labels)


def test_recommendation_of_another_backend_carries_its_settings():
    import pandas as pd
    base = dict(index_bytes=1, peak_memory_bytes=1, reference=False, pareto=False)
    table = pd.DataFrame([
        dict(backend="exact", n_trees=0, recall=1.0, all_items_seconds=100, **base),
        dict(backend="annoy", n_trees=10, search_k=-1, recall=0.96, all_items_seconds=30, **base),
        dict(backend="faiss-hnsw", M=16, ef=64, recall=0.97, all_items_seconds=10, **base),
    ])
    choice = sweep.recommend(table, 0.95)
    assert choice["backend"] == "faiss-hnsw" and (choice["M"], choice["ef"]) == (16, 64)
    assert "n_trees" not in choice and "10.0x faster" in choice["reason"]
