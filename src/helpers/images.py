"""Find image files and decode them into model-ready squares, explaining every failure.

Decoding is Pillow's: EXIF orientation applied, every mode (grayscale, 16-bit, CMYK,
palette, alpha) turned into 8-bit RGB with alpha flattened on white, large JPEGs decoded
at a reduced DCT scale (draft mode) when the output is small anyway.
"""
from __future__ import annotations

import errno
import io
import math
import os
import stat
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF (phone photos): a dependency, but a missing one must not break the rest
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORT = True
except ImportError:
    HEIF_SUPPORT = False

# listed as images; a file Pillow cannot read is then skipped with its reason in
# skipped.csv, never silently left out
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib",
                    ".tif", ".tiff", ".avif", ".avifs", ".heic", ".heif", ".heics", ".heifs", ".hif",
                    ".jp2", ".j2k", ".j2c", ".jpc", ".jpx", ".jpf", ".ppm", ".pgm", ".pbm", ".pnm",
                    ".tga", ".qoi")
# what Pillow also opens, and why it is not a product photo here (tests keep the two lists
# covering everything Pillow registers)
NOT_LISTED = {
    ".psd": "Photoshop layers: Pillow reads one layer, not the picture people see",
    ".eps": "PostScript: needs Ghostscript to draw", ".ps": "PostScript: needs Ghostscript to draw",
    ".ico": "icons", ".cur": "cursors", ".icns": "icons", ".xbm": "1-bit icons", ".xpm": "icons",
    ".wmf": "vector metafile (placeholder only)", ".emf": "vector metafile (placeholder only)",
    ".pfm": "floating-point maps", ".fit": "astronomy data", ".fits": "astronomy data",
    ".bufr": "weather data", ".grib": "weather data", ".h5": "scientific data", ".hdf": "scientific data",
    ".dds": "game textures", ".blp": "game textures", ".vtf": "game textures", ".ftc": "game textures",
    ".ftu": "game textures", ".gbr": "GIMP brushes", ".mpeg": "video", ".mpg": "video",
    ".fli": "animations", ".flc": "animations", ".dcx": "fax pages", ".pcx": "legacy paint",
    ".pcd": "Kodak Photo CD", ".msp": "legacy paint", ".im": "legacy raster", ".iim": "IPTC news data",
    ".icb": "legacy Targa", ".vda": "legacy Targa", ".vst": "legacy Targa", ".ras": "Sun raster",
    ".sgi": "SGI raster", ".rgb": "SGI raster", ".rgba": "SGI raster", ".bw": "SGI raster",
    ".pxr": "Pixar raster",
}
LINKS = ("inside", "all")  # list_images: follow file links only to files under image_dir, or any
RESIZE_MODES = ("crop", "full", "pad", "squash")
# Pillow's own decompression-bomb threshold (~89 Mpx, e.g. 9,500 x 9,500).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# A file is read whole into memory: refuse bigger ones unread (an uncompressed 16-bit RGBA
# picture of MAX_PIXELS is ~0.7 GB, so no usable image is this large).
MAX_FILE_BYTES = 1 << 30
CROP_FRACTION = 0.875  # centre crop keeps 87.5% of the shorter side, as in ImageNet eval


class PixelBudget:
    """Pixels being decoded at once in this process, shared by every decoding thread: a
    picture waits until its pixels fit, so peak memory does not grow with the number of
    threads (an 88-Mpx PNG costs ~0.7 GB while it is decoded and shrunk). A picture bigger
    than the whole budget is decoded alone. ``limit`` 0: no budget."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        if not self.limit:
            yield
            return
        with self._free:
            self._free.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            if pixels >= TRIM_PIXELS:
                _return_freed_memory()
            with self._free:
                self.used -= pixels
                self._free.notify_all()


TRIM_PIXELS = 16_000_000  # after a picture this big, freed memory goes back to the system


def _return_freed_memory() -> None:
    """glibc keeps freed blocks in per-thread arenas: without this, each decoding thread
    keeps the peak of its own biggest picture and the budget would bound nothing."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # not glibc (musl, macOS): nothing to do
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


# LOOKALIKE_DECODE_MPX: megapixels decoded at once by all threads together (0: no limit)
DECODE_BUDGET = PixelBudget(int(float(os.environ.get("LOOKALIKE_DECODE_MPX", "100")) * 1e6))


class ImageError(ValueError):
    """An image file that cannot be used; ``str(error)`` is a plain-English reason."""


def list_images(image_dir: str | Path, recursive: bool = True, others: Counter | None = None,
                exclude: str | Path | None = None, links: str = "inside",
                refused: dict | None = None) -> list[str]:
    """Relative POSIX paths of image files under ``image_dir``, sorted (case-insensitive ext).

    ``others``: a Counter that gets the extension of every other file (".txt", "" for none).
    ``exclude``: a run folder kept inside ``image_dir`` (or ``image_dir`` itself): the run's
    own files (thumbnails, grids, the catalog map) are not the catalog's. ``links``: "inside"
    lists a file link only when it points at a file under ``image_dir``; "all" follows any.
    ``refused``: a dict that gets path -> reason for each link left out.
    """
    if links not in LINKS:
        raise ValueError(f"links={links!r}; choose one of {LINKS}")
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image_dir={str(image_dir)!r} is not a folder")
    skip, own = _excluded(root, exclude)
    found = []
    if recursive:
        walker = os.walk(root)
    else:
        walker = [(str(root), [], [e.name for e in os.scandir(root) if e.is_file()])]
    for folder, dirs, files in walker:
        top = Path(folder) == root
        dirs[:] = sorted(d for d in dirs if Path(folder, d).relative_to(root) != skip and not (top and d in own))
        for name in files:
            rel = (Path(folder) / name).relative_to(root).as_posix()
            if top and name in own:
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                if others is not None:
                    others[os.path.splitext(name)[1].lower()] += 1
            elif links == "inside" and (problem := _link_problem(root, Path(folder) / name)):
                if refused is not None:
                    refused[rel] = problem
            else:
                found.append(rel)
    return sorted(found)


def _excluded(root: Path, exclude) -> tuple[Path | None, set]:
    """(a sub-folder to leave out, names at the top to leave out: a run folder's own files)."""
    from . import runfolder

    if exclude is None:
        return None, set()
    try:
        skip = Path(exclude).resolve().relative_to(root.resolve())
    except ValueError:  # not inside image_dir
        return None, set()
    return (None, runfolder.OWN_ENTRIES) if skip == Path(".") else (skip, set())


def _link_problem(root: Path, path: Path) -> str | None:
    """Why the link ``path`` is not read (its target is missing, a loop, or not under ``root``);
    None when it is no link or points inside ``root``."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True).relative_to(root.resolve())
        return None
    except RuntimeError:  # Python 3.11 reports a loop so
        return f"a link that leads back to itself (a loop): {os.readlink(path)!r}"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"a link that leads back to itself (a loop): {os.readlink(path)!r}"
        return f"a link to a file that is not there: {os.readlink(path)!r}"
    except ValueError:
        return "a link to a file outside image_dir: not read (links='all' follows it)"


def _png_icc_too_large(data: bytes) -> bool:
    """True when a PNG's colour profile (iCCP chunk) unpacks past Pillow's chunk limit: Pillow
    reports it with the same message as oversized text."""
    import struct
    import zlib

    from PIL import PngImagePlugin

    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"iCCP":
            body = data[at + 8:at + 8 + length]
            compressed = body[body.find(b"\0") + 2:]  # name, NUL, method byte
            try:
                unpacked = zlib.decompressobj().decompress(compressed, PngImagePlugin.MAX_TEXT_CHUNK + 1)
            except zlib.error:
                return False
            return len(unpacked) > PngImagePlugin.MAX_TEXT_CHUNK
        if kind == b"IDAT":
            return False
        at += 12 + length
    return False


def decode_image(data: bytes, size: int, resize: str = "crop", max_pixels: int = MAX_PIXELS):
    """Decode ``data`` into a (size, size, 3) uint8 RGB array; return it and the upright (w, h).

    ``resize``: "crop" (shorter side to size/0.875, centre crop), "full" (the largest centred
    square, nothing trimmed), "pad" (letterbox on black, as the reference pipeline did) or
    "squash" (stretch to a square).
    Raises ImageError with the reason when the bytes are not a usable image.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}; choose one of {RESIZE_MODES}")
    # shrunk inside _open, while the decoded pixels are held in the budget
    small, shown = _open(data, max_pixels, lambda im: _draft(im, size, resize),
                         lambda im: fit_square(to_rgb(im), size, resize))
    return np.asarray(small), shown


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A file as an upright, loaded PIL image in its own mode (alpha kept).
    Raises ImageError with the reason, like decode_image."""
    return _open(read_file(path), max_pixels)[0]


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file (symlinks followed); False for a pipe, device, socket or folder,
    which would block or never end when read, and for a path that cannot be looked at."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of an image file; ImageError with the reason for anything else (never blocks
    on a named pipe, never reads a device or a file of more than ``max_bytes``)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("not a regular file (a named pipe, device or socket): not read")
        if info.st_size > max_bytes:
            raise ImageError(f"file too large: {info.st_size / 1e9:.1f} GB (more than "
                             f"{max_bytes / 1e9:.1f} GB; no image within max_pixels is that big)")
        with open(path, "rb") as f:
            return f.read()  # read(n) would allocate n bytes up front: 4x slower per file
    except OSError as exc:
        raise ImageError(f"cannot read the file ({exc.strerror or exc})") from None


def _open(data: bytes, max_pixels: int, draft=None, convert=None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode bytes into a loaded, upright image (then ``convert(im)``) and its (w, h) as
    displayed; every problem becomes an ImageError with a plain reason."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(_too_large(width, height, max_pixels))
            if draft is not None:
                draft(im)
            with DECODE_BUDGET.hold(im.width * im.height):  # the size as it will be decoded
                im.load()
                if im.width < 1 or im.height < 1:
                    raise ImageError("image has no pixels")
                turned = im.size
                im = _upright(im)
                if im.size != turned:  # rotated by 90 degrees: report the size as displayed
                    width, height = height, width
                if convert is not None:
                    im = convert(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:  # Pillow refuses before we see the size
        raise ImageError(f"too large: {str(exc).strip()}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if "truncated" in str(exc).lower():
            raise ImageError("truncated file: the image data ends early") from None
        if "MAX_TEXT_CHUNK" in str(exc) or "MAX_TEXT_MEMORY" in str(exc):
            what = "colour profile (ICC)" if _png_icc_too_large(data) else "text metadata"
            raise ImageError(f"{what} larger than Pillow's safety limit (the picture itself may be "
                             "fine: re-save it without metadata)") from None
        raise ImageError(f"corrupt image data ({str(exc).strip()})") from None
    return im, (width, height)


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (f"too large: {width}x{height} = {width * height / 1e6:.0f} Mpx exceeds "
            f"max_pixels={max_pixels / 1e6:.0f} Mpx (possible decompression bomb)")


def _draft(im: Image.Image, size: int, resize: str) -> None:
    """Let JPEG decode at 1/2, 1/4 or 1/8 scale when the target is that much smaller."""
    if im.format != "JPEG":
        return
    w, h = im.size
    scale = {"crop": size / CROP_FRACTION / min(w, h), "full": size / min(w, h), "pad": size / max(w, h)}.get(resize)
    want = (size, size) if scale is None else (math.ceil(w * scale), math.ceil(h * scale))
    # draft keeps both sides >= the request; DCT scaling itself averages, so no aliasing
    im.draft(None, want)


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF must not cost us the picture
        return im


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB: 16/32-bit scaled down, alpha (and palette transparency) flattened on white."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, 0.0)  # NaN / inf samples of float pictures: black
        top = arr.max() if arr.size else 0
        if im.mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 255:
            arr = arr / (65535.0 if top <= 65535 else top) * 255.0
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB") if im.mode != "RGB" else im


def fit_square(im: Image.Image, size: int, resize: str = "crop") -> Image.Image:
    """Resize an RGB image to size x size by centre crop, full centred square, letterbox or squash."""
    w, h = im.size
    if resize == "squash":
        return im.resize((size, size), Image.BILINEAR)
    if resize in ("crop", "full"):
        side = min(w, h) * (CROP_FRACTION if resize == "crop" else 1.0)
        left, top = (w - side) / 2, (h - side) / 2
        # resize straight from the crop box: no large intermediate for very long images
        return im.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size))  # black, like tf.image.resize_with_pad
    canvas.paste(im.resize((new_w, new_h), Image.BILINEAR), ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def thumbnail(path: str | Path, size: int = 128) -> Image.Image:
    """An upright RGB thumbnail for display; a grey tile if the file cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(read_file(path)))  # the same checks as embedding: never a pipe
            im.draft(None, (size, size))
            im = to_rgb(_upright(im))
            im.thumbnail((size, size))
            return im
    except Exception:
        return Image.new("RGB", (size, size), (200, 200, 200))
