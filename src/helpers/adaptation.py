"""Catalog adaptation, 01's ``adapt``: a projection of the backbone's vectors, learned from
the catalog's own images with no labels, in which edited copies of a product are close and
other products are apart.

Both methods learn from the same pairs: ``ADAPT_SOURCES`` catalog images get one copy per kind
of edit (``copies``: crops, mirrors, rotations, recolouring, aspect changes, background swaps
on real photos).

``"whiten-pairs"`` (Radenovic et al., "Fine-tuning CNN Image Retrieval with No Human
Annotation", 2018, in closed form): the covariance of (source - copy), shrunk towards its
mean eigenvalue by ``SHRINK``, whitens; the catalog's covariance in that space gives the
axes, all kept. ``"head"``: a linear head on the frozen vectors trained with InfoNCE, each
copy against catalog images (``learn_head``).

The result is a ``whitening.Whitening`` saved as ``runfolder.WHITENING``, so every reader of
the run, ``search_by_image`` and 03's calibration apply it exactly as the catalog got it. The
copies' vectors are kept (``runfolder.ADAPTATION_PAIRS``) with the key they were made for.
The sources are chosen by their sha256 and the edits are seeded, so a re-run reuses the
copies and equals a fresh run.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import copies, runfolder, whitening

ADAPT = ("none", "whiten-pairs", "head")
ADAPT_SOURCES = 500  # catalog images (one per product) that get edited copies ...
ADAPT_MAX_SIDE = 512  # ... made from the image shrunk to this (the model sees 224-260 px)
SHRINK = 1.0         # intra-pair eigenvalue shrinkage, as a share of their mean
SEED = 1             # not 03's calibration seed: another draw of sources and edits
VERSION = 1          # bump when the copies or the fit change
# the head: x -> x (I + A), A trained with InfoNCE (Adam, full steps of seeded batches)
HEAD_STEPS, HEAD_BATCH, HEAD_NEGATIVES = 100, 1024, 2048
HEAD_TEMPERATURE, HEAD_DECAY, HEAD_RATE = 0.05, 1.0, 1e-3


def learn_pairs(sources: np.ndarray, copied: np.ndarray, catalog: np.ndarray,
                shrink: float = SHRINK) -> whitening.Whitening:
    """The whitening learned from (source, copy) rows and the catalog's vectors."""
    diff = (np.asarray(sources, np.float64) - np.asarray(copied, np.float64))
    variance, axes = np.linalg.eigh(diff.T @ diff / max(1, len(diff)))
    variance = np.maximum(variance, 0.0) + shrink * max(float(variance.mean()), 1e-12)
    whiten = axes / np.sqrt(variance)  # the intra-pair covariance to the power -1/2, as columns
    x = np.asarray(catalog, np.float64)
    mean = x.mean(axis=0)
    spread = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), 8192):
        block = (x[start:start + 8192] - mean) @ whiten
        spread += block.T @ block
    values, rotation = np.linalg.eigh(spread / max(1, len(x) - 1))
    order = np.argsort(values)[::-1]
    return whitening.Whitening(mean.astype(np.float32), (whiten @ rotation[:, order]).astype(np.float32))


def learn_head(source_rows: np.ndarray, copied: np.ndarray, catalog: np.ndarray,
               steps: int = HEAD_STEPS) -> whitening.Whitening:
    """A linear head on the frozen vectors, x -> x (I + A), trained so that each copy finds its
    source (row ``source_rows[i]`` of ``catalog``) among catalog images: InfoNCE at
    ``HEAD_TEMPERATURE`` against the batch's sources and ``HEAD_NEGATIVES`` seeded others, with
    ``HEAD_DECAY`` * |A|^2 keeping it near the backbone's own space. Seeded, so a refit is equal."""
    import tensorflow as tf

    catalog = np.asarray(catalog, np.float32)
    copied = np.asarray(copied, np.float32)
    source_rows = np.asarray(source_rows, np.int64)
    rng = np.random.default_rng(SEED)
    change = tf.Variable(tf.zeros((catalog.shape[1], catalog.shape[1])))
    optimiser = tf.keras.optimizers.Adam(HEAD_RATE)

    def project(x):
        return tf.math.l2_normalize(x + tf.matmul(x, change), axis=1)

    for _ in range(steps):
        batch = np.sort(rng.choice(len(copied), size=min(HEAD_BATCH, len(copied)), replace=False))
        others = rng.choice(len(catalog), size=min(HEAD_NEGATIVES, len(catalog)), replace=False)
        candidates = np.union1d(source_rows[batch], others)
        right = np.searchsorted(candidates, source_rows[batch])
        with tf.GradientTape() as tape:
            logits = tf.matmul(project(copied[batch]), project(catalog[candidates]), transpose_b=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(right, logits / HEAD_TEMPERATURE)) \
                + HEAD_DECAY * tf.reduce_sum(tf.square(change))
        optimiser.apply_gradients([(tape.gradient(loss, change), change)])
    projection = np.eye(catalog.shape[1], dtype=np.float32) + change.numpy()
    return whitening.Whitening(np.zeros(catalog.shape[1], np.float32), projection)


def learn(method: str, source_rows: np.ndarray, copied: np.ndarray, catalog: np.ndarray) -> whitening.Whitening:
    """``method`` ("whiten-pairs" or "head") learned from the copies of catalog rows ``source_rows``."""
    if method == "head":
        return learn_head(source_rows, copied, catalog)
    return learn_pairs(np.asarray(catalog)[source_rows], copied, catalog)


def fit(run_dir: Path, staging: runfolder.Staging, raw: np.ndarray, items: pd.DataFrame, image_dir: Path,
        options, backgrounds=None) -> dict:
    """Learn ``options.adapt`` for this catalog into ``staging`` (the transform and the pairs'
    vectors); return the record for 01's ``embed_meta.json``."""
    started = time.perf_counter()
    folder = copies.background_folder(backgrounds)
    rows = copies.choose_sources(items, ADAPT_SOURCES, seed=SEED)
    hashes = items["sha256"].to_numpy()
    key = runfolder.key_of([VERSION, options.vector_key(), hashes[rows].tolist(), SEED, str(folder), ADAPT_MAX_SIDE])
    pairs = _saved(Path(run_dir) / runfolder.ADAPTATION_PAIRS, key)
    reused = pairs is not None
    if not reused:
        pairs = _make(image_dir, items, rows, options, folder)
    with runfolder.atomic_path(staging.path(runfolder.ADAPTATION_PAIRS)) as tmp, open(tmp, "wb") as f:
        np.savez(f, key=key, **pairs)
    row_of = dict(zip(hashes, range(len(items))))
    source_rows = np.array([row_of[h] for h in pairs["source_sha256"]], np.int64)
    if len(pairs["vectors"]) and len(raw) >= 2:
        learned = learn(options.adapt, source_rows, pairs["vectors"], raw)
    else:  # nothing to learn from: a catalog of one image, or none of its images could be edited
        learned = whitening.Whitening.identity(raw.shape[1])
    learned.save(staging.path(runfolder.WHITENING))
    return {"method": options.adapt, "sources": int(len(np.unique(source_rows))), "pairs": int(len(source_rows)),
            "backgrounds": str(folder) if folder else "generated",
            "copies_reused": reused, "seconds": round(time.perf_counter() - started, 3)}


def _saved(path: Path, key: str) -> dict | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in ("vectors", "source_sha256", "kinds")} if str(f["key"]) == key else None
    except (OSError, ValueError, KeyError):  # unreadable or from an older layout: made again
        return None


def _make(image_dir: Path, items: pd.DataFrame, rows: np.ndarray, options, backgrounds) -> dict:
    paths = items["path"].to_numpy()[rows].tolist()
    sha_of = dict(zip(items["path"], items["sha256"]))
    try:
        labels, vectors = copies.embedded_copies(image_dir, paths, options, backgrounds, SEED, ADAPT_MAX_SIDE)
    except ValueError:  # none of the sources could be read: nothing to learn from
        labels, vectors = pd.DataFrame(columns=["source", "transform"]), np.zeros((0, 0), np.float32)
    return {"vectors": vectors,  # unit length, as the embedder gives them
            "source_sha256": labels["source"].map(sha_of).to_numpy(str),
            "kinds": labels["transform"].to_numpy(str)}


def pair_learner(pictures: np.ndarray, options, backgrounds=None):
    """``learn(catalog_vectors) -> Whitening`` for a catalog given as pixels (uint8, grey or
    RGB) whose first ``len(pictures)`` rows these are: their edited copies are made and
    embedded now, as 01 does for files (05's Fashion-MNIST with an adapted run)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "catalog"
        folder.mkdir()
        names = [f"{r:06d}.png" for r in range(len(pictures))]
        for name, picture in zip(names, pictures):
            Image.fromarray(np.asarray(picture, np.uint8)).save(folder / name)
        labels, copied = copies.embedded_copies(folder, names, options, copies.background_folder(backgrounds),
                                                SEED, ADAPT_MAX_SIDE)
    rows = labels["source"].str[:6].astype(int).to_numpy()
    return lambda catalog: learn(options.adapt, rows, copied, catalog)
