"""The benchmarks of 05_evaluate, on vectors: each returns per-query rows and a summary.

- Fashion-MNIST (``fashion_mnist_benchmark``): test images query the train images;
  right = same class.
- Near-duplicates (``near_duplicate_benchmark``, on a folder from ``edits.make_near_duplicates``):
  right = an image of the same source.
- Labels (``labels_benchmark``): a user's CSV of image -> class or group.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .edits import TRANSFORMS
from .metrics import hit_rate_at_k, label_metrics, recall_at_1, relevance, retrieve, summarise


def fashion_mnist_benchmark(embed, k: int = 20, n_queries: int = 1000, n_gallery: int | None = None,
                            data_dir=None, seed: int = 0, cache_dir: str | Path | None = None,
                            cache_key: str = "", postprocess: str = "none", query_expansion: int = 0,
                            rerank: str = "none", learn=None) -> dict:
    """Test images query the train images (gallery); right = same class.

    ``embed(pictures) -> vectors`` embeds a uint8 array of 28x28 images. Queries are a
    seeded sample of ``n_queries`` of the 10,000 test images, the gallery the first
    ``n_gallery`` train images (None: all 60,000). With ``cache_dir`` the vectors are kept as .npy files named
    by ``cache_key`` (the model and embedding options) so the next run skips the model.
    ``postprocess="whiten"`` learns whitening on the gallery (the "catalog") and applies it
    to both sides, as does ``learn(gallery_vectors) -> Whitening`` (e.g. an adaptation learned
    from the gallery's own edited copies); ``query_expansion`` n > 0 expands the gallery vectors with their n
    nearest gallery neighbours, then each query with its n nearest expanded ones;
    ``rerank="diffusion"`` re-orders each query's results (``helpers.diffusion``).
    """
    from . import fashion_mnist

    kwargs = {} if data_dir is None else {"data_dir": data_dir}
    train_x, train_y = fashion_mnist.load("train", **kwargs)
    test_x, test_y = fashion_mnist.load("test", **kwargs)
    n_gallery = len(train_x) if n_gallery is None else min(int(n_gallery), len(train_x))
    n_queries = min(int(n_queries), len(test_x))
    # queries: the first n of a seeded shuffle of the test set, so a small run's cache is
    # the start of a bigger run's
    shuffled = np.random.default_rng(seed).permutation(len(test_x))
    queries = shuffled[:n_queries]
    gallery_vectors = _cached(cache_dir, f"train-{cache_key}", train_x, n_gallery, embed)
    query_vectors = _cached(cache_dir, f"test-seed{seed}-{cache_key}", test_x[shuffled], n_queries, embed)
    if postprocess == "whiten" or learn is not None:
        from . import whitening

        learned = (learn or whitening.learn)(gallery_vectors)
        gallery_vectors, query_vectors = learned.apply(gallery_vectors), learned.apply(query_vectors)
    if query_expansion:
        from .neighbors import expand

        gallery_vectors = expand_all(gallery_vectors, query_expansion)
        nearest, _ = retrieve(query_vectors, gallery_vectors, query_expansion)
        query_vectors = expand(query_vectors, gallery_vectors, nearest, query_expansion)
    neighbors, similarity = retrieve(query_vectors, gallery_vectors, k, rerank=rerank)
    names = np.array(fashion_mnist.CLASSES)
    per_query = label_metrics(names[test_y[queries]], names[train_y[:n_gallery]], neighbors, similarity, k)
    per_query.insert(0, "test_index", queries)
    return {"per_query": per_query, "neighbors": neighbors, "similarity": similarity,
            "gallery_labels": names[train_y[:n_gallery]], "query_images": test_x[queries],
            "gallery_images": train_x[:n_gallery], "classes": list(names),
            "summary": summarise(per_query, "label").reindex(list(names) + ["all"]).dropna(how="all")}


def _cached(cache_dir, name: str, pictures: np.ndarray, n: int, embed) -> np.ndarray:
    """Vectors of pictures[:n], reusing (a prefix of) a cached file when there is one."""
    path = Path(cache_dir) / f"{name}.npy" if cache_dir else None
    have = np.load(path) if path is not None and path.exists() else np.zeros((0, 0), np.float32)
    if len(have) >= n:
        return have[:n]
    new = embed(pictures[len(have):n])
    vectors = new if len(have) == 0 else np.concatenate([have, new])
    if path is not None:
        from .runfolder import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors)
    return vectors


def near_duplicate_benchmark(embeddings: np.ndarray, items: pd.DataFrame, labels: pd.DataFrame,
                             k: int = 20, rerank: str = "none") -> dict:
    """Every edited copy queries all other images; right = an image of the same source.

    ``items`` (a run's items.parquet) and ``labels`` (from ``make_near_duplicates``) are
    joined on ``path``. Returns per-query rows and recall@1/@5/@k per transform.
    """
    joined = items.reset_index(drop=True).merge(labels[["path", "group", "transform"]], on="path", how="left")
    if joined["group"].isna().all():
        raise ValueError("no image of the run is in labels.csv: was 01 run on the benchmark folder?")
    rows = np.flatnonzero(joined["group"].notna() & ~joined["transform"].isin(["source", "distractor"]))
    neighbors, similarity = retrieve(embeddings[rows], embeddings, k, exclude=rows, rerank=rerank)
    groups = joined["group"].to_numpy()
    valid = neighbors >= 0
    correct = valid & (groups[np.where(valid, neighbors, 0)] == groups[rows][:, None])
    rel = relevance(np.where(valid, similarity, np.nan), correct)
    per_query = pd.DataFrame({
        "path": joined["path"].to_numpy()[rows],
        "transform": joined["transform"].to_numpy()[rows],
        "recall@1": recall_at_1(rel),
        **({"recall@5": hit_rate_at_k(rel, 5)} if k > 5 else {}),
        f"recall@{k}": hit_rate_at_k(rel, k),
        "top1_path": np.where(valid[:, 0], joined["path"].to_numpy()[neighbors[:, 0]], None),
        "top1_similarity": similarity[:, 0],
    })
    order = [t for t in TRANSFORMS if t in set(per_query["transform"])]
    return {"per_query": per_query, "neighbors": neighbors, "similarity": similarity, "rows": rows,
            "summary": summarise(per_query, "transform").reindex(order + ["all"])}


def labels_benchmark(embeddings: np.ndarray, items: pd.DataFrame, labels_csv: str | Path,
                     k: int = 20, n_queries: int = 1000, seed: int = 0, rerank: str = "none") -> dict:
    """A user's CSV (``path`` or ``imageName``, and ``label``; comma, semicolon or tab
    separated): right = same label.

    Labelled images query the whole run; unlabelled images stay in the gallery as
    distractors (they are never right).
    """
    table = pd.read_csv(labels_csv, dtype=str, skipinitialspace=True, sep=_separator(labels_csv))
    table.columns = table.columns.str.strip()
    key = "path" if "path" in table.columns else "imageName" if "imageName" in table.columns else None
    if key is None or "label" not in table.columns:
        raise ValueError(f"{labels_csv}: needs a 'label' column and a 'path' or 'imageName' column; "
                         f"found {list(table.columns)}")
    # "./shoes/a.jpg" or "shoes\\a.jpg" name the run's "shoes/a.jpg"
    names = table[key].str.strip().str.replace("\\", "/", regex=False).str.replace(r"^(\./)+", "", regex=True)
    lookup = dict(zip(names, table["label"].str.strip()))
    gallery_labels = items[key].map(lookup).to_numpy(dtype=object)
    labelled = np.flatnonzero(pd.notna(gallery_labels))
    if not len(labelled):
        raise ValueError(f"{labels_csv}: none of its {len(table)} rows names an image of this run ({key})")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(labelled, size=min(n_queries, len(labelled)), replace=False))
    neighbors, similarity = retrieve(embeddings[rows], embeddings, k, exclude=rows, rerank=rerank)
    gallery_labels = np.where(pd.notna(gallery_labels), gallery_labels, "\0unlabelled")
    per_query = label_metrics(gallery_labels[rows], gallery_labels, neighbors, similarity, k,
                              queries_in_gallery=True)
    per_query.insert(0, "path", items["path"].to_numpy()[rows])
    return {"per_query": per_query, "neighbors": neighbors, "similarity": similarity, "rows": rows,
            "summary": summarise(per_query, "label")}


def _separator(csv_path: str | Path) -> str:
    """The CSV's separator among comma, semicolon (spreadsheets in many locales) and tab;
    comma when the file does not tell (a single column)."""
    import csv

    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        sample = f.read(1 << 16)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        return ","


def expand_all(vectors: np.ndarray, n: int) -> np.ndarray:
    """Every vector averaged with its n nearest others (average query expansion)."""
    from .neighbors import expand

    nearest, _ = retrieve(vectors, vectors, n, exclude=np.arange(len(vectors)))
    return expand(vectors, vectors, nearest, n)
