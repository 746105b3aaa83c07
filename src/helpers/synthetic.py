"""Generated pictures: product-photo backgrounds for the near-duplicate benchmark
(``helpers.evaluate``) and the calibration set of int8 models (``helpers.models``).

Generated, not shipped, so nothing depends on downloadable data; seeded, so the same call
always gives the same pictures.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def background(w: int, h: int, rng) -> Image.Image:
    """A plausible product-photo background: gradient, stripes, a soft noise texture or
    a cluttered scene of random shapes."""
    from PIL import ImageDraw, ImageFilter

    base = rng.integers(30, 230, size=3).astype(np.float64)
    other = np.clip(base + rng.normal(0, 60, size=3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    kind = rng.integers(4)
    if kind == 3:  # clutter: overlapping shapes, softly blurred like an out-of-focus scene
        scene = Image.new("RGB", (w, h), tuple(int(c) for c in base))
        draw = ImageDraw.Draw(scene)
        for _ in range(int(rng.integers(8, 20))):
            x0, y0 = rng.uniform(-0.2, 1.0, size=2) * (w, h)
            x1, y1 = (x0, y0) + rng.uniform(0.1, 0.6, size=2) * (w, h)
            shape = draw.ellipse if rng.integers(2) else draw.rectangle
            shape((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
        return scene.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 3))))
    if kind == 0:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(1e-9, np.ptp(t))
    elif kind == 1:  # stripes or planks
        period = rng.uniform(0.08, 0.3)
        t = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (xx if rng.integers(2) else yy) / period))
        t = 0.7 * t + 0.3 * rng.random((h, w))
    else:  # blotchy texture: upsampled noise
        small = rng.random((max(2, h // 24), max(2, w // 24)))
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC),
                       dtype=np.float64) / 255.0
    pixels = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
    pixels += rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def calibration_images(size: int, n: int = 200, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) float32 pictures in [0, 1] whose activations span those of product
    photos: backgrounds of every kind, a third of them shrunk onto a white page like a
    packshot. Quantising EfficientNet-Lite0 with these gives the same near-duplicate and
    Fashion-MNIST figures as calibrating on real photos (docs/benchmarks.md)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        picture = background(size, size, rng)
        if i % 3 == 2:
            page = Image.new("RGB", (size, size), "white")
            side = int(rng.integers(size * 4 // 9, size * 8 // 9))
            page.paste(picture.resize((side, side)), (int(rng.integers(0, size - side)), int(rng.integers(0, size - side))))
            picture = page
        out[i] = np.asarray(picture, np.float32) / 255.0
    return out
