"""Geometric verification of near-duplicate candidates: do two pictures show the same
object, seen through a crop, a mirror, a rotation, a resize or a new background?

Each picture gets ORB keypoints (OpenCV; no weights), of itself and of its mirror image,
computed on a copy whose longer side is ``SIDE`` px. Two pictures are matched with
Lowe's ratio test, then RANSAC fits an affine map (rotation, scale, shear and aspect change);
the count of matches that agree with it (``inliers``) is the evidence. Unrelated pictures
agree on a handful by chance; copies on dozens to hundreds.

A second check, ``alignment``, needs no keypoints: each picture is also kept as an
``ALIGN_SIDE`` px grey thumbnail (squashed to a square, so an aspect change is undone) with
the mask of its object (the pixels unlike its border, as 05's generator cuts products out).
One picture's object, at ``ALIGN_SCALES`` of its size, slides over the other picture, either
way round, then the larger object mirrored; the best zero-mean normalised correlation over the
object's pixels (OpenCV's masked matchTemplate) is the score. A product pasted on a new
background, resized, recoloured, squashed or mirrored scores about
0.85-1.0 against its original, different photos 0.3-0.5: this is what finds smooth renders,
whose few keypoints a new background changes. Different renders lit the same way can reach
0.9, so the level that counts is calibrated (``duplicates.calibrate``), like the inliers'.

Keypoints and thumbnails are cached under ``run_dir/keypoints/`` by the file's sha256, so a
refresh only computes new images.
"""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from . import images, runfolder

SIDE = 512           # keypoints are found on a copy this long: copies at any size compare alike
N_FEATURES = 700     # ORB keypoints per picture (matching costs grow with the square)
FAST_THRESHOLD = 7   # corner contrast: lower than ORB's 20, so smooth pictures (renders, retinas) get keypoints too
CANDIDATES = 3       # corners found per keypoint kept, before spreading them ...
GRID = 4             # ... over a GRID x GRID layout
RATIO = 0.8          # Lowe's ratio test: best match clearly better than the second
RANSAC_PX = 6.0      # reprojection error allowed, in SIDE-px pixels
REVERSE_FROM = 3     # matched the other way too from this many inliers ...
PLENTY = 60          # ... up to this many (no rule asks for more: duplicates.INLIER_STEPS)
FLOOR = 0.5          # pairs less similar than this are never checked
MIN_SIDE = 32        # keypoints need a picture at least this wide and high (after resizing)
ALIGN_SIDE = 64      # alignment: thumbnails this size, squashed to a square
ALIGN_SCALES = (0.55, 0.6, 0.66, 0.72, 0.79, 0.86, 0.93, 1.0, 1.08, 1.16)  # of the object's size
MIN_OBJECT = 0.03    # an object smaller than this share of its picture is not aligned
FLAT = 2.0           # an object whose pixels vary less than this (0-255) has nothing to align
ENOUGH = 0.98        # alignment this good ends the search: no rule asks for more (duplicates.ALIGNMENT_STEPS)
VERSION = 9          # bump when the keypoints change: the cache is named by it


class Keypoints:
    """Points (n, 2) and ORB descriptors (n, 32) of a picture and of its mirror image, and its
    ``ALIGN_SIDE`` px grey thumbnail with the mask of its object (for ``alignment``)."""

    FIELDS = ("points", "descriptors", "mirror_points", "mirror_descriptors", "thumbnail", "mask")

    def __init__(self, points, descriptors, mirror_points, mirror_descriptors, thumbnail, mask):
        self.points, self.descriptors = points, descriptors
        self.mirror_points, self.mirror_descriptors = mirror_points, mirror_descriptors
        self.thumbnail, self.mask = thumbnail, mask

    @classmethod
    def of(cls, picture) -> "Keypoints":
        """From a PIL image or an RGB/gray uint8 array."""
        import cv2
        from PIL import Image

        im = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture))
        gray = _gray(im)
        orb = cv2.ORB_create(N_FEATURES * CANDIDATES, fastThreshold=FAST_THRESHOLD)
        found = [_detect(orb, g) for g in (gray, np.ascontiguousarray(gray[:, ::-1]))]
        return cls(*found[0], *found[1], *_thumbnail(im))

    def save(self, path: Path) -> None:
        with runfolder.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{name: getattr(self, name) for name in self.FIELDS})

    @classmethod
    def load(cls, path: Path) -> "Keypoints":
        with np.load(path) as f:
            return cls(*(f[name] for name in cls.FIELDS))


def _thumbnail(im) -> tuple[np.ndarray, np.ndarray]:
    """(ALIGN_SIDE, ALIGN_SIDE) uint8 grey thumbnail, squashed to a square (transparency
    flattened on white), and the boolean mask of its object: the colour pixels unlike its border."""
    from PIL import Image

    from .edits import foreground_mask

    small = images.to_rgb(im).resize((ALIGN_SIDE, ALIGN_SIDE), Image.BOX, reducing_gap=3.0)
    return np.asarray(small.convert("L"), np.uint8), foreground_mask(small)


def _gray(im) -> np.ndarray:
    from PIL import Image

    im = images.to_rgb(im).convert("L")
    longest = max(im.size)
    target = min(SIDE, max(SIDE // 2, longest))  # larger ones shrunk; small ones enlarged, so ORB has room
    if target != longest:
        scale = target / longest
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    return np.asarray(im)


def _detect(orb, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if min(gray.shape) < MIN_SIDE:  # a thin strip: no room for ORB's patches (its pyramid fails on it)
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    found, descriptors = orb.compute(gray, _spread(orb.detect(gray, None), gray.shape))
    if descriptors is None or not found:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.array([k.pt for k in found], np.float32), descriptors


def _spread(found, shape) -> list:
    """At most N_FEATURES keypoints, spread over a GRID x GRID layout: the strongest of each
    cell first, so a busy background cannot take every keypoint from the product on it."""
    if len(found) <= N_FEATURES:
        return list(found)
    h, w = shape
    cell = [min(GRID - 1, int(k.pt[1] * GRID / h)) * GRID + min(GRID - 1, int(k.pt[0] * GRID / w)) for k in found]
    order = np.argsort([-k.response for k in found], kind="stable")
    quota, taken, chosen, rest = N_FEATURES // (GRID * GRID), np.zeros(GRID * GRID, int), [], []
    for i in order:
        if taken[cell[i]] < quota:
            taken[cell[i]] += 1
            chosen.append(found[i])
        else:
            rest.append(found[i])
    return chosen + rest[:N_FEATURES - len(chosen)]


def inliers(a: Keypoints, b: Keypoints) -> int:
    """Matches of ``a`` and ``b`` that one affine map explains; b's mirror image is tried too.
    Matched from a to b, and also from b to a when that found some evidence but not plenty
    (the ratio test depends on which side has the clutter)."""
    best = max(_inliers(a.points, a.descriptors, b.points, b.descriptors),
               _inliers(a.points, a.descriptors, b.mirror_points, b.mirror_descriptors))
    if REVERSE_FROM <= best < PLENTY:
        best = max(best, _inliers(b.points, b.descriptors, a.points, a.descriptors),
                   _inliers(b.mirror_points, b.mirror_descriptors, a.points, a.descriptors))
    return best


def _inliers(pa, da, pb, db) -> int:
    import cv2

    if len(da) < 3 or len(db) < 3:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 3:
        return 0
    src = pa[[m.queryIdx for m in good]]
    dst = pb[[m.trainIdx for m in good]]
    model, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                       maxIters=2000, confidence=0.99, refineIters=0)
    if model is None or mask is None:
        return 0
    return int(mask.sum()) if _plausible(model) else 0


def alignment(a: Keypoints, b: Keypoints) -> float:
    """The best correlation of one picture's object, resized and moved, with the other
    picture's pixels, either way round, then the larger object mirrored: about 1 for a copy,
    -1 when neither has an object. The search stops at ``ENOUGH``."""
    mirrored = (a, b) if a.mask.sum() >= b.mask.sum() else (b, a)
    best = -1.0
    for first, second, mirror in ((a, b, False), (b, a, False), (*mirrored, True)):
        best = max(best, _aligned(first, second, mirror))
        if best >= ENOUGH:
            break
    return best


def _aligned(a: Keypoints, b: Keypoints, mirror: bool) -> float:
    import cv2

    rows, cols = np.nonzero(a.mask)
    if len(rows) < MIN_OBJECT * a.mask.size:
        return -1.0
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    template, weight = a.thumbnail[box].astype(np.float32), a.mask[box].astype(np.float32)
    if mirror:
        template, weight = np.ascontiguousarray(template[:, ::-1]), np.ascontiguousarray(weight[:, ::-1])
    picture, best = b.thumbnail.astype(np.float32), -1.0
    for scale in ALIGN_SCALES:
        h, w = round(template.shape[0] * scale), round(template.shape[1] * scale)
        if not (4 <= h <= picture.shape[0] and 4 <= w <= picture.shape[1]):
            continue
        sized = cv2.resize(template, (w, h), interpolation=cv2.INTER_AREA)
        kept = cv2.resize(weight, (w, h), interpolation=cv2.INTER_NEAREST)
        if kept.sum() < 16 or sized[kept > 0].std() < FLAT:
            continue
        scores = cv2.matchTemplate(picture, sized, cv2.TM_CCOEFF_NORMED, mask=kept)
        scores = scores[np.isfinite(scores)]
        if scores.size:
            best = max(best, float(scores.max()))
    return best


def _plausible(model: np.ndarray) -> bool:
    """An affine map a copy could have gone through: no collapse, no extreme stretch."""
    if not np.isfinite(model).all():
        return False
    singular = np.linalg.svd(model[:, :2], compute_uv=False)
    return singular[1] > 0.2 and singular[0] / max(singular[1], 1e-9) < 3.0


class KeypointCache:
    """Keypoints of a run's images, kept in ``run_dir/keypoints/`` by sha256."""

    def __init__(self, run_dir: str | Path, image_dir: str | Path):
        self.folder = Path(run_dir) / runfolder.KEYPOINTS / f"v{VERSION}"
        self.image_dir = Path(image_dir)
        self.computed = 0
        self._scores: dict[str, dict] = {}  # cache file name -> {(sha_a, sha_b): score}

    def pair_inliers(self, pairs: list[tuple[str, str]], keypoints: dict) -> np.ndarray:
        """``pair_inliers``, remembering every pair's count in the cache (a refresh matches
        only new pairs)."""
        return np.asarray(self._remembered(runfolder.INLIERS, pairs, keypoints, pair_inliers), np.int32)

    def pair_alignment(self, pairs: list[tuple[str, str]], keypoints: dict) -> np.ndarray:
        """``pair_alignment``, remembered in the cache like the inliers."""
        return np.asarray(self._remembered(runfolder.ALIGNMENTS, pairs, keypoints, pair_alignment), np.float32)

    def _remembered(self, name: str, pairs: list, keypoints: dict, compute) -> list:
        known = self._known(name)
        fresh = [p for p in dict.fromkeys(pairs) if p not in known]
        if fresh:
            known.update(zip(fresh, compute(fresh, keypoints).tolist()))
            frame = pd.DataFrame([(a, b, n) for (a, b), n in known.items()], columns=["a", "b", "score"])
            self._ready()
            runfolder.write_table(self.folder / name, frame)
        return [known[p] for p in pairs]

    def _known(self, name: str) -> dict:
        if name not in self._scores:
            path = self.folder / name
            try:
                frame = pd.read_parquet(path) if path.exists() else None
            except (OSError, ValueError):
                frame = None  # a damaged cache: matched again
            self._scores[name] = {} if frame is None else dict(zip(zip(frame["a"], frame["b"]), frame["score"]))
        return self._scores[name]

    def get(self, path: str, sha256: str) -> Keypoints | None:
        """The image's keypoints, from the cache or computed (None: it cannot be read now)."""
        file = self.folder / f"{sha256}.npz"
        if file.exists():
            try:
                return Keypoints.load(file)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file is computed again
        try:
            found = Keypoints.of(images.open_image(self.image_dir / path))
        except (images.ImageError, OSError):
            return None
        self._ready()
        found.save(file)
        self.computed += 1
        return found

    def _ready(self) -> None:
        """The cache folder made; on the first write, those of other versions removed (stale)."""
        if not self.folder.is_dir():
            for old in self.folder.parent.glob("v*"):
                if old.is_dir() and old.name != self.folder.name:
                    shutil.rmtree(old, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)

    def many(self, paths, hashes, workers: int = 2) -> dict[str, Keypoints | None]:
        """Keypoints of many images (two threads: OpenCV releases the GIL), by sha256."""
        import cv2

        cv2.setNumThreads(1)  # our threads are the parallelism: OpenCV's own would oversubscribe
        wanted = dict(zip(hashes, paths))
        with ThreadPoolExecutor(max(1, workers)) as pool:
            found = pool.map(lambda item: self.get(item[1], item[0]), wanted.items())
            return dict(zip(wanted, found))


def pair_inliers(pairs: list[tuple[str, str]], keypoints: dict, workers: int = 2) -> np.ndarray:
    """Inlier counts of (sha_a, sha_b) pairs, in threads; 0 where either picture has no keypoints."""
    return _per_pair(inliers, 0, np.int32, pairs, keypoints, workers)


def pair_alignment(pairs: list[tuple[str, str]], keypoints: dict, workers: int = 2) -> np.ndarray:
    """``alignment`` of (sha_a, sha_b) pairs, in threads; -1 where either picture could not be read."""
    return _per_pair(alignment, -1.0, np.float32, pairs, keypoints, workers)


def _per_pair(score, missing, dtype, pairs: list, keypoints: dict, workers: int) -> np.ndarray:
    import cv2

    cv2.setNumThreads(1)  # our threads are the parallelism

    def one(pair):
        ka, kb = keypoints.get(pair[0]), keypoints.get(pair[1])
        return missing if ka is None or kb is None else score(ka, kb)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return np.fromiter(pool.map(one, pairs, chunksize=64), dtype, count=len(pairs))
