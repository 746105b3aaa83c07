"""What the options cost: ``hog_weight`` (the outline) at embedding time, ``rerank`` at search time.

    .venv/bin/python benchmarks/option_cost.py [--n-pictures 512] [--n-images 1000] [--n-catalog 20000]

All in one process, interleaved rounds, so the ratios hold on a noisy shared machine:
  (a) the HOG outline (features.hog_vectors) against the model's GeM vectors, per picture,
      on 224 px pictures made from scikit-image's photos, and the default Embedder (model and
      outline in two threads) against the model alone;
  (b) the whole of 01 (embed.embed_folder) on embed_throughput's JPEGs, with the default
      options against hog_weight=0, each round in a fresh run folder;
  (c) diffusion re-ranking (diffusion.rerank, 200-result shortlists) against the exact search
      that finds those shortlists, per query, in a catalog of unit vectors of 1,280 numbers
      (the model's) and of 2,162 (with the outline). Random vectors in clusters stand in for
      a catalog: the cost depends on the sizes, not on what the vectors show.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from embed_throughput import CACHE, machine, make_images
from helpers import diffusion, embed, features, models
from helpers.index import ExactIndex


def pictures(n: int) -> np.ndarray:
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        im = Image.fromarray(photos[i % len(photos)])
        w, h = im.size
        side = int(min(w, h) * rng.uniform(0.6, 1.0))
        left, top = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        out.append(np.asarray(im.resize((224, 224), Image.BILINEAR, box=(left, top, left + side, top + side))))
    return np.stack(out)


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def embedding_cost(n: int, rounds: int = 6) -> dict:
    batch = pictures(n)
    model = models.load_model("efficientnet-lite0")
    runs = {"model": features.Embedder(model, "gem", hog_weight=0).warm_up(), "hog": features.hog_vectors,
            "default": features.Embedder(model, "gem").warm_up()}
    seconds = {name: [] for name in runs}
    for i in range(rounds):  # interleaved, in turn first, so a slow spell hits all three
        names = list(runs)[i % 3:] + list(runs)[:i % 3]
        for name in names:
            seconds[name].append(timed(lambda: [runs[name](batch[j:j + 32]) for j in range(0, n, 32)]))
    model_s, hog_s, default_s = (float(np.median(seconds[name])) for name in runs)
    return {"part": "embedding", "pictures": n, "rounds": rounds, "model ms/picture": round(1000 * model_s / n, 3),
            "hog ms/picture": round(1000 * hog_s / n, 3),
            "one after the other: speed vs off": round(model_s / (model_s + hog_s), 3),
            "default Embedder (two threads): speed vs off": round(model_s / default_s, 3)}


def pipeline_cost(n: int, rounds: int = 3) -> dict:
    folder = make_images(n, CACHE / "embed_images")
    rates = {"default": [], "hog_weight=0": []}
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for f in sorted(folder.glob("*.jpg"))[:n]:  # exactly n images in their own folder
            (images / f.name).symlink_to(f)
        for i in range(rounds):
            for name, options in (("default", {}), ("hog_weight=0", {"hog_weight": 0.0})):
                meta = embed.embed_folder(images, Path(tmp) / f"run_{name}_{i}", links="all", progress=False, **options)
                rates[name].append(meta["images_per_second"])
    default, off = (float(np.median(rates[name])) for name in ("default", "hog_weight=0"))
    return {"part": "01 pipeline", "images": n, "rounds": rounds, "images/s default": round(default, 1),
            "images/s hog_weight=0": round(off, 1), "default speed vs off": round(default / off, 3)}


def rerank_cost(n_catalog: int, dim: int, n_queries: int = 500) -> dict:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, dim)).astype(np.float32)
    catalog = centres[rng.integers(0, 200, n_catalog)] + 0.8 * rng.normal(size=(n_catalog, dim)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    queries = catalog[:n_queries]
    index = ExactIndex(catalog)
    found = index.search(queries, diffusion.SHORTLIST)
    search_s = rerank_s = 0.0
    for _ in range(2):  # interleaved, as above
        search_s += timed(lambda: index.search(queries, diffusion.SHORTLIST))
        rerank_s += timed(lambda: diffusion.rerank(catalog, *found, 20))
    return {"part": "rerank", "catalog": n_catalog, "dim": dim, "queries": n_queries,
            "search ms/query": round(1000 * search_s / 2 / n_queries, 3),
            "diffusion ms/query": round(1000 * rerank_s / 2 / n_queries, 3),
            "diffusion / search": round(rerank_s / search_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-pictures", type=int, default=512)
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--n-catalog", type=int, default=20000)
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    print(json.dumps(embedding_cost(args.n_pictures)), flush=True)
    print(json.dumps(pipeline_cost(args.n_images)), flush=True)
    for dim in (1280, 1280 + features.HOG_DIM):
        print(json.dumps(rerank_cost(args.n_catalog, dim)), flush=True)


if __name__ == "__main__":
    main()
