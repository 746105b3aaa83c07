"""Measured retrieval quality: metric functions and the benchmarks of 05_evaluate.

Metrics work on ranked result lists. ``relevance`` turns neighbour similarities and
"is this neighbour right?" flags into per-rank *expected* relevance: results with exactly
the same similarity are in no meaningful order, so each gets the mean relevance of its
tied group (precision@k and recall@1 are then the exact expectation over tie orders).
Lists shorter than k (a small gallery, a similarity cut-off) count the missing ranks as
wrong, so a short list never looks better than a full one.

Benchmarks:
- Fashion-MNIST (``fashion_mnist_benchmark``): test images query the train images;
  right = same class.
- Near-duplicates (``make_near_duplicates`` + ``near_duplicate_benchmark``): any folder of
  product images becomes a labelled benchmark of edited copies; right = same source image.
- Labels (``labels_benchmark``): a user's CSV of image -> class or group.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from . import diffusion, images, runfolder, synthetic
from .index import ExactIndex, check_counts
from .options import EmbeddingOptions

EMBEDDING_SHOWN = ("model_handle", "resize", "pooling", "focus", "hog_weight", "precision", "postprocess")
TRANSFORMS = ("crop", "flip", "downscale", "color", "jpeg", "rotate", "background")
SOURCE_MAX_SIDE = 1024  # benchmark copies of bigger images are shrunk: the model sees 224-260 px


# ---------------------------------------------------------------- metrics

def relevance(similarity: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Expected relevance per rank: ties in ``similarity`` share their group's mean.

    ``similarity`` and ``correct`` are (n_queries, n_results), best first; NaN similarity
    marks a missing result (it counts as wrong).
    """
    similarity = np.atleast_2d(np.asarray(similarity, dtype=np.float64))
    rel = np.atleast_2d(np.asarray(correct, dtype=np.float64)).copy()
    rel[np.isnan(similarity)] = 0.0
    for q in range(len(rel)):
        row, sim = rel[q], similarity[q]
        start = 0
        while start < len(row):
            end = start + 1
            while end < len(row) and sim[end] == sim[start]:
                end += 1
            if end - start > 1:
                row[start:end] = row[start:end].mean()
            start = end
    return rel


def _pad(rel: np.ndarray, k: int) -> np.ndarray:
    rel = np.atleast_2d(np.asarray(rel, dtype=np.float64))[:, :k]
    if rel.shape[1] < k:
        rel = np.pad(rel, ((0, 0), (0, k - rel.shape[1])))
    return rel


def precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """Share of the first k results that are right, per query (missing results are wrong)."""
    return _pad(rel, k).sum(axis=1) / k


def recall_at_1(rel: np.ndarray) -> np.ndarray:
    """1 when the first result is right (the expected value under ties), per query."""
    return _pad(rel, 1)[:, 0]


def hit_rate_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """Chance that at least one of the first k results is right, per query.

    The near-duplicate "recall@k": did the copy find its original (or its sibling copy)?
    Fractional relevance (tied groups) is treated as independent chances.
    """
    return 1.0 - np.prod(1.0 - _pad(rel, k), axis=1)


def average_precision_at_k(rel: np.ndarray, k: int, n_relevant) -> np.ndarray:
    """AP@k per query: mean of precision@i at the ranks i <= k holding a right result,
    divided by min(k, number of right items in the gallery)."""
    rel = _pad(rel, k)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, k + 1)
    denominator = np.minimum(k, np.broadcast_to(np.asarray(n_relevant, dtype=np.float64), (len(rel),)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * rel).sum(axis=1) / denominator
    return np.where(denominator > 0, ap, 0.0)


def retrieve(query_vectors: np.ndarray, gallery_vectors: np.ndarray, k: int,
             exclude: np.ndarray | None = None, rerank: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (indices, similarities) of each query in the gallery; -1 / NaN pad.

    ``rerank="diffusion"``: the first ``diffusion.SHORTLIST`` re-ordered by diffusion, which
    then gives the scores (see ``helpers.diffusion``)."""
    diffusion.check_rerank(rerank)
    gallery_vectors = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
    fetch = k if rerank == "none" else max(k, diffusion.SHORTLIST)
    found = ExactIndex(gallery_vectors).search(np.ascontiguousarray(query_vectors, dtype=np.float32),
                                                k=fetch, exclude=exclude)
    return found if rerank == "none" else diffusion.rerank(gallery_vectors, *found, k)


def label_metrics(query_labels: np.ndarray, gallery_labels: np.ndarray, neighbors: np.ndarray,
                  similarity: np.ndarray, k: int, queries_in_gallery: bool = False) -> pd.DataFrame:
    """Per-query precision@k, mAP@k, recall@1 and hit@5/@k for label (class) matching.

    ``queries_in_gallery``: the queries are gallery images excluded from their own results,
    so each has one right answer fewer (matters for mAP's denominator)."""
    gallery_labels = np.asarray(gallery_labels)
    query_labels = np.asarray(query_labels)
    valid = neighbors >= 0
    found = np.where(valid, gallery_labels[np.where(valid, neighbors, 0)], None)
    correct = valid & (found == query_labels[:, None])
    similarity = np.where(valid, similarity, np.nan)
    rel = relevance(similarity, correct)
    labels, counts = np.unique(gallery_labels, return_counts=True)
    in_gallery = dict(zip(labels.tolist(), counts.tolist()))
    n_relevant = np.array([in_gallery.get(lab, 0) for lab in query_labels.tolist()]) - int(queries_in_gallery)
    return pd.DataFrame({
        "label": query_labels,
        f"precision@{k}": precision_at_k(rel, k),
        f"mAP@{k}": average_precision_at_k(rel, k, n_relevant),
        "recall@1": recall_at_1(rel),
        **({"recall@5": hit_rate_at_k(rel, 5)} if k > 5 else {}),
        f"recall@{k}": hit_rate_at_k(rel, k),
    })


def summarise(per_query: pd.DataFrame, by: str) -> pd.DataFrame:
    """Mean of every metric column per group, plus an "all" row; with query counts."""
    metrics = [c for c in per_query.columns if "@" in c]
    table = per_query.groupby(by)[metrics].mean()
    table.insert(0, "queries", per_query.groupby(by).size())
    overall = per_query[metrics].mean().to_frame("all").T
    overall.insert(0, "queries", len(per_query))
    return pd.concat([table, overall]).round(4)


def confusion(query_labels: np.ndarray, gallery_labels: np.ndarray, neighbors: np.ndarray,
              classes: list | None = None) -> pd.DataFrame:
    """Share of each query class's top-k neighbours that fall in each class (rows sum to 1)."""
    gallery_labels = np.asarray(gallery_labels)
    valid = neighbors >= 0
    rows = np.repeat(np.asarray(query_labels), neighbors.shape[1])[valid.ravel()]
    cols = gallery_labels[neighbors[valid]]
    classes = classes if classes is not None else sorted(set(rows.tolist()) | set(cols.tolist()))
    table = pd.crosstab(pd.Categorical(rows, classes), pd.Categorical(cols, classes), dropna=False)
    table.index.name, table.columns.name = "query class", "neighbour class"
    return table.div(table.sum(axis=1).replace(0, 1), axis=0)


# ---------------------------------------------------------------- benchmarks

def fashion_mnist_benchmark(embed, k: int = 20, n_queries: int = 1000, n_gallery: int | None = None,
                            data_dir=None, seed: int = 0, cache_dir: str | Path | None = None,
                            cache_key: str = "", postprocess: str = "none", query_expansion: int = 0,
                            rerank: str = "none") -> dict:
    """Test images query the train images (gallery); right = same class.

    ``embed(pictures) -> vectors`` embeds a uint8 array of 28x28 images. Queries are a
    seeded sample of ``n_queries`` of the 10,000 test images, the gallery the first
    ``n_gallery`` train images (None: all 60,000). With ``cache_dir`` the vectors are kept as .npy files named
    by ``cache_key`` (the model and embedding options) so the next run skips the model.
    ``postprocess="whiten"`` learns whitening on the gallery (the "catalog") and applies it
    to both sides; ``query_expansion`` n > 0 expands the gallery vectors with their n
    nearest gallery neighbours, then each query with its n nearest expanded ones;
    ``rerank="diffusion"`` re-orders each query's results (``helpers.diffusion``).
    """
    from . import fashion_mnist

    kwargs = {} if data_dir is None else {"data_dir": data_dir}
    train_x, train_y = fashion_mnist.load("train", **kwargs)
    test_x, test_y = fashion_mnist.load("test", **kwargs)
    n_gallery = len(train_x) if n_gallery is None else min(int(n_gallery), len(train_x))
    n_queries = min(int(n_queries), len(test_x))
    # queries: the first n of a seeded shuffle of the test set, so a small run's cache is
    # the start of a bigger run's
    shuffled = np.random.default_rng(seed).permutation(len(test_x))
    queries = shuffled[:n_queries]
    gallery_vectors = _cached(cache_dir, f"train-{cache_key}", train_x, n_gallery, embed)
    query_vectors = _cached(cache_dir, f"test-seed{seed}-{cache_key}", test_x[shuffled], n_queries, embed)
    if postprocess == "whiten":
        from . import whitening

        learned = whitening.learn(gallery_vectors)
        gallery_vectors, query_vectors = learned.apply(gallery_vectors), learned.apply(query_vectors)
    if query_expansion:
        from .neighbors import expand

        gallery_vectors = _expand_all(gallery_vectors, query_expansion)
        nearest, _ = retrieve(query_vectors, gallery_vectors, query_expansion)
        query_vectors = expand(query_vectors, gallery_vectors, nearest, query_expansion)
    neighbors, similarity = retrieve(query_vectors, gallery_vectors, k, rerank=rerank)
    names = np.array(fashion_mnist.CLASSES)
    per_query = label_metrics(names[test_y[queries]], names[train_y[:n_gallery]], neighbors, similarity, k)
    per_query.insert(0, "test_index", queries)
    return {"per_query": per_query, "neighbors": neighbors, "similarity": similarity,
            "gallery_labels": names[train_y[:n_gallery]], "query_images": test_x[queries],
            "gallery_images": train_x[:n_gallery], "classes": list(names),
            "summary": summarise(per_query, "label").reindex(list(names) + ["all"]).dropna(how="all")}


def _cached(cache_dir, name: str, pictures: np.ndarray, n: int, embed) -> np.ndarray:
    """Vectors of pictures[:n], reusing (a prefix of) a cached file when there is one."""
    path = Path(cache_dir) / f"{name}.npy" if cache_dir else None
    have = np.load(path) if path is not None and path.exists() else np.zeros((0, 0), np.float32)
    if len(have) >= n:
        return have[:n]
    new = embed(pictures[len(have):n])
    vectors = new if len(have) == 0 else np.concatenate([have, new])
    if path is not None:
        from .runfolder import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, vectors)
    return vectors


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


def make_near_duplicates(image_dir: str | Path, paths: list[str], out_dir: str | Path,
                         variants_per_source: int = 2, transforms=TRANSFORMS,
                         backgrounds: str | Path | None = None, distractors=(),
                         seed: int = 0) -> pd.DataFrame:
    """Turn images into a labelled near-duplicate benchmark in ``out_dir``.

    Each source image is copied (transform "source") and gets ``variants_per_source``
    edited copies, transforms assigned in turn so each is used equally often:
    crop (70-90% of the area), flip, downscale (to 25-50%) + JPEG, color (jitter),
    jpeg (quality 25-40), rotate (3-15 degrees), background (the object composited on a
    new background: the source's alpha where it has one, else a mask of the pixels that
    differ from the colour along its border). Backgrounds are zoomed-in regions of the image
    files in ``backgrounds`` when given, else generated (gradients, stripes, textures, clutter).
    ``distractors`` (paths under ``image_dir``) are copied as unrelated images (transform
    "distractor"): they make the gallery bigger and are never right. Images are read upright
    (EXIF orientation) and shrunk to at most ``SOURCE_MAX_SIDE`` px; unreadable ones are left
    out (an unreadable background photo gives way to a generated background).

    Writes the images (replacing any earlier ones in ``out_dir/images``), ``labels.csv`` (path, group, transform, source, productId) and
    ``image_data.json`` (JSON lines: every image its own productId), and returns labels.
    """
    for t in transforms:
        if t not in TRANSFORMS:
            raise ValueError(f"unknown transform {t!r}; choose from {TRANSFORMS}")
    import shutil

    image_dir, out = Path(image_dir), Path(out_dir)
    shutil.rmtree(out / "images", ignore_errors=True)  # images of an earlier, different benchmark
    (out / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    photo_backgrounds = images.list_images(backgrounds) if backgrounds else []
    rows, turn = [], 0
    for g, rel in enumerate(paths):
        group = f"G{g:05d}"
        try:
            source = _rgba(images.open_image(image_dir / rel))
        except Exception:  # an unreadable source is left out, the benchmark goes on
            continue
        source.thumbnail((SOURCE_MAX_SIDE, SOURCE_MAX_SIDE), Image.LANCZOS)
        name = f"{group}_source.png"
        images.to_rgb(source).save(out / "images" / name)
        rows.append((f"images/{name}", group, "source", rel))
        for _ in range(variants_per_source):
            transform = transforms[turn % len(transforms)]
            turn += 1
            picture, ext = _variant(source, transform, rng, backgrounds, photo_backgrounds)
            name = f"{group}_{transform}.{ext}"
            if ext == "jpg":
                quality = int(rng.integers(25, 41)) if transform == "jpeg" else int(rng.integers(70, 86))
                picture.save(out / "images" / name, quality=quality)
            else:
                picture.save(out / "images" / name)
            rows.append((f"images/{name}", group, transform, rel))
    if not rows:
        raise ValueError(f"none of the {len(paths)} source images could be read (does the run have any "
                         "images?): there is no near-duplicate benchmark to build")
    for d, rel in enumerate(distractors):
        try:
            picture = images.to_rgb(images.open_image(image_dir / rel))
        except Exception:
            continue
        picture.thumbnail((SOURCE_MAX_SIDE, SOURCE_MAX_SIDE), Image.LANCZOS)
        name = f"D{d:05d}_distractor.png"
        picture.save(out / "images" / name)
        rows.append((f"images/{name}", f"D{d:05d}", "distractor", rel))
    labels = pd.DataFrame(rows, columns=["path", "group", "transform", "source"])
    labels["productId"] = labels["path"].map(lambda p: Path(p).stem)
    labels.to_csv(out / runfolder.BENCHMARK_LABELS, index=False)
    with open(out / runfolder.CATALOG, "w", encoding="utf-8") as f:
        for p, pid in zip(labels["path"], labels["productId"]):
            f.write(json.dumps({"imageName": p, "productId": pid}) + "\n")
    return labels


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


def _variant(source: Image.Image, transform: str, rng, backgrounds, photo_backgrounds):
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
        angle = float(rng.uniform(3, 15) * rng.choice([-1, 1]))
        if _has_alpha(source):
            return images.to_rgb(source.rotate(angle, Image.BICUBIC)), "png"
        fill = tuple(int(c) for c in _border_color(np.asarray(flat)))
        return flat.rotate(angle, Image.BICUBIC, fillcolor=fill), "png"
    # background: the object, re-framed (60-100% size, anywhere), on a new background
    mask = Image.fromarray(foreground_mask(source).astype(np.uint8) * 255, "L")
    canvas = None
    if photo_backgrounds:
        path = photo_backgrounds[int(rng.integers(len(photo_backgrounds)))]
        try:
            bg = images.to_rgb(images.open_image(Path(backgrounds) / path))
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


def near_duplicate_benchmark(embeddings: np.ndarray, items: pd.DataFrame, labels: pd.DataFrame,
                             k: int = 20, rerank: str = "none") -> dict:
    """Every edited copy queries all other images; right = an image of the same source.

    ``items`` (a run's items.parquet) and ``labels`` (from ``make_near_duplicates``) are
    joined on ``path``. Returns per-query rows and recall@1/@5/@k per transform.
    """
    joined = items.reset_index(drop=True).merge(labels[["path", "group", "transform"]], on="path", how="left")
    if joined["group"].isna().all():
        raise ValueError("no image of the run is in labels.csv: was 01 run on the benchmark folder?")
    rows = np.flatnonzero(joined["group"].notna() & ~joined["transform"].isin(["source", "distractor"]))
    neighbors, similarity = retrieve(embeddings[rows], embeddings, k, exclude=rows, rerank=rerank)
    groups = joined["group"].to_numpy()
    valid = neighbors >= 0
    correct = valid & (groups[np.where(valid, neighbors, 0)] == groups[rows][:, None])
    rel = relevance(np.where(valid, similarity, np.nan), correct)
    per_query = pd.DataFrame({
        "path": joined["path"].to_numpy()[rows],
        "transform": joined["transform"].to_numpy()[rows],
        "recall@1": recall_at_1(rel),
        **({"recall@5": hit_rate_at_k(rel, 5)} if k > 5 else {}),
        f"recall@{k}": hit_rate_at_k(rel, k),
        "top1_path": np.where(valid[:, 0], joined["path"].to_numpy()[neighbors[:, 0]], None),
        "top1_similarity": similarity[:, 0],
    })
    order = [t for t in TRANSFORMS if t in set(per_query["transform"])]
    return {"per_query": per_query, "neighbors": neighbors, "similarity": similarity, "rows": rows,
            "summary": summarise(per_query, "transform").reindex(order + ["all"])}


def labels_benchmark(embeddings: np.ndarray, items: pd.DataFrame, labels_csv: str | Path,
                     k: int = 20, n_queries: int = 1000, seed: int = 0, rerank: str = "none") -> dict:
    """A user's CSV (``path`` or ``imageName``, and ``label``; comma, semicolon or tab
    separated): right = same label.

    Labelled images query the whole run; unlabelled images stay in the gallery as
    distractors (they are never right).
    """
    table = pd.read_csv(labels_csv, dtype=str, skipinitialspace=True, sep=_separator(labels_csv))
    table.columns = table.columns.str.strip()
    key = "path" if "path" in table.columns else "imageName" if "imageName" in table.columns else None
    if key is None or "label" not in table.columns:
        raise ValueError(f"{labels_csv}: needs a 'label' column and a 'path' or 'imageName' column; "
                         f"found {list(table.columns)}")
    # "./shoes/a.jpg" or "shoes\\a.jpg" name the run's "shoes/a.jpg"
    names = table[key].str.strip().str.replace("\\", "/", regex=False).str.replace(r"^(\./)+", "", regex=True)
    lookup = dict(zip(names, table["label"].str.strip()))
    gallery_labels = items[key].map(lookup).to_numpy(dtype=object)
    labelled = np.flatnonzero(pd.notna(gallery_labels))
    if not len(labelled):
        raise ValueError(f"{labels_csv}: none of its {len(table)} rows names an image of this run ({key})")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(labelled, size=min(n_queries, len(labelled)), replace=False))
    neighbors, similarity = retrieve(embeddings[rows], embeddings, k, exclude=rows, rerank=rerank)
    gallery_labels = np.where(pd.notna(gallery_labels), gallery_labels, "\0unlabelled")
    per_query = label_metrics(gallery_labels[rows], gallery_labels, neighbors, similarity, k,
                              queries_in_gallery=True)
    per_query.insert(0, "path", items["path"].to_numpy()[rows])
    return {"per_query": per_query, "neighbors": neighbors, "similarity": similarity, "rows": rows,
            "summary": summarise(per_query, "label")}


# ---------------------------------------------------------------- notebook 05's work

BENCHMARKS = ("near-duplicates", "fashion-mnist", "labels")


def _separator(csv_path: str | Path) -> str:
    """The CSV's separator among comma, semicolon (spreadsheets in many locales) and tab;
    comma when the file does not tell (a single column)."""
    import csv

    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        sample = f.read(1 << 16)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        return ","


def check_benchmarks(benchmark) -> list[str]:
    """05's ``benchmark`` parameter (one name or a list) as a checked list."""
    names = [benchmark] if isinstance(benchmark, str) else list(benchmark or [])
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"benchmark={benchmark!r}; choose from {BENCHMARKS} (one name or a list)")
    return names


def unavailable(benchmarks: list[str], data_dir=None) -> dict[str, str]:
    """The requested benchmarks whose data is missing here, each with the reason and the one
    command that enables it: 05 runs the others and says so."""
    from . import fashion_mnist

    reasons = {}
    if "fashion-mnist" in benchmarks:
        reason = fashion_mnist.missing(data_dir or fashion_mnist.DEFAULT_DIR)
        if reason:
            reasons["fashion-mnist"] = reason
    return reasons


def embedding_options(run_dir: str | Path, **overrides) -> EmbeddingOptions:
    """The options 05 measures: the run's store's (01's defaults in a folder without one),
    with every non-None override applied."""
    recorded = runfolder.record(run_dir, "embed").get("options")
    return EmbeddingOptions.of(recorded, **overrides)


def searched_with(options: EmbeddingOptions, query_expansion: int, rerank: str) -> dict:
    """What a benchmark measured: the embedding options ("auto" pooling resolved), then the search's."""
    return {**options.as_dict(), "pooling": options.resolved_pooling, "query_expansion": query_expansion,
            "rerank": rerank}


def split_sources(embeddings: np.ndarray, n_sources: int, max_similarity: float = 0.9,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sources, distractors): at most ``n_sources`` rows that do not look alike, and the
    remaining rows that look like none of them (usable as distractors)."""
    chosen = pick_sources(embeddings, max_similarity, seed=seed)
    sources = chosen[np.sort(np.random.default_rng(seed).permutation(len(chosen))[:n_sources])]
    rest = np.setdiff1d(chosen, sources)
    if len(rest):
        closest = np.max(np.asarray(embeddings[rest]) @ np.asarray(embeddings[sources]).T, axis=1)
        rest = rest[closest < max_similarity]
    return sources, rest


def run_near_duplicates(run_dir: str | Path, k: int = 20, n_sources: int = 300,
                        variants_per_source: int = 2, backgrounds=None, query_expansion: int = 0,
                        rerank: str = "none", seed: int = 0, progress: bool = True, **options) -> dict:
    """Build a near-duplicate benchmark from the run's own catalog and measure it.

    Sources are images of the run that do not already look alike; the other catalog
    images that look like none of them stay in as distractors. The benchmark folder
    (``run_dir/benchmark_near_duplicates``) is embedded with the run's embedding options (or
    ``options`` overrides) in its own run folder, incrementally on the next call.
    """
    check_counts(k=k, n_sources=n_sources, variants_per_source=variants_per_source)
    diffusion.check_rerank(rerank)
    options = embedding_options(run_dir, **options)
    with runfolder.lock(run_dir, "05_evaluate"):
        return _near_duplicates_in(run_dir, options, k, n_sources, variants_per_source, backgrounds,
                                   query_expansion, rerank, seed, progress)


def _near_duplicates_in(run_dir, options: EmbeddingOptions, k, n_sources, variants_per_source, backgrounds,
                        query_expansion, rerank, seed, progress) -> dict:
    from . import embed, store

    embeddings, items, meta = store.load_store(run_dir)
    folder = Path(run_dir) / runfolder.NEAR_DUPLICATE_BENCHMARK
    sources, distractors = split_sources(embeddings, n_sources, seed=seed)
    paths = items["path"].tolist()
    make_near_duplicates(meta["image_dir"], [paths[i] for i in sources], folder,
                         variants_per_source=variants_per_source, backgrounds=backgrounds,
                         distractors=[paths[i] for i in distractors], seed=seed)
    bench_run = folder / runfolder.BENCHMARK_RUN
    embed.embed_folder(folder, bench_run, options, catalog=folder / runfolder.CATALOG, progress=progress)
    vectors, bench_items, bench_meta = store.load_store(bench_run)
    labels = pd.read_csv(folder / runfolder.BENCHMARK_LABELS)
    if query_expansion:
        vectors = _expand_all(vectors, query_expansion)
    result = near_duplicate_benchmark(vectors, bench_items, labels, k, rerank=rerank)
    result.update(folder=folder, items=bench_items, labels=labels,
                  options=searched_with(options, query_expansion, rerank),
                  images_per_second=bench_meta.get("images_per_second"),
                  n_sources=len(sources), n_distractors=len(distractors))
    return result


def _expand_all(vectors: np.ndarray, n: int) -> np.ndarray:
    from .neighbors import expand

    nearest, _ = retrieve(vectors, vectors, n, exclude=np.arange(len(vectors)))
    return expand(vectors, vectors, nearest, n)


def fashion_mnist_embedder(options: EmbeddingOptions, batch_size: int = 64, progress: bool = True):
    """``embed(pictures)`` for 28x28 grey pictures with the given embedding options (the
    model is loaded on the first call: a cached run needs none)."""
    from . import embed

    state = {}

    def run(pictures: np.ndarray) -> np.ndarray:
        if "model" not in state:
            state["model"] = options.embedder()
        rgb = np.repeat(np.asarray(pictures)[..., None], 3, axis=-1)
        return embed.embed_pixels(rgb, options, model=state["model"], batch_size=batch_size, progress=progress)

    return run


def run_fashion_mnist(run_dir: str | Path, k: int = 20, n_queries: int = 1000, n_gallery: int | None = None,
                      data_dir=None, query_expansion: int = 0, rerank: str = "none", seed: int = 0,
                      progress: bool = True, **options) -> dict:
    """The Fashion-MNIST protocol with the run's embedding options (vectors cached per option
    set under the model cache, so repeated runs do not embed again)."""
    check_counts(k=k, n_queries=n_queries)
    diffusion.check_rerank(rerank)
    from .models import cache_dir

    options = embedding_options(run_dir, **options)
    key = options.vector_key()  # the same vectors for the same pictures: the cache can serve them
    if data_dir is not None:  # another copy of the data set gets its own cache
        import hashlib

        key += "-" + hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
    base = fashion_mnist_embedder(options, progress=progress)
    result = fashion_mnist_benchmark(base, k=k, n_queries=n_queries, n_gallery=n_gallery, data_dir=data_dir,
                                     seed=seed, cache_dir=cache_dir() / "benchmarks" / "fashion-mnist",
                                     cache_key=key, postprocess=options.postprocess,
                                     query_expansion=query_expansion, rerank=rerank)
    result["options"] = searched_with(options, query_expansion, rerank)
    return result


def run_labels(run_dir: str | Path, labels: str | Path, k: int = 20, n_queries: int = 1000,
               query_expansion: int = 0, rerank: str = "none", seed: int = 0) -> dict:
    """The "labels" benchmark on the run's own vectors (as 03 sees them)."""
    check_counts(k=k, n_queries=n_queries)
    diffusion.check_rerank(rerank)
    from . import store

    embeddings, items, _ = store.load_store(run_dir)
    if query_expansion:
        embeddings = _expand_all(embeddings, query_expansion)
    result = labels_benchmark(embeddings, items, labels, k=k, n_queries=n_queries, seed=seed, rerank=rerank)
    result["options"] = searched_with(embedding_options(run_dir), query_expansion, rerank)
    return result


def headline(name: str, result: dict, k: int) -> dict:
    """The flat figures of one benchmark for metrics.json and the report's front page."""
    summary = result["summary"]
    overall = summary.loc["all"]
    options = result.get("options") or {}
    shown = EMBEDDING_SHOWN + ("query_expansion", "rerank")  # the embedding, then the search
    figures = {f"{name}: evaluated with": ", ".join(f"{n}={options[n]}" for n in shown if n in options),
               f"{name}: queries": int(overall["queries"])}
    if name == "near-duplicates":
        for column in dict.fromkeys(("recall@1", "recall@5", f"recall@{k}")):
            if column in overall:
                figures[f"{name}: {column}"] = float(overall[column])
        for transform, row in summary.drop(index="all").iterrows():
            figures[f"{name}: recall@1 ({transform})"] = float(row["recall@1"])
    else:
        for column in (f"precision@{k}", f"mAP@{k}", "recall@1"):
            figures[f"{name}: {column}"] = float(overall[column])
    return figures


def write_metrics(run_dir: str | Path, results: dict, k: int, parameters: dict | None = None,
                  skipped: dict | None = None) -> dict:
    """Write ``run_dir/metrics.json``: flat headline figures plus every summary table, and the
    benchmarks ``skipped`` for want of their data (name: why and how to enable it)."""
    metrics = {f"{name}: skipped": reason for name, reason in (skipped or {}).items()}
    for name, result in results.items():
        metrics.update(headline(name, result, k))
    metrics["details"] = {name: {"summary": result["summary"].reset_index().to_dict(orient="records"),
                                 "options": result.get("options")} for name, result in results.items()}
    metrics["parameters"] = parameters or {}
    metrics["computed_from"] = {"store_key": runfolder.store_key(run_dir), "parameters": parameters or {},
                                "options": {name: result.get("options") for name, result in results.items()}}
    with runfolder.lock(run_dir, "05_evaluate"):
        staging = runfolder.Staging(run_dir, "evaluate")
        staging.commit(metrics)
    return metrics


def worst_query_grids(result: dict, n: int = 6, k: int = 8, thumb_size: int = 96) -> list:
    """Grids of the queries that did worst (lowest recall@1, then precision, then top-1
    similarity): the query, then its first k results with green/red borders."""
    from .plots import grid_image

    per_query = result["per_query"].reset_index(drop=True)
    neighbors, similarity = result["neighbors"], result["similarity"]
    sort_by = [c for c in ("recall@1", f"precision@{neighbors.shape[1]}") if c in per_query.columns]
    worst = per_query.sort_values(sort_by, kind="stable").index[:n]
    if "query_images" in result:  # Fashion-MNIST: pictures are arrays, truth is the class
        def picture(array):
            return Image.fromarray(array).convert("RGB")

        grids = []
        for q in worst:
            truth = per_query.at[q, "label"]
            cells = [(picture(result["gallery_images"][g]), str(result["gallery_labels"][g]), float(s),
                      result["gallery_labels"][g] == truth)
                     for g, s in zip(neighbors[q, :k], similarity[q, :k]) if g >= 0]
            grids.append(grid_image((picture(result["query_images"][q]), str(truth)), cells,
                                    columns=k + 1, thumb_size=thumb_size))
        return grids
    folder, paths = Path(result["folder"]), result["items"]["path"].to_numpy()
    groups = dict(zip(result["labels"]["path"], result["labels"]["group"]))

    def load(path):
        with Image.open(folder / path) as im:
            im.load()
            return images.to_rgb(im).copy()

    grids = []
    for q in worst:
        query_path = per_query.at[q, "path"]
        cells = [(load(paths[g]), Path(paths[g]).stem, float(s), groups.get(paths[g]) == groups.get(query_path))
                 for g, s in zip(neighbors[q, :k], similarity[q, :k]) if g >= 0]
        grids.append(grid_image((load(query_path), Path(query_path).stem), cells, columns=k + 1,
                                thumb_size=thumb_size))
    return grids
