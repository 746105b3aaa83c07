"""Thumbnails of a run's images, made once and cached in ``run_dir/thumbs/<size>/`` (``runfolder.THUMBS``).

Named by the sha256 of the image bytes, so identical files share one thumbnail and a
re-run reuses every thumbnail whose image did not change.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from . import runfolder, store
from .images import thumbnail


def thumbnail_paths(run_dir: str | Path, size: int = 160, workers: int | None = None) -> list[Path]:
    """One cached JPEG thumbnail per item row (missing ones are made, in threads)."""
    run_dir = Path(run_dir)
    items, meta = store.load_items(run_dir), store.load_meta(run_dir)
    root, folder = Path(meta["image_dir"]), run_dir / runfolder.THUMBS / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / f"{digest}.jpg" for digest in items["sha256"]]
    todo = {t: root / p for t, p in zip(targets, items["path"]) if not t.exists()}

    def make(target: Path) -> None:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        thumbnail(todo[target], size).save(tmp, "JPEG", quality=85)
        os.replace(tmp, target)

    if todo:
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            list(pool.map(make, todo))
    return targets


def open_thumbnail(path: str | Path, size: int) -> Image.Image:
    """A cached thumbnail as an RGB image (a grey tile if it is missing)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError:
        return Image.new("RGB", (size, size), (200, 200, 200))
