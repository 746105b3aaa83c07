"""The near-duplicate generator: edited copies of catalog images, labelled by source.

Sources are catalog images that do not already look alike; each gets copies that are
cropped, mirrored, downscaled and re-encoded, recoloured, heavily compressed, rotated with
filled corners, or put on a new background. ``labels.csv`` says which copy came from which
source, and ``image_data.json`` makes the folder a catalog 01 can embed.
"""
from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from . import images, runfolder, synthetic

TRANSFORMS = ("crop", "flip", "downscale", "color", "jpeg", "rotate", "aspect", "background")
SOURCE_MAX_SIDE = 1024  # benchmark copies of bigger images are shrunk: the model sees 224-260 px
BACKGROUND_MAX_SIDE = 2048  # background photos are shrunk to this once (a zoomed region is used)


def pick_sources(embeddings: np.ndarray, max_similarity: float = 0.9, limit: int | None = None,
                 seed: int = 0) -> np.ndarray:
    """Rows to use as near-duplicate sources: no two of them already look alike.

    A catalog that holds two listings of one item would otherwise turn a right match
    into a miss. Greedy in a seeded random order; at most ``limit`` rows.
    """
    order = np.random.default_rng(seed).permutation(len(embeddings))
    chosen: list[int] = []
    for row in order:
        if chosen and float(np.max(embeddings[chosen] @ embeddings[row])) >= max_similarity:
            continue
        chosen.append(int(row))
        if limit is not None and len(chosen) >= limit:
            break
    return np.sort(np.array(chosen, dtype=np.int64))


@dataclass
class Edited:
    """One picture of the benchmark: a source (transform "source") or an edited copy, with the
    format it is saved in (lossless PNG, or JPEG at ``quality``)."""

    group: str
    source: str      # the source's path under image_dir
    transform: str
    picture: Image.Image
    ext: str         # "png" or "jpg"
    quality: int = 0

    def encoded(self) -> bytes | None:
        """The JPEG file's bytes (None for a PNG: its file decodes to ``picture`` exactly)."""
        if self.ext != "jpg":
            return None
        buffer = io.BytesIO()
        self.picture.save(buffer, format="JPEG", quality=self.quality)
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        if self.ext == "jpg":
            path.write_bytes(self.encoded())
        else:
            self.picture.save(path, compress_level=1)  # lossless either way; fast


def edited_pictures(image_dir: Path, paths: list[str], variants_per_source: int = 2, transforms=TRANSFORMS,
                    backgrounds=None, seed: int = 0, max_side: int = SOURCE_MAX_SIDE) -> Iterator[Edited]:
    """Each readable source (shrunk to ``max_side``), then its ``variants_per_source`` copies,
    transforms in turn (``make_near_duplicates`` says what each does). Seeded: the same
    pictures on any machine. ValueError for an unknown transform, at once."""
    for t in transforms:
        if t not in TRANSFORMS:
            raise ValueError(f"unknown transform {t!r}; choose from {TRANSFORMS}")
    return _edited(image_dir, paths, variants_per_source, transforms, backgrounds, seed, max_side)


def _edited(image_dir, paths, variants_per_source, transforms, backgrounds, seed, max_side) -> Iterator[Edited]:
    rng = np.random.default_rng(seed)
    photo_backgrounds = _BackgroundPhotos(backgrounds)
    turn = 0
    for g, rel in enumerate(paths):
        group = f"G{g:05d}"
        try:
            source = _rgba(images.open_image(Path(image_dir) / rel))
        except Exception:  # an unreadable source is left out, the benchmark goes on
            continue
        source.thumbnail((max_side, max_side), Image.LANCZOS)
        yield Edited(group, rel, "source", images.to_rgb(source), "png")
        for _ in range(variants_per_source):
            transform = transforms[turn % len(transforms)]
            turn += 1
            picture, ext = _variant(source, transform, rng, backgrounds, photo_backgrounds)
            quality = 0
            if ext == "jpg":
                quality = int(rng.integers(25, 41)) if transform == "jpeg" else int(rng.integers(70, 86))
            yield Edited(group, rel, transform, picture, ext, quality)


def make_near_duplicates(image_dir: str | Path, paths: list[str], out_dir: str | Path,
                         variants_per_source: int = 2, transforms=TRANSFORMS,
                         backgrounds: str | Path | None = None, distractors=(),
                         seed: int = 0, max_side: int = SOURCE_MAX_SIDE) -> pd.DataFrame:
    """Turn images into a labelled near-duplicate benchmark in ``out_dir``.

    Each source image is copied (transform "source") and gets ``variants_per_source``
    edited copies, transforms assigned in turn so each is used equally often:
    crop (70-90% of the area), flip, downscale (to 25-50%) + JPEG, color (jitter),
    jpeg (quality 25-40), rotate (3-20 degrees),
    aspect (one side stretched 1.25-1.6x), background (the object composited on a
    new background: the source's alpha where it has one, else a mask of the pixels that
    differ from the colour along its border). Backgrounds are zoomed-in regions of the image
    files in ``backgrounds`` when given, else generated (gradients, stripes, textures, clutter).
    ``distractors`` (paths under ``image_dir``) are copied as unrelated images (transform
    "distractor"): they make the gallery bigger and are never right. Images are read upright
    (EXIF orientation) and shrunk to at most ``max_side`` px; unreadable ones are left
    out (an unreadable background photo gives way to a generated background).

    Writes the images (replacing any earlier ones in ``out_dir/images``), ``labels.csv`` (path, group, transform, source, productId) and
    ``image_data.json`` (JSON lines: every image its own productId), and returns labels.
    """
    image_dir, out = Path(image_dir), Path(out_dir)
    made = edited_pictures(image_dir, paths, variants_per_source, transforms, backgrounds, seed, max_side)
    shutil.rmtree(out / "images", ignore_errors=True)  # images of an earlier, different benchmark
    (out / "images").mkdir(parents=True)
    rows = []
    for edited in made:
        name = f"{edited.group}_{edited.transform}.{edited.ext}"
        edited.save(out / "images" / name)
        rows.append((f"images/{name}", edited.group, edited.transform, edited.source))
    if not rows:
        raise ValueError(f"none of the {len(paths)} source images could be read (does the run have any "
                         "images?): there is no near-duplicate benchmark to build")
    rows += _copy_distractors(image_dir, distractors, out / "images")
    labels = pd.DataFrame(rows, columns=["path", "group", "transform", "source"])
    labels["productId"] = labels["path"].map(lambda p: Path(p).stem)
    _write_labels(labels, out)
    return labels


def _copy_distractors(image_dir: Path, distractors, folder: Path) -> list[tuple]:
    """Unrelated catalog images, copied in (unreadable ones left out): label rows."""
    rows = []
    for d, rel in enumerate(distractors):
        try:
            picture = images.to_rgb(images.open_image(image_dir / rel))
        except Exception:
            continue
        picture.thumbnail((SOURCE_MAX_SIDE, SOURCE_MAX_SIDE), Image.LANCZOS)
        name = f"D{d:05d}_distractor.png"
        picture.save(folder / name, compress_level=1)
        rows.append((f"{folder.name}/{name}", f"D{d:05d}", "distractor", rel))
    return rows


def _write_labels(labels: pd.DataFrame, out: Path) -> None:
    """``labels.csv`` for the benchmark, and a catalog (every image its own product) for 01."""
    runfolder.write_table(out / runfolder.BENCHMARK_LABELS, labels)
    with runfolder.atomic_path(out / runfolder.CATALOG) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for p, pid in zip(labels["path"], labels["productId"]):
            f.write(json.dumps({"imageName": p, "productId": pid}) + "\n")


def _rgba(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    rgb = images.to_rgb(im)
    return rgb.convert("RGBA")


def _has_alpha(im: Image.Image) -> bool:
    return "A" in im.getbands() and im.getchannel("A").getextrema()[0] < 250


def _border_color(rgb: np.ndarray) -> np.ndarray:
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float64)
    return np.median(border, axis=0)


def foreground_mask(im: Image.Image, tolerance: float = 30.0) -> np.ndarray:
    """Boolean mask of the object: alpha when present, else pixels unlike the border colour
    that are not connected to the border through background-coloured pixels."""
    from scipy import ndimage

    if _has_alpha(im):
        return np.asarray(im.getchannel("A")) >= 128
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    background_like = np.linalg.norm(rgb - _border_color(rgb), axis=2) < tolerance
    regions, _ = ndimage.label(background_like)
    edge = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    outside = np.isin(regions, edge[edge > 0])
    return ndimage.binary_opening(~outside, iterations=1)


class _BackgroundPhotos:
    """The background photos of a folder, each decoded once and kept at most
    ``BACKGROUND_MAX_SIDE`` px (wallpapers can be 4,000 px and slow to decode)."""

    def __init__(self, folder):
        self.folder = Path(folder) if folder else None
        self.paths = images.list_images(folder) if folder else []
        self._decoded: dict[str, Image.Image] = {}

    def pick(self, rng) -> Image.Image:
        path = self.paths[int(rng.integers(len(self.paths)))]
        if path not in self._decoded:
            self._decoded[path] = self._shrunk(self.folder / path)
        return self._decoded[path]

    @staticmethod
    def _shrunk(path: Path) -> Image.Image:
        """The photo at most ``BACKGROUND_MAX_SIDE`` px, kept as a lossless PNG in the model
        cache (keyed by the file's path, size and time), so the same pixels come back at a
        fraction of a big WebP's decoding time."""
        from .models import cache_dir

        stat = path.stat()
        key = runfolder.key_of([str(path.resolve()), stat.st_size, stat.st_mtime_ns, BACKGROUND_MAX_SIDE])
        kept = cache_dir() / "backgrounds" / f"{key[:32]}.png"
        try:
            with Image.open(kept) as im:
                return im.convert("RGB")
        except (OSError, ValueError):  # not kept yet, or unreadable: decoded again
            pass
        photo = images.to_rgb(images.open_image(path))  # ImageError: caller falls back
        photo.thumbnail((BACKGROUND_MAX_SIDE, BACKGROUND_MAX_SIDE), Image.LANCZOS)
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            with runfolder.atomic_path(kept) as tmp:
                photo.save(tmp, format="PNG", compress_level=1)
        except OSError:  # a read-only cache: the photo is still used
            pass
        return photo


def _variant(source: Image.Image, transform: str, rng, backgrounds, photo_backgrounds: _BackgroundPhotos):
    w, h = source.size
    flat = images.to_rgb(source)
    if transform == "crop":
        area = rng.uniform(0.70, 0.90)
        aspect = rng.uniform(0.85, 1.15)
        cw = min(w, int(round(w * math.sqrt(area * aspect))))
        ch = min(h, int(round(h * math.sqrt(area / aspect))))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return flat.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC), "png"
    if transform == "flip":
        return flat.transpose(Image.FLIP_LEFT_RIGHT), "png"
    if transform == "downscale":
        scale = rng.uniform(0.25, 0.5)
        return flat.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BILINEAR), "jpg"
    if transform == "color":
        out = ImageEnhance.Brightness(flat).enhance(rng.uniform(0.75, 1.25))
        out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.75, 1.25))
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
        hsv = np.asarray(out.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-12, 13))) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB"), "png"
    if transform == "jpeg":
        return flat, "jpg"
    if transform == "rotate":
        angle = float(rng.uniform(3, 20) * rng.choice([-1, 1]))
        if _has_alpha(source):
            return images.to_rgb(source.rotate(angle, Image.BICUBIC)), "png"
        fill = tuple(int(c) for c in _border_color(np.asarray(flat)))
        return flat.rotate(angle, Image.BICUBIC, fillcolor=fill), "png"
    if transform == "aspect":  # stretched one way: e.g. a listing that squashed a photo to a square
        stretch = rng.uniform(1.25, 1.6)
        size = (round(w * stretch), h) if rng.random() < 0.5 else (w, round(h * stretch))
        return flat.resize(size, Image.BICUBIC), "jpg"
    # background: the object, re-framed (60-100% size, anywhere), on a new background
    mask = Image.fromarray(foreground_mask(source).astype(np.uint8) * 255, "L")
    canvas = None
    if photo_backgrounds.paths:
        try:
            bg = photo_backgrounds.pick(rng)
            side = min(bg.size) * math.sqrt(rng.uniform(0.25, 0.6))  # a zoomed-in region of the photo
            left, top = rng.uniform(0, bg.width - side), rng.uniform(0, bg.height - side)
            canvas = bg.resize((w, h), Image.BICUBIC, box=(left, top, left + side, top + side))
        except images.ImageError:
            pass  # an unreadable photo: a generated background instead
    if canvas is None:
        canvas = synthetic.background(w, h, rng)
    scale = rng.uniform(0.6, 1.0)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = int(rng.integers(0, w - sw + 1)), int(rng.integers(0, h - sh + 1))
    canvas.paste(flat.resize((sw, sh), Image.BICUBIC), (left, top), mask.resize((sw, sh), Image.BILINEAR))
    return canvas, "jpg"
