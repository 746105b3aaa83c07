"""helpers.plots: figures drawn from real pictures, with labels as users write them."""
import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from conftest import photo  # noqa: E402
from helpers import plots  # noqa: E402

HOSTILE_LABELS = ["P$\\bar$", "SKU $5-$10", "a$foo$.jpg"]


def test_dollar_signs_in_labels_are_plain_text(tmp_path):
    """matplotlib reads $...$ as maths: 'P$\\bar$' failed to draw, 'SKU $5-$10' was typeset."""
    for name in ("chelsea", "coffee"):
        photo(name).save(tmp_path / f"{name}.jpg")
    fig = plots.plot_neighbor_rows(tmp_path, ["chelsea.jpg"], [["coffee.jpg"] * 3], [[0.9, 0.8, 0.7]],
                                   labels=[HOSTILE_LABELS])
    fig.canvas.draw()  # raised ValueError before
    titles = [ax.get_title() for ax in fig.axes[1:4]]
    assert [t.split("\n")[0] for t in titles] == HOSTILE_LABELS
    assert all(not ax.title.get_parse_math() for ax in fig.axes)
    table = pd.DataFrame([[0.5, 0.5], [0.2, 0.8]], index=HOSTILE_LABELS[:2], columns=HOSTILE_LABELS[:2])
    plots.plot_confusion(table).canvas.draw()
    summary = pd.DataFrame({"recall@1": [0.5, 0.7]}, index=HOSTILE_LABELS[1:])
    plots.plot_metric_bars(summary, ["recall@1"], "SKU $5").canvas.draw()
