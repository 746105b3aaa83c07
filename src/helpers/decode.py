"""Reading and decoding the catalog's files, shared by both engines (local threads, Ray
workers), so a file fails for the same reason either way; and ``Embedded``, what an engine
hands back for some of the files.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images


@dataclass
class Decoded:
    path: str
    pixels: np.ndarray | None = None
    sha256: str = ""
    width: int = 0
    height: int = 0
    reason: str = ""


@dataclass
class Embedded:
    """Vectors for some of the files, and what became of the rest."""

    rows: list  # (path, sha256, width, height) of each row of ``vectors``
    vectors: np.ndarray
    duplicates: list = field(default_factory=list)  # (path, sha256): bytes already embedded
    failed: list = field(default_factory=list)      # (path, reason)
    runtime: str | None = None                      # the model runtime that ran ("tflite" / "tf")
    seconds: float = 0.0                            # model time, when the engine can tell

    @property
    def files(self) -> int:
        return len(self.rows) + len(self.duplicates) + len(self.failed)


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


def hash_files(root: Path, paths: list[str], workers: int) -> list[str | None]:
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


def query_pictures(pictures, size: int, options) -> tuple[list[str], list[np.ndarray]]:
    """(labels, square uint8 pictures) of query photos: paths are decoded exactly like the
    catalog's files (an unreadable one is skipped with a warning), arrays are fitted alike."""
    import warnings

    from PIL import Image

    labels, batch = [], []
    for i, p in enumerate(pictures):
        if isinstance(p, (str, Path)):
            try:
                batch.append(images.decode_image(images.read_file(p), size, options.resize, options.max_pixels)[0])
            except images.ImageError as exc:
                warnings.warn(f"{p}: {exc}; skipped", stacklevel=3)
                continue
            labels.append(str(p))
        else:
            labels.append(f"query {i}")
            picture = p if isinstance(p, Image.Image) else Image.fromarray(np.asarray(p))
            batch.append(np.asarray(images.fit_square(images.to_rgb(picture), size, options.resize)))
    return labels, batch
