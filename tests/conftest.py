"""Shared fixtures: real photos from scikit-image, a small catalog with hostile files."""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from helpers import images  # noqa: F401  (registers the HEIC opener the fixtures write with)

ROOT = Path(__file__).resolve().parents[1]

# Debian packages some tests need (`make system` installs them): how to tell each is here.
# Missing, a test is skipped with the reason; under CI=true it fails instead, so CI always
# proves that `make test` installed them.
SYSTEM_PARTS = {
    "fashion-mnist": ("dataset-fashion-mnist",
                      lambda: Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists()),
    "postgresql": ("postgresql", lambda: bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))),
    "chromium": ("chromium", lambda: bool(shutil.which("chromium"))),
    "chromium-driver": ("chromium-driver", lambda: bool(shutil.which("chromedriver"))),
}


def require(part: str) -> None:
    """Skip (fail under CI=true) unless the system part ``part`` is installed."""
    package, present = SYSTEM_PARTS[part]
    if present():
        return
    reason = f"{part} is not installed: sudo make system (Debian's {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so a missing part is a failure", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def fashion_mnist_data():
    require("fashion-mnist")


@pytest.fixture(scope="session")
def chromium() -> str:
    require("chromium")
    return shutil.which("chromium")
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket"]


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def jpeg_bytes(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def write_catalog(path: Path, records: list[dict], lines: bool = True) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        if lines:
            f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            json.dump(records, f)
    return path


GOOD = {
    # relative path -> how it was made; every one of these must be embedded
    "cat.jpg": "photo",
    "coffee.PNG": "png, upper-case extension",
    "sub/cat.jpg": "same file name as cat.jpg, another sub-folder (cropped)",
    "sub/deeper/rocket.webp": "webp two levels down",
    "astronaut_grey.tif": "grayscale tiff",
    "astronaut_cmyk.jpg": "CMYK jpeg",
    "coffee_palette.gif": "palette gif",
    "rocket_alpha.png": "RGBA png",
    "rocket_16bit.png": "16-bit grayscale png",
    "one_pixel.bmp": "1x1 bmp",
    "café ☕.jpg": "unicode file name",
    "rotated.jpg": "EXIF orientation 6",
    "photo.jfif": "JPEG with the .jfif extension",
    "cat.heic": "HEIC (phone photo format)",
    "banner.png": "a 4000x8 strip (too thin for keypoints)",
}
BAD = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated",
    "notes.png": "not an image",
    "bomb.png": "too large",
    "broken.heic": "truncated HEIC",
}


@pytest.fixture(scope="session")
def hostile_dir(tmp_path_factory) -> Path:
    """A folder with one of each awkward-but-good image and each kind of bad file."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "sub" / "deeper").mkdir(parents=True)
    cat, coffee, astro, rocket = (photo(n) for n in PHOTOS)
    (root / "cat.jpg").write_bytes(jpeg_bytes(cat, quality=90))
    coffee.save(root / "coffee.PNG")
    cat.crop((20, 10, 420, 290)).save(root / "sub" / "cat.jpg", quality=90)
    rocket.save(root / "sub" / "deeper" / "rocket.webp", quality=90)
    astro.convert("L").save(root / "astronaut_grey.tif")
    astro.convert("CMYK").save(root / "astronaut_cmyk.jpg", quality=90)
    coffee.convert("P", palette=Image.ADAPTIVE).save(root / "coffee_palette.gif")
    rgba = rocket.convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 255))
    rgba.save(root / "rocket_alpha.png")
    grey16 = (np.asarray(rocket.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(grey16).save(root / "rocket_16bit.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(root / "one_pixel.bmp")
    (root / "café ☕.jpg").write_bytes(jpeg_bytes(coffee, quality=85))
    exif = Image.Exif()
    exif[0x0112] = 6
    cat.save(root / "rotated.jpg", quality=90, exif=exif.tobytes())
    (root / "empty.jpg").write_bytes(b"")
    full = jpeg_bytes(astro, quality=90)
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "notes.png").write_text("this is not a picture\n")
    Image.new("1", (10_000, 10_000)).save(root / "bomb.png")  # 100 Mpx, ~20 kB on disk
    (root / "photo.jfif").write_bytes(jpeg_bytes(cat.resize((300, 200)), quality=80))
    heic = io.BytesIO()
    cat.save(heic, "HEIF", quality=80)
    (root / "cat.heic").write_bytes(heic.getvalue())
    (root / "broken.heic").write_bytes(heic.getvalue()[:heic.tell() // 2])
    Image.fromarray(np.asarray(rocket.convert("RGB").resize((4000, 8)))).save(root / "banner.png")
    (root / "readme.txt").write_text("not an image extension: never listed")
    return root


@pytest.fixture(scope="session")
def hostile_run_dir(hostile_dir, tmp_path_factory) -> Path:
    """The hostile folder embedded once with the default model (no catalog)."""
    from helpers.embed import embed_folder

    run_dir = tmp_path_factory.mktemp("hostile_run")
    embed_folder(hostile_dir, run_dir, batch_size=4, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory) -> Path:
    """Four photos, each with a cropped PNG copy listed as another product."""
    root = tmp_path_factory.mktemp("tiny")
    for name in PHOTOS:
        im = photo(name)
        im.save(root / f"{name}.jpg", quality=90)
        im.crop((10, 10, im.width - 10, im.height - 10)).save(root / f"{name}_copy.png")
    records = [{"imageName": f"{n}{s}", "productId": f"{n}-{i}"}
               for n in PHOTOS for i, s in enumerate([".jpg", "_copy.png"])]
    write_catalog(root / "image_data.json", records)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_catalog, tmp_path_factory):
    """The whole pipeline (all notebooks) through the CLI: a YAML file plus -p overrides.

    Returns (run_dir, printed output)."""
    import contextlib
    import io

    from helpers import run

    tmp = tmp_path_factory.mktemp("tiny_run")
    config = tmp / "config.yaml"
    config.write_text(f"run_dir: {tmp / 'run'}\nimage_dir: {tiny_catalog}\n"
                      f"catalog: {tiny_catalog / 'image_data.json'}\nk: 5\n"
                      "n_trees_grid: [1, 2]\nsearch_k_grid: [-1]\nn_queries: 4\nqueries: 2\n"
                      "benchmark: [near-duplicates, fashion-mnist]\nn_gallery: 300\nvariants_per_source: 7\n")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run.main(["-f", str(config), "-p", "k", "3", "-p", "level", "image"]) == 0
    return tmp / "run", printed.getvalue()


@pytest.fixture(scope="session")
def postgres_dsn():
    """A throwaway PostgreSQL server on a free local port (Debian's postgresql package).

    Set LOOKALIKE_TEST_POSTGRES to a connection string to use an existing server instead.
    """
    import socket
    import subprocess
    import tempfile

    if os.environ.get("LOOKALIKE_TEST_POSTGRES"):
        yield os.environ["LOOKALIKE_TEST_POSTGRES"]
        return
    require("postgresql")
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    bindir = Path(bindirs[-1])
    data = tempfile.mkdtemp(prefix="lookalike-pg-")
    as_postgres = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(as_postgres + [str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres",
                                  "--no-sync"], check=True, capture_output=True)
    subprocess.run(as_postgres + [str(bindir / "pg_ctl"), "-D", data, "-w", "-l", f"{data}/server.log",
                                  "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
                                  "start"], check=True, capture_output=True)
    try:
        yield f"host=127.0.0.1 port={port} dbname=postgres user=postgres"
    finally:
        subprocess.run(as_postgres + [str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
