"""The embeddings store in a run folder: what 01_embed writes and every later step reads.

``runfolder`` names its files (embeddings.npy, items.parquet, skipped.csv, embed_meta.json and,
when whitened, whitening.npz); 01 writes them into staging and commits them as a unit.
``embed_meta.json`` is the store's record: the embedding options, and in ``computed_from`` the
store's key (options plus catalog state) that every later step's record refers to.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import runfolder, whitening
from .runfolder import EMBED_META, EMBEDDINGS, ITEMS, PARTIAL, SKIPPED, key_of, write_json, write_table

ITEM_COLUMNS = ["row", "path", "imageName", "productId", "sha256", "width", "height"]


def _npy_header(rows: int, dim: int, length: int | None = None) -> bytes:
    """A version-1.0 .npy header for float32 (rows, dim), padded to ``length`` bytes."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    if length is None:  # room for any row count, aligned to 64 bytes as numpy does
        length = -(-(10 + len(text) + 21) // 64) * 64
    pad = length - 10 - len(text) - 1
    if pad < 0:
        raise ValueError("npy header does not fit")
    body = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + (len(body)).to_bytes(2, "little") + body


class EmbeddingWriter:
    """Append float32 rows to ``embeddings.npy`` without holding them in memory.

    Rows go to a temporary file; ``close()`` writes the final shape into the header and
    renames the file into place. Until then no ``embeddings.npy`` claims to be complete.
    """

    def __init__(self, folder: str | Path, dim: int):
        self.path = Path(folder) / EMBEDDINGS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dim, self.rows = dim, 0
        self._header_len = len(_npy_header(0, dim))
        fd, self._tmp = runfolder.temporary_file(self.path)
        self._file = os.fdopen(fd, "wb")
        self._file.write(_npy_header(0, dim, self._header_len))

    def append(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got {vectors.shape}")
        self._file.write(vectors.tobytes())
        self.rows += len(vectors)

    def close(self) -> Path:
        self._file.seek(0)
        self._file.write(_npy_header(self.rows, self.dim, self._header_len))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.close()


def load_embeddings(run_dir: str | Path, mmap: bool = True) -> np.ndarray:
    """The (N, D) float32 matrix of a run, memory-mapped by default."""
    return np.load(Path(run_dir) / EMBEDDINGS, mmap_mode="r" if mmap else None)


def load_items(run_dir: str | Path) -> pd.DataFrame:
    """One row per embedded image, in embedding-row order."""
    return pd.read_parquet(Path(run_dir) / ITEMS)


def load_skipped(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / SKIPPED
    return pd.read_csv(path, keep_default_na=False) if path.exists() else pd.DataFrame(columns=["path", "reason"])


def load_meta(run_dir: str | Path) -> dict:
    """The store's record (``embed_meta.json``), after finishing any half-done commit."""
    meta = runfolder.record(run_dir, "embed")
    if not meta:
        raise FileNotFoundError(f"{Path(run_dir) / EMBED_META} missing; run 01_embed first")
    return meta


def catalog_state(items: pd.DataFrame) -> str:
    """A key of what was embedded: every image's path, bytes (sha256) and productId."""
    return key_of([items["path"].tolist(), items["sha256"].tolist(), items["productId"].astype(str).tolist()])


def store_key(options_key: str, items: pd.DataFrame) -> str:
    """The store's identity: its vectors are a function of the options and the catalog."""
    return key_of([options_key, catalog_state(items)])


def load_store(run_dir: str | Path, postprocessed: bool = True):
    """(embeddings, items, meta) of a run, checked to be consistent with each other.

    With ``postprocessed`` (the default, what every reader wants) the run's learned
    post-processing (``whitening.npz``, 01's ``postprocess="whiten"``) is applied; without
    it the vectors are as the model pooled them (what incremental embedding reuses).
    """
    run_dir = Path(run_dir)
    meta = load_meta(run_dir)
    missing = [n for n in (EMBEDDINGS, ITEMS) if not (run_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: {', '.join(missing)} missing; run 01_embed first")
    embeddings, items = load_embeddings(run_dir), load_items(run_dir)
    if len(embeddings) != len(items):
        raise ValueError(f"{run_dir}: {len(embeddings)} embeddings but {len(items)} items; "
                         "the store is inconsistent, re-run 01_embed")
    if "computed_from" not in meta:
        raise runfolder.StaleError(f"{run_dir / EMBED_META} was written by an older version of lookalike: "
                                   "re-run 01_embed (it embeds the catalog again)")
    if postprocessed and whitening.is_learned(meta["options"]):
        embeddings = whitening.Whitening.load(run_dir / runfolder.WHITENING).apply(embeddings)
    return embeddings, items, meta


# --- resumable and incremental embedding ----------------------------------------------
# Work in progress lives in run_dir/.partial/: "key.json" (the options' vector key) and chunks
# of new vectors ("chunk_NNNNNN.npy" + ".parquet", the parquet written last commits the chunk).
CHUNK_COLUMNS = ["path", "sha256", "width", "height"]


class VectorPool:
    """Vectors already computed, found by the sha256 of the image bytes."""

    def __init__(self):
        self._where: dict[str, tuple[np.ndarray, int, int, int]] = {}

    def add(self, vectors: np.ndarray, table: pd.DataFrame) -> None:
        for row, (sha, w, h) in enumerate(zip(table["sha256"], table["width"], table["height"])):
            self._where.setdefault(sha, (vectors, row, int(w), int(h)))

    def __contains__(self, sha: str) -> bool:
        return sha in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, sha: str) -> tuple[np.ndarray, int, int]:
        vectors, row, w, h = self._where[sha]
        return vectors[row], w, h


class PartialWork:
    """The ``.partial`` folder of a run: checkpoints of an embedding run in progress, kept
    only for the same vector key (the run folder's lock keeps other writers out)."""

    def __init__(self, run_dir: str | Path, vector_key: str):
        self.key = {"vector_key": vector_key}
        self.folder = Path(run_dir) / PARTIAL

    def start(self) -> None:
        """Keep checkpoints made with the same key; throw away any others."""
        if self.folder.exists() and runfolder.read_json(self.folder / "key.json") != self.key:
            self.discard()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "key.json").exists():
            write_json(self.folder / "key.json", self.key)

    def chunks(self):
        """(vectors, table) of every committed chunk, vectors memory-mapped."""
        for table_path in sorted(self.folder.glob("chunk_*.parquet")):
            vectors = np.load(table_path.with_suffix(".npy"), mmap_mode="r")
            table = pd.read_parquet(table_path)
            if len(table) == len(vectors):
                yield vectors, table

    def write_chunk(self, vectors: np.ndarray, table: pd.DataFrame) -> None:
        number = len(list(self.folder.glob("chunk_*.parquet")))
        name = f"chunk_{number:06d}"
        with runfolder.atomic_path(self.folder / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(vectors, dtype=np.float32))
        write_table(self.folder / f"{name}.parquet", table[CHUNK_COLUMNS])

    def discard(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
