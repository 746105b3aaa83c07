"""Embed a folder of product images into a run folder's embeddings store.

``embed_folder`` plans (list the files, match the catalog, decide what earlier vectors can
be reused), computes the rest (the "local" engine, ``helpers.engine``: a thread per core, each
decoding and embedding whole batches; or "ray", ``helpers.distributed``; both read files with
``helpers.decode``), then assembles
the store in staging and commits it with its record (``runfolder``). New vectors are
checkpointed in chunks, so an interrupted run resumes where it stopped; a file that cannot
be used is listed in ``skipped.csv`` with the reason and never stops the run.
"""
from __future__ import annotations

import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__, adaptation, catalog as catalog_mod, images, runfolder, store, whitening
from .decode import hash_files
from .engine import local_batches, local_model
from .features import Embedder
from .options import EmbeddingOptions

ENGINES = ("local", "ray")


class NothingEmbeddedError(ValueError):
    """The run ended with no image embedded: nothing downstream can work."""


@dataclass
class Plan:
    """What 01 will do: which files, which product each is, what is already embedded."""

    root: Path
    paths: list[str]                 # images with a productId, in store order
    match: catalog_mod.CatalogMatch
    reasons: dict[str, str]          # path -> why it is not embedded
    n_files: int
    other_files: dict
    previous: dict | None            # the record of the store the folder held, if any
    reused_store: bool               # its vectors had the same vector key
    old_paths: set = field(default_factory=set)
    pool: store.VectorPool = field(default_factory=store.VectorPool)
    sha: dict = field(default_factory=dict)
    to_compute: list[str] = field(default_factory=list)


def plan(root: Path, run_dir: Path, options: EmbeddingOptions, work: store.PartialWork, catalog,
         on_missing: str, recursive: bool, workers: int, links: str = "inside") -> Plan:
    """List and match the files (catalog problems fail here, before any decoding) and find
    the vectors that need no model: the previous store's and the checkpoints', by sha256."""
    others, refused = Counter(), {}
    # a run folder inside image_dir: its thumbnails, grids and tables are not the catalog's
    listed = images.list_images(root, recursive, others=others, exclude=run_dir, links=links, refused=refused)
    bad_names = [p for p in listed if not _is_utf8(p)]  # Linux allows any bytes; tables do not
    listed = [p for p in listed if _is_utf8(p)]
    frame = catalog_mod.read_catalog(catalog) if catalog else None
    match = catalog_mod.match_catalog(listed, frame, on_missing, source=str(catalog))
    reasons = {p: "no productId in the catalog (on_missing='skip')" for p in listed if p not in match.product_id}
    reasons.update(refused)
    for p in bad_names:
        shown = p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        reasons[shown] = "file name is not valid UTF-8: rename the file to include it"
    previous = runfolder.record(run_dir, "embed") or None
    reused = bool(previous) and previous.get("computed_from", {}).get("vector_key") == options.vector_key()
    result = Plan(root, [p for p in listed if p in match.product_id], match, reasons,
                  len(listed) + len(bad_names) + len(refused), dict(sorted(others.items())), previous, reused)
    if previous:
        result.old_paths = set(store.load_items(run_dir)["path"])
    if reused:  # never mix vectors of other options: only a store of the same vector key
        vectors, items, _ = store.load_store(run_dir, postprocessed=False)
        result.pool.add(vectors, items)
    work.start()
    for vectors, table in work.chunks():
        result.pool.add(vectors, table)
    # which files need the model: hash everything only when there is something to reuse
    result.sha = dict(zip(result.paths, hash_files(root, result.paths, workers))) if len(result.pool) else {}
    result.to_compute = [p for p in result.paths if result.sha.get(p) not in result.pool]
    return result


@dataclass
class Computed:
    model: Embedder | None = None
    runtime: str | None = None
    seconds: float = 0.0
    inference: float | None = 0.0


def compute(job: Plan, options: EmbeddingOptions, work: store.PartialWork, engine: str, runtime: str,
            batch_size: int, workers: int, checkpoint_every: int, progress: bool) -> Computed:
    """Embed ``job.to_compute`` with the engine, checkpointing every ``checkpoint_every``."""
    done = Computed()
    if not job.to_compute:
        return done
    if engine == "local":
        done.model = local_model(options, runtime, workers)
        done.model.warm_up()  # the TFLite conversion is model loading, not embedding time
        results = local_batches(job.root, job.to_compute, done.model, options, batch_size, workers, job.pool)
    else:
        from . import distributed

        done.model = options.embedder(runtime)
        results = distributed.ray_batches(job.root, job.to_compute, options, runtime, batch_size, workers)
        done.inference = None  # spent in the workers
    started, bar = time.perf_counter(), _progress(len(job.to_compute), progress)
    vectors, rows = [], []
    for result in results:
        job.reasons.update(result.failed)
        job.sha.update(result.duplicates)
        job.sha.update((row[0], row[1]) for row in result.rows)
        if result.rows:
            vectors.append(np.asarray(result.vectors, dtype=np.float32))
            rows.extend(result.rows)
        done.runtime = result.runtime or done.runtime
        if done.inference is not None:
            done.inference += result.seconds
        bar.update(result.files)
        if len(rows) >= checkpoint_every:
            _checkpoint(work, job.pool, vectors, rows)
    _checkpoint(work, job.pool, vectors, rows)
    bar.close()
    done.seconds = time.perf_counter() - started
    return done


def _checkpoint(work: store.PartialWork, pool: store.VectorPool, vectors: list, rows: list) -> None:
    if rows:
        block, table = np.concatenate(vectors), pd.DataFrame(rows, columns=store.CHUNK_COLUMNS)
        work.write_chunk(block, table)
        pool.add(block, table)
    vectors.clear()
    rows.clear()


def assemble(job: Plan, staging: runfolder.Staging, dim: int) -> pd.DataFrame:
    """Write the store's vectors (reused and new, in path order) and tables into staging."""
    rows, block = [], []
    with store.EmbeddingWriter(staging.folder, dim) as writer:
        for p in job.paths:
            if p in job.reasons:
                continue
            vector, w, h = job.pool.get(job.sha[p])
            block.append(vector)
            rows.append((len(rows), p, job.match.image_name[p], job.match.product_id[p], job.sha[p], w, h))
            if len(block) >= 4096:
                writer.append(np.stack(block))
                block.clear()
        if block:
            writer.append(np.stack(block))
    items = pd.DataFrame(rows, columns=store.ITEM_COLUMNS)
    runfolder.write_table(staging.path(runfolder.ITEMS), items)
    skipped = pd.DataFrame(sorted(job.reasons.items()), columns=["path", "reason"])
    runfolder.write_table(staging.path(runfolder.SKIPPED), skipped)
    return items


def embed_folder(image_dir: str | Path, run_dir: str | Path, options: EmbeddingOptions | None = None, *,
                 catalog: str | Path | None = None, on_missing: str = "error", recursive: bool = True,
                 links: str = "inside", batch_size: int = 32, runtime: str = "auto", engine: str = "local", workers: int | None = None,
                 checkpoint_every: int = 1024, progress: bool = True, backgrounds: str | Path | None = None,
                 **option_values) -> dict:
    """Embed every image under ``image_dir`` into ``run_dir``; return the store's record.

    ``options``: the ``EmbeddingOptions`` (or give its fields, e.g. ``resize="pad"``).
    Incremental and resumable: images whose bytes (sha256) are in the folder's store or in
    the checkpoints of an interrupted run are not embedded again, when the options give the
    same vectors (``EmbeddingOptions.vector_key``); removed images are dropped. The catalog
    is matched before any image is decoded. ``engine``: "local", or "ray" (a Ray actor pool
    here or at ``RAY_ADDRESS``; every worker must see ``image_dir`` at the same path).
    ``workers``: decode threads (local) or model workers (ray). ``runtime``: see
    ``models.load_model``. ``links``: "inside" embeds a linked file only when it is under
    ``image_dir`` (others are listed in skipped.csv); "all" follows every file link.
    ``backgrounds``: the photos for the background swaps of ``adapt`` (default: Debian's
    wallpapers when installed). One writer at a time: a second run on the folder is refused.
    """
    options = EmbeddingOptions.of(options.as_dict() if options else None, **option_values)
    _check_run_settings(engine, batch_size)
    root, run_dir = Path(image_dir), Path(run_dir)
    workers = workers or max(1, os.cpu_count() or 1)
    with runfolder.lock(run_dir, "01_embed"):
        started = time.perf_counter()
        work = store.PartialWork(run_dir, options.vector_key())
        job = plan(root, run_dir, options, work, catalog, on_missing, recursive, workers, links)
        done = compute(job, options, work, engine, runtime, batch_size, workers, checkpoint_every, progress)
        if done.model:
            dim = done.model.dim
        elif job.reused_store:
            dim = job.previous["dim"]
        else:  # nothing to embed now, nothing before: the model still says how long vectors are
            dim = options.embedder(runtime).dim
        staging = runfolder.Staging(run_dir, "embed")
        items = assemble(job, staging, dim)
        meta = _record(job, options, done, items, dim, engine, runtime, catalog, on_missing, recursive,
                       batch_size, time.perf_counter() - started)
        meta["adaptation"] = _learn(run_dir, staging, items, root, options, backgrounds)
        if meta["adaptation"]:
            meta["seconds"]["adaptation"] = meta["adaptation"]["seconds"]
            meta["seconds"]["total"] = round(time.perf_counter() - started, 3)
        staging.commit(meta, remove=_not_learned(options))
        work.discard()
    if items.empty:  # the store and skipped.csv are written: the reasons can be read there
        raise NothingEmbeddedError(_why_nothing(root, run_dir, meta, store.load_skipped(run_dir)))
    return meta


def _learn(run_dir: Path, staging: runfolder.Staging, items: pd.DataFrame, root: Path,
           options: EmbeddingOptions, backgrounds) -> dict | None:
    """What is learned on the finished catalog (``options.learned``), staged to be committed
    with it: the adaptation's record, or None."""
    if not options.learned:
        return None
    raw = np.load(staging.path(runfolder.EMBEDDINGS), mmap_mode="r")
    if options.adapt != "none":
        return adaptation.fit(run_dir, staging, np.asarray(raw), items, root, options, backgrounds)
    learned = whitening.learn(raw) if len(raw) >= 2 else whitening.Whitening.identity(raw.shape[1])
    learned.save(staging.path(runfolder.WHITENING))
    return None


def describe_adaptation(meta: dict) -> str:
    """01's summary line for what ``adapt`` learned and what it cost."""
    found = meta.get("adaptation")
    if not found:
        return "none"
    reused = ", copies reused" if found["copies_reused"] else ""
    return (f'{found["method"]}: {found["pairs"]} edited copies of {found["sources"]} products '
            f'(backgrounds: {found["backgrounds"]}), {found["seconds"]:.1f} s{reused}')


def _not_learned(options: EmbeddingOptions) -> tuple[str, ...]:
    """The learned files a run with these options must not keep from an earlier one."""
    return (() if options.learned else (runfolder.WHITENING,)) \
        + (() if options.adapt != "none" else (runfolder.ADAPTATION_PAIRS,))


def _check_run_settings(engine: str, batch_size: int) -> None:
    if engine not in ENGINES:
        hint = " (the model runtime is the runtime= parameter)" if engine in ("auto", "tf", "tflite") else ""
        raise ValueError(f"engine={engine!r}; choose one of {ENGINES}{hint}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; must be a whole number of at least 1")


def _record(job: Plan, options: EmbeddingOptions, done: Computed, items: pd.DataFrame, dim: int,
            engine: str, runtime: str, catalog, on_missing: str, recursive: bool, batch_size: int,
            seconds: float) -> dict:
    """``embed_meta.json``: what the store was computed from, then what happened."""
    previous = job.previous or {}
    computed = [p for p in job.to_compute if p not in job.reasons]
    if job.previous is None:
        note = None
    elif job.reused_store:
        note = "reused"
    elif "computed_from" not in previous:
        note = "replaced: a run folder from an older version of lookalike, embedded again"
    else:
        note = "replaced: other embedding options (" + _changed(previous.get("options", {}), options) + ")"
    model = done.model
    return {
        **options.as_dict(),
        "options": options.as_dict(),
        "computed_from": {"vector_key": options.vector_key(), "options_key": options.key(),
                          "catalog": store.catalog_state(items), "store_key": store.store_key(options.key(), items)},
        "dim": dim,
        "image_size": model.image_size if model else previous.get("image_size"),
        "engine": engine,
        "runtime": done.runtime or (model.runtime if model else previous.get("runtime")),
        "pooling_used": model.pooling if model else previous.get("pooling_used", options.resolved_pooling),
        "input_range": [0.0, 1.0], "normalised": "l2",
        "image_dir": str(job.root.resolve()),
        "catalog": str(Path(catalog).resolve()) if catalog else None,
        "on_missing": on_missing, "recursive": recursive, "batch_size": batch_size,
        "n_files": job.n_files,
        "other_files": job.other_files,  # not images by extension: never read
        "n_items": len(items),
        "n_products": int(items["productId"].nunique()),
        "n_skipped": len(job.reasons),
        "n_embedded_now": len(computed),
        "n_reused": len(items) - len(computed),
        "n_removed": len(job.old_paths - set(items["path"])),
        "previous_store": note,
        "catalog_match": job.match.summary(),
        "seconds": {"embed": round(done.seconds, 3),
                    "inference": None if done.inference is None else round(done.inference, 3),
                    "total": round(seconds, 3)},
        "images_per_second": round(len(job.to_compute) / done.seconds, 2) if job.to_compute and done.seconds else None,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _changed(before: dict, options: EmbeddingOptions) -> str:
    """What differs from the previous store's options, e.g. "precision float32 -> int8"."""
    changed = [f"{name} {before.get(name)} -> {value}" for name, value in options.as_dict().items()
               if name not in ("postprocess", "adapt") and before.get(name) != value]
    return ", ".join(changed) or "the model files or their conversion changed"


def _why_nothing(root: Path, run_dir: Path, meta: dict, skipped: pd.DataFrame) -> str:
    if meta["n_files"] == 0:
        others = ", ".join(f"{n} {ext or 'without extension'}" for ext, n in meta["other_files"].items())
        return (f"no image files in {root} (looked for {', '.join(images.IMAGE_EXTENSIONS)}"
                + (f"; found only other files: {others}" if others else "; the folder is empty") + ")")
    common = skipped["reason"].value_counts().head(3)
    reasons = "; ".join(f"{reason} ({n})" for reason, n in common.items())
    return (f"none of the {meta['n_files']} image files could be used (all are listed with their "
            f"reason in {run_dir / runfolder.SKIPPED}); most common: {reasons}")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _progress(total: int, enabled: bool):
    from tqdm import tqdm  # plain text bar: readable in executed notebooks and HTML reports

    return tqdm(total=total, unit="img", desc="embedding", disable=not enabled, mininterval=2.0)


def _versions() -> dict:
    import PIL
    import tensorflow as tf
    import tensorflow_hub as hub

    return {"lookalike": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "tensorflow_hub": hub.__version__, "numpy": np.__version__, "pillow": PIL.__version__}


def embed_pixels(pictures, options: EmbeddingOptions | None = None, batch_size: int = 64,
                 runtime: str = "auto", model: Embedder | None = None, progress: bool = False,
                 **option_values) -> np.ndarray:
    """L2-normalised vectors for in-memory pictures (uint8 arrays or PIL images), in order.

    For query photos that are not in the catalog, and for benchmark data sets. ``model``:
    an already built ``options.embedder()``, to embed many sets without loading it again.
    """
    from PIL import Image

    options = EmbeddingOptions.of(options.as_dict() if options else None, **option_values)
    model = model or options.embedder(runtime)
    pictures = list(pictures) if not hasattr(pictures, "__len__") else pictures
    out = np.empty((len(pictures), model.dim), np.float32)
    bar = _progress(len(pictures), progress)
    for start in range(0, len(pictures), batch_size):
        chunk = pictures[start:start + batch_size]
        batch = np.stack([
            np.asarray(images.fit_square(
                images.to_rgb(p if isinstance(p, Image.Image) else Image.fromarray(np.asarray(p))),
                model.image_size, options.resize))
            for p in chunk])
        out[start:start + len(chunk)] = model(batch)
        bar.update(len(chunk))
    bar.close()
    return out
