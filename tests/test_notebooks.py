"""The real notebooks, executed by papermill through the runner, on small data."""
import json

import nbformat
import pytest

from helpers import run, store
from conftest import BAD, GOOD


def outputs_text(notebook_path) -> str:
    nb = nbformat.read(notebook_path, as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_01_embed_runs_on_hostile_folder(hostile_dir, tmp_path):
    run_dir = run.run({"run_dir": str(tmp_path / "run"), "image_dir": str(hostile_dir),
                       "catalog": None, "batch_size": 8}, notebooks=["01_embed.ipynb"])
    executed = run_dir / "notebooks" / "01_embed.ipynb"
    assert executed.exists()
    text = outputs_text(executed)
    assert "truncated" in text and "empty file" in text  # the skipped summary is shown
    items = store.load_items(run_dir)
    assert sorted(items["path"]) == sorted(GOOD)
    assert len(store.load_skipped(run_dir)) == len(BAD)
    nb = nbformat.read(executed, as_version=4)
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_unknown_parameter_is_an_error(tmp_path):
    with pytest.raises(run.ParameterError, match="unknown parameter.*n_treez"):
        run.run({"run_dir": str(tmp_path), "n_treez": 5}, notebooks=["01_embed.ipynb"])


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    for path in sorted(run.NOTEBOOK_DIR.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        assert any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]), path.name
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name
