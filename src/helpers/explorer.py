"""``explorer.html``: one self-contained page to browse a run by clicking, offline.

Find a product by id or file name, see its images, neighbours, near-duplicates and map
position, follow neighbours (every product has a shareable ``#<productId>`` address), pan and
zoom the catalog map, and review near-duplicate pairs as "same" / "different": the marks
download as a labels CSV that 05's ``labels`` benchmark reads.

Everything is inlined: the data as JSON (every id and name is text, shown with
``textContent``), the thumbnails as data URIs, the script and style from
``explorer_page.html`` beside this module. Nothing is fetched, so it opens from ``file://``.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import runfolder, store
from .thumbnails import thumbnail_paths
from .vectors import first_two_components

TEMPLATE = Path(__file__).with_name("explorer_page.html")
THUMB_SIZE = 64          # px: 10,000 products stay within the page budget (docs/benchmarks.md)
MAX_PRODUCTS = 10_000    # past this, the first products in catalog order, and a note says so


def explorer_data(run_dir: str | Path, max_products: int = MAX_PRODUCTS) -> dict:
    """What the page shows, as plain lists: products (id, images, map position, thumbnail,
    neighbours), near-duplicate pairs to review, and a note when the catalog was capped."""
    run_dir = Path(run_dir)
    embeddings, items, _ = store.load_store(run_dir)
    firsts = items.drop_duplicates("productId")
    shown = firsts.head(max_products)
    ids = shown["productId"].astype(str).tolist()
    index = {pid: i for i, pid in enumerate(ids)}
    thumbs = dict(zip(items["path"], thumbnail_paths(run_dir, THUMB_SIZE)))
    xy = first_two_components(np.asarray(embeddings)[shown["row"].to_numpy()])
    span = np.maximum(xy.max(axis=0) - xy.min(axis=0), 1e-9) if len(xy) else np.ones(2)
    xy = (xy - xy.min(axis=0)) / span if len(xy) else xy
    paths = items.groupby(items["productId"].astype(str), sort=False)["path"].agg(list)
    products = [{"id": pid, "paths": paths[pid][:8], "thumb": _data_uri(thumbs[path]),
                 "x": round(float(x), 4), "y": round(float(y), 4), "neighbors": []}
                for pid, path, (x, y) in zip(ids, shown["path"], xy)]
    notes = [_add_neighbors(run_dir, products, index)]
    if len(firsts) > len(ids):
        notes.append(f"{len(firsts) - len(ids)} more products are not in this page (it shows the first "
                     f"{len(ids)} of {len(firsts)}; write_explorer(max_products=...) shows more)")
    return {"run": run_dir.name, "products": products, "pairs": _review_pairs(run_dir, index),
            "note": "; ".join(n for n in notes if n)}


def sweep_data(runs: list[Path], max_products: int = MAX_PRODUCTS) -> dict:
    """The first run's page data, plus every run's neighbour lists of the same products: a
    product's neighbours under each configuration side by side."""
    data = explorer_data(runs[0], max_products)
    index = {p["id"]: i for i, p in enumerate(data["products"])}
    data["configs"] = []
    for run_dir in runs:
        lists = [{"neighbors": []} for _ in data["products"]]
        note = _add_neighbors(run_dir, lists, index)
        data["configs"].append({"name": run_dir.name, "note": note, "neighbors": [p["neighbors"] for p in lists]})
    data["run"] = f"sweep {runs[0].parent.name}"
    return data


def _add_neighbors(run_dir: Path, products: list[dict], index: dict) -> str:
    """Each product's neighbour list (index, similarity), from 03; a note when there is none."""
    if not runfolder.record(run_dir, "neighbors"):
        return "no neighbour lists yet: run 03_neighbors"
    try:
        runfolder.check_current(run_dir, "neighbors", "explorer")
    except runfolder.StaleError as exc:
        return str(exc)
    table = pd.read_parquet(run_dir / runfolder.NEIGHBORS)
    for master, similar, similarity in zip(table["master_pi"].astype(str), table["similar_pi"].astype(str),
                                          table["similarity"]):
        if master in index and similar in index:
            products[index[master]]["neighbors"].append([index[similar], round(float(similarity), 4)])
    return ""


def _review_pairs(run_dir: Path, index: dict) -> list[list]:
    path = run_dir / runfolder.NEAR_DUPLICATES
    if not path.exists():
        return []
    pairs = pd.read_csv(path, keep_default_na=False, dtype={"product_a": str, "product_b": str})
    return [[index[a], index[b], round(float(s), 4), pa, pb]
            for a, b, s, pa, pb in zip(pairs["product_a"], pairs["product_b"], pairs["similarity"],
                                       pairs["path_a"], pairs["path_b"]) if a in index and b in index]


def _data_uri(path: Path) -> str:
    try:
        return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError:
        return ""


def script_json(data) -> str:
    """JSON that cannot end the ``<script>`` element it sits in, whatever the names hold."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def write_explorer(run_dir: str | Path, max_products: int = MAX_PRODUCTS) -> Path:
    """Write ``run_dir/explorer.html`` and return its path."""
    return _write_page(Path(run_dir) / runfolder.EXPLORER, explorer_data(Path(run_dir), max_products))


def write_sweep_explorer(root: str | Path, runs: list[Path], max_products: int = MAX_PRODUCTS) -> Path:
    """Write ``root/explorer.html`` for a sweep: each product's neighbours in every run."""
    return _write_page(Path(root) / runfolder.EXPLORER, sweep_data([Path(r) for r in runs], max_products))


def _write_page(target: Path, data: dict) -> Path:
    page = TEMPLATE.read_text(encoding="utf-8").replace("/*DATA*/null", script_json(data))
    with runfolder.atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.explorer RUN_DIR``: (re)write a run's explorer.html."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--max-products", type=int, default=MAX_PRODUCTS)
    args = parser.parse_args(argv)
    print(f"explorer: {write_explorer(args.run_dir, args.max_products)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
