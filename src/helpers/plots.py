"""Figures for the notebooks: image grids and distributions. Functions return figures."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .images import thumbnail


def similarity_color(similarity: float) -> tuple:
    """Red (0.5 or less) through yellow to green (1.0)."""
    return plt.cm.RdYlGn(float(np.clip((similarity - 0.5) / 0.5, 0, 1)))


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
