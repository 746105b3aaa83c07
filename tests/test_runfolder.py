"""The run folder: re-runs equal fresh runs, one writer, steps commit as a unit, no import cycle."""
import ast
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from helpers import embed, evaluate, grids, neighbors, run, runfolder, store
from helpers.options import EmbeddingOptions

SRC = Path(__file__).resolve().parents[1] / "src" / "helpers"


def outputs(run_dir: Path) -> dict:
    """What apps and people read of 03, to compare a re-run with a fresh run."""
    return {"json": (run_dir / runfolder.NEAREST_NEIGHBORS).read_text(),
            "duplicates": (run_dir / runfolder.NEAR_DUPLICATES).read_text()}


def fresh(tmp_path, name, image_dir, catalog, embed_options=None, **params) -> dict:
    folder = tmp_path / name
    embed.embed_folder(image_dir, folder, catalog=catalog, progress=False, **(embed_options or {}))
    neighbors.write_neighbors(folder, **params)
    return outputs(folder)


@pytest.fixture
def catalog_copy(tiny_catalog, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(tiny_catalog, folder)
    return folder, folder / "image_data.json"


def test_reembed_with_other_options_then_03_defaults_equals_a_fresh_folder(catalog_copy, tmp_path):
    images, catalog = catalog_copy
    reused = tmp_path / "reused"
    embed.embed_folder(images, reused, catalog=catalog, progress=False)
    neighbors.write_neighbors(reused, level="image")
    embed.embed_folder(images, reused, catalog=catalog, progress=False, resize="pad", hog_weight=0)
    neighbors.write_neighbors(reused, level="image")  # refresh=True: must not reuse the old lists
    assert outputs(reused) == fresh(tmp_path, "fresh", images, catalog, {"resize": "pad", "hog_weight": 0},
                                    level="image")
    assert store.load_meta(reused)["previous_store"].startswith("replaced: other embedding options")


@pytest.mark.parametrize("change", [{"k": 2}, {"level": "image"}, {"include_self": True}])
def test_a_changed_03_parameter_equals_a_fresh_folder(catalog_copy, tmp_path, change):
    images, catalog = catalog_copy
    reused = tmp_path / "reused"
    embed.embed_folder(images, reused, catalog=catalog, progress=False)
    neighbors.write_neighbors(reused, k=3)
    params = {"k": 3, **change}
    neighbors.write_neighbors(reused, **params)
    assert outputs(reused) == fresh(tmp_path, "fresh", images, catalog, **params)
    if change.get("include_self"):
        table = pd.read_parquet(reused / runfolder.NEIGHBORS)
        first = table[table["rank"] == 1]
        assert (first["master_pi"] == first["similar_pi"]).all()  # every master heads its own list


def test_a_catalog_that_grew_equals_a_fresh_folder(catalog_copy, tmp_path):
    images, catalog = catalog_copy
    reused = tmp_path / "reused"
    embed.embed_folder(images, reused, catalog=catalog, progress=False)
    neighbors.write_neighbors(reused, level="image")
    shutil.copy(images / "coffee.jpg", images / "coffee_again.jpg")
    with open(catalog, "a") as f:
        f.write(json.dumps({"imageName": "coffee_again.jpg", "productId": "coffee-9"}) + "\n")
    embed.embed_folder(images, reused, catalog=catalog, progress=False)
    neighbors.write_neighbors(reused, level="image")
    assert outputs(reused) == fresh(tmp_path, "fresh", images, catalog, level="image")


def test_05_in_an_empty_folder_measures_01s_defaults(tmp_path):
    options = evaluate.embedding_options(tmp_path / "empty")
    assert options == EmbeddingOptions()
    assert evaluate.embedding_options(tmp_path, resize="pad", hog_weight=None) == EmbeddingOptions(resize="pad")


def test_every_notebook_default_is_the_helpers_default():
    """01's and 05's option parameters say what EmbeddingOptions says (05: None = the run's)."""
    def parameters(name):
        cell = next(c for c in nbformat.read(run.NOTEBOOK_DIR / name, as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
        return {n.target.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body}

    embed_params, evaluate_params = parameters("01_embed.ipynb"), parameters("05_evaluate.ipynb")
    # the declared defaults ("auto" precision is resolved per machine when options are made)
    declared = {f.name: f.default for f in dataclasses.fields(EmbeddingOptions)}
    for name, default in declared.items():
        if name in embed_params:
            assert embed_params[name] == default, name
        if name in evaluate_params:
            assert evaluate_params[name] is None, name
    assert set(EmbeddingOptions().as_dict()) - set(embed_params) == {"max_pixels"}


def test_a_stale_input_names_the_step_to_rerun(catalog_copy, tmp_path):
    images, catalog = catalog_copy
    folder = tmp_path / "run"
    embed.embed_folder(images, folder, catalog=catalog, progress=False)
    neighbors.write_neighbors(folder)
    embed.embed_folder(images, folder, catalog=catalog, progress=False, resize="pad")
    with pytest.raises(runfolder.StaleError, match="re-run 03_neighbors"):
        grids.render_grids(folder, 2)
    from helpers import export

    with pytest.raises(export.ExportError, match="re-run 03_neighbors"):
        export.to_sqlite(folder)


CONCURRENT = """
import os, sys, time
from helpers import embed, store
ready, checked = sys.argv[3], sys.argv[4]
original = store.PartialWork.write_chunk
def slow(self, *a, **k):
    if not os.path.exists(ready):
        open(ready, "w").close()   # the first run is writing: start the second now ...
        for _ in range(600):       # ... and wait until it has been refused (at most a minute)
            if os.path.exists(checked):
                break
            time.sleep(0.1)
    return original(self, *a, **k)
store.PartialWork.write_chunk = slow
embed.embed_folder(sys.argv[1], sys.argv[2], checkpoint_every=1, batch_size=1, progress=False)
print("first done")
"""


def test_a_second_01_on_a_folder_being_written_is_refused_naming_the_holder(catalog_copy, tmp_path):
    images, _ = catalog_copy
    folder, ready, checked = tmp_path / "run", tmp_path / "ready", tmp_path / "checked"
    first = subprocess.Popen([sys.executable, "-c", CONCURRENT, str(images), str(folder), str(ready), str(checked)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if ready.exists() or first.poll() is not None:
            break
        subprocess.run(["sleep", "0.1"])
    assert ready.exists(), first.communicate()[1][-2000:]
    with pytest.raises(runfolder.RunFolderBusy, match=rf"pid {first.pid} on .+, since "):
        embed.embed_folder(images, folder, progress=False, resize="pad")
    checked.touch()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and "first done" in out, err[-2000:]
    _, items, meta = store.load_store(folder)
    assert len(items) == 8 and meta["resize"] == "crop"  # the first run, complete and alone


def test_a_lock_whose_process_died_is_taken_over(catalog_copy, tmp_path):
    images, _ = catalog_copy
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from helpers import runfolder
        with runfolder.lock({str(folder)!r}, "test"):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(runfolder.RunFolderBusy):
        with runfolder.lock(folder, "second"):
            pass
    holder.kill()
    holder.wait()
    embed.embed_folder(images, folder, progress=False)  # the dead holder's lock is taken over
    assert len(store.load_items(folder)) == 8


KILLED = """
import os, signal, sys
from helpers import neighbors, runfolder
point, calls = sys.argv[2], []
if point == "staging":   # while 03 writes its new files, before the commit
    original = runfolder.write_table
    def die(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*a, **k)
    runfolder.write_table = die
else:                    # between the renames that switch the files in
    original = os.replace
    def die(src, dst):
        if ".staging" in str(src) and ".staging" not in str(dst):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(src, dst)
    runfolder.os.replace = die
neighbors.write_neighbors(sys.argv[1], k=2, level="image")
"""


@pytest.mark.parametrize("point", ["staging", "moving"])
def test_kill_9_of_03_between_its_writes(catalog_copy, tmp_path, point):
    images, catalog = catalog_copy
    folder = tmp_path / "run"
    embed.embed_folder(images, folder, catalog=catalog, progress=False)
    neighbors.write_neighbors(folder, k=3)
    before = outputs(folder)
    killed = subprocess.run([sys.executable, "-c", KILLED, str(folder), point], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    meta = runfolder.record(folder, "neighbors")  # a reader settles the folder first
    table = pd.read_parquet(folder / runfolder.NEIGHBORS)
    records = json.loads((folder / runfolder.NEAREST_NEIGHBORS).read_text())
    if point == "staging":  # not committed: the previous set, untouched
        assert outputs(folder) == before and meta["k"] == 3 and meta["level"] == "product"
    else:  # committed: the new set, completed
        assert meta["k"] == 2 and meta["level"] == "image"
    assert len(records) == len(table) == meta["pairs"]  # one set, not a mix
    assert not (folder / runfolder.STAGING).exists()


def test_the_import_graph_has_no_cycle():
    """Module-level and function-level imports of helpers modules, as a graph: acyclic."""
    graph = {}
    for path in SRC.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                deps |= {n.split(".")[0] for n in names if (SRC / f"{n.split('.')[0]}.py").exists()}
        graph[path.stem] = deps - {path.stem}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join(trail + [module])
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            visit(dep, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_no_run_file_name_is_spelled_outside_runfolder():
    """Modules and notebooks' code take run-file names from ``runfolder`` (docstrings and
    markdown may still name them for people)."""
    names = {v for k, v in vars(runfolder).items() if k.isupper() and isinstance(v, str) and "." in v}

    def literals(source: str) -> set:
        tree = ast.parse(source)
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                and isinstance(n.body[0], ast.Expr)}
        return {n.value for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs}

    for path in SRC.glob("*.py"):
        if path.name != "runfolder.py":
            assert not literals(path.read_text()) & names, path.name
    for path in run.NOTEBOOK_DIR.glob("*.ipynb"):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert not literals(code) & names, path.name


def test_a_commit_replayed_after_its_renames_keeps_the_new_files(tmp_path):
    """Killed after moving its files but before removing the staging folder: the replay
    must not delete the record it moved."""
    staging = runfolder.Staging(tmp_path, "index")
    runfolder.write_table(staging.path(runfolder.SWEEP), pd.DataFrame({"a": [1]}))
    staging.commit({"backend": "exact"})
    left = tmp_path / runfolder.STAGING / "index"
    left.mkdir(parents=True)
    runfolder.write_json(left / "COMMIT", {"move": [runfolder.SWEEP, runfolder.INDEX_CHOICE], "remove": []})
    assert runfolder.record(tmp_path, "index") == {"backend": "exact"}
    assert (tmp_path / runfolder.SWEEP).exists() and not (tmp_path / runfolder.STAGING).exists()
