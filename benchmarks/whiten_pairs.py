"""Learned whitening from generated pairs (issue 23's "whiten-pairs"), fitted and measured on separate halves.

    .venv/bin/python benchmarks/whiten_pairs.py [--catalog sample|fluent|both|fashion-mnist] [--backgrounds DIR]
    .venv/bin/python benchmarks/whiten_pairs.py --cost IMAGE_DIR   # 01's fitting cost
    .venv/bin/python benchmarks/whiten_pairs.py --sellers          # the sample's second sellers at rank 1
    .venv/bin/python benchmarks/whiten_pairs.py --options hog_weight=0 --as-01   # other embedding options

For a catalog embedded with the default options: near-duplicate sources (``edits.pick_sources``)
are split in two halves by a seeded shuffle. Each source of both halves gets one edited copy per
kind of edit (05's generator, backgrounds from ``--backgrounds``: Debian's wallpapers by
default). The projection is learned from the fitting half's pairs only; recall@1 (does a copy
find its source among all catalog images?) is measured on the other half's copies:
  - none: the default vectors;
  - pca-whiten: 01's ``postprocess="whiten"`` (learned on the catalog);
  - whiten-pairs (``--fit-copies-per-kind``: more pairs per fitting source): 01's
    ``adapt="whiten-pairs"`` (``helpers.adaptation.learn_pairs``) at several ``shrink``; "not
    centred" leaves out the catalog's mean;
  - head: 01's ``adapt="head"`` (``helpers.adaptation.learn_head``).
``--options name=value ...`` embeds everything with other ``EmbeddingOptions`` (the outline off,
centre weighting, regional pooling); ``--as-01`` measures only 01's three ``adapt`` values.
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
from helpers import adaptation, edits, embed, store, whitening
from helpers.adaptation import learn_pairs
from helpers.options import EmbeddingOptions
from helpers.vectors import l2_normalise

ROOT = Path(__file__).resolve().parents[1]
WALLPAPERS = Path("/usr/share/backgrounds")


def copies_of(image_dir: Path, paths: list[str], out: Path, backgrounds, options: EmbeddingOptions,
              per_kind: int = 1) -> tuple[np.ndarray, pd.DataFrame]:
    """The held-out half's queries: ``per_kind`` copies per kind of edit of each path (05's
    generator at full size, one seeded set each), embedded as a catalog: (vectors, labels)."""
    vectors, labels = [], []
    for k in range(per_kind):
        folder = out / f"set_{k}"
        edits.make_near_duplicates(image_dir, paths, folder, variants_per_source=len(edits.TRANSFORMS),
                                   backgrounds=backgrounds, seed=k)
        embed.embed_folder(folder, folder / "run", options, catalog=folder / "image_data.json", progress=False)
        v, items, _ = store.load_store(folder / "run", postprocessed=False)
        table = pd.read_csv(folder / "labels.csv").set_index("path").loc[items["path"]]
        edited = table["transform"].to_numpy() != "source"
        vectors.append(v[edited])
        labels.append(table[edited])
    return np.concatenate(vectors), pd.concat(labels)


def fitting_copies(image_dir: Path, paths: list[str], backgrounds, options: EmbeddingOptions,
                   per_kind: int = 1) -> tuple[np.ndarray, pd.DataFrame]:
    """The fitting half's copies made as 01's adaptation makes them (``copies.embedded_copies`` at
    ``adaptation.ADAPT_MAX_SIDE``), ``per_kind`` seeded sets: (vectors, labels)."""
    from helpers import copies

    made = [copies.embedded_copies(image_dir, paths, options, backgrounds,
                                   adaptation.SEED + k, adaptation.ADAPT_MAX_SIDE) for k in range(per_kind)]
    return np.concatenate([v for _, v in made]), pd.concat([labels for labels, _ in made])


CACHE = ROOT / "benchmarks" / "cache" / "whiten_pairs"


def pair_vectors(name: str, image_dir: Path, work: Path, backgrounds, options: EmbeddingOptions,
                 fit_per_kind: int = 1) -> dict:
    """The catalog's vectors, the fitting half's (source, copy) pairs and the held-out half's
    copies; cached in benchmarks/cache by catalog, settings and options (the default's name is
    the one it always had)."""
    tag = "" if options == EmbeddingOptions() else f"_{options.vector_key()[:12]}"
    saved = CACHE / f"{name}_{fit_per_kind}_{Path(str(backgrounds)).name}_as01{tag}.npz"
    if saved.exists():
        with np.load(saved) as f:
            return dict(f)
    embed.embed_folder(image_dir, work / "catalog", options, links="all", progress=False)
    catalog, items, _ = store.load_store(work / "catalog", postprocessed=False)
    sources = edits.pick_sources(catalog)
    np.random.default_rng(1).shuffle(sources)
    fit, held_out = np.sort(sources[: len(sources) // 2]), np.sort(sources[len(sources) // 2:])
    row_of = {p: i for i, p in enumerate(items["path"])}
    paths = items["path"].to_numpy()
    fit_copies, fit_labels = fitting_copies(image_dir, paths[fit].tolist(), backgrounds, options,
                                            fit_per_kind)
    test_copies, test_labels = copies_of(image_dir, paths[held_out].tolist(), work / "held_out", backgrounds,
                                         options)
    found = {"catalog": catalog, "fit_sources": catalog[[row_of[p] for p in fit_labels["source"]]],
             "fit_copies": fit_copies, "fit_kinds": fit_labels["transform"].to_numpy(str),
             "test_copies": test_copies, "truth": np.array([row_of[p] for p in test_labels["source"]]),
             "kinds": test_labels["transform"].to_numpy(str), "n_fit": len(fit), "n_held_out": len(held_out)}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(saved, **found)
    return found


AS_01 = {"none": "none", "whiten-pairs, shrink 1": "whiten-pairs", "head": "head"}  # method: 01's adapt


def methods_for(v: dict) -> dict:
    """Each method's name and how to learn its projection (learned only when it is measured)."""
    catalog, fit_sources, fit_copies = v["catalog"], v["fit_sources"], v["fit_copies"]

    def not_centred(shrink: float):
        learned = learn_pairs(fit_sources, fit_copies, catalog, shrink)
        return whitening.Whitening(np.zeros_like(learned.mean), learned.projection).apply

    def head():
        source_rows = (fit_sources @ catalog.T).argmax(axis=1)  # each source is a catalog row
        return adaptation.learn_head(source_rows, fit_copies, catalog).apply

    methods = {"none": lambda: l2_normalise, "pca-whiten": lambda: whitening.learn(catalog).apply}
    for shrink in (0.1, 1.0, 10.0):
        methods[f"whiten-pairs, shrink {shrink:g}"] = \
            lambda shrink=shrink: learn_pairs(fit_sources, fit_copies, catalog, shrink).apply
    for shrink in (1.0, 10.0):
        methods[f"whiten-pairs, shrink {shrink:g}, not centred"] = lambda shrink=shrink: not_centred(shrink)
    methods["head"] = head
    return methods


def measure(name: str, image_dir: Path, work: Path, backgrounds, options: EmbeddingOptions,
            fit_per_kind: int = 1, only: str = "", as_01: bool = False) -> list[dict]:
    v = pair_vectors(name, image_dir, work, backgrounds, options, fit_per_kind)
    catalog, test_copies, truth, kinds = v["catalog"], v["test_copies"], v["truth"], v["kinds"]
    rows = []
    for method, learn in methods_for(v).items():
        if only not in method or (as_01 and method not in AS_01):
            continue
        project = learn()
        hit = (project(test_copies) @ project(catalog).T).argmax(axis=1) == truth
        row = {"catalog": name, "options": options_shown(options), "method": method,
               "fit sources": int(v["n_fit"]), "fit pairs": len(v["fit_copies"]),
               "held-out sources": int(v["n_held_out"]),
               "r@1 all": round(float(hit.mean()), 3),
               **{f"r@1 {kind}": round(float(hit[kinds == kind].mean()), 3) for kind in edits.TRANSFORMS}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def options_shown(options: EmbeddingOptions) -> str:
    """The options that differ from the defaults, e.g. "hog_weight=0" ("default" when none do)."""
    default = EmbeddingOptions().as_dict()
    changed = {k: v for k, v in options.as_dict().items() if v != default[k] and k != "adapt"}
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()) or "default"


def fashion_mnist_rows(backgrounds, options: EmbeddingOptions,
                       n_sources: int = adaptation.ADAPT_SOURCES) -> list[dict]:
    """Fashion-MNIST precision@20 (1,000 test queries against the 60,000 train images), with
    the adaptation learned as 01 would on that gallery: edited copies of its first
    ``n_sources`` images (the queries are test images, never fitted on)."""
    from helpers import benchmarks, evaluate, fashion_mnist
    from helpers.models import cache_dir

    train_x, _ = fashion_mnist.load("train")
    rows = []
    for method in adaptation.ADAPT:
        adapted = EmbeddingOptions.of(options.as_dict(), adapt=method)
        learn = adaptation.pair_learner(train_x[:n_sources], adapted, backgrounds) if method != "none" else None
        result = benchmarks.fashion_mnist_benchmark(evaluate.fashion_mnist_embedder(adapted, progress=False),
                                                    cache_dir=cache_dir() / "benchmarks" / "fashion-mnist",
                                                    cache_key=adapted.vector_key(), learn=learn)
        row = {"catalog": "fashion-mnist", "options": options_shown(options), "method": method,
               "fit sources": n_sources,
               "p@20": round(float(result["summary"].loc["all", "precision@20"]), 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def fitting_cost(images: Path, work: Path) -> list[dict]:
    """01's seconds on a folder of images, then each adaptation on the same store (its vectors
    reused: the difference is the fitting cost, copies made and embedded plus the fit). Each
    method makes its copies afresh, as a first run would."""
    from helpers import runfolder

    rows = []
    for method in adaptation.ADAPT:
        (work / "run" / runfolder.ADAPTATION_PAIRS).unlink(missing_ok=True)
        meta = embed.embed_folder(images, work / "run", adapt=method, links="all", progress=False)
        row = {"catalog": str(images), "images": meta["n_items"], "method": method,
               "01 seconds": meta["seconds"]["total"], "adaptation seconds": meta["seconds"].get("adaptation"),
               "pairs": (meta["adaptation"] or {}).get("pairs")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def second_sellers(work: Path) -> list[dict]:
    """The sample's second-seller images (``X_seller2``): is the first seller's image their
    nearest other image, for each ``adapt`` (learned by 01 on the sample itself)?"""
    catalog = ROOT / "data" / "sample"
    rows = []
    for method in adaptation.ADAPT:
        embed.embed_folder(catalog, work / "run", catalog=catalog / "image_data.json", adapt=method, progress=False)
        vectors, items, _ = store.load_store(work / "run")
        stems = items["path"].map(lambda p: Path(p).stem).to_numpy()
        row_of = {stem: i for i, stem in enumerate(stems)}
        sellers = [i for i, stem in enumerate(stems) if stem.endswith("_seller2")]
        sims = vectors[sellers] @ vectors.T
        sims[np.arange(len(sellers)), sellers] = -np.inf
        first = np.array([row_of[stems[i].replace("_seller2", "")] for i in sellers])
        row = {"catalog": "sample", "method": method, "second sellers": len(sellers),
               "first seller at rank 1": int((sims.argmax(axis=1) == first).sum())}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", choices=["sample", "fluent", "both", "fashion-mnist"], default="both")
    parser.add_argument("--backgrounds", default=str(WALLPAPERS) if WALLPAPERS.is_dir() else None)
    parser.add_argument("--fit-copies-per-kind", type=int, default=1,
                        help="edited copies of each fitting source per kind of edit")
    parser.add_argument("--only", default="", help="only the methods whose name holds this")
    parser.add_argument("--cost", metavar="IMAGE_DIR", help="measure 01's fitting cost on this folder instead")
    parser.add_argument("--sellers", action="store_true", help="the sample's second sellers at rank 1 instead")
    parser.add_argument("--options", nargs="*", default=[], metavar="NAME=VALUE",
                        help="embedding options other than the defaults, e.g. hog_weight=0 pooling=regional")
    parser.add_argument("--as-01", action="store_true", help="only 01's adapt values (none, whiten-pairs, head)")
    args = parser.parse_args()
    options = EmbeddingOptions.of(**{k: (float(v) if k == "hog_weight" else v)
                                     for k, v in (pair.split("=", 1) for pair in args.options)})
    print(json.dumps({"machine": machine(), "backgrounds": args.backgrounds}))
    from quality import fluent_catalog

    catalogs = {"sample": lambda: ROOT / "data" / "sample", "fluent": fluent_catalog}
    with tempfile.TemporaryDirectory() as tmp:
        if args.sellers:
            second_sellers(Path(tmp))
            return
        if args.cost:
            fitting_cost(Path(args.cost), Path(tmp))
            return
        if args.catalog == "fashion-mnist":
            fashion_mnist_rows(args.backgrounds, options)
            return
        for name in (["sample", "fluent"] if args.catalog == "both" else [args.catalog]):
            measure(name, catalogs[name](), Path(tmp) / name, args.backgrounds, options, args.fit_copies_per_kind,
                    args.only, args.as_01)


if __name__ == "__main__":
    main()
