"""Near-duplicate pairs gathered into groups a catalog team can act on, each with a
suggested keeper.

Plain connected components would let one weak pair chain two unrelated products into one
group. Instead, within each component, groups are merged by average linkage over "is a
near-duplicate pair" (1) or not (0): two groups join only when at least half of the pairs
between them are near-duplicate pairs themselves.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MIN_LINKED = 0.5        # share of the pairs between two groups that must be near-duplicates to merge
LARGEST_LINKED = 5_000  # components bigger than this are split by their strongest pairs first
COLUMNS = ["group_id", "product_id", "path", "keeper", "group_size", "min_similarity", "max_similarity",
           "keeper_product_id"]


def duplicate_groups(pairs: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per product in a group: group_id, product_id, path (its largest image), keeper
    (True for the suggested one: the largest image, then the most linked), group_size, the
    min and max similarity of the group's near-duplicate pairs, keeper_product_id."""
    if not len(pairs):
        return pd.DataFrame(columns=COLUMNS)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    products = pd.Index(pd.unique(pd.concat([pairs["product_a"], pairs["product_b"]])))
    a, b = products.get_indexer(pairs["product_a"]), products.get_indexer(pairs["product_b"])
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(products),) * 2).tocsr()
    _, component = connected_components(graph, directed=False)
    labels = np.full(len(products), -1)
    next_label = 0
    for c in np.unique(component):
        members = np.flatnonzero(component == c)
        for part in _split(members, a, b):
            labels[part] = next_label
            next_label += 1
    return _rows(pairs, products, labels, a, b, items)


def _split(members: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """The component's groups: average linkage on 0/1 "is a pair" distances, cut at MIN_LINKED."""
    if len(members) <= 2:
        return [members]
    if len(members) > LARGEST_LINKED:
        return [members[i:i + LARGEST_LINKED] for i in range(0, len(members), LARGEST_LINKED)]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    where = {m: i for i, m in enumerate(members)}
    linked = np.ones((len(members), len(members)))
    inside = np.isin(a, members) & np.isin(b, members)
    rows, cols = [where[x] for x in a[inside]], [where[x] for x in b[inside]]
    linked[rows, cols] = linked[cols, rows] = 0.0
    np.fill_diagonal(linked, 0.0)
    tree = linkage(squareform(linked, checks=False), method="average")
    cut = fcluster(tree, t=1 - MIN_LINKED, criterion="distance")
    return [members[cut == c] for c in np.unique(cut)]


def _rows(pairs, products: pd.Index, labels: np.ndarray, a, b, items: pd.DataFrame) -> pd.DataFrame:
    best = _largest_images(items)
    same = labels[a] == labels[b]
    sims = pd.DataFrame({"group": labels[a][same], "similarity": pairs["similarity"].to_numpy()[same]})
    span = sims.groupby("group")["similarity"].agg(["min", "max"])
    degree = np.bincount(np.concatenate([a[same], b[same]]), minlength=len(products))
    table = pd.DataFrame({"label": labels, "product_id": products.astype(str), "degree": degree})
    table = table.join(best, on="product_id")
    table["group_size"] = table.groupby("label")["product_id"].transform("size")
    table = table[table["group_size"] > 1].sort_values(["label", "pixels", "degree", "product_id"],
                                                        ascending=[True, False, False, True])
    table["keeper"] = ~table.duplicated("label")
    keeper = table.loc[table["keeper"]].set_index("label")["product_id"]
    ranked = pd.DataFrame({"size": table.groupby("label").size(), "keeper": keeper})
    ranked = ranked.sort_values(["size", "keeper"], ascending=[False, True])
    order = {label: i for i, label in enumerate(ranked.index)}  # biggest groups first
    table["group_id"] = table["label"].map(lambda g: f"D{order[g] + 1:05d}")
    table["min_similarity"] = table["label"].map(span["min"])
    table["max_similarity"] = table["label"].map(span["max"])
    table["keeper_product_id"] = table["label"].map(keeper)
    return table.sort_values(["group_id", "keeper"], ascending=[True, False])[COLUMNS].reset_index(drop=True)


def _largest_images(items: pd.DataFrame) -> pd.DataFrame:
    """Each product's largest image: path and pixel count."""
    sized = items.assign(product_id=items["productId"].astype(str),
                         pixels=items["width"].astype(np.int64) * items["height"].astype(np.int64))
    sized = sized.sort_values(["pixels", "path"], ascending=[False, True]).drop_duplicates("product_id")
    return sized.set_index("product_id")[["path", "pixels"]]
