"""The pairs that calibrate 03's near-duplicate rule (``duplicates.calibrate``).

``CALIBRATION_SOURCES`` catalog images, chosen by their sha256 (so a growing catalog keeps
almost the same ones), get one copy per kind of edit from 05's generator (``copies``). The
copies are decoded and embedded exactly like the catalog (the run's own options and its
whitening or adaptation) and kept in ``run_dir/duplicate_calibration/``
with the key they were made for, so the next 03 reuses them. Each copy is then paired with
its nearest catalog images: its source is a positive, other products are negatives (near-
copies of the source itself count as neither: the catalog may really hold them twice).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import copies as copies_mod, edits, runfolder, verify, whitening

CALIBRATION_SOURCES = 100   # catalog images that get edited copies
CALIBRATION_CANDIDATES = 3  # each copy's nearest catalog images that it is paired with
NEAR_COPY = 0.97            # catalog images this close to a source are neither right nor wrong ...
STRONG_MATCH = 40           # ... nor are those whose keypoints agree with it this well (different products: 99% below 25) ...
STRONG_ALIGNMENT = 0.95     # ... or whose pixels align with it this well (renders with no keypoints)
SCENE_NEIGHBORS = 2         # background copies paired with other products' background copies
ACCEPTABLE_INLIERS = 6      # below this, ...
ACCEPTABLE_ALIGNMENT = 0.8  # ... this and ...
ACCEPTABLE_SIMILARITY = 0.8  # ... this, no rule calls a wrong pair a copy: not worth checking
VERSION = 3                 # bump when the copies change


class CalibrationError(RuntimeError):
    """The catalog's images cannot be read to make the calibration copies."""


def edited_copies(run_dir: Path, items: pd.DataFrame, embed_meta: dict, backgrounds: Path | None,
                  seed: int = 0) -> dict:
    """{"vectors", "source_rows", "kinds", "paths", "sha256", "folder"} of the calibration copies, made
    and embedded now unless the saved ones were made for the same options and sources."""
    rows = copies_mod.choose_sources(items, CALIBRATION_SOURCES, seed=seed)
    vector_key = embed_meta["computed_from"]["store_key"] if whitening.is_learned(embed_meta["options"]) \
        else embed_meta["computed_from"]["options_key"]
    key = runfolder.key_of([VERSION, vector_key, items["sha256"].to_numpy()[rows].tolist(), seed,
                            edits.TRANSFORMS, str(backgrounds)])
    folder = run_dir / runfolder.CALIBRATION
    saved = folder / runfolder.CALIBRATION_COPIES
    if saved.exists():
        with np.load(saved, allow_pickle=False) as f:
            if str(f["key"]) == key:
                return {name: f[name] for name in ("vectors", "source_rows", "kinds", "paths", "sha256")} \
                    | {"folder": folder}
    copies = _make(run_dir, folder, items, rows, embed_meta, backgrounds, seed)
    with runfolder.atomic_path(saved) as tmp, open(tmp, "wb") as f:
        np.savez(f, key=key, **copies)
    return copies | {"folder": folder}


def _make(run_dir: Path, folder: Path, items: pd.DataFrame, rows: np.ndarray, embed_meta: dict,
          backgrounds, seed: int) -> dict:
    from .options import EmbeddingOptions

    if not embed_meta.get("image_dir") or not Path(embed_meta["image_dir"]).is_dir():
        raise CalibrationError(f"the image folder {embed_meta.get('image_dir')!r} of 01's store is not there")
    options = EmbeddingOptions.of(embed_meta["options"])
    try:
        labels, vectors = copies_mod.embed_copies(embed_meta["image_dir"], items["path"].to_numpy()[rows].tolist(),
                                                  folder, options, backgrounds, seed)
    except ValueError as exc:  # none of the sources could be read
        raise CalibrationError(str(exc)) from None
    if options.learned:
        vectors = whitening.Whitening.load(run_dir / runfolder.WHITENING).apply(vectors)
    row_of = dict(zip(items["path"], range(len(items))))
    kept = labels.index.tolist()
    return {"vectors": vectors,
            "source_rows": labels["source"].map(row_of).to_numpy(np.int64),
            "kinds": labels["transform"].to_numpy(str), "paths": np.array(kept, dtype=str),
            "sha256": np.array(_hashes(folder, kept), dtype=str)}  # hashed once, with the copies


def calibration_pairs(run_dir: str | Path, embeddings: np.ndarray, items: pd.DataFrame, embed_meta: dict,
                      backgrounds: Path | None = None, seed: int = 0) -> pd.DataFrame:
    """(copy, catalog image) pairs: kind, similarity, inliers and alignment (-1: not checked), positive.

    A catalog image the source itself matches strongly (``STRONG_MATCH`` inliers or
    ``STRONG_ALIGNMENT``) is taken for a copy the catalog already holds, and left out: neither
    right nor wrong.
    """
    run_dir = Path(run_dir)
    copies = edited_copies(run_dir, items, embed_meta, backgrounds, seed)
    pairs = _nearest(copies, embeddings, items)
    check = pairs["similarity"].to_numpy() >= verify.FLOOR
    cache = verify.KeypointCache(run_dir, embed_meta["image_dir"])
    paths, hashes = items["path"].to_numpy(), items["sha256"].to_numpy()
    copy_sha = dict(zip(copies["paths"], copies["sha256"]))
    rows = np.unique(np.concatenate([pairs.loc[check, "row"], pairs["source"]]))
    found = cache.many(paths[rows].tolist(), hashes[rows].tolist())
    found |= verify.KeypointCache(run_dir, copies["folder"]).many(list(copy_sha), list(copy_sha.values()))
    checked = list(zip(pairs.loc[check, "copy"].map(copy_sha), hashes[pairs.loc[check, "row"]]))
    pairs["inliers"], pairs["alignment"] = np.int32(-1), np.float32(-1)
    pairs.loc[check, "inliers"] = cache.pair_inliers(checked, found)
    pairs.loc[check, "alignment"] = cache.pair_alignment(checked, found)
    # only a wrong pair a rule could accept needs the check: keypoints agreeing, aligned, or similar enough
    negatives = pairs[~pairs["positive"] & ((pairs["inliers"] >= ACCEPTABLE_INLIERS)
                                            | (pairs["alignment"] >= ACCEPTABLE_ALIGNMENT)
                                            | (pairs["similarity"] >= ACCEPTABLE_SIMILARITY))]
    already = negatives.index[_held_twice(list(zip(hashes[negatives["source"]], hashes[negatives["row"]])),
                                          found, cache)]
    pairs = pd.concat([pairs.drop(index=already), _shared_scenes(copies, embeddings, hashes, copy_sha, found, cache)],
                      ignore_index=True)
    return pairs.drop(columns="source")


def _shared_scenes(copies: dict, embeddings, hashes, copy_sha: dict, found: dict, cache) -> pd.DataFrame:
    """Wrong pairs a catalog shot in scenes has: two products on the same background. Each
    background copy with its ``SCENE_NEIGHBORS`` nearest background copies of other sources
    (unless those sources are copies of each other)."""
    swapped = np.flatnonzero(copies["kinds"] == "background")
    if len(swapped) < 2:
        return _typed([])
    vectors, sources = copies["vectors"][swapped], copies["source_rows"][swapped]
    sims = vectors @ vectors.T
    sims[sources[:, None] == sources[None, :]] = -np.inf
    take = min(SCENE_NEIGHBORS, len(swapped) - 1)
    rows = [(q, o) for q in range(len(swapped)) for o in np.argsort(-sims[q])[:take] if np.isfinite(sims[q, o])]
    source_pairs = [(hashes[sources[q]], hashes[sources[o]]) for q, o in rows]
    near = np.array([float(embeddings[sources[q]] @ embeddings[sources[o]]) >= NEAR_COPY for q, o in rows], bool)
    held = _held_twice(source_pairs, found, cache)
    keep = [r for r, h, n in zip(rows, held, near) if not h and not n]
    paths = copies["paths"][swapped]
    checked = [(copy_sha[paths[q]], copy_sha[paths[o]]) for q, o in keep]
    inliers = cache.pair_inliers(checked, found) if keep else []
    aligned = cache.pair_alignment(checked, found) if keep else []
    return _typed([(paths[q], "background", int(sources[q]), -1, float(sims[q, o]), False, int(n), float(a))
                   for (q, o), n, a in zip(keep, inliers, aligned)])


_PAIR_TYPES = {"copy": str, "kind": str, "source": np.int64, "row": np.int64, "similarity": np.float64,
               "positive": bool, "inliers": np.int32, "alignment": np.float32}


def _typed(rows: list[tuple]) -> pd.DataFrame:
    """Calibration pairs with their column types, even when there are none (an untyped empty
    frame would turn every column of the concatenated pairs into objects)."""
    return pd.DataFrame(rows, columns=list(_PAIR_TYPES)).astype(_PAIR_TYPES)


def _held_twice(source_pairs: list[tuple[str, str]], found: dict, cache: verify.KeypointCache) -> np.ndarray:
    """Which (source, other catalog image) pairs are the same picture held twice: the
    keypoints agree strongly, or the pixels align."""
    if not source_pairs:
        return np.zeros(0, bool)
    held = cache.pair_inliers(source_pairs, found) >= STRONG_MATCH
    rest = np.flatnonzero(~held)  # aligned only where the keypoints did not already tell
    if len(rest):
        held[rest] = cache.pair_alignment([source_pairs[i] for i in rest], found) >= STRONG_ALIGNMENT
    return held


def _nearest(copies: dict, embeddings: np.ndarray, items: pd.DataFrame) -> pd.DataFrame:
    """Each copy's source, and the other products among its ``CALIBRATION_CANDIDATES`` nearest
    catalog images, less the near-copies of the source (neither right nor wrong). The source's
    product's other images take no place (03 pairs products, never one product's images)."""
    vectors, sources = copies["vectors"], copies["source_rows"]
    products = pd.factorize(items["productId"].astype(str))[0]
    rows_of = np.arange(len(items))
    unique = np.unique(sources)
    near_copy = dict(zip(unique, (embeddings[unique] @ np.asarray(embeddings).T) >= NEAR_COPY))
    rows = []
    for start in range(0, len(vectors), 256):
        sims = vectors[start:start + 256] @ np.asarray(embeddings).T
        for i, s in enumerate(sims):
            q = start + i
            source = int(sources[q])
            rows.append((copies["paths"][q], copies["kinds"][q], source, source, float(s[source]), True))
            ranked = np.flatnonzero((products != products[source]) | (rows_of == source))
            take = min(CALIBRATION_CANDIDATES, len(ranked))
            for r in ranked[np.argpartition(-s[ranked], take - 1)[:take]]:
                if r != source and not near_copy[source][r]:
                    rows.append((copies["paths"][q], copies["kinds"][q], source, int(r), float(s[r]), False))
    return pd.DataFrame(rows, columns=["copy", "kind", "source", "row", "similarity", "positive"])


def _hashes(folder: Path, paths) -> list[str]:
    from .decode import hash_files

    return hash_files(Path(folder), list(paths), workers=2)
