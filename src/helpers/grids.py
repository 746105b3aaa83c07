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
