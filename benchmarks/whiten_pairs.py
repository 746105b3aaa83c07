"""Learned whitening from generated pairs (issue 23's "whiten-pairs"), measured before it is built.

    .venv/bin/python benchmarks/whiten_pairs.py [--catalog sample|fluent|both] [--backgrounds DIR]

For a catalog embedded with the default options: near-duplicate sources (``edits.pick_sources``)
are split in two halves by a seeded shuffle. Each source of both halves gets one edited copy per
kind of edit (05's generator, backgrounds from ``--backgrounds``: Debian's wallpapers by
default). The projection is learned from the fitting half's pairs only; recall@1 (does a copy
find its source among all catalog images?) is measured on the other half's copies:
  - none: the default vectors;
  - pca-whiten: 01's ``postprocess="whiten"`` (learned on the catalog);
  - whiten-pairs (``--fit-copies-per-kind``: more pairs per fitting source): Radenovic et al. 2018, in closed form. The intra-pair covariance of
    (source - copy), shrunk towards its mean eigenvalue by ``shrink``, whitens; then the
    catalog's covariance in that space gives the axes (all kept, or the first ``dims``).
Prints one JSON row per method; paste the table into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from embed_throughput import machine
from helpers import edits, embed, store, whitening
from helpers.vectors import l2_normalise

ROOT = Path(__file__).resolve().parents[1]
WALLPAPERS = Path("/usr/share/backgrounds")


def learn_pairs(sources: np.ndarray, copies: np.ndarray, catalog: np.ndarray, shrink: float = 1.0,
                dims: int | None = None) -> whitening.Whitening:
    """The whitening learned from (source, copy) pairs; rows are L2-normalised vectors."""
    diff = (sources - copies).astype(np.float64)
    variance, axes = np.linalg.eigh(diff.T @ diff / len(diff))
    variance = np.maximum(variance, 0.0) + shrink * max(float(variance.mean()), 1e-12)
    whiten = axes / np.sqrt(variance)  # C_S^(-1/2), as columns
    mean = catalog.mean(axis=0)
    spread = (catalog - mean) @ whiten
    values, rotation = np.linalg.eigh(spread.T @ spread / max(1, len(spread) - 1))
    order = np.argsort(values)[::-1][:dims]
    return whitening.Whitening(mean.astype(np.float32), (whiten @ rotation[:, order]).astype(np.float32))


def copies_of(image_dir: Path, paths: list[str], out: Path, backgrounds,
              per_kind: int = 1) -> tuple[np.ndarray, pd.DataFrame]:
    """``per_kind`` copies per kind of edit of each path (one seeded set each), embedded like
    the catalog: (vectors, labels)."""
    vectors, labels = [], []
    for k in range(per_kind):
        folder = out / f"set_{k}"
        edits.make_near_duplicates(image_dir, paths, folder, variants_per_source=len(edits.TRANSFORMS),
                                   backgrounds=backgrounds, seed=k)
        embed.embed_folder(folder, folder / "run", catalog=folder / "image_data.json", progress=False)
        v, items, _ = store.load_store(folder / "run", postprocessed=False)
        table = pd.read_csv(folder / "labels.csv").set_index("path").loc[items["path"]]
        edited = table["transform"].to_numpy() != "source"
        vectors.append(v[edited])
        labels.append(table[edited])
    return np.concatenate(vectors), pd.concat(labels)


def measure(name: str, image_dir: Path, work: Path, backgrounds, fit_per_kind: int = 1) -> list[dict]:
    embed.embed_folder(image_dir, work / "catalog", links="all", progress=False)
    catalog, items, _ = store.load_store(work / "catalog", postprocessed=False)
    sources = edits.pick_sources(catalog)
    np.random.default_rng(1).shuffle(sources)
    fit, held_out = np.sort(sources[: len(sources) // 2]), np.sort(sources[len(sources) // 2:])
    row_of = {p: i for i, p in enumerate(items["path"])}
    paths = items["path"].to_numpy()
    fit_copies, fit_labels = copies_of(image_dir, paths[fit].tolist(), work / "fit", backgrounds, fit_per_kind)
    test_copies, test_labels = copies_of(image_dir, paths[held_out].tolist(), work / "held_out", backgrounds)
    fit_sources = catalog[[row_of[p] for p in fit_labels["source"]]]
    truth = np.array([row_of[p] for p in test_labels["source"]])
    kinds = test_labels["transform"].to_numpy()
    methods = {"none": l2_normalise, "pca-whiten": whitening.learn(catalog).apply}
    for shrink in (0.1, 1.0, 10.0):
        methods[f"whiten-pairs, shrink {shrink:g}"] = learn_pairs(fit_sources, fit_copies, catalog, shrink).apply
    rows = []
    for method, project in methods.items():
        hit = (project(test_copies) @ project(catalog).T).argmax(axis=1) == truth
        row = {"catalog": name, "method": method, "fit sources": len(fit), "fit pairs": len(fit_copies),
               "held-out sources": len(held_out),
               "r@1 all": round(float(hit.mean()), 3),
               **{f"r@1 {kind}": round(float(hit[kinds == kind].mean()), 3) for kind in edits.TRANSFORMS}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", choices=["sample", "fluent", "both"], default="both")
    parser.add_argument("--backgrounds", default=str(WALLPAPERS) if WALLPAPERS.is_dir() else None)
    parser.add_argument("--fit-copies-per-kind", type=int, default=1,
                        help="edited copies of each fitting source per kind of edit")
    args = parser.parse_args()
    print(json.dumps({"machine": machine(), "backgrounds": args.backgrounds}))
    from quality import fluent_catalog

    catalogs = {"sample": lambda: ROOT / "data" / "sample", "fluent": fluent_catalog}
    with tempfile.TemporaryDirectory() as tmp:
        for name in (["sample", "fluent"] if args.catalog == "both" else [args.catalog]):
            measure(name, catalogs[name](), Path(tmp) / name, args.backgrounds, args.fit_copies_per_kind)


if __name__ == "__main__":
    main()
