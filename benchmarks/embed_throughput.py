"""Embedding throughput: reference-style loop vs our pipeline vs the model alone, and the bound.

    .venv/bin/python benchmarks/embed_throughput.py [--n-images 1000] [--model efficientnet-lite0]

All in one process, on the same images and the same model, so the ratios hold on a noisy
shared machine:
  (a) the reference: one image per forward pass (tf.io decode_jpeg + resize_with_pad),
      one text file per vector (np.savetxt);
  (b) our pipeline: helpers.embed.embed_folder with the default options (precision "auto":
      int8 where the CPU has VNNI or AMX) and with float32; and, for both, the local engine as
      it was before issue 24 ("before": decode threads feeding one model on every core). Each
      with the cores' idle fraction (1 - process CPU time / (wall time x cores));
  (c) the model alone on pre-decoded uint8 tensors: the default's feature-map function, as one
      interpreter on every core and as one single-thread interpreter per core side by side;
      TF, and OpenVINO (the float32 and int8 TFLite files; bf16 where the CPU has it) when
      the package is installed; and (e) OpenVINO int8 (and bf16 where the CPU has it) against
      TFLite int8 in 01's layout (decode + feature map + GeM, a thread per core), two rounds;
  (d) decode + resize of the same files on all cores, for Pillow (draft mode + bilinear, 01's
      decoder), simplejpeg (libjpeg-turbo DCT-scaled) + OpenCV INTER_AREA, and OpenCV's
      reduced imdecode + INTER_AREA, at equal output (the same 224-px centre crop), with each
      one's mean pixel difference to Pillow's.
The bound is 1 / (1/d + 1/m), d the best decoder's rate and m the best engine's (same
precision as the pipeline): what the two stages sharing the cores allow; (b) is given as a
fraction of it, once from the rows above and, because this machine's speed drifts within a
run, in three rounds that each measure 01, the engine and the decoders back to back (the
median round is the figure). (b) and (c) are steady-state rates: the one-off TFLite conversion counts as
model loading. And the peak RSS of embed_folder at 2k vs 10k images (--rss), each in a fresh
process. Images: photos from scikit-image re-framed and re-sized to typical product-photo
sizes (600-1600 px), saved as JPEG q85 under benchmarks/cache/ (made once).
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


def throughput(n_images: int, model_handle: str) -> dict:
    from helpers import images
    from helpers.models import load_model

    folder = make_images(n_images, CACHE / "embed_images")
    files = sorted(folder.glob("*.jpg"))[:n_images]
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp) / "images"
        sub.mkdir()
        for f in files:  # exactly n images in their own folder
            (sub / f.name).symlink_to(f)
        results = {"machine": machine(), "n_images": len(files), "model": model_handle}
        (Path(tmp) / "txt").mkdir()
        results["a_reference_loop"] = reference_loop(load_model(model_handle, "tf")._fn, files, Path(tmp) / "txt")
        pipelines(sub, Path(tmp), model_handle, results)
        size = load_model(model_handle, "tflite").image_size
        pixels = np.stack([images.decode_image(f.read_bytes(), size)[0] for f in files[:256]])
        engines(pixels, model_handle, results)
        decoders(files, size, results)
        results.update(openvino_in_01s_layout(files, model_handle))
        bound_rounds(sub, Path(tmp), files, pixels, model_handle, results)
    return summarise(results)


def bound_rounds(sub: Path, tmp: Path, files: list[Path], pixels: np.ndarray, model_handle: str,
                 results: dict, rounds: int = 3) -> None:
    """01 (default options), the best engine alone (TFLite, or OpenVINO when installed) and the
    decoders, measured in turn within each round, so every round's bound and 01's fraction of it come from the same
    minutes of this shared machine; the median round is the figure."""
    from helpers.embed import embed_folder
    from helpers.models import load_model

    precision = results["precision_default"]
    engines_ = [load_model(model_handle, "tflite", precision=precision, threads=t) for t in (None, 1)]
    decoders_ = {"pillow": lambda f: _pillow(f, engines_[0].image_size)}
    if "d_decode_simplejpeg_cv2" in results:
        import cv2
        import simplejpeg

        decoders_["simplejpeg_cv2"] = lambda f: _fast_decode(f, engines_[0].image_size, cv2, simplejpeg)
    fractions = []
    for r in range(rounds):
        b = embed_folder(sub, tmp / f"round_{r}", links="all", batch_size=32, progress=False)["images_per_second"]
        m = max([model_alone(e.feature_map, pixels, workers=1 if e.threads is None else 2) for e in engines_]
                + [v for k, v in openvino_rates(engines_[0], "feature_map", pixels).items() if k.endswith(precision)])
        d = max(decode_rate_all_cores(files, fn) for fn in decoders_.values())
        fractions.append(b / (1 / (1 / d + 1 / m)))
        results[f"round{r + 1}_b_m_d"] = [round(b, 1), round(m, 1), round(d, 1)]
    results["b_over_bound_default_rounds"] = [round(f, 3) for f in fractions]
    results["b_over_bound_default_median_round"] = float(np.median(fractions))


def _pillow(f: Path, size: int) -> np.ndarray:
    from helpers.decode import read_and_decode

    return read_and_decode(f.parent, f.name, size, "crop", 10 ** 9).pixels


def summarise(results: dict) -> dict:
    """The ratios: (b)/(a), (b)/bound per precision, int8's cosine to float32."""
    d = max(v for k, v in results.items() if k.startswith("d_decode_"))
    results["d_best_decoder"] = d
    for name in ("default", "float32"):
        precision = results[f"precision_{name}"]
        openvino = ("c_model_openvino_int8",) if precision == "int8" else ("c_model_openvino_f32", "c_model_openvino_bf16")
        m = max(v for k, v in results.items() if k.startswith(f"c_model_tflite_{precision}_") or k in openvino)
        results[f"m_best_engine_{name}"] = m
        bound = 1 / (1 / d + 1 / m)
        results[f"bound_{name}"] = bound
        results[f"b_over_bound_{name}"] = results[f"b_pipeline_{name}"] / bound
        results[f"before_over_bound_{name}"] = results[f"b_before_{name}"] / bound
        results[f"b_over_a_{name}"] = results[f"b_pipeline_{name}"] / results["a_reference_loop"]
        results[f"b_over_before_{name}"] = results[f"b_pipeline_{name}"] / results[f"b_before_{name}"]
    results["b_default_over_b_float32"] = results["b_pipeline_default"] / results["b_pipeline_float32"]
    a, b = results.pop("vectors_float32"), results.pop("vectors_int8")
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    results["int8_cosine_to_float32_mean"], results["int8_cosine_to_float32_min"] = float(cosine.mean()), float(cosine.min())
    return results


def model_alone(fn, pixels: np.ndarray, batch: int = 32, workers: int = 1) -> float:
    """Images/s of ``fn(batch)`` on pre-decoded pictures, from ``workers`` threads side by side."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, [pixels[:2]] * workers))  # warm-up: tracing, allocations, one interpreter each
        start = time.perf_counter()
        list(pool.map(fn, chunks))
    return len(pixels) / (time.perf_counter() - start)


def busy(run) -> tuple[object, float]:
    """``run()``'s result and the idle fraction of the cores while it ran."""
    import os

    before, start = os.times(), time.perf_counter()
    out = run()
    after, wall = os.times(), time.perf_counter() - start
    cpu = (after.user - before.user) + (after.system - before.system)
    return out, max(0.0, 1 - cpu / (wall * (os.cpu_count() or 1)))


def before_pipeline(folder: Path, options, batch_size: int = 32) -> float:
    """Images/s of 01's local engine before issue 24: decode threads (one per core) feeding
    batches to one model on every core, in the main thread."""
    import os
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from helpers.decode import read_and_decode

    model = options.embedder().warm_up()
    paths = sorted(p.name for p in folder.iterdir())
    workers = os.cpu_count() or 1
    start, batch = time.perf_counter(), []
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(read_and_decode, folder, p, model.image_size, options.resize,
                                    options.max_pixels) for p in paths[:64])
        todo = iter(paths[64:])
        while pending:
            batch.append(pending.popleft().result().pixels)
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(read_and_decode, folder, nxt, model.image_size, options.resize,
                                           options.max_pixels))
            if len(batch) == batch_size or not pending:
                model(np.stack(batch))
                batch.clear()
    return len(paths) / (time.perf_counter() - start)


def pipelines(sub: Path, tmp: Path, model_handle: str, results: dict) -> None:
    """(b): 01 now and before, default precision and float32, each with its idle fraction."""
    from helpers.embed import embed_folder
    from helpers.options import EmbeddingOptions

    for precision in ("auto", "float32"):
        options = EmbeddingOptions(model_handle=model_handle, precision=precision)
        name = "default" if precision == "auto" else "float32"
        results[f"precision_{name}"] = options.precision
        meta, results[f"idle_b_{name}"] = busy(lambda: embed_folder(
            sub, tmp / f"run_{name}", options, links="all", batch_size=32, progress=False))
        results[f"b_pipeline_{name}"] = meta["images_per_second"]
        results[f"b_before_{name}"], results[f"idle_before_{name}"] = busy(lambda: before_pipeline(sub, options))
    options = EmbeddingOptions(model_handle=model_handle, hog_weight=0.0)
    results["b_pipeline_default_no_outline"] = embed_folder(
        sub, tmp / "run_no_outline", options, links="all", batch_size=32, progress=False)["images_per_second"]


def engines(pixels: np.ndarray, model_handle: str, results: dict) -> None:
    """(c): the model alone, per engine and precision, on the default's function."""
    import os

    from helpers.models import load_model

    cores = os.cpu_count() or 1
    tf_model = load_model(model_handle, "tf")
    fn = "feature_map" if tf_model.has_feature_map else "embed"
    results["c_model_tf"] = model_alone(getattr(tf_model, fn), pixels)
    for precision in ("float32", "int8"):
        shared = load_model(model_handle, "tflite", precision=precision)
        per_core = load_model(model_handle, "tflite", precision=precision, threads=1)
        results[f"c_model_tflite_{precision}_one_on_all_cores"] = model_alone(getattr(shared, fn), pixels)
        results[f"c_model_tflite_{precision}_one_per_core"] = model_alone(getattr(per_core, fn), pixels,
                                                                          workers=cores)
        results[f"vectors_{precision}"] = shared.embed(pixels)
    results.update(openvino_rates(shared, fn, pixels))


def openvino_rates(model, fn: str, pixels: np.ndarray) -> dict:
    """OpenVINO on the TFLite files of the same function: the float32 one (f32; bf16 where the
    CPU has AVX512_BF16 or AMX) and the int8 one, throughput hint; {} when it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    from helpers.models import cpu_flags, tflite_cache_path

    function = "feature_map" if fn == "feature_map" else "pooled"
    runs = [("f32", "float32", "f32"), ("int8", "int8", "f32")]
    if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        runs.append(("bf16", "float32", "bf16"))
    core, x, out = ov.Core(), pixels.astype(np.float32) / 255, {}
    for name, file_precision, hint in runs:
        path = tflite_cache_path(model.location, function, model.image_size, file_precision)
        compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT",
                                                         "INFERENCE_PRECISION_HINT": hint})
        queue = ov.AsyncInferQueue(compiled)
        for picture in x[:8]:
            queue.start_async({0: picture[None]})
        queue.wait_all()
        start = time.perf_counter()
        for picture in x:
            queue.start_async({0: picture[None]})
        queue.wait_all()
        out[f"c_model_openvino_{name}"] = len(x) / (time.perf_counter() - start)
    return out


def openvino_in_01s_layout(files: list[Path], model_handle: str) -> dict:
    """Decode + feature map + GeM in 01's layout (a thread per core, whole batches each), with
    TFLite int8 (an interpreter per thread) against OpenVINO on the same int8 file, and on the
    float32 file in bf16 where the CPU has it (one compiled model, an infer request per thread),
    two rounds interleaved; {} without openvino."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    try:
        import openvino as ov
    except ImportError:
        return {}
    from helpers.decode import read_and_decode
    from helpers.features import gem
    from helpers.models import cpu_flags, load_model, tflite_cache_path

    lite = load_model(model_handle, "tflite", precision="int8", threads=1)
    size = lite.image_size

    def openvino(file_precision, **config):
        compiled = ov.Core().compile_model(str(tflite_cache_path(lite.location, "feature_map", size, file_precision)),
                                           "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"} | config)
        local = threading.local()

        def run(pixels):
            if getattr(local, "request", None) is None:
                local.request = compiled.create_infer_request()
            x = pixels.astype(np.float32) / 255
            return np.concatenate([local.request.infer({0: p[None]})[0].copy() for p in x])
        return run

    def work(chunk, fn):
        return gem(fn(np.stack([read_and_decode(f.parent, f.name, size, "crop", 10 ** 9).pixels for f in chunk])))

    engines = [("tflite_int8", lite.feature_map), ("openvino_int8", openvino("int8"))]
    if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        engines.append(("openvino_bf16", openvino("float32", INFERENCE_PRECISION_HINT="bf16")))
    chunks, out = [files[i:i + 32] for i in range(0, len(files), 32)], {}
    for round_ in (1, 2):
        for name, fn in engines:
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                list(pool.map(lambda c: work(c[:2], fn), chunks[:2]))  # warm-up
                start = time.perf_counter()
                list(pool.map(lambda c: work(c, fn), chunks))
            out[f"e_01_layout_{name}_round{round_}"] = len(files) / (time.perf_counter() - start)
    return out


def decoders(files: list[Path], size: int, results: dict) -> None:
    """(d): decode + resize on all cores (read and hashed too), per decoder, at equal output."""
    def pillow(f: Path) -> np.ndarray:
        return _pillow(f, size)

    candidates = {"pillow": pillow}
    try:
        import cv2
        import simplejpeg
    except ImportError:
        pass
    else:
        candidates["simplejpeg_cv2"] = lambda f: _fast_decode(f, size, cv2, simplejpeg)
        candidates["cv2"] = lambda f: _fast_decode(f, size, cv2, None)
    reference = [pillow(f) for f in files[:100]]
    for name, fn in candidates.items():
        results[f"d_decode_{name}"] = decode_rate_all_cores(files, fn)
        diff = [np.abs(fn(f).astype(int) - r).mean() for f, r in zip(files[:100], reference)]
        results[f"d_pixel_difference_to_pillow_{name}"] = float(np.mean(diff))


def _fast_decode(f: Path, size: int, cv2, simplejpeg) -> np.ndarray:
    """Read, hash, DCT-scaled decode (shorter side >= size / 0.875) and INTER_AREA centre crop."""
    import hashlib

    from helpers.images import CROP_FRACTION

    data = f.read_bytes()
    hashlib.sha256(data).hexdigest()
    if simplejpeg is not None:
        w, h = simplejpeg.decode_jpeg_header(data)[:2]
        scale = size / CROP_FRACTION / min(w, h)
        rgb = simplejpeg.decode_jpeg(data, "RGB", min_width=int(np.ceil(w * scale)),
                                     min_height=int(np.ceil(h * scale)))
    else:
        buffer = np.frombuffer(data, np.uint8)
        header = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_GRAYSCALE_8)  # cheap: the size / 8
        shorter = min(header.shape) * 8
        flag = next((flag for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                               (2, cv2.IMREAD_REDUCED_COLOR_2))
                     if shorter / factor >= size / CROP_FRACTION), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(cv2.imdecode(buffer, flag), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    side = int(round(min(w, h) * CROP_FRACTION))
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(rgb[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)


def decode_rate_all_cores(files: list[Path], decode) -> float:
    """Images per second through ``decode(file)`` on every core."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(decode, files[:64]))  # warm the file cache
        start = time.perf_counter()
        list(pool.map(decode, files))
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
    embed_folder(sub, Path(tmp) / "run", model_handle={model_handle!r}, links="all", progress=False)
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
