import numpy as np
import pytest

from helpers.index import (AnnoyIndex, ExactIndex, FaissIndex, VoyagerIndex, build_index, finish, fit_pca,
                           locality_order, recall_at_k, top_k)


def unit(rng, n, d=16):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute_force(vectors, queries, k, exclude=None):
    """The oracle: full similarity matrix, Python sort per row."""
    out = []
    for qi, q in enumerate(queries):
        scored = [(-float(q @ v), j) for j, v in enumerate(vectors) if exclude is None or j != exclude[qi]]
        out.append([j for _, j in sorted(scored)[:k]])
    return np.array(out)


def test_top_k_orders_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 1.0, 1.0, 0.0]])
    idx, vals = top_k(scores, 3)
    assert idx.tolist() == [[1, 3, 2], [0, 1, 2]]
    np.testing.assert_allclose(vals, [[0.9, 0.9, 0.5], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_exact_matches_brute_force_in_any_chunking(chunk):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 50)
    index = ExactIndex(vectors, chunk_size=chunk)
    idx, sim = index.all_neighbors(5)
    rows = np.arange(50)
    assert (idx == brute_force(vectors, vectors, 5, exclude=rows)).all()
    np.testing.assert_allclose(sim, np.take_along_axis(vectors @ vectors.T, idx, 1), atol=1e-6)
    assert not (idx == rows[:, None]).any()  # no item is its own neighbour
    with_self, _ = index.all_neighbors(5, include_self=True)
    assert (with_self[:, 0] == rows).all()


def test_fewer_items_than_k():
    vectors = unit(np.random.default_rng(1), 3)
    idx, sim = ExactIndex(vectors).all_neighbors(20)
    assert idx.shape == (3, 2)
    idx, _ = AnnoyIndex.build(vectors, n_trees=2).all_neighbors(20)
    assert idx.shape == (3, 2) and (idx >= 0).all()


def test_recall_against_oracle():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [6, 5, 4]])
    assert recall_at_k(found, truth) == pytest.approx(5 / 6)
    assert recall_at_k(np.array([[-1, -1, 1]]), np.array([[1, 2, 3]])) == pytest.approx(1 / 3)


def test_annoy_recall_rises_with_search_k():
    rng = np.random.default_rng(2)
    vectors = unit(rng, 2000, 32)
    truth, _ = ExactIndex(vectors).all_neighbors(10)
    low = AnnoyIndex.build(vectors, n_trees=2, search_k=20)
    high = AnnoyIndex.build(vectors, n_trees=2, search_k=20000)
    r_low = recall_at_k(low.all_neighbors(10)[0], truth)
    r_high = recall_at_k(high.all_neighbors(10)[0], truth)
    assert r_low < 0.9 and r_high > 0.99


def test_annoy_similarity_is_cosine():
    rng = np.random.default_rng(3)
    vectors = unit(rng, 300)
    idx, sim = AnnoyIndex.build(vectors, n_trees=10, search_k=100000).all_neighbors(5)
    np.testing.assert_allclose(sim, np.take_along_axis(vectors @ vectors.T, idx, 1), atol=1e-4)


def test_annoy_index_file_is_deterministic(tmp_path):
    vectors = unit(np.random.default_rng(4), 500)
    for name in ("a.ann", "b.ann"):
        AnnoyIndex.build(vectors, n_trees=8, seed=7, build_jobs=1).save(tmp_path / name)
    assert (tmp_path / "a.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()
    other_seed = AnnoyIndex.build(vectors, n_trees=8, seed=8, build_jobs=1)
    other_seed.save(tmp_path / "c.ann")
    assert (tmp_path / "c.ann").read_bytes() != (tmp_path / "a.ann").read_bytes()


def test_multithreaded_build_is_repeatable_in_its_results():
    vectors = unit(np.random.default_rng(4), 2000)
    first = AnnoyIndex.build(vectors, n_trees=8, seed=7, build_jobs=2).all_neighbors(10)
    for _ in range(3):
        again = AnnoyIndex.build(vectors, n_trees=8, seed=7, build_jobs=2).all_neighbors(10)
        np.testing.assert_array_equal(again[0], first[0])


def test_annoy_save_load_and_on_disk_build(tmp_path):
    vectors = unit(np.random.default_rng(5), 400)
    built = AnnoyIndex.build(vectors, n_trees=5, on_disk_path=tmp_path / "disk.ann")
    loaded = AnnoyIndex.load(tmp_path / "disk.ann", dim=16)
    assert len(loaded) == 400 and loaded.n_trees == 5
    np.testing.assert_array_equal(built.all_neighbors(5)[0], loaded.all_neighbors(5)[0])


def test_new_query_vectors():
    rng = np.random.default_rng(6)
    vectors = unit(rng, 200)
    queries = vectors[:3] + 0.01 * unit(rng, 3)  # near-copies of items 0, 1, 2
    for index in (ExactIndex(vectors), AnnoyIndex.build(vectors, n_trees=10, search_k=10000)):
        idx, sim = index.search(queries, 4)
        assert idx[:, 0].tolist() == [0, 1, 2] and (sim[:, 0] > 0.99).all()


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend="):
        build_index(np.eye(3, dtype=np.float32), backend="faiss")
    with pytest.raises(ValueError, match="not nprobe"):  # a setting of another backend is a typo, not a no-op
        build_index(np.eye(3, dtype=np.float32), backend="annoy", nprobe=8)


def test_pca_annoy_reranks_with_exact_cosine(tmp_path):
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, 64))
    v = centres[rng.integers(0, 30, 1500)] + 0.5 * rng.normal(size=(1500, 64))
    vectors = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    truth, truth_sim = ExactIndex(vectors).all_neighbors(10)
    index = AnnoyIndex.build(vectors, n_trees=10, search_k=5000, pca_dims=16, candidates=60)
    idx, sim = index.all_neighbors(10)
    assert recall_at_k(idx, truth) > 0.9
    np.testing.assert_allclose(sim, np.take_along_axis(vectors @ vectors.T, idx, 1), atol=1e-5)
    index.save(tmp_path / "pca.ann")
    with pytest.raises(ValueError, match="pass vectors="):
        AnnoyIndex.load(tmp_path / "pca.ann", dim=64)
    loaded = AnnoyIndex.load(tmp_path / "pca.ann", dim=64, search_k=5000, vectors=vectors, candidates=60)
    np.testing.assert_array_equal(loaded.search(vectors[:5], 10)[0], index.search(vectors[:5], 10)[0])


def test_pca_axes_are_the_principal_axes_of_the_sample():
    rng = np.random.default_rng(8)
    x = (rng.normal(size=(3000, 12)) * np.linspace(5, 0.5, 12)) @ np.linalg.qr(rng.normal(size=(12, 12)))[0]
    mean, axes = fit_pca(x.astype(np.float32), 4, sample=3000)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(mean, x.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(np.abs((axes * vt[:4]).sum(axis=1)), 1.0, atol=1e-4)  # same axes, any sign


def test_locality_order_groups_near_rows_and_leaves_results_unchanged():
    rng = np.random.default_rng(9)
    centres = 10 * rng.normal(size=(8, 16))
    labels = rng.integers(0, 8, 4000)
    points = (centres[labels] + rng.normal(size=(4000, 16))).astype(np.float32)
    order = locality_order(points)
    assert sorted(order.tolist()) == list(range(4000))
    # catalog order switches cluster at almost every row; the locality order a few times per group
    assert np.count_nonzero(np.diff(labels[order])) < 0.1 * np.count_nonzero(np.diff(labels))
    vectors = points / np.linalg.norm(points, axis=1, keepdims=True)
    index = AnnoyIndex.build(vectors, n_trees=5, search_k=2000, pca_dims=8, candidates=40)
    shuffled = rng.permutation(4000)
    idx, sim = index.search(vectors, 10)
    idx_s, sim_s = index.search(vectors[shuffled], 10)
    np.testing.assert_array_equal(idx_s, idx[shuffled])  # each query's answer is its own
    np.testing.assert_array_equal(sim_s, sim[shuffled])


def clustered_unit(n=3000, d=64, clusters=40, seed=7):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    v = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


GRAPH_AND_LIST_BACKENDS = [
    ("faiss-hnsw", {"M": 16, "ef": 64}, 0.98),
    ("voyager", {"M": 16, "ef": 64}, 0.98),
    ("voyager", {"M": 16, "ef": 64, "storage": "e4m3", "candidates": 40}, 0.97),
    ("faiss-ivfpq", {"nprobe": 8, "pq_m": 16}, 0.9),  # re-ranked by exact cosine (default 10 x k)
]


@pytest.mark.parametrize("backend,params,min_recall", GRAPH_AND_LIST_BACKENDS)
def test_other_backends_against_exact(backend, params, min_recall, tmp_path):
    vectors = clustered_unit()
    truth, _ = ExactIndex(vectors).all_neighbors(10)
    index = build_index(vectors, backend, **params)
    idx, sim = index.all_neighbors(10)
    assert recall_at_k(idx, truth) >= min_recall
    rows = np.arange(len(vectors))
    assert not (idx == rows[:, None]).any()  # never its own neighbour
    assert (np.diff(sim, axis=1) <= 1e-6).all()  # best first
    exact_sim = np.take_along_axis(vectors @ vectors.T, idx, 1)
    # similarities are cosines: exact for float32 storage and re-ranked hits
    np.testing.assert_allclose(sim, exact_sim, atol=1e-5 if backend != "voyager" or "candidates" in params else 1e-4)
    with_self, _ = index.all_neighbors(5, include_self=True)
    assert (with_self[:, 0] == rows).mean() > 0.99
    # saved and loaded: the same answers
    index.save(tmp_path / "index")
    if backend == "voyager":
        loaded = VoyagerIndex.load(tmp_path / "index", ef=params["ef"], vectors=vectors,
                                   candidates=params.get("candidates"))
    else:
        loaded = FaissIndex.load(tmp_path / "index", nprobe=params.get("nprobe"), ef=params.get("ef"), vectors=vectors)
    np.testing.assert_array_equal(loaded.search(vectors[:50], 10)[0], index.search(vectors[:50], 10)[0])


@pytest.mark.parametrize("backend", ["faiss-hnsw", "voyager", "faiss-ivfpq"])
def test_other_backends_find_new_photos_and_handle_tiny_catalogs(backend):
    rng = np.random.default_rng(6)
    vectors = unit(rng, 200)
    queries = vectors[:3] + 0.01 * unit(rng, 3)  # near-copies of items 0, 1, 2
    idx, sim = build_index(vectors, backend).search(queries, 4)
    assert idx[:, 0].tolist() == [0, 1, 2] and (sim[:, 0] > 0.99).all()
    few = unit(rng, 3)
    idx, sim = build_index(few, backend).all_neighbors(20)
    assert idx.shape == (3, 2) and (idx >= 0).all() and not (idx == np.arange(3)[:, None]).any()


def test_a_read_only_memory_mapped_store_can_be_indexed(tmp_path):
    """load_store gives a read-only memmap; Voyager used to reject it."""
    np.save(tmp_path / "v.npy", clustered_unit(500, 32))
    vectors = np.load(tmp_path / "v.npy", mmap_mode="r")
    for backend in ("voyager", "faiss-hnsw", "faiss-ivfpq", "annoy"):
        idx, _ = build_index(vectors, backend).all_neighbors(5)
        assert idx.shape == (500, 5)


def test_ivfpq_shards_built_apart_and_merged_equal_one_build(tmp_path):
    vectors = clustered_unit(4000, 64)
    empty = FaissIndex.empty(64, "faiss-ivfpq", nlist=32, pq_m=16, nprobe=8)
    empty.train(vectors[::2])
    empty.save(tmp_path / "trained.faiss")
    whole = FaissIndex.load(tmp_path / "trained.faiss")
    whole.add(vectors, 0)
    paths = []
    for i, (lo, hi) in enumerate([(0, 1500), (1500, 2600), (2600, 4000)]):  # e.g. one per machine
        shard = FaissIndex.load(tmp_path / "trained.faiss")
        shard.add(vectors[lo:hi], lo)
        paths.append(tmp_path / f"shard{i}.faiss")
        shard.save(paths[-1])
    merged = FaissIndex.merge(paths, out=tmp_path / "merged.faiss")
    assert len(merged) == 4000 and (tmp_path / "merged.faiss").exists()
    for index in (whole, merged):
        index.vectors, index.candidates = vectors, 40
    np.testing.assert_array_equal(merged.all_neighbors(10)[0], whole.all_neighbors(10)[0])
    # the compressed index is a small fraction of the float32 vectors
    assert merged.nbytes < vectors.nbytes / 3
    hnsw = FaissIndex.empty(64, "faiss-hnsw")
    hnsw.add(vectors[:10])
    with pytest.raises(ValueError, match="order"):
        hnsw.add(vectors[20:30], 20)


def test_finish_drops_self_pads_and_orders():
    cand = np.array([[3, 0, 5, -1], [1, 2, 2, 0]])
    sims = np.array([[0.5, 0.9, 0.7, 0.0], [0.2, 0.8, 0.8, 0.9]], np.float32)
    idx, sim = finish(cand, sims, 3, exclude=np.array([0, 0]))
    assert idx.tolist() == [[5, 3, -1], [2, 2, 1]]
    assert sim[0, 2] == -np.inf


def test_counts_must_be_whole_numbers_of_at_least_one(tmp_path):
    """k=0 ran 02-04 and wrote empty neighbour lists, n_queries=0 measured recall 1.0 on nothing,
    thumb_size=0 and n_sources=0 failed deep inside: every step now refuses them first."""
    from helpers import evaluate, grids, neighbors, sweep
    from helpers.index import check_counts

    check_counts(k=20, n_queries=np.int64(3))
    for bad in (0, -1, 2.5, "20", True, None):
        with pytest.raises(ValueError, match=r"n_queries=.*must be a whole number of at least 1"):
            check_counts(k=5, n_queries=bad)
    # before any file is read: tmp_path holds no run
    vectors = np.eye(3, dtype=np.float32)
    for step, name in ((lambda: neighbors.write_neighbors(tmp_path, k=0), "k"),
                       (lambda: neighbors.search_by_image(tmp_path, ["photo.jpg"], k=0), "k"),
                       (lambda: grids.render_grids(tmp_path, thumb_size=0), "thumb_size"),
                       (lambda: sweep.run_sweep(vectors, [1], [10], k=0), "k"),
                       (lambda: sweep.run_sweep(vectors, [1], [10], n_queries=0), "n_queries"),
                       (lambda: evaluate.run_labels(tmp_path, tmp_path / "labels.csv", n_queries=0), "n_queries"),
                       (lambda: evaluate.run_near_duplicates(tmp_path, n_sources=0), "n_sources"),
                       (lambda: evaluate.run_fashion_mnist(tmp_path, k=0), "k")):
        with pytest.raises(ValueError, match=f"^{name}=0;"):
            step()
