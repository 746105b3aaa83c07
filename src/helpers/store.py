"""The embeddings store in a run folder: what 01_embed writes and every later step reads.

- ``embeddings.npy``  float32 (N, D), L2-normalised, row i <-> row i of items.parquet
- ``items.parquet``   row, path, imageName, productId, sha256, width, height
- ``skipped.csv``     path, reason (files that could not be used)
- ``embed_meta.json`` model, dim, preprocessing, versions, timings

Every file is written under a temporary name and renamed into place, so a file that
exists is complete.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

EMBEDDINGS = "embeddings.npy"
ITEMS = "items.parquet"
SKIPPED = "skipped.csv"
META = "embed_meta.json"
WHITENING = "whitening.npz"  # 01's postprocess="whiten" (helpers.whitening)
ITEM_COLUMNS = ["row", "path", "imageName", "productId", "sha256", "width", "height"]


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc)."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_file(path: Path) -> tuple[int, str]:
    """``mkstemp`` beside ``path``, but with the mode any file the user writes gets (0666
    less the umask), not tempfile's private 0600: a shared folder or web server must read it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")


def write_table(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a frame as parquet or CSV (by extension), atomically."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".parquet"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


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

    def __init__(self, run_dir: str | Path, dim: int):
        self.path = Path(run_dir) / EMBEDDINGS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dim, self.rows = dim, 0
        self._header_len = len(_npy_header(0, dim))
        fd, self._tmp = temporary_file(self.path)
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


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


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
    return json.loads((Path(run_dir) / META).read_text(encoding="utf-8"))


def load_store(run_dir: str | Path, postprocessed: bool = True):
    """(embeddings, items, meta) of a run, checked to be consistent with each other.

    With ``postprocessed`` (the default, what every reader wants) the run's learned
    post-processing (``whitening.npz``, 01's ``postprocess="whiten"``) is applied; without
    it the vectors are as the model pooled them (what incremental embedding reuses).
    """
    run_dir = Path(run_dir)
    missing = [n for n in (EMBEDDINGS, ITEMS, META) if not (run_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: {', '.join(missing)} missing; run 01_embed first")
    embeddings, items, meta = load_embeddings(run_dir), load_items(run_dir), load_meta(run_dir)
    if len(embeddings) != len(items):
        raise ValueError(f"{run_dir}: {len(embeddings)} embeddings but {len(items)} items; "
                         "the store is inconsistent, re-run 01_embed")
    if postprocessed and meta.get("postprocess", "none") == "whiten":
        from . import whitening

        embeddings = whitening.Whitening.load(whitening.path_in(run_dir)).apply(embeddings)
    return embeddings, items, meta


# --- resumable and incremental embedding ----------------------------------------------
# Work in progress lives in run_dir/.partial/: "key.json" (model and preprocessing), chunks
# of new vectors ("chunk_NNNNNN.npy" + ".parquet", the parquet written last commits the
# chunk), and, once assembled, the final files plus "assembled.json" (the meta). Moving the
# assembled files into place is replayed on the next start if a run dies half-way.
PARTIAL = ".partial"
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
    """The ``.partial`` folder of a run: checkpoints of an embedding run in progress."""

    def __init__(self, run_dir: str | Path, key: dict):
        self.run_dir, self.key = Path(run_dir), key
        self.folder = self.run_dir / PARTIAL

    def _key_matches(self) -> bool:
        path = self.folder / "key.json"
        return path.exists() and json.loads(path.read_text()) == self.key

    def start(self) -> None:
        """Keep checkpoints made with the same key; throw away any others."""
        if self.folder.exists() and not self._key_matches():
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
        with atomic_path(self.folder / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(vectors, dtype=np.float32))
        write_table(self.folder / f"{name}.parquet", table[CHUNK_COLUMNS])

    def commit(self, items: pd.DataFrame, skipped: pd.DataFrame, meta: dict) -> None:
        """Assembled files are in .partial (embeddings.npy written by the caller): move them in."""
        write_table(self.folder / ITEMS, items)
        write_table(self.folder / SKIPPED, skipped)
        write_json(self.folder / "assembled.json", meta)
        self.recover()

    def recover(self) -> bool:
        """Finish moving an assembled store into place; True if there was one."""
        marker = self.folder / "assembled.json"
        if not marker.exists():
            return False
        meta = json.loads(marker.read_text())
        (self.run_dir / META).unlink(missing_ok=True)  # incomplete until all files are in place
        if meta.get("postprocess", "none") != "whiten":
            (self.run_dir / WHITENING).unlink(missing_ok=True)
        for name in (EMBEDDINGS, ITEMS, SKIPPED, WHITENING):
            if (self.folder / name).exists():
                os.replace(self.folder / name, self.run_dir / name)
        write_json(self.run_dir / META, meta)
        self.discard()
        return True

    def discard(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
