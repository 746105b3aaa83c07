"""The "ray" engine of ``embed.embed_folder``: the local engine's code in a Ray actor pool.

Ray Data spreads the file paths over an actor pool; each actor loads the model once
(``EmbeddingOptions.embedder``, one TFLite thread per actor CPU) and, per
batch, reads, hashes and decodes its files with ``decode.read_and_decode`` -- the local
engine's function, so a file fails for the same reason either way -- and runs the model.
The driver receives the results as they come and checkpoints them like the local engine.

Files are read by the workers (a file that cannot be read becomes a skipped row, not a
failed job), so on a cluster every node must see ``image_dir`` at the same path (a shared
mount). Ray joins the cluster at ``RAY_ADDRESS`` when it is set, else starts afresh on this
machine. Ray is the optional extra ``pip install .[scale]``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .decode import Embedded, read_and_decode


def start_ray():
    """Connect to ``RAY_ADDRESS`` or start Ray on this machine (once per process)."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("engine='ray' needs Ray: pip install 'lookalike[scale]' "
                          "(or pip install 'ray[data]')") from exc
    if not ray.is_initialized():
        # without RAY_ADDRESS, always a new Ray on this machine: never a cluster that some
        # earlier `ray start` left recorded in /tmp/ray (it may be long gone, and ray.init hangs)
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    return ray


class EmbedActor:
    """One model per worker; called with a batch of paths, returns a row per path."""

    def __init__(self, root: str, options: dict, runtime: str, cache: str | None = None):
        from .options import EmbeddingOptions

        if cache:  # where the driver keeps converted models (same path on a shared disk)
            os.environ.setdefault("LOOKALIKE_CACHE", cache)
        self.root, self.options = Path(root), EmbeddingOptions(**options)
        self.model = self.options.embedder(runtime, threads=1).warm_up()

    def __call__(self, batch: dict) -> dict:
        decoded = [read_and_decode(self.root, str(path), self.model.image_size, self.options.resize,
                                   self.options.max_pixels) for path in batch["path"]]
        ok = np.array([d.pixels is not None for d in decoded], dtype=bool)
        vectors = np.full((len(decoded), self.model.dim), np.nan, np.float32)
        if ok.any():
            vectors[ok] = self.model(np.stack([d.pixels for d in decoded if d.pixels is not None]))
        return {
            "path": np.array([d.path for d in decoded], dtype=object),
            "sha256": np.array([d.sha256 for d in decoded], dtype=object),
            "width": np.array([d.width for d in decoded], dtype=np.int64),
            "height": np.array([d.height for d in decoded], dtype=np.int64),
            "reason": np.array([d.reason for d in decoded], dtype=object),
            "runtime": np.array([self.model.runtime] * len(decoded), dtype=object),
            "vector": vectors,
        }


def ray_batches(root: Path, paths: list[str], options, runtime: str, batch_size: int,
                workers: int | None = None) -> Iterator[Embedded]:
    """``decode.Embedded`` results for ``paths`` (relative to ``root``), as the actors finish
    them; ``options``: the ``EmbeddingOptions``. ``workers``: actors (default: one per CPU
    of the cluster), one CPU each.
    """
    ray = start_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # embed_folder shows its own bar
    n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    dataset = ray.data.from_items([{"path": p} for p in paths])
    embedded = dataset.map_batches(
        EmbedActor, fn_constructor_kwargs={"root": str(Path(root).resolve()), "options": options.as_dict(),
                                           "runtime": runtime, "cache": os.environ.get("LOOKALIKE_CACHE")},
        batch_size=batch_size, batch_format="numpy", num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=min(n_workers, max(1, len(paths)))))
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        ok = batch["reason"] == ""
        rows = [(str(p), str(s), int(w), int(h)) for p, s, w, h in
                zip(batch["path"][ok], batch["sha256"][ok], batch["width"][ok], batch["height"][ok])]
        failed = [(str(p), str(r)) for p, r in zip(batch["path"][~ok], batch["reason"][~ok])]
        runtime = str(batch["runtime"][0]) if len(batch["runtime"]) else None
        yield Embedded(rows, np.asarray(batch["vector"], np.float32)[ok], failed=failed, runtime=runtime)
