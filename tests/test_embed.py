"""embed_folder on real images, including every kind of hostile file."""
import json

import numpy as np
import pytest

from helpers import runfolder, store
from helpers.catalog import CatalogError
from helpers.embed import embed_folder
from helpers.features import HOG_DIM
from conftest import BAD, GOOD, write_catalog


@pytest.fixture(scope="module")
def hostile_run(hostile_run_dir):
    return hostile_run_dir, store.load_meta(hostile_run_dir)


def test_good_files_embedded_bad_files_explained(hostile_run):
    run_dir, meta = hostile_run
    embeddings, items, _ = store.load_store(run_dir)
    assert sorted(items["path"]) == sorted(GOOD)
    skipped = store.load_skipped(run_dir)
    assert sorted(skipped["path"]) == sorted(BAD)
    reasons = dict(zip(skipped["path"], skipped["reason"]))
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["truncated.jpg"].startswith("truncated")
    assert reasons["notes.png"].startswith("not an image")
    assert reasons["bomb.png"].startswith("too large")
    assert reasons["broken.heic"].startswith("corrupt image data")
    assert meta["n_items"] == len(GOOD) and meta["n_skipped"] == len(BAD)
    assert meta["other_files"] == {".txt": 1}  # readme.txt: counted, never read
    assert embeddings.shape == (len(GOOD), 1280 + HOG_DIM)  # the model's numbers + the outline's
    assert embeddings.dtype == np.float32


def test_store_rows_line_up(hostile_run, hostile_dir):
    run_dir, _ = hostile_run
    embeddings, items, meta = store.load_store(run_dir)
    assert items["row"].tolist() == list(range(len(items)))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    import hashlib
    for path, digest in zip(items["path"], items["sha256"]):
        assert hashlib.sha256((hostile_dir / path).read_bytes()).hexdigest() == digest
    cat = items.set_index("path").loc["rotated.jpg"]
    assert (cat["width"], cat["height"]) == (300, 451)  # EXIF-rotated chelsea (451 x 300)
    assert meta["model_handle"] == "efficientnet-lite0" and meta["resize"] == "crop"
    assert json.loads((run_dir / runfolder.EMBED_META).read_text())["dim"] == 1280 + HOG_DIM


def test_same_product_in_other_formats_is_its_nearest_neighbour(hostile_run):
    run_dir, _ = hostile_run
    embeddings, items, _ = store.load_store(run_dir)
    row = {p: i for i, p in enumerate(items["path"])}
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -1)
    pairs = [("coffee.PNG", "café ☕.jpg"), ("coffee.PNG", "coffee_palette.gif"),
             ("sub/deeper/rocket.webp", "rocket_alpha.png"), ("astronaut_cmyk.jpg", "astronaut_grey.tif")]
    for a, b in pairs:
        assert sims[row[a]].argmax() == row[b] or sims[row[b]].argmax() == row[a], (a, b)
        assert sims[row[a], row[b]] > 0.8
    # the rotated copy is upright again, so it is closer to the cat than to anything else
    assert items["path"][sims[row["rotated.jpg"]].argmax()] in {"cat.jpg", "sub/cat.jpg", "photo.jfif", "cat.heic"}


def test_catalog_problems_stop_before_any_work(hostile_dir, tmp_path):
    catalog = write_catalog(tmp_path / "image_data.json", [{"imageName": "cat.jpg", "productId": "CAT"}])
    with pytest.raises(CatalogError, match="have no productId"):
        embed_folder(hostile_dir, tmp_path / "run", catalog=catalog, progress=False)
    assert not (tmp_path / "run" / runfolder.EMBEDDINGS).exists()


def test_catalog_skip_mode_lists_unlisted_images(hostile_dir, tmp_path):
    catalog = write_catalog(tmp_path / "image_data.json", [
        {"imageName": "cat.jpg", "productId": "CAT-1"},        # bare name, unique at top level
        {"imageName": "sub/cat.jpg", "productId": "CAT-2"},    # same name, other folder
        {"imageName": "empty.jpg", "productId": "EMPTY"},
    ])
    meta = embed_folder(hostile_dir, tmp_path / "run", catalog=catalog, on_missing="skip",
                        progress=False)
    items = store.load_items(tmp_path / "run")
    assert dict(zip(items["path"], items["productId"])) == {"cat.jpg": "CAT-1", "sub/cat.jpg": "CAT-2"}
    skipped = store.load_skipped(tmp_path / "run")
    assert "no productId" in skipped.set_index("path").loc["coffee.PNG", "reason"]
    assert skipped.set_index("path").loc["empty.jpg", "reason"].startswith("empty file")
    assert meta["n_skipped"] == len(GOOD) + len(BAD) - 2


def test_resize_modes_give_different_vectors(hostile_dir, tmp_path):
    crop = embed_folder(hostile_dir, tmp_path / "crop", resize="crop", recursive=False, progress=False)
    pad = embed_folder(hostile_dir, tmp_path / "pad", resize="pad", recursive=False, progress=False)
    a, b = store.load_embeddings(tmp_path / "crop"), store.load_embeddings(tmp_path / "pad")
    assert crop["n_items"] == pad["n_items"] and not np.allclose(a, b)
    assert pad["resize"] == "pad"


def test_rerun_replaces_the_store(hostile_dir, tmp_path):
    embed_folder(hostile_dir, tmp_path, recursive=False, progress=False)
    first = store.load_embeddings(tmp_path, mmap=False)
    embed_folder(hostile_dir, tmp_path, recursive=False, progress=False)
    np.testing.assert_allclose(store.load_embeddings(tmp_path), first, atol=1e-6)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != runfolder.LOCK]
    assert leftovers == []


def test_file_names_that_are_not_utf8_are_explained_not_fatal(tmp_path):
    import os
    from PIL import Image

    folder = tmp_path / "shop"
    folder.mkdir()
    Image.new("RGB", (40, 40), (10, 200, 10)).save(folder / "ok.jpg")
    Image.new("RGB", (40, 40), (20, 10, 200)).save(folder / "new\nline.png")
    with open(os.path.join(os.fsencode(folder), b"bad\xffname.jpg"), "wb") as f:
        Image.new("RGB", (40, 40), (200, 10, 10)).save(f, "JPEG")
    meta = embed_folder(folder, tmp_path / "run", progress=False)
    items, skipped = store.load_items(tmp_path / "run"), store.load_skipped(tmp_path / "run")
    assert sorted(items["path"]) == ["new\nline.png", "ok.jpg"]
    assert skipped.to_dict("records") == [
        {"path": "bad\\xffname.jpg", "reason": "file name is not valid UTF-8: rename the file to include it"}]
    assert meta["n_files"] == 3


def test_a_run_folder_inside_image_dir_is_not_embedded(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 200, 10)).save(tmp_path / "ok.jpg")
    run_dir = tmp_path / "outputs" / "run"
    embed_folder(tmp_path, run_dir, progress=False)
    (run_dir / "grids").mkdir()
    Image.new("RGB", (40, 40)).save(run_dir / "grids" / "001.png")  # what 04 leaves behind
    meta = embed_folder(tmp_path, run_dir, progress=False)
    assert store.load_items(run_dir)["path"].tolist() == ["ok.jpg"] and meta["n_files"] == 1
    assert meta["other_files"] == {}  # nor are its tables counted as the catalog's other files


def test_run_dir_equal_to_image_dir_leaves_the_runs_own_files_out(tmp_path):
    """The second run must not embed the first one's thumbnails, grids and catalog map."""
    from PIL import Image

    from helpers import grids, neighbors

    for i, colour in enumerate(((10, 200, 10), (200, 10, 10), (10, 10, 200))):
        Image.new("RGB", (40, 40), colour).save(tmp_path / f"p{i}.jpg")
    embed_folder(tmp_path, tmp_path, progress=False)
    neighbors.write_neighbors(tmp_path, k=2)
    grids.render_grids(tmp_path, 2, k=2)
    Image.new("RGB", (40, 40)).save(tmp_path / runfolder.CATALOG_MAP)  # what 04 leaves too
    meta = embed_folder(tmp_path, tmp_path, progress=False)
    assert sorted(store.load_items(tmp_path)["path"]) == ["p0.jpg", "p1.jpg", "p2.jpg"] and meta["n_files"] == 3
    assert meta["other_files"] == {}


def test_links_to_files_outside_image_dir_are_not_read(tmp_path):
    """A link to /etc/passwd (or any file outside image_dir) is listed in skipped.csv, unread;
    so are a link loop and a dangling link, each with its own reason."""
    from PIL import Image

    folder, outside = tmp_path / "shop", tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (40, 40), (10, 200, 10)).save(folder / "ok.jpg")
    Image.new("RGB", (40, 40), (200, 10, 10)).save(outside / "secret.jpg")
    (folder / "inside_link.jpg").symlink_to(folder / "ok.jpg")
    (folder / "sub" / "passwd.png").symlink_to("/etc/passwd")
    (folder / "secret.jpg").symlink_to(outside / "secret.jpg")
    (folder / "loop.jpg").symlink_to("loop.jpg")           # leads back to itself
    (folder / "gone.jpg").symlink_to(folder / "deleted.jpg")  # its file is not there
    embed_folder(folder, tmp_path / "run", progress=False)
    assert store.load_items(tmp_path / "run")["path"].tolist() == ["inside_link.jpg", "ok.jpg"]
    reasons = dict(store.load_skipped(tmp_path / "run").values)
    assert set(reasons) == {"secret.jpg", "sub/passwd.png", "loop.jpg", "gone.jpg"}
    assert "outside image_dir" in reasons["secret.jpg"] and "outside image_dir" in reasons["sub/passwd.png"]
    assert "loop" in reasons["loop.jpg"] and "not there" in reasons["gone.jpg"]
    embed_folder(folder, tmp_path / "all", links="all", progress=False)
    assert "secret.jpg" in store.load_items(tmp_path / "all")["path"].tolist()  # when asked for


def test_pipes_and_devices_named_like_images_are_skipped_unread(tmp_path):
    """A named pipe blocks and /dev/zero never ends when read: the run must go on without them."""
    import os
    import subprocess
    import sys

    from PIL import Image

    folder = tmp_path / "shop"
    folder.mkdir()
    Image.new("RGB", (40, 40), (10, 200, 10)).save(folder / "ok.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.png").symlink_to("/dev/zero")
    # in a child process, so that a hang fails this test instead of blocking the suite
    code = (f"from helpers.embed import embed_folder; embed_folder({str(folder)!r}, {str(tmp_path / 'run')!r}, "
            "links='all', progress=False)")  # links='all': the device itself is what is refused
    try:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=180, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("embed_folder hung on a pipe or a device")
    assert store.load_items(tmp_path / "run")["path"].tolist() == ["ok.jpg"]
    reasons = dict(store.load_skipped(tmp_path / "run").values)
    assert set(reasons) == {"pipe.jpg", "zero.png"}
    assert all(r.startswith("not a regular file") for r in reasons.values())


def test_a_run_that_embeds_nothing_says_why(tmp_path):
    """An empty folder, or one whose every image is unusable, stops at 01 with the cause,
    not later in a step that has nothing to work on; skipped.csv is still written."""
    from helpers.embed import NothingEmbeddedError

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("prices")
    with pytest.raises(NothingEmbeddedError, match=r"no image files in .*found only other files: 1 \.txt"):
        embed_folder(empty, tmp_path / "run_empty", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a picture")
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(NothingEmbeddedError, match=r"none of the 2 image files.*skipped.csv.*empty file \(0 bytes\) \(1\)"):
        embed_folder(bad, tmp_path / "run_bad", progress=False)
    assert sorted(store.load_skipped(tmp_path / "run_bad")["path"]) == ["a.jpg", "b.png"]


def test_any_number_of_workers_gives_the_same_store(hostile_run, hostile_dir, tmp_path):
    """The local engine's workers each decode and embed whole batches with their own
    interpreter: one worker, three, and batches of two give identical stores and reasons."""
    run_dir, _ = hostile_run
    expected, items, _ = store.load_store(run_dir)
    for workers, batch_size in ((1, 32), (3, 2)):
        other = tmp_path / f"run_{workers}_{batch_size}"
        embed_folder(hostile_dir, other, workers=workers, batch_size=batch_size, progress=False)
        vectors, other_items, _ = store.load_store(other)
        assert other_items["path"].tolist() == items["path"].tolist()
        np.testing.assert_array_equal(vectors, expected)
        assert store.load_skipped(other).equals(store.load_skipped(run_dir))


def test_an_interrupted_local_engine_drops_the_batches_not_started(hostile_dir):
    """Closing the engine (Ctrl-C, an error while checkpointing) waits only for the batches
    in flight (at most two per worker), not for the whole catalog."""
    from helpers.engine import local_batches, local_model
    from helpers.options import EmbeddingOptions

    options = EmbeddingOptions()
    model, batches = local_model(options, "auto", 2), []

    def counted(pixels):
        batches.append(len(pixels))
        return model(pixels)

    counted.image_size, counted.dim, counted.runtime = model.image_size, model.dim, model.runtime
    paths = sorted(GOOD) * 20  # many one-file batches
    results = local_batches(hostile_dir, paths, counted, options, batch_size=1, workers=2, known=set())
    first = next(results)
    results.close()
    assert len(first.rows) + len(first.failed) == 1
    assert len(batches) <= 2 * 2 + 1 < len(paths)
