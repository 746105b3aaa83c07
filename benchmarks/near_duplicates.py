"""Near-duplicates with default settings: pair precision and recall, per kind of edit, and
what the calibration and the keypoint check cost.

    .venv/bin/python benchmarks/near_duplicates.py quality [--catalog data/sample] [--sources 300]
    .venv/bin/python benchmarks/near_duplicates.py cost [--n-images 10000]

quality (``--catalog`` may be a folder of file links: they are followed): 05's generator
makes ``--variants`` copies of each source (05's default 2), the kinds
(crop, mirror, downscale, recolour, re-encode, rotation up to 20 degrees, aspect change,
background swap) in turn so each is used equally often, the
background swaps on real photos (scikit-image's, which the calibration never uses: it takes
Debian's wallpapers when installed, else generated backgrounds); then 01 and 03 with
default settings. Right pairs: two images of one source. Pair precision and recall count
every pair of near_duplicates.csv; "recall by kind" counts each copy found with its source.
For the bundled sample it also counts the second-seller pairs of the sample itself.

cost: a catalog of Fashion-MNIST test images (distinct products that look alike: the band
the keypoint check looks at is full), timing 01, 03 with a fixed threshold (no calibration,
no check) and 03 with the default calibrated rule, in one run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from embed_throughput import machine  # noqa: E402

from helpers import duplicates, edits, embed, images, neighbors, runfolder  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "brick", "grass",
          "gravel", "immunohistochemistry")


def scene_backgrounds(folder: Path) -> Path:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{name}.jpg", quality=90)
    return folder


def pair_scores(run_dir: Path, labels: pd.DataFrame) -> dict:
    """Pair precision and recall of near_duplicates.csv against the benchmark's groups."""
    found = pd.read_csv(run_dir / runfolder.NEAR_DUPLICATES, keep_default_na=False, dtype=str)
    group = dict(zip(labels["productId"], labels["group"]))
    pairs = {frozenset(p) for p in zip(found["product_a"], found["product_b"])}
    right = {p for p in pairs if len({group.get(x, x) for x in p}) == 1}
    truth = {frozenset(p) for _, g in labels[labels["transform"] != "distractor"].groupby("group")
             for p in combinations(g["productId"], 2)}
    sources = labels[labels["transform"] == "source"].set_index("group")["productId"]
    copies = labels[~labels["transform"].isin(["source", "distractor"])]
    hit = [frozenset((pid, sources[g])) in pairs for pid, g in zip(copies["productId"], copies["group"])]
    by_kind = pd.Series(hit, index=copies["transform"].to_numpy()).groupby(level=0).mean()
    return {"pairs": len(pairs), "precision": len(right) / max(1, len(pairs)), "recall": len(right & truth) / len(truth),
            "by_kind": by_kind.reindex([t for t in edits.TRANSFORMS if t in set(by_kind.index)]).round(3).to_dict(),
            "wrong": sorted(tuple(sorted(p)) for p in pairs - right)[:10]}


def quality(catalog: Path, n_sources: int, variants: int, work: Path) -> None:
    paths = [p for p in images.list_images(catalog, links="all") if "_seller2" not in p]
    paths = [paths[i] for i in np.sort(np.random.default_rng(0).permutation(len(paths))[:n_sources])]
    out = work / "benchmark"
    labels = edits.make_near_duplicates(catalog, paths, out, variants_per_source=variants,
                                        backgrounds=scene_backgrounds(work / "scenes"), seed=7)
    start = time.perf_counter()
    embed.embed_folder(out, out / "run", catalog=out / runfolder.CATALOG, links="all", progress=False)
    embedded = time.perf_counter() - start
    meta = neighbors.write_neighbors(out / "run")
    scores = pair_scores(out / "run", labels)
    rule = meta["duplicate_rule"]
    print(f"\n### {catalog}: {len(paths)} sources x {variants} copies = {len(labels)} images\n")
    print(f"Machine: {machine()}\n")
    print("| measure | value |\n|---|---|")
    print(f"| pairs listed | {scores['pairs']} |\n| pair precision | {scores['precision']:.3f} |")
    print(f"| pair recall (all pairs of one source) | {scores['recall']:.3f} |")
    for kind, value in scores["by_kind"].items():
        print(f"| recall: {kind} (copy with its source) | {value:.3f} |")
    print(f"| rule | {duplicates.describe(rule)} |")
    print(f"| estimated by the calibration | precision {rule['precision']}, recall {rule['recall']} |")
    print(f"| 01 seconds / 03 seconds (of which near-duplicates) | {embedded:.1f} / {meta['seconds']:.1f} "
          f"({meta['duplicate_seconds']:.1f}) |")
    print(f"\nwrong pairs (first 10): {scores['wrong']}")
    if (catalog / runfolder.CATALOG).exists():
        seller_pairs(catalog, work / "catalog_run")


def seller_pairs(catalog: Path, run_dir: Path) -> None:
    """The catalog's own second-seller listings (``X_seller2``): found with their first seller?"""
    embed.embed_folder(catalog, run_dir, catalog=catalog / runfolder.CATALOG, links="all", progress=False)
    neighbors.write_neighbors(run_dir)
    found = pd.read_csv(run_dir / runfolder.NEAR_DUPLICATES, keep_default_na=False, dtype=str)
    sellers = [Path(p).stem for p in images.list_images(catalog, links="all") if "_seller2" in p]
    pairs = {frozenset((Path(a).stem, Path(b).stem)) for a, b in zip(found["path_a"], found["path_b"])}
    hits = sum(frozenset((s, s.replace("_seller2", ""))) in pairs for s in sellers)
    others = [sorted(p) for p in pairs if not any(x.endswith("_seller2") and x.replace("_seller2", "") in p for x in p)]
    print(f"\nThe catalog itself: {hits} of {len(sellers)} second-seller pairs found; "
          f"{len(pairs)} pairs listed, the others: {others}")


def cost(n_images: int, work: Path) -> None:
    from helpers import fashion_mnist

    folder = work / "fashion"
    folder.mkdir(parents=True, exist_ok=True)
    pictures, _ = fashion_mnist.load("test")
    for i, picture in enumerate(pictures[:n_images]):
        Image.fromarray(255 - picture).resize((112, 112), Image.BICUBIC).save(folder / f"fm_{i:05d}.png")
    run_dir = work / "run"
    start = time.perf_counter()
    embed.embed_folder(folder, run_dir, progress=False)
    t01 = time.perf_counter() - start
    start = time.perf_counter()
    fixed = neighbors.write_neighbors(run_dir, duplicate_threshold=0.95, refresh=False)
    t03 = time.perf_counter() - start
    start = time.perf_counter()
    auto = neighbors.write_neighbors(run_dir, refresh=False)
    t03_auto = time.perf_counter() - start
    start = time.perf_counter()
    again = neighbors.write_neighbors(run_dir, refresh=False)
    t03_again = time.perf_counter() - start
    per_image, per_pair, per_alignment = unit_costs()
    extra = t03_auto - t03
    print(f"\n### Cost on {n_images:,} Fashion-MNIST images (112 px PNG)\n\nMachine: {machine()}\n")
    print("| step | seconds |\n|---|---|")
    print(f"| 01 embed | {t01:.1f} |\n| 03, fixed threshold (no calibration, no check) | {t03:.1f} |")
    print(f"| 03, default (calibrated rule + keypoint check) | {t03_auto:.1f} |")
    print(f"| 03 again (copies, keypoints and matches cached) | {t03_again:.1f} |")
    print(f"| added to 01 + 03 | {extra:.1f} s = {extra / (t01 + t03):.0%} |")
    print(f"| keypoints per image (one thread) | {per_image * 1000:.1f} ms |")
    print(f"| keypoint check per pair (two threads) | {per_pair * 1000:.2f} ms |")
    print(f"| alignment check per pair (two threads) | {per_alignment * 1000:.2f} ms |")
    print(f"\nchecked pairs: {auto['verified_pairs']} verified of {auto['near_duplicate_pairs']} listed; "
          f"rule {auto['duplicate_rule']}; fixed threshold listed {fixed['near_duplicate_pairs']}; "
          f"again {again['near_duplicate_pairs']}")


def unit_costs(n: int = 300) -> tuple[float, float, float]:
    """Seconds per image for keypoints and thumbnail (one thread), per keypoint check and per
    alignment check of a pair (two threads), on
    scikit-image's photos re-framed to 600-1600 px (``embed_throughput.make_images``)."""
    from embed_throughput import make_images

    from helpers import verify

    photos = sorted(make_images(n, HERE / "cache" / "embed_images").glob("*.jpg"))[:n]
    start = time.perf_counter()
    found = {str(p): verify.Keypoints.of(images.open_image(p)) for p in photos}
    per_image = (time.perf_counter() - start) / len(found)
    names = list(found)
    pairs = [(names[i], names[(i * 7 + 3) % len(names)]) for i in range(len(names))]
    start = time.perf_counter()
    verify.pair_inliers(pairs, found)
    per_pair = (time.perf_counter() - start) / len(pairs)
    start = time.perf_counter()
    verify.pair_alignment(pairs, found)
    return per_image, per_pair, (time.perf_counter() - start) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("quality", "cost"))
    parser.add_argument("--catalog", default=str(HERE.parent / "data" / "sample"))
    parser.add_argument("--sources", type=int, default=300)
    parser.add_argument("--variants", type=int, default=2, help="copies per source (05's default: 2; kinds in turn)")
    parser.add_argument("--n-images", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.part == "quality":
            quality(Path(args.catalog), args.sources, args.variants, Path(tmp))
        else:
            cost(args.n_images, Path(tmp))


if __name__ == "__main__":
    main()
