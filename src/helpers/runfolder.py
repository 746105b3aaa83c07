"""The run folder is the architecture: this module names every file of a run, records what
each step's outputs were computed from, commits a step's outputs as a unit, and lets one
writer in at a time.

- **Names.** Every file a step writes or reads is a constant here; nothing else spells one.
- **Records.** Each step's record file (``embed_meta.json``, ``index_choice.json``,
  ``neighbors_meta.json``, ``metrics.json``) holds ``computed_from``: for 01 the embedding
  options' key and the catalog's state, for 02-05 the store's key plus the step's own
  parameters. ``check_current`` refuses an output computed from another store, naming the
  step to re-run.
- **Commits.** A step writes its outputs into ``.staging/<step>/`` and ``commit`` switches
  them in: a ``COMMIT`` list written last in staging makes the new set the truth; the files
  are then renamed into place, the record last. Killed before the list, the previous set is
  untouched; killed after it, ``settle`` (run by every step and reader) finishes the move.
- **One writer.** ``lock`` takes an exclusive ``flock`` on ``.lock``; a second writer fails at
  once with the holder's pid, host and start time. The kernel frees the lock of a process
  that died, so a stale lock is simply taken over.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

# 01 embed: the embeddings store
EMBEDDINGS = "embeddings.npy"        # float32 (N, D), L2-normalised, row i <-> row i of ITEMS
ITEMS = "items.parquet"              # row, path, imageName, productId, sha256, width, height
SKIPPED = "skipped.csv"              # path, reason: files that could not be used
EMBED_META = "embed_meta.json"       # 01's record: options, catalog state, versions, timings
WHITENING = "whitening.npz"          # postprocess="whiten" or adapt="whiten-pairs": the learned transform
ADAPTATION_PAIRS = "adaptation_pairs.npz"  # adapt: the edited copies' vectors it learned from, with their key
PARTIAL = ".partial"                 # checkpoints of an embedding run in progress
# 02 index sweep
SWEEP = "sweep.csv"
INDEX_CHOICE = "index_choice.json"   # 02's record and recommendation for 03
# 03 neighbours
NEAREST_NEIGHBORS = "nearest_neighbors.json"  # the reference's format, what apps read
NEIGHBORS = "neighbors.parquet"
NEAR_DUPLICATES = "near_duplicates.csv"
CANDIDATES = "neighbor_candidates.npy"          # image-level candidate rows, for a refresh
CANDIDATE_ITEMS = "neighbor_candidate_items.parquet"
NEIGHBORS_META = "neighbors_meta.json"         # 03's record
DUPLICATE_GROUPS = "duplicate_groups.csv"      # near-duplicates gathered into groups, with a keeper
CLUSTERS = "clusters.parquet"                  # every image's visual cluster and its place on the map
CALIBRATION_PAIRS = "duplicate_calibration.parquet"  # the pairs that set the rule (03's curve)
CALIBRATION = "duplicate_calibration"          # cache: edited copies that calibrate the rule ...
CALIBRATION_COPIES = "copies.npz"              # ... and their vectors, with the key they were made for
KEYPOINTS = "keypoints"                        # cache: ORB keypoints by sha256 (helpers.verify) ...
INLIERS = "inliers.parquet"                    # ... and the matches of pairs already checked ...
ALIGNMENTS = "alignments.parquet"              # ... and their alignment (verify.alignment)
SQLITE = "neighbors.sqlite"                    # export: the run's own database
ELASTICSEARCH = "elasticsearch"                # export: a folder with the index mapping and documents
ES_MAPPING, ES_DOCUMENTS, ES_README = "mapping.json", "products.ndjson", "README.txt"
# 04 grids
GRIDS = "grids"
GROUP_GRIDS = "groups"                          # inside GRIDS: one review grid per duplicate group
CLUSTER_GRIDS = "clusters"                      # inside GRIDS: one grid per visual cluster
NEIGHBOR_MAP = "neighbor_map.jpg"               # the t-SNE map, coloured by cluster
THUMBS = "thumbs"
CATALOG_MAP = "catalog_map.jpg"
# 05 evaluate
METRICS = "metrics.json"                        # 05's record
NEAR_DUPLICATE_BENCHMARK = "benchmark_near_duplicates"
BENCHMARK_RUN = "run"                           # inside it: the benchmark's own run folder
BENCHMARK_LABELS = "labels.csv"
CATALOG = "image_data.json"                     # a catalog this package writes (benchmarks)
# the runner
NOTEBOOKS = "notebooks"
REPORT = "report.html"
EXPLORER = "explorer.html"                      # the page to browse the run (helpers.explorer)
LOG = "run.log"                                 # library and kernel chatter, not the terminal
SWEEP_SUMMARY = "sweep_summary.csv"
SWEEP_PAGE = "sweep_summary.html"
LOCK = ".lock"
STAGING = ".staging"

# what a run writes at its top level: never part of the catalog when run_dir is image_dir
OWN_ENTRIES = frozenset({EMBEDDINGS, ITEMS, SKIPPED, EMBED_META, WHITENING, PARTIAL, SWEEP, INDEX_CHOICE,
                         NEAREST_NEIGHBORS, NEIGHBORS, NEAR_DUPLICATES, CANDIDATES, CANDIDATE_ITEMS,
                         NEIGHBORS_META, DUPLICATE_GROUPS, CLUSTERS, CALIBRATION_PAIRS, CALIBRATION, KEYPOINTS,
                          SQLITE, ELASTICSEARCH, GRIDS, THUMBS, CATALOG_MAP, NEIGHBOR_MAP, METRICS,
                         NEAR_DUPLICATE_BENCHMARK, NOTEBOOKS, REPORT, EXPLORER, LOG, SWEEP_SUMMARY, SWEEP_PAGE,
                         LOCK, STAGING})
STORE_FILES = (EMBEDDINGS, ITEMS, SKIPPED, EMBED_META)  # what a sweep copies to share a store
RECORDS = {"embed": EMBED_META, "index": INDEX_CHOICE, "neighbors": NEIGHBORS_META, "evaluate": METRICS}
RERUN = {"embed": "01_embed", "index": "02_index_sweep", "neighbors": "03_neighbors", "evaluate": "05_evaluate"}
RUN_TOKEN = "LOOKALIKE_RUN_TOKEN"  # the runner's lock, handed to the notebooks it starts


class StaleError(RuntimeError):
    """An input was computed from another store than the run folder holds now."""


class RunFolderBusy(RuntimeError):
    """Another process is writing this run folder."""


# --- writing files ----------------------------------------------------------------------
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
    """``mkstemp`` beside ``path``, with the mode any file the user writes gets (0666 less
    the umask), not tempfile's private 0600: a shared folder or web server must read it."""
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


def read_json(path: str | Path) -> dict:
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write_table(path: str | Path, frame) -> None:
    """Write a frame as parquet or CSV (by extension), atomically."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".parquet"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def key_of(obj) -> str:
    """A short stable hash of a JSON-able value (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- commits ----------------------------------------------------------------------------
class Staging:
    """A step's new outputs, written beside the run and switched in together by ``commit``."""

    def __init__(self, run_dir: str | Path, step: str):
        self.run_dir, self.step = Path(run_dir), step
        self.folder = self.run_dir / STAGING / step
        shutil.rmtree(self.folder, ignore_errors=True)  # an uncommitted attempt: not the truth
        self.folder.mkdir(parents=True)

    def path(self, name: str) -> Path:
        return self.folder / name

    def commit(self, record: dict, remove: tuple[str, ...] = ()) -> None:
        """Write the step's record, then make the staged files (and the removal of
        ``remove``) the run's, all or nothing."""
        write_json(self.folder / RECORDS[self.step], record)
        staged = sorted(p.name for p in self.folder.iterdir() if p.name != RECORDS[self.step]
                        and not p.name.startswith("."))
        write_json(self.folder / "COMMIT", {"move": staged + [RECORDS[self.step]], "remove": list(remove)})
        _finish(self.folder, self.run_dir)


def _finish(folder: Path, run_dir: Path) -> None:
    """Roll a committed staging folder forward (idempotent: a second caller finds less to do)."""
    plan = read_json(folder / "COMMIT")
    record = plan["move"][-1]
    if (folder / record).exists():  # not yet moved: the old record must not vouch for a mixed set
        (run_dir / record).unlink(missing_ok=True)
    for name in plan["remove"]:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for name in plan["move"]:
        try:
            os.replace(folder / name, run_dir / name)
        except FileNotFoundError:  # moved already, by us before a crash or by another reader
            pass
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # .staging goes when nothing is left in it
    except OSError:
        pass


def settle(run_dir: str | Path) -> None:
    """Finish any commit a killed step left half-moved, and drop uncommitted staging. Only
    a writer does this (``lock`` calls it); a reader gets the writer's turn when it is free."""
    if not (Path(run_dir) / STAGING).is_dir():
        return
    try:
        with lock(run_dir, "settle"):
            pass
    except (RunFolderBusy, OSError):  # someone is writing (they will settle), or read-only
        pass


def _settle_as_writer(run_dir: Path) -> None:
    staging = run_dir / STAGING
    if not staging.is_dir():
        return
    for folder in staging.iterdir():
        if (folder / "COMMIT").exists():
            _finish(folder, run_dir)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    try:
        staging.rmdir()
    except OSError:
        pass


# --- records ----------------------------------------------------------------------------
def record(run_dir: str | Path, step: str) -> dict:
    """The record of ``step`` (its meta file), after settling the folder; {} if it never ran."""
    settle(run_dir)
    return read_json(Path(run_dir) / RECORDS[step])


def store_key(run_dir: str | Path) -> str | None:
    """The key of the embeddings store the run folder holds now (None: no store)."""
    return record(run_dir, "embed").get("computed_from", {}).get("store_key")


def check_current(run_dir: str | Path, step: str, reader: str) -> dict:
    """``step``'s record, refused when it was computed from another store than the current."""
    found = record(run_dir, step)
    if not found:
        raise FileNotFoundError(f"{Path(run_dir) / RECORDS[step]} is missing: run {RERUN[step]} first")
    current = store_key(run_dir)
    if found.get("computed_from", {}).get("store_key") != current:
        raise StaleError(f"{reader}: {Path(run_dir) / RECORDS[step]} was computed from another embeddings "
                         f"store than {run_dir} holds now (01 ran since): re-run {RERUN[step]}")
    return found


# --- one writer -------------------------------------------------------------------------
_HELD: dict[Path, list] = {}  # run folders this process writes: [fd, depth]


@contextmanager
def lock(run_dir: str | Path, step: str):
    """Be the only writer of ``run_dir`` while the block runs (re-entrant in one process;
    a runner's notebooks share its lock through ``RUN_TOKEN``)."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        _HELD[run_dir][1] += 1
        try:
            yield
        finally:
            _HELD[run_dir][1] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        token = os.environ.get(RUN_TOKEN)
        if token and holder.get("token") == token:  # our runner holds it for us
            with _writing(run_dir, None):
                yield
            return
        raise RunFolderBusy(
            f"{run_dir} is being written by another run ({holder.get('step', '?')}: pid {holder.get('pid', '?')} "
            f"on {holder.get('host', '?')}, since {holder.get('started', '?')}); wait for it to finish "
            "or choose another run_dir") from None
    _write_holder(fd, step)
    try:
        with _writing(run_dir, fd):
            yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def _writing(run_dir: Path, fd: int | None):
    """This process writes ``run_dir`` now: finish what a killed writer left, then work."""
    _HELD[run_dir] = [fd, 1]
    try:
        _settle_as_writer(run_dir)
        yield
    finally:
        del _HELD[run_dir]


def _write_holder(fd: int, step: str) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "step": step,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "token": os.environ.get(RUN_TOKEN)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
