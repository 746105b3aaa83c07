"""Edited copies of catalog images, made by 05's generator and embedded exactly like the
catalog: the pairs 01's adaptation learns from (``adaptation``) and 03's calibration
measures with (``calibration``).

Sources are chosen by their seeded sha256, one per product, so a growing catalog keeps
almost the same ones and a re-run chooses the same ones. Background swaps use real photos:
the folder given, else Debian's wallpapers when installed, else generated backgrounds.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from . import edits, images

BACKGROUND_FOLDERS = ("/usr/share/backgrounds", "/usr/share/wallpapers")  # Debian's photos, when installed
PART = 50  # sources made into copies together, with one seed: parts run in parallel


def choose_sources(items: pd.DataFrame, n: int, seed: int = 0) -> np.ndarray:
    """Rows of up to ``n`` distinct products, the ones whose seeded sha256 sorts first."""
    rank = items["sha256"].map(lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    order = rank.sort_values(kind="stable").index.to_numpy()
    first = items.loc[order].drop_duplicates("productId").index.to_numpy()[:n]
    return np.sort(items.index.get_indexer(first))


def background_folder(backgrounds=None) -> Path | None:
    """The background photos for the background swaps: the given folder, else Debian's
    wallpapers when installed (None: generated backgrounds)."""
    if backgrounds:
        folder = Path(backgrounds)
        if not folder.is_dir():
            raise FileNotFoundError(f"backgrounds={backgrounds!r} is not a folder of background photos")
        return folder
    return next((Path(f) for f in BACKGROUND_FOLDERS if Path(f).is_dir()), None)


def make_copies(image_dir: str | Path, paths: list[str], folder: Path, backgrounds, seed: int = 0,
                max_side: int = edits.SOURCE_MAX_SIDE) -> pd.DataFrame:
    """One copy per kind of edit of each of ``paths`` (under ``image_dir``, shrunk to at most
    ``max_side`` px first), written under ``folder`` in parts of ``PART`` sources made on every
    core, each part with its own seed (so the copies are the same on any machine): the labels,
    without the sources' own copies, paths relative to ``folder``. ValueError when none of
    the sources can be read."""
    def make(part: tuple[int, list[str], int]) -> pd.DataFrame | None:
        k, sources, part_seed = part
        try:
            made = edits.make_near_duplicates(image_dir, sources, folder / f"part{k:04d}",
                                              variants_per_source=len(edits.TRANSFORMS), backgrounds=backgrounds,
                                              seed=part_seed, max_side=max_side)
        except ValueError:  # none of this part's sources could be read
            return None
        return made.assign(path=f"part{k:04d}/" + made["path"])

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        made = [m for m in pool.map(make, _parts(paths, seed)) if m is not None]
    if not made:
        raise ValueError(_none_read(paths))
    labels = pd.concat(made, ignore_index=True)
    return labels[labels["transform"] != "source"]


def _parts(paths: list[str], seed: int) -> list[tuple[int, list[str], int]]:
    """(k, sources, seed) of each part of ``PART`` sources."""
    return [(k, paths[i:i + PART], seed * 100_003 + k) for k, i in enumerate(range(0, len(paths), PART))]


def _none_read(paths: list[str]) -> str:
    return (f"none of the {len(paths)} source images could be read (does the run have any "
            "images?): there are no copies to make")


def embed_copies(image_dir: str | Path, paths: list[str], folder: Path, options, backgrounds,
                 seed: int = 0, max_side: int = edits.SOURCE_MAX_SIDE) -> tuple[pd.DataFrame, np.ndarray]:
    """``make_copies``, embedded with ``options`` by 01's local engine (the same vectors as the
    catalog's, at its speed): (labels indexed by the copy's path, with "source" and
    "transform"; their raw vectors, for the copies that could be read back)."""
    from . import engine

    labels = make_copies(image_dir, paths, folder, backgrounds, seed, max_side)
    workers = max(1, os.cpu_count() or 1)
    model = engine.local_model(options, "auto", workers)
    kept, vectors = [], []
    for done in engine.local_batches(folder, labels["path"].tolist(), model, options, 64, workers, known=set()):
        kept += [path for path, *_ in done.rows]
        vectors.append(done.vectors)
    found = np.concatenate(vectors) if vectors else np.zeros((0, model.dim), np.float32)
    return labels.set_index("path").loc[kept], found


def embedded_copies(image_dir: str | Path, paths: list[str], options, backgrounds, seed: int = 0,
                    max_side: int = edits.SOURCE_MAX_SIDE) -> tuple[pd.DataFrame, np.ndarray]:
    """The copies ``make_copies`` would write, embedded in memory instead (01's adaptation keeps
    only their vectors): the same pictures and the same vectors as written files would give,
    without encoding and decoding the lossless ones. Each part of ``PART`` sources is made and
    embedded in a thread of its own, with its own single-thread interpreter. (labels with
    "source" and "transform", in ``make_copies``'s order; their vectors.) ValueError when none
    of the sources can be read."""
    from . import engine

    workers = max(1, os.cpu_count() or 1)
    model = engine.local_model(options, "auto", workers)

    def part(job: tuple[int, list[str], int]) -> tuple[list, list]:
        _, sources, part_seed = job
        labels, pixels, vectors = [], [], []
        for e in edits.edited_pictures(image_dir, sources, len(edits.TRANSFORMS), backgrounds=backgrounds,
                                       seed=part_seed, max_side=max_side):
            if e.transform != "source":  # one picture at a time: a part's copies are never all held
                labels.append((e.source, e.transform))
                pixels.append(_model_input(e, model.image_size, options))
            if len(pixels) == 64:
                vectors.append(model(np.stack(pixels)))
                pixels = []
        if pixels:
            vectors.append(model(np.stack(pixels)))
        return labels, vectors

    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(part, _parts(paths, seed)))
    labels = pd.DataFrame([row for rows, _ in done for row in rows], columns=["source", "transform"])
    if labels.empty:
        raise ValueError(_none_read(paths))
    return labels, np.concatenate([v for _, vectors in done for v in vectors])


def _model_input(edited: edits.Edited, size: int, options) -> np.ndarray:
    """The square picture the model gets for a copy, exactly as from its file: a JPEG copy is
    encoded and decoded like one; a PNG file would decode to the picture itself."""
    data = edited.encoded()
    if data is None:
        return np.asarray(images.fit_square(images.to_rgb(edited.picture), size, options.resize))
    return images.decode_image(data, size, options.resize, options.max_pixels)[0]
