"""Visual grids (notebook 04): pick which products to look at and save a grid per query.

Reads ``neighbors.parquet`` written by 03 and the thumbnail cache; writes
``run_dir/grids/<n>_<productId>.png``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots, runfolder, store
from .index import check_counts
from .thumbnails import open_thumbnail, thumbnail_paths

SHOW = ("random", "worst", "duplicates", "errors")


def read_labels(path: str | Path) -> dict[str, str]:
    """Ground truth from a CSV with a ``label`` column and ``path`` or ``imageName`` or
    ``productId``; returns key -> label."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    key = next((c for c in ("path", "imageName", "productId") if c in frame.columns), None)
    if key is None or "label" not in frame.columns:
        raise ValueError(f"{path}: needs a 'label' column and one of path, imageName, productId")
    return dict(zip(frame[key], frame["label"]))


def label_of(table: pd.DataFrame, labels: dict[str, str], side: str) -> pd.Series:
    """Label of the master or similar side of each neighbour row (by path, file name or id)."""
    paths, ids = table[f"{side}_path"], table["master_pi" if side == "master" else "similar_pi"]
    names = paths.map(lambda p: Path(p).name)
    return paths.map(labels).fillna(names.map(labels)).fillna(ids.map(labels))


def select_queries(table: pd.DataFrame, queries, show: str = "random", seed: int = 0,
                   labels: dict[str, str] | None = None) -> list[str]:
    """Master productIds to show: the listed ones, or ``queries`` of them picked by ``show``."""
    masters = table.drop_duplicates("master_pi")
    if not isinstance(queries, (int, np.integer)):
        wanted, chosen = [str(q) for q in queries], []
        by_name = dict(zip(masters["master_path"].map(lambda p: Path(p).name), masters["master_pi"]))
        by_path = dict(zip(masters["master_path"], masters["master_pi"]))
        known = set(masters["master_pi"])
        missing = [q for q in wanted if q not in known and q not in by_path and q not in by_name]
        if missing:
            raise ValueError(f"queries not found in neighbors.parquet: {missing[:5]} "
                             "(give productIds, image paths or file names)")
        for q in wanted:
            chosen.append(q if q in known else by_path.get(q) or by_name[q])
        return chosen
    if show not in SHOW:
        raise ValueError(f"show={show!r}; choose one of {SHOW}")
    top1 = table[table["rank"] == 1].set_index("master_pi")["similarity"]
    if show == "random":
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(masters), size=min(int(queries), len(masters)), replace=False)
        return masters["master_pi"].iloc[np.sort(picked)].tolist()
    if show == "worst":
        return top1.sort_values(kind="stable").index[: int(queries)].tolist()
    if show == "duplicates":
        return top1.sort_values(ascending=False, kind="stable").index[: int(queries)].tolist()
    if not labels:
        raise ValueError("show='errors' needs ground truth: pass labels (a CSV of path,label)")
    wrong = table.assign(wrong=label_of(table, labels, "master") != label_of(table, labels, "similar"))
    rate = wrong.groupby("master_pi", sort=False)["wrong"].mean()
    return rate[rate > 0].sort_values(ascending=False, kind="stable").index[: int(queries)].tolist()


def render_grids(run_dir: str | Path, queries=12, k: int = 8, columns: int = 9, thumb_size: int = 160,
                 show: str = "random", seed: int = 0, labels: dict[str, str] | None = None) -> list[Path]:
    """Save one grid PNG per selected query under ``run_dir/grids``; return their paths."""
    check_counts(k=k, thumb_size=thumb_size)
    run_dir = Path(run_dir)
    with runfolder.lock(run_dir, "04_visual_grids"):
        return _render(run_dir, queries, k, columns, thumb_size, show, seed, labels)


def _render(run_dir: Path, queries, k: int, columns: int, thumb_size: int, show: str, seed: int,
            labels: dict[str, str] | None) -> list[Path]:
    runfolder.check_current(run_dir, "neighbors", "04_visual_grids")  # lists of this store only
    table = pd.read_parquet(run_dir / runfolder.NEIGHBORS)
    items = store.load_items(run_dir)
    thumbs = dict(zip(items["path"], thumbnail_paths(run_dir, thumb_size)))
    chosen = select_queries(table, queries, show, seed, labels)
    out_dir = run_dir / runfolder.GRIDS
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    by_master = {m: g for m, g in table.groupby("master_pi", sort=False)}
    saved = []
    for n, master in enumerate(chosen, 1):
        group = by_master[master].head(k)
        correct = [None] * len(group)
        if labels:
            truth = label_of(group, labels, "master").tolist()
            guess = label_of(group, labels, "similar").tolist()
            correct = [None if pd.isna(t) or pd.isna(g) else t == g for t, g in zip(truth, guess)]
        query = (open_thumbnail(thumbs[group["master_path"].iat[0]], thumb_size), master)
        cells = [(open_thumbnail(thumbs[p], thumb_size), pi, s, c)
                 for p, pi, s, c in zip(group["similar_path"], group["similar_pi"], group["similarity"], correct)]
        image = plots.grid_image(query, cells, columns=columns, thumb_size=thumb_size)
        path = out_dir / f"{n:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', master)[:60]}.png"
        image.save(path, optimize=False)
        saved.append(path)
    return saved


def render_group_grids(run_dir: str | Path, max_groups: int = 12, columns: int = 9,
                       thumb_size: int = 160) -> list[Path]:
    """One review grid per near-duplicate group (03's duplicate_groups.csv), biggest first:
    the suggested keeper, then the others; saved under ``grids/groups/``."""
    run_dir = Path(run_dir)
    with runfolder.lock(run_dir, "04_visual_grids"):
        runfolder.check_current(run_dir, "neighbors", "04_visual_grids")
        found = pd.read_csv(run_dir / runfolder.DUPLICATE_GROUPS, dtype={"product_id": str, "keeper_product_id": str},
                            keep_default_na=False)
        chosen = list(dict.fromkeys(found["group_id"]))[:max_groups]
        rows = [(g, found[found["group_id"] == g]) for g in chosen]
        cells = [((r.path.iat[0], f"{g} keep {r.product_id.iat[0]}"),
                  [(p, pi, s, None) for p, pi, s in zip(r.path.iloc[1:], r.product_id.iloc[1:],
                                                        r.max_similarity.iloc[1:])]) for g, r in rows]
        return _save_grids(run_dir, runfolder.GROUP_GRIDS, [g for g, _ in rows], cells, columns, thumb_size)


def render_cluster_grids(run_dir: str | Path, max_clusters: int = 12, per_cluster: int = 8, columns: int = 9,
                         thumb_size: int = 160, seed: int = 0) -> list[Path]:
    """One grid per visual cluster (03's clusters.parquet), biggest first: a seeded sample
    of its images; saved under ``grids/clusters/``."""
    run_dir = Path(run_dir)
    with runfolder.lock(run_dir, "04_visual_grids"):
        runfolder.check_current(run_dir, "neighbors", "04_visual_grids")
        table = pd.read_parquet(run_dir / runfolder.CLUSTERS)
        rng = np.random.default_rng(seed)
        names, cells = [], []
        for c in sorted(table["cluster"].unique())[:max_clusters]:
            members = table[table["cluster"] == c]
            shown = members.iloc[np.sort(rng.permutation(len(members))[:per_cluster + 1])]
            names.append(f"cluster{c:03d}")
            cells.append(((shown.path.iat[0], f"cluster {c}: {len(members)}"),
                          [(p, pi, None, None) for p, pi in zip(shown.path.iloc[1:], shown.product_id.iloc[1:])]))
        return _save_grids(run_dir, runfolder.CLUSTER_GRIDS, names, cells, columns, thumb_size)


def _save_grids(run_dir: Path, folder_name: str, names: list[str], cells, columns: int, thumb_size: int) -> list[Path]:
    """Grid PNGs (query cell, then the others) into ``grids/<folder_name>/``, replacing old ones."""
    items = store.load_items(run_dir)
    thumbs = dict(zip(items["path"], thumbnail_paths(run_dir, thumb_size)))
    out_dir = run_dir / runfolder.GRIDS / folder_name
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    saved = []
    for n, (name, ((first, caption), others)) in enumerate(zip(names, cells), 1):
        query = (open_thumbnail(thumbs.get(first, ""), thumb_size), caption)
        rest = [(open_thumbnail(thumbs.get(p, ""), thumb_size), pi, s, c) for p, pi, s, c in others]
        path = out_dir / f"{n:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[:60]}.png"
        plots.grid_image(query, rest, columns=columns, thumb_size=thumb_size, label_first=False).save(path)
        saved.append(path)
    return saved


def render_neighbor_map(run_dir: str | Path, thumb_size: int = 128, map_points: int = 1500,
                        seed: int = 0) -> Path:
    """The t-SNE map (``clusters.neighbor_map``) drawn with thumbnails framed by cluster,
    saved as ``neighbor_map.jpg``."""
    from . import clusters

    run_dir = Path(run_dir)
    with runfolder.lock(run_dir, "04_visual_grids"):
        embeddings, items, _ = store.load_store(run_dir)
        labels = None
        if (run_dir / runfolder.CLUSTERS).exists():
            runfolder.check_current(run_dir, "neighbors", "04_visual_grids")
            labels = pd.read_parquet(run_dir / runfolder.CLUSTERS)["cluster"].to_numpy()
        coordinates = clusters.neighbor_map(np.asarray(embeddings), seed=seed)
        picture = plots.catalog_map(embeddings, thumbnail_paths(run_dir, thumb_size), max_points=map_points,
                                    seed=seed, coordinates=coordinates, clusters=labels)
        path = run_dir / runfolder.NEIGHBOR_MAP
        with runfolder.atomic_path(path) as tmp:
            picture.save(tmp, "JPEG", quality=85)
        return path
