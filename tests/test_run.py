"""The runner: parameters, failures, HTML exports and sweeps, on a tiny real catalog."""
import json
import shutil

import pandas as pd
import pytest

from conftest import require
from helpers import fashion_mnist, run, runfolder, store

FAST = ["01_embed.ipynb", "03_neighbors.ipynb"]


def test_cli_config_overrides_and_outputs(tiny_run):
    run_dir, out = tiny_run
    assert f"report: {run_dir / 'report.html'}" in out
    records = json.loads((run_dir / "nearest_neighbors.json").read_text())
    assert len(records) == 8 * 3  # the -p override (k=3) won over the file (k=5)
    for name in ("embeddings.npy", "items.parquet", "skipped.csv", "embed_meta.json", "sweep.csv",
                 "index_choice.json", "neighbors.parquet", "near_duplicates.csv", "neighbors_meta.json",
                 "catalog_map.jpg", "report.html", "explorer.html"):
        assert (run_dir / name).stat().st_size > 0, name
    store.load_store(run_dir)
    pd.read_csv(run_dir / "sweep.csv"), pd.read_parquet(run_dir / "neighbors.parquet")
    json.loads((run_dir / "index_choice.json").read_text())
    assert len(list((run_dir / "grids").glob("*.png"))) == 2
    for nb in run.NOTEBOOKS:
        html = (run_dir / "notebooks" / nb).with_suffix(".html").read_text()
        assert "<html" in html and "data:image/png;base64" in html, nb  # figures are inline
    page = (run_dir / "report.html").read_text()
    assert "images embedded" in page and "01_embed.html" in page and "04_visual_grids.html" in page
    assert 'href="explorer.html"' in page and page.index("Neighbours, as 04 drew them") < page.index("Key figures")


def test_evaluation_notebook_measures_both_benchmarks(tiny_run):
    """05 ran through papermill: the near-duplicate benchmark of the tiny catalog and a
    Fashion-MNIST subset, every figure in metrics.json and on the report's front page."""
    run_dir, _ = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = pd.read_csv(run_dir / "benchmark_near_duplicates" / "labels.csv")
    # the 8 images are 4 photos and their copies: only 4 are sources, each with all 7 edits
    assert (labels["transform"] == "source").sum() == 4
    assert metrics["near-duplicates: queries"] == 4 * 7
    assert metrics["near-duplicates: recall@1"] >= 0.85  # real photos, real model: edits are found
    assert metrics["near-duplicates: recall@3"] == 1.0  # k=3 (the -p override)
    if fashion_mnist.missing() is None:
        assert metrics["fashion-mnist: queries"] == 4
        assert 0.0 <= metrics["fashion-mnist: precision@3"] <= 1.0
    else:  # not installed here: 05 ran the rest and says which benchmark it skipped and why
        require("fashion-mnist")  # (under CI=true, a failure)
    assert "pooling=gem" in metrics["near-duplicates: evaluated with"]  # what "auto" means for Lite0
    assert metrics["near-duplicates: evaluated with"].endswith("query_expansion=0, rerank=none")
    page = (run_dir / "report.html").read_text()
    assert "near-duplicates: recall@1 (background)" in page and "fashion-mnist: precision@3" in page


def test_evaluation_without_fashion_mnist_runs_the_rest_and_says_why(tiny_run, tmp_path):
    """Where the data set is not installed, 05 still finishes; the report names the skip and
    the command that enables it."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    config = {"run_dir": str(run_dir), "benchmark": ["near-duplicates", "fashion-mnist"], "k": 3,
              "data_dir": str(tmp_path / "no-fashion-mnist"), "variants_per_source": 1}
    run.run(config, notebooks=["05_evaluate.ipynb"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "pass data_dir a folder" in metrics["fashion-mnist: skipped"]
    assert metrics["near-duplicates: queries"] == 4
    assert "fashion-mnist: skipped" in (run_dir / "report.html").read_text()


def test_unknown_parameter_is_refused_before_anything_runs(tiny_catalog, tmp_path):
    with pytest.raises(SystemExit):
        run.main(["-p", "run_dir", str(tmp_path / "run"), "-p", "n_treez", "5"])
    with pytest.raises(run.ParameterError, match="unknown parameter.*n_treez"):
        run.run({"run_dir": str(tmp_path / "run"), "n_treez": 5})
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_refused_plainly(tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(SystemExit):
        run.main(["-p", "run_dir", str(tmp_path / "run")])
    assert "cannot make the run folder there (Not a directory)" in capsys.readouterr().err


def test_failing_notebook_stops_with_cell_and_partial_html(tmp_path):
    with pytest.raises(run.RunError, match=r"01_embed.ipynb failed in cell \d+: FileNotFoundError") as err:
        run.run({"run_dir": str(tmp_path / "run"), "image_dir": str(tmp_path / "missing"),
                 "catalog": None}, notebooks=FAST)
    partial = tmp_path / "run" / "notebooks" / "01_embed.html"
    assert str(partial) in str(err.value) and "is not a folder" in partial.read_text()
    assert not (tmp_path / "run" / "notebooks" / "03_neighbors.ipynb").exists()
    assert "failed in cell" in (tmp_path / "run" / "report.html").read_text()


def test_sweep_2x2_embeds_once_per_model(tiny_catalog, tmp_path, capsys):
    config = {"run_dir": str(tmp_path / "sweep"), "image_dir": str(tiny_catalog),
              "catalog": str(tiny_catalog / "image_data.json"),
              "model_handle": ["efficientnet-lite0", "efficientnet-lite2"], "k": [2, 3],
              "duplicate_threshold": 0.95}  # the calibration is tested elsewhere; here, the sweep's embeddings
    page = run.run_sweep(config, notebooks=FAST)
    assert page == tmp_path / "sweep" / "sweep_summary.html"
    summary = pd.read_csv(tmp_path / "sweep" / "sweep_summary.csv")
    assert len(summary) == 4 and (summary["status"] == "ok").all()
    assert sorted(zip(summary["model_handle"], summary["k"])) == [
        ("efficientnet-lite0", 2), ("efficientnet-lite0", 3), ("efficientnet-lite2", 2), ("efficientnet-lite2", 3)]
    out = capsys.readouterr().out
    embedded = [line for line in out.splitlines() if line.startswith("01_embed ")]
    assert len(embedded) == 4 and sum(line.endswith(" ok") for line in embedded) == 2  # once per model
    runs = [tmp_path / "sweep" / r for r in summary["run"]]
    for r, k in zip(runs, summary["k"]):
        records = json.loads((r / "nearest_neighbors.json").read_text())
        assert len(records) == 8 * k
    created = {store.load_meta(r)["model_handle"]: set() for r in runs}
    for r in runs:
        created[store.load_meta(r)["model_handle"]].add(store.load_meta(r)["created"])
    assert all(len(v) == 1 for v in created.values())
    assert "sweep_summary" in page.read_text() or "<table" in page.read_text()
    assert 'href="explorer.html"' in page.read_text() and (tmp_path / "sweep" / runfolder.EXPLORER).exists()


def test_list_parameters_are_not_sweeps():
    combos = run.expand_sweep({"run_dir": "x", "n_trees_grid": [1, 5], "resize": ["crop", "pad"]})
    assert [c["resize"] for c in combos] == ["crop", "pad"]
    assert all(c["n_trees_grid"] == [1, 5] for c in combos)
    combos = run.expand_sweep({"run_dir": "x", "n_trees_grid": [[1], [5, 10]]})
    assert [c["n_trees_grid"] for c in combos] == [[1], [5, 10]]


def test_none_means_nothing_on_the_command_line_and_in_yaml(tmp_path):
    assert run.parse_value("null") is None
    assert run.parse_value("20") == 20 and run.parse_value("[1, 5]") == [1, 5]
    notebook = run.NOTEBOOK_DIR / run.EMBED_NOTEBOOK
    params = run.resolve_parameters({"run_dir": "x", "catalog": run.parse_value("None"), "image_dir": "photos"},
                                    [notebook], tmp_path)[notebook]
    assert params["catalog"] is None  # not a file called "None"
    assert params["image_dir"] == str((tmp_path / "photos").resolve())


HOSTILE_NAMES = ["<img src=x onerror=alert(1)>.jpg", "\"quoted' & <b>bold.png", "SKU $5-$10.jpg"]


def test_a_sweep_on_hostile_names_writes_no_raw_tag_and_fails_loudly(tmp_path, monkeypatch):
    """Names and error messages reach every page as text; a sweep with a failed run exits non-zero."""
    from conftest import photo

    good = tmp_path / "shop1" / "images"
    good.mkdir(parents=True)
    for name, picture in zip(HOSTILE_NAMES, ("chelsea", "coffee", "rocket")):
        photo(picture).save(good / name)
    missing = tmp_path / "shop2" / "<i>images"  # does not exist: that run fails, naming it
    config = {"run_dir": str(tmp_path / "sweep"), "image_dir": [str(good), str(missing)], "catalog": None,
              "k": 2, "queries": 2}
    with pytest.raises(run.RunError, match=r"1 of 2 sweep runs failed:\n  image_dir=_i_images: 01_embed"):
        run.run_sweep(config, notebooks=["01_embed.ipynb", "03_neighbors.ipynb", "04_visual_grids.ipynb"])
    pages = sorted((tmp_path / "sweep").rglob("*.html"))
    assert len(pages) >= 5  # the sweep page, two reports, the notebooks
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for raw in ("<img src=x", "<b>bold", "<i>images"):
            assert raw not in text, (page.name, raw)
    assert "&lt;i&gt;images" in (tmp_path / "sweep" / runfolder.SWEEP_PAGE).read_text()
    monkeypatch.setattr(run, "NOTEBOOKS", ["01_embed.ipynb"])
    assert run.main(["-p", "run_dir", str(tmp_path / "again"), "-p", "image_dir", f"[{good}, {missing}]",
                     "-p", "catalog", "null"]) == 1  # the command line's exit code says it too


def test_sweep_folders_of_same_named_paths_do_not_collide():
    combos = run.expand_sweep({"run_dir": "x", "image_dir": ["/data/shop1/images", "/data/shop2/images"]})
    names = run.run_folder_names(combos)
    assert len(set(names)) == 2 and all(n.startswith("image_dir=images-") for n in names)
    assert run.run_folder_names(run.expand_sweep({"run_dir": "x", "k": [2, 3]})) == ["k=2", "k=3"]


def test_a_sweep_that_reuses_a_whitened_store_carries_its_whitening(tiny_catalog, tmp_path):
    """The second run shares the first's embeddings: without whitening.npz its 03 failed."""
    config = {"run_dir": str(tmp_path / "sweep"), "image_dir": str(tiny_catalog),
              "catalog": str(tiny_catalog / "image_data.json"), "postprocess": "whiten", "k": [2, 3]}
    run.run_sweep(config, notebooks=FAST)
    summary = pd.read_csv(tmp_path / "sweep" / runfolder.SWEEP_SUMMARY)
    assert (summary["status"] == "ok").all()
    second = tmp_path / "sweep" / "k=3"
    assert (second / runfolder.WHITENING).exists()
    assert len(json.loads((second / runfolder.NEAREST_NEIGHBORS).read_text())) == 8 * 3
