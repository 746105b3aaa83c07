"""Embed a folder of product images into a run folder's embeddings store.

Two engines compute the vectors, with the same read/decode/model code (``read_and_decode``
and ``features.Embedder``): "local" reads, hashes and decodes files in a thread pool
(Pillow releases the GIL) while the model runs on the previous batch; "ray" runs them in a
Ray actor pool, on this machine or a cluster (``helpers.distributed``). Either way new
vectors are checkpointed in chunks (an interrupted run resumes where it stopped), and a
file that cannot be used is listed in ``skipped.csv`` with the reason and never stops the run.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from . import __version__, catalog as catalog_mod, features, images, store, whitening
from .features import DEFAULT_HOG_WEIGHT, Embedder
from .models import DEFAULT_MODEL, PRECISIONS, load_model
from .store import PartialWork


ENGINES = ("local", "ray")


@dataclass
class Decoded:
    path: str
    pixels: np.ndarray | None = None
    sha256: str = ""
    width: int = 0
    height: int = 0
    reason: str = ""


# what to do about a format this installation cannot read
HINTS = {} if images.HEIF_SUPPORT else {
    ext: " (HEIC/HEIF needs the pillow-heif package: pip install pillow-heif)" for ext in (".heic", ".heif")}


def read_and_decode(root: Path, rel_path: str, size: int, resize: str, max_pixels: int) -> Decoded:
    """Read one file, hash its bytes and decode it; failures become a ``reason``."""
    try:
        data = images.read_file(root / rel_path)
    except images.ImageError as exc:
        return Decoded(rel_path, reason=str(exc))
    digest = hashlib.sha256(data).hexdigest()
    try:
        pixels, (w, h) = images.decode_image(data, size, resize, max_pixels)
    except images.ImageError as exc:
        return Decoded(rel_path, sha256=digest, reason=str(exc) + HINTS.get(Path(rel_path).suffix.lower(), ""))
    except Exception as exc:  # a decoder bug on one hostile file must not stop the run
        return Decoded(rel_path, sha256=digest, reason=f"unexpected decoder error ({type(exc).__name__}: {exc})")
    return Decoded(rel_path, pixels, digest, w, h)


def decoded_stream(root: Path, paths: list[str], size: int, resize: str, max_pixels: int,
                   workers: int, prefetch: int):
    """Yield ``Decoded`` in path order, keeping at most ``prefetch`` files in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        todo = iter(paths)
        for rel in todo:
            pending.append(pool.submit(read_and_decode, root, rel, size, resize, max_pixels))
            if len(pending) >= prefetch:
                break
        while pending:
            yield pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(read_and_decode, root, nxt, size, resize, max_pixels))


@dataclass
class Embedded:
    """What an engine hands back for some of the files: vectors and what became of the rest."""

    rows: list  # (path, sha256, width, height) of each row of ``vectors``
    vectors: np.ndarray
    duplicates: list = field(default_factory=list)  # (path, sha256): bytes already embedded
    failed: list = field(default_factory=list)      # (path, reason)
    runtime: str | None = None                      # the model runtime that ran ("tflite" / "tf")
    seconds: float = 0.0                            # model time, when the engine can tell

    @property
    def files(self) -> int:
        return len(self.rows) + len(self.duplicates) + len(self.failed)


def local_batches(root: Path, paths: list[str], model: Embedder, resize: str, max_pixels: int,
                  batch_size: int, workers: int, known) -> Iterator[Embedded]:
    """The local engine: decode in threads, run the model on full batches, in this process.

    ``known``: sha256 values already embedded (a file with the same bytes is not run again).
    """
    batch: list[Decoded] = []

    def run() -> Embedded:
        t0 = time.perf_counter()
        vectors = model(np.stack([d.pixels for d in batch]))
        out = Embedded([(d.path, d.sha256, d.width, d.height) for d in batch], vectors,
                       runtime=model.runtime, seconds=time.perf_counter() - t0)
        batch.clear()
        return out

    for d in decoded_stream(root, paths, model.image_size, resize, max_pixels,
                            workers, prefetch=max(2 * batch_size, 4 * workers)):
        if d.pixels is None:
            yield Embedded([], np.empty((0, model.dim), np.float32), failed=[(d.path, d.reason)])
        elif d.sha256 in known:  # same bytes as a file embedded earlier in this run
            yield Embedded([], np.empty((0, model.dim), np.float32), duplicates=[(d.path, d.sha256)])
        else:
            batch.append(d)
            if len(batch) >= batch_size:
                yield run()
    if batch:
        yield run()


def embed_folder(image_dir: str | Path, run_dir: str | Path, model_handle: str = DEFAULT_MODEL,
                 resize: str = "crop", batch_size: int = 32, recursive: bool = True,
                 catalog: str | Path | None = None, on_missing: str = "error",
                 max_pixels: int = images.MAX_PIXELS, runtime: str = "auto",
                 workers: int | None = None, checkpoint_every: int = 1024,
                 pooling: str = "auto", focus: str = "none", hog_weight: float = DEFAULT_HOG_WEIGHT,
                 postprocess: str = "none", precision: str = "float32", engine: str = "local",
                 progress: bool = True) -> dict:
    """Embed every image under ``image_dir`` into ``run_dir``; return the run summary.

    Writes embeddings.npy, items.parquet, skipped.csv and embed_meta.json (see ``store``).
    The catalog is matched before any image is decoded, so catalog problems fail fast.
    Incremental and resumable: images whose bytes (sha256) are already in the run folder's
    store, or in the checkpoints of an interrupted run, are not embedded again, provided
    ``model_handle``, ``resize``, ``pooling``, ``focus``, ``hog_weight`` and ``precision`` are the
    same; removed images are dropped. ``pooling`` / ``focus`` / ``hog_weight``: see
    ``helpers.features``. ``postprocess="whiten"`` learns PCA-whitening on the catalog's vectors (``whitening.npz``, see ``helpers.whitening``);
    readers get whitened vectors through ``store.load_store``.

    ``engine``: "local" (this process) or "ray" (a Ray actor pool: ``ray.init()`` on this
    machine, or the cluster at ``RAY_ADDRESS``; every worker must see ``image_dir`` at the same
    path and have this package installed). Both give the same vectors, skipped files and
    checkpoints. ``workers``: decode threads (local) or model workers (ray; default one per
    CPU of the cluster). ``runtime``: the model runtime ("auto", "tflite", "tf"; see
    ``models.load_model``); ``precision``: "float32" or "int8" (about 2x the model's speed,
    see ``models.PRECISIONS``).
    """
    started = time.perf_counter()
    if engine not in ENGINES:
        hint = " (the model runtime is now the runtime= parameter)" if engine in ("auto", "tf", "tflite") else ""
        raise ValueError(f"engine={engine!r}; choose one of {ENGINES}{hint}")
    if resize not in images.RESIZE_MODES:
        raise ValueError(f"resize={resize!r}; choose one of {images.RESIZE_MODES}")
    features.check_options(pooling, focus, hog_weight)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
    if postprocess not in whitening.POSTPROCESS:
        raise ValueError(f"postprocess={postprocess!r}; choose one of {whitening.POSTPROCESS}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; must be at least 1")
    root, run_dir = Path(image_dir), Path(run_dir)
    other_files = Counter()
    # a run folder inside image_dir: its thumbnails, grids and tables are not the catalog's
    paths = images.list_images(root, recursive, others=other_files, exclude=run_dir)
    # names that are not UTF-8 (Linux allows any bytes) cannot be stored in the tables
    bad_names = [p for p in paths if not _is_utf8(p)]
    paths = [p for p in paths if _is_utf8(p)]
    frame = catalog_mod.read_catalog(catalog) if catalog else None
    match = catalog_mod.match_catalog(paths, frame, on_missing, source=str(catalog))
    to_embed = [p for p in paths if p in match.product_id]
    not_listed = [p for p in paths if p not in match.product_id]
    workers = workers or max(1, os.cpu_count() or 1)

    key = {"model_handle": model_handle, "resize": resize, "max_pixels": max_pixels,
           "pooling": pooling, "focus": focus, "hog_weight": float(hog_weight),
           "hog_dim": features.HOG_DIM if hog_weight else 0, "precision": precision}
    work = PartialWork(run_dir, key)
    work.recover()  # a previous run died while moving its finished files into place
    pool, previous, old_paths, same_key = store.VectorPool(), None, set(), False
    if (run_dir / store.META).exists():
        previous = store.load_meta(run_dir)
        old_vectors, old_items, _ = store.load_store(run_dir, postprocessed=False)
        old_paths = set(old_items["path"])
        # stores written before pooling/focus/hog_weight/precision existed: whole-image average pooling, float32
        old_key = {**previous, "pooling": previous.get("pooling", "avg"), "focus": previous.get("focus", "none"),
                   "hog_weight": previous.get("hog_weight", 0.0), "precision": previous.get("precision", "float32"),
                   # the first outline (before hog_dim was recorded) kept all 1,764 HOG numbers
                   "hog_dim": previous.get("hog_dim", 1764 if previous.get("hog_weight") else 0)}
        same_key = {k: old_key.get(k) for k in key} == key
        if same_key:  # never mix vectors of different models or preprocessing
            pool.add(old_vectors, old_items)
    work.start()
    for vectors, table in work.chunks():
        pool.add(vectors, table)

    # which files need the model: hash everything only when there is something to reuse
    sha = dict(zip(to_embed, _hash_files(root, to_embed, workers))) if len(pool) else {}
    to_compute = [p for p in to_embed if sha.get(p) not in pool]

    model, loaded, infer_seconds, runtime_used = None, time.perf_counter(), 0.0, None
    reasons = {p: "no productId in the catalog (on_missing='skip')" for p in not_listed}
    for p in bad_names:
        shown = p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        reasons[shown] = "file name is not valid UTF-8: rename the file to include it"
    if to_compute:
        model = Embedder(load_model(model_handle, runtime, precision=precision), pooling, focus, hog_weight)
        if engine == "local":
            model.warm_up()  # the TFLite conversion is model loading, not embedding time
        loaded = time.perf_counter()
        if engine == "local":
            results = local_batches(root, to_compute, model, resize, max_pixels, batch_size, workers, pool)
        else:
            from . import distributed

            options = {"model_handle": model_handle, "runtime": runtime, "pooling": pooling, "focus": focus,
                       "hog_weight": hog_weight, "resize": resize, "max_pixels": max_pixels, "precision": precision}
            results = distributed.ray_batches(root, to_compute, options, batch_size, workers)
            infer_seconds = None  # spent in the workers
        bar = _progress(len(to_compute), progress)
        chunk_vectors: list[np.ndarray] = []
        chunk_rows: list[tuple] = []

        def flush_chunk():
            if chunk_rows:
                vectors, table = np.concatenate(chunk_vectors), pd.DataFrame(chunk_rows, columns=store.CHUNK_COLUMNS)
                work.write_chunk(vectors, table)
                pool.add(vectors, table)
            chunk_vectors.clear()
            chunk_rows.clear()

        for result in results:
            reasons.update(result.failed)
            sha.update(result.duplicates)
            sha.update((row[0], row[1]) for row in result.rows)
            if result.rows:
                chunk_vectors.append(np.asarray(result.vectors, dtype=np.float32))
                chunk_rows.extend(result.rows)
            runtime_used = result.runtime or runtime_used
            if infer_seconds is not None:
                infer_seconds += result.seconds
            bar.update(result.files)
            if len(chunk_rows) >= checkpoint_every:
                flush_chunk()
        flush_chunk()
        bar.close()

    # assemble the store in path order from reused and new vectors, then move it into place
    rows = []
    dim = model.dim if model else (previous or {}).get("dim")
    if dim is None:  # nothing embedded now or before: every file was skipped
        dim = Embedder(load_model(model_handle, runtime, precision=precision), pooling, focus, hog_weight).dim
    writer = store.EmbeddingWriter(work.folder, dim)
    try:
        block = []
        for p in to_embed:
            if p in reasons:
                continue
            vector, w, h = pool.get(sha[p])
            block.append(vector)
            rows.append((len(rows), p, match.image_name[p], match.product_id[p], sha[p], w, h))
            if len(block) >= 4096:
                writer.append(np.stack(block))
                block.clear()
        if block:
            writer.append(np.stack(block))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    items = pd.DataFrame(rows, columns=store.ITEM_COLUMNS)
    skipped_frame = pd.DataFrame(sorted(reasons.items()), columns=["path", "reason"])
    finished = time.perf_counter()
    embed_seconds = finished - loaded
    meta = {
        **key,
        "dim": dim,
        "image_size": model.image_size if model else (previous or {}).get("image_size"),
        "engine": engine,
        "runtime": runtime_used or (model.runtime if model else _previous_runtime(previous)),
        "pooling_used": model.pooling if model else (previous or {}).get("pooling_used"),
        "postprocess": postprocess,
        "input_range": [0.0, 1.0],
        "normalised": "l2",
        "image_dir": str(root.resolve()),
        "catalog": str(Path(catalog).resolve()) if catalog else None,
        "on_missing": on_missing,
        "recursive": recursive,
        "batch_size": batch_size,
        "n_files": len(paths) + len(bad_names),
        "other_files": dict(sorted(other_files.items())),  # not images by extension: never read
        "n_items": len(items),
        "n_products": int(items["productId"].nunique()),
        "n_skipped": len(skipped_frame),
        "n_embedded_now": len(to_compute) - sum(1 for p in to_compute if p in reasons),
        "n_reused": len(items) - sum(1 for p in to_compute if p not in reasons),
        "n_removed": len(old_paths - set(items["path"])),
        "previous_store": None if previous is None else (
            "reused" if same_key else "replaced: different model_handle, resize, max_pixels, pooling, focus, hog_weight or precision"),
        "catalog_match": match.summary(),
        "seconds": {
            "model_load": round(loaded - started, 3),
            "embed": round(embed_seconds, 3),
            "inference": None if infer_seconds is None else round(infer_seconds, 3),
            "total": round(finished - started, 3),
        },
        "images_per_second": round(len(to_compute) / embed_seconds, 2) if to_compute and embed_seconds else None,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if postprocess == "whiten":  # learned on the finished catalog, saved before the commit
        raw = np.load(work.folder / store.EMBEDDINGS, mmap_mode="r")
        if len(raw) >= 2:
            whitening.learn(raw).save(work.folder / whitening.FILE)
        else:
            meta["postprocess"] = "none"
    work.commit(items, skipped_frame, meta)
    if items.empty:  # the store and skipped.csv are written: the reasons can be read there
        raise NothingEmbeddedError(_why_nothing(root, run_dir, meta, skipped_frame))
    return meta


class NothingEmbeddedError(ValueError):
    """The run ended with no image embedded: nothing downstream can work."""


def _why_nothing(root: Path, run_dir: Path, meta: dict, skipped: pd.DataFrame) -> str:
    if meta["n_files"] == 0:
        others = ", ".join(f"{n} {ext or 'without extension'}" for ext, n in meta["other_files"].items())
        return (f"no image files in {root} (looked for {', '.join(images.IMAGE_EXTENSIONS)}"
                + (f"; found only other files: {others}" if others else "; the folder is empty") + ")")
    common = skipped["reason"].value_counts().head(3)
    reasons = "; ".join(f"{reason} ({n})" for reason, n in common.items())
    return (f"none of the {meta['n_files']} image files could be used (all are listed with their "
            f"reason in {run_dir / 'skipped.csv'}); most common: {reasons}")


def _previous_runtime(previous: dict | None) -> str | None:
    """The model runtime of the store a run reused (stores written before engine="ray"
    existed recorded it as "engine")."""
    previous = previous or {}
    return previous.get("runtime") or (previous.get("engine") if previous.get("engine") in ("tf", "tflite") else None)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _hash_files(root: Path, paths: list[str], workers: int) -> list[str | None]:
    """sha256 of each file's bytes (None when it cannot be read), in threads."""
    def digest(rel: str):
        if not images.is_regular_file(root / rel):  # a pipe would block: read_and_decode says why
            return None
        try:
            h = hashlib.sha256()
            with open(root / rel, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(digest, paths))


def _progress(total: int, enabled: bool):
    from tqdm import tqdm  # plain text bar: readable in executed notebooks and HTML reports

    return tqdm(total=total, unit="img", desc="embedding", disable=not enabled, mininterval=2.0)


def _versions() -> dict:
    import PIL
    import tensorflow as tf
    import tensorflow_hub as hub

    return {"lookalike": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "tensorflow_hub": hub.__version__, "numpy": np.__version__, "pillow": PIL.__version__}


def embed_pixels(pictures, model_handle: str = DEFAULT_MODEL, resize: str = "crop",
                 batch_size: int = 64, runtime: str = "auto", model=None, pooling: str = "auto",
                 focus: str = "none", hog_weight: float = DEFAULT_HOG_WEIGHT, precision: str = "float32",
                 progress: bool = False) -> np.ndarray:
    """L2-normalised vectors for in-memory pictures (uint8 arrays or PIL images), in order.

    For query photos that are not in the catalog, and for benchmark data sets. ``model``:
    an already loaded model or ``features.Embedder`` (then the options are its own).
    """
    from PIL import Image

    model = model or load_model(model_handle, runtime, precision=precision)
    if not isinstance(model, Embedder):
        model = Embedder(model, pooling, focus, hog_weight)
    pictures = list(pictures) if not hasattr(pictures, "__len__") else pictures
    out = np.empty((len(pictures), model.dim), np.float32)
    bar = _progress(len(pictures), progress)
    for start in range(0, len(pictures), batch_size):
        chunk = pictures[start:start + batch_size]
        batch = np.stack([
            np.asarray(images.fit_square(
                images.to_rgb(p if isinstance(p, Image.Image) else Image.fromarray(np.asarray(p))),
                model.image_size, resize))
            for p in chunk])
        out[start:start + len(chunk)] = model(batch)
        bar.update(len(chunk))
    bar.close()
    return out
