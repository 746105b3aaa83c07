"""From an index to the product neighbour lists apps consume (the reference's output format).

``nearest_neighbors.json`` is a JSON list of
``{"similarity": 0.8123, "master_pi": "<productId>", "similar_pi": "<productId>"}``,
k entries per master, grouped by master, best first; similarity is the cosine of the stored
vectors truncated (not rounded) to 4 decimals, as the reference did.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import runfolder, store, whitening
from .index import PARAMETERS, build_index, check_counts, pair_cosine
from .vectors import l2_normalise

LEVELS = ("image", "product")
# product level: extra candidates per item for products with several images (see fetch_size);
# a list may come out shorter than k when its neighbours have more images than this
MAX_SPARE_IMAGES = 9
AUTO_EXACT_MAX_ITEMS = 6_500  # the measured crossover of exact and Annoy on 2 cores (docs/benchmarks.md)
# Annoy for "auto" beyond that, without a sweep, search_k = AUTO_SEARCH_K_PER_ROOT * sqrt(N):
# recall@20 0.957-0.966 on 7k-60k real embeddings, as fast as 02's recommendation (benchmarks)
AUTO_ANNOY = {"n_trees": 10, "pca_dims": 64}
AUTO_SEARCH_K_PER_ROOT = 12
# ... but at a million items those trees find half the true neighbours (docs/scaling.md): beyond
# this size "auto" takes an HNSW graph (recall 0.97 at 1M), or compressed IVF-PQ (0.92 at 1M)
# when the graph's float32 copy of the vectors would not fit in memory. Measured at 60k (Annoy
# best) and 1M (HNSW best); 100k is a judgement between the two, not a measured crossover.
AUTO_ANNOY_MAX_ITEMS = 100_000
AUTO_HNSW = {"M": 16, "ef": 128}
AUTO_IVFPQ = {}  # FaissIndex defaults: nlist ~ sqrt(N), nprobe 1/16 of them, re-rank 10 x k


def auto_choice(n_items: int, vector_bytes: int, available_bytes: int | None = None) -> dict:
    """03's index without a sweep, by catalog size (and memory, for the largest)."""
    if n_items <= AUTO_EXACT_MAX_ITEMS:
        return {"backend": "exact"}
    if n_items <= AUTO_ANNOY_MAX_ITEMS:
        search_k = int(round(AUTO_SEARCH_K_PER_ROOT * np.sqrt(n_items), -2))
        return {"backend": "annoy", **AUTO_ANNOY, "search_k": search_k}
    if available_bytes is None:
        available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if 1.1 * vector_bytes < 0.7 * available_bytes:  # the graph holds a float32 copy plus links
        return {"backend": "faiss-hnsw", **AUTO_HNSW}
    return {"backend": "faiss-ivfpq", **AUTO_IVFPQ}


COLUMNS = ["master_pi", "rank", "similar_pi", "similarity", "master_path", "similar_path"]


def truncate4(similarity: np.ndarray) -> np.ndarray:
    """Truncate toward zero to 4 decimals, like the reference's ``int(s * 10000) / 10000``."""
    return np.trunc(np.asarray(similarity, dtype=np.float64) * 10000) / 10000


def fetch_size(items: pd.DataFrame, k: int, level: str = "image") -> int:
    """Image-level candidates needed per item for a top-k list at ``level``."""
    if level not in LEVELS:
        raise ValueError(f"level={level!r}; choose one of {LEVELS}")
    per_product = items["productId"].astype(str).value_counts()
    # a product with m images can fill m-1 slots of another's list with itself: fetch more,
    # up to a cap so one product with hundreds of images cannot blow up every search
    spare = int(per_product.max()) - 1 if level == "product" and len(per_product) else 0
    return k + min(spare, MAX_SPARE_IMAGES) * (k + 1)


def neighbor_table(embeddings: np.ndarray, items: pd.DataFrame, k: int = 20, backend: str = "exact",
                   index_params: dict | None = None, include_self: bool = False, level: str = "image",
                   min_similarity: float | None = None, query_expansion: int = 0, rerank: str = "none",
                   index=None) -> pd.DataFrame:
    """Top-k neighbours of every image (level="image") or product (level="product"), with
    03's options on arrays (``write_neighbors`` is the same on a run folder).

    At product level a product with several images appears once, as master and as
    neighbour, scored by its best-matching pair of images. Similarities are recomputed
    exactly from the stored vectors, so every backend reports the same numbers for a pair.
    ``index``: an index already built over ``embeddings`` (then ``backend`` is not used).
    """
    fetch = fetch_size(items, k, level)
    settings = index_params or {}
    embeddings = expand_catalog(embeddings, backend, settings, query_expansion)
    idx, scores = search_all(embeddings, fetch, include_self, backend, settings, rerank, index)
    return table_from_candidates(embeddings, items, idx, k, level, min_similarity, include_self, scores)


def expand_catalog(embeddings: np.ndarray, backend: str, settings: dict, n: int) -> np.ndarray:
    """Every vector averaged with its ``n`` nearest others (no change for n = 0)."""
    if n <= 0 or len(embeddings) < 2:
        return embeddings
    nearest, _ = build_index(embeddings, backend, **settings).all_neighbors(n)
    return expand(embeddings, embeddings, nearest, n)


def search_all(embeddings: np.ndarray, fetch: int, include_self: bool, backend: str, settings: dict,
               rerank: str = "none", index=None):
    """(image-level candidate rows, diffusion scores or None) of every item."""
    from . import diffusion

    diffusion.check_rerank(rerank)
    shortlist = fetch if rerank == "none" else max(fetch, diffusion.SHORTLIST)
    index = index if index is not None else build_index(embeddings, backend, **settings)
    idx, _ = index.all_neighbors(shortlist, include_self=include_self)
    if rerank != "diffusion":
        return idx, None
    return diffusion.rerank(embeddings, idx, pair_cosine(embeddings, embeddings, idx), fetch)


def table_from_candidates(embeddings: np.ndarray, items: pd.DataFrame, idx: np.ndarray, k: int,
                          level: str = "image", min_similarity: float | None = None,
                          include_self: bool = False, scores: np.ndarray | None = None) -> pd.DataFrame:
    """The neighbour table from image-level candidate rows (``idx``: item rows, -1 = none).

    Neighbours are ranked by cosine similarity, or by ``scores`` (same shape as ``idx``,
    e.g. diffusion's) when given; the ``similarity`` column is the cosine either way."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    products = items["productId"].astype(str).to_numpy()
    masters = np.repeat(np.arange(len(items)), idx.shape[1])
    similar = idx.ravel()
    valid = similar >= 0
    masters, similar = masters[valid], similar[valid]
    sims = pair_cosine(embeddings, embeddings, idx).ravel()[valid]  # a block at a time: no (pairs x dim) copies
    pairs = pd.DataFrame({"m": masters, "n": similar, "similarity": sims,
                          "score": sims if scores is None else np.asarray(scores).ravel()[valid]})
    paths = items["path"].to_numpy()
    pairs["master_pi"], pairs["similar_pi"] = products[masters], products[similar]
    if level == "product":
        if not include_self:
            pairs = pairs[pairs["master_pi"] != pairs["similar_pi"]]
        # best image pair per (master product, neighbour product)
        pairs = pairs.sort_values(["score", "m", "n"], ascending=[False, True, True], kind="stable")
        pairs = pairs.drop_duplicates(["master_pi", "similar_pi"])
    pairs = pairs.sort_values(["score", "n"], ascending=[False, True], kind="stable")
    group_key = "m" if level == "image" else "master_pi"
    pairs["rank"] = pairs.groupby(group_key, sort=False).cumcount() + 1
    pairs = pairs[pairs["rank"] <= k]
    pairs["similarity"] = truncate4(pairs["similarity"])
    if min_similarity is not None:
        pairs = pairs[pairs["similarity"] >= min_similarity]
    # masters in items order (sorted paths; a product at its first image), neighbours best first
    first_row = pairs.groupby(group_key)["m"].transform("min")
    pairs = pairs.assign(_order=first_row).sort_values(["_order", "rank"], kind="stable")
    out = pd.DataFrame({
        "master_pi": pairs["master_pi"].to_numpy(),
        "rank": pairs["rank"].to_numpy(),
        "similar_pi": pairs["similar_pi"].to_numpy(),
        "similarity": pairs["similarity"].to_numpy(),
        "master_path": paths[pairs["m"].to_numpy()],
        "similar_path": paths[pairs["n"].to_numpy()],
    })
    return out.reset_index(drop=True)


def write_nearest_neighbors_json(table: pd.DataFrame, path: str | Path) -> None:
    """The reference's ``nearest_neighbors.json``, streamed (no list of dicts in memory)."""
    with runfolder.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for i, (sim, master, similar) in enumerate(
                zip(table["similarity"], table["master_pi"], table["similar_pi"])):
            f.write(",\n" if i else "\n")
            f.write(json.dumps({"similarity": float(sim), "master_pi": master, "similar_pi": similar},
                               ensure_ascii=False))
        f.write("\n]\n" if len(table) else "]\n")


def search_by_image(run_dir: str | Path, pictures, k: int = 20, index=None, level: str = "product",
                    rerank: str = "none") -> pd.DataFrame:
    """Top-k catalog products for photos that are not in the catalog (paths or arrays).

    The photos are embedded with the run's own model, resize mode, pooling, focus, hog_weight and
    precision, and given the run's own whitening or adaptation, so they are comparable with its store;
    ``index`` defaults to exact search. At ``level="product"`` (as 03) a product with several
    images is listed once, by its most similar image. ``rerank="diffusion"`` re-orders the
    results as 03 does (``similarity`` stays the cosine). A file that cannot be read is skipped
    with a warning naming it; the other photos are still answered.
    """
    from . import decode, diffusion
    from .index import ExactIndex
    from .options import EmbeddingOptions

    check_counts(k=k)
    diffusion.check_rerank(rerank)
    columns = ["query", "rank", "similar_pi", "similarity", "similar_path"]
    embeddings, items, meta = store.load_store(run_dir)
    fetch = fetch_size(items, k, level)
    options = EmbeddingOptions(**meta["options"])
    model = options.embedder()
    labels, batch = decode.query_pictures(pictures, model.image_size, options)
    if not batch:
        return pd.DataFrame(columns=columns)
    vectors = model(np.stack(batch))
    if options.learned:  # the run's own whitening or adaptation, as its store got
        vectors = whitening.Whitening.load(Path(run_dir) / runfolder.WHITENING).apply(vectors)
    shortlist = fetch if rerank == "none" else max(fetch, diffusion.SHORTLIST)
    idx, sims = (index or ExactIndex(embeddings)).search(vectors, min(shortlist, len(items)))
    if rerank == "diffusion":
        idx, _ = diffusion.rerank(embeddings, idx, sims, min(fetch, len(items)))
    products, paths = items["productId"].astype(str).to_numpy(), items["path"].to_numpy()
    rows = []
    for q, (label, found) in enumerate(zip(labels, idx)):
        listed, rank = set(), 0
        for n in found[found >= 0]:
            if level == "product" and products[n] in listed:
                continue  # another image of a product already listed, less similar
            listed.add(products[n])
            rank += 1
            rows.append((label, rank, products[n], float(vectors[q] @ embeddings[n]), paths[n]))
            if rank == k:
                break
    table = pd.DataFrame(rows, columns=columns)
    table["similarity"] = truncate4(table["similarity"])
    return table


# --- refreshing after a small catalog change ---------------------------------------------
def save_candidates(folder: str | Path, idx: np.ndarray, items: pd.DataFrame) -> None:
    """Keep the image-level candidate lists (and which image each row was) for a refresh."""
    folder = Path(folder)
    with runfolder.atomic_path(folder / runfolder.CANDIDATES) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, idx)
    runfolder.write_table(folder / runfolder.CANDIDATE_ITEMS, items[["path", "sha256"]])


def refresh_candidates(run_dir: str | Path, embeddings: np.ndarray, items: pd.DataFrame, fetch: int,
                       include_self: bool = False, max_changed_fraction: float = 0.1):
    """Update the saved exact candidate lists for a changed catalog without a full search.

    Rows of new or changed images, and rows that lost a candidate, are searched again;
    every other row only compares against the new images. Returns (idx, rows searched
    again) or None when a full search is the better choice (no saved lists, another
    ``fetch``, or more than ``max_changed_fraction`` of the catalog changed).
    """
    from .index import ExactIndex

    run_dir = Path(run_dir)
    if not (run_dir / runfolder.CANDIDATES).exists() or not (run_dir / runfolder.CANDIDATE_ITEMS).exists():
        return None
    old_idx = np.load(run_dir / runfolder.CANDIDATES)
    old_items = pd.read_parquet(run_dir / runfolder.CANDIDATE_ITEMS)
    if old_idx.shape != (len(old_items), min(fetch, max(len(old_items) - (not include_self), 0))):
        return None
    embeddings = np.asarray(embeddings, dtype=np.float32)
    key_new = list(zip(items["path"], items["sha256"]))
    row_of = {key: row for row, key in enumerate(key_new)}
    old_to_new = np.array([row_of.get(key, -1) for key in zip(old_items["path"], old_items["sha256"])])
    known = np.zeros(len(items), bool)
    known[old_to_new[old_to_new >= 0]] = True
    fresh = np.flatnonzero(~known)  # new or changed images
    if len(fresh) > max_changed_fraction * max(len(items), 1):
        return None
    n_out = min(fetch, len(items) - (not include_self))
    idx = np.full((len(items), n_out), -1, np.int64)
    dirty = np.zeros(len(items), bool)
    dirty[fresh] = True
    # lists that held every other image stay complete when images go; truncated ones don't
    complete = old_idx.shape[1] >= len(old_items) - (not include_self)
    for old_row, new_row in enumerate(old_to_new):
        if new_row < 0:
            continue
        mapped = old_to_new[old_idx[old_row]]
        if (mapped < 0).any():
            if not complete:
                dirty[new_row] = True  # lost a candidate: its next best is unknown
                continue
            mapped = mapped[mapped >= 0]
        idx[new_row, :len(mapped)] = mapped
    # clean rows: merge their old candidates with the fresh images, exactly
    clean = np.flatnonzero(~dirty)
    for start in range(0, len(clean), 4096):
        rows = clean[start:start + 4096]
        cand = np.concatenate([idx[rows], np.broadcast_to(fresh, (len(rows), len(fresh)))], axis=1)
        scores = pair_cosine(embeddings[rows], embeddings, cand)  # as exact search scores them
        if not include_self:
            scores[cand == rows[:, None]] = -np.inf
        # order by score, then by row (the exact backend's tie-break), via a stable sort
        order = np.lexsort((cand, -scores), axis=1)[:, :n_out]
        idx[rows] = np.take_along_axis(cand, order, axis=1)
    again = np.flatnonzero(dirty)
    if len(again):
        found, _ = ExactIndex(embeddings).search(embeddings[again], n_out,
                                                  exclude=None if include_self else again)
        idx[again] = found
    return idx, len(again)


def changed_masters(before: pd.DataFrame, after: pd.DataFrame) -> int:
    """Masters whose neighbour list (ids in order) differs, including new and removed ones."""
    def lists(table):
        return table.groupby("master_pi", sort=False)["similar_pi"].agg(tuple).to_dict()

    a, b = lists(before), lists(after)
    return sum(1 for m in set(a) | set(b) if a.get(m) != b.get(m))


def expand(vectors: np.ndarray, gallery: np.ndarray, neighbors: np.ndarray, n: int) -> np.ndarray:
    """Average query expansion: each vector plus its first ``n`` neighbours in ``gallery``
    (indices from a search, -1 = none), L2-normalised."""
    out = np.array(vectors, dtype=np.float32)
    for j in range(min(n, neighbors.shape[1])):
        found = neighbors[:, j] >= 0
        out[found] += gallery[neighbors[found, j]]
    return l2_normalise(out)


def choose_index(run_dir: Path, n_items: int, vector_bytes: int, backend: str = "auto",
                 n_trees: int | None = None, search_k: int | None = None, pca_dims: int | None = None,
                 index_params: dict | None = None) -> tuple[str, dict]:
    """(backend, settings) for 03: given ones first, then 02's recommendation when it was
    measured on the current store (an older one is ignored), else ``auto_choice``."""
    choice = runfolder.record(run_dir, "index")
    if choice and choice.get("computed_from", {}).get("store_key") != runfolder.store_key(run_dir):
        choice = {}  # measured on other vectors: a fresh folder would not have it either
    if backend == "auto":
        if not choice.get("backend"):
            choice = auto_choice(n_items, vector_bytes)
        backend = choice["backend"]
    if backend not in PARAMETERS:
        raise ValueError(f"backend={backend!r}; choose 'auto' or one of {tuple(PARAMETERS)}")
    settings = {name: choice[name] for name in PARAMETERS[backend]
                if choice.get("backend") == backend and choice.get(name) is not None}
    if backend == "annoy":
        settings.update({name: value for name, value in
                         (("n_trees", n_trees), ("search_k", search_k), ("pca_dims", pca_dims)) if value})
    settings.update({name: value for name, value in (index_params or {}).items() if value is not None})
    return backend, settings


def saved_candidates_match(run_dir: Path, embed_meta: dict, include_self: bool) -> bool:
    """The saved candidate lists were found for vectors of the same options and the same
    ``include_self``: only then can a refresh start from them (``refresh_candidates`` checks
    that they are as long as needed)."""
    saved = runfolder.record(run_dir, "neighbors").get("candidates") or {}
    return saved == {"options_key": embed_meta["computed_from"]["options_key"], "include_self": include_self}


def write_neighbors(run_dir: str | Path, k: int = 20, backend: str = "auto", n_trees: int | None = None,
                    search_k: int | None = None, pca_dims: int | None = None,
                    index_params: dict | None = None, include_self: bool = False, level: str = "product",
                    min_similarity: float | None = None, duplicate_threshold="auto",
                    duplicate_precision: float = 0.95, refresh: bool = True, query_expansion: int = 0,
                    rerank: str = "none", n_clusters="auto", backgrounds=None) -> dict:
    """Notebook 03's work: neighbour lists for the run's store, committed as one set of files
    (nearest_neighbors.json, neighbors.parquet, near_duplicates.csv, duplicate_groups.csv,
    clusters.parquet, the calibration pairs, the candidate lists, the record neighbors_meta.json).

    Near-duplicates: ``duplicate_threshold="auto"`` calibrates the rule on the catalog's own
    edited copies to reach ``duplicate_precision`` (``helpers.duplicates``; background swaps on
    photos from ``backgrounds``); a number is used as it is. ``n_clusters``: ``helpers.clusters``.
    backend "auto": 02's recommendation (when measured on this store), else ``auto_choice``
    (exact up to 6,500 items, Annoy up to 100,000, then HNSW or IVF-PQ). Settings not given
    (``n_trees``, ``search_k``, ``pca_dims``, ``index_params`` e.g. ``{"nprobe": 32}``) come
    from index_choice.json when it recommends the same backend. ``refresh``: when few images
    changed, update the saved lists (equal to a full search; not for a whitened or adapted run).
    ``query_expansion`` n > 0: each vector averaged with its n nearest first;
    ``rerank="diffusion"``: each list re-ordered by diffusion (``similarity`` stays the cosine).
    Neither can refresh. See docs/benchmarks.md.
    """
    _check_parameters(k, rerank, duplicate_threshold, duplicate_precision, n_clusters)
    run_dir = Path(run_dir)
    with runfolder.lock(run_dir, "03_neighbors"):
        start = time.perf_counter()
        embeddings, items, embed_meta = store.load_store(run_dir)
        vector_bytes = int(np.asarray(embeddings[:1]).nbytes) * len(items)
        backend, settings = choose_index(run_dir, len(items), vector_bytes, backend, n_trees, search_k,
                                         pca_dims, index_params)
        fetch = fetch_size(items, k, level)
        stored = embeddings
        embeddings = expand_catalog(embeddings, backend, settings, query_expansion)
        keep_candidates = query_expansion == 0 and rerank == "none"  # lists of the store's own vectors
        can_refresh = (refresh and keep_candidates and not whitening.is_learned(embed_meta["options"])
                       and saved_candidates_match(run_dir, embed_meta, include_self))
        idx, scores, searched, refreshed = _candidates(run_dir, embeddings, items, fetch, include_self,
                                                       backend, settings, rerank, can_refresh)
        table = table_from_candidates(embeddings, items, idx, k, level, min_similarity, include_self, scores)
        changed = changed_masters(pd.read_parquet(run_dir / runfolder.NEIGHBORS), table) \
            if (run_dir / runfolder.NEIGHBORS).exists() else None
        parameters = {"k": k, "backend": backend, "index_params": settings, "level": level,
                      "include_self": include_self, "min_similarity": min_similarity,
                      "duplicate_threshold": duplicate_threshold, "duplicate_precision": duplicate_precision,
                      "n_clusters": n_clusters, "query_expansion": query_expansion, "rerank": rerank}
        staging = runfolder.Staging(run_dir, "neighbors")
        _stage_tables(staging, table, idx if keep_candidates else None, items)
        found = _stage_catalog_tidying(staging, run_dir, table, stored, items, embed_meta, parameters, backgrounds)
        meta = {
            **parameters,
            "computed_from": {"store_key": embed_meta["computed_from"]["store_key"], "parameters": parameters},
            "candidates": {"options_key": embed_meta["computed_from"]["options_key"],
                           "include_self": include_self} if keep_candidates else None,
            "masters": int(table["master_pi"].nunique()), "pairs": len(table),
            **found, "refreshed": refreshed,
            "items_searched": int(searched), "masters_with_changed_neighbors": changed,
            "seconds": round(time.perf_counter() - start, 3),
        }
        staging.commit(meta, remove=_not_written(meta))
    return meta


def _check_parameters(k, rerank, duplicate_threshold, duplicate_precision, n_clusters) -> None:
    from . import clusters, diffusion, duplicates

    check_counts(k=k)
    diffusion.check_rerank(rerank)
    duplicates.check_threshold(duplicate_threshold, duplicate_precision)
    clusters.check_n_clusters(n_clusters)


def _not_written(meta: dict) -> tuple:
    """03's files this run did not write: an earlier run's copies would be stale."""
    stale = [] if meta["candidates"] else [runfolder.CANDIDATES, runfolder.CANDIDATE_ITEMS]
    stale += [] if meta["duplicate_rule"]["source"] == "calibrated" else [runfolder.CALIBRATION_PAIRS]
    stale += [] if meta["clusters"] and "skipped" not in meta["clusters"] else [runfolder.CLUSTERS]
    return tuple(stale)


def _candidates(run_dir: Path, embeddings, items, fetch: int, include_self: bool, backend: str, settings: dict,
                rerank: str, can_refresh: bool):
    """(image-level candidate rows, diffusion scores or None, rows searched, refreshed?)."""
    refreshed = refresh_candidates(run_dir, embeddings, items, fetch, include_self) if can_refresh else None
    if refreshed is not None:
        return refreshed[0], None, refreshed[1], True
    idx, scores = search_all(embeddings, fetch, include_self, backend, settings, rerank)
    return idx, scores, len(items), False


def _stage_tables(staging, table: pd.DataFrame, idx, items) -> None:
    """03's lists into staging (both formats), and the candidates."""
    write_nearest_neighbors_json(table, staging.path(runfolder.NEAREST_NEIGHBORS))
    runfolder.write_table(staging.path(runfolder.NEIGHBORS), table)
    if idx is not None:
        save_candidates(staging.folder, idx, items)


def _stage_catalog_tidying(staging, run_dir: Path, table: pd.DataFrame, embeddings, items: pd.DataFrame,
                           embed_meta: dict, parameters: dict, backgrounds) -> dict:
    """Near-duplicates, their groups and the clusters into staging; what the record says of them."""
    from . import clusters, duplicates, groups

    started = time.perf_counter()
    pairs, rule, calibration_pairs = duplicates.find(run_dir, table, embeddings, items, embed_meta,
                                                     parameters["duplicate_threshold"],
                                                     parameters["duplicate_precision"], backgrounds)
    runfolder.write_table(staging.path(runfolder.NEAR_DUPLICATES), pairs)
    if calibration_pairs is not None:
        runfolder.write_table(staging.path(runfolder.CALIBRATION_PAIRS), calibration_pairs)
    found = groups.duplicate_groups(pairs, items)
    runfolder.write_table(staging.path(runfolder.DUPLICATE_GROUPS), found)
    duplicate_seconds = time.perf_counter() - started
    clustered = None
    if parameters["n_clusters"] == "auto" and len(items) > clusters.AUTO_MAX_ITEMS:
        clustered = {"skipped": f"{len(items):,} images: more than clusters.AUTO_MAX_ITEMS; give n_clusters "
                                "a number to cluster them"}
    elif parameters["n_clusters"] is not None:
        labels, clustered = clusters.cluster(embeddings, parameters["n_clusters"])
        runfolder.write_table(staging.path(runfolder.CLUSTERS), clusters.cluster_table(items, labels))
    return {"near_duplicate_pairs": len(pairs), "duplicate_rule": rule.as_dict(),
            "duplicate_groups": int(found["group_id"].nunique()), "verified_pairs": int(pairs["verified"].sum()),
            "checked_band_pairs": pairs.attrs.get("checked", 0), "unchecked_band_pairs": pairs.attrs.get("unchecked", 0),
            "duplicate_seconds": round(duplicate_seconds, 3), "clusters": clustered}
