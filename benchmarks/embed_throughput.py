"""Embedding throughput: reference-style loop vs our pipeline vs the model alone.

    .venv/bin/python benchmarks/embed_throughput.py [--n-images 1000] [--model efficientnet-lite0]

All in one process, on the same images and the same model, so the ratios hold on a noisy
shared machine:
  (a) the reference: one image per forward pass (tf.io decode_jpeg + resize_with_pad),
      one text file per vector (np.savetxt);
  (b) our pipeline: helpers.embed.embed_folder with the default options, for each model runtime,
      with precision="int8", and without the outline (hog_weight=0);
  (c) the model alone on pre-decoded uint8 tensors, for each runtime (and int8) and a few batch sizes.
(b) and (c) are steady-state rates: the one-off TFLite conversion counts as model loading.
Also the bound (d) decode + resize on all cores with 01's decoder, then 1 / (1/d + 1/m) with m
the best model-only rate: what the two stages sharing the cores allow, and (b) as a fraction
of it. And the peak RSS of embed_folder at 2k vs 10k images (--rss), each in a fresh process.
Images: photos from scikit-image re-framed and re-sized to typical product-photo sizes
(600-1600 px), saved as JPEG q85 under benchmarks/cache/ (made once).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"


def make_images(n: int, folder: Path) -> Path:
    """n JPEGs of 600-1600 px made from scikit-image's photos (random crops, flips, sizes)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return folder
    photos = [Image.fromarray(getattr(data, name)()).convert("RGB")
              for name in ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry",
                           "hubble_deep_field", "coins", "camera")]
    rng = np.random.default_rng(0)
    for i in range(len(existing), n):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.integers(600, 1601))
        scale = side / max(cw, ch)
        out = im.crop((x, y, x + cw, y + ch)).resize((max(1, int(cw * scale)), max(1, int(ch * scale))))
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        out.save(folder / f"img_{i:05d}.jpg", quality=85)
    return folder


def reference_architecture() -> str:
    """The reference's MobileNetV2-1.4 (random weights: only speed is measured) as a
    TF Hub-style SavedModel under benchmarks/cache/; returns its folder."""
    import tensorflow as tf

    folder = CACHE / "mobilenet_v2_140_224_random"
    if (folder / "saved_model.pb").exists():
        return str(folder)
    net = tf.keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.4, include_top=False,
                                            pooling="avg", weights=None)

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def __call__(self, images):
            return self.net(images * 2.0 - 1.0, training=False)

    tf.saved_model.save(Module(), str(folder))
    return str(folder)


def reference_loop(module, files: list[Path], out_dir: Path) -> float:
    """The reference's step 1, as written: returns images/second."""
    import tensorflow as tf

    start = time.perf_counter()
    for f in files:
        img = tf.io.decode_jpeg(tf.io.read_file(str(f)), channels=3)
        img = tf.image.resize_with_pad(img, 224, 224)
        img = tf.image.convert_image_dtype(img, tf.float32)[tf.newaxis, ...]
        vector = np.squeeze(module(img))
        np.savetxt(out_dir / f"{f.stem}.npz", vector, delimiter=",")
    return len(files) / (time.perf_counter() - start)


def model_alone(model, pixels: np.ndarray, batch: int) -> float:
    model.embed(pixels[:batch])  # warm-up (graph tracing, allocations)
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        model.embed(pixels[i:i + batch])
    return len(pixels) / (time.perf_counter() - start)


def throughput(n_images: int, model_handle: str) -> dict:
    from helpers import images
    from helpers.embed import embed_folder
    from helpers.models import load_model

    folder = make_images(n_images, CACHE / "embed_images")
    files = sorted(folder.glob("*.jpg"))[:n_images]
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp) / "images"
        sub.mkdir()
        for f in files:  # exactly n images in their own folder
            (sub / f.name).symlink_to(f)
        tf_model = load_model(model_handle, "tf")
        lite_model = load_model(model_handle, "tflite")
        int8_model = load_model(model_handle, "tflite", precision="int8")
        size = tf_model.image_size
        results = {"machine": machine(), "n_images": len(files), "model": model_handle}

        (Path(tmp) / "txt").mkdir()
        results["a_reference_loop"] = reference_loop(tf_model._fn, files, Path(tmp) / "txt")

        # the default embedding options (GeM + the outline), and once without the outline
        for runtime, precision, outline in (("tf", "float32", True), ("tflite", "float32", True),
                                            ("tflite", "int8", True), ("tflite", "float32", False)):
            options = {} if outline else {"hog_weight": 0.0}
            meta = embed_folder(sub, Path(tmp) / f"run_{runtime}_{precision}_{outline}", model_handle=model_handle, links="all",
                                runtime=runtime, precision=precision, batch_size=32, progress=False, **options)
            name = (runtime if precision == "float32" else precision) + ("" if outline else "_no_outline")
            results[f"b_pipeline_{name}_batch32"] = meta["images_per_second"]

        pixels = np.stack([images.decode_image(f.read_bytes(), size)[0] for f in files[:256]])
        start = time.perf_counter()
        for f in files[:200]:
            images.decode_image(f.read_bytes(), size)
        results["decode_ms_per_image_one_thread"] = 1000 * (time.perf_counter() - start) / 200
        results["d_decode_all_cores"] = decode_rate_all_cores(files, size)
        for batch in (1, 8, 32, 64):
            results[f"c_model_tf_batch{batch}"] = model_alone(tf_model, pixels, batch)
            results[f"c_model_tflite_batch{batch}"] = model_alone(lite_model, pixels, batch)
            results[f"c_model_int8_batch{batch}"] = model_alone(int8_model, pixels, batch)
        for name, fn in (("tflite", lite_model.embed), ("int8", int8_model.embed)):
            # pooled vectors of the same pictures, for the cosine of int8 to float32
            results[f"vectors_{name}"] = fn(pixels)
    float_b = max(v for k, v in results.items() if k.startswith("b_") and "int8" not in k and "no_outline" not in k)
    float_c = max(v for k, v in results.items() if k.startswith("c_") and "int8" not in k)
    int8_c = max(v for k, v in results.items() if k.startswith("c_model_int8"))
    results["ratio_b_over_a"] = float_b / results["a_reference_loop"]
    results["ratio_b_over_best_c"] = float_b / float_c
    results["ratio_b_int8_over_a"] = results["b_pipeline_int8_batch32"] / results["a_reference_loop"]
    results["ratio_b_int8_over_b_float32"] = results["b_pipeline_int8_batch32"] / float_b
    results["ratio_b_over_b_no_outline"] = results["b_pipeline_tflite_batch32"] / results["b_pipeline_tflite_no_outline_batch32"]
    results["ratio_c_int8_over_c_float32"] = int8_c / float_c
    for name, model_rate, pipeline in (("float32", float_c, float_b), ("int8", int8_c, results["b_pipeline_int8_batch32"])):
        bound = 1 / (1 / results["d_decode_all_cores"] + 1 / model_rate)
        results[f"bound_{name}"], results[f"b_over_bound_{name}"] = bound, pipeline / bound
    a, b = results.pop("vectors_tflite"), results.pop("vectors_int8")
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    results["int8_cosine_to_float32_mean"], results["int8_cosine_to_float32_min"] = float(cosine.mean()), float(cosine.min())
    return results


def decode_rate_all_cores(files: list[Path], size: int) -> float:
    """Images per second read, hashed, decoded and resized by 01's decoder on every core."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from helpers.decode import read_and_decode

    def one(f):
        return read_and_decode(f.parent, f.name, size, "crop", 10 ** 9)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, files[:64]))  # warm the file cache
        start = time.perf_counter()
        list(pool.map(one, files))
    return len(files) / (time.perf_counter() - start)


def peak_rss(n_images: int, model_handle: str) -> float:
    """Peak RSS (MB) of one embed_folder run over n images, in a fresh process."""
    code = f"""
import resource, sys, tempfile
from pathlib import Path
from helpers.embed import embed_folder
sys.path.insert(0, {str(HERE)!r})
from embed_throughput import make_images, CACHE
folder = make_images({n_images}, CACHE / "embed_images")
with tempfile.TemporaryDirectory() as tmp:
    sub = Path(tmp) / "images"; sub.mkdir()
    for f in sorted(folder.glob("*.jpg"))[:{n_images}]:
        (sub / f.name).symlink_to(f)
    embed_folder(sub, Path(tmp) / "run", model_handle={model_handle!r}, runtime="tflite", links="all", progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


FAST_PATH_FLAGS = ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> str:
    """The CPU, its fast-path flags (AVX-512, VNNI, AMX) and cores: every table states them."""
    import os

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    shown = " ".join(f for f in FAST_PATH_FLAGS if f in flags) or "none of AVX-512/VNNI/AMX"
    return f"{cpu} ({shown}), {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--model", default="efficientnet-lite0",
                        help="a model_handle, or 'reference' for a random-weight MobileNetV2-1.4")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS at 2k and 10k images")
    args = parser.parse_args()
    model = reference_architecture() if args.model == "reference" else args.model
    results = throughput(args.n_images, model)
    results["model"] = args.model
    if args.rss:
        make_images(10_000, CACHE / "embed_images")
        results["peak_rss_mb_2k"] = peak_rss(2_000, args.model)
        results["peak_rss_mb_10k"] = peak_rss(10_000, args.model)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
