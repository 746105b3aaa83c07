"""Embed a folder of product images into a run folder's embeddings store.

Files are read, hashed and decoded in a thread pool (Pillow releases the GIL) while the
model runs on the previous batch, so decoding overlaps with inference. A file that cannot
be used is listed in ``skipped.csv`` with the reason and never stops the run.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__, catalog as catalog_mod, images, store
from .models import DEFAULT_MODEL, load_model


@dataclass
class Decoded:
    path: str
    pixels: np.ndarray | None = None
    sha256: str = ""
    width: int = 0
    height: int = 0
    reason: str = ""


def read_and_decode(root: Path, rel_path: str, size: int, resize: str, max_pixels: int) -> Decoded:
    """Read one file, hash its bytes and decode it; failures become a ``reason``."""
    try:
        data = (root / rel_path).read_bytes()
    except OSError as exc:
        return Decoded(rel_path, reason=f"cannot read file ({exc.strerror or exc})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        pixels, (w, h) = images.decode_image(data, size, resize, max_pixels)
    except images.ImageError as exc:
        return Decoded(rel_path, sha256=digest, reason=str(exc))
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


def embed_folder(image_dir: str | Path, run_dir: str | Path, model_handle: str = DEFAULT_MODEL,
                 resize: str = "crop", batch_size: int = 32, recursive: bool = True,
                 catalog: str | Path | None = None, on_missing: str = "error",
                 max_pixels: int = images.MAX_PIXELS, engine: str = "auto",
                 workers: int | None = None, progress: bool = True) -> dict:
    """Embed every image under ``image_dir`` into ``run_dir``; return the run summary.

    Writes embeddings.npy, items.parquet, skipped.csv and embed_meta.json (see ``store``).
    The catalog is matched before any image is decoded, so catalog problems fail fast.
    """
    started = time.perf_counter()
    if resize not in images.RESIZE_MODES:
        raise ValueError(f"resize={resize!r}; choose one of {images.RESIZE_MODES}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; must be at least 1")
    root, run_dir = Path(image_dir), Path(run_dir)
    # the meta file certifies a complete store: remove it until this run has finished
    (run_dir / store.META).unlink(missing_ok=True)
    paths = images.list_images(root, recursive)
    frame = catalog_mod.read_catalog(catalog) if catalog else None
    match = catalog_mod.match_catalog(paths, frame, on_missing, source=str(catalog))
    to_embed = [p for p in paths if p in match.product_id]
    not_listed = [p for p in paths if p not in match.product_id]

    model = load_model(model_handle, engine)
    loaded = time.perf_counter()

    rows, skipped = [], [(p, "no productId in the catalog (on_missing='skip')") for p in not_listed]
    batch: list[Decoded] = []
    infer_seconds = 0.0

    writer = store.EmbeddingWriter(run_dir, model.dim)
    bar = _progress(len(to_embed), progress)

    def flush():
        nonlocal infer_seconds
        t0 = time.perf_counter()
        vectors = store.l2_normalise(model.embed(np.stack([d.pixels for d in batch])))
        infer_seconds += time.perf_counter() - t0
        writer.append(vectors)
        for d in batch:
            rows.append((len(rows), d.path, match.image_name[d.path], match.product_id[d.path],
                         d.sha256, d.width, d.height))
        bar.update(len(batch))
        batch.clear()

    try:
        workers = workers or max(1, os.cpu_count() or 1)
        for d in decoded_stream(root, to_embed, model.image_size, resize, max_pixels,
                                workers, prefetch=max(2 * batch_size, 4 * workers)):
            if d.pixels is None:
                skipped.append((d.path, d.reason))
                bar.update(1)
                continue
            batch.append(d)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    except BaseException:
        writer.abort()
        bar.close()
        raise
    bar.close()

    items = pd.DataFrame(rows, columns=store.ITEM_COLUMNS)
    skipped_frame = pd.DataFrame(skipped, columns=["path", "reason"]).sort_values("path", kind="stable")
    # embed_meta.json is written last: a store without it is incomplete
    store.write_table(run_dir / store.ITEMS, items)
    store.write_table(run_dir / store.SKIPPED, skipped_frame)
    writer.close()
    finished = time.perf_counter()
    embed_seconds = finished - loaded
    meta = {
        "model_handle": model_handle,
        "dim": model.dim,
        "image_size": model.image_size,
        "resize": resize,
        "engine": model.engine,
        "input_range": [0.0, 1.0],
        "normalised": "l2",
        "image_dir": str(root.resolve()),
        "catalog": str(Path(catalog).resolve()) if catalog else None,
        "on_missing": on_missing,
        "recursive": recursive,
        "batch_size": batch_size,
        "n_files": len(paths),
        "n_items": len(items),
        "n_products": int(items["productId"].nunique()),
        "n_skipped": len(skipped_frame),
        "catalog_match": match.summary(),
        "seconds": {
            "model_load": round(loaded - started, 3),
            "embed": round(embed_seconds, 3),
            "inference": round(infer_seconds, 3),
            "total": round(finished - started, 3),
        },
        "images_per_second": round(len(to_embed) / embed_seconds, 2) if embed_seconds else None,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    store.write_json(run_dir / store.META, meta)
    return meta


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
                 batch_size: int = 64, engine: str = "auto", model=None, progress: bool = False) -> np.ndarray:
    """L2-normalised vectors for in-memory pictures (uint8 arrays or PIL images), in order.

    For query photos that are not in the catalog, and for benchmark data sets.
    """
    from PIL import Image

    model = model or load_model(model_handle, engine)
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
        out[start:start + len(chunk)] = store.l2_normalise(model.embed(batch))
        bar.update(len(chunk))
    bar.close()
    return out
