"""Notebook 05's work: build the benchmarks for a run, measure them with the run's
embedding options (``EmbeddingOptions``), and write ``metrics.json`` (the step's record).

The metrics are in ``helpers.metrics``, the near-duplicate generator in ``helpers.edits``,
the benchmarks themselves in ``helpers.benchmarks``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import diffusion, images, runfolder
from .benchmarks import expand_all, fashion_mnist_benchmark, labels_benchmark, near_duplicate_benchmark
from .edits import make_near_duplicates, pick_sources
from .index import check_counts
from .options import EmbeddingOptions

EMBEDDING_SHOWN = ("model_handle", "resize", "pooling", "focus", "hog_weight", "precision", "postprocess", "adapt")
BENCHMARKS = ("near-duplicates", "fashion-mnist", "labels")


def check_benchmarks(benchmark) -> list[str]:
    """05's ``benchmark`` parameter (one name or a list) as a checked list."""
    names = [benchmark] if isinstance(benchmark, str) else list(benchmark or [])
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"benchmark={benchmark!r}; choose from {BENCHMARKS} (one name or a list)")
    return names


def unavailable(benchmarks: list[str], data_dir=None) -> dict[str, str]:
    """The requested benchmarks whose data is missing here, each with the reason and the one
    command that enables it: 05 runs the others and says so."""
    from . import fashion_mnist

    reasons = {}
    if "fashion-mnist" in benchmarks:
        reason = fashion_mnist.missing(data_dir or fashion_mnist.DEFAULT_DIR)
        if reason:
            reasons["fashion-mnist"] = reason
    return reasons


def embedding_options(run_dir: str | Path, **overrides) -> EmbeddingOptions:
    """The options 05 measures: the run's store's (01's defaults in a folder without one),
    with every non-None override applied."""
    recorded = runfolder.record(run_dir, "embed").get("options")
    return EmbeddingOptions.of(recorded, **overrides)


def searched_with(options: EmbeddingOptions, query_expansion: int, rerank: str) -> dict:
    """What a benchmark measured: the embedding options ("auto" pooling resolved), then the search's."""
    return {**options.as_dict(), "pooling": options.resolved_pooling, "query_expansion": query_expansion,
            "rerank": rerank}


def split_sources(embeddings: np.ndarray, n_sources: int, max_similarity: float = 0.9,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sources, distractors): at most ``n_sources`` rows that do not look alike, and the
    remaining rows that look like none of them (usable as distractors)."""
    chosen = pick_sources(embeddings, max_similarity, seed=seed)
    sources = chosen[np.sort(np.random.default_rng(seed).permutation(len(chosen))[:n_sources])]
    rest = np.setdiff1d(chosen, sources)
    if len(rest):
        closest = np.max(np.asarray(embeddings[rest]) @ np.asarray(embeddings[sources]).T, axis=1)
        rest = rest[closest < max_similarity]
    return sources, rest


def run_near_duplicates(run_dir: str | Path, k: int = 20, n_sources: int = 300,
                        variants_per_source: int = 2, backgrounds=None, query_expansion: int = 0,
                        rerank: str = "none", seed: int = 0, progress: bool = True, **options) -> dict:
    """Build a near-duplicate benchmark from the run's own catalog and measure it.

    Sources are images of the run that do not already look alike; the other catalog
    images that look like none of them stay in as distractors. The benchmark folder
    (``run_dir/benchmark_near_duplicates``) is embedded with the run's embedding options (or
    ``options`` overrides) in its own run folder, incrementally on the next call.
    """
    check_counts(k=k, n_sources=n_sources, variants_per_source=variants_per_source)
    diffusion.check_rerank(rerank)
    options = embedding_options(run_dir, **options)
    with runfolder.lock(run_dir, "05_evaluate"):
        return _near_duplicates_in(run_dir, options, k, n_sources, variants_per_source, backgrounds,
                                   query_expansion, rerank, seed, progress)


def _near_duplicates_in(run_dir, options: EmbeddingOptions, k, n_sources, variants_per_source, backgrounds,
                        query_expansion, rerank, seed, progress) -> dict:
    from . import embed, store

    embeddings, items, meta = store.load_store(run_dir)
    folder = Path(run_dir) / runfolder.NEAR_DUPLICATE_BENCHMARK
    sources, distractors = split_sources(embeddings, n_sources, seed=seed)
    paths = items["path"].tolist()
    make_near_duplicates(meta["image_dir"], [paths[i] for i in sources], folder,
                         variants_per_source=variants_per_source, backgrounds=backgrounds,
                         distractors=[paths[i] for i in distractors], seed=seed)
    bench_run = folder / runfolder.BENCHMARK_RUN
    embed.embed_folder(folder, bench_run, options, catalog=folder / runfolder.CATALOG, progress=progress)
    vectors, bench_items, bench_meta = store.load_store(bench_run)
    labels = pd.read_csv(folder / runfolder.BENCHMARK_LABELS)
    if query_expansion:
        vectors = expand_all(vectors, query_expansion)
    result = near_duplicate_benchmark(vectors, bench_items, labels, k, rerank=rerank)
    result.update(folder=folder, items=bench_items, labels=labels,
                  options=searched_with(options, query_expansion, rerank),
                  images_per_second=bench_meta.get("images_per_second"),
                  n_sources=len(sources), n_distractors=len(distractors))
    return result


def fashion_mnist_embedder(options: EmbeddingOptions, batch_size: int = 64, progress: bool = True):
    """``embed(pictures)`` for 28x28 grey pictures with the given embedding options (the
    model is loaded on the first call: a cached run needs none)."""
    from . import embed

    state = {}

    def run(pictures: np.ndarray) -> np.ndarray:
        if "model" not in state:
            state["model"] = options.embedder()
        rgb = np.repeat(np.asarray(pictures)[..., None], 3, axis=-1)
        return embed.embed_pixels(rgb, options, model=state["model"], batch_size=batch_size, progress=progress)

    return run


def run_fashion_mnist(run_dir: str | Path, k: int = 20, n_queries: int = 1000, n_gallery: int | None = None,
                      data_dir=None, query_expansion: int = 0, rerank: str = "none", seed: int = 0,
                      progress: bool = True, **options) -> dict:
    """The Fashion-MNIST protocol with the run's embedding options (vectors cached per option
    set under the model cache, so repeated runs do not embed again)."""
    check_counts(k=k, n_queries=n_queries)
    diffusion.check_rerank(rerank)
    from .models import cache_dir

    options = embedding_options(run_dir, **options)
    key = options.vector_key()  # the same vectors for the same pictures: the cache can serve them
    if data_dir is not None:  # another copy of the data set gets its own cache
        import hashlib

        key += "-" + hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
    base = fashion_mnist_embedder(options, progress=progress)
    result = fashion_mnist_benchmark(base, k=k, n_queries=n_queries, n_gallery=n_gallery, data_dir=data_dir,
                                     seed=seed, cache_dir=cache_dir() / "benchmarks" / "fashion-mnist",
                                     cache_key=key, postprocess=options.postprocess,
                                     query_expansion=query_expansion, rerank=rerank, learn=_adaptation(options, n_gallery, data_dir))
    result["options"] = searched_with(options, query_expansion, rerank)
    return result


def _adaptation(options: EmbeddingOptions, n_gallery: int | None, data_dir=None):
    """The run's ``adapt`` learned on the Fashion-MNIST gallery as 01 learns it on a catalog."""
    if options.adapt == "none":
        return None
    from . import adaptation, fashion_mnist

    gallery = fashion_mnist.load("train", **({} if data_dir is None else {"data_dir": data_dir}))[0]
    return adaptation.pair_learner(gallery[:min(adaptation.ADAPT_SOURCES, n_gallery or len(gallery))], options)


def run_labels(run_dir: str | Path, labels: str | Path, k: int = 20, n_queries: int = 1000,
               query_expansion: int = 0, rerank: str = "none", seed: int = 0) -> dict:
    """The "labels" benchmark on the run's own vectors (as 03 sees them)."""
    check_counts(k=k, n_queries=n_queries)
    diffusion.check_rerank(rerank)
    from . import store

    embeddings, items, _ = store.load_store(run_dir)
    if query_expansion:
        embeddings = expand_all(embeddings, query_expansion)
    result = labels_benchmark(embeddings, items, labels, k=k, n_queries=n_queries, seed=seed, rerank=rerank)
    result["options"] = searched_with(embedding_options(run_dir), query_expansion, rerank)
    return result


def headline(name: str, result: dict, k: int) -> dict:
    """The flat figures of one benchmark for metrics.json and the report's front page."""
    summary = result["summary"]
    overall = summary.loc["all"]
    options = result.get("options") or {}
    shown = EMBEDDING_SHOWN + ("query_expansion", "rerank")  # the embedding, then the search
    figures = {f"{name}: evaluated with": ", ".join(f"{n}={options[n]}" for n in shown if n in options),
               f"{name}: queries": int(overall["queries"])}
    if name == "near-duplicates":
        for column in dict.fromkeys(("recall@1", "recall@5", f"recall@{k}")):
            if column in overall:
                figures[f"{name}: {column}"] = float(overall[column])
        for transform, row in summary.drop(index="all").iterrows():
            figures[f"{name}: recall@1 ({transform})"] = float(row["recall@1"])
    else:
        for column in (f"precision@{k}", f"mAP@{k}", "recall@1"):
            figures[f"{name}: {column}"] = float(overall[column])
    return figures


def write_metrics(run_dir: str | Path, results: dict, k: int, parameters: dict | None = None,
                  skipped: dict | None = None) -> dict:
    """Write ``run_dir/metrics.json``: flat headline figures plus every summary table, and the
    benchmarks ``skipped`` for want of their data (name: why and how to enable it)."""
    metrics = {f"{name}: skipped": reason for name, reason in (skipped or {}).items()}
    for name, result in results.items():
        metrics.update(headline(name, result, k))
    metrics["details"] = {name: {"summary": result["summary"].reset_index().to_dict(orient="records"),
                                 "options": result.get("options")} for name, result in results.items()}
    metrics["parameters"] = parameters or {}
    metrics["computed_from"] = {"store_key": runfolder.store_key(run_dir), "parameters": parameters or {},
                                "options": {name: result.get("options") for name, result in results.items()}}
    with runfolder.lock(run_dir, "05_evaluate"):
        staging = runfolder.Staging(run_dir, "evaluate")
        staging.commit(metrics)
    return metrics


def worst_query_grids(result: dict, n: int = 6, k: int = 8, thumb_size: int = 96) -> list:
    """Grids of the queries that did worst (lowest recall@1, then precision, then top-1
    similarity): the query, then its first k results with green/red borders."""
    from .plots import grid_image

    per_query = result["per_query"].reset_index(drop=True)
    neighbors, similarity = result["neighbors"], result["similarity"]
    sort_by = [c for c in ("recall@1", f"precision@{neighbors.shape[1]}") if c in per_query.columns]
    worst = per_query.sort_values(sort_by, kind="stable").index[:n]
    if "query_images" in result:  # Fashion-MNIST: pictures are arrays, truth is the class
        def picture(array):
            return Image.fromarray(array).convert("RGB")

        grids = []
        for q in worst:
            truth = per_query.at[q, "label"]
            cells = [(picture(result["gallery_images"][g]), str(result["gallery_labels"][g]), float(s),
                      result["gallery_labels"][g] == truth)
                     for g, s in zip(neighbors[q, :k], similarity[q, :k]) if g >= 0]
            grids.append(grid_image((picture(result["query_images"][q]), str(truth)), cells,
                                    columns=k + 1, thumb_size=thumb_size))
        return grids
    folder, paths = Path(result["folder"]), result["items"]["path"].to_numpy()
    groups = dict(zip(result["labels"]["path"], result["labels"]["group"]))

    def load(path):
        with Image.open(folder / path) as im:
            im.load()
            return images.to_rgb(im).copy()

    grids = []
    for q in worst:
        query_path = per_query.at[q, "path"]
        cells = [(load(paths[g]), Path(paths[g]).stem, float(s), groups.get(paths[g]) == groups.get(query_path))
                 for g, s in zip(neighbors[q, :k], similarity[q, :k]) if g >= 0]
        grids.append(grid_image((load(query_path), Path(query_path).stem), cells, columns=k + 1,
                                thumb_size=thumb_size))
    return grids
