"""What the Fashion-MNIST options cost: ``hog_weight`` at embedding time, ``rerank`` at search time.

    .venv/bin/python benchmarks/option_cost.py [--n-pictures 512] [--n-catalog 20000]

All in one process, interleaved rounds, so the ratios hold on a noisy shared machine:
  (a) the HOG outline (features.hog_vectors) against the model's GeM vectors, per picture,
      on 224 px pictures made from scikit-image's photos;
  (b) diffusion re-ranking (diffusion.rerank, 200-result shortlists) against the exact search
      that finds those shortlists, per query, in a catalog of unit vectors of 1,280 numbers
      (the model's) and of 3,044 (with the outline). Random vectors in clusters stand in for
      a catalog: the cost depends on the sizes, not on what the vectors show.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from PIL import Image

from embed_throughput import machine
from helpers import diffusion, features, models
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


def embedding_cost(n: int, rounds: int = 3) -> dict:
    batch = pictures(n)
    embedder = features.Embedder(models.load_model("efficientnet-lite0"), "gem").warm_up()
    model_s = hog_s = 0.0
    for _ in range(rounds):  # interleaved: a slow spell hits both
        model_s += timed(lambda: [embedder(batch[i:i + 32]) for i in range(0, n, 32)])
        hog_s += timed(lambda: features.hog_vectors(batch))
    return {"part": "embedding", "pictures": n, "model ms/picture": round(1000 * model_s / rounds / n, 3),
            "hog ms/picture": round(1000 * hog_s / rounds / n, 3),
            "hog_weight speed vs off": round(model_s / (model_s + hog_s), 3)}


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
    parser.add_argument("--n-catalog", type=int, default=20000)
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    print(json.dumps(embedding_cost(args.n_pictures)), flush=True)
    for dim in (1280, 1280 + features.HOG_DIM):
        print(json.dumps(rerank_cost(args.n_catalog, dim)), flush=True)


if __name__ == "__main__":
    main()
