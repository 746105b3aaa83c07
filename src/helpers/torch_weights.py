"""Read a PyTorch ``.pth`` state dict into NumPy arrays without importing torch.

Only tensors and ordered dicts are admitted: any other global named in the pickle
(a class, a function) is refused, so a weights file cannot run code on load.
Both the legacy format (torch < 1.6: concatenated pickles followed by raw storages)
and the zip format (torch >= 1.6: ``archive/data.pkl`` + ``archive/data/<key>``)
are understood.

Nothing in the file is trusted: every tensor's sizes, strides and offset must fit inside its
storage's bytes (no view reaches other memory), a storage's length must fit in the file, and
the state dict is a tree (shared or deeply nested containers, which cost exponential time and
memory to walk, are refused).
"""
from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafeWeightsError(pickle.UnpicklingError):
    """The weights file names something other than tensors and ordered dicts."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


MAX_NODES = 1_000_000  # containers and tensors in one state dict
MAX_DEPTH = 32


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnsafeWeightsError(f"a tensor size, stride or offset of {value!r}: not a count")
    return value


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        if not isinstance(storage, _Storage) or not isinstance(size, (tuple, list)) \
                or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
            raise UnsafeWeightsError("a tensor without a storage, or with sizes and strides that do not pair")
        self.storage, self.offset = storage, _count(offset)
        self.size, self.stride = tuple(map(_count, size)), tuple(map(_count, stride))

    def to_numpy(self, data: dict[str, np.ndarray]) -> np.ndarray:
        flat = data[self.storage.key]
        numel = int(np.prod(self.size, dtype=object)) if self.size else 1
        # the last element the view touches (Python ints: no overflow) must be in the storage
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n)
        if numel and (last >= len(flat) or numel > len(flat)):
            raise UnsafeWeightsError(f"tensor of storage {self.storage.key!r} reaches element {last} "
                                     f"of a storage of {len(flat)}: the file is corrupt or crafted")
        if not self.size:
            return flat[self.offset].copy()
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride]
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeWeightsError(
            f"refusing to load {module}.{name}: a weights file may only contain tensors "
            "and ordered dicts"
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise UnsafeWeightsError(f"unexpected persistent id {pid!r}")
        return _Storage(str(key), storage_type.dtype, _count(numel))


def _walk(obj, found: dict, seen: set | None = None, depth: int = 0):
    """Collect the storages of a state dict, refusing anything but a tree of bounded size."""
    seen = set() if seen is None else seen
    if isinstance(obj, _TensorRef):
        found[obj.storage.key] = obj.storage  # a tensor may appear twice (tied weights)
    elif isinstance(obj, dict):
        if id(obj) in seen or depth > MAX_DEPTH or len(seen) > MAX_NODES:
            raise UnsafeWeightsError("the state dict shares or nests its containers past any real "
                                     "weights file: refused (it would take exponential time to read)")
        seen.add(id(obj))
        for value in obj.values():
            _walk(value, found, seen, depth + 1)


def _materialise(obj, data):
    if isinstance(obj, _TensorRef):
        return obj.to_numpy(data)
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v, data)) for k, v in obj.items())
    return obj


def load_state_dict(path: str | Path) -> "collections.OrderedDict[str, np.ndarray]":
    """Return the state dict stored in a PyTorch ``.pth`` file as NumPy arrays."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def _load_legacy(path: Path):
    with open(path, "rb") as f:
        magic = _RestrictedUnpickler(f).load()
        if magic != _LEGACY_MAGIC:
            raise pickle.UnpicklingError(f"{path}: not a PyTorch weights file (bad magic number)")
        _RestrictedUnpickler(f).load()  # protocol version
        sys_info = _RestrictedUnpickler(f).load()
        if not sys_info.get("little_endian", True):
            raise pickle.UnpicklingError(f"{path}: big-endian weights are not supported")
        state = _RestrictedUnpickler(f).load()
        keys = _RestrictedUnpickler(f).load()
        storages: dict = {}
        _walk(state, storages)
        data = {}
        for key in keys:
            size = f.read(8)
            if len(size) != 8:
                raise pickle.UnpicklingError(f"{path}: truncated weights file")
            (numel,) = struct.unpack("<q", size)
            dtype = storages[key].dtype if key in storages else np.dtype(np.uint8)
            left = path.stat().st_size - f.tell()
            if numel < 0 or numel * dtype.itemsize > left:
                raise pickle.UnpicklingError(f"{path}: storage {key!r} claims {numel} elements, "
                                             f"more than the {left} bytes left: corrupt or crafted")
            raw = f.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"{path}: truncated weights file")
            data[key] = np.frombuffer(raw, dtype=dtype)
    return _materialise(state, data)


def _load_zip(path: Path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise pickle.UnpicklingError(f"{path}: zip file without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        with archive.open(pkl) as f:
            state = _RestrictedUnpickler(f).load()
        storages: dict = {}
        _walk(state, storages)
        data = {key: _zip_storage(archive, f"{prefix}data/{key}", s, path) for key, s in storages.items()}
    return _materialise(state, data)


def _zip_storage(archive: zipfile.ZipFile, name: str, storage: _Storage, path: Path) -> np.ndarray:
    """One storage's elements, after checking its size in the archive against the file's claim."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise pickle.UnpicklingError(f"{path}: storage {name} is missing") from None
    if info.file_size % storage.dtype.itemsize or info.file_size > 64 * path.stat().st_size + (1 << 20):
        raise pickle.UnpicklingError(f"{path}: storage {name} has {info.file_size} bytes: corrupt or crafted")
    return np.frombuffer(archive.read(name), dtype=storage.dtype)
