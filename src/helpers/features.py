"""How a picture becomes one vector: the embedding options of 01 (``pooling``, ``focus``).

- ``pooling="avg"``: the model's own pooled vector (global average of the last feature map).
- ``pooling="gem"``: generalised mean, (mean of x^p)^(1/p) with p = 3, over the same map:
  between average and max pooling, it lets the strongest (object) activations dominate.
- ``pooling="regional"``: R-MAC's regions (Tolias et al. 2016: squares of 2/(l+1) of the map's
  side at levels l = 1..3, 14 on a 7x7 map), each pooled by GeM and made unit length, then summed:
  every part of the picture has a say at three sizes, however weak its activations. One model pass.
- ``pooling="auto"`` (default): "gem" when the model exports its feature map (the bundled
  EfficientNet-Lite models), else "avg" (TF Hub feature-vector modules).
- ``focus="none"``: the whole (centre-cropped) picture.
- ``focus="object"``: find the product with the model's own activation map (the channel
  sum of the last feature map, as in SCDA: cells above the mean, largest connected blob),
  crop the picture to that box (one cell of margin) and embed the crop.
- ``focus="multi"``: the normalised sum of the whole-picture and object-crop vectors.
- ``focus="center"``: pool the feature map with a Gaussian centre weight (sigma = 1/7 of
  the picture, one cell of the 7x7 map): catalog photos centre the product, so what
  surrounds it (a new background, a scene with other things) counts less. One model pass.
- ``focus="center-zoom"``: the normalised sum of two centre-weighted vectors, of the picture
  and of its central ``ZOOM`` (75%) of the side, enlarged: the product seen at two scales
  with less of the scene around it. Two model passes; the best on products pasted into busy
  scenes (docs/benchmarks.md, "Quality"), with ``hog_weight=0`` (a scene's edges are not the
  product's outline).
- ``hog_weight`` (default ``DEFAULT_HOG_WEIGHT`` = 0.5): append the picture's outline, a HOG
  descriptor (histogram of oriented gradients, Dalal & Triggs 2005) of the same square view
  shrunk to 32x32 grey, summed with its mirror image's (left- and right-facing copies match),
  weighted against the model's unit vector (1 = as much as the model, 0 = off). The cut of a
  product is what the ImageNet features see least: at 0.5 it lifts Fashion-MNIST precision@20
  from 0.827 to 0.844 and near-duplicates overall by up to 0.007, and costs up to 2 of 78
  background swaps (a new background brings new edges); 1.0 suits upright packshots on plain
  backgrounds (0.853), 0 suits products photographed in scenes. No model pass; ``HOG_DIM``
  more numbers per vector.

``Embedder(model, pooling, focus, hog_weight)(batch)`` returns L2-normalised float32 vectors; the
numbers behind the defaults are in docs/benchmarks.md ("Quality").
"""
from __future__ import annotations

import math
import numbers
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .vectors import l2_normalise

POOLINGS = ("auto", "avg", "gem", "regional")
FOCUS = ("none", "object", "multi", "center", "center-zoom")
HOG_SIZE, HOG_CELL, HOG_ORIENTATIONS = 32, 4, 9  # 8x8 cells of 4 px, 2x2-cell blocks
HOG_BLOCKS = HOG_SIZE // HOG_CELL - 1  # 7 x 7 blocks
HOG_DIM = HOG_BLOCKS * (HOG_BLOCKS // 2 * 4 + 2) * HOG_ORIENTATIONS  # 882: the left half of 7 x 7 x 2 x 2 x 9
DEFAULT_HOG_WEIGHT = 0.5
GEM_P = 3.0
CENTER_SIGMA = 1 / 7  # of the picture side
ZOOM = 0.75  # center-zoom: side of the central square, as a share of the picture side
REGION_LEVELS = 3  # pooling="regional": R-MAC's levels


def check_options(pooling: str, focus: str, hog_weight: float = DEFAULT_HOG_WEIGHT) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; choose one of {POOLINGS}")
    if focus not in FOCUS:
        raise ValueError(f"focus={focus!r}; choose one of {FOCUS}")
    if isinstance(hog_weight, bool) or not isinstance(hog_weight, numbers.Real) or not 0 <= hog_weight < math.inf:
        raise ValueError(f"hog_weight={hog_weight!r}; must be a number >= 0 (0 = off, 1 = as much as the model)")


def resolve_pooling(pooling: str, model_handle: str) -> str:
    """What "auto" means for a model handle, without loading it (bundled models: gem)."""
    from .models import EFFICIENTNET_LITE

    if pooling != "auto":
        return pooling
    return "gem" if model_handle in EFFICIENTNET_LITE else "auto"


def gem(feature_map: np.ndarray, p: float = GEM_P, weights: np.ndarray | None = None) -> np.ndarray:
    """Generalised-mean pooling of (N, h, w, c) non-negative activations -> (N, c),
    optionally a weighted mean over the (h, w) cells."""
    x = np.power(np.maximum(feature_map, 1e-6, dtype=np.float32), p)
    return np.power(_mean(x, weights), 1.0 / p)


def _mean(x: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return x.mean(axis=(1, 2))
    return np.einsum("nhwc,hw->nc", x, weights / weights.sum(), dtype=np.float32)


def regions(h: int, w: int, levels: int = REGION_LEVELS) -> list[tuple[int, int, int]]:
    """R-MAC's square regions of an (h, w) map as (top, left, side): at level l, l x l (on a
    square map) squares of side 2 min(h, w) / (l + 1), spread evenly from edge to edge."""
    found = []
    for level in range(1, levels + 1):
        side = max(1, round(2 * min(h, w) / (level + 1)))
        tops = np.unique(np.round(np.linspace(0, h - side, level)).astype(int))
        lefts = np.unique(np.round(np.linspace(0, w - side, level)).astype(int))
        found += [(int(t), int(l), side) for t in tops for l in lefts]
    return list(dict.fromkeys(found))


def regional_gem(feature_map: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The sum of each R-MAC region's unit GeM vector, (N, h, w, c) -> (N, c); with ``weights``
    each region counts by its mean weight (centre weighting)."""
    total = np.zeros((len(feature_map), feature_map.shape[-1]), np.float32)
    for top, left, side in regions(*feature_map.shape[1:3]):
        part = l2_normalise(gem(feature_map[:, top:top + side, left:left + side]))
        total += part * (1.0 if weights is None else float(weights[top:top + side, left:left + side].mean()))
    return total


def center_weights(h: int, w: int, sigma: float = CENTER_SIGMA) -> np.ndarray:
    """(h, w) Gaussian weights around the picture centre; sigma as a share of the side."""
    yy = (np.arange(h) + 0.5) / h - 0.5
    xx = (np.arange(w) + 0.5) / w - 0.5
    return np.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * sigma ** 2)).astype(np.float32)


def object_boxes(feature_map: np.ndarray, margin: int = 1) -> np.ndarray:
    """Per picture, the box (top, left, bottom, right) as fractions of the picture that
    holds its most activated blob of feature-map cells, grown by ``margin`` cells."""
    from scipy import ndimage

    n, h, w, _ = feature_map.shape
    boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (n, 1))
    for i, saliency in enumerate(feature_map.sum(axis=-1)):
        blobs, count = ndimage.label(saliency > saliency.mean())
        if count == 0:
            continue
        weight = ndimage.sum(saliency, blobs, index=np.arange(1, count + 1))
        rows, cols = np.nonzero(blobs == 1 + int(np.argmax(weight)))
        top, bottom = max(0, rows.min() - margin), min(h, rows.max() + 1 + margin)
        left, right = max(0, cols.min() - margin), min(w, cols.max() + 1 + margin)
        boxes[i] = (top / h, left / w, bottom / h, right / w)
    return boxes


def hog_vectors(batch: np.ndarray) -> np.ndarray:
    """(N, HOG_DIM) unit outlines of (N, size, size, 3) uint8 pictures: the HOG of each picture
    shrunk to HOG_SIZE x HOG_SIZE grey (a box filter: every pixel counts, so JPEG noise
    averages out) plus the HOG of its mirror image, so a product facing left and the same
    product facing right get the same outline. That sum is (nearly) mirror-symmetric, so only
    its left half is kept, each number folded with its mirror partner: half the numbers, the
    same cosines (within 0.001 on Fashion-MNIST's precision@20)."""
    from PIL import Image

    grey = np.zeros((len(batch), HOG_SIZE, HOG_SIZE), np.float32)
    for i, picture in enumerate(batch):
        grey[i] = Image.fromarray(picture).convert("L").resize((HOG_SIZE, HOG_SIZE), Image.BOX)
    return l2_normalise(fold_mirror(hog(grey) + hog(grey[:, :, ::-1])))


def hog(grey: np.ndarray) -> np.ndarray:
    """scikit-image's ``hog(picture, HOG_ORIENTATIONS, (HOG_CELL, HOG_CELL), (2, 2), "L2-Hys",
    feature_vector=False)`` for a stack of (N, rows, cols) float32 grey pictures at once:
    (N, block rows, block cols, 2, 2, orientations). scikit-image normalises one block at a
    time in Python, which cost 17% of 01's speed; tests check that the two agree."""
    grey = np.asarray(grey, np.float32)
    g_row, g_col = np.zeros_like(grey), np.zeros_like(grey)
    g_row[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]  # central differences, 0 on the border
    g_col[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
    magnitude = np.hypot(g_col, g_row)
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180  # unsigned, in [0, 180)
    edges = np.arange(HOG_ORIENTATIONS + 1) * (180 / HOG_ORIENTATIONS)
    bins = np.searchsorted(edges, orientation, side="right") - 1  # bin i: [edges[i], edges[i+1])
    votes = magnitude[..., None] * (bins[..., None] == np.arange(HOG_ORIENTATIONS))
    n, rows, cols = grey.shape
    cells = votes[:, :rows // HOG_CELL * HOG_CELL, :cols // HOG_CELL * HOG_CELL].reshape(
        n, rows // HOG_CELL, HOG_CELL, cols // HOG_CELL, HOG_CELL, HOG_ORIENTATIONS).mean(axis=(2, 4))
    br, bc = cells.shape[1] - 1, cells.shape[2] - 1
    blocks = np.stack([np.stack([cells[:, a:a + br, b:b + bc] for b in (0, 1)], axis=3) for a in (0, 1)], axis=3)
    eps2 = np.float32(1e-5) ** 2
    blocks = blocks / np.sqrt((blocks ** 2).sum(axis=(3, 4, 5), keepdims=True) + eps2)  # L2-Hys
    blocks = np.minimum(blocks, np.float32(0.2))
    return blocks / np.sqrt((blocks ** 2).sum(axis=(3, 4, 5), keepdims=True) + eps2)


def fold_mirror(blocks: np.ndarray) -> np.ndarray:
    """(N, HOG_DIM): the left half of each (rows, cols, 2, 2, orientations) HOG plus its mirror
    partner: block column j <-> cols-1-j, cell column c <-> 1-c, orientation bin o <-> n-1-o (an
    edge at angle a becomes one at 180 - a). The middle block column is its own mirror: half
    its cells."""
    both = blocks + blocks[:, :, ::-1, :, ::-1, ::-1]
    middle = blocks.shape[2] // 2
    halves = both[:, :, :middle], both[:, :, middle, :, 0]
    return np.concatenate([half.reshape(len(half), int(np.prod(half.shape[1:]))) for half in halves], axis=1)


def crop_boxes(batch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Crop each (size, size, 3) uint8 picture to its box and resize back to size x size."""
    from PIL import Image

    size = batch.shape[1]
    out = np.empty_like(batch)
    for i, (picture, (top, left, bottom, right)) in enumerate(zip(batch, boxes)):
        box = (left * size, top * size, right * size, bottom * size)
        out[i] = np.asarray(Image.fromarray(picture).resize((size, size), Image.BILINEAR, box=box))
    return out


class Embedder:
    """A loaded model plus the embedding options: ``embedder(uint8 batch) -> unit vectors``."""

    def __init__(self, model, pooling: str = "auto", focus: str = "none",
                 hog_weight: float = DEFAULT_HOG_WEIGHT):
        check_options(pooling, focus, hog_weight)
        if pooling == "auto":
            pooling = "gem" if model.has_feature_map else "avg"
        self.model, self.pooling, self.focus, self.hog_weight = model, pooling, focus, float(hog_weight)
        if (pooling, focus) != ("avg", "none"):
            model.require_feature_map()

    def warm_up(self) -> "Embedder":
        """Run one blank picture through, so one-off work (the TFLite conversion, 2-10 s)
        is done now and not counted as embedding time."""
        self(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))
        return self

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def dim(self) -> int:
        return self.model.dim + (HOG_DIM if self.hog_weight else 0)

    @property
    def runtime(self) -> str:
        return self.model.runtime

    def _pool(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.pooling == "avg" and self.focus == "none":
            return self.model.embed(batch), None
        fmap = self.model.feature_map(batch)
        weights = center_weights(*fmap.shape[1:3]) if self.focus in ("center", "center-zoom") else None
        if self.pooling == "regional":
            return regional_gem(fmap, weights), fmap
        vectors = gem(fmap, weights=weights) if self.pooling == "gem" else _mean(fmap, weights)
        return vectors, fmap

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.hog_weight:
            return self._model_vectors(batch)
        # the outline in a second thread while the model runs (both release the GIL): 0.96x
        # the speed without it, against 0.94x one after the other (benchmarks/option_cost.py)
        with ThreadPoolExecutor(1) as pool:
            outline = pool.submit(hog_vectors, batch)
            vectors = self._model_vectors(batch)
        return l2_normalise(np.hstack([vectors, self.hog_weight * outline.result()]))

    def _model_vectors(self, batch: np.ndarray) -> np.ndarray:
        whole, fmap = self._pool(batch)
        whole = l2_normalise(np.asarray(whole, dtype=np.float32))
        if self.focus in ("none", "center"):
            return whole
        if self.focus == "center-zoom":
            margin = (1 - ZOOM) / 2
            crops = crop_boxes(batch, np.tile([margin, margin, 1 - margin, 1 - margin], (len(batch), 1)))
            return l2_normalise(whole + l2_normalise(np.asarray(self._pool(crops)[0], dtype=np.float32)))
        crops = crop_boxes(batch, object_boxes(fmap))
        obj = l2_normalise(np.asarray(self._pool(crops)[0], dtype=np.float32))
        return obj if self.focus == "object" else l2_normalise(whole + obj)
