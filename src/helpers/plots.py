"""Figures for the notebooks: image grids and distributions. Functions return figures."""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from .images import thumbnail
from .vectors import first_two_components


def plain_text(plot):
    """Draw every label of ``plot`` as plain text: matplotlib reads ``$...$`` as maths, and a
    product id such as ``SKU $5-$10`` or ``P$\\bar$`` must show as written (or not fail)."""
    @functools.wraps(plot)
    def drawn(*args, **kwargs):
        with mpl.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return drawn


def similarity_color(similarity: float) -> tuple:
    """Red (0.5 or less) through yellow to green (1.0)."""
    return plt.cm.RdYlGn(float(np.clip((similarity - 0.5) / 0.5, 0, 1)))


@plain_text
def plot_neighbor_rows(image_dir: str | Path, query_paths: list[str], neighbor_paths: list[list[str]],
                       similarities: list[list[float]], labels: list[list[str]] | None = None,
                       thumb_size: int = 128):
    """One row per query: the query image, then its neighbours captioned with similarity."""
    image_dir = Path(image_dir)
    n_rows = len(query_paths)
    n_cols = 1 + max((len(r) for r in neighbor_paths), default=0)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.2 * n_rows), squeeze=False)
    for r, query in enumerate(query_paths):
        cells = [(query, None, "query")] + [
            (p, s, labels[r][c] if labels else Path(p).name)
            for c, (p, s) in enumerate(zip(neighbor_paths[r], similarities[r]))
        ]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            path, sim, label = cells[c]
            ax.imshow(thumbnail(image_dir / path, thumb_size))
            color = "black" if sim is None else similarity_color(sim)
            for spine in ax.spines.values():
                spine.set_edgecolor(color), spine.set_linewidth(4)
            title = Path(path).name if sim is None else f"{label}\n{sim:.3f}"
            ax.set_title(title[:40], fontsize=8)
    fig.tight_layout()
    return fig


BACKEND_COLOURS = {"annoy": "Blues", "faiss-ivfpq": "Oranges", "faiss-hnsw": "Greens", "voyager": "Purples"}


@plain_text
def plot_sweep(table, k: int = 20):
    """Recall vs queries/s (a line per build: n_trees, nlist or M; one colour family per
    backend; Pareto front ringed), recall vs build time, index size per build."""
    built = table[table["backend"] != "exact"]
    exact = table[table["backend"] == "exact"].iloc[0]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    builds = list(dict.fromkeys(built["build"]))
    colours = {}
    for backend, names in built.groupby("backend", sort=False)["build"]:
        names = list(dict.fromkeys(names))
        cmap = plt.get_cmap(BACKEND_COLOURS.get(backend, "Greys"))
        for i, name in enumerate(names):
            colours[name] = cmap(0.45 + 0.5 * i / max(1, len(names) - 1))
    for name in builds:
        group = built[built["build"] == name].sort_values("queries_per_second")
        reference = bool(group["reference"].any())
        ax.plot(group["queries_per_second"], group["recall"], "--" if reference else "-", marker="o", ms=4,
                color=colours[name], label=name + (" (reference)" if reference else ""))
    front = table[table["pareto"]]
    ax.scatter(front["queries_per_second"], front["recall"], s=140, facecolors="none",
               edgecolors="black", label="Pareto front")
    ax.scatter([exact["queries_per_second"]], [1.0], marker="*", s=200, color="black", label="exact")
    ax.set_xscale("log"), ax.set_xlabel("queries / second (log)"), ax.set_ylabel(f"recall@{k}")
    ax.legend(fontsize=6, ncol=2), ax.set_title("recall vs speed")
    per_build = (built.groupby("build", sort=False)
                 .agg(build_seconds=("build_seconds", "first"), size=("index_bytes", "first"),
                      recall=("recall", "max"), memory=("peak_memory_bytes", "first")))
    for name, row in per_build.iterrows():
        axes[1].scatter(row["build_seconds"], row["recall"], color=colours[name])
        axes[1].annotate(name, (row["build_seconds"], row["recall"]), fontsize=6)
    axes[1].set_xscale("log"), axes[1].set_xlabel("build seconds (log)"), axes[1].set_ylabel(f"best recall@{k}")
    axes[1].set_title("recall vs build time")
    labels = list(per_build.index)
    axes[2].bar(labels, per_build["size"] / 1e6, color=[colours[n] for n in labels], label="index file")
    axes[2].bar(labels, per_build["memory"] / 1e6, color="none", edgecolor="tab:red", label="peak build memory")
    axes[2].axhline(exact["index_bytes"] / 1e6, color="black", ls=":", label="float32 vectors (exact)")
    axes[2].set_yscale("log"), axes[2].set_ylabel("MB (log)")
    axes[2].tick_params(axis="x", labelrotation=60, labelsize=6)
    axes[2].legend(fontsize=7), axes[2].set_title("index size")
    fig.tight_layout()
    return fig


@plain_text
def plot_similarity_distribution(table):
    """Histograms of top-1 and of all top-k similarities."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bins = np.linspace(min(0.0, float(table["similarity"].min())) if len(table) else 0, 1, 51)
    ax.hist(table["similarity"], bins=bins, alpha=0.5, label="all top-k")
    ax.hist(table.loc[table["rank"] == 1, "similarity"], bins=bins, alpha=0.7, label="top-1")
    ax.set_xlabel("similarity (cosine)"), ax.set_ylabel("pairs"), ax.legend()
    fig.tight_layout()
    return fig


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid_image(query, neighbors, columns: int = 6, thumb_size: int = 160, label_first: bool = True):
    """One query and its neighbours as a single picture (fast: no matplotlib).

    ``query``: (thumbnail, caption). ``neighbors``: (thumbnail, caption, similarity, correct)
    tuples, where correct is True/False when ground truth is known, else None. Borders are
    coloured by similarity, or green/red for correct/incorrect, or grey when similarity is
    None. ``label_first=False``: the first cell's caption is shown as it is (no "query: ").
    """
    from PIL import Image, ImageDraw

    cells = [(query[0], query[1], None, None)] + list(neighbors)
    columns = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // columns)
    pad, text_h, border = 8, 34, 5
    cell_w, cell_h = thumb_size + 2 * pad, thumb_size + 2 * pad + text_h
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, thumb_size // 12))
    for i, (thumb, caption, similarity, correct) in enumerate(cells):
        x, y = (i % columns) * cell_w + pad, (i // columns) * cell_h + pad
        if i == 0:
            color = (0, 0, 0)
        elif similarity is None:
            color = (170, 170, 170)
        elif correct is not None:
            color = (30, 160, 60) if correct else (210, 40, 40)
        else:
            color = tuple(int(255 * c) for c in similarity_color(similarity)[:3])
        draw.rectangle([x - border, y - border, x + thumb_size + border - 1, y + thumb_size + border - 1],
                       fill=color)
        tile = Image.new("RGB", (thumb_size, thumb_size), "white")
        thumb = thumb.copy()
        thumb.thumbnail((thumb_size, thumb_size))
        tile.paste(thumb, ((thumb_size - thumb.width) // 2, (thumb_size - thumb.height) // 2))
        canvas.paste(tile, (x, y))
        if i == 0:
            label = "query: " + caption if label_first else caption
        else:
            label = caption if similarity is None else f"{caption}\n{similarity:.4f}"
        lines = [line[: max(8, thumb_size // 7)] for line in label.split("\n")]
        draw.multiline_text((x, y + thumb_size + border + 1), "\n".join(lines), fill="black", font=font,
                            spacing=2)
    return canvas


def catalog_map(embeddings, thumbnails, canvas_size: int = 2000, thumb_size: int = 56, seed: int = 0,
                max_points: int = 1500, coordinates=None, clusters=None):
    """The catalog drawn with thumbnails: on its first two principal components, or on
    ``coordinates`` (N, 2; NaN rows are left out) such as ``clusters.neighbor_map``'s.

    ``thumbnails``: paths, one per embedding row. At most ``max_points`` (sampled) are drawn.
    ``clusters`` (one label per row): each thumbnail framed in its cluster's colour.
    """
    from PIL import Image, ImageDraw

    from .thumbnails import open_thumbnail

    rows = np.arange(len(embeddings))
    if coordinates is not None:
        rows = rows[np.isfinite(np.asarray(coordinates)).all(axis=1)]
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    xy = first_two_components(embeddings[rows]) if coordinates is None else np.asarray(coordinates)[rows]
    span = np.maximum(xy.max(axis=0) - xy.min(axis=0), 1e-9) if len(rows) else np.ones(2)
    pos = ((xy - xy.min(axis=0)) / span * (canvas_size - thumb_size)).astype(int) if len(rows) else xy
    canvas = Image.new("RGB", (canvas_size, canvas_size), "white")
    draw = ImageDraw.Draw(canvas)
    palette = plt_palette()
    for (px, py), r in zip(pos, rows):
        thumb = open_thumbnail(thumbnails[r], thumb_size)
        thumb.thumbnail((thumb_size, thumb_size))
        x, y = int(px), int(canvas_size - thumb_size - py)
        if clusters is not None:
            draw.rectangle([x - 3, y - 3, x + thumb.width + 2, y + thumb.height + 2],
                           fill=palette[int(clusters[r]) % len(palette)])
        canvas.paste(thumb, (x, y))
    caption = "x: first principal component, y: second" if coordinates is None else \
        "t-SNE map: neighbours stay together" + ("; frames: visual clusters" if clusters is not None else "")
    draw.text((10, 10), caption, fill="black", font=_font(20))
    return canvas


def plt_palette() -> list[tuple]:
    """20 distinct colours (matplotlib's tab20) as RGB tuples."""
    from matplotlib import colormaps

    return [tuple(int(255 * c) for c in colormaps["tab20"](i)[:3]) for i in range(20)]


@plain_text
def plot_metric_bars(summary, columns, title: str = ""):
    """Grouped bars of metric columns per row of a benchmark summary (the "all" row last)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(summary) * max(1, len(columns)) ** 0.5), 3.8))
    width = 0.8 / len(columns)
    x = np.arange(len(summary))
    for i, column in enumerate(columns):
        bars = ax.bar(x + (i - (len(columns) - 1) / 2) * width, summary[column], width, label=column)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [str(i) for i in summary.index], rotation=30, ha="right")
    ax.set_ylim(0, 1.08), ax.set_ylabel("share of queries"), ax.set_title(title), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@plain_text
def plot_confusion(table, title: str = "Which classes the top-k neighbours come from"):
    """Heatmap of a row-normalised confusion table (query class x neighbour class)."""
    fig, ax = plt.subplots(figsize=(7.5, 6))
    image = ax.imshow(table.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(table.index)), table.index)
    for (r, c), value in np.ndenumerate(table.to_numpy()):
        if value >= 0.01:
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
    ax.set_xlabel(table.columns.name or "neighbour class"), ax.set_ylabel(table.index.name or "query class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


@plain_text
def plot_duplicate_calibration(curve, rule: dict):
    """Precision against recall of the similarity alone on the calibration pairs, with the
    points of ``accept`` alone and of the whole rule (keypoint check included)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(curve["recall"], curve["precision"], color="0.4", label="similarity alone")
    at = curve[curve["threshold"] >= rule["accept"]]
    if len(at):
        ax.scatter([at["recall"].iat[-1]], [at["precision"].iat[-1]], color="tab:blue", zorder=3,
                   label=f"accept >= {rule['accept']:.4f}")
    if rule.get("recall") is not None and rule.get("precision") is not None:
        from .duplicates import describe

        ax.scatter([rule["recall"]], [rule["precision"]], color="tab:green", marker="*", s=160, zorder=4,
                   label="the rule: " + describe(rule))
    ax.set_xlabel("recall (edited copies found)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Near-duplicate rule on the catalog's own edited copies")
    fig.tight_layout()
    return fig
