"""From an index to the product neighbour lists apps consume (the reference's output format).

``nearest_neighbors.json`` is a JSON list of
``{"similarity": 0.8123, "master_pi": "<productId>", "similar_pi": "<productId>"}``,
k entries per master, grouped by master, best first; similarity is the cosine of the stored
vectors truncated (not rounded) to 4 decimals, as the reference did.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import store
from .index import build_index

LEVELS = ("image", "product")
COLUMNS = ["master_pi", "rank", "similar_pi", "similarity", "master_path", "similar_path"]


def truncate4(similarity: np.ndarray) -> np.ndarray:
    """Truncate toward zero to 4 decimals, like the reference's ``int(s * 10000) / 10000``."""
    return np.trunc(np.asarray(similarity, dtype=np.float64) * 10000) / 10000


def neighbor_table(embeddings: np.ndarray, items: pd.DataFrame, k: int = 20, backend: str = "exact",
                   n_trees: int = 10, search_k: int = -1, include_self: bool = False,
                   level: str = "image", min_similarity: float | None = None, index=None) -> pd.DataFrame:
    """Top-k neighbours of every image (level="image") or product (level="product").

    At product level a product with several images appears once, as master and as
    neighbour, scored by its best-matching pair of images. Similarities are recomputed
    exactly from the stored vectors, so every backend reports the same numbers for a pair.
    """
    if level not in LEVELS:
        raise ValueError(f"level={level!r}; choose one of {LEVELS}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    products = items["productId"].astype(str).to_numpy()
    per_product = pd.Series(products).value_counts()
    # a product with m images can fill m-1 slots of another's list with itself: fetch more
    spare = int(per_product.max()) - 1 if level == "product" and len(per_product) else 0
    fetch = k + spare * (k + 1)
    if index is None:
        index = build_index(embeddings, backend, n_trees=n_trees, search_k=search_k)
    idx, _ = index.all_neighbors(fetch, include_self=include_self)

    masters = np.repeat(np.arange(len(items)), idx.shape[1])
    similar = idx.ravel()
    valid = similar >= 0
    masters, similar = masters[valid], similar[valid]
    sims = np.einsum("ij,ij->i", embeddings[masters], embeddings[similar])
    pairs = pd.DataFrame({"m": masters, "n": similar, "similarity": sims})
    paths = items["path"].to_numpy()
    if level == "image":
        pairs["master_pi"], pairs["similar_pi"] = products[masters], products[similar]
    else:
        pairs["master_pi"], pairs["similar_pi"] = products[masters], products[similar]
        if not include_self:
            pairs = pairs[pairs["master_pi"] != pairs["similar_pi"]]
        # best image pair per (master product, neighbour product)
        pairs = pairs.sort_values(["similarity", "m", "n"], ascending=[False, True, True], kind="stable")
        pairs = pairs.drop_duplicates(["master_pi", "similar_pi"])
    pairs = pairs.sort_values(["similarity", "n"], ascending=[False, True], kind="stable")
    if level == "image":
        group_key = "m"
    else:
        group_key = "master_pi"
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
    with store.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for i, (sim, master, similar) in enumerate(
                zip(table["similarity"], table["master_pi"], table["similar_pi"])):
            f.write(",\n" if i else "\n")
            f.write(json.dumps({"similarity": float(sim), "master_pi": master, "similar_pi": similar},
                               ensure_ascii=False))
        f.write("\n]\n" if len(table) else "]\n")


def near_duplicates(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Pairs of products at or above ``threshold``, each pair once, most similar first."""
    dup = table[table["similarity"] >= threshold]
    a = np.where(dup["master_pi"] <= dup["similar_pi"], dup["master_pi"], dup["similar_pi"])
    b = np.where(dup["master_pi"] <= dup["similar_pi"], dup["similar_pi"], dup["master_pi"])
    pa = np.where(dup["master_pi"] <= dup["similar_pi"], dup["master_path"], dup["similar_path"])
    pb = np.where(dup["master_pi"] <= dup["similar_pi"], dup["similar_path"], dup["master_path"])
    out = pd.DataFrame({"product_a": a, "product_b": b, "similarity": dup["similarity"].to_numpy(),
                        "path_a": pa, "path_b": pb})
    out = out[out["product_a"] != out["product_b"]]
    out = out.sort_values(["similarity", "product_a", "product_b"], ascending=[False, True, True])
    return out.drop_duplicates(["product_a", "product_b"]).reset_index(drop=True)


def search_by_image(run_dir: str | Path, pictures, k: int = 20, index=None) -> pd.DataFrame:
    """Top-k catalog products for photos that are not in the catalog (paths or arrays).

    The photos are embedded with the run's own model and resize mode, so they are
    comparable with its store; ``index`` defaults to exact search.
    """
    from PIL import Image

    from .embed import embed_pixels
    from .index import ExactIndex

    embeddings, items, meta = store.load_store(run_dir)
    labels, loaded = [], []
    for i, p in enumerate(pictures):
        if isinstance(p, (str, Path)):
            labels.append(str(p))
            with Image.open(p) as im:
                loaded.append(im.convert("RGB"))
        else:
            labels.append(f"query {i}")
            loaded.append(p)
    vectors = embed_pixels(loaded, meta["model_handle"], resize=meta["resize"])
    idx, _ = (index or ExactIndex(embeddings)).search(vectors, k)
    rows = []
    for q, (label, found) in enumerate(zip(labels, idx)):
        for rank, n in enumerate(found[found >= 0], 1):
            rows.append((label, rank, items["productId"].iat[n], float(vectors[q] @ embeddings[n]),
                         items["path"].iat[n]))
    table = pd.DataFrame(rows, columns=["query", "rank", "similar_pi", "similarity", "similar_path"])
    table["similarity"] = truncate4(table["similarity"])
    return table
