"""The local engine: ``workers`` threads in this process, each reading, decoding and
embedding whole batches of files with its own single-thread interpreter. 01 embeds the
catalog with it (``embed``), and the edited copies of 01's adaptation and 03's calibration
are embedded with it too (``copies``), so they get the catalog's speed and exactly its vectors.
Ray's engine is ``distributed``; both read files with ``decode``. ``options`` is always
an ``options.EmbeddingOptions`` (not imported here: ``options`` depends on what uses this).
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from .decode import Embedded, read_and_decode
from .features import Embedder


def local_batches(root: Path, paths: list[str], model: Embedder, options,
                  batch_size: int, workers: int, known) -> Iterator[Embedded]:
    """The local engine: ``workers`` threads, each reading, decoding and embedding whole batches
    with its own interpreter (one model thread each: ``local_model``), like Ray's actors in one
    process. No stage waits for another and no thread pool spins on a busy core: 1.15-1.19x the
    speed of decode threads feeding one model on every core, int8 (benchmarks/embed_throughput.py).

    ``known``: sha256 values already embedded (a file with the same bytes is not run again).
    Results come in path order, at most two batches per worker in flight.
    """
    batches = (paths[i:i + batch_size] for i in range(0, len(paths), batch_size))
    pool, pending = ThreadPoolExecutor(workers, thread_name_prefix="embed"), deque()
    try:
        for batch in batches:
            pending.append(pool.submit(embed_files, root, batch, model, options, known))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # interrupted (Ctrl-C, an error downstream): batches not started are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def embed_files(root: Path, paths: list[str], model: Embedder, options, known) -> Embedded:
    """Read, hash, decode and embed some files in the calling thread; a file that cannot be
    used becomes a reason, and one whose bytes are ``known`` is not run again."""
    rows, pixels, failed, duplicates = [], [], [], []
    for rel in paths:
        d = read_and_decode(root, rel, model.image_size, options.resize, options.max_pixels)
        if d.pixels is None:
            failed.append((d.path, d.reason))
        elif d.sha256 in known:  # same bytes as a file embedded earlier in this run
            duplicates.append((d.path, d.sha256))
        else:
            rows.append((d.path, d.sha256, d.width, d.height))
            pixels.append(d.pixels)
    started = time.perf_counter()
    vectors = model(np.stack(pixels)) if pixels else np.empty((0, model.dim), np.float32)
    return Embedded(rows, vectors, duplicates, failed, runtime=model.runtime,
                    seconds=time.perf_counter() - started)


def local_model(options, runtime: str, workers: int) -> Embedder:
    """The model for ``workers`` threads: the cores shared out, at least one thread each."""
    return options.embedder(runtime, threads=max(1, (os.cpu_count() or 1) // workers))
