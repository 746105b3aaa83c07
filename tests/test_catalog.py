import pytest

from helpers.catalog import CatalogError, match_catalog, read_catalog
from conftest import write_catalog

PATHS = ["shoes/red.shoe.jpg", "shoes/blue.jpg", "bags/blue.jpg", "hats/cap.png"]


@pytest.mark.parametrize("lines", [True, False])
def test_json_list_and_json_lines(tmp_path, lines):
    records = [{"imageName": "a.jpg", "productId": 17}, {"imageName": "b.jpg", "productId": "X"}]
    frame = read_catalog(write_catalog(tmp_path / "c.json", records, lines=lines))
    assert frame.to_dict("records") == [{"imageName": "a.jpg", "productId": "17"},
                                        {"imageName": "b.jpg", "productId": "X"}]


def test_plain_mapping_and_a_single_record(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"a.jpg": 17, "sub/b.jpg": "X"}')
    assert read_catalog(path).to_dict("records") == [{"imageName": "a.jpg", "productId": "17"},
                                                     {"imageName": "sub/b.jpg", "productId": "X"}]
    path.write_text('{"a.jpg": null}')
    with pytest.raises(CatalogError, match="key 'a.jpg'.*empty productId"):
        read_catalog(path)
    path.write_text('{"images": [{"imageName": "a.jpg", "productId": 1}]}')  # wrapped in an object
    with pytest.raises(CatalogError, match="key 'images' holds a list; expected JSON lines"):
        read_catalog(path)
    path.write_text('{"imageName": "a.jpg", "productId": 1}\n')  # JSON lines with one line
    assert read_catalog(path).to_dict("records") == [{"imageName": "a.jpg", "productId": "1"}]


def test_bad_record_names_the_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"imageName": "a.jpg", "productId": 1}\n{"imageName": "b.jpg"}\n')
    with pytest.raises(CatalogError, match="line 2.*productId"):
        read_catalog(path)
    path.write_text('{"imageName": "a.jpg", "productId": 1}\n{not json\n')
    with pytest.raises(CatalogError, match="line 2"):
        read_catalog(path)


def catalog(tmp_path, records):
    return read_catalog(write_catalog(tmp_path / "c.json", records))


def test_match_by_path_name_and_stem(tmp_path):
    frame = catalog(tmp_path, [
        {"imageName": "shoes/blue.jpg", "productId": "S-BLUE"},   # relative path
        {"imageName": "./bags/blue.jpg", "productId": "B-BLUE"},  # ./ prefix
        {"imageName": "cap.png", "productId": "CAP"},             # bare file name
        {"imageName": "red", "productId": "RED"},                 # cut at the first dot (reference)
    ])
    match = match_catalog(PATHS, frame)
    assert match.product_id == {"shoes/blue.jpg": "S-BLUE", "bags/blue.jpg": "B-BLUE",
                                "hats/cap.png": "CAP", "shoes/red.shoe.jpg": "RED"}
    assert match.image_name["hats/cap.png"] == "cap.png"


def test_ambiguous_and_missing_fail_fast_with_names(tmp_path):
    frame = catalog(tmp_path, [{"imageName": "blue.jpg", "productId": "?"},
                               {"imageName": "cap.png", "productId": "CAP"}])
    with pytest.raises(CatalogError) as err:
        match_catalog(PATHS, frame, source="image_data.json")
    message = str(err.value)
    assert "image_data.json" in message and "3 images have no productId" in message
    assert "match several images (first: blue.jpg" in message and "on_missing" in message


def test_duplicate_names(tmp_path):
    frame = catalog(tmp_path, [{"imageName": "cap.png", "productId": "A"},
                               {"imageName": "cap.png", "productId": "A"},   # harmless repeat
                               {"imageName": "hats/cap.png", "productId": "B"}])
    with pytest.raises(CatalogError, match="1 imageNames are listed with different productIds"):
        match_catalog(["hats/cap.png"], frame)
    match = match_catalog(["hats/cap.png"], frame, on_missing="skip")
    assert match.product_id == {"hats/cap.png": "A"} and match.duplicate_names == ["hats/cap.png"]


def test_on_missing_skip_and_filename(tmp_path):
    frame = catalog(tmp_path, [{"imageName": "cap.png", "productId": "CAP"},
                               {"imageName": "gone.jpg", "productId": "GONE"}])
    skip = match_catalog(PATHS, frame, on_missing="skip")
    assert skip.product_id == {"hats/cap.png": "CAP"}
    assert skip.entries_without_image == ["gone.jpg"] and len(skip.images_without_entry) == 3
    by_name = match_catalog(PATHS, frame, on_missing="filename")
    assert by_name.product_id["shoes/blue.jpg"] == "shoes/blue.jpg"
    assert by_name.product_id["hats/cap.png"] == "CAP"


def test_no_catalog_uses_paths():
    match = match_catalog(PATHS, None)
    assert match.product_id == {p: p for p in PATHS}


def test_absolute_and_foreign_paths_fall_back_to_the_file_name(tmp_path):
    frame = catalog(tmp_path, [{"imageName": "/mnt/scrape/2019/cap.png", "productId": "CAP"},
                               {"imageName": "C:\\shop\\img\\red.shoe.jpg", "productId": "RED"}])
    match = match_catalog(PATHS, frame, on_missing="skip")
    assert match.product_id == {"hats/cap.png": "CAP", "shoes/red.shoe.jpg": "RED"}


def test_case_differences_match_when_unambiguous(tmp_path):
    frame = catalog(tmp_path, [{"imageName": "HATS/CAP.PNG", "productId": "CAP"},
                               {"imageName": "Blue.jpg", "productId": "?"}])
    match = match_catalog(PATHS, frame, on_missing="skip")
    assert match.product_id == {"hats/cap.png": "CAP"}  # blue.jpg is in two folders: ambiguous
    assert match.ambiguous_names == ["Blue.jpg"]


@pytest.mark.parametrize("body, expected", [
    ('{"imageName": "a.jpg", "productId": NaN}\n', r"line 1: NaN is not a number"),
    ('{"imageName": "a.jpg", "productId": Infinity}\n', r"line 1: Infinity is not a number"),
    ('{"imageName": "a.jpg", "productId": 1e999}\n', r"line 1: the number 1e999 is not finite"),
    ('{"imageName": "a.jpg", "productId": ' + "7" * 5000 + "}\n", r"line 1: .*digits.*write product ids as strings"),
    ('{"imageName": "a.jpg", "productId": ' + "[" * 100_000 + "]" * 100_000 + "}\n", r"line 1: nested too deeply"),
    ("[" + "[" * 100_000 + "]" * 100_000 + "]", r"the list: nested too deeply"),
    ('{"a.jpg": NaN}', r"line 1: NaN"),
])
def test_hostile_numbers_and_nesting_are_catalog_errors(tmp_path, body, expected):
    """Not RecursionError or ValueError, and never the ids "nan" or "inf" merging unrelated images."""
    path = tmp_path / "image_data.json"
    path.write_text(body)
    with pytest.raises(CatalogError, match=expected):
        read_catalog(path)
