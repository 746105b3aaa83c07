"""The real notebooks, executed by papermill through the runner, on small data."""
import json
import re

import nbformat
import pandas as pd
import pytest

from helpers import run, store
from conftest import BAD, GOOD, write_catalog


def outputs_text(notebook_path) -> str:
    nb = nbformat.read(notebook_path, as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def pipeline_run(hostile_dir, tmp_path_factory):
    """01 -> 02 -> 03 on the hostile folder, with a catalog and a tiny sweep grid."""
    tmp = tmp_path_factory.mktemp("pipeline")
    records = [{"imageName": p, "productId": f"SKU-{i % 9}"} for i, p in enumerate(sorted(GOOD))]
    records += [{"imageName": p, "productId": f"BROKEN-{i}"} for i, p in enumerate(sorted(BAD))]
    catalog = write_catalog(tmp / "image_data.json", records)
    run_dir = run.run({"run_dir": str(tmp / "run"), "image_dir": str(hostile_dir),
                       "catalog": str(catalog), "batch_size": 8, "n_trees_grid": [1, 5],
                       "search_k_grid": [-1, 2], "n_queries": 5, "include_reference": False,
                       "backends": ["annoy", "faiss-hnsw", "voyager", "faiss-ivfpq"],
                       "M_grid": [8], "ef_grid": [16], "nprobe_grid": [2],
                       "k": 4, "level": "product"})
    return run_dir


def test_01_embed_on_hostile_folder(pipeline_run):
    executed = pipeline_run / "notebooks" / "01_embed.ipynb"
    text = outputs_text(executed)
    assert "truncated" in text and "empty file" in text  # the skipped summary is shown
    items = store.load_items(pipeline_run)
    assert sorted(items["path"]) == sorted(GOOD)
    assert len(store.load_skipped(pipeline_run)) == len(BAD)
    nb = nbformat.read(executed, as_version=4)
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_02_sweep_writes_table_and_choice(pipeline_run):
    table = pd.read_csv(pipeline_run / "sweep.csv")
    assert sorted(table.loc[table["backend"] == "annoy", "n_trees"].unique()) == [1, 5]
    # every backend asked for is on the same table, with its own settings
    assert table.groupby("backend").size().to_dict() == {"exact": 1, "annoy": 4, "faiss-hnsw": 1,
                                                          "voyager": 1, "faiss-ivfpq": 1}
    assert table.loc[table["backend"] == "voyager", ["M", "ef"]].values.tolist() == [[8, 16]]
    ivf = table[table["backend"] == "faiss-ivfpq"]
    # 13 images make one inverted list: nprobe 2 is not possible, the sweep scans the one list
    assert ivf["nlist"].tolist() == [1] and ivf["nprobe"].tolist() == [1]
    choice = json.loads((pipeline_run / "index_choice.json").read_text())
    assert choice["backend"] in table["backend"].unique() and "reason" in choice


def test_03_writes_reference_format(pipeline_run):
    records = json.loads((pipeline_run / "nearest_neighbors.json").read_text())
    assert records and all(list(r) == ["similarity", "master_pi", "similar_pi"] for r in records)
    masters = {r["master_pi"] for r in records}
    assert masters == {f"SKU-{i}" for i in range(9)}
    assert all(r["master_pi"] != r["similar_pi"] for r in records)
    per_master = pd.DataFrame(records).groupby("master_pi").size()
    assert (per_master == 4).all()
    table = pd.read_parquet(pipeline_run / "neighbors.parquet")
    assert len(table) == len(records)
    assert (pipeline_run / "near_duplicates.csv").exists()


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    for path in sorted(run.NOTEBOOK_DIR.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        assert any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]), path.name
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name


@pytest.mark.parametrize("notebook", run.NOTEBOOKS)
def test_papermill_reads_every_parameter_with_its_type(notebook):
    """``papermill --help-notebook`` lists each assignment of the parameters cell, typed."""
    import ast
    import subprocess
    import sys

    path = run.NOTEBOOK_DIR / notebook
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    declared = [node.target.id for node in ast.parse(cell.source).body if isinstance(node, ast.AnnAssign)]
    assert len(declared) == len(ast.parse(cell.source).body)  # every line is `name: type = value`
    papermill = [sys.executable, "-c", "import sys; from papermill.cli import papermill; sys.exit(papermill())"]
    shown = subprocess.run(papermill + ["--help-notebook", str(path)], capture_output=True, text=True,
                           check=True).stdout
    listed = dict(re.findall(r"^  (\w+): (.+?) \(default ", shown, flags=re.M))
    assert list(listed) == declared, shown
    assert "Unknown type" not in listed.values() and "Unable to parse" not in shown
