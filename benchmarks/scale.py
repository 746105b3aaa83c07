"""A million items: compressed and graph indexes vs exact search, and Ray vs local embedding.

    .venv/bin/python benchmarks/scale.py index [--n 1000000] [--configs ivfpq-160 hnsw-16 ...]
    .venv/bin/python benchmarks/scale.py ray [--n-images 1500]

``index``: N synthetic clustered unit vectors of dimension 1280 are generated in chunks
into benchmarks/cache/scale/ (float32, 5.1 GB at 1M; written once, reused). Their
spectrum falls like real embeddings' (a power law over a random orthonormal basis, a shared
mean direction, clusters of ~50 items), so neighbours sit at cosine ~0.9 and random pairs at
~0.5. Exact top-20 of 1,000 sampled items is computed in one pass over the file. Every
index configuration is then built and queried in its own process, so its peak RSS is its
own: build seconds, index bytes (saved file), peak RSS (total, and anonymous memory only:
the rest is page cache of the memory-mapped vector file, which the kernel can drop),
queries/s (1,000 queries in one batched call, all cores) and recall@20.

``ray``: embed_folder throughput with engine="ray" (2 local workers) relative to the local
engine, on the same generated photos, in one run (see ``ray_throughput``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "scale"
sys.path.insert(0, str(HERE))
from embed_throughput import machine  # noqa: E402

DIM, K, N_QUERIES = 1280, 20, 1000

# name -> (backend, build settings, query settings to measure on that build)
CONFIGS = {
    "exact": ("exact", {}, [{}]),
    "annoy-pca64": ("annoy", {"n_trees": 10, "pca_dims": 64, "candidates": 80},
                    [{"search_k": 3000}, {"search_k": 20000}, {"search_k": 60000}]),
    "ivfpq-160": ("faiss-ivfpq", {"pq_m": 160, "nprobe": 32, "candidates": 80},
                  [{"nprobe": 16}, {"nprobe": 32}, {"nprobe": 64}, {"nprobe": 128},
                   {"nprobe": 32, "candidates": 0}]),
    "ivfpq-64": ("faiss-ivfpq", {"pq_m": 64, "nprobe": 32, "candidates": 80}, [{"nprobe": 32}, {"nprobe": 128}]),
    "ivfpq-160-more": ("faiss-ivfpq", {"pq_m": 160, "nprobe": 64},
                       [{"nprobe": 64, "candidates": 200}, {"nprobe": 128, "candidates": 200},
                        {"nprobe": 128, "candidates": 400}]),
    "ivfpq-320": ("faiss-ivfpq", {"pq_m": 320, "nprobe": 64},
                  [{"nprobe": 64, "candidates": 80}, {"nprobe": 64, "candidates": 200},
                   {"nprobe": 128, "candidates": 200}]),
    "hnsw-16": ("faiss-hnsw", {"M": 16, "ef": 64, "ef_construction": 40}, [{"ef": 32}, {"ef": 64}, {"ef": 128}]),
    "voyager-e4m3": ("voyager", {"M": 16, "ef": 64, "ef_construction": 64, "storage": "e4m3"},
                     [{"ef": 32}, {"ef": 64}, {"ef": 128}]),
}


# --- data ---------------------------------------------------------------------------------
def generate(n: int, seed: int = 0, chunk: int = 50_000) -> Path:
    """N clustered unit vectors, written chunk by chunk (never all in memory)."""
    from helpers.store import EmbeddingWriter

    folder = CACHE / f"n{n}"
    path = folder / "embeddings.npy"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    spectrum = (np.arange(1, DIM + 1) ** -0.8).astype(np.float32)
    mixing = (spectrum[:, None] * basis.T).astype(np.float32)  # rows: scaled basis vectors
    mean = np.abs(rng.normal(size=DIM)).astype(np.float32)
    mean *= 2.0 / np.linalg.norm(mean)
    n_clusters = max(1, n // 50)
    centres = mean + 1.6 * rng.normal(size=(n_clusters, DIM)).astype(np.float32) @ mixing
    with EmbeddingWriter(folder, DIM) as writer:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            x = centres[rng.integers(0, n_clusters, m)]
            x = x + 0.9 * rng.normal(size=(m, DIM)).astype(np.float32) @ mixing
            x += 0.01 * rng.normal(size=(m, DIM)).astype(np.float32)
            writer.append(x / np.linalg.norm(x, axis=1, keepdims=True))
            print(f"\rgenerated {start + m:,}/{n:,}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return path


def ground_truth(path: Path, n_queries: int, seed: int = 1, block: int = 50_000):
    """(query rows, exact top-k of each, seconds): one pass over the file, k+1 then drop self."""
    out = path.parent / f"truth_{n_queries}.npz"
    if out.exists():
        saved = np.load(out)
        return saved["rows"], saved["truth"], float(saved["seconds"])
    vectors = np.load(path, mmap_mode="r")
    n = len(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n_queries, n), replace=False))
    queries = np.asarray(vectors[rows])
    best_idx = np.full((len(rows), 0), -1, np.int64)
    best_sim = np.full((len(rows), 0), -np.inf, np.float32)
    start = time.perf_counter()
    for lo in range(0, n, block):
        scores = queries @ np.asarray(vectors[lo:lo + block]).T
        ids = np.arange(lo, lo + scores.shape[1])
        scores[ids[None, :] == rows[:, None]] = -np.inf  # not the item itself
        sims = np.concatenate([best_sim, scores], axis=1)
        idx = np.concatenate([best_idx, np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :K]
        best_sim, best_idx = np.take_along_axis(sims, top, 1), np.take_along_axis(idx, top, 1)
    seconds = time.perf_counter() - start
    np.savez(out, rows=rows, truth=best_idx, seconds=seconds)
    return rows, best_idx, seconds


# --- one configuration, in its own process --------------------------------------------------
class PeakRss:
    """Peak resident memory of this process, total and anonymous (sampled every 20 ms)."""

    def __init__(self):
        self.total = self.anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self):
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        anon, total = (int(fields[key].split()[0]) * 1024 for key in ("RssAnon", "VmRSS"))
        self.anon, self.total = max(self.anon, anon), max(self.total, total)

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.02)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.sample()


def run_config(name: str, n: int) -> list[dict]:
    from helpers.index import FaissIndex, build_index, recall_at_k

    backend, settings, query_settings = CONFIGS[name]
    path = generate(n)
    rows, truth, _ = ground_truth(path, N_QUERIES)
    rss = PeakRss()
    vectors = np.load(path, mmap_mode="r")
    start = time.perf_counter()
    if backend == "faiss-ivfpq":  # trained once, filled as 4 shards, merged: the multi-machine path
        index = build_sharded_ivfpq(vectors, settings)
    else:
        index = build_index(vectors, backend, **settings)
    build_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        if backend == "exact":
            size = vectors.nbytes
        else:
            index.save(Path(tmp) / "index")
            size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    queries = np.asarray(vectors[rows])
    results = []
    for query in query_settings:
        if "nprobe" in query:
            index.set(nprobe=query["nprobe"])
        if "candidates" in query:
            index.candidates = query["candidates"]
        if "ef" in query:
            index.set(ef=query["ef"]) if isinstance(index, FaissIndex) else setattr(index, "ef", query["ef"])
        if "search_k" in query:
            index.search_k = query["search_k"]
        index.search(queries[:10], K, exclude=rows[:10])  # warm-up (lazy loads)
        start = time.perf_counter()
        found, _ = index.search(queries, K, exclude=rows)
        seconds = time.perf_counter() - start
        rss.sample()
        row = {"config": name, "backend": backend, **settings, **query, "n": n,
               "build_seconds": round(build_seconds, 1), "index_bytes": size,
               "fraction_of_float32": round(size / (n * DIM * 4), 4),
               "peak_rss_bytes": rss.total, "peak_anon_bytes": rss.anon,
               "queries_per_second": round(len(rows) / seconds, 1),
               "recall_at_20": round(recall_at_k(found, truth), 4)}
        if isinstance(index, FaissIndex):
            row["candidates_reranked"] = index.rerank_count(K)
        results.append(row)
    rss.stop()
    return results


def build_sharded_ivfpq(vectors, settings: dict, shards: int = 4, seed: int = 42):
    """Train an empty IVF-PQ index on a sample, fill shards from it separately, merge."""
    from helpers.index import FaissIndex, default_nlist

    n = len(vectors)
    nlist = settings.get("nlist") or default_nlist(n)
    empty = FaissIndex.empty(DIM, "faiss-ivfpq", nlist=nlist, pq_m=settings["pq_m"], nprobe=settings["nprobe"])
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False))
    empty.train(np.asarray(vectors[sample]), seed)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        empty.save(Path(tmp) / "trained.faiss")
        bounds = np.linspace(0, n, shards + 1).astype(int)
        paths = []
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            shard = FaissIndex.load(Path(tmp) / "trained.faiss")  # what each machine would do
            for start in range(lo, hi, 50_000):
                shard.add(np.asarray(vectors[start:min(start + 50_000, hi)]), start)
            paths.append(Path(tmp) / f"shard{i}.faiss")
            shard.save(paths[-1])
            del shard
        index = FaissIndex.merge(paths)
    index.vectors, index.candidates = vectors, settings.get("candidates")
    index.set(nprobe=settings["nprobe"])
    return index


# --- Ray vs local embedding -----------------------------------------------------------------
def ray_throughput(n_images: int = 1500, repeats: int = 3) -> dict:
    """Images/s of the local engine vs engine="ray" with 2 workers, on this machine.

    Steady state: each engine's stream of results (``engine.local_batches`` and
    ``distributed.ray_batches``, what embed_folder consumes) is timed from its first result
    to its last, so the one-off start (model load and TFLite conversion in every Ray actor,
    ``ray.init``) is left out -- it is reported apart, from whole embed_folder runs.
    Engines alternate; the median of ``repeats`` counts.
    """
    from embed_throughput import make_images

    from helpers import distributed
    from helpers.embed import embed_folder
    from helpers.engine import local_batches
    from helpers.options import EmbeddingOptions

    root = make_images(n_images, HERE / "cache" / "embed_images").resolve()
    paths = [f.name for f in sorted(root.glob("*.jpg"))[:n_images]]
    options = EmbeddingOptions(max_pixels=10 ** 8)
    model = options.embedder()

    def steady(results) -> float:
        start, done = None, 0
        for result in results:
            if start is None:
                start = time.perf_counter()
            else:
                done += result.files
        return done / (time.perf_counter() - start)

    rates: dict = {"local": [], "ray": []}
    for _ in range(repeats):
        rates["local"].append(steady(local_batches(root, paths, model, options, 32, 2, set())))
        rates["ray"].append(steady(distributed.ray_batches(root, paths, options, "auto", 32, 2)))
        print({k: round(v[-1], 1) for k, v in rates.items()}, file=sys.stderr, flush=True)
    whole = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for p in paths:
            (folder / p).symlink_to(root / p)
        for engine in ("local", "ray"):
            start = time.perf_counter()
            embed_folder(folder, Path(tmp) / f"run_{engine}", engine=engine, links="all",
                         workers=2 if engine == "ray" else None, progress=False)
            whole[engine] = round(time.perf_counter() - start, 1)
    rate = {engine: float(np.median(r)) for engine, r in rates.items()}
    return {"n_images": n_images, "steady_images_per_second": {e: [round(x, 1) for x in r] for e, r in rates.items()},
            "median_images_per_second": {e: round(r, 1) for e, r in rate.items()},
            "ray_over_local": round(rate["ray"] / rate["local"], 3),
            "whole_embed_folder_seconds": whole,
            "fixed_start_seconds": {e: round(whole[e] - n_images / rate[e], 1) for e in whole}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    index = sub.add_parser("index")
    index.add_argument("--n", type=int, default=1_000_000)
    index.add_argument("--configs", nargs="+", default=list(CONFIGS))
    index.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    ray = sub.add_parser("ray")
    ray.add_argument("--n-images", type=int, default=1500)
    args = parser.parse_args()
    if args.what == "ray":
        print(json.dumps({"machine": machine(), **ray_throughput(args.n_images)}, indent=2))
        return
    if args.one:
        for row in run_config(args.one, args.n):
            print("RESULT " + json.dumps(row))
        return
    path = generate(args.n)
    _, _, truth_seconds = ground_truth(path, N_QUERIES)
    print(f"# {machine()}; {args.n:,} x {DIM} float32 = {args.n * DIM * 4 / 1e9:.1f} GB; "
          f"exact top-{K} of {N_QUERIES} queries: {truth_seconds:.1f} s", flush=True)
    results = []
    for name in args.configs:
        done = subprocess.run([sys.executable, __file__, "index", "--n", str(args.n), "--one", name],
                              capture_output=True, text=True)
        lines = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"{name}: failed\n{done.stderr[-2000:]}", flush=True)
        for line in lines:
            results.append(json.loads(line))
            print(line, flush=True)
    (CACHE / f"results_n{args.n}.json").write_text(json.dumps(results, indent=2))
    print("\n| config | query setting | build s | index MB | of float32 | peak RSS GB (anon) | queries/s | recall@20 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        query = " ".join(f"{key}={r[key]}" for key in ("search_k", "nprobe", "ef", "candidates") if key in r)
        if r["backend"] == "faiss-ivfpq" and r.get("candidates_reranked") == 0:
            query += " no re-rank"
        print(f"| {r['config']} | {query} | {r['build_seconds']} | {r['index_bytes'] / 1e6:,.0f} | "
              f"{r['fraction_of_float32']:.3f} | {r['peak_rss_bytes'] / 1e9:.2f} ({r['peak_anon_bytes'] / 1e9:.2f}) | "
              f"{r['queries_per_second']:,.0f} | {r['recall_at_20']:.3f} |")


if __name__ == "__main__":
    main()
