import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import images
from conftest import BAD, GOOD, jpeg_bytes, photo


def png_bytes(im):
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_list_images_recursive_case_insensitive(hostile_dir):
    found = images.list_images(hostile_dir)
    assert set(found) == set(GOOD) | set(BAD)
    assert found == sorted(found)
    top_only = images.list_images(hostile_dir, recursive=False)
    assert "sub/cat.jpg" not in top_only and "cat.jpg" in top_only and "coffee.PNG" in top_only


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        images.list_images(tmp_path / "nope")


@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_good_file_decodes(hostile_dir, name):
    pixels, (w, h) = images.decode_image((hostile_dir / name).read_bytes(), 224)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert w >= 1 and h >= 1


@pytest.mark.parametrize("name,reason", [("empty.jpg", "empty file"), ("truncated.jpg", "truncated"),
                                         ("notes.png", "not an image"), ("bomb.png", "too large")])
def test_bad_files_raise_plain_reasons(hostile_dir, name, reason):
    with pytest.raises(images.ImageError, match=reason):
        images.decode_image((hostile_dir / name).read_bytes(), 224)


def test_pixel_cap_is_a_parameter():
    data = png_bytes(Image.new("RGB", (100, 100)))
    images.decode_image(data, 32, max_pixels=10_000)
    with pytest.raises(images.ImageError, match="max_pixels"):
        images.decode_image(data, 32, max_pixels=9_999)


def test_a_header_too_large_for_pillow_is_refused_with_a_reason():
    # a 200,000 x 200,000 PNG header: Pillow refuses to open it before we can see the size
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(images.ImageError, match="too large.*decompression bomb"):
        images.decode_image(data, 224)


def test_exif_orientation_applied():
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 30, 20))  # left half blue, right half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    pixels, size = images.decode_image(jpeg_bytes(im, exif=exif.tobytes(), quality=95), 64, "squash")
    assert size == (20, 60)
    top, bottom = pixels[:16].mean(axis=(0, 1)), pixels[-16:].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60       # the blue half is now on top
    assert bottom[0] > 200 and bottom[2] < 60


def test_alpha_flattened_on_white():
    im = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    pixels, _ = images.decode_image(png_bytes(im), 16)
    assert (pixels == 255).all()


def test_palette_transparency_flattened_on_white():
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0] * 256)
    im.info["transparency"] = 0
    buf = io.BytesIO()
    im.save(buf, "GIF", transparency=0)
    pixels, _ = images.decode_image(buf.getvalue(), 16)
    assert (pixels == 255).all()


def test_sixteen_bit_scaled_not_clipped():
    grey = np.full((30, 30), 32768, dtype=np.uint16)  # mid grey in 16 bits
    pixels, _ = images.decode_image(png_bytes(Image.fromarray(grey)), 16)
    assert abs(int(pixels.mean()) - 127) <= 2


def test_cmyk_and_grayscale_become_rgb():
    for im in (photo("coffee").convert("CMYK"), photo("coffee").convert("L")):
        pixels, _ = images.decode_image(jpeg_bytes(im, quality=95), 32)
        assert pixels.shape == (32, 32, 3)
    # CMYK keeps the colours: the coffee photo is mostly warm (red > blue)
    pixels, _ = images.decode_image(jpeg_bytes(photo("coffee").convert("CMYK"), quality=95), 32)
    assert pixels[..., 0].mean() > pixels[..., 2].mean()


def three_stripes():
    im = Image.new("RGB", (300, 100), (255, 0, 0))
    im.paste((0, 255, 0), (100, 0, 200, 100))
    im.paste((0, 0, 255), (200, 0, 300, 100))
    return png_bytes(im)


def test_resize_crop_keeps_the_centre():
    pixels, _ = images.decode_image(three_stripes(), 32, "crop")
    assert (pixels[..., 1] > 200).all() and (pixels[..., 0] < 50).all()


def test_resize_pad_letterboxes_on_black():
    pixels, _ = images.decode_image(three_stripes(), 30, "pad")
    assert (pixels[:5] == 0).all() and (pixels[-5:] == 0).all()
    middle = pixels[15]
    assert middle[2, 0] > 200 and middle[15, 1] > 200 and middle[-3, 2] > 200


def test_resize_squash_keeps_everything():
    pixels, _ = images.decode_image(three_stripes(), 30, "squash")
    assert pixels[15, 2, 0] > 200 and pixels[15, 15, 1] > 200 and pixels[15, -3, 2] > 200


def test_resize_full_keeps_the_whole_centred_square():
    im = Image.new("RGB", (300, 200), (0, 200, 0))
    im.paste((255, 0, 0), (50, 0, 58, 200))   # inside the centred square (x 50-250), outside the 87.5% crop
    im.paste((0, 0, 255), (0, 0, 50, 200))    # outside the square: no mode but pad/squash keeps it
    for data in (png_bytes(im), jpeg_bytes(im, quality=95)):
        full, _ = images.decode_image(data, 40, "full")
        crop, _ = images.decode_image(data, 40, "crop")
        assert full[20, 0, 0] > 200 and full[20, 0, 2] < 60        # the red edge is kept
        assert (crop[..., 0] < 60).all() and (full[..., 2] < 60).all()


def test_very_long_image_does_not_blow_up():
    data = png_bytes(Image.new("RGB", (20_000, 2), (10, 20, 30)))
    pixels, size = images.decode_image(data, 64, "crop")
    assert size == (20_000, 2) and pixels.shape == (64, 64, 3)


def test_jpeg_draft_decoding_matches_full_decoding():
    big = photo("astronaut").resize((2048, 2048))
    data = jpeg_bytes(big, quality=92)
    fast, _ = images.decode_image(data, 224)
    im = Image.open(io.BytesIO(data)).convert("RGB")
    full = np.asarray(images.fit_square(im, 224, "crop"))
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4


def test_unknown_resize_mode():
    with pytest.raises(ValueError, match="resize="):
        images.decode_image(three_stripes(), 32, "stretch")


def test_read_file_refuses_pipes_devices_and_huge_files_without_reading(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(images.ImageError, match="not a regular file"):
        images.read_file(tmp_path / "pipe.jpg")  # would block forever if opened
    with pytest.raises(images.ImageError, match="not a regular file"):
        images.read_file("/dev/zero")
    data = png_bytes(Image.new("RGB", (50, 50)))
    (tmp_path / "a.png").write_bytes(data)
    assert images.read_file(tmp_path / "a.png") == data
    with pytest.raises(images.ImageError, match="file too large"):
        images.read_file(tmp_path / "a.png", max_bytes=len(data) - 1)
    with pytest.raises(images.ImageError, match="cannot read the file"):
        images.read_file(tmp_path / "missing.png")


def test_float_pictures_with_nan_and_inf_decode_cleanly():
    import warnings

    arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    arr[:8] = np.nan
    arr[8:16] = np.inf
    buf = io.BytesIO()
    Image.fromarray(arr, "F").save(buf, "TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" before the fix
        rgb = images.to_rgb(Image.open(io.BytesIO(buf.getvalue())))
    pixels = np.asarray(rgb)
    assert (pixels[:16] == 0).all()                       # non-finite samples are black
    assert pixels[-1, -1, 0] == 255 and pixels[32, 0, 0] > 100  # the finite ones keep their scale


def test_oversized_png_metadata_gets_its_own_reason():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(buf, "PNG", pnginfo=info)
    with pytest.raises(images.ImageError, match="text metadata.*re-save"):
        images.decode_image(buf.getvalue(), 32)


def test_every_format_pillow_opens_is_listed_or_declined_with_a_reason():
    Image.init()
    opened = {ext for ext, fmt in Image.EXTENSION.items() if fmt in Image.OPEN}
    listed = set(images.IMAGE_EXTENSIONS)
    assert opened <= listed | set(images.NOT_LISTED), sorted(opened - listed - set(images.NOT_LISTED))
    assert not listed & set(images.NOT_LISTED)
    assert listed - {".heic", ".heif", ".heics", ".heifs", ".hif"} <= opened  # nothing is listed that Pillow cannot open


@pytest.mark.parametrize("ext", [".ppm", ".pgm", ".pbm", ".pnm"])
def test_pnm_images_are_listed_and_decoded(tmp_path, ext):
    picture = photo("coffee").resize((64, 48))
    picture.convert({".pgm": "L", ".pbm": "1"}.get(ext, "RGB")).save(tmp_path / f"a{ext}", "PPM")
    assert images.list_images(tmp_path) == [f"a{ext}"]
    pixels, size = images.decode_image((tmp_path / f"a{ext}").read_bytes(), 32)
    assert pixels.shape == (32, 32, 3) and size == (64, 48)


def test_thumbnails_of_pipes_are_grey_tiles_not_a_hang(tmp_path):
    import os
    import threading

    os.mkfifo(tmp_path / "pipe.jpg")
    done = []
    worker = threading.Thread(target=lambda: done.append(images.thumbnail(tmp_path / "pipe.jpg", 16)), daemon=True)
    worker.start()
    worker.join(20)
    assert done and done[0].size == (16, 16)  # a grey tile, at once


def test_an_oversized_colour_profile_is_named_as_such():
    """It was reported as "text metadata"."""
    import struct
    import zlib

    from PIL import PngImagePlugin

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = png_bytes(Image.new("RGB", (32, 32), "blue"))
    profile = chunk(b"iCCP", b"profile\0\0" + zlib.compress(b"\0" * (PngImagePlugin.MAX_TEXT_CHUNK + 10)))
    with pytest.raises(images.ImageError, match=r"^colour profile \(ICC\) larger than Pillow's safety limit"):
        images.decode_image(data[:33] + profile + data[33:], 32)


def test_decoding_threads_share_one_pixel_budget(monkeypatch):
    """Big pictures decoded in many threads wait for each other: the pixels held at once stay
    within the budget (one picture over it is decoded alone), whatever the thread count."""
    from concurrent.futures import ThreadPoolExecutor

    budget = images.PixelBudget(3_000_000)
    peak, held = [0], []
    original = budget.hold

    def watched(pixels):
        class Watch:
            def __enter__(self):
                self.inner = original(pixels)
                self.inner.__enter__()
                held.append(pixels)
                peak[0] = max(peak[0], sum(held))

            def __exit__(self, *exc):
                held.remove(pixels)
                return self.inner.__exit__(*exc)
        return Watch()

    monkeypatch.setattr(budget, "hold", watched)
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    big = png_bytes(photo("astronaut").resize((1400, 1000)))        # 1.4 Mpx
    huge = png_bytes(photo("coffee").resize((2400, 1600)))          # 3.84 Mpx: more than the budget
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda data: images.decode_image(data, 32), [big] * 12 + [huge] * 2))
    assert all(pixels.shape == (32, 32, 3) for pixels, _ in results)
    assert peak[0] == 3_840_000  # the huge one alone; the others two at a time (2.8 Mpx)
    assert budget.used == 0
