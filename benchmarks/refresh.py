"""Day 2: refresh a 10,000-image catalog after 1% new images vs a full re-run.

    .venv/bin/python benchmarks/refresh.py [--n-images 10000] [--new-fraction 0.01]

Images: the JPEGs of embed_throughput.py (benchmarks/cache/). Day 1 embeds and finds
neighbours for the first 99%; day 2 adds the rest and runs 01 + 03 again on the same run
folder (reusing vectors by sha256 and refreshing neighbour lists), and, for comparison,
from scratch in a new folder. Both day-2 results are checked to be identical.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from embed_throughput import CACHE, machine, make_images
from helpers import runfolder
from helpers.embed import embed_folder
from helpers.neighbors import write_neighbors


def day(image_dir: Path, run_dir: Path, refresh: bool) -> dict:
    start = time.perf_counter()
    embedded = embed_folder(image_dir, run_dir, links="all", progress=False)  # the folders link to the images
    middle = time.perf_counter()
    found = write_neighbors(run_dir, k=20, backend="exact", level="image", refresh=refresh)
    end = time.perf_counter()
    return {"embed_seconds": middle - start, "neighbors_seconds": end - middle, "total_seconds": end - start,
            "embedded_now": embedded["n_embedded_now"], "reused": embedded["n_reused"],
            "neighbors_refreshed": found["refreshed"], "items_searched": found["items_searched"],
            "masters_with_changed_neighbors": found["masters_with_changed_neighbors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=10_000)
    parser.add_argument("--new-fraction", type=float, default=0.01)
    args = parser.parse_args()
    files = sorted(make_images(args.n_images, CACHE / "embed_images").glob("*.jpg"))[: args.n_images]
    n_old = int(len(files) * (1 - args.new_fraction))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        for f in files[:n_old]:
            (images / f.name).symlink_to(f)
        day1 = day(images, tmp / "run", refresh=True)
        for f in files[n_old:]:
            (images / f.name).symlink_to(f)
        refreshed = day(images, tmp / "run", refresh=True)
        scratch = day(images, tmp / "scratch", refresh=False)
        same = (pd.read_parquet(tmp / "run" / runfolder.NEIGHBORS)
                .equals(pd.read_parquet(tmp / "scratch" / runfolder.NEIGHBORS)))
    report = {"machine": machine(), "catalog": len(files), "new_images": len(files) - n_old,
              "day1_full": day1, "day2_refresh": refreshed, "day2_full_rerun": scratch,
              "speedup": scratch["total_seconds"] / refreshed["total_seconds"],
              "identical_neighbors": bool(same)}
    print(json.dumps(report, indent=1, default=lambda x: round(x, 2) if isinstance(x, float) else x))


if __name__ == "__main__":
    main()
