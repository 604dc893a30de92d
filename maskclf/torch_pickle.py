"""Read PyTorch state-dict files (`.pth`/`.pt`) into numpy arrays without torch.

Both serialisation formats written by `torch.save` are supported:

- legacy (`_use_new_zipfile_serialization=False`, torch < 1.6): back-to-back pickles
  (magic number, protocol version, sys info, the object, the list of storage keys),
  then each storage as an 8-byte element count followed by its raw bytes;
- zip (torch >= 1.6): `<name>/data.pkl` plus one raw `<name>/data/<key>` entry per storage.

Pickles are never loaded with plain `pickle.load`: the unpickler resolves only the
handful of globals a tensor state dict needs, mapped to numpy stand-ins, and raises
`UnsafePickleError` for anything else (`os.system`, `builtins.eval`, ...), before any
of it can run.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",  # widened to float32 when materialised
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class UnsafePickleError(ValueError):
    """A pickle asked for a global that a tensor state dict never needs."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    storage_type: _StorageType
    offset: int  # in elements; non-zero only for legacy storage views


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> _TensorRef:
    """Stand-in for `torch._utils._rebuild_tensor(_v2)`: records where the data lives."""
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor built from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stand-in for `torch._utils._rebuild_parameter(_with_state)`: a parameter is its data."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `_ALLOWED_GLOBALS` and records referenced storages."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _StorageType] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refusing to unpickle forbidden global {module}.{name} "
                "(only tensor state dicts are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not isinstance(pid, tuple) or len(pid) < 5 or _as_str(pid[0]) != "storage":
            raise ValueError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], _as_str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"unexpected storage type {storage_type!r}")
        self.storages[key] = storage_type
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return _StorageRef(key, storage_type, 0)
        _view_key, offset, _size = view
        return _StorageRef(key, storage_type, int(offset))


def _as_str(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict (legacy or zip format) as `{name: numpy array}`.

    Arrays come back C-contiguous, in the file's dtype (bfloat16 widened to float32).
    Raises `UnsafePickleError` if the file's pickle references any global outside the
    tensor-state-dict allow-list, and `ValueError` naming the file if it is truncated,
    corrupt or not a flat mapping of names to tensors.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            obj, storages = _read_zip(path)
        else:
            obj, storages = _read_legacy(path)
        return _materialise_state_dict(obj, storages)
    except UnsafePickleError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        struct.error,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        TypeError,
        ValueError,
    ) as exc:
        raise ValueError(f"{path}: not a readable PyTorch state dict ({exc})") from exc


def _read_zip(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), path)
        obj = unpickler.load()
        order = _zip_byteorder(archive, prefix)
        storages = {
            key: _storage_array(archive.read(f"{prefix}data/{key}"), storage_type, order)
            for key, storage_type in unpickler.storages.items()
        }
    return obj, storages


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str) -> str:
    try:
        order = archive.read(f"{prefix}byteorder").decode("ascii").strip()
    except KeyError:  # written before torch recorded it: always little-endian
        return "<"
    if order not in ("little", "big"):
        raise ValueError(f"unknown byteorder {order!r}")
    return "<" if order == "little" else ">"


def _read_legacy(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    with path.open("rb") as f:
        if _StateDictUnpickler(f, path).load() != LEGACY_MAGIC_NUMBER:
            raise ValueError("bad magic number: not a PyTorch file")
        protocol = _StateDictUnpickler(f, path).load()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"unsupported legacy protocol version {protocol!r}")
        sys_info = _StateDictUnpickler(f, path).load()
        order = "<" if sys_info.get("little_endian", True) else ">"
        unpickler = _StateDictUnpickler(f, path)
        obj = unpickler.load()
        keys = _StateDictUnpickler(f, path).load()
        storages = {}
        for key in keys:
            storage_type = unpickler.storages[_as_str(key)]
            storages[_as_str(key)] = _read_legacy_storage(f, storage_type, order)
    return obj, storages


def _read_legacy_storage(f: IO[bytes], storage_type: _StorageType, order: str) -> np.ndarray:
    header = f.read(8)
    if len(header) != 8:
        raise ValueError("file ends inside a storage header (truncated)")
    (count,) = struct.unpack(f"{order}q", header)
    if count < 0:
        raise ValueError(f"negative storage size {count}")
    nbytes = count * storage_type.dtype.itemsize
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"storage of {count} elements is truncated ({len(data)} of {nbytes} bytes)")
    return _storage_array(data, storage_type, order)


def _storage_array(data: bytes, storage_type: _StorageType, order: str) -> np.ndarray:
    dtype = storage_type.dtype
    if len(data) % dtype.itemsize:
        raise ValueError(f"{storage_type.name} of {len(data)} bytes is not whole elements")
    array = np.frombuffer(data, dtype=dtype.newbyteorder(order)).astype(dtype.newbyteorder("="))
    if storage_type.name == "BFloat16Storage":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _materialise_state_dict(obj: Any, storages: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"top-level object is a {type(obj).__name__}, not a state dict")
    state: dict[str, np.ndarray] = {}
    for name, ref in obj.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise ValueError(f"entry {name!r} is a {type(ref).__name__}, not a tensor")
        state[name] = _materialise_tensor(ref, storages[ref.storage.key])
    return state


def _materialise_tensor(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    shape, stride = ref.shape, ref.stride
    start = ref.storage.offset + ref.offset
    if len(shape) != len(stride) or any(n < 0 for n in shape) or any(s < 0 for s in stride):
        raise ValueError(f"invalid tensor geometry: shape {shape}, stride {stride}")
    if 0 in shape:
        return np.empty(shape, dtype=storage.dtype)
    last = start + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if start < 0 or last >= storage.size:
        raise ValueError(
            f"tensor of shape {shape} at offset {start} overruns its storage of {storage.size}"
        )
    strides = tuple(s * storage.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(storage[start:], shape, strides).copy()
