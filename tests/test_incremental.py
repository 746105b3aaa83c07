"""Day-2 runs of 01: grown / shrunk / modified catalogs, and runs killed with SIGKILL."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from helpers import runfolder, store
from helpers.embed import embed_folder
from helpers.features import HOG_DIM
from conftest import PHOTOS, photo


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    """24 product photos: crops, flips and tints of scikit-image's photos."""
    root = tmp_path_factory.mktemp("catalog")
    n = 0
    for name in PHOTOS:
        im = photo(name)
        for variant in range(6):
            w, h = im.size
            m = 8 * variant
            v = im.crop((m, m, w - m, h - m))
            if variant % 2:
                v = ImageOps.mirror(v)
            if variant >= 4:
                v = Image.blend(v, Image.new("RGB", v.size, (255, 200, 120)), 0.2)
            folder = root / ("a" if n % 2 else "b")
            folder.mkdir(exist_ok=True)
            v.save(folder / f"{name}_{variant}.jpg", quality=88)
            n += 1
    return root


def files_of(run_dir):
    embeddings, items, _ = store.load_store(run_dir)
    return np.asarray(embeddings), items, store.load_skipped(run_dir)


def assert_same_store(a, b):
    ea, ia, sa = files_of(a)
    eb, ib, sb = files_of(b)
    pd.testing.assert_frame_equal(ia, ib)
    pd.testing.assert_frame_equal(sa, sb)
    np.testing.assert_array_equal(ea, eb)


def test_changed_catalog_embeds_only_what_changed(catalog_dir, tmp_path):
    run_dir = tmp_path / "run"
    first = embed_folder(catalog_dir, run_dir, progress=False)
    assert first["n_embedded_now"] == 24 and first["previous_store"] is None

    changed = tmp_path / "changed"
    shutil.copytree(catalog_dir, changed)
    (changed / "a" / "coffee_1.jpg").unlink()                                   # removed
    (changed / "b" / "rocket_0.jpg").rename(changed / "b" / "rocket_zero.jpg")  # renamed
    Image.open(changed / "a" / "chelsea_1.jpg").rotate(90).save(changed / "a" / "chelsea_1.jpg")  # modified
    photo("coffee").resize((200, 150)).save(changed / "new_coffee.png")         # added
    (changed / "broken.jpg").write_bytes(b"\xff\xd8\xff")                      # added, bad

    again = embed_folder(changed, run_dir, progress=False)
    assert again["n_embedded_now"] == 2  # the modified and the added image; not the renamed one
    assert again["n_reused"] == 22 and again["n_removed"] == 2  # coffee_1 and the old rocket_0 path
    assert again["previous_store"] == "reused"
    scratch = embed_folder(changed, tmp_path / "scratch", progress=False)
    assert scratch["n_embedded_now"] == 24
    assert_same_store(run_dir, tmp_path / "scratch")
    assert not (run_dir / runfolder.PARTIAL).exists()


def test_another_model_or_resize_never_mixes_vectors(catalog_dir, tmp_path):
    embed_folder(catalog_dir, tmp_path / "run", progress=False)
    padded = embed_folder(catalog_dir, tmp_path / "run", resize="pad", progress=False)
    assert padded["n_reused"] == 0 and padded["n_embedded_now"] == 24
    assert padded["previous_store"].startswith("replaced")
    embed_folder(catalog_dir, tmp_path / "pad", resize="pad", progress=False)
    assert_same_store(tmp_path / "run", tmp_path / "pad")
    # the default precision is this machine's ("auto"); the other one is other vectors
    other = "float32" if padded["precision"] == "int8" else "int8"
    quantised = embed_folder(catalog_dir, tmp_path / "run", resize="pad", precision=other, progress=False)
    assert quantised["n_reused"] == 0 and quantised["precision"] == other
    assert quantised["previous_store"] == f"replaced: other embedding options (precision {padded['precision']} -> {other})"
    outlined = embed_folder(catalog_dir, tmp_path / "run", resize="pad", precision=other, hog_weight=1.0,
                            progress=False)
    assert outlined["n_reused"] == 0 and outlined["previous_store"].startswith("replaced")
    assert outlined["dim"] == 1280 + HOG_DIM and store.load_store(tmp_path / "run")[0].shape == (24, 1280 + HOG_DIM)


def test_a_store_without_records_is_embedded_again_with_a_note(catalog_dir, tmp_path):
    """A folder from an older version (no ``computed_from``) is not trusted: embedded again."""
    embed_folder(catalog_dir, tmp_path / "run", progress=False)
    meta_path = tmp_path / "run" / runfolder.EMBED_META
    meta = json.loads(meta_path.read_text())
    del meta["computed_from"]  # as earlier versions wrote it
    meta_path.write_text(json.dumps(meta))
    again = embed_folder(catalog_dir, tmp_path / "run", progress=False)
    assert again["n_reused"] == 0 and again["previous_store"].startswith("replaced: a run folder from an older")
    assert embed_folder(catalog_dir, tmp_path / "run", progress=False)["n_reused"] == 24


def start_embedding(image_dir, run_dir):
    code = (f"from helpers.embed import embed_folder; "
            f"embed_folder({str(image_dir)!r}, {str(run_dir)!r}, batch_size=2, checkpoint_every=2, "
            f"progress=False)")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("kill_after_chunks", [1, 5])
def test_kill_9_and_resume_gives_identical_files(catalog_dir, tmp_path, kill_after_chunks):
    reference = tmp_path / "reference"
    embed_folder(catalog_dir, reference, progress=False)
    run_dir = tmp_path / "run"
    proc = start_embedding(catalog_dir, run_dir)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((run_dir / runfolder.PARTIAL).glob("chunk_*.parquet"))) >= kill_after_chunks:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    chunks = len(list((run_dir / runfolder.PARTIAL).glob("chunk_*.parquet")))
    assert chunks >= kill_after_chunks and not (run_dir / runfolder.EMBED_META).exists()
    resumed = embed_folder(catalog_dir, run_dir, progress=False)
    assert resumed["n_reused"] >= 2 * chunks  # checkpointed vectors were not computed again
    assert_same_store(run_dir, reference)


def test_crash_while_moving_the_finished_files_is_replayed(catalog_dir, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    embed_folder(catalog_dir, reference, progress=False)
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        if str(src).endswith(runfolder.ITEMS) and runfolder.STAGING in str(src) and runfolder.STAGING not in str(dst):
            calls.append(src)
            raise KeyboardInterrupt("killed between two renames")
        return real_replace(src, dst)

    monkeypatch.setattr(runfolder.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        embed_folder(catalog_dir, tmp_path / "run", progress=False)
    monkeypatch.setattr(runfolder.os, "replace", real_replace)
    assert calls and not (tmp_path / "run" / runfolder.EMBED_META).exists()
    embed_folder(catalog_dir, tmp_path / "run", progress=False)
    assert_same_store(tmp_path / "run", reference)


@pytest.mark.parametrize("level", ["image", "product"])
def test_refreshed_neighbours_equal_a_full_run(catalog_dir, tmp_path, level):
    from helpers.neighbors import write_neighbors
    from conftest import write_catalog

    def catalog_for(folder):
        records = [{"imageName": p.relative_to(folder).as_posix(), "productId": p.stem.rsplit("_", 1)[0]
                    + ("-x" if p.stem.endswith(("4", "5")) else "")} for p in sorted(folder.rglob("*.*"))
                   if p.suffix in (".jpg", ".png")]
        return write_catalog(tmp_path / f"{folder.name}.json", records)

    run_dir = tmp_path / "run"
    embed_folder(catalog_dir, run_dir, catalog=catalog_for(catalog_dir), progress=False)
    first = write_neighbors(run_dir, k=5, backend="exact", level=level)
    assert not first["refreshed"] and first["masters_with_changed_neighbors"] is None

    grown = tmp_path / "grown"
    shutil.copytree(catalog_dir, grown)
    (grown / "b" / "chelsea_0.jpg").unlink()
    Image.open(grown / "a" / "rocket_1.jpg").rotate(180).save(grown / "a" / "rocket_1.jpg")
    photo("astronaut").crop((100, 0, 400, 300)).save(grown / "b" / "astronaut_9.png")
    catalog = catalog_for(grown)
    embed_folder(grown, run_dir, catalog=catalog, progress=False)
    refreshed = write_neighbors(run_dir, k=5, backend="exact", level=level)
    assert refreshed["refreshed"] and refreshed["items_searched"] < 24
    assert refreshed["masters_with_changed_neighbors"] > 0

    scratch = tmp_path / "scratch"
    embed_folder(grown, scratch, catalog=catalog, progress=False)
    write_neighbors(scratch, k=5, backend="exact", level=level, refresh=False)
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "neighbors.parquet"),
                                  pd.read_parquet(scratch / "neighbors.parquet"))
    assert (run_dir / "nearest_neighbors.json").read_text() == (scratch / "nearest_neighbors.json").read_text()


def test_a_run_with_nothing_to_embed_keeps_the_runtime(catalog_dir, tmp_path):
    """Nothing new: no model is loaded, and the record carries the runtime of the reused vectors."""
    run_dir = tmp_path / "run"
    first = embed_folder(catalog_dir, run_dir, progress=False)
    again = embed_folder(catalog_dir, run_dir, progress=False)
    assert again["n_embedded_now"] == 0 and again["runtime"] == first["runtime"] == "tflite"
    assert again["computed_from"] == first["computed_from"]  # the same store: later steps stay valid
