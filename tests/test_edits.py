"""helpers.edits: the near-duplicate generator on real photos."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from helpers import catalog, edits, images


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three photos on white (no alpha) and one object with alpha."""
    root = tmp_path_factory.mktemp("sources")
    for name in ("chelsea", "coffee", "rocket"):
        im = photo(name)
        canvas = Image.new("RGB", (im.width + 80, im.height + 80), "white")
        canvas.paste(im, (40, 40))
        canvas.save(root / f"{name}.jpg", quality=92)
    disc = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    pixels = np.asarray(photo("astronaut").resize((200, 200))).copy()
    yy, xx = np.mgrid[:200, :200]
    alpha = (((yy - 100) ** 2 + (xx - 100) ** 2) < 70 ** 2) * 255
    disc = Image.fromarray(np.dstack([pixels, alpha]).astype(np.uint8), "RGBA")
    disc.save(root / "disc.png")
    return root


def test_near_duplicate_generator_labels(sources, tmp_path):
    paths = images.list_images(sources)
    labels = edits.make_near_duplicates(sources, paths[:3], tmp_path, variants_per_source=len(edits.TRANSFORMS),
                                           distractors=paths[3:], seed=1)
    assert len(labels) == 3 * (len(edits.TRANSFORMS) + 1) + 1
    # every transform used equally often, every image its own product, groups = sources
    counts = labels["transform"].value_counts()
    assert all(counts[t] == 3 for t in edits.TRANSFORMS) and counts["source"] == 3
    assert counts["distractor"] == 1 and labels["productId"].is_unique
    for group, rows in labels.groupby("group"):
        assert rows["source"].nunique() == 1
    for path in labels["path"]:
        pixels, _ = images.decode_image((tmp_path / path).read_bytes(), 64)
        assert pixels.shape == (64, 64, 3)
    # the catalog file it writes matches every image
    records = catalog.read_catalog(tmp_path / "image_data.json")
    match = catalog.match_catalog(images.list_images(tmp_path), records)
    assert len(match.product_id) == len(labels)
    assert json.loads((tmp_path / "image_data.json").read_text().splitlines()[0])["productId"]
    # a flip really is the mirror image of its source
    row = labels[(labels["transform"] == "flip")].iloc[0]
    source = np.asarray(Image.open(tmp_path / labels[(labels["group"] == row["group"])
                                                      & (labels["transform"] == "source")]["path"].iloc[0]))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / row["path"])), source[:, ::-1])
    # made again with fewer sources: no image of the first benchmark is left behind
    again = edits.make_near_duplicates(sources, paths[:1], tmp_path, variants_per_source=1)
    assert sorted(images.list_images(tmp_path)) == sorted(again["path"])
    # nothing readable to start from (a run without images): said plainly, not found out later
    (tmp_path / "junk.png").write_text("not a picture")
    for nothing in ([], ["junk.png"]):
        with pytest.raises(ValueError, match="no near-duplicate benchmark to build"):
            edits.make_near_duplicates(tmp_path, nothing, tmp_path / "out")


def test_background_swap_keeps_the_object_and_replaces_the_background(sources, tmp_path):
    im = Image.open(sources / "disc.png")
    mask = edits.foreground_mask(im)  # alpha is used where there is one
    assert mask[100, 100] and not mask[5, 5]
    white = Image.open(sources / "chelsea.jpg")
    mask = edits.foreground_mask(white)  # else: what differs from the border colour
    assert mask[white.height // 2, white.width // 2] and not mask[10, 10]
    assert 0.6 < mask.mean() < 0.95
    labels = edits.make_near_duplicates(sources, ["disc.png"], tmp_path, variants_per_source=len(edits.TRANSFORMS), seed=2)
    swapped = np.asarray(Image.open(tmp_path / labels.loc[labels["transform"] == "background", "path"].iloc[0]))
    corners = np.concatenate([swapped[:8, :8], swapped[-8:, -8:]]).reshape(-1, 3)
    assert np.abs(corners.astype(int) - 255).max() > 30  # the white background is gone


def test_sources_are_read_upright_and_bad_background_photos_are_passed_over(tmp_path):
    src, backgrounds = tmp_path / "src", tmp_path / "backgrounds"
    src.mkdir(), backgrounds.mkdir()
    # a phone photo stored sideways (EXIF orientation 6: turn 90 degrees clockwise to view)
    upright = photo("chelsea").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.ROTATE_90).save(src / "sideways.jpg", exif=exif, quality=95)
    Image.new("RGB", (3000, 1500), "navy").save(src / "big.png")  # shrunk to SOURCE_MAX_SIDE
    photo("coffee").save(backgrounds / "good.jpg")
    (backgrounds / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    labels = edits.make_near_duplicates(src, ["sideways.jpg", "big.png"], tmp_path / "out",
                                           variants_per_source=len(edits.TRANSFORMS), backgrounds=backgrounds, seed=3)
    by_name = labels.set_index(["source", "transform"])["path"]
    copy = Image.open(tmp_path / "out" / by_name["sideways.jpg", "source"])
    assert copy.size == (300, 200)  # as the photo is viewed, not as it is stored
    assert np.abs(np.asarray(copy, float) - np.asarray(upright, float)).mean() < 8
    assert Image.open(tmp_path / "out" / by_name["big.png", "source"]).size == (1024, 512)
    assert (labels["transform"] == "background").sum() == 2  # made despite the broken photo


def test_background_photos_are_kept_shrunk_and_give_the_same_copies_again(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path / "cache"))
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    Image.fromarray(np.asarray(photo("astronaut").resize((2600, 2600)))).save(backgrounds / "big.webp", quality=90)
    made = [edits.make_near_duplicates(sources, ["coffee.jpg"], tmp_path / f"out{i}", variants_per_source=8,
                                       backgrounds=backgrounds, seed=1) for i in range(2)]
    kept = list((tmp_path / "cache" / "backgrounds").glob("*.png"))
    assert len(kept) == 1 and max(Image.open(kept[0]).size) == edits.BACKGROUND_MAX_SIDE
    swapped = [m.set_index("transform").loc["background", "path"] for m in made]
    first, second = (np.asarray(Image.open(tmp_path / f"out{i}" / p)) for i, p in enumerate(swapped))
    np.testing.assert_array_equal(first, second)  # made from the photo, then from the kept copy
